//! The byte-stream (serial line) model on virtual time.

use alloc::collections::VecDeque;
use core::time::Duration;

use crate::link::{corrupt_bits, Dir, LinkConfig};
use crate::rng::Rng;

/// The behaviour of one direction of a serial line. Probabilities are per byte.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// Bit rate in bit/s; 0 means unlimited.
    pub rate_bps: u64,
    /// Bits on the line per byte: 8, or 10 for a UART with start and stop bits (8N1).
    pub bits_per_byte: u32,
    /// Fixed propagation delay.
    pub latency: Duration,
    /// Independent probability of each bit being flipped.
    pub bit_error_rate: f64,
    /// Probability that a byte is lost (a UART framing error, an overrun).
    pub byte_loss: f64,
    /// Probability that a random noise byte is inserted after a byte.
    pub byte_insert: f64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            rate_bps: 0,
            bits_per_byte: 8,
            latency: Duration::ZERO,
            bit_error_rate: 0.0,
            byte_loss: 0.0,
            byte_insert: 0.0,
        }
    }
}

impl StreamConfig {
    /// An otherwise clean line of `rate_bps` bit/s (8 bits per byte).
    pub fn with_rate(rate_bps: u64) -> Self {
        Self {
            rate_bps,
            ..Self::default()
        }
    }

    fn byte_time(&self) -> Duration {
        LinkConfig {
            rate_bps: self.rate_bps,
            bits_per_byte: self.bits_per_byte,
            ..LinkConfig::default()
        }
        .serialisation_time(1)
    }
}

/// Counters of one direction of a [`StreamLink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Bytes written.
    pub bytes_offered: u64,
    /// Bytes read out (inserted noise included).
    pub bytes_delivered: u64,
    /// Bytes lost.
    pub bytes_lost: u64,
    /// Noise bytes inserted.
    pub bytes_inserted: u64,
    /// Bytes with at least one bit flipped.
    pub bytes_corrupted: u64,
    /// Bits flipped in total.
    pub bits_flipped: u64,
}

#[derive(Debug)]
struct StreamDir {
    cfg: StreamConfig,
    rng: Rng,
    busy_until: Duration,
    queue: VecDeque<(Duration, u8)>,
    counters: StreamCounters,
}

/// A two-direction serial line on virtual time: bytes trickle at the bit rate, one by one.
///
/// Each byte arrives `latency` after its last bit left; damage is per byte (bit flips, loss,
/// inserted noise), so framing resynchronisation is exercised. Seeded and deterministic.
///
/// # Call protocol
///
/// [`write`](Self::write) bytes as they are produced; at [`next_event_time`](Self::next_event_time)
/// call [`poll_deliver`](Self::poll_deliver) (or [`poll_read`](Self::poll_read) for one direction)
/// to get every byte that has arrived by then, as one chunk per direction.
#[derive(Debug)]
pub struct StreamLink {
    dirs: [StreamDir; 2],
}

impl StreamLink {
    /// A line with the same behaviour both ways.
    pub fn symmetric(cfg: StreamConfig, seed: u64) -> Self {
        Self::new(cfg.clone(), cfg, seed)
    }

    /// A line with `a_to_b` and `b_to_a` behaviour.
    pub fn new(a_to_b: StreamConfig, b_to_a: StreamConfig, seed: u64) -> Self {
        let dir = |cfg, stream| StreamDir {
            cfg,
            rng: Rng::new(seed, stream),
            busy_until: Duration::ZERO,
            queue: VecDeque::new(),
            counters: StreamCounters::default(),
        };
        Self {
            dirs: [dir(a_to_b, 11), dir(b_to_a, 12)],
        }
    }

    /// Counters of direction `dir`.
    pub fn counters(&self, dir: Dir) -> StreamCounters {
        self.dirs[dir.index()].counters
    }

    /// When the last written byte of `dir` has left the sender.
    pub fn busy_until(&self, dir: Dir) -> Duration {
        self.dirs[dir.index()].busy_until
    }

    /// Queues `bytes` at `now`; returns when the last one has left the sender.
    pub fn write(&mut self, now: Duration, dir: Dir, bytes: &[u8]) -> Duration {
        let d = &mut self.dirs[dir.index()];
        let byte_time = d.cfg.byte_time();
        let mut t = now.max(d.busy_until);
        for &b in bytes {
            d.counters.bytes_offered += 1;
            t += byte_time;
            let at = t + d.cfg.latency;
            if d.rng.chance(d.cfg.byte_loss) {
                d.counters.bytes_lost += 1;
            } else {
                let mut one = [b];
                let flipped = corrupt_bits(&mut d.rng, &mut one, 0.0, d.cfg.bit_error_rate);
                if flipped > 0 {
                    d.counters.bytes_corrupted += 1;
                    d.counters.bits_flipped += flipped;
                }
                d.queue.push_back((at, one[0]));
            }
            if d.rng.chance(d.cfg.byte_insert) {
                d.counters.bytes_inserted += 1;
                let noise = d.rng.next_u64() as u8;
                d.queue.push_back((at, noise));
            }
        }
        d.busy_until = t;
        t
    }

    /// When the next byte arrives, if any is in flight.
    pub fn next_event_time(&self) -> Option<Duration> {
        self.dirs
            .iter()
            .filter_map(|d| d.queue.front().map(|x| x.0))
            .min()
    }

    /// Every byte of `dir` that has arrived by `now`; `None` if there is none.
    pub fn poll_read(&mut self, now: Duration, dir: Dir) -> Option<Vec<u8>> {
        let d = &mut self.dirs[dir.index()];
        let n = d.queue.iter().take_while(|x| x.0 <= now).count();
        if n == 0 {
            return None;
        }
        d.counters.bytes_delivered += n as u64;
        Some(d.queue.drain(..n).map(|x| x.1).collect())
    }

    /// The bytes that have arrived by `now` in one direction (A->B first), with the direction.
    pub fn poll_deliver(&mut self, now: Duration) -> Option<(Dir, Vec<u8>)> {
        [Dir::AtoB, Dir::BtoA]
            .into_iter()
            .find_map(|dir| self.poll_read(now, dir).map(|b| (dir, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bytes_trickle_at_the_rate() {
        let mut l = StreamLink::symmetric(StreamConfig::with_rate(100), 3);
        assert_eq!(l.write(Duration::ZERO, Dir::AtoB, b"abc"), 240 * MS);
        assert_eq!(l.next_event_time(), Some(80 * MS));
        assert_eq!(l.poll_deliver(79 * MS), None);
        assert_eq!(l.poll_deliver(170 * MS), Some((Dir::AtoB, b"ab".to_vec())));
        assert_eq!(l.poll_read(240 * MS, Dir::AtoB), Some(b"c".to_vec()));
        assert_eq!(l.next_event_time(), None);
    }
}
