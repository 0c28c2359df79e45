//! `[modbus]` with its `[[modbus.devices]]`: the Modbus TCP and RTU pollers, as typed config.
//!
//! Owns the schema of a device (transport, unit id, schedule, timeouts, what is published) and
//! of its register map (each point's table, address, type, orders, scale...), and the checks
//! `holdfast check` reports with their lines: overlapping points, types that do not fit their
//! table or `count`, unit ids used twice on one line, devices on one serial port that disagree
//! about its settings. Never opens a port and never connects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use holdfast_modbus::plan::Limits;
use holdfast_modbus::point::{check_map, DataType, Order, Point, Table};
use holdfast_modbus::report::PublishOn;

use super::raw::{Node, Source, Value};
use super::validate::{boolean, duration, field, integer, path_buf, string, Ctx};

/// Devices one gateway polls at most.
const MAX_DEVICES: usize = 1000;
/// Points one device may have at most.
const MAX_POINTS: usize = 10_000;

/// The Modbus pollers (`[modbus]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// First topic level of everything the pollers publish and take commands on. Default
    /// "modbus".
    pub topic_prefix: String,
    /// The devices polled (`[[modbus.devices]]`).
    pub devices: Vec<ModbusDevice>,
}

/// How a device is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum ModbusTransport {
    /// Modbus TCP (`transport = "tcp"`, `address = "IP:PORT"`, port 502 when left out).
    Tcp(SocketAddr),
    /// Modbus RTU on a serial line (`transport = "rtu"`, `port`, `baud`...). Devices that
    /// name the same port share it, one request at a time.
    Rtu(SerialLine),
}

impl ModbusTransport {
    /// The line a device's requests go over: devices with the same key share a connection or
    /// a serial port, one request at a time.
    pub fn line_key(&self) -> String {
        match self {
            ModbusTransport::Tcp(addr) => format!("tcp://{addr}"),
            ModbusTransport::Rtu(line) => format!("rtu://{}", line.port.display()),
        }
    }
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// None ("none").
    None,
    /// Even ("even", Modbus's default).
    Even,
    /// Odd ("odd").
    Odd,
}

/// Flow control of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// None ("none").
    None,
    /// RTS/CTS ("hardware").
    Hardware,
    /// XON/XOFF ("software").
    Software,
}

/// A serial port's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLine {
    /// Device path, e.g. `/dev/ttymxc2`. Required.
    pub port: PathBuf,
    /// Baud rate. Default 19200 (Modbus RTU) or 9600 (raw serial); 50..=4000000.
    pub baud: u32,
    /// Parity. Default "even" (Modbus RTU) or "none" (raw serial).
    pub parity: Parity,
    /// Data bits (5..=8). Default 8.
    pub data_bits: u8,
    /// Stop bits (1 or 2). Default 1.
    pub stop_bits: u8,
    /// Flow control. Default "none".
    pub flow_control: FlowControl,
}

/// One message per point or one per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageMode {
    /// `{prefix}/{device}/{point}` per point ("point", default).
    #[default]
    Point,
    /// `{prefix}/{device}` with every point of the poll that is published ("device").
    Device,
}

