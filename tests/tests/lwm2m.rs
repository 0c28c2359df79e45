//! The LwM2M server driven by a real LwM2M client (npm `coap-node`, `tests/lwm2m/client.js`),
//! by a device on aiocoap's block-wise code (PyPI, `tests/lwm2m/blockwise_device.py`) and by
//! raw CoAP devices where a test needs exact control (queue mode, expiry, a second address, a
//! notification in blocks), with mosquitto_sub / mosquitto_pub as the cloud side reading and
//! writing EMQX's `lwm2m/{ep}/...` JSON. Everything on loopback.

use base64::Engine as _;
use holdfast_coap::block::BlockValue;
use holdfast_coap::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use holdfast_tests::ctl::{ctl_json, socket};
use holdfast_tests::{
    coap_response_code as response_code, free_port, free_udp_port, mosquitto_pub, wait_until,
    Gateway, MosquittoSub,
};
use serde_json::{json, Value};
use sha2::Digest as _;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// A gateway with `[lwm2m]` (plus `extra` keys) and anonymous access on.
fn gateway(extra: &str) -> (Gateway, u16) {
    gateway_with("", extra)
}

/// The same with `mqtt` keys added to `[mqtt]`.
fn gateway_with(mqtt: &str, extra: &str) -> (Gateway, u16) {
    let port = free_port();
    let lwm2m = free_udp_port();
    let config = format!(
        r#"
[node]
name = "gw-lwm2m"

[mqtt]
sys_interval = "1s"
{mqtt}

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[lwm2m]
bind = "127.0.0.1:{lwm2m}"
{extra}
"#
    );
    let gw = Gateway::start_config(&config, port);
    assert!(
        gw.wait_for_log("lwm2m server listening", WAIT),
        "{}",
        gw.log()
    );
    (gw, lwm2m)
}

/// The JSON messages a `mosquitto_sub -v` saw on `topic`.
fn json_on(sub: &MosquittoSub, topic: &str) -> Vec<Value> {
    sub.messages()
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{topic} ")))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

/// Waits for the message on `topic` whose `reqID` is `id` (or whose msgType is `id` when a
/// string), returns it.
fn wait_json(sub: &MosquittoSub, topic: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(WAIT, || {
        found = json_on(sub, topic).into_iter().find(|v| pick(v));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("nothing matching on {topic}; saw {:?}", sub.messages()))
}

fn req(id: u64) -> impl Fn(&Value) -> bool {
    move |v| v["reqID"] == json!(id)
}

/// A device process printing JSON events: the coap-node client of `tests/lwm2m/client.js`, or
/// the aiocoap device of `tests/lwm2m/blockwise_device.py`.
struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
}

impl NodeClient {
    fn start(port: u16, ep: &str, lifetime: u32) -> NodeClient {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lwm2m");
        assert!(
            dir.join("node_modules/coap-node").exists(),
            "run `npm ci --prefix tests/lwm2m` (scripts/test-all.sh does)"
        );
        let mut node = Command::new("node");
        node.arg(dir.join("client.js"))
            .args([port.to_string(), ep.to_owned(), lifetime.to_string()])
            .env("NODE_PATH", dir.join("node_modules"));
        NodeClient::spawn(node)
    }

    /// The aiocoap device of `tests/lwm2m/blockwise_device.py`, on `device_port`, registering
    /// `instances` instances of 3303.
    fn aiocoap(port: u16, device_port: u16, ep: &str, instances: usize) -> NodeClient {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lwm2m/blockwise_device.py");
        let mut python = Command::new("python3");
        python.arg(script).args([
            port.to_string(),
            device_port.to_string(),
            ep.to_owned(),
            instances.to_string(),
        ]);
        NodeClient::spawn(python)
    }

    fn spawn(mut command: Command) -> NodeClient {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        NodeClient {
            child,
            stdin,
            events,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the client");
    }

    fn wait_event(&self, event: &str) -> Value {
        let mut found = None;
        wait_until(WAIT, || {
            found = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["event"] == event)
                .cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {event} event; saw {:?}", self.events.lock().unwrap()))
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_client_registers_and_is_read_discovered_written_and_executed_through_mqtt() {
    let (gw, lwm2m) = gateway("");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let client = NodeClient::start(lwm2m, "node-1", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    let reg = wait_json(&sub, "lwm2m/node-1/up/resp", |v| v["msgType"] == "register");
    assert_eq!(reg["data"]["ep"], "node-1");
    assert_eq!(reg["data"]["lt"], 300);
    assert_eq!(reg["data"]["alternatePath"], "/");
    let objects = reg["data"]["objectList"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for o in ["/3/0", "/3303/0", "/3304/0", "/3311/0"] {
        assert!(objects.contains(&json!(o)), "{reg}");
    }
    assert!(!objects.contains(&json!("/")), "{reg}");
    let dn = "lwm2m/node-1/dn";
    let resp = "lwm2m/node-1/up/resp";
    // read of an instance (TLV from the device, typed by the object model)
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3303/0"}}"#,
        &[]
    ));
    let r = wait_json(&sub, resp, req(1));
    assert_eq!(r["msgType"], "read");
    assert_eq!(r["data"]["code"], "2.05");
    assert_eq!(r["data"]["codeMsg"], "content");
    assert_eq!(r["data"]["reqPath"], "/3303/0");
    let content = r["data"]["content"].as_array().cloned().unwrap_or_default();
    assert!(
        content.contains(&json!({"path": "/3303/0/5700", "value": 21.5})),
        "{r}"
    );
    assert!(
        content.contains(&json!({"path": "/3303/0/5701", "value": "Cel"})),
        "{r}"
    );
    // discover: link strings
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":2,"msgType":"discover","data":{"path":"/3311/0"}}"#,
        &[]
    ));
    let d = wait_json(&sub, resp, req(2));
    let links = d["data"]["content"].as_array().cloned().unwrap_or_default();
    assert!(links.contains(&json!("</3311/0/5851>")), "{d}");
    // write an Integer (TLV), then read it back
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":3,"msgType":"write","data":{"path":"/3311/0/5851","type":"Integer","value":"100"}}"#,
        &[]
    ));
    assert_eq!(wait_json(&sub, resp, req(3))["data"]["code"], "2.04");
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":4,"msgType":"read","data":{"path":"/3311/0/5851"}}"#,
        &[]
    ));
    assert_eq!(
        wait_json(&sub, resp, req(4))["data"]["content"],
        json!([{"path": "/3311/0/5851", "value": 100}])
    );
    // the device's refusal is passed on with its code; extra top-level keys are echoed
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":7,"cacheID":"c-1","msgType":"read","data":{"path":"/9999/0"}}"#,
        &[]
    ));
    let nf = wait_json(&sub, resp, req(7));
    assert_eq!(nf["data"]["code"], "4.04", "{nf}");
    assert_eq!(nf["cacheID"], "c-1");
    // a command the server cannot send: 4.00 with the request echoed
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":8,"msgType":"reboot","data":{}}"#,
        &[]
    ));
    assert_eq!(wait_json(&sub, resp, req(8))["data"]["code"], "4.00");
    // the endpoint is a broker client, and holdfast ctl lwm2m lists it
    let answer = ctl_json(&socket(&gw), &["lwm2m"]);
    let eps = answer["endpoints"].as_array().cloned().unwrap_or_default();
    let ep = eps
        .iter()
        .find(|e| e["ep"] == "node-1")
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(ep["lifetime"], 300);
    assert!(
        ep["objects"]
            .as_array()
            .is_some_and(|o| o.contains(&json!("/3311/0"))),
        "{answer}"
    );
    assert!(answer["stats"]["responses"].as_u64() >= Some(5), "{answer}");
    assert!(
        gw.log()
            .contains("client_id=node-1 username=\"\" protocol=\"lwm2m\""),
        "{}",
        gw.log()
    );
}

