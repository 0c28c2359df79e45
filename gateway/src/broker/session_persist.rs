//! Persistent sessions on the session store: what the router journals, what goes to disk, when,
//! and how stored sessions come back at start.
//!
//! Owns the per-session write-behind [`Journal`], the router-wide [`Persistence`] bookkeeping,
//! the batch of store writes taken from the router under its lock ([`SessionWrites`]) and
//! applied to a [`SessionStore`] after the lock is released ([`SessionWrites::apply`]), the
//! flusher task that does both every [`FLUSH_EVERY`] ([`run_flusher`]), and the conversions
//! between sessions and their stored records. It must never touch the disk under the router
//! lock, never block the router on a slow store, and never panic or unwrap on stored data.
//!
//! # Which sessions
//!
//! A session is persisted while its session expiry is above zero (MQTT 3.1.1 clean session 0,
//! MQTT 5 session expiry interval > 0) and the gateway has a store: its metadata (client id,
//! protocol, expiry, when it disconnected, subscriptions with their v5 options and identifier)
//! and its QoS 1/2 deliveries, queued or inflight, with their packet id and handshake state.
//! Sessions that end with their connection and QoS 0 deliveries are never written. An MQTT 5
//! clean start with an expiry above zero is persisted like any other session that outlives its
//! connection (EMQX keys session persistence on the expiry, not on the clean-start flag). Its
//! pending (delayed) will and the inbound QoS 2 packet ids awaiting PUBREL are part of the
//! metadata, so a restart neither loses the will nor takes a QoS 2 resend for a new message.
//!
//! # Design: journal in the router, writes outside it, coalesced
//!
//! Writing every delivery through to the store (put when queued, update when sent, remove when
//! acknowledged: three sled writes and a payload encode per delivery, under the router lock)
//! would make a persistent subscriber the bottleneck of every publisher. Instead the router
//! only journals *which* deliveries of a session changed (a small map insert), and a flusher
//! task every [`FLUSH_EVERY`] takes the journals under the lock as owned records
//! ([`Router::take_session_writes`](super::router::Router::take_session_writes)) and writes them
//! with the lock released. One task applies the batches in order, so a removal is never
//! overtaken by an older write, and a slow disk only makes the next batch coalesce more.
//!
//! What a flush writes depends on whether the session is connected:
//! - **offline**: every QoS 1/2 delivery queued for it (one put each, one remove when it is
//!   acknowledged after the client's return), so an offline subscriber's backlog is on disk;
//! - **connected**: only inflight deliveries that were already unacknowledged at the previous
//!   flush (a client that is slow to acknowledge); its queue is written when it disconnects.
//!   A delivery queued, sent and acknowledged within a period or two is never written, so a
//!   connected persistent subscriber costs (almost) no disk writes however busy it is.
//!
//! # What survives a `kill -9`
//!
//! The store as of the last applied batch, once sled has flushed it (in the background every
//! 500 ms, `SledOptions::flush_every_ms`). Exactly:
//! - session metadata (the session itself, its subscriptions, its expiry and disconnect time)
//!   changed more than about 0.6 s (`FLUSH_EVERY` + 500 ms) before the crash;
//! - for a session that was offline: every QoS 1/2 message queued for it more than about 0.6 s
//!   before the crash, not yet acknowledged;
//! - for a session that was connected: the QoS 1/2 messages inflight (sent, unacknowledged)
//!   for more than about 0.7 s (two flushes + 500 ms), resent with DUP and their packet id.
//!   Messages still queued for a connected session (not yet sent: the client was slower than
//!   its publishers) are **lost** by a `kill -9`: they are the newest ones, so what does arrive
//!   is still in order, with no gap before the loss;
//! - a message acknowledged less than about 0.6 s before the crash may be delivered again.
//!
//! A graceful stop closes every connection first, so every session is offline at its final
//! flush: everything is written and made durable (fsync). A power cut is weaker than a `kill -9`:
//! sled's background flush is not durable (see `holdfast_storage::kv`).
//!
//! # Restore
//!
//! At start ([`Router::attach_session_store`](super::router::Router::attach_session_store))
//! every stored session comes back as an offline session: its subscriptions in the index
//! (shared ones too, without retained messages being sent again), its pending deliveries in
//! `seq` order, the ones that were inflight back in the inflight window with their packet id so
//! the resume path resends them with DUP (or resends the PUBREL). Its expiry counts from when it
//! disconnected, or from the restart if it was connected at the crash; an expired one is removed
//! from the store instead.

