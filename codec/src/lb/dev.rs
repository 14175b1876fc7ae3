//! The device profile: compact one-byte operations ("send this text to room k", join, leave,
//! typing, a custom event) and sync pushed as compact Observe notifications, for endpoints that count every byte (issue 5's budgets: a
//! post with its acknowledgement <= 64 bytes, a sync bringing one command <= 96, nothing new
//! <= 24).
//!
//! A device talks to `lowband serve` over the same Noise session and CoAP endpoint as a
//! tunnel; what changes is what the CoAP messages carry. Instead of an HTTP request encoded
//! as a route and a packed JSON body (always CoAP POST), an operation of one byte plus its
//! arguments, and the text itself. lowband's HTTP mapping always uses POST with a target
//! option, so the device profile is told apart by its option or its method:
//!
//! - **GET** with Observe 0 and a [`opt::DEVICE`](super::opt::DEVICE) option holding the
//!   `SYNC` operation: register for pushed sync (RFC 7641 §3.1).
//! - **PUT** without a [`opt::TARGET`](super::opt::TARGET), whose payload starts with any
//!   other operation ([`Op::parse_prefix`]) followed by its payload (no option: one byte of
//!   option header saved on every request).
//!
//! ```text
//!  byte 0:  op (high nibble) | room slot (low nibble, 0..=15)
//!  SYNC   0x0k  [varint last]            payload = varint len ‖ since token ‖ filter (both
//!               may be empty); k = 1: a refresh, the device kept its room and user numbers
//!  TEXT   0x1k  [varint boot][varint seq] ‖ text: send m.text to the room of session alias
//!               slot k; the transaction id is `d{boot}.{seq}`
//!  JOIN   0x2k  join the room of slot k (accepts an invite to it too)
//!  LEAVE  0x3k  leave the room of slot k (declines an invite to it too)
//!  TYPING 0x4k  [varint timeout_ms]: typing in room k for timeout_ms; 0 = stopped typing
//!  EVENT  0x5k  [varint boot][varint seq] ‖ varint type_len ‖ event type ‖ content: send a
//!               custom event to room k ([`write_event`]); content is the event content in
//!               lowband's packed form ([`crate::pack`]); transaction id `d{boot}.{seq}`
//!  WAKE   0x60  serve to device (a POST's payload): register again now (see "Waking a
//!               device after a restart" below)
//! ```
//!
//! Every operation but SYNC is answered 2.04 with no payload on success (no event id: the
//! device does not need it), and on a homeserver error with the code a tunnelled request
//! gets ([`super::status_to_code`]: 4.03, 4.04, 4.29, 5.02, ..., or 2.05 with
//! [`opt::STATUS`](super::opt::STATUS); [`super::code_to_status`] gives the HTTP status back),
//! [`opt::RETRY_AFTER`](super::opt::RETRY_AFTER) when the homeserver said when to retry, and
//! no payload (the error text stays at the gateway: airtime).
//! 4.12 with an empty [`opt::ALIAS`](super::opt::ALIAS): the slot is not defined in this
//! session (define the alias again).
//! A successful JOIN makes the room's events part of the device's pushed sync from then on;
//! a LEAVE stops them.
//!
//! What each costs on the link beyond the 13 bytes every exchange's response takes and the
//! request's fixed 14 (COBS 1 + delimiter 1 + Noise header 2 + CoAP header 4 + token 1 +
//! payload marker 1 + tag 4), with varints below 128 (timeouts of 128 ms and up take 2
//! bytes, 16 384 ms and up 3):
//!
//! ```text
//!  op       request payload                                 request   + ack = exchange
//!  JOIN     1                                                15         13     28
//!  LEAVE    1                                                15         13     28
//!  TYPING   1 + varint (30 000 ms: 3; stop: 1)               18 / 16    13     31 / 29
//!  TEXT     3 + text                                         17 + text  13     30 + text
//!  EVENT    3 + 1 + type + packed content                    18 + type  13     31 + type
//!                                                               + content         + content
//! ```
//!
//! # Where the bytes of a post go
//!
//! With the device's link version ([`LINK_VERSION`]: 4-byte transport tags) and the packet
//! framing ([`crate::frame::serial::encode_packet`]: no FCS on authenticated packets), a post
//! of a 32-byte text to a room whose alias is defined costs
//!
//! ```text
//!  request  COBS 1 + delimiter 1 + Noise header 2 + CoAP header 4 + token 1 + payload
//!           marker 1 + op 3 (slot, boot < 128, seq < 128) + text 32 + tag 4    = 49
//!  ack      COBS 1 + delimiter 1 + Noise header 2 + CoAP 2.04 piggybacked 4 + token 1
//!           + tag 4                                                              = 13
//! ```
//!
//! 62 bytes, plus one leading delimiter per direction when the line was idle (see
//! [`crate::frame::serial`]): 64 at most, issue 5's budget. A notification bringing a 32-byte
//! text from a known sender in a known room: COBS 1 + delimiter 1 + Noise 2 + CoAP header 4 +
//! token 1 + Observe 2 + marker 1 + item 3 + text 32 + tag 4 = 51, and the device's empty ACK
//! 2 + 2 + 4 + 4 = 12: 63 (65 with idle leads), budget 96. Nothing new costs nothing.
//!
//! Varints are LEB128 (7 bits a byte, low first). The access token is implied: a device
//! request without an [`opt::AUTH`](super::opt::AUTH) option uses the token the session
//! registered under number 0 (registered once, with the first request).
//!
//! # Pushed sync
//!
//! `serve` long-polls the homeserver for the device's account with the since token it keeps
//! for the device, and turns each new event the device needs into one [`Item`], sent as a
//! confirmable notification of the registration (resource [`RESOURCE`]). Exactly one item is
//! in flight at a time, so items arrive in order and a notification is never replaced by a
//! newer one (RFC 7641 §4.5.2 allows replacing *state*; an item is a delta). Each item carries
//! the low 8 bits of its number in the device's stream ([`Item::seq`]); the device persists
//! the number of the last item it applied and sends it with every registration, so after a
//! reboot `serve` resumes with the next one: an item acknowledged but not yet saved is
//! recognised by its number and applied once ([`next_seq`]). Nothing new costs nothing on the
//! link; the registration is refreshed periodically (the device's choice), which is the only
//! idle cost.
//!
//! # Waking a device after a restart
//!
//! `serve` keeps a device's link session and cursor across its own restart (with a state
//! directory) but neither the observation nor the access token: until the device registers
//! again nothing can be pushed. So a restarted `serve` sends each device it restored both
//! for one confirmable **POST** (its only request to a device) whose payload is the `WAKE`
//! operation alone (`0x60`), no option: a payload byte costs one byte less than the
//! [`opt::DEVICE`](super::opt::DEVICE) option (number 13 needs a delta extension byte after
//! no other option), and a device's endpoint need not list that critical option. The device
//! answers an empty 2.04 (piggybacked) and registers at once with `k = 0` (a `serve` that
//! restarted has no room or user numbers) and its token (`serve` lost the token number too).
//! Any other request is answered 4.04. The wake is not retried beyond CoAP's
//! retransmissions: if it fails, the device's periodic refresh recovers as before.
//!
//! ```text
//!  wake     COBS 1 + delimiter 1 + Noise header 2 + CoAP header 4 + token 1 + payload
//!           marker 1 + op 1 + tag 4                                          = 15
//!  ack      COBS 1 + delimiter 1 + Noise header 2 + CoAP 2.04 piggybacked 4 + token 1
//!           + tag 4                                                          = 13
//! ```
//!
//! 28 bytes (30 with idle leads), once per device and restart, plus the registration it
//! triggers (a refresh's bytes plus the token's registration).
//!
//! # Items (notification payload)
//!
//! ```text
//!  seq8 | kk r u nnnn | sender | [len room id] | [len user id] | body
//!  kk    kind: 0 m.text message, 1 m.notice message, 2 invite (sender = inviter), 3 left
//!  r     the room id of number nnnn follows (defined for the rest of this registration)
//!  u     the user id of number `sender` follows (likewise)
//! ```
//!
//! Room and user numbers are session-local short numbers (like SCHC's context, RFC 8724 §7,
//! learned in band instead of provisioned): `serve` defines a number inline until a
//! notification carrying the definition was acknowledged. A registration after a reboot
//! starts with empty tables; a refresh (`k = 1`) keeps the acknowledged definitions, so the
//! periodic refresh does not make the next item define its room and sender again. User
//! numbers are below [`USERS`], reused least recently used first, so a device's table is a
//! fixed array.

