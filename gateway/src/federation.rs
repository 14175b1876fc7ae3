//! Federation (the server-server API) through lowband: TLS at the tunnel, the `X-Matrix`
//! request signature on the link, and where `serve` may send a federation request.
//!
//! A homeserver reaches another one at its advertised address over TLS; `lowband tunnel
//! --listen-https` sits there with the destination's certificate and carries each request over
//! the link to `lowband serve`, which hands it to its homeserver's federation listener.
//! <https://spec.matrix.org/v1.11/server-server-api/#request-authentication>
//!
//! - **Signature.** `Authorization: X-Matrix origin=..,destination=..,key=..,sig=..` must reach
//!   the homeserver byte for byte (it signs method, URI, origin, destination and body). It is
//!   not an access token: it travels in its own option, [`crate::wire::opt::XMATRIX`], in a
//!   compact form ([`xmatrix_encode`]: the signature as 64 raw bytes) that is used only when
//!   it renders back to the identical text; otherwise the text goes as is.
//! - **Bodies.** JSON bodies are packed like client-server ones; the receiving homeserver checks
//!   the signature over the canonical JSON of the body, and the codec keeps values (and
//!   canonical-JSON bytes) intact, so PDUs' `hashes` and `signatures` stay valid.
//! - **Not an open proxy.** `serve` sends federation requests to its configured homeserver
//!   (`--federation-backend`) and, only when `--federation-ca` is given, to the homeserver named
//!   as `destination` in the signed header, found by server discovery ([`crate::discovery`]:
//!   IP literal, explicit port, `.well-known` delegation, SRV, port 8448, as
//!   <https://spec.matrix.org/v1.16/server-server-api/#resolving-server-names> says), over TLS
//!   checked against `--federation-ca`, with the `Host` header discovery gives. Nothing else
//!   is reachable: a request names no URL or address, only the destination's server name.
use alloc::sync::Arc;
use core::time::Duration;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use alloc::collections::BTreeMap;

use lowband_codec::coap::{Opt, Options};

use crate::discovery::{self, Destination, Discovery, Host, NetLookup};
use crate::wire::{self, HttpRequest, HttpResponse, WireError};

/// Longest a federation request may take at the homeserver.
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether a request path belongs to the server-server API (federation or key API).
pub fn is_federation_path(path_and_query: &str) -> bool {
    path_and_query.starts_with("/_matrix/federation/")
        || path_and_query.starts_with("/_matrix/key/")
}

/// The `Authorization` header value if it is an `X-Matrix` signature.
pub fn xmatrix_of(authorization: Option<&str>) -> Option<&str> {
    authorization.filter(|a| a.starts_with("X-Matrix "))
}

const XM_PREFIX: &str = "X-Matrix ";
/// Names with a one-number form in the compact encoding (index + 1 in the flag byte).
const XM_NAMES: [&str; 4] = ["origin", "destination", "key", "sig"];
const FLAG_QUOTED: u8 = 0x10;
const FLAG_B64: u8 = 0x20;
/// First byte of the option value: the header text follows.
const XM_RAW: u8 = 0;
/// First byte: compact parameters follow.
const XM_COMPACT: u8 = 1;

/// One `name=value` parameter of an `X-Matrix` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Param<'a> {
    name: &'a str,
    value: &'a str,
    quoted: bool,
}

/// Splits `X-Matrix a=b,c="d"` into parameters (no escapes inside quotes; `None` otherwise).
fn xmatrix_params(header: &str) -> Option<Vec<Param<'_>>> {
    let mut rest = header.strip_prefix(XM_PREFIX)?;
    let mut out = Vec::new();
    loop {
        let (name, after) = rest.split_once('=')?;
        let (value, quoted, after) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], true, &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], false, &after[end..])
        };
        if value.contains('\\') {
            return None;
        }
        out.push(Param {
            name,
            value,
            quoted,
        });
        if after.is_empty() {
            return Some(out);
        }
        rest = after.strip_prefix(',')?;
    }
}

/// The value of parameter `name` (e.g. `destination`) of an `X-Matrix` header.
pub fn xmatrix_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    xmatrix_params(header)?
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.value)
}

fn render(params: &[Param<'_>]) -> String {
    let mut s = String::from(XM_PREFIX);
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(p.name);
        s.push('=');
        if p.quoted {
            s.push('"');
            s.push_str(p.value);
            s.push('"');
        } else {
            s.push_str(p.value);
        }
    }
    s
}

/// Flag: the value is an alias number (big-endian, minimal bytes).
const FLAG_ALIAS: u8 = 0x40;

fn uint_bytes(n: u32) -> Vec<u8> {
    let b = n.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

fn compact(header: &str, al: &mut Aliaser<'_>) -> Option<Vec<u8>> {
    let params = xmatrix_params(header)?;
    if render(&params) != header {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = vec![XM_COMPACT];
    for p in &params {
        let mut flag = match XM_NAMES.iter().position(|n| *n == p.name) {
            // INVARIANT: fewer than 15 names.
            Some(i) => u8::try_from(i + 1).ok()?,
            None => 0,
        };
        if p.quoted {
            flag |= FLAG_QUOTED;
        }
        let v = if let Some(n) = al.alias(p.value) {
            flag |= FLAG_ALIAS;
            uint_bytes(n)
        } else {
            let raw = b64
                .decode(p.value)
                .ok()
                .filter(|r| !r.is_empty() && b64.encode(r) == p.value);
            if raw.is_some() {
                flag |= FLAG_B64;
            }
            raw.unwrap_or_else(|| p.value.as_bytes().to_vec())
        };
        out.push(flag);
        if flag & 0x0f == 0 {
            out.push(u8::try_from(p.name.len()).ok()?);
            out.extend_from_slice(p.name.as_bytes());
        }
        out.push(u8::try_from(v.len()).ok()?);
        out.extend_from_slice(&v);
    }
    Some(out)
}

/// The link form of an `X-Matrix` header without aliases: compact when that renders back
/// identically, else `[0] ++ text`.
pub fn xmatrix_encode(header: &str) -> Vec<u8> {
    let table = AliasTable::default();
    xmatrix_encode_with(header, &mut Aliaser::none(&table))
}

fn xmatrix_encode_with(header: &str, al: &mut Aliaser<'_>) -> Vec<u8> {
    let mark = al.mark();
    compact(header, al).unwrap_or_else(|| {
        al.rollback(mark);
        let mut v = vec![XM_RAW];
        v.extend_from_slice(header.as_bytes());
        v
    })
}

fn take<'a>(v: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    let bad = WireError::BadOption(wire::opt::XMATRIX);
    if v.len() < n {
        return Err(bad);
    }
    let (a, b) = v.split_at(n);
    *v = b;
    Ok(a)
}

fn take_str<'a>(v: &mut &'a [u8]) -> Result<&'a str, WireError> {
    let n = usize::from(*take(v, 1)?.first().unwrap_or(&0));
    core::str::from_utf8(take(v, n)?).map_err(|_| WireError::BadOption(wire::opt::XMATRIX))
}

