//! The gateway's log under journald: with `$JOURNAL_STREAM` naming its stderr, every line
//! starts with its syslog priority (`<N>`, sd-daemon(3)) so `journalctl -p warning` works, and
//! carries no timestamp of its own; with a `$JOURNAL_STREAM` that names another file (a
//! child that inherited the variable), the plain format with timestamps.

use holdfast_tests::{free_port, holdfast_bin, test_config, wait_for_port, TempDir};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the gateway with stderr into a file and `JOURNAL_STREAM` from `journal(file)`; returns
/// the log once it stopped.
fn log_with(journal: impl Fn(&std::fs::Metadata) -> String) -> String {
    let dir = TempDir::new("journal");
    let port = free_port();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(&config, test_config(port, "")).expect("config");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let stream = journal(&log.metadata().expect("stat"));
    let mut child = Command::new(holdfast_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", stream)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn holdfast");
    let up = wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX)),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(up, "the gateway did not start: {text}");
    text
}

#[test]
fn under_journald_every_line_carries_its_priority_and_no_timestamp() {
    let text = log_with(|m| format!("{}:{}", m.dev(), m.ino()));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let prio = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(prio, Some("3" | "4" | "6")),
            "no priority prefix: {line}"
        );
        assert!(!line.contains("Z "), "a timestamp of our own: {line}");
    }
    // The start-up warning about anonymous access is a warning, "holdfast running" info.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("anonymous MQTT access is ENABLED")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("holdfast running")),
        "{text}"
    );
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_keeps_the_plain_format() {
    let text = log_with(|m| format!("{}:{}", m.dev(), m.ino() + 1));
    assert!(!text.starts_with('<'), "{text}");
    assert!(
        text.lines().all(|l| l.get(..2) == Some("20")),
        "timestamps expected: {text}"
    );
}
