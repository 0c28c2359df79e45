//! The bridge's MQTT client, MQTT 3.1.1 or 5, behind one small surface: rumqttc has a separate
//! client per version, and the link logic (window, acks, resends) must not care which.
//!
//! Owns the translation between rumqttc's types and the bridge's: options from the config
//! (client id, persistent session, keepalive, inflight, packet size, credentials, TLS with an
//! optional client certificate), the CONNACK check, outgoing publishes (with v5 properties
//! passed through), and incoming events reduced to what the link needs. It never decides what
//! to send or when; and it never reads the queue.

use crate::config::{BridgeConfig, BridgeProtocol};
use bytes::Bytes;
use holdfast_mqtt::{ByteStr, PublishProperties};
use rumqttc::{TlsConfiguration, Transport};
use std::time::Duration;

/// How long a TCP + TLS + CONNECT/CONNACK exchange may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Session expiry asked of an MQTT 5 cloud broker, so downlink subscriptions and messages
/// survive a reconnect the way a 3.1.1 clean-session-false session does (1 week).
const V5_SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;

/// One message for the cloud.
#[derive(Debug, Clone)]
pub(super) struct OutMsg {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) qos: u8,
    pub(super) retain: bool,
    /// Sent with MQTT 5 only (3.1.1 has no properties).
    pub(super) properties: PublishProperties,
}

/// One message from the cloud.
#[derive(Debug)]
pub(super) struct InMsg {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) properties: PublishProperties,
}

/// What the event loop reported, reduced to what the link acts on.
#[derive(Debug)]
pub(super) enum WireEvent {
    /// A PUBLISH left, with this packet id (0 for QoS 0), in submission order.
    Sent(u16),
    /// The cloud acknowledged this packet id (PUBACK for QoS 1, PUBCOMP for QoS 2);
    /// `refused` carries an MQTT 5 failure reason code.
    Acked { pkid: u16, refused: Option<String> },
    /// A message on a downlink subscription.
    Downlink(InMsg),
    /// The cloud refused this many downlink subscriptions.
    SubscriptionsRefused(usize),
    /// A downlink message that cannot be published locally, and why.
    BadDownlink(String),
    /// Anything else (pings, SUBACK successes, ...).
    Other,
}

/// Hands publishes to the event loop (cloneable; used by the feeder task).
#[derive(Clone)]
pub(super) enum Sender {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of one connection (owned by the poller task).
pub(super) enum Poller {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sender::V4(_) => "Sender::V4",
            Sender::V5(_) => "Sender::V5",
        })
    }
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Poller::V4(_) => "Poller::V4",
            Poller::V5(_) => "Poller::V5",
        })
    }
}

/// A fresh client for one connection attempt; reads the TLS files (so fixing them on disk
/// takes effect at the next attempt).
pub(super) fn new_client(
    cfg: &BridgeConfig,
    max_packet: usize,
    channel: usize,
) -> Result<(Sender, Poller), String> {
    let transport = transport(cfg)?;
    match cfg.protocol {
        BridgeProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(
                cfg.client_id.clone(),
                cfg.server.host.clone(),
                cfg.server.port,
            );
            o.set_clean_session(false);
            o.set_keep_alive(cfg.keepalive);
            o.set_inflight(cfg.max_inflight);
            o.set_max_packet_size(max_packet, max_packet + 64 * 1024);
            if let Some(user) = &cfg.username {
                o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, channel);
            Ok((Sender::V4(client), Poller::V4(Box::new(eventloop))))
        }
        BridgeProtocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(
                cfg.client_id.clone(),
                cfg.server.host.clone(),
                cfg.server.port,
            );
            o.set_clean_start(false);
            o.set_keep_alive(cfg.keepalive);
            o.set_outgoing_inflight_upper_limit(cfg.max_inflight);
            let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
            props.session_expiry_interval = Some(V5_SESSION_EXPIRY_SECS);
            props.max_packet_size = u32::try_from(max_packet).ok();
            o.set_connect_properties(props);
            if let Some(user) = &cfg.username {
                o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, channel);
            Ok((Sender::V5(client), Poller::V5(Box::new(eventloop))))
        }
    }
}

