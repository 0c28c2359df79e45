//! TLS, WebSocket and WSS listeners, driven by real clients: mosquitto_pub/sub with
//! `--cafile/--cert/--key`, rumqttc over TLS, a tokio-tungstenite client carrying MQTT bytes
//! over WS and WSS; plus bad input on every listener (random bytes, HTTP on the TLS port,
//! silent clients, a handshake at a byte a second) while the gateway keeps serving others.

use holdfast_tests::pki::{make_pki, Pki, CLIENT_CN};
use holdfast_tests::{free_port, mosquitto_pub, wait_until, Gateway, MosquittoSub, TempDir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A gateway with a listener of every kind on loopback, each on its own port.
struct Rig {
    gw: Gateway,
    pki: Pki,
    tls: u16,
    mtls: u16,
    ws: u16,
    wss: u16,
    _dir: TempDir,
}

fn tls_table(pki: &Pki, extra: &str) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?}, ca = {:?}{extra} }}",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    )
}

impl Rig {
    fn start(extra_mqtt: &str) -> Rig {
        let dir = TempDir::new("pki");
        let pki = make_pki(dir.path());
        let (tcp, tls, mtls, ws, wss) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = format!(
            r#"
[node]
name = "gw-test"

[mqtt]
{extra_mqtt}

[[listeners]]
kind = "tls"
bind = "127.0.0.1:{tls}"
{plain_tls}

[[listeners]]
kind = "tls"
name = "mtls"
bind = "127.0.0.1:{mtls}"
{mutual_tls}

[[listeners]]
kind = "ws"
bind = "127.0.0.1:{ws}"

[[listeners]]
kind = "wss"
bind = "127.0.0.1:{wss}"
{plain_tls}

# Last: the harness waits for this port, and listeners bind in file order.
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{tcp}"

[auth]
allow_anonymous = true
"#,
            plain_tls = tls_table(&pki, ""),
            mutual_tls = tls_table(&pki, ", verify_peer = true, fail_if_no_peer_cert = true"),
        );
        let gw = Gateway::start_config(&config, tcp);
        Rig {
            gw,
            pki,
            tls,
            mtls,
            ws,
            wss,
            _dir: dir,
        }
    }

    fn ca(&self) -> String {
        self.pki.ca.display().to_string()
    }

    fn client_cert_args(&self) -> Vec<String> {
        vec![
            "--cafile".into(),
            self.ca(),
            "--cert".into(),
            self.pki.client_cert.display().to_string(),
            "--key".into(),
            self.pki.client_key.display().to_string(),
        ]
    }

    fn assert_still_serving(&self) {
        let ca = self.ca();
        let tls_args = ["--cafile", ca.as_str()];
        let sub = MosquittoSub::start(self.tls, "alive", &tls_args);
        assert!(mosquitto_pub(self.gw.port, "alive", "yes", &[]));
        assert_eq!(sub.wait_for(1, Duration::from_secs(10)), vec!["yes"]);
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until the server closes `s` (EOF or reset); returns what it sent before, or None
/// when it is still open after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

#[test]
fn mosquitto_clients_publish_and_subscribe_over_tls() {
    let rig = Rig::start("");
    let ca = rig.ca();
    let sub = MosquittoSub::start(rig.tls, "t/tls", &["--cafile", &ca]);
    // Over TLS to TLS, and from plain TCP to a TLS subscriber.
    assert!(mosquitto_pub(
        rig.tls,
        "t/tls",
        "over-tls",
        &["--cafile", &ca]
    ));
    assert!(mosquitto_pub(rig.gw.port, "t/tls", "from-tcp", &[]));
    assert_eq!(
        sub.wait_for(2, Duration::from_secs(10)),
        vec!["over-tls", "from-tcp"]
    );
    // The connection is logged with the client's real address, not a socketpair.
    let log = rig.gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("client connected") && l.contains("peer=127.0.0.1:")),
        "{log}"
    );
}

