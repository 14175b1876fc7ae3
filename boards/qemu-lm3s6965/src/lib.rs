//! Board support for QEMU's `lm3s6965evb` machine (TI Stellaris LM3S6965, Cortex-M3).
//!
//! [`init`] returns the [`Parts`] of the board for [`lowband_firmware`]:
//!
//! | piece | implementation |
//! |---|---|
//! | link | UART0 (PL011-style, `0x4000_C000`) by registers: [`Uart0`] |
//! | clock | SysTick at the core clock, 1 kHz interrupt: [`SysTickClock`] |
//! | flash | A/B pages of 6 KiB in a host file through semihosting: [`HostFlash`] (state: pages 0-1, boot counter: pages 2-3, settings: pages 4-5) |
//! | provisioned | 96 bytes from a host file through semihosting, else development keys |
//! | LED | GPIO port F pin 0 (the EVB's status LED), changes logged: [`StatusLed`] |
//! | sensor | synthetic temperature (QEMU emulates no sensor): [`SynthSensor`] |
//!
//! # Persistence in QEMU
//!
//! QEMU 7.2 maps the LM3S6965 flash as ROM loaded from the ELF and does not emulate its flash
//! controller (FMA/FMD/FMC at `0x400F_D000`), and the machine has no `pflash` drive, so nothing
//! the guest writes survives a restart. The board therefore keeps its two A/B pages in a host
//! file, `lowband-flash.bin`, through ARM semihosting file I/O (`SYS_OPEN`/`SYS_SEEK`/`SYS_READ`/
//! `SYS_WRITE`, [ARM semihosting spec](https://github.com/ARM-software/abi-aa/blob/main/semihosting/semihosting.rst)).
//! The file is relative to QEMU's working directory and behaves like NOR flash: erase writes
//! `0xFF`, writes AND into what is there. Provisioning reads `lowband-provision.bin` the same way.
//! Semihosting must be on:
//!
//! ```text
//! qemu-system-arm -machine lm3s6965evb -nographic -monitor none \
//!   -serial tcp:127.0.0.1:PORT,server=on,wait=on \
//!   -semihosting-config enable=on,target=native -d guest_errors -kernel firmware
//! ```
//!
//! Diagnostics (`lowband: ...` lines) go to semihosting stdout, i.e. QEMU's stdout; UART0 carries
//! only the link. A panic or a HardFault prints its cause and exits QEMU with status 1.
#![no_std]
#![warn(missing_docs)]

use core::cell::Cell;
use core::convert::Infallible;
use core::fmt::Write as _;
use core::ptr::{read_volatile, write_volatile};

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::{debug, hio, nr, syscall};
use lowband_firmware::{Board, Clock, Flash, Led, Page, Parts, Provisioned, Sensor};

/// Core clock of QEMU's lm3s6965evb after reset: the 200 MHz PLL divided by RCC.SYSDIV + 1 = 16
/// (reset value of RCC is `0x078E_3AC0`), i.e. 12.5 MHz. Checked against the host clock by the
/// QEMU end-to-end test (`tests/it/qemu.rs`).
pub const CORE_HZ: u32 = 12_500_000;

/// Prints one diagnostic line to semihosting stdout (QEMU's stdout), never to the link.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log_fmt(format_args!($($arg)*))
    };
}

#[doc(hidden)]
pub fn log_fmt(args: core::fmt::Arguments<'_>) {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_str("lowband: ");
        let _ = out.write_fmt(args);
        let _ = out.write_str("\n");
    }
}

/// Writes `lowband: ` and `parts` as one line to semihosting stdout, without `core::fmt`
/// (numbers through [`Dec`]): the Matrix firmware links none of its machinery.
pub fn log_parts(parts: &[&str]) {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_str("lowband: ");
        for p in parts {
            let _ = out.write_str(p);
        }
        let _ = out.write_str("\n");
    }
}

