//! Lossless Matrix JSON <-> compact CBOR, streaming and allocation-free.
//!
//! Why: every byte on the link costs airtime, and Matrix federation signs and hashes the
//! [canonical JSON](https://spec.matrix.org/v1.11/appendices/#canonical-json) form of events, so
//! the body a peer gets back must be the same value, and for canonical input the *same bytes*.
//!
//! # Wire form ([RFC 8949](https://www.rfc-editor.org/rfc/rfc8949))
//!
//! One tight form is used both as `cbor_bytes` and inside [`crate::pack`]:
//!
//! * JSON objects/arrays -> definite-length maps/arrays, key order kept; strings -> text strings
//!   (unescaped UTF-8); `true`/`false`/`null` -> simple values 21/20/22.
//! * Integers that fit -> major type 0/1 (so -2^64..2^64-1); floats whose shortest
//!   round-trip text (ryu) equals the input literal -> the narrowest exact float (half, single,
//!   double, [RFC 8949 §4.2.2](https://www.rfc-editor.org/rfc/rfc8949#section-4.2.2)); every other
//!   number literal (`-0`, `1E5`, `1e400`, `123456789012345678901234567890`) -> tag
//!   [`TAG_NUMBER`] (6, unassigned in the IANA registry, private to lowband) over a text
//!   string holding the literal, so the text comes back byte for byte.
//! * Map keys found in the [`crate::dict`] key table -> the key's id: id 0..23 as unsigned int
//!   (1 byte), id 24.. as negative int `-1 - (id - 24)` (1 byte for ids 24..47, 2 bytes up to
//!   279). MSC3079's numbers are kept, and the decoder also accepts MSC3079's own encoding
//!   (unsigned ints for every id), so MSC3079 CBOR decodes here; the encoder's output is
//!   *not* MSC3079 byte-compatible for ids 24..104 (those are the 1-byte negative form).
//! * String values (and map keys not in the key table) found in the value table -> simple
//!   value: code 0..19 as `0xe0 + code` (1 byte), code 20.. as `0xf8, 32 + code - 20`.
//! * String values that are unpadded base64 (optionally after a `$` sigil: event ids; also
//!   keys, signatures, hashes, session ids) and look random (at least 16 characters, upper and
//!   lower case letters and digits, canonical trailing bits) -> tag 7..10 ([`TAG_BASE64`]) over
//!   the decoded bytes: 25% fewer bytes, text restored exactly.
//! * Unknown keys and values pass through as text.
//!
//! A map holding both a text key and a coded (integer or simple) alias of the same name decodes
//! to the text key's entry, as MSC3079 says.
//!
//! # Output JSON
//!
//! [`decode_to_json`] writes compact JSON with canonical escaping: `"`, `\` and control
//! characters only (`\b \f \n \r \t`, else `\u00XX` lowercase), everything else raw UTF-8.
//! Integers print in decimal, floats via ryu, number literals as carried.
//!
//! # Limits and errors
//!
//! Input size and nesting depth are bounded by [`Limits`] (depth never above [`MAX_DEPTH`];
//! the explicit stacks live on the call stack, nothing recurses). Every malformed input yields an
//! [`Error`]; nothing panics on peer input.
use crate::dict::{Dict, STATIC};

/// Tag number carrying a JSON number literal as text (lowband-private use of unassigned tag 6).
pub const TAG_NUMBER: u64 = 6;

/// First of the four tags carrying an unpadded base64 string as its bytes (lowband-private use
/// of unassigned tags 7..10): 7 standard alphabet, 8 URL-safe alphabet, 9 `$` + standard,
/// 10 `$` + URL-safe (event ids of room versions 3 and 4+).
pub const TAG_BASE64: u64 = 7;

/// Shortest string value worth carrying as base64 bytes.
const B64_MIN: usize = 16;

/// The deepest nesting any [`Limits`] can allow (size of the explicit stacks).
pub const MAX_DEPTH: usize = 64;

/// Resource limits for one transcoding call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting depth of arrays and maps (clamped to [`MAX_DEPTH`]).
    pub max_depth: usize,
    /// Maximum input size in bytes.
    pub max_input: usize,
}

impl Limits {
    /// Depth 64, 1 MiB input.
    pub const DEFAULT: Limits = Limits {
        max_depth: MAX_DEPTH,
        max_input: 1 << 20,
    };

    fn depth(&self) -> usize {
        if self.max_depth < MAX_DEPTH {
            self.max_depth
        } else {
            MAX_DEPTH
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Errors of JSON <-> CBOR transcoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The output buffer is too small.
    BufferTooSmall,
    /// The input ended inside an item.
    Truncated,
    /// Nesting deeper than [`Limits::max_depth`].
    TooDeep,
    /// Input larger than [`Limits::max_input`] (or a checked map too large).
    TooLarge,
    /// The JSON text is not valid JSON (RFC 8259).
    InvalidJson,
    /// A string is not valid UTF-8 (or a `\u` escape is an unpaired surrogate).
    InvalidUtf8,
    /// Ill-formed CBOR (RFC 8949 §3: indefinite length on an int/tag, break out of place,
    /// wrong chunk type, 2-byte simple value below 32...).
    Malformed,
    /// Reserved additional information 28..30 (RFC 8949 §3).
    Reserved,
    /// Well-formed CBOR that JSON cannot represent (byte strings, NaN/infinity, undefined,
    /// tags other than bignums and [`TAG_NUMBER`], map keys that are not text or known ids).
    Unrepresentable,
    /// An integer map key or simple value code not in the dictionary.
    UnknownCode,
    /// Bytes after the single top-level item.
    TrailingData,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Error::BufferTooSmall => "output buffer too small",
            Error::Truncated => "input truncated",
            Error::TooDeep => "nesting too deep",
            Error::TooLarge => "input too large",
            Error::InvalidJson => "invalid JSON",
            Error::InvalidUtf8 => "invalid UTF-8",
            Error::Malformed => "ill-formed CBOR",
            Error::Reserved => "reserved CBOR additional information",
            Error::Unrepresentable => "CBOR item not representable in JSON",
            Error::UnknownCode => "unknown dictionary code",
            Error::TrailingData => "trailing data",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}

// ---------------------------------------------------------------------------------------------
// Output writer

struct W<'o> {
    out: &'o mut [u8],
    n: usize,
}

impl W<'_> {
    #[inline]
    fn push(&mut self, b: u8) -> Result<(), Error> {
        let slot = self.out.get_mut(self.n).ok_or(Error::BufferTooSmall)?;
        *slot = b;
        self.n += 1;
        Ok(())
    }

