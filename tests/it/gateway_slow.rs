//! matrix-nio -> `lowband tunnel` -> emulated 100 bit/s link with 10% loss -> `lowband serve`
//! -> Synapse: the whole client scenario of the gateway issue at the link's real speed, with
//! the bytes and the time every step costs; and a homeserver outage during which nothing the
//! client sends is lost or doubled.
//!
//! At 100 bit/s a byte is 80 ms of airtime and a lost datagram costs a CoAP retransmission
//! timeout (51 to 77 s at a 256-byte MTU: RFC 7252 section 4.8's ACK_TIMEOUT scaled to the
//! link), so every step gets minutes and the tests mostly wait. The scenario is split in two
//! tests of five to nine minutes that run side by side.
//!
//! Reproduce (prints the per-step table):
//! `cargo test -p lowband-tests --test it gateway_e2e_100_bps_lossy -- --nocapture`

use core::time::Duration;
use std::time::Instant;

use lowband_tests::{http, require_peers, GatewayLink, LinkCounters, LinkOpts, Nio, Venv};
use serde_json::{json, Value};

/// Bound on each nio step (and each of its HTTP requests) at 100 bit/s with loss.
const SLOW_STEP_S: f64 = 900.0;

/// One measured step.
struct Row {
    name: String,
    c: LinkCounters,
    secs: f64,
}

/// Runs steps one after another, recording each one's link counters and wall time.
struct Meter<'a> {
    link: &'a GatewayLink,
    quiet: Duration,
    rows: Vec<Row>,
    last: LinkCounters,
}

impl<'a> Meter<'a> {
    fn new(link: &'a GatewayLink, quiet: Duration) -> Self {
        let last = link.settled(quiet);
        Meter {
            link,
            quiet,
            rows: Vec::new(),
            last,
        }
    }

    /// Runs `f` as step `name`; the step's bytes are counted until the link is quiet again.
    fn step<R>(&mut self, name: &str, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        let now = self.link.settled(self.quiet);
        let c = now.since(&self.last);
        self.last = now;
        eprintln!(
            "step {:<40} {:>5} B {:>3} pkts {:>7.1} s (of which pushed sync: {} B, {} pkts)",
            name,
            c.bytes(),
            c.packets(),
            secs,
            c.observe_bytes,
            c.observe_packets
        );
        self.rows.push(Row {
            name: name.to_owned(),
            c,
            secs,
        });
        r
    }

    fn print(&self, title: &str, total: Duration) {
        eprintln!("{title}\noperation\tlink_bytes\tbytes_in\tbytes_out\tpackets\tseconds");
        for r in &self.rows {
            eprintln!(
                "{}\t{}\t{}\t{}\t{}\t{:.1}",
                r.name,
                r.c.bytes(),
                r.c.bytes_in,
                r.c.bytes_out,
                r.c.packets(),
                r.secs
            );
        }
        let sum: u64 = self.rows.iter().map(|r| r.c.bytes()).sum();
        eprintln!("total\t{sum}\t\t\t\t{:.1}", total.as_secs_f64());
    }
}

/// One nio driver process; `ok` runs a step that must succeed.
struct Client {
    nio: Nio,
    timeout_s: f64,
}

impl Client {
    fn start(venv: &Venv, link: &GatewayLink, timeout_s: f64) -> Client {
        Client {
            nio: Nio::start(venv, &link.tunnel_url).expect("start nio"),
            timeout_s,
        }
    }

