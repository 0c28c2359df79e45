//! Store-and-forward bridges to cloud brokers, one per `[[bridges]]`.
//!
//! Path of a forwarded message: the router marks it (a forward filter matches, see
//! [`Forwarder::wants`], through the broker's `Uplink` seam); the broker appends it to each wanting bridge's disk queue right after
//! releasing the router lock ([`outbox`]); the device's PUBACK/PUBREC waits for the queue's
//! sync (group commit) unless `flush = "interval:…"`; the bridge's [`link`] sends it upstream
//! through an inflight window and acknowledges the record when the cloud acknowledges it.
//! Downlink: the link subscribes `{remote_prefix}{filter}` for each `subscribe` filter and
//! publishes what arrives locally without the prefix (never forwarded back up the same bridge).
//!
//! Owns the bridges' lifecycle (open queues at start, spawn links, flush queues at shutdown)
//! and their `$SYS` topics. It never blocks the router lock and never drops a queued message
//! except by the configured `on_full` policy or message expiry, both counted.
//!
//! Guarantees: at-least-once to the cloud broker (a crash or lost connection resends from the
//! oldest unanswered record, with DUP and the packet id of its first send, so the cloud's
//! duplicate detection holds; QoS 2 resumes at PUBREL), order per (device, topic) kept because
//! each connection appends its messages in arrival order and the queue drains strictly in
//! order. The uplink never wedges: a record the cloud refuses or cannot take is dead-lettered
//! (counted by reason, logged) and the queue goes on. Duplicates are bounded: a lost
//! connection resends at most one window (`max_inflight`); a crash at most one window plus the
//! acknowledgements not yet persisted (the ack cursor is written at every queue commit and
//! every 1,024 acks).
//!
//! Layout: [`outbox`] (queue side, in the broker), [`link`] (the I/O loop of one bridge),
//! `session` (the MQTT client rules, sans-IO), `net` (socket, TLS, CONNECT), [`backoff`],
//! [`stats`].

pub mod backoff;
pub mod link;
mod net;
pub mod outbox;
mod session;
pub mod stats;

pub use crate::broker::uplink::{Forwarded, Refusal};
pub use outbox::{Forwarder, Outbox};

use crate::broker::Broker;
use crate::config::BridgeConfig;
use holdfast_storage::queue::QueueError;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::task::TaskTracker;

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[error("bridge {name}: cannot open its queue in {dir}: {source}")]
pub struct OpenError {
    name: String,
    dir: String,
    source: QueueError,
}

/// Opens every bridge's queue (recovering what is on disk).
pub fn open_outboxes(bridges: &[BridgeConfig], data_dir: &Path) -> Result<Forwarder, OpenError> {
    let mut outboxes = Vec::with_capacity(bridges.len());
    for (index, cfg) in bridges.iter().enumerate() {
        let outbox = Outbox::open(cfg, index, data_dir).map_err(|source| OpenError {
            name: cfg.name.clone(),
            dir: data_dir
                .join("bridges")
                .join(&cfg.name)
                .display()
                .to_string(),
            source,
        })?;
        let stats = outbox.queue.stats().unwrap_or_default();
        tracing::info!(
            bridge = %cfg.name,
            queued = stats.len,
            queued_bytes = stats.bytes,
            flush = %cfg.queue.flush.describe(),
            "bridge queue opened"
        );
        outboxes.push(Arc::new(outbox));
    }
    Ok(Forwarder::new(outboxes))
}

/// The bridges' queues the broker forwards into, if `[[bridges]]` has any.
pub fn forwarder(broker: &Broker) -> Option<&Forwarder> {
    broker.uplink()?.as_any().downcast_ref::<Forwarder>()
}

/// Spawns one link task per bridge on `tracker`.
pub fn spawn_links(broker: &Arc<Broker>, tracker: &TaskTracker) {
    let Some(forwarder) = forwarder(broker) else {
        return;
    };
    for (cfg, outbox) in broker.config.bridges.iter().zip(forwarder.outboxes()) {
        let link = link::Link::new(
            cfg.clone(),
            outbox.clone(),
            broker.clone(),
            broker.shutdown.clone(),
        );
        tracker.spawn(link.run());
    }
}

