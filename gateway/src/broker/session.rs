//! One MQTT session: subscriptions, the outbound message queue, the outbound inflight window and
//! the inbound QoS 2 packet ids awaiting PUBREL.
//!
//! Owns the per-client state that outlives a connection (for clean-session-false clients). It is
//! plain data driven by the router under its lock: it never does IO, never blocks and never
//! grows without bound (`max_mqueue_len`, the inflight window and `max_awaiting_rel` cap it).

use super::message::{ClientId, Delivery, SessionId};
use super::session_persist::Journal;
use atomic_waker::AtomicWaker;
use holdfast_mqtt::small_map::SmallMap;
use holdfast_mqtt::{reason, ByteStr, PacketId, ProtocolVersion, QoS, SubscriptionOptions};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a connection's inflight window starts: small, so a device that acknowledges slowly
/// (or keeps a small table of QoS 2 ids) never has hundreds of messages pushed at it; it grows
/// from there for a client that keeps up.
pub const INITIAL_WINDOW: u16 = 32;

/// The broker's handle on the connection that currently serves a session.
///
/// The router wakes the connection when deliveries are queued (`wake_pending` + the waker), and
/// closes it (takeover, kick, shutdown) with a reason code for the v5 DISCONNECT. A single
/// `AtomicWaker` instead of a `Notify` and a cancellation token keeps an idle connection small.
#[derive(Debug)]
pub struct ConnControl {
    /// Unique per connection; lets the router ignore a late call from a replaced connection.
    pub conn_id: u64,
    /// The connection task's waker.
    waker: AtomicWaker,
    /// Set when deliveries were queued and the connection has not drained since, so a fan-out of
    /// thousands of messages wakes it once.
    pub wake_pending: AtomicBool,
    /// Set to ask the connection to close.
    closing: AtomicBool,
    /// v5 reason code to send in the server DISCONNECT when closing.
    pub close_reason: AtomicU8,
    /// Set with a takeover by a clean-start connection: the session was discarded, not resumed.
    pub discarded: AtomicBool,
    /// Set when it is closed because its full queue held publishers back too long.
    slow_subscriber: AtomicBool,
    /// Set while a subscriber's full queue holds this client's publishes back
    /// (`mqtt.mqueue_full = "backpressure"`): the connection applies no PUBLISH until the router
    /// clears it and wakes the connection (the queue has room, or its client is gone).
    pub held_back: AtomicBool,
    /// Who is on the other end, set once at CONNECT, for `holdfast ctl clients`. Boxed: the
    /// router's own tests never set it, and an idle connection stays small.
    meta: OnceLock<Box<ConnMeta>>,
}

/// What the operator sees about a connection (`holdfast ctl clients`).
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The client's address.
    pub peer: SocketAddr,
    /// The user name it connected with (shared with the connection).
    pub username: Option<Arc<str>>,
    /// When CONNECT was accepted, in seconds since the Unix epoch.
    pub connected_at: u64,
    /// The password file verified `username` (a reload that removes the user disconnects it).
    pub password_user: bool,
    /// What the client speaks: `mqtt`, or the label of an in-process client
    /// ([`crate::broker::client::Protocol`]).
    pub proto_name: &'static str,
}

impl ConnControl {
    /// A fresh handle for connection `conn_id`.
    pub fn new(conn_id: u64) -> Arc<ConnControl> {
        Arc::new(ConnControl {
            conn_id,
            waker: AtomicWaker::new(),
            wake_pending: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            close_reason: AtomicU8::new(0),
            discarded: AtomicBool::new(false),
            slow_subscriber: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            meta: OnceLock::new(),
        })
    }

    /// Records who is on the other end (once; later calls are ignored).
    pub fn set_meta(&self, meta: ConnMeta) {
        let _ = self.meta.set(Box::new(meta));
    }

    /// Who is on the other end, once CONNECT was accepted.
    pub fn meta(&self) -> Option<&ConnMeta> {
        self.meta.get().map(|b| &**b)
    }

