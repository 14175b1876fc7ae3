//! End-to-end tests: one binary.

extern crate alloc;

mod device_e2e;
mod federation;
mod federation_gateway;
mod gateway_e2e;
mod gateway_restart;
mod gateway_slow;
mod harness;
mod qemu;
mod synapse_smoke;
