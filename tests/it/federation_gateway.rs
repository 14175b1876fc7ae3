//! Federation through lowband: homeserver A -> A's outbound `lowband tunnel` (HTTPS with B's
//! certificate, on B's advertised federation address) -> emulated link (`linksim-relay`) ->
//! `lowband serve` -> homeserver B's federation listener, and the mirror for B -> A. Synapse
//! checks every request signature and every PDU's hashes and signatures, so a message that
//! arrives with its body intact proves both survived the codec.

use core::time::Duration;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lowband_tests::gateway::{keygen, linksim_relay, lowband, settled_link_bytes};
use lowband_tests::{
    free_port, http, require_peers, wait_for_port, Federation, FederationPair, Gateway, Nio,
    PairMode, Synapse, SynapseOpts, TempDir,
};
use serde_json::{json, Value};

const RATE: u32 = 9600;
const LOSS: f64 = 0.05;
/// Link budget for one message PDU (`PUT /_matrix/federation/v1/send/{txnId}` and its answer).
const PDU_BUDGET: u64 = 450;

/// The lowband path carrying federation traffic *to* `hs`.
struct Path2 {
    serve: Gateway,
    relay: Gateway,
    tunnel: Gateway,
    tunnel_pub: String,
    stats: PathBuf,
}

impl Path2 {
    fn logs(&self) -> String {
        format!(
            "--- tunnel\n{}\n--- relay\n{}\n--- serve\n{}",
            self.tunnel.log_tail(20),
            self.relay.log_tail(5),
            self.serve.log_tail(30)
        )
    }
}

fn path_to(hs: &Synapse, d: &Path, name: &str) -> Path2 {
    std::fs::create_dir_all(d).unwrap();
    let gateway_pub = keygen(&d.join("serve.key")).expect("keygen serve");
    let tunnel_pub = keygen(&d.join("tunnel.key")).expect("keygen tunnel");
    let stats = d.join("stats.json");
    let serve_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let relay_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let rate = RATE.to_string();
    let mut c = lowband().unwrap();
    c.args(["serve", "--listen-udp", &serve_addr])
        .args(["--homeserver", &hs.client_url()])
        .args([
            "--federation-backend",
            &format!("http://{}", hs.federation_backend()),
        ])
        .args(["--federation-server-name", hs.server_name()])
        .arg("--key")
        .arg(d.join("serve.key"))
        .args(["--allow-key", &tunnel_pub, "--stats-file"])
        .arg(&stats)
        .args(["--link-rate", &rate, "--link-mtu", "256"])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
    let serve = Gateway::spawn(&format!("serve-{name}"), c, &d.join("serve.log")).expect("serve");
    let mut c = linksim_relay().unwrap();
    c.args(["--udp-listen", &relay_addr, "--udp-target", &serve_addr])
        .args(["--rate", &rate, "--loss", &LOSS.to_string()])
        .args(["--mtu", "256", "--seed", "11", "--report-s", "0"]);
    let relay = Gateway::spawn(&format!("relay-{name}"), c, &d.join("relay.log")).expect("relay");
    let listen = hs.federation_addr().expect("front mode address");
    let cert = hs.fed_cert().expect("federation certificate");
    let mut c = lowband().unwrap();
    c.args(["tunnel", "--listen-https", &listen.to_string()])
        .arg("--tls-cert")
        .arg(&cert.cert_pem)
        .arg("--tls-key")
        .arg(&cert.key_pem)
        .args(["--gateway", &relay_addr, "--gateway-key", &gateway_pub])
        .arg("--key")
        .arg(d.join("tunnel.key"))
        .args(["--link-rate", &rate, "--link-mtu", "256"])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
    let tunnel =
        Gateway::spawn(&format!("tunnel-{name}"), c, &d.join("tunnel.log")).expect("tunnel");
    wait_for_port(listen.port(), Duration::from_secs(20)).expect("tunnel listening");
    Path2 {
        serve,
        relay,
        tunnel,
        tunnel_pub,
        stats,
    }
}

