//! `serve`'s session table: the codec's [`ServerWith`] demultiplexer over a store of any
//! number of boxed responder sessions whose idle ones hibernate.
//!
//! The demultiplexing rules (a msg1 from a known peer replaces its session, a transport
//! packet is tried against the sessions with its 6-bit id, those last heard from its address
//! first, an authenticated packet moves the reply address) are the codec's; this module only
//! decides how sessions are held: [`Sessions`] keeps each live [`ServerSession`] in its own
//! box, grows on demand up to a limit, and polls only the sessions something happened to.
//!
//! A live session keeps its CoAP messages in [`HeapBuf`]s, each as long as the message it
//! holds: ~4.7 KB with nothing in flight (exchange and duplicate-cache bookkeeping, Noise
//! state) plus its messages, where inline MTU-sized buffers would cost ~71 KB.
//!
//! Idle sessions hibernate: a session with no timer, no output and no traffic for a quiet
//! period is kept only as its [`ServerSession::export`] ([`RESPONDER_EXPORT_LEN`] bytes; with
//! its table entry [`IDLE_SESSION_BYTES`]) and restored by the next packet that opens under
//! it. The quiet period after the session's last request is the CoAP
//! duplicate window (`MAX_TRANSMIT_SPAN + MAX_LATENCY`, RFC 7252 §4.8.2), after which the
//! endpoint's duplicate cache has nothing left to recognise; a session that never carried a
//! request only waits out its handshake (a late msg1 simply starts a new session). A restore
//! moves the sending side to the next key epoch, which the peer follows by itself.
//!
//! A hibernation sweep hands the freed memory back to the system (`malloc_trim` on glibc):
//! the allocator would otherwise keep the live sessions' pages for reuse, and an idle
//! gateway would stay as big as it was at its busiest.
//!
//! Call protocol as for the codec's `Server`: [`handle_packet`](SessionTable::handle_packet)
//! each link packet, then [`poll_transmit`](SessionTable::poll_transmit) until `None`;
//! [`poll_timeout`](SessionTable::poll_timeout) / [`handle_timeout`](SessionTable::handle_timeout)
//! for timers; [`hibernate_idle`](SessionTable::hibernate_idle) now and then. No I/O, no clock.
use core::net::SocketAddr;

use lowband_codec::coap::{self, MsgBuf, Received};
use lowband_codec::noise::link::{
    ResponderConfig, SessionId, TransportError, RESPONDER_EXPORT_LEN,
};
use lowband_codec::noise::PublicKey;
use lowband_codec::session::{ServerDrop, ServerSession, ServerWith, SessionStats, SessionStore};
use rand_core::{CryptoRng, RngCore};

use crate::transport::COAP_MTU;

/// Exchange slots per session (requests in progress, separate responses).
pub const SLOTS: usize = 16;
/// Message ids remembered per session.
pub const DEDUP: usize = 32;

/// One responder session of `serve`: its CoAP messages on the heap, each as long as it is.
pub type GwSession = ServerSession<SLOTS, DEDUP, 1, COAP_MTU, HeapBuf>;

/// A CoAP message buffer on the heap, exactly as long as the message it holds (empty: no
/// allocation): a live session costs what its messages take, not `(SLOTS + DEDUP) × MTU`
/// (~70 KB) of inline buffers.
#[derive(Debug, Default)]
pub struct HeapBuf(Box<[u8]>);

impl MsgBuf for HeapBuf {
    fn empty() -> Self {
        HeapBuf(Box::default())
    }

