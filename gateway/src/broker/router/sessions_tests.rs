//! Tests of `router/sessions.rs`, sans IO: time passed in, as a connection would drive it.

use crate::broker::message::*;
use crate::broker::router::test_support::*;
use crate::broker::router::*;
use crate::broker::session::*;
use holdfast_mqtt::{reason, QoS};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Sessions: resume, QoS 2, clean start, expiry
// ---------------------------------------------------------------------------------------------

#[test]
fn a_resumed_session_resends_inflight_with_dup_before_new_messages() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c1) = connect_with(&mut r, "sub", false, HOUR, 3);
    let s = res.session_id;
    assert!(!res.session_present);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    for i in 0..5 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    let sent = publishes(&drain(&mut r, s, c1.conn_id, t0));
    assert_eq!(sent.len(), 3);
    disconnect(&mut r, s, &c1, t0);
    r.publish(msg("t", "5", QoS::AtLeastOnce, false, None), t0);
    r.take_wakeups();

    let (res, c2) = connect_with(&mut r, "sub", false, HOUR, 3);
    assert_eq!(res.session_id, s);
    assert!(res.session_present);
    assert!(
        res.replaced.is_none(),
        "the old connection had already gone"
    );
    assert!(!res.discarded);
    let wake = r.take_wakeups();
    assert_eq!(wake.len(), 1);
    assert!(
        Arc::ptr_eq(&wake[0], &c2),
        "the new connection is woken to resend"
    );

    // The old connection can no longer drain the session.
    assert!(drain(&mut r, s, c1.conn_id, t0).is_empty());

    let out = publishes(&drain(&mut r, s, c2.conn_id, t0));
    let resent: Vec<_> = out[..3]
        .iter()
        .map(|s| (s.payload.as_str(), s.packet_id, s.dup))
        .collect();
    let expected: Vec<_> = sent
        .iter()
        .map(|s| (s.payload.as_str(), s.packet_id, true))
        .collect();
    assert_eq!(resent, expected);
    // The window is full with the resent three; the queued ones follow as acks come in.
    assert_eq!(out.len(), 3);
    for s_ in &out {
        ack(&mut r, s, s_);
    }
    let rest = publishes(&drain(&mut r, s, c2.conn_id, t0));
    assert_eq!(
        rest.iter()
            .map(|s| (s.payload.as_str(), s.dup))
            .collect::<Vec<_>>(),
        [("3", false), ("4", false), ("5", false)]
    );
    // A resend happens once per reconnect, not on every drain.
    assert!(drain(&mut r, s, c2.conn_id, t0).is_empty());
}

#[test]
fn qos2_outbound_moves_from_pubrec_to_pubcomp_and_resends_pubrel_after_reconnect() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c1) = connect(&mut r, "sub", false, HOUR);
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "a", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "b", QoS::ExactlyOnce, false, None), t0);
    let sent = publishes(&drain(&mut r, s, c1.conn_id, t0));
    let (a, b) = (sent[0].packet_id, sent[1].packet_id);
    assert!(sent.iter().all(|s| s.qos == QoS::ExactlyOnce));

    assert!(!r.puback(s, a), "PUBACK does not answer a QoS 2 PUBLISH");
    assert!(!r.pubcomp(s, a), "PUBCOMP before PUBREC finds nothing");
    assert!(r.pubrec(s, a, reason::SUCCESS));
    assert!(
        r.pubrec(s, a, reason::SUCCESS),
        "a repeated PUBREC is answered again"
    );
    assert_eq!(
        r.sizes().inflight,
        2,
        "a PUBREL awaiting PUBCOMP keeps its slot"
    );

    disconnect(&mut r, s, &c1, t0);
    let (_, c2) = connect(&mut r, "sub", false, HOUR);
    let out = drain(&mut r, s, c2.conn_id, t0);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Outgoing::PubRel(id) if id == a));
    match &out[1] {
        Outgoing::Publish {
            delivery,
            packet_id,
            dup,
        } => {
            assert_eq!((*packet_id, *dup), (b, true));
            assert_eq!(&delivery.message.payload[..], b"b");
        }
        other => panic!("expected the PUBLISH of b again, got {other:?}"),
    }
    assert!(r.pubcomp(s, a));
    assert!(!r.pubcomp(s, a));
    assert!(r.pubrec(s, b, reason::SUCCESS));
    assert!(r.pubcomp(s, b));
    assert_eq!(r.sizes().inflight, 0);
}

