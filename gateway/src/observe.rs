//! Sync results pushed with Observe (RFC 7641) instead of polled over the link.
//!
//! Why: an unmodified client polls `/sync` again and again; on a 100 bit/s link every empty
//! poll is two packets (~46 bytes, ~4 s of airtime) of nothing. Instead, `serve` runs the
//! homeserver long-poll itself and pushes only results that carry something; the tunnel
//! answers the client's polls locally.
//!
//! # Link protocol
//!
//! ```text
//! feed       tunnel ─ GET, Observe: 0 ─────────────► serve        once per session
//!            tunnel ◄─ 2.05, Observe: 0 ──────────── serve        (sequence 0)
//! watch      tunnel ─ the client's sync, WATCH=[n] ─► serve        stream n: token + params
//!            tunnel ◄─ the answer, WATCH=[] ───────── serve        (absent: not watched)
//! push       tunnel ◄─ CON 2.05, Observe: s, SYNC=[n] + delta ─── serve   (s = last + 1)
//!                                   SYNC=[n, 0] + body in full
//!                                   SYNC=[n, 1]  stream n ended (the client asks the link)
//!            tunnel ─ ACK ─────────────────────────► serve
//! write      tunnel ◄─ a write's answer, SEQ=s ───── serve        pushes up to s queued
//! ```
//!
//! Costs, measured against Synapse (`gateway_bytes_per_operation`): the feed 2 × ~25 bytes
//! once per session; a one-message push ~131 bytes with its ACK (the sync that picks it up
//! then costs nothing); an empty sync nothing; a watch what a plain sync costs (once per
//! stream and [`LEASE_MS`]); [`SEQ`] 3 bytes on a write's answer while streams run.
//!
//! One observation per session (the *feed*) carries every stream, so a tunnel with many
//! clients costs one observer slot, and a stream's registration never races its own first
//! push at the CoAP layer: the feed is answered before any stream is watched, and a push
//! that overtakes its stream's answer waits in the tunnel until that answer arrives. A
//! stream is one client's incremental sync: its access token and its query without `since`
//! and `timeout`. Its answer is entry `k` of [`crate::syncstate`] on both ends, the stream's
//! *head*; every push is a delta against the head (reference + merge patch) and becomes the
//! new head, so a one-message push costs what a one-message sync answer costs.
//!
//! Serve long-polls the homeserver from the head (`timeout` [`CYCLE_MS`]); a result with
//! nothing in it ([`has_news`] false: only `next_batch` or nothing at all moved) is not pushed,
//! serve polls on from its `next_batch`. A result with news is pushed; the next poll starts
//! once the push is acknowledged (one push in flight per feed: the Observe sequence numbers
//! are consecutive and the tunnel drops everything on a gap).
//!
//! The tunnel answers a client's sync locally when its `since` is
//! - the `from` of a held push: that push's body (always right: it is what the homeserver
//!   answered from there);
//! - the head of a stream it trusts: with `timeout=0` at once with an empty answer
//!   (`next_batch` unchanged), else it waits up to the timeout for a push.
//!
//! Read-your-writes: after a write through the session (send, typing, receipt, ...), serve
//! probes every stream of the session (`timeout=0` from where it stands) before answering
//! the write, pushes what the probes found, and puts the sequence number of the last push
//! queued in the write's answer (option [`SEQ`]). Until the tunnel has every push up to
//! there, a sync at a stream's head waits (at most [`BARRIER_WAIT_MS`], then it goes over the
//! link): a message sent through the tunnel is in the next sync of every client behind it,
//! even when its push was lost once and is still being retransmitted.
//!
//! Anything else goes over the link, as a watch when possible. Trust is a lease: the tunnel
//! trusts a stream for [`LEASE_MS`] from sending its watch; serve ends it [`GRACE_MS`] later by
//! itself, so a serve that restarted or lost the feed silently is noticed within the lease
//! (the client's next sync after it goes over the link and watches again). The tunnel also
//! drops its streams on a new handshake, on a sequence gap, on a failed feed and when serve
//! lost its per-session state. Correctness first: an empty answer is given only for a head
//! serve still polls from, and a held push only for its own `from`, so the client never
//! misses an event nor sees one twice.
//! <https://www.rfc-editor.org/rfc/rfc7641>
use alloc::collections::VecDeque;
use alloc::sync::Arc;

use lowband_codec::coap::{RequestHandle, Token};
use serde_json::{Map, Value};

use crate::syncstate::{self, Entry};

/// The CoAP option of a watch request (elective, unassigned in RFC 7252's registry).
pub const WATCH: u16 = 34;
/// The CoAP option of a write's answer: the sequence number of the last push queued
/// (elective).
pub const SEQ: u16 = 36;
/// How long a sync waits for pushes a write announced before it goes over the link.
pub const BARRIER_WAIT_MS: u64 = 15_000;
/// How long the tunnel trusts a stream after sending its watch.
pub const LEASE_MS: u64 = 300_000;
/// How much longer serve keeps a stream than the tunnel trusts it.
pub const GRACE_MS: u64 = 60_000;
/// After a refused or failed feed registration, the next try waits this long.
pub const FEED_RETRY_MS: u64 = 600_000;
/// Serve's homeserver long-poll timeout.
pub const CYCLE_MS: u64 = 30_000;
/// Pushes held by the tunnel per stream; at this many the stream stops (the client catches up
/// through the held ones, then over the link).
pub const HELD: usize = 16;
/// Streams per session.
pub const STREAMS: usize = 8;
/// Largest push payload (one CoAP message; larger results end the stream instead).
pub const MAX_PUSH: usize = 1024;
/// Top-level keys of a sync answer that are state, not news, when unchanged.
const STABLE: [&str; 3] = [
    "device_one_time_keys_count",
    "device_unused_fallback_key_types",
    "org.matrix.msc2732.device_unused_fallback_key_types",
];

