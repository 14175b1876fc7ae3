//! `lowband bench`: measurements an operator can repeat.
//!
//! `bench load` puts one `serve` (a child process running this binary, so its memory is
//! measured alone) under many concurrent sessions on loopback, without the link emulator,
//! forwarding to a fast in-process stub homeserver (a fixed JSON answer). The clients are
//! in this process: one [`Client`] and one UDP socket per session, as a tunnel or a device
//! would be. Printed as `metric<TAB>value` lines:
//!
//! * requests/second over the measured phase (every session busy, one request in flight
//!   each);
//! * memory per idle session: `serve`'s resident set (`VmRSS` of `/proc/PID/status`) once
//!   every session completed its handshake and `serve` itself reports all of them hibernated
//!   (its `lowband_sessions_asleep` gauge, read from its metrics listener; see
//!   [`crate::table`]), minus its resident set before any session, over the session count.
//!   Everything `serve` holds for an idle session counts (table entry, hibernated export,
//!   allocator overhead and whatever the allocator kept of the live session), measured from
//!   outside the process.
use alloc::sync::Arc;
use core::net::SocketAddr;
use core::time::Duration;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lowband_codec::coap::{Code, Received, Request};
use lowband_codec::noise::link::{InitiatorConfig, LinkPattern, TransportConfig};
use lowband_codec::noise::{Keypair, PublicKey};
use lowband_codec::session::{Client, SessionEvent};
use rand_chacha::rand_core::{OsRng, RngCore as _, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Barrier;

use crate::keys;
use crate::transport::{now_ms, Datagrams, LinkParams, COAP_MTU, PACKET, VERSION};
use crate::wire::{HttpRequest, WireRequest};

/// What `lowband bench` measures.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Requests/second and memory per idle session of one `serve` with many sessions.
    Load {
        /// Concurrent sessions (each its own client and UDP socket).
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Requests in total over the measured phase, spread over the sessions.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// Link bytes per Matrix operation: `serve` and `tunnel` in this process (loopback UDP,
    /// no emulator) in front of `--homeserver`, driven by plain HTTP calls.
    Link {
        /// The homeserver's client-server base URL (http://host:port).
        #[arg(long)]
        homeserver: String,
        /// An existing user's localpart (the bench logs in, creates a room and sends).
        #[arg(long)]
        user: String,
        /// Its password.
        #[arg(long)]
        password: String,
    },
}

/// Runs a bench command, printing its table on stdout.
///
/// # Errors
/// Set-up failures (files, sockets, the `serve` child).
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Load { sessions, requests } => {
            let r = load(sessions.max(1), requests)?;
            println!("metric\tvalue");
            println!("sessions\t{}", r.sessions);
            println!("handshake_s\t{:.3}", r.handshake_s);
            println!("requests_ok\t{}", r.ok);
            println!("requests_failed\t{}", r.failed);
            println!("elapsed_s\t{:.3}", r.elapsed_s);
            println!("requests_per_s\t{:.0}", r.per_s);
            println!("sessions_asleep\t{}", r.asleep);
            println!("serve_rss_base_kib\t{}", r.rss_base_kib);
            println!("serve_rss_idle_sessions_kib\t{}", r.rss_idle_kib);
            println!("serve_rss_after_load_kib\t{}", r.rss_after_kib);
            println!("bytes_per_idle_session\t{:.0}", r.bytes_per_idle_session);
            println!(
                "idle_session_bytes_in_table\t{}",
                crate::table::IDLE_SESSION_BYTES
            );
            Ok(())
        }
        BenchCommand::Link {
            homeserver,
            user,
            password,
        } => {
            let rows = tokio::runtime::Runtime::new()?.block_on(crate::bench_link::run(
                &homeserver,
                &user,
                &password,
            ))?;
            println!("operation\tlink_bytes\thttp_bytes");
            for r in rows {
                let base = r.http.map_or_else(|| "-".to_owned(), |b| b.to_string());
                println!("{}\t{}\t{}", r.op, r.link, base);
            }
            Ok(())
        }
    }
}

