//! The device's Matrix client state: joined rooms with their latest events, invites, the since
//! token and the outbox, all in fixed capacity.
//!
//! # Call protocol
//!
//! * At boot: [`SyncState::load_into`] a `static` state (made with the `const`
//!   [`SyncState::new`]) from flash, in place; advance the [`crate::BootCounter`] with the
//!   state's [`SyncState::boot`] as floor and call [`SyncState::begin_boot`] before sending
//!   anything (see the crate docs for the sequence).
//! * Save ([`SyncState::save_to`], streamed) after every batch commit, after acting on an
//!   event (so it is not handed out again after a reboot) and after every application command
//!   that must survive a reboot.
//! * Input from the gateway: feed every item of a sync result to [`SyncState::apply`], in order,
//!   ending with [`SyncUpdate::Since`], which commits the batch (see below).
//! * Output to the gateway: [`SyncState::next_outgoing`] is the command to (re)send;
//!   [`SyncState::acknowledge`] (or an [`SyncUpdate::Echo`]) removes it once the gateway
//!   confirmed it.
//! * The application reads with [`SyncState::next_event`] and writes with
//!   [`SyncState::send_text`], [`SyncState::send_custom`], [`SyncState::join`], ...
//!
//! # Batches and the since token
//!
//! Items are applied as they arrive (the device has no room to stage a batch), but the since
//! token only advances with the final [`SyncUpdate::Since`] of a batch. A batch cut short by a
//! lost frame or a reboot leaves the old token in place, so the gateway sends the same batch
//! again; replayed items are idempotent: rooms, invites and counts are keyed by room id, events
//! are de-duplicated by event id against the stored events and a window of the last `SEEN`
//! event ids that left storage (evicted, or removed with a left room) or were echoed for own
//! sends. A replayed event is recognised as long as fewer than `SEEN` ids left storage between
//! its own removal and its replay; a gateway whose uncommitted batches carry fewer than `SEEN`
//! events + echoes + `EVENTS` per leave (16 at the defaults) stays within that.
//!
//! # Drop rules (what does not fit; never a panic)
//!
//! * **Rooms**: a `Joined` beyond `ROOMS` is ignored (`counters.rooms_ignored`); a room id longer
//!   than [`ROOM_ID_LEN`] is ignored (`counters.ids_too_long`).
//! * **Events**: events for rooms that are not joined are ignored
//!   (`counters.events_unknown_room`). When a room holds `EVENTS` events, the oldest arrival is
//!   evicted first (`counters.events_evicted`, and `counters.unread_evicted` if the application
//!   had not read it yet). Its id moves to the seen window so a replay does not bring it back.
//! * **Text**: bodies, senders, event types and msgtypes are cut at the last UTF-8 character
//!   boundary that fits and the event is flagged ([`Event::truncated`], per field in
//!   [`Event::flags`]); `counters.texts_truncated` counts such events. CBOR content that does
//!   not fit is dropped whole (a cut CBOR item is useless) with [`flags::BODY_TRUNCATED`].
//! * **Event ids** longer than [`EVENT_ID_LEN`] are replaced by `~` and the 16 hex digits of
//!   their 64-bit FNV-1a digest ([`flags::ID_DIGEST`], `counters.ids_digested`): dedupe still
//!   works, replying to that event does not.
//! * **Invites**: beyond `INVITES`, the oldest invite is dropped (`counters.invites_dropped`);
//!   invites for joined rooms are ignored; a room id that does not fit is ignored.
//! * **Since**: a token longer than [`SINCE_LEN`] cannot be stored usefully: the token is
//!   cleared (the next request is an initial sync, whose replayed events are de-duplicated) and
//!   `counters.since_rejected` counts it.
//! * **Full sync** ([`SyncUpdate::Reset`] ... [`SyncUpdate::Since`]): rooms and invites the
//!   full sync does not mention are forgotten at its commit; while it runs, a room it confirms
//!   takes the slot of one it has not confirmed yet.
//! * **Outgoing**: nothing is cut on the way out: a command that does not fit returns a
//!   [`SendError`].

use serde::{Deserialize, Serialize};

use crate::outbox::{Command, OutContent, Outgoing, SendError, TxnId, OUT_BODY_LEN};
use crate::persist::{Out, PersistError};
use crate::text::{Bytes, Text};
use lowband_codec::session::CLIENT_EXPORT_LEN;

/// Capacity of a room id (`!opaque:server`), bytes.
pub const ROOM_ID_LEN: usize = 48;
/// Capacity of a user id (`@local:server`), bytes.
pub const USER_ID_LEN: usize = 40;
/// Capacity of an event id (`$` + 43 base64 characters in room versions 4+), bytes.
pub const EVENT_ID_LEN: usize = 48;
/// Capacity of an event type (`m.room.message`, custom types), bytes.
pub const EVENT_TYPE_LEN: usize = 24;
/// Capacity of a msgtype (`m.text`, `m.notice`, ...), bytes.
pub const MSGTYPE_LEN: usize = 12;
/// Capacity of a received event body (text or CBOR content), bytes.
pub const BODY_LEN: usize = 80;
/// Capacity of the since token, bytes.
pub const SINCE_LEN: usize = 64;