fn transport(cfg: &BridgeConfig) -> Result<Option<Transport>, String> {
    let Some(tls) = &cfg.tls else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read TLS {what} {}: {e}", path.display()))
    };
    let ca = read(&tls.ca, "CA file")?;
    let client_auth = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some((read(cert, "certificate")?, read(key, "key")?)),
        _ => None,
    };
    Ok(Some(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })))
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn props_out(p: &PublishProperties) -> Option<rumqttc::v5::mqttbytes::v5::PublishProperties> {
    let empty = p.payload_format_indicator.is_none()
        && p.message_expiry_interval.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
        && p.content_type.is_none();
    if empty {
        return None;
    }
    Some(rumqttc::v5::mqttbytes::v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic.as_ref().map(|t| t.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        subscription_identifiers: Vec::new(),
        content_type: p.content_type.as_ref().map(|t| t.to_string()),
    })
}

fn props_in(p: Option<rumqttc::v5::mqttbytes::v5::PublishProperties>) -> PublishProperties {
    let Some(p) = p else {
        return PublishProperties::default();
    };
    PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        response_topic: p.response_topic.map(ByteStr::from),
        correlation_data: p.correlation_data,
        user_properties: p
            .user_properties
            .into_iter()
            .map(|(k, v)| (ByteStr::from(k), ByteStr::from(v)))
            .collect(),
        content_type: p.content_type.map(ByteStr::from),
        ..PublishProperties::default()
    }
}

impl Sender {
    /// Queues a publish in rumqttc's request channel (waits while it is full). `Err` once the
    /// event loop is gone.
    pub(super) async fn publish(&self, m: OutMsg) -> Result<(), ()> {
        match self {
            Sender::V4(c) => c
                .publish_bytes(m.topic, qos4(m.qos), m.retain, m.payload)
                .await
                .map_err(|_| ()),
            Sender::V5(c) => match props_out(&m.properties) {
                Some(p) => c
                    .publish_bytes_with_properties(m.topic, qos5(m.qos), m.retain, m.payload, p)
                    .await
                    .map_err(|_| ()),
                None => c
                    .publish_bytes(m.topic, qos5(m.qos), m.retain, m.payload)
                    .await
                    .map_err(|_| ()),
            },
        }
    }

    /// Subscribes the downlink filters (already prefixed).
    pub(super) fn subscribe(&self, filters: Vec<String>, qos: u8) -> Result<(), String> {
        match self {
            Sender::V4(c) => c
                .try_subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, qos4(qos))),
                )
                .map_err(|e| format!("cannot subscribe: {e}")),
            Sender::V5(c) => c
                .try_subscribe_many(filters.into_iter().map(|f| {
                    // Retained messages only for a subscription the session did not
                    // have: a reconnect must not replay a retained command.
                    let mut filter = rumqttc::v5::mqttbytes::v5::Filter::new(f, qos5(qos));
                    filter.retain_forward_rule =
                        rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .map_err(|e| format!("cannot subscribe: {e}")),
        }
    }
}

