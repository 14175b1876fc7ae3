//! The link form of a body: lowband CBOR, deflated with a preset dictionary when that is shorter.
//!
//! Why: CBOR with the dictionary removes JSON's syntax and the common names; what remains
//! (user ids, event ids, server names, repeated structure) still compresses, but deflate only
//! pays on bodies big enough. So the choice is per message and the plain form costs nothing:
//!
//! ```text
//! packed = cbor                      first byte is never 0x1c (reserved in CBOR, RFC 8949 §3)
//!        | 0x1c || deflate(cbor)     raw RFC 1951 stream, preset dictionary dict::DEFLATE_DICT
//! ```
//!
//! The gateway compresses with flate2 (feature `std`; zlib backend for `set_dictionary`). The
//! device inflates without an allocator: miniz_oxide's core decompressor writes into the caller's
//! scratch buffer right after a copy of the preset dictionary (non-wrapping output buffer), so
//! back-references reach into the dictionary. Without `std`, [`pack`] emits the plain form
//! only. Both forms are accepted by [`unpack`] with the `inflate` feature; without it (a small
//! device: no miniz_oxide, no 14 KiB dictionary in flash, no inflate stack) a deflated body is
//! [`Error::Inflate`], and the device asks its gateway for plain bodies
//! ([`crate::lb::opt::SMALL`]).
use crate::cbor::{self, Limits};
use crate::dict::DEFLATE_DICT;
#[cfg(feature = "inflate")]
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
#[cfg(feature = "inflate")]
use miniz_oxide::inflate::TINFLStatus;

/// Whether this build inflates deflated bodies (feature `inflate`). A device built without it
/// must ask for plain bodies ([`crate::lb::opt::SMALL`]).
pub const INFLATE: bool = cfg!(feature = "inflate");

/// First byte of a deflated body (CBOR major type 0 with reserved additional information 28).
pub const DEFLATE_MARK: u8 = 0x1c;

/// Errors of packing and unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Transcoding failed.
    Cbor(cbor::Error),
    /// The deflate stream is corrupt or truncated.
    Inflate,
    /// The scratch buffer cannot hold the preset dictionary plus the inflated CBOR.
    ScratchTooSmall,
}

impl From<cbor::Error> for Error {
    fn from(e: cbor::Error) -> Self {
        Error::Cbor(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Cbor(e) => write!(f, "{e}"),
            Error::Inflate => f.write_str("corrupt deflate stream"),
            Error::ScratchTooSmall => f.write_str("scratch buffer too small"),
        }
    }
}

impl core::error::Error for Error {}

/// Scratch bytes [`unpack`] needs for a body whose CBOR is `cbor_len` bytes long.
pub const fn scratch_len(cbor_len: usize) -> usize {
    DEFLATE_DICT.len() + cbor_len
}

/// Packs a JSON body into its link form; returns the length written to `out`.
///
/// `out` must hold the plain CBOR (the deflated form is only chosen when shorter).
pub fn pack(json: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    let n = cbor::encode_json(json, out, &Limits::DEFAULT)?;
    #[cfg(feature = "std")]
    {
        if let Some(d) = deflate(&out[..n]) {
            if d.len() + 1 < n {
                out[0] = DEFLATE_MARK;
                out[1..1 + d.len()].copy_from_slice(&d);
                return Ok(1 + d.len());
            }
        }
    }
    Ok(n)
}

/// Raw deflate of `cbor` with the preset dictionary (`None` if compression failed).
#[cfg(feature = "std")]
pub fn deflate(cbor: &[u8]) -> Option<alloc::vec::Vec<u8>> {
    deflate_with(cbor, DEFLATE_DICT)
}

/// Raw deflate of `cbor` with a given preset dictionary (for measuring candidates).
#[cfg(feature = "std")]
pub fn deflate_with(cbor: &[u8], dict: &[u8]) -> Option<alloc::vec::Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).ok()?;
    }
    let mut v = alloc::vec::Vec::with_capacity(cbor.len() + 64);
    match c.compress_vec(cbor, &mut v, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => Some(v),
        _ => None,
    }
}

