//! Per-client limits: `mqtt.messages_rate` / `mqtt.bytes_rate` token buckets (back-pressure,
//! nothing lost, other clients unaffected) and `mqtt.max_subscriptions` (SUBACK 0x80 for
//! 3.1.1, 0x97 quota exceeded for v5) and `mqtt.force_shutdown.max_mqueue_len`.
//!
//! Publishers are bare 3.1.1 sockets that write every PUBLISH in one go, as fast as the kernel
//! takes them; the subscriber is `mosquitto_sub`.

use holdfast_tests::raw5::Raw;
use holdfast_tests::{Gateway, MosquittoSub};
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter, Packet, Subscribe,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A remaining length as MQTT's variable byte integer.
fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// A 3.1.1 packet: fixed header byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    remaining_length(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A 3.1.1 client connected with clean session; the CONNACK has been read.
fn connect_311(port: u16, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.extend_from_slice(&[4, 2, 0, 60]);
    string(id, &mut body);
    s.write_all(&packet(0x10, &body)).expect("send CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
    s
}

/// `n` QoS 0 PUBLISH packets to `topic`, payloads "0".."n-1", in one buffer.
fn publishes(topic: &str, n: usize) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 0..n {
        let mut body = Vec::new();
        string(topic, &mut body);
        body.extend_from_slice(i.to_string().as_bytes());
        all.extend_from_slice(&packet(0x30, &body));
    }
    all
}

/// How many lines `sub` printed for `topic` (it runs with `-v`: "topic payload").
fn count(sub: &MosquittoSub, topic: &str) -> usize {
    let prefix = format!("{topic} ");
    sub.messages()
        .iter()
        .filter(|l| l.starts_with(&prefix))
        .count()
}

