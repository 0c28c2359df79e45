//! The `coap` load: CoAP devices publishing through a gateway's `ps/` resource (EMQX's
//! convention) to one MQTT subscriber.
//!
//! Owns the device loop and its report. Each device is a UDP socket with its own client id
//! (`hfb-coap-{i}`) publishing on `coapbench/{i}`:
//! - confirmable (`--confirmable`): `window` CON requests outstanding per device (RFC 7252's
//!   NSTART is 1), each timed until its piggybacked 2.04; one lost or late is sent again
//!   with the same message id after 2 s (counted);
//! - non-confirmable: as fast as the socket takes them, or `rate` a second in all; with
//!   `--no-response` each declines the 2.04 (RFC 7967), as fire-and-forget telemetry does.
//!
//! The MQTT subscriber (QoS 0 on `coapbench/#`) counts what the broker delivered, so the
//! report has what was sent, what was answered and what arrived, and (with `--pid`) the
//! broker's CPU time per delivered message. Never panics on network input.

use crate::check::new_histogram;
use crate::client::{Client, Target};
use crate::error::{BenchError, Role};
use crate::report::Latency;
use holdfast_coap::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use holdfast_mqtt::{Packet as MqttPacket, QoS};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What `coap` runs.
#[derive(Debug, Clone)]
pub(crate) struct CoapSpec {
    pub(crate) coap_port: u16,
    pub(crate) devices: u32,
    pub(crate) confirmable: bool,
    pub(crate) window: u16,
    pub(crate) payload: usize,
    pub(crate) duration: Duration,
    /// NON messages a second over all devices; 0 = as fast as the sockets take them.
    pub(crate) rate: u64,
    /// Each NON says No-Response to 2.xx (RFC 7967).
    pub(crate) no_response: bool,
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ: 100 on every Linux we run on).
const USER_HZ: f64 = 100.0;

/// Counters shared by the devices.
#[derive(Debug, Default)]
struct Totals {
    sent: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    resent: AtomicU64,
}

