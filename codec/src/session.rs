//! Secure CoAP sessions: the Noise link handshake, its transport and a CoAP endpoint composed
//! into one sans-IO state machine per peer, for both roles.
//!
//! ```text
//!   app ──request/respond──► coap::Endpoint ──datagram──► noise Session::seal ──► link packet
//!   app ◄──Received──────── coap::Endpoint ◄──datagram── noise Session::open ◄── link packet
//!                                                      (handshake packets: Initiator / Msg1)
//! ```
//!
//! Link packets are what framing ([`crate::frame`]) carries: one per serial frame or datagram.
//!
//! # Sessions are named by id, not by address
//!
//! A [`Server`] finds a session from the session id in the transport header and the AEAD tag,
//! never from the sender's address: the address a packet came from is only remembered as where
//! to send the session's next packets, and only after the packet authenticated. A peer whose
//! address or port changes (NAT rebinding, a radio that moved) keeps its session; idle periods
//! cost nothing because no timer expires a session. Several sessions may share one 6-bit id
//! (a gateway with more than 64 peers): the server tries each candidate's key, most recently
//! used first; a wrong key fails authentication without changing any state.
//!
//! # A session that is truly lost
//!
//! A server that gets a transport packet for a session it does not know (it restarted without
//! its state, or dropped the session) answers with a 4-byte reject carrying
//! [`UNKNOWN_SESSION`]. The [`Client`] then handshakes again by itself and carries on: CoAP
//! requests that were queued or unanswered stay in its endpoint and are sent on the new
//! session with their original message ids, so nothing queued is lost. The reject is not
//! authenticated (the server no longer has keys to authenticate it with); the worst a forger
//! can do is cost one handshake, the same as dropping packets.
//!
//! # Call protocol (both roles)
//!
//! ```text
//!  link packet in ──► handle_packet(now, .., packet, scratch) ──► Option<Received> (borrowed)
//!  app            ──► request / respond / notify (through coap())
//!  then always    ──► poll_transmit(now, out) until None; each Some: send out[..n]
//!                 ──► poll_event() until None
//!                 ──► at poll_timeout(): handle_timeout(now), then poll_transmit again
//! ```

use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;

use heapless::{Deque, Vec};

use rand_core::{CryptoRng, RngCore};

use crate::coap::{self, Endpoint, MsgBuf, Received, Request, RequestHandle, SendError};
use crate::noise::link::{
    classify, Initiator, InitiatorConfig, InitiatorError, LinkVersion, Msg1, PacketKind,
    RejectCode, ResponderConfig, ResponderError, ResponderSession, Session, SessionId,
    TransportError, REJECT_LEN, RESPONDER_EXPORT_LEN, SESSION_EXPORT_LEN, TRANSPORT_HEADER_LEN,
    TRANSPORT_OVERHEAD,
};
use crate::noise::PublicKey;

/// Reject code a server sends for a transport packet of a session it does not know.
pub const UNKNOWN_SESSION: RejectCode = RejectCode::Other(5);

/// Largest link packet a session of CoAP MTU `mtu` produces: the CoAP message plus the Noise
/// transport header and tag, or a handshake message.
pub const fn max_packet_len(mtu: usize) -> usize {
    let t = mtu + TRANSPORT_OVERHEAD;
    if t > crate::noise::link::MAX_MSG1 {
        t
    } else {
        crate::noise::link::MAX_MSG1
    }
}

/// A device's client session at its default capacities: 3 exchanges, 4 remembered message
/// ids, 2 observations, 128-byte CoAP messages (bigger bodies go block-wise).
pub type DeviceClient<R> = Client<R, 3, 4, 2, 128>;

/// Length of a [`Client::export`]: the keys' fingerprint (4 bytes of each static public
/// key), the next CoAP message ID and the transport session ([`Session::export`]).
pub const CLIENT_EXPORT_LEN: usize = 8 + 2 + SESSION_EXPORT_LEN;

/// Message IDs a resumed client skips past the exported one: requests sent after the export
/// was saved (a device saves it with its state, not before every request) stay behind the
/// new ones, well inside the server's forward window (RFC 7252 §4.5; `coap::exchange`).
pub const RESUME_MID_SKIP: u16 = 1024;

/// The whole state of one device session (Noise handshake or transport, CoAP endpoint,
/// events, counters) fits in 4 KiB with room for the caller's RNG (`R`, at most 512 bytes).
const _: () = assert!(core::mem::size_of::<DeviceClient<()>>() + 512 <= 4096);

/// What happened to a session, besides CoAP traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed; requests flow.
    Established(SessionId),
    /// The server no longer knew our session; a new handshake started.
    Rehandshake,
    /// A handshake attempt gave up (msg1 unanswered); a fresh one started.
    HandshakeRetry,
    /// The server refused us in an authenticated msg2: nothing more will be sent.
    Refused(InitiatorError),
    /// An unauthenticated reject (unknown key, version mismatch, busy): reported, and the
    /// handshake goes on being retried.
    Rejected(InitiatorError),
    /// A CoAP event (a request failed, an observer went away, ...).
    Coap(coap::Event),
}

/// Counters of what a session dropped, for logs and metrics (never sent over the link).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Link packets sent.
    pub packets_out: u64,
    /// Link bytes sent.
    pub bytes_out: u64,
    /// Link packets received.
    pub packets_in: u64,
    /// Link bytes received.
    pub bytes_in: u64,
    /// Packets dropped: not authentic, replayed, malformed or for another session.
    pub dropped: u64,
    /// Handshakes started (the first included).
    pub handshakes: u32,
    /// CoAP messages sent again on timeout ([`coap::EndpointStats::retransmissions`]).
    pub retransmissions: u32,
}

// The variants differ by ~450 bytes; boxing is not an option without an allocator, and the
// state lives once per session.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum ClientState {
    Handshaking(Initiator),
    Established(Session),
    Refused,
}

/// The initiating side of a session (a device or a tunnel), towards one server.
///
/// Requests may be queued before the handshake completes; they are sent once it does. See the
/// module docs for the call protocol. `R` supplies the ephemeral keys of every handshake.
#[derive(Debug)]
pub struct Client<R, const SLOTS: usize, const DEDUP: usize, const OBS: usize, const MTU: usize> {
    cfg: InitiatorConfig,
    rng: R,
    state: ClientState,
    coap: Endpoint<SLOTS, DEDUP, OBS, MTU>,
    events: Deque<SessionEvent, 8>,
    stats: SessionStats,
}

