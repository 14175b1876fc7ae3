//! Configuration of `lowband serve` and `lowband tunnel`: a TOML file merged with the flags.
//!
//! Every setting has one name, used both as a TOML key (`listen_udp`) and as a long flag
//! (`--listen-udp`): [`ServeOptions`] and [`TunnelOptions`] derive both [`serde::Deserialize`]
//! and [`clap::Args`], so the binary flattens them into its subcommands and the same struct
//! deserialises the file. Unknown TOML keys are errors (a typo must not silently fall back to
//! a default). The command line wins over the file, field by field; a list given on the
//! command line (`--allow-key`, repeated) replaces the file's list.
//!
//! Secrets are never in the file or on the command line: only paths to key files (see
//! [`crate::keys`]), and public keys. A `key` value that decodes as a 32-byte key instead of
//! naming a file is refused, so a pasted secret is not silently treated as a path.
//!
//! After merging, [`ServeConfig::load`] / [`TunnelConfig::load`] resolve defaults and parse
//! everything once (public keys to bytes, the homeserver URL to [`HttpUrl`]): the rest of the
//! gateway never handles an unparsed setting. Format: TOML 1.0 (<https://toml.io/en/v1.0.0>).

use core::fmt;
use core::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::keys;

/// Default serial line speed, bit/s.
pub const DEFAULT_BAUD: u32 = 9600;
/// Default link bit rate when it cannot be derived from a serial line, bit/s.
pub const DEFAULT_RATE_BPS: u64 = 9600;
/// Default largest datagram on the link, bytes (the simulator's default).
pub const DEFAULT_MTU: usize = 1024;
/// Default one-way link latency on top of airtime, ms.
pub const DEFAULT_LATENCY_MS: u64 = 0;

/// Why a configuration was refused. Messages name the setting and never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this command (syntax, type, or unknown key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A required setting is missing.
    #[error("missing setting `{0}` (in the config file or as --{flag})", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    /// Neither listener of a command was given.
    #[error("no listener: give {0}")]
    NoListener(&'static str),
    /// Two settings exclude each other.
    #[error("`{0}` and `{1}` exclude each other")]
    Conflict(&'static str, &'static str),
    /// A setting has an unusable value.
    #[error("`{setting}`: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// A public key is not 32 bytes of base64.
    #[error("`{setting}` entry {index} is not a 32-byte public key in base64")]
    MalformedKey {
        /// The setting.
        setting: &'static str,
        /// Position in the list (0 for a single key).
        index: usize,
    },
    /// A key file setting holds what looks like a key, not a path.
    #[error("`{0}` must be the path of a key file, not a key: secrets never go in the config or on the command line")]
    SecretInline(&'static str),
}

/// Link parameters shared by both commands (`[link]` table in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LinkOptions {
    /// Link bit rate, bit/s (default: the serial baud rate, else 9600).
    #[arg(long, visible_alias = "link-rate")]
    pub rate_bps: Option<u64>,
    /// Largest datagram on the link, bytes (default 1024).
    #[arg(long, visible_alias = "link-mtu")]
    pub mtu: Option<usize>,
    /// One-way link latency on top of airtime, ms (default 0).
    #[arg(long)]
    pub latency_ms: Option<u64>,
}

impl LinkOptions {
    /// Field-wise merge: `over`'s values win.
    pub fn merge(self, over: LinkOptions) -> LinkOptions {
        LinkOptions {
            rate_bps: over.rate_bps.or(self.rate_bps),
            mtu: over.mtu.or(self.mtu),
            latency_ms: over.latency_ms.or(self.latency_ms),
        }
    }

    fn resolve(self, serial_baud: Option<u32>) -> Result<LinkParams, ConfigError> {
        let rate_bps = self
            .rate_bps
            .or(serial_baud.map(u64::from))
            .unwrap_or(DEFAULT_RATE_BPS);
        if rate_bps == 0 {
            return Err(invalid("rate_bps", "must be at least 1 bit/s"));
        }
        let mtu = self.mtu.unwrap_or(DEFAULT_MTU);
        if !(16..=65_507).contains(&mtu) {
            return Err(invalid("mtu", "must be between 16 and 65507 bytes"));
        }
        Ok(LinkParams {
            rate_bps,
            mtu,
            latency_ms: self.latency_ms.unwrap_or(DEFAULT_LATENCY_MS),
        })
    }
}

/// Resolved link parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkParams {
    /// Link bit rate, bit/s (at least 1).
    pub rate_bps: u64,
    /// Largest datagram on the link, bytes.
    pub mtu: usize,
    /// One-way latency on top of airtime, ms.
    pub latency_ms: u64,
}

