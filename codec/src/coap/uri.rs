//! CoAP URIs to options and back (RFC 7252 §6.4, §6.5), without allocation.
//!
//! The endpoint's address is the URI's authority, so Uri-Port is never emitted and Uri-Host
//! only for registered names (an IP literal is the destination itself).
//! <https://www.rfc-editor.org/rfc/rfc7252#section-6.4>

use super::msg::{opt, Opt, OptionList, Options};
use core::fmt::{self, Write};

/// Why a URI could not be turned into options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriError {
    /// Not `coap://` or `coap+...://` with an authority, or has a fragment.
    NotCoap,
    /// A `%` not followed by two hex digits.
    BadPercent,
    /// The decode buffer or the option list is full.
    Full,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_into<'b>(s: &str, lower: bool, rest: &mut &'b mut [u8]) -> Result<&'b [u8], UriError> {
    let src = s.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < src.len() {
        let mut c = src[i];
        if c == b'%' {
            let h = src
                .get(i + 1)
                .copied()
                .and_then(hex)
                .ok_or(UriError::BadPercent)?;
            let l = src
                .get(i + 2)
                .copied()
                .and_then(hex)
                .ok_or(UriError::BadPercent)?;
            c = (h << 4) | l;
            i += 3;
        } else {
            i += 1;
        }
        if lower {
            c = c.to_ascii_lowercase();
        }
        *rest.get_mut(n).ok_or(UriError::Full)? = c;
        n += 1;
    }
    let (seg, r) = core::mem::take(rest).split_at_mut(n);
    *rest = r;
    Ok(seg)
}

/// The options for an absolute `coap://` URI (RFC 7252 §6.4): Uri-Host for a registered
/// name, one Uri-Path per segment, one Uri-Query per `&`-separated item, percent-decoded
/// into `buf`.
///
/// # Errors
/// [`UriError`].
pub fn uri_to_options<'b, const N: usize>(
    uri: &str,
    buf: &'b mut [u8],
    out: &mut OptionList<'b, N>,
) -> Result<(), UriError> {
    let rest = uri
        .strip_prefix("coap://")
        .or_else(|| uri.strip_prefix("coap+"))
        .ok_or(UriError::NotCoap)?;
    let rest = match rest.find("://") {
        Some(i) if uri.starts_with("coap+") => &rest[i + 3..],
        _ => rest,
    };
    if rest.contains('#') {
        return Err(UriError::NotCoap);
    }
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, pq) = rest.split_at(auth_end);
    let host = if let Some(h) = auth.strip_prefix('[') {
        let end = h.find(']').ok_or(UriError::NotCoap)?;
        let _ = &h[..end];
        None
    } else {
        let h = auth.split(':').next().unwrap_or("");
        if h.is_empty() {
            return Err(UriError::NotCoap);
        }
        let ipv4 = h.split('.').count() == 4
            && h.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if ipv4 {
            None
        } else {
            Some(h)
        }
    };
    let mut rest_buf = buf;
    let full = |_| UriError::Full;
    if let Some(h) = host {
        let v = decode_into(h, true, &mut rest_buf)?;
        out.push(Opt::bytes(opt::URI_HOST, v)).map_err(full)?;
    }
    let (path, query) = match pq.find('?') {
        Some(i) => (&pq[..i], Some(&pq[i + 1..])),
        None => (pq, None),
    };
    if !path.is_empty() && path != "/" {
        for seg in path[1..].split('/') {
            let v = decode_into(seg, false, &mut rest_buf)?;
            out.push(Opt::bytes(opt::URI_PATH, v)).map_err(full)?;
        }
    }
    if let Some(q) = query {
        for item in q.split('&') {
            let v = decode_into(item, false, &mut rest_buf)?;
            out.push(Opt::bytes(opt::URI_QUERY, v)).map_err(full)?;
        }
    }
    Ok(())
}

fn put_encoded<W: Write>(w: &mut W, v: &[u8], extra_ok: &[u8]) -> fmt::Result {
    for &c in v {
        let ok =
            c.is_ascii_alphanumeric() || b"-._~!$'()*+,;=:@".contains(&c) || extra_ok.contains(&c);
        if ok {
            w.write_char(c as char)?;
        } else {
            write!(w, "%{c:02X}")?;
        }
    }
    Ok(())
}

/// The URI of a request with `options` sent to `dest_host` (an IP literal or name) and
/// `dest_port` (RFC 7252 §6.5).
///
/// # Errors
/// Whatever `w` returns.
pub fn options_to_uri<W: Write>(
    dest_host: &str,
    dest_port: u16,
    options: &Options<'_>,
    w: &mut W,
) -> fmt::Result {
    w.write_str("coap://")?;
    match options.first(opt::URI_HOST).and_then(|o| o.as_bytes()) {
        Some(h) => put_encoded(w, h, b"")?,
        None if dest_host.contains(':') => write!(w, "[{dest_host}]")?,
        None => w.write_str(dest_host)?,
    }
    let port = options.uint(opt::URI_PORT).map_or(dest_port, |p| p as u16);
    if port != 5683 {
        write!(w, ":{port}")?;
    }
    let mut any = false;
    for o in options.all(opt::URI_PATH) {
        w.write_char('/')?;
        put_encoded(w, o.as_bytes().unwrap_or(&[]), b"&")?;
        any = true;
    }
    if !any {
        w.write_char('/')?;
    }
    for (i, o) in options.all(opt::URI_QUERY).enumerate() {
        w.write_char(if i == 0 { '?' } else { '&' })?;
        put_encoded(w, o.as_bytes().unwrap_or(&[]), b"?")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_5() {
        let mut buf = [0u8; 64];
        let mut l: OptionList<'_, 8> = OptionList::new();
        uri_to_options(
            "coap://198.51.100.1:61616//%2F//?%2F%2F&?%26",
            &mut buf,
            &mut l,
        )
        .unwrap();
        let o = l.as_options();
        let p: heapless::Vec<&[u8], 8> = o
            .all(opt::URI_PATH)
            .map(|o| o.as_bytes().unwrap())
            .collect();
        assert_eq!(&p[..], &[&b""[..], b"/", b"", b""]);
        let mut s: heapless::String<64> = heapless::String::new();
        options_to_uri("198.51.100.1", 61616, &o, &mut s).unwrap();
        assert_eq!(s.as_str(), "coap://198.51.100.1:61616//%2F//?%2F%2F&?%26");
    }
}
