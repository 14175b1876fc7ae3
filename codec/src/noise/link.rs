//! lowband's link security: a 1-RTT Noise IK/KK handshake with pinned keys that survives loss,
//! and a transport with explicit truncated nonces, a replay window and loss-proof rekeying.
//!
//! Sans-IO: nothing here reads a clock or touches a link. Time is `now` in milliseconds passed
//! in by the caller; packets come in through `handle_*`/`read_*`/`open` and go out through
//! `poll_*`/`seal` into caller buffers.
//!
//! # Wire layout
//!
//! Every link packet starts with one byte whose top bit says what it is:
//!
//! ```text
//! transport   1 E s s s s s s | n n n n n n n n | ciphertext ... | tag (16)
//!             E      parity of the key epoch = nonce / rekey_interval (Noise §11.3 REKEY
//!                    at every epoch; an on-demand rekey skips to the next epoch's nonces)
//!             ssssss SessionId 0..=63
//!             n      low 8 bits of the 64-bit nonce (the receiver reconstructs the rest)
//!             AD of the AEAD = these 2 header bytes, so they are authenticated.
//!             Overhead: 2 + 16 = 18 bytes.
//!
//! handshake   0 x x x x x x x | ...
//!             The Noise handshake message with its first 32 bytes (the ephemeral public key e)
//!             rotated by one: wire[0] = e[31], wire[1..32] = e[0..31], then the rest unchanged.
//!             A canonical X25519 public key is < 2^255, so bit 7 of e[31] is always 0: the type
//!             bit costs nothing.
//!   msg1      initiator -> responder: Noise IK (>= 96 bytes) or KK (>= 48 bytes) message 1.
//!             Payload: optional idempotent 0-RTT early data.
//!   msg2      responder -> initiator, >= 48 bytes: Noise message 2. The low 6 bits of wire[0]
//!             are the SessionId the responder assigns: it draws ephemeral keys until they
//!             match a free id (64 tries on average, responder side only). Being part of `e`,
//!             the id is authenticated by the handshake.
//!             Payload: empty = accepted; else byte 0 is a status, 0 = accepted with a 0-RTT
//!             response following, >= 1 = refused with that [`RejectCode`] (authenticated).
//!   reject    responder -> initiator, 4 bytes (< 48, so never a msg2): [code, protocol,
//!             dict hi, dict lo], the responder's preferred version. Unauthenticated: it answers
//!             a msg1 the responder could not decrypt or admit, so treat it as advice.
//! ```
//!
//! The protocol version (u8) and dictionary version (u16) are not sent: they are in the
//! prologue (`"lowband" || protocol || dict_be`), so a mismatch makes msg1 fail to decrypt.
//! The responder tries each version it accepts (cheap: only the AEAD and hashes change) and
//! each version it knows but refuses ([`ResponderConfig::known_versions`]) to tell a precise
//! [`ResponderError::VersionMismatch`]. The reject carries the responder's version so the
//! initiator reports [`InitiatorError::VersionMismatch`].
//!
//! Byte counts with empty payloads, everything included: IK 96 + 48 = **144**, KK 48 + 48 =
//! **96**. Reject: 4 bytes.
//!
//! # Reliability
//!
//! Handshake messages are retransmitted verbatim, never regenerated: the [`Initiator`] keeps
//! its msg1 and re-sends it from [`Initiator::poll_transmit`] on timeout with exponential
//! backoff; a responder that gets msg1 again for a session it already answered
//! ([`ResponderSession::is_retransmitted_msg1`]) re-sends [`ResponderSession::msg2`] verbatim.
//!
//! # 0-RTT
//!
//! IK msg1's payload is encrypted to the responder's static key but **replayable**: anyone who
//! recorded msg1 can send it again and the responder will process its early data again. Early
//! data is therefore only accepted wrapped in [`Idempotent`], for requests whose repetition is
//! harmless (a Matrix send with a transaction id). KK msg1 is replayable the same way.

use heapless::Vec;
use rand_core::{CryptoRng, RngCore};

use super::crypto::{CipherState, Keypair, PublicKey, DHLEN, HASHLEN, TAGLEN};
use super::handshake::{HandshakeConfig, HandshakeState, Pattern};
use super::replay::{ReplayError, ReplayWindow};
use super::NoiseError;

/// Largest 0-RTT payload in msg1 or msg2 (bytes of plaintext).
pub const MAX_EARLY_DATA: usize = 160;
/// Largest msg1 on the wire (IK with [`MAX_EARLY_DATA`]).
pub const MAX_MSG1: usize = 96 + MAX_EARLY_DATA;
/// Largest msg2 on the wire (status byte and [`MAX_EARLY_DATA`]).
pub const MAX_MSG2: usize = 48 + 1 + MAX_EARLY_DATA;
/// Length of a reject packet.
pub const REJECT_LEN: usize = 4;
/// Protocol version of the device profile ([`crate::lb::dev`]): its transport packets carry a
/// [`SHORT_TAG_LEN`]-byte tag instead of 16. Being part of the prologue, the version is
/// authenticated by the handshake, so both ends agree on the tag length without a byte on the
/// wire.
///
/// Why 4 bytes are enough here (the argument of LoRaWAN's 4-byte MIC, LoRaWAN 1.1 §4.4): a
/// forger succeeds with probability about 2^-32 per packet (times the few nonce candidates a
/// receiver tries), every attempt costs airtime on the device's slow link (an 11-byte packet
/// is ~1 s at 100 bit/s: 2^31 attempts take ~68 years), a failed attempt changes no state,
/// and the replay window still refuses every nonce seen. Confidentiality is unchanged
/// (ChaCha20 with the same keys); only the authentication margin shrinks. Links where an
/// attacker can try millions of packets per second should keep protocol 1.
pub const DEVICE_PROTOCOL: u8 = 2;
/// Tag bytes of a device-profile transport packet ([`DEVICE_PROTOCOL`]).
pub const SHORT_TAG_LEN: usize = 4;
/// Transport header length (type/epoch/session byte and truncated nonce).
pub const TRANSPORT_HEADER_LEN: usize = 2;
/// Bytes a transport packet adds to its payload: header + tag = 18.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAGLEN;
/// Shortest msg2 (and longer than any reject).
const MIN_MSG2: usize = 48;
/// How many ephemeral keys the responder draws at most to hit a free session id.
const MAX_SESSION_ID_TRIES: u32 = 2048;
const PROLOGUE_TAG: &[u8; 7] = b"lowband";

/// A session id: 6 bits, 0..=63, assigned by the responder in msg2.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SessionId(u8);

impl SessionId {
    /// Largest session id.
    pub const MAX: u8 = 63;

    /// A session id if `id <= 63`.
    pub const fn new(id: u8) -> Option<Self> {
        if id <= Self::MAX {
            Some(SessionId(id))
        } else {
            None
        }
    }

    /// The numeric id.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// The versions both ends must share byte for byte; they go into the Noise prologue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LinkVersion {
    /// lowband link protocol version.
    pub protocol: u8,
    /// Codec dictionary version (see `dict`).
    pub dict: u16,
}

impl LinkVersion {
    /// Tag bytes of this version's transport packets: [`SHORT_TAG_LEN`] for
    /// [`DEVICE_PROTOCOL`], else the full 16.
    pub const fn tag_len(self) -> usize {
        if self.protocol == DEVICE_PROTOCOL {
            SHORT_TAG_LEN
        } else {
            TAGLEN
        }
    }