    fn store(&mut self, msg: &[u8]) -> bool {
        if self.0.len() == msg.len() {
            self.0.copy_from_slice(msg);
        } else {
            self.0 = msg.into();
        }
        true
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// What one hibernating session costs: its table entry, its export, and the allocator's
/// header of the export's box (16 bytes on glibc x86_64).
pub const IDLE_SESSION_BYTES: usize = core::mem::size_of::<Entry>() + RESPONDER_EXPORT_LEN + 16;

/// A session awake or hibernating.
#[derive(Debug)]
enum Body {
    Live(Box<GwSession>),
    Asleep(Box<[u8; RESPONDER_EXPORT_LEN]>),
}

/// One session with what the table caches about it (kept inline so that scans over a
/// thousand sessions touch one contiguous vector, not a thousand boxes).
#[derive(Debug)]
struct Entry {
    /// Where replies go.
    addr: SocketAddr,
    /// Cached [`GwSession::id`].
    id: SessionId,
    /// Cached [`GwSession::peer`].
    peer: [u8; 32],
    /// Cached [`GwSession::poll_timeout`], valid while not `dirty`.
    wake: Option<u64>,
    /// Touched since its output was last drained: poll it.
    dirty: bool,
    /// May have CoAP events to report.
    events: bool,
    /// Has carried a request (its duplicate cache may hold something).
    used: bool,
    /// Last packet in or out, ms.
    active: u64,
    /// Counters of earlier live periods (a restore starts the session's own at zero).
    acc: SessionStats,
    body: Body,
}

impl Entry {
    fn new(addr: SocketAddr, s: Box<GwSession>, now: u64) -> Entry {
        Entry {
            addr,
            id: s.id(),
            peer: s.peer().0,
            wake: None,
            dirty: true,
            events: true,
            active: now,
            used: false,
            acc: SessionStats::default(),
            body: Body::Live(s),
        }
    }

    fn stats(&self) -> SessionStats {
        let mut t = self.acc;
        if let Body::Live(s) = &self.body {
            let s = s.stats();
            t.packets_out += s.packets_out;
            t.bytes_out += s.bytes_out;
            t.packets_in += s.packets_in;
            t.bytes_in += s.bytes_in;
            t.dropped += s.dropped;
            t.handshakes += s.handshakes;
            t.retransmissions = t.retransmissions.wrapping_add(s.retransmissions);
        }
        t
    }
}

/// `serve`'s session store: boxed sessions that hibernate when idle (see the module docs).
///
/// Per-packet work is proportional to the sessions the packet touches, not to all of them:
/// only sessions marked dirty (handed a packet, a timeout, or lent out mutably) are polled
/// for output, and their next timer is cached.
#[derive(Debug)]
pub struct Sessions {
    sessions: Vec<Entry>,
    max: usize,
    coap: coap::Config,
    next: usize,
    /// Quiet time before a session that carried requests hibernates, ms.
    quiet_ms: u64,
    /// Quiet time before a session that only shook hands hibernates, ms.
    handshake_quiet_ms: u64,
    asleep: usize,
    /// CoAP retransmissions of all sessions not yet taken by
    /// [`SessionTable::take_retransmissions`].
    retransmissions: u64,
    /// No hibernation sweep before this time, ms.
    next_sweep: u64,
    /// Sessions went to sleep since memory was last handed back.
    trim_pending: bool,
    /// When memory was last handed back, ms.
    last_trim: u64,
}

/// Hibernation sweeps (a scan of every session) at most this often, ms.
const SWEEP_MS: u64 = 100;
/// Memory handed back to the system at most this often while sessions are still live, ms
/// (a trim walks the allocator's free lists).
const TRIM_MS: u64 = 1_000;

impl Sessions {
    fn wake(&mut self, i: usize) -> Option<&mut GwSession> {
        let e = self.sessions.get_mut(i)?;
        if let Body::Asleep(x) = &e.body {
            let s = ServerSession::import(&x[..], self.coap).ok()?;
            e.body = Body::Live(Box::new(s));
            e.wake = None;
            self.asleep -= 1;
        }
        match &mut e.body {
            Body::Live(s) => Some(s),
            Body::Asleep(_) => None,
        }
    }
}

impl SessionStore<SocketAddr, SLOTS, DEDUP, 1, COAP_MTU, HeapBuf> for Sessions {
    fn len(&self) -> usize {
        self.sessions.len()
    }

    fn is_full(&self) -> bool {
        self.sessions.len() >= self.max
    }

    fn id(&self, i: usize) -> SessionId {
        self.sessions[i].id
    }

    fn peer(&self, i: usize) -> PublicKey {
        PublicKey(self.sessions[i].peer)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.sessions[i].addr
    }

    fn readdress(&mut self, i: usize, to: SocketAddr) {
        self.sessions[i].addr = to;
    }

    fn live_mut(&mut self, i: usize) -> Option<&mut GwSession> {
        match &mut self.sessions.get_mut(i)?.body {
            Body::Live(s) => Some(s),
            Body::Asleep(_) => None,
        }
    }

    fn session_mut(&mut self, i: usize) -> Option<&mut GwSession> {
        let e = self.sessions.get_mut(i)?;
        e.dirty = true;
        e.events = true;
        self.wake(i)
    }

    fn open(
        &mut self,
        now: u64,
        i: usize,
        packet: &[u8],
        scratch: &mut [u8],
    ) -> Result<usize, TransportError> {
        let coap = self.coap;
        let e = &mut self.sessions[i];
        let r = match &mut e.body {
            Body::Live(s) => s.open(packet, scratch),
            Body::Asleep(x) => {
                // Restored only if the packet is really its own.
                let mut s = ServerSession::import(&x[..], coap)?;
                let r = s.open(packet, scratch);
                if r.is_ok() {
                    e.body = Body::Live(Box::new(s));
                    e.wake = None;
                    self.asleep -= 1;
                }
                r
            }
        };
        if r.is_ok() {
            e.active = now;
            e.used = true;
        }
        r
    }

    fn push(&mut self, now: u64, to: SocketAddr, s: GwSession) -> Result<usize, GwSession> {
        if self.is_full() {
            return Err(s);
        }
        self.sessions.push(Entry::new(to, Box::new(s), now));
        Ok(self.sessions.len() - 1)
    }

    fn swap_remove(&mut self, i: usize) {
        if matches!(self.sessions[i].body, Body::Asleep(_)) {
            self.asleep -= 1;
        }
        self.sessions.swap_remove(i);
    }

    fn clear(&mut self) {
        self.sessions.clear();
        self.asleep = 0;
    }

    fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let n = self.sessions.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let e = &mut self.sessions[i];
            if !e.dirty {
                continue;
            }
            let Body::Live(s) = &mut e.body else {
                e.dirty = false;
                continue;
            };
            let before = s.coap().stats().retransmissions;
            if let Some(len) = s.poll_transmit(now, out) {
                let after = s.coap().stats().retransmissions;
                self.retransmissions += u64::from(after.wrapping_sub(before));
                e.active = now;
                self.next = (i + 1) % n;
                return Some((e.addr, len));
            }
            // Drained: its timer is settled until it is touched again.
            e.dirty = false;
            e.wake = s.poll_timeout();
        }
        None
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.sessions
            .iter()
            .filter_map(|e| if e.dirty { Some(0) } else { e.wake })
            .min()
    }