impl<
        R: RngCore + CryptoRng,
        const SLOTS: usize,
        const DEDUP: usize,
        const OBS: usize,
        const MTU: usize,
    > Client<R, SLOTS, DEDUP, OBS, MTU>
{
    /// Starts a session: builds msg1 (sent by the first [`poll_transmit`](Self::poll_transmit)).
    /// The client is returned by value: on a small device use [`new_in`](Self::new_in).
    ///
    /// # Errors
    /// The Noise errors of building msg1 (for example an invalid pinned key).
    pub fn new(cfg: InitiatorConfig, coap: coap::Config, rng: R) -> Result<Self, InitiatorError> {
        let mut slot = MaybeUninit::uninit();
        Self::new_in(&mut slot, cfg, coap, rng)?;
        // SAFETY: new_in returned Ok: the slot is initialised.
        Ok(unsafe { slot.assume_init() })
    }

    /// [`new`](Self::new) in place (e.g. into a `static` or a field of a bigger state): the
    /// client (about 2.6 KiB for a [`DeviceClient`]), its Noise handshake state and msg1 are
    /// written where they live and never pass through the stack by value.
    ///
    /// # Errors
    /// As [`new`](Self::new); the slot is then not initialised (what was written is dropped).
    pub fn new_in(
        out: &mut MaybeUninit<Self>,
        cfg: InitiatorConfig,
        coap: coap::Config,
        rng: R,
    ) -> Result<&mut Self, InitiatorError> {
        Self::write_fields(out, cfg, rng);
        // SAFETY: the field's memory, uninitialised, as a MaybeUninit of its type.
        Self::write_coap(
            unsafe { &mut *addr_of_mut!((*out.as_mut_ptr()).coap).cast() },
            coap,
        );
        // SAFETY: write_fields and write_coap wrote every field.
        let me = unsafe { out.assume_init_mut() };
        let ClientState::Handshaking(init) = &mut me.state else {
            // INVARIANT: write_fields writes the state as Handshaking.
            unreachable!("written as Handshaking")
        };
        match init.restart(&me.cfg, None, &mut me.rng) {
            Ok(()) => {
                // SAFETY: initialised above.
                Ok(unsafe { out.assume_init_mut() })
            }
            Err(e) => {
                // SAFETY: initialised above; the caller gets the slot back uninitialised.
                unsafe { out.assume_init_drop() };
                Err(e)
            }
        }
    }

    /// The first part of [`new_in`](Self::new_in): every field but the CoAP endpoint
    /// ([`write_coap`](Self::write_coap)) written, the initiator blank. Not inlined, so that
    /// its temporaries are off the stack before the handshake's X25519 and hashing run.
    #[inline(never)]
    fn write_fields(out: &mut MaybeUninit<Self>, cfg: InitiatorConfig, rng: R) {
        let p = out.as_mut_ptr();
        // SAFETY: `p` points to the slot's (uninitialised) memory; each field is written once
        // through its own pointer, all of them with `coap` (write_coap; `fields_check` below
        // keeps this list complete), before new_in uses the slot as a `Client`.
        unsafe {
            addr_of_mut!((*p).state).write(ClientState::Handshaking(Initiator::blank(&cfg)));
            addr_of_mut!((*p).cfg).write(cfg);
            addr_of_mut!((*p).rng).write(rng);
            addr_of_mut!((*p).events).write(Deque::new());
            addr_of_mut!((*p).stats).write(SessionStats {
                handshakes: 1,
                ..SessionStats::default()
            });
        }
        // Never called: a compile error here when a field is added that is not written above
        // (or, `coap`, by write_coap).
        #[allow(dead_code)]
        fn fields_check<R, const S: usize, const D: usize, const O: usize, const M: usize>(
            c: Client<R, S, D, O, M>,
        ) {
            let Client {
                cfg: _,
                rng: _,
                state: _,
                coap: _,
                events: _,
                stats: _,
            } = c;
        }
    }

    /// Writes the CoAP endpoint. Its temporaries live in this frame only: `Endpoint::new`
    /// returns by value and builds its arrays by value (two copies of the endpoint, about
    /// 3 KiB for a [`DeviceClient`]), off the stack before the handshake runs.
    #[inline(never)]
    fn write_coap(slot: &mut MaybeUninit<Endpoint<SLOTS, DEDUP, OBS, MTU>>, coap: coap::Config) {
        slot.write(Endpoint::new(coap));
    }

    /// Whether the handshake has completed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, ClientState::Established(_))
    }

    /// The session id the server assigned, once established.
    pub fn session_id(&self) -> Option<SessionId> {
        match &self.state {
            ClientState::Established(s) => Some(s.id()),
            _ => None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            retransmissions: self.coap.stats().retransmissions,
            ..self.stats
        }
    }

    /// The CoAP endpoint, to respond to requests from the server or inspect it.
    pub fn coap(&mut self) -> &mut Endpoint<SLOTS, DEDUP, OBS, MTU> {
        &mut self.coap
    }

    /// Queues a request; it goes out once the session is established.
    ///
    /// # Errors
    /// [`SendError`] when the endpoint has no room or the request does not fit its MTU.
    pub fn request(&mut self, now: u64, req: Request<'_>) -> Result<RequestHandle, SendError> {
        self.coap.request(now, req)
    }

    fn restart_handshake(&mut self, why: SessionEvent) {
        // The new initiator is built in place: only its blank start passes through the stack,
        // in a frame of its own that is gone before the handshake's X25519 runs.
        if !matches!(self.state, ClientState::Handshaking(_)) {
            self.set_blank_initiator();
        }
        let ClientState::Handshaking(init) = &mut self.state else {
            // INVARIANT: made Handshaking just above.
            unreachable!("set just above")
        };
        match init.restart(&self.cfg, None, &mut self.rng) {
            Ok(()) => {
                self.stats.handshakes += 1;
                self.push(why);
            }
            Err(e) => {
                self.state = ClientState::Refused;
                self.push(SessionEvent::Refused(e));
            }
        }
    }

    #[inline(never)]
    fn set_blank_initiator(&mut self) {
        self.state = ClientState::Handshaking(Initiator::blank(&self.cfg));
    }

    fn push(&mut self, e: SessionEvent) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        // INVARIANT: room was made above.
        let _ = self.events.push_back(e);
    }

    /// Processes one link packet from the server. Requests from the server and responses to
    /// ours are returned borrowed from `scratch` (which must hold `MTU` bytes).
    pub fn handle_packet<'a>(
        &mut self,
        now: u64,
        packet: &[u8],
        scratch: &'a mut [u8],
    ) -> Option<Received<'a>> {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        match classify(packet) {
            None => {
                self.stats.dropped += 1;
                None
            }
            Some(PacketKind::Handshake) => {
                match &self.state {
                    ClientState::Handshaking(init) => match init.handle_response(packet, scratch) {
                        Ok((session, _)) => {
                            let id = session.id();
                            self.state = ClientState::Established(session);
                            self.push(SessionEvent::Established(id));
                        }
                        Err(
                            e @ InitiatorError::Refused {
                                authenticated: true,
                                ..
                            },
                        ) => {
                            self.state = ClientState::Refused;
                            self.push(SessionEvent::Refused(e));
                        }
                        Err(
                            e @ (InitiatorError::Refused { .. }
                            | InitiatorError::VersionMismatch { .. }),
                        ) => {
                            // Unauthenticated advice: report it, keep trying (a forger must
                            // not be able to silence us with one packet).
                            self.push(SessionEvent::Rejected(e));
                        }
                        Err(_) => self.stats.dropped += 1,
                    },
                    ClientState::Established(_) => {
                        if packet.len() == REJECT_LEN
                            && RejectCode::from_u8(packet[0]) == UNKNOWN_SESSION
                        {
                            self.restart_handshake(SessionEvent::Rehandshake);
                        } else {
                            // A late duplicate msg2 or a stray reject.
                            self.stats.dropped += 1;
                        }
                    }
                    ClientState::Refused => self.stats.dropped += 1,
                }
                None
            }
            Some(PacketKind::Transport(_)) => {
                let ClientState::Established(session) = &mut self.state else {
                    self.stats.dropped += 1;
                    return None;
                };
                match session.open(packet, scratch) {
                    Ok(n) => {
                        let data: &'a [u8] = &scratch[..n];
                        self.coap.handle_datagram(now, data)
                    }
                    Err(_) => {
                        self.stats.dropped += 1;
                        None
                    }
                }
            }
        }
    }

    /// The next link packet to send, written to `out` (at least [`max_packet_len`]`(MTU)`).
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<usize> {
        let n = match &mut self.state {
            ClientState::Refused => return None,
            ClientState::Handshaking(init) => match init.poll_transmit(now, out) {
                Ok(Some(n)) => n,
                Ok(None) => return None,
                Err(InitiatorError::TimedOut) => {
                    self.restart_handshake(SessionEvent::HandshakeRetry);
                    return self.poll_transmit(now, out);
                }
                Err(_) => return None,
            },
            ClientState::Established(session) => {
                // The CoAP message is written where the transport packet carries it and
                // sealed there. Too small an `out` sends nothing (and loses nothing).
                if out.len() < MTU + TRANSPORT_OVERHEAD {
                    return None;
                }
                let body = out.get_mut(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + MTU)?;
                let m = self.coap.poll_transmit(now, body)?;
                match session.seal_in_place(out, m) {
                    Ok(n) => n,
                    Err(TransportError::NonceExhausted) => {
                        self.restart_handshake(SessionEvent::Rehandshake);
                        return None;
                    }
                    Err(_) => return None,
                }
            }
        };
        self.stats.packets_out += 1;
        self.stats.bytes_out += n as u64;
        Some(n)
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) (milliseconds, same clock as `now`).
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.state {
            ClientState::Handshaking(init) => init.poll_timeout(),
            ClientState::Established(_) => self.coap.poll_timeout(),
            ClientState::Refused => None,
        }
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: u64) {
        if let ClientState::Established(_) = self.state {
            self.coap.handle_timeout(now);
        }
    }

    /// The next event, CoAP events included.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.coap.poll_event().map(SessionEvent::Coap)
    }

    /// The key epoch of the next transport packet, once established. A client that persists
    /// its session ([`export`](Self::export)) saves it whenever this changes, before sending
    /// the next packet (`Session::export`'s rule: a resumed session then never reuses a nonce).
    pub fn tx_epoch(&self) -> Option<u64> {
        match &self.state {
            ClientState::Established(s) => Some(s.tx_epoch()),
            _ => None,
        }
    }

    /// Writes the established session for persistence, so that a reboot can
    /// [`resume`](Self::resume) it without a handshake; `false` (nothing written) before the
    /// handshake completed. Holds secret keys: store it like the device's private key.
    pub fn export(&self, out: &mut [u8; CLIENT_EXPORT_LEN]) -> bool {
        let ClientState::Established(session) = &self.state else {
            return false;
        };
        self.fingerprint(&mut out[..8]);
        out[8..10].copy_from_slice(&self.coap.next_mid().to_be_bytes());
        let mut s = [0u8; SESSION_EXPORT_LEN];
        session.export(&mut s);
        out[10..].copy_from_slice(&s);
        true
    }

    fn fingerprint(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.cfg.local.public().0[..4]);
        out[4..8].copy_from_slice(&self.cfg.remote.0[..4]);
    }

    /// Resumes an exported session instead of the handshake this client was created for
    /// (before anything was sent): established at once, the sending side in the next key
    /// epoch (save the session again before sending, see [`tx_epoch`](Self::tx_epoch)),
    /// message IDs [`RESUME_MID_SKIP`] past the exported one. If the server no longer holds
    /// the session it answers the first packet with an "unknown session" reject and the
    /// client falls back to a handshake.
    ///
    /// # Errors
    /// [`TransportError::Malformed`] for an export of other keys, of another format, or
    /// taken after something was sent; the client is left as it was.
    pub fn resume(&mut self, export: &[u8]) -> Result<(), TransportError> {
        let mut fp = [0u8; 8];
        self.fingerprint(&mut fp);
        if export.len() != CLIENT_EXPORT_LEN || export[..8] != fp || self.stats.packets_out != 0 {
            return Err(TransportError::Malformed);
        }
        let session = Session::import(&export[10..])?;
        let mid = u16::from_be_bytes([export[8], export[9]]);
        self.state = ClientState::Established(session);
        self.coap.set_next_mid(mid.wrapping_add(RESUME_MID_SKIP));
        self.stats.handshakes = 0;
        Ok(())
    }
}

