//! Temporary directories that clean up after passing tests.

use core::sync::atomic::{AtomicU32, Ordering};
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop.
///
/// Kept (and its path printed) when the test is panicking or env `LOWBAND_KEEP_TMP` is set,
/// so logs of a failed run can be read.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Create `<tmp>/lowband-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> anyhow::Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lowband-{label}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("LOWBAND_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