use core::str;

/// The link version a device-profile endpoint handshakes with: protocol
/// [`DEVICE_PROTOCOL`](crate::noise::link::DEVICE_PROTOCOL) (4-byte transport tags, see there
/// for the security argument) and dictionary 1, the one `serve` speaks.
pub const LINK_VERSION: crate::noise::link::LinkVersion = crate::noise::link::LinkVersion {
    protocol: crate::noise::link::DEVICE_PROTOCOL,
    dict: 1,
};

/// Observe resource number of a device's pushed sync on `serve`.
pub const RESOURCE: u16 = 0xD5;
/// User numbers in one registration: `serve` reuses the least recently used one beyond this.
pub const USERS: usize = 4;
/// Room numbers in one registration (4 bits).
pub const ROOMS: usize = 16;

/// Operation: register for pushed sync.
pub const OP_SYNC: u8 = 0x0;
/// Operation: send a text.
pub const OP_TEXT: u8 = 0x1;
/// Operation: join the room of slot k (also accepts an invite to it).
pub const OP_JOIN: u8 = 0x2;
/// Operation: leave the room of slot k (also declines an invite to it).
pub const OP_LEAVE: u8 = 0x3;
/// Operation: typing in the room of slot k for `timeout_ms` (0: stopped typing).
pub const OP_TYPING: u8 = 0x4;
/// Operation: send a custom event (type and packed content, [`write_event`]) to room k.
pub const OP_EVENT: u8 = 0x5;
/// Operation (`serve` to device): register for pushed sync again now, with the token
/// (`serve` restarted and lost the observation and the token number).
pub const OP_WAKE: u8 = 0x6;

