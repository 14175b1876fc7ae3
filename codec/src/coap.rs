//! CoAP over any datagram link (RFC 7252), heap-free and sans-IO, tuned for 100 bit/s.
//!
//! ```text
//!  application ──request/respond/notify──► exchange::Endpoint ──poll_transmit──► link
//!                 ◄──Received / Event────                    ◄─handle_datagram─
//!  msg: Packet/Repr parse+emit   params: timers from bit rate and MTU
//!  block: RFC 7959 slicing and reassembly   observe: RFC 7641 ordering, observer table
//! ```
//!
//! One implementation serves both roles: the device and the gateway run the same
//! [`Endpoint`], each towards one peer.
//! <https://www.rfc-editor.org/rfc/rfc7252>

pub mod block;
pub mod exchange;
pub mod msg;
pub mod observe;
pub mod params;
pub mod uri;

pub use block::{block_slice, transfer_key, BlockError, BlockOpt, Progress, Reassembly};
pub use exchange::{
    Config, DeviceEndpoint, Endpoint, EndpointStats, Event, GatewayEndpoint, IncomingRequest,
    IncomingResponse, MsgBuf, Received, Request, RequestError, RequestHandle, Responder, SendError,
};
pub use msg::{
    opt, Code, MsgType, Opt, OptValue, OptionList, Options, Packet, ParseError, Repr, Token,
};
pub use params::TransmissionParams;
