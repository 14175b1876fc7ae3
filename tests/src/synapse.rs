//! A real Synapse homeserver as a child process.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::ca::{LeafCert, TestCa};
use crate::env::{py_script, Venv};
use crate::http;
use crate::net::free_port;
use crate::proc::{tail_file, ChildGuard};
use crate::tmp::TempDir;

/// How a [`Synapse`] takes part in federation.
///
/// A server's name is `localhost:<port>`; per the
/// [server discovery rules](https://spec.matrix.org/v1.16/server-server-api/#resolving-server-names)
/// a name with an explicit port is reached at exactly that host and port over TLS (no
/// `.well-known`, no SRV), with a certificate valid for `localhost`. That makes the port in the
/// name the one place to put a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Federation {
    /// No federation listener: the server name is `localhost:<http_port>`, which other servers
    /// cannot reach (they would speak TLS to a plain port).
    Off,
    /// Synapse serves federation itself, over TLS with a leaf certificate from the test CA, on
    /// the port in its server name.
    Tls,
    /// The server name is `localhost:<port>` (0: pick a free port) but Synapse does NOT listen
    /// there: a tunnel must accept TLS on 127.0.0.1:`port` presenting
    /// [`Synapse::fed_cert`], and deliver the plain HTTP requests to
    /// [`Synapse::federation_backend`] (Synapse's plain listener, which serves federation).
    Front {
        /// Advertised federation port (0: choose a free one).
        port: u16,
    },
}

/// Options for [`Synapse::start`].
#[derive(Debug, Clone)]
pub struct SynapseOpts {
    /// Short name used in log messages and errors (e.g. "a").
    pub label: String,
    /// Federation set-up.
    pub federation: Federation,
    /// CA trusted for outbound federation and issuing the federation certificate. `None` with
    /// [`Federation::Tls`] or [`Federation::Front`] creates a private CA in the data dir.
    pub ca: Option<TestCa>,
    /// Presence on or off (off cuts idle federation and /sync traffic).
    pub presence: bool,
    /// Python log level for `homeserver.log` (e.g. "INFO", "DEBUG").
    pub log_level: String,
    /// Bound on the wait for `/_matrix/client/versions` to answer.
    pub start_timeout: Duration,
    /// Top-level keys that replace the generated `homeserver.yaml` entries.
    pub extra_config: Map<String, Value>,
}

impl Default for SynapseOpts {
    fn default() -> Self {
        SynapseOpts {
            label: "hs".into(),
            federation: Federation::Off,
            ca: None,
            presence: true,
            log_level: "INFO".into(),
            start_timeout: Duration::from_secs(120),
            extra_config: Map::new(),
        }
    }
}

/// A running Synapse on loopback, stopped (SIGKILL) on drop.
///
/// Client API (and federation, and media) on plain HTTP at [`Synapse::client_url`];
/// SQLite database, media store, config and logs in its data dir. Registration is open without
/// verification (see [`Synapse::register_user`]) and rate limits are effectively off.
/// Outbound federation's per-destination back-off is set to 1 s, doubling up to 10 s
/// (Synapse's default minimum is 10 minutes); override the whole `federation` section with
/// [`SynapseOpts::extra_config`] (e.g. to raise `client_timeout`, 60 s, for slow links).
#[derive(Debug)]
pub struct Synapse {
    child: ChildGuard,
    venv: Venv,
    label: String,
    dir: PathBuf,
    server_name: String,
    http_port: u16,
    federation: Federation,
    fed_port: Option<u16>,
    ca: Option<TestCa>,
    fed_cert: Option<LeafCert>,
    shared_secret: String,
    spawned: Instant,
    startup: Option<Duration>,
    // Dropped after `child` (fields drop in declaration order).
    _tmp: Option<TempDir>,
}

impl Synapse {
    /// Write a config into `dir` (created if missing) and start Synapse; returns once the
    /// client API answers, or fails with the tail of Synapse's logs.
    pub fn start(venv: &Venv, dir: &Path, opts: SynapseOpts) -> anyhow::Result<Synapse> {
        let timeout = opts.start_timeout;
        let mut hs = Synapse::spawn(venv, dir, opts)?;
        hs.wait_ready(timeout)?;
        Ok(hs)
    }

