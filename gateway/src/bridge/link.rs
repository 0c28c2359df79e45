//! One bridge's link to its cloud broker: connect with backoff, drain the disk queue through
//! the session's window, acknowledge queue records as the cloud answers them, dead-letter what
//! the cloud refuses, and publish downlink messages locally.
//!
//! Owns the I/O loop of a bridge and the two small files that carry its MQTT session across
//! restarts: `{data_dir}/bridges/{name}.session` (QoS 2 handshake state, see
//! `Persisted`) and `{data_dir}/bridges/{name}.subscriptions` (the downlink filters the
//! cloud confirmed with a SUBACK). The protocol rules live in `session` (sans-IO),
//! the socket in `net`. It never holds the router lock, and never touches the queue's
//! files except through [`GroupCommit`](holdfast_storage::queue::GroupCommit).
//!
//! A record leaves the queue only when the cloud answered it (PUBACK/PUBCOMP, or a refusal
//! that is counted as dead-lettered; QoS 0 once written and flushed), so a lost connection, a
//! `kill -9` or a power cut means "send again from the oldest unanswered", never "lost". Resends
//! carry DUP and the record's own packet id. One task per connection, one `select!` over
//! reading, writing, new queue data, keepalive and shutdown; every branch is cancel-safe.
//!
//! The session file is written (temporary file + rename, no fsync) before any packet that
//! depends on it leaves: it survives `kill -9`; a power cut may lose the last change, which
//! can cost one duplicate QoS 2 delivery upstream or downstream, never a lost message.

use super::backoff::Backoff;
use super::net::{self, Conn, NetError};
use super::outbox::Outbox;
use super::session::{Event, Limits, OutMsg, Persisted, Refusal, Session};
use super::stats::LinkState;
use crate::broker::client::{Client, ClientOptions, Protocol, Publication};
use crate::broker::message::Message;
use crate::broker::{persist, Broker};
use crate::config::BridgeConfig;
use bytes::BytesMut;
use holdfast_mqtt::{encode, ByteStr, Packet, Publish, QoS};
use holdfast_storage::kv::StoredMessage;
use holdfast_storage::record;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Most payload bytes read from the queue in one go.
const READ_BATCH_BYTES: usize = 1024 * 1024;
/// Most records read from the queue in one go.
const READ_BATCH_RECORDS: usize = 512;
/// Encoded bytes waiting for the socket before the link stops reading the queue.
const WRITE_BUFFER_HIGH: usize = 256 * 1024;
/// A connection that lasted this long resets the reconnect backoff; one that drops sooner
/// (a cloud that accepts and then closes) keeps backing off.
const STABLE_AFTER: Duration = Duration::from_secs(10);

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
    session: Session,
    session_file: PathBuf,
    subscriptions_file: PathBuf,
    /// A cloud broker can send refused messages many times a second: one line per 10 s.
    refused_log: crate::logging::Every,
}

