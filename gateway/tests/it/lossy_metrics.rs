//! Retransmissions reach the metrics: `serve` and `tunnel` in-process, a UDP relay between
//! them that drops chosen datagrams from `serve`, a stub homeserver on loopback.

use core::net::SocketAddr;
use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use core::time::Duration;
extern crate alloc;
use alloc::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lowband_codec::noise::Keypair;
use lowband_gateway::metrics::Metrics;
use lowband_gateway::serve::{self, ServeConfig};
use lowband_gateway::transport::LinkParams;
use lowband_gateway::tunnel::{self, TunnelConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::{TcpListener, UdpSocket};

/// ACK_TIMEOUT 2 s, piggyback wait 500 ms.
const LINK: LinkParams = LinkParams {
    rate: 9600,
    mtu: 256,
};

/// What the relay does to the next datagrams from `serve`: let `pass` through, then drop
/// `drop`, then let everything through.
#[derive(Default)]
struct Plan {
    pass: AtomicU32,
    drop: AtomicU32,
    dropped: AtomicU32,
}

impl Plan {
    fn set(&self, pass: u32, drop: u32) {
        self.pass.store(pass, SeqCst);
        self.drop.store(drop, SeqCst);
    }

    fn lose(&self) -> bool {
        if self.pass.load(SeqCst) > 0 {
            self.pass.fetch_sub(1, SeqCst);
            return false;
        }
        if self.drop.load(SeqCst) > 0 {
            self.drop.fetch_sub(1, SeqCst);
            self.dropped.fetch_add(1, SeqCst);
            return true;
        }
        false
    }
}

/// A relay: the tunnel talks to the returned address, the relay to `serve` from its own
/// socket; datagrams from `serve` go through `plan`.
async fn relay(serve: SocketAddr, plan: Arc<Plan>) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(serve).await.unwrap();
    let addr = front.local_addr().unwrap();
    let tunnel = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, t) = (front.clone(), back.clone(), tunnel.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *t.lock().unwrap() = Some(from);
            let _ = b.send(&buf[..n]).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *tunnel.lock().unwrap();
            if let (Some(to), false) = (to, plan.lose()) {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// A homeserver stub answering every request with JSON; paths containing `slow` after
/// `delay` (longer than the piggyback wait: the answer travels as a separate response).
async fn stub(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(s),
                service_fn(move |r: hyper::Request<hyper::body::Incoming>| async move {
                    if r.uri().path().contains("slow") {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, core::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(r#"{"event_id":"$e"}"#)))
                            .unwrap(),
                    )
                }),
            ));
        }
    });
    addr
}

async fn put(base: &str, txn: &str) -> u16 {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = hyper::Request::builder()
        .method("PUT")
        .uri(format!(
            "{base}/_matrix/client/v3/rooms/!r:x/send/m.room.message/{txn}"
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            r#"{"msgtype":"m.text","body":"hi"}"#,
        )))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), c.request(r))
        .await
        .expect("answer within 60 s")
        .expect("http");
    let status = r.status().as_u16();
    let _ = r.into_body().collect().await;
    status
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_datagrams_show_as_retransmissions_on_both_sides() {
    let mut rng = ChaCha20Rng::seed_from_u64(91);
    let (gw, tun) = (Keypair::generate(&mut rng), Keypair::generate(&mut rng));
    let hs = stub(Duration::from_millis(1_500)).await;
    let udp = free(true);
    let sm = Metrics::new();
    tokio::spawn(serve::run(ServeConfig {
        listen: Some(udp),
        homeserver: format!("http://{hs}"),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        metrics: sm.clone(),
        ..ServeConfig::default()
    }));
    let plan = Arc::new(Plan::default());
    let front = relay(udp, plan.clone()).await;
    let http = free(false);
    let tm = Metrics::new();
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http,
        gateway: front,
        gateway_key: gw.public().0,
        key: tun.secret_bytes(),
        link: LINK,
        metrics: tm.clone(),
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = format!("http://{http}");
    // A clean exchange (handshake included): nothing is retransmitted.
    assert_eq!(put(&base, "a").await, 200);
    assert_eq!(tm.snapshot().retransmissions, 0);
    assert_eq!(sm.snapshot().retransmissions, 0);
    // The piggybacked answer is lost: the tunnel sends its request again (serve answers the
    // duplicate from its cache, which is not a retransmission of serve's).
    plan.set(0, 1);
    assert_eq!(put(&base, "b").await, 200);
    assert_eq!(plan.dropped.load(SeqCst), 1);
    assert!(tm.snapshot().retransmissions >= 1, "{:?}", tm.snapshot());
    assert_eq!(sm.snapshot().retransmissions, 0);
    // A slow answer goes as a separate CON response after an empty ACK; the response is
    // lost: serve sends it again.
    plan.set(1, 1);
    assert_eq!(put(&base, "slow").await, 200);
    assert_eq!(plan.dropped.load(SeqCst), 2);
    // serve counts in the loop turn after the send; give it that turn.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sm.snapshot().retransmissions >= 1, "{:?}", sm.snapshot());
    let r = sm.render();
    assert!(
        r.lines().any(|l| l
            .strip_prefix("lowband_retransmissions_total ")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v >= 1)),
        "{r}"
    );
}