    #[inline]
    fn extend(&mut self, s: &[u8]) -> Result<(), Error> {
        let end = self.n.checked_add(s.len()).ok_or(Error::BufferTooSmall)?;
        self.out
            .get_mut(self.n..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(s);
        self.n = end;
        Ok(())
    }

    /// Writes a CBOR head (RFC 8949 §3) in its shortest form.
    #[inline]
    fn head(&mut self, major: u8, arg: u64) -> Result<(), Error> {
        let mut b = [0u8; 9];
        let len = head_bytes(major, arg, &mut b);
        self.extend(&b[..len])
    }
}

#[inline]
fn head_len(arg: u64) -> usize {
    if arg < 24 {
        1
    } else if arg < 0x100 {
        2
    } else if arg < 0x1_0000 {
        3
    } else if arg < 0x1_0000_0000 {
        5
    } else {
        9
    }
}

#[inline]
fn head_bytes(major: u8, arg: u64, b: &mut [u8; 9]) -> usize {
    let m = major << 5;
    let be = arg.to_be_bytes();
    match head_len(arg) {
        1 => {
            b[0] = m | arg as u8;
            1
        }
        2 => {
            b[0] = m | 24;
            b[1] = be[7];
            2
        }
        3 => {
            b[0] = m | 25;
            b[1..3].copy_from_slice(&be[6..]);
            3
        }
        5 => {
            b[0] = m | 26;
            b[1..5].copy_from_slice(&be[4..]);
            5
        }
        _ => {
            b[0] = m | 27;
            b[1..9].copy_from_slice(&be);
            9
        }
    }
}

/// Writes a dictionary key id: 0..23 unsigned, 24.. negative (`-1 - (id - 24)`).
#[inline]
fn write_key_id(w: &mut W<'_>, id: u16) -> Result<(), Error> {
    let id = u64::from(id);
    if id < 24 {
        w.push(id as u8)
    } else {
        w.head(1, id - 24)
    }
}

/// Writes a dictionary value code as a simple value (0..19 one byte, then 32.. two bytes).
#[inline]
fn write_value_code(w: &mut W<'_>, code: u16) -> Result<(), Error> {
    if code < 20 {
        w.push(0xe0 | code as u8)
    } else {
        w.push(0xf8)?;
        w.push((code - 20 + 32) as u8)
    }
}

// ---------------------------------------------------------------------------------------------
// JSON -> CBOR

/// Transcodes one JSON text into lowband CBOR with the static dictionary; returns the length.
pub fn encode_json(json: &[u8], out: &mut [u8], limits: &Limits) -> Result<usize, Error> {
    encode_json_with(json, out, limits, Some(&STATIC))
}

#[derive(Clone, Copy, Default)]
struct EFrame {
    start: usize,
    count: u64,
    map: bool,
}

#[inline]
fn skip_ws(j: &[u8], mut p: usize) -> usize {
    while let Some(&b) = j.get(p) {
        if b == b' ' || b == b'\n' || b == b'\r' || b == b'\t' {
            p += 1;
        } else {
            break;
        }
    }
    p
}

/// Transcodes JSON into CBOR with `dict` (or plain CBOR without a dictionary when `None`).
pub fn encode_json_with(
    json: &[u8],
    out: &mut [u8],
    limits: &Limits,
    dict: Option<&Dict>,
) -> Result<usize, Error> {
    if json.len() > limits.max_input {
        return Err(Error::TooLarge);
    }
    let max_depth = limits.depth();
    let mut w = W { out, n: 0 };
    let mut stack = [EFrame::default(); MAX_DEPTH];
    let mut depth = 0usize;
    let mut p = skip_ws(json, 0);
    loop {
        // Expect a value at p.
        let c = *json.get(p).ok_or(Error::InvalidJson)?;
        let mut opened = false;
        match c {
            b'{' | b'[' => {
                if depth >= max_depth {
                    return Err(Error::TooDeep);
                }
                let map = c == b'{';
                stack[depth] = EFrame {
                    start: w.n,
                    count: 0,
                    map,
                };
                depth += 1;
                w.push(if map { 0xa0 } else { 0x80 })?;
                p = skip_ws(json, p + 1);
                let close = if map { b'}' } else { b']' };
                if json.get(p) == Some(&close) {
                    p += 1;
                    depth -= 1;
                } else {
                    opened = true;
                    if map {
                        p = encode_key(json, p, &mut w, dict)?;
                    }
                }
            }
            b'"' => {
                p = encode_string(json, p, &mut w, dict, false)?;
            }
            b't' => p = literal(json, p, b"true", &mut w, 0xf5)?,
            b'f' => p = literal(json, p, b"false", &mut w, 0xf4)?,
            b'n' => p = literal(json, p, b"null", &mut w, 0xf6)?,
            b'-' | b'0'..=b'9' => p = encode_number(json, p, &mut w)?,
            _ => return Err(Error::InvalidJson),
        }
        if opened {
            continue;
        }
        // A value is complete: close containers as far as the text says.
        loop {
            p = skip_ws(json, p);
            if depth == 0 {
                return if p == json.len() {
                    Ok(w.n)
                } else {
                    Err(Error::TrailingData)
                };
            }
            let f = &mut stack[depth - 1];
            f.count += 1;
            match json.get(p) {
                Some(b',') => {
                    p = skip_ws(json, p + 1);
                    if f.map {
                        p = encode_key(json, p, &mut w, dict)?;
                    }
                    break;
                }
                Some(b'}') if f.map => {
                    p += 1;
                    let f = *f;
                    close_container(&mut w, f.start, 5, f.count)?;
                    depth -= 1;
                }
                Some(b']') if !f.map => {
                    p += 1;
                    let f = *f;
                    close_container(&mut w, f.start, 4, f.count)?;
                    depth -= 1;
                }
                None => return Err(Error::InvalidJson),
                _ => return Err(Error::InvalidJson),
            }
        }
    }
}

/// Rewrites the 1-byte placeholder head at `start` with the real count, shifting the content
/// right when the count needs a longer head.
fn close_container(w: &mut W<'_>, start: usize, major: u8, count: u64) -> Result<(), Error> {
    let mut b = [0u8; 9];
    let hl = head_bytes(major, count, &mut b);
    if hl > 1 {
        let extra = hl - 1;
        if w.n + extra > w.out.len() {
            return Err(Error::BufferTooSmall);
        }
        w.out.copy_within(start + 1..w.n, start + hl);
        w.n += extra;
    }
    w.out[start..start + hl].copy_from_slice(&b[..hl]);
    Ok(())
}

fn literal(j: &[u8], p: usize, lit: &[u8], w: &mut W<'_>, byte: u8) -> Result<usize, Error> {
    if j.get(p..p + lit.len()) == Some(lit) {
        w.push(byte)?;
        Ok(p + lit.len())
    } else {
        Err(Error::InvalidJson)
    }
}

/// Parses a key string at `p` (after whitespace) plus the `:` and following whitespace.
fn encode_key(j: &[u8], p: usize, w: &mut W<'_>, dict: Option<&Dict>) -> Result<usize, Error> {
    if j.get(p) != Some(&b'"') {
        return Err(Error::InvalidJson);
    }
    let p = encode_string(j, p, w, dict, true)?;
    let p = skip_ws(j, p);
    if j.get(p) != Some(&b':') {
        return Err(Error::InvalidJson);
    }
    Ok(skip_ws(j, p + 1))
}

#[inline]
fn hex(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(b - b'A' + 10)),
        _ => None,
    }
}

fn hex4(s: &[u8]) -> Result<u32, Error> {
    let s = s.get(..4).ok_or(Error::InvalidJson)?;
    let mut v = 0;
    for &b in s {
        v = v * 16 + hex(b).ok_or(Error::InvalidJson)?;
    }
    Ok(v)
}

