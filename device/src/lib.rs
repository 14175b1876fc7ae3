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
//! [`DefaultSyncState`] (2 rooms x 3 events, 2 invites, 4 outbox entries, 16 dedupe digests, the
//! saved link session) is 2856 bytes on Cortex-M (thumbv7m) and 2864 on 64-bit hosts
//! ([`DEFAULT_SYNC_STATE_SIZE`] on the target at hand): 6 events of 224 bytes, room headers,
//! 4 outbox entries of 180 bytes, 2 invites of 92 bytes, the since token, 128 bytes of dedupe
//! digests and the 207-byte session export. Sized so that the `matrix` firmware (state, runner,
//! application and stack) fits a 16 KiB static RAM budget; a board with more RAM instantiates
//! [`SyncState`] with its own capacities. Its postcard record is at most [`DEFAULT_RECORD_MAX`]
//! bytes (2884 on 64-bit hosts).
//!
//! Stack, estimated from thumbv7m assembly at opt-level "s" (`stack-probe/`): restoring in place
//! ([`SyncState::restore_into`], [`SyncState::load_into`]) about 0.6 KiB, applying an event
//! about 0.8 KiB, a streamed save ([`SyncState::save_to`]) about 0.4 KiB (plus nothing
//! record-sized: it writes through a 64-byte buffer), [`BootCounter::advance`] with the first
//! ephemeral key about 0.6 KiB. Only loading from flash that is not memory-mapped needs a
//! record-sized scratch buffer, once at boot (it can be the link's buffers, not yet in use).
//!
//! # Boot sequence
//!
//! ```
//! use lowband_device::{AbStore, BootCounter, DefaultSyncState, EphemeralRng, Flash, Page};
//! use lowband_device::{SyncUpdate, DEFAULT_RECORD_MAX};
//!
//! /// Two RAM pages standing in for the board's flash driver.
//! struct Ram([[u8; 6144]; 2]);
//! impl Flash for Ram {
//!     type Error = ();
//!     const WRITE_SIZE: usize = 4;
//!     fn page_len(&self) -> usize {
//!         6144
//!     }
//!     fn read(&mut self, p: Page, off: usize, buf: &mut [u8]) -> Result<(), ()> {
//!         buf.copy_from_slice(&self.0[p as usize][off..off + buf.len()]);
//!         Ok(())
//!     }
//!     fn erase(&mut self, p: Page) -> Result<(), ()> {
//!         self.0[p as usize] = [0xff; 6144];
//!         Ok(())
//!     }
//!     fn program(&mut self, p: Page, off: usize, data: &[u8]) -> Result<(), ()> {
//!         self.0[p as usize][off..off + data.len()].copy_from_slice(data);
//!         Ok(())
//!     }
//! }
//!
//! let mut state_pages = AbStore::new(Ram([[0xff; 6144]; 2]));
//! let mut boot_pages = AbStore::new(Ram([[0xff; 6144]; 2]));
//! let seed = [0x42; 32]; // provisioned, per device
//!
//! // 1. Restore the state in place (on a device: a `static`), or leave it empty. The scratch
//! //    is needed only here, once; on memory-mapped flash use `state_pages.newest(..)` and
//! //    `restore_into` the mapped page instead.
//! let mut state = DefaultSyncState::new(0);
//! let mut scratch = [0u8; DEFAULT_RECORD_MAX];
//! let restored = state.load_into(&mut state_pages, &mut scratch).unwrap();
//! assert!(!restored, "first boot: nothing stored yet");
//! // 2. Persist the next boot number BEFORE any handshake or transaction id.
//! let boot = BootCounter::advance(&mut boot_pages, state.boot()).unwrap();
//! state.begin_boot(boot.get()).unwrap();
//! // 3. The boot's one ephemeral-key generator (consumes the counter value).
//! let _rng = EphemeralRng::new(&seed, boot);
//!
//! // The runner feeds sync items and sends the outbox; the application reads and writes.
//! state.apply(SyncUpdate::Joined { room: "!r:example.org", short: Some(0) });
//! state.apply(SyncUpdate::Since("s1"));
//! let txn = state.send_text("!r:example.org", "t=21.5").unwrap();
//! assert_eq!(state.next_outgoing().map(|o| o.txn), Some(txn));
//! // Saving streams to flash through a 64-byte buffer: no record-sized RAM.
//! state.save_to(&mut state_pages).unwrap();
//! ```
#![no_std]
#![warn(missing_docs)]

pub mod outbox;
pub mod persist;
pub mod rng;
pub mod runner;
pub mod state;
pub mod text;

pub use outbox::{Command, OutContent, Outgoing, SendError, TxnId};
pub use persist::{AbStore, BootCounter, Flash, Found, Page, PersistError, StoreError};
pub use rng::EphemeralRng;
pub use runner::{PacketLink, Runner, RunnerConfig, SerialLink};
pub use state::{
    Applied, Body, BootError, Counters, Event, EventIn, Ignored, Invite, Room, RoomRef, SyncState,
    SyncUpdate,
};

/// The sync state at the default capacities: 2 rooms, 3 events per room, 2 invites, 4 outbox
/// entries, 16 dedupe digests (2,648 bytes on thumbv7m: with the runner and the firmware it
/// fits a 16 KiB board; a bigger board instantiates [`SyncState`] with its own capacities).
pub type DefaultSyncState = SyncState<2, 3, 2, 4, 16>;

/// `size_of::<DefaultSyncState>()` on this target.
pub const DEFAULT_SYNC_STATE_SIZE: usize = core::mem::size_of::<DefaultSyncState>();

/// Upper bound of a [`DefaultSyncState`] record (header, postcard payload, CRC):
/// [`SyncState::MAX_RECORD_LEN`] at the default capacities.
pub const DEFAULT_RECORD_MAX: usize = DefaultSyncState::MAX_RECORD_LEN;

const _: () = assert!(core::mem::size_of::<DefaultSyncState>() <= 2900);
const _: () = assert!(core::mem::size_of::<state::Event>() <= 224);
const _: () = assert!(core::mem::size_of::<Outgoing>() <= 180);
#[cfg(all(target_arch = "arm", target_pointer_width = "32"))]
const _: () = assert!(core::mem::size_of::<DefaultSyncState>() == 2856);
