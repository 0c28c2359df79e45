//! The MQTT session without a socket: packets go into its read buffer as bytes, the session
//! applies them (`handle_input`) against a real broker, and what it would send is decoded out
//! of its write buffer. The driver's socket loop is not involved; the handshake gets a
//! socketpair it never touches (anonymous logins run no password check).

use super::*;
use holdfast_mqtt::{LastWill, PubResp, PublishProperties, Subscribe, SubscriptionOptions};

/// A broker with anonymous access and the default limits.
fn broker() -> Arc<Broker> {
    let config = Arc::new(crate::config::Config::default());
    let auth = Arc::new(crate::auth::Authenticator::new(true, None));
    Broker::new(config, auth, tokio_util::sync::CancellationToken::new())
}

/// One session of a v5 client, connected; the CONNACK is checked and consumed.
struct Harness {
    session: MqttSession,
    /// Never read or written: the handshake only needs it for password checks.
    _stream: Stream,
    protocol: ProtocolVersion,
}

impl Harness {
    async fn connect(broker: &Arc<Broker>, client_id: &str, version: ProtocolVersion) -> Harness {
        Harness::connect_with(broker, client_id, version, None).await
    }

    async fn connect_with(
        broker: &Arc<Broker>,
        client_id: &str,
        version: ProtocolVersion,
        will: Option<LastWill>,
    ) -> Harness {
        let (a, _b) = tokio::net::UnixStream::pair().expect("socketpair");
        let stream = Stream::Unix(a);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let mut session = MqttSession::new(peer, None, broker.clone());
        let connect = Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 60,
            client_id: ByteStr::from(client_id),
            will,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        encode(
            &Packet::Connect(Box::new(connect)),
            version,
            &mut session.rbuf,
        )
        .expect("encode");
        let connect = session
            .read_connect(&stream)
            .await
            .expect("CONNECT decoded");
        session
            .accept_connect(&stream, connect)
            .await
            .expect("CONNECT accepted");
        let mut h = Harness {
            session,
            _stream: stream,
            protocol: version,
        };
        match h.sent().as_slice() {
            [Packet::ConnAck(ack)] => assert_eq!(ack.code, reason::SUCCESS, "{ack:?}"),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
        h
    }

    /// Feeds `packets` as bytes and applies them; `Err` is how the session would close.
    fn input(&mut self, packets: &[Packet]) -> Result<(), Close> {
        for p in packets {
            encode(p, self.protocol, &mut self.session.rbuf).expect("encode");
        }
        self.session.handle_input()
    }

    /// Raw bytes, as a broken client would send them.
    fn input_bytes(&mut self, bytes: &[u8]) -> Result<(), Close> {
        self.session.rbuf.extend_from_slice(bytes);
        self.session.handle_input()
    }

    /// Everything the session wrote since the last call, decoded.
    fn sent(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(p) =
            decode(&mut self.session.wbuf, self.protocol, 1 << 20).expect("our own output decodes")
        {
            out.push(p);
        }
        out
    }

    /// Ends the session as the driver does when the packet loop returns `close`.
    async fn end(mut self, close: Close) {
        let stream = std::mem::replace(&mut self._stream, spare_stream());
        self.session.finish(&stream, close).await;
    }

    /// Takes what the router queued for this session since, as the driver does on a wake-up.
    fn deliveries(&mut self) -> Vec<Packet> {
        self.session.drain_outgoing();
        self.sent()
    }
}

fn spare_stream() -> Stream {
    Stream::Unix(tokio::net::UnixStream::pair().expect("socketpair").0)
}

fn publish(topic: &str, payload: &str, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: PacketId::new(packet_id),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        properties: PublishProperties::default(),
    })
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1),
        filters: vec![(
            ByteStr::from(filter),
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        )],
        properties: Properties::default(),
    })
}

fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id: PacketId::new(packet_id),
        reason: reason::SUCCESS,
        properties: Properties::default(),
    }
}

#[tokio::test]
async fn a_qos1_publish_is_acknowledged_routed_and_its_delivery_waits_for_the_subscribers_puback() {
    let broker = broker();
    let mut sub = Harness::connect(&broker, "sub", ProtocolVersion::V5).await;
    let mut publ = Harness::connect(&broker, "pub", ProtocolVersion::V3_1_1).await;
    sub.input(&[subscribe("t/#", QoS::AtLeastOnce)]).unwrap();
    match sub.sent().as_slice() {
        [Packet::SubAck(ack)] => assert_eq!(ack.reasons, [1]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    publ.input(&[publish("t/1", "a", QoS::AtLeastOnce, 7)])
        .unwrap();
    assert_eq!(publ.sent(), [Packet::PubAck(resp(7))]);
    let delivered = sub.deliveries();
    let id = match delivered.as_slice() {
        [Packet::Publish(p)] => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos),
                ("t/1", &b"a"[..], QoS::AtLeastOnce)
            );
            p.packet_id
        }
        other => panic!("expected one PUBLISH, got {other:?}"),
    };
    let session = sub.session.session;
    let inflight = |b: &Broker| b.with_router(|r| r.client_info("sub").map(|c| c.inflight));
    assert_eq!(inflight(&broker), Some(1));
    sub.input(&[Packet::PubAck(resp(id.get()))]).unwrap();
    assert_eq!(inflight(&broker), Some(0));
    assert!(broker.with_router(|r| r.subscription_count(session)) == 1);
}

