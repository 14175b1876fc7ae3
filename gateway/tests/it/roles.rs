//! `serve` and `tunnel` in one process against a stub homeserver (real sockets, loopback,
//! no emulated link): status, headers, token compression, block-wise bodies, restarts, and
//! refused keys.

use core::net::SocketAddr;
use core::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lowband_codec::noise::Keypair;
use lowband_gateway::serve::{self, ServeConfig};
use lowband_gateway::transport::LinkParams;
use lowband_gateway::tunnel::{self, TunnelConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::TcpListener;

const LINK: LinkParams = LinkParams {
    rate: 9600,
    mtu: 256,
};

/// Echoes what it got as JSON; `/big` answers 5000 bytes, `/slow` 429 with Retry-After.
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
    let pq = r
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let body = r
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = hyper::Response::builder().header("content-type", "application/json");
    let out = if pq.starts_with("/big") {
        resp = hyper::Response::builder().header("content-type", "application/octet-stream");
        (0..5000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
    } else if pq.starts_with("/slow") {
        resp = resp.status(429).header("retry-after", "3");
        br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":3000}"#.to_vec()
    } else {
        let body = String::from_utf8_lossy(&body).into_owned();
        serde_json::json!({"auth": auth, "method": method, "pq": pq, "body": body})
            .to_string()
            .into_bytes()
    };
    Ok(resp.body(Full::new(Bytes::from(out))).unwrap())
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Resp {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

async fn call(url: &str, method: &str, token: Option<&str>, body: &str) -> Resp {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        c.request(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()),
    )
    .await
    .expect("answer within 60 s")
    .expect("http");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
    Resp {
        status,
        retry_after,
        body,
    }
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_and_serve_carry_http() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let gw = Keypair::generate(&mut rng);
    let tun = Keypair::generate(&mut rng);
    let stranger = Keypair::generate(&mut rng);

    let hs_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hs_addr = hs_listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = hs_listener.accept().await.unwrap();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(stub)),
            );
        }
    });

    let udp = free_udp();
    let serve_cfg = ServeConfig {
        listen: Some(udp),
        homeserver: format!("http://{hs_addr}"),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        stats_file: None,
        ..ServeConfig::default()
    };
    let serve_task = tokio::spawn(serve::run(serve_cfg.clone()));
    let http = free_tcp();
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

    // A JSON request with a token (registered), then again (by number).
    for round in 0..2 {
        let r = call(
            &format!("{base}/_matrix/client/v3/rooms/!r:x/send/m.room.message/t{round}"),
            "PUT",
            Some("syt_tok"),
            r#"{"body":"hi","msgtype":"m.text"}"#,
        )
        .await;
        assert_eq!(r.status, 200);
        let j = json(&r);
        assert_eq!(j["auth"], "Bearer syt_tok", "round {round}");
        assert_eq!(j["method"], "PUT");
        assert_eq!(
            j["pq"],
            format!("/_matrix/client/v3/rooms/!r:x/send/m.room.message/t{round}")
        );
        let sent: serde_json::Value = serde_json::from_str(j["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"body":"hi","msgtype":"m.text"}));
    }
    // access_token in the query becomes the header.
    let r = call(
        &format!("{base}/_matrix/client/v3/sync?timeout=0&access_token=q_tok"),
        "GET",
        None,
        "",
    )
    .await;
    let j = json(&r);
    assert_eq!(j["auth"], "Bearer q_tok");
    assert_eq!(j["pq"], "/_matrix/client/v3/sync?timeout=0");
    // Status and Retry-After.
    let r = call(&format!("{base}/slow"), "GET", None, "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.retry_after.as_deref(), Some("3"));
    assert_eq!(json(&r)["errcode"], "M_LIMIT_EXCEEDED");
    // A large body both ways: block-wise.
    let r = call(&format!("{base}/big"), "GET", None, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        (0..5000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
    );
    let big = format!(r#"{{"text":"{}"}}"#, "abcdefghij".repeat(600));
    let r = call(
        &format!("{base}/_matrix/client/v3/user/@a:x/filter"),
        "POST",
        Some("syt_tok"),
        &big,
    )
    .await;
    assert_eq!(r.status, 200);
    let echoed: serde_json::Value =
        serde_json::from_str(json(&r)["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["text"].as_str().unwrap().len(), 6000);

    // serve restarts without its state: the tunnel handshakes again and registers the token.
    serve_task.abort();
    let _ = serve_task.await;
    tokio::spawn(serve::run(serve_cfg.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call(
        &format!("{base}/_matrix/client/v3/account/whoami"),
        "GET",
        Some("syt_tok"),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r)["auth"], "Bearer syt_tok");

    // A key not on the allow list gets a clear 502.
    let http2 = free_tcp();
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http2,
        tls: None,
        gateway: udp,
        gateway_key: gw.public().0,
        key: stranger.secret_bytes(),
        link: LINK,
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call(
        &format!("http://{http2}/_matrix/client/versions"),
        "GET",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(json(&r)["error"].as_str().unwrap().contains("refused"));
}
