//! `serve`/`tunnel` as operated: key file permissions, a serial (pty) link, sessions that
//! survive a `serve` restart, and the metrics they record. In-process, against a stub
//! homeserver on loopback.

use core::net::SocketAddr;
use core::time::Duration;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;
extern crate alloc;
use alloc::sync::Arc;
use std::sync::Mutex;

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
use serialport::{SerialPort as _, TTYPort};
use tokio::net::TcpListener;

const LINK: LinkParams = LinkParams {
    rate: 9600,
    mtu: 256,
};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowband-opsw-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lowband() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowband"))
}

#[test]
fn serve_and_tunnel_refuse_a_group_readable_key() {
    let d = tmp_dir("perm");
    let key = d.join("gw.key");
    let out = lowband()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let serve = lowband()
        .args(["serve", "--listen-udp", "127.0.0.1:0"])
        .args([
            "--homeserver",
            "http://127.0.0.1:8008",
            "--allow-key",
            &public,
            "--key",
        ])
        .arg(&key)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let tunnel = lowband()
        .args(["tunnel", "--listen-http", "127.0.0.1:0"])
        .args([
            "--gateway",
            "127.0.0.1:7300",
            "--gateway-key",
            &public,
            "--key",
        ])
        .arg(&key)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    for (what, o) in [("serve", serve), ("tunnel", tunnel)] {
        assert!(!o.status.success(), "{what} started with a 0644 key");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{what}: {err}"
        );
        // The key itself never appears in the message.
        let secret = std::fs::read_to_string(&key).unwrap();
        assert!(!err.contains(secret.trim()), "{what} printed the key");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn help_lists_the_ops_flags() {
    for (cmd, flags) in [
        (
            "serve",
            &[
                "--config",
                "--listen-udp",
                "--listen-serial",
                "--baud",
                "--homeserver",
                "--allow-key",
                "--metrics",
                "--state-dir",
                "--link-rate",
            ][..],
        ),
        (
            "tunnel",
            &[
                "--config",
                "--listen-http",
                "--gateway",
                "--gateway-serial",
                "--gateway-key",
                "--metrics",
            ][..],
        ),
    ] {
        let o = lowband().args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        for f in flags {
            assert!(text.contains(f), "{cmd} --help lacks {f}");
        }
    }
}

/// A homeserver stub: records each `PUT .../send/...` path, answers JSON.
async fn start_stub(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(s),
                service_fn(move |r: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let pq = r.uri().path().to_owned();
                        if r.method() == hyper::Method::PUT {
                            seen.lock().unwrap().push(pq.clone());
                        }
                        let body =
                            serde_json::json!({"event_id": format!("$e{}", pq.len()), "pq": pq});
                        Ok::<_, core::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                }),
            ));
        }
    });
    addr
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn put(base: &str, txn: &str) -> (u16, serde_json::Value) {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = hyper::Request::builder()
        .method("PUT")
        .uri(format!(
            "{base}/_matrix/client/v3/rooms/!r:x/send/m.room.message/{txn}"
        ))
        .header("authorization", "Bearer syt_secret_token")
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
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or_default())
}

fn keys() -> (Keypair, Keypair) {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    (Keypair::generate(&mut rng), Keypair::generate(&mut rng))
}

