//! Arbitrary bytes into a link responder (msg1), an initiator (msg2/reject) and an established
//! transport session (open). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_codec::noise::link::{
    classify, msg1_ephemeral, Initiator, InitiatorConfig, LinkPattern, LinkVersion,
    ResponderConfig, RetransmitConfig, TransportConfig,
};
use lowband_codec::noise::{Keypair, PublicKey};

/// Deterministic splitmix64 stream; a CryptoRng only for fuzzing.
struct FuzzRng(u64);

impl rand_core::RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FuzzRng {}

const V: LinkVersion = LinkVersion { protocol: 1, dict: 1 };

fuzz_target!(|data: &[u8]| {
    let gateway = Keypair::from_secret([1; 32]);
    let device = Keypair::from_secret([2; 32]);
    let allowed: [PublicKey; 2] = [Keypair::from_secret([3; 32]).public(), device.public()];
    let cfg = ResponderConfig {
        local: &gateway,
        versions: &[V],
        known_versions: &[LinkVersion { protocol: 1, dict: 0 }],
        allowed: &allowed,
        accept_ik: true,
        accept_kk: true,
        transport: TransportConfig { rekey_interval: 8 },
    };
    let mut rng = FuzzRng(data.len() as u64);
    let _ = classify(data);
    let _ = msg1_ephemeral(data);

    // Arbitrary bytes as a msg1.
    let mut early = [0u8; 256];
    if let Ok(m1) = cfg.read_msg1(data, &mut early) {
        let n = m1.early_data_len();
        let _ = m1.accept(&mut rng, |_| true, &early[..n.min(16)]);
    }

    // A real handshake, then arbitrary bytes as msg2 and as transport packets.
    let Some((&mode, rest)) = data.split_first() else { return };
    let pattern = if mode & 1 == 0 { LinkPattern::IK } else { LinkPattern::KK };
    let icfg = InitiatorConfig {
        pattern,
        version: V,
        local: device.clone(),
        remote: gateway.public(),
        retransmit: RetransmitConfig { initial_rto_ms: 1000, max_rto_ms: 8000, max_sends: 3 },
        transport: TransportConfig { rekey_interval: 8 },
    };
    let Ok(init) = Initiator::new(icfg, None, &mut rng) else { return };
    let mut resp = [0u8; 256];
    let _ = init.handle_response(rest, &mut resp);
    let Ok(m1) = cfg.read_msg1(init.msg1(), &mut early) else { return };
    let Ok(mut gw) = m1.accept(&mut rng, |_| true, &[]) else { return };
    let _ = gw.is_retransmitted_msg1(rest);
    let Ok((mut dev, _)) = init.handle_response(gw.msg2(), &mut resp) else { return };
    // Interleave genuine packets (so epochs and the window move) with fuzzed ones.
    let mut out = [0u8; 512];
    let mut pkt = [0u8; 64];
    for (i, chunk) in rest.chunks(24).enumerate() {
        if mode & 2 != 0 && i % 3 == 0 {
            dev.rekey();
        }
        if let Ok(n) = dev.seal(&chunk[..chunk.len().min(8)], &mut pkt) {
            let _ = gw.session.open(&pkt[..n], &mut out);
        }
        let _ = gw.session.open(chunk, &mut out);
        let _ = dev.open(chunk, &mut out);
    }
    let _ = gw.session.open(rest, &mut out);
});
