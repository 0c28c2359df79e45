//! The in-process client API against a real broker (router, authenticator, ACL, bridge queue
//! on disk), without sockets.

use super::*;
use crate::auth::{Authenticator, PasswordFile};
use std::net::{IpAddr, Ipv4Addr};
use tokio_util::sync::CancellationToken;

const DEVICE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 5683);

/// A broker over `extra` config (TOML after `[node]`), with a password file (alice, bob:
/// "pw") and this ACL (`acl_nomatch = "allow"`).
struct Fixture {
    broker: Arc<Broker>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(acl: &str, auth: &str, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut passwd = PasswordFile::new();
        passwd.set("alice", b"pw").expect("hash");
        passwd.set("bob", b"pw").expect("hash");
        let passwd_path = dir.path().join("passwd");
        passwd.save(&passwd_path).expect("save");
        let acl_path = dir.path().join("acl.toml");
        std::fs::write(&acl_path, acl).expect("acl");
        let text = format!(
            "[node]\nname = \"gw\"\ndata_dir = {:?}\n{extra}\n[auth]\npassword_file = {:?}\nacl_file = {:?}\n{auth}\n",
            dir.path().join("data").display().to_string(),
            passwd_path.display().to_string(),
            acl_path.display().to_string(),
        );
        let config = crate::config::parse(&text, "test.toml", Vec::new()).expect("config");
        let auth = Arc::new(Authenticator::from_config(&config.auth).expect("auth"));
        let broker = Broker::new(Arc::new(config), auth, CancellationToken::new());
        Fixture { broker, dir }
    }

    fn plain() -> Fixture {
        Fixture::new("", "allow_anonymous = true", "")
    }

    async fn client(&self, id: &str) -> Client {
        Client::connect(&self.broker, ClientOptions::new(id, Protocol::Coap, DEVICE))
            .await
            .expect("connect")
    }
}

fn deny(user: &str, action: &str, topic: &str) -> String {
    format!(
        "[[rules]]\npermission = \"deny\"\nwho = {{ user = \"{user}\" }}\naction = \"{action}\"\ntopics = [\"{topic}\"]\n"
    )
}

async fn recv_within(c: &mut Client, ms: u64) -> Option<Received> {
    tokio::time::timeout(Duration::from_millis(ms), c.recv())
        .await
        .ok()
        .flatten()
}

fn payload(r: &Received) -> &[u8] {
    &r.message.payload
}

#[tokio::test]
async fn a_publish_is_refused_by_the_acl_or_its_topic_and_otherwise_routed_to_every_subscriber() {
    let fx = Fixture::new(&deny("alice", "publish", "secret/#"), "", "");
    let opts = |id: &str| ClientOptions {
        credentials: Credentials::Gateway {
            username: Some("alice".into()),
        },
        ..ClientOptions::new(id, Protocol::Modbus, DEVICE)
    };
    let mut alice = Client::connect(&fx.broker, opts("poller")).await.unwrap();
    let mut sub1 = fx.client("sub-1").await;
    let mut sub2 = fx.client("sub-2").await;
    assert_eq!(
        sub1.subscribe(&[("#", QoS::AtLeastOnce)]),
        [Ok(QoS::AtLeastOnce)]
    );
    assert_eq!(
        sub2.subscribe(&[("m/+", QoS::AtMostOnce)]),
        [Ok(QoS::AtMostOnce)]
    );

    let secret = Publication::new("secret/plans", "x", QoS::AtLeastOnce);
    assert_eq!(
        alice.publish(secret).await,
        Err(PublishError::NotAuthorized)
    );
    let sys = Publication::new("$SYS/brokers/gw/x", "x", QoS::AtMostOnce);
    assert_eq!(alice.publish(sys).await, Err(PublishError::NotAuthorized));
    for bad in ["", "m/#", "m/+"] {
        let p = Publication::new(bad, "x", QoS::AtMostOnce);
        assert_eq!(
            alice.publish(p).await,
            Err(PublishError::InvalidTopic),
            "{bad:?}"
        );
    }
    let long = Publication::new("m/".to_owned() + &"x".repeat(4096), "x", QoS::AtMostOnce);
    assert_eq!(alice.publish(long).await, Err(PublishError::InvalidTopic));
    let counters = fx
        .broker
        .traffic
        .dropped_not_authorized
        .load(Ordering::Relaxed);
    assert_eq!(counters, 1);

    let ok = Publication::new("m/1", "21.5", QoS::AtLeastOnce);
    assert_eq!(
        alice.publish(ok).await,
        Ok(Published::Routed { receivers: 2 })
    );
    let got = recv_within(&mut sub1, 1000).await.expect("sub-1 gets it");
    assert_eq!((payload(&got), got.qos), (&b"21.5"[..], QoS::AtLeastOnce));
    assert_eq!(got.message.publisher_client_id.as_deref(), Some("poller"));
    let got = recv_within(&mut sub2, 1000).await.expect("sub-2 gets it");
    assert_eq!((got.qos, got.packet_id), (QoS::AtMostOnce, PacketId::NONE));
    let nobody = Publication::new("n/1", "x", QoS::AtMostOnce);
    assert_eq!(
        alice.publish(nobody).await,
        Ok(Published::Routed { receivers: 1 })
    );
}

