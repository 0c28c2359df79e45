//! The Modbus pollers (`[modbus]`): devices polled over Modbus TCP and RTU, their samples
//! published as `{prefix}/{device}/{point}`, and writes taken from
//! `{prefix}/{device}/set/{point}`, each device a client of the broker (`$modbus/{device}`).
//!
//! Owns the wiring: devices are grouped by line (a TCP address or a serial port), one task
//! per line ([`line`]) owns the connection and makes every request on it, one at a time, in
//! earliest-due order (so units sharing an RS-485 line are served fairly, with the
//! inter-frame gap); one task per device ([`device`]) owns its broker client, publishes what
//! the line task read and hands writes to it. A device that does not answer backs off without
//! holding up the others. The register maps, planning and decoding are the sans-IO
//! `holdfast_modbus`.
//!
//! Never touches the router: everything goes through `crate::broker::client::Client`.

mod device;
mod line;

use crate::broker::Broker;
use crate::config::{ModbusConfig, ModbusDevice};
use crate::udp::lock;
use holdfast_modbus::report::Quality;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Poll results and write outcomes waiting for a device's task; when full the line waits
/// (polls run late, nothing is dropped).
const EVENTS: usize = 16;
/// Writes waiting for a line; beyond it a write is refused as busy.
const WRITES: usize = 32;
/// Lateness samples kept per device for the percentiles `holdfast ctl modbus` shows.
const LATENESS_SAMPLES: usize = 1024;

/// Counters of the pollers (`$SYS/brokers/{node}/modbus/...`, `holdfast ctl modbus`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Polls made (whole devices).
    pub polls: AtomicU64,
    /// Polls that started later than their schedule by more than an interval (skipped ticks).
    pub polls_skipped: AtomicU64,
    /// Read requests sent.
    pub reads: AtomicU64,
    /// Requests that timed out (each attempt).
    pub timeouts: AtomicU64,
    /// Exception responses.
    pub exceptions: AtomicU64,
    /// Malformed responses (length, unit id, function, CRC).
    pub bad_responses: AtomicU64,
    /// Failed connects or opens and lost connections.
    pub unreachable: AtomicU64,
    /// Requests split because the device rejected a merged read.
    pub splits: AtomicU64,
    /// Samples published.
    pub published: AtomicU64,
    /// Publishes the broker refused.
    pub publish_errors: AtomicU64,
    /// Writes made.
    pub writes: AtomicU64,
    /// Writes refused or failed (bad value, not writable, exception, timeout, busy).
    pub write_errors: AtomicU64,
}

/// What `holdfast ctl modbus` shows for one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceView {
    /// Name.
    pub name: String,
    /// Line: `tcp://IP:PORT` or `rtu:///dev/...`.
    pub line: String,
    /// Unit id.
    pub unit_id: u8,
    /// `ok`, `failing` (backing off) or `starting`.
    pub state: &'static str,
    /// Points in the map.
    pub points: usize,
    /// Read requests one poll makes (after merging and splits).
    pub reads_per_poll: usize,
    /// Polls made.
    pub polls: u64,
    /// Polls in a row that failed.
    pub consecutive_failures: u32,
    /// When the last poll ended, ms since the epoch (0: none yet).
    pub last_poll_ms: u64,
    /// How long the last poll took, ms.
    pub last_latency_ms: f64,
    /// How late polls started (p50, p99, max over the last 1024 polls), ms.
    pub lateness_p50_ms: f64,
    /// See `lateness_p50_ms`.
    pub lateness_p99_ms: f64,
    /// See `lateness_p50_ms`.
    pub lateness_max_ms: f64,
    /// Errors by kind: timeout, exception:<code>, bad_response, unreachable.
    pub errors: BTreeMap<String, u64>,
    /// The last error, with its time (ms since the epoch).
    pub last_error: Option<(u64, String)>,
}

/// Per-device state the line task keeps current.
#[derive(Debug)]
struct DeviceState {
    name: String,
    line: String,
    unit_id: u8,
    points: usize,
    reads_per_poll: usize,
    polls: u64,
    consecutive_failures: u32,
    last_poll_ms: u64,
    last_latency_ms: f64,
    lateness_us: VecDeque<u32>,
    errors: BTreeMap<String, u64>,
    last_error: Option<(u64, String)>,
}

/// The pollers' devices and counters.
#[derive(Debug, Default)]
pub struct Status {
    /// Counters.
    pub counters: Counters,
    devices: Mutex<Vec<DeviceState>>,
}

impl Status {
    /// Every device, in config order.
    pub fn devices(&self) -> Vec<DeviceView> {
        let devices = lock(&self.devices);
        devices
            .iter()
            .map(|d| {
                let mut late: Vec<u32> = d.lateness_us.iter().copied().collect();
                late.sort_unstable();
                let pct = |q: f64| -> f64 {
                    if late.is_empty() {
                        return 0.0;
                    }
                    let i = ((late.len() - 1) as f64 * q).round() as usize;
                    f64::from(late[i.min(late.len() - 1)]) / 1000.0
                };
                DeviceView {
                    name: d.name.clone(),
                    line: d.line.clone(),
                    unit_id: d.unit_id,
                    state: if d.polls == 0 {
                        "starting"
                    } else if d.consecutive_failures > 0 {
                        "failing"
                    } else {
                        "ok"
                    },
                    points: d.points,
                    reads_per_poll: d.reads_per_poll,
                    polls: d.polls,
                    consecutive_failures: d.consecutive_failures,
                    last_poll_ms: d.last_poll_ms,
                    last_latency_ms: d.last_latency_ms,
                    lateness_p50_ms: pct(0.5),
                    lateness_p99_ms: pct(0.99),
                    lateness_max_ms: late.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
                    errors: d.errors.clone(),
                    last_error: d.last_error.clone(),
                }
            })
            .collect()
    }

