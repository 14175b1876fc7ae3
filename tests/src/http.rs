//! A minimal blocking HTTP/1.1 client for plain-HTTP loopback servers (no TLS, no redirects).
//!
//! Enough to poll Synapse's `/_matrix/client/versions`, register users and make the odd direct
//! request in a test; real client traffic goes through matrix-nio ([`crate::Nio`]).

use core::time::Duration;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

/// A response: status code, headers (names lower-cased, in order) and the decoded body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header fields with lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body with any chunked transfer coding removed.
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow::anyhow!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request to an `http://host:port/path` URL and read the whole response.
///
/// `timeout` bounds connecting and each read and write.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Response> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// GET `url` and parse the JSON body; fails unless the status is 2xx.
pub fn get_json(url: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let r = request("GET", url, &[], &[], timeout)?;
    ok_json(r, url)
}

/// POST a JSON body to `url` (with an optional bearer token) and parse the JSON reply; fails
/// unless the status is 2xx.
pub fn post_json(
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let r = request("POST", url, &headers, body.to_string().as_bytes(), timeout)?;
    ok_json(r, url)
}

fn ok_json(r: Response, url: &str) -> anyhow::Result<serde_json::Value> {
    if !(200..300).contains(&r.status) {
        anyhow::bail!(
            "{url}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    r.json()
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("incomplete HTTP response ({} bytes)", raw.len()))?;
    let head = core::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let payload = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(payload)?
    } else {
        payload.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut p: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = p
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow::anyhow!("truncated chunk size"))?;
        let size_text = core::str::from_utf8(&p[..eol])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)?;
        p = &p[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if p.len() < size + 2 {
            anyhow::bail!("truncated chunk");
        }
        out.extend_from_slice(&p[..size]);
        p = &p[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn parses_plain_response_and_rejects_truncated() {
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json().unwrap(), serde_json::json!({}));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
    }
}
