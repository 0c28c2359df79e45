//! One CoAP client's task: its broker `Client`, its exchanges and its observations.
//!
//! Owns everything of one client id: authentication when it opens (and again on a new
//! `mqtt/connection`), the connection-mode token, deduplication of its message ids, Block1
//! reassembly, the observations with their notification queues and Block2 bodies, and the
//! retransmission of its confirmable notifications and separate responses. Acknowledges a
//! QoS 1/2 delivery to its session only once every notification of it was acknowledged by
//! the device (NON: once sent). Ends when the client is silent for `heartbeat` x 1.5, says
//! DELETE, is kicked or taken over, or the gateway stops; never outlives its table entry.

use super::{check_request, lock, send_bytes, DatagramIn, Inbound, Refused, RequestIn, Status};
use crate::broker::client::{
    Client, ClientOptions, ConnectError, Credentials, Protocol, Publication, PublishError,
    Received, SubscribeError,
};
use crate::broker::Broker;
use crate::config::{CoapConfig, CoapQos, NotifyType};
use holdfast_coap::block::{self, Assembler, Block1Answer, BlockValue};
use holdfast_coap::dedup::{Dedup, Seen, SenderDedup};
use holdfast_coap::message;
use holdfast_coap::observe::{Observation, Offer};
use holdfast_coap::params::{EXCHANGE_LIFETIME, NON_LIFETIME};
use holdfast_coap::request::{Action, Identity, Request};
use holdfast_coap::retransmit::{Due, Retransmitter};
use holdfast_coap::{CoapOption, MessageType, OptionValueU32, Packet, ResponseType};
use holdfast_mqtt::{topic, PacketId, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Confirmable messages outstanding per client (notifications and separate responses).
const MAX_OUTSTANDING: usize = 64;

/// QoS 1/2 deliveries taken from the session and not yet acknowledged by the device.
const RECEIVE_WINDOW: u16 = 32;

/// Datagrams one wake-up of the task takes from its inbox.
const BURST: usize = 16;

/// What the table shows of a client.
#[derive(Debug)]
pub(super) struct Shown {
    pub connection_mode: bool,
    pub observing: Vec<String>,
    pub last_heard: Instant,
}

impl Shown {
    pub(super) fn new() -> Self {
        Shown {
            connection_mode: false,
            observing: Vec::new(),
            last_heard: Instant::now(),
        }
    }
}

/// What a client's task starts from.
pub(super) struct Setup {
    pub client_id: String,
    pub generation: u64,
    pub addr: SocketAddr,
    pub transport: crate::dtls::Transport,
    pub broker: Arc<Broker>,
    pub config: Arc<CoapConfig>,
    pub status: Arc<Status>,
    pub view: Arc<Mutex<Shown>>,
}

/// A notification waiting in an observation's queue: the delivery it is of.
type Note = Arc<Received>;

/// What an outstanding confirmable message was for.
#[derive(Debug)]
enum Sent {
    /// A notification of the observation of `filter`.
    Notification { filter: String, note: Note },
    /// A separate response.
    Response,
    /// An empty CON to an observer that went silent (RFC 7252 4.3: it answers RST).
    Ping,
}

/// Credentials the client opened with (connectionless mode: a request from another address
/// must present them again).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presented {
    username: Option<String>,
    password: Option<String>,
}

pub(super) struct Peer {
    s: Setup,
    client: Option<Client>,
    token: Option<String>,
    presented: Presented,
    dedup: SenderDedup<(SocketAddr, u16)>,
    blocks: Assembler<String>,
    /// Observations by (mounted) topic filter.
    observations: HashMap<String, Observation<Note>>,
    /// The last large body per observed filter or read topic, for Block2 follow-ups.
    bodies: HashMap<String, Vec<u8>>,
    outstanding: Retransmitter<Sent>,
    /// Notifications still unacknowledged per QoS 1/2 delivery (packet id).
    pending_acks: HashMap<PacketId, usize>,
    next_mid: u16,
    last_heard: Instant,
    /// The PSK identity the client proved on the DTLS port: its user name for the broker.
    psk_identity: Option<String>,
    /// A ping is out to the silent observer.
    pinging: bool,
    closing: bool,
}