#[test]
fn a_pubrec_with_an_error_reason_ends_the_exchange() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c) = connect_with(&mut r, "sub", true, Duration::ZERO, 1);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "a", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "b", QoS::ExactlyOnce, false, None), t0);
    let a = publishes(&drain(&mut r, s, c.conn_id, t0))[0].packet_id;
    assert!(r.pubrec(s, a, reason::UNSPECIFIED_ERROR));
    assert_eq!(r.sizes().inflight, 0);
    assert!(!r.pubcomp(s, a));
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["b"]);
}

#[test]
fn discard_inflight_frees_the_slot_whatever_the_handshake_state() {
    let t0 = Instant::now();
    let mut r = router();
    let (res, c) = connect_with(&mut r, "sub", false, HOUR, 2);
    let s = res.session_id;
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "q1", QoS::AtLeastOnce, false, None), t0);
    r.publish(msg("t", "q2", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "next", QoS::AtLeastOnce, false, None), t0);
    let sent = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(sent.len(), 2);
    assert!(r.pubrec(s, sent[1].packet_id, reason::SUCCESS));
    assert!(r.discard_inflight(s, sent[1].packet_id), "awaiting PUBCOMP");
    assert!(r.discard_inflight(s, sent[0].packet_id), "awaiting PUBACK");
    assert!(!r.discard_inflight(s, sent[0].packet_id));
    assert!(
        !r.discard_inflight(SessionId::test(999), PacketId::new(1)),
        "unknown session"
    );
    assert_eq!(drained_payloads(&mut r, s, c.conn_id, t0), ["next"]);
    // Nothing discarded comes back after a reconnect.
    disconnect(&mut r, s, &c, t0);
    let (_, c) = connect(&mut r, "sub", false, HOUR);
    let resent = publishes(&drain(&mut r, s, c.conn_id, t0));
    assert_eq!(
        resent
            .iter()
            .map(|s| (s.payload.as_str(), s.dup))
            .collect::<Vec<_>>(),
        [("next", true)]
    );
}

#[test]
fn receive_qos2_detects_duplicates_and_enforces_max_awaiting() {
    let mut r = router();
    let (s, c) = connect(&mut r, "pub", false, HOUR);
    assert_eq!(r.receive_qos2(s, PacketId::new(1), 2), Qos2Receive::New);
    assert_eq!(
        r.receive_qos2(s, PacketId::new(1), 2),
        Qos2Receive::Duplicate
    );
    assert_eq!(r.receive_qos2(s, PacketId::new(2), 2), Qos2Receive::New);
    assert_eq!(r.receive_qos2(s, PacketId::new(3), 2), Qos2Receive::Full);
    assert_eq!(
        r.receive_qos2(s, PacketId::new(1), 2),
        Qos2Receive::Duplicate,
        "a resend is recognised even when full"
    );

    // PUBREL releases the id: the same id is new again and a slot is free.
    assert!(r.pubrel(s, PacketId::new(1)));
    assert!(
        !r.pubrel(s, PacketId::new(1)),
        "a second PUBREL finds nothing"
    );
    assert!(!r.pubrel(s, PacketId::new(42)));
    assert_eq!(r.receive_qos2(s, PacketId::new(3), 2), Qos2Receive::New);
    assert_eq!(r.receive_qos2(s, PacketId::new(1), 2), Qos2Receive::Full);

    // The ids awaiting PUBREL are session state: they survive a resume (MQTT 5.0 §4.1).
    let t0 = Instant::now();
    disconnect(&mut r, s, &c, t0);
    let (s2, _) = connect(&mut r, "pub", false, HOUR);
    assert_eq!(s2, s);
    assert_eq!(
        r.receive_qos2(s, PacketId::new(2), 2),
        Qos2Receive::Duplicate
    );
    assert!(r.pubrel(s, PacketId::new(2)));

    // ...and go with the session on clean start.
    let (s3, _) = connect(&mut r, "pub", true, HOUR);
    assert_eq!(r.receive_qos2(s3, PacketId::new(3), 2), Qos2Receive::New);
    assert_eq!(
        r.receive_qos2(SessionId::test(999), PacketId::new(1), 2),
        Qos2Receive::Full,
        "unknown session"
    );
}

