//! The device's link driver: the secure session, the Matrix client-server requests of the
//! outbox and of sync, and the sync state, over a serial byte stream or a datagram radio.
//!
//! ```text
//!  link bytes ──► SerialLink (packet framing) ──► packet ──► DeviceClient (Noise + CoAP)
//!                                                                   │
//!   SyncState ◄── SyncUpdate ◄── pushed item (lb::dev::Item) ◄───────┘ notification (Observe)
//!   SyncState.outbox ──► PUT [TEXT | EVENT | JOIN | LEAVE | TYPING op ‖ argument] ──► link
//!   at boot ──► GET Observe:0 [SYNC op, last item applied] once, refreshed every PUSH_REFRESH_MS
//!   serve's POST [WAKE op] (after its restart) ──► 2.04, and the registration at once
//!   link session ──► SyncState (saved with it) ──► next boot resumes it, no handshake
//! ```
//!
//! # Two profiles
//!
//! - **Device profile** (the default, and the only one without the `http` feature,
//!   [`lowband_codec::lb::dev`]): the runner registers for sync pushed by `serve` with
//!   Observe (RFC 7641) at boot and stays registered: nothing new costs no byte on the link,
//!   a new text in a room arrives as one confirmable notification of a few bytes plus the
//!   text, applied in order and exactly once (the number of the last item applied is
//!   persisted in the state and sent with each registration). Every outbox command is one
//!   `PUT` whose payload is an operation (room alias slot, transaction id as two varints where
//!   the homeserver needs one) and its argument: a text, a custom event (type and packed
//!   content), a join, a leave, typing; `serve` answers an empty 2.04. An acknowledged join
//!   makes the room joined in the state, a leave forgets it. With the device link version
//!   ([`lowband_codec::lb::dev::LINK_VERSION`], 4-byte transport tags) a 32-character post
//!   with its acknowledgement costs 62 bytes on a serial line, a pushed 32-character command
//!   63 (see `lb::dev` for the accounting). No route, JSON or sync-body code is linked.
//! - **Polling profile** (feature `http`, [`Runner::set_push`]`(None)`): every request is the
//!   gateway's HTTP mapping ([`lowband_codec::lb`]): the target in one option
//!   (`route::encode_target`), the JSON body packed, the access token as `[n, token]` until
//!   the first response, then `[n]`; `/sync` is polled; responses bigger than one block come
//!   block-wise (the gateway keeps the body under a [`opt::BODY`] id) and are reassembled
//!   into a bounded buffer.
//!
//! # Reboots
//!
//! The link session is exported into the state ([`DefaultSyncState::session`]) whenever the
//! state changes and at every new key epoch, before any packet of that epoch is sent (the
//! caller saves the state when [`Progress::changed`], before polling again). A runner built
//! on a restored state resumes that session ([`DeviceClient::resume`]): a reboot costs no
//! handshake while the gateway holds the session (if it does not, its "unknown session"
//! reject starts one).
//!
//! Packets cross the link as `serve` sends them: serial frames of the packet framing
//! ([`frame::encode_packet`]: no FCS on AEAD-protected packets), and behind the fragmentation
//! layer's single-fragment header when a packet starts with a byte `>= 0xC0`
//! ([`frame::frag`]); real fragments are not reassembled (the gateway's link MTU must hold a
//! device's packets).
//!
//! Transaction ids come from the outbox ([`crate::TxnId`], `d{boot}.{seq}`, persisted with the
//! state), so a message resent after a reboot has the same id and the homeserver deduplicates
//! it (Matrix client-server API, "Transaction identifiers":
//! <https://spec.matrix.org/v1.11/client-server-api/#transaction-identifiers>).
//!
//! # Call protocol
//!
//! ```text
//!  loop {
//!      runner.poll(now, &mut link)?      // reads what the link has, sends what is due
//!      if progress.changed { runner.state().save_to(&mut pages) }   // outbox survives reboots
//!      app: runner.state_mut().next_event() / send_text(..)
//!      sleep until runner.poll_timeout() or a byte arrives
//!  }
//! ```
//!
//! No allocation: every buffer is in the [`Runner`] ([`RUNNER_SIZE`] bytes, stated below).

use core::fmt::Write as _;

use lowband_codec::coap::{Code, IncomingResponse, Opt, Options, Received, Request, RequestHandle};
use lowband_codec::frame::{self, Deframer};
use lowband_codec::lb::dev::{self, Item as DevItem, Kind as DevKind, Op, Seq};
use lowband_codec::lb::{self, opt, Auth};
use lowband_codec::pack;
use lowband_codec::session::{max_packet_len, DeviceClient, SessionEvent, CLIENT_EXPORT_LEN};
use rand_core::{CryptoRng, RngCore};

use crate::outbox::{Command, OutContent, TxnId};
use crate::state::{
    Body, EventIn, RoomRef, SyncUpdate, EVENT_TYPE_LEN, ROOM_ID_LEN, SINCE_LEN, USER_ID_LEN,
};
use crate::text::Text;

/// Bytes of preset dictionary an `inflate` buffer of [`Runner::poll`] needs before the body.
pub const INFLATE_DICT_LEN: usize = lowband_codec::dict::DEFLATE_DICT.len();
use crate::DefaultSyncState;

