//! Flash persistence: checksummed records, A/B pages, the boot counter.
//!
//! A record is
//!
//! ```text
//! version u8 | kind u8 | generation u32 LE | len u16 LE | payload (len bytes) | crc32 LE
//! ```
//!
//! with CRC-32 (IEEE 802.3, the zlib/PNG one) over everything before it. Erased flash (0xFF)
//! fails the version check, a torn write fails the CRC. [`AbStore`] keeps two pages and always
//! erases and writes the one not holding the newest valid record, so a power cut during a save
//! leaves the previous record readable; loading picks the valid record with the highest
//! generation.
//!
//! The sync state's payload is postcard (<https://postcard.jamesmunns.com/wire-format>), no
//! allocator: [`SyncState::save`] / [`SyncState::restore`] work on a caller's buffer, and
//! [`SyncState::save_to`] streams the record to flash through a [`CHUNK_LEN`]-byte buffer
//! (postcard `serialize_with_flavor`), so periodic saves cost no record-sized RAM. Loading
//! needs the record contiguous: a scratch buffer once at boot, or nothing on memory-mapped
//! flash ([`AbStore::newest`], then `restore` on the mapped page).

use serde::Serialize;

use crate::outbox::{OUT_BODY_LEN, TXN_TEXT_LEN};
use crate::state::{
    SyncState, BODY_LEN, EVENT_ID_LEN, EVENT_TYPE_LEN, MSGTYPE_LEN, ROOM_ID_LEN, SINCE_LEN,
    USER_ID_LEN,
};
use crate::text::{postcard_max, varint_len};

const U16_MAX: usize = 3;
const U32_MAX: usize = 5;
const U64_MAX: usize = 10;
const EVENT_MAX: usize = U32_MAX
    + U64_MAX
    + postcard_max(EVENT_ID_LEN)
    + postcard_max(USER_ID_LEN)
    + postcard_max(EVENT_TYPE_LEN)
    + postcard_max(MSGTYPE_LEN)
    + postcard_max(BODY_LEN)
    + 1;
const INVITE_MAX: usize = postcard_max(ROOM_ID_LEN) + postcard_max(USER_ID_LEN) + 1;
// Txn id + command variant + the largest command (Message: room, type, content variant + bytes).
const OUTGOING_MAX: usize = 2 * U32_MAX
    + 1
    + postcard_max(ROOM_ID_LEN)
    + postcard_max(EVENT_TYPE_LEN)
    + 1
    + postcard_max(OUT_BODY_LEN);
const COUNTERS_MAX: usize = 9 * U16_MAX;
const _: () = assert!(TXN_TEXT_LEN < 128);

/// Record format version; bump when the payload layout of any kind changes.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// Bytes after the payload.
pub const TRAILER_LEN: usize = 4;

/// Record kind of a [`SyncState`].
pub const KIND_SYNC_STATE: u8 = 1;
/// Record kind of the boot counter.
pub const KIND_BOOT_COUNTER: u8 = 2;

/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320), bitwise: no table in flash or RAM.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

/// Incremental [`crc32`], for records streamed to or from flash in chunks.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Crc32 {
    /// Start.
    pub const fn new() -> Self {
        Self(!0)
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut crc = self.0;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        self.0 = crc;
    }
    /// The checksum of everything fed.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a record could not be written or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistError {
    /// The buffer is too small for the record.
    BufferTooSmall,
    /// Unknown format version (or erased flash).
    BadVersion,
    /// A record of another kind.
    WrongKind,
    /// Length field beyond the buffer, or checksum mismatch (torn or corrupt write).
    Corrupt,
    /// The payload did not decode (capacities of the reader smaller than the writer's).
    Decode,
    /// The boot counter (or a page generation) reached `u32::MAX`.
    Exhausted,
    /// The record does not fit the flash page.
    PageTooSmall,
    /// The flash's `WRITE_SIZE` is 0 or does not divide [`CHUNK_LEN`].
    WriteSize,
}

