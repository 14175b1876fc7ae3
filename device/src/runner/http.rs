//! The polling profile's HTTP mapping (feature `http`): requests as lowband routes with packed
//! JSON bodies, `/sync` polled and read from its packed CBOR body.

use super::*;
use crate::state::Applied;
use lowband_codec::cbor::{Item, Reader};
use lowband_codec::coap::BlockOpt;
use lowband_codec::route;

impl<R: RngCore + CryptoRng> Runner<R> {
    /// A response to a polled `/sync` (or one of its blocks); `true` if the state changed.
    pub(super) fn on_sync_response(
        &mut self,
        now: u64,
        r: &Resp,
        pending: Pending,
        inflate: &mut [u8],
    ) -> bool {
        let retry_at = now + self.sync_interval_ms.max(1000);
        let status = lb::code_to_status(r.code, r.status);
        let (Pending::Sync { initial, .. } | Pending::Block { initial, .. }) = pending else {
            return false;
        };
        {
            if !(200..300).contains(&status) {
                self.stats.failures += 1;
                self.sync_due = retry_at;
                return false;
            }
            let offset = match pending {
                Pending::Block { .. } => self.body_len,
                _ => 0,
            };
            let end = offset + r.payload_len;
            let src = self
                .scratch
                .get(r.payload_off..r.payload_off + r.payload_len);
            match (src, self.body.get_mut(offset..end)) {
                (Some(src), Some(dst)) => dst.copy_from_slice(src),
                _ => {
                    self.stats.failures += 1;
                    self.sync_due = retry_at;
                    return false;
                }
            }
            self.body_len = end;
            let id = match pending {
                Pending::Block { id, .. } => Some(id),
                _ => r.body_id,
            };
            if let (Some(id), Some(b)) = (id, r.block2) {
                if b.more {
                    let next = BlockOpt::new(b.num + 1, false, b.szx);
                    if self.request_block(now, id, next, initial).is_err() {
                        self.stats.failures += 1;
                        self.sync_due = retry_at;
                    }
                    return false;
                }
            }
            let (ok, stored) = self.apply_sync_body(initial, inflate);
            self.sync_due = if ok {
                self.since_advanced = true;
                if self.push_refresh_ms.is_some() {
                    // Pushed sync from here on: register right away.
                    now
                } else {
                    now + self.sync_interval_ms
                }
            } else {
                retry_at
            };
            stored
        }
    }

