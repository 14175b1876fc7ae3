//! The Matrix application: the device joins its room, posts a sensor reading every interval and
//! answers room commands, through the device [`Runner`] over the board's link.
//!
//! ```text
//!  boot:  state <- flash (A/B) · boot counter advanced · Noise session to the pinned gateway
//!         join the room unless joined (or the join is still in the outbox)
//!  loop:  runner.poll (link in/out, sync applied, outbox sent)
//!         room messages "!status" / "!led on|off" / "!interval N" -> applied, reply queued
//!         reading due -> "t=21.5C" queued
//!         state changed -> saved to flash (the outbox survives a reboot: same transaction
//!         ids, so a resend is deduplicated by the homeserver)
//! ```

use core::mem::MaybeUninit;
use lowband_codec::coap;
use lowband_codec::noise::link::{
    InitiatorConfig, LinkPattern, LinkVersion, RetransmitConfig, TransportConfig,
};
use lowband_codec::noise::{Keypair, PublicKey};
use lowband_codec::session::DeviceClient;

use lowband_device::runner::{NewInError, PacketLink, Runner, RunnerConfig, SerialLink};
use lowband_device::text::Text;
use lowband_device::{
    AbStore, BootCounter, DefaultSyncState, EphemeralRng, StoreError, DEFAULT_RECORD_MAX,
};

use crate::app::ReadingTimer;
use crate::board::{Board, Clock, Datagram, Flash, Led, Parts, Provisioned, Sensor};
use crate::command::{error_reply, Command, Settings};
use crate::config::CONTROLLERS;

/// Longest time a committed since token stays unsaved (flash wear: empty syncs do not each
/// cost a page erase; a lost token costs one re-sync, whose events the dedupe window knows).
pub const SINCE_SAVE_MS: u64 = 60_000;

/// Record kind of the firmware's settings (LED, interval) on their own A/B pages (the
/// device's kinds are 1 and 2, [`lowband_device::persist`]).
pub const KIND_SETTINGS: u8 = 3;
/// Longest controller user id kept.
pub const USER_ID_LEN: usize = 64;

/// Link protocol and dictionary versions: the device profile of `lowband serve`
/// ([`lowband_codec::lb::dev::LINK_VERSION`]: 4-byte tags on transport packets).
pub const LINK_VERSION: LinkVersion = lowband_codec::lb::dev::LINK_VERSION;

/// What the application needs besides the board.
#[derive(Debug, Clone, Copy)]
pub struct AppConfig<'a> {
    /// The room to join and post to.
    pub room: &'a str,
    /// The device account's access token.
    pub access_token: &'a str,
    /// Sync filter (an id from `POST /user/{userId}/filter`, or short inline JSON).
    pub filter: &'a str,
    /// Sync long-poll timeout in milliseconds.
    pub sync_timeout_ms: u32,
    /// Pause between syncs in milliseconds.
    pub sync_interval_ms: u64,
    /// Seconds between readings until `!interval` changes it.
    pub interval_s: u32,
    /// Link bit rate, for the handshake retransmission timer.
    pub link_bps: u32,
}

/// Why the application stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppError<F, L> {
    /// Loading or saving the state, or counting the boot, failed.
    Store(StoreError<F>),
    /// The link failed.
    Link(L),
    /// The provisioned keys or the configuration are unusable.
    Config,
}

/// What one [`MatrixApp::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Polled {
    /// Link packets handled.
    pub packets: usize,
    /// Commands answered.
    pub commands: u32,
    /// Readings queued.
    pub readings: u32,
    /// The state was saved to flash.
    pub saved: bool,
}

/// A [`Datagram`] radio as the runner's [`PacketLink`] (one packet per datagram; packets longer
/// than the radio's MTU are not sent: use fragmentation, `lowband_codec::frame::frag`, then).
#[derive(Debug)]
pub struct DatagramLink<D>(pub D);

impl<D: Datagram> PacketLink for DatagramLink<D> {
    type Error = D::Error;
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, D::Error> {
        self.0.try_recv(buf)
    }
    fn send(&mut self, _now: u64, packet: &[u8]) -> Result<(), D::Error> {
        if packet.len() > self.0.mtu() {
            return Ok(());
        }
        self.0.send(packet)
    }
}