/// A room id.
pub type RoomId = Text<ROOM_ID_LEN>;
/// A user id (possibly truncated when received; see [`Event::sender_is`]).
pub type UserId = Text<USER_ID_LEN>;
/// An event id (or its digest form, see [`flags::ID_DIGEST`]).
pub type EventId = Text<EVENT_ID_LEN>;
/// An event type.
pub type EventType = Text<EVENT_TYPE_LEN>;

/// Bits of [`Event::flags`].
pub mod flags {
    /// The body holds CBOR content rather than text.
    pub const BODY_CBOR: u8 = 1 << 0;
    /// The body was cut (text) or dropped (CBOR) because it did not fit.
    pub const BODY_TRUNCATED: u8 = 1 << 1;
    /// The sender id was cut: it identifies nobody (see `Event::sender_is`).
    pub const SENDER_TRUNCATED: u8 = 1 << 2;
    /// The event type was cut.
    pub const KIND_TRUNCATED: u8 = 1 << 3;
    /// The msgtype was cut.
    pub const MSGTYPE_TRUNCATED: u8 = 1 << 4;
    /// The event id did not fit and is stored as `~` + 16 hex digits of its FNV-1a-64 digest.
    pub const ID_DIGEST: u8 = 1 << 5;
    /// Any of the truncation bits.
    pub const ANY_TRUNCATED: u8 =
        BODY_TRUNCATED | SENDER_TRUNCATED | KIND_TRUNCATED | MSGTYPE_TRUNCATED;
}

/// A stored room event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    seq: u32,
    ts: u64,
    id: EventId,
    sender: UserId,
    kind: EventType,
    msgtype: Text<MSGTYPE_LEN>,
    body: Bytes<BODY_LEN>,
    flags: u8,
}

impl Event {
    /// Event id (or `~digest`, see [`flags::ID_DIGEST`]).
    pub fn id(&self) -> &str {
        self.id.as_str()
    }
    /// Sender as stored (maybe cut; check [`Event::sender_is`] before trusting it).
    pub fn sender(&self) -> &str {
        self.sender.as_str()
    }
    /// True only if the sender is exactly `user`: false whenever the stored sender was cut, so
    /// a long id sharing a prefix with an authorised one never passes.
    pub fn sender_is(&self, user: &str) -> bool {
        self.flags & flags::SENDER_TRUNCATED == 0 && self.sender.as_str() == user
    }
    /// Event type.
    pub fn kind(&self) -> &str {
        self.kind.as_str()
    }
    /// `content.msgtype`, if the event had one.
    pub fn msgtype(&self) -> Option<&str> {
        (!self.msgtype.is_empty()).then(|| self.msgtype.as_str())
    }
    /// Text body (`content.body`), if the event had one.
    pub fn body(&self) -> Option<&str> {
        if self.flags & flags::BODY_CBOR != 0 || self.body.is_empty() {
            return None;
        }
        core::str::from_utf8(self.body.as_slice()).ok()
    }
    /// Raw CBOR content (custom events), if the gateway passed it through.
    pub fn content_cbor(&self) -> Option<&[u8]> {
        (self.flags & flags::BODY_CBOR != 0 && !self.body.is_empty()).then(|| self.body.as_slice())
    }
    /// `origin_server_ts`, milliseconds since the Unix epoch.
    pub fn ts(&self) -> u64 {
        self.ts
    }
    /// Arrival sequence number (increasing across all rooms).
    pub fn seq(&self) -> u32 {
        self.seq
    }
    /// Bits from [`flags`].
    pub fn flags(&self) -> u8 {
        self.flags
    }
    /// True if any text field was cut or CBOR content dropped.
    pub fn truncated(&self) -> bool {
        self.flags & flags::ANY_TRUNCATED != 0
    }
}

/// A joined room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room<const EVENTS: usize> {
    id: RoomId,
    /// Session-local short number assigned by the gateway; not persisted (a new session
    /// assigns new ones).
    short: Option<u16>,
    highlight: u16,
    notification: u16,
    /// Events with `seq > read` have not been returned by `next_event` yet.
    read: u32,
    events: heapless::Vec<Event, EVENTS>,
    /// Not (yet) confirmed by the full sync after a [`SyncUpdate::Reset`]; not persisted.
    stale: bool,
}

impl<const EVENTS: usize> Room<EVENTS> {
    /// Room id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }
    /// Short number assigned by the gateway in this session.
    pub fn short(&self) -> Option<u16> {
        self.short
    }
    /// Highlight count (`unread_notifications.highlight_count`).
    pub fn highlight(&self) -> u16 {
        self.highlight
    }
    /// Notification count (`unread_notifications.notification_count`).
    pub fn notification(&self) -> u16 {
        self.notification
    }
    /// Stored events, oldest arrival first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
    /// Number of stored events not yet returned by `next_event`.
    pub fn unread(&self) -> usize {
        self.events.iter().filter(|e| e.seq > self.read).count()
    }
}

/// A pending invite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    room: RoomId,
    inviter: UserId,
    inviter_truncated: bool,
    /// As for rooms: not confirmed since a [`SyncUpdate::Reset`]; not persisted.
    #[serde(skip)]
    stale: bool,
}

impl Invite {
    /// Room id.
    pub fn room(&self) -> &str {
        self.room.as_str()
    }
    /// Inviter as stored (maybe cut).
    pub fn inviter(&self) -> &str {
        self.inviter.as_str()
    }
    /// True only if the inviter is exactly `user` (false if the stored id was cut).
    pub fn inviter_is(&self, user: &str) -> bool {
        !self.inviter_truncated && self.inviter.as_str() == user
    }
}

