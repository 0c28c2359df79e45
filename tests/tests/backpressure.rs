//! Flow control instead of loss: with the default config, a QoS 1 message the gateway
//! PUBACKed is never dropped because a local subscriber is slow. The publishers are held back
//! instead; a subscriber that stops altogether is disconnected after
//! `mqtt.slow_subscriber_timeout` and pays alone; `mqueue_full = "drop_oldest"` keeps the
//! EMQX/mosquitto behaviour. Real binary, rumqttc devices and subscribers, a raw MQTT 5 client
//! for the stuck subscriber.

use holdfast_tests::ctl::{ctl_json, socket};
use holdfast_tests::raw5::Raw;
use holdfast_tests::{free_port, test_config, Gateway, QosDevice};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a subscriber got: per topic, the payloads (sequence numbers) in arrival order.
type Got = Arc<Mutex<BTreeMap<String, Vec<u64>>>>;

/// A QoS 1 subscriber to `filter` that acknowledges each message only after `pause`
/// (every `every` messages): a consumer slower than the publishers.
async fn slow_subscriber(
    port: u16,
    client_id: &str,
    filter: &str,
    pause: Duration,
    every: usize,
    stop: Arc<AtomicBool>,
) -> Got {
    let got: Got = Arc::default();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_manual_acks(true);
    // The acks go through rumqttc's request channel, which this same task drains by polling:
    // it must hold a whole inflight window (up to mqtt.max_inflight) of them.
    let (client, mut ev) = AsyncClient::new(o, 4096);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let out = got.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let seq = String::from_utf8_lossy(&p.payload)
                        .parse()
                        .unwrap_or(u64::MAX);
                    out.lock()
                        .unwrap()
                        .entry(p.topic.clone())
                        .or_default()
                        .push(seq);
                    n += 1;
                    if n.is_multiple_of(every) {
                        tokio::time::sleep(pause).await;
                    }
                    if client.ack(&p).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => panic!("slow subscriber lost its connection: {e}"),
            }
        }
    });
    // Subscribed before anyone publishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    got
}

/// `devices` QoS 1 publishers on `load/{i}`, `count` messages each, as fast as their
/// inflight window lets them; returns what the gateway PUBACKed, per topic.
async fn publish_all(port: u16, devices: usize, count: u64) -> BTreeMap<String, Vec<u64>> {
    let mut runs = Vec::new();
    for i in 0..devices {
        let dev = QosDevice::new(port, &format!("pub-{i}"), &format!("load/{i}"));
        runs.push(tokio::spawn(async move {
            let run = dev.run(0..count, |seq| seq.to_string().into_bytes()).await;
            (dev.topic, run)
        }));
    }
    let mut acked = BTreeMap::new();
    for r in runs {
        let (topic, run) = r.await.expect("device task");
        assert!(run.error.is_none(), "{topic}: {:?}", run.error);
        acked.insert(topic, run.acked);
    }
    acked
}