/// The device application over a board.
///
/// # Call protocol
///
/// [`boot`](Self::boot) once; then [`poll`](Self::poll) in the main loop (it never blocks on
/// input); sleep until [`poll_timeout`](Self::poll_timeout) or a byte arrives.
pub struct MatrixApp<B: Board> {
    runner: Runner<EphemeralRng>,
    link: SerialLink<B::Link>,
    clock: B::Clock,
    flash: B::Flash,
    boot_flash: B::Flash,
    settings_flash: B::Flash,
    led: B::Led,
    sensor: B::Sensor,
    room: Text<48>,
    controllers: heapless::Vec<Text<USER_ID_LEN>, CONTROLLERS>,
    settings_unsaved: bool,
    settings: Settings,
    timer: ReadingTimer,
    last_reading: Option<i32>,
    last_save_ms: u64,
    since_unsaved: bool,
}

/// The session client for this boot, written into `out` (the runner's field). Not inlined:
/// its frame (the client by value, as `DeviceClient::new` returns it, and the key derivations
/// below it) is popped before the application goes on, and not added to the frames of the
/// state restore that runs before it.
#[inline(never)]
fn new_client(
    out: &mut MaybeUninit<DeviceClient<EphemeralRng>>,
    provisioned: &Provisioned,
    boot: BootCounter,
    link_bps: u32,
) -> Result<(), ()> {
    let boots = boot.get();
    let rng = EphemeralRng::new(&provisioned.seed, boot);
    let init = InitiatorConfig {
        pattern: LinkPattern::IK,
        version: LINK_VERSION,
        local: Keypair::from_secret(provisioned.static_key),
        remote: PublicKey(provisioned.gateway_key),
        retransmit: RetransmitConfig::for_link_rate(link_bps, 0),
        transport: TransportConfig::default(),
    };
    let mut s8 = [0u8; 8];
    s8.copy_from_slice(&provisioned.seed[..8]);
    let seed = u64::from(boots) ^ u64::from_le_bytes(s8);
    // Two exchanges at once: a send does not wait behind a long-polling sync.
    let mut params = coap::TransmissionParams::for_link(link_bps, 128, 0);
    params.nstart = 2;
    let coap_cfg = coap::Config {
        params,
        seed,
        token_len: 1,
        extra_options: &[],
    };
    // In place: the ~2.6 KiB client never sits on the stack by value.
    DeviceClient::new_in(out, init, coap_cfg, rng).map_err(|_| ())?;
    Ok(())
}

impl<B: Board> core::fmt::Debug for MatrixApp<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MatrixApp")
            .field("room", &self.room)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

type Err<B> = AppError<<<B as Board>::Flash as Flash>::Error, embedded_io::ErrorKind>;

impl<B: Board> MatrixApp<B> {
    /// Boots: restores the state from `parts.flash` (through `scratch`, at least
    /// [`DEFAULT_RECORD_MAX`] bytes, needed only here, unless the runner's unused memory holds
    /// the record: then `scratch` may be empty), advances the boot counter, starts the session
    /// and queues the room join if needed. The application is returned by value:
    /// on a small board use [`boot_in`](Self::boot_in).
    ///
    /// # Errors
    ///
    /// [`AppError::Store`] if the state cannot be loaded or the boot not counted (the boot
    /// number must not be used then), [`AppError::Config`] for bad keys or settings.
    pub fn boot(parts: Parts<B>, cfg: &AppConfig<'_>, scratch: &mut [u8]) -> Result<Self, Err<B>> {
        let mut slot = MaybeUninit::uninit();
        Self::boot_in(&mut slot, parts, cfg, scratch)?;
        // SAFETY: boot_in returned Ok: the slot is initialised.
        Ok(unsafe { slot.assume_init() })
    }

