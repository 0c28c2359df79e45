//! Results: what each run measured, printed for people or as one JSON line for scripts.
//!
//! Owns the wording and the field names of the output (`bench/compare.sh` reads the JSON keys,
//! so renaming one is a change of interface). It never measures anything.

use crate::rss::RssStats;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Errors listed in full before the rest are only counted.
const ERRORS_SHOWN: usize = 5;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) mean: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Latency {
    /// Reads the percentiles out of a histogram of microseconds.
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "count": self.count, "mean": round1(self.mean), "p50": self.p50, "p90": self.p90,
            "p99": self.p99, "p999": self.p999, "max": self.max,
        })
    }
}

/// The result of a message load (fanin, fanout, latency, flood).
#[derive(Debug)]
pub(crate) struct LoadReport {
    pub(crate) mode: &'static str,
    pub(crate) qos: u8,
    pub(crate) payload: usize,
    pub(crate) publishers: u32,
    pub(crate) subscribers: u32,
    /// Offered rate, 0 = closed loop or flood.
    pub(crate) rate: u64,
    pub(crate) sub_reads: bool,
    /// How long the publishers published, seconds.
    pub(crate) duration_s: f64,
    /// PUBLISH fully written by the publishers.
    pub(crate) sent: u64,
    /// PUBLISH caught in a write the broker had not taken at the deadline.
    pub(crate) unconfirmed: u64,
    /// QoS 1: PUBACKs received.
    pub(crate) acked: Option<u64>,
    /// QoS 1: PUBLISH never acked within the drain time.
    pub(crate) unacked: u64,
    /// Deliveries expected: sent x subscribers.
    pub(crate) expected: u64,
    /// PUBLISH received by the subscribers, duplicates and foreign ones included.
    pub(crate) received: u64,
    /// Distinct (subscriber, publisher, sequence) received.
    pub(crate) unique: u64,
    /// Expected deliveries never received.
    pub(crate) lost: u64,
    pub(crate) reordered: u64,
    pub(crate) duplicates: u64,
    /// PUBLISH without our stamp.
    pub(crate) foreign: u64,
    pub(crate) send_rate: f64,
    /// Received / time from start to the last receive.
    pub(crate) recv_rate: f64,
    pub(crate) latency: Option<Latency>,
    pub(crate) rss: Option<RssStats>,
    /// Non-reading subscribers found closed by the broker at the end.
    pub(crate) subs_closed_by_broker: u64,
    /// Publishers whose last write the broker had not taken by the deadline.
    pub(crate) blocked_publishers: u64,
    pub(crate) errors: Vec<String>,
}

