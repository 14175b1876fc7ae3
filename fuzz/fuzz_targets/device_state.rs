//! Fuzz the device state: restoring arbitrary flash bytes and applying arbitrary sync items
//! and application commands must never panic, and a state must always save and restore.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_device::{
    AbStore, Body, DefaultSyncState, EventIn, Flash, Page, RoomRef, SyncUpdate, TxnId,
};

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.byte()?).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
    fn str(&mut self) -> Option<&'a str> {
        let b = self.bytes()?;
        Some(match core::str::from_utf8(b) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
        })
    }
    fn room(&mut self) -> Option<RoomRef<'a>> {
        Some(if self.byte()? & 1 == 0 {
            RoomRef::Id(self.str()?)
        } else {
            RoomRef::Short(self.u16()?)
        })
    }
}

fn step(s: &mut DefaultSyncState, inp: &mut Input<'_>, boot: &mut u32) -> Option<()> {
    match inp.byte()? % 17 {
        0 => {
            let room = inp.str()?;
            let short = if inp.byte()? & 1 == 1 { Some(inp.u16()?) } else { None };
            s.apply(SyncUpdate::Joined { room, short });
        }
        1 => {
            let room = inp.room()?;
            s.apply(SyncUpdate::Left { room });
        }
        2 => {
            let (room, inviter) = (inp.str()?, inp.str()?);
            s.apply(SyncUpdate::Invited { room, inviter });
        }
        3 | 4 => {
            let room = inp.room()?;
            let event_id = inp.str()?;
            let sender = inp.str()?;
            let kind = inp.str()?;
            let msgtype = if inp.byte()? & 1 == 1 { Some(inp.str()?) } else { None };
            let body = match inp.byte()? % 3 {
                0 => Body::None,
                1 => Body::Text(inp.str()?),
                _ => Body::Cbor(inp.bytes()?),
            };
            let ts = u64::from(inp.u16()?);
            s.apply(SyncUpdate::Event(EventIn { room, event_id, sender, kind, msgtype, body, ts }));
        }
        5 => {
            let room = inp.room()?;
            let (highlight, notification) = (inp.u16()?, inp.u16()?);
            s.apply(SyncUpdate::Unread { room, highlight, notification });
        }
        6 => {
            let txn_id = inp.str()?;
            let event_id = if inp.byte()? & 1 == 1 { Some(inp.str()?) } else { None };
            s.apply(SyncUpdate::Echo { txn_id, event_id });
        }
        7 => {
            s.apply(SyncUpdate::Since(inp.str()?));
        }
        8 => {
            let _ = s.next_event();
        }
        9 => {
            let _ = s.send_text(inp.str()?, inp.str()?);
        }
        10 => {
            let _ = s.send_custom(inp.str()?, inp.str()?, inp.bytes()?);
        }
        11 => {
            let _ = s.join(inp.str()?);
            let _ = s.accept_invite(inp.str()?);
        }
        12 => {
            let _ = s.leave(inp.str()?);
            let _ = s.set_typing(inp.str()?, inp.byte()? & 1 == 1);
        }
        15 => {
            s.apply(SyncUpdate::Reset);
        }
        13 => {
            let i = usize::from(inp.byte()?);
            let t = s.outgoing().get(i % 5).map(|o| o.txn).unwrap_or(TxnId { boot: 0, seq: 0 });
            s.acknowledge(t);
        }
        _ => {
            let mut buf = vec![0u8; lowband_device::DEFAULT_RECORD_MAX];
            let n = s.save(&mut buf).expect("every state fits DEFAULT_RECORD_MAX");
            let mut r = DefaultSyncState::restore(&buf[..n]).expect("own record restores");
            *boot += 1;
            r.begin_boot(*boot).expect("increasing boot");
            *s = r;
        }
    }
    Some(())
}

/// Two flash pages cut from the fuzz input.
struct Pages(Vec<u8>, Vec<u8>);

impl Flash for Pages {
    type Error = ();
    fn page_len(&self) -> usize {
        self.0.len().min(self.1.len())
    }
    fn read(&mut self, p: Page, off: usize, buf: &mut [u8]) -> Result<(), ()> {
        let page = if p == Page::A { &self.0 } else { &self.1 };
        buf.copy_from_slice(page.get(off..off + buf.len()).ok_or(())?);
        Ok(())
    }
    fn erase(&mut self, p: Page) -> Result<(), ()> {
        let page = if p == Page::A { &mut self.0 } else { &mut self.1 };
        page.fill(0xff);
        Ok(())
    }
    fn program(&mut self, p: Page, off: usize, data: &[u8]) -> Result<(), ()> {
        let page = if p == Page::A { &mut self.0 } else { &mut self.1 };
        page.get_mut(off..off + data.len()).ok_or(())?.copy_from_slice(data);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // Arbitrary flash contents: an error or a state, never a panic; in place over a state
    // that already holds something.
    let mut s = DefaultSyncState::new(1);
    s.apply(SyncUpdate::Joined { room: "!a:x", short: Some(1) });
    if s.restore_into(data).is_ok() {
        let mut buf = vec![0u8; lowband_device::DEFAULT_RECORD_MAX];
        s.save(&mut buf).expect("a restored state saves");
        let _ = s.next_event();
    } else {
        assert!(s.rooms().is_empty(), "a failed restore leaves an empty state");
    }
    // The same bytes as two A/B pages: scan, load, then save and load back.
    let half = data.len() / 2;
    let mut store = AbStore::new(Pages(data[..half].to_vec(), data[half..].to_vec()));
    let mut scratch = vec![0u8; lowband_device::DEFAULT_RECORD_MAX];
    if let Ok(found) = s.load_into(&mut store, &mut scratch) {
        if found && s.begin_boot(2).is_ok() && s.save_to(&mut store).is_ok() {
            let mut back = DefaultSyncState::new(0);
            assert_eq!(back.load_into(&mut store, &mut scratch), Ok(true));
        }
    }
    // Arbitrary sync items and commands.
    let mut s = DefaultSyncState::new(1);
    let mut boot = 1;
    let mut inp = Input(data);
    while step(&mut s, &mut inp, &mut boot).is_some() {}
});
