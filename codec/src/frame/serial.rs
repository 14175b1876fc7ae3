//! Byte-stream framing for serial links: COBS, a 16-bit FCS and `0x00` delimiters.
//!
//! # Wire format
//!
//! ```text
//! [0x00]  COBS( payload ‖ FCS16(payload) as 2 bytes little-endian )  0x00
//!  lead   code bytes replace every 0x00, so 0x00 only ever delimits   end
//! ```
//!
//! * COBS: Cheshire & Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM ToN 7(2), 1999. A run
//!   of 254 non-zero bytes is closed by code `0xFF` with no implied zero; the encoder omits the
//!   final empty block after such a run (the decoder accepts both forms).
//! * FCS: [RFC 1662 §C.2](https://www.rfc-editor.org/rfc/rfc1662#appendix-C.2), see [`super::crc`].
//!
//! Overhead per frame, exactly: `2 (FCS) + 1 (delimiter) + c (COBS code bytes) [+ 1 lead]`, where
//! `c = 1` while `payload + 2 <= 254`, i.e. **4 bytes** for payloads up to 252 bytes, 5 with the
//! leading delimiter. [`encoded_len`] gives the exact length of any frame.
//!
//! # Resynchronisation
//!
//! Because `0x00` never occurs inside an encoded frame, a receiver that lost its place (line
//! noise, dropped or inserted bytes, a reset peer) is back in step at the next `0x00`: the damaged
//! frame fails its FCS or its COBS structure and is dropped with a typed, counted
//! [`DeframeError`]. Empty frames (`0x00 0x00`) are idle fill and ignored, which is what makes the
//! optional leading delimiter free for the receiver: a sender that has been idle (and so may have
//! let noise onto the line) prefixes `0x00`, and the noise becomes its own (dropped) frame instead
//! of spoiling the next real one. Back-to-back frames need no lead: the previous frame's
//! delimiter already separates them.

use super::crc;

/// The frame delimiter, the only byte value that never appears inside an encoded frame.
pub const DELIMITER: u8 = 0x00;
/// Bytes of frame check sequence per frame.
pub const FCS_LEN: usize = 2;

/// Longest possible encoding of a `payload_len`-byte payload (COBS worst case).
///
/// Equals [`encoded_len`] for payloads of at most 252 bytes.
pub const fn max_encoded_len(payload_len: usize, lead: bool) -> usize {
    let l = payload_len + FCS_LEN;
    // One code byte per started run of 254 bytes; l >= 2 so the subtraction is safe.
    lead as usize + l + 1 + (l - 1) / 254 + 1
}

/// Exact encoded length of `payload`, including FCS, COBS code bytes and delimiter(s).
pub fn encoded_len(payload: &[u8], lead: bool) -> usize {
    let fcs = crc::fcs16(payload).to_le_bytes();
    let mut blocks = 0usize;
    let mut code = 1u8;
    let mut after_ff = false;
    let mut data = 0usize;
    for b in payload.iter().chain(fcs.iter()).copied() {
        if b == 0 {
            blocks += 1;
            code = 1;
            after_ff = false;
        } else {
            data += 1;
            code += 1;
            after_ff = false;
            if code == 0xFF {
                blocks += 1;
                code = 1;
                after_ff = true;
            }
        }
    }
    if !(code == 1 && after_ff) {
        blocks += 1;
    }
    lead as usize + blocks + data + 1
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// `out` is shorter than [`max_encoded_len`] of the payload.
    BufferTooSmall,
}

