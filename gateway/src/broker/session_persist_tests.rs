//! Unit tests of session persistence through the router: no sockets, no disk, time passed in.
//!
//! Each test drives a [`Router`] with a [`MemoryStore`] attached the way the gateway does:
//! router calls, then [`Router::take_session_writes`] + [`SessionWrites::apply`] where the
//! flusher task would run, and a "restart" is a fresh router attached to the same store. They
//! check what the store holds and what a client sees after the restart.

use super::message::*;
use super::router::*;
use super::session::*;
use super::session_persist::SessionWrites;
use bytes::Bytes;
use holdfast_mqtt::{reason, ByteStr, PacketId, PublishProperties, QoS, SubscriptionOptions};
use holdfast_storage::kv::{
    KvBackend, KvError, MemoryStore, PendingState, SessionStore, StoredMessage, StoredPending,
    StoredProperties, StoredSession, StoredSubscription,
};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// The router tests' limits and policies.
fn config() -> RouterConfig {
    super::router::test_support::config()
}

/// A router attached to `store`, as the gateway builds it at start.
fn started(store: &MemoryStore, now: Instant) -> (Router, usize) {
    let mut r = Router::new(config());
    let restored = r.attach_session_store(store, now);
    (r, restored)
}

/// What the flusher task does every period.
fn flush(r: &mut Router, store: &dyn SessionStore, now: Instant) -> u64 {
    r.take_session_writes(now).apply(store)
}

fn connect(
    r: &mut Router,
    client_id: &str,
    clean_start: bool,
    expiry: Duration,
    now: Instant,
) -> (ConnectResult, Arc<ConnControl>) {
    let (mut params, conn) =
        crate::broker::router::test_support::connect_params(client_id, clean_start, expiry);
    params.now = now;
    (
        r.connect(params).expect("the router accepts this CONNECT"),
        conn,
    )
}

fn sub(r: &mut Router, sid: SessionId, filter: &str, qos: QoS, id: Option<u32>, now: Instant) {
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let reasons = r.subscribe(
        sid,
        &[(ByteStr::from(filter), options)],
        id.and_then(NonZeroU32::new),
        now,
    );
    assert_eq!(reasons, [qos as u8]);
}

fn msg(topic: &str, payload: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message::new(
        topic,
        Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        false,
        PublishProperties::default(),
        Origin::BROKER,
    ))
}

/// (payload, packet id, dup) of each PUBLISH drained; "PUBREL n" for a PUBREL.
fn drain(
    r: &mut Router,
    sid: SessionId,
    conn_id: u64,
    now: Instant,
) -> Vec<(String, PacketId, bool)> {
    let mut out = Vec::new();
    r.take_outgoing(sid, conn_id, 10_000, now, &mut out);
    out.into_iter()
        .map(|o| match o {
            Outgoing::Publish {
                delivery,
                packet_id,
                dup,
            } => (
                String::from_utf8_lossy(&delivery.message.payload).into_owned(),
                packet_id,
                dup,
            ),
            Outgoing::PubRel(id) => (format!("PUBREL {id}"), id, false),
        })
        .collect()
}

fn payloads(v: &[(String, PacketId, bool)]) -> Vec<String> {
    v.iter().map(|(p, _, _)| p.clone()).collect()
}

fn stored_payloads(store: &MemoryStore, client_id: &str) -> Vec<String> {
    store
        .load_pending(client_id)
        .unwrap()
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p.message.payload).into_owned())
        .collect()
}

/// A persistent subscriber on `t` at `qos` that has gone offline.
fn offline_subscriber(r: &mut Router, client_id: &str, qos: QoS, now: Instant) -> SessionId {
    let (res, conn) = connect(r, client_id, false, HOUR, now);
    sub(r, res.session_id, "t", qos, None, now);
    r.disconnect(res.session_id, conn.conn_id, None, None, now);
    res.session_id
}

