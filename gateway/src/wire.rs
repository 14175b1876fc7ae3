//! The mapping between HTTP exchanges of the Matrix client-server API and CoAP messages on the
//! lowband link, designed for bytes.
//!
//! Both ends of the link are lowband (`tunnel` next to the client, `serve` next to the
//! homeserver) and every message is inside Noise, so nothing here needs to be understood by a
//! stock CoAP peer. The rules:
//!
//! - **Target.** Method, path and query travel as one [`route::encode_target`] byte string in
//!   one Uri-Path option (a route number plus parameters; `GET /sync?timeout=30000` is a few
//!   bytes). The CoAP method code is always POST: the route already says the method.
//! - **Status.** An HTTP status `c.dd` with `c` in {2, 4, 5} and `dd <= 31` is the CoAP code
//!   `c.dd` itself (200 -> 2.00, 404 -> 4.04, 429 -> 4.29); any other status goes in the
//!   [`opt::STATUS`] option under code 2.05.
//! - **Bodies.** A JSON body is packed ([`pack`]: compact CBOR, deflated when shorter) and
//!   carries no content-type option at all (JSON is the common case). Any other body goes raw,
//!   with its Content-Type as an index into [`CONTENT_TYPES`] in Content-Format (option 12), or
//!   as text in [`opt::CONTENT_TYPE`]. An empty body carries nothing.
//! - **Headers.** Requests carry Content-Type only; responses Content-Type, Retry-After,
//!   Location and Content-Disposition (each an option when present).
//! - **Access token.** Not sent with every request: see [`opt::AUTH`] and [`TokenTable`].
//!
//! Custom option numbers are even (elective, RFC 7252 §5.4.1) and small (one-byte option
//! deltas). <https://www.rfc-editor.org/rfc/rfc7252#section-5.4>
use alloc::collections::BTreeMap;

use lowband_codec::coap::{Code, Opt, OptionList, Options};
use lowband_codec::{lb, pack, route};

/// lowband's own CoAP option numbers: one definition for both ends, in
/// [`lowband_codec::lb::opt`].
pub use lowband_codec::lb::opt;

/// Content types of raw bodies sent as a one-byte index (position + 1; 0 = no content type).
pub const CONTENT_TYPES: [&str; 14] = [
    "application/json",
    "application/octet-stream",
    "text/plain",
    "text/plain; charset=utf-8",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "video/mp4",
    "audio/ogg",
    "text/html",
    "text/html; charset=utf-8",
    "application/pdf",
    "image/svg+xml",
];

/// Largest JSON body either way.
pub const MAX_JSON: usize = 1 << 20;
/// Largest raw (media) body either way.
pub const MAX_MEDIA: usize = 50 << 20;

/// Why a message could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The target could not be encoded or decoded.
    #[error("request target: {0:?}")]
    Target(route::Error),
    /// A packed body did not unpack.
    #[error("body: {0}")]
    Body(pack::Error),
    /// The request has no target option.
    #[error("no target")]
    NoTarget,
    /// An option is malformed (bad UTF-8, bad number).
    #[error("malformed option {0}")]
    BadOption(u16),
    /// The body exceeds [`MAX_JSON`] or [`MAX_MEDIA`].
    #[error("body too large")]
    TooLarge,
}

/// How a body travels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// No body.
    #[default]
    Empty,
    /// Packed JSON (no option).
    Json,
    /// Raw, content type `CONTENT_TYPES[i - 1]` (0: none).
    Index(u8),
    /// Raw with this content type.
    Text(String),
}

/// A body in link form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    /// How it is encoded.
    pub format: Format,
    /// The bytes on the link.
    pub bytes: Vec<u8>,
}

fn is_json(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case("application/json")
}

