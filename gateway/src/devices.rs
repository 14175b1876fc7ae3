//! `serve`'s side of the device profile ([`lowband_codec::lb::dev`]): compact operations and
//! sync pushed with Observe.
//!
//! ```text
//!  device ──TEXT op──► PUT /rooms/{slot k}/send/m.room.message/d{boot}.{seq}  {"msgtype":"m.text",..}
//!  device ──JOIN op──► POST /join/{slot k}  {}
//!  device ──LEAVE op─► POST /rooms/{slot k}/leave  {}
//!  device ─TYPING op─► PUT /rooms/{slot k}/typing/{user id from /account/whoami}  {"typing":..}
//!  device ──EVENT op─► PUT /rooms/{slot k}/send/{type}/d{boot}.{seq}  unpacked content
//!         ◄── 2.04 (empty, no event id), or the homeserver's error status ───────────────┘
//!  device ──SYNC op (Observe: 0)──► register: cursor (since kept here), poller task
//!  poller ──GET /sync?since=..&timeout=30000──► HS ──► Batch ──► on_batch: items queued
//!  pump (every loop turn): one CON notification in flight; acknowledged ──► next item
//! ```
//!
//! No open proxy: every room comes from the session's alias list (defined by the device with
//! [`opt::ALIAS`](lowband_codec::lb::opt::ALIAS)) and must look like a room id or alias;
//! rooms, event types and user ids are percent-encoded into the path; event types are at most
//! [`TYPE_MAX`] bytes and event contents at most [`EVENT_JSON_MAX`] bytes of JSON, an object.
//! A homeserver error goes back with the code a tunnelled request's would get
//! ([`lowband_codec::lb::status_to_code`]) and its Retry-After, without the body (airtime).
//!
//! The cursor of a device (keyed by its static key) outlives its sessions and registrations:
//! the since token, the items not known to be saved by the device and the item numbering. An
//! item stays after its notification was acknowledged (the device may reboot before saving
//! it) until a registration names a later item as the last one the device saved; the device
//! registers at every boot, so a reboot resumes right after what it saved: nothing lost, and
//! what it sees again it recognises by number ([`dev::next_seq`]). Nothing new costs nothing
//! on the link.
//!
//! With a state directory (`serve --state-dir`), each cursor is also kept in a file
//! (`<peer key, URL-safe base64>.device`, JSON, mode 0600, written to a temporary name and
//! renamed; a file that group or others may read is refused at start): the since token, the
//! item numbering, the items not known to be saved, the filter, the room and user numbers and
//! the address the device was last heard from;
//! never the access token (the device registers it again in every new session). A cursor is
//! written whenever it changes, before any item it holds is pushed, so after a restart a
//! device registering with its last item resumes right after it, and what arrived while
//! `serve` was down is fetched from the saved since token and pushed once. Without a state
//! directory cursors live in memory: after a restart a device starts from its since token if
//! it never had a push, else from "now".
//!
//! A restart loses what only lives in memory: the device's observation, its access token
//! and token number. So right after restoring, `serve` wakes every device it holds both a
//! session and a cursor for ([`Devices::wake_restored`]: one confirmable request carrying
//! [`Op::Wake`], 15 bytes on a serial line, answered by an empty 2.04 of 13), and the device
//! registers again at once with its token: what arrived during the outage is pushed within
//! seconds instead of at the device's next periodic refresh (up to 15 minutes). The cursor
//! file also keeps the address the device was last heard from, where its restored session
//! sends first (over UDP; a serial line has one peer). A wake that goes unanswered is not
//! repeated: the periodic refresh still recovers. A device that registers on its own first
//! is not woken (the wake is cancelled).
//!
//! A device registering without a since token that `serve` holds no cursor for starts from
//! "now": the poller's first `/sync` (no since, timeout 0) only sets the since token; nothing
//! of it is pushed.
//!
//! Events the device sent itself (their `unsigned.transaction_id` is set for the sending
//! token) are not pushed: the 2.04 already confirmed them. In a room the device joins, events
//! up to its own join are not pushed (a newly joined room's timeline starts with history:
//! never a replay of commands sent before the device was there). After a LEAVE that went
//! through, items of that room not yet pushed are dropped and the room's `Left` item is not
//! pushed (the 2.04 said so).
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use lowband_codec::coap::{
    Code, IncomingRequest, Options, Request, RequestError, RequestHandle, Responder,
};
use lowband_codec::lb::dev::{self, Item, Kind, Op};
use lowband_codec::lb::opt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::table::SessionTable;
use crate::wire::HttpResponse;

/// Long-poll timeout of a device's sync on the homeserver (not on the link).
const POLL_TIMEOUT_MS: u32 = 30_000;
/// Pause after a failed sync.
const RETRY: Duration = Duration::from_secs(3);
/// Longest body pushed (the device keeps 80 bytes of a body).
const BODY_MAX: usize = 80;
/// Items kept after their notification was acknowledged, until a registration says the
/// device saved them: a device acknowledges an item when it applied it in RAM and saves its
/// state right after, so one would do; 16 leave room for devices that save lazily.
const KEEP_ACKED: usize = 16;
/// Items queued for a device that is away; beyond this the oldest go (the device sees the gap
/// in the numbering, [`dev::Seq::Gap`]).
pub const QUEUE_MAX: usize = 256;
/// Longest event type a device may send (bytes).
pub const TYPE_MAX: usize = 255;
/// Largest event content a device may send, as JSON (Matrix limits a whole event to 65 536
/// bytes).
pub const EVENT_JSON_MAX: usize = 60_000;
/// Longest room id or alias a slot may hold for a device operation.
const ROOM_MAX: usize = 255;
/// Access tokens whose user id is cached.
const WHOAMI_MAX: usize = 1024;
/// Rooms a device left by operation whose `Left` item is still expected.
const OWN_LEAVES: usize = 16;
/// Extension of cursor files in the state directory.
const EXT: &str = "device";
/// Largest cursor file read at start.
const FILE_MAX: u64 = 1 << 20;

/// One event for a device, before numbering and compression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    #[serde(with = "kind_code")]
    kind: Kind,
    room: String,
    sender: String,
    body: String,
}