    fn handle_timeout(&mut self, now: u64) {
        for e in &mut self.sessions {
            let Body::Live(s) = &mut e.body else {
                continue;
            };
            if e.dirty || e.wake.is_some_and(|w| w <= now) {
                s.handle_timeout(now);
                e.dirty = true;
                e.events = true;
            }
        }
    }
}

/// `serve`'s sessions: the codec's demultiplexer over [`Sessions`].
#[derive(Debug)]
pub struct SessionTable {
    server: ServerWith<SocketAddr, Sessions, SLOTS, DEDUP, 1, COAP_MTU, HeapBuf>,
}

impl SessionTable {
    /// An empty table admitting up to `max` sessions, each using `coap` settings; idle
    /// sessions hibernate after the duplicate window of `coap`'s transmission parameters.
    pub fn new(coap: coap::Config, max: usize) -> SessionTable {
        let p = coap.params;
        let store = Sessions {
            sessions: Vec::new(),
            max,
            coap,
            next: 0,
            quiet_ms: p.max_transmit_span() + p.max_latency,
            handshake_quiet_ms: 4 * p.ack_timeout,
            asleep: 0,
            retransmissions: 0,
            next_sweep: 0,
            trim_pending: false,
            last_trim: 0,
        };
        SessionTable {
            server: ServerWith::with_store(store, coap),
        }
    }

    fn store(&self) -> &Sessions {
        self.server.store()
    }

    /// Sessions hibernating.
    pub fn asleep(&self) -> usize {
        self.store().asleep
    }

    /// Hibernates the sessions that have been quiet long enough (see the module docs) and
    /// hands the memory they freed back to the system; returns how many went to sleep.
    ///
    /// Cheap to call often: it scans the sessions at most every 100 ms, and trims memory at
    /// most once a second, or as soon as every session sleeps.
    pub fn hibernate_idle(&mut self, now: u64) -> usize {
        let t = self.server.store_mut();
        if now < t.next_sweep {
            return 0;
        }
        t.next_sweep = now + SWEEP_MS;
        let mut n = 0;
        for e in &mut t.sessions {
            let Body::Live(s) = &mut e.body else {
                continue;
            };
            // An observed session (a device's pushed sync) keeps its observer table.
            if s.coap().has_observers() {
                continue;
            }
            let quiet = if e.used {
                t.quiet_ms
            } else {
                t.handshake_quiet_ms
            };
            if e.dirty || e.wake.is_some() || now.saturating_sub(e.active) < quiet {
                continue;
            }
            let mut x = Box::new([0u8; RESPONDER_EXPORT_LEN]);
            s.export(&mut x);
            e.acc = e.stats();
            e.body = Body::Asleep(x);
            n += 1;
        }
        t.asleep += n;
        t.trim_pending |= n > 0;
        if t.trim_pending && (now >= t.last_trim + TRIM_MS || t.asleep == t.sessions.len()) {
            release_free_memory();
            t.trim_pending = false;
            t.last_trim = now;
        }
        n
    }

