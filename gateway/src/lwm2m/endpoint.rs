//! One registered LwM2M endpoint's task: its broker `Client` (client id = endpoint name), its
//! command queue, the one request outstanding to the device, and its observations.
//!
//! Owns the conversation with one device: answering its Register / Update / De-register once
//! the broker accepted it, publishing `register` / `update` on `up/resp`, turning commands
//! from `dn` into CoAP requests (one confirmable request at a time, retransmitted; in queue
//! mode only while the device listens, `qmode_time_window` after it last talked, the rest
//! held in a bounded queue), and the device's answers into responses on `up/resp` and
//! notifications on `up/notify`. A body larger than a block goes block by block (RFC 7959): a
//! Write's payload (a firmware package) in Block1 requests, each after the device's 2.31
//! Continue; an answer or notification the device sends in Block2 blocks is fetched to its end
//! (bounded by `max_body_size`) before anything is published. Ends when the device
//! de-registers or expires, is kicked or taken over, or the gateway stops; its registration
//! goes with it.

use super::{location_options, Inbound, Status};
use crate::broker::client::{Client, ClientOptions, Credentials, Protocol, Publication, Received};
use crate::broker::Broker;
use crate::config::{AutoObserve, Lwm2mConfig, UpdatePublish};
use holdfast_coap::block::{self, BlockError, BlockValue, Download, Next, Upload};
use holdfast_coap::message;
use holdfast_coap::retransmit::{Due, Retransmitter};
use holdfast_coap::{
    CoapOption, MessageClass, MessageType, OptionValueU16, OptionValueU32, Packet, RequestType,
    ResponseType,
};
use holdfast_lwm2m::command::{self, Command, DeviceRequest, Method};
use holdfast_lwm2m::link;
use holdfast_lwm2m::model::Model;
use holdfast_lwm2m::registry::{registration_json, Registration};
use holdfast_mqtt::QoS;
use serde_json::{json, Map, Value as Json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every endpoint of one socket shares (one reference each).
pub(super) struct Context {
    pub(super) transport: crate::dtls::Transport,
    pub(super) broker: Arc<Broker>,
    pub(super) config: Arc<Lwm2mConfig>,
    pub(super) model: Arc<Model>,
    pub(super) status: Arc<Status>,
}

/// What an endpoint's task starts from.
pub(super) struct Setup {
    pub(super) ep: Arc<str>,
    pub(super) generation: u64,
    pub(super) addr: SocketAddr,
    pub(super) ctx: Arc<Context>,
    /// What the server task hands it; it tells the server back when the device was heard.
    pub(super) inbox: super::inbox::Receiver,
}

/// How long a device that acknowledged a request (empty ACK) has for its separate response
/// before the command is answered `coap_timeout`.
const SEPARATE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the one request outstanding to the device is for.
enum Job {
    /// A command from `dn`.
    Command(Command),
    /// The rest of a notification whose first block came (RFC 7959 section 2.6).
    Rest(Box<Rest>),
}

impl Job {
    fn request(&self) -> &DeviceRequest {
        match self {
            Job::Command(c) => &c.request,
            Job::Rest(r) => &r.request,
        }
    }
}

/// The rest of a block-wise notification, fetched with GETs of the observed path.
struct Rest {
    /// The observation's token.
    observation: u64,
    /// The notification's Observe sequence number.
    seq: u32,
    request: DeviceRequest,
    /// The first block, taken.
    download: Option<Download>,
    /// The block to ask for first.
    next: BlockValue,
}

/// The request outstanding to the device: one CoAP exchange at a time, several for a body
/// that goes block by block (each with its own message id and token).
struct Pending {
    job: Job,
    mid: u16,
    /// The current exchange's token.
    token: Vec<u8>,
    /// The first exchange's token: an observation's.
    first_token: Vec<u8>,
    /// Set by an empty ACK: when the separate response is due.
    separate_deadline: Option<Instant>,
    /// Block1: the request's payload, larger than a block, sent block by block.
    upload: Option<Upload>,
    /// Block2: the answer's body, taken block by block.
    download: Option<Download>,
    /// Block2: the block the current exchange asks for.
    block2: Option<BlockValue>,
    /// The current exchange's retransmissions (here, not in the endpoint: an idle endpoint
    /// keeps none).
    outstanding: Retransmitter<()>,
}

/// An observation the device accepted: its path and the command's keys (as compact JSON
/// text: thousands of endpoints keep one each), for its notifications; one allocation.
struct Observed {
    /// The path, then the keys.
    text: Box<str>,
    /// Where the path ends in `text`.
    path_len: usize,
}

impl Observed {
    fn new(cmd: &Command) -> Observed {
        Observed {
            text: format!("{}{}", cmd.req_path, cmd.echo.as_str()).into(),
            path_len: cmd.req_path.len(),
        }
    }

    /// The observed path (`reqPath`).
    fn req_path(&self) -> &str {
        self.text.get(..self.path_len).unwrap_or_default()
    }

    /// The command's keys, echoed in each notification.
    fn echo(&self) -> Map<String, Json> {
        let keys = self.text.get(self.path_len..).unwrap_or_default();
        serde_json::from_str(keys).unwrap_or_default()
    }
}

/// What the task keeps of its registration (the registry holds the rest): that it is live,
/// whether it is in queue mode, and its alternate path when not `/`; as fields of the
/// endpoint (the flags fit beside its others).
struct Registered {
    queue_mode: bool,
    alternate: Option<Box<str>>,
}

impl Registered {
    fn of(reg: &Registration) -> Registered {
        let alternate = reg.params.objects().alternate_path;
        Registered {
            queue_mode: reg.params.queue_mode(),
            alternate: (alternate != "/").then(|| alternate.into()),
        }
    }
}

/// What woke an endpoint's task.
enum Wake {
    Inbound(Inbound),
    Command(Received),
    Timer,
}

pub(super) struct Endpoint {
    s: Setup,
    client: Option<Client>,
    /// Registered: set from `Registered`, with `queue_mode` and `alternate`.
    registered: bool,
    queue_mode: bool,
    alternate: Option<Box<str>>,
    queue: VecDeque<Job>,
    /// Boxed: only while a command is outstanding (an idle endpoint's task stays small).
    pending: Option<Box<Pending>>,
    /// Publications waiting for a full subscriber queue to make room (see `publish`).
    #[allow(
        clippy::box_collection,
        reason = "8 bytes in every endpoint's task instead of 32; rarely there"
    )]
    outbox: Option<Box<VecDeque<Publication>>>,
    /// By token (the server's are 8 bytes); an endpoint has few, so a list.
    observations: Vec<(u64, Observed)>,
    next_mid: u16,
    last_uplink: Instant,
    closing: bool,
    /// Set only while something is due (see `arm_timer`).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whose turn it is to be polled first: the inbox or the broker client.
    inbox_first: bool,
}