    /// Write the config and start the process without waiting for it; call
    /// [`Synapse::wait_ready`] next (lets several servers boot at once).
    pub fn spawn(venv: &Venv, dir: &Path, opts: SynapseOpts) -> anyhow::Result<Synapse> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let http_port = free_port()?;
        let fed_port = match opts.federation {
            Federation::Off => None,
            Federation::Tls => Some(free_port()?),
            Federation::Front { port: 0 } => Some(free_port()?),
            Federation::Front { port } => Some(port),
        };
        let server_name = format!("localhost:{}", fed_port.unwrap_or(http_port));
        let ca = match (&opts.ca, opts.federation) {
            (Some(ca), _) => Some(ca.clone()),
            (None, Federation::Off) => None,
            (None, _) => Some(TestCa::create(venv, &dir.join("ca"))?),
        };
        let fed_cert = match &ca {
            Some(ca) if fed_port.is_some() => Some(ca.issue(&dir.join("fed"), &["localhost"])?),
            _ => None,
        };
        let shared_secret = random_hex(16)?;
        write_signing_key(&dir.join("signing.key"))?;
        let log_config = dir.join("log.config");
        std::fs::write(
            &log_config,
            log_config_json(&dir, &opts.log_level).to_string(),
        )?;
        let mut cfg = homeserver_config(HomeserverParts {
            dir: &dir,
            server_name: &server_name,
            http_port,
            tls_port: (opts.federation == Federation::Tls)
                .then_some(fed_port)
                .flatten(),
            ca: ca.as_ref(),
            fed_cert: fed_cert.as_ref(),
            shared_secret: &shared_secret,
            presence: opts.presence,
        })?;
        if let Value::Object(map) = &mut cfg {
            for (k, v) in &opts.extra_config {
                map.insert(k.clone(), v.clone());
            }
        }
        // JSON is YAML: Synapse reads this as its homeserver.yaml.
        let cfg_path = dir.join("homeserver.yaml");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;

