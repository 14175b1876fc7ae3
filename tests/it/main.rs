//! End-to-end tests: one binary.

mod federation_direct;
mod harness;
mod synapse_smoke;
