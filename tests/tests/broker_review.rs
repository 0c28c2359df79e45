//! The broker findings of the bridge-correctness review (issue "The bridge must never wedge or
//! lose", items 8-10), each reproduced against the built gateway with a bare MQTT client: QoS 2
//! packet ids released on refusal, shared-subscription members that leave, the MQTT 5 corner
//! cases (enhanced auth, DISCONNECT expiry, No Local on `$share`, retain not available), and the
//! QoS 2 ids and delayed wills that must survive a `kill -9`.

use bytes::BytesMut;
use holdfast_tests::raw5::{NoPacket, Raw};
use holdfast_tests::{free_port, Gateway};
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode,
    Filter, LastWill, LastWillProperties, Packet, PubAck, PubAckReason, PubRec, PubRecReason,
    PubRel, Publish,
};
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A QoS 2 PUBLISH from a bare client.
fn qos2(topic: &str, payload: &str, pkid: u16, dup: bool) -> Packet {
    let mut p = Publish::new(topic, QoS::ExactlyOnce, payload.to_owned(), None);
    p.pkid = pkid;
    p.dup = dup;
    Packet::Publish(p)
}

/// The PUBREC for `pkid`.
fn pubrec(raw: &mut Raw, pkid: u16) -> PubRecReason {
    match raw.expect(WAIT) {
        Packet::PubRec(PubRec {
            pkid: id, reason, ..
        }) if id == pkid => reason,
        other => panic!("expected PUBREC {pkid}, got {other:?}"),
    }
}

/// PUBREL `pkid` and its PUBCOMP.
fn release(raw: &mut Raw, pkid: u16) {
    raw.send(Packet::PubRel(PubRel::new(pkid, None)));
    match raw.expect(WAIT) {
        Packet::PubComp(c) if c.pkid == pkid => {}
        other => panic!("expected PUBCOMP {pkid}, got {other:?}"),
    }
}

/// Payloads of the PUBLISHes that arrive within `within` (each QoS 1 one acknowledged).
fn collect(raw: &mut Raw, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match raw.read(left) {
            Ok(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    raw.send(Packet::PubAck(PubAck::new(p.pkid, None)));
                }
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(_) => {}
            Err(NoPacket::TimedOut) => return got,
            Err(NoPacket::Closed) => panic!("the gateway closed the subscriber"),
        }
    }
}

#[test]
fn a_refused_qos2_publish_does_not_keep_its_packet_id() {
    // Three ids awaiting PUBREL at most: refusals that kept theirs would exhaust it.
    let gw = Gateway::start_with_mqtt("max_awaiting_rel = 3");
    let mut sub = Raw::connected(gw.port, "sub");
    sub.subscribe_one("t/#", QoS::AtLeastOnce);
    let mut publisher = Raw::connected(gw.port, "pub");
    // `$SYS` is the broker's: refused with 0x87, which ends the QoS 2 flow (no PUBREL).
    for pkid in 10..16 {
        publisher.send(qos2("$SYS/forged", "x", pkid, false));
        assert_eq!(pubrec(&mut publisher, pkid), PubRecReason::NotAuthorized);
    }
    // The same id at once for a new, valid message: new, delivered (MQTT-4.3.3-9).
    publisher.send(qos2("t/a", "after", 10, false));
    assert_eq!(pubrec(&mut publisher, 10), PubRecReason::Success);
    release(&mut publisher, 10);
    assert_eq!(collect(&mut sub, Duration::from_millis(500)), ["after"]);
}

#[test]
fn enhanced_authentication_is_refused_with_bad_authentication_method() {
    let gw = Gateway::start();
    let mut props = ConnectProperties::new();
    props.authentication_method = Some("SCRAM-SHA-256".into());
    let (_raw, ack) = Raw::connect(gw.port, "scram", true, props, None);
    assert_eq!(ack.code, ConnectReturnCode::BadAuthenticationMethod);
}

#[test]
fn a_disconnect_cannot_give_a_session_expiry_to_a_session_that_had_none() {
    let gw = Gateway::start();
    let mut raw = Raw::connected(gw.port, "short-lived");
    raw.send(Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(DisconnectProperties {
            session_expiry_interval: Some(300),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }));
    assert_eq!(
        raw.closed_within(WAIT),
        Some(DisconnectReasonCode::ProtocolError)
    );
    let (_raw, ack) = Raw::connect_with_expiry(gw.port, "short-lived", false, 300);
    assert!(
        !ack.session_present,
        "the session must not have outlived it"
    );
}

