//! Unit tests of the router's sans-IO core: no sockets, time passed in.
//!
//! Each test drives a [`Router`] the way a connection task would: `connect`, `subscribe`,
//! `publish`, `take_outgoing` (through [`drain`]), the acks, `disconnect` and `tick(now)`, and
//! checks what a client would see. Tests marked `#[ignore = "bug: ..."]` state the correct
//! behaviour (MQTT 5.0, or EMQX / mosquitto where the specification leaves room) and fail today.

use super::message::*;
use super::router::*;
use super::session::*;
use crate::config::OwnerMismatch;
use crate::config::SharedStrategy;
use bytes::Bytes;
use holdfast_mqtt::{
    reason, ByteStr, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions,
};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Connection ids are unique in the process, as `Broker::next_conn_id` makes them.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

const HOUR: Duration = Duration::from_secs(3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Limits small enough to hit in a test, policies as the broker's defaults.
fn config() -> RouterConfig {
    RouterConfig {
        max_retained_bytes: usize::MAX,
        max_sessions: usize::MAX,
        max_mqueue_bytes: usize::MAX,
        max_queued_bytes_total: usize::MAX,
        max_topic_len: 65535,
        max_subscription_bytes_total: usize::MAX,
        max_mqueue_len: 100,
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

fn router() -> Router {
    Router::new(config())
}

/// CONNECT with an explicit inflight window; returns the router's answer and the new handle.
fn connect_with(
    r: &mut Router,
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
    window: usize,
) -> (ConnectResult, Arc<ConnControl>) {
    let conn = ConnControl::new(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed));
    let result = r.connect(ConnectParams {
        client_id: ByteStr::from(client_id),
        protocol: ProtocolVersion::V5,
        clean_start,
        session_expiry: expiry,
        window,
        conn: conn.clone(),
        now: Instant::now(),
        owner: Owner::Anonymous,
        on_owner_mismatch: OwnerMismatch::Refuse,
    });
    (result, conn)
}

/// CONNECT with a window of 32.
fn connect(
    r: &mut Router,
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
) -> (SessionId, Arc<ConnControl>) {
    let (result, conn) = connect_with(r, client_id, clean_start, expiry, 32);
    (result.session_id, conn)
}

/// The connection ends without a will and without changing the session expiry.
fn disconnect(r: &mut Router, sid: SessionId, conn: &ConnControl, now: Instant) {
    r.disconnect(sid, conn.conn_id, None, None, now);
}

/// A message as a client (or the broker, with `publisher = None`) would publish it.
fn msg(
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

fn msg_expiring(topic: &str, payload: &str, qos: QoS, expires_at: Instant) -> Arc<Message> {
    let mut m = (*msg(topic, payload, qos, false, None)).clone();
    m.expires_at = Some(expires_at);
    Arc::new(m)
}

/// Everything the session has ready for connection `conn_id` at `now`.
fn drain(r: &mut Router, sid: SessionId, conn_id: u64, now: Instant) -> Vec<Outgoing> {
    let mut out = Vec::new();
    r.take_outgoing(sid, conn_id, 10_000, now, &mut out);
    out
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// SUBSCRIBE to one filter; returns the SUBACK reason.
fn sub(r: &mut Router, sid: SessionId, filter: &str, qos: QoS, now: Instant) -> u8 {
    sub_opts(r, sid, filter, opts(qos), None, now)
}

fn sub_opts(
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

fn unsub(r: &mut Router, sid: SessionId, filter: &str) -> u8 {
    r.unsubscribe(sid, &[ByteStr::from(filter)])[0]
}

/// One PUBLISH as the client would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    topic: String,
    payload: String,
    qos: QoS,
    retain: bool,
    packet_id: u16,
    dup: bool,
    subscription_id: Option<u32>,
}

fn to_sent(delivery: &Delivery, packet_id: u16, dup: bool) -> Sent {
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
fn publishes(out: &[Outgoing]) -> Vec<Sent> {
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
fn drained_payloads(r: &mut Router, sid: SessionId, conn_id: u64, now: Instant) -> Vec<String> {
    publishes(&drain(r, sid, conn_id, now))
        .into_iter()
        .map(|s| s.payload)
        .collect()
}

/// Acknowledges a delivery the way a well-behaved client does (PUBACK, or PUBREC + PUBCOMP).
fn ack(r: &mut Router, sid: SessionId, s: &Sent) {
    match s.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => assert!(r.puback(sid, s.packet_id), "puback {}", s.packet_id),
        QoS::ExactlyOnce => {
            assert!(r.pubrec(sid, s.packet_id, reason::SUCCESS));
            assert!(r.pubcomp(sid, s.packet_id));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

#[test]
fn a_publish_reaches_every_matching_session_and_no_other() {
    let t0 = Instant::now();
    let mut r = router();
    let (plus, c_plus) = connect(&mut r, "plus", true, Duration::ZERO);
    let (hash, c_hash) = connect(&mut r, "hash", true, Duration::ZERO);
    let (exact, c_exact) = connect(&mut r, "exact", true, Duration::ZERO);
    let (root, c_root) = connect(&mut r, "root", true, Duration::ZERO);
    let (other, c_other) = connect(&mut r, "other", true, Duration::ZERO);
    let (sys, c_sys) = connect(&mut r, "sys", true, Duration::ZERO);
    assert_eq!(sub(&mut r, plus, "a/+/c", QoS::AtMostOnce, t0), 0);
    assert_eq!(sub(&mut r, hash, "a/#", QoS::AtLeastOnce, t0), 1);
    assert_eq!(sub(&mut r, exact, "a/b/c", QoS::ExactlyOnce, t0), 2);
    assert_eq!(sub(&mut r, root, "#", QoS::AtMostOnce, t0), 0);
    assert_eq!(sub(&mut r, other, "a/b", QoS::AtMostOnce, t0), 0);
    assert_eq!(sub(&mut r, sys, "$SYS/#", QoS::AtMostOnce, t0), 0);

    assert_eq!(
        r.publish(msg("a/b/c", "1", QoS::ExactlyOnce, false, None), t0),
        4
    );
    let got = |r: &mut Router, sid, c: &ConnControl| drained_payloads(r, sid, c.conn_id, t0);
    assert_eq!(got(&mut r, plus, &c_plus), ["1"]);
    assert_eq!(got(&mut r, hash, &c_hash), ["1"]);
    assert_eq!(got(&mut r, exact, &c_exact), ["1"]);
    assert_eq!(got(&mut r, root, &c_root), ["1"]);
    assert!(got(&mut r, other, &c_other).is_empty());
    assert!(got(&mut r, sys, &c_sys).is_empty());

    // `#` matches its parent level; `+` needs exactly one level.
    assert_eq!(
        r.publish(msg("a", "2", QoS::AtMostOnce, false, None), t0),
        2
    );
    assert_eq!(got(&mut r, hash, &c_hash), ["2"]);
    assert_eq!(got(&mut r, root, &c_root), ["2"]);
    assert!(got(&mut r, plus, &c_plus).is_empty());

    // A `$` topic is not matched by a leading wildcard (MQTT 5.0 §4.7.2), only by `$SYS/#`.
    assert_eq!(
        r.publish(msg("$SYS/x", "3", QoS::AtMostOnce, false, None), t0),
        1
    );
    assert!(got(&mut r, root, &c_root).is_empty());
    assert_eq!(got(&mut r, sys, &c_sys), ["3"]);

    assert_eq!(
        r.publish(msg("$nobody/here", "4", QoS::AtMostOnce, false, None), t0),
        0
    );
    assert_eq!(r.counters().dropped_no_subscribers, 1);
    assert_eq!(r.counters().messages_routed, 4);
}

#[test]
fn a_delivery_gets_the_lower_of_the_published_and_the_subscribed_qos() {
    let t0 = Instant::now();
    let mut r = router();
    let (s0, c0) = connect(&mut r, "q0", true, Duration::ZERO);
    let (s2, c2) = connect(&mut r, "q2", true, Duration::ZERO);
    sub(&mut r, s0, "t", QoS::AtMostOnce, t0);
    sub(&mut r, s2, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "x", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "y", QoS::AtLeastOnce, false, None), t0);
    let low = publishes(&drain(&mut r, s0, c0.conn_id, t0));
    let high = publishes(&drain(&mut r, s2, c2.conn_id, t0));
    assert_eq!(
        low.iter().map(|s| (s.qos, s.packet_id)).collect::<Vec<_>>(),
        [(QoS::AtMostOnce, 0), (QoS::AtMostOnce, 0)]
    );
    assert_eq!(
        high.iter().map(|s| s.qos).collect::<Vec<_>>(),
        [QoS::ExactlyOnce, QoS::AtLeastOnce]
    );
    assert!(high.iter().all(|s| s.packet_id != 0));
}

// ---------------------------------------------------------------------------------------------
// Ordering, inflight window, queue
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_from_one_publisher_on_one_topic_are_drained_in_order_whatever_their_qos() {
    let t0 = Instant::now();
    let mut r = router();
    let (p, _pc) = connect(&mut r, "pub", true, Duration::ZERO);
    let (res, c) = connect_with(&mut r, "sub", true, Duration::ZERO, 2);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    let qos = [1, 1, 1, 0, 2, 0, 1, 0, 2, 1, 0, 0, 2];
    for (i, q) in qos.iter().enumerate() {
        let q = QoS::from_u8(*q).unwrap();
        r.publish(msg("t", &i.to_string(), q, false, Some(p)), t0);
    }

    // Window 2: two QoS 1 messages fill it, the third waits, and the QoS 0 behind it must
    // wait too rather than overtake it.
    let first = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(
        first.iter().map(|s| s.payload.as_str()).collect::<Vec<_>>(),
        ["0", "1"]
    );
    assert!(drain(&mut r, s, c.conn_id, t0).is_empty());

    // One PUBACK opens one slot: the waiting QoS 1 takes it, the QoS 0 behind it follows, and
    // the QoS 2 after that waits for the next slot.
    ack(&mut r, s, &first[0]);
    let second = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(
        second
            .iter()
            .map(|s| s.payload.as_str())
            .collect::<Vec<_>>(),
        ["2", "3"]
    );

    let mut received: Vec<Sent> = first.into_iter().chain(second).collect();
    let mut unacked: Vec<Sent> = received[1..]
        .iter()
        .filter(|s| s.qos != QoS::AtMostOnce)
        .cloned()
        .collect();
    for _ in 0..qos.len() {
        for delivered in unacked.drain(..) {
            ack(&mut r, s, &delivered);
        }
        let more = publishes(&drain(&mut r, s, c.conn_id, t0));
        assert!(more.iter().filter(|m| m.qos != QoS::AtMostOnce).count() <= 2);
        unacked.extend(more.iter().filter(|m| m.qos != QoS::AtMostOnce).cloned());
        received.extend(more);
    }
    let seq: Vec<usize> = received
        .iter()
        .map(|s| s.payload.parse().unwrap())
        .collect();
    assert_eq!(seq, (0..qos.len()).collect::<Vec<_>>());
    assert!(received.iter().all(|s| !s.dup));
    for (sent, q) in received.iter().zip(qos) {
        assert_eq!(sent.qos as u8, q);
    }
}

#[test]
fn the_inflight_window_caps_unacknowledged_deliveries_and_puback_opens_it() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c) = connect_with(&mut r, "sub", true, Duration::ZERO, 3);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    for i in 0..5 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    let first = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(first.len(), 3);
    let ids: HashSet<u16> = first.iter().map(|s| s.packet_id).collect();
    assert_eq!(ids.len(), 3, "distinct packet ids");
    assert!(!ids.contains(&0));
    assert_eq!(r.sizes().inflight, 3);
    assert_eq!(r.sizes().queued, 2);
    assert!(drain(&mut r, s, c.conn_id, t0).is_empty(), "window full");

    assert!(!r.puback(s, 999), "unknown packet id");
    assert!(
        r.puback(s, first[1].packet_id),
        "acks may come out of order"
    );
    assert!(
        !r.puback(s, first[1].packet_id),
        "a second PUBACK finds nothing"
    );
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["3"]);
    assert!(drain(&mut r, s, c.conn_id, t0).is_empty());
    assert!(r.puback(s, first[0].packet_id));
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["4"]);
    assert_eq!(r.counters().deliveries_sent, 5);
}

#[test]
fn take_outgoing_stops_at_its_budget_and_says_more_is_ready() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "sub", true, Duration::ZERO);
    sub(&mut r, s, "t", QoS::AtMostOnce, t0);
    for i in 0..5 {
        r.publish(msg("t", &i.to_string(), QoS::AtMostOnce, false, None), t0);
    }
    let mut out = Vec::new();
    assert!(r.take_outgoing(s, c.conn_id, 2, t0, &mut out));
    assert_eq!(out.len(), 2);
    out.clear();
    assert!(!r.take_outgoing(s, c.conn_id, 10, t0, &mut out));
    assert_eq!(publishes(&out).len(), 3);
}

#[test]
fn packet_ids_wrap_after_65535_and_skip_ids_still_inflight() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c) = connect_with(&mut r, "sub", true, Duration::ZERO, 2);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "held", QoS::AtLeastOnce, false, None), t0);
    let held = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(held[0].packet_id, 1);
    let mut seen = Vec::new();
    for i in 0..u16::MAX as usize + 2 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
        let out = publishes(&drain(&mut r, s, c.conn_id, t0));
        assert_eq!(out.len(), 1);
        let id = out[0].packet_id;
        assert_ne!(id, 0, "0 is not a packet id");
        assert_ne!(id, 1, "id 1 is still inflight");
        seen.push(id);
        assert!(r.puback(s, id));
    }
    assert_eq!(&seen[..2], [2, 3]);
    // After 65535 it wraps to 1, which is taken, so 2.
    let wrap = seen.iter().position(|&id| id == u16::MAX).unwrap();
    assert_eq!(seen[wrap + 1], 2);
}

