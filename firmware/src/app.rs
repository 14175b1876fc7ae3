//! Boot sequence and the platform-proving loopback application.
//!
//! Until the device Runner drives the link, [`Loopback`] proves a board end to end: serial frames
//! ([`lowband_codec::frame::serial`]) in, replies out, commands applied to the LED, and the boot
//! counter persisted through [`lowband_device::BootCounter`] on the board's A/B pages.

use embedded_io::{Error as _, ErrorKind, Read, ReadReady, Write};
use lowband_codec::frame::{self, Deframer};

use crate::board::{Board, Clock, Flash, Led, Parts, Sensor};
use crate::command::{error_reply, Command, Settings};
use lowband_device::{AbStore, BootCounter, StoreError};

/// Counts this boot on the boot-counter pages: `max(stored, floor) + 1`, persisted before it
/// is returned ([`BootCounter::advance`]; `floor` is the restored state's boot number, 0 if none).
///
/// # Errors
///
/// Those of [`BootCounter::advance`]: the boot number must then not be used.
pub fn count_boot<F: Flash>(
    boot_flash: &mut F,
    floor: u32,
) -> Result<BootCounter, StoreError<F::Error>> {
    BootCounter::advance(&mut AbStore::new(boot_flash), floor)
}

/// When to post the next sensor reading (sans-IO: the caller passes `now`).
///
/// # Call protocol
///
/// Sleep until [`poll_timeout`](Self::poll_timeout) (or less, for other work); then call
/// [`handle_timeout`](Self::handle_timeout): `true` means post a reading now. After a
/// `!interval` command call [`set_interval`](Self::set_interval). Readings keep their phase
/// (no drift from late polls); readings missed by more than one interval are skipped, not
/// posted in a burst (each costs airtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadingTimer {
    next_ms: u64,
    interval_ms: u64,
}

impl ReadingTimer {
    /// First reading due at `first_ms` (e.g. right after joining the room), then every
    /// `interval_s` seconds (at least 1).
    pub const fn new(first_ms: u64, interval_s: u32) -> Self {
        let s = if interval_s == 0 { 1 } else { interval_s };
        ReadingTimer {
            next_ms: first_ms,
            interval_ms: s as u64 * 1000,
        }
    }

    /// When the next reading is due, in clock milliseconds.
    pub fn poll_timeout(&self) -> u64 {
        self.next_ms
    }

    /// `true` if a reading is due at `now_ms`; schedules the next one.
    pub fn handle_timeout(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        self.next_ms += self.interval_ms;
        if self.next_ms <= now_ms {
            // More than one interval late: skip the missed readings, keep the phase.
            let behind = (now_ms - self.next_ms) / self.interval_ms + 1;
            self.next_ms += behind * self.interval_ms;
        }
        true
    }

    /// A new period from `!interval`: the next reading is one new interval after `now_ms`.
    pub fn set_interval(&mut self, now_ms: u64, interval_s: u32) {
        self.interval_ms = u64::from(interval_s.max(1)) * 1000;
        self.next_ms = now_ms + self.interval_ms;
    }
}

/// Largest frame payload the loopback accepts.
pub const MAX_PAYLOAD: usize = 128;
/// Prefix of an echoed frame.
pub const ECHO_PREFIX: &[u8] = b"echo:";
/// Idle time after which the next frame is sent with a leading delimiter.
pub const LEAD_AFTER_IDLE_MS: u64 = 1000;

const REPLY_MAX: usize = MAX_PAYLOAD + ECHO_PREFIX.len();
const OUT_MAX: usize = frame::max_encoded_len(REPLY_MAX, true);

/// Why [`Loopback::poll`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopError {
    /// The link failed.
    Link(ErrorKind),
}

/// Counters of a [`Loopback`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Frames echoed.
    pub echoed: u32,
    /// Commands answered (including error replies).
    pub commands: u32,
}

