//! What the broker tells an observer (the webhooks, `crate::webhook`) about clients,
//! subscriptions and messages, through one interface registered at start-up
//! ([`super::Broker::set_events`]).
//!
//! Owns only the interface: the broker never imports its observers. Every call sits on a hot
//! path (a publish, a delivery), so an observer answers [`Events::wants`] cheaply and callers
//! ask it before building anything costly; an observer must never block or take the router
//! lock.

use super::message::{ClientId, Delivery, Message};
use super::stats::DisconnectReason;
use super::sys::ClientInfo;
use crate::config::WebhookEvent as EventKind;
use bytes::Bytes;
use holdfast_mqtt::{ByteStr, PacketId, QoS, SubscriptionOptions};

/// A message dropped whole, for [`Events::message_dropped`].
#[derive(Debug, Clone, Copy)]
pub struct Dropped<'a> {
    /// Why (`no_subscribers`, `not_authorized`).
    pub reason: &'static str,
    /// The publisher's client id (none for broker-made messages).
    pub clientid: Option<&'a str>,
    /// The publisher's verified user name.
    pub username: Option<&'a str>,
    /// Topic name.
    pub topic: &'a str,
    /// QoS as published.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Payload.
    pub payload: &'a Bytes,
}

/// An observer of broker events. See the module documentation.
pub trait Events: Send + Sync + std::fmt::Debug {
    /// Whether it wants events of `kind` at all (one branch on the broker's paths).
    fn wants(&self, kind: EventKind) -> bool;
    /// A client connected (MQTT or in-process).
    fn client_connected(&self, info: &ClientInfo);
    /// A client's connection ended, for `reason`.
    fn client_disconnected(&self, info: &ClientInfo, reason: DisconnectReason);
    /// A SUBSCRIBE's results: a code below 0x80 is the granted QoS.
    fn session_subscribed(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        filters: &[(ByteStr, SubscriptionOptions)],
        codes: &[u8],
    );
    /// An UNSUBSCRIBE's results: 0 = removed.
    fn session_unsubscribed(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        filters: &[ByteStr],
        codes: &[u8],
    );
    /// A client's message accepted for routing.
    fn message_publish(&self, clientid: &ClientId, username: Option<&str>, msg: &Message);
    /// A delivery handed to a subscriber.
    fn message_delivered(&self, clientid: &ClientId, username: Option<&str>, delivery: &Delivery);
    /// A subscriber acknowledged `delivery` (PUBACK, or PUBCOMP for QoS 2).
    fn message_acked(
        &self,
        clientid: &ClientId,
        username: Option<&str>,
        packet_id: PacketId,
        delivery: &Delivery,
    );
    /// A message dropped whole.
    fn message_dropped(&self, dropped: Dropped<'_>);
    /// The implementation, for its own module to get back (`crate::webhook::of`).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Tells `events` that `clientid` acknowledged `packet_id` (a delivery still in `session`'s
/// inflight window in `state`); the delivery is looked up only when someone listens.
pub fn acked(
    events: &dyn Events,
    router: &super::router::Router,
    session: super::message::SessionId,
    packet_id: PacketId,
    state: super::session::InflightState,
    clientid: &ClientId,
    username: Option<&str>,
) {
    if !events.wants(EventKind::MessageAcked) {
        return;
    }
    if let Some(delivery) = router.inflight_delivery(session, packet_id, state) {
        events.message_acked(clientid, username, packet_id, &delivery);
    }
}

/// The observer of a broker nobody observes.
#[derive(Debug, Default)]
pub struct NoEvents;

impl Events for NoEvents {
    fn wants(&self, _: EventKind) -> bool {
        false
    }
    fn client_connected(&self, _: &ClientInfo) {}
    fn client_disconnected(&self, _: &ClientInfo, _: DisconnectReason) {}
    fn session_subscribed(
        &self,
        _: &ClientId,
        _: Option<&str>,
        _: &[(ByteStr, SubscriptionOptions)],
        _: &[u8],
    ) {
    }
    fn session_unsubscribed(&self, _: &ClientId, _: Option<&str>, _: &[ByteStr], _: &[u8]) {}
    fn message_publish(&self, _: &ClientId, _: Option<&str>, _: &Message) {}
    fn message_delivered(&self, _: &ClientId, _: Option<&str>, _: &Delivery) {}
    fn message_acked(&self, _: &ClientId, _: Option<&str>, _: PacketId, _: &Delivery) {}
    fn message_dropped(&self, _: Dropped<'_>) {}
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
