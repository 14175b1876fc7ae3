//! A serial port (or pty) as a datagram link: COBS + CRC framing over the byte stream.
//!
//! Each datagram (a link packet or one fragment of it, see [`crate::transport::Datagrams`])
//! travels as one [`lowband_codec::frame::serial`] frame of the packet framing
//! ([`encode_packet`]): COBS-stuffed, `0x00`-delimited, FCS-16 checked (RFC 1662 §C.2) unless
//! it is a Noise transport packet, whose AEAD tag already detects any damage. A frame that fails its check is dropped and counted;
//! the session layer's retransmissions repair the loss, exactly as for a lost UDP datagram.
//!
//! The port is driven by two plain threads (the `serialport` crate is blocking): a reader
//! that deframes and hands whole datagrams to the async side over a channel, and a writer
//! that frames what the async side sends. Dropping the [`SerialLink`] stops both (the reader
//! at its next read timeout).
use core::time::Duration;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Instant;

use lowband_codec::frame::serial::{encode_packet, max_encoded_len, Deframer};
use serialport::{SerialPort as _, TTYPort};
use tokio::sync::mpsc;

/// Largest datagram a serial link carries (the link MTU must not exceed it).
pub const MAX_DATAGRAM: usize = 4096;

/// After this much silence the writer leads a frame with a delimiter, so line noise picked up
/// while idle becomes its own (dropped) frame instead of spoiling the next real one.
const IDLE_LEAD: Duration = Duration::from_millis(500);

/// How often the reader wakes to notice that the link was dropped.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// One serial port carrying datagrams both ways.
#[derive(Debug)]
pub struct SerialLink {
    /// Datagrams to send (framed by the writer thread).
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Datagrams received (deframed, checked).
    pub rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Opens the device at `path` at `baud` bit/s (8N1, no flow control, raw).
///
/// # Errors
/// The device cannot be opened or configured.
pub fn open(path: &Path, baud: u32) -> anyhow::Result<SerialLink> {
    let port = serialport::new(path.to_string_lossy(), baud)
        .timeout(READ_TIMEOUT)
        .open_native()
        .map_err(|e| anyhow::anyhow!("serial port {}: {e}", path.display()))?;
    attach(port)
}

/// Drives an already open port (e.g. one end of [`TTYPort::pair`] in tests).
///
/// # Errors
/// The port cannot be cloned for the second thread.
pub fn attach(mut port: TTYPort) -> anyhow::Result<SerialLink> {
    port.set_timeout(READ_TIMEOUT)?;
    let mut reader = port.try_clone_native()?;
    let (in_tx, in_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::Builder::new()
        .name("serial-read".into())
        .spawn(move || {
            let mut de: Box<Deframer<MAX_DATAGRAM>> = Box::new(Deframer::for_packets());
            let mut buf = [0u8; 512];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => continue,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        if in_tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(%e, "serial: read failed; link stopped");
                        return;
                    }
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let used = de.handle_bytes(rest);
                    rest = &rest[used..];
                    match de.poll_frame() {
                        Some(Ok(frame)) if in_tx.send(frame.to_vec()).is_err() => return,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::debug!(?e, "serial: frame dropped"),
                        None => {}
                    }
                }
            }
        })?;
    std::thread::Builder::new()
        .name("serial-write".into())
        .spawn(move || {
            let mut last = Instant::now() - IDLE_LEAD;
            let mut out = vec![0u8; max_encoded_len(MAX_DATAGRAM, true)];
            while let Some(d) = out_rx.blocking_recv() {
                let lead = last.elapsed() >= IDLE_LEAD;
                let Ok(n) = encode_packet(&d, lead, &mut out) else {
                    tracing::warn!(len = d.len(), "serial: datagram too large; dropped");
                    continue;
                };
                if let Err(e) = port.write_all(&out[..n]).and_then(|()| port.flush()) {
                    tracing::warn!(%e, "serial: write failed");
                }
                last = Instant::now();
            }
        })?;
    Ok(SerialLink {
        tx: out_tx,
        rx: in_rx,
    })
}

/// Bytes a datagram of `len` bytes takes on the serial line at most (framing included).
pub const fn wire_len(len: usize) -> usize {
    max_encoded_len(len, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_cross_a_pty_pair() {
        let (a, b) = TTYPort::pair().unwrap();
        let mut a = attach(a).unwrap();
        let mut b = attach(b).unwrap();
        let msgs: [&[u8]; 3] = [&[0x00, 0x01, 0x00], &[0x42; 300], &[7]];
        for m in msgs {
            a.tx.send(m.to_vec()).unwrap();
        }
        for m in msgs {
            let got = tokio::time::timeout(Duration::from_secs(5), b.rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, m);
        }
        b.tx.send(vec![9, 0, 9]).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [9, 0, 9]);
    }
}
