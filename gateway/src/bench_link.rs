//! `lowband bench link`: link bytes of each Matrix operation of the baseline.
//!
//! `serve` and `tunnel` run in this process on loopback (no emulator) in front of a real
//! homeserver; the operations are plain HTTP calls to the tunnel, as a client would make
//! them; the bytes are `serve`'s link counters (both directions, Noise and CoAP framing
//! included, datagram fragmentation included) from just before the call until they settle
//! after its answer (late ACKs count).
use core::net::SocketAddr;
use core::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use lowband_codec::noise::Keypair;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::serve::{self, ServeConfig};
use crate::transport::LinkParams;
use crate::tunnel::{self, TunnelConfig};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The operation.
    pub op: &'static str,
    /// Link bytes, both directions.
    pub link: u64,
    /// The same operation's bytes as plain HTTP/1.1 (measured earlier), when known.
    pub http: Option<u64>,
}

/// The plain-HTTP byte counts of the baseline (request + response, headers included).
fn http_baseline(op: &str) -> Option<u64> {
    match op {
        "send" => Some(907),
        "sync with one message" => Some(1411),
        "empty sync" => Some(858),
        _ => None,
    }
}

/// The link as `serve` and `tunnel` are configured (a 9600 bit/s class link, 256-byte MTU).
const LINK: LinkParams = LinkParams {
    rate: 9600,
    mtu: 256,
};

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

struct Calls {
    base: String,
    token: Option<String>,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    metrics: Metrics,
}

impl Calls {
    fn bytes(&self) -> u64 {
        let s = self.metrics.snapshot();
        s.link_bytes[0] + s.link_bytes[1]
    }

    /// Link bytes once the counters stopped moving for 300 ms.
    async fn settled(&self) -> u64 {
        let mut last = self.bytes();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.bytes();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        ctype: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if let Some(c) = ctype {
            b = b.header("content-type", c);
        }
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            self.http.request(b.body(Full::new(Bytes::from(body)))?),
        )
        .await??;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await?.to_bytes().to_vec();
        Ok((status, body))
    }

    async fn json(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (ct, b) = match body {
            Some(v) => (Some("application/json"), v.to_string().into_bytes()),
            None => (None, Vec::new()),
        };
        let (status, out) = self.call(method, path, ct, b).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {}: {status} {}",
            crate::logging::redact_url(path),
            String::from_utf8_lossy(&out)
        );
        Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
    }
}

/// Runs the baseline operations against `homeserver` as `user`.
///
/// # Errors
/// A failed operation (named in the error), set-up failures.
pub async fn run(homeserver: &str, user: &str, password: &str) -> anyhow::Result<Vec<Row>> {
    let mut rng = ChaCha20Rng::from_entropy();
    let gw = Keypair::generate(&mut rng);
    let tun = Keypair::generate(&mut rng);
    let udp: SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let http: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let metrics = Metrics::new();
    tokio::spawn(serve::run(ServeConfig {
        listen: Some(udp),
        homeserver: homeserver.trim_end_matches('/').to_owned(),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        metrics: metrics.clone(),
        ..ServeConfig::default()
    }));
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http,
        gateway: udp,
        gateway_key: gw.public().0,
        key: tun.secret_bytes(),
        link: LINK,
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Calls {
        base: format!("http://{http}"),
        token: None,
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
        metrics,
    };
    // The tunnel handshakes as soon as it starts.
    let mut at = c.settled().await;
    let mut rows = vec![Row {
        op: "handshake (Noise IK)",
        link: at,
        http: None,
    }];
    macro_rules! row {
        ($op:expr) => {{
            let now = c.settled().await;
            rows.push(Row {
                op: $op,
                link: now - at,
                http: http_baseline($op),
            });
            at = now;
        }};
    }
    let login = c
        .json(
            "POST",
            "/_matrix/client/v3/login",
            Some(json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user}, "password": password})),
        )
        .await?;
    row!("login");
    c.token = login["access_token"].as_str().map(str::to_owned);
    let me = login["user_id"].as_str().unwrap_or_default().to_owned();
    let room = c
        .json(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(json!({"name": "lowband bench"})),
        )
        .await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    row!("create room");
    let r = c
        .json("GET", "/_matrix/client/v3/sync?timeout=0", None)
        .await?;
    let s0 = r["next_batch"].as_str().unwrap_or_default().to_owned();
    row!("initial sync");
    let room_p = pct(&room);
    let sent = c
        .json(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{room_p}/send/m.room.message/lb{}",
                rand_core::RngCore::next_u32(&mut rng)
            ),
            Some(json!({"msgtype": "m.text", "body": "hello bob"})),
        )
        .await?;
    row!("send");
    let event_id = sent["event_id"].as_str().unwrap_or_default().to_owned();
    let r = c
        .json(
            "GET",
            &format!("/_matrix/client/v3/sync?since={}&timeout=0", pct(&s0)),
            None,
        )
        .await?;
    row!("sync with one message");
    let s1 = r["next_batch"].as_str().unwrap_or_default().to_owned();
    c.json(
        "GET",
        &format!("/_matrix/client/v3/sync?since={}&timeout=0", pct(&s1)),
        None,
    )
    .await?;
    row!("empty sync");
    c.json(
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room_p}/typing/{}", pct(&me)),
        Some(json!({"typing": true, "timeout": 30000})),
    )
    .await?;
    row!("typing");
    c.json(
        "POST",
        &format!(
            "/_matrix/client/v3/rooms/{room_p}/receipt/m.read/{}",
            pct(&event_id)
        ),
        Some(json!({})),
    )
    .await?;
    row!("receipt");
    c.json(
        "GET",
        &format!("/_matrix/client/v3/rooms/{room_p}/messages?dir=b&limit=10"),
        None,
    )
    .await?;
    row!("messages (10)");
    let (status, body) = c
        .call(
            "POST",
            "/_matrix/media/v3/upload?filename=a.txt",
            Some("text/plain"),
            b"small file".to_vec(),
        )
        .await?;
    anyhow::ensure!(status == 200, "upload: {status}");
    row!("upload small media");
    let up: Value = serde_json::from_slice(&body)?;
    let mxc = up["content_uri"].as_str().unwrap_or_default();
    let media = mxc.strip_prefix("mxc://").unwrap_or_default();
    let (mut status, mut body) = c
        .call(
            "GET",
            &format!("/_matrix/client/v1/media/download/{media}"),
            None,
            Vec::new(),
        )
        .await?;
    if status == 404 {
        (status, body) = c
            .call(
                "GET",
                &format!("/_matrix/media/v3/download/{media}"),
                None,
                Vec::new(),
            )
            .await?;
    }
    anyhow::ensure!(status == 200 && body == b"small file", "download: {status}");
    row!("download small media");
    tracing::debug!(total = at, "bench link: done");
    Ok(rows)
}
