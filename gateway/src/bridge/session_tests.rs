//! The bridge session's protocol rules, without sockets: packet ids, QoS 2 resumption, refusals,
//! downlink duplicates, the window and the CONNACK limits.

use super::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;

fn session(protocol: ProtocolVersion, max_inflight: u16) -> Session {
    Session::new(
        protocol,
        Limits {
            max_inflight,
            max_packet: None,
        },
        Persisted::default(),
    )
}

fn connack(present: bool) -> ConnAck {
    ConnAck {
        session_present: present,
        ..ConnAck::default()
    }
}

fn msg(qos: QoS, size: usize) -> OutMsg {
    OutMsg {
        topic: ByteStr::from("edge/t"),
        payload: Bytes::from(vec![b'x'; size]),
        qos,
        retain: false,
        properties: PublishProperties::default(),
    }
}

fn resp(packet_id: u16, reason: u8) -> PubResp {
    PubResp {
        packet_id: PacketId::new(packet_id),
        reason,
        ..PubResp::default()
    }
}

fn published(p: &Packet) -> &Publish {
    match p {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn feed(s: &mut Session, p: Packet) -> Vec<Event> {
    let mut out = Vec::new();
    s.on_packet(p, &mut out);
    out
}

fn sent(events: &[Event]) -> Vec<&Packet> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Send(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn a_records_packet_id_is_its_seq_so_a_resend_keeps_it_and_sets_dup() {
    let mut s = session(V4, 8);
    s.on_connack(&connack(false));
    let first = s
        .publish(41, msg(QoS::AtLeastOnce, 4), false)
        .expect("fits");
    assert_eq!(published(&first).packet_id, packet_id_for(41));
    assert!(!published(&first).dup);
    // The link drops; the record comes out of the queue again on the next connection.
    s.on_connack(&connack(true));
    let again = s.publish(41, msg(QoS::AtLeastOnce, 4), true).expect("fits");
    assert_eq!(published(&again).packet_id, published(&first).packet_id);
    assert!(published(&again).dup);
    // Ids wrap inside the publish range and never reach the SUBSCRIBE range.
    assert_eq!(
        packet_id_for(u64::from(PUBLISH_IDS) - 1),
        PacketId::new(PUBLISH_IDS)
    );
    assert_eq!(packet_id_for(u64::from(PUBLISH_IDS)), PacketId::new(1));
    let sub = s.subscribe(vec!["edge/cmd/#".into()], QoS::AtLeastOnce);
    let Packet::Subscribe(sub) = sub else {
        panic!("not a SUBSCRIBE")
    };
    assert!(sub.packet_id > PacketId::new(PUBLISH_IDS));
}

#[test]
fn qos2_resumes_at_pubrel_after_a_reconnect_and_never_resends_the_publish() {
    let mut s = session(V4, 8);
    s.on_connack(&connack(false));
    let p = s.publish(7, msg(QoS::ExactlyOnce, 4), false).expect("fits");
    let id = published(&p).packet_id;
    let ev = feed(&mut s, Packet::PubRec(resp(id.get(), 0)));
    assert!(matches!(sent(&ev)[..], [Packet::PubRel(r)] if r.packet_id == id));
    assert!(
        s.take_dirty(),
        "the released state must be persisted before the PUBREL"
    );
    assert_eq!(s.persisted().released, BTreeSet::from([7]));

    // Cut before the PUBCOMP: the next connection sends PUBREL only.
    let resume = s.on_connack(&connack(true));
    assert!(matches!(&resume.pubrels[..], [Packet::PubRel(r)] if r.packet_id == id));
    assert!(
        s.is_released(7),
        "the link must skip the record, not publish it again"
    );
    let ev = feed(&mut s, Packet::PubComp(resp(id.get(), 0)));
    assert!(matches!(ev[..], [Event::Delivered(7)]));
    assert!(s.take_dirty());
    assert!(s.persisted().released.is_empty());
    // Done until the queue's acknowledgement is on disk: a crash before that must not send
    // the record again when the queue hands it out once more.
    assert!(s.is_done(7));
    assert_eq!(s.persisted().done, BTreeSet::from([7]));
    s.forget_done_through(6);
    assert!(s.is_done(7) && !s.take_dirty());
    s.forget_done_through(7);
    assert!(!s.is_done(7) && s.take_dirty());
}

#[test]
fn qos2_state_survives_a_restart_through_the_persisted_form() {
    let mut s = session(V5, 8);
    s.on_connack(&connack(false));
    let p = s.publish(3, msg(QoS::ExactlyOnce, 1), false).expect("fits");
    let id = published(&p).packet_id;
    feed(&mut s, Packet::PubRec(resp(id.get(), 0)));
    let down = Publish {
        qos: QoS::ExactlyOnce,
        topic: ByteStr::from("edge/cmd/x"),
        packet_id: PacketId::new(900),
        ..Publish::default()
    };
    feed(&mut s, Packet::Publish(down.clone()));
    let text = s.persisted().encode();

    let restored = Persisted::decode(&text).expect("decodes");
    let mut s = Session::new(
        V5,
        Limits {
            max_inflight: 8,
            max_packet: None,
        },
        restored,
    );
    let resume = s.on_connack(&connack(true));
    assert_eq!(resume.pubrels.len(), 1);
    assert!(s.is_released(3));
    // The cloud resends the downlink PUBLISH (it missed our PUBREC): not delivered twice.
    let ev = feed(&mut s, Packet::Publish(down));
    assert!(!ev.iter().any(|e| matches!(e, Event::Downlink(_))));
    assert!(matches!(sent(&ev)[..], [Packet::PubRec(r)] if r.packet_id == PacketId::new(900)));
}

#[test]
fn without_a_cloud_session_released_records_count_as_delivered() {
    let mut s = session(V4, 8);
    s.on_connack(&connack(false));
    let p = s.publish(5, msg(QoS::ExactlyOnce, 1), false).expect("fits");
    feed(
        &mut s,
        Packet::PubRec(resp((published(&p).packet_id).get(), 0)),
    );
    s.take_dirty();
    let resume = s.on_connack(&connack(false));
    assert!(resume.pubrels.is_empty());
    assert_eq!(resume.delivered, vec![5]);
    assert!(s.take_dirty());
    assert!(!s.is_released(5));
}

#[test]
fn a_refused_pubrec_or_puback_frees_the_slot_and_sends_no_pubrel() {
    let mut s = session(V5, 1);
    s.on_connack(&connack(false));
    let p = s
        .publish(10, msg(QoS::ExactlyOnce, 1), false)
        .expect("fits");
    assert!(!s.has_room_for(11), "window of one is full");
    let ev = feed(
        &mut s,
        Packet::PubRec(resp((published(&p).packet_id).get(), 0x87)),
    );
    assert!(
        matches!(&ev[..], [Event::Refused(10, Refusal::Reason(0x87))]),
        "{ev:?}"
    );
    assert!(sent(&ev).is_empty(), "no PUBREL after a failed PUBREC");
    assert!(s.has_room_for(11));

    let p = s
        .publish(11, msg(QoS::AtLeastOnce, 1), false)
        .expect("fits");
    let ev = feed(
        &mut s,
        Packet::PubAck(resp((published(&p).packet_id).get(), 0x97)),
    );
    assert!(matches!(
        &ev[..],
        [Event::Refused(11, Refusal::Reason(0x97))]
    ));
    assert_eq!(Refusal::Reason(0x87).key(), "not_authorized");
    assert_eq!(Refusal::Reason(0x97).key(), "quota_exceeded");
    // 0x10 "no matching subscribers" is a success.
    let p = s
        .publish(12, msg(QoS::AtLeastOnce, 1), false)
        .expect("fits");
    let ev = feed(
        &mut s,
        Packet::PubAck(resp((published(&p).packet_id).get(), 0x10)),
    );
    assert!(matches!(&ev[..], [Event::Delivered(12)]));
}

#[test]
fn an_unknown_pubrel_gets_a_pubcomp_instead_of_killing_the_link() {
    for (protocol, reason) in [(V4, 0), (V5, reason::PACKET_IDENTIFIER_NOT_FOUND)] {
        let mut s = session(protocol, 8);
        s.on_connack(&connack(true));
        let ev = feed(&mut s, Packet::PubRel(resp(77, 0)));
        assert!(
            matches!(sent(&ev)[..], [Packet::PubComp(c)] if c.packet_id == PacketId::new(77) && c.reason == reason),
            "{ev:?}"
        );
        assert!(!ev.iter().any(|e| matches!(e, Event::Violation(_))));
    }
}

#[test]
fn downlink_qos2_is_delivered_once_per_packet_id_until_its_pubrel() {
    let mut s = session(V4, 8);
    s.on_connack(&connack(false));
    let p = Publish {
        qos: QoS::ExactlyOnce,
        topic: ByteStr::from("edge/cmd/x"),
        packet_id: PacketId::new(4),
        ..Publish::default()
    };
    let ev = feed(&mut s, Packet::Publish(p.clone()));
    assert!(matches!(ev[0], Event::Downlink(_)));
    // A reconnect keeps the id (session present): the DUP resend is not delivered again.
    s.on_connack(&connack(true));
    let ev = feed(
        &mut s,
        Packet::Publish(Publish {
            dup: true,
            ..p.clone()
        }),
    );
    assert_eq!(ev.len(), 1, "only the PUBREC: {ev:?}");
    let ev = feed(&mut s, Packet::PubRel(resp(4, 0)));
    assert!(matches!(sent(&ev)[..], [Packet::PubComp(c)] if c.reason == 0));
    // After the PUBREL the id is free: a new message with it is delivered.
    let ev = feed(&mut s, Packet::Publish(p));
    assert!(matches!(ev[0], Event::Downlink(_)));
}

#[test]
fn a_record_larger_than_the_cloud_takes_is_refused_before_it_is_sent() {
    let mut s = Session::new(
        V5,
        Limits {
            max_inflight: 8,
            max_packet: Some(4096),
        },
        Persisted::default(),
    );
    let mut ack = connack(false);
    ack.properties.maximum_packet_size = Some(1024);
    s.on_connack(&ack);
    assert_eq!(s.max_packet(), Some(1024));
    let err = s
        .publish(1, msg(QoS::AtLeastOnce, 2000), false)
        .unwrap_err();
    assert!(matches!(err, Refusal::TooLarge(size, 1024) if size > 2000));
    assert_eq!(err.key(), "packet_too_large");
    assert!(s.has_room_for(1), "a refused record takes no slot");
    assert!(s.publish(2, msg(QoS::AtLeastOnce, 100), false).is_ok());
    // 3.1.1: only the configured limit.
    let mut s = Session::new(
        V4,
        Limits {
            max_inflight: 8,
            max_packet: Some(1024),
        },
        Persisted::default(),
    );
    s.on_connack(&connack(false));
    assert!(s.publish(1, msg(QoS::AtMostOnce, 2000), false).is_err());
}

#[test]
fn the_window_is_the_smallest_of_max_inflight_and_receive_maximum() {
    let mut s = session(V5, 4);
    let mut ack = connack(false);
    ack.properties.receive_maximum = Some(2);
    s.on_connack(&ack);
    s.publish(1, msg(QoS::AtLeastOnce, 1), false).expect("fits");
    assert!(s.has_room_for(2));
    s.publish(2, msg(QoS::AtLeastOnce, 1), false).expect("fits");
    assert!(!s.has_room_for(3));
    // QoS 0 takes no slot.
    let mut s = session(V5, 1);
    s.on_connack(&connack(false));
    s.publish(1, msg(QoS::AtMostOnce, 1), false).expect("fits");
    assert!(s.has_room_for(2));
}

#[test]
fn the_window_never_spans_more_seqs_than_there_are_publish_ids() {
    let mut s = session(V4, 65_535);
    s.on_connack(&connack(false));
    s.publish(100, msg(QoS::AtLeastOnce, 1), false)
        .expect("fits");
    assert!(s.has_room_for(100 + u64::from(PUBLISH_IDS) - 1));
    assert!(!s.has_room_for(100 + u64::from(PUBLISH_IDS)));
}

#[test]
fn the_clouds_maximum_qos_and_retain_support_shape_the_publish() {
    let mut s = session(V5, 8);
    let mut ack = connack(false);
    ack.properties.maximum_qos = Some(1);
    ack.properties.retain_available = Some(0);
    s.on_connack(&ack);
    let mut m = msg(QoS::ExactlyOnce, 1);
    m.retain = true;
    let p = s.publish(1, m, false).expect("fits");
    assert_eq!(published(&p).qos, QoS::AtLeastOnce);
    assert!(!published(&p).retain);
}

#[test]
fn v5_downlink_subscriptions_set_no_local_and_retain_on_new_only() {
    let mut s = session(V5, 8);
    let Packet::Subscribe(sub) = s.subscribe(vec!["edge/cmd/#".into()], QoS::ExactlyOnce) else {
        panic!("not a SUBSCRIBE")
    };
    assert!(sub.filters[0].1.no_local);
    assert_eq!(sub.filters[0].1.retain_handling, 1);
    let mut s4 = session(V4, 8);
    let Packet::Subscribe(sub4) = s4.subscribe(vec!["edge/cmd/#".into()], QoS::AtLeastOnce) else {
        panic!("not a SUBSCRIBE")
    };
    assert!(!sub4.filters[0].1.no_local);
    // The SUBACK reports each filter.
    let ev = feed(
        &mut s,
        Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            reasons: vec![0x87],
            properties: Default::default(),
        }),
    );
    assert!(
        matches!(&ev[..], [Event::Subscribed(r)] if r == &vec![("edge/cmd/#".to_owned(), Err(0x87))])
    );
}

#[test]
fn damaged_session_files_are_refused() {
    assert!(Persisted::decode("").is_err());
    assert!(Persisted::decode("holdfast-bridge-session 1\nrel x\n").is_err());
    assert!(Persisted::decode("holdfast-bridge-session 1\nin 0\n").is_err());
    assert!(Persisted::decode("holdfast-bridge-session 1\nin 70000\n").is_err());
    let p = Persisted {
        released: BTreeSet::from([1, u64::MAX]),
        incoming: BTreeSet::from([PacketId::new(1), PacketId::new(65535)]),
        done: BTreeSet::from([0, 9]),
    };
    assert_eq!(Persisted::decode(&p.encode()), Ok(p));
}