/// Makes everything queued durable and persists the acknowledgements (shutdown).
pub fn flush_all(forwarder: &Forwarder) {
    for o in forwarder.outboxes() {
        if let Err(e) = o.queue.flush() {
            tracing::error!(bridge = %o.name, error = %e, "final flush of the bridge queue failed");
        }
    }
}

/// Drain-rate bookkeeping between two `$SYS` publications.
#[derive(Debug, Default)]
pub struct RateProbe {
    last: Vec<(u64, Option<Instant>)>,
}

/// Publishes `$SYS/brokers/{node}/bridges/{name}/...` for every bridge and logs a line for
/// each bridge that is not up or has a backlog.
pub fn publish_stats(broker: &Broker, probe: &mut RateProbe) {
    let Some(forwarder) = forwarder(broker) else {
        return;
    };
    let node = &broker.config.node.name;
    let now = Instant::now();
    probe.last.resize(forwarder.outboxes().len(), (0, None));
    for (o, last) in forwarder.outboxes().iter().zip(probe.last.iter_mut()) {
        let s = &o.stats;
        let q = o.queue.stats().unwrap_or_default();
        let forwarded = s.forwarded.load(Ordering::Relaxed);
        let rate = match last.1 {
            Some(t) if now > t => {
                (forwarded.saturating_sub(last.0)) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        };
        *last = (forwarded, Some(now));
        let body = json!({
            "state": s.state().as_str(),
            "queued": q.len,
            "queued_bytes": q.bytes,
            "forwarded": forwarded,
            "resent": s.resent.load(Ordering::Relaxed),
            "drain_rate": (rate * 10.0).round() / 10.0,
            "dropped": {
                "queue_full": s.dropped_queue_full.load(Ordering::Relaxed).max(q.dropped_oldest),
                "rejected_queue_full": s.rejected_queue_full.load(Ordering::Relaxed),
                "qos0_offline": s.dropped_qos0_offline.load(Ordering::Relaxed),
                "expired": s.dropped_expired.load(Ordering::Relaxed),
                "failed": s.dropped_failed.load(Ordering::Relaxed),
            },
            "dead_lettered": s.dead_lettered.load(Ordering::Relaxed),
            "dead_letter_reasons": s.dead_letter_reasons(),
            "downlink": s.downlink.load(Ordering::Relaxed),
            "downlink_refused": s.downlink_refused.load(Ordering::Relaxed),
            "reconnects": s.reconnects.load(Ordering::Relaxed),
            "connect_failures": s.connect_failures.load(Ordering::Relaxed),
            "last_error": s.last_error(),
        });
        let base = format!("$SYS/brokers/{node}/bridges/{}", o.name);
        for (leaf, value) in [
            ("state", body["state"].to_string()),
            ("queued", q.len.to_string()),
            ("queued_bytes", q.bytes.to_string()),
            ("forwarded", forwarded.to_string()),
            ("drain_rate", body["drain_rate"].to_string()),
            ("reconnects", body["reconnects"].to_string()),
        ] {
            let value = value.trim_matches('"').to_owned();
            crate::broker::client::publish_system(
                broker,
                format!("{base}/{leaf}"),
                value.into_bytes(),
                true,
            );
        }
        crate::broker::client::publish_system(
            broker,
            format!("{base}/stats"),
            body.to_string().into_bytes(),
            true,
        );
        if !s.is_up() || q.len > 0 {
            tracing::info!(
                bridge = %o.name,
                state = s.state().as_str(),
                queued = q.len,
                queued_bytes = q.bytes,
                forwarded,
                drain_rate = rate as u64,
                last_error = s.last_error().unwrap_or_default(),
                "bridge status"
            );
        }
    }
}
