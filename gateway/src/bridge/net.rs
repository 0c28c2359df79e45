//! The bridge's connection to its cloud broker: TCP (+ TLS with rustls/ring), the CONNECT /
//! CONNACK exchange, and packet framing over the byte stream with the workspace's MQTT codec.
//!
//! Owns the socket and its buffers; it never decides what to send, never touches the queue or
//! the session state ([`super::session`] does), and never blocks the runtime: every wait is
//! bounded (connect, TLS, CONNACK within [`CONNECT_TIMEOUT`]).
//!
//! Why not rumqttc's event loop (the design card's bridge client): its state drops the ids of
//! incoming QoS 2 messages at every reconnect (so the cloud's PUBREL resend kills the link as
//! "unsolicited"), it numbers publishes itself (so a resend after a reconnect or a restart gets
//! a new id and defeats the cloud's duplicate detection), it cannot resume a QoS 2 flow at
//! PUBREL after a restart, and it leaves an inflight slot taken after a v5 PUBREC failure. The
//! bridge must own those rules (they are in `session`), and the codec is already ours.

use crate::config::{BridgeConfig, BridgeProtocol};
use bytes::BytesMut;
use holdfast_mqtt::{
    decode, encode, ByteStr, ConnAck, Connect, DecodeError, EncodeError, Packet, Properties,
    ProtocolVersion,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, RootCertStore};

/// How long a TCP + TLS + CONNECT/CONNACK exchange may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Session expiry asked of an MQTT 5 cloud broker, so downlink subscriptions and messages
/// survive a reconnect the way a 3.1.1 clean-session-false session does (1 week).
const V5_SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;

/// Why a connection could not be made or ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum NetError {
    /// DNS, TCP or socket I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS set-up (files, names) or handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// No CONNACK in time.
    #[error("no CONNACK within {0:?}")]
    ConnectTimeout(Duration),
    /// The cloud answered CONNECT with a failure code.
    #[error("the cloud broker refused the connection: {0}")]
    Refused(String),
    /// The cloud sent bytes that are not MQTT, or a packet out of place.
    #[error("protocol error from the cloud broker: {0}")]
    Protocol(String),
    /// The cloud closed the connection.
    #[error("the cloud broker closed the connection")]
    Closed,
    /// A packet we built cannot be encoded (a bug or an absurd config value).
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    /// The bridge's client inside the broker was refused or closed (kicked, shutdown).
    #[error("the bridge's local client: {0}")]
    Local(String),
}

impl From<DecodeError> for NetError {
    fn from(e: DecodeError) -> NetError {
        NetError::Protocol(e.to_string())
    }
}

/// A byte stream to the cloud: plain TCP or TLS.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// An open, accepted connection: a read half with its buffer and a write half.
pub(super) struct Conn {
    /// Read side.
    pub(super) reader: ReadHalf<Box<dyn Stream>>,
    /// Write side.
    pub(super) writer: WriteHalf<Box<dyn Stream>>,
    /// Bytes read and not yet decoded.
    pub(super) rbuf: BytesMut,
    /// Version spoken.
    pub(super) protocol: ProtocolVersion,
    /// Largest packet accepted from the cloud.
    pub(super) max_in: usize,
    /// The cloud broker's address.
    pub(super) peer: std::net::SocketAddr,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("protocol", &self.protocol)
            .field("buffered", &self.rbuf.len())
            .finish()
    }
}

impl Conn {
    /// The next whole packet in the read buffer, if one is there.
    pub(super) fn decode_next(&mut self) -> Result<Option<Packet>, NetError> {
        Ok(decode(&mut self.rbuf, self.protocol, self.max_in)?)
    }
}

/// The MQTT version of a bridge.
pub(super) fn protocol(cfg: &BridgeConfig) -> ProtocolVersion {
    match cfg.protocol {
        BridgeProtocol::V311 => ProtocolVersion::V3_1_1,
        BridgeProtocol::V5 => ProtocolVersion::V5,
    }
}

/// Connects, sends CONNECT (persistent session) and waits for a successful CONNACK.
/// `max_in` is the largest packet we take from the cloud (told to a v5 cloud).
pub(super) async fn connect(
    cfg: &BridgeConfig,
    max_in: usize,
) -> Result<(Conn, ConnAck), NetError> {
    // Read the TLS files first (fixing them on disk takes effect at the next attempt).
    let tls = match &cfg.tls {
        Some(_) => Some(tls_connector(cfg)?),
        None => None,
    };
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect((cfg.server.host.as_str(), cfg.server.port)).await?;
        tcp.set_nodelay(true)?;
        let peer = tcp.peer_addr()?;
        let stream: Box<dyn Stream> = match tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| NetError::Tls(describe_handshake_error(&e)))?,
            ),
            None => Box::new(tcp),
        };
        let (reader, mut writer) = tokio::io::split(stream);
        let protocol = protocol(cfg);
        let mut buf = BytesMut::new();
        encode(&connect_packet(cfg, max_in), protocol, &mut buf)?;
        writer.write_all(&buf).await?;
        writer.flush().await?;
        let mut conn = Conn {
            reader,
            writer,
            rbuf: BytesMut::with_capacity(4096),
            protocol,
            max_in,
            peer,
        };
        let ack = loop {
            if let Some(p) = conn.decode_next()? {
                break p;
            }
            if conn.reader.read_buf(&mut conn.rbuf).await? == 0 {
                return Err(NetError::Closed);
            }
        };
        match ack {
            Packet::ConnAck(ack) if ack.code == 0 => Ok((conn, ack)),
            Packet::ConnAck(ack) => Err(NetError::Refused(connack_reason(ack.code, protocol))),
            other => Err(NetError::Protocol(format!(
                "{} before CONNACK",
                other.name()
            ))),
        }
    })
    .await
    .unwrap_or(Err(NetError::ConnectTimeout(CONNECT_TIMEOUT)))
}