#[test]
fn clean_start_discards_the_old_session_and_returns_the_replaced_connection() {
    let t0 = Instant::now();
    let mut r = router();
    let (old, c_old) = connect(&mut r, "dev", false, HOUR);
    sub(&mut r, old, "t", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "1", QoS::AtLeastOnce, false, None), t0);
    r.publish(msg("t", "2", QoS::AtLeastOnce, false, None), t0);
    drain(&mut r, old, c_old.conn_id, t0);
    r.publish(msg("t", "3", QoS::AtLeastOnce, false, None), t0);
    assert_eq!(r.receive_qos2(old, PacketId::new(7), 10), Qos2Receive::New);

    let (res, c_new) = connect_with(&mut r, "dev", true, HOUR, 32);
    assert!(res.discarded);
    assert!(!res.session_present);
    assert_ne!(res.session_id, old);
    let replaced = res.replaced.expect("the serving connection is handed back");
    assert!(Arc::ptr_eq(&replaced, &c_old));
    assert_eq!(
        r.counters().dropped_session_discarded,
        3,
        "two inflight and one queued"
    );
    let sizes = r.sizes();
    assert_eq!(
        (sizes.sessions, sizes.connected, sizes.subscriptions),
        (1, 1, 0)
    );
    assert_eq!(
        r.publish(msg("t", "4", QoS::AtLeastOnce, false, None), t0),
        0
    );
    assert_eq!(
        r.receive_qos2(res.session_id, PacketId::new(7), 10),
        Qos2Receive::New
    );

    // The replaced connection's late DISCONNECT touches nothing.
    disconnect(&mut r, old, &c_old, t0);
    r.disconnect(
        res.session_id,
        c_old.conn_id,
        None,
        Some(Duration::ZERO),
        t0,
    );
    assert_eq!(r.sizes().connected, 1);
    assert!(drain(&mut r, res.session_id, c_old.conn_id, t0).is_empty());
    assert!(drain(&mut r, res.session_id, c_new.conn_id, t0).is_empty());
}

#[test]
fn a_resuming_connect_takes_over_a_connected_session() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c_old) = connect(&mut r, "dev", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "1", QoS::AtLeastOnce, false, None), t0);
    let first = publishes(&drain(&mut r, s, c_old.conn_id, t0));

    let (res, c_new) = connect_with(&mut r, "dev", false, HOUR, 32);
    assert_eq!(res.session_id, s);
    assert!(res.session_present);
    assert!(!res.discarded);
    assert!(Arc::ptr_eq(res.replaced.as_ref().unwrap(), &c_old));

    // The old connection's end neither unbinds nor expires the resumed session.
    r.disconnect(s, c_old.conn_id, None, Some(Duration::ZERO), t0);
    assert_eq!(r.sizes().connected, 1);
    assert!(r.tick(t0 + 2 * HOUR).is_empty());
    let out = publishes(&drain(&mut r, s, c_new.conn_id, t0));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].packet_id, out[0].dup), (first[0].packet_id, true));
}

#[test]
fn session_expiry_removes_an_offline_session_at_tick() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "dev", false, secs(10));
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    r.publish(msg("t", "q", QoS::AtLeastOnce, false, None), t0);

    assert!(r.tick(t0 + secs(9)).is_empty());
    assert!(r.tick(t0 + secs(10) - Duration::from_millis(1)).is_empty());
    assert_eq!(r.sizes().sessions, 1);
    let gone = r.tick(t0 + secs(10));
    assert_eq!(gone, [ClientId::from("dev")]);
    assert_eq!(r.sizes(), RouterSizes::default());
    assert_eq!(r.counters().dropped_session_discarded, 1);
    assert_eq!(
        r.publish(msg("t", "late", QoS::AtLeastOnce, false, None), t0),
        0
    );
    assert!(r.tick(t0 + secs(20)).is_empty(), "reported once");

    // A later CONNECT for the id starts from nothing.
    let (res, _) = connect_with(&mut r, "dev", false, secs(10), 32);
    assert!(!res.session_present);
    assert!(!res.discarded);
}