#[tokio::test]
async fn inbound_qos2_is_routed_once_per_packet_id_until_its_pubrel() {
    let broker = broker();
    let mut sub = Harness::connect(&broker, "sub", ProtocolVersion::V5).await;
    let mut publ = Harness::connect(&broker, "pub", ProtocolVersion::V5).await;
    sub.input(&[subscribe("q", QoS::AtMostOnce)]).unwrap();
    sub.sent();
    let p = publish("q", "once", QoS::ExactlyOnce, 9);
    publ.input(std::slice::from_ref(&p)).unwrap();
    // A resend before PUBREL (DUP or not) is acknowledged again but not routed again.
    publ.input(&[p]).unwrap();
    assert_eq!(
        publ.sent(),
        [Packet::PubRec(resp(9)), Packet::PubRec(resp(9))]
    );
    assert_eq!(sub.deliveries().len(), 1);
    publ.input(&[Packet::PubRel(resp(9))]).unwrap();
    assert_eq!(publ.sent(), [Packet::PubComp(resp(9))]);
    // The id is free again: the same id is a new message now.
    publ.input(&[publish("q", "twice", QoS::ExactlyOnce, 9)])
        .unwrap();
    assert_eq!(sub.deliveries().len(), 1);
}

#[tokio::test]
async fn a_topic_alias_stands_for_its_topic_and_one_past_the_maximum_closes_the_session() {
    let broker = broker();
    let mut sub = Harness::connect(&broker, "sub", ProtocolVersion::V5).await;
    let mut publ = Harness::connect(&broker, "pub", ProtocolVersion::V5).await;
    sub.input(&[subscribe("sensors/#", QoS::AtMostOnce)])
        .unwrap();
    sub.sent();
    let aliased = |topic: &str, alias: u16| {
        let Packet::Publish(mut p) = publish(topic, "x", QoS::AtMostOnce, 0) else {
            unreachable!()
        };
        p.properties.topic_alias = Some(alias);
        Packet::Publish(p)
    };
    publ.input(&[aliased("sensors/t1", 1), aliased("", 1)])
        .unwrap();
    let topics: Vec<String> = sub
        .deliveries()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p.topic.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["sensors/t1", "sensors/t1"]);
    // The default max_topic_alias is 16.
    let close = publ.input(&[aliased("sensors/t2", 17)]).unwrap_err();
    assert_eq!(close.disconnect, Some(reason::TOPIC_ALIAS_INVALID));
}

#[tokio::test]
async fn garbage_closes_the_session_with_a_protocol_error_and_nothing_is_routed() {
    let broker = broker();
    let mut sub = Harness::connect(&broker, "sub", ProtocolVersion::V5).await;
    let mut bad = Harness::connect(&broker, "bad", ProtocolVersion::V5).await;
    sub.input(&[subscribe("#", QoS::AtMostOnce)]).unwrap();
    sub.sent();
    // A PUBLISH whose remaining length runs past its topic length.
    let close = bad
        .input_bytes(&[0x30, 0x03, 0x00, 0x09, b'a'])
        .unwrap_err();
    assert!(
        matches!(
            close.reason,
            DisconnectReason::ProtocolError | DisconnectReason::FrameTooLarge
        ),
        "{:?}",
        close.reason
    );
    assert!(sub.deliveries().is_empty());
    // A reserved packet type (0).
    let mut bad = Harness::connect(&broker, "bad2", ProtocolVersion::V3_1_1).await;
    assert!(bad.input_bytes(&[0x00, 0x00]).is_err());
}

#[tokio::test]
async fn sys_topics_and_acl_denials_are_refused_to_a_v5_publisher_with_a_reason() {
    let broker = broker();
    let mut publ = Harness::connect(&broker, "pub", ProtocolVersion::V5).await;
    publ.input(&[publish("$SYS/brokers/x", "x", QoS::AtLeastOnce, 3)])
        .unwrap();
    match publ.sent().as_slice() {
        [Packet::PubAck(ack)] => assert_eq!(ack.reason, reason::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    publ.input(&[publish("nobody/listens", "x", QoS::AtLeastOnce, 4)])
        .unwrap();
    match publ.sent().as_slice() {
        [Packet::PubAck(ack)] => assert_eq!(ack.reason, reason::NO_MATCHING_SUBSCRIBERS),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_will_is_published_when_the_session_ends_without_disconnect_but_not_after_one() {
    let broker = broker();
    let mut watcher = Harness::connect(&broker, "watcher", ProtocolVersion::V5).await;
    watcher
        .input(&[subscribe("wills/#", QoS::AtMostOnce)])
        .unwrap();
    watcher.sent();
    let will = |topic: &str| LastWill {
        topic: ByteStr::from(topic),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        will_delay_interval: None,
        properties: PublishProperties::default(),
    };
    let lost = Harness::connect_with(
        &broker,
        "lost",
        ProtocolVersion::V5,
        Some(will("wills/lost")),
    )
    .await;
    lost.end(Close::new(DisconnectReason::TcpClosed, None))
        .await;
    let mut polite = Harness::connect_with(
        &broker,
        "polite",
        ProtocolVersion::V5,
        Some(will("wills/polite")),
    )
    .await;
    let close = polite
        .input(&[Packet::Disconnect(holdfast_mqtt::Disconnect {
            reason: reason::SUCCESS,
            properties: Properties::default(),
        })])
        .unwrap_err();
    assert_eq!(close.reason, DisconnectReason::Normal);
    polite.end(close).await;
    let topics: Vec<String> = watcher
        .deliveries()
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["wills/lost"]);
}
