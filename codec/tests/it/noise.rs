//! noise tests: cacophony vectors, interop with snow and Python noiseprotocol, and the link
//! handshake/transport under loss, reordering, replay and tampering.

use lowband_codec::noise::link::{
    self, classify, Idempotent, Initiator, InitiatorConfig, InitiatorError, LinkPattern,
    LinkVersion, PacketKind, RejectCode, ResponderConfig, ResponderError, ResponderSession,
    RetransmitConfig, Session, SessionId, TransportConfig, TransportError,
};
use lowband_codec::noise::{
    Blake2s, HandshakeConfig, HandshakeState, Keypair, NoiseError, NoiseHash, Pattern, PublicKey,
    Sha256,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// cacophony vectors

fn unhex(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn key32(v: &serde_json::Value) -> [u8; 32] {
    unhex(v).try_into().expect("32-byte key")
}

/// Runs one vector; `Ok(false)` if it uses something not implemented (skipped).
fn run_vector<H: NoiseHash>(v: &serde_json::Value, pattern_part: &str) -> Result<bool, String> {
    let (base, psk) = match pattern_part.find("psk") {
        Some(i) => {
            let pos: u8 = pattern_part[i + 3..].parse().map_err(|_| "psk pos")?;
            (&pattern_part[..i], Some(pos))
        }
        None => (pattern_part, None),
    };
    let Some(pattern) = Pattern::from_name(base) else {
        return Ok(false);
    };
    let psk = match (psk, v.get("init_psks")) {
        (None, _) => None,
        (Some(pos), Some(list)) if list.as_array().map(Vec::len) == Some(1) => {
            Some((pos, key32(&list[0])))
        }
        _ => return Ok(false),
    };
    let iprol = unhex(&v["init_prologue"]);
    let rprol = unhex(&v["resp_prologue"]);
    let mut ic = HandshakeConfig::new(pattern, true);
    ic.prologue = &iprol;
    ic.s = v.get("init_static").map(|k| Keypair::from_secret(key32(k)));
    ic.e = Some(Keypair::from_secret(key32(&v["init_ephemeral"])));
    ic.rs = v.get("init_remote_static").map(|k| PublicKey(key32(k)));
    ic.psk = psk;
    let mut rc = HandshakeConfig::new(pattern, false);
    rc.prologue = &rprol;
    rc.s = v.get("resp_static").map(|k| Keypair::from_secret(key32(k)));
    rc.e = v
        .get("resp_ephemeral")
        .map(|k| Keypair::from_secret(key32(k)));
    rc.rs = v.get("resp_remote_static").map(|k| PublicKey(key32(k)));
    rc.psk = psk;
    let mut init = HandshakeState::<H>::new(ic).map_err(|e| format!("init {e:?}"))?;
    let mut resp = HandshakeState::<H>::new(rc).map_err(|e| format!("resp {e:?}"))?;
    let msgs = v["messages"].as_array().ok_or("messages")?;
    let n_hs = pattern.messages().len();
    let mut buf = [0u8; 1024];
    let mut pbuf = [0u8; 1024];
    let mut i = 0;
    while i < n_hs {
        let payload = unhex(&msgs[i]["payload"]);
        let ct = unhex(&msgs[i]["ciphertext"]);
        let (w, r) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let n = w
            .write_message(&payload, &mut buf)
            .map_err(|e| format!("write {i}: {e:?}"))?;
        if buf[..n] != ct[..] {
            return Err(format!("handshake message {i} differs"));
        }
        let p = r
            .read_message(&ct, &mut pbuf)
            .map_err(|e| format!("read {i}: {e:?}"))?;
        if pbuf[..p] != payload[..] {
            return Err(format!("handshake payload {i} differs"));
        }
        i += 1;
    }
    let hh = unhex(&v["handshake_hash"]);
    if init.handshake_hash()[..] != hh[..] || resp.handshake_hash()[..] != hh[..] {
        return Err("handshake hash differs".into());
    }
    let mut ik = init.into_transport().map_err(|e| format!("{e:?}"))?;
    let mut rk = resp.into_transport().map_err(|e| format!("{e:?}"))?;
    for (j, m) in msgs.iter().enumerate().skip(n_hs) {
        let payload = unhex(&m["payload"]);
        let ct = unhex(&m["ciphertext"]);
        let from_init = pattern.is_one_way() || j % 2 == 0;
        let (tx, rx) = if from_init {
            (&mut ik.tx, &mut rk.rx)
        } else {
            (&mut rk.tx, &mut ik.rx)
        };
        let n = tx
            .encrypt_with_ad(&[], &payload, &mut buf)
            .map_err(|e| format!("{e:?}"))?;
        if buf[..n] != ct[..] {
            return Err(format!("transport message {j} differs"));
        }
        let p = rx
            .decrypt_with_ad(&[], &ct, &mut pbuf)
            .map_err(|e| format!("{e:?}"))?;
        if pbuf[..p] != payload[..] {
            return Err(format!("transport payload {j} differs"));
        }
    }
    Ok(true)
}

#[test]
fn cacophony_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/noise/cacophony-25519-ChaChaPoly.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
    let mut passed = Vec::new();
    let mut skipped = 0;
    for v in doc["vectors"].as_array().expect("vectors array") {
        let name = v["protocol_name"].as_str().expect("name");
        let parts: Vec<&str> = name.split('_').collect();
        assert_eq!(parts[0], "Noise");
        assert_eq!(&parts[2..4], ["25519", "ChaChaPoly"]);
        let ran = match parts[4] {
            "BLAKE2s" => run_vector::<Blake2s>(v, parts[1]),
            "SHA256" => run_vector::<Sha256>(v, parts[1]),
            _ => Ok(false),
        };
        match ran {
            Ok(true) => passed.push(name.to_owned()),
            Ok(false) => skipped += 1,
            Err(e) => panic!("{name}: {e}"),
        }
    }
    let blake = passed.iter().filter(|n| n.ends_with("BLAKE2s")).count();
    let sha = passed.iter().filter(|n| n.ends_with("SHA256")).count();
    println!(
        "cacophony: {} passed ({blake} BLAKE2s, {sha} SHA256), {skipped} skipped",
        passed.len()
    );
    for must in [
        "Noise_IK_25519_ChaChaPoly_BLAKE2s",
        "Noise_KK_25519_ChaChaPoly_BLAKE2s",
        "Noise_IK_25519_ChaChaPoly_SHA256",
        "Noise_KK_25519_ChaChaPoly_SHA256",
        "Noise_NN_25519_ChaChaPoly_BLAKE2s",
        "Noise_NK_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
        "Noise_KKpsk0_25519_ChaChaPoly_SHA256",
    ] {
        assert!(passed.iter().any(|n| n == must), "{must} not run");
    }
    // 15 fundamental patterns + 21 psk variants per hash in the file.
    assert_eq!((blake, sha), (36, 36));
}

// ---------------------------------------------------------------------------------------------
// snow interop (raw Noise, both roles, both patterns)

fn snow_builder<'a>(name: &str, prologue: &'a [u8]) -> snow::Builder<'a> {
    snow::Builder::new(name.parse().expect("snow params")).prologue(prologue)
}

