//! A reusable emulator of slow, lossy links (under construction).
#![warn(missing_docs)]
