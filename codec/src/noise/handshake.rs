//! `SymmetricState` and `HandshakeState` of Noise rev 34 (§5.2, §5.3), with the fundamental
//! handshake patterns (§7.4, §7.5) and the `psk` modifier (§9), all heap-free.

use zeroize::Zeroize;

use super::crypto::{hkdf, CipherState, Keypair, NoiseHash, PublicKey, DHLEN, HASHLEN, TAGLEN};
use super::crypto::{Blake2s, MAX_MESSAGE_LEN};
use super::NoiseError;

/// A token of a handshake pattern (Noise §7.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Token {
    /// `e`: send or receive an ephemeral public key.
    E,
    /// `s`: send or receive a (maybe encrypted) static public key.
    S,
    /// `ee`: DH(e, re).
    Ee,
    /// `es`: DH of the initiator's ephemeral and the responder's static key.
    Es,
    /// `se`: DH of the initiator's static and the responder's ephemeral key.
    Se,
    /// `ss`: DH(s, rs).
    Ss,
}

use Token::{Ee, Es, Se, Ss, E, S};

/// The handshake patterns implemented (Noise §7.4 one-way and §7.5 interactive).
///
/// lowband uses [`Pattern::IK`] and [`Pattern::KK`]; the others test the same core against the
/// vectors and cost nothing but their token tables.
#[allow(missing_docs)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pattern {
    N,
    K,
    X,
    NN,
    NK,
    NX,
    KN,
    KK,
    KX,
    XN,
    XK,
    XX,
    IN,
    IK,
    IX,
}

impl Pattern {
    /// All implemented patterns.
    pub const ALL: [Pattern; 15] = [
        Pattern::N,
        Pattern::K,
        Pattern::X,
        Pattern::NN,
        Pattern::NK,
        Pattern::NX,
        Pattern::KN,
        Pattern::KK,
        Pattern::KX,
        Pattern::XN,
        Pattern::XK,
        Pattern::XX,
        Pattern::IN,
        Pattern::IK,
        Pattern::IX,
    ];

    /// The pattern's name as in the protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::N => "N",
            Pattern::K => "K",
            Pattern::X => "X",
            Pattern::NN => "NN",
            Pattern::NK => "NK",
            Pattern::NX => "NX",
            Pattern::KN => "KN",
            Pattern::KK => "KK",
            Pattern::KX => "KX",
            Pattern::XN => "XN",
            Pattern::XK => "XK",
            Pattern::XX => "XX",
            Pattern::IN => "IN",
            Pattern::IK => "IK",
            Pattern::IX => "IX",
        }
    }

    /// Parses a pattern name (`"IK"`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether the responder knows the initiator's static key in advance (`-> s` pre-message).
    pub fn initiator_static_premessage(self) -> bool {
        matches!(self, Pattern::K | Pattern::KN | Pattern::KK | Pattern::KX)
    }

    /// Whether the initiator knows the responder's static key in advance (`<- s` pre-message).
    pub fn responder_static_premessage(self) -> bool {
        matches!(
            self,
            Pattern::N
                | Pattern::K
                | Pattern::X
                | Pattern::NK
                | Pattern::KK
                | Pattern::XK
                | Pattern::IK
        )
    }

    /// One-way patterns: only the initiator sends, and the transport is one-way (§7.4).
    pub fn is_one_way(self) -> bool {
        matches!(self, Pattern::N | Pattern::K | Pattern::X)
    }

    /// The message patterns; message `i` is sent by the initiator when `i` is even.
    pub fn messages(self) -> &'static [&'static [Token]] {
        match self {
            Pattern::N => &[&[E, Es]],
            Pattern::K => &[&[E, Es, Ss]],
            Pattern::X => &[&[E, Es, S, Ss]],
            Pattern::NN => &[&[E], &[E, Ee]],
            Pattern::NK => &[&[E, Es], &[E, Ee]],
            Pattern::NX => &[&[E], &[E, Ee, S, Es]],
            Pattern::KN => &[&[E], &[E, Ee, Se]],
            Pattern::KK => &[&[E, Es, Ss], &[E, Ee, Se]],
            Pattern::KX => &[&[E], &[E, Ee, Se, S, Es]],
            Pattern::XN => &[&[E], &[E, Ee], &[S, Se]],
            Pattern::XK => &[&[E, Es], &[E, Ee], &[S, Se]],
            Pattern::XX => &[&[E], &[E, Ee, S, Es], &[S, Se]],
            Pattern::IN => &[&[E, S], &[E, Ee, Se]],
            Pattern::IK => &[&[E, Es, S, Ss], &[E, Ee, Se]],
            Pattern::IX => &[&[E, S], &[E, Ee, Se, S, Es]],
        }
    }
}

