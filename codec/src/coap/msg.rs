//! CoAP messages (RFC 7252 §3): heap-free parse and emit.
//!
//! [`Packet`] is a checked view of a datagram; [`Repr`] is its typed form, with options
//! referenced as slices of the input ([`Options::Wire`]) or given by the caller as a slice
//! of [`Opt`] ([`Options::List`]) for emitting. Nothing here allocates.
//! <https://www.rfc-editor.org/rfc/rfc7252#section-3>

use core::fmt;

/// The four CoAP message types (RFC 7252 §3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Confirmable: retransmitted until acknowledged.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement of a CON (may carry a piggybacked response).
    Ack,
    /// Reset: "I cannot process this message".
    Rst,
}

impl MsgType {
    /// From the 2-bit T field.
    pub fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Self::Con,
            1 => Self::Non,
            2 => Self::Ack,
            _ => Self::Rst,
        }
    }
    /// The 2-bit T field.
    pub fn bits(self) -> u8 {
        match self {
            Self::Con => 0,
            Self::Non => 1,
            Self::Ack => 2,
            Self::Rst => 3,
        }
    }
}

/// A CoAP code `c.dd` (RFC 7252 §3, §12.1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code(pub u8);

impl Code {
    /// 0.00: an empty message.
    pub const EMPTY: Code = Code(0x00);
    /// 0.01 GET.
    pub const GET: Code = Code(0x01);
    /// 0.02 POST.
    pub const POST: Code = Code(0x02);
    /// 0.03 PUT.
    pub const PUT: Code = Code(0x03);
    /// 0.04 DELETE.
    pub const DELETE: Code = Code(0x04);
    /// 0.05 FETCH (RFC 8132).
    pub const FETCH: Code = Code(0x05);
    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code::new(2, 2);
    /// 2.03 Valid.
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 2.31 Continue (RFC 7959 §2.9.1).
    pub const CONTINUE: Code = Code::new(2, 31);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.08 Request Entity Incomplete (RFC 7959 §2.9.2).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 5.04 Gateway Timeout.
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);

    /// `class.detail`.
    pub const fn new(class: u8, detail: u8) -> Self {
        Code((class << 5) | (detail & 0x1f))
    }
    /// The class (0 request, 2 success, 4 client error, 5 server error).
    pub fn class(self) -> u8 {
        self.0 >> 5
    }
    /// The detail.
    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }
    /// 0.00.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Class 0, detail != 0.
    pub fn is_request(self) -> bool {
        self.class() == 0 && self.0 != 0
    }
    /// Classes 2-5.
    pub fn is_response(self) -> bool {
        (2..=5).contains(&self.class())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

/// A token of 0 to 8 bytes (RFC 7252 §5.3.1).
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    /// The empty token.
    pub const EMPTY: Token = Token {
        len: 0,
        bytes: [0; 8],
    };

    /// A token from bytes; `None` if longer than 8.
    pub fn new(b: &[u8]) -> Option<Self> {
        if b.len() > 8 {
            return None;
        }
        let mut bytes = [0; 8];
        bytes[..b.len()].copy_from_slice(b);
        Some(Token {
            len: b.len() as u8,
            bytes,
        })
    }
    /// A token from a number, big-endian, with leading zero bytes removed (0 gives 1 byte).
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        let skip = (b.iter().take_while(|&&x| x == 0).count()).min(7);
        // INVARIANT: 8 - skip <= 8.
        Token::new(&b[skip..]).unwrap()
    }
    /// The token bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Zero-length?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Option numbers this crate knows (RFC 7252 §12.2, RFC 7641, RFC 7959, RFC 9175, RFC 7967).
