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