/// Decodes one escape at `raw[i]` (just after the backslash). Returns (char, bytes consumed).
fn escape_at(raw: &[u8], i: usize) -> Result<(char, usize), Error> {
    let c = match raw.get(i) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => {
            let hi = hex4(&raw[i + 1..])?;
            if (0xd800..0xdc00).contains(&hi) {
                if raw.get(i + 5) != Some(&b'\\') || raw.get(i + 6) != Some(&b'u') {
                    return Err(Error::InvalidUtf8);
                }
                let lo = hex4(&raw[i + 7..])?;
                if !(0xdc00..0xe000).contains(&lo) {
                    return Err(Error::InvalidUtf8);
                }
                let cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                return Ok((char::from_u32(cp).ok_or(Error::InvalidUtf8)?, 11));
            }
            return Ok((char::from_u32(hi).ok_or(Error::InvalidUtf8)?, 5));
        }
        _ => return Err(Error::InvalidJson),
    };
    Ok((c, 1))
}

/// Encodes the JSON string starting at the quote at `p`; returns the position after it.
/// As a key (`key`), dictionary key ids are tried first, then value codes.
fn encode_string(
    j: &[u8],
    p: usize,
    w: &mut W<'_>,
    dict: Option<&Dict>,
    key: bool,
) -> Result<usize, Error> {
    let s = p + 1;
    let mut i = s;
    let mut escaped = false;
    loop {
        let b = *j.get(i).ok_or(Error::InvalidJson)?;
        if b == b'"' {
            break;
        }
        if b == b'\\' {
            escaped = true;
            i += 2;
            continue;
        }
        if b < 0x20 {
            return Err(Error::InvalidJson);
        }
        i += 1;
    }
    let raw = j.get(s..i).ok_or(Error::InvalidJson)?;
    if core::str::from_utf8(raw).is_err() {
        return Err(Error::InvalidUtf8);
    }
    if !escaped {
        if let Some(d) = dict {
            if key {
                if let Some(id) = d.key_id(raw) {
                    write_key_id(w, id)?;
                    return Ok(i + 1);
                }
            }
            if let Some(code) = d.value_code(raw) {
                write_value_code(w, code)?;
                return Ok(i + 1);
            }
            if !key && raw.len() >= B64_MIN {
                if let Some((tag, body)) = base64_candidate(raw) {
                    write_base64(w, tag, body)?;
                    return Ok(i + 1);
                }
            }
        }
        w.head(3, raw.len() as u64)?;
        w.extend(raw)?;
        return Ok(i + 1);
    }
    // Escaped: measure, then write unescaped.
    let mut len = 0usize;
    let mut k = 0;
    while k < raw.len() {
        if raw[k] == b'\\' {
            let (c, used) = escape_at(raw, k + 1)?;
            len += c.len_utf8();
            k += 1 + used;
        } else {
            len += 1;
            k += 1;
        }
    }
    let start = w.n;
    w.head(3, len as u64)?;
    let body = w.n;
    let mut k = 0;
    while k < raw.len() {
        if raw[k] == b'\\' {
            let (c, used) = escape_at(raw, k + 1)?;
            let mut buf = [0u8; 4];
            w.extend(c.encode_utf8(&mut buf).as_bytes())?;
            k += 1 + used;
        } else {
            let run_end = raw[k..]
                .iter()
                .position(|&b| b == b'\\')
                .map_or(raw.len(), |x| k + x);
            w.extend(&raw[k..run_end])?;
            k = run_end;
        }
    }
    if let Some(d) = dict {
        let text = &w.out[body..w.n];
        let id = if key { d.key_id(text) } else { None };
        if let Some(id) = id {
            w.n = start;
            write_key_id(w, id)?;
        } else if let Some(code) = d.value_code(text) {
            w.n = start;
            write_value_code(w, code)?;
        } else if !key && len >= B64_MIN {
            // The same choice as for an unescaped string (`"\/"` is `"/"`), so the encoding of
            // a value does not depend on how its JSON was escaped.
            if let Some((tag, b64)) = base64_candidate(text) {
                let sigil = len - b64.len();
                base64_in_place(w, start, body + sigil, len - sigil, tag)?;
            }
        }
    }
    Ok(i + 1)
}

/// Rewrites the text string at `start` (its `count` base64 characters at `src`, checked by
/// `base64_candidate`) as [`write_base64`] would write them, in place: the new heads take at
/// most one byte more than the text's head (so only the character at `src` can be
/// overwritten before it is read: it is read first), and each decoded byte is written at or
/// before the position of a character already read (a byte needs at least two characters).
fn base64_in_place(
    w: &mut W<'_>,
    start: usize,
    src: usize,
    count: usize,
    tag: u64,
) -> Result<(), Error> {
    let n = count * 3 / 4;
    let first = *w.out.get(src).ok_or(Error::BufferTooSmall)?;
    w.n = start;
    w.head(6, tag)?;
    w.head(2, n as u64)?;
    let mut wp = w.n;
    let mut acc: u32 = 0;
    let mut bits = 0;
    for idx in 0..count {
        let c = if idx == 0 {
            first
        } else {
            *w.out.get(src + idx).ok_or(Error::BufferTooSmall)?
        };
        acc = (acc << 6) | u32::from(b64_value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *w.out.get_mut(wp).ok_or(Error::BufferTooSmall)? = (acc >> bits) as u8;
            wp += 1;
        }
    }
    w.n = wp;
    Ok(())
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[inline]
fn b64_value(c: u8) -> u8 {
    match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    }
}

/// If `s` is worth carrying as base64 bytes: (tag, the base64 part).
fn base64_candidate(s: &[u8]) -> Option<(u64, &[u8])> {
    let (sigil, body) = match s.split_first() {
        Some((b'$', rest)) => (true, rest),
        _ => (false, s),
    };
    if body.len() < B64_MIN - 1 || body.len() % 4 == 1 {
        return None;
    }
    let (mut upper, mut lower, mut digit, mut std, mut url) = (false, false, false, false, false);
    for &c in body {
        match c {
            b'A'..=b'Z' => upper = true,
            b'a'..=b'z' => lower = true,
            b'0'..=b'9' => digit = true,
            b'+' | b'/' => std = true,
            b'-' | b'_' => url = true,
            _ => return None,
        }
    }
    if !(upper && lower && digit) || (std && url) {
        return None;
    }
    // Canonical: the unused low bits of the last character are zero.
    let last = b64_value(body[body.len() - 1]);
    match body.len() % 4 {
        2 if last & 0x0f != 0 => return None,
        3 if last & 0x03 != 0 => return None,
        _ => {}
    }
    let tag = TAG_BASE64 + u64::from(url) + if sigil { 2 } else { 0 };
    Some((tag, body))
}

/// Writes tag + byte string holding the decoded base64 `body` (checked by `base64_candidate`).
fn write_base64(w: &mut W<'_>, tag: u64, body: &[u8]) -> Result<(), Error> {
    let n = body.len() * 3 / 4;
    w.head(6, tag)?;
    w.head(2, n as u64)?;
    let end = w.n.checked_add(n).ok_or(Error::BufferTooSmall)?;
    let dst = w.out.get_mut(w.n..end).ok_or(Error::BufferTooSmall)?;
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut k = 0;
    for &c in body {
        acc = (acc << 6) | u32::from(b64_value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            dst[k] = (acc >> bits) as u8;
            k += 1;
        }
    }
    w.n = end;
    Ok(())
}