/// A client's sync request split up: `(params, since, timeout_ms)`; `None` when it cannot be
/// observed (not a sync, initial sync, `full_state=true`).
pub fn split_sync(method: &str, pq: &str) -> Option<(String, String, u64)> {
    if method != "GET" {
        return None;
    }
    let (path, q) = pq.split_once('?')?;
    if !path.ends_with("/sync") {
        return None;
    }
    let mut since = None;
    let mut timeout = 0;
    let mut rest = Vec::new();
    for item in q.split('&') {
        if let Some(s) = item.strip_prefix("since=") {
            since = Some(s.to_owned());
        } else if let Some(t) = item.strip_prefix("timeout=") {
            timeout = t.parse().ok()?;
        } else if item.starts_with("full_state=") && item != "full_state=false" {
            return None;
        } else {
            rest.push(item);
        }
    }
    let since = since.filter(|s| !s.is_empty())?;
    let params = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    Some((params, since, timeout))
}

/// The homeserver request of one cycle (`timeout_ms`: the long-poll's, or 0 for a probe).
pub fn cycle_query(params: &str, since: &str, timeout_ms: u64) -> String {
    let sep = if params.contains('?') { '&' } else { '?' };
    format!("{params}{sep}since={since}&timeout={timeout_ms}")
}

fn void(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(void),
        _ => false,
    }
}

/// Whether a sync answer carries anything beyond `head`'s state: a room, presence,
/// account data, to-device or device-list change, or changed key counts.
pub fn has_news(body: &Value, head: &Value) -> bool {
    let Value::Object(m) = body else {
        return true;
    };
    m.iter().any(|(k, v)| {
        if k == "next_batch" {
            false
        } else if STABLE.contains(&k.as_str()) {
            head.get(k) != Some(v)
        } else {
            !void(v)
        }
    })
}

/// The empty answer from `head`: `next_batch` = `since`, the stable fields of the head.
pub fn empty_answer(head: &Value, since: &str) -> Value {
    let mut m = Map::new();
    m.insert("next_batch".to_owned(), Value::String(since.to_owned()));
    for k in STABLE {
        if let Some(v) = head.get(k) {
            m.insert(k.to_owned(), v.clone());
        }
    }
    Value::Object(m)
}

/// What a push carries ([`syncstate::SYNC`] option of a feed notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// A delta against the stream's head.
    Delta,
    /// The body in full.
    Full,
    /// The stream ended.
    Ended,
}

impl PushKind {
    /// The SYNC option value for stream `n`.
    pub fn option(&self, n: u8) -> Vec<u8> {
        match self {
            PushKind::Delta => vec![n],
            PushKind::Full => vec![n, 0],
            PushKind::Ended => vec![n, 1],
        }
    }
    /// Parses a SYNC option value of a notification.
    pub fn parse(v: &[u8]) -> Option<(u8, PushKind)> {
        match *v {
            [n] => Some((n, PushKind::Delta)),
            [n, 0] => Some((n, PushKind::Full)),
            [n, 1] => Some((n, PushKind::Ended)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tunnel side.

/// The feed observation, tunnel side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Not registered (or lost).
    Down,
    /// Registration sent.
    Pending(RequestHandle),
    /// Established: the handle and the last sequence number.
    Up(RequestHandle, u32),
    /// Serve does not push; retry after this time.
    Refused(u64),
}

#[derive(Debug)]
struct Stream {
    n: u8,
    token: Option<String>,
    params: String,
    /// `None` while the watch is in flight.
    head: Option<Arc<Entry>>,
    /// Trusted until (while `up`).
    trust_until: u64,
    up: bool,
    /// The watch was sent at.
    sent_at: u64,
    /// Pushes that arrived before the watch's answer.
    early: Vec<(PushKind, Vec<u8>)>,
    /// Pushes held for the client: (from, body).
    held: VecDeque<(String, Arc<Vec<u8>>)>,
}

/// What to do with a client's sync ([`TunnelStreams::on_sync`]).
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Answer now with this JSON body.
    Answer(Vec<u8>),
    /// Wait for a push on stream `n` until `until` (ms); see
    /// [`TunnelStreams::check_waiter`].
    Wait {
        /// The stream.
        n: u8,
        /// The client's since.
        since: String,
        /// Deadline.
        until: u64,
    },
    /// Send over the link; with `Some(n)` as the watch of stream `n` (option [`WATCH`]).
    Forward(Option<u8>),
}

/// What to do with a waiting sync ([`TunnelStreams::check_waiter`]).
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Answer with this JSON body.
    Answer(Vec<u8>),
    /// Send it over the link.
    Forward,
    /// Keep waiting.
    Keep,
}

/// What a feed notification did ([`TunnelStreams::on_notification`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Stream `n` has a new head (waiters of it may have their answer).
    Stream(u8),
    /// Stream `n` ended (its waiters go over the link).
    Ended(u8),
    /// The feed broke (gap, undecodable, final answer): every stream ended.
    FeedLost,
    /// Nothing for anyone.
    Nothing,
}

/// The tunnel's pushed sync streams of one session.
///
/// Call protocol: [`TunnelStreams::on_sync`] for every client request (it decides whether the
/// request goes over the link); [`TunnelStreams::want_feed`] after it, and if true send the
/// feed registration (GET with Observe: 0) and report it with
/// [`TunnelStreams::feed_sent`], its answer with [`TunnelStreams::feed_answer`]; a watch's
/// answer with [`TunnelStreams::watch_answer`]; feed notifications with
/// [`TunnelStreams::on_notification`]; a write's [`SEQ`] with [`TunnelStreams::set_barrier`];
/// waiters with [`TunnelStreams::check_waiter`] after every push and barrier and at
/// [`TunnelStreams::waiter_wake`]; [`TunnelStreams::reset`] when serve may have lost its
/// state. No I/O, no clock.
#[derive(Debug)]
pub struct TunnelStreams {
    feed: Feed,
    streams: Vec<Stream>,
    next_n: u8,
    syncs_seen: bool,
    /// The last push a write's answer announced ([`SEQ`]).
    barrier: Option<u32>,
}

impl Default for TunnelStreams {
    fn default() -> Self {
        TunnelStreams {
            feed: Feed::Down,
            streams: Vec::new(),
            next_n: 0,
            syncs_seen: false,
            barrier: None,
        }
    }
}

/// Whether 24-bit sequence number `a` comes before `b` (RFC 7641 §3.4).
fn seq_before(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) & 0xff_ffff) < 1 << 23
}

impl TunnelStreams {
    /// A write's answer announced pushes up to `seq` ([`SEQ`]).
    pub fn set_barrier(&mut self, seq: u32) {
        if !matches!(self.feed, Feed::Up(..)) {
            return;
        }
        if self.barrier.is_none_or(|b| seq_before(b, seq)) {
            self.barrier = Some(seq & 0xff_ffff);
        }
    }

