//! frame tests: round trips, noise resilience, fragmentation under loss, duplication, reorder.
use lowband_codec::frame::{
    encode, encoded_len, max_encoded_len, serial::DELIMITER, Deframer, Fragmenter, Reassembler,
};
use proptest::prelude::*;

const CAP: usize = 300;

/// Decodes a whole byte stream with handle_bytes/poll_frame; returns good frames and error count.
fn deframe_all<const N: usize>(d: &mut Deframer<N>, wire: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut frames = Vec::new();
    let mut errors = 0;
    let mut rest = wire;
    while !rest.is_empty() {
        let used = d.handle_bytes(rest);
        rest = &rest[used..];
        match d.poll_frame() {
            Some(Ok(f)) => frames.push(f.to_vec()),
            Some(Err(_)) => errors += 1,
            None => {}
        }
    }
    (frames, errors)
}

fn encode_vec(p: &[u8], lead: bool) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_len(p.len(), lead)];
    let n = encode(p, lead, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn serial_literal_stream() {
    // Two frames: "hi" with a lead, then [00] back to back. FCS16("hi") = 0x5A15, of [00] 0x0F78... checked by the decoder.
    let wire = [
        0x00, 0x05, b'h', b'i', 0x15, 0x5A, 0x00, // "hi"
        0x00, 0x00, // idle fill
        0x01, 0x03, 0x21, 0x00, 0x00, // not a valid frame: wrong FCS
    ];
    let mut d = Deframer::<8>::new();
    let (frames, errors) = deframe_all(&mut d, &wire);
    assert_eq!(frames, vec![b"hi".to_vec()]);
    assert_eq!(errors, 1);
    assert_eq!(d.stats().crc_errors + d.stats().truncated, 1);
}

#[test]
fn serial_overhead_budget() {
    // The budget every byte pays: 4 bytes per frame below 253 payload bytes, 5 with a lead.
    let p = [0x5Au8; 46];
    assert_eq!(encoded_len(&p, false), 50);
    assert_eq!(encoded_len(&p, true), 51);
    assert_eq!(encode_vec(&p, false).len(), 50);
}

proptest! {
    #[test]
    fn serial_round_trip(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..CAP), 1..8), lead in any::<bool>()) {
        let mut wire = Vec::new();
        for p in &payloads {
            let e = encode_vec(p, lead);
            prop_assert_eq!(e.len(), encoded_len(p, lead));
            prop_assert!(e.len() <= max_encoded_len(p.len(), lead));
            // The delimiter only ever delimits.
            let inner = &e[usize::from(lead)..e.len() - 1];
            prop_assert!(!inner.contains(&DELIMITER));
            wire.extend_from_slice(&e);
        }
        let mut d = Deframer::<CAP>::new();
        let (frames, errors) = deframe_all(&mut d, &wire);
        prop_assert_eq!(errors, 0);
        prop_assert_eq!(frames, payloads);
    }

    #[test]
    fn serial_byte_and_slice_apis_agree(wire in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut a = Deframer::<64>::new();
        let mut b = Deframer::<64>::new();
        let (fa, ea) = deframe_all(&mut a, &wire);
        let mut fb = Vec::new();
        let mut eb = 0;
        for &x in &wire {
            match b.handle_byte(x) {
                Some(Ok(f)) => fb.push(f.to_vec()),
                Some(Err(_)) => eb += 1,
                None => {}
            }
        }
        prop_assert_eq!(fa, fb);
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(a.stats(), b.stats());
    }

    /// Garbage between frames sent with a leading delimiter never costs a real frame.
    #[test]
    fn serial_garbage_between_frames(
        frames in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..80), prop::collection::vec(any::<u8>(), 0..40)), 1..10),
    ) {
        let mut wire = Vec::new();
        for (p, garbage) in &frames {
            wire.extend_from_slice(garbage);
            wire.extend_from_slice(&encode_vec(p, true));
        }
        let mut d = Deframer::<128>::new();
        let (got, _errors) = deframe_all(&mut d, &wire);
        // Every real frame arrives in order; garbage can only add (rare) spurious frames that pass
        // the FCS by chance.
        let mut it = got.iter();
        for (p, _) in &frames {
            prop_assert!(it.any(|g| g == p), "frame {:?} lost", p);
        }
    }

    /// Bit flips, dropped and inserted bytes inside frames: exactly the damaged frames are lost.
    #[test]
    fn serial_damage_only_costs_damaged_frames(
        frames in prop::collection::vec((prop::collection::vec(any::<u8>(), 1..60), 0u8..4, any::<u16>(), any::<u8>()), 1..12),
    ) {
        let mut wire = Vec::new();
        let mut expect = Vec::new();
        for (p, kind, pos, val) in &frames {
            let mut e = encode_vec(p, true);
            // Damage only between the lead and the end delimiter, so damage stays in this frame.
            let body = 1..e.len() - 1;
            let at = body.start + usize::from(*pos) % body.len();
            match kind {
                0 => expect.push(p.clone()),
                1 => { e[at] ^= 1 << (val % 8); }
                2 => { e.remove(at); }
                _ => { e.insert(at, val | 1); } // a non-zero byte: a zero would split the frame
            }
            wire.extend_from_slice(&e);
        }
        let mut d = Deframer::<128>::new();
        let (got, _errors) = deframe_all(&mut d, &wire);
        // A damaged frame passes the 16-bit FCS with probability ~2^-16; the undamaged are all
        // there, in order.
        let mut it = got.iter();
        for p in &expect {
            prop_assert!(it.any(|g| g == p), "undamaged frame {:?} lost", p);
        }
        prop_assert!(got.len() <= expect.len() + 1);
    }

    #[test]
    fn frag_round_trip_shuffled_duplicated(
        packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..6),
        mtu in 2usize..120,
        seed in any::<u64>(),
    ) {
        let mut f = Fragmenter::new();
        let mut r = Reassembler::<4, 400>::new(10_000);
        for p in &packets {
            let Ok(frags) = f.fragment(p, mtu) else {
                prop_assert!(p.len().div_ceil(mtu - 1) > 8);
                continue;
            };
            let mut dgrams: Vec<Vec<u8>> = frags
                .map(|d| { let mut b = vec![0u8; d.len()]; d.emit(&mut b).unwrap(); b })
                .collect();
            for d in &dgrams { prop_assert!(d.len() <= mtu); }
            let overhead: usize = dgrams.iter().map(Vec::len).sum::<usize>() - p.len();
            prop_assert!(overhead <= dgrams.len());
            if dgrams.len() == 1 && p.first().is_some_and(|&b| b < 0xC0) {
                prop_assert_eq!(overhead, 0);
            }
            // Reorder deterministically from the seed and duplicate the first datagram.
            let n = dgrams.len();
            dgrams.rotate_left((seed as usize) % n);
            if seed & 1 == 1 { dgrams.reverse(); }
            let first = dgrams[0].clone();
            dgrams.insert(n / 2, first);
            let mut got = Vec::new();
            for (t, d) in dgrams.iter().enumerate() {
                if let Some(pkt) = r.handle_datagram(t as u64, d).unwrap() {
                    got.push(pkt.to_vec());
                }
            }
            // A duplicated fragment never makes a second copy of a fragmented packet; a
            // duplicated whole datagram is a duplicate packet (the replay window's job).
            let copies = if n == 1 { 2 } else { 1 };
            prop_assert_eq!(got, vec![p.clone(); copies]);
        }
    }
}

