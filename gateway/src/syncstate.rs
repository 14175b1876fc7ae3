//! Per-session `/sync` state: the since token as a reference, the response as a delta.
//!
//! Why: an incremental `/sync` repeats what both ends already hold. The request's `since` is
//! the `next_batch` of an earlier response, and the response mostly repeats the earlier one
//! (an empty sync differs only in `next_batch`). Both ends keep the last [`RING`] sync
//! responses of a session under a number `k` **chosen by the tunnel**, so a number can never
//! name a different token on the two ends (serve only stores what the tunnel asked it to
//! store under `k`; a serve that lost its state answers "unknown" and the tunnel resends the
//! token in full).
//!
//! Link form (option [`SYNC`], elective, RFC 7252 §5.4.1):
//!
//! ```text
//! request  SYNC = [k]              store the answer's next_batch and body under k
//!               | [k, r]           ... and `since=<next_batch of r>` was the first query item
//!               | [k, r, pos]      ... was query item number pos
//! response SYNC = []  (2.xx)       the payload is a delta against entry r:
//!                                  nb-delta || patch   (patch omitted = no change)
//!          SYNC = []  (4.12)       serve does not hold r: resend with the token in full
//! nb-delta = 0xff                          next_batch unchanged
//!          | p q m middle[m]               keep p leading and q trailing bytes of since
//! patch    = lowband CBOR of a JSON merge patch (RFC 7386) against the body of r, deflated
//!            (first byte 0x1c) with the preset dictionary DEFLATE_DICT ++ CBOR(template of r)
//! ```
//!
//! The template of an entry is the merge of its body into its base's template (bounded), so
//! room ids, senders and the shape of room sections seen in earlier syncs are in the
//! dictionary. A patch is only sent when applying it reproduces the homeserver's body exactly
//! (as a JSON value); otherwise the body goes in full. Serve stores what the tunnel will
//! decode (it runs the tunnel's decoder on its own output), so both ends hold the same bytes.
//!
//! Pushed results ([`crate::observe`]) use the same encoding: a push is a delta against its
//! stream's head entry ([`push_encode`], [`push_decode`]).
//! <https://www.rfc-editor.org/rfc/rfc7386>
use alloc::collections::VecDeque;
use alloc::sync::Arc;

use lowband_codec::cbor::{self, Limits};
use lowband_codec::dict::DEFLATE_DICT;
use lowband_codec::pack;
use serde_json::{Map, Value};

/// The CoAP option number of the sync state (elective, unassigned in RFC 7252's registry).
pub const SYNC: u16 = 10;
/// Sync responses remembered per session, each end.
pub const RING: usize = 8;
/// Largest template (CBOR bytes) used as a dictionary (with DEFLATE_DICT within 32 KiB).
const MAX_TEMPLATE: usize = 16 * 1024;
/// `next_batch` unchanged.
const SAME: u8 = 0xff;

/// One remembered sync response.
#[derive(Debug, PartialEq)]
pub struct Entry {
    /// Its number.
    pub k: u8,
    /// Its `next_batch`.
    pub next_batch: String,
    /// The body as the tunnel decoded it.
    pub body: Value,
    /// The dictionary for deltas against this entry (DEFLATE_DICT ++ template CBOR).
    dict: Vec<u8>,
    /// The accumulated template.
    template: Value,
}

impl Entry {
    fn new(k: u8, base: Option<&Entry>, body: Value) -> Option<Entry> {
        let next_batch = body.get("next_batch")?.as_str()?.to_owned();
        let mut template = match base {
            Some(b) => b.template.clone(),
            None => Value::Object(Map::new()),
        };
        merge(&mut template, &body);
        if let Value::Object(m) = &mut template {
            m.shift_remove("next_batch");
        }
        let mut t = cbor::encode_vec(template.to_string().as_bytes(), &Limits::DEFAULT).ok()?;
        if t.len() > MAX_TEMPLATE {
            // Too big: start again from this body alone.
            template = body.clone();
            if let Value::Object(m) = &mut template {
                m.shift_remove("next_batch");
            }
            t = cbor::encode_vec(template.to_string().as_bytes(), &Limits::DEFAULT).ok()?;
            t.drain(..t.len().saturating_sub(MAX_TEMPLATE));
        }
        let mut dict = DEFLATE_DICT.to_vec();
        dict.extend_from_slice(&t);
        Some(Entry {
            k,
            next_batch,
            body,
            dict,
            template,
        })
    }
}