    /// Asks the connection to close, sending `reason` to v5 clients.
    pub fn close_with(&self, reason: u8) {
        self.close_reason.store(reason, Ordering::Relaxed);
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Closes a subscriber whose full queue held publishers back too long (v5: 0x97).
    pub fn close_slow_subscriber(&self) {
        self.slow_subscriber.store(true, Ordering::Relaxed);
        self.close_with(reason::QUOTA_EXCEEDED);
    }

    /// True while a full subscriber queue holds this client's publishes back.
    pub fn is_held_back(&self) -> bool {
        self.held_back.load(Ordering::Acquire)
    }

    /// True once `close_with` was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Why the connection was asked to close, as logs and `$SYS` name it.
    pub fn close_cause(&self) -> super::stats::DisconnectReason {
        use super::stats::DisconnectReason;
        match self.close_reason.load(Ordering::Relaxed) {
            reason::SESSION_TAKEN_OVER if self.discarded.load(Ordering::Relaxed) => {
                DisconnectReason::Discarded
            }
            reason::SESSION_TAKEN_OVER => DisconnectReason::Takeovered,
            reason::SERVER_SHUTTING_DOWN => DisconnectReason::Shutdown,
            reason::QUOTA_EXCEEDED if self.slow_subscriber.load(Ordering::Relaxed) => {
                DisconnectReason::SlowSubscriber
            }
            reason::QUOTA_EXCEEDED => DisconnectReason::ForceShutdown,
            _ => DisconnectReason::Kicked,
        }
    }

    /// True the first time after a drain; callers then [`ConnControl::wake`].
    pub fn should_wake(&self) -> bool {
        // Load first: in a fan-out burst the flag is already set, and a plain read keeps the
        // cache line shared with the connection's core instead of bouncing it.
        !self.wake_pending.load(Ordering::Acquire)
            && !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Wakes the connection task.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Registers the connection task's waker (before it checks the flags).
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

/// A subscription as the session remembers it (for resubscribe semantics and UNSUBSCRIBE).
#[derive(Debug, Clone, Copy)]
pub struct Subscription {
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<NonZeroU32>,
}

/// Where an outbound QoS 1/2 message is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP (the message itself is done).
    AwaitPubComp,
}

/// One entry of the outbound inflight window, in the order it was first sent.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet id it was sent with.
    pub packet_id: PacketId,
    /// Handshake state.
    pub state: InflightState,
    /// The delivery, kept to resend with DUP after a reconnect.
    pub delivery: Delivery,
}

/// The publishers a full queue holds back (`mqtt.mqueue_full = "backpressure"`), and since
/// when it has, for `mqtt.slow_subscriber_timeout`.
#[derive(Debug)]
pub struct Congestion {
    /// When the first publisher was held back.
    pub since: Instant,
    /// The held-back publishers' connections, by connection id (each once).
    pub publishers: HashMap<u64, Arc<ConnControl>>,
}

/// What a pending will counts as held: as a queued delivery of it would.
pub fn will_bytes(message: &super::message::Message) -> usize {
    message.topic.len() + message.payload.len() + super::message::DELIVERY_OVERHEAD
}

/// A will waiting for its delay (v5 will delay interval) or the end of the session.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// The will as a message.
    pub message: Arc<super::message::Message>,
    /// When to publish it.
    pub publish_at: Instant,
}

