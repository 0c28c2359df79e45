//! Raw tree -> typed [`Config`], reporting every problem with its key and location.
//!
//! Owns the schema: which keys exist, their types, ranges and defaults, and the cross-field
//! rules (listener names and binds unique). It never stops at the first problem: each field
//! falls back to its default after reporting, so one run lists everything wrong with a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Node, Source, Value};
use super::units::{
    format_duration, format_size, parse_duration, parse_rate, parse_size, RateUnit,
};
use super::{
    AclNomatch, AuthConfig, BoardConfig, BoardKind, CertIdentity, Config, JwtConfig,
    ListenerConfig, ListenerKind, ListenerTls, LogConfig, MqttConfig, MqueueFull, NodeConfig,
    OwnerMismatch, Problem, RateLimit, SharedStrategy, DEFAULTS_ORIGIN,
};
use holdfast_mqtt::topic;

/// Sections of the design that this build does not implement yet.
const UNSUPPORTED_SECTIONS: &[&str] = &[];

const KB: u64 = 1024;
const MB: u64 = 1024 * 1024;
/// MQTT's Remaining Length tops out just under 256MB; the packet-size limits stop there.
const MQTT_MAX_PACKET: u64 = 256 * MB;

/// When the tree has no `listeners`, puts in the default one (tcp on 0.0.0.0:1883), so that
/// environment overrides such as `HOLDFAST__LISTENERS__0__BIND` apply on top of the defaults.
pub(crate) fn insert_default_listener(root: &mut Node) {
    if let Value::Table(entries) = &mut root.value {
        if entries.iter().any(|(k, _)| k == "listeners") {
            return;
        }
        let scalar = |value: &str| Node {
            value: Value::Str(value.to_owned()),
            source: Source::Default,
        };
        let listener = Node {
            value: Value::Table(vec![
                ("kind".to_owned(), scalar("tcp")),
                ("bind".to_owned(), scalar("0.0.0.0:1883")),
            ]),
            source: Source::Default,
        };
        entries.push((
            "listeners".to_owned(),
            Node {
                value: Value::Array(vec![listener]),
                source: Source::Default,
            },
        ));
    }
}

/// Validates the whole tree. Returns a config only if no problem at all was found (problems
/// already in `problems`, from the environment, count too).
pub(crate) fn validate(root: &Node, origin: &str, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut ctx = Ctx {
        origin,
        problems: Vec::new(),
    };
    let defaults = Config::default();
    let entries = ctx.open(
        root,
        "",
        &[
            "node",
            "mqtt",
            "listeners",
            "auth",
            "log",
            "board",
            "bridges",
            "auto_subscribe",
            "webhooks",
            "coap",
            "lwm2m",
            "modbus",
            "serial",
            "web",
        ],
        &[],
    );
    for (key, node) in entries {
        if UNSUPPORTED_SECTIONS.contains(&key.as_str()) {
            ctx.report(
                node,
                key,
                format!("section [{key}] is not supported by this build yet"),
            );
        }
    }
    let node = match field(entries, "node") {
        Some(n) => node_section(&mut ctx, n),
        None => defaults.node,
    };
    let mqtt = match field(entries, "mqtt") {
        Some(n) => mqtt_section(&mut ctx, n),
        None => defaults.mqtt,
    };
    let listeners = match field(entries, "listeners") {
        Some(n) => listeners_section(&mut ctx, n),
        None => defaults.listeners,
    };
    let auth = match field(entries, "auth") {
        Some(n) => auth_section(&mut ctx, n),
        None => defaults.auth,
    };
    let log = match field(entries, "log") {
        Some(n) => log_section(&mut ctx, n),
        None => defaults.log,
    };
    let board = match field(entries, "board") {
        Some(n) => board_section(&mut ctx, n),
        None => defaults.board,
    };
    let bridges = match field(entries, "bridges") {
        Some(n) => super::bridges::bridges_section(&mut ctx, n, &node.name),
        None => Vec::new(),
    };
    let auto_subscribe = match field(entries, "auto_subscribe") {
        Some(n) => super::auto_subscribe::auto_subscribe_section(&mut ctx, n),
        None => Vec::new(),
    };
    let webhooks = match field(entries, "webhooks") {
        Some(n) => super::webhooks::webhooks_section(&mut ctx, n),
        None => Vec::new(),
    };
    let coap = field(entries, "coap").map(|n| super::coap::coap_section(&mut ctx, n));
    let lwm2m = field(entries, "lwm2m").map(|n| super::lwm2m::lwm2m_section(&mut ctx, n));
    let modbus = field(entries, "modbus").map(|n| super::modbus::modbus_section(&mut ctx, n));
    let rtu_ports: Vec<_> = modbus
        .iter()
        .flat_map(|m| &m.devices)
        .filter_map(|d| match &d.transport {
            super::ModbusTransport::Rtu(line) => Some((line.port.clone(), d.name.clone())),
            super::ModbusTransport::Tcp(_) => None,
        })
        .collect();
    let serial =
        field(entries, "serial").map(|n| super::serial::serial_section(&mut ctx, n, &rtu_ports));
    let web = field(entries, "web").map(|n| super::web::web_section(&mut ctx, n));
    // File problems first, in line order; then those of overrides (and of built-in values),
    // in the order met; then the variables whose names could not be applied.
    let env_problems = std::mem::replace(problems, ctx.problems);
    problems.extend(env_problems);
    problems.sort_by_key(|p| p.line.map_or((1, 0), |line| (0, line)));
    if !problems.is_empty() {
        return None;
    }
    Some(Config {
        node,
        mqtt,
        listeners,
        auth,
        log,
        board,
        bridges,
        auto_subscribe,
        webhooks,
        coap,
        lwm2m,
        modbus,
        serial,
        web,
    })
}

