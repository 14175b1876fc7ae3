//! Issue 4: a busy session must not stall on `serve`'s duplicate-detection table. The real
//! session table of `serve` (32 remembered message ids per session) and a client with the
//! tunnel's dimensions, over a lossy, duplicating, reordering pipe on virtual time: 200
//! requests, far more than the table holds within one EXCHANGE_LIFETIME (RFC 7252 §4.5),
//! all complete, each delivered once to the application.

use core::net::SocketAddr;
extern crate alloc;
use alloc::collections::BTreeMap;

use lowband_codec::coap::{Code, Event, Options, Received, Request, RequestHandle};
use lowband_codec::noise::link::{InitiatorConfig, LinkPattern, ResponderConfig, TransportConfig};
use lowband_codec::noise::Keypair;
use lowband_codec::session::{Client, SessionEvent};
use lowband_gateway::table::{SessionTable, DEDUP};
use lowband_gateway::transport::{LinkParams, COAP_MTU, PACKET, VERSION};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The tunnel's client dimensions (16 exchanges, 8 remembered ids).
type TunnelLike = Client<ChaCha20Rng, 16, 8, 1, COAP_MTU>;

const LINK: LinkParams = LinkParams {
    rate: 2400,
    mtu: 256,
};

/// Serialisation at `LINK.rate` per direction, then loss, duplication (a copy 300 ms later)
/// and reordering (up to 2 s extra), in per mille, from one seed.
struct Pipe {
    rng: ChaCha20Rng,
    loss: u32,
    dup: u32,
    reorder: u32,
    busy: [u64; 2],
    q: Vec<(u64, u64, usize, Vec<u8>)>,
    seq: u64,
}

impl Pipe {
    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.next_u32() % 1000 < per_mille
    }

    fn send(&mut self, now: u64, to: usize, m: &[u8]) {
        let start = now.max(self.busy[to]);
        let end = start + (m.len() as u64 * 8_000).div_ceil(u64::from(LINK.rate));
        self.busy[to] = end;
        if self.chance(self.loss) {
            return;
        }
        let copies = if self.chance(self.dup) { 2 } else { 1 };
        for c in 0..copies {
            let extra = if self.chance(self.reorder) {
                u64::from(self.rng.next_u32() % 2_000)
            } else {
                0
            };
            self.seq += 1;
            self.q
                .push((end + extra + c * 300, self.seq, to, m.to_vec()));
        }
    }

    fn next_at(&self) -> Option<u64> {
        self.q.iter().map(|x| x.0).min()
    }

    fn pop_due(&mut self, now: u64) -> Option<(usize, Vec<u8>)> {
        let i = self
            .q
            .iter()
            .enumerate()
            .filter(|(_, x)| x.0 <= now)
            .min_by_key(|(_, x)| (x.0, x.1))
            .map(|(i, _)| i)?;
        let (_, _, to, m) = self.q.remove(i);
        Some((to, m))
    }
}

struct Outcome {
    /// Responses per request handle.
    answered: BTreeMap<RequestHandle, usize>,
    failed: usize,
    /// Deliveries to `serve`'s application per request payload.
    delivered: BTreeMap<Vec<u8>, usize>,
    /// Virtual time when the last request was resolved.
    end: u64,
}

