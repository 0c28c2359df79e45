//! The in-process client API: the one way into the broker for every part of the gateway that
//! is not an MQTT connection (the CoAP, LwM2M, Modbus and serial gateways, the web UI, the
//! bridges' downlink).
//!
//! A [`Client`] is a session like an MQTT client's: it passes the same authentication and the
//! same ACL, shows in the `$SYS` connected/disconnected events, the webhooks and `holdfast ctl
//! clients` (with its [`Protocol`]), can be kicked or taken over, and is counted like any
//! client. Call order:
//!
//! 1. [`Client::connect`] with [`ClientOptions`] gives a `Client` or a [`ConnectError`];
//! 2. from one task, any number of [`Client::publish`] (awaits the [`Published`] outcome:
//!    routed, or durable in the bridge queues under the same rule as an MQTT PUBACK),
//!    [`Client::subscribe`], [`Client::unsubscribe`], and [`Client::recv`] followed by
//!    [`Client::ack`] for each QoS 1/2 message;
//! 3. [`Client::disconnect`]. A `Client` dropped without it ends as a lost connection does:
//!    a persistent session stays for its expiry.
//!
//! Owns the binding of one in-process caller to one router session. It never holds the router
//! lock across an `.await`, never holds more than one batch of deliveries outside the session
//! (the session's queue, with its `max_mqueue_len`/`max_mqueue_bytes` limits and counted drop
//! policy, is the bounded receiver; unacknowledged QoS 1/2 deliveries are bounded by the
//! receive window), and never waits on anything but the bridge queues' sync.

use super::message::{ClientId, Delivery, Message, Origin, SessionId};
use super::router::{ConnectParams, ConnectRefusal, Outgoing};
use super::session::{ConnControl, ConnMeta, InflightState, Owner};
use super::stats::DisconnectReason;
use super::sys::{self, ClientInfo};
use super::uplink::Refusal;
use super::{access, events, Broker};
use crate::auth::acl::{Action, ConnectionAcl, Permission};
use crate::auth::{Admitted, AuthDecision};
use bytes::Bytes;
use holdfast_mqtt::{
    reason, topic, ByteStr, PacketId, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliveries taken from the session per router lock.
const RECV_BATCH: usize = 64;

/// What an in-process client speaks; its label shows in `$SYS`, webhooks and `holdfast ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A CoAP device (`coap`).
    Coap,
    /// An LwM2M endpoint (`lwm2m`).
    Lwm2m,
    /// A Modbus poller (`modbus`).
    Modbus,
    /// A serial line (`serial`).
    Serial,
    /// The web UI or the REST API (`web`).
    Web,
    /// A bridge's downlink from a cloud broker (`bridge`).
    Bridge,
}

impl Protocol {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Coap => "coap",
            Protocol::Lwm2m => "lwm2m",
            Protocol::Modbus => "modbus",
            Protocol::Serial => "serial",
            Protocol::Web => "web",
            Protocol::Bridge => "bridge",
        }
    }
}

/// Who the client is, and how the broker learns it.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A part of this gateway acting on the operator's configuration (a Modbus poller, a serial
    /// port, a bridge's downlink): not authenticated. `username`, when set, is the identity
    /// the ACL's `user` rules and `%u` see (the operator wrote it).
    Gateway {
        /// The identity the ACL sees.
        username: Option<String>,
    },
    /// What a device presented (CoAP connection mode, LwM2M registration): checked by the
    /// authentication chain exactly as an MQTT CONNECT's (password file, client-id allowlist,
    /// JWT, anonymous access), with the same check workers and login lockout. A user name that
    /// nothing verified is dropped, as for MQTT.
    Device {
        /// User name presented.
        username: Option<String>,
        /// Password (or token) presented.
        password: Option<Vec<u8>>,
    },
}

