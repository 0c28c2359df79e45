//! `[coap]`: the CoAP gateway (EMQX's `emqx_gateway_coap` conventions), as typed config.
//!
//! Owns the section's schema: keys, defaults (EMQX's where it has one), ranges. The section is
//! off until it appears. Never binds the socket and never checks a mountpoint against the ACL.

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::Node;
use super::validate::{boolean, duration, integer, size, string, Ctx};

/// How a notification is sent (`coap.notify_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyType {
    /// QoS 0 messages as NON, QoS 1/2 as CON ("qos", default).
    #[default]
    Qos,
    /// Always NON ("non").
    Non,
    /// Always CON ("con").
    Con,
}

/// The MQTT QoS of what a CoAP client publishes or subscribes to (`coap.publish_qos`,
/// `coap.subscribe_qos`), unless its request says `qos=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoapQos {
    /// From the message type: NON -> 0, CON -> 1 ("coap", default).
    #[default]
    Coap,
    /// Always this QoS ("qos0", "qos1", "qos2").
    Fixed(u8),
}

/// The CoAP gateway (`[coap]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CoapConfig {
    /// UDP address. Default 0.0.0.0:5683.
    pub bind: SocketAddr,
    /// CoAP clients served at once (each is a broker client); a request from one more gets
    /// 5.03. Default 10000; 1..=1000000.
    pub max_peers: usize,
    /// A client silent for `heartbeat` x 1.5 is closed (its observations end). Default 30s;
    /// 1s..=1d.
    pub heartbeat: Duration,
    /// Whether every request must come through connection mode (`mqtt/connection`) with its
    /// token. Default false (EMQX).
    pub connection_required: bool,
    /// How notifications are sent. Default "qos".
    pub notify_type: NotifyType,
    /// QoS of publishes without `qos=`. Default "coap".
    pub publish_qos: CoapQos,
    /// QoS of subscriptions without `qos=`. Default "coap".
    pub subscribe_qos: CoapQos,
    /// Prefix of every topic a CoAP client publishes or observes (`%c` = client id, `%u` =
    /// user name). Default "" (none).
    pub mountpoint: String,
    /// Largest datagram taken; larger ones are counted and dropped. Default 1500; 64..=65507.
    pub max_message_size: usize,
    /// Block size offered and served (Block2) and the largest accepted (Block1). Default
    /// 1024; 16..=1024, a power of two.
    pub max_block_size: usize,
    /// Largest body reassembled from Block1 blocks (4.13 beyond). Default 4MB; 1KB..=64MB.
    pub max_body_size: usize,
    /// Recent exchanges remembered per client for deduplication. Default 1024; 16..=65536.
    pub max_exchanges_per_peer: usize,
    /// Observations one client may hold (5.03 beyond). Default 32; 1..=1000.
    pub max_observers_per_peer: usize,
    /// Notifications queued behind the one in flight, per observation; beyond it the oldest
    /// is dropped (counted). Default 100; 1..=100000.
    pub notify_queue: usize,
    /// Time a publish may take to become durable before the request is answered with an empty
    /// ACK and a separate response follows. Default 1s; 100ms..=30s.
    pub separate_response_after: Duration,
    /// `coaps`: DTLS 1.2 with pre-shared keys on its own port (default 5684). Default off.
    pub dtls: Option<DtlsConfig>,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 5683)),
            max_peers: 10_000,
            heartbeat: Duration::from_secs(30),
            connection_required: false,
            notify_type: NotifyType::Qos,
            publish_qos: CoapQos::Coap,
            subscribe_qos: CoapQos::Coap,
            mountpoint: String::new(),
            max_message_size: 1500,
            max_block_size: 1024,
            max_body_size: 4 * 1024 * 1024,
            max_exchanges_per_peer: 1024,
            max_observers_per_peer: 32,
            notify_queue: 100,
            separate_response_after: Duration::from_secs(1),
            dtls: None,
        }
    }
}

const COAP_KEYS: &[&str] = &[
    "bind",
    "max_peers",
    "heartbeat",
    "connection_required",
    "notify_type",
    "publish_qos",
    "subscribe_qos",
    "mountpoint",
    "max_message_size",
    "max_block_size",
    "max_body_size",
    "max_exchanges_per_peer",
    "max_observers_per_peer",
    "notify_queue",
    "separate_response_after",
    "dtls",
];

