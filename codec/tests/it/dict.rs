//! dict tests: every entry looks up both ways, the version pins the tables, the deflate
//! preset is fresh.
use lowband_codec::dict::{self, FINGERPRINT, STATIC, VERSION};

/// (version, fingerprint) of every released dictionary. Changing the data files changes the
/// fingerprint: bump `data/version.txt` and add a row here.
const RELEASED: &[(u16, u64)] = &[(1, 0x4378_ffa4_ceff_bf73)];

#[test]
fn version_pins_the_tables() {
    let row = RELEASED.iter().find(|(v, _)| *v == VERSION);
    assert_eq!(
        row.map(|r| r.1),
        Some(FINGERPRINT),
        "dictionary data changed: bump data/version.txt and record {FINGERPRINT:#018x}"
    );
}

#[test]
fn every_entry_looks_up_both_ways() {
    let mut keys = 0;
    for id in 0..STATIC.key_count() as u64 {
        if let Some(name) = STATIC.key_name(id) {
            assert_eq!(
                STATIC.key_id(name.as_bytes()).map(u64::from),
                Some(id),
                "{name}"
            );
            keys += 1;
        }
    }
    assert!(keys > 500, "{keys}");
    for code in 0..STATIC.value_count() as u64 {
        let v = STATIC.value_name(code).unwrap();
        assert_eq!(
            STATIC.value_code(v.as_bytes()).map(u64::from),
            Some(code),
            "{v}"
        );
    }
    assert!(STATIC.value_count() <= 244);
}

#[test]
fn unknown_version_is_rejected() {
    assert!(dict::for_version(VERSION).is_ok());
    assert_eq!(
        dict::for_version(0xffff).unwrap_err(),
        dict::Error::UnknownVersion(0xffff)
    );
}

/// The deflate preset built from `data/deflate-seed.json`: every seed body encoded with the
/// codec, concatenated in file order (the most common structures last, nearest to the data),
/// capped at the 32 KiB deflate window.
pub fn build_deflate_dict() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/deflate-seed.json");
    let seed: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for body in seed.as_array().unwrap() {
        let json = serde_json::to_vec(body).unwrap();
        out.extend(
            lowband_codec::cbor::encode_vec(&json, &lowband_codec::cbor::Limits::DEFAULT).unwrap(),
        );
    }
    let cap = 32 * 1024;
    if out.len() > cap {
        out.drain(..out.len() - cap);
    }
    out
}

#[test]
fn deflate_dict_is_fresh() {
    let want = build_deflate_dict();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/deflate.dict");
    if std::env::var_os("LOWBAND_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert!(
        dict::DEFLATE_DICT == &want[..],
        "data/deflate.dict is stale: run `LOWBAND_BLESS=1 cargo test -p lowband-codec --test it dict::` and bump data/version.txt"
    );
}
