//! A reusable emulator of slow, lossy links, seeded and deterministic.
//!
//! ```text
//!   in-process, virtual time (protocol tests)         real time, between processes (tokio)
//!
//!   Endpoint A ─┐                       ┌─ Endpoint B      client ──UDP──► udp::Relay ──UDP──► server
//!               └─ Pair ── Link ───────┘                   (learns A)   (same Link model)
//!                   │       (frames: rate, latency, loss,
//!                   │        dup, reorder, corrupt, MTU)    TCP/pty ──► serial::relay_streams ──► TCP
//!                   └──── StreamLink (bytes: rate,                      (same StreamLink model)
//!                          bit errors, lost/inserted bytes)
//! ```
//!
//! * [`Link`]: two directions of datagrams, each a shared medium at a bit rate (frames queue
//!   behind each other), then latency, jitter, loss, duplication, reordering, corruption, MTU.
//! * [`StreamLink`]: a serial line: bytes trickle at the bit rate; bits flip, bytes are lost or
//!   inserted, so framing resynchronisation gets exercised.
//! * [`Pair`]: drives two sans-IO [`Endpoint`]s over either, advancing virtual time to the
//!   earliest of the endpoints' timeouts and the link's next delivery (quinn-proto's
//!   `Pair::drive`, smoltcp's `FaultInjector`).
//! * [`udp::Relay`], [`serial::relay_streams`], [`serial::tcp_relay`]: the same models on real
//!   time between real processes (QEMU's UART over TCP, a UDP client and server).
//!
//! Nothing reads a clock in the models; the same seed and the same calls give the same trace.
#![warn(missing_docs)]

extern crate alloc;

pub mod driver;
pub mod link;
pub mod rng;
pub mod serial;
pub mod stream;
pub mod udp;

pub use driver::{DriveError, Endpoint, Medium, Pair};
pub use link::{Counters, Dir, Link, LinkConfig};
pub use stream::{StreamConfig, StreamCounters, StreamLink};

use alloc::sync::Arc;
use std::sync::{Mutex, PoisonError};

/// Counters of both directions shared between a relay task and its owner.
#[derive(Debug)]
pub struct Stats<C>(Arc<Mutex<[C; 2]>>);

impl<C> Clone for Stats<C> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<C: Copy + Default> Default for Stats<C> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new([C::default(); 2])))
    }
}

impl<C: Copy + Default> Stats<C> {
    /// The counters of direction `dir` at this moment.
    pub fn get(&self, dir: Dir) -> C {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)[dir.index()]
    }

    pub(crate) fn set(&self, both: [C; 2]) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = both;
    }
}
