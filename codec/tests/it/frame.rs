//! frame tests.
