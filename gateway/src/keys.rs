//! Static key files: written with mode 0600, refused when others can read them.
//!
//! A key file holds one line: the 32-byte X25519 private key in unpadded standard base64
//! (the encoding Matrix uses for keys). Public keys are printed and passed on the command line
//! in the same encoding.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// Errors reading or writing key material. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error("key file {path} has mode {mode:o}: it must not be accessible by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The text is not a 32-byte key in unpadded base64.
    #[error("{what} is not a 32-byte key in base64")]
    Malformed {
        /// Which key (never the key itself).
        what: String,
    },
    /// The output file exists already.
    #[error("{path} exists; refusing to overwrite a key")]
    Exists {
        /// The file.
        path: String,
    },
}

/// Encodes a 32-byte key as unpadded standard base64.
pub fn encode_key(key: &[u8; 32]) -> String {
    STANDARD_NO_PAD.encode(key)
}

/// Decodes a key from base64 (padded or not, standard or URL-safe alphabet).
///
/// # Errors
/// [`KeyError::Malformed`] when the text is not 32 bytes of base64; `what` names the key in
/// the message.
pub fn decode_key(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let t = text.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
        .map_err(|_| KeyError::Malformed { what: what.into() })?;
    bytes
        .try_into()
        .map_err(|_| KeyError::Malformed { what: what.into() })
}

/// Writes `secret` to a new file at `path` with mode 0600.
///
/// # Errors
/// [`KeyError::Exists`] if the file exists, [`KeyError::Io`] on any I/O failure.
pub fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), KeyError> {
    let p = path.display().to_string();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path: p.clone() }
            } else {
                KeyError::Io {
                    path: p.clone(),
                    source,
                }
            }
        })?;
    // The umask may have cleared bits but never adds them; set 0600 explicitly anyway.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .and_then(|()| writeln!(f, "{}", encode_key(secret)))
        .and_then(|()| f.sync_all())
        .map_err(|source| KeyError::Io { path: p, source })
}

/// Reads a private key file, refusing it if group or others have any access to it.
///
/// # Errors
/// [`KeyError::Permissions`] for a file with any of the 0o077 bits set, [`KeyError::Io`] and
/// [`KeyError::Malformed`] otherwise.
pub fn read_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let p = path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: p.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: p, mode });
    }
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: p.clone(),
        source,
    })?;
    decode_key(&text, &format!("key file {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lowband-keys-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&d);
        d
    }

    #[test]
    fn written_with_0600_and_read_back() {
        let p = tmp("a");
        let secret = [7u8; 32];
        write_secret(&p, &secret).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&p).unwrap(), secret);
        assert!(matches!(
            write_secret(&p, &secret),
            Err(KeyError::Exists { .. })
        ));
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn readable_by_others_is_refused() {
        let p = tmp("b");
        write_secret(&p, &[1u8; 32]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(
            matches!(e, KeyError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_secret(&p).is_err());
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        let e = decode_key("c2VjcmV0", "gateway key").unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"));
        assert!(decode_key(&encode_key(&[9u8; 32]), "k").is_ok());
        assert!(decode_key(&format!("{}=", encode_key(&[9u8; 32])), "k").is_ok());
    }
}