/// Session state. Fields are public to the router module only by convention: only the router
/// mutates a session.
#[derive(Debug)]
pub struct Session {
    /// Router-internal id.
    pub id: SessionId,
    /// MQTT client identifier.
    pub client_id: ClientId,
    /// Protocol of the last connection (deliveries are coded for it).
    pub protocol: ProtocolVersion,
    /// Subscriptions by filter (shared ones under their full `$share/g/f` string); a short
    /// list while there are a few (most clients have one or two), a hash map beyond.
    pub subscriptions: SmallMap<ByteStr, Subscription>,
    /// Messages waiting to be sent, oldest first. Capped at `max_mqueue_len`.
    pub mqueue: VecDeque<Delivery>,
    /// Outbound QoS 1/2 messages not yet acknowledged, in send order. Capped by the window.
    pub inflight: VecDeque<Inflight>,
    /// Inbound QoS 2 packet ids we answered PUBREC for and await PUBREL on.
    pub awaiting_rel: HashSet<PacketId>,
    /// Next outbound packet id to try.
    pub next_packet_id: PacketId,
    /// The connection serving this session, if connected.
    pub conn: Option<Arc<ConnControl>>,
    /// How long the session outlives its connection.
    pub expiry: Duration,
    /// When an offline session is discarded (`None` while connected).
    pub expires_at: Option<Instant>,
    /// Inflight window now: starts at [`INITIAL_WINDOW`] (or `window_max`, if smaller), doubles
    /// while the client acknowledges whole windows with more waiting, halves after a second in
    /// which a full window got no acknowledgement (see [`Session::set_window_max`]).
    pub window: u16,
    /// What the window may grow to: min(`mqtt.max_inflight`, the client's receive maximum).
    pub window_max: u16,
    /// Acknowledgements since the window last grew.
    acks_since_growth: u16,
    /// Any acknowledgement since the last router tick.
    acked_since_tick: bool,
    /// Set after a reconnect: inflight entries must be resent (DUP) before anything new.
    pub resend_pending: bool,
    /// A will waiting for its delay interval; set and taken only through
    /// [`Session::set_pending_will`] and [`Session::take_pending_will`], which count its bytes
    /// as held (`max_queued_bytes_total`).
    pending_will: Option<PendingWill>,
    /// Messages dropped because the queue was full, since the last log line about it.
    pub dropped_since_log: u64,
    /// When the last "mqueue full" line was logged (one line a second at most).
    pub last_drop_log: Option<Instant>,
    /// The `seq` the next queued delivery gets.
    pub next_seq: u64,
    /// Bytes of the messages queued or in flight for this session, as
    /// [`Delivery::held_bytes`] counts them (`mqtt.force_shutdown.max_heap_size`).
    pub held_bytes: usize,
    /// The identity that created it.
    pub owner: Owner,
    /// Publishers its full queue holds back; `None` while it has room (most of the time).
    pub congestion: Option<Box<Congestion>>,
    /// Disconnected as a slow subscriber and not caught up since: its full queue drops its
    /// oldest instead of holding publishers back again (a client that reconnects and stalls
    /// once more must not stall every publisher each time).
    pub lossy: bool,
    /// What changed since the last store flush, for a session persisted to the session store;
    /// `None` for sessions that end with their connection or when there is no store. Boxed: most
    /// sessions have none.
    pub journal: Option<Box<Journal>>,
    /// The router-wide sum of every session's `held_bytes` (`mqtt.max_queued_bytes_total`);
    /// kept equal by [`Session::add_held`] / [`Session::sub_held`] and by dropping a session.
    pub held_total: Arc<AtomicUsize>,
}

/// Who a session belongs to: the identity that created it. Only that identity may resume,
/// take over or discard it (see `mqtt.session_owner_mismatch`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Owner {
    /// Restored from a store written before sessions had owners: the first identity that
    /// resumes it claims it.
    #[default]
    Unclaimed,
    /// Created by a client whose user name nobody verified (anonymous access, the client-id
    /// allowlist, a JWT without `username_claim`): any such client with the id may resume it.
    Anonymous,
    /// Created by this verified user (password file, client certificate, JWT claim).
    User(ByteStr),
}