impl Body {
    /// Encodes a body with its Content-Type.
    ///
    /// # Errors
    /// [`WireError::TooLarge`] beyond the limits.
    pub fn encode(content_type: Option<&str>, body: &[u8]) -> Result<Body, WireError> {
        if body.is_empty() {
            return Ok(Body {
                format: Format::Empty,
                bytes: Vec::new(),
            });
        }
        if let Some(ct) = content_type.filter(|c| is_json(c)) {
            if body.len() > MAX_JSON {
                return Err(WireError::TooLarge);
            }
            if let Ok(p) = pack::pack_vec(body) {
                return Ok(Body {
                    format: Format::Json,
                    bytes: p,
                });
            }
            let _ = ct;
        }
        if body.len() > MAX_MEDIA {
            return Err(WireError::TooLarge);
        }
        let format = match content_type {
            None => Format::Index(0),
            Some(ct) => match CONTENT_TYPES.iter().position(|c| *c == ct) {
                // INVARIANT: the table has fewer than 255 entries.
                Some(i) => Format::Index(u8::try_from(i + 1).unwrap_or(0)),
                None => Format::Text(ct.to_owned()),
            },
        };
        Ok(Body {
            format,
            bytes: body.to_vec(),
        })
    }

    /// The body for a small device ([`opt::SMALL`]): a deflated JSON body becomes its plain
    /// CBOR (the same CBOR, [`pack`]'s other form); anything else is unchanged.
    ///
    /// # Errors
    /// [`WireError::Body`] if a deflated body does not inflate (never for our own).
    pub fn into_plain(mut self) -> Result<Body, WireError> {
        if self.format == Format::Json && self.bytes.first() == Some(&pack::DEFLATE_MARK) {
            let cbor = plain_cbor(&self.bytes)?;
            self.bytes = cbor;
        }
        Ok(self)
    }

    /// The options saying how the body is encoded.
    pub fn options(&self) -> Vec<Opt<'_>> {
        match &self.format {
            Format::Empty | Format::Json => vec![],
            Format::Index(i) => vec![Opt::uint(opt::FORMAT, u32::from(*i))],
            Format::Text(t) => vec![Opt::str(opt::CONTENT_TYPE, t)],
        }
    }

    /// Decodes a body: its HTTP Content-Type and bytes.
    ///
    /// # Errors
    /// [`WireError::Body`] for a packed body that does not unpack, [`WireError::BadOption`].
    pub fn decode(
        options: &Options<'_>,
        payload: &[u8],
    ) -> Result<(Option<String>, Vec<u8>), WireError> {
        if let Some(o) = options.first(opt::CONTENT_TYPE) {
            let t = o.as_bytes().and_then(|b| core::str::from_utf8(b).ok());
            let t = t.ok_or(WireError::BadOption(opt::CONTENT_TYPE))?;
            return Ok((Some(t.to_owned()), payload.to_vec()));
        }
        if let Some(o) = options.first(opt::FORMAT) {
            let i = o.as_uint().ok_or(WireError::BadOption(opt::FORMAT))? as usize;
            let ct = match i {
                0 => None,
                i => Some(
                    CONTENT_TYPES
                        .get(i - 1)
                        .ok_or(WireError::BadOption(opt::FORMAT))?
                        .to_string(),
                ),
            };
            return Ok((ct, payload.to_vec()));
        }
        if payload.is_empty() {
            return Ok((None, Vec::new()));
        }
        let json = pack::unpack_vec(payload).map_err(WireError::Body)?;
        Ok((Some("application/json".to_owned()), json))
    }
}

/// The CBOR of a packed body (inflated if deflated).
fn plain_cbor(packed: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut cap = packed.len() * 8 + 1024;
    loop {
        let mut scratch = vec![0u8; pack::scratch_len(cap)];
        match pack::unpack_cbor(packed, &mut scratch) {
            Ok(c) => return Ok(c.to_vec()),
            Err(pack::Error::ScratchTooSmall) if cap < MAX_JSON * 4 => cap *= 4,
            Err(e) => return Err(WireError::Body(e)),
        }
    }
}

/// An HTTP request as the tunnel received it (the access token already taken out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Path and query as on the request line (without `access_token`).
    pub path_and_query: String,
    /// Content-Type header.
    pub content_type: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