/// Reads `[coap]`.
pub(super) fn coap_section(ctx: &mut Ctx<'_>, node: &Node) -> CoapConfig {
    let d = CoapConfig::default();
    let entries = ctx.open(node, "coap", COAP_KEYS, &[]);
    let p = "coap";
    CoapConfig {
        bind: ctx.get(entries, p, "bind", d.bind, socket_addr),
        max_peers: ctx.get(entries, p, "max_peers", d.max_peers, |c, n, k| {
            integer(c, n, k, 1, 1_000_000)
        }),
        heartbeat: ctx.get(entries, p, "heartbeat", d.heartbeat, |c, n, k| {
            duration(
                c,
                n,
                k,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
                false,
            )
        }),
        connection_required: ctx.get(
            entries,
            p,
            "connection_required",
            d.connection_required,
            boolean,
        ),
        notify_type: ctx.get(entries, p, "notify_type", d.notify_type, |c, n, k| {
            let text = string(c, n, k)?;
            match text.as_str() {
                "qos" => Some(NotifyType::Qos),
                "non" => Some(NotifyType::Non),
                "con" => Some(NotifyType::Con),
                _ => {
                    c.report(
                        n,
                        k,
                        format!("unknown notify type {text:?} (expected \"qos\", \"non\" or \"con\")"),
                    );
                    None
                }
            }
        }),
        publish_qos: ctx.get(entries, p, "publish_qos", d.publish_qos, coap_qos),
        subscribe_qos: ctx.get(entries, p, "subscribe_qos", d.subscribe_qos, coap_qos),
        mountpoint: ctx.get(entries, p, "mountpoint", d.mountpoint, |c, n, k| {
            let text = string(c, n, k)?;
            if text.contains(['+', '#']) || text.starts_with('$') {
                c.report(
                    n,
                    k,
                    format!("{text:?}: a mountpoint is a topic prefix without wildcards and not under '$'"),
                );
                return None;
            }
            Some(text)
        }),
        max_message_size: ctx.get(entries, p, "max_message_size", d.max_message_size, |c, n, k| {
            size(c, n, k, 64, 65_507)
        }),
        max_block_size: ctx.get(entries, p, "max_block_size", d.max_block_size, block_size),
        max_body_size: ctx.get(entries, p, "max_body_size", d.max_body_size, |c, n, k| {
            size(c, n, k, 1024, 64 * 1024 * 1024)
        }),
        max_exchanges_per_peer: ctx.get(
            entries,
            p,
            "max_exchanges_per_peer",
            d.max_exchanges_per_peer,
            |c, n, k| integer(c, n, k, 16, 65_536),
        ),
        max_observers_per_peer: ctx.get(
            entries,
            p,
            "max_observers_per_peer",
            d.max_observers_per_peer,
            |c, n, k| integer(c, n, k, 1, 1000),
        ),
        notify_queue: ctx.get(entries, p, "notify_queue", d.notify_queue, |c, n, k| {
            integer(c, n, k, 1, 100_000)
        }),
        separate_response_after: ctx.get(
            entries,
            p,
            "separate_response_after",
            d.separate_response_after,
            |c, n, k| {
                duration(
                    c,
                    n,
                    k,
                    Duration::from_millis(100),
                    Duration::from_secs(30),
                    false,
                )
            },
        ),
        dtls: super::validate::field(entries, "dtls").and_then(|n| {
            dtls_table(ctx, n, "coap.dtls", SocketAddr::from(([0, 0, 0, 0], 5684)))
        }),
    }
}