/// CoAP MTU of the device's own messages ([`DeviceClient`]).
pub const COAP_MTU: usize = 128;
/// Whether this runner is a small device's: built with a codec that cannot inflate (its
/// `inflate` feature off), it announces [`opt::SMALL`] with [`BLOCK_SZX`] when it registers its
/// token, so the gateway sends it plain bodies in small blocks, and its buffers are sized for
/// those blocks.
pub const SMALL: bool = !pack::INFLATE;
/// Largest link packet the runner receives: one block of the gateway (1 KiB, its `BLOCK`; a
/// [`SMALL`] runner's 256 bytes) with CoAP header, options and the Noise overhead.
pub const RX_PACKET: usize = if SMALL { 320 } else { 1152 };
/// Largest link packet the runner sends.
pub const TX_PACKET: usize = max_packet_len(COAP_MTU);
/// Largest (packed) response body the runner reassembles; bigger ones are dropped and the
/// sync is retried with a smaller `limit` in its filter.
#[cfg(feature = "http")]
pub const BODY_MAX: usize = if SMALL { 1024 } else { 2048 };
/// Block size exponent (RFC 7959 §2.2: 2^(4+SZX) bytes): 6 = 1 KiB, the gateway's block; a
/// [`SMALL`] runner asks for 4 = 256 bytes ([`opt::SMALL`]).
pub const BLOCK_SZX: u8 = if SMALL { 4 } else { 6 };
/// How long a typing notification lasts unless renewed or stopped (the homeserver's
/// `timeout`).
pub const TYPING_TIMEOUT_MS: u32 = 30_000;
/// Longest access token kept.
pub const TOKEN_LEN: usize = 96;
/// Longest sync filter (inline JSON or a filter id) kept.
pub const FILTER_LEN: usize = 96;
/// Room ids the runner keeps session aliases for ([`opt::ALIAS`]).
pub const ALIASES: usize = 4;
/// Number under which the access token is registered with the gateway.
const TOKEN_NUMBER: u8 = 0;
/// The sync filter the runner uses unless told otherwise: timeline only, 4 events per room,
/// no presence or account data (bytes on the link).
pub const DEFAULT_FILTER: &str = r#"{"room":{"timeline":{"limit":4},"state":{"lazy_load_members":true,"types":[]},"ephemeral":{"types":[]},"account_data":{"types":[]}},"presence":{"types":[]},"account_data":{"types":[]}}"#;

/// A link that moves whole packets: a framed byte stream ([`SerialLink`]) or a datagram radio.
pub trait PacketLink {
    /// Why the link failed.
    type Error: core::fmt::Debug;
    /// Takes one received packet into `buf` if one is complete; never blocks. A packet longer
    /// than `buf` is dropped.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;
    /// Sends one packet (may block until the transmitter took it). `now` in milliseconds.
    fn send(&mut self, now: u64, packet: &[u8]) -> Result<(), Self::Error>;
}

/// Idle time after which the next frame starts with a delimiter (resynchronises a receiver
/// that saw line noise; costs one byte).
pub const LEAD_AFTER_IDLE_MS: u64 = 1000;

/// A byte stream (a UART: [`embedded_io`] `Read + Write + ReadReady`) as a [`PacketLink`]:
/// serial frames ([`lowband_codec::frame::serial`], COBS + FCS-16) carry one packet each.
#[derive(Debug)]
pub struct SerialLink<L> {
    io: L,
    deframer: Deframer<RX_PACKET>,
    inbuf: [u8; 32],
    in_pos: usize,
    in_len: usize,
    out: [u8; frame::max_encoded_len(TX_PACKET + 1, true)],
    last_tx: Option<u64>,
}

impl<L> SerialLink<L> {
    /// Wraps the stream.
    pub const fn new(io: L) -> Self {
        SerialLink {
            io,
            deframer: Deframer::for_packets(),
            inbuf: [0; 32],
            in_pos: 0,
            in_len: 0,
            out: [0; frame::max_encoded_len(TX_PACKET + 1, true)],
            last_tx: None,
        }
    }

    /// The stream.
    pub fn io_mut(&mut self) -> &mut L {
        &mut self.io
    }

    /// Deframer counters (CRC errors, overlong frames).
    pub fn deframe_stats(&self) -> frame::DeframeStats {
        self.deframer.stats()
    }
}

impl<L: embedded_io::Read + embedded_io::Write + embedded_io::ReadReady> PacketLink
    for SerialLink<L>
{
    type Error = embedded_io::ErrorKind;

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        use embedded_io::Error as _;
        loop {
            while self.in_pos < self.in_len {
                let used = self
                    .deframer
                    .handle_bytes(&self.inbuf[self.in_pos..self.in_len]);
                self.in_pos += used;
                if let Some(Ok(p)) = self.deframer.poll_frame() {
                    if let Some(dst) = buf.get_mut(..p.len()) {
                        dst.copy_from_slice(p);
                        return Ok(Some(p.len()));
                    }
                }
            }
            if !self.io.read_ready().map_err(|e| e.kind())? {
                return Ok(None);
            }
            let n = self.io.read(&mut self.inbuf).map_err(|e| e.kind())?;
            if n == 0 {
                return Ok(None);
            }
            self.in_pos = 0;
            self.in_len = n;
        }
    }

    fn send(&mut self, now: u64, packet: &[u8]) -> Result<(), Self::Error> {
        use embedded_io::Error as _;
        let lead = self
            .last_tx
            .is_none_or(|t| now.saturating_sub(t) >= LEAD_AFTER_IDLE_MS);
        let n = frame::encode_packet(packet, lead, &mut self.out)
            .map_err(|_| embedded_io::ErrorKind::InvalidInput)?;
        self.io.write_all(&self.out[..n]).map_err(|e| e.kind())?;
        self.io.flush().map_err(|e| e.kind())?;
        self.last_tx = Some(now);
        Ok(())
    }
}

/// What the runner needs to know besides the session.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig<'a> {
    /// The device account's access token (provisioned, or from a one-time login).
    pub access_token: &'a str,
    /// Sync long-poll timeout the homeserver waits for news, in milliseconds (0: answer now).
    pub sync_timeout_ms: u32,
    /// Pause between the end of one sync and the next request, in milliseconds.
    pub sync_interval_ms: u64,
    /// Sync filter: inline JSON or a filter id ([`DEFAULT_FILTER`]).
    pub filter: &'a str,
}

/// Why a [`Runner`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The access token is longer than [`TOKEN_LEN`].
    TokenTooLong,
    /// The filter is longer than [`FILTER_LEN`].
    FilterTooLong,
}

/// Why [`Runner::new_in`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewInError<E> {
    /// The configuration does not fit.
    Config(ConfigError),
    /// The `load` closure failed.
    Load(E),
}