/// The CBOR of a packed body: `packed` itself, or inflated into `scratch` (which must hold
/// [`scratch_len`] bytes).
pub fn unpack_cbor<'a>(packed: &'a [u8], scratch: &'a mut [u8]) -> Result<&'a [u8], Error> {
    unpack_cbor_with(packed, scratch, DEFLATE_DICT)
}

/// [`unpack_cbor`] with a given preset dictionary.
///
/// Without the `inflate` feature, a deflated body is [`Error::Inflate`].
#[cfg(not(feature = "inflate"))]
pub fn unpack_cbor_with<'a>(
    packed: &'a [u8],
    _scratch: &'a mut [u8],
    _dict: &[u8],
) -> Result<&'a [u8], Error> {
    match packed.first() {
        Some(&DEFLATE_MARK) => Err(Error::Inflate),
        _ => Ok(packed),
    }
}

/// [`unpack_cbor`] with a given preset dictionary.
#[cfg(feature = "inflate")]
pub fn unpack_cbor_with<'a>(
    packed: &'a [u8],
    scratch: &'a mut [u8],
    dict: &[u8],
) -> Result<&'a [u8], Error> {
    match packed.split_first() {
        Some((&DEFLATE_MARK, stream)) => {
            let d = dict.len();
            scratch
                .get_mut(..d)
                .ok_or(Error::ScratchTooSmall)?
                .copy_from_slice(dict);
            let mut st = DecompressorOxide::new();
            let (status, _, written) = decompress(
                &mut st,
                stream,
                scratch,
                d,
                inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
            );
            match status {
                TINFLStatus::Done => Ok(&scratch[d..d + written]),
                TINFLStatus::HasMoreOutput => Err(Error::ScratchTooSmall),
                _ => Err(Error::Inflate),
            }
        }
        _ => Ok(packed),
    }
}

/// Unpacks a link-form body into JSON in `out`; `scratch` is needed for deflated bodies.
pub fn unpack(packed: &[u8], scratch: &mut [u8], out: &mut [u8]) -> Result<usize, Error> {
    let cbor = unpack_cbor(packed, scratch)?;
    Ok(cbor::decode_to_json(cbor, out, &Limits::DEFAULT)?)
}

/// [`pack`] into a fresh `Vec`.
#[cfg(feature = "alloc")]
pub fn pack_vec(json: &[u8]) -> Result<alloc::vec::Vec<u8>, Error> {
    let mut out = alloc::vec![0u8; json.len() * 3 + 16];
    let n = pack(json, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// [`unpack`] into a fresh `Vec`.
#[cfg(feature = "alloc")]
pub fn unpack_vec(packed: &[u8]) -> Result<alloc::vec::Vec<u8>, Error> {
    let mut cap = packed.len() * 8 + 1024;
    loop {
        let mut scratch = alloc::vec![0u8; DEFLATE_DICT.len() + cap];
        match unpack_cbor(packed, &mut scratch) {
            Ok(cbor) => return Ok(cbor::decode_vec(cbor, &Limits::DEFAULT)?),
            Err(Error::ScratchTooSmall) if cap < Limits::DEFAULT.max_input => cap *= 4,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_body_round_trips_within_18_bytes() {
        let mut out = [0u8; 64];
        let n = pack(br#"{"msgtype":"m.text","body":"Hello, world!"}"#, &mut out).unwrap();
        assert!(n <= 18, "{n}");
        // Plain form: map(2) msgtype m.text body "Hello, world!"; deflated: the 0x1c mark.
        assert!(out[0] == 0xa2 || out[0] == DEFLATE_MARK);
        let mut scratch = [0u8; scratch_len(18)];
        let mut json = [0u8; 64];
        let m = unpack(&out[..n], &mut scratch, &mut json).unwrap();
        assert_eq!(
            &json[..m],
            br#"{"msgtype":"m.text","body":"Hello, world!"}"#
        );
    }

    #[test]
    fn corrupt_stream_is_an_error() {
        let mut scratch = [0u8; 64 * 1024];
        let mut out = [0u8; 64];
        assert!(unpack(&[DEFLATE_MARK, 0xff, 0xff], &mut scratch, &mut out).is_err());
        assert!(unpack(&[DEFLATE_MARK], &mut scratch, &mut out).is_err());
    }
}
