//! `holdfast ctl trace`: every log line, debug level included, of one client, topic or address,
//! written to a file while the console log stays at its configured level.
//!
//! Owns the process-wide trace registry ([`traces`]) and the tracing layer that feeds it
//! ([`layer`]). A trace matches the fields an event carries: `client_id` (a client trace),
//! `peer` (an ip trace: an address or a CIDR network), `topic` or `filter` (a topic trace: an
//! MQTT topic filter). Connection code therefore names the client, the peer and the topic in
//! its events. While no trace runs, the layer asks for nothing (its callsites are cached as
//! "never" and its level hint is OFF), so debug lines cost what they cost before; starting or
//! stopping a trace rebuilds tracing's callsite cache. It never sees other crates' events and
//! never changes what the console shows.
//!
//! It must never stall or grow the gateway: at most [`MAX_TRACES`] traces run at once, each
//! matched line is handed to the trace's own writer thread through a channel of
//! [`QUEUE_LINES`] lines (a full channel drops the line and counts it), and a file stops
//! growing at its size limit (the rest is counted, not written).

use crate::auth::acl::Cidr;
use holdfast_mqtt::topic;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Traces that may run at once.
pub const MAX_TRACES: usize = 8;
/// Lines queued for one trace's writer; beyond it lines are dropped and counted.
pub const QUEUE_LINES: usize = 8192;
/// Size limit of a trace file unless the request sets one.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What a trace follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// One client id.
    Client,
    /// Topics matching one filter (publishes, deliveries, subscriptions).
    Topic,
    /// Connections from one address or network.
    Ip,
}

impl TraceKind {
    /// The word used on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Client => "client",
            TraceKind::Topic => "topic",
            TraceKind::Ip => "ip",
        }
    }
}

/// A running (or just stopped) trace, as `holdfast ctl trace list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceInfo {
    /// What it follows.
    pub kind: TraceKind,
    /// The client id, topic filter or address.
    pub value: String,
    /// Where the lines go.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// Seconds since the epoch when it started.
    pub started_at: u64,
    /// Lines written so far.
    pub lines: u64,
    /// Lines dropped because the writer fell behind.
    pub dropped_queue_full: u64,
    /// Lines dropped because the file reached its size limit.
    pub dropped_size_limit: u64,
}

/// Which events a trace takes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Client(String),
    Topic(String),
    Ip(Cidr),
}

impl Matcher {
    fn new(kind: TraceKind, value: &str) -> Result<Matcher, String> {
        match kind {
            TraceKind::Client if value.is_empty() => Err("the client id is empty".to_owned()),
            TraceKind::Client => Ok(Matcher::Client(value.to_owned())),
            TraceKind::Topic => topic::validate_topic_filter(value)
                .map(|()| Matcher::Topic(value.to_owned()))
                .map_err(|e| format!("{value:?} is not a topic filter: {e}")),
            TraceKind::Ip => Cidr::parse(value).map(Matcher::Ip),
        }
    }

    fn matches(&self, fields: &EventFields) -> bool {
        match self {
            Matcher::Client(id) => fields.client_id.get() == Some(id.as_str()),
            Matcher::Topic(want) => {
                fields.topic.get().is_some_and(|t| topic::matches(want, t))
                    || fields.filter.get().is_some_and(|f| {
                        f == want || (!topic::has_wildcards(f) && topic::matches(want, f))
                    })
            }
            Matcher::Ip(net) => fields
                .peer
                .get()
                .and_then(peer_ip)
                .is_some_and(|ip| net.contains(ip)),
        }
    }
}

/// The address in a `peer` field: `10.0.0.7:51234`, `[fd00::7]:51234` or a bare address.
fn peer_ip(peer: &str) -> Option<IpAddr> {
    peer.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| peer.parse::<IpAddr>())
        .ok()
}

/// A message to a trace's writer thread.
enum ToWriter {
    Line(String),
    Stop,
}

/// Counters a writer thread keeps.
#[derive(Debug, Default)]
struct Counters {
    lines: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_size_limit: AtomicU64,
}