/// Reports `parts` as `lowband: panic: …` on semihosting stderr, like the panic handler,
/// and exits QEMU with status 1: for a firmware built with `panic=immediate-abort`, whose
/// panics carry no message.
pub fn fail(parts: &[&str]) -> ! {
    cortex_m::interrupt::disable();
    if let Ok(mut err) = hio::hstderr() {
        let _ = err.write_str("lowband: panic: ");
        for p in parts {
            let _ = err.write_str(p);
        }
        let _ = err.write_str("\n");
    }
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// A number's decimal digits, for [`log_parts`].
#[derive(Debug)]
pub struct Dec([u8; 10], u8);

impl Dec {
    /// `v` in decimal.
    pub fn new(v: u32) -> Self {
        let mut b = [0u8; 10];
        let n = lowband_device::text::decimal(v, &mut b).len();
        // INVARIANT: at most 10 digits.
        Dec(b, n as u8)
    }

    /// `usize` in decimal (saturating at `u32::MAX`).
    pub fn usize(v: usize) -> Self {
        Self::new(u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        let b = &self.0[self.0.len() - usize::from(self.1)..];
        // INVARIANT: ASCII digits.
        core::str::from_utf8(b).unwrap_or("")
    }
}

/// The lm3s6965evb as a [`Board`].
#[derive(Debug)]
pub struct Lm3s6965;

impl Board for Lm3s6965 {
    type Link = Uart0;
    type Clock = SysTickClock;
    type Flash = HostFlash;
    type Led = StatusLed;
    type Sensor = SynthSensor;
}

/// Brings the board up and hands out its pieces. Call once, first thing in `main`.
///
/// # Panics
///
/// If called twice (the core peripherals are taken), or if the semihosting flash file cannot be
/// opened or created (QEMU started without `-semihosting-config enable=on,target=native`).
pub fn init() -> Parts<Lm3s6965> {
    // INVARIANT: init() runs once; a second call is a programming error.
    let cp = cortex_m::Peripherals::take().expect("init() called twice");
    let clock = SysTickClock::start(cp.SYST);
    let link = Uart0::init();
    let (flash, boot_flash, settings_flash) =
        match (HostFlash::open(0), HostFlash::open(2), HostFlash::open(4)) {
            (Ok(f), Ok(b), Ok(s)) => (f, b, s),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                panic!("cannot open {FLASH_FILE}: {e:?}")
            }
        };
    let provisioned = read_provisioning();
    Parts {
        link,
        clock,
        flash,
        boot_flash,
        settings_flash,
        led: StatusLed::init(),
        sensor: SynthSensor,
        provisioned,
    }
}

// ---------------------------------------------------------------------------------------------
// System control

const SYSCTL_RCGC1: *mut u32 = 0x400F_E104 as *mut u32;
const SYSCTL_RCGC2: *mut u32 = 0x400F_E108 as *mut u32;

fn reg_set(reg: *mut u32, bits: u32) {
    // SAFETY: callers pass addresses of memory-mapped registers of this chip.
    unsafe { write_volatile(reg, read_volatile(reg) | bits) }
}

// ---------------------------------------------------------------------------------------------
// UART0

const UART0: usize = 0x4000_C000;
const UART_DR: usize = 0x000;
const UART_FR: usize = 0x018;
const UART_IBRD: usize = 0x024;
const UART_FBRD: usize = 0x028;
const UART_LCRH: usize = 0x02C;
const UART_CTL: usize = 0x030;
const UART_IM: usize = 0x038;
/// Receive and receive-timeout interrupts.
const IM_RX: u32 = (1 << 4) | (1 << 6);
/// UART0's interrupt number on the LM3S6965.
const UART0_IRQ: i16 = 5;
const FR_BUSY: u32 = 1 << 3;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;

/// UART0 as the link: 115200 8N1, 16-byte FIFOs, polled.
///
/// `read` blocks until a byte is there (poll [`embedded_io::ReadReady`] first); `write` blocks
/// while the transmit FIFO is full. QEMU passes the bytes to `-serial` unchanged.
#[derive(Debug)]
pub struct Uart0 {
    _private: (),
}

impl Uart0 {
    fn reg(off: usize) -> *mut u32 {
        (UART0 + off) as *mut u32
    }
    fn read_reg(off: usize) -> u32 {
        // SAFETY: UART0 register inside the peripheral's 4 KiB block.
        unsafe { read_volatile(Self::reg(off)) }
    }
    fn write_reg(off: usize, v: u32) {
        // SAFETY: UART0 register inside the peripheral's 4 KiB block.
        unsafe { write_volatile(Self::reg(off), v) }
    }

    fn init() -> Self {
        reg_set(SYSCTL_RCGC1, 1 << 0); // clock UART0
        Self::write_reg(UART_CTL, 0);
        // 12.5 MHz / (16 * 115200) = 6.78: IBRD 6, FBRD round(0.78 * 64) = 50.
        Self::write_reg(UART_IBRD, 6);
        Self::write_reg(UART_FBRD, 50);
        Self::write_reg(UART_LCRH, 0x60 | 0x10); // 8 bits, FIFOs on
        Self::write_reg(UART_IM, 0);
        Self::write_reg(UART_CTL, 0x301); // UARTEN, TXE, RXE
                                          // SAFETY: the handler (DefaultHandler) only masks UART0's interrupt sources.
        unsafe { cortex_m::peripheral::NVIC::unmask(Irq(UART0_IRQ as u16)) };
        Uart0 { _private: () }
    }

    fn rx_empty() -> bool {
        Self::read_reg(UART_FR) & FR_RXFE != 0
    }
}

#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: 5 is UART0's interrupt number on this chip.
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

/// Sleeps until a byte arrives on UART0 or the next SysTick (at most 100 ms); returns at once if
/// a byte is waiting.
///
/// Call it when the application had nothing to do. The check and the `wfi` run with interrupts
/// masked, so a byte arriving in between still wakes the core (a pending interrupt ends `wfi`
/// even while PRIMASK masks it; the handler runs after).
pub fn idle() {
    cortex_m::interrupt::free(|_| {
        if Uart0::rx_empty() {
            Uart0::write_reg(UART_IM, IM_RX);
            cortex_m::asm::wfi();
        }
    });
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == UART0_IRQ {
        // Only a wake-up: mask the source until the next idle(); the main loop reads the FIFO.
        Uart0::write_reg(UART_IM, 0);
    } else {
        panic!("unexpected interrupt {irqn}");
    }
}

impl embedded_io::ErrorType for Uart0 {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Uart0 {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!Self::rx_empty())
    }
}