#[test]
fn a_reconnect_before_expiry_keeps_the_session_and_a_zero_expiry_ends_it_at_disconnect() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "dev", false, secs(10));
    disconnect(&mut r, s, &c, t0);
    let (_, c) = connect(&mut r, "dev", false, secs(10));
    assert!(
        r.tick(t0 + secs(60)).is_empty(),
        "connected sessions do not expire"
    );
    // The expiry counts from the latest disconnect.
    disconnect(&mut r, s, &c, t0 + secs(60));
    assert!(r.tick(t0 + secs(69)).is_empty());
    assert_eq!(r.tick(t0 + secs(70)).len(), 1);

    let (s, c) = connect(&mut r, "brief", false, Duration::ZERO);
    disconnect(&mut r, s, &c, t0);
    assert_eq!(r.sizes().sessions, 0);

    // A v5 DISCONNECT can shorten the expiry to zero.
    let (s, c) = connect(&mut r, "shorten", false, HOUR);
    r.disconnect(s, c.conn_id, None, Some(Duration::ZERO), t0);
    assert_eq!(r.sizes().sessions, 0);
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

/// A watcher of `will/#` and a way to read what it got.
fn will_watcher(r: &mut Router, now: Instant) -> (SessionId, Arc<ConnControl>) {
    let (w, c) = connect(r, "watcher", true, Duration::ZERO);
    sub(r, w, "will/#", QoS::AtLeastOnce, now);
    (w, c)
}

fn will(payload: &str) -> Arc<Message> {
    msg("will/dev", payload, QoS::AtLeastOnce, false, None)
}

#[test]
fn a_delayed_will_is_published_at_tick_after_its_delay_and_cancelled_by_a_resume() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);

    let (s, c) = connect(&mut r, "dev", false, secs(100));
    r.disconnect(s, c.conn_id, Some((will("gone"), secs(5))), None, t0);
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
    r.tick(t0 + secs(4));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
    r.tick(t0 + secs(5));
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["gone"]);
    r.tick(t0 + secs(6));
    assert!(
        drain(&mut r, w, wc.conn_id, t0).is_empty(),
        "published once"
    );
    assert_eq!(r.sizes().sessions, 2, "the session itself lives on");

    // A resume within the delay cancels it (MQTT 5.0 §3.1.2.5).
    let (res, c) = connect_with(&mut r, "dev", false, secs(100), 32);
    assert_eq!(res.session_id, s);
    r.disconnect(
        s,
        c.conn_id,
        Some((will("again"), secs(5))),
        None,
        t0 + secs(20),
    );
    let (_, _c) = connect(&mut r, "dev", false, secs(100));
    r.tick(t0 + secs(30));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
}

#[test]
fn a_will_delay_longer_than_the_session_expiry_is_published_when_the_session_ends() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c) = connect(&mut r, "dev", false, secs(3));
    r.disconnect(s, c.conn_id, Some((will("end"), secs(60))), None, t0);
    r.tick(t0 + secs(2));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());
    assert_eq!(r.tick(t0 + secs(3)).len(), 1);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["end"]);
    r.tick(t0 + secs(60));
    assert!(
        drain(&mut r, w, wc.conn_id, t0).is_empty(),
        "published once"
    );
}

#[test]
fn a_will_with_zero_delay_is_published_at_disconnect() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(s, c.conn_id, Some((will("now"), Duration::ZERO)), None, t0);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["now"]);

    // A session that ends at disconnect publishes its will at once, whatever the delay.
    let (s, c) = connect(&mut r, "brief", true, Duration::ZERO);
    r.disconnect(s, c.conn_id, Some((will("ended"), secs(30))), None, t0);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["ended"]);
}

#[test]
fn a_delayed_will_is_not_published_when_a_resuming_connection_replaced_the_session() {
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c_old) = connect(&mut r, "dev", false, HOUR);
    let (res, c_new) = connect_with(&mut r, "dev", false, HOUR, 32);
    assert_eq!(res.session_id, s);
    r.disconnect(s, c_old.conn_id, Some((will("stale"), secs(5))), None, t0);
    r.tick(t0 + secs(10));
    assert!(drain(&mut r, w, wc.conn_id, t0).is_empty());

    // An undelayed will of a replaced connection still goes out (documented on `disconnect`).
    let (_, _c_newer) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(
        s,
        c_new.conn_id,
        Some((will("now"), Duration::ZERO)),
        None,
        t0,
    );
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["now"]);
}