#[test]
fn observations_notify_with_sequence_numbers_until_cancelled() {
    let (gw, lwm2m) = gateway("");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut client = NodeClient::start(lwm2m, "node-obs", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    let dn = "lwm2m/node-obs/dn";
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":10,"msgType":"observe","data":{"path":"/3303/0/5700"}}"#,
        &[]
    ));
    let first = wait_json(&sub, "lwm2m/node-obs/up/resp", req(10));
    assert_eq!(
        first["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );
    client.send("set 3303 0 sensorValue 30.5");
    let n1 = wait_json(&sub, "lwm2m/node-obs/up/notify", |v| {
        v["data"]["content"][0]["value"] == json!(30.5)
    });
    assert_eq!(n1["msgType"], "notify");
    assert_eq!(n1["reqID"], 10);
    assert_eq!(n1["data"]["reqPath"], "/3303/0/5700");
    client.send("set 3303 0 sensorValue 31.5");
    let n2 = wait_json(&sub, "lwm2m/node-obs/up/notify", |v| {
        v["data"]["content"][0]["value"] == json!(31.5)
    });
    assert!(
        n2["seqNum"].as_u64() > n1["seqNum"].as_u64(),
        "{n1} then {n2}"
    );
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":11,"msgType":"cancel-observe","data":{"path":"/3303/0/5700"}}"#,
        &[]
    ));
    assert_eq!(
        wait_json(&sub, "lwm2m/node-obs/up/resp", req(11))["data"]["code"],
        "2.05"
    );
}

/// The `observe` answers on `up/resp`, by path.
fn observe_answers(sub: &MosquittoSub, topic: &str) -> Vec<(String, String)> {
    let mut answers: Vec<(String, String)> = json_on(sub, topic)
        .into_iter()
        .filter(|v| v["msgType"] == "observe")
        .map(|v| {
            let code = v["data"]["code"].as_str().unwrap_or_default().to_owned();
            let path = v["data"]["reqPath"].as_str().unwrap_or_default().to_owned();
            (path, code)
        })
        .collect();
    answers.sort();
    answers
}