/// The Noise `SymmetricState` (§5.2): chaining key, handshake hash and a `CipherState`.
#[derive(Clone, Debug)]
pub struct SymmetricState<H: NoiseHash = Blake2s> {
    ck: [u8; HASHLEN],
    h: [u8; HASHLEN],
    cipher: CipherState,
    _hash: core::marker::PhantomData<H>,
}

impl<H: NoiseHash> Drop for SymmetricState<H> {
    fn drop(&mut self) {
        self.ck.zeroize();
    }
}

impl<H: NoiseHash> SymmetricState<H> {
    /// `InitializeSymmetric(protocol_name)`.
    pub fn new(protocol_name: &[u8]) -> Self {
        let mut s = Self::blank();
        s.initialize(&Self::initial_hash(protocol_name));
        s
    }

    /// A state with all-zero `ck` and `h`, to be [`initialize`](Self::initialize)d.
    const fn blank() -> Self {
        SymmetricState {
            ck: [0; HASHLEN],
            h: [0; HASHLEN],
            cipher: CipherState::empty(),
            _hash: core::marker::PhantomData,
        }
    }

    /// The `h` of `InitializeSymmetric(protocol_name)`: the name zero-padded, or its hash when
    /// longer than HASHLEN (Noise §5.2).
    fn initial_hash(protocol_name: &[u8]) -> [u8; HASHLEN] {
        let mut h = [0u8; HASHLEN];
        match h.get_mut(..protocol_name.len()) {
            Some(head) => head.copy_from_slice(protocol_name),
            None => h = H::hash(&[protocol_name]),
        }
        h
    }

    /// `InitializeSymmetric` in place, whatever the state was, from its `h`
    /// ([`initial_hash`](Self::initial_hash)).
    fn initialize(&mut self, h: &[u8; HASHLEN]) {
        self.h = *h;
        self.ck = *h;
        self.cipher = CipherState::empty();
    }

    /// `MixKey(input_key_material)`.
    pub fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, mut k, _) = hkdf::<H>(&self.ck, ikm, 2);
        self.ck = ck;
        self.cipher = CipherState::new(k);
        k.zeroize();
    }

    /// `MixHash(data)`.
    pub fn mix_hash(&mut self, data: &[u8]) {
        self.h = H::hash(&[&self.h, data]);
    }

    /// `MixKeyAndHash(input_key_material)` (used by `psk`).
    pub fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let (ck, temp_h, mut temp_k) = hkdf::<H>(&self.ck, ikm, 3);
        self.ck = ck;
        self.mix_hash(&temp_h);
        self.cipher = CipherState::new(temp_k);
        temp_k.zeroize();
    }

    /// `GetHandshakeHash()`.
    pub fn handshake_hash(&self) -> [u8; HASHLEN] {
        self.h
    }

    /// `EncryptAndHash(plaintext)` into `out`; returns the written length.
    pub fn encrypt_and_hash(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        let h = self.h;
        let n = self.cipher.encrypt_with_ad(&h, plaintext, out)?;
        self.mix_hash(&out[..n]);
        Ok(n)
    }

    /// `DecryptAndHash(ciphertext)` into `out`; returns the plaintext length.
    pub fn decrypt_and_hash(
        &mut self,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        let h = self.h;
        let n = self.cipher.decrypt_with_ad(&h, ciphertext, out)?;
        self.mix_hash(ciphertext);
        Ok(n)
    }

    /// `Split()`: the initiator-to-responder and responder-to-initiator CipherStates.
    pub fn split(&self) -> (CipherState, CipherState) {
        let (mut k1, mut k2, _) = hkdf::<H>(&self.ck, &[], 2);
        let pair = (CipherState::new(k1), CipherState::new(k2));
        k1.zeroize();
        k2.zeroize();
        pair
    }

    fn has_key(&self) -> bool {
        self.cipher.has_key()
    }
}

