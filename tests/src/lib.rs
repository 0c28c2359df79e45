//! Test harness for black-box tests of the built `holdfast` binary.
//!
//! Owns process lifecycle for the tests: it writes a config into a fresh temp dir, starts the
//! gateway on free loopback ports, waits until the port accepts connections (never a blind
//! sleep), captures the log, and stops the process (SIGTERM, then SIGKILL) when dropped. It
//! never touches a non-loopback address.
#![forbid(unsafe_code)]

pub mod pki;
pub mod proxy;
pub mod raw5;
pub mod v4;
pub mod web;

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

/// Polls `done` every 25 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A loopback port that was free a moment ago, reserved for this test process.
///
/// Picked below the kernel's ephemeral range (32768 and up by default), so that no outgoing
/// connection of any process (a client, a bridge) can take it as its source port between this
/// probe and the server's bind; and reserved across test processes with a lock file under
/// the temp dir, so that two suites running at once (a developer's and CI's) never share one.
/// Never the same port twice in one process either.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    /// A reservation older than this belongs to a test process long gone.
    const STALE: Duration = Duration::from_secs(1800);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join("holdfast-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let seed = u64::from(std::process::id()).wrapping_mul(7919);
    for _ in 0..COUNT {
        let n = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % u64::from(COUNT);
        let port = u16::try_from(u64::from(FIRST) + n).expect("below 32768");
        let lock = dir.join(port.to_string());
        let stale = std::fs::metadata(&lock)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if stale {
            let _ = std::fs::remove_file(&lock);
        }
        let reserved = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok();
        if reserved && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port between {FIRST} and {}",
        FIRST + COUNT
    );
}

/// A free loopback port for UDP (and TCP: [`free_port`] reserves it across processes).
pub fn free_udp_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
    /// Its `RUST_LOG` (`HOLDFAST_TEST_LOG`, or debug).
    rust_log: String,
    /// Further environment for the next (re)start, e.g. libfaketime's.
    extra_env: Vec<(String, Option<String>)>,
}

/// Config of a gateway for tests: anonymous allowed, one loopback listener on `port`.
pub fn test_config(port: u16, extra_mqtt: &str) -> String {
    test_config_with_node(port, extra_mqtt, "")
}

/// As [`test_config`], with extra `[node]` keys (e.g. `clock = "unreliable"`).
pub fn test_config_with_node(port: u16, extra_mqtt: &str, extra_node: &str) -> String {
    format!(
        r#"
[node]
name = "gw-test"
{extra_node}

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

/// One message on `topic` (a retained one arrives at once), read with `mosquitto_sub` within
/// 5 s; `None` when none came.
pub fn retained_once(port: u16, topic: &str) -> Option<String> {
    let port = port.to_string();
    let (ok, out, _) = run_with_timeout(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "5",
        ]),
        Duration::from_secs(8),
    );
    ok.then(|| out.trim().to_owned())
}

/// Polls [`retained_once`] until its text satisfies `done`; returns whether it did and the last
/// text seen.
pub fn wait_retained(
    port: u16,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(s) = retained_once(port, topic) {
            if done(&s) {
                return (true, s);
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (false, last)
}

/// The unsigned number after `"key":` in a flat-enough JSON text.
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Writes a password file under `dir` with these `(user, password)` pairs, through
/// `holdfast passwd add` (argon2id); returns its path.
pub fn password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    use std::io::Write as _;
    let file = dir.join("passwd");
    for (user, password) in users {
        let mut child = Command::new(holdfast_bin())
            .args(["passwd", "add", user, "--file"])
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run holdfast passwd");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{password}\n").as_bytes())
                .expect("write the password");
        }
        assert!(child.wait().expect("holdfast passwd").success());
    }
    file
}