/// Handshake (with payloads) and transport in both directions between us and snow.
fn snow_interop(pattern: Pattern, we_initiate: bool) {
    let name = format!("Noise_{}_25519_ChaChaPoly_BLAKE2s", pattern.name());
    let prologue = b"lowband-interop";
    let mut rng = StdRng::seed_from_u64(7);
    let ours = Keypair::generate(&mut rng);
    let theirs_sk: [u8; 32] = rng.gen();
    let theirs_pk = lowband_codec::noise::public_key(&theirs_sk);
    let kk = pattern == Pattern::KK;

    let mut cfg = HandshakeConfig::new(pattern, we_initiate);
    cfg.prologue = prologue;
    cfg.s = Some(ours.clone());
    cfg.e = Some(Keypair::generate(&mut rng));
    if we_initiate || kk {
        cfg.rs = Some(theirs_pk);
    }
    let mut us = HandshakeState::<Blake2s>::new(cfg).unwrap();
    let ours_pk = ours.public().0;
    let b = snow_builder(&name, prologue).local_private_key(&theirs_sk);
    let b = if !we_initiate || kk {
        b.remote_public_key(&ours_pk)
    } else {
        b
    };
    let mut them = if we_initiate {
        b.build_responder()
    } else {
        b.build_initiator()
    }
    .unwrap();

    let mut buf = [0u8; 512];
    let mut pbuf = [0u8; 512];
    let mut sbuf = vec![0u8; 512];
    for i in 0..pattern.messages().len() {
        let payload = format!("handshake message {i}");
        if us.is_my_turn() {
            let n = us.write_message(payload.as_bytes(), &mut buf).unwrap();
            let p = them.read_message(&buf[..n], &mut sbuf).unwrap();
            assert_eq!(&sbuf[..p], payload.as_bytes());
        } else {
            let n = them.write_message(payload.as_bytes(), &mut sbuf).unwrap();
            let p = us.read_message(&sbuf[..n], &mut pbuf).unwrap();
            assert_eq!(&pbuf[..p], payload.as_bytes());
        }
    }
    assert!(them.is_handshake_finished());
    assert_eq!(&us.handshake_hash()[..], them.get_handshake_hash());
    assert_eq!(them.get_remote_static(), Some(&ours_pk[..]));
    assert_eq!(us.remote_static(), Some(theirs_pk));
    let mut keys = us.into_transport().unwrap();
    let mut them = them.into_transport_mode().unwrap();
    for round in 0..5 {
        let msg = format!("ours {round}");
        let n = keys
            .tx
            .encrypt_with_ad(&[], msg.as_bytes(), &mut buf)
            .unwrap();
        let p = them.read_message(&buf[..n], &mut sbuf).unwrap();
        assert_eq!(&sbuf[..p], msg.as_bytes());
        let msg = format!("snow {round}");
        let n = them.write_message(msg.as_bytes(), &mut sbuf).unwrap();
        let p = keys.rx.decrypt_with_ad(&[], &sbuf[..n], &mut pbuf).unwrap();
        assert_eq!(&pbuf[..p], msg.as_bytes());
    }
    // Rekey agrees with snow's (Noise §11.3 REKEY).
    keys.tx.rekey();
    them.rekey_incoming();
    let n = keys
        .tx
        .encrypt_with_ad(&[], b"after rekey", &mut buf)
        .unwrap();
    let p = them.read_message(&buf[..n], &mut sbuf).unwrap();
    assert_eq!(&sbuf[..p], b"after rekey");
}