    /// Whether a push a write announced has not arrived yet.
    fn behind(&self) -> bool {
        match (self.feed, self.barrier) {
            (Feed::Up(_, seq), Some(b)) => seq_before(seq, b),
            _ => false,
        }
    }

    fn find(&self, token: Option<&str>, params: &str) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.token.as_deref() == token && s.params == params)
    }

    fn by_n(&mut self, n: u8) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.n == n)
    }

    /// Decides how to answer a client's request (`token`: its access token).
    pub fn on_sync(&mut self, now: u64, token: Option<&str>, method: &str, pq: &str) -> Decision {
        // A client of the client-server API will sync: the feed is registered early, so
        // that it is up by the client's first incremental sync.
        if pq.starts_with("/_matrix/client/")
            || pq.split('?').next().is_some_and(|p| p.ends_with("/sync"))
        {
            self.syncs_seen = true;
        }
        let Some((params, since, timeout)) = split_sync(method, pq) else {
            return Decision::Forward(None);
        };
        let behind = self.behind();
        if let Some(i) = self.find(token, &params) {
            let s = &mut self.streams[i];
            if let Some(j) = s.held.iter().position(|(from, _)| *from == since) {
                // The client moved past the older ones.
                s.held.drain(..j);
                return Decision::Answer(s.held[0].1.to_vec());
            }
            if let (true, Some(h)) = (s.up, &s.head) {
                if h.next_batch == since && now < s.trust_until {
                    if timeout == 0 && !behind {
                        s.held.clear();
                        return Decision::Answer(
                            empty_answer(&h.body, &since).to_string().into_bytes(),
                        );
                    }
                    if now + timeout <= s.trust_until {
                        s.held.clear();
                        return Decision::Wait {
                            n: s.n,
                            since,
                            until: now + timeout,
                        };
                    }
                }
            }
            if s.head.is_none() {
                // Its watch is in flight: this one goes plain.
                return Decision::Forward(None);
            }
            self.streams.remove(i);
        }
        if !matches!(self.feed, Feed::Up(..)) || self.streams.len() >= STREAMS {
            return Decision::Forward(None);
        }
        let n = (0..=255u8)
            .map(|i| self.next_n.wrapping_add(i))
            .find(|n| self.streams.iter().all(|s| s.n != *n));
        let Some(n) = n else {
            return Decision::Forward(None);
        };
        self.next_n = n.wrapping_add(1);
        self.streams.push(Stream {
            n,
            token: token.map(str::to_owned),
            params,
            head: None,
            trust_until: 0,
            up: false,
            sent_at: now,
            early: Vec::new(),
            held: VecDeque::new(),
        });
        Decision::Forward(Some(n))
    }

    /// Whether the feed should be registered now.
    pub fn want_feed(&self, now: u64) -> bool {
        self.syncs_seen
            && match self.feed {
                Feed::Down => true,
                Feed::Refused(t) => now >= t,
                _ => false,
            }
    }

    /// The feed registration went out as request `h`.
    pub fn feed_sent(&mut self, h: RequestHandle) {
        self.feed = Feed::Pending(h);
    }

    /// Whether `h` is the feed (registration or established).
    pub fn is_feed(&self, h: RequestHandle) -> bool {
        matches!(self.feed, Feed::Pending(x) | Feed::Up(x, _) if x == h)
    }

    /// Whether the feed is established.
    pub fn feed_is_up(&self) -> bool {
        matches!(self.feed, Feed::Up(..))
    }

    /// The feed's handle (registration sent or established).
    pub fn feed_handle(&self) -> Option<RequestHandle> {
        match self.feed {
            Feed::Up(h, _) | Feed::Pending(h) => Some(h),
            _ => None,
        }
    }

    /// The feed registration's answer: `observe` its sequence number (`None`: refused or
    /// failed; tried again after [`FEED_RETRY_MS`]).
    pub fn feed_answer(&mut self, now: u64, h: RequestHandle, observe: Option<u32>) {
        if self.feed != Feed::Pending(h) {
            return;
        }
        self.barrier = None;
        self.feed = match observe {
            Some(s) => Feed::Up(h, s),
            None => Feed::Refused(now + FEED_RETRY_MS),
        };
    }

    /// Everything serve held may be gone (new session, serve lost its state): streams end,
    /// the feed registers again. Held pushes stay (they are right answers). Returns the
    /// ended streams and the old feed's handle (to cancel).
    pub fn reset(&mut self) -> (Vec<u8>, Option<RequestHandle>) {
        let h = self.feed_handle();
        self.feed = Feed::Down;
        (self.end_all(), h)
    }

    fn end_all(&mut self) -> Vec<u8> {
        self.barrier = None;
        let ended: Vec<u8> = self.streams.iter().map(|s| s.n).collect();
        for s in &mut self.streams {
            s.up = false;
            s.early.clear();
        }
        self.streams.retain(|s| !s.held.is_empty());
        ended
    }

    /// A watch's answer arrived: `accepted` (option [`WATCH`] present, status 200) with the
    /// entry the answer was stored under (`None`: not stored). Returns what the early pushes
    /// did.
    pub fn watch_answer(&mut self, n: u8, accepted: bool, head: Option<Arc<Entry>>) -> Vec<Pushed> {
        let Some(s) = self.by_n(n) else {
            return Vec::new();
        };
        if s.head.is_some() {
            return Vec::new();
        }
        match (accepted, head) {
            (true, Some(h)) => {
                s.head = Some(h);
                s.up = true;
                s.trust_until = s.sent_at + LEASE_MS;
                let early = core::mem::take(&mut s.early);
                early
                    .into_iter()
                    .map(|(k, p)| self.apply(n, k, &p))
                    .collect()
            }
            _ => {
                self.streams.retain(|s| s.n != n);
                Vec::new()
            }
        }
    }

    /// The watch of stream `n` failed on the link.
    pub fn watch_failed(&mut self, n: u8) {
        self.streams.retain(|s| s.n != n || s.head.is_some());
    }

    /// A notification on the feed: `seq` its Observe value, `last` when it ended the
    /// observation, `sync` its SYNC option, `payload` the delta (kind Delta) or the JSON body
    /// (kind Full, already decoded from the wire).
    pub fn on_notification(
        &mut self,
        seq: Option<u32>,
        last: bool,
        sync: Option<&[u8]>,
        payload: &[u8],
    ) -> Pushed {
        let Feed::Up(h, prev) = self.feed else {
            return Pushed::Nothing;
        };
        let parsed = sync.and_then(PushKind::parse);
        match (last, seq, parsed) {
            (false, Some(s), Some((n, kind))) if s == (prev + 1) & 0xff_ffff => {
                self.feed = Feed::Up(h, s);
                match self.by_n(n) {
                    Some(st) if st.head.is_none() => {
                        st.early.push((kind, payload.to_vec()));
                        Pushed::Nothing
                    }
                    Some(_) => self.apply(n, kind, payload),
                    None => Pushed::Nothing,
                }
            }
            _ => {
                self.feed = Feed::Down;
                self.end_all();
                Pushed::FeedLost
            }
        }
    }

    fn apply(&mut self, n: u8, kind: PushKind, payload: &[u8]) -> Pushed {
        let Some(s) = self.by_n(n) else {
            return Pushed::Nothing;
        };
        let Some(head) = s.head.clone().filter(|_| s.up) else {
            return Pushed::Nothing;
        };
        let decoded = match kind {
            PushKind::Delta => syncstate::push_decode(&head, Some(payload), None),
            PushKind::Full => syncstate::push_decode(&head, None, Some(payload)),
            PushKind::Ended => None,
        };
        match decoded {
            Some((body, e)) => {
                s.held.push_back((
                    head.next_batch.clone(),
                    Arc::new(body.to_string().into_bytes()),
                ));
                s.head = Some(Arc::new(e));
                if s.held.len() >= HELD {
                    s.up = false;
                }
                Pushed::Stream(n)
            }
            None => {
                // Ended, or undecodable (never guessed): the client asks the link.
                s.up = false;
                Pushed::Ended(n)
            }
        }
    }

    /// The held push from `since` on stream `n`.
    fn held(&mut self, n: u8, since: &str) -> Option<Vec<u8>> {
        let s = self.by_n(n)?;
        let j = s.held.iter().position(|(from, _)| from == since)?;
        s.held.drain(..j);
        Some(s.held[0].1.to_vec())
    }

    /// Where a waiting sync stands (call after every push, barrier and at
    /// [`TunnelStreams::waiter_wake`]): `start` when it began waiting, `until` its own deadline.
    pub fn check_waiter(
        &mut self,
        now: u64,
        n: u8,
        since: &str,
        start: u64,
        until: u64,
    ) -> WaitOutcome {
        if let Some(b) = self.held(n, since) {
            return WaitOutcome::Answer(b);
        }
        let behind = self.behind();
        let Some(s) = self.by_n(n) else {
            return WaitOutcome::Forward;
        };
        let Some(h) = s.head.clone() else {
            return WaitOutcome::Forward;
        };
        if !(s.up && h.next_batch == since && now < s.trust_until) {
            return WaitOutcome::Forward;
        }
        if behind {
            if now >= until.max(start + BARRIER_WAIT_MS) {
                // An announced push does not come: the stream is not to be trusted.
                s.up = false;
                return WaitOutcome::Forward;
            }
            return WaitOutcome::Keep;
        }
        if now >= until {
            WaitOutcome::Answer(empty_answer(&h.body, since).to_string().into_bytes())
        } else {
            WaitOutcome::Keep
        }
    }

    /// When to check a waiter next.
    pub fn waiter_wake(&self, start: u64, until: u64) -> u64 {
        if self.behind() {
            until.max(start + BARRIER_WAIT_MS)
        } else {
            until
        }
    }

    /// Whether stream `n` is trusted at `now` (waiters of an untrusted stream go over the
    /// link).
    pub fn trusted(&self, now: u64, n: u8) -> bool {
        self.streams
            .iter()
            .any(|s| s.n == n && s.up && now < s.trust_until)
    }

    /// Streams established (for logs and tests).
    pub fn live(&self) -> usize {
        self.streams.iter().filter(|s| s.up).count()
    }
}

