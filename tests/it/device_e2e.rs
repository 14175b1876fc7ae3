//! The firmware's Matrix application on the host board, over a pty, through `lowband serve
//! --listen-serial` to a real Synapse; a matrix-nio user in the room sees the readings and
//! commands the device.
//!
//! ```text
//!  MatrixApp (boards/host, pty A slave) ─ serial ─ A master ═ bridge ═ B master ─ B slave ─ lowband serve ─ Synapse
//!                                              (counts bytes, can drop answers)                          │
//!                                                          alice (matrix-nio) ───────────────────────────┘
//! ```
//!
//! The bridge copies the serial line between two pty pairs byte for byte (so its counters are
//! the bytes on the line); in [`DROP_ANSWERS`] mode it deframes the gateway's side to drop
//! every answer after the handshake.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use core::time::Duration;
use std::time::Instant;

use lowband_codec::frame::{self, Deframer};
use lowband_codec::noise::Keypair;
use lowband_firmware::{AppConfig, MatrixApp, Provisioned};
use lowband_tests::gateway::lowband;
use lowband_tests::{http, require_peers, Gateway, Nio, Synapse, SynapseOpts, TempDir};
use serde_json::{json, Value};
use serialport::{SerialPort, TTYPort};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    s
}

/// Bridge modes.
const PASS: u8 = 0;
/// Forward the first serve->device packet of a session (the handshake reply), drop the rest:
/// the homeserver gets the device's requests, the device never sees an answer.
const DROP_ANSWERS: u8 = 1;

/// The device's serial line (pty A master) <-> serve's (pty B master); `bytes` counts what
/// crossed, [0] device to serve, [1] serve to device.
fn bridge(
    mut dev: TTYPort,
    mut gw: TTYPort,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    bytes: Arc<[AtomicU64; 2]>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        dev.set_timeout(Duration::from_millis(2)).unwrap();
        gw.set_timeout(Duration::from_millis(2)).unwrap();
        let mut up = Deframer::<2048>::for_packets();
        let mut down = Deframer::<2048>::for_packets();
        let mut buf = [0u8; 2048];
        let mut out = vec![0u8; 4200];
        let mut down_seen = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = dev.read(&mut buf) {
                bytes[0].fetch_add(n as u64, Ordering::Relaxed);
                let _ = gw.write_all(&buf[..n]);
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let used = up.handle_bytes(rest);
                    rest = &rest[used..];
                    if let Some(Ok(p)) = up.poll_frame() {
                        if p.first().is_some_and(|b| b & 0x80 == 0) {
                            // A handshake packet (msg1): a new session, count answers anew.
                            down_seen = 0;
                        }
                    }
                }
            }
            if let Ok(n) = gw.read(&mut buf) {
                if mode.load(Ordering::Relaxed) == PASS {
                    bytes[1].fetch_add(n as u64, Ordering::Relaxed);
                    let _ = dev.write_all(&buf[..n]);
                    continue;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let used = down.handle_bytes(rest);
                    rest = &rest[used..];
                    if let Some(Ok(p)) = down.poll_frame() {
                        down_seen += 1;
                        if down_seen > 1 {
                            continue;
                        }
                        let m = frame::encode_packet(p, true, &mut out).expect("frame");
                        bytes[1].fetch_add(m as u64, Ordering::Relaxed);
                        let _ = dev.write_all(&out[..m]);
                    }
                }
            }
        }
    })
}

/// One boot of the device: the firmware app on the host board until `stop`.
fn boot_device(
    pty: TTYPort,
    flash: std::path::PathBuf,
    prov: Provisioned,
    cfg: Arc<(String, String, String)>,
    celsius_milli: i32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(u32, u32, u32), String>> {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let parts =
                lowband_board_host::init(Box::new(pty), &flash, prov).map_err(|e| e.to_string())?;
            parts
                .sensor
                .handle()
                .store(celsius_milli, Ordering::Relaxed);
            let app_cfg = AppConfig {
                room: &cfg.0,
                access_token: &cfg.1,
                filter: &cfg.2,
                sync_timeout_ms: 2_000,
                sync_interval_ms: 100,
                interval_s: 3_600,
                link_bps: 115_200,
            };
            let mut scratch = vec![0u8; lowband_device::DEFAULT_RECORD_MAX];
            let mut app: Box<MatrixApp<lowband_board_host::Host>> = Box::new(
                MatrixApp::boot(parts, &app_cfg, &mut scratch).map_err(|e| format!("{e:?}"))?,
            );
            let mut inflate = vec![0u8; lowband_device::runner::INFLATE_DICT_LEN + 16 * 1024];
            let boots = app.settings().boots;
            while !stop.load(Ordering::Relaxed) {
                match app.poll(&mut inflate) {
                    Ok(p) if p.packets > 0 => {}
                    Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                    Err(e) => return Err(format!("{e:?}")),
                }
            }
            Ok((
                boots,
                app.runner().stats().sent,
                app.runner().session_stats().handshakes,
            ))
        })
        .expect("thread")
}

