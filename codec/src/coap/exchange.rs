//! The CoAP endpoint (RFC 7252 §4, §5; RFC 7641 §3-4): one sans-IO state machine for client
//! and server roles towards one peer.
//!
//! # Call protocol
//!
//! ```text
//!  datagram in ──► handle_datagram(now, bytes) ──► Option<Received>  (request / response,
//!                                                    borrowed from `bytes`)
//!  app         ──► request(now, ..) / respond(now, ..) / notify(now, ..) / cancel(..)
//!  then always ──► poll_transmit(now, out) until None   (each Some(n): send out[..n])
//!              ──► poll_event() until None              (failures, observers gone)
//!              ──► poll_timeout()  = when to call handle_timeout(now) (or poll_transmit) next
//! ```
//!
//! Requests and responses arrive through `handle_datagram`'s return value so that they can
//! borrow the datagram: nothing is copied and nothing is allocated. Everything that happens
//! because time passed (a request failing after MAX_RETRANSMIT or its deadline, an observer
//! dropped because a notification was never acknowledged) is an owned [`Event`].
//!
//! Guarantees (tested with loss, duplication and reordering on virtual time): every request
//! yields exactly one final response (observations: every fresh notification once) or exactly
//! one [`Event::Failed`]; a duplicate CON request is answered from the cache of responses,
//! never re-delivered, for EXCHANGE_LIFETIME (or dropped, once a busy peer made the endpoint
//! forget it early; see "Duplicate detection" on [`Endpoint`]). The peer's address is not
//! the endpoint's business: one `Endpoint` per peer (per Noise session on lowband).
//! <https://www.rfc-editor.org/rfc/rfc7252#section-4>

use super::msg::{self, merge, opt, Code, MsgType, Opt, Options, ParseError, Repr, Token};
use super::observe::{
    Freshness, Observer, Observers, PushTraffic, DEREGISTER, REGISTER, UNTRACKED,
};
use super::params::TransmissionParams;

/// Endpoint configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Transmission parameters (see [`TransmissionParams::for_link`]).
    pub params: TransmissionParams,
    /// Seed for message IDs, tokens and timer randomisation (from the board's RNG).
    pub seed: u64,
    /// Token length for our requests, 1-8 bytes (every byte costs 80 ms at 100 bit/s; with
    /// Noise underneath, tokens need not be unguessable).
    pub token_len: u8,
    /// Critical options the application understands beyond those in [`opt::is_known`].
    pub extra_options: &'static [u16],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            params: TransmissionParams::default(),
            seed: 1,
            token_len: 2,
            extra_options: &[],
        }
    }
}

/// Identifies one of our requests from [`Endpoint::request`] to its response or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestHandle(u32);

/// What the application needs to answer a request: pass it to [`Endpoint::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responder {
    mid: u16,
    token: Token,
    con: bool,
}

impl Responder {
    /// The request's token.
    pub fn token(&self) -> Token {
        self.token
    }
}

/// A request from the peer, borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct IncomingRequest<'a> {
    /// Answer with this.
    pub responder: Responder,
    /// Method.
    pub code: Code,
    /// Options as on the wire.
    pub options: Options<'a>,
    /// Payload.
    pub payload: &'a [u8],
    /// The Observe option: 0 register, 1 deregister (RFC 7641 §2).
    pub observe: Option<u32>,
}

/// A response to one of our requests (or a notification), borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct IncomingResponse<'a> {
    /// The request it answers.
    pub handle: RequestHandle,
    /// Response code.
    pub code: Code,
    /// Options as on the wire.
    pub options: Options<'a>,
    /// Payload.
    pub payload: &'a [u8],
    /// Observe sequence number, for notifications.
    pub observe: Option<u32>,
    /// True when the exchange is over (no more notifications will be delivered for `handle`).
    pub last: bool,
}

/// What [`Endpoint::handle_datagram`] hands to the application.
#[derive(Debug, Clone, Copy)]
pub enum Received<'a> {
    /// A new request (duplicates are answered from the cache and not delivered).
    Request(IncomingRequest<'a>),
    /// A response or fresh notification.
    Response(IncomingResponse<'a>),
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// No acknowledgement after MAX_RETRANSMIT retransmissions.
    Timeout,
    /// The request's deadline passed before a response arrived.
    Deadline,
    /// The peer answered with RST.
    Reset,
    /// The peer's response carried a critical option we do not understand.
    BadResponse,
}

/// Owned events; see [`Endpoint::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request failed; it will not produce a response.
    Failed {
        /// The request.
        handle: RequestHandle,
        /// Why.
        error: RequestError,
    },
    /// An observer was removed because it reset or never acknowledged a notification.
    ObserverGone {
        /// The resource it observed.
        resource: u16,
        /// Its token.
        token: Token,
    },
    /// A separate (CON) response of ours was never acknowledged.
    ResponseLost {
        /// Token of the request it answered.
        token: Token,
    },
}

/// Why a request, response or notification could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Every exchange slot is busy.
    NoSlot,
    /// The message does not fit the endpoint's MTU.
    TooBig,
    /// Options not sorted, or similar.
    Encoding,
    /// `respond` for a request that is unknown, already answered or expired.
    UnknownRequest,
    /// The observer table is full.
    ObserverTableFull,
}

impl From<msg::EmitError> for SendError {
    fn from(e: msg::EmitError) -> Self {
        match e {
            msg::EmitError::BufferTooSmall => SendError::TooBig,
            _ => SendError::Encoding,
        }
    }
}

/// A request to send.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// CON (retransmitted) or NON.
    pub confirmable: bool,
    /// Method.
    pub code: Code,
    /// Options (an `Observe: 0` option makes it an observation, RFC 7641 §3.1).
    pub options: Options<'a>,
    /// Payload.
    pub payload: &'a [u8],
    /// Fail after this many ms (default: [`TransmissionParams::default_deadline`]).
    pub timeout: Option<u64>,
}