/// Writes base64 text (unpadded) of `bytes` with `alphabet`.
fn write_base64_text(w: &mut W<'_>, bytes: &[u8], alphabet: &[u8; 64]) -> Result<(), Error> {
    let len = (bytes.len() * 4).div_ceil(3);
    let end = w.n.checked_add(len).ok_or(Error::BufferTooSmall)?;
    let dst = w.out.get_mut(w.n..end).ok_or(Error::BufferTooSmall)?;
    let mut k = 0;
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            dst[k] = alphabet[((v >> (18 - 6 * i)) & 63) as usize];
            k += 1;
        }
    }
    w.n = end;
    Ok(())
}

/// Scans a JSON number (RFC 8259 §6) at `p`; returns (end, is_integer).
fn scan_number(j: &[u8], p: usize) -> Result<(usize, bool), Error> {
    let mut i = p;
    let digit = |i: usize| j.get(i).is_some_and(u8::is_ascii_digit);
    if j.get(i) == Some(&b'-') {
        i += 1;
    }
    match j.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while digit(i) {
                i += 1;
            }
        }
        _ => return Err(Error::InvalidJson),
    }
    let mut int = true;
    if j.get(i) == Some(&b'.') {
        int = false;
        i += 1;
        if !digit(i) {
            return Err(Error::InvalidJson);
        }
        while digit(i) {
            i += 1;
        }
    }
    if matches!(j.get(i), Some(b'e' | b'E')) {
        int = false;
        i += 1;
        if matches!(j.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digit(i) {
            return Err(Error::InvalidJson);
        }
        while digit(i) {
            i += 1;
        }
    }
    Ok((i, int))
}

fn encode_number(j: &[u8], p: usize, w: &mut W<'_>) -> Result<usize, Error> {
    let (end, int) = scan_number(j, p)?;
    let lit = &j[p..end];
    if int {
        let (neg, digits) = match lit.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, lit),
        };
        let mut v: u64 = 0;
        let mut ok = true;
        for &d in digits {
            match v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
            {
                Some(n) => v = n,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok && !neg {
            w.head(0, v)?;
            return Ok(end);
        }
        if ok && neg && v > 0 {
            w.head(1, v - 1)?;
            return Ok(end);
        }
        if !ok && neg && digits == b"18446744073709551616" {
            w.head(1, u64::MAX)?;
            return Ok(end);
        }
    } else {
        #[cfg(feature = "float")]
        {
            // INVARIANT: scan_number accepted only ASCII digits, sign, '.', 'e', 'E', '+', '-'.
            let text = core::str::from_utf8(lit).map_err(|_| Error::InvalidJson)?;
            if let Ok(v) = text.parse::<f64>() {
                if v.is_finite() {
                    let mut buf = ryu::Buffer::new();
                    if buf.format_finite(v).as_bytes() == lit {
                        write_float(w, v)?;
                        return Ok(end);
                    }
                }
            }
        }
        // Without `float` the choice between a float and a number literal cannot be made as
        // the other end makes it: refused rather than encoded differently.
        #[cfg(not(feature = "float"))]
        return Err(Error::Unrepresentable);
    }
    w.head(6, TAG_NUMBER)?;
    w.head(3, lit.len() as u64)?;
    w.extend(lit)?;
    Ok(end)
}

/// Half-precision bits to f64 (RFC 8949 Appendix D), by bit manipulation (no float
/// arithmetic: a device without an FPU links no soft-float routines for it).
fn f16_to_f64(h: u16) -> f64 {
    let sign = u64::from(h >> 15) << 63;
    let exp = u64::from((h >> 10) & 0x1f);
    let mant = u64::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal: mant * 2^-24 = 2^(p-24) * 1.rest, p the top set bit of mant.
        (0, m) => {
            let p = 63 - u64::from(m.leading_zeros());
            let rest = m & !(1 << p);
            sign | ((p + 1023 - 24) << 52) | (rest << (52 - p))
        }
        (31, 0) => sign | (0x7ff << 52),
        (31, _) => return f64::NAN,
        (e, m) => sign | ((e + 1023 - 15) << 52) | (m << 42),
    };
    f64::from_bits(bits)
}

/// The half-precision bits of `v` if `v` is exactly representable as a half.
#[cfg(feature = "float")]
fn f64_to_f16_exact(v: f64) -> Option<u16> {
    let f = v as f32;
    if f64::from(f).to_bits() != v.to_bits() {
        return None;
    }
    let bits = f.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127;
    let mant = bits & 0x7f_ffff;
    let h = if v == 0.0 {
        sign
    } else if (-14..=15).contains(&exp) {
        if mant & 0x1fff != 0 {
            return None;
        }
        sign | (((exp + 15) as u16) << 10) | (mant >> 13) as u16
    } else if (-24..-14).contains(&exp) {
        let full = mant | 0x80_0000; // 24 significant bits
        let shift = (-exp - 14 + 13) as u32; // to a subnormal half mantissa
        if full & ((1 << shift) - 1) != 0 {
            return None;
        }
        sign | (full >> shift) as u16
    } else {
        return None;
    };
    (f16_to_f64(h).to_bits() == v.to_bits()).then_some(h)
}

#[cfg(feature = "float")]
fn write_float(w: &mut W<'_>, v: f64) -> Result<(), Error> {
    if let Some(h) = f64_to_f16_exact(v) {
        w.push(0xf9)?;
        return w.extend(&h.to_be_bytes());
    }
    let f = v as f32;
    if f64::from(f).to_bits() == v.to_bits() {
        w.push(0xfa)?;
        return w.extend(&f.to_bits().to_be_bytes());
    }
    w.push(0xfb)?;
    w.extend(&v.to_bits().to_be_bytes())
}

// ---------------------------------------------------------------------------------------------
// CBOR pull reader

/// One CBOR data item (or the start of a container) read by [`Reader`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    /// Unsigned integer (major type 0).
    Unsigned(u64),
    /// Negative integer `-1 - n` (major type 1).
    Negative(u64),
    /// A float of any width.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined` (simple 23; not representable in JSON).
    Undefined,
    /// A text string; in value position also a dictionary value, in key position ([`Reader::next_key`])
    /// also a dictionary key.
    Text(&'a str),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A JSON number literal carried as text (tag [`TAG_NUMBER`]).
    Number(&'a str),
    /// A base64 string carried as its bytes (tags [`TAG_BASE64`]..): the JSON string is
    /// `$` (if `sigil`) followed by the unpadded base64 of `bytes` (URL-safe alphabet if
    /// `url_safe`). [`Base64Text::write`] produces it.
    Base64(Base64Text<'a>),
    /// An unassigned simple value (not a dictionary code).
    Simple(u8),
    /// A tag; the tagged item follows.
    Tag(u64),
    /// Start of an array of `Some(n)` items, or indefinite (`None`, ends with [`Item::Break`]).
    Array(Option<u64>),
    /// Start of a map of `Some(n)` pairs, or indefinite (`None`, ends with [`Item::Break`]).
    Map(Option<u64>),
    /// Start of an indefinite-length text string; definite text chunks and a break follow.
    TextChunks,
    /// Start of an indefinite-length byte string; definite byte chunks and a break follow.
    BytesChunks,
    /// The "break" stop code ending an indefinite-length item.
    Break,
}

/// A string value carried as base64 bytes (see [`Item::Base64`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base64Text<'a> {
    /// The decoded bytes.
    pub bytes: &'a [u8],
    /// URL-safe alphabet (`-_`) instead of the standard one (`+/`).
    pub url_safe: bool,
    /// The text starts with the `$` sigil (an event id).
    pub sigil: bool,
}

impl Base64Text<'_> {
    /// Length of the text form.
    pub fn text_len(&self) -> usize {
        usize::from(self.sigil) + (self.bytes.len() * 4).div_ceil(3)
    }

    /// Writes the text form into `out`; returns its length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, Error> {
        let mut w = W { out, n: 0 };
        self.write_to(&mut w)?;
        Ok(w.n)
    }

    fn write_to(&self, w: &mut W<'_>) -> Result<(), Error> {
        if self.sigil {
            w.push(b'$')?;
        }
        write_base64_text(w, self.bytes, if self.url_safe { B64_URL } else { B64_STD })
    }
}