/// The remembered responses of one session (either end).
#[derive(Debug, Default)]
struct Ring(VecDeque<Arc<Entry>>);

impl Ring {
    fn get(&self, k: u8) -> Option<Arc<Entry>> {
        self.0.iter().find(|e| e.k == k).cloned()
    }
    fn insert(&mut self, e: Entry) {
        self.0.retain(|x| x.k != e.k);
        self.0.push_back(Arc::new(e));
        while self.0.len() > RING {
            self.0.pop_front();
        }
    }
}

/// RFC 7386 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.shift_remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A merge patch turning `from` into `to` (exact only when `to` holds no null: checked by
/// the caller).
fn diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut p = Map::new();
            for k in f.keys() {
                if !t.contains_key(k) {
                    p.insert(k.clone(), Value::Null);
                }
            }
            for (k, v) in t {
                match f.get(k) {
                    Some(old) if old == v => {}
                    Some(old) if old.is_object() && v.is_object() => {
                        p.insert(k.clone(), diff(old, v));
                    }
                    _ => {
                        p.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(p)
        }
        _ => to.clone(),
    }
}

/// Appends the delta turning `since` into `next` (`None`: too long for the form).
pub fn nb_delta(since: &str, next: &str, out: &mut Vec<u8>) -> Option<()> {
    let (a, b) = (since.as_bytes(), next.as_bytes());
    if a == b {
        out.push(SAME);
        return Some(());
    }
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let q = a[p..]
        .iter()
        .rev()
        .zip(b[p..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let middle = &b[p..b.len() - q];
    out.push(u8::try_from(p).ok().filter(|&p| p != SAME)?);
    out.push(u8::try_from(q).ok()?);
    out.push(u8::try_from(middle.len()).ok()?);
    out.extend_from_slice(middle);
    Some(())
}

/// Applies a delta of [`nb_delta`]: the token and the bytes consumed.
pub fn nb_apply(since: &str, d: &[u8]) -> Option<(String, usize)> {
    match *d {
        [SAME, ..] => Some((since.to_owned(), 1)),
        [p, q, m, ref rest @ ..] => {
            let (p, q, m) = (usize::from(p), usize::from(q), usize::from(m));
            let s = since.as_bytes();
            if p + q > s.len() || rest.len() < m {
                return None;
            }
            let mut v = s[..p].to_vec();
            v.extend_from_slice(&rest[..m]);
            v.extend_from_slice(&s[s.len() - q..]);
            Some((String::from_utf8(v).ok()?, 3 + m))
        }
        _ => None,
    }
}

/// Decodes a delta payload against `base`: the body as a JSON value.
pub fn decode_delta(base: &Entry, payload: &[u8]) -> Option<Value> {
    let (nb, used) = nb_apply(&base.next_batch, payload)?;
    let rest = payload.get(used..)?;
    let mut body = base.body.clone();
    if !rest.is_empty() {
        let mut cap = base.dict.len() + 64 * rest.len() + 4096;
        let patch = loop {
            let mut scratch = vec![0u8; cap];
            match pack::unpack_cbor_with(rest, &mut scratch, &base.dict) {
                Ok(c) => break cbor::decode_vec(c, &Limits::DEFAULT).ok()?,
                Err(pack::Error::ScratchTooSmall) if cap < (8 << 20) => cap *= 4,
                Err(_) => return None,
            }
        };
        let patch: Value = serde_json::from_slice(&patch).ok()?;
        merge(&mut body, &patch);
    }
    match &mut body {
        Value::Object(m) => {
            m.insert("next_batch".to_owned(), Value::String(nb));
        }
        _ => return None,
    }
    Some(body)
}

/// Encodes `body` as a delta against `base` (`None`: not exactly representable).
pub fn encode_delta(base: &Entry, body: &Value) -> Option<Vec<u8>> {
    let next = body.get("next_batch")?.as_str()?;
    let mut out = Vec::new();
    nb_delta(&base.next_batch, next, &mut out)?;
    let mut from = base.body.clone();
    let mut to = body.clone();
    for v in [&mut from, &mut to] {
        if let Value::Object(m) = v {
            m.shift_remove("next_batch");
        }
    }
    let patch = diff(&from, &to);
    if patch.as_object().is_none_or(|m| !m.is_empty()) {
        let c = cbor::encode_vec(patch.to_string().as_bytes(), &Limits::DEFAULT).ok()?;
        match pack::deflate_with(&c, &base.dict) {
            Some(d) if d.len() + 1 < c.len() => {
                out.push(pack::DEFLATE_MARK);
                out.extend_from_slice(&d);
            }
            // A plain CBOR map never starts with the deflate mark.
            _ => out.extend_from_slice(&c),
        }
    }
    // Exactness: the tunnel must get the homeserver's value.
    (decode_delta(base, &out).as_ref() == Some(body)).then_some(out)
}

/// What the tunnel decodes from a plain (non-delta) JSON body: the body after the wire's
/// packing round trip.
fn as_decoded(json: &[u8]) -> Option<Value> {
    pack::pack_vec(json)
        .ok()
        .and_then(|p| pack::unpack_vec(&p).ok())
        .and_then(|j| serde_json::from_slice(&j).ok())
}

/// Serve: encodes a pushed sync result against a stream's `head` (crate::observe): the delta
/// payload (`None`: send the body in full) and the entry both ends hold afterwards.
pub fn push_encode(head: &Entry, json: &[u8]) -> Option<(Option<Vec<u8>>, Entry)> {
    let body: Value = serde_json::from_slice(json).ok()?;
    let delta = encode_delta(head, &body);
    let seen = match &delta {
        Some(d) => decode_delta(head, d)?,
        None => as_decoded(json)?,
    };
    let e = Entry::new(0, Some(head), seen)?;
    Some((delta, e))
}

/// Tunnel: decodes a push against the stream's `head` (`delta` payload, or the plain `json`
/// body): the body and the new head.
pub fn push_decode(
    head: &Entry,
    delta: Option<&[u8]>,
    json: Option<&[u8]>,
) -> Option<(Value, Entry)> {
    let body = match (delta, json) {
        (Some(d), _) => decode_delta(head, d)?,
        (None, Some(j)) => serde_json::from_slice(j).ok()?,
        (None, None) => return None,
    };
    let e = Entry::new(0, Some(head), body.clone())?;
    Some((body, e))
}

/// Where the `since` item sits in a sync request's query.
fn split_since(pq: &str) -> Option<(usize, &str, String)> {
    let (path, q) = pq.split_once('?')?;
    let segs: Vec<&str> = q.split('&').collect();
    let pos = segs.iter().position(|s| s.starts_with("since="))?;
    let since = &segs[pos]["since=".len()..];
    let rest: Vec<&str> = segs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pos)
        .map(|(_, s)| *s)
        .collect();
    let stripped = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    Some((pos, since, stripped))
}

/// Puts `since=<token>` back as query item `pos`.
fn insert_since(pq: &str, pos: usize, token: &str) -> Option<String> {
    let item = format!("since={token}");
    let (path, mut segs) = match pq.split_once('?') {
        Some((p, q)) => (p, q.split('&').collect::<Vec<_>>()),
        None => (pq, Vec::new()),
    };
    if pos > segs.len() {
        return None;
    }
    segs.insert(pos, &item);
    Some(format!("{path}?{}", segs.join("&")))
}

fn is_sync(method: &str, pq: &str) -> bool {
    method == "GET" && pq.split('?').next().is_some_and(|p| p.ends_with("/sync"))
}

/// A sync request in flight (tunnel side).
#[derive(Debug, Clone)]
pub struct SyncReq {
    /// The number its answer is stored under.
    pub k: u8,
    /// The entry its since refers to (pinned until the answer).
    pub base: Option<Arc<Entry>>,
    /// Query item number of since.
    pos: u8,
    /// The path and query as the client sent it.
    pub original: String,
}

impl SyncReq {
    /// The [`SYNC`] option value.
    pub fn option(&self) -> Vec<u8> {
        match (&self.base, self.pos) {
            (None, _) => vec![self.k],
            (Some(b), 0) => vec![self.k, b.k],
            (Some(b), p) => vec![self.k, b.k, p],
        }
    }
}

/// The tunnel's sync state of one session.
///
/// Call protocol: [`TunnelSync::request`] on every request before encoding it (it may shorten
/// the path), put [`SyncReq::option`] in the request, then [`TunnelSync::response`] with the
/// answer, or [`TunnelSync::unknown`] when serve answered 4.12 with [`SYNC`], or
/// [`TunnelSync::done`] when the request failed.
#[derive(Debug, Default)]
pub struct TunnelSync {
    ring: Ring,
    next: u8,
    busy: Vec<u8>,
}

impl TunnelSync {
    /// Prepares a request: `None` when it is not a sync. The since token is taken out of
    /// `path_and_query` when serve holds it (by our numbering).
    pub fn request(&mut self, method: &str, path_and_query: &mut String) -> Option<SyncReq> {
        if !is_sync(method, path_and_query) {
            return None;
        }
        let k = (0..=255u8)
            .map(|i| self.next.wrapping_add(i))
            .find(|k| !self.busy.contains(k))?;
        self.next = k.wrapping_add(1);
        // k is redefined: nothing may refer to its old value any more.
        self.ring.0.retain(|e| e.k != k);
        let original = path_and_query.clone();
        let mut r = SyncReq {
            k,
            base: None,
            pos: 0,
            original,
        };
        if let Some((pos, since, stripped)) = split_since(path_and_query) {
            let base = self.ring.0.iter().rev().find(|e| e.next_batch == since);
            if let (Some(b), Ok(p)) = (base, u8::try_from(pos)) {
                if insert_since(&stripped, pos, since).as_deref() == Some(path_and_query.as_str()) {
                    r.base = Some(b.clone());
                    r.pos = p;
                    *path_and_query = stripped;
                }
            }
        }
        self.busy.push(k);
        if let Some(b) = &r.base {
            self.busy.push(b.k);
        }
        Some(r)
    }

    /// The entry stored under `k` (the answer of a request numbered `k`).
    pub fn entry(&self, k: u8) -> Option<Arc<Entry>> {
        self.ring.get(k)
    }

    /// Serve did not hold the base: the path to send instead (since in full).
    pub fn unknown(&mut self, r: &mut SyncReq) -> String {
        if let Some(b) = r.base.take() {
            if let Some(i) = self.busy.iter().position(|&x| x == b.k) {
                self.busy.remove(i);
            }
            self.ring.0.retain(|e| e.k != b.k);
        }
        r.original.clone()
    }

    /// The request ended without an answer.
    pub fn done(&mut self, r: &SyncReq) {
        for k in core::iter::once(r.k).chain(r.base.as_ref().map(|b| b.k)) {
            if let Some(i) = self.busy.iter().position(|&x| x == k) {
                self.busy.remove(i);
            }
        }
    }

    /// The answer arrived: the JSON body for the client (`delta`: the response carried
    /// [`SYNC`]). `json` is the decoded body of a plain answer. `None`: a delta that does not
    /// decode (never guessed).
    pub fn response(
        &mut self,
        r: &SyncReq,
        status: u16,
        delta: bool,
        payload: &[u8],
        json: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        self.done(r);
        let body = if delta {
            decode_delta(r.base.as_deref()?, payload)?
        } else {
            serde_json::from_slice(json?).ok()?
        };
        if status == 200 {
            if let Some(e) = Entry::new(r.k, r.base.as_deref(), body.clone()) {
                self.ring.insert(e);
            }
        }
        Some(body.to_string().into_bytes())
    }
}

/// Serve's per-request context.
#[derive(Debug, Clone)]
pub struct SyncCtx {
    k: u8,
    base: Option<Arc<Entry>>,
}

/// Serve's sync state of one session (see [`TunnelSync`] for the other end).
#[derive(Debug, Default)]
pub struct ServeSync {
    ring: Ring,
}

/// Serve does not hold the entry a request refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unknown;

impl ServeSync {
    /// Reads a request's [`SYNC`] option and puts its since token back into
    /// `path_and_query`.
    ///
    /// # Errors
    /// [`Unknown`] when the entry is not held (or the option is malformed).
    pub fn request(&self, v: &[u8], path_and_query: &mut String) -> Result<SyncCtx, Unknown> {
        match *v {
            [k] => Ok(SyncCtx { k, base: None }),
            [k, r] | [k, r, _] => {
                let pos = v.get(2).copied().unwrap_or(0);
                let base = self.ring.get(r).ok_or(Unknown)?;
                *path_and_query = insert_since(path_and_query, usize::from(pos), &base.next_batch)
                    .ok_or(Unknown)?;
                Ok(SyncCtx {
                    k,
                    base: Some(base),
                })
            }
            _ => Err(Unknown),
        }
    }

    /// The entry stored for the request of `ctx` (after [`ServeSync::response`]).
    pub fn entry(&self, ctx: &SyncCtx) -> Option<Arc<Entry>> {
        self.ring.get(ctx.k)
    }

    /// Encodes an answer: `Some(payload)` to send as a delta (with an empty [`SYNC`] option),
    /// `None` to send as usual. Either way remembers what the tunnel will decode.
    pub fn response(&mut self, ctx: &SyncCtx, status: u16, json: Option<&[u8]>) -> Option<Vec<u8>> {
        let body: Value = serde_json::from_slice(json?).ok()?;
        let delta = ctx.base.as_deref().and_then(|b| encode_delta(b, &body));
        // What the tunnel will hold: the decoded delta, or the unpacked plain body.
        let seen = match (&delta, &ctx.base) {
            (Some(d), Some(b)) => decode_delta(b, d),
            _ => as_decoded(json?),
        };
        if status == 200 {
            if let Some(e) = seen.and_then(|s| Entry::new(ctx.k, ctx.base.as_deref(), s)) {
                self.ring.insert(e);
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn next_batch_delta_literal_bytes() {
        let mut v = Vec::new();
        nb_delta("s72_5_0_1", "s73_5_0_1", &mut v).unwrap();
        assert_eq!(v, [2, 6, 1, b'3']);
        assert_eq!(nb_apply("s72_5_0_1", &v), Some(("s73_5_0_1".into(), 4)));
        v.clear();
        nb_delta("s72_5", "s72_5", &mut v).unwrap();
        assert_eq!(v, [0xff]);
        assert_eq!(nb_apply("s72_5", &v), Some(("s72_5".into(), 1)));
        v.clear();
        nb_delta("s9_1", "s10_1", &mut v).unwrap();
        assert_eq!(v, [1, 2, 2, b'1', b'0']);
        assert_eq!(nb_apply("s9_1", &v).unwrap().0, "s10_1");
        // Malformed deltas are refused, never guessed.
        assert_eq!(nb_apply("ab", &[2, 1, 0]), None);
        assert_eq!(nb_apply("ab", &[0, 0, 5, b'x']), None);
        assert_eq!(nb_apply("ab", &[0]), None);
    }

    fn empty(nb: &str) -> Value {
        json!({"next_batch": nb, "device_one_time_keys_count": {"signed_curve25519": 0},
               "device_unused_fallback_key_types": []})
    }

    fn sync_req(t: &mut TunnelSync, pq: &str) -> (SyncReq, String) {
        let mut p = pq.to_owned();
        let r = t.request("GET", &mut p).unwrap();
        (r, p)
    }

    #[test]
    fn empty_sync_is_a_byte() {
        let mut t = TunnelSync::default();
        let mut s = ServeSync::default();
        // First sync: since unknown, goes in full, defines 0.
        let (r, p) = sync_req(&mut t, "/_matrix/client/v3/sync?since=s1_1&timeout=0");
        assert_eq!(p, "/_matrix/client/v3/sync?since=s1_1&timeout=0");
        assert_eq!(r.option(), [0]);
        let mut sp = p.clone();
        let ctx = s.request(&r.option(), &mut sp).unwrap();
        let b1 = serde_json::to_vec(&empty("s2_1")).unwrap();
        assert_eq!(s.response(&ctx, 200, Some(&b1)), None);
        let got = t.response(&r, 200, false, &[], Some(&b1)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&got).unwrap(),
            empty("s2_1")
        );
        // Second: since is entry 0; the answer is a one-byte delta.
        let (r, p) = sync_req(&mut t, "/_matrix/client/v3/sync?since=s2_1&timeout=0");
        assert_eq!(p, "/_matrix/client/v3/sync?timeout=0");
        assert_eq!(r.option(), [1, 0]);
        let mut sp = p.clone();
        let ctx = s.request(&r.option(), &mut sp).unwrap();
        assert_eq!(sp, "/_matrix/client/v3/sync?since=s2_1&timeout=0");
        let d = s.response(&ctx, 200, Some(&b1.clone())).unwrap();
        // s2_1 -> s2_1: unchanged, no patch... but b1's next_batch is s2_1: same.
        assert_eq!(d, [0xff]);
        let got = t.response(&r, 200, true, &d, None).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&got).unwrap(),
            empty("s2_1")
        );
        // Third: a new message; next_batch moves, the patch carries the room.
        let (r, p) = sync_req(&mut t, "/_matrix/client/v3/sync?timeout=0&since=s2_1");
        assert_eq!(p, "/_matrix/client/v3/sync?timeout=0");
        assert_eq!(r.option(), [2, 1, 1]);
        let mut sp = p.clone();
        let ctx = s.request(&r.option(), &mut sp).unwrap();
        assert_eq!(sp, "/_matrix/client/v3/sync?timeout=0&since=s2_1");
        let mut full = empty("s3_1");
        full["rooms"] = json!({"join": {"!r:hs": {"timeline": {"events": [{"body": "hi"}]}}}});
        let fb = serde_json::to_vec(&full).unwrap();
        let d = s.response(&ctx, 200, Some(&fb)).unwrap();
        assert_eq!(&d[..4], &[1, 2, 1, b'3']);
        let got = t.response(&r, 200, true, &d, None).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&got).unwrap(), full);
        // Fourth: back to empty, the room goes away with a null in the patch.
        let (r, p) = sync_req(&mut t, "/_matrix/client/v3/sync?timeout=0&since=s3_1");
        let mut sp = p.clone();
        let ctx = s.request(&r.option(), &mut sp).unwrap();
        let eb = serde_json::to_vec(&empty("s3_1")).unwrap();
        let d = s.response(&ctx, 200, Some(&eb)).unwrap();
        let got = t.response(&r, 200, true, &d, None).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&got).unwrap(),
            empty("s3_1")
        );
    }

    #[test]
    fn lost_answer_is_never_referred_to() {
        let mut t = TunnelSync::default();
        let mut s = ServeSync::default();
        let (r, p) = sync_req(&mut t, "/sync?since=a");
        let mut sp = p.clone();
        let ctx = s.request(&r.option(), &mut sp).unwrap();
        let b = serde_json::to_vec(&empty("b")).unwrap();
        s.response(&ctx, 200, Some(&b));
        // The answer is lost: the tunnel never learned "b" under 0.
        t.done(&r);
        let (r, p) = sync_req(&mut t, "/sync?since=b");
        assert_eq!(p, "/sync?since=b");
        assert_eq!(r.option(), [1]);
    }

    #[test]
    fn serve_without_state_asks_for_the_token() {
        let mut t = TunnelSync::default();
        let (r, _) = sync_req(&mut t, "/sync?since=a");
        let b = serde_json::to_vec(&empty("b")).unwrap();
        t.response(&r, 200, false, &[], Some(&b)).unwrap();
        let (mut r, p) = sync_req(&mut t, "/sync?since=b&timeout=0");
        assert_eq!(r.option(), [1, 0]);
        // A fresh serve (restarted) does not hold 0.
        let fresh = ServeSync::default();
        let mut sp = p.clone();
        assert_eq!(fresh.request(&r.option(), &mut sp).unwrap_err(), Unknown);
        assert_eq!(t.unknown(&mut r), "/sync?since=b&timeout=0");
        assert_eq!(r.option(), [1]);
        assert_eq!(fresh.request(&[1, 0, 9], &mut sp).unwrap_err(), Unknown);
        assert_eq!(fresh.request(&[], &mut sp).unwrap_err(), Unknown);
    }

    #[test]
    fn reordered_answers_keep_numbers_apart() {
        let mut t = TunnelSync::default();
        let mut s = ServeSync::default();
        // Two syncs in flight at once get different numbers; answers arrive out of order.
        let (r0, p0) = sync_req(&mut t, "/sync?since=a");
        let (r1, p1) = sync_req(&mut t, "/sync?since=x");
        assert_eq!((r0.k, r1.k), (0, 1));
        let (mut q0, mut q1) = (p0.clone(), p1.clone());
        let c1 = s.request(&r1.option(), &mut q1).unwrap();
        let c0 = s.request(&r0.option(), &mut q0).unwrap();
        let b0 = serde_json::to_vec(&empty("b")).unwrap();
        let b1 = serde_json::to_vec(&empty("y")).unwrap();
        s.response(&c1, 200, Some(&b1));
        s.response(&c0, 200, Some(&b0));
        t.response(&r1, 200, false, &[], Some(&b1));
        t.response(&r0, 200, false, &[], Some(&b0));
        let (r, p) = sync_req(&mut t, "/sync?since=y");
        assert_eq!((r.option(), p.as_str()), (vec![2, 1], "/sync"));
        let mut sp = p.clone();
        s.request(&r.option(), &mut sp).unwrap();
        assert_eq!(sp, "/sync?since=y");
        // Not a sync: untouched.
        let mut o = "/_matrix/client/v3/rooms/!r/send/m/1".to_owned();
        assert!(t.request("PUT", &mut o).is_none());
    }

    #[test]
    fn garbage_from_the_peer_never_panics() {
        let base = Entry::new(0, None, empty("s1_1")).unwrap();
        let mut s = ServeSync::default();
        s.ring.insert(Entry::new(3, None, empty("s1_1")).unwrap());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..64 {
            for _ in 0..64 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 24) as u8
                    })
                    .collect();
                let _ = decode_delta(&base, &v);
                let _ = nb_apply("s1_1", &v);
                let _ = s.request(&v[..v.len().min(4)], &mut "/sync?a".to_owned());
                let mut d = vec![pack::DEFLATE_MARK];
                d.extend_from_slice(&v);
                let _ = decode_delta(&base, &[&[0xff][..], &d].concat());
            }
        }
    }

    #[test]
    fn nulls_in_bodies_go_in_full() {
        let mut t = TunnelSync::default();
        let mut s = ServeSync::default();
        let (r, p) = sync_req(&mut t, "/sync?since=a");
        let mut sp = p;
        let c = s.request(&r.option(), &mut sp).unwrap();
        let b = serde_json::to_vec(&empty("b")).unwrap();
        s.response(&c, 200, Some(&b));
        t.response(&r, 200, false, &[], Some(&b));
        let (r, p) = sync_req(&mut t, "/sync?since=b");
        let mut sp = p;
        let c = s.request(&r.option(), &mut sp).unwrap();
        let mut n = empty("c");
        n["x"] = Value::Null;
        assert_eq!(s.response(&c, 200, Some(n.to_string().as_bytes())), None);
    }
}