/// Takes the access token out of a request: the `Authorization: Bearer` header value (given
/// as `authorization`) or an `access_token` query parameter (removed from the returned path).
pub fn take_token(authorization: Option<&str>, path_and_query: &str) -> (Option<String>, String) {
    let mut token = authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    let Some((path, query)) = path_and_query.split_once('?') else {
        return (token, path_and_query.to_owned());
    };
    let mut kept = Vec::new();
    for seg in query.split('&') {
        match seg.strip_prefix("access_token=") {
            Some(t) => {
                if token.is_none() {
                    token = Some(t.to_owned());
                }
            }
            None => kept.push(seg),
        }
    }
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    (token, pq)
}

/// A request in link form (target and body); the auth option is added by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRequest {
    /// The encoded target (Uri-Path).
    pub target: Vec<u8>,
    /// The body.
    pub body: Body,
}

impl WireRequest {
    /// Maps an HTTP request.
    ///
    /// # Errors
    /// [`WireError::Target`] when the target cannot be encoded, [`WireError::TooLarge`].
    pub fn encode(req: &HttpRequest) -> Result<WireRequest, WireError> {
        let mut t = vec![0u8; 2 * (req.method.len() + req.path_and_query.len()) + 16];
        let n = route::encode_target(&req.method, &req.path_and_query, &mut t)
            .map_err(WireError::Target)?;
        t.truncate(n);
        Ok(WireRequest {
            target: t,
            body: Body::encode(req.content_type.as_deref(), &req.body)?,
        })
    }

    /// Options of the request: target, body format and `auth` (an [`opt::AUTH`] value).
    pub fn options<'a>(&'a self, auth: Option<&'a [u8]>) -> OptionList<'a, 12> {
        let mut l = OptionList::new();
        // INVARIANT: at most 3 options in a list of 12.
        let _ = l.push(Opt::bytes(opt::TARGET, &self.target));
        for o in self.body.options() {
            let _ = l.push(o);
        }
        if let Some(a) = auth {
            let _ = l.push(Opt::bytes(opt::AUTH, a));
        }
        l
    }
}

/// What `serve` makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRequest {
    /// The HTTP request.
    pub http: HttpRequest,
    /// The [`opt::AUTH`] value, if any.
    pub auth: Option<Auth>,
}

/// An [`opt::AUTH`] value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A token number the server knows.
    Number(u8),
    /// Register a token under a number.
    Register(u8, String),
}

impl Auth {
    /// Parses an option value.
    ///
    /// # Errors
    /// [`WireError::BadOption`] for an empty value or a token that is not UTF-8.
    pub fn parse(v: &[u8]) -> Result<Auth, WireError> {
        match lb::Auth::parse(v) {
            Ok(lb::Auth::Number(n)) => Ok(Auth::Number(n)),
            Ok(lb::Auth::Register(n, t)) => Ok(Auth::Register(n, t.to_owned())),
            Err(_) => Err(WireError::BadOption(opt::AUTH)),
        }
    }

    /// The no_std form ([`lb::Auth`], the one encoding of both ends).
    pub fn as_lb(&self) -> lb::Auth<'_> {
        match self {
            Auth::Number(n) => lb::Auth::Number(*n),
            Auth::Register(n, t) => lb::Auth::Register(*n, t),
        }
    }

    /// The option value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let a = self.as_lb();
        let mut v = vec![0u8; a.len()];
        // INVARIANT: v has exactly a.len() bytes.
        let _ = a.write(&mut v);
        v
    }
}

/// Decodes a request (`serve` side).
///
/// # Errors
/// [`WireError`] for a missing or bad target, a bad body or option.
pub fn decode_request(options: &Options<'_>, payload: &[u8]) -> Result<DecodedRequest, WireError> {
    decode_request_with(&[], options, payload)
}

