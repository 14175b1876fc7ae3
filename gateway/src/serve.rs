//! `lowband serve`: the gateway next to the homeserver.
//!
//! One UDP socket, one [`Server`] holding every tunnel's or device's session (demultiplexed
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
use core::net::SocketAddr;
use core::time::Duration;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use lowband_codec::coap::{
    BlockOpt, Code, IncomingRequest, Opt, OptionList, Options, Received, Responder,
};
use lowband_codec::noise::link::{ResponderConfig, TransportConfig};
use lowband_codec::noise::{Keypair, PublicKey};
use lowband_codec::session::Server;
use rand_chacha::rand_core::{OsRng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::alias::{ServeAliases, ALIAS};
use crate::syncstate::{ServeSync, SyncCtx, SYNC};
use crate::transport::{
    now_ms, on_big_stack, Datagrams, LinkParams, BLOCK, BLOCK_SZX, COAP_MTU, PACKET, VERSION,
};
use crate::wire::{self, opt, Auth, HttpRequest, HttpResponse, TokenRegistry, WireResponse};

/// Sessions one gateway holds.
pub const SESSIONS: usize = 32;
/// Exchange slots per session (requests in progress, separate responses).
const SLOTS: usize = 16;
/// Message ids remembered per session.
const DEDUP: usize = 32;

type GwServer = Server<SocketAddr, SESSIONS, SLOTS, DEDUP, 1, COAP_MTU>;

/// How long a large response body waits to be fetched.
const BODY_TTL_MS: u64 = 600_000;
/// Longest a homeserver request may take (long-polls included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

/// `serve` settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
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
    /// Where federation requests go (`None`: refused).
    pub federation: Option<crate::federation::FederationConfig>,
}

/// A homeserver answer for a session's request.
#[derive(Debug)]
struct Done {
    peer: [u8; 32],
    responder: Responder,
    response: HttpResponse,
    sync: Option<SyncCtx>,
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
}

struct State {
    server: Box<GwServer>,
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
    stats_dirty: bool,
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
    let socket = UdpSocket::bind(cfg.listen).await?;
    tracing::info!(addr = %socket.local_addr()?, "serve: listening");
    let link = cfg.link;
    let seed = rand_core::RngCore::next_u64(&mut OsRng);
    let server = on_big_stack(move || Box::new(GwServer::new(link.coap(seed))));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
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
        stats_dirty: false,
    };
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut last_stats = Instant::now();
    loop {
        let now = now_ms(start);
        let wake = [st.server.poll_timeout()]
            .into_iter()
            .chain(st.links.values().map(Datagrams::poll_timeout))
            .flatten()
            .min()
            .unwrap_or(now + 60_000);
        // Counters still to be written wake the loop too.
        let wake = if st.stats_dirty {
            wake.min(now + 60)
        } else {
            wake
        };
        let sleep = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now)));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => st.on_datagram(now_ms(start), from, &buf[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(d) = done_rx.recv() => st.on_done(now_ms(start), d),
            () = sleep => {
                let now = now_ms(start);
                st.server.handle_timeout(now);
                for l in st.links.values_mut() {
                    l.handle_timeout(now);
                }
            }
        }
        st.flush(now_ms(start), &socket).await;
        if st.stats_dirty && last_stats.elapsed() >= Duration::from_millis(50) {
            if let Some(p) = &cfg.stats_file {
                st.write_stats(p);
            }
            st.stats_dirty = false;
            last_stats = Instant::now();
        }
    }
}

