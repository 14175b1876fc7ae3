//! `lowband tunnel`: the gateway next to an unmodified Matrix client.
//!
//! An HTTP/1.1 server on `--listen-http`; every request is mapped ([`crate::wire`]) to one
//! CoAP request over one secure session ([`Client`]) to `lowband serve`, and the answer comes
//! back with the same status, body and the headers that matter. The access token is
//! registered once per session under a small number ([`TokenTable`]).
//!
//! ```text
//!  HTTP handler ──Cmd──► session task: Client::request ──► Datagrams ──► UDP ──► serve
//!        ▲                     │ response (blocks reassembled)
//!        └──oneshot────────────┘
//! ```
//!
//! Deadlines: a request may wait for its CoAP retransmission schedule; a long-polling `/sync`
//! (`timeout=N` in the query) gets N ms more, so the link deadline always exceeds the
//! homeserver's hold time plus airtime.
use alloc::collections::BTreeMap;
use core::convert::Infallible;
use core::net::SocketAddr;
use core::time::Duration;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lowband_codec::coap::{
    self, BlockOpt, Code, Opt, OptionList, Options, Received, Request, RequestHandle,
};
use lowband_codec::noise::link::{InitiatorConfig, LinkPattern, TransportConfig};
use lowband_codec::noise::{Keypair, PublicKey};
use lowband_codec::session::{Client, SessionEvent};
use rand_chacha::rand_core::{OsRng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::alias::{self, AliasReq, TunnelAliases};
use crate::metrics::{Direction, Handshake, Metrics};
use crate::observe::{Decision, PushKind, Pushed, TunnelStreams, WaitOutcome, SEQ, WATCH};
use crate::serial::SerialLink;
use crate::syncstate::{self, SyncReq, TunnelSync};
use crate::transport::{
    now_ms, on_big_stack, Datagrams, LinkParams, BLOCK, BLOCK_SZX, COAP_MTU, PACKET, VERSION,
};
use crate::wire::{
    self, opt, take_token, Auth, HttpRequest, HttpResponse, TokenTable, WireRequest,
};

/// Options copied out of a datagram: (number, value).
type OwnedOptions = Vec<(u16, Vec<u8>)>;

type TunnelClient = Client<ChaCha20Rng, 16, 8, 1, COAP_MTU>;

/// `tunnel` settings.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// HTTP address to listen on.
    pub listen: SocketAddr,
    /// Serve HTTPS on `listen` with these (federation: the destination's certificate).
    pub tls: Option<crate::federation::TlsFiles>,
    /// `lowband serve`'s UDP address.
    pub gateway: SocketAddr,
    /// Its public key (pinned).
    pub gateway_key: [u8; 32],
    /// Our static key.
    pub key: [u8; 32],
    /// Link properties.
    pub link: LinkParams,
    /// A serial device (and its speed, bit/s) carrying the link instead of UDP.
    pub gateway_serial: Option<(PathBuf, u32)>,
    /// Counters for the metrics endpoint.
    pub metrics: Metrics,
}

impl Default for TunnelConfig {
    /// Loopback placeholders and zero keys: fill in what you need.
    fn default() -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        TunnelConfig {
            listen: any,
            tls: None,
            gateway: any,
            gateway_key: [0; 32],
            key: [0; 32],
            link: LinkParams {
                rate: 9600,
                mtu: 1024,
            },
            gateway_serial: None,
            metrics: Metrics::new(),
        }
    }
}

/// What carries the link to `serve`: a connected UDP socket or a serial port.
enum Uplink {
    Udp(UdpSocket),
    Serial(SerialLink),
}

impl Uplink {
    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Uplink::Udp(s) => s.recv(buf).await,
            Uplink::Serial(l) => match l.rx.recv().await {
                Some(d) => {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    Ok(n)
                }
                None => Err(std::io::Error::other("the serial link stopped")),
            },
        }
    }

    async fn send(&self, d: &[u8]) -> std::io::Result<()> {
        match self {
            Uplink::Udp(s) => s.send(d).await.map(|_| ()),
            Uplink::Serial(l) => {
                l.tx.send(d.to_vec())
                    .map_err(|_| std::io::Error::other("the serial link stopped"))
            }
        }
    }
}

