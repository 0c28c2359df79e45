//! Unit tests of the router's sans-IO core: no sockets, time passed in.
//!
//! Each test drives a [`Router`] the way a connection task would: `connect`, `subscribe`,
//! `publish`, `take_outgoing` (through [`drain`]), the acks, `disconnect` and `tick(now)`, and
//! checks what a client would see. Tests marked `#[ignore = "bug: ..."]` state the correct
//! behaviour (MQTT 5.0, or EMQX / mosquitto where the specification leaves room) and fail today.

use crate::broker::message::*;
use crate::broker::router::test_support::*;
use crate::broker::router::*;
use crate::broker::session::*;
use crate::config::OwnerMismatch;
use holdfast_mqtt::{reason, ByteStr, PacketId, QoS};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

#[test]
fn a_publish_reaches_every_matching_session_and_no_other() {
    let t0 = Instant::now();
    let mut r = router();
    let (plus, c_plus) = connect(&mut r, "plus", true, Duration::ZERO);
    let (hash, c_hash) = connect(&mut r, "hash", true, Duration::ZERO);
    let (exact, c_exact) = connect(&mut r, "exact", true, Duration::ZERO);
    let (root, c_root) = connect(&mut r, "root", true, Duration::ZERO);
    let (other, c_other) = connect(&mut r, "other", true, Duration::ZERO);
    let (sys, c_sys) = connect(&mut r, "sys", true, Duration::ZERO);
    assert_eq!(sub(&mut r, plus, "a/+/c", QoS::AtMostOnce, t0), 0);
    assert_eq!(sub(&mut r, hash, "a/#", QoS::AtLeastOnce, t0), 1);
    assert_eq!(sub(&mut r, exact, "a/b/c", QoS::ExactlyOnce, t0), 2);
    assert_eq!(sub(&mut r, root, "#", QoS::AtMostOnce, t0), 0);
    assert_eq!(sub(&mut r, other, "a/b", QoS::AtMostOnce, t0), 0);
    assert_eq!(sub(&mut r, sys, "$SYS/#", QoS::AtMostOnce, t0), 0);

    assert_eq!(
        r.publish(msg("a/b/c", "1", QoS::ExactlyOnce, false, None), t0),
        4
    );
    let got = |r: &mut Router, sid, c: &ConnControl| drained_payloads(r, sid, c.conn_id, t0);
    assert_eq!(got(&mut r, plus, &c_plus), ["1"]);
    assert_eq!(got(&mut r, hash, &c_hash), ["1"]);
    assert_eq!(got(&mut r, exact, &c_exact), ["1"]);
    assert_eq!(got(&mut r, root, &c_root), ["1"]);
    assert!(got(&mut r, other, &c_other).is_empty());
    assert!(got(&mut r, sys, &c_sys).is_empty());

    // `#` matches its parent level; `+` needs exactly one level.
    assert_eq!(
        r.publish(msg("a", "2", QoS::AtMostOnce, false, None), t0),
        2
    );
    assert_eq!(got(&mut r, hash, &c_hash), ["2"]);
    assert_eq!(got(&mut r, root, &c_root), ["2"]);
    assert!(got(&mut r, plus, &c_plus).is_empty());

    // A `$` topic is not matched by a leading wildcard (MQTT 5.0 §4.7.2), only by `$SYS/#`.
    assert_eq!(
        r.publish(msg("$SYS/x", "3", QoS::AtMostOnce, false, None), t0),
        1
    );
    assert!(got(&mut r, root, &c_root).is_empty());
    assert_eq!(got(&mut r, sys, &c_sys), ["3"]);

    assert_eq!(
        r.publish(msg("$nobody/here", "4", QoS::AtMostOnce, false, None), t0),
        0
    );
    assert_eq!(r.counters().dropped_no_subscribers, 1);
    assert_eq!(r.counters().messages_routed, 4);
}

