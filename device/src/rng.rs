//! Ephemeral-key randomness without a hardware RNG.
//!
//! Noise handshakes need a fresh ephemeral key pair per handshake
//! (<https://noiseprotocol.org/noise.html#security-considerations>: reusing an ephemeral key
//! with a different peer ephemeral leaks the static key in some patterns and breaks forward
//! secrecy). A board without a hardware RNG gets a 32-byte seed at provisioning; this DRBG is
//! ChaCha20 keyed with that seed, with the 64-bit nonce ("stream") set to
//! `DOMAIN << 32 | boot` and the 64-bit block counter as the per-boot counter. ChaCha20 is a
//! PRF over (key, nonce, counter), so two boots, or two positions of one boot, never produce
//! the same output as long as boot numbers never repeat — which [`BootCounter`] guarantees by
//! persisting the number before it is handed out.
//!
//! Rules: one `EphemeralRng` per boot (it consumes the boot's [`BootCounter`], which is not
//! `Clone`); the seed is used for nothing else. Limitation: anyone who extracts the seed from
//! the device can recompute past ephemeral keys, so past sessions are only as safe as the seed
//! (mix in hardware entropy with [`EphemeralRng::with_entropy`] where a board has any).

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use rand_core::{CryptoRng, RngCore};

use crate::persist::BootCounter;

/// Domain tag in the high half of the ChaCha20 stream id ("NE": Noise ephemerals), leaving room
/// for other uses of the same seed under other tags.
pub const DOMAIN_NOISE_EPHEMERAL: u64 = 0x4e45;

/// The DRBG for Noise ephemeral keys. Implements [`RngCore`] + [`CryptoRng`].
///
/// Built on the RFC 8439 ChaCha20 the link's AEAD already links (one ChaCha20 in the firmware):
/// with the 96-bit nonce `0u32 || stream` (little endian) its block `n` is the original
/// 64-bit-counter ChaCha20 block `n` of that stream for `n < 2^32`, so the output is exactly
/// `rand_chacha::ChaCha20Rng` with `set_stream(stream)` (a unit test compares them), words
/// consumed the same way (`fill_bytes` uses whole 32-bit words). One boot never draws
/// 2^32 blocks (256 GiB).
pub struct EphemeralRng {
    cipher: ChaCha20,
    block: [u8; 64],
    /// Bytes of `block` used, a multiple of 4; 64: empty.
    at: usize,
    words: u64,
    boot: u32,
}

impl core::fmt::Debug for EphemeralRng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print key material.
        f.debug_struct("EphemeralRng")
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

impl EphemeralRng {
    /// The generator for this boot.
    pub fn new(seed: &[u8; 32], boot: BootCounter) -> Self {
        let stream = (DOMAIN_NOISE_EPHEMERAL << 32) | u64::from(boot.get());
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&stream.to_le_bytes());
        Self {
            cipher: ChaCha20::new(seed.into(), (&nonce).into()),
            block: [0; 64],
            at: 64,
            words: 0,
            boot: boot.get(),
        }
    }

    /// Like [`Self::new`], with 32 bytes of extra entropy (hardware noise, ADC jitter) XORed
    /// into the key. Uniqueness still rests on the boot counter; the entropy only helps when
    /// the seed leaks.
    pub fn with_entropy(seed: &[u8; 32], boot: BootCounter, entropy: &[u8; 32]) -> Self {
        let mut key = *seed;
        for (k, e) in key.iter_mut().zip(entropy) {
            *k ^= e;
        }
        Self::new(&key, boot)
    }

    /// Boot number of the stream.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// Position in the stream, in 32-bit words (the per-boot counter).
    pub fn word_pos(&self) -> u128 {
        u128::from(self.words)
    }

    fn next_word(&mut self) -> [u8; 4] {
        if self.at >= self.block.len() {
            self.block = [0; 64];
            self.cipher.apply_keystream(&mut self.block);
            self.at = 0;
        }
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.block[self.at..self.at + 4]);
        self.at += 4;
        self.words += 1;
        w
    }
}

impl RngCore for EphemeralRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(self.next_word())
    }
    fn next_u64(&mut self) -> u64 {
        let lo = u64::from(self.next_u32());
        lo | (u64::from(self.next_u32()) << 32)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(4) {
            let w = self.next_word();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for EphemeralRng {}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn same_stream_as_rand_chacha() {
        let seed = [7u8; 32];
        let mut ours = EphemeralRng::new(&seed, BootCounter::for_test(3));
        let mut theirs = ChaCha20Rng::from_seed(seed);
        theirs.set_stream((DOMAIN_NOISE_EPHEMERAL << 32) | u64::from(ours.boot()));
        // Odd lengths and mixed calls, across several 64-byte blocks.
        for round in 0..40usize {
            let (mut a, mut b) = ([0u8; 37], [0u8; 37]);
            let n = 1 + round % 37;
            ours.fill_bytes(&mut a[..n]);
            theirs.fill_bytes(&mut b[..n]);
            assert_eq!(a, b, "fill_bytes({n}) in round {round}");
            assert_eq!(ours.next_u32(), theirs.next_u32());
            assert_eq!(ours.next_u64(), theirs.next_u64());
            assert_eq!(ours.word_pos(), theirs.get_word_pos());
        }
    }
}
