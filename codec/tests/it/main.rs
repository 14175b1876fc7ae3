//! Integration tests of lowband-codec: one binary for the whole crate.
mod cbor;
mod dict;
mod pack;
mod route;
mod coap;
mod noise;
mod frame;
mod corpus;