// ---------------------------------------------------------------------------------------
// Serve side.

/// One homeserver sync to run for a stream: `GET path_and_query` with `access`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The stream.
    pub n: u8,
    /// Its id (the result of a cycle that is no longer the stream's running one is dropped).
    pub id: u64,
    /// The since it polls from.
    pub since: String,
    /// The request target.
    pub path_and_query: String,
    /// The access token.
    pub access: Option<String>,
    /// A probe (`timeout=0`, after a write through this session) rather than the long-poll.
    pub probe: bool,
}

/// A notification to send on the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The stream.
    pub n: u8,
    /// What it carries.
    pub kind: PushKind,
    /// The delta or the JSON body (to be wire-encoded), empty when ended.
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct ServeStream {
    n: u8,
    access: Option<String>,
    params: String,
    head: Arc<Entry>,
    since: String,
    until: u64,
    /// The long-poll running, by id.
    running: Option<u64>,
    /// Notes of this stream queued or in flight.
    queued: usize,
}

/// The feed and streams of one peer, serve side.
///
/// Call protocol: [`ServeStreams::register_feed`] for a feed registration (answer it with
/// Observe 0); [`ServeStreams::watch_arrived`] when a watch request arrives and
/// [`ServeStreams::watch_answered`] with its answer's entry (run the [`Cycle`] returned);
/// [`ServeStreams::cycle_done`] with each cycle's homeserver answer (run the cycle it
/// returns); then [`ServeStreams::next_note`] whenever no notification is in flight (send it
/// with the returned token and sequence number) and [`ServeStreams::acked`] when it was
/// acknowledged (run the cycle returned); [`ServeStreams::feed_lost`] when a notification was
/// reset or never acknowledged. After a write request through the session, run the
/// [`ServeStreams::probes`] before answering it, feed their results to
/// [`ServeStreams::cycle_done`], and put [`ServeStreams::barrier`] in the answer: the tunnel
/// then answers no sync locally before it has every push up to there (read-your-writes).
#[derive(Debug, Default)]
pub struct ServeStreams {
    feed: Option<(Token, u32)>,
    streams: Vec<ServeStream>,
    queue: VecDeque<Note>,
    in_flight: Option<u8>,
    next_id: u64,
}

