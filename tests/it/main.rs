//! End-to-end tests: one binary.

mod federation;
mod gateway_e2e;
mod harness;
mod qemu;
mod synapse_smoke;
