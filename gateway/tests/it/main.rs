//! Integration tests of the gateway: one binary.
mod ops;
mod sim;
