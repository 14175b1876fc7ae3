//! Board support for an STM32F103 "blue pill" through `stm32f1xx-hal` (embedded-hal 1.0).
//!
//! [`init`] (binary `firmware`, the loopback, on a C8) or [`init_with`] (binary `matrix`, the
//! Matrix application, on a CB: [`Layout::MATRIX`]) returns the [`Parts`] of the board for
//! [`lowband_firmware`]:
//!
//! | piece | implementation |
//! |---|---|
//! | link | USART1 on PA9 (TX) / PA10 (RX), [`BAUD`] 8N1, polled: [`Usart1Link`] |
//! | clock | SysTick at 72 MHz, one interrupt per 100 ms plus the counter: [`SysTickClock`] |
//! | flash | three A/B pairs of 1 KiB sectors (state, boot counter, settings) where the binary's [`Layout`] puts them, above its code: [`FlashPages`] |
//! | provisioned | the provisioning sector of the [`Layout`]: 96 bytes of keys (`firmware`) or the `lowband-device.conf` text (`matrix`, [`read_device_conf`]) |
//! | LED | PC13, active low: [`BluePillLed`] |
//! | sensor | the internal temperature sensor on ADC1 (whole °C): [`InternalTemp`] |
//!
//! Clocks: 8 MHz HSE crystal, 72 MHz SYSCLK, 36 MHz APB1. Builds for `thumbv7m-none-eabi`; it
//! has not been run on hardware in this repository (the QEMU board is the tested one).
//!
//! # The `matrix` binary on an STM32F103CB
//!
//! The Matrix application needs the CB's 128 KiB of flash (the C8's 64 KiB cannot hold the
//! image and its data pages). Flash map (`memory-matrix.x`, [`Layout::MATRIX`]; 1 KiB sectors):
//!
//! | address | size | contents |
//! |---|---|---|
//! | `0x0800_0000` | 117 KiB | vector table, code, read-only data |
//! | `0x0801_D400` | 1 KiB | provisioning: the `lowband-device.conf` text, at most 512 bytes |
//! | `0x0801_D800` | 2 × 1 KiB | settings A/B (LED, interval) |
//! | `0x0801_E000` | 2 × 1 KiB | boot counter A/B |
//! | `0x0801_E800` | 2 × 3 KiB | sync state A/B (a record is at most [`lowband_device::DEFAULT_RECORD_MAX`] bytes) |
//!
//! RAM (20 KiB at `0x2000_0000`): a 7.5 KiB stack reserve at the bottom, growing down toward
//! `0x2000_0000` (an overflow runs off the start of SRAM into a BusFault instead of over the
//! statics), then 12.5 KiB for the statics, the application among them (booted in place).
//!
//! Build (nightly: core rebuilt with `panic=immediate-abort`, see `matrix.toml`), flash the
//! image, then provision: the text is written as-is to its sector, and ends at the first erased
//! (`0xFF`) or zero byte, so it must not hold either.
//!
//! ```sh
//! cd boards/stm32f103
//! rustup run nightly cargo build --release --target thumbv7m-none-eabi --bin matrix --config matrix.toml
//! probe-rs download --chip STM32F103CB target/thumbv7m-none-eabi/release/matrix
//! # provisioning (either tool; both erase only the sector they write):
//! st-flash --flash=128k write lowband-device.conf 0x0801d400
//! probe-rs download --chip STM32F103CB --binary-format bin --base-address 0x0801d400 lowband-device.conf
//! probe-rs reset --chip STM32F103CB
//! ```
//!
//! Flashing a new image keeps the data pages (both tools erase only the sectors the ELF covers;
//! a full chip erase clears them, and the provisioning with them). The text's format is
//! [`lowband_firmware::DeviceConfig`]'s (README's device section). There is no console: the
//! link is USART1 and diagnostics are the LED. A boot that cannot start blinks the LED in groups
//! of [`BlinkCode`] flashes forever ([`halt`]). A failed poll resets the chip; so does a fault
//! or a panic (a HardFault under `panic=immediate-abort`) unless a debugger is attached, which
//! then stops at a breakpoint. The state and the Noise session resume from flash after a reset.
//!
//! The stack reserve holds the QEMU twin's boot less its 512-byte text buffer: this `boot`
//! borrows the text from flash (its frame is 1.4 KB against the QEMU board's 1.9 KB; the main
//! loop's frames are alike). No stack figure has been measured on silicon.
#![no_std]
#![warn(missing_docs)]