/// One session on the responding side (a gateway's view of a device or tunnel).
#[derive(Debug)]
pub struct ServerSession<
    const SLOTS: usize,
    const DEDUP: usize,
    const OBS: usize,
    const MTU: usize,
    B: MsgBuf = [u8; MTU],
> {
    rs: ResponderSession,
    coap: Endpoint<SLOTS, DEDUP, OBS, MTU, B>,
    /// msg2 must be (re)sent.
    msg2_due: bool,
    stats: SessionStats,
}

impl<const SLOTS: usize, const DEDUP: usize, const OBS: usize, const MTU: usize, B: MsgBuf>
    ServerSession<SLOTS, DEDUP, OBS, MTU, B>
{
    /// Accepts a msg1 (already checked against the allow list by
    /// [`ResponderConfig::read_msg1`]) with a session id for which `is_free` says yes.
    ///
    /// # Errors
    /// [`ResponderError::NoSessionId`] when no id could be drawn, Noise errors otherwise.
    pub fn accept<R: RngCore + CryptoRng>(
        msg1: Msg1,
        rng: &mut R,
        is_free: impl FnMut(SessionId) -> bool,
        coap: coap::Config,
    ) -> Result<Self, ResponderError> {
        let rs = msg1.accept(rng, is_free, &[])?;
        Ok(ServerSession {
            rs,
            coap: Endpoint::new(coap),
            msg2_due: true,
            stats: SessionStats {
                handshakes: 1,
                ..SessionStats::default()
            },
        })
    }

    /// Writes the session for persistence ([`ResponderSession::export`]; holds secret keys).
    /// The CoAP endpoint's state is not included: requests in flight are retransmitted by
    /// the client and Matrix transaction ids make them idempotent.
    pub fn export(&self, out: &mut [u8; RESPONDER_EXPORT_LEN]) {
        self.rs.export(out);
    }

    /// Restores a session written by [`export`](Self::export), with a fresh CoAP endpoint.
    ///
    /// # Errors
    /// [`TransportError::Malformed`] for bytes that are not such an export.
    pub fn import(bytes: &[u8], coap: coap::Config) -> Result<Self, TransportError> {
        Ok(ServerSession {
            rs: ResponderSession::import(bytes)?,
            coap: Endpoint::new(coap),
            msg2_due: false,
            stats: SessionStats::default(),
        })
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.rs.session.id()
    }

    /// The peer's static public key (its identity on the allow list).
    pub fn peer(&self) -> PublicKey {
        self.rs.peer()
    }

    /// The negotiated versions.
    pub fn version(&self) -> LinkVersion {
        self.rs.version()
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            retransmissions: self.coap.stats().retransmissions,
            ..self.stats
        }
    }

    /// Whether `packet` is a retransmission of the msg1 this session answered; if so the
    /// cached msg2 is queued again, verbatim.
    pub fn handle_retransmitted_msg1(&mut self, packet: &[u8]) -> bool {
        let again = self.rs.is_retransmitted_msg1(packet);
        if again {
            self.msg2_due = true;
        }
        again
    }

    /// The CoAP endpoint, to respond and notify.
    pub fn coap(&mut self) -> &mut Endpoint<SLOTS, DEDUP, OBS, MTU, B> {
        &mut self.coap
    }

    /// Opens a transport packet of this session into `scratch`; returns the CoAP datagram's
    /// length. Hand it to [`deliver`](Self::deliver).
    ///
    /// # Errors
    /// [`TransportError::Decrypt`] when the packet is not this session's (try another
    /// candidate), other [`TransportError`]s for replays and malformed packets. Nothing changes
    /// on error.
    pub fn open(&mut self, packet: &[u8], scratch: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.rs.session.open(packet, scratch)?;
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        // The initiator got msg2: it would not send transport packets otherwise.
        self.msg2_due = false;
        Ok(n)
    }

    /// Hands an opened CoAP datagram to the endpoint.
    pub fn deliver<'a>(&mut self, now: u64, datagram: &'a [u8]) -> Option<Received<'a>> {
        self.coap.handle_datagram(now, datagram)
    }

    /// The next link packet for this session's peer.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<usize> {
        let n = if self.msg2_due {
            self.msg2_due = false;
            let msg2 = self.rs.msg2();
            let dst = out.get_mut(..msg2.len())?;
            dst.copy_from_slice(msg2);
            msg2.len()
        } else {
            let mut buf = [0u8; MTU];
            let m = self.coap.poll_transmit(now, &mut buf)?;
            self.rs.session.seal(&buf[..m], out).ok()?
        };
        self.stats.packets_out += 1;
        self.stats.bytes_out += n as u64;
        Some(n)
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.msg2_due {
            return Some(0);
        }
        self.coap.poll_timeout()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: u64) {
        self.coap.handle_timeout(now);
    }

    /// The next CoAP event.
    pub fn poll_event(&mut self) -> Option<coap::Event> {
        self.coap.poll_event()
    }
}

