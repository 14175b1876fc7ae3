//! A TLS-terminating byte forwarder standing in for a lowband federation tunnel.

use core::net::SocketAddr;
use core::time::Duration;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

use crate::ca::LeafCert;
use crate::env::{py_script, Venv};
use crate::proc::ChildGuard;
use crate::synapse::Synapse;

/// `tests/py/tls_front.py`: accepts TLS on `listen` with a test-CA certificate and copies the
/// plaintext both ways to `backend`, unchanged.
///
/// It does exactly what [`crate::Federation::Front`] asks of a tunnel, with no link in between,
/// so a test can check the Front wiring on its own before a lowband gateway pair takes its place.
#[derive(Debug)]
pub struct TlsFront {
    child: ChildGuard,
    listen: SocketAddr,
    lines: Receiver<String>,
}

impl TlsFront {
    /// Start forwarding; returns once the listener is bound (at most 20 s).
    pub fn start(
        venv: &Venv,
        listen: SocketAddr,
        cert: &LeafCert,
        backend: SocketAddr,
    ) -> anyhow::Result<TlsFront> {
        let mut cmd = venv.command();
        cmd.arg(py_script("tls_front.py"))
            .arg(listen.to_string())
            .arg(&cert.cert_pem)
            .arg(&cert.key_pem)
            .arg(backend.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn(&format!("tls_front {listen}"), cmd)?;
        let out = child
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("tls_front: no stdout pipe"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l == "listening" => Ok(TlsFront {
                child,
                listen,
                lines,
            }),
            other => anyhow::bail!("tls_front on {listen} did not start: {other:?}"),
        }
    }

    /// The front for a [`crate::Federation::Front`] server: listens on its
    /// [`Synapse::federation_addr`] with its [`Synapse::fed_cert`] and forwards to its
    /// [`Synapse::federation_backend`].
    pub fn for_server(venv: &Venv, hs: &Synapse) -> anyhow::Result<TlsFront> {
        let listen = hs
            .federation_addr()
            .ok_or_else(|| anyhow::anyhow!("{} has no federation address", hs.server_name()))?;
        let cert = hs
            .fed_cert()
            .ok_or_else(|| anyhow::anyhow!("{} has no federation certificate", hs.server_name()))?;
        TlsFront::start(venv, listen, cert, hs.federation_backend())
    }

    /// Where it listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Connection reports since the last call: `{"conn": n, "event": "open"}` when accepted,
    /// `{"conn": n, "event": "close", "up": bytes to the backend, "down": bytes back}`.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Connections accepted and bytes carried so far, `(conns, up, down)`: `up` towards the
    /// backend, `down` back (TLS removed, HTTP framing included). Reports seen while waiting
    /// for the answer are dropped.
    pub fn totals(&mut self) -> anyhow::Result<(u64, u64, u64)> {
        let stdin = self
            .child
            .stdin()
            .ok_or_else(|| anyhow::anyhow!("tls_front: stopped"))?;
        writeln!(stdin, "stats")?;
        stdin.flush()?;
        let end = Instant::now() + Duration::from_secs(10);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let line = self.lines.recv_timeout(left)?;
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["event"] == "stats" {
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                return Ok((n("conns"), n("up"), n("down")));
            }
        }
        anyhow::bail!("tls_front on {}: no stats answer", self.listen)
    }

    /// Stop it (also done on drop).
    pub fn stop(mut self) {
        self.child.kill();
    }
}