/// [`Kind`] as its wire number in the cursor files.
mod kind_code {
    use lowband_codec::lb::dev::Kind;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match k {
            Kind::Text => 0,
            Kind::Notice => 1,
            Kind::Invite => 2,
            Kind::Left => 3,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(Kind::Text),
            1 => Ok(Kind::Notice),
            2 => Ok(Kind::Invite),
            3 => Ok(Kind::Left),
            _ => Err(serde::de::Error::custom("unknown item kind")),
        }
    }
}

/// What a poller or an operation's task reports to the main loop.
#[derive(Debug)]
pub struct Batch {
    peer: [u8; 32],
    report: Report,
}

#[derive(Debug)]
enum Report {
    /// A sync response continuing the chain at `since`.
    Sync {
        since: Option<String>,
        next: String,
        items: Vec<Pending>,
    },
    /// A LEAVE went through.
    Left(String),
    /// A LEAVE failed.
    LeaveFailed(String),
}

/// A device's cursor.
#[derive(Debug, Default)]
struct Cursor {
    since: Option<String>,
    filter: String,
    token: String,
    /// Number of the last item queued (items are numbered from 1).
    last_queued: u32,
    /// Items not known to be saved by the device, oldest first.
    queue: VecDeque<(u32, Pending)>,
    /// Highest item whose notification the device acknowledged in this registration.
    acked: u32,
    /// The item in flight, and the room and user numbers it defines.
    inflight: Option<(u32, Option<u8>, Option<u8>)>,
    registered: bool,
    /// Poller generation: a poller exits when it is no longer the current one.
    generation: Arc<AtomicU64>,
    /// Room ids by number, and whether a notification defining it was acknowledged.
    rooms: Vec<(String, bool)>,
    /// (user id, last use, definition acknowledged) by number.
    users: Vec<(String, u64, bool)>,
    uses: u64,
    /// Rooms left by a LEAVE whose `Left` item is not pushed (oldest first).
    own_leaves: VecDeque<String>,
    /// The file contents last written (nothing written when unchanged).
    written: Vec<u8>,
    /// The link address the device was last heard from (a restored session's first
    /// destination after a restart: where the wake goes).
    addr: Option<SocketAddr>,
    /// The wake request in flight after a restart ([`Devices::wake_restored`]).
    wake: Option<RequestHandle>,
}

/// What a cursor file holds (format 1).
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    v: u8,
    since: Option<String>,
    filter: String,
    last_queued: u32,
    queue: Vec<(u32, Pending)>,
    rooms: Vec<(String, bool)>,
    users: Vec<(String, u64, bool)>,
    uses: u64,
    /// Added later within format 1 (absent in older files).
    #[serde(default)]
    addr: Option<SocketAddr>,
}

impl Cursor {
    fn saved(&self) -> Saved {
        Saved {
            v: 1,
            since: self.since.clone(),
            filter: self.filter.clone(),
            last_queued: self.last_queued,
            queue: self.queue.iter().cloned().collect(),
            rooms: self.rooms.clone(),
            users: self.users.clone(),
            uses: self.uses,
            addr: self.addr,
        }
    }

    fn from_saved(s: Saved) -> Cursor {
        Cursor {
            since: s.since,
            filter: s.filter,
            last_queued: s.last_queued,
            queue: s.queue.into_iter().collect(),
            rooms: s.rooms.into_iter().take(dev::ROOMS).collect(),
            users: s.users.into_iter().take(dev::USERS).collect(),
            uses: s.uses,
            addr: s.addr,
            ..Cursor::default()
        }
    }
}

/// Cursor files in `serve`'s state directory (see the module docs).
#[derive(Debug, Clone)]
struct CursorStore {
    dir: PathBuf,
}

impl CursorStore {
    fn file(&self, peer: &[u8; 32]) -> PathBuf {
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(peer);
        self.dir.join(format!("{name}.{EXT}"))
    }

    /// Writes `bytes` for `peer` atomically (temporary file, fsync, rename), mode 0600.
    fn save(&self, peer: &[u8; 32], bytes: &[u8]) -> std::io::Result<()> {
        crate::persist::write_private(&self.file(peer), "device-tmp", bytes)
    }

    /// Every readable cursor file; files group or others may access, or that do not parse,
    /// are skipped with a warning.
    fn load(&self) -> Vec<([u8; 32], Cursor)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == EXT))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            match Self::read(&p) {
                Ok(c) => out.push(c),
                Err(why) => {
                    tracing::warn!(file = %p.display(), why, "serve: device cursor refused")
                }
            }
        }
        out
    }

    fn read(p: &Path) -> Result<([u8; 32], Cursor), &'static str> {
        let peer: [u8; 32] = p
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .ok()
            })
            .and_then(|b| b.try_into().ok())
            .ok_or("not named by a key")?;
        let meta = std::fs::metadata(p).map_err(|_| "unreadable")?;
        if meta.mode() & 0o077 != 0 {
            return Err("accessible by group or others (chmod 600)");
        }
        if meta.len() > FILE_MAX {
            return Err("too large");
        }
        let bytes = std::fs::read(p).map_err(|_| "unreadable")?;
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|_| "malformed")?;
        if saved.v != 1 {
            return Err("unknown format");
        }
        let mut c = Cursor::from_saved(saved);
        c.written = bytes;
        Ok((peer, c))
    }
}

/// Every device's cursor, and the channel pollers report on.
#[derive(Debug)]
pub struct Devices {
    cursors: BTreeMap<[u8; 32], Cursor>,
    tx: mpsc::UnboundedSender<Batch>,
    store: Option<CursorStore>,
    /// User ids by access token ([`whoami`]).
    whoami: Whoami,
}

type Whoami = Arc<Mutex<BTreeMap<String, String>>>;

/// What a device request needs from `serve`.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The device's key.
    pub peer: [u8; 32],
    /// Its access token (explicit, or registered under number 0).
    pub token: Option<String>,
    /// Its session alias list (room ids by slot).
    pub aliases: &'a [String],
    /// The homeserver client.
    pub http: &'a HttpClient<HttpConnector, Full<Bytes>>,
    /// The homeserver's base URL.
    pub homeserver: &'a str,
}

/// What to answer a device request with now.
#[derive(Debug)]
pub enum Answer {
    /// Respond now with this code and no payload.
    Now(Code),
    /// Registered: respond through [`Devices::accept`].
    Registered,
    /// Answered later: `serve` sends the HTTP result back on its done channel, as a response
    /// to this request ([`HttpResponse`] status 204 for an operation that went through).
    Later(tokio::task::JoinHandle<HttpResponse>),
}

