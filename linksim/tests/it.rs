//! Integration tests of lowband-linksim: statistics, determinism, the driver with real framing,
//! and the relays on loopback.
extern crate alloc;

use alloc::collections::VecDeque;
use core::time::Duration;

use lowband_codec::frame::{encode, max_encoded_len, Deframer, Fragmenter, Reassembler};
use lowband_linksim::{
    serial, udp, Dir, DriveError, Endpoint, Link, LinkConfig, Pair, Stats, StreamConfig, StreamLink,
};

const MS: Duration = Duration::from_millis(1);

fn lossy() -> LinkConfig {
    LinkConfig {
        rate_bps: 9600,
        latency: 20 * MS,
        jitter: 10 * MS,
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.05,
        reorder_delay: 100 * MS,
        corrupt: 0.05,
        bit_error_rate: 1e-4,
        mtu: Some(64),
        ..LinkConfig::default()
    }
}

/// Sends `n` frames of varied sizes both ways, one every 10 ms, and records every delivery.
fn trace(seed: u64, n: usize) -> Vec<(Duration, Dir, Vec<u8>)> {
    let mut l = Link::symmetric(lossy(), seed);
    let mut out = Vec::new();
    for i in 0..n {
        let now = 10 * MS * i as u32;
        let len = 1 + i % 70;
        l.send(now, Dir::AtoB, vec![i as u8; len]);
        l.send(now, Dir::BtoA, vec![!(i as u8); len / 2 + 1]);
        while let Some((d, f)) = l.poll_deliver(now) {
            out.push((now, d, f));
        }
    }
    while let Some(t) = l.next_event_time() {
        let (d, f) = l.poll_deliver(t).expect("due");
        out.push((t, d, f));
    }
    out
}

#[test]
fn same_seed_same_trace() {
    let a = trace(42, 500);
    assert_eq!(a, trace(42, 500));
    assert_ne!(a, trace(43, 500));
    assert!(a.len() > 700, "{}", a.len());
}

#[test]
fn measured_rates_match_configuration() {
    let n = 20_000u64;
    let cfg = LinkConfig {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.02,
        reorder_delay: 50 * MS,
        corrupt: 0.03,
        ..LinkConfig::default()
    };
    let mut l = Link::symmetric(cfg, 7);
    for i in 0..n {
        l.send(MS * i as u32, Dir::AtoB, [0x55u8; 20]);
    }
    let mut delivered = 0u64;
    while let Some(t) = l.next_event_time() {
        while l.poll_deliver(t).is_some() {
            delivered += 1;
        }
    }
    let c = l.counters(Dir::AtoB);
    let rate = |x: u64| x as f64 / n as f64;
    // 4 standard deviations of a binomial proportion at n = 20 000 is below 0.009.
    assert!(
        (rate(c.frames_lost) - 0.1).abs() < 0.009,
        "loss {}",
        rate(c.frames_lost)
    );
    let kept = n - c.frames_lost;
    let per_kept = |x: u64| x as f64 / kept as f64;
    assert!((per_kept(c.frames_duplicated) - 0.05).abs() < 0.007);
    assert!((per_kept(c.frames_reordered) - 0.02).abs() < 0.005);
    assert!((per_kept(c.frames_corrupted) - 0.03).abs() < 0.006);
    assert_eq!(delivered, kept + c.frames_duplicated);
    assert_eq!(c.frames_delivered, delivered);
    assert_eq!(c.bytes_on_link, 20 * n);
    assert_eq!(l.counters(Dir::BtoA), Default::default());
}

#[test]
fn bit_error_rate_is_measured() {
    let cfg = LinkConfig {
        bit_error_rate: 1e-3,
        ..LinkConfig::default()
    };
    let mut l = Link::symmetric(cfg, 9);
    let frames = 2_000u64;
    for _ in 0..frames {
        l.send(Duration::ZERO, Dir::BtoA, [0u8; 50]);
    }
    let mut ones = 0u64;
    while let Some((_, f)) = l.poll_deliver(Duration::ZERO) {
        ones += f.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
    }
    let bits = frames * 50 * 8;
    let measured = ones as f64 / bits as f64;
    assert!((measured - 1e-3).abs() < 1.5e-4, "{measured}");
    assert_eq!(l.counters(Dir::BtoA).bits_flipped, ones);
}

#[test]
fn serialisation_delay_exact_at_100_bps() {
    let cfg = LinkConfig {
        latency: 100 * MS,
        ..LinkConfig::with_rate(100)
    };
    let mut l = Link::symmetric(cfg, 1);
    let t0 = 5 * MS;
    assert_eq!(l.send(t0, Dir::AtoB, [7u8; 10]), t0 + 800 * MS);
    assert_eq!(l.send(t0, Dir::AtoB, [8u8; 10]), t0 + 1600 * MS);
    assert_eq!(l.next_event_time(), Some(t0 + 900 * MS));
    assert_eq!(l.poll_deliver(t0 + 899 * MS), None);
    assert_eq!(
        l.poll_deliver(t0 + 900 * MS),
        Some((Dir::AtoB, vec![7; 10]))
    );
    assert_eq!(l.next_event_time(), Some(t0 + 1700 * MS));
    // UART 8N1: 10 bits per byte.
    let uart = LinkConfig {
        bits_per_byte: 10,
        ..LinkConfig::with_rate(100)
    };
    assert_eq!(uart.serialisation_time(10), Duration::from_secs(1));
}

