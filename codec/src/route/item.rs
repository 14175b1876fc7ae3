//! Value items of a route target: one text (path parameter, query key or value, literal path)
//! in the shortest of its forms (see the table in the `route` module docs).

use super::{table, Count, Error, Rd, Sink};

/// CBOR `null`: a query key without `=`.
pub(super) const NULL: u8 = 0xf6;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;

const M_UINT: u8 = 0;
const M_NINT: u8 = 1;
const M_PACKED: u8 = 2;
const M_TEXT: u8 = 3;
const M_PCT_RFC: u8 = 4;
const M_PCT_JS: u8 = 5;
const M_KNOWN: u8 = 6;
const M_SIMPLE: u8 = 7;
/// Two-byte simple value head: `0xf8 0x20+i` is "prefix item, then session string i".
const SUFFIX: u8 = 0xf8;
const SUFFIX_BASE: u8 = 0x20;

/// Most session strings (they are simple values 0..=19, one byte each).
pub(super) const MAX_SESSION: usize = 20;

/// Where a text sits, which decides the forms it may take.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Ctx {
    /// Path parameter: integers and booleans as CBOR, or a string form.
    Param,
    /// Query value: as `Param` (a missing value is `null`, handled by the caller).
    Query,
    /// Query key or literal path: string forms only (major 0 means a key number).
    Text,
}

#[derive(Clone, Copy)]
enum Form {
    Uint(u64),
    Nint(u64),
    Bool(bool),
    Known(u64),
    Session(u8),
    Suffix(u8),
    Text,
    Packed(usize),
    Pct(u8, usize),
}

