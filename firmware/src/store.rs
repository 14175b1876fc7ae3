//! Power-fail-safe persistence of one record on two flash pages (A/B).
//!
//! Each save goes to the page that does *not* hold the newest record, so the previous record
//! survives until the new one is complete. A page holds:
//!
//! ```text
//! offset 0   magic "LBS1"  seq u32 LE  len u16 LE  fcs16 LE     12-byte header, written LAST
//! offset 12  payload (len bytes), padded with 0xFF to the write alignment
//! ```
//!
//! The FCS ([RFC 1662 §C.2](https://www.rfc-editor.org/rfc/rfc1662#appendix-C.2), the same as
//! the serial framing) covers `seq ‖ len ‖ payload`. The header is programmed after the payload:
//! a reset during a save leaves an erased or torn header, which fails the magic or the FCS, and
//! [`Store::open`] falls back to the other page. The newest valid page is the one with the
//! higher `seq`.

use lowband_codec::frame::crc;

use crate::board::Flash;

const MAGIC: [u8; 4] = *b"LBS1";
/// Bytes of page header before the payload.
pub const HEADER_LEN: usize = 12;

/// Why the store could not load or save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The flash reported an error.
    Flash(E),
    /// The flash has fewer than two pages, or pages too small for a header.
    Geometry,
    /// The record does not fit in a page (or a load buffer is too small for the stored one).
    TooLarge,
}

/// A record persisted on pages 0 and 1 of a [`Flash`].
///
/// # Call protocol
///
/// [`open`](Self::open) once at boot (scans both headers), then [`load`](Self::load) the newest
/// record and [`save`](Self::save) new ones. Each save costs one page erase.
#[derive(Debug)]
pub struct Store<F: Flash> {
    flash: F,
    /// Page (0 or 1) holding the newest valid record, its seq and length.
    newest: Option<(usize, u32, usize)>,
}

impl<F: Flash> Store<F> {
    /// Scans both pages and remembers which one holds the newest valid record.
    ///
    /// # Errors
    ///
    /// [`StoreError::Flash`] on a read error, [`StoreError::Geometry`] if the flash is unusable.
    pub fn open(mut flash: F) -> Result<Self, StoreError<F::Error>> {
        if flash.pages() < 2 || flash.page_size() < HEADER_LEN + F::WRITE_ALIGN {
            return Err(StoreError::Geometry);
        }
        let mut newest: Option<(usize, u32, usize)> = None;
        for page in 0..2 {
            if let Some((seq, len)) = Self::check(&mut flash, page)? {
                if newest.is_none_or(|(_, s, _)| seq > s) {
                    newest = Some((page, seq, len));
                }
            }
        }
        Ok(Store { flash, newest })
    }

    /// Largest record that fits.
    pub fn capacity(&self) -> usize {
        self.flash.page_size() - HEADER_LEN
    }

    /// Sequence number of the newest record (`None` if the store is empty).
    pub fn seq(&self) -> Option<u32> {
        self.newest.map(|(_, s, _)| s)
    }

