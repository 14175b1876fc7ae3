//! What an idle session costs `serve`: heap bytes held by its session table once the session
//! hibernated, counted by a global allocator wrapper (per thread, so tests running in
//! parallel do not disturb each other). The budget is 4 KiB per idle session (issue 4).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::net::SocketAddr;
use std::alloc::System;

use lowband_codec::coap::{Code, Options, Received, Request};
use lowband_codec::noise::link::{
    InitiatorConfig, LinkPattern, ResponderConfig, TransportConfig, RESPONDER_EXPORT_LEN,
};
use lowband_codec::noise::Keypair;
use lowband_codec::session::Client;
use lowband_gateway::table::{SessionTable, IDLE_SESSION_BYTES};
use lowband_gateway::transport::{LinkParams, COAP_MTU, PACKET, VERSION};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Counts the bytes this thread holds from the allocator.
struct Counting;

std::thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn held() -> isize {
    HELD.with(Cell::get)
}

fn count(d: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + d));
}

// SAFETY: forwards to the system allocator unchanged; the counting touches a const-initialised
// thread-local without destructor (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LINK: LinkParams = LinkParams {
    rate: 1_000_000,
    mtu: 1400,
};

type TestClient = Client<ChaCha20Rng, 2, 4, 1, COAP_MTU>;

/// Moves packets both ways until quiet; answers requests with 2.05; returns how many.
fn exchange(
    now: u64,
    t: &mut SessionTable,
    c: &mut TestClient,
    from: SocketAddr,
    cfg: &ResponderConfig<'_>,
    rng: &mut ChaCha20Rng,
) -> usize {
    let mut requests = 0;
    let mut out = vec![0u8; PACKET];
    let mut scratch = vec![0u8; PACKET];
    for _ in 0..8 {
        while let Some(n) = c.poll_transmit(now, &mut out) {
            if let Some((i, Some(Received::Request(r)))) =
                t.handle_packet(now, cfg, rng, from, &out[..n], &mut scratch)
            {
                let to = r.responder;
                requests += 1;
                t.session(i)
                    .unwrap()
                    .coap()
                    .respond(now, &to, Code::CONTENT, Options::NONE, b"ok")
                    .unwrap();
            }
        }
        while let Some((_, n)) = t.poll_transmit(now, &mut out) {
            let _ = c.handle_packet(now, &out[..n], &mut scratch);
        }
    }
    requests
}

#[test]
fn an_idle_session_holds_well_under_4_kib() {
    // The deterministic bound: entry + export + allocator header.
    const { assert!(IDLE_SESSION_BYTES <= 1024) };
    const { assert!(IDLE_SESSION_BYTES >= RESPONDER_EXPORT_LEN) };
    std::println!("hibernated session: {IDLE_SESSION_BYTES} B in the table");

    const N: usize = 64;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let gw = Keypair::generate(&mut rng);
    let keys: Vec<Keypair> = (0..N).map(|_| Keypair::generate(&mut rng)).collect();
    let allowed: Vec<_> = keys.iter().map(Keypair::public).collect();
    let versions = [VERSION];
    let cfg = ResponderConfig {
        local: &gw,
        versions: &versions,
        known_versions: &[],
        allowed: &allowed,
        accept_ik: true,
        accept_kk: false,
        transport: TransportConfig::default(),
    };
    let mut clients: Vec<Box<TestClient>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let init = InitiatorConfig {
                pattern: LinkPattern::IK,
                version: VERSION,
                local: k.clone(),
                remote: gw.public(),
                retransmit: LINK.retransmit(),
                transport: TransportConfig::default(),
            };
            Box::new(
                Client::new(
                    init,
                    LINK.coap(i as u64),
                    ChaCha20Rng::seed_from_u64(i as u64),
                )
                .unwrap(),
            )
        })
        .collect();
    let addr = |i: usize| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)) };

    let before = held();
    let mut t = SessionTable::new(LINK.coap(1), 1024);
    for (i, c) in clients.iter_mut().enumerate() {
        exchange(0, &mut t, c, addr(i), &cfg, &mut rng);
        assert!(c.is_established());
    }
    assert_eq!(t.len(), N);
    let live = held() - before;
    // A live session holds its CoAP endpoint's exchange state; its message buffers are empty
    // until used (`HeapBuf`), so even a live session stays far below the ~70 KB of inline
    // MTU-sized buffers.
    let live_per = live / N as isize;
    assert!(live_per <= 8 * 1024, "live: {live_per} B/session");

    let later = 4 * LINK.transmission().ack_timeout + 1;
    assert_eq!(t.hibernate_idle(later), N);
    assert_eq!(t.asleep(), N);
    let idle = held() - before;
    let per = idle / N as isize;
    std::println!("live {live_per} B/session, idle {per} B/session");
    assert!(per <= IDLE_SESSION_BYTES as isize, "idle: {per} B/session");
    assert!(per < 4096);
    // Hibernation is what gets under the budget.
    assert!(live_per > 4096 && live_per > 4 * per, "{live_per} vs {per}");

    // Still sessions: a request wakes one (no new handshake) and is answered.
    let c = &mut clients[7];
    c.request(later, Request::con(Code::POST, Options::NONE, b"x"))
        .unwrap();
    assert_eq!(exchange(later, &mut t, c, addr(7), &cfg, &mut rng), 1);
    assert_eq!(t.asleep(), N - 1);
    assert_eq!(c.stats().handshakes, 1);
}
