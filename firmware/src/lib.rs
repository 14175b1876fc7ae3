//! The lowband firmware application, generic over a board.
//!
//! Everything here is `no_std`, allocation-free and host-testable; a board crate supplies the
//! hardware through [`Board`] and its [`Parts`] (embassy style: the board's `init()` returns the
//! pieces, the application takes them by value):
//!
//! ```text
//!  boards/qemu-lm3s6965   boards/host   boards/stm32f103
//!          \                  |               /
//!           init() -> Parts<B: Board> { link, clock, flash, led, sensor, provisioned }
//!                             |
//!  firmware: boot counter · Command parser · Loopback app · Matrix app (device Runner)
//!  device:   Flash + AbStore (A/B pages, the one persistence layer) · SyncState · Runner
//! ```
//!
//! * [`board`]: the hardware contract (link, clock, flash pages, LED, sensor, provisioned keys).
//! * persistence: [`lowband_device::AbStore`] on [`Flash`] pages (re-exported here).
//! * [`config`]: the provisioning text (keys from `lowband keygen`, room, token, controllers).
//! * [`command`]: the room commands (`!status`, `!led on|off`, `!interval N`) and their replies.
//! * [`app`]: the boot counter, the reading timer and the platform-proving loopback application.
//! * [`matrix`]: the Matrix application ([`MatrixApp`]): joins its room, posts readings, answers
//!   commands, through the device's [`lowband_device::Runner`]; [`DatagramLink`] for radios.
#![no_std]
#![warn(missing_docs)]

pub mod app;
pub mod board;
pub mod command;
pub mod config;
pub mod matrix;

pub use app::{count_boot, LoopError, Loopback};
pub use board::{Board, Clock, Datagram, Flash, Led, Page, Parts, Provisioned, Sensor};
pub use command::{Command, CommandError, Settings};
pub use config::{ConfigError, DeviceConfig};
pub use lowband_device::{AbStore, BootCounter, StoreError};
pub use matrix::{AppConfig, AppError, DatagramLink, MatrixApp};