/// [`test_config`] whose `[auth]` also has `password_file`: anonymous clients still get in,
/// and the users in the file are verified (only a verified user name counts as one).
pub fn test_config_with_users(port: u16, extra_mqtt: &str, passwd: &Path) -> String {
    format!(
        "{}password_file = {:?}\n",
        test_config(port, extra_mqtt),
        passwd.display().to_string()
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

    /// Starts a gateway logging at `rust_log` (a `RUST_LOG` value) instead of debug.
    pub fn start_config_logging_at(config: &str, port: u16, rust_log: &str) -> Gateway {
        Gateway::launch_logging_at(config, port, true, rust_log.to_owned())
    }

    fn launch(config: &str, port: u16, use_data_dir_flag: bool) -> Gateway {
        let rust_log = std::env::var("HOLDFAST_TEST_LOG").unwrap_or_else(|_| "debug".into());
        Gateway::launch_logging_at(config, port, use_data_dir_flag, rust_log)
    }

    fn launch_logging_at(
        config: &str,
        port: u16,
        use_data_dir_flag: bool,
        rust_log: String,
    ) -> Gateway {
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
            rust_log,
            extra_env: Vec::new(),
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
        for (k, v) in &self.extra_env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .env("RUST_LOG", &self.rust_log)
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

    /// Sets (`Some`) or removes (`None`) an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env
            .push((key.to_owned(), value.map(str::to_owned)));
    }

    /// The config file it was started with (a test may rewrite it before `restart`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Starts it again without waiting for its port (for a start that is meant to fail).
    pub fn spawn_unchecked(&mut self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let mut cmd = Command::new(holdfast_bin());
        cmd.arg("run").arg("--config").arg(&self.config_path);
        if self.use_data_dir_flag {
            cmd.arg("--data-dir").arg(self.dir.path().join("data"));
        }
        cmd.env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn holdfast")
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
        wait_until(timeout, || self.log().contains(needle))
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs. A process found exited is reaped and forgotten, so its
    /// pid (which the kernel may hand to another process) is never signalled later.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            // Already exited (and now reaped): its pid may belong to someone else by now.
            self.child = None;
            return Some(status);
        }
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
        let mut sub = MosquittoSub {
            child,
            out,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !sub.raw().contains("SUBACK") {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !sub.raw().contains("SUBACK") {
            // Whether it ran at all, and what it said on stderr (a refused connect says so).
            let exited = sub.child.try_wait();
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            panic!(
                "mosquitto_sub got no SUBACK in 10 s (exited: {exited:?}); stdout: {:?}; stderr: {stderr:?}",
                sub.raw()
            );
        }
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

// ============================================================================================
// Bridge helpers: a cloud broker (mosquitto) the gateway bridges to, a recording subscriber on
// it, and a QoS 1 device that knows exactly which of its messages were PUBACKed.
// ============================================================================================

/// TLS settings of a [`Mosquitto`] listener (PEM files).
#[derive(Debug, Clone)]
pub struct MosquittoTls {
    /// CA that signs the client certificates (and the server's, for the clients' sake).
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// Refuse clients without a certificate signed by `ca` (mutual TLS).
    pub require_certificate: bool,
}

/// A `mosquitto` broker on a loopback port, standing in for the cloud. Persistence is on (in
/// its own temp dir) and offline queues are unbounded, so a clean `stop` + `start` keeps the
/// recording subscriber's session and what was queued for it. Killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    /// Its listener port.
    pub port: u16,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts a plain TCP broker on `port` and waits until it listens.
    pub fn start(port: u16) -> Mosquitto {
        Mosquitto::launch(port, None, "")
    }

    /// Starts a plain TCP broker on `port` with `extra_conf` appended to its mosquitto.conf
    /// (whole lines, e.g. `"max_packet_size 1024\n"` or `"acl_file /path\n"`).
    pub fn start_with(port: u16, extra_conf: &str) -> Mosquitto {
        Mosquitto::launch(port, None, extra_conf)
    }

    /// Starts a TLS broker on `port` and waits until it listens.
    pub fn start_tls(port: u16, tls: &MosquittoTls) -> Mosquitto {
        Mosquitto::launch(port, Some(tls), "")
    }

    fn launch(port: u16, tls: Option<&MosquittoTls>, extra_conf: &str) -> Mosquitto {
        let dir = TempDir::new("mosquitto");
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             user root\n\
             persistence true\n\
             persistence_location {}/\n\
             autosave_interval 3600\n\
             max_queued_messages 0\n\
             queue_qos0_messages true\n\
             set_tcp_nodelay true\n\
             log_dest file {}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_type subscribe\n",
            dir.path().display(),
            dir.path().join("mosquitto.log").display(),
        );
        if let Some(t) = tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\nuse_identity_as_username {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.require_certificate,
                t.require_certificate,
            ));
        }
        conf.push_str(extra_conf);
        if !conf.ends_with('\n') {
            conf.push('\n');
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for_port(addr, Duration::from_secs(10)),
            "mosquitto did not listen on {addr}; log:\n{}",
            self.log()
        );
    }

    /// Starts it again (same config, same persistence file) after a `stop` or `kill9`.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: mosquitto saves its persistence file (sessions, queued messages).
    pub fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Its log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits until its log contains `needle` (subscriptions are logged, e.g. `"gw-001 1 edge/#"`).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message a [`CloudRecorder`] received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: bytes::Bytes,
}

