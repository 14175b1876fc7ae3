//! `lowband serve`: the gateway next to the homeserver.
//!
//! One UDP socket, one [`SessionTable`] (the codec's `Server` demultiplexer over sessions that
//! hibernate when idle) holding every tunnel's or device's session (demultiplexed
//! by session id and key, never by address), and one HTTP client that talks to the configured
//! homeserver only: a request's target is always resolved against `--homeserver`, so the
//! gateway is not an open proxy. Keys not on the allow list are refused at the handshake and
//! get nothing else.
//!
//! ```text
//!   UDP ──► Datagrams ──► Server::handle_packet ──► wire::decode_request ──► spawn HTTP
//!   UDP ◄── Datagrams ◄── Server::poll_transmit ◄── respond (piggybacked or separate)  ◄─┘
//! ```
//!
//! Each request runs on its own task; the CoAP endpoint sends the response piggybacked on its
//! ACK when the homeserver is quick, else as a separate response (long-polling `/sync`).
//! Bodies over one block travel block-wise: uploads as Block1 requests reassembled here, large
//! responses kept under a [`wire::opt::BODY`] id and fetched block by block (RFC 7959).
use alloc::collections::BTreeMap;
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use lowband_codec::coap::{
    BlockOpt, Code, IncomingRequest, Opt, OptionList, Options, Received, Responder,
};
use lowband_codec::noise::link::RESPONDER_EXPORT_LEN;
use lowband_codec::noise::link::{ResponderConfig, TransportConfig};
use lowband_codec::noise::{Keypair, PublicKey};
use lowband_codec::session::ServerSession;
use rand_chacha::rand_core::{OsRng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::alias::{ServeAliases, ALIAS};
use crate::logging::redact_url;
use crate::metrics::{Direction, Handshake, Metrics};
use crate::observe::{Cycle, PushKind, ServeStreams, SEQ, WATCH};
use crate::persist::{Store, Tracker};
use crate::serial::SerialLink;
use crate::syncstate::{ServeSync, SyncCtx, SYNC};
use crate::table::SessionTable;
use crate::transport::{now_ms, Datagrams, LinkParams, BLOCK_SZX, PACKET, VERSION};
use crate::wire::{self, opt, Auth, HttpRequest, HttpResponse, TokenRegistry, WireResponse};

/// Sessions one gateway holds by default ([`ServeConfig::max_sessions`]).
pub const SESSIONS: usize = 1024;

/// How long a large response body waits to be fetched.
const BODY_TTL_MS: u64 = 600_000;
/// Longest a homeserver request may take (long-polls included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

/// The peer address standing for the serial link (never a UDP source: port 0).
pub const SERIAL_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
/// Where a restored session's replies go until its peer is heard from (nowhere).
const RESTORED_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1));
/// Datagrams taken from the socket in one loop turn after the first.
const RECV_BATCH: usize = 31;
/// Received-packet progress of a session is persisted at most this often.
const PERSIST_PERIOD_MS: u64 = 1_000;

/// `serve` settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// UDP address to listen on, if any.
    pub listen: Option<SocketAddr>,
    /// Serial device and its speed (bit/s) carrying a link to one peer, if any.
    pub serial: Option<(PathBuf, u32)>,
    /// The homeserver's base URL (`http://host:port`, no path).
    pub homeserver: String,
    /// Our static key.
    pub key: [u8; 32],
    /// Peers admitted.
    pub allowed: Vec<[u8; 32]>,
    /// Link properties.
    pub link: LinkParams,
    /// Where to write per-session byte counters (JSON), for tests and operators.
    pub stats_file: Option<PathBuf>,
    /// Where sessions and device cursors are persisted across restarts, if anywhere.
    pub state_dir: Option<PathBuf>,
    /// Counters for the metrics endpoint.
    pub metrics: Metrics,
    /// Most sessions held at once; a handshake beyond gets a "busy" reject.
    pub max_sessions: usize,
    /// Where federation requests go (`None`: refused).
    pub federation: Option<crate::federation::FederationConfig>,
}

impl Default for ServeConfig {
    /// No listener, no homeserver, nobody allowed: fill in what you need.
    fn default() -> Self {
        ServeConfig {
            listen: None,
            serial: None,
            homeserver: String::new(),
            key: [0; 32],
            allowed: Vec::new(),
            link: LinkParams {
                rate: 9600,
                mtu: 1024,
            },
            stats_file: None,
            state_dir: None,
            metrics: Metrics::new(),
            max_sessions: SESSIONS,
            federation: None,
        }
    }
}

/// A homeserver answer for a session's request.
#[derive(Debug)]
struct Done {
    peer: [u8; 32],
    responder: Responder,
    response: HttpResponse,
    sync: Option<SyncCtx>,
    /// A watch (crate::observe): stream number, params, access token.
    watch: Option<(u8, String, Option<String>)>,
    /// A write with pushed streams running: its answer carries the push barrier
    /// (crate::observe::SEQ), after the streams' probes (and their answers).
    write: bool,
    probes: Vec<(Cycle, HttpResponse)>,
}

/// A homeserver long-poll of a watched stream came back (crate::observe).
#[derive(Debug)]
struct CycleDone {
    peer: [u8; 32],
    cycle: Cycle,
    response: HttpResponse,
}

