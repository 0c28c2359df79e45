//! `[web]`: the technician's HTTP server (REST API and `/metrics`), as typed config.
//!
//! Owns the section's schema: where it listens, its bounds (connections, body size, request
//! time), and how long sessions and login lockouts last. The section is off until it appears.
//! Never binds the socket and never reads the credential files.

use std::net::SocketAddr;
use std::time::Duration;

use super::coap::socket_addr;
use super::modbus::duration_within;
use super::raw::Node;
use super::raw::Value;
use super::validate::{boolean, field, integer, listener_tls, size, string, Ctx};
use super::ListenerTls;

/// The HTTP server (`[web]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Serve at all. Default true once the section is present.
    pub enabled: bool,
    /// TCP address. Default 0.0.0.0:18083 (EMQX's dashboard port).
    pub bind: SocketAddr,
    /// Host names the server answers to, besides IP addresses, `localhost` and the board's own
    /// host name (and `{hostname}.local`). A request naming another host is refused (421):
    /// a page on another site that rebinds its name to the board's address cannot reach the
    /// API from a technician's browser. Default none.
    pub allowed_hosts: Vec<String>,
    /// HTTPS: the certificate and key (and optionally client verification and versions), as a
    /// `tls` listener's `tls` table. Default none: plain HTTP, for a board on a trusted
    /// service network.
    pub tls: Option<ListenerTls>,
    /// Connections served at once; one more is closed at accept. Default 64; 1..=10000.
    pub max_connections: usize,
    /// Largest request body. Default 1MB; 1KB..=64MB.
    pub max_body_size: usize,
    /// Time to read a request's headers and to answer it. Default 30s; 1s..=10m.
    pub request_timeout: Duration,
    /// A session unused this long ends. Default 30m; 1m..=1d.
    pub session_idle: Duration,
    /// A session ends this long after login whatever its use. Default 12h; 1m..=30d.
    pub session_max: Duration,
    /// Sessions at once; the oldest ends when one more logs in. Default 16; 1..=1000.
    pub max_sessions: usize,
    /// How long a config applied from the UI has, once it runs, to be confirmed before it is
    /// rolled back (the technician who lost the UI to it gets the old config back). Default
    /// 5m; 10s..=1h.
    pub confirm_within: Duration,
    /// Failed logins from one address before it is locked out. Default 5; 1..=100.
    pub login_attempts: u32,
    /// How long a locked-out address waits. Default 5m; 1s..=1d.
    pub login_lockout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 18083)),
            tls: None,
            allowed_hosts: Vec::new(),
            max_connections: 64,
            max_body_size: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            max_sessions: 16,
            confirm_within: Duration::from_secs(300),
            login_attempts: 5,
            login_lockout: Duration::from_secs(300),
        }
    }
}

const WEB_KEYS: &[&str] = &[
    "enabled",
    "bind",
    "tls",
    "allowed_hosts",
    "max_connections",
    "max_body_size",
    "request_timeout",
    "session_idle",
    "session_max",
    "max_sessions",
    "login_attempts",
    "login_lockout",
    "confirm_within",
];

/// Reads `[web]`.
pub(super) fn web_section(ctx: &mut Ctx<'_>, node: &Node) -> WebConfig {
    let d = WebConfig::default();
    let entries = ctx.open(node, "web", WEB_KEYS, &[]);
    let p = "web";
    WebConfig {
        enabled: ctx.get(entries, p, "enabled", d.enabled, boolean),
        bind: ctx.get(entries, p, "bind", d.bind, socket_addr),
        tls: field(entries, "tls").and_then(|n| listener_tls(ctx, n, "web.tls")),
        allowed_hosts: ctx.get(
            entries,
            p,
            "allowed_hosts",
            d.allowed_hosts.clone(),
            host_names,
        ),
        max_connections: ctx.get(
            entries,
            p,
            "max_connections",
            d.max_connections,
            |c, n, k| integer(c, n, k, 1, 10_000),
        ),
        max_body_size: ctx.get(entries, p, "max_body_size", d.max_body_size, |c, n, k| {
            size(c, n, k, 1024, 64 * 1024 * 1024)
        }),
        request_timeout: ctx.get(
            entries,
            p,
            "request_timeout",
            d.request_timeout,
            duration_within(Duration::from_secs(1), Duration::from_secs(600)),
        ),
        session_idle: ctx.get(
            entries,
            p,
            "session_idle",
            d.session_idle,
            duration_within(Duration::from_secs(60), Duration::from_secs(86_400)),
        ),
        session_max: ctx.get(
            entries,
            p,
            "session_max",
            d.session_max,
            duration_within(Duration::from_secs(60), Duration::from_secs(30 * 86_400)),
        ),
        max_sessions: ctx.get(entries, p, "max_sessions", d.max_sessions, |c, n, k| {
            integer(c, n, k, 1, 1000)
        }),
        confirm_within: ctx.get(
            entries,
            p,
            "confirm_within",
            d.confirm_within,
            duration_within(Duration::from_secs(10), Duration::from_secs(3600)),
        ),
        login_attempts: ctx.get(entries, p, "login_attempts", d.login_attempts, |c, n, k| {
            integer(c, n, k, 1, 100)
        }),
        login_lockout: ctx.get(
            entries,
            p,
            "login_lockout",
            d.login_lockout,
            duration_within(Duration::from_secs(1), Duration::from_secs(86_400)),
        ),
    }
}

/// Host names allowed in `Host` (at most 32; letters, digits, `-` and `.`), lowercased.
fn host_names(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<Vec<String>> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            key,
            format!(
                "expected an array of host names, found {}",
                node.value.describe()
            ),
        );
        return None;
    };
    if items.len() > 32 {
        ctx.report(node, key, "at most 32 host names".to_owned());
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(name) = string(ctx, item, &item_key) else {
            ok = false;
            continue;
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            out.push(name.to_ascii_lowercase());
        } else {
            ctx.report(
                item,
                &item_key,
                format!("{name:?} is not a host name (letters, digits, '-' and '.')"),
            );
            ok = false;
        }
    }
    ok.then_some(out)
}