impl ServeStreams {
    /// A feed registration with CoAP token `token` (replaces the feed, ends every stream).
    pub fn register_feed(&mut self, token: Token) {
        self.feed = Some((token, 0));
        self.streams.clear();
        self.queue.clear();
        self.in_flight = None;
    }

    /// The feed's token.
    pub fn feed_token(&self) -> Option<Token> {
        self.feed.map(|f| f.0)
    }

    /// Whether a notification is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The feed's notification was reset or never acknowledged (`token`): it is over.
    pub fn feed_lost(&mut self, token: &Token) -> bool {
        if self.feed.is_some_and(|f| f.0 == *token) {
            self.feed = None;
            self.streams.clear();
            self.queue.clear();
            self.in_flight = None;
            return true;
        }
        false
    }

    /// A watch request arrived for `access` + `params`: an older stream of it ends.
    pub fn watch_arrived(&mut self, access: Option<&str>, params: &str) {
        self.streams
            .retain(|s| !(s.access.as_deref() == access && s.params == params));
    }

    fn start(&mut self, i: usize) -> Option<Cycle> {
        let s = self.streams.get_mut(i)?;
        if s.running.is_some() || s.queued > 0 {
            return None;
        }
        self.next_id += 1;
        s.running = Some(self.next_id);
        Some(Cycle {
            n: s.n,
            id: self.next_id,
            since: s.since.clone(),
            path_and_query: cycle_query(&s.params, &s.since, CYCLE_MS),
            access: s.access.clone(),
            probe: false,
        })
    }

    /// The watch of stream `n` was answered with `head` (the entry the tunnel holds): the
    /// stream starts, `None` when it cannot (no feed). Lasts until `now` + lease + grace.
    pub fn watch_answered(
        &mut self,
        now: u64,
        n: u8,
        access: Option<String>,
        params: String,
        head: Arc<Entry>,
    ) -> Option<Cycle> {
        self.feed?;
        self.streams
            .retain(|s| s.n != n && !(s.access == access && s.params == params));
        if self.streams.len() >= STREAMS {
            return None;
        }
        self.streams.push(ServeStream {
            n,
            access,
            params,
            since: head.next_batch.clone(),
            head,
            until: now + LEASE_MS + GRACE_MS,
            running: None,
            queued: 0,
        });
        self.start(self.streams.len() - 1)
    }

    /// Probes of every stream (`timeout=0` from where each stands), to run after a write
    /// through this session and before answering it.
    pub fn probes(&self) -> Vec<Cycle> {
        self.streams
            .iter()
            .map(|s| Cycle {
                n: s.n,
                id: 0,
                since: s.since.clone(),
                path_and_query: cycle_query(&s.params, &s.since, 0),
                access: s.access.clone(),
                probe: true,
            })
            .collect()
    }

    /// A cycle's answer (`status` and its JSON body): the next cycle to run, if any. Call
    /// [`ServeStreams::next_note`] after it.
    pub fn cycle_done(
        &mut self,
        now: u64,
        c: &Cycle,
        status: u16,
        json: Option<&[u8]>,
    ) -> Option<Cycle> {
        let i = self.streams.iter().position(|s| s.n == c.n)?;
        let s = &mut self.streams[i];
        let body: Option<Value> = json
            .filter(|_| status == 200)
            .and_then(|j| serde_json::from_slice(j).ok());
        if c.probe {
            // Only news from where the stream still stands; failures are the long-poll's.
            match &body {
                Some(b) if s.since == c.since && has_news(b, &s.head.body) => {
                    // The running long-poll would bring the same: its answer is dropped.
                    s.running = None;
                }
                _ => return None,
            }
        } else {
            if s.running != Some(c.id) {
                return None;
            }
            s.running = None;
            if now >= s.until {
                self.streams.remove(i);
                return None;
            }
        }
        let Some(body) = body else {
            // The homeserver refused (logged out, ...) or failed: the client asks it itself.
            let s = self.streams.remove(i);
            self.queue.push_back(Note {
                n: s.n,
                kind: PushKind::Ended,
                payload: Vec::new(),
            });
            return None;
        };
        if !has_news(&body, &s.head.body) {
            if let Some(nb) = body.get("next_batch").and_then(Value::as_str) {
                s.since = nb.to_owned();
            }
            return self.start(i);
        }
        let pushed = json.and_then(|j| syncstate::push_encode(&s.head, j).map(|p| (p, j)));
        let note = match pushed {
            Some(((Some(d), e), _)) if d.len() <= MAX_PUSH => Some((PushKind::Delta, d, e)),
            Some(((None, e), j)) if j.len() <= MAX_PUSH => Some((PushKind::Full, j.to_vec(), e)),
            _ => None,
        };
        match note {
            Some((kind, payload, e)) => {
                s.head = Arc::new(e);
                s.since = s.head.next_batch.clone();
                s.queued += 1;
                self.queue.push_back(Note {
                    n: s.n,
                    kind,
                    payload,
                });
            }
            None => {
                // Too large for one notification: the client fetches it over the link.
                let s = self.streams.remove(i);
                self.queue.push_back(Note {
                    n: s.n,
                    kind: PushKind::Ended,
                    payload: Vec::new(),
                });
            }
        }
        None
    }

    /// The next notification to send and its sequence number, when none is in flight.
    pub fn next_note(&mut self) -> Option<(Token, u32, Note)> {
        if self.in_flight.is_some() {
            return None;
        }
        let (token, seq) = self.feed.as_mut()?;
        let note = self.queue.pop_front()?;
        *seq = (*seq + 1) & 0xff_ffff;
        self.in_flight = Some(note.n);
        Some((*token, *seq, note))
    }

    /// The notification in flight was acknowledged: its stream polls on once it has nothing
    /// else queued.
    pub fn acked(&mut self) -> Option<Cycle> {
        let n = self.in_flight.take()?;
        let i = self.streams.iter().position(|s| s.n == n)?;
        let s = &mut self.streams[i];
        s.queued = s.queued.saturating_sub(1);
        self.start(i)
    }

