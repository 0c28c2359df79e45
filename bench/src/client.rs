//! One MQTT 3.1.1 client connection: the socket, its read and write buffers, the CONNECT and
//! SUBSCRIBE handshakes.
//!
//! Owns the bytes on the wire. Reads go through `try_read_buf` after `readable()` and decoding
//! happens outside any `select!`, so a cancelled wait never loses input. It never spawns a task
//! and never interprets PUBLISH payloads (that is `stamp` and `check`).

use crate::error::{BenchError, Role};
use bytes::BytesMut;
use holdfast_mqtt::{
    decode, encode, ByteStr, Connect, Packet, PacketId, Properties, ProtocolVersion, QoS,
    Subscribe, SubscriptionOptions,
};
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

/// The only protocol level this tool speaks.
pub(crate) const PROTOCOL: ProtocolVersion = ProtocolVersion::V3_1_1;
/// Largest packet we accept from a broker; bench packets are far smaller.
const MAX_PACKET: usize = 1024 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 64 * 1024;
/// How long we wait for the TCP connection, CONNACK and SUBACK.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach the broker and log in.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Host name or IP.
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// Optional user name sent in CONNECT.
    pub(crate) username: Option<String>,
    /// Optional password sent in CONNECT.
    pub(crate) password: Option<String>,
    /// Keep alive in CONNECT, seconds.
    pub(crate) keep_alive: u16,
    /// Prefix of every client id, unique per run so runs never take over each other's sessions.
    pub(crate) client_prefix: String,
    /// Subscribers connect with clean session 0, so the broker keeps (and may persist) their
    /// sessions: the load then measures the cost of persistent sessions.
    pub(crate) persistent_subscribers: bool,
    /// Connect over TLS (`--tls-ca`).
    pub(crate) tls: Option<crate::tls::TlsClient>,
    /// Connect over WebSocket (`--ws`; WSS with `tls`).
    pub(crate) ws: bool,
}

/// A client's socket: TCP, or for TLS our end of a socketpair whose other end a proxy task
/// encrypts (see `tls`), so the loads' readiness loops are the same for both.
#[derive(Debug)]
pub(crate) enum Conn {
    /// Plain MQTT over TCP.
    Tcp(TcpStream),
    /// Plaintext side of a TLS connection.
    Unix(UnixStream),
}

impl Conn {
    /// Waits until a read may succeed.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.readable().await,
            Conn::Unix(s) => s.readable().await,
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_read_buf(buf),
            Conn::Unix(s) => s.try_read_buf(buf),
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(buf).await,
            Conn::Unix(s) => s.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown().await,
            Conn::Unix(s) => s.shutdown().await,
        }
    }
}