impl Endpoint {
    pub(super) fn new(s: Setup) -> Endpoint {
        Endpoint {
            client: None,
            registered: false,
            queue_mode: false,
            alternate: None,
            queue: VecDeque::new(),
            pending: None,
            outbox: None,
            observations: Vec::new(),
            next_mid: rand::random(),
            last_uplink: Instant::now(),
            closing: false,
            timer: None,
            inbox_first: false,
            s,
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice (see below)"
    )]
    pub(super) fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        // The handlers' futures (connect, publish ...) are boxed while they run, and the wait
        // between events is one hand-written poll of the inbox, the broker client and (only
        // while a request is outstanding) a boxed timer: thousands of endpoints wait at once,
        // each task small. The gateway's shutdown closes the broker client, which ends it.
        // An async block, not an async fn: an async fn's future keeps its arguments twice
        // (as arguments and as the locals they are moved into), which doubled each task. The
        // first event (the registration) waits in the inbox, not in the future.
        async move {
            while !self.closing {
                if self.outbox.is_some() {
                    Box::pin(self.drain_outbox()).await;
                }
                self.arm_timer();
                let next = std::future::poll_fn(|cx| self.poll_next(cx)).await;
                match next {
                    Some(Wake::Inbound(ev)) => Box::pin(self.inbound(ev)).await,
                    Some(Wake::Command(m)) => Box::pin(self.command(m)).await,
                    Some(Wake::Timer) => Box::pin(self.retransmit()).await,
                    None => break,
                }
            }
            if self.outbox.is_some() {
                // What the last event published (a de-registration, an expiry) still goes out.
                Box::pin(self.drain_outbox()).await;
            }
            self.s.ctx.status.remove(&self.s.ep, self.s.generation);
            if let Some(client) = self.client.take() {
                client.disconnect();
            }
        }
    }

    /// The timer runs only while something is due: a retransmission, a separate response.
    fn arm_timer(&mut self) {
        let due = [
            self.pending
                .as_ref()
                .and_then(|p| p.outstanding.next_deadline()),
            self.pending.as_ref().and_then(|p| p.separate_deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        match (due, self.timer.as_mut()) {
            (None, _) => self.timer = None,
            (Some(due), Some(timer)) => {
                if timer.deadline() != due.into() {
                    timer.as_mut().reset(due.into());
                }
            }
            (Some(due), None) => self.timer = Some(Box::pin(tokio::time::sleep_until(due.into()))),
        }
    }

    /// The next thing to do: an event from the server task, a command from the broker, the
    /// timer; `None` once the inbox or the broker client is closed. Takes turns between the
    /// inbox and the broker so that neither starves the other.
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Wake>> {
        use std::future::Future as _;
        use std::task::Poll;
        self.inbox_first = !self.inbox_first;
        let Some(client) = self.client.as_mut() else {
            // Not connected yet: the first event is the registration.
            return self.s.inbox.poll_recv(cx).map(|ev| ev.map(Wake::Inbound));
        };
        for inbox_turn in [self.inbox_first, !self.inbox_first] {
            let ready = if inbox_turn {
                self.s.inbox.poll_recv(cx).map(|ev| ev.map(Wake::Inbound))
            } else {
                client.poll_recv(cx).map(|m| m.map(Wake::Command))
            };
            if ready.is_ready() {
                return ready;
            }
        }
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Wake::Timer)),
            _ => Poll::Pending,
        }
    }

    async fn inbound(&mut self, ev: Inbound) {
        match ev {
            Inbound::Registered(event) => {
                let (reg, packet) = *event;
                self.registered(reg, &packet).await;
            }
            Inbound::Updated(event) => {
                let (reg, packet, has_objects) = *event;
                self.heard(true);
                self.s.addr = reg.addr;
                self.reply(&packet, ResponseType::Changed, &[], reg.addr);
                self.s
                    .ctx
                    .status
                    .counters
                    .updates
                    .fetch_add(1, Ordering::Relaxed);
                let publish = match self.s.ctx.config.update_msg_publish_condition {
                    UpdatePublish::Always => true,
                    UpdatePublish::ContainsObjectList => has_objects,
                };
                if publish {
                    self.publish("up/resp", registration_json("update", &reg));
                }
                self.set_registered(Some(Registered::of(&reg)));
                self.flush().await;
            }
            Inbound::Deregistered(event) => {
                let (packet, from) = *event;
                self.reply(&packet, ResponseType::Deleted, &[], from);
                tracing::info!(ep = %self.s.ep, peer = %from, "lwm2m: de-registered");
                self.set_registered(None);
                self.closing = true;
            }
            Inbound::Expired => {
                self.set_registered(None);
                self.closing = true;
            }
            Inbound::FromDevice(packet) => {
                self.heard(true);
                self.device_packet(*packet).await;
            }
        }
    }

    fn set_registered(&mut self, reg: Option<Registered>) {
        self.registered = reg.is_some();
        let reg = reg.unwrap_or(Registered {
            queue_mode: false,
            alternate: None,
        });
        self.queue_mode = reg.queue_mode;
        self.alternate = reg.alternate;
    }

    /// The device talked: in queue mode it listens for `qmode_time_window` from now.
    fn heard(&mut self, uplink: bool) {
        let now = Instant::now();
        self.s.inbox.heard(now);
        if uplink {
            self.last_uplink = now;
        }
    }

    async fn registered(&mut self, reg: Registration, packet: &Packet) {
        self.heard(true);
        self.s.addr = reg.addr;
        if self.client.is_none() {
            let mut opts = ClientOptions::new(&*self.s.ep, Protocol::Lwm2m, reg.addr);
            opts.credentials = if self.s.ctx.transport.is_secure() {
                // Over DTLS the endpoint name is the PSK identity its key proved (from the
                // operator's PSK file): the user name the ACL sees.
                Credentials::Gateway {
                    username: Some(self.s.ep.to_string()),
                }
            } else {
                // Plain CoAP carries no credentials: the endpoint is anonymous to the
                // authentication chain (anonymous access or the client-id allowlist admit it).
                Credentials::Device {
                    username: None,
                    password: None,
                }
            };
            // Boxed: done once, while the handler's own future is kept small.
            match Box::pin(Client::connect(&self.s.ctx.broker, opts)).await {
                Ok(mut client) => {
                    let filter = format!("{}dn/#", self.mount());
                    if let Some(Err(e)) = client
                        .subscribe(&[(filter.as_str(), QoS::AtLeastOnce)])
                        .pop()
                    {
                        tracing::warn!(ep = %self.s.ep, filter, "lwm2m: cannot subscribe to the command topic: {e}");
                    }
                    self.client = Some(client);
                }
                Err(e) => {
                    self.s
                        .ctx
                        .status
                        .counters
                        .registrations_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(ep = %self.s.ep, peer = %reg.addr, "lwm2m: registration refused: {e}");
                    self.reply(
                        packet,
                        ResponseType::Forbidden,
                        e.to_string().as_bytes(),
                        reg.addr,
                    );
                    self.closing = true;
                    return;
                }
            }
        } else {
            // Registered again (a rebooted device): what it observed and was asked is gone.
            self.observations = Vec::new();
            self.pending = None;
        }
        let mut r = message::response_to(packet, ResponseType::Created, self.mid());
        for (option, value) in location_options(&reg.location()) {
            r.add_option(option, value);
        }
        self.send_reply(packet, &r, reg.addr);
        self.s
            .ctx
            .status
            .counters
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(ep = %self.s.ep, peer = %reg.addr, location = %reg.location(), lifetime = reg.params.lifetime, binding = %reg.params.binding, lwm2m = %reg.params.version, "lwm2m: registered");
        self.publish("up/resp", registration_json("register", &reg));
        self.auto_observe(&reg);
        self.set_registered(Some(Registered::of(&reg)));
        self.flush().await;
    }

    /// Queues the observations `[lwm2m] auto_observe` asks for on a device that registered,
    /// as if the cloud had sent them (no `reqID`); within the command queue's limit.
    fn auto_observe(&mut self, reg: &Registration) {
        let config = Arc::clone(&self.s.ctx.config);
        if config.auto_observe == AutoObserve::Off {
            return;
        }
        let objects = reg.params.objects().object_list;
        let paths: Vec<&str> = match &config.auto_observe {
            AutoObserve::Paths(paths) => paths
                .iter()
                .map(String::as_str)
                .filter(|p| link::registered(&objects, p))
                .collect(),
            _ => link::observable_instances(&objects).collect(),
        };
        let room = config.max_queued_commands.saturating_sub(self.queue.len());
        if paths.len() > room {
            tracing::warn!(ep = %self.s.ep, paths = paths.len(), room, "lwm2m: auto_observe: more paths than the command queue holds; the rest are not observed");
        }
        for path in paths.into_iter().take(room) {
            let body = json!({"msgType": "observe", "data": {"path": path}});
            match command::parse(body.to_string().as_bytes(), &self.s.ctx.model) {
                Ok(cmd) => self.queue.push_back(Job::Command(cmd)),
                Err((_, e)) => {
                    tracing::warn!(ep = %self.s.ep, path, "lwm2m: auto_observe: {e}");
                }
            }
        }
    }

    /// A command published on `dn`.
    async fn command(&mut self, m: Received) {
        if let Some(client) = self.client.as_mut() {
            client.ack(&m);
        }
        let counters = &self.s.ctx.status.counters;
        counters.commands.fetch_add(1, Ordering::Relaxed);
        match command::parse(&m.message.payload, &self.s.ctx.model) {
            Ok(cmd) => {
                if self.queue.len() >= self.s.ctx.config.max_queued_commands {
                    counters.commands_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(ep = %self.s.ep, queued = self.queue.len(), "lwm2m: command queue full; command refused (5.03)");
                    let r =
                        command::response_json(cmd.echo.keys(), None, &cmd.req_path, "5.03", None);
                    self.publish("up/resp", r);
                    return;
                }
                self.queue.push_back(Job::Command(cmd));
                self.flush().await;
            }
            Err((echo, e)) => {
                counters.commands_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ep = %self.s.ep, topic = %m.message.topic, "lwm2m: command refused: {e}");
                let path = "";
                let r =
                    command::response_json(echo, None, path, "4.00", Some(json!(e.to_string())));
                self.publish("up/resp", r);
            }
        }
    }

    /// Sends the next queued job when nothing is outstanding and the device listens.
    async fn flush(&mut self) {
        if self.pending.is_some() || !self.registered {
            return;
        }
        let queue_mode = self.queue_mode;
        if queue_mode && self.last_uplink.elapsed() > self.s.ctx.config.qmode_time_window {
            return;
        }
        let Some(mut job) = self.queue.pop_front() else {
            return;
        };
        if self.queue.is_empty() {
            // Thousands of endpoints wait with nothing queued: none keeps a buffer.
            self.queue = VecDeque::new();
        }
        let (download, block2) = match &mut job {
            Job::Rest(r) => (r.download.take(), Some(r.next.clone())),
            Job::Command(_) => (None, None),
        };
        let max_block = self.s.ctx.config.max_block_size;
        let upload = (job.request().payload.len() > max_block)
            .then(|| Upload::new(block::szx_for(max_block)));
        let token: Vec<u8> = rand::random::<u64>().to_be_bytes().to_vec();
        let pending = Box::new(Pending {
            job,
            mid: 0,
            token: token.clone(),
            first_token: token,
            separate_deadline: None,
            upload,
            download,
            block2,
            outstanding: Retransmitter::new(1),
        });
        self.send_exchange(pending, false).await;
    }

    /// Sends the pending job's current exchange (its block, if it goes block by block) with a
    /// new message id, and a new token when `fresh_token`; it is then outstanding.
    async fn send_exchange(&mut self, mut pending: Box<Pending>, fresh_token: bool) {
        let mid = self.mid();
        if fresh_token {
            pending.token = rand::random::<u64>().to_be_bytes().to_vec();
        }
        // A later block of the answer is asked for with the request alone: no payload and no
        // Observe (RFC 7959 sections 2.4 and 3.4).
        let later_block = pending.block2.as_ref().is_some_and(|b| b.num > 0);
        let req = pending.job.request();
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = mid;
        p.header.code = MessageClass::Request(match req.method {
            Method::Get => RequestType::Get,
            Method::Post => RequestType::Post,
            Method::Put => RequestType::Put,
            Method::Delete => RequestType::Delete,
        });
        p.set_token(pending.token.clone());
        let alternate = self.alternate.as_deref();
        for seg in alternate
            .unwrap_or("/")
            .split('/')
            .filter(|s| !s.is_empty())
        {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for seg in &req.path {
            p.add_option(CoapOption::UriPath, seg.to_string().into_bytes());
        }
        for q in &req.query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let (Some(o), false) = (req.observe, later_block) {
            p.add_option(CoapOption::Observe, OptionValueU32(o).into());
        }
        if let (Some(cf), false) = (req.content_format, later_block) {
            p.add_option(CoapOption::ContentFormat, OptionValueU16(cf).into());
        }
        if let Some(a) = req.accept {
            p.add_option(CoapOption::Accept, OptionValueU16(a).into());
        }
        match (&pending.upload, later_block) {
            (Some(upload), false) => {
                let (b1, part) = upload.block(&req.payload);
                if b1.num == 0 {
                    let size = u32::try_from(req.payload.len()).unwrap_or(u32::MAX);
                    p.add_option(CoapOption::Size1, OptionValueU32(size).into());
                }
                p.add_option(CoapOption::Block1, b1.into());
                p.payload = part.to_vec();
            }
            (None, false) => p.payload = req.payload.clone(),
            (_, true) => {}
        }
        if let Some(b2) = &pending.block2 {
            p.add_option(CoapOption::Block2, b2.clone().into());
        }
        let Ok(bytes) = p.to_bytes_unlimited() else {
            tracing::warn!(ep = %self.s.ep, "lwm2m: cannot encode a request");
            return;
        };
        let to = self.s.addr;
        self.send_bytes(&bytes, to).await;
        pending.outstanding.settle(pending.mid);
        let _ = pending
            .outstanding
            .start(mid, bytes, (), rand::random(), Instant::now());
        if let Job::Command(cmd) = &pending.job {
            tracing::debug!(ep = %self.s.ep, msg_type = %cmd.msg_type, path = %cmd.req_path, mid, "lwm2m: request sent");
        }
        pending.mid = mid;
        pending.separate_deadline = None;
        self.pending = Some(pending);
    }

    /// An ACK, RST or response from the device.
    async fn device_packet(&mut self, p: Packet) {
        let mid = p.header.message_id;
        let is_pending_mid = self.pending.as_ref().is_some_and(|x| x.mid == mid);
        match (p.header.get_type(), p.header.code) {
            (MessageType::Acknowledgement, MessageClass::Empty) if is_pending_mid => {
                // A separate response is to come.
                self.settle(mid);
                if let Some(p) = self.pending.as_mut() {
                    p.separate_deadline = Some(Instant::now() + SEPARATE_RESPONSE_TIMEOUT);
                }
            }
            (MessageType::Acknowledgement, MessageClass::Response(_)) if is_pending_mid => {
                self.settle(mid);
                if let Some(pending) = self.pending.take() {
                    self.answered(pending, &p).await;
                }
            }
            (MessageType::Reset, _) if is_pending_mid => {
                self.settle(mid);
                if let Some(pending) = self.pending.take() {
                    self.failed(*pending, "coap_reset", None).await;
                }
                self.flush().await;
            }
            (
                kind @ (MessageType::Confirmable | MessageType::NonConfirmable),
                MessageClass::Response(_),
            ) => {
                let token = p.get_token();
                let separate = self.pending.as_ref().is_some_and(|x| x.token == token);
                let known = separate || self.observed(token).is_some();
                if kind == MessageType::Confirmable {
                    let answer = if known {
                        message::empty_ack(mid)
                    } else {
                        message::reset(mid)
                    };
                    if let Ok(bytes) = answer.to_bytes_unlimited() {
                        let to = self.s.addr;
                        self.send_bytes(&bytes, to).await;
                    }
                }
                if separate {
                    if let Some(mut pending) = self.pending.take() {
                        pending.outstanding.settle(pending.mid);
                        self.answered(pending, &p).await;
                    }
                } else if known {
                    self.notify(&p).await;
                }
            }
            _ => {}
        }
    }

    /// The device answered the pending exchange. A block-wise body goes on (the next Block1
    /// block after a 2.31 Continue, the next Block2 block of the answer); a whole answer is
    /// published.
    async fn answered(&mut self, mut pending: Box<Pending>, p: &Packet) {
        let code = match p.header.code {
            MessageClass::Response(rc) => rc,
            _ => ResponseType::UnKnown,
        };
        let success = message::code_string(code).starts_with('2');
        if let (Job::Command(cmd), true) = (&pending.job, success) {
            // The observation holds from the device's first success, before a block-wise
            // body is fetched to its end: its notifications are not refused meanwhile.
            let token = token_key(&pending.first_token);
            if cmd.msg_type == "observe" && self.observed(&pending.first_token).is_none() {
                // Exactly as many as there are: thousands of endpoints keep one each.
                self.observations.reserve_exact(1);
                self.observations.push((token, Observed::new(cmd)));
            }
        }
        if code == ResponseType::Continue {
            let len = pending.job.request().payload.len();
            let echo = option_block(p, CoapOption::Block1);
            if let Some(upload) = pending.upload.as_mut() {
                if upload.advance(len, echo.as_ref()) {
                    return self.send_exchange(pending, true).await;
                }
            }
        }
        let mut body = None;
        if let (Some(b2), true) = (option_block(p, CoapOption::Block2), success) {
            let max = self.s.ctx.config.max_body_size;
            let download = pending.download.get_or_insert_with(|| Download::new(max));
            match download.take(&b2, &p.payload) {
                Ok(Next::Fetch(next)) => {
                    pending.block2 = Some(next);
                    return self.send_exchange(pending, true).await;
                }
                Ok(Next::Done(all)) => body = Some(all),
                Err(e) => {
                    tracing::warn!(ep = %self.s.ep, "lwm2m: the device's block-wise answer was given up: {e}");
                    let code = match e {
                        BlockError::TooLarge { .. } => "4.13",
                        BlockError::Incomplete { .. } => "4.08",
                        BlockError::BadSize { .. } => "4.00",
                    };
                    self.failed(*pending, code, Some(json!(e.to_string())))
                        .await;
                    return self.flush().await;
                }
            }
        }
        let payload = body.as_deref().unwrap_or(&p.payload);
        let format = content_format(p);
        match pending.job {
            Job::Command(cmd) => self.response(cmd, code, format, payload).await,
            Job::Rest(rest) => {
                self.notify_body(rest.observation, rest.seq, code, format, payload)
                    .await;
            }
        }
        self.flush().await;
    }

    /// The pending job ended without an answer to publish: a command is answered on
    /// `up/resp` with `msg_type` (`coap_reset`, `coap_timeout`) or, with `detail`, the
    /// gateway's own code; the rest of a notification is dropped.
    async fn failed(&mut self, pending: Pending, code_or_type: &str, detail: Option<Json>) {
        match pending.job {
            Job::Command(c) => {
                let r = match detail {
                    Some(d) => command::response_json(
                        c.echo.keys(),
                        None,
                        &c.req_path,
                        code_or_type,
                        Some(d),
                    ),
                    None => command::response_json(
                        c.echo.keys(),
                        Some(code_or_type),
                        &c.req_path,
                        "",
                        None,
                    ),
                };
                self.publish("up/resp", r);
            }
            Job::Rest(_) => {
                tracing::info!(ep = %self.s.ep, why = code_or_type, "lwm2m: the rest of a block-wise notification did not come; dropped");
            }
        }
    }

    /// The device's answer to a command, published on `up/resp`.
    async fn response(
        &mut self,
        cmd: Command,
        code: ResponseType,
        format: Option<u16>,
        payload: &[u8],
    ) {
        let code = message::code_string(code);
        let content = self.content(&cmd.req_path, format, payload);
        if cmd.msg_type == "cancel-observe" {
            self.observations
                .retain(|(_, o)| o.req_path() != cmd.req_path);
            self.observations.shrink_to_fit();
        }
        self.s
            .ctx
            .status
            .counters
            .responses
            .fetch_add(1, Ordering::Relaxed);
        let r = command::response_json(cmd.echo.keys(), None, &cmd.req_path, &code, content);
        self.publish("up/resp", r);
    }

    /// A notification of an observation: published on `up/notify` with its `seqNum`, or, when
    /// it is the first block of a larger body, once the rest was fetched.
    async fn notify(&mut self, p: &Packet) {
        let token = token_key(p.get_token());
        let code = match p.header.code {
            MessageClass::Response(rc) => rc,
            _ => ResponseType::UnKnown,
        };
        let seq = p.get_observe_value().and_then(Result::ok).unwrap_or(0);
        let first_block = option_block(p, CoapOption::Block2).filter(|b| b.more);
        let Some(b2) = first_block else {
            return self
                .notify_body(token, seq, code, content_format(p), &p.payload)
                .await;
        };
        let Some(o) = self.observed(p.get_token()) else {
            return;
        };
        let mut download = Download::new(self.s.ctx.config.max_body_size);
        let next = match download.take(&b2, &p.payload) {
            Ok(Next::Fetch(next)) => next,
            Ok(Next::Done(_)) => return,
            Err(e) => {
                tracing::warn!(ep = %self.s.ep, path = %o.req_path(), "lwm2m: a block-wise notification was dropped: {e}");
                return;
            }
        };
        let Ok(path) = command::split_path(o.req_path()) else {
            return;
        };
        if self.queue.len() >= self.s.ctx.config.max_queued_commands {
            tracing::warn!(ep = %self.s.ep, path = %o.req_path(), "lwm2m: command queue full; a block-wise notification was dropped");
            return;
        }
        let request = DeviceRequest {
            method: Method::Get,
            path,
            query: Vec::new(),
            content_format: None,
            accept: content_format(p),
            observe: None,
            payload: Vec::new(),
        };
        // Ahead of queued commands: the device is sending now, and holds the body.
        self.queue.push_front(Job::Rest(Box::new(Rest {
            observation: token,
            seq,
            request,
            download: Some(download),
            next,
        })));
        self.flush().await;
    }

    async fn notify_body(
        &mut self,
        token: u64,
        seq: u32,
        code: ResponseType,
        format: Option<u16>,
        payload: &[u8],
    ) {
        let Some((_, o)) = self.observations.iter().find(|(t, _)| *t == token) else {
            return;
        };
        let code = message::code_string(code);
        let content = self.content(o.req_path(), format, payload);
        let mut r = command::response_json(o.echo(), Some("notify"), o.req_path(), &code, content);
        if let Json::Object(top) = &mut r {
            top.insert("seqNum".into(), json!(seq));
        }
        self.s
            .ctx
            .status
            .counters
            .notifications
            .fetch_add(1, Ordering::Relaxed);
        self.publish("up/notify", r);
    }

    fn content(&self, req_path: &str, format: Option<u16>, payload: &[u8]) -> Option<Json> {
        match command::decode_content(req_path, format, payload, &self.s.ctx.model) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(ep = %self.s.ep, path = req_path, "lwm2m: cannot decode the device's answer: {e}");
                None
            }
        }
    }

    async fn retransmit(&mut self) {
        let late = self
            .pending
            .as_ref()
            .and_then(|p| p.separate_deadline)
            .is_some_and(|d| d <= Instant::now());
        if late {
            self.timed_out().await;
        }
        let due = match self.pending.as_mut() {
            Some(p) => p.outstanding.due(Instant::now()),
            None => Vec::new(),
        };
        for due in due {
            match due {
                Due::Resend(bytes) => {
                    let to = self.s.addr;
                    self.send_bytes(&bytes, to).await;
                }
                Due::GaveUp(()) => self.timed_out().await,
            }
        }
    }

    /// The device did not answer the pending command: `coap_timeout` on `up/resp`.
    async fn timed_out(&mut self) {
        self.s
            .ctx
            .status
            .counters
            .timeouts
            .fetch_add(1, Ordering::Relaxed);
        if let Some(pending) = self.pending.take() {
            if let Job::Command(c) = &pending.job {
                tracing::info!(ep = %self.s.ep, msg_type = %c.msg_type, path = %c.req_path, "lwm2m: no answer from the device");
            }
            self.failed(*pending, "coap_timeout", None).await;
        }
        self.flush().await;
    }

    /// Publishes `body` on the endpoint's `suffix` topic now, or, while a full subscriber
    /// queue holds the endpoint back, puts it in the outbox, which the task's loop publishes
    /// in order as the hold lifts, before it takes its next event. So a handler never waits
    /// to publish: thousands of endpoints may be held back at once, each keeping only what
    /// it has to publish, not a suspended handler.
    fn publish(&mut self, suffix: &str, body: Json) {
        let topic = format!("{}{suffix}", self.mount());
        let p = Publication::new(topic, body.to_string().into_bytes(), QoS::AtLeastOnce);
        let Some(client) = self.client.as_mut() else {
            return;
        };
        match self.outbox.as_mut() {
            None if !client.is_held_back() => {
                publish_now(client, &self.s.ep, p);
            }
            // Bounded by what one event publishes (the loop drains it before the next): a
            // response or a notification, and the failure of a command sent after it.
            Some(outbox) => outbox.push_back(p),
            None => self.outbox = Some(Box::new(VecDeque::from([p]))),
        }
    }

    /// Publishes what waits in the outbox, in order, each once the endpoint is not held back.
    async fn drain_outbox(&mut self) {
        while let Some(p) = self.outbox.as_mut().and_then(|o| o.pop_front()) {
            let Some(client) = self.client.as_mut() else {
                break;
            };
            client.wait_while_held_back().await;
            publish_now(client, &self.s.ep, p);
        }
        self.outbox = None;
    }

    fn reply(&mut self, request: &Packet, code: ResponseType, payload: &[u8], to: SocketAddr) {
        let mut r = message::response_to(request, code, self.mid());
        r.payload = payload.to_vec();
        self.send_reply(request, &r, to);
    }

    /// Sends the response to a device's request, remembered for its duplicates.
    fn send_reply(&mut self, request: &Packet, r: &Packet, to: SocketAddr) {
        let mut r = r.clone();
        super::final_block1(request, &mut r);
        let Ok(bytes) = r.to_bytes_unlimited() else {
            return;
        };
        if request.header.get_type() == MessageType::Confirmable {
            self.s
                .ctx
                .status
                .replied(to, request.header.message_id, bytes.clone());
        }
        if self.s.ctx.transport.try_send(&bytes, to) {
            self.s
                .ctx
                .status
                .counters
                .datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send_bytes(&self, bytes: &[u8], to: SocketAddr) {
        // At once, almost always; the wait for room in the socket buffer is boxed (a
        // handler's future stays small for the thousands of endpoints that wait at once).
        let transport = &self.s.ctx.transport;
        if transport.try_send(bytes, to) || Box::pin(transport.send(bytes, to)).await {
            self.s
                .ctx
                .status
                .counters
                .datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The endpoint's topic prefix (`lwm2m/{ep}/`).
    fn mount(&self) -> String {
        self.s.ctx.config.mountpoint.replace("%e", &self.s.ep)
    }

    /// The observation whose token this is.
    fn observed(&self, token: &[u8]) -> Option<&Observed> {
        let key = token_key(token);
        (token.len() == 8)
            .then(|| self.observations.iter().find(|(t, _)| *t == key))
            .flatten()
            .map(|(_, o)| o)
    }

    /// The pending exchange `mid` was acknowledged: no more retransmissions.
    fn settle(&mut self, mid: u16) {
        if let Some(p) = self.pending.as_mut() {
            p.outstanding.settle(mid);
        }
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }
}

/// A Block1 or Block2 option of `p`, if it has a well-formed one.
fn option_block(p: &Packet, option: CoapOption) -> Option<BlockValue> {
    p.get_first_option_as::<BlockValue>(option)
        .and_then(Result::ok)
}

fn content_format(p: &Packet) -> Option<u16> {
    p.get_first_option_as::<OptionValueU16>(CoapOption::ContentFormat)
        .and_then(Result::ok)
        .map(|f| f.0)
}

/// An observation's token (the server's are 8 random bytes) as a key.
fn token_key(token: &[u8]) -> u64 {
    token.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

/// Publishes `p` as the endpoint's client; a refusal is logged.
fn publish_now(client: &mut Client, ep: &str, p: Publication) {
    let topic = p.topic.clone();
    if let Err(e) = client.publish_now(p) {
        tracing::warn!(ep, topic, "lwm2m: publish refused: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_lwm2m::registry::Limits;

    /// Thousands of endpoints wait at once: each one's task is its future in a tokio task cell
    /// (the cell rounds up to 128 bytes). A field added to the endpoint, or a local held across
    /// an await of its loop, shows here first.
    #[tokio::test]
    async fn an_endpoints_task_stays_small() {
        let config = crate::config::parse(
            "[auth]\nallow_anonymous = true\n[lwm2m]\n",
            "test.toml",
            Vec::new(),
        )
        .expect("config");
        let auth =
            Arc::new(crate::auth::Authenticator::from_config(&config.auth).expect("authenticator"));
        let lwm2m = config.lwm2m.clone().expect("[lwm2m]");
        let broker = Broker::new(
            Arc::new(config),
            auth,
            tokio_util::sync::CancellationToken::new(),
        );
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("socket");
        let ctx = Arc::new(Context {
            transport: crate::dtls::Transport::plain(Arc::new(socket)),
            broker,
            model: Arc::new(Model::builtin()),
            status: Arc::new(Status::new(Limits {
                lifetime_min: lwm2m.lifetime_min,
                lifetime_max: lwm2m.lifetime_max,
                max_endpoints: lwm2m.max_endpoints,
            })),
            config: Arc::new(lwm2m),
        });
        let (_tx, rx) = super::super::inbox::inbox(4);
        let e = Endpoint::new(Setup {
            ep: "ep".into(),
            generation: 1,
            addr: SocketAddr::from(([127, 0, 0, 1], 5683)),
            ctx,
            inbox: rx,
        });
        let task = e.run();
        let size = std::mem::size_of_val(&task);
        assert!(size <= 384, "an endpoint's task is {size} bytes");
    }
}
