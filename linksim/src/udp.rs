//! A UDP relay applying the [`Link`] model on real time, both ways.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use std::io;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::link::{Counters, Dir, Link};
use crate::Stats;

/// Largest datagram the relay reads.
const MAX_DATAGRAM: usize = 65_536;

/// Forwards datagrams between a client (A side) and a target (B side) through a [`Link`].
///
/// Listens on the A-side address; the first datagram there teaches it the client's address,
/// and it follows the client if that address changes (NAT rebinding, a restarted client).
/// Datagrams A->B go to `target` from a socket of their own; datagrams that come back from
/// `target` on that socket go B->A to the latest client address. Anything else is ignored.
/// Time is the link's virtual time mapped onto the tokio clock (`Duration` since the relay
/// started), so the trace is the same as in-process for the same seed and arrival times.
#[derive(Debug)]
pub struct Relay {
    a: UdpSocket,
    b: UdpSocket,
    target: SocketAddr,
    link: Link,
    stats: Stats<Counters>,
}

impl Relay {
    /// Binds the A-side `listen` address and a B-side socket to reach `target`.
    ///
    /// # Errors
    ///
    /// If a socket cannot be bound.
    pub async fn bind(listen: SocketAddr, target: SocketAddr, link: Link) -> io::Result<Self> {
        let a = UdpSocket::bind(listen).await?;
        let any: IpAddr = match (target.ip().is_loopback(), target) {
            (true, SocketAddr::V4(_)) => Ipv4Addr::LOCALHOST.into(),
            (true, SocketAddr::V6(_)) => Ipv6Addr::LOCALHOST.into(),
            (false, SocketAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
            (false, SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let b = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
        Ok(Self {
            a,
            b,
            target,
            link,
            stats: Stats::default(),
        })
    }

    /// The A-side address clients send to.
    ///
    /// # Errors
    ///
    /// From the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.a.local_addr()
    }

    /// The address the relay sends to the target from.
    ///
    /// # Errors
    ///
    /// From the socket.
    pub fn b_side_addr(&self) -> io::Result<SocketAddr> {
        self.b.local_addr()
    }

    /// A live view of the counters.
    pub fn stats(&self) -> Stats<Counters> {
        self.stats.clone()
    }

    /// Runs the relay on a new task; abort the handle to stop it.
    pub fn spawn(self) -> JoinHandle<io::Result<()>> {
        tokio::spawn(self.run())
    }

    /// Relays until an I/O error (runs forever otherwise: drop or abort the future to stop).
    ///
    /// # Errors
    ///
    /// A socket error other than a refused or reset connection (ICMP from an absent peer, which
    /// the relay treats as loss).
    pub async fn run(mut self) -> io::Result<()> {
        let start = Instant::now();
        let mut client: Option<SocketAddr> = None;
        let mut buf_a = vec![0u8; MAX_DATAGRAM];
        let mut buf_b = vec![0u8; MAX_DATAGRAM];
        loop {
            let wake = self
                .link
                .next_event_time()
                .map_or_else(|| start + Duration::from_secs(3600), |t| start + t);
            tokio::select! {
                r = self.a.recv_from(&mut buf_a) => {
                    match r {
                        Ok((n, from)) => {
                            client = Some(from);
                            self.link.send(start.elapsed(), Dir::AtoB, &buf_a[..n]);
                        }
                        Err(e) if transient(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                r = self.b.recv_from(&mut buf_b) => {
                    match r {
                        Ok((n, from)) if from == self.target => {
                            self.link.send(start.elapsed(), Dir::BtoA, &buf_b[..n]);
                        }
                        Ok(_) => {}
                        Err(e) if transient(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            let now = start.elapsed();
            while let Some((dir, frame)) = self.link.poll_deliver(now) {
                let r = match (dir, client) {
                    (Dir::AtoB, _) => self.b.send_to(&frame, self.target).await,
                    (Dir::BtoA, Some(c)) => self.a.send_to(&frame, c).await,
                    (Dir::BtoA, None) => Ok(0),
                };
                match r {
                    Ok(_) => {}
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            self.stats
                .set([self.link.counters(Dir::AtoB), self.link.counters(Dir::BtoA)]);
        }
    }
}

/// Errors that mean "the peer is not there right now", not a broken relay.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
    )
}
