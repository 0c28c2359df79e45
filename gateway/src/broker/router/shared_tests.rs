//! Tests of `router/shared.rs`, sans IO: time passed in, as a connection would drive it.

use crate::broker::message::*;
use crate::broker::router::test_support::*;
use crate::broker::router::*;
use crate::broker::session::*;
use crate::config::SharedStrategy;
use holdfast_mqtt::{reason, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