/// One running trace.
struct Trace {
    kind: TraceKind,
    value: String,
    matcher: Matcher,
    file: PathBuf,
    started_at: u64,
    tx: SyncSender<ToWriter>,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Trace {
    fn info(&self) -> TraceInfo {
        TraceInfo {
            kind: self.kind,
            value: self.value.clone(),
            file: self.file.clone(),
            started_at: self.started_at,
            lines: self.counters.lines.load(Ordering::Relaxed),
            dropped_queue_full: self.counters.dropped_queue_full.load(Ordering::Relaxed),
            dropped_size_limit: self.counters.dropped_size_limit.load(Ordering::Relaxed),
        }
    }

    fn offer(&self, line: String) {
        match self.tx.try_send(ToWriter::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to finish (after the lines already queued) and waits for it.
    fn finish(&self) {
        // A blocking send: the writer drains the queue, so this waits at most for it to
        // write what was queued before.
        let _ = self.tx.send(ToWriter::Stop);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The running traces.
pub struct Traces {
    /// True while at least one trace runs: the layer's only cost otherwise.
    active: AtomicBool,
    list: RwLock<Vec<Arc<Trace>>>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("running", &self.read().len())
            .finish()
    }
}

static TRACES: Traces = Traces::new();

/// The process-wide registry the log layer feeds (one per process, as the subscriber is).
pub fn traces() -> &'static Traces {
    &TRACES
}

/// A request to start a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSpec {
    /// What it follows.
    pub kind: TraceKind,
    /// The client id, topic filter, or address/CIDR network.
    pub value: String,
    /// Absolute path of the file to write (created, mode 0600; an existing path is refused).
    pub file: PathBuf,
    /// Size limit of the file in bytes (default [`DEFAULT_MAX_BYTES`]).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl Traces {
    const fn new() -> Traces {
        Traces {
            active: AtomicBool::new(false),
            list: RwLock::new(Vec::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Trace>>> {
        self.list
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Trace>>> {
        self.list
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a trace; the file is created (never an existing one) before this returns.
    pub fn start(&self, spec: TraceSpec) -> Result<TraceInfo, String> {
        let matcher = Matcher::new(spec.kind, &spec.value)?;
        if !spec.file.is_absolute() {
            return Err(format!(
                "{}: the trace file must be an absolute path",
                spec.file.display()
            ));
        }
        let max_bytes = spec.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err("max_bytes must be at least 1".to_owned());
        }
        let mut list = self.write();
        if list.len() >= MAX_TRACES {
            return Err(format!(
                "{MAX_TRACES} traces are running already; stop one first"
            ));
        }
        if list
            .iter()
            .any(|t| t.kind == spec.kind && t.value == spec.value)
        {
            return Err(format!(
                "a trace of {} {:?} is running already",
                spec.kind.as_str(),
                spec.value
            ));
        }
        let file = open_trace_file(&spec.file)?;
        let started = SystemTime::now();
        let started_at = started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let counters = Arc::new(Counters::default());
        let header = format!(
            "# holdfast trace of {} {:?}, started {}\n",
            spec.kind.as_str(),
            spec.value,
            timestamp()
        );
        let writer = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("trace-writer".to_owned())
                .spawn(move || write_lines(file, rx, header, max_bytes, &counters))
                .map_err(|e| format!("cannot start the trace writer: {e}"))?
        };
        let trace = Arc::new(Trace {
            kind: spec.kind,
            value: spec.value,
            matcher,
            file: spec.file,
            started_at,
            tx,
            counters,
            writer: Mutex::new(Some(writer)),
        });
        let info = trace.info();
        list.push(trace);
        self.active.store(true, Ordering::Release);
        drop(list);
        // Debug callsites were cached as "never" while no trace ran: ask them again.
        tracing::callsite::rebuild_interest_cache();
        tracing::info!(kind = info.kind.as_str(), value = %info.value, file = %info.file.display(), "trace started");
        Ok(info)
    }

    /// Stops the traces of `kind` (and `value`, if given), or every trace when `kind` is
    /// `None`; returns what they wrote. Blocks until their files are complete.
    pub fn stop(&self, kind: Option<TraceKind>, value: Option<&str>) -> Vec<TraceInfo> {
        let stopped: Vec<Arc<Trace>> = {
            let mut list = self.write();
            let (stop, keep) = list.drain(..).partition(|t| {
                kind.is_none_or(|k| t.kind == k) && value.is_none_or(|v| t.value == v)
            });
            *list = keep;
            self.active.store(!list.is_empty(), Ordering::Release);
            stop
        };
        // With no trace left, debug callsites go back to costing nothing.
        tracing::callsite::rebuild_interest_cache();
        stopped
            .iter()
            .map(|t| {
                t.finish();
                let info = t.info();
                tracing::info!(kind = info.kind.as_str(), value = %info.value, file = %info.file.display(), lines = info.lines, dropped = info.dropped_queue_full + info.dropped_size_limit, "trace stopped");
                info
            })
            .collect()
    }

    /// The running traces.
    pub fn list(&self) -> Vec<TraceInfo> {
        self.read().iter().map(|t| t.info()).collect()
    }

    /// Hands `event` to every trace it matches.
    fn offer(&self, event: &Event<'_>) {
        let list = self.read();
        if list.is_empty() {
            return;
        }
        // Most events match no trace: a first pass records only the four matched fields, into
        // buffers reused by the thread; the whole line is formatted only for a match.
        let _ = SCRATCH.try_with(|scratch| {
            let Ok(mut fields) = scratch.try_borrow_mut() else {
                return;
            };
            fields.reset(false);
            event.record(&mut *fields);
            if !list.iter().any(|t| t.matcher.matches(&fields)) {
                return;
            }
            fields.reset(true);
            event.record(&mut *fields);
            let line = format_line(event.metadata(), &fields);
            for trace in list.iter().filter(|t| t.matcher.matches(&fields)) {
                trace.offer(line.clone());
            }
        });
    }
}

/// Creates the trace file; never opens an existing path. `O_CREAT | O_EXCL` also refuses a
/// symlink (even a dangling one), so `ctl trace start` run by root cannot be pointed at
/// `/etc/shadow` or any other file to truncate and fill.
fn open_trace_file(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "cannot open {}: it exists (a trace writes a new file: remove it or pick another name)",
                    path.display()
                )
            } else {
                format!("cannot open {}: {e}", path.display())
            }
        })
}

/// A trace file that goes quiet after its first write error (logged once).
struct TraceFile {
    out: BufWriter<File>,
    failed: bool,
}

impl TraceFile {
    fn put(&mut self, text: &str) {
        if self.failed {
            return;
        }
        if let Err(e) = self.out.write_all(text.as_bytes()) {
            self.failed = true;
            tracing::warn!(error = %e, "trace file write failed; the trace writes nothing more");
        }
    }

