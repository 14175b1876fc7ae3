//! The sync state read from the link: a tunnel decoding serve's delta answer to a sync
//! (`TunnelSync::response` -> `decode_delta`, `nb_apply`), and serve reading a request's SYNC
//! option (`ServeSync::request`).
//!
//! Input: `[mode] ++ rest`. Mode 0: `rest` is the delta payload. Mode 1: a valid delta (made by
//! serve's encoder) with `rest` as `(position, byte)` edits. Mode 2: the valid delta cut to
//! `rest[0]` bytes then `rest[1..]` appended. Any mode: the first bytes of `rest` are also a
//! SYNC option value for serve.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lowband_gateway::syncstate::{nb_apply, ServeSync, TunnelSync};

const BASE: &[u8] = br#"{"next_batch":"s72_5_0_1","rooms":{"join":{"!qJrPcRgSwQyUuHzYad:localhost":{"timeline":{"events":[{"type":"m.room.message","sender":"@alice:localhost","content":{"body":"hi","msgtype":"m.text"}}],"limited":false}}}},"device_one_time_keys_count":{"signed_curve25519":0}}"#;
const NEXT: &[u8] = br#"{"next_batch":"s73_5_0_1","rooms":{"join":{"!qJrPcRgSwQyUuHzYad:localhost":{"timeline":{"events":[{"type":"m.room.message","sender":"@bob:localhost","event_id":"$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG","content":{"body":"hello there","msgtype":"m.text"}}],"limited":false}}}},"device_one_time_keys_count":{"signed_curve25519":0}}"#;

/// Serve's delta turning BASE (entry 0) into NEXT, as the tunnel's second request asks it.
fn valid_delta() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| {
        let mut s = ServeSync::default();
        let mut p = "/_matrix/client/v3/sync?timeout=0".to_owned();
        let ctx = s.request(&[0], &mut p).expect("a fresh entry");
        let _ = s.response(&ctx, 200, Some(BASE));
        let mut p = "/_matrix/client/v3/sync?timeout=0".to_owned();
        let ctx = s.request(&[1, 0], &mut p).expect("entry 0 is held");
        s.response(&ctx, 200, Some(NEXT))
            .expect("NEXT is a delta of BASE")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let payload = match mode {
        0 => rest.to_vec(),
        1 => {
            let mut d = valid_delta().to_vec();
            for e in rest.chunks_exact(2) {
                if let Some(b) = d.get_mut(usize::from(e[0])) {
                    *b = e[1];
                }
            }
            d
        }
        2 => {
            let d = valid_delta();
            let n = usize::from(rest.first().copied().unwrap_or(0)).min(d.len());
            let mut v = d[..n].to_vec();
            v.extend_from_slice(rest.get(1..).unwrap_or(&[]));
            v
        }
        _ => return,
    };
    let _ = nb_apply("s72_5_0_1", &payload);
    // Tunnel: a first sync stores BASE under 0; the second refers to it and gets the payload
    // as a delta.
    let mut t = TunnelSync::default();
    let mut p = "/_matrix/client/v3/sync?timeout=0".to_owned();
    let Some(r) = t.request("GET", &mut p) else {
        return;
    };
    let _ = t.response(&r, 200, false, &[], Some(BASE));
    let mut p = "/_matrix/client/v3/sync?since=s72_5_0_1&timeout=0".to_owned();
    let Some(r2) = t.request("GET", &mut p) else {
        return;
    };
    assert!(r2.base.is_some(), "the first answer is held");
    let body = t.response(&r2, 200, true, &payload, None);
    if mode == 1 && rest.len() < 2 {
        assert!(body.is_some(), "serve's own delta decodes");
    }
    if let Some(body) = body {
        assert!(
            body.starts_with(b"{") && body.ends_with(b"}"),
            "a JSON object"
        );
    }
    // Serve: entry 0 held, then a request whose SYNC option is the first bytes of rest.
    let mut s = ServeSync::default();
    if let Ok(ctx) = s.request(&[0], &mut "/_matrix/client/v3/sync".to_owned()) {
        let _ = s.response(&ctx, 200, Some(BASE));
    }
    let n = rest.len().min(3);
    let mut pq = String::from_utf8_lossy(&rest[n..]).into_owned();
    let _ = s.request(&rest[..n], &mut pq);
});