#[test]
fn mutual_tls_accepts_a_client_certificate_exposes_its_cn_and_refuses_a_client_without_one() {
    let rig = Rig::start("");
    let cert_args = rig.client_cert_args();
    let args: Vec<&str> = cert_args.iter().map(String::as_str).collect();
    let sub = MosquittoSub::start(rig.mtls, "t/mtls", &args);
    assert!(mosquitto_pub(rig.mtls, "t/mtls", "with-cert", &args));
    assert_eq!(sub.wait_for(1, Duration::from_secs(10)), vec!["with-cert"]);
    assert!(
        rig.gw
            .wait_for_log(&format!("cert_cn=\"{CLIENT_CN}\""), Duration::from_secs(5)),
        "{}",
        rig.gw.log()
    );
    // No certificate: the handshake fails, logged with the peer and counted.
    let ca = rig.ca();
    assert!(!mosquitto_pub(
        rig.mtls,
        "t/mtls",
        "no-cert",
        &["--cafile", &ca]
    ));
    assert!(rig
        .gw
        .wait_for_log("handshake failed", Duration::from_secs(5)));
    let log = rig.gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("handshake failed"))
        .unwrap_or_default();
    assert!(
        line.contains("tls:mtls") && line.contains("peer=127.0.0.1:"),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.messages(), vec!["with-cert"]);
    rig.assert_still_serving();
}

#[test]
fn tls_versions_are_limited_to_the_configured_ones() {
    let dir = TempDir::new("pki");
    let pki = make_pki(dir.path());
    let (tcp, only12, only13) = (free_port(), free_port(), free_port());
    let config = format!(
        "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{only12}\"\n{}\n\
         [[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{only13}\"\n{}\n\
         [[listeners]]\nbind = \"127.0.0.1:{tcp}\"\n\
         [auth]\nallow_anonymous = true\n",
        tls_table(&pki, ", versions = [\"1.2\"]"),
        tls_table(&pki, ", versions = [\"1.3\"]"),
    );
    let gw = Gateway::start_config(&config, tcp);
    let ca = pki.ca.display().to_string();
    // mosquitto's --tls-version is a minimum: tlsv1.2 still offers 1.3, tlsv1.3 only 1.3.
    let publish = |port: u16, version: &str| {
        mosquitto_pub(port, "v", "x", &["--cafile", &ca, "--tls-version", version])
    };
    assert!(publish(only12, "tlsv1.2"));
    assert!(!publish(only12, "tlsv1.3"));
    assert!(publish(only13, "tlsv1.3"));
    assert!(publish(only13, "tlsv1.2"));
    // A client that speaks only TLS 1.2 is refused by the 1.3-only listener.
    let s_client = |port: u16, flag: &str| {
        let (ok, out, err) = holdfast_tests::run_with_timeout(
            std::process::Command::new("openssl").args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                flag,
                "-CAfile",
                &ca,
                "-verify_return_error",
                "-brief",
            ]),
            Duration::from_secs(10),
        );
        (ok, format!("{out}{err}"))
    };
    let (ok, text) = s_client(only12, "-tls1_2");
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    let (ok, text) = s_client(only13, "-tls1_2");
    assert!(!ok, "{text}");
    assert!(gw.wait_for_log("handshake failed", Duration::from_secs(5)));
}