    fn prologue(self) -> [u8; 10] {
        let mut p = [0u8; 10];
        p[..7].copy_from_slice(PROLOGUE_TAG);
        p[7] = self.protocol;
        p[8..].copy_from_slice(&self.dict.to_be_bytes());
        p
    }
}

/// The handshake pattern of a link.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkPattern {
    /// `Noise_IK_25519_ChaChaPoly_BLAKE2s`: the initiator sends its static key encrypted; the
    /// responder admits it against its allow list. 144 bytes.
    IK,
    /// `Noise_KK_25519_ChaChaPoly_BLAKE2s`: both static keys are known in advance; the responder
    /// tries its allow list. 96 bytes.
    KK,
}

impl LinkPattern {
    const fn pattern(self) -> Pattern {
        match self {
            LinkPattern::IK => Pattern::IK,
            LinkPattern::KK => Pattern::KK,
        }
    }

    /// `h` (and `ck`) after `InitializeSymmetric` of the pattern's protocol name: the name is
    /// longer than 32 bytes, so it is `BLAKE2s(name)` (Noise §5.2). Constants, so that a device
    /// links no protocol-name code; `initial_hashes_are_the_protocol_names_hashes` checks them.
    const fn initial_hash(self) -> &'static [u8; HASHLEN] {
        match self {
            // BLAKE2s("Noise_IK_25519_ChaChaPoly_BLAKE2s")
            LinkPattern::IK => &[
                0xbb, 0xea, 0x02, 0x2b, 0x94, 0x8c, 0xf3, 0xbc, 0x58, 0x57, 0xd7, 0x08, 0x04, 0x22,
                0x91, 0x79, 0xe1, 0x11, 0x6b, 0xc4, 0x0c, 0xb8, 0xcc, 0x07, 0x48, 0x35, 0x34, 0x9c,
                0x46, 0x4b, 0xca, 0x36,
            ],
            // BLAKE2s("Noise_KK_25519_ChaChaPoly_BLAKE2s")
            LinkPattern::KK => &[
                0x72, 0x1f, 0x5c, 0x9c, 0x77, 0x0d, 0x76, 0x22, 0xa8, 0x79, 0x63, 0x0f, 0x6c, 0x47,
                0x4e, 0x91, 0xe1, 0x6a, 0x75, 0x37, 0x17, 0x46, 0xc8, 0xbb, 0xae, 0x78, 0xbe, 0xc0,
                0xeb, 0xe7, 0xae, 0x11,
            ],
        }
    }

    /// A handshake state of this pattern for one side, initialised from `hc` (whose pattern
    /// must be this one and have no psk: the link uses none).
    fn handshake(self, hc: HandshakeConfig<'_>) -> Result<HandshakeState, NoiseError> {
        let mut hs = HandshakeState::blank(self.pattern(), hc.initiator);
        hs.initialize_from(self.initial_hash(), hc)?;
        Ok(hs)
    }
}

/// Why a responder refused (sent in a reject packet or an authenticated msg2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RejectCode {
    /// msg1 did not decrypt: version/dictionary mismatch, wrong pinned responder key, or (KK)
    /// an initiator key not on the allow list.
    Undecryptable,
    /// The initiator's static key is not on the allow list.
    UnknownKey,
    /// The responder knows the initiator's version but does not accept it.
    VersionMismatch,
    /// No free session (or the application refused).
    Busy,
    /// A code this version does not know.
    Other(u8),
}

impl RejectCode {
    /// The wire value (1..=127).
    pub fn to_u8(self) -> u8 {
        match self {
            RejectCode::Undecryptable => 1,
            RejectCode::UnknownKey => 2,
            RejectCode::VersionMismatch => 3,
            RejectCode::Busy => 4,
            RejectCode::Other(c) => c & 0x7f,
        }
    }

    /// Parses a wire value.
    pub fn from_u8(c: u8) -> Self {
        match c {
            1 => RejectCode::Undecryptable,
            2 => RejectCode::UnknownKey,
            3 => RejectCode::VersionMismatch,
            4 => RejectCode::Busy,
            c => RejectCode::Other(c),
        }
    }
}

/// What a link packet is, from its first byte (for the session layer's demultiplexing).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PacketKind {
    /// A handshake message (msg1 from an initiator, msg2 or reject from a responder).
    Handshake,
    /// A transport packet for this session.
    Transport(SessionId),
}

/// Classifies a link packet; `None` for an empty one.
pub fn classify(packet: &[u8]) -> Option<PacketKind> {
    let b = *packet.first()?;
    Some(if b & 0x80 == 0 {
        PacketKind::Handshake
    } else {
        PacketKind::Transport(SessionId(b & 0x3f))
    })
}

/// The initiator ephemeral key of a msg1, to recognise retransmissions.
pub fn msg1_ephemeral(packet: &[u8]) -> Option<PublicKey> {
    let head = packet.get(..DHLEN)?;
    if head[0] & 0x80 != 0 {
        return None;
    }
    let mut e = [0u8; DHLEN];
    e[..DHLEN - 1].copy_from_slice(&head[1..]);
    e[DHLEN - 1] = head[0];
    Some(PublicKey(e))
}

/// Noise message -> wire: rotate the first 32 bytes right by one.
fn rotate_out(msg: &mut [u8]) {
    if msg.len() >= DHLEN {
        msg[..DHLEN].rotate_right(1);
    }
}

/// Wire -> the Noise message's leading ephemeral key (rotated back) and the bytes after it,
/// which are the message's rest unchanged ([`HandshakeState::read_message_split`]).
fn split_wire(wire: &[u8]) -> Option<([u8; DHLEN], &[u8])> {
    let e = msg1_ephemeral(wire)?;
    Some((e.0, &wire[DHLEN..]))
}

/// A request whose replay is harmless, the only kind allowed as 0-RTT early data.
///
/// IK/KK msg1 can be replayed by anyone who recorded it (see the module docs), so only wrap
/// requests that are idempotent (a Matrix `PUT` with a transaction id, a `GET`).
#[derive(Clone, Copy, Debug)]
pub struct Idempotent<'a>(&'a [u8]);

impl<'a> Idempotent<'a> {
    /// Asserts that `request` may safely be processed more than once.
    pub fn new(request: &'a [u8]) -> Self {
        Idempotent(request)
    }
}

/// Retransmission timers for msg1 (milliseconds).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RetransmitConfig {
    /// First timeout after sending msg1.
    pub initial_rto_ms: u64,
    /// Cap of the doubling timeout.
    pub max_rto_ms: u64,
    /// Total sends of msg1 (first one included) before giving up.
    pub max_sends: u8,
}

impl RetransmitConfig {
    /// Timers for a link of `bits_per_second`: the first timeout is twice the airtime of
    /// msg1 + msg2 (with `early_data` bytes each way) plus two seconds of processing slack.
    pub fn for_link_rate(bits_per_second: u32, early_data: usize) -> Self {
        let status = usize::from(early_data > 0);
        let bytes = (96 + 48 + 2 * early_data + status) as u64;
        let air = bytes * 8 * 1000 / u64::from(bits_per_second.max(1));
        let rto = 2 * air + 2000;
        RetransmitConfig {
            initial_rto_ms: rto,
            max_rto_ms: 8 * rto,
            max_sends: 6,
        }
    }
}