/// A QoS 1 subscriber (rumqttc, persistent session) on the cloud broker that records every
/// message, reconnects by itself when the broker goes away, and stops on drop.
pub struct CloudRecorder {
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    client: rumqttc::Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CloudRecorder {
    /// Connects to `port` as `client_id` (clean session off), subscribes to `filter` at QoS 1
    /// and waits for the SUBACK.
    pub fn start(port: u16, client_id: &str, filter: &str) -> CloudRecorder {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut connection) = rumqttc::Client::new(o, 64);
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let thread = {
            let got = got.clone();
            let stop = stop.clone();
            let client = client.clone();
            let filter = filter.to_owned();
            std::thread::spawn(move || {
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match event {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                            if !a.session_present {
                                let _ =
                                    client.try_subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce);
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            let _ = subscribed_tx.send(());
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            got.lock().unwrap().push(Received {
                                topic: p.topic,
                                payload: p.payload,
                            });
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        subscribed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the cloud recorder got no SUBACK");
        CloudRecorder {
            got,
            stop,
            client,
            thread: Some(thread),
        }
    }

    /// Everything received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until `done` holds for what arrived (checked every 50 ms); returns whether it did.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.got.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nothing new arrived for `quiet` (or `timeout` passed); returns the count.
    pub fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = (self.count(), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let n = self.count();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                break;
            }
        }
        last.0
    }
}

impl std::fmt::Debug for CloudRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudRecorder")
            .field("received", &self.count())
            .finish()
    }
}

impl Drop for CloudRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            // The thread ends at its next event (the DISCONNECT, or a reconnect attempt).
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// What one connection of a [`publish_qos1`] device achieved.
#[derive(Debug, Default)]
pub struct DeviceRun {
    /// Sequence numbers the gateway PUBACKed, in PUBACK order.
    pub acked: Vec<u64>,
    /// The first sequence number not handed to the client (continue from here).
    pub next_seq: u64,
    /// Why the connection ended early (none when every submitted message was acknowledged).
    pub error: Option<String>,
}

/// A QoS 1 device (rumqttc, MQTT 3.1.1, clean session) that knows exactly which of its
/// messages the gateway PUBACKed.
#[derive(Debug, Clone)]
pub struct QosDevice {
    /// The gateway's MQTT port.
    pub port: u16,
    /// Its client id.
    pub client_id: String,
    /// The topic it publishes on.
    pub topic: String,
    /// Unacknowledged messages it keeps in flight.
    pub inflight: u16,
    /// When set, it stops submitting new messages (and waits for the outstanding PUBACKs).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// PUBACKs received, over all its connections (for watching progress).
    pub acks: std::sync::Arc<AtomicU64>,
}

