//! `[[bridges]]`: the upstream links to cloud brokers, as typed config.
//!
//! Owns the bridge schema (keys, defaults, ranges, cross-field rules such as "mqtts needs a CA"
//! and "cert and key come together") and nothing else: it never opens the files it names, never
//! resolves the server's host name and never touches the queue directory.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Node, Value};
use super::units::parse_authority;
use super::validate::{
    boolean, duration, field, integer, path_buf, size, string, topic_filters, Ctx,
};
use holdfast_mqtt::topic;

const MB: u64 = 1024 * 1024;

/// One upstream bridge (`[[bridges]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// Name in logs, `$SYS/brokers/{node}/bridges/{name}/...` and the queue directory
    /// (`{data_dir}/bridges/{name}`); letters, digits, `_`, `-`, `.`; unique. Required.
    pub name: String,
    /// The cloud broker. Required.
    pub server: ServerAddr,
    /// MQTT version spoken upstream ("3.1.1" or "5"). Default "3.1.1".
    pub protocol: BridgeProtocol,
    /// Client id at the cloud broker; stable, so the remote session persists. Default: the
    /// node name.
    pub client_id: String,
    /// Username at the cloud broker. Default none.
    pub username: Option<String>,
    /// Password at the cloud broker (or a token, as Azure IoT Hub wants). Default none.
    pub password: Option<String>,
    /// Put in front of every forwarded topic, and stripped from every downlink topic
    /// (`edge/gw-001/` maps local `sensors/t1` to remote `edge/gw-001/sensors/t1`). Default "".
    pub remote_prefix: String,
    /// Local topic filters whose messages are forwarded upstream (through the disk queue).
    pub forward: Vec<String>,
    /// Remote filters (below `remote_prefix`) subscribed upstream; what arrives is published
    /// locally with the prefix stripped.
    pub subscribe: Vec<String>,
    /// QoS of forwarded messages and downlink subscriptions (0..=2). Default 1.
    pub qos: u8,
    /// Forwarded messages sent and not yet acknowledged by the cloud broker (1..=65535).
    /// Default 256: enough to fill a long link, small enough to bound resends.
    pub max_inflight: u16,
    /// The largest packet the cloud broker takes, for clouds that cannot say so (MQTT 3.1.1;
    /// an MQTT 5 cloud's CONNACK Maximum Packet Size applies too, the smaller wins). A record
    /// larger than this is dead-lettered (counted, logged) instead of blocking the queue.
    /// Default none (AWS IoT Core: "128KB").
    pub max_packet_size: Option<usize>,
    /// Whether QoS 0 messages are queued while the uplink is down (true) or dropped and
    /// counted (false). While it is up they always go through the queue, behind the backlog,
    /// so per-topic order holds whatever the QoS. Default true.
    pub buffer_qos0: bool,
    /// MQTT keepalive upstream (5s..=65535s). Default 30s.
    pub keepalive: Duration,
    /// First reconnect delay; each failed attempt doubles it, up to `backoff_max`, and the
    /// actual wait is drawn uniformly below it (full jitter). Default 1s.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default 2m.
    pub backoff_max: Duration,
    /// The disk queue every forwarded message goes through.
    pub queue: BridgeQueueConfig,
    /// TLS settings; required with `mqtts://`, refused with `mqtt://`.
    pub tls: Option<BridgeTls>,
}

/// Host and port of a cloud broker, and whether to use TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// `mqtts://` (true) or `mqtt://`.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// Port; default 8883 for mqtts, 1883 for mqtt.
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// MQTT version of a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    V5,
}

/// The bridge's store-and-forward queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeQueueConfig {
    /// Cap on queued bytes (payload and record overhead); disk use stays within it plus one
    /// segment. Default 256MB; 1MB..=1TB.
    pub max_bytes: u64,
    /// What happens when the cap is reached. Default drop_oldest.
    pub on_full: QueueOnFull,
    /// When queued messages become durable, and so when devices get their PUBACK.
    pub flush: QueueFlush,
    /// Segment file size: disk is reclaimed a whole segment at a time. Default 16MB;
    /// 64KB..=1GB, at most `max_bytes`.
    pub segment_size: u64,
}

/// What a full bridge queue does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOnFull {
    /// Drop the oldest queued messages (counted and logged) to make room.
    DropOldest,
    /// Refuse the new message: MQTT 5 devices get PUBACK 0x97 (quota exceeded); 3.1.1 devices,
    /// which have no way to hear a refusal, are disconnected so they resend later.
    RejectNew,
}

