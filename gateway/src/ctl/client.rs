//! The `holdfast ctl` client: sends one request to the control socket and formats the answer.
//!
//! Owns the human-readable tables. It is blocking and short-lived (one process per command);
//! it never interprets more than it prints, so the JSON (`--json`) stays the contract.

use super::Request;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the client waits for the gateway's answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a ctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No gateway answers on the socket (not running, or another data dir).
    #[error("cannot reach the gateway at {}: {source}", path.display())]
    Unreachable {
        /// The socket tried.
        path: PathBuf,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-request.
    #[error("talking to the gateway at {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer was not JSON.
    #[error("the gateway sent an answer that is not JSON: {0}")]
    BadAnswer(String),
    /// The gateway refused the request (`{"error": ...}`).
    #[error("{0}")]
    Refused(String),
}

/// Sends `req` to the gateway listening at `path` and returns its answer.
pub fn request(path: &Path, req: &Request) -> Result<Value, CtlError> {
    let io = |source| CtlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| CtlError::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| CtlError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    let value: Value =
        serde_json::from_str(answer.trim()).map_err(|e| CtlError::BadAnswer(e.to_string()))?;
    if let Some(error) = value.get("error") {
        let error = error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(CtlError::Refused(error));
    }
    Ok(value)
}

/// The answer to `req` as text for a terminal.
pub fn format(req: &Request, answer: &Value) -> String {
    match req {
        Request::Listeners => {
            let rows = answer["listeners"].as_array().cloned().unwrap_or_default();
            let mut out = table(
                &[
                    "NAME",
                    "LISTEN_ON",
                    "RUNNING",
                    "CURRENT_CONN",
                    "MAX_CONNS",
                    "SHUTDOWN_COUNT",
                ],
                rows.iter().map(|l| {
                    vec![
                        text(&l["name"]),
                        text(&l["listen_on"]),
                        text(&l["running"]),
                        text(&l["current_conn"]),
                        text(&l["max_conns"]),
                        nonzero_counts(&l["shutdown_count"]),
                    ]
                }),
            );
            out.push_str(&format!("{} listener(s)\n", rows.len()));
            out
        }
        Request::Clients => listing(
            &answer["clients"],
            "client(s)",
            &[
                "CLIENT_ID",
                "USERNAME",
                "PEER",
                "PROTO",
                "VER",
                "CONNECTED",
                "QUEUED",
                "INFLIGHT",
            ],
            &[
                "client_id",
                "username",
                "peer",
                "proto_name",
                "protocol",
                "connected",
                "queued",
                "inflight",
            ],
        ),
        Request::Client { .. } => {
            let c = &answer["client"];
            let mut out = String::new();
            for key in [
                "client_id",
                "username",
                "peer",
                "proto_name",
                "protocol",
                "connected",
                "connected_at",
                "queued",
                "inflight",
            ] {
                out.push_str(&format!("{key:<14}{}\n", text(&c[key])));
            }
            let subs = answer["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            out.push_str(&format!("subscriptions ({}):\n", subs.len()));
            for s in subs {
                out.push_str(&format!(
                    "  {}  qos {}\n",
                    text(&s["filter"]),
                    text(&s["qos"])
                ));
            }
            out
        }
        Request::Kick { .. } => format!("kicked {}\n", text(&answer["kicked"])),
        Request::Subscriptions => listing(
            &answer["subscriptions"],
            "subscription(s)",
            &["CLIENT_ID", "FILTER", "QOS"],
            &["client_id", "filter", "qos"],
        ),
        Request::Retained => listing(
            &answer["retained"],
            "retained message(s)",
            &["TOPIC", "PAYLOAD_SIZE", "QOS"],
            &["topic", "payload_size", "qos"],
        ),
        Request::Stats => {
            let mut out = String::new();
            if let Some(stats) = answer["stats"].as_object() {
                let width = stats.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in stats {
                    out.push_str(&format!("{k:<width$}  {}\n", text(v)));
                }
            }
            out
        }
        Request::Bridges => {
            let rows = answer["bridges"].as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                return "no bridges configured\n".to_owned();
            }
            table(
                &[
                    "NAME",
                    "STATE",
                    "QUEUED",
                    "QUEUED_BYTES",
                    "FORWARDED",
                    "RECONNECTS",
                    "LAST_ERROR",
                ],
                rows.iter().map(|b| {
                    [
                        "name",
                        "state",
                        "queued",
                        "queued_bytes",
                        "forwarded",
                        "reconnects",
                        "last_error",
                    ]
                    .iter()
                    .map(|k| text(&b[*k]))
                    .collect()
                }),
            )
        }
        Request::Coap => {
            let rows = answer["peers"].as_array().cloned().unwrap_or_default();
            let mut out = table(
                &["CLIENT_ID", "PEER", "MODE", "OBSERVING", "IDLE_S"],
                rows.iter().map(|p| {
                    let mode = if p["connection_mode"].as_bool() == Some(true) {
                        "connection"
                    } else {
                        "connectionless"
                    };
                    let observing: Vec<String> = p["observing"]
                        .as_array()
                        .map(|a| a.iter().map(text).collect())
                        .unwrap_or_default();
                    vec![
                        text(&p["client_id"]),
                        text(&p["peer"]),
                        mode.to_owned(),
                        observing.join(","),
                        text(&p["idle_seconds"]),
                    ]
                }),
            );
            if let Some(stats) = answer["stats"].as_object() {
                out.push('\n');
                for (k, v) in stats {
                    out.push_str(&format!("{k:<22}  {}\n", text(v)));
                }
            }
            out
        }
        Request::Lwm2m => {
            let rows = answer["endpoints"].as_array().cloned().unwrap_or_default();
            let mut out = table(
                &[
                    "ENDPOINT",
                    "PEER",
                    "LIFETIME",
                    "EXPIRES_IN",
                    "BINDING",
                    "LWM2M",
                    "LAST_SEEN_S",
                    "OBJECTS",
                ],
                rows.iter().map(|e| {
                    let objects: Vec<String> = e["objects"]
                        .as_array()
                        .map(|a| a.iter().map(text).collect())
                        .unwrap_or_default();
                    vec![
                        text(&e["ep"]),
                        text(&e["peer"]),
                        text(&e["lifetime"]),
                        text(&e["expires_in"]),
                        text(&e["binding"]),
                        text(&e["lwm2m"]),
                        text(&e["last_seen_seconds"]),
                        objects.join(","),
                    ]
                }),
            );
            if let Some(stats) = answer["stats"].as_object() {
                out.push('\n');
                for (k, v) in stats {
                    out.push_str(&format!("{k:<22}  {}\n", text(v)));
                }
            }
            out
        }
        Request::Modbus => {
            let rows = answer["devices"].as_array().cloned().unwrap_or_default();
            let mut out = table(
                &[
                    "DEVICE",
                    "LINE",
                    "UNIT",
                    "STATE",
                    "POINTS",
                    "READS",
                    "POLLS",
                    "LATENCY_MS",
                    "LATE_P99_MS",
                    "ERRORS",
                    "LAST_ERROR",
                ],
                rows.iter().map(|d| {
                    let errors: Vec<String> = d["errors"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
                        .unwrap_or_default();
                    vec![
                        text(&d["name"]),
                        text(&d["line"]),
                        text(&d["unit_id"]),
                        text(&d["state"]),
                        text(&d["points"]),
                        text(&d["reads_per_poll"]),
                        text(&d["polls"]),
                        format!("{:.1}", d["last_latency_ms"].as_f64().unwrap_or(0.0)),
                        format!("{:.1}", d["lateness_p99_ms"].as_f64().unwrap_or(0.0)),
                        errors.join(","),
                        d["last_error"][1].as_str().unwrap_or("").to_owned(),
                    ]
                }),
            );
            if let Some(stats) = answer["stats"].as_object() {
                out.push('\n');
                for (k, v) in stats {
                    out.push_str(&format!("{k:<22}  {}\n", text(v)));
                }
            }
            out
        }
        Request::Serial => {
            let rows = answer["ports"].as_array().cloned().unwrap_or_default();
            let mut out = table(
                &[
                    "PORT",
                    "PATH",
                    "STATE",
                    "RX_FRAMES",
                    "RX_BYTES",
                    "TX_FRAMES",
                    "TX_BYTES",
                    "OVERSIZED",
                    "OPENS",
                    "LAST_ERROR",
                ],
                rows.iter().map(|p| {
                    [
                        "name",
                        "port",
                        "state",
                        "rx_frames",
                        "rx_bytes",
                        "tx_frames",
                        "tx_bytes",
                        "oversized",
                        "opens",
                        "last_error",
                    ]
                    .iter()
                    .map(|k| text(&p[*k]))
                    .collect()
                }),
            );
            if let Some(stats) = answer["stats"].as_object() {
                out.push('\n');
                for (k, v) in stats {
                    out.push_str(&format!("{k:<22}  {}\n", text(v)));
                }
            }
            out
        }
        Request::TraceStart { .. } => {
            let t = &answer["started"];
            format!(
                "tracing {} {} into {}\n",
                text(&t["kind"]),
                text(&t["value"]),
                text(&t["file"])
            )
        }
        Request::TraceStop { .. } => {
            let mut out = trace_rows(&answer["stopped"]);
            out.push_str("stopped\n");
            out
        }
        Request::TraceList => {
            let n = answer["traces"].as_array().map_or(0, Vec::len);
            let mut out = if n == 0 {
                String::new()
            } else {
                trace_rows(&answer["traces"])
            };
            out.push_str(&format!("{n} trace(s) running\n"));
            out
        }
        Request::ConfigStatus => {
            let mut out = format!("{:<11}{}\n", "file", text(&answer["file"]));
            let p = &answer["probation"];
            match p["confirm_by"].as_u64() {
                Some(by) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    out.push_str(&format!(
                        "{:<11}applied from the web UI: rolled back in {}s unless confirmed \
                         (holdfast ctl config confirm), to version {}\n",
                        "probation",
                        by.saturating_sub(now),
                        text(&p["previous"]),
                    ));
                }
                None => out.push_str(&format!(
                    "{:<11}none: the running config is kept\n",
                    "probation"
                )),
            }
            out
        }
        Request::ConfigConfirm => "confirmed: the applied config is kept\n".to_owned(),
        Request::Reload => {
            let r = &answer["reload"];
            let mut out = String::new();
            for key in ["password_file", "clientid_allowlist", "acl_file"] {
                out.push_str(&format!("{key:<20}{}\n", text(&r[key])));
            }
            out
        }
    }
}

