//! Property tests: random update/application sequences never panic and keep the invariants;
//! replayed batches never deliver an event twice.

use std::collections::HashSet;

use lowband_device::{Applied, Body, EventIn, RoomRef, SyncUpdate, TxnId};
use proptest::prelude::*;

/// The capacities these tests exercise (the crate's default is smaller: 2 rooms, 3 events).
type State4 = lowband_device::SyncState<4, 4, 2, 4, 16>;

const ROOMS: [&str; 6] = ["!r0:x", "!r1:x", "!r2:x", "!r3:x", "!r4:x", "!r5:x"];
const SENDERS: [&str; 3] = [
    "@a:x",
    "@bob:example.org",
    "@a-very-long-user-name-that-does-not-fit:example.org",
];

#[derive(Debug, Clone)]
enum Op {
    Joined(usize, Option<u16>),
    Left(usize, bool),
    Invited(usize, usize),
    Event {
        room: usize,
        by_short: bool,
        id: u32,
        sender: usize,
        body: String,
        cbor: Option<Vec<u8>>,
    },
    Unread(usize, u16, u16),
    Echo(u8, Option<u32>),
    EchoJunk(String),
    Since(String),
    Reset,
    Read,
    Send(usize, String),
    Join(usize),
    Typing(usize, bool),
    Accept(usize),
    Ack(u8),
    SaveRestore,
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..ROOMS.len();
    prop_oneof![
        3 => (r.clone(), proptest::option::of(0u16..4)).prop_map(|(r, s)| Op::Joined(r, s)),
        1 => (r.clone(), any::<bool>()).prop_map(|(r, s)| Op::Left(r, s)),
        1 => (r.clone(), 0..SENDERS.len()).prop_map(|(r, s)| Op::Invited(r, s)),
        8 => (
            r.clone(),
            any::<bool>(),
            0u32..40,
            0..SENDERS.len(),
            ".{0,100}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
        )
            .prop_map(|(room, by_short, id, sender, body, cbor)| Op::Event {
                room,
                by_short,
                id,
                sender,
                body,
                cbor
            }),
        1 => (r.clone(), any::<u16>(), any::<u16>()).prop_map(|(r, h, n)| Op::Unread(r, h, n)),
        1 => (any::<u8>(), proptest::option::of(0u32..40)).prop_map(|(i, e)| Op::Echo(i, e)),
        1 => ".{0,24}".prop_map(Op::EchoJunk),
        1 => "[a-z0-9_]{0,70}".prop_map(Op::Since),
        1 => Just(Op::Reset),
        3 => Just(Op::Read),
        2 => (r.clone(), ".{0,110}").prop_map(|(r, b)| Op::Send(r, b)),
        1 => r.clone().prop_map(Op::Join),
        1 => (r.clone(), any::<bool>()).prop_map(|(r, t)| Op::Typing(r, t)),
        1 => r.prop_map(Op::Accept),
        2 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::SaveRestore),
    ]
}

fn short_of(s: &State4, room: usize) -> Option<u16> {
    s.room(ROOMS[room]).and_then(|r| r.short())
}

fn room_ref(s: &State4, room: usize, by_short: bool) -> RoomRef<'static> {
    match (by_short, short_of(s, room)) {
        (true, Some(n)) => RoomRef::Short(n),
        _ => RoomRef::Id(ROOMS[room]),
    }
}

