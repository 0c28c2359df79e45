//! The CoAP gateway (`[coap]`, UDP 5683): EMQX's CoAP conventions on the in-process client
//! API, so every CoAP client is a broker client (authentication, ACL, `$SYS`, webhooks,
//! `holdfast ctl clients`, the bridges) like an MQTT one.
//!
//! Owns the UDP socket and the table of CoAP clients. One task reads the socket (32 datagrams
//! to a system call): a request naming a client being served goes to that client's task
//! undecoded (found by the `clientid` read from the raw bytes, not by address: NB-IoT NATs
//! change the port), and the task decodes and checks it; everything else is decoded and
//! checked here (the sans-IO `holdfast_coap`), what needs no client answered here (bad
//! datagrams, pings, unknown paths), a new client's first request handed to its new task,
//! ACKs and RSTs by address.
//! Each client's task ([`peer`]) owns its broker `Client`, its deduplication record, its
//! observations and its retransmissions. The reading task never waits on the broker, and a
//! client's full inbox drops the datagram (counted; the client retransmits a CON).
//!
//! Never touches the router: everything goes through `crate::broker::client::Client`.

mod peer;

use crate::broker::Broker;
use crate::config::CoapConfig;
use crate::udp::lock;
use holdfast_coap::message::{self, DecodeError};
use holdfast_coap::request::{self, Action};
use holdfast_coap::{MessageClass, MessageType, Packet, ResponseType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Datagrams waiting for one client's task; beyond it they are dropped (counted).
const INBOX: usize = 64;

/// Why the CoAP gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A socket could not be bound.
    #[error("coap: cannot bind {bind}: {source}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The DTLS PSK file or certificates could not be loaded.
    #[error("coap: dtls: {0}")]
    Dtls(String),
}

/// The bound sockets, ready to serve.
#[derive(Debug)]
pub struct Bound {
    socket: UdpSocket,
    /// The DTLS port and its sessions (`dtls`).
    dtls: Option<(UdpSocket, Arc<crate::dtls::Sessions>)>,
    config: CoapConfig,
}

impl Bound {
    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }
}

async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    crate::udp::bind(addr)
        .await
        .map_err(|source| BindError::Bind { bind: addr, source })
}

/// Binds `[coap].bind` (and `dtls.bind`), loading the PSK file and certificates.
pub async fn bind(config: &CoapConfig) -> Result<Bound, BindError> {
    let socket = bind_udp(config.bind).await?;
    let dtls = match &config.dtls {
        Some(d) => {
            let sessions = crate::dtls::Sessions::load(
                d,
                "coap",
                config.max_peers,
                config.heartbeat.mul_f64(1.5),
            )
            .map_err(BindError::Dtls)?;
            Some((bind_udp(d.bind).await?, Arc::new(sessions)))
        }
        None => None,
    };
    Ok(Bound {
        socket,
        dtls,
        config: config.clone(),
    })
}

/// Counters of the CoAP gateway (`$SYS/brokers/{node}/coap/...`, `holdfast ctl coap`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams read.
    pub datagrams_received: AtomicU64,
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Requests handed to clients.
    pub requests: AtomicU64,
    /// Duplicates answered from the exchange record (or ignored while in progress).
    pub duplicates: AtomicU64,
    /// Messages published into the broker.
    pub published: AtomicU64,
    /// Notifications sent (first transmissions).
    pub notifications: AtomicU64,
    /// Notifications dropped from a full observation queue.
    pub notifications_dropped: AtomicU64,
    /// Confirmable messages retransmitted.
    pub retransmissions: AtomicU64,
    /// Confirmable messages given up after MAX_RETRANSMIT.
    pub timeouts: AtomicU64,
    /// Datagrams that did not decode: truncated.
    pub bad_truncated: AtomicU64,
    /// ... of another CoAP version.
    pub bad_version: AtomicU64,
    /// ... otherwise malformed.
    pub bad_malformed: AtomicU64,
    /// ... larger than `max_message_size`.
    pub bad_oversized: AtomicU64,
    /// Requests with an unrecognized critical option (4.02).
    pub bad_option: AtomicU64,
    /// Datagrams dropped because the client's inbox was full.
    pub inbox_full: AtomicU64,
    /// Requests refused because `max_peers` clients were served.
    pub peers_refused: AtomicU64,
    /// DTLS datagrams refused (no handshake, a failed handshake or record, sessions full).
    pub bad_dtls: AtomicU64,
}