/// Counters of a [`Runner`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerStats {
    /// Outbox entries the homeserver accepted.
    pub sent: u32,
    /// Outbox entries the homeserver refused for good (dropped from the outbox).
    pub refused: u32,
    /// Sync responses applied.
    pub syncs: u32,
    /// Responses that failed (error status, CoAP failure, unreadable body); retried.
    pub failures: u32,
    /// Link packets sent and received, and their bytes.
    pub packets_out: u32,
    /// Link packets received.
    pub packets_in: u32,
    /// Link bytes sent (packets, before framing).
    pub bytes_out: u64,
    /// Link bytes received (packets, after deframing).
    pub bytes_in: u64,
}

/// What one [`Runner::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The sync state changed (a send acknowledged, events or rooms stored): persist it now,
    /// or a reboot repeats work (a command answered twice).
    pub changed: bool,
    /// A sync committed: the since token advanced (persisting it can wait; losing it costs a
    /// sync whose events the dedupe window recognises).
    pub since_advanced: bool,
    /// Link packets handled.
    pub packets: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// An outbox entry; `registered` is whether the request registered the token, `alias`
    /// the alias slot it defined.
    Send {
        txn: TxnId,
        registered: bool,
        alias: Option<u8>,
    },
    /// A sync from `since` (none: initial); `registered` as above.
    #[cfg(feature = "http")]
    Sync { initial: bool, registered: bool },
    /// The next block of a kept response body (of a sync).
    #[cfg(feature = "http")]
    Block { id: u32, initial: bool },
    /// A registration for pushed sync ([`dev`]).
    Register(RegisterKind),
    /// Registered: notifications arrive on this handle.
    Observing,
}

/// What a registration asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RegisterKind {
    /// The token went along (registered with it).
    registered: bool,
    /// The room and user numbers of the previous registration were kept.
    keep: bool,
}

/// How often the runner registers for pushed sync again while registered (a gateway that
/// restarted without its state, or lost the observation, pushes again from then on; one that
/// restarted with its state wakes the device at once instead, [`dev::Op::Wake`]). Costs
/// one registration and its answer per period, 37 bytes on a serial line (measured in
/// `tests/it/device_e2e.rs`): 0.04 B/s at the default, the only cost of an idle device.
pub const PUSH_REFRESH_MS: u64 = 15 * 60 * 1000;

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub use http::{read_sync, SyncReadError};

/// The device endpoint: owns the session, the sync state and the link buffers.
///
/// Memory: [`RUNNER_SIZE`] bytes for `Runner<R>` with `R` = [`crate::EphemeralRng`]: 7 280 on
/// thumbv7m in a device build (the sync state 2.8 KiB, the session ~2.9 KiB, the receive packet
/// and CoAP scratch 320 + 320 bytes, the pushed-sync user table); the `http` feature adds the
/// polling profile's body buffer. [`SerialLink`] adds its deframer and frame buffers plus the
/// stream. A deflated response body (polling profile only) needs the `inflate` buffer of
/// [`Runner::poll`] ([`INFLATE_DICT_LEN`] = 14 392 bytes of dictionary plus the body) and
/// ~11 KiB of stack for the inflater: more than a 16 KiB device has, so small devices use a
/// codec without `inflate` ([`SMALL`]).
// repr(C), the state first: the rest of the runner is one piece that [`Runner::new_in`] can
// lend as a record scratch while the state is restored.
#[derive(Debug)]
#[repr(C)]
pub struct Runner<R> {
    state: DefaultSyncState,
    client: DeviceClient<R>,
    token: Text<TOKEN_LEN>,
    filter: Text<FILTER_LEN>,
    token_acked: bool,
    /// Room ids as session aliases (slot = index) and whether the gateway holds each.
    aliases: heapless::Vec<(Text<ROOM_ID_LEN>, bool), ALIASES>,
    alias_next: u8,
    sync_timeout_ms: u32,
    sync_interval_ms: u64,
    sync_due: u64,
    since_advanced: bool,
    send: Option<(RequestHandle, Pending)>,
    sync: Option<(RequestHandle, Pending)>,
    /// Pushed sync ([`dev`]) and how often the registration is refreshed; `None`: polling.
    push_refresh_ms: Option<u64>,
    refresh_due: u64,
    /// The room and user numbers learned in this boot are valid (a registration succeeded).
    push_tables: bool,
    /// Key epoch of the session export last handed to the state (None: not yet).
    saved_epoch: Option<u64>,
    /// User ids by the gateway's number, for this registration (one byte over the state's
    /// capacity so that an over-long id is still recognised as cut).
    users: [Text<{ USER_ID_LEN + 4 }>; dev::USERS],
    #[cfg(feature = "http")]
    body_len: usize,
    rx: [u8; RX_PACKET],
    scratch: [u8; RX_PACKET],
    #[cfg(feature = "http")]
    body: [u8; BODY_MAX],
    /// Byte 0 is room for the fragmentation layer's escape ([`frame::frag`]).
    tx: [u8; TX_PACKET + 1],
    stats: RunnerStats,
}

/// `size_of::<Runner<EphemeralRng>>()` on this target.
pub const RUNNER_SIZE: usize = core::mem::size_of::<Runner<crate::EphemeralRng>>();
const _: () = assert!(RUNNER_SIZE <= 16 * 1024);
#[cfg(all(target_arch = "arm", target_pointer_width = "32"))]
const _: () = assert!(SMALL || core::mem::size_of::<SerialLink<()>>() == 1536);

impl<R: RngCore + CryptoRng> Runner<R> {
    /// A runner over an unstarted session and a restored (or fresh) state whose boot has begun
    /// ([`crate::SyncState::begin_boot`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the token or filter does not fit.
    pub fn new(
        client: DeviceClient<R>,
        state: DefaultSyncState,
        cfg: &RunnerConfig<'_>,
    ) -> Result<Self, ConfigError> {
        let mut slot = core::mem::MaybeUninit::uninit();
        let mut state = Some(state);
        let mut client = Some(client);
        Runner::new_in(
            &mut slot,
            cfg,
            |s, _| {
                // INVARIANT: the closure runs once.
                if let Some(st) = state.take() {
                    *s = st;
                }
                Ok(())
            },
            |(), out| {
                out.write(client.take().ok_or(())?);
                Ok(())
            },
        )
        .map_err(|e| match e {
            NewInError::Config(c) => c,
            // INVARIANT: the closure above never fails.
            NewInError::Load(()) => ConfigError::TokenTooLong,
        })?;
        // SAFETY: new_in returned Ok: every field is written.
        Ok(unsafe { slot.assume_init() })
    }