/// `serve` settings as written in a file or on the command line; every field optional.
///
/// Flatten into the subcommand with `#[command(flatten)]`; keep `--config` outside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// UDP address to receive link packets on (e.g. 0.0.0.0:7300).
    #[arg(long)]
    pub listen_udp: Option<SocketAddr>,
    /// Serial device carrying the link (e.g. /dev/ttyUSB0).
    #[arg(long)]
    pub listen_serial: Option<PathBuf>,
    /// Serial line speed, bit/s (default 9600).
    #[arg(long)]
    pub baud: Option<u32>,
    /// Base URL of the Matrix homeserver (http or https).
    #[arg(long)]
    pub homeserver: Option<String>,
    /// Path of this gateway's static private key file (mode 0600).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Public key (base64) of a device or tunnel allowed to connect; repeat for several.
    #[arg(long = "allow-key")]
    #[serde(default)]
    pub allow_keys: Vec<String>,
    /// Address to serve Prometheus metrics on (GET /metrics).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Directory where sessions and device cursors are persisted across restarts.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Link parameters.
    #[command(flatten)]
    #[serde(default)]
    pub link: LinkOptions,
}

/// What the command line passes to [`ServeConfig::load`].
pub type ServeOverrides = ServeOptions;

impl ServeOptions {
    /// Field-wise merge: `over`'s values win; a non-empty `over.allow_keys` replaces ours.
    pub fn merge(self, over: ServeOptions) -> ServeOptions {
        ServeOptions {
            listen_udp: over.listen_udp.or(self.listen_udp),
            listen_serial: over.listen_serial.or(self.listen_serial),
            baud: over.baud.or(self.baud),
            homeserver: over.homeserver.or(self.homeserver),
            key: over.key.or(self.key),
            allow_keys: if over.allow_keys.is_empty() {
                self.allow_keys
            } else {
                over.allow_keys
            },
            metrics: over.metrics.or(self.metrics),
            state_dir: over.state_dir.or(self.state_dir),
            link: self.link.merge(over.link),
        }
    }

    /// Parses a TOML document; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] on bad syntax, wrong types or unknown keys.
    pub fn from_toml(text: &str, origin: &str) -> Result<ServeOptions, ConfigError> {
        parse_toml(text, origin)
    }
}

/// Resolved `serve` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// UDP listener, if any.
    pub listen_udp: Option<SocketAddr>,
    /// Serial device, if any (at least one of the two is set).
    pub listen_serial: Option<PathBuf>,
    /// Serial line speed, bit/s.
    pub baud: u32,
    /// The homeserver.
    pub homeserver: HttpUrl,
    /// Path of the static private key file.
    pub key: PathBuf,
    /// Public keys allowed to connect, decoded. Empty: nobody is allowed.
    pub allow_keys: Vec<[u8; 32]>,
    /// Metrics listener, if any.
    pub metrics: Option<SocketAddr>,
    /// Persistence directory (sessions, device cursors), if any.
    pub state_dir: Option<PathBuf>,
    /// Link parameters.
    pub link: LinkParams,
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen_udp", &self.listen_udp)
            .field("listen_serial", &self.listen_serial)
            .field("baud", &self.baud)
            .field("homeserver", &self.homeserver)
            .field("key", &self.key)
            .field(
                "allow_keys",
                &self
                    .allow_keys
                    .iter()
                    .map(keys::encode_key)
                    .collect::<Vec<_>>(),
            )
            .field("metrics", &self.metrics)
            .field("state_dir", &self.state_dir)
            .field("link", &self.link)
            .finish()
    }
}

impl ServeConfig {
    /// Reads the file at `path` (if any), merges `overrides` over it and resolves.
    ///
    /// # Errors
    /// Any [`ConfigError`]: unreadable or invalid file, no listener, missing homeserver or
    /// key, homeserver not http(s), malformed public key, a key pasted where a path belongs.
    pub fn load(
        path: Option<&Path>,
        overrides: ServeOverrides,
    ) -> Result<ServeConfig, ConfigError> {
        let file = match path {
            Some(p) => ServeOptions::from_toml(&read(p)?, &p.display().to_string())?,
            None => ServeOptions::default(),
        };
        ServeConfig::resolve(file.merge(overrides))
    }