/// The room of alias slot `slot`: 4.12 (define the alias again) when the slot is not
/// defined, 4.00 when it does not hold a room id or alias.
fn room_of(aliases: &[String], slot: u8) -> Result<String, Code> {
    let r = aliases
        .get(usize::from(slot))
        .filter(|r| !r.contains('\0'))
        .ok_or(lowband_codec::lb::AUTH_UNKNOWN)?;
    if !(r.starts_with('!') || r.starts_with('#')) || r.len() > ROOM_MAX {
        return Err(Code::BAD_REQUEST);
    }
    Ok(r.clone())
}

/// The response of an operation: 2.04 with nothing for any 2xx (the device needs no event
/// or room id), else the homeserver's status and Retry-After (from the header, or from a
/// Matrix error's `retry_after_ms`, in whole seconds) without the body: the status is what a
/// device acts on, and an error text would cost seconds of airtime on a slow link.
fn changed_or(r: HttpResponse) -> HttpResponse {
    if (200..300).contains(&r.status) {
        return HttpResponse {
            status: 204,
            ..HttpResponse::default()
        };
    }
    tracing::debug!(
        status = r.status,
        error = %String::from_utf8_lossy(&r.body),
        "serve: device operation refused by the homeserver"
    );
    let retry_after = r.retry_after.or_else(|| {
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["retry_after_ms"].as_u64())
            .map(|ms| ms.div_ceil(1000).to_string())
    });
    HttpResponse {
        status: r.status,
        retry_after,
        ..HttpResponse::default()
    }
}