/// Why a device-profile value did not parse or encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevError {
    /// Truncated, overlong or otherwise malformed bytes.
    Malformed,
    /// Text that is not UTF-8.
    Utf8,
    /// The output buffer is too small.
    BufferTooSmall,
}

/// Writes `v` as LEB128 into `out`; returns the length.
///
/// # Errors
/// [`DevError::BufferTooSmall`].
pub fn write_varint(mut v: u32, out: &mut [u8]) -> Result<usize, DevError> {
    let mut i = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        let slot = out.get_mut(i).ok_or(DevError::BufferTooSmall)?;
        i += 1;
        if v == 0 {
            *slot = b;
            return Ok(i);
        }
        *slot = b | 0x80;
    }
}

/// Reads a LEB128 u32 off the front of `p`.
///
/// # Errors
/// [`DevError::Malformed`] when truncated or longer than a u32.
pub fn read_varint(p: &mut &[u8]) -> Result<u32, DevError> {
    let mut v: u32 = 0;
    for i in 0..5 {
        let (&b, rest) = p.split_first().ok_or(DevError::Malformed)?;
        *p = rest;
        let bits = u32::from(b & 0x7f);
        if i == 4 && bits > 0x0f {
            return Err(DevError::Malformed);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DevError::Malformed)
}

/// A device operation (the `DEVICE` option value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Register for pushed sync; `last` is the number of the last item applied (0: none).
    Sync {
        /// Last item applied.
        last: u32,
        /// The device still holds the room and user numbers of its previous registration
        /// (a refresh, not a reboot): `serve` keeps those whose definitions were acknowledged.
        keep: bool,
    },
    /// Send a text to the room of alias slot `slot`, transaction id `d{boot}.{seq}`.
    Text {
        /// Session alias slot of the room.
        slot: u8,
        /// Boot number of the transaction id.
        boot: u32,
        /// Sequence number of the transaction id.
        seq: u32,
    },
    /// Join the room of alias slot `slot` (accepts an invite to it too).
    Join {
        /// Session alias slot of the room.
        slot: u8,
    },
    /// Leave the room of alias slot `slot` (declines an invite to it too).
    Leave {
        /// Session alias slot of the room.
        slot: u8,
    },
    /// Typing in the room of alias slot `slot` for `timeout_ms`; 0 means stopped typing.
    Typing {
        /// Session alias slot of the room.
        slot: u8,
        /// How long the typing notice holds, in milliseconds (0: stopped).
        timeout_ms: u32,
    },
    /// Send a custom event to the room of alias slot `slot`, transaction id `d{boot}.{seq}`;
    /// the payload after the operation is [`write_event`]'s.
    Event {
        /// Session alias slot of the room.
        slot: u8,
        /// Boot number of the transaction id.
        boot: u32,
        /// Sequence number of the transaction id.
        seq: u32,
    },
    /// From `serve` to the device, the whole payload of a POST: register for pushed sync
    /// again now (`keep = false`, with the token); see "Waking a device after a restart" in
    /// the module docs.
    Wake,
}

