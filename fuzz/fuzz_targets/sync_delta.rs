//! The sync state read from the link: a tunnel decoding serve's delta answer to a sync
//! (`TunnelSync::response` -> `decode_delta`, `nb_apply`), and serve reading a request's SYNC
//! option (`ServeSync::request`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_gateway::syncstate::{nb_apply, ServeSync, TunnelSync};

const BASE: &[u8] = br#"{"next_batch":"s72_5_0_1","rooms":{"join":{"!qJrPcRgSwQyUuHzYad:localhost":{"timeline":{"events":[{"type":"m.room.message","sender":"@alice:localhost","content":{"body":"hi","msgtype":"m.text"}}],"limited":false}}}},"device_one_time_keys_count":{"signed_curve25519":0}}"#;

fuzz_target!(|data: &[u8]| {
    let _ = nb_apply("s72_5_0_1", data);
    // Tunnel: a first sync stores BASE under its number; the second refers to it and gets
    // `data` as a delta.
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
    if let Some(body) = t.response(&r2, 200, true, data, None) {
        assert!(body.starts_with(b"{") && body.ends_with(b"}"), "a JSON object");
    }
    // Serve: an entry under 0, then a request whose SYNC option is the first bytes of data.
    let mut s = ServeSync::default();
    if let Ok(ctx) = s.request(&[0], &mut "/_matrix/client/v3/sync".to_owned()) {
        let _ = s.response(&ctx, 200, Some(BASE));
    }
    let n = data.len().min(4);
    let mut pq = String::from_utf8_lossy(&data[n..]).into_owned();
    let _ = s.request(&data[..n], &mut pq);
});
