//! One bridge's connection to its cloud broker (rumqttc, MQTT 3.1.1 or 5 through [`wire`]):
//! connect with backoff,
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
use super::wire::{self, InMsg, OutMsg, Poller, Sender, WireEvent};
use crate::broker::message::Message;
use crate::broker::{persist, Broker};
use crate::config::BridgeConfig;
use holdfast_mqtt::{ByteStr, QoS};
use holdfast_storage::kv::StoredMessage;
use holdfast_storage::record;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most payload bytes read from the queue in one go.
const READ_BATCH_BYTES: usize = 1024 * 1024;

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
        let window = usize::from(self.cfg.max_inflight);
        let max_packet = self.broker.config.mqtt.max_packet_size as usize;
        let (client, mut poller) = wire::new_client(&self.cfg, max_packet, window.max(8))?;
        let session_present = poller.connect().await?;
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
        self.subscribe_downlink(&client, session_present)?;
        let shared = Arc::new(Shared {
            window: Mutex::new(Window::default()),
            backlog: Mutex::new((stats.len > 0).then(|| (stats.len, Instant::now()))),
            room: tokio::sync::Notify::new(),
        });
        let first = stats.first_unacked.unwrap_or(stats.next_seq);
        let resent = self.queue_resends(&mut poller, &shared, first, window);
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
        let result = self.poll_events(&mut poller, &shared).await;
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

    /// Subscribes the downlink filters, unless the cloud kept a session that already has exactly
    /// these subscriptions: a SUBSCRIBE makes the broker resend retained messages (MQTT 3.1.1
    /// cannot opt out; MQTT 5 asks for retained messages on new subscriptions only), and a
    /// replayed retained command must not reach the devices again on every reconnect.
    fn subscribe_downlink(&self, client: &Sender, session_present: bool) -> Result<(), String> {
        let marker = self
            .broker
            .config
            .node
            .data_dir
            .join("bridges")
            .join(format!("{}.subscriptions", self.cfg.name));
        let wanted = format!(
            "{}\n{}\n{}\n",
            self.cfg.client_id,
            self.cfg.qos,
            self.cfg
                .subscribe
                .iter()
                .map(|f| format!("{}{f}", self.cfg.remote_prefix))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let known = std::fs::read_to_string(&marker).is_ok_and(|had| had == wanted);
        if self.cfg.subscribe.is_empty() || (session_present && known) {
            return Ok(());
        }
        let filters = self
            .cfg
            .subscribe
            .iter()
            .map(|f| format!("{}{f}", self.cfg.remote_prefix))
            .collect();
        client.subscribe(filters, self.cfg.qos)?;
        if !known {
            if let Err(e) = std::fs::write(&marker, wanted) {
                tracing::warn!(bridge = %self.cfg.name, path = %marker.display(), error = %e, "cannot record the downlink subscriptions; they will be renewed at every reconnect");
            }
        }
        Ok(())
    }

    /// Puts the oldest unacknowledged records that may have been sent before (at most a
    /// window) into rumqttc's pending list with DUP set; they leave before anything else.
    fn queue_resends(
        &self,
        poller: &mut Poller,
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
            let Some(publish) = to_publish(
                &self.outbox,
                rec.seq,
                &rec.payload,
                self.cfg.qos,
                &self.cfg.remote_prefix,
            ) else {
                continue;
            };
            w.submitted.push_back(rec.seq);
            w.outstanding += 1;
            poller.push_resend(publish);
            resent += 1;
        }
        resent
    }

    /// Drives the event loop until the connection fails.
    async fn poll_events(&self, poller: &mut Poller, shared: &Shared) -> Result<(), String> {
        loop {
            match poller.next().await? {
                WireEvent::Sent(pkid) => {
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
                WireEvent::Acked { pkid, refused } => {
                    if let Some(reason) = refused {
                        self.outbox
                            .stats
                            .dropped_refused_by_cloud
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(bridge = %self.cfg.name, reason, "the cloud broker refused a forwarded message; it is dropped (resending would be refused again)");
                    }
                    self.remote_ack(shared, pkid);
                }
                WireEvent::Downlink(m) => self.downlink(m),
                WireEvent::BadDownlink(why) => {
                    tracing::warn!(bridge = %self.cfg.name, why, "downlink message ignored");
                }
                WireEvent::SubscriptionsRefused(0) | WireEvent::Other => {}
                WireEvent::SubscriptionsRefused(refused) => {
                    tracing::warn!(bridge = %self.cfg.name, refused, "the cloud broker refused downlink subscriptions");
                    self.outbox
                        .stats
                        .set_error(format!("{refused} downlink subscription(s) refused"));
                }
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
    fn downlink(&self, p: InMsg) {
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
        let expires_at = p
            .properties
            .message_expiry_interval
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        let message = Message {
            topic: ByteStr::from(local),
            payload: p.payload,
            qos: QoS::from_u8(p.qos).unwrap_or(QoS::AtMostOnce),
            retain: p.retain,
            properties: p.properties,
            publisher: Some(bridge_session_id(self.outbox.index)),
            publisher_client_id: None,
            expires_at,
        };
        self.broker.publish_internal(message);
    }
}

/// Reads the queue into rumqttc's request channel while the window has room.
async fn feed(
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
    client: Sender,
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
            if client.publish(p).await.is_err() {
                return;
            }
        }
    }
}

/// The upstream PUBLISH for a queue record, or `None` (after acknowledging and counting it)
/// when it cannot be sent: expired in the queue, or damaged.
fn to_publish(outbox: &Outbox, seq: u64, bytes: &[u8], qos: u8, prefix: &str) -> Option<OutMsg> {
    let stored: StoredMessage = match record::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(bridge = %outbox.name, seq, error = %e, "damaged bridge queue record skipped");
            outbox.stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
            let _ = outbox.queue.ack(seq);
            return None;
        }
    };
    let now = Instant::now();
    let Some(message) = persist::from_stored(stored, now) else {
        outbox.stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
        let _ = outbox.queue.ack(seq);
        return None;
    };
    let mut properties = message.properties.clone();
    properties.message_expiry_interval = message.remaining_expiry(now);
    Some(OutMsg {
        topic: format!("{prefix}{}", message.topic),
        payload: message.payload,
        qos,
        retain: message.retain,
        properties,
    })
}