#[derive(Debug)]
struct Cmd {
    req: HttpRequest,
    token: Option<String>,
    /// `Authorization: X-Matrix ...` of a federation request.
    xmatrix: Option<String>,
    timeout_ms: u64,
    reply: oneshot::Sender<HttpResponse>,
}

#[derive(Debug)]
enum Phase {
    /// Sending the request (whole, or Block1 number `n`).
    Request(u32),
    /// Fetching block `n` of kept response body `id`.
    Fetch { id: u32, n: u32 },
}

#[derive(Debug)]
struct Op {
    wire: WireRequest,
    token: Option<String>,
    fed: Option<crate::federation::FedOp>,
    auth: Option<Auth>,
    tag: u32,
    timeout_ms: u64,
    phase: Phase,
    auth_retried: bool,
    first: Option<(Code, OwnedOptions)>,
    body: Vec<u8>,
    reply: oneshot::Sender<HttpResponse>,
    sync: Option<SyncReq>,
    alias: AliasReq,
    alias_retried: bool,
    method: String,
    pq: String,
    /// The watch of stream n (crate::observe).
    watch: Option<u8>,
}

/// A client's sync waiting for a push (crate::observe).
#[derive(Debug)]
struct Waiter {
    n: u8,
    since: String,
    start: u64,
    until: u64,
    cmd: Cmd,
}

struct Session {
    client: Box<TunnelClient>,
    link: Datagrams,
    tokens: TokenTable,
    fed: crate::federation::AliasTable,
    ops: BTreeMap<RequestHandle, Op>,
    next_tag: u32,
    established_once: bool,
    metrics: Metrics,
    sync: TunnelSync,
    aliases: TunnelAliases,
    streams: TunnelStreams,
    waiters: Vec<Waiter>,
}

/// Runs the tunnel until an I/O error.
///
/// # Errors
/// Binding sockets, socket errors.
pub async fn run(cfg: TunnelConfig) -> anyhow::Result<()> {
    let tls = cfg
        .tls
        .as_ref()
        .map(crate::federation::tls_acceptor)
        .transpose()?;
    let listener = TcpListener::bind(cfg.listen).await?;
    match &cfg.gateway_serial {
        Some((path, baud)) => {
            tracing::info!(addr = %listener.local_addr()?, serial = %path.display(), baud, "tunnel: listening")
        }
        None => {
            tracing::info!(addr = %listener.local_addr()?, gateway = %cfg.gateway, "tunnel: listening")
        }
    }
    let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
    let link_task = tokio::spawn(session_task(cfg.clone(), rx));
    let default_deadline = cfg.link.transmission().default_deadline();
    let metrics = cfg.metrics.clone();
    let http = async move {
        loop {
            let (stream, _) = listener.accept().await?;
            let tx = tx.clone();
            let tls = tls.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |r| {
                    handle_http(r, tx.clone(), default_deadline, metrics.clone())
                });
                let http = hyper::server::conn::http1::Builder::new();
                let r = match tls {
                    None => http.serve_connection(TokioIo::new(stream), svc).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                        Err(e) => return tracing::debug!(%e, "tunnel: TLS handshake failed"),
                    },
                };
                if let Err(e) = r {
                    tracing::debug!(%e, "tunnel: connection ended");
                }
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = http => r,
        r = link_task => r?,
    }
}

fn query_timeout(pq: &str) -> Option<u64> {
    let (path, q) = pq.split_once('?')?;
    if !path.ends_with("/sync") && !path.contains("/events") {
        return None;
    }
    q.split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| v.parse().ok())
}

