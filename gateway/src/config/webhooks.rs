//! `[[webhooks]]`: HTTP endpoints that get a JSON POST for broker events, as typed config.
//!
//! Owns the webhook schema (keys, defaults, ranges, "https only with a CA or the system roots")
//! and nothing else: it never opens the CA file it names, never resolves the host and never
//! connects.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Node, Value};
use super::units::parse_authority;
use super::validate::{duration, field, integer, path_buf, string, topic_filters, Ctx};

/// One webhook (`[[webhooks]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// Name in logs and `$SYS/brokers/{node}/webhooks/{name}/...`; letters, digits, `_`, `-`,
    /// `.`; unique. Required.
    pub name: String,
    /// Where events are POSTed. Required.
    pub url: WebhookUrl,
    /// Which events are posted. Default: all eight.
    pub events: EventSet,
    /// Topic filters a `message.*` event's topic must match to be posted; other events are not
    /// filtered by topic. Default `["#"]` (which, as in MQTT, does not match `$SYS/...`).
    pub topics: Vec<String>,
    /// Extra request headers (`Authorization`, ...), in file order. Default none.
    pub headers: Vec<(String, String)>,
    /// Deadline of one attempt: connect, TLS, request and response. Default 5s; 100ms..=5m.
    pub timeout: Duration,
    /// Further attempts after a failed one (non-2xx, timeout, connection error), with
    /// exponential backoff from 500ms (doubling, at most 30s); then the event is dropped and
    /// counted as failed. Default 3; 0..=20.
    pub max_retries: u32,
    /// Events waiting to be posted; a full queue drops the new event and counts it, so a slow
    /// or dead endpoint never slows the broker. Default 10000; 1..=1000000.
    pub queue_size: usize,
    /// Concurrent keep-alive connections (and requests in flight). Default 4; 1..=64.
    pub pool_size: usize,
    /// How message payloads appear in the JSON. Default base64 (EMQX's choice is plain; base64
    /// survives binary payloads).
    pub payload_encoding: PayloadEncoding,
    /// PEM CA certificate(s) that sign an https endpoint's certificate. Default none: the
    /// system's roots. Refused with `http://`.
    pub ca: Option<PathBuf>,
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `https://` (true) or `http://`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port; default 443 for https, 80 for http.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl WebhookUrl {
    /// The URL for logs: the query (where tokens tend to live) replaced by `?...`.
    pub fn redacted(&self) -> String {
        let full = self.to_string();
        match full.split_once('?') {
            Some((base, _)) => format!("{base}?..."),
            None => full,
        }
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// How payloads are put into the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// As a string ("plain"); bytes that are not UTF-8 are replaced by U+FFFD.
    Plain,
    /// Base64 ("base64").
    Base64,
}

impl PayloadEncoding {
    /// The word used in the config file and in the JSON's `payload_encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadEncoding::Plain => "plain",
            PayloadEncoding::Base64 => "base64",
        }
    }
}

/// The events a webhook can post, EMQX's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A client's CONNECT was accepted.
    ClientConnected,
    /// A connected client's connection ended.
    ClientDisconnected,
    /// A SUBSCRIBE filter was granted.
    SessionSubscribed,
    /// An UNSUBSCRIBE removed a subscription.
    SessionUnsubscribed,
    /// A client's PUBLISH was accepted for routing.
    MessagePublish,
    /// A message was sent to a subscriber.
    MessageDelivered,
    /// A subscriber acknowledged a QoS 1 (PUBACK) or QoS 2 (PUBCOMP) delivery.
    MessageAcked,
    /// A message was dropped (no subscribers, not authorized, a full session queue ...).
    MessageDropped,
}

impl WebhookEvent {
    /// Every event, in the order of the bits of an [`EventSet`].
    pub const ALL: [WebhookEvent; 8] = [
        WebhookEvent::ClientConnected,
        WebhookEvent::ClientDisconnected,
        WebhookEvent::SessionSubscribed,
        WebhookEvent::SessionUnsubscribed,
        WebhookEvent::MessagePublish,
        WebhookEvent::MessageDelivered,
        WebhookEvent::MessageAcked,
        WebhookEvent::MessageDropped,
    ];

