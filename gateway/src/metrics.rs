//! Prometheus metrics: counters on atomics and a tiny `GET /metrics` responder.
//!
//! Output is the Prometheus text exposition format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>).
//! Hand-rolled rather than a metrics crate: a handful of families, a fixed label set each, so
//! every series is one atomic and no dependency or registry is needed.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `lowband_link_bytes_total` | counter | `direction="in"\|"out"` |
//! | `lowband_link_packets_total` | counter | `direction` |
//! | `lowband_sessions` | gauge | |
//! | `lowband_sessions_asleep` | gauge | |
//! | `lowband_handshakes_total` | counter | `result="ok"\|"refused"` |
//! | `lowband_retransmissions_total` | counter | |
//! | `lowband_requests_total` | counter | `status_class="1xx".."5xx"\|"other"\|"error"` |
//! | `lowband_request_duration_seconds` | histogram | buckets 0.1 s .. 600 s |
//! | `lowband_observe_link_bytes_total` | counter | |
//!
//! Every series is exported from the start (at 0), so rates work from the first scrape.

use alloc::sync::Arc;
use core::fmt::Write as _;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Upper bounds of the request duration buckets, seconds: a request over a 100 bit/s link
/// takes seconds to minutes, so the buckets span 0.1 s to 10 min.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Direction of link traffic, seen from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the link.
    In,
    /// Sent on the link.
    Out,
}

/// Outcome of a Noise handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed with an allowed peer.
    Ok,
    /// Refused (unknown key, bad message, no room).
    Refused,
}

const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "error"];

#[derive(Debug, Default)]
struct Inner {
    link_bytes: [AtomicU64; 2],
    link_packets: [AtomicU64; 2],
    sessions: AtomicI64,
    sessions_asleep: AtomicI64,
    handshakes: [AtomicU64; 2],
    retransmissions: AtomicU64,
    requests: [AtomicU64; 7],
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: [AtomicU64; 13],
    duration_sum_us: AtomicU64,
    observe_bytes: AtomicU64,
}

/// The gateway's metrics. Cheap to clone (one `Arc`); all methods are lock-free.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

/// Plain numbers read from [`Metrics`], for tests and status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Link bytes `[in, out]`.
    pub link_bytes: [u64; 2],
    /// Link packets `[in, out]`.
    pub link_packets: [u64; 2],
    /// Open sessions.
    pub sessions: i64,
    /// Sessions hibernating (kept only as their export until their next packet).
    pub sessions_asleep: i64,
    /// Handshakes `[ok, refused]`.
    pub handshakes: [u64; 2],
    /// Retransmissions.
    pub retransmissions: u64,
    /// Requests by class `1xx, 2xx, 3xx, 4xx, 5xx, other, error`.
    pub requests: [u64; 7],
}

impl Metrics {
    /// New metrics, all zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// One packet of `bytes` bytes crossed the link (frame bytes as sent on the wire).
    pub fn link_packet(&self, dir: Direction, bytes: usize) {
        let i = dir as usize;
        self.0.link_bytes[i].fetch_add(bytes as u64, Relaxed);
        self.0.link_packets[i].fetch_add(1, Relaxed);
    }

    /// A session was opened.
    pub fn session_opened(&self) {
        self.0.sessions.fetch_add(1, Relaxed);
    }

    /// A session was closed or expired (never goes below 0).
    pub fn session_closed(&self) {
        let _ = self
            .0
            .sessions
            .fetch_update(Relaxed, Relaxed, |n| Some((n - 1).max(0)));
    }

    /// Sets the number of open sessions (e.g. after restoring persisted ones).
    pub fn set_sessions(&self, n: usize) {
        self.0
            .sessions
            .store(i64::try_from(n).unwrap_or(i64::MAX), Relaxed);
    }

    /// Sets the number of hibernating sessions.
    pub fn set_sessions_asleep(&self, n: usize) {
        self.0
            .sessions_asleep
            .store(i64::try_from(n).unwrap_or(i64::MAX), Relaxed);
    }

    /// A handshake finished.
    pub fn handshake(&self, result: Handshake) {
        self.0.handshakes[result as usize].fetch_add(1, Relaxed);
    }

    /// `n` messages were retransmitted.
    pub fn retransmissions(&self, n: u64) {
        self.0.retransmissions.fetch_add(n, Relaxed);
    }