/// The platform-proving application: answers each frame on the link.
///
/// * a payload starting with `!` is a [`Command`]: it is applied (LED, interval) and its reply
///   text sent back as one frame;
/// * any other payload `p` comes back as `echo:` ‖ `p`.
///
/// Damaged frames are dropped silently (counted by the deframer). Nothing else is ever written
/// to the link. Memory: 512 bytes (x86_64 and thumbv7m alike; a test bounds it).
///
/// # Call protocol
///
/// Call [`poll`](Self::poll) in the main loop; it never blocks on input (it reads only what
/// [`ReadReady`] reports) and blocks on output only while the link drains a reply.
#[derive(Debug)]
pub struct Loopback {
    deframer: Deframer<MAX_PAYLOAD>,
    settings: Settings,
    reply: [u8; REPLY_MAX],
    out: [u8; OUT_MAX],
    last_tx_ms: Option<u64>,
    stats: LoopStats,
}

impl Loopback {
    /// A loopback starting from `settings` (with the boot count already set).
    pub const fn new(settings: Settings) -> Self {
        Loopback {
            deframer: Deframer::new(),
            settings,
            reply: [0; REPLY_MAX],
            out: [0; OUT_MAX],
            last_tx_ms: None,
            stats: LoopStats {
                echoed: 0,
                commands: 0,
            },
        }
    }

    /// Current settings (LED, interval, boots).
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Counters so far.
    pub fn stats(&self) -> LoopStats {
        self.stats
    }

