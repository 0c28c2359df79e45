//! Webhooks: broker events POSTed as JSON to HTTP(S) endpoints (`[[webhooks]]`), EMQX-style.
//!
//! Owns, per configured webhook, a bounded event queue, its worker tasks (one keep-alive HTTP
//! connection each, `pool_size` of them), retries with exponential backoff and the counters
//! `$SYS/brokers/{node}/webhooks/{name}/...` and `holdfast ctl stats` report.
//!
//! It must never block or slow the broker. Producers (connections, the router) call the
//! `Webhooks` methods below, which `try_send` into a bounded tokio mpsc queue and never wait: a
//! full queue drops the event and counts it (`dropped_queue_full`). There is no unbounded
//! queue anywhere. An event is built (allocated) only for a webhook that wants its kind and,
//! for `message.*` events, whose `topics` match; with no webhooks configured every hook costs
//! one branch on a bit mask. JSON serialization and HTTP happen on the worker tasks.
//!
//! Memory bound: `queue_size` events per webhook, each with an owned copy of its payload for
//! `message.*` events (so at most `queue_size` x `mqtt.max_packet_size` bytes in the worst case).
//!
//! `message.dropped` is posted for the drops of a whole message, as in EMQX:
//! `no_subscribers` and `not_authorized` (ACL). Per-subscriber drops (a full session queue,
//! QoS 0 for an offline session, expiry), which EMQX reports as `delivery.dropped`, are only
//! counted in `$SYS` stats. Events still queued at shutdown are not sent.

mod event;
mod http;

pub use event::{Detail, Event, MessageDetail};
pub use http::{Endpoint, SetupError};

use crate::broker::events::{Dropped, Events};
use crate::broker::message::{ClientId, Delivery, Message};
use crate::broker::stats::DisconnectReason;
use crate::broker::sys::ClientInfo;
use crate::broker::Broker;
use crate::config::{EventSet, WebhookConfig, WebhookEvent};
use bytes::Bytes;
use holdfast_mqtt::{topic, ByteStr, PacketId, QoS, SubscriptionOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Counters of one webhook; atomics, bumped by producers and workers without locks.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Events produced for this webhook (queued or dropped because the queue was full).
    pub events: AtomicU64,
    /// Events the endpoint answered with a 2xx.
    pub sent: AtomicU64,
    /// Events given up after `max_retries` failed retries.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Attempts repeated after a failure.
    pub retries: AtomicU64,
}

/// A snapshot of one webhook's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HookSnapshot {
    /// Webhook name.
    pub name: String,
    /// Events produced (queued or dropped).
    pub events: u64,
    /// Events delivered (2xx).
    pub sent: u64,
    /// Events given up after retries.
    pub failed: u64,
    /// Events dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Repeated attempts.
    pub retries: u64,
    /// Events waiting in the queue now.
    pub queued: u64,
}

/// One configured webhook: what it wants and where its events go.
#[derive(Debug)]
struct Hook {
    config: WebhookConfig,
    tx: mpsc::Sender<Event>,
    /// The receiving end, until the workers take it at start-up.
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    stats: Arc<HookStats>,
}

/// Every webhook of the gateway; see the module documentation.
#[derive(Debug)]
pub struct Webhooks {
    hooks: Box<[Hook]>,
    /// Union of the hooks' event sets: the one check on the broker's paths.
    wanted: EventSet,
    /// Node name, put in every event.
    node: Arc<str>,
}

impl Webhooks {
    /// Webhooks for `configs` (none: every hook is a no-op); queues are created, nothing is
    /// connected until [`spawn`].
    pub fn new(configs: &[WebhookConfig], node: &str) -> Webhooks {
        let mut wanted = EventSet(0);
        let hooks = configs
            .iter()
            .map(|c| {
                wanted.0 |= c.events.0;
                let (tx, rx) = mpsc::channel(c.queue_size);
                Hook {
                    config: c.clone(),
                    tx,
                    rx: Mutex::new(Some(rx)),
                    stats: Arc::default(),
                }
            })
            .collect();
        Webhooks {
            hooks,
            wanted,
            node: Arc::from(node),
        }
    }

    /// Whether any webhook wants `kind`: the cheap check before any work.
    #[inline]
    pub fn wants(&self, kind: WebhookEvent) -> bool {
        self.wanted.contains(kind)
    }