/// Decodes [`xmatrix_encode`]'s output (no aliases) back to the header text.
///
/// # Errors
/// [`WireError::BadOption`] for a truncated or malformed value or an alias.
pub fn xmatrix_decode(v: &[u8]) -> Result<String, WireError> {
    let mut reg = AliasRegistry::default();
    xmatrix_decode_with(v, &mut Restorer::new(&mut reg, None)).map_err(|e| match e {
        RestoreError::Wire(w) => w,
        RestoreError::Unknown => WireError::BadOption(wire::opt::XMATRIX),
    })
}

fn xmatrix_decode_with(mut v: &[u8], r: &mut Restorer<'_>) -> Result<String, RestoreError> {
    let bad = WireError::BadOption(wire::opt::XMATRIX);
    match *take(&mut v, 1)? {
        [XM_RAW] => core::str::from_utf8(v)
            .map(str::to_owned)
            .map_err(|_| bad.into()),
        [XM_COMPACT] => {
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
            let mut vals: Vec<(String, String, bool)> = Vec::new();
            while !v.is_empty() {
                let flag = take(&mut v, 1)?[0];
                let name = match flag & 0x0f {
                    0 => take_str(&mut v)?.to_owned(),
                    i => (*XM_NAMES.get(usize::from(i) - 1).ok_or(bad.clone())?).to_owned(),
                };
                let value = if flag & FLAG_ALIAS != 0 {
                    let n = usize::from(take(&mut v, 1)?[0]);
                    let b = take(&mut v, n)?;
                    if b.len() > 4 {
                        return Err(bad.into());
                    }
                    let n = b.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x));
                    r.lookup(n)?
                } else if flag & FLAG_B64 != 0 {
                    let n = usize::from(take(&mut v, 1)?[0]);
                    b64.encode(take(&mut v, n)?)
                } else {
                    let s = take_str(&mut v)?.to_owned();
                    r.full(&s);
                    s
                };
                vals.push((name, value, flag & FLAG_QUOTED != 0));
            }
            let params: Vec<Param<'_>> = vals
                .iter()
                .map(|(n, v, q)| Param {
                    name: n,
                    value: v,
                    quoted: *q,
                })
                .collect();
            Ok(render(&params))
        }
        _ => Err(bad.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Session aliases for federation requests.
//
// Federation requests repeat long strings: the X-Matrix origin, destination and key, a room's
// auth events (create, power levels, the sender's membership), the room id, the sender. The
// tunnel numbers them per session and, once `serve` has seen a number defined, sends the
// number instead:
//
// - A request whose body or X-Matrix header went through the aliaser carries
//   [`wire::opt::FED_ALIAS`] = `(d << 1) | b`: `b` set when the JSON body is rewritten; `d` 0
//   (no definitions) or `base + 1`. With `base`, every *aliasable* string sent in full (first
//   the X-Matrix values in order, then, with `b`, the body's string values in document order)
//   defines the next number from `base`.
// - In the JSON body a string value starting with U+0000 is a marker: U+0000 then digits is an
//   alias; U+0000 then anything else is the rest, verbatim (an original string that started
//   with U+0000). In the X-Matrix option a value with [`FLAG_ALIAS`] is an alias.
// - The tunnel uses a number only after a response to the request that defined it. `serve`
//   answers 4.12 with an empty FED_ALIAS option for a number it does not know (restarted,
//   evicted); the tunnel then forgets all numbers and sends the request again in full.
// ---------------------------------------------------------------------------------------------

/// Longest string worth an alias; shortest.
const ALIAS_MAX: usize = 255;
const ALIAS_MIN: usize = 8;
/// Numbers the tunnel keeps (then starts over) and `serve` keeps per peer (then evicts the
/// oldest).
const TABLE_CAP: usize = 1024;
const REGISTRY_CAP: usize = 2048;

/// Whether a string value may get an alias: a Matrix identifier or server name.
fn aliasable(s: &str) -> bool {
    (ALIAS_MIN..=ALIAS_MAX).contains(&s.len())
        && !s.starts_with('\0')
        && (s.starts_with(['$', '!', '@', '#']) || s.contains(':'))
}

/// The tunnel's per-session alias numbers.
#[derive(Debug, Default)]
pub struct AliasTable {
    /// Numbers `serve` has acknowledged.
    acked: BTreeMap<String, u32>,
    /// Numbers defined by requests not answered yet.
    pending: BTreeMap<u32, String>,
    next: u32,
}

/// What a federation request adds on the link (see [`AliasTable::encode`]).
#[derive(Debug, Clone, Default)]
pub struct FedLink {
    /// The [`wire::opt::XMATRIX`] value.
    pub xmatrix: Option<Vec<u8>>,
    /// The [`wire::opt::FED_ALIAS`] value (`Some(0)`: present and empty).
    pub alias: Option<u32>,
    /// Numbers this request defines.
    pub defs: Vec<u32>,
}

impl FedLink {
    /// The options to add to the request's last (or only) message.
    pub fn options(&self) -> Vec<Opt<'_>> {
        let mut v = Vec::new();
        if let Some(a) = self.alias {
            v.push(Opt::uint(wire::opt::FED_ALIAS, a));
        }
        if let Some(x) = &self.xmatrix {
            v.push(Opt::bytes(wire::opt::XMATRIX, x));
        }
        v
    }
}

