//! Route table: every Matrix endpoint as a compact route number plus path parameters, and the
//! compact link encoding of a whole request target (method + path + query).
//!
//! Why: a request line like `GET /_matrix/client/v3/sync?since=s72594_4483_1934&timeout=30000`
//! is 60 bytes of text, 4.8 s of airtime at 100 bit/s. Both ends hold the same table (generated
//! from the endpoint list of the [Matrix specification](https://spec.matrix.org/latest/), see
//! `data/routes-NOTICE.md`), so the link carries a route number, the path parameters and the
//! query (17 bytes for that example).
//!
//! # Table
//!
//! [`routes()`] lists one [`Route`] per (method, path template); its index is its [`RouteId`].
//! The table is generated from `data/routes.tsv` into `route/table.rs` (test
//! `route_table_is_fresh` fails when it is stale; `LOWBAND_BLESS=1` regenerates it). Numbers are
//! append-only: a new endpoint gets the next number and [`VERSION`] is bumped; the most frequent
//! operations have the numbers below 120, which encode in one byte.
//!
//! Templates carry a version segment (`/_matrix/client/v3/...`); a path that uses another
//! version from [`VERSIONS`] (`/_matrix/client/r0/sync`, `/_matrix/media/r0/download/..`,
//! `/_matrix/federation/v1/send_join/..`) matches the same route as a *version variant*, which is
//! recorded so that the original path is reproduced exactly.
//!
//! # Wire format of a target ([`encode_target`] / [`decode_target`])
//!
//! The target is the whole byte string (carry it in a length-delimited container such as a CoAP
//! option): a head, then path parameters, then query items until the end.
//!
//! ```text
//! target  = head params query*
//! head    = varint 0, lit, [method-text], path-item      (literal fallback, no params)
//!         | varint 1..=7, varint route                    (version variant VERSIONS[head-1])
//!         | varint 8 + route                              (route with its own version)
//! lit     = byte: method code (bits 0-2: GET PUT POST DELETE HEAD OPTIONS PATCH, 7 = other, then
//!           a text item with the method) | literal-prefix index << 3 (see LIT_PREFIXES)
//! params  = value-item × (number of `{params}` in the template, in template order)
//! query   = key-item (null | value-item)                 (one per `&`-separated segment)
//! ```
//!
//! `varint` is unsigned LEB128. Items use CBOR heads (RFC 8949 §3) with these meanings:
//!
//! | head | meaning |
//! |---|---|
//! | major 0 `n` | decimal integer text `n` (in a key position: query key number) |
//! | major 1 `n` | decimal integer text `-1-n` |
//! | major 2 len | packed ASCII text: bytes < 0x80 are literal, a digit run (no leading zero, ≤ 19 digits) is its value in big-endian 7-bit groups with bit 7 set |
//! | major 3 len | the text itself |
//! | major 4 len | percent-decoded bytes; text = every byte outside RFC 3986 `unreserved` written `%XX` |
//! | major 5 len | percent-decoded bytes; text = as JavaScript `encodeURIComponent` (also keeps `!*'()`) |
//! | major 6 `n` | well-known string `n` ([`strings()`]: event types, receipt types...) |
//! | `0xf4` / `0xf5` | text `false` / `true` |
//! | `0xf6` | (query value only) a key without `=` |
//! | `0xe0+i` (i < 20) | session string `i` ([`encode_target_with`]) |
//! | `0xf8 0x20+i` item | the item's text followed by session string `i` |
//!
//! Query key numbers first index the route's own query keys ([`Route::query_keys`]), then the
//! global list [`query_keys()`]. Every text is carried with the form that is shortest (ties, in
//! this order: integer, negative integer, boolean, well-known string, session string, text, packed,
//! percent-decoded RFC 3986, percent-decoded JavaScript, session suffix), so the encoding of a target is unique; the decoder re-encodes what it
//! decoded and rejects any other byte string ([`Error::NonCanonical`]). Nothing is special-cased
//! away: `access_token` is an ordinary key, percent-encoding and parameter order are kept byte
//! for byte.
#[rustfmt::skip]
mod table;