/// Sends `body` from `from` and waits for it at `to`; returns the link bytes of `path` spent.
fn message_bytes(nio: &mut Nio, room: &str, from: &str, to: &str, body: &str, path: &Path2) -> u64 {
    let before = settled_link_bytes(&path.stats, &path.tunnel_pub, Duration::from_millis(1500));
    let sent = nio
        .step_ok(&json!({"op": "send", "client": from, "room_id": room, "body": body}))
        .unwrap_or_else(|e| panic!("{e}\n{}", path.logs()));
    let seen = nio
        .step_ok(&json!({"op": "wait_event", "client": to, "room_id": room,
                         "body": body, "timeout_s": 40}))
        .unwrap_or_else(|e| panic!("{e}\n{}", path.logs()));
    assert_eq!(seen["event"]["event_id"], sent["event_id"]);
    assert_eq!(seen["event"]["content"]["body"], body, "content intact");
    settled_link_bytes(&path.stats, &path.tunnel_pub, Duration::from_millis(1500)) - before
}

#[test]
fn federation_gateway() {
    let Some(venv) = require_peers("federation_gateway") else {
        return;
    };
    let t0 = Instant::now();
    let dir = TempDir::new("fedgw").expect("tempdir");
    let pair = FederationPair::start_with(&venv, &dir.path().join("pair"), PairMode::Front, |o| {
        o.presence = false;
    })
    .expect("start pair");
    let to_a = path_to(&pair.a, &dir.path().join("to_a"), "a");
    let to_b = path_to(&pair.b, &dir.path().join("to_b"), "b");
    eprintln!(
        "federation_gateway: pair and gateways up in {:?}",
        t0.elapsed()
    );

    let (alice, _) = pair.a.register_user("alice", "pw").expect("register alice");
    let (bob, _) = pair.b.register_user("bob", "pw").expect("register bob");
    let mut nio = Nio::start(&venv, &pair.a.client_url()).expect("start nio");
    let logs = || {
        format!(
            "{}\n{}\n=== to a\n{}\n=== to b\n{}",
            pair.a.log_tail(25),
            pair.b.log_tail(25),
            to_a.logs(),
            to_b.logs()
        )
    };
    let ok = |nio: &mut Nio, step: Value| {
        nio.step_ok(&step)
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()))
    };
    ok(
        &mut nio,
        json!({"op": "login", "client": "a", "user": "alice", "password": "pw"}),
    );
    ok(
        &mut nio,
        json!({"op": "login", "client": "b", "url": pair.b.client_url(),
               "user": "bob", "password": "pw"}),
    );
    let room = ok(
        &mut nio,
        json!({"op": "create_room", "client": "a", "name": "fedgw"}),
    )["room_id"]
        .as_str()
        .expect("room_id")
        .to_string();
    let t = Instant::now();
    ok(
        &mut nio,
        json!({"op": "invite", "client": "a", "room_id": room, "user_id": bob}),
    );
    ok(
        &mut nio,
        json!({"op": "wait_invite", "client": "b", "room_id": room, "timeout_s": 60}),
    );
    let t_invite = t.elapsed();
    let t = Instant::now();
    ok(
        &mut nio,
        json!({"op": "join", "client": "b", "room_id": room, "timeout_s": 90}),
    );
    let t_join = t.elapsed();
    eprintln!("federation_gateway: invite {t_invite:?}, join {t_join:?}");

    // Messages both ways; the link bytes of each (its transaction and the answer, with the
    // session's CoAP/Noise overhead, ACKs and any retransmission on the lossy link).
    let mut ab = Vec::new();
    let mut ba = Vec::new();
    for n in 0..3 {
        ab.push(message_bytes(
            &mut nio,
            &room,
            "a",
            "b",
            &format!("ping {n}"),
            &to_b,
        ));
        ba.push(message_bytes(
            &mut nio,
            &room,
            "b",
            "a",
            &format!("pong {n}"),
            &to_a,
        ));
    }
    eprintln!(
        "federation_gateway: link bytes per message PDU (send transaction + answer, \
         {RATE} bit/s, {LOSS} loss): A->B {ab:?}, B->A {ba:?} (HTTP baseline 1557)"
    );
    let seen = ok(
        &mut nio,
        json!({"op": "wait_event", "client": "a", "room_id": room, "body": "pong 2", "timeout_s": 5}),
    );
    assert_eq!(seen["event"]["sender"], bob.as_str());
    assert!(alice.ends_with(pair.a.server_name()));
    // The cheapest of three (a retransmission or a stray EDU can add to one).
    let best = ab.iter().chain(&ba).copied().min().unwrap_or(u64::MAX);
    assert!(best > 0, "no link bytes counted");
    assert!(
        best <= PDU_BUDGET,
        "one message PDU costs {best} B on the link (budget {PDU_BUDGET})"
    );
    // Both paths carried federation: each serve logged forwarded requests.
    for (n, p) in [("a", &to_a), ("b", &to_b)] {
        let log = std::fs::read_to_string(&p.serve.log).unwrap_or_default();
        assert!(
            log.contains("/_matrix/federation/v1/send/"),
            "no transaction reached {n} through its serve"
        );
    }
    nio.finish();
    eprintln!("federation_gateway: total {:?}", t0.elapsed());
}