    /// [`boot`](Self::boot) in place (e.g. into a `static`): the application (about 11 KiB)
    /// never passes through the stack, which holds only `scratch`'s caller frame, the session
    /// client while it is built (~3 KiB) and the usual call frames.
    ///
    /// # Errors
    ///
    /// As [`boot`](Self::boot); the slot is then not initialised.
    pub fn boot_in<'s>(
        slot: &'s mut MaybeUninit<Self>,
        mut parts: Parts<B>,
        cfg: &AppConfig<'_>,
        scratch: &mut [u8],
    ) -> Result<&'s mut Self, Err<B>> {
        let room = Text::exact(cfg.room).ok_or(AppError::Config)?;
        let rcfg = RunnerConfig {
            access_token: cfg.access_token,
            sync_timeout_ms: cfg.sync_timeout_ms,
            sync_interval_ms: cfg.sync_interval_ms,
            filter: cfg.filter,
        };
        let mut boots = 0;
        let p = slot.as_mut_ptr();
        // SAFETY: a pointer to the slot's `runner` field, as an uninitialised Runner.
        let runner_slot = unsafe {
            &mut *(core::ptr::addr_of_mut!((*p).runner) as *mut MaybeUninit<Runner<EphemeralRng>>)
        };
        let load = |state: &mut DefaultSyncState, spare: &mut [u8]| -> Result<_, Err<B>> {
            // The record goes through the runner's unused memory if it is big enough.
            let scratch = if spare.len() >= DEFAULT_RECORD_MAX {
                spare
            } else if scratch.len() >= DEFAULT_RECORD_MAX {
                scratch
            } else {
                return Err(AppError::Config);
            };
            // A state that does not load (corrupt pages, older format) starts empty.
            let _ = state.load_into(&mut AbStore::new(&mut parts.flash), scratch);
            let boot = BootCounter::advance(&mut AbStore::new(&mut parts.boot_flash), state.boot())
                .map_err(AppError::Store)?;
            boots = boot.get();
            state.begin_boot(boots).map_err(|_| AppError::Config)?;
            let joined = state.room(cfg.room).is_some()
                || state.outgoing().iter().any(|o| {
                    matches!(&o.cmd, lowband_device::Command::Join { room } if room.as_str() == cfg.room)
                });
            if !joined {
                state.join(cfg.room).map_err(|_| AppError::Config)?;
            }
            Ok(boot)
        };
        let provisioned = &parts.provisioned;
        let client = |boot: BootCounter, out: &mut MaybeUninit<DeviceClient<EphemeralRng>>| {
            new_client(out, provisioned, boot, cfg.link_bps).map_err(|()| AppError::Config)
        };
        Runner::new_in(runner_slot, &rcfg, load, client).map_err(|e| match e {
            NewInError::Load(e) => e,
            NewInError::Config(_) => AppError::Config,
        })?;
        let now = parts.clock.now_ms();
        // Settings changed by commands survive reboots; the provisioned interval is the default.
        let (interval_s, led) =
            load_settings(&mut parts.settings_flash).unwrap_or((cfg.interval_s.max(1), false));
        parts.led.set(led);
        // SAFETY: every field but `runner` (written above) is written once through its own
        // pointer before the slot is read as a MatrixApp.
        let app = unsafe {
            core::ptr::addr_of_mut!((*p).link).write(SerialLink::new(parts.link));
            core::ptr::addr_of_mut!((*p).clock).write(parts.clock);
            core::ptr::addr_of_mut!((*p).flash).write(parts.flash);
            core::ptr::addr_of_mut!((*p).boot_flash).write(parts.boot_flash);
            core::ptr::addr_of_mut!((*p).settings_flash).write(parts.settings_flash);
            core::ptr::addr_of_mut!((*p).led).write(parts.led);
            core::ptr::addr_of_mut!((*p).sensor).write(parts.sensor);
            core::ptr::addr_of_mut!((*p).room).write(room);
            core::ptr::addr_of_mut!((*p).controllers).write(heapless::Vec::new());
            core::ptr::addr_of_mut!((*p).settings_unsaved).write(false);
            core::ptr::addr_of_mut!((*p).settings).write(Settings {
                boots,
                interval_s,
                led,
            });
            core::ptr::addr_of_mut!((*p).timer).write(ReadingTimer::new(now, interval_s));
            core::ptr::addr_of_mut!((*p).last_reading).write(None);
            core::ptr::addr_of_mut!((*p).last_save_ms).write(now);
            core::ptr::addr_of_mut!((*p).since_unsaved).write(false);
            slot.assume_init_mut()
        };
        app.save().map_err(AppError::Store)?;
        Ok(app)
    }

    /// Fails to compile when a field is added to [`MatrixApp`] and not to
    /// [`MatrixApp::boot_in`].
    #[allow(dead_code)]
    fn fields_check(self) {
        let MatrixApp {
            runner: _,
            link: _,
            clock: _,
            flash: _,
            boot_flash: _,
            settings_flash: _,
            led: _,
            sensor: _,
            room: _,
            controllers: _,
            settings_unsaved: _,
            settings: _,
            timer: _,
            last_reading: _,
            last_save_ms: _,
            since_unsaved: _,
        } = self;
    }

    /// Powers off: the state pages and the boot-counter pages back.
    pub fn into_pages(self) -> (B::Flash, B::Flash) {
        (self.flash, self.boot_flash)
    }

    /// Powers off: the state, boot-counter and settings pages back.
    pub fn into_all_pages(self) -> (B::Flash, B::Flash, B::Flash) {
        (self.flash, self.boot_flash, self.settings_flash)
    }

    /// Only these users' `!commands` are run (at most [`CONTROLLERS`], exact user ids); other
    /// senders' messages are read and ignored, unanswered. With none set (the default) every
    /// room member commands the device: provision controllers on a real device.
    ///
    /// # Errors
    ///
    /// [`AppError::Config`] for more than [`CONTROLLERS`] ids or one longer than
    /// [`USER_ID_LEN`].
    pub fn set_controllers(&mut self, users: &[&str]) -> Result<(), Err<B>> {
        self.controllers.clear();
        for u in users {
            let t = Text::exact(u).ok_or(AppError::Config)?;
            self.controllers.push(t).map_err(|_| AppError::Config)?;
        }
        Ok(())
    }

    /// The runner (stats, state).
    pub fn runner(&self) -> &Runner<EphemeralRng> {
        &self.runner
    }

    /// Current settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// When to poll again at the latest.
    pub fn poll_timeout(&self) -> u64 {
        self.runner.poll_timeout().min(self.timer.poll_timeout())
    }

    fn save(&mut self) -> Result<(), StoreError<<B::Flash as Flash>::Error>> {
        self.runner
            .state()
            .save_to(&mut AbStore::new(&mut self.flash))
    }

    /// One turn of the main loop. `inflate` as in [`Runner::poll`].
    ///
    /// # Errors
    ///
    /// [`AppError::Link`] when the link failed, [`AppError::Store`] when saving failed.
    pub fn poll(&mut self, inflate: &mut [u8]) -> Result<Polled, Err<B>> {
        let now = self.clock.now_ms();
        let mut out = Polled::default();
        // Work queued before the runner runs goes out in this same poll.
        let mut dirty = self.handle_events(now, &mut out);
        dirty |= self.handle_reading(now, &mut out);
        let progress = self
            .runner
            .poll(now, &mut self.link, inflate)
            .map_err(AppError::Link)?;
        out.packets = progress.packets;
        dirty |= progress.changed;
        self.since_unsaved |= progress.since_advanced;
        if self.settings_unsaved {
            // Before the state: a reboot in between applies the command again (idempotent)
            // rather than losing it.
            let rec = settings_record(self.settings);
            AbStore::new(&mut self.settings_flash)
                .store_bytes(KIND_SETTINGS, &rec)
                .map_err(AppError::Store)?;
            self.settings_unsaved = false;
        }
        if dirty || (self.since_unsaved && now.saturating_sub(self.last_save_ms) >= SINCE_SAVE_MS) {
            self.save().map_err(AppError::Store)?;
            self.last_save_ms = now;
            self.since_unsaved = false;
            out.saved = true;
        }
        Ok(out)
    }

    /// Room messages: commands are applied and get a reply. `true` if the state changed.
    fn handle_events(&mut self, now: u64, out: &mut Polled) -> bool {
        let mut dirty = false;
        loop {
            let mut body = [0u8; 96];
            let len = {
                let Some((room, ev)) = self.runner.state_mut().next_event() else {
                    break;
                };
                if room.id() != self.room.as_str() || ev.msgtype() != Some("m.text") {
                    continue;
                }
                let allowed = self.controllers.is_empty()
                    || self.controllers.iter().any(|c| ev.sender_is(c.as_str()));
                if !allowed {
                    continue;
                }
                let b = ev.body().unwrap_or("").as_bytes();
                let n = b.len().min(body.len());
                body[..n].copy_from_slice(&b[..n]);
                n
            };
            dirty = true;
            let mut reply = [0u8; 80];
            let n = match Command::parse(&body[..len]) {
                Ok(cmd) => {
                    let before = self.settings;
                    let n = self.settings.apply(cmd, now, self.last_reading, &mut reply);
                    self.led.set(self.settings.led);
                    self.settings_unsaved |= self.settings != before;
                    if let Command::Interval(s) = cmd {
                        self.timer.set_interval(now, s);
                    }
                    n
                }
                Err(e) => match error_reply(e) {
                    Some(t) => {
                        reply[..t.len()].copy_from_slice(t);
                        t.len()
                    }
                    None => continue,
                },
            };
            let text = core::str::from_utf8(&reply[..n]).unwrap_or("?");
            let room = self.room;
            // A full outbox drops the reply (the command was applied); the next one gets one.
            if self
                .runner
                .state_mut()
                .send_text(room.as_str(), text)
                .is_ok()
            {
                out.commands += 1;
            }
        }
        dirty
    }

    /// A reading when due. `true` if one was queued.
    fn handle_reading(&mut self, now: u64, out: &mut Polled) -> bool {
        if !self.timer.handle_timeout(now) {
            return false;
        }
        let Some(m) = self.sensor.sample_milli() else {
            return false;
        };
        self.last_reading = Some(m);
        let mut t: Text<24> = Text::new();
        let _ = write_reading(&mut t, m);
        let room = self.room;
        let queued = self
            .runner
            .state_mut()
            .send_text(room.as_str(), t.as_str())
            .is_ok();
        if queued {
            out.readings += 1;
        }
        queued
    }
}