impl Peer {
    pub(super) fn new(s: Setup) -> Peer {
        let c = &s.config;
        Peer {
            dedup: Dedup::with_hasher(c.max_exchanges_per_peer),
            blocks: Assembler::new(c.max_body_size, 4, EXCHANGE_LIFETIME),
            observations: HashMap::new(),
            bodies: HashMap::new(),
            outstanding: Retransmitter::new(MAX_OUTSTANDING),
            pending_acks: HashMap::new(),
            next_mid: rand::random(),
            last_heard: Instant::now(),
            psk_identity: None,
            pinging: false,
            client: None,
            token: None,
            presented: Presented {
                username: None,
                password: None,
            },
            closing: false,
            s,
        }
    }

    pub(super) async fn run(mut self, first: Box<RequestIn>, mut inbox: mpsc::Receiver<Inbound>) {
        self.inbound(Inbound::Request(first)).await;
        let idle_limit = self.s.config.heartbeat.mul_f64(1.5);
        // One timer for the task's life: re-armed only when it fired or something is due
        // sooner (firing early is harmless: what is due is checked when it fires), not on
        // every request that moves the idle deadline.
        let (_, wake_at) = self.deadlines(idle_limit);
        let timer = tokio::time::sleep_until(wake_at.into());
        tokio::pin!(timer);
        // What one wake-up takes from the inbox: a burst is handled in one go.
        let mut burst = Vec::new();
        while !self.closing && self.client.is_some() {
            let (idle_at, wake_at) = self.deadlines(idle_limit);
            let wake_at = tokio::time::Instant::from_std(wake_at);
            if timer.is_elapsed() || wake_at < timer.deadline() {
                timer.as_mut().reset(wake_at);
            }
            let observing = !self.observations.is_empty();
            let Some(client) = self.client.as_mut() else {
                break;
            };
            // Deliveries while observing; otherwise only whether it was kicked or taken over
            // (the two share a wake-up, so one future waits on either).
            let from_broker = async {
                if observing {
                    client.recv().await
                } else {
                    client.closing().await;
                    None
                }
            };
            tokio::select! {
                n = inbox.recv_many(&mut burst, BURST) => {
                    if n == 0 {
                        break;
                    }
                    for ev in burst.drain(..) {
                        if self.closing || self.client.is_none() {
                            break;
                        }
                        self.inbound(ev).await;
                    }
                    burst.clear();
                },
                m = from_broker => match m {
                    Some(m) => self.deliver(m).await,
                    None => break,
                },
                () = &mut timer => {
                    if Instant::now() >= idle_at && !self.pinging {
                        if self.observations.is_empty() {
                            tracing::info!(client_id = %self.s.client_id, peer = %self.s.addr, "coap: client silent for 1.5 x heartbeat; closed");
                            break;
                        }
                        // An observer need not talk: ask whether it is still there.
                        self.ping().await;
                    }
                    self.retransmit().await;
                }
                _ = self.s.broker.shutdown.cancelled() => break,
            }
        }
        self.finish();
    }

    /// When the client counts as silent, and when the task must wake next (that, or the
    /// next retransmission).
    fn deadlines(&self, idle_limit: std::time::Duration) -> (Instant, Instant) {
        let idle_at = if self.pinging {
            // The ping's retransmissions decide.
            self.last_heard + idle_limit * 64
        } else {
            self.last_heard + idle_limit
        };
        let wake_at = self
            .outstanding
            .next_deadline()
            .map_or(idle_at, |d| d.min(idle_at));
        (idle_at, wake_at)
    }

    fn finish(&mut self) {
        self.s.status.remove(&self.s.client_id, self.s.generation);
        // Deliveries the device did not acknowledge stay unacknowledged: the session (clean,
        // no expiry) ends with the client.
        self.observations.clear();
        if let Some(client) = self.client.take() {
            client.disconnect();
        }
    }