/// How to connect. [`ClientOptions::new`] gives the defaults: gateway credentials without a
/// user name, clean start, a session that ends with the client, a window of 32.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client identifier; shares the MQTT clients' namespace (a client of either kind with
    /// the same id takes the session over).
    pub client_id: String,
    /// What it speaks.
    pub protocol: Protocol,
    /// Where the device is (its UDP address, the serial port as 127.0.0.1:0, the cloud
    /// broker); the ACL's `ipaddr` rules and `$SYS` see it.
    pub peer: SocketAddr,
    /// Who it is.
    pub credentials: Credentials,
    /// Start with a fresh session (true) or resume the one of `client_id` (false).
    pub clean_start: bool,
    /// How long the session and its queue outlive the client (at most `mqtt.session_expiry`);
    /// zero ends it with the client.
    pub session_expiry: Duration,
    /// QoS 1/2 deliveries handed out by [`Client::recv`] and not yet acknowledged (at most
    /// `mqtt.max_inflight`); the rest waits in the session's queue.
    pub receive_window: u16,
}

impl ClientOptions {
    /// The defaults for `client_id`, speaking `protocol`, at `peer`.
    pub fn new(client_id: impl Into<String>, protocol: Protocol, peer: SocketAddr) -> Self {
        ClientOptions {
            client_id: client_id.into(),
            protocol,
            peer,
            credentials: Credentials::Gateway { username: None },
            clean_start: true,
            session_expiry: Duration::ZERO,
            receive_window: 32,
        }
    }
}

/// Why [`Client::connect`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Empty, or longer than `mqtt.max_clientid_len`.
    #[error("invalid client id (empty or longer than mqtt.max_clientid_len)")]
    InvalidClientId,
    /// Wrong user name or password, or an invalid token.
    #[error("bad user name or password")]
    BadCredentials,
    /// No credentials and anonymous access is off.
    #[error("not authorized")]
    NotAuthorized,
    /// Too many failed logins for this user from this address (`auth.max_login_failures`).
    #[error("too many failed logins for this user from this address")]
    LockedOut,
    /// The password checks are saturated (`auth.max_pending_checks`, `auth.check_timeout`).
    #[error("password checks are saturated")]
    Busy,
    /// The client id's session belongs to another identity.
    #[error("the client id's session belongs to another identity")]
    NotOwner,
    /// `mqtt.max_sessions` reached.
    #[error("max_sessions reached")]
    TooManySessions,
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Topic name (no wildcards; `$SYS` is the broker's).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties (message expiry, content type, user properties...).
    pub properties: PublishProperties,
}

impl Publication {
    /// A non-retained message without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Publication {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: PublishProperties::default(),
        }
    }

    /// The same, retained.
    pub fn retained(mut self) -> Self {
        self.retain = true;
        self
    }
}

/// What became of a publish that the broker took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Routed to `receivers` (the subscriptions it was queued for, plus one when the bridges
    /// take it); no bridge had to sync it first (none forwards it, QoS 0, or the bridges'
    /// `flush = "interval:…"` acknowledges before the sync, as the MQTT PUBACK does).
    Routed {
        /// Subscriptions it was queued for, plus one for the bridges.
        receivers: usize,
    },
    /// Routed as above, and on disk in every bridge queue that wanted it.
    Durable {
        /// Subscriptions it was queued for, plus one for the bridges.
        receivers: usize,
    },
}

/// Why a publish was refused; nothing was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The ACL denies this client publishing there (counted as `not_authorized`), or the
    /// topic is under `$SYS`.
    #[error("not authorized")]
    NotAuthorized,
    /// Empty, with wildcards, or past `mqtt.max_topic_len` / `mqtt.max_topic_levels`.
    #[error("invalid topic name")]
    InvalidTopic,
    /// Retained while `mqtt.retain_available = false`.
    #[error("retained messages are not available")]
    RetainNotAvailable,
    /// A bridge queue with `on_full = "reject_new"` is full (local subscribers got it).
    #[error("a bridge queue is full")]
    BridgeQueueFull,
    /// A bridge queue could not take it (I/O error; local subscribers got it).
    #[error("a bridge queue failed")]
    BridgeQueueFailed,
    /// The client was disconnected (kicked, taken over, shutdown).
    #[error("the client was disconnected")]
    Closed,
}

