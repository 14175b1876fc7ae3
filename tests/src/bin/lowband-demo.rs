//! lowband's main job on the embedded default, end to end on this machine:
//!
//! ```text
//! matrix-nio (alice) ─HTTP─► lowband tunnel ─UDP─► link emulator (100 bit/s) ─UDP─► lowband serve ─HTTP─► Synapse
//!                                                                                               ▲
//! matrix-nio (bob) ──────────────────────── directly, as a user on the homeserver's side ───────┤
//!                                                                                               │
//! Matrix firmware (QEMU lm3s6965) ─UART─► serial line emulator (100 bit/s) ─pty─► lowband serve ┘
//! ```
//!
//! Starts a local Synapse (from the venv `scripts/setup.sh` made), generates keys, starts
//! `serve`, the emulated link and `tunnel`, then alice creates a room, invites bob and sends a
//! message across the slow link; bob, on the homeserver's side, receives it. Then the device:
//! the `matrix` firmware in QEMU, provisioned with `lowband keygen` keys, on a 100 bit/s serial
//! line to `serve --listen-serial`; it joins the room, posts a reading, and answers alice's
//! `!status` sent through the tunnel. Prints each step with the bytes it cost on its link and
//! the airtime (`--no-device` skips the device part).
//!
//! ```text
//! lowband-demo [--rate BPS] [--loss P] [--message TEXT] [--no-device]
//! ```

use core::time::Duration;
use std::time::Instant;