    /// EMQX's name, used in the config and in the JSON's `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::ClientConnected => "client.connected",
            WebhookEvent::ClientDisconnected => "client.disconnected",
            WebhookEvent::SessionSubscribed => "session.subscribed",
            WebhookEvent::SessionUnsubscribed => "session.unsubscribed",
            WebhookEvent::MessagePublish => "message.publish",
            WebhookEvent::MessageDelivered => "message.delivered",
            WebhookEvent::MessageAcked => "message.acked",
            WebhookEvent::MessageDropped => "message.dropped",
        }
    }

    /// Whether the event is about a message, and so filtered by `topics`.
    pub fn is_message(self) -> bool {
        matches!(
            self,
            WebhookEvent::MessagePublish
                | WebhookEvent::MessageDelivered
                | WebhookEvent::MessageAcked
                | WebhookEvent::MessageDropped
        )
    }

    /// Its bit in an [`EventSet`].
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`WebhookEvent`]s as a bit mask: checking one costs an AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSet(pub u8);

impl EventSet {
    /// All eight events.
    pub const ALL: EventSet = EventSet(u8::MAX);

    /// Whether `event` is in the set.
    pub fn contains(self, event: WebhookEvent) -> bool {
        self.0 & event.bit() != 0
    }
}

const WEBHOOK_KEYS: &[&str] = &[
    "name",
    "url",
    "events",
    "topics",
    "headers",
    "timeout",
    "max_retries",
    "queue_size",
    "pool_size",
    "payload_encoding",
    "ca",
];

/// Headers the client sets itself; overriding them would break the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
];

/// Reads `[[webhooks]]`.
pub(super) fn webhooks_section(ctx: &mut Ctx<'_>, node: &Node) -> Vec<WebhookConfig> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            "webhooks",
            format!(
                "expected an array of tables ([[webhooks]]), found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<WebhookConfig> = Vec::new();
    // Index in the file of each entry of `out` (invalid entries are left out of `out`).
    let mut indices: Vec<usize> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("webhooks[{index}]");
        let entries = ctx.open(item, &path, WEBHOOK_KEYS, &[]);
        if !matches!(item.value, Value::Table(_)) {
            continue;
        }
        if let Some(hook) = webhook(ctx, item, entries, &path) {
            if let Some(first) = out
                .iter()
                .position(|w| w.name == hook.name)
                .map(|i| indices[i])
            {
                let n = field(entries, "name").unwrap_or(item);
                ctx.report(
                    n,
                    &format!("{path}.name"),
                    format!(
                        "webhook name {:?} is already used by webhooks[{first}]",
                        hook.name
                    ),
                );
            }
            out.push(hook);
            indices.push(index);
        }
    }
    out
}

fn webhook(
    ctx: &mut Ctx<'_>,
    item: &Node,
    entries: &[(String, Node)],
    path: &str,
) -> Option<WebhookConfig> {
    let before = ctx.problem_count();
    let name = match field(entries, "name") {
        Some(n) => {
            let key = format!("{path}.name");
            string(ctx, n, &key).and_then(|name| {
                let ok = !name.is_empty()
                    && !name.starts_with('.')
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
                if !ok {
                    ctx.report(
                        n,
                        &key,
                        format!(
                            "{name:?} is not a webhook name (use letters, digits, '_', '-', '.')"
                        ),
                    );
                }
                ok.then_some(name)
            })
        }
        None => {
            ctx.report(
                item,
                &format!("{path}.name"),
                "is required, e.g. name = \"audit\"",
            );
            None
        }
    };
    let url = match field(entries, "url") {
        Some(n) => {
            let key = format!("{path}.url");
            string(ctx, n, &key).and_then(|text| match parse_url(&text) {
                Ok(url) => Some(url),
                Err(why) => {
                    ctx.report(n, &key, why);
                    None
                }
            })
        }
        None => {
            ctx.report(
                item,
                &format!("{path}.url"),
                "is required, e.g. url = \"http://127.0.0.1:8080/hooks\"",
            );
            None
        }
    };
    let events = ctx.get(entries, path, "events", EventSet::ALL, event_set);
    let topics = ctx.get(entries, path, "topics", vec!["#".to_owned()], filters);
    let headers = ctx.get(entries, path, "headers", Vec::new(), headers);
    let timeout = ctx.get(
        entries,
        path,
        "timeout",
        Duration::from_secs(5),
        |c, n, k| {
            duration(
                c,
                n,
                k,
                Duration::from_millis(100),
                Duration::from_secs(300),
                false,
            )
        },
    );
    let max_retries = ctx.get(entries, path, "max_retries", 3u32, |c, n, k| {
        integer(c, n, k, 0, 20)
    });
    let queue_size = ctx.get(entries, path, "queue_size", 10_000usize, |c, n, k| {
        integer(c, n, k, 1, 1_000_000)
    });
    let pool_size = ctx.get(entries, path, "pool_size", 4usize, |c, n, k| {
        integer(c, n, k, 1, 64)
    });
    let payload_encoding = ctx.get(
        entries,
        path,
        "payload_encoding",
        PayloadEncoding::Base64,
        |c, n, k| {
            let text = string(c, n, k)?;
            match text.as_str() {
                "plain" => Some(PayloadEncoding::Plain),
                "base64" => Some(PayloadEncoding::Base64),
                _ => {
                    c.report(
                        n,
                        k,
                        format!("unknown encoding {text:?} (expected \"plain\" or \"base64\")"),
                    );
                    None
                }
            }
        },
    );
    let ca = ctx.get(entries, path, "ca", None, |c, n, k| {
        path_buf(c, n, k).map(Some)
    });
    if let (Some(url), Some(n)) = (&url, field(entries, "ca")) {
        if !url.tls {
            ctx.report(
                n,
                &format!("{path}.ca"),
                "a CA is set but the url is http:// (use https:// for TLS)",
            );
        }
    }
    if ctx.problem_count() != before {
        return None;
    }
    Some(WebhookConfig {
        name: name?,
        url: url?,
        events,
        topics,
        headers,
        timeout,
        max_retries,
        queue_size,
        pool_size,
        payload_encoding,
        ca,
    })
}