/// A minimal sans-IO endpoint: sends numbered packets through serial framing with a
/// retransmit timer, counts what it receives.
#[derive(Debug, Default)]
struct SerialPeer {
    outbox: VecDeque<Vec<u8>>,
    deframer: Deframer<128>,
    received: Vec<Vec<u8>>,
    timer: Option<Duration>,
    timeouts: u32,
}

impl Endpoint for SerialPeer {
    fn poll_transmit(&mut self, _now: Duration) -> Option<Vec<u8>> {
        let p = self.outbox.pop_front()?;
        let mut out = vec![0u8; max_encoded_len(p.len(), true)];
        let n = encode(&p, true, &mut out).expect("room");
        out.truncate(n);
        Some(out)
    }
    fn handle_receive(&mut self, _now: Duration, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let used = self.deframer.handle_bytes(rest);
            rest = &rest[used..];
            if let Some(Ok(f)) = self.deframer.poll_frame() {
                self.received.push(f.to_vec());
            }
        }
    }
    fn poll_timeout(&mut self) -> Option<Duration> {
        self.timer
    }
    fn handle_timeout(&mut self, _now: Duration) {
        self.timer = None;
        self.timeouts += 1;
    }
}

#[test]
fn pair_over_noisy_serial_line_resyncs() {
    let line = StreamConfig {
        bit_error_rate: 2e-4,
        byte_loss: 5e-4,
        byte_insert: 5e-4,
        ..StreamConfig::with_rate(1200)
    };
    let mut a = SerialPeer::default();
    let sent: Vec<Vec<u8>> = (0..200u32)
        .map(|i| format!("message {i:03}").into_bytes())
        .collect();
    a.outbox.extend(sent.iter().cloned());
    a.timer = Some(Duration::from_secs(3));
    let mut pair = Pair::new(a, SerialPeer::default(), StreamLink::symmetric(line, 5));
    let t = pair
        .drive_until(Duration::from_secs(60), |_, b| b.received.len() >= 190)
        .expect("most frames arrive");
    // 200 frames of 11 B + 5 B framing = 3200 B = 25 600 bits at 1200 bit/s: 21.3 s.
    assert!(
        t > Duration::from_secs(20) && t < Duration::from_secs(22),
        "{t:?}"
    );
    assert_eq!(pair.a.timeouts, 1);
    // Whatever arrives is a frame that was sent, in order (the FCS let no damage through).
    let mut it = sent.iter();
    for r in &pair.b.received {
        assert!(it.any(|s| s == r), "{r:?} not sent or out of order");
    }
    let c = pair.link.counters(Dir::AtoB);
    assert!(c.bits_flipped + c.bytes_lost + c.bytes_inserted > 0);
    // Damaged frames are counted by the deframer, not silently lost.
    let d = pair.b.deframer.stats();
    assert_eq!(d.frames as usize, pair.b.received.len());
    assert!(d.dropped() > 0);
    // Idle afterwards: the driver reports it.
    pair.drive(Duration::from_secs(100));
    assert!(matches!(
        pair.drive_until(Duration::from_secs(200), |_, b| b.received.len() > 200),
        Err(DriveError::Idle { .. })
    ));
}

/// Datagram peer: fragments packets to the MTU, reassembles what arrives.
#[derive(Debug)]
struct RadioPeer {
    mtu: usize,
    frag: Fragmenter,
    outbox: VecDeque<Vec<u8>>,
    reasm: Reassembler<4, 400>,
    received: Vec<Vec<u8>>,
}

impl RadioPeer {
    fn new(mtu: usize) -> Self {
        Self {
            mtu,
            frag: Fragmenter::new(),
            outbox: VecDeque::new(),
            reasm: Reassembler::new(30_000),
            received: Vec::new(),
        }
    }
    fn queue(&mut self, packet: &[u8]) {
        for f in self.frag.fragment(packet, self.mtu).expect("fits") {
            let mut d = vec![0u8; f.len()];
            f.emit(&mut d).expect("room");
            self.outbox.push_back(d);
        }
    }
}

impl Endpoint for RadioPeer {
    fn poll_transmit(&mut self, _now: Duration) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }
    fn handle_receive(&mut self, now: Duration, data: &[u8]) {
        if let Ok(Some(p)) = self.reasm.handle_datagram(now.as_millis() as u64, data) {
            self.received.push(p.to_vec());
        }
    }
    fn poll_timeout(&mut self) -> Option<Duration> {
        self.reasm.poll_timeout().map(Duration::from_millis)
    }
    fn handle_timeout(&mut self, now: Duration) {
        self.reasm.handle_timeout(now.as_millis() as u64);
    }
}

