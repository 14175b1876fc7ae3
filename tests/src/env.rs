//! Finding the Python venv that holds the real peers.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python virtual environment with Synapse, matrix-nio, aiocoap and noiseprotocol.
#[derive(Debug, Clone)]
pub struct Venv {
    /// Root of the venv.
    pub dir: PathBuf,
    /// Its Python interpreter (`<dir>/bin/python`).
    pub python: PathBuf,
}

impl Venv {
    /// The venv named by env `LOWBAND_VENV`, else `<workspace root>/.venv`; `None` if its
    /// interpreter does not exist.
    pub fn find() -> Option<Venv> {
        let dir = match std::env::var_os("LOWBAND_VENV") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => workspace_root().join(".venv"),
        };
        let python = dir.join("bin").join("python");
        python.is_file().then_some(Venv { dir, python })
    }

    /// A command running this venv's Python, with proxy variables removed so that nothing on
    /// loopback is sent to a proxy (Synapse and aiohttp honour them).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.python);
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            c.env_remove(var);
        }
        c.env("no_proxy", "*").env("PYTHONUNBUFFERED", "1");
        c
    }
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Path of a helper script in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// The venv for a test that needs real peers.
///
/// Returns `None` after printing why, if the venv is missing and env `LOWBAND_REQUIRE_PEERS`
/// is unset (the test should then return early). Panics if it is missing and
/// `LOWBAND_REQUIRE_PEERS` is set, so CI cannot skip silently.
pub fn require_peers(test: &str) -> Option<Venv> {
    if let Some(v) = Venv::find() {
        return Some(v);
    }
    let wanted = std::env::var_os("LOWBAND_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    if std::env::var_os("LOWBAND_REQUIRE_PEERS").is_some() {
        panic!(
            "{test}: LOWBAND_REQUIRE_PEERS is set but there is no venv at {} (run scripts/setup.sh)",
            wanted.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: no Python venv with the real peers at {} (run scripts/setup.sh, or set \
         LOWBAND_VENV); set LOWBAND_REQUIRE_PEERS=1 to make this a failure",
        wanted.display()
    );
    None
}
