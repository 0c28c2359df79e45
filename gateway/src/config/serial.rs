//! `[serial]` with its `[[serial.ports]]`: raw serial lines bridged to MQTT, as typed config.
//!
//! Owns the schema of a port (device path and line settings, framing, bounds, what is
//! published) and the rule that a port is either a raw line or a Modbus RTU line, not both.
//! Never opens a port.

use std::time::Duration;

use super::modbus::{duration_within, one_of, serial_line, topic_level, Parity, SerialLine};
use super::raw::{Node, Value};
use super::validate::{boolean, field, integer, size, string, Ctx};
use crate::serial::framing::Framing;

/// Ports one gateway serves at most.
const MAX_PORTS: usize = 64;

/// The raw serial lines (`[serial]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SerialConfig {
    /// First topic level (`{prefix}/{port}/rx`, `{prefix}/{port}/tx`). Default "serial".
    pub topic_prefix: String,
    /// The ports (`[[serial.ports]]`).
    pub ports: Vec<SerialPortConfig>,
}

/// One raw serial line (`[[serial.ports]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SerialPortConfig {
    /// Name: the topic level and the broker client id `$serial/{name}`. Required.
    pub name: String,
    /// Device path and line settings (default 9600 baud, no parity, 8 data bits, 1 stop bit,
    /// no flow control).
    pub line: SerialLine,
    /// How bytes are cut into messages: "line" (default; `delimiter`, default "\n"), "length"
    /// (`length_bytes` 1, 2 or 4, default 2; `length_order` "big" or "little") or "idle".
    pub framing: Framing,
    /// `idle` framing: the quiet time that ends a frame. Default 20ms; 1ms..=10s.
    pub idle_gap: Duration,
    /// Largest frame either way; longer ones are dropped (`line`, `length`) or cut (`idle`),
    /// and counted. Default 4KB; 1B..=1MB.
    pub max_frame: usize,
    /// QoS of what is published. Default 1.
    pub qos: u8,
    /// Publish received frames retained. Default false.
    pub retain: bool,
    /// The identity the ACL sees for this port's client. Default none.
    pub username: Option<String>,
    /// A port that is missing or fails is reopened after a back-off that doubles from 1s up
    /// to this. Default 30s; 1s..=1h.
    pub reopen_max: Duration,
}

const SERIAL_KEYS: &[&str] = &["topic_prefix", "ports"];

const PORT_KEYS: &[&str] = &[
    "name",
    "port",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "flow_control",
    "framing",
    "delimiter",
    "length_bytes",
    "length_order",
    "idle_gap",
    "max_frame",
    "qos",
    "retain",
    "username",
    "reopen_max",
];

/// Reads `[serial]`; `rtu_ports` are the Modbus RTU devices' ports (path, device name), which a
/// raw port may not share.
pub(super) fn serial_section(
    ctx: &mut Ctx<'_>,
    node: &Node,
    rtu_ports: &[(std::path::PathBuf, String)],
) -> SerialConfig {
    let entries = ctx.open(node, "serial", SERIAL_KEYS, &[]);
    let topic_prefix = ctx.get(entries, "serial", "topic_prefix", "serial".to_owned(), |c, n, k| {
        let text = string(c, n, k)?;
        if text.is_empty() || text.contains(['+', '#']) || text.starts_with('$') || text.ends_with('/') {
            c.report(n, k, format!("{text:?}: a topic prefix is a topic without wildcards, not under '$' and without a trailing '/'"));
            return None;
        }
        Some(text)
    });
    let mut ports: Vec<SerialPortConfig> = Vec::new();
    if let Some(list) = field(entries, "ports") {
        let Value::Array(items) = &list.value else {
            ctx.report(
                list,
                "serial.ports",
                format!(
                    "expected an array of tables ([[serial.ports]]), found {}",
                    list.value.describe()
                ),
            );
            return SerialConfig {
                topic_prefix,
                ports,
            };
        };
        if items.len() > MAX_PORTS {
            ctx.report(
                list,
                "serial.ports",
                format!("{} ports; at most {MAX_PORTS} are allowed", items.len()),
            );
            return SerialConfig {
                topic_prefix,
                ports,
            };
        }
        for (index, item) in items.iter().enumerate() {
            let path = format!("serial.ports[{index}]");
            let Some(port) = port(ctx, item, &path) else {
                continue;
            };
            if let Some(other) = ports.iter().find(|p| p.name == port.name) {
                ctx.report(
                    item,
                    &format!("{path}.name"),
                    format!("port name {:?} is used twice", other.name),
                );
                continue;
            }
            if let Some(other) = ports.iter().find(|p| p.line.port == port.line.port) {
                ctx.report(
                    item,
                    &format!("{path}.port"),
                    format!("{} is also port {:?}", port.line.port.display(), other.name),
                );
                continue;
            }
            if let Some((_, device)) = rtu_ports.iter().find(|(p, _)| *p == port.line.port) {
                ctx.report(item, &format!("{path}.port"), format!("{} is the Modbus RTU line of device {device:?}; a port is one or the other", port.line.port.display()));
                continue;
            }
            ports.push(port);
        }
    }
    SerialConfig {
        topic_prefix,
        ports,
    }
}

