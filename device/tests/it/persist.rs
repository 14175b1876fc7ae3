//! Persistence: records, A/B pages with power cuts, outbox across reboots, boot counter.

use crate::flash::{PowerCut, RamFlash, PAGE};
use crate::state::ev;
use lowband_device::persist::{open, HEADER_LEN, KIND_SYNC_STATE, TRAILER_LEN};
use lowband_device::state::{
    BODY_LEN, EVENT_ID_LEN, EVENT_TYPE_LEN, MSGTYPE_LEN, ROOM_ID_LEN, SINCE_LEN, USER_ID_LEN,
};
use lowband_device::Page;
use lowband_device::{
    AbStore, Body, BootCounter, BootError, EventIn, PersistError, RoomRef, SendError, StoreError,
    SyncState, SyncUpdate, TxnId,
};

/// The capacities these tests exercise (the crate's default is smaller: 2 rooms, 3 events).
type State4 = lowband_device::SyncState<4, 4, 2, 4, 16>;

fn pad(prefix: &str, len: usize) -> String {
    let mut s = prefix.to_string();
    while s.len() < len {
        s.push('z');
    }
    s
}

/// Every slot and every string at its capacity.
fn full_state() -> State4 {
    let mut s = State4::new(u32::MAX - 1);
    s.apply(SyncUpdate::Since(&pad("s", SINCE_LEN)));
    for r in 0..4 {
        let room = pad(&format!("!{r}"), ROOM_ID_LEN);
        s.apply(SyncUpdate::Joined {
            room: &room,
            short: Some(r),
        });
        s.apply(SyncUpdate::Unread {
            room: RoomRef::Id(&room),
            highlight: u16::MAX,
            notification: u16::MAX,
        });
        for e in 0..24 {
            let id = pad(&format!("${r}.{e}."), EVENT_ID_LEN);
            s.apply(SyncUpdate::Event(EventIn {
                room: RoomRef::Id(&room),
                event_id: &id,
                sender: &pad("@", USER_ID_LEN),
                kind: &pad("k", EVENT_TYPE_LEN),
                msgtype: Some(&pad("m", MSGTYPE_LEN)),
                body: Body::Text(&pad("b", BODY_LEN)),
                ts: u64::MAX,
            }));
        }
    }
    for i in 0..2 {
        s.apply(SyncUpdate::Invited {
            room: &pad(&format!("!inv{i}"), ROOM_ID_LEN),
            inviter: &pad("@", USER_ID_LEN),
        });
    }
    for _ in 0..4 {
        s.send_custom(
            &pad("!", ROOM_ID_LEN),
            &pad("t", EVENT_TYPE_LEN),
            &[0xff; lowband_device::outbox::OUT_BODY_LEN],
        )
        .expect("room in outbox");
    }
    assert_eq!(s.seen_window().len(), 16);
    s.set_session(&[0xab; lowband_codec::session::CLIENT_EXPORT_LEN]);
    s
}

fn snapshot(s: &State4) -> Vec<u8> {
    let mut buf = vec![0u8; State4::MAX_RECORD_LEN];
    let n = s.save(&mut buf).expect("fits");
    buf.truncate(n);
    buf
}