    /// A proxied request finished: `status` is the HTTP status, `None` when it failed
    /// without one (link timeout, homeserver unreachable); `elapsed` from receipt to answer.
    pub fn request(&self, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            Some(_) => 5,
            None => 6,
        };
        self.0.requests[class].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = DURATION_BUCKETS
            .iter()
            .position(|&ub| secs <= ub)
            .unwrap_or(DURATION_BUCKETS.len());
        self.0.buckets[b].fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.duration_sum_us.fetch_add(us, Relaxed);
    }

    /// `bytes` of pushed sync results (Observe notifications and their ACKs, link framing
    /// included) crossed the link (crate::observe).
    pub fn observe_bytes(&self, bytes: u64) {
        self.0.observe_bytes.fetch_add(bytes, Relaxed);
    }

    /// Link bytes of pushed sync results so far.
    pub fn observe_bytes_total(&self) -> u64 {
        self.0.observe_bytes.load(Relaxed)
    }

    /// Reads the current values.
    pub fn snapshot(&self) -> Snapshot {
        let ld = |a: &[AtomicU64; 2]| [a[0].load(Relaxed), a[1].load(Relaxed)];
        Snapshot {
            link_bytes: ld(&self.0.link_bytes),
            link_packets: ld(&self.0.link_packets),
            sessions: self.0.sessions.load(Relaxed),
            sessions_asleep: self.0.sessions_asleep.load(Relaxed),
            handshakes: ld(&self.0.handshakes),
            retransmissions: self.0.retransmissions.load(Relaxed),
            requests: core::array::from_fn(|i| self.0.requests[i].load(Relaxed)),
        }
    }

    /// The text exposition of all series.
    pub fn render(&self) -> String {
        let s = self.snapshot();
        let mut o = String::with_capacity(2048);
        let dirs = ["in", "out"];
        family(
            &mut o,
            "lowband_link_bytes_total",
            "counter",
            "Bytes carried by the link.",
        );
        for (d, v) in dirs.iter().zip(s.link_bytes) {
            let _ = writeln!(o, "lowband_link_bytes_total{{direction=\"{d}\"}} {v}");
        }
        family(
            &mut o,
            "lowband_link_packets_total",
            "counter",
            "Packets carried by the link.",
        );
        for (d, v) in dirs.iter().zip(s.link_packets) {
            let _ = writeln!(o, "lowband_link_packets_total{{direction=\"{d}\"}} {v}");
        }
        family(&mut o, "lowband_sessions", "gauge", "Open link sessions.");
        let _ = writeln!(o, "lowband_sessions {}", s.sessions);
        family(
            &mut o,
            "lowband_sessions_asleep",
            "gauge",
            "Link sessions hibernating until their next packet.",
        );
        let _ = writeln!(o, "lowband_sessions_asleep {}", s.sessions_asleep);
        family(
            &mut o,
            "lowband_handshakes_total",
            "counter",
            "Noise handshakes by result.",
        );
        for (r, v) in ["ok", "refused"].iter().zip(s.handshakes) {
            let _ = writeln!(o, "lowband_handshakes_total{{result=\"{r}\"}} {v}");
        }
        family(
            &mut o,
            "lowband_retransmissions_total",
            "counter",
            "Messages sent again after a timeout.",
        );
        let _ = writeln!(o, "lowband_retransmissions_total {}", s.retransmissions);
        family(
            &mut o,
            "lowband_requests_total",
            "counter",
            "Proxied requests by HTTP status class (error: no status).",
        );
        for (c, v) in STATUS_CLASSES.iter().zip(s.requests) {
            let _ = writeln!(o, "lowband_requests_total{{status_class=\"{c}\"}} {v}");
        }
        let name = "lowband_request_duration_seconds";
        family(&mut o, name, "histogram", "Time from request to answer.");
        let mut cum = 0u64;
        for (i, b) in self.0.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            match DURATION_BUCKETS.get(i) {
                Some(ub) => {
                    let _ = writeln!(o, "{name}_bucket{{le=\"{ub}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let sum = self.0.duration_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "{name}_sum {sum}");
        let _ = writeln!(o, "{name}_count {cum}");
        family(
            &mut o,
            "lowband_observe_link_bytes_total",
            "counter",
            "Link bytes of pushed sync results (Observe notifications and their ACKs).",
        );
        let _ = writeln!(
            o,
            "lowband_observe_link_bytes_total {}",
            self.observe_bytes_total()
        );
        o
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Largest request head the responder reads.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves `GET /metrics` on it in a background task.
///
/// Returns the bound address (useful with port 0) and the task; abort the task to stop.
/// Must be called inside a tokio runtime.
///
/// # Errors
/// The bind error.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "metrics on http://{local}/metrics");
    Ok((local, serve_metrics_on(listener, metrics)))
}

/// Serves `GET /metrics` on an already bound listener in a background task.
///
/// A minimal HTTP/1.x responder: one request per connection (`Connection: close`),
/// `HEAD` allowed, 404 for other paths, 405 for other methods, at most 8 connections at a
/// time, 5 s to send the request head.
pub fn serve_metrics_on(listener: TcpListener, metrics: Metrics) -> JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(%peer, "metrics: too many connections, closing");
                continue;
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = respond(stream, &m).await {
                    tracing::debug!(%peer, error = %e, "metrics connection");
                }
                drop(permit);
            });
        }
    })
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let head_end = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if let Some(i) = find(&buf[..len], b"\r\n\r\n").or_else(|| find(&buf[..len], b"\n\n")) {
                return Ok::<_, io::Error>(Some(i));
            }
            if len == buf.len() {
                return Ok(None);
            }
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                return Ok(None);
            }
            len += n;
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timeout"))??;
    let (status, body) = match head_end {
        None => ("400 Bad Request", String::from("bad request\n")),
        Some(end) => route(&buf[..end], metrics),
    };
    let head_only = buf.starts_with(b"HEAD ");
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        resp.push_str("Allow: GET, HEAD\r\n");
    }
    resp.push_str("\r\n");
    if !head_only {
        resp.push_str(&body);
    }
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

