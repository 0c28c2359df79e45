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
//!
//! Rooms: this file holds the types, routing (`publish`) and queueing (`enqueue`);
//! `backpressure` what a full queue does to its publishers, `sessions` the session lifecycle
//! and its store, `subscriptions` the indexes and their
//! caps, `shared` the shared-subscription groups, `retained` the retained messages,
//! `inflight` the outbound window and the QoS handshakes, `inspect` the operator views.
//! Each has its tests beside it (`*_tests.rs`, helpers in `test_support`).

use super::message::{ClientId, Delivery, Message, SessionId, SessionMap, SharedKey};
use super::session::{
    ConnControl, Inflight, InflightState, Owner, PendingWill, Session, Subscription,
};
use super::session_persist::{self, Journal, Persistence, Restored, SessionWrites};
use crate::config::{MqueueFull, OwnerMismatch, SharedStrategy};
use holdfast_mqtt::topic::{self, SharedFilter};
use holdfast_mqtt::trie::SubscriptionTrie;
use holdfast_mqtt::{reason, ByteStr, PacketId, ProtocolVersion, QoS, SubscriptionOptions};
use holdfast_storage::kv::{RetainedStore, SessionStore};
use std::cell::Cell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The router's limits and policies, taken from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Per-session queue cap; what a full queue does is `mqueue_full`'s.
    pub max_mqueue_len: usize,
    /// Backpressure (hold the publishers) or drop the oldest when a connected session's queue
    /// is full and a QoS 1/2 message comes for it.
    pub mqueue_full: MqueueFull,
    /// How long a full queue may hold publishers back before its client is disconnected.
    pub slow_subscriber_timeout: Duration,
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
    /// Times a publish was held back because a subscriber's queue was full
    /// (`mqueue_full = "backpressure"`).
    pub publishers_held_back: u64,
    /// Subscribers disconnected because their full queue held publishers back longer than
    /// `slow_subscriber_timeout`.
    pub slow_subscribers_disconnected: u64,
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
    pub client_id: ClientId,
    /// Protocol spoken.
    pub protocol: ProtocolVersion,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// How long the session outlives the connection.
    pub session_expiry: Duration,
    /// What the connection's outbound inflight window may grow to (it starts at
    /// `session::INITIAL_WINDOW`).
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
        packet_id: PacketId,
        /// Resent after a reconnect.
        dup: bool,
    },
    /// A PUBREL resent after a reconnect.
    PubRel(PacketId),
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
    by_client: HashMap<ClientId, SessionId>,
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
            next_session_id: SessionId::FIRST,
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
        let mut queue = Queuer {
            cfg,
            counters,
            wake,
            offline_copy: None,
            // Only a client's message can be held back at its source.
            holdable: msg.publisher.is_some(),
            now,
            full: Vec::new(),
        };
        // Deliveries to sessions with more than one subscription, folded per session.
        let mut overlapping: Vec<(SessionId, Delivery)> = Vec::new();
        subs.for_each_match(&msg.topic, |_, sid, sub| {
            if sub.options.no_local && msg.publisher == Some(*sid) {
                return;
            }
            if let Some(s) = sessions.get_mut(sid) {
                matched += 1;
                let delivery = Delivery::live(&msg, sub);
                if s.subscriptions.len() > 1 {
                    // It may match this message more than once: folded below.
                    overlapping.push((*sid, delivery));
                    return;
                }
                queue.deliver(*sid, s, delivery);
            }
        });
        if !overlapping.is_empty() {
            fold_overlapping(&mut overlapping);
            for (sid, delivery) in overlapping {
                if let Some(s) = sessions.get_mut(&sid) {
                    queue.deliver(sid, s, delivery);
                }
            }
        }
        shared.for_each_match(&msg.topic, |_, _, group| {
            let Some((sid, sub)) = pick_member(queue.cfg, sessions, group, &msg, rng) else {
                return;
            };
            if let Some(s) = sessions.get_mut(&sid) {
                matched += 1;
                // Retained messages are never sent to shared subscriptions on subscribe; a
                // live message keeps retain-as-published semantics like any other.
                let mut delivery = Delivery::live(&msg, &sub);
                delivery.shared = Some(group.key.clone());
                queue.deliver(sid, s, delivery);
            }
        });
        let full = queue.full;
        if !full.is_empty() {
            hold_back_publisher(sessions, counters, msg.publisher, &full, now);
        }
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

    /// Bytes every session holds queued and in flight, summed (`max_queued_bytes_total`).
    pub fn held_bytes_total(&self) -> usize {
        self.held_total.load(std::sync::atomic::Ordering::Relaxed)
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
            more_subscription_ids: None,
            seq: 0,
            shared: None,
        }
    }
}