/// Encodes `payload` as one frame into `out` and returns the number of bytes written.
///
/// With `lead`, a `0x00` is written first so that a receiver drops any line noise received
/// since the previous frame as a separate frame; use it for the first frame after an idle
/// period, omit it for back-to-back frames (costs 1 byte, 80 ms at 100 bit/s).
///
/// # Errors
///
/// [`EncodeError::BufferTooSmall`] if `out.len() < max_encoded_len(payload.len(), lead)`.
pub fn encode(payload: &[u8], lead: bool, out: &mut [u8]) -> Result<usize, EncodeError> {
    if out.len() < max_encoded_len(payload.len(), lead) {
        return Err(EncodeError::BufferTooSmall);
    }
    let fcs = crc::fcs16(payload).to_le_bytes();
    let mut w = 0;
    if lead {
        out[w] = DELIMITER;
        w += 1;
    }
    let mut code_pos = w;
    w += 1;
    let mut code = 1u8;
    let mut after_ff = false;
    for b in payload.iter().chain(fcs.iter()).copied() {
        if b == 0 {
            out[code_pos] = code;
            code_pos = w;
            w += 1;
            code = 1;
            after_ff = false;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            after_ff = false;
            if code == 0xFF {
                out[code_pos] = code;
                code_pos = w;
                w += 1;
                code = 1;
                after_ff = true;
            }
        }
    }
    if code == 1 && after_ff {
        // The data ended with a full 254-byte run: drop the empty final block.
        w -= 1;
    } else {
        out[code_pos] = code;
    }
    out[w] = DELIMITER;
    Ok(w + 1)
}

/// Encodes a link packet as one frame of the packet framing: a packet whose first byte has
/// its top bit set (a Noise transport packet, or a fragment header) travels without FCS, any
/// other (handshake messages, rejects) with it. Read with [`Deframer::for_packets`].
///
/// The FCS guards integrity; a transport packet's AEAD tag already does that, and better
/// (RFC 8439 §2.8: Poly1305 rejects any change, a 16-bit CRC misses 1 in 65 536 damaged
/// frames), so on a packet link the CRC only costs 2 bytes a frame (160 ms at 100 bit/s).
/// Noise transport packets start with `1xxxxxxx` (see [`crate::noise::link`]), handshake
/// messages and rejects with `0xxxxxxx`, which is what makes the rule unambiguous. Damaged
/// transport packets reach the session layer and fail authentication there, counted as dropped.
///
/// # Errors
///
/// [`EncodeError::BufferTooSmall`] if `out.len() < max_encoded_len(packet.len(), lead)`.
pub fn encode_packet(packet: &[u8], lead: bool, out: &mut [u8]) -> Result<usize, EncodeError> {
    if packet.first().is_none_or(|b| b & 0x80 == 0) {
        return encode(packet, lead, out);
    }
    if out.len() < max_encoded_len(packet.len(), lead) {
        return Err(EncodeError::BufferTooSmall);
    }
    let mut w = 0;
    if lead {
        out[w] = DELIMITER;
        w += 1;
    }
    let mut code_pos = w;
    w += 1;
    let mut code = 1u8;
    let mut after_ff = false;
    for &b in packet {
        if b == 0 {
            out[code_pos] = code;
            code_pos = w;
            w += 1;
            code = 1;
            after_ff = false;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            after_ff = false;
            if code == 0xFF {
                out[code_pos] = code;
                code_pos = w;
                w += 1;
                code = 1;
                after_ff = true;
            }
        }
    }
    if code == 1 && after_ff {
        w -= 1;
    } else {
        out[code_pos] = code;
    }
    out[w] = DELIMITER;
    Ok(w + 1)
}

/// Why a received frame was dropped. The stream is back in sync at the next delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeframeError {
    /// The frame check sequence did not match: bit errors, or bytes lost or inserted.
    Crc,
    /// The frame decoded to more than the deframer's capacity (a lost delimiter, or garbage).
    TooLong,
    /// A delimiter arrived inside a COBS block: the frame was truncated or bytes were lost.
    Truncated,
    /// The frame was shorter than its FCS (typically line noise between frames).
    TooShort,
}

/// Counters of a [`Deframer`], for logs and link-quality metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeframeStats {
    /// Bytes fed in.
    pub bytes: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Frames dropped for [`DeframeError::Crc`].
    pub crc_errors: u64,
    /// Frames dropped for [`DeframeError::TooLong`].
    pub too_long: u64,
    /// Frames dropped for [`DeframeError::Truncated`].
    pub truncated: u64,
    /// Frames dropped for [`DeframeError::TooShort`].
    pub too_short: u64,
}