    /// Copies the newest record into `buf`; returns its length, `None` if there is none.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooLarge`] if `buf` is shorter than the record.
    pub fn load(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StoreError<F::Error>> {
        let Some((page, _, len)) = self.newest else {
            return Ok(None);
        };
        let dst = buf.get_mut(..len).ok_or(StoreError::TooLarge)?;
        self.flash
            .read(page, HEADER_LEN, dst)
            .map_err(StoreError::Flash)?;
        Ok(Some(len))
    }

    /// Saves `record` as the newest, on the page not holding the current newest.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooLarge`] if the record exceeds [`capacity`](Self::capacity);
    /// [`StoreError::Flash`] on a flash error (the previous record is then still the newest).
    pub fn save(&mut self, record: &[u8]) -> Result<(), StoreError<F::Error>> {
        if record.len() > self.capacity() {
            return Err(StoreError::TooLarge);
        }
        let (page, seq) = match self.newest {
            Some((p, s, _)) => (1 - p, s.wrapping_add(1)),
            None => (0, 1),
        };
        let align = F::WRITE_ALIGN;
        self.flash.erase(page).map_err(StoreError::Flash)?;
        // Payload in whole aligned chunks; the last one padded with 0xFF (erased value).
        let whole = record.len() / align * align;
        if whole > 0 {
            self.flash
                .write(page, HEADER_LEN, &record[..whole])
                .map_err(StoreError::Flash)?;
        }
        if whole < record.len() {
            let mut last = [0xFFu8; 8];
            let rest = &record[whole..];
            last[..rest.len()].copy_from_slice(rest);
            self.flash
                .write(page, HEADER_LEN + whole, &last[..align])
                .map_err(StoreError::Flash)?;
        }
        let len = record.len() as u16; // INVARIANT: capacity() < page size, pages are small.
        let header = header(seq, len, record);
        self.flash
            .write(page, 0, &header)
            .map_err(StoreError::Flash)?;
        self.newest = Some((page, seq, record.len()));
        Ok(())
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// `Some((seq, len))` if `page` holds a valid record.
    fn check(flash: &mut F, page: usize) -> Result<Option<(u32, usize)>, StoreError<F::Error>> {
        let mut h = [0u8; HEADER_LEN];
        flash.read(page, 0, &mut h).map_err(StoreError::Flash)?;
        if h[..4] != MAGIC {
            return Ok(None);
        }
        let seq = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let len = usize::from(u16::from_le_bytes([h[8], h[9]]));
        let fcs = u16::from_le_bytes([h[10], h[11]]);
        if len > flash.page_size() - HEADER_LEN {
            return Ok(None);
        }
        let mut c = crc_fields(seq, len as u16);
        let mut chunk = [0u8; 32];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(chunk.len());
            flash
                .read(page, HEADER_LEN + off, &mut chunk[..n])
                .map_err(StoreError::Flash)?;
            c = chunk[..n].iter().fold(c, |c, &b| crc::update(c, b));
            off += n;
        }
        Ok((c ^ 0xFFFF == fcs).then_some((seq, len)))
    }
}

fn crc_fields(seq: u32, len: u16) -> u16 {
    seq.to_le_bytes()
        .iter()
        .chain(len.to_le_bytes().iter())
        .fold(crc::INIT, |c, &b| crc::update(c, b))
}

fn header(seq: u32, len: u16, record: &[u8]) -> [u8; HEADER_LEN] {
    let c = record
        .iter()
        .fold(crc_fields(seq, len), |c, &b| crc::update(c, b));
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&seq.to_le_bytes());
    h[8..10].copy_from_slice(&len.to_le_bytes());
    h[10..].copy_from_slice(&(c ^ 0xFFFF).to_le_bytes());
    h
}

/// A RAM flash with NOR semantics for tests: `write` ANDs, optional fault injection.
#[cfg(test)]
pub(crate) mod ram {
    use crate::board::Flash;

    #[derive(Debug)]
    pub struct RamFlash {
        pub pages: [[u8; 256]; 2],
        /// Operations left before every further write/erase fails (simulated reset).
        pub budget: Option<usize>,
        /// Bytes the failing write still programs (a torn write).
        pub torn: usize,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub struct PowerCut;

