//! cbor tests: lossless round trips (value equality; byte identity for canonical JSON), RFC 8949
//! Appendix A vectors, malformed input never panics.
use lowband_codec::cbor::{
    decode_to_json, decode_to_json_with, encode_json, encode_json_with, Error, Item, Limits, Reader,
};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;

/// Matrix canonical JSON (sorted keys by code point, no whitespace, minimal escaping).
pub fn canonical(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

fn write_canonical_str(x: &str, s: &mut String) {
    s.push('"');
    for c in x.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
}

fn write_canonical(v: &Value, s: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            s.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_canonical_str(k, s);
                s.push(':');
                write_canonical(&m[k.as_str()], s);
            }
            s.push('}');
        }
        Value::Array(a) => {
            s.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_canonical(x, s);
            }
            s.push(']');
        }
        Value::String(x) => write_canonical_str(x, s),
        other => s.push_str(&other.to_string()),
    }
}

/// True if no number in `v` is a float.
pub fn has_no_floats(v: &Value) -> bool {
    match v {
        Value::Number(n) => !n.is_f64(),
        Value::Array(a) => a.iter().all(has_no_floats),
        Value::Object(m) => m.values().all(has_no_floats),
        _ => true,
    }
}

fn enc(json: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; json.len() * 3 + 16];
    let n = encode_json(json, &mut out, &Limits::DEFAULT)?;
    out.truncate(n);
    Ok(out)
}

fn dec(cbor: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; cbor.len() * 64 + 64];
    let n = decode_to_json(cbor, &mut out, &Limits::DEFAULT)?;
    out.truncate(n);
    Ok(out)
}

fn dec_plain(cbor: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; cbor.len() * 64 + 64];
    let n = decode_to_json_with(cbor, &mut out, &Limits::DEFAULT, None)?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn edge_values_round_trip_as_values() {
    let cases = [
        r#"{"a":"\u00e9\ud83d\ude00\/\"\\","b":[],"c":{},"d":[[[[]]]]}"#,
        "[18446744073709551615,-9223372036854775808,-9223372036854775809,-18446744073709551616]",
        "[123456789012345678901234567890,-123456789012345678901234567890,1e400,-1e400,1e-400]",
        "[-0,-0.0,0.0,1.0,1,1E5,1e5,1.5e300,0.1,2.5e-5,3.4028234663852886e38,5e-324]",
        "  {\n \"x\" : [ 1 , 2 ] ,\t\"y\":null }  ",
        r#"["\u0000\u001f\u007f\u2028",true,false,null,""]"#,
    ];
    for c in cases {
        let cb = enc(c.as_bytes()).unwrap();
        let back = dec(&cb).unwrap();
        // serde_json refuses 1e400: compare text for those, values otherwise.
        match serde_json::from_str::<Value>(c) {
            Ok(want) => {
                let got: Value = serde_json::from_slice(&back).unwrap();
                assert_eq!(got, want, "{c}");
            }
            Err(_) => assert_eq!(String::from_utf8(back).unwrap(), c, "{c}"),
        }
    }
}

#[test]
fn number_literals_come_back_as_text() {
    let c = "[-0,1E5,1e400,123456789012345678901234567890,1.50,0.1,1.0,-2.5e-7]";
    let back = dec(&enc(c.as_bytes()).unwrap()).unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), c);
}

#[test]
fn deep_nesting_within_limit_and_beyond() {
    let ok = "[".repeat(64) + &"]".repeat(64);
    assert_eq!(dec(&enc(ok.as_bytes()).unwrap()).unwrap(), ok.as_bytes());
    let deep = "[".repeat(65) + &"]".repeat(65);
    assert_eq!(enc(deep.as_bytes()), Err(Error::TooDeep));
    let deep_cbor = vec![0x81u8; 65]
        .into_iter()
        .chain([0x01])
        .collect::<Vec<_>>();
    assert_eq!(dec(&deep_cbor), Err(Error::TooDeep));
}

