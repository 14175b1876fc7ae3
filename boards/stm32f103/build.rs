//! Puts each binary's memory layout on its linker search path and links the binaries with
//! cortex-m-rt's `link.x`: `memory-default.x` (STM32F103C8) for `firmware`, `memory-matrix.x`
//! (STM32F103CB, 128 KiB) for `matrix`. cortex-m-rt's `link.x` includes `memory.x`, so each
//! layout is copied as `memory.x` into a directory of its own.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (src, dir, bins) in [
        ("memory-default.x", "default", &["firmware"][..]),
        ("memory-matrix.x", "matrix", &["matrix"][..]),
    ] {
        let d = out.join(dir);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::copy(src, d.join("memory.x")).expect("copy memory layout");
        for b in bins {
            println!("cargo:rustc-link-arg-bin={b}=-L{}", d.display());
        }
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}
