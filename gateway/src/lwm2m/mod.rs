//! The LwM2M server (`[lwm2m]`, UDP 5783): OMA LwM2M 1.0.2 / 1.1 registrations and device
//! management over CoAP, with EMQX's MQTT topics and JSON, on the in-process client API: each
//! registered endpoint is the broker client `{ep}` (authentication, ACL, `$SYS`, webhooks,
//! `holdfast ctl clients`, the bridges).
//!
//! Owns the UDP socket, the registry (the sans-IO `holdfast_lwm2m::registry` behind one lock)
//! and the table of endpoint tasks. One task reads the socket: it decodes and checks each
//! datagram, answers what needs no endpoint (bad datagrams, pings, unknown paths, refused
//! registrations), applies Register / Update / De-register to the registry, expires lifetimes
//! every second, and hands the rest to the endpoint's task ([`endpoint`]) by endpoint name
//! (requests) or address (the device's answers). A registration whose body comes block by
//! block (Block1, RFC 7959) is reassembled here first, bounded by `max_body_size` and
//! [`BLOCK_TRANSFERS`]. It never waits on the broker; a full inbox drops the datagram
//! (counted; the device retransmits a CON).
//!
//! Never touches the router: everything goes through `crate::broker::client::Client`.

mod endpoint;
mod inbox;

use crate::broker::Broker;
use crate::config::Lwm2mConfig;
use crate::udp::lock;
use holdfast_coap::block::{self, Assembler, Block1Answer, BlockValue};
use holdfast_coap::dedup::{Dedup, Seen};
use holdfast_coap::message;
use holdfast_coap::params::{EXCHANGE_LIFETIME, NON_LIFETIME};
use holdfast_coap::{
    CoapOption, MessageClass, MessageType, OptionValueU32, Packet, RequestType, ResponseType,
};
use holdfast_lwm2m::model::Model;
use holdfast_lwm2m::registry::{self, Limits, RegError, Registration, Registry};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_util::task::TaskTracker;

/// Datagrams and events waiting for one endpoint's task.
const INBOX: usize = 64;

/// Exchanges remembered for deduplication of the devices' registration requests.
const DEDUP_CAPACITY: usize = 65_536;

/// Registration bodies reassembled from Block1 blocks at once, per socket (the oldest is
/// dropped for a new one).
const BLOCK_TRANSFERS: usize = 256;

/// The largest registration body taken block by block (with `max_body_size`): an object
/// list, not data.
const REGISTRATION_BODY_MAX: usize = 64 * 1024;

/// Why the LwM2M server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The socket could not be bound.
    #[error("lwm2m: cannot bind {bind}: {source}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An object definition in `xml_dir` could not be read.
    #[error("lwm2m: xml_dir: {0}")]
    Xml(String),
    /// The DTLS PSK file or certificates could not be loaded.
    #[error("lwm2m: dtls: {0}")]
    Dtls(String),
}

/// The bound socket and the object model, ready to serve.
#[derive(Debug)]
pub struct Bound {
    socket: UdpSocket,
    /// The DTLS port and its sessions (`dtls`).
    dtls: Option<(UdpSocket, Arc<crate::dtls::Sessions>)>,
    config: Lwm2mConfig,
    model: Model,
}

impl Bound {
    /// The address bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }
}

/// Loads the object model (built-in + `xml_dir`) and binds `[lwm2m].bind`.
pub async fn bind(config: &Lwm2mConfig) -> Result<Bound, StartError> {
    let mut model = Model::builtin();
    if let Some(dir) = &config.xml_dir {
        load_xml_dir(&mut model, dir)?;
    }
    let socket = bind_udp(config.bind).await?;
    let dtls = match &config.dtls {
        Some(d) => {
            let sessions =
                crate::dtls::Sessions::load(d, "lwm2m", config.max_endpoints, config.lifetime_max)
                    .map_err(StartError::Dtls)?;
            Some((bind_udp(d.bind).await?, Arc::new(sessions)))
        }
        None => None,
    };
    Ok(Bound {
        socket,
        dtls,
        config: config.clone(),
        model,
    })
}

async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, StartError> {
    crate::udp::bind(addr)
        .await
        .map_err(|source| StartError::Bind { bind: addr, source })
}