async fn handle_http(
    r: hyper::Request<Incoming>,
    tx: mpsc::UnboundedSender<Cmd>,
    default_deadline: u64,
    metrics: Metrics,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let t0 = Instant::now();
    let method = r.method().as_str().to_owned();
    let pq = r
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let h = r.headers();
    let get =
        |n: hyper::header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = get(hyper::header::CONTENT_TYPE);
    let authorization = get(hyper::header::AUTHORIZATION);
    let xmatrix = crate::federation::xmatrix_of(authorization.as_deref()).map(str::to_owned);
    let (token, pq) = take_token(authorization.as_deref(), &pq);
    let resp = match Limited::new(r.into_body(), wire::MAX_MEDIA).collect().await {
        Err(_) => HttpResponse::matrix_error(413, "M_TOO_LARGE", "lowband: body too large"),
        Ok(b) => {
            let timeout_ms = default_deadline + query_timeout(&pq).unwrap_or(0);
            let (reply, wait) = oneshot::channel();
            let req = HttpRequest {
                method,
                path_and_query: pq,
                content_type,
                body: b.to_bytes().to_vec(),
            };
            if tx
                .send(Cmd {
                    req,
                    token,
                    xmatrix,
                    timeout_ms,
                    reply,
                })
                .is_err()
            {
                HttpResponse::matrix_error(502, "M_UNKNOWN", "lowband tunnel: link task stopped")
            } else {
                match tokio::time::timeout(Duration::from_millis(timeout_ms + 30_000), wait).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => HttpResponse::matrix_error(
                        502,
                        "M_UNKNOWN",
                        "lowband tunnel: request dropped",
                    ),
                    Err(_) => HttpResponse::matrix_error(
                        504,
                        "M_UNKNOWN",
                        "lowband tunnel: no answer over the link",
                    ),
                }
            }
        }
    };
    metrics.request(Some(resp.status), t0.elapsed());
    Ok(to_hyper(resp))
}

fn to_hyper(r: HttpResponse) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(r.status);
    for (n, v) in [
        (hyper::header::CONTENT_TYPE, r.content_type),
        (hyper::header::RETRY_AFTER, r.retry_after),
        (hyper::header::LOCATION, r.location),
        (hyper::header::CONTENT_DISPOSITION, r.content_disposition),
    ] {
        if let Some(v) = v {
            b = b.header(n, v);
        }
    }
    b.body(Full::new(Bytes::from(r.body))).unwrap_or_else(|_| {
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(
            b"{\"errcode\":\"M_UNKNOWN\",\"error\":\"lowband: bad response\"}",
        )));
        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        r
    })
}

async fn session_task(
    cfg: TunnelConfig,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) -> anyhow::Result<()> {
    let mut socket = match &cfg.gateway_serial {
        Some((path, baud)) => Uplink::Serial(crate::serial::open(path, *baud)?),
        None => {
            let bind: SocketAddr = if cfg.gateway.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let socket = UdpSocket::bind(bind).await?;
            socket.connect(cfg.gateway).await?;
            Uplink::Udp(socket)
        }
    };
    let link = cfg.link;
    let init = InitiatorConfig {
        pattern: LinkPattern::IK,
        version: VERSION,
        local: Keypair::from_secret(cfg.key),
        remote: PublicKey(cfg.gateway_key),
        retransmit: link.retransmit(),
        transport: TransportConfig::default(),
    };
    let rng = ChaCha20Rng::from_entropy();
    let seed = rand_core::RngCore::next_u64(&mut OsRng);
    let client = on_big_stack(move || TunnelClient::new(init, link.coap(seed), rng).map(Box::new))
        .map_err(|e| anyhow::anyhow!("tunnel: cannot start the handshake: {e:?}"))?;
    let mut s = Session {
        client,
        link: Datagrams::new(link.mtu, 2 * link.transmission().ack_timeout),
        tokens: TokenTable::default(),
        fed: crate::federation::AliasTable::default(),
        ops: BTreeMap::new(),
        next_tag: 0,
        established_once: false,
        metrics: cfg.metrics.clone(),
        sync: TunnelSync::default(),
        aliases: TunnelAliases::default(),
        streams: TunnelStreams::default(),
        waiters: Vec::new(),
    };
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = now_ms(start);
        let wake = [
            s.client.poll_timeout(),
            s.link.poll_timeout(),
            s.waiters
                .iter()
                .map(|w| s.streams.waiter_wake(w.start, w.until))
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + 60_000);
        let sleep = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now)));
        tokio::select! {
            r = socket.recv(&mut buf) => match r {
                Ok(n) => {
                    s.metrics.link_packet(Direction::In, n);
                    s.on_datagram(now_ms(start), &buf[..n]);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) => {}
                Err(e) => return Err(e.into()),
            },
            c = rx.recv() => match c {
                Some(c) => s.start(now_ms(start), c),
                None => return Ok(()),
            },
            () = sleep => {
                let now = now_ms(start);
                s.client.handle_timeout(now);
                s.link.handle_timeout(now);
            }
        }
        let now = now_ms(start);
        if !s.waiters.is_empty() {
            s.check_waiters(now);
        }
        s.events(now);
        let mut out = vec![0u8; PACKET];
        let retransmitted = s.client.stats().retransmissions;
        while let Some(n) = s.client.poll_transmit(now, &mut out) {
            s.link.push(&out[..n]);
        }
        let retransmitted = s.client.stats().retransmissions.wrapping_sub(retransmitted);
        s.metrics.retransmissions(u64::from(retransmitted));
        while let Some(d) = s.link.out.pop_front() {
            s.metrics.link_packet(Direction::Out, d.len());
            if let Err(e) = socket.send(&d).await {
                tracing::debug!(%e, "tunnel: send failed");
            }
        }
        s.events(now);
    }
}