    /// Builds a runner in place (e.g. in a `static`), for boards whose stack cannot hold one by
    /// value: the state is created empty in its final place and handed to `load`, which
    /// restores it (e.g. [`crate::SyncState::load_into`], [`crate::SyncState::begin_boot`])
    /// and returns what `client` needs (the boot number the state gave); `client` then writes
    /// the session client into its final place. Nothing runner-sized ever passes through the
    /// stack, and no client-sized value through this function's frame. `load` also gets the
    /// runner's memory that is not in use yet (zeroed; the largest piece beside the state,
    /// 5 KiB on thumbv7m): room for a record scratch, which then need not be on the stack.
    ///
    /// # Errors
    ///
    /// [`NewInError::Load`] with `load`'s error, [`NewInError::Config`] if the token or filter
    /// does not fit; the slot is then not initialised.
    pub fn new_in<'s, T, E>(
        slot: &'s mut core::mem::MaybeUninit<Self>,
        cfg: &RunnerConfig<'_>,
        load: impl FnOnce(&mut DefaultSyncState, &mut [u8]) -> Result<T, E>,
        client: impl FnOnce(T, &mut core::mem::MaybeUninit<DeviceClient<R>>) -> Result<(), E>,
    ) -> Result<&'s mut Self, NewInError<E>> {
        let token =
            Text::exact(cfg.access_token).ok_or(NewInError::Config(ConfigError::TokenTooLong))?;
        let filter =
            Text::exact(cfg.filter).ok_or(NewInError::Config(ConfigError::FilterTooLong))?;
        let p = slot.as_mut_ptr();
        // SAFETY: `p` points to the slot's (uninitialised) memory; every field is written once
        // through its own pointer before the slot is read as a Runner (`fields_check` keeps
        // this list complete).
        unsafe {
            let state = core::ptr::addr_of_mut!((*p).state);
            DefaultSyncState::init_at(state, 0);
            // The larger piece of the slot before or after the state: no field is written yet.
            let (at, len) = {
                let so = core::mem::offset_of!(Self, state);
                let end = so + core::mem::size_of::<DefaultSyncState>();
                let total = core::mem::size_of::<Self>();
                if so >= total - end {
                    (0, so)
                } else {
                    (end, total - end)
                }
            };
            let spare = p.cast::<u8>().add(at);
            spare.write_bytes(0, len);
            let spare = core::slice::from_raw_parts_mut(spare, len);
            let t = load(&mut *state, spare).map_err(NewInError::Load)?;
            // The spare memory (which holds the client field) is no longer borrowed.
            let c = &mut *(core::ptr::addr_of_mut!((*p).client)
                as *mut core::mem::MaybeUninit<DeviceClient<R>>);
            client(t, c).map_err(NewInError::Load)?;
            // The session saved with the state resumes without a handshake (if the gateway
            // lost it, its reject makes one); one that does not resume is forgotten.
            let (state, c) = (&mut *state, c.assume_init_mut());
            if let Some(export) = state.session() {
                if c.resume(export).is_err() {
                    state.set_session(&[]);
                }
            }
            core::ptr::addr_of_mut!((*p).token).write(token);
            core::ptr::addr_of_mut!((*p).filter).write(filter);
            core::ptr::addr_of_mut!((*p).token_acked).write(false);
            core::ptr::addr_of_mut!((*p).aliases).write(heapless::Vec::new());
            core::ptr::addr_of_mut!((*p).alias_next).write(0);
            core::ptr::addr_of_mut!((*p).sync_timeout_ms).write(cfg.sync_timeout_ms);
            core::ptr::addr_of_mut!((*p).sync_interval_ms).write(cfg.sync_interval_ms);
            core::ptr::addr_of_mut!((*p).sync_due).write(0);
            core::ptr::addr_of_mut!((*p).since_advanced).write(false);
            core::ptr::addr_of_mut!((*p).send).write(None);
            core::ptr::addr_of_mut!((*p).sync).write(None);
            core::ptr::addr_of_mut!((*p).push_refresh_ms).write(Some(PUSH_REFRESH_MS));
            core::ptr::addr_of_mut!((*p).refresh_due).write(0);
            core::ptr::addr_of_mut!((*p).push_tables).write(false);
            core::ptr::addr_of_mut!((*p).saved_epoch).write(None);
            core::ptr::addr_of_mut!((*p).users).write([const { Text::new() }; dev::USERS]);
            #[cfg(feature = "http")]
            core::ptr::addr_of_mut!((*p).body_len).write(0);
            core::ptr::addr_of_mut!((*p).rx).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*p).scratch).write_bytes(0, 1);
            #[cfg(feature = "http")]
            core::ptr::addr_of_mut!((*p).body).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*p).tx).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*p).stats).write(RunnerStats::default());
            Ok(slot.assume_init_mut())
        }
    }

    /// Fails to compile when a field is added to [`Runner`] and not to [`Runner::new_in`].
    #[allow(dead_code)]
    fn fields_check(self) {
        let Runner {
            client: _,
            state: _,
            token: _,
            filter: _,
            token_acked: _,
            aliases: _,
            alias_next: _,
            sync_timeout_ms: _,
            sync_interval_ms: _,
            sync_due: _,
            since_advanced: _,
            send: _,
            sync: _,
            push_refresh_ms: _,
            refresh_due: _,
            push_tables: _,
            saved_epoch: _,
            users: _,
            #[cfg(feature = "http")]
                body_len: _,
            rx: _,
            scratch: _,
            #[cfg(feature = "http")]
                body: _,
            tx: _,
            stats: _,
        } = self;
    }

    /// The sync state (rooms, events, outbox).
    pub fn state(&self) -> &DefaultSyncState {
        &self.state
    }

    /// The sync state, to queue sends and take events.
    pub fn state_mut(&mut self) -> &mut DefaultSyncState {
        &mut self.state
    }

    /// Counters.
    pub fn stats(&self) -> RunnerStats {
        self.stats
    }

    /// Chooses how sync results arrive: pushed by the gateway (`Some(refresh_ms)`, the
    /// default with [`PUSH_REFRESH_MS`]; the device profile of [`lowband_codec::lb::dev`], sends
    /// of texts compact too) or polled with `/sync` requests (`None`).
    pub fn set_push(&mut self, refresh_ms: Option<u64>) {
        self.push_refresh_ms = refresh_ms;
    }

    /// Registers for pushed sync again at the next [`poll`](Self::poll) (what the periodic
    /// refresh does; for an application that suspects the gateway restarted).
    pub fn refresh_push(&mut self, now: u64) {
        self.refresh_due = now;
    }

    /// Whether the gateway acknowledged the registration for pushed sync (and it was not
    /// dropped since).
    pub fn push_registered(&self) -> bool {
        matches!(self.sync, Some((_, Pending::Observing)))
    }

    /// The link session's counters (`handshakes`: 0 in a boot that resumed its session).
    pub fn session_stats(&self) -> lowband_codec::session::SessionStats {
        self.client.stats()
    }

    /// Whether the link session is up (right after [`Runner::new_in`]: it was resumed from
    /// the saved state, no handshake).
    pub fn is_connected(&self) -> bool {
        self.client.is_established()
    }

    /// Asks for a sync as soon as possible (e.g. after the application queued nothing but
    /// wants news).
    pub fn sync_now(&mut self, now: u64) {
        self.sync_due = self.sync_due.min(now);
    }

    /// When to call [`poll`](Self::poll) again at the latest (a byte arriving is another reason).
    pub fn poll_timeout(&self) -> u64 {
        let mut t = self.client.poll_timeout().unwrap_or(u64::MAX);
        if self.sync.is_none() {
            t = t.min(self.sync_due);
        }
        if matches!(self.sync, Some((_, Pending::Observing))) && self.push_refresh_ms.is_some() {
            t = t.min(self.refresh_due);
        }
        t
    }

    /// Reads every packet the link has, feeds the session, applies responses, queues the next
    /// requests and sends every packet that is due.
    ///
    /// # Errors
    ///
    /// The link's error (the state is consistent; call again when the link is back).
    ///
    /// `inflate` is where a deflated response body is inflated: [`INFLATE_DICT_LEN`] bytes of
    /// preset dictionary plus the body's CBOR (e.g. a `static` buffer, or the boot's scratch).
    /// An empty slice works as long as the gateway sends plain (not deflated) bodies; a body that
    /// does not fit fails the sync (counted in [`RunnerStats::failures`]).
    pub fn poll<L: PacketLink>(
        &mut self,
        now: u64,
        link: &mut L,
        inflate: &mut [u8],
    ) -> Result<Progress, L::Error> {
        let mut progress = Progress::default();
        while let Some(n) = link.recv(&mut self.rx)? {
            progress.packets += 1;
            self.stats.packets_in += 1;
            self.stats.bytes_in += n as u64;
            // The gateway's fragmentation layer (frame::frag): a packet starting with a byte
            // >= 0xC0 comes behind the single-fragment header; real fragments are not
            // reassembled here (a device's gateway link MTU must hold its packets).
            let start = match self.rx.first() {
                Some(&frame::frag::SINGLE) => 1,
                Some(&b) if b & frame::frag::HEADER_MARK == frame::frag::HEADER_MARK => continue,
                _ => 0,
            };
            let base = self.scratch.as_ptr() as usize;
            let received = self
                .client
                .handle_packet(now, &self.rx[start..n], &mut self.scratch);
            match received {
                Some(Received::Response(r)) => {
                    let r = Resp::copy(&r, base);
                    if self.on_response(now, &r, inflate) {
                        progress.changed = true;
                    }
                }
                Some(Received::Request(req)) => {
                    // A wake is a POST whose payload is the one byte of `Op::Wake` (compared
                    // as bytes: no operation parser is linked).
                    let wake = req.code == Code::POST && req.payload == [dev::OP_WAKE << 4];
                    let to = req.responder;
                    self.on_request(now, &to, wake);
                }
                None => {}
            }
            self.drain_events(now);
        }
        progress.since_advanced = core::mem::take(&mut self.since_advanced);
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
            self.drain_events(now);
        }
        self.queue_requests(now);
        // The session goes into the state whenever the state changed (the export's next
        // message ID stays current) and at every new key epoch; nothing is sent in a new
        // epoch before the state holding it was saved (the caller saves when `changed`, before
        // polling again): a resumed session never reuses a nonce (Client::export).
        let epoch = self.client.tx_epoch();
        if epoch.is_some() && (progress.changed || epoch != self.saved_epoch) {
            self.export_session();
            let new_epoch = epoch != self.saved_epoch;
            self.saved_epoch = epoch;
            progress.changed = true;
            if new_epoch {
                return Ok(progress);
            }
        }
        while let Some(n) = self.client.poll_transmit(now, &mut self.tx[1..]) {
            self.stats.packets_out += 1;
            self.stats.bytes_out += n as u64;
            let p = if self.tx[1] & frame::frag::HEADER_MARK == frame::frag::HEADER_MARK {
                self.tx[0] = frame::frag::SINGLE;
                &self.tx[..=n]
            } else {
                &self.tx[1..=n]
            };
            link.send(now, p)?;
        }
        Ok(progress)
    }

    /// The session's export into the state (not inlined: the export buffer stays out of the
    /// poll loop's frame).
    #[inline(never)]
    fn export_session(&mut self) {
        let mut export = [0u8; CLIENT_EXPORT_LEN];
        if self.client.export(&mut export) {
            self.state.set_session(&export);
        }
    }

    fn drain_events(&mut self, now: u64) {
        while let Some(e) = self.client.poll_event() {
            match e {
                SessionEvent::Established(_) => {
                    // A new session: saved before its first transport packet.
                    self.saved_epoch = None;
                    // A new session: the gateway knows no token number yet (and aliases are
                    // defined again, to be safe).
                    self.token_acked = false;
                    self.forget_aliases();
                    // The gateway's new session holds no observation: register again.
                    if let Some((h, Pending::Register(_) | Pending::Observing)) = self.sync {
                        self.client.coap().cancel(h);
                        self.sync = None;
                        self.sync_due = now;
                    }
                }
                SessionEvent::Coap(lowband_codec::coap::Event::Failed { handle, .. }) => {
                    self.stats.failures += 1;
                    if self.send.is_some_and(|(h, _)| h == handle) {
                        self.send = None;
                    }
                    if self.sync.is_some_and(|(h, _)| h == handle) {
                        self.sync = None;
                        self.sync_due = now + self.sync_interval_ms.max(1000);
                    }
                }
                _ => {}
            }
        }
    }

    /// A request from the gateway: only a wake ([`Op::Wake`]: `serve` restarted and lost
    /// the observation and the token number) is one, answered 2.04; the registration is
    /// dropped and made again at once with the token and fresh room and user numbers
    /// (`keep = false`: the tables are forgotten when it is acknowledged), the aliases are
    /// defined again. Anything else is answered 4.04. Duplicates are answered by CoAP.
    fn on_request(&mut self, now: u64, to: &lowband_codec::coap::Responder, wake: bool) {
        let code = if wake { Code::CHANGED } else { Code::NOT_FOUND };
        let _ = self
            .client
            .coap()
            .respond(now, to, code, Options::NONE, &[]);
        if !wake {
            return;
        }
        if let Some((h, Pending::Register(_) | Pending::Observing)) = self.sync {
            self.client.coap().cancel(h);
            self.sync = None;
        }
        self.token_acked = false;
        self.push_tables = false;
        self.forget_aliases();
        self.sync_due = now;
    }

    /// Handles one response (copied out of the scratch as offsets); `true` if the state
    /// changed.
    fn on_response(&mut self, now: u64, r: &Resp, inflate: &mut [u8]) -> bool {
        #[cfg(not(feature = "http"))]
        let _ = inflate;
        if let Some((h, p @ (Pending::Register(_) | Pending::Observing))) = self.sync {
            if h == r.handle {
                return self.on_push(now, r, p);
            }
        }
        let (is_send, pending) = if self.send.is_some_and(|(h, _)| h == r.handle) {
            (true, self.send.take())
        } else if self.sync.is_some_and(|(h, _)| h == r.handle) {
            (false, self.sync.take())
        } else {
            return false;
        };
        let Some((_, pending)) = pending else {
            return false;
        };
        if r.code == lb::AUTH_UNKNOWN && r.alias_option {
            // The gateway lost our aliases: define them again, retry.
            self.forget_aliases();
            self.stats.failures += 1;
            if !is_send {
                self.sync_due = now;
            }
            return false;
        }
        if let Pending::Send {
            alias: Some(slot), ..
        } = pending
        {
            if let Some(a) = self.aliases.get_mut(usize::from(slot)) {
                a.1 = true;
            }
        }
        if r.code == lb::AUTH_UNKNOWN && r.auth_option {
            // The gateway lost our token number: register it again, retry.
            self.token_acked = false;
            self.stats.failures += 1;
            if !is_send {
                self.sync_due = now;
            }
            return false;
        }
        let registered = match pending {
            Pending::Send { registered, .. } => registered,
            #[cfg(feature = "http")]
            Pending::Sync { registered, .. } => registered,
            _ => false,
        };
        if registered {
            self.token_acked = true;
        }
        let status = lb::code_to_status(r.code, r.status);
        match pending {
            // Handled by on_push before.
            Pending::Register(_) | Pending::Observing => false,
            Pending::Send { txn, .. } => {
                if (200..300).contains(&status) {
                    self.stats.sent += 1;
                    self.acknowledge_done(txn)
                } else if status == 429 || status >= 500 {
                    self.stats.failures += 1;
                    false
                } else {
                    // Refused for good (403 not in the room, 400 bad event): dropped rather
                    // than blocking the outbox forever.
                    self.stats.refused += 1;
                    self.state.acknowledge(txn)
                }
            }
            #[cfg(feature = "http")]
            Pending::Sync { .. } | Pending::Block { .. } => {
                self.on_sync_response(now, r, pending, inflate)
            }
        }
    }

    /// An outbox entry the homeserver carried out: dropped from the outbox; a join makes the
    /// room joined and a leave forgets it right away (pushed sync reports neither: the
    /// device's own membership changes are what it asked for).
    fn acknowledge_done(&mut self, txn: TxnId) -> bool {
        let mut room: Text<ROOM_ID_LEN> = Text::new();
        let join = match self
            .state
            .outgoing()
            .iter()
            .find(|o| o.txn == txn)
            .map(|o| &o.cmd)
        {
            Some(Command::Join { room: r }) => {
                room = *r;
                Some(true)
            }
            Some(Command::Leave { room: r }) => {
                room = *r;
                Some(false)
            }
            _ => None,
        };
        match join {
            Some(true) => {
                self.state.apply(SyncUpdate::Joined {
                    room: room.as_str(),
                    short: None,
                });
            }
            Some(false) => {
                self.state.apply(SyncUpdate::Left {
                    room: RoomRef::Id(room.as_str()),
                });
            }
            None => {}
        }
        self.state.acknowledge(txn)
    }

    /// A response or notification of the pushed-sync registration; `true` if the state changed.
    // Not inlined: its buffers are not part of the poll loop's frame (stack, see README).
    #[inline(never)]
    fn on_push(&mut self, now: u64, r: &Resp, pending: Pending) -> bool {
        let retry_at = now + self.sync_interval_ms.max(1000);
        if r.code.class() != 2 || r.observe.is_none() {
            // Refused, or the gateway did not keep the observation: start over.
            self.stats.failures += 1;
            if r.code == lb::AUTH_UNKNOWN && r.auth_option {
                self.token_acked = false;
            }
            if let Some((h, _)) = self.sync.take() {
                self.client.coap().cancel(h);
            }
            self.sync_due = retry_at;
            return false;
        }
        if let Pending::Register(k) = pending {
            if k.registered {
                self.token_acked = true;
            }
            if !k.keep {
                // A registration after a reboot starts with empty number tables on both ends.
                for u in self.users.iter_mut() {
                    *u = Text::new();
                }
                self.state.forget_short_ids();
            }
            self.push_tables = true;
            self.sync = Some((r.handle, Pending::Observing));
            self.refresh_due = now + self.push_refresh_ms.unwrap_or(u64::MAX / 4);
        }
        let Some(payload) = self
            .scratch
            .get(r.payload_off..r.payload_off + r.payload_len)
        else {
            return false;
        };
        if payload.is_empty() {
            return false;
        }
        // The item borrows the scratch; copy it out to apply it to the state.
        let mut item_buf = [0u8; COAP_MTU + 2 * ROOM_ID_LEN];
        let Some(dst) = item_buf.get_mut(..payload.len()) else {
            self.stats.failures += 1;
            return false;
        };
        dst.copy_from_slice(payload);
        match DevItem::parse(&item_buf[..payload.len()]) {
            Ok(it) => self.apply_item(&it),
            Err(_) => {
                self.stats.failures += 1;
                false
            }
        }
    }

    /// Applies one pushed item unless it was applied before; `true` if the state changed.
    fn apply_item(&mut self, it: &DevItem<'_>) -> bool {
        let n = match dev::next_seq(self.state.push_seq(), it.seq) {
            Seq::Old => return false,
            Seq::Next(n) | Seq::Gap(n) => n,
        };
        let u = usize::from(it.sender);
        if let (Some(def), Some(slot)) = (it.sender_def, self.users.get_mut(u)) {
            *slot = Text::truncated(def).0;
        }
        let sender = self.users.get(u).copied().unwrap_or_default();
        let short = u16::from(it.room);
        let room = match it.room_def {
            Some(id) => RoomRef::Id(id),
            None => RoomRef::Short(short),
        };
        match it.kind {
            DevKind::Text | DevKind::Notice => {
                if let Some(id) = it.room_def {
                    self.state.apply(SyncUpdate::Joined {
                        room: id,
                        short: Some(short),
                    });
                }
                let mut id: Text<12> = Text::new();
                let _ = id.write_str("^").and_then(|()| id.push_u32(n));
                self.state.apply(SyncUpdate::Event(EventIn {
                    room: RoomRef::Short(short),
                    event_id: id.as_str(),
                    sender: sender.as_str(),
                    kind: "m.room.message",
                    msgtype: Some(if it.kind == DevKind::Text {
                        "m.text"
                    } else {
                        "m.notice"
                    }),
                    body: Body::Text(it.body),
                    ts: 0,
                }));
            }
            DevKind::Invite => {
                if let Some(id) = it.room_def {
                    self.state.apply(SyncUpdate::Invited {
                        room: id,
                        inviter: sender.as_str(),
                    });
                }
            }
            DevKind::Left => {
                self.state.apply(SyncUpdate::Left { room });
            }
        }
        self.state.set_push_seq(n);
        self.stats.syncs += 1;
        true
    }

    /// Registers for pushed sync (Observe, RFC 7641 §3.1) with the number of the last item
    /// applied. The since token goes along only before the first item: a gateway that lost
    /// the device's cursor then starts from "now" rather than replaying commands handled
    /// long ago.
    // Not inlined: its buffers are not part of the poll loop's frame (stack, see README).
    #[inline(never)]
    fn queue_register(&mut self, now: u64) -> Result<(), ()> {
        let since = if self.state.push_seq() == 0 {
            self.state.since().unwrap_or("")
        } else {
            ""
        };
        let mut payload = [0u8; SINCE_LEN + FILTER_LEN + 2];
        let pn = dev::write_register(since, self.filter.as_str(), &mut payload).map_err(|_| ())?;
        let mut op = [0u8; 11];
        let keep = self.push_tables;
        let on = Op::Sync {
            last: self.state.push_seq(),
            keep,
        }
        .write(&mut op)
        .map_err(|_| ())?;
        let registered = !self.token_acked;
        let mut auth = [0u8; 1 + TOKEN_LEN];
        let an = self.auth().write(&mut auth).map_err(|_| ())?;
        let with_auth = [
            Opt::bytes(opt::AUTH, &auth[..an]),
            Opt::uint(lowband_codec::coap::opt::OBSERVE, 0),
            Opt::bytes(opt::DEVICE, &op[..on]),
        ];
        let opts: &[Opt<'_>] = if registered {
            &with_auth
        } else {
            &with_auth[1..]
        };
        let mut req = Request::con(Code::GET, Options::List(opts), &payload[..pn]);
        req.timeout = Some(120_000);
        let h = self.client.request(now, req).map_err(|_| ())?;
        self.sync = Some((h, Pending::Register(RegisterKind { registered, keep })));
        Ok(())
    }

    fn forget_aliases(&mut self) {
        for a in self.aliases.iter_mut() {
            a.1 = false;
        }
    }

    /// The alias slot of `room`: its slot, a free one, or (all [`ALIASES`] in use) the one
    /// after the slot given last, redefined (the gateway replaces a slot's room when a request
    /// defines it again; one send is in flight at a time, so no request still names the old
    /// room).
    fn alias_slot(&mut self, room: &str) -> u8 {
        if let Some(i) = self.aliases.iter().position(|(t, _)| t.as_str() == room) {
            // INVARIANT: ALIASES <= 16.
            return i as u8;
        }
        let t = Text::truncated(room).0;
        if self.aliases.push((t, false)).is_ok() {
            return (self.aliases.len() - 1) as u8;
        }
        let i = usize::from(self.alias_next) % ALIASES;
        self.alias_next = self.alias_next.wrapping_add(1);
        self.aliases[i] = (t, false);
        i as u8
    }

    fn auth(&self) -> Auth<'_> {
        if self.token_acked {
            Auth::Number(TOKEN_NUMBER)
        } else {
            Auth::Register(TOKEN_NUMBER, self.token.as_str())
        }
    }

    fn queue_requests(&mut self, now: u64) {
        if self.send.is_none() {
            self.queue_send(now);
        }
        if let (Some(_), Some((h, Pending::Observing))) = (self.push_refresh_ms, self.sync) {
            if now >= self.refresh_due {
                self.client.coap().cancel(h);
                self.sync = None;
                self.sync_due = now;
            }
        }
        if self.sync.is_none() && now >= self.sync_due {
            #[cfg(feature = "http")]
            let r = if self.push_refresh_ms.is_none() {
                self.queue_sync(now)
            } else {
                self.queue_register(now)
            };
            #[cfg(not(feature = "http"))]
            let r = self.queue_register(now);
            if r.is_err() {
                self.stats.failures += 1;
                self.sync_due = now + self.sync_interval_ms.max(1000);
            }
        }
    }

    fn queue_send(&mut self, now: u64) {
        let Some(room) = self.state.next_outgoing().map(|o| {
            let mut t: Text<ROOM_ID_LEN> = Text::new();
            let _ = t.write_str(o.cmd.room());
            t
        }) else {
            return;
        };
        let slot = self.alias_slot(room.as_str());
        #[cfg(feature = "http")]
        if self.push_refresh_ms.is_none() {
            // The polling profile: HTTP requests through the gateway's mapping.
            self.queue_send_http(now, slot);
            return;
        }
        self.queue_send_op(now, slot);
    }

    /// Sends the next outbox entry as a device-profile operation ([`lowband_codec::lb::dev`]):
    /// a `PUT` whose payload is the operation (room alias slot, transaction id as two varints
    /// where the homeserver needs one) and its argument (the text, or the event type and the
    /// packed content); no path, no JSON, the token implied by the session once registered.
    // Not inlined: its buffers are not part of the poll loop's frame (stack, see README).
    #[inline(never)]
    fn queue_send_op(&mut self, now: u64, slot: u8) {
        let Some(out) = self.state.next_outgoing() else {
            return;
        };
        let txn = out.txn;
        let mut payload = [0u8; 16 + EVENT_TYPE_LEN + crate::outbox::OUT_BODY_LEN];
        let op = match &out.cmd {
            Command::Message { kind, content, .. } => match content {
                OutContent::Text(_) if kind.as_str() == "m.room.message" => Op::Text {
                    slot,
                    boot: txn.boot,
                    seq: txn.seq,
                },
                OutContent::Cbor(_) => Op::Event {
                    slot,
                    boot: txn.boot,
                    seq: txn.seq,
                },
                // A text is only queued as m.room.message (SyncState::send_text).
                OutContent::Text(_) => {
                    self.drop_unsendable(txn);
                    return;
                }
            },
            Command::Join { .. } => Op::Join { slot },
            Command::Leave { .. } => Op::Leave { slot },
            Command::Typing { typing, .. } => Op::Typing {
                slot,
                timeout_ms: if *typing { TYPING_TIMEOUT_MS } else { 0 },
            },
        };
        let Ok(on) = op.write(&mut payload) else {
            self.drop_unsendable(txn);
            return;
        };
        let rest = match &out.cmd {
            Command::Message {
                content: OutContent::Text(text),
                ..
            } => match payload.get_mut(on..on + text.len()) {
                Some(dst) => {
                    dst.copy_from_slice(text.as_str().as_bytes());
                    Ok(text.len())
                }
                None => Err(()),
            },
            Command::Message {
                kind,
                content: OutContent::Cbor(c),
                ..
            } => dev::write_event(kind.as_str(), c.as_slice(), &mut payload[on..]).map_err(|_| ()),
            _ => Ok(0),
        };
        let Ok(rest) = rest else {
            self.drop_unsendable(txn);
            return;
        };
        let payload_len = on + rest;
        let mut def = [0u8; 1 + ROOM_ID_LEN];
        let mut def_len = 0;
        let mut alias = None;
        if let Some((t, acked)) = self.aliases.get(usize::from(slot)) {
            if !acked {
                def[0] = slot;
                def[1..1 + t.len()].copy_from_slice(t.as_str().as_bytes());
                def_len = 1 + t.len();
                alias = Some(slot);
            }
        }
        let registered = !self.token_acked;
        let mut auth = [0u8; 1 + TOKEN_LEN];
        let an = self.auth().write(&mut auth).unwrap_or(0);
        let mut opts: heapless::Vec<Opt<'_>, 2> = heapless::Vec::new();
        // INVARIANT: at most 2 options, pushed in option-number order (2, 8).
        if registered {
            let _ = opts.push(Opt::bytes(opt::AUTH, &auth[..an]));
        }
        if alias.is_some() {
            let _ = opts.push(Opt::bytes(opt::ALIAS, &def[..def_len]));
        }
        let req = Request::con(Code::PUT, Options::List(&opts), &payload[..payload_len]);
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
            // Longer than the link's CoAP MTU: it can never go out.
            Err(lowband_codec::coap::SendError::TooBig) => self.drop_unsendable(txn),
            Err(_) => {} // no free slot: next poll
        }
    }

    /// An outbox entry that can never go out (does not fit a request): dropped, counted.
    fn drop_unsendable(&mut self, txn: TxnId) {
        self.stats.refused += 1;
        self.state.acknowledge(txn);
    }
}

