//! The router: the broker's synchronous core.
//!
//! Owns every session, the subscription index (plain and shared), the retained store and the
//! broker-wide message counters. All of it sits behind one mutex in [`super::Broker`]; callers
//! batch their operations so a burst of packets costs one lock. The router never does IO, never
//! awaits and never calls back into a connection: it queues deliveries on sessions and records
//! which connections to wake, and the caller wakes them after the lock is released.
//!
//! Ordering guarantee: one publisher's messages are routed in the order its connection decoded
//! them, each session's queue is FIFO, and a connection drains its queue strictly in order (a QoS
//! 0 message never overtakes a QoS 1 message that waits for inflight room), so messages from one
//! client on one topic reach every subscriber in arrival order whatever their QoS.

use super::message::{Delivery, Message, SessionId, SessionMap, SharedKey};
use super::session::{
    ConnControl, Inflight, InflightState, Owner, PendingWill, Session, Subscription,
};
use super::session_persist::{self, Journal, Persistence, Restored, SessionWrites};
use crate::config::{OwnerMismatch, SharedStrategy};
use holdfast_mqtt::topic::{self, SharedFilter};
use holdfast_mqtt::trie::SubscriptionTrie;
use holdfast_mqtt::{reason, ByteStr, ProtocolVersion, QoS, SubscriptionOptions};
use holdfast_storage::kv::{RetainedStore, SessionStore};
use std::cell::Cell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The router's limits and policies, taken from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Per-session queue cap; when full the oldest message is dropped (EMQX).
    pub max_mqueue_len: usize,
    /// Queue QoS 0 messages for offline sessions.
    pub mqueue_store_qos0: bool,
    /// Whether retained messages are stored at all.
    pub retain_available: bool,
    /// Cap on the retained store; a new retained topic beyond it is not stored (counted).
    pub max_retained_messages: usize,
    /// Cap on one retained payload.
    pub max_retained_payload: usize,
    /// Cap on the topic and payload bytes of all retained messages together.
    pub max_retained_bytes: usize,
    /// Cap on sessions (connected and offline); a CONNECT that needs one more is refused.
    pub max_sessions: usize,
    /// Cap on the bytes a session holds queued and in flight (as `Delivery::held_bytes`
    /// counts them); a full queue drops its oldest, as with `max_mqueue_len`.
    pub max_mqueue_bytes: usize,
    /// Cap on those bytes summed over every session: a delivery that would pass it is not
    /// queued (counted as `mqueue_full`).
    pub max_queued_bytes_total: usize,
    /// How a shared-subscription group picks its member.
    pub shared_strategy: SharedStrategy,
    /// Deepest topic or filter accepted.
    pub max_topic_levels: usize,
    /// Longest filter accepted, in bytes (a shared one with its prefix).
    pub max_topic_len: usize,
    /// Cap on the bytes of every session's subscriptions together, as
    /// [`subscription_cost`] counts them.
    pub max_subscription_bytes_total: usize,
    /// A connected session whose queue reaches this length has its connection closed with
    /// 0x97 quota exceeded (`mqtt.force_shutdown.max_mqueue_len`); 0 = never.
    pub force_shutdown_mqueue_len: usize,
    /// A connected client whose queued and inflight messages hold this many bytes is
    /// disconnected the same way (`mqtt.force_shutdown.max_heap_size`); 0 = never.
    pub force_shutdown_heap_size: usize,
}

/// Broker-wide counters kept under the router lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// Messages routed (publishes received from clients plus broker-made ones).
    pub messages_routed: u64,
    /// Deliveries queued on sessions.
    pub deliveries_queued: u64,
    /// Deliveries handed to connections to send.
    pub deliveries_sent: u64,
    /// Dropped because a session queue was full (drop oldest).
    pub dropped_queue_full: u64,
    /// QoS 0 messages not queued for an offline session (`mqueue_store_qos0 = false`).
    pub dropped_qos0_offline: u64,
    /// Messages that expired before they could be sent.
    pub dropped_expired: u64,
    /// Messages nobody subscribed to.
    pub dropped_no_subscribers: u64,
    /// Retained messages not stored because the store was full or the payload too big.
    pub dropped_retained_full: u64,
    /// Queued or inflight messages discarded with their session (clean start, expiry).
    pub dropped_session_discarded: u64,
    /// Messages handed from a shared-subscription member that left (or went offline) to
    /// another member of its group.
    pub shared_redispatched: u64,
    /// Retained-store writes that failed (disk full, I/O error); logged each time.
    pub retained_store_errors: u64,
    /// Session-store reads and writes that failed (disk full, I/O error); logged each time with
    /// the client id.
    pub session_store_errors: u64,
}

/// A snapshot of sizes for `$SYS` and the stats API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterSizes {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Sessions with a live connection.
    pub connected: usize,
    /// Subscriptions (plain and shared).
    pub subscriptions: usize,
    /// What they hold, as `max_subscription_bytes_total` counts it.
    pub subscription_bytes: usize,
    /// Retained messages.
    pub retained: usize,
    /// Deliveries waiting in all session queues.
    pub queued: usize,
    /// Deliveries inflight on all sessions.
    pub inflight: usize,
}

/// What a CONNECT asks of the router.
#[derive(Debug)]
pub struct ConnectParams {
    /// Client identifier (already assigned when the client sent an empty one).
    pub client_id: ByteStr,
    /// Protocol spoken.
    pub protocol: ProtocolVersion,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// How long the session outlives the connection.
    pub session_expiry: Duration,
    /// Outbound inflight window for this connection.
    pub window: usize,
    /// The connection's control handle.
    pub conn: Arc<ConnControl>,
    /// When the CONNECT was accepted (the router never reads the clock itself).
    pub now: Instant,
    /// The connecting identity: a session it did not create is not its to take.
    pub owner: Owner,
    /// What happens when `owner` is not the existing session's owner.
    pub on_owner_mismatch: OwnerMismatch,
}

/// The router's answer to a CONNECT.
#[derive(Debug)]
pub struct ConnectResult {
    /// The session now bound to the connection.
    pub session_id: SessionId,
    /// CONNACK session-present flag.
    pub session_present: bool,
    /// The connection that served this client id before; the caller closes it (takeover).
    pub replaced: Option<Arc<ConnControl>>,
    /// True when an existing session was thrown away because of clean start.
    pub discarded: bool,
    /// Set when the CONNECT must be refused; nothing was changed.
    pub refused: Option<ConnectRefusal>,
}

/// Why the router refused a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The session of this client id belongs to another identity (`OwnerMismatch::Refuse`).
    NotOwner,
    /// A new session would exceed `max_sessions`.
    TooManySessions,
}

/// One thing for a connection to send, taken from its session.
#[derive(Debug)]
pub enum Outgoing {
    /// A PUBLISH: packet id 0 for QoS 0.
    Publish {
        /// What to send.
        delivery: Delivery,
        /// Packet id.
        packet_id: u16,
        /// Resent after a reconnect.
        dup: bool,
    },
    /// A PUBREL resent after a reconnect.
    PubRel(u16),
}

/// Outcome of an inbound QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Receive {
    /// First time: route it and answer PUBREC.
    New,
    /// A resend of a packet id we already hold: answer PUBREC, do not route again.
    Duplicate,
    /// `max_awaiting_rel` reached.
    Full,
}