pub mod opt {
    /// If-Match.
    pub const IF_MATCH: u16 = 1;
    /// Uri-Host.
    pub const URI_HOST: u16 = 3;
    /// ETag.
    pub const ETAG: u16 = 4;
    /// If-None-Match.
    pub const IF_NONE_MATCH: u16 = 5;
    /// Observe (RFC 7641).
    pub const OBSERVE: u16 = 6;
    /// Uri-Port.
    pub const URI_PORT: u16 = 7;
    /// Location-Path.
    pub const LOCATION_PATH: u16 = 8;
    /// Uri-Path.
    pub const URI_PATH: u16 = 11;
    /// Content-Format.
    pub const CONTENT_FORMAT: u16 = 12;
    /// Max-Age.
    pub const MAX_AGE: u16 = 14;
    /// Uri-Query.
    pub const URI_QUERY: u16 = 15;
    /// Accept.
    pub const ACCEPT: u16 = 17;
    /// Location-Query.
    pub const LOCATION_QUERY: u16 = 20;
    /// Block2 (RFC 7959).
    pub const BLOCK2: u16 = 23;
    /// Block1 (RFC 7959).
    pub const BLOCK1: u16 = 27;
    /// Size2 (RFC 7959).
    pub const SIZE2: u16 = 28;
    /// Proxy-Uri.
    pub const PROXY_URI: u16 = 35;
    /// Proxy-Scheme.
    pub const PROXY_SCHEME: u16 = 39;
    /// Size1.
    pub const SIZE1: u16 = 60;
    /// No-Response (RFC 7967).
    pub const NO_RESPONSE: u16 = 258;
    /// Request-Tag (RFC 9175).
    pub const REQUEST_TAG: u16 = 292;

    /// Critical options have an odd number (RFC 7252 §5.4.6).
    pub fn is_critical(n: u16) -> bool {
        n & 1 == 1
    }
    /// Options excluded from the cache key / "NoCacheKey" (RFC 7252 §5.4.6).
    pub fn is_no_cache_key(n: u16) -> bool {
        n & 0x1e == 0x1c
    }
    /// Options this crate understands: every one listed in this module.
    pub fn is_known(n: u16) -> bool {
        matches!(
            n,
            IF_MATCH
                | URI_HOST
                | ETAG
                | IF_NONE_MATCH
                | OBSERVE
                | URI_PORT
                | LOCATION_PATH
                | URI_PATH
                | CONTENT_FORMAT
                | MAX_AGE
                | URI_QUERY
                | ACCEPT
                | LOCATION_QUERY
                | BLOCK2
                | BLOCK1
                | SIZE2
                | PROXY_URI
                | PROXY_SCHEME
                | SIZE1
                | NO_RESPONSE
                | REQUEST_TAG
        )
    }
}

/// Why a datagram is not a CoAP message (RFC 7252 §3, §4.2 "message format error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the 4-byte header, or than the token length says.
    Truncated,
    /// Version is not 1: silently ignored (RFC 7252 §3).
    BadVersion,
    /// TKL 9-15 (a format error).
    BadTokenLength,
    /// Option delta or length nibble 15 without being a payload marker, or running past the end.
    BadOption,
    /// Option number above 65535.
    OptionNumberOverflow,
    /// Payload marker followed by a zero-length payload.
    EmptyPayload,
    /// Code 0.00 with a token, options or payload (RFC 7252 §4.1).
    NonEmptyEmpty,
    /// Code class 1, 6 or 7 (reserved).
    ReservedClass,
}

/// Why a message could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// A list of options is not sorted by number.
    OptionOrder,
    /// An option value is longer than 65804 bytes.
    OptionTooLong,
}

/// An option's value as given for emit: bytes, or a uint written in minimal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptValue<'a> {
    /// Opaque or string bytes.
    Bytes(&'a [u8]),
    /// A uint (RFC 7252 §3.2): big-endian, no leading zeros, 0 is empty.
    Uint(u32),
}

/// One option: number and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt<'a> {
    /// Option number.
    pub number: u16,
    /// Value.
    pub value: OptValue<'a>,
}