/// What `holdfast ctl coap` shows of one client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    /// Client id.
    pub client_id: String,
    /// Its current address.
    pub peer: String,
    /// Connection mode (a token) or connectionless.
    pub connection_mode: bool,
    /// Observed topic filters.
    pub observing: Vec<String>,
    /// Seconds since it was last heard from.
    pub idle_seconds: u64,
}

/// One client in the table.
#[derive(Debug)]
struct Entry {
    inbox: mpsc::Sender<Inbound>,
    /// Came over DTLS.
    secure: bool,
    addr: SocketAddr,
    generation: u64,
    view: Arc<Mutex<peer::Shown>>,
}

/// The CoAP gateway's shared state: the client table and the counters.
#[derive(Debug, Default)]
pub struct Status {
    /// Counters.
    pub counters: Counters,
    table: Mutex<Table>,
    /// Bad-input log lines, shared by the reading task and the clients' tasks.
    bad_log: Mutex<crate::udp::LogBudget>,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<String, Entry>,
    by_addr: HashMap<SocketAddr, String>,
    next_generation: u64,
}

impl Status {
    /// The clients served now.
    pub fn peers(&self) -> Vec<PeerView> {
        let table = lock(&self.table);
        let now = Instant::now();
        let mut out: Vec<PeerView> = table
            .by_id
            .iter()
            .map(|(id, e)| {
                let shown = lock(&e.view);
                PeerView {
                    client_id: id.clone(),
                    peer: e.addr.to_string(),
                    connection_mode: shown.connection_mode,
                    observing: shown.observing.clone(),
                    idle_seconds: now.saturating_duration_since(shown.last_heard).as_secs(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Counter values by name, for `$SYS` and `holdfast ctl`.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let peers = lock(&self.table).by_id.len() as u64;
        vec![
            ("peers", peers),
            ("datagrams_received", get(&c.datagrams_received)),
            ("datagrams_sent", get(&c.datagrams_sent)),
            ("requests", get(&c.requests)),
            ("duplicates", get(&c.duplicates)),
            ("published", get(&c.published)),
            ("notifications", get(&c.notifications)),
            ("notifications_dropped", get(&c.notifications_dropped)),
            ("retransmissions", get(&c.retransmissions)),
            ("timeouts", get(&c.timeouts)),
            ("bad_truncated", get(&c.bad_truncated)),
            ("bad_version", get(&c.bad_version)),
            ("bad_malformed", get(&c.bad_malformed)),
            ("bad_oversized", get(&c.bad_oversized)),
            ("bad_option", get(&c.bad_option)),
            ("inbox_full", get(&c.inbox_full)),
            ("peers_refused", get(&c.peers_refused)),
            ("bad_dtls", get(&c.bad_dtls)),
        ]
    }

    /// Removes `client_id` from the table if `generation` is still its entry.
    fn remove(&self, client_id: &str, generation: u64) {
        let mut table = lock(&self.table);
        if let Some(e) = table.by_id.get(client_id) {
            if e.generation == generation {
                let addr = e.addr;
                table.by_id.remove(client_id);
                if table.by_addr.get(&addr).is_some_and(|id| id == client_id) {
                    table.by_addr.remove(&addr);
                }
            }
        }
    }

    /// Records that `client_id` now talks from `addr` (acks go there from now on).
    fn moved(&self, client_id: &str, generation: u64, addr: SocketAddr) {
        let mut table = lock(&self.table);
        let Some(e) = table.by_id.get_mut(client_id) else {
            return;
        };
        if e.generation != generation || e.addr == addr {
            return;
        }
        let old = std::mem::replace(&mut e.addr, addr);
        if table.by_addr.get(&old).is_some_and(|id| id == client_id) {
            table.by_addr.remove(&old);
        }
        table.by_addr.insert(addr, client_id.to_owned());
    }
}

/// What the reading task hands a client's task.
#[derive(Debug)]
enum Inbound {
    /// A request (decoded, checked and parsed) from `from`.
    Request(Box<RequestIn>),
    /// A request datagram, not decoded yet, whose Uri-Query names this client
    /// ([`message::request_client_id`]): the client's task decodes and checks it, so the
    /// reading task does no more per datagram than find the client.
    Datagram(Box<DatagramIn>),
    /// An ACK (`reset` false) or RST for message `mid`.
    Settle { mid: u16, reset: bool },
}

/// A request datagram as the reading task hands it on.
#[derive(Debug)]
struct DatagramIn {
    bytes: Vec<u8>,
    from: SocketAddr,
    /// The identity the peer proved on the DTLS port (PSK identity or certificate CN).
    psk_identity: Option<String>,
}

/// Why a decoded request is not processed.
enum Refused {
    /// A NON with an unrecognized critical option: RST.
    Reset,
    /// Answered with this code and diagnostic.
    Answer(ResponseType, String),
}

/// Checks a decoded request as both the reading task and a client's task do: an unrecognized
/// critical option (4.02, counted and logged) or a request the conventions refuse.
fn check_request(
    status: &Status,
    packet: &Packet,
    from: SocketAddr,
) -> Result<request::Request, Refused> {
    if let Some(option) = message::unknown_critical_option(packet, message::SUPPORTED_CRITICAL) {
        status.counters.bad_option.fetch_add(1, Ordering::Relaxed);
        if status.may_log() {
            tracing::warn!(peer = %from, option, "coap: request with an unrecognized critical option (4.02)");
        }
        return Err(if packet.header.get_type() == MessageType::Confirmable {
            Refused::Answer(
                ResponseType::BadOption,
                "unrecognized critical option".into(),
            )
        } else {
            Refused::Reset
        });
    }
    request::parse(packet).map_err(|refusal| {
        tracing::debug!(peer = %from, "coap: {refusal}");
        Refused::Answer(refusal.code(), refusal.to_string())
    })
}

/// A request as the reading task hands it on.
#[derive(Debug)]
struct RequestIn {
    packet: Packet,
    request: request::Request,
    from: SocketAddr,
    /// The identity the peer proved on the DTLS port (PSK identity or certificate CN).
    psk_identity: Option<String>,
}

/// Serves the sockets until shutdown.
pub async fn run(bound: Bound, broker: Arc<Broker>, tracker: TaskTracker) {
    let status = broker.coap.get_or_init(Default::default).clone();
    let config = Arc::new(bound.config);
    let server = |transport: crate::dtls::Transport| Server {
        transport,
        broker: broker.clone(),
        config: config.clone(),
        status: status.clone(),
        tracker: tracker.clone(),
        next_mid: rand::random(),
    };
    if let Some((socket, sessions)) = bound.dtls {
        let secure = server(crate::dtls::Transport::secure(Arc::new(socket), sessions));
        tracker.spawn(read_loop(secure));
    }
    read_loop(server(crate::dtls::Transport::plain(Arc::new(
        bound.socket,
    ))))
    .await;
    tracing::info!("coap gateway stopped");
}

/// Reads one socket until shutdown.
async fn read_loop(mut server: Server) {
    let transport = server.transport.clone();
    if let Ok(addr) = transport.socket().local_addr() {
        let scheme = if transport.is_secure() {
            "coaps"
        } else {
            "coap"
        };
        tracing::info!(bind = %addr, scheme, "coap gateway listening");
    }
    let shutdown = server.broker.shutdown.clone();
    let max = server.config.max_message_size;
    crate::udp::read_loop(&mut server, &transport, max, &shutdown).await;
}

impl crate::udp::Handler for Server {
    fn datagram(&mut self, data: &[u8], from: SocketAddr, identity: Option<String>) {
        Server::datagram(self, data, from, identity);
    }

    fn received(&mut self) {
        self.status
            .counters
            .datagrams_received
            .fetch_add(1, Ordering::Relaxed);
    }

    fn dtls_refused(&mut self, from: SocketAddr, why: &str) {
        self.status
            .counters
            .bad_dtls
            .fetch_add(1, Ordering::Relaxed);
        if self.status.may_log() {
            tracing::warn!(peer = %from, "coaps: {why}");
        }
    }
}

struct Server {
    transport: crate::dtls::Transport,
    broker: Arc<Broker>,
    config: Arc<CoapConfig>,
    status: Arc<Status>,
    tracker: TaskTracker,
    next_mid: u16,
}

impl Server {
    /// One CoAP message from `from` (decrypted, with the PSK identity it proved, on the DTLS
    /// port).
    fn datagram(&mut self, data: &[u8], from: SocketAddr, identity: Option<String>) {
        let identity = match self.hand_over(data, from, identity) {
            Ok(()) => return,
            Err(identity) => identity,
        };
        let packet = match message::decode(data, self.config.max_message_size) {
            Ok(p) => p,
            Err(e) => {
                self.status.bad(&e, from);
                // A confirmable message we cannot process is rejected (RFC 7252 4.2).
                if let (Some((MessageType::Confirmable, mid)), false) = (
                    message::peek_header(data),
                    matches!(e, DecodeError::Oversized { .. }),
                ) {
                    self.send(&message::reset(mid), from);
                }
                return;
            }
        };
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Acknowledgement | MessageType::Reset, _) => {
                let reset = packet.header.get_type() == MessageType::Reset;
                let target = {
                    let table = lock(&self.status.table);
                    table
                        .by_addr
                        .get(&from)
                        .and_then(|id| table.by_id.get(id))
                        .map(|e| e.inbox.clone())
                };
                if let Some(inbox) = target {
                    let mid = packet.header.message_id;
                    if inbox.try_send(Inbound::Settle { mid, reset }).is_err() {
                        self.status
                            .counters
                            .inbox_full
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // CoAP ping: an empty CON is answered with RST (RFC 7252 4.3).
            (MessageType::Confirmable, MessageClass::Empty) => {
                self.send(&message::reset(packet.header.message_id), from);
            }
            (_, MessageClass::Request(_)) => self.request(packet, from, identity),
            // A response or an empty NON sent to the server: rejected if confirmable.
            (kind, _) => {
                if kind == MessageType::Confirmable {
                    self.send(&message::reset(packet.header.message_id), from);
                }
            }
        }
    }

    /// Hands a request datagram whose client is being served to its task undecoded;
    /// `Err` (the identity back) for everything else, which is decoded here.
    fn hand_over(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        identity: Option<String>,
    ) -> Result<(), Option<String>> {
        if data.len() > self.config.max_message_size {
            return Err(identity);
        }
        let Some(client_id) = message::request_client_id(data) else {
            return Err(identity);
        };
        let secure = self.transport.is_secure();
        let inbox = {
            let table = lock(&self.status.table);
            match table.by_id.get(client_id) {
                Some(e) if e.secure == secure => e.inbox.clone(),
                _ => return Err(identity),
            }
        };
        let datagram = Box::new(DatagramIn {
            bytes: data.to_vec(),
            from,
            psk_identity: identity,
        });
        match inbox.try_send(Inbound::Datagram(datagram)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.status
                    .counters
                    .inbox_full
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // The task ended: the full path starts a new one.
            Err(mpsc::error::TrySendError::Closed(Inbound::Datagram(d))) => Err(d.psk_identity),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
        }
    }

    fn request(&mut self, packet: Packet, from: SocketAddr, identity: Option<String>) {
        let request = match check_request(&self.status, &packet, from) {
            Ok(r) => r,
            Err(Refused::Reset) => {
                self.send(&message::reset(packet.header.message_id), from);
                return;
            }
            Err(Refused::Answer(code, diagnostic)) => {
                self.reply(&packet, code, diagnostic.as_bytes(), from);
                return;
            }
        };
        // Without a clientid: the PSK identity on the DTLS port, the address otherwise.
        let client_id = match (&request.identity.client_id, &identity) {
            (Some(id), _) => id.clone(),
            (None, Some(psk)) => psk.clone(),
            (None, None) => format!("coap-{from}"),
        };
        let secure = self.transport.is_secure();
        let existing = {
            let table = lock(&self.status.table);
            table
                .by_id
                .get(&client_id)
                .map(|e| (e.inbox.clone(), e.secure))
        };
        // A client that came over DTLS cannot be reached over plain CoAP, nor the reverse.
        if let Some((_, was_secure)) = existing.as_ref().filter(|(_, s)| *s != secure) {
            let why: &[u8] = if *was_secure {
                b"this client id is in use over DTLS"
            } else {
                b"this client id is in use over plain CoAP"
            };
            self.reply(&packet, ResponseType::Unauthorized, why, from);
            return;
        }
        let existing = existing.map(|(inbox, _)| inbox);
        let inbound = Box::new(RequestIn {
            packet,
            request,
            from,
            psk_identity: identity,
        });
        match existing {
            Some(inbox) => match inbox.try_send(Inbound::Request(inbound)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.status
                        .counters
                        .inbox_full
                        .fetch_add(1, Ordering::Relaxed);
                }
                // The task ended between the lookup and the send: start afresh.
                Err(mpsc::error::TrySendError::Closed(Inbound::Request(inbound))) => {
                    self.status.remove_closed(&client_id);
                    self.spawn(client_id, inbound);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            None => self.spawn(client_id, inbound),
        }
    }

    /// Starts the task of a client not in the table, with its first request.
    fn spawn(&mut self, client_id: String, first: Box<RequestIn>) {
        let (packet, request, from) = (&first.packet, &first.request, first.from);
        // Only a request that can open a session starts one.
        if matches!(request.action, Action::Heartbeat | Action::Disconnect) {
            self.reply(packet, ResponseType::Unauthorized, b"not connected", from);
            return;
        }
        if self.config.connection_required && request.action != Action::Connect {
            self.reply(
                packet,
                ResponseType::Unauthorized,
                b"connection required",
                from,
            );
            return;
        }
        let (tx, rx) = mpsc::channel(INBOX);
        let view = Arc::new(Mutex::new(peer::Shown::new()));
        let generation = {
            let mut table = lock(&self.status.table);
            if table.by_id.len() >= self.config.max_peers {
                drop(table);
                self.status
                    .counters
                    .peers_refused
                    .fetch_add(1, Ordering::Relaxed);
                if self.status.may_log() {
                    tracing::warn!(peer = %from, client_id = %crate::broker::short(&client_id), max_peers = self.config.max_peers, "coap: max_peers reached, request refused (5.03)");
                }
                self.reply(
                    packet,
                    ResponseType::ServiceUnavailable,
                    b"max_peers reached",
                    from,
                );
                return;
            }
            table.next_generation += 1;
            let generation = table.next_generation;
            table.by_id.insert(
                client_id.clone(),
                Entry {
                    inbox: tx,
                    secure: self.transport.is_secure(),
                    addr: from,
                    generation,
                    view: view.clone(),
                },
            );
            table.by_addr.insert(from, client_id.clone());
            generation
        };
        let task = peer::Peer::new(peer::Setup {
            client_id,
            generation,
            addr: from,
            transport: self.transport.clone(),
            broker: self.broker.clone(),
            config: self.config.clone(),
            status: self.status.clone(),
            view,
        });
        self.tracker.spawn(task.run(first, rx));
    }

    /// A response to `request` (piggybacked, or NON for a NON request) with a diagnostic, as
    /// [`message::answer`] makes it (No-Response may leave a CON its empty ACK, a NON nothing).
    fn reply(&mut self, request: &Packet, code: ResponseType, payload: &[u8], to: SocketAddr) {
        self.next_mid = self.next_mid.wrapping_add(1);
        if let Some(r) = message::answer(request, code, payload.to_vec(), Vec::new(), self.next_mid)
        {
            self.send(&r, to);
        }
    }

    fn send(&self, packet: &Packet, to: SocketAddr) {
        match packet.to_bytes_unlimited() {
            Ok(bytes) => send_bytes(&self.transport, &self.status, &bytes, to),
            Err(e) => tracing::warn!(peer = %to, "coap: cannot encode a reply: {e}"),
        }
    }
}

impl Status {
    /// Whether one more bad-input line may be logged now.
    fn may_log(&self) -> bool {
        lock(&self.bad_log).take()
    }

    /// Counts and (within the log budget) logs a datagram that did not decode.
    fn bad(&self, e: &DecodeError, from: SocketAddr) {
        let c = &self.counters;
        let counter = match e {
            DecodeError::Truncated(_) => &c.bad_truncated,
            DecodeError::Version(_) => &c.bad_version,
            DecodeError::Oversized { .. } => &c.bad_oversized,
            _ => &c.bad_malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.may_log() {
            tracing::warn!(peer = %from, kind = e.kind(), "coap: bad datagram dropped: {e}");
        }
    }

    /// Removes `client_id` whose task is gone (its inbox closed).
    fn remove_closed(&self, client_id: &str) {
        let generation = lock(&self.table)
            .by_id
            .get(client_id)
            .filter(|e| e.inbox.is_closed())
            .map(|e| e.generation);
        if let Some(g) = generation {
            self.remove(client_id, g);
        }
    }
}

/// Sends a message to `to` without waiting: UDP's send buffer is the bound; a full one drops
/// (as the network may), and CON messages are retransmitted.
fn send_bytes(transport: &crate::dtls::Transport, status: &Status, bytes: &[u8], to: SocketAddr) {
    if transport.try_send(bytes, to) {
        status
            .counters
            .datagrams_sent
            .fetch_add(1, Ordering::Relaxed);
    } else {
        tracing::debug!(peer = %to, "coap: send failed");
    }
}