/// Results of [`load`].
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// Sessions established.
    pub sessions: usize,
    /// Time for all handshakes, s.
    pub handshake_s: f64,
    /// Requests answered with a 2.xx code.
    pub ok: u64,
    /// Requests that failed (timeout, error code).
    pub failed: u64,
    /// Measured phase, s.
    pub elapsed_s: f64,
    /// `ok / elapsed_s`.
    pub per_s: f64,
    /// Sessions `serve` reported hibernating when the idle figure was taken.
    pub asleep: u64,
    /// `serve`'s RSS before any session, KiB.
    pub rss_base_kib: u64,
    /// With every session established, idle and hibernated, KiB.
    pub rss_idle_kib: u64,
    /// After the load, KiB.
    pub rss_after_kib: u64,
    /// `(idle - base) / sessions`, bytes.
    pub bytes_per_idle_session: f64,
}

/// Resident set size of process `pid`, KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const STUB_BODY: &str = r#"{"versions":["v1.11"],"unstable_features":{}}"#;

async fn stub_homeserver() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(s),
                service_fn(|_r| async {
                    Ok::<_, core::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(STUB_BODY.as_bytes())))
                            .unwrap_or_default(),
                    )
                }),
            ));
        }
    });
    Ok(addr)
}

fn write_config(
    dir: &Path,
    udp: SocketAddr,
    hs: SocketAddr,
    key: &Path,
    allowed: &[String],
    metrics: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let p = dir.join("serve.toml");
    let mut f = std::fs::File::create(&p)?;
    writeln!(f, "listen_udp = \"{udp}\"")?;
    writeln!(f, "homeserver = \"http://{hs}\"")?;
    writeln!(f, "key = {:?}", key.display().to_string())?;
    writeln!(f, "allow_keys = [")?;
    for k in allowed {
        writeln!(f, "  \"{k}\",")?;
    }
    writeln!(f, "]")?;
    writeln!(f, "metrics = \"{metrics}\"")?;
    writeln!(f, "[link]\nrate_bps = 100000000\nmtu = 1400")?;
    Ok(p)
}

/// The link as the clients and the `serve` child see it (fast: loopback).
const BENCH_LINK: LinkParams = LinkParams {
    rate: 100_000_000,
    mtu: 1400,
};

