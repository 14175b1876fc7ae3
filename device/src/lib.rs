//! A no_std, allocation-free Matrix endpoint (under construction).
#![no_std]
#![warn(missing_docs)]