impl Session {
    fn start(&mut self, now: u64, mut c: Cmd) {
        // Pushed sync results (crate::observe): answered here, or waiting for a push.
        let d = self.streams.on_sync(
            now,
            c.token.as_deref(),
            &c.req.method,
            &c.req.path_and_query,
        );
        self.maybe_feed(now);
        let watch = match d {
            Decision::Answer(body) => {
                let _ = c.reply.send(json_response(body));
                return;
            }
            Decision::Wait { n, since, until } => {
                self.waiters.push(Waiter {
                    n,
                    since,
                    start: now,
                    until,
                    cmd: c,
                });
                return;
            }
            Decision::Forward(w) => w,
        };
        let sync = self.sync.request(&c.req.method, &mut c.req.path_and_query);
        let (req, fed) = if crate::federation::is_federation_path(&c.req.path_and_query) {
            let (r, link) = self.fed.encode(&c.req, c.xmatrix.as_deref());
            let f = crate::federation::FedOp {
                orig: c.req.clone(),
                header: c.xmatrix.take(),
                link,
                retried: false,
            };
            (Some(r), Some(f))
        } else {
            (None, None)
        };
        let mut wire = match WireRequest::encode(req.as_ref().unwrap_or(&c.req)) {
            Ok(w) => w,
            Err(wire::WireError::TooLarge) => {
                let _ = c.reply.send(HttpResponse::matrix_error(
                    413,
                    "M_TOO_LARGE",
                    "lowband: body too large",
                ));
                return;
            }
            Err(e) => {
                tracing::info!(%e, "tunnel: request not mapped");
                let _ = c.reply.send(HttpResponse::matrix_error(
                    400,
                    "M_UNRECOGNIZED",
                    "lowband: request not mapped",
                ));
                return;
            }
        };
        let alias = self.alias_target(&c.req.method, &c.req.path_and_query, &mut wire);
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let op = Op {
            wire,
            token: c.token,
            fed,
            auth: None,
            tag,
            timeout_ms: c.timeout_ms,
            phase: Phase::Request(0),
            auth_retried: false,
            first: None,
            body: Vec::new(),
            reply: c.reply,
            sync,
            alias,
            alias_retried: false,
            method: c.req.method,
            pq: c.req.path_and_query,
            watch,
        };
        self.send(now, op);
    }

