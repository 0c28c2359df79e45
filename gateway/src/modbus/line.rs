//! One Modbus line: a TCP connection or a serial port, and the devices polled over it.
//!
//! Owns the connection (connected or opened on first use and again after it fails), the
//! schedule of its devices (fixed rate; the device due first goes first, so units on one
//! RS-485 line take turns), every request on the line (one at a time, with the RTU
//! inter-frame gap, a timeout and retries), the reads' plans (split when a device rejects a
//! merged read) and the back-off of a device that does not answer. Writes from the devices'
//! tasks go between polls. Never publishes: samples and write outcomes go to the device's
//! task, and when that task is behind, the line waits rather than drop them.

use super::{Event, Status, WriteCommand};
use crate::config::{ModbusDevice, ModbusTransport};
use holdfast_modbus::plan::{extract, Data, Plan, Read};
use holdfast_modbus::point::Table;
use holdfast_modbus::report::{Quality, Sample};
use holdfast_modbus::value::Write;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::{Client as _, SlaveContext as _};
use tokio_modbus::{Request, Response, Slave};
use tokio_util::sync::CancellationToken;

/// A device as its line polls it.
#[derive(Debug)]
pub(super) struct Member {
    /// Index in config order (for the status table).
    pub index: usize,
    /// Its configuration.
    pub config: Arc<ModbusDevice>,
    /// Where its samples and write outcomes go.
    pub events: mpsc::Sender<Event>,
}

/// A member and its schedule.
struct Polled {
    member: Member,
    plan: Plan,
    /// The next tick of the fixed-rate schedule.
    scheduled: Instant,
    /// When it is next polled (the tick, or later while backing off).
    due: Instant,
    /// When its last poll ended: of two devices due at once, the one waiting longer goes first
    /// (units of one saturated line take turns).
    last_polled: Instant,
    /// The next poll is an extra one (after a write), off the schedule.
    extra: bool,
    /// Polls in a row that failed.
    failures: u32,
    /// What each failing read (by table and address) last logged, so a point a device keeps
    /// rejecting is logged once, not at every poll.
    logged: HashMap<(Table, u16), Quality>,
}

/// How long a write may wait for its line before it is answered as expired.
const WRITE_EXPIRY: Duration = Duration::from_secs(10);
/// After a failed RTU transaction the port is reopened, its input flushed, after this long
/// (at most; the device's timeout if shorter), so an answer that comes late is not read as
/// the next request's. An answer later than timeout + this can still be (RTU frames carry no
/// transaction id); longer would hold up the other units of the line at each dead unit's poll.
const RTU_RESYNC: Duration = Duration::from_millis(100);

/// Why a request got no usable answer.
#[derive(Debug, Clone)]
struct Failure {
    quality: Quality,
    detail: String,
}

impl Failure {
    fn new(quality: Quality, detail: impl Into<String>) -> Failure {
        Failure {
            quality,
            detail: detail.into(),
        }
    }
}

/// The connection and its timing.
struct Line {
    key: String,
    transport: ModbusTransport,
    conn: Option<Context>,
    /// After a failed RTU transaction: no reopening before this.
    resync_until: Option<Instant>,
    /// When the last frame ended (RTU: the next may start an inter-frame gap later).
    last_frame: Instant,
    gap: Duration,
    status: Arc<Status>,
}

