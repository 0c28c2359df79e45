//! Per-bridge state and counters, shared by the outbox (appends), the link task (sends, acks,
//! reconnects) and the readers (`$SYS`, logs, the future web UI and `ctl bridges`).
//!
//! Owns plain atomics and the last error; never blocks, never logs more than once a second per
//! kind of drop (a full queue under a flood must not flood the log too).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a bridge's link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting out a backoff before the next attempt.
    Down = 0,
    /// Connecting (TCP, TLS, CONNECT/CONNACK).
    Connecting = 1,
    /// Connected: forwarding.
    Up = 2,
    /// The gateway is shutting down.
    Stopped = 3,
}

impl LinkState {
    /// The word used in `$SYS`, logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Connecting,
            2 => LinkState::Up,
            3 => LinkState::Stopped,
            _ => LinkState::Down,
        }
    }
}

/// One bridge's counters.
#[derive(Debug, Default)]
pub struct BridgeStats {
    state: AtomicU8,
    /// Messages appended to the queue.
    pub queued: AtomicU64,
    /// Messages the cloud broker acknowledged (QoS 1/2) or that were written (QoS 0).
    pub forwarded: AtomicU64,
    /// Messages sent again after a reconnect (DUP).
    pub resent: AtomicU64,
    /// Oldest messages dropped because the queue hit `max_bytes` (`on_full = "drop_oldest"`).
    pub dropped_queue_full: AtomicU64,
    /// New messages refused because the queue hit `max_bytes` (`on_full = "reject_new"`).
    pub rejected_queue_full: AtomicU64,
    /// QoS 0 messages dropped while the link was down (`buffer_qos0 = false`).
    pub dropped_qos0_offline: AtomicU64,
    /// Messages whose expiry interval ran out in the queue.
    pub dropped_expired: AtomicU64,
    /// Messages that could not be queued or read back (I/O error, damaged record).
    pub dropped_failed: AtomicU64,
    /// Records the cloud refused (a PUBACK/PUBREC failure reason: not authorized, quota
    /// exceeded, ...) or cannot take (larger than its maximum packet size): resending would
    /// be refused again, so they leave the queue, counted by reason and logged.
    pub dead_lettered: AtomicU64,
    dead_letter_reasons: Mutex<BTreeMap<String, u64>>,
    last_dead_letter_log: Mutex<Option<Instant>>,
    /// Messages received from the cloud and published locally.
    pub downlink: AtomicU64,
    /// Messages received from the cloud that the broker refused (the ACL denies the bridge's
    /// client, or another bridge's queue could not take them); logged each time.
    pub downlink_refused: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and lost connections.
    pub connect_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_drop_log: Mutex<Option<Instant>>,
}

impl BridgeStats {
    /// The link's state now.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// True while connected.
    pub fn is_up(&self) -> bool {
        self.state() == LinkState::Up
    }

    /// Moves the link to `state`.
    pub fn set_state(&self, state: LinkState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Remembers the last failure, for `$SYS` and the UI.
    pub fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts `n` oldest messages dropped for room, logging at most once a second.
    pub fn note_dropped_full(&self, bridge: &str, n: u64) {
        let total = self.dropped_queue_full.fetch_add(n, Ordering::Relaxed) + n;
        if self.log_due() {
            tracing::warn!(
                bridge,
                dropped_total = total,
                "dropped: bridge queue full (max_bytes reached, on_full = drop_oldest)"
            );
        }
    }

    /// Counts one refused message, logging at most once a second.
    pub fn note_rejected_full(&self, bridge: &str) {
        let total = self.rejected_queue_full.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log_due() {
            tracing::warn!(
                bridge,
                rejected_total = total,
                "rejected: bridge queue full (max_bytes reached, on_full = reject_new)"
            );
        }
    }

    /// Counts one dead-lettered record under `reason`; true when it is time to log (the
    /// first, then at most once a second).
    pub fn note_dead_letter(&self, reason: &str) -> bool {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        *self
            .dead_letter_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_owned())
            .or_default() += 1;
        due(&self.last_dead_letter_log)
    }

    /// Dead-lettered records by reason.
    pub fn dead_letter_reasons(&self) -> BTreeMap<String, u64> {
        self.dead_letter_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn log_due(&self) -> bool {
        due(&self.last_drop_log)
    }
}

/// True at most once a second per `last`.
fn due(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(now);
    true
}