/// Chooses aliases for one request.
#[derive(Debug)]
struct Aliaser<'a> {
    table: &'a AliasTable,
    /// `None`: use no aliases and define none.
    next: Option<u32>,
    defs: Vec<(u32, String)>,
}

impl<'a> Aliaser<'a> {
    fn new(table: &'a AliasTable) -> Self {
        Aliaser {
            table,
            next: Some(table.next),
            defs: Vec::new(),
        }
    }

    fn none(table: &'a AliasTable) -> Self {
        Aliaser {
            table,
            next: None,
            defs: Vec::new(),
        }
    }

    /// The alias to send for `s`, or `None` (sent in full, defined if aliasable).
    fn alias(&mut self, s: &str) -> Option<u32> {
        let next = self.next.as_mut()?;
        if !aliasable(s) {
            return None;
        }
        if let Some(&n) = self.table.acked.get(s) {
            return Some(n);
        }
        self.defs.push((*next, s.to_owned()));
        *next = next.wrapping_add(1);
        None
    }

    fn mark(&self) -> usize {
        self.defs.len()
    }

    fn rollback(&mut self, mark: usize) {
        if let (Some(next), Some(first)) = (self.next.as_mut(), self.defs.get(mark)) {
            *next = first.0;
        }
        self.defs.truncate(mark);
    }

    /// Rewrites string values (document order) as aliases or escapes.
    fn json(&mut self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) => {
                if let Some(n) = self.alias(s) {
                    *s = format!("\0{n}");
                } else if s.starts_with('\0') {
                    s.insert(0, '\0');
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.json(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.json(x)),
            _ => {}
        }
    }
}

impl AliasTable {
    /// Maps a federation request for the link: aliases in its X-Matrix `header` and JSON body.
    /// Returns the request to encode (body rewritten) and the extra options.
    pub fn encode(&mut self, req: &HttpRequest, header: Option<&str>) -> (HttpRequest, FedLink) {
        if self.acked.len() >= TABLE_CAP {
            self.reset();
        }
        if self.pending.len() >= TABLE_CAP {
            self.pending.clear();
        }
        let mut al = Aliaser::new(self);
        let xmatrix = header.map(|h| xmatrix_encode_with(h, &mut al));
        let mut out = req.clone();
        let json = req.content_type.as_deref().is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|b| b.trim().eq_ignore_ascii_case("application/json"))
        });
        let mut body = false;
        if json && !req.body.is_empty() {
            if let Ok(orig) = serde_json::from_slice::<serde_json::Value>(&req.body) {
                let mark = al.mark();
                let mut v = orig.clone();
                al.json(&mut v);
                let changed = v != orig;
                let ok = (changed || al.defs.len() > mark) && {
                    // Check the way back before relying on it.
                    let mut known: BTreeMap<u32, String> =
                        self.acked.iter().map(|(s, n)| (*n, s.clone())).collect();
                    known.extend(al.defs.iter().cloned());
                    let mut back = v.clone();
                    restore_json(&mut back, &mut |n| known.get(&n).cloned()).is_ok() && back == orig
                };
                match (ok, changed, serde_json::to_vec(&v)) {
                    (true, false, _) => body = true,
                    (true, true, Ok(b)) => {
                        out.body = b;
                        body = true;
                    }
                    _ => al.rollback(mark),
                }
            }
        }
        let defs = core::mem::take(&mut al.defs);
        let base = defs.first().map_or(0, |(n, _)| n.wrapping_add(1));
        let alias = Some((base << 1) | u32::from(body));
        if let Some((n, _)) = defs.last() {
            self.next = n.wrapping_add(1);
        }
        for (n, s) in &defs {
            self.pending.insert(*n, s.clone());
        }
        (
            out,
            FedLink {
                xmatrix,
                alias,
                defs: defs.into_iter().map(|(n, _)| n).collect(),
            },
        )
    }

    /// `serve` answered the request that defined `defs`: they may be used.
    pub fn acknowledge(&mut self, defs: &[u32]) {
        for n in defs {
            if let Some(s) = self.pending.remove(n) {
                self.acked.entry(s).or_insert(*n);
            }
        }
    }

    /// `serve` lost the numbers: forget them all (numbering goes on).
    pub fn reset(&mut self) {
        self.acked.clear();
        self.pending.clear();
    }
}

/// A federation request in flight at the tunnel: what it needs to be sent again in full.
#[derive(Debug)]
pub struct FedOp {
    /// The request as the homeserver sent it.
    pub orig: HttpRequest,
    /// Its `X-Matrix` header.
    pub header: Option<String>,
    /// The link extras of the current attempt.
    pub link: FedLink,
    /// Sent again once after `serve` lost the aliases.
    pub retried: bool,
}

// ---------------------------------------------------------------------------------------------
// Event ids in transaction answers by reference.
//
// `PUT /_matrix/federation/v1/send/{txnId}` is answered with `{"pdus": {"<event id>": {..}}}`:
// one 44-character id per PDU the tunnel just sent. From room version 3 on, an event id is the
// reference hash of the PDU, which both ends can compute from the request body
// (<https://spec.matrix.org/v1.11/server-server-api/#calculating-the-reference-hash-for-an-event>).
// `serve` replaces a key equal to the candidate id of PDU `i` under redaction rules `r` ('a':
// v11, 'b': v1..v10) by U+0000 `i` `r`, and escapes an original key starting with U+0000 by
// another U+0000. The candidates are only guesses: a key that matches none goes as is.
// ---------------------------------------------------------------------------------------------

