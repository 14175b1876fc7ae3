//! The tunnel's reading of a federation transaction answer from the link: PDU ids by
//! reference (`lowband_gateway::federation::expand_response`), against a transaction request
//! of two PDUs.
//!
//! Input: the answer body (JSON as serve would have sent it, after unpacking).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_gateway::federation::expand_response;
use lowband_gateway::wire::{HttpRequest, HttpResponse};

const TXN: &[u8] = br#"{"origin":"a.org","pdus":[{"auth_events":["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],"prev_events":["$BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"],"room_id":"!r:a.org","sender":"@u:a.org","type":"m.room.message","content":{"body":"x"},"depth":3},{"room_id":"!r:a.org","sender":"@v:a.org","type":"m.room.member","state_key":"@v:a.org","content":{"membership":"join"},"depth":4}],"edus":[]}"#;

fuzz_target!(|data: &[u8]| {
    let req = HttpRequest {
        method: "PUT".into(),
        path_and_query: "/_matrix/federation/v1/send/1".into(),
        content_type: Some("application/json".into()),
        body: TXN.to_vec(),
    };
    let resp = HttpResponse {
        status: 200,
        content_type: Some("application/json".into()),
        body: data.to_vec(),
        ..HttpResponse::default()
    };
    let _ = expand_response(&req, resp);
});
