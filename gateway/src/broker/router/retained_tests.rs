//! Tests of `router/retained.rs`, sans IO: time passed in, as a connection would drive it.

use crate::broker::router::test_support::*;
use crate::broker::router::*;
use holdfast_mqtt::{QoS, SubscriptionOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    // One copy for the three overlapping plain subscriptions, with both their identifiers
    // (MQTT 5 §3.3.4), and one through the shared group.
    let mut ids: Vec<Vec<u32>> = drain(&mut r, s, c.conn_id, t0)
        .iter()
        .map(|o| match o {
            Outgoing::Publish { delivery, .. } => {
                let mut ids: Vec<u32> = delivery.subscription_ids().map(|id| id.get()).collect();
                ids.sort_unstable();
                ids
            }
            Outgoing::PubRel(id) => panic!("unexpected PUBREL {id}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [vec![7, 9], vec![11]]);

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
