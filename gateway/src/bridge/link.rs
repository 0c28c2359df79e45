//! One bridge's connection to its cloud broker (rumqttc, MQTT 3.1.1): connect with backoff,
//! drain the disk queue through an inflight window, acknowledge queue records as the cloud
//! acknowledges them, and publish downlink messages locally.
//!
//! Owns the network side of a bridge. A record leaves the queue only when the cloud broker has
//! acknowledged it (PUBACK/PUBCOMP; for QoS 0, once written), so a lost connection, a `kill -9`
//! or a power cut means "send again from the oldest unacknowledged", never "lost". Each
//! connection gets a fresh rumqttc event loop, so rumqttc itself never resends anything (its
//! per-message resend throttle would drain a backlog one message per tick); the resends are ours,
//! in queue order, the ones that may have reached the cloud before flagged DUP.
//!
//! Two tasks per connection: the poller owns the event loop and is never cancelled mid-write
//! (rumqttc's poll is not cancel-safe while it flushes), the feeder reads the queue and hands
//! publishes to rumqttc's request channel while the window has room. They share the window
//! under a short std mutex. It never holds the router lock, and never touches the queue's files
//! except through [`GroupCommit`](holdfast_storage::queue::GroupCommit).

use super::backoff::Backoff;
use super::outbox::{bridge_session_id, Outbox};
use super::stats::LinkState;
use crate::broker::message::Message;
use crate::broker::{persist, Broker};
use crate::config::BridgeConfig;
use holdfast_mqtt::ByteStr;
use holdfast_storage::kv::StoredMessage;
use holdfast_storage::record;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish,
    QoS, Request, SubscribeFilter, TlsConfiguration, Transport,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most payload bytes read from the queue in one go.
const READ_BATCH_BYTES: usize = 1024 * 1024;
/// How long a TCP + TLS + CONNECT/CONNACK exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running bridge link.
#[derive(Debug)]
pub struct Link {
    cfg: BridgeConfig,
    outbox: Arc<Outbox>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    /// Records below this seq may have been sent before (earlier connection or process):
    /// they go out with DUP set.
    resend_below: u64,
}

/// The window shared by a connection's poller and feeder.
#[derive(Debug, Default)]
struct Window {
    /// Seqs handed to rumqttc, in order, not yet seen leaving as `Outgoing::Publish`.
    submitted: VecDeque<u64>,
    /// Packet id -> seq for publishes awaiting the cloud's acknowledgement.
    by_pkid: HashMap<u16, u64>,
    /// Submitted and not yet acknowledged.
    outstanding: usize,
    /// The next seq the feeder reads.
    next_read: u64,
    /// Set when the connection ends: the feeder stops.
    closed: bool,
}

struct Shared {
    window: Mutex<Window>,
    /// The backlog found at connect (records, when) until the queue first runs empty.
    backlog: Mutex<Option<(u64, Instant)>>,
    /// Signalled when acknowledgements free window slots.
    room: tokio::sync::Notify,
}

impl Link {
    /// A link for `outbox`'s bridge; `run` drives it until `shutdown`.
    pub fn new(
        cfg: BridgeConfig,
        outbox: Arc<Outbox>,
        broker: Arc<Broker>,
        shutdown: CancellationToken,
    ) -> Link {
        // Everything on disk at start-up may have reached the cloud before a crash.
        let resend_below = outbox.queue.stats().map(|s| s.next_seq).unwrap_or(u64::MAX);
        Link {
            cfg,
            outbox,
            broker,
            shutdown,
            resend_below,
        }
    }

