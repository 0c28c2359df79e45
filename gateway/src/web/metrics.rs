//! `/metrics`: the gateway's numbers in the Prometheus text format (version 0.0.4).
//!
//! Owns the names: `holdfast_` prefix, base units, `_total` for counters, labels for what
//! varies (listener, bridge, reason, device). The numbers are those of `holdfast ctl stats`
//! and `$SYS` (`ops`); this module only renders them. Never changes state.

use crate::broker::Broker;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One sample: its labels and value (rendered).
type Sample = (Vec<(String, String)>, String);

/// Metric families by name: kind, help, samples.
#[derive(Debug, Default)]
struct Families(BTreeMap<String, (Kind, String, Vec<Sample>)>);

impl Families {
    fn add(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], value: u64) {
        self.add_value(name, kind, help, labels, value.to_string());
    }

    /// A measured quantity (a temperature, a load average); never NaN or infinite here.
    fn add_f64(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        if value.is_finite() {
            self.add_value(name, Kind::Gauge, help, labels, value.to_string());
        }
    }

    fn add_value(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        labels: &[(&str, &str)],
        value: String,
    ) {
        let entry = self
            .0
            .entry(name.to_owned())
            .or_insert_with(|| (kind, help.to_owned(), Vec::new()));
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        entry.2.push((labels, value));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, (kind, help, samples)) in &self.0 {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let inner: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = writeln!(out, "{name}{{{}}} {value}", inner.join(","));
                }
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The broker's own statistics (`ctl stats`): gauges by name, counters with `_total`, the
/// per-reason ones as one family with a `reason` label.
fn broker_stats(f: &mut Families, broker: &Broker) {
    const GAUGES: &[(&str, &str, &str)] = &[
        (
            "connections/count",
            "holdfast_connections",
            "Connections open now.",
        ),
        (
            "sessions/count",
            "holdfast_sessions",
            "Sessions held (connected or not).",
        ),
        (
            "sessions/connected",
            "holdfast_sessions_connected",
            "Sessions with a connected client.",
        ),
        (
            "subscriptions/count",
            "holdfast_subscriptions",
            "Subscriptions.",
        ),
        (
            "subscriptions/bytes",
            "holdfast_subscriptions_bytes",
            "Bytes of subscription filters.",
        ),
        (
            "retained/count",
            "holdfast_retained_messages",
            "Retained messages.",
        ),
        (
            "messages/queued",
            "holdfast_messages_queued",
            "Messages waiting in session queues.",
        ),
        (
            "messages/inflight",
            "holdfast_messages_inflight",
            "Deliveries awaiting acknowledgement.",
        ),
        (
            "messages/held_bytes",
            "holdfast_messages_held_bytes",
            "Bytes of messages held for sessions.",
        ),
        (
            "uptime_seconds",
            "holdfast_uptime_seconds",
            "Seconds since the gateway started.",
        ),
        (
            "clock/synchronized",
            "holdfast_clock_synchronized",
            "1 when the system clock is synchronized.",
        ),
    ];
    for (key, value) in crate::ops::stats(broker) {
        if let Some((_, name, help)) = GAUGES.iter().find(|(k, _, _)| *k == key) {
            f.add(name, Kind::Gauge, help, &[], value);
        } else if let Some(reason) = key.strip_prefix("messages/dropped/") {
            f.add(
                "holdfast_messages_dropped_total",
                Kind::Counter,
                "Messages dropped, by reason.",
                &[("reason", reason)],
                value,
            );
        } else if let Some(reason) = key.strip_prefix("logins/refused_") {
            f.add(
                "holdfast_logins_refused_total",
                Kind::Counter,
                "MQTT logins refused before the password check, by reason.",
                &[("reason", reason)],
                value,
            );
        } else if key == "messages/dropped" {
            // The sum of the per-reason family: left out (Prometheus sums it).
        } else {
            let name = match key {
                "bytes/received" => "holdfast_received_bytes_total".to_owned(),
                "bytes/sent" => "holdfast_sent_bytes_total".to_owned(),
                other => format!("holdfast_{}_total", other.replace('/', "_")),
            };
            f.add(
                &name,
                Kind::Counter,
                &format!("The `{key}` counter of `holdfast ctl stats`."),
                &[],
                value,
            );
        }
    }
}

