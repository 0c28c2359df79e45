//! Which events reach which webhook queue, without sockets.

use super::*;
use crate::broker::message::{ClientId, Origin};
use crate::config::{PayloadEncoding, WebhookUrl};
use holdfast_mqtt::PublishProperties;
use std::time::Duration;

fn hook(name: &str, events: &[WebhookEvent], topics: &[&str], queue_size: usize) -> WebhookConfig {
    WebhookConfig {
        name: name.into(),
        url: WebhookUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 9,
            path: "/".into(),
        },
        events: if events.is_empty() {
            EventSet::ALL
        } else {
            EventSet(events.iter().fold(0, |m, e| m | e.bit()))
        },
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        headers: Vec::new(),
        timeout: Duration::from_secs(1),
        max_retries: 0,
        queue_size,
        pool_size: 1,
        payload_encoding: PayloadEncoding::Plain,
        ca: None,
    }
}

fn message(topic_name: &str) -> Message {
    Message::new(
        topic_name,
        Bytes::from_static(b"21.5"),
        QoS::AtLeastOnce,
        false,
        PublishProperties::default(),
        Origin::client(
            crate::broker::message::SessionId::test(1),
            ClientId::from(ByteStr::from("pub-1")),
        ),
    )
}

/// Everything queued so far for webhook `i`.
fn drain(w: &Webhooks, i: usize) -> Vec<Event> {
    let mut rx = w.hooks[i].rx.lock().unwrap();
    let rx = rx.as_mut().unwrap();
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[test]
fn with_no_webhooks_nothing_is_wanted_and_nothing_is_built() {
    let w = Webhooks::new(&[], "n");
    assert!(w.is_empty());
    for e in WebhookEvent::ALL {
        assert!(!w.wants(e));
    }
    w.client_connected(|| panic!("built an event nobody wants"));
    w.message_acked(&ClientId::from("c"), None, PacketId::new(1), || {
        panic!("looked up an ack nobody wants")
    });
    w.message_publish(&ClientId::from("c"), None, &message("a"));
    assert!(w.snapshot().is_empty());
}

#[test]
fn message_events_follow_the_topic_filters_and_the_event_list() {
    let w = Webhooks::new(
        &[
            hook(
                "sensors",
                &[WebhookEvent::MessagePublish],
                &["sensors/#"],
                10,
            ),
            hook("all", &[], &["#"], 10),
        ],
        "gw",
    );
    w.message_publish(&ClientId::from("dev"), Some("u"), &message("sensors/t1"));
    w.message_publish(&ClientId::from("dev"), Some("u"), &message("other/t1"));
    w.message_publish(&ClientId::from("dev"), Some("u"), &message("$SYS/x"));
    w.message_dropped(
        "no_subscribers",
        Some("dev"),
        None,
        "sensors/t2",
        QoS::AtMostOnce,
        false,
        &Bytes::new(),
    );
    let sensors = drain(&w, 0);
    assert_eq!(sensors.len(), 1);
    assert_eq!(sensors[0].kind, WebhookEvent::MessagePublish);
    let Detail::Message(d) = &sensors[0].detail else {
        panic!("not a message event");
    };
    assert_eq!(
        (d.topic.as_str(), d.qos, &d.payload[..]),
        ("sensors/t1", 1, &b"21.5"[..])
    );
    // "#" does not match $SYS topics (MQTT 4.7.2).
    let all: Vec<_> = drain(&w, 1).iter().map(|e| e.kind).collect();
    assert_eq!(
        all,
        [
            WebhookEvent::MessagePublish,
            WebhookEvent::MessagePublish,
            WebhookEvent::MessageDropped
        ]
    );
}

#[test]
fn subscriptions_post_only_granted_and_removed_filters() {
    let w = Webhooks::new(&[hook("h", &[], &["#"], 10)], "gw");
    let opts = SubscriptionOptions::default();
    let filters = [
        (ByteStr::from("a/#"), opts),
        (ByteStr::from("b"), opts),
        (ByteStr::from("c"), opts),
    ];
    w.session_subscribed(&ClientId::from("c1"), None, &filters, &[1, 0x87, 2]);
    w.session_unsubscribed(
        &ClientId::from("c1"),
        None,
        &[ByteStr::from("a/#"), ByteStr::from("z")],
        &[0, 0x11],
    );
    let got: Vec<_> = drain(&w, 0)
        .into_iter()
        .map(|e| match e.detail {
            Detail::Subscription { topic, qos } => (e.kind, topic, qos),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            (WebhookEvent::SessionSubscribed, "a/#".to_owned(), Some(1)),
            (WebhookEvent::SessionSubscribed, "c".to_owned(), Some(2)),
            (WebhookEvent::SessionUnsubscribed, "a/#".to_owned(), None),
        ]
    );
}

#[test]
fn a_full_queue_drops_new_events_and_counts_them() {
    let w = Webhooks::new(
        &[hook("h", &[WebhookEvent::MessagePublish], &["#"], 3)],
        "gw",
    );
    for _ in 0..10 {
        w.message_publish(&ClientId::from("c"), None, &message("t"));
    }
    let s = &w.snapshot()[0];
    assert_eq!((s.events, s.queued, s.dropped_queue_full), (10, 3, 7));
    assert_eq!(drain(&w, 0).len(), 3);
    assert_eq!(w.snapshot()[0].queued, 0);
}

#[test]
fn delivered_names_the_publisher_only_when_wanted() {
    let w = Webhooks::new(
        &[hook("h", &[WebhookEvent::MessageDelivered], &["a/#"], 10)],
        "gw",
    );
    let delivery = |t: &str| Delivery {
        message: Arc::new(message(t)),
        qos: QoS::AtMostOnce,
        retain: false,
        subscription_id: None,
        more_subscription_ids: None,
        seq: 0,
        shared: None,
    };
    w.message_delivered(&ClientId::from("sub"), None, &delivery("b"));
    w.message_delivered(&ClientId::from("sub"), Some("u"), &delivery("a/1"));
    let events = drain(&w, 0);
    assert_eq!(events.len(), 1);
    let Detail::Message(d) = &events[0].detail else {
        panic!("not a message event");
    };
    assert_eq!(d.from_clientid.as_deref(), Some("pub-1"));
    assert_eq!(d.qos, 0);
    assert_eq!(events[0].clientid, "sub");
}