impl embedded_io::Read for Uart0 {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while Self::rx_empty() {}
        let mut n = 0;
        while n < buf.len() && !Self::rx_empty() {
            // Bits 11:8 are error flags; a damaged byte fails the frame's FCS anyway.
            buf[n] = Self::read_reg(UART_DR) as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Uart0 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            while Self::read_reg(UART_FR) & FR_TXFF != 0 {}
            Self::write_reg(UART_DR, u32::from(b));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        while Self::read_reg(UART_FR) & FR_BUSY != 0 {}
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Clock

/// SysTick period: 100 ms (1.25 M core cycles, within the 24-bit reload).
const TICK_MS: u32 = 100;
const CYCLES_PER_MS: u32 = CORE_HZ / 1000;
const RELOAD: u32 = CYCLES_PER_MS * TICK_MS - 1;

/// SysTick wraps since boot.
static WRAPS: Mutex<Cell<u32>> = Mutex::new(Cell::new(0));

#[exception]
fn SysTick() {
    cortex_m::interrupt::free(|cs| {
        let w = WRAPS.borrow(cs);
        w.set(w.get().wrapping_add(1));
    });
}

/// Milliseconds since the clock started: wraps × 100 ms plus the SysTick count down.
///
/// Time comes from the counter, not from counting 1 ms interrupts, so an interrupt served late
/// (QEMU descheduled on a busy host, a long critical section) loses nothing unless it is more than
/// 100 ms late.
fn millis() -> u64 {
    cortex_m::interrupt::free(|cs| {
        let mut wraps = WRAPS.borrow(cs).get();
        let mut cur = cortex_m::peripheral::SYST::get_current();
        if cortex_m::peripheral::SCB::is_pendst_pending() {
            // Wrapped while interrupts are masked: count it here, re-read after the wrap.
            wraps = wraps.wrapping_add(1);
            cur = cortex_m::peripheral::SYST::get_current();
        }
        u64::from(wraps) * u64::from(TICK_MS)
            + u64::from((RELOAD - cur.min(RELOAD)) / CYCLES_PER_MS)
    })
}

/// Milliseconds since boot from SysTick at [`CORE_HZ`] (one interrupt per 100 ms).
pub struct SysTickClock {
    _syst: cortex_m::peripheral::SYST,
}

impl core::fmt::Debug for SysTickClock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SysTickClock")
            .field("now_ms", &millis())
            .finish()
    }
}