#[test]
fn force_shutdown_closes_a_connected_client_whose_queue_reaches_the_limit() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_mqueue_len: 10,
        force_shutdown_mqueue_len: 3,
        ..config()
    });
    // A window of 1: the first message goes in flight, the rest queue.
    let (res, c) = connect_with(&mut r, "slow", true, Duration::ZERO, 1);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    let mut out = Vec::new();
    r.publish(msg("t", "0", QoS::AtLeastOnce, false, None), t0);
    r.take_outgoing(s, c.conn_id, 10, t0, &mut out);
    assert_eq!(out.len(), 1);
    for i in 1..3 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    assert!(!c.is_closing(), "two queued: below the limit");
    r.publish(msg("t", "3", QoS::AtLeastOnce, false, None), t0);
    assert!(c.is_closing());
    assert_eq!(
        c.close_reason.load(Ordering::Relaxed),
        reason::QUOTA_EXCEEDED
    );
    assert_eq!(r.counters().dropped_queue_full, 0, "nothing dropped");
}

#[test]
fn force_shutdown_closes_a_client_whose_queued_bytes_reach_max_heap_size() {
    let t0 = Instant::now();
    let payload = "x".repeat(1000);
    // Each delivery holds its topic, its payload and a fixed overhead: ~1.1 KB here.
    let one = msg("t", &payload, QoS::AtLeastOnce, false, None);
    let per = one.topic.len() + one.payload.len() + 128;
    let mut r = Router::new(RouterConfig {
        max_mqueue_len: 1000,
        force_shutdown_heap_size: 5 * per,
        ..config()
    });
    let (res, c) = connect_with(&mut r, "slow", true, Duration::ZERO, 2);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    // QoS 0 sent at once and acknowledged QoS 1 free what they held: the client keeps up.
    let mut out = Vec::new();
    for _ in 0..20 {
        r.publish(msg("t", &payload, QoS::AtMostOnce, false, None), t0);
        r.publish(msg("t", &payload, QoS::AtLeastOnce, false, None), t0);
        out.clear();
        r.take_outgoing(s, c.conn_id, 10, t0, &mut out);
        for o in &out {
            if let Outgoing::Publish { packet_id, .. } = o {
                if *packet_id != 0 {
                    assert!(r.puback(s, *packet_id));
                }
            }
        }
    }
    assert!(!c.is_closing(), "a client that keeps up holds nothing");
    // Now it stops reading: 2 in flight + 2 queued are below the limit, the 5th reaches it.
    for _ in 0..4 {
        r.publish(msg("t", &payload, QoS::AtLeastOnce, false, None), t0);
    }
    out.clear();
    r.take_outgoing(s, c.conn_id, 10, t0, &mut out);
    assert_eq!(out.len(), 2, "the window is 2");
    assert!(!c.is_closing(), "4 held: below the limit");
    r.publish(msg("t", &payload, QoS::AtLeastOnce, false, None), t0);
    assert!(c.is_closing());
    assert_eq!(
        c.close_reason.load(Ordering::Relaxed),
        reason::QUOTA_EXCEEDED
    );
}

#[test]
fn a_full_queue_drops_the_oldest_and_counts_it() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_mqueue_len: 3,
        ..config()
    });
    let (s, c) = connect(&mut r, "sub", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    for i in 0..5 {
        assert_eq!(
            r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0),
            1
        );
    }
    assert_eq!(r.counters().dropped_queue_full, 2);
    assert_eq!(r.sizes().queued, 3);
    let (res, c) = connect_with(&mut r, "sub", false, HOUR, 32);
    assert!(res.session_present);
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["2", "3", "4"]);

    // The same holds for a connected session whose window is blocked.
    let (res, c) = connect_with(&mut r, "sub2", true, Duration::ZERO, 1);
    let s2 = res.session_id;
    sub(&mut r, s2, "u", QoS::AtLeastOnce, t0);
    for i in 0..6 {
        r.publish(msg("u", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    // Nothing was drained: the queue kept the last 3 of 6, and the window of 1 lets one out.
    assert_eq!(r.counters().dropped_queue_full, 5);
    assert_eq!(drained_payloads(&mut r, s2, c.conn_id, t0), ["3"]);
}

#[test]
fn qos0_is_not_queued_for_offline_sessions_unless_configured() {
    let t0 = Instant::now();
    for store_qos0 in [false, true] {
        let mut r = Router::new(RouterConfig {
            mqueue_store_qos0: store_qos0,
            ..config()
        });
        let (s, c) = connect(&mut r, "sub", false, HOUR);
        sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
        // Queued while connected but not yet sent, then the connection drops.
        r.publish(msg("t", "live0", QoS::AtMostOnce, false, None), t0);
        r.publish(msg("t", "live1", QoS::AtLeastOnce, false, None), t0);
        disconnect(&mut r, s, &c, t0);
        r.publish(msg("t", "off0", QoS::AtMostOnce, false, None), t0);
        r.publish(msg("t", "off1", QoS::AtLeastOnce, false, None), t0);
        let (_, c) = connect(&mut r, "sub", false, HOUR);
        let got = drained_payloads(&mut r, s, c.conn_id, t0);
        if store_qos0 {
            assert_eq!(got, ["live0", "live1", "off0", "off1"]);
            assert_eq!(r.counters().dropped_qos0_offline, 0);
        } else {
            assert_eq!(got, ["live1", "off1"]);
            assert_eq!(r.counters().dropped_qos0_offline, 2);
        }
    }
}

#[test]
fn a_qos0_message_dropped_for_an_offline_subscriber_is_not_counted_as_having_no_subscribers() {
    // EMQX counts this as `delivery.dropped.qos0_msg` only; `messages.dropped.no_subscribers` is
    // for messages that matched no route. `publish` returning 0 also makes the connection
    // answer a v5 publisher with 0x10 "No matching subscribers" although a subscriber exists.
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "sub", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    r.publish(msg("t", "x", QoS::AtMostOnce, false, None), t0);
    assert_eq!(r.counters().dropped_qos0_offline, 1);
    assert_eq!(r.counters().dropped_no_subscribers, 0);
}

#[test]
fn expired_messages_are_skipped_at_drain_time_and_counted() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "sub", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    r.publish(
        msg_expiring("t", "short", QoS::AtLeastOnce, t0 + secs(5)),
        t0,
    );
    r.publish(
        msg_expiring("t", "exact", QoS::AtMostOnce, t0 + secs(6)),
        t0,
    );
    r.publish(
        msg_expiring("t", "long", QoS::AtLeastOnce, t0 + secs(60)),
        t0,
    );
    r.publish(msg("t", "forever", QoS::AtLeastOnce, false, None), t0);
    // At t0+6 "exact" has run out too: expiry is inclusive.
    let out = publishes(&drain(&mut r, s, c.conn_id, t0 + secs(6)));
    assert_eq!(
        out.iter().map(|s| s.payload.as_str()).collect::<Vec<_>>(),
        ["long", "forever"]
    );
    assert_eq!(r.counters().dropped_expired, 2);
    assert_eq!(r.counters().deliveries_sent, 2);

    // Expiry also runs while the session is offline.
    disconnect(&mut r, s, &c, t0 + secs(6));
    r.publish(
        msg_expiring("t", "offline", QoS::AtLeastOnce, t0 + secs(10)),
        t0 + secs(6),
    );
    let (_, c) = connect(&mut r, "sub", false, HOUR);
    let out = drain(&mut r, s, c.conn_id, t0 + secs(11));
    // Only the two inflight resends; the expired queued message is gone.
    assert_eq!(out.len(), 2);
    assert!(publishes(&out).iter().all(|s| s.dup));
    assert_eq!(r.counters().dropped_expired, 3);
}

// ---------------------------------------------------------------------------------------------
// Sessions: resume, QoS 2, clean start, expiry
// ---------------------------------------------------------------------------------------------

#[test]
fn a_resumed_session_resends_inflight_with_dup_before_new_messages() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c1) = connect_with(&mut r, "sub", false, HOUR, 3);
    let s = res.session_id;
    assert!(!res.session_present);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    for i in 0..5 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    let sent = publishes(&drain(&mut r, s, c1.conn_id, t0));
    assert_eq!(sent.len(), 3);
    disconnect(&mut r, s, &c1, t0);
    r.publish(msg("t", "5", QoS::AtLeastOnce, false, None), t0);
    r.take_wakeups();

    let (res, c2) = connect_with(&mut r, "sub", false, HOUR, 3);
    assert_eq!(res.session_id, s);
    assert!(res.session_present);
    assert!(
        res.replaced.is_none(),
        "the old connection had already gone"
    );
    assert!(!res.discarded);
    let wake = r.take_wakeups();
    assert_eq!(wake.len(), 1);
    assert!(
        Arc::ptr_eq(&wake[0], &c2),
        "the new connection is woken to resend"
    );

    // The old connection can no longer drain the session.
    assert!(drain(&mut r, s, c1.conn_id, t0).is_empty());

    let out = publishes(&drain(&mut r, s, c2.conn_id, t0));
    let resent: Vec<_> = out[..3]
        .iter()
        .map(|s| (s.payload.as_str(), s.packet_id, s.dup))
        .collect();
    let expected: Vec<_> = sent
        .iter()
        .map(|s| (s.payload.as_str(), s.packet_id, true))
        .collect();
    assert_eq!(resent, expected);
    // The window is full with the resent three; the queued ones follow as acks come in.
    assert_eq!(out.len(), 3);
    for s_ in &out {
        ack(&mut r, s, s_);
    }
    let rest = publishes(&drain(&mut r, s, c2.conn_id, t0));
    assert_eq!(
        rest.iter()
            .map(|s| (s.payload.as_str(), s.dup))
            .collect::<Vec<_>>(),
        [("3", false), ("4", false), ("5", false)]
    );
    // A resend happens once per reconnect, not on every drain.
    assert!(drain(&mut r, s, c2.conn_id, t0).is_empty());
}