/// One polled device (`[[modbus.devices]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    /// Name: the topic level after the prefix and the broker client id `$modbus/{name}`.
    /// Letters, digits, `_`, `-`, `.`; unique. Required.
    pub name: String,
    /// How it is reached.
    pub transport: ModbusTransport,
    /// Unit id (slave address): 1..=247 on RTU, 0..=255 on TCP. Default 1.
    pub unit_id: u8,
    /// Time between polls. Default 1s; 10ms..=1d.
    pub interval: Duration,
    /// Time one request may take. Default 1s; 10ms..=60s.
    pub timeout: Duration,
    /// Further attempts of a request that timed out, within one poll. Default 1; 0..=10.
    pub retries: u32,
    /// A device that fails a whole poll is next polled after a back-off that doubles from the
    /// interval up to this. Default 30s; 1s..=1h.
    pub backoff_max: Duration,
    /// When samples are published. Default "change".
    pub publish: PublishOn,
    /// One message per point or per device. Default "point".
    pub message: MessageMode,
    /// QoS of what is published. Default 1.
    pub qos: u8,
    /// Whether samples are published retained. Default false.
    pub retain: bool,
    /// The identity the ACL's `user` rules and `%u` see for this poller (who may write through
    /// it is governed by the ACL on the `set` topics). Default none.
    pub username: Option<String>,
    /// How reads are merged (`max_registers_per_request` default 125, `max_bits_per_request`
    /// default 2000, `max_gap` default 10).
    pub limits: Limits,
    /// The register map.
    pub points: Vec<Point>,
}

const MODBUS_KEYS: &[&str] = &["topic_prefix", "devices"];

const DEVICE_KEYS: &[&str] = &[
    "name",
    "transport",
    "address",
    "port",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "flow_control",
    "unit_id",
    "interval",
    "timeout",
    "retries",
    "backoff_max",
    "publish",
    "message",
    "qos",
    "retain",
    "username",
    "max_registers_per_request",
    "max_bits_per_request",
    "max_gap",
    "points",
];

const POINT_KEYS: &[&str] = &[
    "name",
    "kind",
    "address",
    "type",
    "count",
    "word_order",
    "byte_order",
    "bit",
    "scale",
    "offset",
    "unit",
    "writable",
    "deadband",
    "min",
    "max",
];

/// Reads `[modbus]`.
pub(super) fn modbus_section(ctx: &mut Ctx<'_>, node: &Node) -> ModbusConfig {
    let entries = ctx.open(node, "modbus", MODBUS_KEYS, &[]);
    let topic_prefix = ctx.get(entries, "modbus", "topic_prefix", "modbus".to_owned(), |c, n, k| {
        let text = string(c, n, k)?;
        if text.is_empty() || text.contains(['+', '#']) || text.starts_with('$') || text.ends_with('/') {
            c.report(
                n,
                k,
                format!("{text:?}: a topic prefix is a topic without wildcards, not under '$' and without a trailing '/'"),
            );
            return None;
        }
        Some(text)
    });
    let devices = match field(entries, "devices") {
        Some(n) => devices(ctx, n),
        None => Vec::new(),
    };
    ModbusConfig {
        topic_prefix,
        devices,
    }
}

fn devices(ctx: &mut Ctx<'_>, node: &Node) -> Vec<ModbusDevice> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            "modbus.devices",
            format!(
                "expected an array of tables ([[modbus.devices]]), found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    if items.len() > MAX_DEVICES {
        ctx.report(
            node,
            "modbus.devices",
            format!("{} devices; at most {MAX_DEVICES} are allowed", items.len()),
        );
        return Vec::new();
    }
    let mut out: Vec<(ModbusDevice, &Node)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("modbus.devices[{index}]");
        if let Some(device) = device(ctx, item, &path) {
            if let Some((earlier, _)) = out.iter().find(|(d, _)| d.name == device.name) {
                ctx.report(
                    item,
                    &format!("{path}.name"),
                    format!("device name {:?} is used twice", earlier.name),
                );
                continue;
            }
            check_shared_line(ctx, &out, &device, item, &path);
            out.push((device, item));
        }
    }
    out.into_iter().map(|(d, _)| d).collect()
}