use core::cell::Cell;
use core::fmt;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{exception, ExceptionFrame};
use lowband_firmware::{Board, Clock, Flash, Led, Page, Parts, Provisioned, Sensor};
use stm32f1xx_hal::adc::Adc;
use stm32f1xx_hal::flash::{self, FlashSize, SectorSize};
use stm32f1xx_hal::gpio::{Output, PushPull, PC13};
use stm32f1xx_hal::pac::{self, ADC1, USART1};
use stm32f1xx_hal::prelude::*;
use stm32f1xx_hal::rcc;
use stm32f1xx_hal::serial::{self, Config, Rx, Tx};

/// SYSCLK after [`init`].
pub const SYSCLK_HZ: u32 = 72_000_000;

/// USART1's bit rate (8N1) to the radio modem or serial line to the gateway.
pub const BAUD: u32 = 115_200;

/// The blue pill as a [`Board`].
#[derive(Debug)]
pub struct BluePill;

impl Board for BluePill {
    type Link = Usart1Link;
    type Clock = SysTickClock;
    type Flash = FlashPages;
    type Led = BluePillLed;
    type Sensor = InternalTemp;
}

/// Brings the board up for the `firmware` binary ([`Layout::LOOPBACK`]): [`init_with`].
///
/// # Panics
///
/// If called twice (the peripherals are taken).
pub fn init() -> Parts<BluePill> {
    init_with(&Layout::LOOPBACK)
}

/// Brings the board up with the data pages of `layout` and hands out its pieces. Call once,
/// first thing in `main`.
///
/// `provisioned` is read from the provisioning sector when it holds keys
/// ([`Provisioning::Keys`]); with [`Provisioning::Text`] it is all zero and the caller sets it
/// from the parsed text ([`read_device_conf`], [`lowband_firmware::DeviceConfig`]).
///
/// # Panics
///
/// If called twice (the peripherals are taken).
pub fn init_with(layout: &Layout) -> Parts<BluePill> {
    // INVARIANT: init runs once; a second call is a programming error.
    let cp = cortex_m::Peripherals::take().expect("init() called twice");
    let dp = pac::Peripherals::take().expect("init() called twice");
    let mut fl = dp.FLASH.constrain();
    let mut rcc = dp.RCC.freeze(
        rcc::Config::hse(8.MHz())
            .sysclk(SYSCLK_HZ.Hz())
            .pclk1(36.MHz())
            .adcclk(12.MHz()),
        &mut fl.acr,
    );
    let mut gpioa = dp.GPIOA.split(&mut rcc);
    let mut gpioc = dp.GPIOC.split(&mut rcc);

    let tx = gpioa.pa9.into_alternate_push_pull(&mut gpioa.crh);
    let rx = gpioa.pa10;
    let serial = dp
        .USART1
        .serial((tx, rx), Config::default().baudrate(BAUD.bps()), &mut rcc);
    let (tx, rx) = serial.split();

    let mut led = gpioc.pc13.into_push_pull_output(&mut gpioc.crh);
    led.set_high(); // off (active low)

    let adc = dp.ADC1.adc(&mut rcc);
    let provisioned = match layout.provisioning {
        Provisioning::Keys(offset) => read_provisioning(offset),
        Provisioning::Text(_) => Provisioned::from_bytes(&[0; Provisioned::LEN]),
    };
    let flash = FlashPages::new(fl, layout.size, layout.state, layout.state_sectors);
    // SAFETY: the other handles on the flash controller are only used from the same thread as
    // the first, never concurrently (the firmware is a single loop without flash in interrupts).
    let boot_fl = unsafe { pac::Peripherals::steal() }.FLASH.constrain();
    let boot_flash = FlashPages::new(boot_fl, layout.size, layout.boot, 1);
    // SAFETY: as for the boot-counter pages.
    let settings_fl = unsafe { pac::Peripherals::steal() }.FLASH.constrain();
    let settings_flash = FlashPages::new(settings_fl, layout.size, layout.settings, 1);

    Parts {
        link: Usart1Link { tx, rx },
        clock: SysTickClock::start(cp.SYST),
        flash,
        boot_flash,
        settings_flash,
        led: BluePillLed { pin: led },
        sensor: InternalTemp { adc },
        provisioned,
    }
}