fn port(ctx: &mut Ctx<'_>, item: &Node, path: &str) -> Option<SerialPortConfig> {
    let entries = ctx.open(item, path, PORT_KEYS, &[]);
    if !matches!(item.value, Value::Table(_)) {
        return None;
    }
    let before = ctx.problem_count();
    let name = match field(entries, "name") {
        Some(n) => topic_level(ctx, n, &format!("{path}.name")),
        None => {
            ctx.report(
                item,
                &format!("{path}.name"),
                "is required, e.g. name = \"scale\"",
            );
            None
        }
    };
    let line = serial_line(ctx, item, entries, path, 9600, Parity::None);
    let framing_word = ctx.get(entries, path, "framing", "line".to_owned(), string);
    let framing = match framing_word.as_str() {
        "line" => {
            let delimiter = ctx.get(entries, path, "delimiter", "\n".to_owned(), |c, n, k| {
                let text = string(c, n, k)?;
                if text.is_empty() || text.len() > 8 {
                    c.report(n, k, "a delimiter is 1..=8 bytes, e.g. \"\\r\\n\"");
                    return None;
                }
                Some(text)
            });
            Some(Framing::Line {
                delimiter: delimiter.into_bytes(),
            })
        }
        "length" => {
            let prefix = ctx.get(entries, path, "length_bytes", 2u8, |c, n, k| {
                let v: u8 = integer(c, n, k, 1, 4)?;
                if v == 3 {
                    c.report(n, k, "must be 1, 2 or 4");
                    return None;
                }
                Some(v)
            });
            let big_endian = ctx.get(
                entries,
                path,
                "length_order",
                true,
                one_of(&[("big", true), ("little", false)], "order"),
            );
            Some(Framing::Length { prefix, big_endian })
        }
        "idle" => Some(Framing::Idle),
        other => {
            if let Some(n) = field(entries, "framing") {
                ctx.report(
                    n,
                    &format!("{path}.framing"),
                    format!(
                        "unknown framing {other:?} (expected \"line\", \"length\" or \"idle\")"
                    ),
                );
            }
            None
        }
    };
    for (key, applies) in [
        ("delimiter", framing_word == "line"),
        ("length_bytes", framing_word == "length"),
        ("length_order", framing_word == "length"),
        ("idle_gap", framing_word == "idle"),
    ] {
        if let (Some(n), false) = (field(entries, key), applies) {
            ctx.report(
                n,
                &format!("{path}.{key}"),
                format!("does not apply to framing = {framing_word:?}"),
            );
        }
    }
    let idle_gap = ctx.get(
        entries,
        path,
        "idle_gap",
        Duration::from_millis(20),
        duration_within(Duration::from_millis(1), Duration::from_secs(10)),
    );
    let max_frame = ctx.get(entries, path, "max_frame", 4096, |c, n, k| {
        size(c, n, k, 1, 1024 * 1024)
    });
    let qos = ctx.get(entries, path, "qos", 1, |c, n, k| integer(c, n, k, 0, 2));
    let retain = ctx.get(entries, path, "retain", false, boolean);
    let username = ctx.get(entries, path, "username", None, |c, n, k| {
        string(c, n, k).map(Some)
    });
    let reopen_max = ctx.get(
        entries,
        path,
        "reopen_max",
        Duration::from_secs(30),
        duration_within(Duration::from_secs(1), Duration::from_secs(3600)),
    );
    if ctx.problem_count() != before {
        return None;
    }
    Some(SerialPortConfig {
        name: name?,
        line: line?,
        framing: framing?,
        idle_gap,
        max_frame,
        qos,
        retain,
        username,
        reopen_max,
    })
}
