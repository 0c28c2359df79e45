//! The `lwm2m` load: many LwM2M devices registering with a gateway's LwM2M server, each
//! observed through an MQTT command, then notifying; one MQTT client counts what arrives on
//! `lwm2m/+/up/#`.
//!
//! Owns the simulated devices and the report. Each device is a UDP socket (endpoint
//! `hfb-{i}`) that registers (`</3303/0>`), answers the server's Observe on `/3303/0/5700`
//! with 2.05 and then sends NON notifications at its share of `rate`. Reported: registrations
//! per second (all devices registering at once), the time until every observation was
//! answered on `up/resp`, notifications per second delivered to MQTT, and (with --pid) the
//! broker's RSS. Never panics on network input.

use crate::client::{Client, Target};
use crate::error::{BenchError, Role};
use crate::rss::RssSampler;
use bytes::Bytes;
use holdfast_coap::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use holdfast_mqtt::{ByteStr, Packet as MqttPacket, PacketId, Publish, QoS};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What `lwm2m` runs.
#[derive(Debug, Clone)]
pub(crate) struct Lwm2mSpec {
    pub(crate) lwm2m_port: u16,
    pub(crate) endpoints: u32,
    /// Notifications a second over all devices.
    pub(crate) rate: u64,
    pub(crate) duration: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    registered: AtomicU64,
    observed: AtomicU64,
    notified: AtomicU64,
    resent: AtomicU64,
    notifying: AtomicBool,
    stop: AtomicBool,
}

