//! A full queue under `mqueue_full = "backpressure"`: publishers are held back, nothing
//! acknowledged is dropped, and a subscriber that stays stuck is disconnected.

use crate::broker::router::test_support::*;
use crate::broker::router::*;
use crate::broker::session::ConnControl;
use crate::broker::stats::DisconnectReason;
use crate::config::MqueueFull;
use holdfast_mqtt::{reason, QoS};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A queue of 4, a subscriber with a window of 1 (it drains one message per ack) and a
/// publisher, both connected.
fn setup(
    policy: MqueueFull,
) -> (
    Router,
    SessionId,
    Arc<ConnControl>,
    SessionId,
    Arc<ConnControl>,
) {
    let mut r = Router::new(RouterConfig {
        max_mqueue_len: 4,
        mqueue_full: policy,
        ..config()
    });
    let t0 = Instant::now();
    let (res, sc) = connect_with(&mut r, "sub", false, HOUR, 1);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    let (p, pc) = connect(&mut r, "pub", true, Duration::ZERO);
    (r, s, sc, p, pc)
}

fn publish_n(r: &mut Router, publisher: SessionId, range: std::ops::Range<u32>, now: Instant) {
    for i in range {
        r.publish(
            msg(
                "t",
                &i.to_string(),
                QoS::AtLeastOnce,
                false,
                Some(publisher),
            ),
            now,
        );
    }
}

/// Acks and drains until nothing is left; returns the payloads in the order they went out.
fn receive_all(r: &mut Router, s: SessionId, conn_id: u64, now: Instant) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let sent = publishes(&drain(r, s, conn_id, now));
        if sent.is_empty() {
            return got;
        }
        for m in &sent {
            ack(r, s, m);
            got.push(m.payload.clone());
        }
    }
}

#[test]
fn a_full_queue_holds_its_publisher_back_and_drops_nothing() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, pc) = setup(MqueueFull::Backpressure);
    publish_n(&mut r, p, 0..4, t0);
    assert!(!pc.is_held_back(), "four fit in a queue of four");
    publish_n(&mut r, p, 4..6, t0);
    assert!(pc.is_held_back(), "the fifth found the queue full");
    assert_eq!(r.counters().dropped_queue_full, 0);
    assert_eq!(r.counters().publishers_held_back, 2);
    assert_eq!(r.sizes().queued, 6);

    // One out (window 1): five left, still above three quarters of four.
    let first = publishes(&drain(&mut r, s, sc.conn_id, t0));
    assert_eq!(first.len(), 1);
    assert!(pc.is_held_back());
    r.take_wakeups();
    ack(&mut r, s, &first[0]);
    let mut got = vec![first[0].payload.clone()];
    got.extend(receive_all(&mut r, s, sc.conn_id, t0));
    assert!(!pc.is_held_back(), "released once the queue drained");
    assert!(
        r.take_wakeups().iter().any(|c| c.conn_id == pc.conn_id),
        "the publisher's connection is woken to go on"
    );
    assert_eq!(got, ["0", "1", "2", "3", "4", "5"]);
    assert_eq!(r.counters().dropped_queue_full, 0);
}

#[test]
fn past_twice_its_limit_a_full_queue_drops_its_oldest_after_all() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, _pc) = setup(MqueueFull::Backpressure);
    // A publisher that ignores being held back (an in-process bug, or many publishers at
    // once): the queue stops at twice its limit.
    publish_n(&mut r, p, 0..10, t0);
    assert_eq!(r.sizes().queued, 8);
    assert_eq!(r.counters().dropped_queue_full, 2);
    let got = receive_all(&mut r, s, sc.conn_id, t0);
    assert_eq!(got, ["2", "3", "4", "5", "6", "7", "8", "9"]);
}

#[test]
fn qos0_for_a_full_queue_is_dropped_and_takes_no_acknowledged_message_with_it() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, pc) = setup(MqueueFull::Backpressure);
    publish_n(&mut r, p, 0..4, t0);
    r.publish(msg("t", "q0", QoS::AtMostOnce, false, Some(p)), t0);
    assert!(!pc.is_held_back(), "QoS 0 holds nobody back");
    assert_eq!(r.counters().dropped_queue_full, 1);
    assert_eq!(receive_all(&mut r, s, sc.conn_id, t0), ["0", "1", "2", "3"]);
}

