//! The lowband firmware for QEMU lm3s6965evb.
//!
//! Today it proves the platform: boots, counts the boot in the A/B store (a semihosting host
//! file), then runs [`lowband_firmware::Loopback`] on UART0 (each serial frame answered: echoed
//! with an `echo:` prefix, or a `!command` applied and answered). Diagnostics go to semihosting
//! stdout only. The device Runner and the Matrix application replace the loopback later.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use lowband_board_qemu_lm3s6965::{idle, init, log};
use lowband_firmware::{count_boot, Clock, Loopback, Settings, Store};

#[entry]
fn main() -> ! {
    let mut parts = init();
    let boots = {
        let mut scratch = [0u8; 64];
        let counted =
            Store::open(&mut parts.flash).and_then(|mut s| count_boot(&mut s, &mut scratch));
        match counted {
            Ok(n) => n,
            Err(e) => panic!("store: {e:?}"),
        }
    };
    log!("boot {boots} at {} ms", parts.clock.now_ms());
    let mut app = Loopback::new(Settings {
        boots,
        ..Settings::default()
    });
    loop {
        match app.poll(&mut parts) {
            Ok(0) => idle(), // until a byte arrives or 100 ms pass
            Ok(_) => {}
            Err(e) => panic!("link: {e:?}"),
        }
    }
}
