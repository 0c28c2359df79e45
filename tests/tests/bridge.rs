//! The store-and-forward bridge against a real cloud broker (mosquitto on a loopback port):
//! downlink, outages, `kill -9`, the byte cap, mutual TLS, a full disk and a broker restart.
//!
//! The cloud side is a [`Mosquitto`] with a persistent [`CloudRecorder`] session on it; the
//! devices are rumqttc clients that record which sequence numbers the gateway PUBACKed, so
//! every test asserts on exactly what was acknowledged and exactly what arrived upstream.
//! "Uplink down" is a stopped mosquitto whose saved session still holds the recorder's
//! subscription, so nothing forwarded later can arrive before the subscriber is there.

use holdfast_tests::{
    free_port, mosquitto_pub, run_with_timeout, CloudRecorder, Gateway, Mosquitto, MosquittoSub,
    QosDevice, Received,
};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const PREFIX: &str = "edge/gw-001/";
const STATS: &str = "$SYS/brokers/gw-001/bridges/cloud/stats";

/// A gateway config named gw-001 with one bridge "cloud" to `server`; `bridge` adds keys to
/// `[[bridges]]` (at least `forward`), `node` to `[node]`.
fn config(port: u16, server: &str, bridge: &str, node: &str) -> String {
    format!(
        r#"
[node]
name = "gw-001"
{node}

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[[bridges]]
name = "cloud"
server = "{server}"
client_id = "gw-001"
remote_prefix = "{PREFIX}"
qos = 1
backoff_min = "100ms"
backoff_max = "1s"
{bridge}
"#
    )
}

fn mqtt_url(port: u16) -> String {
    format!("mqtt://127.0.0.1:{port}")
}

/// A cloud broker with a recorder subscribed to everything below the prefix.
fn cloud() -> (Mosquitto, CloudRecorder) {
    let m = Mosquitto::start(free_port());
    let rec = CloudRecorder::start(m.port, "cloud-app", &format!("{PREFIX}#"));
    (m, rec)
}

/// A cloud broker that is down, but whose saved session already holds the recorder's
/// subscription: once restarted, everything the bridge forwards reaches the recorder.
fn cloud_down() -> (Mosquitto, CloudRecorder) {
    let (mut m, rec) = cloud();
    m.stop();
    (m, rec)
}

/// A gateway bridging to `cloud_port`, with `bridge` keys added.
fn gateway(cloud_port: u16, bridge: &str) -> Gateway {
    let port = free_port();
    Gateway::start_config(&config(port, &mqtt_url(cloud_port), bridge, ""), port)
}

/// The latest `$SYS/.../bridges/cloud/stats` JSON (retained, refreshed every second).
fn bridge_stats(port: u16) -> Option<String> {
    let port = port.to_string();
    let (ok, out, _) = run_with_timeout(
        Command::new("mosquitto_sub").args([
            "-h", "127.0.0.1", "-p", &port, "-t", STATS, "-C", "1", "-W", "5",
        ]),
        Duration::from_secs(8),
    );
    ok.then(|| out.trim().to_owned())
}