    /// Whether any webhook wants `kind` for a message on `topic_name`.
    pub fn wants_message(&self, kind: WebhookEvent, topic_name: &str) -> bool {
        self.wants(kind) && self.hooks.iter().any(|h| h.matches(kind, topic_name))
    }

    /// Queues an event for every webhook that wants it; `build` runs at most once.
    fn emit(&self, kind: WebhookEvent, topic_name: Option<&str>, build: impl FnOnce() -> Event) {
        let mut event = None;
        let mut build = Some(build);
        for hook in self.hooks.iter() {
            let wanted = match topic_name {
                Some(t) => hook.matches(kind, t),
                None => hook.config.events.contains(kind),
            };
            if !wanted {
                continue;
            }
            if event.is_none() {
                event = build.take().map(|b| b());
            }
            if let Some(e) = &event {
                hook.offer(e.clone());
            }
        }
    }

    /// `client.connected`; `info` is built only when a webhook wants the event.
    #[inline]
    pub fn client_connected(&self, info: impl FnOnce() -> ClientInfo) {
        if !self.wants(WebhookEvent::ClientConnected) {
            return;
        }
        self.emit(WebhookEvent::ClientConnected, None, || {
            client_event(WebhookEvent::ClientConnected, info(), None)
        });
    }

    /// `client.disconnected`, with the reason the broker logs.
    #[inline]
    pub fn client_disconnected(&self, info: impl FnOnce() -> ClientInfo, reason: DisconnectReason) {
        if !self.wants(WebhookEvent::ClientDisconnected) {
            return;
        }
        self.emit(WebhookEvent::ClientDisconnected, None, || {
            client_event(
                WebhookEvent::ClientDisconnected,
                info(),
                Some(reason.as_str()),
            )
        });
    }

    /// `session.subscribed` for each filter of a SUBSCRIBE that was granted (`codes`, in
    /// SUBACK order: a code below 0x80 is the granted QoS).
    #[inline]
    pub fn session_subscribed(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        filters: &[(ByteStr, SubscriptionOptions)],
        codes: &[u8],
    ) {
        if !self.wants(WebhookEvent::SessionSubscribed) {
            return;
        }
        for ((filter, _), &code) in filters.iter().zip(codes) {
            if code >= 0x80 {
                continue;
            }
            self.emit(WebhookEvent::SessionSubscribed, None, || {
                subscription_event(
                    WebhookEvent::SessionSubscribed,
                    clientid,
                    username,
                    filter,
                    Some(code),
                )
            });
        }
    }

    /// `session.unsubscribed` for each filter of an UNSUBSCRIBE that removed a subscription
    /// (`codes` in UNSUBACK order; 0 = removed).
    #[inline]
    pub fn session_unsubscribed(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        filters: &[ByteStr],
        codes: &[u8],
    ) {
        if !self.wants(WebhookEvent::SessionUnsubscribed) {
            return;
        }
        for (filter, &code) in filters.iter().zip(codes) {
            if code != 0 {
                continue;
            }
            self.emit(WebhookEvent::SessionUnsubscribed, None, || {
                subscription_event(
                    WebhookEvent::SessionUnsubscribed,
                    clientid,
                    username,
                    filter,
                    None,
                )
            });
        }
    }

    /// `message.publish`: a client's PUBLISH accepted for routing.
    #[inline]
    pub fn message_publish(&self, clientid: &ClientId, username: Option<&str>, msg: &Message) {
        if !self.wants(WebhookEvent::MessagePublish) {
            return;
        }
        self.emit(WebhookEvent::MessagePublish, Some(&msg.topic), || {
            message_event(
                WebhookEvent::MessagePublish,
                clientid,
                username,
                &msg.topic,
                msg.qos,
                msg.retain,
                &msg.payload,
                MessageDetail::default_extra(),
            )
        });
    }

