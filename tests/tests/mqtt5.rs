//! MQTT 5 features end to end: topic aliases both ways, message and session expiry, no-local,
//! retain-as-published, subscription identifiers, property pass-through, assigned client ids,
//! receive maximum, the client's maximum packet size, will delay, shared subscriptions and QoS 2
//! duplicates.
//!
//! Driven with rumqttc v5 and the mosquitto clients; where a client library would hide the wire
//! (topic aliases, DUP flags, reason codes, a resent packet id) a bare client writes rumqttc's
//! packet types to a plain socket and reads back exactly what the broker sent.

use bytes::Bytes;
use holdfast_tests::raw5::Raw;
use holdfast_tests::{mosquitto_pub, Gateway, MosquittoSub};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill,
    LastWillProperties, Packet, PubAckReason, PubRel, Publish, PublishProperties,
    SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

fn publish(topic: &str, pkid: u16, payload: &str, properties: PublishProperties) -> Publish {
    let mut p = Publish::new(
        topic,
        QoS::AtLeastOnce,
        payload.to_string(),
        Some(properties),
    );
    p.pkid = pkid;
    p
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn session_props(expiry: u32) -> ConnectProperties {
    let mut p = ConnectProperties::new();
    p.session_expiry_interval = Some(expiry);
    p
}

fn will(topic: &str, payload: &str, delay: Option<u32>, expiry: Option<u32>) -> LastWill {
    LastWill::new(
        topic,
        payload,
        QoS::AtMostOnce,
        false,
        Some(LastWillProperties {
            delay_interval: delay,
            payload_format_indicator: None,
            message_expiry_interval: expiry,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// rumqttc v5 helpers.

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

fn persistent(id: &str, port: u16, session_expiry: u32) -> MqttOptions {
    let mut o = options(id, port);
    o.set_clean_start(false);
    o.set_connect_properties(session_props(session_expiry));
    o
}

async fn connack(ev: &mut EventLoop) -> ConnAck {
    loop {
        match timeout(WAIT, ev.poll())
            .await
            .expect("CONNACK in time")
            .expect("connected")
        {
            Event::Incoming(Packet::ConnAck(a)) => return a,
            _ => continue,
        }
    }
}

/// Polls until SUBACK; returns the PUBLISHes (retained ones) received meanwhile.
async fn suback(ev: &mut EventLoop) -> Vec<Publish> {
    let mut seen = Vec::new();
    loop {
        match timeout(WAIT, ev.poll())
            .await
            .expect("SUBACK in time")
            .expect("subscribed")
        {
            Event::Incoming(Packet::SubAck(_)) => return seen,
            Event::Incoming(Packet::Publish(p)) => seen.push(p),
            _ => {}
        }
    }
}

/// The next PUBLISH within `within`, or `None`. A connection error fails the test.
async fn next_publish(ev: &mut EventLoop, within: Duration) -> Option<Publish> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e:?}"),
            Err(_) => return None,
        }
    }
}

async fn publishes(ev: &mut EventLoop, n: usize, within: Duration) -> Vec<Publish> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_publish(ev, left).await {
            Some(p) => got.push(p),
            None => break,
        }
    }
    got
}

/// Polls until `n` PUBACKs (or PUBCOMPs, for QoS 2) arrived; returns the PUBLISHes received
/// meanwhile.
async fn acked(ev: &mut EventLoop, n: usize) -> Vec<Publish> {
    let mut seen = Vec::new();
    let mut acks = 0;
    while acks < n {
        match timeout(WAIT, ev.poll())
            .await
            .expect("PUBACK in time")
            .expect("connected")
        {
            Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => acks += 1,
            Event::Incoming(Packet::Publish(p)) => seen.push(p),
            _ => {}
        }
    }
    seen
}

