//! coap tests.