/// Transport options, the same on both ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TransportConfig {
    /// Nonces per key epoch: each direction rekeys (Noise §11.3) every `rekey_interval`
    /// packets, and an on-demand rekey skips to the next multiple. Must be equal on both ends.
    pub rekey_interval: u64,
}

impl Default for TransportConfig {
    /// 4096 packets per key (about 4 hours of airtime at 100 bit/s with 46-byte packets).
    fn default() -> Self {
        TransportConfig {
            rekey_interval: 4096,
        }
    }
}

/// Errors of the [`Initiator`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InitiatorError {
    /// A Noise failure (a forged or damaged msg2 gives `Noise(Decrypt)`; the state is kept).
    Noise(NoiseError),
    /// The packet is not a handshake packet.
    NotHandshake,
    /// Early data over [`MAX_EARLY_DATA`].
    EarlyDataTooLong,
    /// msg1 was sent `max_sends` times without an answer.
    TimedOut,
    /// The responder uses another version (from an unauthenticated reject).
    VersionMismatch {
        /// Ours.
        ours: LinkVersion,
        /// The responder's preferred one.
        theirs: LinkVersion,
    },
    /// The responder refused; `authenticated` when it came inside a msg2.
    Refused {
        /// Why.
        code: RejectCode,
        /// Whether the refusal is authenticated by the handshake.
        authenticated: bool,
    },
    /// A 0-RTT response does not fit the caller's buffer.
    BufferTooSmall,
}

impl From<NoiseError> for InitiatorError {
    fn from(e: NoiseError) -> Self {
        InitiatorError::Noise(e)
    }
}

/// Initiator settings.
#[derive(Clone, Debug)]
pub struct InitiatorConfig {
    /// IK or KK.
    pub pattern: LinkPattern,
    /// Our protocol and dictionary versions.
    pub version: LinkVersion,
    /// Our static key pair (the device's or tunnel's identity).
    pub local: Keypair,
    /// The responder's (gateway's) pinned static public key.
    pub remote: PublicKey,
    /// msg1 retransmission timers.
    pub retransmit: RetransmitConfig,
    /// Transport options.
    pub transport: TransportConfig,
}

/// The initiating side of a link handshake (device or tunnel).
///
/// Call protocol: [`new`](Self::new) builds msg1 once; call [`poll_transmit`](Self::poll_transmit)
/// with `now` to get msg1 to send (first time and verbatim on each timeout, until
/// [`InitiatorError::TimedOut`]); wake up at [`poll_timeout`](Self::poll_timeout); feed every
/// handshake packet from the responder to [`handle_response`](Self::handle_response), which
/// returns the [`Session`] once a valid msg2 arrives. Errors from forged or damaged packets
/// leave the state as it was. Once the session is established, or on
/// [`InitiatorError::Refused`]/[`InitiatorError::VersionMismatch`], drop the initiator; later
/// copies of msg2 are duplicates to ignore.
#[derive(Debug)]
pub struct Initiator {
    hs: HandshakeState,
    msg1: Vec<u8, MAX_MSG1>,
    version: LinkVersion,
    retransmit: RetransmitConfig,
    transport: TransportConfig,
    next_send_ms: Option<u64>,
    rto_ms: u64,
    sends: u8,
}

impl Initiator {
    /// Builds msg1 with a fresh ephemeral key from `rng` and optional idempotent early data.
    pub fn new<R: RngCore + CryptoRng>(
        cfg: InitiatorConfig,
        early: Option<Idempotent<'_>>,
        rng: &mut R,
    ) -> Result<Self, InitiatorError> {
        let mut init = Initiator::blank(&cfg);
        init.restart(&cfg, early, rng)?;
        Ok(init)
    }

    /// An initiator with no handshake (nothing to send, every response refused) for
    /// [`restart`](Self::restart) to start in place.
    pub(crate) const fn blank(cfg: &InitiatorConfig) -> Self {
        Initiator {
            hs: HandshakeState::blank(cfg.pattern.pattern(), true),
            msg1: Vec::new(),
            version: cfg.version,
            retransmit: cfg.retransmit,
            transport: cfg.transport,
            next_send_ms: None,
            rto_ms: 0,
            sends: 0,
        }
    }

    /// [`new`](Self::new) in place, forgetting the handshake this initiator had: a fresh
    /// ephemeral key and msg1, timers reset. The state and msg1 are written where they live,
    /// never copied through the stack (a device's boot stack). On error the initiator is
    /// [`blank`](Self::blank)-like: it sends nothing and accepts no response.
    pub(crate) fn restart<R: RngCore + CryptoRng>(
        &mut self,
        cfg: &InitiatorConfig,
        early: Option<Idempotent<'_>>,
        rng: &mut R,
    ) -> Result<(), InitiatorError> {
        self.next_send_ms = None;
        self.msg1.clear();
        let early = early.map_or(&[][..], |i| i.0);
        if early.len() > MAX_EARLY_DATA {
            return Err(InitiatorError::EarlyDataTooLong);
        }
        let prologue = cfg.version.prologue();
        let mut hc = HandshakeConfig::new(cfg.pattern.pattern(), true);
        hc.prologue = &prologue;
        hc.s = Some(cfg.local.clone());
        hc.rs = Some(cfg.remote);
        self.hs.initialize_from(cfg.pattern.initial_hash(), hc)?;
        self.hs.set_ephemeral(Keypair::generate(rng));
        // INVARIANT: MAX_MSG1 is msg1's capacity.
        self.msg1.resize(MAX_MSG1, 0).expect("msg1 capacity");
        let n = match self.hs.write_message(early, &mut self.msg1[..]) {
            Ok(n) => n,
            Err(e) => {
                self.msg1.clear();
                return Err(e.into());
            }
        };
        self.msg1.truncate(n);
        rotate_out(&mut self.msg1);
        self.version = cfg.version;
        self.retransmit = cfg.retransmit;
        self.transport = cfg.transport;
        self.next_send_ms = Some(0);
        self.rto_ms = cfg.retransmit.initial_rto_ms;
        self.sends = 0;
        Ok(())
    }

    /// The msg1 bytes (as sent every time).
    pub fn msg1(&self) -> &[u8] {
        &self.msg1
    }

    /// msg1 into `out` if it is due (first call, or a timeout expired); `Ok(None)` if not due.
    pub fn poll_transmit(
        &mut self,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Option<usize>, InitiatorError> {
        let Some(due) = self.next_send_ms else {
            return Err(InitiatorError::TimedOut);
        };
        if self.sends > 0 && now_ms < due {
            return Ok(None);
        }
        if self.sends >= self.retransmit.max_sends {
            self.next_send_ms = None;
            return Err(InitiatorError::TimedOut);
        }
        let dst = out
            .get_mut(..self.msg1.len())
            .ok_or(InitiatorError::Noise(NoiseError::BufferTooSmall))?;
        dst.copy_from_slice(&self.msg1);
        self.sends += 1;
        self.next_send_ms = Some(now_ms.saturating_add(self.rto_ms));
        self.rto_ms = (self.rto_ms.saturating_mul(2)).min(self.retransmit.max_rto_ms);
        Ok(Some(self.msg1.len()))
    }

    /// When [`poll_transmit`](Self::poll_transmit) next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_send_ms
    }

    /// How many times msg1 was handed out.
    pub fn sends(&self) -> u8 {
        self.sends
    }

