//! The `lowband` gateway binary (`serve`, `tunnel`, `keygen`) and `linksim-relay` as child
//! processes.
//!
//! The binaries are built on first use with the same cargo and target directory as the test
//! (`cargo build -p lowband-gateway -p lowband-linksim`), and found next to the test binary's
//! `deps/` directory; env `LOWBAND_BIN_DIR` overrides where they are looked for (no build then).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::proc::ChildGuard;

/// Directory holding `lowband` and `linksim-relay`, built once per test process.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("LOWBAND_BIN_DIR") {
            return Ok(PathBuf::from(d));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // <target>/<profile>/deps/it-xxxx -> <target>/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("test binary has no parent directory")?
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "lowband-gateway",
            "-p",
            "lowband-linksim",
            "--bins",
        ])
        .current_dir(crate::workspace_root());
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("building the gateway binaries failed: {st}"));
        }
        Ok(dir)
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// A `lowband` command.
pub fn lowband() -> anyhow::Result<Command> {
    Ok(Command::new(bin_dir()?.join("lowband")))
}

/// A `linksim-relay` command.
pub fn linksim_relay() -> anyhow::Result<Command> {
    Ok(Command::new(bin_dir()?.join("linksim-relay")))
}

/// `lowband keygen --out path`: returns the public key (base64).
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    let out = lowband()?.args(["keygen", "--out"]).arg(path).output()?;
    anyhow::ensure!(
        out.status.success(),
        "lowband keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A gateway process (`serve`, `tunnel` or `linksim-relay`), killed on drop; its stderr goes
/// to a log file.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub child: ChildGuard,
    /// Its log.
    pub log: PathBuf,
}

impl Gateway {
    /// Spawns `cmd` logging to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Gateway> {
        let f = std::fs::File::create(log)?;
        cmd.stdout(Stdio::null()).stderr(f);
        Ok(Gateway {
            child: ChildGuard::spawn(name, cmd)?,
            log: log.to_path_buf(),
        })
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::proc::tail_file(&self.log, n)
    }
}

/// Link bytes (both directions) of `peer`'s session, from `serve --stats-file`; 0 until the
/// file exists.
pub fn link_bytes(stats: &Path, peer: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(stats) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let s = &v[peer];
    s["bytes_in"].as_u64().unwrap_or(0) + s["bytes_out"].as_u64().unwrap_or(0)
}

/// Waits until `peer`'s counters have not moved for `quiet` (trailing acknowledgements), at
/// most ten times `quiet`, then returns them.
pub fn settled_link_bytes(stats: &Path, peer: &str, quiet: core::time::Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut last = link_bytes(stats, peer);
    let mut since = std::time::Instant::now();
    while start.elapsed() < quiet * 10 {
        std::thread::sleep(core::time::Duration::from_millis(150));
        let now = link_bytes(stats, peer);
        if now != last {
            last = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}
