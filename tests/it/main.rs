//! End-to-end tests: one binary.

mod federation;
mod federation_gateway;
mod gateway_e2e;
mod harness;
mod qemu;
mod synapse_smoke;