impl QosDevice {
    /// A device publishing on `topic` with 100 messages in flight.
    pub fn new(port: u16, client_id: &str, topic: &str) -> QosDevice {
        QosDevice {
            port,
            client_id: client_id.to_owned(),
            topic: topic.to_owned(),
            inflight: 100,
            stop: None,
            acks: Default::default(),
        }
    }

    /// One connection: publishes sequence numbers `seqs` in order, payload `payload(seq)`,
    /// and returns which were PUBACKed. Returns early when the connection fails (the
    /// unacknowledged ones are abandoned) or, once `stop` is set, after the outstanding
    /// PUBACKs.
    pub async fn run(
        &self,
        seqs: std::ops::Range<u64>,
        payload: impl Fn(u64) -> Vec<u8> + Send + 'static,
    ) -> DeviceRun {
        publish_qos1(self, seqs, payload).await
    }

    /// Publishes from `first` on, forever, reconnecting (new sequence numbers) whenever the
    /// connection fails, until `stop` is set; returns every PUBACKed sequence number and the
    /// next unused one.
    pub async fn run_until_stopped(
        &self,
        first: u64,
        payload: impl Fn(u64) -> Vec<u8> + Send + Sync + Clone + 'static,
    ) -> (Vec<u64>, u64) {
        let stop = self
            .stop
            .clone()
            .expect("run_until_stopped needs a stop flag");
        let mut acked = Vec::new();
        let mut next = first;
        loop {
            let run = self.run(next..u64::MAX, payload.clone()).await;
            acked.extend(run.acked);
            next = run.next_seq;
            if run.error.is_none() || stop.load(Ordering::Relaxed) {
                return (acked, next);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn publish_qos1(
    dev: &QosDevice,
    seqs: std::ops::Range<u64>,
    payload: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> DeviceRun {
    use rumqttc::{AsyncClient, Event, Outgoing, Packet};
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};
    let (port, client_id, topic, inflight) = (dev.port, &dev.client_id, &dev.topic, dev.inflight);
    let stop = dev.stop.clone();
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(inflight);
    o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut ev) = AsyncClient::new(o, usize::from(inflight).max(10));
    let mut run = DeviceRun {
        next_seq: seqs.start,
        ..DeviceRun::default()
    };
    match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
        Ok(Ok(other)) => {
            run.error = Some(format!("unexpected first event {other:?}"));
            return run;
        }
        Ok(Err(e)) => {
            run.error = Some(e.to_string());
            return run;
        }
        Err(_) => {
            run.error = Some("no CONNACK in 10 s".into());
            return run;
        }
    }
    // Seqs handed to the client, in order, not yet seen leaving (Outgoing::Publish).
    let submitted = Arc::new(Mutex::new(VecDeque::<u64>::new()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(seqs.start));
    let producer_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let submitted = submitted.clone();
        let client = client.clone();
        let topic = topic.to_owned();
        let done = producer_done.clone();
        let next = next.clone();
        let end = seqs.end;
        tokio::spawn(async move {
            let mut seq = next.load(Ordering::Relaxed);
            while seq < end && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                submitted.lock().unwrap().push_back(seq);
                next.store(seq + 1, Ordering::Relaxed);
                if client
                    .publish(
                        topic.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        payload(seq),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                seq += 1;
            }
            done.store(true, Ordering::Release);
            // Wakes the poll loop below (Outgoing::Unsubscribe) even when nothing is in flight;
            // rumqttc's poll is not cancel-safe, so it is never wrapped in a timeout.
            let _ = client.unsubscribe("holdfast-test/wake-up").await;
        })
    };
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    loop {
        if producer_done.load(Ordering::Acquire)
            && by_pkid.is_empty()
            && submitted.lock().unwrap().is_empty()
        {
            break;
        }
        let event = match ev.poll().await {
            Err(e) => {
                run.error = Some(e.to_string());
                break;
            }
            Ok(e) => e,
        };
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(seq) = submitted.lock().unwrap().pop_front() {
                    by_pkid.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(a)) => {
                if let Some(seq) = by_pkid.remove(&a.pkid) {
                    run.acked.push(seq);
                    dev.acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
    producer.abort();
    let _ = producer.await;
    run.next_seq = next.load(Ordering::Relaxed);
    if run.error.is_none() && client.try_disconnect().is_ok() {
        while let Ok(e) = ev.poll().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
    run
}

/// `holdfast ctl` against a running test gateway.
pub mod ctl {
    use super::{holdfast_bin, run_with_timeout, wait_until, Gateway};
    use serde_json::Value;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// The control socket of a gateway started with `--data-dir <dir>/data`, once it exists.
    pub fn socket(gw: &Gateway) -> PathBuf {
        let path = gw.dir.path().join("data").join("ctl.sock");
        assert!(
            wait_until(WAIT, || path.exists()),
            "no control socket at {}; log:\n{}",
            path.display(),
            gw.log()
        );
        path
    }

    /// Runs `holdfast ctl --socket SOCK ARGS...`: (success, stdout, stderr).
    pub fn ctl(sock: &PathBuf, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(holdfast_bin());
        cmd.arg("ctl").arg("--socket").arg(sock).args(args);
        run_with_timeout(&mut cmd, WAIT)
    }

    /// `holdfast ctl --json ...`, which must succeed, parsed.
    pub fn ctl_json(sock: &PathBuf, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = ctl(sock, &all);
        assert!(ok, "ctl {args:?} failed: {err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {out}"))
    }
}

/// The response code libcoap's client printed (it prints `4.04 reason` for an error response
/// and nothing for a 2.xx one), read from the start of a line so a timestamp in its log
/// lines (`14:10:22.048`) is never taken for one.
pub fn coap_response_code(said: &str) -> Option<&str> {
    said.lines().map(str::trim_start).find_map(|l| {
        let b = l.as_bytes();
        let is_code = b.len() >= 4
            && (b'1'..=b'5').contains(&b[0])
            && b[1] == b'.'
            && b[2].is_ascii_digit()
            && b[3].is_ascii_digit()
            && b.get(4).is_none_or(|c| *c == b' ');
        is_code.then(|| &l[..4])
    })
}

/// A socat pty pair: the gateway's end and the device's end, as symlinks (by default in a temp
/// dir of its own).
#[derive(Debug)]
pub struct PtyPair {
    child: Child,
    /// The gateway's end (a symlink to /dev/pts/N).
    pub gateway: PathBuf,
    /// The device's end.
    pub device: PathBuf,
    _dir: Option<TempDir>,
}

impl PtyPair {
    /// Starts `socat` with both ends in a new temp dir and waits for them.
    pub fn new() -> PtyPair {
        let dir = TempDir::new("pty");
        let mut pair = PtyPair::at(&dir.path().join("gw"), &dir.path().join("dev"));
        pair._dir = Some(dir);
        pair
    }

    /// Starts `socat` with its ends at these paths (a USB adapter plugged in again where it
    /// was) and waits for them.
    pub fn at(gateway: &Path, device: &Path) -> PtyPair {
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", gateway.display()))
            .arg(format!("pty,raw,echo=0,link={}", device.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (apt-get install socat)");
        assert!(
            wait_until(Duration::from_secs(10), || gateway.exists()
                && device.exists()),
            "socat made no ptys"
        );
        PtyPair {
            child,
            gateway: gateway.to_path_buf(),
            device: device.to_path_buf(),
            _dir: None,
        }
    }
}

impl Default for PtyPair {
    fn default() -> Self {
        PtyPair::new()
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // socat removes its links when it exits cleanly; after a kill they may stay.
        let _ = std::fs::remove_file(&self.gateway);
        let _ = std::fs::remove_file(&self.device);
    }
}
