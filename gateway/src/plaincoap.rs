//! Plain CoAP over UDP on loopback, for interoperability tests only (no Noise, no security).
//!
//! Drives the sans-IO [`lowband_codec::coap::Endpoint`] over a `std::net::UdpSocket`: one
//! endpoint per peer address. The [`Server`] serves
//!
//! | path | method | what |
//! |---|---|---|
//! | `/echo` | POST | echoes the payload (2.05) |
//! | `/big` | GET | a 3000-byte body, Block2 (RFC 7959) with Size2 |
//! | `/upload` | POST/PUT | Block1 upload into a 4096-byte buffer (4.13 beyond); answers with the length; GET returns the last upload |
//! | `/obs` | GET | observable counter (RFC 7641), notified every `obs_interval` |
//!
//! and the [`Client`] does blocking requests with Block1/Block2 and Observe. Binding to a
//! non-loopback address is refused, and every constructor takes an explicit
//! [`Insecure`] token: this is not how lowband talks to anything real.

use lowband_codec::coap::block::{block_slice, transfer_key, BlockOpt, Progress, Reassembly};
use lowband_codec::coap::exchange::{Config, Endpoint, Event, Received, Request, RequestHandle};
use lowband_codec::coap::msg::{opt, Code, Opt, OptionList, Options};
use lowband_codec::coap::params::TransmissionParams;
extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::net::UdpSocket;
use std::time::Instant;

/// Options as (number, value) pairs, owned.
type OwnedOptions = Vec<(u16, Vec<u8>)>;
/// Called with each notification's payload; returns whether to keep observing.
type OnNotification<'f> = Option<&'f mut dyn FnMut(&[u8]) -> bool>;

/// The endpoint type used for plain CoAP: generous capacities, 1152-byte messages.
pub type PlainEndpoint = Endpoint<16, 64, 8, 1152>;

/// Proof that the caller asked for insecure plain CoAP (`--insecure-plain-coap`).
#[derive(Debug, Clone, Copy)]
pub struct Insecure(());

impl Insecure {
    /// Acknowledge that the traffic is unauthenticated and unencrypted.
    pub fn i_understand_this_is_unauthenticated() -> Self {
        Insecure(())
    }
}

/// Errors of the plain CoAP runner.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// Socket trouble.
    #[error("udp: {0}")]
    Io(#[from] std::io::Error),
    /// Only loopback addresses are allowed.
    #[error("plain CoAP is loopback-only: {0}")]
    NotLoopback(SocketAddr),
    /// A request failed in the endpoint.
    #[error("request failed: {0:?}")]
    Failed(lowband_codec::coap::RequestError),
    /// The endpoint refused to queue a message.
    #[error("send: {0:?}")]
    Send(lowband_codec::coap::SendError),
    /// The peer answered with an error code or a malformed block option.
    #[error("peer answered {0:?}")]
    Peer(Code),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// The 3000-byte body of `/big`: deterministic, printable.
pub fn big_body() -> Vec<u8> {
    (0..3000u32)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[(i * 7 % 36) as usize])
        .collect()
}

fn cfg(seed: u64) -> Config {
    Config {
        params: TransmissionParams::default(),
        seed,
        token_len: 4,
        extra_options: &[],
    }
}

struct Peer {
    ep: Box<PlainEndpoint>,
    upload: Reassembly<Vec<u8>>,
}

/// The plain CoAP test server.
#[derive(Debug)]
pub struct Server {
    sock: UdpSocket,
    obs_interval: Duration,
    stop: Arc<AtomicBool>,
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Peer")
    }
}

const OBS: u16 = 1;

