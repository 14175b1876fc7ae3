//! The device profile (`lowband_codec::lb::dev`) against `serve`, in-process: a minimal
//! device (a Noise client with the device link version over UDP, speaking the profile's
//! operations) and a stub homeserver that keeps a small event stream, so that each
//! operation's HTTP request, its answer and the pushed sync can be checked, across a `serve`
//! restart too.

use core::net::SocketAddr;
use core::time::Duration;
use std::path::PathBuf;
use std::time::Instant;
extern crate alloc;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lowband_codec::coap::{Code, Opt, Options, Received, Request, RequestHandle};
use lowband_codec::lb::dev::{self, Item, Kind, Op};
use lowband_codec::lb::{code_to_status, opt, Auth};
use lowband_codec::noise::link::{InitiatorConfig, LinkPattern, TransportConfig};
use lowband_codec::noise::{Keypair, PublicKey};
use lowband_codec::session::Client;
use lowband_gateway::metrics::Metrics;
use lowband_gateway::serve::{self, ServeConfig};
use lowband_gateway::transport::{Datagrams, LinkParams};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};
use tokio::net::{TcpListener, UdpSocket};

const LINK: LinkParams = LinkParams {
    rate: 9600,
    mtu: 256,
};
const TOKEN: &str = "syt_device_token";
const ME: &str = "@dev:x";
const HOME: &str = "!home:x";

/// One HTTP request the stub saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path as sent (percent-encoded).
    path: String,
    query: String,
    body: String,
    auth: String,
}