/// Why one filter of [`Client::subscribe`] was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The ACL denies it.
    #[error("not authorized")]
    NotAuthorized,
    /// Malformed, or past `mqtt.max_topic_len` / `mqtt.max_topic_levels`.
    #[error("invalid topic filter")]
    InvalidFilter,
    /// `mqtt.max_subscriptions` or `mqtt.max_subscription_bytes_total` reached.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// Another MQTT reason code.
    #[error("refused with reason code {0:#04x}")]
    Refused(u8),
    /// The client was disconnected.
    #[error("the client was disconnected")]
    Closed,
}

/// A message handed out by [`Client::recv`]. QoS 1/2 ones must be [`Client::ack`]ed.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message as published (topic, payload, properties, publisher).
    pub message: Arc<Message>,
    /// QoS of this delivery: min(published, granted).
    pub qos: QoS,
    /// Retained (sent because of a subscribe) or retain-as-published.
    pub retain: bool,
    /// Sent before (after a resume), as MQTT's DUP.
    pub dup: bool,
    /// The session's packet id for the acknowledgement; 0 for QoS 0.
    pub packet_id: PacketId,
}

/// A connected in-process client. See the module documentation.
#[derive(Debug)]
pub struct Client {
    broker: Arc<Broker>,
    session: SessionId,
    ctrl: Arc<ConnControl>,
    client_id: ClientId,
    /// Shared with the connection's metadata.
    username: Option<Arc<str>>,
    peer: SocketAddr,
    protocol: Protocol,
    clean_start: bool,
    session_present: bool,
    /// This client's view of the ACL, built at its first check.
    acl: Option<Box<ConnectionAcl>>,
    /// Deliveries taken from the session and not yet handed out (at most one batch).
    ready: VecDeque<Outgoing>,
    /// Set once the session is unbound (disconnect or drop).
    finished: bool,
    /// Set while [`Client::poll_recv`] waits for a wake-up: polled again without one (the task
    /// woke for something else), it does not take the router lock to look. Cleared by what
    /// can make a message ready without a wake-up (an ack frees a window slot).
    waiting: bool,
}