impl<'a> Opt<'a> {
    /// A bytes option.
    pub const fn bytes(number: u16, v: &'a [u8]) -> Self {
        Opt {
            number,
            value: OptValue::Bytes(v),
        }
    }
    /// A uint option.
    pub const fn uint(number: u16, v: u32) -> Self {
        Opt {
            number,
            value: OptValue::Uint(v),
        }
    }
    /// A string option.
    pub const fn str(number: u16, v: &'a str) -> Self {
        Opt {
            number,
            value: OptValue::Bytes(v.as_bytes()),
        }
    }
    /// The value interpreted as a uint, if it is at most 4 bytes.
    pub fn as_uint(&self) -> Option<u32> {
        match self.value {
            OptValue::Uint(v) => Some(v),
            OptValue::Bytes(b) => decode_uint(b),
        }
    }
    /// The value as bytes; `None` for a [`OptValue::Uint`].
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            OptValue::Bytes(b) => Some(b),
            OptValue::Uint(_) => None,
        }
    }
    pub(crate) fn encoded_value<'b>(&self, tmp: &'b mut [u8; 4]) -> &'b [u8]
    where
        'a: 'b,
    {
        match self.value {
            OptValue::Bytes(b) => b,
            OptValue::Uint(v) => {
                *tmp = v.to_be_bytes();
                let skip = tmp.iter().take_while(|&&x| x == 0).count();
                &tmp[skip..]
            }
        }
    }
}

/// Decode a CoAP uint of at most 4 bytes (leading zeros tolerated).
pub fn decode_uint(b: &[u8]) -> Option<u32> {
    if b.len() > 4 {
        return None;
    }
    Some(b.iter().fold(0u32, |a, &x| (a << 8) | x as u32))
}

/// Options of a [`Repr`]: encoded bytes borrowed from a datagram, or a sorted list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Options<'a> {
    /// Already-validated option bytes as on the wire (from [`Repr::parse`]).
    Wire(&'a [u8]),
    /// A list sorted by number (stable: repeated options keep their order).
    List(&'a [Opt<'a>]),
}

impl<'a> Options<'a> {
    /// No options.
    pub const NONE: Options<'static> = Options::List(&[]);

    /// Iterate over the options in order.
    pub fn iter(&self) -> OptIter<'a> {
        match *self {
            Options::Wire(b) => OptIter::Wire(WireIter { rest: b, last: 0 }),
            Options::List(l) => OptIter::List(l.iter()),
        }
    }
    /// The first option with `number`.
    pub fn first(&self, number: u16) -> Option<Opt<'a>> {
        self.iter().find(|o| o.number == number)
    }
    /// All options with `number`.
    pub fn all(&self, number: u16) -> impl Iterator<Item = Opt<'a>> {
        self.iter().filter(move |o| o.number == number)
    }
    /// The first option with `number` as uint.
    pub fn uint(&self, number: u16) -> Option<u32> {
        self.first(number).and_then(|o| o.as_uint())
    }
}

/// Iterator over options; see [`Options::iter`].
#[derive(Debug, Clone)]
pub enum OptIter<'a> {
    /// Over wire bytes.
    Wire(WireIter<'a>),
    /// Over a list.
    List(core::slice::Iter<'a, Opt<'a>>),
}

impl<'a> Iterator for OptIter<'a> {
    type Item = Opt<'a>;
    fn next(&mut self) -> Option<Opt<'a>> {
        match self {
            OptIter::Wire(w) => w.next().and_then(|r| r.ok()),
            OptIter::List(l) => l.next().copied(),
        }
    }
}

/// Iterator over encoded options; stops at the payload marker or the end.
#[derive(Debug, Clone)]
pub struct WireIter<'a> {
    rest: &'a [u8],
    last: u32,
}

