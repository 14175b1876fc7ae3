//! Start real Matrix peers for manual testing and demos, with the end-to-end harness.
//!
//! ```text
//! lowband-peers single|direct|front|front-standin [--dir DIR] [--user NAME:PASSWORD]...
//! ```
//! `single`: one Synapse. `direct`: a federating pair (own TLS listeners). `front`: a pair whose
//! federation ports are left free for tunnels. `front-standin`: `front` plus plain
//! TLS-terminating forwarders in those ports. Users are registered on every server. Prints one
//! JSON line describing the peers on stdout, then runs until stdin reaches end-of-file (Ctrl-D)
//! or the process is interrupted; the peers stop with it.

use std::io::Read;
use std::path::PathBuf;

use lowband_tests::{
    Federation, FederationPair, PairMode, Synapse, SynapseOpts, TempDir, TlsFront, Venv,
};
use serde_json::{json, Value};

fn describe(hs: &Synapse, users: &[(String, String)]) -> anyhow::Result<Value> {
    let mut registered = Vec::new();
    for (name, pw) in users {
        let (user_id, token) = hs.register_user(name, pw)?;
        registered.push(json!({"user_id": user_id, "password": pw, "access_token": token}));
    }
    Ok(json!({
        "server_name": hs.server_name(),
        "client_url": hs.client_url(),
        "federation": format!("{:?}", hs.federation()),
        "federation_addr": hs.federation_addr().map(|a| a.to_string()),
        "federation_backend": hs.federation_backend().to_string(),
        "fed_cert": hs.fed_cert().map(|c| c.cert_pem.display().to_string()),
        "fed_key": hs.fed_cert().map(|c| c.key_pem.display().to_string()),
        "ca_pem": hs.ca().map(|c| c.ca_pem().display().to_string()),
        "dir": hs.dir().display().to_string(),
        "pid": hs.pid(),
        "startup_ms": hs.startup_time().map(|d| d.as_millis() as u64),
        "users": registered,
    }))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: lowband-peers single|direct|front|front-standin [--dir DIR] [--user NAME:PASSWORD]...";
    let mode = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let mut dir: Option<PathBuf> = None;
    let mut users = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = Some(args.next().ok_or_else(|| anyhow::anyhow!(usage))?.into()),
            "--user" => {
                let u = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
                let (n, p) = u
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("--user wants NAME:PASSWORD"))?;
                users.push((n.to_string(), p.to_string()));
            }
            _ => anyhow::bail!(usage),
        }
    }
    let venv = Venv::find()
        .ok_or_else(|| anyhow::anyhow!("no venv: run scripts/setup.sh or set LOWBAND_VENV"))?;
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = TempDir::new("peers")?;
            tmp.path().to_path_buf()
        }
    };
    let mut keep_servers = Vec::new();
    let mut keep_pairs = Vec::new();
    let mut keep_fronts = Vec::new();
    let summary = match mode.as_str() {
        "single" => {
            let hs = Synapse::start(
                &venv,
                &dir,
                SynapseOpts {
                    label: "single".into(),
                    federation: Federation::Off,
                    ..SynapseOpts::default()
                },
            )?;
            let s = json!({"mode": mode, "servers": [describe(&hs, &users)?]});
            keep_servers.push(hs);
            s
        }
        "direct" | "front" | "front-standin" => {
            let pm = if mode == "direct" {
                PairMode::Direct
            } else {
                PairMode::Front
            };
            let pair = FederationPair::start(&venv, &dir, pm)?;
            if mode == "front-standin" {
                keep_fronts.push(TlsFront::for_server(&venv, &pair.a)?);
                keep_fronts.push(TlsFront::for_server(&venv, &pair.b)?);
            }
            let s = json!({"mode": mode, "ca_pem": pair.ca.ca_pem().display().to_string(),
                           "servers": [describe(&pair.a, &users)?, describe(&pair.b, &users)?]});
            keep_pairs.push(pair);
            s
        }
        _ => anyhow::bail!(usage),
    };
    println!("{summary}");
    eprintln!("lowband-peers: running; Ctrl-D or Ctrl-C stops the peers");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(keep_fronts);
    drop(keep_pairs);
    drop(keep_servers);
    Ok(())
}
