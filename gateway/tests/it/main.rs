//! Integration tests of the gateway: one binary.
mod roles;
mod sim;
