//! The lowband application layer: how an HTTP exchange of the Matrix client-server API travels
//! as CoAP, in the parts both ends implement (the gateway's `wire` module, with `alloc`, and a
//! device's runner, without).
//!
//! - **Target.** Method, path and query in one Uri-Path option ([`opt::TARGET`]) as
//!   [`crate::route::encode_target`]; the CoAP method code is always POST.
//! - **Status.** HTTP status `c.dd` with `c` in {2, 4, 5} and `dd <= 31` is the CoAP code
//!   `c.dd`; any other status goes in [`opt::STATUS`] under 2.05 ([`status_to_code`],
//!   [`code_to_status`]).
//! - **Bodies.** JSON is packed ([`crate::pack`]) and carries no option.
//! - **Access token.** [`opt::AUTH`]: `[n, token...]` registers the token under `n` until a
//!   response to a request that carried it arrives; from then on `[n]` ([`Auth`]). A response
//!   code [`AUTH_UNKNOWN`] with an empty body means "number unknown, register again".
//!
//! Custom option numbers are even (elective, RFC 7252 §5.4.1) and small (one-byte option
//! deltas): <https://www.rfc-editor.org/rfc/rfc7252#section-5.4>.

use crate::coap::Code;

/// lowband's own CoAP option numbers (all elective).
pub mod opt {
    /// Access token: `[n]` (number `n` of a token the server already knows) or `[n, token...]`
    /// (register token under `n`). In a response (empty, with 4.12): number unknown, resend it.
    pub const AUTH: u16 = 2;
    /// Session alias definition `[slot, text...]` (repeatable): from then on the text is the
    /// byte `0xe0 + slot` in request targets ([`crate::route::encode_target_with`]). A server
    /// that does not hold a slot answers 4.12 with an empty `ALIAS`: define it again.
    pub const ALIAS: u16 = 8;
    /// A small device (no inflate, small receive buffers) tells the server with the request
    /// that registers its token: uint `szx`, "send me plain bodies (never deflated, see
    /// [`crate::pack`]), block-wise in blocks of at most 2^(4+szx) bytes" (RFC 7959 §2.2 SZX).
    /// It holds for the peer from then on; sent again whenever the token is registered again
    /// (a server that forgot the token forgot this too). 9 is unassigned in the CoAP registry
    /// and odd, so critical (RFC 7252 §5.4.1): a server that would not honour it refuses the
    /// request (4.02) rather than send deflated bodies the device cannot read; `serve` lists it
    /// in its endpoint's [`crate::coap::Config::extra_options`]. After AUTH (2) its header is
    /// one byte.
    pub const SMALL: u16 = 9;
    /// Uri-Path: the whole encoded target (RFC 7252 Uri-Path, binary here).
    pub const TARGET: u16 = 11;
    /// A federation request uses session aliases: empty, or the first number it defines + 1
    /// (see the gateway's `federation` module). In a 4.12 response (empty): an alias was
    /// unknown.
    pub const FED_ALIAS: u16 = 14;
    /// Content-Format: index into the gateway's content type table for a raw body.
    pub const FORMAT: u16 = 12;
    /// Content-Type as text, for a raw body whose type is not in the table.
    pub const CONTENT_TYPE: u16 = 16;
    /// HTTP status that is not representable as a CoAP code.
    pub const STATUS: u16 = 18;
    /// A federation request's `Authorization: X-Matrix ...` header, carried byte-identical
    /// (see the gateway's `federation::xmatrix_encode`); never an access token.
    pub const XMATRIX: u16 = 20;
    /// Retry-After header value.
    pub const RETRY_AFTER: u16 = 22;
    /// Block2 (RFC 7959).
    pub const BLOCK2: u16 = 23;
    /// Location header value.
    pub const LOCATION: u16 = 24;
    /// Content-Disposition header value.
    pub const CONTENT_DISPOSITION: u16 = 26;
    /// Block1 (RFC 7959).
    pub const BLOCK1: u16 = 27;
    /// Size2: total body size of a block-wise response.
    pub const SIZE2: u16 = 28;
    /// A response body kept by `serve` for block-wise fetching: its id (response), or which
    /// body a block request asks for (request).
    pub const BODY: u16 = 30;
    /// Tells concurrent block-wise uploads apart (a number chosen by the tunnel).
    pub const UPLOAD: u16 = 32;
    /// The device profile's operation ([`super::dev`]): one byte of operation and room slot,
    /// then its arguments. 13 is unassigned in the CoAP registry and odd, so critical
    /// (RFC 7252 §5.4.1): a server that does not speak the device profile refuses the request
    /// with 4.02 instead of ignoring the option. A server that does lists it in its endpoint's
    /// [`crate::coap::Config::extra_options`]. After Observe (6) its header is one byte.
    pub const DEVICE: u16 = 13;
}

