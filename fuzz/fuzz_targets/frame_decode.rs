//! Fuzz the serial deframer and the datagram reassembler on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::frame::{encode, max_encoded_len, Deframer, Reassembler};

fuzz_target!(|data: &[u8]| {
    // Serial: byte API and slice API must agree, and every frame must re-encode and decode.
    let mut a = Deframer::<256>::new();
    let mut b = Deframer::<256>::new();
    let mut rest = data;
    let mut from_slices = 0u32;
    while !rest.is_empty() {
        let used = a.handle_bytes(rest);
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        if let Some(Ok(frame)) = a.poll_frame() {
            from_slices += 1;
            let mut out = [0u8; 300];
            let n = encode(frame, true, &mut out).expect("capacity");
            assert!(n <= max_encoded_len(frame.len(), true));
            let mut c = Deframer::<256>::new();
            let back = out[..n]
                .iter()
                .find_map(|&x| c.handle_byte(x).map(|r| r.map(|f| f == frame)));
            assert_eq!(back, Some(Ok(true)));
        }
    }
    let mut from_bytes = 0u32;
    for &x in data {
        if let Some(Ok(_)) = b.handle_byte(x) {
            from_bytes += 1;
        }
    }
    assert_eq!(from_slices, from_bytes);
    assert_eq!(a.stats(), b.stats());

    // Datagrams: split the input into datagrams by a length prefix byte, feed them in.
    let mut r = Reassembler::<3, 128>::new(50);
    let mut rest = data;
    let mut now = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len % 64).min(tail.len());
        let (dgram, tail) = tail.split_at(len);
        rest = tail;
        now += u64::from(len as u8 & 0x0F);
        if let Ok(Some(p)) = r.handle_datagram(now, dgram) {
            assert!(p.len() <= 128 || p.len() == dgram.len());
        }
        assert!(r.in_progress() <= 3);
    }
});