#[test]
fn pair_fragments_over_lorawan_like_link() {
    let radio = LinkConfig {
        rate_bps: 250,
        latency: 50 * MS,
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_delay: 3000 * MS,
        mtu: Some(51),
        ..LinkConfig::default()
    };
    let packets: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            (0..(20 + usize::from(i) * 7))
                .map(|j| j as u8 ^ i)
                .collect()
        })
        .collect();
    let mut total = 0;
    for seed in 0..10 {
        let mut a = RadioPeer::new(51);
        for p in &packets {
            a.queue(p);
        }
        let mut pair = Pair::new(a, RadioPeer::new(51), Link::symmetric(radio.clone(), seed));
        pair.drive(Duration::from_secs(3600));
        let c = pair.link.counters(Dir::AtoB);
        assert_eq!(c.frames_dropped_mtu, 0, "fragmenter respects the MTU");
        assert!(c.frames_lost > 0 && c.frames_reordered > 0 && c.frames_duplicated > 0);
        // Every packet whose fragments all arrived is rebuilt exactly; none is invented.
        for r in &pair.b.received {
            assert!(
                packets.contains(r),
                "seed {seed}: invented {} B {:?}",
                r.len(),
                pair.b.reasm.stats()
            );
        }
        assert!(pair.b.reasm.stats().reassembled > 0);
        assert!(
            pair.b.received.len() >= 25,
            "seed {seed}: {} of 40",
            pair.b.received.len()
        );
        assert_eq!(pair.b.reasm.in_progress(), 0, "partial packets time out");
        total += pair.b.received.len();
    }
    eprintln!("lorawan-like link: {total} of 400 packets delivered");
}

#[tokio::test]
async fn udp_relay_on_loopback() {
    use tokio::net::UdpSocket;
    use tokio::time::timeout;

    // B side: an echo server.
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = server.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            server.send_to(&buf[..n], from).await.unwrap();
        }
    });
    let cfg = LinkConfig {
        latency: 2 * MS,
        loss: 0.2,
        mtu: Some(200),
        ..LinkConfig::default()
    };
    let relay = udp::Relay::bind(
        "127.0.0.1:0".parse().unwrap(),
        target,
        Link::symmetric(cfg, 3),
    )
    .await
    .unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let stats = relay.stats();
    let task = relay.spawn();

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let n = 200u32;
    let mut echoed = 0u32;
    let mut buf = [0u8; 2048];
    for i in 0..n {
        client.send_to(&i.to_be_bytes(), relay_addr).await.unwrap();
        if let Ok(Ok((len, _))) = timeout(30 * MS, client.recv_from(&mut buf)).await {
            assert_eq!(len, 4);
            echoed += 1;
        }
    }
    // Round trip survives with probability 0.8 * 0.8 = 0.64.
    assert!((90..=165).contains(&echoed), "{echoed} of {n}");
    // Too big for the MTU: dropped and counted.
    client.send_to(&[0u8; 300], relay_addr).await.unwrap();
    // A new client address is followed.
    let client2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut got2 = false;
    for _ in 0..20 {
        client2.send_to(b"hello", relay_addr).await.unwrap();
        if let Ok(Ok((len, _))) = timeout(50 * MS, client2.recv_from(&mut buf)).await {
            assert_eq!(&buf[..len], b"hello");
            got2 = true;
            break;
        }
    }
    assert!(got2, "relay follows the new client address");
    let ab = stats.get(Dir::AtoB);
    assert_eq!(ab.frames_dropped_mtu, 1);
    assert!(ab.frames_lost > 10 && ab.frames_offered > u64::from(n));
    task.abort();
    echo.abort();
}

#[tokio::test]
async fn tcp_relay_paces_bytes_at_the_rate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::{timeout, Instant};

    // B side: a TCP server standing in for QEMU's UART.
    let uart = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uart_addr = uart.local_addr().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let stats: Stats<_> = Stats::default();
    let relay = tokio::spawn(serial::tcp_relay(
        listener,
        uart_addr,
        || StreamLink::symmetric(StreamConfig::with_rate(8_000), 1),
        stats.clone(),
    ));

    let mut a = TcpStream::connect(relay_addr).await.unwrap();
    let (mut b, _) = timeout(Duration::from_secs(5), uart.accept())
        .await
        .unwrap()
        .unwrap();
    let start = Instant::now();
    let msg = [0xA5u8; 200];
    a.write_all(&msg).await.unwrap();
    let mut got = [0u8; 200];
    timeout(Duration::from_secs(5), b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let took = start.elapsed();
    // 200 bytes * 8 bits at 8000 bit/s = 200 ms.
    assert!(
        took >= 195 * MS && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(got, msg);
    // And back.
    b.write_all(b"ok").await.unwrap();
    let mut back = [0u8; 2];
    timeout(Duration::from_secs(5), a.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ok");
    assert_eq!(stats.get(Dir::AtoB).bytes_delivered, 200);
    relay.abort();
}