/// USART1 as the link, polled. `write` blocks per byte.
///
/// `read` blocks until a byte is there, then takes what else is waiting. A byte received with
/// a line error (parity, framing, noise, overrun) is dropped, not reported: the frame it
/// belonged to fails its check and the protocol repeats it, as for any byte lost on the air.
/// After such a byte `read` may return 0 (nothing else was waiting) rather than block until
/// the line speaks again.
pub struct Usart1Link {
    tx: Tx<USART1>,
    rx: Rx<USART1>,
}

impl fmt::Debug for Usart1Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Usart1Link")
    }
}

impl embedded_io::ErrorType for Usart1Link {
    type Error = serial::Error;
}

impl embedded_io::ReadReady for Usart1Link {
    fn read_ready(&mut self) -> Result<bool, serial::Error> {
        Ok(self.rx.is_rx_not_empty())
    }
}

impl embedded_io::Read for Usart1Link {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, serial::Error> {
        let mut n = 0;
        let mut dropped = false;
        while n < buf.len() {
            match self.rx.read() {
                Ok(b) => {
                    buf[n] = b;
                    n += 1;
                }
                // The HAL has cleared the error flag and discarded the byte.
                Err(nb::Error::Other(_)) => dropped = true,
                Err(nb::Error::WouldBlock) if n > 0 || dropped => break,
                Err(nb::Error::WouldBlock) => {}
            }
        }
        Ok(n)
    }
}

impl embedded_io::Write for Usart1Link {
    fn write(&mut self, buf: &[u8]) -> Result<usize, serial::Error> {
        for &b in buf {
            nb::block!(self.tx.write_u8(b))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), serial::Error> {
        nb::block!(self.tx.flush())
    }
}

// ---------------------------------------------------------------------------------------------
// Clock (the same scheme as the QEMU board: time from the counter, wraps from the interrupt)

const TICK_MS: u32 = 100;
const CYCLES_PER_MS: u32 = SYSCLK_HZ / 1000;
const RELOAD: u32 = CYCLES_PER_MS * TICK_MS - 1; // 7.2 M < 2^24

static WRAPS: Mutex<Cell<u32>> = Mutex::new(Cell::new(0));

#[exception]
fn SysTick() {
    cortex_m::interrupt::free(|cs| {
        let w = WRAPS.borrow(cs);
        w.set(w.get().wrapping_add(1));
    });
}

fn millis() -> u64 {
    cortex_m::interrupt::free(|cs| {
        let mut wraps = WRAPS.borrow(cs).get();
        let mut cur = cortex_m::peripheral::SYST::get_current();
        if cortex_m::peripheral::SCB::is_pendst_pending() {
            wraps = wraps.wrapping_add(1);
            cur = cortex_m::peripheral::SYST::get_current();
        }
        u64::from(wraps) * u64::from(TICK_MS)
            + u64::from((RELOAD - cur.min(RELOAD)) / CYCLES_PER_MS)
    })
}

/// Milliseconds since boot from SysTick.
pub struct SysTickClock {
    _syst: cortex_m::peripheral::SYST,
}

impl fmt::Debug for SysTickClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
// Flash

const SECTOR: usize = 1024;
const KIB: u32 = 1024;

/// Longest provisioning text [`read_device_conf`] returns.
pub const CONF_MAX: usize = 512;

/// What a layout's provisioning sector holds (its offset from the start of flash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// [`Provisioned::LEN`] bytes: seed, device key, gateway key.
    Keys(u32),
    /// The `lowband-device.conf` text ([`read_device_conf`]).
    Text(u32),
}

