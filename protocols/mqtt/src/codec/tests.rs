//! The codec's tests: every packet both ways, every malformed input a peer can send.

use super::properties::*;
use super::*;
use crate::packet::reason;
use proptest::prelude::*;
use ProtocolVersion::{V3_1, V3_1_1, V5};

const MAX: usize = 1 << 20;

fn s(text: &str) -> ByteStr {
    ByteStr::from(text)
}

/// Decodes `bytes` as exactly one packet, expects `packet`, and checks that encoding
/// `packet` gives the same bytes back.
#[track_caller]
fn codes_as(bytes: &[u8], v: ProtocolVersion, packet: Packet) {
    assert_eq!(decodes(bytes, v), packet);
    let mut out = BytesMut::new();
    encode(&packet, v, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encoding of {packet:?}");
    assert_eq!(encoded_len(&packet, v).unwrap(), bytes.len());
}

#[track_caller]
fn decodes(bytes: &[u8], v: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, v, MAX).unwrap().expect("a whole packet");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    packet
}

#[track_caller]
fn rejects(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, MAX).unwrap_err()
}

#[track_caller]
fn encodes(packet: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, v, &mut out).unwrap();
    out.to_vec()
}

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        qos,
        topic: s(topic),
        packet_id: PacketId::new(packet_id),
        payload: Bytes::from_static(payload),
        ..Publish::default()
    }
}

fn ack(packet_id: u16, reason: u8) -> PubResp {
    PubResp {
        packet_id: PacketId::new(packet_id),
        reason,
        properties: Properties::default(),
    }
}

// ---- known bytes, MQTT 3.1.1 and 3.1 -------------------------------------------------

#[test]
fn a_minimal_3_1_1_connect_codes_as_the_spec_lays_it_out() {
    let bytes = [
        0x10, 0x0F, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'a', b'b', b'c',
    ];
    codes_as(
        &bytes,
        V3_1_1,
        Packet::Connect(Box::new(connect(V3_1_1, "abc"))),
    );
}

#[test]
fn a_3_1_1_connect_with_will_user_name_and_password_codes_every_field() {
    let bytes = [
        0x10, 0x1B, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 10, 0, 1, b'c', 0, 1, b't', 0, 2,
        b'w', b'p', 0, 1, b'u', 0, 2, b'p', b'w',
    ];
    let mut c = connect(V3_1_1, "c");
    c.keep_alive = 10;
    c.will = Some(LastWill {
        topic: s("t"),
        payload: Bytes::from_static(b"wp"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: PublishProperties::default(),
        will_delay_interval: None,
    });
    c.username = Some(s("u"));
    c.password = Some(Bytes::from_static(b"pw"));
    codes_as(&bytes, V3_1_1, Packet::Connect(Box::new(c)));
}

#[test]
fn a_3_1_connect_is_named_mqisdp_at_level_3_whatever_version_the_caller_passes() {
    let bytes = [
        0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'x',
    ];
    let packet = Packet::Connect(Box::new(connect(V3_1, "x")));
    codes_as(&bytes, V5, packet.clone());
    codes_as(&bytes, V3_1_1, packet);
}

#[test]
fn a_3_1_1_connack_carries_session_present_and_a_return_code() {
    let ok = ConnAck {
        session_present: true,
        ..ConnAck::default()
    };
    codes_as(&[0x20, 2, 1, 0], V3_1_1, Packet::ConnAck(ok));
    let refused = ConnAck {
        code: reason::NOT_AUTHORIZED,
        ..ConnAck::default()
    };
    codes_as(&[0x20, 2, 0, 5], V3_1_1, Packet::ConnAck(refused));
}

#[test]
fn v5_connack_codes_map_to_3_1_1_return_codes_and_back() {
    let pairs = [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x86, 4),
        (0x87, 5),
    ];
    for (v5, v3) in pairs {
        let packet = Packet::ConnAck(ConnAck {
            code: v5,
            ..ConnAck::default()
        });
        codes_as(&[0x20, 2, 0, v3], V3_1_1, packet);
    }
    for other in [reason::SERVER_BUSY, reason::QUOTA_EXCEEDED, 0x80] {
        let packet = Packet::ConnAck(ConnAck {
            code: other,
            ..ConnAck::default()
        });
        assert_eq!(encodes(&packet, V3_1_1), [0x20, 2, 0, 3]);
    }
}

#[test]
fn a_3_1_connack_never_carries_session_present() {
    let packet = Packet::ConnAck(ConnAck {
        session_present: true,
        ..ConnAck::default()
    });
    assert_eq!(encodes(&packet, V3_1), [0x20, 2, 0, 0]);
    assert_eq!(
        decodes(&[0x20, 2, 1, 0], V3_1),
        Packet::ConnAck(ConnAck::default())
    );
}

