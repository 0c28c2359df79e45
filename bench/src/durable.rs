//! The store-and-forward loads: `ingest` (QoS 1 devices -> broker, PUBACK rate and latency, and
//! the bytes the broker wrote to disk meanwhile) and `drain` (one subscriber on the cloud side
//! counting a backlog as it arrives).
//!
//! Owns the two loops and their reports. `ingest` keeps `inflight` PUBLISH unacknowledged per
//! publisher and times each PUBACK; it never needs a subscriber, so it measures exactly the
//! durable path (devices -> gateway -> disk). `drain` reads stamped payloads (see `stamp`) and
//! checks order, loss and duplicates per publisher. Neither panics on network input.

use crate::check::{new_histogram, ReceiverCheck};
use crate::client::{Client, Target};
use crate::error::{BenchError, Role};
use crate::report::Latency;
use crate::stamp::Stamp;
use bytes::Bytes;
use hdrhistogram::Histogram;
use holdfast_mqtt::{ByteStr, Packet, PacketId, PubResp, Publish, QoS};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What `ingest` runs.
#[derive(Debug, Clone)]
pub(crate) struct IngestSpec {
    pub(crate) publishers: u32,
    pub(crate) inflight: u16,
    pub(crate) payload: usize,
    pub(crate) duration: Duration,
    /// Stop after this many acknowledged messages in total (0 = run for `duration`).
    pub(crate) count: u64,
    pub(crate) topic_prefix: String,
    pub(crate) run: u32,
}

/// What `drain` runs.
#[derive(Debug, Clone)]
pub(crate) struct DrainSpec {
    pub(crate) filter: String,
    pub(crate) expect: u64,
    pub(crate) publishers: u32,
    pub(crate) run: u32,
    /// Give up when nothing arrived for this long (after the first message).
    pub(crate) idle_timeout: Duration,
    /// Give up when the first message has not arrived after this long.
    pub(crate) start_timeout: Duration,
    /// QoS of the subscription (0 costs the cloud broker least).
    pub(crate) qos: QoS,
}

