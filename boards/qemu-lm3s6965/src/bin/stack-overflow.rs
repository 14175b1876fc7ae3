//! Test fixture: overflows the stack on purpose, so that `tests/it/qemu.rs` can check that an
//! overflow is visible (QEMU logs writes below SRAM under `-d guest_errors`). Not firmware.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use lowband_board_qemu_lm3s6965::{init, log};

/// 64 bytes of locals per level that the optimiser cannot drop or turn into a loop.
#[inline(never)]
fn recurse(n: u32, parent: &[u8; 64]) -> u32 {
    let mut local = core::hint::black_box([n as u8; 64]);
    local[0] ^= parent[1];
    if n == 0 {
        return u32::from(local[3]);
    }
    let r = recurse(n - 1, &local) + u32::from(core::hint::black_box(&local)[5]);
    core::hint::black_box(r)
}

#[entry]
fn main() -> ! {
    let _parts = init();
    log!("recursing");
    // 200 levels of more than 64 bytes: well past the 8 KiB reserve.
    let r = recurse(200, &[1; 64]);
    log!("returned {r}");
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}
