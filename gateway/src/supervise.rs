//! The board task: proves the runtime healthy before feeding the watchdogs, shows the state on
//! the status LEDs, tells systemd when we are ready and stopping, and publishes the board's
//! identity and health under `$SYS/brokers/{node}/board/...`.
//!
//! Owns the [`Board`] and the [`SystemdNotify`] handle for the life of the gateway, on a thread
//! of its own with its own small runtime: it judges the main runtime from outside, so its clock
//! keeps running and it can still light the fault LED when every worker of the main runtime is
//! blocked (tokio's timers stop when the worker driving them blocks). Feeding is never a blind
//! timer: each feed period it runs a self-check and feeds the hardware watchdog and systemd's
//! `WATCHDOG=1` only when the check passes:
//!
//! - the event loop answers: a probe task spawned on the runtime gets the router's lock and
//!   reports back within the deadline (a wedged scheduler, all workers blocked, or a
//!   deadlocked or long-held router lock all fail it);
//! - the data directory answers: a blocking task rewrites and `fdatasync`s a small probe
//!   file there, at most every [`STORAGE_PROBE_PERIOD`] to spare the flash, and must finish
//!   within the deadline. Only a write that *hangs* fails the check; a write that fails (a
//!   read-only remount, a full disk, an I/O error) degrades the gateway instead: an alarm in
//!   `$SYS/brokers/{node}/board/alarms`, `board/status = degraded`, systemd `STATUS=`, and the
//!   watchdog still fed, since a reset cannot mend the card and would only loop.
//!
//! At most one probe of each kind is in flight: a probe that never returns is not stacked up
//! behind, it just keeps the check failing. When the check fails the LEDs show a fault and
//! feeding stops, so the watchdog resets the board (or systemd restarts the service) unless
//! the runtime recovers first. The self-check runs only when something is to be fed; on a host
//! board outside systemd the task only publishes.
//!
//! It never touches the router's data: it only takes the lock for the probe and publishes
//! through [`crate::broker::client::publish_system`], from tasks on the main runtime so that a held router
//! lock never blocks the supervisor itself.