impl Op {
    /// Parses an option value.
    ///
    /// # Errors
    /// [`DevError::Malformed`].
    pub fn parse(v: &[u8]) -> Result<Self, DevError> {
        match Self::parse_prefix(v)? {
            (op, []) => Ok(op),
            _ => Err(DevError::Malformed),
        }
    }

    /// Parses an operation at the start of a payload (a `PUT`, see the module docs); returns
    /// it and the rest.
    ///
    /// # Errors
    /// [`DevError::Malformed`].
    pub fn parse_prefix(v: &[u8]) -> Result<(Self, &[u8]), DevError> {
        let (&b, mut p) = v.split_first().ok_or(DevError::Malformed)?;
        let op = match b >> 4 {
            OP_SYNC if b & 0x0e == 0 => Op::Sync {
                last: read_varint(&mut p)?,
                keep: b & 0x01 != 0,
            },
            OP_TEXT => Op::Text {
                slot: b & 0x0f,
                boot: read_varint(&mut p)?,
                seq: read_varint(&mut p)?,
            },
            OP_JOIN => Op::Join { slot: b & 0x0f },
            OP_LEAVE => Op::Leave { slot: b & 0x0f },
            OP_TYPING => Op::Typing {
                slot: b & 0x0f,
                timeout_ms: read_varint(&mut p)?,
            },
            OP_EVENT => Op::Event {
                slot: b & 0x0f,
                boot: read_varint(&mut p)?,
                seq: read_varint(&mut p)?,
            },
            OP_WAKE if b & 0x0f == 0 => Op::Wake,
            _ => return Err(DevError::Malformed),
        };
        Ok((op, p))
    }

    /// Writes the option value; returns its length (at most 11 bytes).
    ///
    /// # Errors
    /// [`DevError::BufferTooSmall`]; [`DevError::Malformed`] for a slot above 15.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, DevError> {
        let (first, rest) = out.split_first_mut().ok_or(DevError::BufferTooSmall)?;
        let with_slot = |op: u8, slot: u8| {
            if slot > 0x0f {
                Err(DevError::Malformed)
            } else {
                Ok((op << 4) | slot)
            }
        };
        let txn = |rest: &mut [u8], boot: u32, seq: u32| -> Result<usize, DevError> {
            let n = write_varint(boot, rest)?;
            let m = write_varint(seq, rest.get_mut(n..).ok_or(DevError::BufferTooSmall)?)?;
            Ok(n + m)
        };
        match *self {
            Op::Sync { last, keep } => {
                *first = (OP_SYNC << 4) | u8::from(keep);
                Ok(1 + write_varint(last, rest)?)
            }
            Op::Text { slot, boot, seq } => {
                *first = with_slot(OP_TEXT, slot)?;
                Ok(1 + txn(rest, boot, seq)?)
            }
            Op::Join { slot } => {
                *first = with_slot(OP_JOIN, slot)?;
                Ok(1)
            }
            Op::Leave { slot } => {
                *first = with_slot(OP_LEAVE, slot)?;
                Ok(1)
            }
            Op::Typing { slot, timeout_ms } => {
                *first = with_slot(OP_TYPING, slot)?;
                Ok(1 + write_varint(timeout_ms, rest)?)
            }
            Op::Event { slot, boot, seq } => {
                *first = with_slot(OP_EVENT, slot)?;
                Ok(1 + txn(rest, boot, seq)?)
            }
            Op::Wake => {
                *first = OP_WAKE << 4;
                Ok(1)
            }
        }
    }

    /// The room slot the operation addresses (`None` for [`Op::Sync`] and [`Op::Wake`]).
    pub fn slot(&self) -> Option<u8> {
        match *self {
            Op::Sync { .. } | Op::Wake => None,
            Op::Text { slot, .. }
            | Op::Join { slot }
            | Op::Leave { slot }
            | Op::Typing { slot, .. }
            | Op::Event { slot, .. } => Some(slot),
        }
    }
}

