//! Fixed-capacity byte and text buffers with a one-byte length.
//!
//! `heapless::String<N>` carries a `usize` length (8 bytes on the host, 4 on Cortex-M, plus
//! padding); the sync state holds a few dozen short strings, so a `u8` length keeps the state
//! the same size on every target and saves a few hundred bytes of RAM. Capacities are at most
//! 255 bytes (checked at compile time).

use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Up to `N` bytes (`N <= 255`) stored inline, with a one-byte length.
#[derive(Clone, Copy)]
pub struct Bytes<const N: usize> {
    len: u8,
    buf: [u8; N],
}

impl<const N: usize> Bytes<N> {
    const CAP_OK: () = assert!(N <= 255, "Bytes<N>: N must be <= 255");

    /// Empty buffer.
    pub const fn new() -> Self {
        let () = Self::CAP_OK;
        Self {
            len: 0,
            buf: [0; N],
        }
    }

    /// Copy `data` in; `None` if it is longer than `N`.
    pub fn from_slice(data: &[u8]) -> Option<Self> {
        let mut b = Self::new();
        if data.len() > N {
            return None;
        }
        b.buf[..data.len()].copy_from_slice(data);
        // INVARIANT: data.len() <= N <= 255 (checked above and at compile time).
        b.len = data.len() as u8;
        Some(b)
    }

    /// The stored bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Number of stored bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity `N`.
    pub const fn capacity() -> usize {
        N
    }
}

impl<const N: usize> PartialEq for Bytes<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for Bytes<N> {}

impl<const N: usize> core::hash::Hash for Bytes<N> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl<const N: usize> Default for Bytes<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({:02x?})", self.as_slice())
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_slice())
    }
}

struct BytesVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for BytesVisitor<N> {
    type Value = Bytes<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {N} bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Bytes::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor::<N>)
    }
}

/// Up to `N` bytes (`N <= 255`) of UTF-8 text stored inline, with a one-byte length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Text<const N: usize>(Bytes<N>);

impl<const N: usize> Text<N> {
    /// Empty text.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// Copy `s` in exactly; `None` if it is longer than `N` bytes (used for identifiers, which
    /// are useless when cut).
    pub fn exact(s: &str) -> Option<Self> {
        Bytes::from_slice(s.as_bytes()).map(Self)
    }

    /// Copy `s` in, cut at the last UTF-8 character boundary that fits; the flag tells whether
    /// anything was cut.
    pub fn truncated(s: &str) -> (Self, bool) {
        let cut = floor_char_boundary(s, N);
        // INVARIANT: cut <= N, so from_slice cannot fail.
        let b = Bytes::from_slice(&s.as_bytes()[..cut]).unwrap_or_default();
        (Self(b), cut < s.len())
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        // The bytes only ever come from a &str cut at a char boundary, or from a deserializer
        // that checked them; an invalid sequence cannot be stored. Fall back to "" rather than
        // panic.
        core::str::from_utf8(self.0.as_slice()).unwrap_or("")
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<const N: usize> fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    /// Appends; fails (without writing anything) if `s` does not fit.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let old = self.len();
        let new = old.checked_add(s.len()).ok_or(fmt::Error)?;
        if new > N {
            return Err(fmt::Error);
        }
        self.0.buf[old..new].copy_from_slice(s.as_bytes());
        // INVARIANT: new <= N <= 255.
        self.0.len = new as u8;
        Ok(())
    }
}

impl<const N: usize> Text<N> {
    /// Appends `v` in decimal; fails (writing nothing) if it does not fit. No `core::fmt`:
    /// a firmware that formats its numbers this way links none of its machinery.
    pub fn push_u32(&mut self, v: u32) -> fmt::Result {
        let mut b = [0u8; 10];
        fmt::Write::write_str(self, decimal(v, &mut b))
    }

    /// Appends `b` as two hex digits (`upper`: `A`-`F`, else `a`-`f`); fails (writing
    /// nothing) if they do not fit. No `core::fmt`.
    pub fn push_hex2(&mut self, b: u8, upper: bool) -> fmt::Result {
        let h = hex2(b, upper);
        // INVARIANT: ASCII hex digits.
        fmt::Write::write_str(self, core::str::from_utf8(&h).unwrap_or("00"))
    }
}

/// `v` in decimal, written to the end of `buf`; the digits as a `str`. No `core::fmt`.
pub fn decimal(v: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        // INVARIANT: v % 10 < 10.
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // INVARIANT: ASCII digits only.
    core::str::from_utf8(&buf[i..]).unwrap_or("")
}

