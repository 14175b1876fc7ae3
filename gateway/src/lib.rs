//! The lowband gateway library: the pieces behind the `lowband` binary.
#![warn(missing_docs)]

extern crate alloc;

pub mod alias;
pub mod bench;
pub mod bench_link;
pub mod config;
pub mod devices;
pub mod discovery;
pub mod federation;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod persist;
pub mod plaincoap;
pub mod serial;
pub mod serve;
pub mod sim;
pub mod syncstate;
pub mod table;
pub mod transport;
pub mod tunnel;
pub mod wire;