#[test]
fn qos2_outbound_moves_from_pubrec_to_pubcomp_and_resends_pubrel_after_reconnect() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c1) = connect(&mut r, "sub", false, HOUR);
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "a", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "b", QoS::ExactlyOnce, false, None), t0);
    let sent = publishes(&drain(&mut r, s, c1.conn_id, t0));
    let (a, b) = (sent[0].packet_id, sent[1].packet_id);
    assert!(sent.iter().all(|s| s.qos == QoS::ExactlyOnce));

    assert!(!r.puback(s, a), "PUBACK does not answer a QoS 2 PUBLISH");
    assert!(!r.pubcomp(s, a), "PUBCOMP before PUBREC finds nothing");
    assert!(r.pubrec(s, a, reason::SUCCESS));
    assert!(
        r.pubrec(s, a, reason::SUCCESS),
        "a repeated PUBREC is answered again"
    );
    assert_eq!(
        r.sizes().inflight,
        2,
        "a PUBREL awaiting PUBCOMP keeps its slot"
    );

    disconnect(&mut r, s, &c1, t0);
    let (_, c2) = connect(&mut r, "sub", false, HOUR);
    let out = drain(&mut r, s, c2.conn_id, t0);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Outgoing::PubRel(id) if id == a));
    match &out[1] {
        Outgoing::Publish {
            delivery,
            packet_id,
            dup,
        } => {
            assert_eq!((*packet_id, *dup), (b, true));
            assert_eq!(&delivery.message.payload[..], b"b");
        }
        other => panic!("expected the PUBLISH of b again, got {other:?}"),
    }
    assert!(r.pubcomp(s, a));
    assert!(!r.pubcomp(s, a));
    assert!(r.pubrec(s, b, reason::SUCCESS));
    assert!(r.pubcomp(s, b));
    assert_eq!(r.sizes().inflight, 0);
}

#[test]
fn a_pubrec_with_an_error_reason_ends_the_exchange() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c) = connect_with(&mut r, "sub", true, Duration::ZERO, 1);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "a", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "b", QoS::ExactlyOnce, false, None), t0);
    let a = publishes(&drain(&mut r, s, c.conn_id, t0))[0].packet_id;
    assert!(r.pubrec(s, a, reason::UNSPECIFIED_ERROR));
    assert_eq!(r.sizes().inflight, 0);
    assert!(!r.pubcomp(s, a));
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["b"]);
}

#[test]
fn discard_inflight_frees_the_slot_whatever_the_handshake_state() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c) = connect_with(&mut r, "sub", false, HOUR, 2);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "q1", QoS::AtLeastOnce, false, None), t0);
    r.publish(msg("t", "q2", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "next", QoS::AtLeastOnce, false, None), t0);
    let sent = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(sent.len(), 2);
    assert!(r.pubrec(s, sent[1].packet_id, reason::SUCCESS));
    assert!(r.discard_inflight(s, sent[1].packet_id), "awaiting PUBCOMP");
    assert!(r.discard_inflight(s, sent[0].packet_id), "awaiting PUBACK");
    assert!(!r.discard_inflight(s, sent[0].packet_id));
    assert!(!r.discard_inflight(999, 1), "unknown session");
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["next"]);
    // Nothing discarded comes back after a reconnect.
    disconnect(&mut r, s, &c, t0);
    let (_, c) = connect(&mut r, "sub", false, HOUR);
    let resent = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(
        resent
            .iter()
            .map(|s| (s.payload.as_str(), s.dup))
            .collect::<Vec<_>>(),
        [("next", true)]
    );
}

#[test]
fn receive_qos2_detects_duplicates_and_enforces_max_awaiting() {
    let mut r = router();
    let (s, c) = connect(&mut r, "pub", false, HOUR);
    assert_eq!(r.receive_qos2(s, 1, 2), Qos2Receive::New);
    assert_eq!(r.receive_qos2(s, 1, 2), Qos2Receive::Duplicate);
    assert_eq!(r.receive_qos2(s, 2, 2), Qos2Receive::New);
    assert_eq!(r.receive_qos2(s, 3, 2), Qos2Receive::Full);
    assert_eq!(
        r.receive_qos2(s, 1, 2),
        Qos2Receive::Duplicate,
        "a resend is recognised even when full"
    );

    // PUBREL releases the id: the same id is new again and a slot is free.
    assert!(r.pubrel(s, 1));
    assert!(!r.pubrel(s, 1), "a second PUBREL finds nothing");
    assert!(!r.pubrel(s, 42));
    assert_eq!(r.receive_qos2(s, 3, 2), Qos2Receive::New);
    assert_eq!(r.receive_qos2(s, 1, 2), Qos2Receive::Full);

    // The ids awaiting PUBREL are session state: they survive a resume (MQTT 5.0 §4.1).
    let t0 = Instant::now();
    disconnect(&mut r, s, &c, t0);
    let (s2, _) = connect(&mut r, "pub", false, HOUR);
    assert_eq!(s2, s);
    assert_eq!(r.receive_qos2(s, 2, 2), Qos2Receive::Duplicate);
    assert!(r.pubrel(s, 2));

    // ...and go with the session on clean start.
    let (s3, _) = connect(&mut r, "pub", true, HOUR);
    assert_eq!(r.receive_qos2(s3, 3, 2), Qos2Receive::New);
    assert_eq!(
        r.receive_qos2(999, 1, 2),
        Qos2Receive::Full,
        "unknown session"
    );
}

#[test]
fn clean_start_discards_the_old_session_and_returns_the_replaced_connection() {
    let t0 = Instant::now();
    let mut r = router();
    let (old, c_old) = connect(&mut r, "dev", false, HOUR);
    sub(&mut r, old, "t", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "1", QoS::AtLeastOnce, false, None), t0);
    r.publish(msg("t", "2", QoS::AtLeastOnce, false, None), t0);
    drain(&mut r, old, c_old.conn_id, t0);
    r.publish(msg("t", "3", QoS::AtLeastOnce, false, None), t0);
    assert_eq!(r.receive_qos2(old, 7, 10), Qos2Receive::New);

    let (res, c_new) = connect_with(&mut r, "dev", true, HOUR, 32);
    assert!(res.discarded);
    assert!(!res.session_present);
    assert_ne!(res.session_id, old);
    let replaced = res.replaced.expect("the serving connection is handed back");
    assert!(Arc::ptr_eq(&replaced, &c_old));
    assert_eq!(
        r.counters().dropped_session_discarded,
        3,
        "two inflight and one queued"
    );
    let sizes = r.sizes();
    assert_eq!(
        (sizes.sessions, sizes.connected, sizes.subscriptions),
        (1, 1, 0)
    );
    assert_eq!(
        r.publish(msg("t", "4", QoS::AtLeastOnce, false, None), t0),
        0
    );
    assert_eq!(r.receive_qos2(res.session_id, 7, 10), Qos2Receive::New);

    // The replaced connection's late DISCONNECT touches nothing.
    disconnect(&mut r, old, &c_old, t0);
    r.disconnect(
        res.session_id,
        c_old.conn_id,
        None,
        Some(Duration::ZERO),
        t0,
    );
    assert_eq!(r.sizes().connected, 1);
    assert!(drain(&mut r, res.session_id, c_old.conn_id, t0).is_empty());
    assert!(drain(&mut r, res.session_id, c_new.conn_id, t0).is_empty());
}

#[test]
fn a_resuming_connect_takes_over_a_connected_session() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c_old) = connect(&mut r, "dev", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "1", QoS::AtLeastOnce, false, None), t0);
    let first = publishes(&drain(&mut r, s, c_old.conn_id, t0));

    let (res, c_new) = connect_with(&mut r, "dev", false, HOUR, 32);
    assert_eq!(res.session_id, s);
    assert!(res.session_present);
    assert!(!res.discarded);
    assert!(Arc::ptr_eq(res.replaced.as_ref().unwrap(), &c_old));

    // The old connection's end neither unbinds nor expires the resumed session.
    r.disconnect(s, c_old.conn_id, None, Some(Duration::ZERO), t0);
    assert_eq!(r.sizes().connected, 1);
    assert!(r.tick(t0 + 2 * HOUR).is_empty());
    let out = publishes(&drain(&mut r, s, c_new.conn_id, t0));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].packet_id, out[0].dup), (first[0].packet_id, true));
}

#[test]
fn session_expiry_removes_an_offline_session_at_tick() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "dev", false, secs(10));
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    r.publish(msg("t", "q", QoS::AtLeastOnce, false, None), t0);

    assert!(r.tick(t0 + secs(9)).is_empty());
    assert!(r.tick(t0 + secs(10) - Duration::from_millis(1)).is_empty());
    assert_eq!(r.sizes().sessions, 1);
    let gone = r.tick(t0 + secs(10));
    assert_eq!(gone, [ByteStr::from("dev")]);
    assert_eq!(r.sizes(), RouterSizes::default());
    assert_eq!(r.counters().dropped_session_discarded, 1);
    assert_eq!(
        r.publish(msg("t", "late", QoS::AtLeastOnce, false, None), t0),
        0
    );
    assert!(r.tick(t0 + secs(20)).is_empty(), "reported once");

    // A later CONNECT for the id starts from nothing.
    let (res, _) = connect_with(&mut r, "dev", false, secs(10), 32);
    assert!(!res.session_present);
    assert!(!res.discarded);
}

#[test]
fn a_reconnect_before_expiry_keeps_the_session_and_a_zero_expiry_ends_it_at_disconnect() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "dev", false, secs(10));
    disconnect(&mut r, s, &c, t0);
    let (_, c) = connect(&mut r, "dev", false, secs(10));
    assert!(
        r.tick(t0 + secs(60)).is_empty(),
        "connected sessions do not expire"
    );
    // The expiry counts from the latest disconnect.
    disconnect(&mut r, s, &c, t0 + secs(60));
    assert!(r.tick(t0 + secs(69)).is_empty());
    assert_eq!(r.tick(t0 + secs(70)).len(), 1);

    let (s, c) = connect(&mut r, "brief", false, Duration::ZERO);
    disconnect(&mut r, s, &c, t0);
    assert_eq!(r.sizes().sessions, 0);

    // A v5 DISCONNECT can shorten the expiry to zero.
    let (s, c) = connect(&mut r, "shorten", false, HOUR);
    r.disconnect(s, c.conn_id, None, Some(Duration::ZERO), t0);
    assert_eq!(r.sizes().sessions, 0);
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

