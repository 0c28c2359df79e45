//! The one error type of the load generator: everything that can go wrong between this process
//! and the broker, each variant naming the client (`Role`) it happened to.
//!
//! Owns nothing but the wording; it never decides whether an error ends the run (the scenarios
//! do: a failed setup ends it, a connection lost mid-run is reported with the results).

use holdfast_mqtt::{DecodeError, EncodeError};
use std::fmt;
use std::io;
use std::time::Duration;

/// Which of our clients an error belongs to, for messages like "publisher 3: ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The i-th publisher.
    Publisher(u32),
    /// The i-th subscriber.
    Subscriber(u32),
    /// The i-th idle connection.
    Idle(u32),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Publisher(i) => write!(f, "publisher {i}"),
            Role::Subscriber(i) => write!(f, "subscriber {i}"),
            Role::Idle(i) => write!(f, "connection {i}"),
        }
    }
}

/// A failure of one client's connection to the broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// The TCP connection could not be opened.
    #[error("connect to {addr} failed: {err}")]
    Connect {
        /// host:port as given.
        addr: String,
        /// What the OS said.
        err: io::Error,
    },
    /// The TCP connection did not open in time.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// host:port as given.
        addr: String,
        /// How long we waited.
        after: Duration,
    },
    /// The broker answered CONNECT with a non-zero return code.
    #[error("{role}: broker refused the connection (CONNACK code {code:#04x}{hint})")]
    Refused {
        /// Who was refused.
        role: Role,
        /// The CONNACK code as decoded.
        code: u8,
        /// A word on the likely cause.
        hint: &'static str,
    },
    /// The broker refused a subscription.
    #[error("{role}: broker refused the subscription to {filter} (SUBACK code {code:#04x})")]
    SubscribeRefused {
        /// Who subscribed.
        role: Role,
        /// The filter.
        filter: String,
        /// The SUBACK reason.
        code: u8,
    },
    /// The broker closed the connection (EOF), or sent DISCONNECT.
    #[error("{role}: broker closed the connection{detail}")]
    Closed {
        /// Whose connection.
        role: Role,
        /// ", after sending DISCONNECT" and the like; may be empty.
        detail: String,
    },
    /// A socket read or write failed (reset, broken pipe, ...).
    #[error("{role}: network error: {err}")]
    Io {
        /// Whose socket.
        role: Role,
        /// What the OS said.
        err: io::Error,
    },
    /// The broker sent bytes our codec cannot decode.
    #[error("{role}: malformed packet from broker: {err}")]
    Decode {
        /// Whose connection.
        role: Role,
        /// The codec's reason.
        err: DecodeError,
    },
    /// Our own packet could not be encoded (a bad flag value such as an over-long topic).
    #[error("{role}: could not encode {what}: {err}")]
    Encode {
        /// Whose packet.
        role: Role,
        /// Which packet.
        what: &'static str,
        /// The codec's reason.
        err: EncodeError,
    },
    /// The broker did not answer in time.
    #[error("{role}: no {what} from broker within {after:?}")]
    Timeout {
        /// Who waited.
        role: Role,
        /// What we waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The broker answered with a packet that makes no sense at this point.
    #[error("{role}: unexpected {packet} from broker while waiting for {what}")]
    Unexpected {
        /// Who received it.
        role: Role,
        /// The packet's name.
        packet: &'static str,
        /// What we were waiting for.
        what: &'static str,
    },
}

impl BenchError {
    /// Wraps a socket error, calling a reset or broken pipe what it is: the broker closing us.
    pub(crate) fn io(role: Role, err: io::Error) -> BenchError {
        match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => BenchError::Closed {
                role,
                detail: format!(" ({err})"),
            },
            _ => BenchError::Io { role, err },
        }
    }
}