    /// Reads what the link has, answers every complete frame; returns the frames answered.
    ///
    /// # Errors
    ///
    /// [`LoopError::Link`] if reading or writing the link failed.
    pub fn poll<B: Board>(&mut self, parts: &mut Parts<B>) -> Result<usize, LoopError> {
        let link_err = |e: <B::Link as embedded_io::ErrorType>::Error| LoopError::Link(e.kind());
        let mut answered = 0;
        let mut inbuf = [0u8; 32];
        while parts.link.read_ready().map_err(link_err)? {
            let n = parts.link.read(&mut inbuf).map_err(link_err)?;
            if n == 0 {
                break;
            }
            for &b in &inbuf[..n] {
                let Some(Ok(payload)) = self.deframer.handle_byte(b) else {
                    continue;
                };
                let len = if payload.first() == Some(&b'!') {
                    self.stats.commands += 1;
                    match Command::parse(payload) {
                        Ok(cmd) => {
                            let reading = parts.sensor.sample_milli();
                            let now = parts.clock.now_ms();
                            let n = self.settings.apply(cmd, now, reading, &mut self.reply);
                            parts.led.set(self.settings.led);
                            n
                        }
                        Err(e) => {
                            let text = error_reply(e).unwrap_or_default();
                            self.reply[..text.len()].copy_from_slice(text);
                            text.len()
                        }
                    }
                } else {
                    self.stats.echoed += 1;
                    let n = ECHO_PREFIX.len() + payload.len();
                    self.reply[..ECHO_PREFIX.len()].copy_from_slice(ECHO_PREFIX);
                    self.reply[ECHO_PREFIX.len()..n].copy_from_slice(payload);
                    n
                };
                let now = parts.clock.now_ms();
                let lead = self
                    .last_tx_ms
                    .is_none_or(|t| now.saturating_sub(t) >= LEAD_AFTER_IDLE_MS);
                // INVARIANT: out holds max_encoded_len(REPLY_MAX, true) and len <= REPLY_MAX.
                let m = frame::encode(&self.reply[..len], lead, &mut self.out).unwrap_or_default();
                parts.link.write_all(&self.out[..m]).map_err(link_err)?;
                parts.link.flush().map_err(link_err)?;
                self.last_tx_ms = Some(now);
                answered += 1;
            }
        }
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use alloc::vec::Vec;

    use super::ram::RamFlash;
    use super::*;
    use crate::board::Provisioned;

    #[test]
    fn reading_timer_keeps_phase_and_skips_missed() {
        let mut t = ReadingTimer::new(1_000, 60);
        assert_eq!(t.poll_timeout(), 1_000);
        assert!(!t.handle_timeout(999));
        assert!(t.handle_timeout(1_250)); // 250 ms late: next stays on the 1 s + k·60 s grid
        assert_eq!(t.poll_timeout(), 61_000);
        assert!(!t.handle_timeout(60_999));
        // Three intervals late: one reading now, the missed ones skipped.
        assert!(t.handle_timeout(200_000));
        assert_eq!(t.poll_timeout(), 241_000);
        assert!(!t.handle_timeout(200_001));
        t.set_interval(210_000, 5);
        assert_eq!(t.poll_timeout(), 215_000);
        assert!(t.handle_timeout(215_000));
        assert_eq!(t.poll_timeout(), 220_000);
        // A zero interval cannot make it spin.
        let mut z = ReadingTimer::new(0, 0);
        assert!(z.handle_timeout(0));
        assert_eq!(z.poll_timeout(), 1_000);
    }

    #[test]
    fn boot_counter_counts_and_respects_the_floor() {
        let mut f = RamFlash::new();
        assert_eq!(count_boot(&mut f, 0).map(|b| b.get()), Ok(1));
        assert_eq!(count_boot(&mut f, 0).map(|b| b.get()), Ok(2));
        // The restored state saw boot 7 (counter pages lost or behind): numbers still go up.
        assert_eq!(count_boot(&mut f, 7).map(|b| b.get()), Ok(8));
        assert_eq!(count_boot(&mut f, 0).map(|b| b.get()), Ok(9));
        // The record is device's: version 1, kind 2 (boot counter), generation 4 on page B.
        assert_eq!(f.pages[1][..2], [1, 2]);
        assert_eq!(f.pages[1][2..6], 4u32.to_le_bytes());
    }

    /// A scripted board: the link reads from `rx`, writes to `tx`.
    struct Script;
    #[derive(Default)]
    struct Pipe {
        rx: Vec<u8>,
        tx: Vec<u8>,
    }
    impl embedded_io::ErrorType for Pipe {
        type Error = ErrorKind;
    }
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            let n = buf.len().min(self.rx.len());
            buf[..n].copy_from_slice(&self.rx[..n]);
            self.rx.drain(..n);
            Ok(n)
        }
    }
    impl ReadReady for Pipe {
        fn read_ready(&mut self) -> Result<bool, ErrorKind> {
            Ok(!self.rx.is_empty())
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            self.tx.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }
    struct Ms(u64);
    impl Clock for Ms {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }
    struct Lamp(bool);
    impl Led for Lamp {
        fn set(&mut self, on: bool) {
            self.0 = on;
        }
    }
    struct Thermo;
    impl Sensor for Thermo {
        fn sample_milli(&mut self) -> Option<i32> {
            Some(21_500)
        }
    }
    impl Board for Script {
        type Link = Pipe;
        type Clock = Ms;
        type Flash = RamFlash;
        type Led = Lamp;
        type Sensor = Thermo;
    }

    fn parts() -> Parts<Script> {
        Parts {
            link: Pipe::default(),
            clock: Ms(5_000),
            flash: RamFlash::new(),
            boot_flash: RamFlash::new(),
            settings_flash: RamFlash::new(),
            led: Lamp(false),
            sensor: Thermo,
            provisioned: Provisioned::from_bytes(&[0; 96]),
        }
    }

    fn push_frame(p: &mut Parts<Script>, payload: &[u8], lead: bool) {
        let mut buf = [0u8; 300];
        let n = frame::encode(payload, lead, &mut buf).unwrap();
        p.link.rx.extend_from_slice(&buf[..n]);
    }

    fn frames(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut d = Deframer::<256>::new();
        wire.iter()
            .filter_map(|&b| d.handle_byte(b).and_then(|r| r.ok()).map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn echoes_and_answers_commands() {
        let mut p = parts();
        let mut app = Loopback::new(Settings {
            boots: 4,
            ..Settings::default()
        });
        push_frame(&mut p, b"hi", true);
        push_frame(&mut p, b"\x00\x01", false);
        push_frame(&mut p, b"!led on", false);
        // Line noise between frames is dropped, the next frame still arrives.
        p.link.rx.extend_from_slice(&[0x03, 0x41, 0x00]);
        push_frame(&mut p, b"!status", false);
        push_frame(&mut p, b"!fly", false);
        assert_eq!(app.poll(&mut p), Ok(5));
        assert!(p.led.0);
        let got = frames(&p.link.tx);
        let want: [&[u8]; 5] = [
            b"echo:hi",
            b"echo:\x00\x01",
            b"led on",
            b"boot 4 up 5s led on every 60s 21.50",
            b"? !status !led on|off !interval N",
        ];
        assert_eq!(got, want.map(<[u8]>::to_vec));
        // Only the first reply carries a leading delimiter: the exact wire bytes of "echo:hi".
        assert_eq!(p.link.tx[..2], [0x00, 0x0A]);
        assert_eq!(
            p.link.tx.len(),
            got.iter().map(|f| f.len() + 4).sum::<usize>() + 1
        );
        assert_eq!(
            app.stats(),
            LoopStats {
                echoed: 2,
                commands: 3
            }
        );
        // Nothing waiting: nothing answered, nothing written.
        p.link.tx.clear();
        assert_eq!(app.poll(&mut p), Ok(0));
        assert!(p.link.tx.is_empty());
    }

    #[test]
    fn loopback_memory_budget() {
        let n = core::mem::size_of::<Loopback>();
        assert!((400..=512).contains(&n), "Loopback is {n} bytes");
    }

    #[test]
    fn oversized_frame_is_dropped() {
        let mut p = parts();
        let mut app = Loopback::new(Settings::default());
        push_frame(&mut p, &[0x55; MAX_PAYLOAD + 1], true);
        push_frame(&mut p, &[0x66; MAX_PAYLOAD], false);
        assert_eq!(app.poll(&mut p), Ok(1));
        let got = frames(&p.link.tx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), ECHO_PREFIX.len() + MAX_PAYLOAD);
    }
}

/// A RAM flash with NOR semantics for tests: `program` ANDs, optional fault injection.
#[cfg(test)]
pub(crate) mod ram {
    use lowband_device::{Flash, Page};

    /// Page size of the test flash: holds a default sync state record.
    pub const PAGE: usize = 6144;

    #[derive(Debug, Clone)]
    pub struct RamFlash {
        pub pages: [[u8; PAGE]; 2],
    }

    impl RamFlash {
        pub fn new() -> Self {
            RamFlash {
                pages: [[0xFF; PAGE]; 2],
            }
        }
    }

    impl Flash for RamFlash {
        type Error = ();
        const WRITE_SIZE: usize = 4;
        fn page_len(&self) -> usize {
            PAGE
        }
        fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), ()> {
            let p = &self.pages[page as usize];
            buf.copy_from_slice(p.get(offset..offset + buf.len()).ok_or(())?);
            Ok(())
        }
        fn erase(&mut self, page: Page) -> Result<(), ()> {
            self.pages[page as usize] = [0xFF; PAGE];
            Ok(())
        }
        fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), ()> {
            assert_eq!(offset % Self::WRITE_SIZE, 0, "unaligned offset");
            assert_eq!(data.len() % Self::WRITE_SIZE, 0, "unaligned length");
            let p = &mut self.pages[page as usize];
            let dst = p.get_mut(offset..offset + data.len()).ok_or(())?;
            dst.iter_mut().zip(data).for_each(|(d, s)| *d &= *s);
            Ok(())
        }
    }
}