/// A pull reader over CBOR items with dictionary lookup; no allocation, no tree.
///
/// The device reads a decoded body (e.g. a sync result) with it. Call protocol: call
/// [`Reader::next_value`] for values and [`Reader::next_key`] for map keys (that resolves dictionary
/// ids to names); containers are entered by reading their [`Item::Array`]/[`Item::Map`] head and
/// then their items, or skipped whole with [`Reader::skip`]. The reader tracks nothing but its
/// position, so the caller keeps the counts.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    dict: Option<&'static Dict>,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader with the static dictionary and default limits.
    pub fn new(cbor: &'a [u8]) -> Self {
        Reader {
            buf: cbor,
            pos: 0,
            dict: Some(&STATIC),
            max_depth: MAX_DEPTH,
        }
    }

    /// A reader with a chosen dictionary (or none: plain CBOR) and limits.
    pub fn with_dict(cbor: &'a [u8], dict: Option<&'static Dict>, limits: &Limits) -> Self {
        Reader {
            buf: cbor,
            pos: 0,
            dict,
            max_depth: limits.depth(),
        }
    }

    /// Byte offset of the next item.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when all input is consumed.
    pub fn is_at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self.buf.get(self.pos).ok_or(Error::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: u64) -> Result<&'a [u8], Error> {
        let n = usize::try_from(n).map_err(|_| Error::Truncated)?;
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// Reads a head: (major, additional info, argument). AI 31 gives argument 0.
    #[inline]
    fn head(&mut self) -> Result<(u8, u8, u64), Error> {
        let b = self.byte()?;
        let major = b >> 5;
        let ai = b & 0x1f;
        let arg = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes([self.byte()?, self.byte()?])),
            26 => {
                let s = self.take(4)?;
                u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            }
            27 => {
                let s = self.take(8)?;
                u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
            }
            28..=30 => return Err(Error::Reserved),
            _ => {
                if matches!(major, 0 | 1 | 6) {
                    return Err(Error::Malformed);
                }
                0
            }
        };
        Ok((major, ai, arg))
    }

    /// Reads the next item without dictionary interpretation.
    pub fn next_raw(&mut self) -> Result<Item<'a>, Error> {
        let (major, ai, arg) = self.head()?;
        let indef = ai == 31;
        Ok(match major {
            0 => Item::Unsigned(arg),
            1 => Item::Negative(arg),
            2 if indef => Item::BytesChunks,
            2 => Item::Bytes(self.take(arg)?),
            3 if indef => Item::TextChunks,
            3 => {
                let s = self.take(arg)?;
                Item::Text(core::str::from_utf8(s).map_err(|_| Error::InvalidUtf8)?)
            }
            4 => Item::Array(if indef { None } else { Some(arg) }),
            5 => Item::Map(if indef { None } else { Some(arg) }),
            6 => {
                if arg == TAG_NUMBER {
                    let (m, ai2, len) = self.head()?;
                    if m != 3 || ai2 == 31 {
                        return Err(Error::Malformed);
                    }
                    let s = self.take(len)?;
                    match scan_number(s, 0) {
                        Ok((end, _)) if end == s.len() => {}
                        _ => return Err(Error::Malformed),
                    }
                    // INVARIANT: scan_number accepted ASCII only.
                    Item::Number(core::str::from_utf8(s).map_err(|_| Error::Malformed)?)
                } else if (TAG_BASE64..TAG_BASE64 + 4).contains(&arg) {
                    let (m, ai2, len) = self.head()?;
                    if m != 2 || ai2 == 31 {
                        return Err(Error::Malformed);
                    }
                    let k = arg - TAG_BASE64;
                    Item::Base64(Base64Text {
                        bytes: self.take(len)?,
                        url_safe: k & 1 == 1,
                        sigil: k >= 2,
                    })
                } else {
                    Item::Tag(arg)
                }
            }
            _ => match ai {
                20 => Item::Bool(false),
                21 => Item::Bool(true),
                22 => Item::Null,
                23 => Item::Undefined,
                24 => {
                    if arg < 32 {
                        return Err(Error::Malformed);
                    }
                    Item::Simple(arg as u8)
                }
                25 => Item::Float(f16_to_f64(arg as u16)),
                26 => Item::Float(f64::from(f32::from_bits(arg as u32))),
                27 => Item::Float(f64::from_bits(arg)),
                31 => Item::Break,
                _ => Item::Simple(ai),
            },
        })
    }

    fn value_code(&self, simple: u8) -> Option<u64> {
        match simple {
            0..=19 => Some(u64::from(simple)),
            32..=255 => Some(u64::from(simple) - 32 + 20),
            _ => None,
        }
    }

    /// Reads the next item in value position; dictionary value codes become [`Item::Text`].
    pub fn next_value(&mut self) -> Result<Item<'a>, Error> {
        match self.next_raw()? {
            Item::Simple(s) => match (self.dict, self.value_code(s)) {
                (Some(d), Some(code)) => {
                    Ok(Item::Text(d.value_name(code).ok_or(Error::UnknownCode)?))
                }
                _ => Err(Error::UnknownCode),
            },
            other => Ok(other),
        }
    }

    /// Reads the next item in map-key position; dictionary key ids and value codes become
    /// [`Item::Text`]. An unknown id is [`Error::UnknownCode`].
    pub fn next_key(&mut self) -> Result<Item<'a>, Error> {
        let it = self.next_raw()?;
        self.resolve_key(it)
    }

    fn resolve_key(&self, it: Item<'a>) -> Result<Item<'a>, Error> {
        let d = match self.dict {
            Some(d) => d,
            None => return Ok(it),
        };
        let name = match it {
            Item::Unsigned(id) => d.key_name(id),
            Item::Negative(n) => n.checked_add(24).and_then(|id| d.key_name(id)),
            Item::Simple(s) => self.value_code(s).and_then(|c| d.value_name(c)),
            other => return Ok(other),
        };
        name.map(Item::Text).ok_or(Error::UnknownCode)
    }

    /// Skips one complete item (with all nested items).
    pub fn skip(&mut self) -> Result<(), Error> {
        // remaining[i]: items left at level i (u64::MAX = indefinite).
        let mut remaining = [0u64; MAX_DEPTH + 1];
        let mut depth = 0usize;
        remaining[0] = 1;
        loop {
            if remaining[depth] == 0 {
                if depth == 0 {
                    return Ok(());
                }
                depth -= 1;
                continue;
            }
            let it = self.next_raw()?;
            if remaining[depth] != u64::MAX {
                remaining[depth] -= 1;
            }
            let push = match it {
                Item::Break => {
                    if remaining[depth] != u64::MAX || depth == 0 {
                        return Err(Error::Malformed);
                    }
                    remaining[depth] = 0;
                    continue;
                }
                Item::Array(n) => Some(n.unwrap_or(u64::MAX)),
                Item::Map(n) => Some(n.map_or(u64::MAX, |n| n.saturating_mul(2))),
                Item::Tag(_) => {
                    remaining[depth] = remaining[depth].saturating_add(1);
                    None
                }
                Item::TextChunks | Item::BytesChunks => {
                    self.skip_chunks(matches!(it, Item::TextChunks))?;
                    None
                }
                _ => None,
            };
            if let Some(n) = push {
                if depth + 1 > self.max_depth {
                    return Err(Error::TooDeep);
                }
                depth += 1;
                remaining[depth] = n;
            }
        }
    }

    /// Reads the chunks of an indefinite-length string up to its break, calling `f` per chunk.
    fn chunks(
        &mut self,
        text: bool,
        mut f: impl FnMut(&'a [u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        loop {
            let (major, ai, arg) = self.head()?;
            if major == 7 && ai == 31 {
                return Ok(());
            }
            if major != if text { 3 } else { 2 } || ai == 31 {
                return Err(Error::Malformed);
            }
            let s = self.take(arg)?;
            if text && core::str::from_utf8(s).is_err() {
                return Err(Error::InvalidUtf8);
            }
            f(s)?;
        }
    }

    fn skip_chunks(&mut self, text: bool) -> Result<(), Error> {
        self.chunks(text, |_| Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// CBOR -> JSON

/// Transcodes lowband CBOR (static dictionary) into compact JSON; returns the length.
pub fn decode_to_json(cbor: &[u8], out: &mut [u8], limits: &Limits) -> Result<usize, Error> {
    decode_to_json_with(cbor, out, limits, Some(&STATIC))
}

#[derive(Clone, Copy, Default)]
struct DFrame {
    map: bool,
    /// Items (arrays) or pairs (maps) left; `u64::MAX` = indefinite.
    remaining: u64,
    count: u64,
    key_next: bool,
    first: bool,
    checked: bool,
    in_start: usize,
    out_start: usize,
}

static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Writes string content with canonical escaping (no quotes).
#[inline]
fn write_escaped(w: &mut W<'_>, s: &[u8]) -> Result<(), Error> {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        w.extend(&s[start..i])?;
        if e == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            w.extend(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ])?;
        } else {
            w.extend(&[b'\\', e])?;
        }
        start = i + 1;
    }
    w.extend(&s[start..])
}