/// Devices on one line must agree on its settings and not share a unit id.
fn check_shared_line(
    ctx: &mut Ctx<'_>,
    earlier: &[(ModbusDevice, &Node)],
    device: &ModbusDevice,
    item: &Node,
    path: &str,
) {
    let key = device.transport.line_key();
    for (other, _) in earlier
        .iter()
        .filter(|(d, _)| d.transport.line_key() == key)
    {
        if let (ModbusTransport::Rtu(a), ModbusTransport::Rtu(b)) =
            (&other.transport, &device.transport)
        {
            if a != b {
                ctx.report(
                    item,
                    &format!("{path}.port"),
                    format!(
                        "{} is also device {:?}'s port with other settings (baud, parity, data bits, stop bits and flow control must match on one line)",
                        b.port.display(),
                        other.name
                    ),
                );
                return;
            }
        }
        if other.unit_id == device.unit_id {
            ctx.report(
                item,
                &format!("{path}.unit_id"),
                format!(
                    "unit id {} on {} is also device {:?}",
                    device.unit_id,
                    key.split_once("://").map_or(key.as_str(), |(_, rest)| rest),
                    other.name
                ),
            );
            return;
        }
    }
}

fn device(ctx: &mut Ctx<'_>, item: &Node, path: &str) -> Option<ModbusDevice> {
    let entries = ctx.open(item, path, DEVICE_KEYS, &[]);
    if !matches!(item.value, Value::Table(_)) {
        return None;
    }
    let before = ctx.problem_count();
    let name = required(ctx, item, entries, path, "name", "e.g. name = \"meter1\"")
        .and_then(|(n, key)| topic_level(ctx, n, &key));
    let transport_word = ctx.get(entries, path, "transport", "tcp".to_owned(), string);
    let transport = match transport_word.as_str() {
        "tcp" => {
            for key in [
                "port",
                "baud",
                "parity",
                "data_bits",
                "stop_bits",
                "flow_control",
            ] {
                if let Some(n) = field(entries, key) {
                    ctx.report(
                        n,
                        &format!("{path}.{key}"),
                        "is a setting of transport = \"rtu\"",
                    );
                }
            }
            required(
                ctx,
                item,
                entries,
                path,
                "address",
                "e.g. address = \"192.168.10.20:502\"",
            )
            .and_then(|(n, key)| tcp_address(ctx, n, &key))
            .map(ModbusTransport::Tcp)
        }
        "rtu" => {
            if let Some(n) = field(entries, "address") {
                ctx.report(
                    n,
                    &format!("{path}.address"),
                    "is a setting of transport = \"tcp\" (an RTU device is reached through `port`)",
                );
            }
            serial_line(ctx, item, entries, path, 19_200, Parity::Even).map(ModbusTransport::Rtu)
        }
        other => {
            if let Some(n) = field(entries, "transport") {
                ctx.report(
                    n,
                    &format!("{path}.transport"),
                    format!("unknown transport {other:?} (expected \"tcp\" or \"rtu\")"),
                );
            }
            None
        }
    };
    let (min_unit, max_unit) = match transport_word.as_str() {
        "rtu" => (1, 247),
        _ => (0, 255),
    };
    let unit_id = ctx.get(entries, path, "unit_id", 1, |c, n, k| {
        integer(c, n, k, min_unit, max_unit)
    });
    let interval = ctx.get(
        entries,
        path,
        "interval",
        Duration::from_secs(1),
        duration_within(Duration::from_millis(10), Duration::from_secs(86_400)),
    );
    let timeout = ctx.get(
        entries,
        path,
        "timeout",
        Duration::from_secs(1),
        duration_within(Duration::from_millis(10), Duration::from_secs(60)),
    );
    let retries = ctx.get(entries, path, "retries", 1, |c, n, k| {
        integer(c, n, k, 0, 10)
    });
    let backoff_max = ctx.get(
        entries,
        path,
        "backoff_max",
        Duration::from_secs(30),
        duration_within(Duration::from_secs(1), Duration::from_secs(3600)),
    );
    let publish = ctx.get(
        entries,
        path,
        "publish",
        PublishOn::Change,
        one_of(
            &[("change", PublishOn::Change), ("poll", PublishOn::Poll)],
            "publish mode",
        ),
    );
    let message = ctx.get(
        entries,
        path,
        "message",
        MessageMode::Point,
        one_of(
            &[
                ("point", MessageMode::Point),
                ("device", MessageMode::Device),
            ],
            "message mode",
        ),
    );
    let qos = ctx.get(entries, path, "qos", 1, |c, n, k| integer(c, n, k, 0, 2));
    let retain = ctx.get(entries, path, "retain", false, boolean);
    let username = ctx.get(entries, path, "username", None, |c, n, k| {
        string(c, n, k).map(Some)
    });
    let d = Limits::default();
    let limits = Limits {
        max_registers: ctx.get(
            entries,
            path,
            "max_registers_per_request",
            d.max_registers,
            |c, n, k| integer(c, n, k, 1, 125),
        ),
        max_bits: ctx.get(
            entries,
            path,
            "max_bits_per_request",
            d.max_bits,
            |c, n, k| integer(c, n, k, 1, 2000),
        ),
        max_gap: ctx.get(entries, path, "max_gap", d.max_gap, |c, n, k| {
            integer(c, n, k, 0, 125)
        }),
    };
    let points = match field(entries, "points") {
        Some(n) => points(ctx, n, &format!("{path}.points"), limits),
        None => {
            ctx.report(item, &format!("{path}.points"), "is required: the device's register map, e.g. points = [{ name = \"voltage\", kind = \"holding\", address = 0, type = \"f32\" }]");
            Vec::new()
        }
    };
    if ctx.problem_count() != before {
        return None;
    }
    Some(ModbusDevice {
        name: name?,
        transport: transport?,
        unit_id,
        interval,
        timeout,
        retries,
        backoff_max,
        publish,
        message,
        qos,
        retain,
        username,
        limits,
        points,
    })
}

