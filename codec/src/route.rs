//! route (under construction).