    async fn inbound(&mut self, ev: Inbound) {
        match ev {
            Inbound::Settle { mid, reset } => self.settle(mid, reset).await,
            Inbound::Datagram(d) => {
                let DatagramIn {
                    bytes,
                    from,
                    psk_identity,
                } = *d;
                let packet = match message::decode(&bytes, self.s.config.max_message_size) {
                    Ok(p) => p,
                    Err(e) => {
                        // The raw read found a well-formed request; the decoder disagrees.
                        self.s.status.bad(&e, from);
                        if let Some((MessageType::Confirmable, mid)) = message::peek_header(&bytes)
                        {
                            let rst = self.encode(&message::reset(mid), from);
                            self.send_bytes(&rst, from).await;
                        }
                        return;
                    }
                };
                drop(bytes);
                match check_request(&self.s.status, &packet, from) {
                    Ok(request) => {
                        let r = RequestIn {
                            packet,
                            request,
                            from,
                            psk_identity,
                        };
                        self.accept(r).await;
                    }
                    Err(Refused::Reset) => {
                        let rst = self.encode(&message::reset(packet.header.message_id), from);
                        self.send_bytes(&rst, from).await;
                    }
                    Err(Refused::Answer(code, diagnostic)) => {
                        self.refuse(&packet, code, diagnostic.as_bytes(), from)
                            .await;
                    }
                }
            }
            Inbound::Request(r) => self.accept(*r).await,
        }
    }

    /// A decoded and checked request for this client.
    async fn accept(&mut self, r: RequestIn) {
        let RequestIn {
            packet,
            request,
            from,
            psk_identity,
        } = r;
        if self.client.is_none() {
            self.psk_identity = psk_identity.clone();
        } else if psk_identity != self.psk_identity {
            // The DTLS port proved another identity for this client id.
            self.refuse(
                &packet,
                ResponseType::Unauthorized,
                b"another DTLS identity holds this client id",
                from,
            )
            .await;
            return;
        }
        self.s
            .status
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        self.heard();
        self.request(packet, request, from).await;
    }

