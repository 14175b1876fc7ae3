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
        assert_eq!(flash.len(), 6 * 6144, "six 6 KiB pages");
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

/// A device message: (body, transaction id).
type Msg = (String, String);

/// The device's `m.room.message` events in `room`, oldest first: (body, transaction id). The
/// transaction id is in `unsigned` because the device's own token reads them.
fn device_events(hs: &str, token: &str, room: &str, device: &str) -> Vec<Msg> {
    let url = format!(
        "{hs}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
        room.replace('!', "%21").replace(':', "%3A")
    );
    let auth = format!("Bearer {token}");
    let r = lowband_tests::http::request(
        "GET",
        &url,
        &[("Authorization", &auth)],
        &[],
        Duration::from_secs(10),
    )
    .and_then(|r| r.json())
    .expect("room messages");
    let mut v: Vec<Msg> = r["chunk"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["sender"] == device && e["type"] == "m.room.message")
        .map(|e| {
            (
                e["content"]["body"].as_str().unwrap_or("").to_owned(),
                e["unsigned"]["transaction_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    v.reverse();
    v
}

/// The Matrix firmware (`matrix`: MatrixApp over the device Runner, `no_std`) in QEMU, its
/// UART0 through linksim's serial line at 100 bit/s to `lowband serve --listen-serial` (a pty),
/// a real Synapse and a matrix-nio user: the device joins, posts its reading, answers `!status`
/// and `!led on` from its controller; QEMU is killed while a reply is on the line and booted
/// again from its flash file: the reply arrives once, the LED setting survives, the next
/// boot's reading arrives, and no message or transaction id is in the room twice.
#[test]
fn qemu_matrix_firmware_over_100_bps_serial_survives_kill() {
    use lowband_linksim::{StreamConfig, StreamLink};
    use lowband_tests::gateway::{keygen, lowband};
    use lowband_tests::qemu::{build_matrix, SerialLine};
    use lowband_tests::{http, require_peers, Gateway, Nio, Synapse, SynapseOpts};
    use serde_json::json;
    use serialport::{SerialPort as _, TTYPort};

    let name = "qemu_matrix_firmware_over_100_bps_serial_survives_kill";
    if !require_qemu(name) {
        return;
    }
    let Some(venv) = require_peers(name) else {
        return;
    };
    let elf = build_matrix().expect("matrix firmware");
    let hs = Synapse::start_temp(
        &venv,
        SynapseOpts {
            label: "qemu-matrix".into(),
            presence: false,
            ..SynapseOpts::default()
        },
    )
    .expect("synapse");
    let tmp = TempDir::new("qemu-matrix").expect("tmp");
    let d = tmp.path().to_path_buf();
    let (dev_user, dev_token) = hs.register_user("sensor", "sensor-pass").expect("register");
    let (alice, _) = hs.register_user("alice", "alice-pass").expect("alice");
    // The device's sync filter: text messages only, no state, presence or account data.
    let filter = json!({
        "room": {"timeline": {"limit": 3, "types": ["m.room.message"]}, "state": {"types": []},
                 "ephemeral": {"types": []}, "account_data": {"types": []}},
        "presence": {"types": []}, "account_data": {"types": []}
    });
    let url = format!(
        "{}/_matrix/client/v3/user/{}/filter",
        hs.client_url(),
        dev_user
    );
    let f =
        http::post_json(&url, Some(&dev_token), &filter, Duration::from_secs(10)).expect("filter");
    let filter_id = f["filter_id"].as_str().expect("filter_id").to_owned();
    let mut nio = Nio::start(&venv, &hs.client_url()).expect("nio");
    nio.step_ok(
        &json!({"op": "login", "client": "alice", "user": "alice", "password": "alice-pass"}),
    )
    .expect("login");
    let room = nio
        .step_ok(&json!({"op": "create_room", "client": "alice", "preset": "public_chat"}))
        .expect("room")["room_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Provisioning from `lowband keygen`: the gateway's public key as printed, the device's
    // private key file as written.
    let gw_pub = keygen(&d.join("gateway.key")).expect("keygen gateway");
    let dev_pub = keygen(&d.join("device.key")).expect("keygen device");
    let dev_key = std::fs::read_to_string(d.join("device.key")).expect("device key");
    let qdir = d.join("board");
    std::fs::create_dir_all(&qdir).unwrap();
    std::fs::write(
        qdir.join("lowband-device.conf"),
        format!(
            "# written by {name}\nseed=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc\nkey={}\n\
             gateway={gw_pub}\nroom={room}\ntoken={dev_token}\ncontroller={alice}\n\
             filter={filter_id}\ninterval=3600\nrate=100\nsync_timeout=20000\n",
            dev_key.trim()
        ),
    )
    .unwrap();

    // serve on a pty; the pty's master end is the gateway end of the 100 bit/s line.
    let (master, slave) = TTYPort::pair().expect("pty");
    let slave_path = slave.name().expect("pty name");
    let mut c = lowband().unwrap();
    c.args(["serve", "--listen-serial", &slave_path, "--baud", "115200"])
        .args(["--homeserver", &hs.client_url(), "--key"])
        .arg(d.join("gateway.key"))
        .args(["--allow-key", &dev_pub, "--stats-file"])
        .arg(d.join("stats.json"))
        .args(["--link-rate", "100", "--link-mtu", "1024"])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
    let serve = Gateway::spawn("serve", c, &d.join("serve.log")).expect("serve");
    let line = SerialLine::start(
        master,
        StreamLink::symmetric(StreamConfig::with_rate(100), 5),
    )
    .expect("line");
    let t0 = Instant::now();

    let messages = || device_events(&hs.client_url(), &dev_token, &room, &dev_user);
    let wait_for = |what: &str, secs: u64, q: &Qemu, ok: &dyn Fn(&[Msg]) -> bool| {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let m = messages();
            if ok(&m) {
                eprintln!("{name}: {what} after {:?}", t0.elapsed());
                return;
            }
            if Instant::now() > end {
                panic!(
                    "{what}: not within {secs} s\nroom: {m:?}\nline: {:?}\nfirmware: {:#?}\n\
                     serve log:\n{}",
                    line.counters(),
                    q.diagnostics(),
                    serve.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let bodies =
        |m: &[(String, String)], p: &str| m.iter().filter(|(b, _)| b.starts_with(p)).count();

    // Boot 1: handshake, join, the boot reading.
    let mut q = Qemu::start(&elf, &qdir, BOOT).expect("qemu");
    line.attach(q.uart().expect("uart"));
    wait_for("reading of boot 1", 240, &q, &|m| bodies(m, "t=") == 1);
    // Commands from the controller, answered in the room.
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!status"}))
        .expect("send !status");
    wait_for("answer to !status", 180, &q, &|m| {
        bodies(m, "boot 1 up ") == 1
    });
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!led on"}))
        .expect("send !led on");
    wait_for("answer to !led on", 180, &q, &|m| bodies(m, "led on") == 1);
    q.wait_diagnostic("led on", REPLY).expect("LED switched");

    // A second !status; QEMU is killed as soon as the firmware has queued (and saved) the
    // reply, while it trickles up the 100 bit/s line.
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!status"}))
        .expect("send !status");
    let end = Instant::now() + Duration::from_secs(180);
    while q
        .diagnostics()
        .iter()
        .filter(|l| l.contains(" 1 command(s)"))
        .count()
        < 3
    {
        assert!(
            Instant::now() < end,
            "no third command: {:#?}",
            q.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = messages();
    // Boot 1's main loop ran the handshake (boot 2 resumes): its peak is the deeper one.
    let boot1_loop_peak = stack_peak(&q.diagnostics(), "lowband: stack high water ");
    q.kill();
    assert_clean(&q);
    eprintln!(
        "{name}: killed after {:?}; room then: {before:?}",
        t0.elapsed()
    );

    // Boot 2 from the same flash file: the LED comes back on, the queued reply goes out (same
    // transaction id), then this boot's reading.
    let mut q = Qemu::start(&elf, &qdir, BOOT).expect("qemu again");
    line.attach(q.uart().expect("uart"));
    q.wait_diagnostic("led on", BOOT)
        .expect("LED setting restored");
    // The session saved with the state resumes: no handshake on the 100 bit/s line.
    q.wait_diagnostic("matrix: session resumed, no handshake", BOOT)
        .expect("session resumed after the kill");
    wait_for("the reply queued before the kill", 240, &q, &|m| {
        m.iter()
            .any(|(b, _)| b.starts_with("boot 1 up ") && b.contains(" led on "))
    });
    wait_for("reading of boot 2", 240, &q, &|m| bodies(m, "t=") == 2);
    std::thread::sleep(Duration::from_secs(3));

    let history = messages();
    eprintln!("{name}: room history of the device: {history:?}");
    eprintln!("{name}: line counters {:?}", line.counters());
    assert_eq!(
        bodies(&history, "t="),
        2,
        "one reading per boot: {history:?}"
    );
    assert_eq!(bodies(&history, "boot 1 up "), 2, "{history:?}");
    assert_eq!(bodies(&history, "led on"), 1, "{history:?}");
    let mut txns: Vec<&str> = history.iter().map(|(_, t)| t.as_str()).collect();
    assert!(txns.iter().all(|t| t.starts_with('d')), "{history:?}");
    txns.sort_unstable();
    txns.dedup();
    assert_eq!(
        txns.len(),
        history.len(),
        "a transaction id twice: {history:?}"
    );
    assert!(
        history
            .iter()
            .any(|(b, t)| b.starts_with("t=") && t.starts_with("d2.")),
        "{history:?}"
    );
    // Stack: booting is the deepest (the state record scratch and the session being built);
    // the main loop's high-water mark is measured from a repaint after boot.
    for l in q.diagnostics().iter().filter(|l| l.contains("stack")) {
        eprintln!("{name}: boot 2: {l}");
    }
    let loop_peak = stack_peak(&q.diagnostics(), "lowband: stack high water ").max(boot1_loop_peak);
    eprintln!(
        "{name}: main loop peaks: boot 1 (handshake) {boot1_loop_peak} B, both boots {loop_peak} B"
    );
    // Both peaks inside the reserve of memory-matrix.x with room to spare (an overflow would
    // also show as an invalid write under -d guest_errors: assert_clean below).
    let reserve = matrix_stack_reserve();
    let boot_peak = q
        .diagnostics()
        .iter()
        .filter_map(|l| l.strip_prefix("lowband: matrix: up, boot used "))
        .filter_map(|r| r.split(' ').next()?.parse::<usize>().ok())
        .max()
        .expect("boot stack report");
    for (what, peak) in [("boot", boot_peak), ("main loop", loop_peak)] {
        assert!(
            peak + 512 <= reserve,
            "{what} stack {peak} bytes: less than 512 of the {reserve}-byte reserve left"
        );
    }
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap_or_default();
    let handshakes = log
        .lines()
        .filter(|l| l.contains("serve: handshake ok"))
        .count();
    assert_eq!(handshakes, 1, "one handshake for both boots: {handshakes}");
    assert_clean(&q);
    q.kill();
    drop(slave);
    let _ = alice;
}

/// The largest number after `prefix` in the diagnostics (a stack report).
fn stack_peak(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|r| r.split(' ').next()?.parse::<usize>().ok())
        .max()
        .expect("stack report")
}

/// The `matrix` stack reserve in bytes, from `_stack_start - _stack_end` in
/// boards/qemu-lm3s6965/memory-matrix.x (what scripts/firmware.sh counts as static RAM).
fn matrix_stack_reserve() -> usize {
    let x = std::fs::read_to_string(
        lowband_tests::workspace_root().join("boards/qemu-lm3s6965/memory-matrix.x"),
    )
    .expect("memory-matrix.x");
    let sym = |name: &str| -> usize {
        let v = x
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.trim().strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} in memory-matrix.x"));
        let hex = v
            .trim()
            .trim_end_matches(';')
            .trim()
            .trim_start_matches("0x");
        usize::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{name} = {v}"))
    };
    sym("_stack_start") - sym("_stack_end")
}

#[test]
fn matrix_stack_reserve_is_read() {
    let r = matrix_stack_reserve();
    assert!((4096..=32 * 1024).contains(&r), "{r}");
}

/// README's device section states the memory figures the QEMU Matrix firmware asserts at
/// compile time (thumbv7m), and the host figure of the sync state.
#[test]
fn documented_device_sizes_match_the_firmware() {
    let root = lowband_tests::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let bin = std::fs::read_to_string(root.join("boards/qemu-lm3s6965/src/bin/matrix.rs"))
        .expect("matrix.rs");
    let mut seen = 0;
    for line in bin.lines() {
        // const _: () = assert!(size_of::<T>() == N);
        let Some(rest) = line.strip_prefix("const _: () = assert!(size_of::<") else {
            continue;
        };
        let (ty, n) = rest.split_once(">() == ").expect("assertion shape");
        let n: String = n
            .trim_end_matches(");")
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let doc = format!("`size_of::<{ty}>()` = {n}");
        assert!(readme.contains(&doc), "README does not state {doc}");
        seen += 1;
    }
    assert_eq!(seen, 3, "the firmware asserts three sizes");
    #[cfg(target_pointer_width = "64")]
    {
        let host = format!("({} on x86_64)", lowband_device::DEFAULT_SYNC_STATE_SIZE);
        assert!(readme.contains(&host), "README does not state {host}");
    }
}
