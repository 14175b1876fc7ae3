//! Logging setup and redaction of secrets in log output.
//!
//! [`init`] installs a `tracing-subscriber` formatter on stderr filtered by `LOWBAND_LOG`
//! (or `RUST_LOG`; syntax of
//! <https://docs.rs/tracing-subscriber/0.3/tracing_subscriber/filter/struct.EnvFilter.html>).
//!
//! Matrix access tokens travel in the `Authorization: Bearer` header or, from older clients,
//! in the `access_token` query parameter (Client-Server API, "Using access tokens",
//! <https://spec.matrix.org/v1.11/client-server-api/#using-access-tokens>); passwords and
//! tokens also appear in JSON bodies (`/login`). None of them may reach a log. Wrap every
//! secret in [`Redacted`] before it meets a `tracing` macro, and pass URLs, headers and
//! bodies through [`redact_url`], [`redact_headers`] and [`redact_json`]. Redacted values
//! print as `<redacted:abcd>`, where `abcd` is a 16-bit [`fingerprint`] (SHA-256, cut): enough
//! to tell two tokens apart across log lines, far too short to recover or confirm a token.

use core::fmt;
use std::io::IsTerminal;

use sha2::{Digest, Sha256};
use tracing_subscriber::EnvFilter;

/// Environment variable read first for the log filter.
pub const ENV_LOG: &str = "LOWBAND_LOG";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter text (from the environment or the default) does not parse.
    #[error("bad log filter {filter:?}: {message}")]
    Filter {
        /// The filter text.
        filter: String,
        /// The parser's message.
        message: String,
    },
    /// A global subscriber was installed already.
    #[error("a global tracing subscriber is already installed")]
    AlreadySet,
}

/// Builds the filter from `LOWBAND_LOG`, else `RUST_LOG`, else `default` (e.g. `"info"`).
///
/// # Errors
/// [`LogError::Filter`] when the chosen text does not parse.
pub fn env_filter(default: &str) -> Result<EnvFilter, LogError> {
    let lowband = std::env::var(ENV_LOG).ok();
    let rust = std::env::var("RUST_LOG").ok();
    filter_from(lowband.as_deref(), rust.as_deref(), default)
}

/// [`env_filter`] with the environment passed in: the first non-empty of the three wins.
///
/// # Errors
/// [`LogError::Filter`] when the chosen text does not parse.
pub fn filter_from(
    lowband: Option<&str>,
    rust: Option<&str>,
    default: &str,
) -> Result<EnvFilter, LogError> {
    let text = [lowband, rust]
        .into_iter()
        .flatten()
        .find(|s| !s.trim().is_empty())
        .unwrap_or(default);
    EnvFilter::try_new(text).map_err(|e| LogError::Filter {
        filter: text.into(),
        message: e.to_string(),
    })
}

/// Installs the global subscriber: human-readable lines on stderr, colour only on a terminal.
///
/// `default` is the filter when neither `LOWBAND_LOG` nor `RUST_LOG` is set, e.g. `"info"` or
/// `"lowband_gateway=debug,info"`.
///
/// # Errors
/// [`LogError::Filter`] for a bad filter, [`LogError::AlreadySet`] when called twice.
pub fn init(default: &str) -> Result<(), LogError> {
    let filter = env_filter(default)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|_| LogError::AlreadySet)
}

/// First 4 hex digits of SHA-256 over a domain tag and `secret`: correlates log lines,
/// reveals 16 bits at most.
pub fn fingerprint(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"lowband log fingerprint\0");
    h.update(secret);
    let d = h.finalize();
    format!("{:02x}{:02x}", d[0], d[1])
}

fn redacted(secret: &[u8]) -> String {
    format!("<redacted:{}>", fingerprint(secret))
}

/// A secret (token, key, password) whose `Debug` and `Display` print `<redacted:abcd>`.
///
/// ```
/// use lowband_gateway::logging::Redacted;
/// let token = Redacted::new("syt_c2VjcmV0_abcdef");
/// assert!(!format!("{token} {token:?}").contains("syt_"));
/// assert_eq!(*token.expose(), "syt_c2VjcmV0_abcdef");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a secret.
    pub const fn new(secret: T) -> Self {
        Redacted(secret)
    }

    /// The secret itself, for the code that must use it (never for logging).
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(secret: T) -> Self {
        Redacted(secret)
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(self.0.as_ref()))
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(self.0.as_ref()))
    }
}

/// Whether a query parameter or JSON key names a secret: anything with `token`, `password`,
/// `secret` or `passphrase` in it (`access_token`, `loginToken`, `refresh_token`, ...).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["token", "password", "secret", "passphrase"]
        .iter()
        .any(|w| n.contains(w))
}

/// Replaces secret query values (see [`is_secret_name`]) and userinfo in a URL or
/// request target; everything else is kept byte for byte.
///
/// ```
/// use lowband_gateway::logging::redact_url;
/// let r = redact_url("/_matrix/client/v3/sync?since=s1&access_token=syt_abc");
/// assert!(r.starts_with("/_matrix/client/v3/sync?since=s1&access_token=<redacted:"));
/// assert!(!r.contains("syt_abc"));
/// ```
pub fn redact_url(url: &str) -> String {
    let (before_frag, frag) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (base, query) = match before_frag.find('?') {
        Some(i) => (&before_frag[..i], Some(&before_frag[i + 1..])),
        None => (before_frag, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(&redact_userinfo(base));
    if let Some(q) = query {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value)) if is_secret_name(&percent_decode(name)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(&redacted(value.as_bytes()));
                }
                _ => out.push_str(pair),
            }
        }
    }
    out.push_str(frag);
    out
}