/// The device's messages in the room, oldest first (bodies).
fn device_messages(nio: &mut Nio, room: &str, device: &str) -> Vec<String> {
    let r = nio
        .step_ok(&json!({"op": "room_messages", "room_id": room, "limit": 50, "client": "alice"}))
        .expect("room_messages");
    let mut v: Vec<String> = r["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sender"] == device && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    v.reverse();
    v
}

/// Synapse with the device's account, alice in a public room, serve admitting the device.
struct Setup {
    _hs: Synapse,
    dir: TempDir,
    serve: Gateway,
    /// pty B's master (serve has B's slave open) and B's slave, kept open.
    gw_line: Option<(TTYPort, TTYPort)>,
    alice: String,
    alice_token: String,
    nio: Nio,
    room: String,
    dev_user: String,
    dev_token: String,
    filter_id: String,
    prov: Provisioned,
}

fn setup(venv: &lowband_tests::Venv, label: &str) -> Setup {
    let hs = Synapse::start_temp(
        venv,
        SynapseOpts {
            label: label.into(),
            presence: false,
            ..SynapseOpts::default()
        },
    )
    .expect("synapse");
    let dir = TempDir::new(label).expect("tmp");
    let d = dir.path().to_path_buf();
    let (dev_user, dev_token) = hs.register_user("sensor", "sensor-pass").expect("register");
    let (alice, alice_token) = hs
        .register_user("alice", "alice-pass")
        .expect("register alice");
    // The device's sync filter, defined once for its account (the id is tiny on the link).
    let filter = json!({
        "room": {"timeline": {"limit": 5}, "state": {"types": []},
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

    let mut nio = Nio::start(venv, &hs.client_url()).expect("nio");
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

    // Keys: the gateway's and the device's, and serve admitting the device.
    let gw = Keypair::from_secret([0x42; 32]);
    let dev_secret = [0x24; 32];
    let dev_pub = Keypair::from_secret(dev_secret).public();
    std::fs::write(d.join("gateway.key"), format!("{}\n", b64(&[0x42; 32]))).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let p = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(d.join("gateway.key"), p).unwrap();
    }
    // serve's end of the line: pty B (the bridge holds B's master).
    let (gw_master, gw_slave) = TTYPort::pair().expect("pty");
    let gw_path = gw_slave.name().expect("pty name");
    let mut c = lowband().unwrap();
    c.args([
        "serve",
        "--listen-serial",
        &gw_path,
        "--baud",
        "115200",
        "--homeserver",
        &hs.client_url(),
        "--key",
    ])
    .arg(d.join("gateway.key"))
    .args(["--allow-key", &b64(&dev_pub.0), "--stats-file"])
    .arg(d.join("stats.json"))
    .args(["--link-rate", "115200", "--link-mtu", "1400"])
    .env("LOWBAND_LOG", "info,lowband_gateway=debug");
    let serve = Gateway::spawn("serve", c, &d.join("serve.log")).expect("serve");
    std::thread::sleep(Duration::from_millis(500));

    let prov = Provisioned {
        seed: [7; 32],
        static_key: dev_secret,
        gateway_key: gw.public().0,
    };
    Setup {
        _hs: hs,
        dir,
        serve,
        gw_line: Some((gw_master, gw_slave)),
        alice,
        alice_token,
        nio,
        room,
        dev_user,
        dev_token,
        filter_id,
        prov,
    }
}

#[test]
fn device_joins_posts_answers_and_survives_reboots() {
    let Some(venv) = require_peers("device_joins_posts_answers_and_survives_reboots") else {
        return;
    };
    let Setup {
        _hs,
        dir,
        serve,
        gw_line,
        alice: _,
        alice_token: _,
        mut nio,
        room,
        dev_user,
        dev_token,
        filter_id,
        prov,
    } = setup(&venv, "device-e2e");
    let (gw_master, _gw_slave) = gw_line.expect("serve's line");
    let d = dir.path().to_path_buf();
    let cfg = Arc::new((room.clone(), dev_token.clone(), filter_id));
    let flash = d.join("flash.bin");
    let mode = Arc::new(AtomicU8::new(PASS));

    let boot = |celsius: i32| {
        let (master, slave) = TTYPort::pair().expect("pty");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let b = bridge(
            master,
            gw_master.try_clone_native().expect("clone pty"),
            Arc::clone(&mode),
            Arc::clone(&stop),
            counters,
        );
        let dev = boot_device(
            slave,
            flash.clone(),
            prov.clone(),
            Arc::clone(&cfg),
            celsius,
            Arc::clone(&stop),
        );
        (stop, b, dev)
    };
    let fail = |what: &str, nio: &mut Nio| -> ! {
        panic!(
            "{what}\nroom: {:?}\nserve log:\n{}",
            device_messages(nio, &room, &dev_user),
            serve.log_tail(40)
        )
    };

    // Boot 1: join, the boot reading, then a command and its answer.
    let (stop, b, dev) = boot(21_000);
    let wait = |nio: &mut Nio, body: &str, secs: u32| {
        nio.step(
            &json!({"op": "wait_event", "client": "alice", "room_id": room,
                         "sender": dev_user, "body": body, "timeout_s": secs}),
        )
        .map(|r| r["ok"] == true)
        .unwrap_or(false)
    };
    if !wait(&mut nio, "t=21.0C", 60) {
        fail("no reading from boot 1", &mut nio);
    }
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!status"}))
        .expect("send !status");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let msgs = device_messages(&mut nio, &room, &dev_user);
        if let Some(s) = msgs.iter().find(|m| m.starts_with("boot ")) {
            break s.clone();
        }
        if Instant::now() > deadline {
            fail("no answer to !status", &mut nio);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(status.starts_with("boot 1 up "), "{status}");
    assert!(status.contains("every 3600s 21.00"), "{status}");
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!led on"}))
        .expect("send !led on");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !device_messages(&mut nio, &room, &dev_user)
        .iter()
        .any(|m| m == "led on")
    {
        if Instant::now() > deadline {
            fail("no answer to !led on", &mut nio);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let (boots, _, handshakes) = dev.join().unwrap().expect("boot 1 ran");
    b.join().unwrap();
    assert_eq!((boots, handshakes), (1, 1));

    // Boot 2: the homeserver gets the reading but the device never hears back; it is killed
    // with the reading still in its (saved) outbox.
    mode.store(DROP_ANSWERS, Ordering::Relaxed);
    let (stop, b, dev) = boot(33_300);
    if !wait(&mut nio, "t=33.3C", 60) {
        fail("no reading from boot 2", &mut nio);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (boots, sent, handshakes) = dev.join().unwrap().expect("boot 2 ran");
    b.join().unwrap();
    assert_eq!((boots, sent), (2, 0), "boot 2 saw no acknowledgement");
    assert_eq!(handshakes, 0, "boot 2 resumed the saved session");

    // Boot 3: the outbox goes out again with the same transaction id (deduplicated by the
    // homeserver), then the new boot's reading.
    mode.store(PASS, Ordering::Relaxed);
    let (stop, b, dev) = boot(44_400);
    if !wait(&mut nio, "t=44.4C", 60) {
        fail("no reading from boot 3", &mut nio);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (boots, sent, handshakes) = dev.join().unwrap().expect("boot 3 ran");
    b.join().unwrap();
    assert_eq!(
        (boots, handshakes),
        (3, 0),
        "boot 3 resumed the saved session"
    );
    assert!(sent >= 2, "boot 3 sent the old and the new reading: {sent}");

    let history = device_messages(&mut nio, &room, &dev_user);
    eprintln!("room history of the device: {history:?}");
    let count = |b: &str| history.iter().filter(|m| *m == b).count();
    assert_eq!(count("t=21.0C"), 1, "{history:?}");
    assert_eq!(
        count("t=33.3C"),
        1,
        "resent after reboot, stored once: {history:?}"
    );
    assert_eq!(count("t=44.4C"), 1, "{history:?}");
    assert_eq!(count("led on"), 1, "{history:?}");
    assert_eq!(
        history.iter().filter(|m| m.starts_with("boot 1 ")).count(),
        1,
        "{history:?}"
    );
    // Commands pushed in boot 1 are not handed out again after the reboots.
    assert!(
        !history
            .iter()
            .any(|m| m.starts_with("boot 2 ") || m.starts_with("boot 3 ")),
        "{history:?}"
    );
    // The boot-2 reading went to serve twice (boot 2, unanswered; boot 3, the same txn id).
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap_or_default();
    let puts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("device send") && l.contains("txn=d2."))
        .collect();
    assert!(puts.len() >= 2, "{puts:?}");
    // One handshake for three boots: the reboots resumed the session serve still held.
    let handshakes = log
        .lines()
        .filter(|l| l.contains("serve: handshake ok"))
        .count();
    assert_eq!(handshakes, 1, "serve saw {handshakes} handshakes");
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("stats.json")).unwrap_or_default())
            .unwrap_or(Value::Null);
    eprintln!("serve stats: {stats}");
    nio.finish();
}

/// Link bytes of a post, an idle period and a pushed sync bringing one command, through the
/// real `lowband serve --listen-serial` and Synapse: the serial bytes on the line, both
/// directions, trailing ACKs and idle-lead delimiters included; texts of 32 characters.
/// Issue 5's budgets: post + acknowledgement <= 64, one command <= 96, nothing new <= 24
/// (`lowband_codec::lb::dev` says where the bytes go). Then reboots from saved and unsaved
/// state (nothing lost, nothing doubled, no handshake), and the rest of the device API at
/// Synapse: a custom event, typing, an invite accepted, a leave.
#[test]
fn device_link_bytes_with_real_serve() {
    use lowband_codec::noise::link::{
        InitiatorConfig, LinkPattern, RetransmitConfig, TransportConfig,
    };
    use lowband_codec::noise::PublicKey;
    use lowband_device::runner::{Runner, RunnerConfig, SerialLink};
    use lowband_device::{DefaultSyncState, EphemeralRng};

    let Some(venv) = require_peers("device_link_bytes_with_real_serve") else {
        return;
    };
    let mut s = setup(&venv, "device-bytes");
    let (gw_master, _gw_slave) = s.gw_line.take().expect("serve's line");
    let (master, slave) = TTYPort::pair().expect("pty");
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let b = bridge(
        master,
        gw_master,
        Arc::new(AtomicU8::new(PASS)),
        Arc::clone(&stop),
        Arc::clone(&bytes),
    );
    let mut slave = slave;
    slave.set_timeout(Duration::from_millis(1)).unwrap();
    let link = lowband_board_host::SerialLink::new(Box::new(slave));
    let mut link = SerialLink::new(link);

    let mut state = DefaultSyncState::new(0);
    let mut pages = lowband_device::AbStore::new(RamPages::default());
    let boot = lowband_device::BootCounter::advance(&mut pages, 0).unwrap();
    state.begin_boot(boot.get()).unwrap();
    state.join(&s.room).unwrap();
    let rng = EphemeralRng::new(&s.prov.seed, boot);
    let init = InitiatorConfig {
        pattern: LinkPattern::IK,
        version: lowband_codec::lb::dev::LINK_VERSION,
        local: Keypair::from_secret(s.prov.static_key),
        remote: PublicKey(s.prov.gateway_key),
        retransmit: RetransmitConfig::for_link_rate(115_200, 0),
        transport: TransportConfig::default(),
    };
    let mut params = lowband_codec::coap::TransmissionParams::for_link(115_200, 128, 0);
    params.nstart = 2;
    let coap = lowband_codec::coap::Config {
        params,
        seed: 5,
        token_len: 1,
        extra_options: &[],
    };
    let client = lowband_codec::session::DeviceClient::new(init.clone(), coap, rng).unwrap();
    let cfg = RunnerConfig {
        access_token: &s.dev_token,
        sync_timeout_ms: 0,
        sync_interval_ms: 1 << 40,
        filter: &s.filter_id,
    };
    let mut runner = Box::new(Runner::new(client, state, &cfg).unwrap());
    let mut inflate = vec![0u8; lowband_device::runner::INFLATE_DICT_LEN + 16 * 1024];
    let t0 = Instant::now();
    let mut run_until = |runner: &mut Runner<EphemeralRng>,
                         what: &str,
                         done: &dyn Fn(&Runner<EphemeralRng>) -> bool| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let now = t0.elapsed().as_millis() as u64;
            runner.poll(now, &mut link, &mut inflate).expect("link");
            if done(runner) {
                break;
            }
            assert!(Instant::now() < end, "{what}: {:?}", runner.stats());
            std::thread::sleep(Duration::from_millis(1));
        }
        // Trailing ACKs and retransmissions settle.
        let quiet = Instant::now() + Duration::from_millis(400);
        while Instant::now() < quiet {
            let now = t0.elapsed().as_millis() as u64;
            runner.poll(now, &mut link, &mut inflate).expect("link");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let wire = |b: &[AtomicU64; 2]| (b[0].load(Ordering::Relaxed), b[1].load(Ordering::Relaxed));

    // Handshake, token, join (a JOIN operation), registration for pushed sync: no full
    // /sync on the device profile.
    run_until(&mut runner, "boot", &|r| {
        r.stats().sent >= 1 && r.push_registered() && r.state().room(&s.room).is_some()
    });
    eprintln!("boot (handshake, join, registration): {:?}", wire(&bytes));
    // Warm-up: one post, and one command from alice (the registration's first use of the room
    // and of alice defines their short numbers; that first contact is printed, not budgeted).
    runner.state_mut().send_text(&s.room, "warm-up").unwrap();
    let n = runner.stats().sent;
    run_until(&mut runner, "warm post", &|r| r.stats().sent > n);
    let (u0, d0) = wire(&bytes);
    s.nio
        .step_ok(&json!({"op": "send", "client": "alice", "room_id": s.room, "body": "!hello"}))
        .expect("send");
    let n = runner.stats().syncs;
    run_until(&mut runner, "first push", &|r| r.stats().syncs > n);
    let (u1, d1) = wire(&bytes);
    let first = (u1 - u0, d1 - d0);
    while runner.state_mut().next_event().is_some() {}

    let text = "t=21.5C h=40% p=1013hPa bat=3.7V";
    assert_eq!(text.chars().count(), 32);
    let (u0, d0) = wire(&bytes);
    runner.state_mut().send_text(&s.room, text).unwrap();
    let n = runner.stats().sent;
    run_until(&mut runner, "post", &|r| r.stats().sent > n);
    let (u1, d1) = wire(&bytes);
    let post = (u1 - u0, d1 - d0);

    // The same after the line was idle for 2 s: both ends lead with a delimiter.
    let idle = Instant::now() + Duration::from_secs(2);
    run_until(&mut runner, "idle", &|_| Instant::now() >= idle);
    let (u0, d0) = wire(&bytes);
    runner
        .state_mut()
        .send_text(&s.room, "t=21.6C h=41% p=1012hPa bat=3.7V")
        .unwrap();
    let n = runner.stats().sent;
    run_until(&mut runner, "post after idle", &|r| r.stats().sent > n);
    let (u1, d1) = wire(&bytes);
    let post_idle = (u1 - u0, d1 - d0);

    // Nothing new: the device is registered; the link stays silent (the post's own echo is
    // not pushed).
    let (u1, d1) = wire(&bytes);
    let quiet = Instant::now() + Duration::from_secs(5);
    run_until(&mut runner, "quiet", &|_| Instant::now() >= quiet);
    let (u2, d2) = wire(&bytes);
    let empty = (u2 - u1, d2 - d1);

    // The periodic refresh of the registration (every PUSH_REFRESH_MS): its cost, amortised.
    runner.refresh_push(t0.elapsed().as_millis() as u64);
    run_until(&mut runner, "refresh", &|r| !r.push_registered());
    run_until(&mut runner, "refreshed", &|r| r.push_registered());
    let (u2b, d2b) = wire(&bytes);
    let refresh = (u2b - u2, d2b - d2);
    let (u2, d2) = (u2b, d2b);

    let command = "!led on please, and report status";
    let command = &command[..32];
    // What flash would hold if the device rebooted before saving after this command.
    let unsaved = runner.state().clone();
    s.nio
        .step_ok(&json!({"op": "send", "client": "alice", "room_id": s.room, "body": command}))
        .expect("send");
    let n = runner.stats().syncs;
    run_until(&mut runner, "command push", &|r| r.stats().syncs > n);
    let (u3, d3) = wire(&bytes);
    let pushed = (u3 - u2, d3 - d2);
    let mut got = None;
    while let Some((_, ev)) = runner.state_mut().next_event() {
        if ev.body() == Some(command) {
            got = Some(ev.sender().to_owned());
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(s.alice.as_str()),
        "the command arrived from alice"
    );
    // alice sees the post.
    let seen = device_messages(&mut s.nio, &s.room, &s.dev_user);
    assert!(seen.iter().any(|m| m == text), "{seen:?}");

    // Reboots: from the state saved before the command was applied, the new boot registers
    // with the older item number and gets the command again (nothing lost); from the state
    // saved after it, the command does not come again (nothing doubled).
    let saved = runner.state().clone();
    let mut last = None;
    for (label, mut st, again) in [("unsaved", unsaved, true), ("saved", saved, false)] {
        let boot = lowband_device::BootCounter::advance(&mut pages, st.boot()).unwrap();
        st.begin_boot(boot.get()).unwrap();
        let rng = EphemeralRng::new(&s.prov.seed, boot);
        let client = lowband_codec::session::DeviceClient::new(init.clone(), coap, rng).unwrap();
        let mut r2 = Box::new(Runner::new(client, st, &cfg).unwrap());
        run_until(&mut r2, "registered again", &|r| r.push_registered());
        let until = Instant::now() + Duration::from_secs(2);
        run_until(&mut r2, "resumed", &|r| {
            (again && r.stats().syncs > 0) || Instant::now() >= until
        });
        let mut got = 0;
        while let Some((_, ev)) = r2.state_mut().next_event() {
            if ev.body() == Some(command) {
                got += 1;
            }
        }
        assert_eq!(got, usize::from(again), "{label}: {:?}", r2.stats());
        last = Some(r2);
    }

    // The rest of the device API, each as one device-profile operation, seen at Synapse:
    // a custom event, typing, an invite accepted (a join), a leave.
    let mut r = last.expect("rebooted runner");
    let mut content = [0u8; 64];
    let n = lowband_codec::pack::pack(br#"{"celsius":21,"unit":"C"}"#, &mut content).unwrap();
    r.state_mut()
        .send_custom(&s.room, "org.lowband.reading", &content[..n])
        .unwrap();
    let sent = r.stats().sent;
    run_until(&mut r, "custom event", &|r| r.stats().sent > sent);
    let ev = s
        .nio
        .step_ok(
            &json!({"op": "wait_event", "client": "alice", "room_id": s.room,
                         "type": "org.lowband.reading", "sender": s.dev_user, "timeout_s": 30}),
        )
        .expect("custom event at alice");
    assert_eq!(
        ev["event"]["content"],
        json!({"celsius": 21, "unit": "C"}),
        "{ev}"
    );
    r.state_mut().set_typing(&s.room, true).unwrap();
    let sent = r.stats().sent;
    run_until(&mut r, "typing", &|r| r.stats().sent > sent);
    let ev = s
        .nio
        .step_ok(
            &json!({"op": "wait_ephemeral", "client": "alice", "room_id": s.room,
                         "type": "m.typing", "user_id": s.dev_user, "timeout_s": 30}),
        )
        .expect("typing at alice");
    assert!(ev["event"].to_string().contains(&s.dev_user), "{ev}");
    let room2 = s
        .nio
        .step_ok(&json!({"op": "create_room", "client": "alice", "name": "second"}))
        .expect("create room")["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.nio
        .step_ok(&json!({"op": "invite", "client": "alice", "room_id": room2,
                         "user_id": s.dev_user}))
        .expect("invite");
    run_until(&mut r, "invite pushed", &|r| {
        r.state().invites().iter().any(|v| v.room() == room2)
    });
    r.state_mut().accept_invite(&room2).unwrap();
    run_until(&mut r, "invite accepted", &|r| {
        r.state().room(&room2).is_some()
    });
    s.nio
        .step_ok(
            &json!({"op": "wait_event", "client": "alice", "room_id": room2,
                         "type": "m.room.member", "sender": s.dev_user, "timeout_s": 30}),
        )
        .expect("the device joined at alice");
    r.state_mut().leave(&room2).unwrap();
    run_until(&mut r, "left", &|r| r.state().room(&room2).is_none());
    let members = http::get_json(
        &format!(
            "{}/_matrix/client/v3/rooms/{}/joined_members?access_token={}",
            s._hs.client_url(),
            room2,
            s.alice_token
        ),
        Duration::from_secs(10),
    )
    .expect("joined members");
    assert!(
        members["joined"].get(&s.dev_user).is_none(),
        "the device left room 2: {members}"
    );
    eprintln!(
        "device ops at Synapse: custom event, typing, invite accepted, leave: ok; {:?}",
        r.stats()
    );
    stop.store(true, Ordering::Relaxed);
    b.join().unwrap();
    eprintln!(
        "link bytes (serial, up+down): post {}+{}={} (budget 64), after 2 s idle {}+{}={}; nothing new for 5 s {}+{}={} \
         (budget 24), registration refresh {}+{}={} (every 15 min), pushed sync with one command {}+{}={} (budget 96); first push from a \
         new sender in a new registration {}+{}={}; runner {:?}",
        post.0,
        post.1,
        post.0 + post.1,
        post_idle.0,
        post_idle.1,
        post_idle.0 + post_idle.1,
        empty.0,
        empty.1,
        empty.0 + empty.1,
        refresh.0,
        refresh.1,
        refresh.0 + refresh.1,
        pushed.0,
        pushed.1,
        pushed.0 + pushed.1,
        first.0,
        first.1,
        first.0 + first.1,
        runner.stats()
    );
    assert!(empty.0 + empty.1 <= 24, "nothing new {empty:?}");
    // Amortised over PUSH_REFRESH_MS (15 min) the refresh is far below a byte a minute.
    assert!(refresh.0 + refresh.1 <= 60, "refresh {refresh:?}");
    assert!(pushed.0 + pushed.1 <= 96, "one command {pushed:?}");
    assert!(post.0 + post.1 <= 64, "post {post:?}");
    assert!(
        post_idle.0 + post_idle.1 <= 64,
        "post after idle {post_idle:?}"
    );
    let _ = (&s.serve, &s.dir);
}

/// Two RAM pages for the boot counter of the measuring device.
#[derive(Default)]
struct RamPages([Vec<u8>; 2]);

impl lowband_device::Flash for RamPages {
    type Error = ();
    const WRITE_SIZE: usize = 4;
    fn page_len(&self) -> usize {
        64
    }
    fn read(&mut self, p: lowband_device::Page, off: usize, buf: &mut [u8]) -> Result<(), ()> {
        let page = &mut self.0[p as usize];
        page.resize(64, 0xff);
        buf.copy_from_slice(&page[off..off + buf.len()]);
        Ok(())
    }
    fn erase(&mut self, p: lowband_device::Page) -> Result<(), ()> {
        self.0[p as usize] = vec![0xff; 64];
        Ok(())
    }
    fn program(&mut self, p: lowband_device::Page, off: usize, data: &[u8]) -> Result<(), ()> {
        let page = &mut self.0[p as usize];
        page.resize(64, 0xff);
        for (d, v) in page[off..].iter_mut().zip(data) {
            *d &= *v;
        }
        Ok(())
    }
}

/// A restart of `serve` (same `--state-dir`) while the device keeps running idle and
/// registered: the restarted `serve` wakes the device, which registers again with its token, so
/// a command alice sent during the outage is pushed (and answered) within seconds of the
/// restart rather than at the device's next 15-minute registration refresh.
#[test]
fn device_is_woken_after_a_serve_restart_and_gets_the_outage_command() {
    let Some(venv) =
        require_peers("device_is_woken_after_a_serve_restart_and_gets_the_outage_command")
    else {
        return;
    };
    let Setup {
        _hs,
        dir,
        serve,
        gw_line,
        alice: _,
        alice_token: _,
        mut nio,
        room,
        dev_user,
        dev_token,
        filter_id,
        prov,
    } = setup(&venv, "device-wake");
    let hs_url = _hs.client_url();
    // This test's serve keeps its state: the one setup started goes.
    drop(serve);
    let (gw_master, gw_slave) = gw_line.expect("serve's line");
    let gw_path = gw_slave.name().expect("pty name");
    let d = dir.path().to_path_buf();
    let state = d.join("state");
    let dev_pub = Keypair::from_secret(prov.static_key).public();
    let spawn_serve = |log: &str| {
        let mut c = lowband().unwrap();
        c.args([
            "serve",
            "--listen-serial",
            &gw_path,
            "--baud",
            "115200",
            "--homeserver",
            &hs_url,
            "--key",
        ])
        .arg(d.join("gateway.key"))
        .args(["--allow-key", &b64(&dev_pub.0), "--state-dir"])
        .arg(&state)
        .args(["--link-rate", "115200", "--link-mtu", "1400"])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
        let g = Gateway::spawn("serve", c, &d.join(log)).expect("serve");
        std::thread::sleep(Duration::from_millis(500));
        g
    };
    let serve = spawn_serve("serve-1.log");

    let cfg = Arc::new((room.clone(), dev_token.clone(), filter_id));
    let (master, slave) = TTYPort::pair().expect("pty");
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let b = bridge(
        master,
        gw_master.try_clone_native().expect("clone pty"),
        Arc::new(AtomicU8::new(PASS)),
        Arc::clone(&stop),
        Arc::clone(&counters),
    );
    let dev = boot_device(
        slave,
        d.join("flash.bin"),
        prov.clone(),
        Arc::clone(&cfg),
        21_000,
        Arc::clone(&stop),
    );
    let wait_answer = |nio: &mut Nio, pred: &dyn Fn(&str) -> bool, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if device_messages(nio, &room, &dev_user)
                .iter()
                .any(|m| pred(m))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        wait_answer(&mut nio, &|m| m == "t=21.0C", 60),
        "no reading\n{}",
        serve.log_tail(40)
    );
    // A pushed command and its answer: the device is registered and serve's cursor holds an
    // acknowledged item.
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!led on"}))
        .expect("send !led on");
    assert!(
        wait_answer(&mut nio, &|m| m == "led on", 60),
        "no answer to !led on\n{}",
        serve.log_tail(40)
    );
    std::thread::sleep(Duration::from_secs(1));
    // serve goes down (killed); alice commands the device meanwhile.
    drop(serve);
    nio.step_ok(&json!({"op": "send", "client": "alice", "room_id": room, "body": "!status"}))
        .expect("send !status");
    std::thread::sleep(Duration::from_secs(1));
    let line0 = [
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
    ];
    let restarted = Instant::now();
    let serve = spawn_serve("serve-2.log");
    let answered = wait_answer(&mut nio, &|m| m.starts_with("boot 1 up "), 30);
    let took = restarted.elapsed();
    let line1 = [
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
    ];
    assert!(
        answered,
        "the outage's command was not pushed within 30 s of the restart\n{}",
        serve.log_tail(60)
    );
    eprintln!(
        "restart to answer: {took:?}; serial bytes since the restart (wake, registration, \
         push, answer): up {} down {}",
        line1[0] - line0[0],
        line1[1] - line0[1]
    );
    let log = std::fs::read_to_string(d.join("serve-2.log")).unwrap_or_default();
    assert!(
        log.contains("waking restored devices"),
        "{}",
        serve.log_tail(60)
    );
    assert!(
        log.contains("device answered the wake"),
        "{}",
        serve.log_tail(60)
    );
    assert!(
        !log.contains("serve: handshake ok"),
        "the device resumed its session: no handshake"
    );
    assert!(!log.contains(&dev_token), "the token is never logged");
    stop.store(true, Ordering::Relaxed);
    let (boots, _, handshakes) = dev.join().unwrap().expect("device ran");
    b.join().unwrap();
    assert_eq!((boots, handshakes), (1, 1), "one boot, one handshake");
    let history = device_messages(&mut nio, &room, &dev_user);
    assert_eq!(
        history
            .iter()
            .filter(|m| m.starts_with("boot 1 up "))
            .count(),
        1,
        "answered once: {history:?}"
    );
    nio.finish();
}
