//! Two federating Synapses on loopback.

use std::path::Path;

use crate::ca::TestCa;
use crate::env::Venv;
use crate::synapse::{Federation, Synapse, SynapseOpts};
use crate::tmp::TempDir;

/// How the two servers of a [`FederationPair`] reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairMode {
    /// Each Synapse serves federation over TLS itself on the port in its server name; they
    /// talk directly.
    Direct,
    /// Each server name `localhost:<port>` points at a port nobody listens on yet. Federation
    /// works only once, for each server X in {a, b}, a tunnel listens on
    /// `X.federation_addr()` (127.0.0.1), terminates TLS presenting `X.fed_cert()` (chain from
    /// the pair's CA, valid for `localhost`) and delivers the HTTP requests, unchanged, to
    /// `X.federation_backend()` (plain HTTP). The *other* server is the one that connects to it.
    Front,
}

/// Servers `a` and `b` sharing one [`TestCa`]; both trust only that CA for federation.
///
/// Both stop when the pair drops.
#[derive(Debug)]
pub struct FederationPair {
    /// First server (label "a").
    pub a: Synapse,
    /// Second server (label "b").
    pub b: Synapse,
    /// The CA both trust, in `<dir>/ca`.
    pub ca: TestCa,
    mode: PairMode,
    // Dropped after the servers.
    _tmp: Option<TempDir>,
}

impl FederationPair {
    /// Start `a` in `<dir>/a` and `b` in `<dir>/b` (booting concurrently) and wait for both.
    pub fn start(venv: &Venv, dir: &Path, mode: PairMode) -> anyhow::Result<FederationPair> {
        Self::start_with(venv, dir, mode, |_| {})
    }

    /// Like [`FederationPair::start`], with a hook to adjust each server's options (it gets
    /// the options with `label` "a" or "b", federation and CA already set).
    pub fn start_with(
        venv: &Venv,
        dir: &Path,
        mode: PairMode,
        mut tweak: impl FnMut(&mut SynapseOpts),
    ) -> anyhow::Result<FederationPair> {
        let ca = TestCa::create(venv, &dir.join("ca"))?;
        let federation = match mode {
            PairMode::Direct => Federation::Tls,
            PairMode::Front => Federation::Front { port: 0 },
        };
        let mut opts = |label: &str| {
            let mut o = SynapseOpts {
                label: label.into(),
                federation,
                ca: Some(ca.clone()),
                ..SynapseOpts::default()
            };
            tweak(&mut o);
            o
        };
        let (oa, ob) = (opts("a"), opts("b"));
        let (ta, tb) = (oa.start_timeout, ob.start_timeout);
        let mut a = Synapse::spawn(venv, &dir.join("a"), oa)?;
        let mut b = Synapse::spawn(venv, &dir.join("b"), ob)?;
        a.wait_ready(ta)?;
        b.wait_ready(tb)?;
        Ok(FederationPair {
            a,
            b,
            ca,
            mode,
            _tmp: None,
        })
    }

    /// Like [`FederationPair::start`] in a fresh [`TempDir`] owned by the pair.
    pub fn start_temp(venv: &Venv, mode: PairMode) -> anyhow::Result<FederationPair> {
        let tmp = TempDir::new("fedpair")?;
        let mut pair = FederationPair::start(venv, tmp.path(), mode)?;
        pair._tmp = Some(tmp);
        Ok(pair)
    }

    /// The mode it was started in.
    pub fn mode(&self) -> PairMode {
        self.mode
    }
}
