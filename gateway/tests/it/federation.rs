//! Federation requests through `tunnel` and `serve` in one process against a stub federation
//! listener: the X-Matrix header arrives byte for byte, JSON bodies arrive value-equal (also
//! once session aliases are in use), and `serve` sends nothing for another destination.

use core::net::SocketAddr;
use core::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lowband_codec::noise::Keypair;
use lowband_gateway::federation::FederationConfig;
use lowband_gateway::serve::{self, ServeConfig};
use lowband_gateway::transport::LinkParams;
use lowband_gateway::tunnel::{self, TunnelConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const LINK: LinkParams = LinkParams {
    rate: 9600,
    mtu: 256,
};

/// Echoes the Authorization header, method, target and body (parsed) it got.
async fn stub(
    r: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, core::convert::Infallible> {
    let auth = r
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let method = r.method().to_string();
    let pq = r.uri().path_and_query().map(|p| p.to_string());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let out = json!({"auth": auth, "method": method, "pq": pq, "body": body});
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap())
}

fn free(udp: bool) -> SocketAddr {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }
}

async fn call(url: &str, method: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = hyper::Request::builder().method(method).uri(url);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let body = if body.is_null() {
        Bytes::new()
    } else {
        b = b.header("content-type", "application/json");
        Bytes::from(body.to_string())
    };
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        c.request(b.body(Full::new(body)).unwrap()),
    )
    .await
    .expect("answer within 60 s")
    .expect("http");
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn txn(n: u32) -> Value {
    json!({
        "origin": "hs-a.example:8448",
        "origin_server_ts": 1_700_000_000_000u64 + u64::from(n),
        "pdus": [{
            "auth_events": ["$1Lm4BeD8tWOzViXh0e9hEFK4AgfC2yiM2P_Hn6QWw9Y",
                            "$y5b5fT6NvMEQ7ENDAFNkSbtGThL-7dgnU2zHuXX4fSw",
                            "$Xs2hcvgJiU2UKKDjJJtRm1-9RiNSdkGmumm6HVsGsPo"],
            "content": {"body": format!("message {n}"), "msgtype": "m.text",
                        "odd": "\u{0}1 starts with NUL"},
            "depth": 10 + n,
            "hashes": {"sha256": "1ieVFHHgHmiX8MVLZ7qKkjs8ERmcp0zeAD8DLaYtq0U"},
            "origin_server_ts": 1_700_000_000_000u64 + u64::from(n),
            "prev_events": ["$qTVyC5X5ZLaDz0rK6JgGHcDkkBjV0WUd6KXzRztp0Ik"],
            "room_id": "!jEsUZKDJdhlrceRyVU:hs-a.example:8448",
            "sender": "@alice:hs-a.example:8448",
            "type": "m.room.message",
            "signatures": {"hs-a.example:8448": {"ed25519:a_AbCd":
                "ZpyVfWcCW5kQjaVxqgwqJ9mK/K7fhWsDkQsQ1qyLNb6+F6y3ZpXy1bYvKq9c3sB0n4wzQp0m2JXkV0fI4Q0gAw"}},
            "unsigned": {"age": 12}
        }],
        "edus": []
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_requests_arrive_intact() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let gw = Keypair::generate(&mut rng);
    let tun = Keypair::generate(&mut rng);
    let hs = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hs_addr = hs.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = hs.accept().await.unwrap();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(stub)),
            );
        }
    });
    let udp = free(true);
    tokio::spawn(serve::run(ServeConfig {
        listen: Some(udp),
        homeserver: "http://127.0.0.1:9".into(),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        stats_file: None,
        federation: Some(FederationConfig {
            backend: Some(format!("http://{hs_addr}")),
            server_name: Some("hs-b.example:8448".into()),
            remote_ca: None,
            dns: None,
        }),
        ..ServeConfig::default()
    }));
    let http = free(false);
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http,
        tls: None,
        gateway: udp,
        gateway_key: gw.public().0,
        key: tun.secret_bytes(),
        link: LINK,
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = format!("http://{http}");
    let xm = |dest: &str, n: u32| {
        format!(
            "X-Matrix origin=\"hs-a.example:8448\",key=\"ed25519:a_AbCd\",sig=\"{}{n:02}\",destination=\"{dest}\"",
            "q".repeat(84)
        )
    };
    // Three rounds: the first defines the aliases, the later ones use them.
    for n in 0..3 {
        let h = xm("hs-b.example:8448", n);
        let url = format!("{base}/_matrix/federation/v1/send/170000000{n}");
        let (status, got) = call(&url, "PUT", Some(&h), &txn(n)).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["auth"], h.as_str(), "round {n}");
        assert_eq!(got["method"], "PUT");
        assert_eq!(
            got["pq"],
            format!("/_matrix/federation/v1/send/170000000{n}")
        );
        assert_eq!(got["body"], txn(n), "round {n}");
    }
    // An unsigned key request goes to the homeserver as is.
    let (status, got) = call(
        &format!("{base}/_matrix/key/v2/server"),
        "GET",
        None,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["auth"], "");
    // Another destination is refused by serve (no backend request).
    let h = xm("elsewhere.example:8448", 9);
    let url = format!("{base}/_matrix/federation/v1/send/1");
    let (status, got) = call(&url, "PUT", Some(&h), &txn(9)).await;
    assert_eq!(status, 403, "{got}");
    assert_eq!(got["errcode"], "M_FORBIDDEN");
}
