//! End-to-end tests: one binary.

mod federation;
mod harness;
mod synapse_smoke;
