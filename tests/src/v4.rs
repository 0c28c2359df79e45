//! Small rumqttc (MQTT 3.1.1) helpers shared by the session tests: client options, waiting for
//! CONNACK, collecting publishes. Test code: a failed expectation panics with what was waited for.

use rumqttc::{Event, EventLoop, MqttOptions, Packet};
use std::time::Duration;
use tokio::time::timeout;

/// How long a helper waits for the broker.
pub const WAIT: Duration = Duration::from_secs(10);

/// Options for client `id` on 127.0.0.1:`port`: clean session as given, 30 s keepalive,
/// 100 in flight.
pub fn options(id: &str, port: u16, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o
}

/// Polls until CONNACK; returns session_present.
pub async fn connack(ev: &mut EventLoop) -> bool {
    loop {
        match timeout(WAIT, ev.poll())
            .await
            .expect("CONNACK in time")
            .expect("connected")
        {
            Event::Incoming(Packet::ConnAck(a)) => return a.session_present,
            _ => continue,
        }
    }
}

/// Polls until `n` publishes arrived (or the time runs out); returns their payloads.
pub async fn collect(ev: &mut EventLoop, n: usize, within: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e}"),
            Err(_) => break,
        }
    }
    got
}