    /// Applies defaults and checks a merged set of options.
    ///
    /// # Errors
    /// As [`ServeConfig::load`], without the file errors.
    pub fn resolve(o: ServeOptions) -> Result<ServeConfig, ConfigError> {
        if o.listen_udp.is_none() && o.listen_serial.is_none() {
            return Err(ConfigError::NoListener("listen_udp and/or listen_serial"));
        }
        let baud = o.baud.unwrap_or(DEFAULT_BAUD);
        if baud == 0 {
            return Err(invalid("baud", "must be at least 1"));
        }
        let homeserver = o.homeserver.ok_or(ConfigError::Missing("homeserver"))?;
        let homeserver = HttpUrl::parse(&homeserver).map_err(|reason| ConfigError::Invalid {
            setting: "homeserver",
            reason,
        })?;
        let key = key_path("key", o.key)?;
        let allow_keys = o
            .allow_keys
            .iter()
            .enumerate()
            .map(|(index, k)| {
                keys::decode_key(k, "allow_keys").map_err(|_| ConfigError::MalformedKey {
                    setting: "allow_keys",
                    index,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let serial_baud = o.listen_serial.as_ref().map(|_| baud);
        Ok(ServeConfig {
            listen_udp: o.listen_udp,
            listen_serial: o.listen_serial,
            baud,
            homeserver,
            key,
            allow_keys,
            metrics: o.metrics,
            state_dir: o.state_dir,
            link: o.link.resolve(serial_baud)?,
        })
    }
}

/// `tunnel` settings as written in a file or on the command line; every field optional.
///
/// Flatten into the subcommand with `#[command(flatten)]`; keep `--config` outside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TunnelOptions {
    /// Plain HTTP address the local Matrix client connects to (e.g. 127.0.0.1:8008).
    #[arg(long)]
    pub listen_http: Option<SocketAddr>,
    /// HTTPS address the local Matrix client connects to; needs tls_cert and tls_key.
    #[arg(long)]
    pub listen_https: Option<SocketAddr>,
    /// PEM certificate chain for listen_https.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key file for listen_https (mode 0600).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// UDP address of the serving gateway.
    #[arg(long)]
    pub gateway: Option<SocketAddr>,
    /// Serial device leading to the serving gateway (instead of --gateway).
    #[arg(long)]
    pub gateway_serial: Option<PathBuf>,
    /// Serial line speed, bit/s (default 9600).
    #[arg(long)]
    pub baud: Option<u32>,
    /// The serving gateway's public key (base64), as printed by its keygen.
    #[arg(long)]
    pub gateway_key: Option<String>,
    /// Path of this tunnel's static private key file (mode 0600).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (GET /metrics).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Link parameters.
    #[command(flatten)]
    #[serde(default)]
    pub link: LinkOptions,
}

/// What the command line passes to [`TunnelConfig::load`].
pub type TunnelOverrides = TunnelOptions;

impl TunnelOptions {
    /// Field-wise merge: `over`'s values win.
    pub fn merge(self, over: TunnelOptions) -> TunnelOptions {
        TunnelOptions {
            listen_http: over.listen_http.or(self.listen_http),
            listen_https: over.listen_https.or(self.listen_https),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            gateway: over.gateway.or(self.gateway),
            gateway_serial: over.gateway_serial.or(self.gateway_serial),
            baud: over.baud.or(self.baud),
            gateway_key: over.gateway_key.or(self.gateway_key),
            key: over.key.or(self.key),
            metrics: over.metrics.or(self.metrics),
            link: self.link.merge(over.link),
        }
    }

    /// Parses a TOML document; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] on bad syntax, wrong types or unknown keys.
    pub fn from_toml(text: &str, origin: &str) -> Result<TunnelOptions, ConfigError> {
        parse_toml(text, origin)
    }
}

/// Where the tunnel reaches the serving gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayLink {
    /// Over UDP, to this address.
    Udp(SocketAddr),
    /// Over a serial line.
    Serial {
        /// The device.
        path: PathBuf,
        /// Its speed, bit/s.
        baud: u32,
    },
}

/// TLS material for the HTTPS listener (paths only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Resolved `tunnel` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Plain HTTP listener, if any.
    pub listen_http: Option<SocketAddr>,
    /// HTTPS listener and its TLS files, if any (at least one listener is set).
    pub listen_https: Option<(SocketAddr, TlsFiles)>,
    /// The way to the serving gateway.
    pub gateway: GatewayLink,
    /// The serving gateway's public key, decoded.
    pub gateway_key: [u8; 32],
    /// Path of the static private key file.
    pub key: PathBuf,
    /// Metrics listener, if any.
    pub metrics: Option<SocketAddr>,
    /// Link parameters.
    pub link: LinkParams,
}

impl fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("listen_http", &self.listen_http)
            .field("listen_https", &self.listen_https)
            .field("gateway", &self.gateway)
            .field("gateway_key", &keys::encode_key(&self.gateway_key))
            .field("key", &self.key)
            .field("metrics", &self.metrics)
            .field("link", &self.link)
            .finish()
    }
}