fn coap_qos(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<CoapQos> {
    let text = string(ctx, node, key)?;
    match text.as_str() {
        "coap" => Some(CoapQos::Coap),
        "qos0" => Some(CoapQos::Fixed(0)),
        "qos1" => Some(CoapQos::Fixed(1)),
        "qos2" => Some(CoapQos::Fixed(2)),
        _ => {
            ctx.report(
                node,
                key,
                format!("unknown QoS {text:?} (expected \"coap\", \"qos0\", \"qos1\" or \"qos2\")"),
            );
            None
        }
    }
}

pub(super) fn socket_addr(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<SocketAddr> {
    let text = string(ctx, node, key)?;
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            ctx.report(
                node,
                key,
                format!("{text:?} is not an address (expected IP:PORT, e.g. \"0.0.0.0:5683\")"),
            );
            None
        }
    }
}

/// DTLS on its own port (`dtls = { bind, psk_file, identity_hint, cert, key, client_ca }`):
/// pre-shared keys, certificates, or both (a client's ClientHello picks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsConfig {
    /// UDP address of the DTLS port.
    pub bind: SocketAddr,
    /// `identity:hexkey` lines; an identity is the user name the broker sees.
    pub psk_file: Option<std::path::PathBuf>,
    /// The PSK identity hint sent to clients. Default "holdfast".
    pub identity_hint: String,
    /// X.509 certificates both ways.
    pub certificates: Option<DtlsCertificates>,
}

/// The certificate side of DTLS: the server's certificate and key, and the CA whose
/// certificates devices must present (the certificate's CN is the device's identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsCertificates {
    /// The server's certificate (PEM; the first one in the file is sent).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM, ECDSA P-256 or P-384: the suites are ECDHE_ECDSA).
    pub key: std::path::PathBuf,
    /// The CA certificates (PEM) that sign the devices' certificates.
    pub client_ca: std::path::PathBuf,
}

const DTLS_KEYS: &[&str] = &[
    "bind",
    "psk_file",
    "identity_hint",
    "cert",
    "key",
    "client_ca",
];

/// Reads a `dtls = { ... }` table at `path` (`coap.dtls`, `lwm2m.dtls`); `default_bind` is
/// the section's DTLS port.
pub(super) fn dtls_table(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    default_bind: SocketAddr,
) -> Option<DtlsConfig> {
    let before = ctx.problem_count();
    let entries = ctx.open(node, path, DTLS_KEYS, &[]);
    let bind = ctx.get(entries, path, "bind", default_bind, socket_addr);
    let file = |ctx: &mut Ctx<'_>, key: &str| {
        super::validate::field(entries, key)
            .and_then(|n| super::validate::path_buf(ctx, n, &format!("{path}.{key}")))
    };
    let psk_file = file(ctx, "psk_file");
    let (cert, key, client_ca) = (file(ctx, "cert"), file(ctx, "key"), file(ctx, "client_ca"));
    let certificates = match (cert, key, client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Some(DtlsCertificates {
            cert,
            key,
            client_ca,
        }),
        (None, None, None) => None,
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("cert", cert.is_none()),
                ("key", key.is_none()),
                ("client_ca", ca.is_none()),
            ]
            .into_iter()
            .filter_map(|(k, m)| m.then_some(k))
            .collect();
            ctx.report(
                node,
                path,
                format!(
                    "certificates need cert, key and client_ca together (missing: {})",
                    missing.join(", ")
                ),
            );
            None
        }
    };
    if psk_file.is_none() && certificates.is_none() && ctx.problem_count() == before {
        ctx.report(
            node,
            &format!("{path}.psk_file"),
            "is required unless cert, key and client_ca are given, e.g. psk_file = \"/etc/holdfast/psk\" (identity:hexkey lines)",
        );
    }
    let identity_hint = ctx.get(
        entries,
        path,
        "identity_hint",
        "holdfast".to_owned(),
        string,
    );
    if ctx.problem_count() != before {
        return None;
    }
    Some(DtlsConfig {
        bind,
        psk_file,
        identity_hint,
        certificates,
    })
}

/// A CoAP block size: a power of two from 16 to 1024 (`max_block_size`, CoAP and LwM2M).
pub(super) fn block_size(c: &mut Ctx<'_>, n: &Node, k: &str) -> Option<usize> {
    let v: usize = size(c, n, k, 16, 1024)?;
    if !v.is_power_of_two() {
        c.report(
            n,
            k,
            format!("must be a power of two (16, 32 ... 1024), got {v}"),
        );
        return None;
    }
    Some(v)
}