/// Collects problems while the validator walks the tree.
pub(super) struct Ctx<'a> {
    /// The file's name, for problems at a file line.
    origin: &'a str,
    /// Problems found so far.
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    /// Problems reported so far (to tell whether a part of the tree was clean).
    pub(super) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    /// Records a problem about `node` at key path `key`.
    pub(super) fn report(&mut self, node: &Node, key: &str, message: impl Into<String>) {
        let (origin, line) = match &node.source {
            Source::File(line) => (self.origin.to_owned(), Some(*line)),
            Source::Env { var, .. } => (var.clone(), None),
            Source::Default => (DEFAULTS_ORIGIN.to_owned(), None),
        };
        self.problems.push(Problem {
            origin,
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Checks that `node` is a table whose keys are all `known`; reports unknown keys (with the
    /// closest known one when it is a likely typo) and `planned` keys that this build does not
    /// support. Returns the entries, or none when `node` is not a table.
    pub(super) fn open<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
        planned: &[&str],
    ) -> &'n [(String, Node)] {
        let Value::Table(entries) = &node.value else {
            self.report(
                node,
                path,
                format!("expected a table, found {}", node.value.describe()),
            );
            return &[];
        };
        for (key, child) in entries {
            let child_path = join(path, key);
            if known.contains(&key.as_str()) {
                continue;
            }
            if planned.contains(&key.as_str()) {
                self.report(child, &child_path, "not supported by this build yet");
            } else if !(path.is_empty() && UNSUPPORTED_SECTIONS.contains(&key.as_str())) {
                let message = match closest(key, known) {
                    Some(suggestion) => format!("unknown key (did you mean {suggestion:?}?)"),
                    None => format!("unknown key (expected one of: {})", known.join(", ")),
                };
                self.report(child, &child_path, message);
            }
        }
        entries
    }

    /// Reads an optional field with `convert`; a missing or bad value yields `default` (a bad
    /// one has been reported).
    pub(super) fn get<'n, T>(
        &mut self,
        entries: &'n [(String, Node)],
        path: &str,
        key: &str,
        default: T,
        convert: impl FnOnce(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> T {
        match field(entries, key) {
            Some(node) => convert(self, node, &join(path, key)).unwrap_or(default),
            None => default,
        }
    }
}

pub(super) fn field<'n>(entries: &'n [(String, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The known key closest to `key` when it is near enough to be a typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len().max(key.len()) / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

// ---- scalar conversions: each reports its own problem and returns None on failure ----

pub(super) fn string(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<String> {
    match (&node.value, &node.source) {
        (Value::Str(s), _) => Some(s.clone()),
        // An override's text is a string too, even when it also reads as a number or bool.
        (_, Source::Env { text, .. }) => Some(text.clone()),
        (other, _) => {
            ctx.report(
                node,
                key,
                format!("expected a string, found {}", other.describe()),
            );
            None
        }
    }
}

/// An array of MQTT topic filters; `shared` says why a `$share/` or `$queue/` filter is
/// refused where it is. Every bad element is reported; `None` if any was bad.
pub(super) fn topic_filters(
    ctx: &mut Ctx<'_>,
    node: &Node,
    key: &str,
    shared: &str,
) -> Option<Vec<String>> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            key,
            format!(
                "expected an array of topic filters, found {}",
                node.value.describe()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(filter) = string(ctx, item, &item_key) else {
            ok = false;
            continue;
        };
        let problem = if let Err(e) = topic::validate_topic_filter(&filter) {
            Some(format!("{filter:?} is not a topic filter: {e}"))
        } else if filter.starts_with("$share/") || filter.starts_with("$queue/") {
            Some(format!("{filter:?}: {shared}"))
        } else {
            None
        };
        match problem {
            Some(problem) => {
                ctx.report(item, &item_key, problem);
                ok = false;
            }
            None => out.push(filter),
        }
    }
    ok.then_some(out)
}

pub(super) fn boolean(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<bool> {
    match &node.value {
        Value::Bool(b) => Some(*b),
        other => {
            ctx.report(
                node,
                key,
                format!("expected true or false, found {}", other.describe()),
            );
            None
        }
    }
}

pub(super) fn integer<T: TryFrom<i64>>(
    ctx: &mut Ctx<'_>,
    node: &Node,
    key: &str,
    min: i64,
    max: i64,
) -> Option<T> {
    let Value::Int(value) = node.value else {
        ctx.report(
            node,
            key,
            format!("expected an integer, found {}", node.value.describe()),
        );
        return None;
    };
    if value < min || value > max {
        let range = if max == i64::MAX {
            format!("must be at least {min}")
        } else {
            format!("must be between {min} and {max}")
        };
        ctx.report(node, key, format!("{range}, got {value}"));
        return None;
    }
    match T::try_from(value) {
        Ok(v) => Some(v),
        Err(_) => {
            ctx.report(node, key, format!("{value} is too large for this machine"));
            None
        }
    }
}

pub(super) fn size<T: TryFrom<u64>>(
    ctx: &mut Ctx<'_>,
    node: &Node,
    key: &str,
    min: u64,
    max: u64,
) -> Option<T> {
    let (bytes, shown) = match &node.value {
        Value::Int(i) => match u64::try_from(*i) {
            Ok(bytes) => (bytes, i.to_string()),
            Err(_) => {
                ctx.report(node, key, format!("a size cannot be negative, got {i}"));
                return None;
            }
        },
        Value::Str(s) => match parse_size(s) {
            Ok(bytes) => (bytes, format!("{s:?}")),
            Err(message) => {
                ctx.report(node, key, message);
                return None;
            }
        },
        other => {
            ctx.report(
                node,
                key,
                format!(
                    "expected a size such as \"1MB\" or a number of bytes, found {}",
                    other.describe()
                ),
            );
            return None;
        }
    };
    if bytes < min || bytes > max {
        ctx.report(
            node,
            key,
            format!(
                "must be between {} and {}, got {shown}",
                format_size(min),
                format_size(max)
            ),
        );
        return None;
    }
    match T::try_from(bytes) {
        Ok(v) => Some(v),
        Err(_) => {
            ctx.report(node, key, format!("{shown} is too large for this machine"));
            None
        }
    }
}

/// A duration within `min..=max`; `zero_ok` additionally allows exactly zero below `min`.
pub(super) fn duration(
    ctx: &mut Ctx<'_>,
    node: &Node,
    key: &str,
    min: Duration,
    max: Duration,
    zero_ok: bool,
) -> Option<Duration> {
    let Value::Str(text) = &node.value else {
        ctx.report(
            node,
            key,
            format!(
                "expected a duration such as \"15s\", found {}",
                node.value.describe()
            ),
        );
        return None;
    };
    let value = match parse_duration(text) {
        Ok(value) => value,
        Err(message) => {
            ctx.report(node, key, message);
            return None;
        }
    };
    if (value < min && !(zero_ok && value.is_zero())) || value > max {
        let lower = if zero_ok {
            format!("0s (off) or at least {}", format_duration(min))
        } else {
            format!("at least {}", format_duration(min))
        };
        ctx.report(
            node,
            key,
            format!(
                "must be {lower} and at most {}, got {text:?}",
                format_duration(max)
            ),
        );
        return None;
    }
    Some(value)
}

pub(super) fn path_buf(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<PathBuf> {
    let text = string(ctx, node, key)?;
    if text.trim().is_empty() {
        ctx.report(node, key, "must not be empty");
        return None;
    }
    Some(PathBuf::from(text))
}

// ---- sections ----

fn node_section(ctx: &mut Ctx<'_>, node: &Node) -> NodeConfig {
    let defaults = NodeConfig::default();
    let entries = ctx.open(
        node,
        "node",
        &["name", "data_dir", "state_cache", "clock"],
        &[],
    );
    NodeConfig {
        name: ctx.get(entries, "node", "name", defaults.name, |ctx, n, key| {
            let name = string(ctx, n, key)?;
            let problem = if name.is_empty() {
                Some("must not be empty".to_owned())
            } else if name.contains(['/', '+', '#']) {
                Some(format!(
                    "{name:?} must not contain '/', '+' or '#': it is used as a topic level"
                ))
            } else if name.chars().any(char::is_control) {
                Some(format!("{name:?} must not contain control characters"))
            } else {
                None
            };
            match problem {
                Some(message) => {
                    ctx.report(n, key, message);
                    None
                }
                None => Some(name),
            }
        }),
        data_dir: ctx.get(entries, "node", "data_dir", defaults.data_dir, path_buf),
        state_cache: ctx.get(
            entries,
            "node",
            "state_cache",
            defaults.state_cache,
            |c, n, k| size(c, n, k, 256 * KB, 1024 * MB),
        ),
        clock: ctx.get(entries, "node", "clock", defaults.clock, |c, n, k| {
            let word = string(c, n, k)?;
            match word.as_str() {
                "auto" => Some(crate::clock::ClockTrust::Auto),
                "synchronized" => Some(crate::clock::ClockTrust::Synchronized),
                "unreliable" => Some(crate::clock::ClockTrust::Unreliable),
                _ => {
                    c.report(
                        n,
                        k,
                        format!(
                            "unknown clock {word:?} (expected auto, synchronized or unreliable)"
                        ),
                    );
                    None
                }
            }
        }),
    }
}

fn mqtt_section(ctx: &mut Ctx<'_>, node: &Node) -> MqttConfig {
    let d = MqttConfig::default();
    let path = "mqtt";
    let entries = ctx.open(
        node,
        path,
        &[
            "max_packet_size",
            "max_inflight",
            "max_mqueue_len",
            "mqueue_full",
            "slow_subscriber_timeout",
            "mqueue_store_qos0",
            "session_expiry",
            "idle_timeout",
            "keepalive_multiplier",
            "server_keepalive",
            "max_clientid_len",
            "max_topic_alias",
            "max_topic_levels",
            "max_topic_len",
            "max_subscription_bytes_total",
            "retain_available",
            "max_retained_messages",
            "max_retained_payload",
            "max_retained_bytes",
            "max_sessions",
            "max_mqueue_bytes",
            "max_queued_bytes_total",
            "shared_subscription_strategy",
            "session_owner_mismatch",
            "sys_interval",
            "max_awaiting_rel",
            "outbound_buffer",
            "max_subscriptions",
            "messages_rate",
            "bytes_rate",
            "force_shutdown",
        ],
        &[],
    );
    let hours = |h: u64| Duration::from_secs(h * 3600);
    MqttConfig {
        max_packet_size: ctx.get(entries, path, "max_packet_size", d.max_packet_size, |c, n, k| {
            size(c, n, k, 16, MQTT_MAX_PACKET)
        }),
        max_inflight: ctx.get(entries, path, "max_inflight", d.max_inflight, |c, n, k| {
            integer(c, n, k, 1, 65535)
        }),
        max_mqueue_len: ctx.get(entries, path, "max_mqueue_len", d.max_mqueue_len, |c, n, k| {
            integer(c, n, k, 1, i64::MAX)
        }),
        mqueue_store_qos0: ctx.get(entries, path, "mqueue_store_qos0", d.mqueue_store_qos0, boolean),
        session_expiry: ctx.get(entries, path, "session_expiry", d.session_expiry, |c, n, k| {
            // MQTT 5 carries session expiry as a u32 number of seconds.
            duration(c, n, k, Duration::ZERO, Duration::from_secs(u64::from(u32::MAX)), false)
        }),
        idle_timeout: ctx.get(entries, path, "idle_timeout", d.idle_timeout, |c, n, k| {
            duration(c, n, k, Duration::from_millis(1), hours(24), false)
        }),
        keepalive_multiplier: ctx.get(
            entries,
            path,
            "keepalive_multiplier",
            d.keepalive_multiplier,
            keepalive_multiplier,
        ),
        server_keepalive: ctx.get(entries, path, "server_keepalive", d.server_keepalive, |c, n, k| {
            let max = Duration::from_secs(u64::from(u16::MAX));
            let d = duration(c, n, k, Duration::ZERO, max, true)?;
            Some(u16::try_from(d.as_secs()).ok())
        }),
        max_clientid_len: ctx.get(entries, path, "max_clientid_len", d.max_clientid_len, |c, n, k| {
            integer(c, n, k, 23, 65535)
        }),
        max_topic_alias: ctx.get(entries, path, "max_topic_alias", d.max_topic_alias, |c, n, k| {
            integer(c, n, k, 0, 65535)
        }),
        max_topic_levels: ctx.get(entries, path, "max_topic_levels", d.max_topic_levels, |c, n, k| {
            integer(c, n, k, 1, 65535)
        }),
        max_topic_len: ctx.get(entries, path, "max_topic_len", d.max_topic_len, |c, n, k| {
            integer(c, n, k, 1, 65535)
        }),
        max_subscription_bytes_total: ctx.get(
            entries,
            path,
            "max_subscription_bytes_total",
            d.max_subscription_bytes_total,
            |c, n, k| size(c, n, k, 1024, u64::MAX),
        ),
        retain_available: ctx.get(entries, path, "retain_available", d.retain_available, boolean),
        max_retained_messages: ctx.get(
            entries,
            path,
            "max_retained_messages",
            d.max_retained_messages,
            |c, n, k| integer(c, n, k, 1, i64::MAX),
        ),
        max_retained_payload: ctx.get(
            entries,
            path,
            "max_retained_payload",
            d.max_retained_payload,
            |c, n, k| size(c, n, k, 1, MQTT_MAX_PACKET),
        ),
        mqueue_full: ctx.get(entries, path, "mqueue_full", d.mqueue_full, |c, n, k| {
            let word = string(c, n, k)?;
            match word.as_str() {
                "backpressure" => Some(MqueueFull::Backpressure),
                "drop_oldest" => Some(MqueueFull::DropOldest),
                _ => {
                    c.report(
                        n,
                        k,
                        format!("unknown policy {word:?} (expected backpressure or drop_oldest)"),
                    );
                    None
                }
            }
        }),
        slow_subscriber_timeout: ctx.get(
            entries,
            path,
            "slow_subscriber_timeout",
            d.slow_subscriber_timeout,
            |c, n, k| duration(c, n, k, Duration::from_secs(1), hours(1), false),
        ),
        shared_subscription_strategy: ctx.get(
            entries,
            path,
            "shared_subscription_strategy",
            d.shared_subscription_strategy,
            |c, n, k| {
                let word = string(c, n, k)?;
                match word.as_str() {
                    "round_robin" => Some(SharedStrategy::RoundRobin),
                    "random" => Some(SharedStrategy::Random),
                    "hash_clientid" => Some(SharedStrategy::HashClientId),
                    _ => {
                        c.report(
                            n,
                            k,
                            format!(
                                "unknown strategy {word:?} (expected round_robin, random or hash_clientid)"
                            ),
                        );
                        None
                    }
                }
            },
        ),
        session_owner_mismatch: ctx.get(
            entries,
            path,
            "session_owner_mismatch",
            d.session_owner_mismatch,
            |c, n, k| {
                let word = string(c, n, k)?;
                match word.as_str() {
                    "refuse" => Some(OwnerMismatch::Refuse),
                    "discard" => Some(OwnerMismatch::Discard),
                    _ => {
                        c.report(
                            n,
                            k,
                            format!("unknown policy {word:?} (expected refuse or discard)"),
                        );
                        None
                    }
                }
            },
        ),
        sys_interval: ctx.get(entries, path, "sys_interval", d.sys_interval, |c, n, k| {
            duration(c, n, k, Duration::from_secs(1), hours(24), true)
        }),
        max_awaiting_rel: ctx.get(entries, path, "max_awaiting_rel", d.max_awaiting_rel, |c, n, k| {
            integer(c, n, k, 1, 65535)
        }),
        outbound_buffer: ctx.get(entries, path, "outbound_buffer", d.outbound_buffer, |c, n, k| {
            size(c, n, k, KB, MQTT_MAX_PACKET)
        }),
        max_subscriptions: ctx.get(entries, path, "max_subscriptions", d.max_subscriptions, |c, n, k| {
            integer(c, n, k, 0, i64::MAX)
        }),
        max_retained_bytes: ctx.get(entries, path, "max_retained_bytes", d.max_retained_bytes, |c, n, k| {
            size(c, n, k, 1, u64::MAX)
        }),
        max_sessions: ctx.get(entries, path, "max_sessions", d.max_sessions, |c, n, k| {
            integer(c, n, k, 1, i64::MAX)
        }),
        max_mqueue_bytes: ctx.get(entries, path, "max_mqueue_bytes", d.max_mqueue_bytes, |c, n, k| {
            size(c, n, k, 1024, u64::MAX)
        }),
        max_queued_bytes_total: ctx.get(
            entries,
            path,
            "max_queued_bytes_total",
            d.max_queued_bytes_total,
            |c, n, k| size(c, n, k, 1024, u64::MAX),
        ),
        messages_rate: ctx.get(entries, path, "messages_rate", d.messages_rate, |c, n, k| {
            rate_limit(c, n, k, RateUnit::Messages).map(Some)
        }),
        bytes_rate: ctx.get(entries, path, "bytes_rate", d.bytes_rate, |c, n, k| {
            rate_limit(c, n, k, RateUnit::Bytes).map(Some)
        }),
        force_shutdown_mqueue_len: match field(entries, "force_shutdown") {
            None => d.force_shutdown_mqueue_len,
            Some(node) => {
                let path = "mqtt.force_shutdown";
                let entries = ctx.open(node, path, FORCE_SHUTDOWN_KEYS, &[]);
                ctx.get(entries, path, "max_mqueue_len", d.force_shutdown_mqueue_len, |c, n, k| {
                    integer(c, n, k, 0, i64::MAX)
                })
            }
        },
        force_shutdown_heap_size: match field(entries, "force_shutdown") {
            None => d.force_shutdown_heap_size,
            Some(node) => {
                let path = "mqtt.force_shutdown";
                let entries = match &node.value {
                    Value::Table(entries) => entries.as_slice(),
                    _ => &[],
                };
                ctx.get(entries, path, "max_heap_size", d.force_shutdown_heap_size, |c, n, k| {
                    size(c, n, k, 0, u64::MAX)
                })
            }
        },
    }
}

/// Keys of `mqtt.force_shutdown`.
const FORCE_SHUTDOWN_KEYS: &[&str] = &["max_mqueue_len", "max_heap_size"];

/// A `"rate,burst"` string (EMQX's notation) for a per-client token bucket.
fn rate_limit(ctx: &mut Ctx<'_>, node: &Node, key: &str, unit: RateUnit) -> Option<RateLimit> {
    let text = string(ctx, node, key)?;
    match parse_rate(&text, unit) {
        Ok(limit) => Some(limit),
        Err(message) => {
            ctx.report(node, key, message);
            None
        }
    }
}

fn keepalive_multiplier(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<f32> {
    let value = match node.value {
        Value::Float(f) => f,
        // i64 -> f64 is exact for any multiplier anyone would write.
        Value::Int(i) => i as f64,
        ref other => {
            ctx.report(
                node,
                key,
                format!("expected a number such as 1.5, found {}", other.describe()),
            );
            return None;
        }
    };
    if !(1.0..=1000.0).contains(&value) {
        ctx.report(
            node,
            key,
            format!("must be between 1.0 and 1000.0, got {value}"),
        );
        return None;
    }
    // In range, so narrowing only rounds to f32 precision.
    Some(value as f32)
}

/// A listener as read, before names and binds are checked across listeners.
struct Partial<'n> {
    index: usize,
    item: &'n Node,
    /// The explicit `name` key, if any.
    name: Option<String>,
    kind: Option<ListenerKind>,
    bind: Option<(SocketAddr, &'n Node)>,
    max_connections: usize,
    max_conn_rate: u32,
    tls: Option<ListenerTls>,
}

fn listeners_section(ctx: &mut Ctx<'_>, node: &Node) -> Vec<ListenerConfig> {
    let d = ListenerConfig::default();
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            "listeners",
            format!(
                "expected an array of tables ([[listeners]]), found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() {
        ctx.report(node, "listeners", "at least one listener is required");
        return Vec::new();
    }
    let mut partials = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("listeners[{index}]");
        let entries = ctx.open(
            item,
            &path,
            &[
                "name",
                "kind",
                "bind",
                "max_connections",
                "max_conn_rate",
                "tls",
            ],
            &[],
        );
        if !matches!(item.value, Value::Table(_)) {
            continue;
        }
        let name = ctx.get(entries, &path, "name", None, |c, n, k| {
            let name = string(c, n, k)?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
            {
                c.report(
                    n,
                    k,
                    format!("{name:?} is not a listener name (use letters, digits, '_', '-', '.')"),
                );
                return None;
            }
            Some(Some(name))
        });
        let kind = match field(entries, "kind") {
            None => Some(ListenerKind::Tcp),
            Some(n) => listener_kind(ctx, n, &format!("{path}.kind")),
        };
        let bind = match field(entries, "bind") {
            None => {
                ctx.report(
                    item,
                    &format!("{path}.bind"),
                    "is required, e.g. bind = \"0.0.0.0:1883\"",
                );
                None
            }
            Some(n) => {
                let key = format!("{path}.bind");
                string(ctx, n, &key).and_then(|text| match text.trim().parse::<SocketAddr>() {
                    Ok(addr) => Some((addr, n)),
                    Err(_) => {
                        ctx.report(
                            n,
                            &key,
                            format!(
                                "{text:?} is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:1883\" or \"[::]:1883\")"
                            ),
                        );
                        None
                    }
                })
            }
        };
        let max_connections = ctx.get(
            entries,
            &path,
            "max_connections",
            d.max_connections,
            |c, n, k| integer(c, n, k, 1, i64::MAX),
        );
        let max_conn_rate = ctx.get(
            entries,
            &path,
            "max_conn_rate",
            d.max_conn_rate,
            |c, n, k| integer(c, n, k, 1, i64::from(u32::MAX)),
        );
        let tls_path = format!("{path}.tls");
        let tls = match (kind, field(entries, "tls")) {
            (Some(k), Some(n)) if !k.is_tls() => {
                ctx.report(
                    n,
                    &tls_path,
                    format!("a {k} listener does not use TLS (use kind = \"tls\" or \"wss\")"),
                );
                None
            }
            (Some(k), None) if k.is_tls() => {
                ctx.report(
                    item,
                    &tls_path,
                    format!("is required for a {k} listener, e.g. tls = {{ cert = \"server.pem\", key = \"server.key\" }}"),
                );
                None
            }
            (_, Some(n)) => listener_tls(ctx, n, &tls_path),
            (_, None) => None,
        };
        partials.push(Partial {
            index,
            item,
            name,
            kind,
            bind,
            max_connections,
            max_conn_rate,
            tls,
        });
    }
    check_binds(ctx, &partials);
    let listeners = name_listeners(ctx, &partials);
    if listeners.len() == items.len() {
        listeners
    } else {
        Vec::new()
    }
}

/// The transport a `kind` value names.
fn listener_kind(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<ListenerKind> {
    let word = string(ctx, node, key)?;
    match word.as_str() {
        "tcp" => Some(ListenerKind::Tcp),
        "tls" => Some(ListenerKind::Tls),
        "ws" => Some(ListenerKind::Ws),
        "wss" => Some(ListenerKind::Wss),
        _ => {
            ctx.report(
                node,
                key,
                format!("unknown listener kind {word:?} (expected tcp, tls, ws or wss)"),
            );
            None
        }
    }
}

/// A listener's `tls` table: files, client verification and protocol versions.
pub(super) fn listener_tls(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<ListenerTls> {
    let entries = ctx.open(
        node,
        path,
        &[
            "cert",
            "key",
            "ca",
            "verify_peer",
            "fail_if_no_peer_cert",
            "versions",
            "peer_cert_as_username",
            "crl",
        ],
        &[],
    );
    let Value::Table(_) = node.value else {
        return None;
    };
    let mut ok = true;
    let mut required = |ctx: &mut Ctx<'_>, key: &str, what: &str| {
        let got = match field(entries, key) {
            Some(n) => path_buf(ctx, n, &join(path, key)),
            None => {
                ctx.report(node, &join(path, key), format!("is required: {what}"));
                None
            }
        };
        ok &= got.is_some();
        got
    };
    let cert = required(ctx, "cert", "the PEM certificate chain the server presents");
    let key = required(ctx, "key", "the PEM private key of cert");
    let ca = ctx.get(entries, path, "ca", None, |c, n, k| {
        path_buf(c, n, k).map(Some)
    });
    let verify_peer = ctx.get(entries, path, "verify_peer", false, boolean);
    let fail_if_no_peer_cert = ctx.get(entries, path, "fail_if_no_peer_cert", false, boolean);
    let crl = ctx.get(entries, path, "crl", None, |c, n, k| {
        path_buf(c, n, k).map(Some)
    });
    if crl.is_some() && !verify_peer {
        ctx.report(
            node,
            &join(path, "crl"),
            "needs verify_peer = true (no client certificate is checked otherwise)",
        );
        ok = false;
    }
    if verify_peer && ca.is_none() && field(entries, "ca").is_none() {
        ctx.report(
            node,
            &join(path, "ca"),
            "is required with verify_peer = true: the PEM CA that signs client certificates",
        );
        ok = false;
    }
    if fail_if_no_peer_cert && !verify_peer {
        ctx.report(
            node,
            &join(path, "fail_if_no_peer_cert"),
            "needs verify_peer = true (no certificate is asked for otherwise)",
        );
        ok = false;
    }
    let (mut tls12, mut tls13) = (true, true);
    if let Some(n) = field(entries, "versions") {
        let key = join(path, "versions");
        match &n.value {
            Value::Array(items) if !items.is_empty() => {
                (tls12, tls13) = (false, false);
                for item in items {
                    match string(ctx, item, &key).as_deref() {
                        Some("1.2") => tls12 = true,
                        Some("1.3") => tls13 = true,
                        Some(other) => {
                            ctx.report(
                                item,
                                &key,
                                format!(
                                    "unknown TLS version {other:?} (expected \"1.2\" or \"1.3\")"
                                ),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
            }
            other => {
                ctx.report(
                    n,
                    &key,
                    format!(
                        "expected a non-empty list such as [\"1.2\", \"1.3\"], found {}",
                        other.describe()
                    ),
                );
                ok = false;
            }
        }
    }
    let peer_cert_as_username =
        ctx.get(
            entries,
            path,
            "peer_cert_as_username",
            None,
            |c, n, k| match string(c, n, k)?.as_str() {
                "cn" => Some(Some(CertIdentity::Cn)),
                "san" => Some(Some(CertIdentity::San)),
                other => {
                    c.report(
                        n,
                        k,
                        format!("unknown {other:?} (expected \"cn\" or \"san\")"),
                    );
                    None
                }
            },
        );
    if peer_cert_as_username.is_some() && !verify_peer {
        ctx.report(
            node,
            &join(path, "peer_cert_as_username"),
            "needs verify_peer = true (no certificate is asked for otherwise)",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(ListenerTls {
        cert: cert?,
        key: key?,
        ca,
        verify_peer,
        crl,
        fail_if_no_peer_cert,
        tls12,
        tls13,
        peer_cert_as_username,
    })
}

/// Two listeners cannot bind the same port on the same address, nor a specific address and
/// the wildcard of the same family (Linux refuses the second bind). Port 0 never conflicts.
fn check_binds(ctx: &mut Ctx<'_>, partials: &[Partial<'_>]) {
    for (j, later) in partials.iter().enumerate() {
        let Some((addr, node)) = later.bind else {
            continue;
        };
        let earlier = partials[..j].iter().find(|p| {
            p.bind.is_some_and(|(other, _)| {
                addr.port() != 0
                    && other.port() == addr.port()
                    && other.is_ipv4() == addr.is_ipv4()
                    && (other.ip() == addr.ip()
                        || other.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            })
        });
        if let Some(earlier) = earlier {
            let message = match earlier.bind {
                Some((other, _)) if other == addr => {
                    format!("\"{addr}\" is already used by listeners[{}]", earlier.index)
                }
                Some((other, _)) => format!(
                    "\"{addr}\" overlaps listeners[{}] on \"{other}\"",
                    earlier.index
                ),
                None => continue,
            };
            ctx.report(node, &format!("listeners[{}].bind", later.index), message);
        }
    }
}

/// Names every listener (`kind:name`, `kind:default` when alone of its kind, else
/// `kind:index-within-kind`) and reports clashes. Returns only fully valid listeners.
fn name_listeners(ctx: &mut Ctx<'_>, partials: &[Partial<'_>]) -> Vec<ListenerConfig> {
    let mut out: Vec<(ListenerConfig, &Node, usize)> = Vec::new();
    let mut per_kind: Vec<(ListenerKind, usize)> = Vec::new();
    for p in partials {
        let Some(kind) = p.kind else { continue };
        let same_kind = partials.iter().filter(|q| q.kind == Some(kind)).count();
        let seen = match per_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                per_kind.push((kind, 1));
                0
            }
        };
        let name = match &p.name {
            Some(name) => format!("{kind}:{name}"),
            None if same_kind == 1 => format!("{kind}:default"),
            None => format!("{kind}:{seen}"),
        };
        if let Some((_, _, first)) = out.iter().find(|(l, _, _)| l.name == name) {
            ctx.report(
                p.item,
                &format!("listeners[{}]", p.index),
                format!("listener name {name:?} is already used by listeners[{first}]"),
            );
            continue;
        }
        let Some((bind, _)) = p.bind else { continue };
        if kind.is_tls() && p.tls.is_none() {
            continue;
        }
        out.push((
            ListenerConfig {
                name,
                kind,
                bind,
                max_connections: p.max_connections,
                max_conn_rate: p.max_conn_rate,
                tls: p.tls.clone(),
            },
            p.item,
            p.index,
        ));
    }
    out.into_iter().map(|(l, _, _)| l).collect()
}

fn auth_section(ctx: &mut Ctx<'_>, node: &Node) -> AuthConfig {
    let d = AuthConfig::default();
    let path = "auth";
    let entries = ctx.open(
        node,
        path,
        &[
            "allow_anonymous",
            "password_file",
            "clientid_allowlist",
            "jwt",
            "acl_file",
            "acl_nomatch",
            "check_workers",
            "max_pending_checks",
            "check_timeout",
            "max_login_failures",
            "login_failure_window",
        ],
        &[],
    );
    let optional_path = |c: &mut Ctx<'_>, n: &Node, k: &str| path_buf(c, n, k).map(Some);
    AuthConfig {
        max_login_failures: ctx.get(
            entries,
            path,
            "max_login_failures",
            d.max_login_failures,
            |c, n, k| integer(c, n, k, 0, 1_000_000),
        ),
        login_failure_window: ctx.get(
            entries,
            path,
            "login_failure_window",
            d.login_failure_window,
            |c, n, k| {
                duration(
                    c,
                    n,
                    k,
                    Duration::from_secs(1),
                    Duration::from_secs(86_400),
                    false,
                )
            },
        ),
        check_workers: ctx.get(
            entries,
            path,
            "check_workers",
            d.check_workers,
            |c, n, k| integer(c, n, k, 1, 64),
        ),
        max_pending_checks: ctx.get(
            entries,
            path,
            "max_pending_checks",
            d.max_pending_checks,
            |c, n, k| integer(c, n, k, 1, 100_000),
        ),
        check_timeout: ctx.get(
            entries,
            path,
            "check_timeout",
            d.check_timeout,
            |c, n, k| {
                duration(
                    c,
                    n,
                    k,
                    Duration::from_millis(100),
                    Duration::from_secs(120),
                    false,
                )
            },
        ),
        allow_anonymous: ctx.get(entries, path, "allow_anonymous", d.allow_anonymous, boolean),
        password_file: ctx.get(
            entries,
            path,
            "password_file",
            d.password_file,
            optional_path,
        ),
        clientid_allowlist: ctx.get(
            entries,
            path,
            "clientid_allowlist",
            d.clientid_allowlist,
            optional_path,
        ),
        jwt: ctx.get(entries, path, "jwt", d.jwt, |c, n, k| {
            jwt(c, n, k).map(Some)
        }),
        acl_file: ctx.get(entries, path, "acl_file", d.acl_file, optional_path),
        acl_nomatch: ctx.get(entries, path, "acl_nomatch", d.acl_nomatch, |c, n, k| {
            let word = string(c, n, k)?;
            match word.as_str() {
                "allow" => Some(AclNomatch::Allow),
                "deny" => Some(AclNomatch::Deny),
                _ => {
                    c.report(n, k, format!("{word:?} is not allow or deny"));
                    None
                }
            }
        }),
    }
}

/// Shortest `auth.jwt.secret` accepted, in bytes (RFC 7518 §3.2: at least the hash size).
const JWT_MIN_SECRET: usize = 32;

/// JWT algorithms `auth.jwt.algorithms` accepts (jsonwebtoken's names).
const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

fn jwt(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<JwtConfig> {
    let before = ctx.problem_count();
    let entries = ctx.open(
        node,
        path,
        &[
            "secret",
            "public_key",
            "algorithms",
            "username_claim",
            "issuer",
            "audience",
            "max_lifetime",
            "unsynchronized_clock",
        ],
        &[],
    );
    if !matches!(node.value, Value::Table(_)) {
        return None;
    }
    let secret = ctx.get(entries, path, "secret", None, |c, n, k| {
        let text = string(c, n, k)?;
        if text.len() < JWT_MIN_SECRET {
            // RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits);
            // a short shared secret can be brute-forced from one captured token.
            c.report(
                n,
                k,
                format!(
                    "must be at least {JWT_MIN_SECRET} bytes (got {}): a short HMAC secret can be guessed from one captured token",
                    text.len()
                ),
            );
            return None;
        }
        Some(Some(text))
    });
    let nonempty = |c: &mut Ctx<'_>, n: &Node, k: &str| {
        let text = string(c, n, k)?;
        if text.is_empty() {
            c.report(n, k, "must not be empty");
            return None;
        }
        Some(Some(text))
    };
    let issuer = ctx.get(entries, path, "issuer", None, nonempty);
    let audience = ctx.get(entries, path, "audience", None, nonempty);
    let max_lifetime = ctx.get(entries, path, "max_lifetime", None, |c, n, k| {
        duration(
            c,
            n,
            k,
            Duration::from_secs(1),
            Duration::from_secs(10 * 365 * 86_400),
            false,
        )
        .map(Some)
    });
    let public_key = ctx.get(entries, path, "public_key", None, |c, n, k| {
        path_buf(c, n, k).map(Some)
    });
    let accept_when_unsynchronized =
        ctx.get(entries, path, "unsynchronized_clock", false, |c, n, k| {
            let word = string(c, n, k)?;
            match word.as_str() {
                "refuse" => Some(false),
                "accept" => Some(true),
                _ => {
                    c.report(
                        n,
                        k,
                        format!("unknown policy {word:?} (expected refuse or accept)"),
                    );
                    None
                }
            }
        });
    let username_claim = ctx.get(entries, path, "username_claim", None, |c, n, k| {
        let text = string(c, n, k)?;
        if text.is_empty() {
            c.report(n, k, "must not be empty");
            return None;
        }
        Some(Some(text))
    });
    let key = format!("{path}.algorithms");
    let algorithms = match field(entries, "algorithms") {
        None => {
            ctx.report(
                node,
                &key,
                format!(
                    "is required: the accepted signature algorithms, e.g. [\"HS256\"] (any of {})",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
            Vec::new()
        }
        Some(n) => jwt_algorithms(ctx, n, &key),
    };
    let hmac = algorithms.iter().any(|a| a.starts_with("HS"));
    let public = algorithms.iter().any(|a| !a.starts_with("HS"));
    if hmac && field(entries, "secret").is_none() {
        ctx.report(node, path, "an HS algorithm is listed but no secret is set");
    }
    if public && field(entries, "public_key").is_none() {
        ctx.report(
            node,
            path,
            "an RS/PS/ES/EdDSA algorithm is listed but no public_key is set",
        );
    }
    if ctx.problem_count() != before {
        return None;
    }
    Some(JwtConfig {
        secret,
        public_key,
        algorithms,
        username_claim,
        issuer,
        audience,
        max_lifetime,
        accept_when_unsynchronized,
    })
}

fn jwt_algorithms(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Vec<String> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            key,
            format!(
                "expected an array of algorithm names, found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() {
        ctx.report(node, key, "must list at least one algorithm");
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(name) = string(ctx, item, &item_key) else {
            continue;
        };
        if !JWT_ALGORITHMS.contains(&name.as_str()) {
            ctx.report(
                item,
                &item_key,
                format!(
                    "unknown algorithm {name:?} (expected one of {})",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
            continue;
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn log_section(ctx: &mut Ctx<'_>, node: &Node) -> LogConfig {
    let d = LogConfig::default();
    let entries = ctx.open(node, "log", &["level"], &[]);
    LogConfig {
        level: ctx.get(entries, "log", "level", d.level, |c, n, k| {
            let text = string(c, n, k)?;
            match check_log_filter(&text) {
                Ok(level) => Some(level),
                Err(message) => {
                    c.report(n, k, message);
                    None
                }
            }
        }),
    }
}

fn board_section(ctx: &mut Ctx<'_>, node: &Node) -> BoardConfig {
    let d = BoardConfig::default();
    let path = "board";
    let entries = ctx.open(
        node,
        path,
        &[
            "kind",
            "watchdog_device",
            "watchdog_timeout",
            "watchdog_required",
            "watchdog_max_resets",
            "mac_interface",
            "disk_free_alarm",
            "health_interval",
            "led_status",
            "led_uplink",
            "led_fault",
            "reset_button",
            "reset_button_active_low",
            "reset_button_hold",
            "sys_root",
            "proc_root",
        ],
        &[],
    );
    BoardConfig {
        kind: ctx.get(entries, path, "kind", d.kind, |c, n, k| {
            let word = string(c, n, k)?;
            match word.as_str() {
                "host" => Some(BoardKind::Host),
                "linux" => Some(BoardKind::Linux),
                _ => {
                    c.report(
                        n,
                        k,
                        format!("unknown board kind {word:?} (expected host or linux)"),
                    );
                    None
                }
            }
        }),
        // An empty string turns the watchdog off; anything else is the device path.
        watchdog_device: ctx.get(
            entries,
            path,
            "watchdog_device",
            d.watchdog_device,
            |c, n, k| {
                let text = string(c, n, k)?;
                let text = text.trim();
                Some((!text.is_empty()).then(|| PathBuf::from(text)))
            },
        ),
        watchdog_required: ctx.get(
            entries,
            path,
            "watchdog_required",
            d.watchdog_required,
            boolean,
        ),
        mac_interface: ctx.get(
            entries,
            path,
            "mac_interface",
            d.mac_interface.clone(),
            |c, n, k| {
                let name = string(c, n, k)?;
                if name.is_empty() || name.len() > 15 || name.contains(['/', '.', ' ']) {
                    c.report(n, k, "must be a network interface name such as \"eth0\"");
                    return None;
                }
                Some(Some(name))
            },
        ),
        disk_free_alarm: ctx.get(
            entries,
            path,
            "disk_free_alarm",
            d.disk_free_alarm,
            |c, n, k| integer(c, n, k, 0, 99),
        ),
        watchdog_max_resets: ctx.get(
            entries,
            path,
            "watchdog_max_resets",
            d.watchdog_max_resets,
            |c, n, k| integer(c, n, k, 0, 1000),
        ),
        watchdog_timeout: ctx.get(
            entries,
            path,
            "watchdog_timeout",
            d.watchdog_timeout,
            |c, n, k| {
                // The kernel takes whole seconds.
                let value = duration(
                    c,
                    n,
                    k,
                    Duration::from_secs(1),
                    Duration::from_secs(3600),
                    false,
                )?;
                if value.subsec_nanos() != 0 {
                    c.report(
                        n,
                        k,
                        "must be a whole number of seconds (the kernel takes seconds)",
                    );
                    return None;
                }
                Some(value)
            },
        ),
        health_interval: ctx.get(
            entries,
            path,
            "health_interval",
            d.health_interval,
            |c, n, k| {
                duration(
                    c,
                    n,
                    k,
                    Duration::from_secs(1),
                    Duration::from_secs(24 * 3600),
                    true,
                )
            },
        ),
        led_status: ctx.get(entries, path, "led_status", d.led_status, led_name),
        led_uplink: ctx.get(entries, path, "led_uplink", d.led_uplink, led_name),
        led_fault: ctx.get(entries, path, "led_fault", d.led_fault, led_name),
        // An empty string means no button.
        reset_button: ctx.get(
            entries,
            path,
            "reset_button",
            d.reset_button,
            |c, n, k| {
                let text = string(c, n, k)?;
                let text = text.trim();
                if text.is_empty() {
                    return Some(None);
                }
                if !text.starts_with('/') {
                    c.report(
                        n,
                        k,
                        format!("{text:?} must be an absolute path to a GPIO value file (e.g. \"/sys/class/gpio/gpio17/value\")"),
                    );
                    return None;
                }
                Some(Some(PathBuf::from(text)))
            },
        ),
        reset_button_active_low: ctx.get(
            entries,
            path,
            "reset_button_active_low",
            d.reset_button_active_low,
            boolean,
        ),
        reset_button_hold: ctx.get(
            entries,
            path,
            "reset_button_hold",
            d.reset_button_hold,
            |c, n, k| {
                duration(
                    c,
                    n,
                    k,
                    Duration::from_secs(1),
                    Duration::from_secs(600),
                    false,
                )
            },
        ),
        sys_root: ctx.get(entries, path, "sys_root", d.sys_root, path_buf),
        proc_root: ctx.get(entries, path, "proc_root", d.proc_root, path_buf),
    }
}

/// An LED name: a directory under /sys/class/leds, so no '/' and not "." or "..". An empty
/// string means no LED.
fn led_name(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<Option<String>> {
    let name = string(ctx, node, key)?;
    if name.is_empty() {
        return Some(None);
    }
    if name.contains('/') || name == "." || name == ".." || name.chars().any(char::is_control) {
        ctx.report(
            node,
            key,
            format!("{name:?} is not an LED name (a directory name under /sys/class/leds, e.g. \"green:status\")"),
        );
        return None;
    }
    Some(Some(name))
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Accepts a bare level or a tracing `EnvFilter` directive list. A bare word that is not a
/// level would be read by `EnvFilter` as a target name and silently log nothing, so it is
/// rejected here ("verbose" is a typo, not a target).
fn check_log_filter(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let help = "expected error, warn, info, debug, trace, off, or a filter such as \"info,holdfast::broker=debug\"";
    if trimmed.is_empty() {
        return Err(format!("must not be empty ({help})"));
    }
    for part in trimmed.split(',') {
        let part = part.trim();
        let bare = !part.contains(['=', '[', ':']);
        if bare && !LEVELS.contains(&part.to_ascii_lowercase().as_str()) {
            return Err(format!("unknown log level {part:?} ({help})"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(trimmed)
        .map_err(|e| format!("{trimmed:?} is not a valid log filter: {e} ({help})"))?;
    Ok(trimmed.to_owned())
}
