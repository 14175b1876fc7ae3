//! Block-wise transfer (RFC 7959): Block1/Block2 options, slicing and reassembly.
//!
//! Bodies larger than a link frame travel as numbered blocks of 16·2^SZX bytes. The endpoint
//! carries each block as an ordinary request/response; the helpers here slice bodies
//! ([`block_slice`]), reassemble them into memory the caller owns ([`Reassembly`]: a
//! `[u8; N]` for capacity in the type, or a `&mut [u8]`) and tell concurrent transfers apart
//! by a key over the request's options, Request-Tag included ([`transfer_key`], RFC 9175 §3).
//! <https://www.rfc-editor.org/rfc/rfc7959>

use super::msg::{opt, Code, Options};

/// A Block1 or Block2 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOpt {
    /// Block number (20 bits).
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: block size is 16 << szx (0..=6).
    pub szx: u8,
}

/// Why a block-wise step failed; [`BlockError::code`] gives the CoAP response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The body does not fit the reassembly buffer: 4.13 (RFC 7959 §2.9.3).
    TooLarge,
    /// A block arrived out of order or for a transfer not started: 4.08 (RFC 7959 §2.9.2).
    Incomplete,
    /// SZX 7, a number beyond 20 bits, a block offset past the body, or a short middle block:
    /// 4.02 Bad Option / 4.00.
    BadBlock,
}

impl BlockError {
    /// The response code a server answers with.
    pub fn code(self) -> Code {
        match self {
            BlockError::TooLarge => Code::REQUEST_ENTITY_TOO_LARGE,
            BlockError::Incomplete => Code::REQUEST_ENTITY_INCOMPLETE,
            BlockError::BadBlock => Code::BAD_OPTION,
        }
    }
}

impl BlockOpt {
    /// A block option.
    pub fn new(num: u32, more: bool, szx: u8) -> Self {
        BlockOpt { num, more, szx }
    }
    /// Block size in bytes.
    pub fn size(self) -> usize {
        16usize << self.szx.min(6)
    }
    /// Byte offset of this block.
    pub fn offset(self) -> usize {
        self.num as usize * self.size()
    }
    /// The option's uint value.
    pub fn to_uint(self) -> u32 {
        (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 7)
    }
    /// From the option's uint value.
    ///
    /// # Errors
    /// [`BlockError::BadBlock`] for SZX 7 (BERT, not used here) or a number over 20 bits.
    pub fn from_uint(v: u32) -> Result<Self, BlockError> {
        let szx = (v & 7) as u8;
        if szx == 7 || v >= 1 << 24 {
            return Err(BlockError::BadBlock);
        }
        Ok(BlockOpt {
            num: v >> 4,
            more: v & 8 != 0,
            szx,
        })
    }
    /// Read option `number` (Block1 or Block2) from `opts`.
    ///
    /// # Errors
    /// [`BlockError::BadBlock`] if present but malformed.
    pub fn from_options(opts: &Options<'_>, number: u16) -> Result<Option<Self>, BlockError> {
        match opts.first(number) {
            None => Ok(None),
            Some(o) => o
                .as_uint()
                .ok_or(BlockError::BadBlock)
                .and_then(Self::from_uint)
                .map(Some),
        }
    }
    /// The largest SZX whose blocks fit `room` bytes of payload (at least 0).
    pub fn szx_for(room: usize) -> u8 {
        let mut s = 6u8;
        while s > 0 && (16usize << s) > room {
            s -= 1;
        }
        s
    }
}

/// The block of `body` a request for `want` asks for, at most `16 << max_szx` bytes
/// (RFC 7959 §2.4: a server may answer with a smaller block than asked; the number is then
/// recomputed from the offset).
///
/// # Errors
/// [`BlockError::BadBlock`] if the block starts past the end of a non-empty body.
pub fn block_slice(
    body: &[u8],
    want: Option<BlockOpt>,
    max_szx: u8,
) -> Result<(BlockOpt, &[u8]), BlockError> {
    let want = want.unwrap_or(BlockOpt::new(0, false, max_szx));
    let szx = want.szx.min(max_szx);
    let size = 16usize << szx;
    let offset = want.offset();
    if offset > body.len() || (offset == body.len() && !body.is_empty()) {
        return Err(BlockError::BadBlock);
    }
    let num = (offset / size) as u32;
    let start = num as usize * size;
    let end = (start + size).min(body.len());
    Ok((BlockOpt::new(num, end < body.len(), szx), &body[start..end]))
}