use core::fmt;

pub use table::VERSION;

/// Largest number of `{params}` in a template of the table.
pub const MAX_PARAMS: usize = 4;

/// Most session strings [`encode_target_with`] takes.
pub const MAX_SESSION: usize = item::MAX_SESSION;

/// Path version segments a template's version can be swapped for (a *version variant*).
///
/// Part of the wire format: the index is carried on the link. Append-only.
pub const VERSIONS: [&str; 5] = ["r0", "v1", "v2", "v3", "unstable"];

/// Prefixes that a literal (unknown) path may start with; index 0 is "no prefix".
///
/// Part of the wire format (up to 32 entries). Append-only; the encoder uses the longest.
pub const LIT_PREFIXES: [&str; 21] = [
    "",
    "/_matrix/client/v3/",
    "/_matrix/client/unstable/",
    "/_matrix/client/v1/",
    "/_matrix/client/r0/",
    "/_matrix/client/",
    "/_matrix/media/v3/",
    "/_matrix/media/",
    "/_matrix/federation/v1/",
    "/_matrix/federation/v2/",
    "/_matrix/federation/",
    "/_matrix/key/v2/",
    "/_matrix/app/v1/",
    "/_matrix/identity/v2/",
    "/_matrix/",
    "/_synapse/admin/v1/",
    "/_synapse/admin/v2/",
    "/_synapse/",
    "/.well-known/",
    "/_matrix/client/unstable/org.matrix.",
    "/_matrix/client/v3/rooms/",
];

/// Head values below this are markers (0 literal, 1..=7 version variants).
const ROUTE_BASE: u32 = 8;
const HEAD_LITERAL: u32 = 0;

/// Number of a route: its index in [`routes()`]. Stable across table versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId(pub u16);

impl RouteId {
    /// The route's metadata, if this table has it (without the `routes` feature: if it is one
    /// of [`DEVICE_ROUTES`]).
    pub fn route(self) -> Option<&'static Route> {
        #[cfg(feature = "routes")]
        return table::ROUTES.get(usize::from(self.0));
        #[cfg(not(feature = "routes"))]
        return DEVICE_ROUTES.iter().find(|r| r.id == self);
    }
}

/// The routes a device uses (sync, send, typing, join, leave): rows of the full table, same
/// numbers. Built without the `routes` feature, the codec knows only these (a device's flash
/// holds 5 rows instead of 246); any other path is encoded as a literal, which every peer
/// decodes. Encoding one of these paths gives the same bytes either way: the test
/// `device_routes_encode_as_the_full_table` checks it.
pub static DEVICE_ROUTES: [Route; 5] = [
    table::ROUTES[0],
    table::ROUTES[1],
    table::ROUTES[3],
    table::ROUTES[12],
    table::ROUTES[15],
];

/// The routes this build matches paths against.
fn active() -> &'static [Route] {
    #[cfg(feature = "routes")]
    return &table::ROUTES;
    #[cfg(not(feature = "routes"))]
    return &DEVICE_ROUTES;
}

/// HTTP request method.
///
/// `Other(n)`: a method outside the known set, whose `n` bytes of text [`decode_target`] wrote
/// into the caller's method buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `POST`
    Post,
    /// `DELETE`
    Delete,
    /// `HEAD`
    Head,
    /// `OPTIONS`
    Options,
    /// `PATCH`
    Patch,
    /// Any other method; the length of its text.
    Other(u8),
}

const KNOWN_METHODS: [(Method, &str); 7] = [
    (Method::Get, "GET"),
    (Method::Put, "PUT"),
    (Method::Post, "POST"),
    (Method::Delete, "DELETE"),
    (Method::Head, "HEAD"),
    (Method::Options, "OPTIONS"),
    (Method::Patch, "PATCH"),
];

