//! dict (under construction).