#[test]
fn full_state_record_fits_the_bound() {
    let s = full_state();
    let rec = snapshot(&s);
    println!(
        "full State4 record: {} bytes (size_of {})",
        rec.len(),
        core::mem::size_of::<State4>()
    );
    println!("State4::MAX_RECORD_LEN = {}", State4::MAX_RECORD_LEN);
    assert!(rec.len() <= State4::MAX_RECORD_LEN, "{}", rec.len());
    // The bound is tight: only small varints (sequence numbers, digests) are below maximum.
    assert!(State4::MAX_RECORD_LEN - rec.len() < 200, "{}", rec.len());
    // Streamed save: the flash record is byte for byte the buffer record (generation 1).
    let mut store = AbStore::new(RamFlash::<8>::new());
    s.save_to(&mut store).expect("streams");
    let f = store.into_inner();
    assert_eq!(f.pages[0][2..6], [1, 0, 0, 0]);
    assert_eq!(f.pages[0][..2], rec[..2]);
    assert_eq!(f.pages[0][6..rec.len() - 4], rec[6..rec.len() - 4]);
    // The padding after the record stays erased.
    assert!(f.pages[0][rec.len()..].iter().all(|&b| b == 0xff));
    // A scratch shorter than the record is refused, never taken for "no state".
    let mut store = AbStore::new(f);
    let mut short = vec![0u8; rec.len() - 1];
    assert_eq!(
        State4::load_from(&mut store, &mut short),
        Err(StoreError::Persist(PersistError::BufferTooSmall))
    );
    let mut exact = vec![0u8; rec.len()];
    let got = State4::load_from(&mut store, &mut exact).expect("loads");
    assert_eq!(got.map(|g| snapshot(&g)), Some(rec.clone()));
    assert!(
        rec.len() > 4000,
        "the full state really is full: {}",
        rec.len()
    );
    // And an empty state is tiny.
    assert!(snapshot(&State4::new(1)).len() < 32);
    // Too small a buffer is an error, not a panic.
    let mut small = vec![0u8; rec.len() - 1];
    assert_eq!(s.save(&mut small), Err(PersistError::BufferTooSmall));
    assert_eq!(s.save(&mut [0u8; 3]), Err(PersistError::BufferTooSmall));
}

#[test]
fn save_restore_roundtrip() {
    let s = full_state();
    let rec = snapshot(&s);
    let (gen, _) = open(&rec, KIND_SYNC_STATE).expect("valid");
    assert_eq!(gen, 0);
    let r = State4::restore(&rec).expect("restores");
    assert_eq!(snapshot(&r), rec);
    assert_eq!(r.since(), s.since());
    assert_eq!(r.outgoing(), s.outgoing());
    assert_eq!(r.rooms().len(), 4);
    // Short numbers are session-local: not restored.
    assert!(r.rooms().iter().all(|x| x.short().is_none()));
    assert!(s.rooms().iter().all(|x| x.short().is_some()));
    assert_eq!(r.unread(), s.unread());
}

#[test]
fn restore_rejects_corruption_and_smaller_capacities() {
    let rec = snapshot(&full_state());
    for i in [0, 1, 5, 7, HEADER_LEN, rec.len() / 2, rec.len() - 1] {
        let mut bad = rec.clone();
        bad[i] ^= 0x10;
        assert!(State4::restore(&bad).is_err(), "flip at {i}");
    }
    assert!(State4::restore(&rec[..rec.len() - 1]).is_err());
    // A reader built with fewer rooms refuses (checksum fine, payload does not fit).
    type Small = SyncState<2, 4, 2, 4, 16>;
    assert_eq!(Small::restore(&rec).err(), Some(PersistError::Decode));
    // In place: an error leaves an empty state, not a half-restored one.
    let mut small = Small::new(3);
    small.apply(SyncUpdate::Since("keep?"));
    assert_eq!(small.restore_into(&rec), Err(PersistError::Decode));
    assert_eq!(small.since(), None);
    assert!(small.rooms().is_empty());
    assert_eq!(small.send_text("!a:x", "x"), Err(SendError::NotBooted));
    assert_eq!(small.begin_boot(1), Ok(()));
    // Same when the record itself is bad (empty input, erased flash).
    for bad in [&[][..], &[0xff; 32][..]] {
        let mut s = State4::new(3);
        s.apply(SyncUpdate::Since("keep?"));
        assert!(s.restore_into(bad).is_err());
        assert_eq!(s.since(), None);
    }
    assert_eq!(
        State4::restore(&[0xff; 64]).err(),
        Some(PersistError::BadVersion)
    );
}

