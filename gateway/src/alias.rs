//! Session aliases: room and user ids (and the request's transaction id) as one byte in a
//! request target.
//!
//! Why: `PUT /rooms/!qJrPcRgSwQyUuHzYad:example.org/send/m.room.message/<uuid>` carries two
//! long texts. The target encoding ([`route::encode_target_with`]) turns a text equal to
//! "session string" `i` into the byte `0xe0 + i`; this module keeps that list on both ends.
//!
//! Slots `0..PERSISTENT` are **defined by the tunnel only**: the first requests that carry an
//! id also carry [`ALIAS`] `= [i, text...]`; once a response to such a request arrives, the
//! tunnel knows serve holds slot `i` and sends the id as the byte alone. A slot used by a
//! request in flight is never redefined, so reordering cannot make serve read a slot with
//! another value. A serve that does not hold a slot (it restarted) answers 4.12 with an empty
//! [`ALIAS`]: the tunnel forgets every acknowledgement and resends with definitions. It never
//! decodes a wrong id: an undefined slot decodes as a text with a NUL byte, which is refused.
//!
//! Slot [`TXN`] is per request: a transaction id in the canonical UUID form (matrix-nio's)
//! travels as its 16 bytes, `[TXN, uuid[16]]`, and serve writes it back as the same text, so
//! the homeserver sees the client's own transaction id (idempotency unchanged).
use alloc::collections::{BTreeMap, BTreeSet};

use lowband_codec::route;

/// The CoAP option of an alias definition (elective, repeatable; RFC 7252 §5.4.1).
pub const ALIAS: u16 = lowband_codec::lb::opt::ALIAS;
/// Slots defined once per session.
pub const PERSISTENT: u8 = 16;
/// The per-request slot of a UUID transaction id.
pub const TXN: u8 = 19;
const SLOTS: usize = 20;

/// Why a request's aliases could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// A slot is not held (serve answers 4.12 with [`ALIAS`]).
    Unknown,
    /// A malformed definition.
    Malformed,
}

fn placeholder(i: usize) -> String {
    format!("\u{0}{i}")
}

/// The canonical lowercase UUID text of 16 bytes.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// The 16 bytes of a canonical lowercase UUID text.
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut hex = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23));
    for o in &mut out {
        let mut v = 0u8;
        for _ in 0..2 {
            let (_, &c) = hex.next()?;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = v << 4 | d;
        }
        *o = v;
    }
    (uuid_text(&out) == s).then_some(out)
}

fn aliasable(seg: &str) -> bool {
    seg.len() >= 8
        && (seg.starts_with('!')
            || seg.starts_with('@')
            || seg.starts_with("%21")
            || seg.starts_with("%40"))
}

#[derive(Debug, Clone)]
struct Slot {
    text: String,
    acked: bool,
    busy: BTreeSet<u64>,
    used: u64,
}

/// What a request carries and holds (tunnel side).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasReq {
    /// [`ALIAS`] option values.
    pub defs: Vec<Vec<u8>>,
    /// Persistent slots it uses (held until the answer).
    uses: Vec<(u8, String)>,
    id: u64,
}

/// The tunnel's aliases of one session.
///
/// Call protocol: [`TunnelAliases::encode`] for every request (its [`AliasReq::defs`] go in
/// [`ALIAS`] options), then [`TunnelAliases::answered`] when any answer arrives, or
/// [`TunnelAliases::done`] when the request failed; [`TunnelAliases::reset`] when serve
/// answered 4.12 with [`ALIAS`] (then encode again).
#[derive(Debug, Default)]
pub struct TunnelAliases {
    slots: BTreeMap<u8, Slot>,
    clock: u64,
}