#[test]
fn a_delivery_gets_the_lower_of_the_published_and_the_subscribed_qos() {
    let t0 = Instant::now();
    let mut r = router();
    let (s0, c0) = connect(&mut r, "q0", true, Duration::ZERO);
    let (s2, c2) = connect(&mut r, "q2", true, Duration::ZERO);
    sub(&mut r, s0, "t", QoS::AtMostOnce, t0);
    sub(&mut r, s2, "t", QoS::ExactlyOnce, t0);
    r.publish(msg("t", "x", QoS::ExactlyOnce, false, None), t0);
    r.publish(msg("t", "y", QoS::AtLeastOnce, false, None), t0);
    let low = publishes(&drain(&mut r, s0, c0.conn_id, t0));
    let high = publishes(&drain(&mut r, s2, c2.conn_id, t0));
    assert_eq!(
        low.iter().map(|s| (s.qos, s.packet_id)).collect::<Vec<_>>(),
        [
            (QoS::AtMostOnce, PacketId::NONE),
            (QoS::AtMostOnce, PacketId::NONE)
        ]
    );
    assert_eq!(
        high.iter().map(|s| s.qos).collect::<Vec<_>>(),
        [QoS::ExactlyOnce, QoS::AtLeastOnce]
    );
    assert!(high.iter().all(|s| s.packet_id != PacketId::NONE));
}

// ---------------------------------------------------------------------------------------------
// Wake-ups, sizes, memory
// ---------------------------------------------------------------------------------------------

#[test]
fn an_enqueue_wakes_a_connection_once_until_it_drains() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "s", false, HOUR);
    let (off, offc) = connect(&mut r, "off", false, HOUR);
    sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
    sub(&mut r, off, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, off, &offc, t0);
    assert!(r.take_wakeups().is_empty());
    for i in 0..10 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    let wake = r.take_wakeups();
    assert_eq!(
        wake.len(),
        1,
        "one wake-up for ten messages, none for the offline session"
    );
    assert!(Arc::ptr_eq(&wake[0], &c));
    r.publish(msg("t", "more", QoS::AtLeastOnce, false, None), t0);
    assert!(
        r.take_wakeups().is_empty(),
        "still pending: not drained yet"
    );

    // A drain by another connection id does not count.
    drain(&mut r, s, offc.conn_id, t0);
    r.publish(msg("t", "more", QoS::AtLeastOnce, false, None), t0);
    assert!(r.take_wakeups().is_empty());

    drain(&mut r, s, c.conn_id, t0);
    r.publish(msg("t", "after", QoS::AtLeastOnce, false, None), t0);
    let wake = r.take_wakeups();
    assert_eq!(wake.len(), 1);
    assert!(Arc::ptr_eq(&wake[0], &c));
}

#[test]
fn sizes_counts_sessions_connections_subscriptions_retained_queued_and_inflight() {
    let t0 = Instant::now();
    let mut r = router();
    assert_eq!(r.sizes(), RouterSizes::default());
    let (a, ac) = connect_with(&mut r, "a", false, HOUR, 2);
    let a = a.session_id;
    let (b, _bc) = connect(&mut r, "b", false, HOUR);
    let (c, cc) = connect(&mut r, "c", false, HOUR);
    sub(&mut r, a, "t", QoS::AtLeastOnce, t0);
    sub(&mut r, a, "u/#", QoS::AtLeastOnce, t0);
    sub(&mut r, b, "$share/g/t", QoS::AtLeastOnce, t0);
    sub(&mut r, c, "$queue/t", QoS::AtLeastOnce, t0);
    sub(&mut r, c, "t", QoS::AtLeastOnce, t0);
    disconnect(&mut r, c, &cc, t0);
    r.publish(msg("r1", "x", QoS::AtMostOnce, true, None), t0);
    r.publish(msg("r2", "x", QoS::AtMostOnce, true, None), t0);
    for i in 0..5 {
        r.publish(msg("t", &i.to_string(), QoS::AtLeastOnce, false, None), t0);
    }
    drain(&mut r, a, ac.conn_id, t0);
    assert_eq!(
        r.sizes(),
        RouterSizes {
            sessions: 3,
            connected: 2,
            subscriptions: 5,
            // "t", "u/#", "$share/g/t", "$queue/t", "t": 23 bytes, 64 more each.
            subscription_bytes: 23 + 5 * 64,
            retained: 2,
            // a: 3 of 5 left after 2 went inflight; b: 5 as the only member of $share/g;
            // c (offline): 5 on its plain subscription plus 5 as the only member of $queue.
            queued: 3 + 5 + 10,
            inflight: 2,
        }
    );
}