impl Method {
    /// The known method spelled exactly `s` (case-sensitive, as HTTP), or `None`.
    pub fn from_name(s: &str) -> Option<Method> {
        KNOWN_METHODS.iter().find(|(_, n)| *n == s).map(|(m, _)| *m)
    }

    /// The method's name, `None` for [`Method::Other`].
    pub fn as_str(self) -> Option<&'static str> {
        KNOWN_METHODS
            .iter()
            .find(|(m, _)| *m == self)
            .map(|(_, n)| *n)
    }

    fn code(self) -> u8 {
        match self {
            Method::Get => 0,
            Method::Put => 1,
            Method::Post => 2,
            Method::Delete => 3,
            Method::Head => 4,
            Method::Options => 5,
            Method::Patch => 6,
            Method::Other(_) => 7,
        }
    }
}

/// Which Matrix API an endpoint belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// Client-Server API.
    ClientServer,
    /// Server-Server (federation) API, including the key API.
    ServerServer,
    /// Application Service API.
    ApplicationService,
    /// Identity Service API.
    Identity,
    /// Push Gateway API.
    PushGateway,
}

/// Metadata of one route: an endpoint of the spec (or a path real clients use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The route number.
    pub id: RouteId,
    /// The method; the same path with another method is another route.
    pub method: Method,
    /// Path template with `{name}` parameters, as in the spec.
    pub template: &'static str,
    /// The spec's operationId (ruma-style name), e.g. `sync`, `sendMessage`.
    pub name: &'static str,
    /// Further operationIds the spec gives the same method and path (e.g. `peekEvents`).
    pub alt_names: &'static [&'static str],
    /// The API the endpoint belongs to.
    pub api: Api,
    /// The endpoint's query keys, as indices into [`query_keys()`], in key-number order.
    pub query_keys: &'static [u8],
    /// Number of `{params}` in the template.
    pub params: u8,
    /// Number of `/`-separated segments of the template (the leading empty one included).
    pub segments: u8,
    /// Index in [`VERSIONS`] of the template's version segment (segment 3), if it has one.
    pub version: Option<u8>,
    /// Where the row comes from: `spec`, `synapse`, an MSC number.
    pub source: &'static str,
}

impl Route {
    /// The names of this route's path parameters, in template order.
    pub fn param_names(&self) -> impl Iterator<Item = &'static str> {
        self.template
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }
}

/// All routes, indexed by [`RouteId`] (without the `routes` feature: [`DEVICE_ROUTES`], which
/// are not indexed by their id).
pub fn routes() -> &'static [Route] {
    active()
}

/// The global query key list (key numbers after a route's own keys index it).
pub fn query_keys() -> &'static [&'static str] {
    &table::QUERY_KEYS
}

/// Well-known strings carried as one number (major type 6 items).
pub fn strings() -> &'static [&'static str] {
    &table::STRINGS
}

/// The route of `api` named `name` (its operationId or one of its `alt_names`).
pub fn by_name(api: Api, name: &str) -> Option<&'static Route> {
    active()
        .iter()
        .find(|r| r.api == api && (r.name == name || r.alt_names.contains(&name)))
}

/// Errors of route lookup, expansion and target encoding/decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The output buffer is too small.
    BufferTooSmall,
    /// The input ended inside an item.
    Truncated,
    /// A reserved head, marker, item type or index.
    BadHeader,
    /// A route number this table version does not have.
    UnknownRoute,
    /// A version variant for a route without a version segment.
    BadVersion,
    /// Decoded text that is not UTF-8.
    BadText,
    /// Well-formed, but not the (unique) encoding of what it decodes to.
    NonCanonical,
    /// [`expand`]: wrong number of parameters for the route.
    ParamCount,
    /// [`expand`]: a parameter containing `/` or `?`.
    BadParam,
    /// A method text that is empty or longer than 255 bytes.
    BadMethod,
    /// More than [`MAX_SESSION`] session strings.
    Session,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::BufferTooSmall => "output buffer too small",
            Error::Truncated => "truncated route target",
            Error::BadHeader => "reserved head or item in route target",
            Error::UnknownRoute => "route number not in this table",
            Error::BadVersion => "version variant on a route without version",
            Error::BadText => "decoded text is not UTF-8",
            Error::NonCanonical => "non-canonical route target",
            Error::ParamCount => "wrong number of path parameters",
            Error::BadParam => "path parameter contains '/' or '?'",
            Error::BadMethod => "method empty or too long",
            Error::Session => "too many session strings",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}

