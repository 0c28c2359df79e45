//! `$SYS` topics: client lifecycle events and periodic broker statistics.
//!
//! Owns the JSON shapes under `$SYS/brokers/{node}/...` (EMQX's layout) and the timer task that
//! publishes stats and drives session expiry and delayed wills. Never blocks a connection: every
//! event is one routed QoS 0 message.

use super::client::publish_system;
use super::stats::DisconnectReason;
use super::Broker;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the clock mark is written (the data directory's "last seen", see
/// `crate::clock`): often enough that a crash loses little, rarely enough for flash.
const CLOCK_MARK_EVERY: Duration = Duration::from_secs(60);
/// A wall-clock change against the monotonic clock larger than this is logged as a jump.
const CLOCK_JUMP_MS: i64 = 5_000;

/// What `$SYS/.../connected` and `.../disconnected` say about a client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Peer address.
    pub peer: std::net::SocketAddr,
    /// What it speaks: `mqtt`, `coap`, `lwm2m`, `modbus`, `serial`, `web`, `bridge`.
    pub proto_name: &'static str,
    /// Protocol level (3, 4, 5 for MQTT; 0 for the in-process clients).
    pub proto_ver: u8,
    /// Keepalive in seconds.
    pub keepalive: u16,
    /// Clean start flag.
    pub clean_start: bool,
}

