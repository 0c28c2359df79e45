//! Sessions with rumqttc (3.1.1 and 5): persistence, offline queues, takeover, keepalive, order.

use holdfast_tests::Gateway;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use std::time::Duration;
use tokio::time::timeout;

use holdfast_tests::v4::{collect, connack, options, WAIT};

/// Polls until the outgoing queue is flushed and acknowledged.
async fn drive_until_acked(ev: &mut EventLoop, acks: usize) {
    let mut n = 0;
    while n < acks {
        match timeout(WAIT, ev.poll())
            .await
            .expect("acks in time")
            .expect("connected")
        {
            Event::Incoming(Packet::PubAck(_)) | Event::Incoming(Packet::PubComp(_)) => n += 1,
            _ => {}
        }
    }
}

async fn publish_all(port: u16, topic: &str, payloads: &[String], qos: QoS) {
    let (client, mut ev) = AsyncClient::new(options(&format!("pub-{topic}"), port, true), 1000);
    connack(&mut ev).await;
    for p in payloads {
        client.publish(topic, qos, false, p.clone()).await.unwrap();
    }
    if qos == QoS::AtMostOnce {
        client.disconnect().await.unwrap();
        while let Ok(Ok(e)) = timeout(WAIT, ev.poll()).await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    } else {
        drive_until_acked(&mut ev, payloads.len()).await;
    }
}

/// Subscribes as `id` (clean session off) and leaves; returns once the gateway has seen it go,
/// so what is published next finds the session offline (a message routed while it was still
/// connected would be sent to it, and kept as inflight rather than queued).
async fn subscribe_and_leave(gw: &Gateway, id: &str, filter: &str) {
    let (client, mut ev) = AsyncClient::new(options(id, gw.port, false), 10);
    connack(&mut ev).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = timeout(WAIT, ev.poll()).await.unwrap().unwrap()
        {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while let Ok(Ok(e)) = timeout(WAIT, ev.poll()).await {
        if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    let gone = format!(" client_id={id} ");
    let offline = holdfast_tests::wait_until(WAIT, || {
        gw.log()
            .lines()
            .any(|l| l.contains("client disconnected") && l.contains(&gone))
    });
    assert!(offline, "the gateway did not see {id} leave:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_qos1_messages_reach_a_clean_session_false_client_in_order() {
    let gw = Gateway::start();
    subscribe_and_leave(&gw, "persist", "p/#").await;
    let payloads: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    publish_all(gw.port, "p/x", &payloads, QoS::AtLeastOnce).await;

    let (_client, mut ev) = AsyncClient::new(options("persist", gw.port, false), 10);
    assert!(connack(&mut ev).await, "session present");
    let got = collect(&mut ev, 50, WAIT).await;
    assert_eq!(got, payloads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_true_discards_the_old_session() {
    let gw = Gateway::start();
    subscribe_and_leave(&gw, "fresh", "f/#").await;
    publish_all(gw.port, "f/x", &["lost".to_string()], QoS::AtLeastOnce).await;
    let (_client, mut ev) = AsyncClient::new(options("fresh", gw.port, true), 10);
    assert!(!connack(&mut ev).await, "no session present");
    assert!(collect(&mut ev, 1, Duration::from_millis(500))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_queue_drops_the_oldest_and_says_so() {
    let gw = Gateway::start_with_mqtt("max_mqueue_len = 10");
    subscribe_and_leave(&gw, "small", "q/#").await;
    let payloads: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    publish_all(gw.port, "q/x", &payloads, QoS::AtLeastOnce).await;
    let (_client, mut ev) = AsyncClient::new(options("small", gw.port, false), 10);
    assert!(connack(&mut ev).await);
    let got = collect(&mut ev, 25, Duration::from_secs(2)).await;
    assert_eq!(got, payloads[15..].to_vec(), "the newest 10, in order");
    assert!(gw.log().contains("dropped: mqueue full"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publishers_mixed_qos_messages_on_one_topic_arrive_in_order() {
    let gw = Gateway::start_with_mqtt("max_mqueue_len = 100000\nmax_inflight = 4");
    let (sub, mut sub_ev) = AsyncClient::new(options("order-sub", gw.port, true), 10);
    connack(&mut sub_ev).await;
    sub.subscribe("order/t", QoS::ExactlyOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_ev.poll().await.unwrap() {
            break;
        }
    }
    let n = 3000;
    let port = gw.port;
    let publisher = tokio::spawn(async move {
        let (client, mut ev) = AsyncClient::new(options("order-pub", port, true), 10_000);
        connack(&mut ev).await;
        let mut qos1 = 0;
        for i in 0..n {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][i % 3];
            qos1 += usize::from(qos != QoS::AtMostOnce);
            client
                .publish("order/t", qos, false, format!("{i}"))
                .await
                .unwrap();
        }
        drive_until_acked(&mut ev, qos1).await;
    });
    let got = collect(&mut sub_ev, n, Duration::from_secs(60)).await;
    publisher.await.unwrap();
    let seq: Vec<usize> = got.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(seq.len(), n, "nothing lost");
    assert!(seq.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    use rumqttc::v5::{
        mqttbytes::v5::Packet as P5, AsyncClient as C5, Event as E5, MqttOptions as O5,
    };
    let gw = Gateway::start();
    let (_a, mut ev_a) = C5::new(O5::new("twin", "127.0.0.1", gw.port), 10);
    loop {
        if let E5::Incoming(P5::ConnAck(_)) = timeout(WAIT, ev_a.poll()).await.unwrap().unwrap() {
            break;
        }
    }
    let (_b, mut ev_b) = C5::new(O5::new("twin", "127.0.0.1", gw.port), 10);
    let b = tokio::spawn(async move {
        loop {
            if let Ok(E5::Incoming(P5::ConnAck(_))) = ev_b.poll().await {
                return ev_b;
            }
        }
    });
    let reason = loop {
        match timeout(WAIT, ev_a.poll())
            .await
            .expect("DISCONNECT in time")
        {
            Ok(E5::Incoming(P5::Disconnect(d))) => break d.reason_code as u8,
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
            )) => break reason_code as u8,
            Err(e) => panic!("connection ended without DISCONNECT: {e}"),
        }
    };
    assert_eq!(reason, 0x8E);
    let _ev_b = b.await.unwrap();
    // The newcomer asked for a clean start, so the old session was discarded (EMQX's reason).
    assert!(
        gw.wait_for_log("reason=\"discarded\"", WAIT),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_one_and_a_half_keepalives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start();
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    // CONNECT 3.1.1, keepalive 1 s, client id "k".
    s.write_all(&[
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 1, 0, 1, b'k',
    ])
    .await
    .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("closed by the broker");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(gw.wait_for_log("keepalive_timeout", WAIT));
}