/// A path matched against the table: route, version variant and path parameter slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match<'a> {
    /// The route.
    pub id: RouteId,
    /// Index in [`VERSIONS`] of the path's version segment when it differs from the template's.
    pub variant: Option<u8>,
    route: &'static Route,
    params: [&'a str; MAX_PARAMS],
    len: u8,
}

impl<'a> Match<'a> {
    /// The path parameters, raw (still percent-encoded as they were in the path), in template
    /// order.
    pub fn params(&self) -> &[&'a str] {
        &self.params[..usize::from(self.len)]
    }

    /// The route's metadata.
    pub fn route(&self) -> &'static Route {
        // INVARIANT: a Match is only built from a row of the active table.
        self.route
    }

    /// Writes the matched path back into `out` (byte-identical to the looked-up path).
    pub fn expand(&self, out: &mut [u8]) -> Result<usize, Error> {
        let mut w = Buf::new(out);
        emit_path(self.route(), self.variant, self.params(), &mut w)?;
        Ok(w.n)
    }
}

/// Finds the route of `method` + `path` (no query), with its path parameters.
///
/// When several templates match, the one with the fewest parameters wins, then the one whose
/// version segment is the path's own, then the lowest number. `method` is case-sensitive.
pub fn lookup<'a>(method: &str, path: &'a str) -> Option<Match<'a>> {
    lookup_in(active(), method, path)
}

/// [`lookup`] in `routes` (in id order).
fn lookup_in<'a>(routes: &'static [Route], method: &str, path: &'a str) -> Option<Match<'a>> {
    let m = Method::from_name(method)?;
    let nseg = path.bytes().filter(|&b| b == b'/').count() + 1;
    let mut best: Option<Match<'a>> = None;
    for r in routes.iter() {
        if r.method != m || usize::from(r.segments) != nseg {
            continue;
        }
        if let Some(b) = &best {
            let br = b.route();
            // Routes are scanned in id order: only strictly better ones replace `best`.
            if r.params > br.params || (r.params == br.params && b.variant.is_none()) {
                continue;
            }
        }
        if let Some(found) = match_route(r, path) {
            let better = match &best {
                None => true,
                Some(b) => {
                    let br = b.route();
                    r.params < br.params || (b.variant.is_some() && found.variant.is_none())
                }
            };
            if better {
                best = Some(found);
            }
        }
    }
    best
}

fn match_route<'a>(r: &'static Route, path: &'a str) -> Option<Match<'a>> {
    let mut m = Match {
        id: r.id,
        route: r,
        variant: None,
        params: [""; MAX_PARAMS],
        len: 0,
    };
    for (i, (t, p)) in r.template.split('/').zip(path.split('/')).enumerate() {
        if t.starts_with('{') {
            *m.params.get_mut(usize::from(m.len))? = p;
            m.len += 1;
        } else if t != p {
            if i == 3 && r.version.is_some() {
                let v = VERSIONS.iter().position(|v| *v == p)?;
                // INVARIANT: VERSIONS has fewer than 256 entries.
                m.variant = Some(v as u8);
            } else {
                return None;
            }
        }
    }
    Some(m)
}

/// Writes the path of route `id` with `params` (raw text, template order) into `out`.
///
/// Returns the length written. The route's own version segment is used.
pub fn expand(id: RouteId, params: &[&str], out: &mut [u8]) -> Result<usize, Error> {
    let r = id.route().ok_or(Error::UnknownRoute)?;
    let mut w = Buf::new(out);
    emit_path(r, None, params, &mut w)?;
    Ok(w.n)
}