impl TunnelConfig {
    /// Reads the file at `path` (if any), merges `overrides` over it and resolves.
    ///
    /// # Errors
    /// Any [`ConfigError`]: unreadable or invalid file, no listener, HTTPS without TLS files
    /// (or TLS files without HTTPS), no gateway or both UDP and serial, malformed gateway key,
    /// a key pasted where a path belongs.
    pub fn load(
        path: Option<&Path>,
        overrides: TunnelOverrides,
    ) -> Result<TunnelConfig, ConfigError> {
        let file = match path {
            Some(p) => TunnelOptions::from_toml(&read(p)?, &p.display().to_string())?,
            None => TunnelOptions::default(),
        };
        TunnelConfig::resolve(file.merge(overrides))
    }

    /// Applies defaults and checks a merged set of options.
    ///
    /// # Errors
    /// As [`TunnelConfig::load`], without the file errors.
    pub fn resolve(o: TunnelOptions) -> Result<TunnelConfig, ConfigError> {
        if o.listen_http.is_none() && o.listen_https.is_none() {
            return Err(ConfigError::NoListener("listen_http and/or listen_https"));
        }
        let listen_https = match (o.listen_https, o.tls_cert, o.tls_key) {
            (Some(addr), Some(cert), Some(key)) => {
                let key = key_path("tls_key", Some(key))?;
                Some((addr, TlsFiles { cert, key }))
            }
            (Some(_), None, _) => return Err(ConfigError::Missing("tls_cert")),
            (Some(_), _, None) => return Err(ConfigError::Missing("tls_key")),
            (None, Some(_), _) => return Err(invalid("tls_cert", "given without listen_https")),
            (None, _, Some(_)) => return Err(invalid("tls_key", "given without listen_https")),
            (None, None, None) => None,
        };
        let baud = o.baud.unwrap_or(DEFAULT_BAUD);
        if baud == 0 {
            return Err(invalid("baud", "must be at least 1"));
        }
        let gateway = match (o.gateway, o.gateway_serial) {
            (Some(a), None) => GatewayLink::Udp(a),
            (None, Some(path)) => GatewayLink::Serial { path, baud },
            (Some(_), Some(_)) => return Err(ConfigError::Conflict("gateway", "gateway_serial")),
            (None, None) => return Err(ConfigError::Missing("gateway")),
        };
        let gateway_key = o.gateway_key.ok_or(ConfigError::Missing("gateway_key"))?;
        let gateway_key = keys::decode_key(&gateway_key, "gateway_key").map_err(|_| {
            ConfigError::MalformedKey {
                setting: "gateway_key",
                index: 0,
            }
        })?;
        let key = key_path("key", o.key)?;
        let serial_baud = match gateway {
            GatewayLink::Serial { baud, .. } => Some(baud),
            GatewayLink::Udp(_) => None,
        };
        Ok(TunnelConfig {
            listen_http: o.listen_http,
            listen_https,
            gateway,
            gateway_key,
            key,
            metrics: o.metrics,
            link: o.link.resolve(serial_baud)?,
        })
    }
}

/// An `http://` or `https://` base URL, split for a client that connects by itself.
///
/// Userinfo (`user:pass@`), queries and fragments are refused: credentials do not belong in
/// a base URL. The path has no trailing slash (empty for the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `true` for https.
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// Path prefix without trailing slash, e.g. `""` or `"/matrix"`.
    pub path: String,
}

