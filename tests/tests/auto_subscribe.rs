//! Subscription by broker (`[[auto_subscribe]]`): a client is subscribed to its `%c`/`%u`
//! topics when it connects, gets retained messages there, and cannot widen the subscription
//! with a wildcard in its own client id.

use holdfast_tests::{
    free_port, mosquitto_pub, password_file, test_config_with_users, wait_until, Gateway,
    MosquittoSub, TempDir,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The gateway, and the directory of its password file (alice / pw: `%u` needs a verified
/// user name).
fn gateway() -> (Gateway, TempDir) {
    let dir = TempDir::new("users");
    let passwd = password_file(dir.path(), &[("alice", "pw")]);
    let port = free_port();
    let config = format!(
        r#"{}
[[auto_subscribe]]
topic = "devices/%c/commands"
qos = 1

[[auto_subscribe]]
topic = "users/%u/inbox"
qos = 0
"#,
        test_config_with_users(port, "", &passwd)
    );
    (Gateway::start_config(&config, port), dir)
}

#[test]
fn a_connecting_client_gets_its_own_topics_and_their_retained_messages() {
    let (gw, _users) = gateway();
    // Retained before the client ever connects: delivered right after its CONNACK.
    assert!(mosquitto_pub(
        gw.port,
        "devices/dev-1/commands",
        "reboot",
        &["-r", "-q", "1"]
    ));

    // The client itself subscribes only to an unrelated topic; mosquitto_sub prints whatever
    // the broker delivers.
    let sub = MosquittoSub::start(
        gw.port,
        "unrelated/topic",
        &["-i", "dev-1", "-u", "alice", "-P", "pw", "-q", "1", "-v"],
    );
    assert_eq!(sub.wait_for(1, WAIT), ["devices/dev-1/commands reboot"]);
    assert!(mosquitto_pub(gw.port, "users/alice/inbox", "hi alice", &[]));
    assert!(mosquitto_pub(
        gw.port,
        "devices/dev-2/commands",
        "not yours",
        &[]
    ));
    assert!(mosquitto_pub(gw.port, "users/bob/inbox", "not yours", &[]));
    assert!(mosquitto_pub(
        gw.port,
        "devices/dev-1/commands",
        "open",
        &["-q", "1"]
    ));
    let got = sub.wait_for(3, WAIT);
    assert_eq!(
        got,
        [
            "devices/dev-1/commands reboot",
            "users/alice/inbox hi alice",
            "devices/dev-1/commands open"
        ]
    );
    // The QoS 1 delivery really is QoS 1 (mosquitto_sub -d shows the PUBLISH's q1).
    assert!(
        sub.raw().contains("q1, r0, m") || sub.raw().contains("q1, r0,"),
        "{}",
        sub.raw()
    );
    assert!(gw.wait_for_log("auto SUBSCRIBE", WAIT));
}

#[test]
fn a_wildcard_client_id_or_a_missing_username_gets_no_subscription_from_that_template() {
    let (gw, _users) = gateway();
    let evil = MosquittoSub::start(gw.port, "unrelated/topic", &["-i", "#", "-v"]);
    assert!(wait_until(WAIT, || gw
        .log()
        .contains("auto subscribe skipped")));
    let log = gw.log();
    assert!(log.contains("client id holds +, # or /"), "{log}");
    assert!(log.contains("sent no username"), "{log}");
    assert!(mosquitto_pub(
        gw.port,
        "devices/dev-9/commands",
        "secret",
        &[]
    ));
    assert!(mosquitto_pub(gw.port, "unrelated/topic", "marker", &[]));
    assert_eq!(evil.wait_for(1, WAIT), ["unrelated/topic marker"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(evil.messages(), ["unrelated/topic marker"]);
}
