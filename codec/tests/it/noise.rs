//! noise tests.