/// MQTT 5 §3.3.4: a client whose overlapping subscriptions match one message gets one copy, at
/// the highest QoS they grant, carrying every matching subscription identifier. `matches` are
/// the deliveries of one message to sessions with more than one subscription, in matching
/// order; each session's are folded into one, in place (the order between sessions does not
/// matter). Shared subscriptions are matched apart and never fold.
fn fold_overlapping(matches: &mut Vec<(SessionId, Delivery)>) {
    matches.sort_by_key(|(sid, _)| *sid);
    matches.dedup_by(|(sid, later), (kept_sid, kept)| {
        if sid != kept_sid {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain |= later.retain;
        if let Some(id) = later.subscription_id {
            if kept.subscription_id.is_none() {
                kept.subscription_id = Some(id);
            } else {
                let mut more = kept
                    .more_subscription_ids
                    .as_deref()
                    .cloned()
                    .unwrap_or_default();
                more.push(id);
                kept.more_subscription_ids = Some(Arc::new(more));
            }
        }
        true
    });
}

/// Queues one message's deliveries (see [`enqueue`]) and notes the sessions whose full queue
/// took it over its limit, whose publisher must then be held back.
struct Queuer<'a> {
    cfg: &'a RouterConfig,
    counters: &'a mut RouterCounters,
    wake: &'a mut Vec<Arc<ConnControl>>,
    /// One owned copy shared by every offline session that queues the message.
    offline_copy: Option<Arc<Message>>,
    /// Whether the message has a publisher to hold back.
    holdable: bool,
    now: Instant,
    /// Sessions the message went to over their limit.
    full: Vec<SessionId>,
}

impl Queuer<'_> {
    fn deliver(&mut self, sid: SessionId, s: &mut Session, delivery: Delivery) {
        let queued = enqueue(
            self.cfg,
            self.counters,
            self.wake,
            s,
            delivery,
            &mut self.offline_copy,
            self.holdable,
            self.now,
        );
        if queued == Queued::OverLimit {
            self.full.push(sid);
        }
    }
}

/// One delivery dropped for a full queue: counted broker-wide, and for the session's next
/// "dropped" log line.
fn count_dropped(counters: &mut RouterCounters, s: &mut Session) {
    counters.dropped_queue_full += 1;
    s.dropped_since_log += 1;
}

/// What [`enqueue`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Queued within the session's limits (possibly after dropping its oldest).
    Yes,
    /// Queued over the session's full limits (`mqueue_full = "backpressure"`): its publisher
    /// must be held back until the queue has room.
    OverLimit,
    /// Not queued (dropped, counted).
    No,
}

