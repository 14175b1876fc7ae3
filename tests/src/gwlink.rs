//! Synapse behind `lowband serve`, an emulated link (`linksim-relay`) and `lowband tunnel`: the
//! client side of a lowband deployment on loopback, for matrix-nio to talk to.

use core::time::Duration;
use std::path::{Path, PathBuf};

use crate::gateway::{keygen, linksim_relay, lowband, Gateway};
use crate::net::{free_port, wait_for_port};
use crate::synapse::{Synapse, SynapseOpts};
use crate::tmp::TempDir;
use crate::Venv;

/// Counters of one session, from `serve --stats-file` (all zero until the file names it).
///
/// `bytes_in`/`packets_in` are what serve received (after the link's loss), `bytes_out`/
/// `packets_out` what it sent (before loss): retransmissions count every time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Bytes serve received from the peer.
    pub bytes_in: u64,
    /// Bytes serve sent to the peer.
    pub bytes_out: u64,
    /// Datagrams serve received.
    pub packets_in: u64,
    /// Datagrams serve sent.
    pub packets_out: u64,
    /// Of those, the bytes of pushed sync results (notifications and their ACKs, both ways).
    pub observe_bytes: u64,
    /// Of those, the datagrams of pushed sync results.
    pub observe_packets: u64,
}

impl LinkCounters {
    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_in + self.bytes_out
    }

    /// Datagrams both ways.
    pub fn packets(&self) -> u64 {
        self.packets_in + self.packets_out
    }

    /// Bytes both ways, without the pushed sync results (the request/response exchanges).
    pub fn exchange_bytes(&self) -> u64 {
        self.bytes().saturating_sub(self.observe_bytes)
    }

    /// Datagrams both ways, without the pushed sync results.
    pub fn exchange_packets(&self) -> u64 {
        self.packets().saturating_sub(self.observe_packets)
    }

    /// The growth from `earlier` to `self`.
    pub fn since(&self, earlier: &LinkCounters) -> LinkCounters {
        LinkCounters {
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            packets_out: self.packets_out.saturating_sub(earlier.packets_out),
            observe_bytes: self.observe_bytes.saturating_sub(earlier.observe_bytes),
            observe_packets: self.observe_packets.saturating_sub(earlier.observe_packets),
        }
    }
}

