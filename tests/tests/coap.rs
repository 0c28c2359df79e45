//! The CoAP gateway driven by libcoap's client (`coap-client-notls`, Debian `libcoap3-bin`)
//! and by raw datagrams: EMQX's `ps/` publish, read and observe, block-wise transfer both
//! ways, connection mode with the password file, ACL, deduplication of a retransmitted CON,
//! and bad datagrams that never take the gateway down. Everything on loopback.

use holdfast_coap::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use holdfast_tests::ctl::{ctl, ctl_json, socket};
use holdfast_tests::{
    coap_response_code as response_code, free_port, free_udp_port, mosquitto_pub, password_file,
    run_with_timeout, wait_until, Gateway, MosquittoSub, TempDir,
};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with MQTT on a free port and `[coap]` (plus `coap_extra` keys) on another;
/// `auth_extra` is added to `[auth]` (anonymous access on).
fn gateway(coap_extra: &str, auth_extra: &str) -> (Gateway, u16) {
    let port = free_port();
    let coap = free_udp_port();
    let config = format!(
        r#"
[node]
name = "gw-coap"

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true
{auth_extra}

[coap]
bind = "127.0.0.1:{coap}"
{coap_extra}
"#
    );
    let gw = Gateway::start_config(&config, port);
    assert!(
        gw.wait_for_log("coap gateway listening", WAIT),
        "{}",
        gw.log()
    );
    (gw, coap)
}

/// Runs `coap-client-notls` with `args` then `uri` (relative to the gateway); returns the
/// payload it wrote (to a file, without the newline it adds on stdout) and its stderr. It
/// exits 0 even on 4.xx, so callers check what it printed.
fn coap_client(coap: u16, args: &[&str], uri: &str) -> (String, String) {
    let dir = TempDir::new("coap-client");
    let out = dir.path().join("out");
    let mut cmd = Command::new("coap-client-notls");
    cmd.args(["-B", "8", "-o"])
        .arg(&out)
        .args(args)
        .arg(format!("coap://127.0.0.1:{coap}/{uri}"));
    let (_, stdout, stderr) = run_with_timeout(&mut cmd, WAIT);
    let payload = std::fs::read_to_string(&out).unwrap_or_default();
    (payload, format!("{stdout}{stderr}"))
}

/// A `coap-client-notls -s` observer running in the background, writing notifications.
struct Observer {
    child: Child,
    out: std::path::PathBuf,
    _dir: TempDir,
}

