//! Fuzz: arbitrary bytes through the JSON -> CBOR encoder and pack. Never panics; accepted JSON
//! decodes, its decoding is a fixed point (encode/decode again gives the same bytes) and
//! unpack(pack(x)) == decode(encode(x)).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowband_codec::cbor::{decode_to_json, encode_json, Limits};
use lowband_codec::pack;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let mut cbor = vec![0u8; data.len() * 3 + 16];
    let Ok(n) = encode_json(data, &mut cbor, &limits) else {
        return;
    };
    let mut json = vec![0u8; n * 64 + 64];
    let m = decode_to_json(&cbor[..n], &mut json, &limits).expect("own CBOR decodes");
    let mut cbor2 = vec![0u8; m * 3 + 16];
    let n2 = encode_json(&json[..m], &mut cbor2, &limits).expect("decoder output is JSON");
    assert_eq!(
        &cbor2[..n2],
        &cbor[..n],
        "canonical output re-encodes to the same CBOR"
    );
    let packed = pack::pack_vec(data).expect("pack");
    assert_eq!(pack::unpack_vec(&packed).expect("unpack"), &json[..m]);
});
