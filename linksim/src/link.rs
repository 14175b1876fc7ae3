//! The frame (datagram) link model on virtual time.

use alloc::collections::BinaryHeap;
use core::cmp::Reverse;
use core::time::Duration;

use crate::rng::Rng;

/// A direction of a two-ended link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// From end A to end B.
    AtoB,
    /// From end B to end A.
    BtoA,
}

impl Dir {
    /// The other direction.
    pub fn reverse(self) -> Dir {
        match self {
            Dir::AtoB => Dir::BtoA,
            Dir::BtoA => Dir::AtoB,
        }
    }

    /// 0 for A->B, 1 for B->A.
    pub fn index(self) -> usize {
        match self {
            Dir::AtoB => 0,
            Dir::BtoA => 1,
        }
    }
}

/// The behaviour of one direction of a link. Probabilities are per frame in `[0, 1]`.
///
/// `Default` is an ideal link: unlimited rate, no delay, nothing lost.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Bit rate in bit/s; 0 means unlimited (no serialisation delay).
    pub rate_bps: u64,
    /// Bits on the medium per byte: 8, or 10 for a UART with start and stop bits (8N1).
    pub bits_per_byte: u32,
    /// Fixed propagation delay, added after serialisation.
    pub latency: Duration,
    /// Extra delay uniform in `[0, jitter]`; it never reorders frames on its own.
    pub jitter: Duration,
    /// Probability that a frame is lost (it still occupies the medium).
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by [`reorder_delay`](Self::reorder_delay), letting
    /// later frames overtake it.
    pub reorder: f64,
    /// How long a reordered frame is held back.
    pub reorder_delay: Duration,
    /// Probability that a frame gets one random bit flipped.
    pub corrupt: f64,
    /// Independent probability of each bit being flipped (bit error rate).
    pub bit_error_rate: f64,
    /// Frames longer than this are dropped and counted; `None` for no limit.
    pub mtu: Option<usize>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            rate_bps: 0,
            bits_per_byte: 8,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            corrupt: 0.0,
            bit_error_rate: 0.0,
            mtu: None,
        }
    }
}

impl LinkConfig {
    /// An otherwise ideal link of `rate_bps` bit/s (8 bits per byte).
    pub fn with_rate(rate_bps: u64) -> Self {
        Self {
            rate_bps,
            ..Self::default()
        }
    }

    /// Time `bytes` bytes take to serialise at this rate.
    pub fn serialisation_time(&self, bytes: usize) -> Duration {
        if self.rate_bps == 0 {
            return Duration::ZERO;
        }
        let bits = bytes as u128 * u128::from(self.bits_per_byte);
        let nanos = bits * 1_000_000_000 / u128::from(self.rate_bps);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Counters of one direction of a [`Link`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed to [`Link::send`].
    pub frames_offered: u64,
    /// Bytes handed to [`Link::send`].
    pub bytes_offered: u64,
    /// Frames handed out by [`Link::poll_deliver`] (duplicates included).
    pub frames_delivered: u64,
    /// Bytes handed out by [`Link::poll_deliver`].
    pub bytes_delivered: u64,
    /// Frames lost.
    pub frames_lost: u64,
    /// Extra copies made.
    pub frames_duplicated: u64,
    /// Frames with at least one bit flipped.
    pub frames_corrupted: u64,
    /// Bits flipped in total.
    pub bits_flipped: u64,
    /// Frames held back so later ones overtake them.
    pub frames_reordered: u64,
    /// Frames dropped for exceeding the MTU (never on the medium).
    pub frames_dropped_mtu: u64,
    /// Bytes serialised on the medium (lost frames included, MTU drops not).
    pub bytes_on_link: u64,
}

#[derive(Debug)]
struct Direction {
    cfg: LinkConfig,
    rng: Rng,
    busy_until: Duration,
    last_arrival: Duration,
    counters: Counters,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Duration,
    seq: u64,
    dir: Dir,
    frame: Vec<u8>,
}

/// Flips bits in `frame`: one random bit with probability `corrupt`, and each bit with
/// probability `ber`. Returns the number of bits flipped.
pub(crate) fn corrupt_bits(rng: &mut Rng, frame: &mut [u8], corrupt: f64, ber: f64) -> u64 {
    let bits = frame.len() as u64 * 8;
    if bits == 0 {
        return 0;
    }
    let mut flipped = 0;
    if rng.chance(corrupt) {
        let b = rng.below(bits);
        frame[(b / 8) as usize] ^= 1 << (b % 8);
        flipped += 1;
    }
    if ber > 0.0 {
        let mut pos = rng.gap(ber);
        while pos < bits {
            frame[(pos / 8) as usize] ^= 1 << (pos % 8);
            flipped += 1;
            pos = pos.saturating_add(1).saturating_add(rng.gap(ber));
        }
    }
    flipped
}

/// A two-direction frame link on virtual time: pure, seeded, no clocks, no threads.
///
/// Each direction is a shared medium: a frame starts serialising when the previous one has
/// left (`bytes * bits_per_byte / rate_bps`), then travels `latency` (+ jitter). Loss,
/// duplication, reordering, corruption and the MTU are applied per frame. The same seed and
/// the same calls give the same deliveries; each direction draws from its own random stream,
/// so traffic one way never changes what happens the other way.
///
/// # Call protocol
///
/// [`send`](Self::send) frames as peers emit them; ask [`next_event_time`](Self::next_event_time)
/// when something arrives next; at that time call [`poll_deliver`](Self::poll_deliver) until it
/// returns `None`. Time never needs to go backwards; `now` is any `Duration` since the start.
#[derive(Debug)]
pub struct Link {
    dirs: [Direction; 2],
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
}

impl Link {
    /// A link with the same behaviour both ways.
    pub fn symmetric(cfg: LinkConfig, seed: u64) -> Self {
        Self::new(cfg.clone(), cfg, seed)
    }

    /// A link with `a_to_b` and `b_to_a` behaviour.
    pub fn new(a_to_b: LinkConfig, b_to_a: LinkConfig, seed: u64) -> Self {
        let dir = |cfg, stream| Direction {
            cfg,
            rng: Rng::new(seed, stream),
            busy_until: Duration::ZERO,
            last_arrival: Duration::ZERO,
            counters: Counters::default(),
        };
        Self {
            dirs: [dir(a_to_b, 1), dir(b_to_a, 2)],
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// The configuration of direction `dir`.
    pub fn config(&self, dir: Dir) -> &LinkConfig {
        &self.dirs[dir.index()].cfg
    }

    /// Counters of direction `dir`.
    pub fn counters(&self, dir: Dir) -> Counters {
        self.dirs[dir.index()].counters
    }

    /// When the medium of `dir` is free again (the last byte of the last frame has left).
    pub fn busy_until(&self, dir: Dir) -> Duration {
        self.dirs[dir.index()].busy_until
    }

    /// Puts `frame` on the link at `now`; returns when its last bit has left the sender.
    ///
    /// A frame over the MTU is dropped (counted) and `now` returned.
    pub fn send(&mut self, now: Duration, dir: Dir, frame: impl Into<Vec<u8>>) -> Duration {
        let mut frame = frame.into();
        let d = &mut self.dirs[dir.index()];
        d.counters.frames_offered += 1;
        d.counters.bytes_offered += frame.len() as u64;
        if d.cfg.mtu.is_some_and(|m| frame.len() > m) {
            d.counters.frames_dropped_mtu += 1;
            return now;
        }
        let start = now.max(d.busy_until);
        let end = start + d.cfg.serialisation_time(frame.len());
        d.busy_until = end;
        d.counters.bytes_on_link += frame.len() as u64;
        if d.rng.chance(d.cfg.loss) {
            d.counters.frames_lost += 1;
            return end;
        }
        let flipped = corrupt_bits(&mut d.rng, &mut frame, d.cfg.corrupt, d.cfg.bit_error_rate);
        if flipped > 0 {
            d.counters.frames_corrupted += 1;
            d.counters.bits_flipped += flipped;
        }
        let jitter = if d.cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            d.cfg.jitter.mul_f64(d.rng.unit())
        };
        let mut at = (end + d.cfg.latency + jitter).max(d.last_arrival);
        if d.rng.chance(d.cfg.reorder) {
            d.counters.frames_reordered += 1;
            at += d.cfg.reorder_delay;
        } else {
            d.last_arrival = at;
        }
        let dup = d.rng.chance(d.cfg.duplicate);
        if dup {
            d.counters.frames_duplicated += 1;
            self.push(at, dir, frame.clone());
        }
        self.push(at, dir, frame);
        end
    }

    fn push(&mut self, at: Duration, dir: Dir, frame: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at,
            seq: self.seq,
            dir,
            frame,
        }));
    }

