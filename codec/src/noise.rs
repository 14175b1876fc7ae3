//! noise (under construction).