#[test]
fn a_3_1_1_publish_codes_flags_topic_packet_id_and_payload() {
    let mut p = publish("a/b", QoS::AtMostOnce, 0, b"hi");
    p.retain = true;
    codes_as(
        &[0x31, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'],
        V3_1_1,
        Packet::Publish(p),
    );
    let mut p = publish("a/b", QoS::AtLeastOnce, 10, b"hi");
    p.dup = true;
    codes_as(
        &[0x3A, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'],
        V3_1_1,
        Packet::Publish(p),
    );
    let p = publish("a", QoS::ExactlyOnce, 0x0102, b"");
    codes_as(&[0x34, 5, 0, 1, b'a', 1, 2], V3_1_1, Packet::Publish(p));
}

#[test]
fn the_four_3_1_1_publish_acknowledgements_are_a_packet_id() {
    codes_as(&[0x40, 2, 0, 10], V3_1_1, Packet::PubAck(ack(10, 0)));
    codes_as(&[0x50, 2, 0, 10], V3_1_1, Packet::PubRec(ack(10, 0)));
    codes_as(&[0x62, 2, 0, 10], V3_1_1, Packet::PubRel(ack(10, 0)));
    codes_as(&[0x70, 2, 0, 10], V3_1_1, Packet::PubComp(ack(10, 0)));
}

#[test]
fn a_3_1_1_subscribe_codes_filters_with_their_qos() {
    let sub = Subscribe {
        packet_id: PacketId::new(1),
        filters: vec![
            (
                s("a/#"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            ),
            (s("+"), SubscriptionOptions::default()),
        ],
        properties: Properties::default(),
    };
    codes_as(
        &[0x82, 12, 0, 1, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'+', 0],
        V3_1_1,
        Packet::Subscribe(sub),
    );
}

#[test]
fn a_3_1_1_suback_encodes_every_failure_as_0x80() {
    let suback = SubAck {
        packet_id: PacketId::new(1),
        reasons: vec![1, 0x80],
        properties: Properties::default(),
    };
    codes_as(&[0x90, 4, 0, 1, 1, 0x80], V3_1_1, Packet::SubAck(suback));
    let failures = Packet::SubAck(SubAck {
        packet_id: PacketId::new(1),
        reasons: vec![reason::NOT_AUTHORIZED, reason::TOPIC_FILTER_INVALID, 2],
        properties: Properties::default(),
    });
    assert_eq!(encodes(&failures, V3_1_1), [0x90, 5, 0, 1, 0x80, 0x80, 2]);
}

#[test]
fn a_3_1_1_unsubscribe_and_unsuback_code_without_reasons() {
    let unsub = Unsubscribe {
        packet_id: PacketId::new(1),
        filters: vec![s("a/b")],
        properties: Properties::default(),
    };
    codes_as(
        &[0xA2, 7, 0, 1, 0, 3, b'a', b'/', b'b'],
        V3_1_1,
        Packet::Unsubscribe(unsub),
    );
    let unsuback = UnsubAck {
        packet_id: PacketId::new(1),
        ..UnsubAck::default()
    };
    codes_as(&[0xB0, 2, 0, 1], V3_1_1, Packet::UnsubAck(unsuback));
    let with_reasons = Packet::UnsubAck(UnsubAck {
        packet_id: PacketId::new(1),
        reasons: vec![0x11],
        properties: Properties::default(),
    });
    assert_eq!(encodes(&with_reasons, V3_1_1), [0xB0, 2, 0, 1]);
}

#[test]
fn pings_and_a_3_1_1_disconnect_are_two_bytes() {
    codes_as(&[0xC0, 0], V3_1_1, Packet::PingReq);
    codes_as(&[0xD0, 0], V3_1_1, Packet::PingResp);
    codes_as(
        &[0xE0, 0],
        V3_1_1,
        Packet::Disconnect(Disconnect::default()),
    );
    let with_reason = Packet::Disconnect(Disconnect {
        reason: reason::SERVER_SHUTTING_DOWN,
        properties: Properties::default(),
    });
    assert_eq!(encodes(&with_reason, V3_1_1), [0xE0, 0]);
}

// ---- known bytes, MQTT 5 -------------------------------------------------------------

#[test]
fn a_v5_connect_carries_properties_before_the_client_id() {
    let bytes = [
        0x10, 0x13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 5, 0x11, 0, 0, 0, 120, 0, 1, b'x',
    ];
    let mut c = connect(V5, "x");
    c.properties.session_expiry_interval = Some(120);
    codes_as(&bytes, V3_1_1, Packet::Connect(Box::new(c)));
}

#[test]
fn a_v5_connect_will_carries_its_own_properties_and_delay() {
    let bytes = [
        0x10, 0x1B, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 0, 0, 0, 1, b'c', 7, 0x01, 1, 0x18,
        0, 0, 0, 10, 0, 1, b't', 0, 0,
    ];
    let mut c = connect(V5, "c");
    c.keep_alive = 0;
    c.will = Some(LastWill {
        topic: s("t"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            ..PublishProperties::default()
        },
        will_delay_interval: Some(10),
    });
    codes_as(&bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn a_v5_connect_may_carry_a_password_without_a_user_name() {
    let bytes = [
        0x10, 0x11, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 60, 0, 0, 0, 0, 2, b'p', b'w',
    ];
    let mut c = connect(V5, "");
    c.password = Some(Bytes::from_static(b"pw"));
    codes_as(&bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn a_v5_connack_carries_a_reason_and_properties() {
    codes_as(&[0x20, 3, 0, 0, 0], V5, Packet::ConnAck(ConnAck::default()));
    let mut a = ConnAck {
        session_present: true,
        code: 0,
        properties: Properties::default(),
    };
    a.properties.receive_maximum = Some(10);
    a.properties.maximum_qos = Some(1);
    codes_as(
        &[0x20, 8, 1, 0, 5, 0x21, 0, 10, 0x24, 1],
        V5,
        Packet::ConnAck(a),
    );
    let refused = ConnAck {
        code: reason::BAD_USERNAME_OR_PASSWORD,
        ..ConnAck::default()
    };
    codes_as(&[0x20, 3, 0, 0x86, 0], V5, Packet::ConnAck(refused));
}

#[test]
fn a_v5_publish_may_have_an_empty_topic_when_it_carries_a_topic_alias() {
    let mut p = publish("t", QoS::AtMostOnce, 0, b"hi");
    p.properties.topic_alias = Some(1);
    codes_as(
        &[0x30, 9, 0, 1, b't', 3, 0x23, 0, 1, b'h', b'i'],
        V5,
        Packet::Publish(p.clone()),
    );
    p.topic = ByteStr::default();
    codes_as(
        &[0x30, 8, 0, 0, 3, 0x23, 0, 1, b'h', b'i'],
        V5,
        Packet::Publish(p),
    );
}

#[test]
fn a_v5_publish_codes_repeated_subscription_ids_and_user_properties_in_order() {
    let mut p = publish("t", QoS::AtLeastOnce, 5, b"x");
    p.properties.payload_format_indicator = Some(1);
    p.properties.subscription_identifiers = vec![128, 1];
    p.properties.user_properties = vec![(s("k"), s("v")), (s("k"), s("w"))];
    let bytes = [
        0x32, 0x1C, 0, 1, b't', 0, 5, 21, 0x01, 1, 0x0B, 0x80, 0x01, 0x0B, 1, 0x26, 0, 1, b'k', 0,
        1, b'v', 0x26, 0, 1, b'k', 0, 1, b'w', b'x',
    ];
    codes_as(&bytes, V5, Packet::Publish(p));
}

#[test]
fn v5_acknowledgements_omit_reason_and_properties_when_they_can() {
    codes_as(&[0x40, 2, 0, 1], V5, Packet::PubAck(ack(1, 0)));
    codes_as(&[0x40, 3, 0, 1, 0x10], V5, Packet::PubAck(ack(1, 0x10)));
    codes_as(&[0x50, 3, 0, 1, 0x80], V5, Packet::PubRec(ack(1, 0x80)));
    codes_as(&[0x62, 3, 0, 1, 0x92], V5, Packet::PubRel(ack(1, 0x92)));
    codes_as(&[0x70, 2, 0, 1], V5, Packet::PubComp(ack(1, 0)));
    let mut with_string = ack(1, 0x87);
    with_string.properties.reason_string = Some(s("x"));
    codes_as(
        &[0x40, 8, 0, 1, 0x87, 4, 0x1F, 0, 1, b'x'],
        V5,
        Packet::PubAck(with_string),
    );
    // The long form of a success without properties decodes too.
    assert_eq!(
        decodes(&[0x40, 4, 0, 1, 0, 0], V5),
        Packet::PubAck(ack(1, 0))
    );
}

#[test]
fn a_v5_subscribe_codes_subscription_options_and_identifier() {
    let sub = Subscribe {
        packet_id: PacketId::new(1),
        filters: vec![(
            s("a/b"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
        properties: Properties {
            subscription_identifier: Some(7),
            ..Properties::default()
        },
    };
    codes_as(
        &[0x82, 11, 0, 1, 2, 0x0B, 7, 0, 3, b'a', b'/', b'b', 0x2D],
        V5,
        Packet::Subscribe(sub),
    );
}

#[test]
fn v5_suback_unsubscribe_and_unsuback_code_properties_and_reasons() {
    let suback = SubAck {
        packet_id: PacketId::new(1),
        reasons: vec![0, 0x97],
        properties: Properties::default(),
    };
    codes_as(&[0x90, 5, 0, 1, 0, 0, 0x97], V5, Packet::SubAck(suback));
    let unsub = Unsubscribe {
        packet_id: PacketId::new(1),
        filters: vec![s("a/b")],
        properties: Properties::default(),
    };
    codes_as(
        &[0xA2, 8, 0, 1, 0, 0, 3, b'a', b'/', b'b'],
        V5,
        Packet::Unsubscribe(unsub),
    );
    let unsuback = UnsubAck {
        packet_id: PacketId::new(1),
        reasons: vec![0x11],
        properties: Properties::default(),
    };
    codes_as(&[0xB0, 4, 0, 1, 0, 0x11], V5, Packet::UnsubAck(unsuback));
}

#[test]
fn a_v5_disconnect_has_short_forms_for_success_and_a_bare_reason() {
    codes_as(&[0xE0, 0], V5, Packet::Disconnect(Disconnect::default()));
    let taken_over = Disconnect {
        reason: reason::SESSION_TAKEN_OVER,
        properties: Properties::default(),
    };
    codes_as(&[0xE0, 2, 0x8E, 0], V5, Packet::Disconnect(taken_over));
    let with_will = Disconnect {
        reason: reason::DISCONNECT_WITH_WILL,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        },
    };
    codes_as(
        &[0xE0, 7, 0x04, 5, 0x11, 0, 0, 0, 60],
        V5,
        Packet::Disconnect(with_will),
    );
}

#[test]
fn a_v5_auth_carries_its_method() {
    codes_as(&[0xF0, 0], V5, Packet::Auth(Auth::default()));
    let cont = Auth {
        reason: 0x18,
        properties: Properties {
            authentication_method: Some(s("abc")),
            ..Properties::default()
        },
    };
    codes_as(
        &[0xF0, 8, 0x18, 6, 0x15, 0, 3, b'a', b'b', b'c'],
        V5,
        Packet::Auth(cont),
    );
    let bare = Packet::Auth(Auth {
        reason: 0x19,
        properties: Properties::default(),
    });
    codes_as(&[0xF0, 2, 0x19, 0], V5, bare.clone());
    assert_eq!(decodes(&[0xF0, 1, 0x19], V5), bare);
}

#[test]
fn properties_a_packet_may_not_carry_are_not_encoded() {
    let packet = Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties {
            maximum_qos: Some(1),
            subscription_identifier: Some(3),
            ..Properties::default()
        },
    });
    assert_eq!(encodes(&packet, V5), [0xE0, 0]);
    let mut p = publish("t", QoS::AtMostOnce, 0, b"");
    p.properties.topic_alias = Some(3);
    assert_eq!(encodes(&Packet::Publish(p), V3_1_1), [0x30, 3, 0, 1, b't']);
}

#[test]
fn the_dup_flag_and_packet_id_are_not_encoded_at_qos_0() {
    let mut p = publish("t", QoS::AtMostOnce, 9, b"");
    p.dup = true;
    assert_eq!(encodes(&Packet::Publish(p), V5), [0x30, 4, 0, 1, b't', 0]);
}

// ---- framing ---------------------------------------------------------------------------

#[test]
fn a_256mb_length_prefix_is_rejected_before_the_body_arrives() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let e = decode(&mut buf, V5, MAX).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: MAX
        }
    );
    assert_eq!(
        e.to_string(),
        "packet of 268435460 bytes exceeds maximum 1048576"
    );
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
}

#[test]
fn the_maximum_packet_size_counts_the_fixed_header() {
    let bytes = [0x30, 3, 0, 1, b't'];
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, V3_1_1, 5).unwrap().is_some());
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V3_1_1, 4),
        Err(DecodeError::PacketTooLarge { size: 5, max: 4 })
    );
}

