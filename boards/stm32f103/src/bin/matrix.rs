//! The lowband Matrix firmware for an STM32F103CB blue pill: [`lowband_firmware::MatrixApp`]
//! on USART1 (the QEMU board's `matrix` is its tested twin).
//!
//! Boots, reads its provisioning text from the provisioning sector (`lowband-device.conf`,
//! [`lowband_firmware::DeviceConfig`]: keys from `lowband keygen`, room, token, controllers;
//! written with st-flash or probe-rs, see the crate docs), restores its state from the flash
//! pages of [`Layout::MATRIX`], then joins the room, posts a reading every interval and answers
//! `!status`, `!led on|off`, `!interval N` from its controllers. No console: a boot that cannot
//! start blinks a [`BlinkCode`]; a failed poll resets the chip.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use cortex_m_rt::entry;
use lowband_board_stm32f103::{halt, init_with, read_device_conf, BlinkCode, BluePill, Layout};
use lowband_firmware::{AppConfig, AppError, DeviceConfig, MatrixApp};

#[entry]
fn main() -> ! {
    run(boot(init_with(&Layout::MATRIX)))
}

/// The main loop. Not inlined into `main`: its frame (the runner's poll inlined) is not on
/// the stack while `boot` runs, and boot's frames are gone while it runs.
///
/// It never sleeps: USART1 is polled, and a `wfi` between SysTick interrupts (100 ms) would
/// overrun the receiver (one byte time is 87 µs at 115 200 bit/s).
#[inline(never)]
fn run(app: &'static mut MatrixApp<BluePill>) -> ! {
    loop {
        if app.poll(&mut []).is_err() {
            // The link or the flash failed: start over (the session resumes from flash).
            cortex_m::peripheral::SCB::sys_reset();
        }
    }
}

type Parts = lowband_firmware::Parts<BluePill>;

#[inline(never)]
fn boot(mut parts: Parts) -> &'static mut MatrixApp<BluePill> {
    let Some(text) = read_device_conf(&Layout::MATRIX) else {
        halt(BlinkCode::NoConf);
    };
    // Borrowed from flash, which the firmware never changes: no copy in RAM.
    let Ok(conf) = DeviceConfig::parse(text) else {
        halt(BlinkCode::BadConf);
    };
    // MatrixApp without controllers obeys every room member: a device refuses that.
    if conf.controllers.is_empty() {
        halt(BlinkCode::BadConf);
    }
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
        cortex_m::singleton!(: MaybeUninit<MatrixApp<BluePill>> = MaybeUninit::uninit()).unwrap();
    // No record scratch on the stack: the state is restored through the runner's own memory
    // that is not in use yet (Runner::new_in).
    let app = match MatrixApp::boot_in(slot, parts, &cfg, &mut []) {
        Ok(a) => a,
        Err(AppError::Store(_)) => halt(BlinkCode::Store),
        Err(_) => halt(BlinkCode::Config),
    };
    if app.set_controllers(&conf.controllers).is_err() {
        halt(BlinkCode::Config);
    }
    app
}
