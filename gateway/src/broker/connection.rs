//! One client connection: CONNECT handshake, the packet loop, keepalive and the outbound drain.
//!
//! Owns the socket, its read and write buffers and the per-connection protocol state (topic
//! aliases both ways, the will, the negotiated limits). Bytes are read with `try_read_buf` after
//! `readable()` and decoded outside any `select!` branch, so cancellation never loses input; all
//! packets decoded from one read are applied under a single router lock. It never holds the
//! router lock across an `.await`, never buffers more than `outbound_buffer` bytes of output
//! (it stops draining its session and stops reading until the socket takes them), and a bad
//! packet closes only this connection with one log line naming the peer and the reason.
//!
//! A QoS 1/2 PUBLISH that a bridge forwards is acknowledged only once the bridge queue has
//! synced it (`flush = "group" | "every"`): its PUBACK/PUBREC, and every one after it, is held
//! until then, in PUBLISH order, and reading stops while `MAX_HELD_ACKS` are held.
//!
//! Rooms: [`MqttSession`] here is the per-connection state, sans IO (bytes in through its read
//! buffer, bytes out through its write buffer; tested without sockets in `session_tests`);
//! `handshake` is CONNECT, `inbound` applies packets, `outbound` writes acknowledgements and
//! deliveries, and `driver` is the only part that touches the socket.

/// A log line of this connection, naming its peer and client id (the fields `holdfast ctl
/// trace` matches on) without every call site spelling them out. A macro and not a tracing
/// span: a span per connection measured 2.14 -> 2.56 KB of RSS per idle connection (+20%) and
/// took the task past its 896-byte budget, for fields every line can carry for free.
macro_rules! conn_event {
    ($level:ident, $conn:expr, $($rest:tt)+) => {
        tracing::$level!(peer = %$conn.peer, client_id = %$conn.client_id, $($rest)+)
    };
}

mod driver;
mod handshake;
mod inbound;
mod outbound;
#[cfg(test)]
mod session_tests;

use super::events::{self};
use super::limiter::InboundLimiter;
use super::message::{ClientId, Message, Origin, SessionId};
use super::peer_cert::PeerCert;
use super::router::{ConnectParams, ConnectRefusal, Outgoing, Qos2Receive, Router};
use super::session::{ConnControl, ConnMeta, InflightState, Owner};
use super::stats::{DisconnectReason, ListenerStats};
use super::stream::Stream;
use super::sys::{self, ClientInfo};
use super::uplink::{Forwarded, Refusal, Uplink};
use super::{access, auto_subscribe, Broker};
use crate::auth::acl::{Action, ConnectionAcl, Permission};
use crate::auth::{Admitted, AuthDecision};
use crate::config::AutoSubscribe;
use bytes::{Buf, BytesMut};
use holdfast_mqtt::{
    decode, encode, reason, topic, ByteStr, ConnAck, Connect, DecodeError, Disconnect, Packet,
    PacketId, Properties, ProtocolVersion, PubResp, Publish, PublishRef, QoS, SubAck, UnsubAck,
};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::sleep_until;

/// Bytes reserved for each socket read.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes reserved per read before CONNECT: small, so a connection storm does not fragment the
/// heap with read buffers that idle clients never need again.
const CONNECT_CHUNK: usize = 512;
/// Deliveries taken from the session per router lock.
const DRAIN_BATCH: usize = 256;
/// How long a closing connection may spend flushing its last bytes.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Acknowledgements one connection may hold while bridge queues sync before it stops reading.
/// A device's own inflight window usually stops it long before.
const MAX_HELD_ACKS: usize = 4096;
/// Packets a held-back connection (a subscriber's full queue holds its publishes back) keeps
/// decoded while it goes on reading for the acknowledgements and pings behind them.
const MAX_STALLED_PACKETS: usize = 256;
/// Payload bytes those packets may hold.
const MAX_STALLED_BYTES: usize = 64 * 1024;
/// Far enough to mean "no deadline".
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// Serves one accepted socket until it closes; counts the reason on its listener and gives
/// back the listener's connection slot (`slot`).
///
/// `peer` is the client's real address (for a terminated TLS/WebSocket client, not the
/// socketpair's); `peer_cert` is the identity of the certificate it presented under mutual TLS.
/// Spawned as it is, one task per connection: an async block, not an async fn (whose future
/// would hold its arguments twice), and no wrapper around it holding them a third time.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice"
)]
pub fn serve(
    stream: Stream,
    peer: SocketAddr,
    peer_cert: Option<Box<PeerCert>>,
    broker: Arc<Broker>,
    listener: Arc<ListenerStats>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        if let Stream::Tcp(tcp) = &stream {
            let _ = tcp.set_nodelay(true);
        }
        let mut conn = MqttSession::new(peer, peer_cert, broker);
        let reason = conn.run(&stream).await;
        listener.count_shutdown(reason);
        listener.current.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
    }
}