/// Apply one op; returns the since token change it is allowed to make.
fn run(s: &mut State4, op: &Op, boot: &mut u32) {
    match op {
        Op::Joined(r, short) => {
            s.apply(SyncUpdate::Joined {
                room: ROOMS[*r],
                short: *short,
            });
        }
        Op::Left(r, by_short) => {
            let room = room_ref(s, *r, *by_short);
            s.apply(SyncUpdate::Left { room });
        }
        Op::Invited(r, i) => {
            s.apply(SyncUpdate::Invited {
                room: ROOMS[*r],
                inviter: SENDERS[*i],
            });
        }
        Op::Event {
            room,
            by_short,
            id,
            sender,
            body,
            cbor,
        } => {
            let room = room_ref(s, *room, *by_short);
            let id = format!("$e{id}");
            let body = match cbor {
                Some(c) => Body::Cbor(c),
                None => Body::Text(body),
            };
            s.apply(SyncUpdate::Event(EventIn {
                room,
                event_id: &id,
                sender: SENDERS[*sender],
                kind: "m.room.message",
                msgtype: Some("m.text"),
                body,
                ts: 1,
            }));
        }
        Op::Unread(r, h, n) => {
            let room = room_ref(s, *r, true);
            s.apply(SyncUpdate::Unread {
                room,
                highlight: *h,
                notification: *n,
            });
        }
        Op::Echo(i, e) => {
            let txn = s
                .outgoing()
                .get(usize::from(*i) % 5)
                .map(|o| o.txn)
                .unwrap_or(TxnId { boot: 0, seq: 0 });
            let t = txn.to_text();
            let e = e.map(|e| format!("$e{e}"));
            s.apply(SyncUpdate::Echo {
                txn_id: t.as_str(),
                event_id: e.as_deref(),
            });
        }
        Op::EchoJunk(t) => {
            s.apply(SyncUpdate::Echo {
                txn_id: t,
                event_id: Some(t),
            });
        }
        Op::Since(t) => {
            s.apply(SyncUpdate::Since(t));
        }
        Op::Reset => {
            s.apply(SyncUpdate::Reset);
        }
        Op::Read => {
            let _ = s.next_event();
        }
        Op::Send(r, b) => {
            let _ = s.send_text(ROOMS[*r], b);
        }
        Op::Join(r) => {
            let _ = s.join(ROOMS[*r]);
        }
        Op::Typing(r, t) => {
            let _ = s.set_typing(ROOMS[*r], *t);
        }
        Op::Accept(r) => {
            let _ = s.accept_invite(ROOMS[*r]);
        }
        Op::Ack(i) => {
            if let Some(t) = s.outgoing().get(usize::from(*i) % 5).map(|o| o.txn) {
                assert!(s.acknowledge(t));
            }
        }
        Op::SaveRestore => {
            let mut buf = vec![0u8; State4::MAX_RECORD_LEN];
            let n = s.save(&mut buf).expect("every state fits the record bound");
            let mut r = State4::restore(&buf[..n]).expect("own record restores");
            let mut again = vec![0u8; State4::MAX_RECORD_LEN];
            let m = r.save(&mut again).expect("fits");
            assert_eq!(&buf[..n], &again[..m], "save/restore/save is stable");
            *boot += 1;
            r.begin_boot(*boot).expect("increasing");
            *s = r;
        }
    }
}

