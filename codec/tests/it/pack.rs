//! pack tests.
