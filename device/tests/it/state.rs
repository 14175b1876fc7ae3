//! Sync state: capacities, drop rules, dedupe, since commit, reading, outbox.

use lowband_device::state::{flags, fnv1a64, BODY_LEN, EVENT_ID_LEN, ROOM_ID_LEN, SINCE_LEN};
use lowband_device::{
    Applied, Body, Command, EventIn, Ignored, OutContent, RoomRef, SendError, SyncUpdate, TxnId,
};

/// The capacities these tests exercise (the crate's default is smaller: 2 rooms, 3 events).
type State4 = lowband_device::SyncState<4, 4, 2, 4, 16>;

pub fn ev<'a>(room: &'a str, id: &'a str, body: &'a str) -> SyncUpdate<'a> {
    SyncUpdate::Event(EventIn {
        room: RoomRef::Id(room),
        event_id: id,
        sender: "@alice:example.org",
        kind: "m.room.message",
        msgtype: Some("m.text"),
        body: Body::Text(body),
        ts: 1_700_000_000_000,
    })
}

fn joined(room: &str) -> SyncUpdate<'_> {
    SyncUpdate::Joined { room, short: None }
}

fn ids(s: &State4, room: &str) -> Vec<String> {
    s.room(room)
        .map(|r| r.events().iter().map(|e| e.id().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn rooms_beyond_capacity_are_ignored_and_counted() {
    let mut s = State4::new(1);
    for i in 0..6 {
        let id = format!("!r{i}:x");
        let want = if i < 4 {
            Applied::Stored
        } else {
            Applied::Ignored(Ignored::RoomsFull)
        };
        assert_eq!(s.apply(joined(&id)), want, "{id}");
    }
    assert_eq!(s.rooms().len(), 4);
    assert_eq!(s.counters().rooms_ignored, 2);
    // Replayed join of a stored room is a duplicate, not an overflow.
    assert_eq!(s.apply(joined("!r0:x")), Applied::Duplicate);
    assert_eq!(s.counters().rooms_ignored, 2);
    // Leaving frees a slot.
    assert_eq!(
        s.apply(SyncUpdate::Left {
            room: RoomRef::Id("!r1:x")
        }),
        Applied::Updated
    );
    assert_eq!(s.apply(joined("!r4:x")), Applied::Stored);
}

#[test]
fn long_room_id_is_ignored() {
    let mut s = State4::new(1);
    let long = format!("!{}:x", "a".repeat(ROOM_ID_LEN));
    assert_eq!(s.apply(joined(&long)), Applied::Ignored(Ignored::IdTooLong));
    assert_eq!(s.counters().ids_too_long, 1);
    assert!(s.rooms().is_empty());
    let fits = format!("!{}:x", "a".repeat(ROOM_ID_LEN - 3));
    assert_eq!(fits.len(), ROOM_ID_LEN);
    assert_eq!(s.apply(joined(&fits)), Applied::Stored);
}

#[test]
fn events_for_unknown_rooms_are_ignored() {
    let mut s = State4::new(1);
    assert_eq!(
        s.apply(ev("!nope:x", "$1", "hi")),
        Applied::Ignored(Ignored::UnknownRoom)
    );
    assert_eq!(s.counters().events_unknown_room, 1);
    assert_eq!(s.unread(), 0);
}

#[test]
fn oldest_event_is_evicted_first() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    for i in 0..6 {
        assert_eq!(s.apply(ev("!a:x", &format!("$e{i}"), "x")), Applied::Stored);
    }
    assert_eq!(ids(&s, "!a:x"), ["$e2", "$e3", "$e4", "$e5"]);
    assert_eq!(s.counters().events_evicted, 2);
    assert_eq!(s.counters().unread_evicted, 2);
    // Read everything, then evict read ones: not counted as unread losses.
    while s.next_event().is_some() {}
    s.apply(ev("!a:x", "$e6", "x"));
    assert_eq!(s.counters().events_evicted, 3);
    assert_eq!(s.counters().unread_evicted, 2);
    // The evicted ids are in the dedupe window: a replay does not bring them back.
    assert_eq!(s.apply(ev("!a:x", "$e0", "x")), Applied::Duplicate);
    assert_eq!(s.apply(ev("!a:x", "$e2", "x")), Applied::Duplicate);
    assert_eq!(ids(&s, "!a:x"), ["$e3", "$e4", "$e5", "$e6"]);
    assert_eq!(s.seen_window().len(), 3);
}

#[test]
fn body_truncated_at_char_boundary_with_flag() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    // BODY_LEN - 1 ASCII bytes then a 2-byte char: only the ASCII part fits.
    let body = format!("{}é tail", "a".repeat(BODY_LEN - 1));
    s.apply(ev("!a:x", "$1", &body));
    let (_, e) = s.next_event().expect("stored");
    assert_eq!(e.body().map(str::len), Some(BODY_LEN - 1));
    assert!(e.truncated());
    assert_eq!(e.flags() & flags::BODY_TRUNCATED, flags::BODY_TRUNCATED);
    assert_eq!(s.counters().texts_truncated, 1);
    // Exactly full: not truncated.
    s.apply(ev("!a:x", "$2", &"b".repeat(BODY_LEN)));
    let (_, e) = s.next_event().expect("stored");
    assert_eq!(e.body().map(str::len), Some(BODY_LEN));
    assert!(!e.truncated());
}

#[test]
fn cbor_content_that_does_not_fit_is_dropped_whole() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    let small = [0xa1, 0x61, 0x74, 0x18, 0x2a]; // {"t": 42}
    let big = [0x40; BODY_LEN + 1];
    for (id, c) in [("$s", &small[..]), ("$b", &big[..])] {
        s.apply(SyncUpdate::Event(EventIn {
            room: RoomRef::Id("!a:x"),
            event_id: id,
            sender: "@bot:x",
            kind: "org.example.cmd",
            msgtype: None,
            body: Body::Cbor(c),
            ts: 5,
        }));
    }
    let (_, e) = s.next_event().expect("small");
    assert_eq!(e.content_cbor(), Some(&small[..]));
    assert_eq!(e.body(), None);
    assert_eq!(e.msgtype(), None);
    assert_eq!(e.kind(), "org.example.cmd");
    assert!(!e.truncated());
    let (_, e) = s.next_event().expect("big");
    assert_eq!(e.content_cbor(), None);
    assert!(e.truncated());
}

