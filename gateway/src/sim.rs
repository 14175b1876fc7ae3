//! `lowband link-sim`: a requester and a responder in one process, over the link emulator, on
//! virtual time.
//!
//! Both ends are the real protocol stack: [`lowband_codec::session`] (Noise IK handshake and
//! transport, CoAP exchanges) over datagram framing ([`lowband_codec::frame`] fragmentation
//! when a packet exceeds the MTU), across a [`lowband_linksim::Link`] with the configured rate,
//! loss, duplication, reordering and corruption. The requester sends `requests` confirmable
//! POSTs of `size` bytes; the responder's application counts how often it saw each one and
//! answers 2.04 Changed with an empty body.

use core::time::Duration;
use alloc::collections::BTreeMap;

use lowband_codec::coap::{self, Code, Options, Received, Request, RequestHandle, TransmissionParams};
use lowband_codec::frame::{Fragmenter, Reassembler};
use lowband_codec::noise::link::{
    InitiatorConfig, LinkPattern, LinkVersion, ResponderConfig, RetransmitConfig, TransportConfig,
};
use lowband_codec::noise::Keypair;
use lowband_codec::noise::link::RESPONDER_EXPORT_LEN;
use lowband_codec::session::{self, Client, Server, ServerSession, SessionEvent};
use lowband_linksim::{Dir, Endpoint, Link, LinkConfig, Pair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// CoAP MTU of the simulated sessions (largest CoAP message).
pub const COAP_MTU: usize = 256;
/// Outgoing exchange slots of each end.
const SLOTS: usize = 8;
/// Message ids the requester remembers (it gets few requests).
const DEDUP: usize = 4;
/// Message ids the responder remembers: every request of an EXCHANGE_LIFETIME must fit, or
/// new requests are dropped until old entries expire (never delivered twice).
const SERVER_DEDUP: usize = 256;
/// Largest link packet.
const PACKET: usize = session::max_packet_len(COAP_MTU);

type SimClient = Client<ChaCha20Rng, SLOTS, DEDUP, 1, COAP_MTU>;
type SimServer = Server<u8, 2, SLOTS, SERVER_DEDUP, 1, COAP_MTU>;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Bit rate of each direction, bit/s.
    pub rate: u64,
    /// Frame loss probability.
    pub loss: f64,
    /// Frame duplication probability.
    pub dup: f64,
    /// Frame reordering probability.
    pub reorder: f64,
    /// Probability that a frame gets a bit flipped.
    pub corrupt: f64,
    /// Largest datagram on the link; bigger packets are fragmented.
    pub mtu: usize,
    /// Seed of the link model and the keys.
    pub seed: u64,
    /// How many requests.
    pub requests: usize,
    /// Payload bytes of each request.
    pub size: usize,
    /// One-way latency on top of the airtime.
    pub latency_ms: u64,
    /// Requests in flight at once (CoAP NSTART).
    pub nstart: u8,
    /// After this many completed requests, stop issuing for `.1` ms (idle period).
    pub idle: Option<(usize, u64)>,
    /// After this many completed requests, the requester's address changes (NAT rebinding).
    pub rebind: Option<usize>,
    /// After this many completed requests, the responder restarts, keeping its sessions
    /// (`true`, exported and imported) or losing them (`false`).
    pub restart: Option<(usize, bool)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            rate: 100,
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            mtu: 1024,
            seed: 1,
            requests: 10,
            size: 30,
            latency_ms: 0,
            nstart: 4,
            idle: None,
            rebind: None,
            restart: None,
        }
    }
}

/// The outcome; see [`SimReport::HEADER`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Requests issued.
    pub requests: usize,
    /// Requests whose response arrived.
    pub completed: usize,
    /// Requests that failed with an error (deadline, retransmissions exhausted).
    pub failed: usize,
    /// Extra deliveries of a request to the responder's application (must be 0).
    pub duplicates_delivered: usize,
    /// Requests neither completed nor failed when the simulation stopped (must be 0).
    pub unresolved: usize,
    /// Bytes put on the link, both directions, handshake and retransmissions included.
    pub bytes_on_link: u64,
    /// Virtual time until the last request was resolved, in milliseconds.
    pub virtual_ms: u64,
    /// Handshakes the requester made.
    pub handshakes: u32,
    /// Packets the responder addressed to where the requester no longer was.
    pub misaddressed: usize,
}

impl SimReport {
    /// Tab-separated header of [`row`](Self::row).
    pub const HEADER: &'static str =
        "requests\tcompleted\tfailed\tduplicates_delivered\tbytes_on_link\tvirtual_seconds";