/// Bytes the process `pid` has caused to be written to storage (`write_bytes` of /proc/PID/io).
fn write_bytes(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/io", pid?)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

struct IngestShared {
    acked: AtomicU64,
    stop_at: Instant,
    count: u64,
}

/// Runs `ingest` and returns its JSON report.
pub(crate) async fn ingest(
    target: &Target,
    spec: IngestSpec,
    pid: Option<u32>,
) -> Result<serde_json::Value, BenchError> {
    let mut clients = Vec::with_capacity(spec.publishers as usize);
    for i in 0..spec.publishers {
        let mut t = target.clone();
        t.client_prefix = format!("{}-ingest-{i}", target.client_prefix);
        clients.push(Client::connect(&t, Role::Publisher(i)).await?);
    }
    let written_before = write_bytes(pid);
    let t0 = Instant::now();
    let shared = Arc::new(IngestShared {
        acked: AtomicU64::new(0),
        stop_at: t0
            + if spec.count > 0 {
                Duration::from_secs(3600)
            } else {
                spec.duration
            },
        count: spec.count,
    });
    let mut tasks = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.spawn(ingest_publisher(
            client,
            i as u32,
            spec.clone(),
            shared.clone(),
            t0,
        ));
    }
    let mut latency = new_histogram();
    let mut errors = Vec::new();
    let mut sent = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((h, n))) => {
                sent += n;
                let _ = latency.add(&h);
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(format!("publisher task failed: {e}")),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let written = match (written_before, write_bytes(pid)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let acked = shared.acked.load(Ordering::Relaxed);
    let payload_bytes = acked * spec.payload as u64;
    Ok(json!({
        "mode": "ingest",
        "run": spec.run,
        "publishers": spec.publishers,
        "inflight": spec.inflight,
        "payload": spec.payload,
        "sent": sent,
        "acked": acked,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "ack_rate": (acked as f64 / elapsed.max(1e-9)).round(),
        "puback_latency_us": Latency::from_histogram(&latency).to_json(),
        "disk_write_bytes": written,
        "write_amplification": written.map(|w| ((w as f64 / payload_bytes.max(1) as f64) * 100.0).round() / 100.0),
        "errors": errors,
    }))
}

async fn ingest_publisher(
    mut c: Client,
    index: u32,
    spec: IngestSpec,
    shared: Arc<IngestShared>,
    t0: Instant,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let topic = ByteStr::from(format!("{}/{index}", spec.topic_prefix));
    let mut latency = new_histogram();
    let mut outstanding: HashMap<PacketId, Instant> =
        HashMap::with_capacity(spec.inflight as usize);
    let mut seq = 0u64;
    let mut payload = vec![0u8; spec.payload];
    loop {
        let done = Instant::now() >= shared.stop_at
            || (shared.count > 0
                && shared.acked.load(Ordering::Relaxed) + outstanding.len() as u64 >= shared.count);
        if done && outstanding.is_empty() {
            break;
        }
        if !done {
            while outstanding.len() < spec.inflight as usize {
                let pid = (seq % 65_535) as u16 + 1;
                let now = Instant::now();
                Stamp {
                    run: spec.run,
                    publisher: index,
                    seq,
                    sent_ns: now.duration_since(t0).as_nanos() as u64,
                }
                .write(&mut payload);
                c.queue(
                    &Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: topic.clone(),
                        packet_id: PacketId::new(pid),
                        payload: Bytes::copy_from_slice(&payload),
                        properties: Default::default(),
                    }),
                    "PUBLISH",
                )?;
                outstanding.insert(PacketId::new(pid), now);
                seq += 1;
                if shared.count > 0
                    && shared.acked.load(Ordering::Relaxed) + outstanding.len() as u64
                        >= shared.count
                {
                    break;
                }
            }
            c.flush().await?;
        }
        // Wait for acks (bounded, so the deadline is seen even if the broker stalls).
        match tokio::time::timeout(Duration::from_secs(30), c.stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BenchError::io(c.role, e)),
            Err(_) => {
                return Err(BenchError::Timeout {
                    role: c.role,
                    what: "PUBACK",
                    after: Duration::from_secs(30),
                })
            }
        }
        c.try_fill()?;
        while let Some(p) = c.next_packet()? {
            if let Packet::PubAck(PubResp { packet_id, .. }) = p {
                if let Some(at) = outstanding.remove(&packet_id) {
                    latency.saturating_record(at.elapsed().as_micros() as u64);
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    c.disconnect().await;
    Ok((latency, seq))
}

/// Runs `drain` and returns its JSON report.
pub(crate) async fn drain(
    target: &Target,
    spec: DrainSpec,
) -> Result<serde_json::Value, BenchError> {
    // Started before the cloud broker is: it connects the moment the broker listens, well
    // before a bridge's reconnect backoff runs out.
    let started = Instant::now();
    let mut c = loop {
        match Client::connect(target, Role::Subscriber(0)).await {
            Ok(c) => break c,
            Err(BenchError::Connect { .. }) if started.elapsed() < spec.start_timeout => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e),
        }
    };
    c.subscribe(&spec.filter, spec.qos).await?;
    let mut check = ReceiverCheck::new(spec.run, spec.publishers);
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut timed_out = false;
    loop {
        let unique: u64 = check.streams.iter().map(|s| s.unique).sum();
        if unique >= spec.expect {
            break;
        }
        let wait = match first {
            None => spec.start_timeout.saturating_sub(started.elapsed()),
            Some(_) => spec.idle_timeout,
        };
        match tokio::time::timeout(wait, c.stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BenchError::io(c.role, e)),
            Err(_) => {
                timed_out = true;
                break;
            }
        }
        c.try_fill()?;
        let mut acks = 0;
        while let Some(p) = c.next_packet()? {
            if let Packet::Publish(p) = p {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                check.record(&p.payload, None);
                if p.qos != QoS::AtMostOnce {
                    c.queue(
                        &Packet::PubAck(PubResp {
                            packet_id: p.packet_id,
                            reason: 0,
                            properties: Default::default(),
                        }),
                        "PUBACK",
                    )?;
                    acks += 1;
                }
            }
        }
        if acks > 0 {
            c.flush().await?;
        }
    }
    c.disconnect().await;
    let unique: u64 = check.streams.iter().map(|s| s.unique).sum();
    let duplicates: u64 = check.streams.iter().map(|s| s.duplicates).sum();
    let reordered: u64 = check.streams.iter().map(|s| s.reordered).sum();
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(json!({
        "mode": "drain",
        "expect": spec.expect,
        "received": check.received,
        "unique": unique,
        "lost": spec.expect.saturating_sub(unique),
        "duplicates": duplicates,
        "reordered": reordered,
        "foreign": check.foreign,
        "first_after_s": first.map(|f| (f.duration_since(started).as_secs_f64() * 1000.0).round() / 1000.0),
        "span_s": (span * 1000.0).round() / 1000.0,
        "drain_rate": if span > 0.0 { (unique as f64 / span).round() } else { 0.0 },
        "timed_out": timed_out,
    }))
}
