//! A TLS-terminating byte forwarder standing in for a lowband federation tunnel.

use core::net::SocketAddr;
use core::time::Duration;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};

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

    /// Stop it (also done on drop).
    pub fn stop(mut self) {
        self.child.kill();
    }
}