/// The payload of a [`Op::Sync`] registration: the device's since token (where `serve` starts
/// when it holds no cursor for the device) and its sync filter.
///
/// # Errors
/// [`DevError::BufferTooSmall`].
pub fn write_register(since: &str, filter: &str, out: &mut [u8]) -> Result<usize, DevError> {
    let len = u32::try_from(since.len()).map_err(|_| DevError::Malformed)?;
    let n = write_varint(len, out)?;
    let total = n + since.len() + filter.len();
    let dst = out.get_mut(n..total).ok_or(DevError::BufferTooSmall)?;
    dst[..since.len()].copy_from_slice(since.as_bytes());
    dst[since.len()..].copy_from_slice(filter.as_bytes());
    Ok(total)
}

/// Reads a registration payload: (since, filter), either may be empty.
///
/// # Errors
/// [`DevError::Malformed`], [`DevError::Utf8`].
pub fn parse_register(mut p: &[u8]) -> Result<(&str, &str), DevError> {
    let len = read_varint(&mut p)? as usize;
    if len > p.len() {
        return Err(DevError::Malformed);
    }
    let (since, filter) = p.split_at(len);
    Ok((
        str::from_utf8(since).map_err(|_| DevError::Utf8)?,
        str::from_utf8(filter).map_err(|_| DevError::Utf8)?,
    ))
}

/// Writes an [`Op::Event`] payload after the operation: varint type length, the event type,
/// the content in lowband's packed form ([`crate::pack`]); returns its length.
///
/// # Errors
/// [`DevError::BufferTooSmall`]; [`DevError::Malformed`] for an empty type.
pub fn write_event(kind: &str, content: &[u8], out: &mut [u8]) -> Result<usize, DevError> {
    if kind.is_empty() {
        return Err(DevError::Malformed);
    }
    let len = u32::try_from(kind.len()).map_err(|_| DevError::Malformed)?;
    let n = write_varint(len, out)?;
    let mut at = n;
    put(out, &mut at, kind.as_bytes())?;
    put(out, &mut at, content)?;
    Ok(at)
}

/// Parses an [`Op::Event`] payload: (event type, packed content). The type is not empty; the
/// content is not checked here (the server unpacks it).
///
/// # Errors
/// [`DevError::Malformed`] (truncated, empty type), [`DevError::Utf8`].
pub fn parse_event(mut p: &[u8]) -> Result<(&str, &[u8]), DevError> {
    let len = read_varint(&mut p)? as usize;
    if len == 0 || len > p.len() {
        return Err(DevError::Malformed);
    }
    let (kind, content) = p.split_at(len);
    Ok((str::from_utf8(kind).map_err(|_| DevError::Utf8)?, content))
}

/// What an [`Item`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An `m.room.message` with msgtype `m.text`; the body is its text.
    Text,
    /// An `m.room.message` with msgtype `m.notice`.
    Notice,
    /// An invite to the room (sender: the inviter); no body.
    Invite,
    /// The device left or was removed from the room; no body.
    Left,
}

/// One pushed sync item (a notification payload), borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    /// Low 8 bits of the item's number in the device's stream ([`next_seq`]).
    pub seq: u8,
    /// What it is.
    pub kind: Kind,
    /// Room number (0..=15).
    pub room: u8,
    /// The room id, when this item defines the room number.
    pub room_def: Option<&'a str>,
    /// Sender's user number (below [`USERS`]).
    pub sender: u8,
    /// The sender's user id, when this item defines the number.
    pub sender_def: Option<&'a str>,
    /// Message text (empty for invites and leaves).
    pub body: &'a str,
}

fn take_def<'a>(p: &mut &'a [u8]) -> Result<&'a str, DevError> {
    let (&n, rest) = p.split_first().ok_or(DevError::Malformed)?;
    let n = usize::from(n);
    if n == 0 || n > rest.len() {
        return Err(DevError::Malformed);
    }
    let (s, rest) = rest.split_at(n);
    *p = rest;
    str::from_utf8(s).map_err(|_| DevError::Utf8)
}

fn put(out: &mut [u8], at: &mut usize, b: &[u8]) -> Result<(), DevError> {
    let end = *at + b.len();
    out.get_mut(*at..end)
        .ok_or(DevError::BufferTooSmall)?
        .copy_from_slice(b);
    *at = end;
    Ok(())
}

