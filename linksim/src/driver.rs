//! Drive two sans-IO peers over an emulated link on virtual time (quinn-proto's `Pair::drive`).

use core::time::Duration;

use crate::link::{Dir, Link};
use crate::stream::StreamLink;

/// Something that carries units (frames, or chunks of bytes) between end A and end B.
pub trait Medium {
    /// Puts `data` on the medium at `now` in direction `dir`.
    fn send(&mut self, now: Duration, dir: Dir, data: Vec<u8>);
    /// The next unit that has arrived by `now`.
    fn poll_deliver(&mut self, now: Duration) -> Option<(Dir, Vec<u8>)>;
    /// When the next unit arrives.
    fn next_event_time(&self) -> Option<Duration>;
}

impl Medium for Link {
    fn send(&mut self, now: Duration, dir: Dir, data: Vec<u8>) {
        Link::send(self, now, dir, data);
    }
    fn poll_deliver(&mut self, now: Duration) -> Option<(Dir, Vec<u8>)> {
        Link::poll_deliver(self, now)
    }
    fn next_event_time(&self) -> Option<Duration> {
        Link::next_event_time(self)
    }
}

impl Medium for StreamLink {
    fn send(&mut self, now: Duration, dir: Dir, data: Vec<u8>) {
        self.write(now, dir, &data);
    }
    fn poll_deliver(&mut self, now: Duration) -> Option<(Dir, Vec<u8>)> {
        StreamLink::poll_deliver(self, now)
    }
    fn next_event_time(&self) -> Option<Duration> {
        StreamLink::next_event_time(self)
    }
}

/// A sans-IO protocol endpoint as the driver sees it; implement it with a thin adapter.
///
/// Times are virtual `Duration`s since the start of the test; convert to the endpoint's own
/// representation (e.g. milliseconds) in the adapter.
pub trait Endpoint {
    /// The next unit to put on the link, if any.
    fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>>;
    /// A unit received from the link.
    fn handle_receive(&mut self, now: Duration, data: &[u8]);
    /// When the endpoint next wants [`handle_timeout`](Self::handle_timeout).
    fn poll_timeout(&mut self) -> Option<Duration>;
    /// Its timeout has passed.
    fn handle_timeout(&mut self, now: Duration);
}

/// Why [`Pair::drive_until`] stopped without its condition being met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveError {
    /// Nothing is in flight and no endpoint has a timeout: the condition can never become true.
    Idle {
        /// Virtual time when it went idle.
        now: Duration,
    },
    /// The next event lies beyond the deadline.
    Deadline {
        /// Virtual time reached.
        now: Duration,
    },
    /// Too many steps without reaching the condition (an endpoint asks for a timeout in the
    /// past again and again, say).
    Steps {
        /// Virtual time reached.
        now: Duration,
    },
}

/// Two endpoints and the medium between them, with a virtual clock. A is end A, B is end B.
#[derive(Debug)]
pub struct Pair<A, B, M = Link> {
    /// End A.
    pub a: A,
    /// End B.
    pub b: B,
    /// The link.
    pub link: M,
    /// Virtual time now.
    pub now: Duration,
}

impl<A: Endpoint, B: Endpoint, M: Medium> Pair<A, B, M> {
    /// Starts at virtual time zero.
    pub fn new(a: A, b: B, link: M) -> Self {
        Self {
            a,
            b,
            link,
            now: Duration::ZERO,
        }
    }

    /// Hands every pending transmission of both endpoints to the link at the current time.
    pub fn flush(&mut self) {
        while let Some(d) = self.a.poll_transmit(self.now) {
            self.link.send(self.now, Dir::AtoB, d);
        }
        while let Some(d) = self.b.poll_transmit(self.now) {
            self.link.send(self.now, Dir::BtoA, d);
        }
    }

    /// When the next event happens: a delivery or a timeout of either endpoint.
    pub fn next_event_time(&mut self) -> Option<Duration> {
        [
            self.link.next_event_time(),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Flushes, advances time to the next event and handles everything due then.
    ///
    /// Returns false when nothing is left to happen. Time never goes backwards: a timeout in
    /// the past is handled at the current time.
    pub fn step(&mut self) -> bool {
        self.flush();
        let Some(next) = self.next_event_time() else {
            return false;
        };
        self.advance_to(next);
        true
    }

    fn advance_to(&mut self, next: Duration) {
        self.now = self.now.max(next);
        let now = self.now;
        while let Some((dir, data)) = self.link.poll_deliver(now) {
            match dir {
                Dir::AtoB => self.b.handle_receive(now, &data),
                Dir::BtoA => self.a.handle_receive(now, &data),
            }
        }
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
        }
    }

    /// Steps until `done(&a, &b)` holds; returns the virtual time then.
    ///
    /// # Errors
    ///
    /// [`DriveError`] if the pair goes idle, the next event is past `deadline`, or a million
    /// steps pass.
    pub fn drive_until(
        &mut self,
        deadline: Duration,
        mut done: impl FnMut(&A, &B) -> bool,
    ) -> Result<Duration, DriveError> {
        for _ in 0..1_000_000 {
            if done(&self.a, &self.b) {
                return Ok(self.now);
            }
            self.flush();
            match self.next_event_time() {
                None => return Err(DriveError::Idle { now: self.now }),
                Some(t) if t > deadline => return Err(DriveError::Deadline { now: self.now }),
                Some(t) => self.advance_to(t),
            }
        }
        Err(DriveError::Steps { now: self.now })
    }

    /// Steps until nothing is left to happen or the next event is past `deadline` (or a
    /// million steps have passed, so a timer that never clears cannot hang a test); returns the
    /// virtual time reached.
    pub fn drive(&mut self, deadline: Duration) -> Duration {
        for _ in 0..1_000_000 {
            self.flush();
            match self.next_event_time() {
                Some(t) if t <= deadline => self.advance_to(t),
                _ => break,
            }
        }
        self.now
    }
}
