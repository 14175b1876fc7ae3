//! The device profile's parsers (`lowband_codec::lb::dev`) on arbitrary bytes: operations,
//! registration and event payloads and pushed items never panic, and what parses writes back
//! to bytes that parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::lb::dev::{parse_event, parse_register, write_event, Item, Op, OP_WAKE};

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = Op::parse(data) {
        let mut out = [0u8; 16];
        let n = op.write(&mut out).expect("a parsed op writes");
        assert_eq!(Op::parse(&out[..n]), Ok(op));
        // The device recognises a wake by its one byte, without the parser: they agree.
        assert_eq!(op == Op::Wake, data == [OP_WAKE << 4]);
    }
    if let Ok((op, rest)) = Op::parse_prefix(data) {
        assert!(rest.len() < data.len());
        // The prefix writes back to bytes that parse to the same op (varints may have been
        // overlong) and no longer than it was.
        let mut out = [0u8; 16];
        let n = op.write(&mut out).expect("a parsed op writes");
        assert!(n <= data.len() - rest.len());
        assert_eq!(Op::parse_prefix(&out[..n]), Ok((op, &[][..])));
        if let Op::Event { .. } = op {
            if let Ok((kind, content)) = parse_event(rest) {
                assert!(!kind.is_empty());
                let mut out = vec![0u8; rest.len()];
                let n = write_event(kind, content, &mut out).expect("a parsed event writes");
                assert_eq!(parse_event(&out[..n]), Ok((kind, content)));
            }
        }
    }
    let _ = parse_register(data);
    if let Ok((kind, content)) = parse_event(data) {
        let mut out = vec![0u8; data.len()];
        let n = write_event(kind, content, &mut out).expect("a parsed event writes");
        assert_eq!(parse_event(&out[..n]), Ok((kind, content)));
    }
    if let Ok(it) = Item::parse(data) {
        let mut out = vec![0u8; data.len() + 4];
        let n = it.write(&mut out).expect("a parsed item writes");
        assert_eq!(Item::parse(&out[..n]), Ok(it));
    }
    // The packet framing's deframer: whatever comes, frames or counted errors.
    let mut d = lowband_codec::frame::Deframer::<64>::for_packets();
    let mut rest = data;
    while !rest.is_empty() {
        let used = d.handle_bytes(rest);
        rest = &rest[used..];
        if let Some(Ok(p)) = d.poll_frame() {
            assert!(p.len() <= 64);
        }
    }
});
