//! One webhook event as an owned value, and its JSON body (EMQX's field names).
//!
//! Owns the event shapes and their encoding; sans-IO, tested without sockets. Events are
//! built only for a webhook that wants them (see `super::Webhooks`), then serialized by a
//! worker, off the broker's path.

use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;

use crate::config::{PayloadEncoding, WebhookEvent};

/// An event waiting in a webhook's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Which event.
    pub kind: WebhookEvent,
    /// When it happened, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Whether the clock counted as synchronized when `timestamp` was taken (a board without
    /// a real-time clock reads 1970 until time sync).
    pub ts_synced: bool,
    /// The client it is about: the connecting client, the subscriber, the publisher of
    /// message.publish and message.dropped, the receiver of message.delivered/acked.
    pub clientid: String,
    /// That client's user name, when known.
    pub username: Option<String>,
    /// What else the event says.
    pub detail: Detail,
}

/// The event-specific part of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    /// client.connected and client.disconnected.
    Client {
        /// Peer address.
        peer: SocketAddr,
        /// Protocol level: 3, 4 or 5.
        proto_ver: u8,
        /// Keepalive from CONNECT, in seconds.
        keepalive: u16,
        /// Clean session / clean start from CONNECT.
        clean_start: bool,
        /// Why the connection ended (client.disconnected only), as the broker logs it.
        reason: Option<&'static str>,
    },
    /// session.subscribed and session.unsubscribed.
    Subscription {
        /// The topic filter.
        topic: String,
        /// Granted QoS (session.subscribed only).
        qos: Option<u8>,
    },
    /// message.publish, message.delivered, message.acked and message.dropped; boxed, as the
    /// biggest variant.
    Message(Box<MessageDetail>),
}

/// What a `message.*` event says about the message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageDetail {
    /// Topic name.
    pub topic: String,
    /// QoS: as published (publish, dropped) or as delivered (delivered, acked).
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Payload (an owned copy: an event must not pin the connection's read buffer).
    pub payload: Bytes,
    /// The publisher, for delivered and acked (`None` for `$SYS` messages and bridge
    /// downlinks).
    pub from_clientid: Option<String>,
    /// Packet id of the delivery (acked only).
    pub packet_id: Option<u16>,
    /// Why it was dropped (dropped only): `no_subscribers`, `not_authorized`.
    pub reason: Option<&'static str>,
}