impl Poller {
    /// Connects; `Ok(session_present)` once the cloud broker accepted the CONNECT.
    pub(super) async fn connect(&mut self) -> Result<bool, String> {
        let first = tokio::time::timeout(CONNECT_TIMEOUT, async {
            match self {
                Poller::V4(e) => match e.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(ack)))
                        if ack.code == rumqttc::ConnectReturnCode::Success =>
                    {
                        Ok(ack.session_present)
                    }
                    Ok(other) => Err(format!("unexpected first packet {other:?}")),
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        Err(format!("the cloud broker refused the connection: {code:?}"))
                    }
                    Err(e) => Err(e.to_string()),
                },
                Poller::V5(e) => match e.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(ack)))
                        if ack.code == rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success =>
                    {
                        Ok(ack.session_present)
                    }
                    Ok(other) => Err(format!("unexpected first packet {other:?}")),
                    Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                        Err(format!("the cloud broker refused the connection: {code:?}"))
                    }
                    Err(e) => Err(e.to_string()),
                },
            }
        })
        .await;
        first.unwrap_or_else(|_| Err(format!("no CONNACK within {CONNECT_TIMEOUT:?}")))
    }

    /// Puts a resend (DUP set) in front of everything else this connection sends.
    pub(super) fn push_resend(&mut self, m: OutMsg) {
        let dup = m.qos > 0;
        match self {
            Poller::V4(e) => {
                let mut p = rumqttc::Publish::from_bytes(m.topic, qos4(m.qos), m.payload);
                p.retain = m.retain;
                p.dup = dup;
                e.pending.push_back(rumqttc::Request::Publish(p));
            }
            Poller::V5(e) => {
                let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
                    m.topic,
                    qos5(m.qos),
                    m.payload,
                    props_out(&m.properties),
                );
                p.retain = m.retain;
                p.dup = dup;
                e.pending.push_back(rumqttc::v5::Request::Publish(p));
            }
        }
    }

    /// The next event; `Err` when the connection is gone.
    pub(super) async fn next(&mut self) -> Result<WireEvent, String> {
        match self {
            Poller::V4(e) => {
                use rumqttc::{Event, Incoming, Outgoing};
                Ok(match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => WireEvent::Sent(pkid),
                    Event::Incoming(Incoming::PubAck(a)) => WireEvent::Acked {
                        pkid: a.pkid,
                        refused: None,
                    },
                    Event::Incoming(Incoming::PubComp(c)) => WireEvent::Acked {
                        pkid: c.pkid,
                        refused: None,
                    },
                    Event::Incoming(Incoming::Publish(p)) => WireEvent::Downlink(InMsg {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos as u8,
                        retain: p.retain,
                        properties: PublishProperties::default(),
                    }),
                    Event::Incoming(Incoming::SubAck(ack)) => {
                        let refused = ack
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count();
                        WireEvent::SubscriptionsRefused(refused)
                    }
                    _ => WireEvent::Other,
                })
            }
            Poller::V5(e) => {
                use rumqttc::v5::mqttbytes::v5::{
                    PubAckReason, PubCompReason, SubscribeReasonCode,
                };
                use rumqttc::v5::{Event, Incoming};
                use rumqttc::Outgoing;
                Ok(match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => WireEvent::Sent(pkid),
                    Event::Incoming(Incoming::PubAck(a)) => WireEvent::Acked {
                        pkid: a.pkid,
                        refused: (!matches!(
                            a.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ))
                        .then(|| format!("{:?}", a.reason)),
                    },
                    Event::Incoming(Incoming::PubComp(c)) => WireEvent::Acked {
                        pkid: c.pkid,
                        refused: (!matches!(c.reason, PubCompReason::Success))
                            .then(|| format!("{:?}", c.reason)),
                    },
                    Event::Incoming(Incoming::Publish(p)) => {
                        match String::from_utf8(p.topic.to_vec()) {
                            Ok(topic) => WireEvent::Downlink(InMsg {
                                topic,
                                payload: p.payload,
                                qos: p.qos as u8,
                                retain: p.retain,
                                properties: props_in(p.properties),
                            }),
                            Err(_) => WireEvent::BadDownlink("topic is not UTF-8".to_owned()),
                        }
                    }
                    Event::Incoming(Incoming::SubAck(ack)) => {
                        let refused = ack
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .count();
                        WireEvent::SubscriptionsRefused(refused)
                    }
                    _ => WireEvent::Other,
                })
            }
        }
    }
}