    /// Processes a handshake packet from the responder. On a valid msg2 returns the session and
    /// the length of the 0-RTT response written to `response_out`.
    // Not inlined: inlined into a device's session client it costs ~1.1 KB of flash more (the
    // QEMU `matrix` firmware), for a call made once per handshake.
    #[inline(never)]
    pub fn handle_response(
        &self,
        packet: &[u8],
        response_out: &mut [u8],
    ) -> Result<(Session, usize), InitiatorError> {
        match classify(packet) {
            Some(PacketKind::Handshake) => {}
            _ => return Err(InitiatorError::NotHandshake),
        }
        if packet.len() < MIN_MSG2 {
            let r = packet
                .get(..REJECT_LEN)
                .ok_or(NoiseError::MessageTooShort)?;
            let theirs = LinkVersion {
                protocol: r[1],
                dict: u16::from_be_bytes([r[2], r[3]]),
            };
            if theirs != self.version {
                return Err(InitiatorError::VersionMismatch {
                    ours: self.version,
                    theirs,
                });
            }
            return Err(InitiatorError::Refused {
                code: RejectCode::from_u8(r[0]),
                authenticated: false,
            });
        }
        if packet.len() > MAX_MSG2 {
            return Err(NoiseError::MessageTooLong.into());
        }
        let (e, rest) = split_wire(packet).ok_or(NoiseError::MessageTooShort)?;
        let mut hs = self.hs.clone();
        // A msg2 holds at least `e` and the payload's tag (MIN_MSG2) besides the payload.
        let mut payload = [0u8; MAX_MSG2 - MIN_MSG2];
        let n = hs.read_message_split(Some(e), rest, &mut payload)?;
        let response = match payload[..n] {
            [] => &[][..],
            [0, ref rest @ ..] => rest,
            [code, ..] => {
                return Err(InitiatorError::Refused {
                    code: RejectCode::from_u8(code),
                    authenticated: true,
                })
            }
        };
        let dst = response_out
            .get_mut(..response.len())
            .ok_or(InitiatorError::BufferTooSmall)?;
        dst.copy_from_slice(response);
        let id = SessionId(packet[0] & 0x3f);
        let keys = hs.into_transport()?;
        Ok((
            Session::new(
                id,
                keys.tx,
                keys.rx,
                keys.handshake_hash,
                self.transport,
                self.version.tag_len(),
            ),
            response.len(),
        ))
    }
}

/// Errors of the responder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ResponderError {
    /// Not a handshake packet.
    NotHandshake,
    /// msg1 decrypted under no accepted or known version, pattern and key: version/dictionary
    /// mismatch with an unknown version, a wrong pinned key, or garbage.
    Undecryptable,
    /// The initiator (IK) proved a static key that is not on the allow list.
    UnknownKey,
    /// The initiator uses a version the responder knows but does not accept.
    VersionMismatch {
        /// The initiator's version.
        theirs: LinkVersion,
    },
    /// No free session id was found.
    NoSessionId,
    /// A Noise failure while answering (buffer sizes).
    Noise(NoiseError),
}

impl ResponderError {
    /// The code to put in a reject packet for this error.
    pub fn reject_code(self) -> RejectCode {
        match self {
            ResponderError::UnknownKey => RejectCode::UnknownKey,
            ResponderError::VersionMismatch { .. } => RejectCode::VersionMismatch,
            ResponderError::NoSessionId => RejectCode::Busy,
            _ => RejectCode::Undecryptable,
        }
    }
}

impl From<NoiseError> for ResponderError {
    fn from(e: NoiseError) -> Self {
        ResponderError::Noise(e)
    }
}

/// Responder (gateway) settings, borrowed from the caller's long-lived configuration.
#[derive(Clone, Copy, Debug)]
pub struct ResponderConfig<'a> {
    /// Our static key pair (the pinned gateway key).
    pub local: &'a Keypair,
    /// Versions we accept; the first is the one we advertise in rejects.
    pub versions: &'a [LinkVersion],
    /// Versions we recognise but refuse, to report [`ResponderError::VersionMismatch`].
    pub known_versions: &'a [LinkVersion],
    /// Initiator static keys we admit; anyone else is refused.
    pub allowed: &'a [PublicKey],
    /// Accept IK msg1.
    pub accept_ik: bool,
    /// Accept KK msg1 (tries each allowed key: one DH per key and version).
    pub accept_kk: bool,
    /// Transport options.
    pub transport: TransportConfig,
}

impl ResponderConfig<'_> {
    /// Writes the unauthenticated reject for `code` into `out`; returns [`REJECT_LEN`].
    pub fn write_reject(&self, code: RejectCode, out: &mut [u8]) -> Result<usize, NoiseError> {
        let v = self.versions.first().copied().unwrap_or(LinkVersion {
            protocol: 0,
            dict: 0,
        });
        let d = v.dict.to_be_bytes();
        out.get_mut(..REJECT_LEN)
            .ok_or(NoiseError::BufferTooSmall)?
            .copy_from_slice(&[code.to_u8(), v.protocol, d[0], d[1]]);
        Ok(REJECT_LEN)
    }

    /// Reads a msg1: finds the pattern, version and (KK) key it was made with, checks the
    /// initiator against the allow list and writes the early data into `early_out`.
    ///
    /// Check [`ResponderSession::is_retransmitted_msg1`] on existing sessions first: a
    /// retransmitted msg1 must be answered with the cached msg2, not with a new session.
    pub fn read_msg1(&self, packet: &[u8], early_out: &mut [u8]) -> Result<Msg1, ResponderError> {
        if classify(packet) != Some(PacketKind::Handshake) {
            return Err(ResponderError::NotHandshake);
        }
        if packet.len() > MAX_MSG1 {
            return Err(ResponderError::Undecryptable);
        }
        let (e, rest) = split_wire(packet).ok_or(ResponderError::Undecryptable)?;
        let msg = (e, rest);
        let accepted = self.versions.iter().map(|v| (*v, true));
        let known = self.known_versions.iter().map(|v| (*v, false));
        for (version, ok) in accepted.chain(known) {
            let prologue = version.prologue();
            if self.accept_ik && packet.len() >= 96 {
                if let Some(m) = self.try_msg1(LinkPattern::IK, &prologue, None, msg, early_out) {
                    return self.admit(m, version, ok, early_out);
                }
            }
            if self.accept_kk {
                for rs in self.allowed {
                    if let Some(m) =
                        self.try_msg1(LinkPattern::KK, &prologue, Some(*rs), msg, early_out)
                    {
                        return self.admit(m, version, ok, early_out);
                    }
                }
            }
        }
        Err(ResponderError::Undecryptable)
    }

    fn try_msg1(
        &self,
        pattern: LinkPattern,
        prologue: &[u8],
        rs: Option<PublicKey>,
        (e, rest): ([u8; DHLEN], &[u8]),
        early_out: &mut [u8],
    ) -> Option<(HandshakeState, usize, LinkPattern)> {
        let mut hc = HandshakeConfig::new(pattern.pattern(), false);
        hc.prologue = prologue;
        hc.s = Some(self.local.clone());
        hc.rs = rs;
        let mut hs = pattern.handshake(hc).ok()?;
        let n = hs.read_message_split(Some(e), rest, early_out).ok()?;
        Some((hs, n, pattern))
    }

    fn admit(
        &self,
        (hs, early_len, pattern): (HandshakeState, usize, LinkPattern),
        version: LinkVersion,
        accepted: bool,
        early_out: &mut [u8],
    ) -> Result<Msg1, ResponderError> {
        let wipe = |early_out: &mut [u8]| early_out[..early_len].fill(0);
        if !accepted {
            wipe(early_out);
            return Err(ResponderError::VersionMismatch { theirs: version });
        }
        // INVARIANT: after reading msg1 of IK or KK the remote static key is known.
        let peer = hs.remote_static().expect("IK/KK msg1 gives rs");
        if !self.allowed.contains(&peer) {
            wipe(early_out);
            return Err(ResponderError::UnknownKey);
        }
        // INVARIANT: msg1 of IK/KK starts with `e`.
        let ie = hs.remote_ephemeral().expect("msg1 has e");
        Ok(Msg1 {
            hs,
            peer,
            version,
            pattern,
            early_len,
            initiator_e: ie,
            transport: self.transport,
        })
    }
}