impl<'a> Item<'a> {
    /// Parses a notification payload.
    ///
    /// # Errors
    /// [`DevError::Malformed`] or [`DevError::Utf8`].
    pub fn parse(p: &'a [u8]) -> Result<Self, DevError> {
        let [seq, hdr, sender, ref rest @ ..] = *p else {
            return Err(DevError::Malformed);
        };
        let mut rest: &[u8] = rest;
        let kind = match hdr >> 6 {
            0 => Kind::Text,
            1 => Kind::Notice,
            2 => Kind::Invite,
            _ => Kind::Left,
        };
        if usize::from(sender) >= USERS {
            return Err(DevError::Malformed);
        }
        let room_def = if hdr & 0x20 != 0 {
            Some(take_def(&mut rest)?)
        } else {
            None
        };
        let sender_def = if hdr & 0x10 != 0 {
            Some(take_def(&mut rest)?)
        } else {
            None
        };
        let body = str::from_utf8(rest).map_err(|_| DevError::Utf8)?;
        if matches!(kind, Kind::Invite | Kind::Left) && !body.is_empty() {
            return Err(DevError::Malformed);
        }
        Ok(Item {
            seq,
            kind,
            room: hdr & 0x0f,
            room_def,
            sender,
            sender_def,
            body,
        })
    }

    /// Writes the payload into `out`; returns its length.
    ///
    /// # Errors
    /// [`DevError::BufferTooSmall`]; [`DevError::Malformed`] for numbers out of range or a
    /// definition that is empty or longer than 255 bytes.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, DevError> {
        if usize::from(self.room) >= ROOMS || usize::from(self.sender) >= USERS {
            return Err(DevError::Malformed);
        }
        let kind = match self.kind {
            Kind::Text => 0u8,
            Kind::Notice => 1,
            Kind::Invite => 2,
            Kind::Left => 3,
        };
        let hdr = (kind << 6)
            | (u8::from(self.room_def.is_some()) << 5)
            | (u8::from(self.sender_def.is_some()) << 4)
            | self.room;
        let mut at = 0;
        put(out, &mut at, &[self.seq, hdr, self.sender])?;
        for d in [self.room_def, self.sender_def].into_iter().flatten() {
            let n = u8::try_from(d.len()).map_err(|_| DevError::Malformed)?;
            if n == 0 {
                return Err(DevError::Malformed);
            }
            put(out, &mut at, &[n])?;
            put(out, &mut at, d.as_bytes())?;
        }
        put(out, &mut at, self.body.as_bytes())?;
        Ok(at)
    }
}

/// What a received item number means, given the number `last` of the last item applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seq {
    /// The next item: apply it, it is item number `.0`.
    Next(u32),
    /// An item already applied (a retransmission after a lost ACK or a reboot): skip it.
    Old,
    /// Neither (an item was skipped: `serve` lost its cursor); apply it as item `.0`.
    Gap(u32),
}