    /// Sends the next message of `op` (its phase says which).
    fn send(&mut self, now: u64, mut op: Op) {
        op.auth = op.token.as_deref().map(|t| self.tokens.auth_for(t));
        let auth = op.auth.as_ref().map(Auth::to_bytes);
        let sync_opt = op.sync.as_ref().map(SyncReq::option);
        let watch_opt = op.watch.map(|n| [n]);
        let r = {
            let mut l: OptionList<'_, 12>;
            let payload: &[u8];
            match op.phase {
                Phase::Request(n) => {
                    l = op.wire.options(auth.as_deref());
                    if let Some(v) = &sync_opt {
                        let _ = l.push(Opt::bytes(syncstate::SYNC, v));
                    }
                    if let Some(w) = &watch_opt {
                        let _ = l.push(Opt::bytes(WATCH, w));
                    }
                    for d in &op.alias.defs {
                        let _ = l.push(Opt::bytes(alias::ALIAS, d));
                    }
                    let body = &op.wire.body.bytes;
                    if body.len() > BLOCK {
                        let b = BlockOpt::new(n, (n as usize + 1) * BLOCK < body.len(), BLOCK_SZX);
                        let end = (b.offset() + BLOCK).min(body.len());
                        payload = body.get(b.offset()..end).unwrap_or(&[]);
                        let _ = l.push(Opt::uint(opt::BLOCK1, b.to_uint()));
                        let _ = l.push(Opt::uint(opt::UPLOAD, op.tag));
                        if let (false, Some(f)) = (b.more, &op.fed) {
                            for o in f.link.options() {
                                let _ = l.push(o);
                            }
                        }
                    } else {
                        payload = body;
                        if let Some(f) = &op.fed {
                            for o in f.link.options() {
                                let _ = l.push(o);
                            }
                        }
                    }
                }
                Phase::Fetch { id, n } => {
                    l = OptionList::new();
                    let _ = l.push(Opt::uint(
                        opt::BLOCK2,
                        BlockOpt::new(n, false, BLOCK_SZX).to_uint(),
                    ));
                    let _ = l.push(Opt::uint(opt::BODY, id));
                    payload = &[];
                }
            }
            let req = Request {
                confirmable: true,
                code: Code::POST,
                options: l.as_options(),
                payload,
                timeout: Some(op.timeout_ms),
            };
            self.client.request(now, req)
        };
        match r {
            Ok(h) => {
                self.ops.insert(h, op);
            }
            Err(e) => {
                tracing::warn!(?e, "tunnel: request not queued");
                let msg = match e {
                    coap::SendError::NoSlot => "lowband tunnel: too many requests in flight",
                    _ => "lowband tunnel: request too large for the link",
                };
                let _ = op
                    .reply
                    .send(HttpResponse::matrix_error(503, "M_UNKNOWN", msg));
            }
        }
    }

