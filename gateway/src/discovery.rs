//! Matrix server discovery: from a server name to where `serve` connects, which name the TLS
//! certificate must be valid for and which `Host` header to send.
//!
//! A federation request carries the destination's *server name* (`example.org`,
//! `example.org:8448`, `1.2.3.4`, `[::1]:8448`). The spec turns it into a connection in up to
//! six steps (<https://spec.matrix.org/v1.16/server-server-api/#resolving-server-names>):
//!
//! 1. IP literal: that address, the given port or 8448; certificate for the IP; `Host` = the
//!    server name.
//! 2. DNS name with an explicit port: its A/AAAA addresses, that port; certificate for the
//!    hostname; `Host` = the server name.
//! 3. Otherwise `GET https://<hostname>/.well-known/matrix/server`. A valid answer's `m.server`
//!    is `<delegated_hostname>[:<delegated_port>]`, handled like the server name in 1 and 2
//!    (certificate for the delegated IP or hostname, `Host` = the delegated server name); without
//!    a port, SRV `_matrix-fed._tcp.<delegated_hostname>`, then the deprecated
//!    `_matrix._tcp.<delegated_hostname>`, then port 8448 (certificate and `Host` for
//!    `<delegated_hostname>`, whatever target the SRV record names).
//! 4. to 6. `.well-known` failed (no answer, not 200, bad JSON, bad `m.server`): SRV
//!    `_matrix-fed._tcp.<hostname>`, then `_matrix._tcp.<hostname>`, then port 8448;
//!    certificate and `Host` for `<hostname>`.
//!
//! `.well-known` answers are cached: a valid one as its `Cache-Control` says (24 h without one,
//! at most 48 h, not at all with `no-store`/`no-cache`); a failure for one minute, doubling on
//! each further failure up to one hour. SRV and address records are cached by the resolver for
//! their TTL.
//!
//! The algorithm ([`Discovery::resolve`]) reads the network only through [`Lookup`] and takes
//! `now` from its caller, so tests drive every branch with a mock; [`NetLookup`] is the real
//! thing (hickory-resolver for DNS, rustls for `.well-known`).
use alloc::collections::BTreeMap;
use core::future::Future;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Port of a server name without one, when no SRV record names another.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a valid `.well-known` answer without cache headers is used.
pub const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a valid `.well-known` answer is used, whatever its headers say.
pub const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long a first `.well-known` failure is remembered (doubles with each further one).
pub const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(60);
/// The longest a `.well-known` failure is remembered.
pub const WELL_KNOWN_ERROR_MAX_TTL: Duration = Duration::from_secs(3600);
/// Largest `.well-known` body read.
const WELL_KNOWN_MAX_BODY: usize = 64 * 1024;
/// Redirects followed for one `.well-known` request.
const WELL_KNOWN_MAX_REDIRECTS: usize = 5;
/// Bound on one `.well-known` request (redirects included), and on one TCP connect.
const NET_TIMEOUT: Duration = Duration::from_secs(10);
/// Server names whose `.well-known` result is kept.
const CACHE_CAP: usize = 4096;

/// Why a server name was not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// Not a server name (grammar of the spec's appendix).
    #[error("not a server name")]
    BadName,
    /// An SRV lookup failed (other than "no such record").
    #[error("DNS lookup failed")]
    Dns,
    /// The SRV record says the service is not offered (target `.`).
    #[error("SRV record says no federation service")]
    NoService,
}

/// A host: an IP literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP address (from an IP literal).
    Ip(IpAddr),
    /// A DNS name, without a trailing dot.
    Name(String),
}

impl core::fmt::Display for Host {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Splits a server name into host and optional port, checking the grammar
/// (<https://spec.matrix.org/v1.16/appendices/#server-name>): `dns-name`, IPv4 or `[IPv6]`,
/// then optionally `:` and a port (1 to 65535, no leading zero).
///
/// # Errors
/// [`DiscoveryError::BadName`].
pub fn parse_server_name(name: &str) -> Result<(Host, Option<u16>), DiscoveryError> {
    let bad = DiscoveryError::BadName;
    let (host, port) = if let Some(r) = name.strip_prefix('[') {
        let (ip, rest) = r.split_once(']').ok_or(bad)?;
        let ip = ip.parse::<core::net::Ipv6Addr>().map_err(|_| bad)?;
        let port = match rest {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad)?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, port) = match name.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (name, None),
        };
        let host = if let Ok(ip) = h.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            Host::Name(h.to_owned())
        } else {
            return Err(bad);
        };
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|n| *n != 0 && n.to_string() == p)
                .ok_or(bad)?,
        ),
    };
    Ok((host, port))
}

