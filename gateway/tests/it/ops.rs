//! Operational pieces: config files (the shipped examples), log redaction through a real
//! subscriber, and the metrics endpoint over real TCP on loopback.

use std::io::Write as _;
use std::path::{Path, PathBuf};
extern crate alloc;

use alloc::sync::Arc;
use core::time::Duration;
use std::sync::Mutex;

use clap::Parser;
use lowband_gateway::config::{
    ConfigError, GatewayLink, LinkParams, ServeConfig, ServeOptions, TunnelConfig, TunnelOptions,
};
use lowband_gateway::logging::{redact_headers, redact_json, redact_url, Redacted};
use lowband_gateway::metrics::{serve_metrics, Direction, Handshake, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

fn temp_file_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lowband-ops-{}-{name}", std::process::id()))
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let p = temp_file_path(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

#[test]
fn serve_example_file_loads() {
    let c = ServeConfig::load(
        Some(&example("serve.example.toml")),
        ServeOptions::default(),
    )
    .unwrap();
    assert_eq!(c.listen_udp, Some("0.0.0.0:7300".parse().unwrap()));
    assert_eq!(c.listen_serial.as_deref(), Some(Path::new("/dev/ttyUSB0")));
    assert_eq!(c.homeserver.to_string(), "http://127.0.0.1:8008");
    assert_eq!(c.allow_keys.len(), 1);
    assert_eq!(c.allow_keys[0][31], 31);
    assert_eq!(c.metrics, Some("127.0.0.1:9300".parse().unwrap()));
    assert_eq!(
        c.link,
        LinkParams {
            rate_bps: 9600,
            mtu: 1024,
            latency_ms: 0
        }
    );
}

#[test]
fn tunnel_example_file_loads() {
    let c = TunnelConfig::load(
        Some(&example("tunnel.example.toml")),
        TunnelOptions::default(),
    )
    .unwrap();
    assert_eq!(c.listen_http, Some("127.0.0.1:8008".parse().unwrap()));
    assert!(c.listen_https.is_none());
    assert_eq!(
        c.gateway,
        GatewayLink::Udp("192.0.2.10:7300".parse().unwrap())
    );
    assert_eq!(c.gateway_key[0..3], [0, 1, 2]);
    assert_eq!(c.link.rate_bps, 1200);
    assert_eq!(c.link.mtu, 256);
}

/// The flags as the binary declares them: `--config` beside the flattened options.
#[derive(Debug, Parser)]
struct ServeCli {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    opts: ServeOptions,
}

#[derive(Debug, Parser)]
struct TunnelCli {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    opts: TunnelOptions,
}

#[test]
fn flags_mirror_the_file_and_win() {
    use clap::CommandFactory;
    ServeCli::command().debug_assert();
    TunnelCli::command().debug_assert();

    let file = example("serve.example.toml");
    let cli = ServeCli::try_parse_from([
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--baud",
        "1200",
        "--homeserver",
        "https://matrix.example.org",
        "--allow-key",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "--allow-key",
        "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo",
        "--rate-bps",
        "300",
    ])
    .unwrap();
    let c = ServeConfig::load(cli.config.as_deref(), cli.opts).unwrap();
    assert_eq!(c.baud, 1200);
    assert_eq!(c.homeserver.authority(), "matrix.example.org:443");
    assert_eq!(c.allow_keys.len(), 2);
    assert_eq!(c.link.rate_bps, 300);
    assert_eq!(c.link.mtu, 1024, "kept from the file");
    assert_eq!(c.state_dir.as_deref(), Some(Path::new("/var/lib/lowband")));

    let cli = TunnelCli::try_parse_from([
        "tunnel",
        "--config",
        example("tunnel.example.toml").to_str().unwrap(),
        "--gateway",
        "127.0.0.1:7301",
        "--latency-ms",
        "600",
    ])
    .unwrap();
    let c = TunnelConfig::load(cli.config.as_deref(), cli.opts).unwrap();
    assert_eq!(
        c.gateway,
        GatewayLink::Udp("127.0.0.1:7301".parse().unwrap())
    );
    assert_eq!(c.link.latency_ms, 600);
}

#[test]
fn serial_tunnel_on_the_command_line_alone() {
    let cli = TunnelCli::try_parse_from([
        "tunnel",
        "--listen-http",
        "127.0.0.1:8008",
        "--gateway-serial",
        "/dev/ttyUSB0",
        "--baud",
        "2400",
        "--gateway-key",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "--key",
        "tunnel.key",
    ])
    .unwrap();
    let c = TunnelConfig::load(None, cli.opts).unwrap();
    assert_eq!(
        c.gateway,
        GatewayLink::Serial {
            path: "/dev/ttyUSB0".into(),
            baud: 2400
        }
    );
    assert_eq!(c.link.rate_bps, 2400, "rate follows the serial line");
}

#[test]
fn file_errors_are_clear() {
    let missing = ServeConfig::load(
        Some(Path::new("/nonexistent/lowband.toml")),
        ServeOptions::default(),
    );
    assert!(matches!(missing, Err(ConfigError::Io { .. })));

    let p = temp_file(
        "typo.toml",
        "listen_udp = \"0.0.0.0:7300\"\nhomeserver_url = \"http://x\"\n",
    );
    let e = ServeConfig::load(Some(&p), ServeOptions::default())
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("homeserver_url") && e.contains("line 2"), "{e}");

    let p = temp_file(
        "ftp.toml",
        "listen_udp = \"0.0.0.0:7300\"\nhomeserver = \"ftp://x\"\nkey = \"k\"\n",
    );
    let e = ServeConfig::load(Some(&p), ServeOptions::default())
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("homeserver") && e.contains("http"), "{e}");

    let p = temp_file("nolisten.toml", "homeserver = \"http://x\"\nkey = \"k\"\n");
    let e = ServeConfig::load(Some(&p), ServeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no listener"), "{e}");

    let p = temp_file("badport.toml", "listen_udp = \"0.0.0.0:99999\"\n");
    assert!(matches!(
        ServeConfig::load(Some(&p), ServeOptions::default()),
        Err(ConfigError::Parse { .. })
    ));
    for f in ["typo", "ftp", "nolisten", "badport"] {
        let _ = std::fs::remove_file(temp_file_path(&format!("{f}.toml")));
    }
}

/// A `MakeWriter` appending to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn captured(f: impl FnOnce()) -> String {
    let cap = Capture::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(cap.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let out = cap.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn tokens_never_reach_the_log() {
    const TOKEN: &str = "syt_YWxpY2U_cVfNNjLhGgWbgkRLXOvx_0lYZ5q";
    const PASSWORD: &str = "correct horse battery staple";

    // Control: the capture does see what is logged unredacted.
    let raw = captured(|| tracing::info!(token = TOKEN, "unsafe"));
    assert!(raw.contains(TOKEN), "capture broken: {raw}");

    let uri =
        format!("/_matrix/client/v3/sync?since=s72594_4483&access_token={TOKEN}&timeout=30000");
    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("Host", "matrix.example.org"),
        ("Authorization", bearer.as_str()),
    ];
    let body = serde_json::json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD,
    });
    let reply = serde_json::json!({"user_id": "@alice:example.org", "access_token": TOKEN});
    let token = Redacted::new(TOKEN.to_string());

    let out = captured(|| {
        tracing::info!(uri = %redact_url(&uri), headers = ?redact_headers(headers), "request");
        tracing::debug!(body = %redact_json(&body), "login body");
        tracing::debug!(reply = %redact_json(&reply), "login reply");
        tracing::trace!(%token, ?token, "session token");
        let span = tracing::info_span!("session", token = %token);
        let _g = span.enter();
        tracing::warn!("inside span");
    });
    assert!(!out.contains(TOKEN), "token leaked:\n{out}");
    assert!(!out.contains(&TOKEN[4..20]), "token part leaked:\n{out}");
    assert!(!out.contains(PASSWORD), "password leaked:\n{out}");
    // What remains is useful: the path, the user, and one fingerprint for every token use.
    assert!(out.contains("/_matrix/client/v3/sync?since=s72594_4483&access_token=<redacted:"));
    assert!(
        out.contains("timeout=30000") && out.contains("alice"),
        "{out}"
    );
    let fp = format!(
        "<redacted:{}>",
        lowband_gateway::logging::fingerprint(TOKEN.as_bytes())
    );
    assert!(
        out.matches(&fp).count() >= 5,
        "fingerprint {fp} not correlating:\n{out}"
    );
}