#[test]
fn no_local_on_a_shared_subscription_closes_the_connection() {
    let gw = Gateway::start();
    let mut raw = Raw::connected(gw.port, "sharer");
    let mut f = Filter::new("$share/g/t", QoS::AtLeastOnce);
    f.nolocal = true;
    raw.send(Packet::Subscribe(rumqttc::v5::mqttbytes::v5::Subscribe {
        pkid: 1,
        filters: vec![f],
        properties: None,
    }));
    assert_eq!(
        raw.closed_within(WAIT),
        Some(DisconnectReasonCode::ProtocolError)
    );
}

#[test]
fn retained_publishes_and_wills_are_refused_when_retain_is_not_available() {
    let gw = Gateway::start_with_mqtt("retain_available = false");
    let (mut raw, ack) = Raw::connect(gw.port, "r", true, ConnectProperties::new(), None);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert_eq!(
        ack.properties.and_then(|p| p.retain_available),
        Some(0),
        "the CONNACK says so"
    );
    let mut p = Publish::new("t/r", QoS::AtLeastOnce, "keep", None);
    p.pkid = 1;
    p.retain = true;
    raw.send(Packet::Publish(p));
    assert_eq!(
        raw.closed_within(WAIT),
        Some(DisconnectReasonCode::RetainNotSupported)
    );
    let will = LastWill::new("wills/r", "bye", QoS::AtLeastOnce, true, None);
    let (_raw, ack) = Raw::connect(gw.port, "w", true, ConnectProperties::new(), Some(will));
    assert_eq!(ack.code, ConnectReturnCode::RetainNotSupported);
}