#[test]
fn a_message_queued_for_many_offline_sessions_is_stored_once() {
    // message.rs:3-4: "a fan-out to N subscribers costs N small `Delivery` values, never N
    // payload copies". `enqueue` calls `Message::detached` once per offline session; detaching
    // once per publish and sharing that `Arc` keeps the read buffer unpinned without the copies.
    let t0 = Instant::now();
    let mut r = router();
    let mut subs = Vec::new();
    for i in 0..3 {
        let (s, c) = connect(&mut r, &format!("s{i}"), false, HOUR);
        sub(&mut r, s, "t", QoS::AtLeastOnce, t0);
        disconnect(&mut r, s, &c, t0);
        subs.push(s);
    }
    r.publish(
        msg("t", "a large payload", QoS::AtLeastOnce, false, None),
        t0,
    );
    let mut messages = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        let (_, c) = connect(&mut r, &format!("s{i}"), false, HOUR);
        match drain(&mut r, *s, c.conn_id, t0).pop() {
            Some(Outgoing::Publish { delivery, .. }) => messages.push(delivery.message),
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
    assert!(messages.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
}

#[test]
fn close_all_closes_every_connected_session_with_the_reason() {
    let mut r = router();
    let (_, a) = connect(&mut r, "a", true, Duration::ZERO);
    let (_, b) = connect(&mut r, "b", true, Duration::ZERO);
    r.close_all(reason::SERVER_SHUTTING_DOWN);
    for c in [a, b] {
        assert!(c.is_closing());
        assert_eq!(
            c.close_reason.load(Ordering::Relaxed),
            reason::SERVER_SHUTTING_DOWN
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property: per-(publisher, topic) order and no loss of QoS >= 1 across reconnects
// ---------------------------------------------------------------------------------------------

mod ordering_property {
    //! A subscriber with a persistent session, a small window and a flaky link. What the router
    //! hands out goes onto a wire; the client reads a prefix of it whenever it likes, and a
    //! disconnect loses whatever was still on the wire. The client checks each PUBLISH as it
    //! reads it and answers with PUBACK / PUBREC / PUBCOMP in any order.

    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Publish {
            publisher: usize,
            topic: usize,
            qos: u8,
        },
        /// The connection takes what the session has ready and writes it to the wire.
        Drain,
        /// The client reads up to `n` packets off the wire.
        Read { n: usize },
        /// The client answers one of the packets it owes (chosen by `pick`).
        Answer { pick: usize },
        /// Disconnect (losing the wire) or reconnect with clean start = false.
        ToggleConnection,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..3usize, 0..2usize, 0..3u8)
                .prop_map(|(publisher, topic, qos)| Op::Publish { publisher, topic, qos }),
            3 => Just(Op::Drain),
            3 => (1..6usize).prop_map(|n| Op::Read { n }),
            4 => any::<usize>().prop_map(|pick| Op::Answer { pick }),
            1 => Just(Op::ToggleConnection),
        ]
    }

    /// A packet the client owes the broker.
    #[derive(Debug, Clone, Copy)]
    enum Owed {
        /// PUBACK for a QoS 1 PUBLISH.
        Ack(u16),
        /// PUBREC for a QoS 2 PUBLISH.
        Rec(u16),
        /// PUBCOMP for a PUBREL.
        Comp(u16),
    }

    /// The subscriber as a well-behaved MQTT client, checking what it reads.
    struct Client {
        sid: SessionId,
        conn: Option<Arc<ConnControl>>,
        window: usize,
        /// Sent by the router, not yet read by the client.
        wire: VecDeque<Outgoing>,
        owed: Vec<Owed>,
        /// Highest sequence read per (publisher, topic).
        last: HashMap<(usize, usize), u64>,
        seen: HashSet<(usize, usize, u64)>,
    }

    impl Client {
        fn read(&mut self, n: usize) -> Result<(), TestCaseError> {
            for _ in 0..n {
                let Some(o) = self.wire.pop_front() else {
                    return Ok(());
                };
                match o {
                    Outgoing::PubRel(id) => self.owed.push(Owed::Comp(id.get())),
                    Outgoing::Publish {
                        delivery,
                        packet_id,
                        dup,
                    } => {
                        let text = String::from_utf8_lossy(&delivery.message.payload).into_owned();
                        let mut parts = text.split(':').map(|p| p.parse::<u64>().unwrap());
                        let (p, t, seq) = (
                            parts.next().unwrap() as usize,
                            parts.next().unwrap() as usize,
                            parts.next().unwrap(),
                        );
                        prop_assert_eq!(delivery.qos, delivery.message.qos);
                        if self.seen.contains(&(p, t, seq)) {
                            prop_assert!(dup, "{} read twice without DUP", text);
                        } else {
                            let last = self.last.get(&(p, t)).copied();
                            prop_assert!(
                                last.is_none_or(|l| seq > l),
                                "{} after {:?}: out of order",
                                text,
                                last
                            );
                            self.last.insert((p, t), seq);
                            self.seen.insert((p, t, seq));
                        }
                        match delivery.qos {
                            QoS::AtMostOnce => prop_assert_eq!(packet_id, PacketId::NONE),
                            QoS::AtLeastOnce => self.owed.push(Owed::Ack(packet_id.get())),
                            QoS::ExactlyOnce => self.owed.push(Owed::Rec(packet_id.get())),
                        }
                    }
                }
            }
            Ok(())
        }

        fn answer(&mut self, r: &mut Router, index: usize) -> Result<(), TestCaseError> {
            match self.owed.remove(index) {
                Owed::Ack(id) => {
                    prop_assert!(r.puback(self.sid, PacketId::new(id)), "puback {}", id)
                }
                Owed::Rec(id) => {
                    prop_assert!(
                        r.pubrec(self.sid, PacketId::new(id), reason::SUCCESS),
                        "pubrec {}",
                        id
                    );
                    // The connection answers PUBREL at once; the client then owes PUBCOMP.
                    self.owed.push(Owed::Comp(id));
                }
                Owed::Comp(id) => {
                    prop_assert!(r.pubcomp(self.sid, PacketId::new(id)), "pubcomp {}", id)
                }
            }
            Ok(())
        }

        /// Returns whether anything was written to the wire.
        fn drain(&mut self, r: &mut Router, now: Instant) -> Result<bool, TestCaseError> {
            let Some(conn) = &self.conn else {
                return Ok(false);
            };
            let out = drain(r, self.sid, conn.conn_id, now);
            let inflight = r.sizes().inflight;
            prop_assert!(
                inflight <= self.window,
                "{} inflight, window {}",
                inflight,
                self.window
            );
            let any = !out.is_empty();
            self.wire.extend(out);
            Ok(any)
        }
    }

    fn run(window: usize, store_qos0: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let now = Instant::now();
        let mut r = Router::new(RouterConfig {
            max_mqueue_len: 100_000,
            mqueue_store_qos0: store_qos0,
            ..config()
        });
        let publishers: Vec<SessionId> = (0..3)
            .map(|i| connect(&mut r, &format!("pub{i}"), true, Duration::ZERO).0)
            .collect();
        let (res, conn) = connect_with(&mut r, "sub", false, HOUR, window);
        let mut client = Client {
            sid: res.session_id,
            conn: Some(conn),
            window,
            wire: VecDeque::new(),
            owed: Vec::new(),
            last: HashMap::new(),
            seen: HashSet::new(),
        };
        prop_assert_eq!(sub(&mut r, client.sid, "t/+", QoS::ExactlyOnce, now), 2);

        let topics = ["t/a", "t/b"];
        let mut next_seq: HashMap<(usize, usize), u64> = HashMap::new();
        let mut must_arrive = Vec::new();
        for op in ops {
            match op {
                Op::Publish {
                    publisher,
                    topic,
                    qos,
                } => {
                    let seq = next_seq.entry((publisher, topic)).or_insert(0);
                    *seq += 1;
                    let qos = QoS::from_u8(qos).unwrap();
                    let payload = format!("{publisher}:{topic}:{seq}");
                    let m = msg(
                        topics[topic],
                        &payload,
                        qos,
                        false,
                        Some(publishers[publisher]),
                    );
                    let queued = r.publish(m, now);
                    if qos != QoS::AtMostOnce {
                        prop_assert_eq!(queued, 1);
                        must_arrive.push((publisher, topic, *seq));
                    }
                }
                Op::Drain => {
                    client.drain(&mut r, now)?;
                }
                Op::Read { n } => client.read(n)?,
                Op::Answer { pick } => {
                    if client.conn.is_some() && !client.owed.is_empty() {
                        let index = pick % client.owed.len();
                        client.answer(&mut r, index)?;
                    }
                }
                Op::ToggleConnection => match client.conn.take() {
                    Some(conn) => {
                        disconnect(&mut r, client.sid, &conn, now);
                        // Unread packets die with the connection; so do answers not yet sent.
                        client.wire.clear();
                        client.owed.clear();
                    }
                    None => {
                        let (res, conn) = connect_with(&mut r, "sub", false, HOUR, window);
                        prop_assert!(res.session_present);
                        prop_assert_eq!(res.session_id, client.sid);
                        client.conn = Some(conn);
                    }
                },
            }
        }

        // Settle on a good link: connect if needed, then drain, read and answer until quiet.
        if client.conn.is_none() {
            let (_, conn) = connect_with(&mut r, "sub", false, HOUR, window);
            client.conn = Some(conn);
        }
        for _ in 0..100_000 {
            client.read(usize::MAX)?;
            while !client.owed.is_empty() {
                client.answer(&mut r, 0)?;
            }
            if !client.drain(&mut r, now)? {
                break;
            }
        }
        for key in must_arrive {
            prop_assert!(client.seen.contains(&key), "lost {:?}", key);
        }
        let sizes = r.sizes();
        prop_assert_eq!((sizes.queued, sizes.inflight), (0, 0));
        Ok(())
    }

    proptest! {
        #[test]
        fn one_publishers_messages_on_one_topic_arrive_in_order_and_none_acknowledged_is_lost(
            window in 1usize..=4,
            store_qos0 in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            run(window, store_qos0, ops)?;
        }
    }
}

#[test]
fn kick_closes_only_that_connection_with_administrative_action() {
    let mut r = router();
    let (_a, ca) = connect(&mut r, "a", true, Duration::ZERO);
    let (_b, cb) = connect(&mut r, "b", true, Duration::ZERO);
    assert!(r.kick("a"));
    assert!(ca.is_closing());
    assert_eq!(
        ca.close_reason.load(Ordering::Relaxed),
        reason::ADMINISTRATIVE_ACTION
    );
    assert!(!cb.is_closing());
    assert!(!r.kick("a"), "already closing");
    assert!(!r.kick("nobody"));
}

#[test]
fn operator_listings_are_sorted_and_cut_at_the_limit() {
    let t0 = Instant::now();
    let mut r = router();
    for id in ["c", "a", "b"] {
        let (sid, _c) = connect(&mut r, id, true, Duration::ZERO);
        sub(&mut r, sid, &format!("t/{id}"), QoS::AtLeastOnce, t0);
        r.publish(
            msg(&format!("t/{id}"), "xyz", QoS::AtMostOnce, true, None),
            t0,
        );
    }
    let (page, total) = search_clients(r.client_keys(), "", 0, 2);
    let clients = r.client_rows(&page);
    let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(total, 3);
    assert_eq!(clients[0].subscriptions, 1);
    assert_eq!(clients[0].protocol, 5);
    // A search: one match in all; a page past the end is empty.
    let (page, total) = search_clients(r.client_keys(), "C", 0, 10);
    assert_eq!(
        (r.client_rows(&page)[0].client_id.as_str(), total),
        ("c", 1)
    );
    let (page, total) = search_clients(r.client_keys(), "", 5, 10);
    assert_eq!((page.len(), total), (0, 3));

    let subs = r.subscriptions_all(10);
    assert!(!subs.truncated);
    assert_eq!(subs.rows.len(), 3);
    assert_eq!(subs.rows[2].filter, "t/c");
    assert_eq!(subs.rows[2].qos, 1);

    let retained = r.retained_list(1);
    assert_eq!(retained.rows[0].topic, "t/a");
    assert_eq!(retained.rows[0].payload_size, 3);
    assert!(retained.truncated);
    assert_eq!(r.client_info("b").map(|c| c.connected), Some(true));
    assert!(r.client_info("z").is_none());
}

fn connect_as(
    r: &mut Router,
    client_id: &str,
    owner: Owner,
    clean_start: bool,
    policy: OwnerMismatch,
) -> (Result<ConnectResult, ConnectRefusal>, Arc<ConnControl>) {
    let (mut params, conn) = connect_params(client_id, clean_start, HOUR);
    params.owner = owner;
    params.on_owner_mismatch = policy;
    (r.connect(params), conn)
}

#[test]
fn a_session_belongs_to_the_identity_that_created_it() {
    let t0 = Instant::now();
    let mut r = router();
    let bob = || Owner::User(ByteStr::from("bob"));
    let alice = || Owner::User(ByteStr::from("alice"));
    let (res, conn) = connect_as(&mut r, "bob-sensor", bob(), false, OwnerMismatch::Refuse);
    let res = res.expect("bob creates his session");
    sub(&mut r, res.session_id, "users/bob/#", QoS::AtLeastOnce, t0);
    disconnect(&mut r, res.session_id, &conn, t0);
    r.publish(
        msg("users/bob/cmd", "unlock", QoS::AtLeastOnce, false, None),
        t0,
    );
    // Alice knows the client id: refused, with or without clean start, and nothing changes.
    for clean in [false, true] {
        let (denied, _) = connect_as(&mut r, "bob-sensor", alice(), clean, OwnerMismatch::Refuse);
        assert_eq!(denied.err(), Some(ConnectRefusal::NotOwner));
    }
    // Anonymous is another identity too.
    let (denied, _) = connect_as(
        &mut r,
        "bob-sensor",
        Owner::Anonymous,
        false,
        OwnerMismatch::Refuse,
    );
    assert_eq!(denied.err(), Some(ConnectRefusal::NotOwner));
    // Bob resumes and gets his command.
    let (back, bc) = connect_as(&mut r, "bob-sensor", bob(), false, OwnerMismatch::Refuse);
    let back = back.expect("bob resumes");
    assert!(back.session_present);
    assert_eq!(
        drained_payloads(&mut r, back.session_id, bc.conn_id, t0),
        ["unlock"]
    );
    // An anonymous session cannot lock a verified user out of its client id (squatting): the
    // user starts afresh, without what the squatter left there.
    let (squat, sc) = connect_as(
        &mut r,
        "carol-meter",
        Owner::Anonymous,
        false,
        OwnerMismatch::Refuse,
    );
    let squat = squat.expect("the squatter gets a session");
    sub(&mut r, squat.session_id, "#", QoS::AtLeastOnce, t0);
    disconnect(&mut r, squat.session_id, &sc, t0);
    let carol = || Owner::User(ByteStr::from("carol"));
    let (mine, _) = connect_as(&mut r, "carol-meter", carol(), false, OwnerMismatch::Refuse);
    let mine = mine.expect("carol is not locked out");
    assert!(!mine.session_present && mine.discarded);
    // ...and the other way round stays refused.
    let (back, _) = connect_as(
        &mut r,
        "carol-meter",
        Owner::Anonymous,
        false,
        OwnerMismatch::Refuse,
    );
    assert_eq!(back.err(), Some(ConnectRefusal::NotOwner));
    // Under `discard`, alice gets a fresh session of her own; bob's is gone.
    let (fresh, _) = connect_as(&mut r, "bob-sensor", alice(), false, OwnerMismatch::Discard);
    let fresh = fresh.expect("discard gives alice a fresh session");
    assert!(!fresh.session_present && fresh.discarded);
    assert_eq!(
        r.subscription_filters(fresh.session_id),
        Vec::<ByteStr>::new()
    );
}

#[test]
fn retained_bytes_sessions_and_queued_bytes_are_capped() {
    let t0 = Instant::now();
    // Retained: 20 bytes in all (topic + payload).
    let mut r = Router::new(RouterConfig {
        max_retained_bytes: 20,
        ..config()
    });
    r.publish(msg("r/a", "0123456789", QoS::AtMostOnce, true, None), t0); // 13 bytes
    r.publish(msg("r/b", "0123456789", QoS::AtMostOnce, true, None), t0); // +13: refused
    assert_eq!(r.counters().dropped_retained_full, 1);
    r.publish(msg("r/a", "", QoS::AtMostOnce, true, None), t0); // cleared: room again
    r.publish(msg("r/b", "0123456789", QoS::AtMostOnce, true, None), t0);
    assert_eq!(r.counters().dropped_retained_full, 1);
    assert_eq!(r.sizes().retained, 1);

    // Sessions: two at most; a third client is refused, a returning one is not.
    let mut r = Router::new(RouterConfig {
        max_sessions: 2,
        ..config()
    });
    let (a, ac) = connect(&mut r, "a", false, HOUR);
    connect(&mut r, "b", false, HOUR);
    let (third, _) = try_connect_with(&mut r, "c", true, Duration::ZERO, 32);
    assert_eq!(third.err(), Some(ConnectRefusal::TooManySessions));
    disconnect(&mut r, a, &ac, t0);
    let (back, _) = connect_with(&mut r, "a", false, HOUR, 32);
    assert!(back.session_present);

    // Queued bytes: each 1,000-byte delivery holds ~1,130 bytes; 3,000 hold two of them.
    let mut r = Router::new(RouterConfig {
        max_mqueue_bytes: 3_000,
        ..config()
    });
    let (s, c) = connect(&mut r, "slow", false, HOUR);
    sub(&mut r, s, "big", QoS::AtLeastOnce, t0);
    disconnect(&mut r, s, &c, t0);
    let body = "x".repeat(1000);
    for _ in 0..5 {
        r.publish(msg("big", &body, QoS::AtLeastOnce, false, None), t0);
    }
    assert_eq!(r.sizes().queued, 2);
    assert_eq!(r.counters().dropped_queue_full, 3);
}

#[test]
fn all_sessions_together_hold_at_most_max_queued_bytes_total() {
    let t0 = Instant::now();
    let mut r = Router::new(RouterConfig {
        max_queued_bytes_total: 5_000,
        ..config()
    });
    let mut subs = Vec::new();
    for id in ["a", "b"] {
        let (s, c) = connect(&mut r, id, false, HOUR);
        sub(&mut r, s, "big", QoS::AtLeastOnce, t0);
        disconnect(&mut r, s, &c, t0);
        subs.push(s);
    }
    let body = "x".repeat(1000);
    for _ in 0..5 {
        r.publish(msg("big", &body, QoS::AtLeastOnce, false, None), t0);
    }
    // ~1,130 bytes a delivery: four fit in 5,000, the other six are dropped and counted.
    assert_eq!(r.sizes().queued, 4);
    assert_eq!(r.counters().dropped_queue_full, 6);
    assert!(r.held_bytes_total() <= 5_000);
    // Sessions that leave give their bytes back.
    for id in ["a", "b"] {
        let (res, c) = connect_with(&mut r, id, true, Duration::ZERO, 32);
        disconnect(&mut r, res.session_id, &c, t0);
    }
    assert_eq!(r.held_bytes_total(), 0);
}

#[test]
fn the_queued_bytes_total_returns_to_zero_when_everything_is_delivered() {
    let t0 = Instant::now();
    let mut r = router();
    let (s, c) = connect(&mut r, "s", false, HOUR);
    sub(&mut r, s, "t", QoS::ExactlyOnce, t0);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        r.publish(msg("t", &i.to_string(), qos, false, None), t0);
    }
    assert!(r.held_bytes_total() > 0);
    for sent in publishes(&drain(&mut r, s, c.conn_id, t0)) {
        ack(&mut r, s, &sent);
    }
    assert_eq!(r.held_bytes_total(), 0);
}