use anyhow::{anyhow, Context};
use lowband_tests::gateway::{keygen, linksim_relay, lowband, settled_link_bytes};
use lowband_tests::{free_port, wait_for_port, Gateway, Nio, Synapse, SynapseOpts, TempDir, Venv};
use serde_json::{json, Value};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "lowband-demo [--rate BPS (default 100)] [--loss P (default 0)] [--message TEXT] [--no-device]"
        );
        return Ok(());
    }
    let rate: u32 = arg(&args, "--rate")
        .map_or(Ok(100), |r| r.parse())
        .context("--rate")?;
    let loss: f64 = arg(&args, "--loss")
        .map_or(Ok(0.0), |r| r.parse())
        .context("--loss")?;
    let message = arg(&args, "--message").unwrap_or_else(|| "hello over 100 bit/s".into());
    let venv = Venv::find().ok_or_else(|| anyhow!("no venv: run `bash scripts/setup.sh` first"))?;

    println!("starting Synapse ...");
    let hs = Synapse::start_temp(
        &venv,
        SynapseOpts {
            label: "demo".into(),
            presence: false,
            ..SynapseOpts::default()
        },
    )?;
    println!("  Synapse at {}", hs.client_url());
    let (alice, alice_token) = hs.register_user("alice", "pw-alice")?;
    let (bob, bob_token) = hs.register_user("bob", "pw-bob")?;
    let (sensor, sensor_token) = hs.register_user("sensor", "pw-sensor")?;

    let dir = TempDir::new("demo")?;
    let d = dir.path().to_path_buf();
    let gateway_pub = keygen(&d.join("gateway.key"))?;
    let tunnel_pub = keygen(&d.join("tunnel.key"))?;
    println!("  gateway key {gateway_pub}\n  tunnel key  {tunnel_pub}");
    let stats = d.join("stats.json");
    let serve_addr = format!("127.0.0.1:{}", free_port()?);
    let relay_addr = format!("127.0.0.1:{}", free_port()?);
    let http_port = free_port()?;
    let rate_s = rate.to_string();

    let mut c = lowband()?;
    c.args([
        "serve",
        "--listen-udp",
        &serve_addr,
        "--homeserver",
        &hs.client_url(),
        "--key",
    ])
    .arg(d.join("gateway.key"))
    .args(["--allow-key", &tunnel_pub, "--stats-file"])
    .arg(&stats)
    .args(["--link-rate", &rate_s, "--link-mtu", "256"]);
    let _serve = Gateway::spawn("serve", c, &d.join("serve.log"))?;
    let mut c = linksim_relay()?;
    c.args(["--udp-listen", &relay_addr, "--udp-target", &serve_addr])
        .args([
            "--rate",
            &rate_s,
            "--loss",
            &loss.to_string(),
            "--mtu",
            "256",
            "--seed",
            "1",
        ])
        .args(["--report-s", "0"]);
    let _relay = Gateway::spawn("link", c, &d.join("relay.log"))?;
    let mut c = lowband()?;
    c.args(["tunnel", "--listen-http", &format!("127.0.0.1:{http_port}")])
        .args([
            "--gateway",
            &relay_addr,
            "--gateway-key",
            &gateway_pub,
            "--key",
        ])
        .arg(d.join("tunnel.key"))
        .args(["--link-rate", &rate_s, "--link-mtu", "256"]);
    let tunnel = Gateway::spawn("tunnel", c, &d.join("tunnel.log"))?;
    wait_for_port(http_port, Duration::from_secs(30))?;
    let tunnel_url = format!("http://127.0.0.1:{http_port}");
    println!("  serve on {serve_addr}, link {relay_addr} at {rate} bit/s (loss {loss}), tunnel {tunnel_url}\n");

    // Airtime at this rate decides the timeouts: allow 40 s per 100 bytes, at least 120 s.
    let t = (400_000.0 / f64::from(rate.max(1))).max(120.0);
    let mut nio = Nio::start(&venv, &tunnel_url)?;
    let mut step = |mut s: Value| -> anyhow::Result<Value> {
        s["timeout_s"] = json!(t);
        nio.step_ok(&s)
            .map_err(|e| anyhow!("{e}\ntunnel log:\n{}", tunnel.log_tail(20)))
    };
    let quiet = Duration::from_millis(1500 + 20_000 / u64::from(rate.max(1)) * 100);
    let mut total = 0u64;
    let mut report = |what: &str, before: &mut u64, started: Instant| {
        let now = settled_link_bytes(&stats, &tunnel_pub, quiet);
        let bytes = now - *before;
        *before = now;
        total += bytes;
        let air = bytes as f64 * 8.0 / f64::from(rate.max(1));
        println!(
            "  {what:<40} {bytes:>6} B on the link  {air:>7.1} s airtime  ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    };

    let mut b = 0u64;
    let t0 = Instant::now();
    step(
        json!({"op": "restore", "client": "alice", "user_id": alice, "access_token": alice_token,
                "request_timeout_s": t}),
    )?;
    step(
        json!({"op": "restore", "client": "bob", "user_id": bob, "access_token": bob_token,
                "url": hs.client_url()}),
    )?;
    let room = step(json!({"op": "create_room", "client": "alice", "name": "lowband demo"}))?
        ["room_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no room id"))?
        .to_owned();
    report("alice creates a room (through the link)", &mut b, t0);
    let t1 = Instant::now();
    step(json!({"op": "invite", "client": "alice", "room_id": room, "user_id": bob}))?;
    report("alice invites bob", &mut b, t1);
    step(json!({"op": "join", "client": "bob", "room_id": room}))?;
    let t2 = Instant::now();
    let sent = step(json!({"op": "send", "client": "alice", "room_id": room, "body": message}))?;
    report(&format!("alice sends {message:?}"), &mut b, t2);
    let got = step(json!({"op": "wait_event", "client": "bob", "room_id": room, "body": message}))?;
    println!(
        "\nbob (on the homeserver) received {:?} from {} as {}",
        got["event"]["content"]["body"].as_str().unwrap_or(""),
        got["event"]["sender"].as_str().unwrap_or(""),
        sent["event_id"].as_str().unwrap_or("")
    );
    println!(
        "total {total} B on the link ({:.0} s of airtime at {rate} bit/s); plain HTTP/1.1 needs 907 B for the send alone",
        total as f64 * 8.0 / f64::from(rate.max(1))
    );
    if !args.iter().any(|a| a == "--no-device") {
        let dev = Device {
            hs: &hs,
            dir: &d,
            room: &room,
            user: &sensor,
            token: &sensor_token,
            controller: &alice,
            gateway_pub: &gateway_pub,
            rate,
        };
        dev.run(&mut |s| step(s))?;
    }
    nio.finish();
    Ok(())
}

/// The device part: the Matrix firmware in QEMU on a slow serial line to its own `serve`.
struct Device<'a> {
    hs: &'a Synapse,
    dir: &'a std::path::Path,
    room: &'a str,
    user: &'a str,
    token: &'a str,
    controller: &'a str,
    gateway_pub: &'a str,
    rate: u32,
}