    /// Answers `packet` with `code` and a diagnostic without processing it (unless its
    /// No-Response declines that class: then a CON gets its empty ACK and a NON nothing).
    async fn refuse(&mut self, packet: &Packet, code: ResponseType, why: &[u8], to: SocketAddr) {
        let next_mid = self.mid();
        if let Some(r) = message::answer(packet, code, why.to_vec(), Vec::new(), next_mid) {
            let bytes = self.encode(&r, to);
            self.send_bytes(&bytes, to).await;
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
        lock(&self.s.view).last_heard = self.last_heard;
        self.pinging = false;
    }

    /// An admitted request came from `from`: notifications and retransmissions go there from
    /// now on (a NAT may have changed the port).
    fn relocate(&mut self, from: SocketAddr) {
        if from != self.s.addr {
            self.s.addr = from;
            self.s
                .status
                .moved(&self.s.client_id, self.s.generation, from);
        }
    }

    async fn request(&mut self, packet: Packet, request: Request, from: SocketAddr) {
        let mid = packet.header.message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let lifetime = if confirmable {
            EXCHANGE_LIFETIME
        } else {
            NON_LIFETIME
        };
        match self.dedup.check((from, mid), lifetime, Instant::now()) {
            Seen::New => {}
            Seen::InProgress => {
                self.s
                    .status
                    .counters
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Seen::Replied(bytes) => {
                self.s
                    .status
                    .counters
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                self.send_bytes(&bytes, from).await;
                return;
            }
        }
        let reply = self.handle(&packet, request, from).await;
        let Some(code) = reply.code else {
            return; // answered already (a separate response)
        };
        // No-Response (RFC 7967) may leave a CON only its empty ACK and a NON nothing.
        let next_mid = self.mid();
        let Some(r) = message::answer(&packet, code, reply.payload, reply.options, next_mid) else {
            return;
        };
        let bytes = self.encode(&r, from);
        if confirmable {
            self.dedup.replied(&(from, mid), bytes.clone());
        }
        self.send_bytes(&bytes, from).await;
    }

    /// Handles one new request; `None` as the code when it was answered separately.
    async fn handle(&mut self, packet: &Packet, request: Request, from: SocketAddr) -> Reply {
        if request.action == Action::Connect {
            return self.connect(&request.identity, from).await;
        }
        if let Err(why) = self.admit(&request.identity, from).await {
            tracing::info!(peer = %from, client_id = %crate::broker::short(&self.s.client_id), "coap: request refused: {why}");
            return Reply::plain(ResponseType::Unauthorized, &why);
        }
        self.relocate(from);
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        match request.action {
            Action::Connect => Reply::plain(ResponseType::BadRequest, "already handled"),
            Action::Heartbeat => Reply::plain(ResponseType::Changed, ""),
            Action::Disconnect => {
                self.closing = true;
                Reply::plain(ResponseType::Deleted, "")
            }
            Action::Publish {
                topic,
                qos,
                retain,
                expiry,
            } => {
                let mut body = packet.payload.clone();
                if let Some(Ok(b1)) = packet.get_first_option_as::<BlockValue>(CoapOption::Block1) {
                    let key = block::transfer_key(packet);
                    let max_block = self.s.config.max_block_size;
                    match self
                        .blocks
                        .answer(key, &b1, &packet.payload, max_block, Instant::now())
                    {
                        Block1Answer::Continue(echo) => {
                            return Reply::with(
                                ResponseType::Continue,
                                Vec::new(),
                                vec![(CoapOption::Block1, echo.into())],
                            );
                        }
                        Block1Answer::Complete(all) => body = all,
                        Block1Answer::Refused { code, why, size1 } => {
                            let size1 =
                                size1.map(|max| (CoapOption::Size1, OptionValueU32(max).into()));
                            return Reply::with(
                                code,
                                why.into_bytes(),
                                size1.into_iter().collect(),
                            );
                        }
                    }
                }
                let qos = qos.unwrap_or(match self.s.config.publish_qos {
                    CoapQos::Coap => u8::from(confirmable),
                    CoapQos::Fixed(q) => q,
                });
                let mut p = Publication::new(self.mount(&topic), body, qos_of(qos));
                p.retain = retain;
                p.properties.message_expiry_interval = expiry;
                let code = self.publish(p, packet, from).await;
                Reply {
                    code,
                    payload: Vec::new(),
                    options: Vec::new(),
                }
            }
            Action::Subscribe { filter, qos } => {
                let qos = qos.unwrap_or(match self.s.config.subscribe_qos {
                    CoapQos::Coap => u8::from(confirmable),
                    CoapQos::Fixed(q) => q,
                });
                self.subscribe(self.mount(&filter), qos_of(qos), packet.get_token())
            }
            Action::Unsubscribe { filter } => {
                let filter = self.mount(&filter);
                self.unobserve(&filter);
                Reply::plain(ResponseType::Content, "")
            }
            Action::Read { topic } => self.read(self.mount(&topic), packet),
        }
    }

    /// Opens (or re-opens, with new credentials) the broker client: connection mode.
    async fn connect(&mut self, identity: &Identity, from: SocketAddr) -> Reply {
        match self.open(identity, from).await {
            Ok(()) => {
                let token = format!("{:032x}", rand::random::<u128>());
                self.token = Some(token.clone());
                self.relocate(from);
                lock(&self.s.view).connection_mode = true;
                Reply::with(ResponseType::Created, token.into_bytes(), Vec::new())
            }
            Err((code, why)) => {
                if self.client.is_none() {
                    self.closing = true;
                }
                Reply::with(code, why.into_bytes(), Vec::new())
            }
        }
    }

    /// Checks that a request may use this client: the token in connection mode; in
    /// connectionless mode the first request opens the client, and one from another address
    /// must present the same credentials.
    async fn admit(&mut self, identity: &Identity, from: SocketAddr) -> Result<(), String> {
        if let Some(token) = &self.token {
            return match &identity.token {
                Some(t) if constant_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
                Some(_) => Err("wrong token".into()),
                None => Err("token required (connection mode)".into()),
            };
        }
        if self.client.is_none() {
            let opened = self.open(identity, from).await;
            return opened.map_err(|(_, why)| {
                self.closing = true;
                why
            });
        }
        let presented = Presented {
            username: identity.username.clone(),
            password: identity.password.clone(),
        };
        if from != self.s.addr && presented != self.presented {
            return Err("another address must present the client's credentials".into());
        }
        Ok(())
    }

    async fn open(
        &mut self,
        identity: &Identity,
        from: SocketAddr,
    ) -> Result<(), (ResponseType, String)> {
        let mut opts = ClientOptions::new(self.s.client_id.clone(), Protocol::Coap, from);
        opts.credentials = match &self.psk_identity {
            // The DTLS handshake proved the identity with its key, from the operator's PSK
            // file: that is the user name the ACL sees.
            Some(psk) => Credentials::Gateway {
                username: Some(psk.clone()),
            },
            None => Credentials::Device {
                username: identity.username.clone(),
                password: identity.password.as_ref().map(|p| p.as_bytes().to_vec()),
            },
        };
        opts.receive_window = RECEIVE_WINDOW;
        match Client::connect(&self.s.broker, opts).await {
            Ok(client) => {
                // A new connection replaces the old client and its observations.
                self.observations.clear();
                self.pending_acks.clear();
                lock(&self.s.view).observing.clear();
                if let Some(old) = self.client.replace(client) {
                    drop(old);
                }
                self.presented = Presented {
                    username: identity.username.clone(),
                    password: identity.password.clone(),
                };
                Ok(())
            }
            Err(e) => {
                let code = match e {
                    ConnectError::Busy
                    | ConnectError::TooManySessions
                    | ConnectError::ShuttingDown => ResponseType::ServiceUnavailable,
                    ConnectError::InvalidClientId => ResponseType::BadRequest,
                    _ => ResponseType::Unauthorized,
                };
                Err((code, e.to_string()))
            }
        }
    }

    /// Publishes, answering 2.04 once the broker took it (durable where a bridge forwards
    /// it). A CON whose publish takes longer than `separate_response_after` gets an empty
    /// ACK first and the response separately.
    async fn publish(
        &mut self,
        p: Publication,
        packet: &Packet,
        from: SocketAddr,
    ) -> Option<ResponseType> {
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let after = self.s.config.separate_response_after;
        let Some(client) = self.client.as_mut() else {
            return Some(ResponseType::ServiceUnavailable);
        };
        let mut fut = Box::pin(client.publish(p));
        let result = tokio::select! {
            r = &mut fut => r,
            _ = tokio::time::sleep(after), if confirmable => {
                let ack = message::empty_ack(packet.header.message_id);
                let bytes = ack.to_bytes_unlimited().unwrap_or_default();
                self.dedup.replied(&(from, packet.header.message_id), bytes.clone());
                send_bytes(&self.s.transport, &self.s.status, &bytes, from);
                let r = fut.await;
                let code = publish_code(&r, &self.s.client_id, from);
                if r.is_ok() {
                    self.s.status.counters.published.fetch_add(1, Ordering::Relaxed);
                }
                if message::response_declined(packet, code) {
                    return None;
                }
                let mid = self.mid();
                let response = message::separate_response(packet.get_token(), code, mid);
                let bytes = self.encode(&response, from);
                self.send_bytes(&bytes, from).await;
                let _ = self.outstanding.start(mid, bytes, Sent::Response, rand::random(), Instant::now());
                return None;
            }
        };
        drop(fut);
        if result.is_ok() {
            self.s
                .status
                .counters
                .published
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(publish_code(&result, &self.s.client_id, from))
    }

    fn subscribe(&mut self, filter: String, qos: QoS, token: &[u8]) -> Reply {
        if !self.observations.contains_key(&filter)
            && self.observations.len() >= self.s.config.max_observers_per_peer
        {
            return Reply::plain(
                ResponseType::ServiceUnavailable,
                "max_observers_per_peer reached",
            );
        }
        let Some(client) = self.client.as_mut() else {
            return Reply::plain(ResponseType::ServiceUnavailable, "not connected");
        };
        let result = client
            .subscribe(&[(filter.as_str(), qos)])
            .pop()
            .unwrap_or(Err(SubscribeError::Closed));
        match result {
            Ok(_) => {
                let queue = self.s.config.notify_queue;
                let o = self
                    .observations
                    .entry(filter.clone())
                    .or_insert_with(|| Observation::new(token.to_vec(), queue));
                let mut replaced = Vec::new();
                if o.token() != token {
                    // Re-registered with a new token: a new observation of the same filter.
                    replaced = o.drain().collect();
                    *o = Observation::new(token.to_vec(), queue);
                }
                let seq = o.next_seq();
                for note in replaced {
                    self.note_done(&note);
                }
                let mut shown = lock(&self.s.view);
                if !shown.observing.contains(&filter) {
                    shown.observing.push(filter);
                }
                Reply::with(
                    ResponseType::Content,
                    Vec::new(),
                    vec![(CoapOption::Observe, OptionValueU32(seq).into())],
                )
            }
            Err(e) => {
                let code = subscribe_code(e);
                Reply::plain(code, &e.to_string())
            }
        }
    }

    fn unobserve(&mut self, filter: &str) {
        if let Some(mut o) = self.observations.remove(filter) {
            let notes: Vec<Note> = o.drain().collect();
            for note in notes {
                self.note_done(&note);
            }
        }
        self.bodies.remove(filter);
        lock(&self.s.view).observing.retain(|f| f != filter);
        if let Some(client) = self.client.as_mut() {
            client.unsubscribe(&[filter]);
        }
    }

    fn read(&mut self, topic: String, packet: &Packet) -> Reply {
        let block2 = packet
            .get_first_option_as::<BlockValue>(CoapOption::Block2)
            .and_then(Result::ok);
        let szx_max = block::szx_for(self.s.config.max_block_size);
        // A later block of a body sent before (a large notification or read).
        if let Some(b2) = block2.as_ref().filter(|b| b.num > 0) {
            let szx = b2.size_exponent.min(szx_max);
            return match self
                .bodies
                .get(&topic)
                .and_then(|b| block::slice(b, b2.num, szx))
            {
                Some((chunk, more)) => Reply::with(
                    ResponseType::Content,
                    chunk.to_vec(),
                    vec![(CoapOption::Block2, block::value(b2.num, more, szx).into())],
                ),
                None => Reply::plain(ResponseType::BadOption, "no such block"),
            };
        }
        let Some(client) = self.client.as_mut() else {
            return Reply::plain(ResponseType::ServiceUnavailable, "not connected");
        };
        match client.read_retained(&topic) {
            Ok(Some(payload)) => {
                let szx = block2.map_or(szx_max, |b| b.size_exponent.min(szx_max));
                self.first_block(topic, payload.to_vec(), szx)
            }
            Ok(None) => Reply::plain(ResponseType::NotFound, "no retained message"),
            Err(e) => Reply::plain(subscribe_code(e), &e.to_string()),
        }
    }

    /// A body as the response payload, or its first Block2 block when it is larger than the
    /// block size (the rest is kept for the client's follow-up GETs).
    fn first_block(&mut self, key: String, body: Vec<u8>, szx: u8) -> Reply {
        let size = 1usize << (szx + 4);
        if body.len() <= size {
            return Reply::with(ResponseType::Content, body, Vec::new());
        }
        let chunk = body[..size].to_vec();
        let size2 = OptionValueU32(u32::try_from(body.len()).unwrap_or(u32::MAX)).into();
        // Bounded: one body per observation, and a few reads.
        let cap = self.s.config.max_observers_per_peer + 4;
        if !self.bodies.contains_key(&key) && self.bodies.len() >= cap {
            if let Some(old) = self.bodies.keys().next().cloned() {
                self.bodies.remove(&old);
            }
        }
        self.bodies.insert(key, body);
        Reply::with(
            ResponseType::Content,
            chunk,
            vec![
                (CoapOption::Block2, block::value(0, true, szx).into()),
                (CoapOption::Size2, size2),
            ],
        )
    }

    /// A message for this client: a notification for each observation it matches.
    async fn deliver(&mut self, m: Received) {
        let note: Note = Arc::new(m);
        let filters: Vec<String> = self
            .observations
            .keys()
            .filter(|f| topic::matches(f, &note.message.topic))
            .cloned()
            .collect();
        if note.qos != QoS::AtMostOnce {
            self.pending_acks.insert(note.packet_id, filters.len());
        }
        if filters.is_empty() {
            self.note_done(&note);
            return;
        }
        for filter in filters {
            let offer = match self.observations.get_mut(&filter) {
                Some(o) => o.offer(note.clone()),
                None => continue,
            };
            match offer {
                Offer::SendNow(n) => self.notify(&filter, n).await,
                Offer::Queued => {}
                Offer::Dropped(old) => {
                    self.s
                        .status
                        .counters
                        .notifications_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %self.s.client_id, filter, "coap: notification queue full; oldest dropped");
                    self.note_done(&old);
                }
            }
        }
    }

    /// Sends one notification of the observation of `filter`, then (NON) the queued ones.
    async fn notify(&mut self, filter: &str, mut note: Note) {
        loop {
            let confirmable = match self.s.config.notify_type {
                NotifyType::Non => false,
                NotifyType::Con => true,
                NotifyType::Qos => note.qos != QoS::AtMostOnce,
            };
            let mid = self.mid();
            let Some(o) = self.observations.get_mut(filter) else {
                self.note_done(&note);
                return;
            };
            let seq = o.next_seq();
            let mut p = Packet::new();
            p.header.set_type(if confirmable {
                MessageType::Confirmable
            } else {
                MessageType::NonConfirmable
            });
            p.header.code = holdfast_coap::MessageClass::Response(ResponseType::Content);
            p.header.message_id = mid;
            p.set_token(o.token().to_vec());
            p.add_option(CoapOption::Observe, OptionValueU32(seq).into());
            let szx = block::szx_for(self.s.config.max_block_size);
            let first = self.first_block(filter.to_owned(), note.message.payload.to_vec(), szx);
            p.payload = first.payload;
            for (option, value) in first.options {
                p.add_option(option, value);
            }
            let to = self.s.addr;
            let bytes = self.encode(&p, to);
            self.send_bytes(&bytes, to).await;
            self.s
                .status
                .counters
                .notifications
                .fetch_add(1, Ordering::Relaxed);
            if confirmable {
                let sent = Sent::Notification {
                    filter: filter.to_owned(),
                    note,
                };
                if let Some(o) = self.observations.get_mut(filter) {
                    o.sent_confirmable(mid);
                }
                if let Err(_full) =
                    self.outstanding
                        .start(mid, bytes, sent, rand::random(), Instant::now())
                {
                    tracing::debug!(client_id = %self.s.client_id, "coap: too many confirmable messages outstanding");
                }
                return;
            }
            self.note_done(&note);
            match self
                .observations
                .get_mut(filter)
                .and_then(Observation::next_ready)
            {
                Some(next) => note = next,
                None => return,
            }
        }
    }

    /// An ACK or RST from the client.
    async fn settle(&mut self, mid: u16, reset: bool) {
        self.heard();
        match self.outstanding.settle(mid) {
            Some(Sent::Notification { filter, note }) => {
                self.note_done(&note);
                if reset {
                    // RST to a notification: the client is no longer interested (RFC 7641 3.6).
                    self.unobserve(&filter);
                    return;
                }
                let next = self
                    .observations
                    .get_mut(&filter)
                    .and_then(Observation::settled);
                if let Some(next) = next {
                    self.notify(&filter, next).await;
                }
            }
            Some(Sent::Response | Sent::Ping) | None => {}
        }
    }

    /// Sends an empty CON to a silent observer; its RST (or ACK) counts as hearing from it,
    /// and no answer after the retransmissions closes the client.
    async fn ping(&mut self) {
        let mid = self.mid();
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = mid;
        let to = self.s.addr;
        let bytes = self.encode(&p, to);
        self.send_bytes(&bytes, to).await;
        if self
            .outstanding
            .start(mid, bytes, Sent::Ping, rand::random(), Instant::now())
            .is_ok()
        {
            self.pinging = true;
        }
    }

    async fn retransmit(&mut self) {
        for due in self.outstanding.due(Instant::now()) {
            match due {
                Due::Resend(bytes) => {
                    self.s
                        .status
                        .counters
                        .retransmissions
                        .fetch_add(1, Ordering::Relaxed);
                    let to = self.s.addr;
                    self.send_bytes(&bytes, to).await;
                }
                Due::GaveUp(sent) => {
                    self.s
                        .status
                        .counters
                        .timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    if let Sent::Notification { filter, note } = sent {
                        tracing::info!(client_id = %self.s.client_id, peer = %self.s.addr, filter, "coap: notification not acknowledged after 4 retransmissions; observation ended");
                        self.note_done(&note);
                        self.unobserve(&filter);
                    }
                }
            }
        }
    }

    /// One notification of `note` is finished (acknowledged, sent NON, or dropped): once all
    /// are, a QoS 1/2 delivery is acknowledged to the session.
    fn note_done(&mut self, note: &Note) {
        if note.qos == QoS::AtMostOnce {
            return;
        }
        let left = match self.pending_acks.get_mut(&note.packet_id) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.pending_acks.remove(&note.packet_id);
            if let Some(client) = self.client.as_mut() {
                client.ack(note);
            }
        }
    }

    /// `topic` under the mountpoint (`%c` client id, `%u` user name).
    fn mount(&self, topic: &str) -> String {
        let m = &self.s.config.mountpoint;
        if m.is_empty() {
            return topic.to_owned();
        }
        let user = self
            .client
            .as_ref()
            .and_then(|c| c.username())
            .unwrap_or("");
        let prefix = m.replace("%c", &self.s.client_id).replace("%u", user);
        format!("{prefix}{topic}")
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    fn encode(&self, p: &Packet, to: SocketAddr) -> Vec<u8> {
        match p.to_bytes_unlimited() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = %to, "coap: cannot encode a response: {e}");
                Vec::new()
            }
        }
    }

    async fn send_bytes(&self, bytes: &[u8], to: SocketAddr) {
        if bytes.is_empty() {
            return;
        }
        if self.s.transport.send(bytes, to).await {
            self.s
                .status
                .counters
                .datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!(peer = %to, "coap: send failed");
        }
    }
}