impl DeframeStats {
    /// All frames dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.crc_errors + self.too_long + self.truncated + self.too_short
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary: nothing but delimiters since the last frame.
    Idle,
    /// Decoding a frame.
    InFrame,
    /// Discarding the rest of an over-long frame until the next delimiter.
    Overflow,
}

/// Streaming receiver of serial frames with payloads of up to `N` bytes.
///
/// Decodes COBS on the fly (no second buffer); the last two decoded bytes wait in a small delay
/// line so the buffer holds exactly the payload, and the FCS register runs over every byte so the
/// check needs no look-back. Memory: `N` plus about 80 bytes (mostly counters).
///
/// # Call protocol
///
/// Either byte by byte (a UART interrupt handler):
///
/// ```
/// # use lowband_codec::frame::Deframer;
/// let mut d = Deframer::<64>::new();
/// for &b in &[0x05, b'h', b'i', 0x15, 0x5A, 0x00] {
///     if let Some(frame) = d.handle_byte(b) {
///         assert_eq!(frame, Ok(&b"hi"[..]));
///     }
/// }
/// ```
///
/// or with slices: [`handle_bytes`](Self::handle_bytes) consumes input up to and including the
/// end of the next frame and returns how many bytes it took; then [`poll_frame`](Self::poll_frame)
/// yields that frame (or its error) until the next `handle_*` call. Loop until the input is used:
///
/// ```
/// # use lowband_codec::frame::Deframer;
/// # let input = [0x05, b'h', b'i', 0x15, 0x5A, 0x00];
/// let mut d = Deframer::<64>::new();
/// let mut rest = &input[..];
/// while !rest.is_empty() {
///     let used = d.handle_bytes(rest);
///     rest = &rest[used..];
///     if let Some(Ok(frame)) = d.poll_frame() {
///         assert_eq!(frame, b"hi");
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Deframer<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Delay line of the last two decoded bytes (the FCS, once the frame ends).
    tail: [u8; 2],
    tail_len: u8,
    crc: u16,
    /// Code byte of the current COBS block; 0 before the first one.
    code: u8,
    /// Data bytes left in the current COBS block.
    remaining: u8,
    state: State,
    /// Outcome of the last `handle_bytes`, until polled.
    pending: Option<Result<(), DeframeError>>,
    stats: DeframeStats,
    /// Packet framing ([`encode_packet`]): frames starting with a byte `>= 0x80` have no FCS.
    packets: bool,
}

