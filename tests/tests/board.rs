//! The board layer through the built binary: a `linux` board on a fake sysfs/procfs tree with a
//! regular file for `/dev/watchdog`, under a fake systemd (a datagram socket as
//! `$NOTIFY_SOCKET`), watched with mosquitto_sub on `$SYS/brokers/{node}/board/...`.

use holdfast_tests::{free_port, holdfast_bin, run_with_timeout, wait_for_port, TempDir};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes `text` to `root/rel`, creating parent directories.
fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A fake board: sysfs with one LED and one NIC, procfs with a device-tree serial and
/// meminfo, and an empty file standing in for the watchdog device.
fn fake_board(dir: &Path) {
    let led = "sys/class/leds/ACT";
    put(dir, &format!("{led}/brightness"), "0");
    put(dir, &format!("{led}/max_brightness"), "255");
    put(dir, &format!("{led}/trigger"), "[none] timer heartbeat");
    put(dir, &format!("{led}/delay_on"), "0");
    put(dir, &format!("{led}/delay_off"), "0");
    put(dir, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
    put(dir, "sys/class/net/eth0/address", "DC:A6:32:0A:0B:0C\n");
    std::fs::create_dir_all(dir.join("sys/class/net/eth0/device")).unwrap();
    put(dir, "sys/class/thermal/thermal_zone0/temp", "47250\n");
    put(dir, "proc/device-tree/serial-number", "10000000cafe0001\0");
    put(dir, "proc/device-tree/model", "Fake Pi 4\0");
    put(
        dir,
        "proc/meminfo",
        "MemTotal:  1000 kB\nMemAvailable:  600 kB\n",
    );
    put(dir, "proc/loadavg", "0.10 0.20 0.30 1/99 1234\n");
    put(dir, "proc/uptime", "100.5 200.0\n");
    put(dir, "watchdog", "");
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"
[node]
name = "gw-board"
data_dir = "{d}/data"

[[listeners]]
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[board]
kind = "linux"
watchdog_device = "{d}/watchdog"
watchdog_timeout = "2s"
# The data dir is on the test machine's disk, not the board's: its free space (a CI machine
# whose disk is 90% full) must not turn the board degraded under the tests that expect running.
disk_free_alarm = 0
health_interval = "1s"
led_status = "ACT"
sys_root = "{d}/sys"
proc_root = "{d}/proc"
"#
    )
}

/// Reads notifications until one equals `want`, for up to 10 s; returns all read.
fn wait_for_notification(sock: &UnixDatagram, want: &str) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg == want;
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} from holdfast; got {seen:?}");
}

/// One message on `topic` (retained ones arrive at once).
fn sub_one(port: u16, topic: &str) -> String {
    let (ok, out, err) = run_with_timeout(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
        ]),
        Duration::from_secs(15),
    );
    assert!(ok, "mosquitto_sub {topic}: {err}");
    out.trim().to_owned()
}

struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 5 s for `needle` in the log; fails the test with the log otherwise.
    fn expect_log(&self, needle: &str) {
        let seen =
            holdfast_tests::wait_until(Duration::from_secs(5), || self.log().contains(needle));
        assert!(seen, "no {needle:?} in the log:\n{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- holdfast log ----\n{}", self.log());
        }
    }
}

#[test]
fn a_linux_board_feeds_its_watchdog_tells_systemd_and_publishes_identity_and_health() {
    let dir = TempDir::new("board");
    fake_board(dir.path());
    let port = free_port();
    let cfg = dir.path().join("holdfast.toml");
    std::fs::write(&cfg, config(dir.path(), port)).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    let mut gw = spawn_logged(
        &cfg,
        &dir.path().join("holdfast.log"),
        &[
            ("NOTIFY_SOCKET", sock_path.as_os_str()),
            ("WATCHDOG_USEC", "2000000".as_ref()),
        ],
    );
    assert!(wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20)
    ));

    // systemd hears READY=1 and then WATCHDOG=1 (a 2 s WatchdogSec is fed every 0.5 s).
    let seen = wait_for_notification(&notify, "READY=1");
    assert!(seen.iter().all(|m| !m.starts_with("WATCHDOG")), "{seen:?}");
    wait_for_notification(&notify, "WATCHDOG=1");

    // The hardware watchdog (the fake device) is fed, and the status LED is lit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(dir.path().join("watchdog")).unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "watchdog not fed: {}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let brightness =
        std::fs::read_to_string(dir.path().join("sys/class/leds/ACT/brightness")).unwrap();
    assert_eq!(brightness, "255");
    assert!(
        gw.log().contains("does not take watchdog ioctls"),
        "{}",
        gw.log()
    );

    // Identity and health under $SYS, retained.
    let identity = sub_one(port, "$SYS/brokers/gw-board/board/identity");
    assert!(
        identity.contains("\"serial\":\"10000000cafe0001\""),
        "{identity}"
    );
    assert!(
        identity.contains("\"mac\":\"dc:a6:32:0a:0b:0c\""),
        "{identity}"
    );
    assert!(identity.contains("\"model\":\"Fake Pi 4\""), "{identity}");
    assert!(identity.contains("\"board\":\"linux\""), "{identity}");
    let health = sub_one(port, "$SYS/brokers/gw-board/board/health");
    assert!(health.contains("\"mem_total_bytes\":1024000"), "{health}");
    assert!(health.contains("\"cpu_temp_celsius\":47.25"), "{health}");
    assert!(health.contains("\"load\":[0.1,0.2,0.3]"), "{health}");
    assert!(health.contains("\"data_dir_free_bytes\":"), "{health}");
    assert_eq!(
        sub_one(port, "$SYS/brokers/gw-board/board/status"),
        "running"
    );

    // SIGTERM: STOPPING=1, exit 0, magic close, LED dark.
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for_notification(&notify, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", gw.log());
    let written = std::fs::read(dir.path().join("watchdog")).unwrap();
    assert_eq!(written.last(), Some(&b'V'), "no magic close: {written:?}");
    let brightness =
        std::fs::read_to_string(dir.path().join("sys/class/leds/ACT/brightness")).unwrap();
    assert_eq!(brightness, "0");
}

