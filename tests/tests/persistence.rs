//! State that must survive a restart of the gateway: retained messages (on the sled store in
//! the data dir). Persistent sessions are tested in `persistent_sessions.rs`; the
//! store-and-forward queue follows with the bridge work.

use holdfast_tests::{mosquitto_pub, Gateway, MosquittoSub};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn retained_after_restart(gw: &Gateway) -> Vec<String> {
    let sub = MosquittoSub::start(gw.port, "keep/#", &["-v"]);
    let mut got = sub.wait_for(3, Duration::from_secs(2));
    got.sort();
    got
}

#[test]
fn retained_messages_and_their_removal_survive_a_clean_restart() {
    let mut gw = Gateway::start();
    assert!(mosquitto_pub(gw.port, "keep/a", "A", &["-r", "-q", "1"]));
    assert!(mosquitto_pub(gw.port, "keep/b", "B", &["-r", "-q", "1"]));
    assert!(mosquitto_pub(gw.port, "keep/c", "C", &["-r", "-q", "1"]));
    assert!(mosquitto_pub(gw.port, "keep/b", "", &["-r", "-q", "1"]));
    gw.restart();
    assert!(gw.wait_for_log("state restored", WAIT));
    assert_eq!(retained_after_restart(&gw), vec!["keep/a A", "keep/c C"]);
}

#[test]
fn retained_messages_survive_kill_9_once_the_background_flush_ran() {
    let mut gw = Gateway::start();
    assert!(mosquitto_pub(gw.port, "keep/x", "X", &["-r", "-q", "1"]));
    // The store flushes in the background every 500 ms (documented); a crash before that may
    // lose the newest retained message, never corrupt the others.
    std::thread::sleep(Duration::from_millis(3000));
    gw.kill9();
    gw.restart();
    assert_eq!(retained_after_restart(&gw), vec!["keep/x X"]);
}

#[test]
fn an_unusable_data_dir_is_reported_loudly_and_the_broker_still_serves() {
    let dir = holdfast_tests::TempDir::new("ro");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file where the data dir should be").unwrap();
    let port = holdfast_tests::free_port();
    let config = format!(
        "[node]\nname = \"gw-test\"\ndata_dir = \"{}\"\n\n{}",
        blocker.display(),
        holdfast_tests::test_config(port, "").replace("[node]\nname = \"gw-test\"\n", "")
    );
    let gw = Gateway::start_config_keeping_data_dir(&config, port);
    assert!(
        gw.wait_for_log("cannot open the state store", WAIT),
        "{}",
        gw.log()
    );
    let sub = MosquittoSub::start(gw.port, "t", &[]);
    assert!(mosquitto_pub(gw.port, "t", "still serving", &[]));
    assert_eq!(sub.wait_for(1, WAIT), vec!["still serving"]);
}