#[tokio::test]
async fn a_subscription_the_acl_denies_is_refused_and_the_rest_are_granted() {
    let acl = deny("bob", "subscribe", "users/alice/#");
    let fx = Fixture::new(&acl, "", "[mqtt]\nmax_subscriptions = 2\n");
    let opts = ClientOptions {
        credentials: Credentials::Device {
            username: Some("bob".into()),
            password: Some(b"pw".to_vec()),
        },
        ..ClientOptions::new("bob-dev", Protocol::Lwm2m, DEVICE)
    };
    let mut bob = Client::connect(&fx.broker, opts).await.unwrap();
    assert_eq!(bob.username(), Some("bob"));
    let results = bob.subscribe(&[
        ("users/alice/cmd", QoS::AtLeastOnce),
        ("users/bob/cmd", QoS::ExactlyOnce),
        ("a/#/b", QoS::AtMostOnce),
        ("x", QoS::AtMostOnce),
        ("y", QoS::AtMostOnce),
    ]);
    assert_eq!(
        results,
        [
            Err(SubscribeError::NotAuthorized),
            Ok(QoS::ExactlyOnce),
            Err(SubscribeError::InvalidFilter),
            Ok(QoS::AtMostOnce),
            Err(SubscribeError::QuotaExceeded),
        ]
    );
    assert_eq!(bob.unsubscribe(&["x", "never"]), [true, false]);
    assert_eq!(
        bob.subscribe(&[("y", QoS::AtMostOnce)]),
        [Ok(QoS::AtMostOnce)]
    );
}

#[tokio::test]
async fn device_credentials_pass_the_same_authentication_as_an_mqtt_connect() {
    let fx = Fixture::new("", "allow_anonymous = false", "");
    let device = |user: Option<&str>, password: Option<&[u8]>| ClientOptions {
        credentials: Credentials::Device {
            username: user.map(str::to_owned),
            password: password.map(<[u8]>::to_vec),
        },
        ..ClientOptions::new("dev-1", Protocol::Coap, DEVICE)
    };
    let wrong = Client::connect(&fx.broker, device(Some("alice"), Some(b"nope"))).await;
    assert_eq!(wrong.err(), Some(ConnectError::BadCredentials));
    let none = Client::connect(&fx.broker, device(None, None)).await;
    assert_eq!(none.err(), Some(ConnectError::NotAuthorized));
    let unchecked = Client::connect(&fx.broker, device(Some("alice"), None)).await;
    assert_eq!(unchecked.err(), Some(ConnectError::BadCredentials));
    let ok = Client::connect(&fx.broker, device(Some("alice"), Some(b"pw"))).await;
    assert_eq!(
        ok.map(|c| c.username().map(str::to_owned)).ok(),
        Some(Some("alice".into()))
    );
    let empty = ClientOptions::new("", Protocol::Coap, DEVICE);
    assert_eq!(
        Client::connect(&fx.broker, empty).await.err(),
        Some(ConnectError::InvalidClientId)
    );
}