/// Keys and options that start a handshake (the arguments of Noise's `Initialize`).
#[derive(Clone, Debug)]
pub struct HandshakeConfig<'a> {
    /// The handshake pattern.
    pub pattern: Pattern,
    /// Whether this side is the initiator.
    pub initiator: bool,
    /// Prologue both sides must agree on (mixed into `h`, never sent).
    pub prologue: &'a [u8],
    /// Local static key pair, if the pattern uses one.
    pub s: Option<Keypair>,
    /// Local ephemeral key pair; may also be set later with [`HandshakeState::set_ephemeral`].
    pub e: Option<Keypair>,
    /// Remote static public key when known in advance (pre-message).
    pub rs: Option<PublicKey>,
    /// A `pskN` modifier: position N (0 = start of the first message, N >= 1 = end of message N)
    /// and the 32-byte pre-shared key.
    pub psk: Option<(u8, [u8; 32])>,
}

impl HandshakeConfig<'_> {
    /// A config with no keys set.
    pub fn new(pattern: Pattern, initiator: bool) -> Self {
        HandshakeConfig {
            pattern,
            initiator,
            prologue: &[],
            s: None,
            e: None,
            rs: None,
            psk: None,
        }
    }
}

/// The transport keys once a handshake is complete, oriented for this side.
#[derive(Debug)]
pub struct TransportKeys {
    /// Encrypts what this side sends.
    pub tx: CipherState,
    /// Decrypts what this side receives.
    pub rx: CipherState,
    /// The final handshake hash (channel binding, Noise §11.2).
    pub handshake_hash: [u8; HASHLEN],
}

/// The Noise `HandshakeState` (§5.3), heap-free.
///
/// Call protocol: [`write_message`](Self::write_message) when [`is_my_turn`](Self::is_my_turn),
/// [`read_message`](Self::read_message) otherwise, until [`is_finished`](Self::is_finished); then
/// [`into_transport`](Self::into_transport) consumes it. After an error the state may be partly
/// updated, so it must be abandoned (Noise §5.3); callers that must survive forged input (the
/// link layer) try on a clone.
#[derive(Clone, Debug)]
pub struct HandshakeState<H: NoiseHash = Blake2s> {
    sym: SymmetricState<H>,
    s: Option<Keypair>,
    e: Option<Keypair>,
    rs: Option<PublicKey>,
    re: Option<PublicKey>,
    psk: Option<(u8, [u8; 32])>,
    pattern: Pattern,
    initiator: bool,
    msg: u8,
}

impl<H: NoiseHash> Drop for HandshakeState<H> {
    fn drop(&mut self) {
        if let Some((_, psk)) = self.psk.as_mut() {
            psk.zeroize();
        }
    }
}

/// Writes `Noise_<pattern>[pskN]_25519_ChaChaPoly_<hash>` into `buf`, returns its length.
fn protocol_name<H: NoiseHash>(pattern: Pattern, psk: Option<u8>, buf: &mut [u8; 64]) -> usize {
    let mut len = 0;
    let mut push = |s: &[u8]| {
        buf[len..len + s.len()].copy_from_slice(s);
        len += s.len();
    };
    push(b"Noise_");
    push(pattern.name().as_bytes());
    if let Some(n) = psk {
        push(b"psk");
        push(&[b'0' + n % 10]);
    }
    push(b"_25519_ChaChaPoly_");
    push(H::NAME.as_bytes());
    len
}

