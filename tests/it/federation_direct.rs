//! Two real Synapses federating directly over TLS with the test CA.

use std::time::Instant;

use lowband_tests::{require_peers, FederationPair, Nio, PairMode};
use serde_json::json;

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
    let (alice, _) = pair.a.register_user("alice", "pw").expect("register alice");
    let (bob, _) = pair.b.register_user("bob", "pw").expect("register bob");
    assert!(alice.ends_with(pair.a.server_name()) && bob.ends_with(pair.b.server_name()));

    let mut nio = Nio::start(&venv, &pair.a.client_url()).expect("start nio");
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
    let room = ok(json!({"op": "create_room", "client": "a", "name": "fed"}))["room_id"]
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
    let ping =
        ok(json!({"op": "send", "client": "a", "room_id": room, "body": "ping over federation"}));
    let seen = ok(json!({"op": "wait_event", "client": "b", "room_id": room,
                         "body": "ping over federation", "timeout_s": 30}));
    let t_ab = t.elapsed();
    assert_eq!(seen["event"]["event_id"], ping["event_id"]);
    assert_eq!(seen["event"]["sender"], alice.as_str());

    let t = Instant::now();
    let pong =
        ok(json!({"op": "send", "client": "b", "room_id": room, "body": "pong over federation"}));
    let seen = ok(json!({"op": "wait_event", "client": "a", "room_id": room,
                         "body": "pong over federation", "timeout_s": 30}));
    let t_ba = t.elapsed();
    assert_eq!(seen["event"]["event_id"], pong["event_id"]);
    assert_eq!(seen["event"]["sender"], bob.as_str());
    eprintln!(
        "federation_direct: invite {t_invite:?}, join {t_join:?}, A->B {t_ab:?}, B->A {t_ba:?}, total {:?}",
        t0.elapsed()
    );
    nio.finish();
}
