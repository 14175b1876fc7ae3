//! Two real Synapses federating over TLS with the test CA: directly, and through fronts.

use core::time::Duration;
use std::net::TcpStream;
use std::time::Instant;

use lowband_tests::{require_peers, FederationPair, Nio, PairMode, TlsFront, Venv};
use serde_json::json;

/// alice@a creates a room, invites bob@b, bob joins over federation, one message each way.
/// Returns the nio driver (clients "a" and "b" logged in) and the room id.
fn invite_join_and_talk(venv: &Venv, pair: &FederationPair, tag: &str) -> (Nio, String) {
    let (alice, _) = pair.a.register_user("alice", "pw").expect("register alice");
    let (bob, _) = pair.b.register_user("bob", "pw").expect("register bob");
    assert!(alice.ends_with(pair.a.server_name()) && bob.ends_with(pair.b.server_name()));

    let mut nio = Nio::start(venv, &pair.a.client_url()).expect("start nio");
    let logs = || format!("{}\n{}", pair.a.log_tail(25), pair.b.log_tail(25));
    let mut ok = |step: serde_json::Value| {
        nio.step_ok(&step)
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()))
    };
    ok(json!({"op": "login", "client": "a", "user": "alice", "password": "pw"}));
    ok(
        json!({"op": "login", "client": "b", "url": pair.b.client_url(),
              "user": "bob", "password": "pw"}),
    );
    let room = ok(json!({"op": "create_room", "client": "a", "name": tag}))["room_id"]
        .as_str()
        .expect("room_id")
        .to_string();

    let t = Instant::now();
    ok(json!({"op": "invite", "client": "a", "room_id": room, "user_id": bob}));
    ok(json!({"op": "wait_invite", "client": "b", "room_id": room, "timeout_s": 30}));
    let t_invite = t.elapsed();
    let t = Instant::now();
    ok(json!({"op": "join", "client": "b", "room_id": room, "timeout_s": 40}));
    let t_join = t.elapsed();

    let t = Instant::now();
    let ping = ok(json!({"op": "send", "client": "a", "room_id": room, "body": "ping"}));
    let seen = ok(json!({"op": "wait_event", "client": "b", "room_id": room,
                         "body": "ping", "timeout_s": 30}));
    let t_ab = t.elapsed();
    assert_eq!(seen["event"]["event_id"], ping["event_id"]);
    assert_eq!(seen["event"]["sender"], alice.as_str());

    let t = Instant::now();
    let pong = ok(json!({"op": "send", "client": "b", "room_id": room, "body": "pong"}));
    let seen = ok(json!({"op": "wait_event", "client": "a", "room_id": room,
                         "body": "pong", "timeout_s": 30}));
    let t_ba = t.elapsed();
    assert_eq!(seen["event"]["event_id"], pong["event_id"]);
    assert_eq!(seen["event"]["sender"], bob.as_str());
    eprintln!("{tag}: invite {t_invite:?}, join {t_join:?}, A->B {t_ab:?}, B->A {t_ba:?}");
    (nio, room)
}

#[test]
fn federation_direct() {
    let Some(venv) = require_peers("federation_direct") else {
        return;
    };
    let t0 = Instant::now();
    let pair = FederationPair::start_temp(&venv, PairMode::Direct).expect("start pair");
    eprintln!(
        "federation_direct: {} and {} up in {:?}",
        pair.a.server_name(),
        pair.b.server_name(),
        t0.elapsed()
    );
    let (nio, _) = invite_join_and_talk(&venv, &pair, "federation_direct");
    nio.finish();
    eprintln!("federation_direct: total {:?}", t0.elapsed());
}

/// Front mode with [`TlsFront`] (a plain TLS-terminating forwarder) where lowband's tunnels
/// will go: proves the addresses, certificates and backends that Front mode documents.
#[test]
fn federation_front() {
    let Some(venv) = require_peers("federation_front") else {
        return;
    };
    let t0 = Instant::now();
    let pair = FederationPair::start_temp(&venv, PairMode::Front).expect("start pair");
    for hs in [&pair.a, &pair.b] {
        let addr = hs.federation_addr().expect("advertised federation address");
        assert_eq!(hs.server_name(), format!("localhost:{}", addr.port()));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "in Front mode nothing may listen on {addr} before the tunnel"
        );
        assert_ne!(hs.federation_backend(), addr);
    }
    let mut front_a = TlsFront::for_server(&venv, &pair.a).expect("front a");
    let mut front_b = TlsFront::for_server(&venv, &pair.b).expect("front b");
    let (mut nio, room) = invite_join_and_talk(&venv, &pair, "federation_front");
    // Each server was reached (by the other) only through its front.
    for (name, front) in [("a", &mut front_a), ("b", &mut front_b)] {
        let reports = front.reports();
        assert!(
            reports.iter().any(|r| r["event"] == "open"),
            "no connection through front {name}: {reports:?}"
        );
        let (conns, up, down) = front.totals().expect("front totals");
        eprintln!(
            "federation_front: to {name}: {conns} connections, {up} B requests, {down} B responses"
        );
        assert!(conns >= 1 && up > 0 && down > 0);
    }

    // Outage of the path to b: a message sent meanwhile arrives once the tunnel is back
    // (Synapse retries the transaction; what a lowband link drop looks like to it).
    front_b.stop();
    let sent = nio
        .step_ok(&json!({"op": "send", "client": "a", "room_id": room, "body": "during outage"}))
        .expect("send during outage");
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let _front_b = TlsFront::for_server(&venv, &pair.b).expect("front b again");
    let seen = nio
        .step_ok(&json!({"op": "wait_event", "client": "b", "room_id": room,
                         "body": "during outage", "timeout_s": 30}))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.a.log_tail(30)));
    assert_eq!(seen["event"]["event_id"], sent["event_id"]);
    eprintln!(
        "federation_front: delivered {:?} after the tunnel came back",
        t.elapsed()
    );
    nio.finish();
    eprintln!("federation_front: total {:?}", t0.elapsed());
}