impl HttpUrl {
    /// Parses a base URL.
    ///
    /// # Errors
    /// A human-readable reason (contains no part of the input).
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let s = s.trim();
        let (https, rest) = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some(_) => return Err("scheme must be http or https".into()),
            None => return Err("must start with http:// or https://".into()),
        };
        if rest.contains(['?', '#']) {
            return Err("must not have a query or fragment".into());
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("must not contain credentials (user@); use a token instead".into());
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| String::from("unclosed [ in host"))?;
            if h.parse::<core::net::Ipv6Addr>().is_err() {
                return Err("bad IPv6 literal".into());
            }
            let port = match after {
                "" => default_port,
                p => parse_port(p.strip_prefix(':').ok_or("junk after ]")?)?,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err("an IPv6 host must be in brackets".into())
                }
                Some((h, p)) => (h.to_string(), parse_port(p)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err("host has characters not allowed in a host name".into());
        }
        Ok(HttpUrl {
            https,
            host: host.to_ascii_lowercase(),
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `host:port` to connect to (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let default = if self.https { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            write!(f, "{scheme}://{host}{}", self.path)
        } else {
            write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
        }
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be 1..65535".into()),
        Ok(n) => Ok(n),
    }
}

fn invalid(setting: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

fn read(p: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
        path: p.display().to_string(),
        source,
    })
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        // Not `e.to_string()`: that quotes the offending line, which may hold a secret pasted
        // under a wrong key. Position plus message, with quoted values elided.
        let at = match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            }
            None => String::new(),
        };
        ConfigError::Parse {
            path: origin.into(),
            message: format!("{at}{}", elide_quoted(e.message().trim_end())),
        }
    })
}