    fn on_datagram(&mut self, now: u64, d: &[u8]) {
        let Some(packet) = self.link.receive(now, d) else {
            return;
        };
        let packet = packet.to_vec();
        let mut scratch = vec![0u8; COAP_MTU];
        let Some(Received::Response(r)) = self.client.handle_packet(now, &packet, &mut scratch)
        else {
            return;
        };
        if self.streams.is_feed(r.handle) {
            return self.on_feed(now, &r);
        }
        // A write's answer: syncs wait for the pushes it announces (crate::observe).
        if let Some(b) = r.options.uint(SEQ) {
            self.streams.set_barrier(b);
        }
        if !r.last {
            return;
        }
        let Some(mut op) = self.ops.remove(&r.handle) else {
            return;
        };
        // The server knows our token number now.
        if let Some(a) = &op.auth {
            self.tokens.acknowledged(a);
        }
        // Federation aliases: usable once answered; resent in full if the server lost them.
        if let Some(f) = &mut op.fed {
            if r.code == Code::new(4, 12) && r.options.first(opt::FED_ALIAS).is_some() {
                self.fed.reset();
                if !f.retried {
                    f.retried = true;
                    let (req, link) = self.fed.encode(&f.orig, f.header.as_deref());
                    f.link = link;
                    if let Ok(mut w) = WireRequest::encode(&req) {
                        self.aliases.done(&op.alias);
                        op.alias = self.alias_target(&req.method, &req.path_and_query, &mut w);
                        op.wire = w;
                        op.phase = Phase::Request(0);
                        return self.send(now, op);
                    }
                }
            } else if r.code != Code::CONTINUE {
                self.fed.acknowledge(&f.link.defs);
            }
        }
        // The server lost our token number: register again, once.
        if r.code == Code::new(4, 12) && r.options.first(opt::AUTH).is_some() {
            // It lost its per-session state (restarted): pushed streams too.
            self.reset_streams(now);
            if let Some(Auth::Number(n)) = &op.auth {
                self.tokens.forget(*n);
            }
            if !op.auth_retried {
                op.auth_retried = true;
                return self.send(now, op);
            }
        }
        // Serve holds what this request defined; if it lost older aliases, define again.
        self.aliases.answered(&op.alias);
        if r.code == Code::new(4, 12) && r.options.first(alias::ALIAS).is_some() {
            self.aliases.reset();
            if !op.alias_retried {
                op.alias_retried = true;
                self.aliases.done(&op.alias);
                let (m, pq) = (op.method.clone(), op.pq.clone());
                op.alias = self.alias_target(&m, &pq, &mut op.wire);
                return self.send(now, op);
            }
        }
        // Serve does not hold the sync state our since refers to: send the token in full.
        if r.code == Code::new(4, 12) && r.options.first(syncstate::SYNC).is_some() {
            if let Some(mut sr) = op.sync.take() {
                let req = HttpRequest {
                    method: "GET".to_owned(),
                    path_and_query: self.sync.unknown(&mut sr),
                    content_type: None,
                    body: Vec::new(),
                };
                if let Ok(mut w) = WireRequest::encode(&req) {
                    self.aliases.done(&op.alias);
                    op.alias = self.alias_target(&req.method, &req.path_and_query, &mut w);
                    op.wire = w;
                    op.pq = req.path_and_query;
                    op.sync = Some(sr);
                    return self.send(now, op);
                }
                self.sync.done(&sr);
            }
        }
        match op.phase {
            Phase::Request(n) if r.code == Code::CONTINUE && op.wire.body.bytes.len() > BLOCK => {
                op.phase = Phase::Request(n + 1);
                return self.send(now, op);
            }
            Phase::Request(_) => {
                let more = BlockOpt::from_options(&r.options, opt::BLOCK2)
                    .ok()
                    .flatten()
                    .filter(|b| b.more);
                if let (Some(b), Some(id)) = (more, r.options.uint(opt::BODY)) {
                    let opts = owned_options(&r.options)
                        .into_iter()
                        .filter(|(n, _)| !matches!(*n, opt::BLOCK2 | opt::SIZE2 | opt::BODY));
                    op.first = Some((r.code, opts.collect()));
                    op.body = r.payload.to_vec();
                    op.phase = Phase::Fetch { id, n: b.num + 1 };
                    return self.send(now, op);
                }
                op.body = r.payload.to_vec();
                op.first = Some((r.code, owned_options(&r.options)));
            }
            Phase::Fetch { id, n } => {
                if r.code != Code::CONTENT {
                    self.aliases.done(&op.alias);
                    let _ = op.reply.send(HttpResponse::matrix_error(
                        502,
                        "M_UNKNOWN",
                        "lowband: response body lost",
                    ));
                    return;
                }
                op.body.extend_from_slice(r.payload);
                if BlockOpt::from_options(&r.options, opt::BLOCK2)
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.more)
                {
                    op.phase = Phase::Fetch { id, n: n + 1 };
                    return self.send(now, op);
                }
            }
        }
        let (code, opts) = op.first.take().unwrap_or((Code::new(5, 2), Vec::new()));
        let list: Vec<Opt<'_>> = opts.iter().map(|(n, v)| Opt::bytes(*n, v)).collect();
        let delta = op.sync.is_some() && opts.iter().any(|(n, _)| *n == syncstate::SYNC);
        let payload: &[u8] = if delta { &[] } else { &op.body };
        let mut resp =
            wire::decode_response(code, &Options::List(&list), payload).unwrap_or_else(|e| {
                tracing::warn!(%e, "tunnel: undecodable response");
                HttpResponse::matrix_error(
                    502,
                    "M_UNKNOWN",
                    "lowband: undecodable response from the gateway",
                )
            });
        if let Some(f) = &op.fed {
            resp = crate::federation::expand_response(&f.orig, resp);
        }
        if let Some(sr) = &op.sync {
            let json = resp
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"))
                .then_some(resp.body.as_slice());
            match self.sync.response(sr, resp.status, delta, &op.body, json) {
                Some(b) => {
                    resp.body = b;
                    resp.content_type = Some("application/json".to_owned());
                }
                None if delta => {
                    tracing::warn!("tunnel: undecodable sync delta");
                    resp = HttpResponse::matrix_error(
                        502,
                        "M_UNKNOWN",
                        "lowband: undecodable sync delta from the gateway",
                    );
                }
                None => {}
            }
        }
        if let (Some(n), Some(sr)) = (op.watch, &op.sync) {
            let accepted = resp.status == 200 && opts.iter().any(|(n, _)| *n == WATCH);
            let head = self.sync.entry(sr.k);
            let pushed = self.streams.watch_answer(n, accepted, head);
            if accepted {
                tracing::debug!(stream = n, "tunnel: sync stream watched");
            } else if resp.status == 200 {
                // Serve has no feed of ours (it lost its state): register again.
                tracing::debug!(
                    stream = n,
                    "tunnel: watch refused; registering the feed again"
                );
                self.reset_streams(now);
                self.maybe_feed(now);
            }
            for p in pushed {
                self.on_pushed(now, p);
            }
        }
        self.aliases.done(&op.alias);
        let _ = op.reply.send(resp);
    }

    /// Encodes `wire`'s target with the session's aliases (plain target when that fails).
    fn alias_target(&mut self, method: &str, pq: &str, wire: &mut WireRequest) -> AliasReq {
        let mut t = vec![0u8; 2 * (method.len() + pq.len()) + 16];
        match self.aliases.encode(method, pq, &mut t) {
            Ok((n, r)) => {
                t.truncate(n);
                wire.target = t;
                r
            }
            Err(_) => AliasReq::default(),
        }
    }

    fn fail_all(&mut self, msg: &str, status: u16) {
        for (h, op) in core::mem::take(&mut self.ops) {
            self.client.coap().cancel(h);
            if let Some(sr) = &op.sync {
                self.sync.done(sr);
            }
            if let Some(n) = op.watch {
                self.streams.watch_failed(n);
            }
            self.aliases.done(&op.alias);
            let _ = op
                .reply
                .send(HttpResponse::matrix_error(status, "M_UNKNOWN", msg));
        }
    }

    fn events(&mut self, now: u64) {
        while let Some(e) = self.client.poll_event() {
            match e {
                SessionEvent::Established(_) => {
                    tracing::info!("tunnel: session established");
                    self.metrics.handshake(Handshake::Ok);
                    self.metrics.set_sessions(1);
                    if self.established_once {
                        self.tokens.reset();
                        self.fed.reset();
                        self.reset_streams(now);
                    }
                    self.established_once = true;
                    self.maybe_feed(now);
                }
                SessionEvent::Rehandshake => {
                    tracing::info!("tunnel: gateway lost our session; handshaking again");
                    self.metrics.set_sessions(0);
                    self.tokens.reset();
                    self.fed.reset();
                    self.reset_streams(now);
                }
                SessionEvent::Rejected(e) | SessionEvent::Refused(e) => {
                    tracing::warn!(?e, "tunnel: the gateway refused this tunnel's key");
                    self.metrics.handshake(Handshake::Refused);
                    self.fail_all(
                        "lowband gateway refused this tunnel's key (not on its allow list)",
                        502,
                    );
                }
                SessionEvent::HandshakeRetry => {
                    tracing::info!("tunnel: gateway not answering; retrying")
                }
                SessionEvent::Coap(coap::Event::Failed { handle, error }) => {
                    if self.streams.is_feed(handle) {
                        tracing::info!(?error, "tunnel: sync feed registration failed");
                        self.reset_streams(now);
                    }
                    if let Some(op) = self.ops.remove(&handle) {
                        if let Some(n) = op.watch {
                            self.streams.watch_failed(n);
                        }
                        tracing::info!(?error, "tunnel: request failed on the link");
                        if let Some(sr) = &op.sync {
                            self.sync.done(sr);
                        }
                        self.aliases.done(&op.alias);
                        let _ = op.reply.send(HttpResponse::matrix_error(
                            504,
                            "M_UNKNOWN",
                            "lowband tunnel: no answer from the gateway over the link",
                        ));
                    }
                }
                SessionEvent::Coap(e) => tracing::debug!(?e, "tunnel: coap event"),
            }
        }
    }
}