/// A msg1 the responder has read and admitted; answer it with [`accept`](Self::accept) or
/// [`refuse`](Self::refuse).
#[derive(Debug)]
pub struct Msg1 {
    hs: HandshakeState,
    peer: PublicKey,
    version: LinkVersion,
    pattern: LinkPattern,
    early_len: usize,
    initiator_e: PublicKey,
    transport: TransportConfig,
}

impl Msg1 {
    /// The initiator's authenticated static key.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The version the initiator used.
    pub fn version(&self) -> LinkVersion {
        self.version
    }

    /// IK or KK.
    pub fn pattern(&self) -> LinkPattern {
        self.pattern
    }

    /// Length of the early data written to `early_out` by `read_msg1` (replayable, see
    /// [`Idempotent`]).
    pub fn early_data_len(&self) -> usize {
        self.early_len
    }

    /// Accepts: assigns a session id for which `is_free` says yes, writes msg2 (with an optional
    /// 0-RTT `response`) and returns the session with msg2 cached for retransmission.
    pub fn accept<R: RngCore + CryptoRng>(
        self,
        rng: &mut R,
        mut is_free: impl FnMut(SessionId) -> bool,
        response: &[u8],
    ) -> Result<ResponderSession, ResponderError> {
        if response.len() > MAX_EARLY_DATA {
            return Err(NoiseError::MessageTooLong.into());
        }
        let mut payload = [0u8; 1 + MAX_EARLY_DATA];
        let payload = if response.is_empty() {
            &payload[..0]
        } else {
            payload[1..=response.len()].copy_from_slice(response);
            &payload[..=response.len()]
        };
        for _ in 0..MAX_SESSION_ID_TRIES {
            let e = Keypair::generate(rng);
            let id = SessionId(e.public().0[DHLEN - 1] & 0x3f);
            if !is_free(id) {
                continue;
            }
            let mut hs = self.hs.clone();
            hs.set_ephemeral(e);
            let mut msg2 = [0u8; MAX_MSG2];
            let n = hs.write_message(payload, &mut msg2)?;
            rotate_out(&mut msg2[..n]);
            let keys = hs.into_transport()?;
            let mut cached = Vec::new();
            // INVARIANT: n <= MAX_MSG2, the buffer it was written into.
            cached.extend_from_slice(&msg2[..n]).expect("msg2 fits");
            return Ok(ResponderSession {
                session: Session::new(
                    id,
                    keys.tx,
                    keys.rx,
                    keys.handshake_hash,
                    self.transport,
                    self.version.tag_len(),
                ),
                msg2: cached,
                initiator_e: self.initiator_e,
                peer: self.peer,
                version: self.version,
            });
        }
        Err(ResponderError::NoSessionId)
    }

    /// Refuses with an authenticated msg2 carrying `code`; returns its length in `out`.
    pub fn refuse<R: RngCore + CryptoRng>(
        self,
        rng: &mut R,
        code: RejectCode,
        out: &mut [u8],
    ) -> Result<usize, ResponderError> {
        let mut hs = self.hs;
        hs.set_ephemeral(Keypair::generate(rng));
        let c = code.to_u8().max(1);
        let n = hs.write_message(&[c], out)?;
        rotate_out(&mut out[..n]);
        Ok(n)
    }
}

/// A responder's session: the transport plus the cached msg2 for verbatim retransmission.
#[derive(Debug)]
pub struct ResponderSession {
    /// The transport.
    pub session: Session,
    msg2: Vec<u8, MAX_MSG2>,
    initiator_e: PublicKey,
    peer: PublicKey,
    version: LinkVersion,
}

impl ResponderSession {
    /// The msg2 to send now and again, verbatim, whenever msg1 is retransmitted.
    pub fn msg2(&self) -> &[u8] {
        &self.msg2
    }

    /// Whether `packet` is a retransmission of the msg1 this session answered (same initiator
    /// ephemeral key); if so, send [`msg2`](Self::msg2) again and create no new state.
    pub fn is_retransmitted_msg1(&self, packet: &[u8]) -> bool {
        msg1_ephemeral(packet) == Some(self.initiator_e)
    }

    /// The initiator's static key.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// Writes the session for persistence: the peer's key, the versions and
    /// [`Session::export`]. Holds secret keys: store it like a private key.
    pub fn export(&self, out: &mut [u8; RESPONDER_EXPORT_LEN]) {
        out[..DHLEN].copy_from_slice(&self.peer.0);
        out[DHLEN] = self.version.protocol;
        out[DHLEN + 1..DHLEN + 3].copy_from_slice(&self.version.dict.to_be_bytes());
        let mut s = [0u8; SESSION_EXPORT_LEN];
        self.session.export(&mut s);
        out[DHLEN + 3..].copy_from_slice(&s);
    }

    /// Restores a session from [`export`](Self::export) (see [`Session::import`]). The
    /// handshake is over: a msg1 seen after the restore starts a new session.
    ///
    /// # Errors
    /// [`TransportError::Malformed`] for bytes that are not such an export.
    pub fn import(bytes: &[u8]) -> Result<Self, TransportError> {
        if bytes.len() != RESPONDER_EXPORT_LEN {
            return Err(TransportError::Malformed);
        }
        let mut peer = [0u8; DHLEN];
        peer.copy_from_slice(&bytes[..DHLEN]);
        Ok(ResponderSession {
            session: Session::import(&bytes[DHLEN + 3..])?,
            msg2: Vec::new(),
            // All zero is no valid ephemeral key: no msg1 will look like a retransmission.
            initiator_e: PublicKey([0; DHLEN]),
            peer: PublicKey(peer),
            version: LinkVersion {
                protocol: bytes[DHLEN],
                dict: u16::from_be_bytes([bytes[DHLEN + 1], bytes[DHLEN + 2]]),
            },
        })
    }

    /// The negotiated version.
    pub fn version(&self) -> LinkVersion {
        self.version
    }
}

/// Errors of transport [`Session::seal`]/[`Session::open`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransportError {
    /// Not a transport packet, or shorter than header + tag.
    Malformed,
    /// The header names another session.
    WrongSession,
    /// The nonce was already received.
    Replay,
    /// The nonce is behind the replay window.
    TooOld,
    /// Authentication failed (tampered, forged, or keys out of reach); nothing changed.
    Decrypt,
    /// The output buffer is too small.
    BufferTooSmall,
    /// The 64-bit nonce is used up: handshake again.
    NonceExhausted,
}

