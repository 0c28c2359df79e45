//! Tests of `router/inflight.rs`, sans IO: time passed in, as a connection would drive it.

use crate::broker::router::test_support::*;
use crate::broker::router::*;
use holdfast_mqtt::{reason, PacketId, QoS};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    let ids: HashSet<PacketId> = first.iter().map(|s| s.packet_id).collect();
    assert_eq!(ids.len(), 3, "distinct packet ids");
    assert!(!ids.contains(&PacketId::NONE));
    assert_eq!(r.sizes().inflight, 3);
    assert_eq!(r.sizes().queued, 2);
    assert!(drain(&mut r, s, c.conn_id, t0).is_empty(), "window full");

    assert!(!r.puback(s, PacketId::new(999)), "unknown packet id");
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
    assert_eq!(held[0].packet_id, PacketId::new(1));
    let mut seen = Vec::new();
    for i in 0..u16::MAX as usize + 2 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
        let out = publishes(&drain(&mut r, s, c.conn_id, t0));
        assert_eq!(out.len(), 1);
        let id = out[0].packet_id;
        assert_ne!(id, PacketId::NONE, "0 is not a packet id");
        assert_ne!(id, PacketId::new(1), "id 1 is still inflight");
        seen.push(id);
        assert!(r.puback(s, id));
    }
    assert_eq!(&seen[..2], [PacketId::new(2), PacketId::new(3)]);
    // After 65535 it wraps to 1, which is taken, so 2.
    let wrap = seen
        .iter()
        .position(|&id| id == PacketId::new(u16::MAX))
        .unwrap();
    assert_eq!(seen[wrap + 1], PacketId::new(2));
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
                if *packet_id != PacketId::new(0) {
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

#[test]
fn the_window_grows_for_a_client_that_keeps_up_and_halves_when_it_stops() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_mqueue_len: 1000,
        ..config()
    });
    let (res, c) = connect_with(&mut r, "sub", true, Duration::ZERO, 100);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    for i in 0..1000 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    // 32 first; each whole window acknowledged with more waiting doubles it, up to the
    // cap of 100 (the client's receive maximum or max_inflight).
    let mut sizes = Vec::new();
    for _ in 0..4 {
        let sent = publishes(&drain(&mut r, s, c.conn_id, t0));
        sizes.push(sent.len());
        for m in &sent {
            ack(&mut r, s, m);
        }
    }
    assert_eq!(sizes, [32, 64, 100, 100]);

    // A full window without a single acknowledgement for a whole tick halves.
    let stuck = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(stuck.len(), 100);
    r.tick(t0);
    r.tick(t0);
    // Window 50 now: ten acknowledged leave 90 in flight, and nothing new goes out (with the
    // old window of 100, ten would).
    for m in &stuck[..10] {
        ack(&mut r, s, m);
    }
    assert_eq!(publishes(&drain(&mut r, s, c.conn_id, t0)).len(), 0);
    // Catching up (a whole window of 50 acknowledged) earns the 100 back.
    for m in &stuck[10..] {
        ack(&mut r, s, m);
    }
    assert_eq!(publishes(&drain(&mut r, s, c.conn_id, t0)).len(), 100);

    // A new connection starts again at 32.
    let (res, c) = connect_with(&mut r, "sub", false, HOUR, 100);
    assert!(res.session_present);
    // The 100 unacknowledged are resent (DUP) whatever the window; nothing new goes out
    // while more than the fresh window of 32 is in flight.
    let resent = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(resent.len(), 100);
    assert!(resent.iter().all(|m| m.dup));
    for m in &resent[..20] {
        ack(&mut r, s, m);
    }
    assert_eq!(publishes(&drain(&mut r, s, c.conn_id, t0)).len(), 0);
}
