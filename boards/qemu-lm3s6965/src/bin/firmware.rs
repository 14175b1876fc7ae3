//! The lowband firmware for QEMU lm3s6965evb.
//!
//! Today it proves the platform: boots, counts the boot in the A/B store (a semihosting host
//! file), then runs [`lowband_firmware::Loopback`] on UART0 (each serial frame answered: echoed
//! with an `echo:` prefix, or a `!command` applied and answered). Diagnostics go to semihosting
//! stdout only. The device Runner and the Matrix application replace the loopback later.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use lowband_board_qemu_lm3s6965::{idle, init, log, stack_used};
use lowband_firmware::{count_boot, Clock, Loopback, Settings};

#[entry]
fn main() -> ! {
    let mut parts = init();
    let boots = match count_boot(&mut parts.boot_flash, 0) {
        Ok(n) => n.get(),
        Err(e) => panic!("store: {e:?}"),
    };
    log!("boot {boots} at {} ms", parts.clock.now_ms());
    // In .bss rather than on the stack, so that scripts/firmware.sh counts it.
    let settings = Settings {
        boots,
        ..Settings::default()
    };
    // INVARIANT: main runs once, so the singleton is free.
    let app = cortex_m::singleton!(: Loopback = Loopback::new(settings)).unwrap();
    let mut stack_peak = 0;
    loop {
        match app.poll(&mut parts) {
            Ok(0) => idle(), // until a byte arrives or 100 ms pass
            Ok(_) => {
                let used = stack_used();
                if used > stack_peak {
                    stack_peak = used;
                    log!("stack high water {used} bytes");
                }
            }
            Err(e) => panic!("link: {e:?}"),
        }
    }
}
