//! Integration tests of the gateway: one binary.
mod coap_interop;
mod federation;
mod ops;
mod ops_wiring;
mod roles;
mod sim;