    /// Sends the next outbox entry through the HTTP mapping.
    pub(super) fn queue_send_http(&mut self, now: u64, slot: u8) {
        let Some(out) = self.state.next_outgoing() else {
            return;
        };
        let txn = out.txn;
        let mut target = [0u8; 112];
        let mut path: Text<160> = Text::new();
        let mut json: Text<224> = Text::new();
        let mut body = [0u8; 112];
        let (method, body_len) = match &out.cmd {
            Command::Message {
                room,
                kind,
                content,
            } => {
                for part in [
                    "/_matrix/client/v3/rooms/",
                    room.as_str(),
                    "/send/",
                    kind.as_str(),
                    "/",
                    txn.to_text().as_str(),
                ] {
                    // As write! did: stop at the first piece that does not fit.
                    if path.write_str(part).is_err() {
                        break;
                    }
                }
                let n = match content {
                    OutContent::Text(t) => {
                        let _ = json.write_str(r#"{"msgtype":"m.text","body":""#);
                        let ok = write_json_str(&mut json, t.as_str()).is_ok()
                            && json.write_str("\"}").is_ok();
                        if !ok {
                            self.drop_unsendable(txn);
                            return;
                        }
                        pack::pack(json.as_str().as_bytes(), &mut body)
                    }
                    OutContent::Cbor(c) => match body.get_mut(..c.len()) {
                        // The content is already CBOR: the packed form of JSON is CBOR.
                        Some(dst) => {
                            dst.copy_from_slice(c.as_slice());
                            Ok(c.len())
                        }
                        None => Err(pack::Error::Cbor(
                            lowband_codec::cbor::Error::BufferTooSmall,
                        )),
                    },
                };
                ("PUT", n)
            }
            Command::Join { room } => {
                let _ = path
                    .write_str("/_matrix/client/v3/join/")
                    .and_then(|()| path.write_str(room.as_str()));
                ("POST", pack::pack(b"{}", &mut body))
            }
            Command::Leave { room } => {
                let _ = path
                    .write_str("/_matrix/client/v3/rooms/")
                    .and_then(|()| path.write_str(room.as_str()))
                    .and_then(|()| path.write_str("/leave"));
                ("POST", pack::pack(b"{}", &mut body))
            }
            Command::Typing { .. } => {
                // Needs the device's user id in the path; not sent over the lowband link.
                self.drop_unsendable(txn);
                return;
            }
        };
        let Ok(body_len) = body_len else {
            self.drop_unsendable(txn);
            return;
        };
        let tn = {
            let mut session: heapless::Vec<&str, ALIASES> = heapless::Vec::new();
            for (t, _) in &self.aliases {
                // INVARIANT: both vectors hold ALIASES entries at most.
                let _ = session.push(t.as_str());
            }
            route::encode_target_with(&session, method, path.as_str(), &mut target)
        };
        let Ok(tn) = tn else {
            self.drop_unsendable(txn);
            return;
        };
        // Define the room's alias with the request until the gateway answered one that did.
        let mut def = [0u8; 1 + ROOM_ID_LEN];
        let mut def_len = 0;
        let mut alias = None;
        {
            let i = slot;
            let (t, acked) = &self.aliases[usize::from(i)];
            if !acked {
                def[0] = i;
                def[1..1 + t.len()].copy_from_slice(t.as_str().as_bytes());
                def_len = 1 + t.len();
                alias = Some(i);
            }
        }
        let registered = !self.token_acked;
        let mut auth = [0u8; 1 + TOKEN_LEN];
        let an = self.auth().write(&mut auth).unwrap_or(0);
        let mut opts: heapless::Vec<Opt<'_>, 4> = heapless::Vec::new();
        // INVARIANT: at most 4 options pushed into a vector of 4.
        let _ = opts.push(Opt::bytes(opt::AUTH, &auth[..an]));
        if alias.is_some() {
            let _ = opts.push(Opt::bytes(opt::ALIAS, &def[..def_len]));
        }
        if registered && SMALL {
            let _ = opts.push(Opt::uint(opt::SMALL, u32::from(BLOCK_SZX)));
        }
        let _ = opts.push(Opt::bytes(opt::TARGET, &target[..tn]));
        let req = Request::con(Code::POST, Options::List(&opts), &body[..body_len]);
        match self.client.request(now, req) {
            Ok(h) => {
                self.send = Some((
                    h,
                    Pending::Send {
                        txn,
                        registered,
                        alias,
                    },
                ))
            }
            Err(lowband_codec::coap::SendError::TooBig) => self.drop_unsendable(txn),
            Err(_) => {} // no free slot: next poll
        }
    }

    pub(super) fn queue_sync(&mut self, now: u64) -> Result<(), ()> {
        let mut pq: Text<200> = Text::new();
        let initial = self.state.since().is_none();
        // Query items only when they are not the defaults (timeout 0, no filter).
        pq.write_str("/_matrix/client/v3/sync").map_err(|_| ())?;
        let mut sep = "?";
        if self.sync_timeout_ms > 0 {
            pq.write_str(sep).map_err(|_| ())?;
            pq.write_str("timeout=").map_err(|_| ())?;
            pq.push_u32(self.sync_timeout_ms).map_err(|_| ())?;
            sep = "&";
        }
        if !self.filter.is_empty() {
            pq.write_str(sep).map_err(|_| ())?;
            pq.write_str("filter=").map_err(|_| ())?;
            write_query_value(&mut pq, self.filter.as_str())?;
            sep = "&";
        }
        if let Some(since) = self.state.since() {
            pq.write_str(sep).map_err(|_| ())?;
            pq.write_str("since=").map_err(|_| ())?;
            write_query_value(&mut pq, since)?;
        }
        let mut target = [0u8; 112];
        let tn = route::encode_target("GET", pq.as_str(), &mut target).map_err(|_| ())?;
        let registered = !self.token_acked;
        let mut auth = [0u8; 1 + TOKEN_LEN];
        let an = self.auth().write(&mut auth).map_err(|_| ())?;
        let small = [
            Opt::bytes(opt::AUTH, &auth[..an]),
            Opt::uint(opt::SMALL, u32::from(BLOCK_SZX)),
            Opt::bytes(opt::TARGET, &target[..tn]),
        ];
        let opts: &[Opt<'_>] = if registered && SMALL {
            &small
        } else {
            &[small[0], small[2]]
        };
        let mut req = Request::con(Code::POST, Options::List(opts), &[]);
        // The homeserver holds the request up to the sync timeout: wait for it and then some.
        req.timeout = Some(u64::from(self.sync_timeout_ms) + 60_000);
        let h = self.client.request(now, req).map_err(|_| ())?;
        self.body_len = 0;
        self.sync = Some((
            h,
            Pending::Sync {
                initial,
                registered,
            },
        ));
        Ok(())
    }

    pub(super) fn request_block(
        &mut self,
        now: u64,
        id: u32,
        block: BlockOpt,
        initial: bool,
    ) -> Result<(), ()> {
        let opts = [
            Opt::uint(opt::BLOCK2, block.to_uint()),
            Opt::uint(opt::BODY, id),
        ];
        let req = Request::con(Code::POST, Options::List(&opts), &[]);
        let h = self.client.request(now, req).map_err(|_| ())?;
        self.sync = Some((h, Pending::Block { id, initial }));
        Ok(())
    }

    /// Reads the reassembled sync body into [`SyncUpdate`]s; `true` if anything was applied.
    /// Reads the reassembled sync body into [`SyncUpdate`]s: (read whole and committed,
    /// anything besides the since token stored or updated).
    pub(super) fn apply_sync_body(&mut self, initial: bool, inflate: &mut [u8]) -> (bool, bool) {
        let packed = &self.body[..self.body_len];
        let Ok(cbor) = pack::unpack_cbor(packed, inflate) else {
            self.stats.failures += 1;
            return (false, false);
        };
        let mut stored = false;
        let mut sink = |u: SyncUpdate<'_>| {
            let since = matches!(u, SyncUpdate::Since(_));
            let a = self.state.apply(u);
            stored |= !since && matches!(a, Applied::Stored | Applied::Updated);
        };
        let r = read_sync(cbor, initial, &mut sink);
        match r {
            Ok(()) => self.stats.syncs += 1,
            // Items before the error went in, but no `Since`: the batch is not committed and
            // the same sync is asked again.
            Err(_) => self.stats.failures += 1,
        }
        (r.is_ok(), stored)
    }
}