/// Members of one shared-subscription group for one filter.
#[derive(Debug, Default)]
struct SharedGroup {
    /// Which group this is; every delivery through it carries a copy.
    key: Arc<SharedKey>,
    /// (session, subscription) in join order.
    members: Vec<(SessionId, Subscription)>,
    /// Round-robin cursor; a `Cell` so matching can advance it through a shared borrow.
    next: Cell<usize>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    /// Boxed: a session is a few hundred bytes and the map keeps ~1.5x its length in slots.
    sessions: SessionMap<Box<Session>>,
    by_client: HashMap<ByteStr, SessionId>,
    subs: SubscriptionTrie<SessionId, Subscription>,
    shared: SubscriptionTrie<ByteStr, SharedGroup>,
    retained: HashMap<ByteStr, Arc<Message>>,
    /// Where retained messages are persisted, when the gateway has a data dir.
    retained_store: Option<Arc<dyn RetainedStore>>,
    /// Which sessions are journaled for the session store, when one is attached.
    persist: Option<Box<Persistence>>,
    /// Retained topics that count against `max_retained_messages` (all but `$SYS/...`, which
    /// only the broker can publish).
    retained_user: usize,
    /// Topic + payload bytes of those retained messages (`max_retained_bytes`).
    retained_user_bytes: usize,
    /// Every session's `held_bytes`, summed (`max_queued_bytes_total`).
    held_total: Arc<std::sync::atomic::AtomicUsize>,
    /// Every session's subscriptions, as [`subscription_cost`] counts them
    /// (`max_subscription_bytes_total`).
    subscription_bytes: usize,
    next_session_id: SessionId,
    /// Connections to wake once the lock is released.
    wake: Vec<Arc<ConnControl>>,
    counters: RouterCounters,
    /// Random state for the `random` shared strategy (xorshift; no need for a CSPRNG).
    rng: u64,
    /// Decides which messages the bridges take; none without `[[bridges]]`.
    uplink: Option<Arc<dyn super::uplink::Uplink>>,
    /// Messages routed under this lock that bridges want, in routing order; the broker appends
    /// them to the bridge queues after releasing the lock.
    forwards: Vec<Arc<Message>>,
    /// Told about messages dropped for lack of subscribers; none unless a webhook wants
    /// `message.dropped`.
    events: Option<Arc<dyn super::events::Events>>,
}

impl Router {
    /// An empty router.
    pub fn new(cfg: RouterConfig) -> Router {
        Router {
            cfg,
            sessions: SessionMap::default(),
            by_client: HashMap::new(),
            subs: SubscriptionTrie::new(),
            shared: SubscriptionTrie::new(),
            retained: HashMap::new(),
            retained_user: 0,
            retained_user_bytes: 0,
            held_total: Arc::default(),
            subscription_bytes: 0,
            retained_store: None,
            persist: None,
            next_session_id: 1,
            wake: Vec::new(),
            counters: RouterCounters::default(),
            rng: 0x9E37_79B9_7F4A_7C15,
            uplink: None,
            forwards: Vec::new(),
            events: None,
        }
    }

    /// From now on, messages that a bridge's forward filters match are collected for
    /// [`take_forwards`](Self::take_forwards).
    pub fn set_uplink(&mut self, uplink: Arc<dyn super::uplink::Uplink>) {
        self.uplink = Some(uplink);
    }

    /// From now on, messages nobody subscribed to are posted as `message.dropped`.
    pub fn set_events(&mut self, events: Arc<dyn super::events::Events>) {
        self.events = Some(events);
    }

    /// The client id of session `sid`, if it still exists (for webhook events).
    /// The delivery inflight under `packet_id` in `state` on session `sid`: what
    /// `message.acked` reports, looked up before the ack releases it.
    pub fn inflight_delivery(
        &self,
        sid: SessionId,
        packet_id: u16,
        state: InflightState,
    ) -> Option<Delivery> {
        let s = self.sessions.get(&sid)?;
        s.inflight
            .iter()
            .find(|f| f.packet_id == packet_id && f.state == state)
            .map(|f| f.delivery.clone())
    }

    /// Messages collected for the bridges, in routing order.
    pub fn take_forwards(&mut self) -> Vec<Arc<Message>> {
        std::mem::take(&mut self.forwards)
    }

    /// How many messages are collected for the bridges so far under this lock.
    pub fn forwards_len(&self) -> usize {
        self.forwards.len()
    }

    /// Connections to wake, taken so the caller can notify them after unlocking.
    pub fn take_wakeups(&mut self) -> Vec<Arc<ConnControl>> {
        std::mem::take(&mut self.wake)
    }

    /// Counters so far.
    pub fn counters(&self) -> RouterCounters {
        self.counters
    }

    /// Current sizes.
    pub fn sizes(&self) -> RouterSizes {
        let mut sizes = RouterSizes {
            sessions: self.sessions.len(),
            subscriptions: self.subs.len(),
            subscription_bytes: self.subscription_bytes,
            retained: self.retained.len(),
            ..RouterSizes::default()
        };
        for s in self.sessions.values() {
            sizes.connected += usize::from(s.is_connected());
            sizes.queued += s.mqueue.len();
            sizes.inflight += s.inflight.len();
            sizes.subscriptions += s
                .subscriptions
                .keys()
                .filter(|f| f.starts_with("$share/") || f.starts_with("$queue/"))
                .count();
        }
        sizes
    }

    /// Binds a connection to the session of `params.client_id`, creating, resuming or
    /// discarding it (clean start). See [`ConnectResult`].
    pub fn connect(&mut self, params: ConnectParams) -> ConnectResult {
        let mut replaced = None;
        let mut discarded = false;
        let now = params.now;
        if let Some(&sid) = self.by_client.get(&params.client_id) {
            // An offline session past its expiry, or a will already due, is settled first: the
            // one-second `tick` may simply not have run yet.
            let (expired, will_due) = self.sessions.get(&sid).map_or((false, false), |s| {
                (
                    s.expires_at.is_some_and(|at| now >= at),
                    s.pending_will().is_some_and(|w| now >= w.publish_at),
                )
            });
            if will_due {
                if let Some(w) = self.sessions.get_mut(&sid).and_then(|s| {
                    s.note_meta_changed();
                    s.take_pending_will()
                }) {
                    self.publish_will(w.message, now);
                }
            }
            if expired {
                if let Some(w) = self.remove_session(sid) {
                    self.publish_will(w, now);
                }
            }
            let mut clean_start = params.clean_start;
            if let Some(s) = self.sessions.get_mut(&sid) {
                match &s.owner {
                    Owner::Unclaimed => {
                        s.owner = params.owner.clone();
                        s.note_meta_changed();
                    }
                    owner if *owner == params.owner => {}
                    owner => {
                        tracing::warn!(
                            client_id = %params.client_id,
                            session_owner = ?owner,
                            connecting = ?params.owner,
                            policy = ?params.on_owner_mismatch,
                            "a CONNECT for a session another identity created"
                        );
                        // A verified user never resumes a session nobody verified (anyone could
                        // have planted it), and is not locked out by it either: it starts afresh.
                        let squatted =
                            *owner == Owner::Anonymous && matches!(params.owner, Owner::User(_));
                        let policy = if squatted {
                            OwnerMismatch::Discard
                        } else {
                            params.on_owner_mismatch
                        };
                        match policy {
                            OwnerMismatch::Refuse => {
                                return ConnectResult {
                                    session_id: 0,
                                    session_present: false,
                                    replaced: None,
                                    discarded: false,
                                    refused: Some(ConnectRefusal::NotOwner),
                                };
                            }
                            OwnerMismatch::Discard => clean_start = true,
                        }
                    }
                }
            }
            if let Some(s) = self.sessions.get_mut(&sid) {
                replaced = s.conn.take();
                if !clean_start {
                    s.conn = Some(params.conn.clone());
                    s.protocol = params.protocol;
                    s.expiry = params.session_expiry;
                    s.expires_at = None;
                    s.window = params.window.max(1);
                    s.take_pending_will();
                    s.resend_pending = !s.inflight.is_empty();
                    params
                        .conn
                        .wake_pending
                        .store(false, std::sync::atomic::Ordering::Release);
                    if (!s.mqueue.is_empty() || s.resend_pending) && params.conn.should_wake() {
                        self.wake.push(params.conn.clone());
                    }
                    self.sync_journal(sid);
                    return ConnectResult {
                        session_id: sid,
                        session_present: true,
                        replaced,
                        discarded: false,
                        refused: None,
                    };
                }
            }
            // Clean start: the old session ends here; its pending will goes out now.
            if let Some(pending) = self.remove_session(sid) {
                self.publish_will(pending, now);
            }
            discarded = true;
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            tracing::warn!(client_id = %params.client_id, max_sessions = self.cfg.max_sessions, "connection refused: max_sessions reached");
            if let Some(conn) = replaced.take() {
                // The old connection's session was just discarded: it cannot stay bound.
                conn.close_with(reason::SESSION_TAKEN_OVER);
            }
            return ConnectResult {
                session_id: 0,
                session_present: false,
                replaced: None,
                discarded,
                refused: Some(ConnectRefusal::TooManySessions),
            };
        }
        let sid = self.next_session_id;
        self.next_session_id += 1;
        let mut session = Session::new(sid, params.client_id.clone(), params.protocol);
        session.held_total = self.held_total.clone();
        session.owner = params.owner;
        session.conn = Some(params.conn);
        session.expiry = params.session_expiry;
        session.window = params.window.max(1);
        self.sessions.insert(sid, Box::new(session));
        self.by_client.insert(params.client_id, sid);
        self.sync_journal(sid);
        ConnectResult {
            session_id: sid,
            session_present: false,
            replaced,
            discarded,
            refused: None,
        }
    }

