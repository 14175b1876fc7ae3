//! The lowband firmware for an STM32F103C8 blue pill: boot counter, then the loopback
//! application on USART1 (see `boards/qemu-lm3s6965/src/bin/firmware.rs`, the tested twin).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use lowband_board_stm32f103::init;
use lowband_firmware::{count_boot, Loopback, Settings};

#[entry]
fn main() -> ! {
    let mut parts = init();
    let boots = count_boot(&mut parts.boot_flash, 0).map_or(0, |b| b.get());
    let mut app = Loopback::new(Settings {
        boots,
        ..Settings::default()
    });
    loop {
        if app.poll(&mut parts).is_err() {
            cortex_m::peripheral::SCB::sys_reset();
        }
    }
}
