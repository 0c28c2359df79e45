//! Conversions between the broker's in-memory messages and the storage crate's records.
//!
//! Owns the mapping only: `Instant`-based expiry becomes an absolute Unix time on disk (so the
//! remaining interval is right after a restart) and back. Never touches the disk itself; the
//! router calls the store.

use super::message::{Message, Origin};
use bytes::Bytes;
use holdfast_mqtt::{ByteStr, PublishProperties, QoS};
use holdfast_storage::kv::{StoredMessage, StoredProperties};
use std::time::{Duration, Instant};

/// A message as stored.
pub fn to_stored(msg: &Message, now: Instant) -> StoredMessage {
    let p = &msg.properties;
    let expiry_at = msg.expires_at.map(|at| {
        let left = at.saturating_duration_since(now).as_millis() as u64;
        crate::clock::frame_now_ms().saturating_add(left)
    });
    StoredMessage {
        topic: msg.topic.to_string(),
        payload: msg.payload.to_vec(),
        qos: msg.qos as u8,
        retain: msg.retain,
        properties: StoredProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_at_unix_ms: expiry_at,
            response_topic: p.response_topic.as_ref().map(|t| t.to_string()),
            correlation_data: p.correlation_data.as_ref().map(|d| d.to_vec()),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            content_type: p.content_type.as_ref().map(|t| t.to_string()),
        },
    }
}

/// A stored message back in memory; `None` when it expired while the gateway was down.
pub fn from_stored(s: StoredMessage, now: Instant) -> Option<Message> {
    let sp = s.properties;
    let expires_at = match sp.message_expiry_at_unix_ms {
        Some(at) => {
            let now_ms = crate::clock::frame_now_ms();
            if at <= now_ms {
                return None;
            }
            Some(now + Duration::from_millis(at - now_ms))
        }
        None => None,
    };
    let properties = PublishProperties {
        payload_format_indicator: sp.payload_format_indicator,
        // Rewritten from `expires_at` on every delivery.
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: sp.response_topic.map(ByteStr::from),
        correlation_data: sp.correlation_data.map(Bytes::from),
        user_properties: sp
            .user_properties
            .into_iter()
            .map(|(k, v)| (ByteStr::from(k), ByteStr::from(v)))
            .collect(),
        subscription_identifiers: Vec::new(),
        content_type: sp.content_type.map(ByteStr::from),
    };
    let mut message = Message::new(
        s.topic,
        s.payload,
        QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
        s.retain,
        properties,
        Origin::BROKER,
    );
    message.expires_at = expires_at;
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip_through_its_stored_form() {
        let now = Instant::now();
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            response_topic: Some(ByteStr::from("r")),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
            content_type: Some(ByteStr::from("text/plain")),
            ..PublishProperties::default()
        };
        let origin = Origin {
            session: Some(crate::broker::message::SessionId::test(7)),
            client_id: None,
        };
        let mut msg = Message::new(
            "a/b",
            &b"xyz"[..],
            QoS::AtLeastOnce,
            true,
            properties,
            origin,
        );
        msg.expires_at = Some(now + Duration::from_secs(60));
        let back = from_stored(to_stored(&msg, now), now).expect("not expired");
        assert_eq!(back.topic, msg.topic);
        assert_eq!(back.payload, msg.payload);
        assert_eq!(back.qos, msg.qos);
        assert!(back.retain);
        assert_eq!(
            back.properties.user_properties,
            msg.properties.user_properties
        );
        assert_eq!(back.properties.content_type, msg.properties.content_type);
        assert_eq!(back.publisher, None);
        let left = back.remaining_expiry(now).unwrap_or(0);
        assert!((58..=61).contains(&left), "{left}");
    }

    #[test]
    fn a_message_that_expired_while_stored_is_not_restored() {
        let now = Instant::now();
        let mut stored = to_stored(
            &Message::new(
                "t",
                &b"1"[..],
                QoS::AtMostOnce,
                true,
                PublishProperties::default(),
                Origin::BROKER,
            ),
            now,
        );
        stored.properties.message_expiry_at_unix_ms = Some(1);
        assert!(from_stored(stored, now).is_none());
    }
}