fn emit_path<S: Sink>(
    r: &Route,
    variant: Option<u8>,
    params: &[&str],
    s: &mut S,
) -> Result<(), Error> {
    if params.len() != usize::from(r.params) {
        return Err(Error::ParamCount);
    }
    let mut params = params.iter();
    for (i, t) in r.template.split('/').enumerate() {
        if i > 0 {
            s.put(b"/")?;
        }
        if t.starts_with('{') {
            // INVARIANT: the count was checked above.
            let p = params.next().ok_or(Error::ParamCount)?;
            if p.bytes().any(|b| b == b'/' || b == b'?') {
                return Err(Error::BadParam);
            }
            s.put(p.as_bytes())?;
        } else if let (3, Some(v)) = (i, variant) {
            s.put(
                VERSIONS
                    .get(usize::from(v))
                    .ok_or(Error::BadVersion)?
                    .as_bytes(),
            )?;
        } else {
            s.put(t.as_bytes())?;
        }
    }
    Ok(())
}

/// Encodes a request target (`method`, and `path_and_query` as on the HTTP request line) into
/// `out`; returns the length. See the module docs for the format.
///
/// `out.len() >= 2 * (method.len() + path_and_query.len()) + 16` is always enough.
pub fn encode_target(method: &str, path_and_query: &str, out: &mut [u8]) -> Result<usize, Error> {
    encode_target_with(&[], method, path_and_query, out)
}

/// [`encode_target`] with session strings both ends of the link agree on (own user id,
/// homeserver name, joined room ids...; at most [`MAX_SESSION`], compared with the raw text).
///
/// A text equal to session string `i` is one byte (`0xe0 + i`); a text ending with it (other
/// than by being it) is `0xf8 0x20+i` and the rest as a text item: `@bob:example.org` is 7
/// bytes with `example.org` in the session. Both ends must use the same list, in the same
/// order, or texts decode wrong; the session list is part of the link state, not of the table.
pub fn encode_target_with(
    session: &[&str],
    method: &str,
    path_and_query: &str,
    out: &mut [u8],
) -> Result<usize, Error> {
    if session.len() > MAX_SESSION {
        return Err(Error::Session);
    }
    let mut w = Buf::new(out);
    encode_into(session, method, path_and_query, &mut w)?;
    Ok(w.n)
}

fn encode_into<S: Sink>(session: &[&str], method: &str, pq: &str, s: &mut S) -> Result<(), Error> {
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let keys: &[u8] = match lookup(method, path) {
        Some(m) => {
            let r = m.route();
            match m.variant {
                Some(v) => {
                    put_varint(s, 1 + u32::from(v))?;
                    put_varint(s, u32::from(m.id.0))?;
                }
                None => put_varint(s, ROUTE_BASE + u32::from(m.id.0))?,
            }
            for p in m.params() {
                item::put_value(s, p.as_bytes(), item::Ctx::Param, session)?;
            }
            r.query_keys
        }
        None => {
            put_varint(s, HEAD_LITERAL)?;
            let m = Method::from_name(method);
            let code = m.map_or(7, Method::code);
            let (pi, prefix) = LIT_PREFIXES
                .iter()
                .enumerate()
                .filter(|(_, p)| path.starts_with(*p))
                .max_by_key(|(_, p)| p.len())
                .unwrap_or((0, &""));
            // INVARIANT: LIT_PREFIXES has at most 32 entries.
            s.put(&[code | (pi as u8) << 3])?;
            if m.is_none() {
                if method.is_empty() || method.len() > 255 {
                    return Err(Error::BadMethod);
                }
                item::put_head(s, 3, method.len() as u64)?;
                s.put(method.as_bytes())?;
            }
            item::put_value(
                s,
                &path.as_bytes()[prefix.len()..],
                item::Ctx::Text,
                session,
            )?;
            &[]
        }
    };
    if let Some(q) = query {
        for seg in q.split('&') {
            let (k, v) = match seg.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (seg, None),
            };
            put_key(s, k, keys, session)?;
            match v {
                None => s.put(&[item::NULL])?,
                Some(v) => item::put_value(s, v.as_bytes(), item::Ctx::Query, session)?,
            }
        }
    }
    Ok(())
}