#[test]
fn queued_messages_of_a_persistent_session_come_back_in_order_after_a_restart() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, restored) = started(&store, t0);
    assert_eq!(restored, 0);
    offline_subscriber(&mut r, "sub", QoS::AtLeastOnce, t0);
    let sent: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for p in &sent {
        r.publish(msg("t", p, QoS::AtLeastOnce), t0);
    }
    assert_eq!(flush(&mut r, &store, t0), 0);
    assert_eq!(stored_payloads(&store, "sub"), sent);
    drop(r);

    let t1 = t0 + Duration::from_secs(5);
    let (mut r, restored) = started(&store, t1);
    assert_eq!(restored, 1);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t1);
    assert!(res.session_present);
    let got = drain(&mut r, res.session_id, conn.conn_id, t1);
    assert_eq!(
        payloads(&got),
        sent[..32].to_vec(),
        "the window of 32 first"
    );
    assert!(got.iter().all(|(_, _, dup)| !dup));
}

#[test]
fn subscriptions_with_their_options_come_back_and_route_without_resubscribing() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    let sid = res.session_id;
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: 2,
    };
    r.subscribe(
        sid,
        &[(ByteStr::from("a/+"), options)],
        NonZeroU32::new(7),
        t0,
    );
    sub(&mut r, sid, "$share/g/b/#", QoS::AtLeastOnce, None, t0);
    sub(&mut r, sid, "gone", QoS::AtLeastOnce, None, t0);
    assert_eq!(
        r.unsubscribe(sid, &[ByteStr::from("gone")]),
        [reason::SUCCESS]
    );
    r.disconnect(sid, conn.conn_id, None, None, t0);
    flush(&mut r, &store, t0);

    let stored = store.load_sessions().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].subscriptions,
        vec![
            StoredSubscription {
                filter: "$share/g/b/#".into(),
                qos: 1,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
                subscription_id: None,
            },
            StoredSubscription {
                filter: "a/+".into(),
                qos: 2,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
                subscription_id: Some(7),
            },
        ]
    );
    assert!(stored[0].disconnected_at_unix_ms.is_some());

    let (mut r, _) = started(&store, t0);
    assert_eq!(r.publish(msg("a/x", "plain", QoS::ExactlyOnce), t0), 1);
    assert_eq!(r.publish(msg("b/y", "shared", QoS::AtLeastOnce), t0), 1);
    assert_eq!(r.publish(msg("gone", "no", QoS::AtLeastOnce), t0), 0);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    let mut out = Vec::new();
    r.take_outgoing(res.session_id, conn.conn_id, 100, t0, &mut out);
    let ids: Vec<_> = out
        .iter()
        .map(|o| match o {
            Outgoing::Publish { delivery, .. } => (
                String::from_utf8_lossy(&delivery.message.payload).into_owned(),
                delivery.qos,
                delivery.subscription_id.map(NonZeroU32::get),
            ),
            Outgoing::PubRel(_) => panic!("no PUBREL expected"),
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("plain".to_string(), QoS::ExactlyOnce, Some(7)),
            ("shared".to_string(), QoS::AtLeastOnce, None)
        ]
    );
    assert_eq!(
        r.subscriptions_of("sub"),
        vec![
            (
                "$share/g/b/#".to_string(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                }
            ),
            ("a/+".to_string(), options),
        ]
    );
}

#[test]
fn inflight_deliveries_are_resent_with_dup_and_their_packet_ids_after_a_restart() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    let sid = res.session_id;
    sub(&mut r, sid, "t", QoS::ExactlyOnce, None, t0);
    r.publish(msg("t", "q1-acked", QoS::AtLeastOnce), t0);
    r.publish(msg("t", "q1-unacked", QoS::AtLeastOnce), t0);
    r.publish(msg("t", "q2-pubrec", QoS::ExactlyOnce), t0);
    r.publish(msg("t", "q2-unacked", QoS::ExactlyOnce), t0);
    r.publish(msg("t", "queued", QoS::AtLeastOnce), t0);
    flush(&mut r, &store, t0);
    let mut out = Vec::new();
    r.take_outgoing(sid, conn.conn_id, 4, t0, &mut out);
    assert_eq!(out.len(), 4);
    assert!(r.puback(sid, PacketId::new(1)));
    assert!(r.pubrec(sid, PacketId::new(3), reason::SUCCESS));
    // Connected: nothing is written until a flush finds a delivery still unacknowledged that
    // the previous flush had already seen inflight.
    flush(&mut r, &store, t0);
    assert!(store.load_pending("sub").unwrap().is_empty());
    flush(&mut r, &store, t0);
    let states: Vec<_> = store
        .load_pending("sub")
        .unwrap()
        .into_iter()
        .map(|p| (p.packet_id, p.state))
        .collect();
    assert_eq!(
        states,
        [
            (Some(2), PendingState::AwaitPubAck),
            (Some(3), PendingState::AwaitPubComp),
            (Some(4), PendingState::AwaitPubRec),
        ]
    );
    drop(r); // a crash: the connection never said goodbye; its queue was not written

    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    assert!(res.session_present);
    let got = drain(&mut r, res.session_id, conn.conn_id, t0);
    assert_eq!(
        got,
        [
            ("q1-unacked".to_string(), PacketId::new(2), true),
            ("PUBREL 3".to_string(), PacketId::new(3), false),
            ("q2-unacked".to_string(), PacketId::new(4), true),
        ]
    );
}

