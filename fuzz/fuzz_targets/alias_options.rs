//! Serve reading a request's session aliases from the link: the ALIAS option values
//! (`ServeAliases::define`), then the request target decoded with the session list
//! (`wire::decode_request_with`) and checked (`ServeAliases::check`).
//!
//! Input: `[count]` then `count` definitions `[len][bytes...]`, then a CoAP message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::coap::msg::Repr;
use lowband_gateway::alias::ServeAliases;
use lowband_gateway::wire;

fuzz_target!(|data: &[u8]| {
    let Some((&count, mut rest)) = data.split_first() else {
        return;
    };
    let mut defs = Vec::new();
    for _ in 0..count.min(32) {
        let Some((&len, r)) = rest.split_first() else {
            break;
        };
        let (d, r) = r.split_at(usize::from(len).min(r.len()));
        defs.push(d);
        rest = r;
    }
    let mut a = ServeAliases::default();
    let _ = a.define(defs.iter().copied());
    let list = a.list();
    let session: Vec<&str> = list.iter().map(String::as_str).collect();
    if let Ok(r) = Repr::parse(rest) {
        let _ = a.define(
            r.options
                .iter()
                .filter(|o| o.number == lowband_gateway::alias::ALIAS)
                .filter_map(|o| o.as_bytes()),
        );
        if let Ok(d) = wire::decode_request_with(&session, &r.options, r.payload) {
            let _ = ServeAliases::check(&d.http.path_and_query);
        }
    }
});