impl<'a> WireIter<'a> {
    /// Bytes after the options (payload marker included), once iteration has ended.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

fn ext(nib: u8, rest: &mut &[u8]) -> Result<u32, ParseError> {
    match nib {
        0..=12 => Ok(nib as u32),
        13 => {
            let (&b, r) = rest.split_first().ok_or(ParseError::BadOption)?;
            *rest = r;
            Ok(b as u32 + 13)
        }
        14 => {
            if rest.len() < 2 {
                return Err(ParseError::BadOption);
            }
            let v = u16::from_be_bytes([rest[0], rest[1]]) as u32 + 269;
            *rest = &rest[2..];
            Ok(v)
        }
        _ => Err(ParseError::BadOption),
    }
}

impl<'a> Iterator for WireIter<'a> {
    type Item = Result<Opt<'a>, ParseError>;
    fn next(&mut self) -> Option<Self::Item> {
        let (&first, mut r) = self.rest.split_first()?;
        if first == 0xff {
            return None;
        }
        let res = (|| {
            let delta = ext(first >> 4, &mut r)?;
            let len = ext(first & 0x0f, &mut r)? as usize;
            let number = self.last + delta;
            if number > u16::MAX as u32 {
                return Err(ParseError::OptionNumberOverflow);
            }
            if r.len() < len {
                return Err(ParseError::BadOption);
            }
            let (v, r2) = r.split_at(len);
            self.last = number;
            self.rest = r2;
            Ok(Opt::bytes(number as u16, v))
        })();
        if res.is_err() {
            self.rest = &[];
        }
        Some(res)
    }
}

/// A checked view of a CoAP datagram (RFC 7252 §3). Fields are read lazily.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks beyond a 4-byte header; accessors to the header are then valid.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if shorter than 4 bytes.
    pub fn new_header_checked(buf: T) -> Result<Self, ParseError> {
        if buf.as_ref().len() < 4 {
            return Err(ParseError::Truncated);
        }
        Ok(Packet { buf })
    }
    /// Wrap after checking header, token length, every option and the payload marker.
    ///
    /// # Errors
    /// Any [`ParseError`].
    pub fn new_checked(buf: T) -> Result<Self, ParseError> {
        let p = Self::new_header_checked(buf)?;
        p.check()?;
        Ok(p)
    }
    fn check(&self) -> Result<(), ParseError> {
        let b = self.buf.as_ref();
        if self.version() != 1 {
            return Err(ParseError::BadVersion);
        }
        let tkl = (b[0] & 0x0f) as usize;
        if tkl > 8 {
            return Err(ParseError::BadTokenLength);
        }
        if b.len() < 4 + tkl {
            return Err(ParseError::Truncated);
        }
        let code = self.code();
        if matches!(code.class(), 1 | 6 | 7) {
            return Err(ParseError::ReservedClass);
        }
        let mut it = WireIter {
            rest: &b[4 + tkl..],
            last: 0,
        };
        for o in it.by_ref() {
            o?;
        }
        let rest = it.rest();
        if rest == [0xff] {
            return Err(ParseError::EmptyPayload);
        }
        if code.is_empty() && b.len() > 4 {
            return Err(ParseError::NonEmptyEmpty);
        }
        Ok(())
    }
    /// Version field (must be 1).
    pub fn version(&self) -> u8 {
        self.buf.as_ref()[0] >> 6
    }
    /// Message type.
    pub fn msg_type(&self) -> MsgType {
        MsgType::from_bits(self.buf.as_ref()[0] >> 4)
    }
    /// Code.
    pub fn code(&self) -> Code {
        Code(self.buf.as_ref()[1])
    }
    /// Message ID.
    pub fn message_id(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    /// Token (after [`Packet::new_checked`]).
    pub fn token(&self) -> Token {
        let b = self.buf.as_ref();
        let tkl = ((b[0] & 0x0f) as usize).min(8).min(b.len() - 4);
        // INVARIANT: tkl <= 8.
        Token::new(&b[4..4 + tkl]).unwrap()
    }
    /// The encoded options (after [`Packet::new_checked`]).
    pub fn options(&self) -> &[u8] {
        let (o, _) = self.split();
        o
    }
    /// The payload, empty if none (after [`Packet::new_checked`]).
    pub fn payload(&self) -> &[u8] {
        let (_, p) = self.split();
        p
    }
    fn split(&self) -> (&[u8], &[u8]) {
        split_static(self.buf.as_ref())
    }
    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

/// A CoAP message in typed form (RFC 7252 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// Message type.
    pub mtype: MsgType,
    /// Code.
    pub code: Code,
    /// Message ID.
    pub mid: u16,
    /// Token.
    pub token: Token,
    /// Options.
    pub options: Options<'a>,
    /// Payload (empty: no payload marker).
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// An empty message (ACK or RST) with `mid` (RFC 7252 §4.1).
    pub fn empty(mtype: MsgType, mid: u16) -> Self {
        Repr {
            mtype,
            code: Code::EMPTY,
            mid,
            token: Token::EMPTY,
            options: Options::NONE,
            payload: &[],
        }
    }

    /// Parse a datagram.
    ///
    /// # Errors
    /// Any [`ParseError`] (RFC 7252 §4.2/§4.3 say what to do with each: see `Endpoint`).
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        let p = Packet::new_checked(buf)?;
        let (o, payload) = split_static(buf);
        Ok(Repr {
            mtype: p.msg_type(),
            code: p.code(),
            mid: p.message_id(),
            token: p.token(),
            options: Options::Wire(o),
            payload,
        })
    }

