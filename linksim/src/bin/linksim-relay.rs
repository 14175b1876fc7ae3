//! `linksim-relay`: put an emulated slow, lossy link between two real endpoints.
//!
//! UDP: `linksim-relay --udp-listen 127.0.0.1:5683 --udp-target 127.0.0.1:5684 --rate 100`
//! TCP (serial): `linksim-relay --tcp-listen 127.0.0.1:4000 --tcp-connect 127.0.0.1:4001 --rate 100`
use core::net::SocketAddr;
use core::time::Duration;

use clap::Parser;
use lowband_linksim::{serial, udp, Dir, Link, LinkConfig, Stats, StreamConfig, StreamLink};

/// Relay UDP datagrams or a TCP byte stream through an emulated link.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// UDP address clients send to (A side).
    #[arg(long, requires = "udp_target", conflicts_with_all = ["tcp_listen", "tcp_connect"])]
    udp_listen: Option<SocketAddr>,
    /// UDP address datagrams are forwarded to (B side).
    #[arg(long)]
    udp_target: Option<SocketAddr>,
    /// TCP address to accept the A side on.
    #[arg(long, requires = "tcp_connect")]
    tcp_listen: Option<SocketAddr>,
    /// TCP address of the B side (e.g. QEMU's `-serial tcp:...,server=on`).
    #[arg(long)]
    tcp_connect: Option<SocketAddr>,
    /// Bit rate in bit/s (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bits per byte on the line (10 for UART 8N1).
    #[arg(long, default_value_t = 8)]
    bits_per_byte: u32,
    /// One-way latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Jitter in milliseconds (UDP).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Loss probability (per datagram; per byte for TCP).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Duplication probability (UDP).
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Reordering probability (UDP).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Hold-back delay of a reordered datagram in milliseconds.
    #[arg(long, default_value_t = 500)]
    reorder_ms: u64,
    /// Corruption probability: one bit flipped per datagram (UDP).
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Bit error rate (both modes).
    #[arg(long, default_value_t = 0.0)]
    ber: f64,
    /// Noise byte insertion probability per byte (TCP).
    #[arg(long, default_value_t = 0.0)]
    insert: f64,
    /// Largest datagram carried (UDP); larger ones are dropped.
    #[arg(long)]
    mtu: Option<usize>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print counters every this many seconds (0: never).
    #[arg(long, default_value_t = 10)]
    report_s: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let report = Duration::from_secs(a.report_s);
    if let (Some(listen), Some(target)) = (a.udp_listen, a.udp_target) {
        let cfg = LinkConfig {
            rate_bps: a.rate,
            bits_per_byte: a.bits_per_byte,
            latency: Duration::from_millis(a.latency_ms),
            jitter: Duration::from_millis(a.jitter_ms),
            loss: a.loss,
            duplicate: a.dup,
            reorder: a.reorder,
            reorder_delay: Duration::from_millis(a.reorder_ms),
            corrupt: a.corrupt,
            bit_error_rate: a.ber,
            mtu: a.mtu,
        };
        let relay = udp::Relay::bind(listen, target, Link::symmetric(cfg, a.seed)).await?;
        eprintln!("linksim-relay: udp {} -> {target}", relay.local_addr()?);
        let stats = relay.stats();
        let task = relay.spawn();
        print_stats(report, move |d| format!("{:?}", stats.get(d))).await;
        return task.await.unwrap_or(Ok(()));
    }
    if let (Some(listen), Some(connect)) = (a.tcp_listen, a.tcp_connect) {
        let cfg = StreamConfig {
            rate_bps: a.rate,
            bits_per_byte: a.bits_per_byte,
            latency: Duration::from_millis(a.latency_ms),
            bit_error_rate: a.ber,
            byte_loss: a.loss,
            byte_insert: a.insert,
        };
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("linksim-relay: tcp {} -> {connect}", listener.local_addr()?);
        let stats: Stats<_> = Stats::default();
        let seed = a.seed;
        let task = tokio::spawn(serial::tcp_relay(
            listener,
            connect,
            move || StreamLink::symmetric(cfg.clone(), seed),
            stats.clone(),
        ));
        print_stats(report, move |d| format!("{:?}", stats.get(d))).await;
        return task.await.unwrap_or(Ok(()));
    }
    eprintln!("linksim-relay: give --udp-listen/--udp-target or --tcp-listen/--tcp-connect");
    std::process::exit(2);
}

async fn print_stats(every: Duration, show: impl Fn(Dir) -> String) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        eprintln!("A->B {}\nB->A {}", show(Dir::AtoB), show(Dir::BtoA));
    }
}
