//! Publish/subscribe through the built broker with mosquitto_pub / mosquitto_sub.

use holdfast_tests::{mosquitto_pub, Gateway, MosquittoSub};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn qos_0_1_and_2_messages_reach_a_wildcard_subscriber() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "sensors/#", &["-v", "-q", "2"]);
    for qos in ["0", "1", "2"] {
        assert!(mosquitto_pub(
            gw.port,
            &format!("sensors/q{qos}"),
            &format!("v{qos}"),
            &["-q", qos]
        ));
    }
    let got = sub.wait_for(3, WAIT);
    assert_eq!(got, vec!["sensors/q0 v0", "sensors/q1 v1", "sensors/q2 v2"]);
}

#[test]
fn v5_clients_exchange_messages_with_v311_clients() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "mix/+", &["-v", "-V", "5", "-q", "1"]);
    assert!(mosquitto_pub(
        gw.port,
        "mix/a",
        "from-311",
        &["-V", "311", "-q", "1"]
    ));
    assert!(mosquitto_pub(
        gw.port,
        "mix/b",
        "from-5",
        &["-V", "5", "-q", "1"]
    ));
    assert!(mosquitto_pub(
        gw.port,
        "mix/c",
        "from-31",
        &["-V", "31", "-q", "1"]
    ));
    let got = sub.wait_for(3, WAIT);
    assert_eq!(got, vec!["mix/a from-311", "mix/b from-5", "mix/c from-31"]);
}

#[test]
fn a_retained_message_is_sent_to_new_subscribers_and_cleared_by_an_empty_payload() {
    let gw = Gateway::start();
    assert!(mosquitto_pub(gw.port, "cfg/a", "A", &["-r", "-q", "1"]));
    assert!(mosquitto_pub(gw.port, "cfg/b", "B", &["-r"]));
    let sub = MosquittoSub::start(gw.port, "cfg/#", &["-v"]);
    let mut got = sub.wait_for(2, WAIT);
    got.sort();
    assert_eq!(got, vec!["cfg/a A", "cfg/b B"]);
    drop(sub);
    assert!(mosquitto_pub(gw.port, "cfg/a", "", &["-r"]));
    let sub = MosquittoSub::start(gw.port, "cfg/#", &["-v"]);
    let got = sub.wait_for(2, Duration::from_millis(800));
    assert_eq!(got, vec!["cfg/b B"]);
}

#[test]
fn dollar_topics_are_not_matched_by_a_leading_wildcard() {
    let gw = Gateway::start();
    let all = MosquittoSub::start(gw.port, "#", &["-v"]);
    let sys = MosquittoSub::start(gw.port, "$SYS/brokers/+/clients/+/connected", &["-v"]);
    assert!(mosquitto_pub(gw.port, "plain", "x", &["-i", "pub-dollar"]));
    let got = sys.wait_for(1, WAIT);
    assert!(
        got.iter()
            .any(|l| l.contains("\"clientid\":\"pub-dollar\"")),
        "{got:?}"
    );
    let plain = all.wait_for(1, WAIT);
    assert!(plain.iter().all(|l| !l.starts_with('$')), "{plain:?}");
    assert!(plain.contains(&"plain x".to_string()), "{plain:?}");
}

#[test]
fn connected_and_disconnected_events_carry_the_client_details() {
    // Only a verified user name is reported: bob is in the password file.
    let dir = holdfast_tests::TempDir::new("users");
    let passwd = holdfast_tests::password_file(dir.path(), &[("bob", "pw")]);
    let port = holdfast_tests::free_port();
    let gw = Gateway::start_config(
        &holdfast_tests::test_config_with_users(port, "", &passwd),
        port,
    );
    let sub = MosquittoSub::start(gw.port, "$SYS/brokers/gw-test/clients/#", &["-v"]);
    assert!(mosquitto_pub(
        gw.port,
        "t",
        "x",
        &["-i", "event-client", "-u", "bob", "-P", "pw", "-k", "42"]
    ));
    let got = sub.wait_for(2, WAIT);
    let connected = got
        .iter()
        .find(|l| l.starts_with("$SYS/brokers/gw-test/clients/event-client/connected "))
        .unwrap_or_else(|| panic!("{got:?}"));
    for field in [
        "\"username\":\"bob\"",
        "\"ipaddress\":\"127.0.0.1\"",
        "\"proto_ver\":4",
        "\"keepalive\":42",
        "\"clean_start\":true",
        "\"connected_at\":",
    ] {
        assert!(connected.contains(field), "{field} missing in {connected}");
    }
    let disconnected = got
        .iter()
        .find(|l| l.starts_with("$SYS/brokers/gw-test/clients/event-client/disconnected "))
        .unwrap_or_else(|| panic!("{got:?}"));
    assert!(
        disconnected.contains("\"reason\":\"normal\""),
        "{disconnected}"
    );
}

#[test]
fn a_will_is_published_when_a_client_vanishes_but_not_after_a_clean_disconnect() {
    use std::io::Write;
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "wills/#", &["-v"]);
    // A clean disconnect: no will.
    assert!(mosquitto_pub(
        gw.port,
        "x",
        "y",
        &["--will-topic", "wills/clean", "--will-payload", "bad"]
    ));
    // A raw client with a will that just drops its socket.
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    let connect: &[u8] = &[
        0x10, 0x21, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00,
        0x3c, // will flag + clean
        0x00, 0x04, b'w', b'i', b'l', b'l', // client id
        0x00, 0x0a, b'w', b'i', b'l', b'l', b's', b'/', b'g', b'o', b'n', b'e', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will payload
    ];
    s.write_all(connect).unwrap();
    let mut ack = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    drop(s);
    let got = sub.wait_for(1, WAIT);
    assert_eq!(got, vec!["wills/gone bye"]);
}

#[test]
fn shared_subscriptions_split_the_messages_among_group_members() {
    let gw = Gateway::start();
    let a = MosquittoSub::start(gw.port, "$share/g/jobs/#", &["-v", "-V", "5", "-q", "1"]);
    let b = MosquittoSub::start(gw.port, "$share/g/jobs/#", &["-v", "-V", "5", "-q", "1"]);
    let all = MosquittoSub::start(gw.port, "jobs/#", &["-v"]);
    for i in 0..10 {
        assert!(mosquitto_pub(
            gw.port,
            &format!("jobs/{i}"),
            "j",
            &["-q", "1"]
        ));
    }
    all.wait_for(10, WAIT);
    let deadline = std::time::Instant::now() + WAIT;
    let (mut na, mut nb) = (0, 0);
    while std::time::Instant::now() < deadline {
        na = a.messages().len();
        nb = b.messages().len();
        if na + nb >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(na + nb, 10, "each message goes to exactly one member");
    assert_eq!((na, nb), (5, 5), "round robin splits evenly");
}