fn points(ctx: &mut Ctx<'_>, node: &Node, path: &str, limits: Limits) -> Vec<Point> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            path,
            format!(
                "expected an array of point tables, found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_POINTS {
        ctx.report(
            node,
            path,
            format!("{} points; a device has 1..={MAX_POINTS}", items.len()),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let ppath = format!("{path}[{index}]");
        if let Some(p) = point(ctx, item, &ppath) {
            let largest = if p.table.is_bits() {
                limits.max_bits
            } else {
                limits.max_registers
            };
            if p.count() > largest {
                ctx.report(
                    item,
                    &ppath,
                    format!(
                        "takes {} registers, more than one request may read (max_registers_per_request = {largest})",
                        p.count()
                    ),
                );
                continue;
            }
            out.push(p);
            nodes.push((item, ppath));
        }
    }
    for (index, problem) in check_map(&out) {
        let (item, ppath) = &nodes[index];
        ctx.report(item, ppath, problem.to_string());
    }
    out
}

fn point(ctx: &mut Ctx<'_>, item: &Node, path: &str) -> Option<Point> {
    let entries = ctx.open(item, path, POINT_KEYS, &[]);
    if !matches!(item.value, Value::Table(_)) {
        return None;
    }
    let before = ctx.problem_count();
    let name = required(ctx, item, entries, path, "name", "e.g. name = \"voltage\"")
        .and_then(|(n, key)| topic_level(ctx, n, &key));
    let table = required(ctx, item, entries, path, "kind", "one of \"holding\", \"input\", \"coil\", \"discrete\"")
        .and_then(|(n, key)| {
            let text = string(ctx, n, &key)?;
            let t = Table::parse(&text);
            if t.is_none() {
                ctx.report(n, &key, format!("unknown kind {text:?} (expected \"holding\", \"input\", \"coil\" or \"discrete\")"));
            }
            t
        });
    let address = required(
        ctx,
        item,
        entries,
        path,
        "address",
        "the 0-based protocol address, e.g. address = 0",
    )
    .and_then(|(n, key)| integer::<u16>(ctx, n, &key, 0, 65_535));
    let default_type = match table {
        Some(t) if t.is_bits() => "bool",
        _ => "u16",
    };
    let count_node = field(entries, "count");
    let count: Option<u16> =
        count_node.and_then(|n| integer(ctx, n, &format!("{path}.count"), 1, 125));
    let type_word = ctx.get(entries, path, "type", default_type.to_owned(), string);
    let data_type = match DataType::parse(&type_word, count.unwrap_or(0)) {
        Some(DataType::String(0)) => {
            ctx.report(
                item,
                &format!("{path}.count"),
                "a string needs count = its length in registers (two bytes each)",
            );
            None
        }
        Some(t) => {
            if let (Some(n), Some(c), false) = (count_node, count, matches!(t, DataType::String(_)))
            {
                let needed = if table.is_some_and(Table::is_bits) {
                    1
                } else {
                    t.registers()
                };
                if c != needed {
                    ctx.report(
                        n,
                        &format!("{path}.count"),
                        format!("a {} takes {needed} register(s), not {c}", t.as_str()),
                    );
                }
            }
            Some(t)
        }
        None => {
            let n = field(entries, "type").unwrap_or(item);
            ctx.report(n, &format!("{path}.type"), format!("unknown type {type_word:?} (expected u16, i16, u32, i32, u64, i64, f32, f64, bool or string)"));
            None
        }
    };
    let order = |ctx: &mut Ctx<'_>, key: &str| {
        ctx.get(entries, path, key, Order::Big, |c, n, k| {
            let text = string(c, n, k)?;
            let o = Order::parse(&text);
            if o.is_none() {
                c.report(
                    n,
                    k,
                    format!("unknown order {text:?} (expected \"big\" or \"little\")"),
                );
            }
            o
        })
    };
    let word_order = order(ctx, "word_order");
    let byte_order = order(ctx, "byte_order");
    let bit = ctx.get(entries, path, "bit", None, |c, n, k| {
        integer(c, n, k, 0, 15).map(Some)
    });
    let scale = ctx.get(entries, path, "scale", 1.0, number);
    let offset = ctx.get(entries, path, "offset", 0.0, number);
    let unit = ctx.get(entries, path, "unit", None, |c, n, k| {
        string(c, n, k).map(Some)
    });
    let writable = ctx.get(entries, path, "writable", false, boolean);
    let deadband = ctx.get(entries, path, "deadband", 0.0, number);
    let min = ctx.get(entries, path, "min", None, |c, n, k| {
        number(c, n, k).map(Some)
    });
    let max = ctx.get(entries, path, "max", None, |c, n, k| {
        number(c, n, k).map(Some)
    });
    if ctx.problem_count() != before {
        return None;
    }
    Some(Point {
        name: name?,
        table: table?,
        address: address?,
        data_type: data_type?,
        word_order,
        byte_order,
        bit,
        scale,
        offset,
        unit,
        writable,
        deadband,
        min,
        max,
    })
}