async fn disconnect(client: &AsyncClient, ev: &mut EventLoop) {
    client.disconnect().await.unwrap();
    while let Ok(Ok(e)) = timeout(WAIT, ev.poll()).await {
        if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
}

/// A connected rumqttc publisher.
async fn publisher(id: &str, port: u16) -> (AsyncClient, EventLoop) {
    let (client, mut ev) = AsyncClient::new(options(id, port), 100);
    connack(&mut ev).await;
    (client, ev)
}

/// A connected rumqttc client subscribed to `filters`.
async fn subscriber(opts: MqttOptions, filters: Vec<Filter>) -> (AsyncClient, EventLoop) {
    let (client, mut ev) = AsyncClient::new(opts, 100);
    connack(&mut ev).await;
    client.subscribe_many(filters).await.unwrap();
    let retained = suback(&mut ev).await;
    assert!(retained.is_empty(), "{retained:?}");
    (client, ev)
}

// ---------------------------------------------------------------------------------------------
// Topic aliases.

#[test]
fn an_inbound_topic_alias_stands_for_the_topic_it_was_set_with() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "alias/#", &["-v", "-V", "5"]);
    let mut c = Raw::connected(gw.port, "alias-in");
    let with_alias = PublishProperties {
        topic_alias: Some(1),
        ..PublishProperties::default()
    };
    assert_eq!(
        c.publish_qos1(publish("alias/t", 1, "first", with_alias.clone())),
        PubAckReason::Success
    );
    assert_eq!(
        c.publish_qos1(publish("", 2, "second", with_alias)),
        PubAckReason::Success,
        "an empty topic with a known alias is accepted"
    );
    assert_eq!(
        sub.wait_for(2, WAIT),
        vec!["alias/t first", "alias/t second"]
    );
}

