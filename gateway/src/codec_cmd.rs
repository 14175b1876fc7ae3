//! `lowband codec`: translate bodies between Matrix JSON and lowband's link form, and measure
//! corpora.
//!
//! `encode` reads JSON on stdin and writes the packed link form (plain CBOR, or deflated when
//! shorter; `--plain` forces plain CBOR); `decode` accepts either form and writes compact JSON
//! with canonical escaping; `stats` prints one tab-separated row per `*.json` file.
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lowband_codec::cbor::{self, Limits};
use lowband_codec::{pack, route};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Subcommands of `lowband codec`.
#[derive(Debug, Subcommand)]
pub enum CodecCommand {
    /// JSON body on stdin -> link form (CBOR, deflated when shorter) on stdout.
    Encode {
        /// Prefix the route encoding of this request (METHOD PATH).
        #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"])]
        route: Option<Vec<String>>,
        /// Write plain CBOR, never deflated.
        #[arg(long)]
        plain: bool,
    },
    /// Link form (CBOR or deflated) on stdin -> compact JSON on stdout.
    Decode {
        /// The input starts with a route prefix (from `encode --route`): print the request
        /// line (METHOD PATH) first.
        #[arg(long)]
        route: bool,
    },
    /// For every *.json file under DIRs: `file json_bytes cbor_bytes packed_bytes roundtrip`.
    Stats {
        /// Folders to walk (recursively, sorted).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

/// Runs one `lowband codec` subcommand.
pub fn run(cmd: CodecCommand) -> Result<()> {
    match cmd {
        CodecCommand::Encode { route, plain } => {
            let mut prefix = Vec::new();
            if let Some(r) = route {
                // The request target: route number, path parameters and query, compact
                // (`lowband_codec::route`), behind its length as a CBOR-style varint.
                let mut t = vec![0u8; 2 * (r[0].len() + r[1].len()) + 16];
                let n = route::encode_target(&r[0], &r[1], &mut t)
                    .map_err(|e| anyhow::anyhow!("--route {} {}: {e:?}", r[0], r[1]))?;
                push_len(&mut prefix, n);
                prefix.extend_from_slice(&t[..n]);
            }
            std::io::stdout().write_all(&prefix)?;
            let json = read_stdin()?;
            let out = if plain {
                cbor::encode_vec(&json, &Limits::DEFAULT)
                    .map_err(|e| anyhow::anyhow!("encode: {e}"))?
            } else {
                pack::pack_vec(&json).map_err(|e| anyhow::anyhow!("encode: {e}"))?
            };
            std::io::stdout().write_all(&out)?;
        }
        CodecCommand::Decode { route } => {
            let mut packed = read_stdin()?;
            if route {
                let (n, used) = read_len(&packed).context("--route: no target length")?;
                let target = packed
                    .get(used..used + n)
                    .context("--route: truncated target")?
                    .to_vec();
                let mut method = [0u8; 64];
                let mut out = vec![0u8; 16 * n + 64];
                let (m, len) = route::decode_target(&target, &mut method, &mut out)
                    .map_err(|e| anyhow::anyhow!("--route: {e:?}"))?;
                let name = match m.as_str() {
                    Some(s) => s.to_owned(),
                    None => String::from_utf8_lossy(
                        &method[..method.iter().position(|&b| b == 0).unwrap_or(0)],
                    )
                    .into_owned(),
                };
                let mut w = std::io::stdout().lock();
                writeln!(w, "{name} {}", String::from_utf8_lossy(&out[..len]))?;
                packed.drain(..used + n);
            }
            let json = pack::unpack_vec(&packed).map_err(|e| anyhow::anyhow!("decode: {e}"))?;
            std::io::stdout().write_all(&json)?;
        }
        CodecCommand::Stats { dirs } => {
            if !stats(&dirs, &mut std::io::stdout().lock())? {
                bail!("some round trips failed");
            }
        }
    }
    Ok(())
}

/// Appends `n` as a little-endian base-128 varint.
fn push_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Reads a varint written by [`push_len`]: (value, bytes used).
fn read_len(b: &[u8]) -> Option<(usize, usize)> {
    let mut n = 0usize;
    for (i, &x) in b.iter().enumerate().take(4) {
        n |= usize::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut v = Vec::new();
    std::io::stdin()
        .read_to_end(&mut v)
        .context("reading stdin")?;
    Ok(v)
}

/// All `*.json` files under `dir`, recursively, sorted.
fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            json_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// The JSON text without insignificant whitespace.
pub fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_str, mut esc) = (false, false);
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
            in_str = b == b'"';
            out.push(b);
        }
    }
    out
}