/// `peer`'s counters in `serve --stats-file` `stats`.
pub fn link_counters(stats: &Path, peer: &str) -> LinkCounters {
    let Ok(text) = std::fs::read_to_string(stats) else {
        return LinkCounters::default();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let s = &v[peer];
    let f = |k: &str| s[k].as_u64().unwrap_or(0);
    LinkCounters {
        bytes_in: f("bytes_in"),
        bytes_out: f("bytes_out"),
        packets_in: f("packets_in"),
        packets_out: f("packets_out"),
        observe_bytes: f("observe_bytes"),
        observe_packets: f("observe_packets"),
    }
}

/// Link parameters for [`GatewayLink::start`].
#[derive(Debug, Clone)]
pub struct LinkOpts {
    /// Label for temp dirs and logs.
    pub label: String,
    /// Bit rate of the emulated link (both directions), also given to serve and tunnel.
    pub rate: u32,
    /// Datagram loss probability of the emulated link (each direction).
    pub loss: f64,
    /// Largest datagram on the link (relay, serve and tunnel).
    pub mtu: u32,
    /// Seed of the relay's loss pattern.
    pub seed: u64,
}

impl Default for LinkOpts {
    fn default() -> Self {
        LinkOpts {
            label: "gwlink".into(),
            rate: 9600,
            loss: 0.0,
            mtu: 256,
            seed: 7,
        }
    }
}

/// Synapse <- `serve` <- relay (emulated link) <- `tunnel` <- (client at [`Self::tunnel_url`]).
///
/// Processes stop on drop. Serve writes its per-session counters to [`Self::stats`]; the
/// tunnel's session is keyed by [`Self::tunnel_pub`].
#[derive(Debug)]
pub struct GatewayLink {
    /// The homeserver (stop and start it with [`Synapse::stop`] / [`Synapse::restart`]).
    pub hs: Synapse,
    /// `lowband serve`.
    pub serve: Gateway,
    /// `linksim-relay` between tunnel and serve.
    pub relay: Gateway,
    /// `lowband tunnel`.
    pub tunnel: Gateway,
    /// Plain-HTTP URL of the tunnel (a client's homeserver URL).
    pub tunnel_url: String,
    /// The tunnel's public key.
    pub tunnel_pub: String,
    /// Serve's public key.
    pub gateway_pub: String,
    /// Serve's UDP address (behind the relay).
    pub serve_addr: String,
    /// Serve's `--stats-file`.
    pub stats: PathBuf,
    /// Keys, logs and stats live here.
    pub dir: PathBuf,
    _dir: TempDir,
}

impl GatewayLink {
    /// Starts a fresh Synapse (presence off) and the gateway chain in front of it.
    pub fn start(venv: &Venv, o: &LinkOpts) -> anyhow::Result<GatewayLink> {
        let hs = Synapse::start_temp(
            venv,
            SynapseOpts {
                label: o.label.clone(),
                presence: false,
                ..SynapseOpts::default()
            },
        )?;
        let tmp = TempDir::new(&o.label)?;
        let d = tmp.path().to_path_buf();
        let gateway_pub = keygen(&d.join("gateway.key"))?;
        let tunnel_pub = keygen(&d.join("tunnel.key"))?;
        let stats = d.join("stats.json");
        let serve_addr = format!("127.0.0.1:{}", free_port()?);
        let relay_port = free_port()?;
        let http_port = free_port()?;
        let rate = o.rate.to_string();
        let mtu = o.mtu.to_string();
        let mut c = lowband()?;
        c.args([
            "serve",
            "--listen-udp",
            &serve_addr,
            "--homeserver",
            &hs.client_url(),
            "--key",
        ])
        .arg(d.join("gateway.key"))
        .args(["--allow-key", &tunnel_pub, "--stats-file"])
        .arg(&stats)
        .args(["--link-rate", &rate, "--link-mtu", &mtu])
        .env("LOWBAND_LOG", "info,lowband_gateway=debug");
        let serve = Gateway::spawn("serve", c, &d.join("serve.log"))?;
        let mut c = linksim_relay()?;
        c.args([
            "--udp-listen",
            &format!("127.0.0.1:{relay_port}"),
            "--udp-target",
            &serve_addr,
        ])
        .args([
            "--rate",
            &rate,
            "--loss",
            &o.loss.to_string(),
            "--mtu",
            &mtu,
        ])
        .args(["--seed", &o.seed.to_string(), "--report-s", "0"]);
        let relay = Gateway::spawn("relay", c, &d.join("relay.log"))?;
        let mut c = lowband()?;
        c.args(["tunnel", "--listen-http", &format!("127.0.0.1:{http_port}")])
            .args([
                "--gateway",
                &format!("127.0.0.1:{relay_port}"),
                "--gateway-key",
                &gateway_pub,
                "--key",
            ])
            .arg(d.join("tunnel.key"))
            .args(["--link-rate", &rate, "--link-mtu", &mtu])
            .env("LOWBAND_LOG", "info,lowband_gateway=debug");
        let tunnel = Gateway::spawn("tunnel", c, &d.join("tunnel.log"))?;
        wait_for_port(http_port, Duration::from_secs(20))?;
        Ok(GatewayLink {
            hs,
            serve,
            relay,
            tunnel,
            tunnel_url: format!("http://127.0.0.1:{http_port}"),
            tunnel_pub,
            gateway_pub,
            serve_addr,
            stats,
            dir: d,
            _dir: tmp,
        })
    }

    /// The tunnel session's counters now.
    pub fn counters(&self) -> LinkCounters {
        link_counters(&self.stats, &self.tunnel_pub)
    }

    /// The tunnel session's counters once they have not moved for `quiet` (trailing
    /// acknowledgements), waiting at most ten times `quiet`.
    pub fn settled(&self, quiet: Duration) -> LinkCounters {
        let start = std::time::Instant::now();
        let mut last = self.counters();
        let mut since = std::time::Instant::now();
        while start.elapsed() < quiet * 10 {
            std::thread::sleep(Duration::from_millis(150));
            let now = self.counters();
            if now != last {
                last = now;
                since = std::time::Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last
    }

    /// The last `n` lines of serve's, the tunnel's and the relay's logs.
    pub fn logs(&self, n: usize) -> String {
        format!(
            "\n--- serve ---\n{}\n--- tunnel ---\n{}\n--- relay ---\n{}",
            self.serve.log_tail(n),
            self.tunnel.log_tail(n),
            self.relay.log_tail(n)
        )
    }
}
