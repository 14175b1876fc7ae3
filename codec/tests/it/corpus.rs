//! Corpus tests: every spec example body and every real Synapse body round-trips, and the byte
//! budgets hold (packed totals against compact JSON).
use lowband_codec::cbor::{self, Limits};
use lowband_codec::pack;
use std::path::{Path, PathBuf};

/// All `*.json` files under `dir`, recursively, sorted.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The JSON text without insignificant whitespace.
pub fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut in_str = false;
    let mut esc = false;
    for &b in json {
        if in_str {
            out.push(b);
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            if b == b'"' {
                in_str = true;
            }
            out.push(b);
        }
    }
    out
}

/// (json, cbor, packed) byte totals after checking every round trip.
fn totals(dir: &str) -> (usize, usize, usize, usize) {
    let files = json_files(&data(dir));
    assert!(!files.is_empty(), "{dir} is empty");
    let (mut j, mut c, mut p) = (0, 0, 0);
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let json = compact(&raw);
        let want: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let cb = cbor::encode_vec(&json, &Limits::DEFAULT).unwrap();
        let back = cbor::decode_vec(&cb, &Limits::DEFAULT).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&back)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", f.display(), String::from_utf8_lossy(&back)));
        assert_eq!(got, want, "{}", f.display());
        let packed = pack::pack_vec(&json).unwrap();
        assert!(packed.len() <= cb.len(), "{}: packing grew", f.display());
        let unpacked = pack::unpack_vec(&packed).unwrap();
        assert_eq!(unpacked, back, "{}", f.display());
        if let Ok(d) = std::env::var("LOWBAND_DUMP_CBOR") {
            let name = f
                .strip_prefix(data(dir))
                .unwrap()
                .to_string_lossy()
                .replace('/', "__");
            std::fs::create_dir_all(Path::new(&d).join(dir)).unwrap();
            std::fs::write(Path::new(&d).join(dir).join(name + ".cbor"), &cb).unwrap();
        }
        j += json.len();
        c += cb.len();
        p += packed.len();
    }
    (files.len(), j, c, p)
}

#[test]
fn spec_corpus_round_trips_within_budget() {
    let (n, j, c, p) = totals("spec-corpus");
    let pct = |x: usize| 100.0 * x as f64 / j as f64;
    println!(
        "spec corpus: {n} files json {j} cbor {c} ({:.1}%) packed {p} ({:.1}%)",
        pct(c),
        pct(p)
    );
    assert!(p * 100 <= j * 30, "spec corpus packed {p} > 30% of {j}");
}

#[test]
fn synapse_samples_round_trip_within_budget() {
    let (n, j, c, p) = totals("synapse");
    let pct = |x: usize| 100.0 * x as f64 / j as f64;
    println!(
        "synapse: {n} files json {j} cbor {c} ({:.1}%) packed {p} ({:.1}%)",
        pct(c),
        pct(p)
    );
    assert!(p * 100 <= j * 25, "synapse packed {p} > 25% of {j}");
}

#[test]
fn hello_world_packs_to_18_bytes() {
    let p = pack::pack_vec(br#"{"msgtype":"m.text","body":"Hello, world!"}"#).unwrap();
    assert!(p.len() <= 18, "{} bytes: {p:02x?}", p.len());
}

#[test]
fn canonical_corpus_bodies_are_byte_identical() {
    // Every corpus body that is canonical JSON comes back byte for byte.
    let mut checked = 0;
    for dir in ["spec-corpus", "synapse"] {
        for f in json_files(&data(dir)) {
            let json = compact(&std::fs::read(&f).unwrap());
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let canon = crate::cbor::canonical(&v);
            let cb = cbor::encode_vec(canon.as_bytes(), &Limits::DEFAULT).unwrap();
            let back = cbor::decode_vec(&cb, &Limits::DEFAULT).unwrap();
            if canon.contains('.') && !crate::cbor::has_no_floats(&v) {
                continue;
            }
            assert_eq!(String::from_utf8(back).unwrap(), canon, "{}", f.display());
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked}");
}
