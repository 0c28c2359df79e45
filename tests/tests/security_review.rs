//! The security review's findings (issue "Security hardening"), each reproduced against the
//! built gateway with a bare MQTT 5 client: what an unauthenticated or unprivileged client could
//! get that it must not.

use holdfast_tests::raw5::Raw;
use holdfast_tests::Gateway;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, ConnectReturnCode, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Connects with an empty client id and a session expiry; returns the id the gateway assigned.
fn assigned_id(port: u16) -> (Raw, String, bool) {
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    let (raw, ack) = Raw::connect(port, "", true, props, None);
    assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
    let id = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .unwrap_or_else(|| panic!("no assigned client identifier"));
    (raw, id, ack.session_present)
}

#[test]
fn assigned_client_ids_never_repeat_after_a_restart() {
    let mut gw = Gateway::start();
    // Bob's device gets an id, subscribes, leaves; a command is queued for it.
    let (mut bob, bob_id, _) = assigned_id(gw.port);
    bob.subscribe_one("users/bob/cmd", QoS::AtLeastOnce);
    bob.disconnect();
    let mut p = Publish::new("users/bob/cmd", QoS::AtLeastOnce, "unlock", None);
    p.pkid = 1;
    Raw::connected(gw.port, "ops").publish_qos1(p);
    std::thread::sleep(Duration::from_millis(1200));
    gw.restart();
    // A stranger with an empty id after the restart: a fresh id, no session, nothing queued.
    let (mut stranger, id, present) = assigned_id(gw.port);
    assert_ne!(id, bob_id, "the restart handed out bob's id again");
    assert!(!present, "the stranger got a session");
    assert!(stranger.next_publish(Duration::from_millis(500)).is_none());
    // 128 random bits, not a counter.
    let hex = id.rsplit('-').next().unwrap_or_default();
    assert!(
        hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    // Bob's session is still his.
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    let (mut bob, ack) = Raw::connect(gw.port, &bob_id, false, props, None);
    assert!(ack.session_present);
    match bob.expect(WAIT) {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"unlock"),
        other => panic!("expected bob's command, got {other:?}"),
    }
}