/// Adds every `*.xml` of `dir` to `model`; a file that is not an object definition stops the
/// start with its name and why.
fn load_xml_dir(model: &mut Model, dir: &Path) -> Result<(), StartError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StartError::Xml(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| StartError::Xml(format!("{}: {e}", file.display())))?;
        let ids = model
            .add_xml(&text, &file.display().to_string())
            .map_err(|e| StartError::Xml(e.to_string()))?;
        tracing::info!(file = %file.display(), objects = ?ids, "lwm2m: object definitions loaded");
    }
    Ok(())
}

/// Counters of the LwM2M server (`$SYS/brokers/{node}/lwm2m/...`, `holdfast ctl lwm2m`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams read.
    pub datagrams_received: AtomicU64,
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Registrations accepted.
    pub registrations: AtomicU64,
    /// Registrations refused (bad request, version, name taken, full, authentication).
    pub registrations_refused: AtomicU64,
    /// Updates accepted.
    pub updates: AtomicU64,
    /// De-registrations.
    pub deregistrations: AtomicU64,
    /// Registrations whose lifetime ran out.
    pub expirations: AtomicU64,
    /// Downlink commands received.
    pub commands: AtomicU64,
    /// Commands refused (malformed, unknown type, queue full).
    pub commands_refused: AtomicU64,
    /// Responses published.
    pub responses: AtomicU64,
    /// Notifications published.
    pub notifications: AtomicU64,
    /// Requests to devices given up after the retransmissions.
    pub timeouts: AtomicU64,
    /// Duplicated device requests answered from the exchange record.
    pub duplicates: AtomicU64,
    /// Datagrams that did not decode (truncated, version, malformed, oversized).
    pub bad_datagrams: AtomicU64,
    /// Datagrams dropped because the endpoint's inbox was full.
    pub inbox_full: AtomicU64,
}

/// What `holdfast ctl lwm2m` shows of one endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointView {
    /// Endpoint name (the client id).
    pub ep: String,
    /// Its address.
    pub peer: String,
    /// Location (`rd/{n}`).
    pub location: String,
    /// Lifetime, seconds.
    pub lifetime: u32,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Binding mode.
    pub binding: String,
    /// LwM2M version.
    pub lwm2m: String,
    /// The object list.
    pub objects: Vec<String>,
    /// Seconds since the device last talked.
    pub last_seen_seconds: u64,
}

/// One endpoint task in the table.
#[derive(Debug)]
struct Handle {
    inbox: inbox::Sender,
    /// Registered over DTLS.
    secure: bool,
    generation: u64,
}

#[derive(Debug)]
struct Shared {
    registry: Registry,
    /// By endpoint name (shared with the registry, not copied).
    endpoints: HashMap<Arc<str>, Handle>,
    by_addr: HashMap<SocketAddr, Arc<str>>,
    dedup: Dedup<(SocketAddr, u16)>,
    next_generation: u64,
}

impl Shared {
    /// Forgets that answers from `addr` go to `ep` (if they still do).
    fn unroute(&mut self, addr: SocketAddr, ep: &str) {
        if self.by_addr.get(&addr).is_some_and(|e| **e == *ep) {
            self.by_addr.remove(&addr);
        }
    }
}

/// The LwM2M server's shared state: registry, endpoint table, counters.
#[derive(Debug)]
pub struct Status {
    /// Counters.
    pub counters: Counters,
    shared: Mutex<Shared>,
}

impl Status {
    fn new(limits: Limits) -> Status {
        Status {
            counters: Counters::default(),
            shared: Mutex::new(Shared {
                registry: Registry::new(limits),
                endpoints: HashMap::new(),
                by_addr: HashMap::new(),
                dedup: Dedup::new(DEDUP_CAPACITY),
                next_generation: 0,
            }),
        }
    }