fn put_key<S: Sink>(s: &mut S, k: &str, keys: &[u8], session: &[&str]) -> Result<(), Error> {
    let global = &table::QUERY_KEYS;
    if let Some(i) = keys
        .iter()
        .position(|&g| global.get(usize::from(g)) == Some(&k))
    {
        return item::put_head(s, 0, i as u64);
    }
    if let Some(g) = global.iter().position(|g| *g == k) {
        return item::put_head(s, 0, (keys.len() + g) as u64);
    }
    item::put_value(s, k.as_bytes(), item::Ctx::Text, session)
}

/// Decodes a target made by [`encode_target`]: writes the path and query into `out` and, for
/// [`Method::Other`], the method text into `method_out`. Returns the method and the length
/// written to `out`.
///
/// `bytes` is the whole target. Never panics; any byte string that is not exactly what
/// [`encode_target`] produces for the decoded text is rejected.
pub fn decode_target(
    bytes: &[u8],
    method_out: &mut [u8],
    out: &mut [u8],
) -> Result<(Method, usize), Error> {
    decode_target_with(&[], bytes, method_out, out)
}

/// [`decode_target`] with the session strings of [`encode_target_with`].
pub fn decode_target_with(
    session: &[&str],
    bytes: &[u8],
    method_out: &mut [u8],
    out: &mut [u8],
) -> Result<(Method, usize), Error> {
    if session.len() > MAX_SESSION {
        return Err(Error::Session);
    }
    let mut r = Rd { b: bytes, i: 0 };
    let mut w = Buf::new(out);
    let head = r.varint()?;
    let (method, keys) = if head == HEAD_LITERAL {
        let lit = r.byte()?;
        let prefix = LIT_PREFIXES
            .get(usize::from(lit >> 3))
            .ok_or(Error::BadHeader)?;
        let method = match KNOWN_METHODS.get(usize::from(lit & 7)) {
            Some((m, _)) => *m,
            None => {
                let (major, len) = r.head()?;
                if major != 3 || len == 0 || len > 255 {
                    return Err(Error::BadMethod);
                }
                let text = r.take(len)?;
                method_out
                    .get_mut(..text.len())
                    .ok_or(Error::BufferTooSmall)?
                    .copy_from_slice(text);
                core::str::from_utf8(text).map_err(|_| Error::BadText)?;
                Method::Other(text.len() as u8)
            }
        };
        w.put(prefix.as_bytes())?;
        item::get_value(&mut r, &mut w, item::Ctx::Text, session)?;
        (method, &[][..])
    } else {
        let (id, variant) = if head < ROUTE_BASE {
            let v = (head - 1) as u8;
            if usize::from(v) >= VERSIONS.len() {
                return Err(Error::BadHeader);
            }
            (r.varint()?, Some(v))
        } else {
            (head - ROUTE_BASE, None)
        };
        let route = u16::try_from(id)
            .ok()
            .and_then(|id| RouteId(id).route())
            .ok_or(Error::UnknownRoute)?;
        if variant.is_some() && route.version.is_none() {
            return Err(Error::BadVersion);
        }
        for (i, t) in route.template.split('/').enumerate() {
            if i > 0 {
                w.put(b"/")?;
            }
            if t.starts_with('{') {
                item::get_value(&mut r, &mut w, item::Ctx::Param, session)?;
            } else if let (3, Some(v)) = (i, variant) {
                w.put(VERSIONS[usize::from(v)].as_bytes())?;
            } else {
                w.put(t.as_bytes())?;
            }
        }
        (route.method, route.query_keys)
    };
    if !r.is_empty() {
        w.put(b"?")?;
        let mut first = true;
        while !r.is_empty() {
            if !first {
                w.put(b"&")?;
            }
            first = false;
            get_key(&mut r, &mut w, keys, session)?;
            if r.peek() == Some(item::NULL) {
                r.i += 1;
            } else {
                w.put(b"=")?;
                item::get_value(&mut r, &mut w, item::Ctx::Query, session)?;
            }
        }
    }
    let n = w.n;
    // Canonical check: the decoded target must encode back to exactly `bytes`.
    let text = core::str::from_utf8(&out[..n]).map_err(|_| Error::BadText)?;
    let mname = match method {
        Method::Other(len) => {
            core::str::from_utf8(&method_out[..usize::from(len)]).map_err(|_| Error::BadText)?
        }
        // INVARIANT: every method except Other has a name.
        m => m.as_str().ok_or(Error::BadMethod)?,
    };
    let mut cmp = Cmp { exp: bytes, n: 0 };
    encode_into(session, mname, text, &mut cmp)?;
    if cmp.n != bytes.len() {
        return Err(Error::NonCanonical);
    }
    Ok((method, n))
}