/// Broker CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The value of `counter` once it has stopped moving for half a second (what was on its way
/// through the broker has arrived).
pub(crate) async fn settled(counter: &AtomicU64) -> u64 {
    let mut last = counter.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counter.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Runs the load; the report as JSON.
pub(crate) async fn run(
    target: &Target,
    spec: CoapSpec,
    pid: Option<u32>,
) -> Result<serde_json::Value, BenchError> {
    let mut sub = Client::connect(target, Role::Subscriber(0)).await?;
    sub.subscribe("coapbench/#", QoS::AtMostOnce).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    let counting = tokio::spawn(async move {
        loop {
            match sub.recv("coap subscriber").await {
                Ok(MqttPacket::Publish(_)) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Some(e.to_string()),
            }
        }
    });
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let server = format!("{}:{}", target.host, spec.coap_port);
    let ticks_before = cpu_ticks(pid);
    let delivered_before = delivered.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut devices = JoinSet::new();
    for i in 0..spec.devices {
        let (spec, totals, stop, server) =
            (spec.clone(), totals.clone(), stop.clone(), server.clone());
        devices.spawn(async move { device(i, &server, &spec, &totals, &stop).await });
    }
    tokio::time::sleep(spec.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    while let Some(joined) = devices.join_next().await {
        match joined {
            Ok(Ok(h)) => {
                let _ = histogram.add(h);
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("device task: {e}")),
        }
    }
    let sending = started.elapsed().as_secs_f64();
    // What is still on its way through the broker.
    let last = settled(&delivered).await;
    let ticks_after = cpu_ticks(pid);
    counting.abort();
    let delivered = last - delivered_before;
    let sent = totals.sent.load(Ordering::Relaxed);
    let cpu_us_per_msg = match (ticks_before, ticks_after) {
        (Some(b), Some(a)) if delivered > 0 => {
            Some((a.saturating_sub(b)) as f64 * 1e6 / USER_HZ / delivered as f64)
        }
        _ => None,
    };
    Ok(json!({
        "mode": "coap",
        "type": if spec.confirmable { "con" } else if spec.no_response { "non-no-response" } else { "non" },
        "devices": spec.devices,
        "window": spec.window,
        "payload": spec.payload,
        "rate": spec.rate,
        "duration_s": (sending * 100.0).round() / 100.0,
        "sent": sent,
        "sent_per_s": (sent as f64 / sending).round(),
        "answered": totals.answered.load(Ordering::Relaxed),
        "refused": totals.refused.load(Ordering::Relaxed),
        "resent": totals.resent.load(Ordering::Relaxed),
        "delivered": delivered,
        "delivered_per_s": (delivered as f64 / sending).round(),
        "lost": sent.saturating_sub(delivered),
        "latency_us": if spec.confirmable { Latency::from_histogram(&histogram).to_json() } else { json!(null) },
        "broker_cpu_us_per_msg": cpu_us_per_msg.map(|c| (c * 100.0).round() / 100.0),
        "errors": errors,
    }))
}

/// One device: publishes until `stop`, returns its CON latency histogram.
async fn device(
    i: u32,
    server: &str,
    spec: &CoapSpec,
    totals: &Totals,
    stop: &AtomicBool,
) -> Result<hdrhistogram::Histogram<u64>, String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("device {i}: bind: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("device {i}: connect {server}: {e}"))?;
    let topic = i.to_string();
    let query = format!("clientid=hfb-coap-{i}");
    let payload = vec![b'x'; spec.payload];
    let request = |mid: u16| -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(if spec.confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = mid;
        p.set_token(mid.to_be_bytes().to_vec());
        p.add_option(CoapOption::UriPath, b"ps".to_vec());
        p.add_option(CoapOption::UriPath, b"coapbench".to_vec());
        p.add_option(CoapOption::UriPath, topic.as_bytes().to_vec());
        p.add_option(CoapOption::UriQuery, query.as_bytes().to_vec());
        if spec.no_response {
            p.add_option(CoapOption::NoResponse, vec![2]);
        }
        p.payload = payload.clone();
        p.to_bytes_unlimited().unwrap_or_default()
    };
    let mut histogram = new_histogram();
    let mut mid: u16 = (i as u16).wrapping_mul(7919);
    let mut buf = [0u8; 1500];
    if !spec.confirmable {
        let interval = (spec.rate > 0)
            .then(|| Duration::from_secs_f64(f64::from(spec.devices) / spec.rate as f64));
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            mid = mid.wrapping_add(1);
            if socket.send(&request(mid)).await.is_ok() {
                totals.sent.fetch_add(1, Ordering::Relaxed);
            }
            // Answers (NON 2.04) are read when they are there, never waited for.
            while let Ok(n) = socket.try_recv(&mut buf) {
                count_answer(&buf[..n], totals);
            }
            if let Some(interval) = interval {
                next += interval;
                tokio::time::sleep_until(next).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        return Ok(histogram);
    }
    let mut outstanding: HashMap<u16, (Instant, Vec<u8>)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        while outstanding.len() < usize::from(spec.window) {
            mid = mid.wrapping_add(1);
            let bytes = request(mid);
            if socket.send(&bytes).await.is_ok() {
                totals.sent.fetch_add(1, Ordering::Relaxed);
            }
            outstanding.insert(mid, (Instant::now(), bytes));
        }
        match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let Ok(reply) = Packet::from_bytes(&buf[..n]) else {
                    continue;
                };
                if let Some((at, _)) = outstanding.remove(&reply.header.message_id) {
                    let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = histogram.record(us.max(1));
                    count_answer(&buf[..n], totals);
                }
            }
            Ok(Err(e)) => return Err(format!("device {i}: recv: {e}")),
            Err(_) => {
                // Nothing for 2 s: resend what is outstanding (same message ids).
                for (_, bytes) in outstanding.values() {
                    let _ = socket.send(bytes).await;
                    totals.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(histogram)
}

fn count_answer(datagram: &[u8], totals: &Totals) {
    let Ok(reply) = Packet::from_bytes(datagram) else {
        return;
    };
    match reply.header.code {
        MessageClass::Response(ResponseType::Changed) => {
            totals.answered.fetch_add(1, Ordering::Relaxed);
        }
        MessageClass::Response(_) => {
            totals.refused.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}
