//! The Modbus pollers against real devices: pymodbus (PyPI) serving register maps over TCP on
//! loopback and over RTU on a `socat` pty pair, plus hand-made devices that answer wrongly or
//! not at all. Every type and order decoded against the values the device holds, a merged read
//! the device rejects, a dead device backing off while the others keep their schedule, a
//! device that comes back, writes with their answers, and malformed responses that never take
//! the gateway down.

use holdfast_tests::ctl::{ctl_json, socket};
use holdfast_tests::{
    free_port, holdfast_bin, mosquitto_pub, run_with_timeout, wait_until, Gateway, MosquittoSub,
    PtyPair, TempDir,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// A pymodbus device (tests/modbus/sim.py), stopped on drop.
struct Sim {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Sim {
    fn start(args: &[&str], map: &Value) -> Sim {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/modbus/sim.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .arg("--map")
            .arg(map.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 tests/modbus/sim.py (pip install pymodbus==3.8.6 pyserial)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut sim = Sim {
            child,
            stdin,
            stdout,
        };
        let ready = sim.line();
        assert_eq!(ready, "ready", "the simulator did not start");
        sim
    }

    fn tcp(port: u16, map: &Value) -> Sim {
        Sim::start(&["--tcp", &format!("127.0.0.1:{port}")], map)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim().to_owned()
    }

    /// Sends a command (`set 1 hr 0 5`, `get 1 hr 0 2`) and returns its answer.
    fn command(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").expect("write to the simulator");
        self.stdin.flush().expect("flush");
        self.line()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway with MQTT on a free port and the given `[modbus]` devices. The devices publish
/// retained (`retain = true`): the tests' subscribers start after the first poll.
fn gateway(devices: &str) -> (Gateway, u16) {
    let port = free_port();
    let config = format!(
        r#"
[node]
name = "gw-modbus"

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[modbus]
{devices}
"#
    );
    let gw = Gateway::start_config(&config, port);
    (gw, port)
}

/// The last payload published on `topic`, as JSON.
fn last(sub: &MosquittoSub, topic: &str) -> Option<Value> {
    sub.messages()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{topic} ")).map(str::to_owned))
        .and_then(|p| serde_json::from_str(&p).ok())
}

/// Waits until the last payload on `topic` satisfies `done`; returns it.
fn wait_payload(sub: &MosquittoSub, topic: &str, done: impl Fn(&Value) -> bool) -> Value {
    let ok = wait_until(WAIT, || last(sub, topic).is_some_and(|v| done(&v)));
    let seen = last(sub, topic);
    assert!(
        ok,
        "{topic}: last payload {seen:?}; all:\n{}",
        sub.messages().join("\n")
    );
    seen.unwrap_or_default()
}

fn device(ctl: &Value, name: &str) -> Value {
    ctl["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name).cloned())
        .unwrap_or_default()
}

fn words(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn every_type_and_order_decodes_to_what_the_device_holds() {
    let port = free_port();
    let mut hr: Vec<u16> = Vec::new();
    hr.extend(words(&65_000u16.to_be_bytes())); // 0 u16
    hr.extend(words(&(-1234i16).to_be_bytes())); // 1 i16
    hr.extend(words(&3_000_000_000u32.to_be_bytes())); // 2 u32
    let mut little = words(&0x1234_5678u32.to_be_bytes());
    little.reverse();
    hr.extend(little); // 4 u32, word order little
    hr.extend(words(&(-100_000i32).to_be_bytes())); // 6 i32
    hr.extend(words(&0x0102_0304_0506_0708u64.to_be_bytes())); // 8 u64
    hr.extend(words(&(-5_000_000_000i64).to_be_bytes())); // 12 i64
    hr.extend(words(&12.5f32.to_be_bytes())); // 16 f32
    let mut f = words(&(-3.75f32).to_be_bytes());
    f.reverse();
    hr.extend(f); // 18 f32, word order little
    hr.extend(words(&1.5f32.to_be_bytes()).iter().map(|w| w.swap_bytes())); // 20 f32, byte order little
    hr.extend(words(&1234.5678f64.to_be_bytes())); // 22 f64
    hr.extend(words(b"HOLDFAST")); // 26 string, 4 registers
    hr.push(0b1010); // 30 bits
    hr.push(650); // 31 scaled
    let mut g = words(&(-2i64).to_be_bytes());
    g.reverse();
    hr.extend(g.iter().map(|w| w.swap_bytes())); // 32 i64, both orders little
    let map = json!({"1": {
        "hr": hr.iter().enumerate().map(|(i, v)| (i.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "ir": {"0": 7},
        "co": {"0": true, "1": false},
        "di": {"0": true},
    }});
    let _sim = Sim::tcp(port, &map);
    let (gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "meter"
retain = true
address = "127.0.0.1:{port}"
interval = "200ms"
points = [
  {{ name = "u16", kind = "holding", address = 0, type = "u16" }},
  {{ name = "i16", kind = "holding", address = 1, type = "i16" }},
  {{ name = "u32", kind = "holding", address = 2, type = "u32" }},
  {{ name = "u32_wl", kind = "holding", address = 4, type = "u32", word_order = "little" }},
  {{ name = "i32", kind = "holding", address = 6, type = "i32" }},
  {{ name = "u64", kind = "holding", address = 8, type = "u64" }},
  {{ name = "i64", kind = "holding", address = 12, type = "i64" }},
  {{ name = "f32", kind = "holding", address = 16, type = "f32" }},
  {{ name = "f32_wl", kind = "holding", address = 18, type = "f32", word_order = "little" }},
  {{ name = "f32_bl", kind = "holding", address = 20, type = "f32", byte_order = "little" }},
  {{ name = "f64", kind = "holding", address = 22, type = "f64" }},
  {{ name = "text", kind = "holding", address = 26, type = "string", count = 4 }},
  {{ name = "bit1", kind = "holding", address = 30, type = "bool", bit = 1 }},
  {{ name = "bit2", kind = "holding", address = 30, type = "bool", bit = 2 }},
  {{ name = "temp", kind = "holding", address = 31, type = "i16", scale = 0.1, offset = -40, unit = "degC" }},
  {{ name = "i64_ll", kind = "holding", address = 32, type = "i64", word_order = "little", byte_order = "little" }},
  {{ name = "input", kind = "input", address = 0 }},
  {{ name = "coil0", kind = "coil", address = 0 }},
  {{ name = "coil1", kind = "coil", address = 1 }},
  {{ name = "di", kind = "discrete", address = 0 }},
]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/#", &["-v"]);
    let expect: Vec<(&str, Value)> = vec![
        ("u16", json!(65_000)),
        ("i16", json!(-1234)),
        ("u32", json!(3_000_000_000u64)),
        ("u32_wl", json!(0x1234_5678)),
        ("i32", json!(-100_000)),
        ("u64", json!(0x0102_0304_0506_0708u64)),
        ("i64", json!(-5_000_000_000i64)),
        ("f32", json!(12.5)),
        ("f32_wl", json!(-3.75)),
        ("f32_bl", json!(1.5)),
        ("f64", json!(1234.5678)),
        ("text", json!("HOLDFAST")),
        ("bit1", json!(true)),
        ("bit2", json!(false)),
        ("i64_ll", json!(-2)),
        ("input", json!(7)),
        ("coil0", json!(true)),
        ("coil1", json!(false)),
        ("di", json!(true)),
    ];
    for (point, value) in &expect {
        let got = wait_payload(&sub, &format!("modbus/meter/{point}"), |v| {
            v["quality"] == "good"
        });
        assert_eq!(&got["value"], value, "{point}: {got}");
        assert!(
            got["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000),
            "{got}"
        );
    }
    let temp = wait_payload(&sub, "modbus/meter/temp", |v| v["quality"] == "good");
    assert!(
        (temp["value"].as_f64().unwrap_or(0.0) - 25.0).abs() < 1e-9,
        "{temp}"
    );
    assert_eq!(temp["unit"], "degC");
    // Holding 0..=35 is one read, the coils one, the input and the discrete input one each.
    let status = ctl_json(&socket(&gw), &["modbus"]);
    let meter = device(&status, "meter");
    assert_eq!(meter["reads_per_poll"], 4, "{meter}");
    assert_eq!(meter["state"], "ok", "{meter}");
    // On change only: a second poll publishes nothing new.
    let before = sub.messages().len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        sub.messages().len(),
        before,
        "{:?}",
        &sub.messages()[before..]
    );
}

#[test]
fn a_read_the_device_rejects_is_split_and_the_rest_still_read() {
    let port = free_port();
    // Register 2 does not exist: a read that spans it answers exception 2.
    let map = json!({"1": {"hr": {"0": 10, "1": 11, "3": 13, "4": 14, "5": 15, "6": 16}}});
    let _sim = Sim::tcp(port, &map);
    let (gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "plc"
retain = true
address = "127.0.0.1:{port}"
interval = "200ms"
points = [
  {{ name = "a", kind = "holding", address = 0 }},
  {{ name = "b", kind = "holding", address = 1 }},
  {{ name = "missing", kind = "holding", address = 2 }},
  {{ name = "d", kind = "holding", address = 3 }},
  {{ name = "e", kind = "holding", address = 4 }},
  {{ name = "f", kind = "holding", address = 5 }},
  {{ name = "g", kind = "holding", address = 6 }},
]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/plc/#", &["-v"]);
    for (point, value) in [
        ("a", 10),
        ("b", 11),
        ("d", 13),
        ("e", 14),
        ("f", 15),
        ("g", 16),
    ] {
        let got = wait_payload(&sub, &format!("modbus/plc/{point}"), |v| {
            v["quality"] == "good"
        });
        assert_eq!(got["value"], value, "{point}");
    }
    let missing = wait_payload(&sub, "modbus/plc/missing", |_| true);
    assert_eq!(missing["quality"], "exception:2", "{missing}");
    assert_eq!(missing["value"], Value::Null);
    let status = ctl_json(&socket(&gw), &["modbus"]);
    let plc = device(&status, "plc");
    let reads = plc["reads_per_poll"].as_u64().unwrap_or(0);
    assert!(
        (2..=4).contains(&reads),
        "split in halves, not one read per point: {plc}"
    );
    assert!(
        status["stats"]["splits"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    assert!(gw.log().contains("rejected"), "{}", gw.log());
    // The same as a table, and the counters under $SYS.
    let (ok, table, err) = holdfast_tests::ctl::ctl(&socket(&gw), &["modbus"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("DEVICE")
            && table.contains("plc")
            && table.contains("exception:2=")
            && table.contains("splits"),
        "{table}"
    );
    let sys = MosquittoSub::start(mqtt, "$SYS/brokers/gw-modbus/modbus/+", &["-v"]);
    let ok = wait_until(WAIT, || {
        sys.messages().iter().any(|l| {
            l.strip_prefix("$SYS/brokers/gw-modbus/modbus/polls ")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    });
    assert!(ok, "{:?}", sys.messages());
}

#[test]
fn one_message_per_device_at_every_poll() {
    let port = free_port();
    let _sim = Sim::tcp(
        port,
        &json!({"1": {"hr": {"0": 1, "1": 2}, "co": {"0": true}}}),
    );
    let (_gw, mqtt) = gateway(&format!(
        r#"
topic_prefix = "plant/modbus"

[[modbus.devices]]
name = "rig"
address = "127.0.0.1:{port}"
interval = "200ms"
message = "device"
publish = "poll"
points = [
  {{ name = "a", kind = "holding", address = 0 }},
  {{ name = "b", kind = "holding", address = 1, unit = "bar" }},
  {{ name = "c", kind = "coil", address = 0 }},
]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "plant/modbus/#", &["-v"]);
    let got = wait_payload(&sub, "plant/modbus/rig", |_| true);
    assert_eq!(got["points"]["a"]["value"], 1, "{got}");
    assert_eq!(got["points"]["b"]["unit"], "bar", "{got}");
    assert_eq!(got["points"]["c"]["quality"], "good", "{got}");
    // Every poll, not only on change.
    assert!(
        wait_until(WAIT, || sub.messages().len() >= 4),
        "{:?}",
        sub.messages()
    );
    assert!(
        sub.messages()
            .iter()
            .all(|l| l.starts_with("plant/modbus/rig ")),
        "{:?}",
        sub.messages()
    );
}

#[test]
fn a_dead_device_backs_off_while_the_others_keep_their_schedule_and_it_comes_back() {
    let live_port = free_port();
    let dead_port = free_port();
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    // Accepts and never answers.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let _live = Sim::tcp(live_port, &json!({"1": {"hr": {"0": 1}}}));
    let devices = format!(
        r#"
[[modbus.devices]]
name = "live"
retain = true
address = "127.0.0.1:{live_port}"
interval = "100ms"
publish = "poll"
points = [{{ name = "v", kind = "holding", address = 0 }}]

[[modbus.devices]]
name = "dead"
retain = true
address = "127.0.0.1:{dead_port}"
interval = "100ms"
timeout = "200ms"
backoff_max = "1s"
points = [{{ name = "v", kind = "holding", address = 0 }}]

[[modbus.devices]]
name = "silent"
retain = true
address = "127.0.0.1:{silent_port}"
interval = "100ms"
timeout = "200ms"
retries = 1
backoff_max = "1s"
points = [{{ name = "v", kind = "holding", address = 0 }}]
"#
    );
    let (gw, mqtt) = gateway(&devices);
    let sub = MosquittoSub::start(mqtt, "modbus/#", &["-v"]);
    let dead = wait_payload(&sub, "modbus/dead/v", |_| true);
    assert_eq!(dead["quality"], "unreachable", "{dead}");
    let silent = wait_payload(&sub, "modbus/silent/v", |_| true);
    assert_eq!(silent["quality"], "timeout", "{silent}");
    let sock = socket(&gw);
    let first = ctl_json(&sock, &["modbus"]);
    std::thread::sleep(Duration::from_secs(3));
    let later = ctl_json(&sock, &["modbus"]);
    let polls = |v: &Value, name: &str| device(v, name)["polls"].as_u64().unwrap_or(0);
    let live = polls(&later, "live") - polls(&first, "live");
    // 3 s at 100 ms: 30 polls on schedule; allow for a loaded machine.
    assert!(
        live >= 20,
        "the live device fell behind: {live} polls in 3s\n{later}"
    );
    for name in ["dead", "silent"] {
        let d = device(&later, name);
        assert_eq!(d["state"], "failing", "{d}");
        let n = polls(&later, name) - polls(&first, name);
        assert!(n <= 8, "{name} was not backing off: {n} polls in 3s\n{d}");
    }
    assert!(
        device(&later, "silent")["errors"]["timeout"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{later}"
    );
    assert!(
        device(&later, "dead")["errors"]["unreachable"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{later}"
    );
    // Only the first failures are logged, not every poll of a device backing off.
    let logged = gw
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("modbus:"))
        .count();
    assert!(logged <= 8, "{logged} warnings:\n{}", gw.log());
    // The dead device comes back: published good within the back-off.
    let _back = Sim::tcp(dead_port, &json!({"1": {"hr": {"0": 42}}}));
    let back = wait_payload(&sub, "modbus/dead/v", |v| v["quality"] == "good");
    assert_eq!(back["value"], 42);
    assert!(wait_until(WAIT, || device(
        &ctl_json(&sock, &["modbus"]),
        "dead"
    )["state"]
        == "ok"));
}

#[test]
fn writes_round_trip_with_their_answers() {
    let port = free_port();
    let map = json!({"1": {"hr": {"0": 5, "1": 0, "2": 0, "5": 9, "7": 0}, "co": {"0": false}}});
    let mut sim = Sim::tcp(port, &map);
    let (_gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "drive"
retain = true
address = "127.0.0.1:{port}"
interval = "200ms"
points = [
  {{ name = "setpoint", kind = "holding", address = 0, writable = true, min = 0, max = 1000 }},
  {{ name = "speed", kind = "holding", address = 1, type = "f32", scale = 0.5, writable = true }},
  {{ name = "readonly", kind = "holding", address = 5 }},
  {{ name = "flag", kind = "holding", address = 7, type = "bool", bit = 3, writable = true }},
  {{ name = "pump", kind = "coil", address = 0, writable = true }},
  {{ name = "ghost", kind = "holding", address = 9, writable = true }},
]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/drive/#", &["-v"]);
    wait_payload(&sub, "modbus/drive/setpoint", |v| v["value"] == 5);
    // A write is made, answered on .../result, and the new value is published.
    assert!(mosquitto_pub(
        mqtt,
        "modbus/drive/set/setpoint",
        "42",
        &["-q", "1"]
    ));
    let result = wait_payload(&sub, "modbus/drive/set/setpoint/result", |_| true);
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["value"], 42);
    assert_eq!(sim.command("get 1 hr 0 1"), "42");
    wait_payload(&sub, "modbus/drive/setpoint", |v| v["value"] == 42);
    // Scaled float, JSON object form; a coil; one bit of a register (mask write).
    assert!(mosquitto_pub(
        mqtt,
        "modbus/drive/set/speed",
        r#"{"value": 12.5}"#,
        &["-q", "1"]
    ));
    wait_payload(&sub, "modbus/drive/set/speed/result", |v| v["ok"] == true);
    wait_payload(&sub, "modbus/drive/speed", |v| v["value"] == 12.5);
    assert!(mosquitto_pub(
        mqtt,
        "modbus/drive/set/pump",
        "true",
        &["-q", "1"]
    ));
    wait_payload(&sub, "modbus/drive/set/pump/result", |v| v["ok"] == true);
    wait_payload(&sub, "modbus/drive/pump", |v| v["value"] == true);
    assert!(mosquitto_pub(
        mqtt,
        "modbus/drive/set/flag",
        "on",
        &["-q", "1"]
    ));
    wait_payload(&sub, "modbus/drive/set/flag/result", |v| v["ok"] == true);
    assert_eq!(sim.command("get 1 hr 7 1"), "8");
    // Refusals, each with its reason; nothing reaches the device.
    for (point, payload, error) in [
        ("setpoint", "1001", "bad_value"),
        ("setpoint", "abc", "bad_value"),
        ("readonly", "1", "not_writable"),
        ("nosuch", "1", "unknown_point"),
        ("ghost", "1", "exception:2"),
    ] {
        assert!(mosquitto_pub(
            mqtt,
            &format!("modbus/drive/set/{point}"),
            payload,
            &["-q", "1"]
        ));
        let r = wait_payload(&sub, &format!("modbus/drive/set/{point}/result"), |v| {
            v["ok"] == false && v["error"] == error
        });
        assert!(r["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r}");
    }
    assert_eq!(
        sim.command("get 1 hr 0 1"),
        "42",
        "a refused write changed the device"
    );
    // MQTT 5: the answer goes to the response topic with the correlation data.
    let answers = MosquittoSub::start(mqtt, "replies/me", &["-V", "5", "-F", "%t %D %p"]);
    assert!(mosquitto_pub(
        mqtt,
        "modbus/drive/set/setpoint",
        "7",
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-D",
            "publish",
            "response-topic",
            "replies/me",
            "-D",
            "publish",
            "correlation-data",
            "req-17"
        ]
    ));
    let ok = wait_until(WAIT, || {
        answers
            .messages()
            .iter()
            .any(|l| l.starts_with("replies/me req-17 ") && l.contains("\"ok\":true"))
    });
    assert!(ok, "{:?}", answers.messages());
    assert_eq!(sim.command("get 1 hr 0 1"), "7");
}

#[test]
fn an_rtu_line_serves_its_units_in_turn_and_a_dead_unit_does_not_stall_them() {
    let pty = PtyPair::new();
    let map = json!({
        "1": {"hr": {"0": 101, "1": 0x4148, "2": 0}},
        "2": {"ir": {"0": 202}, "co": {"4": true}},
    });
    let _sim = Sim::start(
        &[
            "--serial",
            &pty.device.display().to_string(),
            "--baud",
            "115200",
        ],
        &map,
    );
    let port = pty.gateway.display().to_string();
    let (gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "unit1"
retain = true
transport = "rtu"
port = "{port}"
baud = 115200
parity = "none"
unit_id = 1
interval = "200ms"
timeout = "300ms"
points = [
  {{ name = "count", kind = "holding", address = 0 }},
  {{ name = "level", kind = "holding", address = 1, type = "f32" }},
]

[[modbus.devices]]
name = "unit2"
retain = true
transport = "rtu"
port = "{port}"
baud = 115200
parity = "none"
unit_id = 2
interval = "200ms"
timeout = "300ms"
points = [
  {{ name = "temp", kind = "input", address = 0 }},
  {{ name = "valve", kind = "coil", address = 4 }},
]

[[modbus.devices]]
name = "unit3"
retain = true
transport = "rtu"
port = "{port}"
baud = 115200
parity = "none"
unit_id = 3
interval = "200ms"
timeout = "100ms"
retries = 0
backoff_max = "2s"
points = [{{ name = "x", kind = "holding", address = 0 }}]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/#", &["-v"]);
    assert_eq!(
        wait_payload(&sub, "modbus/unit1/count", |_| true)["value"],
        101
    );
    assert_eq!(
        wait_payload(&sub, "modbus/unit1/level", |_| true)["value"],
        12.5
    );
    assert_eq!(
        wait_payload(&sub, "modbus/unit2/temp", |_| true)["value"],
        202
    );
    assert_eq!(
        wait_payload(&sub, "modbus/unit2/valve", |_| true)["value"],
        true
    );
    assert_eq!(
        wait_payload(&sub, "modbus/unit3/x", |_| true)["quality"],
        "timeout"
    );
    let sock = socket(&gw);
    let first = ctl_json(&sock, &["modbus"]);
    std::thread::sleep(Duration::from_secs(3));
    let later = ctl_json(&sock, &["modbus"]);
    let polls = |v: &Value, name: &str| device(v, name)["polls"].as_u64().unwrap_or(0);
    for name in ["unit1", "unit2"] {
        let n = polls(&later, name) - polls(&first, name);
        // 3 s at 200 ms: 15 polls; the dead unit's timeouts (and the port's resync after each)
        // come only while it backs off.
        assert!(n >= 10, "{name}: {n} polls in 3s\n{later}");
        assert_eq!(device(&later, name)["state"], "ok");
    }
    assert_eq!(device(&later, "unit3")["state"], "failing", "{later}");
    assert_eq!(device(&later, "unit1")["line"], format!("rtu://{port}"));
}

/// How a hand-made device answers one request (given the request's bytes).
type Answer = fn(&[u8]) -> Vec<u8>;

/// A Modbus TCP "device" that answers each request with the next of `answers` (a function of
/// the request's MBAP transaction id and unit), then closes.
fn bad_device(answers: Vec<Answer>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter().cycle();
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            loop {
                let mut request = [0u8; 12];
                if stream.read_exact(&mut request).is_err() {
                    break;
                }
                let Some(answer) = answers.next() else { break };
                if stream.write_all(&answer(&request)).is_err() {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn malformed_responses_are_counted_and_never_take_the_gateway_down() {
    // Read holding registers 0, count 1: a good answer is MBAP(tid, 0, len 5, unit) 03 02 hi lo.
    let port = bad_device(vec![
        // Byte count says 4, one register given, length field agrees with the bytes sent.
        |r| vec![r[0], r[1], 0, 0, 0, 5, r[6], 3, 4, 0, 1],
        // Wrong unit id.
        |r| vec![r[0], r[1], 0, 0, 0, 5, r[6].wrapping_add(1), 3, 2, 0, 1],
        // Wrong function code.
        |r| vec![r[0], r[1], 0, 0, 0, 5, r[6], 4, 2, 0, 1],
        // A huge length prefix.
        |r| vec![r[0], r[1], 0, 0, 0xFF, 0xFF, r[6], 3, 2, 0, 1],
        // Two registers where one was asked for.
        |r| vec![r[0], r[1], 0, 0, 0, 7, r[6], 3, 4, 0, 1, 0, 2],
        // Plain garbage.
        |_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        // At last a good answer: 0x0102.
        |r| vec![r[0], r[1], 0, 0, 0, 5, r[6], 3, 2, 1, 2],
    ]);
    let (mut gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "liar"
retain = true
address = "127.0.0.1:{port}"
interval = "100ms"
timeout = "300ms"
backoff_max = "1s"
points = [{{ name = "v", kind = "holding", address = 0 }}]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/#", &["-v"]);
    let good = wait_payload(&sub, "modbus/liar/v", |v| v["quality"] == "good");
    assert_eq!(good["value"], 0x0102);
    assert!(
        sub.messages().iter().any(|l| l.contains("bad_response")),
        "{:?}",
        sub.messages()
    );
    let status = ctl_json(&socket(&gw), &["modbus"]);
    assert!(
        status["stats"]["bad_responses"].as_u64().unwrap_or(0) >= 3,
        "{status}"
    );
    assert!(device(&status, "liar")["last_error"].is_array(), "{status}");
    assert!(gw.is_running(), "{}", gw.log());
}

#[test]
fn garbage_and_bad_crcs_on_an_rtu_line_never_take_the_gateway_down() {
    let pty = PtyPair::new();
    let port = pty.gateway.display().to_string();
    let (mut gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "noisy"
retain = true
transport = "rtu"
port = "{port}"
baud = 115200
parity = "none"
interval = "100ms"
timeout = "200ms"
retries = 0
points = [{{ name = "v", kind = "holding", address = 0 }}]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/#", &["-v"]);
    // The device end: answer requests with a bad CRC, then with line noise, then correctly.
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.device)
        .expect("open the device end");
    let crc = |data: &[u8]| {
        let mut crc: u16 = 0xFFFF;
        for b in data {
            crc ^= u16::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        crc.to_le_bytes()
    };
    let started = Instant::now();
    let mut answered_good = 0;
    while started.elapsed() < Duration::from_secs(10) && answered_good < 3 {
        let mut request = [0u8; 8];
        if dev.read_exact(&mut request).is_err() {
            break;
        }
        let mut answer = vec![1, 3, 2, 0x12, 0x34];
        let good = crc(&answer);
        let phase = started.elapsed().as_millis() / 1500;
        match phase {
            0 => answer.extend([good[0] ^ 0xFF, good[1]]),
            1 => answer = vec![0xFF, 0x00, 0x55, 0xAA, 0x01, 0x83, 0x99, 0x00, 0xFF],
            _ => {
                answer.extend(good);
                answered_good += 1;
            }
        }
        let _ = dev.write_all(&answer);
    }
    let good = wait_payload(&sub, "modbus/noisy/v", |v| v["quality"] == "good");
    assert_eq!(good["value"], 0x1234);
    assert!(gw.is_running(), "{}", gw.log());
}

#[test]
fn holdfast_check_reports_map_mistakes_with_their_lines() {
    let dir = TempDir::new("modbus-check");
    let file = dir.path().join("holdfast.toml");
    std::fs::write(
        &file,
        r#"[[modbus.devices]]
name = "m"
address = "127.0.0.1:502"
points = [
  { name = "a", kind = "holding", address = 0, type = "f32" },
  { name = "b", kind = "holding", address = 1 },
  { name = "c", kind = "coil", address = 0, type = "u16" },
]
"#,
    )
    .expect("write config");
    let (ok, out, err) = run_with_timeout(
        Command::new(holdfast_bin())
            .arg("check")
            .arg("--config")
            .arg(&file),
        WAIT,
    );
    assert!(!ok, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("holdfast.toml:6: modbus.devices[0].points[1]: point \"b\": holding 1..1 overlaps point \"a\" (0..1)"), "{text}");
    assert!(
        text.contains(
            "holdfast.toml:7: modbus.devices[0].points[2]: point \"c\": a coil holds one bit"
        ),
        "{text}"
    );
}

/// Modbus RTU CRC-16 (little-endian on the wire).
fn rtu_crc(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for b in data {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

#[test]
fn a_late_rtu_answer_is_never_taken_for_the_next_request() {
    // Review finding: after a timeout the RTU line kept its port, so an answer arriving just
    // late was read as the next request's and shifted values went out marked good.
    let pty = PtyPair::new();
    let port = pty.gateway.display().to_string();
    let (_gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "slow"
retain = true
transport = "rtu"
port = "{port}"
baud = 115200
parity = "none"
interval = "100ms"
timeout = "150ms"
retries = 0
points = [
  {{ name = "a", kind = "holding", address = 0 }},
  {{ name = "b", kind = "holding", address = 100 }},
]
"#
    ));
    let sub = MosquittoSub::start(mqtt, "modbus/slow/+", &["-v"]);
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.device)
        .expect("open the device end");
    // Register 0 reads 111 and register 100 reads 222; the first answer to a read of register
    // 100 comes 60 ms after the gateway's 150 ms timeout (while it would wait for the next
    // poll's read of register 0), the rest at once.
    let started = Instant::now();
    let mut late_done = false;
    while started.elapsed() < Duration::from_secs(4) {
        let mut request = [0u8; 8];
        if dev.read_exact(&mut request).is_err() {
            break;
        }
        let address = u16::from_be_bytes([request[2], request[3]]);
        let value: u16 = if address == 0 { 111 } else { 222 };
        let mut answer = vec![request[0], 3, 2];
        answer.extend(value.to_be_bytes());
        let crc = rtu_crc(&answer);
        answer.extend(crc);
        if address == 100 && !late_done {
            late_done = true;
            std::thread::sleep(Duration::from_millis(210));
        }
        let _ = dev.write_all(&answer);
    }
    assert!(late_done);
    wait_payload(&sub, "modbus/slow/b", |v| v["value"] == 222);
    let wrong: Vec<String> = sub
        .messages()
        .into_iter()
        .filter(|l| {
            (l.starts_with("modbus/slow/b ") && l.contains("\"value\":111"))
                || (l.starts_with("modbus/slow/a ") && l.contains("\"value\":222"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "values shifted between requests: {wrong:?}"
    );
}

#[test]
fn a_poller_s_client_id_cannot_be_taken_by_an_mqtt_client() {
    // Review finding: the pollers were clients `modbus-{name}`, which any MQTT user could take
    // over, wedging the poller and with it every device on its line.
    let port = free_port();
    let _sim = Sim::tcp(port, &json!({"1": {"hr": {"0": 5}}}));
    let (gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "meter"
address = "127.0.0.1:{port}"
interval = "100ms"
publish = "poll"
points = [{{ name = "v", kind = "holding", address = 0 }}]
"#
    ));
    let clients = ctl_json(&socket(&gw), &["clients", "list"]);
    let id = clients["clients"]["rows"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["proto_name"] == "modbus"))
        .map(|c| c["client_id"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(
        id.starts_with('$'),
        "the poller's client id {id:?} is one MQTT clients may take"
    );
    // An MQTT client asking for it is refused, and the poller keeps publishing.
    let (ok, _, _) = run_with_timeout(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.to_string(),
            "-i",
            &id,
            "-t",
            "x",
            "-C",
            "1",
            "-W",
            "2",
        ]),
        WAIT,
    );
    assert!(!ok, "an MQTT client took {id}");
    let sub = MosquittoSub::start(mqtt, "modbus/meter/v", &[]);
    assert!(sub.wait_for(3, WAIT).len() >= 3, "{:?}", sub.messages());
}

#[test]
fn a_response_topic_cannot_aim_a_write_at_another_device() {
    // Review finding: the answer to a write went to any MQTT 5 response topic, as the poller,
    // and echoed the value: aimed at another device's set topic, it wrote that device too.
    let (p1, p2) = (free_port(), free_port());
    let mut one = Sim::tcp(p1, &json!({"1": {"hr": {"0": 1}}}));
    let mut two = Sim::tcp(p2, &json!({"1": {"hr": {"0": 2}}}));
    let (_gw, mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "one"
address = "127.0.0.1:{p1}"
interval = "100ms"
points = [{{ name = "sp", kind = "holding", address = 0, writable = true }}]

[[modbus.devices]]
name = "two"
address = "127.0.0.1:{p2}"
interval = "100ms"
points = [{{ name = "sp", kind = "holding", address = 0, writable = true }}]
"#
    ));
    let results = MosquittoSub::start(mqtt, "modbus/one/set/sp/result", &[]);
    assert!(mosquitto_pub(
        mqtt,
        "modbus/one/set/sp",
        "77",
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-D",
            "publish",
            "response-topic",
            "modbus/two/set/sp"
        ]
    ));
    assert_eq!(
        results.wait_for(1, WAIT).len(),
        1,
        "the answer went to the default result topic"
    );
    assert_eq!(one.command("get 1 hr 0 1"), "77");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        two.command("get 1 hr 0 1"),
        "2",
        "device two was written through a response topic"
    );
}

#[test]
fn a_device_answering_busy_backs_off_without_splitting_its_reads() {
    // Review finding: every exception split the plan for good and kept the device "answering",
    // so a dead unit behind a TCP gateway (exception 0x0B) got one request per point forever.
    let port = bad_device(vec![|r| vec![r[0], r[1], 0, 0, 0, 3, r[6], 0x83, 0x0B]]);
    let (gw, _mqtt) = gateway(&format!(
        r#"
[[modbus.devices]]
name = "behind"
address = "127.0.0.1:{port}"
interval = "100ms"
backoff_max = "1s"
points = [
  {{ name = "a", kind = "holding", address = 0 }},
  {{ name = "b", kind = "holding", address = 1 }},
  {{ name = "c", kind = "holding", address = 2 }},
  {{ name = "d", kind = "holding", address = 3 }},
]
"#
    ));
    let sock = socket(&gw);
    let failing = wait_until(WAIT, || {
        device(&ctl_json(&sock, &["modbus"]), "behind")["state"] == "failing"
    });
    let status = ctl_json(&sock, &["modbus"]);
    assert!(failing, "{status}");
    assert_eq!(device(&status, "behind")["reads_per_poll"], 1, "{status}");
    assert_eq!(status["stats"]["splits"], 0, "{status}");
}