#[test]
fn snow_interop_ik_we_initiate() {
    snow_interop(Pattern::IK, true);
}

#[test]
fn snow_interop_ik_we_respond() {
    snow_interop(Pattern::IK, false);
}

#[test]
fn snow_interop_kk_we_initiate() {
    snow_interop(Pattern::KK, true);
}

#[test]
fn snow_interop_kk_we_respond() {
    snow_interop(Pattern::KK, false);
}

#[test]
fn snow_interop_xx_both_roles() {
    snow_interop(Pattern::XX, true);
    snow_interop(Pattern::XX, false);
}

// ---------------------------------------------------------------------------------------------
// Python noiseprotocol interop

fn python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("LOWBAND_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let py = venv.join("bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import noise.connection"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else {
        println!(
            "SKIP: no noiseprotocol in {} (run scripts/setup.sh or set LOWBAND_VENV)",
            venv.display()
        );
        None
    }
}

fn python_interop(py: &std::path::Path, pattern: Pattern, we_initiate: bool) {
    use std::io::{BufRead, BufReader, Write};
    let name = format!("Noise_{}_25519_ChaChaPoly_BLAKE2s", pattern.name());
    let prologue = b"lowband-py";
    let mut rng = StdRng::seed_from_u64(11);
    let ours = Keypair::generate(&mut rng);
    let theirs = Keypair::generate(&mut rng);
    let kk = pattern == Pattern::KK;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/noise_peer.py");
    let remote_arg = if !we_initiate || kk {
        hex::encode(ours.public().0)
    } else {
        "-".into()
    };
    let mut child = std::process::Command::new(py)
        .args([
            script,
            if we_initiate {
                "responder"
            } else {
                "initiator"
            },
            &name,
            &hex::encode(theirs.secret_bytes()),
            &remote_arg,
            &hex::encode(prologue),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = || {
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        l.split_whitespace()
            .map(|h| hex::decode(h).unwrap())
            .collect::<Vec<_>>()
    };

    let mut cfg = HandshakeConfig::new(pattern, we_initiate);
    cfg.prologue = prologue;
    cfg.s = Some(ours);
    cfg.e = Some(Keypair::generate(&mut rng));
    if we_initiate || kk {
        cfg.rs = Some(theirs.public());
    }
    let mut us = HandshakeState::<Blake2s>::new(cfg).unwrap();
    let mut buf = [0u8; 512];
    let mut pbuf = [0u8; 512];
    if we_initiate {
        let n = us.write_message(b"rs-init", &mut buf).unwrap();
        writeln!(stdin, "{}", hex::encode(&buf[..n])).unwrap();
        assert_eq!(line(), vec![b"rs-init".to_vec()]);
        let msg2 = line().remove(0);
        let p = us.read_message(&msg2, &mut pbuf).unwrap();
        assert_eq!(&pbuf[..p], b"py-resp");
    } else {
        let msg1 = line().remove(0);
        let p = us.read_message(&msg1, &mut pbuf).unwrap();
        assert_eq!(&pbuf[..p], b"py-init");
        let n = us.write_message(b"rs-resp", &mut buf).unwrap();
        writeln!(stdin, "{}", hex::encode(&buf[..n])).unwrap();
        assert_eq!(line(), vec![b"rs-resp".to_vec()]);
    }
    assert_eq!(us.remote_static(), Some(theirs.public()));
    let mut keys = us.into_transport().unwrap();
    for round in 0..3 {
        let msg = format!("round {round}");
        let n = keys
            .tx
            .encrypt_with_ad(&[], msg.as_bytes(), &mut buf)
            .unwrap();
        writeln!(stdin, "{}", hex::encode(&buf[..n])).unwrap();
        let got = line();
        assert_eq!(got[0], msg.as_bytes());
        let p = keys.rx.decrypt_with_ad(&[], &got[1], &mut pbuf).unwrap();
        assert_eq!(&pbuf[..p], format!("py:{msg}").as_bytes());
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn python_noiseprotocol_interop() {
    let Some(py) = python() else { return };
    for pattern in [Pattern::IK, Pattern::KK] {
        python_interop(&py, pattern, true);
        python_interop(&py, pattern, false);
    }
}

// ---------------------------------------------------------------------------------------------
// link handshake

const V: LinkVersion = LinkVersion {
    protocol: 1,
    dict: 7,
};

struct Keys {
    gateway: Keypair,
    device: Keypair,
    allowed: Vec<PublicKey>,
}

fn keys() -> Keys {
    let gateway = Keypair::from_secret([0x11; 32]);
    let device = Keypair::from_secret([0x22; 32]);
    let other = Keypair::from_secret([0x33; 32]);
    Keys {
        allowed: vec![other.public(), device.public()],
        gateway,
        device,
    }
}

fn retransmit() -> RetransmitConfig {
    RetransmitConfig {
        initial_rto_ms: 1000,
        max_rto_ms: 4000,
        max_sends: 4,
    }
}

fn initiator_cfg(k: &Keys, pattern: LinkPattern, version: LinkVersion) -> InitiatorConfig {
    InitiatorConfig {
        pattern,
        version,
        local: k.device.clone(),
        remote: k.gateway.public(),
        retransmit: retransmit(),
        transport: TransportConfig { rekey_interval: 50 },
    }
}

fn responder_cfg(k: &Keys) -> ResponderConfig<'_> {
    ResponderConfig {
        local: &k.gateway,
        versions: &[V],
        known_versions: &[LinkVersion {
            protocol: 1,
            dict: 6,
        }],
        allowed: &k.allowed,
        accept_ik: true,
        accept_kk: true,
        transport: TransportConfig { rekey_interval: 50 },
    }
}

/// Full link handshake; returns (device session, gateway session, msg1 len, msg2 len).
fn link_handshake(pattern: LinkPattern, seed: u64) -> (Session, ResponderSession, usize, usize) {
    link_handshake_with(pattern, seed, 50)
}

fn link_handshake_with(
    pattern: LinkPattern,
    seed: u64,
    rekey_interval: u64,
) -> (Session, ResponderSession, usize, usize) {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(seed);
    let transport = TransportConfig { rekey_interval };
    let mut icfg = initiator_cfg(&k, pattern, V);
    icfg.transport = transport;
    let mut init = Initiator::new(icfg, None, &mut rng).unwrap();
    let mut wire = [0u8; 512];
    let n1 = init.poll_transmit(0, &mut wire).unwrap().unwrap();
    assert_eq!(classify(&wire[..n1]), Some(PacketKind::Handshake));
    let mut rcfg = responder_cfg(&k);
    rcfg.transport = transport;
    let mut early = [0u8; 256];
    let m1 = rcfg.read_msg1(&wire[..n1], &mut early).unwrap();
    assert_eq!(m1.peer(), k.device.public());
    assert_eq!(m1.pattern(), pattern);
    assert_eq!(m1.early_data_len(), 0);
    let rs = m1.accept(&mut rng, |_| true, &[]).unwrap();
    let msg2 = rs.msg2().to_vec();
    let mut resp = [0u8; 64];
    let (ds, rlen) = init.handle_response(&msg2, &mut resp).unwrap();
    assert_eq!(rlen, 0);
    assert_eq!(ds.id(), rs.session.id());
    assert_eq!(ds.handshake_hash(), rs.session.handshake_hash());
    (ds, rs, n1, msg2.len())
}

#[test]
fn ik_link_handshake_is_144_bytes() {
    let (mut d, mut g, n1, n2) = link_handshake(LinkPattern::IK, 1);
    assert_eq!((n1, n2, n1 + n2), (96, 48, 144));
    let mut pkt = [0u8; 64];
    let mut out = [0u8; 64];
    let n = d.seal(b"hello", &mut pkt).unwrap();
    assert_eq!(n, 5 + link::TRANSPORT_OVERHEAD);
    assert_eq!(link::TRANSPORT_OVERHEAD, 18);
    assert_eq!(classify(&pkt[..n]), Some(PacketKind::Transport(d.id())));
    assert_eq!(g.session.open(&pkt[..n], &mut out), Ok(5));
    assert_eq!(&out[..5], b"hello");
    let n = g.session.seal(b"", &mut pkt).unwrap();
    assert_eq!(n, 18);
    assert_eq!(d.open(&pkt[..n], &mut out), Ok(0));
}

#[test]
fn kk_link_handshake_is_96_bytes() {
    let (mut d, mut g, n1, n2) = link_handshake(LinkPattern::KK, 2);
    assert_eq!((n1, n2, n1 + n2), (48, 48, 96));
    let mut pkt = [0u8; 64];
    let mut out = [0u8; 64];
    let n = g.session.seal(b"kk", &mut pkt).unwrap();
    assert_eq!(d.open(&pkt[..n], &mut out), Ok(2));
}

#[test]
fn zero_rtt_early_data_and_response() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(3);
    let req = b"GET /sync idempotent";
    let init = Initiator::new(
        initiator_cfg(&k, LinkPattern::IK, V),
        Some(Idempotent::new(req)),
        &mut rng,
    )
    .unwrap();
    assert_eq!(init.msg1().len(), 96 + req.len());
    let rcfg = responder_cfg(&k);
    let mut early = [0u8; 256];
    let m1 = rcfg.read_msg1(init.msg1(), &mut early).unwrap();
    assert_eq!(&early[..m1.early_data_len()], req);
    let rs = m1.accept(&mut rng, |_| true, b"2.05 body").unwrap();
    assert_eq!(rs.msg2().len(), 48 + 1 + 9);
    let mut resp = [0u8; 64];
    let (_, n) = init.handle_response(rs.msg2(), &mut resp).unwrap();
    assert_eq!(&resp[..n], b"2.05 body");
    // Too much early data is refused up front.
    let big = [0u8; link::MAX_EARLY_DATA + 1];
    assert_eq!(
        Initiator::new(
            initiator_cfg(&k, LinkPattern::IK, V),
            Some(Idempotent::new(&big)),
            &mut rng
        )
        .err(),
        Some(InitiatorError::EarlyDataTooLong)
    );
}

#[test]
fn responder_assigns_requested_session_id() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(4);
    let init = Initiator::new(initiator_cfg(&k, LinkPattern::KK, V), None, &mut rng).unwrap();
    let rcfg = responder_cfg(&k);
    let m1 = rcfg.read_msg1(init.msg1(), &mut []).unwrap();
    let want = SessionId::new(42).unwrap();
    let rs = m1.accept(&mut rng, |id| id == want, &[]).unwrap();
    assert_eq!(rs.session.id(), want);
    assert_eq!(rs.msg2()[0] & 0x3f, 42);
    let (ds, _) = init.handle_response(rs.msg2(), &mut []).unwrap();
    assert_eq!(ds.id(), want);
    // No free id at all: refused as busy.
    let m1 = rcfg.read_msg1(init.msg1(), &mut []).unwrap();
    assert_eq!(
        m1.accept(&mut rng, |_| false, &[]).err(),
        Some(ResponderError::NoSessionId)
    );
    assert_eq!(SessionId::new(64), None);
}

#[test]
fn unknown_initiator_key_is_refused() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(5);
    let mut cfg = initiator_cfg(&k, LinkPattern::IK, V);
    cfg.local = Keypair::from_secret([0x44; 32]);
    let init = Initiator::new(cfg.clone(), Some(Idempotent::new(b"secret-ish")), &mut rng).unwrap();
    let rcfg = responder_cfg(&k);
    let mut early = [0u8; 64];
    let err = rcfg.read_msg1(init.msg1(), &mut early).unwrap_err();
    assert_eq!(err, ResponderError::UnknownKey);
    assert_eq!(
        early, [0u8; 64],
        "early data of a refused initiator is wiped"
    );
    let mut rej = [0u8; 8];
    let n = rcfg.write_reject(err.reject_code(), &mut rej).unwrap();
    assert_eq!(&rej[..n], &[2, 1, 0, 7]);
    assert_eq!(
        init.handle_response(&rej[..n], &mut []).err(),
        Some(InitiatorError::Refused {
            code: RejectCode::UnknownKey,
            authenticated: false
        })
    );
    // KK with an unknown key cannot even be decrypted.
    cfg.pattern = LinkPattern::KK;
    let init = Initiator::new(cfg, None, &mut rng).unwrap();
    assert_eq!(
        rcfg.read_msg1(init.msg1(), &mut early).err(),
        Some(ResponderError::Undecryptable)
    );
}