#[test]
fn long_event_id_is_digested_and_still_deduped() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    let long = format!("${}:old.example.org", "q".repeat(EVENT_ID_LEN));
    assert_eq!(s.apply(ev("!a:x", &long, "hi")), Applied::Stored);
    assert_eq!(s.apply(ev("!a:x", &long, "hi")), Applied::Duplicate);
    let (_, e) = s.next_event().expect("stored");
    assert_eq!(e.id(), format!("~{:016x}", fnv1a64(long.as_bytes())));
    assert_eq!(e.flags() & flags::ID_DIGEST, flags::ID_DIGEST);
    assert_eq!(s.counters().ids_digested, 1);
}

#[test]
fn truncated_sender_never_matches() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    let admin = "@admin:example.org";
    let long = format!("{admin}{}", ".attacker".repeat(6));
    for (id, sender) in [("$1", admin), ("$2", long.as_str())] {
        s.apply(SyncUpdate::Event(EventIn {
            room: RoomRef::Id("!a:x"),
            event_id: id,
            sender,
            kind: "m.room.message",
            msgtype: Some("m.text"),
            body: Body::Text("reboot"),
            ts: 1,
        }));
    }
    let (_, e) = s.next_event().expect("1");
    assert!(e.sender_is(admin));
    let (_, e) = s.next_event().expect("2");
    assert!(e.sender().starts_with(admin));
    assert!(!e.sender_is(e.sender()));
    assert!(!e.sender_is(&long));
}

