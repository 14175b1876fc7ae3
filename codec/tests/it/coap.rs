//! coap: RFC 7252 vectors as exact bytes, bad-message rules, and two endpoints on virtual time
//! over a seeded lossy, duplicating, reordering 100 bit/s link.
// The test binary uses std and has no `extern crate alloc`.
#![allow(clippy::std_instead_of_alloc)]

use lowband_codec::coap::block::{block_slice, transfer_key, BlockOpt, Progress, Reassembly};
use lowband_codec::coap::exchange::{
    Config, Endpoint, Event, Received, Request, RequestError, RequestHandle, Responder,
};
use lowband_codec::coap::msg::{opt, Code, MsgType, Opt, OptionList, Options, Repr, Token};
use lowband_codec::coap::params::TransmissionParams;
use lowband_codec::coap::uri::{options_to_uri, uri_to_options};
use std::collections::BTreeMap;

fn data(name: &str) -> serde_json::Value {
    let p = format!("{}/tests/data/coap/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn rfc7252_examples_exact_bytes() {
    let v = data("rfc7252-appendix-a.json");
    let vectors = v["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 30);
    for t in vectors {
        let id = t["id"].as_str().unwrap();
        let bytes = unhex(t["hex"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, t["length"].as_u64().unwrap(), "{id}");
        if let Some(l) = t.get("rfc_stated_length") {
            assert_eq!(bytes.len() as u64, l.as_u64().unwrap(), "{id}");
        }
        let d = &t["decoded"];
        let r = Repr::parse(&bytes).unwrap_or_else(|e| panic!("{id}: {e:?}"));
        let ty = match r.mtype {
            MsgType::Con => "CON",
            MsgType::Non => "NON",
            MsgType::Ack => "ACK",
            MsgType::Rst => "RST",
        };
        assert_eq!(ty, d["type"], "{id}");
        assert_eq!(format!("{:?}", r.code), d["code"].as_str().unwrap(), "{id}");
        assert_eq!(
            format!("0x{:04x}", r.mid),
            d["mid"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(
            hex(r.token.as_bytes()),
            d["token_hex"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(hex(r.payload), d["payload_hex"].as_str().unwrap(), "{id}");
        let opts: Vec<(u16, String)> = r
            .options
            .iter()
            .map(|o| (o.number, hex(o.as_bytes().unwrap())))
            .collect();
        let want: Vec<(u16, String)> = d["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["number"].as_u64().unwrap() as u16,
                    o["value_hex"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(opts, want, "{id}");
        // Emit from typed parts (not from the wire slice) and compare bytes.
        let list: Vec<Opt> = want
            .iter()
            .zip(r.options.iter())
            .map(|((n, _), o)| Opt::bytes(*n, o.as_bytes().unwrap()))
            .collect();
        let typed = Repr {
            mtype: r.mtype,
            code: r.code,
            mid: r.mid,
            token: Token::new(&unhex(d["token_hex"].as_str().unwrap())).unwrap(),
            options: Options::List(&list),
            payload: r.payload,
        };
        let mut out = [0u8; 64];
        let n = typed.emit(&mut out).unwrap();
        assert_eq!(hex(&out[..n]), t["hex"].as_str().unwrap(), "{id}");
    }
}

#[test]
fn rfc7252_uri_examples() {
    let v = data("rfc7252-appendix-b-uris.json");
    for t in v["vectors"].as_array().unwrap() {
        let uri = t["uri"].as_str().unwrap();
        let mut buf = [0u8; 128];
        let mut l: OptionList<'_, 12> = OptionList::new();
        uri_to_options(uri, &mut buf, &mut l).unwrap();
        let o = l.as_options();
        let mut want: Vec<(u16, Vec<u8>)> = Vec::new();
        for (name, num) in [
            ("Uri-Host", opt::URI_HOST),
            ("Uri-Path", opt::URI_PATH),
            ("Uri-Query", opt::URI_QUERY),
        ] {
            if let Some(a) = t["options"].get(name) {
                for s in a.as_array().unwrap() {
                    want.push((num, s.as_str().unwrap().as_bytes().to_vec()));
                }
            }
        }
        let got: Vec<(u16, Vec<u8>)> = o
            .iter()
            .map(|x| (x.number, x.as_bytes().unwrap().to_vec()))
            .collect();
        assert_eq!(got, want, "{uri}");
        let mut s = String::new();
        options_to_uri(
            t["dest_ip"].as_str().unwrap(),
            t["dest_port"].as_u64().unwrap() as u16,
            &o,
            &mut s,
        )
        .unwrap();
        assert_eq!(s, uri);
        // and as exact bytes in a CON GET, MID 0x0001, no token
        let r = Repr {
            code: Code::GET,
            options: o,
            ..Repr::empty(MsgType::Con, 1)
        };
        let mut out = [0u8; 128];
        let n = r.emit(&mut out).unwrap();
        let back = Repr::parse(&out[..n]).unwrap();
        let again: Vec<(u16, Vec<u8>)> = back
            .options
            .iter()
            .map(|x| (x.number, x.as_bytes().unwrap().to_vec()))
            .collect();
        assert_eq!(again, want);
        if uri == "coap://198.51.100.1:61616//%2F//?%2F%2F&?%26" {
            // Uri-Path "", "/", "", "" then Uri-Query "//", "?&": hand-encoded per RFC 7252 §3.1
            assert_eq!(hex(&out[..n]), "40010001b0012f0000422f2f023f26");
        }
        if uri == "coap://example.net/.well-known/core" {
            assert_eq!(
                hex(&out[..n]),
                "400100013b6578616d706c652e6e6574 8b2e77656c6c2d6b6e6f776e04636f7265"
                    .replace(' ', "")
            );
        }
    }
}

type Ep = Endpoint<4, 16, 2, 256>;

fn params_100() -> TransmissionParams {
    TransmissionParams::for_link(100, 64, 0)
}

fn ep(seed: u64, p: TransmissionParams) -> Ep {
    Ep::new(Config {
        params: p,
        seed,
        token_len: 1,
        extra_options: &[],
    })
}

fn drain<const S: usize, const D: usize, const O: usize, const M: usize>(
    e: &mut Endpoint<S, D, O, M>,
    now: u64,
) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(n) = e.poll_transmit(now, &mut buf) {
        v.push(buf[..n].to_vec());
    }
    v
}

#[test]
fn format_error_in_con_gets_rst_and_others_are_ignored() {
    let mut s = ep(1, TransmissionParams::default());
    // CON with option delta nibble 15 (not a payload marker) -> RST with the same MID
    assert!(s
        .handle_datagram(0, &[0x40, 0x01, 0x12, 0x34, 0xf0])
        .is_none());
    assert_eq!(drain(&mut s, 0), vec![vec![0x70, 0x00, 0x12, 0x34]]);
    // same in NON -> nothing
    assert!(s
        .handle_datagram(0, &[0x50, 0x01, 0x12, 0x35, 0xf0])
        .is_none());
    // TKL 9 in a CON -> RST
    assert!(s.handle_datagram(0, &[0x49, 0x01, 0x12, 0x36]).is_none());
    assert_eq!(drain(&mut s, 0), vec![vec![0x70, 0x00, 0x12, 0x36]]);
    // version 2: silently ignored
    assert!(s.handle_datagram(0, &[0x80, 0x01, 0x12, 0x37]).is_none());
    // CoAP ping (empty CON) -> RST
    assert!(s.handle_datagram(0, &[0x40, 0x00, 0x12, 0x38]).is_none());
    assert_eq!(drain(&mut s, 0), vec![vec![0x70, 0x00, 0x12, 0x38]]);
    // unmatched ACK / RST / truncated: nothing
    assert!(s.handle_datagram(0, &[0x60, 0x00, 0x00, 0x01]).is_none());
    assert!(s.handle_datagram(0, &[0x70, 0x00, 0x00, 0x01]).is_none());
    assert!(s.handle_datagram(0, &[0x40, 0x01]).is_none());
    assert!(drain(&mut s, 0).is_empty());
}

#[test]
fn unknown_critical_option_gets_4_02() {
    let mut s = ep(1, TransmissionParams::default());
    // CON GET token 0x42 with option 9 (critical, unassigned)
    let req = [0x41, 0x01, 0x00, 0x07, 0x42, 0x91, 0x00];
    assert!(s.handle_datagram(0, &req).is_none());
    assert_eq!(drain(&mut s, 0), vec![vec![0x61, 0x82, 0x00, 0x07, 0x42]]);
    // the retransmission gets the same answer, still not delivered
    assert!(s.handle_datagram(5, &req).is_none());
    assert_eq!(drain(&mut s, 5), vec![vec![0x61, 0x82, 0x00, 0x07, 0x42]]);
    // NON with the same: silently ignored
    assert!(s
        .handle_datagram(0, &[0x51, 0x01, 0x00, 0x08, 0x42, 0x91, 0x00])
        .is_none());
    assert!(drain(&mut s, 0).is_empty());
    // an unknown elective option (10) is fine
    assert!(matches!(
        s.handle_datagram(0, &[0x41, 0x01, 0x00, 0x09, 0x42, 0xa1, 0x00]),
        Some(Received::Request(_))
    ));
}

#[test]
fn separate_response_when_app_is_slow() {
    let p = params_100();
    let mut c = ep(1, p);
    let mut s = ep(2, p);
    let h = c
        .request(0, Request::con(Code::GET, Options::NONE, &[]))
        .unwrap();
    let req = drain(&mut c, 0).remove(0);
    let Some(Received::Request(r)) = s.handle_datagram(0, &req) else {
        panic!()
    };
    assert!(
        drain(&mut s, 0).is_empty(),
        "ACK held back for piggybacking"
    );
    let t = p.piggyback_wait;
    assert_eq!(s.poll_timeout(), Some(t));
    let ack = drain(&mut s, t);
    assert_eq!(ack, vec![vec![0x60, 0x00, req[2], req[3]]]);
    assert!(c.handle_datagram(t, &ack[0]).is_none());
    // no retransmission now
    assert!(drain(&mut c, t + 10 * p.ack_timeout)
        .iter()
        .all(|m| m.len() > 4 && m[0] >> 4 != 4));
    s.respond(
        t + 1000,
        &r.responder,
        Code::CONTENT,
        Options::NONE,
        b"late",
    )
    .unwrap();
    let sep = drain(&mut s, t + 1000);
    assert_eq!(sep.len(), 1);
    assert_eq!(sep[0][0] >> 4, 4, "separate response is CON");
    let Some(Received::Response(resp)) = c.handle_datagram(t + 2000, &sep[0]) else {
        panic!()
    };
    assert_eq!((resp.handle, resp.payload), (h, &b"late"[..]));
    let ack2 = drain(&mut c, t + 2000);
    assert_eq!(ack2, vec![vec![0x60, 0x00, sep[0][2], sep[0][3]]]);
    // duplicate separate response: ACKed again, not delivered again
    assert!(c.handle_datagram(t + 3000, &sep[0]).is_none());
    assert_eq!(drain(&mut c, t + 3000), ack2);
    assert!(s.handle_datagram(t + 3000, &ack2[0]).is_none());
    assert!(drain(&mut s, t + 100_000_000).is_empty());
    assert_eq!(s.poll_event(), None);
}

#[test]
fn backoff_timeout_and_deadline() {
    let p = params_100();
    let mut c = ep(3, p);
    let h = c
        .request(0, Request::con(Code::GET, Options::NONE, &[]))
        .unwrap();
    let first = drain(&mut c, 0);
    assert_eq!(first.len(), 1);
    let mut sends = vec![0u64];
    let mut now = 0;
    let mut failed = None;
    while let Some(t) = c.poll_timeout() {
        now = t.max(now);
        for m in drain(&mut c, now) {
            assert_eq!(m, first[0], "retransmissions are identical");
            sends.push(now);
        }
        if let Some(e) = c.poll_event() {
            failed = Some((e, now));
            break;
        }
    }
    assert_eq!(sends.len(), 1 + p.max_retransmit as usize);
    let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= p.ack_timeout && gaps[0] <= p.max_initial_timeout(),
        "{gaps:?}"
    );
    for w in gaps.windows(2) {
        assert_eq!(w[1], 2 * w[0], "exponential backoff {gaps:?}");
    }
    let (e, at) = failed.unwrap();
    assert_eq!(
        e,
        Event::Failed {
            handle: h,
            error: RequestError::Timeout
        }
    );
    assert_eq!(at, sends.last().unwrap() + 2 * gaps.last().unwrap());
    assert!(at <= p.max_transmit_wait());

    // a NON request has only its deadline
    let h2 = c
        .request(
            now,
            Request {
                confirmable: false,
                timeout: Some(60_000),
                ..Request::con(Code::GET, Options::NONE, &[])
            },
        )
        .unwrap();
    assert_eq!(drain(&mut c, now).len(), 1);
    assert!(c.poll_timeout().unwrap() <= now + 60_000);
    assert!(
        drain(&mut c, now + 59_999).is_empty(),
        "NON is never retransmitted"
    );
    assert_eq!(c.poll_timeout(), Some(now + 60_000));
    assert_eq!(c.poll_event(), None);
    c.handle_timeout(now + 60_000);
    assert_eq!(
        c.poll_event(),
        Some(Event::Failed {
            handle: h2,
            error: RequestError::Deadline
        })
    );
}

#[test]
fn nstart_queues_requests() {
    let p = TransmissionParams {
        nstart: 1,
        ..params_100()
    };
    let mut c = ep(4, p);
    let mut s = ep(5, p);
    let hs: Vec<RequestHandle> = (0..3u8)
        .map(|i| {
            c.request(0, Request::con(Code::POST, Options::NONE, &[i + 1]))
                .unwrap()
        })
        .collect();
    assert!(c
        .request(0, Request::con(Code::POST, Options::NONE, &[9]))
        .is_ok());
    assert!(
        c.request(0, Request::con(Code::POST, Options::NONE, &[9]))
            .is_err(),
        "4 slots"
    );
    let mut got = Vec::new();
    for round in 0..4 {
        let out = drain(&mut c, round);
        assert_eq!(out.len(), 1, "one outstanding at a time");
        let Some(Received::Request(r)) = s.handle_datagram(round, &out[0]) else {
            panic!()
        };
        s.respond(round, &r.responder, Code::CHANGED, Options::NONE, r.payload)
            .unwrap();
        for m in drain(&mut s, round) {
            if let Some(Received::Response(x)) = c.handle_datagram(round, &m) {
                got.push((x.handle, x.payload[0]));
            }
        }
    }
    assert_eq!(&got[..3], &[(hs[0], 1), (hs[1], 2), (hs[2], 3)]);
}

// ---------------------------------------------------------------------------------------
// Two endpoints on virtual time over a seeded faulty 100 bit/s link.

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// A tiny fault injector: serialisation at `bit_rate` per direction, loss, duplication and
/// reordering (an extra random delay), all from one seed.
struct Link {
    rng: Rng,
    bit_rate: u64,
    loss: u64,
    dup: u64,
    reorder: u64,
    busy: [u64; 2],
    q: Vec<(u64, usize, u64, Vec<u8>)>,
    seq: u64,
    airtime_bytes: u64,
}

impl Link {
    fn new(seed: u64, loss: u64, dup: u64, reorder: u64) -> Self {
        Link {
            rng: Rng(seed | 1),
            bit_rate: 100,
            loss,
            dup,
            reorder,
            busy: [0; 2],
            q: Vec::new(),
            seq: 0,
            airtime_bytes: 0,
        }
    }
    fn send(&mut self, now: u64, to: usize, m: Vec<u8>) {
        if std::env::var("COAP_TRACE").is_ok() {
            eprintln!("{now:>9} -> {to} {}", hex(&m));
        }
        let start = now.max(self.busy[to]);
        let end = start + (m.len() as u64 * 8 * 1000).div_ceil(self.bit_rate);
        self.busy[to] = end;
        self.airtime_bytes += m.len() as u64;
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for c in 0..copies {
            let extra = if self.rng.chance(self.reorder) {
                self.rng.next() % 20_000
            } else {
                0
            };
            self.seq += 1;
            self.q
                .push((end + extra + c * 3_000, to, self.seq, m.clone()));
        }
    }
    fn next_at(&self) -> Option<u64> {
        self.q.iter().map(|x| x.0).min()
    }
    fn pop_due(&mut self, now: u64) -> Option<(usize, Vec<u8>)> {
        let i = self
            .q
            .iter()
            .enumerate()
            .filter(|(_, x)| x.0 <= now)
            .min_by_key(|(_, x)| (x.0, x.2))
            .map(|(i, _)| i)?;
        let (_, to, _, m) = self.q.remove(i);
        Some((to, m))
    }
}

#[derive(Default)]
struct Outcome {
    responses: BTreeMap<RequestHandle, Vec<Vec<u8>>>,
    failures: BTreeMap<RequestHandle, (RequestError, u64)>,
    server_seen: BTreeMap<Vec<u8>, usize>,
    pending: Vec<(u64, Responder, Vec<u8>)>,
}

/// Run client `eps[0]` and server `eps[1]` until both are idle. The server echoes; requests
/// whose payload starts with b's' are answered `slow` ms later (separate response).
fn run(
    eps: &mut [Ep; 2],
    link: &mut Link,
    mut now: u64,
    slow: u64,
    out: &mut Outcome,
    limit: u64,
) -> u64 {
    let mut pending = core::mem::take(&mut out.pending);
    let mut buf = [0u8; 256];
    loop {
        for (i, e) in eps.iter_mut().enumerate() {
            while let Some(n) = e.poll_transmit(now, &mut buf) {
                link.send(now, 1 - i, buf[..n].to_vec());
            }
        }
        while let Some(ev) = eps[0].poll_event() {
            if let Event::Failed { handle, error } = ev {
                assert!(
                    out.failures.insert(handle, (error, now)).is_none(),
                    "failed twice"
                );
            }
        }
        while let Some(ev) = eps[1].poll_event() {
            let _ = ev;
        }
        while let Some((to, m)) = link.pop_due(now) {
            match eps[to].handle_datagram(now, &m) {
                Some(Received::Request(r)) => {
                    assert_eq!(to, 1);
                    *out.server_seen.entry(r.payload.to_vec()).or_default() += 1;
                    if r.payload.first() == Some(&b's') {
                        pending.push((now + slow, r.responder, r.payload.to_vec()));
                    } else {
                        eps[1]
                            .respond(now, &r.responder, Code::CONTENT, Options::NONE, r.payload)
                            .unwrap();
                    }
                }
                Some(Received::Response(r)) => {
                    assert_eq!(to, 0);
                    out.responses
                        .entry(r.handle)
                        .or_default()
                        .push(r.payload.to_vec());
                }
                None => {}
            }
            for (i, e) in eps.iter_mut().enumerate() {
                while let Some(n) = e.poll_transmit(now, &mut buf) {
                    link.send(now, 1 - i, buf[..n].to_vec());
                }
            }
        }
        pending.retain(|(at, r, p)| {
            if *at <= now {
                // the request may have been forgotten already: that is allowed to fail
                let _ = eps[1].respond(now, r, Code::CONTENT, Options::NONE, p);
                false
            } else {
                true
            }
        });
        let mut next = [
            eps[0].poll_timeout(),
            eps[1].poll_timeout(),
            link.next_at(),
            pending.iter().map(|p| p.0).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        if next == Some(0) {
            next = Some(now);
        }
        match next {
            None => return now,
            Some(t) => {
                now = t.max(now);
                if now > limit {
                    out.pending = pending;
                    return now;
                }
            }
        }
    }
}

fn check_exactly_once(
    handles: &[(RequestHandle, Vec<u8>, u64, u64)],
    out: &Outcome,
) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for (h, payload, sent_at, timeout) in handles {
        match (out.responses.get(h), out.failures.get(h)) {
            (Some(r), None) => {
                assert_eq!(r.len(), 1, "delivered once");
                assert_eq!(&r[0], payload);
                ok += 1;
            }
            (None, Some((e, at))) => {
                assert!(
                    matches!(e, RequestError::Timeout | RequestError::Deadline),
                    "{e:?}"
                );
                if *e == RequestError::Deadline {
                    assert!(*at >= sent_at + timeout, "failed before its deadline");
                }
                failed += 1;
            }
            other => panic!("request {h:?}: {other:?}"),
        }
    }
    for (p, n) in &out.server_seen {
        assert_eq!(*n, 1, "request {p:?} delivered {n} times to the server app");
    }
    (ok, failed)
}

#[test]
fn virtual_time_lossy_100bps_exactly_once() {
    let p = params_100();
    let mut total_ok = 0;
    let mut total_failed = 0;
    for seed in 1..=12u64 {
        let mut eps = [ep(seed, p), ep(seed + 100, p)];
        let mut link = Link::new(seed * 7919, 150, 100, 100);
        let mut out = Outcome::default();
        let mut handles = Vec::new();
        let mut now = 0;
        for i in 0..10u8 {
            let payload = if i % 3 == 0 {
                vec![b's', i]
            } else {
                vec![b'n', i, seed as u8]
            };
            let timeout = 3 * p.default_deadline();
            let req = Request {
                timeout: Some(timeout),
                ..Request::con(Code::POST, Options::NONE, &payload)
            };
            let h = loop {
                match eps[0].request(now, req) {
                    Ok(h) => break h,
                    Err(_) => now = run(&mut eps, &mut link, now, 20_000, &mut out, now + 30_000),
                }
            };
            handles.push((h, payload, now, timeout));
        }
        run(&mut eps, &mut link, now, 20_000, &mut out, u64::MAX);
        let (ok, failed) = check_exactly_once(&handles, &out);
        eprintln!(
            "seed {seed}: ok {ok} failed {failed} {:?}",
            out.failures.values().collect::<Vec<_>>()
        );
        total_ok += ok;
        total_failed += failed;
    }
    // 15% loss each way: a few may exhaust MAX_RETRANSMIT, most must get through.
    assert!(total_ok >= 115, "ok {total_ok} failed {total_failed}");
}

#[test]
fn virtual_time_dead_link_fails_after_deadline() {
    let p = params_100();
    let mut eps = [ep(9, p), ep(10, p)];
    let mut link = Link::new(5, 1000, 0, 0);
    let mut out = Outcome::default();
    let timeout = 100_000;
    let mut handles = Vec::new();
    for i in 0..2u8 {
        let payload = vec![b'n', i];
        let h = eps[0]
            .request(
                0,
                Request {
                    timeout: Some(timeout),
                    ..Request::con(Code::POST, Options::NONE, &payload)
                },
            )
            .unwrap();
        handles.push((h, payload, 0, timeout));
    }
    run(&mut eps, &mut link, 0, 0, &mut out, u64::MAX);
    let (ok, failed) = check_exactly_once(&handles, &out);
    assert_eq!((ok, failed), (0, 2));
    // the second request never got out (NSTART=1) and failed on its deadline
    assert_eq!(out.failures[&handles[1].0].0, RequestError::Deadline);
}

#[test]
fn virtual_time_observe_with_reordering() {
    let p = params_100();
    for seed in 1..=6u64 {
        let mut c = ep(seed, p);
        let mut s = ep(seed + 50, p);
        let mut link = Link::new(seed * 31, 100, 150, 300);
        let obs = [Opt::uint(opt::OBSERVE, 0), Opt::str(opt::URI_PATH, "sync")];
        let h = c
            .request(0, Request::con(Code::GET, Options::List(&obs), &[]))
            .unwrap();
        let mut now = 0u64;
        let mut buf = [0u8; 256];
        let mut seen: Vec<u8> = Vec::new();
        let mut registered = false;
        let mut next_notify = 0u64;
        let mut value = 0u8;
        let mut spins = 0;
        while now < 3_000_000 {
            for (i, e) in [&mut c, &mut s].into_iter().enumerate() {
                while let Some(n) = e.poll_transmit(now, &mut buf) {
                    link.send(now, 1 - i, buf[..n].to_vec());
                }
            }
            while let Some((to, m)) = link.pop_due(now) {
                if to == 1 {
                    if let Some(Received::Request(r)) = s.handle_datagram(now, &m) {
                        assert_eq!(r.observe, Some(0));
                        s.respond_observe(
                            now,
                            &r.responder,
                            7,
                            Code::CONTENT,
                            Options::NONE,
                            &[value],
                        )
                        .unwrap();
                        registered = true;
                    }
                } else if let Some(Received::Response(r)) = c.handle_datagram(now, &m) {
                    assert_eq!(r.handle, h);
                    assert!(!r.last);
                    seen.push(r.payload[0]);
                }
            }
            if registered && now >= next_notify && value < 20 {
                value += 1;
                let con = value.is_multiple_of(4);
                let n = s
                    .notify(now, 7, con, Code::CONTENT, Options::NONE, &[value])
                    .unwrap_or(0);
                assert!(n <= 1);
                next_notify = now + 40_000;
            }
            let t = [
                c.poll_timeout(),
                s.poll_timeout(),
                link.next_at(),
                (registered && value < 20).then_some(next_notify.max(now)),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(t) = t else { break };
            if t == 0 {
                spins += 1;
                assert!(
                    spins < 100,
                    "poll_timeout says now but nothing to send: {c:?} {s:?}"
                );
            } else {
                spins = 0;
            }
            now = if t == 0 { now } else { t.max(now + 1) };
            if let Some(e) = c.poll_event() {
                panic!("client event {e:?}");
            }
            let _ = s.poll_event();
        }
        // reordering rule: what the client accepted is strictly increasing
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: {seen:?}"
        );
        assert!(seen.len() >= 8, "seed {seed}: {seen:?}");
    }
}

#[test]
fn observe_deregistration_and_rst() {
    let p = TransmissionParams::default();
    let mut c = ep(1, p);
    let mut s = ep(2, p);
    let obs = [Opt::uint(opt::OBSERVE, 0)];
    let h = c
        .request(0, Request::con(Code::GET, Options::List(&obs), &[]))
        .unwrap();
    let m = drain(&mut c, 0).remove(0);
    let Some(Received::Request(r)) = s.handle_datagram(0, &m) else {
        panic!()
    };
    s.respond_observe(0, &r.responder, 1, Code::CONTENT, Options::NONE, b"a")
        .unwrap();
    let m = drain(&mut s, 0).remove(0);
    let Some(Received::Response(x)) = c.handle_datagram(0, &m) else {
        panic!()
    };
    assert_eq!((x.handle, x.observe.is_some(), x.last), (h, true, false));
    assert_eq!(s.observer_count(1), 1);
    // client forgets; next CON notification is answered with RST; server drops the observer
    assert!(c.cancel(h));
    assert_eq!(
        s.notify(1, 1, true, Code::CONTENT, Options::NONE, b"b"),
        Ok(1)
    );
    let m = drain(&mut s, 1).remove(0);
    assert!(c.handle_datagram(2, &m).is_none());
    let rst = drain(&mut c, 2).remove(0);
    assert_eq!(rst, vec![0x70, 0, m[2], m[3]]);
    assert!(s.handle_datagram(3, &rst).is_none());
    assert_eq!(s.observer_count(1), 0);
    assert!(matches!(
        s.poll_event(),
        Some(Event::ObserverGone { resource: 1, .. })
    ));
    // explicit deregistration: GET with Observe 1 and the same token
    let h = c
        .request(10, Request::con(Code::GET, Options::List(&obs), &[]))
        .unwrap();
    let tok = c.token_of(h).unwrap();
    let m = drain(&mut c, 10).remove(0);
    let Some(Received::Request(r)) = s.handle_datagram(10, &m) else {
        panic!()
    };
    s.respond_observe(10, &r.responder, 1, Code::CONTENT, Options::NONE, b"a")
        .unwrap();
    assert_eq!(s.observer_count(1), 1);
    let dereg = [0x41, 0x01, 0x99, 0x99, tok.as_bytes()[0], 0x61, 0x01];
    let Some(Received::Request(r)) = s.handle_datagram(11, &dereg) else {
        panic!()
    };
    assert_eq!(r.observe, Some(1));
    assert_eq!(s.observer_count(1), 0);
}

/// Block2 download and Block1 upload through the endpoint on a lossy link, two uploads at
/// once kept apart by Request-Tag.
#[test]
fn virtual_time_blockwise_both_ways() {
    let p = params_100();
    let body: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    for seed in 1..=4u64 {
        let mut c = ep(seed, TransmissionParams { nstart: 2, ..p });
        let mut s = ep(seed + 9, p);
        let mut link = Link::new(seed * 101, 100, 50, 100);
        let mut now = 0u64;
        let mut buf = [0u8; 256];
        let szx = 1; // 32-byte blocks, as on the device
        let mut down = Reassembly::new([0u8; 512]);
        let mut ups = [Reassembly::new([0u8; 400]), Reassembly::new([0u8; 400])];
        let mut uploaded: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        // client state: download block num; uploads: (tag, next num)
        let mut dl: Option<(RequestHandle, u32)> = None;
        let mut ul: Vec<(u8, Option<RequestHandle>, u32, bool)> =
            vec![(1, None, 0, false), (2, None, 0, false)];
        let mut dl_done = false;
        let mut too_large_seen = false;
        let big = vec![0u8; 500];
        let mut tl_handle = None;
        while now < 20_000_000 && !(dl_done && ul.iter().all(|u| u.3) && too_large_seen) {
            // issue requests
            if dl.is_none() && !dl_done {
                let b2 = BlockOpt::new(down.body().len() as u32 / 32, false, szx);
                let o = [
                    Opt::str(opt::URI_PATH, "big"),
                    Opt::uint(opt::BLOCK2, b2.to_uint()),
                ];
                if let Ok(h) = c.request(now, Request::con(Code::GET, Options::List(&o), &[])) {
                    dl = Some((h, b2.num));
                }
            }
            for u in ul.iter_mut() {
                if u.1.is_none() && !u.3 {
                    let payload: &[u8] = if u.0 == 1 { &body } else { &body[..100] };
                    let (blk, chunk) =
                        block_slice(payload, Some(BlockOpt::new(u.2, false, szx)), szx).unwrap();
                    let tag = [u.0];
                    let o = [
                        Opt::str(opt::URI_PATH, "up"),
                        Opt::uint(opt::BLOCK1, blk.to_uint()),
                        Opt::bytes(opt::REQUEST_TAG, &tag),
                    ];
                    if let Ok(h) =
                        c.request(now, Request::con(Code::POST, Options::List(&o), chunk))
                    {
                        u.1 = Some(h);
                    }
                }
            }
            if tl_handle.is_none() && !too_large_seen {
                let o = [
                    Opt::str(opt::URI_PATH, "up"),
                    Opt::uint(opt::BLOCK1, BlockOpt::new(0, true, szx).to_uint()),
                    Opt::uint(opt::SIZE1, 500),
                ];
                tl_handle = c
                    .request(now, Request::con(Code::POST, Options::List(&o), &big[..32]))
                    .ok();
            }
            for (i, e) in [&mut c, &mut s].into_iter().enumerate() {
                while let Some(n) = e.poll_transmit(now, &mut buf) {
                    link.send(now, 1 - i, buf[..n].to_vec());
                }
            }
            while let Some((to, m)) = link.pop_due(now) {
                if to == 1 {
                    let Some(Received::Request(r)) = s.handle_datagram(now, &m) else {
                        continue;
                    };
                    let path = r.options.first(opt::URI_PATH).unwrap().as_bytes().unwrap();
                    if path == b"big" {
                        let want = BlockOpt::from_options(&r.options, opt::BLOCK2).unwrap();
                        let (blk, chunk) = block_slice(&body, want, 6).unwrap();
                        let o = [
                            Opt::uint(opt::BLOCK2, blk.to_uint()),
                            Opt::uint(opt::SIZE2, body.len() as u32),
                        ];
                        s.respond(now, &r.responder, Code::CONTENT, Options::List(&o), chunk)
                            .unwrap();
                    } else {
                        let blk = BlockOpt::from_options(&r.options, opt::BLOCK1)
                            .unwrap()
                            .unwrap();
                        let key = transfer_key(r.code, &r.options);
                        let size1 = r.options.uint(opt::SIZE1);
                        if size1.is_some_and(|n| n > 400) {
                            let o = [Opt::uint(opt::SIZE1, 400)];
                            s.respond(
                                now,
                                &r.responder,
                                Code::REQUEST_ENTITY_TOO_LARGE,
                                Options::List(&o),
                                &[],
                            )
                            .unwrap();
                            continue;
                        }
                        let slot = ups
                            .iter()
                            .position(|u| u.key() == Some(key))
                            .or_else(|| ups.iter().position(|u| u.is_free()));
                        let Some(slot) = slot else {
                            s.respond(
                                now,
                                &r.responder,
                                Code::SERVICE_UNAVAILABLE,
                                Options::NONE,
                                &[],
                            )
                            .unwrap();
                            continue;
                        };
                        match ups[slot].put(key, blk, r.payload, size1) {
                            Ok(Progress::More(b)) => {
                                let o = [Opt::uint(opt::BLOCK1, b.to_uint())];
                                s.respond(
                                    now,
                                    &r.responder,
                                    Code::CONTINUE,
                                    Options::List(&o),
                                    &[],
                                )
                                .unwrap();
                            }
                            Ok(Progress::Done(_)) => {
                                let o = [Opt::uint(opt::BLOCK1, blk.to_uint())];
                                uploaded.insert(ups[slot].body().len(), ups[slot].body().to_vec());
                                s.respond(now, &r.responder, Code::CHANGED, Options::List(&o), &[])
                                    .unwrap();
                            }
                            Err(e) => {
                                let o = [Opt::uint(opt::SIZE1, 400)];
                                s.respond(now, &r.responder, e.code(), Options::List(&o), &[])
                                    .unwrap();
                            }
                        }
                    }
                } else if let Some(Received::Response(r)) = c.handle_datagram(now, &m) {
                    if Some(r.handle) == dl.map(|d| d.0) {
                        let blk = BlockOpt::from_options(&r.options, opt::BLOCK2)
                            .unwrap()
                            .unwrap();
                        assert_eq!(r.options.uint(opt::SIZE2), Some(300));
                        match down.put(0, blk, r.payload, Some(300)).unwrap() {
                            Progress::Done(n) => {
                                assert_eq!(n, 300);
                                dl_done = true;
                            }
                            Progress::More(_) => {}
                        }
                        dl = None;
                    } else if Some(r.handle) == tl_handle {
                        assert_eq!(r.code, Code::REQUEST_ENTITY_TOO_LARGE);
                        assert_eq!(r.options.uint(opt::SIZE1), Some(400));
                        too_large_seen = true;
                    } else if let Some(u) = ul.iter_mut().find(|u| u.1 == Some(r.handle)) {
                        u.1 = None;
                        match r.code {
                            Code::CONTINUE => u.2 += 1,
                            Code::CHANGED => u.3 = true,
                            // a block retried after a lost response can find the transfer gone:
                            // start over (RFC 7959 §2.9.2)
                            Code::REQUEST_ENTITY_INCOMPLETE | Code::SERVICE_UNAVAILABLE => u.2 = 0,
                            other => panic!("{other:?}"),
                        }
                    }
                }
            }
            while let Some(e) = c.poll_event() {
                // retry a failed block (lossy link): forget the handle
                if let Event::Failed { handle, .. } = e {
                    if dl.map(|d| d.0) == Some(handle) {
                        dl = None;
                    }
                    for u in ul.iter_mut() {
                        if u.1 == Some(handle) {
                            u.1 = None;
                        }
                    }
                    if tl_handle == Some(handle) {
                        tl_handle = None;
                    }
                }
            }
            let t = [c.poll_timeout(), s.poll_timeout(), link.next_at()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + 1000);
            now = if t == 0 { now } else { t.max(now) };
        }
        assert!(dl_done, "seed {seed}");
        assert_eq!(down.body(), &body[..]);
        assert!(too_large_seen);
        let uploaded: Vec<Vec<u8>> = uploaded.into_values().collect();
        assert_eq!(
            uploaded,
            vec![body[..100].to_vec(), body.clone()],
            "seed {seed}"
        );
    }
}

#[test]
fn transmission_params_for_link_figures() {
    let p = TransmissionParams::for_link(100, 60, 0);
    // 60 B at 100 bit/s = 4.8 s; the timer must cover request + response airtime
    assert!(p.ack_timeout > 9_600);
    assert!(p.exchange_lifetime() > p.max_transmit_span());
    let fast = TransmissionParams::for_link(1_000_000, 1_280, 0);
    assert_eq!(fast.ack_timeout, TransmissionParams::default().ack_timeout);
}

#[test]
fn full_dedup_table_drops_rather_than_redelivers() {
    // A table smaller than DEDUP_WINDOW (2 < 8) cannot evict under the floor: the
    // conservative rule (drop, let the peer retransmit) is all it has.
    const { assert!(2 < lowband_codec::coap::exchange::DEDUP_WINDOW) };
    let p = params_100();
    let mut s: Endpoint<2, 2, 1, 64> = Endpoint::new(Config {
        params: p,
        seed: 3,
        token_len: 1,
        extra_options: &[],
    });
    let reqs: Vec<[u8; 6]> = (0..3u8)
        .map(|i| [0x41, 0x02, 0x10, i, 0x70 + i, 0xff])
        .map(|mut r| {
            r[5] = 0xff;
            r
        })
        .collect();
    let with_payload = |r: &[u8; 6], i: u8| [&r[..], &[i]].concat();
    let mut delivered = 0;
    for (i, r) in reqs.iter().enumerate() {
        if let Some(Received::Request(x)) = s.handle_datagram(0, &with_payload(r, i as u8)) {
            s.respond(0, &x.responder, Code::CHANGED, Options::NONE, &[])
                .unwrap();
            delivered += 1;
        }
    }
    assert_eq!(
        delivered, 2,
        "third request dropped: no room to remember it"
    );
    let acks = drain(&mut s, 0);
    assert_eq!(acks.len(), 2);
    // duplicates of the first two: answered from the cache, not delivered
    for (i, r) in reqs.iter().take(2).enumerate() {
        assert!(s.handle_datagram(1000, &with_payload(r, i as u8)).is_none());
    }
    assert_eq!(drain(&mut s, 1000), acks);
    // once the duplicate window of the oldest has passed, the third gets in
    let later = p.max_transmit_span() + p.max_latency;
    assert!(matches!(
        s.handle_datagram(later, &with_payload(&reqs[2], 2)),
        Some(Received::Request(_))
    ));
    assert!(s
        .handle_datagram(later + 1, &with_payload(&reqs[2], 2))
        .is_none());
}

#[test]
fn no_failure_is_lost_when_many_fail_at_once() {
    let p = TransmissionParams {
        nstart: 8,
        ..params_100()
    };
    let mut c: Endpoint<8, 2, 1, 64> = Endpoint::new(Config {
        params: p,
        seed: 4,
        token_len: 1,
        extra_options: &[],
    });
    let hs: Vec<RequestHandle> = (0..8)
        .map(|_| {
            let r = Request {
                timeout: Some(1_000),
                ..Request::con(Code::GET, Options::NONE, &[])
            };
            c.request(0, r).unwrap()
        })
        .collect();
    let mut buf = [0u8; 64];
    let mut sent = 0;
    while c.poll_transmit(0, &mut buf).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 8, "NSTART 8");
    c.handle_timeout(1_000);
    let mut failed: Vec<RequestHandle> = Vec::new();
    while let Some(e) = c.poll_event() {
        let Event::Failed {
            handle,
            error: RequestError::Deadline,
        } = e
        else {
            panic!("{e:?}")
        };
        failed.push(handle);
    }
    assert_eq!(failed, hs, "all eight, in request order");
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn proactive_deregistration_and_byte_budget() {
    let p = params_100();
    let mut c = ep(1, p);
    let mut s = ep(2, p);
    let o = [Opt::uint(opt::OBSERVE, 0), Opt::str(opt::URI_PATH, "s")];
    let h = c
        .request(0, Request::con(Code::GET, Options::List(&o), &[]))
        .unwrap();
    let reg = drain(&mut c, 0).remove(0);
    // 4 header + 1 token + Observe 0 (1, empty uint) + Uri-Path "s" (2) = 8 bytes = 640 ms
    assert_eq!(reg.len(), 8);
    let Some(Received::Request(r)) = s.handle_datagram(0, &reg) else {
        panic!()
    };
    s.respond_observe(0, &r.responder, 3, Code::CONTENT, Options::NONE, b"x")
        .unwrap();
    let first = drain(&mut s, 0).remove(0);
    // ACK + token + Observe seq (1 + 1) + marker + 1 byte payload = 9 bytes
    assert_eq!(first.len(), 9);
    assert!(c.handle_datagram(1, &first).is_some());
    assert_eq!(
        s.notify(2, 3, false, Code::CONTENT, Options::NONE, b"y"),
        Ok(1)
    );
    let note = drain(&mut s, 2).remove(0);
    assert_eq!(
        note.len(),
        9,
        "a NON notification costs 8 bytes plus payload"
    );
    assert!(c.handle_datagram(3, &note).is_some());
    // deregister: the same GET with Observe 1 and the same token
    c.deregister(4, h).unwrap();
    let dereg = drain(&mut c, 4).remove(0);
    assert_eq!(dereg.len(), 9);
    assert_eq!(&dereg[4..5], &reg[4..5], "same token");
    assert_eq!(&dereg[5..7], &[0x61, 0x01], "Observe: 1");
    let Some(Received::Request(r)) = s.handle_datagram(5, &dereg) else {
        panic!()
    };
    assert_eq!(r.observe, Some(1));
    assert_eq!(s.observer_count(3), 0);
    s.respond(5, &r.responder, Code::CONTENT, Options::NONE, b"z")
        .unwrap();
    let last = drain(&mut s, 5).remove(0);
    let Some(Received::Response(x)) = c.handle_datagram(6, &last) else {
        panic!()
    };
    assert_eq!((x.handle, x.last, x.payload), (h, true, &b"z"[..]));
    // a late notification for the old token is now rejected
    assert!(c.handle_datagram(7, &note).is_none());
}

/// A request sent: handle, payload, time, timeout.
type Sent = (RequestHandle, Vec<u8>, u64, u64);

/// Sends `count` POSTs (distinct payloads) from `eps[0]` as fast as its slots allow, then
/// runs until idle; returns the handles and the time everything settled.
fn many_requests(
    eps: &mut [Ep; 2],
    link: &mut Link,
    count: u16,
    timeout: u64,
    out: &mut Outcome,
) -> (Vec<Sent>, u64) {
    let mut handles = Vec::new();
    let mut now = 0;
    for i in 0..count {
        let payload = vec![b'n', (i >> 8) as u8, i as u8];
        let req = Request {
            timeout: Some(timeout),
            ..Request::con(Code::POST, Options::NONE, &payload)
        };
        let h = loop {
            match eps[0].request(now, req) {
                Ok(h) => break h,
                Err(_) => now = run(eps, link, now, 0, out, now + 500),
            }
        };
        handles.push((h, payload, now, timeout));
    }
    let end = run(eps, link, now, 0, out, u64::MAX);
    (handles, end)
}

#[test]
fn ten_tables_of_requests_in_one_lifetime_are_answered_once() {
    // Issue 4: a peer sending more requests within EXCHANGE_LIFETIME than the server's
    // table holds (16 here) must not stall. 160 requests at 100 bit/s, NSTART 4.
    let p = TransmissionParams {
        nstart: 4,
        ..params_100()
    };
    let mut eps = [ep(1, p), ep(2, p)];
    let mut link = Link::new(1, 0, 0, 0);
    let mut out = Outcome::default();
    let (handles, end) = many_requests(&mut eps, &mut link, 160, p.default_deadline(), &mut out);
    let (ok, failed) = check_exactly_once(&handles, &out);
    eprintln!(
        "160 requests settled at {end} ms; lifetime {}",
        p.exchange_lifetime()
    );
    assert_eq!((ok, failed), (160, 0));
    assert_eq!(out.server_seen.len(), 160);
    // All inside the time no entry could leave the table by age alone (MAX_TRANSMIT_SPAN +
    // MAX_LATENCY): the old rule would have dropped every request after the 16th until then.
    assert!(end < p.max_transmit_span() + p.max_latency, "{end}");
    assert_eq!(eps[1].stats().duplicates, 0);
    assert_eq!(eps[0].stats().retransmissions, 0);
}

#[test]
fn many_requests_over_a_faulty_link_never_twice_never_stuck() {
    let p = TransmissionParams {
        nstart: 4,
        ..params_100()
    };
    let (mut total_ok, mut total_failed, mut dups) = (0, 0, 0);
    for seed in 1..=6u64 {
        let mut eps = [ep(seed, p), ep(seed + 50, p)];
        let mut link = Link::new(seed * 104_729, 150, 100, 150);
        let mut out = Outcome::default();
        let timeout = 3 * p.default_deadline();
        let (handles, end) = many_requests(&mut eps, &mut link, 160, timeout, &mut out);
        // exactly one outcome per request, each delivered at most once to the server app
        let (ok, failed) = check_exactly_once(&handles, &out);
        assert_eq!(eps[0].outstanding(), 0, "seed {seed}: nothing left waiting");
        eprintln!(
            "seed {seed}: ok {ok} failed {failed} at {end} ms, server duplicates {}",
            eps[1].stats().duplicates
        );
        total_ok += ok;
        total_failed += failed;
        dups += eps[1].stats().duplicates;
    }
    assert!(
        dups > 100,
        "the link duplicated and the server noticed: {dups}"
    );
    // 15% loss each way with MAX_RETRANSMIT 4: a few exhaust their retransmissions.
    assert!(
        total_failed <= 4 && total_ok + total_failed == 960,
        "ok {total_ok} failed {total_failed}"
    );
}

#[test]
fn duplicating_reordering_link_without_loss_fails_nothing() {
    // Without loss a request can only fail if the server wrongly took it for an old
    // duplicate: every one of 160 must be answered, once, whatever arrives late or twice.
    let p = TransmissionParams {
        nstart: 4,
        ..params_100()
    };
    let mut server_dups = 0;
    for seed in 1..=6u64 {
        let mut eps = [ep(seed + 7, p), ep(seed + 70, p)];
        let mut link = Link::new(seed * 15_485_863, 0, 300, 400);
        let mut out = Outcome::default();
        let (handles, end) =
            many_requests(&mut eps, &mut link, 160, 3 * p.default_deadline(), &mut out);
        let (ok, failed) = check_exactly_once(&handles, &out);
        assert_eq!((ok, failed), (160, 0), "seed {seed}");
        eprintln!(
            "seed {seed}: settled at {end} ms, server duplicates {}",
            eps[1].stats().duplicates
        );
        server_dups += eps[1].stats().duplicates;
    }
    assert!(server_dups > 200, "{server_dups}");
}
