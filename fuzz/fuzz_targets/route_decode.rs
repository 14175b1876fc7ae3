//! Fuzz `route::decode_target[_with]`: never panics, and whatever decodes re-encodes to the same
//! bytes (without and with session strings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::route::{decode_target_with, encode_target_with, Method};

const SESSIONS: [&[&str]; 2] = [
    &[],
    &["example.org", "@alice:example.org", "!abc:example.org"],
];

fuzz_target!(|data: &[u8]| {
    for session in SESSIONS {
        let mut method = [0u8; 255];
        let mut out = [0u8; 8192];
        if let Ok((m, n)) = decode_target_with(session, data, &mut method, &mut out) {
            let name = match m {
                Method::Other(k) => core::str::from_utf8(&method[..usize::from(k)]).unwrap(),
                m => m.as_str().unwrap(),
            };
            let text = core::str::from_utf8(&out[..n]).unwrap();
            let mut enc = vec![0u8; 2 * (name.len() + text.len()) + 16];
            let k = encode_target_with(session, name, text, &mut enc).unwrap();
            assert_eq!(&enc[..k], data);
        }
    }
});
