//! Translation speed over the corpora (spec examples + real Synapse bodies): lowband's
//! streaming transcoder against the naive pipeline (serde_json::Value <-> ciborium), both ways.
//!
//! `cargo bench -p lowband-codec --bench translate -- --warm-up-time 1 --measurement-time 3`
use core::hint::black_box;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lowband_codec::cbor::{decode_to_json, encode_json, Limits};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut paths = Vec::new();
    files(&root.join("spec-corpus"), &mut paths);
    files(&root.join("synapse"), &mut paths);
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
        .collect()
}

fn translate(c: &mut Criterion) {
    let bodies = corpus();
    let total: usize = bodies.iter().map(Vec::len).sum();
    let limits = Limits::DEFAULT;
    let ours: Vec<Vec<u8>> = bodies
        .iter()
        .map(|j| {
            let mut out = vec![0u8; j.len() * 3 + 16];
            let n = encode_json(j, &mut out, &limits).unwrap();
            out.truncate(n);
            out
        })
        .collect();
    let naive: Vec<Vec<u8>> = bodies
        .iter()
        .map(|j| {
            let v: serde_json::Value = serde_json::from_slice(j).unwrap();
            let mut out = Vec::new();
            ciborium::into_writer(&v, &mut out).unwrap();
            out
        })
        .collect();
    let mut buf = vec![0u8; 1 << 20];

    let mut g = c.benchmark_group("json_to_cbor");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("lowband", |b| {
        b.iter(|| {
            for j in &bodies {
                black_box(encode_json(black_box(j), &mut buf, &limits).unwrap());
            }
        })
    });
    g.bench_function("naive_serde_ciborium", |b| {
        b.iter(|| {
            for j in &bodies {
                let v: serde_json::Value = serde_json::from_slice(black_box(j)).unwrap();
                let mut out = Vec::with_capacity(j.len());
                ciborium::into_writer(&v, &mut out).unwrap();
                black_box(out);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cbor_to_json");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("lowband", |b| {
        b.iter(|| {
            for cb in &ours {
                black_box(decode_to_json(black_box(cb), &mut buf, &limits).unwrap());
            }
        })
    });
    g.bench_function("naive_serde_ciborium", |b| {
        b.iter(|| {
            for cb in &naive {
                let v: serde_json::Value = ciborium::from_reader(black_box(&cb[..])).unwrap();
                black_box(serde_json::to_vec(&v).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, translate);
criterion_main!(benches);