#[test]
fn auto_observe_observes_every_registered_instance_of_a_real_client() {
    let (gw, lwm2m) = gateway("auto_observe = true");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut client = NodeClient::start(lwm2m, "node-auto", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    let resp = "lwm2m/node-auto/up/resp";
    let register = wait_json(&sub, resp, |v| v["msgType"] == "register");
    let instances: Vec<String> = register["data"]["objectList"]
        .as_array()
        .expect("objectList")
        .iter()
        .filter_map(|p| p.as_str())
        .filter(|p| p.matches('/').count() == 2 && !p.starts_with("/0/"))
        .map(str::to_owned)
        .collect();
    assert!(instances.contains(&"/3303/0".to_owned()), "{register}");
    // Every instance is observed, nothing else, and each observation is answered.
    wait_until(WAIT, || {
        observe_answers(&sub, resp).len() >= instances.len()
    });
    let mut expected: Vec<(String, String)> = instances
        .iter()
        .map(|p| (p.clone(), "2.05".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(observe_answers(&sub, resp), expected);
    client.send("set 3303 0 sensorValue 30.5");
    let notify = wait_json(&sub, "lwm2m/node-auto/up/notify", |v| {
        v["data"]["reqPath"] == "/3303/0"
            && v["data"]["content"]
                .as_array()
                .is_some_and(|c| c.contains(&json!({"path": "/3303/0/5700", "value": 30.5})))
    });
    assert_eq!(notify["msgType"], "notify");
    assert!(notify.get("reqID").is_none(), "{notify}");
}

#[test]
fn auto_observe_paths_are_observed_only_where_the_device_registered_them() {
    let (gw, lwm2m) = gateway(
        r#"auto_observe = ["/3303/0/5700", "/3304", "/3311/0/5851", "/3311/1", "/9/0", "/3442"]"#,
    );
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut client = NodeClient::start(lwm2m, "node-paths", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    let resp = "lwm2m/node-paths/up/resp";
    wait_until(WAIT, || observe_answers(&sub, resp).len() >= 3);
    client.send("set 3303 0 sensorValue 30.5");
    let notify = wait_json(&sub, "lwm2m/node-paths/up/notify", |v| {
        v["data"]["content"] == json!([{"path": "/3303/0/5700", "value": 30.5}])
    });
    assert_eq!(notify["data"]["reqPath"], "/3303/0/5700");
    // The device has 3303/0, 3304/0 and 3311/0, not 3311/1 nor objects 9 and 3442: the
    // commands go out in order, so by the notification every one that was queued was
    // answered. coap-node observes resources and instances, not whole objects (4.05).
    assert_eq!(
        observe_answers(&sub, resp),
        [
            ("/3303/0/5700".to_owned(), "2.05".to_owned()),
            ("/3304".to_owned(), "4.05".to_owned()),
            ("/3311/0/5851".to_owned(), "2.05".to_owned()),
        ]
    );
    client.send("set 3311 0 dimmer 70");
    let dimmer = wait_json(&sub, "lwm2m/node-paths/up/notify", |v| {
        v["data"]["reqPath"] == "/3311/0/5851"
    });
    assert_eq!(
        dimmer["data"]["content"],
        json!([{"path": "/3311/0/5851", "value": 70}])
    );
}

#[test]
fn update_and_deregister_are_published_and_end_the_client() {
    let (gw, lwm2m) = gateway("update_msg_publish_condition = \"always\"");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut client = NodeClient::start(lwm2m, "node-up", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    client.send("update 120");
    assert_eq!(client.wait_event("updated")["status"], "2.04");
    let up = wait_json(&sub, "lwm2m/node-up/up/resp", |v| v["msgType"] == "update");
    assert_eq!(up["data"]["lt"], 120);
    // after the update (a new source port), commands still reach the device
    assert!(mosquitto_pub(
        gw.port,
        "lwm2m/node-up/dn",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3304/0/5700"}}"#,
        &[]
    ));
    assert_eq!(
        wait_json(&sub, "lwm2m/node-up/up/resp", req(1))["data"]["code"],
        "2.05"
    );
    client.send("deregister");
    assert_eq!(client.wait_event("deregistered")["status"], "2.02");
    assert!(
        wait_until(WAIT, || gw
            .log()
            .contains("client_id=node-up protocol=\"lwm2m\" reason=")),
        "{}",
        gw.log()
    );
    let answer = ctl_json(&socket(&gw), &["lwm2m"]);
    assert_eq!(answer["endpoints"], json!([]), "{answer}");
}

// ---- raw devices ----

/// A CoAP device on its own socket.
struct RawDevice {
    socket: UdpSocket,
    mid: u16,
}

impl RawDevice {
    fn new(local_ip: &str, server: u16) -> RawDevice {
        let socket = UdpSocket::bind((local_ip, 0)).expect("bind");
        socket.connect(("127.0.0.1", server)).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        RawDevice { socket, mid: 100 }
    }

    /// Sends a CON request and returns its response (retransmitting as a client would).
    fn request(
        &mut self,
        method: RequestType,
        path: &[&str],
        query: &[&str],
        payload: &[u8],
    ) -> Packet {
        self.mid += 1;
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = self.mid;
        p.set_token(self.mid.to_be_bytes().to_vec());
        for seg in path {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        p.payload = payload.to_vec();
        let bytes = p.to_bytes().expect("encode");
        for _ in 0..10 {
            self.socket.send(&bytes).expect("send");
            let mut buf = [0u8; 1500];
            while let Ok(n) = self.socket.recv(&mut buf) {
                if let Ok(r) = Packet::from_bytes(&buf[..n]) {
                    if r.header.message_id == self.mid
                        && r.header.get_type() == MessageType::Acknowledgement
                    {
                        return r;
                    }
                }
            }
        }
        panic!("no answer to message {}", self.mid);
    }

    fn register(&mut self, query: &[&str]) -> Packet {
        self.request(
            RequestType::Post,
            &["rd"],
            query,
            b"</1/0>,</3/0>,</3303/0>",
        )
    }

    /// The next request the server sends, answered with `code` and a text payload.
    fn answer_next(&self, wait: Duration, code: ResponseType, text: &str) -> Option<Packet> {
        let req = self.next_request(wait)?;
        let mut ack = Packet::new();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = req.header.message_id;
        ack.header.code = MessageClass::Response(code);
        ack.set_token(req.get_token().to_vec());
        ack.payload = text.as_bytes().to_vec();
        self.send(&ack);
        Some(req)
    }

    /// The next request the server sends, unanswered.
    fn next_request(&self, wait: Duration) -> Option<Packet> {
        let deadline = std::time::Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while std::time::Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let Ok(req) = Packet::from_bytes(&buf[..n]) else {
                continue;
            };
            if matches!(req.header.code, MessageClass::Request(_)) {
                return Some(req);
            }
        }
        None
    }

    fn send(&self, p: &Packet) {
        self.socket
            .send(&p.to_bytes().expect("encode"))
            .expect("send");
    }
}

fn location(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::LocationPath)
        .map(|l| {
            l.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn queue_mode_holds_commands_until_the_device_next_talks() {
    let (gw, lwm2m) = gateway("qmode_time_window = \"1s\"");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut dev = RawDevice::new("127.0.0.1", lwm2m);
    let created = dev.register(&["ep=sleepy", "lt=300", "lwm2m=1.1", "b=UQ"]);
    assert_eq!(
        created.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    let loc = location(&created);
    assert_eq!(loc[0], "rd");
    wait_json(&sub, "lwm2m/sleepy/up/resp", |v| v["msgType"] == "register");
    // Past the window the device is asleep: the command waits.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(mosquitto_pub(
        gw.port,
        "lwm2m/sleepy/dn",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3303/0/5700"}}"#,
        &[]
    ));
    assert!(
        dev.answer_next(Duration::from_secs(2), ResponseType::Content, "1")
            .is_none(),
        "a command reached a sleeping device"
    );
    // It wakes up with an Update: the held command follows the 2.04.
    let changed = dev.request(RequestType::Post, &["rd", &loc[1]], &[], b"");
    assert_eq!(
        changed.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    let read = dev
        .answer_next(WAIT, ResponseType::Content, "22.5")
        .expect("the held command");
    let path: Vec<String> = read
        .get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(path, ["3303", "0", "5700"]);
    assert_eq!(
        wait_json(&sub, "lwm2m/sleepy/up/resp", req(1))["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 22.5}])
    );
}

#[test]
fn a_registration_expires_with_its_lifetime_and_the_client_is_disconnected() {
    let (gw, lwm2m) = gateway("lifetime_min = \"1s\"");
    let mut dev = RawDevice::new("127.0.0.1", lwm2m);
    let created = dev.register(&["ep=short", "lt=2"]);
    assert_eq!(
        created.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    assert!(
        wait_until(WAIT, || gw
            .log()
            .contains("lwm2m: registration lifetime ran out")),
        "{}",
        gw.log()
    );
    assert!(
        wait_until(WAIT, || gw
            .log()
            .contains("client_id=short protocol=\"lwm2m\" reason=")),
        "{}",
        gw.log()
    );
    // Its location is gone: an Update gets 4.04.
    let loc = location(&created);
    let r = dev.request(RequestType::Post, &["rd", &loc[1]], &[], b"");
    assert_eq!(
        r.header.code,
        MessageClass::Response(ResponseType::NotFound)
    );
}

#[test]
fn registrations_are_checked_and_a_live_name_is_not_taken_from_another_address() {
    let (gw, lwm2m) = gateway("");
    let mut a = RawDevice::new("127.0.0.1", lwm2m);
    let code = |p: Packet| p.header.code;
    assert_eq!(
        code(a.register(&["ep=meter", "lt=60"])),
        MessageClass::Response(ResponseType::Created)
    );
    // The same name from another loopback address while the first is live: refused.
    let mut b = RawDevice::new("127.0.0.2", lwm2m);
    assert_eq!(
        code(b.register(&["ep=meter", "lt=60"])),
        MessageClass::Response(ResponseType::Forbidden)
    );
    // From its own address (a rebooted device): a new registration.
    let mut again = RawDevice::new("127.0.0.1", lwm2m);
    assert_eq!(
        code(again.register(&["ep=meter", "lt=60"])),
        MessageClass::Response(ResponseType::Created)
    );
    assert_eq!(
        code(a.register(&["lt=60"])),
        MessageClass::Response(ResponseType::BadRequest)
    );
    assert_eq!(
        code(a.register(&["ep=x"])),
        MessageClass::Response(ResponseType::BadRequest)
    );
    assert_eq!(
        code(a.register(&["ep=x", "lt=60", "lwm2m=2.0"])),
        MessageClass::Response(ResponseType::PreconditionFailed)
    );
    assert_eq!(
        code(a.register(&["ep=x", "lt=999999"])),
        MessageClass::Response(ResponseType::BadRequest)
    );
    assert_eq!(
        code(a.request(RequestType::Get, &["nothing"], &[], b"")),
        MessageClass::Response(ResponseType::NotFound)
    );
    assert!(gw.log().contains("lwm2m: registration refused: endpoint name \"meter\" is registered from another address"), "{}", gw.log());
}

#[test]
fn garbage_datagrams_are_counted_while_a_device_is_served() {
    let (gw, lwm2m) = gateway("max_message_size = 512");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut client = NodeClient::start(lwm2m, "node-storm", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    let storm = UdpSocket::bind("127.0.0.1:0").unwrap();
    storm.connect(("127.0.0.1", lwm2m)).unwrap();
    for i in 0..2000u32 {
        let d: Vec<u8> = match i % 5 {
            0 => vec![],
            1 => vec![0x40, 0x02],
            2 => vec![0x80, 0x01, 0, 1],
            3 => vec![0x55; 600],
            _ => (0..40).map(|b| (b as u32 * i) as u8).collect(),
        };
        let _ = storm.send(&d);
    }
    assert!(mosquitto_pub(
        gw.port,
        "lwm2m/node-storm/dn",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3304/0/5700"}}"#,
        &[]
    ));
    assert_eq!(
        wait_json(&sub, "lwm2m/node-storm/up/resp", req(1))["data"]["code"],
        "2.05"
    );
    client.send("exit");
    let answer = ctl_json(&socket(&gw), &["lwm2m"]);
    assert!(
        answer["stats"]["bad_datagrams"].as_u64() >= Some(1),
        "{answer}"
    );
    assert!(
        gw.log().contains("lwm2m: bad datagram dropped"),
        "{}",
        gw.log()
    );
}

/// The Uri-Path, Uri-Query and Content-Format of a request.
fn request_parts(p: &Packet) -> (String, Vec<String>, Option<Vec<u8>>) {
    let strings = |o| {
        p.get_option(o)
            .map(|l| {
                l.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let path: Vec<String> = strings(CoapOption::UriPath);
    (
        format!("/{}", path.join("/")),
        strings(CoapOption::UriQuery),
        p.get_first_option(CoapOption::ContentFormat).cloned(),
    )
}

#[test]
fn every_command_reaches_the_device_as_the_request_lwm2m_defines() {
    use holdfast_lwm2m::tlv;
    let (gw, lwm2m) = gateway("");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut dev = RawDevice::new("127.0.0.1", lwm2m);
    dev.request(
        RequestType::Post,
        &["rd"],
        &["ep=raw", "lt=300", "lwm2m=1.1"],
        br#"</lwm2m>;rt="oma.lwm2m",</lwm2m/3311/0>,</lwm2m/3303/0>"#,
    );
    let reg = wait_json(&sub, "lwm2m/raw/up/resp", |v| v["msgType"] == "register");
    assert_eq!(reg["data"]["alternatePath"], "/lwm2m");
    assert_eq!(reg["data"]["objectList"], json!(["/3311/0", "/3303/0"]));
    let dn = "lwm2m/raw/dn";
    let tlv_cf = Some(vec![0x2d, 0x16]); // 11542
    let step = |id: u64, command: &str| -> Packet {
        assert!(mosquitto_pub(gw.port, dn, command, &[]));
        let got = dev
            .answer_next(WAIT, ResponseType::Changed, "")
            .unwrap_or_else(|| panic!("command {id} did not reach the device"));
        wait_json(&sub, "lwm2m/raw/up/resp", req(id));
        got
    };
    // multi-write: POST (partial update) on the instance, TLV of its resources, by type
    let w = step(
        1,
        r#"{"reqID":1,"msgType":"write","data":{"basePath":"/3311/0","content":[{"path":"5850","type":"Boolean","value":"true"},{"path":"5851","value":200}]}}"#,
    );
    assert_eq!(w.header.code, MessageClass::Request(RequestType::Post));
    let (path, _, cf) = request_parts(&w);
    assert_eq!(
        (path.as_str(), cf.clone()),
        ("/lwm2m/3311/0", tlv_cf.clone())
    );
    let entries = tlv::decode(&w.payload).unwrap();
    assert_eq!(entries[0].value, tlv::Value::Bytes(vec![1]));
    // 200 from the model's Integer type: two bytes, not a negative one-byte -56
    assert_eq!(entries[1].value, tlv::Value::Bytes(vec![0x00, 0xc8]));
    // single write: PUT with the resource's TLV
    let w = step(
        2,
        r#"{"reqID":2,"msgType":"write","data":{"path":"/3303/0/5750","type":"String","value":"boiler"}}"#,
    );
    assert_eq!(w.header.code, MessageClass::Request(RequestType::Put));
    assert_eq!(
        tlv::decode(&w.payload).unwrap()[0].value,
        tlv::Value::Bytes(b"boiler".to_vec())
    );
    // write-attr: PUT with the attributes as query, no payload
    let a = step(
        3,
        r#"{"reqID":3,"msgType":"write-attr","data":{"path":"/3303/0/5700","pmin":"5","pmax":"60","gt":"30"}}"#,
    );
    let (path, query, cf) = request_parts(&a);
    assert_eq!(
        (path.as_str(), query, cf),
        (
            "/lwm2m/3303/0/5700",
            vec!["pmin=5".to_owned(), "pmax=60".into(), "gt=30".into()],
            None
        )
    );
    // execute: POST with the arguments as text
    let x = step(
        4,
        r#"{"reqID":4,"msgType":"execute","data":{"path":"/3303/0/5605","args":"0='x'"}}"#,
    );
    assert_eq!(
        (x.header.code, x.payload.as_slice()),
        (MessageClass::Request(RequestType::Post), &b"0='x'"[..])
    );
    // create: POST on the object with the new instance's TLV
    let c = step(
        5,
        r#"{"reqID":5,"msgType":"create","data":{"basePath":"/3303","content":[{"path":"/3303/1/5750","type":"String","value":"new"}]}}"#,
    );
    let (path, _, _) = request_parts(&c);
    assert_eq!(path, "/lwm2m/3303");
    let inst = tlv::decode(&c.payload).unwrap();
    assert_eq!((inst[0].kind, inst[0].id), (tlv::Kind::ObjectInstance, 1));
    // delete
    let d = step(
        6,
        r#"{"reqID":6,"msgType":"delete","data":{"path":"/3303/1"}}"#,
    );
    assert_eq!(d.header.code, MessageClass::Request(RequestType::Delete));
    // discover asks for link format
    let disc = step(
        7,
        r#"{"reqID":7,"msgType":"discover","data":{"path":"/3303/0"}}"#,
    );
    assert_eq!(
        disc.get_first_option(CoapOption::Accept).cloned(),
        Some(vec![40])
    );
}

#[test]
fn over_dtls_the_endpoint_name_is_the_psk_identity() {
    let dir = holdfast_tests::TempDir::new("lwm2m-dtls");
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "sensor-9:7365637265746b6579\n").unwrap();
    let dtls = free_udp_port();
    let (gw, lwm2m) = gateway(&format!(
        "dtls = {{ bind = \"127.0.0.1:{dtls}\", psk_file = {:?} }}",
        psk.display().to_string()
    ));
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let register = |ep: &str| {
        let mut cmd = Command::new("coap-client-openssl");
        cmd.args([
            "-B",
            "4",
            "-u",
            "sensor-9",
            "-k",
            "secretkey",
            "-m",
            "post",
            "-e",
            "</3303/0>",
        ])
        .arg(format!(
            "coaps://127.0.0.1:{dtls}/rd?ep={ep}&lt=60&lwm2m=1.1"
        ));
        let (_, out, err) = holdfast_tests::run_with_timeout(&mut cmd, WAIT);
        format!("{out}{err}")
    };
    let said = register("sensor-9");
    assert_eq!(response_code(&said), None, "{said}");
    let reg = wait_json(&sub, "lwm2m/sensor-9/up/resp", |v| {
        v["msgType"] == "register"
    });
    assert_eq!(reg["data"]["objectList"], json!(["/3303/0"]));
    assert!(
        gw.log()
            .contains("client_id=sensor-9 username=\"sensor-9\" protocol=\"lwm2m\""),
        "{}",
        gw.log()
    );
    // Another name with this key: refused.
    let said = register("someone-else");
    assert_eq!(response_code(&said), Some("4.00"), "{said}");
    assert!(
        gw.log()
            .contains("over DTLS the endpoint name must be the proven identity"),
        "{}",
        gw.log()
    );
    // The DTLS endpoint's name cannot be taken over plain CoAP from the same address.
    let answer = ctl_json(&socket(&gw), &["lwm2m"]);
    assert_eq!(answer["endpoints"][0]["ep"], "sensor-9", "{answer}");
    let mut plain = RawDevice::new("127.0.0.1", lwm2m);
    let r = plain.register(&["ep=sensor-9", "lt=60"]);
    assert_eq!(
        r.header.code,
        MessageClass::Response(ResponseType::Forbidden)
    );
}

#[test]
fn over_dtls_with_certificates_the_endpoint_name_is_the_certificates_cn() {
    let dir = holdfast_tests::TempDir::new("lwm2m-dtls-cert");
    let pki = holdfast_tests::pki::make_pki_with_client(dir.path(), "sensor-x509");
    let dtls = free_udp_port();
    let (gw, _lwm2m) = gateway(&format!(
        "dtls = {{ bind = \"127.0.0.1:{dtls}\", cert = {:?}, key = {:?}, client_ca = {:?} }}",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    ));
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let register = |ep: &str| {
        let mut cmd = Command::new("coap-client-openssl");
        cmd.args(["-B", "4", "-c"])
            .arg(&pki.client_cert)
            .arg("-j")
            .arg(&pki.client_key)
            .arg("-C")
            .arg(&pki.ca)
            .args(["-m", "post", "-e", "</3303/0>"])
            .arg(format!(
                "coaps://127.0.0.1:{dtls}/rd?ep={ep}&lt=60&lwm2m=1.1"
            ));
        let (_, out, err) = holdfast_tests::run_with_timeout(&mut cmd, WAIT);
        format!("{out}{err}")
    };
    let said = register("sensor-x509");
    assert_eq!(response_code(&said), None, "{said}\n{}", gw.log());
    let reg = wait_json(&sub, "lwm2m/sensor-x509/up/resp", |v| {
        v["msgType"] == "register"
    });
    assert_eq!(reg["data"]["objectList"], json!(["/3303/0"]));
    assert!(
        gw.log()
            .contains("client_id=sensor-x509 username=\"sensor-x509\" protocol=\"lwm2m\""),
        "{}",
        gw.log()
    );
    // Another name with this certificate: refused.
    let said = register("someone-else");
    assert_eq!(response_code(&said), Some("4.00"), "{said}");
}

/// A piggybacked 2.05 to `req` with `options` and a text payload.
fn content_ack(req: &Packet, options: &[(CoapOption, Vec<u8>)], text: &[u8]) -> Packet {
    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = req.header.message_id;
    ack.header.code = MessageClass::Response(ResponseType::Content);
    ack.set_token(req.get_token().to_vec());
    ack.add_option(CoapOption::ContentFormat, vec![]); // 0: text/plain
    for (option, value) in options {
        ack.add_option(*option, value.clone());
    }
    ack.payload = text.to_vec();
    ack
}

/// Publishes an observe command (`reqID` 1) of `path` for `ep` on `lwm2m/{ep}/dn` and returns
/// the request it becomes at the raw device.
fn observe_from_the_cloud(port: u16, dev: &RawDevice, ep: &str, path: &str) -> Packet {
    let command = format!(r#"{{"reqID":1,"msgType":"observe","data":{{"path":"{path}"}}}}"#);
    assert!(mosquitto_pub(
        port,
        &format!("lwm2m/{ep}/dn"),
        &command,
        &[]
    ));
    dev.next_request(WAIT).expect("the observe request")
}

fn block(num: u16, more: bool, szx: u8) -> Vec<u8> {
    BlockValue {
        num,
        more,
        size_exponent: szx,
    }
    .into()
}

#[test]
fn aiocoap_registers_is_read_and_takes_a_firmware_package_block_by_block() {
    let (gw, lwm2m) = gateway("max_body_size = \"8KB\"");
    let sub = MosquittoSub::start(gw.port, "lwm2m/bw-1/up/#", &["-v"]);
    // 150 instances: an object list of about 1.7 KB, which aiocoap sends as Block1 blocks.
    let mut device = NodeClient::aiocoap(lwm2m, free_udp_port(), "bw-1", 150);
    let registered = device.wait_event("registered");
    assert!(
        registered["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("2.01")),
        "{registered}"
    );
    assert!(registered["links"].as_u64() > Some(1024), "{registered}");
    let reg = wait_json(&sub, "lwm2m/bw-1/up/resp", |v| v["msgType"] == "register");
    let objects = reg["data"]["objectList"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(objects.len(), 153, "{reg}");
    assert!(objects.contains(&json!("/3303/149")), "{reg}");

    // A read whose answer (3,000 bytes of text) comes in Block2 blocks: published whole.
    device.send("text 3000 x");
    device.wait_event("text");
    let dn = "lwm2m/bw-1/dn";
    let resp = "lwm2m/bw-1/up/resp";
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3303/0/5701"}}"#,
        &[]
    ));
    let r = wait_json(&sub, resp, req(1));
    assert_eq!(r["data"]["code"], "2.05", "{r}");
    assert_eq!(
        r["data"]["content"],
        json!([{"path": "/3303/0/5701", "value": "x".repeat(3000)}])
    );

    // A firmware package of 80,000 bytes (more than one UDP datagram can carry) written to
    // /5/0/0: sent in Block1 blocks, each after the device's 2.31 Continue.
    let firmware: Vec<u8> = (0..80_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let value = base64::engine::general_purpose::STANDARD.encode(&firmware);
    let write = json!({"reqID": 2, "msgType": "write",
        "data": {"path": "/5/0/0", "type": "Opaque", "value": value}});
    assert!(mosquitto_pub(gw.port, dn, &write.to_string(), &[]));
    let w = wait_json(&sub, resp, req(2));
    assert_eq!(w["data"]["code"], "2.04", "{w}");
    let got = device.wait_event("firmware");
    assert_eq!(got["bytes"], 80_000);
    let sha = sha2::Sha256::digest(&firmware);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got["sha256"], hex.as_str());

    // An answer past max_body_size (8 KB) is given up: 4.13 with the reason, and the next
    // command is served.
    device.send("text 10000 y");
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":3,"msgType":"read","data":{"path":"/3303/0/5701"}}"#,
        &[]
    ));
    let big = wait_json(&sub, resp, req(3));
    assert_eq!(big["data"]["code"], "4.13", "{big}");
    assert!(
        big["data"]["content"]
            .as_str()
            .is_some_and(|t| t.contains("8192")),
        "{big}"
    );
    device.send("text 10 z");
    assert!(mosquitto_pub(
        gw.port,
        dn,
        r#"{"reqID":4,"msgType":"read","data":{"path":"/3303/0/5701"}}"#,
        &[]
    ));
    assert_eq!(
        wait_json(&sub, resp, req(4))["data"]["content"],
        json!([{"path": "/3303/0/5701", "value": "zzzzzzzzzz"}])
    );
}

#[test]
fn a_real_clients_answer_larger_than_a_block_is_fetched_block_by_block() {
    let (gw, lwm2m) = gateway("");
    let sub = MosquittoSub::start(gw.port, "lwm2m/#", &["-v"]);
    let mut client = NodeClient::start(lwm2m, "node-big", 300);
    assert_eq!(client.wait_event("registered")["status"], "2.01");
    // coap-node answers in 1,024-byte Block2 blocks from 1,280 bytes on.
    let units = "u".repeat(2500);
    client.send(&format!("set 3303 0 units {units}"));
    client.wait_event("set");
    assert!(mosquitto_pub(
        gw.port,
        "lwm2m/node-big/dn",
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3303/0"}}"#,
        &[]
    ));
    let r = wait_json(&sub, "lwm2m/node-big/up/resp", req(1));
    assert_eq!(r["data"]["code"], "2.05", "{r}");
    let content = r["data"]["content"].as_array().cloned().unwrap_or_default();
    assert!(
        content.contains(&json!({"path": "/3303/0/5701", "value": units})),
        "{r}"
    );
    assert!(
        content.contains(&json!({"path": "/3303/0/5700", "value": 21.5})),
        "{r}"
    );
}

#[test]
fn a_notification_larger_than_a_block_is_fetched_to_its_end_before_it_is_published() {
    let (gw, lwm2m) = gateway("");
    let sub = MosquittoSub::start(gw.port, "lwm2m/raw-bw/up/#", &["-v"]);
    let mut dev = RawDevice::new("127.0.0.1", lwm2m);
    let created = dev.register(&["ep=raw-bw", "lt=300"]);
    assert_eq!(
        created.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    wait_json(&sub, "lwm2m/raw-bw/up/resp", |v| v["msgType"] == "register");
    let observe = observe_from_the_cloud(gw.port, &dev, "raw-bw", "/3303/0/5701");
    assert_eq!(observe.get_observe_value().and_then(Result::ok), Some(0));
    dev.send(&content_ack(
        &observe,
        &[(CoapOption::Observe, vec![1])],
        b"short",
    ));
    assert_eq!(
        wait_json(&sub, "lwm2m/raw-bw/up/resp", req(1))["data"]["code"],
        "2.05"
    );
    // A notification of 150 bytes in 64-byte blocks: the first block comes with it (NON).
    let text: Vec<u8> = (0..150u8).map(|i| b'a' + i % 26).collect();
    let mut note = Packet::new();
    note.header.set_type(MessageType::NonConfirmable);
    note.header.message_id = 7000;
    note.header.code = MessageClass::Response(ResponseType::Content);
    note.set_token(observe.get_token().to_vec());
    note.add_option(CoapOption::Observe, vec![5]);
    note.add_option(CoapOption::ContentFormat, vec![]);
    note.add_option(CoapOption::Block2, block(0, true, 2));
    note.payload = text[..64].to_vec();
    dev.send(&note);
    // The server asks for the rest with GETs of the path: no Observe, not the observation's
    // token, the next block each time.
    for (num, range) in [(1u16, 64..128), (2, 128..150)] {
        let get = dev.next_request(WAIT).expect("a GET for the next block");
        assert_eq!(get.header.code, MessageClass::Request(RequestType::Get));
        assert!(get.get_observe_value().is_none(), "{get:?}");
        assert_ne!(get.get_token(), observe.get_token());
        let b2 = get
            .get_first_option_as::<BlockValue>(CoapOption::Block2)
            .and_then(Result::ok)
            .expect("Block2");
        assert_eq!((b2.num, b2.size_exponent), (num, 2));
        let more = range.end < text.len();
        dev.send(&content_ack(
            &get,
            &[(CoapOption::Block2, block(num, more, 2))],
            &text[range],
        ));
    }
    let n = wait_json(&sub, "lwm2m/raw-bw/up/notify", |v| v["seqNum"] == 5);
    assert_eq!(n["data"]["code"], "2.05", "{n}");
    assert_eq!(
        n["data"]["content"],
        json!([{"path": "/3303/0/5701", "value": String::from_utf8_lossy(&text)}])
    );
    // The observation goes on: a small notification is published as it is.
    let mut small = note.clone();
    small.header.message_id = 7001;
    small.clear_option(CoapOption::Block2);
    small.clear_option(CoapOption::Observe);
    small.add_option(CoapOption::Observe, vec![6]);
    small.payload = b"done".to_vec();
    dev.send(&small);
    let n = wait_json(&sub, "lwm2m/raw-bw/up/notify", |v| v["seqNum"] == 6);
    assert_eq!(
        n["data"]["content"],
        json!([{"path": "/3303/0/5701", "value": "done"}])
    );
}

#[test]
fn notifications_held_back_by_a_full_subscriber_queue_all_arrive_in_order() {
    // A subscriber that stops reading: its queue fills (4 in flight, 5 queued) and holds the
    // endpoint back. What the endpoint publishes meanwhile waits in order, and nothing is lost
    // once the subscriber reads again.
    let (gw, lwm2m) = gateway_with(
        "max_mqueue_len = 5\nmax_inflight = 4\nslow_subscriber_timeout = \"60s\"",
        "",
    );
    let port = gw.port;
    let sub = MosquittoSub::start(gw.port, "lwm2m/held/up/resp", &["-v"]);
    let (mut stuck, _) = holdfast_tests::raw5::Raw::connect_with_expiry(port, "stuck", true, 0);
    stuck.subscribe_one(
        "lwm2m/held/up/notify",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    );
    let mut dev = RawDevice::new("127.0.0.1", lwm2m);
    dev.register(&["ep=held", "lt=300"]);
    wait_json(&sub, "lwm2m/held/up/resp", |v| v["msgType"] == "register");
    let observe = observe_from_the_cloud(gw.port, &dev, "held", "/3303/0/5700");
    dev.send(&content_ack(
        &observe,
        &[(CoapOption::Observe, vec![1])],
        b"0",
    ));
    wait_json(&sub, "lwm2m/held/up/resp", req(1));
    const NOTIFICATIONS: u8 = 30;
    for i in 1..=NOTIFICATIONS {
        let mut note = Packet::new();
        note.header.set_type(MessageType::NonConfirmable);
        note.header.message_id = 9000 + u16::from(i);
        note.header.code = MessageClass::Response(ResponseType::Content);
        note.set_token(observe.get_token().to_vec());
        note.add_option(CoapOption::Observe, vec![i + 1]);
        note.add_option(CoapOption::ContentFormat, vec![]);
        note.payload = i.to_string().into_bytes();
        dev.send(&note);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut values = Vec::new();
    while let Some(p) = stuck.next_publish(Duration::from_secs(3)) {
        stuck.ack(&p);
        let v: Value = serde_json::from_slice(&p.payload).expect("notify JSON");
        values.push(v["data"]["content"][0]["value"].as_f64().unwrap_or(-1.0));
    }
    let expected: Vec<f64> = (1..=NOTIFICATIONS).map(f64::from).collect();
    assert_eq!(values, expected, "log:\n{}", gw.log());
    // The subscriber's queue did hold the endpoint back.
    let stats = ctl_json(&socket(&gw), &["stats"]);
    assert!(
        stats["stats"]["messages/held_back"].as_u64() > Some(0),
        "{stats}"
    );
}