/// `count` POSTs from one client through `serve`'s table; loss etc. in per mille.
fn run(seed: u64, count: usize, loss: u32, dup: u32, reorder: u32) -> Outcome {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let gw = Keypair::generate(&mut rng);
    let dev = Keypair::generate(&mut rng);
    let allowed = [dev.public()];
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
    let init = InitiatorConfig {
        pattern: LinkPattern::IK,
        version: VERSION,
        local: dev,
        remote: gw.public(),
        retransmit: LINK.retransmit(),
        transport: TransportConfig::default(),
    };
    let mut c: Box<TunnelLike> =
        Box::new(Client::new(init, LINK.coap(seed), ChaCha20Rng::seed_from_u64(seed + 1)).unwrap());
    let mut t = SessionTable::new(LINK.coap(seed + 2), 16);
    let from = SocketAddr::from(([127, 0, 0, 1], 4000));
    let mut pipe = Pipe {
        rng: ChaCha20Rng::seed_from_u64(seed + 3),
        loss,
        dup,
        reorder,
        busy: [0; 2],
        q: Vec::new(),
        seq: 0,
    };
    let mut out = Outcome {
        answered: BTreeMap::new(),
        failed: 0,
        delivered: BTreeMap::new(),
        end: 0,
    };
    let (mut buf, mut scratch) = (vec![0u8; PACKET], vec![0u8; PACKET]);
    let mut issued = 0;
    let mut now = 0u64;
    let mut spins = 0;
    while out.answered.len() + out.failed < count {
        assert!(now < 3_600_000, "stuck at {now} ms");
        while issued < count {
            let payload = format!("request {issued:04} of the busy client");
            match c.request(
                now,
                Request::con(Code::POST, Options::NONE, payload.as_bytes()),
            ) {
                Ok(_) => issued += 1,
                Err(_) => break,
            }
        }
        c.handle_timeout(now);
        t.handle_timeout(now);
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            pipe.send(now, 1, &buf[..n]);
        }
        while let Some((_, n)) = t.poll_transmit(now, &mut buf) {
            pipe.send(now, 0, &buf[..n]);
        }
        while let Some(e) = c.poll_event() {
            if let SessionEvent::Coap(Event::Failed { .. }) = e {
                out.failed += 1;
                out.end = now;
            }
        }
        while t.poll_event().is_some() {}
        let mut moved = false;
        while let Some((to, m)) = pipe.pop_due(now) {
            moved = true;
            if to == 1 {
                if let Some((i, Some(Received::Request(r)))) =
                    t.handle_packet(now, &cfg, &mut rng, from, &m, &mut scratch)
                {
                    let to = r.responder;
                    *out.delivered.entry(r.payload.to_vec()).or_default() += 1;
                    t.session(i)
                        .unwrap()
                        .coap()
                        .respond(now, &to, Code::CHANGED, Options::NONE, &[])
                        .unwrap();
                }
            } else if let Some(Received::Response(r)) = c.handle_packet(now, &m, &mut scratch) {
                *out.answered.entry(r.handle).or_default() += 1;
                out.end = now;
            }
        }
        if moved {
            continue;
        }
        let next = [c.poll_timeout(), t.poll_timeout(), pipe.next_at()]
            .into_iter()
            .flatten()
            .min()
            .expect("something is pending");
        if next <= now {
            spins += 1;
            assert!(spins < 10_000, "no progress at {now} ms");
        } else {
            spins = 0;
            now = next;
        }
    }
    out
}

#[test]
fn two_hundred_requests_in_minutes_through_serves_table() {
    let p = LINK.transmission();
    assert_eq!(DEDUP, 32);
    for seed in 1..=3 {
        let o = run(seed, 200, 100, 50, 50);
        std::println!(
            "seed {seed}: {} answered, {} failed, in {} s (EXCHANGE_LIFETIME {} s)",
            o.answered.len(),
            o.failed,
            o.end / 1000,
            p.exchange_lifetime() / 1000
        );
        assert_eq!(o.failed, 0, "seed {seed}");
        assert_eq!(o.answered.len(), 200, "seed {seed}");
        assert!(o.answered.values().all(|&n| n == 1), "one response each");
        assert_eq!(o.delivered.len(), 200, "seed {seed}");
        for (p, n) in &o.delivered {
            assert_eq!(*n, 1, "{} delivered {n} times", String::from_utf8_lossy(p));
        }
        // A few virtual minutes, far inside one lifetime: more than DEDUP requests of one
        // lifetime went through without waiting for old entries to age out.
        assert!(o.end < 5 * 60_000, "seed {seed}: {} ms", o.end);
        assert!(o.end < p.max_transmit_span() + p.max_latency);
    }
}
