//! `lowband`: the gateway binary.
use core::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lowband_gateway::keys;
use lowband_gateway::serve::{self, ServeConfig};
use lowband_gateway::sim::{self, SimConfig, SimReport};
use lowband_gateway::transport::LinkParams;
use lowband_gateway::tunnel::{self, TunnelConfig};

mod codec_cmd;

/// lowband: Matrix over links as slow as 100 bit/s.
#[derive(Debug, Parser)]
#[command(name = "lowband", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The link both ends are configured for (they must agree).
#[derive(Debug, Args, Clone, Copy)]
struct LinkArgs {
    /// Bit rate of the slowest hop in bit/s: sets the retransmission timers.
    #[arg(long, default_value_t = 100)]
    link_rate: u32,
    /// Largest datagram on the link; bigger packets are fragmented (at most 8 pieces).
    #[arg(long, default_value_t = 1280)]
    link_mtu: usize,
}

impl LinkArgs {
    fn params(self) -> LinkParams {
        LinkParams {
            rate: self.link_rate.max(1),
            mtu: self.link_mtu.max(200),
        }
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
    /// CA certificates (PEM) for remote destinations found by server discovery; without it,
    /// only --federation-backend is reached.
    #[arg(long)]
    federation_ca: Option<PathBuf>,
}

impl FederationArgs {
    fn config(self) -> Option<lowband_gateway::federation::FederationConfig> {
        (self.federation_backend.is_some() || self.federation_ca.is_some()).then_some(
            lowband_gateway::federation::FederationConfig {
                backend: self.federation_backend,
                server_name: self.federation_server_name,
                remote_ca: self.federation_ca,
            },
        )
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Translate Matrix JSON bodies to and from lowband's CBOR link form; measure corpora.
    #[command(subcommand)]
    Codec(codec_cmd::CodecCommand),
    /// The gateway next to the homeserver: accepts sessions on UDP, forwards to the homeserver.
    Serve {
        /// UDP address to listen on.
        #[arg(long)]
        listen_udp: SocketAddr,
        /// The homeserver's client-server base URL (http://host:port); the only place requests go.
        #[arg(long)]
        homeserver: String,
        /// This gateway's private key file (from `lowband keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Public key of a tunnel or device allowed in (repeat for each).
        #[arg(long = "allow-key", required = true)]
        allow_key: Vec<String>,
        /// Write per-session link byte counters (JSON) to this file.
        #[arg(long)]
        stats_file: Option<PathBuf>,
        #[command(flatten)]
        federation: FederationArgs,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// The gateway next to a Matrix client: an HTTP server carrying requests to `serve`.
    Tunnel {
        /// HTTP address to listen on (give this to the client as its homeserver).
        #[arg(
            long,
            required_unless_present = "listen_https",
            conflicts_with = "listen_https"
        )]
        listen_http: Option<SocketAddr>,
        /// HTTPS address to listen on (a homeserver's advertised federation address).
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        listen_https: Option<SocketAddr>,
        /// PEM certificate chain (leaf first) for --listen-https.
        #[arg(long, requires = "listen_https")]
        tls_cert: Option<PathBuf>,
        /// PEM private key (PKCS#8, SEC1 or PKCS#1) for --listen-https.
        #[arg(long, requires = "listen_https")]
        tls_key: Option<PathBuf>,
        /// `lowband serve`'s UDP address.
        #[arg(long)]
        gateway: SocketAddr,
        /// `lowband serve`'s public key.
        #[arg(long)]
        gateway_key: String,
        /// This tunnel's private key file.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        link: LinkArgs,
    },
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

fn init_tracing() {
    // TODO(ops): replace with logging::init (redaction of tokens and keys, config file).
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOWBAND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Codec(cmd) => codec_cmd::run(cmd),
        Command::Serve {
            listen_udp,
            homeserver,
            key,
            allow_key,
            stats_file,
            federation,
            link,
        } => {
            init_tracing();
            let key = keys::read_secret(&key)?;
            let allowed = allow_key
                .iter()
                .map(|k| keys::decode_key(k, "--allow-key"))
                .collect::<Result<Vec<_>, _>>()?;
            let cfg = ServeConfig {
                listen: listen_udp,
                homeserver,
                key,
                allowed,
                link: link.params(),
                stats_file,
                federation: federation.config(),
            };
            // TODO(ops): config file, Metrics handle.
            tokio::runtime::Runtime::new()?.block_on(serve::run(cfg))
        }
        Command::Tunnel {
            listen_http,
            listen_https,
            tls_cert,
            tls_key,
            gateway,
            gateway_key,
            key,
            link,
        } => {
            init_tracing();
            let key = keys::read_secret(&key)?;
            let gateway_key = keys::decode_key(&gateway_key, "--gateway-key")?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => {
                    Some(lowband_gateway::federation::TlsFiles { cert, key })
                }
                _ => None,
            };
            let listen = listen_https
                .or(listen_http)
                .ok_or_else(|| anyhow::anyhow!("give --listen-http or --listen-https"))?;
            let cfg = TunnelConfig {
                listen,
                tls,
                gateway,
                gateway_key,
                key,
                link: link.params(),
            };
            tokio::runtime::Runtime::new()?.block_on(tunnel::run(cfg))
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