/// Reads a serial port's settings from a device or port table (`port`, `baud`, `parity`,
/// `data_bits`, `stop_bits`, `flow_control`).
pub(super) fn serial_line(
    ctx: &mut Ctx<'_>,
    item: &Node,
    entries: &[(String, Node)],
    path: &str,
    default_baud: u32,
    default_parity: Parity,
) -> Option<SerialLine> {
    let before = ctx.problem_count();
    let port = required(
        ctx,
        item,
        entries,
        path,
        "port",
        "e.g. port = \"/dev/ttyUSB0\"",
    )
    .and_then(|(n, key)| {
        let p = path_buf(ctx, n, &key)?;
        if !p.is_absolute() {
            ctx.report(
                n,
                &key,
                format!(
                    "{:?} is not an absolute device path such as /dev/ttyUSB0",
                    p.display()
                ),
            );
            return None;
        }
        Some(p)
    });
    let baud = ctx.get(entries, path, "baud", default_baud, |c, n, k| {
        integer(c, n, k, 50, 4_000_000)
    });
    let parity = ctx.get(
        entries,
        path,
        "parity",
        default_parity,
        one_of(
            &[
                ("none", Parity::None),
                ("even", Parity::Even),
                ("odd", Parity::Odd),
            ],
            "parity",
        ),
    );
    let data_bits = ctx.get(entries, path, "data_bits", 8, |c, n, k| {
        integer(c, n, k, 5, 8)
    });
    let stop_bits = ctx.get(entries, path, "stop_bits", 1, |c, n, k| {
        integer(c, n, k, 1, 2)
    });
    let flow_control = ctx.get(
        entries,
        path,
        "flow_control",
        FlowControl::None,
        one_of(
            &[
                ("none", FlowControl::None),
                ("hardware", FlowControl::Hardware),
                ("software", FlowControl::Software),
            ],
            "flow control",
        ),
    );
    if ctx.problem_count() != before {
        return None;
    }
    Some(SerialLine {
        port: port?,
        baud,
        parity,
        data_bits,
        stop_bits,
        flow_control,
    })
}