    /// The tab-separated row.
    pub fn row(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{:.1}",
            self.requests,
            self.completed,
            self.failed,
            self.duplicates_delivered,
            self.bytes_on_link,
            self.virtual_ms as f64 / 1000.0
        )
    }

    /// Whether every request was resolved and none was delivered twice.
    pub fn is_sound(&self) -> bool {
        self.duplicates_delivered == 0 && self.unresolved == 0
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Splits link packets into datagrams of at most `mtu` bytes and reassembles them.
#[derive(Debug)]
struct Datagrams {
    mtu: usize,
    frag: Fragmenter,
    reasm: Reassembler<4, PACKET>,
    out: alloc::collections::VecDeque<Vec<u8>>,
}

impl Datagrams {
    fn new(mtu: usize, reassembly_timeout_ms: u64) -> Self {
        Datagrams {
            mtu,
            frag: Fragmenter::new(),
            reasm: Reassembler::new(reassembly_timeout_ms),
            out: Default::default(),
        }
    }

    fn push(&mut self, packet: &[u8]) {
        match self.frag.fragment(packet, self.mtu) {
            Ok(frags) => {
                for f in frags {
                    let mut d = vec![0u8; f.len()];
                    if let Ok(n) = f.emit(&mut d) {
                        d.truncate(n);
                        self.out.push_back(d);
                    }
                }
            }
            Err(e) => tracing::warn!(?e, len = packet.len(), "packet not sent"),
        }
    }

    fn receive<'a>(&'a mut self, now: u64, d: &'a [u8]) -> Option<&'a [u8]> {
        self.reasm.handle_datagram(now, d).ok().flatten()
    }
}

/// The requester: a session client issuing numbered requests.
#[derive(Debug)]
struct Requester {
    client: SimClient,
    link: Datagrams,
    total: usize,
    size: usize,
    issued: usize,
    inflight: std::collections::HashMap<RequestHandle, usize>,
    completed: usize,
    failed: usize,
    last_resolved_ms: u64,
    hold_at: Option<usize>,
    hold_ms: u64,
    hold_until: u64,
}

impl Requester {
    fn issue(&mut self, now: u64) {
        if self.hold_until > now {
            return;
        }
        if let Some(at) = self.hold_at.filter(|&at| self.issued >= at) {
            if self.completed < at {
                return;
            }
            self.hold_at = None;
            self.hold_until = now + self.hold_ms;
            return;
        }
        while self.issued < self.total && self.hold_at.is_none_or(|at| self.issued < at) {
            let mut body = vec![0u8; self.size.max(4)];
            body[..4].copy_from_slice(&(self.issued as u32).to_be_bytes());
            let req = Request::con(Code::POST, Options::NONE, &body);
            match self.client.request(now, req) {
                Ok(h) => {
                    self.inflight.insert(h, self.issued);
                    self.issued += 1;
                }
                Err(_) => break,
            }
        }
    }

    fn resolved(&self) -> usize {
        self.completed + self.failed
    }

    fn pump_events(&mut self, now: u64) {
        while let Some(e) = self.client.poll_event() {
            if let SessionEvent::Coap(coap::Event::Failed { handle, error }) = e {
                if std::env::var_os("LOWBAND_SIM_TRACE").is_some() {
                    eprintln!("{now} failed {handle:?} {error:?}");
                }
                if self.inflight.remove(&handle).is_some() {
                    tracing::debug!(?error, "request failed");
                    self.failed += 1;
                    self.last_resolved_ms = now;
                }
            }
        }
    }
}

impl Endpoint for Requester {
    fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        let now = ms(now);
        self.issue(now);
        if self.link.out.is_empty() {
            let mut buf = [0u8; PACKET];
            if let Some(n) = self.client.poll_transmit(now, &mut buf) {
                self.link.push(&buf[..n]);
            }
        }
        self.pump_events(now);
        self.link.out.pop_front()
    }

    fn handle_receive(&mut self, now: Duration, data: &[u8]) {
        let now = ms(now);
        if std::env::var_os("LOWBAND_SIM_TRACE").is_some() {
            eprintln!("{now} A<-B {} bytes", data.len());
        }
        let Some(packet) = self.link.receive(now, data) else { return };
        let packet = packet.to_vec();
        let mut scratch = [0u8; COAP_MTU];
        if let Some(Received::Response(r)) = self.client.handle_packet(now, &packet, &mut scratch) {
            if std::env::var_os("LOWBAND_SIM_TRACE").is_some() {
                eprintln!("{now} response {:?} last={}", r.handle, r.last);
            }
            if r.last && self.inflight.remove(&r.handle).is_some() {
                self.completed += 1;
                self.last_resolved_ms = now;
            }
        }
        self.pump_events(now);
        self.issue(now);
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        let hold = (self.hold_until > 0).then_some(self.hold_until);
        let t = [self.client.poll_timeout(), self.link.reasm.poll_timeout(), hold].into_iter().flatten().min();
        if !self.link.out.is_empty() {
            return Some(Duration::ZERO);
        }
        t.map(Duration::from_millis)
    }

    fn handle_timeout(&mut self, now: Duration) {
        let now = ms(now);
        if self.hold_until > 0 && now >= self.hold_until {
            self.hold_until = 0;
            self.issue(now);
        }
        self.client.handle_timeout(now);
        self.link.reasm.handle_timeout(now);
        self.pump_events(now);
    }
}