impl From<ReplayError> for TransportError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replay => TransportError::Replay,
            ReplayError::TooOld => TransportError::TooOld,
        }
    }
}

/// An established transport session (both directions), heap-free.
///
/// Packets carry the low 8 bits of the nonce and the key epoch parity; see the module docs for
/// the layout. Key epochs are tied to nonces: nonce `n` is sealed with the key of epoch
/// `n / rekey_interval`, each epoch's key being `REKEY` of the previous one (Noise §11.3), and
/// the header's epoch bit is that epoch's parity. An on-demand [`rekey`](Self::rekey) skips the
/// sending nonce to the next epoch boundary. The receiver therefore always knows which key a
/// nonce needs: it keeps the current and previous epoch keys and derives later ones (up to 16
/// epochs ahead), so neither long loss bursts nor reordering across a rekey desynchronise the
/// peers. One replay window covers all epochs. A packet that fails authentication changes
/// nothing.
///
/// Call protocol: [`seal`](Self::seal) each outgoing payload, [`open`](Self::open) each
/// incoming transport packet; no timers.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    tx: CipherState,
    tx_epoch: u64,
    rx: CipherState,
    rx_prev: Option<CipherState>,
    rx_epoch: u64,
    window: ReplayWindow,
    rekey_interval: u64,
    handshake_hash: [u8; HASHLEN],
    /// Tag bytes per packet ([`LinkVersion::tag_len`]).
    tag_len: u8,
}

/// The whole per-session transport state (both directions and the replay window).
const _: () = assert!(core::mem::size_of::<Session>() <= 256);

/// Length of [`Session::export`]'s output.
pub const SESSION_EXPORT_LEN: usize = 1 + 1 + 8 + (1 + 32 + 8) * 3 + 8 + 8 + 8 + 8 + HASHLEN;

const EXPORT_FORMAT: u8 = 1;
/// Export format of a session with [`SHORT_TAG_LEN`]-byte tags (same layout).
const EXPORT_FORMAT_SHORT_TAGS: u8 = 2;

/// Length of [`ResponderSession::export`]'s output.
pub const RESPONDER_EXPORT_LEN: usize = DHLEN + 3 + SESSION_EXPORT_LEN;

/// How many epochs ahead of the current one the receiver derives keys for.
const MAX_EPOCHS_AHEAD: u64 = 16;

impl Session {
    fn new(
        id: SessionId,
        tx: CipherState,
        rx: CipherState,
        handshake_hash: [u8; HASHLEN],
        cfg: TransportConfig,
        tag_len: usize,
    ) -> Self {
        Session {
            id,
            tx,
            tx_epoch: 0,
            rx,
            rx_prev: None,
            rx_epoch: 0,
            window: ReplayWindow::new(),
            rekey_interval: cfg.rekey_interval.max(1),
            handshake_hash,
            tag_len: tag_len.clamp(1, TAGLEN) as u8,
        }
    }

    /// Tag bytes of this session's packets (16, or [`SHORT_TAG_LEN`] for the device profile).
    pub fn tag_len(&self) -> usize {
        usize::from(self.tag_len)
    }

    /// Writes the whole transport state for persistence (a gateway that restarts keeps its
    /// sessions). The output holds secret keys: store it like a private key (mode 0600).
    ///
    /// Persist whenever [`tx_epoch`](Self::tx_epoch) changes (before sending the first packet
    /// of the new epoch) and after handling received packets; [`import`](Self::import) moves
    /// the sending side to the next epoch, so no nonce sent after the export is ever reused.
    pub fn export(&self, out: &mut [u8; SESSION_EXPORT_LEN]) {
        let mut w = Writer {
            out: &mut out[..],
            at: 0,
        };
        let format = if self.tag_len() == TAGLEN {
            EXPORT_FORMAT
        } else {
            EXPORT_FORMAT_SHORT_TAGS
        };
        w.put(&[format, self.id.0]);
        w.put(&self.rekey_interval.to_be_bytes());
        for cs in [Some(&self.tx), Some(&self.rx), self.rx_prev.as_ref()] {
            let (k, n) = cs.map_or((None, 0), CipherState::parts);
            w.put(&[u8::from(k.is_some())]);
            w.put(&k.unwrap_or([0; 32]));
            w.put(&n.to_be_bytes());
        }
        let (highest, bitmap) = self.window.parts();
        for v in [self.tx_epoch, self.rx_epoch, highest, bitmap] {
            w.put(&v.to_be_bytes());
        }
        w.put(&self.handshake_hash);
    }

    /// Restores a session written by [`export`](Self::export). The sending side skips to the
    /// start of its next key epoch (Noise §11.3 rekey), which the peer follows by itself.
    ///
    /// # Errors
    /// [`TransportError::Malformed`] for bytes that are not an export of this format.
    pub fn import(bytes: &[u8]) -> Result<Self, TransportError> {
        let tag_len = match bytes.first() {
            Some(&EXPORT_FORMAT) => TAGLEN,
            Some(&EXPORT_FORMAT_SHORT_TAGS) => SHORT_TAG_LEN,
            _ => return Err(TransportError::Malformed),
        };
        if bytes.len() != SESSION_EXPORT_LEN {
            return Err(TransportError::Malformed);
        }
        let id = SessionId::new(bytes[1]).ok_or(TransportError::Malformed)?;
        let mut r = Reader { b: &bytes[2..] };
        let rekey_interval = r.u64();
        let mut cs = [None, None, None];
        for c in &mut cs {
            let has = r.take(1)[0];
            let mut k = [0u8; 32];
            k.copy_from_slice(r.take(32));
            let n = r.u64();
            *c = match has {
                0 => None,
                1 => Some(CipherState::from_parts(Some(k), n)),
                _ => return Err(TransportError::Malformed),
            };
        }
        let [Some(tx), Some(rx), rx_prev] = cs else {
            return Err(TransportError::Malformed);
        };
        let (tx_epoch, rx_epoch, highest, bitmap) = (r.u64(), r.u64(), r.u64(), r.u64());
        let mut handshake_hash = [0u8; HASHLEN];
        handshake_hash.copy_from_slice(r.take(HASHLEN));
        if rekey_interval == 0 || tx.parts().1 / rekey_interval != tx_epoch {
            return Err(TransportError::Malformed);
        }
        let mut s = Session {
            id,
            tx,
            tx_epoch,
            rx,
            rx_prev,
            rx_epoch,
            window: ReplayWindow::from_parts(highest, bitmap),
            rekey_interval,
            handshake_hash,
            tag_len: tag_len as u8,
        };
        // Nonces of the current epoch may have been used after the export: never reuse them.
        let next = (s.tx_epoch + 1).saturating_mul(s.rekey_interval);
        s.tx.set_nonce(next);
        s.advance_tx();
        Ok(s)
    }

    /// The session id assigned by the responder.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The handshake hash, for channel binding (Noise §11.2): bind tokens to the session.
    pub fn handshake_hash(&self) -> &[u8; HASHLEN] {
        &self.handshake_hash
    }

    /// The nonce of the next packet sent.
    pub fn next_nonce(&self) -> u64 {
        self.tx.nonce()
    }

    /// The key epoch of the next packet sent.
    pub fn tx_epoch(&self) -> u64 {
        self.tx.nonce() / self.rekey_interval
    }