impl Provisioning {
    const fn offset(self) -> u32 {
        match self {
            Provisioning::Keys(o) | Provisioning::Text(o) => o,
        }
    }
}

/// Where a binary keeps its data in flash: offsets from the start of flash (`0x0800_0000`),
/// each a 1 KiB sector boundary, all above the code (the binary's `memory-*.x` ends its
/// `FLASH` region below the lowest of them). Every pair is A then B, back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The chip's flash size (the HAL checks every erase and write against it).
    pub size: FlashSize,
    /// The provisioning sector, written at provisioning time and only read by the firmware.
    pub provisioning: Provisioning,
    /// Settings page A (one sector; B is the next).
    pub settings: u32,
    /// Boot-counter page A (one sector; B is the next).
    pub boot: u32,
    /// State page A ([`Self::state_sectors`] sectors; B follows it).
    pub state: u32,
    /// Sectors per state page; a page holds a [`lowband_device::DEFAULT_RECORD_MAX`] record.
    pub state_sectors: usize,
}

impl Layout {
    /// `firmware` (the loopback) on an STM32F103C8, 64 KiB (`memory-default.x`: code below
    /// 46 KiB): settings A/B at 46 KiB, provisioning keys at 48 KiB, boot counter A/B at 49 KiB,
    /// state A/B (6 KiB each, unused by the loopback) from 52 KiB.
    pub const LOOPBACK: Layout = Layout {
        size: FlashSize::Sz64K,
        provisioning: Provisioning::Keys(48 * KIB),
        settings: 46 * KIB,
        boot: 49 * KIB,
        state: 52 * KIB,
        state_sectors: 6,
    };

    /// `matrix` on an STM32F103CB, 128 KiB (`memory-matrix.x`: code below 117 KiB):
    /// provisioning text at 117 KiB (`0x0801_D400`), settings A/B at 118 KiB, boot counter A/B
    /// at 120 KiB, state A/B (3 KiB each) from 122 KiB to the end of flash.
    pub const MATRIX: Layout = Layout {
        size: FlashSize::Sz128K,
        provisioning: Provisioning::Text(117 * KIB),
        settings: 118 * KIB,
        boot: 120 * KIB,
        state: 122 * KIB,
        state_sectors: 3,
    };

    /// Lowest data offset: where the code must end.
    pub const fn code_end(&self) -> u32 {
        let r = self.regions();
        let mut low = r[0].0;
        let mut i = 1;
        while i < r.len() {
            if r[i].0 < low {
                low = r[i].0;
            }
            i += 1;
        }
        low
    }

    /// (offset, length) of each data region.
    const fn regions(&self) -> [(u32, u32); 4] {
        [
            (self.provisioning.offset(), KIB),
            (self.settings, 2 * KIB),
            (self.boot, 2 * KIB),
            (self.state, 2 * self.state_sectors as u32 * KIB),
        ]
    }

    /// Every region on a sector boundary (below sector 256: [`FlashPages`] keeps sector
    /// numbers), inside the flash, disjoint from the others; state pages large enough for the
    /// default sync state record.
    const fn is_valid(&self) -> bool {
        if self.state_sectors * SECTOR < lowband_device::DEFAULT_RECORD_MAX
            || self.state_sectors > 255
        {
            return false;
        }
        let end = self.size as u32 * KIB;
        let r = self.regions();
        let mut i = 0;
        while i < r.len() {
            let (start, len) = r[i];
            if start % KIB != 0 || start + len > end || start / KIB > 255 {
                return false;
            }
            let mut j = i + 1;
            while j < r.len() {
                let (s2, l2) = r[j];
                if start < s2 + l2 && s2 < start + len {
                    return false;
                }
                j += 1;
            }
            i += 1;
        }
        true
    }
}

