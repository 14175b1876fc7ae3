//! frame (under construction).
