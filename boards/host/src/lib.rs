//! Board support for a Linux host: the firmware's [`Board`] over a serial port or a pty.
//!
//! The same application code that runs on a microcontroller runs here against std pieces:
//!
//! | piece | implementation |
//! |---|---|
//! | link | any [`serialport::SerialPort`] (a USB-serial adapter, or one end of a pty pair): [`SerialLink`] |
//! | clock | [`std::time::Instant`] since [`init`]: [`StdClock`] |
//! | flash | a file of pages with NOR semantics (erase = `0xFF`, write = AND): [`FileFlash`] |
//! | provisioned | passed in (e.g. [`read_provisioning`] of a 96-byte file) |
//! | LED, sensor | shared cells a test or a UI can watch and set: [`HostLed`], [`HostSensor`] |
//!
//! Useful for running the firmware logic against a real gateway on a serial line without
//! hardware, and for host tests over [`serialport::TTYPort::pair`].
#![warn(missing_docs)]

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use core::time::Duration;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek, SeekFrom, Write as _};
use std::path::Path;
use std::time::Instant;

use lowband_firmware::{Board, Clock, Flash, Led, Page, Parts, Provisioned, Sensor};
use serialport::SerialPort;

/// A Linux host as a [`Board`].
#[derive(Debug)]
pub struct Host;

impl Board for Host {
    type Link = SerialLink;
    type Clock = StdClock;
    type Flash = FileFlash;
    type Led = HostLed;
    type Sensor = HostSensor;
}

/// Page size of the file-backed flash: one page holds a default sync state record
/// ([`lowband_device::DEFAULT_RECORD_MAX`]).
pub const PAGE_SIZE: usize = 6144;
const _: () = assert!(PAGE_SIZE >= lowband_device::DEFAULT_RECORD_MAX);

/// Builds the host board's parts: the link on `port`, flash in the file `flash` (six pages,
/// created erased if missing: state A/B, boot counter A/B, settings A/B), the given
/// provisioning.
///
/// # Errors
///
/// If the flash file cannot be opened or created.
pub fn init(
    port: Box<dyn SerialPort>,
    flash: &Path,
    provisioned: Provisioned,
) -> io::Result<Parts<Host>> {
    Ok(Parts {
        link: SerialLink::new(port),
        clock: StdClock::new(),
        flash: FileFlash::open(flash, PAGE_SIZE, 0)?,
        boot_flash: FileFlash::open(flash, PAGE_SIZE, 2)?,
        settings_flash: FileFlash::open(flash, PAGE_SIZE, 4)?,
        led: HostLed::default(),
        sensor: HostSensor::default(),
        provisioned,
    })
}

/// Reads a 96-byte provisioning file (`seed ‖ static key ‖ gateway key`).
///
/// # Errors
///
/// If the file cannot be read or is not exactly 96 bytes.
pub fn read_provisioning(path: &Path) -> io::Result<Provisioned> {
    let raw = std::fs::read(path)?;
    let raw: [u8; Provisioned::LEN] = raw.try_into().map_err(|v: Vec<u8>| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes, want {}",
                path.display(),
                v.len(),
                Provisioned::LEN
            ),
        )
    })?;
    Ok(Provisioned::from_bytes(&raw))
}

/// A serial port as the firmware's byte-stream link.
///
/// `read` blocks until at least one byte is there (retrying the port's timeout); poll
/// [`embedded_io::ReadReady::read_ready`] first for non-blocking use.
pub struct SerialLink {
    port: Box<dyn SerialPort>,
}

impl core::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SerialLink")
            .field("port", &self.port.name())
            .finish()
    }
}

impl SerialLink {
    /// Wraps an open port.
    pub fn new(port: Box<dyn SerialPort>) -> Self {
        SerialLink { port }
    }
}

impl embedded_io::ErrorType for SerialLink {
    type Error = io::Error;
}

impl embedded_io::ReadReady for SerialLink {
    fn read_ready(&mut self) -> io::Result<bool> {
        Ok(self.port.bytes_to_read()? > 0)
    }
}

impl embedded_io::Read for SerialLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.port.read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl embedded_io::Write for SerialLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.port.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.port.flush()
    }
}

/// Milliseconds since the board was initialised.
#[derive(Debug, Clone, Copy)]
pub struct StdClock {
    start: Instant,
}