/// A duration setting within `min..=max` (for `ctx.get`).
pub(super) fn duration_within(
    min: Duration,
    max: Duration,
) -> impl FnOnce(&mut Ctx<'_>, &Node, &str) -> Option<Duration> {
    move |c, n, k| duration(c, n, k, min, max, false)
}

/// A word setting that must be one of `choices` (for `ctx.get`); `what` names it in the error.
pub(super) fn one_of<T: Copy>(
    choices: &'static [(&'static str, T)],
    what: &'static str,
) -> impl FnOnce(&mut Ctx<'_>, &Node, &str) -> Option<T> {
    move |c, n, k| {
        let text = string(c, n, k)?;
        if let Some((_, v)) = choices.iter().find(|(word, _)| *word == text) {
            return Some(*v);
        }
        let expected: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
        let expected = match expected.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        c.report(
            n,
            k,
            format!("unknown {what} {text:?} (expected {expected})"),
        );
        None
    }
}

/// A required key: its node and key path, or a report that it is missing.
fn required<'n>(
    ctx: &mut Ctx<'_>,
    item: &Node,
    entries: &'n [(String, Node)],
    path: &str,
    key: &str,
    hint: &str,
) -> Option<(&'n Node, String)> {
    let full = format!("{path}.{key}");
    match field(entries, key) {
        Some(n) => Some((n, full)),
        None => {
            ctx.report(item, &full, format!("is required, {hint}"));
            None
        }
    }
}

/// A name that is one topic level and a readable client id: letters, digits, `_`, `-`, `.`.
pub(super) fn topic_level(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<String> {
    let text = string(ctx, node, key)?;
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        ctx.report(
            node,
            key,
            format!(
                "{text:?}: a name is 1..=64 letters, digits, '_', '-' or '.' (it is a topic level)"
            ),
        );
        return None;
    }
    Some(text)
}

fn tcp_address(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<SocketAddr> {
    let text = string(ctx, node, key)?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, 502));
    }
    ctx.report(
        node,
        key,
        format!("{text:?} is not an address (expected IP or IP:PORT, e.g. \"192.168.10.20:502\")"),
    );
    None
}

/// A number (integer or float); an override's text is parsed.
fn number(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<f64> {
    let value = match (&node.value, &node.source) {
        (Value::Float(f), _) => *f,
        // i64 -> f64 is exact for any scale or limit anyone would write.
        (Value::Int(i), _) => *i as f64,
        (_, Source::Env { text, .. }) => match text.parse::<f64>() {
            Ok(f) => f,
            Err(_) => {
                ctx.report(node, key, format!("expected a number, found {text:?}"));
                return None;
            }
        },
        (other, _) => {
            ctx.report(
                node,
                key,
                format!("expected a number, found {}", other.describe()),
            );
            return None;
        }
    };
    if !value.is_finite() {
        ctx.report(node, key, format!("must be a finite number, got {value}"));
        return None;
    }
    Some(value)
}
