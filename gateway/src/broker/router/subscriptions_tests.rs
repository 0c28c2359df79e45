//! Tests of `router/subscriptions.rs`, sans IO: time passed in, as a connection would drive it.

use crate::broker::router::test_support::*;
use crate::broker::router::*;
use holdfast_mqtt::{reason, ByteStr, QoS, SubscriptionOptions};
use std::time::{Duration, Instant};

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
        sub(&mut r, SessionId::test(999), "a", QoS::AtMostOnce, t0),
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
fn overlapping_subscriptions_get_one_copy_with_every_identifier_at_the_highest_qos() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "overlap", false, HOUR);
    sub_opts(&mut r, s, "o/#", opts(QoS::AtMostOnce), Some(3), t0);
    sub_opts(&mut r, s, "o/+/t", opts(QoS::AtLeastOnce), Some(8), t0);
    sub_opts(&mut r, s, "o/a/t", opts(QoS::AtMostOnce), None, t0);
    let (other, oc) = connect(&mut r, "other", true, Duration::ZERO);
    sub(&mut r, other, "o/#", QoS::AtLeastOnce, t0);

    assert_eq!(
        r.publish(msg("o/a/t", "m", QoS::AtLeastOnce, false, None), t0),
        4
    );
    let got = drain(&mut r, s, c.conn_id, t0);
    assert_eq!(got.len(), 1, "one copy, not three");
    let Outgoing::Publish { delivery, .. } = &got[0] else {
        panic!("{got:?}");
    };
    assert_eq!(delivery.qos, QoS::AtLeastOnce);
    let mut ids: Vec<u32> = delivery.subscription_ids().map(|id| id.get()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [3, 8]);
    assert_eq!(drain(&mut r, other, oc.conn_id, t0).len(), 1);

    // Offline, the one copy is queued the same way: with the identifier of the QoS 0
    // subscription too, although a QoS 0 copy alone would not be queued for it.
    disconnect(&mut r, s, &c, t0);
    r.publish(msg("o/a/t", "n", QoS::AtLeastOnce, false, None), t0);
    assert_eq!(
        r.sizes().queued,
        2,
        "one for it, one for the other subscriber"
    );
    // One that two of the three match carries their two identifiers.
    r.publish(msg("o/b/t", "p", QoS::AtLeastOnce, false, None), t0);
    let (_, c) = connect(&mut r, "overlap", false, HOUR);
    let sent: Vec<(String, Vec<u32>)> = drain(&mut r, s, c.conn_id, t0)
        .iter()
        .filter_map(|o| match o {
            Outgoing::Publish {
                delivery,
                dup: false,
                ..
            } => {
                let mut ids: Vec<u32> = delivery.subscription_ids().map(|id| id.get()).collect();
                ids.sort_unstable();
                Some((
                    String::from_utf8_lossy(&delivery.message.payload).into_owned(),
                    ids,
                ))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [("n".to_string(), vec![3, 8]), ("p".to_string(), vec![3, 8])]
    );
}
