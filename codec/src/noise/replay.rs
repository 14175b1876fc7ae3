//! Sliding replay window and truncated-nonce reconstruction for transport messages over lossy,
//! reordering links ([Noise §11.4](https://noiseprotocol.org/noise.html#out-of-order-transport-messages),
//! [RFC 6479](https://www.rfc-editor.org/rfc/rfc6479) style bitmap).

/// Why a nonce was refused by the [`ReplayWindow`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplayError {
    /// This nonce was already accepted.
    Replay,
    /// The nonce is older than the window; it cannot be told from a replay.
    TooOld,
}

/// A 64-entry sliding window of accepted nonces.
///
/// Bit `i` of the bitmap stands for nonce `highest - i`. Check with [`check`](Self::check) before
/// authenticating a packet and [`commit`](Self::commit) only after it authenticated, so forged
/// packets never move the window.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReplayWindow {
    highest: u64,
    bitmap: u64,
}

impl ReplayWindow {
    /// Number of nonces the window remembers below the highest one.
    pub const SIZE: u64 = 64;

    /// An empty window (nothing received).
    pub const fn new() -> Self {
        ReplayWindow {
            highest: 0,
            bitmap: 0,
        }
    }

    /// The raw state (highest nonce, bitmap), for persisting a session.
    pub(crate) fn parts(&self) -> (u64, u64) {
        (self.highest, self.bitmap)
    }

    /// Rebuilds a window from [`parts`](Self::parts).
    pub(crate) fn from_parts(highest: u64, bitmap: u64) -> Self {
        ReplayWindow { highest, bitmap }
    }

    /// The highest accepted nonce, if any.
    pub fn highest(&self) -> Option<u64> {
        (self.bitmap != 0).then_some(self.highest)
    }

    /// The nonce expected next (one past the highest, or 0).
    pub fn next_expected(&self) -> u64 {
        match self.highest() {
            Some(h) => h.saturating_add(1),
            None => 0,
        }
    }

    /// Whether `n` may still be accepted.
    pub fn check(&self, n: u64) -> Result<(), ReplayError> {
        let Some(h) = self.highest() else {
            return Ok(());
        };
        if n > h {
            return Ok(());
        }
        let age = h - n;
        if age >= Self::SIZE {
            return Err(ReplayError::TooOld);
        }
        if self.bitmap & (1 << age) != 0 {
            return Err(ReplayError::Replay);
        }
        Ok(())
    }

    /// Records `n` as accepted (call only after `check` passed and the packet authenticated).
    pub fn commit(&mut self, n: u64) {
        match self.highest() {
            None => {
                self.highest = n;
                self.bitmap = 1;
            }
            Some(h) if n > h => {
                let shift = n - h;
                self.bitmap = if shift >= Self::SIZE {
                    0
                } else {
                    self.bitmap << shift
                };
                self.bitmap |= 1;
                self.highest = n;
            }
            Some(h) => {
                let age = h - n;
                if age < Self::SIZE {
                    self.bitmap |= 1 << age;
                }
            }
        }
    }

    /// The full nonce whose low 8 bits are `low`, nearest to the next expected nonce
    /// (in `next - 128 ..= next + 127`, never negative).
    pub fn reconstruct(&self, low: u8) -> u64 {
        let next = self.next_expected();
        let diff = i64::from(low.wrapping_sub(next as u8) as i8);
        let cand = i128::from(next) + i128::from(diff);
        if cand < 0 {
            (cand + 256) as u64
        } else {
            cand as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_reordering_and_refuses_replays() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for n in [0u64, 2, 1, 5] {
            assert_eq!(w.check(n), Ok(()));
            w.commit(n);
        }
        assert_eq!(w.highest(), Some(5));
        assert_eq!(w.check(2), Err(ReplayError::Replay));
        assert_eq!(w.check(3), Ok(()));
        w.commit(100);
        assert_eq!(w.check(36), Err(ReplayError::TooOld));
        assert_eq!(w.check(37), Ok(()));
        assert_eq!(w.check(100), Err(ReplayError::Replay));
    }

    #[test]
    fn reconstruct_around_next() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.reconstruct(0), 0);
        assert_eq!(w.reconstruct(200), 200);
        w.commit(300); // next = 301 = 0x12d
        assert_eq!(w.reconstruct(0x2d), 301);
        assert_eq!(w.reconstruct(0x2c), 300);
        assert_eq!(w.reconstruct(0xae), 174); // 301 - 127
        assert_eq!(w.reconstruct(0xac), 428); // 301 + 127
    }
}