impl Devices {
    /// No devices yet; pollers report on the returned receiver (feed it to
    /// [`Devices::on_batch`]).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Batch>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Devices {
                cursors: BTreeMap::new(),
                tx,
                store: None,
                whoami: Arc::default(),
            },
            rx,
        )
    }

    /// Cursors kept in the state directory `dir` (created 0700 if needed, as for sessions):
    /// those saved there are loaded (waiting for their devices to register), and every change
    /// is written.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn with_state_dir(dir: &Path) -> std::io::Result<(Self, mpsc::UnboundedReceiver<Batch>)> {
        crate::persist::Store::open(dir)?;
        let store = CursorStore {
            dir: dir.to_owned(),
        };
        let (mut d, rx) = Self::new();
        d.cursors = store.load().into_iter().collect();
        tracing::info!(devices = d.cursors.len(), "serve: device cursors restored");
        d.store = Some(store);
        Ok((d, rx))
    }

    /// Forgets the cursors (and their files) of keys `keep` refuses: a key no longer
    /// allowed, as `serve` does with persisted sessions.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8; 32]) -> bool) {
        let gone: Vec<[u8; 32]> = self.cursors.keys().filter(|p| !keep(p)).copied().collect();
        for peer in gone {
            self.cursors.remove(&peer);
            if let Some(store) = &self.store {
                let _ = std::fs::remove_file(store.file(&peer));
            }
            tracing::info!("serve: device cursor of a key no longer allowed; dropped");
        }
    }

    /// Number of device cursors held.
    pub fn len(&self) -> usize {
        self.cursors.len()
    }

    /// Whether no device has a cursor.
    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty()
    }

    /// Writes `peer`'s cursor if it changed since it was last written.
    fn save(&mut self, peer: &[u8; 32]) {
        let (Some(store), Some(c)) = (&self.store, self.cursors.get_mut(peer)) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&c.saved()) else {
            return;
        };
        if bytes == c.written {
            return;
        }
        match store.save(peer, &bytes) {
            Ok(()) => c.written = bytes,
            Err(e) => tracing::warn!(%e, "serve: device cursor not written"),
        }
    }

    /// Whether `req` is a device-profile request: one carrying the [`opt::DEVICE`] option
    /// (registrations), or a PUT without a target (lowband's HTTP mapping only uses POST with
    /// [`opt::TARGET`]).
    pub fn is_device_request(req: &IncomingRequest<'_>) -> bool {
        req.options.first(opt::DEVICE).is_some()
            || (req.code == Code::PUT && req.options.first(opt::TARGET).is_none())
    }

    /// Handles a device-profile request ([`Devices::is_device_request`]).
    pub fn request(&mut self, ctx: &Ctx<'_>, req: &IncomingRequest<'_>) -> Answer {
        let parsed = if req.options.first(opt::DEVICE).is_none() {
            Op::parse_prefix(req.payload).ok()
        } else {
            req.options
                .first(opt::DEVICE)
                .and_then(|o| o.as_bytes())
                .and_then(|v| Op::parse(v).ok())
                .map(|op| (op, req.payload))
        };
        let Some((op, payload)) = parsed else {
            return Answer::Now(Code::BAD_OPTION);
        };
        let Some(token) = ctx.token.clone() else {
            return Answer::Now(Code::UNAUTHORIZED);
        };
        if let Op::Sync { last, keep } = op {
            return self.register(ctx, token, last, keep, payload);
        }
        let room = match op.slot().map(|s| room_of(ctx.aliases, s)) {
            Some(Ok(r)) => r,
            Some(Err(c)) => return Answer::Now(c),
            None => return Answer::Now(Code::BAD_REQUEST),
        };
        let (hs, http) = (ctx.homeserver.to_owned(), ctx.http.clone());
        let room_path = format!("{hs}/_matrix/client/v3/rooms/{}", percent(&room));
        match op {
            Op::Sync { .. } | Op::Wake => Answer::Now(Code::BAD_REQUEST),
            Op::Text { boot, seq, .. } => {
                let Ok(body) = core::str::from_utf8(payload) else {
                    return Answer::Now(Code::BAD_REQUEST);
                };
                let url = format!("{room_path}/send/m.room.message/d{boot}.{seq}");
                let json = serde_json::json!({"msgtype": "m.text", "body": body}).to_string();
                tracing::debug!(
                    txn = %format!("d{boot}.{seq}"),
                    link_body = payload.len(),
                    "serve: device send"
                );
                Answer::Later(tokio::spawn(async move {
                    changed_or(call(&http, "PUT", &url, &token, Some(json)).await)
                }))
            }
            Op::Join { .. } | Op::Leave { .. } | Op::Typing { .. } if !payload.is_empty() => {
                Answer::Now(Code::BAD_REQUEST)
            }
            Op::Join { .. } => {
                let url = format!("{hs}/_matrix/client/v3/join/{}", percent(&room));
                tracing::debug!("serve: device join");
                Answer::Later(tokio::spawn(async move {
                    changed_or(call(&http, "POST", &url, &token, Some("{}".into())).await)
                }))
            }
            Op::Leave { .. } => {
                let url = format!("{room_path}/leave");
                let (tx, peer) = (self.tx.clone(), ctx.peer);
                // Marked now: the poller may see the leave before this task its answer.
                if let Some(c) = self.cursors.get_mut(&peer) {
                    if c.own_leaves.len() >= OWN_LEAVES {
                        c.own_leaves.pop_front();
                    }
                    c.own_leaves.push_back(room.clone());
                }
                tracing::debug!("serve: device leave");
                Answer::Later(tokio::spawn(async move {
                    let r = call(&http, "POST", &url, &token, Some("{}".into())).await;
                    let report = if (200..300).contains(&r.status) {
                        Report::Left(room)
                    } else {
                        Report::LeaveFailed(room)
                    };
                    let _ = tx.send(Batch { peer, report });
                    changed_or(r)
                }))
            }
            Op::Typing { timeout_ms, .. } => {
                let json = if timeout_ms == 0 {
                    serde_json::json!({"typing": false})
                } else {
                    serde_json::json!({"typing": true, "timeout": timeout_ms})
                }
                .to_string();
                let cache = Arc::clone(&self.whoami);
                Answer::Later(tokio::spawn(async move {
                    let user = match whoami(&http, &hs, &token, &cache).await {
                        Ok(u) => u,
                        Err(r) => return r,
                    };
                    let url = format!("{room_path}/typing/{}", percent(&user));
                    changed_or(call(&http, "PUT", &url, &token, Some(json)).await)
                }))
            }
            Op::Event { boot, seq, .. } => {
                let (kind, json) = match event_body(payload) {
                    Ok(v) => v,
                    Err(c) => return Answer::Now(c),
                };
                let url = format!("{room_path}/send/{}/d{boot}.{seq}", percent(kind));
                tracing::debug!(
                    txn = %format!("d{boot}.{seq}"),
                    link_body = payload.len(),
                    http_body = json.len(),
                    "serve: device event"
                );
                Answer::Later(tokio::spawn(async move {
                    changed_or(call(&http, "PUT", &url, &token, Some(json)).await)
                }))
            }
        }
    }

    fn register(
        &mut self,
        ctx: &Ctx<'_>,
        token: String,
        last: u32,
        keep: bool,
        payload: &[u8],
    ) -> Answer {
        let Ok((since, filter)) = dev::parse_register(payload) else {
            return Answer::Now(Code::BAD_REQUEST);
        };
        let c = self.cursors.entry(ctx.peer).or_default();
        if c.since.is_none() && !since.is_empty() {
            c.since = Some(since.to_owned());
        }
        c.filter = filter.to_owned();
        c.token = token;
        // Items the device saved are done; the rest (acknowledged but maybe lost in
        // a reboot before the device saved them) go again; numbering continues.
        while c.queue.front().is_some_and(|(n, _)| *n <= last) {
            c.queue.pop_front();
        }
        c.last_queued = c.last_queued.max(last);
        c.acked = last;
        c.inflight = None;
        c.registered = true;
        if !keep {
            c.rooms.clear();
            c.users.clear();
        }
        let generation = c.generation.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(
            last,
            queued = c.queue.len(),
            "serve: device registered for pushed sync"
        );
        spawn_poller(
            ctx.http.clone(),
            ctx.homeserver.to_owned(),
            ctx.peer,
            c,
            generation,
            self.tx.clone(),
            Arc::clone(&self.whoami),
        );
        self.save(&ctx.peer);
        Answer::Registered
    }

    /// Answers a registration: the observer is (re)placed and acknowledged with 2.05.
    pub fn accept(&mut self, now: u64, table: &mut SessionTable, i: usize, to: &Responder) {
        let wake = table
            .peer(i)
            .and_then(|p| self.cursors.get_mut(&p))
            .and_then(|c| c.wake.take());
        let Some(s) = table.session(i) else {
            return;
        };
        let ep = s.coap();
        // Registered on its own since the restart: the wake is moot.
        if let Some(h) = wake {
            ep.cancel(h);
        }
        ep.drop_observers(dev::RESOURCE);
        if let Err(e) =
            ep.respond_observe(now, to, dev::RESOURCE, Code::CONTENT, Options::NONE, &[])
        {
            tracing::warn!(?e, "serve: device registration not accepted");
        }
    }

    /// Where `peer` was last heard from (kept in its cursor file), if it has a cursor.
    pub fn address(&self, peer: &[u8; 32]) -> Option<SocketAddr> {
        self.cursors.get(peer).and_then(|c| c.addr)
    }

    /// Notes that `peer` was heard from at `addr` (written with its cursor when it changed;
    /// nothing for a key without a cursor).
    pub fn heard_from(&mut self, peer: &[u8; 32], addr: SocketAddr) {
        match self.cursors.get_mut(peer) {
            Some(c) if c.addr != Some(addr) => c.addr = Some(addr),
            _ => return,
        }
        self.save(peer);
    }

    /// Right after a restart: asks every device that has both a restored session in `table`
    /// and a cursor, and has not registered since, to register again now (a confirmable
    /// `POST` whose payload is the [`Op::Wake`] operation, [`dev`]'s "Waking a device after a
    /// restart"):
    /// the restart lost its observation and its token, so nothing could be polled or pushed
    /// until its next periodic refresh. Sent once (CoAP retransmits it); returns how many.
    pub fn wake_restored(&mut self, now: u64, table: &mut SessionTable) -> usize {
        let mut op = [0u8; 1];
        let Ok(n) = Op::Wake.write(&mut op) else {
            return 0;
        };
        let mut woken = 0;
        for (peer, c) in &mut self.cursors {
            if c.registered || c.wake.is_some() {
                continue;
            }
            let Some(s) = table.find_peer(peer).and_then(|i| table.session(i)) else {
                continue;
            };
            match s
                .coap()
                .request(now, Request::con(Code::POST, Options::NONE, &op[..n]))
            {
                Ok(h) => {
                    c.wake = Some(h);
                    woken += 1;
                }
                Err(e) => tracing::info!(?e, "serve: device wake not sent"),
            }
        }
        if woken > 0 {
            tracing::info!(devices = woken, "serve: waking restored devices");
        }
        woken
    }

    /// The outcome of a request of ours to `peer` (a response, or a CoAP failure): logged if
    /// it was a wake; `true` if it was one.
    pub fn wake_done(
        &mut self,
        peer: &[u8; 32],
        h: RequestHandle,
        outcome: Result<Code, RequestError>,
    ) -> bool {
        let Some(c) = self.cursors.get_mut(peer) else {
            return false;
        };
        if c.wake != Some(h) {
            return false;
        }
        c.wake = None;
        match outcome {
            Ok(code) => tracing::info!(?code, "serve: device answered the wake"),
            Err(e) => tracing::info!(
                ?e,
                "serve: device wake unanswered; its periodic refresh registers it"
            ),
        }
        true
    }

    /// A poller's batch (queued if it continues the cursor's chain) or an operation's report.
    pub fn on_batch(&mut self, b: Batch) {
        let Some(c) = self.cursors.get_mut(&b.peer) else {
            return;
        };
        match b.report {
            Report::Sync { since, next, items } => {
                if c.since != since {
                    // A stale poller (an older registration) or a replay: the current one
                    // fetches it.
                    return;
                }
                c.since = Some(next);
                for it in items {
                    if it.kind == Kind::Left {
                        if let Some(i) = c.own_leaves.iter().position(|r| *r == it.room) {
                            c.own_leaves.remove(i);
                            continue;
                        }
                    }
                    c.last_queued = c.last_queued.wrapping_add(1);
                    c.queue.push_back((c.last_queued, it));
                }
                // A device away for long: the oldest items not yet pushed go.
                while c.queue.len() > QUEUE_MAX {
                    c.queue.pop_front();
                }
            }
            Report::Left(room) => {
                // Items of the room not yet pushed are moot (its Left item is not pushed
                // either: marked when the LEAVE came).
                let sent = c.inflight.map_or(c.acked, |(n, _, _)| n.max(c.acked));
                c.queue.retain(|(n, p)| *n <= sent || p.room != room);
            }
            Report::LeaveFailed(room) => {
                if let Some(i) = c.own_leaves.iter().position(|r| *r == room) {
                    c.own_leaves.remove(i);
                }
            }
        }
        self.save(&b.peer);
    }

    /// Sends the next item of every device whose previous one was acknowledged.
    pub fn pump(&mut self, now: u64, table: &mut SessionTable) {
        let mut changed = Vec::new();
        for (peer, c) in &mut self.cursors {
            let waiting = c.queue.back().is_some_and(|(n, _)| *n > c.acked);
            if !c.registered || (c.inflight.is_none() && !waiting) {
                continue;
            }
            let Some(i) = table.find_peer(peer) else {
                continue;
            };
            let Some(s) = table.session(i) else {
                continue;
            };
            let ep = s.coap();
            let observed = ep.observer_count(dev::RESOURCE) > 0;
            if let Some((n, room_def, user_def)) = c.inflight {
                if ep.notification_in_flight(dev::RESOURCE) {
                    continue;
                }
                c.inflight = None;
                if observed {
                    // Acknowledged: kept until a registration says it was saved (or the
                    // window is full); the numbers it defined are known to the device.
                    c.acked = n;
                    if let Some(r) = room_def.and_then(|i| c.rooms.get_mut(usize::from(i))) {
                        r.1 = true;
                    }
                    if let Some(u) = user_def.and_then(|i| c.users.get_mut(usize::from(i))) {
                        u.2 = true;
                    }
                    while c.queue.len() > KEEP_ACKED
                        && c.queue.front().is_some_and(|(m, _)| *m <= c.acked)
                    {
                        c.queue.pop_front();
                    }
                    changed.push(*peer);
                }
            }
            if !observed {
                c.registered = false;
                c.generation.fetch_add(1, Ordering::SeqCst);
                tracing::info!("serve: device no longer observing; pushes wait for it");
                continue;
            }
            let Some((n, p)) = c.queue.iter().find(|(m, _)| *m > c.acked).cloned() else {
                continue;
            };
            let (room, room_def) = number(&mut c.rooms, &p.room, dev::ROOMS);
            c.uses += 1;
            let (sender, sender_def) = user_number(&mut c.users, &p.sender, c.uses);
            let body = cut(&p.body, BODY_MAX);
            let item = Item {
                seq: n as u8,
                kind: p.kind,
                room,
                room_def: room_def.then_some(p.room.as_str()),
                sender,
                sender_def: sender_def.then_some(p.sender.as_str()),
                body: if matches!(p.kind, Kind::Invite | Kind::Left) {
                    ""
                } else {
                    body
                },
            };
            let mut buf = [0u8; 1024];
            let Ok(len) = item.write(&mut buf) else {
                tracing::warn!("serve: device item not encodable; dropped");
                c.queue.retain(|(m, _)| *m != n);
                changed.push(*peer);
                continue;
            };
            match ep.notify(
                now,
                dev::RESOURCE,
                true,
                Code::CONTENT,
                Options::NONE,
                &buf[..len],
            ) {
                Ok(_) => {
                    tracing::debug!(item = n, link_body = len, "serve: device push");
                    c.inflight = Some((n, room_def.then_some(room), sender_def.then_some(sender)));
                }
                Err(e) => tracing::debug!(?e, "serve: device push deferred"),
            }
        }
        for peer in changed {
            self.save(&peer);
        }
    }
}