#[test]
fn wrong_pinned_gateway_key_is_undecryptable() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(6);
    let mut cfg = initiator_cfg(&k, LinkPattern::IK, V);
    cfg.remote = Keypair::from_secret([0x55; 32]).public();
    let init = Initiator::new(cfg, None, &mut rng).unwrap();
    assert_eq!(
        responder_cfg(&k).read_msg1(init.msg1(), &mut []).err(),
        Some(ResponderError::Undecryptable)
    );
}

#[test]
fn version_and_dictionary_mismatch() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(7);
    let rcfg = responder_cfg(&k);
    let mut rej = [0u8; 8];
    // A dictionary version the gateway knows but no longer accepts: precise on both sides.
    let old = LinkVersion {
        protocol: 1,
        dict: 6,
    };
    for pattern in [LinkPattern::IK, LinkPattern::KK] {
        let init = Initiator::new(initiator_cfg(&k, pattern, old), None, &mut rng).unwrap();
        let err = rcfg.read_msg1(init.msg1(), &mut []).unwrap_err();
        assert_eq!(err, ResponderError::VersionMismatch { theirs: old });
        let n = rcfg.write_reject(err.reject_code(), &mut rej).unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            init.handle_response(&rej[..n], &mut []).err(),
            Some(InitiatorError::VersionMismatch {
                ours: old,
                theirs: V
            })
        );
    }
    // A version the gateway has never heard of: undecryptable there, mismatch at the device.
    let future = LinkVersion {
        protocol: 2,
        dict: 7,
    };
    let init = Initiator::new(initiator_cfg(&k, LinkPattern::IK, future), None, &mut rng).unwrap();
    let err = rcfg.read_msg1(init.msg1(), &mut []).unwrap_err();
    assert_eq!(err, ResponderError::Undecryptable);
    let n = rcfg.write_reject(err.reject_code(), &mut rej).unwrap();
    assert_eq!(
        init.handle_response(&rej[..n], &mut []).err(),
        Some(InitiatorError::VersionMismatch {
            ours: future,
            theirs: V
        })
    );
}