impl Event {
    /// The JSON body POSTed for this event: EMQX's webhook field names, plus `node`.
    pub fn to_json(&self, node: &str, encoding: PayloadEncoding) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("event".into(), self.kind.as_str().into());
        m.insert("node".into(), node.into());
        m.insert("timestamp".into(), self.timestamp.into());
        m.insert("ts_synced".into(), self.ts_synced.into());
        m.insert("clientid".into(), self.clientid.as_str().into());
        m.insert("username".into(), json!(self.username));
        match &self.detail {
            Detail::Client {
                peer,
                proto_ver,
                keepalive,
                clean_start,
                reason,
            } => {
                m.insert("peerhost".into(), peer.ip().to_string().into());
                m.insert("peerport".into(), peer.port().into());
                m.insert("proto_ver".into(), (*proto_ver).into());
                m.insert("keepalive".into(), (*keepalive).into());
                m.insert("clean_start".into(), (*clean_start).into());
                if let Some(reason) = reason {
                    m.insert("reason".into(), (*reason).into());
                }
            }
            Detail::Subscription { topic, qos } => {
                m.insert("topic".into(), topic.as_str().into());
                if let Some(qos) = qos {
                    m.insert("qos".into(), (*qos).into());
                }
            }
            Detail::Message(d) => {
                if let Some(from) = &d.from_clientid {
                    m.insert("from_clientid".into(), from.as_str().into());
                } else if matches!(
                    self.kind,
                    WebhookEvent::MessageDelivered | WebhookEvent::MessageAcked
                ) {
                    m.insert("from_clientid".into(), Value::Null);
                }
                m.insert("topic".into(), d.topic.as_str().into());
                m.insert("qos".into(), d.qos.into());
                m.insert("retain".into(), d.retain.into());
                if let Some(pid) = d.packet_id {
                    m.insert("packet_id".into(), pid.into());
                }
                if let Some(reason) = d.reason {
                    m.insert("reason".into(), reason.into());
                }
                let payload = match encoding {
                    PayloadEncoding::Plain => String::from_utf8_lossy(&d.payload).into_owned(),
                    PayloadEncoding::Base64 => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.encode(&d.payload)
                    }
                };
                m.insert("payload".into(), payload.into());
                m.insert("payload_encoding".into(), encoding.as_str().into());
            }
        }
        // Serializing a map of strings and numbers cannot fail.
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(e: &Event, enc: PayloadEncoding) -> Value {
        serde_json::from_slice(&e.to_json("gw-1", enc)).unwrap()
    }

    #[test]
    fn client_connected_has_emqx_fields_and_the_node() {
        let e = Event {
            kind: WebhookEvent::ClientConnected,
            timestamp: 1_700_000_000_123,
            ts_synced: true,
            clientid: "dev-1".into(),
            username: Some("alice".into()),
            detail: Detail::Client {
                peer: "10.0.0.7:50123".parse().unwrap(),
                proto_ver: 5,
                keepalive: 60,
                clean_start: true,
                reason: None,
            },
        };
        let v = parse(&e, PayloadEncoding::Base64);
        assert_eq!(
            v,
            json!({
                "event": "client.connected", "node": "gw-1", "timestamp": 1_700_000_000_123u64, "ts_synced": true,
                "clientid": "dev-1", "username": "alice", "peerhost": "10.0.0.7",
                "peerport": 50123, "proto_ver": 5, "keepalive": 60, "clean_start": true,
            })
        );
    }

    #[test]
    fn client_disconnected_says_why_and_a_missing_username_is_null() {
        let e = Event {
            kind: WebhookEvent::ClientDisconnected,
            timestamp: 1,
            ts_synced: true,
            clientid: "c".into(),
            username: None,
            detail: Detail::Client {
                peer: "[::1]:1".parse().unwrap(),
                proto_ver: 4,
                keepalive: 0,
                clean_start: false,
                reason: Some("keepalive_timeout"),
            },
        };
        let v = parse(&e, PayloadEncoding::Base64);
        assert_eq!(v["reason"], "keepalive_timeout");
        assert_eq!(v["username"], Value::Null);
        assert_eq!(v["peerhost"], "::1");
    }

    fn message(kind: WebhookEvent, payload: &'static [u8]) -> Event {
        Event {
            kind,
            timestamp: 2,
            ts_synced: true,
            clientid: "sub".into(),
            username: None,
            detail: Detail::Message(Box::new(MessageDetail {
                topic: "a/b".into(),
                qos: 1,
                retain: false,
                payload: Bytes::from_static(payload),
                from_clientid: Some("pub".into()),
                packet_id: Some(7),
                reason: None,
            })),
        }
    }

    #[test]
    fn payloads_are_base64_or_plain_as_configured() {
        let e = message(WebhookEvent::MessageAcked, b"hi\xff");
        let v = parse(&e, PayloadEncoding::Base64);
        assert_eq!(v["payload"], "aGn/");
        assert_eq!(v["payload_encoding"], "base64");
        assert_eq!(v["from_clientid"], "pub");
        assert_eq!(v["packet_id"], 7);
        let v = parse(&e, PayloadEncoding::Plain);
        assert_eq!(v["payload"], "hi\u{fffd}");
        assert_eq!(v["payload_encoding"], "plain");
    }

    #[test]
    fn subscription_events_carry_the_filter_and_the_granted_qos() {
        let e = Event {
            kind: WebhookEvent::SessionSubscribed,
            timestamp: 3,
            ts_synced: true,
            clientid: "c".into(),
            username: Some("u".into()),
            detail: Detail::Subscription {
                topic: "x/#".into(),
                qos: Some(2),
            },
        };
        let v = parse(&e, PayloadEncoding::Plain);
        assert_eq!(
            (v["topic"].as_str(), v["qos"].as_u64()),
            (Some("x/#"), Some(2))
        );
        assert_eq!(v["event"], "session.subscribed");
    }
}