/// An EVENT payload's type and its content as JSON (an empty content is `{}`), checked: a
/// type of at most [`TYPE_MAX`] bytes, a content that unpacks to a JSON object of at most
/// [`EVENT_JSON_MAX`] bytes.
fn event_body(payload: &[u8]) -> Result<(&str, String), Code> {
    let (kind, packed) = dev::parse_event(payload).map_err(|_| Code::BAD_REQUEST)?;
    if kind.len() > TYPE_MAX {
        return Err(Code::BAD_REQUEST);
    }
    if packed.is_empty() {
        return Ok((kind, "{}".to_owned()));
    }
    let json = lowband_codec::pack::unpack_vec(packed).map_err(|_| Code::BAD_REQUEST)?;
    if json.len() > EVENT_JSON_MAX {
        return Err(Code::REQUEST_ENTITY_TOO_LARGE);
    }
    match serde_json::from_slice::<Value>(&json) {
        Ok(v) if v.is_object() => {}
        _ => return Err(Code::BAD_REQUEST),
    }
    let json = String::from_utf8(json).map_err(|_| Code::BAD_REQUEST)?;
    Ok((kind, json))
}

/// The user id of `token` (`GET /account/whoami`), cached per token.
///
/// # Errors
/// The homeserver's answer when it is not a user id.
async fn whoami(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    base: &str,
    token: &str,
    cache: &Whoami,
) -> Result<String, HttpResponse> {
    if let Some(u) = cache.lock().ok().and_then(|c| c.get(token).cloned()) {
        return Ok(u);
    }
    let url = format!("{base}/_matrix/client/v3/account/whoami");
    let r = call(http, "GET", &url, token, None).await;
    let user = (r.status == 200)
        .then(|| serde_json::from_slice::<Value>(&r.body).ok())
        .flatten()
        .and_then(|v| v["user_id"].as_str().map(str::to_owned))
        .filter(|u| u.starts_with('@'));
    let Some(user) = user else {
        return Err(if r.status == 200 {
            HttpResponse::matrix_error(502, "M_UNKNOWN", "lowband: whoami without a user id")
        } else {
            r
        });
    };
    if let Ok(mut c) = cache.lock() {
        if c.len() >= WHOAMI_MAX {
            c.clear();
        }
        c.insert(token.to_owned(), user.clone());
    }
    Ok(user)
}