impl Observer {
    fn start(coap: u16, uri: &str, seconds: u32) -> Observer {
        let dir = TempDir::new("coap-observe");
        let out = dir.path().join("out");
        let child = Command::new("coap-client-notls")
            .args([
                "-w",
                "-s",
                &seconds.to_string(),
                "-B",
                &(seconds + 2).to_string(),
                "-o",
            ])
            .arg(&out)
            .arg(format!("coap://127.0.0.1:{coap}/{uri}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run coap-client-notls");
        Observer {
            child,
            out,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn coap_publishes_reach_mqtt_subscribers_and_a_get_reads_the_retained_message() {
    let (gw, coap) = gateway("", "");
    let sub = MosquittoSub::start(gw.port, "sensors/#", &["-v", "-q", "1"]);
    // CON (QoS 1 by the default publish_qos = "coap"), NON, and retained with qos=0.
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-e", "21.5"],
        "ps/sensors/t1?clientid=dev1",
    );
    assert_eq!(response_code(&said), None, "{said}");
    coap_client(
        coap,
        &["-m", "put", "-N", "-e", "19.0"],
        "ps/sensors/t2?clientid=dev1",
    );
    coap_client(
        coap,
        &["-m", "post", "-e", "on"],
        "ps/sensors/lamp?c=dev2&q=0&r=true",
    );
    let got = sub.wait_for(3, WAIT);
    assert_eq!(
        got,
        ["sensors/t1 21.5", "sensors/t2 19.0", "sensors/lamp on"],
        "{}",
        gw.log()
    );
    // A plain GET reads the retained message (EMQX refuses; users asked for it) ...
    let (payload, _) = coap_client(coap, &[], "ps/sensors/lamp?clientid=reader");
    assert_eq!(payload, "on");
    // ... and says 4.04 without one, as for a path that is not ps/ or mqtt/.
    let (_, said) = coap_client(coap, &[], "ps/sensors/none?clientid=reader");
    assert_eq!(response_code(&said), Some("4.04"), "{said}");
    let (_, said) = coap_client(coap, &["-m", "post", "-e", "x"], "nothing/here");
    assert_eq!(response_code(&said), Some("4.04"), "{said}");
    let (_, said) = coap_client(coap, &["-m", "delete"], "ps/sensors/t1");
    assert_eq!(response_code(&said), Some("4.05"), "{said}");
    let (_, said) = coap_client(coap, &["-m", "post", "-e", "x"], "ps/a?qos=7");
    assert_eq!(response_code(&said), Some("4.00"), "{said}");
    // A CoAP client is a broker client: it shows in the $SYS connected event.
    assert!(
        gw.wait_for_log("client connected peer=127.0.0.1", WAIT)
            && gw.log().contains("client_id=dev1")
            && gw.log().contains("protocol=\"coap\""),
        "{}",
        gw.log()
    );
}

#[test]
fn an_observer_gets_a_notification_per_message_and_its_retained_message_first() {
    let (gw, coap) = gateway("", "");
    assert!(mosquitto_pub(
        gw.port,
        "plant/state",
        "retained-first",
        &["-r"]
    ));
    // %23 is '#': a CoAP URI cannot carry it unescaped.
    let obs = Observer::start(coap, "ps/plant/%23?clientid=watcher&qos=1", 6);
    assert!(
        wait_until(WAIT, || gw.log().contains("filter=\"plant/#\"")),
        "{}",
        gw.log()
    );
    for i in 1..=3 {
        assert!(mosquitto_pub(
            gw.port,
            "plant/line1",
            &format!("q1-{i}"),
            &["-q", "1"]
        ));
    }
    assert!(mosquitto_pub(gw.port, "plant/line2", "q0", &[]));
    assert!(mosquitto_pub(gw.port, "other/topic", "not-for-it", &[]));
    let want = ["retained-first", "q1-1", "q1-2", "q1-3", "q0"];
    assert!(
        wait_until(WAIT, || obs.lines().len() >= want.len()),
        "got {:?}\n{}",
        obs.lines(),
        gw.log()
    );
    assert_eq!(obs.lines(), want);
    // holdfast ctl coap lists the observer with its filter, and the counters.
    let answer = ctl_json(&socket(&gw), &["coap"]);
    let peers = answer["peers"].as_array().cloned().unwrap_or_default();
    let watcher = peers
        .iter()
        .find(|p| p["client_id"] == "watcher")
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(
        watcher["observing"],
        serde_json::json!(["plant/#"]),
        "{answer}"
    );
    assert_eq!(watcher["connection_mode"], false);
    assert!(
        answer["stats"]["notifications"].as_u64() >= Some(5),
        "{answer}"
    );
    // ... and the watcher is a broker client like any other.
    let (ok, out, _) = ctl(&socket(&gw), &["clients", "list"]);
    assert!(
        ok && out.contains("watcher") && out.contains("coap"),
        "{out}"
    );
}

#[test]
fn block_wise_transfer_works_both_ways() {
    let (gw, coap) = gateway("max_body_size = \"16KB\"", "");
    let dir = TempDir::new("coap-block");
    let body: String = (0..4000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let file_arg = file.display().to_string();
    // Block1: 64-byte blocks, reassembled and published as one retained message.
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-b", "64", "-f", &file_arg],
        "ps/big/doc?clientid=uploader&retain=true",
    );
    assert_eq!(response_code(&said), None, "{said}");
    let sub = MosquittoSub::start(gw.port, "big/doc", &[]);
    assert_eq!(sub.wait_for(1, WAIT), std::slice::from_ref(&body));
    // Block2: read back in 256-byte blocks.
    let (payload, _) = coap_client(coap, &["-b", "256"], "ps/big/doc?clientid=reader");
    assert_eq!(payload.len(), body.len());
    assert_eq!(payload, body);
    // A body over max_body_size is refused with 4.13 and nothing is published.
    let huge = dir.path().join("huge");
    std::fs::write(&huge, "z".repeat(20_000)).unwrap();
    let (_, said) = coap_client(
        coap,
        &[
            "-m",
            "post",
            "-b",
            "1024",
            "-f",
            &huge.display().to_string(),
        ],
        "ps/big/huge?clientid=uploader",
    );
    assert_eq!(response_code(&said), Some("4.13"), "{said}");
}

#[test]
fn connection_mode_authenticates_with_the_password_file_and_checks_the_token() {
    let dir = TempDir::new("coap-auth");
    let passwd = password_file(dir.path(), &[("meter", "s3cret")]);
    let (gw, coap) = gateway(
        "connection_required = true",
        &format!("password_file = {:?}", passwd.display().to_string()),
    );
    let sub = MosquittoSub::start(gw.port, "meters/#", &["-v"]);
    let (_, said) = coap_client(
        coap,
        &["-m", "post"],
        "mqtt/connection?clientid=m1&username=meter&password=wrong",
    );
    assert_eq!(response_code(&said), Some("4.01"), "{said}");
    // connection_required: a publish outside connection mode is refused.
    let (_, said) = coap_client(coap, &["-m", "post", "-e", "1"], "ps/meters/m1?clientid=m1");
    assert_eq!(response_code(&said), Some("4.01"), "{said}");
    let (token, said) = coap_client(
        coap,
        &["-m", "post"],
        "mqtt/connection?clientid=m1&username=meter&password=s3cret",
    );
    assert_eq!(token.len(), 32, "{said}");
    // Every request now carries the token; the client's port may change (a NAT rebinding).
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-e", "42"],
        &format!("ps/meters/m1?clientid=m1&token={token}"),
    );
    assert_eq!(response_code(&said), None, "{said}");
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-e", "43"],
        "ps/meters/m1?clientid=m1&token=0000",
    );
    assert_eq!(response_code(&said), Some("4.01"), "{said}");
    let (_, said) = coap_client(
        coap,
        &["-m", "put"],
        &format!("mqtt/connection?clientid=m1&token={token}"),
    );
    assert_eq!(response_code(&said), None, "{said}");
    assert_eq!(sub.wait_for(1, WAIT), ["meters/m1 42"]);
    assert!(
        gw.log()
            .contains("client_id=m1 username=\"meter\" protocol=\"coap\""),
        "{}",
        gw.log()
    );
    let (_, said) = coap_client(
        coap,
        &["-m", "delete"],
        &format!("mqtt/connection?clientid=m1&token={token}"),
    );
    assert_eq!(response_code(&said), None, "{said}");
    assert!(
        wait_until(WAIT, || gw
            .log()
            .contains("client_id=m1 protocol=\"coap\" reason=\"normal\"")),
        "{}",
        gw.log()
    );
    // After DELETE the token is gone with the connection.
    let (_, said) = coap_client(
        coap,
        &["-m", "put"],
        &format!("mqtt/connection?clientid=m1&token={token}"),
    );
    assert_eq!(response_code(&said), Some("4.01"), "{said}");
}

#[test]
fn the_acl_governs_coap_publishes_and_observations() {
    let dir = TempDir::new("coap-acl");
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        r#"
[[rules]]
permission = "deny"
who = { all = true }
action = "all"
topics = ["secret/#"]
"#,
    )
    .unwrap();
    let (gw, coap) = gateway(
        "",
        &format!(
            "acl_file = {:?}\nacl_nomatch = \"allow\"",
            acl.display().to_string()
        ),
    );
    let sub = MosquittoSub::start(gw.port, "open/#", &["-v"]);
    let mut spy = Observer::start(coap, "ps/open/%23?clientid=spy", 6);
    let (_, said) = coap_client(coap, &["-m", "post", "-e", "x"], "ps/secret/a?clientid=d");
    assert_eq!(response_code(&said), Some("4.03"), "{said}");
    let (_, said) = coap_client(coap, &["-s", "1"], "ps/secret/%23?clientid=d");
    assert_eq!(response_code(&said), Some("4.03"), "{said}");
    coap_client(coap, &["-m", "post", "-e", "ok"], "ps/open/a?clientid=d");
    assert_eq!(sub.wait_for(1, WAIT), ["open/a ok"]);
    assert!(
        wait_until(WAIT, || spy.lines() == ["ok"]),
        "{:?}",
        spy.lines()
    );
    assert!(
        gw.log().contains("coap: publish refused: not authorized"),
        "{}",
        gw.log()
    );
    spy.child.kill().ok();
}

