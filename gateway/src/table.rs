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
//! Call protocol as for `Server`: [`handle_packet`](SessionTable::handle_packet) each link
//! packet, then [`poll_transmit`](SessionTable::poll_transmit) until `None`;
//! [`poll_timeout`](SessionTable::poll_timeout) / [`handle_timeout`](SessionTable::handle_timeout)
//! for timers. No I/O, no clock.
use alloc::collections::VecDeque;
use core::net::SocketAddr;

use lowband_codec::coap::{self, Received};
use lowband_codec::noise::link::{
    classify, PacketKind, RejectCode, ResponderConfig, SessionId, TransportError, REJECT_LEN,
};
use lowband_codec::session::{ServerDrop, ServerSession, UNKNOWN_SESSION};
use rand_core::{CryptoRng, RngCore};

use crate::transport::COAP_MTU;

/// Exchange slots per session (requests in progress, separate responses).
pub const SLOTS: usize = 16;
/// Message ids remembered per session.
pub const DEDUP: usize = 32;

/// One responder session of `serve`.
pub type GwSession = ServerSession<SLOTS, DEDUP, 1, COAP_MTU>;

/// One session with what the table caches about it (kept inline so that scans over a
/// thousand sessions touch one contiguous vector, not a thousand boxes).
#[derive(Debug)]
struct Entry {
    /// Where replies go.
    addr: SocketAddr,
    /// Cached [`GwSession::id`].
    id: SessionId,
    /// Cached [`GwSession::poll_timeout`], valid while not `dirty`.
    wake: Option<u64>,
    /// Touched since its output was last drained: poll it.
    dirty: bool,
    /// May have CoAP events to report.
    events: bool,
    s: Box<GwSession>,
}

impl Entry {
    fn new(addr: SocketAddr, s: Box<GwSession>) -> Entry {
        Entry {
            addr,
            id: s.id(),
            wake: None,
            dirty: true,
            events: true,
            s,
        }
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
}

impl SessionTable {
    /// An empty table admitting up to `max` sessions, each using `coap` settings.
    pub fn new(coap: coap::Config, max: usize) -> SessionTable {
        SessionTable {
            sessions: Vec::new(),
            max,
            replies: VecDeque::new(),
            drops: VecDeque::new(),
            coap,
            next: 0,
        }
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The session at `index` (stable until a session is removed), to respond or send on;
    /// it is polled for output afterwards.
    pub fn session(&mut self, index: usize) -> Option<&mut GwSession> {
        self.sessions.get_mut(index).map(|e| {
            e.dirty = true;
            e.events = true;
            &mut *e.s
        })
    }

    /// The session at `index`, read-only (stats, peer, export).
    pub fn peek(&self, index: usize) -> Option<&GwSession> {
        self.sessions.get(index).map(|e| &*e.s)
    }

    /// Index of `peer`'s session.
    pub fn find_peer(&self, peer: &[u8; 32]) -> Option<usize> {
        self.sessions.iter().position(|e| e.s.peer().0 == *peer)
    }

    /// The next CoAP event of any session touched since the last call.
    pub fn poll_event(&mut self) -> Option<(usize, coap::Event)> {
        for (i, e) in self.sessions.iter_mut().enumerate() {
            if !e.events {
                continue;
            }
            match e.s.poll_event() {
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
        self.sessions.push(Entry::new(to, s));
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
                if let Some(i) = self
                    .sessions
                    .iter_mut()
                    .position(|e| e.s.handle_retransmitted_msg1(packet))
                {
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
                if let Some(i) = self.sessions.iter().position(|e| e.s.peer() == peer) {
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
                        self.sessions.push(Entry::new(from, Box::new(s)));
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
                    match self.sessions[i].s.open(packet, scratch) {
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
                let data: &'a [u8] = &scratch[..n];
                Some((i, e.s.deliver(now, data)))
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
            if let Some(len) = e.s.poll_transmit(now, out) {
                self.next = (i + 1) % n;
                return Some((e.addr, len));
            }
            // Drained: its timer is settled until it is touched again.
            e.dirty = false;
            e.wake = e.s.poll_timeout();
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
            if e.dirty || e.wake.is_some_and(|w| w <= now) {
                e.s.handle_timeout(now);
                e.dirty = true;
                e.events = true;
            }
        }
    }
}