#[derive(Debug, Default)]
struct Peer {
    tokens: TokenRegistry,
    uploads: BTreeMap<u32, Vec<u8>>,
    bodies: BTreeMap<u32, (Vec<u8>, u64)>,
    next_body: u32,
    sync: ServeSync,
    aliases: ServeAliases,
    fed_aliases: crate::federation::AliasRegistry,
    observe: ServeStreams,
    /// Link bytes of pushed sync results (notifications and their ACKs).
    observe_bytes: u64,
    /// Datagrams of pushed sync results (notifications and their ACKs).
    observe_packets: u64,
    /// A small device's announcement ([`opt::SMALL`]): plain bodies, blocks of 2^(4+szx).
    small: Option<u8>,
}

struct State {
    server: SessionTable,
    key: Keypair,
    allowed: Vec<PublicKey>,
    rng: ChaCha20Rng,
    links: BTreeMap<SocketAddr, Datagrams>,
    link: LinkParams,
    peers: BTreeMap<[u8; 32], Peer>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    homeserver: String,
    federation: Option<alloc::sync::Arc<crate::federation::Federation>>,
    done_tx: mpsc::UnboundedSender<Done>,
    cycle_tx: mpsc::UnboundedSender<CycleDone>,
    /// Peers with a notification in flight.
    pushing: Vec<[u8; 32]>,
    stats_dirty: bool,
    metrics: Metrics,
    store: Option<Store>,
    tracker: Tracker,
    /// The device profile's cursors (crate::devices).
    devices: crate::devices::Devices,
}