/// Write a record around a payload already placed at `buf[HEADER_LEN..HEADER_LEN + len]`;
/// returns the record length.
pub fn seal(buf: &mut [u8], kind: u8, generation: u32, len: usize) -> Result<usize, PersistError> {
    let len16 = u16::try_from(len).map_err(|_| PersistError::BufferTooSmall)?;
    let end = HEADER_LEN + len;
    if buf.len() < end + TRAILER_LEN {
        return Err(PersistError::BufferTooSmall);
    }
    buf[0] = FORMAT_VERSION;
    buf[1] = kind;
    buf[2..6].copy_from_slice(&generation.to_le_bytes());
    buf[6..8].copy_from_slice(&len16.to_le_bytes());
    let crc = crc32(&buf[..end]);
    buf[end..end + TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(end + TRAILER_LEN)
}

/// Check a record of `kind` at the start of `buf`; returns its generation and payload.
pub fn open(buf: &[u8], kind: u8) -> Result<(u32, &[u8]), PersistError> {
    if buf.len() < HEADER_LEN + TRAILER_LEN {
        return Err(PersistError::Corrupt);
    }
    if buf[0] != FORMAT_VERSION {
        return Err(PersistError::BadVersion);
    }
    let len = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
    let end = HEADER_LEN + len;
    if buf.len() < end + TRAILER_LEN {
        return Err(PersistError::Corrupt);
    }
    let crc = u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]);
    if crc != crc32(&buf[..end]) {
        return Err(PersistError::Corrupt);
    }
    // Kind is checked after the CRC so that garbage reports Corrupt, not WrongKind.
    if buf[1] != kind {
        return Err(PersistError::WrongKind);
    }
    let generation = u32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]);
    Ok((generation, &buf[HEADER_LEN..end]))
}