/// Why the packet loop stopped, and what to send before closing.
#[derive(Debug)]
struct Close {
    reason: DisconnectReason,
    /// v5 DISCONNECT reason code to send, if any.
    disconnect: Option<u8>,
    /// Publish the will (false only after a normal DISCONNECT).
    publish_will: bool,
}

impl Close {
    fn new(reason: DisconnectReason, disconnect: Option<u8>) -> Close {
        Close {
            reason,
            disconnect,
            publish_will: true,
        }
    }
}

/// Topic aliases of one v5 connection.
#[derive(Debug, Default)]
struct Aliases {
    /// Inbound, set by the client; bounded by `max_topic_alias`.
    inbound: HashMap<u16, ByteStr>,
    /// Outbound, assigned by us; bounded by the client's topic alias maximum.
    outbound: HashMap<ByteStr, u16>,
}

/// The will of this connection, converted at CONNECT.
#[derive(Debug)]
struct Will {
    message: Arc<Message>,
    delay: Duration,
}

/// Per-connection state. See the module documentation.
#[derive(Debug)]
struct MqttSession {
    peer: SocketAddr,
    /// CN and SANs of the client certificate verified under mutual TLS, for authentication
    /// by certificate; boxed, since most connections have none.
    peer_cert: Option<Box<PeerCert>>,
    broker: Arc<Broker>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: ProtocolVersion,
    client_id: ClientId,
    /// `Box<str>`: 8 bytes less than a `String` in every idle connection.
    username: Option<Box<str>>,
    session: SessionId,
    ctrl: Arc<ConnControl>,
    will: Option<Will>,
    keep_alive: Duration,
    /// Topic aliases both ways (v5), allocated on first use: most connections never use them.
    aliases: Option<Box<Aliases>>,
    client_alias_max: u16,
    /// The client's maximum packet size (v5); larger deliveries are dropped.
    client_max_packet: u32,
    /// Session expiry set by a v5 DISCONNECT, in seconds (the packet's unit; 8 bytes less
    /// than a `Duration` in every connection).
    expiry_override: Option<u32>,
    /// MQTT 5 CONNECT asked for no session expiry (0 or absent).
    connect_expiry_zero: bool,
    /// True when the session may still hold deliveries we did not take (buffer was full).
    drain_more: bool,
    /// The client closed its side: what it sent last is applied without holding back.
    input_ended: bool,
    /// Decoded packets awaiting the router lock (reused). While a subscriber's full queue
    /// holds this client back, its PUBLISH (and what follows it, acknowledgements and
    /// PINGREQ aside) wait here, in order, until the router lets it go on.
    inbound: Vec<Packet>,
    /// Replies produced under the lock, encoded after it (reused).
    replies: Vec<Packet>,
    /// Deliveries taken from the session (reused).
    outgoing: Vec<Outgoing>,
    /// Outbound packet ids dropped as too large for the client, to release from the window.
    released: Vec<PacketId>,
    /// Acknowledgements waiting for a bridge queue's sync; allocated on first use, since most
    /// connections never publish to a bridged topic.
    held: Option<Box<HeldAcks>>,
    /// This client's view of the ACL, built at its first publish or subscribe (none while
    /// the gateway has no ACL rules): one pointer.
    acl: Option<Box<ConnectionAcl>>,
    /// Inbound rate limits (`mqtt.messages_rate`, `mqtt.bytes_rate`): one pointer, allocated
    /// only when a limit is configured.
    limits: Option<Box<Limits>>,
    /// Boxed: only needed at connect and disconnect, not worth carrying inline while idle.
    connected: bool,
    /// CONNECT's keepalive and clean-start flag, for the `$SYS` disconnected event.
    connect_keepalive: u16,
    connect_clean_start: bool,
}

impl MqttSession {
    fn new(peer: SocketAddr, peer_cert: Option<Box<PeerCert>>, broker: Arc<Broker>) -> MqttSession {
        let conn_id = broker.next_conn_id();
        MqttSession {
            peer,
            peer_cert,
            broker,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            protocol: ProtocolVersion::V3_1_1,
            client_id: ClientId::default(),
            username: None,
            session: SessionId::UNBOUND,
            ctrl: ConnControl::new(conn_id),
            will: None,
            keep_alive: Duration::ZERO,
            aliases: None,
            client_alias_max: 0,
            client_max_packet: u32::MAX,
            expiry_override: None,
            connect_expiry_zero: false,
            drain_more: false,
            input_ended: false,
            inbound: Vec::new(),
            replies: Vec::new(),
            outgoing: Vec::new(),
            released: Vec::new(),
            held: None,
            acl: None,
            limits: None,
            connected: false,
            connect_keepalive: 0,
            connect_clean_start: false,
        }
    }

    fn max_packet_size(&self) -> usize {
        self.broker.config.mqtt.max_packet_size as usize
    }

    fn outbound_limit(&self) -> usize {
        self.broker.config.mqtt.outbound_buffer as usize
    }