fn connect_packet(cfg: &BridgeConfig, max_in: usize) -> Packet {
    let protocol = protocol(cfg);
    let mut properties = Properties::default();
    if protocol.is_v5() {
        properties.session_expiry_interval = Some(V5_SESSION_EXPIRY_SECS);
        properties.maximum_packet_size = u32::try_from(max_in).ok();
    }
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: false,
        keep_alive: u16::try_from(cfg.keepalive.as_secs()).unwrap_or(u16::MAX),
        client_id: ByteStr::from(cfg.client_id.as_str()),
        will: None,
        username: cfg.username.as_deref().map(ByteStr::from),
        password: cfg
            .password
            .as_ref()
            .map(|p| bytes::Bytes::from(p.clone().into_bytes())),
        properties,
    }))
}

/// A CONNACK failure in words (the codec maps 3.1.1 return codes to v5 reasons).
/// A failed TLS handshake as the log and `holdfast ctl bridges` say it. A certificate that is
/// not valid yet (or no longer) by this gateway's clock is named as a clock problem: a board
/// without a real-time clock boots at 1970 or at its image's date, and the bridge then waits
/// for time sync (retrying with backoff, the queue keeping every message) rather than looking
/// like a broken cloud.
fn describe_handshake_error(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let cert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(c) => Some(c),
            _ => None,
        });
    let ms = |t: rustls::pki_types::UnixTime| t.as_secs().saturating_mul(1000);
    let clock =
        |time: Option<u64>| crate::clock::iso(time.unwrap_or_else(crate::clock::real_now_ms));
    match cert {
        Some(C::NotValidYetContext { time, not_before }) => format!(
            "the cloud broker's certificate is valid from {}, but this gateway's clock reads {}: the clock is probably wrong (no real-time clock, not synchronized yet); waiting for time sync, retrying with backoff (the queue keeps every message)",
            crate::clock::iso(ms(*not_before)),
            clock(Some(ms(*time)))
        ),
        Some(C::NotValidYet) => format!(
            "the cloud broker's certificate is not valid yet by this gateway's clock, which reads {}: the clock is probably wrong (no real-time clock, not synchronized yet); waiting for time sync, retrying with backoff (the queue keeps every message)",
            clock(None)
        ),
        Some(C::ExpiredContext { time, not_after }) => format!(
            "the cloud broker's certificate expired at {}, and this gateway's clock reads {}: renew the certificate, or, if the clock is wrong, wait for time sync (retrying with backoff; the queue keeps every message)",
            crate::clock::iso(ms(*not_after)),
            clock(Some(ms(*time)))
        ),
        Some(C::Expired) => format!(
            "the cloud broker's certificate has expired by this gateway's clock, which reads {}: renew the certificate, or, if the clock is wrong, wait for time sync (retrying with backoff; the queue keeps every message)",
            clock(None)
        ),
        _ => e.to_string(),
    }
}

fn connack_reason(code: u8, protocol: ProtocolVersion) -> String {
    use holdfast_mqtt::reason;
    let what = match code {
        reason::UNSUPPORTED_PROTOCOL_VERSION => "unsupported protocol version",
        reason::CLIENT_IDENTIFIER_NOT_VALID => "client identifier not valid",
        reason::BAD_USERNAME_OR_PASSWORD => "bad user name or password",
        reason::NOT_AUTHORIZED => "not authorized",
        reason::SERVER_UNAVAILABLE => "server unavailable",
        reason::SERVER_BUSY => "server busy",
        reason::QUOTA_EXCEEDED => "quota exceeded",
        reason::CONNECTION_RATE_EXCEEDED => "connection rate exceeded",
        _ => "refused",
    };
    let v = if protocol.is_v5() { "5" } else { "3.1.1" };
    format!("{what} (code 0x{code:02x}, MQTT {v})")
}

fn tls_connector(
    cfg: &BridgeConfig,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), NetError> {
    let Some(tls) = &cfg.tls else {
        return Err(NetError::Tls("no [bridges.tls] section".to_owned()));
    };
    let err = |e: &dyn std::fmt::Display| NetError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in crate::broker::tls::read_certs(&tls.ca).map_err(|e| err(&e))? {
        roots
            .add(cert)
            .map_err(|e| NetError::Tls(format!("{}: {e}", tls.ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = crate::broker::tls::read_certs(cert).map_err(|e| err(&e))?;
            let key = crate::broker::tls::read_key(key).map_err(|e| err(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(&e))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(cfg.server.host.clone())
        .map_err(|e| NetError::Tls(format!("server name {}: {e}", cfg.server.host)))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}
