//! Helpers for Matrix server discovery tests: a `.well-known/matrix/server` endpoint over TLS
//! and request signing as a homeserver.

use core::net::SocketAddr;
use core::time::Duration;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};

use crate::ca::LeafCert;
use crate::env::{py_script, Venv};
use crate::proc::ChildGuard;

/// `tests/py/wellknown.py`: answers `GET /.well-known/matrix/server` over TLS (a test-CA
/// certificate) with a fixed body and optional `Cache-Control`, and reports every request.
///
/// The spec fetches `.well-known` from port 443 of the server name's host, so a test binds
/// `<loopback address>:443` (root, or `CAP_NET_BIND_SERVICE`) and makes its test DNS give that
/// address for the name. Stops on drop.
#[derive(Debug)]
pub struct WellKnownServer {
    child: ChildGuard,
    lines: Receiver<String>,
}

impl WellKnownServer {
    /// Start it; returns once the listener is bound (at most 20 s).
    pub fn start(
        venv: &Venv,
        listen: SocketAddr,
        cert: &LeafCert,
        body: &str,
        cache_control: Option<&str>,
    ) -> anyhow::Result<WellKnownServer> {
        let mut cmd = venv.command();
        cmd.arg(py_script("wellknown.py"))
            .arg(listen.to_string())
            .arg(&cert.cert_pem)
            .arg(&cert.key_pem)
            .arg(body)
            .args(cache_control)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn(&format!("wellknown {listen}"), cmd)?;
        let out = child
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("wellknown: no stdout pipe"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l == "listening" => Ok(WellKnownServer { child, lines }),
            other => anyhow::bail!("wellknown on {listen} did not start: {other:?}"),
        }
    }

    /// Requests since the last call: `{"path": .., "host": ..}` each.
    pub fn requests(&self) -> Vec<serde_json::Value> {
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

/// The `Authorization: X-Matrix ...` value signing a request as `origin` with the Synapse
/// signing key in `key_file` (`tests/py/xmatrix_sign.py`, signedjson): what `origin`'s
/// homeserver would send to `destination` for `method` `uri` (path and query exactly as sent)
/// and the JSON `content`, if any.
pub fn xmatrix_sign(
    venv: &Venv,
    key_file: &Path,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&str>,
) -> anyhow::Result<String> {
    let out = venv
        .command()
        .arg(py_script("xmatrix_sign.py"))
        .arg(key_file)
        .args([origin, destination, method, uri])
        .args(content)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "xmatrix_sign.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
