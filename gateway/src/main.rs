//! `lowband`: the gateway binary.
use core::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
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

/// Where `serve` sends federation (server-server API) requests.
#[derive(Debug, Args, Clone)]
struct FederationArgs {
    /// The homeserver's federation listener (http://host:port, plain HTTP); enables federation.
    #[arg(long)]
    federation_backend: Option<String>,
    /// The homeserver's server name: requests whose X-Matrix destination differs are not sent
    /// to --federation-backend.
    #[arg(long)]
    federation_server_name: Option<String>,
    /// CA certificates (PEM) for remote destinations found by server discovery (and their
    /// .well-known); without it, only --federation-backend is reached.
    #[arg(long)]
    federation_ca: Option<PathBuf>,
    /// DNS server (IP:port) for server discovery's SRV and address lookups; default: the
    /// system's resolver (/etc/resolv.conf and the hosts file).
    #[arg(long, value_name = "ADDR")]
    dns: Option<SocketAddr>,
}

impl FederationArgs {
    fn config(self) -> Option<lowband_gateway::federation::FederationConfig> {
        (self.federation_backend.is_some() || self.federation_ca.is_some()).then_some(
            lowband_gateway::federation::FederationConfig {
                backend: self.federation_backend,
                server_name: self.federation_server_name,
                remote_ca: self.federation_ca,
                dns: self.dns,
            },
        )
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
        #[command(flatten)]
        federation: FederationArgs,
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
            federation,
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
                    federation: federation.config(),
                };
                serve::run(cfg).await
            })
        }
        Command::Tunnel { config, opts } => {
            init_logging()?;
            let c = config::TunnelConfig::load(config.as_deref(), opts)?;
            let key = keys::read_secret(&c.key)?;
            anyhow::ensure!(
                c.listen_http.is_none() || c.listen_https.is_none(),
                "give listen_http or listen_https, not both"
            );
            let (listen, tls) = match (c.listen_https, c.listen_http) {
                (Some((addr, f)), _) => (
                    addr,
                    Some(lowband_gateway::federation::TlsFiles {
                        cert: f.cert,
                        key: f.key,
                    }),
                ),
                (None, Some(addr)) => (addr, None),
                (None, None) => anyhow::bail!("give listen_http or listen_https"),
            };
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
                    tls,
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