/// One gauge or counter of `serve`'s metrics listener at `addr` (`None`: not reachable or
/// not exported).
async fn scrape(addr: SocketAddr, name: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the load bench: `sessions` clients, `requests` requests in total.
///
/// # Errors
/// Set-up failures; `serve` not hibernating its idle sessions in time.
pub fn load(sessions: usize, requests: usize) -> anyhow::Result<LoadReport> {
    let dir = std::env::temp_dir().join(format!("lowband-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut rng = ChaCha20Rng::from_entropy();
    let gw = Keypair::generate(&mut rng);
    let key_path = dir.join("gw.key");
    keys::write_secret(&key_path, &gw.secret_bytes())?;
    let clients: Vec<Keypair> = (0..sessions).map(|_| Keypair::generate(&mut rng)).collect();
    let allowed: Vec<String> = clients
        .iter()
        .map(|k| keys::encode_key(&k.public().0))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(async move {
        let hs = stub_homeserver().await?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let cfg = write_config(&dir, udp, hs, &key_path, &allowed, metrics)?;
        let child = Child(
            std::process::Command::new(std::env::current_exe()?)
                .arg("serve")
                .arg("--config")
                .arg(&cfg)
                .env("LOWBAND_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .spawn()?,
        );
        let pid = child.0.id();
        let up = Instant::now();
        while scrape(metrics, "lowband_sessions").await.is_none() {
            anyhow::ensure!(
                up.elapsed() < Duration::from_secs(10),
                "serve did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // serve hands its start-up garbage back right before its loop (as it does after a
        // hibernation sweep): let it get there, so that both figures are measured alike.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_base = rss_kib(pid).ok_or_else(|| anyhow::anyhow!("serve did not start"))?;
        let ready = Arc::new(Barrier::new(sessions + 1));
        let go = Arc::new(Barrier::new(sessions + 1));
        let done = Arc::new(Barrier::new(sessions + 1));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(sessions);
        for (i, k) in clients.into_iter().enumerate() {
            let n = requests / sessions + usize::from(i < requests % sessions);
            let (ready, go, done) = (ready.clone(), go.clone(), done.clone());
            let gw_pub = gw.public().0;
            tasks.push(tokio::spawn(async move {
                let r = client_task(udp, gw_pub, k, n, start, &ready, &go).await;
                done.wait().await;
                r
            }));
        }
        ready.wait().await;
        let handshake_s = start.elapsed().as_secs_f64();
        // Handshake-only sessions hibernate after a quiet period (see `table`): wait until
        // serve says they all did, then measure.
        let quiet = 4 * BENCH_LINK.transmission().ack_timeout;
        let deadline = Instant::now() + Duration::from_millis(quiet + 30_000);
        let mut asleep = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            asleep = scrape(metrics, "lowband_sessions_asleep")
                .await
                .unwrap_or(0);
            if asleep >= sessions as u64 {
                break;
            }
        }
        anyhow::ensure!(
            asleep >= sessions as u64,
            "serve hibernated only {asleep} of {sessions} idle sessions"
        );
        let rss_idle = rss_kib(pid).unwrap_or(0);
        let t0 = Instant::now();
        go.wait().await;
        // Each task finishes its requests, then waits at `done` with its session open.
        let mut ok = 0;
        let mut failed = 0;
        let mut established = 0;
        let (finished_tx, mut finished_rx) = tokio::sync::mpsc::unbounded_channel();
        for t in tasks {
            let tx = finished_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(t.await);
            });
        }
        drop(finished_tx);
        // The tasks only end after `done`, so count through a separate signal: wait for all
        // of them to reach it.
        let waiter = tokio::spawn(async move { done.wait().await });
        let mut elapsed = None;
        while let Some(r) = finished_rx.recv().await {
            elapsed.get_or_insert_with(|| t0.elapsed());
            match r {
                Ok(Ok(c)) => {
                    established += 1;
                    ok += c.0;
                    failed += c.1;
                }
                Ok(Err(e)) => tracing::warn!(%e, "bench: client failed"),
                Err(e) => tracing::warn!(%e, "bench: client task panicked"),
            }
        }
        let _ = waiter.await;
        let elapsed_s = elapsed.unwrap_or_else(|| t0.elapsed()).as_secs_f64();
        let rss_after = rss_kib(pid).unwrap_or(0);
        drop(child);
        let _ = std::fs::remove_dir_all(&dir);
        Ok::<_, anyhow::Error>(LoadReport {
            sessions: established,
            handshake_s,
            ok,
            failed,
            elapsed_s,
            per_s: ok as f64 / elapsed_s.max(1e-9),
            asleep,
            rss_base_kib: rss_base,
            rss_idle_kib: rss_idle,
            rss_after_kib: rss_after,
            bytes_per_idle_session: (rss_idle.saturating_sub(rss_base) * 1024) as f64
                / sessions as f64,
        })
    })?;
    Ok(r)
}

/// A bench client: few slots (one request in flight).
type BenchClient = Client<ChaCha20Rng, 2, 4, 1, COAP_MTU>;

/// One session: handshake, wait for `go`, `n` requests one after the other.
async fn client_task(
    serve: SocketAddr,
    gw_pub: [u8; 32],
    key: Keypair,
    n: usize,
    start: Instant,
    ready: &Barrier,
    go: &Barrier,
) -> anyhow::Result<(u64, u64)> {
    let mut s = Conn::open(serve, gw_pub, key, start).await;
    let established = match &mut s {
        Ok(c) => c.until_established().await,
        Err(_) => false,
    };
    ready.wait().await;
    go.wait().await;
    let mut s = s?;
    anyhow::ensure!(established, "no session");
    let req = HttpRequest {
        method: "GET".into(),
        path_and_query: "/_matrix/client/versions".into(),
        content_type: None,
        body: Vec::new(),
    };
    let wire = WireRequest::encode(&req)?;
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..n {
        if s.request(&wire).await {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    Ok((ok, failed))
}

struct Conn {
    sock: UdpSocket,
    client: Box<BenchClient>,
    link: Datagrams,
    start: Instant,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(
        serve: SocketAddr,
        gw_pub: [u8; 32],
        key: Keypair,
        start: Instant,
    ) -> anyhow::Result<Conn> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(serve).await?;
        let init = InitiatorConfig {
            pattern: LinkPattern::IK,
            version: VERSION,
            local: key,
            remote: PublicKey(gw_pub),
            retransmit: BENCH_LINK.retransmit(),
            transport: TransportConfig::default(),
        };
        let client = BenchClient::new(
            init,
            BENCH_LINK.coap(OsRng.next_u64()),
            ChaCha20Rng::from_entropy(),
        )
        .map_err(|e| anyhow::anyhow!("client: {e:?}"))?;
        Ok(Conn {
            sock,
            client: Box::new(client),
            link: Datagrams::new(BENCH_LINK.mtu, 2 * BENCH_LINK.transmission().ack_timeout),
            start,
            buf: vec![0u8; 65_536],
        })
    }

    async fn flush(&mut self) {
        let now = now_ms(self.start);
        let mut out = vec![0u8; PACKET];
        while let Some(n) = self.client.poll_transmit(now, &mut out) {
            self.link.push(&out[..n]);
        }
        while let Some(d) = self.link.out.pop_front() {
            let _ = self.sock.send(&d).await;
        }
    }

    /// Waits for one datagram or the next timer; returns the packet, if any.
    async fn step(&mut self) -> Option<Vec<u8>> {
        self.flush().await;
        let now = now_ms(self.start);
        let wake = [self.client.poll_timeout(), self.link.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + 1000);
        let sleep = Duration::from_millis(wake.saturating_sub(now));
        match tokio::time::timeout(sleep, self.sock.recv(&mut self.buf)).await {
            Ok(Ok(n)) => {
                let now = now_ms(self.start);
                self.link.receive(now, &self.buf[..n]).map(<[u8]>::to_vec)
            }
            Ok(Err(_)) => None,
            Err(_) => {
                let now = now_ms(self.start);
                self.client.handle_timeout(now);
                self.link.handle_timeout(now);
                None
            }
        }
    }

    async fn until_established(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(p) = self.step().await {
                let mut scratch = vec![0u8; COAP_MTU];
                let now = now_ms(self.start);
                let _ = self.client.handle_packet(now, &p, &mut scratch);
            }
            while let Some(e) = self.client.poll_event() {
                match e {
                    SessionEvent::Established(_) => return true,
                    SessionEvent::Refused(_) => return false,
                    _ => {}
                }
            }
        }
        false
    }

    /// One request; true when answered with 2.xx.
    async fn request(&mut self, wire: &WireRequest) -> bool {
        let now = now_ms(self.start);
        let mut l = wire.options(None);
        let h = match self.client.request(
            now,
            Request {
                confirmable: true,
                code: Code::POST,
                options: l.as_options(),
                payload: &wire.body.bytes,
                timeout: Some(30_000),
            },
        ) {
            Ok(h) => h,
            Err(_) => return false,
        };
        loop {
            if let Some(p) = self.step().await {
                let mut scratch = vec![0u8; COAP_MTU];
                let now = now_ms(self.start);
                if let Some(Received::Response(r)) =
                    self.client.handle_packet(now, &p, &mut scratch)
                {
                    if r.handle == h && r.last {
                        return r.code.class() == 2;
                    }
                }
            }
            while let Some(e) = self.client.poll_event() {
                if let SessionEvent::Coap(lowband_codec::coap::Event::Failed { handle, .. }) = e {
                    if handle == h {
                        return false;
                    }
                }
            }
        }
    }
}
