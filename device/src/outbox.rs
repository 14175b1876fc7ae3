//! Transaction ids and the commands waiting to be sent to the gateway.
//!
//! Every outgoing message and room command carries a transaction id. Matrix makes
//! `PUT /rooms/{roomId}/send/{eventType}/{txnId}` idempotent per access token
//! (<https://spec.matrix.org/v1.11/client-server-api/#transaction-identifiers>), so a resend
//! with the same id after a lost acknowledgement or a reboot is dropped by the homeserver.
//! Ids are `d{boot}.{seq}`: `boot` comes from the persisted [`crate::BootCounter`] (strictly
//! increasing across reboots) and `seq` counts within one boot, so a new message never reuses an
//! id, while a persisted outbox entry keeps the id it was given.

use core::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::state::{EventType, RoomId};
use crate::text::{Bytes, Text};

/// Capacity of an outgoing message body (text or CBOR content), in bytes.
pub const OUT_BODY_LEN: usize = 96;

/// Longest textual transaction id: `d` + 10 digits + `.` + 10 digits.
pub const TXN_TEXT_LEN: usize = 22;

/// A transaction id: `d{boot}.{seq}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    /// The boot counter value of the boot that created the entry.
    pub boot: u32,
    /// Sequence number within that boot.
    pub seq: u32,
}

impl TxnId {
    /// The textual form sent to the homeserver (`d{boot}.{seq}`).
    pub fn to_text(self) -> Text<TXN_TEXT_LEN> {
        let mut t = Text::new();
        // INVARIANT: two u32 in decimal plus 2 chars is at most 22 bytes = TXN_TEXT_LEN.
        let _ = t.write_str("d");
        let _ = t.push_u32(self.boot);
        let _ = t.write_str(".");
        let _ = t.push_u32(self.seq);
        t
    }

    /// Parse the textual form; `None` for anything else (strictly `d<u32>.<u32>`, no signs, no
    /// leading `+`).
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix('d')?;
        let (b, q) = rest.split_once('.')?;
        Some(Self {
            boot: parse_u32(b)?,
            seq: parse_u32(q)?,
        })
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}.{}", self.boot, self.seq)
    }
}

/// Content of an outgoing room message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutContent {
    /// A plain text message: the runner sends `{"msgtype":"m.text","body":…}`.
    Text(Text<OUT_BODY_LEN>),
    /// Event content already encoded as CBOR by the application (custom event types).
    Cbor(Bytes<OUT_BODY_LEN>),
}

/// A command for the gateway, kept in the outbox until acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Send a room event.
    Message {
        /// Target room.
        room: RoomId,
        /// Event type, e.g. `m.room.message`.
        kind: EventType,
        /// Event content.
        content: OutContent,
    },
    /// Join a room (also how an invite is accepted).
    Join {
        /// Room to join.
        room: RoomId,
    },
    /// Leave a room (also how an invite is declined).
    Leave {
        /// Room to leave.
        room: RoomId,
    },
    /// Start or stop the typing notification.
    Typing {
        /// Room.
        room: RoomId,
        /// Typing or not.
        typing: bool,
    },
}

impl Command {
    /// The room the command is about.
    pub fn room(&self) -> &str {
        match self {
            Command::Message { room, .. }
            | Command::Join { room }
            | Command::Leave { room }
            | Command::Typing { room, .. } => room.as_str(),
        }
    }
}

/// One outbox entry: the command and the transaction id it is (re)sent with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Transaction id, stable across resends and reboots.
    pub txn: TxnId,
    /// What to do.
    pub cmd: Command,
}

/// Why an application command was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The outbox is full: retry after the runner got acknowledgements.
    OutboxFull,
    /// The room id, event type or body is longer than its capacity (never cut on the way out).
    TooLong,
    /// No boot has begun on this state (call [`crate::SyncState::begin_boot`] after restoring).
    NotBooted,
    /// `accept_invite`/`decline_invite` for a room with no pending invite.
    NoSuchInvite,
    /// 2^32 transaction ids used in one boot; reboot (advance the boot counter).
    TxnExhausted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_text_roundtrip() {
        let t = TxnId { boot: 7, seq: 42 };
        assert_eq!(t.to_text().as_str(), "d7.42");
        assert_eq!(TxnId::parse("d7.42"), Some(t));
        let max = TxnId {
            boot: u32::MAX,
            seq: u32::MAX,
        };
        assert_eq!(max.to_text().as_str(), "d4294967295.4294967295");
        assert_eq!(max.to_text().len(), TXN_TEXT_LEN);
        assert_eq!(TxnId::parse(max.to_text().as_str()), Some(max));
    }

    #[test]
    fn txn_parse_rejects_junk() {
        for s in [
            "",
            "d",
            "d1",
            "d1.",
            "d.1",
            "x1.2",
            "d+1.2",
            "d1.-2",
            "d4294967296.0",
            "d1.2.3",
        ] {
            assert_eq!(TxnId::parse(s), None, "{s}");
        }
    }
}