const _: () = assert!(Layout::LOOPBACK.is_valid());
const _: () = assert!(Layout::MATRIX.is_valid());
// The ends of the FLASH regions in memory-default.x and memory-matrix.x.
const _: () = assert!(Layout::LOOPBACK.code_end() == 46 * KIB);
const _: () = assert!(Layout::MATRIX.code_end() == 117 * KIB);

/// The bytes of flash at `offset`.
///
/// # Safety
///
/// `offset + len` is within the chip's flash, and nothing erases or programs those bytes while
/// the slice lives.
unsafe fn flash_bytes(offset: u32, len: usize) -> &'static [u8] {
    // SAFETY: flash is memory-mapped at FLASH_START and always readable; the caller keeps the
    // range inside it and unchanged.
    unsafe { core::slice::from_raw_parts((flash::FLASH_START + offset) as *const u8, len) }
}

fn read_provisioning(offset: u32) -> Provisioned {
    // SAFETY: a provisioning sector of a valid layout (inside flash); the firmware never
    // erases or programs it.
    let raw = unsafe { flash_bytes(offset, Provisioned::LEN) };
    let mut keys = [0u8; Provisioned::LEN];
    keys.copy_from_slice(raw);
    Provisioned::from_bytes(&keys)
}

/// The provisioning text in the sector of `layout` ([`Provisioning::Text`]), borrowed from
/// flash: the bytes before the first erased (`0xFF`) or zero byte. `None` if the layout keeps
/// keys instead, if the sector is empty, or if the text is longer than [`CONF_MAX`].
///
/// The text is parsed by [`lowband_firmware::DeviceConfig::parse`]; it is written at
/// provisioning time (see the crate docs) and never by the firmware.
pub fn read_device_conf(layout: &Layout) -> Option<&'static [u8]> {
    let Provisioning::Text(offset) = layout.provisioning else {
        return None;
    };
    // SAFETY: the provisioning sector of a valid layout (1 KiB > CONF_MAX, inside flash); the
    // firmware never erases or programs it.
    let sector = unsafe { flash_bytes(offset, CONF_MAX + 1) };
    let n = sector.iter().position(|&b| b == 0xFF || b == 0)?;
    (n > 0).then(|| &sector[..n])
}

/// Two pages (A/B) of on-chip flash, each a group of `sectors` 1 KiB sectors from `base`:
/// read from the memory map, erased and programmed through the HAL's `FlashWriter` (half-word
/// programming, verified).
pub struct FlashPages {
    flash: flash::Parts,
    size: FlashSize,
    // Sector numbers, not offsets: three bytes per pair of pages in the application's static.
    first: u8,
    sectors: u8,
}

impl fmt::Debug for FlashPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashPages")
            .field("base", &self.base())
            .field("sectors", &self.sectors)
            .finish()
    }
}

impl FlashPages {
    /// `base` is a sector boundary of a valid [`Layout`] (sector numbers below 256).
    fn new(flash: flash::Parts, size: FlashSize, base: u32, sectors: usize) -> Self {
        FlashPages {
            flash,
            size,
            first: (base / KIB) as u8,
            sectors: sectors as u8,
        }
    }

    fn base(&self) -> u32 {
        u32::from(self.first) * KIB
    }

    fn page_bytes(&self) -> usize {
        usize::from(self.sectors) * SECTOR
    }

    fn writer(&mut self) -> flash::FlashWriter<'_> {
        self.flash.writer(SectorSize::Sz1K, self.size)
    }

    fn at(&self, page: Page, offset: usize, len: usize) -> Result<u32, flash::Error> {
        let page_len = self.page_bytes();
        if offset + len > page_len {
            return Err(flash::Error::AddressLargerThanFlash);
        }
        Ok(self.base() + (page as usize * page_len + offset) as u32)
    }
}

impl Flash for FlashPages {
    type Error = flash::Error;
    const WRITE_SIZE: usize = 4;

