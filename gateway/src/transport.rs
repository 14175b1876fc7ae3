//! What `serve` and `tunnel` share: session sizes, link-derived timers, datagram fragmentation.
//!
//! Both roles carry the same link packets (Noise transport packets holding CoAP messages, or
//! handshake messages) in UDP datagrams of at most the link MTU, split with
//! [`lowband_codec::frame`] fragmentation when a packet is larger (a CoAP message holding a
//! 1 KiB block is). Times are u64 milliseconds since the process started.
use alloc::collections::VecDeque;
use std::time::Instant;

use lowband_codec::coap::{self, TransmissionParams};
use lowband_codec::frame::{Fragmenter, Reassembler};
use lowband_codec::noise::link::{LinkVersion, RetransmitConfig};
use lowband_codec::session;

/// Largest CoAP message of a session (a 1 KiB block plus options).
pub const COAP_MTU: usize = 1400;
/// Largest link packet.
pub const PACKET: usize = session::max_packet_len(COAP_MTU);
/// Block size exponent of block-wise transfers: 16 << 6 = 1024 bytes.
pub const BLOCK_SZX: u8 = 6;
/// Block size in bytes.
pub const BLOCK: usize = 16 << BLOCK_SZX;
/// Protocol and dictionary version both ends speak.
pub const VERSION: LinkVersion = LinkVersion {
    protocol: 1,
    dict: 1,
};

/// The link's properties, which set the timers.
#[derive(Debug, Clone, Copy)]
pub struct LinkParams {
    /// Bit rate of the slowest hop, bit/s.
    pub rate: u32,
    /// Largest datagram; bigger link packets are fragmented.
    pub mtu: usize,
}

impl LinkParams {
    /// CoAP transmission parameters for this link.
    pub fn transmission(&self) -> TransmissionParams {
        let frame = u16::try_from(self.mtu.min(256)).unwrap_or(256);
        let mut p = TransmissionParams::for_link(self.rate, frame, 0);
        // Concurrent requests: a long-polling sync must not hold back a send.
        p.nstart = 4;
        // Lossy radio links: more retransmissions than the RFC's 4.
        p.max_retransmit = 8;
        p
    }

    /// CoAP endpoint settings.
    pub fn coap(&self, seed: u64) -> coap::Config {
        coap::Config {
            params: self.transmission(),
            seed,
            token_len: 1,
            // The device profile's critical option (crate::devices).
            extra_options: &[
                lowband_codec::lb::opt::DEVICE,
                lowband_codec::lb::opt::SMALL,
            ],
        }
    }

    /// Handshake retransmission timers.
    pub fn retransmit(&self) -> RetransmitConfig {
        RetransmitConfig::for_link_rate(self.rate, 0)
    }
}

/// Milliseconds since `start`.
pub fn now_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs `f` on a thread with a large stack: the session state machines hold their buffers
/// inline (heapless) and are built by value before they are boxed.
pub fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = std::thread::Builder::new().stack_size(512 << 20).spawn(f);
    match h.map(|h| h.join()) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(e) => panic!("cannot spawn a thread: {e}"),
    }
}

/// Splits outgoing link packets into datagrams, reassembles incoming ones (one peer).
#[derive(Debug)]
pub struct Datagrams {
    mtu: usize,
    frag: Fragmenter,
    reasm: Reassembler<4, PACKET>,
    /// Datagrams to send, in order.
    pub out: VecDeque<Vec<u8>>,
}

impl Datagrams {
    /// Fragments to `mtu`; partial packets are dropped after `timeout_ms` without progress.
    pub fn new(mtu: usize, timeout_ms: u64) -> Self {
        Datagrams {
            mtu,
            frag: Fragmenter::new(),
            reasm: Reassembler::new(timeout_ms),
            out: VecDeque::new(),
        }
    }

    /// Queues `packet` as datagrams.
    pub fn push(&mut self, packet: &[u8]) {
        match self.frag.fragment(packet, self.mtu) {
            Ok(frags) => {
                for f in frags {
                    let mut d = vec![0u8; f.len()];
                    if let Ok(n) = f.emit(&mut d) {
                        d.truncate(n);
                        self.out.push_back(d);
                    }
                }
            }
            Err(e) => tracing::warn!(?e, len = packet.len(), "packet not sent"),
        }
    }

    /// A datagram arrived; returns the link packet it completes.
    pub fn receive<'a>(&'a mut self, now: u64, d: &'a [u8]) -> Option<&'a [u8]> {
        self.reasm.handle_datagram(now, d).ok().flatten()
    }

    /// When partial packets expire.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.reasm.poll_timeout()
    }

    /// Drops expired partial packets.
    pub fn handle_timeout(&mut self, now: u64) {
        self.reasm.handle_timeout(now);
    }
}