    /// Hands the memory the allocator holds free back to the system now (`serve` does at
    /// start, so that its footprint is that of what it holds, not of its start-up).
    pub fn release_memory(&self) {
        release_free_memory();
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.server.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.server.is_empty()
    }

    /// The session at `index` (stable until a session is removed), to respond or send on
    /// (restored if it hibernates); it is polled for output afterwards.
    pub fn session(&mut self, index: usize) -> Option<&mut GwSession> {
        self.server.session(index)
    }

    /// The peer's static key of the session at `index`.
    pub fn peer(&self, index: usize) -> Option<[u8; 32]> {
        self.store().sessions.get(index).map(|e| e.peer)
    }

    /// Counters of the session at `index`, over its hibernations.
    pub fn stats(&self, index: usize) -> Option<SessionStats> {
        self.store().sessions.get(index).map(Entry::stats)
    }

    /// CoAP retransmissions of all sessions since the last call.
    pub fn take_retransmissions(&mut self) -> u64 {
        core::mem::take(&mut self.server.store_mut().retransmissions)
    }

    /// Writes the session at `index` for persistence (a hibernating one as it was put away).
    pub fn export(&self, index: usize, out: &mut [u8; RESPONDER_EXPORT_LEN]) -> bool {
        match self.store().sessions.get(index).map(|e| &e.body) {
            Some(Body::Live(s)) => s.export(out),
            Some(Body::Asleep(x)) => out.copy_from_slice(&x[..]),
            None => return false,
        }
        true
    }

    /// Index of `peer`'s session.
    pub fn find_peer(&self, peer: &[u8; 32]) -> Option<usize> {
        self.store().sessions.iter().position(|e| e.peer == *peer)
    }

    /// The next CoAP event of any session touched since the last call.
    pub fn poll_event(&mut self) -> Option<(usize, coap::Event)> {
        for (i, e) in self.server.store_mut().sessions.iter_mut().enumerate() {
            if !e.events {
                continue;
            }
            let Body::Live(s) = &mut e.body else {
                e.events = false;
                continue;
            };
            match s.poll_event() {
                Some(ev) => return Some((i, ev)),
                None => e.events = false,
            }
        }
        None
    }

    /// Adds a restored session; replies go to `to` until the peer is heard from.
    ///
    /// # Errors
    /// Gives the session back when the table is full.
    #[allow(clippy::result_large_err)]
    pub fn insert(&mut self, to: SocketAddr, s: Box<GwSession>) -> Result<usize, Box<GwSession>> {
        if self.server.store().is_full() {
            return Err(s);
        }
        let t = self.server.store_mut();
        t.sessions.push(Entry::new(to, s, 0));
        Ok(t.sessions.len() - 1)
    }

    /// Why recent packets were dropped (oldest first).
    pub fn poll_drop(&mut self) -> Option<ServerDrop> {
        self.server.poll_drop()
    }

    /// Processes one link packet from `from`: the index of its session and, for transport
    /// packets, what CoAP made of it.
    pub fn handle_packet<'a, R: RngCore + CryptoRng>(
        &mut self,
        now: u64,
        cfg: &ResponderConfig<'_>,
        rng: &mut R,
        from: SocketAddr,
        packet: &[u8],
        scratch: &'a mut [u8],
    ) -> Option<(usize, Option<Received<'a>>)> {
        self.server
            .handle_packet(now, cfg, rng, from, packet, scratch)
    }

    /// The next link packet to send and where to.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        self.server.poll_transmit(now, out)
    }

    /// Earliest timer of all sessions.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.server.poll_timeout()
    }

    /// Advances the timers of the sessions that are due.
    pub fn handle_timeout(&mut self, now: u64) {
        self.server.handle_timeout(now);
    }
}

