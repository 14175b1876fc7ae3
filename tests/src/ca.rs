//! A throw-away certificate authority for TLS on loopback.

use std::path::{Path, PathBuf};

use crate::env::{py_script, Venv};

/// A test CA: `ca.pem` (certificate) and `ca.key` in a directory.
///
/// Matrix federation requires TLS with a certificate valid for the server name's host. Every
/// Synapse started with this CA trusts it (and only it) for outbound federation
/// (`federation_custom_ca_list`), and anything that serves a federation port on loopback (Synapse
/// itself or a lowband tunnel) presents a [`LeafCert`] from it. The work is done by
/// `tests/py/mkcert.py` with Python's `cryptography` (a Synapse dependency): ECDSA P-256 keys,
/// SHA-256 signatures.
#[derive(Debug, Clone)]
pub struct TestCa {
    venv: Venv,
    dir: PathBuf,
}

/// A leaf certificate issued by a [`TestCa`], for the DNS names asked plus 127.0.0.1 and ::1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafCert {
    /// PEM: the leaf certificate followed by the CA certificate (a full chain to present).
    pub cert_pem: PathBuf,
    /// PEM: the leaf's private key, PKCS#8, unencrypted.
    pub key_pem: PathBuf,
}

impl TestCa {
    /// Create the CA in `dir` (or reuse the one already there).
    pub fn create(venv: &Venv, dir: &Path) -> anyhow::Result<TestCa> {
        std::fs::create_dir_all(dir)?;
        let ca = TestCa {
            venv: venv.clone(),
            dir: dir.to_path_buf(),
        };
        ca.mkcert(&[std::ffi::OsStr::new("ca"), dir.as_os_str()])?;
        Ok(ca)
    }

    /// The CA certificate (PEM): the trust root to give TLS clients.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The directory holding `ca.pem` and `ca.key`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issue a leaf certificate for `dns_names` (plus IPs 127.0.0.1 and ::1), written to
    /// `<prefix>.crt` and `<prefix>.key`.
    pub fn issue(&self, prefix: &Path, dns_names: &[&str]) -> anyhow::Result<LeafCert> {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            std::ffi::OsStr::new("leaf"),
            self.dir.as_os_str(),
            prefix.as_os_str(),
        ];
        args.extend(dns_names.iter().map(std::ffi::OsStr::new));
        self.mkcert(&args)?;
        let p = prefix.as_os_str();
        let with = |ext: &str| {
            let mut s = p.to_os_string();
            s.push(ext);
            PathBuf::from(s)
        };
        Ok(LeafCert {
            cert_pem: with(".crt"),
            key_pem: with(".key"),
        })
    }

    fn mkcert(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let out = self
            .venv
            .command()
            .arg(py_script("mkcert.py"))
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "mkcert.py {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