/// A response to send: its code (`None`: answered already, separately), payload and
/// options.
struct Reply {
    code: Option<ResponseType>,
    payload: Vec<u8>,
    options: Vec<(CoapOption, Vec<u8>)>,
}

impl Reply {
    fn with(code: ResponseType, payload: Vec<u8>, options: Vec<(CoapOption, Vec<u8>)>) -> Reply {
        Reply {
            code: Some(code),
            payload,
            options,
        }
    }

    /// A code with a diagnostic text (RFC 7252 5.5.2).
    fn plain(code: ResponseType, text: &str) -> Reply {
        Reply::with(code, text.as_bytes().to_vec(), Vec::new())
    }
}

fn qos_of(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

fn publish_code(
    r: &Result<crate::broker::client::Published, PublishError>,
    client_id: &str,
    from: SocketAddr,
) -> ResponseType {
    match r {
        Ok(_) => ResponseType::Changed,
        Err(e) => {
            tracing::info!(peer = %from, client_id = %crate::broker::short(client_id), "coap: publish refused: {e}");
            match e {
                PublishError::NotAuthorized => ResponseType::Forbidden,
                PublishError::InvalidTopic | PublishError::RetainNotAvailable => {
                    ResponseType::BadRequest
                }
                PublishError::BridgeQueueFull
                | PublishError::BridgeQueueFailed
                | PublishError::Closed => ResponseType::ServiceUnavailable,
            }
        }
    }
}

fn subscribe_code(e: SubscribeError) -> ResponseType {
    match e {
        SubscribeError::NotAuthorized => ResponseType::Forbidden,
        SubscribeError::InvalidFilter => ResponseType::BadRequest,
        _ => ResponseType::ServiceUnavailable,
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
