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

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};

use crate::persist::BootCounter;

/// Domain tag in the high half of the ChaCha20 stream id ("NE": Noise ephemerals), leaving room
/// for other uses of the same seed under other tags.
pub const DOMAIN_NOISE_EPHEMERAL: u64 = 0x4e45;

/// The DRBG for Noise ephemeral keys. Implements [`RngCore`] + [`CryptoRng`].
pub struct EphemeralRng {
    inner: ChaCha20Rng,
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
        let mut inner = ChaCha20Rng::from_seed(*seed);
        inner.set_stream((DOMAIN_NOISE_EPHEMERAL << 32) | u64::from(boot.get()));
        Self {
            inner,
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
        self.inner.get_word_pos()
    }
}

impl RngCore for EphemeralRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.inner.try_fill_bytes(dest)
    }
}

impl CryptoRng for EphemeralRng {}