#[test]
fn authenticated_refusal_in_msg2() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(8);
    let init = Initiator::new(initiator_cfg(&k, LinkPattern::IK, V), None, &mut rng).unwrap();
    let m1 = responder_cfg(&k).read_msg1(init.msg1(), &mut []).unwrap();
    let mut out = [0u8; 64];
    let n = m1.refuse(&mut rng, RejectCode::Busy, &mut out).unwrap();
    assert_eq!(n, 49);
    assert_eq!(
        init.handle_response(&out[..n], &mut []).err(),
        Some(InitiatorError::Refused {
            code: RejectCode::Busy,
            authenticated: true
        })
    );
}

#[test]
fn handshake_retransmitted_verbatim() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(9);
    let mut init = Initiator::new(initiator_cfg(&k, LinkPattern::IK, V), None, &mut rng).unwrap();
    let mut a = [0u8; 128];
    let mut b = [0u8; 128];
    let n = init.poll_transmit(0, &mut a).unwrap().unwrap();
    assert_eq!(init.poll_timeout(), Some(1000));
    assert_eq!(init.poll_transmit(999, &mut b).unwrap(), None);
    assert_eq!(init.poll_transmit(1000, &mut b).unwrap(), Some(n));
    assert_eq!(a[..n], b[..n], "msg1 retransmitted verbatim");
    assert_eq!(init.poll_timeout(), Some(3000), "backoff doubles");
    assert_eq!(init.poll_transmit(3000, &mut b).unwrap(), Some(n));
    assert_eq!(init.poll_timeout(), Some(7000), "capped at max_rto");
    // Responder: msg1 arrives twice; the second time it answers with the cached msg2.
    let rcfg = responder_cfg(&k);
    let rs = rcfg
        .read_msg1(&a[..n], &mut [])
        .unwrap()
        .accept(&mut rng, |_| true, &[])
        .unwrap();
    assert!(rs.is_retransmitted_msg1(&b[..n]));
    let other = Initiator::new(initiator_cfg(&k, LinkPattern::IK, V), None, &mut rng).unwrap();
    assert!(!rs.is_retransmitted_msg1(other.msg1()));
    let cached = rs.msg2().to_vec();
    assert_eq!(rs.msg2(), &cached[..]);
    // The first msg2 was lost; the cached copy completes the handshake.
    assert!(init.handle_response(&cached, &mut []).is_ok());
    // Giving up after max_sends.
    assert_eq!(init.poll_transmit(7000, &mut b).unwrap(), Some(n));
    assert_eq!(
        init.poll_transmit(11000, &mut b).err(),
        Some(InitiatorError::TimedOut)
    );
    assert_eq!(init.sends(), 4);
}