/// Which rule of the spec chose a [`Destination`] (numbers as in the spec's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// 1: an IP literal.
    IpLiteral,
    /// 2: a hostname with an explicit port.
    ExplicitPort,
    /// 3.1: `.well-known` delegated to an IP literal.
    DelegatedIp,
    /// 3.2: `.well-known` delegated to a hostname with a port.
    DelegatedPort,
    /// 3.3: `.well-known` delegation, then SRV `_matrix-fed._tcp.<delegated_hostname>`.
    DelegatedSrv,
    /// 3.4: `.well-known` delegation, then the deprecated SRV `_matrix._tcp.<delegated_hostname>`.
    DelegatedLegacySrv,
    /// 3.5: `.well-known` delegation, no SRV: the delegated hostname, port 8448.
    DelegatedDefaultPort,
    /// 4: no `.well-known`: SRV `_matrix-fed._tcp.<hostname>`.
    Srv,
    /// 5: no `.well-known`: the deprecated SRV `_matrix._tcp.<hostname>`.
    LegacySrv,
    /// 6: no `.well-known`, no SRV: the hostname, port 8448.
    DefaultPort,
}

/// Where and how to send federation requests for one server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Addresses to try in order: a host (resolved with A/AAAA when a name) and a port. Several
    /// only when SRV records name several targets (by priority, then weight).
    pub targets: Vec<(Host, u16)>,
    /// The name the server's TLS certificate must be valid for.
    pub tls_name: Host,
    /// The `Host` header of every request.
    pub host_header: String,
    /// The rule that chose it.
    pub step: Step,
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Among equal priorities, higher is tried first.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host name (`.` or empty: no service).
    pub target: String,
}

/// The HTTP answer to a `.well-known/matrix/server` request (after redirects).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WellKnownHttp {
    /// Status code.
    pub status: u16,
    /// The `Cache-Control` header.
    pub cache_control: Option<String>,
    /// The body (at most 64 KiB).
    pub body: Vec<u8>,
}

/// The network as discovery sees it; [`NetLookup`] is the real one.
pub trait Lookup {
    /// `GET https://<host>/.well-known/matrix/server`, following redirects; `Err` when no HTTP
    /// answer came (connection, TLS, timeout, redirect loop).
    fn well_known(&self, host: &str) -> impl Future<Output = Result<WellKnownHttp, String>> + Send;
    /// The SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`); `Ok(vec![])` when there
    /// are none (NXDOMAIN or no data); `Err` when the lookup failed.
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<SrvRecord>, String>> + Send;
}

/// The delegated server name in a `.well-known` answer, if the answer is valid: status 200, a
/// JSON object whose `m.server` is a server name.
pub fn parse_well_known(r: &WellKnownHttp) -> Option<String> {
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let s = v.get("m.server")?.as_str()?;
    parse_server_name(s).ok()?;
    Some(s.to_owned())
}

/// How long to use a valid `.well-known` answer with this `Cache-Control` header.
pub fn well_known_ttl(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return WELL_KNOWN_DEFAULT_TTL;
    };
    let mut ttl = WELL_KNOWN_DEFAULT_TTL;
    for d in cc.split(',') {
        let d = d.trim();
        let (k, v) = d.split_once('=').unwrap_or((d, ""));
        let k = k.trim().to_ascii_lowercase();
        if k == "no-store" || k == "no-cache" {
            return Duration::ZERO;
        }
        if k == "max-age" {
            if let Ok(n) = v.trim().trim_matches('"').parse::<u64>() {
                ttl = Duration::from_secs(n);
            }
        }
    }
    ttl.min(WELL_KNOWN_MAX_TTL)
}