/// A watcher of `will/#` and a way to read what it got.
fn will_watcher(r: &mut Router, now: Instant) -> (SessionId, Arc<ConnControl>) {
    let (w, c) = connect(r, "watcher", true, Duration::ZERO);
    sub(r, w, "will/#", QoS::AtLeastOnce, now);
    (w, c)
}

fn will(payload: &str) -> Arc<Message> {
    msg("will/dev", payload, QoS::AtLeastOnce, false, None)
}

#[test]
fn a_delayed_will_is_published_at_tick_after_its_delay_and_cancelled_by_a_resume() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);

    let (s, c) = connect(&mut r, "dev", false, secs(100));
    r.disconnect(s, c.conn_id, Some((will("gone"), secs(5))), None, t0);
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
    r.tick(t0 + secs(4));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
    r.tick(t0 + secs(5));
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["gone"]);
    r.tick(t0 + secs(6));
    assert!(
        drain(&mut r, w, wc.conn_id, t0).is_empty(),
        "published once"
    );
    assert_eq!(r.sizes().sessions, 2, "the session itself lives on");

    // A resume within the delay cancels it (MQTT 5.0 §3.1.2.5).
    let (res, c) = connect_with(&mut r, "dev", false, secs(100), 32);
    assert_eq!(res.session_id, s);
    r.disconnect(
        s,
        c.conn_id,
        Some((will("again"), secs(5))),
        None,
        t0 + secs(20),
    );
    let (_, _c) = connect(&mut r, "dev", false, secs(100));
    r.tick(t0 + secs(30));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
}

#[test]
fn a_will_delay_longer_than_the_session_expiry_is_published_when_the_session_ends() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c) = connect(&mut r, "dev", false, secs(3));
    r.disconnect(s, c.conn_id, Some((will("end"), secs(60))), None, t0);
    r.tick(t0 + secs(2));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
    assert_eq!(r.tick(t0 + secs(3)).len(), 1);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["end"]);
    r.tick(t0 + secs(60));
    assert!(
        drain(&mut r, w, wc.conn_id, t0).is_empty(),
        "published once"
    );
}

#[test]
fn a_will_with_zero_delay_is_published_at_disconnect() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(s, c.conn_id, Some((will("now"), Duration::ZERO)), None, t0);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["now"]);

    // A session that ends at disconnect publishes its will at once, whatever the delay.
    let (s, c) = connect(&mut r, "brief", true, Duration::ZERO);
    r.disconnect(s, c.conn_id, Some((will("ended"), secs(30))), None, t0);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["ended"]);
}

#[test]
fn a_delayed_will_is_not_published_when_a_resuming_connection_replaced_the_session() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c_old) = connect(&mut r, "dev", false, HOUR);
    let (res, c_new) = connect_with(&mut r, "dev", false, HOUR, 32);
    assert_eq!(res.session_id, s);
    r.disconnect(s, c_old.conn_id, Some((will("stale"), secs(5))), None, t0);
    r.tick(t0 + secs(10));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());

    // An undelayed will of a replaced connection still goes out (documented on `disconnect`).
    let (_, _c_newer) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(
        s,
        c_new.conn_id,
        Some((will("now"), Duration::ZERO)),
        None,
        t0,
    );
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["now"]);
}

#[test]
fn a_clean_start_connect_publishes_the_pending_will_of_the_session_it_discards() {
    // The session ends on clean start, and a will is due when "the Will Delay Interval has
    // passed or the Session ends, whichever happens first" (MQTT 5.0 §3.1.2.5); mosquitto sends
    // the old context's will when a clean-start connection takes its client id over.
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(s, c.conn_id, Some((will("bye"), secs(30))), None, t0);
    let (res, _c) = connect_with(&mut r, "dev", true, HOUR, 32);
    assert!(res.discarded);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["bye"]);
    r.tick(t0 + secs(60));
    assert!(
        drain(&mut r, w, wc.conn_id, t0).is_empty(),
        "published once"
    );
}

#[test]
fn a_delayed_will_of_a_connection_whose_session_was_discarded_is_published_at_once() {
    // The old connection still holds its will when a clean-start newcomer takes the client id
    // over; the session it belonged to has ended, so the delay ends with it.
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (old, c_old) = connect(&mut r, "dev", false, HOUR);
    let (res, _c_new) = connect_with(&mut r, "dev", true, HOUR, 32);
    assert!(res.discarded);
    r.disconnect(old, c_old.conn_id, Some((will("late"), secs(30))), None, t0);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["late"]);
    assert_eq!(r.sizes().connected, 2, "the newcomer stays connected");
}

#[test]
fn a_wills_message_expiry_starts_when_the_will_is_published() {
    // MQTT 5.0 §3.1.3.2.4: the will's Message Expiry Interval runs from its publication.
    let t0 = Instant::now();
    let mut r = router();
    let (early, ec) = connect(&mut r, "early", true, Duration::ZERO);
    let (late, lc) = connect(&mut r, "late", true, Duration::ZERO);
    sub(&mut r, early, "will/#", QoS::AtLeastOnce, t0);
    sub(&mut r, late, "will/#", QoS::AtLeastOnce, t0);
    let mut m = (*will("expiring")).clone();
    m.properties.message_expiry_interval = Some(10);
    let (s, c) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(s, c.conn_id, Some((Arc::new(m), secs(5))), None, t0);
    r.tick(t0 + secs(5));
    assert_eq!(
        drained_payloads(&mut r, early, ec.conn_id, t0 + secs(14)),
        ["expiring"]
    );
    assert!(drain(&mut r, late, lc.conn_id, t0 + secs(15)).is_empty());
    assert_eq!(r.counters().dropped_expired, 1);
}

// ---------------------------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------------------------

#[test]
fn retained_messages_are_stored_replaced_and_cleared_by_an_empty_payload() {
    let t0 = Instant::now();
    let mut r = router();
    r.publish(msg("r/a", "1", QoS::AtLeastOnce, true, None), t0);
    r.publish(msg("r/a", "2", QoS::AtLeastOnce, true, None), t0);
    r.publish(msg("r/b", "x", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("r/c", "not kept", QoS::AtMostOnce, false, None), t0);
    assert_eq!(r.sizes().retained, 2);

    let (s, c) = connect(&mut r, "s", true, Duration::ZERO);
    assert_eq!(sub(&mut r, s, "r/#", QoS::AtLeastOnce, t0), 1);
    let got = publishes(&drain(&mut r, s, c.conn_id, t0));
    let got: Vec<_> = got
        .iter()
        .map(|s| (s.topic.as_str(), s.payload.as_str(), s.qos, s.retain))
        .collect();
    assert_eq!(
        got,
        [
            ("r/a", "2", QoS::AtLeastOnce, true),
            ("r/b", "x", QoS::AtMostOnce, true)
        ]
    );

    // An empty retained payload removes the entry and is still delivered live.
    r.publish(msg("r/a", "", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.sizes().retained, 1);
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), [""]);
    let (s2, c2) = connect(&mut r, "s2", true, Duration::ZERO);
    sub(&mut r, s2, "r/+", QoS::AtLeastOnce, t0);
    assert_eq!(drained_payloads(&mut r, s2, c2.conn_id, t0), ["x"]);
}

#[test]
fn retain_handling_0_sends_on_every_subscribe_1_only_on_a_new_one_and_2_never() {
    let t0 = Instant::now();
    let mut r = router();
    r.publish(msg("r", "kept", QoS::AtMostOnce, true, None), t0);
    let handling = |h: u8| SubscriptionOptions {
        retain_handling: h,
        ..opts(QoS::AtMostOnce)
    };
    let (s, c) = connect(&mut r, "s", true, Duration::ZERO);
    let count = |r: &mut Router, h: u8| {
        sub_opts(r, s, "r", handling(h), None, t0);
        drain(r, s, c.conn_id, t0).len()
    };
    assert_eq!(count(&mut r, 0), 1);
    assert_eq!(count(&mut r, 0), 1, "0: again on a repeated SUBSCRIBE");
    assert_eq!(count(&mut r, 1), 0, "1: the subscription exists");
    assert_eq!(count(&mut r, 2), 0);
    unsub(&mut r, s, "r");
    assert_eq!(count(&mut r, 2), 0, "2: never");
    unsub(&mut r, s, "r");
    assert_eq!(count(&mut r, 1), 1, "1: a new subscription");
}