use crate::broker::Broker;
use crate::config::{BoardConfig, BoardKind, Config};
use holdfast_board::{
    Board, BoardError, ButtonEvent, HoldTimer, HostBoard, Indication, LedNames, LinuxBoard,
    LinuxBoardConfig, ResetButtonConfig, Roots, SystemdNotify,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Least often the data directory is written by the storage probe: often enough to notice a
/// read-only remount within a minute, rarely enough that the probe's one block per period is
/// nothing next to what the storage engine writes.
pub const STORAGE_PROBE_PERIOD: Duration = Duration::from_secs(30);

/// Feeds per watchdog timeout: a feed period is a quarter of the shortest timeout, so one
/// late or failed check does not reset the board, but a stall of about one timeout does.
const FEEDS_PER_TIMEOUT: u32 = 4;

/// Name of the storage probe file in the data directory.
const PROBE_FILE: &str = ".holdfast-probe";

/// Opens the board the config names. Opening a `linux` board with a watchdog device arms the
/// watchdog, so call this only once start-up can no longer fail.
pub fn open_board(config: &Config) -> Result<Box<dyn Board>, BoardError> {
    let b: &BoardConfig = &config.board;
    let roots = Roots {
        sys: b.sys_root.clone(),
        proc: b.proc_root.clone(),
    };
    let data_dir = config.node.data_dir.clone();
    Ok(match b.kind {
        BoardKind::Host => Box::new(HostBoard::new(roots, data_dir, b.mac_interface.clone())),
        BoardKind::Linux => Box::new(LinuxBoard::open(LinuxBoardConfig {
            roots,
            watchdog_device: b.watchdog_device.clone(),
            watchdog_timeout: b.watchdog_timeout,
            watchdog_required: b.watchdog_required,
            watchdog_max_resets: b.watchdog_max_resets,
            leds: LedNames {
                status: b.led_status.clone(),
                uplink: b.led_uplink.clone(),
                fault: b.led_fault.clone(),
            },
            mac_interface: b.mac_interface.clone(),
            data_dir,
            reset_button: b.reset_button.clone().map(|path| ResetButtonConfig {
                path,
                active_low: b.reset_button_active_low,
            }),
        })?),
    })
}

/// How long start-up may take while [`StartupFeeder`] feeds the watchdog for it; past it a
/// start-up that hangs gets the board reset.
pub const STARTUP_FEED_LIMIT: Duration = Duration::from_secs(300);

/// Feeds the hardware watchdog (and tells systemd start-up is progressing) while the gateway
/// restores its state and binds its listeners. After a crash the watchdog is still armed: the
/// board is opened first and fed from here, so a long restore (a big session store, a
/// backlog of bridge queues) does not get the board reset before the self-checking
/// [`Supervisor`] takes over. It feeds without a self-check, so it stops after `limit`.
#[derive(Debug)]
pub struct StartupFeeder {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Box<dyn Board>>,
}

impl StartupFeeder {
    /// Starts feeding `board` on its own thread, for at most `limit`.
    pub fn start(board: Box<dyn Board>, limit: Duration) -> std::io::Result<StartupFeeder> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("holdfast-startup".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut board = board;
                board.indicate(Indication::Booting);
                let notify = SystemdNotify::from_env();
                let period = board
                    .watchdog_timeout()
                    .map_or(Duration::from_secs(1), |t| t / FEEDS_PER_TIMEOUT)
                    .max(Duration::from_millis(10));
                let started = Instant::now();
                loop {
                    if started.elapsed() < limit {
                        if let Err(e) = board.keepalive() {
                            tracing::error!("{e}");
                        }
                        // Well beyond the next feed: a stalled start-up still times out.
                        notify.extend_timeout(period * 8 + Duration::from_secs(5));
                    }
                    match stopped.recv_timeout(period) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return board,
                    }
                }
            })?;
        Ok(StartupFeeder { stop, thread })
    }

    /// Stops feeding and hands the board back (for the supervisor, or to close it).
    pub fn finish(self) -> Box<dyn Board> {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(board) => board,
            // The thread only feeds and sleeps; should it have panicked, the panic goes on
            // here rather than leaving the gateway without its board.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The board task's state.
#[derive(Debug)]
pub struct Supervisor {
    board: Box<dyn Board>,
    notify: SystemdNotify,
    broker: Arc<Broker>,
    /// The main runtime, which the self-check probes and where publishes run.
    main: Handle,
    /// Where the storage probe writes.
    data_dir: PathBuf,
    /// How often health is published; zero = never.
    health_interval: Duration,
    /// Alarms raised once at start that last as long as the process (the last known good
    /// config in use).
    standing_alarms: Vec<String>,
    /// How long the factory-reset button has been held.
    reset_button: HoldTimer,
    /// Set when the button was held long enough: the gateway wipes its data after stopping.
    factory_reset: Arc<AtomicBool>,
    /// Whether the stop is a restart in place (a config applied from the web UI): systemd is
    /// then told the service reloads, not that it stops.
    restart: crate::config_file::RestartState,
}

/// A probe running on the runtime or the blocking pool, and when it started.
type InFlight = Option<(Instant, JoinHandle<Result<(), Fault>>)>;

/// What the self-check found wrong.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The storage probe failed: read-only, full, or an I/O error (degraded, not a reset).
    #[error("the data directory {} is not writable ({step}: {source})", dir.display())]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// Which step failed (`create`, `open`, `write`, `fdatasync`).
        step: &'static str,
        /// The error it got.
        source: std::io::Error,
    },
    /// A storage probe that has not returned for longer than the deadline (feeding stops).
    #[error("the data directory {} has not answered a write for {ms} ms", dir.display())]
    StorageHung {
        /// The data directory.
        dir: PathBuf,
        /// How long it has been waiting.
        ms: u128,
    },
    /// The event loop did not run the probe task in time (feeding stops).
    #[error("the event loop did not answer within {ms} ms (router lock held or workers blocked)")]
    RuntimeHung {
        /// The deadline.
        ms: u128,
    },
    /// A probe task panicked or was cancelled.
    #[error("self-check probe failed: {0}")]
    Probe(#[from] tokio::task::JoinError),
}