impl SysTickClock {
    fn start(mut syst: cortex_m::peripheral::SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(RELOAD);
        syst.clear_current();
        syst.enable_interrupt();
        syst.enable_counter();
        SysTickClock { _syst: syst }
    }
}

impl Clock for SysTickClock {
    fn now_ms(&self) -> u64 {
        millis()
    }
}

// ---------------------------------------------------------------------------------------------
// Semihosting-backed flash

/// Host file holding the flash pages (relative to QEMU's working directory).
pub const FLASH_FILE: &str = "lowband-flash.bin";
/// Host file holding the 96 provisioning bytes (seed ‖ static key ‖ gateway key).
pub const PROVISION_FILE: &str = "lowband-provision.bin";
/// Bytes per emulated page: one holds a default sync state record (the chip's erase size is
/// 1 KiB; a page here stands for a group of six).
pub const PAGE_SIZE: usize = 6144;
/// Emulated pages: state A and B, boot counter A and B, settings A and B.
pub const PAGES: usize = 6;
const _: () = assert!(PAGE_SIZE >= lowband_device::DEFAULT_RECORD_MAX);

/// A semihosting operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIoError {
    /// `SYS_OPEN` failed.
    Open,
    /// `SYS_SEEK` failed.
    Seek,
    /// `SYS_READ` returned fewer bytes than asked.
    Read,
    /// `SYS_WRITE` wrote fewer bytes than asked.
    Write,
    /// Page or offset outside the two pages.
    Range,
}

/// Two flash pages (A/B) kept in the host file [`FLASH_FILE`] at pages `first` and `first + 1`
/// (see the crate docs).
#[derive(Debug)]
pub struct HostFlash {
    fd: usize,
    first: usize,
}

/// `name` must end in NUL; returns the semihosting handle.
fn sh_open(name: &[u8], mode: usize) -> Option<usize> {
    // SAFETY: SYS_OPEN reads `len` bytes of the NUL-terminated name, which outlives the call.
    let fd = unsafe { syscall!(OPEN, name.as_ptr(), mode, name.len() - 1) };
    (fd != usize::MAX).then_some(fd)
}

fn sh_seek(fd: usize, pos: usize) -> Result<(), HostIoError> {
    // SAFETY: SYS_SEEK takes a handle and a position, no memory.
    let r = unsafe { syscall!(SEEK, fd, pos) };
    if r == 0 {
        Ok(())
    } else {
        Err(HostIoError::Seek)
    }
}

fn sh_read(fd: usize, buf: &mut [u8]) -> Result<(), HostIoError> {
    // SAFETY: SYS_READ writes at most buf.len() bytes into buf.
    let left = unsafe { syscall!(READ, fd, buf.as_mut_ptr(), buf.len()) };
    if left == 0 {
        Ok(())
    } else {
        Err(HostIoError::Read)
    }
}

fn sh_write(fd: usize, data: &[u8]) -> Result<(), HostIoError> {
    // SAFETY: SYS_WRITE reads data.len() bytes of data.
    let left = unsafe { syscall!(WRITE, fd, data.as_ptr(), data.len()) };
    if left == 0 {
        Ok(())
    } else {
        Err(HostIoError::Write)
    }
}

fn sh_flen(fd: usize) -> usize {
    // SAFETY: SYS_FLEN takes a handle, no memory.
    unsafe { syscall!(FLEN, fd) }
}

fn sh_close(fd: usize) {
    // SAFETY: SYS_CLOSE takes a handle, no memory.
    unsafe {
        syscall!(CLOSE, fd);
    }
}