#[test]
fn the_retained_store_is_bounded_by_count_and_payload_size() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_retained_messages: 2,
        max_retained_payload: 4,
        ..config()
    });
    r.publish(msg("a", "1", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("b", "1", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("c", "1", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.sizes().retained, 2);
    assert_eq!(r.counters().dropped_retained_full, 1);
    // Replacing a stored topic at the cap is fine; a payload over the cap is not stored.
    r.publish(msg("a", "2222", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("b", "55555", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.counters().dropped_retained_full, 2);
    // Clearing one frees a slot.
    r.publish(msg("b", "", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("c", "3", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.counters().dropped_retained_full, 2);

    let (s, c) = connect(&mut r, "s", true, Duration::ZERO);
    sub(&mut r, s, "#", QoS::AtMostOnce, t0);
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["2222", "3"]);

    let mut off = Router::new(RouterConfig {
        retain_available: false,
        ..config()
    });
    off.publish(msg("a", "1", QoS::AtMostOnce, true, None), t0);
    assert_eq!(off.sizes().retained, 0);
}

#[test]
fn sys_retained_topics_do_not_use_up_the_user_retained_cap() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_retained_messages: 1,
        ..config()
    });
    for topic in ["$SYS/broker/version", "$SYS/broker/uptime", "$SYS/brokers"] {
        r.publish(msg(topic, "v", QoS::AtMostOnce, true, None), t0);
    }
    r.publish(msg("user/a", "1", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("user/b", "1", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.sizes().retained, 4);
    assert_eq!(r.counters().dropped_retained_full, 1);
    // Clearing a $SYS entry frees no user slot; clearing the user entry does.
    r.publish(msg("$SYS/brokers", "", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("user/b", "1", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.counters().dropped_retained_full, 2);
    r.publish(msg("user/a", "", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("user/b", "1", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.counters().dropped_retained_full, 2);
    assert_eq!(r.sizes().retained, 3);
}

#[test]
fn retained_messages_of_clients_on_other_dollar_topics_count_against_the_cap() {
    // The exemption is meant for the broker's fixed `$SYS` set (router.rs:161 "all but `$SYS`",
    // router.rs:484-485), but `store_retained` exempts any topic starting with `$`, and the
    // connection refuses client publishes only under `$SYS` (connection.rs:735). A client can
    // therefore grow the retained store without bound through `$x/...` (STYLE.md rule 6).
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_retained_messages: 2,
        ..config()
    });
    let (p, _c) = connect(&mut r, "p", true, Duration::ZERO);
    for i in 0..5 {
        let topic = format!("$x/{i}");
        r.publish(msg(&topic, "v", QoS::AtMostOnce, true, Some(p)), t0);
    }
    assert_eq!(r.sizes().retained, 2);
    assert_eq!(r.counters().dropped_retained_full, 3);
}

#[test]
fn retained_messages_are_never_sent_on_subscribe_to_a_shared_subscription() {
    let t0 = Instant::now();
    let mut r = router();
    r.publish(msg("r/a", "kept", QoS::AtLeastOnce, true, None), t0);
    let (s, c) = connect(&mut r, "s", true, Duration::ZERO);
    assert_eq!(sub(&mut r, s, "$share/g/r/#", QoS::AtLeastOnce, t0), 1);
    assert_eq!(sub(&mut r, s, "$queue/r/#", QoS::AtLeastOnce, t0), 1);
    assert!(drain(&mut r, s, c.conn_id, t0).is_empty());
    // Live messages still reach the group, retain flag cleared (no retain-as-published).
    r.publish(msg("r/a", "live", QoS::AtLeastOnce, true, None), t0);
    let got = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(got.len(), 2, "one per group");
    assert!(got.iter().all(|s| s.payload == "live" && !s.retain));
}

#[test]
fn an_expired_retained_message_is_not_sent_on_subscribe() {
    let t0 = Instant::now();
    let mut r = router();
    let mut m = (*msg_expiring("r", "brief", QoS::AtMostOnce, t0 + secs(5))).clone();
    m.retain = true;
    r.publish(Arc::new(m), t0);
    let (s, c) = connect(&mut r, "s", true, Duration::ZERO);
    sub(&mut r, s, "r", QoS::AtMostOnce, t0 + secs(5));
    assert!(drain(&mut r, s, c.conn_id, t0 + secs(5)).is_empty());
}

#[test]
fn no_local_hides_the_publishers_own_messages() {
    let t0 = Instant::now();
    let mut r = router();
    let (p, pc) = connect(&mut r, "p", true, Duration::ZERO);
    let (o, oc) = connect(&mut r, "o", true, Duration::ZERO);
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    sub_opts(&mut r, p, "t", no_local, None, t0);
    sub_opts(&mut r, o, "t", no_local, None, t0);
    assert_eq!(
        r.publish(msg("t", "mine", QoS::AtLeastOnce, false, Some(p)), t0),
        1
    );
    assert!(drain(&mut r, p, pc.conn_id, t0).is_empty());
    assert_eq!(drained_payloads(&mut r, o, oc.conn_id, t0), ["mine"]);
    // Broker-made messages have no publisher and reach everyone.
    assert_eq!(
        r.publish(msg("t", "broker", QoS::AtLeastOnce, false, None), t0),
        2
    );

    // A retained message is stored without its publisher: no-local never hides it on subscribe.
    r.publish(msg("k", "own", QoS::AtMostOnce, true, Some(p)), t0);
    sub_opts(&mut r, p, "k", no_local, None, t0);
    let got = drained_payloads(&mut r, p, pc.conn_id, t0);
    assert_eq!(got, ["broker", "own"]);
}

#[test]
fn retain_as_published_keeps_the_flag_otherwise_live_deliveries_have_retain_false() {
    let t0 = Instant::now();
    let mut r = router();
    let (keep, kc) = connect(&mut r, "keep", true, Duration::ZERO);
    let (plain, pc) = connect(&mut r, "plain", true, Duration::ZERO);
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtMostOnce)
    };
    sub_opts(&mut r, keep, "t", rap, None, t0);
    sub(&mut r, plain, "t", QoS::AtMostOnce, t0);
    r.publish(msg("t", "r", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("t", "n", QoS::AtMostOnce, false, None), t0);
    let flags = |out: Vec<Outgoing>| -> Vec<bool> {
        publishes(&out).into_iter().map(|s| s.retain).collect()
    };
    assert_eq!(flags(drain(&mut r, keep, kc.conn_id, t0)), [true, false]);
    assert_eq!(flags(drain(&mut r, plain, pc.conn_id, t0)), [false, false]);
}

#[test]
fn subscription_identifiers_are_carried_on_deliveries() {
    let t0 = Instant::now();
    let mut r = router();
    r.publish(msg("a/b", "retained", QoS::AtMostOnce, true, None), t0);
    let (s, c) = connect(&mut r, "s", true, Duration::ZERO);
    sub_opts(&mut r, s, "a/+", opts(QoS::AtMostOnce), Some(7), t0);
    assert_eq!(
        publishes(&drain(&mut r, s, c.conn_id, t0))[0].subscription_id,
        Some(7),
        "retained on subscribe"
    );
    sub_opts(&mut r, s, "a/b", opts(QoS::AtMostOnce), Some(9), t0);
    drain(&mut r, s, c.conn_id, t0);
    sub_opts(
        &mut r,
        s,
        "$share/g/a/#",
        opts(QoS::AtMostOnce),
        Some(11),
        t0,
    );
    sub(&mut r, s, "#", QoS::AtMostOnce, t0);
    drain(&mut r, s, c.conn_id, t0);

    r.publish(msg("a/b", "live", QoS::AtMostOnce, false, None), t0);
    let mut ids: Vec<_> = publishes(&drain(&mut r, s, c.conn_id, t0))
        .into_iter()
        .map(|s| s.subscription_id)
        .collect();
    ids.sort();
    assert_eq!(ids, [None, Some(7), Some(9), Some(11)]);

    // Re-subscribing with another id replaces it.
    sub_opts(&mut r, s, "a/+", opts(QoS::AtMostOnce), Some(8), t0);
    drain(&mut r, s, c.conn_id, t0);
    unsub(&mut r, s, "a/b");
    unsub(&mut r, s, "$share/g/a/#");
    unsub(&mut r, s, "#");
    r.publish(msg("a/b", "again", QoS::AtMostOnce, false, None), t0);
    assert_eq!(
        publishes(&drain(&mut r, s, c.conn_id, t0))[0].subscription_id,
        Some(8)
    );
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------------

/// Connects `n` members named m0.. and subscribes each to `filter`.
fn members(
    r: &mut Router,
    n: usize,
    filter: &str,
    now: Instant,
) -> Vec<(SessionId, Arc<ConnControl>)> {
    (0..n)
        .map(|i| {
            let (s, c) = connect(r, &format!("m{i}"), false, HOUR);
            assert_eq!(sub(r, s, filter, QoS::AtLeastOnce, now), 1);
            (s, c)
        })
        .collect()
}

#[test]
fn a_shared_subscription_hands_messages_round_robin_across_its_members() {
    let t0 = Instant::now();
    let mut r = router();
    let m = members(&mut r, 3, "$share/g/t/#", t0);
    let (plain, pc) = connect(&mut r, "plain", true, Duration::ZERO);
    sub(&mut r, plain, "t/#", QoS::AtLeastOnce, t0);
    for i in 0..6 {
        assert_eq!(
            r.publish(
                msg("t/x", &i.to_string(), QoS::AtLeastOnce, false, None),
                t0
            ),
            2,
            "one group member plus the plain subscriber"
        );
    }
    for (k, (s, c)) in m.iter().enumerate() {
        let expected = [k.to_string(), (k + 3).to_string()];
        assert_eq!(drained_payloads(&mut r, *s, c.conn_id, t0), expected);
    }
    assert_eq!(drained_payloads(&mut r, plain, pc.conn_id, t0).len(), 6);
}

#[test]
fn a_disconnected_shared_member_is_skipped() {
    let t0 = Instant::now();
    let mut r = router();
    let m = members(&mut r, 3, "$share/g/t", t0);
    disconnect(&mut r, m[1].0, &m[1].1, t0);
    for i in 0..6 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    assert_eq!(r.sizes().queued, 6);
    let a = drained_payloads(&mut r, m[0].0, m[0].1.conn_id, t0);
    let c = drained_payloads(&mut r, m[2].0, m[2].1.conn_id, t0);
    assert_eq!(a.len() + c.len(), 6);
    assert!(!a.is_empty() && !c.is_empty());
    let (_, c1) = connect(&mut r, "m1", false, HOUR);
    assert!(drain(&mut r, m[1].0, c1.conn_id, t0).is_empty());
}

#[test]
fn when_all_shared_members_are_offline_a_persistent_members_queue_gets_the_message() {
    let t0 = Instant::now();
    let mut r = router();
    let m = members(&mut r, 2, "$share/g/t", t0);
    for (s, c) in &m {
        disconnect(&mut r, *s, c, t0);
    }
    for i in 0..4 {
        assert_eq!(
            r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0),
            1
        );
    }
    assert_eq!(r.sizes().queued, 4);
    assert_eq!(r.counters().dropped_no_subscribers, 0);
    let mut all = Vec::new();
    for i in 0..2 {
        let (s, c) = connect(&mut r, &format!("m{i}"), false, HOUR);
        all.extend(drained_payloads(&mut r, s, c.conn_id, t0));
    }
    all.sort();
    assert_eq!(all, ["0", "1", "2", "3"]);
}

#[test]
fn hash_clientid_sends_one_publishers_messages_to_the_same_member() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        shared_strategy: SharedStrategy::HashClientId,
        ..config()
    });
    let m = members(&mut r, 3, "$share/g/t", t0);
    let publishers: Vec<SessionId> = (0..4)
        .map(|i| connect(&mut r, &format!("pub{i}"), true, Duration::ZERO).0)
        .collect();
    for round in 0..5 {
        for (k, p) in publishers.iter().enumerate() {
            let payload = format!("{k}:{round}");
            r.publish(msg("t", &payload, QoS::AtLeastOnce, false, Some(*p)), t0);
        }
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, (s, c)) in m.iter().enumerate() {
        let got = drained_payloads(&mut r, *s, c.conn_id, t0);
        let mut rounds: HashMap<String, Vec<String>> = HashMap::new();
        for p in got {
            let (k, round) = p.split_once(':').unwrap();
            rounds
                .entry(k.to_owned())
                .or_default()
                .push(round.to_owned());
            if let Some(prev) = owner.insert(k.to_owned(), i) {
                assert_eq!(prev, i, "publisher {k} split across members");
            }
        }
        for (k, rs) in rounds {
            assert_eq!(
                rs,
                ["0", "1", "2", "3", "4"],
                "publisher {k}: all, in order"
            );
        }
    }
    assert_eq!(owner.len(), 4);
}

#[test]
fn unsubscribing_the_last_member_removes_the_group() {
    let t0 = Instant::now();
    let mut r = router();
    let m = members(&mut r, 2, "$share/g/t", t0);
    assert_eq!(r.sizes().subscriptions, 2);
    assert_eq!(unsub(&mut r, m[0].0, "$share/g/t"), reason::SUCCESS);
    assert_eq!(r.sizes().subscriptions, 1);
    for i in 0..3 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    assert_eq!(
        drained_payloads(&mut r, m[1].0, m[1].1.conn_id, t0),
        ["0", "1", "2"]
    );
    assert!(drain(&mut r, m[0].0, m[0].1.conn_id, t0).is_empty());
    assert_eq!(unsub(&mut r, m[1].0, "$share/g/t"), reason::SUCCESS);
    assert_eq!(r.sizes().subscriptions, 0);
    assert_eq!(
        r.publish(msg("t", "x", QoS::AtLeastOnce, false, None), t0),
        0
    );
    assert_eq!(r.counters().dropped_no_subscribers, 1);
    // The group can form again.
    assert_eq!(sub(&mut r, m[0].0, "$share/g/t", QoS::AtLeastOnce, t0), 1);
    assert_eq!(
        r.publish(msg("t", "y", QoS::AtLeastOnce, false, None), t0),
        1
    );
}

#[test]
fn a_session_leaving_removes_it_from_its_shared_groups() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "m", true, Duration::ZERO);
    sub(&mut r, s, "$share/g/t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    assert_eq!(r.sizes().subscriptions, 0);
    assert_eq!(
        r.publish(msg("t", "x", QoS::AtLeastOnce, false, None), t0),
        0
    );
}

/// Two members of `$share/g/t` at `qos`: "leaver" (session ends with its connection, window 2)
/// and "stayer" (persistent); 6 messages round robin, the leaver's first two sent.
fn shared_pair(
    r: &mut Router,
    qos: QoS,
    leaver_expiry: Duration,
    t0: Instant,
) -> [(SessionId, Arc<ConnControl>); 2] {
    let (leaver, lc) = connect_with(r, "leaver", true, leaver_expiry, 2);
    let leaver = (leaver.session_id, lc);
    assert!(sub(r, leaver.0, "$share/g/t", qos, t0) < 0x80);
    let (stayer, sc) = connect(r, "stayer", false, HOUR);
    assert!(sub(r, stayer, "$share/g/t", qos, t0) < 0x80);
    for i in 0..6 {
        r.publish(msg("t", &i.to_string(), qos, false, None), t0);
    }
    // The leaver got 0, 2, 4 and sends two of them (its window).
    let sent = publishes(&drain(r, leaver.0, leaver.1.conn_id, t0));
    assert_eq!(sent.len(), 2);
    [leaver, (stayer, sc)]
}

#[test]
fn a_shared_member_whose_session_ends_hands_its_queued_and_unacked_qos1_to_the_group() {
    let t0 = Instant::now();
    let mut r = router();
    let [leaver, stayer] = shared_pair(&mut r, QoS::AtLeastOnce, Duration::ZERO, t0);
    disconnect(&mut r, leaver.0, &leaver.1, t0);
    let got = drained_payloads(&mut r, stayer.0, stayer.1.conn_id, t0);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["0", "1", "2", "3", "4", "5"], "{got:?}");
    assert_eq!(r.counters().shared_redispatched, 3);
    assert_eq!(r.counters().dropped_session_discarded, 0);
}