    fn run(&mut self, mut step: Value) -> Value {
        if step.get("timeout_s").is_none() {
            step["timeout_s"] = json!(self.timeout_s);
        }
        self.nio.step(&step).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ok(&mut self, link: &GatewayLink, step: Value) -> Value {
        let r = self.run(step.clone());
        assert_eq!(
            r["ok"],
            true,
            "nio step {step} failed: {r}{}",
            link.logs(30)
        );
        r
    }
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    bodies(&sync["rooms"]["join"][room]["timeline"])
}

/// Syncs (no long poll: nio bounds a long poll by its timeout plus 15 s, too little for a
/// lossy 100 bit/s link) until a result satisfies `want`, at most five times.
fn sync_until(
    c: &mut Client,
    name: &str,
    link: &GatewayLink,
    want: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..5 {
        let r = c.ok(link, json!({"op": "sync", "client": name}));
        if want(&r) {
            return r;
        }
    }
    panic!(
        "five syncs did not bring what was expected{}",
        link.logs(30)
    );
}

/// A media file of `n` bytes of text (varied, so that no layer can shrink it much).
fn media(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b"abcdefghijklmnopqrstuvwxyz0123456789 .,ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(x % 65) as usize]
        })
        .collect()
}

/// The first half of the client scenario, all through the link: log in, initial
/// sync, create a room, invite, join, send, incremental syncs. Alice acts and never syncs;
/// bob observes.
fn conversation(venv: &Venv, link: &GatewayLink, m: &mut Meter<'_>, t: f64) {
    let (alice, _) = link.hs.register_user("alice", "pw-alice").unwrap();
    let (bob, _) = link.hs.register_user("bob", "pw-bob").unwrap();
    let mut a = Client::start(venv, link, t);
    let mut b = Client::start(venv, link, t);

    let r = m.step("login alice (with the handshake)", || {
        a.ok(
            link,
            json!({"op": "login", "client": "a", "user": "alice", "password": "pw-alice",
                   "request_timeout_s": t}),
        )
    });
    assert_eq!(r["user_id"], alice.as_str());
    let alice_token = r["access_token"].as_str().expect("token").to_owned();
    let r = m.step("login bob", || {
        b.ok(
            link,
            json!({"op": "login", "client": "b", "user": "bob", "password": "pw-bob",
                   "request_timeout_s": t}),
        )
    });
    assert_eq!(r["user_id"], bob.as_str());
    m.step("initial sync bob (no rooms)", || {
        b.ok(link, json!({"op": "sync", "client": "b", "since": ""}))
    });
    let room = m.step("create room", || {
        a.ok(
            link,
            json!({"op": "create_room", "client": "a", "name": "lowband"}),
        )
    })["room_id"]
        .as_str()
        .expect("room_id")
        .to_owned();
    m.step("invite bob", || {
        a.ok(
            link,
            json!({"op": "invite", "client": "a", "room_id": room, "user_id": bob}),
        )
    });
    m.step("sync bob: the invite", || {
        sync_until(&mut b, "b", link, |r| {
            r["rooms"]["invite"].get(&room).is_some()
        })
    });
    let r = m.step("join bob", || {
        b.ok(link, json!({"op": "join", "client": "b", "room_id": room}))
    });
    assert_eq!(r["room_id"], room.as_str());
    m.step("sync bob: the joined room", || {
        b.ok(link, json!({"op": "sync", "client": "b"}))
    });

    let sent = m.step("send", || {
        a.ok(
            link,
            json!({"op": "send", "client": "a", "room_id": room, "body": "hello bob"}),
        )
    });
    // The budget is for the bytes of one exchange: if the loss hit this send, send again
    // until one goes through in two datagrams (request and response). The push of the new
    // message to bob's watched sync crosses the link meanwhile: it belongs to bob's sync.
    let mut tries = 0;
    while m.rows.last().is_some_and(|r| r.c.exchange_packets() != 2) && tries < 5 {
        tries += 1;
        m.step(&format!("send (again, {tries})"), || {
            a.ok(
                link,
                json!({"op": "send", "client": "a", "room_id": room,
                       "body": format!("hello bob {tries}")}),
            )
        });
    }
    check_send_budget(m.rows.last().expect("a send row"));
    // Pushed results come one per sync (each answers from where the previous ended): sync
    // until every message arrived, each once.
    let mut got = Vec::new();
    let mut first_id = Value::Null;
    for i in 0..=tries + 2 {
        let name = if i == 0 {
            "sync with one new message".to_owned()
        } else {
            format!("sync with one new message ({i})")
        };
        let r = m.step(&name, || b.ok(link, json!({"op": "sync", "client": "b"})));
        if first_id.is_null() {
            first_id = r["rooms"]["join"][&room]["timeline"][0]["event_id"].clone();
        }
        got.extend(timeline_bodies(&r, &room));
        if got.len() > tries {
            break;
        }
    }
    assert_eq!(got.len(), tries + 1, "{got:?}");
    assert!(got.iter().all(|b| b.starts_with("hello bob")), "{got:?}");
    // The event id the send answered is the one the homeserver gave the event.
    assert_eq!(first_id, sent["event_id"]);
    let r = m.step("sync with nothing new", || {
        b.ok(link, json!({"op": "sync", "client": "b"}))
    });
    assert!(timeline_bodies(&r, &room).is_empty(), "{r}");

    // Straight from the homeserver: under loss every request was carried out once (one room,
    // each message once), whatever the link retransmitted.
    let d = Direct(link);
    assert_eq!(
        d.get(&alice_token, "/_matrix/client/v3/joined_rooms")["joined_rooms"],
        json!([room])
    );
    let want: Vec<String> = (0..=tries)
        .map(|i| match i {
            0 => "hello bob".to_owned(),
            i => format!("hello bob {i}"),
        })
        .collect();
    assert_eq!(
        d.bodies(&alice_token, &room),
        want,
        "the room's messages at the homeserver"
    );
    a.nio.finish();
    b.nio.finish();
}