/// Copies bytes both ways between two pty masters, like a null-modem cable.
fn bridge(a: TTYPort, b: TTYPort) {
    fn pump(mut from: TTYPort, mut to: TTYPort) {
        from.set_timeout(Duration::from_millis(100)).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match std::io::Read::read(&mut from, &mut buf) {
                    Ok(n) => {
                        if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
    }
    let a2 = a.try_clone_native().unwrap();
    let b2 = b.try_clone_native().unwrap();
    pump(a, b2);
    pump(b, a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_tunnel_over_a_serial_link() {
    let (gw, tun) = keys();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hs = start_stub(seen.clone()).await;
    // serve on one pty, tunnel on another, the masters bridged.
    let (m1, s1) = TTYPort::pair().unwrap();
    let (m2, s2) = TTYPort::pair().unwrap();
    let p1 = PathBuf::from(s1.name().unwrap());
    let p2 = PathBuf::from(s2.name().unwrap());
    bridge(m1, m2);
    let serve_metrics = Metrics::new();
    tokio::spawn(serve::run(ServeConfig {
        serial: Some((p1, 115_200)),
        homeserver: format!("http://{hs}"),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        metrics: serve_metrics.clone(),
        ..ServeConfig::default()
    }));
    let http = free_tcp();
    let tunnel_metrics = Metrics::new();
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http,
        gateway_key: gw.public().0,
        key: tun.secret_bytes(),
        link: LINK,
        gateway_serial: Some((p2, 115_200)),
        metrics: tunnel_metrics.clone(),
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = format!("http://{http}");
    for i in 0..3 {
        let (status, j) = put(&base, &format!("s{i}")).await;
        assert_eq!(status, 200, "{j}");
        assert_eq!(
            j["pq"],
            format!("/_matrix/client/v3/rooms/!r:x/send/m.room.message/s{i}")
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
    let s = serve_metrics.snapshot();
    assert_eq!(s.handshakes, [1, 0]);
    assert_eq!(s.sessions, 1);
    assert!(s.link_packets[0] >= 4 && s.link_bytes[0] > 100, "{s:?}");
    assert_eq!(s.requests[1], 3, "three 2xx: {s:?}");
    let t = tunnel_metrics.snapshot();
    assert_eq!(t.handshakes, [1, 0]);
    // What one side sent the other received (no loss on a pty).
    assert_eq!(t.link_bytes[1], s.link_bytes[0]);
    drop(s2);
    drop(s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_serve_restart_with_state_dir() {
    let (gw, tun) = keys();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hs = start_stub(seen.clone()).await;
    let state = tmp_dir("state");
    let udp = free_udp();
    let cfg = |m: &Metrics| ServeConfig {
        listen: Some(udp),
        homeserver: format!("http://{hs}"),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        state_dir: Some(state.clone()),
        metrics: m.clone(),
        ..ServeConfig::default()
    };
    let m1 = Metrics::new();
    let first = tokio::spawn(serve::run(cfg(&m1)));
    let http = free_tcp();
    let tm = Metrics::new();
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http,
        gateway: udp,
        gateway_key: gw.public().0,
        key: tun.secret_bytes(),
        link: LINK,
        metrics: tm.clone(),
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = format!("http://{http}");
    for i in 0..5 {
        assert_eq!(put(&base, &format!("m{i}")).await.0, 200);
    }
    assert_eq!(m1.snapshot().handshakes, [1, 0]);
    // The session file exists, 0600, in a 0700 directory.
    let files: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        files[0].metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // serve dies right after the traffic (its last received packets possibly unwritten)
    // and a message is sent while it is down: CoAP retransmits it into the new serve.
    first.abort();
    let _ = first.await;
    let b = base.clone();
    let during = tokio::spawn(async move { put(&b, "m5").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m2 = Metrics::new();
    tokio::spawn(serve::run(cfg(&m2)));
    let (status, j) = during.await.unwrap();
    assert_eq!(status, 200, "{j}");
    assert_eq!(m2.snapshot().sessions, 1, "restored from the state dir");
    for i in 6..10 {
        let (status, j) = put(&base, &format!("m{i}")).await;
        assert_eq!(status, 200, "{j}");
    }
    // No new handshake on either side: the session resumed.
    assert_eq!(m2.snapshot().handshakes, [0, 0]);
    assert_eq!(tm.snapshot().handshakes, [1, 0]);
    // Every message reached the homeserver exactly once.
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    let want: Vec<String> = (0..10)
        .map(|i| format!("/_matrix/client/v3/rooms/!r:x/send/m.room.message/m{i}"))
        .collect();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_a_restart_means_a_new_handshake() {
    let (gw, tun) = keys();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hs = start_stub(seen.clone()).await;
    let udp = free_udp();
    let cfg = |m: &Metrics| ServeConfig {
        listen: Some(udp),
        homeserver: format!("http://{hs}"),
        key: gw.secret_bytes(),
        allowed: vec![tun.public().0],
        link: LINK,
        metrics: m.clone(),
        ..ServeConfig::default()
    };
    let m1 = Metrics::new();
    let first = tokio::spawn(serve::run(cfg(&m1)));
    let http = free_tcp();
    let tm = Metrics::new();
    tokio::spawn(tunnel::run(TunnelConfig {
        listen: http,
        gateway: udp,
        gateway_key: gw.public().0,
        key: tun.secret_bytes(),
        link: LINK,
        metrics: tm.clone(),
        ..TunnelConfig::default()
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = format!("http://{http}");
    assert_eq!(put(&base, "a").await.0, 200);
    first.abort();
    let _ = first.await;
    let m2 = Metrics::new();
    tokio::spawn(serve::run(cfg(&m2)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(put(&base, "b").await.0, 200);
    assert_eq!(m2.snapshot().handshakes, [1, 0]);
    assert_eq!(tm.snapshot().handshakes, [2, 0]);
}

#[test]
fn bench_load_runs_small() {
    let o = lowband()
        .args(["bench", "load", "--sessions", "5", "--requests", "60"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let get = |k: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}\t")))
            .unwrap_or_else(|| panic!("{k} missing: {out}"))
            .parse()
            .unwrap()
    };
    assert_eq!(get("sessions"), 5.0);
    assert_eq!(get("requests_ok"), 60.0);
    assert_eq!(get("requests_failed"), 0.0);
    assert!(get("requests_per_s") > 0.0);
    assert!(get("serve_rss_idle_sessions_kib") >= get("serve_rss_base_kib"));
}
