//! Boards without a real-time clock: nothing acknowledged is lost when the clock jumps
//! between two runs. The gateway runs under libfaketime (Debian `faketime`) with its clock at
//! 2025-01-01, then again with the real clock (as after an NTP correction of ~2 years), and
//! the other way round: the persistent session, its queued QoS 1 messages and a retained
//! message with an expiry all survive. With a clock it may trust, a session whose real
//! downtime passed its expiry is still dropped.

use holdfast_tests::raw5::Raw;
use holdfast_tests::{free_port, mosquitto_pub, retained_once, test_config_with_node, Gateway};
use rumqttc::v5::mqttbytes::QoS;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// libfaketime's preload library, if installed.
fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn fake_clock(gw: &mut Gateway, at: Option<&str>) {
    let lib = libfaketime().expect("libfaketime (apt-get install faketime)");
    match at {
        Some(at) => {
            gw.set_env("LD_PRELOAD", Some(lib.to_str().expect("utf-8 path")));
            gw.set_env("FAKETIME", Some(&format!("@{at}")));
            gw.set_env("FAKETIME_DONT_FAKE_MONOTONIC", Some("1"));
        }
        None => {
            gw.set_env("LD_PRELOAD", None);
            gw.set_env("FAKETIME", None);
        }
    }
}

fn config(port: u16, clock: &str) -> String {
    test_config_with_node(port, "", &format!("clock = \"{clock}\""))
}

/// A persistent subscriber to `cmd/y` that leaves, 5 QoS 1 messages for it and a retained one
/// with a one-hour expiry; the gateway is stopped (SIGTERM) afterwards.
fn leave_state_behind(gw: &mut Gateway) {
    let (mut sub, _) = Raw::connect_with_expiry(gw.port, "dev-y", false, 7200);
    sub.subscribe_one("cmd/y", QoS::AtLeastOnce);
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5 {
        assert!(mosquitto_pub(
            gw.port,
            "cmd/y",
            &format!("c{i}"),
            &["-q", "1"]
        ));
    }
    assert!(mosquitto_pub(
        gw.port,
        "cfg/y",
        "kept",
        &[
            "-q",
            "1",
            "-r",
            "-V",
            "5",
            "-D",
            "publish",
            "message-expiry-interval",
            "3600"
        ]
    ));
    gw.stop();
}

fn assert_state_survived(gw: &Gateway) {
    let (mut sub, ack) = Raw::connect_with_expiry(gw.port, "dev-y", false, 7200);
    assert!(
        ack.session_present,
        "the session survived; log:\n{}",
        gw.log()
    );
    let got: Vec<String> = sub
        .publishes(5, WAIT)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, ["c0", "c1", "c2", "c3", "c4"]);
    assert_eq!(retained_once(gw.port, "cfg/y").as_deref(), Some("kept"));
}

#[test]
fn a_clock_corrected_forward_by_two_years_loses_nothing() {
    use holdfast_tests::{Mosquitto, MosquittoSub};
    let port = free_port();
    // A bridge to a cloud that is down for now: its backlog waits on disk.
    let cloud_port = free_port();
    let bridged = format!(
        "{}\n[[bridges]]\nname = \"cloud\"\nserver = \"mqtt://127.0.0.1:{cloud_port}\"\nclient_id = \"gw-jump\"\nremote_prefix = \"edge/\"\nforward = [\"sensors/#\"]\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
        config(port, "unreliable")
    );
    let mut gw = Gateway::start_config(&bridged, port);
    gw.stop();
    // The board boots with its clock at the image's date...
    fake_clock(&mut gw, Some("2025-01-01 00:00:00"));
    gw.restart();
    assert!(
        gw.log().contains("2025-01-01T00:00"),
        "the gateway ran with its clock at 2025-01-01"
    );
    for i in 0..10 {
        assert!(mosquitto_pub(
            port,
            "sensors/t",
            &format!("s{i}"),
            &[
                "-q",
                "1",
                "-V",
                "5",
                "-D",
                "publish",
                "message-expiry-interval",
                "3600"
            ]
        ));
    }
    leave_state_behind(&mut gw);
    // ...and NTP sets it right (23 months later) before the next start.
    fake_clock(&mut gw, None);
    std::thread::sleep(Duration::from_secs(2));
    let cloud = Mosquitto::start(cloud_port);
    let uplink = MosquittoSub::start(cloud.port, "edge/#", &["-q", "1", "-v"]);
    gw.restart();
    assert!(
        gw.log().contains("counting the downtime as zero"),
        "one log line says why; log:\n{}",
        gw.log()
    );
    assert_state_survived(&gw);
    let want: Vec<String> = (0..10).map(|i| format!("edge/sensors/t s{i}")).collect();
    assert_eq!(
        uplink.wait_for(10, Duration::from_secs(20)),
        want,
        "the bridge backlog (one-hour expiry) drains; log:\n{}",
        gw.log()
    );
}

#[test]
fn a_clock_set_back_by_two_years_loses_nothing_and_sessions_still_expire_while_running() {
    let port = free_port();
    let mut gw = Gateway::start_config(&config(port, "unreliable"), port);
    leave_state_behind(&mut gw);
    fake_clock(&mut gw, Some("2024-12-01 00:00:00"));
    gw.restart();
    assert_state_survived(&gw);

    // While running, expiry is monotonic: a session of 1 s is gone 1 s after its client left,
    // whatever the wall clock says.
    let (short, _) = Raw::connect_with_expiry(port, "short", false, 1);
    short.disconnect();
    std::thread::sleep(Duration::from_millis(2500));
    let (_, ack) = Raw::connect_with_expiry(port, "short", false, 1);
    assert!(!ack.session_present, "expired while running");
}