/// A key telling block-wise transfers apart: FNV-1a over the code and every option except
/// Block1, Block2, Size1, Size2 and Observe (RFC 7959 §2.4, RFC 9175 §3.3: Request-Tag is
/// part of the key, so concurrent uploads to one resource stay apart).
pub fn transfer_key(code: Code, opts: &Options<'_>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    eat(code.0);
    for o in opts.iter() {
        if matches!(
            o.number,
            opt::BLOCK1 | opt::BLOCK2 | opt::SIZE1 | opt::SIZE2 | opt::OBSERVE
        ) {
            continue;
        }
        for b in o.number.to_be_bytes() {
            eat(b);
        }
        let mut tmp = [0u8; 4];
        let v = o.encoded_value(&mut tmp);
        eat(v.len() as u8);
        for &b in v {
            eat(b);
        }
    }
    h
}

/// What a block did to a [`Reassembly`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Stored (or a duplicate of the last block); more to come. Carries the block to
    /// acknowledge (Block1, 2.31 Continue) or the next one to ask for (Block2).
    More(BlockOpt),
    /// The body is complete: `len` bytes.
    Done(usize),
}

/// Reassembles one block-wise body into a buffer the caller owns (`[u8; N]` or `&mut [u8]`).
#[derive(Debug, Clone)]
pub struct Reassembly<B> {
    buf: B,
    len: usize,
    key: Option<u32>,
    done: bool,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Reassembly<B> {
    /// Idle reassembly over `buf`.
    pub fn new(buf: B) -> Self {
        Reassembly {
            buf,
            len: 0,
            key: None,
            done: false,
        }
    }
    /// The transfer in progress (or just completed), if any.
    pub fn key(&self) -> Option<u32> {
        self.key
    }
    /// Whether the last transfer completed (the buffer may be reused for another key).
    pub fn is_complete(&self) -> bool {
        self.done
    }
    /// Free for a new transfer: idle or completed.
    pub fn is_free(&self) -> bool {
        self.key.is_none() || self.done
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }
    /// The bytes received so far.
    pub fn body(&self) -> &[u8] {
        &self.buf.as_ref()[..self.len]
    }
    /// Forget the transfer.
    pub fn reset(&mut self) {
        self.len = 0;
        self.key = None;
        self.done = false;
    }
    /// Add block `blk` of transfer `key`. Block 0 starts (or restarts) a transfer; `size_hint`
    /// is Size1/Size2 if the peer sent it and lets an oversized body fail at once.
    ///
    /// # Errors
    /// [`BlockError::TooLarge`], [`BlockError::Incomplete`] (out of order, other transfer),
    /// [`BlockError::BadBlock`] (a middle block shorter than the block size).
    pub fn put(
        &mut self,
        key: u32,
        blk: BlockOpt,
        payload: &[u8],
        size_hint: Option<u32>,
    ) -> Result<Progress, BlockError> {
        if size_hint.is_some_and(|s| s as usize > self.capacity()) {
            if self.key == Some(key) {
                self.reset();
            }
            return Err(BlockError::TooLarge);
        }
        let off = blk.offset();
        if blk.more && payload.len() != blk.size() {
            return Err(BlockError::BadBlock);
        }
        if blk.num == 0 && !(self.key == Some(key) && self.len == payload.len() && !self.done) {
            self.reset();
            self.key = Some(key);
        } else if self.key != Some(key) {
            return Err(BlockError::Incomplete);
        }
        let end = off + payload.len();
        if end == self.len && off < self.len && end - off == payload.len() && !self.done {
            // duplicate of the block just stored (its ACK was lost)
            return Ok(Self::step(blk, end));
        }
        if self.done && end == self.len {
            return Ok(Progress::Done(self.len));
        }
        if off != self.len {
            return Err(BlockError::Incomplete);
        }
        if end > self.capacity() {
            self.reset();
            return Err(BlockError::TooLarge);
        }
        self.buf.as_mut()[off..end].copy_from_slice(payload);
        self.len = end;
        if !blk.more {
            self.done = true;
        }
        Ok(Self::step(blk, end))
    }
    fn step(blk: BlockOpt, end: usize) -> Progress {
        if blk.more {
            Progress::More(blk)
        } else {
            Progress::Done(end)
        }
    }
}

impl Progress {
    /// For a Block2 download: the Block2 option to ask for next (same size as received).
    pub fn next_block2(self) -> Option<BlockOpt> {
        match self {
            Progress::More(b) => Some(BlockOpt::new(b.num + 1, false, b.szx)),
            Progress::Done(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::msg::Opt;

    #[test]
    fn block_option_values() {
        // RFC 7959 §2.2: NUM=1, M=1, SZX=2 (64 B) -> 0x1a
        assert_eq!(BlockOpt::new(1, true, 2).to_uint(), 0x1a);
        assert_eq!(BlockOpt::from_uint(0x1a), Ok(BlockOpt::new(1, true, 2)));
        assert_eq!(BlockOpt::from_uint(0x07), Err(BlockError::BadBlock));
        assert_eq!(BlockOpt::new(0, false, 6).to_uint(), 6);
        assert_eq!(BlockOpt::szx_for(63), 1);
        assert_eq!(BlockOpt::szx_for(64), 2);
    }

    #[test]
    fn slicing_and_smaller_server_block() {
        let body = [7u8; 100];
        let (b, s) = block_slice(&body, None, 2).unwrap();
        assert_eq!((b, s.len()), (BlockOpt::new(0, true, 2), 64));
        let (b, s) = block_slice(&body, Some(BlockOpt::new(1, false, 2)), 2).unwrap();
        assert_eq!((b, s.len()), (BlockOpt::new(1, false, 2), 36));
        // client asks 1 KiB block 0; server only does 32 B
        let (b, s) = block_slice(&body, Some(BlockOpt::new(0, false, 6)), 1).unwrap();
        assert_eq!((b, s.len()), (BlockOpt::new(0, true, 1), 32));
        assert_eq!(
            block_slice(&body, Some(BlockOpt::new(2, false, 2)), 2),
            Err(BlockError::BadBlock)
        );
    }

    #[test]
    fn reassembly_order_duplicates_and_limits() {
        let mut r = Reassembly::new([0u8; 80]);
        let k = 1;
        assert_eq!(
            r.put(k, BlockOpt::new(1, true, 1), &[1; 32], None),
            Err(BlockError::Incomplete)
        );
        assert_eq!(
            r.put(k, BlockOpt::new(0, true, 1), &[1; 32], None),
            Ok(Progress::More(BlockOpt::new(0, true, 1)))
        );
        assert_eq!(
            r.put(k, BlockOpt::new(0, true, 1), &[1; 32], None),
            Ok(Progress::More(BlockOpt::new(0, true, 1)))
        );
        assert_eq!(
            r.put(2, BlockOpt::new(1, true, 1), &[2; 32], None),
            Err(BlockError::Incomplete)
        );
        assert_eq!(
            r.put(k, BlockOpt::new(1, true, 1), &[2; 32], None),
            Ok(Progress::More(BlockOpt::new(1, true, 1)))
        );
        assert_eq!(
            r.put(k, BlockOpt::new(2, true, 1), &[3; 32], None),
            Err(BlockError::TooLarge)
        );
        assert_eq!(
            r.put(k, BlockOpt::new(0, true, 1), &[1; 32], Some(81)),
            Err(BlockError::TooLarge)
        );
        r.put(k, BlockOpt::new(0, true, 1), &[1; 32], None).unwrap();
        assert_eq!(
            r.put(k, BlockOpt::new(1, false, 1), &[2; 5], None),
            Ok(Progress::Done(37))
        );
        assert_eq!(r.body().len(), 37);
        assert_eq!(
            r.put(k, BlockOpt::new(1, false, 1), &[2; 5], None),
            Ok(Progress::Done(37))
        );
    }

    #[test]
    fn request_tag_separates_transfers() {
        let a = [
            Opt::str(opt::URI_PATH, "up"),
            Opt::bytes(opt::REQUEST_TAG, &[1]),
        ];
        let b = [
            Opt::str(opt::URI_PATH, "up"),
            Opt::bytes(opt::REQUEST_TAG, &[2]),
        ];
        let a1 = [
            Opt::str(opt::URI_PATH, "up"),
            Opt::uint(opt::BLOCK1, 0x1a),
            Opt::bytes(opt::REQUEST_TAG, &[1]),
        ];
        let ka = transfer_key(Code::POST, &Options::List(&a));
        assert_ne!(ka, transfer_key(Code::POST, &Options::List(&b)));
        assert_eq!(ka, transfer_key(Code::POST, &Options::List(&a1)));
    }
}
