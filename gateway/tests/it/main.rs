//! Integration tests of the gateway: one binary.
mod coap_interop;
mod federation;
mod idle_memory;
mod lossy_metrics;
mod ops;
mod ops_wiring;
mod roles;
mod sim;
