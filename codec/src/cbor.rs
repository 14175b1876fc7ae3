//! cbor (under construction).