#[test]
fn invites_drop_oldest_and_follow_membership() {
    let mut s = State4::new(1);
    for i in 0..3 {
        let r = format!("!i{i}:x");
        assert_eq!(
            s.apply(SyncUpdate::Invited {
                room: &r,
                inviter: "@bob:x"
            }),
            Applied::Stored
        );
    }
    let rooms: Vec<_> = s.invites().iter().map(|v| v.room().to_string()).collect();
    assert_eq!(rooms, ["!i1:x", "!i2:x"]);
    assert_eq!(s.counters().invites_dropped, 1);
    // Replay: duplicate.
    assert_eq!(
        s.apply(SyncUpdate::Invited {
            room: "!i2:x",
            inviter: "@bob:x"
        }),
        Applied::Duplicate
    );
    assert!(s.invites()[1].inviter_is("@bob:x"));
    // Accepting queues a join; the invite goes when the join is reported.
    assert_eq!(s.accept_invite("!i0:x"), Err(SendError::NoSuchInvite));
    let t = s.accept_invite("!i1:x").expect("queued");
    assert_eq!(
        s.next_outgoing().map(|o| (o.txn, o.cmd.clone())),
        Some((
            t,
            Command::Join {
                room: lowband_device::state::RoomId::exact("!i1:x").expect("fits")
            }
        ))
    );
    s.apply(joined("!i1:x"));
    assert_eq!(s.invites().len(), 1);
    // Invites for joined rooms are ignored.
    assert_eq!(
        s.apply(SyncUpdate::Invited {
            room: "!i1:x",
            inviter: "@bob:x"
        }),
        Applied::Ignored(Ignored::AlreadyJoined)
    );
    // A leave for an invited room removes the invite (declined).
    s.decline_invite("!i2:x").expect("queued");
    s.apply(SyncUpdate::Left {
        room: RoomRef::Id("!i2:x"),
    });
    assert!(s.invites().is_empty());
}

#[test]
fn replayed_batch_does_not_duplicate_and_since_commits_at_end() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    assert_eq!(s.apply(SyncUpdate::Since("s1")), Applied::Committed);
    let batch: Vec<String> = (0..7).map(|i| format!("$b{i}")).collect();
    // First delivery is cut after 5 events: since unchanged.
    for id in &batch[..5] {
        s.apply(ev("!a:x", id, "x"));
    }
    assert_eq!(s.since(), Some("s1"));
    // The gateway resends the whole batch from s1.
    let mut stored = 0;
    for id in &batch {
        if s.apply(ev("!a:x", id, "x")) == Applied::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 2);
    assert_eq!(s.apply(SyncUpdate::Since("s2")), Applied::Committed);
    assert_eq!(s.since(), Some("s2"));
    assert_eq!(ids(&s, "!a:x"), ["$b3", "$b4", "$b5", "$b6"]);
    // The app sees each stored event once, in order.
    let mut read = vec![];
    while let Some((r, e)) = s.next_event() {
        assert_eq!(r.id(), "!a:x");
        read.push(e.id().to_string());
    }
    assert_eq!(read, ["$b3", "$b4", "$b5", "$b6"]);
    assert_eq!(s.next_event().map(|(_, e)| e.seq()), None);
}

#[test]
fn overlong_since_is_cleared_not_cut() {
    let mut s = State4::new(1);
    s.apply(SyncUpdate::Since("s1"));
    let long = "s".repeat(SINCE_LEN + 1);
    assert_eq!(
        s.apply(SyncUpdate::Since(&long)),
        Applied::Ignored(Ignored::SinceTooLong)
    );
    assert_eq!(s.since(), None);
    assert_eq!(s.counters().since_rejected, 1);
}

#[test]
fn next_event_is_arrival_order_across_rooms_and_once() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    s.apply(joined("!b:x"));
    s.apply(ev("!b:x", "$1", "one"));
    s.apply(ev("!a:x", "$2", "two"));
    s.apply(ev("!b:x", "$3", "three"));
    assert_eq!(s.unread(), 3);
    assert_eq!(s.peek_event().map(|(_, e)| e.id()), Some("$1"));
    let got: Vec<(String, String)> = core::iter::from_fn(|| {
        s.next_event()
            .map(|(r, e)| (r.id().to_string(), e.body().unwrap_or("").to_string()))
    })
    .collect();
    assert_eq!(
        got,
        [
            ("!b:x".into(), "one".into()),
            ("!a:x".into(), "two".into()),
            ("!b:x".into(), "three".into())
        ]
    );
    assert_eq!(s.unread(), 0);
    // A room joined later starts with nothing unread, and new events are unread.
    s.apply(joined("!c:x"));
    s.apply(ev("!c:x", "$4", "four"));
    assert_eq!(
        s.next_event().map(|(_, e)| e.id().to_string()),
        Some("$4".into())
    );
}

