//! `serve`'s reading of a federation request from the link: the X-Matrix option and the
//! session-alias markers in the JSON body (`lowband_gateway::federation::restore`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::coap::{Opt, Options};
use lowband_gateway::federation::{restore, xmatrix_decode, AliasRegistry};
use lowband_gateway::wire::{opt, HttpRequest};

fuzz_target!(|data: &[u8]| {
    let _ = xmatrix_decode(data);
    let [alias, n, rest @ ..] = data else {
        return;
    };
    let (x, body) = rest.split_at(usize::from(*n).min(rest.len()));
    let mut reg = AliasRegistry::default();
    let o = [
        Opt::uint(opt::FED_ALIAS, u32::from(*alias)),
        Opt::bytes(opt::XMATRIX, x),
    ];
    let mut req = HttpRequest {
        method: "PUT".into(),
        path_and_query: "/_matrix/federation/v1/send/1".into(),
        content_type: Some("application/json".into()),
        body: body.to_vec(),
    };
    // Twice: the second pass sees the numbers the first one defined.
    let _ = restore(&mut reg, &Options::List(&o), &mut req.clone());
    let _ = restore(&mut reg, &Options::List(&o), &mut req);
});