/// Runs the gateway until an I/O error.
///
/// # Errors
/// Binding the socket, a bad homeserver URL, socket errors.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let homeserver = cfg.homeserver.trim_end_matches('/').to_owned();
    let uri: hyper::Uri = homeserver.parse()?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.path() == "/",
        "--homeserver must be http://host:port (no path; https is not supported yet)"
    );
    let federation = match &cfg.federation {
        Some(f) => Some(alloc::sync::Arc::new(crate::federation::Federation::new(
            f,
        )?)),
        None => None,
    };
    anyhow::ensure!(
        cfg.listen.is_some() || cfg.serial.is_some(),
        "serve needs a UDP listener and/or a serial port"
    );
    let socket = match cfg.listen {
        Some(a) => {
            let s = UdpSocket::bind(a).await?;
            tracing::info!(addr = %s.local_addr()?, "serve: listening");
            Some(s)
        }
        None => None,
    };
    let mut serial = match &cfg.serial {
        Some((path, baud)) => {
            let l = crate::serial::open(path, *baud)?;
            tracing::info!(path = %path.display(), baud, "serve: serial link open");
            Some(l)
        }
        None => None,
    };
    let link = cfg.link;
    let seed = rand_core::RngCore::next_u64(&mut OsRng);
    let mut server = SessionTable::new(link.coap(seed), cfg.max_sessions);
    let store = match &cfg.state_dir {
        Some(d) => Some(Store::open(d)?),
        None => None,
    };
    let restored_to = if socket.is_none() {
        SERIAL_ADDR
    } else {
        RESTORED_ADDR
    };
    // Device cursors live next to the sessions when there is a state directory; loaded first:
    // a device's restored session sends first where the device was last heard from.
    let (mut devices, mut dev_rx) = match &cfg.state_dir {
        Some(d) => crate::devices::Devices::with_state_dir(d)?,
        None => crate::devices::Devices::new(),
    };
    devices.retain(|peer| cfg.allowed.contains(peer));
    let first_to = |peer: &[u8; 32]| match devices.address(peer) {
        Some(a) if a == SERIAL_ADDR && serial.is_some() => a,
        Some(a) if !a.ip().is_unspecified() && socket.is_some() => a,
        _ => restored_to,
    };
    if let Some(store) = &store {
        for e in store.load() {
            match ServerSession::import(&e, link.coap(seed ^ server.len() as u64)) {
                Ok(s) => {
                    let peer = s.peer();
                    if !cfg.allowed.contains(&peer.0) {
                        tracing::info!(
                            "serve: persisted session of a key no longer allowed; dropped"
                        );
                        store.remove(&peer.0);
                    } else if server.insert(first_to(&peer.0), Box::new(s)).is_err() {
                        tracing::warn!("serve: session table full; persisted session dropped");
                    }
                }
                Err(e) => tracing::warn!(?e, "serve: persisted session unreadable; dropped"),
            }
        }
        tracing::info!(sessions = server.len(), "serve: sessions restored");
    }
    cfg.metrics.set_sessions(server.len());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (cycle_tx, mut cycle_rx) = mpsc::unbounded_channel();
    let mut st = State {
        server,
        key: Keypair::from_secret(cfg.key),
        allowed: cfg.allowed.iter().map(|k| PublicKey(*k)).collect(),
        rng: ChaCha20Rng::from_entropy(),
        links: BTreeMap::new(),
        link,
        peers: BTreeMap::new(),
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
        homeserver,
        federation,
        done_tx,
        cycle_tx,
        pushing: Vec::new(),
        stats_dirty: false,
        metrics: cfg.metrics.clone(),
        store,
        tracker: Tracker::new(PERSIST_PERIOD_MS),
        devices,
    };
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut last_stats = Instant::now();
    // Restored sessions count as written.
    st.persist(0, false);
    // Restored devices lost their observation and token here: they register again at once.
    st.devices.wake_restored(now_ms(start), &mut st.server);
    st.server.release_memory();
    loop {
        let now = now_ms(start);
        let wake = [st.server.poll_timeout()]
            .into_iter()
            .chain(st.links.values().map(Datagrams::poll_timeout))
            .flatten()
            .min()
            .unwrap_or(now + 60_000);
        // Live sessions may go to sleep: look at least once a second.
        let wake = if st.server.len() > st.server.asleep() {
            wake.min(now + 1_000)
        } else {
            wake
        };
        // Counters and sessions still to be written wake the loop too.
        let wake = if st.persist_pending() {
            wake.min(now + PERSIST_PERIOD_MS)
        } else {
            wake
        };
        let wake = if st.stats_dirty {
            wake.min(now + 60)
        } else {
            wake
        };
        let sleep = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now)));
        tokio::select! {
            r = recv_udp(socket.as_ref(), &mut buf) => {
                match r {
                    Ok((n, from)) => {
                        st.on_datagram(now_ms(start), from, &buf[..n]);
                        // Take what else is queued before flushing (fewer loop turns
                        // under load).
                        if let Some(sock) = &socket {
                            for _ in 0..RECV_BATCH {
                                let Ok((n, from)) = sock.try_recv_from(&mut buf) else {
                                    break;
                                };
                                st.on_datagram(now_ms(start), from, &buf[..n]);
                            }
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            d = recv_serial(serial.as_mut()) => match d {
                Some(d) => st.on_datagram(now_ms(start), SERIAL_ADDR, &d),
                None => anyhow::bail!("serve: the serial link stopped"),
            },
            Some(d) = done_rx.recv() => st.on_done(now_ms(start), d),
            Some(b) = dev_rx.recv() => st.devices.on_batch(b),
            Some(d) = cycle_rx.recv() => st.on_cycle(now_ms(start), d),
            () = sleep => {
                let now = now_ms(start);
                st.server.handle_timeout(now);
                for l in st.links.values_mut() {
                    l.handle_timeout(now);
                }
            }
        }
        st.flush(now_ms(start), socket.as_ref(), serial.as_ref())
            .await;
        if !st.pushing.is_empty() {
            st.observe_progress(now_ms(start));
            st.flush(now_ms(start), socket.as_ref(), serial.as_ref())
                .await;
        }
        let slept = st.server.hibernate_idle(now_ms(start));
        st.metrics.set_sessions_asleep(st.server.asleep());
        st.metrics.retransmissions(st.server.take_retransmissions());
        if slept > 0 {
            st.forget_idle_links();
            tracing::debug!(
                slept,
                asleep = st.server.asleep(),
                "serve: sessions hibernated"
            );
        }
        if st.stats_dirty && last_stats.elapsed() >= Duration::from_millis(50) {
            if let Some(p) = &cfg.stats_file {
                st.write_stats(p);
            }
            st.stats_dirty = false;
            last_stats = Instant::now();
        }
    }
}

/// The next UDP datagram, or never without a socket.
async fn recv_udp(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => core::future::pending().await,
    }
}

/// The next serial datagram (`None`: the link stopped), or never without a serial link.
async fn recv_serial(serial: Option<&mut SerialLink>) -> Option<Vec<u8>> {
    match serial {
        Some(l) => l.rx.recv().await,
        None => core::future::pending().await,
    }
}

impl State {
    fn on_datagram(&mut self, now: u64, from: SocketAddr, d: &[u8]) {
        self.metrics.link_packet(Direction::In, d.len());
        let reasm_timeout = 2 * self.link.transmission().ack_timeout;
        let mtu = self.link.mtu;
        let link = self
            .links
            .entry(from)
            .or_insert_with(|| Datagrams::new(mtu, reasm_timeout));
        let Some(packet) = link.receive(now, d) else {
            return;
        };
        let packet = packet.to_vec();
        // Tunnels speak VERSION; devices may speak the device profile's (4-byte tags).
        let versions = [VERSION, lowband_codec::lb::dev::LINK_VERSION];
        let cfg = ResponderConfig {
            local: &self.key,
            versions: &versions,
            known_versions: &[],
            allowed: &self.allowed,
            accept_ik: true,
            accept_kk: false,
            transport: TransportConfig::default(),
        };
        let mut scratch = vec![0u8; PACKET];
        let got = self
            .server
            .handle_packet(now, &cfg, &mut self.rng, from, &packet, &mut scratch);
        while let Some(drop) = self.server.poll_drop() {
            if let lowband_codec::session::ServerDrop::Refused(e) = drop {
                self.metrics.handshake(Handshake::Refused);
                tracing::info!(?e, %from, "serve: handshake refused");
            } else {
                tracing::debug!(?drop, %from, "serve: packet dropped");
            }
        }
        if let Some((i, None)) = &got {
            if let (Some(st), Some(peer)) = (self.server.stats(*i), self.server.peer(*i)) {
                // A new session: accepted, msg2 not yet sent (a retransmitted msg1 has).
                if st.handshakes == 1 && st.packets_out == 0 {
                    self.metrics.handshake(Handshake::Ok);
                    self.tracker.forget(&peer);
                    tracing::info!(peer = %crate::keys::encode_key(&peer), "serve: handshake ok");
                }
            }
        }
        self.metrics.set_sessions(self.server.len());
        self.stats_dirty = true;
        let Some((i, got)) = got else {
            return;
        };
        let peer = self.server.peer(i);
        match got {
            Some(Received::Request(req)) => self.on_request(now, i, req),
            Some(Received::Response(r)) => {
                if let Some(p) = &peer {
                    self.devices.wake_done(p, r.handle, Ok(r.code));
                }
            }
            None => {}
        }
        if let Some(p) = &peer {
            self.devices.heard_from(p, from);
        }
    }

    fn respond(
        &mut self,
        now: u64,
        i: usize,
        to: &Responder,
        code: Code,
        opts: Options<'_>,
        payload: &[u8],
    ) {
        if let Some(s) = self.server.session(i) {
            if let Err(e) = s.coap().respond(now, to, code, opts, payload) {
                tracing::warn!(?e, "serve: response not sent");
            }
        }
    }

    fn respond_error(
        &mut self,
        now: u64,
        i: usize,
        to: &Responder,
        status: u16,
        errcode: &str,
        msg: &str,
    ) {
        let r = HttpResponse::matrix_error(status, errcode, msg);
        match WireResponse::encode(&r) {
            Ok(w) => {
                let mut l = w.options();
                let o = l.as_options();
                self.respond(now, i, to, w.code, o, &w.body.bytes);
            }
            Err(e) => tracing::warn!(%e, "serve: error response not encoded"),
        }
    }

    fn on_request(&mut self, now: u64, i: usize, req: IncomingRequest<'_>) {
        let Some(peer) = self.server.peer(i) else {
            return;
        };
        let mut p = self.peers.remove(&peer).unwrap_or_default();
        // The tunnel's feed (crate::observe); a device registers for its pushed sync with the
        // device option (crate::devices).
        if req.code == Code::GET
            && req.observe == Some(lowband_codec::coap::observe::REGISTER)
            && !crate::devices::Devices::is_device_request(&req)
        {
            self.on_feed(now, i, &mut p, &req.responder);
        } else {
            self.on_request_of(now, i, peer, &mut p, req);
        }
        self.peers.insert(peer, p);
    }

    fn on_request_of(
        &mut self,
        now: u64,
        i: usize,
        peer: [u8; 32],
        p: &mut Peer,
        req: IncomingRequest<'_>,
    ) {
        let to = req.responder;
        p.bodies.retain(|_, (_, exp)| *exp > now);
        // A block of a kept response body.
        if let Some(id) = req.options.uint(opt::BODY) {
            let want = BlockOpt::from_options(&req.options, opt::BLOCK2)
                .ok()
                .flatten();
            let Some((body, _)) = p.bodies.get(&id) else {
                return self.respond(now, i, &to, Code::NOT_FOUND, Options::NONE, &[]);
            };
            match lowband_codec::coap::block_slice(body, want, p.small.unwrap_or(BLOCK_SZX)) {
                Ok((b, slice)) => {
                    let slice = slice.to_vec();
                    if !b.more {
                        p.bodies.remove(&id);
                    }
                    let o = [Opt::uint(opt::BLOCK2, b.to_uint())];
                    self.respond(now, i, &to, Code::CONTENT, Options::List(&o), &slice);
                }
                Err(e) => self.respond(now, i, &to, e.code(), Options::NONE, &[]),
            }
            return;
        }
        // The access token.
        let token = match req
            .options
            .first(opt::AUTH)
            .and_then(|o| o.as_bytes())
            .map(Auth::parse)
        {
            None => None,
            Some(Err(_)) => {
                return self.respond_error(
                    now,
                    i,
                    &to,
                    400,
                    "M_UNKNOWN",
                    "lowband: bad token option",
                )
            }
            Some(Ok(a)) => match p.tokens.resolve(&a) {
                Some(t) => Some(t),
                None => {
                    // Unknown number: the tunnel registers the token again and retries.
                    let o = [Opt::bytes(opt::AUTH, &[])];
                    return self.respond(now, i, &to, Code::new(4, 12), Options::List(&o), &[]);
                }
            },
        };
        // A small device's announcement, with its token registration.
        if let Some(szx) = req.options.uint(opt::SMALL) {
            p.small = Some(u8::try_from(szx).unwrap_or(BLOCK_SZX).min(BLOCK_SZX));
        }
        // Alias definitions (crate::alias), on every block.
        let defs = req.options.iter().filter(|o| o.number == ALIAS);
        if p.aliases.define(defs.filter_map(|o| o.as_bytes())).is_err() {
            return self.respond_error(now, i, &to, 400, "M_UNKNOWN", "lowband: bad alias");
        }
        if crate::devices::Devices::is_device_request(&req) {
            return self.device_request(now, i, peer, p, &req, token);
        }
        // Block1 upload.
        let block1 = match BlockOpt::from_options(&req.options, opt::BLOCK1) {
            Ok(b) => b,
            Err(e) => return self.respond(now, i, &to, e.code(), Options::NONE, &[]),
        };
        let tag = req.options.uint(opt::UPLOAD).unwrap_or(0);
        let mut payload = req.payload.to_vec();
        if let Some(b) = block1 {
            let have = p.uploads.remove(&tag).unwrap_or_default();
            if b.offset() != have.len() || (b.more && req.payload.len() != b.size()) {
                return self.respond(
                    now,
                    i,
                    &to,
                    Code::REQUEST_ENTITY_INCOMPLETE,
                    Options::NONE,
                    &[],
                );
            }
            let mut all = have;
            all.extend_from_slice(req.payload);
            if all.len() > wire::MAX_MEDIA {
                return self.respond_error(
                    now,
                    i,
                    &to,
                    413,
                    "M_TOO_LARGE",
                    "lowband: body too large",
                );
            }
            if b.more {
                p.uploads.insert(tag, all);
                let o = [Opt::uint(opt::BLOCK1, b.to_uint())];
                return self.respond(now, i, &to, Code::CONTINUE, Options::List(&o), &[]);
            }
            payload = all;
        }
        let session = p.aliases.list();
        let session: Vec<&str> = session.iter().map(String::as_str).collect();
        let decoded = match wire::decode_request_with(&session, &req.options, &payload) {
            Ok(d) => d,
            Err(wire::WireError::TooLarge) => {
                return self.respond_error(
                    now,
                    i,
                    &to,
                    413,
                    "M_TOO_LARGE",
                    "lowband: body too large",
                )
            }
            Err(e) => {
                tracing::info!(%e, "serve: undecodable request");
                return self.respond_error(
                    now,
                    i,
                    &to,
                    400,
                    "M_UNRECOGNIZED",
                    "lowband: undecodable request",
                );
            }
        };
        let mut http = decoded.http;
        if ServeAliases::check(&http.path_and_query).is_err() {
            // An alias we do not hold (we restarted): the tunnel defines it again.
            let o = [Opt::bytes(ALIAS, &[])];
            return self.respond(now, i, &to, Code::new(4, 12), Options::List(&o), &[]);
        }
        // The since token by reference, the answer as a delta (crate::syncstate).
        let sync = match req.options.first(SYNC).and_then(|o| o.as_bytes()) {
            None => None,
            Some(v) => match p.sync.request(v, &mut http.path_and_query) {
                Ok(c) => Some(c),
                Err(_) => {
                    let o = [Opt::bytes(SYNC, &[])];
                    return self.respond(now, i, &to, Code::new(4, 12), Options::List(&o), &[]);
                }
            },
        };
        if !http.path_and_query.starts_with('/') {
            return self.respond_error(now, i, &to, 400, "M_UNRECOGNIZED", "lowband: bad path");
        }
        let watch = watch_of(&req.options, &http, token.as_deref(), sync.is_some());
        if let Some((_, params, access)) = &watch {
            p.observe.watch_arrived(access.as_deref(), params);
        }
        tracing::debug!(
            method = %http.method,
            path = %redact_url(path_only(&http.path_and_query)),
            coap_options = req.options.iter().count(),
            link_body = req.payload.len(),
            "serve: request"
        );
        let client = self.http.clone();
        let base = self.homeserver.clone();
        let tx = self.done_tx.clone();
        let fed = if crate::federation::is_federation_path(&http.path_and_query) {
            match crate::federation::restore(&mut p.fed_aliases, &req.options, &mut http) {
                Ok(x) => Some((self.federation.clone(), x)),
                Err(crate::federation::RestoreError::Unknown) => {
                    let o = [Opt::bytes(opt::FED_ALIAS, &[])];
                    return self.respond(now, i, &to, Code::new(4, 12), Options::List(&o), &[]);
                }
                Err(_) => {
                    let m = "lowband: bad federation options";
                    return self.respond_error(now, i, &to, 400, "M_UNRECOGNIZED", m);
                }
            }
        } else {
            None
        };
        let metrics = self.metrics.clone();
        // A write: the streams look for what it changed before it is answered.
        let write = fed.is_none() && http.method != "GET" && p.observe.streams() > 0;
        let probes = if write {
            p.observe.probes()
        } else {
            Vec::new()
        };
        tokio::spawn(async move {
            let t0 = Instant::now();
            let response = match fed {
                Some((Some(f), x)) => f.forward(&http, x.as_deref()).await,
                Some((None, _)) => HttpResponse::matrix_error(
                    404,
                    "M_UNRECOGNIZED",
                    "lowband: this gateway does not carry federation",
                ),
                None => forward(&client, &base, &http, token.as_deref()).await,
            };
            metrics.request(Some(response.status), t0.elapsed());
            let mut probed = Vec::new();
            if (200..300).contains(&response.status) {
                for c in probes {
                    let r = HttpRequest {
                        method: "GET".to_owned(),
                        path_and_query: c.path_and_query.clone(),
                        content_type: None,
                        body: Vec::new(),
                    };
                    let a = forward(&client, &base, &r, c.access.as_deref()).await;
                    probed.push((c, a));
                }
            }
            let _ = tx.send(Done {
                peer,
                responder: to,
                response,
                sync,
                watch,
                write,
                probes: probed,
            });
        });
    }

    /// A device-profile request (crate::devices); the token is implied (number 0) when the
    /// request carries none.
    fn device_request(
        &mut self,
        now: u64,
        i: usize,
        peer: [u8; 32],
        p: &mut Peer,
        req: &IncomingRequest<'_>,
        token: Option<String>,
    ) {
        let to = req.responder;
        let token = token.or_else(|| p.tokens.resolve(&Auth::Number(0)));
        if token.is_none() {
            let o = [Opt::bytes(opt::AUTH, &[])];
            return self.respond(now, i, &to, Code::new(4, 12), Options::List(&o), &[]);
        }
        let aliases = p.aliases.list();
        let ctx = crate::devices::Ctx {
            peer,
            token,
            aliases: &aliases,
            http: &self.http,
            homeserver: &self.homeserver,
        };
        match self.devices.request(&ctx, req) {
            crate::devices::Answer::Now(c) if c == lowband_codec::lb::AUTH_UNKNOWN => {
                let o = [Opt::bytes(ALIAS, &[])];
                self.respond(now, i, &to, c, Options::List(&o), &[]);
            }
            crate::devices::Answer::Now(c) => self.respond(now, i, &to, c, Options::NONE, &[]),
            crate::devices::Answer::Registered => {
                self.devices.accept(now, &mut self.server, i, &to);
            }
            crate::devices::Answer::Later(h) => {
                let tx = self.done_tx.clone();
                tokio::spawn(async move {
                    let response = h.await.unwrap_or_else(|_| {
                        HttpResponse::matrix_error(502, "M_UNKNOWN", "lowband: send failed")
                    });
                    let _ = tx.send(Done {
                        peer,
                        responder: to,
                        response,
                        sync: None,
                        watch: None,
                        write: false,
                        probes: Vec::new(),
                    });
                });
            }
        }
    }

    fn on_done(&mut self, now: u64, mut d: Done) {
        let Some(i) = self.server.find_peer(&d.peer) else {
            tracing::info!("serve: session gone before its response");
            return;
        };
        let barrier = self.probed(now, &mut d);
        let delta = d.sync.as_ref().and_then(|c| {
            let r = &d.response;
            let json = r
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"))
                .then_some(r.body.as_slice());
            let p = self.peers.entry(d.peer).or_default();
            p.sync.response(c, r.status, json)
        });
        let watched = self.watch_answered(now, &d);
        let encoded = match &delta {
            None => WireResponse::encode(&d.response),
            Some(b) => WireResponse::encode(&HttpResponse {
                body: Vec::new(),
                ..d.response.clone()
            })
            .map(|mut w| {
                w.body = wire::Body {
                    format: wire::Format::Json,
                    bytes: b.clone(),
                };
                w
            }),
        };
        let small = self.peers.get(&d.peer).and_then(|p| p.small);
        let encoded = match (encoded, small) {
            (Ok(mut w), Some(_)) => core::mem::take(&mut w.body).into_plain().map(|b| {
                w.body = b;
                w
            }),
            (e, _) => e,
        };
        let w = match encoded {
            Ok(w) => w,
            Err(_) => {
                return self.respond_error(
                    now,
                    i,
                    &d.responder,
                    502,
                    "M_TOO_LARGE",
                    "lowband: response too large",
                )
            }
        };
        tracing::debug!(
            status = d.response.status,
            http_body = d.response.body.len(),
            link_body = w.body.bytes.len(),
            "serve: response"
        );
        let mut l: OptionList<'_, 12> = w.options();
        if delta.is_some() {
            let _ = l.push(Opt::bytes(SYNC, &[]));
        }
        if watched {
            let _ = l.push(Opt::bytes(WATCH, &[]));
        }
        if let Some(b) = barrier {
            let _ = l.push(Opt::uint(SEQ, b));
        }
        let szx = small.unwrap_or(BLOCK_SZX);
        let block = 16usize << szx;
        if w.body.bytes.len() <= block {
            let o = l.as_options();
            return self.respond(now, i, &d.responder, w.code, o, &w.body.bytes);
        }
        let p = self.peers.entry(d.peer).or_default();
        let id = p.next_body;
        p.next_body = p.next_body.wrapping_add(1);
        let first = BlockOpt::new(0, true, szx);
        let size = u32::try_from(w.body.bytes.len()).unwrap_or(u32::MAX);
        let _ = l.push(Opt::uint(opt::BLOCK2, first.to_uint()));
        let _ = l.push(Opt::uint(opt::SIZE2, size));
        let _ = l.push(Opt::uint(opt::BODY, id));
        let o = l.as_options();
        if let Some(s) = self.server.session(i) {
            if let Err(e) = s
                .coap()
                .respond(now, &d.responder, w.code, o, &w.body.bytes[..block])
            {
                tracing::warn!(?e, "serve: response not sent");
                return;
            }
        }
        p.bodies
            .insert(id, (w.body.bytes.clone(), now + BODY_TTL_MS));
    }

    async fn flush(&mut self, now: u64, socket: Option<&UdpSocket>, serial: Option<&SerialLink>) {
        self.devices.pump(now, &mut self.server);
        let mut out = vec![0u8; PACKET];
        let reasm_timeout = 2 * self.link.transmission().ack_timeout;
        let mtu = self.link.mtu;
        let mut queued = Vec::new();
        while let Some((to, n)) = self.server.poll_transmit(now, &mut out) {
            let link = self
                .links
                .entry(to)
                .or_insert_with(|| Datagrams::new(mtu, reasm_timeout));
            link.push(&out[..n]);
            while let Some(d) = link.out.pop_front() {
                queued.push((to, d));
            }
            self.stats_dirty = true;
        }
        // Sessions are written before their packets leave (a new tx epoch must be on disk
        // before the first packet of it is sent).
        self.persist(now, false);
        for (to, d) in queued {
            self.metrics.link_packet(Direction::Out, d.len());
            if to == SERIAL_ADDR {
                if let Some(l) = serial {
                    let _ = l.tx.send(d);
                }
            } else if to == RESTORED_ADDR {
                // A restored session not heard from yet: nowhere to send.
            } else if let Some(socket) = socket {
                if let Err(e) = socket.send_to(&d, to).await {
                    tracing::debug!(%e, %to, "serve: send failed");
                }
            }
        }
        while let Some((i, e)) = self.server.poll_event() {
            tracing::debug!(?e, "serve: session event");
            match e {
                lowband_codec::coap::Event::ObserverGone { token, .. } => {
                    self.observer_gone(i, &token);
                }
                lowband_codec::coap::Event::Failed { handle, error } => {
                    if let Some(p) = self.server.peer(i) {
                        self.devices.wake_done(&p, handle, Err(error));
                    }
                }
                _ => {}
            }
        }
    }

    /// Drops the datagram state of addresses with nothing in flight (it is rebuilt on the
    /// next datagram): idle peers then cost only their hibernated session.
    fn forget_idle_links(&mut self) {
        self.links
            .retain(|_, l| l.poll_timeout().is_some() || !l.out.is_empty());
    }

    /// Writes the sessions that are due (see [`Tracker`]); `force` writes all progress.
    fn persist(&mut self, now: u64, force: bool) {
        let Some(store) = &self.store else {
            return;
        };
        let mut live = Vec::with_capacity(self.server.len());
        for i in 0..self.server.len() {
            let (Some(peer), Some(st)) = (self.server.peer(i), self.server.stats(i)) else {
                continue;
            };
            let packets_in = st.packets_in;
            let mut e = [0u8; RESPONDER_EXPORT_LEN];
            if !self.server.export(i, &mut e) {
                continue;
            }
            live.push(peer);
            if self.tracker.due(now, &peer, &e, packets_in, force) {
                match store.save(&peer, &e) {
                    Ok(()) => self.tracker.saved(now, peer, &e, packets_in),
                    Err(err) => tracing::warn!(%err, "serve: session not persisted"),
                }
            }
        }
        self.tracker.retain(&live);
    }

    /// Whether received-packet progress waits to be persisted.
    fn persist_pending(&mut self) -> bool {
        if self.store.is_none() {
            return false;
        }
        let mut cur = Vec::with_capacity(self.server.len());
        for i in 0..self.server.len() {
            if let (Some(p), Some(st)) = (self.server.peer(i), self.server.stats(i)) {
                cur.push((p, st.packets_in));
            }
        }
        self.tracker.has_pending(cur)
    }

    fn write_stats(&mut self, path: &std::path::Path) {
        let mut m = serde_json::Map::new();
        for i in 0..self.server.len() {
            if let (Some(p), Some(st)) = (self.server.peer(i), self.server.stats(i)) {
                m.insert(
                    crate::keys::encode_key(&p),
                    serde_json::json!({
                        "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
                        "packets_in": st.packets_in, "packets_out": st.packets_out,
                        "observe_bytes": self.peers.get(&p).map_or(0, |x| x.observe_bytes),
                        "observe_packets": self.peers.get(&p).map_or(0, |x| x.observe_packets),
                    }),
                );
            }
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::Value::Object(m).to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// The path without the query (queries can hold tokens; never logged).
fn path_only(pq: &str) -> &str {
    pq.split('?').next().unwrap_or("")
}

/// Performs `req` against the homeserver; failures become Matrix-style 502/504 errors.
async fn forward(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    base: &str,
    req: &HttpRequest,
    token: Option<&str>,
) -> HttpResponse {
    let mut b = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(format!("{base}{}", req.path_and_query));
    if let Some(ct) = &req.content_type {
        b = b.header(hyper::header::CONTENT_TYPE, ct);
    }
    if let Some(t) = token {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let Ok(r) = b.body(Full::new(Bytes::from(req.body.clone()))) else {
        return HttpResponse::matrix_error(400, "M_UNRECOGNIZED", "lowband: bad request");
    };
    let resp = match tokio::time::timeout(HTTP_TIMEOUT, client.request(r)).await {
        Err(_) => return HttpResponse::matrix_error(504, "M_UNKNOWN", "homeserver timed out"),
        Ok(Err(e)) => {
            tracing::warn!(%e, "serve: homeserver unreachable");
            return HttpResponse::matrix_error(502, "M_UNKNOWN", "homeserver unreachable");
        }
        Ok(Ok(r)) => r,
    };
    crate::federation::read_response(resp).await
}

/// The watch of a request (option [`WATCH`] on an observable sync): stream number, params,
/// access token.
fn watch_of(
    options: &Options<'_>,
    http: &HttpRequest,
    token: Option<&str>,
    sync: bool,
) -> Option<(u8, String, Option<String>)> {
    let n = match options.first(WATCH).and_then(|o| o.as_bytes()) {
        Some(&[n]) => n,
        _ => return None,
    };
    let (params, _, _) = crate::observe::split_sync(&http.method, &http.path_and_query)?;
    sync.then(|| (n, params, token.map(str::to_owned)))
}

/// Pushed sync results (crate::observe): the feed, watches, homeserver long-polls, pushes.
impl State {
    /// A feed registration (GET with Observe: 0): answered with sequence number 0.
    fn on_feed(&mut self, now: u64, i: usize, p: &mut Peer, to: &Responder) {
        p.observe.register_feed(to.token());
        if let Some(s) = self.server.session(i) {
            if let Err(e) =
                s.coap()
                    .respond_observe_seq(now, to, 0, Code::CONTENT, Options::NONE, &[])
            {
                tracing::warn!(?e, "serve: feed registration not answered");
            }
        }
        tracing::debug!("serve: sync feed registered");
    }

    /// A watched sync was answered: starts the stream (true: the answer says so).
    fn watch_answered(&mut self, now: u64, d: &Done) -> bool {
        let (Some((n, params, access)), Some(ctx)) = (&d.watch, &d.sync) else {
            return false;
        };
        if d.response.status != 200 {
            return false;
        }
        let Some(p) = self.peers.get_mut(&d.peer) else {
            return false;
        };
        let Some(head) = p.sync.entry(ctx) else {
            return false;
        };
        let Some(c) = p
            .observe
            .watch_answered(now, *n, access.clone(), params.clone(), head)
        else {
            return false;
        };
        tracing::debug!(stream = n, "serve: sync stream watched");
        self.spawn_cycle(d.peer, c);
        true
    }

    /// Runs one homeserver long-poll of a stream.
    fn spawn_cycle(&self, peer: [u8; 32], cycle: Cycle) {
        let client = self.http.clone();
        let base = self.homeserver.clone();
        let tx = self.cycle_tx.clone();
        tokio::spawn(async move {
            let req = HttpRequest {
                method: "GET".to_owned(),
                path_and_query: cycle.path_and_query.clone(),
                content_type: None,
                body: Vec::new(),
            };
            let response = forward(&client, &base, &req, cycle.access.as_deref()).await;
            let _ = tx.send(CycleDone {
                peer,
                cycle,
                response,
            });
        });
    }

    /// A stream's long-poll came back: poll again, or push.
    fn on_cycle(&mut self, now: u64, d: CycleDone) {
        let Some(p) = self.peers.get_mut(&d.peer) else {
            return;
        };
        let r = &d.response;
        let json = r
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"))
            .then_some(r.body.as_slice());
        if let Some(c) = p.observe.cycle_done(now, &d.cycle, r.status, json) {
            self.spawn_cycle(d.peer, c);
        }
        self.pump(now, d.peer);
    }

    /// A write's probes came back: what they found is queued; the barrier for its answer.
    fn probed(&mut self, now: u64, d: &mut Done) -> Option<u32> {
        if !d.write {
            return None;
        }
        for (c, r) in core::mem::take(&mut d.probes) {
            let json = r
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"))
                .then_some(r.body.as_slice());
            let p = self.peers.get_mut(&d.peer)?;
            if let Some(c) = p.observe.cycle_done(now, &c, r.status, json) {
                self.spawn_cycle(d.peer, c);
            }
        }
        let p = self.peers.get_mut(&d.peer)?;
        let b = p.observe.barrier();
        self.pump(now, d.peer);
        b
    }

    /// Sends the peer's next notification, if none is in flight.
    fn pump(&mut self, now: u64, peer: [u8; 32]) {
        let Some(i) = self.server.find_peer(&peer) else {
            if let Some(p) = self.peers.get_mut(&peer) {
                if let Some(t) = p.observe.feed_token() {
                    p.observe.feed_lost(&t);
                }
            }
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some((token, seq, note)) = p.observe.next_note() else {
            return;
        };
        let sync = note.kind.option(note.n);
        let full = match note.kind {
            PushKind::Full => WireResponse::encode(&HttpResponse {
                status: 200,
                content_type: Some("application/json".to_owned()),
                body: note.payload.clone(),
                ..HttpResponse::default()
            })
            .ok(),
            _ => None,
        };
        let (code, mut l, payload): (Code, OptionList<'_, 12>, &[u8]) = match &full {
            Some(w) => (w.code, w.options(), &w.body.bytes),
            None => (Code::CONTENT, OptionList::new(), &note.payload),
        };
        let _ = l.push(Opt::bytes(SYNC, &sync));
        let r = self.server.session(i).map(|s| {
            s.coap()
                .notify_token(now, token, seq, code, l.as_options(), payload)
        });
        match r {
            Some(Ok(())) => {
                tracing::debug!(
                    stream = note.n,
                    seq,
                    len = payload.len(),
                    "serve: sync pushed"
                );
                if !self.pushing.contains(&peer) {
                    self.pushing.push(peer);
                }
            }
            e => {
                tracing::warn!(?e, "serve: sync push not sent; feed ended");
                p.observe.feed_lost(&token);
            }
        }
    }

    /// Notifications acknowledged: their streams poll on; next notifications go out.
    fn observe_progress(&mut self, now: u64) {
        for peer in core::mem::take(&mut self.pushing) {
            let Some(i) = self.server.find_peer(&peer) else {
                continue;
            };
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let Some(token) = p.observe.feed_token().filter(|_| p.observe.in_flight()) else {
                continue;
            };
            let Some(s) = self.server.session(i) else {
                continue;
            };
            let pending = s.coap().notification_pending(&token);
            let t = s.coap().take_push_traffic();
            let bytes = u64::from(t.bytes)
                + u64::from(t.messages) * lowband_codec::noise::link::TRANSPORT_OVERHEAD as u64;
            p.observe_bytes += bytes;
            p.observe_packets += u64::from(t.messages);
            self.metrics.observe_bytes(bytes);
            if pending {
                self.pushing.push(peer);
                continue;
            }
            if let Some(c) = p.observe.acked() {
                self.spawn_cycle(peer, c);
            }
            self.stats_dirty = true;
            self.pump(now, peer);
        }
    }

    /// A notification of session `i` was reset or never acknowledged.
    fn observer_gone(&mut self, i: usize, token: &lowband_codec::coap::Token) {
        let Some(peer) = self.server.peer(i) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.observe.feed_lost(token) {
                tracing::info!("serve: sync feed lost (push reset or unacknowledged)");
            }
        }
    }
}
