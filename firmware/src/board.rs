//! The hardware contract between a board crate and the firmware.
//!
//! A board crate implements the small traits below for its peripherals and returns them, once,
//! from its `init()` as [`Parts`]. The application is generic over [`Board`], so the same code
//! runs on QEMU (`boards/qemu-lm3s6965`), on a Linux host over a pty or serial port
//! (`boards/host`) and on real hardware (`boards/stm32f103`).
//!
//! The link is a byte stream ([`embedded_io`] `Read`/`Write`, the traits UART HALs implement);
//! the firmware frames it with [`lowband_codec::frame::serial`]. Radios that move datagrams
//! instead implement [`Datagram`] (framed with [`lowband_codec::frame::frag`]).

use core::fmt;

pub use lowband_device::{Flash, Page};

/// One board: the types of its pieces. Implemented by a marker type in each board crate.
///
/// The trait carries no methods: the board crate's `init()` builds a [`Parts<Self>`] (taking the
/// chip's peripherals), and the application consumes the parts.
pub trait Board {
    /// The link to the gateway: a byte stream. `Read::read` blocks until at least one byte is
    /// there, so the application polls [`embedded_io::ReadReady::read_ready`] first; `Write` may
    /// block until the bytes are in the transmitter.
    type Link: embedded_io::Read + embedded_io::Write + embedded_io::ReadReady;
    /// Monotonic millisecond clock.
    type Clock: Clock;
    /// Two persistent pages (A/B) for one kind of record: [`lowband_device::AbStore`] on
    /// [`lowband_device::Flash`], the one flash contract of the device and the firmware.
    type Flash: Flash;
    /// The user LED (`!led on`).
    type Led: Led;
    /// The sensor whose readings the firmware posts.
    type Sensor: Sensor;
}

/// The pieces of a board, handed out once by the board crate's `init()`.
pub struct Parts<B: Board> {
    /// Link to the gateway.
    pub link: B::Link,
    /// Millisecond clock.
    pub clock: B::Clock,
    /// The A/B pages of the device state ([`lowband_device::SyncState::save_to`]); each page
    /// holds at least [`lowband_device::DEFAULT_RECORD_MAX`] bytes.
    pub flash: B::Flash,
    /// The A/B pages of the boot counter ([`lowband_device::BootCounter::advance`]).
    pub boot_flash: B::Flash,
    /// The A/B pages of the application's settings (LED, interval), changed by commands.
    pub settings_flash: B::Flash,
    /// User LED.
    pub led: B::Led,
    /// Sensor.
    pub sensor: B::Sensor,
    /// Keys and seed written at provisioning time.
    pub provisioned: Provisioned,
}

impl<B: Board> fmt::Debug for Parts<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts")
            .field("provisioned", &self.provisioned)
            .finish_non_exhaustive()
    }
}

/// A monotonic clock in milliseconds since boot. The protocol cores take `now` from it.
pub trait Clock {
    /// Milliseconds since boot; never decreases.
    fn now_ms(&self) -> u64;
}

/// The user LED.
pub trait Led {
    /// Turns the LED on (`true`) or off.
    fn set(&mut self, on: bool);
}

/// The sensor whose readings the device posts to its room.
pub trait Sensor {
    /// One reading in thousandths of the unit (temperature boards: milli-degrees Celsius), or
    /// `None` if the sensor could not be read.
    fn sample_milli(&mut self) -> Option<i32>;
}

/// A link that moves whole datagrams (LoRa and other packet radios) instead of a byte stream.
///
/// Not used by the boards in this repository yet; the device Runner will accept either kind.
pub trait Datagram {
    /// Why a send or receive failed.
    type Error: fmt::Debug;
    /// Largest datagram the radio carries, in bytes.
    fn mtu(&self) -> usize;
    /// Sends one datagram of at most [`mtu`](Self::mtu) bytes.
    fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error>;
    /// Receives one datagram into `buf` if one is waiting; returns its length. Never blocks.
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;
}

/// Secrets written once at provisioning time, never changed by the firmware.
#[derive(Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// Seed of the device RNG; the device mixes in the boot counter so that no two boots draw
    /// the same numbers (the RNG state itself is never persisted).
    pub seed: [u8; 32],
    /// The device's static X25519 private key for the Noise link.
    pub static_key: [u8; 32],
    /// The gateway's static X25519 public key (the device only talks to this gateway).
    pub gateway_key: [u8; 32],
}

impl Provisioned {
    /// Size of the serialised form: `seed ‖ static_key ‖ gateway_key`.
    pub const LEN: usize = 96;

    /// Parses the serialised form `seed ‖ static_key ‖ gateway_key` (96 bytes).
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        let mut p = Provisioned {
            seed: [0; 32],
            static_key: [0; 32],
            gateway_key: [0; 32],
        };
        p.seed.copy_from_slice(&bytes[..32]);
        p.static_key.copy_from_slice(&bytes[32..64]);
        p.gateway_key.copy_from_slice(&bytes[64..]);
        p
    }

    /// The serialised form, see [`from_bytes`](Self::from_bytes).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.seed);
        out[32..64].copy_from_slice(&self.static_key);
        out[64..].copy_from_slice(&self.gateway_key);
        out
    }
}

impl fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach a log; the public key identifies the gateway.
        f.debug_struct("Provisioned")
            .field("gateway_key[..4]", &&self.gateway_key[..4])
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_round_trip_and_redacted_debug() {
        let mut raw = [0u8; Provisioned::LEN];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = i as u8;
        }
        let p = Provisioned::from_bytes(&raw);
        assert_eq!(p.seed[31], 31);
        assert_eq!(p.static_key[0], 32);
        assert_eq!(p.gateway_key[..2], [64, 65]);
        assert_eq!(p.to_bytes(), raw);
        extern crate std;
        let dbg = std::format!("{p:?}");
        assert!(dbg.contains("[64, 65, 66, 67]"), "{dbg}");
        assert!(!dbg.contains("32, 33"), "{dbg}");
    }
}
