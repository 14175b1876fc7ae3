//! session tests: building a client in place, and its in-place handshake restarts.

use core::mem::MaybeUninit;

use lowband_codec::coap::{self, Code, Options, Received, Request};
use lowband_codec::noise::link::{
    InitiatorConfig, InitiatorError, LinkPattern, LinkVersion, ResponderConfig, RetransmitConfig,
    TransportConfig,
};
use lowband_codec::noise::{Keypair, NoiseError, PublicKey};
use lowband_codec::session::{max_packet_len, Client, Server, SessionEvent};
use rand::rngs::StdRng;
use rand::SeedableRng;

type TestClient = Client<StdRng, 2, 4, 1, 64>;
type TestServer = Server<u8, 2, 2, 4, 1, 64>;

const V: LinkVersion = LinkVersion {
    protocol: 1,
    dict: 1,
};

struct Peers {
    gateway: Keypair,
    device: Keypair,
    allowed: [PublicKey; 1],
}

fn peers() -> Peers {
    let gateway = Keypair::from_secret([0x44; 32]);
    let device = Keypair::from_secret([0x55; 32]);
    let allowed = [device.public()];
    Peers {
        gateway,
        device,
        allowed,
    }
}

fn initiator_cfg(p: &Peers, remote: PublicKey, max_sends: u8) -> InitiatorConfig {
    InitiatorConfig {
        pattern: LinkPattern::IK,
        version: V,
        local: p.device.clone(),
        remote,
        retransmit: RetransmitConfig {
            initial_rto_ms: 1_000,
            max_rto_ms: 1_000,
            max_sends,
        },
        transport: TransportConfig::default(),
    }
}

fn responder_cfg(p: &Peers) -> ResponderConfig<'_> {
    ResponderConfig {
        local: &p.gateway,
        versions: &[V],
        known_versions: &[],
        allowed: &p.allowed,
        accept_ik: true,
        accept_kk: false,
        transport: TransportConfig::default(),
    }
}

/// Moves packets both ways at `now` until nothing moves; the server answers every request
/// with "ok". Returns how many requests the server saw.
fn pump(
    now: u64,
    srv: &mut TestServer,
    c: &mut TestClient,
    cfg: &ResponderConfig<'_>,
    rng: &mut StdRng,
) -> usize {
    let mut out = [0u8; max_packet_len(64)];
    let mut scratch = [0u8; max_packet_len(64)];
    let mut served = 0;
    for _ in 0..6 {
        while let Some(n) = c.poll_transmit(now, &mut out) {
            if let Some((i, Some(Received::Request(r)))) =
                srv.handle_packet(now, cfg, rng, 1, &out[..n], &mut scratch)
            {
                let who = r.responder;
                served += 1;
                srv.session(i)
                    .unwrap()
                    .coap()
                    .respond(now, &who, Code::CONTENT, Options::NONE, b"ok")
                    .unwrap();
            }
        }
        while let Some((_, n)) = srv.poll_transmit(now, &mut out) {
            let _ = c.handle_packet(now, &out[..n], &mut scratch);
        }
    }
    served
}

