//! Bad input on the MQTT port: one log line naming the peer and the reason, only that
//! connection closed, everyone else unaffected.

use holdfast_tests::{mosquitto_pub, Gateway, MosquittoSub};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends `bytes`, then expects the server to close the socket (EOF or reset) soon.
fn expect_closed_after(gw: &Gateway, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("socket not closed by the server: {e}"),
        }
    }
}

fn assert_still_serving(gw: &Gateway) {
    let sub = MosquittoSub::start(gw.port, "alive", &[]);
    assert!(mosquitto_pub(gw.port, "alive", "yes", &[]));
    assert_eq!(sub.wait_for(1, Duration::from_secs(10)), vec!["yes"]);
}

#[test]
fn an_http_request_is_logged_with_the_peer_and_first_bytes_and_closed() {
    let gw = Gateway::start();
    expect_closed_after(&gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        gw.wait_for_log("parse failed", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("parse failed")).unwrap();
    assert!(line.contains("127.0.0.1:"), "peer missing: {line}");
    assert!(
        line.contains("474554"),
        "first bytes in hex missing: {line}"
    );
    assert_still_serving(&gw);
}

#[test]
fn a_tls_client_hello_on_the_plain_port_is_rejected() {
    let gw = Gateway::start();
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    expect_closed_after(&gw, &hello);
    assert!(gw.wait_for_log("parse failed", Duration::from_secs(5)));
    assert_still_serving(&gw);
}

#[test]
fn a_256mb_length_prefix_is_refused_before_the_body_arrives() {
    let gw = Gateway::start();
    // CONNECT with remaining length 268,435,455: the body never comes.
    expect_closed_after(&gw, &[0x10, 0xff, 0xff, 0xff, 0x7f]);
    assert!(gw.wait_for_log("parse failed", Duration::from_secs(5)));
    assert!(gw.log().contains("exceeds"), "{}", gw.log());
    assert_still_serving(&gw);
}

#[test]
fn a_malformed_remaining_length_is_a_protocol_error() {
    let gw = Gateway::start();
    expect_closed_after(&gw, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(gw.wait_for_log("parse failed", Duration::from_secs(5)));
    assert_still_serving(&gw);
}

#[test]
fn an_invalid_utf8_topic_closes_only_that_client() {
    let gw = Gateway::start();
    let sub = MosquittoSub::start(gw.port, "#", &["-v"]);
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'u',
    ])
    .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    // PUBLISH QoS 0, topic = [0xff, 0xfe] (not UTF-8).
    s.write_all(&[0x30, 0x05, 0x00, 0x02, 0xff, 0xfe, b'x'])
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(gw.wait_for_log("parse failed", Duration::from_secs(5)));
    assert!(gw.log().to_lowercase().contains("utf-8"), "{}", gw.log());
    assert_still_serving(&gw);
    assert!(sub
        .messages()
        .iter()
        .all(|l| !l.contains('x') || l.starts_with("alive")));
}

#[test]
fn random_garbage_never_takes_the_gateway_down() {
    let mut gw = Gateway::start();
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..200 {
        let mut bytes = vec![0u8; 64];
        for b in &mut bytes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        if let Ok(mut s) = TcpStream::connect(gw.addr()) {
            let _ = s.write_all(&bytes);
        }
    }
    assert!(gw.is_running());
    assert_still_serving(&gw);
}

#[test]
fn a_socket_that_never_sends_connect_is_closed_after_idle_timeout() {
    let gw = Gateway::start_with_mqtt("idle_timeout = \"1s\"");
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(gw.wait_for_log("idle_timeout", Duration::from_secs(5)));
}

#[test]
fn a_second_connect_is_a_protocol_error() {
    let gw = Gateway::start();
    let connect = [
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'z',
    ];
    let mut twice = connect.to_vec();
    twice.extend_from_slice(&connect);
    let got = expect_closed_after(&gw, &twice);
    assert_eq!(&got[..4], &[0x20, 2, 0, 0], "first CONNECT accepted");
    assert!(gw.wait_for_log("second CONNECT", Duration::from_secs(5)));
}

#[test]
fn an_unsupported_protocol_level_gets_connack_1_then_close() {
    let gw = Gateway::start();
    let got = expect_closed_after(
        &gw,
        &[
            0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 1, b'z',
        ],
    );
    assert_eq!(got, vec![0x20, 2, 0, 1]);
}

#[test]
fn a_packet_over_max_packet_size_disconnects_with_frame_too_large() {
    let gw = Gateway::start_with_mqtt("max_packet_size = \"1KB\"");
    let sub = MosquittoSub::start(gw.port, "big", &[]);
    let big = "x".repeat(4096);
    mosquitto_pub(gw.port, "big", &big, &[]);
    assert!(gw.wait_for_log("parse failed", Duration::from_secs(5)));
    assert!(sub.wait_for(1, Duration::from_millis(500)).is_empty());
    assert_still_serving(&gw);
}