#[test]
fn size_limit() {
    let l = Limits {
        max_depth: 8,
        max_input: 4,
    };
    let mut out = [0u8; 64];
    assert_eq!(encode_json(b"[1,2]", &mut out, &l), Err(Error::TooLarge));
    assert_eq!(
        decode_to_json(&[0x85, 1, 2, 3, 4, 5], &mut out, &l),
        Err(Error::TooLarge)
    );
}

#[test]
fn buffer_too_small_is_an_error() {
    let json = br#"{"msgtype":"m.text","body":"Hello, world!"}"#;
    let cb = enc(json).unwrap();
    for n in 0..cb.len() {
        let mut out = vec![0u8; n];
        assert_eq!(
            encode_json(json, &mut out, &Limits::DEFAULT),
            Err(Error::BufferTooSmall)
        );
    }
    for n in 0..json.len() {
        let mut out = vec![0u8; n];
        assert_eq!(
            decode_to_json(&cb, &mut out, &Limits::DEFAULT),
            Err(Error::BufferTooSmall)
        );
    }
}

#[test]
fn malformed_cbor_is_a_typed_error() {
    // RFC 8949 Appendix F well-formedness errors, and JSON-unrepresentable items.
    let cases: &[(&[u8], Error)] = &[
        (&[], Error::Truncated),
        (&[0x18], Error::Truncated),
        (&[0x19, 0x01], Error::Truncated),
        (&[0x1a, 1, 2, 3], Error::Truncated),
        (&[0x1b, 1, 2, 3, 4, 5, 6, 7], Error::Truncated),
        (&[0x62, 0x41], Error::Truncated),
        (&[0x83, 0x01, 0x02], Error::Truncated),
        (&[0xa2, 0x61, 0x61, 0x01], Error::Truncated),
        (&[0x9f, 0x01], Error::Truncated),
        (&[0x1c], Error::Reserved),
        (&[0x3d], Error::Reserved),
        (&[0x5e], Error::Reserved),
        (&[0x7c], Error::Reserved),
        (&[0x9d], Error::Reserved),
        (&[0xbe], Error::Reserved),
        (&[0xdc], Error::Reserved),
        (&[0xfe], Error::Reserved),
        (&[0x1f], Error::Malformed),
        (&[0x3f], Error::Malformed),
        (&[0xdf], Error::Malformed),
        (&[0xff], Error::Malformed),
        (&[0x81, 0xff], Error::Malformed),
        (&[0x82, 0x00, 0xff], Error::Malformed),
        (&[0xbf, 0x61, 0x61, 0xff], Error::Malformed),
        (&[0x7f, 0x41, 0x00, 0xff], Error::Malformed),
        (&[0x7f, 0x7f, 0xff, 0xff], Error::Malformed),
        (&[0xf8, 0x00], Error::Malformed),
        (&[0xf8, 0x1f], Error::Malformed),
        (&[0xc6, 0x01], Error::Malformed),
        (&[0xc6, 0x62, b'0', b'1'], Error::Malformed),
        (&[0x62, 0xff, 0xfe], Error::InvalidUtf8),
        (&[0x41, 0x00], Error::Unrepresentable),
        (&[0xf7], Error::Unrepresentable),
        (&[0xf9, 0x7c, 0x00], Error::Unrepresentable),
        (&[0xf9, 0x7e, 0x00], Error::Unrepresentable),
        (&[0xc1, 0x01], Error::Unrepresentable),
        (&[0xa1, 0xf5, 0x01], Error::Unrepresentable),
        (&[0xa1, 0x81, 0x01, 0x01], Error::Unrepresentable),
        (&[0xa1, 0x19, 0xff, 0xff, 0x01], Error::UnknownCode),
        (&[0xf8, 0xff], Error::UnknownCode),
        (&[0x01, 0x02], Error::TrailingData),
    ];
    for (bytes, want) in cases {
        assert_eq!(dec(bytes), Err(*want), "{bytes:02x?}");
    }
}

// --- RFC 8949 Appendix A vectors -------------------------------------------------------------