impl<H: NoiseHash> HandshakeState<H> {
    /// `Initialize(...)`: protocol name, prologue and pre-messages.
    pub fn new(cfg: HandshakeConfig<'_>) -> Result<Self, NoiseError> {
        let mut hs = Self::blank(cfg.pattern, cfg.initiator);
        hs.initialize(cfg)?;
        Ok(hs)
    }

    /// A state with no keys and nothing mixed, to be [`initialize`](Self::initialize)d in
    /// place (the link's initiator is built where it lives, not on the stack).
    pub(crate) const fn blank(pattern: Pattern, initiator: bool) -> Self {
        HandshakeState {
            sym: SymmetricState::blank(),
            s: None,
            e: None,
            rs: None,
            re: None,
            psk: None,
            pattern,
            initiator,
            msg: 0,
        }
    }

    /// `Initialize(...)` in place, whatever the state was: [`new`](Self::new) without a
    /// second copy of the state. On error the state is unusable (as after any error).
    pub(crate) fn initialize(&mut self, cfg: HandshakeConfig<'_>) -> Result<(), NoiseError> {
        let mut name = [0u8; 64];
        let len = protocol_name::<H>(cfg.pattern, cfg.psk.map(|(n, _)| n), &mut name);
        let h = SymmetricState::<H>::initial_hash(&name[..len]);
        self.initialize_from(&h, cfg)
    }

    /// [`initialize`](Self::initialize) given the `h` that `InitializeSymmetric` derives from
    /// the protocol name of `cfg` (the name padded or hashed, Noise §5.2), which the caller
    /// knows as a constant: the link's patterns ([`super::link`]) need no protocol-name code.
    pub(crate) fn initialize_from(
        &mut self,
        h: &[u8; HASHLEN],
        cfg: HandshakeConfig<'_>,
    ) -> Result<(), NoiseError> {
        self.sym.initialize(h);
        self.sym.mix_hash(cfg.prologue);
        self.s = cfg.s;
        self.e = cfg.e;
        self.rs = cfg.rs;
        self.re = None;
        self.psk = cfg.psk;
        self.pattern = cfg.pattern;
        self.initiator = cfg.initiator;
        self.msg = 0;
        let local = self.s.as_ref().map(Keypair::public);
        let (first, second) = if self.initiator {
            (local, self.rs)
        } else {
            (self.rs, local)
        };
        if self.pattern.initiator_static_premessage() {
            self.sym.mix_hash(&first.ok_or(NoiseError::MissingKey)?.0);
        }
        if self.pattern.responder_static_premessage() {
            self.sym.mix_hash(&second.ok_or(NoiseError::MissingKey)?.0);
        }
        Ok(())
    }

    /// Sets (or replaces) the local ephemeral key pair before the message that sends `e`.
    pub fn set_ephemeral(&mut self, e: Keypair) {
        self.e = Some(e);
    }

    /// The local ephemeral public key, once set.
    pub fn local_ephemeral(&self) -> Option<PublicKey> {
        self.e.as_ref().map(Keypair::public)
    }

    /// The remote static key, once known.
    pub fn remote_static(&self) -> Option<PublicKey> {
        self.rs
    }

    /// The remote ephemeral key, once received.
    pub fn remote_ephemeral(&self) -> Option<PublicKey> {
        self.re
    }

    /// `GetHandshakeHash()`.
    pub fn handshake_hash(&self) -> [u8; HASHLEN] {
        self.sym.handshake_hash()
    }

    /// Index of the next handshake message.
    pub fn message_index(&self) -> usize {
        usize::from(self.msg)
    }

    /// Whether all handshake messages have been processed.
    pub fn is_finished(&self) -> bool {
        self.message_index() >= self.pattern.messages().len()
    }

    /// Whether the next handshake message is ours to write.
    pub fn is_my_turn(&self) -> bool {
        !self.is_finished() && (self.msg.is_multiple_of(2) == self.initiator)
    }