/// [`decode_request`] with the session strings of [`route::decode_target_with`].
///
/// # Errors
/// As [`decode_request`].
pub fn decode_request_with(
    session: &[&str],
    options: &Options<'_>,
    payload: &[u8],
) -> Result<DecodedRequest, WireError> {
    let target = options
        .first(opt::TARGET)
        .and_then(|o| o.as_bytes())
        .ok_or(WireError::NoTarget)?;
    let mut method = [0u8; 256];
    let mut out = vec![0u8; 8 * target.len() + 64];
    let (m, n) = loop {
        match route::decode_target_with(session, target, &mut method, &mut out) {
            Ok(r) => break r,
            Err(route::Error::BufferTooSmall) if out.len() < 1 << 16 => {
                out = vec![0u8; out.len() * 4]
            }
            Err(e) => return Err(WireError::Target(e)),
        }
    };
    let method = match m {
        route::Method::Other(l) => core::str::from_utf8(&method[..usize::from(l)])
            .map_err(|_| WireError::Target(route::Error::BadMethod))?
            .to_owned(),
        m => m.as_str().unwrap_or("GET").to_owned(),
    };
    let pq =
        core::str::from_utf8(&out[..n]).map_err(|_| WireError::Target(route::Error::BadText))?;
    let auth = match options.first(opt::AUTH).and_then(|o| o.as_bytes()) {
        Some(v) => Some(Auth::parse(v)?),
        None => None,
    };
    let (content_type, body) = Body::decode(options, payload)?;
    Ok(DecodedRequest {
        http: HttpRequest {
            method,
            path_and_query: pq.to_owned(),
            content_type,
            body,
        },
        auth,
    })
}

/// An HTTP response with the headers that matter to clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// Status.
    pub status: u16,
    /// Content-Type.
    pub content_type: Option<String>,
    /// Retry-After.
    pub retry_after: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A Matrix-style JSON error (`{"errcode":..,"error":..}`).
    pub fn matrix_error(status: u16, errcode: &str, error: &str) -> HttpResponse {
        let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
        HttpResponse {
            status,
            content_type: Some("application/json".to_owned()),
            body: body.into_bytes(),
            ..HttpResponse::default()
        }
    }
}

/// The CoAP code (and [`opt::STATUS`] value, when needed) of an HTTP status.
pub fn status_to_code(status: u16) -> (Code, Option<u16>) {
    lb::status_to_code(status)
}

/// The HTTP status of a CoAP response code and its options.
pub fn code_to_status(code: Code, options: &Options<'_>) -> u16 {
    lb::code_to_status(code, options.uint(opt::STATUS))
}

/// A response in link form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireResponse {
    /// Code.
    pub code: Code,
    /// [`opt::STATUS`], if the status is not the code.
    pub status: Option<u16>,
    /// Headers as (option, value).
    pub headers: Vec<(u16, String)>,
    /// Body.
    pub body: Body,
}

impl WireResponse {
    /// Maps an HTTP response.
    ///
    /// # Errors
    /// [`WireError::TooLarge`].
    pub fn encode(r: &HttpResponse) -> Result<WireResponse, WireError> {
        let (code, status) = status_to_code(r.status);
        let mut headers = Vec::new();
        for (n, v) in [
            (opt::RETRY_AFTER, &r.retry_after),
            (opt::LOCATION, &r.location),
            (opt::CONTENT_DISPOSITION, &r.content_disposition),
        ] {
            if let Some(v) = v {
                headers.push((n, v.clone()));
            }
        }
        Ok(WireResponse {
            code,
            status,
            headers,
            body: Body::encode(r.content_type.as_deref(), &r.body)?,
        })
    }

    /// Options of the response (without block options).
    pub fn options(&self) -> OptionList<'_, 12> {
        let mut l = OptionList::new();
        // INVARIANT: at most 6 options in a list of 12.
        for o in self.body.options() {
            let _ = l.push(o);
        }
        if let Some(s) = self.status {
            let _ = l.push(Opt::uint(opt::STATUS, u32::from(s)));
        }
        for (n, v) in &self.headers {
            let _ = l.push(Opt::str(*n, v));
        }
        l
    }
}