fn listeners(f: &mut Families, broker: &Broker) {
    for l in crate::ops::listeners(broker) {
        let name = l.name.as_str();
        f.add(
            "holdfast_listener_connections",
            Kind::Gauge,
            "Connections open now, by listener.",
            &[("listener", name)],
            l.current_conn as u64,
        );
        f.add(
            "holdfast_listener_max_connections",
            Kind::Gauge,
            "Configured connection cap, by listener.",
            &[("listener", name)],
            l.max_conns as u64,
        );
        f.add(
            "holdfast_listener_accepted_total",
            Kind::Counter,
            "Connections accepted, by listener.",
            &[("listener", name)],
            l.accepted,
        );
        f.add(
            "holdfast_listener_refused_total",
            Kind::Counter,
            "Connections refused at accept (cap or rate), by listener.",
            &[("listener", name)],
            l.refused,
        );
        f.add(
            "holdfast_listener_handshake_failed_total",
            Kind::Counter,
            "Failed TLS handshakes or WebSocket upgrades, by listener.",
            &[("listener", name)],
            l.handshake_failed,
        );
        for (reason, n) in &l.shutdown_count {
            f.add(
                "holdfast_listener_disconnects_total",
                Kind::Counter,
                "Connections ended, by listener and reason.",
                &[("listener", name), ("reason", reason)],
                *n,
            );
        }
    }
}

fn bridges(f: &mut Families, broker: &Broker) {
    for b in crate::ops::bridges(broker) {
        let name = b.name.as_str();
        f.add(
            "holdfast_bridge_up",
            Kind::Gauge,
            "1 while the bridge's link is up.",
            &[("bridge", name)],
            u64::from(b.state == "up"),
        );
        f.add(
            "holdfast_bridge_queued_messages",
            Kind::Gauge,
            "Messages waiting in the bridge's queue.",
            &[("bridge", name)],
            b.queued,
        );
        f.add(
            "holdfast_bridge_queued_bytes",
            Kind::Gauge,
            "Bytes waiting in the bridge's queue.",
            &[("bridge", name)],
            b.queued_bytes,
        );
        f.add(
            "holdfast_bridge_forwarded_total",
            Kind::Counter,
            "Messages the cloud broker acknowledged.",
            &[("bridge", name)],
            b.forwarded,
        );
        f.add(
            "holdfast_bridge_reconnects_total",
            Kind::Counter,
            "Times the bridge's link reconnected.",
            &[("bridge", name)],
            b.reconnects,
        );
    }
}