#[test]
fn a_topic_alias_above_the_servers_maximum_is_answered_with_disconnect_0x94() {
    let gw = Gateway::start_with_mqtt("max_topic_alias = 2");
    let (mut c, ack) = Raw::connect(gw.port, "alias-max", true, ConnectProperties::new(), None);
    assert_eq!(
        ack.properties.as_ref().and_then(|p| p.topic_alias_max),
        Some(2),
        "CONNACK announces the maximum: {ack:?}"
    );
    let alias = |n| PublishProperties {
        topic_alias: Some(n),
        ..PublishProperties::default()
    };
    let ok = c.publish_qos1(publish("am/ok", 1, "x", alias(2)));
    assert!(
        matches!(
            ok,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "alias 2 is within the maximum: {ok:?}"
    );
    c.send(Packet::Publish(publish("am/over", 2, "y", alias(3))));
    assert_eq!(
        c.closed_within(WAIT),
        Some(DisconnectReasonCode::TopicAliasInvalid)
    );
}

#[test]
fn a_subscriber_with_a_topic_alias_maximum_gets_repeated_topics_as_aliases() {
    let gw = Gateway::start();
    let mut props = ConnectProperties::new();
    props.topic_alias_max = Some(5);
    let (mut aliased, _) = Raw::connect(gw.port, "alias-out", true, props, None);
    aliased.subscribe(vec![filter("oa/#", QoS::AtMostOnce)], None);
    let mut plain = Raw::connected(gw.port, "alias-none");
    plain.subscribe(vec![filter("oa/#", QoS::AtMostOnce)], None);

    for (topic, payload) in [("oa/x", "1"), ("oa/x", "2"), ("oa/y", "3"), ("oa/x", "4")] {
        assert!(mosquitto_pub(gw.port, topic, payload, &["-q", "1"]));
    }

    let got = aliased.publishes(4, WAIT);
    let seen: Vec<(String, Option<u16>, String)> = got
        .iter()
        .map(|p| {
            let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
            (text(&p.topic), alias, text(&p.payload))
        })
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let x = seen[0].1.expect("the first oa/x sets an alias");
    let y = seen[2].1.expect("the first oa/y sets an alias");
    assert_ne!(x, y, "{seen:?}");
    assert!((1..=5).contains(&x) && (1..=5).contains(&y), "{seen:?}");
    assert_eq!(
        seen,
        vec![
            ("oa/x".into(), Some(x), "1".into()),
            (String::new(), Some(x), "2".into()),
            ("oa/y".into(), Some(y), "3".into()),
            (String::new(), Some(x), "4".into()),
        ]
    );

    let got = plain.publishes(4, WAIT);
    assert_eq!(got.len(), 4);
    for p in &got {
        assert!(!p.topic.is_empty(), "{p:?}");
        assert_eq!(p.properties.as_ref().and_then(|p| p.topic_alias), None);
    }
}

#[test]
fn a_delivery_too_large_for_the_client_leaves_no_unknown_topic_alias_behind() {
    let gw = Gateway::start();
    let mut props = ConnectProperties::new();
    props.topic_alias_max = Some(5);
    props.max_packet_size = Some(100);
    let (mut sub, _) = Raw::connect(gw.port, "alias-big", true, props, None);
    sub.subscribe(vec![filter("tl/#", QoS::AtMostOnce)], None);
    assert!(mosquitto_pub(
        gw.port,
        "tl/t",
        &"x".repeat(500),
        &["-q", "1"]
    ));
    assert!(mosquitto_pub(gw.port, "tl/t", "small", &["-q", "1"]));
    let p = sub.next_publish(WAIT).expect("the small message");
    assert_eq!(text(&p.payload), "small");
    // The client never saw the dropped packet, so it cannot know an alias set by it.
    assert_eq!(
        text(&p.topic),
        "tl/t",
        "the first delivery the client sees must carry the topic name: {p:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Message expiry.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_not_delivered_and_a_live_one_carries_its_remaining_expiry() {
    let gw = Gateway::start();
    let (c, mut ev) = subscriber(
        persistent("exp-sub", gw.port, 60),
        vec![filter("exp/#", QoS::AtLeastOnce)],
    )
    .await;
    disconnect(&c, &mut ev).await;

    let (p, mut pev) = publisher("exp-pub", gw.port).await;
    for (payload, expiry) in [("short", 1), ("long", 60)] {
        let props = PublishProperties {
            message_expiry_interval: Some(expiry),
            ..PublishProperties::default()
        };
        p.publish_with_properties("exp/t", QoS::AtLeastOnce, false, payload, props)
            .await
            .unwrap();
    }
    acked(&mut pev, 2).await;

    // The point of the test: time passes while the subscriber is away.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (_c, mut ev) = AsyncClient::new(persistent("exp-sub", gw.port, 60), 100);
    assert!(connack(&mut ev).await.session_present);
    let first = next_publish(&mut ev, WAIT).await.expect("the 60 s message");
    assert_eq!(text(&first.payload), "long", "the 1 s message expired");
    let left = first
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the remaining expiry is sent");
    assert!(
        (50..=58).contains(&left),
        "2.5 s of a 60 s expiry have passed; remaining sent: {left}"
    );
    assert!(next_publish(&mut ev, Duration::from_millis(500))
        .await
        .is_none());
}

// ---------------------------------------------------------------------------------------------
// Subscription options and identifiers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_local_subscriber_does_not_get_its_own_messages_back() {
    let gw = Gateway::start();
    let mut no_local = filter("nl/t", QoS::AtLeastOnce);
    no_local.nolocal = true;
    let (a, mut a_ev) = subscriber(options("nl-a", gw.port), vec![no_local]).await;
    let (_b, mut b_ev) = subscriber(
        options("nl-b", gw.port),
        vec![filter("nl/t", QoS::AtLeastOnce)],
    )
    .await;

    a.publish("nl/t", QoS::AtLeastOnce, false, "from-a")
        .await
        .unwrap();
    let mut a_got = acked(&mut a_ev, 1).await;
    assert!(mosquitto_pub(gw.port, "nl/t", "from-other", &["-q", "1"]));
    a_got.extend(publishes(&mut a_ev, 1, WAIT).await);
    let a_got: Vec<String> = a_got.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(
        a_got,
        vec!["from-other"],
        "its own message is not sent back"
    );

    let b_got: Vec<String> = publishes(&mut b_ev, 2, WAIT)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(b_got, vec!["from-a", "from-other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages() {
    let gw = Gateway::start();
    let mut kept = filter("rap/kept", QoS::AtLeastOnce);
    kept.preserve_retain = true;
    let (_s, mut s_ev) = subscriber(
        options("rap-sub", gw.port),
        vec![kept, filter("rap/cleared", QoS::AtLeastOnce)],
    )
    .await;
    let (p, mut p_ev) = publisher("rap-pub", gw.port).await;
    p.publish("rap/kept", QoS::AtLeastOnce, true, "k")
        .await
        .unwrap();
    p.publish("rap/cleared", QoS::AtLeastOnce, true, "c")
        .await
        .unwrap();
    acked(&mut p_ev, 2).await;
    let got: Vec<(String, bool)> = publishes(&mut s_ev, 2, WAIT)
        .await
        .iter()
        .map(|p| (text(&p.topic), p.retain))
        .collect();
    assert_eq!(
        got,
        vec![("rap/kept".into(), true), ("rap/cleared".into(), false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_the_identifier_of_the_subscription_they_matched() {
    let gw = Gateway::start();
    let (p, mut p_ev) = publisher("sid-pub", gw.port).await;
    p.publish("sid/r", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    acked(&mut p_ev, 1).await;

    let (s, mut s_ev) = AsyncClient::new(options("sid-sub", gw.port), 100);
    connack(&mut s_ev).await;
    s.subscribe_with_properties(
        "sid/#",
        QoS::AtLeastOnce,
        SubscribeProperties {
            id: Some(7),
            user_properties: Vec::new(),
        },
    )
    .await
    .unwrap();
    let mut got = suback(&mut s_ev).await;
    s.subscribe("plain/#", QoS::AtLeastOnce).await.unwrap();
    got.extend(suback(&mut s_ev).await);

    p.publish("sid/a", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    p.publish("plain/a", QoS::AtLeastOnce, false, "plain")
        .await
        .unwrap();
    acked(&mut p_ev, 2).await;
    let need = 3 - got.len();
    got.extend(publishes(&mut s_ev, need, WAIT).await);

    let ids: Vec<(String, Vec<usize>)> = got
        .iter()
        .map(|p| {
            let ids = p
                .properties
                .as_ref()
                .map(|p| p.subscription_identifiers.clone())
                .unwrap_or_default();
            (text(&p.topic), ids)
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            ("sid/r".into(), vec![7]),
            ("sid/a".into(), vec![7]),
            ("plain/a".into(), vec![]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_pass_through_unchanged_to_a_v5_subscriber() {
    let gw = Gateway::start();
    let (_s, mut s_ev) = subscriber(
        options("prop-sub", gw.port),
        vec![filter("prop/t", QoS::AtLeastOnce)],
    )
    .await;
    let (p, mut p_ev) = publisher("prop-pub", gw.port).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: vec![
            ("k1".into(), "v1".into()),
            ("k2".into(), "v2".into()),
            ("k1".into(), "again".into()),
        ],
        subscription_identifiers: Vec::new(),
        content_type: Some("application/json".into()),
    };
    p.publish_with_properties(
        "prop/t",
        QoS::AtLeastOnce,
        false,
        "{\"x\":1}",
        props.clone(),
    )
    .await
    .unwrap();
    acked(&mut p_ev, 1).await;
    let got = next_publish(&mut s_ev, WAIT).await.expect("the message");
    assert_eq!(text(&got.payload), "{\"x\":1}");
    assert_eq!(got.properties, Some(props));
}

// ---------------------------------------------------------------------------------------------
// Client identifiers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_client_with_an_empty_id_is_assigned_one_that_names_its_session() {
    let gw = Gateway::start();
    let (c, mut ev) = AsyncClient::new(persistent("", gw.port, 60), 10);
    let ack = connack(&mut ev).await;
    let assigned = ack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .unwrap_or_else(|| panic!("CONNACK without an assigned client identifier: {ack:?}"));
    assert!(!assigned.is_empty());
    assert!(!ack.session_present);
    disconnect(&c, &mut ev).await;

    let (_c, mut ev) = AsyncClient::new(persistent(&assigned, gw.port, 60), 10);
    assert!(
        connack(&mut ev).await.session_present,
        "the assigned id resumes the session"
    );
}

#[test]
fn a_3_1_1_client_with_an_empty_id_and_clean_session_false_gets_return_code_2() {
    let gw = Gateway::start();
    let connect = |flags: u8| {
        let mut s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        // CONNECT 3.1.1, keepalive 60, zero-length client id.
        s.write_all(&[
            0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 0,
        ])
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, true),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= 4 && flags & 0x02 != 0 {
                        return (got, false);
                    }
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (ack, closed) = connect(0x00);
    assert_eq!(ack, vec![0x20, 2, 0, 2], "identifier rejected");
    assert!(closed);
    let (ack, _) = connect(0x02);
    assert_eq!(
        ack,
        vec![0x20, 2, 0, 0],
        "with clean session it is accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// Flow control and the client's limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_maximum_of_2_bounds_the_unacknowledged_publishes_sent_to_the_client() {
    let gw = Gateway::start();
    let mut o = options("rm-sub", gw.port);
    o.set_receive_maximum(Some(2));
    o.set_manual_acks(true);
    let (s, mut s_ev) = subscriber(o, vec![filter("rm/t", QoS::AtLeastOnce)]).await;

    let n = 10;
    let port = gw.port;
    let pub_task = tokio::spawn(async move {
        let (p, mut p_ev) = publisher("rm-pub", port).await;
        for i in 0..n {
            p.publish("rm/t", QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .unwrap();
        }
        acked(&mut p_ev, n).await;
    });

    let mut outstanding: VecDeque<Publish> = VecDeque::new();
    let mut got = Vec::new();
    while got.len() < n {
        if outstanding.len() < 2 {
            let p = next_publish(&mut s_ev, WAIT)
                .await
                .unwrap_or_else(|| panic!("stalled after {got:?}"));
            got.push(text(&p.payload));
            outstanding.push_back(p);
        } else {
            if let Some(extra) = next_publish(&mut s_ev, Duration::from_millis(300)).await {
                panic!(
                    "a third unacknowledged publish ({}) after {got:?}",
                    text(&extra.payload)
                );
            }
            let oldest = outstanding.pop_front().unwrap();
            s.ack(&oldest).await.unwrap();
        }
    }
    pub_task.await.unwrap();
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "none lost, in order");
}

/// Sends three 500-byte messages and then a small one at `qos` to a subscriber whose maximum
/// packet size is 100, through a window of 2: big messages that kept their inflight slot would
/// block the small one.
async fn big_messages_are_dropped_and_the_small_one_follows(qos: QoS) {
    let gw = Gateway::start_with_mqtt("max_inflight = 2");
    let mut o = options("mps-sub", gw.port);
    o.set_max_packet_size(Some(100));
    let (_s, mut s_ev) = subscriber(o, vec![filter("mps/t", qos)]).await;
    let (p, mut p_ev) = publisher("mps-pub", gw.port).await;
    for _ in 0..3 {
        p.publish("mps/t", qos, false, "x".repeat(500))
            .await
            .unwrap();
    }
    p.publish("mps/t", qos, false, "small").await.unwrap();
    acked(&mut p_ev, 4).await;
    let got = next_publish(&mut s_ev, WAIT)
        .await
        .expect("the small message after the dropped big ones");
    assert_eq!(text(&got.payload), "small");
    assert!(next_publish(&mut s_ev, Duration::from_millis(300))
        .await
        .is_none());
    let log = gw.log();
    assert_eq!(
        log.matches("larger than the client's maximum packet size")
            .count(),
        3,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_message_over_the_clients_maximum_packet_size_is_dropped_without_stalling_the_queue()
{
    big_messages_are_dropped_and_the_small_one_follows(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_over_the_clients_maximum_packet_size_is_dropped_without_stalling_the_queue()
{
    big_messages_are_dropped_and_the_small_one_follows(QoS::ExactlyOnce).await;
}

// ---------------------------------------------------------------------------------------------
// Session expiry and wills.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_expiry_1_is_gone_after_2_5_seconds_and_one_with_60_is_kept() {
    let gw = Gateway::start();
    for (id, expiry) in [("se-short", 1), ("se-long", 60)] {
        let (c, mut ev) = AsyncClient::new(persistent(id, gw.port, expiry), 10);
        assert!(!connack(&mut ev).await.session_present);
        disconnect(&c, &mut ev).await;
    }
    // The point of the test: time passes while the clients are away.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_a, mut a_ev) = AsyncClient::new(persistent("se-short", gw.port, 1), 10);
    assert!(!connack(&mut a_ev).await.session_present, "expired");
    let (_b, mut b_ev) = AsyncClient::new(persistent("se-long", gw.port, 60), 10);
    assert!(connack(&mut b_ev).await.session_present, "still kept");
}

#[test]
fn a_will_with_a_delay_is_published_only_after_the_delay() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "wd/#", &["-v"]);
    let (c, ack) = Raw::connect(
        gw.port,
        "wd-1",
        true,
        session_props(60),
        Some(will("wd/gone", "bye", Some(2), None)),
    );
    assert_eq!(ack.code, ConnectReturnCode::Success);
    drop(c);
    let dropped = Instant::now();
    assert!(
        sub.wait_for(1, Duration::from_secs(1)).is_empty(),
        "not within the first second"
    );
    let got = sub.wait_for(1, WAIT);
    let after = dropped.elapsed();
    assert_eq!(got, vec!["wd/gone bye"]);
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(4),
        "published after {after:?}"
    );
}

#[test]
fn a_reconnect_within_the_will_delay_cancels_the_will() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "wr/#", &["-v"]);
    let (c, _) = Raw::connect(
        gw.port,
        "wr-1",
        true,
        session_props(60),
        Some(will("wr/gone", "bye", Some(2), None)),
    );
    drop(c);
    let dropped = Instant::now();
    assert!(gw.wait_for_log("client_id=wr-1 reason=\"tcp_closed\"", WAIT));
    let (_back, ack) = Raw::connect(gw.port, "wr-1", false, session_props(60), None);
    assert!(ack.session_present);
    assert!(dropped.elapsed() < Duration::from_secs(1));
    // The point of the test: wait past the delay (and a timer tick) and see nothing.
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(dropped.elapsed()));
    assert!(mosquitto_pub(gw.port, "wr/marker", "m", &["-q", "1"]));
    assert_eq!(sub.wait_for(1, WAIT), vec!["wr/marker m"]);
}

#[test]
fn a_delayed_will_is_published_when_the_session_ends_first() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "we/#", &["-v"]);
    let (c, _) = Raw::connect(
        gw.port,
        "we-1",
        true,
        session_props(1),
        Some(will("we/gone", "bye", Some(30), None)),
    );
    drop(c);
    let dropped = Instant::now();
    let got = sub.wait_for(1, WAIT);
    assert_eq!(got, vec!["we/gone bye"]);
    assert!(
        dropped.elapsed() < Duration::from_secs(4),
        "{:?}",
        dropped.elapsed()
    );
}

#[test]
fn a_clean_start_reconnect_publishes_the_pending_delayed_will_at_once() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "wc/#", &["-v"]);
    let (c, _) = Raw::connect(
        gw.port,
        "wc-1",
        true,
        session_props(60),
        Some(will("wc/gone", "bye", Some(30), None)),
    );
    drop(c);
    assert!(gw.wait_for_log("client_id=wc-1 reason=\"tcp_closed\"", WAIT));
    // Clean start discards the session: the session ends and its will is due now, not in 30 s.
    let (_back, ack) = Raw::connect(gw.port, "wc-1", true, session_props(60), None);
    assert!(!ack.session_present);
    assert_eq!(sub.wait_for(1, Duration::from_secs(3)), vec!["wc/gone bye"]);
}

#[test]
fn a_wills_message_expiry_counts_from_when_the_will_is_published() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "wx/#", &["-v", "-V", "5"]);
    let (c, _) = Raw::connect(
        gw.port,
        "wx-1",
        true,
        ConnectProperties::new(),
        Some(will("wx/gone", "bye", None, Some(1))),
    );
    // The point of the test: the client stays connected longer than the will's expiry.
    std::thread::sleep(Duration::from_millis(2200));
    drop(c);
    assert_eq!(sub.wait_for(1, WAIT), vec!["wx/gone bye"]);
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions and QoS 2.

#[test]
fn shared_subscriptions_get_no_retained_messages_on_subscribe() {
    let gw = Gateway::start();
    assert!(mosquitto_pub(gw.port, "sh/r", "R", &["-r", "-q", "1"]));
    let plain = MosquittoSub::start(gw.port, "sh/#", &["-v"]);
    assert_eq!(
        plain.wait_for(1, WAIT),
        vec!["sh/r R"],
        "the retained message exists"
    );
    let shared = MosquittoSub::start(gw.port, "$share/g/sh/#", &["-v", "-V", "5"]);
    assert!(mosquitto_pub(gw.port, "sh/live", "L", &["-q", "1"]));
    assert_eq!(shared.wait_for(1, WAIT), vec!["sh/live L"]);
}

#[test]
fn a_qos2_publish_resent_with_dup_before_pubrel_is_delivered_once() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "q2/#", &["-v", "-q", "2"]);
    let mut c = Raw::connected(gw.port, "q2-pub");
    let mut p = publish("q2/t", 7, "once", PublishProperties::default());
    p.qos = QoS::ExactlyOnce;
    for dup in [false, true] {
        p.dup = dup;
        c.send(Packet::Publish(p.clone()));
        match c.expect(WAIT) {
            Packet::PubRec(rec) => assert_eq!(rec.pkid, 7),
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    c.send(Packet::PubRel(PubRel::new(7, None)));
    match c.expect(WAIT) {
        Packet::PubComp(comp) => assert_eq!(comp.pkid, 7),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    assert!(mosquitto_pub(gw.port, "q2/marker", "after", &["-q", "2"]));
    assert_eq!(sub.wait_for(2, WAIT), vec!["q2/t once", "q2/marker after"]);
}
