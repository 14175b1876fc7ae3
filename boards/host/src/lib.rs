//! Board support for a Linux host (under construction).
#![warn(missing_docs)]
