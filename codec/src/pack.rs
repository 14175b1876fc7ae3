//! pack (under construction).
