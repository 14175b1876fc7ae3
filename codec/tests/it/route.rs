//! route tests.
