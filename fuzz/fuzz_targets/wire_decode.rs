//! The gateway's reading of CoAP messages from the link (`lowband_gateway::wire`): serve
//! decoding a request (target, AUTH option, body format, packed JSON body) and resolving its
//! token number, and the tunnel decoding a response (status, text options, body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::coap::msg::Repr;
use lowband_gateway::wire::{self, Auth, TokenRegistry};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Auth::parse(data) {
        let mut reg = TokenRegistry::default();
        let _ = reg.resolve(&a);
        let _ = Auth::parse(&a.to_bytes()).expect("an Auth re-parses");
    }
    let Ok(r) = Repr::parse(data) else {
        return;
    };
    if let Ok(d) = wire::decode_request(&r.options, r.payload) {
        let mut reg = TokenRegistry::default();
        if let Some(a) = &d.auth {
            let _ = reg.resolve(a);
        }
    }
    let _ = wire::decode_response(r.code, &r.options, r.payload);
    let _ = wire::Body::decode(&r.options, r.payload);
});