/// The responder: a session server whose application counts deliveries.
#[derive(Debug)]
struct Responder {
    server: SimServer,
    keys: ResponderKeys,
    rng: ChaCha20Rng,
    link: Datagrams,
    seen: BTreeMap<u32, usize>,
    /// The address the requester's packets come from now.
    peer_addr: u8,
    /// Packets the server addressed elsewhere (lost in a real network).
    misaddressed: usize,
}

#[derive(Debug)]
struct ResponderKeys {
    local: Keypair,
    allowed: Vec<lowband_codec::noise::PublicKey>,
    version: LinkVersion,
}

impl Endpoint for Responder {
    fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        let now = ms(now);
        if self.link.out.is_empty() {
            let mut buf = [0u8; PACKET];
            while let Some((to, n)) = self.server.poll_transmit(now, &mut buf) {
                if to == self.peer_addr {
                    self.link.push(&buf[..n]);
                    break;
                }
                self.misaddressed += 1;
            }
        }
        self.link.out.pop_front()
    }

    fn handle_receive(&mut self, now: Duration, data: &[u8]) {
        let now = ms(now);
        let Some(packet) = self.link.receive(now, data) else { return };
        let packet = packet.to_vec();
        let versions = [self.keys.version];
        let cfg = ResponderConfig {
            local: &self.keys.local,
            versions: &versions,
            known_versions: &[],
            allowed: &self.keys.allowed,
            accept_ik: true,
            accept_kk: true,
            transport: TransportConfig::default(),
        };
        let mut scratch = [0u8; PACKET];
        let got =
            self.server.handle_packet(now, &cfg, &mut self.rng, self.peer_addr, &packet, &mut scratch);
        if let Some((i, Some(Received::Request(req)))) = got {
            let n = req.payload.get(..4).map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            *self.seen.entry(n).or_default() += 1;
            let responder = req.responder;
            if let Some(s) = self.server.session(i) {
                let _ = s.coap().respond(now, &responder, Code::CHANGED, Options::NONE, &[]);
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.link.out.is_empty() {
            return Some(Duration::ZERO);
        }
        [self.server.poll_timeout(), self.link.reasm.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(Duration::from_millis)
    }

    fn handle_timeout(&mut self, now: Duration) {
        let now = ms(now);
        self.server.handle_timeout(now);
        self.link.reasm.handle_timeout(now);
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Rebind,
    Restart(bool),
}

/// Transmission parameters of both ends for `cfg`'s link.
pub fn params_for(cfg: &SimConfig) -> TransmissionParams {
    // The round trip a request may wait for: NSTART exchanges of typical size queued ahead.
    let frame = (80 * usize::from(cfg.nstart.max(1))).min(u16::MAX as usize) as u16;
    let mut p = TransmissionParams::for_link(
        u32::try_from(cfg.rate).unwrap_or(u32::MAX),
        frame / 2,
        u32::try_from(cfg.latency_ms).unwrap_or(u32::MAX),
    );
    p.nstart = cfg.nstart.max(1);
    // Lossy radio links: the RFC's 4 retransmissions fail 3% of requests at 30% loss.
    p.max_retransmit = 8;
    p
}

/// Runs the simulation to the end (every request resolved, or a virtual-time cap).
///
/// Runs on a thread with a large stack: the session state machines are built by value.
pub fn run(cfg: &SimConfig) -> SimReport {
    let cfg = cfg.clone();
    crate::transport::on_big_stack(move || run_here(&cfg))
}

fn run_here(cfg: &SimConfig) -> SimReport {
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let gateway = Keypair::generate(&mut rng);
    let device = Keypair::generate(&mut rng);
    let version = LinkVersion { protocol: 1, dict: 1 };
    let params = params_for(cfg);
    let coap_cfg = |seed| coap::Config { params, seed, token_len: 1, extra_options: &[] };
    let init = InitiatorConfig {
        pattern: LinkPattern::IK,
        version,
        remote: gateway.public(),
        local: device.clone(),
        retransmit: RetransmitConfig::for_link_rate(u32::try_from(cfg.rate).unwrap_or(u32::MAX), 0),
        transport: TransportConfig::default(),
    };
    let reasm_timeout = params.ack_timeout * 2;
    // INVARIANT: a freshly generated pinned key is valid, so building msg1 cannot fail.
    let client = SimClient::new(init, coap_cfg(cfg.seed ^ 0x5eed), ChaCha20Rng::seed_from_u64(cfg.seed ^ 1))
        .expect("msg1 with a fresh key");
    let requester = Requester {
        client,
        link: Datagrams::new(cfg.mtu, reasm_timeout),
        total: cfg.requests,
        size: cfg.size,
        issued: 0,
        inflight: Default::default(),
        completed: 0,
        failed: 0,
        last_resolved_ms: 0,
        hold_at: cfg.idle.map(|(at, _)| at),
        hold_ms: cfg.idle.map_or(0, |(_, ms)| ms),
        hold_until: 0,
    };
    let responder = Responder {
        server: SimServer::new(coap_cfg(cfg.seed ^ 0xfeed)),
        keys: ResponderKeys { allowed: vec![device.public()], local: gateway, version },
        rng: ChaCha20Rng::seed_from_u64(cfg.seed ^ 2),
        link: Datagrams::new(cfg.mtu, reasm_timeout),
        seen: BTreeMap::new(),
        peer_addr: 0,
        misaddressed: 0,
    };
    let link_cfg = LinkConfig {
        rate_bps: cfg.rate,
        latency: Duration::from_millis(cfg.latency_ms),
        loss: cfg.loss,
        duplicate: cfg.dup,
        reorder: cfg.reorder,
        reorder_delay: Duration::from_millis(2 * params.ack_timeout / 3),
        corrupt: cfg.corrupt,
        mtu: Some(cfg.mtu),
        ..LinkConfig::default()
    };
    let mut pair = Pair::new(requester, responder, Link::symmetric(link_cfg, cfg.seed));
    // Generous cap: every request may use its whole deadline, one after the other.
    let cap = Duration::from_millis(params.default_deadline().saturating_mul(cfg.requests as u64 + 4));
    let total = cfg.requests;
    let mut events: Vec<(usize, Event)> = Vec::new();
    if let Some(at) = cfg.rebind {
        events.push((at, Event::Rebind));
    }
    if let Some((at, keep)) = cfg.restart {
        events.push((at, Event::Restart(keep)));
    }
    events.sort_by_key(|e| e.0);
    for (at, ev) in events {
        let _ = pair.drive_until(cap, |a: &Requester, _| a.resolved() >= at.min(total));
        let b = &mut pair.b;
        match ev {
            Event::Rebind => b.peer_addr = b.peer_addr.wrapping_add(1),
            Event::Restart(keep) => {
                let coap = coap_cfg(cfg.seed ^ 0xbeef);
                let mut saved = Vec::new();
                if keep {
                    for i in 0..b.server.len() {
                        if let Some(s) = b.server.session(i) {
                            let mut out = [0u8; RESPONDER_EXPORT_LEN];
                            s.export(&mut out);
                            saved.push(out);
                        }
                    }
                }
                // A new process: nothing but what was persisted survives.
                b.server = SimServer::new(coap);
                for bytes in saved {
                    match ServerSession::import(&bytes, coap) {
                        Ok(s) => {
                            let _ = b.server.insert(b.peer_addr, s);
                        }
                        Err(e) => tracing::warn!(?e, "session not restored"),
                    }
                }
            }
        }
    }
    let _ = pair.drive_until(cap, |a: &Requester, _| a.resolved() >= total);
    let a = &pair.a;
    let b = &pair.b;
    let duplicates_delivered = b.seen.values().map(|&n| n.saturating_sub(1)).sum();
    let bytes_on_link =
        pair.link.counters(Dir::AtoB).bytes_on_link + pair.link.counters(Dir::BtoA).bytes_on_link;
    SimReport {
        requests: total,
        completed: a.completed,
        failed: a.failed,
        duplicates_delivered,
        unresolved: total - a.resolved().min(total),
        bytes_on_link,
        virtual_ms: a.last_resolved_ms,
        handshakes: a.client.stats().handshakes,
        misaddressed: b.misaddressed,
    }
}