/// How long to remember the `failures`-th failure in a row (1 minute, doubling, at most 1 h).
pub fn error_ttl(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    WELL_KNOWN_ERROR_TTL
        .saturating_mul(1 << shift)
        .min(WELL_KNOWN_ERROR_MAX_TTL)
}

#[derive(Debug, Clone)]
struct CacheEntry {
    /// The delegated server name; `None`: `.well-known` failed.
    delegated: Option<String>,
    expires: Instant,
    /// Failures in a row.
    failures: u32,
}

/// Server discovery with its `.well-known` cache. Call protocol: [`Discovery::resolve`] for
/// every request (the cache makes repeats cheap); `now` is the caller's clock.
#[derive(Debug, Default)]
pub struct Discovery {
    cache: Mutex<BTreeMap<String, CacheEntry>>,
}

impl Discovery {
    /// An empty cache.
    pub fn new() -> Discovery {
        Discovery::default()
    }

    /// Resolves `name` by the spec's rules.
    ///
    /// # Errors
    /// [`DiscoveryError`]: a bad name (also a cached `.well-known` never excuses one), a failed
    /// SRV lookup, an SRV record refusing service.
    pub async fn resolve<L: Lookup + Sync>(
        &self,
        lookup: &L,
        name: &str,
        now: Instant,
    ) -> Result<Destination, DiscoveryError> {
        let (host, port) = parse_server_name(name)?;
        let hostname = match (host, port) {
            (Host::Ip(ip), p) => {
                return Ok(Destination {
                    targets: vec![(Host::Ip(ip), p.unwrap_or(DEFAULT_PORT))],
                    tls_name: Host::Ip(ip),
                    host_header: name.to_owned(),
                    step: Step::IpLiteral,
                })
            }
            (Host::Name(h), Some(p)) => {
                return Ok(Destination {
                    targets: vec![(Host::Name(h.clone()), p)],
                    tls_name: Host::Name(h),
                    host_header: name.to_owned(),
                    step: Step::ExplicitPort,
                })
            }
            (Host::Name(h), None) => h,
        };
        match self.well_known(lookup, &hostname, now).await {
            Some(delegated) => {
                // INVARIANT: parse_well_known only keeps valid server names.
                let (dhost, dport) = parse_server_name(&delegated)?;
                match (dhost, dport) {
                    (Host::Ip(ip), p) => Ok(Destination {
                        targets: vec![(Host::Ip(ip), p.unwrap_or(DEFAULT_PORT))],
                        tls_name: Host::Ip(ip),
                        host_header: delegated,
                        step: Step::DelegatedIp,
                    }),
                    (Host::Name(h), Some(p)) => Ok(Destination {
                        targets: vec![(Host::Name(h.clone()), p)],
                        tls_name: Host::Name(h),
                        host_header: delegated,
                        step: Step::DelegatedPort,
                    }),
                    (Host::Name(h), None) => {
                        let steps = [
                            Step::DelegatedSrv,
                            Step::DelegatedLegacySrv,
                            Step::DelegatedDefaultPort,
                        ];
                        srv_steps(lookup, &h, steps).await
                    }
                }
            }
            None => {
                let steps = [Step::Srv, Step::LegacySrv, Step::DefaultPort];
                srv_steps(lookup, &hostname, steps).await
            }
        }
    }

    /// The delegated server name from `.well-known` (cached), `None` if it failed.
    async fn well_known<L: Lookup + Sync>(
        &self,
        lookup: &L,
        hostname: &str,
        now: Instant,
    ) -> Option<String> {
        let key = hostname.to_ascii_lowercase();
        let failures = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key) {
                Some(e) if e.expires > now => return e.delegated.clone(),
                Some(e) => e.failures,
                None => 0,
            }
        };
        let r = lookup.well_known(hostname).await;
        let (delegated, ttl, failures) = match &r {
            Ok(http) => match parse_well_known(http) {
                Some(d) => (Some(d), well_known_ttl(http.cache_control.as_deref()), 0),
                None => (None, error_ttl(failures + 1), failures + 1),
            },
            Err(_) => (None, error_ttl(failures + 1), failures + 1),
        };
        tracing::debug!(hostname, ?delegated, ?ttl, err = ?r.as_ref().err(), "federation: .well-known");
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAP && !cache.contains_key(&key) {
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= CACHE_CAP {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            CacheEntry {
                delegated: delegated.clone(),
                expires: now + ttl,
                failures,
            },
        );
        delegated
    }
}