#[test]
fn short_room_numbers_name_one_room_each() {
    let mut s = State4::new(1);
    s.apply(SyncUpdate::Joined {
        room: "!a:x",
        short: Some(1),
    });
    s.apply(SyncUpdate::Joined {
        room: "!b:x",
        short: Some(2),
    });
    s.apply(SyncUpdate::Event(EventIn {
        room: RoomRef::Short(2),
        event_id: "$1",
        sender: "@a:x",
        kind: "m.room.message",
        msgtype: Some("m.text"),
        body: Body::Text("via short"),
        ts: 0,
    }));
    assert_eq!(ids(&s, "!b:x"), ["$1"]);
    assert_eq!(
        s.apply(SyncUpdate::Unread {
            room: RoomRef::Short(1),
            highlight: 1,
            notification: 3
        }),
        Applied::Updated
    );
    assert_eq!(
        s.room("!a:x").map(|r| (r.highlight(), r.notification())),
        Some((1, 3))
    );
    // Reassigning number 2 to !a takes it away from !b.
    s.apply(SyncUpdate::Joined {
        room: "!a:x",
        short: Some(2),
    });
    assert_eq!(s.room("!b:x").and_then(|r| r.short()), None);
    assert_eq!(s.room("!a:x").and_then(|r| r.short()), Some(2));
    assert_eq!(
        s.apply(SyncUpdate::Unread {
            room: RoomRef::Short(1),
            highlight: 0,
            notification: 0
        }),
        Applied::Ignored(Ignored::UnknownRoom)
    );
    s.forget_short_ids();
    assert!(s.rooms().iter().all(|r| r.short().is_none()));
}

