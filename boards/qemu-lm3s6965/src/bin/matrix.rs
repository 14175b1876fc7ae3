//! The lowband Matrix firmware for QEMU lm3s6965evb: [`lowband_firmware::MatrixApp`] on UART0.
//!
//! Boots, reads its provisioning text from the semihosting host file `lowband-device.conf`
//! ([`lowband_firmware::DeviceConfig`]: keys from `lowband keygen`, room, token, controllers),
//! restores its state from `lowband-flash.bin`, then joins the room, posts a reading every
//! interval and answers `!status`, `!led on|off`, `!interval N` from its controllers.
//! Diagnostics go to semihosting stdout only.
#![no_std]
#![no_main]

use core::mem::{size_of, MaybeUninit};

use cortex_m_rt::entry;
use lowband_board_qemu_lm3s6965::{
    idle, init, log, read_device_conf, repaint_stack, stack_used, Lm3s6965,
};
use lowband_device::{DefaultSyncState, EphemeralRng, Runner};
use lowband_firmware::{AppConfig, DeviceConfig, MatrixApp};

/// Longest provisioning text.
const CONF_MAX: usize = 512;

// The memory figures README's device section states (a host test, tests/it/qemu.rs
// `documented_device_sizes_match_the_firmware`, checks that README carries these numbers).
const _: () = assert!(size_of::<DefaultSyncState>() == 5032);
const _: () = assert!(size_of::<Runner<EphemeralRng>>() == 10_448);
const _: () = assert!(size_of::<MatrixApp<Lm3s6965>>() == 11_408);

#[entry]
fn main() -> ! {
    let app = boot(init());
    log!("matrix: up, boot used {} bytes of stack", stack_used());
    repaint_stack();
    let mut stack_peak = 0;
    loop {
        match app.poll(&mut []) {
            Ok(p) => {
                if p.readings > 0 || p.commands > 0 {
                    log!(
                        "matrix: {} reading(s), {} command(s)",
                        p.readings,
                        p.commands
                    );
                }
                let used = stack_used();
                if used > stack_peak {
                    stack_peak = used;
                    log!("stack high water {used} bytes");
                }
                if p.packets == 0 {
                    idle();
                }
            }
            Err(e) => panic!("matrix: {e:?}"),
        }
    }
}

type Parts = lowband_firmware::Parts<Lm3s6965>;

#[inline(never)]
fn boot(mut parts: Parts) -> &'static mut MatrixApp<Lm3s6965> {
    let mut text = [0u8; CONF_MAX];
    let Some(n) = read_device_conf(&mut text) else {
        panic!("no lowband-device.conf (or longer than {CONF_MAX} bytes)");
    };
    let conf = match DeviceConfig::parse(&text[..n]) {
        Ok(c) => c,
        Err(e) => panic!("lowband-device.conf: {e:?}"),
    };
    // MatrixApp without controllers obeys every room member: a device refuses that.
    if conf.controllers.is_empty() {
        panic!("lowband-device.conf: no controller=");
    }
    // Display, not Debug: Debug of a str links Unicode escaping tables.
    log!(
        "matrix: room {}, {} controller(s), a reading every {} s",
        conf.room,
        conf.controllers.len(),
        conf.interval_s
    );
    parts.provisioned = conf.provisioned.clone();
    let cfg = AppConfig {
        room: conf.room,
        access_token: conf.token,
        filter: conf.filter,
        sync_timeout_ms: conf.sync_timeout_ms,
        sync_interval_ms: 1_000,
        interval_s: conf.interval_s,
        link_bps: conf.rate_bps,
    };
    // INVARIANT: boot runs once.
    let slot =
        cortex_m::singleton!(: MaybeUninit<MatrixApp<Lm3s6965>> = MaybeUninit::uninit()).unwrap();
    // No record scratch on the stack: the state is restored through the runner's own memory
    // that is not in use yet (Runner::new_in).
    let app = match MatrixApp::boot_in(slot, parts, &cfg, &mut []) {
        Ok(a) => a,
        Err(e) => panic!("matrix: boot: {e:?}"),
    };
    if app.set_controllers(&conf.controllers).is_err() {
        panic!("matrix: bad controllers");
    }
    app
}