    /// `message.delivered`: a delivery written to a subscriber's connection.
    #[inline]
    pub fn message_delivered(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        delivery: &Delivery,
    ) {
        let msg = &delivery.message;
        if !self.wants(WebhookEvent::MessageDelivered)
            || !self.wants_message(WebhookEvent::MessageDelivered, &msg.topic)
        {
            return;
        }
        self.emit(WebhookEvent::MessageDelivered, Some(&msg.topic), || {
            let mut extra = MessageDetail::default_extra();
            extra.from_clientid = msg.publisher_client_id.as_ref().map(|c| c.to_string());
            message_event(
                WebhookEvent::MessageDelivered,
                clientid,
                username,
                &msg.topic,
                delivery.qos,
                delivery.retain,
                &msg.payload,
                extra,
            )
        });
    }

    /// `message.acked`: a subscriber's PUBACK (QoS 1) or PUBCOMP (QoS 2) for `delivery`,
    /// which the caller looked up in the session's inflight window before releasing it.
    #[inline]
    pub fn message_acked(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        packet_id: PacketId,
        delivery: impl FnOnce() -> Option<Delivery>,
    ) {
        if !self.wants(WebhookEvent::MessageAcked) {
            return;
        }
        let Some(delivery) = delivery() else {
            return;
        };
        let msg = &delivery.message;
        self.emit(WebhookEvent::MessageAcked, Some(&msg.topic), || {
            let mut extra = MessageDetail::default_extra();
            extra.from_clientid = msg.publisher_client_id.as_ref().map(|c| c.to_string());
            extra.packet_id = Some(packet_id.get());
            message_event(
                WebhookEvent::MessageAcked,
                clientid,
                username,
                &msg.topic,
                delivery.qos,
                delivery.retain,
                &msg.payload,
                extra,
            )
        });
    }

    /// `message.dropped`: a whole message dropped for `reason` (`no_subscribers`,
    /// `not_authorized`); `clientid` is the publisher (empty for broker-made messages).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn message_dropped(
        &self,
        reason: &'static str,
        clientid: Option<&str>,
        username: Option<&str>,
        topic_name: &str,
        qos: QoS,
        retain: bool,
        payload: &Bytes,
    ) {
        if !self.wants(WebhookEvent::MessageDropped) {
            return;
        }
        self.emit(WebhookEvent::MessageDropped, Some(topic_name), || {
            let mut extra = MessageDetail::default_extra();
            extra.reason = Some(reason);
            message_event(
                WebhookEvent::MessageDropped,
                clientid.unwrap_or(""),
                username,
                topic_name,
                qos,
                retain,
                payload,
                extra,
            )
        });
    }

    /// Counters of every webhook, in config order.
    pub fn snapshot(&self) -> Vec<HookSnapshot> {
        self.hooks
            .iter()
            .map(|h| {
                let s = &h.stats;
                HookSnapshot {
                    name: h.config.name.clone(),
                    events: s.events.load(Ordering::Relaxed),
                    sent: s.sent.load(Ordering::Relaxed),
                    failed: s.failed.load(Ordering::Relaxed),
                    dropped_queue_full: s.dropped_queue_full.load(Ordering::Relaxed),
                    retries: s.retries.load(Ordering::Relaxed),
                    queued: (h.tx.max_capacity() - h.tx.capacity()) as u64,
                }
            })
            .collect()
    }

    /// Whether no webhook is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }
}

impl Hook {
    fn matches(&self, kind: WebhookEvent, topic_name: &str) -> bool {
        self.config.events.contains(kind)
            && self
                .config
                .topics
                .iter()
                .any(|f| topic::matches(f, topic_name))
    }