fn route(head: &[u8], metrics: &Metrics) -> (&'static str, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", "bad request\n".into());
    };
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", metrics.render()),
        ("GET" | "HEAD", _) => ("404 Not Found", "try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".into()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_metrics_export_every_series_at_zero() {
        let r = Metrics::new().render();
        for line in [
            "lowband_link_bytes_total{direction=\"in\"} 0",
            "lowband_link_packets_total{direction=\"out\"} 0",
            "lowband_sessions 0",
            "lowband_sessions_asleep 0",
            "lowband_handshakes_total{result=\"refused\"} 0",
            "lowband_retransmissions_total 0",
            "lowband_requests_total{status_class=\"error\"} 0",
            "lowband_request_duration_seconds_bucket{le=\"+Inf\"} 0",
            "# TYPE lowband_request_duration_seconds histogram",
        ] {
            assert!(r.lines().any(|l| l == line), "missing {line}\n{r}");
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new();
        m.request(Some(200), Duration::from_millis(50));
        m.request(Some(200), Duration::from_millis(100)); // on the bound: le=0.1
        m.request(Some(404), Duration::from_secs(7));
        m.request(None, Duration::from_secs(700));
        let r = m.render();
        for line in [
            "lowband_request_duration_seconds_bucket{le=\"0.1\"} 2",
            "lowband_request_duration_seconds_bucket{le=\"5\"} 2",
            "lowband_request_duration_seconds_bucket{le=\"10\"} 3",
            "lowband_request_duration_seconds_bucket{le=\"600\"} 3",
            "lowband_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "lowband_request_duration_seconds_count 4",
            "lowband_request_duration_seconds_sum 707.15",
            "lowband_requests_total{status_class=\"2xx\"} 2",
            "lowband_requests_total{status_class=\"4xx\"} 1",
            "lowband_requests_total{status_class=\"error\"} 1",
        ] {
            assert!(r.lines().any(|l| l == line), "missing {line}\n{r}");
        }
    }

    #[test]
    fn observe_bytes_are_counted() {
        let m = Metrics::new();
        m.observe_bytes(95);
        m.observe_bytes(22);
        assert!(m
            .render()
            .lines()
            .any(|l| l == "lowband_observe_link_bytes_total 117"));
    }

    #[test]
    fn sessions_gauge_never_negative() {
        let m = Metrics::new();
        m.session_closed();
        m.session_opened();
        m.session_opened();
        m.session_closed();
        assert_eq!(m.snapshot().sessions, 1);
        m.set_sessions(5);
        assert_eq!(m.snapshot().sessions, 5);
    }

    #[test]
    fn odd_status_is_other() {
        let m = Metrics::new();
        m.request(Some(99), Duration::ZERO);
        m.request(Some(600), Duration::ZERO);
        assert_eq!(m.snapshot().requests, [0, 0, 0, 0, 0, 2, 0]);
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x", &m).0, "200 OK");
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0", &m).0, "200 OK");
        assert_eq!(route(b"GET / HTTP/1.1", &m).0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"\xff", &m).0, "400 Bad Request");
    }
}