/// SRV `_matrix-fed._tcp.<host>`, then `_matrix._tcp.<host>`, then `<host>:8448`; certificate
/// and `Host` header for `host` throughout. `steps` names the three outcomes.
async fn srv_steps<L: Lookup + Sync>(
    lookup: &L,
    host: &str,
    steps: [Step; 3],
) -> Result<Destination, DiscoveryError> {
    let dest = |targets, step| Destination {
        targets,
        tls_name: Host::Name(host.to_owned()),
        host_header: host.to_owned(),
        step,
    };
    for (prefix, step) in [("_matrix-fed._tcp.", steps[0]), ("_matrix._tcp.", steps[1])] {
        let q = format!("{prefix}{host}");
        let mut recs = lookup.srv(&q).await.map_err(|e| {
            tracing::info!(%q, %e, "federation: SRV lookup failed");
            DiscoveryError::Dns
        })?;
        if recs.is_empty() {
            continue;
        }
        recs.sort_by_key(|r| (r.priority, core::cmp::Reverse(r.weight)));
        let targets: Vec<(Host, u16)> = recs
            .iter()
            .filter_map(|r| {
                let t = r.target.trim_end_matches('.');
                match parse_server_name(t) {
                    Ok((Host::Name(n), None)) => Some((Host::Name(n), r.port)),
                    Ok((Host::Ip(ip), None)) => Some((Host::Ip(ip), r.port)),
                    _ => None,
                }
            })
            .collect();
        if targets.is_empty() {
            // RFC 2782: a target of "." means the service is decidedly not available.
            return Err(DiscoveryError::NoService);
        }
        return Ok(dest(targets, step));
    }
    Ok(dest(
        vec![(Host::Name(host.to_owned()), DEFAULT_PORT)],
        steps[2],
    ))
}

/// A DNS resolver: the system's (`None`), or only the name server at `dns` (UDP and TCP, no
/// hosts file), e.g. a local resolver or a test's.
///
/// # Errors
/// An unreadable system configuration.
pub fn resolver(dns: Option<SocketAddr>) -> anyhow::Result<TokioResolver> {
    match dns {
        None => Ok(TokioResolver::builder_tokio()?.build()?),
        Some(a) => {
            let mut ns = NameServerConfig::udp_and_tcp(a.ip());
            for c in &mut ns.connections {
                c.port = a.port();
            }
            let cfg = ResolverConfig::from_name_servers(vec![ns]);
            let mut opts = ResolverOpts::default();
            opts.use_hosts_file = ResolveHosts::Never;
            opts.timeout = Duration::from_secs(3);
            opts.attempts = 2;
            Ok(
                TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default())
                    .with_options(opts)
                    .build()?,
            )
        }
    }
}

/// The real network: DNS through hickory-resolver, `.well-known` over TLS (rustls) checked
/// against the federation CA set.
#[derive(Clone)]
pub struct NetLookup {
    dns: TokioResolver,
    tls: TlsConnector,
    /// Port of `.well-known` requests: 443 (the spec); tests may change it.
    well_known_port: u16,
}

impl core::fmt::Debug for NetLookup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetLookup")
            .field("well_known_port", &self.well_known_port)
            .finish_non_exhaustive()
    }
}

impl NetLookup {
    /// Looks up with `dns`, fetches `.well-known` with `tls` on port 443.
    pub fn new(dns: TokioResolver, tls: TlsConnector) -> NetLookup {
        NetLookup {
            dns,
            tls,
            well_known_port: 443,
        }
    }

    /// The TLS client (the federation CA set).
    pub fn tls(&self) -> &TlsConnector {
        &self.tls
    }