    /// Bytes [`Repr::emit`] will write.
    ///
    /// # Errors
    /// As [`Repr::emit`], except for buffer size.
    pub fn buffer_len(&self) -> Result<usize, EmitError> {
        encoded_len(&self.token, self.options.iter(), self.payload)
    }

    /// Write into `out`, returning the length.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`], [`EmitError::OptionOrder`], [`EmitError::OptionTooLong`].
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        emit_message(
            self.mtype,
            self.code,
            self.mid,
            &self.token,
            self.options.iter(),
            self.payload,
            out,
        )
    }
}

fn encoded_len<'a>(
    token: &Token,
    opts: impl Iterator<Item = Opt<'a>>,
    payload: &[u8],
) -> Result<usize, EmitError> {
    let mut n = 4 + token.len();
    let mut last = 0u16;
    for o in opts {
        if o.number < last {
            return Err(EmitError::OptionOrder);
        }
        let mut tmp = [0; 4];
        let v = o.encoded_value(&mut tmp);
        if v.len() > 65804 {
            return Err(EmitError::OptionTooLong);
        }
        n += 1 + ext_len((o.number - last) as usize) + ext_len(v.len()) + v.len();
        last = o.number;
    }
    if !payload.is_empty() {
        n += 1 + payload.len();
    }
    Ok(n)
}

/// Emit a message from parts; `opts` must yield options sorted by number (see [`merge`]).
///
/// # Errors
/// [`EmitError::BufferTooSmall`], [`EmitError::OptionOrder`], [`EmitError::OptionTooLong`].
pub fn emit_message<'a, I: Iterator<Item = Opt<'a>> + Clone>(
    mtype: MsgType,
    code: Code,
    mid: u16,
    token: &Token,
    opts: I,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, EmitError> {
    let n = encoded_len(token, opts.clone(), payload)?;
    if out.len() < n {
        return Err(EmitError::BufferTooSmall);
    }
    out[0] = 0x40 | (mtype.bits() << 4) | token.len() as u8;
    out[1] = code.0;
    out[2..4].copy_from_slice(&mid.to_be_bytes());
    let mut i = 4;
    out[i..i + token.len()].copy_from_slice(token.as_bytes());
    i += token.len();
    let mut last = 0u16;
    for o in opts {
        let mut tmp = [0; 4];
        let v = o.encoded_value(&mut tmp);
        let d = (o.number - last) as usize;
        let hdr = i;
        i += 1;
        let dn = put_ext(d, out, &mut i);
        let ln = put_ext(v.len(), out, &mut i);
        out[hdr] = (dn << 4) | ln;
        out[i..i + v.len()].copy_from_slice(v);
        i += v.len();
        last = o.number;
    }
    if !payload.is_empty() {
        out[i] = 0xff;
        i += 1;
        out[i..i + payload.len()].copy_from_slice(payload);
        i += payload.len();
    }
    debug_assert_eq!(i, n);
    Ok(i)
}

/// Options of `base` without the numbers in `skip`, merged with the sorted `extra`
/// (on equal numbers `base` comes first). Heap-free; used to add Observe, Block or
/// Request-Tag options to a caller's options.
pub fn merge<'a, 'b>(base: Options<'a>, skip: &'b [u16], extra: &'b [Opt<'a>]) -> Merge<'a, 'b> {
    Merge {
        base: base.iter(),
        peeked: None,
        skip,
        extra,
    }
}

/// Iterator returned by [`merge`].
#[derive(Debug, Clone)]
pub struct Merge<'a, 'b> {
    base: OptIter<'a>,
    peeked: Option<Opt<'a>>,
    skip: &'b [u16],
    extra: &'b [Opt<'a>],
}