    /// Counters by name (as `$SYS/brokers/{node}/modbus/...`).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (devices, failing) = {
            let d = lock(&self.devices);
            (
                d.len() as u64,
                d.iter().filter(|d| d.consecutive_failures > 0).count() as u64,
            )
        };
        vec![
            ("devices", devices),
            ("devices_failing", failing),
            ("polls", get(&c.polls)),
            ("polls_skipped", get(&c.polls_skipped)),
            ("reads", get(&c.reads)),
            ("timeouts", get(&c.timeouts)),
            ("exceptions", get(&c.exceptions)),
            ("bad_responses", get(&c.bad_responses)),
            ("unreachable", get(&c.unreachable)),
            ("splits", get(&c.splits)),
            ("published", get(&c.published)),
            ("publish_errors", get(&c.publish_errors)),
            ("writes", get(&c.writes)),
            ("write_errors", get(&c.write_errors)),
        ]
    }

    /// Applies `f` to device `index`'s state.
    fn update(&self, index: usize, f: impl FnOnce(&mut DeviceState)) {
        if let Some(d) = lock(&self.devices).get_mut(index) {
            f(d);
        }
    }

    /// Records an error of `kind` on device `index`.
    fn error(&self, index: usize, kind: &Quality, detail: String) {
        let now = crate::modbus::now_ms();
        self.update(index, |d| {
            *d.errors.entry(kind.as_str().into_owned()).or_default() += 1;
            d.last_error = Some((now, detail));
        });
    }
}

/// Milliseconds since the epoch, for sample timestamps.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts the pollers: one task per line, one per device. Returns at once.
pub fn spawn(config: &ModbusConfig, broker: &Arc<Broker>, tracker: &TaskTracker) {
    let status = Arc::new(Status::default());
    {
        let mut states = lock(&status.devices);
        for d in &config.devices {
            states.push(DeviceState {
                name: d.name.clone(),
                line: d.transport.line_key(),
                unit_id: d.unit_id,
                points: d.points.len(),
                reads_per_poll: holdfast_modbus::plan::Plan::new(&d.points, d.limits).len(),
                polls: 0,
                consecutive_failures: 0,
                last_poll_ms: 0,
                last_latency_ms: 0.0,
                lateness_us: VecDeque::with_capacity(LATENESS_SAMPLES),
                errors: BTreeMap::new(),
                last_error: None,
            });
        }
    }
    if broker.modbus.set(status.clone()).is_err() {
        tracing::error!("modbus: the pollers were started twice; the second start is ignored");
        return;
    }
    let mut lines: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        lines.entry(d.transport.line_key()).or_default().push(i);
    }
    for (key, members) in lines {
        let (write_tx, write_rx) = mpsc::channel(WRITES);
        let mut polled = Vec::new();
        for &index in &members {
            let device: Arc<ModbusDevice> = Arc::new(config.devices[index].clone());
            let (events_tx, events_rx) = mpsc::channel(EVENTS);
            tracker.spawn(device::run(
                device::Device {
                    index,
                    config: device.clone(),
                    prefix: config.topic_prefix.clone(),
                    status: status.clone(),
                    events: events_rx,
                    writes: write_tx.clone(),
                },
                broker.clone(),
            ));
            polled.push(line::Member {
                index,
                config: device,
                events: events_tx,
            });
        }
        tracing::info!(line = %key, devices = polled.len(), "modbus: polling");
        tracker.spawn(line::run(
            key,
            polled,
            write_rx,
            status.clone(),
            broker.shutdown.clone(),
        ));
    }
}

/// A write for a line to make, from a device's task.
#[derive(Debug)]
pub(crate) struct WriteCommand {
    /// Device index (in config order).
    device: usize,
    /// Point index in the device's map.
    point: usize,
    /// What to send.
    write: holdfast_modbus::value::Write,
    /// Where the outcome is published (and the correlation data to echo).
    reply: device::Reply,
    /// When it was handed to the line (a write that waits too long is not made).
    queued: tokio::time::Instant,
}

/// What a line hands a device's task.
#[derive(Debug)]
pub(crate) enum Event {
    /// One poll's samples (every point of the device, in map order).
    Poll {
        /// When the poll ended, ms since the epoch.
        ts_ms: u64,
        /// One sample per point.
        samples: Vec<holdfast_modbus::report::Sample>,
    },
    /// A write's outcome.
    Written {
        /// The point.
        point: usize,
        /// Where to publish the outcome.
        reply: device::Reply,
        /// Ok, or the quality-like reason it failed and a detail.
        outcome: Result<(), (Quality, String)>,
    },
}
