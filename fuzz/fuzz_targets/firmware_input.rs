//! Fuzz what the firmware reads from outside: room commands, and a flash image (a worn or
//! half-written store) through the A/B store and the boot counter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_firmware::{count_boot, Command, Flash, Settings, Store};

const PAGE: usize = 256;

/// Two pages with NOR semantics (erase = 0xFF, write = AND), loaded from the fuzz input.
struct Image([[u8; PAGE]; 2]);

impl Flash for Image {
    type Error = ();
    fn page_size(&self) -> usize {
        PAGE
    }
    fn pages(&self) -> usize {
        2
    }
    fn read(&mut self, page: usize, offset: usize, buf: &mut [u8]) -> Result<(), ()> {
        buf.copy_from_slice(&self.0[page][offset..offset + buf.len()]);
        Ok(())
    }
    fn erase(&mut self, page: usize) -> Result<(), ()> {
        self.0[page] = [0xFF; PAGE];
        Ok(())
    }
    fn write(&mut self, page: usize, offset: usize, data: &[u8]) -> Result<(), ()> {
        assert_eq!((offset % 4, data.len() % 4), (0, 0), "unaligned write");
        for (d, s) in self.0[page][offset..offset + data.len()]
            .iter_mut()
            .zip(data)
        {
            *d &= *s;
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let (image, text) = data.split_at(data.len().min(2 * PAGE));
    let mut pages = [[0xFFu8; PAGE]; 2];
    for (i, b) in image.iter().enumerate() {
        pages[i / PAGE][i % PAGE] = *b;
    }

    // Store: whatever the image holds, a boot is counted and reads back after a "reboot".
    let mut store = Store::open(Image(pages)).expect("geometry is fine");
    let mut before = [0u8; PAGE];
    let old = store.load(&mut before).expect("load");
    let mut scratch = [0u8; PAGE];
    let boots = count_boot(&mut store, &mut scratch).expect("count");
    let mut store = Store::open(store.into_inner()).expect("reopen");
    let mut after = [0u8; PAGE];
    let n = store.load(&mut after).expect("load").expect("a record");
    assert_eq!(u32::from_le_bytes(after[..4].try_into().unwrap()), boots);
    if let Some(m) = old.filter(|&m| m >= 4) {
        assert_eq!(n, m);
        assert_eq!(after[4..n], before[4..m], "the rest of the record is kept");
        let prev = u32::from_le_bytes(before[..4].try_into().unwrap());
        assert_eq!(boots, prev.wrapping_add(1));
    }

    // Commands: one per line; a reply always fits 64 bytes.
    let mut settings = Settings::default();
    for line in text.split(|&b| b == b'\n') {
        if let Ok(cmd) = Command::parse(line) {
            let mut out = [0u8; 65];
            let n = settings.apply(
                cmd,
                u64::from(boots) << 20,
                Some(i32::from(line.len() as u16)),
                &mut out,
            );
            assert!(n <= 64, "reply of {n} bytes");
            if let Command::Interval(s) = cmd {
                assert!((1..=86_400).contains(&s));
            }
        }
    }
});