    fn flush(&mut self) {
        if !self.failed {
            let _ = self.out.flush();
        }
    }
}

/// The writer thread of one trace: writes lines until told to stop, flushing whenever the
/// queue runs empty, and stops writing (but keeps counting) at `max_bytes`.
fn write_lines(
    file: File,
    rx: Receiver<ToWriter>,
    header: String,
    max_bytes: u64,
    counters: &Counters,
) {
    let mut out = TraceFile {
        out: BufWriter::new(file),
        failed: false,
    };
    out.put(&header);
    let mut written = header.len() as u64;
    let mut size_noted = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToWriter::Stop => {
                    out.put(&format!(
                        "# trace stopped {}: {} lines, {} dropped (writer behind), {} dropped (size limit)\n",
                        timestamp(),
                        counters.lines.load(Ordering::Relaxed),
                        counters.dropped_queue_full.load(Ordering::Relaxed),
                        counters.dropped_size_limit.load(Ordering::Relaxed),
                    ));
                    out.flush();
                    return;
                }
                ToWriter::Line(line) if written + line.len() as u64 > max_bytes => {
                    counters.dropped_size_limit.fetch_add(1, Ordering::Relaxed);
                    if !size_noted {
                        size_noted = true;
                        out.put("# size limit reached: further lines are counted, not written\n");
                    }
                }
                ToWriter::Line(line) => {
                    written += line.len() as u64;
                    out.put(&line);
                    counters.lines.fetch_add(1, Ordering::Relaxed);
                }
            }
            next = rx.try_recv().ok();
        }
        out.flush();
    }
    out.flush();
}

fn timestamp() -> String {
    let mut s = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut s));
    s
}

/// One line as the console would print it, with the target: `TIME LEVEL target: message k=v`.
fn format_line(meta: &Metadata<'_>, fields: &EventFields) -> String {
    let mut line = timestamp();
    let _ = write!(
        line,
        " {:>5} {}: {}{}",
        meta.level(),
        meta.target(),
        fields.message,
        fields.rest
    );
    line.push('\n');
    line
}

thread_local! {
    /// The field buffers of the events a thread logs while a trace runs.
    static SCRATCH: RefCell<EventFields> = RefCell::new(EventFields::default());
}

/// One recorded field value, its buffer kept from event to event.
#[derive(Debug, Default)]
struct Slot {
    text: String,
    set: bool,
}

impl Slot {
    fn get(&self) -> Option<&str> {
        self.set.then_some(self.text.as_str())
    }
}