/// Every acknowledged message arrived, once each time it was sent and in order per publisher.
fn assert_nothing_acknowledged_lost(acked: &BTreeMap<String, Vec<u64>>, got: &Got) {
    let got = got.lock().unwrap();
    for (topic, seqs) in acked {
        let arrived = got.get(topic).cloned().unwrap_or_default();
        let unique: BTreeSet<u64> = arrived.iter().copied().collect();
        let missing: Vec<u64> = seqs
            .iter()
            .filter(|s| !unique.contains(s))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{topic}: {} acknowledged messages never arrived (first {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(
            arrived.windows(2).all(|w| w[0] < w[1]),
            "{topic}: out of order or duplicated"
        );
    }
}

fn wait_for_total(got: &Got, want: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n: usize = got.lock().unwrap().values().map(Vec::len).sum();
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stat(sock: &std::path::PathBuf, key: &str) -> u64 {
    let stats = ctl_json(sock, &["stats"]);
    stats["stats"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_defaults_a_slow_subscriber_holds_publishers_back_and_loses_nothing() {
    let gw = Gateway::start();
    let sock = socket(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    // About 5,000 messages a second at most: far slower than 20 publishers.
    let got = slow_subscriber(
        gw.port,
        "slow",
        "load/#",
        Duration::from_millis(1),
        5,
        stop.clone(),
    )
    .await;
    let acked = publish_all(gw.port, 20, 400).await;
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total, 20 * 400, "every message was acknowledged");
    let arrived = wait_for_total(&got, total, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(arrived, total, "log:\n{}", gw.log());
    assert_nothing_acknowledged_lost(&acked, &got);
    assert_eq!(stat(&sock, "messages/dropped/mqueue_full"), 0);
    assert!(
        stat(&sock, "messages/held_back") > 0,
        "the publishers were faster than the subscriber: backpressure must have engaged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_is_disconnected_and_the_publishers_and_others_go_on() {
    let port = free_port();
    let config = test_config(port, "slow_subscriber_timeout = \"1s\"");
    let gw = Gateway::start_config(&config, port);
    let sock = socket(&gw);
    // Reads but never acknowledges: its window fills, then its queue.
    let (mut stuck, _) = Raw::connect_with_expiry(port, "stuck", false, 600);
    stuck.subscribe_one("load/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    let stop = Arc::new(AtomicBool::new(false));
    let fast = slow_subscriber(
        port,
        "fast",
        "load/#",
        Duration::ZERO,
        usize::MAX,
        stop.clone(),
    )
    .await;

    let publishers = tokio::spawn(publish_all(port, 5, 3000));
    let code = tokio::task::spawn_blocking(move || stuck.closed_within(Duration::from_secs(20)))
        .await
        .expect("reader");
    assert_eq!(
        code.map(|c| c as u8),
        Some(0x97),
        "the stuck subscriber hears quota exceeded; log:\n{}",
        gw.log()
    );
    let acked = tokio::time::timeout(Duration::from_secs(60), publishers)
        .await
        .expect("the publishers go on once the stuck subscriber is gone")
        .expect("publishers");
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total, 5 * 3000);
    let arrived = wait_for_total(&fast, total, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(arrived, total, "the other subscriber got everything");
    assert_nothing_acknowledged_lost(&acked, &fast);

    assert_eq!(stat(&sock, "clients/slow_subscribers_disconnected"), 1);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("slow subscriber disconnected") && l.contains("stuck")),
        "the log names the slow subscriber:\n{log}"
    );
    // Its persistent session kept a full queue; what it dropped since is counted and named.
    assert!(stat(&sock, "messages/dropped/mqueue_full") > 0);
    assert!(
        log.lines()
            .any(|l| l.contains("dropped: mqueue full") && l.contains("stuck")),
        "the drops name the client:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_emqx_and_mosquitto_behaviour() {
    let port = free_port();
    let config = test_config(port, "mqueue_full = \"drop_oldest\"");
    let gw = Gateway::start_config(&config, port);
    let sock = socket(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    let got = slow_subscriber(
        port,
        "slow",
        "load/#",
        Duration::from_millis(1),
        5,
        stop.clone(),
    )
    .await;
    let acked = publish_all(port, 20, 400).await;
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total, 20 * 400);
    // Wait until the subscriber has taken what is left.
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let n: usize = got.lock().unwrap().values().map(Vec::len).sum();
        if n == last {
            break;
        }
        last = n;
    }
    stop.store(true, Ordering::Relaxed);
    let dropped = stat(&sock, "messages/dropped/mqueue_full");
    assert!(dropped > 0, "the queue dropped its oldest");
    assert_eq!(stat(&sock, "messages/held_back"), 0);
    assert_eq!(
        last as u64 + dropped,
        total as u64,
        "each message arrived or was counted as dropped"
    );
}

#[test]
fn a_held_back_client_that_says_goodbye_has_its_last_words_applied_in_order() {
    use rumqttc::v5::mqttbytes::v5::{
        ConnectProperties, Disconnect, DisconnectReasonCode, LastWill, Packet as P5, Publish,
    };
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let port = free_port();
    let gw = Gateway::start_config(&test_config(port, ""), port);
    // Never acknowledges: 32 in its window, then its queue of 1,000 fills.
    let (mut stuck, _) = Raw::connect_with_expiry(port, "stuck", true, 0);
    stuck.subscribe_one("eof/data", Q5::AtLeastOnce);
    let mut watch = Raw::connected(port, "watch");
    watch.subscribe_one("eof/#", Q5::AtMostOnce);
    let will = LastWill::new("eof/will", "gone", Q5::AtMostOnce, false, None);
    let (mut publisher, _) =
        Raw::connect(port, "leaver", true, ConnectProperties::new(), Some(will));
    // QoS 1 messages one at a time until one gets no PUBACK (held back), then forty more
    // without waiting, a last QoS 0 one, a normal DISCONNECT, and the socket closed with
    // nothing left unread (so the close is a FIN, not a reset): what mosquitto_pub does.
    let publish = |id: u32| {
        let mut p = Publish::new("eof/data", Q5::AtLeastOnce, format!("m{id}"), None);
        p.pkid = (id % 60_000 + 1) as u16;
        P5::Publish(p)
    };
    let mut sent = 0u32;
    let mut got = Vec::new();
    let held = loop {
        sent += 1;
        publisher.send(publish(sent));
        match publisher.read(Duration::from_millis(300)) {
            Ok(P5::PubAck(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break true,
        }
        // Keep the watcher's socket drained meanwhile.
        while let Some(p) = watch.next_publish(Duration::ZERO) {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        if sent > 3000 {
            break false;
        }
    };
    assert!(
        held,
        "held back by the stuck subscriber; log:\n{}",
        gw.log()
    );
    for id in sent + 1..=sent + 40 {
        publisher.send(publish(id));
    }
    let total = sent + 40;
    publisher.send(P5::Publish(Publish::new(
        "eof/data",
        Q5::AtMostOnce,
        "last",
        None,
    )));
    publisher.send(P5::Disconnect(Disconnect::new(
        DisconnectReasonCode::NormalDisconnection,
    )));
    drop(publisher);

    let want_len = total as usize + 1;
    let rest = watch.publishes(want_len - got.len(), Duration::from_secs(10));
    got.extend(
        rest.iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned()),
    );
    let mut want: Vec<String> = (1..=total).map(|i| format!("m{i}")).collect();
    want.push("last".into());
    assert_eq!(got.len(), want.len(), "log:\n{}", gw.log());
    assert_eq!(got, want);
    assert!(
        watch.next_publish(Duration::from_millis(500)).is_none(),
        "a normal DISCONNECT publishes no will"
    );
    drop(stuck);
}

#[test]
fn many_one_shot_publishers_into_a_stuck_subscriber_lose_nothing_acknowledged() {
    // Each publisher sends one message and is done: holding it back stops nothing more from
    // it, so a full queue takes one message past its limit from every one of them (bounded by
    // the connections and `max_queued_bytes_total`) instead of dropping acknowledged ones.
    let port = free_port();
    let config = test_config(
        port,
        "max_mqueue_len = 5\nmax_inflight = 4\nslow_subscriber_timeout = \"30s\"",
    );
    let gw = Gateway::start_config(&config, port);
    let sock = socket(&gw);
    let (mut stuck, _) = Raw::connect_with_expiry(port, "stuck", true, 0);
    stuck.subscribe_one("once/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    const PUBLISHERS: usize = 60;
    for i in 0..PUBLISHERS {
        let mut p = Raw::connected(port, &format!("once-{i}"));
        let mut publish = rumqttc::v5::mqttbytes::v5::Publish::new(
            format!("once/{i}"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            i.to_string(),
            None,
        );
        publish.pkid = 1;
        assert_eq!(
            p.publish_qos1(publish),
            rumqttc::v5::mqttbytes::v5::PubAckReason::Success
        );
        p.disconnect();
    }
    // Every acknowledged message reaches the subscriber once it reads and acknowledges.
    let mut seen = BTreeSet::new();
    while let Some(p) = stuck.next_publish(Duration::from_secs(3)) {
        stuck.ack(&p);
        seen.insert(String::from_utf8_lossy(&p.topic).into_owned());
    }
    assert_eq!(seen.len(), PUBLISHERS, "got {seen:?}\nlog:\n{}", gw.log());
    assert_eq!(stat(&sock, "messages/dropped/mqueue_full"), 0);
}