const TXN_PREFIX: &str = "/_matrix/federation/v1/send/";
/// Redaction rule sets tried, in marker order.
const RULES: [char; 2] = ['a', 'b'];

/// Whether an exchange is a transaction whose answer goes by reference.
fn is_transaction(req: &HttpRequest) -> bool {
    req.method == "PUT" && req.path_and_query.starts_with(TXN_PREFIX)
}

/// Content keys kept by redaction for an event type (`v11`: room version 11 rules).
fn kept_content(ty: &str, v11: bool) -> Option<&'static [&'static str]> {
    Some(match (ty, v11) {
        ("m.room.member", _) => &["membership", "join_authorised_via_users_server"],
        ("m.room.create", true) => return None,
        ("m.room.create", false) => &["creator"],
        ("m.room.join_rules", _) => &["join_rule", "allow"],
        ("m.room.power_levels", true) => &[
            "ban",
            "events",
            "events_default",
            "invite",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ],
        ("m.room.power_levels", false) => &[
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ],
        ("m.room.history_visibility", _) => &["history_visibility"],
        ("m.room.redaction", true) => &["redacts"],
        _ => &[],
    })
}

/// Writes the canonical JSON of `v` (keys sorted, compact).
/// <https://spec.matrix.org/v1.11/appendices/#canonical-json>
fn canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = o.get(k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The event id a PDU would have under one set of redaction rules (room versions 3+).
fn candidate_id(pdu: &serde_json::Value, v11: bool) -> Option<String> {
    use sha2::Digest as _;
    let o = pdu.as_object()?;
    let mut keep: Vec<&str> = vec![
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    ];
    if !v11 {
        keep.extend(["origin", "membership", "prev_state"]);
    }
    let mut red = serde_json::Map::new();
    for (k, x) in o {
        if keep.contains(&k.as_str()) {
            red.insert(k.clone(), x.clone());
        }
    }
    let ty = o.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if let Some(c) = red.get_mut("content") {
        if let (Some(kept), Some(co)) = (kept_content(ty, v11), c.as_object_mut()) {
            co.retain(|k, _| kept.contains(&k.as_str()));
        }
    }
    let mut text = String::new();
    canonical(&serde_json::Value::Object(red), &mut text);
    let hash = sha2::Sha256::digest(text.as_bytes());
    Some(format!(
        "${}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
    ))
}

/// Candidate ids of a transaction's PDUs: `[pdu][rule]`.
fn candidates(req: &HttpRequest) -> Vec<[Option<String>; 2]> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
        return Vec::new();
    };
    let Some(pdus) = v.get("pdus").and_then(|p| p.as_array()) else {
        return Vec::new();
    };
    pdus.iter()
        .map(|p| [candidate_id(p, true), candidate_id(p, false)])
        .collect()
}

/// `serve`: the answer to `req` with event ids by reference (unchanged if not a transaction).
pub fn shrink_response(req: &HttpRequest, mut resp: HttpResponse) -> HttpResponse {
    if !is_transaction(req) || resp.status != 200 {
        return resp;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return resp;
    };
    let Some(pdus) = v.get_mut("pdus").and_then(|p| p.as_object_mut()) else {
        return resp;
    };
    let cands = candidates(req);
    let old = core::mem::take(pdus);
    for (k, x) in old {
        let hit = cands.iter().enumerate().find_map(|(i, c)| {
            c.iter()
                .zip(RULES)
                .find(|(id, _)| id.as_deref() == Some(k.as_str()))
                .map(|(_, r)| format!("\0{i}{r}"))
        });
        let key = match hit {
            Some(m) => m,
            None if k.starts_with('\0') => format!("\0{k}"),
            None => k,
        };
        pdus.insert(key, x);
    }
    if let Ok(b) = serde_json::to_vec(&v) {
        resp.body = b;
    }
    resp
}

/// The tunnel: undoes [`shrink_response`] given the request as the homeserver sent it.
pub fn expand_response(req: &HttpRequest, mut resp: HttpResponse) -> HttpResponse {
    if !is_transaction(req) || resp.status != 200 {
        return resp;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return resp;
    };
    let Some(pdus) = v.get_mut("pdus").and_then(|p| p.as_object_mut()) else {
        return resp;
    };
    if !pdus.keys().any(|k| k.starts_with('\0')) {
        return resp;
    }
    let cands = candidates(req);
    let old = core::mem::take(pdus);
    for (k, x) in old {
        let key = match k.strip_prefix('\0') {
            None => k,
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                // The rule is the last character (a peer may send any, even a multi-byte one).
                let cut = rest.char_indices().last().map_or(0, |(i, _)| i);
                let (num, rule) = rest.split_at(cut);
                let id = num.parse::<usize>().ok().and_then(|i| {
                    let r = RULES.iter().position(|r| rule.starts_with(*r))?;
                    cands.get(i)?.get(r)?.clone()
                });
                match id {
                    Some(id) => id,
                    None => {
                        return HttpResponse::matrix_error(
                            502,
                            "M_UNKNOWN",
                            "lowband: transaction answer does not match its request",
                        )
                    }
                }
            }
            Some(rest) => rest.to_owned(),
        };
        pdus.insert(key, x);
    }
    if let Ok(b) = serde_json::to_vec(&v) {
        resp.body = b;
    }
    resp
}

/// Why a federation request could not be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// Malformed.
    Wire(WireError),
    /// An alias number `serve` does not know: answer 4.12 with an empty FED_ALIAS option.
    Unknown,
}

impl From<WireError> for RestoreError {
    fn from(e: WireError) -> Self {
        RestoreError::Wire(e)
    }
}

/// `serve`'s per-peer alias numbers.
#[derive(Debug, Default)]
pub struct AliasRegistry {
    map: BTreeMap<u32, String>,
}

#[derive(Debug)]
struct Restorer<'a> {
    reg: &'a mut AliasRegistry,
    next: Option<u32>,
}