    impl RamFlash {
        pub fn new() -> Self {
            RamFlash {
                pages: [[0xFF; 256]; 2],
                budget: None,
                torn: 0,
            }
        }
        fn spend(&mut self) -> Result<(), PowerCut> {
            match &mut self.budget {
                Some(0) => Err(PowerCut),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    impl Flash for RamFlash {
        type Error = PowerCut;
        fn page_size(&self) -> usize {
            256
        }
        fn pages(&self) -> usize {
            2
        }
        fn read(&mut self, page: usize, offset: usize, buf: &mut [u8]) -> Result<(), PowerCut> {
            buf.copy_from_slice(&self.pages[page][offset..offset + buf.len()]);
            Ok(())
        }
        fn erase(&mut self, page: usize) -> Result<(), PowerCut> {
            self.spend()?;
            self.pages[page] = [0xFF; 256];
            Ok(())
        }
        fn write(&mut self, page: usize, offset: usize, data: &[u8]) -> Result<(), PowerCut> {
            assert_eq!(offset % Self::WRITE_ALIGN, 0, "unaligned offset");
            assert_eq!(data.len() % Self::WRITE_ALIGN, 0, "unaligned length");
            let n = if self.spend().is_err() {
                self.torn.min(data.len())
            } else {
                data.len()
            };
            for (d, s) in self.pages[page][offset..].iter_mut().zip(&data[..n]) {
                *d &= *s;
            }
            if n < data.len() {
                return Err(PowerCut);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ram::{PowerCut, RamFlash};
    use super::*;

    fn loaded(s: &mut Store<RamFlash>) -> Option<([u8; 256], usize)> {
        let mut buf = [0u8; 256];
        s.load(&mut buf).unwrap().map(|n| (buf, n))
    }

    #[test]
    fn empty_then_alternating_pages() {
        let mut s = Store::open(RamFlash::new()).unwrap();
        assert_eq!(s.capacity(), 244);
        assert!(loaded(&mut s).is_none());
        s.save(b"abcde").unwrap();
        s.save(b"second").unwrap();
        let f = s.into_inner();
        // First save on page 0 with seq 1; literal header bytes.
        assert_eq!(&f.pages[0][..10], b"LBS1\x01\x00\x00\x00\x05\x00");
        assert_eq!(&f.pages[0][12..20], b"abcde\xFF\xFF\xFF");
        assert_eq!(&f.pages[1][..10], b"LBS1\x02\x00\x00\x00\x06\x00");
        let mut s = Store::open(f).unwrap();
        assert_eq!(s.seq(), Some(2));
        let (buf, n) = loaded(&mut s).unwrap();
        assert_eq!(&buf[..n], b"second");
        // Third save overwrites page 0.
        s.save(b"3").unwrap();
        let mut s = Store::open(s.into_inner()).unwrap();
        let (buf, n) = loaded(&mut s).unwrap();
        assert_eq!((&buf[..n], s.seq()), (&b"3"[..], Some(3)));
    }

    #[test]
    fn corrupt_page_falls_back() {
        let mut s = Store::open(RamFlash::new()).unwrap();
        s.save(b"old").unwrap();
        s.save(b"new").unwrap();
        let mut f = s.into_inner();
        f.pages[1][13] ^= 0x01; // bit error in the payload of the newest
        let mut s = Store::open(f).unwrap();
        let (buf, n) = loaded(&mut s).unwrap();
        assert_eq!(&buf[..n], b"old");
        assert_eq!(s.seq(), Some(1));
    }

    #[test]
    fn reset_at_every_step_keeps_a_record() {
        // A save is: erase, payload writes, header write. Cut power before each of them, and
        // in the middle of the header write; the old record must survive every time.
        for budget in 0..4 {
            for torn in [0, 4, 8] {
                let mut s = Store::open(RamFlash::new()).unwrap();
                s.save(b"keep me").unwrap();
                let mut f = s.into_inner();
                f.budget = Some(budget);
                f.torn = torn;
                let mut s = Store::open(f).unwrap();
                let r = s.save(b"replacement!");
                let mut f = s.into_inner();
                f.budget = None;
                let mut s = Store::open(f).unwrap();
                let (buf, n) = loaded(&mut s).unwrap();
                if r.is_ok() {
                    assert_eq!(&buf[..n], b"replacement!", "budget {budget}");
                } else {
                    assert_eq!(r, Err(StoreError::Flash(PowerCut)));
                    assert_eq!(&buf[..n], b"keep me", "budget {budget} torn {torn}");
                }
            }
        }
    }

    #[test]
    fn limits() {
        let mut s = Store::open(RamFlash::new()).unwrap();
        assert_eq!(s.save(&[0u8; 245]), Err(StoreError::TooLarge));
        s.save(&[7u8; 244]).unwrap();
        let mut small = [0u8; 10];
        assert_eq!(s.load(&mut small), Err(StoreError::TooLarge));
    }
}