/// Why a [`Server`] did not hand a packet to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerDrop {
    /// Empty packet.
    Empty,
    /// A msg1 that was refused (answered with a reject where useful).
    Refused(ResponderError),
    /// A transport packet that no session could open.
    Transport(TransportError),
    /// A transport packet for a session id we do not have (answered with [`UNKNOWN_SESSION`]).
    UnknownSession,
    /// The session table is full.
    Full,
}

/// Where a [`ServerWith`] keeps its sessions: a fixed array ([`FixedSessions`], no
/// allocator, for devices and tests) or, in a gateway, a growable table whose idle sessions
/// hibernate. The server does the demultiplexing (which session a packet belongs to, who may
/// start one); the store decides how sessions are held, woken and polled.
///
/// Indices are `0..len()` and stay valid until [`swap_remove`](Self::swap_remove); the
/// server only ever passes indices in that range (an implementation may panic otherwise).
pub trait SessionStore<
    A,
    const SLOTS: usize,
    const DEDUP: usize,
    const OBS: usize,
    const MTU: usize,
    B: MsgBuf = [u8; MTU],
>
{
    /// Number of sessions.
    fn len(&self) -> usize;

    /// Whether there is no session.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another session would not fit.
    fn is_full(&self) -> bool;

    /// Session `i`'s id (without waking it).
    fn id(&self, i: usize) -> SessionId;

    /// Session `i`'s peer key (without waking it).
    fn peer(&self, i: usize) -> PublicKey;

    /// Where session `i`'s packets go.
    fn addr(&self, i: usize) -> A;

    /// From now on session `i`'s packets go to `to`.
    fn readdress(&mut self, i: usize, to: A);

    /// Session `i` if it is held live (a hibernating session is not woken: `None`).
    fn live_mut(&mut self, i: usize) -> Option<&mut ServerSession<SLOTS, DEDUP, OBS, MTU, B>>;

    /// Session `i`, woken if needed, to hand it a datagram or let the application respond on
    /// it; it must be polled for output afterwards.
    fn session_mut(&mut self, i: usize) -> Option<&mut ServerSession<SLOTS, DEDUP, OBS, MTU, B>>;

    /// Opens a transport packet with session `i`'s keys ([`ServerSession::open`]). A store
    /// holding the session in another form wakes it only if the packet opens: a packet that
    /// fails must change nothing.
    ///
    /// # Errors
    /// As [`ServerSession::open`].
    fn open(
        &mut self,
        now: u64,
        i: usize,
        packet: &[u8],
        scratch: &mut [u8],
    ) -> Result<usize, TransportError> {
        let _ = now;
        match self.live_mut(i) {
            Some(s) => s.open(packet, scratch),
            None => Err(TransportError::Decrypt),
        }
    }

    /// Adds a session whose packets go to `to`; `now` is when it was accepted.
    ///
    /// # Errors
    /// Gives the session back when full.
    #[allow(clippy::result_large_err)]
    fn push(
        &mut self,
        now: u64,
        to: A,
        s: ServerSession<SLOTS, DEDUP, OBS, MTU, B>,
    ) -> Result<usize, ServerSession<SLOTS, DEDUP, OBS, MTU, B>>;

    /// Removes session `i`; the last session takes its index.
    fn swap_remove(&mut self, i: usize);

    /// Removes every session.
    fn clear(&mut self) {
        while !self.is_empty() {
            self.swap_remove(self.len() - 1);
        }
    }

    /// The next link packet of any session and where it goes.
    fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(A, usize)>;

    /// Earliest timer of all sessions.
    fn poll_timeout(&self) -> Option<u64>;

    /// Advances the timers of the sessions that are due.
    fn handle_timeout(&mut self, now: u64);
}