/// The fields of one event: the ones traces match on and, when `full`, the message and every
/// field as `k=v` for the line.
#[derive(Debug, Default)]
struct EventFields {
    client_id: Slot,
    peer: Slot,
    topic: Slot,
    filter: Slot,
    full: bool,
    message: String,
    rest: String,
}

impl EventFields {
    fn reset(&mut self, full: bool) {
        for slot in [
            &mut self.client_id,
            &mut self.peer,
            &mut self.topic,
            &mut self.filter,
        ] {
            slot.text.clear();
            slot.set = false;
        }
        self.message.clear();
        self.rest.clear();
        self.full = full;
    }

    fn put(&mut self, field: &Field, write: impl Fn(&mut String)) {
        let slot = match field.name() {
            "client_id" => Some(&mut self.client_id),
            "peer" => Some(&mut self.peer),
            "topic" => Some(&mut self.topic),
            "filter" => Some(&mut self.filter),
            _ => None,
        };
        if let Some(slot) = slot {
            slot.text.clear();
            write(&mut slot.text);
            slot.set = true;
        }
        if self.full {
            if field.name() == "message" {
                write(&mut self.message);
            } else {
                let _ = write!(self.rest, " {}=", field.name());
                write(&mut self.rest);
            }
        }
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |s| s.push_str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, |s| {
            let _ = write!(s, "{value:?}");
        });
    }
}

/// Whether a callsite is one traces may take: a holdfast event at debug level or above.
fn traceable(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::DEBUG && meta.target().starts_with("holdfast")
}

/// The layer feeding [`traces`]; add it next to the console layer.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    TraceLayer { traces: traces() }.with_filter(TraceFilter { traces: traces() })
}

struct TraceLayer {
    traces: &'static Traces,
}

impl<S: Subscriber> Layer<S> for TraceLayer {
    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        self.traces.offer(event);
    }
}

struct TraceFilter {
    traces: &'static Traces,
}