impl LoadReport {
    /// One JSON object.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "mode": self.mode, "qos": self.qos, "payload": self.payload,
            "publishers": self.publishers, "subscribers": self.subscribers, "rate": self.rate,
            "sub_reads": self.sub_reads, "duration_s": round3(self.duration_s),
            "sent": self.sent, "unconfirmed": self.unconfirmed, "acked": self.acked,
            "unacked": self.unacked, "expected": self.expected, "received": self.received,
            "unique": self.unique, "lost": self.lost, "reordered": self.reordered,
            "duplicates": self.duplicates, "foreign": self.foreign,
            "send_rate": self.send_rate.round(), "recv_rate": self.recv_rate.round(),
            "latency_us": self.latency.map(Latency::to_json),
            "rss": self.rss.as_ref().map(rss_json),
            "subs_closed_by_broker": self.subs_closed_by_broker,
            "blocked_publishers": self.blocked_publishers,
            "errors": self.errors,
        })
    }

    /// Text for people.
    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        let loop_kind = match (self.rate, self.mode) {
            (0, "flood") => "open loop, as fast as TCP takes it".to_string(),
            (0, _) => "closed loop".to_string(),
            (r, _) => format!("open loop at {} msg/s", thousands(r)),
        };
        s += &format!(
            "{} qos{}: {} publisher(s) -> {} subscriber(s), payload {} B, {:.2} s, {}{}\n",
            self.mode,
            self.qos,
            self.publishers,
            self.subscribers,
            self.payload,
            self.duration_s,
            loop_kind,
            if self.sub_reads {
                ""
            } else {
                ", subscribers not reading"
            },
        );
        s += &format!(
            "  sent        {:>14}  ({} msg/s)\n",
            thousands(self.sent),
            thousands(self.send_rate as u64)
        );
        if let Some(acked) = self.acked {
            s += &format!(
                "  acked       {:>14}  (unacked at end: {})\n",
                thousands(acked),
                thousands(self.unacked)
            );
        }
        if self.unconfirmed > 0 {
            s += &format!(
                "  unconfirmed {:>14}  (in writes the broker had not taken at the deadline, {} publisher(s))\n",
                thousands(self.unconfirmed),
                self.blocked_publishers
            );
        }
        s += &format!(
            "  received    {:>14}  ({} msg/s; expected {})\n",
            thousands(self.received),
            thousands(self.recv_rate as u64),
            thousands(self.expected)
        );
        s += &format!(
            "  lost {}  reordered {}  duplicates {}  foreign {}\n",
            thousands(self.lost),
            thousands(self.reordered),
            thousands(self.duplicates),
            thousands(self.foreign)
        );
        if let Some(l) = self.latency {
            s += &format!(
                "  latency us  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1}, n {})\n",
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                l.mean,
                thousands(l.count)
            );
        }
        if let Some(r) = &self.rss {
            s += &rss_text(r);
        }
        if self.subs_closed_by_broker > 0 {
            s += &format!(
                "  {} subscriber(s) had been disconnected by the broker\n",
                self.subs_closed_by_broker
            );
        }
        s += &errors_text(&self.errors);
        s
    }
}

/// The result of the idle-connections test.
#[derive(Debug)]
pub(crate) struct IdleReport {
    pub(crate) requested: u32,
    /// Connections that got a successful CONNACK.
    pub(crate) established: u64,
    /// Connections that failed to open or were refused.
    pub(crate) failed: u64,
    /// Established connections found closed after the settle time.
    pub(crate) closed_by_broker: u64,
    /// Time to open all of them, seconds.
    pub(crate) connect_s: f64,
    pub(crate) rss_before_kb: Option<u64>,
    pub(crate) rss_after_kb: Option<u64>,
    /// The broker process was not there any more at the end.
    pub(crate) broker_gone: bool,
    pub(crate) errors: Vec<String>,
}

impl IdleReport {
    /// Broker RSS growth per open connection, KB.
    pub(crate) fn kb_per_conn(&self) -> Option<f64> {
        let open = self.established.saturating_sub(self.closed_by_broker);
        match (self.rss_before_kb, self.rss_after_kb) {
            (Some(b), Some(a)) if open > 0 => Some((a as f64 - b as f64) / open as f64),
            _ => None,
        }
    }

    /// One JSON object.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "mode": "idle", "requested": self.requested, "established": self.established,
            "failed": self.failed, "closed_by_broker": self.closed_by_broker,
            "connect_s": round3(self.connect_s),
            "conn_rate": (self.established as f64 / self.connect_s.max(1e-9)).round(),
            "rss_before_kb": self.rss_before_kb, "rss_after_kb": self.rss_after_kb,
            "kb_per_conn": self.kb_per_conn().map(round3),
            "broker_gone": self.broker_gone,
            "errors": self.errors,
        })
    }

    /// Text for people.
    pub(crate) fn to_text(&self) -> String {
        let mut s = format!(
            "idle: {} of {} connections established in {:.2} s ({} conn/s), {} failed, {} closed by the broker while idle\n",
            thousands(self.established),
            thousands(u64::from(self.requested)),
            self.connect_s,
            thousands((self.established as f64 / self.connect_s.max(1e-9)) as u64),
            thousands(self.failed),
            thousands(self.closed_by_broker),
        );
        match (self.rss_before_kb, self.rss_after_kb, self.kb_per_conn()) {
            (Some(b), Some(a), Some(k)) => {
                s += &format!(
                    "  broker RSS  before {} KB  after {} KB  =>  {:.2} KB per connection\n",
                    thousands(b),
                    thousands(a),
                    k
                )
            }
            _ => s += "  broker RSS  not measured (give --pid)\n",
        }
        if self.broker_gone {
            s += "  the broker process is gone (exited or crashed)\n";
        }
        s += &errors_text(&self.errors);
        s
    }
}