/// A client id as one topic level: `%`, `/`, `+`, `#` and NUL percent-encoded (`%25`, `%2F`,
/// `%2B`, `%23`, `%00`), so `evil/#` cannot make a topic name with a wildcard or an extra level
/// (MQTT-3.3.2-2). The JSON body keeps the id as it is.
pub fn topic_level(id: &str) -> std::borrow::Cow<'_, str> {
    if !id.contains(['%', '/', '+', '#', '\0']) {
        return std::borrow::Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for ch in id.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Publishes `$SYS/brokers/{node}/clients/{clientid}/connected` (the id as [`topic_level`]).
pub fn client_connected(broker: &Broker, info: &ClientInfo) {
    let body = json!({
        "clientid": info.client_id,
        "username": info.username,
        "ipaddress": info.peer.ip().to_string(),
        "port": info.peer.port(),
        "proto_name": info.proto_name,
        "proto_ver": info.proto_ver,
        "keepalive": info.keepalive,
        "clean_start": info.clean_start,
        "connected_at": crate::clock::real_now_ms(),
        "ts_synced": crate::clock::synchronized(),
    });
    let topic = format!(
        "$SYS/brokers/{}/clients/{}/connected",
        broker.config.node.name,
        topic_level(&info.client_id)
    );
    publish_system(broker, topic, body.to_string().into_bytes(), false);
}

/// Publishes `$SYS/brokers/{node}/clients/{clientid}/disconnected` (as [`topic_level`]).
pub fn client_disconnected(broker: &Broker, info: &ClientInfo, reason: DisconnectReason) {
    let body = json!({
        "clientid": info.client_id,
        "username": info.username,
        "ipaddress": info.peer.ip().to_string(),
        "port": info.peer.port(),
        "proto_name": info.proto_name,
        "proto_ver": info.proto_ver,
        "reason": reason.as_str(),
        "disconnected_at": crate::clock::real_now_ms(),
        "ts_synced": crate::clock::synchronized(),
    });
    let topic = format!(
        "$SYS/brokers/{}/clients/{}/disconnected",
        broker.config.node.name,
        topic_level(&info.client_id)
    );
    publish_system(broker, topic, body.to_string().into_bytes(), false);
}

/// The stats published under `$SYS/brokers/{node}/stats/...`, name -> value.
pub fn stats_snapshot(broker: &Broker) -> Vec<(&'static str, u64)> {
    let (sizes, counters, held_total) =
        broker.with_router(|r| (r.sizes(), r.counters(), r.held_bytes_total()));
    let t = &broker.traffic;
    let connections: usize = broker
        .listener_stats()
        .iter()
        .map(|l| l.current.load(Ordering::Relaxed))
        .sum();
    let dropped = counters.dropped_queue_full
        + counters.dropped_qos0_offline
        + counters.dropped_expired
        + counters.dropped_retained_full
        + counters.dropped_session_discarded
        + t.dropped_too_large_for_client.load(Ordering::Relaxed)
        + t.dropped_awaiting_rel_full.load(Ordering::Relaxed)
        + t.dropped_not_authorized.load(Ordering::Relaxed);
    vec![
        ("connections/count", connections as u64),
        ("sessions/count", sizes.sessions as u64),
        ("sessions/connected", sizes.connected as u64),
        ("subscriptions/count", sizes.subscriptions as u64),
        ("subscriptions/bytes", sizes.subscription_bytes as u64),
        ("retained/count", sizes.retained as u64),
        ("messages/queued", sizes.queued as u64),
        ("messages/inflight", sizes.inflight as u64),
        ("messages/held_bytes", held_total as u64),
        (
            "messages/received",
            t.publish_received.load(Ordering::Relaxed),
        ),
        ("messages/sent", t.publish_sent.load(Ordering::Relaxed)),
        ("messages/routed", counters.messages_routed),
        ("messages/dropped", dropped),
        ("messages/dropped/mqueue_full", counters.dropped_queue_full),
        (
            "messages/dropped/qos0_offline",
            counters.dropped_qos0_offline,
        ),
        ("messages/dropped/expired", counters.dropped_expired),
        (
            "messages/dropped/no_subscribers",
            counters.dropped_no_subscribers,
        ),
        (
            "messages/dropped/retained_full",
            counters.dropped_retained_full,
        ),
        (
            "messages/dropped/session_discarded",
            counters.dropped_session_discarded,
        ),
        ("messages/shared_redispatched", counters.shared_redispatched),
        ("messages/held_back", counters.publishers_held_back),
        (
            "clients/slow_subscribers_disconnected",
            counters.slow_subscribers_disconnected,
        ),
        (
            "messages/dropped/not_authorized",
            t.dropped_not_authorized.load(Ordering::Relaxed),
        ),
        (
            "logins/refused_busy",
            t.logins_refused_busy.load(Ordering::Relaxed),
        ),
        (
            "logins/refused_locked",
            t.logins_refused_locked.load(Ordering::Relaxed),
        ),
        ("bytes/received", t.bytes_received.load(Ordering::Relaxed)),
        ("bytes/sent", t.bytes_sent.load(Ordering::Relaxed)),
        ("uptime_seconds", broker.started_at.elapsed().as_secs()),
        (
            "clock/synchronized",
            u64::from(crate::clock::synchronized()),
        ),
        ("clock/jumps", crate::clock::jumps()),
    ]
}

/// `$SYS/brokers/{node}/clock`: synchronized or not, the trust setting, the last jump seen.
fn publish_clock(broker: &Broker) {
    let node = &broker.config.node;
    let topic = format!("$SYS/brokers/{}/clock", node.name);
    let state = crate::clock::state_json(node.clock).to_string();
    publish_system(broker, topic, state.into_bytes(), true);
}

fn publish_stats(broker: &Broker) {
    publish_clock(broker);
    let node = broker.config.node.name.clone();
    for (name, value) in stats_snapshot(broker) {
        let topic = format!("$SYS/brokers/{node}/stats/{name}");
        publish_system(broker, topic, value.to_string().into_bytes(), true);
    }
    for l in broker.listener_stats() {
        for reason in DisconnectReason::ALL {
            let topic = format!(
                "$SYS/brokers/{node}/listeners/{}/shutdown_count/{}",
                l.name,
                reason.as_str()
            );
            let value = l.shutdown_count(reason).to_string().into_bytes();
            publish_system(broker, topic, value, true);
        }
        let topic = format!("$SYS/brokers/{node}/listeners/{}/handshake_failed", l.name);
        let value = l.handshake_failed.load(Ordering::Relaxed).to_string();
        publish_system(broker, topic, value.into_bytes(), true);
    }
}

/// Publishes more `$SYS` statistics at every `sys_interval` (the bridges', the webhooks'):
/// registered by whoever owns them, so this module imports none of them.
pub type StatsPublisher = Box<dyn FnMut(&Broker) + Send>;

/// Runs until shutdown: every second expires sessions and publishes due wills; every
/// `sys_interval` publishes the stats (retained, so a new subscriber sees the latest), then
/// runs each of `more`.
pub async fn run_timers(broker: Arc<Broker>, mut more: Vec<StatsPublisher>) {
    let version = format!("$SYS/brokers/{}/version", broker.config.node.name);
    publish_system(
        &broker,
        version,
        env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
        true,
    );
    let sys_interval = broker.config.mqtt.sys_interval;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_stats = Instant::now();
    let mut last_clock_mark = Instant::now();
    let mut drift = crate::clock::wall_clock_drift_ms();
    if !sys_interval.is_zero() {
        publish_stats(&broker);
        more.iter_mut().for_each(|p| p(&broker));
    }
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => {
                // Connected sessions are closed through their control handles (v5 clients get
                // DISCONNECT 0x8B); connections still in their handshake watch the token.
                broker.with_router(|r| r.close_all(holdfast_mqtt::reason::SERVER_SHUTTING_DOWN));
                crate::clock::note(&broker.config.node.data_dir, broker.config.node.clock);
                return;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        crate::clock::refresh(broker.config.node.clock);
        let drift_now = crate::clock::wall_clock_drift_ms();
        if (drift_now - drift).abs() > CLOCK_JUMP_MS {
            tracing::warn!(
                jump_ms = drift_now - drift,
                "the wall clock jumped while running; stored times keep their own timeline and all expiry is monotonic, so nothing expires early"
            );
            crate::clock::note_jump(drift_now - drift);
            publish_clock(&broker);
            drift = drift_now;
        }
        if now.duration_since(last_clock_mark) >= CLOCK_MARK_EVERY {
            last_clock_mark = now;
            crate::clock::note(&broker.config.node.data_dir, broker.config.node.clock);
        }
        let expired = broker.with_router(|r| r.tick(now));
        for client_id in expired {
            tracing::info!(client_id = %client_id, "session expired");
        }
        if !sys_interval.is_zero() && now.duration_since(last_stats) >= sys_interval {
            last_stats = now;
            publish_stats(&broker);
            more.iter_mut().for_each(|p| p(&broker));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_level;
    use holdfast_mqtt::topic::validate_topic_name;

    #[test]
    fn client_ids_become_one_plain_topic_level() {
        assert_eq!(topic_level("sensor-1"), "sensor-1");
        assert_eq!(topic_level("evil/#"), "evil%2F%23");
        assert_eq!(topic_level("a+b%c"), "a%2Bb%25c");
        for id in ["evil/#", "+", "#", "a/b/c", "%2F"] {
            let topic = format!("$SYS/brokers/gw/clients/{}/connected", topic_level(id));
            assert_eq!(validate_topic_name(&topic), Ok(()), "{topic}");
            assert_eq!(topic.matches('/').count(), 5, "{topic}");
        }
    }
}
