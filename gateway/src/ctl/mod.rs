//! `holdfast ctl`: the local control API of a running gateway and its command-line client.
//!
//! Owns the wire protocol: one JSON [`Request`] line in, one JSON line out, over a Unix socket
//! (`{data_dir}/ctl.sock`, mode 0600). A success is a JSON object without an `error` key; a
//! failure is `{"error": "..."}`. The server ([`server`]) answers through the operations layer
//! ([`crate::ops`]) and never reaches into the router itself; the client ([`client`]) only
//! formats what the server says.

pub mod client;
pub mod server;

use crate::trace::TraceKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The largest request line the server reads; a longer one is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "ctl.sock";

/// Where a gateway with `data_dir` listens.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// One request to the control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Listener counters.
    Listeners,
    /// Every session.
    Clients,
    /// One session and its subscriptions.
    Client {
        /// The client id.
        client_id: String,
    },
    /// Close one client's connection (DISCONNECT 0x98).
    Kick {
        /// The client id.
        client_id: String,
    },
    /// Every subscription.
    Subscriptions,
    /// Every retained message (topic and size).
    Retained,
    /// Broker statistics.
    Stats,
    /// Bridge states and queues.
    Bridges,
    /// The CoAP gateway's clients (address, mode, observations) and counters.
    Coap,
    /// The LwM2M server's endpoints (lifetime, binding, objects, last seen) and counters.
    Lwm2m,
    /// The Modbus pollers' devices (state, last poll, latency, errors by kind) and counters.
    Modbus,
    /// The raw serial ports (state, frames and bytes each way, reopenings) and counters.
    Serial,
    /// Reload the auth files.
    Reload,
    /// Whether a config applied from the web UI waits for its confirm, and until when.
    ConfigStatus,
    /// Keep the config applied from the web UI (ends its probation; no roll back).
    ConfigConfirm,
    /// Start writing one client's, topic's or address's log lines (debug included) to a file.
    TraceStart {
        /// What to follow.
        kind: TraceKind,
        /// The client id, topic filter, or address/CIDR network.
        value: String,
        /// Absolute path of the file.
        file: PathBuf,
        /// Size limit of the file in bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
    },
    /// Stop the traces of one kind and value, or every trace.
    TraceStop {
        /// Only traces of this kind.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<TraceKind>,
        /// Only the trace of this value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// The running traces.
    TraceList,
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

/// The `{"error": ...}` answer.
pub fn error_response(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_round_trips_through_json() {
        let req = Request::Kick {
            client_id: "dev-1".into(),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"cmd":"kick","client_id":"dev-1"}"#);
        assert_eq!(parse_request(line.as_bytes()).unwrap(), req);
        assert_eq!(
            parse_request(br#"{"cmd":"listeners"}"#).unwrap(),
            Request::Listeners
        );
    }

    #[test]
    fn trace_requests_name_their_kind_in_snake_case() {
        let req = Request::TraceStart {
            kind: TraceKind::Ip,
            value: "10.0.0.0/8".into(),
            file: "/tmp/t.log".into(),
            max_bytes: None,
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"cmd":"trace_start","kind":"ip","value":"10.0.0.0/8","file":"/tmp/t.log"}"#
        );
        assert_eq!(parse_request(line.as_bytes()).unwrap(), req);
        assert_eq!(
            parse_request(br#"{"cmd":"trace_stop"}"#).unwrap(),
            Request::TraceStop {
                kind: None,
                value: None
            }
        );
        assert!(
            parse_request(br#"{"cmd":"trace_start","kind":"mac","value":"x","file":"/t"}"#)
                .is_err()
        );
    }

    #[test]
    fn garbage_unknown_commands_and_missing_fields_are_errors() {
        for bad in [
            &b"hello"[..],
            br#"{"cmd":"format_disk"}"#,
            br#"{"cmd":"kick"}"#,
            b"",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert!(err.starts_with("bad request: "), "{err}");
        }
    }
}
