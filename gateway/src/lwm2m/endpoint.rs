//! One registered LwM2M endpoint's task: its broker `Client` (client id = endpoint name), its
//! command queue, the one request outstanding to the device, and its observations.
//!
//! Owns the conversation with one device: answering its Register / Update / De-register once
//! the broker accepted it, publishing `register` / `update` on `up/resp`, turning commands
//! from `dn` into CoAP requests (one confirmable request at a time, retransmitted; in queue
//! mode only while the device listens, `qmode_time_window` after it last talked, the rest
//! held in a bounded queue), and the device's answers into responses on `up/resp` and
//! notifications on `up/notify`. Ends when the device de-registers or expires, is kicked or
//! taken over, or the gateway stops; its registration goes with it.

use super::{location_options, lock, Inbound, Status};
use crate::broker::client::{Client, ClientOptions, Credentials, Protocol, Publication, Received};
use crate::broker::Broker;
use crate::config::{Lwm2mConfig, UpdatePublish};
use holdfast_coap::message;
use holdfast_coap::retransmit::{Due, Retransmitter};
use holdfast_coap::{
    CoapOption, MessageClass, MessageType, OptionValueU16, OptionValueU32, Packet, RequestType,
    ResponseType,
};
use holdfast_lwm2m::command::{self, Command, Method};
use holdfast_lwm2m::link;
use holdfast_lwm2m::model::Model;
use holdfast_lwm2m::registry::{registration_json, Registration};
use holdfast_mqtt::QoS;
use serde_json::{json, Map, Value as Json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an endpoint's task starts from.
pub(super) struct Setup {
    pub(super) ep: String,
    pub(super) generation: u64,
    pub(super) addr: SocketAddr,
    pub(super) transport: crate::dtls::Transport,
    pub(super) broker: Arc<Broker>,
    pub(super) config: Arc<Lwm2mConfig>,
    pub(super) model: Arc<Model>,
    pub(super) status: Arc<Status>,
    pub(super) last_seen: Arc<Mutex<Instant>>,
}

/// How long a device that acknowledged a request (empty ACK) has for its separate response
/// before the command is answered `coap_timeout`.
const SEPARATE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The request outstanding to the device.
struct Pending {
    cmd: Command,
    mid: u16,
    token: Vec<u8>,
    /// Set by an empty ACK: when the separate response is due.
    separate_deadline: Option<Instant>,
}

/// An observation the device accepted: the command's keys and path, for its notifications.
struct Observed {
    echo: Map<String, Json>,
    req_path: String,
}

pub(super) struct Endpoint {
    s: Setup,
    client: Option<Client>,
    reg: Option<Registration>,
    mount: String,
    queue: VecDeque<Command>,
    /// Boxed: only while a command is outstanding (an idle endpoint's task stays small).
    pending: Option<Box<Pending>>,
    outstanding: Retransmitter<()>,
    observations: HashMap<Vec<u8>, Observed>,
    next_mid: u16,
    last_uplink: Instant,
    closing: bool,
}

impl Endpoint {
    pub(super) fn new(s: Setup) -> Endpoint {
        Endpoint {
            mount: s.config.mountpoint.replace("%e", &s.ep),
            client: None,
            reg: None,
            queue: VecDeque::new(),
            pending: None,
            outstanding: Retransmitter::new(1),
            observations: HashMap::new(),
            next_mid: rand::random(),
            last_uplink: Instant::now(),
            closing: false,
            s,
        }
    }

    pub(super) async fn run(mut self, first: Inbound, mut inbox: super::inbox::Receiver) {
        // The handlers' futures (connect, publish ...) are boxed while they run, so the task
        // that waits between events stays small: thousands of endpoints wait at once.
        Box::pin(self.inbound(first)).await;
        while !self.closing {
            let wake = [
                self.outstanding.next_deadline(),
                self.pending.as_ref().and_then(|p| p.separate_deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let Some(client) = self.client.as_mut() else {
                break;
            };
            tokio::select! {
                ev = inbox.recv() => match ev {
                    Some(ev) => Box::pin(self.inbound(ev)).await,
                    None => break,
                },
                m = client.recv() => match m {
                    Some(m) => Box::pin(self.command(m)).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => Box::pin(self.retransmit()).await,
                _ = self.s.broker.shutdown.cancelled() => break,
            }
        }
        self.s.status.remove(&self.s.ep, self.s.generation);
        if let Some(client) = self.client.take() {
            client.disconnect();
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
                    .status
                    .counters
                    .updates
                    .fetch_add(1, Ordering::Relaxed);
                let publish = match self.s.config.update_msg_publish_condition {
                    UpdatePublish::Always => true,
                    UpdatePublish::ContainsObjectList => has_objects,
                };
                if publish {
                    self.publish("up/resp", registration_json("update", &reg))
                        .await;
                }
                self.reg = Some(reg);
                self.flush().await;
            }
            Inbound::Deregistered(event) => {
                let (packet, from) = *event;
                self.reply(&packet, ResponseType::Deleted, &[], from);
                tracing::info!(ep = %self.s.ep, peer = %from, "lwm2m: de-registered");
                self.reg = None;
                self.closing = true;
            }
            Inbound::Expired => {
                self.reg = None;
                self.closing = true;
            }
            Inbound::FromDevice(packet) => {
                self.heard(true);
                self.device_packet(*packet).await;
            }
        }
    }

    /// The device talked: in queue mode it listens for `qmode_time_window` from now.
    fn heard(&mut self, uplink: bool) {
        let now = Instant::now();
        *lock(&self.s.last_seen) = now;
        if uplink {
            self.last_uplink = now;
        }
    }

    async fn registered(&mut self, reg: Registration, packet: &Packet) {
        self.heard(true);
        self.s.addr = reg.addr;
        if self.client.is_none() {
            let mut opts = ClientOptions::new(self.s.ep.clone(), Protocol::Lwm2m, reg.addr);
            opts.credentials = if self.s.transport.is_secure() {
                // Over DTLS the endpoint name is the PSK identity its key proved (from the
                // operator's PSK file): the user name the ACL sees.
                Credentials::Gateway {
                    username: Some(self.s.ep.clone()),
                }
            } else {
                // Plain CoAP carries no credentials: the endpoint is anonymous to the
                // authentication chain (anonymous access or the client-id allowlist admit it).
                Credentials::Device {
                    username: None,
                    password: None,
                }
            };
            match Client::connect(&self.s.broker, opts).await {
                Ok(mut client) => {
                    let filter = format!("{}dn/#", self.mount);
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
            self.observations.clear();
            self.pending = None;
            self.outstanding = Retransmitter::new(1);
        }
        let mut r = message::response_to(packet, ResponseType::Created, self.mid());
        for (option, value) in location_options(&reg.location) {
            r.add_option(option, value);
        }
        self.send_reply(packet, &r, reg.addr);
        self.s
            .status
            .counters
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(ep = %self.s.ep, peer = %reg.addr, location = %reg.location, lifetime = reg.params.lifetime, binding = %reg.params.binding, lwm2m = %reg.params.version, "lwm2m: registered");
        self.publish("up/resp", registration_json("register", &reg))
            .await;
        if self.s.config.auto_observe {
            let objects = link::registration(&reg.params.links).object_list;
            for path in objects.iter().filter(|p| p.matches('/').count() == 2) {
                let body = json!({"msgType": "observe", "data": {"path": path}});
                if let Ok(cmd) = command::parse(body.to_string().as_bytes(), &self.s.model) {
                    self.queue.push_back(cmd);
                }
            }
        }
        self.reg = Some(reg);
        self.flush().await;
    }

    /// A command published on `dn`.
    async fn command(&mut self, m: Received) {
        if let Some(client) = self.client.as_mut() {
            client.ack(&m);
        }
        let counters = &self.s.status.counters;
        counters.commands.fetch_add(1, Ordering::Relaxed);
        match command::parse(&m.message.payload, &self.s.model) {
            Ok(cmd) => {
                if self.queue.len() >= self.s.config.max_queued_commands {
                    counters.commands_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(ep = %self.s.ep, queued = self.queue.len(), "lwm2m: command queue full; command refused (5.03)");
                    let r = command::response_json(&cmd.echo, None, &cmd.req_path, "5.03", None);
                    self.publish("up/resp", r).await;
                    return;
                }
                self.queue.push_back(cmd);
                self.flush().await;
            }
            Err((echo, e)) => {
                counters.commands_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ep = %self.s.ep, topic = %m.message.topic, "lwm2m: command refused: {e}");
                let path = "";
                let r =
                    command::response_json(&echo, None, path, "4.00", Some(json!(e.to_string())));
                self.publish("up/resp", r).await;
            }
        }
    }

    /// Sends the next queued command when nothing is outstanding and the device listens.
    async fn flush(&mut self) {
        if self.pending.is_some() || self.reg.is_none() {
            return;
        }
        let queue_mode = self.reg.as_ref().is_some_and(|r| r.params.queue_mode());
        if queue_mode && self.last_uplink.elapsed() > self.s.config.qmode_time_window {
            return;
        }
        let Some(cmd) = self.queue.pop_front() else {
            return;
        };
        if self.queue.is_empty() {
            // Thousands of endpoints wait with nothing queued: none keeps a buffer.
            self.queue = VecDeque::new();
        }
        let mid = self.mid();
        let token: Vec<u8> = rand::random::<u64>().to_be_bytes().to_vec();
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = mid;
        p.header.code = MessageClass::Request(match cmd.request.method {
            Method::Get => RequestType::Get,
            Method::Post => RequestType::Post,
            Method::Put => RequestType::Put,
            Method::Delete => RequestType::Delete,
        });
        p.set_token(token.clone());
        let alternate = self
            .reg
            .as_ref()
            .map(|r| link::registration(&r.params.links).alternate_path)
            .unwrap_or_else(|| "/".into());
        for seg in alternate.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for seg in &cmd.request.path {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for q in &cmd.request.query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(o) = cmd.request.observe {
            p.add_option(CoapOption::Observe, OptionValueU32(o).into());
        }
        if let Some(cf) = cmd.request.content_format {
            p.add_option(CoapOption::ContentFormat, OptionValueU16(cf).into());
        }
        if let Some(a) = cmd.request.accept {
            p.add_option(CoapOption::Accept, OptionValueU16(a).into());
        }
        p.payload = cmd.request.payload.clone();
        let Ok(bytes) = p.to_bytes_unlimited() else {
            tracing::warn!(ep = %self.s.ep, "lwm2m: cannot encode a request");
            return;
        };
        let to = self.s.addr;
        self.send_bytes(&bytes, to).await;
        let _ = self
            .outstanding
            .start(mid, bytes, (), rand::random(), Instant::now());
        tracing::debug!(ep = %self.s.ep, msg_type = %cmd.msg_type, path = %cmd.req_path, mid, "lwm2m: request sent");
        self.pending = Some(Box::new(Pending {
            cmd,
            mid,
            token,
            separate_deadline: None,
        }));
    }

    /// An ACK, RST or response from the device.
    async fn device_packet(&mut self, p: Packet) {
        let mid = p.header.message_id;
        let is_pending_mid = self.pending.as_ref().is_some_and(|x| x.mid == mid);
        match (p.header.get_type(), p.header.code) {
            (MessageType::Acknowledgement, MessageClass::Empty) if is_pending_mid => {
                // A separate response is to come.
                self.outstanding.settle(mid);
                if let Some(p) = self.pending.as_mut() {
                    p.separate_deadline = Some(Instant::now() + SEPARATE_RESPONSE_TIMEOUT);
                }
            }
            (MessageType::Acknowledgement, MessageClass::Response(_)) if is_pending_mid => {
                self.outstanding.settle(mid);
                if let Some(pending) = self.pending.take() {
                    self.response(*pending, &p).await;
                }
            }
            (MessageType::Reset, _) if is_pending_mid => {
                self.outstanding.settle(mid);
                if let Some(pending) = self.pending.take() {
                    let c = &pending.cmd;
                    let r =
                        command::response_json(&c.echo, Some("coap_reset"), &c.req_path, "", None);
                    self.publish("up/resp", r).await;
                }
                self.flush().await;
            }
            (
                kind @ (MessageType::Confirmable | MessageType::NonConfirmable),
                MessageClass::Response(_),
            ) => {
                let token = p.get_token().to_vec();
                let separate = self.pending.as_ref().is_some_and(|x| x.token == token);
                let known = separate || self.observations.contains_key(&token);
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
                    if let Some(pending) = self.pending.take() {
                        self.outstanding.settle(pending.mid);
                        self.response(*pending, &p).await;
                    }
                } else if known {
                    self.notify(&token, &p).await;
                }
            }
            _ => {}
        }
    }

    /// The device's answer to the pending command, published on `up/resp`.
    async fn response(&mut self, pending: Pending, p: &Packet) {
        let code = match p.header.code {
            MessageClass::Response(rc) => message::code_string(rc),
            _ => "0.00".into(),
        };
        let cmd = pending.cmd;
        let content = self.content(&cmd.req_path, p);
        match cmd.msg_type.as_str() {
            "observe" if code.starts_with('2') => {
                self.observations.insert(
                    pending.token,
                    Observed {
                        echo: cmd.echo.clone(),
                        req_path: cmd.req_path.clone(),
                    },
                );
            }
            "cancel-observe" => {
                self.observations.retain(|_, o| o.req_path != cmd.req_path);
            }
            _ => {}
        }
        self.s
            .status
            .counters
            .responses
            .fetch_add(1, Ordering::Relaxed);
        let r = command::response_json(&cmd.echo, None, &cmd.req_path, &code, content);
        self.publish("up/resp", r).await;
        self.flush().await;
    }

    /// A notification of an observation, published on `up/notify` with its `seqNum`.
    async fn notify(&mut self, token: &[u8], p: &Packet) {
        let Some(o) = self.observations.get(token) else {
            return;
        };
        let code = match p.header.code {
            MessageClass::Response(rc) => message::code_string(rc),
            _ => "0.00".into(),
        };
        let content = self.content(&o.req_path, p);
        let mut r = command::response_json(&o.echo, Some("notify"), &o.req_path, &code, content);
        let seq = p.get_observe_value().and_then(Result::ok).unwrap_or(0);
        if let Json::Object(top) = &mut r {
            top.insert("seqNum".into(), json!(seq));
        }
        self.s
            .status
            .counters
            .notifications
            .fetch_add(1, Ordering::Relaxed);
        self.publish("up/notify", r).await;
    }

    fn content(&self, req_path: &str, p: &Packet) -> Option<Json> {
        let format = p
            .get_first_option_as::<OptionValueU16>(CoapOption::ContentFormat)
            .and_then(Result::ok)
            .map(|f| f.0);
        match command::decode_content(req_path, format, &p.payload, &self.s.model) {
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
        for due in self.outstanding.due(Instant::now()) {
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
            .status
            .counters
            .timeouts
            .fetch_add(1, Ordering::Relaxed);
        if let Some(pending) = self.pending.take() {
            self.outstanding.settle(pending.mid);
            let c = &pending.cmd;
            tracing::info!(ep = %self.s.ep, msg_type = %c.msg_type, path = %c.req_path, "lwm2m: no answer from the device");
            let r = command::response_json(&c.echo, Some("coap_timeout"), &c.req_path, "", None);
            self.publish("up/resp", r).await;
        }
        self.flush().await;
    }

    async fn publish(&mut self, suffix: &str, body: Json) {
        let topic = format!("{}{suffix}", self.mount);
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let p = Publication::new(
            topic.clone(),
            body.to_string().into_bytes(),
            QoS::AtLeastOnce,
        );
        if let Err(e) = client.publish(p).await {
            tracing::warn!(ep = %self.s.ep, topic, "lwm2m: publish refused: {e}");
        }
    }

    fn reply(&mut self, request: &Packet, code: ResponseType, payload: &[u8], to: SocketAddr) {
        let mut r = message::response_to(request, code, self.mid());
        r.payload = payload.to_vec();
        self.send_reply(request, &r, to);
    }

    /// Sends the response to a device's request, remembered for its duplicates.
    fn send_reply(&mut self, request: &Packet, r: &Packet, to: SocketAddr) {
        let Ok(bytes) = r.to_bytes_unlimited() else {
            return;
        };
        if request.header.get_type() == MessageType::Confirmable {
            self.s
                .status
                .replied(to, request.header.message_id, bytes.clone());
        }
        if self.s.transport.try_send(&bytes, to) {
            self.s
                .status
                .counters
                .datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send_bytes(&self, bytes: &[u8], to: SocketAddr) {
        if self.s.transport.send(bytes, to).await {
            self.s
                .status
                .counters
                .datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }
}