    /// The registered endpoints.
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let shared = lock(&self.shared);
        let now = Instant::now();
        let mut out: Vec<EndpointView> = shared
            .registry
            .iter()
            .map(|r| {
                let objects = r.params.objects().object_list;
                let last_seen = shared
                    .endpoints
                    .get(&*r.params.ep)
                    .map_or(now, |h| h.inbox.last_seen());
                EndpointView {
                    ep: r.params.ep.to_string(),
                    peer: r.addr.to_string(),
                    location: r.location(),
                    lifetime: r.params.lifetime,
                    expires_in: r.expires_at.saturating_duration_since(now).as_secs(),
                    binding: r.params.binding.to_string(),
                    lwm2m: r.params.version.to_string(),
                    objects,
                    last_seen_seconds: now.saturating_duration_since(last_seen).as_secs(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.ep.cmp(&b.ep));
        out
    }

    /// Counter values by name.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let endpoints = lock(&self.shared).registry.len() as u64;
        vec![
            ("endpoints", endpoints),
            ("datagrams_received", get(&c.datagrams_received)),
            ("datagrams_sent", get(&c.datagrams_sent)),
            ("registrations", get(&c.registrations)),
            ("registrations_refused", get(&c.registrations_refused)),
            ("updates", get(&c.updates)),
            ("deregistrations", get(&c.deregistrations)),
            ("expirations", get(&c.expirations)),
            ("commands", get(&c.commands)),
            ("commands_refused", get(&c.commands_refused)),
            ("responses", get(&c.responses)),
            ("notifications", get(&c.notifications)),
            ("timeouts", get(&c.timeouts)),
            ("duplicates", get(&c.duplicates)),
            ("bad_datagrams", get(&c.bad_datagrams)),
            ("inbox_full", get(&c.inbox_full)),
        ]
    }

    /// Records the reply to a device's request, for its duplicates.
    fn replied(&self, from: SocketAddr, mid: u16, bytes: Vec<u8>) {
        lock(&self.shared).dedup.replied(&(from, mid), bytes);
    }

    /// Removes the endpoint task `generation` of `ep` from the table with its registration,
    /// if any is left (the task ended on its own: refused, kicked, taken over, shutdown).
    fn remove(&self, ep: &str, generation: u64) {
        let mut shared = lock(&self.shared);
        if shared
            .endpoints
            .get(ep)
            .is_some_and(|h| h.generation == generation)
        {
            shared.endpoints.remove(ep);
            if let Some((addr, location)) = shared.registry.get(ep).map(|r| (r.addr, r.location()))
            {
                shared.unroute(addr, ep);
                let _ = shared.registry.deregister(&location);
            }
        }
    }
}

/// What the reading task hands an endpoint's task (through its [`inbox`]). Every payload is
/// boxed: small events, cheap to queue.
#[derive(Debug)]
enum Inbound {
    /// A Register was accepted by the registry: connect (if not yet), answer 2.01, publish.
    Registered(Box<(Registration, Packet)>),
    /// An Update was applied (with an object list, or not): answer 2.04, publish (by the
    /// condition), flush queued commands.
    Updated(Box<(Registration, Packet, bool)>),
    /// De-registered (the request, from where): answer 2.02 and end.
    Deregistered(Box<(Packet, SocketAddr)>),
    /// The lifetime ran out: end.
    Expired,
    /// A response, ACK or RST from the device.
    FromDevice(Box<Packet>),
}

/// Serves the socket until shutdown.
pub async fn run(bound: Bound, broker: Arc<Broker>, tracker: TaskTracker) {
    let limits = Limits {
        lifetime_min: bound.config.lifetime_min,
        lifetime_max: bound.config.lifetime_max,
        max_endpoints: bound.config.max_endpoints,
    };
    let status = broker
        .lwm2m
        .get_or_init(|| Arc::new(Status::new(limits)))
        .clone();
    tracing::info!(objects = ?bound.model.ids(), "lwm2m object definitions");
    let config = Arc::new(bound.config);
    let model = Arc::new(bound.model);
    let server = |transport: crate::dtls::Transport| Server {
        ctx: Arc::new(endpoint::Context {
            transport,
            broker: broker.clone(),
            config: config.clone(),
            model: model.clone(),
            status: status.clone(),
        }),
        tracker: tracker.clone(),
        bad_log: crate::udp::LogBudget::default(),
        expires: false,
        last_expiry: Instant::now(),
        next_mid: rand::random(),
        blocks: Assembler::new(
            config.max_body_size.min(REGISTRATION_BODY_MAX),
            BLOCK_TRANSFERS,
            EXCHANGE_LIFETIME,
        ),
    };
    if let Some((socket, sessions)) = bound.dtls {
        let secure = server(crate::dtls::Transport::secure(Arc::new(socket), sessions));
        tracker.spawn(read_loop(secure, false));
    }
    read_loop(
        server(crate::dtls::Transport::plain(Arc::new(bound.socket))),
        true,
    )
    .await;
    tracing::info!("lwm2m server stopped");
}

/// Reads one socket until shutdown; the plain socket's reader also runs the lifetime expiry.
async fn read_loop(mut server: Server, expires: bool) {
    let transport = server.ctx.transport.clone();
    if let Ok(addr) = transport.socket().local_addr() {
        let dtls = transport.is_secure();
        tracing::info!(bind = %addr, dtls, "lwm2m server listening");
    }
    server.expires = expires;
    let shutdown = server.ctx.broker.shutdown.clone();
    let max = server.ctx.config.max_message_size;
    crate::udp::read_loop(&mut server, &transport, max, &shutdown).await;
}

impl crate::udp::Handler for Server {
    fn datagram(&mut self, data: &[u8], from: SocketAddr, identity: Option<String>) {
        Server::datagram(self, data, from, identity);
    }