/// Decodes a response (tunnel side) whose whole body is `payload`.
///
/// # Errors
/// [`WireError`] for a bad body or option.
pub fn decode_response(
    code: Code,
    options: &Options<'_>,
    payload: &[u8],
) -> Result<HttpResponse, WireError> {
    let text = |n: u16| -> Result<Option<String>, WireError> {
        match options.first(n) {
            None => Ok(None),
            Some(o) => o
                .as_bytes()
                .and_then(|b| core::str::from_utf8(b).ok())
                .map(|s| Some(s.to_owned()))
                .ok_or(WireError::BadOption(n)),
        }
    };
    let (content_type, body) = Body::decode(options, payload)?;
    Ok(HttpResponse {
        status: code_to_status(code, options),
        content_type,
        retry_after: text(opt::RETRY_AFTER)?,
        location: text(opt::LOCATION)?,
        content_disposition: text(opt::CONTENT_DISPOSITION)?,
        body,
    })
}

/// The tunnel's side of access-token compression, per session.
///
/// A token is registered under a small number by sending `[n, token]` until a response to a
/// request that carried it arrives; from then on `[n]` is enough. Forget everything when the
/// session is re-established ([`TokenTable::reset`]).
#[derive(Debug, Default)]
pub struct TokenTable {
    numbers: BTreeMap<String, (u8, bool)>,
    next: u8,
}

impl TokenTable {
    /// The [`opt::AUTH`] value for `token`.
    pub fn auth_for(&mut self, token: &str) -> Auth {
        if let Some(&(n, acked)) = self.numbers.get(token) {
            return if acked {
                Auth::Number(n)
            } else {
                Auth::Register(n, token.to_owned())
            };
        }
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        // A number is reused after 256 tokens: the old holder must register again.
        self.numbers.retain(|_, v| v.0 != n);
        self.numbers.insert(token.to_owned(), (n, false));
        Auth::Register(n, token.to_owned())
    }

    /// A response to a request that carried `auth` arrived: the server knows the number.
    pub fn acknowledged(&mut self, auth: &Auth) {
        if let Auth::Register(n, t) = auth {
            if let Some(v) = self.numbers.get_mut(t) {
                if v.0 == *n {
                    v.1 = true;
                }
            }
        }
    }

    /// The server does not know `n` (it restarted): register it again.
    pub fn forget(&mut self, n: u8) {
        for v in self.numbers.values_mut() {
            if v.0 == n {
                v.1 = false;
            }
        }
    }

    /// The session was re-established: every number must be registered again.
    pub fn reset(&mut self) {
        for v in self.numbers.values_mut() {
            v.1 = false;
        }
    }
}

/// `serve`'s side: the tokens a session registered.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    tokens: BTreeMap<u8, String>,
}