    /// When the next frame arrives, if any is in flight.
    pub fn next_event_time(&self) -> Option<Duration> {
        self.queue.peek().map(|f| f.0.at)
    }

    /// Frames in flight (both directions).
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// The next frame that has arrived by `now`, in arrival order, with its direction.
    pub fn poll_deliver(&mut self, now: Duration) -> Option<(Dir, Vec<u8>)> {
        if self.queue.peek()?.0.at > now {
            return None;
        }
        let f = self.queue.pop()?.0;
        let c = &mut self.dirs[f.dir.index()].counters;
        c.frames_delivered += 1;
        c.bytes_delivered += f.frame.len() as u64;
        Some((f.dir, f.frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn serialisation_at_100_bps() {
        let mut l = Link::symmetric(LinkConfig::with_rate(100), 1);
        // 10 bytes = 80 bits at 100 bit/s: 800 ms.
        assert_eq!(l.send(Duration::ZERO, Dir::AtoB, [0u8; 10]), 800 * MS);
        // The next frame queues behind it on the same direction, not on the other.
        assert_eq!(l.send(Duration::ZERO, Dir::AtoB, [0u8; 1]), 880 * MS);
        assert_eq!(l.send(Duration::ZERO, Dir::BtoA, [0u8; 1]), 80 * MS);
        assert_eq!(l.next_event_time(), Some(80 * MS));
        assert_eq!(l.poll_deliver(79 * MS), None);
        assert_eq!(l.poll_deliver(80 * MS), Some((Dir::BtoA, vec![0])));
        assert_eq!(l.poll_deliver(800 * MS), Some((Dir::AtoB, vec![0; 10])));
        assert_eq!(l.poll_deliver(800 * MS), None);
        assert_eq!(l.next_event_time(), Some(880 * MS));
    }

    #[test]
    fn mtu_drops_are_counted() {
        let cfg = LinkConfig {
            mtu: Some(4),
            ..LinkConfig::default()
        };
        let mut l = Link::symmetric(cfg, 1);
        l.send(Duration::ZERO, Dir::AtoB, [1u8; 5]);
        l.send(Duration::ZERO, Dir::AtoB, [1u8; 4]);
        let c = l.counters(Dir::AtoB);
        assert_eq!(
            (c.frames_offered, c.frames_dropped_mtu, c.bytes_on_link),
            (2, 1, 4)
        );
        assert_eq!(
            l.poll_deliver(Duration::ZERO),
            Some((Dir::AtoB, vec![1; 4]))
        );
    }
}
