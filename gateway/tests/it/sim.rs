//! Two peers in one process over the link emulator on virtual time: the whole stack
//! (Noise IK session, CoAP exchanges, fragmentation) across a grid of faults.

use lowband_gateway::sim::{run, SimConfig};

fn cfg(loss: f64, mtu: usize, seed: u64) -> SimConfig {
    SimConfig { loss, mtu, seed, requests: 20, size: 30, ..SimConfig::default() }
}

#[test]
fn lossless_link_completes_everything() {
    let r = run(&cfg(0.0, 1024, 1));
    eprintln!("{}", r.row());
    assert_eq!(r.completed, 20, "{r:?}");
    assert!(r.is_sound(), "{r:?}");
    assert_eq!(r.handshakes, 1);
}

#[test]
fn budget_30_percent_loss_200_requests() {
    let base = run(&SimConfig { requests: 200, size: 30, seed: 7, ..SimConfig::default() });
    let lossy = run(&SimConfig { requests: 200, size: 30, loss: 0.3, seed: 7, ..SimConfig::default() });
    eprintln!("lossless {}\nlossy    {}", base.row(), lossy.row());
    assert_eq!(base.completed, 200, "{base:?}");
    assert_eq!(lossy.completed, 200, "{lossy:?}");
    assert!(lossy.is_sound(), "{lossy:?}");
    let ratio = lossy.bytes_on_link as f64 / base.bytes_on_link as f64;
    eprintln!("airtime ratio {ratio:.2}, time ratio {:.2}", lossy.virtual_ms as f64 / base.virtual_ms as f64);
    assert!(ratio <= 2.5, "airtime ratio {ratio}");
}

#[test]
fn session_survives_address_change() {
    let r = run(&SimConfig { requests: 12, rebind: Some(6), ..SimConfig::default() });
    eprintln!("{} {r:?}", r.row());
    assert_eq!(r.completed, 12, "{r:?}");
    assert!(r.is_sound(), "{r:?}");
    assert_eq!(r.handshakes, 1, "no new handshake after rebinding");
}

#[test]
fn session_survives_hours_of_idle() {
    let r = run(&SimConfig { requests: 8, idle: Some((4, 6 * 3600 * 1000)), ..SimConfig::default() });
    eprintln!("{} {r:?}", r.row());
    assert_eq!(r.completed, 8, "{r:?}");
    assert!(r.virtual_ms > 6 * 3600 * 1000);
    assert_eq!(r.handshakes, 1);
}

#[test]
fn restarted_responder_with_persisted_state_keeps_the_session() {
    let r = run(&SimConfig { requests: 12, nstart: 1, restart: Some((6, true)), ..SimConfig::default() });
    eprintln!("{} {r:?}", r.row());
    assert_eq!(r.completed, 12, "{r:?}");
    assert!(r.is_sound(), "{r:?}");
    assert_eq!(r.handshakes, 1, "the persisted session was resumed");
}

#[test]
fn lost_session_rehandshakes_and_loses_nothing() {
    let r = run(&SimConfig { requests: 12, restart: Some((6, false)), ..SimConfig::default() });
    eprintln!("{} {r:?}", r.row());
    assert_eq!(r.completed, 12, "{r:?}");
    assert_eq!(r.unresolved, 0);
    assert_eq!(r.handshakes, 2, "one new handshake");
}
