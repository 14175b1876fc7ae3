//! One real Synapse, two matrix-nio clients: the client-server operations lowband carries.

use lowband_tests::{require_peers, Nio, Synapse, SynapseOpts};
use serde_json::json;

#[test]
fn synapse_smoke() {
    let Some(venv) = require_peers("synapse_smoke") else {
        return;
    };
    let hs = Synapse::start_temp(
        &venv,
        SynapseOpts {
            label: "smoke".into(),
            presence: false,
            ..SynapseOpts::default()
        },
    )
    .expect("start synapse");
    eprintln!(
        "synapse_smoke: {} up in {:?}",
        hs.server_name(),
        hs.startup_time().unwrap_or_default()
    );
    let (alice, _) = hs
        .register_user("alice", "pw-alice")
        .expect("register alice");
    let (bob, bob_token) = hs.register_user("bob", "pw-bob").expect("register bob");
    assert_eq!(alice, format!("@alice:{}", hs.server_name()));
    assert_eq!(bob, format!("@bob:{}", hs.server_name()));

    let mut nio = Nio::start(&venv, &hs.client_url()).expect("start nio");
    let mut ok = |step: serde_json::Value| {
        nio.step_ok(&step)
            .unwrap_or_else(|e| panic!("{e}\n{}", hs.log_tail(20)))
    };
    let login = ok(json!({"op": "login", "client": "a", "user": "alice", "password": "pw-alice"}));
    assert_eq!(login["user_id"], alice.as_str());
    // bob reuses the token from registration instead of logging in
    ok(json!({"op": "restore", "client": "b", "user_id": bob, "access_token": bob_token}));
    assert_eq!(
        ok(json!({"op": "whoami", "client": "b"}))["user_id"],
        bob.as_str()
    );

    let room = ok(json!({"op": "create_room", "client": "a", "name": "smoke"}))["room_id"]
        .as_str()
        .expect("room_id")
        .to_string();
    ok(json!({"op": "invite", "client": "a", "room_id": room, "user_id": bob}));
    ok(json!({"op": "wait_invite", "client": "b", "room_id": room, "timeout_s": 20}));
    assert_eq!(
        ok(json!({"op": "join", "client": "b", "room_id": room}))["room_id"],
        room.as_str()
    );

    let sent = ok(json!({"op": "send", "client": "a", "room_id": room, "body": "hello bob"}));
    let seen = ok(json!({"op": "wait_event", "client": "b", "room_id": room,
                         "body": "hello bob", "timeout_s": 20}));
    assert_eq!(seen["event"]["event_id"], sent["event_id"]);
    assert_eq!(seen["event"]["sender"], alice.as_str());
    assert_eq!(seen["event"]["type"], "m.room.message");

    let reply = ok(json!({"op": "send", "client": "b", "room_id": room, "body": "hi alice"}));
    let seen = ok(json!({"op": "wait_event", "client": "a", "room_id": room,
                         "body": "hi alice", "timeout_s": 20}));
    assert_eq!(seen["event"]["event_id"], reply["event_id"]);

    // typing and read receipts reach the other side as ephemeral events
    ok(json!({"op": "typing", "client": "b", "room_id": room, "typing": true}));
    let typing = ok(
        json!({"op": "wait_ephemeral", "client": "a", "room_id": room,
                           "type": "m.typing", "user_id": bob, "timeout_s": 20}),
    );
    assert!(typing["event"].to_string().contains(&bob), "{typing}");
    ok(json!({"op": "receipt", "client": "b", "room_id": room, "event_id": sent["event_id"]}));
    let receipt = ok(
        json!({"op": "wait_ephemeral", "client": "a", "room_id": room,
                            "type": "m.receipt", "user_id": bob, "timeout_s": 20}),
    );
    assert!(
        receipt["event"]
            .to_string()
            .contains(sent["event_id"].as_str().unwrap()),
        "{receipt}"
    );
    ok(json!({"op": "read_markers", "client": "a", "room_id": room,
              "fully_read": reply["event_id"], "read": reply["event_id"]}));

    // history, newest first
    let hist = ok(json!({"op": "room_messages", "client": "b", "room_id": room, "limit": 20}));
    let bodies: Vec<&str> = hist["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies[..2], ["hi alice", "hello bob"], "{hist}");

    // media round trip (authenticated media API)
    let text = "lowband media round trip \u{2713}";
    let up = ok(json!({"op": "upload", "client": "a", "text": text,
                       "content_type": "text/plain", "filename": "note.txt"}));
    let mxc = up["content_uri"].as_str().expect("content_uri");
    assert!(
        mxc.starts_with(&format!("mxc://{}/", hs.server_name())),
        "{mxc}"
    );
    let down = ok(json!({"op": "download", "client": "b", "mxc": mxc}));
    assert_eq!(down["text"], text);
    assert_eq!(down["len"], text.len());
    assert!(down["content_type"]
        .as_str()
        .unwrap_or_default()
        .starts_with("text/plain"));

    // an initial sync shows the joined room with both messages
    let sync = ok(json!({"op": "sync", "client": "b", "since": ""}));
    let timeline = sync["rooms"]["join"][&room]["timeline"].to_string();
    assert!(timeline.contains("hello bob") && timeline.contains("hi alice"));

    // after logout the token is dead: the step fails with the server's 401
    ok(json!({"op": "logout", "client": "a"}));
    let who = nio
        .step(&json!({"op": "whoami", "client": "a"}))
        .expect("nio answers");
    assert_eq!(who["ok"], false, "{who}");
    nio.finish();

    // Batch mode with references to earlier results; failures are reported, not fatal.
    let results = Nio::run(
        &venv,
        &hs.client_url(),
        &[
            json!({"op": "login", "user": "bob", "password": "pw-bob"}),
            json!({"op": "create_room", "id": "r", "name": "batch"}),
            json!({"op": "send", "room_id": "${r.room_id}", "body": "in ${r.room_id}"}),
            json!({"op": "room_messages", "room_id": "${r.room_id}", "limit": 1}),
            json!({"op": "send", "room_id": "${nope.room_id}", "body": "x"}),
            json!({"op": "login", "client": "c", "user": "bob", "password": "wrong"}),
        ],
    )
    .expect("nio batch");
    assert_eq!(results.len(), 6);
    let oks: Vec<bool> = results.iter().map(|r| r["ok"] == true).collect();
    assert_eq!(oks, [true, true, true, true, false, false], "{results:?}");
    let room = results[1]["room_id"].as_str().expect("room_id");
    assert_eq!(
        results[3]["chunk"][0]["content"]["body"],
        format!("in {room}")
    );
    assert!(results[4]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("nope.room_id"));
    assert_eq!(results[5]["status_code"], "M_FORBIDDEN", "{}", results[5]);
}
