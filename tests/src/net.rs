//! Loopback ports.

use alloc::collections::BTreeSet;
use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// A TCP port on 127.0.0.1 that is free now and that this process has not handed out before.
///
/// Chosen at random from 20000..32000, below Linux's ephemeral range (32768..60999), so that
/// outgoing connections do not grab it between this call and the server binding it.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut x = seed | 1;
    for _ in 0..2000 {
        // xorshift32: enough to spread concurrent test processes over the range
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = 20000 + (x % 12000) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free TCP port on 127.0.0.1 in 20000..32000")
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`, for at most `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let end = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= end {
            anyhow::bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