fn get_key(r: &mut Rd<'_>, w: &mut Buf<'_>, keys: &[u8], session: &[&str]) -> Result<(), Error> {
    if r.peek().map(|b| b >> 5) == Some(0) {
        let (_, k) = r.head()?;
        let global = &table::QUERY_KEYS;
        let name = match usize::try_from(k).map_err(|_| Error::BadHeader)? {
            k if k < keys.len() => global.get(usize::from(keys[k])),
            k => global.get(k - keys.len()),
        };
        w.put(name.ok_or(Error::BadHeader)?.as_bytes())
    } else {
        item::get_value(r, w, item::Ctx::Text, session)
    }
}

fn put_varint<S: Sink>(s: &mut S, mut v: u32) -> Result<(), Error> {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            return s.put(&[b]);
        }
        s.put(&[b | 0x80])?;
    }
}

/// Where encoders write: a buffer, a counter or a comparison against expected bytes.
trait Sink {
    fn put(&mut self, b: &[u8]) -> Result<(), Error>;
}

struct Buf<'a> {
    buf: &'a mut [u8],
    n: usize,
}

impl<'a> Buf<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Buf { buf, n: 0 }
    }
}

impl Sink for Buf<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        let end = self.n.checked_add(b.len()).ok_or(Error::BufferTooSmall)?;
        self.buf
            .get_mut(self.n..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(b);
        self.n = end;
        Ok(())
    }
}

struct Count(usize);

impl Sink for Count {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        self.0 += b.len();
        Ok(())
    }
}

struct Cmp<'a> {
    exp: &'a [u8],
    n: usize,
}

impl Sink for Cmp<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        let end = self.n + b.len();
        if self.exp.get(self.n..end) != Some(b) {
            return Err(Error::NonCanonical);
        }
        self.n = end;
        Ok(())
    }
}