impl Supervisor {
    /// A supervisor for `board`, reporting through `broker`, notifying systemd via `notify`.
    /// Call it on the main runtime: that is the runtime it will watch.
    pub fn new(board: Box<dyn Board>, notify: SystemdNotify, broker: Arc<Broker>) -> Supervisor {
        let data_dir = broker.config.node.data_dir.clone();
        let health_interval = broker.config.board.health_interval;
        let mut board = board;
        board.indicate(Indication::Booting);
        Supervisor {
            board,
            notify,
            main: Handle::current(),
            data_dir,
            health_interval,
            standing_alarms: Vec::new(),
            reset_button: HoldTimer::new(broker.config.board.reset_button_hold),
            factory_reset: Arc::new(AtomicBool::new(false)),
            restart: crate::config_file::RestartState::default(),
            broker,
        }
    }

    /// The state that says, when shutdown starts, whether the stop is a restart in place.
    pub fn set_restart_state(&mut self, restart: crate::config_file::RestartState) {
        self.restart = restart;
    }

    /// Raises an alarm that stays until the process ends (shown like the board's).
    pub fn raise_standing_alarm(&mut self, alarm: String) {
        self.standing_alarms.push(alarm);
    }

    /// How often the self-check runs and the watchdogs are fed: a quarter of the shortest
    /// watchdog timeout, or `None` when there is nothing to feed.
    pub fn feed_period(&self) -> Option<Duration> {
        let shortest = match (self.board.watchdog_timeout(), self.notify.watchdog_period()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some((shortest / FEEDS_PER_TIMEOUT).max(Duration::from_millis(10)))
    }

    /// Starts the supervisor on its own thread (see the module docs for why). Call it once the
    /// listeners are bound: it sends READY=1 at once.
    pub fn spawn(self) -> std::io::Result<Running> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        let factory_reset = self.factory_reset.clone();
        let thread = std::thread::Builder::new()
            .name("holdfast-board".into())
            // Small: sysfs reads and a few futures; no deep recursion.
            .stack_size(256 * 1024)
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.run(close_rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the board runtime; the watchdog will not be fed"),
                }
                let _ = done_tx.send(());
            })?;
        Ok(Running {
            done: done_rx,
            close: close_tx,
            factory_reset,
            _thread: thread,
        })
    }

    /// Runs until told to close: READY=1 now (the listeners are bound), then self-check and
    /// feed, publish health; at shutdown STOPPING=1, and feeding goes on through the final
    /// flushes; the clean close of the board (magic close) comes only when `close` fires
    /// (after them), so a hang in a final flush still resets the board.
    async fn run(mut self, mut close: tokio::sync::oneshot::Receiver<()>) {
        let node = self.broker.config.node.name.clone();
        let identity = self.board.identity();
        tracing::info!(
            board = self.board.kind(),
            serial = identity.serial.as_deref().unwrap_or("-"),
            mac = identity.mac.as_deref().unwrap_or("-"),
            watchdog_seconds = self.board.watchdog_timeout().map(|d| d.as_secs()),
            systemd_watchdog_ms = self.notify.watchdog_period().map(|d| d.as_millis() as u64),
            "board ready"
        );
        self.publish_json(&format!("$SYS/brokers/{node}/board/identity"), &identity);
        if let Some(reason) = self.board.reset_reason() {
            tracing::info!(last_reset = %reason, "board reset reason");
            self.publish(&format!("$SYS/brokers/{node}/board/reset_reason"), &reason);
        }
        let mut shown = self.serving_indication();
        self.board.indicate(shown);
        let mut alarms = self.current_alarms(None);
        // What systemd shows as the service's status while running: degraded says why.
        let mut running = self.show_alarms(&node, &alarms);
        self.notify.ready();
        self.notify.status(&running);

        let feed_period = self.feed_period();
        // A period that never fires stands in for "off" so one select! covers every case.
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut feed_tick = tokio::time::interval(feed_period.unwrap_or(far));
        feed_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let health_every = if self.health_interval.is_zero() {
            far
        } else {
            self.health_interval
        };
        let mut health_tick = tokio::time::interval(health_every);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut uplink_tick = tokio::time::interval(Duration::from_secs(1));
        uplink_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checker = feed_period.map(|period| SelfCheck::new(self.data_dir.clone(), period));
        let mut healthy = true;
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = self.broker.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    if self.restart.restarting() {
                        self.notify.reloading();
                    } else {
                        self.notify.stopping();
                    }
                    self.publish(&format!("$SYS/brokers/{node}/board/status"), "stopping");
                }
                // Sent after the final flushes (or dropped with the gateway).
                _ = &mut close => break,
                _ = feed_tick.tick(), if feed_period.is_some() => {
                    let Some(checker) = checker.as_mut() else { continue };
                    match checker.check(&self.main, &self.broker).await {
                        Ok(()) => {
                            if !healthy {
                                tracing::info!("runtime healthy again; feeding the watchdog");
                                shown = self.serving_indication();
                                self.board.indicate(shown);
                                self.publish(
                                    &format!("$SYS/brokers/{node}/board/status"),
                                    if alarms.is_empty() { "running" } else { "degraded" },
                                );
                                self.notify.status(&running);
                                healthy = true;
                            }
                            self.refresh_alarms(&node, Some(checker), &mut alarms, &mut running);
                            if let Err(e) = self.board.keepalive() {
                                tracing::error!("{e}");
                            }
                            self.notify.watchdog();
                        }
                        Err(reason) => {
                            if healthy {
                                tracing::error!(%reason, "runtime self-check failed; the watchdog is no longer fed");
                                self.board.indicate(Indication::Fault);
                                self.notify.status(&format!("fault: {reason}"));
                                healthy = false;
                            } else {
                                tracing::debug!(%reason, "runtime self-check still failing");
                            }
                        }
                    }
                }
                // The uplink LED follows the bridges (blinking while one is down and messages
                // are being stored); not while the fault LED speaks.
                _ = uplink_tick.tick(), if healthy && !stopping => {
                    let now_shown = self.serving_indication();
                    if now_shown != shown {
                        shown = now_shown;
                        self.board.indicate(shown);
                    }
                    // Without a watchdog to feed there is no self-check tick: alarms (a
                    // nearly full disk) are refreshed here.
                    if checker.is_none() {
                        self.refresh_alarms(&node, None, &mut alarms, &mut running);
                    }
                    self.watch_reset_button();
                }
                // Not while the self-check fails: the publish would only queue up behind the
                // stuck router.
                _ = health_tick.tick(), if !self.health_interval.is_zero() && healthy && !stopping => {
                    let health = self.board.health();
                    self.publish_json(&format!("$SYS/brokers/{node}/board/health"), &health);
                }
            }
        }
        if !stopping {
            self.notify.stopping();
        }
        if let Err(e) = self.board.close() {
            tracing::error!("{e}");
        }
    }

    /// Reads the factory-reset button (about once a second): held for
    /// `board.reset_button_hold`, it marks the factory reset for after the stop and starts the
    /// shutdown.
    fn watch_reset_button(&mut self) {
        let Some(pressed) = self.board.reset_button_pressed() else {
            return;
        };
        let hold = self.broker.config.board.reset_button_hold;
        match self.reset_button.observe(pressed, Instant::now()) {
            ButtonEvent::Idle => {}
            ButtonEvent::Pressed => tracing::warn!(
                "factory-reset button pressed: hold it {} s to wipe the gateway's data",
                hold.as_secs()
            ),
            ButtonEvent::Released => {
                tracing::info!("factory-reset button released early: nothing is reset")
            }
            ButtonEvent::Held => {
                tracing::error!(
                    data_dir = %self.data_dir.display(),
                    "factory-reset button held {} s: stopping, wiping the data directory (sessions, queues, retained messages, bridge queues; not the config) and exiting for the service manager to start the gateway afresh",
                    hold.as_secs()
                );
                self.factory_reset.store(true, Ordering::SeqCst);
                self.board.indicate(Indication::Booting);
                self.notify.status("factory reset: stopping");
                self.broker.shutdown.cancel();
            }
        }
    }

    /// Everything degraded now: the board's alarms, a failing storage probe, a nearly full
    /// data directory.
    fn current_alarms(&self, checker: Option<&SelfCheck>) -> Vec<String> {
        let mut alarms = self.board.alarms();
        alarms.extend(self.standing_alarms.iter().cloned());
        alarms.extend(checker.and_then(SelfCheck::storage_alarm));
        alarms.extend(self.disk_alarm());
        alarms
    }

    /// An alarm when the data directory's file system has less than `board.disk_free_alarm`
    /// percent free (queues and the state store need room to keep acknowledged messages).
    fn disk_alarm(&self) -> Option<String> {
        let percent = self.broker.config.board.disk_free_alarm;
        if percent == 0 {
            return None;
        }
        let st = nix::sys::statvfs::statvfs(&self.data_dir).ok()?;
        // The field types differ between targets (u32 on armv7, u64 on aarch64).
        #[allow(clippy::useless_conversion)]
        let (frsize, avail, blocks) = (
            u64::from(st.fragment_size()),
            u64::from(st.blocks_available()),
            u64::from(st.blocks()),
        );
        let (free, total) = (avail.saturating_mul(frsize), blocks.saturating_mul(frsize));
        if total == 0 || free.saturating_mul(100) >= total.saturating_mul(u64::from(percent)) {
            return None;
        }
        Some(format!(
            "data directory {} nearly full: {} MB free of {} MB (alarm below {percent}%)",
            self.data_dir.display(),
            free / 1_000_000,
            total / 1_000_000
        ))
    }

    /// What the LEDs show while serving: `UplinkDown` while a bridge is not connected (its
    /// messages wait on disk), else `Running`.
    fn serving_indication(&self) -> Indication {
        match crate::bridge::forwarder(&self.broker) {
            Some(f) if f.outboxes().iter().any(|o| !o.stats.is_up()) => Indication::UplinkDown,
            _ => Indication::Running,
        }
    }

    /// Publishes the alarms and the status they imply; returns the systemd status line.
    /// Reads the alarms again: new ones are logged, and a change is shown (`$SYS`, systemd
    /// `STATUS=`); `running` is the status line to go back to.
    fn refresh_alarms(
        &self,
        node: &str,
        checker: Option<&SelfCheck>,
        alarms: &mut Vec<String>,
        running: &mut String,
    ) {
        let now_alarms = self.current_alarms(checker);
        if now_alarms == *alarms {
            return;
        }
        for a in now_alarms.iter().filter(|a| !alarms.contains(a)) {
            tracing::error!("{a}; still serving (nothing is reset for it)");
        }
        *alarms = now_alarms;
        *running = self.show_alarms(node, alarms);
        self.notify.status(running);
    }

    fn show_alarms(&self, node: &str, alarms: &[String]) -> String {
        self.publish_json(&format!("$SYS/brokers/{node}/board/alarms"), &alarms);
        self.publish(
            &format!("$SYS/brokers/{node}/board/status"),
            if alarms.is_empty() {
                "running"
            } else {
                "degraded"
            },
        );
        if alarms.is_empty() {
            "running".to_owned()
        } else {
            format!("running, degraded: {}", alarms.join("; "))
        }
    }

    fn publish_json(&self, topic: &str, value: &impl serde::Serialize) {
        match serde_json::to_vec(value) {
            Ok(body) => self.publish_bytes(topic, body),
            Err(e) => tracing::warn!(topic, error = %e, "cannot encode board report"),
        }
    }

    fn publish(&self, topic: &str, text: &str) {
        self.publish_bytes(topic, text.as_bytes().to_vec());
    }

    /// A retained QoS 0 broker message, like the other `$SYS` topics, published from a task
    /// on the main runtime (a held router lock must not block the supervisor).
    fn publish_bytes(&self, topic: &str, payload: Vec<u8>) {
        let broker = self.broker.clone();
        let topic = topic.to_owned();
        self.main.spawn(async move {
            crate::broker::client::publish_system(&broker, topic, payload, true);
        });
    }
}

