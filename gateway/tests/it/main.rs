//! Integration tests of the gateway: one binary.
mod coap_interop;
mod dedup_window;
mod devices;
mod federation;
mod idle_memory;
mod lossy_metrics;
mod ops;
mod ops_wiring;
mod roles;
mod sim;