fn redact_userinfo(base: &str) -> String {
    let Some(scheme_end) = base.find("://") else {
        return base.to_string();
    };
    let auth_start = scheme_end + 3;
    let auth_end = base[auth_start..]
        .find('/')
        .map_or(base.len(), |i| auth_start + i);
    match base[auth_start..auth_end].rfind('@') {
        Some(at) => {
            let userinfo = &base[auth_start..auth_start + at];
            format!(
                "{}{}{}",
                &base[..auth_start],
                redacted(userinfo.as_bytes()),
                &base[auth_start + at..]
            )
        }
        None => base.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Two hex digits make one byte: h, l < 16.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Headers whose whole value is a credential.
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-access-token",
];

/// One header value made safe to log: credentials replaced (keeping an `Authorization`
/// scheme such as `Bearer`), secret query values in URL-valued headers replaced.
pub fn redact_header(name: &str, value: &[u8]) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with("authorization") {
        let text = String::from_utf8_lossy(value);
        return match text.split_once(' ') {
            Some((scheme, cred))
                if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                format!("{scheme} {}", redacted(cred.trim().as_bytes()))
            }
            _ => redacted(value),
        };
    }
    if SECRET_HEADERS.contains(&n.as_str()) || is_secret_name(&n) {
        return redacted(value);
    }
    redact_url(&String::from_utf8_lossy(value))
}

/// Header list made safe to log; takes what `http::HeaderMap::iter()` yields, or `(&str, &str)`.
///
/// ```
/// use lowband_gateway::logging::redact_headers;
/// let h = redact_headers([("Authorization", "Bearer syt_abc"), ("Accept", "*/*")]);
/// assert_eq!(h[1], ("Accept".to_string(), "*/*".to_string()));
/// assert!(h[0].1.starts_with("Bearer <redacted:"));
/// ```
pub fn redact_headers<I, K, V>(headers: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    headers
        .into_iter()
        .map(|(k, v)| {
            let value = redact_header(k.as_ref(), v.as_ref());
            (k.as_ref().to_string(), value)
        })
        .collect()
}

/// A JSON value with every string or number under a secret key (see [`is_secret_name`])
/// replaced, at any depth: login requests carry `password`, responses `access_token`.
pub fn redact_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if is_secret_name(k) && !v.is_object() && !v.is_array() {
                        Value::String(redacted(v.to_string().as_bytes()))
                    } else {
                        redact_json(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_json).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_short_stable_and_distinguishes() {
        let a = fingerprint(b"syt_alice_token");
        assert_eq!(a.len(), 4);
        assert_eq!(a, fingerprint(b"syt_alice_token"));
        assert_ne!(a, fingerprint(b"syt_bob_token"));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn redacted_key_bytes() {
        let k = Redacted::new([7u8; 32]);
        let s = format!("{k:?}/{k}");
        let f = fingerprint(&[7u8; 32]);
        assert_eq!(s, format!("<redacted:{f}>/<redacted:{f}>"));
    }

    #[test]
    fn url_query_and_userinfo() {
        let cases = [
            (
                "/sync?access_token=SECRET1",
                "/sync?access_token=<redacted:",
            ),
            (
                "/login?loginToken=SECRET1&x=1",
                "/login?loginToken=<redacted:",
            ),
            ("/a?access%5Ftoken=SECRET1", "/a?access%5Ftoken=<redacted:"),
            ("http://u:SECRET1@h/x?y=1", "http://<redacted:"),
        ];
        for (i, want) in cases {
            let r = redact_url(i);
            assert!(r.starts_with(want), "{i} -> {r}");
            assert!(!r.contains("SECRET1"), "{r}");
        }
        assert_eq!(redact_url("/x?since=s1&full=1#f"), "/x?since=s1&full=1#f");
        assert_eq!(redact_url("/x?a&b=&=c"), "/x?a&b=&=c");
        let f = fingerprint(b"h");
        assert_eq!(
            redact_url("http://h@/%"),
            format!("http://<redacted:{f}>@/%")
        );
        assert_eq!(redact_url("ab://?token"), "ab://?token");
    }

    #[test]
    fn percent_decode_edges() {
        assert_eq!(percent_decode("a%5F"), "a_");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%5"), "%5");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn headers() {
        let h = redact_headers([
            ("authorization", "Bearer SECRET1"),
            ("Cookie", "a=SECRET1"),
            ("Location", "https://h/x?access_token=SECRET1"),
            ("Authorization", "SECRET1"),
            ("Host", "matrix.example.org"),
        ]);
        for (_, v) in &h {
            assert!(!v.contains("SECRET1"), "{h:?}");
        }
        assert!(h[0].1.starts_with("Bearer <redacted:"));
        assert_eq!(h[4].1, "matrix.example.org");
    }

    #[test]
    fn json_bodies() {
        let v = serde_json::json!({
            "type": "m.login.password",
            "password": "SECRET1",
            "identifier": {"user": "alice"},
            "nested": [{"refresh_token": "SECRET1", "expires_in_ms": 5}],
        });
        let r = redact_json(&v).to_string();
        assert!(!r.contains("SECRET1"), "{r}");
        assert!(r.contains("alice") && r.contains("m.login.password"), "{r}");
    }

    #[test]
    fn filter_precedence() {
        assert!(filter_from(Some("debug"), Some("[bad"), "info").is_ok());
        assert!(filter_from(None, Some("[bad"), "info").is_err());
        assert!(filter_from(Some(" "), None, "info").is_ok());
        let e = filter_from(Some("lowband=notalevel"), None, "info").unwrap_err();
        assert!(e.to_string().contains("notalevel"), "{e}");
    }
}
