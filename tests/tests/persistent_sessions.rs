//! Persistent sessions survive a restart of the gateway: a clean-session-false subscriber's
//! subscriptions and its queued QoS 1 messages are on the sled store in the data dir, come back
//! after a graceful stop and after a `kill -9` (once the 100 ms session flusher and sled's
//! 500 ms background flush have run), and clean or expired sessions do not.

use holdfast_tests::{free_port, test_config_with_node, Gateway};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use std::time::Duration;
use tokio::time::timeout;

use holdfast_tests::v4::{collect, connack, options, WAIT};

/// Longer than the session flusher (100 ms) plus sled's background flush (500 ms), with room
/// for a loaded CI machine, as the retained-message crash test waits.
const FLUSHED: Duration = Duration::from_millis(3000);

async fn disconnect(client: &AsyncClient, ev: &mut EventLoop) {
    client.disconnect().await.expect("disconnect queued");
    while let Ok(Ok(e)) = timeout(WAIT, ev.poll()).await {
        if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
}

/// Publishes every payload at QoS 1 from a clean-session client and waits for every PUBACK.
async fn publish_all(port: u16, topic: &str, payloads: &[String]) {
    let (client, mut ev) = AsyncClient::new(options(&format!("pub-{topic}"), port, true), 1000);
    connack(&mut ev).await;
    for p in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, p.clone())
            .await
            .expect("publish queued");
    }
    let mut acked = 0;
    while acked < payloads.len() {
        if let Event::Incoming(Packet::PubAck(_)) = timeout(WAIT, ev.poll())
            .await
            .expect("PUBACK in time")
            .expect("connected")
        {
            acked += 1;
        }
    }
    disconnect(&client, &mut ev).await;
}

/// Connects `id` with clean session 0, subscribes to `filter` at QoS 1 and leaves.
async fn subscribe_and_leave(port: u16, id: &str, filter: &str) {
    let (client, mut ev) = AsyncClient::new(options(id, port, false), 10);
    connack(&mut ev).await;
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    loop {
        let e = timeout(WAIT, ev.poll())
            .await
            .expect("SUBACK in time")
            .expect("connected");
        if let Event::Incoming(Packet::SubAck(_)) = e {
            break;
        }
    }
    disconnect(&client, &mut ev).await;
}

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

/// Scenario (a) and (b): 50 QoS 1 messages queued for an offline persistent subscriber, then
/// `crash` (a graceful restart or a kill -9 and a start).
async fn queued_messages_survive(crash: impl FnOnce(&mut Gateway)) {
    let mut gw = Gateway::start();
    subscribe_and_leave(gw.port, "persist", "p/#").await;
    let sent = payloads(50);
    publish_all(gw.port, "p/x", &sent).await;
    crash(&mut gw);
    assert!(gw.wait_for_log("state restored", WAIT), "{}", gw.log());

    let (_client, mut ev) = AsyncClient::new(options("persist", gw.port, false), 10);
    assert!(connack(&mut ev).await, "session present after the restart");
    let got = collect(&mut ev, 50, WAIT).await;
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_qos1_messages_reach_a_persistent_subscriber_in_order_after_a_graceful_restart() {
    queued_messages_survive(|gw| gw.restart()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_qos1_messages_survive_kill_9_once_the_background_flush_ran() {
    queued_messages_survive(|gw| {
        std::thread::sleep(FLUSHED);
        gw.kill9();
        gw.restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_restart_without_resubscribing() {
    let mut gw = Gateway::start();
    subscribe_and_leave(gw.port, "keeper", "s/#").await;
    gw.restart();
    // Offline after the restart: the message waits in the restored session.
    publish_all(gw.port, "s/offline", &["while-away".to_string()]).await;
    let (_client, mut ev) = AsyncClient::new(options("keeper", gw.port, false), 10);
    assert!(connack(&mut ev).await, "session present");
    assert_eq!(collect(&mut ev, 1, WAIT).await, ["while-away"]);
    // Online: live routing through the restored subscription.
    let live = ["live".to_string()];
    let (got, ()) = tokio::join!(
        collect(&mut ev, 1, WAIT),
        publish_all(gw.port, "s/online", &live)
    );
    assert_eq!(got, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_kill_9() {
    let mut gw = Gateway::start();
    subscribe_and_leave(gw.port, "keeper9", "k/#").await;
    std::thread::sleep(FLUSHED);
    gw.kill9();
    gw.restart();
    publish_all(gw.port, "k/x", &["after-crash".to_string()]).await;
    let (_client, mut ev) = AsyncClient::new(options("keeper9", gw.port, false), 10);
    assert!(connack(&mut ev).await, "session present");
    assert_eq!(collect(&mut ev, 1, WAIT).await, ["after-crash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_is_not_restored() {
    let mut gw = Gateway::start();
    // Connected with clean session 1 at the crash, subscribed.
    let (client, mut ev) = AsyncClient::new(options("cleanie", gw.port, true), 10);
    connack(&mut ev).await;
    client
        .subscribe("c/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    loop {
        let e = timeout(WAIT, ev.poll()).await.expect("SUBACK").expect("ok");
        if let Event::Incoming(Packet::SubAck(_)) = e {
            break;
        }
    }
    std::thread::sleep(FLUSHED);
    gw.kill9();
    drop((client, ev));
    gw.restart();
    publish_all(gw.port, "c/x", &["nobody".to_string()]).await;
    let (_client, mut ev) = AsyncClient::new(options("cleanie", gw.port, false), 10);
    assert!(!connack(&mut ev).await, "no session present");
    assert!(collect(&mut ev, 1, Duration::from_millis(700))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_expired_while_the_gateway_was_down_is_not_restored() {
    let port = free_port();
    // A clock it may trust: the real downtime counts (an unsynchronized one would count as
    // zero, see tests/clock_jumps.rs).
    let config = test_config_with_node(port, "session_expiry = \"3s\"", "clock = \"synchronized\"");
    let mut gw = Gateway::start_config(&config, port);
    subscribe_and_leave(gw.port, "brief", "e/#").await;
    publish_all(gw.port, "e/x", &["stale".to_string()]).await;
    gw.stop();
    std::thread::sleep(Duration::from_millis(3500));
    gw.restart();
    assert!(
        gw.wait_for_log("expired while the gateway was down", WAIT),
        "{}",
        gw.log()
    );
    let (_client, mut ev) = AsyncClient::new(options("brief", gw.port, false), 10);
    assert!(!connack(&mut ev).await, "no session present");
    assert!(collect(&mut ev, 1, Duration::from_millis(700))
        .await
        .is_empty());
}