impl Device<'_> {
    fn run(&self, step: &mut dyn FnMut(Value) -> anyhow::Result<Value>) -> anyhow::Result<()> {
        use lowband_linksim::{StreamConfig, StreamLink};
        use lowband_tests::qemu::{build_matrix, qemu_available, Qemu, SerialLine};
        use serialport::SerialPort as _;

        if !qemu_available() {
            println!(
                "\n(no qemu-system-arm: the device part is skipped; scripts/setup.sh installs it)"
            );
            return Ok(());
        }
        println!(
            "\nthe device: Matrix firmware in QEMU (lm3s6965evb), {} bit/s serial line",
            self.rate
        );
        println!("  building the firmware (thumbv7m-none-eabi, nightly build-std) ...");
        let elf = build_matrix()?;
        let d = self.dir;
        // Provisioning: the device's key file from `lowband keygen`, the gateway's public key.
        let dev_pub = keygen(&d.join("device.key"))?;
        let dev_key = std::fs::read_to_string(d.join("device.key"))?;
        let qdir = d.join("board");
        std::fs::create_dir_all(&qdir)?;
        let mut seed = [0u8; 32];
        getrandom(&mut seed)?;
        std::fs::write(
            qdir.join("lowband-device.conf"),
            format!(
                "seed={}\nkey={}\ngateway={}\nroom={}\ntoken={}\ncontroller={}\n\
                 interval=3600\nrate={}\n",
                b64(&seed),
                dev_key.trim(),
                self.gateway_pub,
                self.room,
                self.token,
                self.controller,
                self.rate
            ),
        )?;
        // The device must be invited to join the room: alice does it through the tunnel.
        step(
            json!({"op": "invite", "client": "alice", "room_id": self.room, "user_id": self.user}),
        )?;
        let (master, slave) = serialport::TTYPort::pair()?;
        let slave_path = slave.name().ok_or_else(|| anyhow!("pty name"))?;
        let mut c = lowband()?;
        c.args(["serve", "--listen-serial", &slave_path, "--baud", "115200"])
            .args(["--homeserver", &self.hs.client_url(), "--key"])
            .arg(d.join("gateway.key"))
            .args(["--allow-key", &dev_pub, "--state-dir"])
            .arg(d.join("serve-serial"))
            .args(["--link-rate", &self.rate.to_string(), "--link-mtu", "1024"]);
        let serve = Gateway::spawn("serve-serial", c, &d.join("serve-serial.log"))?;
        let line = SerialLine::start(
            master,
            StreamLink::symmetric(StreamConfig::with_rate(u64::from(self.rate)), 5),
        )?;
        let t0 = Instant::now();
        let mut q = Qemu::start(&elf, &qdir, Duration::from_secs(30))?;
        line.attach(q.uart()?);
        let airtime = self.airtime_s(1_000.0);
        let line_bytes = |line: &SerialLine| -> u64 {
            let [up, down] = line.counters();
            up.bytes_offered + down.bytes_offered
        };
        let wait = |what: &str, ok: &dyn Fn(&[String]) -> bool| -> anyhow::Result<()> {
            let end = Instant::now() + Duration::from_secs_f64(airtime.max(240.0));
            loop {
                let m = self.device_messages()?;
                if ok(&m) {
                    return Ok(());
                }
                if Instant::now() > end {
                    return Err(anyhow!(
                        "{what}: not in time\nfirmware: {:#?}\nserve log:\n{}",
                        q.diagnostics(),
                        serve.log_tail(30)
                    ));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        };
        wait("the device's first reading", &|m| {
            m.iter().any(|b| b.starts_with("t="))
        })?;
        let b1 = line_bytes(&line);
        println!(
            "  {:<40} {b1:>6} B on the line  {:>7.1} s airtime, both ways  ({:.1} s)",
            "boot: handshake, join, first reading",
            self.airtime_s(b1 as f64),
            t0.elapsed().as_secs_f64()
        );
        let t1 = Instant::now();
        step(json!({"op": "send", "client": "alice", "room_id": self.room, "body": "!status"}))?;
        wait("the answer to !status", &|m| {
            m.iter().any(|b| b.starts_with("boot "))
        })?;
        let b2 = line_bytes(&line) - b1;
        let answer = self
            .device_messages()?
            .into_iter()
            .find(|b| b.starts_with("boot "))
            .unwrap_or_default();
        println!(
            "  {:<40} {b2:>6} B on the line  {:>7.1} s airtime, both ways  ({:.1} s)",
            "alice: !status, the device answers",
            self.airtime_s(b2 as f64),
            t1.elapsed().as_secs_f64()
        );
        println!("\nthe device answered {answer:?} (issue 5's budgets: a post <= 64 B, a command <= 96 B)");
        q.kill();
        Ok(())
    }

    fn airtime_s(&self, bytes: f64) -> f64 {
        bytes * 8.0 / f64::from(self.rate.max(1))
    }

    /// The device's messages in the room, oldest first (bodies).
    fn device_messages(&self) -> anyhow::Result<Vec<String>> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            self.hs.client_url(),
            self.room.replace('!', "%21").replace(':', "%3A")
        );
        let auth = format!("Bearer {}", self.token);
        let r = lowband_tests::http::request(
            "GET",
            &url,
            &[("Authorization", &auth)],
            &[],
            Duration::from_secs(10),
        )
        .and_then(|r| r.json())?;
        let mut v: Vec<String> = r["chunk"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|e| e["sender"] == self.user && e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect();
        v.reverse();
        Ok(v)
    }
}

/// A provisioning seed from the OS.
fn getrandom(out: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(out)?;
    Ok(())
}

/// Standard base64 (the provisioning file's key format).
fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(char::from(T[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    s
}
