//! Fuzz what the firmware reads from outside: room commands, and a flash image (a worn or
//! half-written store) through the A/B store and the boot counter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_firmware::{count_boot, AbStore, Command, Flash, Page, Settings};

const PAGE: usize = 256;

/// Two pages with NOR semantics (erase = 0xFF, program = AND), loaded from the fuzz input.
struct Image([[u8; PAGE]; 2]);

impl Flash for Image {
    type Error = ();
    const WRITE_SIZE: usize = 4;
    fn page_len(&self) -> usize {
        PAGE
    }
    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), ()> {
        buf.copy_from_slice(&self.0[page as usize][offset..offset + buf.len()]);
        Ok(())
    }
    fn erase(&mut self, page: Page) -> Result<(), ()> {
        self.0[page as usize] = [0xFF; PAGE];
        Ok(())
    }
    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), ()> {
        assert_eq!((offset % 4, data.len() % 4), (0, 0), "unaligned write");
        for (d, s) in self.0[page as usize][offset..offset + data.len()]
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

    // Boot counter: whatever the image holds, a boot is counted, goes up, and reads back.
    let mut flash = Image(pages);
    let boots = count_boot(&mut flash, 0).map(|b| b.get());
    if let Ok(b) = boots {
        let again = count_boot(&mut flash, 0).expect("a counted image counts again").get();
        assert_eq!(again, b + 1);
        let mut rec = [0u8; 16];
        let got = AbStore::new(&mut flash)
            .load(lowband_device::persist::KIND_BOOT_COUNTER, &mut rec)
            .expect("load")
            .map(|p| p.to_vec());
        assert_eq!(got, Some(again.to_le_bytes().to_vec()));
    }
    let boots = boots.unwrap_or(0);

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
