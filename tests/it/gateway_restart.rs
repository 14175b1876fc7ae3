//! matrix-nio -> `lowband tunnel` -> `lowband serve` -> Synapse, with `serve` restarted in
//! the middle of a conversation: with `--state-dir` the tunnel's session resumes without a
//! new handshake; without it, the tunnel handshakes again. Either way every message reaches
//! the room exactly once.

use core::time::Duration;
use std::path::Path;

use lowband_tests::gateway::{keygen, lowband};
use lowband_tests::{
    free_port, http, require_peers, wait_for_port, Gateway, Nio, Synapse, SynapseOpts, TempDir,
};
use serde_json::{json, Value};

/// One `serve` process with its metrics endpoint.
fn start_serve(
    d: &Path,
    hs: &Synapse,
    udp: &str,
    tunnel_pub: &str,
    state: bool,
    n: u32,
) -> (Gateway, u16) {
    let metrics = free_port().unwrap();
    let mut c = lowband().unwrap();
    c.args([
        "serve",
        "--listen-udp",
        udp,
        "--homeserver",
        &hs.client_url(),
    ])
    .arg("--key")
    .arg(d.join("gateway.key"))
    .args([
        "--allow-key",
        tunnel_pub,
        "--link-rate",
        "9600",
        "--link-mtu",
        "256",
    ])
    .args(["--metrics", &format!("127.0.0.1:{metrics}")])
    .env("LOWBAND_LOG", "info");
    if state {
        c.arg("--state-dir").arg(d.join("state"));
    }
    let g = Gateway::spawn("serve", c, &d.join(format!("serve{n}.log"))).expect("serve");
    wait_for_port(metrics, Duration::from_secs(20)).expect("serve metrics listening");
    (g, metrics)
}

/// `lowband_handshakes_total{result="ok"}` of the serve whose metrics are on `port`.
fn handshakes_ok(port: u16) -> u64 {
    let r = http::request(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        &[],
        &[],
        Duration::from_secs(5),
    )
    .expect("metrics");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("lowband_handshakes_total{result=\"ok\"} "))
        .unwrap_or_else(|| panic!("no handshake counter in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn restart_scenario(test: &str, state: bool) {
    let Some(venv) = require_peers(test) else {
        return;
    };
    let hs = Synapse::start_temp(
        &venv,
        SynapseOpts {
            label: test.into(),
            presence: false,
            ..SynapseOpts::default()
        },
    )
    .expect("start synapse");
    let dir = TempDir::new(test).expect("tempdir");
    let d = dir.path().to_path_buf();
    let gateway_pub = keygen(&d.join("gateway.key")).expect("keygen gateway");
    let tunnel_pub = keygen(&d.join("tunnel.key")).expect("keygen tunnel");
    let udp = format!("127.0.0.1:{}", free_port().unwrap());
    let http_port = free_port().unwrap();
    let (serve1, m1) = start_serve(&d, &hs, &udp, &tunnel_pub, state, 1);
    let mut c = lowband().unwrap();
    c.args(["tunnel", "--listen-http", &format!("127.0.0.1:{http_port}")])
        .args(["--gateway", &udp, "--gateway-key", &gateway_pub, "--key"])
        .arg(d.join("tunnel.key"))
        .args(["--link-rate", "9600", "--link-mtu", "256"])
        .env("LOWBAND_LOG", "info");
    let tunnel = Gateway::spawn("tunnel", c, &d.join("tunnel.log")).expect("tunnel");
    wait_for_port(http_port, Duration::from_secs(20)).expect("tunnel listening");

    hs.register_user("alice", "pw-alice")
        .expect("register alice");
    let mut nio = Nio::start(&venv, &format!("http://127.0.0.1:{http_port}")).expect("nio");
    let mut ok = |step: Value| {
        let mut step = step;
        step["timeout_s"] = json!(60.0);
        nio.step_ok(&step)
            .unwrap_or_else(|e| panic!("{e}\ntunnel:\n{}", tunnel.log_tail(30)))
    };
    ok(
        json!({"op": "login", "client": "a", "user": "alice", "password": "pw-alice", "request_timeout_s": 60}),
    );
    let room = ok(json!({"op": "create_room", "client": "a", "name": "restart"}))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        ok(json!({"op": "send", "client": "a", "room_id": room, "body": format!("msg {i}")}));
    }
    assert_eq!(handshakes_ok(m1), 1);
    // Give serve a moment to write the last received packets, then stop it hard.
    std::thread::sleep(Duration::from_millis(1200));
    drop(serve1);
    let (_serve2, m2) = start_serve(&d, &hs, &udp, &tunnel_pub, state, 2);
    for i in 3..6 {
        ok(json!({"op": "send", "client": "a", "room_id": room, "body": format!("msg {i}")}));
    }
    let msgs = ok(json!({"op": "room_messages", "client": "a", "room_id": room, "limit": 50}));
    let bodies: Vec<String> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    for i in 0..6 {
        let b = format!("msg {i}");
        assert_eq!(
            bodies.iter().filter(|x| **x == b).count(),
            1,
            "{b} once in the history: {bodies:?}"
        );
    }
    assert_eq!(bodies.len(), 6, "{bodies:?}");
    let established = std::fs::read_to_string(&tunnel.log)
        .unwrap()
        .matches("session established")
        .count();
    if state {
        assert_eq!(handshakes_ok(m2), 0, "the restored session was used");
        assert_eq!(
            established,
            1,
            "no second handshake:\n{}",
            tunnel.log_tail(30)
        );
    } else {
        assert_eq!(handshakes_ok(m2), 1);
        assert_eq!(established, 2, "{}", tunnel.log_tail(30));
    }
}

#[test]
fn serve_restart_with_state_dir_keeps_the_session() {
    restart_scenario("serve_restart_state", true);
}

#[test]
fn serve_restart_without_state_handshakes_again() {
    restart_scenario("serve_restart_nostate", false);
}

#[test]
fn bench_link_prints_the_byte_table() {
    let Some(venv) = require_peers("bench_link_table") else {
        return;
    };
    let hs = Synapse::start_temp(
        &venv,
        SynapseOpts {
            label: "bench_link".into(),
            presence: false,
            ..SynapseOpts::default()
        },
    )
    .expect("start synapse");
    hs.register_user("bencher", "pw-bench").expect("register");
    let out = lowband()
        .unwrap()
        .args(["bench", "link", "--homeserver", &hs.client_url()])
        .args(["--user", "bencher", "--password", "pw-bench"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let row = |op: &str| -> (u64, Option<u64>) {
        let l = text
            .lines()
            .find(|l| l.split('\t').next() == Some(op))
            .unwrap_or_else(|| panic!("no {op} row: {text}"));
        let f: Vec<&str> = l.split('\t').collect();
        (f[1].parse().unwrap(), f[2].parse().ok())
    };
    for op in [
        "handshake (Noise IK)",
        "login",
        "create room",
        "typing",
        "receipt",
        "messages (10)",
        "upload small media",
        "download small media",
    ] {
        assert!(row(op).0 > 0, "{op}");
    }
    // The link form beats plain HTTP where the baseline is known (an empty sync is answered
    // by the tunnel once the sync is watched: 0 bytes, gateway/src/observe.rs).
    for op in ["send", "sync with one message", "empty sync"] {
        let (link, http) = row(op);
        assert!(
            (link > 0 || op == "empty sync") && link < http.unwrap(),
            "{op}: {link} vs {http:?}"
        );
    }
}
