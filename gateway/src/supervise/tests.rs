//! The board task against a fake watchdog (a regular file that records keepalives) and a fake
//! sysfs tree, in-process with a real broker.

use super::*;
use crate::app::Gateway;
use crate::config;
use std::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A fake sysfs with a `fault` and a `status` LED, a fake watchdog device, a data dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for led in ["status", "fault", "uplink"] {
            let d = dir.path().join(format!("sys/class/leds/{led}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("brightness"), "0").unwrap();
            std::fs::write(d.join("max_brightness"), "1").unwrap();
            std::fs::write(d.join("trigger"), "[none] timer").unwrap();
            std::fs::write(d.join("delay_on"), "0").unwrap();
            std::fs::write(d.join("delay_off"), "0").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("watchdog"), b"").unwrap();
        Fixture { dir }
    }

    fn config(&self, data_dir: &Path) -> Config {
        self.config_with(data_dir, "")
    }

    /// The config with `extra` appended (its first lines still in `[board]`).
    fn config_with(&self, data_dir: &Path, extra: &str) -> Config {
        let p = self.dir.path().display();
        let text = format!(
            r#"
[node]
name = "gw-test"
data_dir = "{data}"

[[listeners]]
bind = "127.0.0.1:0"

[auth]
allow_anonymous = true

[board]
kind = "linux"
watchdog_device = "{p}/watchdog"
watchdog_timeout = "1s"
health_interval = "0s"
led_status = "status"
led_fault = "fault"
sys_root = "{p}/sys"
proc_root = "{p}/proc"
{extra}
"#,
            data = data_dir.display()
        );
        config::parse(&text, "test.toml", Vec::new()).unwrap()
    }

    fn keepalives(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("watchdog")).unwrap()
    }

    fn led(&self, name: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("sys/class/leds/{name}/brightness")),
        )
        .unwrap()
    }

    /// Waits until the watchdog file has more than `n` bytes. Blocks the test thread (not a
    /// worker): the main runtime's timers may stop while the test stalls it.
    fn wait_for_feeds_beyond(&self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let len = self.keepalives().len();
            if len > n {
                return len;
            }
            assert!(
                Instant::now() < deadline,
                "the watchdog was not fed (still {len} bytes)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until LED `name` shows `value`.
    fn wait_for_led(&self, name: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.led(name) != value && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.led(name), value, "LED {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_only_while_the_runtime_answers_and_closed_cleanly_on_shutdown() {
    let fx = Fixture::new();
    let data = fx.dir.path().join("data");
    let shutdown = CancellationToken::new();
    let gw = Gateway::bind(fx.config(&data), shutdown.clone())
        .await
        .unwrap();
    let broker = gw.broker();
    let reporter = broker.clone();
    let serving = tokio::spawn(gw.serve());

    // Healthy: fed every quarter of the 1 s timeout, status LED on, the probe file written.
    let n = fx.wait_for_feeds_beyond(0);
    fx.wait_for_feeds_beyond(n);
    assert_eq!(fx.led("status"), "1");
    assert_eq!(fx.led("fault"), "0");
    assert!(data.join(PROBE_FILE).exists());
    // Why the board last reset is published (a stand-in device keeps no boot status), and the
    // reset history says the watchdog is armed.
    let topic = format!(
        "$SYS/brokers/{}/board/reset_reason",
        reporter.config.node.name
    );
    let reason = reporter.with_router(|r| r.retained_payload(&topic));
    let reason = String::from_utf8_lossy(reason.as_deref().unwrap_or_default()).into_owned();
    assert!(
        reason.starts_with("unknown to the driver (0 unclean"),
        "{reason:?}"
    );
    let history = std::fs::read_to_string(data.join(holdfast_board::resets::FILE)).unwrap();
    assert!(history.trim_end().ends_with(" 0 1"), "{history:?}");

    // Stall: another thread holds the router lock, as a deadlock or a runaway batch would.
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let staller = std::thread::spawn(move || {
        broker.with_router(|_| {
            locked_tx.send(()).unwrap();
            // Bounded, so a failing test cannot hang the suite.
            release_rx.recv_timeout(Duration::from_secs(20)).ok();
        });
    });
    locked_rx.recv().unwrap();
    // The fault LED lights within a feed period or two; a probe that had passed before the
    // stall may have fed once more, but nothing after that, for well over a whole timeout.
    fx.wait_for_led("fault", "1");
    assert_eq!(fx.led("status"), "0");
    let stalled_at = fx.keepalives().len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fx.keepalives().len(),
        stalled_at,
        "the watchdog was fed while the router was stalled"
    );

    // Recovery: feeding resumes and the LEDs say running again.
    release_tx.send(()).unwrap();
    staller.join().unwrap();
    fx.wait_for_feeds_beyond(stalled_at);
    fx.wait_for_led("status", "1");
    assert_eq!(fx.led("fault"), "0");

    // Clean shutdown: the magic close is the last thing written, the LEDs go dark.
    shutdown.cancel();
    serving.await.unwrap();
    let written = fx.keepalives();
    assert_eq!(written.last(), Some(&b'V'));
    assert!(written[..written.len() - 1].iter().all(|b| *b == 0));
    assert_eq!(fx.led("status"), "0");
    // The clean close is recorded: the next boot does not count this run as a reset.
    let history = std::fs::read_to_string(data.join(holdfast_board::resets::FILE)).unwrap();
    assert!(history.trim_end().ends_with(" 0 0"), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_data_dir_degrades_the_gateway_but_keeps_feeding() {
    let fx = Fixture::new();
    // A regular file where the data directory should be: nothing can be created under it
    // (as on a read-only or worn-out card). A reset would not mend it: no boot loop.
    let data = fx.dir.path().join("not-a-dir");
    std::fs::write(&data, b"").unwrap();
    let shutdown = CancellationToken::new();
    let gw = Gateway::bind(fx.config(&data), shutdown.clone())
        .await
        .unwrap();
    let broker = gw.broker();
    let serving = tokio::spawn(gw.serve());
    let n = fx.wait_for_feeds_beyond(0);
    fx.wait_for_feeds_beyond(n);
    assert_eq!(fx.led("fault"), "0");
    // The alarm list and the status are two retained messages published one after the other:
    // wait for both (reading the status the instant the alarm shows raced under load).
    let retained = |topic: &str| {
        broker
            .with_router(|r| r.retained_payload(topic))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (alarms, status) = loop {
        let alarms = retained("$SYS/brokers/gw-test/board/alarms");
        let status = retained("$SYS/brokers/gw-test/board/status");
        let done = alarms.contains("storage degraded") && status == "degraded";
        if done || Instant::now() >= deadline {
            break (alarms, status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(alarms.contains("storage degraded"), "{alarms}");
    assert_eq!(status, "degraded", "alarms: {alarms}");
    shutdown.cancel();
    serving.await.unwrap();
    assert_eq!(fx.keepalives().last(), Some(&b'V'));
}

#[tokio::test]
async fn the_feed_period_is_a_quarter_of_the_shortest_watchdog() {
    let fx = Fixture::new();
    let data = fx.dir.path().join("data");
    let mut config = fx.config(&data);
    config.board.watchdog_timeout = Duration::from_secs(8);
    let broker = Broker::new(
        Arc::new(config.clone()),
        Arc::new(crate::auth::Authenticator::from_config(&config.auth).unwrap()),
        CancellationToken::new(),
    );
    let board = open_board(&config).unwrap();
    let s = Supervisor::new(
        board,
        SystemdNotify::from_vars(None, None, None, 1),
        broker.clone(),
    );
    assert_eq!(s.feed_period(), Some(Duration::from_secs(2)));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify");
    let _server = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    let notify =
        SystemdNotify::from_vars(Some(sock.into_os_string()), Some("4000000".into()), None, 1);
    let board = open_board(&config).unwrap();
    let s = Supervisor::new(board, notify, broker.clone());
    assert_eq!(s.feed_period(), Some(Duration::from_secs(1)));

    config.board.kind = BoardKind::Host;
    let s = Supervisor::new(
        open_board(&config).unwrap(),
        SystemdNotify::from_vars(None, None, None, 1),
        broker,
    );
    assert_eq!(s.feed_period(), None);
}

#[test]
fn start_up_feeds_the_watchdog_until_the_supervisor_takes_over_and_for_no_longer_than_its_limit() {
    let fx = Fixture::new();
    let data = fx.dir.path().join("data");
    let board = open_board(&fx.config(&data)).unwrap();
    // A 1 s watchdog is fed every 250 ms while start-up runs.
    let feeder = StartupFeeder::start(board, Duration::from_secs(60)).unwrap();
    let n = fx.wait_for_feeds_beyond(0);
    fx.wait_for_feeds_beyond(n);
    let mut board = feeder.finish();
    let handed_over = fx.keepalives().len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fx.keepalives().len(), handed_over, "fed after finish");
    // Past its limit it stops feeding: a start-up that hangs gets the board reset.
    let feeder = StartupFeeder::start(board, Duration::from_millis(100)).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let fed = fx.keepalives().len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fx.keepalives().len(), fed, "fed past the limit");
    board = feeder.finish();
    board.close().unwrap();
    assert_eq!(fx.keepalives().last(), Some(&b'V'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_that_fails_after_the_board_opened_disarms_the_watchdog() {
    let fx = Fixture::new();
    let data = fx.dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut config = fx.config(&data);
    config.listeners[0].bind = format!("127.0.0.1:{port}").parse().unwrap();
    let err = Gateway::bind(config, CancellationToken::new())
        .await
        .expect_err("the port is taken");
    assert!(err.to_string().contains("cannot bind"), "{err}");
    // Opened (and fed) first, closed with the magic close on the way out.
    let written = fx.keepalives();
    assert_eq!(written.last(), Some(&b'V'), "{written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_led_blinks_while_a_bridge_is_down() {
    let fx = Fixture::new();
    let data = fx.dir.path().join("data");
    // A bridge to a port nobody listens on: its link stays down, its messages wait on disk.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let config = fx.config_with(
        &data,
        &format!(
            "led_uplink = \"uplink\"\n[[bridges]]\nname = \"cloud\"\nserver = \"mqtt://127.0.0.1:{port}\"\nforward = [\"up/#\"]\n"
        ),
    );
    let shutdown = CancellationToken::new();
    let gw = Gateway::bind(config, shutdown.clone()).await.unwrap();
    let serving = tokio::spawn(gw.serve());
    fx.wait_for_feeds_beyond(0);
    let trigger = |led: &str| {
        std::fs::read_to_string(fx.dir.path().join(format!("sys/class/leds/{led}/trigger")))
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while trigger("uplink").trim() != "timer" {
        assert!(Instant::now() < deadline, "the uplink LED never blinked");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Serving all the same: the status LED is on, the fault LED off.
    assert_eq!(fx.led("status"), "1");
    assert_eq!(fx.led("fault"), "0");
    shutdown.cancel();
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_data_directory_raises_an_alarm() {
    let fx = Fixture::new();
    let data = fx.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A threshold just above what is free here makes this file system "nearly full".
    let st = nix::sys::statvfs::statvfs(&data).unwrap();
    #[allow(clippy::useless_conversion)]
    let free_percent = u64::from(st.blocks_available()) * 100 / u64::from(st.blocks()).max(1);
    if free_percent >= 98 {
        eprintln!("skipped: the test file system is {free_percent}% free");
        return;
    }
    let threshold = free_percent + 1;
    let config = fx.config_with(&data, &format!("disk_free_alarm = {threshold}\n"));
    let shutdown = CancellationToken::new();
    let gw = Gateway::bind(config, shutdown.clone()).await.unwrap();
    let broker = gw.broker();
    let serving = tokio::spawn(gw.serve());
    let topic = format!("$SYS/brokers/{}/board/alarms", broker.config.node.name);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alarms = broker.with_router(|r| r.retained_payload(&topic));
        let text = String::from_utf8_lossy(alarms.as_deref().unwrap_or_default()).into_owned();
        if text.contains("nearly full") {
            break;
        }
        assert!(Instant::now() < deadline, "no disk alarm: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    shutdown.cancel();
    serving.await.unwrap();
}