/// The stub's event stream: (room, event); a since token `sN` means "the first N seen".
#[derive(Debug, Default)]
struct HsState {
    events: Vec<(String, Value)>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
struct Hs {
    addr: SocketAddr,
    st: Arc<Mutex<HsState>>,
}

fn member(who: &str, membership: &str) -> Value {
    json!({"type": "m.room.member", "sender": who, "state_key": who,
        "content": {"membership": membership}})
}

fn text(sender: &str, body: &str) -> Value {
    json!({"type": "m.room.message", "sender": sender,
        "content": {"msgtype": "m.text", "body": body}})
}

impl Hs {
    async fn start() -> Hs {
        let st = Arc::new(Mutex::new(HsState::default()));
        // The device is in HOME from the start.
        st.lock()
            .unwrap()
            .events
            .push((HOME.into(), member(ME, "join")));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hs = Hs { addr, st };
        let h = hs.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let h = h.clone();
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(s),
                    service_fn(move |r: hyper::Request<hyper::body::Incoming>| {
                        let h = h.clone();
                        async move {
                            let (status, body) = h.handle(r).await;
                            Ok::<_, core::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    }),
                ));
            }
        });
        hs
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn post(&self, room: &str, ev: Value) {
        self.st.lock().unwrap().events.push((room.into(), ev));
    }

    fn seen(&self) -> Vec<Seen> {
        self.st.lock().unwrap().seen.clone()
    }

    /// Waits until a poller's sync with a since token was asked (the first sync, which
    /// only sets "now", is done).
    async fn wait_poll(&self) {
        for _ in 0..500 {
            if self.seen().iter().any(|s| s.query.contains("since=")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no poll");
    }

    /// Requests other than syncs, from `from` on.
    fn calls_since(&self, from: usize) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .skip(from)
            .filter(|s| !s.path.ends_with("/sync"))
            .collect()
    }

    fn error_of(room: &str) -> Option<(u16, Value)> {
        match room {
            "%21forbidden%3Ax" => Some((403, json!({"errcode": "M_FORBIDDEN", "error": "no"}))),
            "%21busy%3Ax" => Some((
                429,
                json!({"errcode": "M_LIMIT_EXCEEDED", "error": "slow", "retry_after_ms": 900}),
            )),
            "%21legal%3Ax" => Some((451, json!({"errcode": "M_UNKNOWN", "error": "legal"}))),
            _ => None,
        }
    }

    async fn handle(&self, r: hyper::Request<hyper::body::Incoming>) -> (u16, Value) {
        let method = r.method().to_string();
        let path = r.uri().path().to_owned();
        let query = r.uri().query().unwrap_or("").to_owned();
        let auth = r
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        self.st.lock().unwrap().seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body,
            auth,
        });
        let p: Vec<&str> = path
            .trim_start_matches("/_matrix/client/v3/")
            .split('/')
            .collect();
        match (method.as_str(), p.as_slice()) {
            ("GET", ["account", "whoami"]) => (200, json!({"user_id": ME})),
            ("GET", ["sync"]) => self.sync(&query).await,
            ("POST", ["join", room]) => {
                if let Some(e) = Self::error_of(room) {
                    return e;
                }
                let room = decode(room);
                self.post(&room, member(ME, "join"));
                (200, json!({"room_id": room}))
            }
            ("POST", ["rooms", room, "leave"]) => {
                if let Some(e) = Self::error_of(room) {
                    return e;
                }
                self.post(&decode(room), member(ME, "leave"));
                (200, json!({}))
            }
            ("PUT", ["rooms", _, "typing", _]) => (200, json!({})),
            ("PUT", ["rooms", room, "send", _, txn]) => match Self::error_of(room) {
                Some(e) => e,
                None => (200, json!({"event_id": format!("$e_{txn}")})),
            },
            _ => (404, json!({"errcode": "M_UNRECOGNIZED"})),
        }
    }

    /// A sync in the manner of Synapse: a room the device joined since `since` comes with
    /// its history; a room it left comes under `leave`; messages of rooms it is not in are
    /// not there.
    async fn sync(&self, query: &str) -> (u16, Value) {
        let q: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let since = q
            .get("since")
            .map(|s| s.trim_start_matches('s').parse::<usize>().unwrap());
        let timeout: u64 = q.get("timeout").and_then(|t| t.parse().ok()).unwrap_or(0);
        let from = since.unwrap_or(0);
        let start = Instant::now();
        while since.is_some()
            && self.st.lock().unwrap().events.len() <= from
            && start.elapsed() < Duration::from_millis(timeout.min(300))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let st = self.st.lock().unwrap();
        let ev = &st.events;
        let mut join = serde_json::Map::new();
        let mut leave = serde_json::Map::new();
        let mut rooms: Vec<&String> = ev.iter().map(|(r, _)| r).collect();
        rooms.sort();
        rooms.dedup();
        for room in rooms {
            let of_room: Vec<(usize, &Value)> = ev
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| r == room)
                .map(|(i, (_, e))| (i, e))
                .collect();
            let own: Vec<(usize, &str)> = of_room
                .iter()
                .filter(|(_, e)| e["state_key"] == ME)
                .map(|(i, e)| (*i, e["content"]["membership"].as_str().unwrap()))
                .collect();
            let Some(&(at, m)) = own.last() else {
                continue;
            };
            let new: Vec<Value> = of_room
                .iter()
                .filter(|(i, _)| *i >= from || since.is_none() || (m == "join" && at >= from))
                .filter(|(i, _)| m == "join" || *i <= at)
                .map(|(_, e)| (*e).clone())
                .collect();
            if m == "join" && !new.is_empty() {
                join.insert(room.clone(), json!({"timeline": {"events": new}}));
            } else if m == "leave" && at >= from && since.is_some() {
                leave.insert(room.clone(), json!({"timeline": {"events": new}}));
            }
        }
        (
            200,
            json!({"next_batch": format!("s{}", ev.len()),
                "rooms": {"join": join, "leave": leave}}),
        )
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

type DevClient = Client<ChaCha20Rng, 4, 8, 1, 512>;

/// A response or notification the device got.
#[derive(Debug, Clone)]
struct Got {
    handle: RequestHandle,
    code: Code,
    status: Option<u32>,
    retry_after: Option<String>,
    payload: Vec<u8>,
    observe: Option<u32>,
}

/// A minimal device: a session to `serve` over UDP, the token registered with every request
/// (simple, not frugal), aliases defined with every request that names them.
struct Device {
    sock: UdpSocket,
    client: Box<DevClient>,
    link: Datagrams,
    start: Instant,
    got: Vec<Got>,
    registration: Option<RequestHandle>,
    /// Whether serve has the token (registered with the first operation).
    token_sent: bool,
    /// Alias slots defined in this session.
    defined: BTreeMap<u8, String>,
    /// Lengths of the link packets sent and received.
    sent: Vec<usize>,
    received: Vec<usize>,
    /// Wakes from serve ([`Op::Wake`]) answered 2.04, and the index in `received` of each.
    wakes: Vec<usize>,
}