impl<const N: usize> Default for Deframer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Deframer<N> {
    /// A deframer at a frame boundary.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            tail: [0; 2],
            tail_len: 0,
            crc: crc::INIT,
            code: 0,
            remaining: 0,
            state: State::Idle,
            pending: None,
            stats: DeframeStats {
                bytes: 0,
                frames: 0,
                crc_errors: 0,
                too_long: 0,
                truncated: 0,
                too_short: 0,
            },
            packets: false,
        }
    }

    /// A deframer of the packet framing ([`encode_packet`]): a frame whose first byte has its
    /// top bit set carries no FCS.
    pub const fn for_packets() -> Self {
        let mut d = Self::new();
        d.packets = true;
        d
    }

    /// Largest payload this deframer accepts.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Counters since creation.
    pub fn stats(&self) -> DeframeStats {
        self.stats
    }

    /// Forgets any partial frame (e.g. after the link was reset); counters are kept.
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.pending = None;
        self.len = 0;
    }

    /// Feeds one byte; returns a frame (or why one was dropped) when `byte` ends one.
    ///
    /// The returned payload borrows the deframer and is valid until the next `handle_*` call.
    pub fn handle_byte(&mut self, byte: u8) -> Option<Result<&[u8], DeframeError>> {
        self.pending = None;
        match self.push(byte)? {
            Ok(()) => Some(Ok(&self.buf[..self.len])),
            Err(e) => Some(Err(e)),
        }
    }

    /// Feeds bytes up to and including the end of the next frame; returns how many were used.
    ///
    /// Call [`poll_frame`](Self::poll_frame) afterwards; a frame not polled before the next
    /// `handle_*` call is lost.
    #[must_use = "the input after the returned count has not been consumed"]
    pub fn handle_bytes(&mut self, input: &[u8]) -> usize {
        self.pending = None;
        for (i, &b) in input.iter().enumerate() {
            if let Some(ev) = self.push(b) {
                self.pending = Some(ev);
                return i + 1;
            }
        }
        input.len()
    }

    /// Takes the frame completed by the last [`handle_bytes`](Self::handle_bytes), if any.
    pub fn poll_frame(&mut self) -> Option<Result<&[u8], DeframeError>> {
        match self.pending.take()? {
            Ok(()) => Some(Ok(&self.buf[..self.len])),
            Err(e) => Some(Err(e)),
        }
    }

    fn push(&mut self, b: u8) -> Option<Result<(), DeframeError>> {
        self.stats.bytes += 1;
        if b == DELIMITER {
            let state = core::mem::replace(&mut self.state, State::Idle);
            return match state {
                State::Idle => None,
                State::Overflow => Some(self.fail(DeframeError::TooLong)),
                State::InFrame => Some(self.finish()),
            };
        }
        match self.state {
            State::Overflow => return None,
            State::Idle => {
                self.state = State::InFrame;
                self.len = 0;
                self.tail_len = 0;
                self.crc = crc::INIT;
                self.code = 0;
                self.remaining = 0;
            }
            State::InFrame => {}
        }
        if self.remaining == 0 {
            // A code byte: the previous block (unless a full 0xFF run or the first) ended in a 0.
            if self.code != 0 && self.code != 0xFF && !self.emit(0) {
                self.state = State::Overflow;
                return None;
            }
            self.code = b;
            self.remaining = b - 1;
        } else {
            self.remaining -= 1;
            if !self.emit(b) {
                self.state = State::Overflow;
            }
        }
        None
    }

    /// Appends a decoded byte; false if the payload would exceed `N`.
    fn emit(&mut self, b: u8) -> bool {
        self.crc = crc::update(self.crc, b);
        if self.tail_len < 2 {
            self.tail[usize::from(self.tail_len)] = b;
            self.tail_len += 1;
            return true;
        }
        let Some(slot) = self.buf.get_mut(self.len) else {
            return false;
        };
        *slot = self.tail[0];
        self.len += 1;
        self.tail = [self.tail[1], b];
        true
    }

    fn finish(&mut self) -> Result<(), DeframeError> {
        if self.remaining != 0 {
            return self.fail(DeframeError::Truncated);
        }
        let first = if self.len > 0 {
            self.buf[0]
        } else {
            self.tail[0]
        };
        if self.packets && self.tail_len > 0 && first & 0x80 != 0 {
            // No FCS: the delay line holds the packet's last bytes.
            let t = usize::from(self.tail_len);
            let Some(dst) = self.buf.get_mut(self.len..self.len + t) else {
                return self.fail(DeframeError::TooLong);
            };
            dst.copy_from_slice(&self.tail[..t]);
            self.len += t;
            self.stats.frames += 1;
            return Ok(());
        }
        if self.tail_len < 2 {
            return self.fail(DeframeError::TooShort);
        }
        if self.crc != crc::GOOD {
            return self.fail(DeframeError::Crc);
        }
        self.stats.frames += 1;
        Ok(())
    }

    fn fail(&mut self, e: DeframeError) -> Result<(), DeframeError> {
        self.len = 0;
        match e {
            DeframeError::Crc => self.stats.crc_errors += 1,
            DeframeError::TooLong => self.stats.too_long += 1,
            DeframeError::Truncated => self.stats.truncated += 1,
            DeframeError::TooShort => self.stats.too_short += 1,
        }
        Err(e)
    }
}