pub mod dev;

/// Response code (4.12, with an empty body) for a request whose [`opt::AUTH`] number the
/// server does not know: register the token again.
pub const AUTH_UNKNOWN: Code = Code::new(4, 12);

/// The CoAP code (and [`opt::STATUS`] value, when needed) of an HTTP status.
pub fn status_to_code(status: u16) -> (Code, Option<u16>) {
    let (c, dd) = (status / 100, status % 100);
    if matches!(c, 2 | 4 | 5) && dd <= 31 {
        // INVARIANT: c <= 5 and dd <= 31 fit the code's 3 and 5 bits.
        (Code::new(c as u8, dd as u8), None)
    } else {
        (Code::CONTENT, Some(status))
    }
}

/// The HTTP status of a CoAP response code and its [`opt::STATUS`] value (if present).
pub fn code_to_status(code: Code, status_opt: Option<u32>) -> u16 {
    match status_opt {
        Some(s) => u16::try_from(s).unwrap_or(502),
        None => u16::from(code.class()) * 100 + u16::from(code.detail()),
    }
}

/// An [`opt::AUTH`] value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth<'a> {
    /// A token number the server knows.
    Number(u8),
    /// Register a token under a number.
    Register(u8, &'a str),
}

/// Why an [`opt::AUTH`] value did not parse or encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Empty value, or a token that is not UTF-8.
    Malformed,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl<'a> Auth<'a> {
    /// Parses an option value.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] for an empty value or a token that is not UTF-8.
    pub fn parse(v: &'a [u8]) -> Result<Self, AuthError> {
        match v.split_first() {
            None => Err(AuthError::Malformed),
            Some((&n, [])) => Ok(Auth::Number(n)),
            Some((&n, t)) => core::str::from_utf8(t)
                .map(|t| Auth::Register(n, t))
                .map_err(|_| AuthError::Malformed),
        }
    }

    /// The number either form carries.
    pub fn number(&self) -> u8 {
        match *self {
            Auth::Number(n) | Auth::Register(n, _) => n,
        }
    }

    /// Length of the option value.
    pub fn len(&self) -> usize {
        match self {
            Auth::Number(_) => 1,
            Auth::Register(_, t) => 1 + t.len(),
        }
    }

    /// Never empty (the number is always there); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the option value into `out`; returns its length.
    ///
    /// # Errors
    /// [`AuthError::BufferTooSmall`].
    pub fn write(&self, out: &mut [u8]) -> Result<usize, AuthError> {
        let n = self.len();
        let dst = out.get_mut(..n).ok_or(AuthError::BufferTooSmall)?;
        dst[0] = self.number();
        if let Auth::Register(_, t) = self {
            dst[1..].copy_from_slice(t.as_bytes());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_both_ways() {
        assert_eq!(status_to_code(200), (Code::new(2, 0), None));
        assert_eq!(status_to_code(429), (Code::new(4, 29), None));
        assert_eq!(status_to_code(302), (Code::CONTENT, Some(302)));
        assert_eq!(status_to_code(440), (Code::CONTENT, Some(440)));
        assert_eq!(code_to_status(Code::new(4, 4), None), 404);
        assert_eq!(code_to_status(Code::CONTENT, Some(302)), 302);
        assert_eq!(code_to_status(Code::CONTENT, Some(70_000)), 502);
        assert_eq!(code_to_status(Code::CONTENT, Some(u32::MAX)), 502);
    }

    #[test]
    fn auth_values() {
        let mut out = [0u8; 8];
        let n = Auth::Register(3, "syt_a").write(&mut out).unwrap();
        assert_eq!(&out[..n], b"\x03syt_a");
        assert_eq!(Auth::parse(&out[..n]), Ok(Auth::Register(3, "syt_a")));
        assert_eq!(Auth::parse(b"\x07"), Ok(Auth::Number(7)));
        assert_eq!(Auth::parse(b""), Err(AuthError::Malformed));
        assert_eq!(Auth::parse(b"\x01\xff"), Err(AuthError::Malformed));
        assert_eq!(
            Auth::Register(1, "longer than 8").write(&mut out),
            Err(AuthError::BufferTooSmall)
        );
        assert_eq!(Auth::Number(9).write(&mut out), Ok(1));
        assert_eq!(out[0], 9);
    }
}