use super::message::{BuildIdHasher, ClientId, Delivery, Message, SessionId};
use super::session::{Inflight, InflightState, Owner, Session, Subscription};
use super::{persist, Broker};
use holdfast_mqtt::{PacketId, ProtocolVersion, QoS, SubscriptionOptions};
use holdfast_storage::kv::{
    PendingState, SessionStore, StoredPending, StoredSession, StoredSubscription, StoredWill,
};
use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the flusher writes the journals to the store. Short enough that the window a
/// `kill -9` can lose stays near sled's own 500 ms flush; long enough that a subscriber which
/// keeps up acknowledges most deliveries before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What happened to one stored pending delivery since the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingOp {
    /// In the store, with a handshake state that changed.
    Changed,
    /// In the store, and gone from the session.
    Removed,
}

/// What changed in one persistent session since the last flush.
#[derive(Debug, Default)]
pub struct Journal {
    /// The metadata (expiry, connected or not, subscriptions) must be rewritten.
    pub meta_dirty: bool,
    /// Deliveries in the store that changed state or left the session, by `seq`.
    pub pending: BTreeMap<u64, PendingOp>,
    /// QoS 1/2 deliveries the session holds that are not in the store yet, by `seq`. The flag
    /// is set when a flush saw one inflight on a connected session: it is written at the next
    /// flush if still unacknowledged. Bounded by the session's queue and inflight window.
    pub unwritten: BTreeMap<u64, bool>,
}

impl Journal {
    /// The journal of a session that starts being persisted: everything it holds is unwritten.
    pub fn for_session(s: &Session) -> Journal {
        let mut j = Journal {
            meta_dirty: true,
            ..Journal::default()
        };
        for f in &s.inflight {
            j.queued(&f.delivery);
        }
        for d in &s.mqueue {
            j.queued(d);
        }
        j
    }

    /// `d` was queued (QoS 0 is never persisted).
    pub fn queued(&mut self, d: &Delivery) {
        if d.qos != QoS::AtMostOnce {
            self.unwritten.insert(d.seq, false);
        }
    }

    /// `d` changed its handshake state.
    pub fn changed(&mut self, d: &Delivery) {
        if d.qos != QoS::AtMostOnce && !self.unwritten.contains_key(&d.seq) {
            self.pending.insert(d.seq, PendingOp::Changed);
        }
    }

    /// `d` left the session. One that never reached the store leaves no trace.
    pub fn removed(&mut self, d: &Delivery) {
        if d.qos != QoS::AtMostOnce && self.unwritten.remove(&d.seq).is_none() {
            self.pending.insert(d.seq, PendingOp::Removed);
        }
    }

    /// Nothing to write.
    pub fn is_clean(&self) -> bool {
        !self.meta_dirty && self.pending.is_empty() && self.unwritten.is_empty()
    }
}

/// The router's side of session persistence: which sessions have a journal, and which client
/// ids must be removed from the store before anything else is written for them.
#[derive(Debug, Default)]
pub struct Persistence {
    /// Sessions with a journal; the flusher looks at these only.
    pub sessions: HashSet<SessionId, BuildIdHasher>,
    /// Client ids whose stored session (and pending messages) must go: discarded, expired, no
    /// longer persisted, or about to be written afresh. Applied before the writes of a batch.
    pub removed: Vec<ClientId>,
    /// Store writes that failed, counted by the flusher after the lock was released and
    /// reported through `RouterCounters::session_store_errors`.
    pub errors: u64,
}