impl<
        const ROOMS: usize,
        const EVENTS: usize,
        const INVITES: usize,
        const OUTBOX: usize,
        const SEEN: usize,
    > SyncState<ROOMS, EVENTS, INVITES, OUTBOX, SEEN>
{
    /// Upper bound of the record of any state of this type (every slot and string full, every
    /// integer at its longest varint): the size of the scratch buffer and of a flash page.
    pub const MAX_RECORD_LEN: usize = HEADER_LEN
        + TRAILER_LEN
        + 1
        + postcard_max(SINCE_LEN)
        + varint_len(ROOMS)
        + ROOMS
            * (postcard_max(ROOM_ID_LEN)
                + 2 * U16_MAX
                + U32_MAX
                + varint_len(EVENTS)
                + EVENTS * EVENT_MAX)
        + varint_len(INVITES)
        + INVITES * INVITE_MAX
        + varint_len(OUTBOX)
        + OUTBOX * OUTGOING_MAX
        + varint_len(SEEN)
        + SEEN * U64_MAX
        + 4 * U32_MAX
        + COUNTERS_MAX
        + postcard_max(lowband_codec::session::CLIENT_EXPORT_LEN);

    /// Serialize into a record (generation 0) in `buf`; returns its length.
    pub fn save(&self, buf: &mut [u8]) -> Result<usize, PersistError> {
        self.save_generation(0, buf)
    }

    /// Serialize into a record with the given generation (see [`AbStore`]).
    pub fn save_generation(&self, generation: u32, buf: &mut [u8]) -> Result<usize, PersistError> {
        if buf.len() < HEADER_LEN + TRAILER_LEN {
            return Err(PersistError::BufferTooSmall);
        }
        let end = buf.len() - TRAILER_LEN;
        let mut out = SliceOut {
            buf: &mut buf[HEADER_LEN..end],
            pos: 0,
        };
        self.encode(&mut out)?;
        let len = out.pos;
        seal(buf, KIND_SYNC_STATE, generation, len)
    }

    /// Read a record written by [`Self::save`] into `self`, in place: the stack holds one
    /// event at a time, not a second state (a derived deserializer of the whole struct took
    /// about 20 KiB of stack on thumbv7m). On error `self` is left empty.
    ///
    /// The result has not begun a boot: call [`SyncState::begin_boot`] with the advanced boot
    /// counter before sending. Short room numbers are not restored (a new gateway session
    /// assigns them).
    pub fn restore_into(&mut self, buf: &[u8]) -> Result<(), PersistError> {
        match open(buf, KIND_SYNC_STATE) {
            Ok((_, payload)) => self.decode_into(payload),
            Err(e) => {
                self.clear(0);
                Err(e)
            }
        }
    }

    /// [`Self::restore_into`] a new value (convenient on hosts; on a device prefer
    /// `restore_into` a `static`, as the value is built on the stack).
    pub fn restore(buf: &[u8]) -> Result<Self, PersistError> {
        let mut s = Self::new(0);
        s.restore_into(buf)?;
        Ok(s)
    }

    /// Save into the older page of `store`, streamed: postcard writes through a
    /// [`CHUNK_LEN`]-byte buffer straight to flash, so saving needs no record-sized RAM.
    pub fn save_to<F: Flash>(&self, store: &mut AbStore<F>) -> Result<(), StoreError<F::Error>> {
        let mut size = SizeOut(0);
        self.encode(&mut size).map_err(StoreError::Persist)?;
        store.store_stream(KIND_SYNC_STATE, size.0, |w| {
            // Flash errors are kept in the writer and reported by `store_stream`.
            let _ = self.encode(w);
        })
    }

    /// Load the newest valid state from `store` into `self` (in place, see
    /// [`Self::restore_into`]); `Ok(false)` if neither page holds one (first boot, or both pages
    /// bad: `self` is then empty, call [`SyncState::begin_boot`]). `scratch` must hold the
    /// record ([`Self::MAX_RECORD_LEN`] always does); a smaller one is an error, never taken
    /// for a missing state. On memory-mapped flash, [`AbStore::newest`] and
    /// [`SyncState::restore_into`] on the mapped page need no scratch at all. On error `self`
    /// is left empty. Not inlined: its decoding temporaries stay out of the caller's frame
    /// (a device boots with a small stack).
    #[inline(never)]
    pub fn load_into<F: Flash>(
        &mut self,
        store: &mut AbStore<F>,
        scratch: &mut [u8],
    ) -> Result<bool, StoreError<F::Error>> {
        match store.load(KIND_SYNC_STATE, scratch) {
            Ok(Some(p)) => self
                .decode_into(p)
                .map(|()| true)
                .map_err(StoreError::Persist),
            Ok(None) => {
                self.clear(0);
                Ok(false)
            }
            Err(e) => {
                self.clear(0);
                Err(e)
            }
        }
    }

    /// [`Self::load_into`] a new value (host convenience; built on the stack).
    pub fn load_from<F: Flash>(
        store: &mut AbStore<F>,
        scratch: &mut [u8],
    ) -> Result<Option<Self>, StoreError<F::Error>> {
        let mut s = Self::new(0);
        Ok(s.load_into(store, scratch)?.then_some(s))
    }
}

/// Where [`SyncState`] encoding goes: one postcard item at a time.
pub(crate) trait Out {
    fn put<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PersistError>;
}

struct SliceOut<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out for SliceOut<'_> {
    fn put<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PersistError> {
        let rest = self
            .buf
            .get_mut(self.pos..)
            .ok_or(PersistError::BufferTooSmall)?;
        let n = postcard::to_slice(v, rest)
            .map_err(|_| PersistError::BufferTooSmall)?
            .len();
        self.pos += n;
        Ok(())
    }
}

struct SizeOut(usize);

impl Out for SizeOut {
    fn put<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PersistError> {
        let n = postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default())
            .map_err(|_| PersistError::BufferTooSmall)?;
        self.0 += n;
        Ok(())
    }
}

impl<F: Flash> Out for RecordWriter<'_, F> {
    fn put<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PersistError> {
        postcard::serialize_with_flavor(v, Sink(self)).map_err(|_| PersistError::BufferTooSmall)
    }
}

/// One of the two pages of an [`AbStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// First page.
    A,
    /// Second page.
    B,
}

impl Page {
    /// The other page.
    pub fn other(self) -> Self {
        match self {
            Page::A => Page::B,
            Page::B => Page::A,
        }
    }
}

/// Size of the buffer records are streamed through (on the stack, during a store or a scan).
pub const CHUNK_LEN: usize = 64;