    /// Idle connections keep no read buffer: drop the reservation once everything is decoded.
    fn release_read_buffer_if_empty(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    fn log_parse_failure(&self, e: &DecodeError) {
        let first = &self.rbuf[..self.rbuf.len().min(32)];
        let hex: String = first.iter().map(|b| format!("{b:02x}")).collect();
        conn_event!(
            warn,
            self,
            first_bytes = %hex,
            "parse failed: {e}"
        );
    }

    /// The verified client certificate's identity under mutual TLS (CN and SANs), which
    /// certificate-based authentication may take as the username.
    fn peer_cert(&self) -> Option<&PeerCert> {
        self.peer_cert.as_deref()
    }

    /// What `$SYS` says about this client; built on demand rather than kept per connection.
    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            client_id: self.client_id.to_string(),
            username: self.username.as_deref().map(str::to_string),
            peer: self.peer,
            proto_name: "mqtt",
            proto_ver: self.protocol.level(),
            keepalive: self.connect_keepalive,
            clean_start: self.connect_clean_start,
        }
    }

    fn queue_packet(&mut self, packet: &Packet) {
        if let Err(e) = encode(packet, self.protocol, &mut self.wbuf) {
            conn_event!(error, self, packet = packet.name(), "cannot encode: {e}");
        }
    }

    fn keepalive_window(&self) -> Duration {
        if self.keep_alive.is_zero() {
            NEVER
        } else {
            self.keep_alive
        }
    }
}

/// Inbound rate limiting of one connection (see `limiter`).
#[derive(Debug)]
struct Limits {
    /// The token buckets.
    inbound: InboundLimiter,
    /// While a bucket is empty: when reading resumes. The packet loop's keepalive timer is
    /// set to it meanwhile (we are the ones not reading, so keepalive cannot expire), which
    /// keeps the connection task from carrying a second timer.
    paused_until: Option<tokio::time::Instant>,
}

/// Acknowledgements waiting for bridge queue syncs, and this batch's bridge verdicts.
#[derive(Debug, Default)]
struct HeldAcks {
    /// PUBACK/PUBREC packets in the order they must go out.
    queue: VecDeque<HeldAck>,
    /// What the bridges did with this batch's forwarded messages, in routing order.
    forwarded: Vec<Forwarded>,
    /// `(index in replies, index in forwarded)` of this batch's acknowledgements that depend
    /// on a bridge.
    deferred: Vec<(usize, usize)>,
    /// The bridges, to wait on.
    forwarder: Option<Arc<dyn Uplink>>,
}

impl HeldAcks {
    /// Ready when the oldest held acknowledgement may go out; registers the waker otherwise.
    fn poll_front_durable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match (self.queue.front(), &self.forwarder) {
            (Some(front), Some(f)) => f.poll_durable(&front.needs, cx),
            (Some(_), None) => std::task::Poll::Ready(()),
            (None, _) => std::task::Poll::Pending,
        }
    }
}

#[derive(Debug)]
struct HeldAck {
    packet: Packet,
    /// `(bridge, seq)` that must be durable first; empty when it only waits for its turn.
    needs: Vec<(usize, u64)>,
}

/// Why a login got no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoCheck {
    /// The check workers' queue was full, or the check did not finish in time.
    Busy,
    /// The client closed the connection while it waited.
    Gone,
}

fn set_reason(packet: &mut Packet, code: u8) {
    if let Packet::PubAck(r) | Packet::PubRec(r) = packet {
        r.reason = code;
    }
}

fn pub_resp(kind: fn(PubResp) -> Packet, packet_id: PacketId, code: u8) -> Packet {
    kind(PubResp {
        packet_id,
        reason: code,
        properties: Properties::default(),
    })
}

fn reason_for(e: &DecodeError) -> DisconnectReason {
    if matches!(e, DecodeError::PacketTooLarge { .. }) {
        DisconnectReason::FrameTooLarge
    } else {
        DisconnectReason::ProtocolError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_task_stays_small_enough_for_thousands_of_idle_clients() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let config = Arc::new(crate::config::Config::default());
        let auth = Arc::new(crate::auth::Authenticator::new(true, None));
        let broker = Broker::new(config, auth, tokio_util::sync::CancellationToken::new());
        let stats = Arc::new(ListenerStats::new("t".into(), addr.to_string(), 10));
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let task = serve(Stream::Tcp(server), peer, None, broker, stats, slot);
        let size = std::mem::size_of_val(&task);
        eprintln!(
            "serve future: {size} bytes, MqttSession: {} bytes",
            std::mem::size_of::<MqttSession>()
        );
        // 896 bytes or less keeps the task cell (future + ~120 bytes of header and trailer,
        // 128-byte aligned) within 1 KB, the bulk of the 2 KB per idle connection budget.
        assert!(size <= 896, "serve future is {size} bytes");
        drop(client);
    }
}