fn write_str(w: &mut W<'_>, s: &[u8]) -> Result<(), Error> {
    w.push(b'"')?;
    write_escaped(w, s)?;
    w.push(b'"')
}

fn write_u128(w: &mut W<'_>, mut v: u128) -> Result<(), Error> {
    let mut buf = [0u8; 40];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    w.extend(&buf[i..])
}

fn write_u64(w: &mut W<'_>, mut v: u64) -> Result<(), Error> {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    w.extend(&buf[i..])
}

/// Transcodes CBOR into JSON with `dict` (or none: plain CBOR, where integer keys are errors).
pub fn decode_to_json_with(
    cbor: &[u8],
    out: &mut [u8],
    limits: &Limits,
    dict: Option<&'static Dict>,
) -> Result<usize, Error> {
    if cbor.len() > limits.max_input {
        return Err(Error::TooLarge);
    }
    let mut r = Reader::with_dict(cbor, dict, limits);
    let max_depth = limits.depth();
    let mut w = W { out, n: 0 };
    let mut stack = [DFrame::default(); MAX_DEPTH];
    let mut depth = 0usize;
    loop {
        // Close finished definite containers.
        if depth > 0 {
            let f = stack[depth - 1];
            if f.remaining == 0 {
                w.push(if f.map { b'}' } else { b']' })?;
                depth -= 1;
                if value_done(&mut stack, &mut depth, &r)? {
                    return Ok(w.n);
                }
                continue;
            }
        }
        let in_key = depth > 0 && stack[depth - 1].map && stack[depth - 1].key_next;
        let item_pos = r.pos;
        let it = r.next_raw()?;
        if let Item::Break = it {
            let f = if depth > 0 {
                stack[depth - 1]
            } else {
                return Err(Error::Malformed);
            };
            if f.remaining != u64::MAX || (f.map && !f.key_next) {
                return Err(Error::Malformed);
            }
            stack[depth - 1].remaining = 0;
            continue;
        }
        if in_key {
            let f = &mut stack[depth - 1];
            let name: &[u8] = match it {
                Item::Text(s) => {
                    if let Some(d) = dict {
                        if !f.checked
                            && (d.key_id(s.as_bytes()).is_some()
                                || d.value_code(s.as_bytes()).is_some())
                        {
                            // A text key that has a coded alias: re-read this map checking
                            // for duplicates (the text key wins).
                            if f.count != u64::MAX && f.count > 1024 {
                                return Err(Error::TooLarge);
                            }
                            f.checked = true;
                            f.first = true;
                            f.remaining = f.count;
                            r.pos = f.in_start;
                            w.n = f.out_start;
                            continue;
                        }
                    }
                    s.as_bytes()
                }
                Item::TextChunks => {
                    if !f.first {
                        w.push(b',')?;
                    }
                    w.push(b'"')?;
                    r.chunks(true, |c| write_escaped(&mut w, c))?;
                    w.extend(b"\":")?;
                    let f = &mut stack[depth - 1];
                    f.first = false;
                    f.key_next = false;
                    continue;
                }
                Item::Unsigned(_) | Item::Negative(_) | Item::Simple(_) => {
                    if dict.is_none() {
                        return Err(Error::Unrepresentable);
                    }
                    let Item::Text(name) = r.resolve_key(it)? else {
                        return Err(Error::UnknownCode);
                    };
                    if f.checked && map_has_text_key(cbor, f, name.as_bytes(), r.max_depth)? {
                        // Drop this coded entry; the text key's entry stands.
                        r.skip()?;
                        if f.remaining != u64::MAX {
                            f.remaining -= 1;
                        }
                        continue;
                    }
                    name.as_bytes()
                }
                _ => return Err(Error::Unrepresentable),
            };
            let f = &mut stack[depth - 1];
            if !f.first {
                w.push(b',')?;
            }
            f.first = false;
            f.key_next = false;
            write_str(&mut w, name)?;
            w.push(b':')?;
            continue;
        }
        // Value position.
        if depth > 0 {
            let f = &mut stack[depth - 1];
            if !f.map {
                if !f.first {
                    w.push(b',')?;
                }
                f.first = false;
            }
        }
        let _ = item_pos;
        match it {
            Item::Unsigned(v) => write_u64(&mut w, v)?,
            Item::Negative(v) => {
                w.push(b'-')?;
                write_u128(&mut w, u128::from(v) + 1)?;
            }
            Item::Float(v) => {
                if !v.is_finite() {
                    return Err(Error::Unrepresentable);
                }
                #[cfg(feature = "float")]
                w.extend(ryu::Buffer::new().format_finite(v).as_bytes())?;
                #[cfg(not(feature = "float"))]
                return Err(Error::Unrepresentable);
            }
            Item::Bool(b) => w.extend(if b { b"true" } else { b"false" })?,
            Item::Null => w.extend(b"null")?,
            Item::Text(s) => write_str(&mut w, s.as_bytes())?,
            Item::Number(s) => w.extend(s.as_bytes())?,
            Item::Base64(b) => {
                w.push(b'"')?;
                b.write_to(&mut w)?;
                w.push(b'"')?;
            }
            Item::TextChunks => {
                w.push(b'"')?;
                r.chunks(true, |c| write_escaped(&mut w, c))?;
                w.push(b'"')?;
            }
            Item::Simple(s) => {
                let name = match (dict, r.value_code(s)) {
                    (Some(d), Some(code)) => d.value_name(code).ok_or(Error::UnknownCode)?,
                    (Some(_), None) => return Err(Error::Unrepresentable),
                    (None, _) => return Err(Error::Unrepresentable),
                };
                write_str(&mut w, name.as_bytes())?;
            }
            Item::Tag(t @ (2 | 3)) => {
                let Item::Bytes(b) = r.next_raw()? else {
                    return Err(Error::Unrepresentable);
                };
                let first_nz = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                let b = &b[first_nz..];
                if b.len() > 16 {
                    return Err(Error::Unrepresentable);
                }
                let mut v: u128 = 0;
                for &x in b {
                    v = (v << 8) | u128::from(x);
                }
                if t == 3 {
                    w.push(b'-')?;
                    v = v.checked_add(1).ok_or(Error::Unrepresentable)?;
                }
                write_u128(&mut w, v)?;
            }
            Item::Array(n) | Item::Map(n) => {
                let map = matches!(it, Item::Map(_));
                if depth >= max_depth {
                    return Err(Error::TooDeep);
                }
                let out_start = w.n;
                w.push(if map { b'{' } else { b'[' })?;
                let count = n.unwrap_or(u64::MAX);
                stack[depth] = DFrame {
                    map,
                    remaining: count,
                    count,
                    key_next: true,
                    first: true,
                    checked: false,
                    in_start: r.pos,
                    out_start: out_start + 1,
                };
                depth += 1;
                continue;
            }
            Item::Bytes(_) | Item::BytesChunks | Item::Undefined | Item::Tag(_) => {
                return Err(Error::Unrepresentable)
            }
            Item::Break => return Err(Error::Malformed),
        }
        if value_done(&mut stack, &mut depth, &r)? {
            return Ok(w.n);
        }
    }
}

