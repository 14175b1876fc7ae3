//! lowband's codec: everything both ends of a slow link must agree on byte for byte.
//!
//! ```text
//!  Matrix JSON body ──► cbor (+ dict) ──► pack (deflate w/ preset dict, per-message flag)
//!  method + path    ──► route (route number + params + compact query)
//!                          │
//!                          ▼
//!                 coap (messages, exchanges, block-wise, observe)
//!                          │
//!                 noise (IK/KK handshake, transport with explicit nonce, replay window)
//!                          │
//!                 frame (serial COBS/SLIP + CRC, datagram fragmentation)
//!                          │
//!                        link
//! ```
//!
//! The crate is `#![no_std]`, sans-IO and allocation-free at its core; `alloc` and `std` are
//! opt-in conveniences that never change the bytes on the wire.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod cbor;
pub mod coap;
pub mod dict;
pub mod frame;
pub mod lb;
pub mod noise;
pub mod pack;
pub mod route;
pub mod session;