    /// Whether this side is the initiator.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    fn psk_at(&self, pos: u8) -> Option<[u8; 32]> {
        match self.psk {
            Some((n, k)) if n == pos => Some(k),
            _ => None,
        }
    }

    fn dh_token(&mut self, t: Token) -> Result<(), NoiseError> {
        let (local, remote) = match (t, self.initiator) {
            (Ee, _) => (&self.e, &self.re),
            (Ss, _) => (&self.s, &self.rs),
            (Es, true) | (Se, false) => (&self.e, &self.rs),
            (Es, false) | (Se, true) => (&self.s, &self.re),
            (E | S, _) => return Err(NoiseError::WrongState),
        };
        let local = local.as_ref().ok_or(NoiseError::MissingKey)?;
        let remote = remote.as_ref().ok_or(NoiseError::MissingKey)?;
        let mut shared = local.dh(remote)?;
        self.sym.mix_key(&shared);
        shared.zeroize();
        Ok(())
    }

    /// `WriteMessage(payload, message_buffer)`: writes the next handshake message into `out` and
    /// returns its length.
    pub fn write_message(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, NoiseError> {
        if !self.is_my_turn() {
            return Err(NoiseError::WrongState);
        }
        let tokens = self.pattern.messages()[self.message_index()];
        let mut at = 0;
        if self.msg == 0 {
            if let Some(psk) = self.psk_at(0) {
                self.sym.mix_key_and_hash(&psk);
            }
        }
        for &t in tokens {
            match t {
                E => {
                    let e = self.e.as_ref().ok_or(NoiseError::MissingKey)?.public();
                    out.get_mut(at..at + DHLEN)
                        .ok_or(NoiseError::BufferTooSmall)?
                        .copy_from_slice(&e.0);
                    at += DHLEN;
                    self.sym.mix_hash(&e.0);
                    if self.psk.is_some() {
                        self.sym.mix_key(&e.0);
                    }
                }
                S => {
                    let s = self.s.as_ref().ok_or(NoiseError::MissingKey)?.public();
                    let dst = out.get_mut(at..).ok_or(NoiseError::BufferTooSmall)?;
                    at += self.sym.encrypt_and_hash(&s.0, dst)?;
                }
                _ => self.dh_token(t)?,
            }
        }
        if let Some(psk) = self.psk_at(self.msg + 1) {
            self.sym.mix_key_and_hash(&psk);
        }
        if at + payload.len() + if self.sym.has_key() { TAGLEN } else { 0 } > MAX_MESSAGE_LEN {
            return Err(NoiseError::MessageTooLong);
        }
        let dst = out.get_mut(at..).ok_or(NoiseError::BufferTooSmall)?;
        at += self.sym.encrypt_and_hash(payload, dst)?;
        self.msg += 1;
        Ok(at)
    }

    /// `ReadMessage(message, payload_buffer)`: processes the next handshake message and writes
    /// its payload into `payload_out`; returns the payload length.
    pub fn read_message(
        &mut self,
        message: &[u8],
        payload_out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        self.read_message_split(None, message, payload_out)
    }

    /// [`read_message`](Self::read_message) of the message `e ‖ rest` whose leading ephemeral
    /// key `e` is held apart (the link layer rotates it on the wire), so that the message need
    /// not be copied to be rejoined. With `e`, the message must start with the `e` token.
    pub(crate) fn read_message_split(
        &mut self,
        mut e: Option<[u8; DHLEN]>,
        message: &[u8],
        payload_out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        if self.is_finished() || self.is_my_turn() {
            return Err(NoiseError::WrongState);
        }
        let len = message.len() + if e.is_some() { DHLEN } else { 0 };
        if len > MAX_MESSAGE_LEN {
            return Err(NoiseError::MessageTooLong);
        }
        let tokens = self.pattern.messages()[self.message_index()];
        if e.is_some() && tokens.first() != Some(&E) {
            return Err(NoiseError::WrongState);
        }
        let mut rest = message;
        if self.msg == 0 {
            if let Some(psk) = self.psk_at(0) {
                self.sym.mix_key_and_hash(&psk);
            }
        }
        for &t in tokens {
            match t {
                E => {
                    let re = match e.take() {
                        Some(re) => re,
                        None => {
                            let (re, tail) =
                                split_array(rest).ok_or(NoiseError::MessageTooShort)?;
                            rest = tail;
                            re
                        }
                    };
                    self.re = Some(PublicKey(re));
                    self.sym.mix_hash(&re);
                    if self.psk.is_some() {
                        self.sym.mix_key(&re);
                    }
                }
                S => {
                    let len = DHLEN + if self.sym.has_key() { TAGLEN } else { 0 };
                    if rest.len() < len {
                        return Err(NoiseError::MessageTooShort);
                    }
                    let (ct, tail) = rest.split_at(len);
                    rest = tail;
                    let mut rs = [0u8; DHLEN];
                    self.sym.decrypt_and_hash(ct, &mut rs)?;
                    self.rs = Some(PublicKey(rs));
                }
                _ => self.dh_token(t)?,
            }
        }
        if let Some(psk) = self.psk_at(self.msg + 1) {
            self.sym.mix_key_and_hash(&psk);
        }
        let n = self.sym.decrypt_and_hash(rest, payload_out)?;
        self.msg += 1;
        Ok(n)
    }

    /// `Split()` once the handshake is finished, oriented for this side (Noise §5.3).
    pub fn into_transport(self) -> Result<TransportKeys, NoiseError> {
        if !self.is_finished() {
            return Err(NoiseError::WrongState);
        }
        let (c1, c2) = self.sym.split();
        let (tx, rx) = if self.initiator { (c1, c2) } else { (c2, c1) };
        Ok(TransportKeys {
            tx,
            rx,
            handshake_hash: self.sym.handshake_hash(),
        })
    }
}