/// Writes `s` as the inside of a JSON string.
fn write_json_str<const N: usize>(out: &mut Text<N>, s: &str) -> core::fmt::Result {
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            // INVARIANT: c < 0x20 fits a byte.
            c if (c as u32) < 0x20 => {
                out.write_str("\\u00")?;
                out.push_hex2(c as u8, false)?
            }
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Writes `s` percent-encoded for a query value (RFC 3986 §2: all but unreserved).
fn write_query_value<const N: usize>(out: &mut Text<N>, s: &str) -> Result<(), ()> {
    for b in s.bytes() {
        let ok = if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.write_char(char::from(b))
        } else {
            out.write_str("%").and_then(|()| out.push_hex2(b, true))
        };
        ok.map_err(|_| ())?;
    }
    Ok(())
}

/// Why a sync body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReadError {
    /// The CBOR is malformed or not shaped like a sync response.
    Malformed,
    /// No `next_batch`.
    NoNextBatch,
}

impl From<lowband_codec::cbor::Error> for SyncReadError {
    fn from(_: lowband_codec::cbor::Error) -> Self {
        SyncReadError::Malformed
    }
}

fn map_len(it: Item<'_>) -> Result<u64, SyncReadError> {
    match it {
        Item::Map(Some(n)) => Ok(n),
        _ => Err(SyncReadError::Malformed),
    }
}

