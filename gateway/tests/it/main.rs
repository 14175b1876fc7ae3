//! Integration tests of the gateway: one binary.
mod sim;