impl HostFlash {
    /// Opens [`FLASH_FILE`] for pages `first` and `first + 1`, creating it if it does not exist
    /// and erasing the two pages if the file is too short to hold them. Open the regions in
    /// increasing `first` order (a region is appended at the end of the file).
    ///
    /// # Errors
    ///
    /// [`HostIoError`] if the file cannot be opened or created, or `first + 2 > PAGES`.
    pub fn open(first: usize) -> Result<Self, HostIoError> {
        if first + 2 > PAGES {
            return Err(HostIoError::Range);
        }
        let name = b"lowband-flash.bin\0";
        let fd = match sh_open(name, nr::open::RW_BINARY) {
            Some(fd) => fd,
            None => sh_open(name, nr::open::RW_TRUNC_BINARY).ok_or(HostIoError::Open)?,
        };
        let mut f = HostFlash { fd, first };
        if sh_flen(fd) < PAGE_SIZE * (first + 2) {
            log_parts(&[
                FLASH_FILE,
                ": blank, formatting pages ",
                Dec::usize(first).as_str(),
                "-",
                Dec::usize(first + 1).as_str(),
            ]);
            f.erase(Page::A)?;
            f.erase(Page::B)?;
        }
        Ok(f)
    }

    fn at(&self, page: Page, offset: usize, len: usize) -> Result<usize, HostIoError> {
        if offset + len > PAGE_SIZE {
            return Err(HostIoError::Range);
        }
        Ok((self.first + page as usize) * PAGE_SIZE + offset)
    }
}

impl Flash for HostFlash {
    type Error = HostIoError;
    const WRITE_SIZE: usize = 4;

    fn page_len(&self) -> usize {
        PAGE_SIZE
    }

    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), HostIoError> {
        sh_seek(self.fd, self.at(page, offset, buf.len())?)?;
        sh_read(self.fd, buf)
    }

    fn erase(&mut self, page: Page) -> Result<(), HostIoError> {
        sh_seek(self.fd, self.at(page, 0, PAGE_SIZE)?)?;
        let ff = [0xFFu8; 128];
        for _ in 0..PAGE_SIZE / ff.len() {
            sh_write(self.fd, &ff)?;
        }
        Ok(())
    }

    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), HostIoError> {
        let pos = self.at(page, offset, data.len())?;
        // NOR semantics: programming clears bits only.
        let mut chunk = [0u8; 64];
        for (i, part) in data.chunks(chunk.len()).enumerate() {
            let at = pos + i * chunk.len();
            let cur = &mut chunk[..part.len()];
            sh_seek(self.fd, at)?;
            sh_read(self.fd, cur)?;
            cur.iter_mut().zip(part).for_each(|(c, d)| *c &= *d);
            sh_seek(self.fd, at)?;
            sh_write(self.fd, cur)?;
        }
        Ok(())
    }
}

/// Host file holding the Matrix firmware's provisioning text
/// ([`lowband_firmware::DeviceConfig`]).
pub const DEVICE_CONF_FILE: &str = "lowband-device.conf";

/// Reads the host file [`DEVICE_CONF_FILE`] into `buf`; its length, or `None` if it is missing
/// or longer than `buf`.
pub fn read_device_conf(buf: &mut [u8]) -> Option<usize> {
    let fd = sh_open(b"lowband-device.conf\0", nr::open::R_BINARY)?;
    let n = sh_flen(fd);
    let ok = n <= buf.len() && sh_read(fd, &mut buf[..n]).is_ok();
    sh_close(fd);
    ok.then_some(n)
}

/// Development keys for an unprovisioned board: never use outside tests.
const DEV_PROVISIONING: [u8; Provisioned::LEN] = [0x5A; Provisioned::LEN];

fn read_provisioning() -> Provisioned {
    let mut raw = [0u8; Provisioned::LEN];
    let got = match sh_open(b"lowband-provision.bin\0", nr::open::R_BINARY) {
        Some(fd) => {
            let ok = sh_flen(fd) == Provisioned::LEN && sh_read(fd, &mut raw).is_ok();
            sh_close(fd);
            ok
        }
        None => false,
    };
    if !got {
        log_parts(&[
            PROVISION_FILE,
            ": missing or not ",
            Dec::usize(Provisioned::LEN).as_str(),
            " bytes, using development keys",
        ]);
        raw = DEV_PROVISIONING;
    }
    Provisioned::from_bytes(&raw)
}