/// A supervisor running on its thread.
#[derive(Debug)]
pub struct Running {
    /// Completed when the thread has closed the board and is about to end.
    done: tokio::sync::oneshot::Receiver<()>,
    /// Tells the thread to close the board now.
    close: tokio::sync::oneshot::Sender<()>,
    /// The factory-reset button was held: wipe the data directory after the stop.
    factory_reset: Arc<AtomicBool>,
    /// The thread; detached if never waited for.
    _thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Has the supervisor close the board (the magic close) and waits until it did. Call it
    /// last, after the final flushes: until then the watchdog is still fed.
    pub async fn close(self) {
        let _ = self.close.send(());
        let _ = self.done.await;
    }

    /// Whether the factory-reset button asked for this stop.
    pub fn factory_reset_requested(&self) -> bool {
        self.factory_reset.load(Ordering::SeqCst)
    }
}

/// The runtime self-check with its in-flight probes.
#[derive(Debug)]
struct SelfCheck {
    data_dir: PathBuf,
    /// How long a probe may take before the runtime counts as stalled.
    deadline: Duration,
    /// The event-loop probe, while it runs.
    runtime_probe: InFlight,
    /// The storage probe, while it runs.
    storage_probe: InFlight,
    /// When the storage probe last succeeded.
    storage_ok_at: Option<Instant>,
    /// The last storage failure, reported until a probe succeeds again.
    storage_error: Option<Fault>,
}