#[test]
fn with_a_trusted_clock_a_session_whose_real_downtime_passed_its_expiry_is_dropped() {
    let port = free_port();
    let mut gw = Gateway::start_config(&config(port, "synchronized"), port);
    let (sub, _) = Raw::connect_with_expiry(port, "brief", false, 1);
    sub.disconnect();
    let (sub, _) = Raw::connect_with_expiry(port, "long", false, 3600);
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(200));
    gw.stop();
    std::thread::sleep(Duration::from_millis(2500));
    gw.restart();
    let (_, ack) = Raw::connect_with_expiry(port, "brief", false, 1);
    assert!(!ack.session_present, "1 s of expiry, 2.5 s down: gone");
    let (_, ack) = Raw::connect_with_expiry(port, "long", false, 3600);
    assert!(ack.session_present, "an hour of expiry: kept");
    assert!(!gw.log().contains("counting the downtime as zero"));
}

#[test]
fn a_jump_while_running_is_logged_shown_in_sys_and_expires_nothing() {
    let port = free_port();
    let mut gw = Gateway::start_config(&config(port, "unreliable"), port);
    gw.stop();
    let file = gw.dir.path().join("faketime");
    std::fs::write(&file, "@2025-01-01 00:00:00\n").unwrap();
    let lib = libfaketime().expect("libfaketime (apt-get install faketime)");
    gw.set_env("LD_PRELOAD", Some(lib.to_str().expect("utf-8 path")));
    gw.set_env(
        "FAKETIME_TIMESTAMP_FILE",
        Some(file.to_str().expect("utf-8 path")),
    );
    gw.set_env("FAKETIME_NO_CACHE", Some("1"));
    gw.set_env("FAKETIME_DONT_FAKE_MONOTONIC", Some("1"));
    gw.restart();
    let events = holdfast_tests::MosquittoSub::start(
        port,
        "$SYS/brokers/gw-test/clients/keeper/connected",
        &[],
    );
    let (sub, _) = Raw::connect_with_expiry(port, "keeper", false, 60);
    sub.disconnect();
    let event = events.wait_for(1, WAIT).concat();
    assert!(
        event.contains("\"ts_synced\":false"),
        "published timestamps say the clock is not synchronized: {event}"
    );
    let state = retained_once(port, "$SYS/brokers/gw-test/clock").unwrap_or_default();
    assert!(state.contains("\"synchronized\":false"), "{state}");
    assert!(state.contains("\"trust\":\"unreliable\""), "{state}");

    // NTP sets the clock 2.5 years forward while the gateway runs.
    std::fs::write(&file, "@2027-07-01 00:00:00\n").unwrap();
    assert!(
        gw.wait_for_log("the wall clock jumped while running", WAIT),
        "log:\n{}",
        gw.log()
    );
    let state = retained_once(port, "$SYS/brokers/gw-test/clock").unwrap_or_default();
    assert!(state.contains("\"last_jump_ms\":"), "{state}");
    assert!(!state.contains("\"last_jump_ms\":null"), "{state}");
    let (_, ack) = Raw::connect_with_expiry(port, "keeper", false, 60);
    assert!(
        ack.session_present,
        "a 60 s session outlives a jump of years"
    );
}

#[test]
fn a_tls_bridge_with_the_clock_before_the_certificate_says_why_and_drains_once_it_is_right() {
    use holdfast_tests::pki::make_pki;
    use holdfast_tests::{Mosquitto, MosquittoSub, MosquittoTls, TempDir};
    let dir = TempDir::new("pki");
    let pki = make_pki(dir.path());
    let cloud = Mosquitto::start_tls(
        free_port(),
        &MosquittoTls {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            require_certificate: false,
        },
    );
    let ca = pki.ca.display().to_string();
    let sub = MosquittoSub::start(cloud.port, "edge/#", &["--cafile", &ca, "-q", "1", "-v"]);
    let port = free_port();
    let config = format!(
        r#"
[node]
name = "gw-clock"
clock = "unreliable"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[[bridges]]
name = "cloud"
server = "mqtts://127.0.0.1:{cloud}"
client_id = "gw-clock"
remote_prefix = "edge/"
forward = ["sensors/#"]
backoff_min = "100ms"
backoff_max = "1s"
tls = {{ ca = "{ca}" }}
"#,
        cloud = cloud.port
    );
    let mut gw = Gateway::start_config(&config, port);
    gw.stop();
    // Booted with the clock years before the certificate was made.
    fake_clock(&mut gw, Some("2020-01-01 00:00:00"));
    gw.restart();
    assert!(
        gw.wait_for_log("waiting for time sync", WAIT),
        "the log says it is the clock; log:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("this gateway's clock reads 2020-01-01T"));
    for i in 0..20 {
        assert!(mosquitto_pub(
            port,
            "sensors/t",
            &format!("m{i}"),
            &["-q", "1"]
        ));
    }
    assert!(sub.messages().is_empty());
    gw.stop();

    // Time sync: the same config, the real clock. The backlog drains, complete and in order.
    fake_clock(&mut gw, None);
    gw.restart();
    let got = sub.wait_for(20, Duration::from_secs(20));
    let want: Vec<String> = (0..20).map(|i| format!("edge/sensors/t m{i}")).collect();
    assert_eq!(got, want, "log:\n{}", gw.log());
}
