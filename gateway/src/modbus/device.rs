//! One polled device's broker client (`$modbus/{device}`): publishes what its line read, takes
//! writes from `{prefix}/{device}/set/{point}` and answers them.
//!
//! Owns the device's client session (reconnected after a kick or a takeover), publish-on-change
//! (`holdfast_modbus::report`), the checks of a write before it reaches the line (the point
//! exists, is writable, the value fits its type and range) and the answer on the MQTT 5
//! response topic with its correlation data, or on `{prefix}/{device}/set/{point}/result`.
//! Never talks to the device: the line task does.

use super::{Event, Status, WriteCommand};
use crate::broker::client::{
    Client, ClientOptions, ConnectError, Credentials, Protocol, Publication, PublishError,
};
use crate::broker::Broker;
use crate::config::{MessageMode, ModbusDevice, ModbusTransport};
use bytes::Bytes;
use holdfast_modbus::report::{device_json, point_json, Reporter};
use holdfast_modbus::value::{encode, parse_payload};
use holdfast_mqtt::QoS;
use serde_json::{json, Value as Json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Time between attempts to (re)connect the device's client.
const RECONNECT: Duration = Duration::from_secs(1);
/// Publications waiting for the client (it is reconnecting, or the broker is slow to take
/// them); beyond it the oldest are dropped and counted as publish errors.
const MAX_PENDING: usize = 100_000;

/// What a device task needs.
#[derive(Debug)]
pub(super) struct Device {
    /// Index in config order.
    pub index: usize,
    /// Its configuration.
    pub config: Arc<ModbusDevice>,
    /// `[modbus].topic_prefix`.
    pub prefix: String,
    /// Counters and the status table.
    pub status: Arc<Status>,
    /// Samples and write outcomes from the line.
    pub events: mpsc::Receiver<Event>,
    /// Writes to the line.
    pub writes: mpsc::Sender<WriteCommand>,
}

/// Where a write's outcome goes.
#[derive(Debug)]
pub(crate) struct Reply {
    topic: String,
    correlation: Option<Bytes>,
    value: Json,
}

/// Runs the device's client until shutdown.
pub(super) async fn run(mut d: Device, broker: Arc<Broker>) {
    let shutdown = broker.shutdown.clone();
    let mut reporter = Reporter::new(d.config.points.len());
    let mut pending: VecDeque<Publication> = VecDeque::new();
    loop {
        // While the client is not connected the line's samples are still taken (into
        // `pending`, bounded), so the line never waits on this device.
        let connecting = connect(d.config.clone(), d.prefix.clone(), broker.clone());
        tokio::pin!(connecting);
        let mut client = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = &mut connecting => match c {
                    Some(c) => break c,
                    None => {
                        let retry = tokio::time::sleep(RECONNECT);
                        tokio::pin!(retry);
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = &mut retry => break,
                                event = d.events.recv() => match event {
                                    Some(event) => publications(&d, &mut reporter, event, &mut pending),
                                    None => return,
                                },
                            }
                        }
                        connecting.set(connect(d.config.clone(), d.prefix.clone(), broker.clone()));
                    }
                },
                event = d.events.recv() => match event {
                    Some(event) => publications(&d, &mut reporter, event, &mut pending),
                    None => return,
                },
            }
        };
        // Publishes what is pending, then serves events and commands until the client closes.
        let closed = loop {
            if let Some(p) = pending.front() {
                match client.publish(p.clone()).await {
                    Ok(_) => {
                        d.status.counters.published.fetch_add(1, Ordering::Relaxed);
                        pending.pop_front();
                    }
                    Err(PublishError::Closed) => break true,
                    Err(e) => {
                        d.status
                            .counters
                            .publish_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(device = %d.config.name, topic = %p.topic, "modbus: publish refused: {e}");
                        pending.pop_front();
                    }
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                event = d.events.recv() => match event {
                    Some(event) => publications(&d, &mut reporter, event, &mut pending),
                    None => break false,
                },
                received = client.recv() => match received {
                    Some(m) => {
                        if let Some(p) = command(&d, &m) {
                            pending.push_back(p);
                        }
                        client.ack(&m);
                    }
                    None => break true,
                },
            }
        };
        if !closed || shutdown.is_cancelled() {
            client.disconnect();
            return;
        }
        tracing::warn!(device = %d.config.name, "modbus: the device's broker client was closed ({:?}); reconnecting", client.closed());
        drop(client);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// Connects `$modbus/{device}` and subscribes it to its `set` topics.
async fn connect(config: Arc<ModbusDevice>, prefix: String, broker: Arc<Broker>) -> Option<Client> {
    let peer = match &config.transport {
        ModbusTransport::Tcp(addr) => *addr,
        ModbusTransport::Rtu(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    // Under `$`: MQTT clients cannot take it (a poller whose session an MQTT client took
    // would stop, and with it every device on its line).
    let mut opts = ClientOptions::new(format!("$modbus/{}", config.name), Protocol::Modbus, peer);
    opts.credentials = Credentials::Gateway {
        username: config.username.clone(),
    };
    let mut client = match Client::connect(&broker, opts).await {
        Ok(c) => c,
        Err(ConnectError::ShuttingDown) => return None,
        Err(e) => {
            tracing::warn!(device = %config.name, "modbus: the device's broker client cannot connect: {e}");
            return None;
        }
    };
    let filter = format!("{}/{}/set/+", prefix, config.name);
    if config.points.iter().any(|p| p.writable) {
        for result in client.subscribe(&[(filter.as_str(), QoS::AtLeastOnce)]) {
            if let Err(e) = result {
                tracing::warn!(device = %config.name, filter = %filter, "modbus: writes through MQTT are off: subscribe refused: {e}");
            }
        }
    }
    Some(client)
}

/// Turns a line event into what is published.
fn publications(
    d: &Device,
    reporter: &mut Reporter,
    event: Event,
    out: &mut VecDeque<Publication>,
) {
    let before = out.len();
    publications_of(d, reporter, event, out);
    let excess = out.len().saturating_sub(MAX_PENDING);
    if excess > 0 {
        out.drain(..excess);
        d.status
            .counters
            .publish_errors
            .fetch_add(excess as u64, Ordering::Relaxed);
        if before < MAX_PENDING {
            tracing::warn!(device = %d.config.name, "modbus: {MAX_PENDING} samples wait for the broker; dropping the oldest");
        }
    }
}

fn publications_of(
    d: &Device,
    reporter: &mut Reporter,
    event: Event,
    out: &mut VecDeque<Publication>,
) {
    let cfg = &d.config;
    let qos = QoS::from_u8(cfg.qos).unwrap_or(QoS::AtLeastOnce);
    match event {
        Event::Poll { ts_ms, samples } => {
            let offered: Vec<usize> = samples
                .iter()
                .enumerate()
                .filter(|(i, s)| reporter.offer(*i, &cfg.points[*i], s, cfg.publish))
                .map(|(i, _)| i)
                .collect();
            let publication = |topic: String, payload: Json| {
                let p = Publication::new(topic, payload.to_string().into_bytes(), qos);
                if cfg.retain {
                    p.retained()
                } else {
                    p
                }
            };
            match cfg.message {
                MessageMode::Point => {
                    for i in offered {
                        let point = &cfg.points[i];
                        out.push_back(publication(
                            format!("{}/{}/{}", d.prefix, cfg.name, point.name),
                            point_json(ts_ms, point, &samples[i]),
                        ));
                    }
                }
                MessageMode::Device if !offered.is_empty() => {
                    // Every point, so the message (and a retained one) is the whole device.
                    let items = cfg.points.iter().zip(samples.iter());
                    out.push_back(publication(
                        format!("{}/{}", d.prefix, cfg.name),
                        device_json(ts_ms, items),
                    ));
                }
                MessageMode::Device => {}
            }
        }
        Event::Written {
            point,
            reply,
            outcome,
        } => {
            let name = cfg.points.get(point).map_or("", |p| p.name.as_str());
            let body = match outcome {
                Ok(()) => {
                    json!({"ts": super::now_ms(), "point": name, "value": reply.value, "ok": true})
                }
                Err((quality, detail)) => json!({
                    "ts": super::now_ms(), "point": name, "value": reply.value, "ok": false,
                    "error": quality.as_str(), "detail": detail,
                }),
            };
            out.push_back(answer(reply.topic, reply.correlation, body));
        }
    }
}

/// Handles a message on `{prefix}/{device}/set/{point}`: checks it and hands it to the line,
/// or returns the refusal to publish.
fn command(d: &Device, m: &crate::broker::client::Received) -> Option<Publication> {
    let topic = m.message.topic.as_str();
    let props = &m.message.properties;
    // A response topic under the prefix (another device's `set` topic...) or under `$` is not
    // followed: the answer, published as the poller, would act there.
    let reply_topic = props
        .response_topic
        .as_ref()
        .map(|t| t.as_str())
        .filter(|t| !t.starts_with('$') && !t.starts_with(&format!("{}/", d.prefix)))
        .map_or_else(|| format!("{topic}/result"), str::to_owned);
    let correlation = props.correlation_data.clone();
    let point_name = topic.rsplit('/').next().unwrap_or_default();
    let refuse = |error: &str, detail: String| {
        d.status
            .counters
            .write_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = %d.config.name, point = %point_name, "modbus: write refused: {detail}");
        Some(answer(
            reply_topic.clone(),
            correlation.clone(),
            json!({"ts": super::now_ms(), "point": point_name, "ok": false, "error": error, "detail": detail}),
        ))
    };
    let Some(index) = d.config.points.iter().position(|p| p.name == point_name) else {
        return refuse(
            "unknown_point",
            format!("device {:?} has no point {point_name:?}", d.config.name),
        );
    };
    let point = &d.config.points[index];
    let value = match parse_payload(point, &m.message.payload) {
        Ok(v) => v,
        Err(e) => return refuse("bad_value", e.to_string()),
    };
    let write = match encode(point, &value) {
        Ok(w) => w,
        Err(holdfast_modbus::value::WriteError::NotWritable) => {
            return refuse(
                "not_writable",
                format!("point {point_name:?} is not writable"),
            )
        }
        Err(e) => return refuse("bad_value", e.to_string()),
    };
    let command = WriteCommand {
        device: d.index,
        point: index,
        write,
        reply: Reply {
            topic: reply_topic.clone(),
            correlation: correlation.clone(),
            value,
        },
        queued: tokio::time::Instant::now(),
    };
    match d.writes.try_send(command) {
        Ok(()) => None,
        Err(_) => refuse(
            "busy",
            format!("{} writes are already waiting for the line", super::WRITES),
        ),
    }
}

/// A write's answer, with the correlation data echoed.
fn answer(topic: String, correlation: Option<Bytes>, body: Json) -> Publication {
    let mut p = Publication::new(topic, body.to_string().into_bytes(), QoS::AtLeastOnce);
    p.properties.correlation_data = correlation;
    p
}