    /// Queues `event` without waiting; a full queue drops it and counts it.
    fn offer(&self, event: Event) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(event).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl MessageDetail {
    /// The event-specific fields all unset.
    fn default_extra() -> Extra {
        Extra {
            from_clientid: None,
            packet_id: None,
            reason: None,
        }
    }
}

/// The fields of a [`MessageDetail`] that only some events have.
struct Extra {
    from_clientid: Option<String>,
    packet_id: Option<u16>,
    reason: Option<&'static str>,
}

fn client_event(kind: WebhookEvent, info: ClientInfo, reason: Option<&'static str>) -> Event {
    Event {
        kind,
        timestamp: crate::clock::real_now_ms(),
        ts_synced: crate::clock::synchronized(),
        clientid: info.client_id,
        username: info.username,
        detail: Detail::Client {
            peer: info.peer,
            proto_ver: info.proto_ver,
            keepalive: info.keepalive,
            clean_start: info.clean_start,
            reason,
        },
    }
}

fn subscription_event(
    kind: WebhookEvent,
    clientid: &str,
    username: Option<&str>,
    filter: &str,
    qos: Option<u8>,
) -> Event {
    Event {
        kind,
        timestamp: crate::clock::real_now_ms(),
        ts_synced: crate::clock::synchronized(),
        clientid: clientid.to_owned(),
        username: username.map(str::to_owned),
        detail: Detail::Subscription {
            topic: filter.to_owned(),
            qos,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn message_event(
    kind: WebhookEvent,
    clientid: &str,
    username: Option<&str>,
    topic_name: &str,
    qos: QoS,
    retain: bool,
    payload: &[u8],
    extra: Extra,
) -> Event {
    Event {
        kind,
        timestamp: crate::clock::real_now_ms(),
        ts_synced: crate::clock::synchronized(),
        clientid: clientid.to_owned(),
        username: username.map(str::to_owned),
        detail: Detail::Message(Box::new(MessageDetail {
            topic: topic_name.to_owned(),
            qos: qos as u8,
            retain,
            payload: Bytes::copy_from_slice(payload),
            from_clientid: extra.from_clientid,
            packet_id: extra.packet_id,
            reason: extra.reason,
        })),
    }
}

/// The broker's webhooks, if the broker reports to them (`[[webhooks]]`).
pub fn of(broker: &Broker) -> Option<&Webhooks> {
    broker.events().as_any().downcast_ref::<Webhooks>()
}

impl Events for Webhooks {
    fn wants(&self, kind: WebhookEvent) -> bool {
        Webhooks::wants(self, kind)
    }

    fn client_connected(&self, info: &ClientInfo) {
        Webhooks::client_connected(self, || info.clone());
    }

    fn client_disconnected(&self, info: &ClientInfo, reason: DisconnectReason) {
        Webhooks::client_disconnected(self, || info.clone(), reason);
    }

    fn session_subscribed(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        filters: &[(ByteStr, SubscriptionOptions)],
        codes: &[u8],
    ) {
        Webhooks::session_subscribed(self, clientid, username, filters, codes);
    }

    fn session_unsubscribed(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        filters: &[ByteStr],
        codes: &[u8],
    ) {
        Webhooks::session_unsubscribed(self, clientid, username, filters, codes);
    }

    fn message_publish(&self, clientid: &ClientId, username: Option<&str>, msg: &Message) {
        Webhooks::message_publish(self, clientid, username, msg);
    }

    fn message_delivered(&self, clientid: &ClientId, username: Option<&str>, delivery: &Delivery) {
        Webhooks::message_delivered(self, clientid, username, delivery);
    }

    fn message_acked(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        packet_id: PacketId,
        delivery: &Delivery,
    ) {
        Webhooks::message_acked(self, clientid, username, packet_id, || {
            Some(delivery.clone())
        });
    }

    fn message_dropped(&self, d: Dropped<'_>) {
        Webhooks::message_dropped(
            self, d.reason, d.clientid, d.username, d.topic, d.qos, d.retain, d.payload,
        );
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Starts the workers of every webhook (`pool_size` each) on `tracker`; they stop when
/// `shutdown` is cancelled. `endpoints` come from [`endpoints`], in config order.
pub fn spawn(
    webhooks: &Webhooks,
    endpoints: Vec<Endpoint>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    for (hook, endpoint) in webhooks.hooks.iter().zip(endpoints) {
        let rx = hook
            .rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(rx) = rx else {
            continue;
        };
        http::spawn_workers(
            http::WorkerShared {
                endpoint,
                rx: tokio::sync::Mutex::new(rx),
                stats: hook.stats.clone(),
                node: webhooks.node.clone(),
                encoding: hook.config.payload_encoding,
                max_retries: hook.config.max_retries,
                failures: crate::logging::Every::new(http::LOG_EVERY),
            },
            hook.config.pool_size,
            tracker,
            shutdown,
        );
    }
}

/// Prepares the HTTP endpoint of every webhook (reads CA files, builds TLS settings); fails
/// at start-up rather than posting into the void later.
pub fn endpoints(configs: &[WebhookConfig]) -> Result<Vec<Endpoint>, SetupError> {
    configs.iter().map(Endpoint::new).collect()
}

#[cfg(test)]
mod tests;