/// `http://host[:port][/path]` or `https://...`; IPv6 hosts in brackets; no user info.
pub(crate) fn parse_url(text: &str) -> Result<WebhookUrl, String> {
    let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "{text:?} is not a webhook URL (expected http://HOST[:PORT]/PATH or https://...)"
        ));
    };
    if text.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!(
            "{text:?}: spaces and control characters are not allowed"
        ));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let path = match path.split_once('#') {
        Some((p, _)) => p.to_owned(),
        None => path,
    };
    if authority.contains('@') {
        return Err(format!(
            "{text:?}: credentials in the URL are not supported (use headers = {{ Authorization = \"...\" }})"
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = parse_authority(text, authority, default_port)?;
    Ok(WebhookUrl {
        tls,
        host,
        port,
        path,
    })
}

fn event_set(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<EventSet> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            key,
            format!(
                "expected an array of event names, found {}",
                node.value.describe()
            ),
        );
        return None;
    };
    let mut set = EventSet(0);
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(name) = string(ctx, item, &item_key) else {
            ok = false;
            continue;
        };
        match WebhookEvent::ALL.iter().find(|e| e.as_str() == name) {
            Some(e) => set.0 |= e.bit(),
            None => {
                let known: Vec<_> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
                ctx.report(
                    item,
                    &item_key,
                    format!(
                        "unknown event {name:?} (expected one of: {})",
                        known.join(", ")
                    ),
                );
                ok = false;
            }
        }
    }
    if ok && set.0 == 0 {
        ctx.report(
            node,
            key,
            "must name at least one event (leave `events` out for all of them)",
        );
        return None;
    }
    ok.then_some(set)
}

fn filters(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<Vec<String>> {
    let out = topic_filters(
        ctx,
        node,
        key,
        "a shared subscription is not a topic filter here",
    )?;
    if out.is_empty() {
        ctx.report(
            node,
            key,
            "must hold at least one filter (leave `topics` out for [\"#\"])",
        );
        return None;
    }
    Some(out)
}

fn headers(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<Vec<(String, String)>> {
    let Value::Table(entries) = &node.value else {
        ctx.report(
            node,
            key,
            format!(
                "expected a table of header names and values, found {}",
                node.value.describe()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (name, value) in entries {
        let item_key = format!("{key}.{name}");
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            ctx.report(value, &item_key, format!("{name:?} is not a header name"));
            ok = false;
            continue;
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            ctx.report(
                value,
                &item_key,
                format!("{name} is set by the gateway and cannot be overridden"),
            );
            ok = false;
            continue;
        }
        let Some(text) = string(ctx, value, &item_key) else {
            ok = false;
            continue;
        };
        if text.chars().any(|c| c.is_ascii_control() && c != '\t') {
            ctx.report(
                value,
                &item_key,
                "a header value must not contain control characters (CR, LF, ...)",
            );
            ok = false;
            continue;
        }
        out.push((name.clone(), text));
    }
    ok.then_some(out)
}