#[test]
fn forged_msg2_does_not_break_initiator() {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(10);
    let init = Initiator::new(initiator_cfg(&k, LinkPattern::IK, V), None, &mut rng).unwrap();
    let rs = responder_cfg(&k)
        .read_msg1(init.msg1(), &mut [])
        .unwrap()
        .accept(&mut rng, |_| true, &[])
        .unwrap();
    let mut forged = rs.msg2().to_vec();
    for i in [0, 1, 31, 32, 47] {
        forged[i] ^= 0x01;
        let e = init.handle_response(&forged, &mut []).err();
        assert!(
            matches!(e, Some(InitiatorError::Noise(_))),
            "byte {i}: {e:?}"
        );
        forged[i] ^= 0x01;
    }
    let junk = [0x42u8; 60];
    assert!(init.handle_response(&junk, &mut []).is_err());
    assert_eq!(
        init.handle_response(&[0x80; 60], &mut []).err(),
        Some(InitiatorError::NotHandshake)
    );
    assert!(init.handle_response(rs.msg2(), &mut []).is_ok());
}

// ---------------------------------------------------------------------------------------------
// transport

#[test]
fn tampered_packet_fails_without_advancing_state() {
    let (mut d, mut g, _, _) = link_handshake(LinkPattern::IK, 12);
    let mut pkt = [0u8; 64];
    let mut out = [0u8; 64];
    let n = d.seal(b"tamper me", &mut pkt).unwrap();
    for i in 0..n {
        for bit in 0..8 {
            let mut t = pkt;
            t[i] ^= 1 << bit;
            let e = g.session.open(&t[..n], &mut out);
            assert!(e.is_err(), "byte {i} bit {bit} accepted");
        }
    }
    assert_eq!(
        g.session.open(&pkt[..n], &mut out),
        Ok(9),
        "genuine packet still opens"
    );
    assert_eq!(
        g.session.open(&pkt[..n], &mut out),
        Err(TransportError::Replay)
    );
}

/// Deterministic lossy, reordering, duplicating channel from device to gateway with a rekey
/// every 50 packets, on-demand rekeys and a 300-packet outage; every packet that gets through
/// opens exactly once.
#[test]
fn lossy_reordering_link_with_rekeys() {
    let (mut d, mut g, _, _) = link_handshake(LinkPattern::KK, 13);
    let mut rng = StdRng::seed_from_u64(99);
    let mut in_flight: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut delivered = vec![false; 3000];
    let mut out = [0u8; 64];
    let mut replays = 0;
    for i in 0u32..3000 {
        if i % 500 == 0 {
            d.rekey(); // on demand, besides every 5 packets
        }
        let mut pkt = [0u8; 64];
        let n = d.seal(&i.to_be_bytes(), &mut pkt).unwrap();
        // A long outage (300 packets lost in a row) in the middle.
        let lost = (1200..1500).contains(&i) || rng.gen_bool(0.3);
        if !lost {
            in_flight.push((i, pkt[..n].to_vec()));
            if rng.gen_bool(0.1) {
                in_flight.push((i, pkt[..n].to_vec())); // duplicate
            }
        }
        // Deliver a random in-flight packet now and then: reordering within a few packets.
        while in_flight.len() > 3 || (!in_flight.is_empty() && rng.gen_bool(0.5)) {
            let (id, p) = in_flight.remove(rng.gen_range(0..in_flight.len()));
            match g.session.open(&p, &mut out) {
                Ok(4) => {
                    assert_eq!(out[..4], id.to_be_bytes());
                    assert!(!delivered[id as usize], "{id} delivered twice");
                    delivered[id as usize] = true;
                }
                Err(TransportError::Replay) => {
                    replays += 1;
                    assert!(
                        delivered[id as usize],
                        "{id} refused as a replay but never delivered"
                    );
                }
                other => panic!("packet {id}: {other:?}"),
            }
        }
    }
    let count = delivered.iter().filter(|d| **d).count();
    assert!(count > 1700, "delivered {count}");
    assert!(replays > 100);
    // Still in sync in both directions.
    let mut pkt = [0u8; 64];
    let n = d.seal(b"end", &mut pkt).unwrap();
    assert_eq!(g.session.open(&pkt[..n], &mut out), Ok(3));
    let n = g.session.seal(b"back", &mut pkt).unwrap();
    assert_eq!(d.open(&pkt[..n], &mut out), Ok(4));
}

