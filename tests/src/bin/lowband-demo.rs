//! lowband's main job on the embedded default, end to end on this machine:
//!
//! ```text
//! matrix-nio (alice) ─HTTP─► lowband tunnel ─UDP─► link emulator (100 bit/s) ─UDP─► lowband serve ─HTTP─► Synapse
//!                                                                                               ▲
//! matrix-nio (bob) ──────────────────────── directly, as a user on the homeserver's side ───────┘
//! ```
//!
//! Starts a local Synapse (from the venv `scripts/setup.sh` made), generates keys, starts
//! `serve`, the emulated link and `tunnel`, then alice creates a room, invites bob and sends a
//! message across the slow link; bob, on the homeserver's side, receives it. Prints each step
//! with the bytes it cost on the link and its airtime.
//!
//! ```text
//! lowband-demo [--rate BPS] [--loss P] [--message TEXT]
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
        println!("lowband-demo [--rate BPS (default 100)] [--loss P (default 0)] [--message TEXT]");
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
    nio.finish();
    Ok(())
}
