//! Integration tests of lowband-device (one binary).

mod flash;
mod persist;
mod props;
mod rng;
mod runner;
mod state;