/// Requests straight to the homeserver, bypassing the link (set-up and checks).
struct Direct<'a>(&'a GatewayLink);

impl Direct<'_> {
    fn call(&self, method: &str, token: &str, path: &str, body: Option<Value>) -> Value {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = http::request(
            method,
            &format!("{}{path}", self.0.hs.client_url()),
            &headers,
            body.as_bytes(),
            Duration::from_secs(30),
        )
        .expect("direct request");
        assert_eq!(
            r.status,
            200,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json().unwrap()
    }

    fn get(&self, token: &str, path: &str) -> Value {
        self.call("GET", token, path, None)
    }

    /// The bodies of the room's messages, oldest first.
    fn bodies(&self, token: &str, room: &str) -> Vec<String> {
        let r = self.get(
            token,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
        );
        let mut b = bodies(&r["chunk"]);
        b.reverse();
        b
    }
}

/// The second half of the client scenario on a room set up straight at the
/// homeserver (alice's room, bob joined, one message), the clients restored from those
/// sessions: long-poll sync, typing, receipts, room history, media upload and download,
/// logout, all through the link. They run in two nio drivers so that bob can long-poll while
/// alice sends.
fn extras(venv: &Venv, link: &GatewayLink, m: &mut Meter<'_>, t: f64, media_len: usize) {
    let (alice, alice_token) = link.hs.register_user("alice", "pw-alice").unwrap();
    let (bob, bob_token) = link.hs.register_user("bob", "pw-bob").unwrap();
    let d = Direct(link);
    let room = d.call(
        "POST",
        &alice_token,
        "/_matrix/client/v3/createRoom",
        Some(json!({"name": "lowband", "invite": [bob]})),
    )["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    d.call(
        "POST",
        &bob_token,
        &format!("/_matrix/client/v3/join/{room}"),
        Some(json!({})),
    );
    let hello = d.call(
        "PUT",
        &alice_token,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
        Some(json!({"msgtype": "m.text", "body": "hello bob"})),
    );
    let since = d.get(&bob_token, "/_matrix/client/v3/sync?timeout=0")["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut a = Client::start(venv, link, t);
    let mut b = Client::start(venv, link, t);
    a.ok(
        link,
        json!({"op": "restore", "client": "a", "user_id": alice, "access_token": alice_token,
               "request_timeout_s": t}),
    );
    b.ok(
        link,
        json!({"op": "restore", "client": "b", "user_id": bob, "access_token": bob_token,
               "request_timeout_s": t}),
    );
    let r = m.step("sync bob, nothing new (with the handshake)", || {
        b.ok(link, json!({"op": "sync", "client": "b", "since": since}))
    });
    assert!(timeline_bodies(&r, &room).is_empty(), "{r}");

    // Long-poll woken by a message: bob's sync is waiting at the homeserver when alice sends.
    // (matrix-nio gives a long poll its timeout plus 15 s, while one lost datagram costs a
    // retransmission timeout of about a minute here: the poll's own timeout is long. A poll
    // that runs to its timeout is covered at 9600 bit/s in `gateway_e2e`.)
    let (r, waited) = m.step(
        "long-poll sync woken by a send (alice's first request)",
        || {
            let before = link.counters();
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let h = s.spawn(|| {
                    b.ok(
                        link,
                        json!({"op": "sync", "client": "b", "timeout_ms": 600_000}),
                    )
                });
                // Bob's request has crossed the link once serve has received a packet more.
                let end = Instant::now() + Duration::from_secs_f64(t);
                while link.counters().packets_in == before.packets_in && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_secs(2));
                let waited = t0.elapsed();
                a.ok(
                    link,
                    json!({"op": "send", "client": "a", "room_id": room, "body": "are you there"}),
                );
                (h.join().expect("long-poll thread"), waited)
            })
        },
    );
    // The poll was out before the message existed, so only the send can have answered it.
    assert_eq!(timeline_bodies(&r, &room), ["are you there"], "{r}");
    assert!(
        r["ms"].as_f64().unwrap() < 590_000.0,
        "the long poll ran to its timeout: {r}"
    );
    eprintln!("long poll had waited {waited:?} when alice's send started");

    m.step("typing", || {
        a.ok(
            link,
            json!({"op": "typing", "client": "a", "room_id": room}),
        )
    });
    m.step("sync bob: typing", || {
        sync_until(&mut b, "b", link, |r| {
            let e = r["rooms"]["join"][&room]["ephemeral"].to_string();
            (e.contains("m.typing") || e.contains("TypingNoticeEvent")) && e.contains(&alice)
        })
    });
    m.step("receipt", || {
        b.ok(
            link,
            json!({"op": "receipt", "client": "b", "room_id": room,
                   "event_id": hello["event_id"]}),
        )
    });
    m.step("sync bob: receipt", || {
        sync_until(&mut b, "b", link, |r| {
            let e = r["rooms"]["join"][&room]["ephemeral"].to_string();
            (e.contains("m.receipt") || e.contains("ReceiptEvent")) && e.contains(&bob)
        })
    });
    let r = m.step("room history (2)", || {
        b.ok(
            link,
            json!({"op": "room_messages", "client": "b", "room_id": room, "limit": 2}),
        )
    });
    let h = bodies(&r["chunk"]);
    assert_eq!(h.len(), 2, "{r}");
    assert_eq!(h[0], "are you there", "{r}");
    assert_eq!(h[1], "hello bob", "{r}");

    let file = media(media_len);
    let text = String::from_utf8(file).unwrap();
    let up_name = format!("upload ({media_len} B)");
    let up = m.step(&up_name, || {
        a.ok(
            link,
            json!({"op": "upload", "client": "a", "text": text, "content_type": "text/plain",
                   "filename": "note.txt"}),
        )
    });
    let down_name = format!("download ({media_len} B)");
    let down = m.step(&down_name, || {
        b.ok(
            link,
            json!({"op": "download", "client": "b", "mxc": up["content_uri"]}),
        )
    });
    assert_eq!(down["len"], media_len);
    assert_eq!(down["text"], text.as_str());
    assert_eq!(down["content_type"], "text/plain");

    assert_eq!(
        d.bodies(&alice_token, &room),
        ["hello bob", "are you there"],
        "the room's messages at the homeserver"
    );

    m.step("logout bob", || {
        b.ok(link, json!({"op": "logout", "client": "b"}))
    });
    a.nio.finish();
    b.nio.finish();
    // The logout reached the homeserver: bob's token is gone there.
    let r = http::request(
        "GET",
        &format!("{}/_matrix/client/v3/account/whoami", link.hs.client_url()),
        &[("Authorization", &format!("Bearer {bob_token}"))],
        &[],
        Duration::from_secs(30),
    )
    .expect("whoami");
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["errcode"], "M_UNKNOWN_TOKEN");
}