#[test]
fn a_connected_sessions_queue_is_written_when_it_disconnects() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    let sid = res.session_id;
    sub(&mut r, sid, "t", QoS::AtLeastOnce, None, t0);
    for i in 0..3 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce), t0);
    }
    let mut out = Vec::new();
    r.take_outgoing(sid, conn.conn_id, 1, t0, &mut out);
    flush(&mut r, &store, t0);
    assert!(store.load_pending("sub").unwrap().is_empty());
    r.disconnect(sid, conn.conn_id, None, None, t0);
    flush(&mut r, &store, t0);
    let stored: Vec<_> = store
        .load_pending("sub")
        .unwrap()
        .into_iter()
        .map(|p| (p.seq, p.packet_id, p.state))
        .collect();
    assert_eq!(
        stored,
        [
            (1, Some(1), PendingState::AwaitPubAck),
            (2, None, PendingState::Queued),
            (3, None, PendingState::Queued),
        ]
    );
}

#[test]
fn acknowledged_messages_leave_the_store_and_ones_acked_within_a_period_never_reach_it() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    let sid = res.session_id;
    sub(&mut r, sid, "t", QoS::AtLeastOnce, None, t0);
    flush(&mut r, &store, t0);

    // Queued, sent and acknowledged between two flushes: nothing to write.
    r.publish(msg("t", "fast", QoS::AtLeastOnce), t0);
    for (_, pid, _) in drain(&mut r, sid, conn.conn_id, t0) {
        assert!(r.puback(sid, pid));
    }
    let writes = r.take_session_writes(t0);
    assert!(writes.is_empty(), "{writes:?}");

    // Unacknowledged over two flushes: written; then acknowledged: removed at the next flush.
    r.publish(msg("t", "slow", QoS::AtLeastOnce), t0);
    let sent = drain(&mut r, sid, conn.conn_id, t0);
    flush(&mut r, &store, t0);
    flush(&mut r, &store, t0);
    assert_eq!(stored_payloads(&store, "sub"), ["slow"]);
    assert!(r.puback(sid, sent[0].1));
    flush(&mut r, &store, t0);
    assert!(stored_payloads(&store, "sub").is_empty());
}

#[test]
fn clean_sessions_and_qos0_are_never_written() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "clean", true, Duration::ZERO, t0);
    sub(&mut r, res.session_id, "t", QoS::AtLeastOnce, None, t0);
    let persistent = offline_subscriber(&mut r, "persistent", QoS::AtMostOnce, t0);
    r.publish(msg("t", "x", QoS::AtLeastOnce), t0);
    flush(&mut r, &store, t0);
    let sessions: Vec<_> = store
        .load_sessions()
        .unwrap()
        .into_iter()
        .map(|s| s.client_id)
        .collect();
    assert_eq!(sessions, ["persistent"]);
    assert!(stored_payloads(&store, "persistent").is_empty());
    assert!(stored_payloads(&store, "clean").is_empty());
    r.disconnect(res.session_id, conn.conn_id, None, None, t0);
    let _ = persistent;
}

#[test]
fn a_full_queue_drops_the_oldest_from_the_store_too() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let mut r = Router::new(RouterConfig {
        max_mqueue_len: 3,
        ..config()
    });
    r.attach_session_store(&store, t0);
    offline_subscriber(&mut r, "sub", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "0", QoS::AtLeastOnce), t0);
    flush(&mut r, &store, t0);
    for i in 1..6 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce), t0);
    }
    flush(&mut r, &store, t0);
    assert_eq!(stored_payloads(&store, "sub"), ["3", "4", "5"]);
    assert_eq!(r.counters().dropped_queue_full, 3);
}