/// Waits until the stats JSON satisfies `done`; returns the last one seen.
fn wait_stats(port: u16, timeout: Duration, done: impl Fn(&str) -> bool) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(s) = bridge_stats(port) {
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
fn num(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = json[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `"{device}:{seq}"` payloads, padded with '.' to `size` bytes.
fn payload(device: u64, size: usize) -> impl Fn(u64) -> Vec<u8> + Send + Sync + Clone + 'static {
    move |seq| {
        let mut p = format!("{device}:{seq}:").into_bytes();
        if p.len() < size {
            p.resize(size, b'.');
        }
        p
    }
}

/// `(device, seq)` of a payload made by [`payload`].
fn parse(m: &Received) -> (u64, u64) {
    let text = std::str::from_utf8(&m.payload).expect("utf-8 payload");
    let mut parts = text.split(':');
    let device = parts.next().and_then(|d| d.parse().ok());
    let seq = parts.next().and_then(|s| s.parse().ok());
    match (device, seq) {
        (Some(d), Some(s)) => (d, s),
        _ => panic!("unexpected payload {text:?} on {}", m.topic),
    }
}

/// Per device: the seqs in arrival order.
fn by_device(messages: &[Received]) -> HashMap<u64, Vec<u64>> {
    let mut out: HashMap<u64, Vec<u64>> = HashMap::new();
    for m in messages {
        let (d, s) = parse(m);
        out.entry(d).or_default().push(s);
    }
    out
}

/// Checks that the first arrival of each seq comes in increasing order (duplicates allowed
/// anywhere); returns how many duplicates there were.
fn assert_in_order(device: u64, seqs: &[u64]) -> usize {
    let mut seen = BTreeSet::new();
    let mut last_new = None;
    let mut dups = 0;
    for &s in seqs {
        if !seen.insert(s) {
            dups += 1;
            continue;
        }
        if let Some(prev) = last_new {
            assert!(
                s > prev,
                "device {device}: seq {s} arrived for the first time after {prev}"
            );
        }
        last_new = Some(s);
    }
    dups
}

fn unique(messages: &[Received]) -> usize {
    messages
        .iter()
        .map(parse)
        .collect::<BTreeSet<_>>()
        .len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn downlink_command_reaches_a_local_subscriber_without_the_prefix() {
    let (cloud, rec) = cloud();
    let gw = gateway(
        cloud.port,
        "forward = [\"sensors/#\", \"cmd/#\"]\nsubscribe = [\"cmd/#\"]",
    );
    assert!(gw.wait_for_log("bridge up", WAIT), "{}", gw.log());
    assert!(
        cloud.wait_for_log(&format!("gw-001 1 {PREFIX}cmd/#"), WAIT),
        "the bridge did not subscribe upstream: {}",
        cloud.log()
    );
    let local = MosquittoSub::start(gw.port, "cmd/#", &["-v", "-q", "1"]);

    assert!(mosquitto_pub(
        cloud.port,
        &format!("{PREFIX}cmd/x"),
        "open-valve",
        &["-q", "1"]
    ));
    assert_eq!(local.wait_for(1, WAIT), vec!["cmd/x open-valve"]);

    // A local command goes up once (forward matches cmd/#); the cloud echoes it back down
    // (the bridge subscribes edge/gw-001/cmd/#) and that copy must not go up again.
    assert!(mosquitto_pub(gw.port, "cmd/y", "local-y", &["-q", "1"]));
    let cmd_y = format!("{PREFIX}cmd/y");
    assert!(rec.wait_until(WAIT, |m| m.iter().any(|r| r.topic == cmd_y)));
    // Give the echo time to come down (it shows up at the local subscriber) before the marker.
    let echoed = {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n = local.messages().iter().filter(|l| l.starts_with("cmd/y ")).count();
            if n >= 2 || Instant::now() >= deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(mosquitto_pub(gw.port, "sensors/marker", "0:0:", &["-q", "1"]));
    let marker = format!("{PREFIX}sensors/marker");
    assert!(rec.wait_until(WAIT, |m| m.iter().any(|r| r.topic == marker)));
    let topics: Vec<String> = rec.messages().into_iter().map(|r| r.topic).collect();
    let count = |t: &str| topics.iter().filter(|x| *x == t).count();
    println!("local subscriber saw cmd/y {echoed} time(s) (1 local + the cloud's echo)");
    assert_eq!(
        count(&format!("{PREFIX}cmd/x")),
        1,
        "the downlink command went back up: {topics:?}"
    );
    assert_eq!(count(&cmd_y), 1, "cmd/y looped: {topics:?}");
    assert_eq!(topics.len(), 3, "{topics:?}");
    // Downlink was counted in the bridge stats.
    let (ok, stats) = wait_stats(gw.port, WAIT, |s| num(s, "downlink") >= Some(1));
    assert!(ok, "{stats}");
}

#[test]
fn uplink_outage_loses_nothing() {
    const DEVICES: u64 = 10;
    const PER_DEVICE: u64 = 10_000;
    const TOTAL: usize = (DEVICES * PER_DEVICE) as usize;
    let (mut cloud, rec) = cloud_down();
    let gw = gateway(cloud.port, "forward = [\"sensors/#\"]");
    assert!(gw.wait_for_log("bridge down", WAIT), "{}", gw.log());

    let started = Instant::now();
    let runs = runtime().block_on(async {
        let tasks: Vec<_> = (0..DEVICES)
            .map(|d| {
                let dev = QosDevice::new(gw.port, &format!("dev{d}"), &format!("sensors/{d}"));
                tokio::spawn(async move { dev.run(0..PER_DEVICE, payload(d, 0)).await })
            })
            .collect();
        let mut runs = Vec::new();
        for t in tasks {
            runs.push(t.await.expect("device task"));
        }
        runs
    });
    let publish_time = started.elapsed();
    for (d, run) in runs.iter().enumerate() {
        assert_eq!(run.error, None, "device {d}");
        assert_eq!(run.acked.len() as u64, PER_DEVICE, "device {d} PUBACKs");
    }
    println!(
        "{TOTAL} QoS 1 messages PUBACKed with the uplink down in {publish_time:?} ({:.0}/s)",
        TOTAL as f64 / publish_time.as_secs_f64()
    );
    let (ok, stats) = wait_stats(gw.port, WAIT, |s| num(s, "queued") == Some(TOTAL as u64));
    assert!(ok, "everything should be queued while the uplink is down: {stats}");
    assert_eq!(rec.count(), 0);

    let up = Instant::now();
    cloud.restart();
    let arrived = rec.wait_until(Duration::from_secs(150), |m| {
        m.len() >= TOTAL && unique(m) == TOTAL
    });
    let drain_time = up.elapsed();
    let messages = rec.messages();
    assert!(
        arrived,
        "only {} of {TOTAL} distinct messages arrived ({} in all)",
        unique(&messages),
        messages.len()
    );
    let mut dups = 0;
    for (d, seqs) in by_device(&messages) {
        assert_eq!(
            messages
                .iter()
                .filter(|m| parse(m).0 == d)
                .all(|m| m.topic == format!("{PREFIX}sensors/{d}")),
            true
        );
        dups += assert_in_order(d, &seqs);
        assert_eq!(seqs.iter().collect::<BTreeSet<_>>().len() as u64, PER_DEVICE);
    }
    println!(
        "drained {TOTAL} in {drain_time:?} ({:.0}/s), {dups} duplicates",
        TOTAL as f64 / drain_time.as_secs_f64()
    );
    let (ok, stats) = wait_stats(gw.port, WAIT, |s| {
        num(s, "queued") == Some(0) && num(s, "forwarded") >= Some(TOTAL as u64)
    });
    assert!(ok, "stats after the drain: {stats}");
    println!("bridge stats: {stats}");
}

#[test]
fn byte_cap_drops_the_oldest_and_keeps_the_rest_in_order() {
    const SENT: u64 = 3_000;
    let (mut cloud, rec) = cloud_down();
    let gw = gateway(
        cloud.port,
        "forward = [\"sensors/#\"]\nqueue = { max_bytes = \"1MB\", segment_size = \"64KB\" }",
    );
    assert!(gw.wait_for_log("bridge down", WAIT), "{}", gw.log());
    let run = runtime().block_on(async {
        QosDevice::new(gw.port, "filler", "sensors/big")
            .run(0..SENT, payload(7, 1024))
            .await
    });
    assert_eq!(run.error, None);
    assert_eq!(run.acked.len() as u64, SENT, "drop_oldest still PUBACKs every message");
    assert!(
        gw.wait_for_log("dropped: bridge queue full", WAIT),
        "{}",
        gw.log()
    );

    cloud.restart();
    assert!(
        rec.wait_until(Duration::from_secs(60), |m| m
            .iter()
            .any(|r| parse(r).1 == SENT - 1)),
        "the newest message never arrived ({} arrived)",
        rec.count()
    );
    let messages = rec.messages();
    let seqs: Vec<u64> = messages.iter().map(|m| parse(m).1).collect();
    let dups = assert_in_order(7, &seqs);
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    let first = *set.first().unwrap();
    assert_eq!(
        set.len() as u64,
        SENT - first,
        "what arrived is not a contiguous suffix: first {first}, {} distinct",
        set.len()
    );
    let dropped = SENT - set.len() as u64;
    assert!(dropped > 0, "nothing was dropped: the cap did not bite");
    assert!(
        set.len() > 500,
        "only {} of 1 MB worth of 1 KB messages kept",
        set.len()
    );
    let (ok, stats) = wait_stats(gw.port, WAIT, |s| num(s, "queued") == Some(0));
    assert!(ok, "{stats}");
    println!("{SENT} sent, {} arrived ({first}..{SENT}), {dropped} dropped, {dups} duplicates; {stats}", set.len());
    assert_eq!(num(&stats, "queue_full"), Some(dropped), "{stats}");
}
