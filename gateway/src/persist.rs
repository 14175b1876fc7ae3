//! Persisted responder sessions: `serve --state-dir DIR` keeps its sessions across restarts.
//!
//! One file per peer, named by the peer's public key (URL-safe base64, not secret), holding
//! [`ServerSession::export`](lowband_codec::session::ServerSession::export): Noise transport
//! keys, nonces and the replay window. Those are secrets: files are created with mode 0600 in
//! a 0700 directory, written to a temporary name, synced and renamed into place, so a crash
//! leaves either the old or the new export, never half of one.
//!
//! When to write (the rule of `lowband_codec::noise::link::Session::export`): after a
//! handshake, whenever the session's sending key epoch changes (before the first packet of
//! the new epoch leaves), and after handling received packets. An import moves the sending
//! side to the next epoch, so nonces used after the last export are never reused; the
//! [`Tracker`] decides when a session is due.
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use alloc::collections::BTreeMap;
use base64::Engine as _;
use lowband_codec::noise::link::RESPONDER_EXPORT_LEN;

/// Extension of session files.
const EXT: &str = "session";

/// A directory of session exports.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating with mode 0700 if needed) the state directory.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> std::io::Result<Store> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // An existing directory is tightened too: it holds secrets.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    fn file(&self, peer: &[u8; 32]) -> PathBuf {
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(peer);
        self.dir.join(format!("{name}.{EXT}"))
    }

    /// Writes `peer`'s export atomically (temporary file, fsync, rename), mode 0600.
    ///
    /// # Errors
    /// File system errors.
    pub fn save(&self, peer: &[u8; 32], export: &[u8]) -> std::io::Result<()> {
        write_private(&self.file(peer), "tmp", export)
    }

    /// Forgets `peer`'s session (a missing file is fine).
    pub fn remove(&self, peer: &[u8; 32]) {
        let _ = std::fs::remove_file(self.file(peer));
    }

    /// Every stored export of the right length (others are skipped with a warning).
    pub fn load(&self) -> Vec<Vec<u8>> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == EXT))
            .collect();
        paths.sort();
        for p in paths {
            match std::fs::read(&p) {
                Ok(b) if b.len() == RESPONDER_EXPORT_LEN => out.push(b),
                Ok(_) => {
                    tracing::warn!(file = %p.display(), "persist: not a session export; skipped")
                }
                Err(e) => tracing::warn!(file = %p.display(), %e, "persist: unreadable; skipped"),
            }
        }
        out
    }
}

/// Offsets in a responder export: peer key (32), protocol (1), dict (2), then the session:
/// format (1), id (1), rekey interval (8), tx cipher: has-key (1), key (32), nonce (8).
const REKEY_AT: usize = 32 + 3 + 2;
const TX_NONCE_AT: usize = REKEY_AT + 8 + 1 + 32;

/// The sending key epoch recorded in a responder export (`tx nonce / rekey interval`).
pub fn tx_epoch(export: &[u8]) -> Option<u64> {
    let rekey = u64::from_be_bytes(export.get(REKEY_AT..REKEY_AT + 8)?.try_into().ok()?);
    let nonce = u64::from_be_bytes(export.get(TX_NONCE_AT..TX_NONCE_AT + 8)?.try_into().ok()?);
    nonce.checked_div(rekey)
}