#[test]
fn a_sent_qos2_message_is_never_handed_to_another_member() {
    let t0 = Instant::now();
    let mut r = router();
    let [leaver, stayer] = shared_pair(&mut r, QoS::ExactlyOnce, Duration::ZERO, t0);
    disconnect(&mut r, leaver.0, &leaver.1, t0);
    let got = drained_payloads(&mut r, stayer.0, stayer.1.conn_id, t0);
    // 0 and 2 were sent to the leaver at QoS 2 (MQTT-4.8.2-5); only the queued 4 moves.
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["1", "3", "4", "5"], "{got:?}");
    assert_eq!(r.counters().dropped_session_discarded, 2);
}

#[test]
fn unsubscribing_from_a_shared_group_hands_the_queued_messages_to_the_members_left() {
    let t0 = Instant::now();
    let mut r = router();
    let [leaver, stayer] = shared_pair(&mut r, QoS::AtLeastOnce, HOUR, t0);
    assert_eq!(unsub(&mut r, leaver.0, "$share/g/t"), reason::SUCCESS);
    let got = drained_payloads(&mut r, stayer.0, stayer.1.conn_id, t0);
    assert_eq!(got, ["1", "3", "5", "4"]);
    // The two it had in flight stay with it (it may still acknowledge them).
    assert_eq!(r.sizes().inflight, 2 + 4);
}

#[test]
fn a_persistent_shared_member_going_offline_lets_a_connected_member_take_its_queue() {
    let t0 = Instant::now();
    let mut r = router();
    let [leaver, stayer] = shared_pair(&mut r, QoS::AtLeastOnce, HOUR, t0);
    disconnect(&mut r, leaver.0, &leaver.1, t0);
    assert_eq!(
        drained_payloads(&mut r, stayer.0, stayer.1.conn_id, t0),
        ["1", "3", "5", "4"]
    );
    // Back: only its two unacknowledged messages come again (DUP), not the one moved.
    let (back, bc) = connect(&mut r, "leaver", false, HOUR);
    assert_eq!(back, leaver.0);
    let again = publishes(&drain(&mut r, back, bc.conn_id, t0));
    assert_eq!(again.len(), 2);
    // With no connected member left, an offline member keeps its queue.
    let (solo, sc) = connect(&mut r, "solo", false, HOUR);
    sub(&mut r, solo, "$share/h/u", QoS::AtLeastOnce, t0);
    disconnect(&mut r, solo, &sc, t0);
    r.publish(msg("u", "kept", QoS::AtLeastOnce, false, None), t0);
    let (solo2, sc2) = connect(&mut r, "solo", false, HOUR);
    assert_eq!(drained_payloads(&mut r, solo2, sc2.conn_id, t0), ["kept"]);
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE answers
// ---------------------------------------------------------------------------------------------

#[test]
fn subscribe_grants_the_requested_qos_and_refuses_invalid_or_too_deep_filters() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, _c) = connect(&mut r, "s", true, Duration::ZERO);
    assert_eq!(sub(&mut r, s, "a", QoS::AtMostOnce, t0), reason::SUCCESS);
    assert_eq!(
        sub(&mut r, s, "b", QoS::AtLeastOnce, t0),
        reason::GRANTED_QOS_1
    );
    assert_eq!(
        sub(&mut r, s, "c", QoS::ExactlyOnce, t0),
        reason::GRANTED_QOS_2
    );
    for bad in [
        "",
        "a/#/b",
        "a#",
        "a+/b",
        "$share//t",
        "$share/g",
        "$share/g+/t",
        "$share/g/a/#/b",
        "$queue/",
    ] {
        assert_eq!(
            sub(&mut r, s, bad, QoS::AtMostOnce, t0),
            reason::TOPIC_FILTER_INVALID,
            "{bad:?}"
        );
    }
    // max_topic_levels = 8.
    assert_eq!(sub(&mut r, s, "1/2/3/4/5/6/7/8", QoS::AtMostOnce, t0), 0);
    assert_eq!(
        sub(&mut r, s, "1/2/3/4/5/6/7/8/9", QoS::AtMostOnce, t0),
        reason::TOPIC_FILTER_INVALID
    );
    assert_eq!(
        sub(&mut r, s, "$share/g/1/2/3/4/5/6/7/8/9", QoS::AtMostOnce, t0),
        reason::TOPIC_FILTER_INVALID
    );
    // No Local on a shared subscription is a protocol error (MQTT 5.0 §3.8.3.1).
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    assert_eq!(
        sub_opts(&mut r, s, "$share/g/t", no_local, None, t0),
        reason::TOPIC_FILTER_INVALID
    );
    assert_eq!(r.sizes().subscriptions, 4);
    assert_eq!(
        sub(&mut r, 999, "a", QoS::AtMostOnce, t0),
        reason::UNSPECIFIED_ERROR,
        "unknown session"
    );
}

#[test]
fn unsubscribe_returns_0x11_for_a_filter_never_subscribed() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, _c) = connect(&mut r, "s", true, Duration::ZERO);
    sub(&mut r, s, "a/+", QoS::AtMostOnce, t0);
    sub(&mut r, s, "$share/g/a", QoS::AtMostOnce, t0);
    let reasons = r.unsubscribe(
        s,
        &[
            ByteStr::from("a/+"),
            ByteStr::from("a/b"),
            ByteStr::from("$share/g/a"),
            ByteStr::from("$share/h/a"),
            ByteStr::from("a/+"),
        ],
    );
    assert_eq!(
        reasons,
        [
            reason::SUCCESS,
            reason::NO_SUBSCRIPTION_EXISTED,
            reason::SUCCESS,
            reason::NO_SUBSCRIPTION_EXISTED,
            reason::NO_SUBSCRIPTION_EXISTED
        ]
    );
    assert_eq!(r.sizes().subscriptions, 0);
}