/// A 200 answer with a JSON body.
fn json_response(body: Vec<u8>) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: Some("application/json".to_owned()),
        body,
        ..HttpResponse::default()
    }
}

/// `pq` with its `timeout` query item set to `ms`.
fn with_timeout(pq: &str, ms: u64) -> String {
    match pq.split_once('?') {
        Some((path, q)) => {
            let items: Vec<String> = q
                .split('&')
                .map(|i| {
                    if i.starts_with("timeout=") {
                        format!("timeout={ms}")
                    } else {
                        i.to_owned()
                    }
                })
                .collect();
            format!("{path}?{}", items.join("&"))
        }
        None => pq.to_owned(),
    }
}

/// Pushed sync results (crate::observe).
impl Session {
    /// Registers the feed when the streams want it.
    fn maybe_feed(&mut self, now: u64) {
        if !self.streams.want_feed(now) || !self.client.is_established() {
            return;
        }
        let o = [Opt::uint(coap::opt::OBSERVE, coap::observe::REGISTER)];
        let req = Request {
            confirmable: true,
            code: Code::GET,
            options: Options::List(&o),
            payload: &[],
            timeout: None,
        };
        match self.client.request(now, req) {
            Ok(h) => {
                tracing::debug!("tunnel: registering the sync feed");
                self.streams.feed_sent(h);
            }
            Err(e) => tracing::debug!(?e, "tunnel: sync feed not registered"),
        }
    }