const _: () = assert!(core::mem::size_of::<Deframer<0>>() <= 96);

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(payload: &[u8], lead: bool) -> ([u8; 600], usize) {
        let mut out = [0u8; 600];
        let n = encode(payload, lead, &mut out).unwrap();
        assert_eq!(n, encoded_len(payload, lead));
        assert!(n <= max_encoded_len(payload.len(), lead));
        (out, n)
    }

    #[test]
    fn packet_framing_drops_the_fcs_of_transport_packets() {
        extern crate alloc;
        use alloc::{vec, vec::Vec};
        let mut out = [0u8; 32];
        // A transport packet (top bit set): COBS only.
        let n = encode_packet(&[0x85, 0x01, 0x00, 0x07], false, &mut out).unwrap();
        assert_eq!(&out[..n], &[0x03, 0x85, 0x01, 0x02, 0x07, 0x00]);
        let mut d = Deframer::<8>::for_packets();
        let mut got = None;
        for &b in &out[..n] {
            if let Some(f) = d.handle_byte(b) {
                got = Some(f.map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, Some(Ok(vec![0x85, 0x01, 0x00, 0x07])));
        // A handshake packet keeps its FCS, same as `encode`.
        let n = encode_packet(b"hi", true, &mut out).unwrap();
        assert_eq!(&out[..n], &[0x00, 0x05, b'h', b'i', 0x15, 0x5A, 0x00]);
        let mut got = None;
        for &b in &out[..n] {
            if let Some(f) = d.handle_byte(b) {
                got = Some(f.map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, Some(Ok(b"hi".to_vec())));
        // One-byte and capacity-sized transport packets.
        let n = encode_packet(&[0x90], false, &mut out).unwrap();
        assert_eq!(&out[..n], &[0x02, 0x90, 0x00]);
        let mut d1 = Deframer::<8>::for_packets();
        let r: Vec<_> = out[..n]
            .iter()
            .filter_map(|&b| d1.handle_byte(b).map(|f| f.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(r, vec![Ok(vec![0x90])]);
        let big = [0x99u8; 9];
        let n = encode_packet(&big, false, &mut out).unwrap();
        let r: Vec<_> = out[..n]
            .iter()
            .filter_map(|&b| d1.handle_byte(b).map(|f| f.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(r, vec![Err(DeframeError::TooLong)]);
        // A plain deframer still checks every FCS.
        let n = encode_packet(&[0x85, 0x01], false, &mut out).unwrap();
        let mut p = Deframer::<8>::new();
        let r: Vec<_> = out[..n]
            .iter()
            .filter_map(|&b| p.handle_byte(b).map(|f| f.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(r, vec![Err(DeframeError::Crc)]);
    }

    #[test]
    fn literal_hi() {
        // FCS16("hi") = 0x5A15, sent 15 5A; no zeros, one block of 4 data bytes: code 05.
        let (out, n) = enc(b"hi", false);
        assert_eq!(&out[..n], &[0x05, b'h', b'i', 0x15, 0x5A, 0x00]);
        let (out, n) = enc(b"hi", true);
        assert_eq!(&out[..n], &[0x00, 0x05, b'h', b'i', 0x15, 0x5A, 0x00]);
    }

    #[test]
    fn literal_with_zeros() {
        // payload 00 11 00, FCS16 = 0x4A85 sent 85 4A: code bytes replace the zeros.
        let (out, n) = enc(&[0x00, 0x11, 0x00], false);
        assert_eq!(&out[..n], &[0x01, 0x02, 0x11, 0x03, 0x85, 0x4A, 0x00]);
    }

    #[test]
    fn overhead_is_four_bytes_below_253() {
        for len in [0usize, 1, 10, 46, 100, 252] {
            let p = [0xA5u8; 252];
            assert_eq!(encoded_len(&p[..len], false), len + 4, "len {len}");
            assert_eq!(encoded_len(&p[..len], true), len + 5, "len {len}");
            assert_eq!(max_encoded_len(len, false), len + 4);
        }
        // 253 payload + 2 FCS = 255 data bytes: a second code byte.
        assert_eq!(max_encoded_len(253, false), 253 + 5);
    }

    #[test]
    fn full_run_has_no_trailing_block() {
        // 252 non-zero payload bytes + 2 FCS bytes (non-zero for this payload) = 254: FF run.
        let p = [0x11u8; 252];
        let fcs = crc::fcs16(&p).to_le_bytes();
        assert!(fcs[0] != 0 && fcs[1] != 0);
        let (out, n) = enc(&p, false);
        assert_eq!(n, 256);
        assert_eq!(out[0], 0xFF);
        assert_eq!(out[255], 0x00);
        // Decoder also accepts the standard form with an explicit empty final block.
        let mut std_form = [0u8; 257];
        std_form[..255].copy_from_slice(&out[..255]);
        std_form[255] = 0x01;
        let mut d = Deframer::<300>::new();
        let got = std_form
            .iter()
            .find_map(|&b| d.handle_byte(b).map(|r| r.map(|f| f.len())));
        assert_eq!(got, Some(Ok(252)));
    }

    #[test]
    fn decode_round_trip_bytewise() {
        let payload = [0x00, 0x00, 0xFF, 0x01, 0x00];
        let (out, n) = enc(&payload, true);
        let mut d = Deframer::<8>::new();
        let mut frames = 0;
        for &b in &out[..n] {
            if let Some(r) = d.handle_byte(b) {
                assert_eq!(r, Ok(&payload[..]));
                frames += 1;
            }
        }
        assert_eq!(frames, 1);
        assert_eq!(d.stats().frames, 1);
    }

    #[test]
    fn errors_are_typed_and_counted() {
        let mut d = Deframer::<4>::new();
        // Bit flip in "hi": FCS fails.
        let flipped = [0x05, b'h' ^ 0x01, b'i', 0x15, 0x5A, 0x00];
        assert_eq!(
            flipped
                .iter()
                .find_map(|&b| d.handle_byte(b).map(|r| r.err())),
            Some(Some(DeframeError::Crc))
        );
        // Truncated: block announces 4 data bytes, delimiter after 2.
        let trunc = [0x05, b'h', b'i', 0x00];
        assert_eq!(
            trunc
                .iter()
                .find_map(|&b| d.handle_byte(b).map(|r| r.err())),
            Some(Some(DeframeError::Truncated))
        );
        // Noise shorter than the FCS.
        let short = [0x02, 0x42, 0x00];
        assert_eq!(
            short
                .iter()
                .find_map(|&b| d.handle_byte(b).map(|r| r.err())),
            Some(Some(DeframeError::TooShort))
        );
        // Longer than capacity 4.
        let (out, n) = enc(b"hello", false);
        assert_eq!(
            out[..n]
                .iter()
                .find_map(|&b| d.handle_byte(b).map(|r| r.err())),
            Some(Some(DeframeError::TooLong))
        );
        // And then a good frame still decodes.
        let (out, n) = enc(b"ok", false);
        assert_eq!(
            out[..n]
                .iter()
                .find_map(|&b| d.handle_byte(b).map(|r| r.ok().map(|f| f.len()))),
            Some(Some(2))
        );
        let s = d.stats();
        assert_eq!(
            (s.crc_errors, s.truncated, s.too_short, s.too_long, s.frames),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(s.dropped(), 4);
    }

    #[test]
    fn handle_bytes_stops_after_each_frame() {
        let mut wire = [0u8; 32];
        let a = encode(b"a", false, &mut wire).unwrap();
        let b = encode(b"bc", true, &mut wire[a..]).unwrap();
        let wire = &wire[..a + b];
        let mut d = Deframer::<8>::new();
        let used = d.handle_bytes(wire);
        assert_eq!(used, a);
        assert_eq!(d.poll_frame(), Some(Ok(&b"a"[..])));
        assert_eq!(d.poll_frame(), None);
        let used2 = d.handle_bytes(&wire[used..]);
        assert_eq!(used2, b);
        assert_eq!(d.poll_frame(), Some(Ok(&b"bc"[..])));
    }

    #[test]
    fn encode_needs_room() {
        let mut out = [0u8; 5];
        assert_eq!(
            encode(b"hi", false, &mut out),
            Err(EncodeError::BufferTooSmall)
        );
    }
}