/// Up to `N` sessions inline, with where their replies go; polled round-robin.
#[derive(Debug)]
pub struct FixedSessions<
    A,
    const N: usize,
    const SLOTS: usize,
    const DEDUP: usize,
    const OBS: usize,
    const MTU: usize,
> {
    sessions: Vec<(A, ServerSession<SLOTS, DEDUP, OBS, MTU>), N>,
    /// Round-robin start for fairness in `poll_transmit`.
    next: usize,
}

impl<
        A,
        const N: usize,
        const SLOTS: usize,
        const DEDUP: usize,
        const OBS: usize,
        const MTU: usize,
    > Default for FixedSessions<A, N, SLOTS, DEDUP, OBS, MTU>
{
    fn default() -> Self {
        FixedSessions {
            sessions: Vec::new(),
            next: 0,
        }
    }
}

impl<
        A: Copy,
        const N: usize,
        const SLOTS: usize,
        const DEDUP: usize,
        const OBS: usize,
        const MTU: usize,
    > SessionStore<A, SLOTS, DEDUP, OBS, MTU> for FixedSessions<A, N, SLOTS, DEDUP, OBS, MTU>
{
    fn len(&self) -> usize {
        self.sessions.len()
    }

    fn is_full(&self) -> bool {
        self.sessions.is_full()
    }

    fn id(&self, i: usize) -> SessionId {
        self.sessions[i].1.id()
    }

    fn peer(&self, i: usize) -> PublicKey {
        self.sessions[i].1.peer()
    }

    fn addr(&self, i: usize) -> A {
        self.sessions[i].0
    }

    fn readdress(&mut self, i: usize, to: A) {
        self.sessions[i].0 = to;
    }

    fn live_mut(&mut self, i: usize) -> Option<&mut ServerSession<SLOTS, DEDUP, OBS, MTU>> {
        self.sessions.get_mut(i).map(|(_, s)| s)
    }

    fn session_mut(&mut self, i: usize) -> Option<&mut ServerSession<SLOTS, DEDUP, OBS, MTU>> {
        self.live_mut(i)
    }

    fn push(
        &mut self,
        _now: u64,
        to: A,
        s: ServerSession<SLOTS, DEDUP, OBS, MTU>,
    ) -> Result<usize, ServerSession<SLOTS, DEDUP, OBS, MTU>> {
        self.sessions.push((to, s)).map_err(|(_, s)| s)?;
        Ok(self.sessions.len() - 1)
    }

    fn swap_remove(&mut self, i: usize) {
        self.sessions.swap_remove(i);
    }

    fn clear(&mut self) {
        self.sessions.clear();
    }

    fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(A, usize)> {
        let n = self.sessions.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let (to, s) = &mut self.sessions[i];
            if let Some(len) = s.poll_transmit(now, out) {
                self.next = (i + 1) % n;
                return Some((*to, len));
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.sessions
            .iter()
            .filter_map(|(_, s)| s.poll_timeout())
            .min()
    }

    fn handle_timeout(&mut self, now: u64) {
        for (_, s) in self.sessions.iter_mut() {
            s.handle_timeout(now);
        }
    }
}

/// A responder with up to `N` sessions held inline: [`ServerWith`] over [`FixedSessions`].
pub type Server<
    A,
    const N: usize,
    const SLOTS: usize,
    const DEDUP: usize,
    const OBS: usize,
    const MTU: usize,
> = ServerWith<A, FixedSessions<A, N, SLOTS, DEDUP, OBS, MTU>, SLOTS, DEDUP, OBS, MTU>;

/// Rejects waiting to go out at most; more are dropped (the peer retries).
const REPLIES: usize = 16;

/// A responder demultiplexing link packets to the sessions of store `S` by session id and
/// key, not by address.
///
/// `A` is whatever the caller uses to say where a packet came from and goes to (a socket
/// address, a serial port index); it only decides where replies go. The rules: a msg1 from a
/// known peer replaces its session (a retransmitted msg1 gets the same msg2 again); a
/// transport packet is tried against the sessions with its 6-bit id (ids are shared beyond
/// 64 sessions), those last heard from the packet's address first, and an authenticated
/// packet moves the session's reply address. See the module docs for the call protocol.
#[derive(Debug)]
pub struct ServerWith<
    A,
    S,
    const SLOTS: usize,
    const DEDUP: usize,
    const OBS: usize,
    const MTU: usize,
    B: MsgBuf = [u8; MTU],
> {
    store: S,
    /// Handshake replies (rejects) waiting to go out.
    replies: Deque<(A, [u8; REJECT_LEN]), REPLIES>,
    coap: coap::Config,
    drops: Deque<ServerDrop, 8>,
    buffers: PhantomData<fn() -> B>,
}

impl<
        A: Copy + PartialEq,
        const N: usize,
        const SLOTS: usize,
        const DEDUP: usize,
        const OBS: usize,
        const MTU: usize,
    > ServerWith<A, FixedSessions<A, N, SLOTS, DEDUP, OBS, MTU>, SLOTS, DEDUP, OBS, MTU>
{
    /// An empty server of up to `N` sessions using `coap` settings.
    pub fn new(coap: coap::Config) -> Self {
        Self::with_store(FixedSessions::default(), coap)
    }
}

impl<
        A: Copy + PartialEq,
        S: SessionStore<A, SLOTS, DEDUP, OBS, MTU, B>,
        const SLOTS: usize,
        const DEDUP: usize,
        const OBS: usize,
        const MTU: usize,
        B: MsgBuf,
    > ServerWith<A, S, SLOTS, DEDUP, OBS, MTU, B>
{
    /// A server over `store`, whose new sessions use `coap` settings.
    pub fn with_store(store: S, coap: coap::Config) -> Self {
        ServerWith {
            store,
            replies: Deque::new(),
            coap,
            drops: Deque::new(),
            buffers: PhantomData,
        }
    }

    /// The session store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The session store, mutably.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The CoAP settings of new sessions.
    pub fn coap_config(&self) -> coap::Config {
        self.coap
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The session at `index` (stable until a session is removed), woken if needed.
    pub fn session(
        &mut self,
        index: usize,
    ) -> Option<&mut ServerSession<SLOTS, DEDUP, OBS, MTU, B>> {
        if index >= self.store.len() {
            return None;
        }
        self.store.session_mut(index)
    }

    /// Removes every session (as a restart without persisted state would).
    pub fn clear(&mut self) {
        self.store.clear();
    }

    /// Adds a restored session (see [`ServerSession::import`]); replies go to `to` until the
    /// peer is heard from.
    ///
    /// # Errors
    /// Gives the session back when the store is full (heapless style: the caller keeps it).
    #[allow(clippy::result_large_err)]
    pub fn insert(
        &mut self,
        to: A,
        s: ServerSession<SLOTS, DEDUP, OBS, MTU, B>,
    ) -> Result<usize, ServerSession<SLOTS, DEDUP, OBS, MTU, B>> {
        self.store.push(0, to, s)
    }

    fn drop_packet(&mut self, why: ServerDrop) {
        if self.drops.is_full() {
            self.drops.pop_front();
        }
        let _ = self.drops.push_back(why);
    }

    /// Why recent packets were dropped (oldest first), for logs and metrics.
    pub fn poll_drop(&mut self) -> Option<ServerDrop> {
        self.drops.pop_front()
    }

    fn queue_reject(&mut self, cfg: &ResponderConfig<'_>, from: A, code: RejectCode) {
        let mut r = [0u8; REJECT_LEN];
        if cfg.write_reject(code, &mut r).is_ok() && !self.replies.is_full() {
            let _ = self.replies.push_back((from, r));
        }
    }

    /// Processes one link packet from `from`. Returns the index of the session it belongs to
    /// and, for transport packets, what CoAP made of it.
    pub fn handle_packet<'a, R: RngCore + CryptoRng>(
        &mut self,
        now: u64,
        cfg: &ResponderConfig<'_>,
        rng: &mut R,
        from: A,
        packet: &[u8],
        scratch: &'a mut [u8],
    ) -> Option<(usize, Option<Received<'a>>)> {
        match classify(packet) {
            None => {
                self.drop_packet(ServerDrop::Empty);
                None
            }
            Some(PacketKind::Handshake) => {
                self.handle_handshake(now, cfg, rng, from, packet, scratch)
            }
            Some(PacketKind::Transport(id)) => {
                // Candidates with this id: those last heard from `from` first, then the rest,
                // each in index order.
                let n = self.store.len();
                let mut any = false;
                let mut last = TransportError::Decrypt;
                let mut hit = None;
                'passes: for same_addr in [true, false] {
                    for i in 0..n {
                        if self.store.id(i) != id || (self.store.addr(i) == from) != same_addr {
                            continue;
                        }
                        any = true;
                        match self.store.open(now, i, packet, scratch) {
                            Ok(len) => {
                                hit = Some((i, len));
                                break 'passes;
                            }
                            Err(e) => last = e,
                        }
                    }
                }
                if !any {
                    self.queue_reject(cfg, from, UNKNOWN_SESSION);
                    self.drop_packet(ServerDrop::UnknownSession);
                    return None;
                }
                let Some((i, len)) = hit else {
                    self.drop_packet(ServerDrop::Transport(last));
                    return None;
                };
                // Authenticated: replies follow the peer to its new address.
                self.store.readdress(i, from);
                let data: &'a [u8] = &scratch[..len];
                let s = self.store.session_mut(i)?;
                Some((i, s.deliver(now, data)))
            }
        }
    }

    fn handle_handshake<R: RngCore + CryptoRng>(
        &mut self,
        now: u64,
        cfg: &ResponderConfig<'_>,
        rng: &mut R,
        from: A,
        packet: &[u8],
        scratch: &mut [u8],
    ) -> Option<(usize, Option<Received<'static>>)> {
        for i in 0..self.store.len() {
            let again = self
                .store
                .live_mut(i)
                .is_some_and(|s| s.handle_retransmitted_msg1(packet));
            if again {
                self.store.readdress(i, from);
                // Marks it for polling: the cached msg2 goes out again.
                let _ = self.store.session_mut(i);
                return Some((i, None));
            }
        }
        let msg1 = match cfg.read_msg1(packet, scratch) {
            Ok(m) => m,
            Err(e) => {
                self.queue_reject(cfg, from, e.reject_code());
                self.drop_packet(ServerDrop::Refused(e));
                return None;
            }
        };
        // A new handshake from a known peer replaces its old session.
        let peer = msg1.peer();
        if let Some(i) = (0..self.store.len()).find(|&i| self.store.peer(i) == peer) {
            self.store.swap_remove(i);
        }
        if self.store.is_full() {
            self.queue_reject(cfg, from, RejectCode::Busy);
            self.drop_packet(ServerDrop::Full);
            return None;
        }
        let store = &self.store;
        // Prefer an unused id; share one only when all 64 are taken.
        let crowded = store.len() >= 64;
        let is_free = |id: SessionId| crowded || (0..store.len()).all(|i| store.id(i) != id);
        match ServerSession::accept(msg1, rng, is_free, self.coap) {
            Ok(s) => match self.store.push(now, from, s) {
                Ok(i) => Some((i, None)),
                Err(_) => {
                    self.drop_packet(ServerDrop::Full);
                    None
                }
            },
            Err(e) => {
                self.drop_packet(ServerDrop::Refused(e));
                None
            }
        }
    }

    /// The next link packet to send and where to.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(A, usize)> {
        if let Some((to, r)) = self.replies.pop_front() {
            let dst = out.get_mut(..REJECT_LEN)?;
            dst.copy_from_slice(&r);
            return Some((to, REJECT_LEN));
        }
        self.store.poll_transmit(now, out)
    }

    /// Earliest timer of all sessions.
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.replies.is_empty() {
            return Some(0);
        }
        self.store.poll_timeout()
    }

    /// Advances every session's timers.
    pub fn handle_timeout(&mut self, now: u64) {
        self.store.handle_timeout(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;

    #[test]
    fn device_session_size() {
        let n = core::mem::size_of::<DeviceClient<()>>();
        // Printed for the docs; the bound is checked at compile time above.
        std::println!("DeviceClient<()> = {n} bytes");
        assert!(n + 512 <= 4096);
    }

    use crate::coap::{Code, Options};
    use crate::noise::link::{InitiatorConfig, LinkPattern, RetransmitConfig, TransportConfig};
    use crate::noise::Keypair;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    type TestClient = Client<StdRng, 2, 4, 1, 64>;
    type Inner = FixedSessions<u8, 4, 2, 4, 1, 64>;

    /// A store that keeps its sessions in a [`FixedSessions`] and records which sessions the
    /// server tried to open packets with.
    #[derive(Debug, Default)]
    struct Spy {
        inner: Inner,
        opened: alloc::vec::Vec<usize>,
    }

    impl SessionStore<u8, 2, 4, 1, 64> for Spy {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn is_full(&self) -> bool {
            self.inner.is_full()
        }
        fn id(&self, i: usize) -> SessionId {
            self.inner.id(i)
        }
        fn peer(&self, i: usize) -> PublicKey {
            self.inner.peer(i)
        }
        fn addr(&self, i: usize) -> u8 {
            self.inner.addr(i)
        }
        fn readdress(&mut self, i: usize, to: u8) {
            self.inner.readdress(i, to);
        }
        fn live_mut(&mut self, i: usize) -> Option<&mut ServerSession<2, 4, 1, 64>> {
            self.inner.live_mut(i)
        }
        fn session_mut(&mut self, i: usize) -> Option<&mut ServerSession<2, 4, 1, 64>> {
            self.inner.session_mut(i)
        }
        fn open(
            &mut self,
            now: u64,
            i: usize,
            packet: &[u8],
            scratch: &mut [u8],
        ) -> Result<usize, TransportError> {
            self.opened.push(i);
            self.inner.open(now, i, packet, scratch)
        }
        fn push(
            &mut self,
            now: u64,
            to: u8,
            s: ServerSession<2, 4, 1, 64>,
        ) -> Result<usize, ServerSession<2, 4, 1, 64>> {
            self.inner.push(now, to, s)
        }
        fn swap_remove(&mut self, i: usize) {
            self.inner.swap_remove(i);
        }
        fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(u8, usize)> {
            self.inner.poll_transmit(now, out)
        }
        fn poll_timeout(&self) -> Option<u64> {
            self.inner.poll_timeout()
        }
        fn handle_timeout(&mut self, now: u64) {
            self.inner.handle_timeout(now);
        }
    }

    /// Moves packets between `c` (at address `at`) and `srv` until quiet; answers requests;
    /// returns (requests served, the address the last server packet went to).
    fn pump<S: SessionStore<u8, 2, 4, 1, 64>>(
        now: u64,
        srv: &mut ServerWith<u8, S, 2, 4, 1, 64>,
        c: &mut TestClient,
        at: u8,
        cfg: &ResponderConfig<'_>,
        rng: &mut StdRng,
    ) -> (usize, Option<u8>) {
        let mut out = [0u8; max_packet_len(64)];
        let mut scratch = [0u8; max_packet_len(64)];
        let (mut served, mut to) = (0, None);
        for _ in 0..6 {
            while let Some(n) = c.poll_transmit(now, &mut out) {
                if let Some((i, Some(Received::Request(r)))) =
                    srv.handle_packet(now, cfg, rng, at, &out[..n], &mut scratch)
                {
                    let who = r.responder;
                    served += 1;
                    srv.session(i)
                        .unwrap()
                        .coap()
                        .respond(now, &who, Code::CONTENT, Options::NONE, b"ok")
                        .unwrap();
                }
            }
            while let Some((a, n)) = srv.poll_transmit(now, &mut out) {
                to = Some(a);
                if a == at {
                    let _ = c.handle_packet(now, &out[..n], &mut scratch);
                }
            }
        }
        (served, to)
    }

    const V1: [LinkVersion; 1] = [LinkVersion {
        protocol: 1,
        dict: 1,
    }];

    /// A responder configuration for these tests: gateway key `gw`, peers `allowed`, IK.
    fn responder<'a>(
        gw: &'a Keypair,
        allowed: &'a [PublicKey],
        transport: TransportConfig,
    ) -> ResponderConfig<'a> {
        ResponderConfig {
            local: gw,
            versions: &V1,
            known_versions: &[],
            allowed,
            accept_ik: true,
            accept_kk: false,
            transport,
        }
    }

    /// A client with key `k` towards `gw` (IK, protocol 1), CoAP and RNG seeded by `seed`.
    fn test_client(k: &Keypair, gw: &Keypair, seed: u64, transport: TransportConfig) -> TestClient {
        let init = InitiatorConfig {
            pattern: LinkPattern::IK,
            version: V1[0],
            local: k.clone(),
            remote: gw.public(),
            retransmit: RetransmitConfig::for_link_rate(1_000_000, 0),
            transport,
        };
        let coap = coap::Config {
            seed,
            ..coap::Config::default()
        };
        Client::new(init, coap, StdRng::seed_from_u64(seed)).unwrap()
    }

    #[test]
    fn an_exported_session_resumes_without_a_handshake() {
        let mut rng = StdRng::seed_from_u64(7);
        let gw = Keypair::generate(&mut rng);
        let key = Keypair::generate(&mut rng);
        let other = Keypair::generate(&mut rng);
        let allowed = [key.public()];
        let t16 = TransportConfig { rekey_interval: 16 };
        let cfg = responder(&gw, &allowed, t16);
        let client = |k: &Keypair, seed: u64| test_client(k, &gw, seed, t16);
        let mut srv: ServerWith<u8, Spy, 2, 4, 1, 64> =
            ServerWith::with_store(Spy::default(), coap::Config::default());
        let mut a = client(&key, 2);
        let mut ex = [0u8; CLIENT_EXPORT_LEN];
        assert!(!a.export(&mut ex), "nothing to export before the handshake");
        assert_eq!(a.tx_epoch(), None);
        a.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        assert_eq!(pump(0, &mut srv, &mut a, 1, &cfg, &mut rng), (1, Some(1)));
        assert_eq!(a.stats().handshakes, 1);
        assert!(a.export(&mut ex));
        let epoch = a.tx_epoch().unwrap();
        let mid = u16::from_be_bytes([ex[8], ex[9]]);
        // Requests after the export (not saved again before the "reboot").
        for _ in 0..3 {
            a.request(0, Request::con(Code::GET, Options::NONE, &[]))
                .unwrap();
            assert_eq!(pump(0, &mut srv, &mut a, 1, &cfg, &mut rng).0, 1);
        }
        // Reboot: a new client resumes; its first packet is a transport packet the server
        // opens with the session it holds, no handshake.
        let mut b = client(&key, 3);
        b.resume(&ex).unwrap();
        assert!(b.is_established());
        assert!(
            b.tx_epoch().unwrap() > epoch,
            "a fresh key epoch: no nonce reused"
        );
        assert_eq!(b.coap().next_mid(), mid.wrapping_add(RESUME_MID_SKIP));
        b.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        let mut out = [0u8; max_packet_len(64)];
        let n = b.poll_transmit(0, &mut out).unwrap();
        assert!(matches!(
            classify(&out[..n]),
            Some(PacketKind::Transport(_))
        ));
        let mut scratch = [0u8; max_packet_len(64)];
        assert!(matches!(
            srv.handle_packet(0, &cfg, &mut rng, 1, &out[..n], &mut scratch),
            Some((_, Some(Received::Request(_))))
        ));
        assert_eq!(srv.len(), 1);
        assert_eq!(b.stats().handshakes, 0);
        // An export of other keys, a cut one, or one taken once something was sent: refused.
        let mut c = client(&other, 4);
        assert_eq!(c.resume(&ex), Err(TransportError::Malformed));
        let mut d = client(&key, 5);
        assert_eq!(
            d.resume(&ex[..ex.len() - 1]),
            Err(TransportError::Malformed)
        );
        let _ = d.poll_transmit(0, &mut out);
        assert_eq!(d.resume(&ex), Err(TransportError::Malformed));
        // A server that lost the session rejects the resumed client, which handshakes anew.
        let mut srv2: ServerWith<u8, Spy, 2, 4, 1, 64> =
            ServerWith::with_store(Spy::default(), coap::Config::default());
        let mut e = client(&key, 6);
        e.resume(&ex).unwrap();
        e.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        // The reject makes a handshake; the request goes again on its retransmission timer.
        let (mut served, mut now) = (0, 0);
        while served == 0 && now < 600_000 {
            e.handle_timeout(now);
            served += pump(now, &mut srv2, &mut e, 1, &cfg, &mut rng).0;
            now += 1_000;
        }
        assert_eq!(served, 1);
        assert_eq!(e.stats().handshakes, 1);
    }

    #[test]
    fn a_custom_store_gets_the_same_demultiplexing() {
        let mut rng = StdRng::seed_from_u64(1);
        let gw = Keypair::generate(&mut rng);
        let keys = [Keypair::generate(&mut rng), Keypair::generate(&mut rng)];
        let allowed = [keys[0].public(), keys[1].public()];
        let cfg = responder(&gw, &allowed, TransportConfig::default());
        let client = |k: &Keypair, seed: u64| test_client(k, &gw, seed, TransportConfig::default());
        let mut srv: ServerWith<u8, Spy, 2, 4, 1, 64> =
            ServerWith::with_store(Spy::default(), coap::Config::default());
        let (mut a, mut b) = (client(&keys[0], 2), client(&keys[1], 3));
        pump(0, &mut srv, &mut a, 1, &cfg, &mut rng);
        pump(0, &mut srv, &mut b, 2, &cfg, &mut rng);
        assert!(a.is_established() && b.is_established());
        assert_eq!(srv.len(), 2);
        assert_ne!(a.session_id(), b.session_id());
        // A request is opened by its own session only (the other has another id).
        srv.store_mut().opened.clear();
        a.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        assert_eq!(pump(0, &mut srv, &mut a, 1, &cfg, &mut rng), (1, Some(1)));
        assert_eq!(srv.store().opened, [0]);
        // The peer moved: its session follows it there once a packet authenticated.
        b.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        assert_eq!(pump(0, &mut srv, &mut b, 9, &cfg, &mut rng), (1, Some(9)));
        assert_eq!(srv.store().addr(1), 9);
        // A forged packet under a's id from b's address authenticates with nobody and
        // changes nothing.
        let mut out = [0u8; max_packet_len(64)];
        a.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        let n = a.poll_transmit(0, &mut out).unwrap();
        out[n - 1] ^= 1;
        let mut scratch = [0u8; max_packet_len(64)];
        assert!(srv
            .handle_packet(0, &cfg, &mut rng, 9, &out[..n], &mut scratch)
            .is_none());
        assert_eq!(
            srv.poll_drop(),
            Some(ServerDrop::Transport(TransportError::Decrypt))
        );
        assert_eq!(srv.store().addr(0), 1);
        // A server that lost its sessions rejects, and the client handshakes again.
        srv.clear();
        assert!(srv.is_empty());
        // (a's request whose packet was corrupted is retransmitted on its timer.)
        let (mut served, _) = pump(10_000, &mut srv, &mut a, 1, &cfg, &mut rng);
        assert_eq!(srv.poll_drop(), Some(ServerDrop::UnknownSession));
        assert_eq!(a.stats().handshakes, 2);
        assert_eq!(srv.len(), 1);
        // The request reaches the new session (on its retransmission timer), once.
        for now in (11_000..90_000).step_by(1_000) {
            served += pump(now, &mut srv, &mut a, 1, &cfg, &mut rng).0;
        }
        let mut events = alloc::vec::Vec::new();
        while let Some(e) = a.poll_event() {
            events.push(e);
        }
        assert_eq!(served, 1, "{events:?}");
        assert!(!events
            .iter()
            .any(|e| matches!(e, SessionEvent::Coap(coap::Event::Failed { .. }))));
    }
}