impl StdClock {
    /// A clock starting at 0 now.
    pub fn new() -> Self {
        StdClock {
            start: Instant::now(),
        }
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for StdClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Two flash pages (A/B) in a host file, with NOR semantics: erase writes `0xFF`, program ANDs.
///
/// Page A is page `first` of the file (pages of `page_len` bytes), page B the next one; several
/// `FileFlash` share one file at different `first` pages.
#[derive(Debug)]
pub struct FileFlash {
    file: File,
    page_len: usize,
    first: usize,
}

impl FileFlash {
    /// Opens `path` for pages `first` and `first + 1`, creating or extending the file (new pages
    /// erased) if it is shorter.
    ///
    /// # Errors
    ///
    /// If the file cannot be opened, created or extended.
    pub fn open(path: &Path, page_len: usize, first: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut f = FileFlash {
            file,
            page_len,
            first,
        };
        let len = f.file.metadata()?.len();
        if len < (page_len * (first + 2)) as u64 {
            f.file.seek(SeekFrom::Start(len))?;
            let missing = page_len * (first + 2) - len as usize;
            f.file.write_all(&vec![0xFF; missing])?;
            f.file.sync_data()?;
        }
        Ok(f)
    }

    fn at(&self, page: Page, offset: usize, len: usize) -> io::Result<u64> {
        if offset + len > self.page_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("page {page:?} offset {offset} len {len} outside the page"),
            ));
        }
        Ok(((self.first + page as usize) * self.page_len + offset) as u64)
    }
}

impl Flash for FileFlash {
    type Error = io::Error;
    const WRITE_SIZE: usize = 4;

    fn page_len(&self) -> usize {
        self.page_len
    }

    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let pos = self.at(page, offset, buf.len())?;
        self.file.seek(SeekFrom::Start(pos))?;
        self.file.read_exact(buf)
    }

    fn erase(&mut self, page: Page) -> io::Result<()> {
        let pos = self.at(page, 0, self.page_len)?;
        self.file.seek(SeekFrom::Start(pos))?;
        self.file.write_all(&vec![0xFF; self.page_len])?;
        self.file.sync_data()
    }

    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> io::Result<()> {
        let mut cur = vec![0u8; data.len()];
        self.read(page, offset, &mut cur)?;
        cur.iter_mut().zip(data).for_each(|(c, d)| *c &= *d);
        self.file.seek(SeekFrom::Start(self.at(page, offset, 0)?))?;
        self.file.write_all(&cur)?;
        self.file.sync_data()
    }
}

/// The LED as a shared flag (clone the handle with [`HostLed::handle`] to watch it).
#[derive(Debug, Clone, Default)]
pub struct HostLed {
    on: Arc<AtomicBool>,
}

impl HostLed {
    /// A handle on the LED state that stays valid after the parts are moved.
    pub fn handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.on)
    }
}