    /// A TCP connection to `host:port` (each A/AAAA address of a name in turn).
    ///
    /// # Errors
    /// No address, or none answered.
    pub async fn connect(&self, host: &Host, port: u16) -> Result<tokio::net::TcpStream, String> {
        let ips: Vec<IpAddr> = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(n) => {
                // A trailing dot: an absolute name, no search domains.
                let fq = format!("{n}.");
                self.dns
                    .lookup_ip(fq.as_str())
                    .await
                    .map_err(|e| format!("{n}: {e}"))?
                    .iter()
                    .collect()
            }
        };
        let mut last = format!("{host}: no address");
        for ip in ips {
            let a = SocketAddr::new(ip, port);
            match tokio::time::timeout(NET_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: timed out"),
            }
        }
        Err(last)
    }

    /// One GET over a fresh TLS connection, the certificate checked for `host`.
    async fn get(
        &self,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tcp = self.connect(&Host::Name(host.to_owned()), port).await?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%e, "federation: .well-known connection ended");
            }
        });
        let authority = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "lowband")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        send.send_request(req).await.map_err(|e| e.to_string())
    }

    async fn well_known_inner(&self, host: &str) -> Result<WellKnownHttp, String> {
        let mut url = (
            host.to_owned(),
            self.well_known_port,
            "/.well-known/matrix/server".to_owned(),
        );
        for _ in 0..=WELL_KNOWN_MAX_REDIRECTS {
            let resp = self.get(&url.0, url.1, &url.2).await?;
            let status = resp.status().as_u16();
            let header = |n| {
                resp.headers()
                    .get(n)
                    .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let loc = header(hyper::header::LOCATION).ok_or("redirect without Location")?;
                url = redirect_target(&url, &loc).ok_or_else(|| format!("bad redirect {loc}"))?;
                continue;
            }
            let cache_control = header(hyper::header::CACHE_CONTROL);
            let body = Limited::new(resp.into_body(), WELL_KNOWN_MAX_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            return Ok(WellKnownHttp {
                status,
                cache_control,
                body,
            });
        }
        Err("too many redirects".into())
    }
}

/// Where a redirect from `from` (host, port, path) to `location` goes: an `https://` URL or
/// an absolute path on the same server.
fn redirect_target(from: &(String, u16, String), location: &str) -> Option<(String, u16, String)> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some((from.0.clone(), from.1, location.to_owned()));
    }
    let rest = location.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = parse_server_name(authority).ok()?;
    let Host::Name(host) = host else {
        return None;
    };
    Some((host, port.unwrap_or(443), path.to_owned()))
}

