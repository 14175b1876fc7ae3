//! End-to-end harness: starts real peers (Synapse homeservers, matrix-nio clients) on loopback.
//!
//! lowband carries Matrix between a client and its homeserver and between two homeservers, so
//! its end-to-end tests need the real thing on both sides of a link: this crate starts Synapse
//! ([`Synapse`], alone or as a federating [`FederationPair`]), issues certificates from a
//! throw-away [`TestCa`] (Matrix federation is TLS only, see the
//! [server-server API](https://spec.matrix.org/v1.16/server-server-api/#tls)), and drives
//! matrix-nio clients through scripted steps ([`Nio`]).
//!
//! The peers live in a Python venv (`scripts/setup.sh` creates `<workspace>/.venv`; env
//! `LOWBAND_VENV` overrides). Tests call [`require_peers`] first: without a venv they skip with a
//! printed reason, unless env `LOWBAND_REQUIRE_PEERS` is set, in which case they fail.
//!
//! Every child process is killed when its handle drops, and also when the test process dies
//! (each child watches its stdin pipe); every wait is bounded.

#![warn(missing_docs)]

extern crate alloc;

mod ca;
mod discovery;
mod dns;
mod env;
mod federation;
mod front;
pub mod gateway;
pub mod gwlink;
pub mod http;
mod net;
mod nio;
mod proc;
pub mod qemu;
mod synapse;
mod tmp;

pub use ca::{LeafCert, TestCa};
pub use discovery::{xmatrix_sign, WellKnownServer};
pub use dns::{DnsRecord, TestDns, SRV as DNS_SRV};
pub use env::{py_script, require_peers, workspace_root, Venv};
pub use federation::{FederationPair, PairMode};
pub use front::TlsFront;
pub use gateway::Gateway;
pub use gwlink::{GatewayLink, LinkCounters, LinkOpts};
pub use net::{free_port, wait_for_port};
pub use nio::Nio;
pub use proc::{tail_file, ChildGuard};
pub use synapse::{Federation, Synapse, SynapseOpts};
pub use tmp::TempDir;