/// The settings record: interval (u32 LE) and LED (0/1).
fn settings_record(s: Settings) -> [u8; 5] {
    let i = s.interval_s.to_le_bytes();
    [i[0], i[1], i[2], i[3], u8::from(s.led)]
}

/// Interval and LED from the settings pages, if a valid record is there.
fn load_settings<F: Flash>(flash: &mut F) -> Option<(u32, bool)> {
    let mut buf = [0u8; 32];
    let rec = AbStore::new(flash).load(KIND_SETTINGS, &mut buf).ok()??;
    let (i, led) = rec.split_first_chunk::<4>()?;
    let interval = u32::from_le_bytes(*i);
    (interval > 0 && led.len() == 1).then_some((interval, led[0] == 1))
}

/// `t=21.5C` for 21 500 milli-degrees (one decimal, truncated toward zero).
pub fn write_reading<W: core::fmt::Write>(w: &mut W, milli: i32) -> core::fmt::Result {
    let sign = if milli < 0 { "-" } else { "" };
    let a = milli.unsigned_abs();
    let (mut b1, mut b2) = ([0u8; 10], [0u8; 10]);
    [
        "t=",
        sign,
        lowband_device::text::decimal(a / 1000, &mut b1),
        ".",
        lowband_device::text::decimal(a % 1000 / 100, &mut b2),
        "C",
    ]
    .iter()
    .try_for_each(|p| w.write_str(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate alloc;
    use alloc::boxed::Box;
    use alloc::collections::VecDeque;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cell::Cell;

    use crate::app::ram::RamFlash;
    use crate::board::Provisioned;

    /// A board whose link is a byte sink (no gateway: nothing is ever answered).
    struct Bench;
    #[derive(Default)]
    struct Sink(Vec<u8>);
    impl embedded_io::ErrorType for Sink {
        type Error = embedded_io::ErrorKind;
    }
    impl embedded_io::Read for Sink {
        fn read(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> {
            Ok(0)
        }
    }
    impl embedded_io::ReadReady for Sink {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(false)
        }
    }
    impl embedded_io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    struct Ms(Cell<u64>);
    impl Clock for Ms {
        fn now_ms(&self) -> u64 {
            let t = self.0.get();
            self.0.set(t + 10);
            t
        }
    }
    struct Lamp;
    impl Led for Lamp {
        fn set(&mut self, _: bool) {}
    }
    struct Thermo(i32);
    impl Sensor for Thermo {
        fn sample_milli(&mut self) -> Option<i32> {
            Some(self.0)
        }
    }
    impl Board for Bench {
        type Link = Sink;
        type Clock = Ms;
        type Flash = RamFlash;
        type Led = Lamp;
        type Sensor = Thermo;
    }

    const CFG: AppConfig<'static> = AppConfig {
        room: "!room:example.org",
        access_token: "syt_token",
        filter: "0",
        sync_timeout_ms: 0,
        sync_interval_ms: 1_000,
        interval_s: 3_600,
        link_bps: 9_600,
    };

    fn boot(flash: RamFlash, boot_flash: RamFlash, milli: i32) -> Box<MatrixApp<Bench>> {
        boot3(flash, boot_flash, RamFlash::new(), milli)
    }

    fn boot3(
        flash: RamFlash,
        boot_flash: RamFlash,
        settings_flash: RamFlash,
        milli: i32,
    ) -> Box<MatrixApp<Bench>> {
        let parts = Parts {
            link: Sink::default(),
            clock: Ms(Cell::new(0)),
            flash,
            boot_flash,
            settings_flash,
            led: Lamp,
            sensor: Thermo(milli),
            provisioned: Provisioned::from_bytes(&[3; 96]),
        };
        let mut scratch = vec![0u8; DEFAULT_RECORD_MAX];
        Box::new(MatrixApp::boot(parts, &CFG, &mut scratch).unwrap())
    }

    fn outbox(app: &MatrixApp<Bench>) -> Vec<alloc::string::String> {
        app.runner
            .state()
            .outgoing()
            .iter()
            .map(|o| alloc::format!("{} {:?}", o.txn, o.cmd))
            .collect()
    }

    #[test]
    fn unsent_outbox_survives_reboots_with_its_transaction_ids() {
        // Boot 1 with no gateway: the join and the first reading wait in the saved outbox.
        let mut app = boot(RamFlash::new(), RamFlash::new(), 21_500);
        let mut inflate: [u8; 0] = [];
        let p = app.poll(&mut inflate).unwrap();
        assert_eq!((p.readings, p.saved), (1, true));
        assert!(!app.link.io_mut().0.is_empty(), "the handshake went out");
        let first = outbox(&app);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first[0].starts_with("d1.0 Join"), "{first:?}");
        assert!(first[1].starts_with("d1.1 Message") && first[1].contains("t=21.5C"));
        assert_eq!(app.settings().boots, 1);
        let (flash, boot_flash) = app.into_pages();
        // Boot 2 from the same pages: the same entries, same ids; no second join queued; the
        // new boot's reading gets a boot-2 id.
        let mut app = boot(flash, boot_flash, 22_000);
        assert_eq!(app.settings().boots, 2);
        app.poll(&mut inflate).unwrap();
        let second = outbox(&app);
        assert_eq!(second[..2], first[..], "{second:?}");
        assert!(second[2].starts_with("d2.0 Message") && second[2].contains("t=22.0C"));
        assert_eq!(second.len(), 3);
    }

    /// A text message from `sender` in the app's room, as a sync would store it.
    fn message(app: &mut MatrixApp<Bench>, id: &str, sender: &str, body: &str) {
        use lowband_device::{Body, EventIn, RoomRef, SyncUpdate};
        let st = app.runner.state_mut();
        st.apply(SyncUpdate::Joined {
            room: CFG.room,
            short: None,
        });
        st.apply(SyncUpdate::Event(EventIn {
            room: RoomRef::Id(CFG.room),
            event_id: id,
            sender,
            kind: "m.room.message",
            msgtype: Some("m.text"),
            body: Body::Text(body),
            ts: 1,
        }));
    }

    fn replies(app: &MatrixApp<Bench>) -> Vec<alloc::string::String> {
        outbox(app)
            .into_iter()
            .filter(|o| !o.contains("t=") && !o.contains("Join"))
            .collect()
    }

    #[test]
    fn commands_only_from_controllers_and_settings_survive_reboots() {
        let mut app = boot(RamFlash::new(), RamFlash::new(), 21_500);
        app.set_controllers(&["@alice:example.org"]).unwrap();
        assert_eq!(app.settings().interval_s, 3_600);
        let mut inflate: [u8; 0] = [];
        // Mallory's command is read and ignored: no reply, no change.
        message(&mut app, "$1", "@mallory:example.org", "!led on");
        app.poll(&mut inflate).unwrap();
        assert!(!app.settings().led);
        assert!(replies(&app).is_empty(), "{:?}", outbox(&app));
        // A sender id that merely starts like alice's is not alice.
        message(&mut app, "$2", "@alice:example.org.evil", "!led on");
        app.poll(&mut inflate).unwrap();
        assert!(!app.settings().led);
        // Alice's commands run and are answered.
        message(&mut app, "$3", "@alice:example.org", "!led on");
        message(&mut app, "$4", "@alice:example.org", "!interval 90");
        let p = app.poll(&mut inflate).unwrap();
        assert_eq!(p.commands, 2);
        assert!(app.settings().led);
        assert_eq!(app.settings().interval_s, 90);
        let r = replies(&app);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[0].contains("led on") && r[1].contains("every 90s"),
            "{r:?}"
        );
        // Reboot from the same pages: LED and interval come back, not the provisioned 3600 s.
        let (flash, boot_flash, settings) = app.into_all_pages();
        assert_eq!(settings.pages[0][..2], [1, KIND_SETTINGS]);
        let app = boot3(flash, boot_flash, settings, 21_500);
        assert_eq!((app.settings().led, app.settings().interval_s), (true, 90));
        assert_eq!(app.settings().boots, 2);
        // Too many controllers or one too long: refused.
        let mut app = app;
        assert_eq!(
            app.set_controllers(&["@a:x", "@b:x", "@c:x"]),
            Err(AppError::Config)
        );
        let long = alloc::string::String::from("@") + &"x".repeat(USER_ID_LEN);
        assert_eq!(app.set_controllers(&[&long]), Err(AppError::Config));
    }

    #[test]
    fn datagram_link_moves_whole_packets() {
        #[derive(Default)]
        struct Radio {
            air: VecDeque<Vec<u8>>,
            sent: Vec<Vec<u8>>,
        }
        impl Datagram for Radio {
            type Error = ();
            fn mtu(&self) -> usize {
                8
            }
            fn send(&mut self, d: &[u8]) -> Result<(), ()> {
                self.sent.push(d.to_vec());
                Ok(())
            }
            fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ()> {
                Ok(self.air.pop_front().map(|d| {
                    buf[..d.len()].copy_from_slice(&d);
                    d.len()
                }))
            }
        }
        let mut l = DatagramLink(Radio::default());
        l.0.air.push_back(vec![1, 2, 3]);
        let mut buf = [0u8; 16];
        assert_eq!(l.recv(&mut buf), Ok(Some(3)));
        assert_eq!(buf[..3], [1, 2, 3]);
        assert_eq!(l.recv(&mut buf), Ok(None));
        l.send(0, &[9; 8]).unwrap();
        l.send(0, &[9; 9]).unwrap(); // over the MTU: not sent
        assert_eq!(l.0.sent, vec![vec![9u8; 8]]);
    }

    #[test]
    fn readings_are_short() {
        let mut t: Text<24> = Text::new();
        write_reading(&mut t, 21_500).unwrap();
        assert_eq!(t.as_str(), "t=21.5C");
        let mut t: Text<24> = Text::new();
        write_reading(&mut t, -450).unwrap();
        assert_eq!(t.as_str(), "t=-0.4C");
        let mut t: Text<24> = Text::new();
        write_reading(&mut t, i32::MIN).unwrap();
        assert_eq!(t.as_str(), "t=-2147483.6C");
    }
}