impl<S> Filter<S> for TraceFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        self.traces.active.load(Ordering::Relaxed) && traceable(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if traceable(meta) && self.traces.active.load(Ordering::Acquire) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(if self.traces.active.load(Ordering::Acquire) {
            LevelFilter::DEBUG
        } else {
            LevelFilter::OFF
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_trace_never_opens_an_existing_file_or_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, "root:secret\n").unwrap();
        let link = dir.path().join("trace.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = open_trace_file(&link).unwrap_err();
        assert!(err.contains("exists"), "{err}");
        assert!(open_trace_file(&victim).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
        let dangling = dir.path().join("dangling.log");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(open_trace_file(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists());
        assert!(open_trace_file(&dir.path().join("fresh.log")).is_ok());
    }
    use super::*;

    fn slot(value: Option<&str>) -> Slot {
        Slot {
            text: value.unwrap_or_default().to_owned(),
            set: value.is_some(),
        }
    }

    fn fields(client: Option<&str>, peer: Option<&str>, topic: Option<&str>) -> EventFields {
        EventFields {
            client_id: slot(client),
            peer: slot(peer),
            topic: slot(topic),
            ..EventFields::default()
        }
    }

    #[test]
    fn a_client_trace_takes_only_that_client_id() {
        let m = Matcher::new(TraceKind::Client, "dev-1").unwrap();
        assert!(m.matches(&fields(Some("dev-1"), None, None)));
        assert!(!m.matches(&fields(Some("dev-10"), None, None)));
        assert!(!m.matches(&fields(None, Some("127.0.0.1:5"), Some("a"))));
        assert!(Matcher::new(TraceKind::Client, "").is_err());
    }

    #[test]
    fn a_topic_trace_takes_matching_topics_and_the_same_filter() {
        let m = Matcher::new(TraceKind::Topic, "sensors/+/temp").unwrap();
        assert!(m.matches(&fields(None, None, Some("sensors/a/temp"))));
        assert!(!m.matches(&fields(None, None, Some("sensors/a/hum"))));
        let mut sub = fields(Some("x"), None, None);
        sub.filter = slot(Some("sensors/+/temp"));
        assert!(m.matches(&sub));
        sub.filter = slot(Some("sensors/b/temp"));
        assert!(m.matches(&sub));
        sub.filter = slot(Some("sensors/#"));
        assert!(!m.matches(&sub));
        assert!(Matcher::new(TraceKind::Topic, "a/#/b").is_err());
    }

    #[test]
    fn an_ip_trace_takes_an_address_or_a_network() {
        let one = Matcher::new(TraceKind::Ip, "127.0.0.2").unwrap();
        assert!(one.matches(&fields(None, Some("127.0.0.2:4000"), None)));
        assert!(!one.matches(&fields(None, Some("127.0.0.1:4000"), None)));
        assert!(!one.matches(&fields(Some("a"), None, None)));
        let net = Matcher::new(TraceKind::Ip, "10.0.0.0/8").unwrap();
        assert!(net.matches(&fields(None, Some("10.1.2.3:1"), None)));
        assert!(net.matches(&fields(None, Some("[::ffff:10.1.2.3]:1"), None)));
        assert!(Matcher::new(TraceKind::Ip, "10.0.0.300").is_err());
    }

    #[test]
    fn a_writer_stops_at_its_size_limit_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let file = open_trace_file(&path).unwrap();
        let (tx, rx) = mpsc::sync_channel(16);
        let counters = Counters::default();
        for i in 0..10 {
            tx.send(ToWriter::Line(format!("line {i} 0123456789\n")))
                .unwrap();
        }
        tx.send(ToWriter::Stop).unwrap();
        write_lines(file, rx, "# head\n".into(), 100, &counters);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# head\nline 0 "), "{text}");
        assert!(text.contains("# size limit reached"), "{text}");
        let written = counters.lines.load(Ordering::Relaxed);
        assert_eq!(written, 5, "{text}");
        assert_eq!(counters.dropped_size_limit.load(Ordering::Relaxed), 5);
        assert!(text.ends_with("5 lines, 0 dropped (writer behind), 5 dropped (size limit)\n"));
    }

    #[test]
    fn start_refuses_relative_paths_duplicates_and_too_many() {
        let registry = Traces::new();
        let dir = tempfile::tempdir().unwrap();
        let spec = |v: &str| TraceSpec {
            kind: TraceKind::Client,
            value: v.to_owned(),
            file: dir.path().join(format!("{v}.log")),
            max_bytes: None,
        };
        let relative = TraceSpec {
            file: "t.log".into(),
            ..spec("a")
        };
        assert!(registry.start(relative).unwrap_err().contains("absolute"));
        registry.start(spec("a")).unwrap();
        assert!(registry
            .start(spec("a"))
            .unwrap_err()
            .contains("running already"));
        for i in 1..MAX_TRACES {
            registry.start(spec(&format!("c{i}"))).unwrap();
        }
        assert!(registry
            .start(spec("z"))
            .unwrap_err()
            .contains("stop one first"));
        assert_eq!(registry.list().len(), MAX_TRACES);
        let stopped = registry.stop(Some(TraceKind::Client), Some("a"));
        assert_eq!(stopped.len(), 1);
        assert!(registry.active.load(Ordering::Relaxed));
        assert_eq!(registry.stop(None, None).len(), MAX_TRACES - 1);
        assert!(!registry.active.load(Ordering::Relaxed));
        let text = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert!(
            text.starts_with("# holdfast trace of client \"a\""),
            "{text}"
        );
        assert!(text.contains("# trace stopped"), "{text}");
    }

    #[test]
    fn the_layer_writes_matching_events_only_at_debug_level_while_the_console_stays_quiet() {
        use tracing_subscriber::prelude::*;
        // A registry of its own: a static one is shared with the other tests.
        let registry: &'static Traces = Box::leak(Box::new(Traces::new()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.log");
        let layer = TraceLayer { traces: registry }.with_filter(TraceFilter { traces: registry });
        let console = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(LevelFilter::INFO);
        let subscriber = tracing_subscriber::registry().with(console).with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(client_id = "dev-1", "before the trace");
            registry
                .start(TraceSpec {
                    kind: TraceKind::Client,
                    value: "dev-1".into(),
                    file: path.clone(),
                    max_bytes: None,
                })
                .unwrap();
            tracing::debug!(
                client_id = "dev-1",
                peer = "127.0.0.1:9",
                topic = "a/b",
                qos = 1,
                "PUBLISH in"
            );
            tracing::debug!(client_id = "dev-2", "someone else");
            tracing::info!(client_id = "dev-1", "client connected");
            tracing::trace!(client_id = "dev-1", "too verbose");
            registry.stop(None, None);
            tracing::debug!(client_id = "dev-1", "after the trace");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("DEBUG holdfast::trace::tests: PUBLISH in client_id=dev-1 peer=127.0.0.1:9 topic=a/b qos=1"), "{text}");
        assert!(
            lines[1].contains(" INFO holdfast::trace::tests: client connected client_id=dev-1"),
            "{text}"
        );
    }
}
