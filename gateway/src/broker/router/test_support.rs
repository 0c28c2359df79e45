//! What the router's tests share: a router with test limits, connect/subscribe/publish/drain
//! helpers, and the client's view of what was sent.

use crate::broker::message::*;
use crate::broker::router::*;
use crate::broker::session::*;
use crate::config::{MqueueFull, OwnerMismatch, SharedStrategy};
use bytes::Bytes;
use holdfast_mqtt::{
    reason, ByteStr, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions,
};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connection ids are unique in the process, as `Broker::next_conn_id` makes them.
pub(crate) static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Limits small enough to hit in a test, policies as the broker's defaults.
pub(crate) fn config() -> RouterConfig {
    RouterConfig {
        max_retained_bytes: usize::MAX,
        max_sessions: usize::MAX,
        max_mqueue_bytes: usize::MAX,
        max_queued_bytes_total: usize::MAX,
        max_topic_len: 65535,
        max_subscription_bytes_total: usize::MAX,
        max_mqueue_len: 100,
        mqueue_full: MqueueFull::Backpressure,
        slow_subscriber_timeout: Duration::from_secs(5),
        mqueue_store_qos0: false,
        retain_available: true,
        max_retained_messages: 100,
        max_retained_payload: 1024,
        shared_strategy: SharedStrategy::RoundRobin,
        max_topic_levels: 8,
        force_shutdown_mqueue_len: 0,
        force_shutdown_heap_size: 0,
    }
}

pub(crate) fn router() -> Router {
    Router::new(config())
}

/// CONNECT with an explicit inflight window; returns the router's answer and the new handle.
pub(crate) fn connect_with(
    r: &mut Router,
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
    window: usize,
) -> (ConnectResult, Arc<ConnControl>) {
    let (result, conn) = try_connect_with(r, client_id, clean_start, expiry, window);
    (result.expect("the router accepts this CONNECT"), conn)
}

/// As [`connect_with`], for a CONNECT the router may refuse.
pub(crate) fn try_connect_with(
    r: &mut Router,
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
    window: usize,
) -> (Result<ConnectResult, ConnectRefusal>, Arc<ConnControl>) {
    let (mut params, conn) = connect_params(client_id, clean_start, expiry);
    params.window = window;
    (r.connect(params), conn)
}

/// What a v5 CONNECT asks of the router, with a fresh connection handle: window 32, now,
/// an anonymous owner, mismatches refused. Tests change the fields they are about.
pub(crate) fn connect_params(
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
) -> (ConnectParams, Arc<ConnControl>) {
    let conn = ConnControl::new(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed));
    let params = ConnectParams {
        client_id: ClientId::from(ByteStr::from(client_id)),
        protocol: ProtocolVersion::V5,
        clean_start,
        session_expiry: expiry,
        window: 32,
        conn: conn.clone(),
        now: Instant::now(),
        owner: Owner::Anonymous,
        on_owner_mismatch: OwnerMismatch::Refuse,
    };
    (params, conn)
}

/// CONNECT with a window of 32.
pub(crate) fn connect(
    r: &mut Router,
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
) -> (SessionId, Arc<ConnControl>) {
    let (result, conn) = connect_with(r, client_id, clean_start, expiry, 32);
    (result.session_id, conn)
}

/// The connection ends without a will and without changing the session expiry.
pub(crate) fn disconnect(r: &mut Router, sid: SessionId, conn: &ConnControl, now: Instant) {
    r.disconnect(sid, conn.conn_id, None, None, now);
}

/// A message as a client (or the broker, with `publisher = None`) would publish it.
pub(crate) fn msg(
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    publisher: Option<SessionId>,
) -> Arc<Message> {
    let origin = Origin {
        session: publisher,
        client_id: None,
    };
    Arc::new(Message::new(
        topic,
        Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        PublishProperties::default(),
        origin,
    ))
}

pub(crate) fn msg_expiring(
    topic: &str,
    payload: &str,
    qos: QoS,
    expires_at: Instant,
) -> Arc<Message> {
    let mut m = (*msg(topic, payload, qos, false, None)).clone();
    m.expires_at = Some(expires_at);
    Arc::new(m)
}

/// Everything the session has ready for connection `conn_id` at `now`.
pub(crate) fn drain(r: &mut Router, sid: SessionId, conn_id: u64, now: Instant) -> Vec<Outgoing> {
    let mut out = Vec::new();
    r.take_outgoing(sid, conn_id, 10_000, now, &mut out);
    out
}

pub(crate) fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// SUBSCRIBE to one filter; returns the SUBACK reason.
pub(crate) fn sub(r: &mut Router, sid: SessionId, filter: &str, qos: QoS, now: Instant) -> u8 {
    sub_opts(r, sid, filter, opts(qos), None, now)
}

pub(crate) fn sub_opts(
    r: &mut Router,
    sid: SessionId,
    filter: &str,
    options: SubscriptionOptions,
    id: Option<u32>,
    now: Instant,
) -> u8 {
    let reasons = r.subscribe(
        sid,
        &[(ByteStr::from(filter), options)],
        id.and_then(NonZeroU32::new),
        now,
    );
    assert_eq!(reasons.len(), 1);
    reasons[0]
}

pub(crate) fn unsub(r: &mut Router, sid: SessionId, filter: &str) -> u8 {
    r.unsubscribe(sid, &[ByteStr::from(filter)])[0]
}

/// One PUBLISH as the client would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) topic: String,
    pub(crate) payload: String,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) packet_id: PacketId,
    pub(crate) dup: bool,
    pub(crate) subscription_id: Option<u32>,
}

pub(crate) fn to_sent(delivery: &Delivery, packet_id: PacketId, dup: bool) -> Sent {
    Sent {
        topic: delivery.message.topic.to_string(),
        payload: String::from_utf8_lossy(&delivery.message.payload).into_owned(),
        qos: delivery.qos,
        retain: delivery.retain,
        packet_id,
        dup,
        subscription_id: delivery.subscription_id.map(NonZeroU32::get),
    }
}

/// The PUBLISHes of a drain; fails on a PUBREL.
pub(crate) fn publishes(out: &[Outgoing]) -> Vec<Sent> {
    out.iter()
        .map(|o| match o {
            Outgoing::Publish {
                delivery,
                packet_id,
                dup,
            } => to_sent(delivery, *packet_id, *dup),
            Outgoing::PubRel(id) => panic!("unexpected PUBREL {id}"),
        })
        .collect()
}

/// Drains and returns just the payloads.
pub(crate) fn drained_payloads(
    r: &mut Router,
    sid: SessionId,
    conn_id: u64,
    now: Instant,
) -> Vec<String> {
    publishes(&drain(r, sid, conn_id, now))
        .into_iter()
        .map(|s| s.payload)
        .collect()
}

/// Acknowledges a delivery the way a well-behaved client does (PUBACK, or PUBREC + PUBCOMP).
pub(crate) fn ack(r: &mut Router, sid: SessionId, s: &Sent) {
    match s.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => assert!(r.puback(sid, s.packet_id), "puback {}", s.packet_id),
        QoS::ExactlyOnce => {
            assert!(r.pubrec(sid, s.packet_id, reason::SUCCESS));
            assert!(r.pubcomp(sid, s.packet_id));
        }
    }
}
