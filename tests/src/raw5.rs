//! A bare MQTT 5 client for the black-box tests: rumqttc's packet types written to and read
//! from a blocking socket, so a test sees exactly what the broker sent (topic aliases
//! unresolved, DUP flags, packet ids, reason codes) and acknowledges only when it chooses.

use bytes::{Buf, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Filter, LastWill, Packet, PubAck, PubAckReason, Publish, Subscribe, SubscribeProperties,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a bare client waits for an expected packet.
const WAIT: Duration = Duration::from_secs(10);

/// Why a read produced no packet.
#[derive(Debug)]
pub enum NoPacket {
    /// The gateway closed the socket.
    Closed,
    /// Nothing arrived in time.
    TimedOut,
}

/// rumqttc's packet types written to and read from a plain socket: the test sees topic aliases
/// unresolved, DUP flags, packet ids and reason codes exactly as the broker sent them.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub fn open(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens a socket, sends CONNECT and returns the CONNACK.
    pub fn connect(
        port: u16,
        client_id: &str,
        clean_start: bool,
        properties: ConnectProperties,
        will: Option<LastWill>,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(port);
        raw.send(Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: client_id.to_string(),
                clean_start,
                properties: Some(properties),
            },
            will,
            None,
        ));
        match raw.expect(WAIT) {
            Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with clean start and no properties, asserting success.
    pub fn connected(port: u16, client_id: &str) -> Raw {
        let (raw, ack) = Raw::connect(port, client_id, true, ConnectProperties::new(), None);
        assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
        raw
    }

    pub fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode a packet");
        self.stream.write_all(&out).expect("write to the gateway");
    }

    pub fn parse(&mut self) -> Option<Packet> {
        // A two-byte DISCONNECT (reason 0 implied) is legal but rumqttc's reader refuses it.
        if self.buf.len() >= 2 && self.buf[0] == 0xE0 && self.buf[1] == 0 {
            self.buf.advance(2);
            return Some(Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::NormalDisconnection,
            )));
        }
        match Packet::read(&mut self.buf, None) {
            Ok(p) => Some(p),
            Err(CodecError::InsufficientBytes(_)) => None,
            Err(e) => panic!("undecodable packet from the gateway: {e}"),
        }
    }

    /// The next packet, or why there is none within `within`.
    pub fn read(&mut self, within: Duration) -> Result<Packet, NoPacket> {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(p) = self.parse() {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoPacket::TimedOut);
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(NoPacket::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Err(NoPacket::Closed),
            }
        }
    }

    pub fn expect(&mut self, within: Duration) -> Packet {
        match self.read(within) {
            Ok(p) => p,
            Err(why) => panic!("expected a packet from the gateway: {why:?}"),
        }
    }

    /// The next PUBLISH; `None` when none arrives within `within`.
    pub fn next_publish(&mut self, within: Duration) -> Option<Publish> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Ok(Packet::Publish(p)) => return Some(p),
                Ok(Packet::PingResp(_)) => {}
                Ok(other) => panic!("expected PUBLISH, got {other:?}"),
                Err(NoPacket::Closed) => panic!("the gateway closed the connection"),
                Err(NoPacket::TimedOut) => return None,
            }
        }
    }

    pub fn publishes(&mut self, n: usize, within: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_publish(left) {
                Some(p) => got.push(p),
                None => break,
            }
        }
        got
    }

    pub fn subscribe(&mut self, filters: Vec<Filter>, id: Option<usize>) {
        let n = filters.len();
        self.send(Packet::Subscribe(Subscribe {
            pkid: 1,
            filters,
            properties: id.map(|id| SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            }),
        }));
        match self.expect(WAIT) {
            Packet::SubAck(ack) => {
                assert_eq!(ack.return_codes.len(), n, "{ack:?}");
                assert!(
                    ack.return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                    "{ack:?}"
                );
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 1 and returns the PUBACK reason.
    pub fn publish_qos1(&mut self, mut publish: Publish) -> PubAckReason {
        publish.qos = QoS::AtLeastOnce;
        let pkid = publish.pkid;
        self.send(Packet::Publish(publish));
        match self.expect(WAIT) {
            Packet::PubAck(ack) => {
                assert_eq!(ack.pkid, pkid);
                ack.reason
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Reads until the broker closes the socket; returns its DISCONNECT reason, if it sent one.
    pub fn closed_within(&mut self, within: Duration) -> Option<DisconnectReasonCode> {
        let deadline = Instant::now() + within;
        let mut reason = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Ok(Packet::Disconnect(d)) => reason = Some(d.reason_code),
                Ok(_) => {}
                Err(NoPacket::Closed) => return reason,
                Err(NoPacket::TimedOut) => panic!("the gateway did not close the connection"),
            }
        }
    }

    /// Connects with a session expiry (clean start as given), asserting success.
    pub fn connect_with_expiry(
        port: u16,
        client_id: &str,
        clean_start: bool,
        session_expiry: u32,
    ) -> (Raw, ConnAck) {
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(session_expiry);
        let (raw, ack) = Raw::connect(port, client_id, clean_start, properties, None);
        assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
        (raw, ack)
    }

    /// Subscribes to one filter, asserting it was granted.
    pub fn subscribe_one(&mut self, path: &str, qos: QoS) {
        self.subscribe(vec![Filter::new(path, qos)], None);
    }

    /// Sends QoS 1 PUBLISHes back to back, then collects their PUBACKs in order.
    pub fn publish_all(&mut self, topic: &str, payloads: &[String], first_pkid: u16, retain: bool) {
        let mut out = BytesMut::new();
        for (i, payload) in payloads.iter().enumerate() {
            let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.clone(), None);
            p.pkid = first_pkid + i as u16;
            p.retain = retain;
            Packet::Publish(p).write(&mut out, None).expect("encode");
        }
        self.stream.write_all(&out).expect("write to the gateway");
        for i in 0..payloads.len() {
            match self.expect(WAIT) {
                Packet::PubAck(ack) => assert_eq!(ack.pkid, first_pkid + i as u16),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// Acknowledges a QoS 1 PUBLISH.
    pub fn ack(&mut self, p: &Publish) {
        self.send(Packet::PubAck(PubAck::new(p.pkid, None)));
    }

    /// A client DISCONNECT with reason 0, then the socket is closed.
    pub fn disconnect(mut self) {
        let _ = self.stream.write_all(&[0xE0, 0x00]);
    }
}