/// Link-byte budget of the issue: a text send, request and response, in at most 140 bytes
/// (HTTP/1.1: 907), for an exchange the loss spared (a retransmission counts its bytes again).
fn check_send_budget(r: &Row) {
    assert_eq!(
        r.c.exchange_packets(),
        2,
        "{}: every send was retransmitted; the budget cannot be checked",
        r.name
    );
    assert!(
        r.c.exchange_bytes() <= 140,
        "{}: {} link bytes, budget 140",
        r.name,
        r.c.exchange_bytes()
    );
}

/// A fresh gateway chain at 100 bit/s with 10% loss.
fn slow_link(venv: &Venv, label: &str) -> GatewayLink {
    GatewayLink::start(
        venv,
        &LinkOpts {
            label: label.into(),
            rate: 100,
            loss: 0.1,
            ..LinkOpts::default()
        },
    )
    .expect("start the gateway chain")
}

/// The client scenario runs as two tests of about six minutes each, which run in
/// parallel with each other and the rest: this one is the first half ([`conversation`]).
#[test]
fn gateway_e2e_100_bps_lossy_conversation() {
    let Some(venv) = require_peers("gateway_e2e_100_bps_lossy_conversation") else {
        return;
    };
    let t0 = Instant::now();
    let link = slow_link(&venv, "gw100conv");
    let mut m = Meter::new(&link, Duration::from_millis(2500));
    conversation(&venv, &link, &mut m, SLOW_STEP_S);
    m.print(
        "gateway_e2e_100_bps_lossy_conversation: link bytes and time per operation \
         (100 bit/s, 10% loss, retransmissions included)",
        t0.elapsed(),
    );
}