#[test]
fn a_listener_with_an_unreadable_certificate_is_one_error_naming_it() {
    let port = free_port();
    let dir = TempDir::new("badcert");
    let config = format!(
        "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{port}\"\n\
         tls = {{ cert = \"{0}/missing.pem\", key = \"{0}/missing.key\" }}\n",
        dir.path().display()
    );
    let path = dir.path().join("holdfast.toml");
    std::fs::write(&path, config).unwrap();
    let (ok, out, err) = holdfast_tests::run_with_timeout(
        std::process::Command::new(holdfast_tests::holdfast_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
        Duration::from_secs(20),
    );
    assert!(!ok);
    let text = format!("{out}{err}");
    assert!(
        text.contains("listener tls:default: tls: cannot read") && text.contains("missing.pem"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

// ---- rumqttc over TLS ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_publishes_and_receives_over_tls_with_a_client_certificate() {
    let rig = tokio::task::spawn_blocking(|| Rig::start(""))
        .await
        .unwrap();
    let ca = std::fs::read(&rig.pki.ca).unwrap();
    let cert = std::fs::read(&rig.pki.client_cert).unwrap();
    let key = std::fs::read(&rig.pki.client_key).unwrap();
    // "localhost": the server certificate's DNS SAN.
    let mut opts = rumqttc::MqttOptions::new("rumqttc-tls", "localhost", rig.mtls);
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: Some((cert, key)),
        },
    ));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("r/tls", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    // A small message, then one of 300 KB: many TLS records, each proxied in chunks.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut published = false;
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        let mut got = Vec::new();
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) if !published => {
                    published = true;
                    client
                        .publish("r/tls", rumqttc::QoS::AtLeastOnce, false, "via-rumqttc")
                        .await
                        .unwrap();
                    client
                        .publish("r/tls", rumqttc::QoS::AtLeastOnce, false, big.clone())
                        .await
                        .unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    got.push(p.payload.to_vec());
                    if got.len() == 2 {
                        return got;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("rumqttc over TLS: {e}"),
            }
        }
    })
    .await
    .expect("no message over TLS");
    assert_eq!(got[0], b"via-rumqttc");
    assert!(got[1] == big, "the 300 KB payload came back changed");
    drop(rig);
}

// ---- WebSocket ----

/// MQTT 3.1.1 CONNECT (clean session, keepalive 60) for `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// SUBSCRIBE packet id 1, QoS 0, to `topic`.
fn subscribe_packet(topic: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.push(0);
    let mut p = vec![0x82, body.len() as u8];
    p.extend(body);
    p
}

/// Speaks MQTT over a WebSocket: CONNECT, SUBSCRIBE `topic`, then waits for a PUBLISH whose
/// payload ends with `payload`, which `publish` (run once subscribed) makes happen.
async fn mqtt_over_ws<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    topic: &str,
    payload: &[u8],
    publish: impl FnOnce() + Send + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::binary(connect_packet("ws-client")))
        .await
        .unwrap();
    ws.send(Message::binary(subscribe_packet(topic)))
        .await
        .unwrap();
    let mut inbound = Vec::new();
    let mut publish = Some(publish);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no MQTT reply over WebSocket")
            .expect("WebSocket closed")
            .unwrap();
        if let Message::Binary(data) = msg {
            inbound.extend_from_slice(&data);
        }
        // CONNACK (20 02 00 00) then SUBACK (90 03 00 01 00).
        if inbound.starts_with(&[0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00]) {
            if let Some(p) = publish.take() {
                tokio::task::spawn_blocking(p).await.unwrap();
            }
        }
        if inbound.len() > 9 && inbound[9] == 0x30 && inbound.ends_with(payload) {
            return;
        }
    }
}

fn ws_request(
    port: u16,
    path: &str,
    protocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://localhost:{port}{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_and_secure_websocket_reaches_subscribers_on_mqtt() {
    let rig = Arc::new(
        tokio::task::spawn_blocking(|| Rig::start(""))
            .await
            .unwrap(),
    );
    // ws://.../mqtt with subprotocol mqtt.
    let tcp = tokio::net::TcpStream::connect(addr(rig.ws)).await.unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async(ws_request(rig.ws, "/mqtt", Some("mqtt")), tcp)
            .await
            .unwrap();
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
    let r = rig.clone();
    mqtt_over_ws(&mut ws, "t/ws", b"to-ws", move || {
        assert!(mosquitto_pub(r.gw.port, "t/ws", "to-ws", &[]));
    })
    .await;

    // wss: TLS (verified against the test CA, server name localhost), then the upgrade.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(&rig.pki.ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr(rig.wss)).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut wss, _) =
        tokio_tungstenite::client_async(ws_request(rig.wss, "/mqtt", Some("mqtt")), tls)
            .await
            .unwrap();
    let r = rig.clone();
    mqtt_over_ws(&mut wss, "t/wss", b"to-wss", move || {
        let ca = r.ca();
        assert!(mosquitto_pub(r.tls, "t/wss", "to-wss", &["--cafile", &ca]));
    })
    .await;
}