/// Sizes of one body: (json, cbor, packed), or the first failure.
fn measure(raw: &[u8]) -> (usize, usize, usize, Result<(), String>) {
    let json = compact(raw);
    let j = json.len();
    let cb = match cbor::encode_vec(&json, &Limits::DEFAULT) {
        Ok(c) => c,
        Err(e) => return (j, 0, 0, Err(format!("encode: {e}"))),
    };
    let packed = match pack::pack_vec(&json) {
        Ok(p) => p,
        Err(e) => return (j, cb.len(), 0, Err(format!("pack: {e}"))),
    };
    let check = (|| {
        let back = cbor::decode_vec(&cb, &Limits::DEFAULT).map_err(|e| format!("decode: {e}"))?;
        let unpacked = pack::unpack_vec(&packed).map_err(|e| format!("unpack: {e}"))?;
        if unpacked != back {
            return Err("packed and plain forms differ".to_owned());
        }
        let want: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| format!("input: {e}"))?;
        let got: serde_json::Value =
            serde_json::from_slice(&back).map_err(|e| format!("output: {e}"))?;
        if want != got {
            return Err("value differs".to_owned());
        }
        Ok(())
    })();
    (j, cb.len(), packed.len(), check)
}

/// Writes the stats table; returns false if any round trip failed.
pub fn stats(dirs: &[PathBuf], out: &mut impl Write) -> Result<bool> {
    let mut all_ok = true;
    let (mut tj, mut tc, mut tp) = (0usize, 0usize, 0usize);
    for dir in dirs {
        let mut files = Vec::new();
        json_files(dir, &mut files)?;
        files.sort();
        for f in files {
            let raw = std::fs::read(&f).with_context(|| format!("{}", f.display()))?;
            let (j, c, p, check) = measure(&raw);
            let status = match check {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    all_ok = false;
                    e
                }
            };
            writeln!(out, "{}\t{j}\t{c}\t{p}\t{status}", f.display())?;
            tj += j;
            tc += c;
            tp += p;
        }
    }
    let pct = |x: usize| {
        if tj == 0 {
            0.0
        } else {
            100.0 * x as f64 / tj as f64
        }
    };
    writeln!(
        out,
        "TOTAL\t{tj}\t{tc}\t{tp}\t{}",
        if all_ok {
            format!("ok (cbor {:.1}%, packed {:.1}%)", pct(tc), pct(tp))
        } else {
            "FAILED".to_owned()
        }
    )?;
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefix_lengths_round_trip() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let mut v = Vec::new();
            push_len(&mut v, n);
            assert_eq!(read_len(&v), Some((n, v.len())));
        }
        assert_eq!(read_len(&[0x80, 0x80]), None);
        let mut v = Vec::new();
        push_len(&mut v, 24);
        assert_eq!(v, [24]);
    }

    #[test]
    fn compact_keeps_string_whitespace() {
        assert_eq!(
            compact(b" { \"a b\" : [1, \"\\\" x\"] }\n"),
            b"{\"a b\":[1,\"\\\" x\"]}"
        );
    }

    #[test]
    fn measure_reports_sizes_and_roundtrip() {
        let (j, c, p, ok) = measure(br#"{"msgtype": "m.text", "body": "Hello, world!"}"#);
        assert_eq!((j, c), (43, 18));
        assert!(p <= c);
        assert!(ok.is_ok());
        let (_, _, _, bad) = measure(b"{not json");
        assert!(bad.is_err());
    }
}