impl Owner {
    /// The owner for a connection with this verified user name (`None`: nobody verified it).
    pub fn of(verified_user: Option<&str>) -> Owner {
        verified_user.map_or(Owner::Anonymous, |u| Owner::User(ByteStr::from(u)))
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(id: SessionId, client_id: ClientId, protocol: ProtocolVersion) -> Session {
        Session {
            id,
            client_id,
            protocol,
            subscriptions: SmallMap::new(),
            mqueue: VecDeque::new(),
            inflight: VecDeque::new(),
            awaiting_rel: HashSet::new(),
            next_packet_id: PacketId::FIRST,
            conn: None,
            expiry: Duration::ZERO,
            expires_at: None,
            window: INITIAL_WINDOW,
            window_max: INITIAL_WINDOW,
            acks_since_growth: 0,
            acked_since_tick: false,
            resend_pending: false,
            pending_will: None,
            dropped_since_log: 0,
            last_drop_log: None,
            next_seq: 1,
            held_bytes: 0,
            owner: Owner::Unclaimed,
            congestion: None,
            lossy: false,
            journal: None,
            held_total: Arc::default(),
        }
    }

    /// True while a connection serves this session.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// A new connection's window: starts again at [`INITIAL_WINDOW`], at most `max`.
    pub fn set_window_max(&mut self, max: usize) {
        self.window_max = u16::try_from(max).unwrap_or(u16::MAX).max(1);
        self.window = INITIAL_WINDOW.min(self.window_max);
        self.acks_since_growth = 0;
        self.acked_since_tick = false;
    }

    /// True while the inflight window has no room for another QoS 1/2 message.
    pub fn window_full(&self) -> bool {
        self.inflight.len() >= usize::from(self.window)
    }

    /// One QoS 1/2 handshake completed: a client that acknowledged a whole window while more
    /// messages waited gets twice the window (up to `window_max`).
    pub fn note_acked(&mut self) {
        self.acks_since_growth = self.acks_since_growth.saturating_add(1);
        self.acked_since_tick = true;
        if self.window < self.window_max
            && self.acks_since_growth >= self.window
            && !self.mqueue.is_empty()
        {
            self.window = self.window.saturating_mul(2).min(self.window_max);
            self.acks_since_growth = 0;
        }
    }

    /// Once a second: a full window that got no acknowledgement at all since the last tick
    /// halves (not below [`INITIAL_WINDOW`]), so a client that stopped keeping up stops being
    /// sent more than it takes; an empty queue or window gives its capacity back.
    pub fn tick_window(&mut self) {
        if !self.acked_since_tick && self.window > INITIAL_WINDOW && self.window_full() {
            self.window = (self.window / 2).max(INITIAL_WINDOW.min(self.window_max));
            self.acks_since_growth = 0;
        }
        self.acked_since_tick = false;
        // A burst's queue and window capacity goes back once they are empty.
        let small = usize::from(INITIAL_WINDOW);
        if self.mqueue.is_empty() && self.mqueue.capacity() > small {
            self.mqueue = VecDeque::new();
        }
        if self.inflight.is_empty() && self.inflight.capacity() > small {
            self.inflight = VecDeque::new();
        }
    }

    /// Allocates an outbound packet id not used by the inflight window.
    pub fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = id.next();
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// Number of inflight entries that still hold a message slot (all states count: a PUBREL
    /// awaiting PUBCOMP still occupies the client's receive maximum).
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Queues `delivery` at the back with the next `seq`, journaling it for the store.
    pub fn push_delivery(&mut self, mut delivery: Delivery) {
        delivery.seq = self.next_seq;
        self.next_seq += 1;
        if let Some(j) = &mut self.journal {
            j.queued(&delivery);
        }
        self.add_held(delivery.held_bytes());
        self.mqueue.push_back(delivery);
    }

    /// The will waiting for its delay, if any.
    pub fn pending_will(&self) -> Option<&PendingWill> {
        self.pending_will.as_ref()
    }

    /// Holds `will` until its delay ends (replacing any earlier one), counting its bytes.
    pub fn set_pending_will(&mut self, will: PendingWill) {
        self.take_pending_will();
        self.add_held(will_bytes(&will.message));
        self.pending_will = Some(will);
    }

    /// Takes the pending will, if any, no longer counting its bytes.
    pub fn take_pending_will(&mut self) -> Option<PendingWill> {
        let will = self.pending_will.take()?;
        self.sub_held(will_bytes(&will.message));
        Some(will)
    }

    /// Counts `n` more bytes held, here and in the router-wide total.
    pub fn add_held(&mut self, n: usize) {
        self.held_bytes += n;
        self.held_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` fewer bytes held (never below zero), here and in the router-wide total.
    pub fn sub_held(&mut self, n: usize) {
        let n = n.min(self.held_bytes);
        self.held_bytes -= n;
        self.held_total.fetch_sub(n, Ordering::Relaxed);
    }

    /// Puts a delivery restored from the session store back in the queue (or, with
    /// `inflight`, in the window) without journaling it again.
    pub fn restore(&mut self, delivery: Delivery) {
        self.add_held(delivery.held_bytes());
        self.mqueue.push_back(delivery);
    }

    /// As [`restore`](Self::restore), into the inflight window.
    pub fn restore_inflight(&mut self, inflight: Inflight) {
        self.add_held(inflight.delivery.held_bytes());
        self.inflight.push_back(inflight);
    }

    /// Frees the queue's and the inflight window's buffers once both are empty and small: a
    /// server holds thousands of sessions that got one message and then wait (LwM2M endpoints,
    /// quiet devices), and a drained buffer is kept otherwise. A busy session's buffers
    /// (grown past a few entries) stay, so a steady stream does not allocate each time.
    pub fn release_idle_buffers(&mut self) {
        const SMALL: usize = 8;
        if self.mqueue.is_empty() && self.mqueue.capacity() > 0 && self.mqueue.capacity() <= SMALL {
            self.mqueue = VecDeque::new();
        }
        if self.inflight.is_empty()
            && self.inflight.capacity() > 0
            && self.inflight.capacity() <= SMALL
        {
            self.inflight = VecDeque::new();
        }
    }

    /// Journals that `delivery` left the session (acknowledged, dropped or expired).
    pub fn note_removed(&mut self, delivery: &Delivery) {
        self.note_sent(delivery);
        if let Some(j) = &mut self.journal {
            j.removed(delivery);
        }
    }

    /// A QoS 0 delivery went out: the session no longer holds it (nothing to journal).
    pub fn note_sent(&mut self, delivery: &Delivery) {
        self.sub_held(delivery.held_bytes());
    }

    /// The drops counted since the last "dropped" line, when a line is due (at most one a
    /// second per session); the count starts again from zero then.
    pub fn take_drop_log(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_drop_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last_drop_log = Some(now);
        Some(std::mem::take(&mut self.dropped_since_log))
    }

    /// Journals that `delivery` changed its handshake state.
    pub fn note_changed(&mut self, delivery: &Delivery) {
        if let Some(j) = &mut self.journal {
            j.changed(delivery);
        }
    }

    /// Journals that the metadata (expiry, connection, subscriptions) changed.
    pub fn note_meta_changed(&mut self) {
        if let Some(j) = &mut self.journal {
            j.meta_dirty = true;
        }
    }

    /// Holds `publisher` back until this queue has room (see [`Congestion`]).
    pub fn hold_back(&mut self, publisher: &Arc<ConnControl>, now: Instant) {
        publisher.held_back.store(true, Ordering::Release);
        self.congestion
            .get_or_insert_with(|| {
                Box::new(Congestion {
                    since: now,
                    publishers: HashMap::new(),
                })
            })
            .publishers
            .entry(publisher.conn_id)
            .or_insert_with(|| publisher.clone());
    }

    /// Lets every publisher this queue holds back go on; their connections are added to
    /// `wake` (the caller wakes them after the lock is released).
    pub fn release_publishers(&mut self, wake: &mut Vec<Arc<ConnControl>>) {
        if let Some(c) = self.congestion.take() {
            for (_, p) in c.publishers {
                p.held_back.store(false, Ordering::Release);
                wake.push(p);
            }
        }
    }

    /// The QoS a queued delivery will go out with.
    pub fn head_qos(&self) -> Option<QoS> {
        self.mqueue.front().map(|d| d.qos)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Publishers it held back go on (their connections wait for this).
        if let Some(c) = self.congestion.take() {
            for p in c.publishers.values() {
                p.held_back.store(false, Ordering::Release);
                p.wake();
            }
        }
        // What it still held leaves the router-wide total with it.
        self.held_total.fetch_sub(
            self.held_bytes.min(self.held_total.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }
}