async fn http(addr: core::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn metrics_endpoint_over_tcp() {
    let m = Metrics::new();
    let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), m.clone())
        .await
        .unwrap();
    m.link_packet(Direction::In, 41);
    m.link_packet(Direction::In, 9);
    m.link_packet(Direction::Out, 100);
    m.session_opened();
    m.handshake(Handshake::Ok);
    m.handshake(Handshake::Refused);
    m.handshake(Handshake::Refused);
    m.retransmissions(3);
    m.request(Some(200), Duration::from_millis(1500));
    m.request(Some(502), Duration::from_secs(45));

    let resp = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    for line in [
        "lowband_link_bytes_total{direction=\"in\"} 50",
        "lowband_link_bytes_total{direction=\"out\"} 100",
        "lowband_link_packets_total{direction=\"in\"} 2",
        "lowband_sessions 1",
        "lowband_handshakes_total{result=\"ok\"} 1",
        "lowband_handshakes_total{result=\"refused\"} 2",
        "lowband_retransmissions_total 3",
        "lowband_requests_total{status_class=\"2xx\"} 1",
        "lowband_requests_total{status_class=\"5xx\"} 1",
        "lowband_request_duration_seconds_bucket{le=\"1\"} 0",
        "lowband_request_duration_seconds_bucket{le=\"2.5\"} 1",
        "lowband_request_duration_seconds_bucket{le=\"60\"} 2",
        "lowband_request_duration_seconds_count 2",
        "lowband_request_duration_seconds_sum 46.5",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line}\n{body}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit_once(' ').unwrap().1;
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }

    // Values move between scrapes.
    m.session_closed();
    let resp = http(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(resp.lines().any(|l| l == "lowband_sessions 0"), "{resp}");

    let resp = http(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("\r\n\r\n"),
        "{resp}"
    );
    let resp = http(addr, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let resp = http(addr, "DELETE /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 405") && resp.contains("Allow: GET"),
        "{resp}"
    );
    task.abort();
}

#[tokio::test]
async fn metrics_endpoint_survives_bad_clients() {
    let m = Metrics::new();
    let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), m)
        .await
        .unwrap();
    // Connections that close at once or send garbage get an answer or nothing, never a hang.
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    let resp = http(addr, &"X".repeat(8 * 1024)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // Still serving.
    let resp = http(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    task.abort();
}