/// One connection's working state.
struct Conveyor {
    conn: Conn,
    wbuf: BytesMut,
    /// True after a write until a flush completed (TLS keeps bytes in its own buffer).
    unflushed: bool,
    /// QoS 0 records in `wbuf`: acknowledged once it is written and flushed.
    qos0_written: Vec<u64>,
    /// The next seq to read from the queue.
    next_read: u64,
    /// The backlog found at connect (records, when) until the queue first runs empty.
    backlog: Option<(u64, Instant)>,
    /// Downlink filters the cloud confirmed.
    subscribed: BTreeSet<String>,
    /// The bridge inside the broker: a client (protocol `bridge`) that publishes the downlink
    /// under the ACL, shows in `$SYS` and `holdfast ctl clients`, and can be kicked.
    client: Client,
    last_in: Instant,
    last_out: Instant,
    ping_sent: Option<Instant>,
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
        let dir = broker.config.node.data_dir.join("bridges");
        let session_file = dir.join(format!("{}.session", cfg.name));
        let subscriptions_file = dir.join(format!("{}.subscriptions", cfg.name));
        let restored = load_session(&session_file, &cfg.name);
        let session = Session::new(
            net::protocol(&cfg),
            Limits {
                max_inflight: cfg.max_inflight,
                max_packet: cfg.max_packet_size,
            },
            restored,
        );
        Link {
            cfg,
            outbox,
            broker,
            shutdown,
            resend_below,
            session,
            session_file,
            subscriptions_file,
            refused_log: crate::logging::Every::new(Duration::from_secs(10)),
        }
    }

    /// Connects, forwards, reconnects with backoff; returns when the gateway shuts down.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut connected_before = false;
        let shutdown = self.shutdown.clone();
        loop {
            self.outbox.stats.set_state(LinkState::Connecting);
            let mut up_since = None;
            let outcome = tokio::select! {
                outcome = self.connection(&mut up_since, &mut connected_before) => outcome,
                () = shutdown.cancelled() => Ok(()),
            };
            if self.shutdown.is_cancelled() {
                self.outbox.stats.set_state(LinkState::Stopped);
                return;
            }
            if up_since.is_some_and(|t: Instant| t.elapsed() >= STABLE_AFTER) {
                backoff.reset();
            }
            self.outbox.stats.set_state(LinkState::Down);
            self.outbox
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            let why = match outcome {
                Ok(()) => "connection closed".to_owned(),
                Err(e) => e.to_string(),
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
        up_since: &mut Option<Instant>,
        connected_before: &mut bool,
    ) -> Result<(), NetError> {
        let max_in = self.broker.config.mqtt.max_packet_size as usize;
        let (conn, connack) = net::connect(&self.cfg, max_in).await?;
        let client = Client::connect(&self.broker, downlink_client(&self.cfg.name, conn.peer))
            .await
            .map_err(|e| NetError::Local(e.to_string()))?;
        *up_since = Some(Instant::now());
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
            session_present = connack.session_present,
            queued = stats.len,
            queued_bytes = stats.bytes,
            "bridge up"
        );
        let resume = self.session.on_connack(&connack);
        for seq in resume.delivered {
            self.acknowledged(seq);
        }
        let mut c = Conveyor {
            conn,
            wbuf: BytesMut::with_capacity(16 * 1024),
            unflushed: false,
            qos0_written: Vec::new(),
            next_read: stats.first_unacked.unwrap_or(stats.next_seq),
            backlog: (stats.len > 0).then(|| (stats.len, Instant::now())),
            subscribed: BTreeSet::new(),
            last_in: Instant::now(),
            last_out: Instant::now(),
            ping_sent: None,
            client,
        };
        self.outbox
            .set_downlink_session(Some(c.client.session_id()));
        let protocol = self.session.protocol();
        for p in &resume.pubrels {
            encode(p, protocol, &mut c.wbuf)?;
        }
        if !resume.pubrels.is_empty() {
            tracing::info!(bridge = %self.cfg.name, count = resume.pubrels.len(), "resuming QoS 2 flows at PUBREL");
        }
        self.persist_session();
        self.subscribe_downlink(&mut c, connack.session_present)?;
        let result = self.pump(&mut c).await;
        self.outbox.set_downlink_session(None);
        // Whatever was handed to this connection may have arrived: DUP next time.
        self.resend_below = self.resend_below.max(c.next_read);
        result
    }

    /// The I/O loop of one connection.
    async fn pump(&mut self, c: &mut Conveyor) -> Result<(), NetError> {
        let keepalive = self.cfg.keepalive;
        let mut tick = tokio::time::interval((keepalive / 4).max(Duration::from_millis(500)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = Vec::new();
        loop {
            let caught_up = self.fill(c)?;
            let outbox = self.outbox.clone();
            let Conveyor {
                conn,
                wbuf,
                unflushed,
                client,
                ..
            } = c;
            let Conn {
                reader,
                writer,
                rbuf,
                ..
            } = conn;
            let must_write = !wbuf.is_empty() || *unflushed;
            tokio::select! {
                read = reader.read_buf(rbuf) => {
                    if read? == 0 {
                        return Err(NetError::Closed);
                    }
                    c.last_in = Instant::now();
                    c.ping_sent = None;
                    while let Some(packet) = c.conn.decode_next()? {
                        self.session.on_packet(packet, &mut events);
                    }
                    for event in events.drain(..) {
                        self.on_event(c, event).await?;
                    }
                    self.persist_session();
                }
                written = async {
                    if !wbuf.is_empty() {
                        writer.write_buf(wbuf).await?;
                        *unflushed = true;
                    }
                    if wbuf.is_empty() {
                        writer.flush().await?;
                        *unflushed = false;
                    }
                    Ok::<(), std::io::Error>(())
                }, if must_write => {
                    written?;
                    c.last_out = Instant::now();
                    if c.wbuf.is_empty() && !c.unflushed {
                        for seq in std::mem::take(&mut c.qos0_written) {
                            self.acknowledged(seq);
                        }
                        self.note_progress(c);
                    }
                }
                () = outbox.new_data.notified(), if caught_up => {}
                _ = tick.tick() => self.keep_alive(c)?,
                why = client.closing() => {
                    return Err(NetError::Local(format!("closed ({})", why.as_str())));
                }
            }
        }
    }

    /// Reads records into the write buffer while the window and the buffer have room.
    /// Returns true when the queue has nothing more to send (the caller waits for new data).
    fn fill(&mut self, c: &mut Conveyor) -> Result<bool, NetError> {
        let protocol = self.session.protocol();
        // One clock reading per fill: message expiry needs no finer grain than a batch.
        let now = Instant::now();
        while c.wbuf.len() < WRITE_BUFFER_HIGH {
            if !self.session.has_room_for(c.next_read) {
                return Ok(false);
            }
            // No more than the window takes: a full window frees a few slots per read of the
            // cloud's acks, and records read past them would be read (and copied) again.
            let want = self.session.window_room().clamp(1, READ_BATCH_RECORDS);
            let records = match self.outbox.queue.read(c.next_read, want, READ_BATCH_BYTES) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(bridge = %self.cfg.name, error = %e, "cannot read the bridge queue");
                    self.outbox.stats.set_error(format!("queue: {e}"));
                    return Ok(false);
                }
            };
            if records.is_empty() {
                self.note_progress(c);
                return Ok(true);
            }
            for rec in records {
                if !self.session.has_room_for(rec.seq) || c.wbuf.len() >= WRITE_BUFFER_HIGH {
                    break;
                }
                c.next_read = rec.seq + 1;
                if self.session.is_released(rec.seq) {
                    continue;
                }
                if self.session.is_done(rec.seq) {
                    // Completed upstream before a crash took its acknowledgement with it.
                    if let Err(e) = self.outbox.queue.ack(rec.seq) {
                        tracing::error!(bridge = %self.cfg.name, seq = rec.seq, error = %e, "cannot acknowledge a completed record");
                    }
                    continue;
                }
                let Some((msg, topic)) = self.to_publish(rec.seq, &rec.payload, now) else {
                    continue;
                };
                let dup = rec.seq < self.resend_below;
                match self.session.publish(rec.seq, msg, dup) {
                    Ok(packet) => {
                        encode(&packet, protocol, &mut c.wbuf)?;
                        if let Packet::Publish(Publish {
                            qos: QoS::AtMostOnce,
                            ..
                        }) = packet
                        {
                            c.qos0_written.push(rec.seq);
                        }
                        if dup {
                            self.outbox.stats.resent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(refusal) => self.dead_letter(rec.seq, &refusal, Some(&topic)),
                }
            }
        }
        Ok(false)
    }

    async fn on_event(&mut self, c: &mut Conveyor, event: Event) -> Result<(), NetError> {
        match event {
            Event::Send(p) => encode(&p, self.session.protocol(), &mut c.wbuf)?,
            Event::Delivered(seq) => self.acknowledged(seq),
            Event::Refused(seq, refusal) => self.dead_letter(seq, &refusal, None),
            Event::Downlink(p) => self.downlink(&mut c.client, p).await,
            Event::Subscribed(results) => {
                for (filter, result) in results {
                    match result {
                        Ok(_) => {
                            c.subscribed.insert(filter);
                        }
                        Err(code) => {
                            tracing::warn!(bridge = %self.cfg.name, filter, reason = %super::session::reason_name(code), "the cloud broker refused a downlink subscription");
                            self.outbox.stats.set_error(format!(
                                "downlink subscription {filter} refused ({})",
                                super::session::reason_name(code)
                            ));
                        }
                    }
                }
                self.save_subscriptions(&c.subscribed);
            }
            Event::Violation(why) => return Err(NetError::Protocol(why)),
        }
        Ok(())
    }

    /// Sends PINGREQ when the link was quiet; gives up when the cloud stopped answering.
    fn keep_alive(&mut self, c: &mut Conveyor) -> Result<(), NetError> {
        let keepalive = self.cfg.keepalive;
        if let Some(sent) = c.ping_sent {
            if sent.elapsed() >= keepalive {
                return Err(NetError::Protocol(format!(
                    "no answer to PINGREQ within {keepalive:?}"
                )));
            }
            return Ok(());
        }
        if c.last_out.elapsed() >= keepalive / 2 || c.last_in.elapsed() >= keepalive / 2 {
            encode(&Packet::PingReq, self.session.protocol(), &mut c.wbuf)?;
            c.ping_sent = Some(Instant::now());
        }
        Ok(())
    }

    /// Subscribes the downlink filters the cloud session does not have yet (all of them
    /// without a session), and unsubscribes the ones the config no longer has. A filter
    /// counts as subscribed only after a successful SUBACK, so a connection lost before it
    /// subscribes again next time. Re-subscribing is avoided because a SUBSCRIBE makes a
    /// 3.1.1 broker resend retained messages, and a replayed retained command must not reach
    /// the devices again at every reconnect.
    fn subscribe_downlink(
        &mut self,
        c: &mut Conveyor,
        session_present: bool,
    ) -> Result<(), NetError> {
        c.subscribed = if session_present {
            self.load_subscriptions()
        } else {
            BTreeSet::new()
        };
        let wanted: BTreeSet<String> = self
            .cfg
            .subscribe
            .iter()
            .map(|f| format!("{}{f}", self.cfg.remote_prefix))
            .collect();
        let stale: Vec<String> = c.subscribed.difference(&wanted).cloned().collect();
        let missing: Vec<String> = wanted.difference(&c.subscribed).cloned().collect();
        let protocol = self.session.protocol();
        if !stale.is_empty() {
            for f in &stale {
                c.subscribed.remove(f);
            }
            let p = self.session.unsubscribe(stale);
            encode(&p, protocol, &mut c.wbuf)?;
        }
        self.save_subscriptions(&c.subscribed);
        if !missing.is_empty() {
            let qos = QoS::from_u8(self.cfg.qos).unwrap_or(QoS::AtLeastOnce);
            let p = self.session.subscribe(missing, qos);
            encode(&p, protocol, &mut c.wbuf)?;
        }
        Ok(())
    }

    /// The first lines of the subscriptions file: what the filters below were subscribed as.
    fn subscriptions_header(&self) -> String {
        format!(
            "{}\n{} no_local={}\n",
            self.cfg.client_id,
            self.cfg.qos,
            self.session.protocol().is_v5()
        )
    }

    fn load_subscriptions(&self) -> BTreeSet<String> {
        let Ok(text) = std::fs::read_to_string(&self.subscriptions_file) else {
            return BTreeSet::new();
        };
        match text.strip_prefix(&self.subscriptions_header()) {
            Some(rest) => rest.lines().map(str::to_owned).collect(),
            None => BTreeSet::new(),
        }
    }

    fn save_subscriptions(&self, subscribed: &BTreeSet<String>) {
        let mut text = self.subscriptions_header();
        for f in subscribed {
            text.push_str(f);
            text.push('\n');
        }
        if let Err(e) = write_replace(&self.subscriptions_file, text.as_bytes()) {
            tracing::warn!(bridge = %self.cfg.name, path = %self.subscriptions_file.display(), error = %e, "cannot record the downlink subscriptions; they will be renewed at the next reconnect");
        }
    }

    /// Writes the session state if it changed; before any packet that depends on it leaves.
    fn persist_session(&mut self) {
        // Only QoS 2 leaves "done" records; a QoS 0/1 bridge never takes the queue's lock here.
        if self.session.has_done() {
            if let Ok(q) = self.outbox.queue.stats() {
                self.session.forget_done_through(q.acks_persisted_through);
            }
        }
        if !self.session.take_dirty() {
            return;
        }
        let text = self.session.persisted().encode();
        if let Err(e) = write_replace(&self.session_file, text.as_bytes()) {
            tracing::error!(bridge = %self.cfg.name, path = %self.session_file.display(), error = %e, "cannot save the bridge's QoS 2 state; a restart may deliver a QoS 2 message twice");
            self.outbox
                .stats
                .set_error(format!("cannot save session state: {e}"));
        }
    }

    /// Logs how fast the backlog found at connect drained, once the queue is empty.
    fn note_progress(&self, c: &mut Conveyor) {
        let Some((count, since)) = c.backlog else {
            return;
        };
        if self.outbox.queue.stats().map_or(true, |s| s.len > 0) {
            return;
        }
        c.backlog = None;
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

    /// A record the cloud refused or cannot take: out of the queue, counted, logged.
    fn dead_letter(&self, seq: u64, refusal: &Refusal, topic: Option<&str>) {
        let key = refusal.key();
        if self.outbox.stats.note_dead_letter(&key) {
            tracing::warn!(
                bridge = %self.cfg.name,
                seq,
                topic = %crate::broker::short(topic.unwrap_or("?")),
                reason = %refusal,
                dead_lettered_total = self.outbox.stats.dead_lettered.load(Ordering::Relaxed),
                "dead-lettered: the cloud broker cannot take this message; it is dropped and the queue goes on"
            );
        }
        self.outbox
            .stats
            .set_error(format!("dead-lettered: {refusal}"));
        if let Err(e) = self.outbox.queue.ack(seq) {
            tracing::error!(bridge = %self.cfg.name, seq, error = %e, "cannot remove a dead-lettered record from the queue");
        }
    }

    /// The upstream message for a queue record and its local topic, or `None` (after
    /// acknowledging and counting it) when it cannot be sent: expired in the queue, or damaged.
    fn to_publish(&self, seq: u64, bytes: &[u8], now: Instant) -> Option<(OutMsg, ByteStr)> {
        let outbox = &self.outbox;
        let stored: StoredMessage = match record::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(bridge = %outbox.name, seq, error = %e, "damaged bridge queue record skipped");
                outbox.stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
                let _ = outbox.queue.ack(seq);
                return None;
            }
        };
        let Some(message) = persist::from_stored(stored, now) else {
            outbox.stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
            let _ = outbox.queue.ack(seq);
            return None;
        };
        let prefix = &self.cfg.remote_prefix;
        let remaining = message.remaining_expiry(now);
        let Message {
            topic,
            payload,
            qos,
            retain,
            mut properties,
            ..
        } = message;
        properties.message_expiry_interval = remaining;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        // A reply to the request must come back through the bridge: its topic is remote too.
        if let Some(rt) = &properties.response_topic {
            properties.response_topic = Some(ByteStr::from(format!("{prefix}{rt}")));
        }
        let bridge_qos = QoS::from_u8(self.cfg.qos).unwrap_or(QoS::AtLeastOnce);
        let mut remote = String::with_capacity(prefix.len() + topic.len());
        remote.push_str(prefix);
        remote.push_str(&topic);
        let msg = OutMsg {
            topic: ByteStr::from(remote),
            payload,
            qos: qos.min(bridge_qos),
            retain,
            properties,
        };
        // The local topic (a cheap clone), for naming the record if it is dead-lettered.
        Some((msg, topic))
    }

    /// A message from the cloud: strip the prefix and publish it locally, as the bridge's
    /// client (the ACL decides, as for any client).
    async fn downlink(&self, client: &mut Client, p: Publish) {
        let prefix = &self.cfg.remote_prefix;
        let Some(local) = p.topic.as_str().strip_prefix(prefix.as_str()) else {
            tracing::warn!(bridge = %self.cfg.name, topic = %crate::broker::short(&p.topic), "downlink message outside remote_prefix ignored");
            return;
        };
        if local.is_empty() || holdfast_mqtt::topic::validate_topic_name(local).is_err() {
            tracing::warn!(bridge = %self.cfg.name, topic = %crate::broker::short(&p.topic), "downlink message with an invalid local topic ignored");
            return;
        }
        self.outbox.stats.downlink.fetch_add(1, Ordering::Relaxed);
        let mut properties = p.properties;
        if let Some(rt) = &properties.response_topic {
            if let Some(local_rt) = rt.as_str().strip_prefix(prefix.as_str()) {
                if !local_rt.is_empty() {
                    properties.response_topic = Some(ByteStr::from(local_rt));
                }
            }
        }
        let publication = Publication {
            topic: local.to_owned(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
        };
        if let Err(e) = client.publish(publication).await {
            self.outbox
                .stats
                .downlink_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some(count) = self.refused_log.due(Instant::now()) {
                tracing::warn!(bridge = %self.cfg.name, client_id = client.client_id(), topic = %crate::broker::short(local), count, "downlink message refused: {e} (count: since the last such line)");
            }
        }
    }
}

/// How a bridge's downlink client connects: client id `$bridge/{name}` (MQTT clients cannot
/// take ids starting with `$`), the cloud broker as its peer, no session beyond the link.
fn downlink_client(name: &str, cloud: std::net::SocketAddr) -> ClientOptions {
    ClientOptions::new(format!("$bridge/{name}"), Protocol::Bridge, cloud)
}

/// The session state the last run left, or an empty one (logged when the file is damaged).
fn load_session(path: &std::path::Path, bridge: &str) -> Persisted {
    match std::fs::read_to_string(path) {
        Ok(text) => Persisted::decode(&text).unwrap_or_else(|why| {
            tracing::error!(bridge, path = %path.display(), why, "damaged bridge session file ignored; QoS 2 flows in progress restart from PUBLISH");
            Persisted::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
        Err(e) => {
            tracing::error!(bridge, path = %path.display(), error = %e, "cannot read the bridge session file");
            Persisted::default()
        }
    }
}

/// Replaces `path` with `bytes` (temporary file + rename: never a torn file).
fn write_replace(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