#[test]
fn a_clean_start_connect_publishes_the_pending_will_of_the_session_it_discards() {
    // The session ends on clean start, and a will is due when "the Will Delay Interval has
    // passed or the Session ends, whichever happens first" (MQTT 5.0 §3.1.2.5); mosquitto sends
    // the old context's will when a clean-start connection takes its client id over.
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (s, c) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(s, c.conn_id, Some((will("bye"), secs(30))), None, t0);
    let (res, _c) = connect_with(&mut r, "dev", true, HOUR, 32);
    assert!(res.discarded);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["bye"]);
    r.tick(t0 + secs(60));
    assert!(
        drain(&mut r, w, wc.conn_id, t0).is_empty(),
        "published once"
    );
}

#[test]
fn a_delayed_will_of_a_connection_whose_session_was_discarded_is_published_at_once() {
    // The old connection still holds its will when a clean-start newcomer takes the client id
    // over; the session it belonged to has ended, so the delay ends with it.
    let t0 = Instant::now();
    let mut r = router();
    let (w, wc) = will_watcher(&mut r, t0);
    let (old, c_old) = connect(&mut r, "dev", false, HOUR);
    let (res, _c_new) = connect_with(&mut r, "dev", true, HOUR, 32);
    assert!(res.discarded);
    r.disconnect(old, c_old.conn_id, Some((will("late"), secs(30))), None, t0);
    assert_eq!(drained_payloads(&mut r, w, wc.conn_id, t0), ["late"]);
    assert_eq!(r.sizes().connected, 2, "the newcomer stays connected");
}

#[test]
fn a_wills_message_expiry_starts_when_the_will_is_published() {
    // MQTT 5.0 §3.1.3.2.4: the will's Message Expiry Interval runs from its publication.
    let t0 = Instant::now();
    let mut r = router();
    let (early, ec) = connect(&mut r, "early", true, Duration::ZERO);
    let (late, lc) = connect(&mut r, "late", true, Duration::ZERO);
    sub(&mut r, early, "will/#", QoS::AtLeastOnce, t0);
    sub(&mut r, late, "will/#", QoS::AtLeastOnce, t0);
    let mut m = (*will("expiring")).clone();
    m.properties.message_expiry_interval = Some(10);
    let (s, c) = connect(&mut r, "dev", false, HOUR);
    r.disconnect(s, c.conn_id, Some((Arc::new(m), secs(5))), None, t0);
    r.tick(t0 + secs(5));
    assert_eq!(
        drained_payloads(&mut r, early, ec.conn_id, t0 + secs(14)),
        ["expiring"]
    );
    assert!(drain(&mut r, late, lc.conn_id, t0 + secs(15)).is_empty());
    assert_eq!(r.counters().dropped_expired, 1);
}

#[test]
fn a_pending_will_counts_as_held_bytes_and_fires_at_once_when_they_are_full() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_queued_bytes_total: 2 * (6 + 100 + 128),
        ..config()
    });
    let (w, wc) = connect(&mut r, "watcher", false, HOUR);
    sub(&mut r, w, "will/#", QoS::AtLeastOnce, t0);
    let mut held = Vec::new();
    for n in 0..3 {
        let (s, c) = connect(&mut r, &format!("dev-{n}"), false, HOUR);
        let will = msg(
            &format!("will/{n}"),
            &"x".repeat(100),
            QoS::AtLeastOnce,
            false,
            None,
        );
        r.disconnect(
            s,
            c.conn_id,
            Some((will, Duration::from_secs(60))),
            None,
            t0,
        );
        held.push(r.held_bytes_total());
    }
    // Two wills wait for their delay, each counted; the third would pass the cap and is
    // published now, reaching whoever has room: not the watcher, whose queue counts against
    // the same full total (a bridge would still take it).
    assert_eq!(held[0], 6 + 100 + 128);
    assert_eq!(held[1], 2 * (6 + 100 + 128));
    assert_eq!(held[2], held[1]);
    assert_eq!(r.counters().messages_routed, 1);
    assert_eq!(r.counters().dropped_queue_full, 1);
    assert!(drained_payloads(&mut r, w, wc.conn_id, t0).is_empty());
    // When the delays end, the two held wills go out and free their bytes.
    r.tick(t0 + Duration::from_secs(61));
    assert_eq!(r.counters().messages_routed, 3);
}