/// Waits until `sub` has `n` messages on `topic`; returns when they had all arrived.
fn arrival_of(sub: &MosquittoSub, topic: &str, n: usize, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if count(sub, topic) >= n {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_message_rate_slows_a_fast_publisher_without_losing_anything_or_slowing_others() {
    let gw = Gateway::start_with_mqtt("messages_rate = \"100,100\"");
    let sub = MosquittoSub::start(gw.port, "lim/#", &["-v"]);

    let mut fast = connect_311(gw.port, "fast");
    let start = Instant::now();
    fast.write_all(&publishes("lim/fast", 500))
        .expect("write 500 publishes");

    // While the fast client is held back, another client's burst goes straight through.
    std::thread::sleep(Duration::from_millis(1500));
    let mut other = connect_311(gw.port, "other");
    let other_start = Instant::now();
    other
        .write_all(&publishes("lim/other", 50))
        .expect("write 50 publishes");
    let other_done = arrival_of(&sub, "lim/other", 50, WAIT).expect("the other client's 50");
    let other_took = other_done - other_start;
    assert!(
        count(&sub, "lim/fast") < 500,
        "the fast client was not held back"
    );

    let done = arrival_of(&sub, "lim/fast", 500, Duration::from_secs(30)).expect("all 500");
    let took = done - start;
    eprintln!("500 messages at 100/s burst 100: {took:?}; other client's 50: {other_took:?}");
    // 100 at once, then 400 at 100/s.
    assert!(took >= Duration::from_millis(3500), "took only {took:?}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(
        other_took < Duration::from_secs(1),
        "other client took {other_took:?}"
    );

    // Nothing lost, nothing duplicated, in order.
    std::thread::sleep(Duration::from_millis(300));
    let fast_payloads: Vec<String> = sub
        .messages()
        .iter()
        .filter_map(|l| l.strip_prefix("lim/fast ").map(str::to_string))
        .collect();
    let expected: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    assert_eq!(fast_payloads, expected);
    assert_eq!(count(&sub, "lim/other"), 50);
    drop((fast, other));
}

#[test]
fn a_byte_rate_paces_a_publisher_by_its_packet_sizes() {
    // 20 packets of ~1 KB at 4 KB/s with a 4 KB burst: about 4 s.
    let gw = Gateway::start_with_mqtt("bytes_rate = \"4KB,4KB\"");
    let sub = MosquittoSub::start(gw.port, "lim/#", &["-v"]);
    let mut fast = connect_311(gw.port, "bytes");
    let payload = "x".repeat(1000);
    let mut all = Vec::new();
    for _ in 0..20 {
        let mut body = Vec::new();
        string("lim/bytes", &mut body);
        body.extend_from_slice(payload.as_bytes());
        all.extend_from_slice(&packet(0x30, &body));
    }
    let start = Instant::now();
    fast.write_all(&all).expect("write");
    let done = arrival_of(&sub, "lim/bytes", 20, Duration::from_secs(30)).expect("all 20");
    let took = done - start;
    eprintln!("20 x 1 KB at 4 KB/s burst 4 KB: {took:?}");
    assert!(took >= Duration::from_millis(3000), "took only {took:?}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

/// SUBSCRIBE on a bare 3.1.1 socket; returns the SUBACK's codes.
fn suback_311(s: &mut TcpStream, packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for f in filters {
        string(f, &mut body);
        body.push(0);
    }
    s.write_all(&packet(0x82, &body)).expect("send SUBSCRIBE");
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("SUBACK header");
    assert_eq!(head[0], 0x90, "SUBACK");
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).expect("SUBACK body");
    assert_eq!(rest[..2], packet_id.to_be_bytes());
    rest[2..].to_vec()
}

#[test]
fn max_subscriptions_refuses_the_filters_over_the_limit_per_client() {
    let gw = Gateway::start_with_mqtt("max_subscriptions = 2");

    let mut a = connect_311(gw.port, "sub-a");
    assert_eq!(suback_311(&mut a, 1, &["a/1", "a/2", "a/3"]), [0, 0, 0x80]);
    // Subscribing again to a held filter replaces it and costs nothing; a new one is refused.
    assert_eq!(suback_311(&mut a, 2, &["a/1", "a/4"]), [0, 0x80]);

    // Another client has its own quota.
    let mut b = connect_311(gw.port, "sub-b");
    assert_eq!(suback_311(&mut b, 1, &["b/1", "b/2"]), [0, 0]);

    // MQTT 5 hears why: 0x97 quota exceeded.
    let mut v5 = Raw::connected(gw.port, "sub-v5");
    v5.send(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: ["c/1", "c/2", "c/3"]
            .iter()
            .map(|f| Filter::new(*f, QoS::AtMostOnce))
            .collect(),
        properties: None,
    }));
    match v5.expect(WAIT) {
        Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::QuotaExceeded,
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert!(gw.wait_for_log("max_subscriptions reached", WAIT));
}

#[test]
fn force_shutdown_disconnects_a_client_whose_queue_reaches_the_limit() {
    let gw =
        Gateway::start_with_mqtt("max_mqueue_len = 10\nforce_shutdown = { max_mqueue_len = 3 }");
    // A v5 subscriber with a receive maximum of 1 that never acknowledges: one message goes
    // in flight, the rest queue.
    let mut properties = ConnectProperties::new();
    properties.receive_maximum = Some(1);
    let (mut slow, ack) = Raw::connect(gw.port, "slow", true, properties, None);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    slow.subscribe_one("fs/t", QoS::AtLeastOnce);

    let mut publisher = connect_311(gw.port, "pub");
    for id in 1..=4u16 {
        let mut body = Vec::new();
        string("fs/t", &mut body);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(b"m");
        publisher
            .write_all(&packet(0x32, &body))
            .expect("send PUBLISH");
    }
    assert_eq!(
        slow.closed_within(WAIT),
        Some(DisconnectReasonCode::QuotaExceeded)
    );
    assert!(gw.wait_for_log("force_shutdown: mqueue length reached", WAIT));
    let counted = holdfast_tests::wait_until(WAIT, || {
        gw.log()
            .lines()
            .any(|l| l.contains("client disconnected") && l.contains("force_shutdown"))
    });
    assert!(counted, "{}", gw.log());
}

#[test]
fn force_shutdown_disconnects_a_client_whose_queued_bytes_reach_max_heap_size() {
    // 64 KB of messages held for one client at most; the queue length limit is far away.
    let gw = Gateway::start_with_mqtt(
        "max_mqueue_len = 10000\nforce_shutdown = { max_heap_size = \"64KB\" }",
    );
    let mut properties = ConnectProperties::new();
    properties.receive_maximum = Some(1);
    let (mut slow, ack) = Raw::connect(gw.port, "hoarder", true, properties, None);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    slow.subscribe_one("heap/t", QoS::AtLeastOnce);
    // A subscriber that keeps up with the same traffic is not touched.
    let keeps_up = MosquittoSub::start(gw.port, "heap/t", &["-i", "keeps-up", "-q", "1"]);

    let mut publisher = connect_311(gw.port, "pub");
    let payload = vec![b'x'; 4096];
    // 15 x 4 KB stay below 64 KB; the 16th held message reaches it. Paced, so that the
    // subscriber that keeps up never holds more than a message or two.
    for id in 1..=40u16 {
        std::thread::sleep(Duration::from_millis(10));
        let mut body = Vec::new();
        string("heap/t", &mut body);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&payload);
        publisher
            .write_all(&packet(0x32, &body))
            .expect("send PUBLISH");
    }
    assert_eq!(
        slow.closed_within(WAIT),
        Some(DisconnectReasonCode::QuotaExceeded)
    );
    assert!(gw.wait_for_log("force_shutdown: max_heap_size reached", WAIT));
    assert_eq!(keeps_up.wait_for(40, WAIT).len(), 40);
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("max_heap_size reached"))
        .map(str::to_owned)
        .unwrap_or_default();
    // Closed as soon as the bytes held reached the limit, not later: 16 x (4 KB + overhead).
    assert!(line.contains("queued=15 inflight=1"), "{line}");
    assert!(!gw
        .log()
        .contains("client_id=keeps-up reason=\"force_shutdown\""));
}