fn check_invariants(s: &State4) {
    assert!(s.rooms().len() <= 4);
    assert!(s.invites().len() <= 2);
    assert!(s.outgoing().len() <= 4);
    assert!(s.seen_window().len() <= 16);
    let ids: HashSet<&str> = s.rooms().iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), s.rooms().len(), "room ids unique");
    let shorts: Vec<u16> = s.rooms().iter().filter_map(|r| r.short()).collect();
    let set: HashSet<u16> = shorts.iter().copied().collect();
    assert_eq!(set.len(), shorts.len(), "short numbers unique");
    let mut unread = 0;
    for r in s.rooms() {
        assert!(r.events().len() <= 4);
        let ev: HashSet<&str> = r.events().iter().map(|e| e.id()).collect();
        assert_eq!(ev.len(), r.events().len(), "event ids unique in a room");
        assert!(r.events().windows(2).all(|w| w[0].seq() < w[1].seq()));
        for e in r.events() {
            assert!(e.body().is_none_or(|b| b.len() <= 80));
            assert!(e.content_cbor().is_none_or(|b| b.len() <= 80));
        }
        unread += r.unread();
    }
    assert_eq!(s.unread(), unread);
    let inv: HashSet<&str> = s.invites().iter().map(|v| v.room()).collect();
    assert_eq!(inv.len(), s.invites().len(), "invites unique");
    assert!(
        inv.iter().all(|r| s.room(r).is_none()),
        "no invite for a joined room"
    );
    let txns: HashSet<TxnId> = s.outgoing().iter().map(|o| o.txn).collect();
    assert_eq!(txns.len(), s.outgoing().len(), "txn ids unique");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_invariants(ops in proptest::collection::vec(op(), 0..200)) {
        let mut s = State4::new(1);
        let mut boot = 1;
        let mut issued: HashSet<TxnId> = HashSet::new();
        let mut delivered: HashSet<(String, u32)> = HashSet::new();
        for op in &ops {
            let since_before = s.since().map(str::to_string);
            let out_before: Vec<TxnId> = s.outgoing().iter().map(|o| o.txn).collect();
            if let Op::Read = op {
                if let Some((r, e)) = s.next_event() {
                    assert!(delivered.insert((r.id().to_string(), e.seq())), "each stored event once");
                }
            } else {
                run(&mut s, op, &mut boot);
            }
            if !matches!(op, Op::Since(_)) {
                prop_assert_eq!(s.since().map(str::to_string), since_before, "since moves only at commit");
            }
            for o in s.outgoing() {
                if !out_before.contains(&o.txn) {
                    prop_assert!(issued.insert(o.txn), "a txn id is never issued twice: {}", o.txn);
                }
            }
            check_invariants(&s);
        }
    }

    /// A batch cut at any point, with the application reading at any point, then resent whole:
    /// no event is delivered twice and the committed since token is the batch's.
    #[test]
    fn replayed_batches_never_deliver_twice(
        prefix in proptest::collection::vec(op(), 0..60),
        batch in proptest::collection::vec(op(), 0..24),
        cut in 0usize..24,
        reads in proptest::collection::vec(any::<bool>(), 48),
    ) {
        let mut s = State4::new(1);
        let mut boot = 1;
        // Prefix without app reads so that it only sets the scene.
        for op in prefix.iter().filter(|o| !matches!(o, Op::Read | Op::SaveRestore)) {
            run(&mut s, op, &mut boot);
        }
        s.apply(SyncUpdate::Since("base"));
        let mut delivered: HashSet<String> = HashSet::new();
        let read_all = |s: &mut State4, delivered: &mut HashSet<String>| {
            while let Some((_, e)) = s.next_event() {
                delivered.insert(e.id().to_string());
            }
        };
        read_all(&mut s, &mut delivered);
        // The batch: fresh event ids (never seen before), only sync items, within the
        // documented window (events + echoes + 4 per leave < 16).
        let mut items: Vec<Op> = vec![];
        let mut cost = 0;
        for (i, op) in batch.into_iter().enumerate() {
            let op = match op {
                Op::Event { room, by_short, sender, body, cbor, .. } =>
                    Op::Event { room, by_short, id: 1000 + i as u32, sender, body, cbor },
                Op::Echo(t, _) => Op::Echo(t, None),
                o @ (Op::Joined(..)
                | Op::Left(..)
                | Op::Invited(..)
                | Op::Unread(..)
                | Op::Reset) => o,
                _ => continue,
            };
            // A leave, or a join that displaces an unconfirmed room during a full sync, moves
            // up to 4 stored ids into the window.
            let reset = items.iter().any(|o| matches!(o, Op::Reset));
            cost += match op {
                Op::Event { .. } => 1,
                Op::Left(..) => 4,
                Op::Joined(..) if reset => 4,
                _ => 0,
            };
            if cost >= 16 { break; }
            items.push(op);
        }
        let mut once = |s: &mut State4, upto: usize, reads: &[bool], delivered: &mut HashSet<String>| {
            for (i, op) in items.iter().take(upto).enumerate() {
                run(s, op, &mut boot);
                if reads[i] {
                    if let Some((_, e)) = s.next_event() {
                        prop_assert!(delivered.insert(e.id().to_string()), "delivered twice: {}", e.id());
                    }
                }
            }
            Ok(())
        };
        once(&mut s, cut, &reads[..24], &mut delivered)?;
        prop_assert_eq!(s.since(), Some("base"));
        once(&mut s, items.len(), &reads[24..], &mut delivered)?;
        prop_assert_eq!(s.apply(SyncUpdate::Since("next")), Applied::Committed);
        while let Some((_, e)) = s.next_event() {
            prop_assert!(delivered.insert(e.id().to_string()), "delivered twice: {}", e.id());
        }
        check_invariants(&s);
    }
}