/// Classifies the low 8 bits `seq8` of an item's number against `last` (items come one at a
/// time and in order, so only `last + 1` is new; anything within the 128 numbers before it
/// was applied already).
pub fn next_seq(last: u32, seq8: u8) -> Seq {
    let next = last.wrapping_add(1);
    let d = seq8.wrapping_sub(next as u8);
    if d == 0 {
        Seq::Next(next)
    } else if d >= 128 {
        Seq::Old
    } else {
        Seq::Gap(next.wrapping_add(u32::from(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut b = [0u8; 5];
        for (v, enc) in [
            (0u32, &[0u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let n = write_varint(v, &mut b).unwrap();
            assert_eq!(&b[..n], enc);
            let mut p = enc;
            assert_eq!(read_varint(&mut p), Ok(v));
            assert!(p.is_empty());
        }
        let mut p: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x1f];
        assert_eq!(read_varint(&mut p), Err(DevError::Malformed));
        let mut p: &[u8] = &[0x80];
        assert_eq!(read_varint(&mut p), Err(DevError::Malformed));
        assert_eq!(
            write_varint(300, &mut b[..1]),
            Err(DevError::BufferTooSmall)
        );
    }

    #[test]
    fn ops() {
        let mut b = [0u8; 11];
        let t = Op::Text {
            slot: 2,
            boot: 3,
            seq: 200,
        };
        let n = t.write(&mut b).unwrap();
        assert_eq!(&b[..n], &[0x12, 0x03, 0xc8, 0x01]);
        assert_eq!(Op::parse(&b[..n]), Ok(t));
        let s = Op::Sync {
            last: 5,
            keep: false,
        };
        let n = s.write(&mut b).unwrap();
        assert_eq!(&b[..n], &[0x00, 0x05]);
        assert_eq!(Op::parse(&b[..n]), Ok(s));
        let k = Op::Sync {
            last: 5,
            keep: true,
        };
        assert_eq!(Op::parse(&[0x01, 0x05]), Ok(k));
        assert_eq!(Op::parse(&[0x02, 0x05]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x00, 0x05, 0x00]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x70]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[]), Err(DevError::Malformed));
        let bad = Op::Text {
            slot: 16,
            boot: 0,
            seq: 0,
        };
        assert_eq!(bad.write(&mut b), Err(DevError::Malformed));
    }

    #[test]
    fn room_ops() {
        let mut b = [0u8; 11];
        for (op, enc) in [
            (Op::Join { slot: 0 }, &[0x20u8][..]),
            (Op::Join { slot: 15 }, &[0x2f]),
            (Op::Leave { slot: 3 }, &[0x33]),
            (
                Op::Typing {
                    slot: 1,
                    timeout_ms: 30_000,
                },
                &[0x41, 0xb0, 0xea, 0x01],
            ),
            (
                Op::Typing {
                    slot: 2,
                    timeout_ms: 0,
                },
                &[0x42, 0x00],
            ),
            (
                Op::Event {
                    slot: 4,
                    boot: 1,
                    seq: 300,
                },
                &[0x54, 0x01, 0xac, 0x02],
            ),
            (
                Op::Event {
                    slot: 15,
                    boot: u32::MAX,
                    seq: u32::MAX,
                },
                &[
                    0x5f, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0xff, 0x0f,
                ],
            ),
        ] {
            let n = op.write(&mut b).unwrap();
            assert_eq!(&b[..n], enc, "{op:?}");
            assert_eq!(Op::parse(enc), Ok(op));
            assert_eq!(Op::parse_prefix(enc), Ok((op, &[][..])));
            assert!(op.slot().is_some());
        }
        // As a PUT payload: the op, then the rest for the operation's payload.
        assert_eq!(
            Op::parse_prefix(&[0x20, 0xaa]),
            Ok((Op::Join { slot: 0 }, &[0xaa][..]))
        );
        assert_eq!(
            Op::parse_prefix(b"\x51\x02\x07\x03a.bX"),
            Ok((
                Op::Event {
                    slot: 1,
                    boot: 2,
                    seq: 7
                },
                &b"\x03a.bX"[..]
            ))
        );
        // Trailing bytes in an option value, truncated varints, unknown ops.
        assert_eq!(Op::parse(&[0x21, 0x00]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x41]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x41, 0x80]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x50, 0x01]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x61]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0x60, 0x00]), Err(DevError::Malformed));
        assert_eq!(Op::parse(&[0xf0]), Err(DevError::Malformed));
        // Slots above 15 do not encode.
        for bad in [
            Op::Join { slot: 16 },
            Op::Leave { slot: 16 },
            Op::Typing {
                slot: 16,
                timeout_ms: 1,
            },
            Op::Event {
                slot: 16,
                boot: 0,
                seq: 0,
            },
        ] {
            assert_eq!(bad.write(&mut b), Err(DevError::Malformed));
        }
        assert_eq!(
            Op::Sync {
                last: 0,
                keep: false
            }
            .slot(),
            None
        );
        let t = Op::Typing {
            slot: 1,
            timeout_ms: 30_000,
        };
        assert_eq!(t.write(&mut b[..3]), Err(DevError::BufferTooSmall));
        assert_eq!(t.write(&mut []), Err(DevError::BufferTooSmall));
    }

    #[test]
    fn wake() {
        let mut b = [0u8; 11];
        assert_eq!(OP_WAKE, 0x6);
        assert_eq!(Op::Wake.write(&mut b), Ok(1));
        assert_eq!(b[0], 0x60);
        assert_eq!(Op::parse(&[0x60]), Ok(Op::Wake));
        assert_eq!(Op::parse_prefix(&[0x60, 0xaa]), Ok((Op::Wake, &[0xaa][..])));
        assert_eq!(Op::Wake.slot(), None);
        // The low nibble is reserved (no slot): anything but 0 is malformed.
        for bad in [0x61u8, 0x6f] {
            assert_eq!(Op::parse(&[bad]), Err(DevError::Malformed));
        }
        assert_eq!(Op::Wake.write(&mut []), Err(DevError::BufferTooSmall));
    }

    #[test]
    fn event_payload() {
        let mut b = [0u8; 32];
        // Packed content `{"v":1}` stands in as opaque bytes here.
        let n = write_event("org.x.reading", b"\xa1\x61v\x01", &mut b).unwrap();
        assert_eq!(&b[..n], b"\x0dorg.x.reading\xa1\x61v\x01");
        assert_eq!(
            parse_event(&b[..n]),
            Ok(("org.x.reading", &b"\xa1\x61v\x01"[..]))
        );
        // Empty content is allowed (the server decides whether it unpacks).
        assert_eq!(parse_event(b"\x01t"), Ok(("t", &[][..])));
        assert_eq!(write_event("t", b"", &mut b), Ok(2));
        assert_eq!(parse_event(b""), Err(DevError::Malformed));
        assert_eq!(parse_event(b"\x00\xa0"), Err(DevError::Malformed));
        assert_eq!(parse_event(b"\x05abc"), Err(DevError::Malformed));
        assert_eq!(parse_event(b"\x80"), Err(DevError::Malformed));
        assert_eq!(parse_event(b"\x01\xff"), Err(DevError::Utf8));
        assert_eq!(write_event("", b"x", &mut b), Err(DevError::Malformed));
        assert_eq!(
            write_event("org.x.reading", b"", &mut b[..13]),
            Err(DevError::BufferTooSmall)
        );
        assert_eq!(
            write_event("t", b"", &mut []),
            Err(DevError::BufferTooSmall)
        );
    }

    #[test]
    fn register_payload() {
        let mut b = [0u8; 16];
        let n = write_register("s9", "7", &mut b).unwrap();
        assert_eq!(&b[..n], b"\x02s97");
        assert_eq!(parse_register(&b[..n]), Ok(("s9", "7")));
        assert_eq!(parse_register(b"\x00"), Ok(("", "")));
        assert_eq!(parse_register(b"\x05ab"), Err(DevError::Malformed));
    }

    #[test]
    fn items() {
        let mut b = [0u8; 64];
        let it = Item {
            seq: 7,
            kind: Kind::Text,
            room: 1,
            room_def: Some("!r:x"),
            sender: 3,
            sender_def: Some("@a:x"),
            body: "!status",
        };
        let n = it.write(&mut b).unwrap();
        assert_eq!(&b[..n], b"\x07\x31\x03\x04!r:x\x04@a:x!status");
        assert_eq!(Item::parse(&b[..n]), Ok(it));
        // Steady state: 3 bytes plus the text.
        let it = Item {
            room_def: None,
            sender_def: None,
            ..it
        };
        let n = it.write(&mut b).unwrap();
        assert_eq!(&b[..n], b"\x07\x01\x03!status");
        assert_eq!(Item::parse(&b[..n]), Ok(it));
        assert_eq!(Item::parse(b"\x07\x01"), Err(DevError::Malformed));
        assert_eq!(Item::parse(b"\x07\x01\x08"), Err(DevError::Malformed));
        assert_eq!(Item::parse(b"\x07\x21\x03\x09!r"), Err(DevError::Malformed));
        assert_eq!(Item::parse(b"\x07\x01\x03\xff"), Err(DevError::Utf8));
        assert_eq!(Item::parse(b"\x07\x81\x03x"), Err(DevError::Malformed));
        let inv = Item::parse(b"\x01\xa0\x00\x02!r").unwrap();
        assert_eq!(
            (inv.kind, inv.room_def, inv.body),
            (Kind::Invite, Some("!r"), "")
        );
        assert_eq!(it.write(&mut b[..5]), Err(DevError::BufferTooSmall));
    }

    #[test]
    fn sequence_numbers() {
        assert_eq!(next_seq(0, 1), Seq::Next(1));
        assert_eq!(next_seq(255, 0), Seq::Next(256));
        assert_eq!(next_seq(256, 0), Seq::Old);
        assert_eq!(next_seq(300, 200), Seq::Old);
        assert_eq!(next_seq(10, 13), Seq::Gap(13));
        assert_eq!(next_seq(u32::MAX, 0), Seq::Next(0));
    }
}
