//! coap (under construction).