/// Writes `bytes` to `path` atomically (a temporary file with extension `tmp_ext`, fsync,
/// rename), mode 0600: key material and state readable by the owner only.
///
/// # Errors
/// File system errors.
pub fn write_private(path: &Path, tmp_ext: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(tmp_ext);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[derive(Debug, Clone, Copy)]
struct Saved {
    epoch: u64,
    packets_in: u64,
    at: u64,
}

/// Decides when a session's export is due: new session, new tx epoch, or packets handled
/// since the last write and at least `period_ms` passed.
#[derive(Debug)]
pub struct Tracker {
    saved: BTreeMap<[u8; 32], Saved>,
    period_ms: u64,
}

impl Tracker {
    /// A tracker writing received-packet progress at most every `period_ms`.
    pub fn new(period_ms: u64) -> Tracker {
        Tracker {
            saved: BTreeMap::new(),
            period_ms,
        }
    }

    /// Whether `peer`'s session (export `export`, `packets_in` received so far) must be
    /// written now. `force` writes pending progress regardless of the period.
    pub fn due(
        &self,
        now: u64,
        peer: &[u8; 32],
        export: &[u8],
        packets_in: u64,
        force: bool,
    ) -> bool {
        let epoch = tx_epoch(export).unwrap_or(u64::MAX);
        match self.saved.get(peer) {
            None => true,
            Some(s) if s.epoch != epoch => true,
            Some(s) if s.packets_in != packets_in => {
                force || now.saturating_sub(s.at) >= self.period_ms
            }
            Some(_) => false,
        }
    }

    /// Whether some session has received packets not yet written.
    pub fn has_pending(&self, current: impl IntoIterator<Item = ([u8; 32], u64)>) -> bool {
        current
            .into_iter()
            .any(|(p, n)| self.saved.get(&p).is_some_and(|s| s.packets_in != n))
    }

    /// Records a write.
    pub fn saved(&mut self, now: u64, peer: [u8; 32], export: &[u8], packets_in: u64) {
        let epoch = tx_epoch(export).unwrap_or(u64::MAX);
        self.saved.insert(
            peer,
            Saved {
                epoch,
                packets_in,
                at: now,
            },
        );
    }

    /// Forgets `peer`'s last write (its session was replaced): the next check writes it.
    pub fn forget(&mut self, peer: &[u8; 32]) {
        self.saved.remove(peer);
    }

    /// Forgets sessions not in `live`.
    pub fn retain(&mut self, live: &[[u8; 32]]) {
        self.saved.retain(|p, _| live.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(rekey: u64, nonce: u64) -> Vec<u8> {
        let mut e = vec![0u8; RESPONDER_EXPORT_LEN];
        e[REKEY_AT..REKEY_AT + 8].copy_from_slice(&rekey.to_be_bytes());
        e[TX_NONCE_AT..TX_NONCE_AT + 8].copy_from_slice(&nonce.to_be_bytes());
        e
    }

    #[test]
    fn epoch_from_export() {
        assert_eq!(tx_epoch(&export(100, 250)), Some(2));
        assert_eq!(tx_epoch(&export(0, 250)), None);
        assert_eq!(tx_epoch(&[0u8; 10]), None);
    }

    #[test]
    fn tracker_rules() {
        let p = [7u8; 32];
        let mut t = Tracker::new(1000);
        let e0 = export(100, 5);
        assert!(t.due(0, &p, &e0, 0, false));
        t.saved(0, p, &e0, 0);
        assert!(!t.due(10, &p, &e0, 0, false));
        assert!(!t.due(10, &p, &e0, 3, false));
        assert!(t.has_pending([(p, 3)]));
        assert!(t.due(10, &p, &e0, 3, true));
        assert!(t.due(1000, &p, &e0, 3, false));
        // A new epoch is due at once.
        assert!(t.due(10, &p, &export(100, 100), 0, false));
    }

    #[test]
    fn store_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("lowband-persist-{}", std::process::id()));
        let s = Store::open(&dir).unwrap();
        let e = export(100, 1);
        s.save(&[1; 32], &e).unwrap();
        s.save(&[1; 32], &e).unwrap();
        std::fs::write(dir.join("junk.session"), b"xx").unwrap();
        assert_eq!(s.load(), vec![e]);
        let f = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .find(|f| {
                f.path().extension().is_some_and(|x| x == EXT) && f.metadata().unwrap().len() > 2
            })
            .unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        s.remove(&[1; 32]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