    fn received(&mut self) {
        self.ctx
            .status
            .counters
            .datagrams_received
            .fetch_add(1, Ordering::Relaxed);
    }

    fn dtls_refused(&mut self, from: SocketAddr, why: &str) {
        self.ctx
            .status
            .counters
            .bad_datagrams
            .fetch_add(1, Ordering::Relaxed);
        if self.bad_log.take() {
            tracing::warn!(peer = %from, "lwm2m dtls: {why}");
        }
    }

    fn tick(&mut self) {
        if self.expires && self.last_expiry.elapsed() >= Duration::from_secs(1) {
            self.last_expiry = Instant::now();
            self.expire();
        }
    }
}

struct Server {
    /// The socket, broker, config, model and counters, shared with this socket's endpoints.
    ctx: Arc<endpoint::Context>,
    tracker: TaskTracker,
    bad_log: crate::udp::LogBudget,
    /// This reader runs the lifetime expiry (the plain socket's), last at `last_expiry`.
    expires: bool,
    last_expiry: Instant,
    next_mid: u16,
    /// Registration bodies coming block by block, by sender and URI.
    blocks: Assembler<(SocketAddr, String)>,
}

impl Server {
    /// One CoAP message from `from` (decrypted, with the PSK identity it proved, on the DTLS
    /// port).
    fn datagram(&mut self, data: &[u8], from: SocketAddr, identity: Option<String>) {
        let packet = match message::decode(data, self.ctx.config.max_message_size) {
            Ok(p) => p,
            Err(e) => {
                self.ctx
                    .status
                    .counters
                    .bad_datagrams
                    .fetch_add(1, Ordering::Relaxed);
                if self.bad_log.take() {
                    tracing::warn!(peer = %from, kind = e.kind(), "lwm2m: bad datagram dropped: {e}");
                }
                if let Some((MessageType::Confirmable, mid)) = message::peek_header(data) {
                    self.send(&message::reset(mid), from);
                }
                return;
            }
        };
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Confirmable, MessageClass::Empty) => {
                self.send(&message::reset(packet.header.message_id), from);
            }
            (_, MessageClass::Request(method)) => self.request(packet, method, from, identity),
            // ACK, RST and responses: the device answering a command.
            _ => {
                // Only what came over the endpoint's own transport reaches it.
                let secure = self.ctx.transport.is_secure();
                let inbox = {
                    let shared = lock(&self.ctx.status.shared);
                    shared
                        .by_addr
                        .get(&from)
                        .and_then(|ep| shared.endpoints.get(ep))
                        .filter(|h| h.secure == secure)
                        .map(|h| h.inbox.clone())
                };
                match inbox {
                    Some(inbox) => {
                        let sent = inbox.try_send(Inbound::FromDevice(Box::new(packet)));
                        if sent.is_err() {
                            self.ctx
                                .status
                                .counters
                                .inbox_full
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None if packet.header.get_type() == MessageType::Confirmable => {
                        self.send(&message::reset(packet.header.message_id), from);
                    }
                    None => {}
                }
            }
        }
    }

