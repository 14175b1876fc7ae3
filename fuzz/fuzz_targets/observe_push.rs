//! The tunnel's reading of pushed sync results from the link: feed notifications (Observe
//! sequence number, SYNC option, delta or body) against an established stream
//! (`lowband_gateway::observe::TunnelStreams::on_notification`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::coap::{Code, Config, Endpoint, Options, Request};
use lowband_gateway::observe::TunnelStreams;
use lowband_gateway::syncstate::TunnelSync;

fuzz_target!(|data: &[u8]| {
    // A feed and one stream whose head is an empty sync answer.
    let mut ep: Endpoint<2, 2, 1, 64> = Endpoint::new(Config::default());
    let Ok(h) = ep.request(0, Request::con(Code::GET, Options::NONE, &[])) else {
        return;
    };
    let mut t = TunnelStreams::default();
    let _ = t.on_sync(0, None, "GET", "/sync?since=a");
    t.feed_sent(h);
    t.feed_answer(0, h, Some(0));
    let _ = t.on_sync(1, None, "GET", "/sync?since=a");
    let mut ts = TunnelSync::default();
    let mut p = "/sync?since=x".to_owned();
    let Some(r) = ts.request("GET", &mut p) else {
        return;
    };
    let body = br#"{"next_batch":"s1_2","device_one_time_keys_count":{"signed_curve25519":0}}"#;
    let _ = ts.response(&r, 200, false, &[], Some(body));
    let _ = t.watch_answer(0, true, ts.entry(r.k));
    // Notifications: [seq, option length, option, payload] ...
    let mut rest = data;
    let mut now = 2;
    let mut next = 1u32;
    while let [seq, olen, tail @ ..] = rest {
        // Mostly in order (so that pushes get decoded), sometimes anything.
        let seq = if *seq & 0x80 == 0 {
            next
        } else {
            u32::from(*seq)
        };
        next += 1;
        let (opt, tail) = tail.split_at(usize::from(*olen % 4).min(tail.len()));
        let (len, tail) = match tail {
            [l, t @ ..] => (usize::from(*l), t),
            [] => (0, tail),
        };
        let (payload, tail) = tail.split_at(len.min(tail.len()));
        let _ = t.on_notification(Some(seq), false, Some(opt), payload);
        let _ = t.check_waiter(now, 0, "s1_2", 0, now);
        let _ = t.on_sync(now, None, "GET", "/sync?since=s1_2&timeout=0");
        now += 1;
        rest = tail;
    }
});