impl Persistence {
    /// Session `sid` starts being persisted; whatever the store holds for its client id is stale.
    pub fn adopt(&mut self, sid: SessionId, client_id: &ClientId) {
        self.sessions.insert(sid);
        self.removed.push(client_id.clone());
    }

    /// Session `sid` is no longer persisted (ended or its expiry dropped to zero).
    pub fn forget(&mut self, sid: SessionId, client_id: &ClientId) {
        self.sessions.remove(&sid);
        self.removed.push(client_id.clone());
    }
}

/// The writes of one session in a batch.
#[derive(Debug)]
pub struct ClientWrites {
    /// Whose.
    pub client_id: String,
    /// New metadata, written before the pending records.
    pub session: Option<StoredSession>,
    /// Pending records to write (new, or with a new state).
    pub put: Vec<StoredPending>,
    /// Pending records to remove, by seq.
    pub remove: Vec<u64>,
}

/// Store writes taken from the router in one lock, applied in order outside it.
#[derive(Debug, Default)]
pub struct SessionWrites {
    /// Client ids whose stored session goes first.
    pub removals: Vec<ClientId>,
    /// Then each session's changes.
    pub clients: Vec<ClientWrites>,
}

impl SessionWrites {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.clients.is_empty()
    }

    /// Writes the batch: removals first, then each session's metadata before its pending
    /// records (a crash in between leaves a session with fewer pending records, never pending
    /// records without their session). Failures are logged with the client id and counted;
    /// returns how many failed. A failed write is not retried: the session's next change
    /// rewrites its metadata, a failed pending write leaves that delivery in memory only.
    pub fn apply(&self, store: &dyn SessionStore) -> u64 {
        let mut errors = 0;
        for client_id in &self.removals {
            if let Err(e) = store.remove_session(client_id) {
                errors += 1;
                tracing::error!(client_id = %client_id, error = %e, "stored session not removed");
            }
        }
        for c in &self.clients {
            if let Some(s) = &c.session {
                if let Err(e) = store.put_session(s) {
                    errors += 1;
                    tracing::error!(client_id = %c.client_id, error = %e, "session not persisted");
                }
            }
            for p in &c.put {
                if let Err(e) = store.push_pending(&c.client_id, p) {
                    errors += 1;
                    tracing::error!(client_id = %c.client_id, seq = p.seq, error = %e, "queued message not persisted");
                }
            }
            for &seq in &c.remove {
                if let Err(e) = store.remove_pending(&c.client_id, seq) {
                    errors += 1;
                    tracing::error!(client_id = %c.client_id, seq, error = %e, "delivered message not removed from the store");
                }
            }
        }
        errors
    }
}

/// Takes one session's journal as owned records (under the router lock). `None` when there is
/// nothing to write. An offline session writes everything unwritten; a connected one only the
/// inflight deliveries a previous flush already saw unacknowledged (see the module docs).
pub fn take_writes(s: &mut Session, now: Instant, unix_now_ms: u64) -> Option<ClientWrites> {
    let j = s.journal.as_mut()?;
    if j.is_clean() {
        return None;
    }
    let meta = std::mem::take(&mut j.meta_dirty);
    let mut write = Vec::new();
    let mut remove = Vec::new();
    for (seq, op) in std::mem::take(&mut j.pending) {
        match op {
            PendingOp::Changed => write.push(seq),
            PendingOp::Removed => remove.push(seq),
        }
    }
    if s.conn.is_none() {
        write.extend(std::mem::take(&mut j.unwritten).into_keys());
    } else if !j.unwritten.is_empty() {
        for f in &s.inflight {
            let seq = f.delivery.seq;
            match j.unwritten.get_mut(&seq) {
                Some(seen) if *seen => {
                    j.unwritten.remove(&seq);
                    write.push(seq);
                }
                Some(seen) => *seen = true,
                None => {}
            }
        }
    }
    if !meta && write.is_empty() && remove.is_empty() {
        return None;
    }
    write.sort_unstable();
    let session = meta.then(|| stored_session(s, now, unix_now_ms));
    let mut put = Vec::with_capacity(write.len());
    for seq in write {
        match stored_pending(s, seq, now) {
            Some(p) => put.push(p),
            // Journaled but no longer held (cannot happen: leaving journals `Removed`).
            None => remove.push(seq),
        }
    }
    Some(ClientWrites {
        client_id: s.client_id.to_string(),
        session,
        put,
        remove,
    })
}