/// `b` as two hex digits (`upper`: `A`-`F`, else `a`-`f`).
pub fn hex2(b: u8, upper: bool) -> [u8; 2] {
    let digit = |n: u8| match n {
        0..=9 => b'0' + n,
        _ if upper => b'A' + n - 10,
        _ => b'a' + n - 10,
    };
    [digit(b >> 4), digit(b & 15)]
}

impl<const N: usize> PartialEq<str> for Text<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for Text<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> Serialize for Text<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

struct TextVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for TextVisitor<N> {
    type Value = Text<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string of at most {N} bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Text::exact(v).ok_or_else(|| E::invalid_length(v.len(), &self))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Text<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor::<N>)
    }
}

/// Bytes of the postcard varint encoding of `v` (LEB128, 7 bits a byte).
pub const fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Largest postcard encoding of a [`Text<N>`] or [`Bytes<N>`]: length varint + bytes.
pub const fn postcard_max(n: usize) -> usize {
    varint_len(n) + n
}

/// The largest `i <= max` that is a char boundary of `s` (`s.len()` if it all fits).
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncates_at_char_boundary() {
        // "é" is 2 bytes (c3 a9): 4 bytes fit "ab" + "é", 3 bytes only "ab" + nothing of "é".
        let (t, cut) = Text::<4>::truncated("abéc");
        assert_eq!(t.as_str(), "abé");
        assert!(cut);
        let (t, cut) = Text::<3>::truncated("abéc");
        assert_eq!(t.as_str(), "ab");
        assert!(cut);
        let (t, cut) = Text::<8>::truncated("abéc");
        assert_eq!(t.as_str(), "abéc");
        assert!(!cut);
        // A 4-byte char in a 3-byte buffer leaves nothing.
        let (t, cut) = Text::<3>::truncated("\u{1F600}");
        assert_eq!(t.as_str(), "");
        assert!(cut);
    }

    #[test]
    fn exact_rejects_long() {
        assert!(Text::<3>::exact("abcd").is_none());
        assert_eq!(Text::<4>::exact("abcd").map(|t| t.len()), Some(4));
    }

    #[test]
    fn write_is_all_or_nothing() {
        let mut t = Text::<5>::new();
        assert!(write!(t, "d{}", 12).is_ok());
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), "0");
        assert_eq!(decimal(u32::MAX, &mut b), "4294967295");
        assert_eq!(decimal(1_000_007, &mut b), "1000007");
        assert_eq!(hex2(0x0a, false), *b"0a");
        assert_eq!(hex2(0xf3, true), *b"F3");
        let mut u: Text<6> = Text::new();
        assert!(u.push_u32(42).is_ok() && u.push_hex2(0x7e, true).is_ok());
        assert_eq!(u.as_str(), "427E");
        assert!(u.push_u32(123).is_err());
        assert_eq!(u.as_str(), "427E");
        assert!(t.write_str("abc").is_err());
        assert_eq!(t.as_str(), "d12");
    }

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u32::MAX as usize), 5);
        assert_eq!(varint_len(u64::MAX as usize), 10);
        let t = Text::<200>::exact(core::str::from_utf8(&[b'x'; 200]).unwrap_or(""))
            .unwrap_or_default();
        assert_eq!(t.len(), 200);
        let mut buf = [0u8; 256];
        assert_eq!(
            postcard::to_slice(&t, &mut buf).map(|s| s.len()),
            Ok(postcard_max(200))
        );
    }

    #[test]
    fn postcard_bytes_are_length_prefixed() {
        let t = Text::<8>::exact("hi").unwrap_or_default();
        let mut buf = [0u8; 8];
        let out = postcard::to_slice(&t, &mut buf).map(|s| s.len());
        assert_eq!(out, Ok(3));
        assert_eq!(&buf[..3], &[0x02, b'h', b'i']);
        // Too long for the target capacity: an error, never a panic.
        let r: Result<Text<1>, _> = postcard::from_bytes(&buf[..3]);
        assert!(r.is_err());
        // Invalid UTF-8 rejected.
        let r: Result<Text<8>, _> = postcard::from_bytes(&[0x01, 0xff]);
        assert!(r.is_err());
        let b: Result<Bytes<4>, _> = postcard::from_bytes(&[0x02, 0xff, 0x00]);
        assert_eq!(b.map(|b| b.len()), Ok(2));
    }
}