impl Target {
    /// "host:port" for messages.
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A connected, CONNACKed client.
#[derive(Debug)]
pub(crate) struct Client {
    /// The socket (TCP with TCP_NODELAY set, or the plaintext side of TLS).
    pub(crate) stream: Conn,
    /// Bytes read and not yet decoded.
    pub(crate) rbuf: BytesMut,
    /// Packets encoded and not yet written; `flush` empties it.
    pub(crate) wbuf: BytesMut,
    /// Who this is, for error messages.
    pub(crate) role: Role,
}

impl Client {
    /// Opens the TCP connection, sends CONNECT (clean session, unless
    /// [`Target::persistent_subscribers`] and a subscriber) and waits for a successful CONNACK.
    pub(crate) async fn connect(target: &Target, role: Role) -> Result<Client, BenchError> {
        let addr = target.addr();
        let stream = if target.ws {
            let connect = crate::ws::connect(&addr, target.tls.as_ref(), role);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
                Ok(r) => Conn::Unix(r?),
                Err(_) => {
                    return Err(BenchError::ConnectTimeout {
                        addr,
                        after: HANDSHAKE_TIMEOUT,
                    })
                }
            }
        } else if let Some(tls) = &target.tls {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(&addr, role)).await {
                Ok(r) => Conn::Unix(r?),
                Err(_) => {
                    return Err(BenchError::ConnectTimeout {
                        addr,
                        after: HANDSHAKE_TIMEOUT,
                    })
                }
            }
        } else {
            let stream = match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(err)) => return Err(BenchError::Connect { addr, err }),
                Err(_) => {
                    return Err(BenchError::ConnectTimeout {
                        addr,
                        after: HANDSHAKE_TIMEOUT,
                    })
                }
            };
            stream
                .set_nodelay(true)
                .map_err(|err| BenchError::io(role, err))?;
            Conn::Tcp(stream)
        };
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            role,
        };
        let id = match role {
            Role::Publisher(i) => format!("{}-p{i}", target.client_prefix),
            Role::Subscriber(i) => format!("{}-s{i}", target.client_prefix),
            Role::Idle(i) => format!("{}-i{i}", target.client_prefix),
        };
        let connect = Connect {
            protocol: PROTOCOL,
            clean_start: !(target.persistent_subscribers && matches!(role, Role::Subscriber(_))),
            keep_alive: target.keep_alive,
            client_id: ByteStr::from(id),
            will: None,
            username: target.username.as_deref().map(ByteStr::from),
            password: target
                .password
                .as_ref()
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            properties: Properties::default(),
        };
        client.queue(&Packet::Connect(Box::new(connect)), "CONNECT")?;
        client.flush().await?;
        match client.recv("CONNACK").await? {
            Packet::ConnAck(ack) if ack.code == 0 => Ok(client),
            Packet::ConnAck(ack) => Err(BenchError::Refused {
                role,
                code: ack.code,
                hint: refusal_hint(ack.code),
            }),
            other => Err(BenchError::Unexpected {
                role,
                packet: other.name(),
                what: "CONNACK",
            }),
        }
    }

    /// Subscribes to one filter and waits for a SUBACK that grants it.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        let sub = Subscribe {
            packet_id: PacketId::new(1),
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: Properties::default(),
        };
        self.queue(&Packet::Subscribe(sub), "SUBSCRIBE")?;
        self.flush().await?;
        loop {
            match self.recv("SUBACK").await? {
                Packet::SubAck(ack) => {
                    let code = ack.reasons.first().copied().unwrap_or(0x80);
                    if code >= 0x80 {
                        return Err(BenchError::SubscribeRefused {
                            role: self.role,
                            filter: filter.to_string(),
                            code,
                        });
                    }
                    return Ok(());
                }
                // Retained messages may arrive before the SUBACK is seen by us; ignore them.
                Packet::Publish(_) | Packet::PingResp => continue,
                other => {
                    return Err(BenchError::Unexpected {
                        role: self.role,
                        packet: other.name(),
                        what: "SUBACK",
                    })
                }
            }
        }
    }

    /// Encodes a packet at the end of the write buffer.
    pub(crate) fn queue(&mut self, packet: &Packet, what: &'static str) -> Result<(), BenchError> {
        encode(packet, PROTOCOL, &mut self.wbuf).map_err(|err| BenchError::Encode {
            role: self.role,
            what,
            err,
        })
    }

    /// Writes the whole write buffer to the socket and empties it.
    pub(crate) async fn flush(&mut self) -> Result<(), BenchError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let role = self.role;
        self.stream
            .write_all(&self.wbuf)
            .await
            .map_err(|err| BenchError::io(role, err))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads whatever the socket holds without waiting. Returns the number of bytes read, 0
    /// when nothing was ready; the end of the stream is `BenchError::Closed`.
    pub(crate) fn try_fill(&mut self) -> Result<usize, BenchError> {
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(BenchError::Closed {
                role: self.role,
                detail: String::new(),
            }),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(err) => Err(BenchError::io(self.role, err)),
        }
    }

    /// Takes the next complete packet out of the read buffer, if there is one.
    pub(crate) fn next_packet(&mut self) -> Result<Option<Packet>, BenchError> {
        decode(&mut self.rbuf, PROTOCOL, MAX_PACKET).map_err(|err| BenchError::Decode {
            role: self.role,
            err,
        })
    }

    /// Waits (up to the handshake timeout) for the next packet. For handshakes only: the load
    /// loops read with `try_fill` so they never block on input.
    pub(crate) async fn recv(&mut self, what: &'static str) -> Result<Packet, BenchError> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            match tokio::time::timeout_at(deadline, self.stream.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(BenchError::io(self.role, err)),
                Err(_) => {
                    return Err(BenchError::Timeout {
                        role: self.role,
                        what,
                        after: HANDSHAKE_TIMEOUT,
                    })
                }
            }
            self.try_fill().map_err(|e| match e {
                BenchError::Closed { role, .. } => BenchError::Closed {
                    role,
                    detail: format!(" while we waited for {what}"),
                },
                e => e,
            })?;
        }
    }

    /// Sends DISCONNECT and closes the write side, giving up quietly after a short while.
    pub(crate) async fn disconnect(mut self) {
        if self
            .queue(&Packet::Disconnect(Default::default()), "DISCONNECT")
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let _ = self.flush().await;
                let _ = self.stream.shutdown().await;
            })
            .await;
        }
    }
}

/// Why a broker may have refused CONNECT, from the (v5-numbered or 3.1.1) return code.
fn refusal_hint(code: u8) -> &'static str {
    match code {
        1 | 0x84 => ": unsupported protocol version",
        2 | 0x85 => ": client id rejected",
        3 | 0x88 | 0x89 => ": server unavailable or busy",
        4 | 0x86 => ": bad user name or password",
        5 | 0x87 => ": not authorized",
        0x9F => ": connection rate exceeded",
        _ => "",
    }
}