#[test]
fn outbox_txn_ids_capacity_and_acknowledge() {
    let mut s = State4::new(7);
    let t0 = s.send_text("!a:x", "hello").expect("0");
    let t1 = s.send_custom("!a:x", "org.example.reading", &[0xa1, 0x61, 0x74, 0x15]);
    let t1 = t1.expect("1");
    let t2 = s.join("!b:x").expect("2");
    let t3 = s.leave("!c:x").expect("3");
    assert_eq!(
        [t0, t1, t2, t3].map(|t| t.to_text().to_string()),
        ["d7.0", "d7.1", "d7.2", "d7.3"]
    );
    assert_eq!(s.send_text("!a:x", "more"), Err(SendError::OutboxFull));
    assert_eq!(s.outbox_free(), 0);
    // Resending is asking again: the head stays until acknowledged.
    assert_eq!(s.next_outgoing().map(|o| o.txn), Some(t0));
    assert_eq!(s.next_outgoing().map(|o| o.txn), Some(t0));
    match &s.next_outgoing().expect("head").cmd {
        Command::Message {
            room,
            kind,
            content,
        } => {
            assert_eq!(room.as_str(), "!a:x");
            assert_eq!(kind.as_str(), "m.room.message");
            assert_eq!(
                content,
                &OutContent::Text(lowband_device::text::Text::exact("hello").expect("fits"))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(s.acknowledge(t0));
    assert!(!s.acknowledge(t0), "duplicate confirmation");
    assert_eq!(s.next_outgoing().map(|o| o.txn), Some(t1));
    // The gateway's echo acknowledges by textual id.
    assert_eq!(
        s.apply(SyncUpdate::Echo {
            txn_id: "d7.2",
            event_id: None
        }),
        Applied::Updated
    );
    assert_eq!(
        s.apply(SyncUpdate::Echo {
            txn_id: "d7.2",
            event_id: None
        }),
        Applied::Ignored(Ignored::UnknownTxn)
    );
    let left: Vec<TxnId> = s.outgoing().iter().map(|o| o.txn).collect();
    assert_eq!(left, [t1, t3]);
    // Nothing is cut on the way out.
    let long = "x".repeat(lowband_device::outbox::OUT_BODY_LEN + 1);
    assert_eq!(s.send_text("!a:x", &long), Err(SendError::TooLong));
    let long_room = format!("!{}:x", "r".repeat(ROOM_ID_LEN));
    assert_eq!(s.join(&long_room), Err(SendError::TooLong));
    // Refused sends do not consume a txn id.
    assert_eq!(s.send_text("!a:x", "ok").map(|t| t.seq), Ok(4));
}

#[test]
fn echoed_own_event_is_not_delivered_back() {
    let mut s = State4::new(1);
    s.apply(joined("!a:x"));
    let t = s.send_text("!a:x", "reading 21.5").expect("queued");
    let tt = t.to_text();
    s.apply(SyncUpdate::Echo {
        txn_id: tt.as_str(),
        event_id: Some("$mine"),
    });
    assert_eq!(
        s.apply(ev("!a:x", "$mine", "reading 21.5")),
        Applied::Duplicate
    );
    assert_eq!(s.apply(ev("!a:x", "$theirs", "cmd")), Applied::Stored);
    assert_eq!(
        s.next_event().map(|(_, e)| e.id().to_string()),
        Some("$theirs".into())
    );
}

#[test]
fn typing_is_coalesced_per_room() {
    let mut s = State4::new(1);
    let a = s.set_typing("!a:x", true).expect("a");
    let b = s.set_typing("!b:x", true).expect("b");
    let a2 = s.set_typing("!a:x", false).expect("a2");
    assert_ne!(a, a2);
    assert_eq!(s.outgoing().len(), 2);
    assert_eq!(s.outgoing()[0].txn, a2);
    assert!(matches!(
        s.outgoing()[0].cmd,
        Command::Typing { typing: false, .. }
    ));
    assert_eq!(s.outgoing()[1].txn, b);
    // An acknowledgement of the replaced one removes nothing.
    assert!(!s.acknowledge(a));
    assert_eq!(s.outgoing().len(), 2);
}

#[test]
fn default_sizes_stay_in_budget() {
    use core::mem::size_of;
    use lowband_device::{Event, Invite, Outgoing, Room};
    println!(
        "size_of: State4 {} Event {} Room<4> {} Outgoing {} Invite {}",
        size_of::<State4>(),
        size_of::<Event>(),
        size_of::<Room<4>>(),
        size_of::<Outgoing>(),
        size_of::<Invite>()
    );
    assert!(size_of::<State4>() <= 5120 + 208);
    assert_eq!(size_of::<Event>(), 224);
    assert!(size_of::<Room<4>>() <= 4 * 224 + 80);
    assert_eq!(size_of::<Outgoing>(), 180);
    assert_eq!(size_of::<Invite>(), 92);
    // State + one save/restore scratch buffer still leave room in a 16 KiB budget.
    assert!(
        size_of::<lowband_device::DefaultSyncState>() + lowband_device::DEFAULT_RECORD_MAX
            <= 6 * 1024
    );
}

#[test]
fn full_sync_reset_forgets_unconfirmed_rooms_and_invites() {
    let mut s = State4::new(1);
    for r in ["!a:x", "!b:x", "!c:x", "!d:x"] {
        s.apply(joined(r));
    }
    s.apply(ev("!c:x", "$c1", "old"));
    s.apply(SyncUpdate::Invited {
        room: "!i:x",
        inviter: "@bob:x",
    });
    s.apply(SyncUpdate::Invited {
        room: "!j:x",
        inviter: "@bob:x",
    });
    s.apply(SyncUpdate::Since("s1"));
    // The since token was lost; the gateway answers with a full sync: b, e, f joined, j invited.
    assert_eq!(s.apply(SyncUpdate::Reset), Applied::Updated);
    assert_eq!(s.apply(joined("!b:x")), Applied::Updated);
    // Rooms are full, but an unconfirmed room gives way.
    assert_eq!(s.apply(joined("!e:x")), Applied::Stored);
    assert_eq!(s.apply(joined("!f:x")), Applied::Stored);
    assert_eq!(s.counters().rooms_ignored, 0);
    assert_eq!(
        s.apply(SyncUpdate::Invited {
            room: "!j:x",
            inviter: "@bob:x"
        }),
        Applied::Updated
    );
    // Not committed yet: unconfirmed rooms are still there.
    assert!(s.room("!c:x").is_some() || s.room("!d:x").is_some());
    assert_eq!(s.apply(SyncUpdate::Since("s2")), Applied::Committed);
    let rooms: Vec<&str> = s.rooms().iter().map(|r| r.id()).collect();
    assert_eq!(rooms, ["!b:x", "!e:x", "!f:x"]);
    let inv: Vec<&str> = s.invites().iter().map(|v| v.room()).collect();
    assert_eq!(inv, ["!j:x"]);
    // A later delta sync is not a reset: nothing else goes.
    s.apply(SyncUpdate::Since("s3"));
    assert_eq!(s.rooms().len(), 3);
    // Events of a forgotten room are not handed out again if it comes back.
    s.apply(joined("!c:x"));
    assert_eq!(s.apply(ev("!c:x", "$c1", "old")), Applied::Duplicate);
}