    /// A message on the feed: its registration's answer or a push.
    fn on_feed(&mut self, now: u64, r: &coap::IncomingResponse<'_>) {
        if self.streams.feed_handle() == Some(r.handle) && !self.streams_feed_up() {
            let seq = r.observe.filter(|_| !r.last && r.code == Code::CONTENT);
            self.streams.feed_answer(now, r.handle, seq);
            tracing::debug!(up = seq.is_some(), "tunnel: sync feed answered");
            return;
        }
        let sync = r.options.first(syncstate::SYNC).and_then(|o| o.as_bytes());
        let full;
        let payload: &[u8] = match sync.and_then(PushKind::parse) {
            Some((_, PushKind::Full)) => {
                full = wire::decode_response(r.code, &r.options, r.payload)
                    .map(|x| x.body)
                    .unwrap_or_default();
                &full
            }
            _ => r.payload,
        };
        let p = self
            .streams
            .on_notification(r.observe, r.last, sync, payload);
        tracing::debug!(?p, seq = ?r.observe, len = r.payload.len(), "tunnel: sync push");
        if p == Pushed::FeedLost {
            self.client.coap().cancel(r.handle);
        }
        self.on_pushed(now, p);
    }

    fn streams_feed_up(&self) -> bool {
        // The feed is up once its registration was answered: pushes then carry SYNC.
        self.streams.feed_handle().is_some() && self.streams.feed_is_up()
    }

    /// After a push: waiters may have their answer.
    fn on_pushed(&mut self, now: u64, p: Pushed) {
        self.check_waiters(now);
        if p == Pushed::FeedLost {
            self.maybe_feed(now);
        }
    }

    /// Answers, keeps or sends over the link (with what is left of their timeout) each
    /// waiting sync.
    fn check_waiters(&mut self, now: u64) {
        for mut w in core::mem::take(&mut self.waiters) {
            match self
                .streams
                .check_waiter(now, w.n, &w.since, w.start, w.until)
            {
                WaitOutcome::Answer(b) => {
                    let _ = w.cmd.reply.send(json_response(b));
                }
                WaitOutcome::Keep => self.waiters.push(w),
                WaitOutcome::Forward => {
                    w.cmd.req.path_and_query =
                        with_timeout(&w.cmd.req.path_and_query, w.until.saturating_sub(now));
                    self.start(now, w.cmd);
                }
            }
        }
    }

    /// Serve may have lost the feed and streams: forget them, register again.
    fn reset_streams(&mut self, now: u64) {
        let (_, h) = self.streams.reset();
        if let Some(h) = h {
            self.client.coap().cancel(h);
        }
        self.check_waiters(now);
    }
}

fn owned_options(o: &Options<'_>) -> Vec<(u16, Vec<u8>)> {
    o.iter()
        .map(|o| {
            let v = match o.value {
                coap::OptValue::Bytes(b) => b.to_vec(),
                coap::OptValue::Uint(v) => {
                    let b = v.to_be_bytes();
                    let skip = b.iter().take_while(|&&x| x == 0).count();
                    b[skip..].to_vec()
                }
            };
            (o.number, v)
        })
        .collect()
}