// ---------------------------------------------------------------------------------------------
// LED and sensor

const GPIOF: usize = 0x4002_5000;
const GPIO_DIR: usize = 0x400;
const GPIO_DEN: usize = 0x51C;

/// The EVB's status LED on GPIO port F pin 0; every change is also logged (QEMU shows no LED).
#[derive(Debug)]
pub struct StatusLed {
    on: Option<bool>,
}

impl StatusLed {
    fn init() -> Self {
        reg_set(SYSCTL_RCGC2, 1 << 5); // clock GPIO port F
        reg_set((GPIOF + GPIO_DIR) as *mut u32, 1);
        reg_set((GPIOF + GPIO_DEN) as *mut u32, 1);
        StatusLed { on: None }
    }
}

impl Led for StatusLed {
    fn set(&mut self, on: bool) {
        // GPIODATA is addressed through a mask in address bits 9:2: offset 0x004 = pin 0 only.
        // SAFETY: GPIO port F data register for pin 0.
        unsafe { write_volatile((GPIOF + 0x004) as *mut u32, u32::from(on)) };
        if self.on != Some(on) {
            log_parts(&["led ", if on { "on" } else { "off" }]);
            self.on = Some(on);
        }
    }
}

/// A synthetic temperature: 21.000 °C plus a 60 s triangle wave of ±0.5 °C (QEMU has no sensor).
#[derive(Debug)]
pub struct SynthSensor;

impl Sensor for SynthSensor {
    fn sample_milli(&mut self) -> Option<i32> {
        let phase = (millis() % 60_000) as i32; // 0 ..= 59_999
        let tri = if phase < 30_000 {
            phase
        } else {
            60_000 - phase
        }; // 0 ..= 30_000
        Some(20_500 + tri / 30)
    }
}

// ---------------------------------------------------------------------------------------------
// Stack

/// Paints the unused part of the stack reserve again (below the current stack pointer, less a
/// 64-byte margin), so that [`stack_used`] reports the high-water mark from now on: e.g. of the
/// main loop after a deeper boot.
pub fn repaint_stack() {
    extern "C" {
        static _stack_end: u32;
    }
    let bottom = core::ptr::addr_of!(_stack_end) as usize;
    let sp = cortex_m::register::msp::read() as usize - 64;
    let mut p = bottom;
    while p < sp {
        // SAFETY: [bottom, sp) is the unused part of the stack reserve, word aligned.
        unsafe { write_volatile(p as *mut u32, 0xCCCC_CCCC) };
        p += 4;
    }
}

/// Bytes of the stack reserve used so far (high-water mark).
///
/// cortex-m-rt paints the reserve with `0xCCCC_CCCC` at reset (feature `paint-stack`); this
/// scans up from the bottom to the first word the stack has touched. A word that happens to be
/// written with the paint value makes the figure low by at most that word's distance.
pub fn stack_used() -> usize {
    extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    // Linker symbols: only their addresses are taken.
    let (top, bottom) = (
        core::ptr::addr_of!(_stack_start) as usize,
        core::ptr::addr_of!(_stack_end) as usize,
    );
    let mut p = bottom;
    // SAFETY: [bottom, top) is the stack reserve in SRAM, word aligned.
    while p < top && unsafe { read_volatile(p as *const u32) } == 0xCCCC_CCCC {
        p += 4;
    }
    top - p
}

// ---------------------------------------------------------------------------------------------
// Faults

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cortex_m::interrupt::disable();
    if let Ok(mut err) = hio::hstderr() {
        let _ = writeln!(err, "lowband: panic: {info}");
    }
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    if let Ok(mut err) = hio::hstderr() {
        let mut pc = [0u8; 10];
        pc[..2].copy_from_slice(b"0x");
        for (i, b) in ef.pc().to_be_bytes().into_iter().enumerate() {
            pc[2 + 2 * i..4 + 2 * i].copy_from_slice(&lowband_device::text::hex2(b, false));
        }
        let _ = err.write_str("lowband: hard fault at pc ");
        let _ = err.write_all(&pc);
        let _ = err.write_str("\n");
    }
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
