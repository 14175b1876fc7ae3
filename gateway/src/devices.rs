//! `serve`'s side of the device profile ([`lowband_codec::lb::dev`]): compact sends and sync
//! pushed with Observe.
//!
//! ```text
//!  device ──TEXT op──► send_text ──PUT /rooms/{alias}/send/m.room.message/d{boot}.{seq}──► HS
//!         ◄── 2.04 (empty, no event id) ◄──────────────────────────────────────────────────┘
//!  device ──SYNC op (Observe: 0)──► register: cursor (since kept here), poller task
//!  poller ──GET /sync?since=..&timeout=30000──► HS ──► Batch ──► on_batch: items queued
//!  pump (every loop turn): one CON notification in flight; acknowledged ──► next item
//! ```
//!
//! The cursor of a device (keyed by its static key) outlives its sessions and registrations:
//! the since token, the items not known to be saved by the device and the item numbering. An
//! item stays after its notification was acknowledged (the device may reboot before saving
//! it) until a registration names a later item as the last one the device saved; the device
//! registers at every boot, so a reboot resumes right after what it saved: nothing lost, and
//! what it sees again it recognises by number ([`dev::next_seq`]). Nothing new costs nothing
//! on the link.
//!
//! Not kept across a restart of `serve` (memory only): a device registering with a cursor
//! `serve` does not hold starts from its since token if it never had a push, else from "now"
//! (events of the outage are not pushed: never a replay of commands long handled).
//!
//! Events the device sent itself (their `unsigned.transaction_id` is set for the sending
//! token) are not pushed: the 2.04 already confirmed them.
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use lowband_codec::coap::{Code, IncomingRequest, Options, Responder};
use lowband_codec::lb::dev::{self, Item, Kind, Op};
use lowband_codec::lb::opt;
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

/// One event for a device, before numbering and compression.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    kind: Kind,
    room: String,
    sender: String,
    body: String,
}

/// A sync response from a poller.
#[derive(Debug)]
pub struct Batch {
    peer: [u8; 32],
    since: Option<String>,
    next: String,
    items: Vec<Pending>,
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
}

/// Every device's cursor, and the channel pollers report on.
#[derive(Debug)]
pub struct Devices {
    cursors: BTreeMap<[u8; 32], Cursor>,
    tx: mpsc::UnboundedSender<Batch>,
}

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
    /// to this request ([`HttpResponse`] status 204 for a send that went through).
    Later(tokio::task::JoinHandle<HttpResponse>),
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
            },
            rx,
        )
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
        match op {
            Op::Text { slot, boot, seq } => {
                let Some(room) = ctx
                    .aliases
                    .get(usize::from(slot))
                    .filter(|r| !r.contains('\0'))
                else {
                    return Answer::Now(lowband_codec::lb::AUTH_UNKNOWN);
                };
                let Ok(body) = core::str::from_utf8(payload) else {
                    return Answer::Now(Code::BAD_REQUEST);
                };
                let url = format!(
                    "{}/_matrix/client/v3/rooms/{}/send/m.room.message/d{boot}.{seq}",
                    ctx.homeserver,
                    percent(room)
                );
                let json = serde_json::json!({"msgtype": "m.text", "body": body}).to_string();
                tracing::debug!(
                    txn = %format!("d{boot}.{seq}"),
                    link_body = payload.len(),
                    "serve: device send"
                );
                let http = ctx.http.clone();
                Answer::Later(tokio::spawn(async move {
                    let r = call(&http, "PUT", &url, &token, Some(json)).await;
                    if r.status == 200 {
                        HttpResponse {
                            status: 204,
                            ..HttpResponse::default()
                        }
                    } else {
                        r
                    }
                }))
            }
            Op::Sync { last, keep } => {
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
                );
                Answer::Registered
            }
            // Not served yet: 5.01 Not Implemented.
            Op::Join { .. } | Op::Leave { .. } | Op::Typing { .. } | Op::Event { .. } => {
                Answer::Now(Code::new(5, 1))
            }
        }
    }

    /// Answers a registration: the observer is (re)placed and acknowledged with 2.05.
    pub fn accept(&mut self, now: u64, table: &mut SessionTable, i: usize, to: &Responder) {
        let Some(s) = table.session(i) else {
            return;
        };
        let ep = s.coap();
        ep.drop_observers(dev::RESOURCE);
        if let Err(e) =
            ep.respond_observe(now, to, dev::RESOURCE, Code::CONTENT, Options::NONE, &[])
        {
            tracing::warn!(?e, "serve: device registration not accepted");
        }
    }

    /// A poller's batch: queue its items if it continues the cursor's chain.
    pub fn on_batch(&mut self, b: Batch) {
        let Some(c) = self.cursors.get_mut(&b.peer) else {
            return;
        };
        if c.since != b.since {
            // A stale poller (an older registration) or a replay: the current one fetches it.
            return;
        }
        c.since = Some(b.next);
        for it in b.items {
            c.last_queued = c.last_queued.wrapping_add(1);
            c.queue.push_back((c.last_queued, it));
        }
    }

    /// Sends the next item of every device whose previous one was acknowledged.
    pub fn pump(&mut self, now: u64, table: &mut SessionTable) {
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
                c.queue.pop_front();
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
    }
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
                items_of(&v)
            } else {
                Vec::new()
            };
            let b = Batch {
                peer,
                since: since.clone(),
                next: next.clone(),
                items,
            };
            if tx.send(b).is_err() {
                return;
            }
            since = Some(next);
        }
    });
}

/// The items a device gets from a `/sync` response, in order.
fn items_of(v: &Value) -> Vec<Pending> {
    let mut out = Vec::new();
    let rooms = &v["rooms"];
    if let Some(join) = rooms["join"].as_object() {
        for (room, r) in join {
            let Some(events) = r["timeline"]["events"].as_array() else {
                continue;
            };
            for e in events {
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
        let items = items_of(&v);
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