fn key<'a>(r: &mut Reader<'a>) -> Result<&'a str, SyncReadError> {
    match r.next_key()? {
        Item::Text(t) => Ok(t),
        _ => Err(SyncReadError::Malformed),
    }
}

/// A text value, or a base64-carried string (event ids) written out into `buf`.
fn text_value<'a>(it: Item<'a>, buf: &'a mut [u8]) -> Option<&'a str> {
    match it {
        Item::Text(t) => Some(t),
        Item::Base64(b) => {
            let n = b.write(buf).ok()?;
            core::str::from_utf8(&buf[..n]).ok()
        }
        _ => None,
    }
}

/// Reads a Matrix `/sync` response (packed CBOR, the gateway's static dictionary) into
/// [`SyncUpdate`]s: `Reset` first for an initial sync, then per joined room `Joined`, its
/// timeline events (with `Echo` for our own transaction ids) and `Unread`; invites; left rooms;
/// `Since(next_batch)` last. Allocation-free: strings are borrowed from `cbor`, event ids
/// carried as base64 are written out into a stack buffer.
///
/// # Errors
///
/// [`SyncReadError`] when the body is not a sync response; items before the error were emitted
/// (without `Since`, so the batch does not commit).
pub fn read_sync(
    cbor: &[u8],
    initial: bool,
    sink: &mut dyn FnMut(SyncUpdate<'_>),
) -> Result<(), SyncReadError> {
    let mut r = Reader::new(cbor);
    let n = map_len(r.next_value()?)?;
    if initial {
        sink(SyncUpdate::Reset);
    }
    let mut next_batch: Option<&str> = None;
    for _ in 0..n {
        match key(&mut r)? {
            "next_batch" => match r.next_value()? {
                Item::Text(t) => next_batch = Some(t),
                _ => return Err(SyncReadError::Malformed),
            },
            "rooms" => read_rooms(&mut r, sink)?,
            _ => r.skip()?,
        }
    }
    let since = next_batch.ok_or(SyncReadError::NoNextBatch)?;
    sink(SyncUpdate::Since(since));
    Ok(())
}

fn read_rooms(
    r: &mut Reader<'_>,
    sink: &mut dyn FnMut(SyncUpdate<'_>),
) -> Result<(), SyncReadError> {
    let n = map_len(r.next_value()?)?;
    for _ in 0..n {
        let section = key(r)?;
        let rooms = map_len(r.next_value()?)?;
        for _ in 0..rooms {
            let room = key(r)?;
            match section {
                "join" => {
                    sink(SyncUpdate::Joined { room, short: None });
                    read_joined(r, room, sink)?;
                }
                "invite" => read_invite(r, room, sink)?,
                "leave" => {
                    r.skip()?;
                    sink(SyncUpdate::Left {
                        room: RoomRef::Id(room),
                    });
                }
                _ => r.skip()?,
            }
        }
    }
    Ok(())
}

fn read_invite(
    r: &mut Reader<'_>,
    room: &str,
    sink: &mut dyn FnMut(SyncUpdate<'_>),
) -> Result<(), SyncReadError> {
    // invite_state.events: the inviter is the sender of the m.room.member event.
    let mut inviter = None;
    let n = map_len(r.next_value()?)?;
    for _ in 0..n {
        if key(r)? != "invite_state" {
            r.skip()?;
            continue;
        }
        let m = map_len(r.next_value()?)?;
        for _ in 0..m {
            if key(r)? != "events" {
                r.skip()?;
                continue;
            }
            let Item::Array(Some(k)) = r.next_value()? else {
                return Err(SyncReadError::Malformed);
            };
            for _ in 0..k {
                let f = map_len(r.next_value()?)?;
                let (mut kind, mut sender) = (None, None);
                for _ in 0..f {
                    match key(r)? {
                        "type" => kind = text_value(r.next_value()?, &mut []),
                        "sender" => sender = text_value(r.next_value()?, &mut []),
                        _ => r.skip()?,
                    }
                }
                if kind == Some("m.room.member") && sender.is_some() {
                    inviter = sender;
                }
            }
        }
    }
    sink(SyncUpdate::Invited {
        room,
        inviter: inviter.unwrap_or(""),
    });
    Ok(())
}

fn read_joined(
    r: &mut Reader<'_>,
    room: &str,
    sink: &mut dyn FnMut(SyncUpdate<'_>),
) -> Result<(), SyncReadError> {
    let n = map_len(r.next_value()?)?;
    for _ in 0..n {
        match key(r)? {
            "timeline" => {
                let m = map_len(r.next_value()?)?;
                for _ in 0..m {
                    if key(r)? == "events" {
                        let Item::Array(Some(k)) = r.next_value()? else {
                            return Err(SyncReadError::Malformed);
                        };
                        for _ in 0..k {
                            read_event(r, room, sink)?;
                        }
                    } else {
                        r.skip()?;
                    }
                }
            }
            "unread_notifications" => {
                let m = map_len(r.next_value()?)?;
                let (mut highlight, mut notification) = (0u16, 0u16);
                for _ in 0..m {
                    let k = key(r)?;
                    let v = match r.next_value()? {
                        Item::Unsigned(v) => u16::try_from(v).unwrap_or(u16::MAX),
                        _ => 0,
                    };
                    match k {
                        "highlight_count" => highlight = v,
                        "notification_count" => notification = v,
                        _ => {}
                    }
                }
                sink(SyncUpdate::Unread {
                    room: RoomRef::Id(room),
                    highlight,
                    notification,
                });
            }
            _ => r.skip()?,
        }
    }
    Ok(())
}

fn read_event(
    r: &mut Reader<'_>,
    room: &str,
    sink: &mut dyn FnMut(SyncUpdate<'_>),
) -> Result<(), SyncReadError> {
    let n = map_len(r.next_value()?)?;
    let mut id_buf = [0u8; 64];
    let mut id_item: Option<Item<'_>> = None;
    let (mut sender, mut kind, mut msgtype, mut body, mut txn) = (None, None, None, None, None);
    let mut ts = 0u64;
    for _ in 0..n {
        match key(r)? {
            "event_id" => id_item = Some(r.next_value()?),
            "sender" => sender = text_value(r.next_value()?, &mut []),
            "type" => kind = text_value(r.next_value()?, &mut []),
            "origin_server_ts" => {
                if let Item::Unsigned(v) = r.next_value()? {
                    ts = v;
                }
            }
            "content" => {
                let m = map_len(r.next_value()?)?;
                for _ in 0..m {
                    match key(r)? {
                        "msgtype" => msgtype = text_value(r.next_value()?, &mut []),
                        "body" => body = text_value(r.next_value()?, &mut []),
                        _ => r.skip()?,
                    }
                }
            }
            "unsigned" => {
                let m = map_len(r.next_value()?)?;
                for _ in 0..m {
                    match key(r)? {
                        "transaction_id" => txn = text_value(r.next_value()?, &mut []),
                        _ => r.skip()?,
                    }
                }
            }
            _ => r.skip()?,
        }
    }
    let event_id = id_item
        .and_then(|it| text_value(it, &mut id_buf))
        .ok_or(SyncReadError::Malformed)?;
    if let Some(t) = txn {
        sink(SyncUpdate::Echo {
            txn_id: t,
            event_id: Some(event_id),
        });
    }
    let (Some(sender), Some(kind)) = (sender, kind) else {
        return Err(SyncReadError::Malformed);
    };
    sink(SyncUpdate::Event(EventIn {
        room: RoomRef::Id(room),
        event_id,
        sender,
        kind,
        msgtype,
        body: body.map_or(Body::None, Body::Text),
        ts,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate alloc;
    extern crate std;
    use alloc::string::String;
    use alloc::vec::Vec;

    fn collect(cbor: &[u8], initial: bool) -> (Vec<String>, Result<(), SyncReadError>) {
        let mut v = Vec::new();
        let r = read_sync(cbor, initial, &mut |u| v.push(std::format!("{u:?}")));
        (v, r)
    }

    #[test]
    fn reads_a_literal_sync() {
        // {"next_batch":"s1","rooms":{"join":{"!r":{"timeline":{"events":[{"type":"m.room.message",
        //  "sender":"@a","event_id":"$e","content":{"msgtype":"m.text","body":"!status"},
        //  "origin_server_ts":5}]}}}}} as plain CBOR (text keys: no dictionary needed).
        let mut c: Vec<u8> = Vec::new();
        let t = |c: &mut Vec<u8>, s: &str| {
            c.push(0x60 | s.len() as u8);
            c.extend_from_slice(s.as_bytes());
        };
        c.push(0xa2);
        t(&mut c, "next_batch");
        t(&mut c, "s1");
        t(&mut c, "rooms");
        c.push(0xa1);
        t(&mut c, "join");
        c.push(0xa1);
        t(&mut c, "!r");
        c.push(0xa1);
        t(&mut c, "timeline");
        c.push(0xa1);
        t(&mut c, "events");
        c.push(0x81);
        c.push(0xa5);
        t(&mut c, "type");
        t(&mut c, "m.room.message");
        t(&mut c, "sender");
        t(&mut c, "@a");
        t(&mut c, "event_id");
        t(&mut c, "$e");
        t(&mut c, "content");
        c.push(0xa2);
        t(&mut c, "msgtype");
        t(&mut c, "m.text");
        t(&mut c, "body");
        t(&mut c, "!status");
        t(&mut c, "origin_server_ts");
        c.push(0x05);
        assert_eq!(c[..12], *b"\xa2\x6anext_batch".as_slice());
        let (items, r) = collect(&c, true);
        assert_eq!(r, Ok(()));
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[0], "Reset");
        assert!(
            items[1].starts_with("Joined { room: \"!r\""),
            "{}",
            items[1]
        );
        assert!(items[2].contains("body: Text(\"!status\")"), "{}", items[2]);
        assert!(items[2].contains("ts: 5"), "{}", items[2]);
        assert_eq!(items[3], "Since(\"s1\")");
        // Cut anywhere: an error, and never a Since.
        for n in 0..c.len() {
            let (items, r) = collect(&c[..n], false);
            assert!(r.is_err(), "{n}");
            assert!(!items.iter().any(|i| i.starts_with("Since")), "{n}");
        }
        // No next_batch: no commit.
        let (items, r) = collect(&[0xa0], false);
        assert_eq!((items.len(), r), (0, Err(SyncReadError::NoNextBatch)));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        let mut t: Text<64> = Text::new();
        write_query_value(&mut t, "s72_1 {\"a\"}~").unwrap();
        assert_eq!(t.as_str(), "s72_1%20%7B%22a%22%7D~");
        let mut j: Text<64> = Text::new();
        write_json_str(&mut j, "a\"b\\c\n").unwrap();
        assert_eq!(j.as_str(), "a\\\"b\\\\c\\u000a");
    }
}