#[tokio::test]
async fn qos1_deliveries_wait_for_their_ack_within_the_window_and_come_back_after_a_resume() {
    let fx = Fixture::plain();
    let persistent = |id: &str| ClientOptions {
        clean_start: false,
        session_expiry: Duration::from_secs(60),
        receive_window: 2,
        ..ClientOptions::new(id, Protocol::Lwm2m, DEVICE)
    };
    let mut dev = Client::connect(&fx.broker, persistent("ep-1"))
        .await
        .unwrap();
    assert!(!dev.session_present());
    assert_eq!(
        dev.subscribe(&[("cmd/#", QoS::AtLeastOnce)]),
        [Ok(QoS::AtLeastOnce)]
    );
    let mut ops = fx.client("ops").await;
    for n in 0..4 {
        let p = Publication::new(format!("cmd/{n}"), n.to_string(), QoS::AtLeastOnce);
        assert_eq!(ops.publish(p).await, Ok(Published::Routed { receivers: 1 }));
    }
    // A window of two: the third waits until one is acknowledged.
    let first = recv_within(&mut dev, 1000).await.expect("first");
    let second = recv_within(&mut dev, 1000).await.expect("second");
    assert!(recv_within(&mut dev, 200).await.is_none());
    dev.ack(&first);
    let third = recv_within(&mut dev, 1000)
        .await
        .expect("third after an ack");
    assert_eq!(
        [payload(&first), payload(&second), payload(&third)],
        [b"0", b"1", b"2"]
    );
    // Gone without acknowledging 1 and 2: they come back (dup) before 3, in order.
    drop(dev);
    let mut dev = Client::connect(&fx.broker, persistent("ep-1"))
        .await
        .unwrap();
    assert!(dev.session_present());
    let mut again = Vec::new();
    while let Some(r) = recv_within(&mut dev, 300).await {
        again.push((String::from_utf8_lossy(payload(&r)).into_owned(), r.dup));
        dev.ack(&r);
    }
    assert_eq!(
        again,
        [("1".into(), true), ("2".into(), true), ("3".into(), false)]
    );
}

#[tokio::test]
async fn a_slow_receiver_is_bounded_by_its_session_queue_and_its_drops_are_counted() {
    let fx = Fixture::new(
        "",
        "allow_anonymous = true",
        "[mqtt]\nmax_mqueue_len = 5\nmqueue_full = \"drop_oldest\"\n",
    );
    let opts = ClientOptions {
        receive_window: 1,
        ..ClientOptions::new("slow", Protocol::Serial, DEVICE)
    };
    let mut slow = Client::connect(&fx.broker, opts).await.unwrap();
    slow.subscribe(&[("t", QoS::AtLeastOnce)]);
    let mut fast = fx.client("fast").await;
    for n in 0..20 {
        let p = Publication::new("t", n.to_string(), QoS::AtLeastOnce);
        fast.publish(p).await.unwrap();
    }
    let dropped = fx.broker.with_router(|r| r.counters().dropped_queue_full);
    assert_eq!(
        dropped, 15,
        "5 queued, the oldest 15 dropped (none was taken yet)"
    );
    let mut got = Vec::new();
    while let Some(r) = recv_within(&mut slow, 200).await {
        got.push(String::from_utf8_lossy(payload(&r)).into_owned());
        slow.ack(&r);
    }
    assert_eq!(got, ["15", "16", "17", "18", "19"]);
}

/// A broker whose queues hold 5 messages, and a receiver of `t` with a window of one.
async fn slow_receiver_of_t() -> (Fixture, Client) {
    let fx = Fixture::new("", "allow_anonymous = true", "[mqtt]\nmax_mqueue_len = 5\n");
    let opts = ClientOptions {
        receive_window: 1,
        ..ClientOptions::new("slow", Protocol::Serial, DEVICE)
    };
    let mut slow = Client::connect(&fx.broker, opts).await.unwrap();
    slow.subscribe(&[("t", QoS::AtLeastOnce)]);
    (fx, slow)
}

#[tokio::test]
async fn a_slow_receiver_holds_its_publisher_back_and_loses_nothing_under_the_default_policy() {
    let (fx, mut slow) = slow_receiver_of_t().await;
    let mut fast = fx.client("fast").await;
    let publisher = tokio::spawn(async move {
        for n in 0..20 {
            let p = Publication::new("t", n.to_string(), QoS::AtLeastOnce);
            fast.publish(p).await.unwrap();
        }
        fast
    });
    // The publisher cannot run ahead: its sixth message waits for room.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!publisher.is_finished(), "held back by the full queue");
    let queued = fx.broker.with_router(|r| r.sizes().queued);
    assert!(
        queued <= 10,
        "the queue stays within twice its limit: {queued}"
    );
    let mut got = Vec::new();
    while got.len() < 20 {
        let Some(r) = recv_within(&mut slow, 2000).await else {
            break;
        };
        got.push(String::from_utf8_lossy(payload(&r)).into_owned());
        slow.ack(&r);
    }
    let want: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    assert_eq!(got, want);
    assert!(publisher.await.is_ok());
    let counters = fx.broker.with_router(|r| r.counters());
    assert_eq!(counters.dropped_queue_full, 0);
    assert!(counters.publishers_held_back > 0);
}

