//! Noise: the link's authenticated key exchange and encrypted transport, heap-free.
//!
//! Two layers:
//!
//! - The Noise Protocol Framework, [revision 34](https://noiseprotocol.org/noise.html), for
//!   `25519_ChaChaPoly_BLAKE2s` and `25519_ChaChaPoly_SHA256`: [`CipherState`],
//!   [`SymmetricState`], [`HandshakeState`] with the fundamental patterns (lowband uses IK and
//!   KK) and the `psk` modifier. Checked byte for byte against the cacophony vectors and
//!   interoperated with snow and Python `noiseprotocol` in `codec/tests/it/noise.rs`.
//! - [`link`]: lowband's 1-RTT handshake with pinned keys and a transport that survives lossy,
//!   reordering links (explicit truncated nonce, replay window, loss-proof rekeying). Its wire
//!   layout is documented there; in short, IK costs 96 + 48 = 144 bytes and KK 48 + 48 = 96 bytes
//!   on the link with empty payloads (nothing added), and a transport packet costs 2 header
//!   bytes + 16 tag bytes = 18 bytes of overhead.
//!
//! Everything writes into caller buffers and returns lengths; errors are small `Copy` enums.
//! Secret keys are zeroised on drop.

mod crypto;
mod handshake;
pub mod link;
mod replay;

pub use crypto::{
    public_key, Blake2s, CipherState, Keypair, NoiseHash, PublicKey, Sha256, DHLEN, HASHLEN,
    MAX_MESSAGE_LEN, TAGLEN,
};
pub use handshake::{
    HandshakeConfig, HandshakeState, Pattern, SymmetricState, Token, TransportKeys,
};
pub use replay::{ReplayError, ReplayWindow};

/// Errors of the Noise core (handshake and cipher operations).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NoiseError {
    /// The output buffer cannot hold the result.
    BufferTooSmall,
    /// A message ended before the pattern's tokens or the tag.
    MessageTooShort,
    /// A message would exceed 65535 bytes (Noise §3).
    MessageTooLong,
    /// Authentication failed (wrong key, prologue, or tampered bytes).
    Decrypt,
    /// A key the pattern needs was not provided.
    MissingKey,
    /// A peer public key gave a non-contributory (all-zero) DH result.
    InvalidPublicKey,
    /// The 64-bit nonce is used up (Noise §5.1: 2^64-1 is reserved).
    NonceExhausted,
    /// Called out of turn: reading when it is our turn to write, or after the end.
    WrongState,
}

impl core::fmt::Display for NoiseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for NoiseError {}