fn rss_json(r: &RssStats) -> Value {
    json!({
        "start_kb": r.start_kb, "max_kb": r.max_kb, "end_kb": r.end_kb,
        "samples": r.samples, "gone": r.gone,
    })
}

fn rss_text(r: &RssStats) -> String {
    let kb = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{} KB", thousands(v)));
    let mut s = format!(
        "  broker RSS  start {}  max {}  end {}  ({} samples every 500 ms)\n",
        kb(r.start_kb),
        kb(r.max_kb),
        kb(r.end_kb),
        r.samples
    );
    if r.gone {
        s += "  the broker process disappeared during the run (exited or crashed)\n";
    }
    s
}

fn errors_text(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let mut s = format!("  errors ({}):\n", errors.len());
    for e in errors.iter().take(ERRORS_SHOWN) {
        s += &format!("    {e}\n");
    }
    if errors.len() > ERRORS_SHOWN {
        s += &format!("    ... and {} more\n", errors.len() - ERRORS_SHOWN);
    }
    s
}

/// Collapses errors that differ only in the client they name ("publisher 3: broker closed
/// the connection") into one line per cause with its count, in order of first appearance.
pub(crate) fn summarize(errors: Vec<String>) -> Vec<String> {
    let mut causes: Vec<(String, u64, String)> = Vec::new();
    for e in errors {
        let cause = strip_client(&e).to_string();
        match causes.iter_mut().find(|(c, _, _)| *c == cause) {
            Some((_, n, _)) => *n += 1,
            None => causes.push((cause, 1, e)),
        }
    }
    causes
        .into_iter()
        .map(|(cause, n, first)| match first.split_once(": ") {
            Some((client, _)) if n > 1 => format!("{cause} ({n} clients, first {client})"),
            _ => first,
        })
        .collect()
}

/// "publisher 17: broker closed ..." -> "broker closed ...".
fn strip_client(e: &str) -> &str {
    match e.split_once(": ") {
        Some((head, rest)) => {
            let mut words = head.split(' ');
            let kind = words.next().unwrap_or("");
            let index = words.next().unwrap_or("");
            let is_client = matches!(kind, "publisher" | "subscriber" | "connection")
                && !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit())
                && words.next().is_none();
            if is_client {
                rest
            } else {
                e
            }
        }
        None => e,
    }
}

/// 1234567 -> "1,234,567".
pub(crate) fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    let mut left = digits.len();
    for ch in digits.chars() {
        out.push(ch);
        left -= 1;
        if left > 0 && left / 3 * 3 == left {
            out.push(',');
        }
    }
    out
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn errors_that_differ_only_in_the_client_collapse_into_one_line() {
        let errors = vec![
            "publisher 0: broker closed the connection".to_string(),
            "publisher 1: broker closed the connection".to_string(),
            "subscriber 0: network error: boom".to_string(),
            "3 PUBACKs for packet ids not in flight".to_string(),
        ];
        assert_eq!(
            summarize(errors),
            vec![
                "broker closed the connection (2 clients, first publisher 0)",
                "subscriber 0: network error: boom",
                "3 PUBACKs for packet ids not in flight",
            ]
        );
    }

    #[test]
    fn kb_per_connection_counts_only_connections_still_open() {
        let r = IdleReport {
            requested: 10,
            established: 10,
            failed: 0,
            closed_by_broker: 2,
            connect_s: 1.0,
            rss_before_kb: Some(1_000),
            rss_after_kb: Some(1_080),
            broker_gone: false,
            errors: vec![],
        };
        assert_eq!(r.kb_per_conn(), Some(10.0));
    }
}