/// Serves the line until `shutdown`.
pub(super) async fn run(
    key: String,
    members: Vec<Member>,
    mut writes: mpsc::Receiver<WriteCommand>,
    status: Arc<Status>,
    shutdown: CancellationToken,
) {
    let Some(first) = members.first() else {
        return;
    };
    let transport = first.config.transport.clone();
    let gap = match &transport {
        ModbusTransport::Rtu(line) => holdfast_modbus::line::inter_frame_gap(line.baud),
        ModbusTransport::Tcp(_) => Duration::ZERO,
    };
    let start = Instant::now();
    let mut polled: Vec<Polled> = members
        .into_iter()
        .map(|member| Polled {
            plan: Plan::new(&member.config.points, member.config.limits),
            member,
            scheduled: start,
            due: start,
            last_polled: start,
            extra: false,
            failures: 0,
            logged: HashMap::new(),
        })
        .collect();
    let mut line = Line {
        key,
        transport,
        conn: None,
        resync_until: None,
        last_frame: start,
        gap,
        status,
    };
    let mut writes_open = true;
    let mut wrote = false;
    loop {
        let Some(next) = (0..polled.len()).min_by_key(|i| (polled[*i].due, polled[*i].last_polled))
        else {
            return;
        };
        let due = polled[next].due;
        // Writes go first, but after one a poll that is due goes next: a stream of writes
        // cannot stop the polling.
        if wrote && due <= Instant::now() {
            wrote = false;
            if line.poll(&mut polled[next]).await.is_err() {
                break;
            }
            continue;
        }
        wrote = false;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            command = writes.recv(), if writes_open => match command {
                Some(command) => {
                    let Some(p) = polled.iter_mut().find(|p| p.member.index == command.device) else {
                        continue;
                    };
                    if line.write(p, command).await.is_err() {
                        break;
                    }
                    wrote = true;
                }
                None => writes_open = false,
            },
            _ = tokio::time::sleep_until(due) => {
                if line.poll(&mut polled[next]).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(mut conn) = line.conn.take() {
        let _ = conn.disconnect().await;
    }
}

/// The device's task is gone (shutdown).
struct Gone;

impl Line {
    /// Polls one device: every read of its plan, then its samples to its task and its next
    /// time on the schedule.
    async fn poll(&mut self, p: &mut Polled) -> Result<(), Gone> {
        let cfg = p.member.config.clone();
        let started = Instant::now();
        let lateness = started.saturating_duration_since(p.scheduled);
        let mut samples: Vec<Option<Sample>> = vec![None; cfg.points.len()];
        let mut answered = false;
        let mut fatal: Option<Failure> = None;
        let mut i = 0;
        while i < p.plan.len() {
            let read = p.plan.reads()[i].clone();
            if let Some(f) = &fatal {
                fill(&mut samples, &read, f.quality);
                i += 1;
                continue;
            }
            match self.read(&cfg, &read).await {
                Ok(data) => {
                    answered = true;
                    p.logged.remove(&(read.table, read.address));
                    let values = match &data {
                        ReadData::Registers(r) => extract(&read, &cfg.points, Data::Registers(r)),
                        ReadData::Bits(b) => extract(&read, &cfg.points, Data::Bits(b)),
                    };
                    for (point, value) in values {
                        samples[point] = Some(match value {
                            Ok(v) => Sample::good(v),
                            Err(e) => {
                                self.status.error(
                                    p.member.index,
                                    &Quality::BadResponse,
                                    format!("point {}: {e}", cfg.points[point].name),
                                );
                                Sample::failed(Quality::BadResponse)
                            }
                        });
                    }
                }
                // The device refuses the address or the count: split the read (for good) until
                // the refused point stands alone; the device itself is fine.
                Err(f) if matches!(f.quality, Quality::Exception(1..=3)) => {
                    answered = true;
                    if matches!(f.quality, Quality::Exception(2 | 3))
                        && p.plan.split(i, &cfg.points)
                    {
                        self.status.counters.splits.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            device = %cfg.name,
                            line = %self.key,
                            "modbus: {} {}+{} rejected ({}); reading it in two parts",
                            read.table.as_str(), read.address, read.count, f.detail
                        );
                        continue;
                    }
                    self.failed(p, &f, &read, &cfg);
                    fill(&mut samples, &read, f.quality);
                }
                Err(f) => {
                    self.failed(p, &f, &read, &cfg);
                    fill(&mut samples, &read, f.quality);
                    if !answered {
                        fatal = Some(f);
                    }
                }
            }
            i += 1;
        }
        let ended = Instant::now();
        p.last_polled = ended;
        let extra = std::mem::take(&mut p.extra);
        let failed_poll = fatal.is_some();
        let counters = &self.status.counters;
        counters.polls.fetch_add(1, Ordering::Relaxed);
        if failed_poll {
            p.failures = p.failures.saturating_add(1);
        } else {
            if p.failures >= 2 {
                tracing::info!(device = %cfg.name, line = %self.key, "modbus: device answers again");
            }
            p.failures = 0;
        }
        if p.failures >= 2 {
            // Backing off: interval x 2^(failures-1), at most backoff_max but never less than
            // the interval; the schedule starts again from the next poll.
            let factor = 1u32 << (p.failures - 1).min(16);
            let wait = cfg
                .interval
                .saturating_mul(factor)
                .min(cfg.backoff_max)
                .max(cfg.interval);
            p.scheduled = ended + wait;
            if p.failures == 2 {
                tracing::warn!(
                    device = %cfg.name,
                    line = %self.key,
                    "modbus: device not answering; backing off (at most {:?} between polls)",
                    cfg.backoff_max.max(cfg.interval)
                );
            }
        } else if !extra {
            // The fixed-rate schedule: the next tick, skipping ticks that have already passed.
            p.scheduled += cfg.interval;
            if p.scheduled <= ended {
                let behind = ended.duration_since(p.scheduled);
                let skipped = (behind.as_nanos() / cfg.interval.as_nanos().max(1)) as u32 + 1;
                p.scheduled += cfg.interval * skipped;
                counters
                    .polls_skipped
                    .fetch_add(u64::from(skipped), Ordering::Relaxed);
            }
        }
        p.due = p.scheduled;
        let reads = p.plan.len();
        let failures = p.failures;
        let ts_ms = super::now_ms();
        self.status.update(p.member.index, |d| {
            d.polls += 1;
            d.consecutive_failures = failures;
            d.reads_per_poll = reads;
            d.last_poll_ms = ts_ms;
            d.last_latency_ms = ended.duration_since(started).as_secs_f64() * 1000.0;
            if !extra && d.lateness_us.len() == super::LATENESS_SAMPLES {
                d.lateness_us.pop_front();
            }
            if !extra {
                d.lateness_us
                    .push_back(u32::try_from(lateness.as_micros()).unwrap_or(u32::MAX));
            }
        });
        let samples = samples
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Sample::failed(Quality::BadResponse)))
            .collect();
        p.member
            .events
            .send(Event::Poll { ts_ms, samples })
            .await
            .map_err(|_| Gone)
    }

    /// Counts and logs a failed read of device `p`.
    fn failed(&self, p: &mut Polled, f: &Failure, read: &Read, cfg: &ModbusDevice) {
        self.status
            .error(p.member.index, &f.quality, f.detail.clone());
        // Logged once per read and reason; a device already backing off not at every poll.
        let before = p.logged.insert((read.table, read.address), f.quality);
        if p.failures < 2 && before != Some(f.quality) {
            tracing::warn!(
                device = %cfg.name,
                line = %self.key,
                unit_id = cfg.unit_id,
                "modbus: read {} {}+{} failed: {} ({})",
                read.table.as_str(),
                read.address,
                read.count,
                f.quality.as_str(),
                f.detail
            );
        }
    }

    /// One read with its retries.
    async fn read(&mut self, cfg: &ModbusDevice, read: &Read) -> Result<ReadData, Failure> {
        let request = match read.table {
            Table::Coil => Request::ReadCoils(read.address, read.count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(read.address, read.count),
            Table::HoldingRegister => Request::ReadHoldingRegisters(read.address, read.count),
            Table::InputRegister => Request::ReadInputRegisters(read.address, read.count),
        };
        let count = usize::from(read.count);
        let mut attempt = 0;
        loop {
            self.status.counters.reads.fetch_add(1, Ordering::Relaxed);
            let result = self.transact(cfg, request.clone()).await;
            match result {
                Err(f) if f.quality == Quality::Timeout && attempt < cfg.retries => {
                    attempt += 1;
                }
                Err(f) => return Err(f),
                Ok(response) => {
                    return match response {
                        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits)
                            if bits.len() >= count =>
                        {
                            Ok(ReadData::Bits(bits))
                        }
                        Response::ReadHoldingRegisters(words)
                        | Response::ReadInputRegisters(words)
                            if words.len() == count =>
                        {
                            Ok(ReadData::Registers(words))
                        }
                        other => {
                            self.status
                                .counters
                                .bad_responses
                                .fetch_add(1, Ordering::Relaxed);
                            self.drop_conn(cfg);
                            Err(Failure::new(
                                Quality::BadResponse,
                                format!(
                                    "asked for {count}, the answer holds {}",
                                    answer_len(&other)
                                ),
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Makes a write for a device's task and hands it the outcome.
    async fn write(&mut self, p: &mut Polled, command: WriteCommand) -> Result<(), Gone> {
        let cfg = p.member.config.clone();
        let Some(point) = cfg.points.get(command.point) else {
            return Ok(());
        };
        let request = match &command.write {
            Write::Coil(on) => Request::WriteSingleCoil(point.address, *on),
            Write::Registers(words) if words.len() == 1 => {
                Request::WriteSingleRegister(point.address, words[0])
            }
            Write::Registers(words) => {
                Request::WriteMultipleRegisters(point.address, Cow::Owned(words.clone()))
            }
            Write::Bit { bit, on } => {
                let (and, or) = Write::masks(*bit, *on);
                Request::MaskWriteRegister(point.address, and, or)
            }
        };
        let waited = command.queued.elapsed();
        let result = if waited > WRITE_EXPIRY {
            Err(Failure::new(
                Quality::Timeout,
                format!("expired: waited {:.1}s for the line", waited.as_secs_f64()),
            ))
        } else {
            self.status.counters.writes.fetch_add(1, Ordering::Relaxed);
            let expected = request.clone();
            match self.transact(&cfg, request).await {
                Ok(response) if echoes(&expected, &response) => Ok(()),
                Ok(response) => {
                    self.status
                        .counters
                        .bad_responses
                        .fetch_add(1, Ordering::Relaxed);
                    self.drop_conn(&cfg);
                    Err(Failure::new(
                        Quality::BadResponse,
                        format!("the answer {response:?} does not confirm the write"),
                    ))
                }
                Err(f) => Err(f),
            }
        };
        let outcome = match result {
            Ok(()) => {
                // Read the device again at once (off the schedule), so the new value is
                // published.
                p.due = Instant::now();
                p.extra = true;
                Ok(())
            }
            Err(f) => {
                self.status
                    .counters
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    device = %cfg.name,
                    line = %self.key,
                    point = %point.name,
                    "modbus: write failed: {} ({})",
                    f.quality.as_str(),
                    f.detail
                );
                Err((f.quality, f.detail))
            }
        };
        p.member
            .events
            .send(Event::Written {
                point: command.point,
                reply: command.reply,
                outcome,
            })
            .await
            .map_err(|_| Gone)
    }

    /// One request and its answer: connects if needed, waits out the inter-frame gap, and
    /// classifies what went wrong. A timeout or a malformed answer drops a TCP connection (a
    /// late answer would be taken for the next one's).
    async fn transact(
        &mut self,
        cfg: &ModbusDevice,
        request: Request<'static>,
    ) -> Result<Response, Failure> {
        if self.conn.is_none() {
            if let Some(until) = self.resync_until.take() {
                tokio::time::sleep_until(until).await;
            }
            match connect(&self.transport, cfg.timeout).await {
                Ok(conn) => {
                    tracing::debug!(line = %self.key, "modbus: connected");
                    self.conn = Some(conn);
                }
                Err(detail) => {
                    self.status
                        .counters
                        .unreachable
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(Failure::new(Quality::Unreachable, detail));
                }
            }
        }
        if !self.gap.is_zero() {
            tokio::time::sleep_until(self.last_frame + self.gap).await;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::new(Quality::Unreachable, "not connected"));
        };
        conn.set_slave(Slave(cfg.unit_id));
        let result = tokio::time::timeout(cfg.timeout, conn.call(request)).await;
        self.last_frame = Instant::now();
        let counters = &self.status.counters;
        match result {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(exception))) => {
                counters.exceptions.fetch_add(1, Ordering::Relaxed);
                let code = u8::from(exception);
                Err(Failure::new(
                    Quality::Exception(code),
                    format!("exception {code}: {exception}"),
                ))
            }
            Err(_) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                self.drop_conn(cfg);
                Err(Failure::new(
                    Quality::Timeout,
                    format!("no answer within {:?}", cfg.timeout),
                ))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                counters.bad_responses.fetch_add(1, Ordering::Relaxed);
                self.drop_conn(cfg);
                Err(Failure::new(Quality::BadResponse, e.to_string()))
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                counters.bad_responses.fetch_add(1, Ordering::Relaxed);
                self.drop_conn(cfg);
                Err(Failure::new(Quality::BadResponse, e.to_string()))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                counters.unreachable.fetch_add(1, Ordering::Relaxed);
                self.conn = None;
                tracing::warn!(line = %self.key, "modbus: connection lost: {e}");
                Err(Failure::new(
                    Quality::Unreachable,
                    format!("connection lost: {e}"),
                ))
            }
        }
    }
}

impl Line {
    /// Drops the connection after a failed transaction: a TCP connection is made again at the
    /// next request; a serial port is reopened, with its input flushed, once an answer that
    /// comes late would have arrived (a late answer is never read as the next request's).
    fn drop_conn(&mut self, cfg: &ModbusDevice) {
        self.conn = None;
        if matches!(self.transport, ModbusTransport::Rtu(_)) {
            self.resync_until = Some(Instant::now() + cfg.timeout.min(RTU_RESYNC));
        }
    }
}

/// Whether a write's answer confirms it (Modbus echoes the address and the value or count).
fn echoes(request: &Request<'_>, response: &Response) -> bool {
    match (request, response) {
        (Request::WriteSingleCoil(a, v), Response::WriteSingleCoil(b, w)) => a == b && v == w,
        (Request::WriteSingleRegister(a, v), Response::WriteSingleRegister(b, w)) => {
            a == b && v == w
        }
        (Request::WriteMultipleRegisters(a, words), Response::WriteMultipleRegisters(b, n)) => {
            a == b && usize::from(*n) == words.len()
        }
        (Request::MaskWriteRegister(a, x, y), Response::MaskWriteRegister(b, u, v)) => {
            a == b && x == u && y == v
        }
        _ => false,
    }
}

/// What a read returned.
enum ReadData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

fn answer_len(response: &Response) -> String {
    match response {
        Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => format!("{} bits", b.len()),
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => {
            format!("{} registers", w.len())
        }
        other => format!("{other:?}"),
    }
}

/// Marks every point of `read` with `quality`.
fn fill(samples: &mut [Option<Sample>], read: &Read, quality: Quality) {
    for &point in &read.points {
        if let Some(slot) = samples.get_mut(point) {
            *slot = Some(Sample::failed(quality));
        }
    }
}

/// Connects to a TCP device or opens a serial port.
async fn connect(transport: &ModbusTransport, timeout: Duration) -> Result<Context, String> {
    match transport {
        ModbusTransport::Tcp(addr) => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connect to {addr}: no answer within {timeout:?}"))?
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        ModbusTransport::Rtu(line) => {
            let port = crate::serial::open(line)
                .map_err(|e| format!("open {}: {e}", line.port.display()))?;
            // Whatever a device sent before is no answer to anything we will ask.
            port.clear_input();
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}
