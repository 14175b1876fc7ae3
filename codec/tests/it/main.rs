//! Integration tests of lowband-codec: one binary for the whole crate.
mod cbor;
mod coap;
mod corpus;
mod dict;
mod frame;
mod noise;
mod pack;
mod route;
