//! End-to-end tests: one binary.

mod federation;
mod harness;
mod qemu;
mod synapse_smoke;