impl TokenRegistry {
    /// Resolves an [`opt::AUTH`] value to the token (`None`: number unknown).
    pub fn resolve(&mut self, auth: &Auth) -> Option<String> {
        match auth {
            Auth::Register(n, t) => {
                self.tokens.insert(*n, t.clone());
                Some(t.clone())
            }
            Auth::Number(n) => self.tokens.get(n).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowband_codec::coap::{msg, MsgType, Repr, Token};

    fn emit(code: Code, opts: Options<'_>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        let n = msg::emit_message(
            MsgType::Con,
            code,
            0x1234,
            &Token::EMPTY,
            opts.iter(),
            payload,
            &mut out,
        )
        .unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn send_request_is_compact() {
        let req = HttpRequest {
            method: "PUT".into(),
            path_and_query: "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/t1"
                .into(),
            content_type: Some("application/json".into()),
            body: br#"{"msgtype":"m.text","body":"hi"}"#.to_vec(),
        };
        let w = WireRequest::encode(&req).unwrap();
        let auth = Auth::Number(3).to_bytes();
        let mut l = w.options(Some(&auth));
        let bytes = emit(Code::POST, l.as_options(), &w.body.bytes);
        // header 4, AUTH (delta 2, len 1) 2, target option, marker + packed body
        assert_eq!(&bytes[..6], &[0x40, 0x02, 0x12, 0x34, 0x21, 0x03]);
        assert!(bytes.len() < 60, "{} bytes: {bytes:02x?}", bytes.len());
        let p = Repr::parse(&bytes).unwrap();
        let d = decode_request(&p.options, p.payload).unwrap();
        assert_eq!(d.auth, Some(Auth::Number(3)));
        assert_eq!(d.http.method, "PUT");
        assert_eq!(d.http.path_and_query, req.path_and_query);
        assert_eq!(d.http.content_type.as_deref(), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&d.http.body).unwrap();
        assert_eq!(v, serde_json::json!({"msgtype":"m.text","body":"hi"}));
    }

    #[test]
    fn small_devices_get_plain_cbor() {
        // Repetitive enough that the packed form is deflated.
        let event = r#"{"type":"m.room.message","sender":"@alice:example.org","content":{"msgtype":"m.text","body":"hello"}}"#;
        let json = format!(r#"{{"chunk":[{}]}}"#, [event; 8].join(","));
        let b = Body::encode(Some("application/json"), json.as_bytes()).unwrap();
        assert_eq!(b.bytes[0], pack::DEFLATE_MARK);
        let plain = b.clone().into_plain().unwrap();
        let mut cbor = vec![0u8; json.len() * 2];
        let n = lowband_codec::cbor::encode_json(
            json.as_bytes(),
            &mut cbor,
            &lowband_codec::cbor::Limits::DEFAULT,
        )
        .unwrap();
        assert_eq!(plain.bytes, cbor[..n]);
        assert!(plain.bytes.len() > b.bytes.len());
        assert_eq!(plain.format, Format::Json);
        // Decodes to the same JSON either way; raw bodies are untouched.
        let (_, a) = Body::decode(&Options::NONE, &plain.bytes).unwrap();
        let (_, c) = Body::decode(&Options::NONE, &b.bytes).unwrap();
        assert_eq!(a, c);
        let raw = Body::encode(Some("image/png"), b"\x89PNG").unwrap();
        assert_eq!(raw.clone().into_plain().unwrap(), raw);
    }

    #[test]
    fn media_body_goes_raw_with_table_index() {
        let b = Body::encode(Some("image/png"), &[0x89, b'P', b'N', b'G']).unwrap();
        assert_eq!(b.format, Format::Index(5));
        assert_eq!(b.bytes, [0x89, b'P', b'N', b'G']);
        let o = b.options();
        let bytes = emit(Code::CONTENT, Options::List(&o), &b.bytes);
        assert_eq!(
            bytes,
            [0x40, 0x45, 0x12, 0x34, 0xc1, 0x05, 0xff, 0x89, b'P', b'N', b'G']
        );
        let p = Repr::parse(&bytes).unwrap();
        let (ct, body) = Body::decode(&p.options, p.payload).unwrap();
        assert_eq!(ct.as_deref(), Some("image/png"));
        assert_eq!(body, [0x89, b'P', b'N', b'G']);
    }

    #[test]
    fn unknown_content_type_as_text() {
        let b = Body::encode(Some("x/y"), b"ab").unwrap();
        let o = b.options();
        let bytes = emit(Code::CONTENT, Options::List(&o), &b.bytes);
        // option 16: delta 13 (ext 3), len 3
        assert_eq!(
            bytes,
            [0x40, 0x45, 0x12, 0x34, 0xd3, 0x03, b'x', b'/', b'y', 0xff, b'a', b'b']
        );
        let p = Repr::parse(&bytes).unwrap();
        assert_eq!(
            Body::decode(&p.options, p.payload).unwrap(),
            (Some("x/y".into()), b"ab".to_vec())
        );
    }

    #[test]
    fn no_content_type_and_empty_body() {
        let b = Body::encode(None, b"zz").unwrap();
        assert_eq!(b.format, Format::Index(0));
        let o = b.options();
        // uint 0 is an empty value
        assert_eq!(
            emit(Code::CONTENT, Options::List(&o), &b.bytes),
            [0x40, 0x45, 0x12, 0x34, 0xc0, 0xff, b'z', b'z']
        );
        let e = Body::encode(Some("application/json"), b"").unwrap();
        assert_eq!(e.format, Format::Empty);
        assert_eq!(Body::decode(&Options::NONE, &[]).unwrap(), (None, vec![]));
    }

    #[test]
    fn invalid_json_goes_raw() {
        let b = Body::encode(Some("application/json"), b"{nope").unwrap();
        assert_eq!(b.format, Format::Index(1));
    }

    #[test]
    fn statuses() {
        assert_eq!(status_to_code(200), (Code::new(2, 0), None));
        assert_eq!(status_to_code(404), (Code::new(4, 4), None));
        assert_eq!(status_to_code(429), (Code::new(4, 29), None));
        assert_eq!(status_to_code(502), (Code::new(5, 2), None));
        assert_eq!(status_to_code(302), (Code::CONTENT, Some(302)));
        assert_eq!(status_to_code(451), (Code::CONTENT, Some(451)));
        let r = WireResponse::encode(&HttpResponse {
            status: 302,
            location: Some("/x".into()),
            ..Default::default()
        })
        .unwrap();
        let mut l = r.options();
        let bytes = emit(r.code, l.as_options(), &r.body.bytes);
        // STATUS (18: delta 13 ext 5, len 2 = 0x012e), LOCATION (24: delta 6, len 2)
        assert_eq!(
            bytes,
            [0x40, 0x45, 0x12, 0x34, 0xd2, 0x05, 0x01, 0x2e, 0x62, b'/', b'x']
        );
        let p = Repr::parse(&bytes).unwrap();
        let h = decode_response(p.code, &p.options, p.payload).unwrap();
        assert_eq!(h.status, 302);
        assert_eq!(h.location.as_deref(), Some("/x"));
    }

    #[test]
    fn json_response_round_trip() {
        let r = HttpResponse::matrix_error(502, "M_UNKNOWN", "homeserver unreachable");
        let w = WireResponse::encode(&r).unwrap();
        assert_eq!(w.code, Code::new(5, 2));
        assert_eq!(w.body.format, Format::Json);
        let mut l = w.options();
        let bytes = emit(w.code, l.as_options(), &w.body.bytes);
        assert_eq!(&bytes[..5], &[0x40, 0xa2, 0x12, 0x34, 0xff]);
        let p = Repr::parse(&bytes).unwrap();
        let h = decode_response(p.code, &p.options, p.payload).unwrap();
        assert_eq!(h.status, 502);
        assert_eq!(h.content_type.as_deref(), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(v["errcode"], "M_UNKNOWN");
    }

    #[test]
    fn token_taken_from_header_or_query() {
        assert_eq!(
            take_token(Some("Bearer abc"), "/x?a=1"),
            (Some("abc".into()), "/x?a=1".into())
        );
        assert_eq!(
            take_token(None, "/x?a=1&access_token=tok&b=2"),
            (Some("tok".into()), "/x?a=1&b=2".into())
        );
        assert_eq!(
            take_token(None, "/x?access_token=tok"),
            (Some("tok".into()), "/x".into())
        );
        assert_eq!(take_token(None, "/x"), (None, "/x".into()));
    }

    #[test]
    fn token_numbers_until_acknowledged() {
        let mut t = TokenTable::default();
        let a = t.auth_for("syt_secret");
        assert_eq!(a.to_bytes(), b"\x00syt_secret");
        assert_eq!(t.auth_for("syt_secret"), a);
        t.acknowledged(&a);
        assert_eq!(t.auth_for("syt_secret").to_bytes(), [0]);
        assert_eq!(t.auth_for("other").to_bytes(), b"\x01other");
        t.reset();
        assert_eq!(t.auth_for("syt_secret"), a);
        let mut reg = TokenRegistry::default();
        assert_eq!(reg.resolve(&Auth::Number(0)), None);
        assert_eq!(reg.resolve(&a).as_deref(), Some("syt_secret"));
        assert_eq!(reg.resolve(&Auth::Number(0)).as_deref(), Some("syt_secret"));
        assert_eq!(Auth::parse(&[]), Err(WireError::BadOption(opt::AUTH)));
        assert_eq!(Auth::parse(&[7]), Ok(Auth::Number(7)));
    }
}
