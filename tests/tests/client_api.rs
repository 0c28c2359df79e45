//! The bridges' downlink as a client of the broker's in-process client API: it shows in
//! `holdfast ctl clients` and the `$SYS` events with protocol `bridge`, can be kicked and comes
//! back, passes the ACL like an MQTT client, and its client id cannot be taken by a device.

use holdfast_tests::ctl::{ctl, ctl_json, socket};
use holdfast_tests::raw5::Raw;
use holdfast_tests::{
    free_port, json_u64, mosquitto_pub, wait_retained, wait_until, Gateway, Mosquitto,
    MosquittoSub, TempDir,
};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, ConnectReturnCode};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const PREFIX: &str = "edge/gw-001/";
const STATS: &str = "$SYS/brokers/gw-001/bridges/cloud/stats";

/// A gateway bridging to a cloud mosquitto: `cmd/#` comes down, `up/#` goes up; `auth` is
/// added to `[auth]` (anonymous access on).
fn bridged(auth: &str) -> (Gateway, Mosquitto) {
    let cloud = Mosquitto::start(free_port());
    let port = free_port();
    let config = format!(
        r#"
[node]
name = "gw-001"

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true
{auth}

[[bridges]]
name = "cloud"
server = "mqtt://127.0.0.1:{cloud}"
client_id = "gw-001"
remote_prefix = "{PREFIX}"
forward = ["up/#"]
subscribe = ["cmd/#"]
backoff_min = "100ms"
backoff_max = "1s"
"#,
        cloud = cloud.port
    );
    let gw = Gateway::start_config(&config, port);
    let (up, stats) = wait_retained(port, STATS, WAIT, |s| s.contains("\"state\":\"up\""));
    assert!(up, "the bridge never came up: {stats}\n{}", gw.log());
    (gw, cloud)
}

/// The `$bridge/cloud` row of `holdfast ctl clients list`, if there is one.
fn bridge_row(sock: &std::path::PathBuf) -> Option<Value> {
    let list = ctl_json(sock, &["clients", "list"]);
    list["clients"]["rows"]
        .as_array()?
        .iter()
        .find(|r| r["client_id"] == "$bridge/cloud")
        .cloned()
}

#[test]
fn the_bridge_is_a_client_that_ctl_lists_and_kicks_and_that_comes_back() {
    let (gw, cloud) = bridged("");
    let sock = socket(&gw);
    assert!(wait_until(WAIT, || bridge_row(&sock)
        .is_some_and(|r| r["connected"] == true)));
    let row = bridge_row(&sock).unwrap_or_default();
    assert_eq!(row["proto_name"], "bridge", "{row}");
    assert_eq!(
        row["peer"],
        format!("127.0.0.1:{}", cloud.port),
        "the cloud broker is its peer: {row}"
    );

    let events = MosquittoSub::start(gw.port, "$SYS/brokers/gw-001/clients/+/+", &["-v"]);
    let (ok, out, err) = ctl(&sock, &["clients", "kick", "$bridge/cloud"]);
    assert!(ok, "kick failed: {out} {err}");
    let got = events.wait_for(2, WAIT);
    let topics: Vec<&str> = got.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        topics,
        [
            "$SYS/brokers/gw-001/clients/$bridge%2Fcloud/disconnected",
            "$SYS/brokers/gw-001/clients/$bridge%2Fcloud/connected",
        ],
        "{got:?}"
    );
    assert!(got[0].contains("\"reason\":\"kicked\""), "{got:?}");
    assert!(got[1].contains("\"proto_name\":\"bridge\""), "{got:?}");
    let (reconnected, stats) = wait_retained(gw.port, STATS, WAIT, |s| {
        json_u64(s, "reconnects") >= Some(1)
    });
    assert!(reconnected, "{stats}");

    // The downlink works again after the kick.
    let local = MosquittoSub::start(gw.port, "cmd/#", &["-v"]);
    assert!(mosquitto_pub(
        cloud.port,
        &format!("{PREFIX}cmd/valve"),
        "open",
        &["-q", "1"]
    ));
    assert_eq!(local.wait_for(1, WAIT), ["cmd/valve open"]);
}

#[test]
fn downlink_messages_pass_the_acl_like_an_mqtt_clients() {
    let dir = TempDir::new("acl");
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        r#"
[[rules]]
permission = "allow"
who = { all = true }
action = "subscribe"
topics = ["cmd/#", "$SYS/#"]

[[rules]]
permission = "allow"
who = { clientid = "$bridge/cloud" }
action = "publish"
topics = ["cmd/allowed/#"]
"#,
    )
    .expect("write the ACL");
    let auth = format!(
        "acl_file = {:?}\nacl_nomatch = \"deny\"\n",
        acl.display().to_string()
    );
    let (gw, cloud) = bridged(&auth);
    let local = MosquittoSub::start(gw.port, "cmd/#", &["-v"]);
    for topic in ["cmd/secret/1", "cmd/allowed/1"] {
        assert!(mosquitto_pub(
            cloud.port,
            &format!("{PREFIX}{topic}"),
            "x",
            &["-q", "1"]
        ));
    }
    assert_eq!(local.wait_for(1, WAIT), ["cmd/allowed/1 x"]);
    let (refused, stats) = wait_retained(gw.port, STATS, WAIT, |s| {
        json_u64(s, "downlink_refused") == Some(1)
    });
    assert!(refused, "{stats}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(local.messages(), ["cmd/allowed/1 x"]);
}

#[test]
fn a_device_cannot_take_the_bridges_client_id() {
    let (gw, _cloud) = bridged("");
    let sock = socket(&gw);
    assert!(wait_until(WAIT, || bridge_row(&sock).is_some()));
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(60);
    let (_raw, ack) = Raw::connect(gw.port, "$bridge/cloud", true, props, None);
    assert_eq!(ack.code, ConnectReturnCode::ClientIdentifierNotValid);
    let row = bridge_row(&sock).unwrap_or_default();
    assert_eq!(row["connected"], true, "{row}");
}