#[tokio::test]
async fn publish_now_routes_at_once_and_says_when_the_publisher_must_wait() {
    let (fx, mut slow) = slow_receiver_of_t().await;
    let mut fast = fx.client("fast").await;
    // Nothing waits: the publisher learns it is held back and waits itself, as a device
    // gateway does between its events.
    let mut sent = 0;
    while !fast.is_held_back() {
        let p = Publication::new("t", sent.to_string(), QoS::AtLeastOnce);
        assert_eq!(fast.publish_now(p), Ok(1));
        sent += 1;
        assert!(sent <= 10, "held back once the queue is full");
    }
    let waiting = tokio::spawn(async move {
        fast.wait_while_held_back().await;
        fast
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the wait lasts while the queue is full"
    );
    let mut got = Vec::new();
    while let Some(r) = recv_within(&mut slow, 500).await {
        got.push(String::from_utf8_lossy(payload(&r)).into_owned());
        slow.ack(&r);
    }
    let want: Vec<String> = (0..sent).map(|n| n.to_string()).collect();
    assert_eq!(got, want);
    let fast = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("released once the queue drained")
        .unwrap();
    assert!(!fast.is_held_back());
}

#[tokio::test]
async fn retained_messages_arrive_on_subscribe() {
    let fx = Fixture::plain();
    let mut publisher = fx.client("pub").await;
    let p = Publication::new("cfg/rate", "10", QoS::AtLeastOnce).retained();
    publisher.publish(p).await.unwrap();
    let mut late = fx.client("late").await;
    late.subscribe(&[("cfg/#", QoS::AtLeastOnce)]);
    let r = recv_within(&mut late, 1000)
        .await
        .expect("the retained message");
    assert!(r.retain);
    assert_eq!(payload(&r), b"10");
}

#[tokio::test]
async fn a_client_shows_with_its_protocol_and_can_be_kicked_or_taken_over() {
    let fx = Fixture::plain();
    let mut dev = fx.client("coap-dev").await;
    let row = fx
        .broker
        .with_router(|r| r.client_info("coap-dev"))
        .expect("row");
    assert_eq!((row.proto_name.as_str(), row.connected), ("coap", true));
    assert_eq!(row.peer.as_deref(), Some("10.0.0.7:5683"));

    assert!(fx.broker.with_router(|r| r.kick("coap-dev")));
    assert!(recv_within(&mut dev, 1000).await.is_none());
    assert_eq!(dev.closed(), Some(DisconnectReason::Kicked));
    assert_eq!(
        dev.publish(Publication::new("t", "x", QoS::AtMostOnce))
            .await,
        Err(PublishError::Closed)
    );
    dev.disconnect();
    let row = fx.broker.with_router(|r| r.client_info("coap-dev"));
    assert!(row.is_none(), "a clean session ends with its client");

    let mut first = fx.client("shared-id").await;
    let _second = fx.client("shared-id").await;
    assert!(recv_within(&mut first, 1000).await.is_none());
    assert_eq!(first.closed(), Some(DisconnectReason::Discarded));
}

#[tokio::test]
async fn a_forwarded_publish_is_durable_only_once_the_bridge_queue_synced_it() {
    let bridges = |flush: &str| {
        format!(
            "[[bridges]]\nname = \"cloud\"\nserver = \"mqtt://127.0.0.1:1\"\nforward = [\"up/#\"]\n[bridges.queue]\nflush = \"{flush}\"\n"
        )
    };
    for (flush, durable) in [("group", true), ("interval:10s", false)] {
        let fx = Fixture::new("", "allow_anonymous = true", &bridges(flush));
        let forwarder =
            crate::bridge::open_outboxes(&fx.broker.config.bridges, &fx.dir.path().join("data"))
                .expect("queue");
        fx.broker.set_uplink(Arc::new(forwarder));
        let outbox = crate::bridge::forwarder(&fx.broker)
            .expect("set")
            .outboxes()[0]
            .clone();
        let mut dev = fx.client("dev").await;
        let out = dev
            .publish(Publication::new("up/t", "1", QoS::AtLeastOnce))
            .await;
        if durable {
            assert_eq!(out, Ok(Published::Durable { receivers: 1 }), "{flush}");
            assert!(outbox.durable_seq() >= 1, "returned before the sync");
        } else {
            assert_eq!(out, Ok(Published::Routed { receivers: 1 }), "{flush}");
        }
        assert_eq!(outbox.queue.stats().unwrap_or_default().len, 1);
        // QoS 0 never waits; a topic no bridge forwards is only routed.
        let q0 = dev
            .publish(Publication::new("up/t", "2", QoS::AtMostOnce))
            .await;
        assert_eq!(q0, Ok(Published::Routed { receivers: 1 }));
        let local = dev
            .publish(Publication::new("down/t", "3", QoS::AtLeastOnce))
            .await;
        assert_eq!(local, Ok(Published::Routed { receivers: 0 }));
        crate::bridge::flush_all(crate::bridge::forwarder(&fx.broker).expect("set"));
    }
}