#[test]
fn a_remaining_length_longer_than_4_bytes_is_malformed_as_soon_as_its_fourth_byte_arrives() {
    let e = rejects(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], V3_1_1);
    assert_eq!(e, DecodeError::RemainingLengthTooLong);
    assert_eq!(e.to_string(), "remaining length exceeds 4 bytes");
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    let mut three = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut three, V3_1_1, usize::MAX), Ok(None));
}

#[test]
fn a_remaining_length_that_is_not_minimally_encoded_is_malformed() {
    assert_eq!(
        rejects(&[0xC0, 0x80, 0x00], V3_1_1),
        DecodeError::NonMinimalVarInt { packet: "PINGREQ" }
    );
}

#[test]
fn incomplete_input_returns_none_at_every_split_point_and_leaves_the_buffer_alone() {
    let mut will = connect(V5, "client");
    will.will = Some(LastWill {
        topic: s("w"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        will_delay_interval: Some(5),
    });
    will.username = Some(s("u"));
    let mut p = publish("a/b", QoS::AtLeastOnce, 3, &[7; 300]);
    p.properties.user_properties = vec![(s("k"), s("v"))];
    let packets = [
        Packet::Connect(Box::new(will)),
        Packet::Publish(p),
        Packet::PingReq,
    ];
    for packet in packets {
        let bytes = encodes(&packet, V5);
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(decode(&mut buf, V5, MAX), Ok(None), "split at {split}");
            assert_eq!(&buf[..], &bytes[..split]);
        }
        assert_eq!(decodes(&bytes, V5), packet);
    }
}

