//! Raw serial lines on `socat` pty pairs: frames read from the line published on
//! `serial/{port}/rx` and messages on `serial/{port}/tx` written to it, for the line, length and
//! idle framings; a port removed and re-created while the gateway runs; garbage and endless
//! lines that never take it down.

use holdfast_tests::ctl::{ctl_json, socket};
use holdfast_tests::{free_port, mosquitto_pub, wait_until, Gateway, MosquittoSub, PtyPair};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn gateway(ports: &str) -> (Gateway, u16) {
    let port = free_port();
    let config = format!(
        r#"
[node]
name = "gw-serial"

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[serial]
{ports}
"#
    );
    (Gateway::start_config(&config, port), port)
}

/// The device's end of a pty pair, opened non-blocking for reads with a deadline.
struct Device(File);

impl Device {
    fn open(pty: &PtyPair) -> Device {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&pty.device)
            .expect("open the device end");
        Device(file)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("write to the line");
    }

    /// Reads until `want` bytes arrived or the deadline.
    fn receive(&mut self, want: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < want && Instant::now() < deadline {
            match self.0.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        got
    }
}

fn port_state(gw: &Gateway, name: &str) -> Value {
    let all = ctl_json(&socket(gw), &["serial"]);
    all["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_default()
}

fn wait_open(gw: &Gateway, name: &str) {
    let ok = wait_until(WAIT, || port_state(gw, name)["state"] == "open");
    assert!(ok, "{}\n{}", port_state(gw, name), gw.log());
}

#[test]
fn line_framing_both_ways() {
    let pty = PtyPair::new();
    let (gw, mqtt) = gateway(&format!(
        "[[serial.ports]]\nname = \"scale\"\nport = \"{}\"\n",
        pty.gateway.display()
    ));
    wait_open(&gw, "scale");
    let mut dev = Device::open(&pty);
    let sub = MosquittoSub::start(mqtt, "serial/scale/rx", &[]);
    // A frame split across writes, a CRLF line, and two lines in one write.
    dev.send(b"12.5 ");
    std::thread::sleep(Duration::from_millis(50));
    dev.send(b"kg\r\nST,GS\nUS,GS\n");
    let got = sub.wait_for(3, WAIT);
    assert_eq!(got, vec!["12.5 kg", "ST,GS", "US,GS"]);
    assert!(mosquitto_pub(mqtt, "serial/scale/tx", "TARE", &["-q", "1"]));
    assert_eq!(dev.receive(5), b"TARE\n");
    let state = port_state(&gw, "scale");
    assert_eq!(state["rx_frames"], 3, "{state}");
    assert_eq!(state["tx_frames"], 1, "{state}");
}

#[test]
fn length_and_idle_framing() {
    let a = PtyPair::new();
    let b = PtyPair::new();
    let (gw, mqtt) = gateway(&format!(
        r#"
[[serial.ports]]
name = "meter"
port = "{}"
framing = "length"
length_bytes = 2

[[serial.ports]]
name = "printer"
port = "{}"
framing = "idle"
idle_gap = "30ms"
"#,
        a.gateway.display(),
        b.gateway.display()
    ));
    wait_open(&gw, "meter");
    wait_open(&gw, "printer");
    let mut meter = Device::open(&a);
    let mut printer = Device::open(&b);
    let sub = MosquittoSub::start(mqtt, "serial/+/rx", &["-v"]);
    meter.send(&[0, 3, b'a', b'b', b'c', 0, 2]);
    std::thread::sleep(Duration::from_millis(50));
    meter.send(b"de");
    printer.send(b"JOB 1 ");
    std::thread::sleep(Duration::from_millis(10));
    printer.send(b"DONE");
    std::thread::sleep(Duration::from_millis(300));
    printer.send(b"JOB 2");
    let got = sub.wait_for(4, WAIT);
    assert!(got.contains(&"serial/meter/rx abc".to_owned()), "{got:?}");
    assert!(got.contains(&"serial/meter/rx de".to_owned()), "{got:?}");
    assert!(
        got.contains(&"serial/printer/rx JOB 1 DONE".to_owned()),
        "{got:?}"
    );
    assert!(
        got.contains(&"serial/printer/rx JOB 2".to_owned()),
        "{got:?}"
    );
    assert!(mosquitto_pub(mqtt, "serial/meter/tx", "xyz", &["-q", "1"]));
    assert_eq!(meter.receive(5), [0, 3, b'x', b'y', b'z']);
}

#[test]
fn a_port_that_disappears_is_reopened_and_its_writes_wait() {
    let dir = holdfast_tests::TempDir::new("usb");
    let path = dir.path().join("ttyUSB0");
    let device_path = dir.path().join("device");
    let pty = PtyPair::at(&path, &device_path);
    let (gw, mqtt) = gateway(&format!(
        "[[serial.ports]]\nname = \"usb\"\nport = \"{}\"\nreopen_max = \"1s\"\n",
        path.display()
    ));
    wait_open(&gw, "usb");
    let sub = MosquittoSub::start(mqtt, "serial/usb/rx", &[]);
    // The adapter is unplugged: socat and both ptys go away.
    drop(pty);
    let closed = wait_until(WAIT, || port_state(&gw, "usb")["state"] == "closed");
    assert!(closed, "{}\n{}", port_state(&gw, "usb"), gw.log());
    // A write while it is gone waits in the session.
    assert!(mosquitto_pub(mqtt, "serial/usb/tx", "queued", &["-q", "1"]));
    // Plugged in again at the same path.
    let again = PtyPair::at(&path, &device_path);
    wait_open(&gw, "usb");
    let mut dev = Device::open(&again);
    assert_eq!(dev.receive(7), b"queued\n");
    dev.send(b"hello again\n");
    assert_eq!(sub.wait_for(1, WAIT), vec!["hello again"]);
    let state = port_state(&gw, "usb");
    assert!(state["opens"].as_u64().unwrap_or(0) >= 2, "{state}");
    assert!(gw.log().contains("serial: "), "{}", gw.log());
}

#[test]
fn garbage_and_endless_lines_never_take_the_gateway_down() {
    let pty = PtyPair::new();
    let (mut gw, mqtt) = gateway(&format!(
        "[[serial.ports]]\nname = \"noisy\"\nport = \"{}\"\nmax_frame = 64\n",
        pty.gateway.display()
    ));
    wait_open(&gw, "noisy");
    let mut dev = Device::open(&pty);
    let sub = MosquittoSub::start(mqtt, "serial/noisy/rx", &["-F", "%l"]);
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i * 7 + 3) as u8)
        .filter(|b| *b != b'\n')
        .collect();
    dev.send(&garbage);
    dev.send(b"\nok\n");
    let ok = wait_until(WAIT, || sub.messages().contains(&"2".to_owned()));
    assert!(ok, "{:?}", sub.messages());
    let state = port_state(&gw, "noisy");
    assert!(state["oversized"].as_u64().unwrap_or(0) >= 1, "{state}");
    assert!(gw.is_running(), "{}", gw.log());
    // The endless line was dropped whole: nothing longer than max_frame was published.
    assert!(
        sub.messages()
            .iter()
            .all(|l| l.parse::<usize>().is_ok_and(|n| n <= 64)),
        "{:?}",
        sub.messages()
    );
}