/// A session's metadata as stored.
pub fn stored_session(s: &Session, now: Instant, unix_now_ms: u64) -> StoredSession {
    // An offline session expires `expiry` after it disconnected.
    let disconnected_at_unix_ms = match (&s.conn, s.expires_at) {
        (None, Some(at)) => {
            let since = at
                .checked_sub(s.expiry)
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            let since_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
            Some(unix_now_ms.saturating_sub(since_ms))
        }
        _ => None,
    };
    let mut subscriptions: Vec<StoredSubscription> = s
        .subscriptions
        .iter()
        .map(|(filter, sub)| StoredSubscription {
            filter: filter.to_string(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling,
            subscription_id: sub.id.map(NonZeroU32::get),
        })
        .collect();
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    let mut awaiting_rel: Vec<u16> = s.awaiting_rel.iter().map(|id| id.get()).collect();
    awaiting_rel.sort_unstable();
    let pending_will = s.pending_will().map(|w| {
        let due_in = w.publish_at.saturating_duration_since(now);
        StoredWill {
            message: persist::to_stored(&w.message, now),
            publish_at_unix_ms: unix_now_ms
                .saturating_add(u64::try_from(due_in.as_millis()).unwrap_or(u64::MAX)),
        }
    });
    StoredSession {
        client_id: s.client_id.to_string(),
        protocol_level: s.protocol.level(),
        expiry_secs: u32::try_from(s.expiry.as_secs()).unwrap_or(u32::MAX),
        disconnected_at_unix_ms,
        subscriptions,
        awaiting_rel,
        pending_will,
        owner: match &s.owner {
            Owner::Unclaimed => None,
            Owner::Anonymous => Some(None),
            Owner::User(u) => Some(Some(u.to_string())),
        },
    }
}

/// The stored record of pending delivery `seq`, found in the inflight window (short: searched
/// in full) or the queue (long, and in `seq` order: searched by bisection).
fn stored_pending(s: &Session, seq: u64, now: Instant) -> Option<StoredPending> {
    let (delivery, packet_id, state) = match s.inflight.iter().position(|f| f.delivery.seq == seq) {
        Some(i) => {
            let f = s.inflight.get(i)?;
            let state = match f.state {
                InflightState::AwaitPubAck => PendingState::AwaitPubAck,
                InflightState::AwaitPubRec => PendingState::AwaitPubRec,
                InflightState::AwaitPubComp => PendingState::AwaitPubComp,
            };
            (&f.delivery, Some(f.packet_id.get()), state)
        }
        None => {
            let i = s.mqueue.binary_search_by_key(&seq, |d| d.seq).ok()?;
            (s.mqueue.get(i)?, None, PendingState::Queued)
        }
    };
    let mut message = persist::to_stored(&delivery.message, now);
    message.retain = delivery.retain;
    Some(StoredPending {
        seq,
        message,
        qos: delivery.qos as u8,
        packet_id,
        state,
        subscription_id: delivery.subscription_id.map(NonZeroU32::get),
        more_subscription_ids: delivery
            .more_subscription_ids
            .as_deref()
            .map_or_else(Vec::new, |ids| ids.iter().map(|id| id.get()).collect()),
    })
}

/// The protocol of a stored level; `None` for a level this build does not speak.
pub fn protocol_from_level(level: u8) -> Option<ProtocolVersion> {
    match level {
        3 => Some(ProtocolVersion::V3_1),
        4 => Some(ProtocolVersion::V3_1_1),
        5 => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// How long a stored session has left at a restart at `unix_now_ms`; `None` when it expired
/// while the gateway was down. A session that was connected at the crash starts its expiry now.
pub fn remaining_expiry(s: &StoredSession, unix_now_ms: u64) -> Option<Duration> {
    let expiry = Duration::from_secs(u64::from(s.expiry_secs));
    if expiry.is_zero() {
        return None;
    }
    match s.disconnected_at_unix_ms {
        None => Some(expiry),
        Some(at) => {
            let gone = Duration::from_millis(unix_now_ms.saturating_sub(at));
            expiry.checked_sub(gone).filter(|left| !left.is_zero())
        }
    }
}

/// A stored subscription as the router keeps it; `None` for an impossible QoS.
pub fn subscription_from_stored(s: &StoredSubscription) -> Option<Subscription> {
    Some(Subscription {
        options: SubscriptionOptions {
            qos: QoS::from_u8(s.qos)?,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: s.retain_handling.min(2),
        },
        id: s.subscription_id.and_then(NonZeroU32::new),
    })
}

/// Where a restored delivery goes.
#[derive(Debug)]
pub enum Restored {
    /// Back in the queue.
    Queued(Delivery),
    /// Back in the inflight window, to be resent on resume.
    Inflight(Inflight),
}

/// A stored pending record back in memory; `None` when its message expired meanwhile or its
/// QoS is not 1 or 2 (never written so; treated as corrupt).
pub fn pending_from_stored(p: StoredPending, now: Instant) -> Option<Restored> {
    let qos = match QoS::from_u8(p.qos)? {
        QoS::AtMostOnce => return None,
        q => q,
    };
    let retain = p.message.retain;
    let message: Message = persist::from_stored(p.message, now)?;
    let delivery = Delivery {
        message: Arc::new(message),
        qos,
        retain,
        subscription_id: p.subscription_id.and_then(NonZeroU32::new),
        more_subscription_ids: (!p.more_subscription_ids.is_empty()).then(|| {
            Arc::new(
                p.more_subscription_ids
                    .iter()
                    .filter_map(|&id| NonZeroU32::new(id))
                    .collect(),
            )
        }),
        seq: p.seq,
        shared: None,
    };
    let state = match (p.state, qos) {
        (PendingState::AwaitPubAck, QoS::AtLeastOnce) => InflightState::AwaitPubAck,
        (PendingState::AwaitPubRec, QoS::ExactlyOnce) => InflightState::AwaitPubRec,
        (PendingState::AwaitPubComp, QoS::ExactlyOnce) => InflightState::AwaitPubComp,
        // Not sent yet, or a state that does not fit its QoS: send it afresh.
        _ => return Some(Restored::Queued(delivery)),
    };
    match p.packet_id.filter(|&id| id != 0) {
        Some(packet_id) => Some(Restored::Inflight(Inflight {
            packet_id: PacketId::new(packet_id),
            state,
            delivery,
        })),
        None => Some(Restored::Queued(delivery)),
    }
}

/// Takes the journals and writes them once: under the router lock only to take them, the store
/// calls on a blocking thread. Store errors are logged and counted in the router.
pub async fn flush_once(broker: &Broker, store: &Arc<dyn SessionStore>) {
    let now = Instant::now();
    let writes = broker.with_router(|r| r.take_session_writes(now));
    if writes.is_empty() {
        return;
    }
    let store = store.clone();
    let errors = match tokio::task::spawn_blocking(move || writes.apply(&*store)).await {
        Ok(errors) => errors,
        Err(e) => {
            tracing::error!(error = %e, "session store writer failed; this batch is lost");
            1
        }
    };
    if errors > 0 {
        broker.with_router(|r| r.count_session_store_errors(errors));
    }
}

/// Writes the session journals every [`FLUSH_EVERY`] until shutdown. The caller does one last
/// [`flush_once`] after the connections have closed.
pub async fn run_flusher(broker: Arc<Broker>, store: Arc<dyn SessionStore>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => flush_once(&broker, &store).await,
            () = broker.shutdown.cancelled() => return,
        }
    }
}