fn trace_rows(rows: &Value) -> String {
    let list = rows.as_array().cloned().unwrap_or_default();
    table(
        &[
            "KIND",
            "VALUE",
            "FILE",
            "LINES",
            "DROPPED_BEHIND",
            "DROPPED_SIZE",
        ],
        list.iter().map(|t| {
            [
                "kind",
                "value",
                "file",
                "lines",
                "dropped_queue_full",
                "dropped_size_limit",
            ]
            .iter()
            .map(|k| text(&t[*k]))
            .collect()
        }),
    )
}

/// A bounded listing (`{"rows": [...], "total": n, "truncated": bool}`) as a table.
fn listing(rows: &Value, noun: &str, headers: &[&str], keys: &[&str]) -> String {
    let list = rows["rows"].as_array().cloned().unwrap_or_default();
    let mut out = table(
        headers,
        list.iter()
            .map(|r| keys.iter().map(|k| text(&r[*k])).collect()),
    );
    let total = rows["total"].as_u64().unwrap_or(list.len() as u64);
    if rows["truncated"].as_bool() == Some(true) {
        out.push_str(&format!(
            "showing the first {} of {total} {noun} (truncated; --json has the same limit)\n",
            list.len()
        ));
    } else {
        out.push_str(&format!("{total} {noun}\n"));
    }
    out
}

