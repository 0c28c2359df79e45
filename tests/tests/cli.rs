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