/// When a bridge queue syncs to disk, and what a power cut can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFlush {
    /// ("group") Appends of all connections share one `fdatasync`; a device's PUBACK/PUBREC is
    /// sent only after the sync that holds its message. Loses nothing acknowledged.
    Group,
    /// ("every") One `fdatasync` per message before its PUBACK. Loses nothing acknowledged;
    /// slowest, most flash wear.
    Every,
    /// ("interval:500ms") Synced at most once per interval and PUBACKed at once: a power cut
    /// or `kill -9` can lose up to one interval (plus one sync) of acknowledged messages. Least
    /// flash wear.
    Interval(Duration),
}

/// TLS towards the cloud broker (rustls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    /// PEM file of the CA certificate(s) that sign the server's certificate. Required.
    pub ca: PathBuf,
    /// PEM client certificate chain for mutual TLS (AWS IoT, Azure IoT Hub). With `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl Default for BridgeQueueConfig {
    fn default() -> BridgeQueueConfig {
        BridgeQueueConfig {
            max_bytes: 256 * MB,
            on_full: QueueOnFull::DropOldest,
            flush: QueueFlush::Group,
            segment_size: 16 * MB,
        }
    }
}

const BRIDGE_KEYS: &[&str] = &[
    "name",
    "server",
    "protocol",
    "client_id",
    "username",
    "password",
    "remote_prefix",
    "forward",
    "subscribe",
    "qos",
    "max_inflight",
    "buffer_qos0",
    "max_packet_size",
    "keepalive",
    "backoff_min",
    "backoff_max",
    "queue",
    "tls",
];

/// Reads `[[bridges]]`; `node_name` is the default client id.
pub(super) fn bridges_section(
    ctx: &mut Ctx<'_>,
    node: &Node,
    node_name: &str,
) -> Vec<BridgeConfig> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            "bridges",
            format!(
                "expected an array of tables ([[bridges]]), found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<BridgeConfig> = Vec::new();
    // Index in the file of each entry of `out` (invalid entries are left out of `out`).
    let mut indices: Vec<usize> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("bridges[{index}]");
        let entries = ctx.open(item, &path, BRIDGE_KEYS, &[]);
        if !matches!(item.value, Value::Table(_)) {
            continue;
        }
        if let Some(bridge) = bridge(ctx, item, entries, &path, node_name) {
            if let Some(first) = out
                .iter()
                .position(|b| b.name == bridge.name)
                .map(|i| indices[i])
            {
                let n = field(entries, "name").unwrap_or(item);
                ctx.report(
                    n,
                    &format!("{path}.name"),
                    format!(
                        "bridge name {:?} is already used by bridges[{first}]",
                        bridge.name
                    ),
                );
            }
            out.push(bridge);
            indices.push(index);
        }
    }
    out
}