impl<'a> Iterator for Merge<'a, '_> {
    type Item = Opt<'a>;
    fn next(&mut self) -> Option<Opt<'a>> {
        if self.peeked.is_none() {
            self.peeked = self.base.by_ref().find(|o| !self.skip.contains(&o.number));
        }
        match (self.peeked, self.extra.first()) {
            (Some(a), Some(b)) if b.number < a.number => {
                self.extra = &self.extra[1..];
                Some(*b)
            }
            (Some(a), _) => {
                self.peeked = None;
                Some(a)
            }
            (None, Some(b)) => {
                self.extra = &self.extra[1..];
                Some(*b)
            }
            (None, None) => None,
        }
    }
}

fn split_static(b: &[u8]) -> (&[u8], &[u8]) {
    let start = (4 + (b[0] & 0x0f) as usize).min(b.len());
    let body = &b[start..];
    let mut it = WireIter {
        rest: body,
        last: 0,
    };
    for _ in it.by_ref() {}
    let rest = it.rest();
    let opt_len = body.len() - rest.len();
    (&body[..opt_len], rest.get(1..).unwrap_or(&[]))
}

fn ext_len(v: usize) -> usize {
    match v {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    }
}

fn put_ext(v: usize, out: &mut [u8], i: &mut usize) -> u8 {
    match v {
        0..=12 => v as u8,
        13..=268 => {
            out[*i] = (v - 13) as u8;
            *i += 1;
            13
        }
        _ => {
            out[*i..*i + 2].copy_from_slice(&((v - 269) as u16).to_be_bytes());
            *i += 2;
            14
        }
    }
}

/// A heap-free list of options for emit, capacity `N`, sorted on [`OptionList::as_options`].
#[derive(Debug, Clone, Default)]
pub struct OptionList<'a, const N: usize> {
    v: heapless::Vec<Opt<'a>, N>,
}