/// Accounts one finished value; returns true when the top-level item is complete.
#[inline]
fn value_done(
    stack: &mut [DFrame; MAX_DEPTH],
    depth: &mut usize,
    r: &Reader<'_>,
) -> Result<bool, Error> {
    if *depth == 0 {
        return if r.is_at_end() {
            Ok(true)
        } else {
            Err(Error::TrailingData)
        };
    }
    let f = &mut stack[*depth - 1];
    if f.map {
        f.key_next = true;
    }
    if f.remaining != u64::MAX {
        f.remaining -= 1;
    }
    Ok(false)
}

/// Does the map whose content starts at `f.in_start` hold the text key `name`?
fn map_has_text_key(cbor: &[u8], f: &DFrame, name: &[u8], max_depth: usize) -> Result<bool, Error> {
    let mut r = Reader {
        buf: cbor,
        pos: f.in_start,
        dict: None,
        max_depth,
    };
    let mut left = f.count;
    while left > 0 {
        let key = r.next_raw()?;
        match key {
            Item::Break if f.count == u64::MAX => return Ok(false),
            Item::Text(s) if s.as_bytes() == name => return Ok(true),
            Item::TextChunks => r.skip_chunks(true)?,
            _ => {}
        }
        r.skip()?;
        if left != u64::MAX {
            left -= 1;
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// alloc conveniences

/// [`encode_json`] into a fresh `Vec`.
#[cfg(feature = "alloc")]
pub fn encode_vec(json: &[u8], limits: &Limits) -> Result<alloc::vec::Vec<u8>, Error> {
    let mut out = alloc::vec![0u8; json.len() * 3 + 16];
    let n = encode_json(json, &mut out, limits)?;
    out.truncate(n);
    Ok(out)
}

/// [`decode_to_json`] into a fresh `Vec`.
#[cfg(feature = "alloc")]
pub fn decode_vec(cbor: &[u8], limits: &Limits) -> Result<alloc::vec::Vec<u8>, Error> {
    let mut cap = cbor.len() * 4 + 64;
    loop {
        let mut out = alloc::vec![0u8; cap];
        match decode_to_json(cbor, &mut out, limits) {
            Ok(n) => {
                out.truncate(n);
                return Ok(out);
            }
            Err(Error::BufferTooSmall) if cap < limits.max_input.saturating_mul(64) => cap *= 4,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8949 Appendix D's decode_half, with floats.
    fn f16_reference(h: u16) -> f64 {
        let exp = i32::from((h >> 10) & 0x1f);
        let mant = f64::from(h & 0x3ff);
        let v = match exp {
            0 => mant * 2f64.powi(-24),
            31 if mant == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            e => (mant + 1024.0) * 2f64.powi(e - 25),
        };
        if h & 0x8000 != 0 {
            -v
        } else {
            v
        }
    }

    #[test]
    fn halves_decode_as_the_rfc_says() {
        for h in 0..=u16::MAX {
            let (a, b) = (f16_to_f64(h), f16_reference(h));
            if b.is_nan() {
                assert!(a.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{h:#06x}: {a} vs {b}");
            }
        }
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0x0001), 5.960_464_477_539_063e-8);
        assert_eq!(f16_to_f64(0xfbff), -65504.0);
    }

    fn enc(j: &str) -> ([u8; 256], usize) {
        let mut out = [0u8; 256];
        let n = encode_json(j.as_bytes(), &mut out, &Limits::DEFAULT).unwrap();
        (out, n)
    }

    fn roundtrip(j: &str) -> bool {
        let (c, n) = enc(j);
        let mut out = [0u8; 512];
        let m = decode_to_json(&c[..n], &mut out, &Limits::DEFAULT).unwrap();
        &out[..m] == j.as_bytes()
    }

    #[test]
    fn message_bytes() {
        let (c, n) = enc(r#"{"msgtype":"m.text","body":"Hello, world!"}"#);
        // map(2), msgtype=28 -> nint 4 (0x24), m.text -> simple 1 (0xe1), body=27 -> 0x23.
        assert_eq!(&c[..4], &[0xa2, 0x24, 0xe1, 0x23]);
        assert_eq!(c[4], 0x6d);
        assert_eq!(n, 5 + 13);
    }

    #[test]
    fn numbers() {
        assert_eq!(&enc("0").0[..1], &[0x00]);
        assert_eq!(&enc("-1").0[..1], &[0x20]);
        assert_eq!(&enc("1.5").0[..3], &[0xf9, 0x3e, 0x00]);
        assert_eq!(&enc("100000.0").0[..5], &[0xfa, 0x47, 0xc3, 0x50, 0x00]);
        assert_eq!(
            &enc("1.1").0[..9],
            &[0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        assert_eq!(&enc("-0").0[..4], &[0xc6, 0x62, b'-', b'0']);
        assert_eq!(
            &enc("18446744073709551615").0[..9],
            &[0x1b, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        assert_eq!(
            &enc("-18446744073709551616").0[..9],
            &[0x3b, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        for j in [
            "-0",
            "1E5",
            "1e400",
            "123456789012345678901234567890",
            "-0.0",
            "5.960464477539063e-8",
            "[1,-2,3.25]",
        ] {
            assert!(roundtrip(j), "{j}");
        }
    }

    #[test]
    fn base64_values_travel_as_bytes() {
        // Send-event response: {"event_id": "$" + 43 url-safe base64 chars}.
        let j = r#"{"event_id":"$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"}"#;
        let (c, n) = enc(j);
        // map(1), key 1, tag 10 ($ + url-safe), bytes(32).
        assert_eq!(&c[..5], &[0xa1, 0x01, 0xca, 0x58, 0x20]);
        assert_eq!(n, 5 + 32);
        assert!(roundtrip(j));
        // Standard alphabet, 2 trailing chars; not base64-looking or non-canonical: text.
        for j in [
            r#"["Yb1SmkXG7xAT0X3qa7kEqGSv6eiM+9GKvp/y5WOi0Lw"]"#,
            r#"["abcdefghijklmnopqrstuvwxyz"]"#,
            r#"["Yb1SmkXG7xAT0X3qa7kEqGSv6eiM+9GKvp/y5WOi0Lx"]"#,
            r#"["Ab1-Cd2+Ef3_Gh4/"]"#,
        ] {
            assert!(roundtrip(j), "{j}");
        }
        assert_eq!(
            enc(r#""Yb1SmkXG7xAT0X3qa7kEqGSv6eiM+9GKvp/y5WOi0Lw""#).0[0],
            0xc7
        );
        assert_eq!(
            enc(r#""Yb1SmkXG7xAT0X3qa7kEqGSv6eiM+9GKvp/y5WOi0Lx""#).0[0],
            0x78
        );
    }

    #[test]
    fn long_container_shifts() {
        let j = "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25]";
        let (c, n) = enc(j);
        assert_eq!(&c[..2], &[0x98, 25]);
        assert_eq!(n, 2 + 23 + 2 * 2);
        assert!(roundtrip(j));
    }

    #[test]
    fn escaped_base64_strings_encode_as_unescaped_ones() {
        let l = Limits::DEFAULT;
        let cases: [&[u8]; 3] = [
            br#""\/jjjj/////jjj185///jjj1844677370955161JJJJJJJJJJJJJJJJJJJJJZ///jjjj/""#,
            br#""$abcDEF012\/abcDEF012\/abcDEF012\/abcDEF012\/""#,
            br#""\u0041bcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZab""#,
        ];
        for json in cases {
            let mut a = [0u8; 256];
            let n = encode_json(json, &mut a, &l).expect("encodes");
            let mut back = [0u8; 512];
            let m = decode_to_json(&a[..n], &mut back, &l).expect("decodes");
            let mut b = [0u8; 256];
            let n2 = encode_json(&back[..m], &mut b, &l).expect("re-encodes");
            assert_eq!(&a[..n], &b[..n2], "{}", core::str::from_utf8(json).unwrap());
            assert!(
                (0xc7..=0xca).contains(&a[0]),
                "base64 form chosen: {:02x?}",
                &a[..4]
            );
        }
    }

    #[test]
    fn canonical_escapes() {
        assert!(roundtrip(
            r#"{"a\"b":"\\\n\u0001\u001f\t\b\f\r","é":"😀\u007f"}"#
                .replace("\\u007f", "\u{7f}")
                .as_str()
        ));
        let (c, n) = enc(r#""\u00e9\ud83d\ude00\/""#);
        assert_eq!(&c[..n], &[0x67, 0xc3, 0xa9, 0xf0, 0x9f, 0x98, 0x80, b'/']);
    }

    #[test]
    fn malformed_json() {
        let mut out = [0u8; 64];
        for j in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "\"\\ud800\"",
            "tru",
            "[1] x",
            "\"\x01\"",
        ] {
            assert!(
                encode_json(j.as_bytes(), &mut out, &Limits::DEFAULT).is_err(),
                "{j:?}"
            );
        }
    }

    #[test]
    fn malformed_cbor() {
        let mut out = [0u8; 64];
        let l = Limits::DEFAULT;
        assert_eq!(decode_to_json(&[0x1c], &mut out, &l), Err(Error::Reserved));
        assert_eq!(decode_to_json(&[0x1f], &mut out, &l), Err(Error::Malformed));
        assert_eq!(decode_to_json(&[0xff], &mut out, &l), Err(Error::Malformed));
        assert_eq!(
            decode_to_json(&[0x82, 0x01], &mut out, &l),
            Err(Error::Truncated)
        );
        assert_eq!(
            decode_to_json(&[0x81, 0xff], &mut out, &l),
            Err(Error::Malformed)
        );
        assert_eq!(
            decode_to_json(&[0xa1, 0x40, 0x01], &mut out, &l),
            Err(Error::Unrepresentable)
        );
        assert_eq!(
            decode_to_json(&[0xf8, 0x18], &mut out, &l),
            Err(Error::Malformed)
        );
        assert_eq!(
            decode_to_json(&[0x01, 0x01], &mut out, &l),
            Err(Error::TrailingData)
        );
        assert_eq!(
            decode_to_json(&[0x62, 0xc3, 0x28], &mut out, &l),
            Err(Error::InvalidUtf8)
        );
        assert_eq!(
            decode_to_json(&[0x7f, 0x41, 0x00, 0xff], &mut out, &l),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn text_key_wins_over_alias() {
        // {"type": "x", 2: "y"} and {2: "y", "type": "x"} -> {"type":"x"}
        let mut out = [0u8; 64];
        let a = [
            0xa2, 0x64, b't', b'y', b'p', b'e', 0x61, b'x', 0x02, 0x61, b'y',
        ];
        let n = decode_to_json(&a, &mut out, &Limits::DEFAULT).unwrap();
        assert_eq!(&out[..n], br#"{"type":"x"}"#);
        let b = [
            0xa2, 0x02, 0x61, b'y', 0x64, b't', b'y', b'p', b'e', 0x61, b'x',
        ];
        let n = decode_to_json(&b, &mut out, &Limits::DEFAULT).unwrap();
        assert_eq!(&out[..n], br#"{"type":"x"}"#);
    }

    #[test]
    fn msc3079_uint_keys_decode() {
        // {28: "m.text"} in MSC3079 form (0x18 0x1c).
        let mut out = [0u8; 64];
        let n = decode_to_json(&[0xa1, 0x18, 0x1c, 0xe1], &mut out, &Limits::DEFAULT).unwrap();
        assert_eq!(&out[..n], br#"{"msgtype":"m.text"}"#);
    }

    #[test]
    fn depth_limit() {
        let mut out = [0u8; 256];
        let l = Limits {
            max_depth: 3,
            max_input: 100,
        };
        assert!(encode_json(b"[[[1]]]", &mut out, &l).is_ok());
        assert_eq!(encode_json(b"[[[[1]]]]", &mut out, &l), Err(Error::TooDeep));
        assert_eq!(
            decode_to_json(&[0x81, 0x81, 0x81, 0x81, 0x01], &mut out, &l),
            Err(Error::TooDeep)
        );
    }
}