#[test]
fn outbox_survives_reboot_with_same_txn_ids() {
    let mut flash = AbStore::new(RamFlash::<1>::new());
    let mut boots = AbStore::new(RamFlash::<1>::new());
    let mut scratch = vec![0u8; State4::MAX_RECORD_LEN];

    // Boot 1.
    let b1 = BootCounter::advance(&mut boots, 0).expect("boot 1");
    assert_eq!(b1.get(), 1);
    let mut s = State4::new(b1.get());
    s.apply(SyncUpdate::Joined {
        room: "!a:x",
        short: None,
    });
    s.apply(ev("!a:x", "$1", "set led on"));
    s.apply(SyncUpdate::Since("s9"));
    let t0 = s.send_text("!a:x", "t=21.5").expect("t0");
    let t1 = s.send_text("!a:x", "t=21.6").expect("t1");
    let (_, e) = s.next_event().expect("cmd");
    assert_eq!(e.body(), Some("set led on"));
    s.save_to(&mut flash).expect("saved");
    // t0 was sent and acknowledged, t2 queued, but power fails before the next save.
    assert!(s.acknowledge(t0));
    let lost = s.send_text("!a:x", "t=21.7").expect("lost");
    drop(s);

    // Boot 2: restore, advance the counter above what the state used, resend.
    let mut r = State4::load_from(&mut flash, &mut scratch)
        .expect("flash ok")
        .expect("a state");
    assert_eq!(r.send_text("!a:x", "x"), Err(SendError::NotBooted));
    let b2 = BootCounter::advance(&mut boots, r.boot()).expect("boot 2");
    assert_eq!(b2.get(), 2);
    assert_eq!(r.begin_boot(1), Err(BootError::NotIncreasing));
    r.begin_boot(b2.get()).expect("increasing");
    assert_eq!(r.since(), Some("s9"));
    // Same pending ids as before the reboot (t0 resent too: the server dedupes it).
    let pending: Vec<TxnId> = r.outgoing().iter().map(|o| o.txn).collect();
    assert_eq!(pending, [t0, t1]);
    // The already-read command is not handed out again.
    assert!(r.next_event().is_none());
    // New sends get new ids, never the one lost with the unsaved send.
    let n0 = r.send_text("!a:x", "t=21.8").expect("n0");
    assert_eq!(n0.to_text().as_str(), "d2.0");
    assert_ne!(n0, lost);
    assert!(![t0, t1, lost].contains(&n0));
}

#[test]
fn torn_write_falls_back_to_previous_page() {
    let mut scratch = vec![0u8; State4::MAX_RECORD_LEN];
    let mut a = State4::new(1);
    a.apply(SyncUpdate::Since("old"));
    let mut b = full_state();
    b.apply(SyncUpdate::Since("new"));
    let rec_len = snapshot(&b).len();

    let mut cuts: Vec<usize> = vec![0, 1, HEADER_LEN, rec_len - TRAILER_LEN, rec_len - 1];
    cuts.extend((1..rec_len).step_by(97));
    for cut in cuts {
        let mut store = AbStore::new(RamFlash::<4>::new());
        a.save_to(&mut store).expect("first save");
        store.flash_mut().cut_after = Some(cut);
        assert_eq!(
            b.save_to(&mut store),
            Err(StoreError::Flash(PowerCut)),
            "cut {cut}"
        );
        // After the "reboot" a fresh store scans both pages.
        let mut store = AbStore::new(store.into_inner());
        let got = State4::load_from(&mut store, &mut scratch)
            .expect("flash ok")
            .expect("previous page valid");
        assert_eq!(got.since(), Some("old"), "cut {cut}");
        // The next save goes to the torn page, not over the good one.
        b.save_to(&mut store).expect("retry");
        let mut store = AbStore::new(store.into_inner());
        let got = State4::load_from(&mut store, &mut scratch)
            .expect("flash ok")
            .expect("new page");
        assert_eq!(got.since(), Some("new"));
        assert_eq!(got.rooms().len(), 4);
    }
}