/// (description, encoded) of every test in a vector file, read with lowband's own pull reader
/// (ciborium cannot hold the unassigned simple values some files carry).
fn vector_tests(file: &[u8]) -> Vec<(String, Vec<u8>)> {
    let limits = Limits::DEFAULT;
    let mut r = Reader::with_dict(file, None, &limits);
    let Item::Map(Some(n)) = r.next_value().unwrap() else {
        panic!("not a map")
    };
    let mut out = Vec::new();
    for _ in 0..n {
        if r.next_key().unwrap() != Item::Text("tests") {
            r.skip().unwrap();
            continue;
        }
        let Item::Array(Some(t)) = r.next_value().unwrap() else {
            panic!("tests")
        };
        for _ in 0..t {
            let Item::Map(Some(m)) = r.next_value().unwrap() else {
                panic!("test")
            };
            let (mut desc, mut enc) = (String::new(), None);
            for _ in 0..m {
                match r.next_key().unwrap() {
                    Item::Text("description") => {
                        if let Item::Text(d) = r.next_value().unwrap() {
                            desc = d.to_owned();
                        }
                    }
                    Item::Text("encoded") => {
                        let Item::Bytes(b) = r.next_value().unwrap() else {
                            panic!("encoded")
                        };
                        enc = Some(b.to_vec());
                    }
                    _ => r.skip().unwrap(),
                }
            }
            out.push((desc, enc.unwrap()));
        }
    }
    out
}

/// The JSON value of a CBOR value, if JSON can represent it (text keys only, no bytes, no tags
/// other than bignums, finite floats).
fn to_json(v: &ciborium::Value) -> Option<Value> {
    use ciborium::Value as C;
    Some(match v {
        C::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(u) = u64::try_from(i) {
                Value::from(u)
            } else if let Ok(s) = i64::try_from(i) {
                Value::from(s)
            } else {
                Value::from(i as f64)
            }
        }
        C::Float(f) if f.is_finite() => Value::from(*f),
        C::Text(s) => Value::String(s.clone()),
        C::Bool(b) => Value::Bool(*b),
        C::Null => Value::Null,
        C::Array(a) => Value::Array(a.iter().map(to_json).collect::<Option<_>>()?),
        C::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                o.insert(k.as_text()?.to_owned(), to_json(v)?);
            }
            Value::Object(o)
        }
        C::Tag(2, b) => {
            let b = b.as_bytes()?;
            if b.len() > 16 {
                return None;
            }
            let n = b.iter().fold(0u128, |a, &x| (a << 8) | u128::from(x));
            serde_json::from_str(&n.to_string()).ok()?
        }
        C::Tag(3, b) => {
            let b = b.as_bytes()?;
            if b.len() > 16 {
                return None;
            }
            let n = b.iter().fold(0u128, |a, &x| (a << 8) | u128::from(x));
            serde_json::from_str(&format!("-{}", n.checked_add(1)?)).ok()?
        }
        _ => return None,
    })
}

#[test]
fn rfc8949_appendix_a_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cbor-vectors");
    let (mut decoded, mut rejected) = (0, 0);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cbor"))
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    for f in files {
        let file = std::fs::read(&f).unwrap();
        for (desc, encoded) in vector_tests(&file) {
            let encoded = &encoded[..];
            let desc = format!("{}: {desc}", f.display());
            // (ciborium cannot hold unassigned simple values: those are not JSON either.)
            // (ciborium reads `undefined` as null: JSON has no undefined.)
            let reference: Option<ciborium::Value> = ciborium::from_reader(encoded)
                .ok()
                .filter(|_| encoded != [0xf7]);
            match reference.as_ref().and_then(to_json) {
                Some(want) => {
                    let got = dec_plain(encoded).unwrap_or_else(|e| panic!("{desc}: {e:?}"));
                    let got: Value = serde_json::from_slice(&got).unwrap();
                    assert_eq!(got, want, "{desc}");
                    decoded += 1;
                }
                None => {
                    assert!(dec_plain(encoded).is_err(), "{desc}");
                    rejected += 1;
                }
            }
        }
    }
    println!("appendix A: {decoded} decoded, {rejected} rejected as not JSON-representable");
    assert!(decoded >= 50 && rejected >= 10, "{decoded} {rejected}");
}

// --- the pull reader ---------------------------------------------------------------------------