impl Led for HostLed {
    fn set(&mut self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

/// A sensor whose reading is set from outside (default 21.000 °C).
#[derive(Debug, Clone)]
pub struct HostSensor {
    milli: Arc<AtomicI32>,
}

impl Default for HostSensor {
    fn default() -> Self {
        HostSensor {
            milli: Arc::new(AtomicI32::new(21_000)),
        }
    }
}

impl HostSensor {
    /// A handle to set the reading (milli-units) while the application runs.
    pub fn handle(&self) -> Arc<AtomicI32> {
        Arc::clone(&self.milli)
    }
}

impl Sensor for HostSensor {
    fn sample_milli(&mut self) -> Option<i32> {
        Some(self.milli.load(Ordering::Relaxed))
    }
}

/// How long [`run_loopback`] sleeps when the link is idle.
pub const IDLE_SLEEP: Duration = Duration::from_millis(1);

/// Runs the boot sequence and the [`lowband_firmware::Loopback`] application on `parts` until
/// `stop` is set; returns the boot count and the final settings.
///
/// # Errors
///
/// On a flash or link error.
pub fn run_loopback(
    mut parts: Parts<Host>,
    stop: &AtomicBool,
) -> io::Result<(u32, lowband_firmware::Settings)> {
    let boots = lowband_firmware::count_boot(&mut parts.boot_flash, 0)
        .map_err(|e| io::Error::other(format!("store: {e:?}")))?
        .get();
    let mut app = lowband_firmware::Loopback::new(lowband_firmware::Settings {
        boots,
        ..Default::default()
    });
    while !stop.load(Ordering::Relaxed) {
        match app.poll(&mut parts) {
            Ok(0) => std::thread::sleep(IDLE_SLEEP),
            Ok(_) => {}
            Err(lowband_firmware::LoopError::Link(kind)) => {
                return Err(io::Error::other(format!("link: {kind:?}")))
            }
        }
    }
    Ok((boots, app.settings()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowband_codec::frame::{self, Deframer};
    use serialport::TTYPort;

    struct Peer {
        port: TTYPort,
        deframer: Deframer<256>,
    }

    impl Peer {
        fn request(&mut self, payload: &[u8]) -> Vec<u8> {
            let mut buf = [0u8; 300];
            let n = frame::encode(payload, true, &mut buf).unwrap();
            self.port.write_all(&buf[..n]).unwrap();
            self.recv()
        }
        fn recv(&mut self) -> Vec<u8> {
            let end = Instant::now() + Duration::from_secs(5);
            let mut b = [0u8; 1];
            while Instant::now() < end {
                match self.port.read(&mut b) {
                    Ok(1) => {
                        if let Some(f) = self.deframer.handle_byte(b[0]) {
                            return f.expect("a good frame").to_vec();
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(e) => panic!("pty: {e}"),
                }
            }
            panic!("no reply within 5 s");
        }
    }

    fn tmpdir(label: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lowband-host-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Boots the loopback app on one end of a pty pair, runs `f` on the other end.
    fn with_app(
        dir: &Path,
        f: impl FnOnce(&mut Peer, &HostLed),
    ) -> (u32, lowband_firmware::Settings) {
        let (mut master, slave) = TTYPort::pair().expect("pty pair");
        master.set_timeout(Duration::from_millis(50)).unwrap();
        let parts = init(
            Box::new(slave),
            &dir.join("flash.bin"),
            Provisioned::from_bytes(&[7; 96]),
        )
        .expect("init");
        let led = parts.led.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let app = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || run_loopback(parts, &stop))
        };
        let mut peer = Peer {
            port: master,
            deframer: Deframer::new(),
        };
        f(&mut peer, &led);
        stop.store(true, Ordering::Relaxed);
        app.join().unwrap().expect("app")
    }

    #[test]
    fn loopback_over_a_pty_pair_and_persisted_boots() {
        let dir = tmpdir("pty");
        let (boots, settings) = with_app(&dir, |peer, led| {
            assert_eq!(peer.request(b"hello"), b"echo:hello");
            assert_eq!(
                peer.request(&[0, 0x11, 0, 0x0A, 0x0D]),
                b"echo:\x00\x11\x00\x0A\x0D"
            );
            assert_eq!(peer.request(b"!led on"), b"led on");
            assert!(led.handle().load(Ordering::Relaxed));
            assert_eq!(peer.request(b"!interval 90"), b"every 90s");
            let status = peer.request(b"!status");
            let s = String::from_utf8(status).unwrap();
            assert!(s.starts_with("boot 1 up 0s led on every 90s 21.00"), "{s}");
        });
        assert_eq!((boots, settings.led, settings.interval_s), (1, true, 90));
        // Second boot over the same flash file.
        let (boots, _) = with_app(&dir, |peer, _| {
            let s = String::from_utf8(peer.request(b"!status")).unwrap();
            assert!(s.starts_with("boot 2 "), "{s}");
        });
        assert_eq!(boots, 2);
        let raw = std::fs::read(dir.join("flash.bin")).unwrap();
        assert_eq!(raw.len(), 6 * PAGE_SIZE);
        // Second boot count on boot page B: version 1, kind 2, generation 2, 4-byte payload 2.
        let b = &raw[3 * PAGE_SIZE..];
        assert_eq!(b[..12], [1, 2, 2, 0, 0, 0, 4, 0, 2, 0, 0, 0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_flash_is_nor_like() {
        let dir = tmpdir("nor");
        let mut f = FileFlash::open(&dir.join("f.bin"), 64, 2).unwrap();
        let mut b = [0u8; 4];
        f.read(Page::B, 60, &mut b).unwrap();
        assert_eq!(b, [0xFF; 4]);
        f.program(Page::B, 60, &[0xF0, 0x0F, 0xAA, 0x55]).unwrap();
        f.program(Page::B, 60, &[0x3C, 0x3C, 0xFF, 0x00]).unwrap();
        f.read(Page::B, 60, &mut b).unwrap();
        assert_eq!(b, [0x30, 0x0C, 0xAA, 0x00]);
        assert!(f.program(Page::B, 62, &[0; 4]).is_err(), "past the page");
        // Page B of region 2 is page 3 of the file; region 0 below is untouched.
        let raw = std::fs::read(dir.join("f.bin")).unwrap();
        assert_eq!(raw.len(), 4 * 64);
        assert_eq!(raw[3 * 64 + 60..], [0x30, 0x0C, 0xAA, 0x00]);
        assert!(raw[..3 * 64 + 60].iter().all(|&x| x == 0xFF));
        f.erase(Page::B).unwrap();
        f.read(Page::B, 60, &mut b).unwrap();
        assert_eq!(b, [0xFF; 4]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn provisioning_file_must_be_96_bytes() {
        let dir = tmpdir("prov");
        let p = dir.join("p.bin");
        std::fs::write(&p, [1u8; 95]).unwrap();
        assert_eq!(
            read_provisioning(&p).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let raw: Vec<u8> = (0..96).collect();
        std::fs::write(&p, &raw).unwrap();
        assert_eq!(read_provisioning(&p).unwrap().to_bytes().to_vec(), raw);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