/// The number of `id` in `table` (at most `max` entries, the oldest reused), and whether it
/// must be defined (new, or its definition not yet acknowledged).
fn number(table: &mut Vec<(String, bool)>, id: &str, max: usize) -> (u8, bool) {
    if let Some(i) = table.iter().position(|(r, _)| r == id) {
        return (i as u8, !table[i].1);
    }
    if table.len() < max {
        table.push((id.to_owned(), false));
        return ((table.len() - 1) as u8, true);
    }
    // Full: number 0 is reused (rare: more rooms than the device holds).
    table[0] = (id.to_owned(), false);
    (0, true)
}

fn user_number(table: &mut Vec<(String, u64, bool)>, id: &str, now: u64) -> (u8, bool) {
    if let Some(i) = table.iter().position(|(u, _, _)| u == id) {
        table[i].1 = now;
        return (i as u8, !table[i].2);
    }
    if table.len() < dev::USERS {
        table.push((id.to_owned(), now, false));
        return ((table.len() - 1) as u8, true);
    }
    let i = table
        .iter()
        .enumerate()
        .min_by_key(|(_, (_, t, _))| *t)
        .map_or(0, |(i, _)| i);
    table[i] = (id.to_owned(), now, false);
    (i as u8, true)
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut n = max;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

fn percent(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

async fn call(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    token: &str,
    json: Option<String>,
) -> HttpResponse {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    if json.is_some() {
        b = b.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let Ok(r) = b.body(Full::new(Bytes::from(json.unwrap_or_default()))) else {
        return HttpResponse::matrix_error(400, "M_UNRECOGNIZED", "lowband: bad request");
    };
    let timeout = Duration::from_millis(u64::from(POLL_TIMEOUT_MS) + 30_000);
    match tokio::time::timeout(timeout, http.request(r)).await {
        Err(_) => HttpResponse::matrix_error(504, "M_UNKNOWN", "homeserver timed out"),
        Ok(Err(e)) => {
            tracing::warn!(%e, "serve: homeserver unreachable");
            HttpResponse::matrix_error(502, "M_UNKNOWN", "homeserver unreachable")
        }
        Ok(Ok(r)) => crate::federation::read_response(r).await,
    }
}

fn spawn_poller(
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base: String,
    peer: [u8; 32],
    c: &Cursor,
    generation: u64,
    tx: mpsc::UnboundedSender<Batch>,
    cache: Whoami,
) {
    let current = Arc::clone(&c.generation);
    let mut since = c.since.clone();
    let filter = c.filter.clone();
    let token = c.token.clone();
    tokio::spawn(async move {
        while current.load(Ordering::SeqCst) == generation {
            // Without a since token the first sync only finds "now" (answered at once).
            let timeout = if since.is_some() { POLL_TIMEOUT_MS } else { 0 };
            let mut url = format!("{base}/_matrix/client/v3/sync?timeout={timeout}");
            if let Some(s) = &since {
                url.push_str("&since=");
                url.push_str(&percent(s));
            }
            if !filter.is_empty() {
                url.push_str("&filter=");
                url.push_str(&percent(&filter));
            }
            let r = call(&http, "GET", &url, &token, None).await;
            if current.load(Ordering::SeqCst) != generation {
                return;
            }
            let parsed = (r.status == 200)
                .then(|| serde_json::from_slice::<Value>(&r.body).ok())
                .flatten();
            let Some(v) = parsed else {
                tracing::info!(status = r.status, "serve: device sync failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            };
            let Some(next) = v["next_batch"].as_str().map(str::to_owned) else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            // Without a since token (a device that never synced), start from now.
            let items = if since.is_some() {
                // The device's user id tells its own joins (history before them is not
                // pushed); without it, every timeline event counts.
                let own = whoami(&http, &base, &token, &cache).await.ok();
                items_of(&v, own.as_deref())
            } else {
                Vec::new()
            };
            let b = Batch {
                peer,
                report: Report::Sync {
                    since: since.clone(),
                    next: next.clone(),
                    items,
                },
            };
            if tx.send(b).is_err() {
                return;
            }
            since = Some(next);
        }
    });
}

/// Whether `e` is `own`'s join to its room (not a profile change of a member).
fn is_own_join(e: &Value, own: &str) -> bool {
    e["type"] == "m.room.member"
        && e["state_key"] == own
        && e["content"]["membership"] == "join"
        && e["unsigned"]["prev_content"]["membership"] != "join"
}

/// The items a device gets from a `/sync` response, in order. `own` is the device's user id:
/// in a room it joined in this response, only events after its join count.
fn items_of(v: &Value, own: Option<&str>) -> Vec<Pending> {
    let mut out = Vec::new();
    let rooms = &v["rooms"];
    if let Some(join) = rooms["join"].as_object() {
        for (room, r) in join {
            let Some(events) = r["timeline"]["events"].as_array() else {
                continue;
            };
            let from = own
                .and_then(|own| events.iter().rposition(|e| is_own_join(e, own)))
                .map_or(0, |i| i + 1);
            for e in &events[from..] {
                if e["type"] != "m.room.message" || !e["unsigned"]["transaction_id"].is_null() {
                    continue;
                }
                let kind = match e["content"]["msgtype"].as_str() {
                    Some("m.text") => Kind::Text,
                    Some("m.notice") => Kind::Notice,
                    _ => continue,
                };
                let (Some(sender), Some(body)) =
                    (e["sender"].as_str(), e["content"]["body"].as_str())
                else {
                    continue;
                };
                out.push(Pending {
                    kind,
                    room: room.clone(),
                    sender: sender.to_owned(),
                    body: body.to_owned(),
                });
            }
        }
    }
    if let Some(invite) = rooms["invite"].as_object() {
        for (room, r) in invite {
            let inviter = r["invite_state"]["events"]
                .as_array()
                .and_then(|ev| {
                    ev.iter()
                        .filter(|e| e["type"] == "m.room.member")
                        .find_map(|e| e["sender"].as_str())
                })
                .unwrap_or("");
            out.push(Pending {
                kind: Kind::Invite,
                room: room.clone(),
                sender: inviter.to_owned(),
                body: String::new(),
            });
        }
    }
    if let Some(leave) = rooms["leave"].as_object() {
        for room in leave.keys() {
            out.push(Pending {
                kind: Kind::Left,
                room: room.clone(),
                sender: String::new(),
                body: String::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_skip_own_echoes_and_keep_order() {
        let v = serde_json::json!({"next_batch": "s2", "rooms": {"join": {"!r:x": {"timeline": {"events": [
            {"type": "m.room.message", "sender": "@a:x", "content": {"msgtype": "m.text", "body": "!status"}},
            {"type": "m.room.message", "sender": "@d:x", "content": {"msgtype": "m.text", "body": "t=1"},
             "unsigned": {"transaction_id": "d1.0"}},
            {"type": "m.room.member", "sender": "@a:x", "content": {}},
            {"type": "m.room.message", "sender": "@b:x", "content": {"msgtype": "m.notice", "body": "n"}}
        ]}}}, "invite": {"!i:x": {"invite_state": {"events": [
            {"type": "m.room.member", "sender": "@a:x"}]}}}}});
        let items = items_of(&v, None);
        let got: Vec<_> = items
            .iter()
            .map(|p| (p.kind, p.room.as_str(), p.sender.as_str(), p.body.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::Text, "!r:x", "@a:x", "!status"),
                (Kind::Notice, "!r:x", "@b:x", "n"),
                (Kind::Invite, "!i:x", "@a:x", ""),
            ]
        );
    }

    #[test]
    fn history_before_the_devices_own_join_is_not_pushed() {
        let msg = |s: &str, b: &str| {
            serde_json::json!({"type": "m.room.message", "sender": s,
            "content": {"msgtype": "m.text", "body": b}})
        };
        let member = |who: &str, m: &str, prev: Option<&str>| {
            let mut e = serde_json::json!({"type": "m.room.member", "sender": who,
                "state_key": who, "content": {"membership": m}});
            if let Some(p) = prev {
                e["unsigned"] = serde_json::json!({"prev_content": {"membership": p}});
            }
            e
        };
        let v = serde_json::json!({"next_batch": "s2", "rooms": {"join": {
            "!new:x": {"timeline": {"events": [
                msg("@a:x", "!led on"), member("@d:x", "join", Some("invite")),
                msg("@a:x", "!status"), member("@d:x", "join", Some("join")),
                msg("@a:x", "after rename")]}},
            "!old:x": {"timeline": {"events": [
                msg("@a:x", "hello"), member("@b:x", "join", None), msg("@b:x", "hi")]}}}}});
        let bodies = |own| -> Vec<String> {
            items_of(&v, own)
                .into_iter()
                .map(|p| format!("{} {}", p.room, p.body))
                .collect()
        };
        assert_eq!(
            bodies(Some("@d:x")),
            [
                "!new:x !status",
                "!new:x after rename",
                "!old:x hello",
                "!old:x hi"
            ]
        );
        // Without the user id every message counts.
        assert_eq!(bodies(None).len(), 5);
    }

    #[test]
    fn event_payloads_are_checked_and_unpacked() {
        let content = br#"{"v":21.5,"unit":"C"}"#;
        let packed = lowband_codec::pack::pack_vec(content).unwrap();
        let mut b = vec![0u8; 64];
        let n = dev::write_event("org.x.reading", &packed, &mut b).unwrap();
        let (kind, json) = event_body(&b[..n]).unwrap();
        assert_eq!(kind, "org.x.reading");
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            serde_json::json!({"v": 21.5, "unit": "C"})
        );
        // Empty content: {}.
        assert_eq!(event_body(b"\x01t"), Ok(("t", "{}".to_owned())));
        // Not an object, not packed, no type, a type too long.
        let arr = lowband_codec::pack::pack_vec(b"[1]").unwrap();
        let n = dev::write_event("t", &arr, &mut b).unwrap();
        assert_eq!(event_body(&b[..n]), Err(Code::BAD_REQUEST));
        assert_eq!(event_body(b"\x01t\xff"), Err(Code::BAD_REQUEST));
        assert_eq!(event_body(b"\x00"), Err(Code::BAD_REQUEST));
        let long = "t".repeat(TYPE_MAX + 1);
        let mut big = vec![0u8; 400];
        let n = dev::write_event(&long, b"", &mut big).unwrap();
        assert_eq!(event_body(&big[..n]), Err(Code::BAD_REQUEST));
        // Large after unpacking: refused.
        let huge = format!(r#"{{"a":"{}"}}"#, "x".repeat(EVENT_JSON_MAX));
        let packed = lowband_codec::pack::pack_vec(huge.as_bytes()).unwrap();
        let mut big = vec![0u8; packed.len() + 8];
        let n = dev::write_event("t", &packed, &mut big).unwrap();
        assert_eq!(event_body(&big[..n]), Err(Code::REQUEST_ENTITY_TOO_LARGE));
    }

    #[test]
    fn answers_are_empty_and_errors_keep_status_and_retry_after() {
        let ok = changed_or(HttpResponse {
            status: 200,
            body: br#"{"event_id":"$e"}"#.to_vec(),
            ..HttpResponse::default()
        });
        assert_eq!((ok.status, ok.body.len()), (204, 0));
        let busy = changed_or(HttpResponse::matrix_error(429, "M_LIMIT_EXCEEDED", "slow"));
        assert_eq!(
            (busy.status, busy.body.len(), busy.retry_after),
            (429, 0, None)
        );
        let mut r = HttpResponse::matrix_error(429, "M_LIMIT_EXCEEDED", "slow");
        r.body = br#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":1200}"#.to_vec();
        assert_eq!(changed_or(r).retry_after.as_deref(), Some("2"));
        let mut r = HttpResponse::matrix_error(429, "M_LIMIT_EXCEEDED", "slow");
        r.retry_after = Some("7".into());
        assert_eq!(changed_or(r).retry_after.as_deref(), Some("7"));
    }

    #[test]
    fn rooms_come_only_from_defined_slots() {
        let aliases = vec![
            "!r:x".to_owned(),
            "#a:x".to_owned(),
            "@u:x".to_owned(),
            "\0slot".to_owned(),
        ];
        assert_eq!(room_of(&aliases, 0), Ok("!r:x".to_owned()));
        assert_eq!(room_of(&aliases, 1), Ok("#a:x".to_owned()));
        assert_eq!(room_of(&aliases, 2), Err(Code::BAD_REQUEST));
        assert_eq!(room_of(&aliases, 3), Err(lowband_codec::lb::AUTH_UNKNOWN));
        assert_eq!(room_of(&aliases, 9), Err(lowband_codec::lb::AUTH_UNKNOWN));
        assert_eq!(percent("!r/../x:y"), "%21r%2F..%2Fx%3Ay");
    }

    fn pending(room: &str, body: &str, kind: Kind) -> Pending {
        Pending {
            kind,
            room: room.into(),
            sender: "@a:x".into(),
            body: body.into(),
        }
    }

    #[tokio::test]
    async fn cursors_are_written_0600_and_loaded_and_open_files_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("lowband-devcur-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let peer = [7u8; 32];
        {
            let (mut d, _rx) = Devices::with_state_dir(&dir).unwrap();
            d.cursors.insert(peer, Cursor::default());
            d.on_batch(Batch {
                peer,
                report: Report::Sync {
                    since: None,
                    next: "s1".into(),
                    items: vec![pending("!r:x", "one", Kind::Text)],
                },
            });
        }
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains("\"s1\"") && text.contains("one"), "{text}");
        let (mut d, _rx) = Devices::with_state_dir(&dir).unwrap();
        let c = &d.cursors[&peer];
        assert_eq!(
            (c.since.as_deref(), c.last_queued, c.queue.len()),
            (Some("s1"), 1, 1)
        );
        assert_eq!(c.queue[0].1, pending("!r:x", "one", Kind::Text));
        assert!(c.token.is_empty() && !c.registered);
        // Kept for an allowed key.
        d.retain(|p| *p == peer);
        assert_eq!(d.len(), 1);
        // A file group or others may read is refused.
        std::fs::set_permissions(&files[0], std::fs::Permissions::from_mode(0o644)).unwrap();
        let (d, _rx) = Devices::with_state_dir(&dir).unwrap();
        assert!(d.is_empty());
        // A key no longer allowed: cursor and file go.
        std::fs::set_permissions(&files[0], std::fs::Permissions::from_mode(0o600)).unwrap();
        let (mut d, _rx) = Devices::with_state_dir(&dir).unwrap();
        assert_eq!(d.len(), 1);
        d.retain(|_| false);
        assert!(d.is_empty() && !files[0].exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_leave_drops_the_rooms_unpushed_items_and_its_left_item() {
        let (mut d, _rx) = Devices::new();
        let peer = [1u8; 32];
        d.cursors.insert(
            peer,
            Cursor {
                since: Some("s0".into()),
                ..Cursor::default()
            },
        );
        let sync = |since: &str, next: &str, items| Batch {
            peer,
            report: Report::Sync {
                since: Some(since.into()),
                next: next.into(),
                items,
            },
        };
        d.on_batch(sync(
            "s0",
            "s1",
            vec![
                pending("!a:x", "a1", Kind::Text),
                pending("!b:x", "b1", Kind::Text),
            ],
        ));
        // As a LEAVE of !a:x and !c:x marks them; the one of !c:x fails.
        let c = d.cursors.get_mut(&peer).unwrap();
        c.own_leaves.push_back("!a:x".into());
        c.own_leaves.push_back("!c:x".into());
        d.on_batch(Batch {
            peer,
            report: Report::Left("!a:x".into()),
        });
        d.on_batch(Batch {
            peer,
            report: Report::LeaveFailed("!c:x".into()),
        });
        d.on_batch(sync(
            "s1",
            "s2",
            vec![
                pending("!a:x", "", Kind::Left),
                pending("!b:x", "", Kind::Left),
                pending("!c:x", "", Kind::Left),
            ],
        ));
        let c = &d.cursors[&peer];
        let got: Vec<_> = c
            .queue
            .iter()
            .map(|(n, p)| (*n, p.room.as_str(), p.kind))
            .collect();
        assert_eq!(
            got,
            [
                (2, "!b:x", Kind::Text),
                (3, "!b:x", Kind::Left),
                (4, "!c:x", Kind::Left)
            ]
        );
        assert!(c.own_leaves.is_empty());
        // A stale batch (not continuing the chain) is ignored.
        d.on_batch(sync("s1", "s9", vec![pending("!b:x", "x", Kind::Text)]));
        assert_eq!(d.cursors[&peer].since.as_deref(), Some("s2"));
    }

    #[test]
    fn numbers_are_defined_once_and_reused_lru() {
        let mut users = Vec::new();
        assert_eq!(user_number(&mut users, "@a", 1), (0, true));
        // Defined again until a notification carrying the definition was acknowledged.
        assert_eq!(user_number(&mut users, "@a", 2), (0, true));
        users[0].2 = true;
        assert_eq!(user_number(&mut users, "@a", 2), (0, false));
        for i in 1..dev::USERS {
            assert_eq!(
                user_number(&mut users, &format!("@u{i}"), 2 + i as u64),
                (i as u8, true)
            );
        }
        // @a (used at 2) is the least recent: its number goes to the newcomer.
        assert_eq!(user_number(&mut users, "@new", 100), (0, true));
        let mut rooms = Vec::new();
        assert_eq!(number(&mut rooms, "!r", 16), (0, true));
        assert_eq!(number(&mut rooms, "!s", 16), (1, true));
        assert_eq!(number(&mut rooms, "!r", 16), (0, true));
        rooms[0].1 = true;
        assert_eq!(number(&mut rooms, "!r", 16), (0, false));
        assert_eq!(cut("aé", 2), "a");
    }
}