/// A response reduced to what outlives the receive scratch: offsets into it.
#[derive(Debug, Clone, Copy)]
struct Resp {
    handle: RequestHandle,
    code: Code,
    status: Option<u32>,
    auth_option: bool,
    alias_option: bool,
    observe: Option<u32>,
    #[cfg(feature = "http")]
    block2: Option<lowband_codec::coap::BlockOpt>,
    #[cfg(feature = "http")]
    body_id: Option<u32>,
    payload_off: usize,
    payload_len: usize,
}

impl Resp {
    fn copy(r: &IncomingResponse<'_>, scratch_base: usize) -> Self {
        let off = (r.payload.as_ptr() as usize).checked_sub(scratch_base);
        Resp {
            handle: r.handle,
            code: r.code,
            status: r.options.uint(opt::STATUS),
            auth_option: r.options.first(opt::AUTH).is_some(),
            alias_option: r.options.first(opt::ALIAS).is_some(),
            observe: r.observe,
            #[cfg(feature = "http")]
            block2: lowband_codec::coap::BlockOpt::from_options(&r.options, opt::BLOCK2)
                .ok()
                .flatten(),
            #[cfg(feature = "http")]
            body_id: r.options.uint(opt::BODY),
            // A payload outside the scratch (cannot happen: the session decrypts into it) reads
            // as out of range and fails the exchange.
            payload_off: off.unwrap_or(usize::MAX / 2),
            payload_len: r.payload.len(),
        }
    }
}