/// Replaces the contents of every `"..."` in `msg` with `…`; backquoted names are kept.
fn elide_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut inside = false;
    for c in msg.chars() {
        if c == '"' {
            if inside {
                out.push('…');
            }
            inside = !inside;
            out.push(c);
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// A key file setting: required, and not a key pasted in place of its path.
fn key_path(setting: &'static str, p: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let p = p.ok_or(ConfigError::Missing(setting))?;
    if let Some(s) = p.to_str() {
        if !s.contains('/') && keys::decode_key(s, setting).is_ok() && !p.exists() {
            return Err(ConfigError::SecretInline(setting));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn serve_min() -> ServeOptions {
        ServeOptions {
            listen_udp: Some("127.0.0.1:7300".parse().unwrap()),
            homeserver: Some("http://localhost:8008".into()),
            key: Some("/etc/lowband/serve.key".into()),
            ..Default::default()
        }
    }

    #[test]
    fn serve_defaults_resolve() {
        let c = ServeConfig::resolve(serve_min()).unwrap();
        assert_eq!(c.baud, 9600);
        assert_eq!(
            c.link,
            LinkParams {
                rate_bps: 9600,
                mtu: 1024,
                latency_ms: 0
            }
        );
        assert_eq!(c.homeserver.authority(), "localhost:8008");
        assert!(c.allow_keys.is_empty());
    }

    #[test]
    fn serial_baud_sets_the_default_rate() {
        let o = ServeOptions {
            listen_udp: None,
            listen_serial: Some("/dev/ttyUSB0".into()),
            baud: Some(1200),
            ..serve_min()
        };
        assert_eq!(ServeConfig::resolve(o).unwrap().link.rate_bps, 1200);
    }

    #[test]
    fn cli_wins_field_by_field() {
        let file = ServeOptions::from_toml(
            "listen_udp = \"0.0.0.0:1\"\nbaud = 300\nallow_keys = [\"a\"]\n[link]\nmtu = 64\nlatency_ms = 5\n",
            "t",
        )
        .unwrap();
        let cli = ServeOptions {
            baud: Some(1200),
            allow_keys: vec!["b".into()],
            link: LinkOptions {
                mtu: Some(128),
                ..Default::default()
            },
            ..Default::default()
        };
        let m = file.merge(cli);
        assert_eq!(m.listen_udp, Some("0.0.0.0:1".parse().unwrap()));
        assert_eq!(m.baud, Some(1200));
        assert_eq!(m.allow_keys, vec!["b".to_string()]);
        assert_eq!(m.link.mtu, Some(128));
        assert_eq!(m.link.latency_ms, Some(5));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = ServeOptions::from_toml("listen_upd = \"0.0.0.0:1\"\n", "f.toml").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("f.toml") && m.contains("listen_upd"), "{m}");
        assert!(ServeOptions::from_toml("[link]\nrate = 1\n", "f").is_err());
        assert!(TunnelOptions::from_toml("homeserver = \"http://x\"\n", "f").is_err());
    }

    #[test]
    fn parse_errors_do_not_quote_values() {
        let text = "listen_udp = \"0.0.0.0:1\"\nprivate_key = \"SECRET1\"\n";
        let e = ServeOptions::from_toml(text, "f").unwrap_err().to_string();
        assert!(
            e.contains("line 2, column 1") && e.contains("private_key"),
            "{e}"
        );
        assert!(!e.contains("SECRET1"), "{e}");
        let e = ServeOptions::from_toml("baud = \"SECRET2\"", "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1, column 8") && !e.contains("SECRET2"),
            "{e}"
        );
        assert_eq!(elide_quoted("a \"b\" `c` \"d"), "a \"…\" `c` \"");
    }

    #[test]
    fn no_listener() {
        let o = ServeOptions {
            listen_udp: None,
            ..serve_min()
        };
        let e = ServeConfig::resolve(o).unwrap_err();
        assert!(matches!(e, ConfigError::NoListener(_)), "{e}");
        assert!(e.to_string().contains("listen_udp"));
    }

    #[test]
    fn homeserver_must_be_http() {
        for bad in [
            "ftp://example.org",
            "example.org",
            "http://",
            "http://user:pw@example.org",
            "https://example.org/?access_token=x",
            "http://exa mple.org",
            "http://example.org:0",
            "http://example.org:99999",
            "http://[::1",
            "http://::1:8008",
        ] {
            let o = ServeOptions {
                homeserver: Some(bad.into()),
                ..serve_min()
            };
            let e = ServeConfig::resolve(o).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Invalid {
                        setting: "homeserver",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
            // The message never echoes the value (it might hold a credential).
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
    }

    #[test]
    fn homeserver_urls_parse() {
        let u = HttpUrl::parse("https://Matrix.Example.org/").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "matrix.example.org", 443, "")
        );
        assert_eq!(u.to_string(), "https://matrix.example.org");
        let u = HttpUrl::parse("http://[::1]:8008/base/").unwrap();
        assert_eq!(u.authority(), "[::1]:8008");
        assert_eq!(u.to_string(), "http://[::1]:8008/base");
    }

    #[test]
    fn malformed_allow_key_names_its_index() {
        let o = ServeOptions {
            allow_keys: vec![PK.into(), "not-a-key".into()],
            ..serve_min()
        };
        let e = ServeConfig::resolve(o).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::MalformedKey {
                    setting: "allow_keys",
                    index: 1
                }
            ),
            "{e}"
        );
        assert!(!e.to_string().contains("not-a-key"));
    }

    #[test]
    fn inline_secret_is_refused() {
        let o = ServeOptions {
            key: Some(PK.into()),
            ..serve_min()
        };
        assert!(matches!(
            ServeConfig::resolve(o),
            Err(ConfigError::SecretInline("key"))
        ));
    }

    #[test]
    fn debug_prints_public_keys_only_encoded() {
        let o = ServeOptions {
            allow_keys: vec![PK.into()],
            ..serve_min()
        };
        let d = format!("{:?}", ServeConfig::resolve(o).unwrap());
        assert!(d.contains(PK), "{d}");
        assert!(!d.contains("[0, 1, 2"), "{d}");
    }

    fn tunnel_min() -> TunnelOptions {
        TunnelOptions {
            listen_http: Some("127.0.0.1:8008".parse().unwrap()),
            gateway: Some("127.0.0.1:7300".parse().unwrap()),
            gateway_key: Some(PK.into()),
            key: Some("tunnel.key".into()),
            ..Default::default()
        }
    }

    #[test]
    fn tunnel_resolves() {
        let c = TunnelConfig::resolve(tunnel_min()).unwrap();
        assert_eq!(c.gateway_key[..4], [0, 1, 2, 3]);
        assert_eq!(
            c.gateway,
            GatewayLink::Udp("127.0.0.1:7300".parse().unwrap())
        );
    }

    #[test]
    fn tunnel_checks() {
        let cases: [(TunnelOptions, &str); 6] = [
            (
                TunnelOptions {
                    listen_http: None,
                    ..tunnel_min()
                },
                "no listener",
            ),
            (
                TunnelOptions {
                    listen_https: Some("127.0.0.1:8448".parse().unwrap()),
                    ..tunnel_min()
                },
                "tls_cert",
            ),
            (
                TunnelOptions {
                    tls_key: Some("k.pem".into()),
                    ..tunnel_min()
                },
                "without listen_https",
            ),
            (
                TunnelOptions {
                    gateway_serial: Some("/dev/ttyUSB0".into()),
                    ..tunnel_min()
                },
                "exclude",
            ),
            (
                TunnelOptions {
                    gateway: None,
                    ..tunnel_min()
                },
                "gateway",
            ),
            (
                TunnelOptions {
                    gateway_key: Some("AAAA".into()),
                    ..tunnel_min()
                },
                "32-byte public key",
            ),
        ];
        for (o, want) in cases {
            let e = TunnelConfig::resolve(o).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }
}
