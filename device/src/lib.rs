//! A no_std, allocation-free Matrix endpoint for boards with tens of KiB of RAM and no heap.
//!
//! * [`SyncState`]: joined rooms with their latest events, invites, the since token and an
//!   outbox of commands, in fixed capacity, fed item by item from the gateway's sync results
//!   ([`SyncUpdate`]) and read/written by the application. Documented drop rules, never a
//!   panic (see [`state`]).
//! * [`persist`]: postcard records with a version byte and CRC-32 on A/B flash pages, and the
//!   [`BootCounter`].
//! * [`EphemeralRng`]: Noise ephemeral keys from a provisioned seed and the boot counter.
//!
//! # Memory
//!
//! [`DefaultSyncState`] (4 rooms x 4 events, 2 invites, 4 outbox entries, 16 dedupe digests) is
//! 5032 bytes on Cortex-M (thumbv7m) and 5040 on 64-bit hosts
//! ([`DEFAULT_SYNC_STATE_SIZE`] on the target at hand): 16 events of 224 bytes, room headers,
//! 4 outbox entries of 180 bytes, 2 invites of 91 bytes, the since token and 128 bytes of
//! dedupe digests. Compile-time assertions keep it at most 5120 bytes (5 KiB) on every target,
//! within the firmware's 16 KiB static RAM budget. Its postcard record is at most
//! [`DEFAULT_RECORD_MAX`] bytes (asserted by tests with every field full).
#![no_std]
#![warn(missing_docs)]

pub mod outbox;
pub mod persist;
pub mod rng;
pub mod state;
pub mod text;

pub use outbox::{Command, OutContent, Outgoing, SendError, TxnId};
pub use persist::{AbStore, BootCounter, Flash, Page, PersistError, StoreError};
pub use rng::EphemeralRng;
pub use state::{
    Applied, Body, BootError, Counters, Event, EventIn, Ignored, Invite, Room, RoomRef,
    SyncState, SyncUpdate,
};

/// The sync state at the default capacities: 4 rooms, 4 events per room, 2 invites, 4 outbox
/// entries, 16 dedupe digests.
pub type DefaultSyncState = SyncState<4, 4, 2, 4, 16>;

/// `size_of::<DefaultSyncState>()` on this target.
pub const DEFAULT_SYNC_STATE_SIZE: usize = core::mem::size_of::<DefaultSyncState>();

/// Upper bound of a [`DefaultSyncState`] record (header, postcard payload, CRC): postcard
/// varints make the payload at most a few bytes per field larger than the struct.
pub const DEFAULT_RECORD_MAX: usize = 6144;

const _: () = assert!(core::mem::size_of::<DefaultSyncState>() <= 5120);
const _: () = assert!(core::mem::size_of::<state::Event>() <= 224);
const _: () = assert!(core::mem::size_of::<Outgoing>() <= 180);
#[cfg(all(target_arch = "arm", target_pointer_width = "32"))]
const _: () = assert!(core::mem::size_of::<DefaultSyncState>() == 5032);