#[test]
fn frag_interleaved_packets_and_loss() {
    // Two packets in flight interleaved; a third loses a fragment and times out, then a
    // retransmission of it succeeds.
    let mtu = 51;
    let mut f = Fragmenter::new();
    let a: Vec<u8> = (0..120u8).collect();
    let b: Vec<u8> = (0..100u8).map(|x| x ^ 0x55).collect();
    let c: Vec<u8> = vec![0xC7; 60];
    let da: Vec<_> = f.fragment(&a, mtu).unwrap().collect();
    let db: Vec<_> = f.fragment(&b, mtu).unwrap().collect();
    assert_eq!((da.len(), db.len()), (3, 2));
    // Byte budget: 3 and 2 header bytes.
    assert_eq!(da.iter().map(|d| d.len()).sum::<usize>(), 123);
    let mut r = Reassembler::<2, 256>::new(5_000);
    let mut buf = [0u8; 51];
    let mut out = Vec::new();
    for (i, d) in [da[0], db[0], da[1], db[1], da[2]].iter().enumerate() {
        let n = d.emit(&mut buf).unwrap();
        if let Some(p) = r.handle_datagram(i as u64 * 100, &buf[..n]).unwrap() {
            out.push(p.to_vec());
        }
    }
    assert_eq!(out, vec![b.clone(), a.clone()]);

    let dc: Vec<_> = f.fragment(&c, mtu).unwrap().collect();
    assert_eq!(dc.len(), 2);
    let n = dc[0].emit(&mut buf).unwrap();
    assert_eq!(r.handle_datagram(1_000, &buf[..n]), Ok(None)); // second fragment lost
    assert_eq!(r.poll_timeout(), Some(6_000));
    r.handle_timeout(6_000);
    assert_eq!(r.stats().timed_out, 1);
    // Upper layer retransmits (new tag).
    let mut got = None;
    for d in f.fragment(&c, mtu).unwrap() {
        let n = d.emit(&mut buf).unwrap();
        if let Some(p) = r.handle_datagram(7_000, &buf[..n]).unwrap() {
            got = Some(p.to_vec());
        }
    }
    assert_eq!(got, Some(c));
}

#[test]
fn frag_over_serial_lorawan_budget() {
    // A 46-byte send (the anchors' estimate) fits one LoRaWAN DR0 frame with no header.
    let send = [0x42u8; 46];
    assert_eq!(Fragmenter::overhead(&send, 51), Ok(0));
    // A 100-byte handshake message: 2 datagrams of 1 + 50 bytes; 101 bytes need 3.
    assert_eq!(Fragmenter::overhead(&[0x01u8; 100], 51), Ok(2));
    assert_eq!(Fragmenter::overhead(&[0x01u8; 101], 51), Ok(3));
    // The empty packet is escaped (an empty datagram is refused).
    assert_eq!(Fragmenter::overhead(&[], 51), Ok(1));
}