/// `serve` without a federation backend reaches a remote homeserver only by server discovery
/// of the signed `destination` (explicit port -> TLS to that port, checked against the given
/// CA), and refuses what it cannot resolve or what names no destination.
#[test]
fn federation_gateway_discovery() {
    let Some(venv) = require_peers("federation_gateway_discovery") else {
        return;
    };
    let hs = Synapse::start_temp(
        &venv,
        SynapseOpts {
            label: "remote".into(),
            federation: Federation::Tls,
            presence: false,
            ..SynapseOpts::default()
        },
    )
    .expect("start synapse");
    let ca = hs.ca().expect("test CA").ca_pem();
    let dir = TempDir::new("fedgw-disc").expect("tempdir");
    let d = dir.path();
    let gateway_pub = keygen(&d.join("serve.key")).expect("keygen serve");
    let tunnel_pub = keygen(&d.join("tunnel.key")).expect("keygen tunnel");
    let serve_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let http_port = free_port().unwrap();
    let mut c = lowband().unwrap();
    c.args(["serve", "--listen-udp", &serve_addr])
        .args(["--homeserver", &hs.client_url()])
        .arg("--federation-ca")
        .arg(&ca)
        .arg("--key")
        .arg(d.join("serve.key"))
        .args(["--allow-key", &tunnel_pub, "--link-rate", "100000"])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
    let serve = Gateway::spawn("serve-disc", c, &d.join("serve.log")).expect("serve");
    let mut c = lowband().unwrap();
    c.args(["tunnel", "--listen-http", &format!("127.0.0.1:{http_port}")])
        .args(["--gateway", &serve_addr, "--gateway-key", &gateway_pub])
        .arg("--key")
        .arg(d.join("tunnel.key"))
        .args(["--link-rate", "100000"]);
    let _tunnel = Gateway::spawn("tunnel-disc", c, &d.join("tunnel.log")).expect("tunnel");
    wait_for_port(http_port, Duration::from_secs(20)).expect("tunnel listening");
    let sig = "A".repeat(86);
    let call = |path: &str, dest: Option<&str>| {
        let h = dest.map(|d| {
            format!("X-Matrix origin=\"localhost:1\",destination=\"{d}\",key=\"ed25519:x\",sig=\"{sig}\"")
        });
        let headers: Vec<(&str, &str)> = h.iter().map(|h| ("Authorization", h.as_str())).collect();
        let url = format!("http://127.0.0.1:{http_port}{path}");
        http::request("GET", &url, &headers, b"", Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e}\n{}", serve.log_tail(20)))
    };
    // Discovered and reached over TLS: Synapse itself answers (it rejects the fake signature
    // or serves the public endpoint), not the gateway.
    let r = call("/_matrix/federation/v1/version", Some(hs.server_name()));
    let text = String::from_utf8_lossy(&r.body).to_string();
    eprintln!(
        "federation_gateway_discovery: remote answered {} {text}",
        r.status
    );
    assert!(
        !text.contains("lowband") && matches!(r.status, 200 | 401 | 403),
        "{} {text}\n{}",
        r.status,
        serve.log_tail(20)
    );
    // A name that needs .well-known/SRV, and a request without a destination: refused.
    let r = call("/_matrix/federation/v1/version", Some("matrix.org"));
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("not supported"));
    let r = call("/_matrix/key/v2/server", None);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
}