/// A raw CON request from `socket`, with message id `mid`.
fn raw_post(path: &[&str], query: &[&str], payload: &[u8], mid: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(vec![0xAB, 0xCD]);
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p.payload = payload.to_vec();
    p.to_bytes().expect("encode")
}

/// Sends `datagram` and returns the reply with its message id (replies to earlier
/// datagrams are skipped), retransmitting every second as a CoAP client would (UDP may drop
/// it, e.g. right after a storm filled the gateway's receive buffer).
fn exchange(socket: &UdpSocket, datagram: &[u8]) -> Packet {
    let mid = u16::from_be_bytes([datagram[2], datagram[3]]);
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        socket.send(datagram).expect("send");
        while let Ok(n) = socket.recv(&mut buf) {
            let reply = Packet::from_bytes(&buf[..n]).expect("the reply decodes");
            if reply.header.message_id == mid {
                return reply;
            }
        }
    }
    panic!("no reply to message {mid:#06x} within 10 tries");
}

#[test]
fn a_retransmitted_con_is_published_once_and_gets_the_same_ack() {
    let (gw, coap) = gateway("", "");
    let sub = MosquittoSub::start(gw.port, "dedup/#", &["-v"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", coap)).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let request = raw_post(&["ps", "dedup", "x"], &["clientid=raw1"], b"once", 0x4242);
    let first = exchange(&socket, &request);
    let second = exchange(&socket, &request);
    assert_eq!(first.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(first.header.message_id, 0x4242);
    assert_eq!(
        first.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(first.get_token(), &[0xAB, 0xCD]);
    assert_eq!(first, second);
    // A new message id is a new message.
    exchange(
        &socket,
        &raw_post(&["ps", "dedup", "x"], &["clientid=raw1"], b"twice", 0x4243),
    );
    assert_eq!(sub.wait_for(2, WAIT), ["dedup/x once", "dedup/x twice"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.messages().len(), 2, "{:?}", sub.messages());
}

#[test]
fn no_response_declines_the_answers_a_device_does_not_want() {
    let (gw, coap) = gateway("", "");
    let sub = MosquittoSub::start(gw.port, "quiet/#", &["-v"]);
    // libcoap's client with No-Response "not interested in 2.xx" (RFC 7967): a NON publish
    // gets no answer (it waits out -B) and is published; a refused one still hears why.
    let (_, said) = coap_client(
        coap,
        &[
            "-m", "post", "-N", "-B", "1", "-O", "258,0x02", "-e", "fire",
        ],
        "ps/quiet/a?clientid=q1",
    );
    assert_eq!(response_code(&said), None, "{said}");
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-N", "-B", "1", "-O", "258,0x02", "-e", "x"],
        "ps/quiet/a?clientid=q1&qos=7",
    );
    assert_eq!(response_code(&said), Some("4.00"), "{said}");
    // Raw: nothing at all comes back for the NON; a CON gets its empty ACK only (and the
    // same empty ACK again when retransmitted), and is published once.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", coap)).unwrap();
    let mut non = Packet::from_bytes(&raw_post(
        &["ps", "quiet", "b"],
        &["clientid=q2"],
        b"non",
        0x5150,
    ))
    .unwrap();
    non.header.set_type(MessageType::NonConfirmable);
    non.add_option(CoapOption::NoResponse, vec![2]);
    socket.send(&non.to_bytes().unwrap()).unwrap();
    let mut con = Packet::from_bytes(&raw_post(
        &["ps", "quiet", "c"],
        &["clientid=q2"],
        b"con",
        0x5151,
    ))
    .unwrap();
    con.add_option(CoapOption::NoResponse, vec![2]);
    let con = con.to_bytes().unwrap();
    let ack = exchange(&socket, &con);
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ack.header.code, MessageClass::Empty);
    assert!(ack.payload.is_empty() && ack.get_token().is_empty());
    assert_eq!(
        exchange(&socket, &con),
        ack,
        "a duplicate gets the same empty ACK"
    );
    assert_eq!(
        sub.wait_for(3, WAIT),
        ["quiet/a fire", "quiet/b non", "quiet/c con"],
        "{}",
        gw.log()
    );
    // Nothing else was sent to the raw socket: no NON 2.04 for the first message.
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        socket.recv(&mut buf).is_err(),
        "an answer that was declined"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.messages().len(), 3, "{:?}", sub.messages());
}

#[test]
fn a_served_clients_requests_are_checked_as_a_new_clients_are() {
    // A client being served gets its datagrams handed to its task undecoded: the task checks
    // them as the reading task checks a new client's.
    let (gw, coap) = gateway("", "");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(("127.0.0.1", coap)).unwrap();
    let ok = exchange(
        &udp,
        &raw_post(&["ps", "checked"], &["clientid=served"], b"1", 0x6000),
    );
    assert_eq!(
        ok.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    let mut critical = Packet::from_bytes(&raw_post(
        &["ps", "checked"],
        &["clientid=served"],
        b"2",
        0x6001,
    ))
    .unwrap();
    critical.add_option(CoapOption::IfMatch, vec![1]);
    let answer = exchange(&udp, &critical.to_bytes().unwrap());
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::BadOption)
    );
    critical.header.set_type(MessageType::NonConfirmable);
    critical.header.message_id = 0x6002;
    let answer = exchange(&udp, &critical.to_bytes().unwrap());
    assert_eq!(answer.header.get_type(), MessageType::Reset);
    let answer = exchange(
        &udp,
        &raw_post(
            &["ps", "checked"],
            &["clientid=served", "qos=7"],
            b"3",
            0x6003,
        ),
    );
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
    assert_eq!(answer.payload, b"bad request: qos=7: expected 0, 1 or 2");
    let stats = ctl_json(&socket(&gw), &["coap"]);
    assert_eq!(stats["stats"]["bad_option"], 2, "{stats}");
}

#[test]
fn garbage_datagrams_are_counted_and_never_stop_the_gateway() {
    let (gw, coap) = gateway("max_message_size = 512", "");
    let sub = MosquittoSub::start(gw.port, "$SYS/brokers/gw-coap/coap/#", &["-v"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", coap)).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let good = raw_post(&["ps", "g"], &["clientid=g1"], b"x", 1);
    let mut wrong_version = good.clone();
    wrong_version[0] = (wrong_version[0] & 0x3f) | 0x80;
    let mut bad_token_len = good.clone();
    bad_token_len[0] = (bad_token_len[0] & 0xf0) | 0x0f;
    let storm: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x40],
        good[..6].to_vec(),
        wrong_version,
        bad_token_len,
        vec![0x55; 600],
        vec![0xff; 40],
        (0..=255u8).collect(),
    ];
    for _ in 0..200 {
        for d in &storm {
            socket.send(d).expect("send");
        }
    }
    // A CON that does not decode is rejected with RST (here: the wrong version).
    let mut rejected = good.clone();
    rejected[0] = (rejected[0] & 0x3f) | 0xc0;
    rejected[2..4].copy_from_slice(&0x0777u16.to_be_bytes());
    let rst = exchange(&socket, &rejected);
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    // An unrecognized critical option (65001) gets 4.02 Bad Option.
    let mut p = Packet::from_bytes(&good).unwrap();
    p.add_option(CoapOption::Unknown(65001), vec![1]);
    p.header.message_id = 0x0888;
    let bad_option = exchange(&socket, &p.to_bytes().unwrap());
    assert_eq!(
        bad_option.header.code,
        MessageClass::Response(ResponseType::BadOption)
    );
    // Still serving: a device publishes through it.
    let reply = exchange(
        &socket,
        &raw_post(
            &["ps", "after", "storm"],
            &["clientid=g1"],
            b"alive",
            0x0999,
        ),
    );
    assert_eq!(
        reply.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    let stat = |name: &str| -> u64 {
        sub.messages()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("$SYS/brokers/gw-coap/coap/{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Each kind counted (UDP may drop part of the storm, so not exact numbers).
    assert!(
        wait_until(WAIT, || stat("bad_truncated") >= 1
            && stat("bad_version") >= 1
            && stat("bad_malformed") >= 1
            && stat("bad_oversized") >= 1
            && stat("bad_option") >= 1
            && stat("published") >= 1),
        "{:?}\n{}",
        sub.messages(),
        gw.log()
    );
    assert!(
        gw.log().contains("coap: bad datagram dropped"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_silent_client_is_closed_after_one_and_a_half_heartbeats() {
    let (gw, coap) = gateway("heartbeat = \"1s\"", "");
    coap_client(coap, &["-m", "post", "-e", "x"], "ps/hb?clientid=sleepy");
    assert!(
        wait_until(WAIT, || gw.log().contains("silent for 1.5 x heartbeat")),
        "{}",
        gw.log()
    );
    assert!(
        wait_until(WAIT, || gw
            .log()
            .contains("client_id=sleepy protocol=\"coap\" reason=")),
        "{}",
        gw.log()
    );
}

#[test]
fn a_silent_observer_is_pinged_and_kept_while_it_answers() {
    let (gw, coap) = gateway("heartbeat = \"1s\"", "");
    let obs = Observer::start(coap, "ps/quiet/topic?clientid=quiet", 8);
    assert!(
        wait_until(WAIT, || gw.log().contains("filter=\"quiet/topic\"")),
        "{}",
        gw.log()
    );
    // Well past 1.5 heartbeats of silence: libcoap answers the gateway's pings with RST.
    std::thread::sleep(Duration::from_secs(4));
    assert!(mosquitto_pub(gw.port, "quiet/topic", "still-here", &[]));
    assert!(
        wait_until(WAIT, || obs.lines() == ["still-here"]),
        "{:?}\n{}",
        obs.lines(),
        gw.log()
    );
    assert!(
        !gw.log()
            .contains("client_id=quiet protocol=\"coap\" reason="),
        "{}",
        gw.log()
    );
}

#[test]
fn a_connectionless_client_at_another_address_must_present_its_credentials_again() {
    let dir = TempDir::new("coap-moved");
    let passwd = password_file(dir.path(), &[("sensor", "pw1")]);
    let (gw, coap) = gateway(
        "",
        &format!("password_file = {:?}", passwd.display().to_string()),
    );
    let sub = MosquittoSub::start(gw.port, "moved/#", &["-v"]);
    // Each coap-client run has its own source port: a new address every time.
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-e", "1"],
        "ps/moved/a?clientid=s1&u=sensor&p=pw1",
    );
    assert_eq!(response_code(&said), None, "{said}");
    let (_, said) = coap_client(coap, &["-m", "post", "-e", "2"], "ps/moved/a?clientid=s1");
    assert!(
        response_code(&said) == Some("4.01"),
        "a request without the credentials rode on s1: {said}"
    );
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-e", "3"],
        "ps/moved/a?clientid=s1&u=sensor&p=pw1",
    );
    assert_eq!(response_code(&said), None, "{said}");
    assert_eq!(sub.wait_for(2, WAIT), ["moved/a 1", "moved/a 3"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.messages().len(), 2, "{:?}", sub.messages());
}

/// `coap-client-openssl` with a PSK identity and key (hex of `key`), against the DTLS port.
fn coaps_client(
    port: u16,
    identity: &str,
    key: &str,
    args: &[&str],
    uri: &str,
) -> (String, String) {
    let dir = TempDir::new("coaps-client");
    let out = dir.path().join("out");
    let mut cmd = Command::new("coap-client-openssl");
    cmd.args(["-B", "8", "-u", identity, "-k", key, "-o"])
        .arg(&out)
        .args(args)
        .arg(format!("coaps://127.0.0.1:{port}/{uri}"));
    let (_, stdout, stderr) = run_with_timeout(&mut cmd, WAIT);
    let payload = std::fs::read_to_string(&out).unwrap_or_default();
    (payload, format!("{stdout}{stderr}"))
}

/// `coap-client-openssl` with a client certificate (PEM files), checking the server's
/// certificate against `ca`.
fn coaps_cert_client(
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
    args: &[&str],
    uri: &str,
) -> String {
    let mut cmd = Command::new("coap-client-openssl");
    cmd.args(["-B", "8", "-c"])
        .arg(cert)
        .arg("-j")
        .arg(key)
        .arg("-C")
        .arg(ca)
        .args(args)
        .arg(format!("coaps://127.0.0.1:{port}/{uri}"));
    let (_, stdout, stderr) = run_with_timeout(&mut cmd, WAIT);
    format!("{stdout}{stderr}")
}

#[test]
fn dtls_certificates_identify_devices_by_their_cn_and_psk_works_on_the_same_port() {
    let dir = TempDir::new("coaps-cert");
    let pki = holdfast_tests::pki::make_pki_with_client(dir.path(), "meter-9");
    let other_dir = TempDir::new("coaps-cert-other");
    let other = holdfast_tests::pki::make_pki_with_client(other_dir.path(), "meter-9");
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "meter-7:7365637265746b6579\n").unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[rules]]\npermission = \"allow\"\nwho = { user = \"meter-9\" }\naction = \"all\"\ntopics = [\"meters/9\"]\n\n[[rules]]\npermission = \"allow\"\nwho = { user = \"meter-7\" }\naction = \"all\"\ntopics = [\"meters/7\"]\n\n[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"subscribe\"\ntopics = [\"#\"]\n",
    )
    .unwrap();
    let dtls = free_udp_port();
    let (gw, _coap) = gateway(
        &format!(
            "dtls = {{ bind = \"127.0.0.1:{dtls}\", psk_file = {:?}, cert = {:?}, key = {:?}, client_ca = {:?} }}",
            psk.display().to_string(),
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
            pki.ca.display().to_string(),
        ),
        &format!(
            "acl_file = {:?}\nacl_nomatch = \"deny\"",
            acl.display().to_string()
        ),
    );
    assert!(
        gw.wait_for_log("DTLS certificates loaded", WAIT),
        "{}",
        gw.log()
    );
    let sub = MosquittoSub::start(gw.port, "meters/#", &["-v"]);
    // The certificate's CN is the verified user name the ACL sees, and the client id.
    let said = coaps_cert_client(
        dtls,
        &pki.client_cert,
        &pki.client_key,
        &pki.ca,
        &["-m", "post", "-e", "9"],
        "ps/meters/9",
    );
    assert_eq!(response_code(&said), None, "{said}\n{}", gw.log());
    assert_eq!(sub.wait_for(1, WAIT), ["meters/9 9"]);
    assert!(
        gw.log()
            .contains("client_id=meter-9 username=\"meter-9\" protocol=\"coap\""),
        "{}",
        gw.log()
    );
    // A PSK device on the same port.
    let (_, said) = coaps_client(
        dtls,
        "meter-7",
        "secretkey",
        &["-m", "post", "-e", "7"],
        "ps/meters/7",
    );
    assert_eq!(response_code(&said), None, "{said}");
    assert_eq!(sub.wait_for(2, WAIT), ["meters/9 9", "meters/7 7"]);
    // The same CN signed by another CA completes no handshake and publishes nothing.
    coaps_cert_client(
        dtls,
        &other.client_cert,
        &other.client_key,
        &pki.ca,
        &["-m", "post", "-e", "forged"],
        "ps/meters/9?clientid=forger",
    );
    assert!(
        wait_until(WAIT, || gw.log().contains("client certificate refused")),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.messages().len(), 2, "{:?}", sub.messages());
    let stats = ctl_json(&socket(&gw), &["coap"]);
    assert!(stats["stats"]["bad_dtls"].as_u64() >= Some(1), "{stats}");
}

#[test]
fn a_dtls_key_the_engine_cannot_use_is_one_start_error_naming_it() {
    // The suites are ECDHE_ECDSA: an RSA key is refused at start (the engine would abort on
    // it at the first handshake).
    let dir = TempDir::new("coaps-rsa");
    let pki = holdfast_tests::pki::make_pki(dir.path());
    let (rsa_key, _) =
        holdfast_tests::pki::make_key_pair(dir.path(), "rsa", holdfast_tests::pki::KeyKind::Rsa);
    let (port, dtls) = (free_port(), free_udp_port());
    let path = dir.path().join("holdfast.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\n[coap]\nbind = \"127.0.0.1:{}\"\ndtls = {{ bind = \"127.0.0.1:{dtls}\", cert = {:?}, key = {:?}, client_ca = {:?} }}\n",
            free_udp_port(),
            pki.server_cert.display().to_string(),
            rsa_key.display().to_string(),
            pki.ca.display().to_string(),
        ),
    )
    .unwrap();
    let (ok, out, err) = run_with_timeout(
        Command::new(holdfast_tests::holdfast_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
        Duration::from_secs(20),
    );
    let text = format!("{out}{err}");
    assert!(!ok, "{text}");
    assert!(
        text.contains("coap: dtls:")
            && text.contains("rsa.key: not an ECDSA P-256 or P-384 private key"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn dtls_psk_clients_are_known_by_their_identity_and_a_wrong_key_gets_nothing() {
    let dir = TempDir::new("coaps");
    let psk = dir.path().join("psk");
    // "secretkey" in hex
    std::fs::write(&psk, "# coaps devices\nmeter-7:7365637265746b6579\n").unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[rules]]\npermission = \"allow\"\nwho = { user = \"meter-7\" }\naction = \"all\"\ntopics = [\"meters/#\"]\n\n[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"subscribe\"\ntopics = [\"#\"]\n\n[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"publish\"\ntopics = [\"meters/9\"]\n",
    )
    .unwrap();
    let dtls = free_udp_port();
    let (gw, coap) = gateway(
        &format!(
            "dtls = {{ bind = \"127.0.0.1:{dtls}\", psk_file = {:?} }}",
            psk.display().to_string()
        ),
        &format!(
            "acl_file = {:?}\nacl_nomatch = \"deny\"",
            acl.display().to_string()
        ),
    );
    assert!(gw.wait_for_log("scheme=\"coaps\"", WAIT), "{}", gw.log());
    let sub = MosquittoSub::start(gw.port, "meters/#", &["-v"]);
    // Over DTLS the PSK identity is the verified user name the ACL sees (and the client id
    // when the request names none).
    let (_, said) = coaps_client(
        dtls,
        "meter-7",
        "secretkey",
        &["-m", "post", "-e", "42"],
        "ps/meters/7",
    );
    assert_eq!(response_code(&said), None, "{said}");
    assert_eq!(sub.wait_for(1, WAIT), ["meters/7 42"]);
    assert!(
        gw.log()
            .contains("client_id=meter-7 username=\"meter-7\" protocol=\"coap\""),
        "{}",
        gw.log()
    );
    // The same publish over plain CoAP is anonymous: the ACL refuses it.
    let (_, said) = coap_client(
        coap,
        &["-m", "post", "-e", "43"],
        "ps/meters/7?clientid=plain-1",
    );
    assert_eq!(response_code(&said), Some("4.03"), "{said}");
    // A wrong key completes no handshake and publishes nothing (checked below).
    coaps_client(
        dtls,
        "meter-7",
        "wrongkey",
        &["-m", "post", "-e", "44"],
        "ps/meters/7?clientid=intruder",
    );
    assert!(
        wait_until(WAIT, || gw.log().contains("coaps: DTLS")),
        "{}",
        gw.log()
    );
    // Nor does an identity that is not in the file.
    coaps_client(
        dtls,
        "stranger",
        "secretkey",
        &["-m", "post", "-e", "45"],
        "ps/meters/7",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sub.messages(), ["meters/7 42"]);
    assert!(gw.log().matches("coaps: DTLS").count() >= 2, "{}", gw.log());
    // An observation over DTLS gets its notifications sealed.
    let obs_dir = TempDir::new("coaps-observe");
    let out = obs_dir.path().join("out");
    let mut observer = Command::new("coap-client-openssl")
        .args([
            "-u",
            "meter-7",
            "-k",
            "secretkey",
            "-w",
            "-s",
            "5",
            "-B",
            "7",
            "-o",
        ])
        .arg(&out)
        .arg(format!(
            "coaps://127.0.0.1:{dtls}/ps/meters/%23?clientid=meter-7-obs"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coap-client-openssl");
    assert!(
        wait_until(WAIT, || gw.log().contains(
            "client_id=meter-7-obs protocol=\"coap\" filter=\"meters/#\""
        )),
        "{}",
        gw.log()
    );
    assert!(mosquitto_pub(gw.port, "meters/9", "from-mqtt", &[]));
    let notified = wait_until(WAIT, || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("from-mqtt")
    });
    let _ = observer.kill();
    let _ = observer.wait();
    assert!(notified, "{}", gw.log());
}
