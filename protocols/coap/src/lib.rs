//! Sans-IO CoAP for the gateway's CoAP and LwM2M servers: plain functions and state machines
//! over bytes, peers and `Instant`s, tested without sockets. The message codec is coap-lite's;
//! this crate adds what a server needs around it.
//!
//! - [`message`]: decoding with the checks coap-lite leaves out (version, unknown critical
//!   options, size), and building replies (ACK, RST, piggybacked and separate responses).
//! - [`dedup`]: duplicate detection by (peer, message id) over the exchange lifetime, with
//!   the reply to resend, bounded.
//! - [`retransmit`]: confirmable messages sent by the server, retransmitted with randomized
//!   exponential backoff until acknowledged, reset or given up.
//! - [`observe`]: an observation's sequence numbers and its notification queue (one
//!   confirmable notification in flight, a bounded queue behind it, drops counted).
//! - [`block`]: block-wise transfer, Block1 reassembly and Block2 slicing, bounded.
//! - [`request`]: the EMQX CoAP gateway's conventions (`ps/{topic}`, `mqtt/connection`,
//!   query parameters) as typed requests.
//! - [`fuzz`]: the fuzz target's entry point, also run on the committed seeds by the tests.
//!
//! Nothing here does I/O, spawns, sleeps or reads a clock: the caller passes the time in.

pub mod block;
pub mod dedup;
pub mod fuzz;
pub mod message;
pub mod observe;
pub mod request;
pub mod retransmit;

pub use coap_lite::option_value::{OptionValueU16, OptionValueU32};
pub use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};

/// RFC 7252 section 4.8 transmission parameters, the defaults.
pub mod params {
    use std::time::Duration;

    /// ACK_TIMEOUT.
    pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
    /// ACK_RANDOM_FACTOR, as a ratio (1.5).
    pub const ACK_RANDOM_FACTOR: f64 = 1.5;
    /// MAX_RETRANSMIT.
    pub const MAX_RETRANSMIT: u32 = 4;
    /// EXCHANGE_LIFETIME: how long a message id of a confirmable message stays in use.
    pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
    /// NON_LIFETIME: the same for a non-confirmable message.
    pub const NON_LIFETIME: Duration = Duration::from_secs(145);
}