#[test]
fn unsubscribe_answers_0x8f_for_an_invalid_filter() {
    // SUBSCRIBE answers 0x8F Topic Filter invalid for these (router.rs:536-547); UNSUBACK has
    // the same reason code (MQTT 5.0 §3.11.2.2) but `unsubscribe` never validates the filter,
    // so it answers 0x11 No subscription existed.
    let mut r = router();
    let (s, _c) = connect(&mut r, "s", true, Duration::ZERO);
    for bad in ["a/#/b", "a+", "$share//t", "1/2/3/4/5/6/7/8/9"] {
        assert_eq!(
            unsub(&mut r, s, bad),
            reason::TOPIC_FILTER_INVALID,
            "{bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Wake-ups, sizes, memory
// ---------------------------------------------------------------------------------------------

#[test]
fn an_enqueue_wakes_a_connection_once_until_it_drains() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "s", false, HOUR);
    let (off, offc) = connect(&mut r, "off", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    sub(&mut r, off, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, off, &offc, t0);
    assert!(r.take_wakeups().is_empty());
    for i in 0..10 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    let wake = r.take_wakeups();
    assert_eq!(
        wake.len(),
        1,
        "one wake-up for ten messages, none for the offline session"
    );
    assert!(Arc::ptr_eq(&wake[0], &c));
    r.publish(msg("t", "more", QoS::AtLeastOnce, false, None), t0);
    assert!(
        r.take_wakeups().is_empty(),
        "still pending: not drained yet"
    );

    // A drain by another connection id does not count.
    drain(&mut r, s, offc.conn_id, t0);
    r.publish(msg("t", "more", QoS::AtLeastOnce, false, None), t0);
    assert!(r.take_wakeups().is_empty());

    drain(&mut r, s, c.conn_id, t0);
    r.publish(msg("t", "after", QoS::AtLeastOnce, false, None), t0);
    let wake = r.take_wakeups();
    assert_eq!(wake.len(), 1);
    assert!(Arc::ptr_eq(&wake[0], &c));
}

#[test]
fn sizes_counts_sessions_connections_subscriptions_retained_queued_and_inflight() {
    let t0 = Instant::now();
    let mut r = router();
    assert_eq!(r.sizes(), RouterSizes::default());
    let (a, ac) = connect_with(&mut r, "a", false, HOUR, 2);
    let a = a.session_id;
    let (b, _bc) = connect(&mut r, "b", false, HOUR);
    let (c, cc) = connect(&mut r, "c", false, HOUR);
    sub(&mut r, a, "t", QoS::AtLeastOnce, t0);
    sub(&mut r, a, "u/#", QoS::AtLeastOnce, t0);
    sub(&mut r, b, "$share/g/t", QoS::AtLeastOnce, t0);
    sub(&mut r, c, "$queue/t", QoS::AtLeastOnce, t0);
    sub(&mut r, c, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, c, &cc, t0);
    r.publish(msg("r1", "x", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("r2", "x", QoS::AtMostOnce, true, None), t0);
    for i in 0..5 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    drain(&mut r, a, ac.conn_id, t0);
    assert_eq!(
        r.sizes(),
        RouterSizes {
            sessions: 3,
            connected: 2,
            subscriptions: 5,
            // "t", "u/#", "$share/g/t", "$queue/t", "t": 23 bytes, 64 more each.
            subscription_bytes: 23 + 5 * 64,
            retained: 2,
            // a: 3 of 5 left after 2 went inflight; b: 5 as the only member of $share/g;
            // c (offline): 5 on its plain subscription plus 5 as the only member of $queue.
            queued: 3 + 5 + 10,
            inflight: 2,
        }
    );
}

#[test]
fn a_message_queued_for_many_offline_sessions_is_stored_once() {
    // message.rs:3-4: "a fan-out to N subscribers costs N small `Delivery` values, never N
    // payload copies". `enqueue` calls `Message::detached` once per offline session; detaching
    // once per publish and sharing that `Arc` keeps the read buffer unpinned without the copies.
    let t0 = Instant::now();
    let mut r = router();
    let mut subs = Vec::new();
    for i in 0..3 {
        let (s, c) = connect(&mut r, &format!("s{i}"), false, HOUR);
        sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
        disconnect(&mut r, s, &c, t0);
        subs.push(s);
    }
    r.publish(
        msg("t", "a large payload", QoS::AtLeastOnce, false, None),
        t0,
    );
    let mut messages = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        let (_, c) = connect(&mut r, &format!("s{i}"), false, HOUR);
        match drain(&mut r, *s, c.conn_id, t0).pop() {
            Some(Outgoing::Publish { delivery, .. }) => messages.push(delivery.message),
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
    assert!(messages.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
}

#[test]
fn close_all_closes_every_connected_session_with_the_reason() {
    let mut r = router();
    let (_, a) = connect(&mut r, "a", true, Duration::ZERO);
    let (_, b) = connect(&mut r, "b", true, Duration::ZERO);
    r.close_all(reason::SERVER_SHUTTING_DOWN);
    for c in [a, b] {
        assert!(c.is_closing());
        assert_eq!(
            c.close_reason.load(Ordering::Relaxed),
            reason::SERVER_SHUTTING_DOWN
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property: per-(publisher, topic) order and no loss of QoS >= 1 across reconnects
// ---------------------------------------------------------------------------------------------

mod ordering_property {
    //! A subscriber with a persistent session, a small window and a flaky link. What the router
    //! hands out goes onto a wire; the client reads a prefix of it whenever it likes, and a
    //! disconnect loses whatever was still on the wire. The client checks each PUBLISH as it
    //! reads it and answers with PUBACK / PUBREC / PUBCOMP in any order.

    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Publish {
            publisher: usize,
            topic: usize,
            qos: u8,
        },
        /// The connection takes what the session has ready and writes it to the wire.
        Drain,
        /// The client reads up to `n` packets off the wire.
        Read { n: usize },
        /// The client answers one of the packets it owes (chosen by `pick`).
        Answer { pick: usize },
        /// Disconnect (losing the wire) or reconnect with clean start = false.
        ToggleConnection,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..3usize, 0..2usize, 0..3u8)
                .prop_map(|(publisher, topic, qos)| Op::Publish { publisher, topic, qos }),
            3 => Just(Op::Drain),
            3 => (1..6usize).prop_map(|n| Op::Read { n }),
            4 => any::<usize>().prop_map(|pick| Op::Answer { pick }),
            1 => Just(Op::ToggleConnection),
        ]
    }

    /// A packet the client owes the broker.
    #[derive(Debug, Clone, Copy)]
    enum Owed {
        /// PUBACK for a QoS 1 PUBLISH.
        Ack(u16),
        /// PUBREC for a QoS 2 PUBLISH.
        Rec(u16),
        /// PUBCOMP for a PUBREL.
        Comp(u16),
    }

    /// The subscriber as a well-behaved MQTT client, checking what it reads.
    struct Client {
        sid: SessionId,
        conn: Option<Arc<ConnControl>>,
        window: usize,
        /// Sent by the router, not yet read by the client.
        wire: VecDeque<Outgoing>,
        owed: Vec<Owed>,
        /// Highest sequence read per (publisher, topic).
        last: HashMap<(usize, usize), u64>,
        seen: HashSet<(usize, usize, u64)>,
    }

    impl Client {
        fn read(&mut self, n: usize) -> Result<(), TestCaseError> {
            for _ in 0..n {
                let Some(o) = self.wire.pop_front() else {
                    return Ok(());
                };
                match o {
                    Outgoing::PubRel(id) => self.owed.push(Owed::Comp(id)),
                    Outgoing::Publish {
                        delivery,
                        packet_id,
                        dup,
                    } => {
                        let text = String::from_utf8_lossy(&delivery.message.payload).into_owned();
                        let mut parts = text.split(':').map(|p| p.parse::<u64>().unwrap());
                        let (p, t, seq) = (
                            parts.next().unwrap() as usize,
                            parts.next().unwrap() as usize,
                            parts.next().unwrap(),
                        );
                        prop_assert_eq!(delivery.qos, delivery.message.qos);
                        if self.seen.contains(&(p, t, seq)) {
                            prop_assert!(dup, "{} read twice without DUP", text);
                        } else {
                            let last = self.last.get(&(p, t)).copied();
                            prop_assert!(
                                last.is_none_or(|l| seq > l),
                                "{} after {:?}: out of order",
                                text,
                                last
                            );
                            self.last.insert((p, t), seq);
                            self.seen.insert((p, t, seq));
                        }
                        match delivery.qos {
                            QoS::AtMostOnce => prop_assert_eq!(packet_id, 0),
                            QoS::AtLeastOnce => self.owed.push(Owed::Ack(packet_id)),
                            QoS::ExactlyOnce => self.owed.push(Owed::Rec(packet_id)),
                        }
                    }
                }
            }
            Ok(())
        }

        fn answer(&mut self, r: &mut Router, index: usize) -> Result<(), TestCaseError> {
            match self.owed.remove(index) {
                Owed::Ack(id) => prop_assert!(r.puback(self.sid, id), "puback {}", id),
                Owed::Rec(id) => {
                    prop_assert!(r.pubrec(self.sid, id, reason::SUCCESS), "pubrec {}", id);
                    // The connection answers PUBREL at once; the client then owes PUBCOMP.
                    self.owed.push(Owed::Comp(id));
                }
                Owed::Comp(id) => prop_assert!(r.pubcomp(self.sid, id), "pubcomp {}", id),
            }
            Ok(())
        }

        /// Returns whether anything was written to the wire.
        fn drain(&mut self, r: &mut Router, now: Instant) -> Result<bool, TestCaseError> {
            let Some(conn) = &self.conn else {
                return Ok(false);
            };
            let out = drain(r, self.sid, conn.conn_id, now);
            let inflight = r.sizes().inflight;
            prop_assert!(
                inflight <= self.window,
                "{} inflight, window {}",
                inflight,
                self.window
            );
            let any = !out.is_empty();
            self.wire.extend(out);
            Ok(any)
        }
    }

    fn run(window: usize, store_qos0: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let now = Instant::now();
        let mut r = Router::new(RouterConfig {
            max_mqueue_len: 100_000,
            mqueue_store_qos0: store_qos0,
            ..config()
        });
        let publishers: Vec<SessionId> = (0..3)
            .map(|i| connect(&mut r, &format!("pub{i}"), true, Duration::ZERO).0)
            .collect();
        let (res, conn) = connect_with(&mut r, "sub", false, HOUR, window);
        let mut client = Client {
            sid: res.session_id,
            conn: Some(conn),
            window,
            wire: VecDeque::new(),
            owed: Vec::new(),
            last: HashMap::new(),
            seen: HashSet::new(),
        };
        prop_assert_eq!(sub(&mut r, client.sid, "t/+", QoS::ExactlyOnce, now), 2);

        let topics = ["t/a", "t/b"];
        let mut next_seq: HashMap<(usize, usize), u64> = HashMap::new();
        let mut must_arrive = Vec::new();
        for op in ops {
            match op {
                Op::Publish {
                    publisher,
                    topic,
                    qos,
                } => {
                    let seq = next_seq.entry((publisher, topic)).or_insert(0);
                    *seq += 1;
                    let qos = QoS::from_u8(qos).unwrap();
                    let payload = format!("{publisher}:{topic}:{seq}");
                    let m = msg(
                        topics[topic],
                        &payload,
                        qos,
                        false,
                        Some(publishers[publisher]),
                    );
                    let queued = r.publish(m, now);
                    if qos != QoS::AtMostOnce {
                        prop_assert_eq!(queued, 1);
                        must_arrive.push((publisher, topic, *seq));
                    }
                }
                Op::Drain => {
                    client.drain(&mut r, now)?;
                }
                Op::Read { n } => client.read(n)?,
                Op::Answer { pick } => {
                    if client.conn.is_some() && !client.owed.is_empty() {
                        let index = pick % client.owed.len();
                        client.answer(&mut r, index)?;
                    }
                }
                Op::ToggleConnection => match client.conn.take() {
                    Some(conn) => {
                        disconnect(&mut r, client.sid, &conn, now);
                        // Unread packets die with the connection; so do answers not yet sent.
                        client.wire.clear();
                        client.owed.clear();
                    }
                    None => {
                        let (res, conn) = connect_with(&mut r, "sub", false, HOUR, window);
                        prop_assert!(res.session_present);
                        prop_assert_eq!(res.session_id, client.sid);
                        client.conn = Some(conn);
                    }
                },
            }
        }

        // Settle on a good link: connect if needed, then drain, read and answer until quiet.
        if client.conn.is_none() {
            let (_, conn) = connect_with(&mut r, "sub", false, HOUR, window);
            client.conn = Some(conn);
        }
        for _ in 0..100_000 {
            client.read(usize::MAX)?;
            while !client.owed.is_empty() {
                client.answer(&mut r, 0)?;
            }
            if !client.drain(&mut r, now)? {
                break;
            }
        }
        for key in must_arrive {
            prop_assert!(client.seen.contains(&key), "lost {:?}", key);
        }
        let sizes = r.sizes();
        prop_assert_eq!((sizes.queued, sizes.inflight), (0, 0));
        Ok(())
    }

    proptest! {
        #[test]
        fn one_publishers_messages_on_one_topic_arrive_in_order_and_none_acknowledged_is_lost(
            window in 1usize..=4,
            store_qos0 in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            run(window, store_qos0, ops)?;
        }
    }
}

#[test]
fn kick_closes_only_that_connection_with_administrative_action() {
    let mut r = router();
    let (_a, ca) = connect(&mut r, "a", true, Duration::ZERO);
    let (_b, cb) = connect(&mut r, "b", true, Duration::ZERO);
    assert!(r.kick("a"));
    assert!(ca.is_closing());
    assert_eq!(
        ca.close_reason.load(Ordering::Relaxed),
        reason::ADMINISTRATIVE_ACTION
    );
    assert!(!cb.is_closing());
    assert!(!r.kick("a"), "already closing");
    assert!(!r.kick("nobody"));
}

#[test]
fn operator_listings_are_sorted_and_cut_at_the_limit() {
    let t0 = Instant::now();
    let mut r = router();
    for id in ["c", "a", "b"] {
        let (sid, _c) = connect(&mut r, id, true, Duration::ZERO);
        sub(&mut r, sid, &format!("t/{id}"), QoS::AtLeastOnce, t0);
        r.publish(
            msg(&format!("t/{id}"), "xyz", QoS::AtMostOnce, true, None),
            t0,
        );
    }
    let clients = r.client_infos(2);
    let ids: Vec<&str> = clients.rows.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(clients.truncated);
    assert_eq!(clients.total, 3);
    assert_eq!(clients.rows[0].subscriptions, 1);
    assert_eq!(clients.rows[0].protocol, 5);

    let subs = r.subscriptions_all(10);
    assert!(!subs.truncated);
    assert_eq!(subs.rows.len(), 3);
    assert_eq!(subs.rows[2].filter, "t/c");
    assert_eq!(subs.rows[2].qos, 1);

    let retained = r.retained_list(1);
    assert_eq!(retained.rows[0].topic, "t/a");
    assert_eq!(retained.rows[0].payload_size, 3);
    assert!(retained.truncated);
    assert_eq!(r.client_info("b").map(|c| c.connected), Some(true));
    assert!(r.client_info("z").is_none());
}

fn connect_as(
    r: &mut Router,
    client_id: &str,
    owner: Owner,
    clean_start: bool,
    policy: OwnerMismatch,
) -> (ConnectResult, Arc<ConnControl>) {
    let conn = ConnControl::new(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed));
    let result = r.connect(ConnectParams {
        client_id: ByteStr::from(client_id),
        protocol: ProtocolVersion::V5,
        clean_start,
        session_expiry: HOUR,
        window: 32,
        conn: conn.clone(),
        now: Instant::now(),
        owner,
        on_owner_mismatch: policy,
    });
    (result, conn)
}

#[test]
fn a_session_belongs_to_the_identity_that_created_it() {
    let t0 = Instant::now();
    let mut r = router();
    let bob = || Owner::User(ByteStr::from("bob"));
    let alice = || Owner::User(ByteStr::from("alice"));
    let (res, conn) = connect_as(&mut r, "bob-sensor", bob(), false, OwnerMismatch::Refuse);
    sub(&mut r, res.session_id, "users/bob/#", QoS::AtLeastOnce, t0);
    disconnect(&mut r, res.session_id, &conn, t0);
    r.publish(
        msg("users/bob/cmd", "unlock", QoS::AtLeastOnce, false, None),
        t0,
    );
    // Alice knows the client id: refused, with or without clean start, and nothing changes.
    for clean in [false, true] {
        let (denied, _) = connect_as(&mut r, "bob-sensor", alice(), clean, OwnerMismatch::Refuse);
        assert_eq!(denied.refused, Some(ConnectRefusal::NotOwner));
        assert!(denied.replaced.is_none() && !denied.discarded);
    }
    // Anonymous is another identity too.
    let (denied, _) = connect_as(
        &mut r,
        "bob-sensor",
        Owner::Anonymous,
        false,
        OwnerMismatch::Refuse,
    );
    assert_eq!(denied.refused, Some(ConnectRefusal::NotOwner));
    // Bob resumes and gets his command.
    let (back, bc) = connect_as(&mut r, "bob-sensor", bob(), false, OwnerMismatch::Refuse);
    assert!(back.session_present && back.refused.is_none());
    assert_eq!(
        drained_payloads(&mut r, back.session_id, bc.conn_id, t0),
        ["unlock"]
    );
    // An anonymous session cannot lock a verified user out of its client id (squatting): the
    // user starts afresh, without what the squatter left there.
    let (squat, sc) = connect_as(
        &mut r,
        "carol-meter",
        Owner::Anonymous,
        false,
        OwnerMismatch::Refuse,
    );
    sub(&mut r, squat.session_id, "#", QoS::AtLeastOnce, t0);
    disconnect(&mut r, squat.session_id, &sc, t0);
    let carol = || Owner::User(ByteStr::from("carol"));
    let (mine, _) = connect_as(&mut r, "carol-meter", carol(), false, OwnerMismatch::Refuse);
    assert!(mine.refused.is_none() && !mine.session_present && mine.discarded);
    // ...and the other way round stays refused.
    let (back, _) = connect_as(
        &mut r,
        "carol-meter",
        Owner::Anonymous,
        false,
        OwnerMismatch::Refuse,
    );
    assert_eq!(back.refused, Some(ConnectRefusal::NotOwner));
    // Under `discard`, alice gets a fresh session of her own; bob's is gone.
    let (fresh, _) = connect_as(&mut r, "bob-sensor", alice(), false, OwnerMismatch::Discard);
    assert!(!fresh.session_present && fresh.refused.is_none() && fresh.discarded);
    assert_eq!(
        r.subscription_filters(fresh.session_id),
        Vec::<ByteStr>::new()
    );
}

#[test]
fn retained_bytes_sessions_and_queued_bytes_are_capped() {
    let t0 = Instant::now();
    // Retained: 20 bytes in all (topic + payload).
    let mut r = Router::new(RouterConfig {
        max_retained_bytes: 20,
        ..config()
    });
    r.publish(msg("r/a", "0123456789", QoS::AtMostOnce, true, None), t0); // 13 bytes
    r.publish(msg("r/b", "0123456789", QoS::AtMostOnce, true, None), t0); // +13: refused
    assert_eq!(r.counters().dropped_retained_full, 1);
    r.publish(msg("r/a", "", QoS::AtMostOnce, true, None), t0); // cleared: room again
    r.publish(msg("r/b", "0123456789", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.counters().dropped_retained_full, 1);
    assert_eq!(r.sizes().retained, 1);

    // Sessions: two at most; a third client is refused, a returning one is not.
    let mut r = Router::new(RouterConfig {
        max_sessions: 2,
        ..config()
    });
    let (a, ac) = connect(&mut r, "a", false, HOUR);
    connect(&mut r, "b", false, HOUR);
    let (third, _) = connect_with(&mut r, "c", true, Duration::ZERO, 32);
    assert_eq!(third.refused, Some(ConnectRefusal::TooManySessions));
    disconnect(&mut r, a, &ac, t0);
    let (back, _) = connect_with(&mut r, "a", false, HOUR, 32);
    assert!(back.refused.is_none() && back.session_present);

    // Queued bytes: each 1,000-byte delivery holds ~1,130 bytes; 3,000 hold two of them.
    let mut r = Router::new(RouterConfig {
        max_mqueue_bytes: 3_000,
        ..config()
    });
    let (s, c) = connect(&mut r, "slow", false, HOUR);
    sub(&mut r, s, "big", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    let body = "x".repeat(1000);
    for _ in 0..5 {
        r.publish(msg("big", &body, QoS::AtLeastOnce, false, None), t0);
    }
    assert_eq!(r.sizes().queued, 2);
    assert_eq!(r.counters().dropped_queue_full, 3);
}

#[test]
fn all_sessions_together_hold_at_most_max_queued_bytes_total() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_queued_bytes_total: 5_000,
        ..config()
    });
    let mut subs = Vec::new();
    for id in ["a", "b"] {
        let (s, c) = connect(&mut r, id, false, HOUR);
        sub(&mut r, s, "big", QoS::AtLeastOnce, t0);
        disconnect(&mut r, s, &c, t0);
        subs.push(s);
    }
    let body = "x".repeat(1000);
    for _ in 0..5 {
        r.publish(msg("big", &body, QoS::AtLeastOnce, false, None), t0);
    }
    // ~1,130 bytes a delivery: four fit in 5,000, the other six are dropped and counted.
    assert_eq!(r.sizes().queued, 4);
    assert_eq!(r.counters().dropped_queue_full, 6);
    assert!(r.held_bytes_total() <= 5_000);
    // Sessions that leave give their bytes back.
    for id in ["a", "b"] {
        let (res, c) = connect_with(&mut r, id, true, Duration::ZERO, 32);
        disconnect(&mut r, res.session_id, &c, t0);
    }
    assert_eq!(r.held_bytes_total(), 0);
}

#[test]
fn the_queued_bytes_total_returns_to_zero_when_everything_is_delivered() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "s", false, HOUR);
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        r.publish(msg("t", &i.to_string(), qos, false, None), t0);
    }
    assert!(r.held_bytes_total() > 0);
    for sent in publishes(&drain(&mut r, s, c.conn_id, t0)) {
        ack(&mut r, s, &sent);
    }
    assert_eq!(r.held_bytes_total(), 0);
}

