//! pack tests: the plain form costs nothing, deflated bodies come back, broken streams error.
use lowband_codec::cbor::{self, Limits};
use lowband_codec::pack::{self, Error, DEFLATE_MARK};

fn big_body() -> Vec<u8> {
    let mut s = String::from(r#"{"chunk":["#);
    for i in 0..20 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"type":"m.room.message","sender":"@alice:example.org","room_id":"!abc:example.org","event_id":"$ev{i}","origin_server_ts":{},"content":{{"msgtype":"m.text","body":"message number {i}"}}}}"#,
            1_700_000_000_000u64 + i
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

#[test]
fn big_body_is_deflated_and_comes_back() {
    let json = big_body();
    let packed = pack::pack_vec(&json).unwrap();
    let plain = cbor::encode_vec(&json, &Limits::DEFAULT).unwrap();
    assert_eq!(packed[0], DEFLATE_MARK);
    assert!(
        packed.len() * 3 < plain.len(),
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    assert_eq!(pack::unpack_vec(&packed).unwrap(), json);
    // Allocation-free path with exact scratch.
    let mut scratch = vec![0u8; pack::scratch_len(plain.len())];
    let mut out = vec![0u8; json.len()];
    let n = pack::unpack(&packed, &mut scratch, &mut out).unwrap();
    assert_eq!(&out[..n], &json[..]);
    let mut small = vec![0u8; pack::scratch_len(plain.len()) - 1];
    assert_eq!(
        pack::unpack(&packed, &mut small, &mut out),
        Err(Error::ScratchTooSmall)
    );
}

#[test]
fn truncated_or_corrupt_stream_errors() {
    let packed = pack::pack_vec(&big_body()).unwrap();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut out = vec![0u8; 64 * 1024];
    for cut in 1..packed.len() {
        assert!(
            pack::unpack(&packed[..cut], &mut scratch, &mut out).is_err(),
            "cut {cut}"
        );
    }
    let mut bad = packed.clone();
    bad[1] ^= 0xff;
    let _ = pack::unpack(&bad, &mut scratch, &mut out);
}

#[test]
fn tiny_bodies_never_grow() {
    for j in [
        "{}",
        "[]",
        "1",
        r#"{"a":"b"}"#,
        r#"{"errcode":"M_FORBIDDEN","error":"no"}"#,
    ] {
        let p = pack::pack_vec(j.as_bytes()).unwrap();
        let c = cbor::encode_vec(j.as_bytes(), &Limits::DEFAULT).unwrap();
        assert_eq!(p, c, "{j}");
    }
}