    /// Rekeys the sending direction now by moving to the next epoch (the skipped nonces are
    /// never used); the peer follows from the nonce and epoch bit. A no-op when the next nonce
    /// starts an epoch: its key has not been used yet.
    pub fn rekey(&mut self) {
        let n = self.tx.nonce();
        if !n.is_multiple_of(self.rekey_interval) {
            let next = (self.tx_epoch() + 1).saturating_mul(self.rekey_interval);
            self.tx.set_nonce(next);
        }
        self.advance_tx();
    }

    fn advance_tx(&mut self) {
        let want = self.tx_epoch();
        while self.tx_epoch < want {
            self.tx.rekey();
            self.tx_epoch += 1;
        }
    }

    /// Encrypts `payload` into a transport packet in `out`; returns its length
    /// (`payload.len() + 18`, or `+ 6` with [`SHORT_TAG_LEN`]-byte tags). `out` needs room for
    /// `payload.len() + 18` bytes either way.
    pub fn seal(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        let dst = out
            .get_mut(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + payload.len())
            .ok_or(TransportError::BufferTooSmall)?;
        dst.copy_from_slice(payload);
        self.seal_in_place(out, payload.len())
    }

    /// [`seal`](Self::seal) of the `len`-byte payload already in `packet`, after the
    /// [`TRANSPORT_HEADER_LEN`] header bytes: encrypted where it is (no copy of the payload).
    /// `packet` needs room for `len + 18` bytes.
    pub fn seal_in_place(
        &mut self,
        packet: &mut [u8],
        len: usize,
    ) -> Result<usize, TransportError> {
        let n = self.tx.nonce();
        if n >= u64::MAX - 1 {
            return Err(TransportError::NonceExhausted);
        }
        if packet.len() < len + TRANSPORT_OVERHEAD {
            return Err(TransportError::BufferTooSmall);
        }
        self.advance_tx();
        let epoch_bit = (self.tx_epoch & 1) as u8;
        let header = [0x80 | (epoch_bit << 6) | self.id.0, n as u8];
        let (head, body) = packet.split_at_mut(TRANSPORT_HEADER_LEN);
        head.copy_from_slice(&header);
        let sealed = self
            .tx
            .seal_in_place_at(n, &header, body, len)
            .map_err(|_| TransportError::BufferTooSmall)?;
        self.tx.set_nonce(n + 1);
        // A short tag is the full tag's first bytes.
        Ok(TRANSPORT_HEADER_LEN + sealed - (TAGLEN - self.tag_len()))
    }

    /// Candidate full nonces for the truncated `low`, most likely first: the nearest to the
    /// next expected nonce, then 256, 512, 768 on (loss bursts), then the first matching
    /// nonces of the next two epochs (on-demand rekeys skip nonces).
    fn nonce_candidates(&self, low: u8) -> [Option<u64>; 6] {
        let base = self.window.reconstruct(low);
        // The starts of the next two epochs (one division), then the first nonce at or after
        // each whose low byte is `low`.
        let next = (self.window.next_expected() / self.rekey_interval)
            .checked_add(1)
            .and_then(|e| e.checked_mul(self.rekey_interval));
        let after = next.and_then(|s| s.checked_add(self.rekey_interval));
        let at_low = |s: Option<u64>| s?.checked_add(u64::from(low.wrapping_sub(s? as u8)));
        [
            Some(base),
            base.checked_add(256),
            base.checked_add(512),
            base.checked_add(768),
            at_low(next),
            at_low(after),
        ]
    }

    /// Authenticates and decrypts a transport packet into `out`; returns the payload length.
    /// Replays, too-old and forged packets are refused and leave the state unchanged.
    pub fn open(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        let overhead = TRANSPORT_HEADER_LEN + self.tag_len();
        if packet.len() < overhead || packet[0] & 0x80 == 0 {
            return Err(TransportError::Malformed);
        }
        if packet[0] & 0x3f != self.id.0 {
            return Err(TransportError::WrongSession);
        }
        if out.len() < packet.len() - overhead {
            return Err(TransportError::BufferTooSmall);
        }
        let header = &packet[..2];
        let body = &packet[2..];
        let epoch_bit = u64::from(packet[0] >> 6 & 1);
        let candidates = self.nonce_candidates(packet[1]);
        let mut err = match self.window.check(self.window.reconstruct(packet[1])) {
            Err(e) => e.into(),
            Ok(()) => TransportError::Decrypt,
        };
        let mut tried = [u64::MAX; 6];
        for (i, n) in candidates.into_iter().enumerate() {
            let Some(n) = n else { continue };
            if tried.contains(&n) || self.window.check(n).is_err() {
                continue;
            }
            tried[i] = n;
            let epoch = n / self.rekey_interval;
            if epoch & 1 != epoch_bit {
                continue;
            }
            if epoch + 1 < self.rx_epoch {
                // The key of that epoch is erased (forward secrecy): as good as too old.
                err = TransportError::TooOld;
                continue;
            }
            if epoch > self.rx_epoch.saturating_add(MAX_EPOCHS_AHEAD) {
                continue;
            }
            // The key of that epoch: current, previous, or derived (adopted if it opens).
            let derived = (epoch > self.rx_epoch).then(|| self.derive_rx(epoch));
            let key = match &derived {
                Some((_, key)) => Some(key),
                None if epoch == self.rx_epoch => Some(&self.rx),
                None => self.rx_prev.as_ref(),
            };
            let opened = key.is_some_and(|k| {
                k.open_truncated_at(n, header, body, self.tag_len(), out)
                    .is_ok()
            });
            if opened {
                if let Some((prev, key)) = derived {
                    self.rx_prev = Some(prev);
                    self.rx = key;
                    self.rx_epoch = epoch;
                }
                self.window.commit(n);
                return Ok(body.len() - self.tag_len());
            }
        }
        Err(err)
    }

    /// The receive keys of epochs `epoch - 1` and `epoch` (> current), derived by rekeying.
    fn derive_rx(&self, epoch: u64) -> (CipherState, CipherState) {
        let mut prev = self.rx.clone();
        let mut key = self.rx.rekeyed();
        for _ in self.rx_epoch + 1..epoch {
            prev = key;
            key = prev.rekeyed();
        }
        (prev, key)
    }
}

/// Sequential writer into a fixed buffer (export only; sizes are constants).
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        // INVARIANT: export writes exactly SESSION_EXPORT_LEN bytes into a buffer of that size.
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
}