impl TunnelAliases {
    /// Encodes a request target with the session's aliases.
    ///
    /// # Errors
    /// The target's [`route::Error`].
    pub fn encode(
        &mut self,
        method: &str,
        path_and_query: &str,
        out: &mut [u8],
    ) -> Result<(usize, AliasReq), route::Error> {
        self.clock += 1;
        let mut r = AliasReq {
            id: self.clock,
            ..AliasReq::default()
        };
        let path = path_and_query.split('?').next().unwrap_or("");
        let mut txn = None;
        for seg in path.split('/') {
            if let Some(b) = uuid_bytes(seg) {
                txn = Some((seg, b));
                continue;
            }
            if !aliasable(seg) || r.uses.iter().any(|(_, t)| t == seg) {
                continue;
            }
            let i = match self.slots.iter().find(|(_, s)| s.text == seg) {
                Some((&i, _)) => i,
                None => {
                    // A free slot, else the least recently used one no request holds.
                    let free = (0..PERSISTENT).find(|i| !self.slots.contains_key(i));
                    let lru = || {
                        self.slots
                            .iter()
                            .filter(|(_, s)| s.busy.is_empty())
                            .min_by_key(|(_, s)| s.used)
                            .map(|(&i, _)| i)
                    };
                    let Some(i) = free.or_else(lru) else { continue };
                    self.slots.insert(
                        i,
                        Slot {
                            text: seg.to_owned(),
                            acked: false,
                            busy: BTreeSet::new(),
                            used: 0,
                        },
                    );
                    i
                }
            };
            // INVARIANT: i was found in or inserted into the map just above.
            let s = self.slots.get_mut(&i).expect("slot");
            s.busy.insert(r.id);
            s.used = self.clock;
            if !s.acked {
                let mut d = vec![i];
                d.extend_from_slice(seg.as_bytes());
                r.defs.push(d);
            }
            r.uses.push((i, seg.to_owned()));
        }
        let mut list: Vec<String> = (0..SLOTS).map(placeholder).collect();
        for (i, t) in &r.uses {
            list[usize::from(*i)] = t.clone();
        }
        if let Some((t, b)) = txn {
            list[usize::from(TXN)] = t.to_owned();
            let mut d = vec![TXN];
            d.extend_from_slice(&b);
            r.defs.push(d);
        }
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        match route::encode_target_with(&list, method, path_and_query, out) {
            Ok(n) => Ok((n, r)),
            Err(e) => {
                self.done(&r);
                Err(e)
            }
        }
    }

    /// An answer (to any block) arrived: serve holds what the request defined.
    pub fn answered(&mut self, r: &AliasReq) {
        for d in &r.defs {
            if let Some((&i, text)) = d.split_first() {
                if let Some(s) = self.slots.get_mut(&i) {
                    if s.text.as_bytes() == text {
                        s.acked = true;
                    }
                }
            }
        }
    }

    /// The request ended (answered or failed): release its slots (idempotent).
    pub fn done(&mut self, r: &AliasReq) {
        for (i, _) in &r.uses {
            if let Some(s) = self.slots.get_mut(i) {
                s.busy.remove(&r.id);
            }
        }
    }

    /// Serve lost its aliases: define every slot again before using it.
    pub fn reset(&mut self) {
        for s in self.slots.values_mut() {
            s.acked = false;
        }
    }
}

/// Serve's aliases of one session.
#[derive(Debug, Default)]
pub struct ServeAliases {
    slots: BTreeMap<u8, String>,
}