impl<'a> Restorer<'a> {
    fn new(reg: &'a mut AliasRegistry, base: Option<u32>) -> Self {
        Restorer { reg, next: base }
    }

    fn full(&mut self, s: &str) {
        if let (Some(n), true) = (self.next.as_mut(), aliasable(s)) {
            self.reg.map.insert(*n, s.to_owned());
            *n = n.wrapping_add(1);
            while self.reg.map.len() > REGISTRY_CAP {
                self.reg.map.pop_first();
            }
        }
    }

    fn lookup(&self, n: u32) -> Result<String, RestoreError> {
        self.reg.map.get(&n).cloned().ok_or(RestoreError::Unknown)
    }
}

/// Restores markers in `v` (document order); `full` sees each string sent in full, `lookup`
/// resolves a number.
fn restore_json(
    v: &mut serde_json::Value,
    lookup: &mut dyn FnMut(u32) -> Option<String>,
) -> Result<(), RestoreError> {
    let mut noop = |_: &str| {};
    restore_json_with(v, lookup, &mut noop)
}

fn restore_json_with(
    v: &mut serde_json::Value,
    lookup: &mut dyn FnMut(u32) -> Option<String>,
    full: &mut dyn FnMut(&str),
) -> Result<(), RestoreError> {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix('\0') {
                if rest.starts_with(|c: char| c.is_ascii_digit()) {
                    let n: u32 = rest
                        .parse()
                        .map_err(|_| WireError::BadOption(wire::opt::FED_ALIAS))?;
                    *s = lookup(n).ok_or(RestoreError::Unknown)?;
                } else {
                    *s = rest.to_owned();
                }
            } else {
                full(s);
            }
        }
        Value::Array(a) => {
            for x in a {
                restore_json_with(x, lookup, full)?;
            }
        }
        Value::Object(o) => {
            for x in o.values_mut() {
                restore_json_with(x, lookup, full)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `serve`: undoes [`AliasTable::encode`] on a decoded request (body in place); returns the
/// X-Matrix header.
///
/// # Errors
/// [`RestoreError::Unknown`] for an alias not (or no longer) known; else malformed input.
pub fn restore(
    reg: &mut AliasRegistry,
    options: &Options<'_>,
    req: &mut HttpRequest,
) -> Result<Option<String>, RestoreError> {
    let alias = options.first(wire::opt::FED_ALIAS).map(|o| o.as_uint());
    let (base, body) = match alias {
        None => (None, false),
        Some(None) => return Err(WireError::BadOption(wire::opt::FED_ALIAS).into()),
        Some(Some(v)) => ((v >> 1).checked_sub(1), v & 1 == 1),
    };
    let mut r = Restorer::new(reg, base);
    let header = match options.first(wire::opt::XMATRIX).and_then(|o| o.as_bytes()) {
        Some(x) => Some(xmatrix_decode_with(x, &mut r)?),
        None => None,
    };
    if body {
        let bad = WireError::BadOption(wire::opt::FED_ALIAS);
        {
            let mut v =
                serde_json::from_slice::<serde_json::Value>(&req.body).map_err(|_| bad.clone())?;
            let mut pending: Vec<String> = Vec::new();
            {
                let map = &r.reg.map;
                let mut lookup = |n: u32| map.get(&n).cloned();
                let mut full = |s: &str| pending.push(s.to_owned());
                restore_json_with(&mut v, &mut lookup, &mut full)?;
            }
            for s in pending {
                r.full(&s);
            }
            req.body =
                serde_json::to_vec(&v).map_err(|_| WireError::BadOption(wire::opt::FED_ALIAS))?;
        }
    }
    Ok(header)
}

/// Certificate and key files for `tunnel --listen-https`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM: the leaf certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// A TLS acceptor presenting `files` (rustls, ring provider; HTTP/1.1).
///
/// # Errors
/// Unreadable or invalid PEM, a key that does not match the certificate.
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", files.cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "--tls-cert: no certificate in the file");
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", files.key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Where `serve` sends federation requests.
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    /// The local homeserver's federation listener (`http://host:port`, plain HTTP).
    pub backend: Option<String>,
    /// The local homeserver's server name: requests for another `destination` are not sent to
    /// the backend. `None`: every request goes to the backend.
    pub server_name: Option<String>,
    /// CA certificates (PEM) trusted for remote destinations (and their `.well-known`);
    /// `None`: no remote destinations.
    pub remote_ca: Option<PathBuf>,
    /// The DNS server for server discovery (SRV, A/AAAA); `None`: the system's resolver.
    pub dns: Option<core::net::SocketAddr>,
}

/// Where one federation request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The configured homeserver.
    Backend,
    /// A remote homeserver, over TLS: its server name, to resolve by [`crate::discovery`].
    Remote(String),
}

/// What `serve` needs to reach remote homeservers.
#[derive(Debug)]
struct Remote {
    net: NetLookup,
    discovery: Discovery,
}