fn bridge(
    ctx: &mut Ctx<'_>,
    item: &Node,
    entries: &[(String, Node)],
    path: &str,
    node_name: &str,
) -> Option<BridgeConfig> {
    let before = ctx.problem_count();
    let name = required(
        ctx,
        item,
        entries,
        path,
        "name",
        "name = \"cloud\"",
        |c, n, k| {
            let name = string(c, n, k)?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
                || name.starts_with('.')
            {
                c.report(
                    n,
                    k,
                    format!("{name:?} is not a bridge name (use letters, digits, '_', '-', '.')"),
                );
                return None;
            }
            Some(name)
        },
    );
    let server = required(
        ctx,
        item,
        entries,
        path,
        "server",
        "server = \"mqtts://broker.example.com:8883\"",
        |c, n, k| {
            let text = string(c, n, k)?;
            match parse_server(&text) {
                Ok(s) => Some(s),
                Err(why) => {
                    c.report(n, k, why);
                    None
                }
            }
        },
    );
    let protocol = ctx.get(
        entries,
        path,
        "protocol",
        BridgeProtocol::V311,
        |c, n, k| {
            let text = string(c, n, k)?;
            match text.as_str() {
                "3.1.1" | "4" => Some(BridgeProtocol::V311),
                "5" | "5.0" => Some(BridgeProtocol::V5),
                _ => {
                    c.report(
                        n,
                        k,
                        format!("unknown MQTT version {text:?} (expected \"3.1.1\" or \"5\")"),
                    );
                    None
                }
            }
        },
    );
    let client_id = ctx.get(
        entries,
        path,
        "client_id",
        node_name.to_owned(),
        |c, n, k| {
            let id = string(c, n, k)?;
            if id.is_empty() || id.len() > 65535 {
                c.report(n, k, "must be 1 to 65535 bytes");
                return None;
            }
            Some(id)
        },
    );
    let username = ctx.get(entries, path, "username", None, |c, n, k| {
        string(c, n, k).map(Some)
    });
    let password = ctx.get(entries, path, "password", None, |c, n, k| {
        string(c, n, k).map(Some)
    });
    let remote_prefix = ctx.get(entries, path, "remote_prefix", String::new(), |c, n, k| {
        let prefix = string(c, n, k)?;
        if prefix.contains(['+', '#', '\0']) {
            c.report(
                n,
                k,
                format!("{prefix:?} must not contain '+', '#' or NUL: it starts topic names"),
            );
            return None;
        }
        Some(prefix)
    });
    let filters = |c: &mut Ctx<'_>, n: &Node, k: &str| {
        topic_filters(c, n, k, "shared subscriptions cannot be bridged")
    };
    let forward = ctx.get(entries, path, "forward", Vec::new(), filters);
    let subscribe = ctx.get(entries, path, "subscribe", Vec::new(), filters);
    if forward.is_empty() && subscribe.is_empty() {
        ctx.report(
            item,
            path,
            "a bridge needs at least one `forward` or `subscribe` filter, e.g. forward = [\"sensors/#\"]",
        );
    }
    let qos = ctx.get(entries, path, "qos", 1u8, |c, n, k| integer(c, n, k, 0, 2));
    let max_inflight = ctx.get(entries, path, "max_inflight", 256u16, |c, n, k| {
        integer(c, n, k, 1, 65535)
    });
    let buffer_qos0 = ctx.get(entries, path, "buffer_qos0", true, boolean);
    let max_packet_size = ctx.get(entries, path, "max_packet_size", None, |c, n, k| {
        size(c, n, k, 64, 256 * MB).map(Some)
    });
    if protocol == BridgeProtocol::V311 {
        // MQTT 3.1.1 has no No Local: the cloud would send every forwarded message that a
        // subscribe filter also matches straight back down (an echo to local subscribers).
        for f in &forward {
            if let Some(s) = subscribe.iter().find(|s| topic::filters_overlap(f, s)) {
                let n = field(entries, "subscribe").unwrap_or(item);
                ctx.report(
                    n,
                    &format!("{path}.subscribe"),
                    format!(
                        "subscribe filter {s:?} overlaps forward filter {f:?}: with protocol = \"3.1.1\" the cloud echoes forwarded messages back down (use protocol = \"5\", which sets No Local, or make the filters disjoint)"
                    ),
                );
                break;
            }
        }
    }
    let secs = Duration::from_secs;
    let mut within = |key: &str, default: Duration, min: Duration, max: Duration| {
        ctx.get(entries, path, key, default, |c, n, k| {
            duration(c, n, k, min, max, false)
        })
    };
    let keepalive = within("keepalive", secs(30), secs(5), secs(65535));
    let backoff_min = within(
        "backoff_min",
        secs(1),
        Duration::from_millis(10),
        secs(3600),
    );
    let backoff_max = within(
        "backoff_max",
        secs(120),
        Duration::from_millis(10),
        secs(86_400),
    );
    if backoff_max < backoff_min {
        let n = field(entries, "backoff_max").unwrap_or(item);
        ctx.report(
            n,
            &format!("{path}.backoff_max"),
            "must not be shorter than backoff_min",
        );
    }
    let queue = match field(entries, "queue") {
        Some(n) => queue(ctx, n, &format!("{path}.queue")),
        None => BridgeQueueConfig::default(),
    };
    let tls = match field(entries, "tls") {
        Some(n) => tls(ctx, n, &format!("{path}.tls")),
        None => None,
    };
    if let Some(server) = &server {
        let at = field(entries, "server").unwrap_or(item);
        if server.tls && tls.is_none() && field(entries, "tls").is_none() {
            ctx.report(
                at,
                &format!("{path}.server"),
                "mqtts:// needs a [bridges.tls] table with at least `ca` (the CA that signs the server's certificate)",
            );
        }
        if !server.tls && field(entries, "tls").is_some() {
            ctx.report(
                at,
                &format!("{path}.server"),
                "a tls table is set but the server is mqtt:// (use mqtts:// for TLS)",
            );
        }
    }
    if ctx.problem_count() != before {
        return None;
    }
    Some(BridgeConfig {
        name: name?,
        server: server?,
        protocol,
        client_id,
        username,
        password,
        remote_prefix,
        forward,
        subscribe,
        qos,
        max_inflight,
        max_packet_size,
        buffer_qos0,
        keepalive,
        backoff_min,
        backoff_max,
        queue,
        tls,
    })
}