impl Client {
    /// Authenticates, binds the session of `opts.client_id` (taking over a connection that
    /// holds it, MQTT or not) and announces the client. A resumed session keeps only the
    /// subscriptions the ACL still allows.
    pub async fn connect(
        broker: &Arc<Broker>,
        opts: ClientOptions,
    ) -> Result<Client, ConnectError> {
        let cfg = &broker.config.mqtt;
        if opts.client_id.is_empty() || opts.client_id.len() > cfg.max_clientid_len {
            return Err(refused(&opts, ConnectError::InvalidClientId));
        }
        if broker.shutdown.is_cancelled() {
            return Err(ConnectError::ShuttingDown);
        }
        let (username, password_user) = match &opts.credentials {
            Credentials::Gateway { username } => (username.clone(), false),
            Credentials::Device { username, password } => {
                let admitted = authenticate(broker, &opts, username.as_deref(), password)
                    .await
                    .map_err(|e| refused(&opts, e))?;
                let verified = admitted.verified_user().then(|| username.clone()).flatten();
                (verified, admitted == Admitted::Password)
            }
        };
        let client_id = ClientId::from(opts.client_id.as_str());
        let username: Option<Arc<str>> = username.map(Arc::from);
        let ctrl = ConnControl::new(broker.next_conn_id());
        ctrl.set_meta(ConnMeta {
            peer: opts.peer,
            username: username.clone(),
            connected_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            password_user,
            proto_name: opts.protocol.as_str(),
        });
        let window = usize::from(cfg.max_inflight)
            .min(usize::from(opts.receive_window))
            .max(1);
        let result = broker.with_router(|r| {
            r.connect(ConnectParams {
                client_id: client_id.clone(),
                protocol: ProtocolVersion::V5,
                clean_start: opts.clean_start,
                session_expiry: opts.session_expiry.min(cfg.session_expiry),
                window,
                conn: ctrl.clone(),
                now: Instant::now(),
                owner: Owner::of(username.as_deref()),
                on_owner_mismatch: cfg.session_owner_mismatch,
            })
        });
        let result = match result {
            Ok(result) => result,
            Err(ConnectRefusal::NotOwner) => return Err(refused(&opts, ConnectError::NotOwner)),
            Err(ConnectRefusal::TooManySessions) => {
                return Err(refused(&opts, ConnectError::TooManySessions))
            }
        };
        if let Some(old) = result.replaced {
            old.discarded.store(opts.clean_start, Ordering::Relaxed);
            old.close_with(reason::SESSION_TAKEN_OVER);
        }
        let mut client = Client {
            broker: broker.clone(),
            session: result.session_id,
            ctrl,
            client_id,
            username,
            peer: opts.peer,
            protocol: opts.protocol,
            clean_start: opts.clean_start,
            session_present: result.session_present,
            acl: None,
            ready: VecDeque::new(),
            finished: false,
            waiting: false,
        };
        if result.session_present {
            client.recheck_restored_subscriptions();
        }
        // Shutdown closes connected sessions through the router (`close_all`); one that
        // registered just after that sweep closes itself here.
        if broker.shutdown.is_cancelled() {
            client.ctrl.close_with(reason::SERVER_SHUTTING_DOWN);
        }
        tracing::info!(
            peer = %client.peer,
            client_id = %client.client_id,
            username = client.username.as_deref().unwrap_or(""),
            protocol = client.protocol.as_str(),
            clean_start = client.clean_start,
            session_present = client.session_present,
            "client connected"
        );
        let info = client.info();
        sys::client_connected(broker, &info);
        broker.events().client_connected(&info);
        Ok(client)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The verified user name (or the gateway-given one), if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// True when [`Client::connect`] resumed an existing session.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Why the client was closed (kicked, taken over, shutdown), once it was.
    pub fn closed(&self) -> Option<DisconnectReason> {
        self.ctrl.is_closing().then(|| self.ctrl.close_cause())
    }

    /// Resolves once the client is closed (kicked, taken over, shutdown), with why. For a
    /// client that only publishes: it shares its wake-up with [`Client::recv`], so one task
    /// must not wait on both at once.
    pub async fn closing(&self) -> DisconnectReason {
        let ctrl = &self.ctrl;
        std::future::poll_fn(|cx| {
            ctrl.register(cx.waker());
            if ctrl.is_closing() {
                std::task::Poll::Ready(ctrl.close_cause())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// The router session this client is bound to (messages it publishes carry it as their
    /// origin).
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Publishes `p` as this client and waits for the outcome: refused (nothing routed),
    /// routed to local subscribers, or durable in the bridge queues that forward it. A
    /// device's acknowledgement (CoAP 2.04, an LwM2M ack) belongs after this returns `Ok`.
    /// Nothing is routed until the future is first polled. (An async block, not an async fn:
    /// an async fn's future would hold `p` twice.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice"
    )]
    pub fn publish(
        &mut self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<Published, PublishError>> + Send + '_ {
        async move {
            let (receivers, forwarded) = self.route(p)?;
            self.wait_while_held_back().await;
            bridge_refusal(forwarded.as_ref())?;
            let Some(f) = forwarded else {
                return Ok(Published::Routed { receivers });
            };
            let Some(uplink) = self.broker.uplink().filter(|_| !f.needs.is_empty()) else {
                return Ok(Published::Routed { receivers });
            };
            std::future::poll_fn(|cx| uplink.poll_durable(&f.needs, cx)).await;
            Ok(Published::Durable { receivers })
        }
    }

    /// Publishes `p` as this client without waiting: the subscriptions it was queued for
    /// (plus one for the bridges). For a client that needs no durable outcome (an LwM2M
    /// endpoint's uplinks) and waits for backpressure itself, between its events: after
    /// this, [`Client::is_held_back`] says whether [`Client::wait_while_held_back`] must run
    /// before the next publish. A bridge queue that refused it is an error here too.
    pub fn publish_now(&mut self, p: Publication) -> Result<usize, PublishError> {
        let (receivers, forwarded) = self.route(p)?;
        bridge_refusal(forwarded.as_ref())?;
        Ok(receivers)
    }

    /// Checks and routes `p`: the receivers, and what the bridges did with it (a refusal
    /// included: the subscribers got it all the same).
    fn route(
        &mut self,
        p: Publication,
    ) -> Result<(usize, Option<super::uplink::Forwarded>), PublishError> {
        if self.finished || self.ctrl.is_closing() {
            return Err(PublishError::Closed);
        }
        let cfg = &self.broker.config.mqtt;
        if p.topic.starts_with("$SYS") {
            return Err(PublishError::NotAuthorized);
        }
        if p.topic.is_empty()
            || topic::validate_topic_name(&p.topic).is_err()
            || p.topic.len() > cfg.max_topic_len
            || topic::topic_levels(&p.topic) > cfg.max_topic_levels
        {
            return Err(PublishError::InvalidTopic);
        }
        if p.retain && !cfg.retain_available {
            return Err(PublishError::RetainNotAvailable);
        }
        self.broker
            .traffic
            .publish_received
            .fetch_add(1, Ordering::Relaxed);
        if self.acl_allows(Action::Publish, &p.topic) == Permission::Deny {
            access::publish_denied(
                &self.broker,
                self.who(),
                &p.topic,
                p.qos,
                p.retain,
                &p.payload,
            );
            return Err(PublishError::NotAuthorized);
        }
        let now = Instant::now();
        let origin = Origin::client(self.session, self.client_id.clone());
        let message = Arc::new(
            Message::new(p.topic, p.payload, p.qos, p.retain, p.properties, origin)
                .expiring_from(now),
        );
        self.broker
            .events()
            .message_publish(&self.client_id, self.username.as_deref(), &message);
        let mut forwarded = Vec::new();
        let receivers = self
            .broker
            .with_router_forwarding(|r| r.publish(message, now), &mut forwarded);
        Ok((receivers, forwarded.pop()))
    }

    /// Whether a full subscriber queue holds this client back: its next publish should wait
    /// ([`Client::wait_while_held_back`]).
    pub fn is_held_back(&self) -> bool {
        self.ctrl.is_held_back()
    }

    /// Returns once no full subscriber queue holds this client back (`mqtt.mqueue_full =
    /// "backpressure"`): the message that filled it is queued, the next one waits. Bounded:
    /// the router disconnects a subscriber that holds publishers longer than
    /// `slow_subscriber_timeout`, and this gives up a second after that in any case.
    pub async fn wait_while_held_back(&self) {
        if !self.ctrl.is_held_back() {
            return;
        }
        let ctrl = &self.ctrl;
        let released = std::future::poll_fn(|cx| {
            ctrl.register(cx.waker());
            if !ctrl.is_held_back() || ctrl.is_closing() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        let limit = self.broker.config.mqtt.slow_subscriber_timeout + Duration::from_secs(1);
        if tokio::time::timeout(limit, released).await.is_err() {
            tracing::warn!(client_id = %self.client_id, "held back longer than slow_subscriber_timeout; going on");
            self.ctrl.held_back.store(false, Ordering::Release);
        }
    }

    /// Subscribes to each `(filter, max QoS)`; one result per filter, in order. Retained
    /// messages on a new subscription are queued for [`Client::recv`] at once.
    pub fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<Result<QoS, SubscribeError>> {
        if self.finished || self.ctrl.is_closing() {
            return vec![Err(SubscribeError::Closed); filters.len()];
        }
        let max = self.broker.config.mqtt.max_subscriptions;
        let session = self.session;
        let mut results: Vec<Option<Result<QoS, SubscribeError>>> = vec![None; filters.len()];
        let mut asked = Vec::new();
        let mut asked_at = Vec::new();
        for (i, (filter, qos)) in filters.iter().enumerate() {
            if self.acl_allows(Action::Subscribe, filter) == Permission::Deny {
                results[i] = Some(Err(SubscribeError::NotAuthorized));
                continue;
            }
            let options = SubscriptionOptions {
                qos: *qos,
                ..SubscriptionOptions::default()
            };
            asked.push((ByteStr::from(*filter), options));
            asked_at.push(i);
        }
        let now = Instant::now();
        let codes = self
            .broker
            .with_router(|r| r.subscribe_limited(session, &asked, None, max, now));
        self.broker.events().session_subscribed(
            &self.client_id,
            self.username.as_deref(),
            &asked,
            &codes,
        );
        for (code, i) in codes.iter().zip(asked_at) {
            results[i] = Some(match *code {
                c if c < 0x80 => Ok(QoS::from_u8(c).unwrap_or(QoS::AtMostOnce)),
                reason::NOT_AUTHORIZED => Err(SubscribeError::NotAuthorized),
                reason::TOPIC_FILTER_INVALID => Err(SubscribeError::InvalidFilter),
                reason::QUOTA_EXCEEDED => Err(SubscribeError::QuotaExceeded),
                c => Err(SubscribeError::Refused(c)),
            });
        }
        for ((filter, _), result) in filters.iter().zip(&results) {
            tracing::debug!(client_id = %self.client_id, protocol = self.protocol.as_str(), filter, result = ?result, "subscribe");
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(SubscribeError::Refused(reason::UNSPECIFIED_ERROR))))
            .collect()
    }

    /// The payload of the retained message on `topic` (no wildcards), if the ACL lets this
    /// client subscribe to it: a one-off read, as a subscription's retained delivery would
    /// give it, without the subscription (CoAP's plain GET).
    pub fn read_retained(&mut self, topic: &str) -> Result<Option<Bytes>, SubscribeError> {
        if self.finished || self.ctrl.is_closing() {
            return Err(SubscribeError::Closed);
        }
        if topic.is_empty() || topic::validate_topic_name(topic).is_err() {
            return Err(SubscribeError::InvalidFilter);
        }
        if self.acl_allows(Action::Subscribe, topic) == Permission::Deny {
            return Err(SubscribeError::NotAuthorized);
        }
        Ok(self.broker.with_router(|r| r.retained_payload(topic)))
    }

    /// Removes subscriptions; true for each filter that was held.
    pub fn unsubscribe(&mut self, filters: &[&str]) -> Vec<bool> {
        if self.finished {
            return vec![false; filters.len()];
        }
        let list: Vec<ByteStr> = filters.iter().map(|f| ByteStr::from(*f)).collect();
        let session = self.session;
        let codes = self.broker.with_router(|r| r.unsubscribe(session, &list));
        self.broker.events().session_unsubscribed(
            &self.client_id,
            self.username.as_deref(),
            &list,
            &codes,
        );
        codes.into_iter().map(|c| c == reason::SUCCESS).collect()
    }

    /// The next message for this client, in the session's order; waits until one is queued.
    /// `None` once the client is closed (see [`Client::closed`]). Cancel-safe: a message is
    /// taken from the session only when this returns it.
    pub async fn recv(&mut self) -> Option<Received> {
        // A fresh call looks at the session once, whatever an earlier, dropped one was waiting for.
        self.waiting = false;
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Client::recv`] for a task that waits on several things in one hand-written poll (it
    /// keeps no future of its own): the next delivery if one is ready, `Ready(None)` once
    /// closed, otherwise `cx` is woken when one comes.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Received>> {
        use std::task::Poll;
        if self.waiting {
            self.ctrl.register(cx.waker());
            if !self.ctrl.is_closing() && !self.ctrl.wake_pending.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            self.waiting = false;
        }
        loop {
            if let Some(next) = self.next_ready() {
                return Poll::Ready(Some(next));
            }
            if self.finished || self.ctrl.is_closing() {
                return Poll::Ready(None);
            }
            let (session, conn_id) = (self.session, self.ctrl.conn_id);
            let mut batch = Vec::new();
            self.broker.with_router(|r| {
                r.take_outgoing(session, conn_id, RECV_BATCH, Instant::now(), &mut batch)
            });
            if !batch.is_empty() {
                // `ready` is empty here: take the batch's buffer as it is.
                self.ready = VecDeque::from(batch);
                continue;
            }
            // Idle: thousands of in-process clients (LwM2M endpoints, CoAP observers) wait at
            // once, none keeping a buffer.
            self.ready = VecDeque::new();
            self.ctrl.register(cx.waker());
            if !self.ctrl.is_closing() && !self.ctrl.wake_pending.load(Ordering::Acquire) {
                self.waiting = true;
                return Poll::Pending;
            }
        }
    }

    /// A message already taken from the session, if any; a PUBREL left from a resumed
    /// session's QoS 2 exchange is completed on the way.
    fn next_ready(&mut self) -> Option<Received> {
        while let Some(item) = self.ready.pop_front() {
            match item {
                Outgoing::PubRel(packet_id) => {
                    let session = self.session;
                    self.broker.with_router(|r| r.pubcomp(session, packet_id));
                }
                Outgoing::Publish {
                    delivery,
                    packet_id,
                    dup,
                } => {
                    self.broker
                        .traffic
                        .publish_sent
                        .fetch_add(1, Ordering::Relaxed);
                    self.broker.events().message_delivered(
                        &self.client_id,
                        self.username.as_deref(),
                        &delivery,
                    );
                    return Some(received(delivery, packet_id, dup));
                }
            }
        }
        None
    }

    /// Acknowledges a QoS 1/2 message from [`Client::recv`] (PUBACK, or PUBREC + PUBCOMP):
    /// the session forgets it and its window takes the next. Unacknowledged, it is handed out
    /// again (dup) when the session is resumed. A QoS 0 message needs none.
    pub fn ack(&mut self, m: &Received) {
        if m.qos == QoS::AtMostOnce || self.finished {
            return;
        }
        // A freed window slot may let a queued message out: look again at the next poll.
        self.waiting = false;
        let (session, client_id) = (self.session, &self.client_id);
        let events = self.broker.events();
        let username = self.username.as_deref();
        self.broker.with_router(|r| {
            let state = match m.qos {
                QoS::AtLeastOnce => InflightState::AwaitPubAck,
                _ => InflightState::AwaitPubRec,
            };
            events::acked(events, r, session, m.packet_id, state, client_id, username);
            if m.qos == QoS::AtLeastOnce {
                r.puback(session, m.packet_id);
            } else if r.pubrec(session, m.packet_id, reason::SUCCESS) {
                r.pubcomp(session, m.packet_id);
            }
        });
    }

    /// Ends the client normally: the session is kept for its expiry (or ends now with an
    /// expiry of zero), the `$SYS` disconnected event is published.
    pub fn disconnect(mut self) {
        self.finish(DisconnectReason::Normal);
    }

    fn finish(&mut self, why: DisconnectReason) {
        if self.finished {
            return;
        }
        self.finished = true;
        let reason = if self.ctrl.is_closing() {
            self.ctrl.close_cause()
        } else {
            why
        };
        let (sid, conn_id) = (self.session, self.ctrl.conn_id);
        self.broker
            .with_router(|r| r.disconnect(sid, conn_id, None, None, Instant::now()));
        tracing::info!(peer = %self.peer, client_id = %self.client_id, protocol = self.protocol.as_str(), reason = reason.as_str(), "client disconnected");
        let info = self.info();
        sys::client_disconnected(&self.broker, &info, reason);
        self.broker.events().client_disconnected(&info, reason);
    }

    fn info(&self) -> ClientInfo {
        ClientInfo {
            client_id: self.client_id.to_string(),
            username: self.username.as_deref().map(str::to_owned),
            peer: self.peer,
            proto_name: self.protocol.as_str(),
            proto_ver: 0,
            keepalive: 0,
            clean_start: self.clean_start,
        }
    }

    /// Who this client is, for the access rules.
    fn who(&self) -> access::Who<'_> {
        access::Who {
            client_id: self.client_id.as_str(),
            username: self.username.as_deref(),
            peer: self.peer,
        }
    }

    /// The ACL's verdict for this client, as for an MQTT client from the same address.
    fn acl_allows(&mut self, action: Action, topic: &str) -> Permission {
        let who = access::Who {
            client_id: self.client_id.as_str(),
            username: self.username.as_deref(),
            peer: self.peer,
        };
        access::acl_allows(&self.broker, &mut self.acl, who, action, topic)
    }

    /// A resumed session's subscriptions that the ACL now denies are removed before anything
    /// is delivered through them.
    fn recheck_restored_subscriptions(&mut self) {
        let who = access::Who {
            client_id: self.client_id.as_str(),
            username: self.username.as_deref(),
            peer: self.peer,
        };
        access::recheck_restored_subscriptions(&self.broker, &mut self.acl, who, self.session);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.finish(DisconnectReason::TcpClosed);
    }
}

fn received(delivery: Delivery, packet_id: PacketId, dup: bool) -> Received {
    Received {
        qos: delivery.qos,
        retain: delivery.retain,
        message: delivery.message,
        dup,
        packet_id,
    }
}

/// Publishes a message the broker itself makes (the `$SYS` statistics and events, the board
/// status): QoS 0, no client and no ACL (the broker owns `$SYS`), routed to subscribers and to
/// a bridge that forwards it like any message. Returns how many subscriptions it reached.
pub fn publish_system(
    broker: &Broker,
    topic: String,
    payload: impl Into<Bytes>,
    retain: bool,
) -> usize {
    let message = Message::new(
        topic,
        payload,
        QoS::AtMostOnce,
        retain,
        PublishProperties::default(),
        Origin::BROKER,
    );
    let message = Arc::new(message);
    broker.with_router(|r| r.publish(message, Instant::now()))
}

/// A bridge queue's refusal of a routed message, as the publisher's error.
fn bridge_refusal(forwarded: Option<&super::uplink::Forwarded>) -> Result<(), PublishError> {
    match forwarded.and_then(|f| f.refused) {
        Some(Refusal::QueueFull) => Err(PublishError::BridgeQueueFull),
        Some(Refusal::Failed) => Err(PublishError::BridgeQueueFailed),
        None => Ok(()),
    }
}

/// Logs a refused connect, naming the client and why, and returns the error.
fn refused(opts: &ClientOptions, e: ConnectError) -> ConnectError {
    tracing::warn!(peer = %opts.peer, client_id = %super::short(&opts.client_id), protocol = opts.protocol.as_str(), "connection refused: {e}");
    e
}

/// Runs a device's credentials through the authentication chain, as an MQTT CONNECT's.
async fn authenticate(
    broker: &Broker,
    opts: &ClientOptions,
    username: Option<&str>,
    password: &Option<Vec<u8>>,
) -> Result<Admitted, ConnectError> {
    let ip = opts.peer.ip();
    let decision = match (username, password) {
        (Some(user), Some(_)) if broker.login_lockout.is_locked(ip, user, Instant::now()) => {
            broker
                .traffic
                .logins_refused_locked
                .fetch_add(1, Ordering::Relaxed);
            return Err(ConnectError::LockedOut);
        }
        (_, None) => broker.auth.check(&opts.client_id, username, None),
        (_, Some(password)) => {
            let busy = |broker: &Broker| {
                broker
                    .traffic
                    .logins_refused_busy
                    .fetch_add(1, Ordering::Relaxed);
                ConnectError::Busy
            };
            let reply = broker
                .auth_checks
                .submit(&opts.client_id, username, Some(password))
                .map_err(|_| busy(broker))?;
            match tokio::time::timeout(broker.config.auth.check_timeout, reply).await {
                Ok(Ok(decision)) => decision,
                _ => return Err(busy(broker)),
            }
        }
    };
    match decision {
        AuthDecision::Allow(admitted) => {
            if let (Some(user), Admitted::Password) = (username, admitted) {
                broker.login_lockout.succeeded(ip, user);
            }
            Ok(admitted)
        }
        AuthDecision::BadCredentials => {
            if let Some(user) = username {
                broker.login_lockout.mqtt_login_failed(opts.peer, user);
            }
            Err(ConnectError::BadCredentials)
        }
        AuthDecision::NotAuthorized => Err(ConnectError::NotAuthorized),
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