/// A JSON value as a table cell: strings bare, null as "-".
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{"kicked": 1, "normal": 0}` as "kicked=1" (zeros left out, "-" when all are zero).
fn nonzero_counts(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(",")
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listeners_show_as_a_table_with_nonzero_shutdown_counts() {
        let answer = json!({"listeners": [{
            "name": "tcp:default", "listen_on": "127.0.0.1:1883", "running": true,
            "current_conn": 1, "max_conns": 100, "shutdown_count": {"kicked": 1, "normal": 0}
        }]});
        let out = format(&Request::Listeners, &answer);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME         LISTEN_ON"), "{out}");
        assert!(lines[1].contains("tcp:default"), "{out}");
        assert!(lines[1].ends_with("kicked=1"), "{out}");
        assert_eq!(lines[2], "1 listener(s)");
    }

    #[test]
    fn a_truncated_listing_says_so() {
        let answer = json!({"retained": {"rows": [{"topic": "a", "payload_size": 3, "qos": 0}],
            "total": 20000, "truncated": true}});
        let out = format(&Request::Retained, &answer);
        assert!(out.contains("a      3"), "{out}");
        assert!(out.contains("showing the first 1 of 20000"), "{out}");
    }

    #[test]
    fn missing_values_show_as_a_dash() {
        let answer = json!({"clients": {"rows": [{"client_id": "c1", "username": null,
            "peer": "127.0.0.1:5000", "protocol": 5, "connected": true, "queued": 0,
            "inflight": 0}], "total": 1, "truncated": false}});
        let out = format(&Request::Clients, &answer);
        assert!(
            out.lines().nth(1).unwrap().starts_with("c1         -"),
            "{out}"
        );
        assert!(out.ends_with("1 client(s)\n"), "{out}");
    }

    #[test]
    fn an_absent_socket_is_a_clear_unreachable_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let err = request(&path, &Request::Stats).unwrap_err();
        assert!(matches!(err, CtlError::Unreachable { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot reach the gateway at {}: ", path.display())));
    }
}