impl State {
    fn on_datagram(&mut self, now: u64, from: SocketAddr, d: &[u8]) {
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
        let versions = [VERSION];
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
            tracing::debug!(?drop, %from, "serve: packet dropped");
        }
        self.stats_dirty = true;
        if let Some((i, Some(Received::Request(req)))) = got {
            self.on_request(now, i, req);
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
        let Some(peer) = self.server.session(i).map(|s| s.peer().0) else {
            return;
        };
        let mut p = self.peers.remove(&peer).unwrap_or_default();
        self.on_request_of(now, i, peer, &mut p, req);
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
            match lowband_codec::coap::block_slice(body, want, BLOCK_SZX) {
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
        // Alias definitions (crate::alias), on every block.
        let defs = req.options.iter().filter(|o| o.number == ALIAS);
        if p.aliases.define(defs.filter_map(|o| o.as_bytes())).is_err() {
            return self.respond_error(now, i, &to, 400, "M_UNKNOWN", "lowband: bad alias");
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
        tracing::debug!(
            method = %http.method,
            path = %path_only(&http.path_and_query),
            coap_options = req.options.iter().count(),
            link_body = req.payload.len(),
            "serve: request"
        );
        // TODO(ops): count requests per route in Metrics.
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
        tokio::spawn(async move {
            let response = match fed {
                Some((Some(f), x)) => f.forward(&http, x.as_deref()).await,
                Some((None, _)) => HttpResponse::matrix_error(
                    404,
                    "M_UNRECOGNIZED",
                    "lowband: this gateway does not carry federation",
                ),
                None => forward(&client, &base, &http, token.as_deref()).await,
            };
            let _ = tx.send(Done {
                peer,
                responder: to,
                response,
                sync,
            });
        });
    }

    fn on_done(&mut self, now: u64, d: Done) {
        let Some(i) = (0..self.server.len())
            .find(|&i| self.server.session(i).is_some_and(|s| s.peer().0 == d.peer))
        else {
            tracing::info!("serve: session gone before its response");
            return;
        };
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
        if w.body.bytes.len() <= BLOCK {
            let o = l.as_options();
            return self.respond(now, i, &d.responder, w.code, o, &w.body.bytes);
        }
        let p = self.peers.entry(d.peer).or_default();
        let id = p.next_body;
        p.next_body = p.next_body.wrapping_add(1);
        let first = BlockOpt::new(0, true, BLOCK_SZX);
        let size = u32::try_from(w.body.bytes.len()).unwrap_or(u32::MAX);
        let _ = l.push(Opt::uint(opt::BLOCK2, first.to_uint()));
        let _ = l.push(Opt::uint(opt::SIZE2, size));
        let _ = l.push(Opt::uint(opt::BODY, id));
        let o = l.as_options();
        if let Some(s) = self.server.session(i) {
            if let Err(e) = s
                .coap()
                .respond(now, &d.responder, w.code, o, &w.body.bytes[..BLOCK])
            {
                tracing::warn!(?e, "serve: response not sent");
                return;
            }
        }
        p.bodies
            .insert(id, (w.body.bytes.clone(), now + BODY_TTL_MS));
    }

    async fn flush(&mut self, now: u64, socket: &UdpSocket) {
        let mut out = vec![0u8; PACKET];
        let reasm_timeout = 2 * self.link.transmission().ack_timeout;
        let mtu = self.link.mtu;
        while let Some((to, n)) = self.server.poll_transmit(now, &mut out) {
            let link = self
                .links
                .entry(to)
                .or_insert_with(|| Datagrams::new(mtu, reasm_timeout));
            link.push(&out[..n]);
            while let Some(d) = link.out.pop_front() {
                if let Err(e) = socket.send_to(&d, to).await {
                    tracing::debug!(%e, %to, "serve: send failed");
                }
            }
            self.stats_dirty = true;
        }
        for i in 0..self.server.len() {
            if let Some(s) = self.server.session(i) {
                while let Some(e) = s.poll_event() {
                    tracing::debug!(?e, "serve: session event");
                }
            }
        }
    }

    fn write_stats(&mut self, path: &std::path::Path) {
        let mut m = serde_json::Map::new();
        for i in 0..self.server.len() {
            if let Some(s) = self.server.session(i) {
                let st = s.stats();
                m.insert(
                    crate::keys::encode_key(&s.peer().0),
                    serde_json::json!({
                        "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
                        "packets_in": st.packets_in, "packets_out": st.packets_out,
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
    let status = resp.status().as_u16();
    let h = resp.headers();
    let get =
        |n: hyper::header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut out = HttpResponse {
        status,
        content_type: get(hyper::header::CONTENT_TYPE),
        retry_after: get(hyper::header::RETRY_AFTER),
        location: get(hyper::header::LOCATION),
        content_disposition: get(hyper::header::CONTENT_DISPOSITION),
        body: Vec::new(),
    };
    match Limited::new(resp.into_body(), wire::MAX_MEDIA)
        .collect()
        .await
    {
        Ok(b) => out.body = b.to_bytes().to_vec(),
        Err(_) => {
            return HttpResponse::matrix_error(
                502,
                "M_TOO_LARGE",
                "homeserver response too large or cut",
            )
        }
    }
    out
}