impl<'a> Request<'a> {
    /// A confirmable request with default deadline.
    pub fn con(code: Code, options: Options<'a>, payload: &'a [u8]) -> Self {
        Request {
            confirmable: true,
            code,
            options,
            payload,
            timeout: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request { handle: u32, observe: bool },
    Response,
    Notification { resource: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for NSTART room (requests) or for the first transmission.
    Queued,
    /// CON sent, not yet acknowledged.
    Sent,
    /// Acknowledged (or NON sent): waiting for the (separate) response.
    AwaitResponse,
    /// Observation established; notifications flow.
    Observing,
    /// The request failed; held until [`Endpoint::poll_event`] reports it, so that no
    /// failure is ever lost to a full queue.
    Failed(RequestError),
}

#[derive(Debug, Clone)]
struct Slot<B> {
    state: SlotState,
    kind: Kind,
    con: bool,
    due: bool,
    mid: u16,
    prev_mid: Option<u16>,
    token: Token,
    order: u32,
    retransmits: u8,
    interval: u64,
    next: u64,
    deadline: u64,
    fresh: Freshness,
    len: u16,
    buf: B,
}

impl<B: MsgBuf> Slot<B> {
    fn free() -> Self {
        Slot {
            state: SlotState::Free,
            kind: Kind::Response,
            con: false,
            due: false,
            mid: 0,
            prev_mid: None,
            token: Token::EMPTY,
            order: 0,
            retransmits: 0,
            interval: 0,
            next: 0,
            deadline: u64::MAX,
            fresh: Freshness::new(),
            len: 0,
            buf: B::empty(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DState {
    Free,
    /// CON request delivered to the app; ACK held back until `ack_at` hoping to piggyback.
    Pending {
        ack_at: u64,
    },
    /// CON request acknowledged empty; a separate response is expected from the app.
    EmptyAcked,
    /// CON request answered piggybacked: `buf` is the cached ACK.
    Responded,
    /// CON request answered separately: duplicates get an empty ACK.
    SeparateSent,
    /// NON request delivered (and maybe answered): duplicates are dropped.
    NonSeen,
    /// CON response to us (separate or notification) acknowledged: duplicates re-ACKed.
    AckedResponse,
}

#[derive(Debug, Clone)]
struct Dedup<B> {
    state: DState,
    mid: u16,
    token: Token,
    since: u64,
    expires: u64,
    tx: bool,
    len: u16,
    buf: B,
}

impl<B: MsgBuf> Dedup<B> {
    fn free() -> Self {
        Dedup {
            state: DState::Free,
            mid: 0,
            token: Token::EMPTY,
            since: 0,
            expires: 0,
            tx: false,
            len: 0,
            buf: B::empty(),
        }
    }
    fn is_request(&self) -> bool {
        !matches!(self.state, DState::Free | DState::AckedResponse)
    }
}

/// Counters of an [`Endpoint`], for logs and metrics (never sent over the link).
///
/// A retransmission is a CON message of ours (request, separate response or notification)
/// sent again because its ACK did not come within the retransmission timeout (RFC 7252
/// §4.2); answering a peer's duplicate from the cache is counted apart, as `duplicates`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// CON messages sent again on timeout.
    pub retransmissions: u32,
    /// Duplicate messages from the peer (answered from the cache or re-acknowledged, never
    /// delivered twice).
    pub duplicates: u32,
}

/// Where an [`Endpoint`] keeps one message: the outgoing message of an exchange slot (kept
/// for retransmission) or a cached response (resent for duplicates).
///
/// The default, `[u8; MTU]`, holds every buffer inline at full size: no allocator, a fixed
/// footprint (devices). A host with many sessions can hold only what is stored, on the heap,
/// so that a session costs what its messages take rather than `(SLOTS + DEDUP) × MTU`.
pub trait MsgBuf: core::fmt::Debug {
    /// A buffer holding nothing.
    fn empty() -> Self;
    /// Holds `msg` (at most the endpoint's MTU bytes) from now on, replacing what was held;
    /// `false` when it cannot (then the endpoint refuses the message as too big).
    fn store(&mut self, msg: &[u8]) -> bool;
    /// The bytes held; the message last stored is a prefix.
    fn bytes(&self) -> &[u8];
    /// The same, mutably (message ids are patched in place).
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl<const N: usize> MsgBuf for [u8; N] {
    fn empty() -> Self {
        [0; N]
    }
    fn store(&mut self, msg: &[u8]) -> bool {
        match self.get_mut(..msg.len()) {
            Some(d) => {
                d.copy_from_slice(msg);
                true
            }
            None => false,
        }
    }
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Emits a message with `f` into an `MTU`-byte scratch buffer and stores it in `buf`.
fn emit_to<B: MsgBuf, const MTU: usize>(
    buf: &mut B,
    f: impl FnOnce(&mut [u8]) -> Result<usize, msg::EmitError>,
) -> Result<usize, SendError> {
    let mut tmp = [0u8; MTU];
    let n = f(&mut tmp)?;
    if buf.store(&tmp[..n]) {
        Ok(n)
    } else {
        Err(SendError::TooBig)
    }
}

/// How far apart, in message IDs, the requests a lowband endpoint has not yet seen
/// acknowledged may be: a new request with MID `m` waits while one of ours with MID `o`
/// awaits its first ACK and `m - o` (mod 2^16) is `DEDUP_WINDOW` or more. A server needs
/// `DEDUP >= DEDUP_WINDOW` (plus the requests its application still has to answer) for its
/// table never to refuse a new request; see [`Endpoint`], "Duplicate detection".
pub const DEDUP_WINDOW: u16 = 8;

/// The message-ID range a server drops as old duplicates after its table overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Floor {
    /// Oldest evicted MID still guarded.
    lo: u16,
    /// Newest evicted MID.
    hi: u16,
    /// The floor is forgotten at this time (the last evicted entry's expiry; never 0, so
    /// that `Option<Floor>` costs no extra word).
    until: core::num::NonZeroU64,
}

fn nonzero(t: u64) -> core::num::NonZeroU64 {
    core::num::NonZeroU64::MIN.saturating_add(t.saturating_sub(1))
}

/// `a` is strictly behind `b` in the 16-bit serial-number space (RFC 1982 §3.2).
fn behind(a: u16, b: u16) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 0x8000
}

/// `x` lies in the circular range `lo..=hi`.
fn within(x: u16, lo: u16, hi: u16) -> bool {
    x.wrapping_sub(lo) <= hi.wrapping_sub(lo)
}

/// A CoAP endpoint towards one peer, both client and server.
///
/// Capacities are in the type: `SLOTS` outgoing exchanges (requests in flight or queued,
/// separate responses, notifications), `DEDUP` remembered incoming message IDs with their
/// cached responses, `OBS` observers, `MTU` largest CoAP message in bytes; `B` holds each
/// message (see [`MsgBuf`]; inline `[u8; MTU]` by default). See the module documentation for
/// the call protocol.
///
/// # Duplicate detection
///
/// A server must recognise a duplicate request by its message ID for EXCHANGE_LIFETIME
/// (RFC 7252 §4.5), which is minutes on a slow link (766 s at the gateway's parameters), so
/// a busy peer sends more requests within one lifetime than `DEDUP` entries can remember.
/// Dropping new requests while the table is full would stall the peer for a lifetime; so
/// the endpoint bounds how far apart its unacknowledged requests may be, and a server that
/// sees such a peer can forget old entries safely:
///
/// 1. Client rule: a request with MID `m` is not sent while one of our requests with MID `o`
///    is unacknowledged (a CON not yet ACKed, or a NON within its first ACK_TIMEOUT, as for
///    NSTART, RFC 7252 §4.7) and `m - o >= DEDUP_WINDOW` (mod 2^16). Our MIDs are
///    sequential (as §4.4 allows), so with NSTART below [`DEDUP_WINDOW`] this almost never
///    waits; when it does, the request stays queued until the old one is acknowledged or
///    fails.
/// 2. Server rule: with the table full, a new request may evict an answered entry whose MID
///    is at least `DEDUP_WINDOW` behind `top`, the newest request MID seen (in serial
///    arithmetic, RFC 1982). The evicted MIDs form a range `lo..=hi`, the floor, and a later
///    request whose MID is in it is dropped as an old duplicate. The floor lasts until the
///    last evicted entry would have expired, and never reaches more than 2^15 - 1 behind
///    `top` (so a MID that comes round again after a wrap is never held back; a peer that
///    sends 2^15 requests within one EXCHANGE_LIFETIME is beyond what 16-bit MIDs can tell
///    apart anyway, §4.4).
///
/// No duplicate delivery: a request is delivered only when its MID is neither in the table
/// nor in the floor. An entry leaves the table either at its EXCHANGE_LIFETIME expiry (as in
/// §4.5), or once MAX_TRANSMIT_SPAN + MAX_LATENCY have passed since it arrived (no copy can
/// still be on its way, §4.8.2), or by rule 2, and then its MID is in the floor until it
/// would have expired.
///
/// No stall: when the peer sent `top`, every request it had not seen acknowledged was less
/// than `DEDUP_WINDOW` behind it (rule 1). A request at least `DEDUP_WINDOW` behind `top` was
/// therefore acknowledged (it was delivered and is answered from the table or dropped as a
/// duplicate) or abandoned by the peer (failed, cancelled, or a NON past its first
/// ACK_TIMEOUT, which may then be lost like any NON): dropping it never holds back a request
/// the peer still retransmits. And a new request `n` finds room: `n` and the `DEDUP`
/// entries are `DEDUP + 1` distinct MIDs and at most `DEDUP_WINDOW` of them are less than
/// `DEDUP_WINDOW` behind `top`, so with `DEDUP >= DEDUP_WINDOW` one of them is far enough
/// behind: either `n` itself, which the peer no longer waits for, or an entry, which is
/// evicted unless the application still has to answer it or its cached answer is still to
/// be sent (then `n` is dropped and retransmitted later, as before).
///
/// A peer that does not follow rule 1 (a stock CoAP client, see the gateway's plain CoAP
/// listener) meets the floor only once the table has overflowed, when the alternative is
/// dropping every new request until old entries age out; stock clients number their
/// messages sequentially with NSTART 1, which keeps rule 1 by itself. A peer that restarts
/// with a random MID while a floor is active may find its requests dropped until the floor
/// expires (at most EXCHANGE_LIFETIME). On lowband a new Noise session starts a new
/// endpoint on both ends, so a restarted peer never meets an old floor.
#[derive(Debug)]
pub struct Endpoint<
    const SLOTS: usize,
    const DEDUP: usize,
    const OBS: usize,
    const MTU: usize,
    B: MsgBuf = [u8; MTU],
> {
    cfg: Config,
    rng: u64,
    next_mid: u16,
    next_token: u64,
    next_handle: u32,
    next_order: u32,
    slots: [Slot<B>; SLOTS],
    dedup: [Dedup<B>; DEDUP],
    /// Newest request MID seen from the peer (serial arithmetic).
    top: Option<u16>,
    /// Old request MIDs dropped as duplicates after the table overflowed.
    floor: Option<Floor>,
    ctl: heapless::Deque<(MsgType, u16), 4>,
    events: heapless::Deque<Event, 4>,
    observers: Observers<OBS>,
    stats: EndpointStats,
    push_traffic: PushTraffic,
}

/// The device's endpoint: 3 exchanges, 4 remembered message IDs, 2 observers, 128-byte
/// messages (blocks of 32 or 64 bytes plus options).
pub type DeviceEndpoint = Endpoint<3, 4, 2, 128>;
/// The gateway's per-device endpoint: 16 exchanges, 32 message IDs, 8 observers, 1152 bytes.
pub type GatewayEndpoint = Endpoint<16, 32, 8, 1152>;

// Measured: 1600 bytes on thumbv7m-none-eabi, 1640 on x86_64 (a device session must fit
// 4 KiB together with the Noise state).
const _: () = assert!(core::mem::size_of::<DeviceEndpoint>() <= 1664);

fn known(cfg: &Config, n: u16) -> bool {
    opt::is_known(n) || cfg.extra_options.contains(&n)
}

fn unknown_critical(cfg: &Config, o: &Options<'_>) -> bool {
    o.iter()
        .any(|o| opt::is_critical(o.number) && !known(cfg, o.number))
}

impl<const SLOTS: usize, const DEDUP: usize, const OBS: usize, const MTU: usize, B: MsgBuf>
    Endpoint<SLOTS, DEDUP, OBS, MTU, B>
{
    /// A fresh endpoint.
    pub fn new(cfg: Config) -> Self {
        let mut rng = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
        if rng == 0 {
            rng = 1;
        }
        let mut e = Endpoint {
            cfg,
            rng,
            next_mid: 0,
            next_token: 0,
            next_handle: 1,
            next_order: 0,
            slots: core::array::from_fn(|_| Slot::free()),
            dedup: core::array::from_fn(|_| Dedup::free()),
            top: None,
            floor: None,
            ctl: heapless::Deque::new(),
            events: heapless::Deque::new(),
            observers: Observers::new(),
            stats: EndpointStats::default(),
            push_traffic: PushTraffic::ZERO,
        };
        e.next_mid = e.rand() as u16;
        e.next_token = e.rand();
        e
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The transmission parameters in use.
    pub fn params(&self) -> &TransmissionParams {
        &self.cfg.params
    }

    /// Counters since the endpoint was created.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// The message ID of the next message this endpoint sends (for a session export: a
    /// resumed endpoint continues past it, so the peer's duplicate detection never takes a
    /// new request for an old one).
    pub fn next_mid(&self) -> u16 {
        self.next_mid
    }

    /// Continues message IDs at `mid` (before the first message; see [`Self::next_mid`]).
    pub fn set_next_mid(&mut self, mid: u16) {
        self.next_mid = mid;
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn alloc_mid(&mut self) -> u16 {
        let m = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        m
    }

    fn alloc_token(&mut self) -> Token {
        let len = self.cfg.token_len.clamp(1, 8) as usize;
        let mask = if len == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * len)) - 1
        };
        loop {
            let v = self.next_token & mask;
            self.next_token = self.next_token.wrapping_add(1);
            let b = v.to_be_bytes();
            // INVARIANT: len <= 8.
            let t = Token::new(&b[8 - len..]).unwrap();
            if !self
                .slots
                .iter()
                .any(|s| s.state != SlotState::Free && s.token == t)
            {
                return t;
            }
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.state == SlotState::Free)
    }

    fn initial_interval(&mut self) -> u64 {
        let p = self.cfg.params;
        let span = p.max_initial_timeout() - p.ack_timeout;
        p.ack_timeout
            + if span == 0 {
                0
            } else {
                self.rand() % (span + 1)
            }
    }

    /// Queue a request; it goes out on the next [`Endpoint::poll_transmit`] once fewer than
    /// NSTART interactions are outstanding.
    ///
    /// # Errors
    /// [`SendError::NoSlot`], [`SendError::TooBig`], [`SendError::Encoding`].
    pub fn request(&mut self, now: u64, req: Request<'_>) -> Result<RequestHandle, SendError> {
        let i = self.free_slot().ok_or(SendError::NoSlot)?;
        let token = self.alloc_token();
        let mtype = if req.confirmable {
            MsgType::Con
        } else {
            MsgType::Non
        };
        let n = emit_to::<B, MTU>(&mut self.slots[i].buf, |out| {
            msg::emit_message(
                mtype,
                req.code,
                0,
                &token,
                req.options.iter(),
                req.payload,
                out,
            )
        })?;
        let observe = req.options.uint(opt::OBSERVE) == Some(REGISTER);
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        let order = self.next_order;
        self.next_order = self.next_order.wrapping_add(1);
        let deadline =
            now.saturating_add(req.timeout.unwrap_or(self.cfg.params.default_deadline()));
        let s = &mut self.slots[i];
        s.state = SlotState::Queued;
        s.kind = Kind::Request { handle, observe };
        s.con = req.confirmable;
        s.due = false;
        s.prev_mid = None;
        s.token = token;
        s.order = order;
        s.retransmits = 0;
        s.deadline = deadline;
        s.fresh = Freshness::new();
        s.len = n as u16;
        Ok(RequestHandle(handle))
    }

    /// The token our request `h` uses (for logs and for matching in tests).
    pub fn token_of(&self, h: RequestHandle) -> Option<Token> {
        self.slot_of(h).map(|i| self.slots[i].token)
    }

    fn slot_of(&self, h: RequestHandle) -> Option<usize> {
        self.slots.iter().position(|s| {
            s.state != SlotState::Free
                && matches!(s.kind, Kind::Request { handle, .. } if handle == h.0)
        })
    }

    /// Forget request `h` (also ends an observation: the next notification is answered with
    /// RST, RFC 7641 §3.6). No event is produced. Returns whether it existed.
    pub fn cancel(&mut self, h: RequestHandle) -> bool {
        match self.slot_of(h) {
            Some(i) => {
                self.slots[i].state = SlotState::Free;
                true
            }
            None => false,
        }
    }

    /// End observation `h` proactively (RFC 7641 §3.6): the original GET is sent again with
    /// `Observe: 1` and the same token; its response arrives as the final response of `h`.
    ///
    /// # Errors
    /// [`SendError::UnknownRequest`] if `h` is not an established observation.
    pub fn deregister(&mut self, now: u64, h: RequestHandle) -> Result<(), SendError> {
        let i = self.slot_of(h).ok_or(SendError::UnknownRequest)?;
        if self.slots[i].state != SlotState::Observing {
            return Err(SendError::UnknownRequest);
        }
        let mut old = [0u8; MTU];
        let len = usize::from(self.slots[i].len);
        let held = self.slots[i]
            .buf
            .bytes()
            .get(..len)
            .ok_or(SendError::Encoding)?;
        let old = old.get_mut(..len).ok_or(SendError::Encoding)?;
        old.copy_from_slice(held);
        let r = Repr::parse(old).map_err(|_| SendError::Encoding)?;
        let extra = [Opt::uint(opt::OBSERVE, DEREGISTER)];
        let opts = merge(r.options, &[opt::OBSERVE], &extra);
        let n = emit_to::<B, MTU>(&mut self.slots[i].buf, |out| {
            msg::emit_message(r.mtype, r.code, 0, &r.token, opts, r.payload, out)
        })?;
        let order = self.next_order;
        self.next_order = self.next_order.wrapping_add(1);
        let deadline = now.saturating_add(self.cfg.params.default_deadline());
        let s = &mut self.slots[i];
        s.len = n as u16;
        s.kind = Kind::Request {
            handle: h.0,
            observe: false,
        };
        s.state = SlotState::Queued;
        s.order = order;
        s.deadline = deadline;
        s.retransmits = 0;
        s.due = false;
        Ok(())
    }

    /// Number of requests queued or awaiting a response (observations excluded).
    pub fn outstanding(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                matches!(s.kind, Kind::Request { .. })
                    && matches!(
                        s.state,
                        SlotState::Queued | SlotState::Sent | SlotState::AwaitResponse
                    )
            })
            .count()
    }

    /// Whether a queued request may go out now: fewer than NSTART requests in flight (RFC
    /// 7252 §4.7) and the MID it would take is less than [`DEDUP_WINDOW`] ahead of every
    /// request of ours in flight (the client rule, see "Duplicate detection" on
    /// [`Endpoint`]).
    ///
    /// In flight: a CON not yet acknowledged, or a NON request with neither response nor
    /// ACK, for at most ACK_TIMEOUT. A CON request acknowledged empty is no longer in flight,
    /// even though its response is awaited.
    fn request_room(&self) -> bool {
        let mut n = 0;
        for s in &self.slots {
            let in_flight = matches!(s.kind, Kind::Request { .. })
                && (s.state == SlotState::Sent
                    || (s.state == SlotState::AwaitResponse && !s.con && s.next != u64::MAX));
            if in_flight {
                if self.next_mid.wrapping_sub(s.mid) >= DEDUP_WINDOW {
                    return false;
                }
                n += 1;
            }
        }
        n < usize::from(self.cfg.params.nstart.max(1))
    }

    /// Answer a request delivered by [`Endpoint::handle_datagram`]: piggybacked on the ACK
    /// if it is still held back, else as a separate CON response (RFC 7252 §5.2).
    ///
    /// # Errors
    /// [`SendError::UnknownRequest`] if already answered or forgotten; encoding errors.
    pub fn respond(
        &mut self,
        now: u64,
        to: &Responder,
        code: Code,
        options: Options<'_>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.respond_with(now, to, code, options, &[], payload)
    }

    /// Accept an observation request (`observe == Some(0)`) of `resource`: register the
    /// observer and answer with an Observe sequence number (RFC 7641 §4.1).
    ///
    /// # Errors
    /// [`SendError::ObserverTableFull`] (then answer with a plain [`Endpoint::respond`]).
    pub fn respond_observe(
        &mut self,
        now: u64,
        to: &Responder,
        resource: u16,
        code: Code,
        options: Options<'_>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.observers
            .register(Observer {
                resource,
                token: to.token,
                confirmable: to.con,
            })
            .map_err(|_| SendError::ObserverTableFull)?;
        let seq = self.observers.next_seq();
        let r = self.respond_with(
            now,
            to,
            code,
            options,
            &[Opt::uint(opt::OBSERVE, seq)],
            payload,
        );
        if r.is_err() {
            self.observers.deregister(&to.token);
        }
        r
    }

    fn respond_with(
        &mut self,
        now: u64,
        to: &Responder,
        code: Code,
        options: Options<'_>,
        extra: &[Opt<'_>],
        payload: &[u8],
    ) -> Result<(), SendError> {
        let d = self
            .dedup
            .iter()
            .position(|d| {
                d.mid == to.mid
                    && d.token == to.token
                    && matches!(
                        d.state,
                        DState::Pending { .. } | DState::EmptyAcked | DState::NonSeen
                    )
            })
            .ok_or(SendError::UnknownRequest)?;
        let opts = merge(options, &[opt::OBSERVE], extra);
        match self.dedup[d].state {
            DState::Pending { .. } => {
                let e = &mut self.dedup[d];
                let n = emit_to::<B, MTU>(&mut e.buf, |out| {
                    msg::emit_message(MsgType::Ack, code, to.mid, &to.token, opts, payload, out)
                })?;
                e.len = n as u16;
                e.state = DState::Responded;
                e.tx = true;
                Ok(())
            }
            st => {
                let con = st == DState::EmptyAcked;
                self.queue_out(now, Kind::Response, con, to.token, code, opts, payload)?;
                self.dedup[d].state = if con {
                    DState::SeparateSent
                } else {
                    DState::NonSeen
                };
                if !con {
                    // A NON request is answered once; further duplicates are dropped.
                    self.dedup[d].token = Token::EMPTY;
                }
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_out<'a>(
        &mut self,
        now: u64,
        kind: Kind,
        con: bool,
        token: Token,
        code: Code,
        opts: msg::Merge<'a, '_>,
        payload: &[u8],
    ) -> Result<usize, SendError> {
        let i = self.free_slot().ok_or(SendError::NoSlot)?;
        let mtype = if con { MsgType::Con } else { MsgType::Non };
        let n = emit_to::<B, MTU>(&mut self.slots[i].buf, |out| {
            msg::emit_message(mtype, code, 0, &token, opts, payload, out)
        })?;
        let order = self.next_order;
        self.next_order = self.next_order.wrapping_add(1);
        let s = &mut self.slots[i];
        s.state = SlotState::Queued;
        s.kind = kind;
        s.con = con;
        s.due = false;
        s.prev_mid = None;
        s.token = token;
        s.order = order;
        s.retransmits = 0;
        s.deadline = now.saturating_add(self.cfg.params.exchange_lifetime());
        s.len = n as u16;
        Ok(i)
    }

    /// Send a notification of `resource` to each of its observers, with a new sequence number
    /// (RFC 7641 §4.2). A notification still unacknowledged for an observer is replaced in
    /// place, keeping its retransmission timer (§4.5.2): on a slow link only the newest state
    /// travels. Returns how many observers were notified.
    ///
    /// # Errors
    /// [`SendError::NoSlot`] when some observer could not be notified; encoding errors.
    pub fn notify(
        &mut self,
        now: u64,
        resource: u16,
        confirmable: bool,
        code: Code,
        options: Options<'_>,
        payload: &[u8],
    ) -> Result<usize, SendError> {
        let tokens: heapless::Vec<Token, OBS> =
            self.observers.of(resource).map(|o| o.token).collect();
        if tokens.is_empty() {
            return Ok(0);
        }
        let seq = self.observers.next_seq();
        let extra = [Opt::uint(opt::OBSERVE, seq)];
        let mut sent = 0;
        let mut err = None;
        for t in tokens {
            let opts = merge(options, &[opt::OBSERVE], &extra);
            let busy = self.slots.iter().position(|s| {
                s.state != SlotState::Free
                    && s.kind == (Kind::Notification { resource })
                    && s.token == t
                    && s.con
            });
            if let (Some(i), true) = (busy, confirmable) {
                let mid = self.alloc_mid();
                let s = &mut self.slots[i];
                match emit_to::<B, MTU>(&mut s.buf, |out| {
                    msg::emit_message(MsgType::Con, code, mid, &t, opts, payload, out)
                }) {
                    Ok(n) => {
                        s.len = n as u16;
                        if s.state == SlotState::Sent {
                            s.prev_mid = Some(s.mid);
                            s.mid = mid;
                        }
                        sent += 1;
                    }
                    Err(e) => err = Some(e),
                }
                continue;
            }
            match self.queue_out(
                now,
                Kind::Notification { resource },
                confirmable,
                t,
                code,
                opts,
                payload,
            ) {
                Ok(_) => sent += 1,
                Err(e) => err = Some(e),
            }
        }
        match err {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }

    /// Whether a notification of `resource` is queued or awaiting its acknowledgement: a
    /// server that sends deltas (lowband's device profile) sends the next one only after the
    /// previous was acknowledged, so [`Endpoint::notify`] never replaces one in place.
    pub fn notification_in_flight(&self, resource: u16) -> bool {
        self.slots.iter().any(|s| {
            s.state != SlotState::Free
                && !matches!(s.state, SlotState::Failed(_))
                && s.kind == (Kind::Notification { resource })
        })
    }

    /// Forgets every observer of `resource` (a client that registers again with a new token
    /// replaces its old registration; RFC 7641 §4.1 only matches by token).
    pub fn drop_observers(&mut self, resource: u16) {
        let tokens: heapless::Vec<Token, OBS> =
            self.observers.of(resource).map(|o| o.token).collect();
        for t in tokens {
            self.observers.deregister(&t);
        }
    }

    /// Whether any resource has an observer (its state must then stay live).
    pub fn has_observers(&self) -> bool {
        self.observers.iter().next().is_some()
    }

    /// Answer an observation request with sequence number `seq` without entering the
    /// observer table: for an application that keeps its observations itself (in state that
    /// outlives this endpoint) and notifies with [`Endpoint::notify_token`] (RFC 7641 §4.1).
    ///
    /// # Errors
    /// As [`Endpoint::respond`].
    pub fn respond_observe_seq(
        &mut self,
        now: u64,
        to: &Responder,
        seq: u32,
        code: Code,
        options: Options<'_>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let extra = [Opt::uint(opt::OBSERVE, seq & 0xff_ffff)];
        self.respond_with(now, to, code, options, &extra, payload)
    }

    /// Send one confirmable notification on an observation the application tracks itself
    /// (see [`Endpoint::respond_observe_seq`]), with its sequence number `seq` (RFC 7641
    /// §4.2). One at a time per token: see [`Endpoint::notification_pending`]. If it is reset
    /// or never acknowledged, [`Event::ObserverGone`] with resource [`UNTRACKED`] reports it.
    ///
    /// # Errors
    /// [`SendError::NoSlot`] (also while a notification on `token` is pending); encoding
    /// errors.
    pub fn notify_token(
        &mut self,
        now: u64,
        token: Token,
        seq: u32,
        code: Code,
        options: Options<'_>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if self.notification_pending(&token) {
            return Err(SendError::NoSlot);
        }
        let extra = [Opt::uint(opt::OBSERVE, seq & 0xff_ffff)];
        let opts = merge(options, &[opt::OBSERVE], &extra);
        let kind = Kind::Notification {
            resource: UNTRACKED,
        };
        self.queue_out(now, kind, true, token, code, opts, payload)
            .map(|_| ())
    }

    /// Whether a notification on `token` waits to be sent or acknowledged.
    pub fn notification_pending(&self, token: &Token) -> bool {
        self.slots.iter().any(|s| {
            s.state != SlotState::Free
                && matches!(s.kind, Kind::Notification { .. })
                && s.token == *token
        })
    }

    /// Notification traffic since the last call (transmissions and the ACKs that matched
    /// them), for accounting; resets the counter.
    pub fn take_push_traffic(&mut self) -> PushTraffic {
        core::mem::replace(&mut self.push_traffic, PushTraffic::ZERO)
    }

    fn observer_lost(&mut self, resource: u16, token: Token) {
        if self.observers.deregister(&token) || resource == UNTRACKED {
            self.push_event(Event::ObserverGone { resource, token });
        }
    }

    /// Number of observers of `resource`.
    pub fn observer_count(&self, resource: u16) -> usize {
        self.observers.of(resource).count()
    }

    fn queue_ctl(&mut self, t: MsgType, mid: u16) {
        if self.ctl.iter().any(|&(a, b)| a == t && b == mid) {
            return;
        }
        // A full queue drops the oldest control message: the peer retransmits.
        if self.ctl.is_full() {
            self.ctl.pop_front();
        }
        // INVARIANT: not full after pop.
        self.ctl.push_back((t, mid)).unwrap();
    }

    fn push_event(&mut self, e: Event) {
        if self.events.is_full() {
            // Only informational events queue here (request failures live in their slots):
            // the oldest is dropped.
            self.events.pop_front();
        }
        // INVARIANT: not full after pop.
        self.events.push_back(e).unwrap();
    }

    /// A dedup entry for a new message; `top` is the peer's newest request MID counting the
    /// new one, when the message is a request (then an entry far enough behind may be
    /// evicted under the floor, see "Duplicate detection" on [`Endpoint`]).
    fn alloc_dedup(&mut self, now: u64, top: Option<u16>) -> Option<usize> {
        if let Some(i) = self
            .dedup
            .iter()
            .position(|d| d.state == DState::Free || d.expires <= now)
        {
            return Some(i);
        }
        // Under pressure, forget first the oldest acknowledged response to us (its slot is
        // gone, so a late duplicate can never be re-delivered), then the oldest answered
        // request whose duplicate window has passed: no retransmission of it can still arrive
        // after MAX_TRANSMIT_SPAN + MAX_LATENCY from its first reception (the rest of
        // EXCHANGE_LIFETIME covers our ACK's journey, which is over by then too).
        let p = self.cfg.params;
        let window = p.max_transmit_span() + p.max_latency;
        let acked = self
            .dedup
            .iter()
            .enumerate()
            .filter(|(_, d)| d.state == DState::AckedResponse)
            .min_by_key(|(_, d)| d.expires)
            .map(|(i, _)| i);
        acked
            .or_else(|| {
                self.dedup
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        matches!(
                            d.state,
                            DState::Responded | DState::SeparateSent | DState::NonSeen
                        ) && d.since + window <= now
                    })
                    .min_by_key(|(_, d)| d.expires)
                    .map(|(i, _)| i)
            })
            .or_else(|| self.evict_behind(top?))
    }

    /// Rule 2: evicts the answered request entry furthest behind `top`, at least
    /// [`DEDUP_WINDOW`] behind it, and extends the floor over its MID. A cached response
    /// still waiting to be sent is kept until it went out.
    fn evict_behind(&mut self, top: u16) -> Option<usize> {
        let (i, _) = self
            .dedup
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                matches!(
                    d.state,
                    DState::Responded | DState::SeparateSent | DState::NonSeen
                ) && !d.tx
            })
            .map(|(i, d)| (i, top.wrapping_sub(d.mid)))
            .filter(|&(_, back)| (DEDUP_WINDOW..0x8000).contains(&back))
            .max_by_key(|&(_, back)| back)?;
        let (mid, expires) = (self.dedup[i].mid, self.dedup[i].expires);
        // The floor lies within 2^15 - 1 behind `top` (see `note_request`): compare by how far
        // behind `top` each MID is.
        let back = |x: u16| top.wrapping_sub(x);
        self.floor = Some(match self.floor {
            None => Floor {
                lo: mid,
                hi: mid,
                until: nonzero(expires),
            },
            Some(f) => Floor {
                lo: if back(mid) > back(f.lo) { mid } else { f.lo },
                hi: if back(mid) < back(f.hi) { mid } else { f.hi },
                until: f.until.max(nonzero(expires)),
            },
        });
        self.dedup[i].state = DState::Free;
        Some(i)
    }

    /// Takes note of a new request `mid` (not a duplicate) and returns the peer's newest
    /// request MID counting it. `top` moves forward (by less than 2^15); while there is no
    /// floor it also moves back to a request [`DEDUP_WINDOW`] or more behind it (a restarted
    /// peer, or a late request the peer gave up on: a lower `top` only makes rule 2 evict
    /// older entries). With a floor it never moves back, so that the floor stays within
    /// 2^15 - 1 behind `top`: it is cut there (a MID that comes round again after the peer's
    /// counter wrapped is new) and forgotten once wholly behind.
    fn note_request(&mut self, mid: u16) -> u16 {
        let top = match self.top {
            Some(t) if behind(t, mid) => mid,
            Some(t) if self.floor.is_some() || t.wrapping_sub(mid) < DEDUP_WINDOW => t,
            _ => mid,
        };
        self.top = Some(top);
        if let Some(f) = &mut self.floor {
            let min_lo = top.wrapping_sub(0x7fff);
            if behind(f.lo, min_lo) {
                if behind(f.hi, min_lo) {
                    self.floor = None;
                } else {
                    f.lo = min_lo;
                }
            }
        }
        top
    }

    /// Whether request `mid` is an old duplicate under the floor (forgotten once expired).
    fn under_floor(&mut self, now: u64, mid: u16) -> bool {
        match self.floor {
            Some(f) if now >= f.until.get() => {
                self.floor = None;
                false
            }
            Some(f) => within(mid, f.lo, f.hi),
            None => false,
        }
    }

    /// Feed one received datagram. Returns a new request or a response for the application;
    /// duplicates, ACKs, RSTs and bad messages are handled inside (RFC 7252 §4.2, §4.3:
    /// a CON with a format error is answered with RST, anything else bad is ignored; §5.4.1:
    /// unknown critical options in a CON request get 4.02 Bad Option).
    pub fn handle_datagram<'a>(&mut self, now: u64, data: &'a [u8]) -> Option<Received<'a>> {
        self.handle_timeout(now);
        let r = match Repr::parse(data) {
            Ok(r) => r,
            Err(ParseError::BadVersion) | Err(ParseError::Truncated)
                if data.len() < 4 || data[0] >> 6 != 1 =>
            {
                return None
            }
            Err(_) => {
                if data[0] >> 6 == 1 && MsgType::from_bits(data[0] >> 4) == MsgType::Con {
                    self.queue_ctl(MsgType::Rst, u16::from_be_bytes([data[2], data[3]]));
                }
                return None;
            }
        };
        match r.mtype {
            MsgType::Rst => {
                if r.code.is_empty() {
                    self.on_rst(r.mid);
                }
                None
            }
            MsgType::Ack if r.code.is_empty() => {
                self.on_empty_ack(r.mid);
                None
            }
            MsgType::Ack if r.code.is_response() => self.on_response(now, r),
            MsgType::Ack => None,
            MsgType::Con | MsgType::Non if r.code.is_empty() => {
                // CoAP ping (RFC 7252 §4.3): answered with RST.
                if r.mtype == MsgType::Con {
                    self.queue_ctl(MsgType::Rst, r.mid);
                }
                None
            }
            MsgType::Con | MsgType::Non if r.code.is_request() => self.on_request(now, r),
            MsgType::Con | MsgType::Non if r.code.is_response() => self.on_response(now, r),
            MsgType::Con => {
                self.queue_ctl(MsgType::Rst, r.mid);
                None
            }
            MsgType::Non => None,
        }
    }