/// Two flash pages (or page groups) reserved for one kind of record, in the shape of NOR
/// flash: erase a page to 0xFF, program aligned runs of bytes, read anywhere.
pub trait Flash {
    /// The driver's error.
    type Error: core::fmt::Debug;
    /// Program granularity: every `program` gets an offset and a length that are multiples of
    /// it (the last run is padded with 0xFF). Must divide [`CHUNK_LEN`].
    const WRITE_SIZE: usize = 1;
    /// Bytes in each page.
    fn page_len(&self) -> usize;
    /// Fill `buf` from `page` at `offset`.
    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Erase `page` (all bytes 0xFF). May be cut short by a power loss.
    fn erase(&mut self, page: Page) -> Result<(), Self::Error>;
    /// Program `data` at `offset` of an erased `page`. May be cut short by a power loss.
    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), Self::Error>;
}

impl<F: Flash + ?Sized> Flash for &mut F {
    type Error = F::Error;
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    fn page_len(&self) -> usize {
        (**self).page_len()
    }
    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(page, offset, buf)
    }
    fn erase(&mut self, page: Page) -> Result<(), Self::Error> {
        (**self).erase(page)
    }
    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), Self::Error> {
        (**self).program(page, offset, data)
    }
}

/// Why an [`AbStore`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The flash driver failed.
    Flash(E),
    /// Encoding, decoding or record checks failed.
    Persist(PersistError),
    /// Read-back after a write did not return the record written.
    Verify,
}

/// Where the newest valid record of a kind is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Page holding it.
    pub page: Page,
    /// Its generation.
    pub generation: u32,
    /// Whole record length (header, payload, CRC).
    pub len: usize,
}

/// Streams one record to flash: header, payload pushed by the caller, CRC; programs in
/// [`CHUNK_LEN`] runs.
#[derive(Debug)]
pub struct RecordWriter<'a, F: Flash> {
    flash: &'a mut F,
    page: Page,
    offset: usize,
    written: usize,
    buf: [u8; CHUNK_LEN],
    fill: usize,
    crc: Crc32,
    err: Option<F::Error>,
}