struct Rd<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Rd<'a> {
    fn is_empty(&self) -> bool {
        self.i >= self.b.len()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = self.peek().ok_or(Error::Truncated)?;
        self.i += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Error> {
        let n = usize::try_from(n).map_err(|_| Error::Truncated)?;
        let end = self.i.checked_add(n).ok_or(Error::Truncated)?;
        let s = self.b.get(self.i..end).ok_or(Error::Truncated)?;
        self.i = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u32, Error> {
        let mut v: u32 = 0;
        for shift in [0u32, 7, 14, 21, 28] {
            let b = self.byte()?;
            let part = u32::from(b & 0x7f);
            if shift == 28 && part > 0x0f {
                return Err(Error::BadHeader);
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::BadHeader)
    }

    /// A CBOR head: (major type, argument). Major 7 returns the additional info as argument.
    fn head(&mut self) -> Result<(u8, u64), Error> {
        let ib = self.byte()?;
        let (major, info) = (ib >> 5, ib & 0x1f);
        let n = match info {
            0..=23 => return Ok((major, u64::from(info))),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return Err(Error::BadHeader),
        };
        if major == 7 {
            return Err(Error::BadHeader);
        }
        let mut v = 0u64;
        for &b in self.take(n)? {
            v = v << 8 | u64::from(b);
        }
        Ok((major, v))
    }
}

mod item;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_routes_encode_as_the_full_table() {
        // The paths a device sends match the same row (id, variant, params) in the 5-row table
        // as in the full one, so the target bytes are the same with or without `routes`.
        let paths = [
            ("GET", "/_matrix/client/v3/sync"),
            (
                "PUT",
                "/_matrix/client/v3/rooms/!r:ex.org/send/m.room.message/d1.0",
            ),
            (
                "PUT",
                "/_matrix/client/v3/rooms/%E0/send/org.lowband.reading/d2.7",
            ),
            (
                "PUT",
                "/_matrix/client/v3/rooms/!r:ex.org/typing/@dev:ex.org",
            ),
            ("POST", "/_matrix/client/v3/join/!r:ex.org"),
            ("POST", "/_matrix/client/v3/join/#a:ex.org"),
            ("POST", "/_matrix/client/v3/rooms/!r:ex.org/leave"),
        ];
        for (m, p) in paths {
            let full = lookup_in(&table::ROUTES, m, p).unwrap();
            let small = lookup_in(&DEVICE_ROUTES, m, p).unwrap();
            assert_eq!(small, full, "{m} {p}");
        }
        assert_eq!(
            DEVICE_ROUTES.map(|r| r.id.0),
            [0, 1, 3, 12, 15],
            "rows keep their numbers"
        );
        // Another path is not in the small table (a device sends it as a literal).
        assert!(lookup_in(&DEVICE_ROUTES, "POST", "/_matrix/client/v3/login").is_none());
    }

    fn enc(method: &str, pq: &str) -> ([u8; 128], usize) {
        let mut out = [0u8; 128];
        let n = encode_target(method, pq, &mut out).unwrap();
        (out, n)
    }

    #[test]
    fn sync_target_bytes() {
        let (b, n) = enc(
            "GET",
            "/_matrix/client/v3/sync?since=s72594_4483_1934&timeout=30000",
        );
        assert_eq!(
            &b[..n],
            &[
                0x08, // route 0 (sync), own version
                0x01, 0x4a, b's', 0x84, 0xb7, 0x92, b'_', 0xa3, 0x83, b'_', 0x8f,
                0x8e, // since
                0x04, 0x19, 0x75, 0x30, // timeout=30000
            ]
        );
    }

    #[test]
    fn variant_and_literal_bytes() {
        // r0 sync: variant marker 1 + VERSIONS index 0, then route 0.
        let (b, n) = enc("GET", "/_matrix/client/r0/sync");
        assert_eq!(&b[..n], &[0x01, 0x00]);
        // Unknown path: literal marker, GET | prefix 1 << 3, rest as text.
        let (b, n) = enc("GET", "/_matrix/client/v3/nope?x");
        assert_eq!(
            &b[..n],
            &[0x00, 0x08, 0x64, b'n', b'o', b'p', b'e', 0x61, b'x', 0xf6]
        );
        // Unknown method: code 7 and its text.
        let (b, n) = enc("BREW", "/pot");
        assert_eq!(
            &b[..n],
            &[0x00, 0x07, 0x64, b'B', b'R', b'E', b'W', 0x64, b'/', b'p', b'o', b't']
        );
    }

    #[test]
    fn decode_rebuilds_text() {
        let mut m = [0u8; 8];
        let mut out = [0u8; 128];
        let (method, n) = decode_target(&[0x09, 0x61, b'r', 0xc0, 0x01], &mut m, &mut out).unwrap();
        assert_eq!(method, Method::Put);
        assert_eq!(
            &out[..n],
            b"/_matrix/client/v3/rooms/r/send/m.room.message/1"
        );
        let (method, n) = decode_target(
            &[0x00, 0x07, 0x64, b'B', b'R', b'E', b'W', 0x60],
            &mut m,
            &mut out,
        )
        .unwrap();
        assert_eq!((method, &m[..4], n), (Method::Other(4), &b"BREW"[..], 0));
    }
}