    fn page_len(&self) -> usize {
        self.page_bytes()
    }

    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), flash::Error> {
        // From the memory map, at any offset: the HAL's `FlashWriter::read` refuses odd
        // offsets, and a record's trailer can start at one.
        let at = self.at(page, offset, buf.len())?;
        // SAFETY: inside this pair of pages (`at`), which a valid layout keeps inside flash;
        // the slice is dropped before anything programs them (`&mut self`).
        buf.copy_from_slice(unsafe { flash_bytes(at, buf.len()) });
        Ok(())
    }

    fn erase(&mut self, page: Page) -> Result<(), flash::Error> {
        let len = self.page_bytes();
        let at = self.at(page, 0, len)?;
        self.writer().erase(at, len)
    }

    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), flash::Error> {
        let at = self.at(page, offset, data.len())?;
        self.writer().write(at, data)
    }
}

// ---------------------------------------------------------------------------------------------
// LED and sensor

/// The green LED on PC13 (lit when the pin is low).
pub struct BluePillLed {
    pin: PC13<Output<PushPull>>,
}

impl fmt::Debug for BluePillLed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BluePillLed")
    }
}

impl Led for BluePillLed {
    fn set(&mut self, on: bool) {
        if on {
            self.pin.set_low();
        } else {
            self.pin.set_high();
        }
    }
}

/// The STM32F103's internal temperature sensor (±1.5 °C typical, whole degrees).
pub struct InternalTemp {
    adc: Adc<ADC1>,
}

impl fmt::Debug for InternalTemp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InternalTemp")
    }
}

impl Sensor for InternalTemp {
    fn sample_milli(&mut self) -> Option<i32> {
        Some(self.adc.read_temp() * 1000)
    }
}

// ---------------------------------------------------------------------------------------------
// Faults and halts (no console: the LED and a debugger)

/// Why a boot stopped: the LED flashes this many times, pauses, and repeats ([`halt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlinkCode {
    /// No provisioning text, or longer than [`CONF_MAX`] bytes.
    NoConf = 1,
    /// The provisioning text does not parse (or has no `controller=`).
    BadConf = 2,
    /// Restoring the state, the boot counter or the settings from flash failed.
    Store = 3,
    /// The keys, the room or a controller is unusable.
    Config = 4,
}

fn led_pin(on: bool) {
    // SAFETY: one atomic write to GPIOC's set/reset register, touching PC13 only (configured
    // as an output by `init_with`).
    let gpioc = unsafe { &*pac::GPIOC::ptr() };
    // PC13 is active low: reset (BR13, bit 29) lights it, set (BS13, bit 13) turns it off.
    gpioc
        .bsrr()
        .write(|w| unsafe { w.bits(if on { 1 << 29 } else { 1 << 13 }) });
}

fn wait_ms(ms: u64) {
    let until = millis() + ms;
    while millis() < until {
        cortex_m::asm::wfi(); // SysTick wakes it every 100 ms
    }
}

/// Stops for good after a failed boot: a debugger (if attached) stops at a breakpoint, then
/// the LED (PC13) flashes `code` times every 3 s, forever. Call after [`init_with`] (the
/// clock and the LED pin).
pub fn halt(code: BlinkCode) -> ! {
    if cortex_m::peripheral::DCB::is_debugger_attached() {
        cortex_m::asm::bkpt();
    }
    loop {
        for _ in 0..code as u8 {
            led_pin(true);
            wait_ms(200);
            led_pin(false);
            wait_ms(300);
        }
        wait_ms(2_000);
    }
}

/// A fault or a panic: stop at a breakpoint under a debugger, otherwise reset (a device far
/// away is better restarted; the state and the session resume from flash).
fn fault() -> ! {
    cortex_m::interrupt::disable();
    if cortex_m::peripheral::DCB::is_debugger_attached() {
        loop {
            cortex_m::asm::bkpt();
        }
    }
    cortex_m::peripheral::SCB::sys_reset()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    fault()
}

// `matrix` is built with panic=immediate-abort: a panic is a `udf`, i.e. a HardFault.
#[exception]
unsafe fn HardFault(_: &ExceptionFrame) -> ! {
    fault()
}