/// `serve`'s federation forwarder.
pub struct Federation {
    backend: Option<String>,
    server_name: Option<String>,
    remote: Option<Remote>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl core::fmt::Debug for Federation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Federation")
            .field("backend", &self.backend)
            .field("server_name", &self.server_name)
            .field("remote", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Builds the forwarder (reads the CA file).
    ///
    /// # Errors
    /// A backend that is not `http://host:port`, an unreadable CA file.
    pub fn new(cfg: &FederationConfig) -> anyhow::Result<Federation> {
        let backend = match &cfg.backend {
            Some(b) => {
                let b = b.trim_end_matches('/').to_owned();
                let uri: hyper::Uri = b.parse()?;
                anyhow::ensure!(
                    uri.scheme_str() == Some("http") && uri.path() == "/",
                    "--federation-backend must be http://host:port (no path)"
                );
                Some(b)
            }
            None => None,
        };
        let remote = match &cfg.remote_ca {
            Some(p) => Some(Remote {
                net: NetLookup::new(discovery::resolver(cfg.dns)?, tls_connector(p)?),
                discovery: Discovery::new(),
            }),
            None => None,
        };
        Ok(Federation {
            backend,
            server_name: cfg.server_name.clone(),
            remote,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Where a request with this `X-Matrix` header goes.
    ///
    /// # Errors
    /// A message saying why the request is refused.
    pub fn route(&self, xmatrix: Option<&str>) -> Result<Target, String> {
        let dest = xmatrix.and_then(|x| xmatrix_param(x, "destination"));
        let local = match (dest, &self.server_name) {
            (None, _) | (_, None) => true,
            (Some(d), Some(s)) => d == s,
        };
        if local && self.backend.is_some() {
            return Ok(Target::Backend);
        }
        match (dest, &self.remote) {
            (Some(d), Some(_)) => discovery::parse_server_name(d)
                .map(|_| Target::Remote(d.to_owned()))
                .map_err(|e| format!("lowband: destination {d}: {e}")),
            (None, _) => Err("lowband: no destination for this request".into()),
            (Some(d), None) => Err(format!("lowband: {d} is not this gateway's homeserver")),
        }
    }

    /// Forwards a federation request; failures become Matrix-style errors.
    pub async fn forward(&self, req: &HttpRequest, xmatrix: Option<&str>) -> HttpResponse {
        let target = match self.route(xmatrix) {
            Ok(t) => t,
            Err(msg) => {
                tracing::info!(%msg, "federation: refused");
                return HttpResponse::matrix_error(403, "M_FORBIDDEN", &msg);
            }
        };
        let mut b = hyper::Request::builder().method(req.method.as_str());
        if let Some(ct) = &req.content_type {
            b = b.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(x) = xmatrix {
            b = b.header(hyper::header::AUTHORIZATION, x);
        }
        let body = Full::new(Bytes::from(req.body.clone()));
        let r = match &target {
            Target::Backend => {
                let base = self.backend.as_deref().unwrap_or_default();
                let Ok(r) = b.uri(format!("{base}{}", req.path_and_query)).body(body) else {
                    return bad_request();
                };
                tokio::time::timeout(HTTP_TIMEOUT, async {
                    self.http.request(r).await.map_err(|e| e.to_string())
                })
                .await
            }
            Target::Remote(name) => {
                let Some(remote) = &self.remote else {
                    return bad_request();
                };
                let now = std::time::Instant::now();
                let dest = match remote.discovery.resolve(&remote.net, name, now).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::info!(%name, %e, "federation: discovery failed");
                        return HttpResponse::matrix_error(
                            502,
                            "M_UNKNOWN",
                            &format!("lowband: destination {name}: {e}"),
                        );
                    }
                };
                tracing::debug!(%name, ?dest, "federation: destination");
                let Ok(r) = b
                    .uri(req.path_and_query.as_str())
                    .header(hyper::header::HOST, dest.host_header.as_str())
                    .body(body)
                else {
                    return bad_request();
                };
                tokio::time::timeout(HTTP_TIMEOUT, remote_request(&remote.net, &dest, r)).await
            }
        };
        let resp = match r {
            Err(_) => return HttpResponse::matrix_error(504, "M_UNKNOWN", "homeserver timed out"),
            Ok(Err(e)) => {
                tracing::warn!(%e, ?target, "federation: homeserver unreachable");
                return HttpResponse::matrix_error(502, "M_UNKNOWN", "homeserver unreachable");
            }
            Ok(Ok(r)) => r,
        };
        shrink_response(req, read_response(resp).await)
    }
}

fn bad_request() -> HttpResponse {
    HttpResponse::matrix_error(400, "M_UNRECOGNIZED", "lowband: bad federation request")
}

fn tls_connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .map_err(|e| anyhow::anyhow!("--federation-ca {}: {e}", ca.display()))?
    {
        roots.add(c.map_err(|e| anyhow::anyhow!("--federation-ca: {e}"))?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// One request on a fresh TLS connection to a discovered destination: its targets in turn
/// until one connects, the certificate checked against [`Destination::tls_name`].
async fn remote_request(
    net: &NetLookup,
    d: &Destination,
    r: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let name = match &d.tls_name {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(n) => ServerName::try_from(n.clone()).map_err(|e| e.to_string())?,
    };
    let mut last = String::from("no target");
    let mut tcp = None;
    for (host, port) in &d.targets {
        match net.connect(host, *port).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let tcp = tcp.ok_or(last)?;
    let stream = net
        .tls()
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%e, "federation: remote connection ended");
        }
    });
    send.send_request(r).await.map_err(|e| e.to_string())
}

/// Reads a homeserver's HTTP response into the link's response form (headers that matter,
/// body up to the media limit); shared by client-server and federation forwarding.
pub(crate) async fn read_response(resp: hyper::Response<hyper::body::Incoming>) -> HttpResponse {
    let h = resp.headers();
    let get =
        |n: hyper::header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut out = HttpResponse {
        status: resp.status().as_u16(),
        content_type: get(hyper::header::CONTENT_TYPE),
        retry_after: get(hyper::header::RETRY_AFTER),
        location: get(hyper::header::LOCATION),
        content_disposition: get(hyper::header::CONTENT_DISPOSITION),
        body: Vec::new(),
    };
    match Limited::new(resp.into_body(), wire::MAX_MEDIA)
        .collect()
        .await
    {
        Ok(b) => out.body = b.to_bytes().to_vec(),
        Err(_) => {
            return HttpResponse::matrix_error(
                502,
                "M_TOO_LARGE",
                "homeserver response too large or cut",
            )
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "X-Matrix origin=\"localhost:8448\",key=\"ed25519:a_abCD\",sig=\"\
        dGhpcyBpcyBhIHNpZ25hdHVyZSBvZiBzaXh0eS1mb3VyIGJ5dGVzIGxvbmcsIGp1c3QgZm9yIHRlc3RzIQ\",\
        destination=\"localhost:8449\"";

    #[test]
    fn xmatrix_compact_round_trip() {
        let e = xmatrix_encode(SIG);
        assert_eq!(e[0], XM_COMPACT);
        // origin: flag, len, 14 bytes
        assert_eq!(&e[1..4], &[0x11, 14, b'l']);
        assert!(e.len() < SIG.len() - 30, "{} vs {}", e.len(), SIG.len());
        assert_eq!(xmatrix_decode(&e).unwrap(), SIG);
        assert_eq!(xmatrix_param(SIG, "destination"), Some("localhost:8449"));
        assert_eq!(xmatrix_param(SIG, "origin"), Some("localhost:8448"));
    }

    #[test]
    fn xmatrix_odd_forms_stay_identical() {
        for h in [
            "X-Matrix origin=a.org,key=\"ed25519:1\",sig=\"ab==\"",
            "X-Matrix origin=\"a\", key=\"b\"",
            "X-Matrix foo=\"bar\",sig=QUJD",
            "X-Matrix origin=\"a\\\"b\"",
            "X-Matrix ",
            "X-Matrix origin=\"a",
        ] {
            let e = xmatrix_encode(h);
            assert_eq!(xmatrix_decode(&e).unwrap(), h, "{e:02x?}");
        }
        assert_eq!(xmatrix_encode("X-Matrix origin=\"a")[0], XM_RAW);
        assert_eq!(
            xmatrix_encode("X-Matrix foo=\"bar\",sig=QUJD")[0],
            XM_COMPACT
        );
        assert!(xmatrix_decode(&[]).is_err());
        assert!(xmatrix_decode(&[1, 0x11, 5, b'a']).is_err());
        assert!(xmatrix_decode(&[1, 0x1f, 0]).is_err());
        assert!(xmatrix_decode(&[7]).is_err());
    }

    #[test]
    fn routing_is_not_an_open_proxy() {
        let h = |dest: &str| format!("X-Matrix origin=\"a:1\",destination=\"{dest}\"");
        let local = Federation::new(&FederationConfig {
            backend: Some("http://127.0.0.1:9".into()),
            server_name: Some("b:2".into()),
            ..FederationConfig::default()
        })
        .unwrap();
        assert_eq!(local.route(Some(&h("b:2"))), Ok(Target::Backend));
        assert_eq!(local.route(None), Ok(Target::Backend));
        assert!(local.route(Some(&h("c:3"))).is_err());
        let any = Federation::new(&FederationConfig {
            backend: Some("http://127.0.0.1:9".into()),
            ..FederationConfig::default()
        })
        .unwrap();
        assert_eq!(any.route(Some(&h("c:3"))), Ok(Target::Backend));
        let none = Federation::new(&FederationConfig::default()).unwrap();
        assert!(none.route(Some(&h("c:3"))).is_err());
        assert!(none.route(None).is_err());
        assert!(Federation::new(&FederationConfig {
            backend: Some("https://x:1".into()),
            ..FederationConfig::default()
        })
        .is_err());
        assert!(is_federation_path("/_matrix/federation/v1/send/1"));
        assert!(is_federation_path("/_matrix/key/v2/server"));
        assert!(!is_federation_path("/_matrix/client/v3/sync"));
    }

    #[test]
    fn remote_destinations_only_by_discovery() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            // A DNS server answering SERVFAIL to everything.
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            tokio::spawn(async move {
                let mut b = [0u8; 512];
                while let Ok((n, from)) = sock.recv_from(&mut b).await {
                    if n >= 12 {
                        b[2] |= 0x80;
                        b[3] = (b[3] & 0xf0) | 2;
                        let _ = sock.send_to(&b[..n], from).await;
                    }
                }
            });
            let dns = discovery::resolver(Some(addr)).unwrap();
            let f = Federation {
                backend: Some("http://127.0.0.1:9".into()),
                server_name: Some("b.org".into()),
                remote: Some(Remote {
                    net: NetLookup::new(dns, TlsConnector::from(Arc::new(tls))),
                    discovery: Discovery::new(),
                }),
                http: HttpClient::builder(TokioExecutor::new()).build_http(),
            };
            let h = |dest: &str| format!("X-Matrix origin=\"a:1\",destination=\"{dest}\"");
            assert_eq!(f.route(Some(&h("b.org"))), Ok(Target::Backend));
            assert_eq!(
                f.route(Some(&h("c.org"))),
                Ok(Target::Remote("c.org".into()))
            );
            let e = f.route(Some(&h("c.org/x"))).unwrap_err();
            assert!(e.contains("not a server name"), "{e}");
            // Undiscoverable: no .well-known, SRV lookups fail: a clear 502, nothing sent.
            let req = HttpRequest {
                method: "GET".into(),
                path_and_query: "/_matrix/federation/v1/version".into(),
                content_type: None,
                body: Vec::new(),
            };
            let r = f.forward(&req, Some(&h("c.org"))).await;
            assert_eq!(r.status, 502);
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("c.org: DNS lookup failed"), "{body}");
        });
    }