/// A device gateway's counters (`ctl coap` ...): the listed names are gauges, the rest
/// counters.
fn gateway(f: &mut Families, which: &str, stats: Vec<(&'static str, u64)>, gauges: &[&str]) {
    for (key, value) in stats {
        if gauges.contains(&key) {
            f.add(
                &format!("holdfast_{which}_{key}"),
                Kind::Gauge,
                &format!("{which}: {key} now."),
                &[],
                value,
            );
        } else {
            f.add(
                &format!("holdfast_{which}_{key}_total"),
                Kind::Counter,
                &format!("{which}: {key}."),
                &[],
                value,
            );
        }
    }
}

fn modbus_devices(f: &mut Families, broker: &Broker) {
    let Some(view) = crate::ops::modbus(broker) else {
        return;
    };
    for d in view.devices {
        let name = d.name.as_str();
        f.add(
            "holdfast_modbus_device_up",
            Kind::Gauge,
            "1 while the Modbus device answers its polls.",
            &[("device", name)],
            u64::from(d.state == "ok"),
        );
        f.add(
            "holdfast_modbus_device_polls_total",
            Kind::Counter,
            "Polls of the Modbus device.",
            &[("device", name)],
            d.polls,
        );
        for (kind, n) in &d.errors {
            f.add(
                "holdfast_modbus_device_errors_total",
                Kind::Counter,
                "Failed Modbus reads, by device and kind.",
                &[("device", name), ("kind", kind)],
                *n,
            );
        }
    }
    gateway(f, "modbus", view.stats, &["devices", "devices_failing"]);
}

/// The board's health and status, as the board task publishes them (`$SYS/.../board/health`,
/// `status`, `alarms`); absent readings are left out, not zero.
fn board(f: &mut Families, board: &serde_json::Map<String, serde_json::Value>) {
    let health = board.get("health");
    let number = |key: &str| {
        health
            .and_then(|h| h.get(key))
            .and_then(serde_json::Value::as_f64)
    };
    let gauges = [
        (
            "cpu_temp_celsius",
            "holdfast_board_cpu_temperature_celsius",
            "Hottest thermal zone.",
        ),
        (
            "mem_total_bytes",
            "holdfast_board_memory_total_bytes",
            "Memory of the board.",
        ),
        (
            "mem_available_bytes",
            "holdfast_board_memory_available_bytes",
            "Memory that can be allocated without swapping.",
        ),
        (
            "data_dir_free_bytes",
            "holdfast_board_data_disk_free_bytes",
            "Space left in the data directory's file system.",
        ),
        (
            "data_dir_total_bytes",
            "holdfast_board_data_disk_size_bytes",
            "Size of the data directory's file system.",
        ),
        (
            "uptime_seconds",
            "holdfast_board_uptime_seconds",
            "Time since the board booted.",
        ),
        (
            "process_rss_bytes",
            "holdfast_process_resident_memory_bytes",
            "The gateway's resident set size.",
        ),
    ];
    for (key, name, help) in gauges {
        if let Some(v) = number(key) {
            f.add_f64(name, help, &[], v);
        }
    }
    if let Some(load) = health
        .and_then(|h| h.get("load"))
        .and_then(|l| l.as_array())
    {
        for (window, v) in ["1m", "5m", "15m"].iter().zip(load) {
            if let Some(v) = v.as_f64() {
                f.add_f64(
                    "holdfast_board_load_average",
                    "Load average.",
                    &[("window", window)],
                    v,
                );
            }
        }
    }
    if let Some(status) = board.get("status").and_then(|s| s.as_str()) {
        f.add(
            "holdfast_board_status",
            Kind::Gauge,
            "The board's state (1 for the current one).",
            &[("status", status)],
            1,
        );
    }
    if let Some(alarms) = board.get("alarms").and_then(|a| a.as_array()) {
        f.add(
            "holdfast_board_alarms",
            Kind::Gauge,
            "Alarms standing now.",
            &[],
            alarms.len() as u64,
        );
    }
}

/// The whole page; `board` is what `/api/v1/board` shows, `data_dir_bytes` the size of the
/// data directory (queues, state, traces), when it could be measured.
pub(super) fn render(
    broker: &Broker,
    board_reports: &serde_json::Map<String, serde_json::Value>,
    data_dir_bytes: Option<u64>,
) -> String {
    let mut f = Families::default();
    board(&mut f, board_reports);
    if let Some(bytes) = data_dir_bytes {
        f.add(
            "holdfast_data_dir_bytes",
            Kind::Gauge,
            "Bytes the gateway keeps in its data directory (queues, state, traces).",
            &[],
            bytes,
        );
    }
    broker_stats(&mut f, broker);
    listeners(&mut f, broker);
    bridges(&mut f, broker);
    if let Some(v) = crate::ops::coap(broker) {
        gateway(&mut f, "coap", v.stats, &["peers"]);
    }
    if let Some(v) = crate::ops::lwm2m(broker) {
        gateway(&mut f, "lwm2m", v.stats, &["endpoints"]);
    }
    modbus_devices(&mut f, broker);
    if let Some(v) = crate::ops::serial(broker) {
        gateway(&mut f, "serial", v.stats, &["ports", "ports_open"]);
    }
    f.render()
}

/// Files walked at most to size the data directory (a scrape must stay cheap).
const MAX_FILES: usize = 100_000;

/// The bytes of the files under `dir` (symbolic links not followed); `None` when it cannot be
/// read or holds more than [`MAX_FILES`] entries.
pub(super) fn dir_size(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            seen += 1;
            if seen > MAX_FILES {
                return None;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let mut f = Families::default();
        f.add(
            "holdfast_x_total",
            Kind::Counter,
            "X.",
            &[("reason", "a\"b")],
            3,
        );
        f.add(
            "holdfast_x_total",
            Kind::Counter,
            "X.",
            &[("reason", "c")],
            4,
        );
        f.add("holdfast_g", Kind::Gauge, "G.", &[], 1);
        assert_eq!(
            f.render(),
            "# HELP holdfast_g G.\n# TYPE holdfast_g gauge\nholdfast_g 1\n\
             # HELP holdfast_x_total X.\n# TYPE holdfast_x_total counter\n\
             holdfast_x_total{reason=\"a\\\"b\"} 3\nholdfast_x_total{reason=\"c\"} 4\n"
        );
    }
}