/// Sequential reader over a buffer whose length was checked up front.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        // INVARIANT: import checked the total length against SESSION_EXPORT_LEN.
        let (h, t) = self.b.split_at(n);
        self.b = t;
        h
    }

    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8));
        u64::from_be_bytes(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_the_zero_bit_first() {
        let mut m = [0u8; 40];
        for (i, b) in m.iter_mut().enumerate() {
            *b = i as u8;
        }
        m[31] = 0x7f;
        let orig = m;
        rotate_out(&mut m);
        assert_eq!(&m[..4], &[0x7f, 0, 1, 2]);
        assert_eq!(&m[32..], &orig[32..]);
        assert_eq!(classify(&m), Some(PacketKind::Handshake));
        assert_eq!(
            msg1_ephemeral(&m).map(|e| e.0.to_vec()),
            Some(orig[..32].to_vec())
        );
        let (e, rest) = split_wire(&m).unwrap();
        assert_eq!((&e[..], rest), (&orig[..32], &orig[32..]));
        assert_eq!(split_wire(&m[..31]), None);
    }

    #[test]
    fn prologue_and_reject_bytes() {
        let v = LinkVersion {
            protocol: 1,
            dict: 0x0203,
        };
        assert_eq!(&v.prologue(), b"lowband\x01\x02\x03");
        let kp = Keypair::from_secret([9; 32]);
        let cfg = ResponderConfig {
            local: &kp,
            versions: &[v],
            known_versions: &[],
            allowed: &[],
            accept_ik: true,
            accept_kk: false,
            transport: TransportConfig::default(),
        };
        let mut out = [0u8; 4];
        assert_eq!(
            cfg.write_reject(RejectCode::VersionMismatch, &mut out),
            Ok(4)
        );
        assert_eq!(out, [3, 1, 2, 3]);
        assert_eq!(
            classify(&[0x80 | 0x40 | 5, 0]),
            Some(PacketKind::Transport(SessionId(5)))
        );
    }

    #[test]
    fn initial_hashes_are_the_protocol_names_hashes() {
        use crate::noise::{Blake2s, NoiseHash};
        for (p, name) in [
            (LinkPattern::IK, &b"Noise_IK_25519_ChaChaPoly_BLAKE2s"[..]),
            (LinkPattern::KK, b"Noise_KK_25519_ChaChaPoly_BLAKE2s"),
        ] {
            assert_eq!(*p.initial_hash(), Blake2s::hash(&[name]));
            // And the state built from it is the state Initialize builds from the name.
            let cfg = || {
                let mut hc = HandshakeConfig::new(p.pattern(), true);
                hc.prologue = b"lowband\x02\x00\x01";
                hc.s = Some(Keypair::from_secret([1; 32]));
                hc.rs = Some(Keypair::from_secret([2; 32]).public());
                hc
            };
            let want = HandshakeState::<Blake2s>::new(cfg()).unwrap();
            let got = p.handshake(cfg()).unwrap();
            assert_eq!(got.handshake_hash(), want.handshake_hash());
            assert_eq!(got.handshake_hash(), {
                let mut s = crate::noise::SymmetricState::<Blake2s>::new(name);
                s.mix_hash(b"lowband\x02\x00\x01");
                // Pre-messages: KK `-> s` and `<- s`, IK `<- s` only.
                if p == LinkPattern::KK {
                    s.mix_hash(&Keypair::from_secret([1; 32]).public().0);
                }
                s.mix_hash(&Keypair::from_secret([2; 32]).public().0);
                s.handshake_hash()
            });
        }
    }

    #[test]
    fn retransmit_timers_for_100_bps() {
        // 144 bytes at 100 bit/s = 11.52 s of airtime; RTO = 2 x 11.52 s + 2 s.
        let r = RetransmitConfig::for_link_rate(100, 0);
        assert_eq!(r.initial_rto_ms, 25_040);
        assert_eq!(r.max_rto_ms, 200_320);
    }

    #[test]
    fn device_profile_sessions_carry_4_byte_tags() {
        let cfg = TransportConfig { rekey_interval: 16 };
        let v = LinkVersion {
            protocol: DEVICE_PROTOCOL,
            dict: 1,
        };
        let t = v.tag_len();
        assert_eq!(t, SHORT_TAG_LEN);
        let id = SessionId(3);
        let mk = |a: u8, b: u8| {
            Session::new(
                id,
                CipherState::new([a; 32]),
                CipherState::new([b; 32]),
                [0; 32],
                cfg,
                t,
            )
        };
        let (mut a, mut b) = (mk(1, 2), mk(2, 1));
        let mut p = [0u8; 64];
        let mut o = [0u8; 64];
        let n = b.seal(b"ping", &mut p).unwrap();
        assert_eq!(n, 2 + 4 + 4, "header, payload, 4-byte tag");
        // The short tag is the full tag's prefix.
        let mut full = mk(2, 1);
        let mut q = [0u8; 64];
        let m = full.seal(b"ping", &mut q).unwrap();
        assert_eq!(&p[..n], &q[..n]);
        assert_eq!(m, n);
        let k = a.open(&p[..n], &mut o).unwrap();
        assert_eq!(&o[..k], b"ping");
        // Any flipped bit (header, body or tag) fails, and changes nothing.
        let n = b.seal(b"pong", &mut p).unwrap();
        for i in 0..n {
            for bit in 0..8 {
                let mut x = p;
                x[i] ^= 1 << bit;
                assert!(a.open(&x[..n], &mut o).is_err(), "byte {i} bit {bit}");
            }
        }
        let k = a.open(&p[..n], &mut o).unwrap();
        assert_eq!(&o[..k], b"pong");
        assert_eq!(a.open(&p[..n], &mut o), Err(TransportError::Replay));
        // Too short for a header and a tag.
        assert_eq!(a.open(&p[..5], &mut o), Err(TransportError::Malformed));
        // Export and import keep the tag length.
        let mut saved = [0u8; SESSION_EXPORT_LEN];
        b.export(&mut saved);
        assert_eq!(saved[0], EXPORT_FORMAT_SHORT_TAGS);
        let mut b2 = Session::import(&saved).unwrap();
        assert_eq!(b2.tag_len(), SHORT_TAG_LEN);
        let n = b2.seal(b"again", &mut p).unwrap();
        assert_eq!(n, 2 + 5 + 4);
        let k = a.open(&p[..n], &mut o).unwrap();
        assert_eq!(&o[..k], b"again");
    }

    #[test]
    fn export_import_resumes_without_nonce_reuse() {
        let cfg = TransportConfig { rekey_interval: 16 };
        let id = SessionId(3);
        let mut a = Session::new(
            id,
            CipherState::new([1; 32]),
            CipherState::new([2; 32]),
            [0; 32],
            cfg,
            TAGLEN,
        );
        let mut b = Session::new(
            id,
            CipherState::new([2; 32]),
            CipherState::new([1; 32]),
            [0; 32],
            cfg,
            TAGLEN,
        );
        let mut p = [0u8; 64];
        let mut o = [0u8; 64];
        for _ in 0..5 {
            let n = b.seal(b"ping", &mut p).unwrap();
            a.open(&p[..n], &mut o).unwrap();
        }
        let mut saved = [0u8; SESSION_EXPORT_LEN];
        b.export(&mut saved);
        // b sends more after the export, then "crashes".
        let n = b.seal(b"lost", &mut p).unwrap();
        a.open(&p[..n], &mut o).unwrap();
        let mut b2 = Session::import(&saved).unwrap();
        assert!(
            b2.next_nonce() >= b2.rekey_interval,
            "skipped to the next epoch"
        );
        let n = b2.seal(b"again", &mut p).unwrap();
        assert_ne!((p[0] >> 6) & 1, 0, "epoch bit flipped");
        let m = a.open(&p[..n], &mut o).unwrap();
        assert_eq!(&o[..m], b"again");
        // And the restored side still opens what a sends.
        let n = a.seal(b"pong", &mut p).unwrap();
        let m = b2.open(&p[..n], &mut o).unwrap();
        assert_eq!(&o[..m], b"pong");
        assert!(Session::import(&saved[..10]).is_err());
        let mut bad = saved;
        bad[0] = 9;
        assert!(Session::import(&bad).is_err());
    }
}