#[test]
fn a_shared_member_that_leaves_hands_its_queued_and_unacked_messages_to_the_group() {
    let gw = Gateway::start();
    // The leaver takes one message at a time and never acknowledges it.
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(1);
    let (mut leaver, ack) = Raw::connect(gw.port, "leaver", true, props, None);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    leaver.subscribe_one("$share/workers/jobs", QoS::AtLeastOnce);
    let mut stayer = Raw::connected(gw.port, "stayer");
    stayer.subscribe_one("$share/workers/jobs", QoS::AtLeastOnce);
    let mut publisher = Raw::connected(gw.port, "boss");
    let jobs: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    publisher.publish_all("jobs", &jobs, 1, false);
    let first = leaver
        .next_publish(WAIT)
        .expect("the leaver gets its first job");
    let mut got = collect(&mut stayer, Duration::from_millis(500));
    assert!(got.len() < 10, "round robin gave the leaver a share");
    // It leaves (its session ends with the connection): its unacknowledged job and the ones
    // queued behind it go to the member that stays.
    leaver.disconnect();
    got.extend(collect(&mut stayer, Duration::from_secs(2)));
    got.sort_by_key(|j| j.parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(got, jobs, "the leaver had {:?}", first.payload);
}

#[test]
fn qos2_ids_awaiting_pubrel_and_a_delayed_will_survive_kill9() {
    let mut gw = Gateway::start();
    let mut watcher = Raw::connected(gw.port, "watcher");
    watcher.subscribe_one("once/#", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect_with_expiry(gw.port, "q2-device", true, 3600);
    publisher.send(qos2("once/x", "exactly-once", 9, false));
    assert_eq!(pubrec(&mut publisher, 9), PubRecReason::Success);
    assert_eq!(
        collect(&mut watcher, Duration::from_millis(300)),
        ["exactly-once"]
    );
    // A device with a will delayed 2 s drops off without DISCONNECT.
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    let will = LastWill::new(
        "wills/dying",
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(2),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    );
    let (dying, ack) = Raw::connect(gw.port, "dying", true, props, Some(will));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    drop(dying);
    drop(publisher);
    // Past the session store's flush (100 ms) and sled's (500 ms), then a crash.
    std::thread::sleep(Duration::from_millis(1500));
    gw.kill9();
    gw.restart();

    let mut watcher = Raw::connected(gw.port, "watcher");
    watcher.subscribe_one("once/#", QoS::AtLeastOnce);
    watcher.subscribe_one("wills/#", QoS::AtLeastOnce);
    let (mut publisher, ack) = Raw::connect_with_expiry(gw.port, "q2-device", false, 3600);
    assert!(ack.session_present);
    // The device never saw the PUBREC: it resends with DUP. Still the same message.
    publisher.send(qos2("once/x", "exactly-once", 9, true));
    assert_eq!(pubrec(&mut publisher, 9), PubRecReason::Success);
    release(&mut publisher, 9);
    let got = collect(&mut watcher, Duration::from_secs(4));
    assert_eq!(
        got,
        ["gone"],
        "the QoS 2 resend must not be delivered again, and the delayed will must come"
    );
}

/// A bare MQTT 3.1.1 client (rumqttc's v4 packets on a socket).
mod v4raw {
    use super::*;
    use rumqttc::mqttbytes::v4;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    pub struct Raw4 {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Raw4 {
        pub fn connect(port: u16, client_id: &str) -> (Raw4, v4::ConnAck) {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let mut raw = Raw4 {
                stream,
                buf: BytesMut::new(),
            };
            let mut c = v4::Connect::new(client_id);
            c.clean_session = false;
            c.keep_alive = 60;
            raw.send(v4::Packet::Connect(c));
            match raw.read(WAIT) {
                Some(v4::Packet::ConnAck(a)) => (raw, a),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }

        pub fn send(&mut self, p: v4::Packet) {
            let mut out = BytesMut::new();
            p.write(&mut out, 1 << 20).expect("encode");
            self.stream.write_all(&out).expect("write");
        }

        /// The next packet; `None` when the gateway closed the socket or nothing came.
        pub fn read(&mut self, within: Duration) -> Option<v4::Packet> {
            let deadline = std::time::Instant::now() + within;
            let mut chunk = [0u8; 4096];
            loop {
                match v4::Packet::read(&mut self.buf, 1 << 20) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("undecodable packet: {e}"),
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                self.stream.set_read_timeout(Some(left)).expect("timeout");
                match self.stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

#[test]
fn a_3_1_1_qos2_message_a_full_bridge_queue_refused_is_taken_again_when_resent() {
    use holdfast_tests::{CloudRecorder, Mosquitto};
    use rumqttc::mqttbytes::v4;
    let cloud_port = free_port();
    let mut cloud = Mosquitto::start(cloud_port);
    let rec = CloudRecorder::start(cloud_port, "cloud-app", "edge/#");
    cloud.stop();
    let port = free_port();
    let config = format!(
        r#"
[node]
name = "gw-001"
[mqtt]
sys_interval = "1s"
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"
[auth]
allow_anonymous = true
[[bridges]]
name = "cloud"
server = "mqtt://127.0.0.1:{cloud_port}"
remote_prefix = "edge/"
forward = ["sensors/#"]
backoff_min = "100ms"
backoff_max = "500ms"
queue = {{ max_bytes = "1MB", segment_size = "64KB", on_full = "reject_new" }}
"#
    );
    let gw = Gateway::start_config(&config, port);
    assert!(gw.wait_for_log("bridge down", WAIT), "{}", gw.log());
    // Fill the queue (MQTT 5 hears the refusal as 0x97).
    let mut filler = Raw::connected(port, "filler");
    let body = vec![b'.'; 1024];
    let mut n: u16 = 0;
    loop {
        n += 1;
        assert!(n < 3000, "a 1 MB queue took 3,000 KB");
        let mut p = Publish::new("sensors/fill", QoS::AtLeastOnce, body.clone(), None);
        p.pkid = n;
        if filler.publish_qos1(p) == PubAckReason::QuotaExceeded {
            break;
        }
    }
    // A 3.1.1 device's QoS 2 message meets the full queue: it cannot hear a refusal, so it is
    // disconnected without a PUBREC.
    let (mut dev, _) = Raw4::connect(port, "v3-q2");
    // As large as the message the queue just refused, so it does not fit either.
    let mut precious = b"precious".to_vec();
    precious.resize(1100, b'.');
    let mut p = v4::Publish::new("sensors/precious", rumqttc::QoS::ExactlyOnce, precious);
    p.pkid = 5;
    dev.send(v4::Packet::Publish(p.clone()));
    let answer = dev.read(WAIT);
    assert!(
        !matches!(answer, Some(v4::Packet::PubRec(_))),
        "a PUBREC for a message that was not queued: {answer:?}\n{}",
        gw.log()
            .lines()
            .filter(|l| l.contains("v3-q2"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The cloud comes back and the queue drains; the device resends with DUP.
    cloud.restart();
    assert!(
        rec.wait_until(Duration::from_secs(30), |m| m.len() >= usize::from(n) - 1),
        "{} arrived",
        rec.count()
    );
    let (mut dev, ack) = Raw4::connect(port, "v3-q2");
    assert!(ack.session_present);
    p.dup = true;
    dev.send(v4::Packet::Publish(p));
    match dev.read(WAIT) {
        Some(v4::Packet::PubRec(r)) => assert_eq!(r.pkid, 5),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    dev.send(v4::Packet::PubRel(v4::PubRel::new(5)));
    assert!(matches!(dev.read(WAIT), Some(v4::Packet::PubComp(_))));
    assert!(
        rec.wait_until(WAIT, |m| m
            .iter()
            .any(|r| r.topic == "edge/sensors/precious")),
        "the resent message never reached the cloud: it was acknowledged, not queued"
    );
}

use v4raw::Raw4;