impl ServeAliases {
    /// Takes the definitions of a request (values of its [`ALIAS`] options).
    ///
    /// # Errors
    /// [`AliasError::Malformed`] for a bad slot number, text or UUID.
    pub fn define<'a>(&mut self, defs: impl Iterator<Item = &'a [u8]>) -> Result<(), AliasError> {
        for d in defs {
            let (&i, v) = d.split_first().ok_or(AliasError::Malformed)?;
            let text = match i {
                TXN => uuid_text(v.try_into().map_err(|_| AliasError::Malformed)?),
                i if i < PERSISTENT => core::str::from_utf8(v)
                    .map_err(|_| AliasError::Malformed)?
                    .to_owned(),
                _ => return Err(AliasError::Malformed),
            };
            if text.is_empty() || text.contains('\0') {
                return Err(AliasError::Malformed);
            }
            self.slots.insert(i, text);
        }
        Ok(())
    }

    /// The session list for [`route::decode_target_with`] (undefined slots are texts with a
    /// NUL byte, see [`ServeAliases::check`]).
    pub fn list(&self) -> Vec<String> {
        (0..SLOTS)
            .map(|i| {
                u8::try_from(i)
                    .ok()
                    .and_then(|i| self.slots.get(&i).cloned())
                    .unwrap_or_else(|| placeholder(i))
            })
            .collect()
    }

    /// A decoded path that used an undefined slot.
    ///
    /// # Errors
    /// [`AliasError::Unknown`].
    pub fn check(path_and_query: &str) -> Result<(), AliasError> {
        if path_and_query.contains('\0') {
            Err(AliasError::Unknown)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str =
        "/_matrix/client/v3/rooms/!qJrPcRgSwQyUuHzYad:localhost/send/m.room.message/1b4e28ba-2d11-4a3b-8f3e-bc7a1f2e0a9c";

    fn enc(t: &mut TunnelAliases, pq: &str) -> (Vec<u8>, AliasReq) {
        let mut out = vec![0u8; 512];
        let (n, r) = t.encode("PUT", pq, &mut out).unwrap();
        out.truncate(n);
        (out, r)
    }

    fn dec(s: &mut ServeAliases, target: &[u8], r: &AliasReq) -> Result<String, AliasError> {
        s.define(r.defs.iter().map(Vec::as_slice))?;
        let list = s.list();
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        let mut m = [0u8; 16];
        let mut out = vec![0u8; 1024];
        let (_, n) = route::decode_target_with(&list, target, &mut m, &mut out).unwrap();
        let pq = String::from_utf8(out[..n].to_vec()).unwrap();
        ServeAliases::check(&pq)?;
        Ok(pq)
    }

    #[test]
    fn uuid_round_trip() {
        let b = uuid_bytes("1b4e28ba-2d11-4a3b-8f3e-bc7a1f2e0a9c").unwrap();
        assert_eq!(
            b,
            [
                0x1b, 0x4e, 0x28, 0xba, 0x2d, 0x11, 0x4a, 0x3b, 0x8f, 0x3e, 0xbc, 0x7a, 0x1f, 0x2e,
                0x0a, 0x9c
            ]
        );
        assert_eq!(uuid_text(&b), "1b4e28ba-2d11-4a3b-8f3e-bc7a1f2e0a9c");
        assert_eq!(uuid_bytes("1B4E28BA-2d11-4a3b-8f3e-bc7a1f2e0a9c"), None);
        assert_eq!(uuid_bytes("1b4e28ba-2d11-4a3b-8f3e-bc7a1f2e0a9"), None);
        assert_eq!(uuid_bytes("1b4e28ba+2d11-4a3b-8f3e-bc7a1f2e0a9c"), None);
    }

    #[test]
    fn defined_then_one_byte() {
        let mut t = TunnelAliases::default();
        let mut s = ServeAliases::default();
        let (a, r) = enc(&mut t, SEND);
        assert_eq!(r.defs[0][0], 0);
        assert_eq!(&r.defs[0][1..], b"!qJrPcRgSwQyUuHzYad:localhost");
        assert_eq!(r.defs[1][0], TXN);
        assert_eq!(r.defs[1].len(), 17);
        assert_eq!(dec(&mut s, &a, &r).unwrap(), SEND);
        // Room id and txn id are one byte each: 0xe0 (slot 0) and 0xf3 (slot 19).
        assert!(a.contains(&0xe0) && a.ends_with(&[0xf3]), "{a:02x?}");
        t.answered(&r);
        t.done(&r);
        let (b, r2) = enc(&mut t, SEND);
        assert_eq!(r2.defs.len(), 1, "only the txn id: {:?}", r2.defs);
        assert_eq!(a, b);
        assert_eq!(dec(&mut s, &b, &r2).unwrap(), SEND);
        t.answered(&r2);
        t.done(&r2);
    }

    #[test]
    fn lost_definition_is_not_used() {
        let mut t = TunnelAliases::default();
        let (_, r) = enc(&mut t, SEND);
        // Lost: no answer.
        t.done(&r);
        let (_, r2) = enc(&mut t, SEND);
        assert_eq!(r2.defs[0][0], 0);
        assert_eq!(&r2.defs[0][1..], b"!qJrPcRgSwQyUuHzYad:localhost");
    }

    #[test]
    fn restarted_serve_refuses_never_guesses() {
        let mut t = TunnelAliases::default();
        let mut s = ServeAliases::default();
        let (a, r) = enc(&mut t, SEND);
        dec(&mut s, &a, &r).unwrap();
        t.answered(&r);
        t.done(&r);
        let (b, r2) = enc(&mut t, SEND);
        let mut fresh = ServeAliases::default();
        assert_eq!(dec(&mut fresh, &b, &r2), Err(AliasError::Unknown));
        t.done(&r2);
        t.reset();
        let (c, r3) = enc(&mut t, SEND);
        assert_eq!(dec(&mut fresh, &c, &r3).unwrap(), SEND);
    }

    #[test]
    fn busy_slot_is_not_redefined() {
        let mut t = TunnelAliases::default();
        let mut held = Vec::new();
        for n in 0..PERSISTENT {
            let pq = format!("/_matrix/client/v3/rooms/!room{n:04}:hs/joined_members");
            let (_, r) = enc(&mut t, &pq);
            t.answered(&r);
            t.done(&r);
            if n == 0 {
                // Slot 0 is in use by a request in flight.
                held.push(enc(&mut t, &pq).1);
            }
        }
        let (_, r) = enc(
            &mut t,
            "/_matrix/client/v3/rooms/!other000:hs/joined_members",
        );
        // The least recently used slot not in use is 1, not 0.
        assert_eq!(r.defs[0][0], 1);
        let mut s = ServeAliases::default();
        assert_eq!(
            s.define([&[20u8, b'x'][..]].into_iter()),
            Err(AliasError::Malformed)
        );
        assert_eq!(
            s.define([&[TXN, 1, 2][..]].into_iter()),
            Err(AliasError::Malformed)
        );
        assert_eq!(
            s.define([&[3u8, 0][..]].into_iter()),
            Err(AliasError::Malformed)
        );
        // Garbage definitions are refused or stored as text, never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect();
            let _ = s.define([v.as_slice()].into_iter());
        }
    }
}