/// Sends a raw HTTP upgrade request and returns the status line of the answer.
fn upgrade_status(port: u16, path: &str, protocol: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr(port)).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let got = closed_within(&mut s, Duration::from_secs(5)).unwrap_or_default();
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn websocket_upgrades_only_on_the_mqtt_path_with_an_mqtt_subprotocol() {
    let rig = Rig::start("");
    assert_eq!(
        upgrade_status(rig.ws, "/other", Some("mqtt")),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        upgrade_status(rig.ws, "/mqtt", Some("chat")),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        upgrade_status(rig.ws, "/mqtt", None),
        "HTTP/1.1 400 Bad Request"
    );
    // A list that includes one EMQX supports is accepted, with that one chosen.
    let mut s = TcpStream::connect(addr(rig.ws)).unwrap();
    s.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: chat, mqtt-v5\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: mqtt-v5"), "{head}");
    // The gateway logs the refusal after it has answered: wait for the line.
    let refusal_logged = || {
        rig.gw.log().lines().any(|l| {
            l.contains("handshake failed")
                && l.contains("404")
                && l.contains("ws:default")
                && l.contains("peer=127.0.0.1:")
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), refusal_logged),
        "{}",
        rig.gw.log()
    );
    rig.assert_still_serving();
}

// ---- bad input on every listener ----

#[test]
fn random_bytes_and_http_on_every_listener_close_only_that_peer() {
    let rig = Rig::start("");
    use rand::RngCore;
    let mut junk = vec![0u8; 4096];
    rand::thread_rng().fill_bytes(&mut junk);
    for port in [rig.tls, rig.mtls, rig.ws, rig.wss] {
        for input in [&junk[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"] {
            let mut s = TcpStream::connect(addr(port)).unwrap();
            // The server may close before taking everything: a reset on write is fine.
            let _ = s.write_all(input);
            assert!(
                closed_within(&mut s, Duration::from_secs(10)).is_some(),
                "port {port} kept a connection that sent garbage open"
            );
        }
    }
    let log = rig.gw.log();
    let failures = log
        .lines()
        .filter(|l| l.contains("handshake failed"))
        .count();
    assert!(failures >= 6, "{log}");
    rig.assert_still_serving();
}

#[test]
fn silent_clients_and_a_byte_a_second_handshake_are_closed_after_idle_timeout() {
    let rig = Rig::start("idle_timeout = \"2s\"");
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = [rig.tls, rig.mtls, rig.ws, rig.wss]
        .iter()
        .map(|p| TcpStream::connect(addr(*p)).unwrap())
        .collect();
    // A TLS ClientHello dribbled a byte a second: the handshake deadline still applies.
    let hello = [
        0x16u8, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00,
    ];
    let mut slow = TcpStream::connect(addr(rig.tls)).unwrap();
    let mut closed_at = None;
    for b in hello {
        if slow.write_all(&[b]).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        // Meanwhile, others are served.
        if b == 0x03 {
            rig.assert_still_serving();
        }
    }
    if closed_at.is_none() {
        assert!(closed_within(&mut slow, Duration::from_secs(10)).is_some());
        closed_at = Some(started.elapsed());
    }
    let closed_at = closed_at.unwrap_or_default();
    assert!(
        closed_at < Duration::from_secs(12),
        "byte-a-second client kept for {closed_at:?}"
    );
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(5)).is_some());
    }
    let log = rig.gw.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("handshake failed") && l.contains("handshake timeout"))
            .count()
            >= 5,
        "{log}"
    );
    rig.assert_still_serving();
}

