//! The `holdfast` command line: check, run on defaults, port in use, SIGTERM.

use holdfast_tests::{free_port, holdfast_bin, run_with_timeout, Gateway, TempDir};
use std::process::Command;
use std::time::Duration;

#[test]
fn check_reports_every_problem_with_its_line_and_exits_64() {
    let dir = TempDir::new("check");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[mqtt]\nmax_inflight = 0\nmax_packet_size = \"lots\"\n\n[[listeners]]\nkind = \"tcp\"\nbind = \"nowhere\"\n",
    )
    .unwrap();
    let out = Command::new(holdfast_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.max_inflight"), "{err}");
    assert!(err.contains("mqtt.max_packet_size"), "{err}");
    assert!(err.contains("listeners[0].bind"), "{err}");
    assert!(err.contains(":2:"), "line numbers expected: {err}");
}

#[test]
fn check_accepts_the_example_config() {
    let dir = TempDir::new("example");
    let out = Command::new(holdfast_bin())
        .arg("example-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg = dir.path().join("example.toml");
    std::fs::write(&cfg, &out.stdout).unwrap();
    let out = Command::new(holdfast_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_port_is_a_one_line_error_and_a_non_zero_exit() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let data = TempDir::new("taken");
    let (ok, _out, err) = run_with_timeout(
        Command::new(holdfast_bin())
            .arg("run")
            .env("HOLDFAST__LISTENERS__0__BIND", format!("127.0.0.1:{port}"))
            .env("HOLDFAST__NODE__DATA_DIR", data.path()),
        Duration::from_secs(20),
    );
    assert!(!ok, "must exit non-zero");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    assert!(
        line.contains("tcp:default") && line.contains(&port.to_string()),
        "{line}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn sigterm_sends_v5_clients_server_shutting_down_and_exits_zero() {
    use rumqttc::v5::{mqttbytes::v5::Packet, AsyncClient, Event, MqttOptions};
    let mut gw = Gateway::start();
    let port = gw.port;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let mut opts = MqttOptions::new("v5-shutdown", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (_client, mut ev) = AsyncClient::new(opts, 10);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    let _ = tx.send(Some(d.reason_code as u8));
                    return;
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                )) => {
                    let _ = tx.send(Some(reason_code as u8));
                    return;
                }
                Err(e) => {
                    eprintln!("v5 client ended: {e:?}");
                    return;
                }
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        None,
        "connack"
    );
    let status = gw.stop().expect("exits within the grace period");
    assert!(status.success(), "exit status {status:?}");
    let code = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("got DISCONNECT");
    assert_eq!(code, Some(0x8B));
}

#[test]
fn run_with_no_config_uses_the_built_in_defaults() {
    // Defaults bind 0.0.0.0:1883; move only the port so the test stays on a free one.
    let port = free_port();
    let dir = TempDir::new("defaults");
    let child = Command::new(holdfast_bin())
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .env("HOLDFAST__LISTENERS__0__BIND", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let up = holdfast_tests::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        up,
        "did not listen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("every MQTT client will be refused"), "{log}");
}

/// `holdfast check` on a config; returns (exit success, stdout, stderr).
fn check(config: &str) -> (bool, String, String) {
    let dir = TempDir::new("check-warn");
    let cfg = dir.path().join("holdfast.toml");
    std::fs::write(&cfg, config).unwrap();
    run_with_timeout(
        Command::new(holdfast_bin())
            .arg("check")
            .arg("--config")
            .arg(&cfg),
        Duration::from_secs(10),
    )
}

#[test]
fn check_prints_the_start_up_security_warnings_for_plain_tcp_and_anonymous_access() {
    // Nothing is bound by check, so the non-loopback address is only ever read.
    let (ok, out, err) = check(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"0.0.0.0:1883\"\n\n[auth]\nallow_anonymous = true\n",
    );
    assert!(ok && out.contains(": OK"), "{out}{err}");
    assert!(
        err.contains("warning: !!! anonymous MQTT access is ENABLED on non-loopback addresses (0.0.0.0:1883)"),
        "{err}"
    );
    assert!(
        err.contains("warning: !!! plain (unencrypted) MQTT is enabled on non-loopback addresses (tcp:default on 0.0.0.0:1883)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn check_of_a_loopback_only_config_prints_no_plain_tcp_warning() {
    let (ok, out, err) = check(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1883\"\n\n[auth]\nallow_anonymous = true\n",
    );
    assert!(ok && out.contains(": OK"), "{out}{err}");
    assert!(!err.contains("plain (unencrypted)"), "{err}");
    assert_eq!(
        err.trim(),
        "warning: anonymous MQTT access is ENABLED (auth.allow_anonymous = true), on loopback listeners only"
    );
    // With a password file instead, a loopback-only config is silent.
    let (ok, _, err) = check(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1883\"\n\n[auth]\npassword_file = \"/etc/holdfast/passwd\"\n",
    );
    assert!(ok && err.is_empty(), "{err}");
}

/// (soft, hard) "Max open files" of a running process, from /proc.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_owned(), fields[1].to_owned())
}

#[test]
fn run_raises_its_soft_nofile_limit_to_the_hard_limit() {
    let port = free_port();
    let dir = TempDir::new("nofile");
    // A shell lowers the soft limit to 512, then becomes holdfast (same pid).
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -Sn 512 && exec \"$0\" \"$@\""])
        .arg(holdfast_bin())
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .env("HOLDFAST__LISTENERS__0__BIND", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = holdfast_tests::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    let (soft, hard) = nofile_of(child.id());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert!(up, "holdfast did not listen");
    if hard == "unlimited" {
        // The kernel refuses an unlimited soft NOFILE; nothing to compare against.
        eprintln!("hard RLIMIT_NOFILE is unlimited here; skipped");
        return;
    }
    assert_ne!(
        hard, "512",
        "the hard limit must be above the lowered soft one"
    );
    assert_eq!(soft, hard, "soft RLIMIT_NOFILE not raised");
}