#[test]
fn session_expiry_and_clean_start_remove_the_stored_session() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "short", false, Duration::from_secs(10), t0);
    sub(&mut r, res.session_id, "t", QoS::AtLeastOnce, None, t0);
    r.disconnect(res.session_id, conn.conn_id, None, None, t0);
    offline_subscriber(&mut r, "discarded", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "x", QoS::AtLeastOnce), t0);
    flush(&mut r, &store, t0);
    assert_eq!(store.load_sessions().unwrap().len(), 2);

    assert_eq!(
        r.tick(t0 + Duration::from_secs(11)),
        [ClientId::from("short")]
    );
    let (res, _conn) = connect(&mut r, "discarded", true, Duration::ZERO, t0);
    assert!(!res.session_present);
    flush(&mut r, &store, t0);
    assert!(store.load_sessions().unwrap().is_empty());
    assert!(stored_payloads(&store, "short").is_empty());
    assert!(stored_payloads(&store, "discarded").is_empty());
}

#[test]
fn a_v5_disconnect_with_zero_expiry_or_a_resume_without_expiry_removes_the_stored_session() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "a", false, HOUR, t0);
    flush(&mut r, &store, t0);
    r.disconnect(res.session_id, conn.conn_id, None, Some(Duration::ZERO), t0);
    let (res, _conn) = connect(&mut r, "b", false, HOUR, t0);
    flush(&mut r, &store, t0);
    assert_eq!(store.load_sessions().unwrap().len(), 1);
    let (res2, _conn2) = connect(&mut r, "b", false, Duration::ZERO, t0);
    assert_eq!(res2.session_id, res.session_id);
    flush(&mut r, &store, t0);
    assert!(store.load_sessions().unwrap().is_empty());
}

fn stored_session(
    client_id: &str,
    expiry_secs: u32,
    disconnected_ago: Option<u64>,
) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        protocol_level: 4,
        expiry_secs,
        disconnected_at_unix_ms: disconnected_ago
            .map(|ago| crate::clock::frame_now_ms() - ago * 1000),
        subscriptions: vec![StoredSubscription {
            filter: "t".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        }],
        awaiting_rel: Vec::new(),
        pending_will: None,
        owner: None,
    }
}

fn stored_pending(
    seq: u64,
    payload: &str,
    qos: u8,
    state: PendingState,
    packet_id: Option<u16>,
) -> StoredPending {
    StoredPending {
        seq,
        message: StoredMessage {
            topic: "t".into(),
            payload: payload.as_bytes().to_vec(),
            qos,
            retain: false,
            properties: StoredProperties::default(),
        },
        qos,
        packet_id,
        state,
        subscription_id: None,
        more_subscription_ids: Vec::new(),
    }
}

#[test]
fn a_session_that_expired_while_the_gateway_was_down_is_not_restored_and_is_removed() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    store
        .put_session(&stored_session("old", 60, Some(61)))
        .unwrap();
    store
        .push_pending(
            "old",
            &stored_pending(1, "x", 1, PendingState::Queued, None),
        )
        .unwrap();
    store
        .put_session(&stored_session("young", 60, Some(30)))
        .unwrap();
    let (mut r, restored) = started(&store, t0);
    assert_eq!(restored, 1);
    assert_eq!(r.sizes().sessions, 1);
    flush(&mut r, &store, t0);
    let left: Vec<_> = store
        .load_sessions()
        .unwrap()
        .into_iter()
        .map(|s| s.client_id)
        .collect();
    assert_eq!(left, ["young"]);
    assert!(stored_payloads(&store, "old").is_empty());
    // The young one has about 30 s left, counted from its disconnect, not from the restart.
    assert!(r.tick(t0 + Duration::from_secs(25)).is_empty());
    assert_eq!(
        r.tick(t0 + Duration::from_secs(31)),
        [ClientId::from("young")]
    );
}

#[test]
fn a_session_connected_at_the_crash_expires_counting_from_the_restart() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    store
        .put_session(&stored_session("was-up", 60, None))
        .unwrap();
    let (mut r, restored) = started(&store, t0);
    assert_eq!(restored, 1);
    flush(&mut r, &store, t0);
    // Its disconnect time is the restart now, so a second crash does not restart the clock.
    let s = &store.load_sessions().unwrap()[0];
    assert!(s.disconnected_at_unix_ms.is_some());
    assert!(r.tick(t0 + Duration::from_secs(59)).is_empty());
    assert_eq!(
        r.tick(t0 + Duration::from_secs(60)),
        [ClientId::from("was-up")]
    );
}