#[test]
fn rekey_epochs_across_loss_and_reordering() {
    let (mut d, mut g, _, _) = link_handshake_with(LinkPattern::IK, 15, 4);
    let mut pkts = Vec::new();
    for i in 0u8..12 {
        if i == 6 {
            d.rekey(); // nonce 6 -> 8: epoch 2 starts early
        }
        let mut p = [0u8; 32];
        let n = d.seal(&[i], &mut p).unwrap();
        pkts.push(p[..n].to_vec());
    }
    assert_eq!(d.next_nonce(), 14);
    // Epoch bits: nonces 0..3 epoch 0, 4,5 epoch 1, 8..11 epoch 2, 12,13 epoch 3.
    let bits: Vec<u8> = pkts.iter().map(|p| p[0] >> 6 & 1).collect();
    assert_eq!(bits, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]);
    let mut out = [0u8; 8];
    let mut open = |i: usize| g.session.open(&pkts[i], &mut out).map(|_| out[0]);
    assert_eq!(open(4), Ok(4), "next epoch, first packets lost");
    assert_eq!(open(1), Ok(1), "late packet of the previous epoch");
    assert_eq!(
        open(9),
        Ok(9),
        "epoch 2 after an on-demand rekey skipped nonces"
    );
    assert_eq!(open(5), Ok(5), "previous epoch still open");
    assert_eq!(
        open(2),
        Err(TransportError::TooOld),
        "two epochs back: key erased"
    );
    assert_eq!(open(11), Ok(11), "epoch 3");
    assert_eq!(open(11), Err(TransportError::Replay));
}

#[test]
fn wrong_session_and_malformed() {
    let (mut d, mut g, _, _) = link_handshake(LinkPattern::IK, 14);
    let mut pkt = [0u8; 64];
    let mut out = [0u8; 64];
    let n = d.seal(b"x", &mut pkt).unwrap();
    let mut other = pkt;
    other[0] ^= 0x01;
    assert_eq!(
        g.session.open(&other[..n], &mut out),
        Err(TransportError::WrongSession)
    );
    assert_eq!(
        g.session.open(&pkt[..17], &mut out),
        Err(TransportError::Malformed)
    );
    assert_eq!(
        g.session.open(&pkt[..n], &mut [0u8; 0]),
        Err(TransportError::BufferTooSmall)
    );
    assert_eq!(
        d.seal(b"xyz", &mut [0u8; 20]),
        Err(TransportError::BufferTooSmall)
    );
    assert_eq!(g.session.open(&pkt[..n], &mut out), Ok(1));
}

#[test]
fn session_state_is_small() {
    let s = core::mem::size_of::<Session>();
    println!(
        "size_of Session = {s}, ResponderSession = {}, Initiator = {}",
        core::mem::size_of::<ResponderSession>(),
        core::mem::size_of::<Initiator>()
    );
    assert!(s <= 256);
    assert!(core::mem::size_of::<Initiator>() < 1024);
    let _ = NoiseError::Decrypt;
}

// ---------------------------------------------------------------------------------------------
// Python reimplementation of the link layer (noiseprotocol underneath)

struct PyPeer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PyPeer {
    fn spawn(py: &std::path::Path, args: &[String]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/noise_peer.py");
        let mut child = std::process::Command::new(py)
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        PyPeer {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        writeln!(self.stdin, "{}", hex::encode(bytes)).unwrap();
    }

    fn recv(&mut self) -> Vec<Vec<u8>> {
        use std::io::BufRead;
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "python peer exited");
        l.split_whitespace()
            .map(|h| hex::decode(h).unwrap())
            .collect()
    }