/// Length of a CBOR head with argument `v`.
fn head_len(v: u64) -> usize {
    match v {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

pub(super) fn put_head<S: Sink>(s: &mut S, major: u8, v: u64) -> Result<(), Error> {
    let m = major << 5;
    let be = v.to_be_bytes();
    match head_len(v) {
        1 => s.put(&[m | be[7]]),
        2 => s.put(&[m | 24, be[7]]),
        3 => s.put(&[m | 25, be[6], be[7]]),
        5 => s.put(&[m | 26, be[4], be[5], be[6], be[7]]),
        _ => {
            s.put(&[m | 27])?;
            s.put(&be)
        }
    }
}

/// The canonical decimal integer `t` spells (no sign, no leading zero), if any.
fn as_uint(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || (t.len() > 1 && t[0] == b'0') {
        return None;
    }
    let mut v: u64 = 0;
    for &b in t {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Whether a digit run is carried as a number in a packed text.
fn numeric_run(run: &[u8]) -> bool {
    run.len() <= 19 && (run.len() == 1 || run[0] != b'0')
}

/// Writes the packed form of ASCII `t`.
fn packed_emit<S: Sink>(t: &[u8], s: &mut S) -> Result<(), Error> {
    let mut i = 0;
    while i < t.len() {
        if !t[i].is_ascii_digit() {
            s.put(&t[i..=i])?;
            i += 1;
            continue;
        }
        let end = t[i..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(t.len(), |p| i + p);
        let run = &t[i..end];
        match as_uint(run).filter(|_| numeric_run(run)) {
            Some(v) => {
                let groups = (64 - v.leading_zeros() as usize).div_ceil(7);
                for g in (0..groups.max(1)).rev() {
                    s.put(&[0x80 | ((v >> (7 * g)) & 0x7f) as u8])?;
                }
            }
            None => s.put(run)?,
        }
        i = end;
    }
    Ok(())
}

fn packed_decode<S: Sink>(p: &[u8], s: &mut S) -> Result<(), Error> {
    let mut i = 0;
    while i < p.len() {
        if p[i] < 0x80 {
            s.put(&p[i..=i])?;
            i += 1;
            continue;
        }
        let mut v: u128 = 0;
        let mut groups = 0;
        while let Some(&b) = p.get(i).filter(|b| **b >= 0x80) {
            groups += 1;
            if groups > 10 {
                return Err(Error::NonCanonical);
            }
            v = v << 7 | u128::from(b & 0x7f);
            i += 1;
        }
        put_dec(s, v)?;
    }
    Ok(())
}

fn put_dec<S: Sink>(s: &mut S, mut v: u128) -> Result<(), Error> {
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
    s.put(&buf[i..])
}

/// RFC 3986 §2.3 unreserved: what every percent-encoder leaves alone.
fn keep_rfc(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What ECMAScript `encodeURIComponent` leaves alone (ECMA-262 §19.2.6.5).
fn keep_js(b: u8) -> bool {
    keep_rfc(b) || matches!(b, b'!' | b'*' | b'\'' | b'(' | b')')
}

fn keep(rule: u8, b: u8) -> bool {
    if rule == M_PCT_RFC {
        keep_rfc(b)
    } else {
        keep_js(b)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Walks `t` as the percent-encoding under `rule`; emits the decoded bytes to `s`. `None` when
/// `t` is not exactly that encoding of anything.
fn pct_walk<S: Sink>(t: &[u8], rule: u8, s: &mut S) -> Option<Result<(), Error>> {
    let mut i = 0;
    while i < t.len() {
        let d = if t[i] == b'%' {
            let d = hex_val(*t.get(i + 1)?)? << 4 | hex_val(*t.get(i + 2)?)?;
            if keep(rule, d) {
                return None;
            }
            i += 3;
            d
        } else {
            if !keep(rule, t[i]) {
                return None;
            }
            i += 1;
            t[i - 1]
        };
        if let Err(e) = s.put(&[d]) {
            return Some(Err(e));
        }
    }
    Some(Ok(()))
}

fn pct_encode<S: Sink>(d: &[u8], rule: u8, s: &mut S) -> Result<(), Error> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in d {
        if keep(rule, b) {
            s.put(&[b])?;
        } else {
            s.put(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])?;
        }
    }
    Ok(())
}

/// The shortest form of `t` and its size (ties: the earlier form in the order of the module
/// docs).
fn choose(t: &[u8], ctx: Ctx, session: &[&str]) -> (usize, Form) {
    let mut best = (usize::MAX, Form::Text);
    let mut consider = |size: usize, f: Form| {
        if size < best.0 {
            best = (size, f);
        }
    };
    if ctx != Ctx::Text {
        if let Some(v) = as_uint(t) {
            consider(head_len(v), Form::Uint(v));
        }
        if let Some(v) = t.strip_prefix(b"-").and_then(as_uint).filter(|v| *v >= 1) {
            consider(head_len(v - 1), Form::Nint(v - 1));
        }
        match t {
            b"true" => consider(1, Form::Bool(true)),
            b"false" => consider(1, Form::Bool(false)),
            _ => {}
        }
    }
    if let Some(k) = table::STRINGS.iter().position(|k| k.as_bytes() == t) {
        consider(head_len(k as u64), Form::Known(k as u64));
    }
    for (i, x) in session.iter().enumerate().take(MAX_SESSION) {
        if !x.is_empty() && x.as_bytes() == t {
            // INVARIANT: i < MAX_SESSION = 20.
            consider(1, Form::Session(i as u8));
        }
    }
    consider(head_len(t.len() as u64) + t.len(), Form::Text);
    if t.is_ascii() && t.iter().any(u8::is_ascii_digit) {
        let mut c = Count(0);
        // Count never fails.
        if packed_emit(t, &mut c).is_ok() {
            consider(head_len(c.0 as u64) + c.0, Form::Packed(c.0));
        }
    }
    if t.contains(&b'%') {
        for rule in [M_PCT_RFC, M_PCT_JS] {
            let mut c = Count(0);
            if let Some(Ok(())) = pct_walk(t, rule, &mut c) {
                consider(head_len(c.0 as u64) + c.0, Form::Pct(rule, c.0));
            }
        }
    }
    for (i, x) in session.iter().enumerate().take(MAX_SESSION) {
        if let Some(prefix) = t
            .strip_suffix(x.as_bytes())
            .filter(|p| !x.is_empty() && !p.is_empty())
        {
            // INVARIANT: i < MAX_SESSION = 20.
            consider(2 + choose(prefix, Ctx::Text, &[]).0, Form::Suffix(i as u8));
        }
    }
    best
}

/// Writes text `t` as an item in its shortest form for `ctx`.
pub(super) fn put_value<S: Sink>(
    s: &mut S,
    t: &[u8],
    ctx: Ctx,
    session: &[&str],
) -> Result<(), Error> {
    match choose(t, ctx, session).1 {
        Form::Uint(v) => put_head(s, M_UINT, v),
        Form::Nint(v) => put_head(s, M_NINT, v),
        Form::Bool(b) => s.put(&[if b { TRUE } else { FALSE }]),
        Form::Known(k) => put_head(s, M_KNOWN, k),
        Form::Session(i) => s.put(&[M_SIMPLE << 5 | i]),
        Form::Suffix(i) => {
            s.put(&[SUFFIX, SUFFIX_BASE + i])?;
            let x = session
                .get(usize::from(i))
                .map_or(&b""[..], |x| x.as_bytes());
            put_value(s, &t[..t.len() - x.len()], Ctx::Text, &[])
        }
        Form::Text => {
            put_head(s, M_TEXT, t.len() as u64)?;
            s.put(t)
        }
        Form::Packed(n) => {
            put_head(s, M_PACKED, n as u64)?;
            packed_emit(t, s)
        }
        Form::Pct(rule, n) => {
            put_head(s, rule, n as u64)?;
            pct_walk(t, rule, s).unwrap_or(Err(Error::BadText))
        }
    }
}

/// Reads one item and writes its text to `s`.
pub(super) fn get_value<S: Sink>(
    r: &mut Rd<'_>,
    s: &mut S,
    ctx: Ctx,
    session: &[&str],
) -> Result<(), Error> {
    let scalars = ctx != Ctx::Text;
    let session = &session[..session.len().min(MAX_SESSION)];
    if r.peek() == Some(SUFFIX) {
        r.i += 1;
        let i = r.byte()?.checked_sub(SUFFIX_BASE).ok_or(Error::BadHeader)?;
        let x = session.get(usize::from(i)).ok_or(Error::BadHeader)?;
        get_value(r, s, Ctx::Text, &[])?;
        return s.put(x.as_bytes());
    }
    match r.head()? {
        (M_UINT, v) if scalars => put_dec(s, u128::from(v)),
        (M_NINT, v) if scalars => {
            s.put(b"-")?;
            put_dec(s, u128::from(v) + 1)
        }
        (M_PACKED, n) => packed_decode(r.take(n)?, s),
        (M_TEXT, n) => {
            let t = r.take(n)?;
            core::str::from_utf8(t).map_err(|_| Error::BadText)?;
            s.put(t)
        }
        (rule @ (M_PCT_RFC | M_PCT_JS), n) => pct_encode(r.take(n)?, rule, s),
        (M_KNOWN, k) => {
            let k = usize::try_from(k).map_err(|_| Error::BadHeader)?;
            s.put(table::STRINGS.get(k).ok_or(Error::BadHeader)?.as_bytes())
        }
        (M_SIMPLE, i @ 0..=19) => {
            let i = usize::try_from(i).map_err(|_| Error::BadHeader)?;
            s.put(session.get(i).ok_or(Error::BadHeader)?.as_bytes())
        }
        (M_SIMPLE, 20) if scalars => s.put(b"false"),
        (M_SIMPLE, 21) if scalars => s.put(b"true"),
        _ => Err(Error::BadHeader),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Buf;
    use super::*;

    fn enc(t: &str, ctx: Ctx) -> ([u8; 64], usize) {
        let mut out = [0u8; 64];
        let mut w = Buf::new(&mut out);
        put_value(&mut w, t.as_bytes(), ctx, &[]).unwrap();
        let n = w.n;
        (out, n)
    }

    #[test]
    fn integers_are_cbor_ints() {
        let (b, n) = enc("30000", Ctx::Query);
        assert_eq!(&b[..n], &[0x19, 0x75, 0x30]);
        let (b, n) = enc("5", Ctx::Query);
        assert_eq!(&b[..n], &[0x05]);
        let (b, n) = enc("-5", Ctx::Query);
        assert_eq!(&b[..n], &[0x24]);
        // Leading zero: not an integer, text.
        let (b, n) = enc("05", Ctx::Query);
        assert_eq!(&b[..n], &[0x62, b'0', b'5']);
        // In key position integers are text.
        let (b, n) = enc("5", Ctx::Text);
        assert_eq!(&b[..n], &[0x61, b'5']);
    }

    #[test]
    fn booleans_and_known_strings() {
        assert_eq!(&enc("true", Ctx::Query).0[..1], &[0xf5]);
        assert_eq!(&enc("false", Ctx::Param).0[..1], &[0xf4]);
        let (b, n) = enc("m.room.message", Ctx::Param);
        assert_eq!(&b[..n], &[0xc0]);
    }

    #[test]
    fn packed_digit_runs() {
        // s 72594 _ 4483 _ 1934: 72594 = 0b100_0110111_0010010 -> 0x84 0xb7 0x92.
        let (b, n) = enc("s72594_4483_1934", Ctx::Query);
        assert_eq!(
            &b[..n],
            &[
                0x4a,
                b's',
                0x84,
                0xb7,
                0x92,
                b'_',
                0xa3,
                0x83,
                b'_',
                0x8f,
                0x0e | 0x80
            ]
        );
    }

    #[test]
    fn percent_decoded_forms() {
        // RFC 3986 form: '!' and ':' escaped.
        let (b, n) = enc("%21room%3Aexample.org", Ctx::Param);
        assert_eq!(b[0], 0x80 | 17);
        assert_eq!(&b[1..n], b"!room:example.org");
        // encodeURIComponent form: '!' kept, ':' escaped.
        let (b, n) = enc("!room%3Aexample.org", Ctx::Param);
        assert_eq!(b[0], 0xa0 | 17);
        assert_eq!(&b[1..n], b"!room:example.org");
        // Lowercase hex is neither: kept as text.
        let (b, _) = enc("%3a", Ctx::Param);
        assert_eq!(b[0], 0x63);
    }
}

#[cfg(test)]
mod session_tests {
    use super::super::Buf;
    use super::*;

    #[test]
    fn session_strings() {
        let session = ["example.org", "!abc:example.org"];
        let mut out = [0u8; 32];
        let mut w = Buf::new(&mut out);
        put_value(&mut w, b"!abc:example.org", Ctx::Param, &session).unwrap();
        put_value(&mut w, b"@alice:example.org", Ctx::Param, &session).unwrap();
        let n = w.n;
        assert_eq!(
            &out[..n],
            &[0xe1, 0xf8, 0x20, 0x67, b'@', b'a', b'l', b'i', b'c', b'e', b':']
        );
    }
}