    fn on_request<'a>(&mut self, now: u64, r: Repr<'a>) -> Option<Received<'a>> {
        let con = r.mtype == MsgType::Con;
        if let Some(d) = self
            .dedup
            .iter()
            .position(|d| d.is_request() && d.mid == r.mid && d.expires > now)
        {
            self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
            if con {
                match self.dedup[d].state {
                    DState::Responded => self.dedup[d].tx = true,
                    DState::EmptyAcked | DState::SeparateSent => {
                        self.queue_ctl(MsgType::Ack, r.mid)
                    }
                    _ => {}
                }
            }
            return None;
        }
        if self.under_floor(now, r.mid) {
            // An old duplicate whose entry was evicted (rule 2): the peer is done with it.
            self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
            return None;
        }
        let top = self.note_request(r.mid);
        if unknown_critical(&self.cfg, &r.options) {
            if con {
                if let Some(d) = self.alloc_dedup(now, Some(top)) {
                    let e = &mut self.dedup[d];
                    let n = emit_to::<B, MTU>(&mut e.buf, |out| {
                        Repr {
                            mtype: MsgType::Ack,
                            code: Code::BAD_OPTION,
                            mid: r.mid,
                            token: r.token,
                            options: Options::NONE,
                            payload: &[],
                        }
                        .emit(out)
                    })
                    .ok()?;
                    e.len = n as u16;
                    e.state = DState::Responded;
                    e.mid = r.mid;
                    e.since = now;
                    e.token = r.token;
                    e.expires = now + self.cfg.params.exchange_lifetime();
                    e.tx = true;
                }
            }
            return None;
        }
        // Without room to remember the request it must not be delivered: it could be delivered
        // twice. Dropping it makes the peer retransmit later.
        let d = self.alloc_dedup(now, Some(top))?;
        let p = self.cfg.params;
        let e = &mut self.dedup[d];
        e.mid = r.mid;
        e.token = r.token;
        e.since = now;
        e.tx = false;
        if con {
            e.state = DState::Pending {
                ack_at: now + p.piggyback_wait,
            };
            e.expires = now + p.exchange_lifetime();
        } else {
            e.state = DState::NonSeen;
            e.expires = now + p.non_lifetime();
        }
        let observe = if matches!(r.code, Code::GET | Code::FETCH) {
            r.options.uint(opt::OBSERVE)
        } else {
            None
        };
        if observe != Some(REGISTER)
            && self.observers.get(&r.token).is_some()
            && (observe == Some(DEREGISTER) || r.code == Code::GET)
        {
            self.observers.deregister(&r.token);
        }
        Some(Received::Request(IncomingRequest {
            responder: Responder {
                mid: r.mid,
                token: r.token,
                con,
            },
            code: r.code,
            options: r.options,
            payload: r.payload,
            observe,
        }))
    }

    fn on_response<'a>(&mut self, now: u64, r: Repr<'a>) -> Option<Received<'a>> {
        let con = r.mtype == MsgType::Con;
        let idx = if r.mtype == MsgType::Ack {
            self.slots.iter().position(|s| {
                s.state == SlotState::Sent
                    && (s.mid == r.mid || s.prev_mid == Some(r.mid))
                    && s.token == r.token
                    && matches!(s.kind, Kind::Request { .. })
            })?
        } else {
            if con
                && self
                    .dedup
                    .iter()
                    .any(|d| d.state == DState::AckedResponse && d.mid == r.mid && d.expires > now)
            {
                self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
                self.queue_ctl(MsgType::Ack, r.mid);
                return None;
            }
            let found = self.slots.iter().position(|s| {
                s.token == r.token
                    && matches!(s.kind, Kind::Request { .. })
                    && matches!(
                        s.state,
                        SlotState::Sent | SlotState::AwaitResponse | SlotState::Observing
                    )
            });
            match found {
                Some(i) => i,
                None => {
                    if con || r.options.first(opt::OBSERVE).is_some() {
                        self.queue_ctl(MsgType::Rst, r.mid);
                    }
                    return None;
                }
            }
        };
        if unknown_critical(&self.cfg, &r.options) {
            // RFC 7252 §5.4.1: reject (RST for CON, ignore otherwise); the request fails.
            if con {
                self.queue_ctl(MsgType::Rst, r.mid);
            }
            if matches!(self.slots[idx].kind, Kind::Request { .. })
                && self.slots[idx].state != SlotState::Observing
            {
                self.slots[idx].state = SlotState::Failed(RequestError::BadResponse);
            }
            return None;
        }
        if con {
            self.queue_ctl(MsgType::Ack, r.mid);
            if let Some(d) = self.alloc_dedup(now, None) {
                let e = &mut self.dedup[d];
                e.state = DState::AckedResponse;
                e.mid = r.mid;
                e.since = now;
                e.token = r.token;
                e.tx = false;
                e.expires = now + self.cfg.params.exchange_lifetime();
            }
        }
        let s = &mut self.slots[idx];
        let Kind::Request {
            handle,
            observe: wants_observe,
        } = s.kind
        else {
            return None;
        };
        let observe = r.options.uint(opt::OBSERVE);
        let mut last = true;
        if let (true, Some(seq), true) = (
            wants_observe,
            observe,
            r.code.is_response() && r.code.class() == 2,
        ) {
            if !s.fresh.accept(seq, now) {
                return None;
            }
            s.state = SlotState::Observing;
            s.deadline = u64::MAX;
            last = false;
        } else if s.state == SlotState::Observing && r.mtype == MsgType::Ack {
            return None;
        }
        if last {
            s.state = SlotState::Free;
        }
        Some(Received::Response(IncomingResponse {
            handle: RequestHandle(handle),
            code: r.code,
            options: r.options,
            payload: r.payload,
            observe,
            last,
        }))
    }

    fn on_empty_ack(&mut self, mid: u16) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::Sent && (s.mid == mid || s.prev_mid == Some(mid)))
        else {
            return;
        };
        let s = &mut self.slots[i];
        s.due = false;
        if matches!(s.kind, Kind::Notification { .. }) {
            self.push_traffic.add(4);
        }
        match s.kind {
            Kind::Request { .. } => s.state = SlotState::AwaitResponse,
            Kind::Response | Kind::Notification { .. } => s.state = SlotState::Free,
        }
    }

    fn on_rst(&mut self, mid: u16) {
        let Some(i) = self.slots.iter().position(|s| {
            matches!(s.state, SlotState::Sent | SlotState::AwaitResponse)
                && (s.mid == mid || s.prev_mid == Some(mid))
        }) else {
            return;
        };
        let s = &mut self.slots[i];
        s.state = SlotState::Free;
        let (kind, token) = (s.kind, s.token);
        match kind {
            Kind::Request { .. } => self.slots[i].state = SlotState::Failed(RequestError::Reset),
            Kind::Notification { resource } => self.observer_lost(resource, token),
            Kind::Response => {}
        }
    }

    /// Let time pass: retransmissions become due, requests past their deadline or out of
    /// retransmissions fail, held-back ACKs go out empty. Called by `poll_transmit` and
    /// `handle_datagram` too, so calling it separately is needed only to surface events.
    pub fn handle_timeout(&mut self, now: u64) {
        let max_rt = self.cfg.params.max_retransmit;
        for i in 0..SLOTS {
            let s = &mut self.slots[i];
            if matches!(s.state, SlotState::Free | SlotState::Failed(_)) {
                continue;
            }
            let kind = s.kind;
            let token = s.token;
            if now >= s.deadline && s.state != SlotState::Observing {
                s.state = SlotState::Free;
                match kind {
                    Kind::Request { .. } => {
                        self.slots[i].state = SlotState::Failed(RequestError::Deadline)
                    }
                    Kind::Response => self.push_event(Event::ResponseLost { token }),
                    Kind::Notification { resource } => self.observer_lost(resource, token),
                }
                continue;
            }
            if s.state == SlotState::AwaitResponse && !s.con && now >= s.next {
                // a NON request stops counting against NSTART after one ACK_TIMEOUT
                s.next = u64::MAX;
            }
            if s.state == SlotState::Sent && now >= s.next {
                if s.retransmits < max_rt {
                    s.retransmits += 1;
                    if s.retransmits <= self.cfg.params.backoff_limit {
                        s.interval *= 2;
                    }
                    s.next = now + s.interval;
                    s.due = true;
                } else {
                    s.state = SlotState::Free;
                    match kind {
                        Kind::Request { .. } => {
                            self.slots[i].state = SlotState::Failed(RequestError::Timeout)
                        }
                        Kind::Response => self.push_event(Event::ResponseLost { token }),
                        Kind::Notification { resource } => {
                            // RFC 7641 §4.5: an unacknowledged CON notification ends the observation.
                            self.observer_lost(resource, token)
                        }
                    }
                }
            }
        }
        for i in 0..DEDUP {
            match self.dedup[i].state {
                DState::Pending { ack_at } if now >= ack_at => {
                    self.dedup[i].state = DState::EmptyAcked;
                    let mid = self.dedup[i].mid;
                    self.queue_ctl(MsgType::Ack, mid);
                }
                DState::Free => {}
                _ if now >= self.dedup[i].expires => {
                    self.dedup[i].state = DState::Free;
                }
                _ => {}
            }
        }
    }

    /// The next datagram to send, written to `out` (which should hold `MTU` bytes); `None`
    /// when nothing is due. Call repeatedly until `None`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<usize> {
        self.handle_timeout(now);
        if let Some(&(t, mid)) = self.ctl.front() {
            if let Ok(n) = Repr::empty(t, mid).emit(out) {
                self.ctl.pop_front();
                return Some(n);
            }
        }
        for d in self.dedup.iter_mut() {
            if d.tx && d.state == DState::Responded && out.len() >= d.len as usize {
                d.tx = false;
                let n = d.len as usize;
                out[..n].copy_from_slice(d.buf.bytes().get(..n)?);
                return Some(n);
            }
        }
        for s in self.slots.iter_mut() {
            if s.due && s.state == SlotState::Sent && out.len() >= s.len as usize {
                s.due = false;
                let n = s.len as usize;
                out[..n].copy_from_slice(s.buf.bytes().get(..n)?);
                self.stats.retransmissions = self.stats.retransmissions.wrapping_add(1);
                if matches!(s.kind, Kind::Notification { .. }) {
                    self.push_traffic.add(n);
                }
                return Some(n);
            }
        }
        let room = self.request_room();
        let pick = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.state == SlotState::Queued && (room || !matches!(s.kind, Kind::Request { .. }))
            })
            .min_by_key(|(_, s)| s.order)
            .map(|(i, _)| i)?;
        let mid = self.alloc_mid();
        let interval = self.initial_interval();
        let s = &mut self.slots[pick];
        let n = s.len as usize;
        if out.len() < n {
            return None;
        }
        s.mid = mid;
        if let Some(m) = s.buf.bytes_mut().get_mut(2..4) {
            m.copy_from_slice(&mid.to_be_bytes());
        }
        if s.con {
            s.state = SlotState::Sent;
            s.retransmits = 0;
            s.interval = interval;
            s.next = now + interval;
        } else {
            match s.kind {
                Kind::Request { .. } => {
                    s.state = SlotState::AwaitResponse;
                    s.next = now + interval;
                }
                _ => s.state = SlotState::Free,
            }
        }
        out[..n].copy_from_slice(s.buf.bytes().get(..n)?);
        if matches!(s.kind, Kind::Notification { .. }) {
            self.push_traffic.add(n);
        }
        Some(n)
    }

    /// The next owned event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        let failed = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, SlotState::Failed(_)))
            .min_by_key(|(_, s)| s.order)
            .map(|(i, _)| i);
        if let Some(i) = failed {
            let s = &mut self.slots[i];
            if let (SlotState::Failed(error), Kind::Request { handle, .. }) = (s.state, s.kind) {
                s.state = SlotState::Free;
                return Some(Event::Failed {
                    handle: RequestHandle(handle),
                    error,
                });
            }
        }
        self.events.pop_front()
    }

    /// When to call [`Endpoint::poll_transmit`] / [`Endpoint::handle_timeout`] next (absolute
    /// ms). `Some(0)` means now: something is ready to send.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let room = self.request_room();
        if !self.ctl.is_empty()
            || self
                .dedup
                .iter()
                .any(|d| d.tx && d.state == DState::Responded)
            || self.slots.iter().any(|s| {
                (s.due && s.state == SlotState::Sent)
                    || (s.state == SlotState::Queued
                        && (room || !matches!(s.kind, Kind::Request { .. })))
            })
        {
            return Some(0);
        }
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        for s in &self.slots {
            match s.state {
                SlotState::Free | SlotState::Observing | SlotState::Failed(_) => {}
                SlotState::Sent => {
                    at(s.next);
                    at(s.deadline);
                }
                SlotState::AwaitResponse if !s.con && s.next != u64::MAX => {
                    at(s.next);
                    at(s.deadline);
                }
                _ => at(s.deadline),
            }
        }
        for d in &self.dedup {
            if let DState::Pending { ack_at } = d.state {
                at(ack_at);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ep = Endpoint<2, 2, 1, 64>;

    #[test]
    fn device_size() {
        // keep this figure in the report; the const assertion above bounds it
        let n = core::mem::size_of::<DeviceEndpoint>();
        assert!(n <= 2560, "{n}");
    }

    #[test]
    fn piggybacked_exchange_bytes() {
        let mut c = Ep::new(Config {
            seed: 7,
            token_len: 1,
            ..Config::default()
        });
        let mut s = Ep::new(Config {
            seed: 8,
            ..Config::default()
        });
        let path = [Opt::str(opt::URI_PATH, "temperature")];
        let h = c
            .request(0, Request::con(Code::GET, Options::List(&path), &[]))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = c.poll_transmit(0, &mut buf).unwrap();
        assert_eq!(n, 17);
        assert_eq!(&buf[5..17], b"\xbbtemperature");
        assert!(c.poll_transmit(0, &mut [0; 64]).is_none());
        let req = buf;
        let Some(Received::Request(r)) = s.handle_datagram(10, &req[..n]) else {
            panic!()
        };
        s.respond(10, &r.responder, Code::CONTENT, Options::NONE, b"22.5 C")
            .unwrap();
        let mut out = [0u8; 64];
        let m = s.poll_transmit(10, &mut out).unwrap();
        assert_eq!(out[0], 0x61);
        assert_eq!(out[1], 0x45);
        assert_eq!(&out[2..4], &req[2..4]);
        assert_eq!(m, 12);
        let Some(Received::Response(resp)) = c.handle_datagram(20, &out[..m]) else {
            panic!()
        };
        assert_eq!(resp.handle, h);
        assert_eq!(resp.payload, b"22.5 C");
        assert!(resp.last);
        // duplicate request: cached response, not re-delivered
        assert!(s.handle_datagram(30, &req[..n]).is_none());
        let m2 = s.poll_transmit(30, &mut out).unwrap();
        assert_eq!(m2, 12);
        // duplicate response: ignored
        assert!(c.handle_datagram(40, &out[..m2]).is_none());
    }

    #[test]
    fn retransmissions_and_duplicates_are_counted() {
        let cfg = Config {
            seed: 3,
            token_len: 1,
            ..Config::default()
        };
        let mut c = Ep::new(cfg);
        let mut s = Ep::new(Config { seed: 4, ..cfg });
        c.request(0, Request::con(Code::GET, Options::NONE, &[]))
            .unwrap();
        let mut first = [0u8; 64];
        let n = c.poll_transmit(0, &mut first).unwrap();
        // The first transmission is lost; nothing is retransmitted before the timeout.
        assert_eq!(c.stats().retransmissions, 0);
        let mut buf = [0u8; 64];
        assert!(c.poll_transmit(1_999, &mut buf).is_none());
        // ACK_TIMEOUT × ACK_RANDOM_FACTOR is the latest the first retransmission is due.
        let t = c.poll_timeout().unwrap();
        assert!((2_000..=3_000).contains(&t), "{t}");
        let m = c.poll_transmit(t, &mut buf).unwrap();
        assert_eq!(&buf[..m], &first[..n]);
        assert_eq!(c.stats().retransmissions, 1);
        // Delivered once; answered piggybacked.
        let Some(Received::Request(r)) = s.handle_datagram(t + 1, &buf[..m]) else {
            panic!()
        };
        s.respond(t + 1, &r.responder, Code::CONTENT, Options::NONE, b"1")
            .unwrap();
        let mut ack = [0u8; 64];
        let k = s.poll_transmit(t + 1, &mut ack).unwrap();
        // The late first transmission arrives: a duplicate, answered from the cache.
        assert!(s.handle_datagram(t + 2, &first[..n]).is_none());
        assert_eq!(s.stats().duplicates, 1);
        assert_eq!(s.stats().retransmissions, 0);
        let mut again = [0u8; 64];
        let k2 = s.poll_transmit(t + 2, &mut again).unwrap();
        assert_eq!(&again[..k2], &ack[..k]);
        assert!(matches!(
            c.handle_datagram(t + 3, &ack[..k]),
            Some(Received::Response(_))
        ));
        // Acknowledged: no further retransmission, the count stays.
        assert!(c.poll_transmit(t + 60_000, &mut buf).is_none());
        assert_eq!(c.stats().retransmissions, 1);
    }

    /// A buffer on the heap, as long as its message (what a gateway uses).
    #[derive(Debug)]
    struct Heap(alloc::vec::Vec<u8>);

    impl MsgBuf for Heap {
        fn empty() -> Self {
            Heap(alloc::vec::Vec::new())
        }
        fn store(&mut self, msg: &[u8]) -> bool {
            self.0.clear();
            self.0.extend_from_slice(msg);
            true
        }
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }

    #[test]
    fn message_storage_does_not_change_the_bytes() {
        let cfg = Config {
            seed: 9,
            token_len: 1,
            ..Config::default()
        };
        let mut inline = Ep::new(cfg);
        let mut heap = Endpoint::<2, 2, 1, 64, Heap>::new(cfg);
        let path = [Opt::str(opt::URI_PATH, "t")];
        let req = Request::con(Code::GET, Options::List(&path), b"abc");
        inline.request(0, req).unwrap();
        heap.request(0, req).unwrap();
        assert!(
            heap.slots[0].buf.0.len() < 16,
            "{}",
            heap.slots[0].buf.0.len()
        );
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        let n = inline.poll_transmit(0, &mut a).unwrap();
        assert_eq!(heap.poll_transmit(0, &mut b), Some(n));
        assert_eq!(a[..n], b[..n]);
        // Retransmitted from storage, message id patched in place: the same bytes again.
        let t = inline.poll_timeout().unwrap();
        assert_eq!(heap.poll_timeout(), Some(t));
        assert_eq!(inline.poll_transmit(t, &mut a), Some(n));
        assert_eq!(heap.poll_transmit(t, &mut b), Some(n));
        assert_eq!(a[..n], b[..n]);
        // A buffer smaller than the message refuses it.
        let mut small = Endpoint::<2, 2, 1, 64, [u8; 8]>::new(cfg);
        assert_eq!(small.request(0, req), Err(SendError::TooBig));
    }

    type Srv = Endpoint<2, 8, 1, 64>;

    /// CON POST, 1-byte token, payload `[tag]`.
    fn post(mid: u16, tag: u8) -> [u8; 7] {
        let m = mid.to_be_bytes();
        [0x41, 0x02, m[0], m[1], tag, 0xff, tag]
    }

    /// Feeds `req`; if delivered, answers piggybacked with its payload; returns whether it
    /// was delivered and what went out.
    fn serve(s: &mut Srv, now: u64, req: &[u8]) -> (bool, alloc::vec::Vec<alloc::vec::Vec<u8>>) {
        let delivered = match s.handle_datagram(now, req) {
            Some(Received::Request(r)) => {
                let p = [r.payload[0]];
                s.respond(now, &r.responder, Code::CHANGED, Options::NONE, &p)
                    .unwrap();
                true
            }
            _ => false,
        };
        let mut out = alloc::vec::Vec::new();
        let mut buf = [0u8; 64];
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            out.push(buf[..n].to_vec());
        }
        (delivered, out)
    }

    #[test]
    fn full_table_evicts_under_a_floor_and_drops_late_duplicates() {
        let p = TransmissionParams::for_link(100, 64, 0);
        let mut s = Srv::new(Config {
            params: p,
            ..Config::default()
        });
        // 8 requests fill the table; the 9th is DEDUP_WINDOW ahead of the first: evicted.
        for i in 0..9u16 {
            let (d, out) = serve(&mut s, u64::from(i), &post(0x1000 + i, i as u8));
            assert!(d, "request {i} delivered");
            let m = (0x1000 + i).to_be_bytes();
            assert_eq!(out, [[0x61, 0x44, m[0], m[1], i as u8, 0xff, i as u8]]);
        }
        assert_eq!(s.stats().duplicates, 0);
        // A delayed copy of the evicted first request: dropped, not answered.
        let (d, out) = serve(&mut s, 100, &post(0x1000, 0));
        assert!(!d && out.is_empty());
        assert_eq!(s.stats().duplicates, 1);
        // A copy of the second, still remembered: answered from the cache.
        let (d, out) = serve(&mut s, 101, &post(0x1001, 1));
        assert!(!d);
        assert_eq!(out, [[0x61, 0x44, 0x10, 0x01, 1, 0xff, 1]]);
        // 90 more within one lifetime: each delivered once, and every older one dropped.
        for i in 9..99u16 {
            let t = 200 + u64::from(i);
            assert!(serve(&mut s, t, &post(0x1000 + i, i as u8)).0, "{i}");
            assert!(!serve(&mut s, t, &post(0x1000 + i - 8, 0)).0, "{i} - 8");
            assert!(!serve(&mut s, t, &post(0x1000 + i, i as u8)).0, "{i} again");
        }
        // The floor lasts no longer than the entries it replaced: after a lifetime, MID 0x1000
        // is a new message (RFC 7252 §4.5).
        let later = 400 + p.exchange_lifetime();
        assert!(serve(&mut s, later, &post(0x1000, 9)).0);
    }

    #[test]
    fn unanswered_requests_are_never_evicted() {
        let mut s = Srv::new(Config::default());
        let mut pending = alloc::vec::Vec::new();
        for i in 0..8u16 {
            let req = post(i, 0);
            let Some(Received::Request(r)) = s.handle_datagram(0, &req) else {
                panic!("{i}")
            };
            pending.push(r.responder);
        }
        // The application owes all eight answers: the ninth cannot take a place.
        assert!(s.handle_datagram(0, &post(8, 0)).is_none());
        // Once the oldest is answered and its answer went out, it may go, and its MID falls
        // under the floor.
        s.respond(0, &pending[0], Code::CHANGED, Options::NONE, &[])
            .unwrap();
        assert!(
            s.handle_datagram(0, &post(8, 0)).is_none(),
            "answer not sent yet"
        );
        let mut buf = [0u8; 64];
        assert_eq!(s.poll_transmit(0, &mut buf), Some(5));
        assert_eq!(buf[..5], [0x61, 0x44, 0, 0, 0]);
        assert!(matches!(
            s.handle_datagram(1, &post(8, 0)),
            Some(Received::Request(_))
        ));
        for r in &pending[1..] {
            s.respond(1, r, Code::CHANGED, Options::NONE, &[]).unwrap();
        }
        assert!(s.handle_datagram(2, &post(0, 0)).is_none());
    }

    #[test]
    fn the_client_keeps_its_requests_within_the_window() {
        let p = TransmissionParams {
            nstart: 16,
            ..TransmissionParams::default()
        };
        let mut c: Endpoint<12, 2, 1, 64> = Endpoint::new(Config {
            params: p,
            seed: 5,
            token_len: 1,
            ..Config::default()
        });
        for _ in 0..10 {
            c.request(0, Request::con(Code::GET, Options::NONE, &[]))
                .unwrap();
        }
        let mut buf = [0u8; 64];
        let mut mids = alloc::vec::Vec::new();
        while let Some(n) = c.poll_transmit(0, &mut buf) {
            assert_eq!(n, 5);
            mids.push(u16::from_be_bytes([buf[2], buf[3]]));
        }
        assert_eq!(mids.len(), usize::from(DEDUP_WINDOW), "NSTART 16, window 8");
        assert_eq!(c.poll_timeout().map(|t| t > 0), Some(true));
        // Acknowledging the second does not help: the first still holds the window.
        let [a, b] = mids[1].to_be_bytes();
        assert!(c.handle_datagram(1, &[0x60, 0, a, b]).is_none());
        assert!(c.poll_transmit(1, &mut buf).is_none());
        // Acknowledging the first lets one more out, with the next MID.
        let [a, b] = mids[0].to_be_bytes();
        assert!(c.handle_datagram(2, &[0x60, 0, a, b]).is_none());
        assert_eq!(c.poll_timeout(), Some(0));
        // Acknowledging the first lets two more out: the third is now the oldest in flight.
        for k in 1..=2 {
            assert!(c.poll_transmit(2, &mut buf).is_some());
            assert_eq!(
                u16::from_be_bytes([buf[2], buf[3]]),
                mids[7].wrapping_add(k)
            );
        }
        assert!(c.poll_transmit(2, &mut buf).is_none());
    }

    #[test]
    fn the_floor_follows_the_peer_across_the_mid_wrap() {
        let mut s = Srv::new(Config::default());
        // 70 000 requests in 70 s (within one lifetime): the MID wraps, and every MID comes
        // round again once; each is delivered once and its copy 8 behind is dropped.
        let start = 0xff00u16;
        for i in 0..70_000u32 {
            let mid = start.wrapping_add(i as u16);
            let t = u64::from(i);
            assert!(serve(&mut s, t, &post(mid, i as u8)).0, "{i}");
            if i >= 8 {
                assert!(!serve(&mut s, t, &post(mid.wrapping_sub(8), 0)).0, "{i}");
            }
        }
        assert_eq!(s.stats().duplicates, 70_000 - 8);
    }

    #[test]
    fn the_floor_survives_jumps_and_late_abandoned_requests() {
        let mut s = Srv::new(Config::default());
        let mut t = 0;
        let mut ok = |s: &mut Srv, mid: u16| {
            t += 1;
            serve(s, t, &post(mid, mid as u8)).0
        };
        for mid in 0..=8 {
            assert!(ok(&mut s, mid));
        }
        // The peer skips ahead by 0x7000 (requests lost on the way): all new, the old
        // duplicate still dropped.
        for mid in 0x7000..0x7010 {
            assert!(ok(&mut s, mid), "{mid:#x}");
        }
        assert!(!ok(&mut s, 0));
        // Requests the peer gave up on arrive late: inside the floor (10, never seen) they are
        // dropped like duplicates; from before it (0xfff0) they find no room (every entry is
        // within the window) and are dropped too; neither disturbs the floor.
        assert!(!ok(&mut s, 10));
        assert!(!ok(&mut s, 0xfff0));
        assert!(!ok(&mut s, 0x7000));
        assert!(!ok(&mut s, 1));
        assert!(ok(&mut s, 0x7010));
        // Another jump past half the space from the old floor: it is forgotten, never
        // stretched over the MIDs to come.
        for mid in 0xe000..0xe010 {
            assert!(ok(&mut s, mid), "{mid:#x}");
        }
        assert!(!ok(&mut s, 0x7009), "evicted at the second jump");
        assert!(!ok(&mut s, 0xe000));
        for mid in 0xe010..0xe100 {
            assert!(ok(&mut s, mid), "{mid:#x}");
        }
    }
}
