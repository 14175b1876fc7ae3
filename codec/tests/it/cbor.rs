//! cbor tests.