impl<F: Flash> RecordWriter<'_, F> {
    /// Append bytes to the record (after a flash error, further bytes are ignored).
    pub fn push(&mut self, mut data: &[u8]) {
        if self.err.is_some() {
            return;
        }
        self.crc.update(data);
        self.written += data.len();
        while !data.is_empty() {
            let n = (CHUNK_LEN - self.fill).min(data.len());
            self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == CHUNK_LEN {
                self.flush();
                if self.err.is_some() {
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.fill == 0 || self.err.is_some() {
            self.fill = 0;
            return;
        }
        let w = F::WRITE_SIZE.max(1);
        let padded = self.fill.div_ceil(w) * w;
        self.buf[self.fill..padded].fill(0xff);
        if let Err(e) = self
            .flash
            .program(self.page, self.offset, &self.buf[..padded])
        {
            self.err = Some(e);
        }
        self.offset += padded;
        self.fill = 0;
    }

    fn failed(&self) -> bool {
        self.err.is_some()
    }
}

/// postcard output flavor writing into a [`RecordWriter`].
struct Sink<'w, 'a, F: Flash>(&'w mut RecordWriter<'a, F>);

impl<F: Flash> postcard::ser_flavors::Flavor for Sink<'_, '_, F> {
    type Output = ();
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.push(data);
        if self.0.failed() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        Ok(())
    }
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A/B record store over a [`Flash`]: writes alternate between the pages, reads take the
/// newest valid record.
///
/// Call protocol: [`AbStore::newest`] / [`AbStore::load`] (or any store, which scans first)
/// finds the current page; [`AbStore::store_stream`] erases and writes the other page with
/// generation + 1 and verifies it by reading it back. The page holding the newest valid record
/// is never erased.
#[derive(Debug)]
pub struct AbStore<F> {
    flash: F,
    /// `None`: not scanned yet. `Some(None)`: no valid page. `Some(Some(found))`: newest.
    current: Option<Option<Found>>,
}

impl<F: Flash> AbStore<F> {
    /// Wrap a flash driver.
    pub fn new(flash: F) -> Self {
        Self {
            flash,
            current: None,
        }
    }

    /// The driver.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Unwrap the driver.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Check the record of `kind` on `page` by streaming it through the CRC: its generation and
    /// length, or `None` if the page holds no valid record of that kind.
    fn check(&mut self, page: Page, kind: u8) -> Result<Option<(u32, usize)>, F::Error> {
        let mut head = [0u8; HEADER_LEN];
        self.flash.read(page, 0, &mut head)?;
        if head[0] != FORMAT_VERSION || head[1] != kind {
            return Ok(None);
        }
        let len = usize::from(u16::from_le_bytes([head[6], head[7]]));
        let total = HEADER_LEN + len + TRAILER_LEN;
        if total > self.flash.page_len() {
            return Ok(None);
        }
        let mut crc = Crc32::new();
        crc.update(&head);
        let mut buf = [0u8; CHUNK_LEN];
        let mut off = HEADER_LEN;
        while off < HEADER_LEN + len {
            let n = (HEADER_LEN + len - off).min(CHUNK_LEN);
            self.flash.read(page, off, &mut buf[..n])?;
            crc.update(&buf[..n]);
            off += n;
        }
        let mut trailer = [0u8; TRAILER_LEN];
        self.flash.read(page, off, &mut trailer)?;
        if u32::from_le_bytes(trailer) != crc.finish() {
            return Ok(None);
        }
        let generation = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
        Ok(Some((generation, total)))
    }

    /// Find the newest valid record of `kind` (scanning both pages, no scratch needed).
    pub fn newest(&mut self, kind: u8) -> Result<Option<Found>, F::Error> {
        let a = self.check(Page::A, kind)?;
        let b = self.check(Page::B, kind)?;
        let found = |page, (generation, len)| Found {
            page,
            generation,
            len,
        };
        let cur = match (a, b) {
            (Some(a), Some(b)) if b.0 > a.0 => Some(found(Page::B, b)),
            (Some(a), _) => Some(found(Page::A, a)),
            (None, Some(b)) => Some(found(Page::B, b)),
            (None, None) => None,
        };
        self.current = Some(cur);
        Ok(cur)
    }

    /// The payload of the newest valid record of `kind`, read into `scratch`; `None` if neither
    /// page is valid. A `scratch` shorter than the record is an error.
    pub fn load<'s>(
        &mut self,
        kind: u8,
        scratch: &'s mut [u8],
    ) -> Result<Option<&'s [u8]>, StoreError<F::Error>> {
        let Some(found) = self.newest(kind).map_err(StoreError::Flash)? else {
            return Ok(None);
        };
        let buf = scratch
            .get_mut(..found.len)
            .ok_or(StoreError::Persist(PersistError::BufferTooSmall))?;
        self.flash
            .read(found.page, 0, buf)
            .map_err(StoreError::Flash)?;
        // Checked again in RAM: what is decoded is exactly what the CRC covered.
        let (_, payload) = open(buf, kind).map_err(StoreError::Persist)?;
        Ok(Some(payload))
    }

    /// Write a new record of `kind` with a payload of exactly `len` bytes, which `write` pushes
    /// into the [`RecordWriter`] (in any number of pieces).
    pub fn store_stream(
        &mut self,
        kind: u8,
        len: usize,
        write: impl FnOnce(&mut RecordWriter<'_, F>),
    ) -> Result<(), StoreError<F::Error>> {
        let perr = StoreError::Persist;
        if F::WRITE_SIZE == 0 || !CHUNK_LEN.is_multiple_of(F::WRITE_SIZE) {
            return Err(perr(PersistError::WriteSize));
        }
        let len16 = u16::try_from(len).map_err(|_| perr(PersistError::PageTooSmall))?;
        if HEADER_LEN + len + TRAILER_LEN > self.flash.page_len() {
            return Err(perr(PersistError::PageTooSmall));
        }
        let cur = match self.current {
            Some(c) => c,
            None => self.newest(kind).map_err(StoreError::Flash)?,
        };
        let (target, generation) = match cur {
            Some(f) => (
                f.page.other(),
                f.generation
                    .checked_add(1)
                    .ok_or(perr(PersistError::Exhausted))?,
            ),
            None => (Page::A, 1),
        };
        self.flash.erase(target).map_err(StoreError::Flash)?;
        let mut w = RecordWriter {
            flash: &mut self.flash,
            page: target,
            offset: 0,
            written: 0,
            buf: [0; CHUNK_LEN],
            fill: 0,
            crc: Crc32::new(),
            err: None,
        };
        let mut head = [FORMAT_VERSION, kind, 0, 0, 0, 0, 0, 0];
        head[2..6].copy_from_slice(&generation.to_le_bytes());
        head[6..8].copy_from_slice(&len16.to_le_bytes());
        w.push(&head);
        write(&mut w);
        if w.err.is_none() && w.written != HEADER_LEN + len {
            // The payload writer disagreed with its announced length: do not seal it.
            return Err(perr(PersistError::BufferTooSmall));
        }
        let crc = w.crc.finish();
        w.push(&crc.to_le_bytes());
        w.flush();
        if let Some(e) = w.err {
            return Err(StoreError::Flash(e));
        }
        match self.check(target, kind).map_err(StoreError::Flash)? {
            Some((g, _)) if g == generation => {
                self.current = Some(Some(Found {
                    page: target,
                    generation,
                    len: HEADER_LEN + len + TRAILER_LEN,
                }));
                Ok(())
            }
            _ => Err(StoreError::Verify),
        }
    }

    /// Write a new record of `kind` holding `payload`.
    pub fn store_bytes(&mut self, kind: u8, payload: &[u8]) -> Result<(), StoreError<F::Error>> {
        self.store_stream(kind, payload.len(), |w| w.push(payload))
    }
}

/// The boot number of this run, persisted before it is returned.
///
/// The rule: at every boot, [`BootCounter::advance`] writes `max(stored, floor) + 1` to flash
/// and reads it back **before** the first Noise handshake and before the first transaction id
/// of the boot. Ephemeral keys ([`crate::EphemeralRng`]) and transaction ids
/// ([`crate::TxnId`]) are unique per boot number, so a reboot never repeats them, even when the
/// previous boot crashed before saving anything else. If the write fails, the boot number must
/// not be used: retry or halt.
///
/// `floor` is the boot number found in the restored sync state ([`SyncState::boot`]): if the
/// counter pages are lost but the state survived, numbers still go up. The value is not `Clone`:
/// it is consumed by the one [`crate::EphemeralRng`] of the boot.
#[derive(Debug, PartialEq, Eq)]
pub struct BootCounter {
    value: u32,
}

impl BootCounter {
    /// Read the stored counter, persist the next value, return it. Needs no scratch buffer.
    pub fn advance<F: Flash>(
        store: &mut AbStore<F>,
        floor: u32,
    ) -> Result<Self, StoreError<F::Error>> {
        let mut rec = [0u8; HEADER_LEN + 4 + TRAILER_LEN];
        let stored = match store.load(KIND_BOOT_COUNTER, &mut rec)? {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            Some(_) => return Err(StoreError::Persist(PersistError::Decode)),
            None => 0,
        };
        let value = stored
            .max(floor)
            .checked_add(1)
            .ok_or(StoreError::Persist(PersistError::Exhausted))?;
        store.store_bytes(KIND_BOOT_COUNTER, &value.to_le_bytes())?;
        Ok(Self { value })
    }

    /// A counter value without flash (unit tests).
    #[cfg(test)]
    pub(crate) const fn for_test(value: u32) -> Self {
        Self { value }
    }

    /// The boot number.
    pub fn get(&self) -> u32 {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn empty_state_record_literal() {
        let s = crate::DefaultSyncState::new(1);
        let mut buf = [0u8; 64];
        let n = s.save(&mut buf).unwrap_or(0);
        let payload = [
            0, // since: None
            0, 0, 0, 0, // rooms, invites, outbox, seen: empty
            1, // next_seq
            1, // boot
            0, // txn_seq
            0, 0, 0, 0, 0, 0, 0, 0, 0, // counters
            0, // push_seq
            0, // session: none
        ];
        assert_eq!(n, HEADER_LEN + payload.len() + TRAILER_LEN);
        assert_eq!(&buf[..HEADER_LEN], &[1, KIND_SYNC_STATE, 0, 0, 0, 0, 19, 0]);
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + 19], &payload);
        let r = crate::DefaultSyncState::restore(&buf[..n]);
        assert_eq!(r.map(|r| (r.boot(), r.since().is_none())), Ok((1, true)));
    }

    #[test]
    fn state_payload_literal() {
        use crate::{Body, EventIn, RoomRef, SyncUpdate};
        let mut s = crate::DefaultSyncState::new(1);
        s.apply(SyncUpdate::Joined {
            room: "!a",
            short: Some(9),
        });
        s.apply(SyncUpdate::Event(EventIn {
            room: RoomRef::Short(9),
            event_id: "$e",
            sender: "@u",
            kind: "k",
            msgtype: Some("m"),
            body: Body::Text("hi"),
            ts: 1,
        }));
        assert!(s.send_text("!a", "yo").is_ok());
        let mut buf = [0u8; 128];
        let n = s.save(&mut buf).unwrap_or(0);
        let mut want = [0u8; 128];
        let mut w = 0;
        let mut put = |b: &[u8]| {
            want[w..w + b.len()].copy_from_slice(b);
            w += b.len();
        };
        put(&[0x00]); // since: None
        put(&[0x01, 0x02, b'!', b'a', 0x00, 0x00, 0x00]); // 1 room: id, counts, read 0
        put(&[0x01, 0x01, 0x01]); // 1 event: seq 1, ts 1
        put(&[0x02, b'$', b'e', 0x02, b'@', b'u', 0x01, b'k', 0x01, b'm']);
        put(&[0x02, b'h', b'i', 0x00]); // body, flags
        put(&[0x00]); // no invites
        put(&[0x01, 0x01, 0x00, 0x00, 0x02, b'!', b'a', 0x0e]); // 1 txn d1.0: Message to !a
        put(b"m.room.message");
        put(&[0x00, 0x02, b'y', b'o']); // Text "yo"
        put(&[0x00, 0x02, 0x01, 0x01]); // no seen; next_seq 2, boot 1, txn_seq 1
        put(&[0; 9]); // counters
        put(&[0]); // push_seq
        put(&[0]); // session: none
        assert_eq!(&buf[HEADER_LEN..n - TRAILER_LEN], &want[..w]);
        // And back, with the short number gone (session-local).
        let r = crate::DefaultSyncState::restore(&buf[..n]);
        let r = r.as_ref().ok();
        assert_eq!(r.and_then(|r| r.rooms()[0].short()), None);
        assert_eq!(r.map(|r| r.rooms()[0].events()[0].body()), Some(Some("hi")));
    }

    #[test]
    fn seal_layout_literal() {
        let mut buf = [0u8; 16];
        buf[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(b"hi");
        let n = seal(&mut buf, 7, 0x0102_0304, 2);
        assert_eq!(n, Ok(14));
        assert_eq!(&buf[..10], &[1, 7, 4, 3, 2, 1, 2, 0, b'h', b'i']);
        let crc = crc32(&buf[..10]).to_le_bytes();
        assert_eq!(&buf[10..14], &crc);
        assert_eq!(open(&buf, 7), Ok((0x0102_0304, &b"hi"[..])));
        assert_eq!(open(&buf, 6), Err(PersistError::WrongKind));
        buf[9] ^= 1;
        assert_eq!(open(&buf, 7), Err(PersistError::Corrupt));
        assert_eq!(open(&[0xff; 16], 7), Err(PersistError::BadVersion));
        // Length pointing past the buffer.
        let mut b2 = [1u8, 7, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(open(&b2, 7), Err(PersistError::Corrupt));
        b2[6] = 0;
        b2[7] = 0;
        assert_eq!(open(&b2, 7), Err(PersistError::Corrupt));
    }
}