impl SelfCheck {
    fn new(data_dir: PathBuf, deadline: Duration) -> SelfCheck {
        SelfCheck {
            data_dir,
            deadline,
            runtime_probe: None,
            storage_probe: None,
            storage_ok_at: None,
            storage_error: None,
        }
    }

    /// Ok when the event loop answered and the data directory is writable; else why not.
    async fn check(&mut self, main: &Handle, broker: &Arc<Broker>) -> Result<(), Fault> {
        // Storage: start a probe when one is due and none is running.
        let due = match self.storage_ok_at {
            None => true,
            Some(at) => at.elapsed() >= STORAGE_PROBE_PERIOD || self.storage_error.is_some(),
        };
        if due && self.storage_probe.is_none() {
            let dir = self.data_dir.clone();
            let handle = tokio::task::spawn_blocking(move || probe_storage(&dir));
            self.storage_probe = Some((Instant::now(), handle));
        }
        // Event loop: a task the scheduler must run, which takes the router lock on the
        // blocking pool (so a held lock blocks a pool thread, not one of the few async workers
        // that this task needs to report the fault).
        if self.runtime_probe.is_none() {
            let b = broker.clone();
            let handle = main.spawn(async move {
                tokio::task::spawn_blocking(move || b.with_router(|_| ()))
                    .await
                    .map_err(Fault::Probe)
            });
            self.runtime_probe = Some((Instant::now(), handle));
        }
        let runtime = settle(&mut self.runtime_probe, self.deadline).await;
        match settle(&mut self.storage_probe, self.deadline).await {
            Some(Ok(())) => {
                self.storage_ok_at = Some(Instant::now());
                self.storage_error = None;
            }
            Some(Err(e)) => self.storage_error = Some(e),
            None => {}
        }
        if let Some((since, _)) = &self.storage_probe {
            if since.elapsed() >= self.deadline {
                return Err(Fault::StorageHung {
                    dir: self.data_dir.clone(),
                    ms: since.elapsed().as_millis(),
                });
            }
        }
        // A storage probe that *failed* (read-only remount, full disk, I/O error) is not a hung
        // runtime: the gateway keeps serving from memory and says so (`storage_alarm`); a reset
        // would not mend the card and would loop. Only a write that hangs (above) stops feeding.
        match runtime {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(Fault::RuntimeHung {
                ms: self.deadline.as_millis(),
            }),
        }
    }
}