/// How [`SyncUpdate`] items name a room: by id, or by the short number the gateway assigned
/// with [`SyncUpdate::Joined`] in this session (saves bytes on the link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomRef<'a> {
    /// Full room id.
    Id(&'a str),
    /// Session-local short number.
    Short(u16),
}

/// Content of an incoming event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// No content the device keeps.
    None,
    /// `content.body` text.
    Text(&'a str),
    /// The whole content as CBOR (custom event types).
    Cbor(&'a [u8]),
}

/// An incoming room event, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventIn<'a> {
    /// Room.
    pub room: RoomRef<'a>,
    /// Event id.
    pub event_id: &'a str,
    /// Sender user id.
    pub sender: &'a str,
    /// Event type.
    pub kind: &'a str,
    /// `content.msgtype`.
    pub msgtype: Option<&'a str>,
    /// Content.
    pub body: Body<'a>,
    /// `origin_server_ts`.
    pub ts: u64,
}

/// One item of a sync result from the gateway; borrowed, so a reader can feed items straight
/// from its receive buffer. The wire format is the reader's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncUpdate<'a> {
    /// The device is joined to `room`; `short` is its session-local number, if any.
    Joined {
        /// Room id.
        room: &'a str,
        /// Short number.
        short: Option<u16>,
    },
    /// The device left (or was removed from, or declined the invite to) `room`.
    Left {
        /// Room.
        room: RoomRef<'a>,
    },
    /// An invite.
    Invited {
        /// Room id.
        room: &'a str,
        /// Inviting user.
        inviter: &'a str,
    },
    /// A timeline event.
    Event(EventIn<'a>),
    /// Unread notification counts.
    Unread {
        /// Room.
        room: RoomRef<'a>,
        /// `highlight_count`.
        highlight: u16,
        /// `notification_count`.
        notification: u16,
    },
    /// The gateway confirmed the outbox entry `txn_id`; `event_id` is the id the homeserver gave
    /// a sent message (its echo in the timeline is then dropped as a duplicate).
    Echo {
        /// Textual transaction id (`d{boot}.{seq}`).
        txn_id: &'a str,
        /// Event id of the sent event, if any.
        event_id: Option<&'a str>,
    },
    /// End of batch: commit, the since token for the next request.
    Since(&'a str),
    /// The batch that follows is a full (initial) sync, not a delta: rooms and invites it does
    /// not mention before its [`SyncUpdate::Since`] are forgotten at the commit. The gateway
    /// sends it first in a batch answering a request without a since token.
    Reset,
}

/// What [`SyncState::apply`] did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// New item stored.
    Stored,
    /// Existing item updated.
    Updated,
    /// Already known (replay); nothing changed.
    Duplicate,
    /// The batch was committed: the since token advanced.
    Committed,
    /// Dropped by a drop rule.
    Ignored(Ignored),
}

/// Why an item was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The room is not joined.
    UnknownRoom,
    /// No room slot left.
    RoomsFull,
    /// The room id does not fit its capacity.
    IdTooLong,
    /// Invite for a room already joined.
    AlreadyJoined,
    /// Echo for a transaction id not in the outbox (already acknowledged) or not ours.
    UnknownTxn,
    /// Since token too long: cleared.
    SinceTooLong,
}

/// Saturating counters of what the drop rules dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `Joined` items ignored for lack of room slots.
    pub rooms_ignored: u16,
    /// Room ids too long to store (rooms and invites ignored).
    pub ids_too_long: u16,
    /// Events evicted from full rooms.
    pub events_evicted: u16,
    /// Of those, events the application had not read.
    pub unread_evicted: u16,
    /// Events for rooms not joined.
    pub events_unknown_room: u16,
    /// Events with a cut text field or dropped CBOR content.
    pub texts_truncated: u16,
    /// Event ids replaced by their digest.
    pub ids_digested: u16,
    /// Invites dropped (oldest first) for lack of slots.
    pub invites_dropped: u16,
    /// Since tokens too long to store.
    pub since_rejected: u16,
}

impl Counters {
    /// All zero.
    pub const ZERO: Self = Self {
        rooms_ignored: 0,
        ids_too_long: 0,
        events_evicted: 0,
        unread_evicted: 0,
        events_unknown_room: 0,
        texts_truncated: 0,
        ids_digested: 0,
        invites_dropped: 0,
        since_rejected: 0,
    };
}

/// One postcard item off the front of `p`.
fn take<'a, T: Deserialize<'a>>(p: &mut &'a [u8]) -> Result<T, PersistError> {
    let (v, rest) = postcard::take_from_bytes(p).map_err(|_| PersistError::Decode)?;
    *p = rest;
    Ok(v)
}

fn bump(c: &mut u16) {
    *c = c.saturating_add(1);
}

/// Why [`SyncState::begin_boot`] refused a boot number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The boot number is not greater than the one this state last used: transaction ids
    /// could repeat.
    NotIncreasing,
}

