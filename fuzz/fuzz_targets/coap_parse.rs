//! Fuzz CoAP datagram parsing and an endpoint fed with arbitrary datagrams.
//!
//! Input: a sequence of chunks `[len u8][time step u8][bytes...]`. Each chunk is parsed with
//! `Repr::parse` (and re-emitted, which must reproduce the bytes), then fed to an endpoint
//! that also has requests, observers and notifications of its own in flight.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowband_codec::coap::exchange::{Config, Endpoint, Received, Request};
use lowband_codec::coap::msg::{opt, Code, Opt, Options, Repr};
use lowband_codec::coap::{block, uri};

fuzz_target!(|data: &[u8]| {
    let mut ep: Endpoint<3, 4, 2, 128> = Endpoint::new(Config {
        seed: 1,
        token_len: 1,
        ..Config::default()
    });
    let o = [Opt::uint(opt::OBSERVE, 0), Opt::str(opt::URI_PATH, "s")];
    let _ = ep.request(0, Request::con(Code::GET, Options::List(&o), &[]));
    let _ = ep.request(
        0,
        Request {
            confirmable: false,
            ..Request::con(Code::POST, Options::NONE, b"x")
        },
    );
    let mut now = 0u64;
    let mut out = [0u8; 128];
    let mut rest = data;
    while rest.len() >= 2 {
        let len = (rest[0] as usize).min(rest.len() - 2);
        now += u64::from(rest[1]) * 97;
        let dg = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if let Ok(r) = Repr::parse(dg) {
            let mut buf = [0u8; 300];
            let n = r.emit(&mut buf).expect("a parsed message re-emits");
            let again = Repr::parse(&buf[..n]).expect("re-parses");
            assert_eq!(again.payload, r.payload);
            assert!(again.options.iter().eq(r.options.iter()));
            let _ = block::BlockOpt::from_options(&r.options, opt::BLOCK2);
            let _ = block::transfer_key(r.code, &r.options);
            let mut s = String::new();
            let _ = uri::options_to_uri("127.0.0.1", 5683, &r.options, &mut s);
        }
        match ep.handle_datagram(now, dg) {
            Some(Received::Request(r)) => {
                if r.observe == Some(0) {
                    let _ = ep.respond_observe(
                        now,
                        &r.responder,
                        1,
                        Code::CONTENT,
                        r.options,
                        r.payload,
                    );
                } else {
                    let _ = ep.respond(now, &r.responder, Code::CONTENT, Options::NONE, r.payload);
                }
            }
            Some(Received::Response(_)) | None => {}
        }
        let _ = ep.notify(now, 1, now % 2 == 0, Code::CONTENT, Options::NONE, b"n");
        while ep.poll_transmit(now, &mut out).is_some() {}
        while ep.poll_event().is_some() {}
        let _ = ep.poll_timeout();
    }
    let _ = core::str::from_utf8(data).map(|s| {
        let mut b = [0u8; 64];
        let mut l: lowband_codec::coap::OptionList<'_, 8> = lowband_codec::coap::OptionList::new();
        let _ = uri::uri_to_options(s, &mut b, &mut l);
    });
});
