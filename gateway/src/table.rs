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

/// Sessions, boxed, with where their replies go.
#[derive(Debug)]
pub struct SessionTable {
    sessions: Vec<(SocketAddr, Box<GwSession>)>,
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

    /// The session at `index` (stable until a session is removed).
    pub fn session(&mut self, index: usize) -> Option<&mut GwSession> {
        self.sessions.get_mut(index).map(|(_, s)| &mut **s)
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
        self.sessions.push((to, s));
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
                    .position(|(_, s)| s.handle_retransmitted_msg1(packet))
                {
                    self.sessions[i].0 = from;
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
                if let Some(i) = self.sessions.iter().position(|(_, s)| s.peer() == peer) {
                    self.sessions.swap_remove(i);
                }
                if self.sessions.len() >= self.max {
                    self.queue_reject(cfg, from, RejectCode::Busy);
                    self.drop_packet(ServerDrop::Full);
                    return None;
                }
                let sessions = &self.sessions;
                let crowded = sessions.len() >= 64;
                let is_free = |id: SessionId| crowded || sessions.iter().all(|(_, s)| s.id() != id);
                match ServerSession::accept(msg1, rng, is_free, self.coap) {
                    Ok(s) => {
                        self.sessions.push((from, Box::new(s)));
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
                    .filter(|(_, (_, s))| s.id() == id)
                    .map(|(i, _)| i)
                    .collect();
                if order.is_empty() {
                    self.queue_reject(cfg, from, UNKNOWN_SESSION);
                    self.drop_packet(ServerDrop::UnknownSession);
                    return None;
                }
                order.sort_unstable_by_key(|&i| (self.sessions[i].0 != from, i));
                let mut last = TransportError::Decrypt;
                let mut hit = None;
                for &i in &order {
                    match self.sessions[i].1.open(packet, scratch) {
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
                let (addr, s) = &mut self.sessions[i];
                *addr = from;
                let data: &'a [u8] = &scratch[..n];
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
            let (to, s) = &mut self.sessions[i];
            if let Some(len) = s.poll_transmit(now, out) {
                self.next = (i + 1) % n;
                return Some((*to, len));
            }
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
            .filter_map(|(_, s)| s.poll_timeout())
            .min()
    }

    /// Advances every session's timers.
    pub fn handle_timeout(&mut self, now: u64) {
        for (_, s) in &mut self.sessions {
            s.handle_timeout(now);
        }
    }
}