/// Runs the load; the report as JSON.
pub(crate) async fn run(
    target: &Target,
    spec: Lwm2mSpec,
    pid: Option<u32>,
) -> Result<serde_json::Value, BenchError> {
    let rss = pid.map(RssSampler::start);
    let mut sub = Client::connect(target, Role::Subscriber(0)).await?;
    // QoS 1 (the gateway publishes these at 1): a burst of 10,000 answers is held back for a
    // slow reader, not dropped as QoS 0 would be once the session queue is full.
    sub.subscribe("lwm2m/+/up/#", QoS::AtLeastOnce).await?;
    let resp = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(AtomicU64::new(0));
    let (r, n) = (resp.clone(), notify.clone());
    let counting = tokio::spawn(async move {
        loop {
            match sub.recv("lwm2m subscriber").await {
                Ok(MqttPacket::Publish(p)) => {
                    if p.topic.ends_with("/up/notify") {
                        n.fetch_add(1, Ordering::Relaxed);
                    } else {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    if p.qos != QoS::AtMostOnce {
                        let ack = MqttPacket::PubAck(holdfast_mqtt::PubResp {
                            packet_id: p.packet_id,
                            reason: 0,
                            properties: Default::default(),
                        });
                        let sent = match sub.queue(&ack, "PUBACK") {
                            Ok(()) => sub.flush().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = sent {
                            return e.to_string();
                        }
                    }
                }
                Ok(_) => {}
                // A quiet spell (between the phases) is not an error.
                Err(BenchError::Timeout { .. }) => {}
                Err(e) => return e.to_string(),
            }
        }
    });
    let shared = Arc::new(Shared::default());
    let server = format!("{}:{}", target.host, spec.lwm2m_port);
    let interval = Duration::from_secs_f64(f64::from(spec.endpoints) / spec.rate.max(1) as f64);
    let started = Instant::now();
    let mut devices = JoinSet::new();
    for i in 0..spec.endpoints {
        let (shared, server) = (shared.clone(), server.clone());
        devices.spawn(async move { device(i, &server, interval, &shared).await });
    }
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Registrations: every device at once.
    while shared.registered.load(Ordering::Relaxed) < u64::from(spec.endpoints) {
        if Instant::now() > deadline {
            errors.push("not every device registered within 120 s".to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let registration_s = started.elapsed().as_secs_f64();
    let registered = shared.registered.load(Ordering::Relaxed);
    let registered_kb = pid.and_then(|p| crate::rss::read_rss_kb(p).ok());
    // Observations: one MQTT command each, answered on up/resp (the register messages count
    // there too).
    let mut publisher = Client::connect(target, Role::Publisher(0)).await?;
    let observe_started = Instant::now();
    for i in 0..spec.endpoints {
        let body =
            format!(r#"{{"reqID":{i},"msgType":"observe","data":{{"path":"/3303/0/5700"}}}}"#);
        publisher.queue(
            &MqttPacket::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: ByteStr::from(format!("lwm2m/hfb-{i}/dn").as_str()),
                packet_id: PacketId::new(0),
                payload: Bytes::from(body),
                properties: Default::default(),
            }),
            "PUBLISH",
        )?;
        if i % 256 == 255 {
            publisher.flush().await?;
        }
    }
    publisher.flush().await?;
    let want = u64::from(spec.endpoints) * 2;
    while resp.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline + Duration::from_secs(60) {
            errors.push(format!(
                "{} of {} observations answered",
                resp.load(Ordering::Relaxed).saturating_sub(registered),
                spec.endpoints
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let observe_s = observe_started.elapsed().as_secs_f64();
    // Registered and observed, nothing in flight: what the endpoints themselves hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let observed_kb = pid.and_then(|p| crate::rss::read_rss_kb(p).ok());
    // Notifications.
    let before = notify.load(Ordering::Relaxed);
    let notify_started = Instant::now();
    shared.notifying.store(true, Ordering::Relaxed);
    tokio::time::sleep(spec.duration).await;
    shared.notifying.store(false, Ordering::Relaxed);
    let notify_s = notify_started.elapsed().as_secs_f64();
    let delivered = crate::coap::settled(&notify).await - before;
    let sent = shared.notified.load(Ordering::Relaxed);
    let rss = match rss {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    shared.stop.store(true, Ordering::Relaxed);
    devices.abort_all();
    counting.abort();
    publisher.disconnect().await;
    Ok(json!({
        "mode": "lwm2m",
        "endpoints": spec.endpoints,
        "registered": registered,
        "registration_s": (registration_s * 100.0).round() / 100.0,
        "registrations_per_s": (registered as f64 / registration_s).round(),
        "register_resent": shared.resent.load(Ordering::Relaxed),
        "observed": shared.observed.load(Ordering::Relaxed),
        "observe_s": (observe_s * 100.0).round() / 100.0,
        "notify_rate_offered": spec.rate,
        "notifications_sent": sent,
        "notifications_delivered": delivered,
        "notify_per_s": (delivered as f64 / notify_s).round(),
        "rss": rss.map(|r| json!({"start_kb": r.start_kb, "registered_kb": registered_kb,
            "observed_kb": observed_kb, "max_kb": r.max_kb, "end_kb": r.end_kb})),
        "errors": errors,
    }))
}

/// One device: registers, answers the Observe, notifies while `notifying`.
async fn device(i: u32, server: &str, interval: Duration, shared: &Shared) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("device {i}: bind: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("device {i}: connect: {e}"))?;
    let mut register = Packet::new();
    register.header.set_type(MessageType::Confirmable);
    register.header.code = MessageClass::Request(RequestType::Post);
    register.header.message_id = 1;
    register.set_token(vec![1]);
    register.add_option(CoapOption::UriPath, b"rd".to_vec());
    for q in [
        format!("ep=hfb-{i}"),
        "lt=3600".to_owned(),
        "lwm2m=1.1".to_owned(),
    ] {
        register.add_option(CoapOption::UriQuery, q.into_bytes());
    }
    register.payload = b"</3303/0>".to_vec();
    let register = register.to_bytes_unlimited().unwrap_or_default();
    let mut buf = [0u8; 1500];
    loop {
        let _ = socket.send(&register).await;
        match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if Packet::from_bytes(&buf[..n])
                    .is_ok_and(|p| p.header.code == MessageClass::Response(ResponseType::Created))
                {
                    break;
                }
            }
            Ok(Err(e)) => return Err(format!("device {i}: recv: {e}")),
            Err(_) => {
                shared.resent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    shared.registered.fetch_add(1, Ordering::Relaxed);
    let mut token: Option<Vec<u8>> = None;
    let mut seq: u32 = 2;
    let mut mid: u16 = 1000;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::select! {
            r = socket.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let Ok(req) = Packet::from_bytes(&buf[..n]) else { continue };
                if !matches!(req.header.code, MessageClass::Request(RequestType::Get)) {
                    continue;
                }
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = req.header.message_id;
                ack.header.code = MessageClass::Response(ResponseType::Content);
                ack.set_token(req.get_token().to_vec());
                ack.set_observe_value(1);
                ack.add_option(CoapOption::ContentFormat, Vec::new()); // text/plain
                ack.payload = b"21.5".to_vec();
                let _ = socket.send(&ack.to_bytes_unlimited().unwrap_or_default()).await;
                if token.is_none() {
                    shared.observed.fetch_add(1, Ordering::Relaxed);
                }
                token = Some(req.get_token().to_vec());
            }
            _ = tick.tick() => {
                let Some(t) = &token else { continue };
                if !shared.notifying.load(Ordering::Relaxed) {
                    continue;
                }
                mid = mid.wrapping_add(1);
                seq += 1;
                let mut n = Packet::new();
                n.header.set_type(MessageType::NonConfirmable);
                n.header.message_id = mid;
                n.header.code = MessageClass::Response(ResponseType::Content);
                n.set_token(t.clone());
                n.set_observe_value(seq & 0x00ff_ffff);
                n.add_option(CoapOption::ContentFormat, Vec::new());
                n.payload = format!("{}.5", 20 + seq % 10).into_bytes();
                if socket.send(&n.to_bytes_unlimited().unwrap_or_default()).await.is_ok() {
                    shared.notified.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}