/// A field without a default: reports `is required, e.g. {example}` when missing.
fn required<'n, T>(
    ctx: &mut Ctx<'_>,
    item: &Node,
    entries: &'n [(String, Node)],
    path: &str,
    key: &str,
    example: &str,
    convert: impl FnOnce(&mut Ctx<'_>, &'n Node, &str) -> Option<T>,
) -> Option<T> {
    let full = format!("{path}.{key}");
    match field(entries, key) {
        Some(n) => convert(ctx, n, &full),
        None => {
            ctx.report(item, &full, format!("is required, e.g. {example}"));
            None
        }
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; IPv6 hosts in brackets.
pub(crate) fn parse_server(text: &str) -> Result<ServerAddr, String> {
    let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!(
            "{text:?} is not a server address (expected mqtt://HOST:PORT or mqtts://HOST:PORT)"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = parse_authority(text, rest, default_port)?;
    Ok(ServerAddr { tls, host, port })
}

fn queue(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> BridgeQueueConfig {
    let d = BridgeQueueConfig::default();
    let entries = ctx.open(
        node,
        path,
        &["max_bytes", "on_full", "flush", "segment_size"],
        &[],
    );
    let max_bytes = ctx.get(entries, path, "max_bytes", d.max_bytes, |c, n, k| {
        size(c, n, k, MB, 1024 * 1024 * MB)
    });
    let on_full = ctx.get(entries, path, "on_full", d.on_full, |c, n, k| {
        let text = string(c, n, k)?;
        match text.as_str() {
            "drop_oldest" => Some(QueueOnFull::DropOldest),
            "reject_new" => Some(QueueOnFull::RejectNew),
            _ => {
                c.report(
                    n,
                    k,
                    format!("unknown policy {text:?} (expected drop_oldest or reject_new)"),
                );
                None
            }
        }
    });
    let flush = ctx.get(entries, path, "flush", d.flush, |c, n, k| {
        let text = string(c, n, k)?;
        match parse_flush(&text) {
            Ok(f) => Some(f),
            Err(why) => {
                c.report(n, k, why);
                None
            }
        }
    });
    let segment_size = ctx.get(entries, path, "segment_size", d.segment_size, |c, n, k| {
        size(c, n, k, 64 * 1024, 1024 * MB)
    });
    if segment_size > max_bytes {
        let n = field(entries, "segment_size").unwrap_or(node);
        ctx.report(
            n,
            &format!("{path}.segment_size"),
            "must not be larger than max_bytes",
        );
    }
    BridgeQueueConfig {
        max_bytes,
        on_full,
        flush,
        segment_size,
    }
}

/// `group`, `every` or `interval:DURATION` (1ms..=60s).
pub(crate) fn parse_flush(text: &str) -> Result<QueueFlush, String> {
    match text {
        "group" => return Ok(QueueFlush::Group),
        "every" => return Ok(QueueFlush::Every),
        _ => {}
    }
    let Some(interval) = text.strip_prefix("interval:") else {
        return Err(format!(
            "unknown flush mode {text:?} (expected \"group\", \"every\" or \"interval:500ms\")"
        ));
    };
    match super::units::parse_duration(interval) {
        Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(60) => {
            Ok(QueueFlush::Interval(d))
        }
        Ok(_) => Err(format!("{text:?}: the interval must be 1ms..60s")),
        Err(why) => Err(format!("{text:?}: {why}")),
    }
}

fn tls(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<BridgeTls> {
    let entries = ctx.open(node, path, &["ca", "cert", "key"], &[]);
    let Some(ca_node) = field(entries, "ca") else {
        if matches!(node.value, Value::Table(_)) {
            ctx.report(
                node,
                &format!("{path}.ca"),
                "is required: the PEM file of the CA that signs the server's certificate",
            );
        }
        return None;
    };
    let ca = path_buf(ctx, ca_node, &format!("{path}.ca"));
    let cert = ctx.get(entries, path, "cert", None, |c, n, k| {
        path_buf(c, n, k).map(Some)
    });
    let key = ctx.get(entries, path, "key", None, |c, n, k| {
        path_buf(c, n, k).map(Some)
    });
    if cert.is_some() != key.is_some() {
        ctx.report(
            node,
            path,
            "cert and key go together (mutual TLS needs both, plain TLS neither)",
        );
        return None;
    }
    Some(BridgeTls { ca: ca?, cert, key })
}

impl QueueFlush {
    /// The word used in the config file.
    pub fn describe(&self) -> String {
        match self {
            QueueFlush::Group => "group".to_owned(),
            QueueFlush::Every => "every".to_owned(),
            QueueFlush::Interval(d) => format!("interval:{}", super::units::format_duration(*d)),
        }
    }
}