#[test]
fn two_packets_in_one_buffer_decode_one_after_the_other() {
    let mut buf = BytesMut::new();
    let first = Packet::Publish(publish("a", QoS::AtLeastOnce, 1, b"one"));
    let second = Packet::PubAck(ack(1, 0));
    encode(&first, V3_1_1, &mut buf).unwrap();
    encode(&second, V3_1_1, &mut buf).unwrap();
    buf.extend_from_slice(&[0xC0]);
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(first)));
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(second)));
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(None));
    assert_eq!(&buf[..], [0xC0]);
    buf.extend_from_slice(&[0]);
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(Packet::PingReq)));
    assert!(buf.is_empty());
}

#[test]
fn a_decoded_publish_shares_the_receive_buffer() {
    let mut buf = BytesMut::from(&[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'][..]);
    let start = buf.as_ptr();
    let Some(Packet::Publish(p)) = decode(&mut buf, V3_1_1, MAX).unwrap() else {
        panic!("not a publish");
    };
    assert_eq!(p.topic.as_bytes().as_ptr(), start.wrapping_add(4));
    assert_eq!(p.payload.as_ptr(), start.wrapping_add(7));
}

// ---- fixed header rules -----------------------------------------------------------------

#[test]
fn reserved_fixed_header_flags_are_rejected() {
    for bytes in [
        [0x60, 2, 0, 1],
        [0x63, 2, 0, 1],
        [0x41, 2, 0, 1],
        [0x80, 2, 0, 1],
        [0xA0, 2, 0, 1],
        [0x92, 2, 0, 1],
    ] {
        let e = rejects(&bytes, V5);
        assert!(
            matches!(e, DecodeError::InvalidHeaderFlags { .. }),
            "{bytes:?}: {e}"
        );
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    }
    assert_eq!(
        rejects(&[0xC1, 0], V3_1_1).to_string(),
        "invalid fixed header flags 0b0001 for PINGREQ"
    );
}

#[test]
fn packet_type_0_is_reserved() {
    assert_eq!(rejects(&[0x00, 0], V5), DecodeError::ReservedPacketType);
}

#[test]
fn a_publish_at_qos_3_is_malformed() {
    assert_eq!(
        rejects(&[0x36, 5, 0, 1, b't', 0, 1], V3_1_1),
        DecodeError::InvalidQoS { packet: "PUBLISH" }
    );
}

#[test]
fn a_qos_0_publish_with_dup_set_is_rejected_in_every_version() {
    for v in [V3_1, V3_1_1, V5] {
        assert_eq!(
            rejects(&[0x38, 4, 0, 1, b't', 0], v),
            DecodeError::DupWithQoS0
        );
    }
}

#[test]
fn auth_is_rejected_outside_v5() {
    let e = rejects(&[0xF0, 0], V3_1_1);
    assert_eq!(e, DecodeError::AuthOutsideV5);
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
}

// ---- body rules -----------------------------------------------------------------------

#[test]
fn invalid_utf8_or_u0000_in_a_topic_is_rejected() {
    let e = rejects(&[0x30, 4, 0, 2, 0xC3, 0x28], V3_1_1);
    assert_eq!(
        e,
        DecodeError::InvalidUtf8 {
            field: "topic name"
        }
    );
    assert_eq!(e.to_string(), "invalid UTF-8 in topic name");
    assert_eq!(
        rejects(&[0x30, 4, 0, 2, b'a', 0], V3_1_1),
        DecodeError::NullCharacter {
            field: "topic name"
        }
    );
}

#[test]
fn invalid_strings_in_client_id_user_name_and_properties_are_rejected() {
    let client_id = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, 0xFF,
    ];
    assert_eq!(
        rejects(&client_id, V3_1_1),
        DecodeError::InvalidUtf8 {
            field: "client identifier"
        }
    );
    let user_name = [
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 60, 0, 0, 0, 2, b'u', 0,
    ];
    assert_eq!(
        rejects(&user_name, V3_1_1),
        DecodeError::NullCharacter { field: "user name" }
    );
    let reason_string = [0x40, 7, 0, 1, 0x80, 3, 0x1F, 0, 1];
    assert!(matches!(
        rejects(&reason_string, V5),
        DecodeError::Truncated { .. }
    ));
    let reason_string = [0x40, 8, 0, 1, 0x80, 4, 0x1F, 0, 1, 0xC0];
    assert_eq!(
        rejects(&reason_string, V5),
        DecodeError::InvalidUtf8 {
            field: "reason string"
        }
    );
    let user_property = [0x40, 11, 0, 1, 0x80, 7, 0x26, 0, 1, b'k', 0, 1, 0];
    assert_eq!(
        rejects(&user_property, V5),
        DecodeError::NullCharacter {
            field: "user property"
        }
    );
}

#[test]
fn wildcards_in_a_publish_topic_are_rejected() {
    for wildcard in [b'+', b'#'] {
        let e = rejects(&[0x30, 5, 0, 3, b'a', b'/', wildcard], V3_1_1);
        assert_eq!(e, DecodeError::WildcardInTopicName { packet: "PUBLISH" });
        assert_eq!(e.reason_code(), reason::TOPIC_NAME_INVALID);
    }
}

#[test]
fn an_empty_publish_topic_is_rejected_without_a_topic_alias() {
    let empty = DecodeError::EmptyTopicName { packet: "PUBLISH" };
    assert_eq!(rejects(&[0x30, 2, 0, 0], V3_1_1), empty);
    assert_eq!(rejects(&[0x30, 3, 0, 0, 0], V5), empty);
    // A topic alias is not a v3 property: without properties the alias bytes are payload.
    assert_eq!(rejects(&[0x30, 5, 0, 0, 0x23, 0, 1], V3_1_1), empty);
}

#[test]
fn packet_id_0_is_rejected_where_one_is_required() {
    let cases: [(&[u8], ProtocolVersion, &str); 7] = [
        (&[0x32, 5, 0, 1, b't', 0, 0], V3_1_1, "PUBLISH"),
        (&[0x40, 2, 0, 0], V3_1_1, "PUBACK"),
        (&[0x62, 2, 0, 0], V5, "PUBREL"),
        (&[0x82, 6, 0, 0, 0, 1, b'a', 0], V3_1_1, "SUBSCRIBE"),
        (&[0x90, 3, 0, 0, 0], V3_1_1, "SUBACK"),
        (&[0xA2, 5, 0, 0, 0, 1, b'a'], V3_1_1, "UNSUBSCRIBE"),
        (&[0xB0, 2, 0, 0], V3_1_1, "UNSUBACK"),
    ];
    for (bytes, v, packet) in cases {
        assert_eq!(rejects(bytes, v), DecodeError::ZeroPacketId { packet });
    }
}

#[test]
fn subscribe_and_unsubscribe_without_filters_are_rejected() {
    assert_eq!(
        rejects(&[0x82, 2, 0, 1], V3_1_1),
        DecodeError::NoTopicFilters {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(
        rejects(&[0x82, 3, 0, 1, 0], V5),
        DecodeError::NoTopicFilters {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(
        rejects(&[0xA2, 2, 0, 1], V3_1_1),
        DecodeError::NoTopicFilters {
            packet: "UNSUBSCRIBE"
        }
    );
}

#[test]
fn suback_and_v5_unsuback_without_reasons_are_rejected() {
    assert_eq!(
        rejects(&[0x90, 2, 0, 1], V3_1_1),
        DecodeError::NoReasonCodes { packet: "SUBACK" }
    );
    assert_eq!(
        rejects(&[0xB0, 3, 0, 1, 0], V5),
        DecodeError::NoReasonCodes { packet: "UNSUBACK" }
    );
}

#[test]
fn reserved_bits_in_subscription_options_are_rejected() {
    // 3.1.1 has only the QoS bits; v5 reserves the top two, retain handling 3 and QoS 3.
    for (options, v) in [
        (0x04, V3_1_1),
        (0x03, V3_1_1),
        (0x40, V5),
        (0x80, V5),
        (0x30, V5),
        (0x03, V5),
    ] {
        let bytes = if v.is_v5() {
            vec![0x82, 7, 0, 1, 0, 0, 1, b'a', options]
        } else {
            vec![0x82, 6, 0, 1, 0, 1, b'a', options]
        };
        assert_eq!(
            rejects(&bytes, v),
            DecodeError::InvalidSubscriptionOptions(options),
            "{options:#x} in {v:?}"
        );
    }
}

#[test]
fn a_property_the_packet_may_not_carry_is_rejected() {
    // Session expiry interval in PUBACK.
    let e = rejects(&[0x40, 9, 0, 1, 0x80, 5, 0x11, 0, 0, 0, 1], V5);
    assert_eq!(
        e,
        DecodeError::InvalidProperty {
            packet: "PUBACK",
            id: 0x11
        }
    );
    assert_eq!(e.to_string(), "property 0x11 not allowed in PUBACK");
    // Topic alias in a will.
    let will = [
        0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x04, 0, 0, 0, 0, 0, 3, 0x23, 0, 1, 0, 1, b't',
        0, 0,
    ];
    assert_eq!(
        rejects(&will, V5),
        DecodeError::InvalidProperty {
            packet: "will properties",
            id: 0x23
        }
    );
    // Identifiers that exist nowhere.
    for id in [0x00, 0x7F, 0xFF] {
        assert!(matches!(
            rejects(&[0x30, 6, 0, 1, b't', 2, id, 0], V5),
            DecodeError::InvalidProperty { .. }
        ));
    }
}

#[test]
fn a_single_value_property_given_twice_is_rejected() {
    let e = rejects(&[0x20, 9, 0, 0, 6, 0x21, 0, 1, 0x21, 0, 2], V5);
    assert_eq!(
        e,
        DecodeError::DuplicateProperty {
            packet: "CONNACK",
            id: 0x21
        }
    );
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
    assert_eq!(
        rejects(&[0x30, 10, 0, 1, b't', 6, 0x23, 0, 1, 0x23, 0, 2], V5),
        DecodeError::DuplicateProperty {
            packet: "PUBLISH",
            id: 0x23
        }
    );
    assert_eq!(
        rejects(&[0x82, 10, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0], V5),
        DecodeError::DuplicateProperty {
            packet: "SUBSCRIBE",
            id: 0x0B
        }
    );
}

#[test]
fn property_values_out_of_range_are_rejected() {
    let invalid = |packet, id| DecodeError::InvalidPropertyValue { packet, id };
    // Receive maximum 0.
    assert_eq!(
        rejects(&[0x20, 6, 0, 0, 3, 0x21, 0, 0], V5),
        invalid("CONNACK", 0x21)
    );
    // Payload format indicator 2, topic alias 0, subscription identifier 0.
    assert_eq!(
        rejects(&[0x30, 6, 0, 1, b't', 2, 0x01, 2], V5),
        invalid("PUBLISH", 0x01)
    );
    assert_eq!(
        rejects(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5),
        invalid("PUBLISH", 0x23)
    );
    assert_eq!(
        rejects(&[0x30, 6, 0, 1, b't', 2, 0x0B, 0], V5),
        invalid("PUBLISH", 0x0B)
    );
    // Response topic with a wildcard.
    assert_eq!(
        rejects(&[0x30, 9, 0, 1, b't', 5, 0x08, 0, 2, b'a', b'#'], V5),
        invalid("PUBLISH", 0x08)
    );
    // Authentication data without a method.
    assert_eq!(
        rejects(&[0xF0, 6, 0x18, 4, 0x16, 0, 1, 9], V5),
        invalid("AUTH", 0x16)
    );
}

#[test]
fn a_non_minimal_or_overlong_property_varint_is_malformed() {
    assert_eq!(
        rejects(&[0x30, 7, 0, 1, b't', 3, 0x0B, 0x81, 0x00], V5),
        DecodeError::NonMinimalVarInt { packet: "PUBLISH" }
    );
    assert_eq!(
        rejects(&[0x30, 8, 0, 1, b't', 0x80, 0x80, 0x80, 0x80, 0x01], V5),
        DecodeError::VarIntTooLong { packet: "PUBLISH" }
    );
}

#[test]
fn a_property_section_longer_than_the_body_is_truncated() {
    assert_eq!(
        rejects(&[0x40, 5, 0, 1, 0x80, 9, 0x1F], V5),
        DecodeError::Truncated { packet: "PUBACK" }
    );
}

#[test]
fn connect_reserved_flag_bit_0_is_rejected() {
    let bytes = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0];
    assert_eq!(
        rejects(&bytes, V3_1_1),
        DecodeError::ReservedFlags { packet: "CONNECT" }
    );
}

#[test]
fn will_qos_or_retain_without_the_will_flag_and_will_qos_3_are_rejected() {
    let with_flags = |flags| {
        [
            0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 0,
        ]
    };
    assert_eq!(
        rejects(&with_flags(0x08), V3_1_1),
        DecodeError::InvalidWillFlags
    );
    assert_eq!(
        rejects(&with_flags(0x20), V3_1_1),
        DecodeError::InvalidWillFlags
    );
    assert_eq!(
        rejects(&with_flags(0x1C), V3_1_1),
        DecodeError::InvalidQoS { packet: "CONNECT" }
    );
}

#[test]
fn a_will_topic_must_be_a_non_empty_topic_name() {
    let will = |topic: &[u8]| {
        let mut bytes = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x04, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0, topic.len() as u8]);
        bytes.extend_from_slice(topic);
        bytes.extend_from_slice(&[0, 0]);
        bytes[1] = bytes.len() as u8 - 2;
        bytes
    };
    assert!(matches!(decodes(&will(b"t"), V3_1_1), Packet::Connect(_)));
    assert_eq!(
        rejects(&will(b""), V3_1_1),
        DecodeError::EmptyTopicName { packet: "CONNECT" }
    );
    assert_eq!(
        rejects(&will(b"a/+"), V3_1_1),
        DecodeError::WildcardInTopicName { packet: "CONNECT" }
    );
}

#[test]
fn a_password_without_a_user_name_is_rejected_before_v5() {
    let bytes = |level| {
        [
            0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', level, 0x42, 0, 60, 0, 0, 0, 1, b'p',
        ]
    };
    assert_eq!(
        rejects(&bytes(4), V3_1_1),
        DecodeError::PasswordWithoutUsername
    );
}

#[test]
fn bytes_after_the_last_field_are_rejected() {
    let cases: [(&[u8], ProtocolVersion, &str); 5] = [
        (&[0x40, 3, 0, 1, 0], V3_1_1, "PUBACK"),
        (&[0xC0, 1, 0], V3_1_1, "PINGREQ"),
        (&[0xE0, 1, 0], V3_1_1, "DISCONNECT"),
        (&[0x20, 3, 0, 0, 0], V3_1_1, "CONNACK"),
        (
            &[
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0, 9,
            ],
            V3_1_1,
            "CONNECT",
        ),
    ];
    for (bytes, v, packet) in cases {
        assert_eq!(
            rejects(bytes, v),
            DecodeError::TrailingBytes { packet, extra: 1 }
        );
    }
    assert_eq!(
        rejects(&[0xB0, 3, 0, 1, 0x11], V3_1_1).to_string(),
        "UNSUBACK has 1 bytes after its last field"
    );
}

#[test]
fn unknown_protocol_levels_and_names_are_rejected_with_their_own_errors() {
    let bytes = |name: &[u8], level: u8| {
        let mut bytes = vec![0x10, 0, 0, name.len() as u8];
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&[level, 0x02, 0, 60, 0, 0]);
        bytes[1] = bytes.len() as u8 - 2;
        bytes
    };
    let e = rejects(&bytes(b"MQTT", 6), V3_1_1);
    assert_eq!(e, DecodeError::UnsupportedProtocolVersion(6));
    assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(
        rejects(&bytes(b"MQTT", 3), V3_1_1),
        DecodeError::UnsupportedProtocolVersion(3)
    );
    assert_eq!(
        rejects(&bytes(b"MQIsdp", 4), V3_1_1),
        DecodeError::UnsupportedProtocolVersion(4)
    );
    assert_eq!(
        rejects(&bytes(b"MQTX", 4), V3_1_1),
        DecodeError::InvalidProtocolName
    );
    assert_eq!(
        rejects(&bytes(b"\xFF\xFE", 4), V3_1_1),
        DecodeError::InvalidProtocolName
    );
}

#[test]
fn reason_codes_the_packet_type_does_not_define_are_rejected() {
    let invalid = |packet, code| DecodeError::InvalidReasonCode { packet, code };
    assert_eq!(rejects(&[0x40, 3, 0, 1, 0x05], V5), invalid("PUBACK", 0x05));
    assert_eq!(rejects(&[0x62, 3, 0, 1, 0x10], V5), invalid("PUBREL", 0x10));
    assert_eq!(rejects(&[0x20, 2, 0, 6], V3_1_1), invalid("CONNACK", 6));
    assert_eq!(rejects(&[0x20, 3, 0, 0x01, 0], V5), invalid("CONNACK", 1));
    assert_eq!(rejects(&[0x90, 3, 0, 1, 3], V3_1_1), invalid("SUBACK", 3));
    assert_eq!(
        rejects(&[0xB0, 4, 0, 1, 0, 0x01], V5),
        invalid("UNSUBACK", 1)
    );
    assert_eq!(rejects(&[0xE0, 1, 0x10], V5), invalid("DISCONNECT", 0x10));
    assert_eq!(rejects(&[0xF0, 1, 0x01], V5), invalid("AUTH", 0x01));
}

#[test]
fn connack_reserved_acknowledge_flags_are_rejected() {
    let reserved = DecodeError::ReservedFlags { packet: "CONNACK" };
    assert_eq!(rejects(&[0x20, 2, 0x02, 0], V3_1_1), reserved);
    assert_eq!(rejects(&[0x20, 3, 0x80, 0, 0], V5), reserved);
}

#[test]
fn truncated_fields_are_malformed() {
    let e = rejects(&[0x82, 5, 0, 1, 0, 5, b'a'], V3_1_1);
    assert_eq!(
        e,
        DecodeError::Truncated {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    assert_eq!(
        rejects(&[0x40, 1, 0], V3_1_1),
        DecodeError::Truncated { packet: "PUBACK" }
    );
}

// ---- encode errors ------------------------------------------------------------------

#[test]
fn a_string_longer_than_65535_bytes_is_not_encoded() {
    let long = "x".repeat(65_536);
    let packet = Packet::Publish(publish(&long, QoS::AtMostOnce, 0, b""));
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(
        encode(&packet, V3_1_1, &mut buf),
        Err(EncodeError::StringTooLong {
            field: "topic name",
            len: 65_536
        })
    );
    assert_eq!(&buf[..], b"kept");
    let mut d = Disconnect::default();
    d.properties.reason_string = Some(ByteStr::from(long));
    assert!(matches!(
        encode(&Packet::Disconnect(d), V5, &mut buf),
        Err(EncodeError::StringTooLong {
            field: "reason string",
            ..
        })
    ));
    assert_eq!(&buf[..], b"kept");
}

#[test]
fn a_packet_past_the_largest_remaining_length_is_not_encoded() {
    let mut p = publish("t", QoS::AtMostOnce, 0, b"");
    // Zeroed allocations are lazy: this does not touch 256 MB.
    p.payload = Bytes::from(vec![0u8; MAX_VARINT]);
    let mut buf = BytesMut::new();
    assert_eq!(
        encode_publish(&p, V3_1_1, &mut buf),
        Err(EncodeError::PacketTooLarge(MAX_VARINT + 3))
    );
    assert!(buf.is_empty());
    assert_eq!(
        EncodeError::PacketTooLarge(MAX_VARINT + 3).to_string(),
        "packet too large to encode: 268435458 bytes exceeds 268435455"
    );
}

#[test]
fn auth_and_oversized_subscription_ids_are_not_encoded() {
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), V3_1_1, &mut buf),
        Err(EncodeError::NotInProtocol {
            packet: "AUTH",
            protocol: V3_1_1
        })
    );
    let mut p = publish("t", QoS::AtMostOnce, 0, b"");
    p.properties.subscription_identifiers = vec![1, u32::MAX];
    assert_eq!(
        encode_publish(&p, V5, &mut buf),
        Err(EncodeError::SubscriptionIdentifierTooLarge(u32::MAX))
    );
    assert!(buf.is_empty());
}