#[test]
fn reader_walks_a_message_with_dictionary_names() {
    let cb =
        enc(br#"{"type":"m.room.message","content":{"msgtype":"m.text","body":"hi"},"x":[1,-2]}"#)
            .unwrap();
    let mut r = Reader::new(&cb);
    assert_eq!(r.next_value().unwrap(), Item::Map(Some(3)));
    assert_eq!(r.next_key().unwrap(), Item::Text("type"));
    assert_eq!(r.next_value().unwrap(), Item::Text("m.room.message"));
    assert_eq!(r.next_key().unwrap(), Item::Text("content"));
    r.skip().unwrap();
    assert_eq!(r.next_key().unwrap(), Item::Text("x"));
    assert_eq!(r.next_value().unwrap(), Item::Array(Some(2)));
    assert_eq!(r.next_value().unwrap(), Item::Unsigned(1));
    assert_eq!(r.next_value().unwrap(), Item::Negative(1));
    assert!(r.is_at_end());
}

// --- properties --------------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just("m.text"),
            Just("join"),
            Just("type"),
            Just("body"),
            Just("m.room.message"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..30).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        any::<String>(),
                        Just("type".to_owned()),
                        Just("content".to_owned()),
                        Just("event_id".to_owned()),
                        Just("m.room.name".to_owned())
                    ],
                    inner
                ),
                0..30
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn arb_no_float_json() -> impl Strategy<Value = Value> {
    arb_json().prop_filter("no floats", has_no_floats)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_json_round_trips_as_value(v in arb_json(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
        let back = dec(&enc(&text).unwrap()).unwrap();
        let got: Value = serde_json::from_slice(&back).unwrap();
        prop_assert_eq!(got, v);
    }

    #[test]
    fn canonical_json_round_trips_byte_identical(v in arb_no_float_json()) {
        let text = canonical(&v);
        let back = dec(&enc(text.as_bytes()).unwrap()).unwrap();
        prop_assert_eq!(String::from_utf8(back).unwrap(), text);
    }

    #[test]
    fn number_literals_round_trip_as_text(
        lit in r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?"
    ) {
        let text = format!("[{lit}]");
        let back = dec(&enc(text.as_bytes()).unwrap()).unwrap();
        prop_assert_eq!(String::from_utf8(back).unwrap(), text);
    }

    #[test]
    fn base64_like_strings_round_trip_as_text(
        bytes in prop::collection::vec(any::<u8>(), 0..80),
        url in any::<bool>(),
        sigil in any::<bool>(),
        junk in r"[A-Za-z0-9+/_$-]{0,70}",
    ) {
        let alphabet: &[u8] = if url {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        } else {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        };
        let mut b64 = String::from(if sigil { "$" } else { "" });
        for c in bytes.chunks(3) {
            let v = c.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x)) << (8 * (3 - c.len()));
            for i in 0..=c.len() {
                b64.push(alphabet[((v >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        let text = format!("[\"{b64}\",\"{junk}\"]");
        let back = dec(&enc(text.as_bytes()).unwrap()).unwrap();
        prop_assert_eq!(String::from_utf8(back).unwrap(), text);
    }

    #[test]
    fn plain_mode_round_trips(v in arb_json()) {
        let text = serde_json::to_vec(&v).unwrap();
        let mut cb = vec![0u8; text.len() * 3 + 16];
        let n = encode_json_with(&text, &mut cb, &Limits::DEFAULT, None).unwrap();
        let back = dec_plain(&cb[..n]).unwrap();
        let got: Value = serde_json::from_slice(&back).unwrap();
        prop_assert_eq!(got, v);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = dec(&bytes);
        let _ = dec_plain(&bytes);
        let _ = Reader::new(&bytes).skip();
        let _ = enc(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        v in arb_json(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = serde_json::to_vec(&v).unwrap();
        let mut cb = enc(&text).unwrap();
        for (i, b) in edits {
            let i = i.index(cb.len());
            cb[i] = b;
        }
        let _ = dec(&cb);
        let cut = cut.index(cb.len() + 1);
        let _ = dec(&cb[..cut]);
        let mut t = text.clone();
        let k = cut.min(t.len().saturating_sub(1));
        if !t.is_empty() { t[k] ^= 0x55; }
        let _ = enc(&t);
    }
}