/// Hands the pages the allocator holds free back to the system (glibc's `malloc_trim`;
/// a no-op elsewhere).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{LinkParams, PACKET, VERSION};
    use lowband_codec::coap::{Code, Options, Request};
    use lowband_codec::noise::link::{InitiatorConfig, LinkPattern, TransportConfig};
    use lowband_codec::noise::Keypair;
    use lowband_codec::session::{Client, SessionEvent};
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const LINK: LinkParams = LinkParams {
        rate: 1_000_000,
        mtu: 1400,
    };

    /// Moves every pending packet both ways; returns the requests the table delivered.
    fn exchange(
        now: u64,
        t: &mut SessionTable,
        c: &mut Client<ChaCha20Rng, 2, 4, 1, COAP_MTU>,
        cfg: &ResponderConfig<'_>,
        rng: &mut ChaCha20Rng,
    ) -> usize {
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut requests = 0;
        let mut out = vec![0u8; PACKET];
        let mut scratch = vec![0u8; PACKET];
        for _ in 0..8 {
            while let Some(n) = c.poll_transmit(now, &mut out) {
                if let Some((i, Some(Received::Request(r)))) =
                    t.handle_packet(now, cfg, rng, from, &out[..n], &mut scratch)
                {
                    let to = r.responder;
                    requests += 1;
                    t.session(i)
                        .unwrap()
                        .coap()
                        .respond(now, &to, Code::CONTENT, Options::NONE, b"ok")
                        .unwrap();
                }
            }
            while let Some((_, n)) = t.poll_transmit(now, &mut out) {
                let _ = c.handle_packet(now, &out[..n], &mut scratch);
            }
        }
        requests
    }

    #[test]
    fn idle_sessions_hibernate_and_resume_without_a_handshake() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let gw = Keypair::generate(&mut rng);
        let me = Keypair::generate(&mut rng);
        let allowed = [me.public()];
        let versions = [VERSION];
        let cfg = ResponderConfig {
            local: &gw,
            versions: &versions,
            known_versions: &[],
            allowed: &allowed,
            accept_ik: true,
            accept_kk: false,
            transport: TransportConfig::default(),
        };
        let mut t = SessionTable::new(LINK.coap(1), 4);
        let init = InitiatorConfig {
            pattern: LinkPattern::IK,
            version: VERSION,
            local: me,
            remote: gw.public(),
            retransmit: LINK.retransmit(),
            transport: TransportConfig::default(),
        };
        let mut c: Box<Client<ChaCha20Rng, 2, 4, 1, COAP_MTU>> =
            Box::new(Client::new(init, LINK.coap(2), ChaCha20Rng::seed_from_u64(4)).unwrap());
        exchange(0, &mut t, &mut c, &cfg, &mut rng);
        assert!(c.is_established());
        assert_eq!(t.len(), 1);
        // Quiet, but not for long enough yet.
        assert_eq!(t.hibernate_idle(1), 0);
        let later = 4 * LINK.transmission().ack_timeout + 10;
        assert_eq!(t.hibernate_idle(later), 1);
        assert_eq!(t.asleep(), 1);
        assert_eq!(t.peer(0), Some(allowed[0].0));
        // A request wakes it: answered, no second handshake on either side.
        let req = Request {
            confirmable: true,
            code: Code::POST,
            options: Options::NONE,
            payload: b"x",
            timeout: Some(10_000),
        };
        c.request(later, req).unwrap();
        assert_eq!(exchange(later, &mut t, &mut c, &cfg, &mut rng), 1);
        assert_eq!(t.asleep(), 0);
        let mut answered = false;
        while let Some(e) = c.poll_event() {
            assert!(!matches!(e, SessionEvent::Rehandshake), "{e:?}");
        }
        assert_eq!(c.stats().handshakes, 1);
        // The answer reached the client (its slot is free again: another request fits).
        let req2 = Request {
            confirmable: true,
            code: Code::POST,
            options: Options::NONE,
            payload: b"y",
            timeout: Some(10_000),
        };
        c.request(later + 1, req2).unwrap();
        if exchange(later + 1, &mut t, &mut c, &cfg, &mut rng) == 1 {
            answered = true;
        }
        assert!(answered);
        // Having carried requests, it now waits out the duplicate window.
        assert_eq!(t.hibernate_idle(later + 10_000), 0);
        let p = LINK.transmission();
        assert_eq!(
            t.hibernate_idle(later + 2 + p.max_transmit_span() + p.max_latency),
            1
        );
        assert_eq!(t.stats(0).unwrap().handshakes, 1);
        assert_eq!(t.stats(0).unwrap().packets_in, 2);
    }
}
