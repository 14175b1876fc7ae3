//! Fuzz the device state: restoring arbitrary flash bytes and applying arbitrary sync items
//! and application commands must never panic, and a state must always save and restore.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_device::{Body, DefaultSyncState, EventIn, RoomRef, SyncUpdate, TxnId};

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
    match inp.byte()? % 16 {
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

fuzz_target!(|data: &[u8]| {
    // Arbitrary flash contents: an error or a state, never a panic.
    if let Ok(mut s) = DefaultSyncState::restore(data) {
        let mut buf = vec![0u8; lowband_device::DEFAULT_RECORD_MAX];
        s.save(&mut buf).expect("a restored state saves");
        let _ = s.next_event();
    }
    // Arbitrary sync items and commands.
    let mut s = DefaultSyncState::new(1);
    let mut boot = 1;
    let mut inp = Input(data);
    while step(&mut s, &mut inp, &mut boot).is_some() {}
});