/// Queues a delivery on a session. When the queue is full: for a connected client under
/// `mqueue_full = "backpressure"` a QoS 1/2 delivery that can be held back at its source is
/// queued over the limit (up to twice it, or one message per held publisher past it, all
/// sessions together within `max_queued_bytes_total`) and the caller holds the publisher back,
/// and a QoS 0 one is dropped; otherwise the oldest queued message is dropped (EMQX). Every
/// drop is counted.
#[allow(clippy::too_many_arguments)]
fn enqueue(
    cfg: &RouterConfig,
    counters: &mut RouterCounters,
    wake: &mut Vec<Arc<ConnControl>>,
    s: &mut Session,
    delivery: Delivery,
    offline_copy: &mut Option<Arc<Message>>,
    holdable: bool,
    now: Instant,
) -> Queued {
    if s.conn.is_none() && delivery.qos == QoS::AtMostOnce && !cfg.mqueue_store_qos0 {
        counters.dropped_qos0_offline += 1;
        return Queued::No;
    }
    let mut delivery = delivery;
    if s.conn.is_none() {
        // Kept until the client returns: do not pin the publisher's read buffer meanwhile.
        let copy = offline_copy.get_or_insert_with(|| Arc::new(delivery.message.detached()));
        delivery.message = copy.clone();
    }
    let incoming = delivery.held_bytes();
    let full =
        s.mqueue.len() >= cfg.max_mqueue_len || s.held_bytes + incoming > cfg.max_mqueue_bytes;
    let live = s.conn.as_ref().is_some_and(|c| !c.is_closing());
    let mut over_limit = false;
    if full && live && !s.lossy && cfg.mqueue_full == MqueueFull::Backpressure {
        if delivery.qos == QoS::AtMostOnce {
            // QoS 0 promises nothing: it does not take the room of an acknowledged message.
            count_dropped(counters, s);
            if let Some(dropped) = s.take_drop_log(now) {
                tracing::warn!(client_id = %s.client_id, dropped, "dropped: QoS 0 message for a full mqueue");
            }
            return Queued::No;
        }
        // Room past the limits: as much again, or one message per publisher held back (each
        // held one stops after the message that found the queue full, so many publishers
        // sending one message each at once, 10,000 LwM2M endpoints answering an observe, all
        // fit); a publisher that goes on regardless is still capped.
        let held = s.congestion.as_ref().map_or(0, |c| c.publishers.len()) + 1;
        let len_cap = cfg
            .max_mqueue_len
            .saturating_add(cfg.max_mqueue_len.max(held));
        let bytes_cap = cfg
            .max_mqueue_bytes
            .saturating_add(cfg.max_mqueue_bytes.max(held.saturating_mul(incoming)));
        over_limit = holdable
            && s.mqueue.len() < len_cap
            && s.held_bytes.saturating_add(incoming) <= bytes_cap;
    }
    let mut over_bytes = false;
    while !over_limit && s.held_bytes + incoming > cfg.max_mqueue_bytes && !s.mqueue.is_empty() {
        // Bytes first: a few large messages must not pin more than the session may hold.
        if let Some(oldest) = s.mqueue.pop_front() {
            s.note_removed(&oldest);
            count_dropped(counters, s);
            over_bytes = true;
        }
    }
    if !over_limit && s.held_bytes + incoming > cfg.max_mqueue_bytes {
        // Even alone it does not fit (its inflight window holds the rest): not queued.
        count_dropped(counters, s);
        return Queued::No;
    }
    let total = s.held_total.load(std::sync::atomic::Ordering::Relaxed);
    if total + incoming > cfg.max_queued_bytes_total {
        // The sessions together hold all the broker may: this one gets nothing more until
        // they drain (a slow or offline subscriber cannot take the board's memory).
        count_dropped(counters, s);
        if let Some(dropped) = s.take_drop_log(now) {
            tracing::warn!(
                client_id = %s.client_id,
                dropped,
                held_total = total,
                max_queued_bytes_total = cfg.max_queued_bytes_total,
                "dropped: every session together holds max_queued_bytes_total"
            );
        }
        return Queued::No;
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
    if !over_limit && s.mqueue.len() >= cfg.max_mqueue_len {
        if let Some(oldest) = s.mqueue.pop_front() {
            s.note_removed(&oldest);
        }
        count_dropped(counters, s);
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
    if over_limit {
        Queued::OverLimit
    } else {
        Queued::Yes
    }
}

mod backpressure;
mod inflight;
mod inspect;
mod retained;
mod sessions;
mod shared;
#[cfg(test)]
pub(crate) mod test_support;
use backpressure::hold_back_publisher;
use shared::{other_member, pick_member};
mod subscriptions;
pub use inspect::{search_clients, ClientKey, ClientRow, RetainedRow, Rows, SubscriptionRow};
pub use subscriptions::subscription_cost;