    fn finish(mut self) {
        drop(self.stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

/// Sends 12 transport packets (with an on-demand rekey) through the Python peer and checks its
/// authenticated replies.
fn link_transport_with_python(peer: &mut PyPeer, s: &mut Session) {
    let mut pkt = [0u8; 128];
    let mut out = [0u8; 128];
    for i in 0..12 {
        if i == 7 {
            s.rekey();
        }
        let msg = format!("link {i}");
        let n = s.seal(msg.as_bytes(), &mut pkt).unwrap();
        peer.send(&pkt[..n]);
        let got = peer.recv();
        assert_eq!(got[0], msg.as_bytes());
        assert_eq!(got[1].len(), 3 + msg.len() + link::TRANSPORT_OVERHEAD);
        let m = s.open(&got[1], &mut out).unwrap();
        assert_eq!(&out[..m], format!("py:{msg}").as_bytes());
    }
}

#[test]
fn python_link_peer_as_gateway() {
    let Some(py) = python() else { return };
    let k = keys();
    for pattern in [LinkPattern::IK, LinkPattern::KK] {
        let mut rng = StdRng::seed_from_u64(21);
        let mut cfg = initiator_cfg(&k, pattern, V);
        cfg.transport = TransportConfig { rekey_interval: 4 };
        let mut peer = PyPeer::spawn(
            &py,
            &[
                "link-responder".into(),
                format!("{pattern:?}"),
                hex::encode(k.gateway.secret_bytes()),
                if pattern == LinkPattern::KK {
                    hex::encode(k.device.public().0)
                } else {
                    "-".into()
                },
                V.protocol.to_string(),
                V.dict.to_string(),
                "4".into(),
            ],
        );
        let init = Initiator::new(cfg, Some(Idempotent::new(b"GET /v3/sync")), &mut rng).unwrap();
        peer.send(init.msg1());
        assert_eq!(peer.recv()[0], b"GET /v3/sync");
        let msg2 = peer.recv().remove(0);
        let mut resp = [0u8; 64];
        let (mut s, n) = init.handle_response(&msg2, &mut resp).unwrap();
        assert_eq!(&resp[..n], b"py-0rtt-resp");
        assert_eq!(peer.recv()[0], [s.id().get()]);
        link_transport_with_python(&mut peer, &mut s);
        peer.finish();
    }
}

#[test]
fn python_link_peer_as_device() {
    let Some(py) = python() else { return };
    let k = keys();
    for pattern in [LinkPattern::IK, LinkPattern::KK] {
        let mut rng = StdRng::seed_from_u64(22);
        let mut rcfg = responder_cfg(&k);
        rcfg.transport = TransportConfig { rekey_interval: 4 };
        let mut peer = PyPeer::spawn(
            &py,
            &[
                "link-initiator".into(),
                format!("{pattern:?}"),
                hex::encode(k.device.secret_bytes()),
                hex::encode(k.gateway.public().0),
                V.protocol.to_string(),
                V.dict.to_string(),
                "4".into(),
            ],
        );
        let msg1 = peer.recv().remove(0);
        assert_eq!(
            msg1.len(),
            if pattern == LinkPattern::IK { 96 } else { 48 } + 8
        );
        let mut early = [0u8; 64];
        let m1 = rcfg.read_msg1(&msg1, &mut early).unwrap();
        assert_eq!(m1.pattern(), pattern);
        assert_eq!(&early[..m1.early_data_len()], b"py-early");
        let want = SessionId::new(5).unwrap();
        let mut gw = m1.accept(&mut rng, |id| id == want, b"ok").unwrap();
        peer.send(gw.msg2());
        assert_eq!(peer.recv()[0], b"ok");
        assert_eq!(peer.recv()[0], [5]);
        link_transport_with_python(&mut peer, &mut gw.session);
        peer.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// replay window against a model

proptest::proptest! {
    /// The window accepts exactly the nonces a set-based model accepts: new ones no more than
    /// 63 below the highest seen.
    #[test]
    fn replay_window_matches_model(steps in proptest::collection::vec((0u64..200, proptest::bool::ANY), 1..300)) {
        use lowband_codec::noise::{ReplayError, ReplayWindow};
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::HashSet::new();
        let mut highest: Option<u64> = None;
        for (n, commit) in steps {
            let model = if seen.contains(&n) && highest.is_some_and(|h| h - n < 64) {
                Err(ReplayError::Replay)
            } else if highest.is_some_and(|h| n + 64 <= h) {
                Err(ReplayError::TooOld)
            } else {
                Ok(())
            };
            proptest::prop_assert_eq!(w.check(n), model, "nonce {}", n);
            if model.is_ok() && commit {
                w.commit(n);
                seen.insert(n);
                highest = Some(highest.map_or(n, |h| h.max(n)));
            }
            proptest::prop_assert_eq!(w.highest(), highest);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BLAKE2s (our compact implementation against the `blake2` crate)

fn blake2_crate(data: &[u8]) -> [u8; 32] {
    use blake2::Digest;
    blake2::Blake2s256::digest(data).into()
}

#[test]
fn blake2s_rfc7693_appendix_b_abc() {
    let want: [u8; 32] = [
        0x50, 0x8C, 0x5E, 0x8C, 0x32, 0x7C, 0x14, 0xE2, 0xE1, 0xA7, 0x2B, 0xA3, 0x4E, 0xEB, 0x45,
        0x2F, 0x37, 0x45, 0x8B, 0x20, 0x9E, 0xD6, 0x3A, 0x29, 0x4D, 0x99, 0x9B, 0x4C, 0x86, 0x67,
        0x59, 0x82,
    ];
    assert_eq!(Blake2s::hash(&[b"abc"]), want);
    assert_eq!(Blake2s::hash(&[b"a", b"", b"bc"]), want);
}

#[test]
fn blake2s_every_length_around_block_boundaries() {
    // Lengths 0..=300 (0, 1, 2, 3, 4 and 5 blocks and the bytes around them), whole and split
    // at every block-relevant point.
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    for len in 0..=data.len() {
        let msg = &data[..len];
        let want = blake2_crate(msg);
        assert_eq!(Blake2s::hash(&[msg]), want, "len {len}");
        for cut in [1, 63, 64, 65, 127, 128, 129] {
            if cut <= len {
                let (a, b) = msg.split_at(cut);
                assert_eq!(Blake2s::hash(&[a, b]), want, "len {len} cut {cut}");
            }
        }
    }
}

proptest::proptest! {
    /// Random inputs of 0..300 bytes fed in random pieces hash as the `blake2` crate hashes them
    /// whole.
    #[test]
    fn blake2s_matches_the_blake2_crate(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort_unstable();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        for c in cuts {
            parts.push(&data[at..c]);
            at = c;
        }
        parts.push(&data[at..]);
        proptest::prop_assert_eq!(Blake2s::hash(&parts), blake2_crate(&data));
    }
}
