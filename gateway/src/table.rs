//! `serve`'s session table: any number of boxed responder sessions, demultiplexed by session
//! id and key (never by address).
//!
//! The codec's [`lowband_codec::session::Server`] keeps its sessions inline in a heapless
//! vector, right for a device-sized gateway but not for a thousand tunnels: this table holds
//! each [`ServerSession`] in its own box, grows on demand up to a limit, and follows the same
//! rules: a msg1 from a known peer replaces its session, a transport packet is tried against
//! the sessions with its 6-bit id (ids are shared beyond 64 sessions), the one last heard from
//! the packet's address first, and an authenticated packet moves the reply address.
//!
//! Idle sessions hibernate: a session with no timer, no output and no traffic for a quiet
//! period is kept only as its [`ServerSession::export`] (a few hundred bytes instead of the
//! ~70 KB of a live session with its CoAP endpoint) and restored by the next packet that
//! opens under it. The quiet period after the session's last request is the CoAP duplicate
//! window (`MAX_TRANSMIT_SPAN + MAX_LATENCY`, RFC 7252 §4.8.2), after which the endpoint's
//! duplicate cache has nothing left to recognise; a session that never carried a request
//! only waits out its handshake (a late msg1 simply starts a new session). A restore moves
//! the sending side to the next key epoch, which the peer follows by itself.
//!
//! Call protocol as for `Server`: [`handle_packet`](SessionTable::handle_packet) each link
//! packet, then [`poll_transmit`](SessionTable::poll_transmit) until `None`;
//! [`poll_timeout`](SessionTable::poll_timeout) / [`handle_timeout`](SessionTable::handle_timeout)
//! for timers. No I/O, no clock.
use alloc::collections::VecDeque;
use core::net::SocketAddr;

use lowband_codec::coap::{self, Received};
use lowband_codec::noise::link::{
    classify, PacketKind, RejectCode, ResponderConfig, SessionId, TransportError, REJECT_LEN,
    RESPONDER_EXPORT_LEN,
};
use lowband_codec::session::{ServerDrop, ServerSession, SessionStats, UNKNOWN_SESSION};
use rand_core::{CryptoRng, RngCore};

use crate::transport::COAP_MTU;

/// Exchange slots per session (requests in progress, separate responses).
pub const SLOTS: usize = 16;
/// Message ids remembered per session.
pub const DEDUP: usize = 32;

/// One responder session of `serve`.
pub type GwSession = ServerSession<SLOTS, DEDUP, 1, COAP_MTU>;

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
    /// Last packet in or out, ms.
    active: u64,
    /// Has carried a request (its duplicate cache may hold something).
    used: bool,
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

    /// The live session, restoring it if it hibernates.
    fn live(&mut self, coap: coap::Config) -> Option<&mut GwSession> {
        if let Body::Asleep(e) = &self.body {
            let s = ServerSession::import(&e[..], coap).ok()?;
            self.body = Body::Live(Box::new(s));
            self.wake = None;
        }
        match &mut self.body {
            Body::Live(s) => Some(s),
            Body::Asleep(_) => None,
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
        }
        t
    }
}
/// Sessions, boxed, with where their replies go.
///
/// Per-packet work is proportional to the sessions the packet touches, not to all of them:
/// only sessions marked dirty (handed a packet, a timeout, or lent out mutably) are polled
/// for output, and their next timer is cached.
#[derive(Debug)]
pub struct SessionTable {
    sessions: Vec<Entry>,
    max: usize,
    replies: VecDeque<(SocketAddr, [u8; REJECT_LEN])>,
    drops: VecDeque<ServerDrop>,
    coap: coap::Config,
    next: usize,
    /// Quiet time before a session that carried requests hibernates, ms.
    quiet_ms: u64,
    /// Quiet time before a session that only shook hands hibernates, ms.
    handshake_quiet_ms: u64,
    asleep: usize,
}

