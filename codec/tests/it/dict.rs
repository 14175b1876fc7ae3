//! dict tests.
