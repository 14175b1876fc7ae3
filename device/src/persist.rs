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
//! writes the one not holding the newest valid record, so a power cut during a write leaves the
//! previous record readable; loading picks the valid record with the highest generation.
//!
//! The sync state's payload is postcard (<https://postcard.jamesmunns.com/wire-format>), written
//! with `postcard::to_slice` into the caller's buffer: no allocator.

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
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
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
    /// The boot counter reached `u32::MAX`.
    Exhausted,
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
        + 3 * U32_MAX
        + COUNTERS_MAX;

    /// Serialize into a record (generation 0) in `buf`; returns its length.
    pub fn save(&self, buf: &mut [u8]) -> Result<usize, PersistError> {
        self.save_generation(0, buf)
    }

    /// Serialize into a record with the given generation (see [`AbStore`]).
    pub fn save_generation(&self, generation: u32, buf: &mut [u8]) -> Result<usize, PersistError> {
        if buf.len() < HEADER_LEN + TRAILER_LEN {
            return Err(PersistError::BufferTooSmall);
        }
        let room = buf.len() - TRAILER_LEN;
        let len = postcard::to_slice(self, &mut buf[HEADER_LEN..room])
            .map_err(|_| PersistError::BufferTooSmall)?
            .len();
        seal(buf, KIND_SYNC_STATE, generation, len)
    }

    /// Read a record written by [`Self::save`]. The result has not begun a boot: call
    /// [`SyncState::begin_boot`] with the advanced boot counter before sending. Short room
    /// numbers are not restored (a new gateway session assigns them).
    ///
    /// The state is built on the stack (about `size_of::<Self>()` plus postcard's small
    /// frames); call it early at boot, or move the result into a `static`.
    pub fn restore(buf: &[u8]) -> Result<Self, PersistError> {
        let (_, payload) = open(buf, KIND_SYNC_STATE)?;
        Self::decode(payload)
    }

    fn decode(payload: &[u8]) -> Result<Self, PersistError> {
        let mut s: Self = postcard::from_bytes(payload).map_err(|_| PersistError::Decode)?;
        s.sanitize();
        Ok(s)
    }

    /// Save into the older page of `store`; `scratch` must hold [`Self::MAX_RECORD_LEN`] bytes.
    pub fn save_to<F: Flash>(
        &self,
        store: &mut AbStore<F>,
        scratch: &mut [u8],
    ) -> Result<(), StoreError<F::Error>> {
        if scratch.len() < Self::MAX_RECORD_LEN {
            return Err(StoreError::Persist(PersistError::BufferTooSmall));
        }
        store.store_with(KIND_SYNC_STATE, scratch, |gen, buf| {
            self.save_generation(gen, buf)
        })
    }

    /// Load the newest valid state from `store` (`scratch` of at least [`Self::MAX_RECORD_LEN`]
    /// bytes); `Ok(None)` if neither page holds one (first
    /// boot, or both pages bad: start with [`SyncState::new`]).
    pub fn load_from<F: Flash>(
        store: &mut AbStore<F>,
        scratch: &mut [u8],
    ) -> Result<Option<Self>, StoreError<F::Error>> {
        // A scratch too small to hold a valid record would make it look corrupt, and the
        // caller would start afresh over good data: refuse instead.
        if scratch.len() < Self::MAX_RECORD_LEN {
            return Err(StoreError::Persist(PersistError::BufferTooSmall));
        }
        match store.load(KIND_SYNC_STATE, scratch)? {
            None => Ok(None),
            Some(p) => Self::decode(p).map(Some).map_err(StoreError::Persist),
        }
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

/// Two flash pages (or page groups) reserved for one kind of record.
pub trait Flash {
    /// The driver's error.
    type Error: core::fmt::Debug;
    /// Fill `buf` from the start of `page` (`buf.len()` at most the page size).
    fn read(&mut self, page: Page, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Erase `page` and program `data` at its start. May be cut short by a power loss.
    fn write(&mut self, page: Page, data: &[u8]) -> Result<(), Self::Error>;
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

/// A/B record store over a [`Flash`]: writes alternate between the pages, reads take the
/// newest valid record.
///
/// Call protocol: [`AbStore::load`] (or any store call, which scans first) finds the current
/// page; [`AbStore::store_with`] writes the other page with generation + 1 and reads it back.
#[derive(Debug)]
pub struct AbStore<F> {
    flash: F,
    /// `None`: not scanned yet. `Some(None)`: no valid page. `Some(Some(p, g))`: newest.
    current: Option<Option<(Page, u32)>>,
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

    fn generation_of(
        &mut self,
        page: Page,
        kind: u8,
        scratch: &mut [u8],
    ) -> Result<Option<u32>, F::Error> {
        self.flash.read(page, scratch)?;
        Ok(open(scratch, kind).ok().map(|(g, _)| g))
    }

    fn scan(&mut self, kind: u8, scratch: &mut [u8]) -> Result<Option<(Page, u32)>, F::Error> {
        let a = self.generation_of(Page::A, kind, scratch)?;
        let b = self.generation_of(Page::B, kind, scratch)?;
        let cur = match (a, b) {
            (Some(a), Some(b)) if b > a => Some((Page::B, b)),
            (Some(a), _) => Some((Page::A, a)),
            (None, Some(b)) => Some((Page::B, b)),
            (None, None) => None,
        };
        self.current = Some(cur);
        Ok(cur)
    }

    /// The payload of the newest valid record of `kind`, read into `scratch` (which must hold
    /// the largest record); `None` if neither page is valid.
    pub fn load<'s>(
        &mut self,
        kind: u8,
        scratch: &'s mut [u8],
    ) -> Result<Option<&'s [u8]>, StoreError<F::Error>> {
        let Some((page, _)) = self.scan(kind, scratch).map_err(StoreError::Flash)? else {
            return Ok(None);
        };
        self.flash.read(page, scratch).map_err(StoreError::Flash)?;
        let (_, payload) = open(scratch, kind).map_err(StoreError::Persist)?;
        Ok(Some(payload))
    }

    /// Write a new record of `kind`: `encode(generation, scratch)` writes the whole record
    /// (e.g. with [`seal`]) and returns its length. The page holding the newest valid record
    /// is never touched.
    pub fn store_with(
        &mut self,
        kind: u8,
        scratch: &mut [u8],
        encode: impl FnOnce(u32, &mut [u8]) -> Result<usize, PersistError>,
    ) -> Result<(), StoreError<F::Error>> {
        let cur = match self.current {
            Some(c) => c,
            None => self.scan(kind, scratch).map_err(StoreError::Flash)?,
        };
        let (target, generation) = match cur {
            Some((p, g)) => (
                p.other(),
                g.checked_add(1)
                    .ok_or(StoreError::Persist(PersistError::Exhausted))?,
            ),
            None => (Page::A, 1),
        };
        let n = encode(generation, scratch).map_err(StoreError::Persist)?;
        self.flash
            .write(target, &scratch[..n])
            .map_err(StoreError::Flash)?;
        self.flash
            .read(target, scratch)
            .map_err(StoreError::Flash)?;
        match open(scratch, kind) {
            Ok((g, _)) if g == generation => {
                self.current = Some(Some((target, generation)));
                Ok(())
            }
            _ => Err(StoreError::Verify),
        }
    }
}

/// Scratch bytes a boot-counter record needs.
pub const BOOT_RECORD_LEN: usize = HEADER_LEN + 4 + TRAILER_LEN;

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
    /// Read the stored counter, persist the next value, return it.
    pub fn advance<F: Flash>(
        store: &mut AbStore<F>,
        floor: u32,
        scratch: &mut [u8],
    ) -> Result<Self, StoreError<F::Error>> {
        if scratch.len() < BOOT_RECORD_LEN {
            return Err(StoreError::Persist(PersistError::BufferTooSmall));
        }
        let scratch = &mut scratch[..BOOT_RECORD_LEN];
        let stored = match store.load(KIND_BOOT_COUNTER, scratch)? {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            Some(_) => return Err(StoreError::Persist(PersistError::Decode)),
            None => 0,
        };
        let value = stored
            .max(floor)
            .checked_add(1)
            .ok_or(StoreError::Persist(PersistError::Exhausted))?;
        store.store_with(KIND_BOOT_COUNTER, scratch, |gen, buf| {
            buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&value.to_le_bytes());
            seal(buf, KIND_BOOT_COUNTER, gen, 4)
        })?;
        Ok(Self { value })
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
        ];
        assert_eq!(n, HEADER_LEN + payload.len() + TRAILER_LEN);
        assert_eq!(&buf[..HEADER_LEN], &[1, KIND_SYNC_STATE, 0, 0, 0, 0, 17, 0]);
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + 17], &payload);
        let r = crate::DefaultSyncState::restore(&buf[..n]);
        assert_eq!(r.map(|r| (r.boot(), r.since().is_none())), Ok((1, true)));
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