/// The second half of the client scenario ([`extras`]).
#[test]
fn gateway_e2e_100_bps_lossy_extras() {
    let Some(venv) = require_peers("gateway_e2e_100_bps_lossy_extras") else {
        return;
    };
    let t0 = Instant::now();
    let link = slow_link(&venv, "gw100extra");
    let mut m = Meter::new(&link, Duration::from_millis(2500));
    extras(&venv, &link, &mut m, SLOW_STEP_S, 256);
    m.print(
        "gateway_e2e_100_bps_lossy_extras: link bytes and time per operation \
         (100 bit/s, 10% loss, retransmissions included)",
        t0.elapsed(),
    );
}

/// The homeserver goes down in the middle of a conversation: the client's sends fail with a
/// clear Matrix error (502, `M_UNKNOWN`, "homeserver unreachable"); once it is back, the client
/// retries each with the same transaction id, as the spec's idempotent
/// [`PUT .../send/{eventType}/{txnId}`](https://spec.matrix.org/v1.16/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid)
/// intends, and the room holds every message exactly once. On a lossy link (10%) so that the
/// link's own retransmissions are in play too.
#[test]
fn gateway_homeserver_down_nothing_lost_or_doubled() {
    let Some(venv) = require_peers("gateway_homeserver_down_nothing_lost_or_doubled") else {
        return;
    };
    let mut link = GatewayLink::start(
        &venv,
        &LinkOpts {
            label: "gwhsdown".into(),
            rate: 9600,
            loss: 0.1,
            ..LinkOpts::default()
        },
    )
    .expect("start the gateway chain");
    link.hs.register_user("alice", "pw-alice").unwrap();
    let mut a = Client::start(&venv, &link, 120.0);
    let r = a.ok(
        &link,
        json!({"op": "login", "client": "a", "user": "alice", "password": "pw-alice",
               "request_timeout_s": 120}),
    );
    let token = r["access_token"].as_str().unwrap().to_owned();
    let room = a.ok(
        &link,
        json!({"op": "create_room", "client": "a", "name": "outage"}),
    )["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(
        &link,
        json!({"op": "send", "client": "a", "room_id": room, "body": "before"}),
    );

    // A long poll is waiting at the homeserver when it dies: it ends with an error at once,
    // not after its timeout.
    a.ok(&link, json!({"op": "sync", "client": "a", "since": ""}));
    let before = link.counters();
    let r = std::thread::scope(|s| {
        let h = s.spawn(|| a.run(json!({"op": "sync", "client": "a", "timeout_ms": 60_000})));
        let end = Instant::now() + Duration::from_secs(60);
        while link.counters().packets_in == before.packets_in && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        link.hs.stop();
        h.join().expect("long-poll thread")
    });
    eprintln!("long poll across the outage: {r}");
    assert_eq!(r["ok"], false, "a long poll across the outage: {r}");
    assert!(r["ms"].as_f64().unwrap() < 30_000.0, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("homeserver unreachable"),
        "{r}"
    );
    // Transaction ids as nio makes them (UUIDs), fixed so that the retries can reuse them.
    let txn = |i: usize| format!("0e5f4c2a-9d1b-4c7e-8a3f-5b6d7e8f90a{i}");
    let body = |i: usize| format!("while down {i}");
    for i in 0..3 {
        let r = a.run(json!({"op": "send", "client": "a", "room_id": room,
                             "body": body(i), "txn_id": txn(i)}));
        assert_eq!(r["ok"], false, "a send with the homeserver down: {r}");
        assert_eq!(r["status_code"], "M_UNKNOWN", "{r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap_or("")
                .contains("homeserver unreachable"),
            "{r}{}",
            link.logs(20)
        );
    }
    // What the client sees on the wire: HTTP 502 with a Matrix error body.
    let r = http::request(
        "PUT",
        &format!(
            "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/{}",
            link.tunnel_url,
            txn(3)
        ),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        json!({"msgtype": "m.text", "body": body(3)})
            .to_string()
            .as_bytes(),
        Duration::from_secs(120),
    )
    .expect("raw send");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json().unwrap();
    assert_eq!(j["errcode"], "M_UNKNOWN");
    assert_eq!(j["error"], "homeserver unreachable");
    let r = a.run(json!({"op": "sync", "client": "a", "since": ""}));
    assert_eq!(r["ok"], false, "a sync with the homeserver down: {r}");

    link.hs
        .restart(Duration::from_secs(120))
        .expect("restart synapse");
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = a.ok(
            &link,
            json!({"op": "send", "client": "a", "room_id": room,
                   "body": body(i), "txn_id": txn(i)}),
        );
        ids.push(r["event_id"].as_str().unwrap().to_owned());
    }
    // A client that missed the answers sends the same transactions once more: the homeserver
    // answers with the same events and stores nothing new.
    for (i, id) in ids.iter().enumerate() {
        let r = a.ok(
            &link,
            json!({"op": "send", "client": "a", "room_id": room,
                   "body": body(i), "txn_id": txn(i)}),
        );
        assert_eq!(r["event_id"], id.as_str(), "retry of {}", txn(i));
    }
    let r = a.ok(
        &link,
        json!({"op": "room_messages", "client": "a", "room_id": room, "limit": 20}),
    );
    let mut got = bodies(&r["chunk"]);
    got.reverse();
    let want: Vec<String> = core::iter::once("before".to_owned())
        .chain((0..4).map(body))
        .collect();
    assert_eq!(got, want, "room history after the outage");
    a.nio.finish();
}