#[test]
fn every_decode_error_has_a_v5_reason_code_of_its_class() {
    assert_eq!(DecodeError::InvalidProtocolName.reason_code(), 0x82);
    assert_eq!(
        DecodeError::ZeroPacketId { packet: "PUBACK" }.reason_code(),
        0x82
    );
    assert_eq!(
        DecodeError::InvalidSubscriptionOptions(0xC0).reason_code(),
        0x81
    );
    assert_eq!(
        DecodeError::InvalidProperty {
            packet: "PUBACK",
            id: 1
        }
        .reason_code(),
        0x81
    );
}

// ---- property tests ---------------------------------------------------------------------

fn text() -> impl Strategy<Value = ByteStr> {
    "[^\\x00]{0,6}".prop_map(ByteStr::from)
}

fn topic_name() -> impl Strategy<Value = ByteStr> {
    "[a-z0-9/ é€]{1,8}".prop_map(ByteStr::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = u8> {
    0u8..=1
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn one_of(codes: &'static [u8]) -> impl Strategy<Value = u8> {
    proptest::sample::select(codes)
}

fn user_properties() -> impl Strategy<Value = Vec<(ByteStr, ByteStr)>> {
    proptest::collection::vec((text(), text()), 0..3)
}

/// Valid properties restricted to those a packet with `allowed` may carry.
fn properties(allowed: u64) -> impl Strategy<Value = Properties> {
    use proptest::option::of;
    (
        (
            of(any::<u32>()),
            of(text()),
            of(any::<u16>()),
            of(text()),
            of(binary()),
            of(flag()),
            of(flag()),
        ),
        (
            of(text()),
            of(text()),
            of(text()),
            of(1u16..),
            of(any::<u16>()),
            of(flag()),
            of(flag()),
        ),
        (
            of(1u32..),
            of(flag()),
            of(flag()),
            of(flag()),
            of(1u32..=MAX_VARINT as u32),
            user_properties(),
        ),
    )
        .prop_map(move |(a, b, c)| {
            fn keep<T>(allowed: u64, id: u8, v: Option<T>) -> Option<T> {
                v.filter(|_| allowed & bit(id) != 0)
            }
            let mut p = Properties {
                session_expiry_interval: keep(allowed, SESSION_EXPIRY_INTERVAL, a.0),
                assigned_client_identifier: keep(allowed, ASSIGNED_CLIENT_IDENTIFIER, a.1),
                server_keep_alive: keep(allowed, SERVER_KEEP_ALIVE, a.2),
                authentication_method: keep(allowed, AUTHENTICATION_METHOD, a.3),
                authentication_data: keep(allowed, AUTHENTICATION_DATA, a.4),
                request_problem_information: keep(allowed, REQUEST_PROBLEM_INFORMATION, a.5),
                request_response_information: keep(allowed, REQUEST_RESPONSE_INFORMATION, a.6),
                response_information: keep(allowed, RESPONSE_INFORMATION, b.0),
                server_reference: keep(allowed, SERVER_REFERENCE, b.1),
                reason_string: keep(allowed, REASON_STRING, b.2),
                receive_maximum: keep(allowed, RECEIVE_MAXIMUM, b.3),
                topic_alias_maximum: keep(allowed, TOPIC_ALIAS_MAXIMUM, b.4),
                maximum_qos: keep(allowed, MAXIMUM_QOS, b.5),
                retain_available: keep(allowed, RETAIN_AVAILABLE, b.6),
                maximum_packet_size: keep(allowed, MAXIMUM_PACKET_SIZE, c.0),
                wildcard_subscription_available: keep(
                    allowed,
                    WILDCARD_SUBSCRIPTION_AVAILABLE,
                    c.1,
                ),
                subscription_identifier_available: keep(
                    allowed,
                    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                    c.2,
                ),
                shared_subscription_available: keep(allowed, SHARED_SUBSCRIPTION_AVAILABLE, c.3),
                subscription_identifier: keep(allowed, SUBSCRIPTION_IDENTIFIER, c.4),
                user_properties: c.5,
            };
            if p.authentication_method.is_none() {
                p.authentication_data = None;
            }
            p
        })
}

fn publish_properties(will: bool) -> impl Strategy<Value = PublishProperties> {
    use proptest::option::of;
    (
        of(flag()),
        of(any::<u32>()),
        of(1u16..),
        of(topic_name()),
        of(binary()),
        user_properties(),
        proptest::collection::vec(1u32..=MAX_VARINT as u32, 0..3),
        of(text()),
    )
        .prop_map(
            move |(format, expiry, alias, response, correlation, user, ids, ct)| {
                PublishProperties {
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    topic_alias: alias.filter(|_| !will),
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: user,
                    subscription_identifiers: if will { Vec::new() } else { ids },
                    content_type: ct,
                }
            },
        )
}

fn props_for(v: ProtocolVersion, allowed: u64) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        properties(allowed).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn connect_strategy(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        publish_properties(true),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            move |(topic, payload, qos, retain, properties, delay)| LastWill {
                topic,
                payload,
                qos,
                retain,
                properties: if v5 {
                    properties
                } else {
                    PublishProperties::default()
                },
                will_delay_interval: delay.filter(|_| v5),
            },
        );
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        proptest::option::of(will),
        proptest::option::of(text()),
        proptest::option::of(binary()),
        props_for(v, CONNECT_PROPERTIES),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                let username = if !v5 && password.is_some() && username.is_none() {
                    Some(ByteStr::from("u"))
                } else {
                    username
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

fn publish_strategy(v: ProtocolVersion) -> BoxedStrategy<Publish> {
    let v5 = v.is_v5();
    let topic = if v5 {
        prop_oneof![topic_name(), Just(ByteStr::default())].boxed()
    } else {
        topic_name().boxed()
    };
    let properties = if v5 {
        publish_properties(false).boxed()
    } else {
        Just(PublishProperties::default()).boxed()
    };
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic,
        1u16..,
        binary(),
        properties,
    )
        .prop_map(|(dup, qos, retain, topic, id, payload, mut properties)| {
            if topic.is_empty() && properties.topic_alias.is_none() {
                properties.topic_alias = Some(1);
            }
            let at_least_once = qos != QoS::AtMostOnce;
            Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic,
                packet_id: if at_least_once {
                    PacketId::new(id)
                } else {
                    PacketId::NONE
                },
                payload,
                properties,
            }
        })
        .boxed()
}

fn pub_resp(v: ProtocolVersion, reasons: &'static [u8]) -> BoxedStrategy<PubResp> {
    let reason = if v.is_v5() {
        one_of(reasons).boxed()
    } else {
        Just(0).boxed()
    };
    (1u16.., reason, props_for(v, ACK_PROPERTIES))
        .prop_map(|(packet_id, reason, properties)| PubResp {
            packet_id: PacketId::new(packet_id),
            reason,
            properties,
        })
        .boxed()
}

fn packet_strategy(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(
        move |(qos, no_local, retain_as_published, retain_handling)| {
            if v5 {
                SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                }
            }
        },
    );
    let connack_code = match v {
        V5 => one_of(CONNACK_REASONS).boxed(),
        _ => one_of(&[0, 0x84, 0x85, 0x88, 0x86, 0x87]).boxed(),
    };
    let suback_codes: &'static [u8] = if v5 { SUBACK_REASONS } else { &[0, 1, 2, 0x80] };
    let unsuback_codes = if v5 {
        proptest::collection::vec(one_of(UNSUBACK_REASONS), 1..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let mut strategies = vec![
        connect_strategy(v),
        (
            any::<bool>(),
            connack_code,
            props_for(v, CONNACK_PROPERTIES),
        )
            .prop_map(move |(session_present, code, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present: session_present && v != V3_1,
                    code,
                    properties,
                })
            })
            .boxed(),
        publish_strategy(v).prop_map(Packet::Publish).boxed(),
        pub_resp(v, PUBACK_REASONS).prop_map(Packet::PubAck).boxed(),
        pub_resp(v, PUBACK_REASONS).prop_map(Packet::PubRec).boxed(),
        pub_resp(v, PUBREL_REASONS).prop_map(Packet::PubRel).boxed(),
        pub_resp(v, PUBREL_REASONS)
            .prop_map(Packet::PubComp)
            .boxed(),
        (
            1u16..,
            proptest::collection::vec((text(), options), 1..4),
            props_for(v, SUBSCRIBE_PROPERTIES),
        )
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Subscribe(Subscribe {
                    packet_id: PacketId::new(packet_id),
                    filters,
                    properties,
                })
            })
            .boxed(),
        (
            1u16..,
            proptest::collection::vec(one_of(suback_codes), 1..4),
            props_for(v, ACK_PROPERTIES),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::SubAck(SubAck {
                    packet_id: PacketId::new(packet_id),
                    reasons,
                    properties,
                })
            })
            .boxed(),
        (
            1u16..,
            proptest::collection::vec(text(), 1..4),
            props_for(v, UNSUBSCRIBE_PROPERTIES),
        )
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: PacketId::new(packet_id),
                    filters,
                    properties,
                })
            })
            .boxed(),
        (1u16.., unsuback_codes, props_for(v, ACK_PROPERTIES))
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id: PacketId::new(packet_id),
                    reasons,
                    properties,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        strategies.push(
            (
                one_of(DISCONNECT_REASONS),
                properties(DISCONNECT_PROPERTIES),
            )
                .prop_map(|(reason, properties)| {
                    Packet::Disconnect(Disconnect { reason, properties })
                })
                .boxed(),
        );
        strategies.push(
            (one_of(AUTH_REASONS), properties(AUTH_PROPERTIES))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    } else {
        strategies.push(Just(Packet::Disconnect(Disconnect::default())).boxed());
    }
    proptest::strategy::Union::new(strategies).boxed()
}