impl SessionTable {
    /// An empty table admitting up to `max` sessions, each using `coap` settings; idle
    /// sessions hibernate after the duplicate window of `coap`'s transmission parameters.
    pub fn new(coap: coap::Config, max: usize) -> SessionTable {
        let p = coap.params;
        SessionTable {
            sessions: Vec::new(),
            max,
            replies: VecDeque::new(),
            drops: VecDeque::new(),
            coap,
            next: 0,
            quiet_ms: p.max_transmit_span() + p.max_latency,
            handshake_quiet_ms: 4 * p.ack_timeout,
            asleep: 0,
        }
    }

    /// Sessions hibernating.
    pub fn asleep(&self) -> usize {
        self.asleep
    }

    /// Hibernates the sessions that have been quiet long enough (see the module docs);
    /// returns how many went to sleep.
    pub fn hibernate_idle(&mut self, now: u64) -> usize {
        let mut n = 0;
        for e in &mut self.sessions {
            let Body::Live(s) = &mut e.body else {
                continue;
            };
            // An observed session (a device's pushed sync) keeps its observer table.
            if s.coap().has_observers() {
                continue;
            }
            let quiet = if e.used {
                self.quiet_ms
            } else {
                self.handshake_quiet_ms
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
        self.asleep += n;
        n
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The session at `index` (stable until a session is removed), to respond or send on
    /// (restored if it hibernates); it is polled for output afterwards.
    pub fn session(&mut self, index: usize) -> Option<&mut GwSession> {
        let coap = self.coap;
        let e = self.sessions.get_mut(index)?;
        if matches!(e.body, Body::Asleep(_)) {
            self.asleep -= 1;
        }
        e.dirty = true;
        e.events = true;
        e.live(coap)
    }

    /// The peer's static key of the session at `index`.
    pub fn peer(&self, index: usize) -> Option<[u8; 32]> {
        self.sessions.get(index).map(|e| e.peer)
    }

    /// Counters of the session at `index`, over its hibernations.
    pub fn stats(&self, index: usize) -> Option<SessionStats> {
        self.sessions.get(index).map(Entry::stats)
    }

    /// Writes the session at `index` for persistence (a hibernating one as it was put away).
    pub fn export(&self, index: usize, out: &mut [u8; RESPONDER_EXPORT_LEN]) -> bool {
        match self.sessions.get(index).map(|e| &e.body) {
            Some(Body::Live(s)) => s.export(out),
            Some(Body::Asleep(x)) => out.copy_from_slice(&x[..]),
            None => return false,
        }
        true
    }

    /// Index of `peer`'s session.
    pub fn find_peer(&self, peer: &[u8; 32]) -> Option<usize> {
        self.sessions.iter().position(|e| e.peer == *peer)
    }

    /// The next CoAP event of any session touched since the last call.
    pub fn poll_event(&mut self) -> Option<(usize, coap::Event)> {
        for (i, e) in self.sessions.iter_mut().enumerate() {
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
        if self.sessions.len() >= self.max {
            return Err(s);
        }
        self.sessions.push(Entry::new(to, s, 0));
        Ok(self.sessions.len() - 1)
    }

    fn drop_packet(&mut self, why: ServerDrop) {
        if self.drops.len() >= 8 {
            self.drops.pop_front();
        }
        self.drops.push_back(why);
    }

    /// Why recent packets were dropped (oldest first).
    pub fn poll_drop(&mut self) -> Option<ServerDrop> {
        self.drops.pop_front()
    }

    fn queue_reject(&mut self, cfg: &ResponderConfig<'_>, from: SocketAddr, code: RejectCode) {
        let mut r = [0u8; REJECT_LEN];
        if cfg.write_reject(code, &mut r).is_ok() && self.replies.len() < 64 {
            self.replies.push_back((from, r));
        }
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
        match classify(packet) {
            None => {
                self.drop_packet(ServerDrop::Empty);
                None
            }
            Some(PacketKind::Handshake) => {
                if let Some(i) = self.sessions.iter_mut().position(|e| match &mut e.body {
                    Body::Live(s) => s.handle_retransmitted_msg1(packet),
                    Body::Asleep(_) => false,
                }) {
                    let e = &mut self.sessions[i];
                    e.addr = from;
                    e.dirty = true;
                    return Some((i, None));
                }
                let msg1 = match cfg.read_msg1(packet, scratch) {
                    Ok(m) => m,
                    Err(e) => {
                        self.queue_reject(cfg, from, e.reject_code());
                        self.drop_packet(ServerDrop::Refused(e));
                        return None;
                    }
                };
                let peer = msg1.peer();
                if let Some(i) = self.sessions.iter().position(|e| e.peer == peer.0) {
                    if matches!(self.sessions[i].body, Body::Asleep(_)) {
                        self.asleep -= 1;
                    }
                    self.sessions.swap_remove(i);
                }
                if self.sessions.len() >= self.max {
                    self.queue_reject(cfg, from, RejectCode::Busy);
                    self.drop_packet(ServerDrop::Full);
                    return None;
                }
                let sessions = &self.sessions;
                let crowded = sessions.len() >= 64;
                let is_free = |id: SessionId| crowded || sessions.iter().all(|e| e.id != id);
                match ServerSession::accept(msg1, rng, is_free, self.coap) {
                    Ok(s) => {
                        self.sessions.push(Entry::new(from, Box::new(s), now));
                        Some((self.sessions.len() - 1, None))
                    }
                    Err(e) => {
                        self.drop_packet(ServerDrop::Refused(e));
                        None
                    }
                }
            }
            Some(PacketKind::Transport(id)) => {
                let mut order: Vec<usize> = self
                    .sessions
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.id == id)
                    .map(|(i, _)| i)
                    .collect();
                if order.is_empty() {
                    self.queue_reject(cfg, from, UNKNOWN_SESSION);
                    self.drop_packet(ServerDrop::UnknownSession);
                    return None;
                }
                order.sort_unstable_by_key(|&i| (self.sessions[i].addr != from, i));
                let mut last = TransportError::Decrypt;
                let mut hit = None;
                for &i in &order {
                    let e = &mut self.sessions[i];
                    let r = match &mut e.body {
                        Body::Live(s) => s.open(packet, scratch),
                        Body::Asleep(x) => {
                            // Restored only if the packet is really its own.
                            match ServerSession::import(&x[..], self.coap) {
                                Ok(mut s) => {
                                    let r = s.open(packet, scratch);
                                    if r.is_ok() {
                                        e.body = Body::Live(Box::new(s));
                                        e.wake = None;
                                        self.asleep -= 1;
                                    }
                                    r
                                }
                                Err(err) => Err(err),
                            }
                        }
                    };
                    match r {
                        Ok(n) => {
                            hit = Some((i, n));
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let Some((i, n)) = hit else {
                    self.drop_packet(ServerDrop::Transport(last));
                    return None;
                };
                let e = &mut self.sessions[i];
                e.addr = from;
                e.dirty = true;
                e.events = true;
                e.active = now;
                e.used = true;
                let data: &'a [u8] = &scratch[..n];
                let Body::Live(s) = &mut e.body else {
                    return None;
                };
                Some((i, s.deliver(now, data)))
            }
        }
    }

    /// The next link packet to send and where to.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if let Some((to, r)) = self.replies.pop_front() {
            let dst = out.get_mut(..REJECT_LEN)?;
            dst.copy_from_slice(&r);
            return Some((to, REJECT_LEN));
        }
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
            if let Some(len) = s.poll_transmit(now, out) {
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

    /// Earliest timer of all sessions.
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.replies.is_empty() {
            return Some(0);
        }
        self.sessions
            .iter()
            .filter_map(|e| if e.dirty { Some(0) } else { e.wake })
            .min()
    }

    /// Advances the timers of the sessions that are due.
    pub fn handle_timeout(&mut self, now: u64) {
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