#[test]
fn subscription_bytes_are_capped_over_all_sessions_and_given_back_by_unsubscribe_and_expiry() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_subscription_bytes_total: 3 * (10 + 64),
        max_topic_len: 10,
        ..config()
    });
    let (a, ac) = connect(&mut r, "a", false, Duration::from_secs(1));
    let (b, _) = connect(&mut r, "b", false, HOUR);
    let opts = |f: &str| (ByteStr::from(f), opts(QoS::AtLeastOnce));
    // Too long for max_topic_len, whatever the room.
    assert_eq!(
        r.subscribe(a, &[opts("aaaaaaaaaaa")], None, t0),
        [reason::TOPIC_FILTER_INVALID]
    );
    assert_eq!(
        r.subscribe(a, &[opts("aaaaaaaaa1"), opts("aaaaaaaaa2")], None, t0),
        [1, 1]
    );
    // Subscribing again to a filter held already costs nothing.
    assert_eq!(
        r.subscribe(b, &[opts("bbbbbbbbb1"), opts("bbbbbbbbb2")], None, t0),
        [1, reason::QUOTA_EXCEEDED]
    );
    assert_eq!(r.subscribe(a, &[opts("aaaaaaaaa1")], None, t0), [1]);
    assert_eq!(r.sizes().subscription_bytes, 3 * 74);
    assert_eq!(
        r.unsubscribe(a, &[ByteStr::from("aaaaaaaaa2")]),
        [reason::SUCCESS]
    );
    assert_eq!(r.subscribe(b, &[opts("bbbbbbbbb2")], None, t0), [1]);
    // An expired session gives its subscriptions' bytes back.
    disconnect(&mut r, a, &ac, t0);
    r.tick(t0 + Duration::from_secs(2));
    assert_eq!(r.sizes().subscription_bytes, 2 * 74);
    assert_eq!(r.subscribe(b, &[opts("bbbbbbbbb3")], None, t0), [1]);
}

#[test]
fn a_pending_will_counts_as_held_bytes_and_fires_at_once_when_they_are_full() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_queued_bytes_total: 2 * (6 + 100 + 128),
        ..config()
    });
    let (w, wc) = connect(&mut r, "watcher", false, HOUR);
    sub(&mut r, w, "will/#", QoS::AtLeastOnce, t0);
    let mut held = Vec::new();
    for n in 0..3 {
        let (s, c) = connect(&mut r, &format!("dev-{n}"), false, HOUR);
        let will = msg(
            &format!("will/{n}"),
            &"x".repeat(100),
            QoS::AtLeastOnce,
            false,
            None,
        );
        r.disconnect(
            s,
            c.conn_id,
            Some((will, Duration::from_secs(60))),
            None,
            t0,
        );
        held.push(r.held_bytes_total());
    }
    // Two wills wait for their delay, each counted; the third would pass the cap and is
    // published now, reaching whoever has room: not the watcher, whose queue counts against
    // the same full total (a bridge would still take it).
    assert_eq!(held[0], 6 + 100 + 128);
    assert_eq!(held[1], 2 * (6 + 100 + 128));
    assert_eq!(held[2], held[1]);
    assert_eq!(r.counters().messages_routed, 1);
    assert_eq!(r.counters().dropped_queue_full, 1);
    assert!(drained_payloads(&mut r, w, wc.conn_id, t0).is_empty());
    // When the delays end, the two held wills go out and free their bytes.
    r.tick(t0 + Duration::from_secs(61));
    assert_eq!(r.counters().messages_routed, 3);
}
