//! `lowband`: the gateway binary.
use core::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lowband_gateway::config::{self, GatewayLink, ServeOptions, TunnelOptions};
use lowband_gateway::metrics::{serve_metrics, Metrics};
use lowband_gateway::serve::{self, ServeConfig};
use lowband_gateway::sim::{self, SimConfig, SimReport};
use lowband_gateway::transport::LinkParams;
use lowband_gateway::tunnel::{self, TunnelConfig};
use lowband_gateway::{bench, keys, logging};

mod codec_cmd;

/// lowband: Matrix over links as slow as 100 bit/s.
#[derive(Debug, Parser)]
#[command(name = "lowband", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The transport's view of the configured link (the MTU is at least 200 bytes).
fn link_params(l: config::LinkParams) -> LinkParams {
    LinkParams {
        rate: u32::try_from(l.rate_bps).unwrap_or(u32::MAX).max(1),
        mtu: l.mtu.max(200),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Translate Matrix JSON bodies to and from lowband's CBOR link form; measure corpora.
    #[command(subcommand)]
    Codec(codec_cmd::CodecCommand),
    /// The gateway next to the homeserver: accepts sessions on UDP and/or a serial port,
    /// forwards to the homeserver.
    Serve {
        /// TOML configuration file (docs/serve.example.toml); flags override its settings.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        opts: ServeOptions,
        /// Write per-session link byte counters (JSON) to this file.
        #[arg(long)]
        stats_file: Option<PathBuf>,
    },
    /// The gateway next to a Matrix client: an HTTP server carrying requests to `serve`.
    Tunnel {
        /// TOML configuration file (docs/tunnel.example.toml); flags override its settings.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        opts: TunnelOptions,
    },
    /// Measurements: load on one `serve` (requests/s, memory per idle session).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Generates a static key pair: writes the private key (mode 0600), prints the public key.
    Keygen {
        /// Where to write the private key (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Runs a requester and a responder over the link emulator on virtual time.
    LinkSim {
        /// Bit rate, bit/s.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Loss probability.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Duplication probability.
        #[arg(long, default_value_t = 0.0)]
        dup: f64,
        /// Reordering probability.
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
        /// Corruption probability.
        #[arg(long, default_value_t = 0.0)]
        corrupt: f64,
        /// Link MTU.
        #[arg(long, default_value_t = 1024)]
        mtu: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Requests.
        #[arg(long, default_value_t = 10)]
        requests: usize,
        /// Request payload size.
        #[arg(long, default_value_t = 30)]
        size: usize,
    },
}

fn init_logging() -> anyhow::Result<()> {
    logging::init("info")?;
    Ok(())
}

/// Starts the metrics endpoint when configured; returns the handle to record into.
async fn start_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Metrics> {
    let m = Metrics::new();
    if let Some(a) = addr {
        serve_metrics(a, m.clone())
            .await
            .map_err(|e| anyhow::anyhow!("metrics listener {a}: {e}"))?;
    }
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Codec(cmd) => codec_cmd::run(cmd),
        Command::Serve {
            config,
            opts,
            stats_file,
        } => {
            init_logging()?;
            let c = config::ServeConfig::load(config.as_deref(), opts)?;
            let key = keys::read_secret(&c.key)?;
            tokio::runtime::Runtime::new()?.block_on(async move {
                let metrics = start_metrics(c.metrics).await?;
                let cfg = ServeConfig {
                    listen: c.listen_udp,
                    serial: c.listen_serial.map(|p| (p, c.baud)),
                    homeserver: c.homeserver.to_string(),
                    key,
                    allowed: c.allow_keys,
                    link: link_params(c.link),
                    stats_file,
                    state_dir: c.state_dir,
                    metrics,
                    max_sessions: serve::SESSIONS,
                };
                serve::run(cfg).await
            })
        }
        Command::Tunnel { config, opts } => {
            init_logging()?;
            let c = config::TunnelConfig::load(config.as_deref(), opts)?;
            let key = keys::read_secret(&c.key)?;
            anyhow::ensure!(
                c.listen_https.is_none(),
                "listen_https is not supported by this tunnel yet; use listen_http"
            );
            let listen = c
                .listen_http
                .ok_or_else(|| anyhow::anyhow!("listen_http is required"))?;
            tokio::runtime::Runtime::new()?.block_on(async move {
                let metrics = start_metrics(c.metrics).await?;
                let (gateway, gateway_serial) = match c.gateway {
                    GatewayLink::Udp(a) => (a, None),
                    GatewayLink::Serial { path, baud } => {
                        (SocketAddr::from(([127, 0, 0, 1], 0)), Some((path, baud)))
                    }
                };
                let cfg = TunnelConfig {
                    listen,
                    gateway,
                    gateway_key: c.gateway_key,
                    key,
                    link: link_params(c.link),
                    gateway_serial,
                    metrics,
                };
                tunnel::run(cfg).await
            })
        }
        Command::Bench(cmd) => {
            init_logging()?;
            bench::run(cmd)
        }
        Command::Keygen { out } => {
            let kp = lowband_codec::noise::Keypair::generate(&mut rand_core::OsRng);
            keys::write_secret(&out, &kp.secret_bytes())?;
            println!("{}", keys::encode_key(&kp.public().0));
            Ok(())
        }
        Command::LinkSim {
            rate,
            loss,
            dup,
            reorder,
            corrupt,
            mtu,
            seed,
            requests,
            size,
        } => {
            let cfg = SimConfig {
                rate,
                loss,
                dup,
                reorder,
                corrupt,
                mtu,
                seed,
                requests,
                size,
                ..SimConfig::default()
            };
            let r = sim::run(&cfg);
            println!("{}", SimReport::HEADER);
            println!("{}", r.row());
            if r.is_sound() {
                Ok(())
            } else {
                anyhow::bail!(
                    "unsound: {} duplicates delivered, {} unresolved",
                    r.duplicates_delivered,
                    r.unresolved
                )
            }
        }
    }
}
