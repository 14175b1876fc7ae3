//! Federation through lowband: homeserver A -> A's outbound `lowband tunnel` (HTTPS with B's
//! certificate, on B's advertised federation address) -> emulated link (`linksim-relay`) ->
//! `lowband serve` -> homeserver B's federation listener, and the mirror for B -> A. Synapse
//! checks every request signature and every PDU's hashes and signatures, so a message that
//! arrives with its body intact proves both survived the codec.

use core::time::Duration;
use std::path::{Path, PathBuf};
use std::time::Instant;

use core::net::{Ipv4Addr, SocketAddr};
use lowband_tests::gateway::{keygen, linksim_relay, lowband, settled_link_bytes};

use lowband_tests::{
    free_port, http, require_peers, wait_for_port, xmatrix_sign, DnsRecord, Federation,
    FederationPair, Gateway, Nio, PairMode, Synapse, SynapseOpts, TempDir, TestDns, TlsFront,
    WellKnownServer, DNS_SRV,
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

/// A `serve` with no federation backend (remote destinations only, by server discovery
/// with `--dns`, if given, and TLS checked against `ca`) and a plain-HTTP `tunnel` in front of
/// it; returns both and the tunnel's port.
fn discovery_gateways(d: &Path, ca: &Path, dns: Option<SocketAddr>) -> (Gateway, Gateway, u16) {
    std::fs::create_dir_all(d).unwrap();
    let gateway_pub = keygen(&d.join("serve.key")).expect("keygen serve");
    let tunnel_pub = keygen(&d.join("tunnel.key")).expect("keygen tunnel");
    let serve_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let http_port = free_port().unwrap();
    let mut c = lowband().unwrap();
    c.args(["serve", "--listen-udp", &serve_addr])
        .args(["--homeserver", "http://127.0.0.1:9"])
        .arg("--federation-ca")
        .arg(ca)
        .arg("--key")
        .arg(d.join("serve.key"))
        .args(["--allow-key", &tunnel_pub, "--link-rate", "100000"])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
    if let Some(a) = dns {
        c.args(["--dns", &a.to_string()]);
    }
    let serve = Gateway::spawn("serve-disc", c, &d.join("serve.log")).expect("serve");
    let mut c = lowband().unwrap();
    c.args(["tunnel", "--listen-http", &format!("127.0.0.1:{http_port}")])
        .args(["--gateway", &serve_addr, "--gateway-key", &gateway_pub])
        .arg("--key")
        .arg(d.join("tunnel.key"))
        .args(["--link-rate", "100000"]);
    let tunnel = Gateway::spawn("tunnel-disc", c, &d.join("tunnel.log")).expect("tunnel");
    wait_for_port(http_port, Duration::from_secs(20)).expect("tunnel listening");
    (serve, tunnel, http_port)
}

/// `serve` without a federation backend reaches a remote homeserver only by server discovery
/// of the signed `destination` (explicit port -> TLS to that port, checked against the given
/// CA), and refuses what is not a server name or what names no destination.
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
    let (serve, _tunnel, http_port) = discovery_gateways(dir.path(), &ca, None);
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
    // Not a server name, and a request without a destination: refused.
    let r = call("/_matrix/federation/v1/version", Some("bad name"));
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("not a server name"));
    let r = call("/_matrix/key/v2/server", None);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
}