        std::fs::File::create(dir.join("console.log"))?;
        let spawned = Instant::now();
        let child = launch(venv, &dir, &opts.label)?;
        Ok(Synapse {
            child,
            venv: venv.clone(),
            label: opts.label.clone(),
            dir,
            server_name,
            http_port,
            federation: opts.federation,
            fed_port,
            ca,
            fed_cert,
            shared_secret,
            spawned,
            startup: None,
            _tmp: None,
        })
    }

    /// Like [`Synapse::start`] in a fresh [`TempDir`] that the returned server owns.
    pub fn start_temp(venv: &Venv, opts: SynapseOpts) -> anyhow::Result<Synapse> {
        let tmp = TempDir::new(&format!("synapse-{}", opts.label))?;
        let mut hs = Synapse::start(venv, tmp.path(), opts)?;
        hs._tmp = Some(tmp);
        Ok(hs)
    }

    /// Wait (at most `timeout` since spawning) until `/_matrix/client/versions` answers;
    /// fails with the tail of the logs if the process exits or the time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.startup.is_some() {
            return Ok(());
        }
        let url = format!("{}/_matrix/client/versions", self.client_url());
        loop {
            if let Some(status) = self.child.exited() {
                anyhow::bail!(
                    "synapse {} exited during startup ({status})\n{}",
                    self.label,
                    self.log_tail(40)
                );
            }
            if http::get_json(&url, Duration::from_secs(2)).is_ok() {
                break;
            }
            if self.spawned.elapsed() > timeout {
                anyhow::bail!(
                    "synapse {} did not answer {url} within {timeout:?}\n{}",
                    self.label,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let startup = self.spawned.elapsed();
        self.startup = Some(startup);
        if std::env::var_os("LOWBAND_TRACE_PEERS").is_some() {
            eprintln!(
                "synapse {} ({}) up in {startup:?}: client {}, federation {:?}",
                self.label,
                self.server_name,
                self.client_url(),
                self.federation()
            );
        }
        Ok(())
    }

    /// Base URL of the client API, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Port of the plain HTTP listener (client, federation, keys and media resources).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The server name, `localhost:<port>`; user ids end in `:localhost:<port>`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The federation mode it was started with (`Front { port: 0 }` is resolved to the port).
    pub fn federation(&self) -> Federation {
        match self.federation {
            Federation::Front { .. } => Federation::Front {
                port: self.fed_port.unwrap_or(0),
            },
            f => f,
        }
    }

    /// The advertised federation address `127.0.0.1:P` (P: the port in the server name):
    /// Synapse's own TLS listener ([`Federation::Tls`]) or where a tunnel must listen
    /// ([`Federation::Front`]); `None` for [`Federation::Off`].
    pub fn federation_addr(&self) -> Option<SocketAddr> {
        self.fed_port
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
    }

    /// Where plain-HTTP federation requests to this server can be delivered (its plain
    /// listener, which serves the `federation` and `keys` resources): what a
    /// [`Federation::Front`] tunnel forwards to after terminating TLS.
    pub fn federation_backend(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.http_port))
    }

    /// The certificate for the federation port (leaf for `localhost`, 127.0.0.1, ::1 from the
    /// test CA, chain with the CA), if federation is on. In Front mode a tunnel presents it.
    pub fn fed_cert(&self) -> Option<&LeafCert> {
        self.fed_cert.as_ref()
    }

    /// The CA this server trusts for outbound federation, if any.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// The `registration_shared_secret` in its config (for the admin register API).
    pub fn shared_secret(&self) -> &str {
        &self.shared_secret
    }

    /// The data dir (config, `homeserver.db`, `media/`, `homeserver.log`, `console.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time from spawning the process to the first answer of `/_matrix/client/versions`
    /// (`None` before [`Synapse::wait_ready`] succeeded).
    pub fn startup_time(&self) -> Option<Duration> {
        self.startup
    }

    /// Stops the server (SIGKILL, as a crash or power cut would); its data dir, port and
    /// config stay for [`Synapse::restart`].
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Starts the stopped server again on the same port, config and database (a no-op
    /// if it runs); returns once the client API answers, within `timeout`.
    pub fn restart(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.spawned = Instant::now();
        self.startup = None;
        self.child = launch(&self.venv, &self.dir, &self.label)?;
        self.wait_ready(timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.exited().is_none()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of `console.log` and `homeserver.log`, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} console.log ---\n{}\n--- {} homeserver.log ---\n{}",
            self.label,
            tail_file(&self.dir.join("console.log"), lines),
            self.label,
            tail_file(&self.dir.join("homeserver.log"), lines)
        )
    }

    /// Register `name` with `password` through the client API (open registration, dummy auth);
    /// returns `(user_id, access_token)`.
    pub fn register_user(&self, name: &str, password: &str) -> anyhow::Result<(String, String)> {
        let url = format!("{}/_matrix/client/v3/register", self.client_url());
        let body = json!({
            "username": name,
            "password": password,
            "auth": {"type": "m.login.dummy"},
            "inhibit_login": false,
            "initial_device_display_name": "lowband-tests",
        });
        let r = http::post_json(&url, None, &body, Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("synapse {}: register {name}: {e}", self.label))?;
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("register {name}: no {k} in {r}"))
        };
        Ok((field("user_id")?, field("access_token")?))
    }
}

/// Runs Synapse on the `homeserver.yaml` in `dir`, appending its console output to
/// `console.log` there.
fn launch(venv: &Venv, dir: &Path, label: &str) -> anyhow::Result<ChildGuard> {
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("console.log"))?;
    let mut cmd = venv.command();
    cmd.arg(py_script("synapse_run.py"))
        .arg("-c")
        .arg(dir.join("homeserver.yaml"))
        .current_dir(dir)
        .stdout(Stdio::from(console.try_clone()?))
        .stderr(Stdio::from(console));
    ChildGuard::spawn(&format!("synapse {label}"), cmd)
}

struct HomeserverParts<'a> {
    dir: &'a Path,
    server_name: &'a str,
    http_port: u16,
    tls_port: Option<u16>,
    ca: Option<&'a TestCa>,
    fed_cert: Option<&'a LeafCert>,
    shared_secret: &'a str,
    presence: bool,
}