#[test]
fn ab_pages_alternate_and_newest_wins() {
    let mut scratch = vec![0u8; State4::MAX_RECORD_LEN];
    let mut store = AbStore::new(RamFlash::<1>::new());
    assert_eq!(
        State4::load_from(&mut store, &mut scratch).expect("ok"),
        None
    );
    let mut s = State4::new(1);
    for i in 0..5 {
        let tok = format!("s{i}");
        s.apply(SyncUpdate::Since(&tok));
        s.save_to(&mut store).expect("save");
    }
    let found = store.newest(KIND_SYNC_STATE).expect("ok").expect("found");
    assert_eq!((found.page, found.generation), (Page::A, 5));
    assert_eq!(found.len, snapshot(&s).len());
    let f = store.into_inner();
    assert_eq!(f.erases, 5);
    // Generations 1..5 alternate A, B, A, B, A.
    assert_eq!(open(&f.pages[0], KIND_SYNC_STATE).map(|(g, _)| g), Ok(5));
    assert_eq!(open(&f.pages[1], KIND_SYNC_STATE).map(|(g, _)| g), Ok(4));
    // Memory-mapped flash: restore straight from the page, no scratch.
    let mapped = State4::restore(&f.pages[0]).expect("valid");
    assert_eq!(mapped.since(), Some("s4"));
    // Corrupt the newest page: the older one is used.
    let mut f = f;
    f.pages[0][12] ^= 1;
    let mut store = AbStore::new(f);
    let got = State4::load_from(&mut store, &mut scratch).expect("ok");
    assert_eq!(
        got.and_then(|g| g.since().map(str::to_string)),
        Some("s3".into())
    );
    // A boot-counter record is not a state, and vice versa.
    let mut f = store.into_inner();
    f.pages = [vec![0xff; PAGE], vec![0xff; PAGE]];
    let mut store = AbStore::new(f);
    BootCounter::advance(&mut store, 0).expect("ok");
    assert_eq!(
        State4::load_from(&mut store, &mut scratch).expect("ok"),
        None
    );
}

#[test]
fn write_size_must_divide_the_chunk() {
    let mut store = AbStore::new(RamFlash::<3>::new());
    assert_eq!(
        State4::new(1).save_to(&mut store),
        Err(StoreError::Persist(PersistError::WriteSize))
    );
    let mut store = AbStore::new(RamFlash::<64>::new());
    State4::new(1).save_to(&mut store).expect("64 divides 64");
    assert_eq!(
        store.store_stream(KIND_SYNC_STATE, 3, |w| w.push(b"ab")),
        Err(StoreError::Persist(PersistError::BufferTooSmall)),
        "announced length not met: not sealed"
    );
    assert_eq!(
        store.store_bytes(KIND_SYNC_STATE, &vec![0; PAGE]),
        Err(StoreError::Persist(PersistError::PageTooSmall))
    );
}

#[test]
fn boot_counter_persists_before_use_and_respects_floor() {
    let mut store = AbStore::new(RamFlash::<1>::new());
    let mut seen = vec![];
    for _ in 0..3 {
        seen.push(BootCounter::advance(&mut store, 0).expect("ok").get());
    }
    assert_eq!(seen, [1, 2, 3]);
    // Floor from a restored state that went further (counter pages lost or older).
    assert_eq!(
        BootCounter::advance(&mut store, 10).map(|b| b.get()),
        Ok(11)
    );
    // A power cut while persisting: no number is handed out.
    for cut in 0..16 {
        store.flash_mut().cut_after = Some(cut);
        assert_eq!(
            BootCounter::advance(&mut store, 0),
            Err(StoreError::Flash(PowerCut))
        );
        store = AbStore::new(store.into_inner());
    }
    assert_eq!(BootCounter::advance(&mut store, 0).map(|b| b.get()), Ok(12));
    // Lost counter pages: start over only above the floor.
    let mut fresh = AbStore::new(RamFlash::<1>::new());
    assert_eq!(
        BootCounter::advance(&mut fresh, 12).map(|b| b.get()),
        Ok(13)
    );
    assert_eq!(
        BootCounter::advance(&mut fresh, u32::MAX),
        Err(StoreError::Persist(PersistError::Exhausted))
    );
}
