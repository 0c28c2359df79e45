//! `$SYS` statistics and listener counters, the `$SYS` write ban, and the broker's bounds:
//! `max_connections`, the inflight window with the session queue, and the retained store.
//!
//! Driven with the mosquitto clients and a bare MQTT 5 client (rumqttc's packet types over a
//! plain socket) where the test must not acknowledge, must see DUP flags or reason codes.

use holdfast_tests::raw5::Raw;
use holdfast_tests::{free_port, mosquitto_pub, Gateway, MosquittoSub};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish};
use rumqttc::v5::mqttbytes::QoS;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A 3.1.1 CONNECT with clean session, `keepalive` seconds and client id `id`.
fn connect_311(id: &str, keepalive: u16) -> Vec<u8> {
    let mut v = vec![
        0x10,
        (12 + id.len()) as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        2,
    ];
    v.extend_from_slice(&keepalive.to_be_bytes());
    v.extend_from_slice(&(id.len() as u16).to_be_bytes());
    v.extend_from_slice(id.as_bytes());
    v
}

/// Opens a 3.1.1 connection and reads its CONNACK; `None` if the broker closed it instead.
fn try_connect_311(port: u16, id: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A refused socket may already be closed: a failed write then shows as EOF below.
    let _ = s.write_all(&connect_311(id, 60));
    let mut ack = [0u8; 4];
    match s.read_exact(&mut ack) {
        Ok(()) => {
            assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
            Some(s)
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            None
        }
        Err(e) => panic!("neither CONNACK nor close: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// $SYS.

/// The latest value `sub` saw on `prefix/name`.
fn latest(sub: &MosquittoSub, prefix: &str, name: &str) -> Option<u64> {
    let topic = format!("{prefix}/{name} ");
    sub.messages().iter().rev().find_map(|l| {
        l.strip_prefix(&topic)
            .map(|v| v.trim().parse().expect("a number"))
    })
}

/// Waits until the latest value of `name` satisfies `ok`; returns it.
fn wait_value(sub: &MosquittoSub, prefix: &str, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = latest(sub, prefix, name);
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}/{name} stayed at {v:?}; saw:\n{}",
            sub.messages().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const STATS: &str = "$SYS/brokers/gw-test/stats";
const SHUTDOWN: &str = "$SYS/brokers/gw-test/listeners/tcp:default/shutdown_count";

#[test]
fn sys_stats_are_published_every_interval_with_sane_values() {
    let gw = Gateway::start_with_mqtt("sys_interval = \"1s\"");
    let sub = MosquittoSub::start(gw.port, &format!("{STATS}/#"), &["-v"]);
    // The subscriber itself is a connection and a session.
    let conns = wait_value(&sub, STATS, "connections/count", |v| v >= 1);
    assert!(conns <= 3, "connections/count = {conns}");
    let sessions = wait_value(&sub, STATS, "sessions/count", |v| v >= 1);
    assert!(sessions <= 3, "sessions/count = {sessions}");
    wait_value(&sub, STATS, "uptime_seconds", |_| true);
    wait_value(&sub, STATS, "messages/sent", |_| true);

    let received = wait_value(&sub, STATS, "messages/received", |_| true);
    for i in 0..3 {
        assert!(mosquitto_pub(
            gw.port,
            "stats/x",
            &i.to_string(),
            &["-q", "1"]
        ));
    }
    let now = wait_value(&sub, STATS, "messages/received", |v| v >= received + 3);
    assert_eq!(now, received + 3, "three PUBLISHes received");
    let routed = wait_value(&sub, STATS, "messages/routed", |v| v >= 3);
    assert!(routed >= 3);
}

#[test]
fn listener_shutdown_counts_go_up_for_normal_keepalive_timeout_and_frame_too_large() {
    let gw = Gateway::start_with_mqtt("sys_interval = \"1s\"\nmax_packet_size = \"1KB\"");
    let sub = MosquittoSub::start(gw.port, &format!("{SHUTDOWN}/#"), &["-v"]);
    let normal = wait_value(&sub, SHUTDOWN, "normal", |_| true);
    wait_value(&sub, SHUTDOWN, "keepalive_timeout", |v| v == 0);
    wait_value(&sub, SHUTDOWN, "frame_too_large", |v| v == 0);

    // A clean DISCONNECT.
    assert!(mosquitto_pub(gw.port, "x", "y", &[]));
    // A client that goes silent with a 1 s keepalive.
    let mut silent = TcpStream::connect(gw.addr()).unwrap();
    silent.write_all(&connect_311("silent", 1)).unwrap();
    // A PUBLISH over the 1 KB limit.
    let mut big = TcpStream::connect(gw.addr()).unwrap();
    big.write_all(&connect_311("big", 60)).unwrap();
    let mut publish = vec![0x30, 0x89, 0x20, 0, 1, b't'];
    publish.resize(3 + 0x1009, b'x');
    let _ = big.write_all(&publish);

    wait_value(&sub, SHUTDOWN, "normal", |v| v > normal);
    wait_value(&sub, SHUTDOWN, "keepalive_timeout", |v| v == 1);
    wait_value(&sub, SHUTDOWN, "frame_too_large", |v| v == 1);
    drop(silent);
}

#[test]
fn clients_may_not_publish_to_sys_topics() {
    let gw = Gateway::start();
    let fake = "$SYS/brokers/gw-test/fake";
    let sub = MosquittoSub::start(gw.port, &format!("{fake}/#"), &["-v", "-t", "marker"]);
    let (mut c, _) = Raw::connect_with_expiry(gw.port, "sys-writer", true, 0);
    for (pkid, retain) in [(1, false), (2, true)] {
        let mut p = Publish::new(format!("{fake}/x"), QoS::AtLeastOnce, "spoof", None);
        p.pkid = pkid;
        p.retain = retain;
        c.send(Packet::Publish(p));
        match c.expect(WAIT) {
            Packet::PubAck(ack) => assert_eq!(ack.reason, PubAckReason::NotAuthorized),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert!(mosquitto_pub(gw.port, "marker", "m", &["-q", "1"]));
    assert_eq!(sub.wait_for(1, WAIT), vec!["marker m"], "nothing routed");
    // Nor was the retained one stored.
    let late = MosquittoSub::start(gw.port, &format!("{fake}/#"), &["-v", "-t", "marker"]);
    assert!(mosquitto_pub(gw.port, "marker", "m2", &["-q", "1"]));
    assert_eq!(late.wait_for(1, WAIT), vec!["marker m2"]);
}

// ---------------------------------------------------------------------------------------------
// Bounds.

#[test]
fn a_listener_refuses_connections_over_max_connections_until_one_closes() {
    let port = free_port();
    let config = format!(
        r#"
[node]
name = "gw-test"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"
max_connections = 5

[auth]
allow_anonymous = true
"#
    );
    let gw = Gateway::start_config(&config, port);
    let mut open: Vec<TcpStream> = (0..5)
        .map(|i| {
            try_connect_311(gw.port, &format!("mc-{i}"))
                .unwrap_or_else(|| panic!("connection {i} of 5 refused"))
        })
        .collect();
    let started = Instant::now();
    assert!(
        try_connect_311(gw.port, "mc-6").is_none(),
        "the 6th connection is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    assert!(gw.wait_for_log("max_connections", WAIT), "{}", gw.log());

    let mut first = open.remove(0);
    first.write_all(&[0xE0, 0x00]).unwrap();
    drop(first);
    let deadline = Instant::now() + WAIT;
    let again = loop {
        if let Some(s) = try_connect_311(gw.port, "mc-again") {
            break s;
        }
        assert!(Instant::now() < deadline, "a freed slot is never reused");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop((open, again));
}

#[test]
fn a_subscriber_that_never_acks_holds_max_inflight_and_gets_them_again_with_dup_before_the_newest_queued(
) {
    let gw = Gateway::start_with_mqtt(
        "max_inflight = 5\nmax_mqueue_len = 10\nmqueue_full = \"drop_oldest\"",
    );
    let (mut sub, _) = Raw::connect_with_expiry(gw.port, "nack", false, 300);
    sub.subscribe_one("inf/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect_with_expiry(gw.port, "inf-pub", true, 0);
    let payloads: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();

    // The first five fill the window while the subscriber is connected.
    publisher.publish_all("inf/t", &payloads[..5], 1, false);
    let mut inflight = Vec::new();
    for _ in 0..5 {
        let p = sub.next_publish(WAIT).expect("a publish within the window");
        assert!(!p.dup);
        inflight.push(p);
    }
    let got: Vec<String> = inflight.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, payloads[..5]);

    // The other 95 overflow the 10-message queue.
    publisher.publish_all("inf/t", &payloads[5..], 6, false);
    assert!(
        sub.next_publish(Duration::from_millis(500)).is_none(),
        "no sixth unacknowledged publish"
    );
    assert!(
        gw.wait_for_log("dropped: mqueue full", WAIT),
        "{}",
        gw.log()
    );
    sub.disconnect();

    let (mut sub, ack) = Raw::connect_with_expiry(gw.port, "nack", false, 300);
    assert!(ack.session_present);
    for want in &inflight {
        let p = sub
            .next_publish(WAIT)
            .expect("the unacknowledged publishes again");
        assert!(p.dup, "resent with DUP: {p:?}");
        assert_eq!((p.pkid, text(&p.payload)), (want.pkid, text(&want.payload)));
        sub.ack(&p);
    }
    let mut queued = Vec::new();
    while queued.len() < 10 {
        let p = sub
            .next_publish(WAIT)
            .unwrap_or_else(|| panic!("stalled after {queued:?}"));
        assert!(!p.dup, "{p:?}");
        queued.push(text(&p.payload));
        sub.ack(&p);
    }
    assert_eq!(queued, payloads[90..], "the 10 newest, in order");
    assert!(sub.next_publish(Duration::from_millis(300)).is_none());
}

#[test]
fn the_retained_store_keeps_at_most_max_retained_messages_topics() {
    let gw = Gateway::start_with_mqtt("max_retained_messages = 3");
    for i in 1..=4 {
        assert!(mosquitto_pub(
            gw.port,
            &format!("r/{i}"),
            &format!("v{i}"),
            &["-r", "-q", "1"]
        ));
    }
    let retained = |gw: &Gateway| {
        let sub = MosquittoSub::start(gw.port, "#", &["-v"]);
        let mut got = sub.wait_for(4, Duration::from_secs(1));
        got.sort();
        got
    };
    assert_eq!(retained(&gw), vec!["r/1 v1", "r/2 v2", "r/3 v3"]);
    assert!(gw.log().contains("retained message not stored"));

    // A full store still takes a new value for a stored topic, and a cleared topic frees a slot.
    assert!(mosquitto_pub(gw.port, "r/1", "v1b", &["-r", "-q", "1"]));
    assert!(mosquitto_pub(gw.port, "r/2", "", &["-r", "-q", "1"]));
    assert!(mosquitto_pub(gw.port, "r/4", "v4b", &["-r", "-q", "1"]));
    assert_eq!(retained(&gw), vec!["r/1 v1b", "r/3 v3", "r/4 v4b"]);
}