fn homeserver_config(p: HomeserverParts<'_>) -> anyhow::Result<Value> {
    let path = |name: &str| p.dir.join(name).to_string_lossy().into_owned();
    let mut listeners = vec![json!({
        "port": p.http_port,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": false,
        "x_forwarded": false,
        "resources": [{"names": ["client", "federation", "keys", "media"], "compress": false}],
    })];
    if let Some(port) = p.tls_port {
        listeners.push(json!({
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": true,
            "x_forwarded": false,
            "resources": [{"names": ["federation", "keys"], "compress": false}],
        }));
    }
    // Rate limits: high enough never to slow a test down.
    let rl = json!({"per_second": 10000, "burst_count": 100000});
    let mut cfg = json!({
        "server_name": p.server_name,
        "public_baseurl": format!("http://127.0.0.1:{}/", p.http_port),
        "report_stats": false,
        "listeners": listeners,
        "database": {"name": "sqlite3", "args": {"database": path("homeserver.db")}},
        "log_config": path("log.config"),
        "media_store_path": path("media"),
        "signing_key_path": path("signing.key"),
        "macaroon_secret_key": random_hex(24)?,
        "form_secret": random_hex(24)?,
        "registration_shared_secret": p.shared_secret,
        "enable_registration": true,
        "enable_registration_without_verification": true,
        // No internet: never ask matrix.org for keys.
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        // Federation peers are on loopback, which the default IP blocklist forbids.
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        "allow_public_rooms_over_federation": true,
        // Back off from an unreachable server for seconds, not minutes (default minimum 10m),
        // so a tunnel that comes up late or a link that drops cannot stall a test for long.
        "federation": {
            "destination_min_retry_interval": "1s",
            "destination_retry_multiplier": 2,
            "destination_max_retry_interval": "10s",
        },
        "enable_metrics": false,
        "url_preview_enabled": false,
        "presence": {"enabled": p.presence},
    });
    let limits = json!({
        "rc_message": rl,
        "rc_registration": rl,
        "rc_registration_token_validity": rl,
        "rc_login": {"address": rl, "account": rl, "failed_attempts": rl},
        "rc_admin_redaction": rl,
        "rc_joins": {"local": rl, "remote": rl},
        "rc_joins_per_room": rl,
        "rc_3pid_validation": rl,
        "rc_invites": {"per_room": rl, "per_user": rl, "per_issuer": rl},
        "rc_third_party_invite": rl,
        "rc_key_requests": rl,
        "rc_media_create": rl,
        "rc_presence": {"per_user": rl},
        "rc_delayed_event_mgmt": rl,
        "rc_room_creation": rl,
        "rc_reports": rl,
        "rc_user_directory": rl,
        "rc_profile": rl,
        "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 0,
                          "reject_limit": 100000, "concurrent": 1000},
        "federation_rr_transactions_per_room_per_second": 10000,

    });
    let (Value::Object(map), Value::Object(limits)) = (&mut cfg, limits) else {
        unreachable!("json! object literals")
    };
    map.extend(limits);
    if let Some(ca) = p.ca {
        map.insert("federation_verify_certificates".into(), json!(true));
        map.insert(
            "federation_custom_ca_list".into(),
            json!([ca.ca_pem().to_string_lossy()]),
        );
    }
    if let (Some(cert), Some(_)) = (p.fed_cert, p.tls_port) {
        map.insert(
            "tls_certificate_path".into(),
            json!(cert.cert_pem.to_string_lossy()),
        );
        map.insert(
            "tls_private_key_path".into(),
            json!(cert.key_pem.to_string_lossy()),
        );
    }
    Ok(cfg)
}

fn log_config_json(dir: &Path, level: &str) -> Value {
    json!({
        "version": 1,
        "formatters": {"precise": {"format":
            "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {"file": {
            "class": "logging.FileHandler",
            "formatter": "precise",
            "filename": dir.join("homeserver.log").to_string_lossy(),
            "filters": ["context"],
        }},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": false,
    })
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    let bytes: [u8; 32] = random_bytes()?;
    Ok(bytes[..n.min(32)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Unpadded standard base64, as Matrix uses for keys.
fn base64_unpadded(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let v = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(v >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// An ed25519 signing key in Synapse's file format: `ed25519 <version> <unpadded base64 seed>`.
fn write_signing_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let seed: [u8; 32] = random_bytes()?;
    let version: [u8; 4] = random_bytes()?;
    let version: String = version.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        path,
        format!("ed25519 a_{version} {}\n", base64_unpadded(&seed)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_without_padding() {
        // RFC 4648 section 10 test vectors, padding stripped.
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64_unpadded(input), want);
        }
        assert_eq!(base64_unpadded(&[0xff, 0xfe]), "//4");
    }
}