fn events(c: &mut TestClient) -> Vec<SessionEvent> {
    core::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn new_in_builds_the_client_new_builds() {
    let p = peers();
    let seed = 7;
    let mut by_value = TestClient::new(
        initiator_cfg(&p, p.gateway.public(), 4),
        coap::Config::default(),
        StdRng::seed_from_u64(seed),
    )
    .unwrap();
    let mut slot = Box::new(MaybeUninit::<TestClient>::uninit());
    let in_place = TestClient::new_in(
        &mut slot,
        initiator_cfg(&p, p.gateway.public(), 4),
        coap::Config::default(),
        StdRng::seed_from_u64(seed),
    )
    .unwrap();
    assert!(!in_place.is_established());
    assert_eq!(in_place.stats().handshakes, 1);
    // The same RNG gives the same msg1, byte for byte (IK, empty payload: 96 bytes).
    let (mut a, mut b) = ([0u8; 512], [0u8; 512]);
    let na = by_value.poll_transmit(0, &mut a).unwrap();
    let nb = in_place.poll_transmit(0, &mut b).unwrap();
    assert_eq!(na, 96);
    assert_eq!(a[..na], b[..nb]);
    assert_eq!(in_place.poll_transmit(0, &mut b), None, "not due again yet");

    // And the client built in place handshakes and carries requests.
    let cfg = responder_cfg(&p);
    let mut rng = StdRng::seed_from_u64(99);
    let mut srv = TestServer::new(coap::Config::default());
    let mut srv_rng = StdRng::seed_from_u64(98);
    let mut srv_scratch = [0u8; max_packet_len(64)];
    srv.handle_packet(0, &cfg, &mut srv_rng, 1, &b[..nb], &mut srv_scratch);
    let mut out = [0u8; max_packet_len(64)];
    let mut scratch = [0u8; max_packet_len(64)];
    let (_, n2) = srv.poll_transmit(0, &mut out).expect("msg2");
    assert!(in_place
        .handle_packet(0, &out[..n2], &mut scratch)
        .is_none());
    assert!(in_place.is_established());
    in_place
        .request(0, Request::con(Code::GET, Options::NONE, &[]))
        .unwrap();
    assert_eq!(pump(0, &mut srv, in_place, &cfg, &mut rng), 1);
    let got = events(in_place);
    assert!(
        matches!(got.first(), Some(SessionEvent::Established(_))),
        "{got:?}"
    );
    assert_eq!(in_place.stats().handshakes, 1);
    // SAFETY: new_in returned Ok: the slot is initialised (dropped with its keys zeroised).
    unsafe { slot.assume_init_drop() };
}

#[test]
fn new_in_refuses_a_low_order_gateway_key() {
    // An all-zero X25519 key makes DH non-contributory: msg1 cannot be built.
    let p = peers();
    let want = Err(InitiatorError::Noise(NoiseError::InvalidPublicKey));
    let mut slot = MaybeUninit::<TestClient>::uninit();
    let r = TestClient::new_in(
        &mut slot,
        initiator_cfg(&p, PublicKey([0; 32]), 4),
        coap::Config::default(),
        StdRng::seed_from_u64(1),
    );
    assert_eq!(r.map(|_| ()), want);
    let r = TestClient::new(
        initiator_cfg(&p, PublicKey([0; 32]), 4),
        coap::Config::default(),
        StdRng::seed_from_u64(1),
    );
    assert_eq!(r.map(|_| ()), want);
}

#[test]
fn a_timed_out_handshake_restarts_in_place_with_a_new_ephemeral_key() {
    let p = peers();
    let mut slot = Box::new(MaybeUninit::<TestClient>::uninit());
    let c = TestClient::new_in(
        &mut slot,
        initiator_cfg(&p, p.gateway.public(), 2),
        coap::Config::default(),
        StdRng::seed_from_u64(3),
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = c.poll_transmit(0, &mut first).unwrap();
    let mut again = [0u8; 512];
    assert_eq!(c.poll_transmit(999, &mut again), None);
    // The retransmission is verbatim.
    assert_eq!(c.poll_transmit(1_000, &mut again), Some(n));
    assert_eq!(first[..n], again[..n]);
    // Two sends without an answer: a new handshake, a new ephemeral key (the first 32 bytes
    // of msg1, rotated), its own timers from zero.
    let mut second = [0u8; 512];
    assert_eq!(c.poll_transmit(2_000, &mut second), Some(n));
    assert_ne!(first[..32], second[..32]);
    assert_eq!(c.stats().handshakes, 2);
    assert_eq!(c.poll_transmit(2_999, &mut again), None);
    assert_eq!(c.poll_transmit(3_000, &mut again), Some(n));
    assert_eq!(second[..n], again[..n]);
    let got = events(c);
    assert_eq!(got, [SessionEvent::HandshakeRetry]);

    // The answer to the first msg1 is now for a forgotten handshake: dropped. The second one
    // completes.
    let cfg = responder_cfg(&p);
    let mut srv_rng = StdRng::seed_from_u64(5);
    let mut scratch = [0u8; max_packet_len(64)];
    let mut out = [0u8; max_packet_len(64)];
    let mut old_srv = TestServer::new(coap::Config::default());
    old_srv.handle_packet(0, &cfg, &mut srv_rng, 1, &first[..n], &mut scratch);
    let (_, m) = old_srv
        .poll_transmit(0, &mut out)
        .expect("msg2 to the first msg1");
    assert!(c.handle_packet(3_000, &out[..m], &mut scratch).is_none());
    assert!(!c.is_established());
    let mut srv = TestServer::new(coap::Config::default());
    srv.handle_packet(0, &cfg, &mut srv_rng, 1, &second[..n], &mut scratch);
    let (_, m) = srv
        .poll_transmit(0, &mut out)
        .expect("msg2 to the second msg1");
    assert!(c.handle_packet(3_000, &out[..m], &mut scratch).is_none());
    assert!(c.is_established());
    c.request(3_000, Request::con(Code::GET, Options::NONE, &[]))
        .unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    assert_eq!(pump(3_000, &mut srv, c, &cfg, &mut rng), 1);
    // SAFETY: new_in returned Ok: the slot is initialised.
    unsafe { slot.assume_init_drop() };
}
