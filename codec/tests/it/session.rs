//! session tests.