impl Lookup for NetLookup {
    async fn well_known(&self, host: &str) -> Result<WellKnownHttp, String> {
        tokio::time::timeout(NET_TIMEOUT, self.well_known_inner(host))
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }

    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, String> {
        let fq = format!("{name}.");
        match self.dns.srv_lookup(fq.as_str()).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(SrvRecord {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripted network: `.well-known` answers and SRV records by name; counts requests.
    #[derive(Default)]
    struct Mock {
        wk: BTreeMap<String, Result<WellKnownHttp, String>>,
        srv: BTreeMap<String, Result<Vec<SrvRecord>, String>>,
        log: Mutex<Vec<String>>,
    }

    impl Mock {
        fn delegate(mut self, host: &str, body: &str, cc: Option<&str>) -> Mock {
            self.wk.insert(
                host.into(),
                Ok(WellKnownHttp {
                    status: 200,
                    cache_control: cc.map(str::to_owned),
                    body: body.as_bytes().to_vec(),
                }),
            );
            self
        }
        fn srv(mut self, name: &str, recs: &[(u16, u16, u16, &str)]) -> Mock {
            let v = recs
                .iter()
                .map(|&(priority, weight, port, target)| SrvRecord {
                    priority,
                    weight,
                    port,
                    target: target.into(),
                })
                .collect();
            self.srv.insert(name.into(), Ok(v));
            self
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Lookup for Mock {
        async fn well_known(&self, host: &str) -> Result<WellKnownHttp, String> {
            self.log.lock().unwrap().push(format!("wk {host}"));
            self.wk
                .get(host)
                .cloned()
                .unwrap_or_else(|| Err("connection refused".into()))
        }
        async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, String> {
            self.log.lock().unwrap().push(format!("srv {name}"));
            self.srv.get(name).cloned().unwrap_or(Ok(Vec::new()))
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn resolve(m: &Mock, name: &str) -> Result<Destination, DiscoveryError> {
        run(Discovery::new().resolve(m, name, Instant::now()))
    }

    fn name(s: &str) -> Host {
        Host::Name(s.into())
    }

    #[test]
    fn grammar() {
        assert_eq!(
            parse_server_name("example.org:8449"),
            Ok((name("example.org"), Some(8449)))
        );
        assert_eq!(
            parse_server_name("[::1]:99"),
            Ok((Host::Ip("::1".parse().unwrap()), Some(99)))
        );
        assert_eq!(
            parse_server_name("1.2.3.4"),
            Ok((Host::Ip("1.2.3.4".parse().unwrap()), None))
        );
        for bad in [
            "",
            "a b:1",
            "x:0",
            "x:99999",
            "x:080",
            "[::1",
            "[zz]:1",
            "a/b:1",
            "x:",
            "fe80::1:2",
            "::1",
            "[::1]x",
            "é.org",
        ] {
            assert_eq!(
                parse_server_name(bad),
                Err(DiscoveryError::BadName),
                "{bad}"
            );
        }
    }

    #[test]
    fn step1_ip_literal() {
        let m = Mock::default();
        let d = resolve(&m, "127.0.0.1").unwrap();
        assert_eq!(
            d.targets,
            vec![(Host::Ip("127.0.0.1".parse().unwrap()), 8448)]
        );
        assert_eq!(d.tls_name, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("127.0.0.1", Step::IpLiteral)
        );
        let d = resolve(&m, "[::1]:99").unwrap();
        assert_eq!(d.targets, vec![(Host::Ip("::1".parse().unwrap()), 99)]);
        assert_eq!(d.host_header, "[::1]:99");
        assert!(m.log().is_empty(), "no lookups: {:?}", m.log());
    }

    #[test]
    fn step2_explicit_port() {
        let m = Mock::default().delegate("example.org", r#"{"m.server":"x.org:1"}"#, None);
        let d = resolve(&m, "example.org:8449").unwrap();
        assert_eq!(d.targets, vec![(name("example.org"), 8449)]);
        assert_eq!(d.tls_name, name("example.org"));
        assert_eq!(d.host_header, "example.org:8449");
        assert_eq!(d.step, Step::ExplicitPort);
        assert!(m.log().is_empty());
    }

    #[test]
    fn step3_delegation() {
        // 3.1 IP literal, with and without a port.
        let m = Mock::default()
            .delegate("a.org", r#"{"m.server":"[2001:db8::1]:8000"}"#, None)
            .delegate("b.org", r#"{"m.server":"192.0.2.7"}"#, None)
            // 3.2 hostname with port.
            .delegate("c.org", r#"{"m.server":"fed.c.org:8443"}"#, None)
            // 3.3 / 3.4 / 3.5 hostname without port.
            .delegate("d.org", r#"{"m.server":"fed.d.org"}"#, None)
            .delegate("e.org", r#"{"m.server":"fed.e.org"}"#, None)
            .delegate("f.org", r#"{"m.server":"fed.f.org"}"#, None)
            .srv(
                "_matrix-fed._tcp.fed.d.org",
                &[(10, 0, 9000, "srv1.d.org."), (5, 1, 9001, "srv0.d.org.")],
            )
            .srv("_matrix._tcp.fed.d.org", &[(0, 0, 1, "legacy.d.org.")])
            .srv("_matrix._tcp.fed.e.org", &[(0, 0, 9002, "legacy.e.org.")])
            // SRV of the original name must not be used once .well-known delegated.
            .srv("_matrix-fed._tcp.f.org", &[(0, 0, 1, "wrong.f.org.")]);
        let d = resolve(&m, "a.org").unwrap();
        assert_eq!(
            d.targets,
            vec![(Host::Ip("2001:db8::1".parse().unwrap()), 8000)]
        );
        assert_eq!(d.tls_name, Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("[2001:db8::1]:8000", Step::DelegatedIp)
        );
        let d = resolve(&m, "b.org").unwrap();
        assert_eq!(
            d.targets,
            vec![(Host::Ip("192.0.2.7".parse().unwrap()), 8448)]
        );
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("192.0.2.7", Step::DelegatedIp)
        );
        let d = resolve(&m, "c.org").unwrap();
        assert_eq!(d.targets, vec![(name("fed.c.org"), 8443)]);
        assert_eq!(d.tls_name, name("fed.c.org"));
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("fed.c.org:8443", Step::DelegatedPort)
        );
        let d = resolve(&m, "d.org").unwrap();
        assert_eq!(
            d.targets,
            vec![(name("srv0.d.org"), 9001), (name("srv1.d.org"), 9000)]
        );
        assert_eq!(d.tls_name, name("fed.d.org"));
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("fed.d.org", Step::DelegatedSrv)
        );
        let d = resolve(&m, "e.org").unwrap();
        assert_eq!(d.targets, vec![(name("legacy.e.org"), 9002)]);
        assert_eq!(d.tls_name, name("fed.e.org"));
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("fed.e.org", Step::DelegatedLegacySrv)
        );
        let d = resolve(&m, "f.org").unwrap();
        assert_eq!(d.targets, vec![(name("fed.f.org"), 8448)]);
        assert_eq!(d.tls_name, name("fed.f.org"));
        assert_eq!(
            (d.host_header.as_str(), d.step),
            ("fed.f.org", Step::DelegatedDefaultPort)
        );
        let log = m.log();
        assert!(
            !log.contains(&"srv _matrix._tcp.fed.d.org".to_owned()),
            "{log:?}"
        );
        assert!(
            !log.iter().any(|l| l.ends_with(" _matrix-fed._tcp.f.org")),
            "{log:?}"
        );
        assert!(
            log.contains(&"srv _matrix._tcp.fed.f.org".to_owned()),
            "{log:?}"
        );
    }

    #[test]
    fn steps4_to_6_without_well_known() {
        let mut m = Mock::default()
            .srv("_matrix-fed._tcp.a.org", &[(0, 0, 8000, "fed.a.org.")])
            .srv("_matrix-fed._tcp.b.org", &[])
            .srv("_matrix._tcp.b.org", &[(0, 0, 8001, "old.b.org.")])
            .srv("_matrix-fed._tcp.n.org", &[(0, 0, 0, ".")])
            .srv("_matrix-fed._tcp.c.org", &[(0, 0, 1, "x.c.org")])
            .delegate("bad-json.org", "{not json", None)
            .delegate("no-prop.org", r#"{"m.serverx":"a.org"}"#, None)
            .delegate("bad-name.org", r#"{"m.server":"a b"}"#, None)
            .delegate("num.org", r#"{"m.server":7}"#, None);
        m.wk.insert(
            "status.org".into(),
            Ok(WellKnownHttp {
                status: 404,
                cache_control: None,
                body: br#"{"m.server":"x.org:1"}"#.to_vec(),
            }),
        );
        m.srv
            .insert("_matrix-fed._tcp.c.org".into(), Err("SERVFAIL".into()));
        let d = resolve(&m, "a.org").unwrap();
        assert_eq!(d.targets, vec![(name("fed.a.org"), 8000)]);
        assert_eq!(d.tls_name, name("a.org"));
        assert_eq!((d.host_header.as_str(), d.step), ("a.org", Step::Srv));
        let d = resolve(&m, "b.org").unwrap();
        assert_eq!(d.targets, vec![(name("old.b.org"), 8001)]);
        assert_eq!((d.host_header.as_str(), d.step), ("b.org", Step::LegacySrv));
        for n in [
            "z.org",
            "bad-json.org",
            "no-prop.org",
            "bad-name.org",
            "num.org",
            "status.org",
        ] {
            let d = resolve(&m, n).unwrap();
            assert_eq!(d.targets, vec![(name(n), 8448)], "{n}");
            assert_eq!(d.tls_name, name(n));
            assert_eq!((d.host_header.as_str(), d.step), (n, Step::DefaultPort));
        }
        assert_eq!(resolve(&m, "n.org"), Err(DiscoveryError::NoService));
        assert_eq!(resolve(&m, "c.org"), Err(DiscoveryError::Dns));
        assert_eq!(resolve(&m, "a b"), Err(DiscoveryError::BadName));
    }

    #[test]
    fn cache_headers() {
        let h = WELL_KNOWN_DEFAULT_TTL;
        assert_eq!(well_known_ttl(None), h);
        assert_eq!(well_known_ttl(Some("public")), h);
        assert_eq!(
            well_known_ttl(Some("max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(
            well_known_ttl(Some("public, Max-Age=\"60\"")),
            Duration::from_secs(60)
        );
        assert_eq!(well_known_ttl(Some("max-age=9999999")), WELL_KNOWN_MAX_TTL);
        assert_eq!(well_known_ttl(Some("max-age=60, no-store")), Duration::ZERO);
        assert_eq!(well_known_ttl(Some("no-cache")), Duration::ZERO);
        assert_eq!(error_ttl(1), Duration::from_secs(60));
        assert_eq!(error_ttl(2), Duration::from_secs(120));
        assert_eq!(error_ttl(6), Duration::from_secs(1920));
        assert_eq!(error_ttl(7), Duration::from_secs(3600));
        assert_eq!(error_ttl(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn well_known_is_cached() {
        let mut m = Mock::default().delegate(
            "A.org",
            r#"{"m.server":"fed.a.org:1"}"#,
            Some("max-age=100"),
        );
        let disc = Discovery::new();
        let t0 = Instant::now();
        let at = |m: &Mock, s: u64| run(disc.resolve(m, "A.org", t0 + Duration::from_secs(s)));
        assert_eq!(at(&m, 0).unwrap().step, Step::DelegatedPort);
        // Cached (names are case-insensitive): the changed answer is not seen until expiry.
        m = Mock {
            wk: BTreeMap::new(),
            ..Mock::default()
        }
        .delegate("A.org", r#"{"m.server":"fed.a.org:2"}"#, None);
        assert_eq!(at(&m, 99).unwrap().targets, vec![(name("fed.a.org"), 1)]);
        assert!(m.log().is_empty());
        assert_eq!(at(&m, 100).unwrap().targets, vec![(name("fed.a.org"), 2)]);
        assert_eq!(m.log(), vec!["wk A.org"]);
        // Failures: remembered 1 min, then 2 min; a success resets the count.
        let down = Mock::default();
        let disc = Discovery::new();
        let at = |m: &Mock, s: u64| run(disc.resolve(m, "b.org", t0 + Duration::from_secs(s)));
        assert_eq!(at(&down, 0).unwrap().step, Step::DefaultPort);
        assert_eq!(at(&down, 59).unwrap().step, Step::DefaultPort);
        assert_eq!(down.log().iter().filter(|l| l.starts_with("wk")).count(), 1);
        at(&down, 60).unwrap();
        at(&down, 179).unwrap();
        assert_eq!(down.log().iter().filter(|l| l.starts_with("wk")).count(), 2);
        at(&down, 180).unwrap();
        assert_eq!(down.log().iter().filter(|l| l.starts_with("wk")).count(), 3);
        let up =
            Mock::default().delegate("b.org", r#"{"m.server":"fed.b.org:1"}"#, Some("no-store"));
        assert_eq!(at(&up, 420).unwrap().step, Step::DelegatedPort);
        // no-store: asked again every time.
        assert_eq!(at(&up, 420).unwrap().step, Step::DelegatedPort);
        assert_eq!(up.log().iter().filter(|l| l.starts_with("wk")).count(), 2);
        assert_eq!(at(&down, 421).unwrap().step, Step::DefaultPort);
        at(&down, 480).unwrap();
        assert_eq!(down.log().iter().filter(|l| l.starts_with("wk")).count(), 4);
        at(&down, 481).unwrap();
        assert_eq!(
            down.log().iter().filter(|l| l.starts_with("wk")).count(),
            5,
            "1 min again"
        );
    }

    #[test]
    fn redirects() {
        let from = (
            "a.org".to_owned(),
            443,
            "/.well-known/matrix/server".to_owned(),
        );
        assert_eq!(
            redirect_target(&from, "/other"),
            Some(("a.org".into(), 443, "/other".into()))
        );
        assert_eq!(
            redirect_target(&from, "https://b.org:8443/x/y"),
            Some(("b.org".into(), 8443, "/x/y".into()))
        );
        assert_eq!(
            redirect_target(&from, "https://b.org"),
            Some(("b.org".into(), 443, "/".into()))
        );
        assert_eq!(redirect_target(&from, "http://b.org/"), None);
        assert_eq!(redirect_target(&from, "//b.org/"), None);
        assert_eq!(redirect_target(&from, "https://a b/"), None);
    }
}