    /// The sequence number of the last notification queued so far (`None`: no feed or no
    /// streams): what a write's answer tells the tunnel to wait for.
    pub fn barrier(&self) -> Option<u32> {
        let (_, seq) = self.feed?;
        if self.streams.is_empty() && self.queue.is_empty() && self.in_flight.is_none() {
            return None;
        }
        let q = u32::try_from(self.queue.len()).unwrap_or(0);
        Some((seq + q) & 0xff_ffff)
    }

    /// Streams running.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(body: Value) -> Arc<Entry> {
        // An entry as both ends store it for a sync answer.
        let mut t = crate::syncstate::TunnelSync::default();
        let mut p = "/sync?since=x".to_owned();
        let r = t.request("GET", &mut p).unwrap();
        let j = body.to_string();
        t.response(&r, 200, false, &[], Some(j.as_bytes())).unwrap();
        t.entry(r.k).unwrap()
    }

    fn empty(nb: &str) -> Value {
        json!({"next_batch": nb, "device_one_time_keys_count": {"signed_curve25519": 0},
               "device_unused_fallback_key_types": []})
    }

    #[test]
    fn split_and_cycle() {
        assert_eq!(
            split_sync(
                "GET",
                "/_matrix/client/v3/sync?since=s1&timeout=30000&filter=0"
            ),
            Some((
                "/_matrix/client/v3/sync?filter=0".into(),
                "s1".into(),
                30000
            ))
        );
        assert_eq!(
            split_sync("GET", "/sync?timeout=0&since=s1"),
            Some(("/sync".into(), "s1".into(), 0))
        );
        assert_eq!(split_sync("GET", "/sync?timeout=0"), None);
        assert_eq!(split_sync("GET", "/sync?since=a&full_state=true"), None);
        assert_eq!(split_sync("POST", "/sync?since=a"), None);
        assert_eq!(split_sync("GET", "/sync?since=a&timeout=x"), None);
        assert_eq!(
            cycle_query("/sync", "s1", CYCLE_MS),
            "/sync?since=s1&timeout=30000"
        );
        assert_eq!(
            cycle_query("/sync?filter=0", "s1", 0),
            "/sync?filter=0&since=s1&timeout=0"
        );
    }

    #[test]
    fn news_and_empty() {
        let head = empty("a");
        assert!(!has_news(&empty("b"), &head));
        let mut b = empty("b");
        b["rooms"] = json!({"join": {}, "invite": {}});
        b["device_lists"] = json!({"changed": [], "left": []});
        assert!(!has_news(&b, &head));
        b["rooms"]["join"] = json!({"!r:hs": {"timeline": {"events": [{"body": "hi"}]}}});
        assert!(has_news(&b, &head));
        let mut c = empty("c");
        c["device_one_time_keys_count"] = json!({"signed_curve25519": 5});
        assert!(has_news(&c, &head));
        let mut d = empty("d");
        d["to_device"] = json!({"events": [{"type": "m.x"}]});
        assert!(has_news(&d, &head));
        assert_eq!(empty_answer(&c, "zz"), {
            let mut e = empty("zz");
            e["device_one_time_keys_count"] = json!({"signed_curve25519": 5});
            e
        });
        assert_eq!(empty_answer(&head, "a").to_string(), empty("a").to_string());
    }

    fn h(n: u32) -> RequestHandle {
        // Handles come from an endpoint; make a few.
        use lowband_codec::coap::{Code, Config, Endpoint, Options, Request};
        let mut e: Endpoint<4, 2, 1, 64> = Endpoint::new(Config::default());
        let mut last = None;
        for _ in 0..n {
            let r = e
                .request(0, Request::con(Code::GET, Options::NONE, &[]))
                .unwrap();
            e.cancel(r);
            last = Some(r);
        }
        last.unwrap()
    }

    /// The whole exchange between the two ends, without the link.
    #[test]
    fn push_one_message_then_answer_locally() {
        let mut t = TunnelStreams::default();
        let mut s = ServeStreams::default();
        let tok = Token::new(&[7]).unwrap();
        // Before a feed: plain.
        assert_eq!(
            t.on_sync(0, Some("tk"), "GET", "/sync?since=a&timeout=0"),
            Decision::Forward(None)
        );
        assert!(t.want_feed(0));
        let fh = h(1);
        t.feed_sent(fh);
        assert!(!t.want_feed(0));
        s.register_feed(tok);
        t.feed_answer(0, fh, Some(0));
        // The watch.
        assert_eq!(
            t.on_sync(10, Some("tk"), "GET", "/sync?since=a&timeout=0"),
            Decision::Forward(Some(0))
        );
        // A second sync while the watch is in flight goes plain.
        assert_eq!(
            t.on_sync(11, Some("tk"), "GET", "/sync?since=a&timeout=0"),
            Decision::Forward(None)
        );
        s.watch_arrived(Some("tk"), "/sync");
        let e = entry(empty("b"));
        let c = s
            .watch_answered(20, 0, Some("tk".into()), "/sync".into(), e.clone())
            .unwrap();
        assert_eq!(c.path_and_query, "/sync?since=b&timeout=30000");
        // A cycle with nothing new: polled again from the new token, nothing pushed.
        let j = empty("b2").to_string();
        let c = s.cycle_done(30, &c, 200, Some(j.as_bytes())).unwrap();
        assert_eq!(c.path_and_query, "/sync?since=b2&timeout=30000");
        // A late answer of a cycle that is no longer running is dropped.
        assert_eq!(
            s.cycle_done(31, &Cycle { id: 0, ..c.clone() }, 200, Some(j.as_bytes())),
            None
        );
        assert!(s.next_note().is_none());
        // A message: pushed as a delta against b.
        let mut m = empty("c");
        m["rooms"] = json!({"join": {"!r:hs": {"timeline": {"events": [
            {"type": "m.room.message", "content": {"body": "hello bob", "msgtype": "m.text"}}]}}}});
        let j = m.to_string();
        // A write's probe finds it first: pushed once, the long-poll's answer dropped.
        let probes = s.probes();
        assert_eq!(probes.len(), 1);
        assert_eq!(probes[0].path_and_query, "/sync?since=b2&timeout=0");
        assert_eq!(s.cycle_done(39, &probes[0], 200, Some(j.as_bytes())), None);
        assert_eq!(s.barrier(), Some(1));
        assert_eq!(s.cycle_done(40, &c, 200, Some(j.as_bytes())), None);
        assert_eq!(s.cycle_done(40, &probes[0], 200, Some(j.as_bytes())), None);
        let (tk, seq, note) = s.next_note().unwrap();
        assert_eq!((tk, seq, note.n, &note.kind), (tok, 1, 0, &PushKind::Delta));
        assert!(note.payload.len() < 120, "{}", note.payload.len());
        assert!(s.next_note().is_none());
        // The push reaches the tunnel before the watch's answer: held back.
        let opt = note.kind.option(note.n);
        assert_eq!(
            t.on_notification(Some(1), false, Some(&opt), &note.payload),
            Pushed::Nothing
        );
        assert_eq!(t.watch_answer(0, true, Some(e)), vec![Pushed::Stream(0)]);
        // The client at b gets the push's body; at c the empty answer.
        let Decision::Answer(a) = t.on_sync(60, Some("tk"), "GET", "/sync?since=b&timeout=0")
        else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&a).unwrap(), m);
        let Decision::Answer(a) = t.on_sync(61, Some("tk"), "GET", "/sync?since=c&timeout=0")
        else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&a).unwrap(), empty("c"));
        // A long-poll waits; at its deadline the empty answer.
        assert_eq!(
            t.on_sync(62, Some("tk"), "GET", "/sync?since=c&timeout=2000"),
            Decision::Wait {
                n: 0,
                since: "c".into(),
                until: 2062
            }
        );
        assert_eq!(t.check_waiter(2061, 0, "c", 62, 2062), WaitOutcome::Keep);
        assert_eq!(
            t.check_waiter(2062, 0, "c", 62, 2062),
            WaitOutcome::Answer(empty("c").to_string().into_bytes())
        );
        // Another client or other params: over the link.
        assert_eq!(
            t.on_sync(63, Some("other"), "GET", "/sync?since=c&timeout=0"),
            Decision::Forward(Some(1))
        );
        assert_eq!(
            t.on_sync(64, Some("tk"), "GET", "/sync?since=zzz&timeout=0"),
            Decision::Forward(Some(2))
        );
        // The ack lets the stream poll on from c.
        let c = s.acked().unwrap();
        assert_eq!(c.path_and_query, "/sync?since=c&timeout=30000");
    }

    #[test]
    fn a_write_makes_syncs_wait_for_its_pushes() {
        let mut t = TunnelStreams::default();
        let mut s = ServeStreams::default();
        let _ = t.on_sync(0, None, "GET", "/sync?since=a");
        let fh = h(1);
        t.feed_sent(fh);
        s.register_feed(Token::new(&[3]).unwrap());
        t.feed_answer(0, fh, Some(0));
        assert_eq!(
            t.on_sync(1, None, "GET", "/sync?since=a"),
            Decision::Forward(Some(0))
        );
        let e = entry(empty("b"));
        let c = s
            .watch_answered(2, 0, None, "/sync".into(), e.clone())
            .unwrap();
        t.watch_answer(0, true, Some(e));
        // No write yet, no push: the empty answer.
        assert!(matches!(
            t.on_sync(3, None, "GET", "/sync?since=b&timeout=0"),
            Decision::Answer(_)
        ));
        // A write's probe finds a message; the write's answer announces push 1.
        let mut m = empty("c");
        m["rooms"] = json!({"join": {"!r:hs": {"timeline": {"events": [{"body": "hi"}]}}}});
        let j = m.to_string();
        let p = s.probes();
        assert_eq!(s.cycle_done(4, &p[0], 200, Some(j.as_bytes())), None);
        // The long-poll's own answer with the same news is dropped.
        assert_eq!(s.cycle_done(4, &c, 200, Some(j.as_bytes())), None);
        t.set_barrier(s.barrier().unwrap());
        // The answer arrived before the push: a sync at b waits, even with timeout 0.
        assert_eq!(
            t.on_sync(5, None, "GET", "/sync?since=b&timeout=0"),
            Decision::Wait {
                n: 0,
                since: "b".into(),
                until: 5
            }
        );
        assert_eq!(t.check_waiter(6, 0, "b", 5, 5), WaitOutcome::Keep);
        assert_eq!(t.waiter_wake(5, 5), 5 + BARRIER_WAIT_MS);
        let (_, seq, note) = s.next_note().unwrap();
        let o = note.kind.option(note.n);
        assert_eq!(
            t.on_notification(Some(seq), false, Some(&o), &note.payload),
            Pushed::Stream(0)
        );
        let WaitOutcome::Answer(a) = t.check_waiter(7, 0, "b", 5, 5) else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&a).unwrap(), m);
        // A push that never comes: after the wait the sync goes over the link.
        t.set_barrier(seq + 1);
        assert!(matches!(
            t.on_sync(8, None, "GET", "/sync?since=c&timeout=0"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            t.check_waiter(8 + BARRIER_WAIT_MS, 0, "c", 8, 8),
            WaitOutcome::Forward
        );
        assert_eq!(
            t.on_sync(9 + BARRIER_WAIT_MS, None, "GET", "/sync?since=c&timeout=0"),
            Decision::Forward(Some(1))
        );
        // Serve polls on once the push is acknowledged.
        assert_eq!(
            s.acked().unwrap().path_and_query,
            "/sync?since=c&timeout=30000"
        );
    }

    /// A result that a merge patch cannot carry (a null) travels in full, through the wire's
    /// JSON packing, and both ends hold the same head afterwards.
    #[test]
    fn full_pushes_through_the_wire() {
        use crate::wire::{self, HttpResponse, WireResponse};
        let mut s = ServeStreams::default();
        let mut t = TunnelStreams::default();
        let _ = t.on_sync(0, None, "GET", "/sync?since=a");
        let fh = h(1);
        t.feed_sent(fh);
        s.register_feed(Token::new(&[3]).unwrap());
        t.feed_answer(0, fh, Some(0));
        let _ = t.on_sync(1, None, "GET", "/sync?since=a");
        let e = entry(empty("b"));
        let c = s
            .watch_answered(2, 0, None, "/sync".into(), e.clone())
            .unwrap();
        t.watch_answer(0, true, Some(e));
        let mut m = empty("c");
        m["presence"] = json!({"events": [{"type": "m.presence"}], "x": null});
        let j = m.to_string();
        assert_eq!(s.cycle_done(3, &c, 200, Some(j.as_bytes())), None);
        let (_, seq, note) = s.next_note().unwrap();
        assert_eq!(note.kind, PushKind::Full);
        // Serve's side of the link...
        let w = WireResponse::encode(&HttpResponse {
            status: 200,
            content_type: Some("application/json".to_owned()),
            body: note.payload.clone(),
            ..HttpResponse::default()
        })
        .unwrap();
        let o = note.kind.option(note.n);
        let mut l = w.options();
        l.push(lowband_codec::coap::Opt::bytes(crate::syncstate::SYNC, &o))
            .unwrap();
        // ... and the tunnel's.
        let r = wire::decode_response(w.code, &l.as_options(), &w.body.bytes).unwrap();
        assert_eq!(
            t.on_notification(Some(seq), false, Some(&o), &r.body),
            Pushed::Stream(0)
        );
        let Decision::Answer(a) = t.on_sync(4, None, "GET", "/sync?since=b") else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&a).unwrap(), m);
        // The next push is a delta against the same head on both ends.
        let c = s.acked().unwrap();
        let mut m2 = empty("d");
        m2["rooms"] = json!({"join": {"!r:hs": {"timeline": {"events": [{"body": "x"}]}}}});
        let j2 = m2.to_string();
        assert_eq!(s.cycle_done(5, &c, 200, Some(j2.as_bytes())), None);
        let (_, seq, note) = s.next_note().unwrap();
        assert_eq!(note.kind, PushKind::Delta);
        let o = note.kind.option(note.n);
        assert_eq!(
            t.on_notification(Some(seq), false, Some(&o), &note.payload),
            Pushed::Stream(0)
        );
        let Decision::Answer(a) = t.on_sync(6, None, "GET", "/sync?since=c") else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&a).unwrap(), m2);
    }

    #[test]
    fn gaps_and_ends_send_the_client_to_the_link() {
        let mut t = TunnelStreams::default();
        let _ = t.on_sync(0, None, "GET", "/sync?since=a");
        let fh = h(1);
        t.feed_sent(fh);
        t.feed_answer(0, fh, Some(0));
        assert_eq!(
            t.on_sync(1, None, "GET", "/sync?since=a"),
            Decision::Forward(Some(0))
        );
        t.watch_answer(0, true, Some(entry(empty("b"))));
        assert!(t.trusted(3, 0));
        assert!(!t.trusted(LEASE_MS + 1, 0));
        // Past the lease: over the link again.
        assert_eq!(
            t.on_sync(LEASE_MS + 1, None, "GET", "/sync?since=b"),
            Decision::Forward(Some(1))
        );
        t.watch_answer(1, true, Some(entry(empty("b"))));
        // A stream ended by serve.
        let o = PushKind::Ended.option(1);
        assert_eq!(
            t.on_notification(Some(1), false, Some(&o), &[]),
            Pushed::Ended(1)
        );
        assert_eq!(
            t.on_sync(LEASE_MS + 3, None, "GET", "/sync?since=b"),
            Decision::Forward(Some(2))
        );
        t.watch_answer(2, true, Some(entry(empty("b"))));
        // A sequence gap: the feed is lost, everything goes over the link.
        let o = PushKind::Delta.option(2);
        assert_eq!(
            t.on_notification(Some(3), false, Some(&o), &[0xff]),
            Pushed::FeedLost
        );
        assert_eq!(
            t.on_sync(LEASE_MS + 5, None, "GET", "/sync?since=b"),
            Decision::Forward(None)
        );
        assert!(t.want_feed(LEASE_MS + 5));
        // Undecodable pushes end the stream, never guessed.
        let mut t = TunnelStreams::default();
        let _ = t.on_sync(0, None, "GET", "/sync?since=a");
        t.feed_sent(fh);
        t.feed_answer(0, fh, Some(5));
        let _ = t.on_sync(1, None, "GET", "/sync?since=a");
        t.watch_answer(0, true, Some(entry(empty("b"))));
        let o = PushKind::Delta.option(0);
        assert_eq!(
            t.on_notification(Some(6), false, Some(&o), &[1, 2]),
            Pushed::Ended(0)
        );
        // Refused feeds are retried later.
        let mut t = TunnelStreams::default();
        let _ = t.on_sync(0, None, "GET", "/sync?since=a");
        t.feed_sent(fh);
        t.feed_answer(0, fh, None);
        assert!(!t.want_feed(1));
        assert!(!t.want_feed(FEED_RETRY_MS - 1));
        assert!(t.want_feed(FEED_RETRY_MS));
    }

    #[test]
    fn serve_ends_streams() {
        let mut s = ServeStreams::default();
        let e = entry(empty("b"));
        // No feed: nothing watched.
        assert!(s
            .watch_answered(0, 0, None, "/sync".into(), e.clone())
            .is_none());
        let tok = Token::new(&[1]).unwrap();
        s.register_feed(tok);
        let c = s
            .watch_answered(0, 0, None, "/sync".into(), e.clone())
            .unwrap();
        // A logged-out token: the stream ends with a note.
        assert_eq!(s.cycle_done(1, &c, 401, Some(b"{}")), None);
        let (_, seq, n) = s.next_note().unwrap();
        assert_eq!((seq, n.kind), (1, PushKind::Ended));
        assert_eq!(s.acked(), None);
        // Past its lifetime a stream stops silently.
        let c = s
            .watch_answered(0, 1, None, "/sync".into(), e.clone())
            .unwrap();
        let j = empty("c").to_string();
        assert_eq!(
            s.cycle_done(LEASE_MS + GRACE_MS, &c, 200, Some(j.as_bytes())),
            None
        );
        assert_eq!(s.streams(), 0);
        // A new watch of the same stream replaces the old one; old results are dropped.
        let c = s
            .watch_answered(0, 2, None, "/sync".into(), e.clone())
            .unwrap();
        s.watch_arrived(None, "/sync");
        assert_eq!(s.cycle_done(1, &c, 200, Some(j.as_bytes())), None);
        assert_eq!(s.barrier(), None);
        // A lost feed ends everything.
        let _ = s.watch_answered(0, 3, None, "/sync".into(), e).unwrap();
        assert!(!s.feed_lost(&Token::new(&[9]).unwrap()));
        assert!(s.feed_lost(&tok));
        assert_eq!(s.streams(), 0);
    }
}
