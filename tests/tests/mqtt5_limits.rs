//! MQTT 5 details a client library relies on: exceeding the gateway's Receive Maximum is
//! answered with DISCONNECT 0x93 (not a bare close), `mqtt.server_keepalive` is announced in
//! CONNACK and enforced, and overlapping subscriptions get one copy with all their
//! subscription identifiers. A bare client (rumqttc's packet types on a plain
//! socket) sees exactly what the broker sent.

use holdfast_tests::raw5::Raw;
use holdfast_tests::{free_port, test_config, Gateway};
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter, Packet, PubAck,
    PubAckReason, Publish,
};
use rumqttc::v5::mqttbytes::QoS;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn publish(topic: &str, qos: QoS, pkid: u16) -> Publish {
    let mut p = Publish::new(topic, qos, "x", None);
    p.pkid = pkid;
    p
}

/// CONNECT with `keep_alive`, no properties; returns the CONNACK's Server Keep Alive.
fn connect_with_keepalive(port: u16, client_id: &str, keep_alive: u16) -> (Raw, Option<u16>) {
    let mut raw = Raw::open(port);
    raw.send(Packet::Connect(
        Connect {
            keep_alive,
            client_id: client_id.to_string(),
            clean_start: true,
            properties: Some(ConnectProperties::new()),
        },
        None,
        None,
    ));
    match raw.expect(WAIT) {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
            (raw, ack.properties.and_then(|p| p.server_keep_alive))
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn one_qos2_publish_past_the_receive_maximum_gets_disconnect_0x93() {
    let port = free_port();
    let gw = Gateway::start_config(&test_config(port, "max_awaiting_rel = 5"), port);
    let (mut raw, ack) = Raw::connect(port, "greedy", true, ConnectProperties::new(), None);
    let receive_max = ack.properties.and_then(|p| p.receive_max);
    assert_eq!(receive_max, Some(5), "CONNACK states the Receive Maximum");
    // Five QoS 2 messages whose PUBREL never comes, then a sixth.
    for id in 1..=5 {
        raw.send(Packet::Publish(publish("q2", QoS::ExactlyOnce, id)));
        assert!(matches!(raw.expect(WAIT), Packet::PubRec(_)));
    }
    // A resend of one it holds is no new message: answered again, not refused.
    let mut dup = publish("q2", QoS::ExactlyOnce, 3);
    dup.dup = true;
    raw.send(Packet::Publish(dup));
    assert!(matches!(raw.expect(WAIT), Packet::PubRec(_)));
    raw.send(Packet::Publish(publish("q2", QoS::ExactlyOnce, 6)));
    assert_eq!(
        raw.closed_within(WAIT),
        Some(DisconnectReasonCode::ReceiveMaximumExceeded),
        "log:\n{}",
        gw.log()
    );
}

#[test]
fn qos1_publishes_held_back_past_the_receive_maximum_get_disconnect_0x93() {
    // A subscriber that never acknowledges fills its window (32) and its queue (1): the
    // publisher's next QoS 1 messages are held back unacknowledged, and a client that keeps
    // sending past the Receive Maximum it was told is disconnected with 0x93.
    let port = free_port();
    let config = test_config(port, "max_awaiting_rel = 5\nmax_mqueue_len = 1");
    let gw = Gateway::start_config(&config, port);
    let (mut stuck, _) = Raw::connect(port, "stuck", true, ConnectProperties::new(), None);
    stuck.subscribe_one("q1", QoS::AtLeastOnce);
    let (mut greedy, _) = Raw::connect(port, "greedy", true, ConnectProperties::new(), None);
    let mut acked = 0;
    let mut reason = None;
    let deadline = Instant::now() + WAIT;
    for id in 1..=60u16 {
        greedy.send(Packet::Publish(publish("q1", QoS::AtLeastOnce, id)));
        // Take whatever came back so far without waiting for more.
        while let Ok(p) = greedy.read(Duration::from_millis(20)) {
            match p {
                Packet::PubAck(PubAck { reason: r, .. }) => {
                    assert_eq!(r, PubAckReason::Success);
                    acked += 1;
                }
                Packet::Disconnect(d) => reason = Some(d.reason_code),
                other => panic!("unexpected {other:?}"),
            }
        }
        if reason.is_some() || Instant::now() > deadline {
            break;
        }
    }
    if reason.is_none() {
        reason = greedy.closed_within(WAIT);
    }
    assert_eq!(
        reason,
        Some(DisconnectReasonCode::ReceiveMaximumExceeded),
        "after {acked} PUBACKs; log:\n{}",
        gw.log()
    );
    // What reached the stuck subscriber's window and queue was acknowledged; five more were
    // held back unacknowledged, and the next was one too many.
    assert!(acked >= 2, "{acked}");
}

#[test]
fn server_keepalive_is_announced_to_v5_clients_and_enforced() {
    let port = free_port();
    let gw = Gateway::start_config(&test_config(port, "server_keepalive = \"1s\""), port);
    let (mut raw, server_keep_alive) = connect_with_keepalive(port, "sleepy", 600);
    assert_eq!(
        server_keep_alive,
        Some(1),
        "CONNACK carries Server Keep Alive"
    );
    // Silent: 1 s x 1.5 later it is gone, with 0x8D, not after 600 s.
    let started = Instant::now();
    assert_eq!(
        raw.closed_within(WAIT),
        Some(DisconnectReasonCode::KeepAliveTimeout),
        "log:\n{}",
        gw.log()
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Without the key, the client's own keep alive stands and CONNACK says nothing.
    let port = free_port();
    let _gw = Gateway::start_config(&test_config(port, ""), port);
    let (_raw, server_keep_alive) = connect_with_keepalive(port, "own", 600);
    assert_eq!(server_keep_alive, None);
}

#[test]
fn overlapping_subscriptions_get_one_copy_with_every_identifier_at_the_highest_qos() {
    let port = free_port();
    let gw = Gateway::start_config(&test_config(port, ""), port);
    let (mut sub, _) = Raw::connect(port, "overlap", true, ConnectProperties::new(), None);
    sub.subscribe(vec![Filter::new("ov/#", QoS::AtMostOnce)], Some(3));
    sub.subscribe(vec![Filter::new("ov/+/t", QoS::AtLeastOnce)], Some(8));
    sub.subscribe(vec![Filter::new("ov/a/t", QoS::AtMostOnce)], None);
    let mut publisher = Raw::connected(port, "overlap-pub");
    publisher.publish_all("ov/a/t", &["one".to_string()], 1, false);

    let first = sub.next_publish(WAIT).expect("one copy");
    assert_eq!(first.qos, QoS::AtLeastOnce, "the highest QoS of the three");
    let mut ids = first
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [3, 8],
        "every identifier the matching subscriptions have"
    );
    sub.ack(&first);
    assert!(
        sub.next_publish(Duration::from_millis(500)).is_none(),
        "no second copy; log:\n{}",
        gw.log()
    );
}
