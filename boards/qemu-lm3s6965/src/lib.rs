//! Board support for QEMU lm3s6965evb (under construction).
#![no_std]
#![warn(missing_docs)]
