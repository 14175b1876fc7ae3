//! The lowband firmware application logic, generic over a board (under construction).
#![no_std]
#![warn(missing_docs)]