/// 64-bit FNV-1a, used for event id digests (dedupe window, over-long ids). Not a MAC: event ids
/// are chosen by homeservers, not by room members.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn event_id_of(id: &str) -> (EventId, bool) {
    if let Some(t) = Text::exact(id) {
        return (t, false);
    }
    let mut t = EventId::new();
    // INVARIANT: 17 bytes fit EVENT_ID_LEN (48).
    let _ = core::fmt::Write::write_str(&mut t, "~");
    for b in fnv1a64(id.as_bytes()).to_be_bytes() {
        let _ = t.push_hex2(b, false);
    }
    (t, true)
}

/// The sync state. Capacities: `ROOMS` joined rooms, `EVENTS` latest events per room,
/// `INVITES` pending invites, `OUTBOX` pending commands, `SEEN` digests of evicted or echoed
/// event ids kept for dedupe. See the module docs for the call protocol and drop rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncState<
    const ROOMS: usize,
    const EVENTS: usize,
    const INVITES: usize,
    const OUTBOX: usize,
    const SEEN: usize,
> {
    since: Option<Text<SINCE_LEN>>,
    rooms: heapless::Vec<Room<EVENTS>, ROOMS>,
    invites: heapless::Vec<Invite, INVITES>,
    outbox: heapless::Vec<Outgoing, OUTBOX>,
    seen: heapless::Vec<u64, SEEN>,
    next_seq: u32,
    boot: u32,
    txn_seq: u32,
    counters: Counters,
    /// Number of the last pushed sync item applied ([`lowband_codec::lb::dev`]); persisted so a
    /// reboot neither loses nor repeats an item.
    push_seq: u32,
    /// The link session as [`lowband_codec::session::Client::export`] wrote it (empty: none),
    /// so that a reboot resumes it without a handshake. Holds secret keys, like the flash
    /// page of the device key.
    session: Bytes<CLIENT_EXPORT_LEN>,
    /// Set by `new`/`begin_boot` in this run; a restored state must begin a boot before it
    /// hands out transaction ids.
    booted: bool,
}