impl Device {
    async fn connect(gw: SocketAddr, gw_key: PublicKey, key: &Keypair, seed: u64) -> Device {
        let init = InitiatorConfig {
            pattern: LinkPattern::IK,
            version: dev::LINK_VERSION,
            local: key.clone(),
            remote: gw_key,
            retransmit: LINK.retransmit(),
            transport: TransportConfig::default(),
        };
        let client = Box::new(
            DevClient::new(init, LINK.coap(seed), ChaCha20Rng::seed_from_u64(seed)).unwrap(),
        );
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(gw).await.unwrap();
        Device {
            sock,
            client,
            link: Datagrams::new(LINK.mtu, 2 * LINK.transmission().ack_timeout),
            start: Instant::now(),
            got: Vec::new(),
            registration: None,
            token_sent: false,
            defined: BTreeMap::new(),
            sent: Vec::new(),
            received: Vec::new(),
            wakes: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs the link until `done` holds or `secs` pass; returns whether it held.
    async fn drive(&mut self, secs: u64, mut done: impl FnMut(&[Got]) -> bool) -> bool {
        self.drive_with(secs, |d| done(&d.got)).await
    }

    /// [`Device::drive`] with the whole device in view. A request from serve is answered as
    /// a device does: a wake ([`Op::Wake`], the whole payload of a POST) 2.04, anything else
    /// 4.04 (re-registering is the test's move).
    async fn drive_with(&mut self, secs: u64, mut done: impl FnMut(&Device) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut out = vec![0u8; 2048];
        let mut buf = vec![0u8; 2048];
        let mut scratch = vec![0u8; 2048];
        loop {
            let now = self.now();
            self.client.handle_timeout(now);
            while let Some(n) = self.client.poll_transmit(now, &mut out) {
                self.sent.push(n);
                self.link.push(&out[..n]);
            }
            while let Some(d) = self.link.out.pop_front() {
                let _ = self.sock.send(&d).await;
            }
            if done(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(20), self.sock.recv(&mut buf)).await
            else {
                continue;
            };
            let now = self.now();
            let Some(packet) = self.link.receive(now, &buf[..n]).map(<[u8]>::to_vec) else {
                continue;
            };
            self.received.push(packet.len());
            let got = self.client.handle_packet(now, &packet, &mut scratch);
            if let Some(Received::Request(req)) = got {
                let mut wake = [0u8; 1];
                let n = Op::Wake.write(&mut wake).unwrap();
                let code = if req.code == Code::POST && req.payload == &wake[..n] {
                    self.wakes.push(self.received.len() - 1);
                    Code::CHANGED
                } else {
                    Code::NOT_FOUND
                };
                let to = req.responder;
                self.client
                    .coap()
                    .respond(now, &to, code, Options::NONE, &[])
                    .unwrap();
            } else if let Some(Received::Response(r)) = got {
                self.got.push(Got {
                    handle: r.handle,
                    code: r.code,
                    status: r.options.uint(opt::STATUS),
                    retry_after: r
                        .options
                        .first(opt::RETRY_AFTER)
                        .and_then(|o| o.as_bytes())
                        .map(|b| String::from_utf8_lossy(b).into_owned()),
                    payload: r.payload.to_vec(),
                    observe: r.observe,
                });
            }
        }
    }

    /// Sends a request and waits for its response.
    async fn call(&mut self, code: Code, opts: &[Opt<'_>], payload: &[u8]) -> Got {
        let now = self.now();
        let h = self
            .client
            .request(now, Request::con(code, Options::List(opts), payload))
            .unwrap();
        assert!(
            self.drive(20, |g| g.iter().any(|g| g.handle == h)).await,
            "no response"
        );
        let i = self.got.iter().position(|g| g.handle == h).unwrap();
        self.got.remove(i)
    }

    /// A device-profile PUT: the op and its payload, room `slot` defined as `room` (when
    /// this session has not defined it so yet); the token goes with the first one.
    async fn op(&mut self, op: Op, rest: &[u8], slot_room: Option<(u8, &str)>) -> Got {
        let mut payload = vec![0u8; 16 + rest.len()];
        let n = op.write(&mut payload).unwrap();
        payload.truncate(n);
        payload.extend_from_slice(rest);
        let mut auth = vec![0u8; 64];
        let an = Auth::Register(0, TOKEN).write(&mut auth).unwrap();
        let mut def = Vec::new();
        let mut opts = Vec::new();
        if !self.token_sent {
            opts.push(Opt::bytes(opt::AUTH, &auth[..an]));
        }
        if let Some((slot, room)) = slot_room {
            if self.defined.get(&slot).map(String::as_str) != Some(room) {
                def.push(slot);
                def.extend_from_slice(room.as_bytes());
                opts.push(Opt::bytes(opt::ALIAS, &def));
                self.defined.insert(slot, room.to_owned());
            }
        }
        let r = self.call(Code::PUT, &opts, &payload).await;
        self.token_sent = true;
        r
    }

    /// Link bytes (request, response) of one operation sent with everything defined.
    async fn op_bytes(
        &mut self,
        op: Op,
        rest: &[u8],
        slot_room: (u8, &str),
    ) -> (Got, usize, usize) {
        let (s, r) = (self.sent.len(), self.received.len());
        let g = self.op(op, rest, Some(slot_room)).await;
        (
            g,
            self.sent[s..].iter().sum(),
            self.received[r..].iter().sum(),
        )
    }

    /// Registers for pushed sync with the last item applied.
    async fn register(&mut self, last: u32, since: &str) {
        let mut auth = vec![0u8; 64];
        let an = Auth::Register(0, TOKEN).write(&mut auth).unwrap();
        let mut op = [0u8; 11];
        let on = Op::Sync { last, keep: false }.write(&mut op).unwrap();
        let mut payload = vec![0u8; 64];
        let pn = dev::write_register(since, "", &mut payload).unwrap();
        let opts = [
            Opt::bytes(opt::AUTH, &auth[..an]),
            Opt::uint(lowband_codec::coap::opt::OBSERVE, 0),
            Opt::bytes(opt::DEVICE, &op[..on]),
        ];
        let now = self.now();
        // The previous observation is over (as the device runner does).
        if let Some(old) = self.registration.take() {
            self.client.coap().cancel(old);
        }
        let mut req = Request::con(Code::GET, Options::List(&opts), &payload[..pn]);
        req.timeout = Some(120_000);
        let h = self.client.request(now, req).unwrap();
        self.registration = Some(h);
        assert!(
            self.drive(20, |g| g.iter().any(|g| g.handle == h)).await,
            "registration not answered"
        );
        let i = self.got.iter().position(|g| g.handle == h).unwrap();
        let g = self.got.remove(i);
        assert_eq!(g.code, Code::CONTENT);
        assert!(g.observe.is_some() && g.payload.is_empty(), "{g:?}");
    }

    /// The next pushed item (seq, kind, room id or number, body), within `secs`.
    async fn item(&mut self, secs: u64) -> Option<(u8, Kind, String)> {
        let h = self.registration?;
        let is_item = move |g: &Got| g.handle == h && !g.payload.is_empty();
        if !self.drive(secs, |g| g.iter().any(is_item)).await {
            return None;
        }
        let i = self.got.iter().position(is_item).unwrap();
        let g = self.got.remove(i);
        let it = Item::parse(&g.payload).unwrap();
        Some((it.seq, it.kind, it.body.to_owned()))
    }
}

fn keys(seed: u64) -> (Keypair, Keypair) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (Keypair::generate(&mut rng), Keypair::generate(&mut rng))
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowband-dev-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn setup(seed: u64, state: Option<PathBuf>) -> (Hs, Device, impl Fn() -> ServeConfig) {
    let (gw, dk) = keys(seed);
    let hs = Hs::start().await;
    let udp = free_udp();
    let (url, secret, allowed) = (hs.url(), gw.secret_bytes(), dk.public().0);
    let cfg = move || ServeConfig {
        listen: Some(udp),
        homeserver: url.clone(),
        key: secret,
        allowed: vec![allowed],
        link: LINK,
        state_dir: state.clone(),
        metrics: Metrics::new(),
        ..ServeConfig::default()
    };
    let d = Device::connect(udp, gw.public(), &dk, seed).await;
    (hs, d, cfg)
}

fn body_json(s: &Seen) -> Value {
    serde_json::from_str(&s.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ops_become_matrix_requests() {
    let (hs, mut d, cfg) = setup(11, None).await;
    tokio::spawn(serve::run(cfg()));
    let r = d.op(Op::Join { slot: 0 }, &[], Some((0, "!r:x"))).await;
    assert_eq!((r.code, r.payload.len()), (Code::CHANGED, 0), "{r:?}");
    let r = d
        .op(
            Op::Typing {
                slot: 0,
                timeout_ms: 30_000,
            },
            &[],
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!(r.code, Code::CHANGED);
    let r = d
        .op(
            Op::Typing {
                slot: 0,
                timeout_ms: 0,
            },
            &[],
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!(r.code, Code::CHANGED);
    let content = lowband_codec::pack::pack_vec(br#"{"v":21.5,"unit":"C"}"#).unwrap();
    let mut ev = vec![0u8; 64];
    let n = dev::write_event("org.x.reading", &content, &mut ev).unwrap();
    let r = d
        .op(
            Op::Event {
                slot: 0,
                boot: 3,
                seq: 9,
            },
            &ev[..n],
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!((r.code, r.payload.len()), (Code::CHANGED, 0), "{r:?}");
    // A type with characters that must not shape the path; no content: {}.
    let n = dev::write_event("a/b c?", b"", &mut ev).unwrap();
    let r = d
        .op(
            Op::Event {
                slot: 0,
                boot: 3,
                seq: 10,
            },
            &ev[..n],
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!(r.code, Code::CHANGED);
    let r = d
        .op(
            Op::Text {
                slot: 0,
                boot: 3,
                seq: 200,
            },
            b"t=21.5",
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!((r.code, r.payload.len()), (Code::CHANGED, 0), "{r:?}");
    let r = d.op(Op::Leave { slot: 0 }, &[], Some((0, "!r:x"))).await;
    assert_eq!((r.code, r.payload.len()), (Code::CHANGED, 0), "{r:?}");

    let calls = hs.calls_since(0);
    // What each costs on the link once the token and the room's alias are known (Noise
    // packets; a serial line adds 2 bytes of framing each way): request = Noise header 2 +
    // CoAP header 4 + token 1 + payload marker 1 + op + tag 4; the answer an empty 2.04
    // piggybacked on the ACK, 2 + 4 + 1 + 4 = 11.
    for (op, rest, want) in [
        (Op::Join { slot: 0 }, &b""[..], 13),
        (Op::Leave { slot: 0 }, b"", 13),
        (
            Op::Typing {
                slot: 0,
                timeout_ms: 30_000,
            },
            b"",
            16,
        ),
        (
            Op::Typing {
                slot: 0,
                timeout_ms: 0,
            },
            b"",
            14,
        ),
        (
            Op::Event {
                slot: 0,
                boot: 3,
                seq: 11,
            },
            b"\x01t",
            17,
        ),
    ] {
        let (r, req, resp) = d.op_bytes(op, rest, (0, "!r:x")).await;
        assert_eq!(r.code, Code::CHANGED);
        assert_eq!((req, resp), (want, 11), "{op:?}");
        // With serial framing: a join or leave exchange 28 bytes, a typing notice 31 at most.
        if !matches!(op, Op::Event { .. }) {
            assert!(req + resp + 4 <= 31, "{op:?}");
        }
    }
    let got: Vec<(String, String, Value)> = calls
        .iter()
        .map(|s| {
            assert_eq!(s.auth, format!("Bearer {TOKEN}"));
            let b = if s.body.is_empty() {
                Value::Null
            } else {
                body_json(s)
            };
            (s.method.clone(), s.path.clone(), b)
        })
        .collect();
    let p = "/_matrix/client/v3";
    let want = vec![
        ("POST".into(), format!("{p}/join/%21r%3Ax"), json!({})),
        // The user id is asked once for the token, then cached.
        ("GET".into(), format!("{p}/account/whoami"), Value::Null),
        (
            "PUT".into(),
            format!("{p}/rooms/%21r%3Ax/typing/%40dev%3Ax"),
            json!({"typing": true, "timeout": 30000}),
        ),
        (
            "PUT".into(),
            format!("{p}/rooms/%21r%3Ax/typing/%40dev%3Ax"),
            json!({"typing": false}),
        ),
        (
            "PUT".into(),
            format!("{p}/rooms/%21r%3Ax/send/org.x.reading/d3.9"),
            json!({"v": 21.5, "unit": "C"}),
        ),
        (
            "PUT".into(),
            format!("{p}/rooms/%21r%3Ax/send/a%2Fb%20c%3F/d3.10"),
            json!({}),
        ),
        (
            "PUT".into(),
            format!("{p}/rooms/%21r%3Ax/send/m.room.message/d3.200"),
            json!({"msgtype": "m.text", "body": "t=21.5"}),
        ),
        (
            "POST".into(),
            format!("{p}/rooms/%21r%3Ax/leave"),
            json!({}),
        ),
    ];
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_op_errors_map_to_codes_and_bad_ops_stay_local() {
    let (hs, mut d, cfg) = setup(12, None).await;
    tokio::spawn(serve::run(cfg()));
    let status = |g: &Got| code_to_status(g.code, g.status);
    let r = d
        .op(Op::Join { slot: 1 }, &[], Some((1, "!forbidden:x")))
        .await;
    assert_eq!((r.code, status(&r)), (Code::new(4, 3), 403), "{r:?}");
    assert!(r.payload.is_empty(), "{r:?}");
    let n = {
        let mut ev = vec![0u8; 16];
        let n = dev::write_event("t", b"", &mut ev).unwrap();
        ev.truncate(n);
        ev
    };
    let r = d
        .op(
            Op::Event {
                slot: 2,
                boot: 1,
                seq: 1,
            },
            &n,
            Some((2, "!busy:x")),
        )
        .await;
    assert_eq!(status(&r), 429, "{r:?}");
    // The error's text stays at the gateway; when to retry goes along.
    assert!(r.payload.is_empty(), "{r:?}");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    let r = d
        .op(Op::Leave { slot: 3 }, &[], Some((3, "!legal:x")))
        .await;
    assert_eq!(
        (r.code, r.status, status(&r)),
        (Code::CONTENT, Some(451), 451),
        "{r:?}"
    );
    let before = hs.seen().len();
    // An undefined slot: 4.12, define it again.
    let r = d.op(Op::Join { slot: 9 }, &[], None).await;
    assert_eq!(r.code, Code::new(4, 12));
    // A slot that holds no room, trailing bytes, a content that is not packed JSON.
    let r = d.op(Op::Join { slot: 4 }, &[], Some((4, "@u:x"))).await;
    assert_eq!(r.code, Code::BAD_REQUEST);
    let r = d.op(Op::Leave { slot: 0 }, b"x", Some((0, "!r:x"))).await;
    assert_eq!(r.code, Code::BAD_REQUEST);
    let r = d
        .op(
            Op::Event {
                slot: 0,
                boot: 1,
                seq: 2,
            },
            b"\x01t\xff\xff",
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!(r.code, Code::BAD_REQUEST);
    let r = d
        .op(
            Op::Event {
                slot: 0,
                boot: 1,
                seq: 3,
            },
            b"\x00",
            Some((0, "!r:x")),
        )
        .await;
    assert_eq!(r.code, Code::BAD_REQUEST);
    // None of those reached the homeserver.
    assert_eq!(
        hs.calls_since(before).len(),
        0,
        "{:?}",
        hs.calls_since(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_starts_now_and_a_joined_room_is_pushed_from_the_join_on() {
    let (hs, mut d, cfg) = setup(13, None).await;
    tokio::spawn(serve::run(cfg()));
    hs.post(HOME, text("@a:x", "long handled"));
    hs.post("!new:x", text("@a:x", "before the join"));
    d.register(0, "").await;
    // Starts now: nothing of the first sync is pushed.
    assert_eq!(d.item(2).await, None);
    hs.post(HOME, text("@a:x", "first"));
    assert_eq!(d.item(10).await, Some((1, Kind::Text, "first".into())));
    let r = d.op(Op::Join { slot: 1 }, &[], Some((1, "!new:x"))).await;
    assert_eq!(r.code, Code::CHANGED);
    hs.post("!new:x", text("@a:x", "after the join"));
    assert_eq!(
        d.item(10).await,
        Some((2, Kind::Text, "after the join".into()))
    );
    // A leave stops the room: its Left item is not pushed, nor what follows in it.
    let r = d.op(Op::Leave { slot: 1 }, &[], Some((1, "!new:x"))).await;
    assert_eq!(r.code, Code::CHANGED);
    hs.post("!new:x", text("@a:x", "after the leave"));
    hs.post(HOME, text("@a:x", "marker"));
    assert_eq!(d.item(10).await, Some((3, Kind::Text, "marker".into())));
    assert_eq!(d.item(1).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cursor_survives_a_serve_restart_and_pushes_the_outage_once() {
    let state = tmp_dir("restart");
    let (hs, mut d, cfg) = setup(14, Some(state.clone())).await;
    let first = tokio::spawn(serve::run(cfg()));
    d.register(0, "").await;
    hs.wait_poll().await;
    hs.post(HOME, text("@a:x", "one"));
    assert_eq!(d.item(10).await, Some((1, Kind::Text, "one".into())));
    // Let serve see the acknowledgement and write the cursor.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "device"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text_of = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!text_of.contains(TOKEN), "the token is never written");
    first.abort();
    let _ = first.await;
    // While serve is down.
    hs.post(HOME, text("@a:x", "during the outage"));
    let syncs_before = hs.seen().len();
    tokio::spawn(serve::run(cfg()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The device (which saved item 1) registers again.
    d.register(1, "").await;
    assert_eq!(
        d.item(10).await,
        Some((2, Kind::Text, "during the outage".into()))
    );
    assert_eq!(d.item(2).await, None, "pushed once");
    // The new serve resumed the long-poll from the saved since token (s2: the join and
    // "one"), not from "now".
    let resumed = hs
        .seen()
        .into_iter()
        .skip(syncs_before)
        .find(|s| s.path.ends_with("/sync"))
        .unwrap();
    assert!(resumed.query.contains("since=s2"), "{resumed:?}");
    hs.post(HOME, text("@a:x", "after"));
    assert_eq!(d.item(10).await, Some((3, Kind::Text, "after".into())));
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_serve_wakes_the_device_which_registers_and_gets_the_outage_at_once() {
    let state = tmp_dir("wake");
    let (hs, mut d, cfg) = setup(15, Some(state.clone())).await;
    let first = tokio::spawn(serve::run(cfg()));
    d.register(0, "").await;
    hs.wait_poll().await;
    hs.post(HOME, text("@a:x", "one"));
    assert_eq!(d.item(10).await, Some((1, Kind::Text, "one".into())));
    // Let serve see the acknowledgement and write the cursor (with where the device is).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        d.wakes.is_empty(),
        "a serve that did not restart wakes nobody"
    );
    first.abort();
    let _ = first.await;
    hs.post(HOME, text("@a:x", "during the outage"));
    let (sent0, received0) = (d.sent.len(), d.received.len());
    let restarted = Instant::now();
    tokio::spawn(serve::run(cfg()));
    // The device sends nothing on its own: serve wakes it.
    assert!(
        d.drive_with(10, |d| !d.wakes.is_empty()).await,
        "serve did not wake the device"
    );
    // Bytes of the wake exchange (link packets; a serial line adds COBS and a delimiter, 2
    // each way): POST = Noise header 2 + CoAP 4 + token 1 + marker 1 + WAKE 1 + tag 4 = 13,
    // its piggybacked 2.04 = 2 + 4 + 1 + 4 = 11.
    assert_eq!(d.wakes, vec![received0]);
    assert_eq!(d.received[received0], 13);
    assert_eq!(d.sent[sent0], 11);
    // The device registers again at once, with its token: the outage's event is pushed
    // without waiting for a refresh.
    d.register(1, "").await;
    assert_eq!(
        d.item(10).await,
        Some((2, Kind::Text, "during the outage".into()))
    );
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(d.item(2).await, None, "pushed once");
    assert_eq!(d.wakes.len(), 1, "woken once");
    hs.post(HOME, text("@a:x", "after"));
    assert_eq!(d.item(10).await, Some((3, Kind::Text, "after".into())));
    let _ = std::fs::remove_dir_all(&state);
}