#[test]
fn odd_stored_records_are_skipped_without_panicking() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let mut bad_level = stored_session("bad-level", 60, Some(0));
    bad_level.protocol_level = 9;
    store.put_session(&bad_level).unwrap();
    let mut s = stored_session("odd", 60, Some(0));
    s.subscriptions.push(StoredSubscription {
        filter: "q".into(),
        qos: 7,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        subscription_id: Some(0),
    });
    store.put_session(&s).unwrap();
    for p in [
        stored_pending(1, "qos0", 0, PendingState::Queued, None),
        stored_pending(2, "no-packet-id", 1, PendingState::AwaitPubAck, None),
        stored_pending(3, "wrong-state", 1, PendingState::AwaitPubComp, Some(9)),
        stored_pending(4, "bad-qos", 3, PendingState::Queued, None),
        stored_pending(5, "fine", 2, PendingState::AwaitPubRec, Some(5)),
    ] {
        store.push_pending("odd", &p).unwrap();
    }
    let (mut r, restored) = started(&store, t0);
    assert_eq!(restored, 1);
    let (res, conn) = connect(&mut r, "odd", false, HOUR, t0);
    assert!(res.session_present);
    let got = drain(&mut r, res.session_id, conn.conn_id, t0);
    assert_eq!(
        got,
        [
            ("fine".to_string(), PacketId::new(5), true),
            ("no-packet-id".to_string(), PacketId::new(6), false),
            ("wrong-state".to_string(), PacketId::new(7), false),
        ]
    );
    assert_eq!(r.subscriptions_of("odd").len(), 1);
    flush(&mut r, &store, t0);
    assert!(store
        .load_sessions()
        .unwrap()
        .iter()
        .all(|s| s.client_id != "bad-level"));
}

/// A store whose writes all fail, as on a full disk.
#[derive(Debug, Default)]
struct FailingStore;

impl KvBackend for FailingStore {
    fn flush(&self) -> Result<(), KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn corrupt_records_skipped(&self) -> u64 {
        0
    }
}

impl SessionStore for FailingStore {
    fn put_session(&self, _: &StoredSession) -> Result<(), KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn remove_session(&self, _: &str) -> Result<(), KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn load_sessions(&self) -> Result<Vec<StoredSession>, KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn push_pending(&self, _: &str, _: &StoredPending) -> Result<(), KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn update_pending_state(
        &self,
        _: &str,
        _: u64,
        _: PendingState,
        _: Option<u16>,
    ) -> Result<bool, KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn remove_pending(&self, _: &str, _: u64) -> Result<(), KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
    fn load_pending(&self, _: &str) -> Result<Vec<StoredPending>, KvError> {
        Err(KvError::InvalidOption("disk full"))
    }
}

#[test]
fn store_failures_are_counted_and_the_broker_keeps_routing() {
    let t0 = Instant::now();
    let store = FailingStore;
    let mut r = Router::new(config());
    assert_eq!(r.attach_session_store(&store, t0), 0);
    assert_eq!(r.counters().session_store_errors, 1);
    let sid = offline_subscriber(&mut r, "sub", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "x", QoS::AtLeastOnce), t0);
    let writes: SessionWrites = r.take_session_writes(t0);
    let errors = writes.apply(&store);
    // remove (fresh start) + session + one pending
    assert_eq!(errors, 3);
    r.count_session_store_errors(errors);
    assert_eq!(r.counters().session_store_errors, 4);
    let (res, conn) = connect(&mut r, "sub", false, HOUR, t0);
    assert_eq!(res.session_id, sid);
    assert_eq!(payloads(&drain(&mut r, sid, conn.conn_id, t0)), ["x"]);
}

#[test]
fn without_a_store_nothing_is_journaled() {
    let t0 = Instant::now();
    let mut r = Router::new(config());
    offline_subscriber(&mut r, "sub", QoS::AtLeastOnce, t0);
    r.publish(msg("t", "x", QoS::AtLeastOnce), t0);
    assert!(r.take_session_writes(t0).is_empty());
}