impl SelfCheck {
    /// The last storage failure, while the data directory keeps failing its probe.
    fn storage_alarm(&self) -> Option<String> {
        self.storage_error
            .as_ref()
            .map(|e| format!("storage degraded: {e}"))
    }
}

/// Waits for the in-flight probe until it is `deadline` old; returns its result when it
/// finished (clearing the slot), `None` while it is still running.
async fn settle(slot: &mut InFlight, deadline: Duration) -> Option<Result<(), Fault>> {
    let (since, handle) = slot.as_mut()?;
    let left = deadline.saturating_sub(since.elapsed());
    let result = match tokio::time::timeout(left, handle).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Fault::Probe(join)),
        Err(_) => return None,
    };
    *slot = None;
    Some(result)
}

/// Rewrites the probe file in `dir` and makes it durable: proves the file system is mounted
/// read-write, has room, and the device completes writes.
fn probe_storage(dir: &Path) -> Result<(), Fault> {
    use std::io::Write;
    let path = dir.join(PROBE_FILE);
    let fail = |step: &'static str, source: std::io::Error| Fault::Storage {
        dir: dir.to_path_buf(),
        step,
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create", e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| fail("open", e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(f, "{stamp}").map_err(|e| fail("write", e))?;
    f.sync_data().map_err(|e| fail("fdatasync", e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
