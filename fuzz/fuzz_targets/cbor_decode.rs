//! Fuzz: arbitrary bytes through the CBOR -> JSON decoder, the pull reader and unpack.
//! Never panics; whatever decodes must re-encode and decode to the same JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowband_codec::cbor::{decode_to_json, decode_to_json_with, encode_json, Limits, Reader};
use lowband_codec::pack;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let mut json = vec![0u8; data.len() * 64 + 64];
    let _ = decode_to_json_with(data, &mut json, &limits, None);
    let _ = Reader::new(data).skip();
    let mut scratch = vec![0u8; pack::scratch_len(4096)];
    let mut out = vec![0u8; 64 * 1024];
    let _ = pack::unpack(data, &mut scratch, &mut out);
    if let Ok(n) = decode_to_json(data, &mut json, &limits) {
        let mut cbor = vec![0u8; n * 3 + 16];
        let m = encode_json(&json[..n], &mut cbor, &limits).expect("decoder output is JSON");
        let mut again = vec![0u8; n + 16];
        let k = decode_to_json(&cbor[..m], &mut again, &limits).expect("re-encoded CBOR decodes");
        assert_eq!(&again[..k], &json[..n]);
    }
});