    /// Connects, forwards, reconnects with backoff; returns when the gateway shuts down.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut connected_before = false;
        let shutdown = self.shutdown.clone();
        loop {
            self.outbox.stats.set_state(LinkState::Connecting);
            let outcome = tokio::select! {
                outcome = self.connection(&mut backoff, &mut connected_before) => outcome,
                () = shutdown.cancelled() => Err("shutting down".to_owned()),
            };
            if self.shutdown.is_cancelled() {
                self.outbox.stats.set_state(LinkState::Stopped);
                return;
            }
            self.outbox.stats.set_state(LinkState::Down);
            self.outbox
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            let why = match outcome {
                Ok(()) => "connection closed".to_owned(),
                Err(e) => e,
            };
            self.outbox.stats.set_error(why.clone());
            let delay = backoff.next_delay(rand::random::<f64>());
            let queued = self.outbox.queue.stats().map(|s| s.len).unwrap_or(0);
            tracing::warn!(
                bridge = %self.cfg.name,
                server = %self.cfg.server,
                error = %why,
                queued,
                retry_in_ms = delay.as_millis() as u64,
                "bridge down"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => {
                    self.outbox.stats.set_state(LinkState::Stopped);
                    return;
                }
            }
        }
    }

    /// One connection, from TCP connect to its end. `Err` says why it ended.
    async fn connection(
        &mut self,
        backoff: &mut Backoff,
        connected_before: &mut bool,
    ) -> Result<(), String> {
        let options = self.options()?;
        let window = usize::from(self.cfg.max_inflight);
        let (client, mut eventloop) = AsyncClient::new(options, window.max(8));
        match tokio::time::timeout(CONNECT_TIMEOUT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack))))
                if ack.code == ConnectReturnCode::Success => {}
            Ok(Ok(other)) => return Err(format!("unexpected first packet {other:?}")),
            Ok(Err(e)) => return Err(describe_error(&e)),
            Err(_) => return Err(format!("no CONNACK within {CONNECT_TIMEOUT:?}")),
        }
        backoff.reset();
        if *connected_before {
            self.outbox.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        *connected_before = true;
        self.outbox.stats.set_state(LinkState::Up);
        let stats = self.outbox.queue.stats().unwrap_or_default();
        tracing::info!(
            bridge = %self.cfg.name,
            server = %self.cfg.server,
            client_id = %self.cfg.client_id,
            queued = stats.len,
            queued_bytes = stats.bytes,
            "bridge up"
        );
        if !self.cfg.subscribe.is_empty() {
            let qos = qos_of(self.cfg.qos);
            let filters = self
                .cfg
                .subscribe
                .iter()
                .map(|f| SubscribeFilter::new(format!("{}{f}", self.cfg.remote_prefix), qos));
            client
                .try_subscribe_many(filters)
                .map_err(|e| format!("cannot subscribe: {e}"))?;
        }
        let shared = Arc::new(Shared {
            window: Mutex::new(Window::default()),
            backlog: Mutex::new((stats.len > 0).then(|| (stats.len, Instant::now()))),
            room: tokio::sync::Notify::new(),
        });
        let first = stats.first_unacked.unwrap_or(stats.next_seq);
        let resent = self.queue_resends(&mut eventloop, &shared, first, window);
        self.outbox
            .stats
            .resent
            .fetch_add(resent as u64, Ordering::Relaxed);
        let feeder = tokio::spawn(feed(
            self.outbox.clone(),
            shared.clone(),
            client.clone(),
            window,
            self.cfg.qos,
            self.cfg.remote_prefix.clone(),
        ));
        let result = self.poll_events(&mut eventloop, &shared).await;
        if let Ok(mut w) = shared.window.lock() {
            w.closed = true;
        }
        shared.room.notify_one();
        feeder.abort();
        // Whatever was submitted in this connection may have arrived: DUP next time.
        let sent_up_to = shared
            .window
            .lock()
            .map(|w| w.next_read)
            .unwrap_or(u64::MAX);
        self.resend_below = self.resend_below.max(sent_up_to);
        result
    }

    /// Puts the oldest unacknowledged records that may have been sent before (at most a
    /// window) into rumqttc's pending list with DUP set; they leave before anything else.
    fn queue_resends(
        &self,
        eventloop: &mut EventLoop,
        shared: &Shared,
        first: u64,
        window: usize,
    ) -> usize {
        let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
        w.next_read = first;
        if first >= self.resend_below {
            return 0;
        }
        let records = match self.outbox.queue.read(first, window, READ_BATCH_BYTES) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(bridge = %self.cfg.name, error = %e, "cannot read the bridge queue");
                return 0;
            }
        };
        let mut resent = 0;
        for rec in records {
            if rec.seq >= self.resend_below {
                break;
            }
            w.next_read = rec.seq + 1;
            let Some(mut publish) = to_publish(
                &self.outbox,
                rec.seq,
                &rec.payload,
                self.cfg.qos,
                &self.cfg.remote_prefix,
            ) else {
                continue;
            };
            publish.dup = publish.qos != QoS::AtMostOnce;
            w.submitted.push_back(rec.seq);
            w.outstanding += 1;
            eventloop.pending.push_back(Request::Publish(publish));
            resent += 1;
        }
        resent
    }

    /// Drives the event loop until the connection fails.
    async fn poll_events(&self, eventloop: &mut EventLoop, shared: &Shared) -> Result<(), String> {
        loop {
            let event = eventloop.poll().await.map_err(|e| describe_error(&e))?;
            match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(seq) = w.submitted.pop_front() else {
                        continue;
                    };
                    if pkid == 0 {
                        // QoS 0: written to the socket is as acknowledged as it gets.
                        w.outstanding = w.outstanding.saturating_sub(1);
                        let window_empty = w.outstanding == 0;
                        drop(w);
                        self.acknowledged(seq);
                        shared.room.notify_one();
                        if window_empty {
                            self.note_drained(shared);
                        }
                    } else {
                        w.by_pkid.insert(pkid, seq);
                    }
                }
                Event::Incoming(Incoming::PubAck(ack)) => self.remote_ack(shared, ack.pkid),
                Event::Incoming(Incoming::PubComp(comp)) => self.remote_ack(shared, comp.pkid),
                Event::Incoming(Incoming::Publish(p)) => self.downlink(p),
                Event::Incoming(Incoming::SubAck(ack)) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        tracing::warn!(bridge = %self.cfg.name, refused, "the cloud broker refused downlink subscriptions");
                        self.outbox
                            .stats
                            .set_error(format!("{refused} downlink subscription(s) refused"));
                    }
                }
                _ => {}
            }
        }
    }

    fn remote_ack(&self, shared: &Shared, pkid: u16) {
        let (seq, window_empty) = {
            let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
            let Some(seq) = w.by_pkid.remove(&pkid) else {
                return;
            };
            w.outstanding = w.outstanding.saturating_sub(1);
            (seq, w.outstanding == 0)
        };
        self.acknowledged(seq);
        shared.room.notify_one();
        if window_empty {
            self.note_drained(shared);
        }
    }

    /// Logs how fast the backlog found at connect drained, once the queue is empty.
    fn note_drained(&self, shared: &Shared) {
        let mut backlog = shared.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let Some((count, since)) = *backlog else {
            return;
        };
        if self.outbox.queue.stats().map_or(true, |s| s.len > 0) {
            return;
        }
        *backlog = None;
        let secs = since.elapsed().as_secs_f64();
        tracing::info!(
            bridge = %self.cfg.name,
            messages = count,
            seconds = format!("{secs:.3}"),
            rate = (count as f64 / secs.max(1e-6)) as u64,
            "bridge backlog drained"
        );
    }

    fn acknowledged(&self, seq: u64) {
        self.outbox.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.outbox.queue.ack(seq) {
            tracing::error!(bridge = %self.cfg.name, seq, error = %e, "cannot acknowledge a queue record; it will be sent again");
        }
    }

    /// A message from the cloud: strip the prefix and publish it locally.
    fn downlink(&self, p: Publish) {
        let prefix = &self.cfg.remote_prefix;
        let Some(local) = p.topic.strip_prefix(prefix.as_str()) else {
            tracing::warn!(bridge = %self.cfg.name, topic = %p.topic, "downlink message outside remote_prefix ignored");
            return;
        };
        if local.is_empty() || holdfast_mqtt::topic::validate_topic_name(local).is_err() {
            tracing::warn!(bridge = %self.cfg.name, topic = %p.topic, "downlink message with an invalid local topic ignored");
            return;
        }
        self.outbox.stats.downlink.fetch_add(1, Ordering::Relaxed);
        let message = Message {
            topic: ByteStr::from(local),
            payload: p.payload,
            qos: from_qos(p.qos),
            retain: p.retain,
            properties: Default::default(),
            publisher: Some(bridge_session_id(self.outbox.index)),
            expires_at: None,
        };
        self.broker.publish_internal(message);
    }

    fn options(&self) -> Result<MqttOptions, String> {
        let c = &self.cfg;
        let mut o = MqttOptions::new(c.client_id.clone(), c.server.host.clone(), c.server.port);
        o.set_clean_session(false);
        o.set_keep_alive(c.keepalive);
        o.set_inflight(c.max_inflight);
        let max = self.broker.config.mqtt.max_packet_size as usize;
        // Records carry topic, payload and properties; leave room for the prefix and header.
        o.set_max_packet_size(max, max + 64 * 1024);
        if let Some(user) = &c.username {
            o.set_credentials(user.clone(), c.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &c.tls {
            let read = |path: &std::path::Path, what: &str| {
                std::fs::read(path)
                    .map_err(|e| format!("cannot read TLS {what} {}: {e}", path.display()))
            };
            let ca = read(&tls.ca, "CA file")?;
            let client_auth = match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => Some((read(cert, "certificate")?, read(key, "key")?)),
                _ => None,
            };
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        Ok(o)
    }
}

/// Reads the queue into rumqttc's request channel while the window has room.
async fn feed(
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
    client: AsyncClient,
    window: usize,
    qos: u8,
    prefix: String,
) {
    loop {
        let (room, from) = {
            let w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
            if w.closed {
                return;
            }
            (window.saturating_sub(w.outstanding), w.next_read)
        };
        if room == 0 {
            shared.room.notified().await;
            continue;
        }
        let records = match outbox.queue.read(from, room, READ_BATCH_BYTES) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(bridge = %outbox.name, error = %e, "cannot read the bridge queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if records.is_empty() {
            // A permit left by an append since the read above makes this return at once.
            outbox.new_data.notified().await;
            continue;
        }
        for rec in records {
            let publish = to_publish(&outbox, rec.seq, &rec.payload, qos, &prefix);
            {
                let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
                if w.closed {
                    return;
                }
                w.next_read = rec.seq + 1;
                if publish.is_some() {
                    w.submitted.push_back(rec.seq);
                    w.outstanding += 1;
                }
            }
            let Some(p) = publish else {
                continue;
            };
            if client
                .publish_bytes(p.topic, p.qos, p.retain, p.payload)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// The upstream PUBLISH for a queue record, or `None` (after acknowledging and counting it)
/// when it cannot be sent: expired in the queue, or damaged.
fn to_publish(outbox: &Outbox, seq: u64, bytes: &[u8], qos: u8, prefix: &str) -> Option<Publish> {
    let stored: StoredMessage = match record::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(bridge = %outbox.name, seq, error = %e, "damaged bridge queue record skipped");
            outbox.stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
            let _ = outbox.queue.ack(seq);
            return None;
        }
    };
    let Some(message) = persist::from_stored(stored, Instant::now()) else {
        outbox.stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
        let _ = outbox.queue.ack(seq);
        return None;
    };
    let mut publish = Publish::from_bytes(
        format!("{prefix}{}", message.topic),
        qos_of(qos),
        message.payload,
    );
    publish.retain = message.retain;
    Some(publish)
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn from_qos(q: QoS) -> holdfast_mqtt::QoS {
    match q {
        QoS::AtMostOnce => holdfast_mqtt::QoS::AtMostOnce,
        QoS::AtLeastOnce => holdfast_mqtt::QoS::AtLeastOnce,
        QoS::ExactlyOnce => holdfast_mqtt::QoS::ExactlyOnce,
    }
}

fn describe_error(e: &rumqttc::ConnectionError) -> String {
    match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("the cloud broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}