    /// The connection `conn_id` of session `sid` ended. `will` is published now or after its
    /// delay; `expiry_override` is a v5 DISCONNECT's new session expiry. A call from a
    /// connection that was already replaced only publishes an undelayed will.
    pub fn disconnect(
        &mut self,
        sid: SessionId,
        conn_id: u64,
        will: Option<(Arc<Message>, Duration)>,
        expiry_override: Option<Duration>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            // The session already ended (a clean-start newcomer discarded it): so does the
            // will's delay.
            if let Some((msg, _)) = will {
                self.publish_will(msg, now);
            }
            return;
        };
        if s.conn.as_ref().map(|c| c.conn_id) != Some(conn_id) {
            // Resumed by another connection: a delayed will is cancelled by the resume.
            if let Some((msg, Duration::ZERO)) = will {
                self.publish_will(msg, now);
            }
            return;
        }
        s.conn = None;
        if let Some(expiry) = expiry_override {
            s.expiry = expiry;
        }
        if s.expiry.is_zero() {
            if let Some(pending) = self.remove_session(sid) {
                self.publish_will(pending, now);
            }
            if let Some((msg, _)) = will {
                self.publish_will(msg, now);
            }
            return;
        }
        s.expires_at = Some(now + s.expiry);
        self.redistribute_from_offline(sid, now);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !self.cfg.mqueue_store_qos0 {
            let before = s.mqueue.len();
            let mut freed = 0;
            s.mqueue.retain(|d| {
                let keep = d.qos != QoS::AtMostOnce;
                if !keep {
                    freed += d.held_bytes();
                }
                keep
            });
            s.sub_held(freed);
            self.counters.dropped_qos0_offline += (before - s.mqueue.len()) as u64;
        }
        match will {
            Some((msg, delay)) if delay.is_zero() => {
                self.publish_will(msg, now);
            }
            Some((message, delay)) => {
                let bytes = super::session::will_bytes(&message);
                let total = self.held_total.load(std::sync::atomic::Ordering::Relaxed);
                if total + bytes > self.cfg.max_queued_bytes_total {
                    // Kept, it would take memory the cap promises: published now, it reaches
                    // whoever has room (the bridges do) instead.
                    tracing::warn!(client_id = %super::short(&s.client_id), held_total = total, "delayed will published at once: max_queued_bytes_total reached");
                    self.publish_will(message, now);
                } else {
                    s.set_pending_will(PendingWill {
                        message,
                        publish_at: now + delay.min(s.expiry),
                    });
                }
            }
            None => {}
        }
        // A v5 DISCONNECT may have changed the expiry.
        self.sync_journal(sid);
    }

    /// A shared-subscription member went offline (its session stays): the messages queued
    /// for it through a group with a connected member go there instead of waiting for it
    /// (MQTT 5 §4.8.2 allows it; EMQX redispatches too). What was already sent stays.
    fn redistribute_from_offline(&mut self, sid: SessionId, now: Instant) {
        let keys: Vec<Arc<SharedKey>> = {
            let Some(s) = self.sessions.get(&sid) else {
                return;
            };
            let mut keys: Vec<Arc<SharedKey>> = Vec::new();
            for k in s.mqueue.iter().filter_map(|d| d.shared.as_ref()) {
                if !keys.iter().any(|have| Arc::ptr_eq(have, k)) {
                    keys.push(k.clone());
                }
            }
            keys.retain(|k| {
                self.shared
                    .get(&k.filter, &k.group)
                    .is_some_and(|g| other_member(&self.sessions, g, sid, true).is_some())
            });
            keys
        };
        if keys.is_empty() {
            return;
        }
        let taken = self.take_shared_queued(sid, |k| keys.iter().any(|have| **have == *k));
        let left = self.redistribute(sid, taken, true, now);
        if let Some(s) = self.sessions.get_mut(&sid) {
            for d in left {
                s.push_delivery(d);
            }
        }
    }

    /// Publishes a will, starting its message expiry now (MQTT 5 §3.1.3.2.4).
    fn publish_will(&mut self, msg: Arc<Message>, now: Instant) -> usize {
        let msg = match msg.properties.message_expiry_interval {
            Some(secs) if msg.expires_at.is_none() => {
                let mut armed = Message::clone(&msg);
                armed.expires_at = Some(now + Duration::from_secs(u64::from(secs)));
                Arc::new(armed)
            }
            _ => msg,
        };
        self.publish(msg, now)
    }

    /// Removes an outbound inflight entry whatever its state (a delivery discarded because it
    /// was too large for the client counts as delivered, MQTT 5 §3.1.2.11.4).
    pub fn discard_inflight(&mut self, sid: SessionId, packet_id: u16) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let Some(pos) = s.inflight.iter().position(|f| f.packet_id == packet_id) else {
            return false;
        };
        if let Some(done) = s.inflight.remove(pos) {
            s.note_removed(&done.delivery);
        }
        true
    }

    /// Publishes due delayed wills and discards expired offline sessions. Returns the client
    /// ids of the sessions discarded.
    pub fn tick(&mut self, now: Instant) -> Vec<ByteStr> {
        let mut due_wills = Vec::new();
        let mut expired = Vec::new();
        for s in self.sessions.values_mut() {
            if s.pending_will().is_some_and(|w| now >= w.publish_at) {
                if let Some(w) = s.take_pending_will() {
                    due_wills.push(w.message);
                    s.note_meta_changed();
                }
            }
            if s.expires_at.is_some_and(|at| now >= at) {
                expired.push(s.id);
            }
        }
        for msg in due_wills {
            self.publish_will(msg, now);
        }
        let mut ids = Vec::with_capacity(expired.len());
        for sid in expired {
            if let Some(s) = self.sessions.get(&sid) {
                ids.push(s.client_id.clone());
            }
            if let Some(w) = self.remove_session(sid) {
                self.publish_will(w, now);
            }
        }
        ids
    }

    /// Removes a session and its subscriptions; returns its pending will, if any.
    fn remove_session(&mut self, sid: SessionId) -> Option<Arc<Message>> {
        let s = self.sessions.remove(&sid)?;
        if self.by_client.get(&s.client_id) == Some(&sid) {
            self.by_client.remove(&s.client_id);
        }
        if s.journal.is_some() {
            if let Some(p) = &mut self.persist {
                p.forget(sid, &s.client_id);
            }
        }
        for filter in s.subscriptions.keys() {
            self.remove_subscription_index(sid, filter);
            self.subscription_bytes = self
                .subscription_bytes
                .saturating_sub(subscription_cost(filter));
        }
        // What came through a shared subscription goes to another member of its group: every
        // queued message, and the QoS 1 ones sent but not acknowledged. A QoS 2 message already
        // sent must not go to anyone else (MQTT-4.8.2-5).
        let mut s = s;
        let mut movable: Vec<Delivery> = Vec::new();
        let mut discarded = 0;
        for d in s.mqueue.drain(..) {
            if d.shared.is_some() {
                movable.push(d);
            } else {
                discarded += 1;
            }
        }
        for f in s.inflight.drain(..) {
            if f.delivery.shared.is_some() && f.state == InflightState::AwaitPubAck {
                movable.push(f.delivery);
            } else {
                discarded += 1;
            }
        }
        let left = self.redistribute(sid, movable, false, Instant::now());
        self.counters.dropped_session_discarded += (discarded + left.len()) as u64;
        s.take_pending_will().map(|w| w.message)
    }

    /// Hands deliveries that came through a shared subscription to another member of their
    /// group (a connected one first; with `connected_only`, only a connected one). Returns
    /// those that found nobody, in order.
    fn redistribute(
        &mut self,
        from: SessionId,
        deliveries: Vec<Delivery>,
        connected_only: bool,
        now: Instant,
    ) -> Vec<Delivery> {
        let Router {
            cfg,
            sessions,
            shared,
            wake,
            counters,
            ..
        } = self;
        let mut left = Vec::new();
        for d in deliveries {
            let target = d.shared.as_ref().and_then(|key| {
                let group = shared.get(&key.filter, &key.group)?;
                other_member(sessions, group, from, connected_only)
            });
            let Some((sid, sub)) = target else {
                left.push(d);
                continue;
            };
            let Some(s) = sessions.get_mut(&sid) else {
                left.push(d);
                continue;
            };
            let mut moved = Delivery::live(&d.message, &sub);
            moved.shared = d.shared.clone();
            tracing::debug!(client_id = %s.client_id, topic = %d.message.topic, "shared subscription: message handed to another member");
            let mut offline_copy = None;
            if enqueue(cfg, counters, wake, s, moved, &mut offline_copy, now) {
                counters.shared_redispatched += 1;
            }
        }
        left
    }

    /// Takes the queued deliveries of `sid` that came through a shared group where `take`
    /// says so (journaling their removal).
    fn take_shared_queued(
        &mut self,
        sid: SessionId,
        take: impl Fn(&SharedKey) -> bool,
    ) -> Vec<Delivery> {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Vec::new();
        };
        if !s.mqueue.iter().any(|d| d.shared.is_some()) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(s.mqueue.len());
        for d in std::mem::take(&mut s.mqueue) {
            if d.shared.as_deref().is_some_and(&take) {
                taken.push(d);
            } else {
                kept.push_back(d);
            }
        }
        s.mqueue = kept;
        for d in &taken {
            s.note_removed(d);
        }
        taken
    }

    fn remove_subscription_index(&mut self, sid: SessionId, filter: &str) -> bool {
        match topic::parse_shared(filter) {
            Ok(Some(SharedFilter { group, filter })) => {
                let key = ByteStr::from(group);
                let mut now_empty = false;
                let mut found = false;
                if let Some(g) = self.shared.get_mut(filter, &key) {
                    let before = g.members.len();
                    g.members.retain(|(m, _)| *m != sid);
                    found = g.members.len() != before;
                    now_empty = g.members.is_empty();
                }
                if now_empty {
                    self.shared.remove(filter, &key);
                }
                found
            }
            _ => self.subs.remove(filter, &sid).is_some(),
        }
    }

    /// Routes one message to every matching subscription (and stores it if retained), and
    /// collects it for the bridges when one wants it. Returns the number of subscriptions it
    /// matched, plus one when a bridge takes it (deliveries may still be dropped by
    /// policy, e.g. QoS 0 for an offline session; those are counted).
    pub fn publish(&mut self, msg: Arc<Message>, now: Instant) -> usize {
        self.counters.messages_routed += 1;
        if msg.retain {
            self.store_retained(&msg);
        }
        let mut matched = 0;
        if self.uplink.as_ref().is_some_and(|f| f.wants(&msg)) {
            self.forwards.push(msg.clone());
            matched += 1;
        }
        let Router {
            cfg,
            sessions,
            subs,
            shared,
            wake,
            counters,
            rng,
            events,
            ..
        } = self;
        // One owned copy shared by every offline session that queues the message.
        let mut offline_copy = None;
        subs.for_each_match(&msg.topic, |_, sid, sub| {
            if sub.options.no_local && msg.publisher == Some(*sid) {
                return;
            }
            if let Some(s) = sessions.get_mut(sid) {
                matched += 1;
                let delivery = Delivery::live(&msg, sub);
                enqueue(cfg, counters, wake, s, delivery, &mut offline_copy, now);
            }
        });
        shared.for_each_match(&msg.topic, |_, _, group| {
            let Some((sid, sub)) = pick_member(cfg, sessions, group, &msg, rng) else {
                return;
            };
            if let Some(s) = sessions.get_mut(&sid) {
                matched += 1;
                // Retained messages are never sent to shared subscriptions on subscribe; a
                // live message keeps retain-as-published semantics like any other.
                let mut delivery = Delivery::live(&msg, &sub);
                delivery.shared = Some(group.key.clone());
                enqueue(cfg, counters, wake, s, delivery, &mut offline_copy, now);
            }
        });
        if matched == 0 {
            counters.dropped_no_subscribers += 1;
            if let Some(e) = events {
                let from = msg.publisher.and_then(|p| sessions.get(&p));
                e.message_dropped(super::events::Dropped {
                    reason: "no_subscribers",
                    clientid: from.map(|s| s.client_id.as_str()),
                    username: None,
                    topic: &msg.topic,
                    qos: msg.qos,
                    retain: msg.retain,
                    payload: &msg.payload,
                });
            }
        }
        matched
    }

    fn store_retained(&mut self, msg: &Arc<Message>) {
        if !self.cfg.retain_available {
            return;
        }
        // The broker's own `$SYS` topics are a fixed, small set: they do not use up the
        // user-facing `max_retained_messages`.
        let counted = !msg.topic.starts_with("$SYS/");
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                if counted {
                    self.retained_user -= 1;
                    self.retained_user_bytes =
                        self.retained_user_bytes.saturating_sub(retained_size(&old));
                    self.persist_retained_removal(&msg.topic);
                }
            }
            return;
        }
        let old_size = self.retained.get(&msg.topic).map(|m| retained_size(m));
        let is_new = old_size.is_none();
        // Only user topics count against `max_retained_bytes` (and are in the running total).
        let bytes_after = if counted {
            self.retained_user_bytes
                .saturating_sub(old_size.unwrap_or(0))
                + retained_size(msg)
        } else {
            self.retained_user_bytes
        };
        if msg.payload.len() > self.cfg.max_retained_payload
            || (counted && is_new && self.retained_user >= self.cfg.max_retained_messages)
            || (counted && bytes_after > self.cfg.max_retained_bytes)
        {
            self.counters.dropped_retained_full += 1;
            tracing::warn!(topic = %super::short(&msg.topic), "retained message not stored: retained store full or payload too large");
            return;
        }
        // Stored without the publisher, so no-local never hides a retained message.
        let mut stored = msg.detached();
        stored.publisher = None;
        if counted {
            self.persist_retained(&stored);
        }
        self.retained.insert(stored.topic.clone(), Arc::new(stored));
        if counted {
            self.retained_user_bytes = bytes_after;
            if is_new {
                self.retained_user += 1;
            }
        }
    }

    /// Persists retained messages from now on, after loading the ones stored before (those
    /// that expired meanwhile are dropped from the store). Returns how many were loaded.
    /// `$SYS` topics are never stored: the broker republishes them.
    pub fn attach_retained_store(&mut self, store: Arc<dyn RetainedStore>, now: Instant) -> usize {
        let stored = match store.load_all() {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot load retained messages; starting without them");
                Vec::new()
            }
        };
        let mut loaded = 0;
        for s in stored {
            let topic = s.topic.clone();
            match super::persist::from_stored(s, now) {
                Some(msg)
                    if self.retained_user < self.cfg.max_retained_messages
                        && self.retained_user_bytes + retained_size(&msg)
                            <= self.cfg.max_retained_bytes =>
                {
                    let size = retained_size(&msg);
                    match self.retained.insert(msg.topic.clone(), Arc::new(msg)) {
                        None => self.retained_user += 1,
                        Some(old) => {
                            self.retained_user_bytes =
                                self.retained_user_bytes.saturating_sub(retained_size(&old));
                        }
                    }
                    self.retained_user_bytes += size;
                    loaded += 1;
                }
                _ => {
                    if let Err(e) = store.remove(&topic) {
                        tracing::warn!(topic = %super::short(&topic), error = %e, "cannot remove a stale retained message");
                    }
                }
            }
        }
        self.retained_store = Some(store);
        loaded
    }

    fn persist_retained(&mut self, msg: &Message) {
        if let Some(store) = &self.retained_store {
            // sled buffers the write and flushes it in the background (see the storage crate
            // for what survives a kill -9 and what a power cut).
            if let Err(e) = store.put(&super::persist::to_stored(msg, Instant::now())) {
                self.counters.retained_store_errors += 1;
                tracing::error!(topic = %super::short(&msg.topic), error = %e, "retained message not persisted");
            }
        }
    }

    fn persist_retained_removal(&mut self, topic: &str) {
        if let Some(store) = &self.retained_store {
            if let Err(e) = store.remove(topic) {
                self.counters.retained_store_errors += 1;
                tracing::error!(topic = %super::short(topic), error = %e, "retained message removal not persisted");
            }
        }
    }

    /// Restores the sessions stored before (see [`session_persist`]) as offline sessions and
    /// journals persistent sessions from now on; the caller writes the journals with
    /// [`Router::take_session_writes`]. Sessions that expired meanwhile, and records that do not
    /// make sense, are removed from the store with the first write. Returns how many sessions
    /// were restored.
    pub fn attach_session_store(&mut self, store: &dyn SessionStore, now: Instant) -> usize {
        let mut persist = Box::<Persistence>::default();
        let stored = match store.load_sessions() {
            Ok(all) => all,
            Err(e) => {
                persist.errors += 1;
                tracing::error!(error = %e, "cannot load persistent sessions; starting without them");
                Vec::new()
            }
        };
        let unix_now = session_persist::unix_ms_now();
        let mut restored = 0;
        for stored in stored {
            let client_id = ByteStr::from(stored.client_id.as_str());
            let protocol = session_persist::protocol_from_level(stored.protocol_level);
            let left = session_persist::remaining_expiry(&stored, unix_now);
            let (Some(protocol), Some(left)) = (protocol, left) else {
                if protocol.is_none() {
                    tracing::warn!(client_id = %client_id, level = stored.protocol_level, "stored session with an unknown protocol level discarded");
                } else {
                    tracing::info!(client_id = %client_id, "stored session expired while the gateway was down");
                }
                persist.removed.push(client_id);
                continue;
            };
            if self.by_client.contains_key(&client_id) {
                continue;
            }
            let pending = match store.load_pending(&stored.client_id) {
                Ok(p) => p,
                Err(e) => {
                    persist.errors += 1;
                    tracing::error!(client_id = %client_id, error = %e, "cannot load the queued messages of a persistent session; restoring it without them");
                    Vec::new()
                }
            };
            let sid = self.next_session_id;
            self.next_session_id += 1;
            let mut s = Session::new(sid, client_id.clone(), protocol);
            s.held_total = self.held_total.clone();
            s.expiry = Duration::from_secs(u64::from(stored.expiry_secs));
            s.expires_at = Some(now + left);
            s.awaiting_rel = stored
                .awaiting_rel
                .iter()
                .copied()
                .filter(|&id| id != 0)
                .collect();
            s.owner = match &stored.owner {
                None => Owner::Unclaimed,
                Some(None) => Owner::Anonymous,
                Some(Some(user)) => Owner::User(ByteStr::from(user.as_str())),
            };
            if let Some(w) = &stored.pending_will {
                let due_in = w.publish_at_unix_ms.saturating_sub(unix_now);
                match super::persist::from_stored(w.message.clone(), now) {
                    Some(message) => {
                        s.set_pending_will(PendingWill {
                            message: Arc::new(message),
                            publish_at: now + Duration::from_millis(due_in),
                        });
                    }
                    None => {
                        tracing::info!(client_id = %client_id, "stored delayed will expired while the gateway was down")
                    }
                }
            }
            let mut journal = Journal {
                // A session connected at the crash gets its disconnect time written now, so
                // that another crash does not restart its expiry.
                meta_dirty: stored.disconnected_at_unix_ms.is_none(),
                ..Journal::default()
            };
            let mut subs = Vec::with_capacity(stored.subscriptions.len());
            for sub in &stored.subscriptions {
                match session_persist::subscription_from_stored(sub) {
                    Some(parsed) => subs.push((ByteStr::from(sub.filter.as_str()), parsed)),
                    None => {
                        journal.meta_dirty = true;
                        tracing::warn!(client_id = %client_id, filter = %sub.filter, "stored subscription with an invalid QoS skipped");
                    }
                }
            }
            for p in pending {
                let seq = p.seq;
                s.next_seq = s.next_seq.max(seq.saturating_add(1));
                let qos = p.qos;
                match session_persist::pending_from_stored(p, now) {
                    Some(Restored::Queued(d)) => s.restore(d),
                    Some(Restored::Inflight(f)) => {
                        if s.inflight.iter().any(|g| g.packet_id == f.packet_id) {
                            s.restore(f.delivery);
                        } else {
                            s.next_packet_id = f.packet_id.checked_add(1).unwrap_or(1);
                            s.restore_inflight(f);
                        }
                    }
                    None => {
                        // Expired while the gateway was down (or not a QoS 1/2 record at all).
                        if matches!(qos, 1 | 2) {
                            self.counters.dropped_expired += 1;
                        }
                        journal
                            .pending
                            .insert(seq, session_persist::PendingOp::Removed);
                    }
                }
            }
            // A queued record that sorted before an inflight one (cannot happen unless the
            // store was edited) keeps its place: the queue must stay in seq order.
            s.mqueue.make_contiguous().sort_by_key(|d| d.seq);
            while s.mqueue.len() > self.cfg.max_mqueue_len {
                if let Some(oldest) = s.mqueue.pop_front() {
                    journal.removed(&oldest);
                    s.note_sent(&oldest);
                    self.counters.dropped_queue_full += 1;
                }
            }
            s.journal = Some(Box::new(journal));
            for (filter, sub) in &subs {
                if s.subscriptions.insert(filter.clone(), *sub).is_none() {
                    self.subscription_bytes += subscription_cost(filter);
                }
            }
            self.sessions.insert(sid, Box::new(s));
            self.by_client.insert(client_id, sid);
            persist.sessions.insert(sid);
            for (filter, sub) in subs {
                match topic::parse_shared(&filter) {
                    Ok(shared) => self.index_subscription(sid, &filter, shared, sub),
                    Err(_) => {
                        tracing::warn!(client_id = %stored.client_id, filter = %filter, "stored subscription with an invalid filter skipped");
                    }
                }
            }
            restored += 1;
        }
        self.counters.session_store_errors += std::mem::take(&mut persist.errors);
        self.persist = Some(persist);
        restored
    }

    /// Takes every journaled change as owned store writes, for the caller to apply with the
    /// lock released ([`SessionWrites::apply`]). Empty when no store is attached.
    pub fn take_session_writes(&mut self, now: Instant) -> SessionWrites {
        let Some(p) = &mut self.persist else {
            return SessionWrites::default();
        };
        let unix_now = session_persist::unix_ms_now();
        let mut writes = SessionWrites {
            removals: std::mem::take(&mut p.removed),
            clients: Vec::new(),
        };
        for sid in &p.sessions {
            if let Some(s) = self.sessions.get_mut(sid) {
                if let Some(w) = session_persist::take_writes(s, now, unix_now) {
                    writes.clients.push(w);
                }
            }
        }
        writes
    }

    /// Counts session-store failures seen outside the lock (already logged).
    pub fn count_session_store_errors(&mut self, n: u64) {
        self.counters.session_store_errors += n;
    }

    /// Makes session `sid`'s journal match whether it is persisted (a store is attached and its
    /// expiry is above zero), and marks its metadata for rewriting.
    fn sync_journal(&mut self, sid: SessionId) {
        let Some(p) = &mut self.persist else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let wanted = !s.expiry.is_zero();
        match (s.journal.is_some(), wanted) {
            (true, true) => s.note_meta_changed(),
            (false, true) => {
                let journal = Journal::for_session(s);
                s.journal = Some(Box::new(journal));
                p.adopt(sid, &s.client_id);
            }
            (true, false) => {
                s.journal = None;
                p.forget(sid, &s.client_id);
            }
            (false, false) => {}
        }
    }

    /// Adds or replaces subscriptions; returns one SUBACK reason per filter and queues the
    /// retained messages the retain-handling options ask for.
    pub fn subscribe(
        &mut self,
        sid: SessionId,
        filters: &[(ByteStr, SubscriptionOptions)],
        subscription_id: Option<NonZeroU32>,
        now: Instant,
    ) -> Vec<u8> {
        let mut reasons = Vec::with_capacity(filters.len());
        for (filter, options) in filters {
            let reason = self.subscribe_one(sid, filter, *options, subscription_id, now);
            reasons.push(reason);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.note_meta_changed();
        }
        reasons
    }

    /// True when `filter` (plain or shared) is well-formed and within `max_topic_len` and
    /// `max_topic_levels`.
    pub fn valid_filter(&self, filter: &str) -> bool {
        let real_filter = match topic::parse_shared(filter) {
            Ok(Some(shared)) => shared.filter,
            Ok(None) if topic::validate_topic_filter(filter).is_ok() => filter,
            _ => return false,
        };
        topic::topic_levels(real_filter) <= self.cfg.max_topic_levels
            && filter.len() <= self.cfg.max_topic_len
    }

    fn subscribe_one(
        &mut self,
        sid: SessionId,
        filter: &ByteStr,
        options: SubscriptionOptions,
        subscription_id: Option<NonZeroU32>,
        now: Instant,
    ) -> u8 {
        if !self.valid_filter(filter) {
            return reason::TOPIC_FILTER_INVALID;
        }
        let Ok(shared) = topic::parse_shared(filter) else {
            return reason::TOPIC_FILTER_INVALID;
        };
        if shared.is_some() && options.no_local {
            return reason::TOPIC_FILTER_INVALID;
        }
        let sub = Subscription {
            options,
            id: subscription_id,
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return reason::UNSPECIFIED_ERROR;
        };
        let cost = subscription_cost(filter);
        if !s.subscriptions.contains_key(filter.as_str())
            && self.subscription_bytes + cost > self.cfg.max_subscription_bytes_total
        {
            tracing::warn!(client_id = %super::short(&s.client_id), filter = %super::short(filter), total = self.subscription_bytes, max = self.cfg.max_subscription_bytes_total, "subscribe refused: max_subscription_bytes_total reached");
            return reason::QUOTA_EXCEEDED;
        }
        // An owned copy: the filter came from a read buffer it would otherwise pin.
        let existed = s
            .subscriptions
            .insert(ByteStr::from(filter.as_str()), sub)
            .is_some();
        if !existed {
            self.subscription_bytes += cost;
        }
        let is_shared = shared.is_some();
        self.index_subscription(sid, filter, shared, sub);
        if !is_shared {
            let send_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send_retained {
                self.queue_retained(sid, filter, sub, now);
            }
        }
        options.qos as u8
    }

    /// Adds (or updates) `sid`'s subscription in the plain or shared index.
    fn index_subscription(
        &mut self,
        sid: SessionId,
        filter: &str,
        shared: Option<SharedFilter<'_>>,
        sub: Subscription,
    ) {
        match shared {
            Some(SharedFilter { group, filter: f }) => {
                let key = ByteStr::from(group);
                if let Some(g) = self.shared.get_mut(f, &key) {
                    if let Some(m) = g.members.iter_mut().find(|(m, _)| *m == sid) {
                        m.1 = sub;
                    } else {
                        g.members.push((sid, sub));
                    }
                } else {
                    let g = SharedGroup {
                        key: Arc::new(SharedKey {
                            filter: ByteStr::from(f),
                            group: key.clone(),
                        }),
                        members: vec![(sid, sub)],
                        next: Cell::new(0),
                    };
                    self.shared.insert(f, key, g);
                }
            }
            None => {
                self.subs.insert(filter, sid, sub);
            }
        }
    }

    fn queue_retained(&mut self, sid: SessionId, filter: &str, sub: Subscription, now: Instant) {
        let Router {
            cfg,
            sessions,
            retained,
            wake,
            counters,
            ..
        } = self;
        let Some(s) = sessions.get_mut(&sid) else {
            return;
        };
        let mut matching: Vec<&Arc<Message>> = retained
            .iter()
            .filter(|(t, m)| topic::matches(filter, t) && !m.is_expired(now))
            .map(|(_, m)| m)
            .collect();
        matching.sort_by(|a, b| a.topic.cmp(&b.topic));
        for msg in matching {
            let delivery = Delivery {
                message: msg.clone(),
                qos: msg.qos.min(sub.options.qos),
                retain: true,
                subscription_id: sub.id,
                seq: 0,
                shared: None,
            };
            // Retained messages already own their memory: reuse them for offline sessions.
            enqueue(
                cfg,
                counters,
                wake,
                s,
                delivery,
                &mut Some(msg.clone()),
                now,
            );
        }
    }

    /// Removes subscriptions; one UNSUBACK reason per filter.
    pub fn unsubscribe(&mut self, sid: SessionId, filters: &[ByteStr]) -> Vec<u8> {
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in filters {
            let valid = filter.len() <= self.cfg.max_topic_len
                && match topic::parse_shared(filter) {
                    Ok(Some(shared)) => {
                        topic::topic_levels(shared.filter) <= self.cfg.max_topic_levels
                    }
                    Ok(None) => topic::topic_levels(filter) <= self.cfg.max_topic_levels,
                    Err(_) => false,
                };
            if !valid {
                reasons.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let had = self
                .sessions
                .get_mut(&sid)
                .is_some_and(|s| s.subscriptions.remove(filter).is_some());
            if had {
                self.subscription_bytes = self
                    .subscription_bytes
                    .saturating_sub(subscription_cost(filter));
                self.remove_subscription_index(sid, filter);
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.note_meta_changed();
                }
                if let Ok(Some(sf)) = topic::parse_shared(filter) {
                    // What waits in the queue for this group goes to the members that stay.
                    let has_others = self
                        .shared
                        .get(sf.filter, &ByteStr::from(sf.group))
                        .is_some_and(|g| !g.members.is_empty());
                    if has_others {
                        let taken = self.take_shared_queued(sid, |k| {
                            k.filter.as_str() == sf.filter && k.group.as_str() == sf.group
                        });
                        let left = self.redistribute(sid, taken, false, Instant::now());
                        self.counters.dropped_session_discarded += left.len() as u64;
                    }
                }
                reasons.push(reason::SUCCESS);
            } else {
                reasons.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        reasons
    }

    /// Moves up to `budget` items from the session's queue (and, after a reconnect, its inflight
    /// window) into `out`. Returns true when more is ready to send right now.
    pub fn take_outgoing(
        &mut self,
        sid: SessionId,
        conn_id: u64,
        budget: usize,
        now: Instant,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        match &s.conn {
            Some(c) if c.conn_id == conn_id => {
                c.wake_pending
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            _ => return false,
        }
        if s.resend_pending {
            s.resend_pending = false;
            for f in &s.inflight {
                out.push(match f.state {
                    InflightState::AwaitPubAck | InflightState::AwaitPubRec => Outgoing::Publish {
                        delivery: f.delivery.clone(),
                        packet_id: f.packet_id,
                        dup: true,
                    },
                    InflightState::AwaitPubComp => Outgoing::PubRel(f.packet_id),
                });
            }
        }
        while out.len() < budget {
            let Some(head) = s.mqueue.front() else {
                return false;
            };
            if head.message.is_expired(now) {
                if let Some(expired) = s.mqueue.pop_front() {
                    s.note_removed(&expired);
                }
                self.counters.dropped_expired += 1;
                continue;
            }
            if head.qos == QoS::AtMostOnce {
                if let Some(delivery) = s.mqueue.pop_front() {
                    s.note_sent(&delivery);
                    out.push(Outgoing::Publish {
                        delivery,
                        packet_id: 0,
                        dup: false,
                    });
                    self.counters.deliveries_sent += 1;
                }
                continue;
            }
            if s.inflight.len() >= s.window {
                return false;
            }
            let packet_id = s.allocate_packet_id();
            let Some(delivery) = s.mqueue.pop_front() else {
                return false;
            };
            let state = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitPubAck
            } else {
                InflightState::AwaitPubRec
            };
            s.note_changed(&delivery);
            s.inflight.push_back(Inflight {
                packet_id,
                state,
                delivery: delivery.clone(),
            });
            out.push(Outgoing::Publish {
                delivery,
                packet_id,
                dup: false,
            });
            self.counters.deliveries_sent += 1;
        }
        !s.mqueue.is_empty()
    }

    /// PUBACK from the client. False when no QoS 1 message waits on that packet id.
    pub fn puback(&mut self, sid: SessionId, packet_id: u16) -> bool {
        self.finish_inflight(sid, packet_id, InflightState::AwaitPubAck)
    }

    /// PUBCOMP from the client. False when no PUBREL waits on that packet id.
    pub fn pubcomp(&mut self, sid: SessionId, packet_id: u16) -> bool {
        self.finish_inflight(sid, packet_id, InflightState::AwaitPubComp)
    }

    fn finish_inflight(&mut self, sid: SessionId, packet_id: u16, state: InflightState) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let Some(pos) = s
            .inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)
        else {
            return false;
        };
        if let Some(done) = s.inflight.remove(pos) {
            s.note_removed(&done.delivery);
        }
        true
    }

    /// PUBREC from the client: the message is delivered, a PUBREL follows. An error reason ends
    /// the exchange. False when no QoS 2 message waits on that packet id.
    pub fn pubrec(&mut self, sid: SessionId, packet_id: u16, reason_code: u8) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let Some(pos) = s.inflight.iter().position(|f| {
            f.packet_id == packet_id
                && matches!(
                    f.state,
                    InflightState::AwaitPubRec | InflightState::AwaitPubComp
                )
        }) else {
            return false;
        };
        if reason_code >= 0x80 {
            if let Some(done) = s.inflight.remove(pos) {
                s.note_removed(&done.delivery);
            }
        } else if let Some(f) = s.inflight.get_mut(pos) {
            f.state = InflightState::AwaitPubComp;
            if let Some(j) = &mut s.journal {
                j.changed(&f.delivery);
            }
        }
        true
    }

    /// An inbound QoS 2 PUBLISH with `packet_id` arrived.
    pub fn receive_qos2(
        &mut self,
        sid: SessionId,
        packet_id: u16,
        max_awaiting: usize,
    ) -> Qos2Receive {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Qos2Receive::Full;
        };
        if s.awaiting_rel.contains(&packet_id) {
            return Qos2Receive::Duplicate;
        }
        if s.awaiting_rel.len() >= max_awaiting {
            return Qos2Receive::Full;
        }
        s.awaiting_rel.insert(packet_id);
        // Persisted with the session: after a restart the resend is still a duplicate.
        s.note_meta_changed();
        Qos2Receive::New
    }

    /// PUBREL from the client. False when the packet id was not awaiting release.
    pub fn pubrel(&mut self, sid: SessionId, packet_id: u16) -> bool {
        self.sessions.get_mut(&sid).is_some_and(|s| {
            let found = s.awaiting_rel.remove(&packet_id);
            if found {
                s.note_meta_changed();
            }
            found
        })
    }

    /// The filters `sid` is subscribed to (shared ones as `$share/g/f`).
    pub fn subscription_filters(&self, sid: SessionId) -> Vec<ByteStr> {
        self.sessions
            .get(&sid)
            .map(|s| s.subscriptions.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes every session holds queued and in flight, summed (`max_queued_bytes_total`).
    pub fn held_bytes_total(&self) -> usize {
        self.held_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when a session (connected or not) has this client id.
    pub fn has_client(&self, client_id: &str) -> bool {
        self.by_client.contains_key(client_id)
    }

    /// How many subscriptions `sid` holds (for `mqtt.max_subscriptions`).
    pub fn subscription_count(&self, sid: SessionId) -> usize {
        self.sessions.get(&sid).map_or(0, |s| s.subscriptions.len())
    }

    /// Whether `sid` already holds `filter` (subscribing again only replaces its options).
    pub fn has_subscription(&self, sid: SessionId, filter: &str) -> bool {
        self.sessions
            .get(&sid)
            .is_some_and(|s| s.subscriptions.contains_key(filter))
    }

    /// The session's subscriptions (for the API).
    pub fn subscriptions_of(&self, client_id: &str) -> Vec<(String, SubscriptionOptions)> {
        let Some(s) = self
            .by_client
            .get(client_id)
            .and_then(|sid| self.sessions.get(sid))
        else {
            return Vec::new();
        };
        let mut v: Vec<_> = s
            .subscriptions
            .iter()
            .map(|(f, sub)| (f.to_string(), sub.options))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Closes every connection with `reason` (shutdown).
    pub fn close_all(&mut self, reason_code: u8) {
        for s in self.sessions.values() {
            if let Some(c) = &s.conn {
                c.close_with(reason_code);
            }
        }
    }
}

impl Delivery {
    /// The delivery of a live publish through subscription `sub`: the lower QoS, the retain
    /// flag only with retain-as-published, and the subscription's identifier.
    fn live(msg: &Arc<Message>, sub: &Subscription) -> Delivery {
        Delivery {
            message: msg.clone(),
            qos: msg.qos.min(sub.options.qos),
            retain: msg.retain && sub.options.retain_as_published,
            subscription_id: sub.id,
            seq: 0,
            shared: None,
        }
    }
}

/// Queues a delivery on a session, dropping the oldest when the queue is full (EMQX). Returns
/// false when the delivery was not queued at all.
fn enqueue(
    cfg: &RouterConfig,
    counters: &mut RouterCounters,
    wake: &mut Vec<Arc<ConnControl>>,
    s: &mut Session,
    delivery: Delivery,
    offline_copy: &mut Option<Arc<Message>>,
    now: Instant,
) -> bool {
    if s.conn.is_none() && delivery.qos == QoS::AtMostOnce && !cfg.mqueue_store_qos0 {
        counters.dropped_qos0_offline += 1;
        return false;
    }
    let mut delivery = delivery;
    if s.conn.is_none() {
        // Kept until the client returns: do not pin the publisher's read buffer meanwhile.
        let copy = offline_copy.get_or_insert_with(|| Arc::new(delivery.message.detached()));
        delivery.message = copy.clone();
    }
    let incoming = delivery.held_bytes();
    let mut over_bytes = false;
    while s.held_bytes + incoming > cfg.max_mqueue_bytes && !s.mqueue.is_empty() {
        // Bytes first: a few large messages must not pin more than the session may hold.
        if let Some(oldest) = s.mqueue.pop_front() {
            s.note_removed(&oldest);
            counters.dropped_queue_full += 1;
            s.dropped_since_log += 1;
            over_bytes = true;
        }
    }
    if s.held_bytes + incoming > cfg.max_mqueue_bytes {
        // Even alone it does not fit (its inflight window holds the rest): not queued.
        counters.dropped_queue_full += 1;
        s.dropped_since_log += 1;
        return false;
    }
    let total = s.held_total.load(std::sync::atomic::Ordering::Relaxed);
    if total + incoming > cfg.max_queued_bytes_total {
        // The sessions together hold all the broker may: this one gets nothing more until
        // they drain (a slow or offline subscriber cannot take the board's memory).
        counters.dropped_queue_full += 1;
        s.dropped_since_log += 1;
        if let Some(dropped) = s.take_drop_log(now) {
            tracing::warn!(
                client_id = %s.client_id,
                dropped,
                held_total = total,
                max_queued_bytes_total = cfg.max_queued_bytes_total,
                "dropped: every session together holds max_queued_bytes_total"
            );
        }
        return false;
    }
    if over_bytes {
        if let Some(dropped) = s.take_drop_log(now) {
            tracing::warn!(
                client_id = %s.client_id,
                dropped,
                max_mqueue_bytes = cfg.max_mqueue_bytes,
                "dropped: mqueue full (bytes)"
            );
        }
    }
    if s.mqueue.len() >= cfg.max_mqueue_len {
        if let Some(oldest) = s.mqueue.pop_front() {
            s.note_removed(&oldest);
        }
        counters.dropped_queue_full += 1;
        s.dropped_since_log += 1;
        if let Some(dropped) = s.take_drop_log(now) {
            tracing::warn!(
                client_id = %s.client_id,
                dropped,
                max_mqueue_len = cfg.max_mqueue_len,
                "dropped: mqueue full"
            );
        }
    }
    s.push_delivery(delivery);
    counters.deliveries_queued += 1;
    let limit = cfg.force_shutdown_mqueue_len;
    let heap_limit = cfg.force_shutdown_heap_size;
    if let Some(c) = s.conn.as_ref().filter(|c| !c.is_closing()) {
        if limit > 0 && s.mqueue.len() >= limit {
            tracing::warn!(client_id = %s.client_id, queued = s.mqueue.len(), max_mqueue_len = limit, "force_shutdown: mqueue length reached");
            c.close_with(reason::QUOTA_EXCEEDED);
        } else if heap_limit > 0 && s.held_bytes >= heap_limit {
            tracing::warn!(client_id = %s.client_id, held_bytes = s.held_bytes, max_heap_size = heap_limit, queued = s.mqueue.len(), inflight = s.inflight.len(), "force_shutdown: max_heap_size reached");
            c.close_with(reason::QUOTA_EXCEEDED);
        }
    }
    if let Some(c) = &s.conn {
        if c.should_wake() {
            wake.push(c.clone());
        }
    }
    true
}

/// Picks the member of a shared group that gets `msg`: connected members only; when none is
/// connected, a member whose session persists (so the message waits in its queue rather than
/// being lost).
fn pick_member(
    cfg: &RouterConfig,
    sessions: &SessionMap<Box<Session>>,
    group: &SharedGroup,
    msg: &Message,
    rng: &mut u64,
) -> Option<(SessionId, Subscription)> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let connected = |sid: &SessionId| sessions.get(sid).is_some_and(|s| s.is_connected());
    let start = match cfg.shared_strategy {
        SharedStrategy::RoundRobin => {
            let i = group.next.get() % n;
            group.next.set(i + 1);
            i
        }
        SharedStrategy::Random => {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng % n as u64) as usize
        }
        SharedStrategy::HashClientId => {
            let publisher = msg
                .publisher
                .and_then(|p| sessions.get(&p))
                .map_or("", |s| s.client_id.as_str());
            (fnv1a(publisher.as_bytes()) % n as u64) as usize
        }
    };
    let chosen = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| connected(&group.members[i].0))
        .unwrap_or(start);
    if cfg.shared_strategy == SharedStrategy::RoundRobin {
        // Continue after the member that got it, so skipping an offline one does not give
        // its share to its neighbour.
        group.next.set(chosen + 1);
    }
    group.members.get(chosen).copied()
}

/// A member of `group` other than `not`: a connected one first, else (unless
/// `connected_only`) any whose session exists.
fn other_member(
    sessions: &SessionMap<Box<Session>>,
    group: &SharedGroup,
    not: SessionId,
    connected_only: bool,
) -> Option<(SessionId, Subscription)> {
    let others = || group.members.iter().filter(|(sid, _)| *sid != not);
    others()
        .find(|(sid, _)| sessions.get(sid).is_some_and(|s| s.is_connected()))
        .or_else(|| {
            (!connected_only)
                .then(|| others().find(|(sid, _)| sessions.contains_key(sid)))
                .flatten()
        })
        .copied()
}

/// What one subscription counts against `max_subscription_bytes_total`: its filter and the
/// map, trie and store entries that carry it.
pub fn subscription_cost(filter: &str) -> usize {
    filter.len() + 64
}

/// What a retained message counts against `max_retained_bytes`.
fn retained_size(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

mod inspect;
pub use inspect::{ClientRow, RetainedRow, Rows, SubscriptionRow};