impl<'a, const N: usize> OptionList<'a, N> {
    /// Empty list.
    pub const fn new() -> Self {
        OptionList {
            v: heapless::Vec::new(),
        }
    }
    /// Add an option (any order); gives it back when full.
    ///
    /// # Errors
    /// The option, if the list is full.
    pub fn push(&mut self, o: Opt<'a>) -> Result<(), Opt<'a>> {
        self.v.push(o)
    }
    /// Remove every option with `number`.
    pub fn remove(&mut self, number: u16) {
        self.v.retain(|o| o.number != number);
    }
    /// Copy every option of `opts` for which `keep` says yes.
    ///
    /// # Errors
    /// The first option that did not fit.
    pub fn extend_from(
        &mut self,
        opts: Options<'a>,
        keep: impl Fn(u16) -> bool,
    ) -> Result<(), Opt<'a>> {
        for o in opts.iter().filter(|o| keep(o.number)) {
            self.push(o)?;
        }
        Ok(())
    }
    /// Stable-sort by number and view as [`Options`].
    pub fn as_options(&mut self) -> Options<'_> {
        // insertion sort: stable, no allocation, tiny N
        let s = &mut self.v[..];
        for i in 1..s.len() {
            let mut j = i;
            while j > 0 && s[j - 1].number > s[j].number {
                s.swap(j - 1, j);
                j -= 1;
            }
        }
        Options::List(&self.v[..])
    }
    /// Number of options.
    pub fn len(&self) -> usize {
        self.v.len()
    }
    /// No options?
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rfc_fig16() {
        let b = [
            0x40, 0x01, 0x7d, 0x34, 0xbb, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u',
            b'r', b'e',
        ];
        let r = Repr::parse(&b).unwrap();
        assert_eq!(r.mtype, MsgType::Con);
        assert_eq!(r.code, Code::GET);
        assert_eq!(r.mid, 0x7d34);
        assert!(r.token.is_empty());
        let o = r.options.first(opt::URI_PATH).unwrap();
        assert_eq!(o.as_bytes(), Some(&b"temperature"[..]));
        let mut out = [0u8; 32];
        assert_eq!(r.emit(&mut out), Ok(16));
        assert_eq!(&out[..16], &b[..]);
    }

    #[test]
    fn extended_delta_and_length() {
        // Size1 (60): delta 60 -> 13 + 47; value 300 bytes -> len 14 + 31
        let v = [0xaau8; 300];
        let opts = [Opt::uint(opt::OBSERVE, 0), Opt::bytes(opt::SIZE1 + 300, &v)];
        let r = Repr {
            mtype: MsgType::Non,
            code: Code::POST,
            mid: 1,
            token: Token::new(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap(),
            options: Options::List(&opts),
            payload: b"x",
        };
        let mut out = [0u8; 400];
        let n = r.emit(&mut out).unwrap();
        // header 4, token 8, observe 0 -> 0x60 (delta 6, len 0), then delta 354 -> 14, len 300 -> 14
        assert_eq!(&out[..4], &[0x58, 0x02, 0x00, 0x01]);
        assert_eq!(out[12], 0x60);
        assert_eq!(&out[13..18], &[0xee, 0x00, 0x55, 0x00, 0x1f]);
        assert_eq!(n, 12 + 1 + 5 + 300 + 2);
        let p = Repr::parse(&out[..n]).unwrap();
        let got: heapless::Vec<Opt, 4> = p.options.iter().collect();
        assert_eq!(got[0].number, 6);
        assert_eq!(got[0].as_uint(), Some(0));
        assert_eq!(got[1].number, 360);
        assert_eq!(got[1].as_bytes().unwrap().len(), 300);
        assert_eq!(p.payload, b"x");
    }

    #[test]
    fn bad_messages() {
        assert_eq!(Repr::parse(&[0x40, 0x01, 0]), Err(ParseError::Truncated));
        assert_eq!(
            Repr::parse(&[0x80, 0x01, 0, 0]),
            Err(ParseError::BadVersion)
        );
        assert_eq!(
            Repr::parse(&[0x49, 0x01, 0, 0]),
            Err(ParseError::BadTokenLength)
        );
        assert_eq!(
            Repr::parse(&[0x42, 0x01, 0, 0, 1]),
            Err(ParseError::Truncated)
        );
        assert_eq!(
            Repr::parse(&[0x40, 0x01, 0, 0, 0xff]),
            Err(ParseError::EmptyPayload)
        );
        assert_eq!(
            Repr::parse(&[0x40, 0x01, 0, 0, 0xf1, 0]),
            Err(ParseError::BadOption)
        );
        assert_eq!(
            Repr::parse(&[0x40, 0x01, 0, 0, 0x1f]),
            Err(ParseError::BadOption)
        );
        assert_eq!(
            Repr::parse(&[0x40, 0x01, 0, 0, 0x12, 0]),
            Err(ParseError::BadOption)
        );
        assert_eq!(
            Repr::parse(&[0x60, 0x00, 0, 0, 0xff, 1]),
            Err(ParseError::NonEmptyEmpty)
        );
        assert_eq!(
            Repr::parse(&[0x61, 0x00, 0, 0, 1]),
            Err(ParseError::NonEmptyEmpty)
        );
        assert_eq!(
            Repr::parse(&[0x40, 0x21, 0, 0]),
            Err(ParseError::ReservedClass)
        );
        // 65535 + 1 overflow: delta 14 with 0xffff -> 65804
        assert_eq!(
            Repr::parse(&[0x40, 0x01, 0, 0, 0xe0, 0xff, 0xff]),
            Err(ParseError::OptionNumberOverflow)
        );
    }

    #[test]
    fn option_list_sorts_stably() {
        let mut l: OptionList<'_, 4> = OptionList::new();
        l.push(Opt::str(opt::URI_QUERY, "a")).unwrap();
        l.push(Opt::str(opt::URI_PATH, "x")).unwrap();
        l.push(Opt::str(opt::URI_PATH, "y")).unwrap();
        let o = l.as_options();
        let mut out = [0u8; 32];
        let r = Repr {
            options: o,
            ..Repr::empty(MsgType::Con, 0)
        };
        let r = Repr {
            code: Code::GET,
            ..r
        };
        let n = r.emit(&mut out).unwrap();
        assert_eq!(
            &out[..n],
            &[0x40, 1, 0, 0, 0xb1, b'x', 0x01, b'y', 0x41, b'a']
        );
    }

    #[test]
    fn unsorted_list_rejected() {
        let opts = [Opt::uint(12, 0), Opt::uint(11, 0)];
        let r = Repr {
            options: Options::List(&opts),
            ..Repr::empty(MsgType::Con, 0)
        };
        assert_eq!(r.emit(&mut [0; 16]), Err(EmitError::OptionOrder));
    }
}