/// A server name without a port, found three ways (spec steps 3.2, 3.3 and 4): `.well-known`
/// delegation to a name with a port; delegation to a name without one, then its SRV record;
/// no `.well-known`, B's own SRV record. A homeserver B named `b.lowband.test` (no port)
/// answers a federation query that homeserver A signed, through tunnel -> link -> `serve`,
/// which finds B with a test DNS server (`--dns`) and a `.well-known` endpoint on port 443 of
/// the address that DNS gives for B's name (one DNS zone and one `serve` per way). Synapse B verifies A's signature
/// (fetching A's key from A), so the request reached it intact with B's name as destination.
#[test]
fn federation_gateway_discovery_delegated() {
    let Some(venv) = require_peers("federation_gateway_discovery_delegated") else {
        return;
    };
    const NAME: &str = "b.lowband.test";
    const FED: &str = "fed.lowband.test";
    const SRV_TARGET: &str = "srv.lowband.test";
    // The .well-known endpoint's address (port 443, as the spec has it), and an address where
    // nothing listens on 443.
    let wk_ip = Ipv4Addr::new(127, 0, 0, 44);
    let dead_ip = Ipv4Addr::new(127, 0, 0, 45);
    let wk2_ip = Ipv4Addr::new(127, 0, 0, 46);
    const FED2: &str = "fed2.lowband.test";
    let t0 = Instant::now();
    let dir = TempDir::new("fedgw-deleg").expect("tempdir");
    let d = dir.path();
    let pair = FederationPair::start_with(&venv, &d.join("pair"), PairMode::Direct, |o| {
        o.presence = false;
        if o.label == "b" {
            o.extra_config.insert("server_name".into(), json!(NAME));
        }
    })
    .expect("start pair");
    let (bob, _) = pair.b.register_user("bob", "pw").expect("register bob");
    assert_eq!(bob, format!("@bob:{NAME}"));
    let ca = pair.ca.clone();
    let issue = |n: &str| ca.issue(&d.join(n), &[n]).expect("certificate");
    // B's TLS entry points in front of its plain federation listener: one for the delegated
    // name (certificate for FED), one for the SRV target (certificate for B's own name).
    let front_wk = TlsFront::start(
        &venv,
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap())),
        &issue(FED),
        pair.b.federation_backend(),
    )
    .expect("front for the delegated name");
    let mut front_wk = front_wk;
    let mut front_srv = TlsFront::start(
        &venv,
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap())),
        &issue(NAME),
        pair.b.federation_backend(),
    )
    .expect("front for the SRV target");
    let wk = WellKnownServer::start(
        &venv,
        SocketAddr::from((wk_ip, 443)),
        &issue(NAME),
        &json!({"m.server": format!("{FED}:{}", front_wk.listen_addr().port())}).to_string(),
        Some("max-age=3600"),
    )
    .expect("bind .well-known on port 443 (needs root or CAP_NET_BIND_SERVICE)");
    let srv = |port: u16| DnsRecord::Srv {
        priority: 10,
        weight: 5,
        port,
        target: format!("{SRV_TARGET}."),
    };
    let mut front_wk_srv = TlsFront::start(
        &venv,
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap())),
        &issue(FED2),
        pair.b.federation_backend(),
    )
    .expect("front for the delegated name's SRV target");
    let wk2 = WellKnownServer::start(
        &venv,
        SocketAddr::from((wk2_ip, 443)),
        &issue(NAME),
        &json!({ "m.server": FED2 }).to_string(),
        None,
    )
    .expect("bind .well-known on port 443");
    let srv_port = front_srv.listen_addr().port();
    let lo = DnsRecord::A(Ipv4Addr::LOCALHOST);
    // Both zones have the SRV record; only the first has a .well-known server at B's address.
    let dns_wk = TestDns::start(&[
        (NAME, DnsRecord::A(wk_ip)),
        (FED, lo.clone()),
        (&format!("_matrix-fed._tcp.{NAME}"), srv(srv_port)),
        (SRV_TARGET, lo.clone()),
    ])
    .expect("dns");
    let dns_srv = TestDns::start(&[
        (NAME, DnsRecord::A(dead_ip)),
        (&format!("_matrix-fed._tcp.{NAME}"), srv(srv_port)),
        (SRV_TARGET, lo.clone()),
    ])
    .expect("dns");
    // Delegation without a port: the SRV record of the delegated name counts, B's does not.
    let dns_wk_srv = TestDns::start(&[
        (NAME, DnsRecord::A(wk2_ip)),
        (
            &format!("_matrix-fed._tcp.{FED2}"),
            srv(front_wk_srv.listen_addr().port()),
        ),
        (&format!("_matrix-fed._tcp.{NAME}"), srv(srv_port)),
        (SRV_TARGET, lo.clone()),
    ])
    .expect("dns");
    let ca_pem = pair.ca.ca_pem();
    let (serve_wk, _t1, port_wk) = discovery_gateways(&d.join("wk"), &ca_pem, Some(dns_wk.addr()));
    let (serve_srv, _t2, port_srv) =
        discovery_gateways(&d.join("srv"), &ca_pem, Some(dns_srv.addr()));
    let (serve_wk_srv, _t3, port_wk_srv) =
        discovery_gateways(&d.join("wk-srv"), &ca_pem, Some(dns_wk_srv.addr()));
    eprintln!(
        "federation_gateway_discovery_delegated: set up in {:?}",
        t0.elapsed()
    );

    let key = pair.a.dir().join("signing.key");
    let uri =
        format!("/_matrix/federation/v1/query/profile?user_id=%40bob%3A{NAME}&field=displayname");
    let auth = xmatrix_sign(&venv, &key, pair.a.server_name(), NAME, "GET", &uri, None)
        .expect("sign as A");
    let query = |port: u16, serve: &Gateway| {
        let r = http::request(
            "GET",
            &format!("http://127.0.0.1:{port}{uri}"),
            &[("Authorization", auth.as_str())],
            b"",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", serve.log_tail(30)));
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(
            r.status,
            200,
            "{text}\n--- serve\n{}\n{}",
            serve.log_tail(30),
            pair.b.log_tail(20)
        );
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["displayname"], "bob", "{text}");
    };

    // .well-known delegation to FED:port (step 3.2): the endpoint is asked once (cached), the
    // delegated front carries the requests, the SRV record is never looked up.
    query(port_wk, &serve_wk);
    query(port_wk, &serve_wk);
    let asked = wk.requests();
    assert_eq!(asked.len(), 1, "cached .well-known: {asked:?}");
    assert_eq!(asked[0]["path"], "/.well-known/matrix/server");
    assert_eq!(asked[0]["host"], NAME);
    let (conns, up, _) = front_wk.totals().expect("front stats");
    assert!(conns >= 1 && up > 0, "delegated front unused");
    assert!(
        !dns_wk.questions().iter().any(|(_, t)| *t == DNS_SRV),
        "no SRV lookup after a delegation with a port: {:?}",
        dns_wk.questions()
    );
    assert_eq!(front_srv.totals().expect("front stats").0, 0);

    // No .well-known at B's address: SRV _matrix-fed._tcp (step 4) to the target's port, TLS
    // checked for B's own name.
    query(port_srv, &serve_srv);
    let q = dns_srv.questions();
    assert!(
        q.contains(&(format!("_matrix-fed._tcp.{NAME}"), DNS_SRV)),
        "{q:?}"
    );
    assert!(q.contains(&(SRV_TARGET.to_owned(), 1)), "{q:?}");
    let (srv_conns, up, _) = front_srv.totals().expect("front stats");
    assert!(srv_conns >= 1 && up > 0, "SRV front unused");
    assert!(
        wk.requests().is_empty(),
        "the SRV path asked no .well-known there"
    );

    // Delegation to FED2 without a port (step 3.3): SRV _matrix-fed._tcp.FED2, TLS checked
    // for FED2 (the front for it has no certificate for B's name).
    query(port_wk_srv, &serve_wk_srv);
    let asked = wk2.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let q = dns_wk_srv.questions();
    assert!(
        q.contains(&(format!("_matrix-fed._tcp.{FED2}"), DNS_SRV)),
        "{q:?}"
    );
    assert!(
        !q.contains(&(format!("_matrix-fed._tcp.{NAME}"), DNS_SRV)),
        "{q:?}"
    );
    let (conns, up, _) = front_wk_srv.totals().expect("front stats");
    assert!(conns >= 1 && up > 0, "delegated SRV front unused");
    assert_eq!(
        front_srv.totals().expect("front stats").0,
        srv_conns,
        "no more connections to B's own SRV target"
    );
    eprintln!(
        "federation_gateway_discovery_delegated: total {:?}",
        t0.elapsed()
    );
}
