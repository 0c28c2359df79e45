//! Test harness for black-box tests of the built `holdfast` binary.
//!
//! Owns process lifecycle for the tests: it writes a config into a fresh temp dir, starts the
//! gateway on free loopback ports, waits until the port accepts connections (never a blind
//! sleep), captures the log, and stops the process (SIGTERM, then SIGKILL) when dropped. It
//! never touches a non-loopback address.
#![forbid(unsafe_code)]

pub mod raw5;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `holdfast` binary under test: `$HOLDFAST_BIN`, else the workspace's target dir.
pub fn holdfast_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HOLDFAST_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("holdfast");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "holdfast binary not found under {}: run `cargo build -p holdfast` first or set HOLDFAST_BIN",
        target.display()
    );
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A fresh, unique directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates it.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "holdfast-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `addr` accepts a TCP connection.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `holdfast` process.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    /// The MQTT TCP port.
    pub port: u16,
    /// Its directory (config, log, data).
    pub dir: TempDir,
    log_path: PathBuf,
    config_path: PathBuf,
    /// Pass `--data-dir <dir>/data` (false when the config sets its own).
    use_data_dir_flag: bool,
}

/// Config of a gateway for tests: anonymous allowed, one loopback listener on `port`.
pub fn test_config(port: u16, extra_mqtt: &str) -> String {
    format!(
        r#"
[node]
name = "gw-test"

[mqtt]
{extra_mqtt}

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true
"#
    )
}

impl Gateway {
    /// Starts a gateway with a default test config (anonymous on, loopback).
    pub fn start() -> Gateway {
        Gateway::start_with_mqtt("")
    }

    /// Starts a gateway with extra `[mqtt]` keys.
    pub fn start_with_mqtt(extra_mqtt: &str) -> Gateway {
        let port = free_port();
        Gateway::start_config(&test_config(port, extra_mqtt), port)
    }

    /// Starts a gateway with a full config whose MQTT listener is on `port`.
    pub fn start_config(config: &str, port: u16) -> Gateway {
        Gateway::launch(config, port, true)
    }

    /// Starts a gateway whose config sets its own `node.data_dir` (no `--data-dir` flag).
    pub fn start_config_keeping_data_dir(config: &str, port: u16) -> Gateway {
        Gateway::launch(config, port, false)
    }

    fn launch(config: &str, port: u16, use_data_dir_flag: bool) -> Gateway {
        let dir = TempDir::new("gw");
        let config_path = dir.path().join("holdfast.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut gw = Gateway {
            child: None,
            port,
            log_path: dir.path().join("holdfast.log"),
            config_path,
            dir,
            use_data_dir_flag,
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(holdfast_bin());
        cmd.arg("run").arg("--config").arg(&self.config_path);
        if self.use_data_dir_flag {
            cmd.arg("--data-dir").arg(&data);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("HOLDFAST_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn holdfast");
        self.child = Some(child);
        if !wait_for_port(self.addr(), Duration::from_secs(20)) {
            panic!(
                "holdfast did not listen on {}; log:\n{}",
                self.addr(),
                self.log()
            );
        }
    }

    /// The MQTT listener address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
    }

    /// SIGKILL (a crash).
    pub fn kill9(&mut self) {
        let _ = self.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10));
    }

    /// Starts the process again with the same config and data dir.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_none() {
            self.kill9();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- holdfast log ({}) ----\n{}",
                self.log_path.display(),
                tail(&self.log(), 200)
            );
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command with a timeout, returning (exit success, stdout, stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.is_some_and(|s| s.success()), out, err)
}

/// A background `mosquitto_sub` collecting messages into a file.
#[derive(Debug)]
pub struct MosquittoSub {
    child: Child,
    out: PathBuf,
    _dir: TempDir,
}

impl MosquittoSub {
    /// Subscribes to `topic` with extra args (e.g. `-V 5`, `-q 1`, `-v`), printing one line per
    /// message. Waits until the subscription is acknowledged (`-d` debug output shows SUBACK).
    pub fn start(port: u16, topic: &str, extra: &[&str]) -> MosquittoSub {
        let dir = TempDir::new("sub");
        let out = dir.path().join("out");
        let err = dir.path().join("err");
        // stdbuf: mosquitto_sub block-buffers stdout when it is not a terminal.
        let child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-d",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create out"))
            .stderr(std::fs::File::create(&err).expect("create err"))
            .spawn()
            .expect("spawn mosquitto_sub (apt-get install mosquitto-clients)");
        let sub = MosquittoSub {
            child,
            out,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !sub.raw().contains("SUBACK") {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            sub.raw().contains("SUBACK"),
            "mosquitto_sub got no SUBACK: {}",
            sub.raw()
        );
        sub
    }

    /// Everything it printed (debug lines included).
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Only the message lines (not the `Client ... received/sending` debug lines).
    pub fn messages(&self) -> Vec<String> {
        self.raw()
            .lines()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed (mid"))
            .map(str::to_string)
            .collect()
    }

    /// Waits until at least `n` messages arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub` one message (an empty `message` is sent as a zero-length payload, `-n`);
/// returns whether it exited 0.
pub fn mosquitto_pub(port: u16, topic: &str, message: &str, extra: &[&str]) -> bool {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", topic];
    if message.is_empty() {
        args.push("-n");
    } else {
        args.extend(["-m", message]);
    }
    let (ok, _, err) = run_with_timeout(
        Command::new("mosquitto_pub").args(&args).args(extra),
        Duration::from_secs(10),
    );
    if !ok {
        eprintln!("mosquitto_pub failed: {err}");
    }
    ok
}