/// Encodes, checks the length and every prefix, and decodes back.
fn check_round_trip(packet: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(encoded_len(packet, v).ok(), Some(buf.len()));
    for split in 0..buf.len() {
        let mut prefix = BytesMut::from(&buf[..split]);
        prop_assert_eq!(decode(&mut prefix, v, usize::MAX), Ok(None));
    }
    let decoded = decode(&mut buf, v, usize::MAX);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

/// Decodes arbitrary bytes; whatever decodes must survive encode -> decode unchanged.
fn check_arbitrary(bytes: &[u8]) -> Result<(), TestCaseError> {
    for v in [V3_1, V3_1_1, V5] {
        let mut buf = BytesMut::from(bytes);
        if let Ok(Some(packet)) = decode(&mut buf, v, MAX) {
            let mut out = BytesMut::new();
            encode(&packet, v, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode(&mut out, v, usize::MAX), Ok(Some(packet)));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_valid_3_1_1_packet_survives_encode_then_decode(packet in packet_strategy(V3_1_1)) {
        check_round_trip(&packet, V3_1_1)?;
    }

    #[test]
    fn any_valid_3_1_packet_survives_encode_then_decode(packet in packet_strategy(V3_1)) {
        check_round_trip(&packet, V3_1)?;
    }

    #[test]
    fn any_valid_v5_packet_survives_encode_then_decode(packet in packet_strategy(V5)) {
        check_round_trip(&packet, V5)?;
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_arbitrary(&bytes)?;
    }

    #[test]
    fn decoding_arbitrary_bodies_behind_a_valid_header_never_panics(
        first in proptest::sample::select(&[
            0x10u8, 0x20, 0x30, 0x32, 0x35, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xA2,
            0xB0, 0xC0, 0xD0, 0xE0, 0xF0,
        ][..]),
        body in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut bytes = vec![first, body.len() as u8];
        bytes.extend_from_slice(&body);
        check_arbitrary(&bytes)?;
    }
}
