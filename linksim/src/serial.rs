//! A byte-stream relay applying the [`StreamLink`] model on real time: a serial line between
//! two byte streams (TCP, a pty, QEMU's UART as `-serial tcp:127.0.0.1:PORT,server=on,wait=on`).

use core::net::SocketAddr;
use core::time::Duration;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::link::Dir;
use crate::stream::{StreamCounters, StreamLink};
use crate::Stats;

/// Relays bytes between stream `a` (end A) and stream `b` (end B) through `link`, at its bit
/// rate and with its damage, until either side closes (`Ok`) or fails.
///
/// Bytes still in flight when a side closes are delivered to the other side first.
///
/// # Errors
///
/// An I/O error of either stream.
pub async fn relay_streams<A, B>(
    a: A,
    b: B,
    mut link: StreamLink,
    stats: Stats<StreamCounters>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut buf_a = vec![0u8; 4096];
    let mut buf_b = vec![0u8; 4096];
    let mut open = true;
    loop {
        let next = link.next_event_time();
        if !open && next.is_none() {
            return Ok(());
        }
        let wake = next.map_or_else(|| start + Duration::from_secs(3600), |t| start + t);
        tokio::select! {
            r = ar.read(&mut buf_a), if open => {
                let n = r?;
                if n == 0 { open = false } else { link.write(start.elapsed(), Dir::AtoB, &buf_a[..n]); }
            }
            r = br.read(&mut buf_b), if open => {
                let n = r?;
                if n == 0 { open = false } else { link.write(start.elapsed(), Dir::BtoA, &buf_b[..n]); }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = start.elapsed();
        while let Some((dir, bytes)) = link.poll_deliver(now) {
            match dir {
                Dir::AtoB => {
                    bw.write_all(&bytes).await?;
                    bw.flush().await?;
                }
                Dir::BtoA => {
                    aw.write_all(&bytes).await?;
                    aw.flush().await?;
                }
            }
        }
        stats.set([link.counters(Dir::AtoB), link.counters(Dir::BtoA)]);
    }
}

/// Accepts one connection at a time on `listener` (end A), connects to `connect` (end B, e.g.
/// QEMU's UART server) for it, and relays through a fresh copy of the line made by `make_link`
/// until either side closes; then waits for the next connection. Runs until an accept or
/// connect error.
///
/// # Errors
///
/// Accepting or connecting failed.
pub async fn tcp_relay(
    listener: TcpListener,
    connect: SocketAddr,
    mut make_link: impl FnMut() -> StreamLink,
    stats: Stats<StreamCounters>,
) -> io::Result<()> {
    loop {
        let (a, _) = listener.accept().await?;
        let b = TcpStream::connect(connect).await?;
        a.set_nodelay(true)?;
        b.set_nodelay(true)?;
        // A connection that breaks ends its session only.
        let _ = relay_streams(a, b, make_link(), stats.clone()).await;
    }
}
