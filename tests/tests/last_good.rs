//! The last known good config: a config that does not load, or loads but does not start,
//! must not leave the board without a broker. The gateway starts on the config it last
//! started with (`{data_dir}/config.last-good.toml`), says so in the log and raises an alarm
//! (`$SYS/.../board/alarms`); with no good config to go back to it still refuses to start.

use holdfast_tests::{free_port, retained_once, test_config, wait_until, Gateway};
use std::net::TcpListener;
use std::time::Duration;

fn last_good_file(gw: &Gateway) -> std::path::PathBuf {
    gw.dir.path().join("data").join("config.last-good.toml")
}

#[test]
fn a_config_that_does_not_load_falls_back_to_the_last_one_that_started() {
    let port = free_port();
    let mut gw = Gateway::start_config(&test_config(port, ""), port);
    let saved = last_good_file(&gw);
    assert!(
        wait_until(Duration::from_secs(10), || saved.exists()),
        "the config that started is kept"
    );
    gw.stop();

    // A typo pushed by a technician: the checker refuses it...
    std::fs::write(gw.config_path(), test_config(port, "max_inflight = 0")).unwrap();
    // ...and the gateway runs on the last good one anyway, with an alarm.
    gw.restart();
    assert!(gw.wait_for_log(
        "running the last known good config",
        Duration::from_secs(10)
    ));
    assert!(gw
        .log()
        .contains("mqtt.max_inflight: must be between 1 and 65535"));
    let alarms = retained_once(port, "$SYS/brokers/gw-test/board/alarms").unwrap_or_default();
    assert!(
        alarms.contains("last known good config"),
        "alarm published: {alarms:?}"
    );
    gw.stop();

    // The broken file never becomes the last known good one.
    let kept = std::fs::read_to_string(&saved).unwrap();
    assert!(!kept.contains("max_inflight = 0"), "{kept}");
}

#[test]
fn a_config_that_loads_but_does_not_start_falls_back_too() {
    let port = free_port();
    let mut gw = Gateway::start_config(&test_config(port, ""), port);
    let saved = last_good_file(&gw);
    assert!(wait_until(Duration::from_secs(10), || saved.exists()));
    gw.stop();

    // A port another service holds: the new config is valid but cannot bind.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    std::fs::write(gw.config_path(), test_config(busy, "")).unwrap();
    gw.restart();
    assert!(gw.wait_for_log(
        "running the last known good config",
        Duration::from_secs(10)
    ));
    assert!(gw.log().contains("it does not start"));
    drop(taken);
    gw.stop();
}

#[test]
fn without_a_last_good_config_a_broken_one_still_refuses_to_start() {
    let port = free_port();
    let mut gw = Gateway::start_config(&test_config(port, ""), port);
    gw.stop();
    std::fs::remove_file(last_good_file(&gw)).unwrap();
    std::fs::write(gw.config_path(), test_config(port, "max_inflight = 0")).unwrap();
    let mut child = gw.spawn_unchecked();
    let status = wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(status, "it exits");
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(64), "the config exit code; log:\n{}", gw.log());
}