impl Server {
    /// Bind to a loopback address (`127.0.0.1:0` picks a port).
    ///
    /// # Errors
    /// [`PlainError::NotLoopback`], socket errors.
    pub fn bind(_: Insecure, addr: SocketAddr, obs_interval: Duration) -> Result<Self, PlainError> {
        if !addr.ip().is_loopback() {
            return Err(PlainError::NotLoopback(addr));
        }
        let sock = UdpSocket::bind(addr)?;
        Ok(Server {
            sock,
            obs_interval,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }
    /// The bound address.
    ///
    /// # Errors
    /// Socket errors.
    pub fn local_addr(&self) -> Result<SocketAddr, PlainError> {
        Ok(self.sock.local_addr()?)
    }
    /// A flag that makes [`Server::run`] return.
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
    /// Serve until the stop flag is set.
    ///
    /// # Errors
    /// Socket errors.
    pub fn run(self) -> Result<(), PlainError> {
        let start = Instant::now();
        let now = || start.elapsed().as_millis() as u64;
        let mut peers: BTreeMap<SocketAddr, Peer> = BTreeMap::new();
        let big = big_body();
        let mut counter = 0u32;
        let mut last_upload = Vec::new();
        let mut next_obs = now() + self.obs_interval.as_millis() as u64;
        let mut buf = vec![0u8; 2048];
        let mut out = vec![0u8; 2048];
        let mut seed = 1u64;
        while !self.stop.load(Ordering::Relaxed) {
            let t = now();
            let mut wake = next_obs.min(t + 100);
            for p in peers.values() {
                if let Some(w) = p.ep.poll_timeout() {
                    wake = wake.min(w.max(t));
                }
            }
            self.sock
                .set_read_timeout(Some(Duration::from_millis(wake.saturating_sub(t).max(1))))?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let t = now();
                    let peer = peers.entry(from).or_insert_with(|| {
                        seed += 1;
                        Peer {
                            ep: Box::new(PlainEndpoint::new(cfg(seed))),
                            upload: Reassembly::new(vec![0; 4096]),
                        }
                    });
                    if let Some(Received::Request(r)) = peer.ep.handle_datagram(t, &buf[..n]) {
                        let path = r
                            .options
                            .first(opt::URI_PATH)
                            .and_then(|o| o.as_bytes())
                            .unwrap_or(b"");
                        tracing::debug!(?from, code = ?r.code, path = %String::from_utf8_lossy(path), "request");
                        let res = serve(peer, t, &r, path, &big, counter, &mut last_upload);
                        if let Err(e) = res {
                            tracing::warn!(?e, "respond failed");
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            let t = now();
            if t >= next_obs {
                counter += 1;
                next_obs = t + self.obs_interval.as_millis() as u64;
                let payload = counter.to_string();
                for p in peers.values_mut() {
                    let _ = p.ep.notify(
                        t,
                        OBS,
                        counter.is_multiple_of(5),
                        Code::CONTENT,
                        Options::NONE,
                        payload.as_bytes(),
                    );
                }
            }
            for (addr, p) in peers.iter_mut() {
                while let Some(n) = p.ep.poll_transmit(t, &mut out) {
                    self.sock.send_to(&out[..n], addr)?;
                }
                while let Some(e) = p.ep.poll_event() {
                    tracing::debug!(?addr, ?e, "event");
                }
            }
        }
        Ok(())
    }
}

fn serve(
    peer: &mut Peer,
    t: u64,
    r: &lowband_codec::coap::IncomingRequest<'_>,
    path: &[u8],
    big: &[u8],
    counter: u32,
    last_upload: &mut Vec<u8>,
) -> Result<(), lowband_codec::coap::SendError> {
    let ep = &mut peer.ep;
    let to = &r.responder;
    match (path, r.code) {
        (b"echo", Code::POST | Code::PUT) => {
            ep.respond(t, to, Code::CONTENT, Options::NONE, r.payload)
        }
        (b"big", Code::GET) | (b"upload", Code::GET) => {
            let body: &[u8] = if path == b"big" { big } else { last_upload };
            match BlockOpt::from_options(&r.options, opt::BLOCK2).map(|w| block_slice(body, w, 6)) {
                Ok(Ok((blk, chunk))) => {
                    let o = [
                        Opt::uint(opt::BLOCK2, blk.to_uint()),
                        Opt::uint(opt::SIZE2, body.len() as u32),
                    ];
                    ep.respond(t, to, Code::CONTENT, Options::List(&o), chunk)
                }
                _ => ep.respond(t, to, Code::BAD_OPTION, Options::NONE, &[]),
            }
        }
        (b"upload", Code::POST | Code::PUT) => {
            let blk = match BlockOpt::from_options(&r.options, opt::BLOCK1) {
                Ok(Some(b)) => b,
                Ok(None) => BlockOpt::new(0, false, 6),
                Err(_) => return ep.respond(t, to, Code::BAD_OPTION, Options::NONE, &[]),
            };
            let key = transfer_key(r.code, &r.options);
            let cap = peer.upload.capacity() as u32;
            let size_opt = [Opt::uint(opt::SIZE1, cap)];
            if peer.upload.key().is_some_and(|k| k != key) && !peer.upload.is_free() && blk.num == 0
            {
                peer.upload.reset();
            }
            match peer
                .upload
                .put(key, blk, r.payload, r.options.uint(opt::SIZE1))
            {
                Ok(Progress::More(b)) => {
                    let o = [Opt::uint(opt::BLOCK1, b.to_uint())];
                    ep.respond(t, to, Code::CONTINUE, Options::List(&o), &[])
                }
                Ok(Progress::Done(n)) => {
                    *last_upload = peer.upload.body().to_vec();
                    let msg = n.to_string();
                    let mut l: OptionList<'_, 2> = OptionList::new();
                    if r.options.first(opt::BLOCK1).is_some() {
                        let _ = l.push(Opt::uint(opt::BLOCK1, blk.to_uint()));
                    }
                    ep.respond(t, to, Code::CHANGED, l.as_options(), msg.as_bytes())
                }
                Err(e) => {
                    let o: &[Opt<'_>] = if e.code() == Code::REQUEST_ENTITY_TOO_LARGE {
                        &size_opt
                    } else {
                        &[]
                    };
                    ep.respond(t, to, e.code(), Options::List(o), &[])
                }
            }
        }
        (b"obs", Code::GET) => {
            let payload = counter.to_string();
            if r.observe == Some(0) {
                match ep.respond_observe(
                    t,
                    to,
                    OBS,
                    Code::CONTENT,
                    Options::NONE,
                    payload.as_bytes(),
                ) {
                    Err(lowband_codec::coap::SendError::ObserverTableFull) => {
                        ep.respond(t, to, Code::CONTENT, Options::NONE, payload.as_bytes())
                    }
                    other => other,
                }
            } else {
                ep.respond(t, to, Code::CONTENT, Options::NONE, payload.as_bytes())
            }
        }
        (b"echo" | b"big" | b"obs" | b"upload", _) => {
            ep.respond(t, to, Code::METHOD_NOT_ALLOWED, Options::NONE, &[])
        }
        _ => ep.respond(t, to, Code::NOT_FOUND, Options::NONE, &[]),
    }
}

/// A blocking plain CoAP client over the sans-IO endpoint.
#[derive(Debug)]
pub struct Client {
    sock: UdpSocket,
    ep: Box<PlainEndpoint>,
    start: Instant,
    /// Block size exponent for uploads and the Block2 size we ask for (default 2: 64 bytes).
    pub szx: u8,
}

/// A response: code and (reassembled) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Final response code.
    pub code: Code,
    /// Body, all blocks joined.
    pub body: Vec<u8>,
    /// Number of request/response exchanges it took.
    pub exchanges: usize,
}

impl Client {
    /// Connect to a loopback server.
    ///
    /// # Errors
    /// [`PlainError::NotLoopback`], socket errors.
    pub fn connect(_: Insecure, server: SocketAddr) -> Result<Self, PlainError> {
        if !server.ip().is_loopback() {
            return Err(PlainError::NotLoopback(server));
        }
        let sock = UdpSocket::bind(SocketAddr::new(server.ip(), 0))?;
        sock.connect(server)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        Ok(Client {
            sock,
            ep: Box::new(PlainEndpoint::new(cfg(seed))),
            start: Instant::now(),
            szx: 2,
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn flush(&mut self) -> Result<(), PlainError> {
        let mut out = [0u8; 1200];
        let t = self.now();
        while let Some(n) = self.ep.poll_transmit(t, &mut out) {
            self.sock.send(&out[..n])?;
        }
        Ok(())
    }

    /// Send one request and wait for its response (or, with `f`, for notifications until `f`
    /// returns false). Returns code, options as (number, value) pairs and payload.
    fn exchange(
        &mut self,
        req: Request<'_>,
        mut f: OnNotification<'_>,
    ) -> Result<(Code, OwnedOptions, Vec<u8>), PlainError> {
        let h: RequestHandle = self.ep.request(self.now(), req).map_err(PlainError::Send)?;
        let mut buf = vec![0u8; 2048];
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            self.flush()?;
            while let Some(e) = self.ep.poll_event() {
                if let Event::Failed { handle, error } = e {
                    if handle == h {
                        return Err(PlainError::Failed(error));
                    }
                }
            }
            if Instant::now() > give_up {
                self.ep.cancel(h);
                return Err(PlainError::Timeout);
            }
            let t = self.now();
            let wait = self
                .ep
                .poll_timeout()
                .map_or(200, |w| w.saturating_sub(t).clamp(1, 200));
            self.sock
                .set_read_timeout(Some(Duration::from_millis(wait)))?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let t = self.now();
            if let Some(Received::Response(r)) = self.ep.handle_datagram(t, &buf[..n]) {
                if r.handle != h {
                    continue;
                }
                let opts = r
                    .options
                    .iter()
                    .map(|o| (o.number, o.as_bytes().unwrap_or(&[]).to_vec()))
                    .collect();
                let payload = r.payload.to_vec();
                if let Some(f) = f.as_mut() {
                    if !r.last && f(&payload) {
                        continue;
                    }
                    if !r.last {
                        self.ep.cancel(h);
                    }
                }
                let code = r.code;
                self.flush()?;
                return Ok((code, opts, payload));
            }
        }
    }

    /// A request to `path` (segments split on `/`) with block-wise transfer both ways.
    ///
    /// # Errors
    /// [`PlainError`].
    pub fn request(
        &mut self,
        code: Code,
        path: &str,
        payload: &[u8],
    ) -> Result<Response, PlainError> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let szx = self.szx;
        let block = 16usize << szx;
        let mut exchanges = 0;
        // Block1 upload (one block at a time, RFC 7959 §2.5)
        let mut num = 0u32;
        let tag = [(self.now() & 0xff) as u8];
        let (mut code_out, mut opts, mut body) = loop {
            let (blk, chunk) = if payload.len() > block {
                let (b, c) = block_slice(payload, Some(BlockOpt::new(num, false, szx)), szx)
                    .map_err(|e| PlainError::Peer(e.code()))?;
                (Some(b), c)
            } else {
                (None, payload)
            };
            let mut o: Vec<Opt<'_>> = segs.iter().map(|s| Opt::str(opt::URI_PATH, s)).collect();
            if let Some(b) = blk {
                o.push(Opt::uint(opt::BLOCK1, b.to_uint()));
                if b.num == 0 {
                    o.push(Opt::uint(opt::SIZE1, payload.len() as u32));
                }
                o.push(Opt::bytes(opt::REQUEST_TAG, &tag));
            }
            o.sort_by_key(|x| x.number);
            exchanges += 1;
            let (c, ro, rp) = self.exchange(Request::con(code, Options::List(&o), chunk), None)?;
            match blk {
                Some(b) if b.more && c == Code::CONTINUE => {
                    // the server may ask for smaller blocks: follow its SZX
                    let ack = ro
                        .iter()
                        .find(|x| x.0 == opt::BLOCK1)
                        .and_then(|x| lowband_codec::coap::msg::decode_uint(&x.1));
                    let next_off = b.offset() + chunk.len();
                    match ack.and_then(|v| BlockOpt::from_uint(v).ok()) {
                        Some(a) if a.szx < szx => {
                            self.szx = a.szx;
                            return self.request(code, path, payload);
                        }
                        _ => num = (next_off / block) as u32,
                    }
                }
                _ => break (c, ro, rp),
            }
        };
        // Block2 download continuation (RFC 7959 §2.4)
        loop {
            let b2 = opts
                .iter()
                .find(|x| x.0 == opt::BLOCK2)
                .and_then(|x| lowband_codec::coap::msg::decode_uint(&x.1))
                .and_then(|v| BlockOpt::from_uint(v).ok());
            let Some(b2) = b2 else { break };
            if !b2.more {
                break;
            }
            let next = BlockOpt::new(
                ((b2.offset() + b2.size()) / b2.size()) as u32,
                false,
                b2.szx,
            );
            let mut o: Vec<Opt<'_>> = segs.iter().map(|s| Opt::str(opt::URI_PATH, s)).collect();
            o.push(Opt::uint(opt::BLOCK2, next.to_uint()));
            o.sort_by_key(|x| x.number);
            exchanges += 1;
            let (c, ro, rp) =
                self.exchange(Request::con(Code::GET, Options::List(&o), &[]), None)?;
            if c.class() != 2 {
                return Err(PlainError::Peer(c));
            }
            body.extend_from_slice(&rp);
            code_out = c;
            opts = ro;
        }
        Ok(Response {
            code: code_out,
            body,
            exchanges,
        })
    }

    /// Observe `path` until `n` notifications (the first response included) have arrived;
    /// returns their payloads in order of acceptance.
    ///
    /// # Errors
    /// [`PlainError`].
    pub fn observe(&mut self, path: &str, n: usize) -> Result<Vec<Vec<u8>>, PlainError> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut o: Vec<Opt<'_>> = vec![Opt::uint(opt::OBSERVE, 0)];
        o.extend(segs.iter().map(|s| Opt::str(opt::URI_PATH, s)));
        let mut got = Vec::new();
        let mut f = |p: &[u8]| {
            got.push(p.to_vec());
            got.len() < n
        };
        let req = Request {
            timeout: Some(120_000),
            ..Request::con(Code::GET, Options::List(&o), &[])
        };
        let (_, _, last) = self.exchange(req, Some(&mut f))?;
        if got.len() < n {
            got.push(last);
        }
        Ok(got)
    }
}
