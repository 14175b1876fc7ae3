//! Link framing: how packets cross a byte-stream link (serial) or a small-MTU datagram link (radio).
//!
//! Two link kinds, two tools, both sans-IO, `no_std` and allocation-free:
//!
//! ```text
//!  packet (Noise transport message, handshake, ...)
//!     │                                   │
//!  serial: [00] COBS(packet ‖ FCS16) 00   datagram: [hdr] chunk   (hdr only when needed)
//!     │  Deframer<N> resyncs on 00           │  Reassembler<SLOTS, N> tags, slots, timeout
//!  UART / TCP byte stream                 LoRa / UDP datagrams, MTU down to 51 B
//! ```
//!
//! * [`serial`]: Consistent Overhead Byte Stuffing (Cheshire & Baker, IEEE/ACM ToN 1999) with the
//!   PPP 16-bit frame check sequence ([RFC 1662 §C.2](https://www.rfc-editor.org/rfc/rfc1662#appendix-C.2)),
//!   `0x00` as the only delimiter. A frame of fewer than 253 payload bytes costs exactly 4 bytes
//!   (1 COBS code byte, 2 FCS bytes, 1 delimiter), 5 with an optional leading delimiter that lets
//!   a receiver resynchronise straight after line noise.
//! * [`frag`]: fragmentation below CoAP for datagram links whose MTU is smaller than a packet,
//!   in the spirit of 6LoWPAN's dispatch byte
//!   ([RFC 4944 §5.3](https://www.rfc-editor.org/rfc/rfc4944#section-5.3)) but with a 1-byte header:
//!   unfragmented packets cost 0 bytes (1 if their first byte is `>= 0xC0`).
//!
//! Both schemes are fixed: no feature flag changes a byte on the wire.

pub mod crc;
pub mod frag;
pub mod serial;

pub use frag::{
    Fragment, FragmentError, Fragmenter, Fragments, Reassembler, ReassemblyError, ReassemblyStats,
};
pub use serial::{
    encode, encode_packet, encoded_len, max_encoded_len, DeframeError, DeframeStats, Deframer,
    EncodeError,
};
