//! The firmware on QEMU lm3s6965evb: UART0 framing, commands, the persisted boot counter across
//! a kill and restart, the clock, and fault reporting.

use core::time::Duration;
use std::time::Instant;

use lowband_tests::qemu::{build_bin, build_firmware, require_qemu, Qemu};
use lowband_tests::TempDir;

const BOOT: Duration = Duration::from_secs(20);
const REPLY: Duration = Duration::from_secs(5);

fn text(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame).into_owned()
}

/// `boot N` from a `!status` reply.
fn status_boot(reply: &[u8]) -> u32 {
    let t = text(reply);
    let n = t
        .strip_prefix("boot ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("not a status reply: {t:?}"))
}

/// `up Ns` from a `!status` reply.
fn status_uptime(reply: &[u8]) -> u64 {
    let t = text(reply);
    let n = t
        .split(" up ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("not a status reply: {t:?}"))
}

fn assert_clean(q: &Qemu) {
    let errs = q.guest_errors();
    assert!(errs.is_empty(), "QEMU reported guest errors: {errs:#?}");
}

#[test]
fn qemu_firmware_echoes_frames_and_persists_boots_across_kill() {
    if !require_qemu("qemu_firmware_echoes_frames_and_persists_boots_across_kill") {
        return;
    }
    let elf = build_firmware().expect("firmware");
    let tmp = TempDir::new("qemu").expect("tmp");
    // Provisioning: 96 bytes next to the flash file.
    let prov: Vec<u8> = (0..96u8).collect();
    std::fs::write(tmp.path().join("lowband-provision.bin"), &prov).expect("provision");

    let mut q = Qemu::start(&elf, tmp.path(), BOOT).expect("qemu");
    q.wait_diagnostic("boot 1 ", BOOT).expect("first boot");

    // Frames of several shapes come back with the prefix, byte for byte.
    let long: Vec<u8> = (0..128u32).map(|i| (i * 7 + 1) as u8).collect();
    for payload in [&b"hello"[..], &[0x00, 0x00, 0xFF, 0x00], &long] {
        let reply = q.request(payload, REPLY).expect("echo");
        assert_eq!(&reply[..5], b"echo:");
        assert_eq!(&reply[5..], payload);
    }
    // A frame longer than the firmware's 128-byte limit is dropped; the link stays in sync.
    q.send_frame(&[0x11; 129]).expect("send");
    // A damaged frame (one bit flipped after encoding) is dropped silently.
    let mut wire = [0u8; 16];
    let n = lowband_codec::frame::encode(b"damaged", true, &mut wire).expect("encode");
    wire[3] ^= 0x04;
    q.send_raw(&wire[..n]).expect("send");
    q.expect_silence(Duration::from_millis(300))
        .expect("nothing for dropped frames");
    assert_eq!(q.request(b"after", REPLY).expect("echo"), b"echo:after");

    // Commands.
    let status = q.request(b"!status", REPLY).expect("status");
    assert_eq!(status_boot(&status), 1, "{}", text(&status));
    assert!(
        text(&status).contains(" led off every 60s "),
        "{}",
        text(&status)
    );
    assert_eq!(q.request(b"!led on", REPLY).expect("led"), b"led on");
    q.wait_diagnostic("led on", REPLY).expect("LED switched");
    assert_eq!(q.request(b"!interval 5m", REPLY).expect("i"), b"every 300s");
    assert_eq!(
        q.request(b"!led blue", REPLY).expect("bad"),
        b"bad argument"
    );
    let status = q.request(b"!status", REPLY).expect("status");
    assert!(
        text(&status).contains(" led on every 300s "),
        "{}",
        text(&status)
    );
    // Provisioned keys were read (no fallback to development keys).
    assert!(
        !q.diagnostics()
            .iter()
            .any(|l| l.contains("development keys")),
        "{:?}",
        q.diagnostics()
    );
    // Stack high-water mark (the reserve is painted at reset): well inside the 8 KiB reserve.
    let line = q
        .diagnostics()
        .into_iter()
        .rfind(|l| l.contains("stack high water"))
        .expect("stack report");
    let used: usize = line
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("qemu firmware {line}");
    assert!((256..4096).contains(&used), "{line}");
    assert_clean(&q);

    // Pull the power, twice: the boot counter lives in the emulated flash (a host file).
    for boot in 2..=3u32 {
        q.kill();
        drop(q);
        let flash = std::fs::read(tmp.path().join("lowband-flash.bin")).expect("flash file");
        assert_eq!(flash.len(), 4 * 6144, "four 6 KiB pages");
        q = Qemu::start(&elf, tmp.path(), BOOT).expect("qemu restart");
        q.wait_diagnostic(&format!("boot {boot} "), BOOT)
            .expect("boot counted");
        let status = q.request(b"!status", REPLY).expect("status");
        assert_eq!(status_boot(&status), boot, "{}", text(&status));
        assert!(
            !q.diagnostics().iter().any(|l| l.contains("blank")),
            "flash reformatted: {:?}",
            q.diagnostics()
        );
        assert_clean(&q);
    }
    // The boot counter's A/B pages (file pages 2 and 3) alternate: after 3 saves, A holds
    // generation 3 (version 1, kind 2, length 4, value 3), B generation 2.
    let flash = std::fs::read(tmp.path().join("lowband-flash.bin")).expect("flash file");
    let (a, b) = (&flash[2 * 6144..], &flash[3 * 6144..]);
    assert_eq!(a[..12], [1, 2, 3, 0, 0, 0, 4, 0, 3, 0, 0, 0]);
    assert_eq!(b[..12], [1, 2, 2, 0, 0, 0, 4, 0, 2, 0, 0, 0]);
}

#[test]
fn qemu_clock_follows_the_host_clock() {
    if !require_qemu("qemu_clock_follows_the_host_clock") {
        return;
    }
    let elf = build_firmware().expect("firmware");
    let tmp = TempDir::new("qemu-clock").expect("tmp");
    let mut q = Qemu::start(&elf, tmp.path(), BOOT).expect("qemu");
    let t0 = Instant::now();
    let up0 = status_uptime(&q.request(b"!status", REPLY).expect("status"));
    // Ask again just after the guest's 3 s mark would pass on a correct clock.
    std::thread::sleep(Duration::from_millis(3_300));
    let up1 = status_uptime(&q.request(b"!status", REPLY).expect("status"));
    let host = t0.elapsed().as_secs_f64();
    let guest = (up1 - up0) as f64;
    // `!status` reports whole seconds, so this bounds gross errors only (a wrong SysTick reload,
    // lost wraps). The 12.5 MHz core clock itself was checked to 0.5% against the host clock
    // over 12 s when the board was written (see CORE_HZ in boards/qemu-lm3s6965).
    assert!(
        (guest - host).abs() <= 1.0,
        "guest {up0}s -> {up1}s, host {host:.2}s"
    );
    assert_clean(&q);
}

#[test]
fn qemu_firmware_panic_is_reported_and_exits() {
    if !require_qemu("qemu_firmware_panic_is_reported_and_exits") {
        return;
    }
    let elf = build_firmware().expect("firmware");
    let tmp = TempDir::new("qemu-panic").expect("tmp");
    // A directory where the flash file should be: SYS_OPEN fails, init() panics.
    std::fs::create_dir(tmp.path().join("lowband-flash.bin")).expect("mkdir");
    let mut q = Qemu::start(&elf, tmp.path(), BOOT).expect("qemu");
    let st = q.wait_exit(BOOT).expect("QEMU exits after the panic");
    assert_eq!(st.code(), Some(1), "semihosting exit status");
    let err = q.stderr();
    assert!(
        err.contains("lowband: panic:") && err.contains("lowband-flash.bin"),
        "{err}"
    );
}

#[test]
fn qemu_stack_overflow_is_visible() {
    if !require_qemu("qemu_stack_overflow_is_visible") {
        return;
    }
    // The fixture recurses past the 8 KiB reserve. The stack sits below the statics, so the
    // overflow leaves SRAM (QEMU's stellaris machines ignore bus errors but log them) instead of
    // corrupting .bss silently; assert_clean in the other tests would see it.
    let elf = build_bin("stack-overflow").expect("fixture");
    let tmp = TempDir::new("qemu-overflow").expect("tmp");
    let mut q = Qemu::start(&elf, tmp.path(), BOOT).expect("qemu");
    q.wait_diagnostic("recursing", BOOT).expect("started");
    let _ = q.wait_exit(Duration::from_secs(5));
    let errs = q.guest_errors();
    assert!(
        errs.iter()
            .any(|l| l.starts_with("Invalid write at addr 0x1FFF")),
        "overflow not reported: {errs:#?}"
    );
}