#[test]
fn qos2_ids_awaiting_pubrel_and_a_delayed_will_survive_a_restart() {
    let store = MemoryStore::default();
    let t0 = Instant::now();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "dev", false, HOUR, t0);
    let sid = res.session_id;
    assert_eq!(r.receive_qos2(sid, PacketId::new(7), 100), Qos2Receive::New);
    assert_eq!(r.receive_qos2(sid, PacketId::new(8), 100), Qos2Receive::New);
    assert!(r.pubrel(sid, PacketId::new(8)));
    let will = msg("wills/dev", "gone", QoS::AtLeastOnce);
    r.disconnect(
        sid,
        conn.conn_id,
        Some((will, Duration::from_secs(600))),
        None,
        t0,
    );
    flush(&mut r, &store, t0);
    let stored = store.load_sessions().unwrap();
    assert_eq!(stored[0].awaiting_rel, vec![7]);
    assert!(stored[0].pending_will.is_some());

    // Restart: the resend of 7 is a duplicate, 8 is new; the will still waits for its delay.
    let (mut r, restored) = started(&store, t0);
    assert_eq!(restored, 1);
    let (res, _conn) = connect(&mut r, "watcher", true, Duration::ZERO, t0);
    sub(
        &mut r,
        res.session_id,
        "wills/#",
        QoS::AtLeastOnce,
        None,
        t0,
    );
    let (back, _c) = connect(&mut r, "dev", false, HOUR, t0);
    assert_eq!(
        r.receive_qos2(back.session_id, PacketId::new(7), 100),
        Qos2Receive::Duplicate
    );
    assert_eq!(
        r.receive_qos2(back.session_id, PacketId::new(8), 100),
        Qos2Receive::New
    );
    // The resume cancelled the will: it is not published, and not stored any more.
    r.tick(t0 + Duration::from_secs(601));
    flush(&mut r, &store, t0);
    assert!(store.load_sessions().unwrap()[0].pending_will.is_none());
}

#[test]
fn a_delayed_will_due_while_the_gateway_was_down_is_published_after_the_restart() {
    let store = MemoryStore::default();
    let t0 = Instant::now();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "dev", false, HOUR, t0);
    let will = msg("wills/dev", "gone", QoS::AtLeastOnce);
    r.disconnect(
        res.session_id,
        conn.conn_id,
        Some((will, Duration::from_secs(1))),
        None,
        t0,
    );
    flush(&mut r, &store, t0);
    let mut stored = store.load_sessions().unwrap();
    // As if the gateway had been down for longer than the delay.
    if let Some(w) = stored[0].pending_will.as_mut() {
        w.publish_at_unix_ms -= 5_000;
    }
    store.put_session(&stored[0]).unwrap();
    let (mut r, _) = started(&store, t0);
    let (w, wc) = connect(&mut r, "watcher", true, Duration::ZERO, t0);
    sub(&mut r, w.session_id, "wills/#", QoS::AtLeastOnce, None, t0);
    r.tick(t0);
    assert_eq!(
        payloads(&drain(&mut r, w.session_id, wc.conn_id, t0)),
        ["gone"]
    );
}

#[test]
fn one_copy_for_overlapping_subscriptions_keeps_all_its_identifiers_across_a_restart() {
    let t0 = Instant::now();
    let store = MemoryStore::new();
    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "ov", false, HOUR, t0);
    let sid = res.session_id;
    sub(&mut r, sid, "o/#", QoS::AtLeastOnce, Some(3), t0);
    sub(&mut r, sid, "o/+", QoS::AtLeastOnce, Some(8), t0);
    r.disconnect(sid, conn.conn_id, None, None, t0);
    r.publish(msg("o/t", "m", QoS::AtLeastOnce), t0);
    flush(&mut r, &store, t0);
    drop(r);

    let (mut r, _) = started(&store, t0);
    let (res, conn) = connect(&mut r, "ov", false, HOUR, t0);
    let mut out = Vec::new();
    r.take_outgoing(res.session_id, conn.conn_id, 100, t0, &mut out);
    let [Outgoing::Publish { delivery, .. }] = &out[..] else {
        panic!("one copy: {out:?}");
    };
    let mut ids: Vec<u32> = delivery.subscription_ids().map(NonZeroU32::get).collect();
    ids.sort_unstable();
    assert_eq!(ids, [3, 8]);
}