#[test]
fn max_connections_applies_to_a_tls_listener() {
    let dir = TempDir::new("pki");
    let pki = make_pki(dir.path());
    let (tcp, tls) = (free_port(), free_port());
    let config = format!(
        "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{tls}\"\nmax_connections = 2\n{}\n\
         [[listeners]]\nbind = \"127.0.0.1:{tcp}\"\n\
         [auth]\nallow_anonymous = true\n",
        tls_table(&pki, ""),
    );
    let gw = Gateway::start_config(&config, tcp);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr(tls)).unwrap())
        .collect();
    assert!(gw.wait_for_log("tls:default", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(addr(tls)).unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(5)).is_some());
    assert!(gw.wait_for_log("max_connections reached", Duration::from_secs(5)));
    drop(held);
}

#[test]
fn tls_sessions_resume_with_1_2_and_1_3() {
    let rig = Rig::start("");
    let ca = rig.ca();
    let sess = rig.gw.dir.path().join("session.pem");
    let sess = sess.display().to_string();
    let connect = addr(rig.tls).to_string();
    for version in ["-tls1_2", "-tls1_3"] {
        let _ = std::fs::remove_file(&sess);
        // First handshake: keep stdin open a moment so the TLS 1.3 tickets arrive.
        let (ok, out, err) = holdfast_tests::run_with_timeout(
            std::process::Command::new("sh").args([
                "-c",
                &format!("sleep 0.5 | openssl s_client -connect {connect} {version} -CAfile {ca} -sess_out {sess}"),
            ]),
            Duration::from_secs(10),
        );
        assert!(ok && out.contains("New, TLSv1."), "{out}{err}");
        let (ok, out, err) = holdfast_tests::run_with_timeout(
            std::process::Command::new("openssl").args([
                "s_client", "-connect", &connect, version, "-CAfile", &ca, "-sess_in", &sess,
            ]),
            Duration::from_secs(10),
        );
        assert!(
            ok && out.contains("Reused, TLSv1."),
            "{version}: {out}{err}"
        );
    }
}

/// `tls.peer_cert_as_username = "cn"`: with anonymous access off and no password file, a client
/// with a verified certificate is let in by it, under its CN as user name (seen in `$SYS`); one
/// without a certificate (allowed through TLS: fail_if_no_peer_cert = false) has no credentials
/// and is refused.
#[test]
fn a_verified_client_certificate_logs_in_under_its_cn() {
    let dir = TempDir::new("pki");
    let pki = make_pki(dir.path());
    let (tcp, certs) = (free_port(), free_port());
    let config = format!(
        "[node]\nname = \"gw-test\"\n\
         [[listeners]]\nkind = \"tls\"\nname = \"certs\"\nbind = \"127.0.0.1:{certs}\"\n{}\n\
         [[listeners]]\nbind = \"127.0.0.1:{tcp}\"\n",
        tls_table(&pki, ", verify_peer = true, peer_cert_as_username = \"cn\""),
    );
    let gw = Gateway::start_config(&config, tcp);
    let ca = pki.ca.display().to_string();
    let (cert, key) = (
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let with_cert = [
        "--cafile",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    let events = MosquittoSub::start(
        certs,
        "$SYS/brokers/gw-test/clients/+/connected",
        &with_cert,
    );
    assert!(mosquitto_pub(certs, "t/cert", "by-cert", &with_cert));
    let seen = events.wait_for(2, Duration::from_secs(10));
    assert!(
        seen.iter()
            .any(|e| e.contains(&format!("\"username\":\"{CLIENT_CN}\""))),
        "no connected event with the certificate's CN as user name: {seen:?}\n{}",
        gw.log()
    );
    // No certificate: TLS lets it through, CONNECT has no credentials, anonymous is off.
    assert!(!mosquitto_pub(
        certs,
        "t/cert",
        "no-cert",
        &["--cafile", ca.as_str()]
    ));
    assert!(
        gw.wait_for_log("connection refused: not authorized", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
}