    fn request(
        &mut self,
        packet: Packet,
        method: RequestType,
        from: SocketAddr,
        identity: Option<String>,
    ) {
        let mid = packet.header.message_id;
        let lifetime = if packet.header.get_type() == MessageType::Confirmable {
            EXCHANGE_LIFETIME
        } else {
            NON_LIFETIME
        };
        let seen = lock(&self.ctx.status.shared)
            .dedup
            .check((from, mid), lifetime, Instant::now());
        match seen {
            Seen::New => {}
            Seen::InProgress => {
                self.ctx
                    .status
                    .counters
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Seen::Replied(bytes) => {
                self.ctx
                    .status
                    .counters
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                self.send_bytes(&bytes, from);
                return;
            }
        }
        if let Some(option) = message::unknown_critical_option(&packet, message::SUPPORTED_CRITICAL)
        {
            self.ctx
                .status
                .counters
                .bad_datagrams
                .fetch_add(1, Ordering::Relaxed);
            if self.bad_log.take() {
                tracing::warn!(peer = %from, option, "lwm2m: request with an unrecognized critical option (4.02)");
            }
            self.reply(
                &packet,
                ResponseType::BadOption,
                "unrecognized critical option",
                from,
            );
            return;
        }
        let Some(packet) = self.reassemble(packet, from) else {
            return;
        };
        let path = message::uri_path(&packet).unwrap_or_default();
        let query = message::uri_query(&packet).unwrap_or_default();
        match (
            method,
            path.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            (RequestType::Post, ["rd"]) => self.register(packet, &query, from, identity),
            (RequestType::Post, ["rd", id]) => {
                let location = format!("rd/{id}");
                self.update(packet, &location, &query, from);
            }
            (RequestType::Delete, ["rd", id]) => {
                let location = format!("rd/{id}");
                self.deregister(packet, &location, from);
            }
            (_, ["rd", ..]) => self.reply(&packet, ResponseType::MethodNotAllowed, "", from),
            _ => self.reply(&packet, ResponseType::NotFound, "", from),
        }
    }

    /// A request whose body comes block by block (Block1): each block but the last is answered
    /// 2.31 Continue (at the block size the server takes); the last gives the request with the
    /// whole body. A request without Block1 as it is.
    fn reassemble(&mut self, mut packet: Packet, from: SocketAddr) -> Option<Packet> {
        let b1 = match packet.get_first_option_as::<BlockValue>(CoapOption::Block1) {
            None => return Some(packet),
            Some(Ok(b1)) => b1,
            Some(Err(_)) => {
                self.reply(
                    &packet,
                    ResponseType::BadOption,
                    "malformed Block1 option",
                    from,
                );
                return None;
            }
        };
        let key = (from, block::transfer_key(&packet));
        let max_block = self.ctx.config.max_block_size;
        let answer = self
            .blocks
            .answer(key, &b1, &packet.payload, max_block, Instant::now());
        let (code, why, options) = match answer {
            Block1Answer::Complete(body) => {
                packet.payload = body;
                return Some(packet);
            }
            Block1Answer::Continue(echo) => (
                ResponseType::Continue,
                String::new(),
                vec![(CoapOption::Block1, Vec::from(echo))],
            ),
            Block1Answer::Refused { code, why, size1 } => {
                tracing::warn!(peer = %from, "lwm2m: block-wise request refused ({code:?}): {why}");
                let size1 = size1.map(|max| (CoapOption::Size1, OptionValueU32(max).into()));
                (code, why, size1.into_iter().collect())
            }
        };
        self.next_mid = self.next_mid.wrapping_add(1);
        let mut r = message::response_to(&packet, code, self.next_mid);
        for (option, value) in options {
            r.add_option(option, value);
        }
        r.payload = why.into_bytes();
        self.send_reply(&packet, &r, from);
        None
    }

    fn register(
        &mut self,
        packet: Packet,
        query: &[(String, String)],
        from: SocketAddr,
        identity: Option<String>,
    ) {
        let now = Instant::now();
        let limits = *lock(&self.ctx.status.shared).registry.limits();
        let params = match registry::register_params(query, &packet.payload, &limits) {
            Ok(p) => p,
            Err(e) => return self.refuse_registration(&packet, &e, from),
        };
        let ep = params.ep.clone();
        // Over DTLS the endpoint name is the identity the key proved; over plain CoAP a name
        // held by a DTLS endpoint is not for the taking.
        let secure = self.ctx.transport.is_secure();
        if let Some(psk) = identity.as_deref().filter(|psk| **psk != *ep) {
            let e = RegError::BadRequest(format!(
                "over DTLS the endpoint name must be the proven identity (PSK identity or certificate CN: {psk:?}), not {ep:?}"
            ));
            return self.refuse_registration(&packet, &e, from);
        }
        let held_securely = lock(&self.ctx.status.shared)
            .endpoints
            .get(&ep)
            .is_some_and(|h| h.secure);
        if held_securely && !secure {
            return self.refuse_registration(&packet, &RegError::Taken(ep.to_string()), from);
        }
        let result = {
            let mut shared = lock(&self.ctx.status.shared);
            match shared.registry.register(params, from, now) {
                Ok((reg, replaced)) => {
                    if let Some(old) = replaced {
                        shared.unroute(old.addr, &ep);
                    }
                    shared.by_addr.insert(from, ep.clone());
                    let existing = shared.endpoints.get(&ep).map(|h| h.inbox.clone());
                    Ok((reg, existing))
                }
                Err(e) => Err(e),
            }
        };
        let (reg, existing) = match result {
            Ok(r) => r,
            Err(e) => return self.refuse_registration(&packet, &e, from),
        };
        let event = Inbound::Registered(Box::new((reg, packet)));
        let event = match existing {
            Some(inbox) => match inbox.try_send(event) {
                Ok(()) => return,
                Err(inbox::TrySendError::Full) => {
                    self.ctx
                        .status
                        .counters
                        .inbox_full
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // The task ended between the lookup and the send: start afresh.
                Err(inbox::TrySendError::Closed(event)) => event,
            },
            None => event,
        };
        self.spawn(ep, from, event);
    }

    fn spawn(&mut self, ep: Arc<str>, from: SocketAddr, first: Inbound) {
        let (tx, rx) = inbox::inbox(INBOX);
        if let Err(e) = tx.try_send(first) {
            // A fresh inbox with its receiver at hand takes its first event.
            tracing::error!(ep = %ep, "lwm2m: the endpoint's first event was not taken ({e:?})");
            return;
        }
        let generation = {
            let mut shared = lock(&self.ctx.status.shared);
            shared.next_generation += 1;
            let generation = shared.next_generation;
            shared.endpoints.insert(
                ep.clone(),
                Handle {
                    inbox: tx,
                    secure: self.ctx.transport.is_secure(),
                    generation,
                },
            );
            generation
        };
        let task = endpoint::Endpoint::new(endpoint::Setup {
            ep,
            generation,
            addr: from,
            ctx: self.ctx.clone(),
            inbox: rx,
        });
        self.tracker.spawn(task.run());
    }

    fn update(
        &mut self,
        packet: Packet,
        location: &str,
        query: &[(String, String)],
        from: SocketAddr,
    ) {
        let now = Instant::now();
        let has_objects = !packet.payload.is_empty();
        let result = {
            let mut shared = lock(&self.ctx.status.shared);
            let old = shared.registry.at(location).map(|r| r.addr);
            match shared
                .registry
                .update(location, query, &packet.payload, from, now)
            {
                Ok(reg) => {
                    let reg = reg.clone();
                    let ep = reg.params.ep.clone();
                    if let Some(old) = old {
                        shared.unroute(old, &ep);
                    }
                    shared.by_addr.insert(from, ep.clone());
                    let inbox = shared.endpoints.get(&ep).map(|h| h.inbox.clone());
                    Ok((reg, inbox))
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok((reg, Some(inbox))) => {
                let event = Inbound::Updated(Box::new((reg, packet, has_objects)));
                if inbox.try_send(event).is_err() {
                    self.ctx
                        .status
                        .counters
                        .inbox_full
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok((_, None)) => self.reply(&packet, ResponseType::NotFound, "", from),
            Err(e) => {
                tracing::info!(peer = %from, location, "lwm2m: update refused: {e}");
                self.reply(&packet, reg_code(&e), &e.to_string(), from);
            }
        }
    }

    fn deregister(&mut self, packet: Packet, location: &str, from: SocketAddr) {
        let result = {
            let mut shared = lock(&self.ctx.status.shared);
            match shared.registry.deregister(location) {
                Ok(reg) => {
                    shared.unroute(reg.addr, &reg.params.ep);
                    Ok(shared
                        .endpoints
                        .get(&reg.params.ep)
                        .map(|h| h.inbox.clone()))
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(Some(inbox)) => {
                self.ctx
                    .status
                    .counters
                    .deregistrations
                    .fetch_add(1, Ordering::Relaxed);
                if inbox
                    .try_send(Inbound::Deregistered(Box::new((packet.clone(), from))))
                    .is_err()
                {
                    self.reply(&packet, ResponseType::Deleted, "", from);
                }
            }
            Ok(None) => self.reply(&packet, ResponseType::Deleted, "", from),
            Err(e) => self.reply(&packet, reg_code(&e), &e.to_string(), from),
        }
    }

    /// Ends the endpoints whose lifetime ran out.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<(Registration, Option<inbox::Sender>)> = {
            let mut shared = lock(&self.ctx.status.shared);
            let gone = shared.registry.expire(now);
            gone.into_iter()
                .map(|r| {
                    shared.unroute(r.addr, &r.params.ep);
                    let inbox = shared.endpoints.get(&r.params.ep).map(|h| h.inbox.clone());
                    (r, inbox)
                })
                .collect()
        };
        for (reg, inbox) in expired {
            self.ctx
                .status
                .counters
                .expirations
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(ep = %reg.params.ep, peer = %reg.addr, lifetime = reg.params.lifetime, "lwm2m: registration lifetime ran out; endpoint removed");
            if let Some(inbox) = inbox {
                // A full inbox: the task sees its registration gone at its next event.
                let _ = inbox.try_send(Inbound::Expired);
            }
        }
    }

    fn refuse_registration(&mut self, packet: &Packet, e: &RegError, from: SocketAddr) {
        self.ctx
            .status
            .counters
            .registrations_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %from, code = e.code(), "lwm2m: registration refused: {e}");
        self.reply(packet, reg_code(e), &e.to_string(), from);
    }

    fn reply(&mut self, request: &Packet, code: ResponseType, diagnostic: &str, to: SocketAddr) {
        self.next_mid = self.next_mid.wrapping_add(1);
        let mut r = message::response_to(request, code, self.next_mid);
        r.payload = diagnostic.as_bytes().to_vec();
        final_block1(request, &mut r);
        self.send_reply(request, &r, to);
    }

    /// Sends a response, remembered for the request's duplicates.
    fn send_reply(&mut self, request: &Packet, r: &Packet, to: SocketAddr) {
        if let Ok(bytes) = r.to_bytes_unlimited() {
            if request.header.get_type() == MessageType::Confirmable {
                self.ctx
                    .status
                    .replied(to, request.header.message_id, bytes.clone());
            }
            self.send_bytes(&bytes, to);
        }
    }

    fn send(&self, p: &Packet, to: SocketAddr) {
        if let Ok(bytes) = p.to_bytes_unlimited() {
            self.send_bytes(&bytes, to);
        }
    }

    fn send_bytes(&self, bytes: &[u8], to: SocketAddr) {
        if self.ctx.transport.try_send(bytes, to) {
            self.ctx
                .status
                .counters
                .datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn reg_code(e: &RegError) -> ResponseType {
    match e {
        RegError::BadRequest(_) => ResponseType::BadRequest,
        RegError::Version(_) => ResponseType::PreconditionFailed,
        RegError::Taken(_) => ResponseType::Forbidden,
        RegError::NotFound(_) => ResponseType::NotFound,
        RegError::Full => ResponseType::ServiceUnavailable,
    }
}

/// The Location-Path options of a registration (`rd`, `{n}`).
fn location_options(location: &str) -> Vec<(CoapOption, Vec<u8>)> {
    location
        .split('/')
        .map(|seg| (CoapOption::LocationPath, seg.as_bytes().to_vec()))
        .collect()
}

/// The final response to a request whose body came block by block echoes its last Block1
/// (RFC 7959 section 2.3).
fn final_block1(request: &Packet, response: &mut Packet) {
    let last_block = request
        .get_first_option_as::<BlockValue>(CoapOption::Block1)
        .and_then(Result::ok)
        .filter(|b1| !b1.more);
    if let Some(b1) = last_block {
        let last = block::value(b1.num, false, b1.size_exponent);
        response.add_option(CoapOption::Block1, last.into());
    }
}