#[test]
fn drop_oldest_keeps_the_emqx_behaviour() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, pc) = setup(MqueueFull::DropOldest);
    publish_n(&mut r, p, 0..6, t0);
    assert!(!pc.is_held_back());
    assert_eq!(r.counters().dropped_queue_full, 2);
    assert_eq!(receive_all(&mut r, s, sc.conn_id, t0), ["2", "3", "4", "5"]);
}

#[test]
fn an_offline_session_drops_its_oldest_and_holds_nobody_back() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, pc) = setup(MqueueFull::Backpressure);
    disconnect(&mut r, s, &sc, t0);
    publish_n(&mut r, p, 0..6, t0);
    assert!(!pc.is_held_back());
    assert_eq!(r.counters().dropped_queue_full, 2);
    let (res, sc) = connect_with(&mut r, "sub", false, HOUR, 1);
    assert!(res.session_present);
    assert_eq!(receive_all(&mut r, s, sc.conn_id, t0), ["2", "3", "4", "5"]);
}

#[test]
fn the_subscriber_going_away_lets_its_publishers_go_on() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, pc) = setup(MqueueFull::Backpressure);
    publish_n(&mut r, p, 0..5, t0);
    assert!(pc.is_held_back());
    r.take_wakeups();
    disconnect(&mut r, s, &sc, t0);
    assert!(!pc.is_held_back());
    assert!(r.take_wakeups().iter().any(|c| c.conn_id == pc.conn_id));
    // Its session kept all five, over the limit, for when it returns.
    let (_, sc) = connect_with(&mut r, "sub", false, HOUR, 1);
    assert_eq!(
        receive_all(&mut r, s, sc.conn_id, t0),
        ["0", "1", "2", "3", "4"]
    );
}

#[test]
fn a_subscriber_stuck_past_the_timeout_is_disconnected_and_pays_alone() {
    let t0 = Instant::now();
    let (mut r, s, sc, p, pc) = setup(MqueueFull::Backpressure);
    let timeout = config().slow_subscriber_timeout;
    publish_n(&mut r, p, 0..5, t0);
    assert!(pc.is_held_back());

    r.tick(t0 + timeout - Duration::from_millis(1));
    assert!(!sc.is_closing(), "not before the timeout");
    assert!(pc.is_held_back());

    r.tick(t0 + timeout);
    assert!(sc.is_closing());
    assert_eq!(
        sc.close_reason.load(Ordering::Relaxed),
        reason::QUOTA_EXCEEDED
    );
    assert_eq!(sc.close_cause(), DisconnectReason::SlowSubscriber);
    assert!(!pc.is_held_back(), "the publisher goes on");
    assert_eq!(r.counters().slow_subscribers_disconnected, 1);

    // While it closes, and once it is offline, its queue drops its oldest instead.
    publish_n(&mut r, p, 5..8, t0 + timeout);
    assert!(!pc.is_held_back());
    disconnect(&mut r, s, &sc, t0 + timeout);
    assert_eq!(r.counters().dropped_queue_full, 3);
    assert_eq!(r.sizes().queued, 5);

    // Back with its queue still full, it holds nobody back: it drops its oldest...
    let (_, sc) = connect_with(&mut r, "sub", false, HOUR, 1);
    publish_n(&mut r, p, 8..10, t0 + timeout);
    assert!(
        !pc.is_held_back(),
        "a stalled subscriber gets no second stall for free"
    );
    assert_eq!(r.counters().dropped_queue_full, 5);
    // ...until it has caught up; then publishers wait for it again.
    let got = receive_all(&mut r, s, sc.conn_id, t0 + timeout);
    assert_eq!(got.len(), 5);
    publish_n(&mut r, p, 10..16, t0 + timeout);
    assert!(pc.is_held_back());
}

#[test]
fn a_message_nobody_published_holds_nobody_back_and_drops_the_oldest() {
    let t0 = Instant::now();
    let (mut r, _s, _sc, _p, _pc) = setup(MqueueFull::Backpressure);
    for i in 0..6 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    assert_eq!(r.counters().dropped_queue_full, 2);
    assert_eq!(r.counters().publishers_held_back, 0);
}
