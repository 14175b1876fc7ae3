//! Board support for an STM32F103C8 "blue pill" through `stm32f1xx-hal` (embedded-hal 1.0).
//!
//! [`init`] returns the [`Parts`] of the board for [`lowband_firmware`]:
//!
//! | piece | implementation |
//! |---|---|
//! | link | USART1 on PA9 (TX) / PA10 (RX), 115200 8N1: [`Usart1Link`] |
//! | clock | SysTick at 72 MHz, one interrupt per 100 ms plus the counter: [`SysTickClock`] |
//! | flash | state A/B: two 6 KiB groups of 1 KiB sectors at `0x0800_D000`/`0x0800_E800`; boot counter A/B: 1 KiB sectors at `0x0800_C400`/`0x0800_C800` (`memory.x` keeps code below 48 KiB): [`FlashPages`] |
//! | provisioned | 96 bytes at the start of the sector at 48 KiB (`0x0800_C000`), written at provisioning time |
//! | LED | PC13, active low: [`BluePillLed`] |
//! | sensor | the internal temperature sensor on ADC1 (whole °C): [`InternalTemp`] |
//!
//! Clocks: 8 MHz HSE crystal, 72 MHz SYSCLK, 36 MHz APB1. Builds for `thumbv7m-none-eabi`; it
//! has not been run on hardware in this repository (the QEMU board is the tested one).
#![no_std]
#![warn(missing_docs)]

use core::cell::Cell;
use core::fmt;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
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

/// Brings the board up and hands out its pieces. Call once, first thing in `main`.
///
/// # Panics
///
/// If called twice (the peripherals are taken).
pub fn init() -> Parts<BluePill> {
    // INVARIANT: init() runs once; a second call is a programming error.
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
    let serial = dp.USART1.serial(
        (tx, rx),
        Config::default().baudrate(115_200.bps()),
        &mut rcc,
    );
    let (tx, rx) = serial.split();

    let mut led = gpioc.pc13.into_push_pull_output(&mut gpioc.crh);
    led.set_high(); // off (active low)

    let adc = dp.ADC1.adc(&mut rcc);
    let mut flash = FlashPages {
        flash: fl,
        base: STATE_OFFSET,
        sectors: STATE_SECTORS,
    };
    let provisioned = flash.provisioning();
    // SAFETY: the second handle on the flash controller is only used from the same thread as
    // the first, never concurrently (the firmware is a single loop without flash in interrupts).
    let boot_fl = unsafe { pac::Peripherals::steal() }.FLASH.constrain();
    let boot_flash = FlashPages {
        flash: boot_fl,
        base: BOOT_OFFSET,
        sectors: 1,
    };

    // SAFETY: as for the boot-counter pages.
    let settings_fl = unsafe { pac::Peripherals::steal() }.FLASH.constrain();
    let settings_flash = FlashPages {
        flash: settings_fl,
        base: SETTINGS_OFFSET,
        sectors: 1,
    };

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

/// USART1 as the link. `read` blocks until a byte is there; `write` blocks per byte.
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
        if buf.is_empty() {
            return Ok(0);
        }
        buf[0] = nb::block!(self.rx.read())?;
        let mut n = 1;
        while n < buf.len() {
            match self.rx.read() {
                Ok(b) => buf[n] = b,
                Err(nb::Error::WouldBlock) => break,
                Err(nb::Error::Other(e)) => return Err(e),
            }
            n += 1;
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

/// Offset of settings page A (one sector; page B is the next sector).
pub const SETTINGS_OFFSET: u32 = 46 * 1024;
/// Offset (from the start of flash) of the provisioning sector.
pub const PROVISION_OFFSET: u32 = 48 * 1024;
/// Offset of boot-counter page A (one sector; page B is the next sector).
pub const BOOT_OFFSET: u32 = 49 * 1024;
/// Offset of state page A (a group of [`STATE_SECTORS`] sectors; page B follows it).
pub const STATE_OFFSET: u32 = 52 * 1024;
/// Sectors per state page: 6 KiB hold a default sync state record.
pub const STATE_SECTORS: usize = 6;
const SECTOR: usize = 1024;
const _: () = assert!(STATE_SECTORS * SECTOR >= lowband_device::DEFAULT_RECORD_MAX);
const _: () = assert!(STATE_OFFSET as usize + 2 * STATE_SECTORS * SECTOR <= 64 * 1024);

/// Two pages (A/B) of on-chip flash, each a group of `sectors` 1 KiB sectors from `base`,
/// through the HAL's `FlashWriter` (half-word programming, verified).
pub struct FlashPages {
    flash: flash::Parts,
    base: u32,
    sectors: usize,
}

impl fmt::Debug for FlashPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashPages")
            .field("base", &self.base)
            .field("sectors", &self.sectors)
            .finish()
    }
}

impl FlashPages {
    fn writer(&mut self) -> flash::FlashWriter<'_> {
        self.flash.writer(SectorSize::Sz1K, FlashSize::Sz64K)
    }

    fn provisioning(&mut self) -> Provisioned {
        let mut raw = [0u8; Provisioned::LEN];
        if let Ok(bytes) = self.writer().read(PROVISION_OFFSET, Provisioned::LEN) {
            raw.copy_from_slice(bytes);
        }
        Provisioned::from_bytes(&raw)
    }

    fn at(&self, page: Page, offset: usize, len: usize) -> Result<u32, flash::Error> {
        let page_len = self.sectors * SECTOR;
        if offset + len > page_len {
            return Err(flash::Error::AddressLargerThanFlash);
        }
        Ok(self.base + (page as usize * page_len + offset) as u32)
    }
}

impl Flash for FlashPages {
    type Error = flash::Error;
    const WRITE_SIZE: usize = 4;

    fn page_len(&self) -> usize {
        self.sectors * SECTOR
    }

    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), flash::Error> {
        let at = self.at(page, offset, buf.len())?;
        buf.copy_from_slice(self.writer().read(at, buf.len())?);
        Ok(())
    }

    fn erase(&mut self, page: Page) -> Result<(), flash::Error> {
        let len = self.sectors * SECTOR;
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

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No console on this board: stop with the LED's pin untouched; a watchdog (not enabled yet)
    // would reset. A debugger shows the panic location through the stack.
    cortex_m::interrupt::disable();
    loop {
        cortex_m::asm::bkpt();
    }
}