impl<
        const ROOMS: usize,
        const EVENTS: usize,
        const INVITES: usize,
        const OUTBOX: usize,
        const SEEN: usize,
    > SyncState<ROOMS, EVENTS, INVITES, OUTBOX, SEEN>
{
    /// Fresh state for boot number `boot` (from [`crate::BootCounter::advance`]). `const`, so
    /// a firmware can place the state in a `static` and restore into it in place
    /// ([`SyncState::restore_into`]).
    pub const fn new(boot: u32) -> Self {
        Self {
            since: None,
            rooms: heapless::Vec::new(),
            invites: heapless::Vec::new(),
            outbox: heapless::Vec::new(),
            seen: heapless::Vec::new(),
            next_seq: 1,
            boot,
            txn_seq: 0,
            counters: Counters::ZERO,
            push_seq: 0,
            session: Bytes::new(),
            booted: true,
        }
    }

    /// [`Self::new`] written field by field into `p`: no state-sized temporary on the stack
    /// (a by-value `new` costs a 5 KiB stack frame on thumbv7m at opt-level z).
    ///
    /// # Safety
    ///
    /// `p` is valid for writes of `Self` and aligned; its old contents are not dropped.
    pub(crate) unsafe fn init_at(p: *mut Self, boot: u32) {
        // SAFETY: the caller's contract; each field is written once through its own pointer.
        unsafe {
            core::ptr::addr_of_mut!((*p).since).write(None);
            core::ptr::addr_of_mut!((*p).rooms).write(heapless::Vec::new());
            core::ptr::addr_of_mut!((*p).invites).write(heapless::Vec::new());
            core::ptr::addr_of_mut!((*p).outbox).write(heapless::Vec::new());
            core::ptr::addr_of_mut!((*p).seen).write(heapless::Vec::new());
            core::ptr::addr_of_mut!((*p).next_seq).write(1);
            core::ptr::addr_of_mut!((*p).boot).write(boot);
            core::ptr::addr_of_mut!((*p).txn_seq).write(0);
            core::ptr::addr_of_mut!((*p).counters).write(Counters::ZERO);
            core::ptr::addr_of_mut!((*p).push_seq).write(0);
            core::ptr::addr_of_mut!((*p).session).write(Bytes::new());
            core::ptr::addr_of_mut!((*p).booted).write(true);
        }
    }

    /// Fails to compile when a field is added to [`SyncState`] and not to
    /// [`SyncState::init_at`].
    #[allow(dead_code)]
    fn fields_check(self) {
        let SyncState {
            since: _,
            rooms: _,
            invites: _,
            outbox: _,
            seen: _,
            next_seq: _,
            boot: _,
            txn_seq: _,
            counters: _,
            push_seq: _,
            session: _,
            booted: _,
        } = self;
    }

    /// Empty everything in place (no temporary copy of the state on the stack).
    pub(crate) fn clear(&mut self, boot: u32) {
        self.since = None;
        self.rooms.clear();
        self.invites.clear();
        self.outbox.clear();
        self.seen.clear();
        self.next_seq = 1;
        self.boot = boot;
        self.txn_seq = 0;
        self.counters = Counters::ZERO;
        self.push_seq = 0;
        self.session = Bytes::new();
        self.booted = false;
    }

    /// Write the persistent fields, item by item, in the order and encoding a derived postcard
    /// `Serialize` of the struct would use (rooms without their short numbers).
    pub(crate) fn encode<O: Out>(&self, o: &mut O) -> Result<(), PersistError> {
        o.put(&self.since)?;
        o.put(&self.rooms.len())?;
        for r in &self.rooms {
            o.put(&r.id)?;
            o.put(&r.highlight)?;
            o.put(&r.notification)?;
            o.put(&r.read)?;
            o.put(&r.events.len())?;
            for e in &r.events {
                o.put(e)?;
            }
        }
        o.put(&self.invites.len())?;
        for v in &self.invites {
            o.put(v)?;
        }
        o.put(&self.outbox.len())?;
        for x in &self.outbox {
            o.put(x)?;
        }
        o.put(&self.seen.len())?;
        for d in &self.seen {
            o.put(d)?;
        }
        o.put(&self.next_seq)?;
        o.put(&self.boot)?;
        o.put(&self.txn_seq)?;
        o.put(&self.counters)?;
        o.put(&self.push_seq)?;
        o.put(&self.session)
    }

    /// Read what [`Self::encode`] wrote, into `self` in place: only one event at a time is on
    /// the stack. On error `self` is left empty (a fresh state that has not begun a boot).
    pub(crate) fn decode_into(&mut self, p: &[u8]) -> Result<(), PersistError> {
        self.clear(0);
        let r = self.decode_fields(p);
        if r.is_err() {
            self.clear(0);
        } else {
            self.sanitize();
        }
        r
    }

    fn decode_fields(&mut self, mut p: &[u8]) -> Result<(), PersistError> {
        let p = &mut p;
        self.since = take(p)?;
        for _ in 0..take::<usize>(p)? {
            let room = Room {
                id: take(p)?,
                short: None,
                highlight: take(p)?,
                notification: take(p)?,
                read: take(p)?,
                events: heapless::Vec::new(),
                stale: false,
            };
            self.rooms.push(room).map_err(|_| PersistError::Decode)?;
            let n: usize = take(p)?;
            for _ in 0..n {
                let e: Event = take(p)?;
                let r = self.rooms.last_mut().ok_or(PersistError::Decode)?;
                r.events.push(e).map_err(|_| PersistError::Decode)?;
            }
        }
        for _ in 0..take::<usize>(p)? {
            let v: Invite = take(p)?;
            self.invites.push(v).map_err(|_| PersistError::Decode)?;
        }
        for _ in 0..take::<usize>(p)? {
            let x: Outgoing = take(p)?;
            self.outbox.push(x).map_err(|_| PersistError::Decode)?;
        }
        for _ in 0..take::<usize>(p)? {
            let d: u64 = take(p)?;
            self.seen.push(d).map_err(|_| PersistError::Decode)?;
        }
        self.next_seq = take(p)?;
        self.boot = take(p)?;
        self.txn_seq = take(p)?;
        self.counters = take(p)?;
        self.push_seq = take(p)?;
        self.session = take(p)?;
        if !p.is_empty() {
            return Err(PersistError::Decode);
        }
        Ok(())
    }

    /// Start boot `boot` on a restored state: new transaction ids become `d{boot}.0`, `.1`, ...
    /// while persisted outbox entries keep theirs. `boot` must be greater than the last boot
    /// this state used.
    pub fn begin_boot(&mut self, boot: u32) -> Result<(), BootError> {
        if boot <= self.boot {
            return Err(BootError::NotIncreasing);
        }
        self.boot = boot;
        self.txn_seq = 0;
        self.booted = true;
        Ok(())
    }

    /// Boot number new transaction ids use (the last one begun).
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// The committed since token.
    pub fn since(&self) -> Option<&str> {
        self.since.as_ref().map(|t| t.as_str())
    }

    /// Joined rooms, in join order.
    pub fn rooms(&self) -> &[Room<EVENTS>] {
        &self.rooms
    }

    /// A joined room by id.
    pub fn room(&self, id: &str) -> Option<&Room<EVENTS>> {
        self.rooms.iter().find(|r| r.id == id)
    }

    /// Pending invites, oldest first.
    pub fn invites(&self) -> &[Invite] {
        &self.invites
    }

    /// Drop-rule counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The dedupe window (digests of evicted and echoed event ids), oldest first.
    pub fn seen_window(&self) -> &[u64] {
        &self.seen
    }

    /// Number of the last pushed sync item applied (0: none yet).
    pub fn push_seq(&self) -> u32 {
        self.push_seq
    }

    /// Records that pushed item `n` was applied (save the state afterwards).
    pub fn set_push_seq(&mut self, n: u32) {
        self.push_seq = n;
    }

    /// The saved link session ([`Self::set_session`]), if any.
    pub fn session(&self) -> Option<&[u8]> {
        Some(self.session.as_slice()).filter(|s| !s.is_empty())
    }

    /// Keeps the link session's export (`lowband_codec::session::Client::export`) to be
    /// saved with the state; an empty slice forgets it.
    pub fn set_session(&mut self, export: &[u8]) {
        self.session = Bytes::from_slice(export).unwrap_or_default();
    }

    /// Forget the gateway's short room numbers (a new gateway session assigns new ones).
    pub fn forget_short_ids(&mut self) {
        for r in &mut self.rooms {
            r.short = None;
        }
    }

    fn room_index(&self, r: RoomRef<'_>) -> Option<usize> {
        match r {
            RoomRef::Id(id) => self.rooms.iter().position(|x| x.id == id),
            RoomRef::Short(n) => self.rooms.iter().position(|x| x.short == Some(n)),
        }
    }

    fn remember(&mut self, digest: u64) {
        if SEEN == 0 || self.seen.contains(&digest) {
            return;
        }
        if self.seen.is_full() {
            self.seen.remove(0);
        }
        // INVARIANT: not full after the removal above (SEEN > 0).
        let _ = self.seen.push(digest);
    }

    /// Apply one sync item. Never panics; see the module docs for the drop rules.
    pub fn apply(&mut self, update: SyncUpdate<'_>) -> Applied {
        match update {
            SyncUpdate::Joined { room, short } => self.apply_joined(room, short),
            SyncUpdate::Left { room } => {
                let Some(i) = self.room_index(room) else {
                    // Leaving also ends an invite (declined or withdrawn).
                    if let RoomRef::Id(id) = room {
                        if let Some(j) = self.invites.iter().position(|v| v.room == id) {
                            self.invites.remove(j);
                            return Applied::Updated;
                        }
                    }
                    return Applied::Duplicate;
                };
                self.remove_room(i);
                Applied::Updated
            }
            SyncUpdate::Invited { room, inviter } => self.apply_invited(room, inviter),
            SyncUpdate::Event(e) => self.apply_event(&e),
            SyncUpdate::Unread {
                room,
                highlight,
                notification,
            } => {
                let Some(i) = self.room_index(room) else {
                    return Applied::Ignored(Ignored::UnknownRoom);
                };
                let r = &mut self.rooms[i];
                if r.highlight == highlight && r.notification == notification {
                    return Applied::Duplicate;
                }
                r.highlight = highlight;
                r.notification = notification;
                Applied::Updated
            }
            SyncUpdate::Echo { txn_id, event_id } => {
                if let Some(id) = event_id {
                    let (stored, _) = event_id_of(id);
                    self.remember(fnv1a64(stored.as_str().as_bytes()));
                }
                match TxnId::parse(txn_id) {
                    Some(t) if self.acknowledge(t) => Applied::Updated,
                    _ => Applied::Ignored(Ignored::UnknownTxn),
                }
            }
            SyncUpdate::Since(token) => {
                self.drop_stale();
                match Text::exact(token) {
                    Some(t) => {
                        self.since = Some(t);
                        Applied::Committed
                    }
                    None => {
                        self.since = None;
                        bump(&mut self.counters.since_rejected);
                        Applied::Ignored(Ignored::SinceTooLong)
                    }
                }
            }
            SyncUpdate::Reset => {
                for r in self.rooms.iter_mut() {
                    r.stale = true;
                }
                for v in self.invites.iter_mut() {
                    v.stale = true;
                }
                Applied::Updated
            }
        }
    }

    /// Remove room `i`; its event ids go to the dedupe window (a replay of the batch that
    /// removed it, or a later re-join, does not hand them out again).
    fn remove_room(&mut self, i: usize) {
        let room = self.rooms.remove(i);
        for e in &room.events {
            self.remember(fnv1a64(e.id.as_str().as_bytes()));
        }
    }

    fn drop_stale(&mut self) {
        while let Some(i) = self.rooms.iter().position(|r| r.stale) {
            self.remove_room(i);
        }
        self.invites.retain(|v| !v.stale);
    }

    fn apply_joined(&mut self, room: &str, short: Option<u16>) -> Applied {
        let Some(id) = RoomId::exact(room) else {
            bump(&mut self.counters.ids_too_long);
            return Applied::Ignored(Ignored::IdTooLong);
        };
        // A short number names one room at a time.
        if let Some(n) = short {
            for r in self.rooms.iter_mut() {
                if r.short == Some(n) && r.id != id {
                    r.short = None;
                }
            }
        }
        if let Some(j) = self.invites.iter().position(|v| v.room == id) {
            self.invites.remove(j);
        }
        if let Some(r) = self.rooms.iter_mut().find(|r| r.id == id) {
            if r.short == short && !r.stale {
                return Applied::Duplicate;
            }
            r.short = short;
            r.stale = false;
            return Applied::Updated;
        }
        // During a full sync, a room it did not confirm gives way to one it does.
        if self.rooms.is_full() {
            if let Some(i) = self.rooms.iter().position(|r| r.stale) {
                self.remove_room(i);
            }
        }
        let r = Room {
            id,
            short,
            highlight: 0,
            notification: 0,
            read: self.next_seq.saturating_sub(1),
            events: heapless::Vec::new(),
            stale: false,
        };
        match self.rooms.push(r) {
            Ok(()) => Applied::Stored,
            Err(_) => {
                bump(&mut self.counters.rooms_ignored);
                Applied::Ignored(Ignored::RoomsFull)
            }
        }
    }

    fn apply_invited(&mut self, room: &str, inviter: &str) -> Applied {
        let Some(id) = RoomId::exact(room) else {
            bump(&mut self.counters.ids_too_long);
            return Applied::Ignored(Ignored::IdTooLong);
        };
        if self.rooms.iter().any(|r| r.id == id) {
            return Applied::Ignored(Ignored::AlreadyJoined);
        }
        let (inviter, cut) = UserId::truncated(inviter);
        let inv = Invite {
            room: id,
            inviter,
            inviter_truncated: cut,
            stale: false,
        };
        if let Some(v) = self.invites.iter_mut().find(|v| v.room == id) {
            if *v == inv {
                return Applied::Duplicate;
            }
            *v = inv;
            return Applied::Updated;
        }
        if INVITES == 0 {
            bump(&mut self.counters.invites_dropped);
            return Applied::Ignored(Ignored::RoomsFull);
        }
        if self.invites.is_full() {
            // A stale invite (not confirmed by a full sync) goes first, then the oldest.
            let i = self.invites.iter().position(|v| v.stale).unwrap_or(0);
            self.invites.remove(i);
            bump(&mut self.counters.invites_dropped);
        }
        // INVARIANT: not full after the removal above (INVITES > 0).
        let _ = self.invites.push(inv);
        Applied::Stored
    }

    fn apply_event(&mut self, e: &EventIn<'_>) -> Applied {
        let Some(ri) = self.room_index(e.room) else {
            bump(&mut self.counters.events_unknown_room);
            return Applied::Ignored(Ignored::UnknownRoom);
        };
        let (id, digested) = event_id_of(e.event_id);
        let digest = fnv1a64(id.as_str().as_bytes());
        if self.rooms[ri].events.iter().any(|x| x.id == id) || self.seen.contains(&digest) {
            return Applied::Duplicate;
        }
        if EVENTS == 0 {
            bump(&mut self.counters.events_evicted);
            bump(&mut self.counters.unread_evicted);
            self.remember(digest);
            return Applied::Stored;
        }
        let mut fl = 0u8;
        if digested {
            fl |= flags::ID_DIGEST;
            bump(&mut self.counters.ids_digested);
        }
        let (sender, cut) = UserId::truncated(e.sender);
        if cut {
            fl |= flags::SENDER_TRUNCATED;
        }
        let (kind, cut) = EventType::truncated(e.kind);
        if cut {
            fl |= flags::KIND_TRUNCATED;
        }
        let (msgtype, cut) = Text::<MSGTYPE_LEN>::truncated(e.msgtype.unwrap_or(""));
        if cut {
            fl |= flags::MSGTYPE_TRUNCATED;
        }
        let body = match e.body {
            Body::None => Bytes::new(),
            Body::Text(s) => {
                let (t, cut) = Text::<BODY_LEN>::truncated(s);
                if cut {
                    fl |= flags::BODY_TRUNCATED;
                }
                Bytes::from_slice(t.as_str().as_bytes()).unwrap_or_default()
            }
            Body::Cbor(c) => {
                fl |= flags::BODY_CBOR;
                Bytes::from_slice(c).unwrap_or_else(|| {
                    fl |= flags::BODY_TRUNCATED;
                    Bytes::new()
                })
            }
        };
        if fl & flags::ANY_TRUNCATED != 0 {
            bump(&mut self.counters.texts_truncated);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let ev = Event {
            seq,
            ts: e.ts,
            id,
            sender,
            kind,
            msgtype,
            body,
            flags: fl,
        };
        let room = &mut self.rooms[ri];
        let mut evicted = None;
        if room.events.is_full() {
            let old = room.events.remove(0);
            if old.seq > room.read {
                bump(&mut self.counters.unread_evicted);
            }
            bump(&mut self.counters.events_evicted);
            evicted = Some(fnv1a64(old.id.as_str().as_bytes()));
        }
        // INVARIANT: not full after the removal above (EVENTS > 0).
        let _ = room.events.push(ev);
        if let Some(d) = evicted {
            self.remember(d);
        }
        Applied::Stored
    }

    // ---- application side: reading -------------------------------------------------------

    fn next_unread(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (ri, r) in self.rooms.iter().enumerate() {
            if let Some(ei) = r.events.iter().position(|e| e.seq > r.read) {
                let s = r.events[ei].seq;
                if best.is_none_or(|(_, _, b)| s < b) {
                    best = Some((ri, ei, s));
                }
            }
        }
        best.map(|(r, e, _)| (r, e))
    }

    /// The next event the application has not read, in arrival order across rooms, with its
    /// room; each event is returned once (the room's read cursor moves past it).
    pub fn next_event(&mut self) -> Option<(&Room<EVENTS>, &Event)> {
        let (ri, ei) = self.next_unread()?;
        let room = &mut self.rooms[ri];
        room.read = room.events[ei].seq;
        let room = &self.rooms[ri];
        Some((room, &room.events[ei]))
    }

    /// Like [`Self::next_event`] without moving the cursor.
    pub fn peek_event(&self) -> Option<(&Room<EVENTS>, &Event)> {
        let (ri, ei) = self.next_unread()?;
        let room = &self.rooms[ri];
        Some((room, &room.events[ei]))
    }

    /// Number of stored events not read yet, over all rooms.
    pub fn unread(&self) -> usize {
        self.rooms.iter().map(Room::unread).sum()
    }

    // ---- application side: commands -------------------------------------------------------

    fn enqueue(&mut self, cmd: Command) -> Result<TxnId, SendError> {
        if !self.booted {
            return Err(SendError::NotBooted);
        }
        if self.outbox.is_full() {
            return Err(SendError::OutboxFull);
        }
        let txn = self.take_txn()?;
        // INVARIANT: checked not full above.
        let _ = self.outbox.push(Outgoing { txn, cmd });
        Ok(txn)
    }

    fn take_txn(&mut self) -> Result<TxnId, SendError> {
        let txn = TxnId {
            boot: self.boot,
            seq: self.txn_seq,
        };
        self.txn_seq = self.txn_seq.checked_add(1).ok_or(SendError::TxnExhausted)?;
        Ok(txn)
    }

    /// Queue a text message (`m.room.message`, `m.text`). Nothing is cut: a body longer than
    /// [`OUT_BODY_LEN`] is refused.
    pub fn send_text(&mut self, room: &str, body: &str) -> Result<TxnId, SendError> {
        let room = RoomId::exact(room).ok_or(SendError::TooLong)?;
        let body = Text::exact(body).ok_or(SendError::TooLong)?;
        let kind = EventType::exact("m.room.message").ok_or(SendError::TooLong)?;
        self.enqueue(Command::Message {
            room,
            kind,
            content: OutContent::Text(body),
        })
    }

    /// Queue a custom event whose content the application encoded as CBOR.
    pub fn send_custom(
        &mut self,
        room: &str,
        event_type: &str,
        content_cbor: &[u8],
    ) -> Result<TxnId, SendError> {
        let room = RoomId::exact(room).ok_or(SendError::TooLong)?;
        let kind = EventType::exact(event_type).ok_or(SendError::TooLong)?;
        let content = Bytes::<OUT_BODY_LEN>::from_slice(content_cbor).ok_or(SendError::TooLong)?;
        self.enqueue(Command::Message {
            room,
            kind,
            content: OutContent::Cbor(content),
        })
    }

    /// Queue a join. The room appears in [`Self::rooms`] when the gateway reports it joined.
    pub fn join(&mut self, room: &str) -> Result<TxnId, SendError> {
        let room = RoomId::exact(room).ok_or(SendError::TooLong)?;
        self.enqueue(Command::Join { room })
    }

    /// Queue a leave. The room stays until the gateway reports it left.
    pub fn leave(&mut self, room: &str) -> Result<TxnId, SendError> {
        let room = RoomId::exact(room).ok_or(SendError::TooLong)?;
        self.enqueue(Command::Leave { room })
    }

    /// Accept a pending invite (a join). The invite goes when the gateway reports the join.
    pub fn accept_invite(&mut self, room: &str) -> Result<TxnId, SendError> {
        if !self.invites.iter().any(|v| v.room == room) {
            return Err(SendError::NoSuchInvite);
        }
        self.join(room)
    }

    /// Decline a pending invite (a leave). The invite goes when the gateway reports it.
    pub fn decline_invite(&mut self, room: &str) -> Result<TxnId, SendError> {
        if !self.invites.iter().any(|v| v.room == room) {
            return Err(SendError::NoSuchInvite);
        }
        self.leave(room)
    }

    /// Queue a typing notification. A typing command still pending for the same room is
    /// replaced in place (only the latest state matters) and gets the new transaction id.
    pub fn set_typing(&mut self, room: &str, typing: bool) -> Result<TxnId, SendError> {
        let room = RoomId::exact(room).ok_or(SendError::TooLong)?;
        if !self.booted {
            return Err(SendError::NotBooted);
        }
        let pending = self
            .outbox
            .iter()
            .position(|o| matches!(&o.cmd, Command::Typing { room: r, .. } if *r == room));
        match pending {
            Some(i) => {
                let txn = self.take_txn()?;
                self.outbox[i] = Outgoing {
                    txn,
                    cmd: Command::Typing { room, typing },
                };
                Ok(txn)
            }
            None => self.enqueue(Command::Typing { room, typing }),
        }
    }

    /// The command to (re)send next: the oldest unacknowledged one. Resending it is safe:
    /// its transaction id makes it idempotent.
    pub fn next_outgoing(&self) -> Option<&Outgoing> {
        self.outbox.first()
    }

    /// All unacknowledged commands, oldest first (for runners that pipeline).
    pub fn outgoing(&self) -> &[Outgoing] {
        &self.outbox
    }

    /// Free outbox slots.
    pub fn outbox_free(&self) -> usize {
        OUTBOX - self.outbox.len()
    }

    /// Remove the entry with `txn` once the gateway confirmed it; false if there is none (a
    /// duplicate confirmation).
    pub fn acknowledge(&mut self, txn: TxnId) -> bool {
        match self.outbox.iter().position(|o| o.txn == txn) {
            Some(i) => {
                self.outbox.remove(i);
                true
            }
            None => false,
        }
    }

    /// Restore-time repair: make counters consistent with what was stored, whatever the bytes
    /// said (a checksummed record is trusted for content, not for invariants).
    fn sanitize(&mut self) {
        let mut max_seq = 0;
        for r in &self.rooms {
            for e in &r.events {
                max_seq = max_seq.max(e.seq);
            }
        }
        if self.next_seq <= max_seq {
            self.next_seq = max_seq.saturating_add(1);
        }
        self.booted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_ids_are_digested_in_lowercase_hex() {
        let long = "$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        assert_eq!(long.len(), 71);
        let (id, digested) = event_id_of(long);
        assert!(digested);
        assert_eq!(id.as_str(), "~3ccea276b9d8993b");
        let (id, digested) = event_id_of("$short");
        assert!(!digested);
        assert_eq!(id.as_str(), "$short");
    }
}
