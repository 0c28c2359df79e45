//! The uplink half of the bridges inside the broker: which routed messages go to which bridge,
//! the append to that bridge's disk queue, and the durability signal that releases devices'
//! PUBACKs.
//!
//! Owns one [`Outbox`] per bridge (its filters, its [`GroupCommit`] queue, its counters) and the
//! [`Forwarder`] over all of them. It never talks to the network (the link task does) and never
//! takes the router lock: the broker hands it messages after releasing the lock, in the order
//! they were routed, so each publisher's order is the queue's order.
//!
//! Durability: under `flush = "group"` and `"every"` a device's PUBACK/PUBREC waits until
//! [`Outbox::durable_seq`] passes the message's seq (the connection polls
//! [`Outbox::poll_durable`]); under `"interval:…"` it is sent at once and a power cut can lose
//! up to one interval of acknowledged messages, as documented on [`QueueFlush`].

use super::stats::BridgeStats;
use crate::broker::message::{Message, SessionId};
use crate::broker::persist;
use crate::broker::uplink::{Forwarded, Refusal, Uplink};
use crate::config::{BridgeConfig, QueueFlush, QueueOnFull};
use holdfast_mqtt::{topic, QoS};
use holdfast_storage::queue::{
    FlushMode, GroupCommit, GroupOptions, OnFull, QueueConfig, QueueError, SegmentQueue,
};
use holdfast_storage::record;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Bytes appended but not yet durable, per bridge, before appenders wait for the flusher.
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// Wakes connections waiting for a durable seq.
#[derive(Debug, Default)]
pub struct DurableSignal {
    seq: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl DurableSignal {
    /// Called from the queue's flusher thread after each commit.
    fn advance(&self, seq: u64) {
        self.seq.fetch_max(seq, Ordering::AcqRel);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    fn poll_reached(&self, seq: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.seq.load(Ordering::Acquire) >= seq {
            return Poll::Ready(());
        }
        {
            let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        // Re-check after registering: a commit that landed in between must not be missed.
        if self.seq.load(Ordering::Acquire) >= seq {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One bridge's disk queue and what feeds it.
#[derive(Debug)]
pub struct Outbox {
    /// The bridge's name.
    pub name: String,
    /// Position in `[[bridges]]`.
    pub index: usize,
    filters: Vec<String>,
    /// QoS 0 messages are queued while the link is down.
    buffer_qos0: bool,
    /// PUBACKs wait for the sync (group, every), or not (interval).
    acks_wait_for_sync: bool,
    /// The store-and-forward queue.
    pub queue: GroupCommit,
    durable: Arc<DurableSignal>,
    /// Signalled after every append, so the link task tops up its window.
    pub new_data: tokio::sync::Notify,
    /// Counters and state for `$SYS`, logs and `ctl`.
    pub stats: BridgeStats,
    /// The router session of the bridge's downlink client while the link is up (0 when
    /// down): what it publishes is never forwarded back up this bridge.
    downlink_session: AtomicU64,
}

impl Outbox {
    /// Opens (or recovers) the queue under `{data_dir}/bridges/{name}` and starts its flusher.
    pub fn open(cfg: &BridgeConfig, index: usize, data_dir: &Path) -> Result<Outbox, QueueError> {
        let dir = data_dir.join("bridges").join(&cfg.name);
        let mut qc = QueueConfig::new(dir);
        qc.max_bytes = cfg.queue.max_bytes;
        qc.segment_bytes = cfg.queue.segment_size;
        qc.on_full = match cfg.queue.on_full {
            QueueOnFull::DropOldest => OnFull::DropOldest,
            QueueOnFull::RejectNew => OnFull::RejectNew,
        };
        qc.flush = match cfg.queue.flush {
            QueueFlush::Group => FlushMode::Group,
            QueueFlush::Every => FlushMode::Every,
            QueueFlush::Interval(d) => FlushMode::Interval(d),
        };
        let queue = SegmentQueue::open(qc)?;
        let durable = Arc::new(DurableSignal::default());
        durable.advance(queue.durable_seq());
        let hook = durable.clone();
        let queue = GroupCommit::start(
            queue,
            GroupOptions {
                max_pending_bytes: MAX_PENDING_BYTES,
                on_durable: Some(Box::new(move |seq| hook.advance(seq))),
            },
        )?;
        Ok(Outbox {
            name: cfg.name.clone(),
            index,
            filters: cfg.forward.clone(),
            buffer_qos0: cfg.buffer_qos0,
            acks_wait_for_sync: !matches!(cfg.queue.flush, QueueFlush::Interval(_)),
            queue,
            durable,
            new_data: tokio::sync::Notify::new(),
            stats: BridgeStats::default(),
            downlink_session: AtomicU64::new(SessionId::NONE),
        })
    }

    /// True when `msg` is for this bridge: a forward filter matches and it did not come down
    /// this same bridge.
    pub fn wants(&self, msg: &Message) -> bool {
        let downlink = SessionId::from_raw(self.downlink_session.load(Ordering::Relaxed));
        (downlink.is_none() || msg.publisher != downlink)
            && self.filters.iter().any(|f| topic::matches(f, &msg.topic))
    }

    /// Names the router session of the bridge's downlink client (`None` when the link is
    /// down), whose messages this bridge must not forward.
    pub fn set_downlink_session(&self, session: Option<SessionId>) {
        self.downlink_session.store(
            session.map_or(SessionId::NONE, SessionId::get),
            Ordering::Relaxed,
        );
    }

    /// Highest seq known durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable.seq.load(Ordering::Acquire)
    }

    /// Ready once `seq` is durable; registers the waker otherwise.
    pub fn poll_durable(&self, seq: u64, cx: &mut Context<'_>) -> Poll<()> {
        self.durable.poll_reached(seq, cx)
    }

    /// Appends one message. `Ok(Some(seq))` when the caller must wait for `seq` to be durable
    /// before acknowledging, `Ok(None)` when it need not (or the message was dropped by
    /// policy, counted).
    fn append(&self, msg: &Message, now: Instant) -> Result<Option<u64>, Refusal> {
        if msg.qos == QoS::AtMostOnce && !self.buffer_qos0 && !self.stats.is_up() {
            self.stats
                .dropped_qos0_offline
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let bytes = match record::encode(&persist::to_stored(msg, now)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(bridge = %self.name, topic = %crate::broker::short(&msg.topic), error = %e, "cannot encode a message for the bridge queue");
                self.stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Failed);
            }
        };
        match self.queue.append(&bytes) {
            Ok(a) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                if a.dropped_oldest > 0 {
                    self.stats.note_dropped_full(&self.name, a.dropped_oldest);
                }
                self.new_data.notify_one();
                let wait = self.acks_wait_for_sync && msg.qos != QoS::AtMostOnce;
                Ok(wait.then_some(a.seq))
            }
            Err(QueueError::Full { .. }) => {
                self.stats.note_rejected_full(&self.name);
                Err(Refusal::QueueFull)
            }
            Err(e) => {
                self.stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
                self.stats.set_error(format!("queue: {e}"));
                tracing::error!(bridge = %self.name, topic = %crate::broker::short(&msg.topic), error = %e, "cannot queue a message for the bridge");
                Err(Refusal::Failed)
            }
        }
    }
}

/// Every bridge's outbox, as the broker sees them.
#[derive(Debug, Default)]
pub struct Forwarder {
    outboxes: Vec<Arc<Outbox>>,
}

impl Forwarder {
    /// Over the given outboxes, in `[[bridges]]` order.
    pub fn new(outboxes: Vec<Arc<Outbox>>) -> Forwarder {
        Forwarder { outboxes }
    }

    /// The outboxes, in config order.
    pub fn outboxes(&self) -> &[Arc<Outbox>] {
        &self.outboxes
    }

    /// True when some bridge wants `msg` (cheap; called under the router lock).
    pub fn wants(&self, msg: &Message) -> bool {
        self.outboxes.iter().any(|o| o.wants(msg))
    }

    /// Appends `msg` to every bridge that wants it. Called outside the router lock; may block
    /// briefly when a queue's commit buffer is full (back-pressure) or, under
    /// `flush = "every"`, for the sync itself.
    pub fn append(&self, msg: &Message, now: Instant) -> Forwarded {
        let mut out = Forwarded::default();
        for o in &self.outboxes {
            if !o.wants(msg) {
                continue;
            }
            match o.append(msg, now) {
                Ok(Some(seq)) => out.needs.push((o.index, seq)),
                Ok(None) => {}
                Err(r) => {
                    out.refused.get_or_insert(r);
                }
            }
        }
        out
    }

    /// Ready when every `(bridge, seq)` in `needs` is durable.
    pub fn poll_durable(&self, needs: &[(usize, u64)], cx: &mut Context<'_>) -> Poll<()> {
        for &(index, seq) in needs {
            if let Some(o) = self.outboxes.get(index) {
                if o.poll_durable(seq, cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(())
    }

    /// True when every `(bridge, seq)` in `needs` is durable (no waker registered).
    pub fn is_durable(&self, needs: &[(usize, u64)]) -> bool {
        needs.iter().all(|&(index, seq)| {
            self.outboxes
                .get(index)
                .is_none_or(|o| o.durable_seq() >= seq)
        })
    }
}

impl Uplink for Forwarder {
    fn wants(&self, msg: &Message) -> bool {
        Forwarder::wants(self, msg)
    }

    fn append(&self, msg: &Message, now: Instant) -> Forwarded {
        Forwarder::append(self, msg, now)
    }

    fn poll_durable(&self, needs: &[(usize, u64)], cx: &mut Context<'_>) -> Poll<()> {
        Forwarder::poll_durable(self, needs, cx)
    }

    fn is_durable(&self, needs: &[(usize, u64)]) -> bool {
        Forwarder::is_durable(self, needs)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