fn split_array(b: &[u8]) -> Option<([u8; DHLEN], &[u8])> {
    let (head, tail) = b.split_first_chunk::<DHLEN>()?;
    Some((*head, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        let mut buf = [0u8; 64];
        let n = protocol_name::<Blake2s>(Pattern::IK, None, &mut buf);
        assert_eq!(&buf[..n], b"Noise_IK_25519_ChaChaPoly_BLAKE2s");
        let n = protocol_name::<super::super::crypto::Sha256>(Pattern::KK, Some(2), &mut buf);
        assert_eq!(&buf[..n], b"Noise_KKpsk2_25519_ChaChaPoly_SHA256");
    }

    #[test]
    fn ik_and_kk_sizes_with_empty_payloads() {
        for (pattern, want) in [(Pattern::IK, [96usize, 48]), (Pattern::KK, [48, 48])] {
            let a = Keypair::from_secret([1; 32]);
            let b = Keypair::from_secret([2; 32]);
            let mut ci = HandshakeConfig::new(pattern, true);
            ci.s = Some(a.clone());
            ci.e = Some(Keypair::from_secret([3; 32]));
            ci.rs = Some(b.public());
            let mut cr = HandshakeConfig::new(pattern, false);
            cr.s = Some(b.clone());
            cr.e = Some(Keypair::from_secret([4; 32]));
            if pattern == Pattern::KK {
                cr.rs = Some(a.public());
            }
            let mut i = HandshakeState::<Blake2s>::new(ci).unwrap();
            let mut r = HandshakeState::<Blake2s>::new(cr).unwrap();
            let mut m = [0u8; 128];
            let mut p = [0u8; 16];
            let n1 = i.write_message(&[], &mut m).unwrap();
            assert_eq!(r.read_message(&m[..n1], &mut p), Ok(0));
            let n2 = r.write_message(&[], &mut m).unwrap();
            assert_eq!(i.read_message(&m[..n2], &mut p), Ok(0));
            assert_eq!([n1, n2], want);
            assert_eq!(r.remote_static(), Some(a.public()));
            assert_eq!(i.handshake_hash(), r.handshake_hash());
        }
    }
}