    fn txn(body: &str, prev: &str) -> HttpRequest {
        let j = serde_json::json!({
            "origin": "localhost:8448",
            "pdus": [{
                "auth_events": ["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                "$BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"],
                "prev_events": [prev],
                "room_id": "!room:localhost:8448",
                "sender": "@alice:localhost:8448",
                "content": {"body": body, "msgtype": "m.text"},
                "depth": 7
            }],
            "edus": []
        });
        HttpRequest {
            method: "PUT".into(),
            path_and_query: "/_matrix/federation/v1/send/1".into(),
            content_type: Some("application/json".into()),
            body: serde_json::to_vec(&j).unwrap(),
        }
    }

    fn serve_side(
        reg: &mut AliasRegistry,
        link: &FedLink,
        sent: &HttpRequest,
    ) -> Result<(HttpRequest, Option<String>), RestoreError> {
        let o = link.options();
        let mut r = sent.clone();
        let h = restore(reg, &Options::List(&o), &mut r)?;
        Ok((r, h))
    }

    fn value(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn aliases_round_trip_and_shrink() {
        let mut t = AliasTable::default();
        let mut reg = AliasRegistry::default();
        let req = txn("ping", "$CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC");
        let (sent, link) = t.encode(&req, Some(SIG));
        // origin, key, destination; origin, 3 event ids, room, sender.
        assert_eq!(link.defs, (0..9).collect::<Vec<_>>());
        assert_eq!(link.alias, Some(0b11));
        let (got, h) = serve_side(&mut reg, &link, &sent).unwrap();
        assert_eq!(h.as_deref(), Some(SIG));
        assert_eq!(value(&got.body), value(&req.body));
        assert_eq!(reg.map.len(), 9);
        // Not acknowledged yet: the next request defines again.
        let (s2, l2) = t.encode(&req, Some(SIG));
        assert_eq!(l2.defs.first(), Some(&9));
        serve_side(&mut reg, &l2, &s2).unwrap();
        // Answers in any order: each makes its numbers usable.
        t.acknowledge(&l2.defs);
        t.acknowledge(&link.defs);
        let req2 = txn("pong", "$DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD");
        let (sent2, link2) = t.encode(&req2, Some(SIG));
        assert_eq!(link2.defs.len(), 1, "only the new prev event");
        assert!(sent2.body.len() + 100 < req2.body.len());
        let x = link2.xmatrix.as_ref().unwrap();
        assert!(x.len() < 80, "{}", x.len());
        let mut reg_copy = AliasRegistry {
            map: reg.map.clone(),
        };
        let (got2, h2) = serve_side(&mut reg, &link2, &sent2).unwrap();
        assert_eq!(h2.as_deref(), Some(SIG));
        assert_eq!(value(&got2.body), value(&req2.body));
        // A serve that lost the numbers says so.
        let mut empty = AliasRegistry::default();
        assert_eq!(
            serve_side(&mut empty, &link2, &sent2),
            Err(RestoreError::Unknown)
        );
        reg_copy.map.clear();
        t.reset();
        let (sent3, link3) = t.encode(&req2, Some(SIG));
        let (got3, _) = serve_side(&mut reg_copy, &link3, &sent3).unwrap();
        assert_eq!(value(&got3.body), value(&req2.body));
    }

    #[test]
    fn aliases_escape_nul_and_skip_non_json() {
        let mut t = AliasTable::default();
        let mut reg = AliasRegistry::default();
        let mut req = txn(
            "\u{0}7 not an alias",
            "$CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC",
        );
        let (sent, link) = t.encode(&req, None);
        let (got, h) = serve_side(&mut reg, &link, &sent).unwrap();
        assert_eq!(h, None);
        assert_eq!(value(&got.body), value(&req.body));
        req.content_type = Some("text/plain".into());
        let (sent, link) = t.encode(&req, None);
        assert_eq!(sent.body, req.body);
        assert_eq!(link.alias, Some(0));
        let (got, _) = serve_side(&mut reg, &link, &sent).unwrap();
        assert_eq!(got.body, req.body);
        // Malformed alias values are refused, not panicked on.
        let o = [Opt::uint(wire::opt::FED_ALIAS, 1)];
        let mut bad = req.clone();
        bad.body = b"{\"a\":\"\\u000099999999999999\"}".to_vec();
        assert!(matches!(
            restore(&mut reg, &Options::List(&o), &mut bad),
            Err(RestoreError::Wire(_))
        ));
        bad.body = b"{\"a\":\"\\u00007\"}".to_vec();
        assert_eq!(
            restore(&mut reg, &Options::List(&o), &mut bad),
            Err(RestoreError::Unknown)
        );
    }

    #[test]
    fn transaction_answer_by_reference() {
        let req = txn("ping", "$CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC");
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let id = candidate_id(&v["pdus"][0], true).unwrap();
        let id_b = candidate_id(&v["pdus"][0], false).unwrap();
        assert_eq!(id.len(), 44);
        // The message's content does not count (redacted); its room does.
        let mut w = v.clone();
        w["pdus"][0]["content"]["body"] = "other".into();
        assert_eq!(candidate_id(&w["pdus"][0], true).as_ref(), Some(&id));
        w["pdus"][0]["room_id"] = "!other:x".into();
        assert_ne!(candidate_id(&w["pdus"][0], true).as_ref(), Some(&id));
        let answer = |keys: &[&str]| {
            let mut m = serde_json::Map::new();
            for k in keys {
                m.insert((*k).to_owned(), serde_json::json!({}));
            }
            HttpResponse {
                status: 200,
                content_type: Some("application/json".into()),
                body: serde_json::to_vec(&serde_json::json!({ "pdus": m })).unwrap(),
                ..HttpResponse::default()
            }
        };
        for keys in [
            vec![id.as_str()],
            vec![id_b.as_str()],
            vec!["$unknown", "\u{0}0a", "\u{0}x"],
            vec![],
        ] {
            let r = answer(&keys);
            let small = shrink_response(&req, r.clone());
            assert_eq!(
                value(&expand_response(&req, small.clone()).body),
                value(&r.body)
            );
            if keys.len() == 1 {
                assert!(small.body.len() + 35 < r.body.len(), "{small:?}");
            }
        }
        assert_eq!(
            shrink_response(&req, answer(&[id.as_str()])).body,
            b"{\"pdus\":{\"\\u00000a\":{}}}"
        );
        // A reference that names nothing (or ends in a multi-byte character) is refused.
        for key in ["\u{0}1\u{e9}", "\u{0}9a", "\u{0}0z"] {
            let mut r = answer(&[]);
            r.body = serde_json::to_vec(&serde_json::json!({ "pdus": { key: {} } })).unwrap();
            assert_eq!(expand_response(&req, r).status, 502, "{key:?}");
        }
        // Not a transaction: untouched.
        let mut other = req.clone();
        other.path_and_query = "/_matrix/federation/v1/event/x".into();
        let r = answer(&[id.as_str()]);
        assert_eq!(shrink_response(&other, r.clone()), r);
    }
}
