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
    fail, idle, init, log_parts, read_device_conf, repaint_stack, stack_used, Dec, Lm3s6965,
};
use lowband_device::{DefaultSyncState, EphemeralRng, Runner};
use lowband_firmware::{AppConfig, AppError, ConfigError, DeviceConfig, MatrixApp};

/// Longest provisioning text (the message in `boot` says 512).
const CONF_MAX: usize = 512;

// The memory figures README's device section states (a host test, tests/it/qemu.rs
// `documented_device_sizes_match_the_firmware`, checks that README carries these numbers).
const _: () = assert!(size_of::<DefaultSyncState>() == 2856);
const _: () = assert!(size_of::<Runner<EphemeralRng>>() == 7_280);
const _: () = assert!(size_of::<MatrixApp<Lm3s6965>>() == 8_240);

#[entry]
fn main() -> ! {
    run(boot(init()))
}

/// The main loop. Not inlined into `main`: its frame (the runner's poll inlined) is not on
/// the stack while `boot` runs, and boot's frames are gone while it runs.
#[inline(never)]
fn run(app: &'static mut MatrixApp<Lm3s6965>) -> ! {
    log_parts(&[
        "matrix: up, boot used ",
        Dec::usize(stack_used()).as_str(),
        " bytes of stack",
    ]);
    if app.runner().is_connected() {
        log_parts(&["matrix: session resumed, no handshake"]);
    }
    repaint_stack();
    let mut stack_peak = 0;
    loop {
        match app.poll(&mut []) {
            Ok(p) => {
                if p.readings > 0 || p.commands > 0 {
                    log_parts(&[
                        "matrix: ",
                        Dec::new(p.readings).as_str(),
                        " reading(s), ",
                        Dec::new(p.commands).as_str(),
                        " command(s)",
                    ]);
                }
                let used = stack_used();
                if used > stack_peak {
                    stack_peak = used;
                    log_parts(&["stack high water ", Dec::usize(used).as_str(), " bytes"]);
                }
                if p.packets == 0 {
                    idle();
                }
            }
            Err(_) => fail(&["matrix: poll failed"]),
        }
    }
}

type Parts = lowband_firmware::Parts<Lm3s6965>;

fn config_error(e: ConfigError) -> &'static str {
    match e {
        ConfigError::Malformed => "not UTF-8, or a line without =",
        ConfigError::UnknownName => "an unknown name",
        ConfigError::BadKey => "a key that is not 32 bytes of base64",
        ConfigError::BadNumber => "a bad number",
        ConfigError::TooManyControllers => "too many controllers",
        ConfigError::Missing => "seed, key, gateway, room or token missing",
    }
}

#[inline(never)]
fn boot(mut parts: Parts) -> &'static mut MatrixApp<Lm3s6965> {
    let mut text = [0u8; CONF_MAX];
    let Some(n) = read_device_conf(&mut text) else {
        fail(&["no lowband-device.conf (or longer than 512 bytes)"]);
    };
    let conf = match DeviceConfig::parse(&text[..n]) {
        Ok(c) => c,
        Err(e) => fail(&["lowband-device.conf: ", config_error(e)]),
    };
    // MatrixApp without controllers obeys every room member: a device refuses that.
    if conf.controllers.is_empty() {
        fail(&["lowband-device.conf: no controller="]);
    }
    log_parts(&[
        "matrix: room ",
        conf.room,
        ", ",
        Dec::usize(conf.controllers.len()).as_str(),
        " controller(s), a reading every ",
        Dec::new(conf.interval_s).as_str(),
        " s",
    ]);
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
        Err(AppError::Store(_)) => fail(&["matrix: boot: the state or boot counter store failed"]),
        Err(_) => fail(&["matrix: boot: unusable keys or settings"]),
    };
    if app.set_controllers(&conf.controllers).is_err() {
        fail(&["matrix: bad controllers"]);
    }
    app
}