#[test]
fn a_watchdog_device_that_cannot_be_opened_degrades_the_gateway_with_an_alarm() {
    let dir = TempDir::new("board-degraded");
    fake_board(dir.path());
    // The device is gone (absent, busy or forbidden all fail the same open).
    std::fs::remove_file(dir.path().join("watchdog")).unwrap();
    let port = free_port();
    let cfg = dir.path().join("holdfast.toml");
    std::fs::write(&cfg, config(dir.path(), port)).unwrap();
    let child = Command::new(holdfast_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let up = holdfast_tests::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    let alarm = if up {
        sub_one(port, "$SYS/brokers/gw-board/board/alarms")
    } else {
        String::new()
    };
    let status = if up {
        sub_one(port, "$SYS/brokers/gw-board/board/status")
    } else {
        String::new()
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(up, "the gateway did not start without its watchdog: {log}");
    assert!(alarm.contains("no hardware watchdog"), "{alarm}");
    assert_eq!(status.trim(), "degraded");
    assert!(log.contains("running without it"), "{log}");
}

#[test]
fn a_required_watchdog_that_cannot_be_opened_is_a_start_error_naming_it() {
    let dir = TempDir::new("board-missing");
    let port = free_port();
    let cfg = dir.path().join("holdfast.toml");
    std::fs::write(
        &cfg,
        config(dir.path(), port).replace("[board]\n", "[board]\nwatchdog_required = true\n"),
    )
    .unwrap();
    // No fake tree: the watchdog file does not exist.
    let (ok, _, err) = run_with_timeout(
        Command::new(holdfast_bin())
            .args(["run", "--config"])
            .arg(&cfg),
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(err.contains("cannot open the watchdog device"), "{err}");
    assert!(err.contains("board.watchdog_device"), "{err}");
}

#[test]
fn the_resolve_command_finds_localhost_through_etc_hosts() {
    let (ok, out, err) = run_with_timeout(
        Command::new(holdfast_bin()).args(["resolve", "localhost"]),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "127.0.0.1" || l == "::1"), "{out}");
}

/// Starts the gateway on `cfg` at log level info, with `envs` and its output in `log`.
fn spawn_logged(cfg: &Path, log: &Path, envs: &[(&str, &std::ffi::OsStr)]) -> Running {
    let log_file = std::fs::File::create(log).unwrap();
    let child = Command::new(holdfast_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    Running {
        child,
        log: log.to_owned(),
    }
}

#[test]
fn the_factory_reset_button_held_wipes_the_data_and_a_short_press_does_not() {
    let dir = TempDir::new("board-button");
    fake_board(dir.path());
    let button = dir.path().join("button");
    std::fs::write(&button, "0\n").unwrap();
    let port = free_port();
    let cfg = dir.path().join("holdfast.toml");
    std::fs::write(
        &cfg,
        config(dir.path(), port).replace(
            "[board]\n",
            &format!(
                "[board]\nreset_button = \"{}\"\nreset_button_hold = \"3s\"\n",
                button.display()
            ),
        ),
    )
    .unwrap();
    let log = dir.path().join("holdfast.log");
    let mut gw = spawn_logged(&cfg, &log, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(wait_for_port(addr, Duration::from_secs(20)), "{}", gw.log());
    assert!(holdfast_tests::mosquitto_pub(
        port,
        "keep/me",
        "before",
        &["-r", "-q", "1"]
    ));
    assert_eq!(
        holdfast_tests::retained_once(port, "keep/me").as_deref(),
        Some("before")
    );

    // A press shorter than the hold time resets nothing.
    std::fs::write(&button, "1\n").unwrap();
    gw.expect_log("factory-reset button pressed");
    std::fs::write(&button, "0\n").unwrap();
    gw.expect_log("released early");
    assert!(gw.child.try_wait().unwrap().is_none(), "{}", gw.log());

    // Held for the whole hold time: the gateway stops, wipes its data directory and exits.
    std::fs::write(&button, "1\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running: {}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = gw.log();
    assert!(status.success(), "{status:?}: {text}");
    assert!(text.contains("factory reset done"), "{text}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the data directory: {left:?}");
    // The watchdog was disarmed with the magic close before the wipe.
    let written = std::fs::read(dir.path().join("watchdog")).unwrap();
    assert_eq!(written.last(), Some(&b'V'), "no magic close: {written:?}");

    // It starts afresh: the retained message is gone.
    std::fs::write(&button, "0\n").unwrap();
    let gw = spawn_logged(&cfg, &dir.path().join("holdfast-2.log"), &[]);
    assert!(wait_for_port(addr, Duration::from_secs(20)), "{}", gw.log());
    assert_eq!(holdfast_tests::retained_once(port, "keep/me"), None);
}
