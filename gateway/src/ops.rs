//! The operations service layer: actions an operator takes on a running gateway.
//!
//! Owns the entry points that SIGHUP, `holdfast ctl` and the web UI share, so each action has
//! one implementation and one log format whoever asks for it. Each function is synchronous and
//! may block briefly on file I/O: async callers run it in `spawn_blocking`. Listings take the
//! router lock once and are bounded by [`MAX_ROWS`]. It never exits the process and drops a
//! client only when asked to ([`kick`]).

use crate::auth::ReloadReport;
use crate::broker::router::{ClientRow, RetainedRow, Rows, SubscriptionRow};
use crate::broker::stats::DisconnectReason;
use crate::broker::{sys, Broker};
use crate::trace::{self, TraceInfo, TraceKind, TraceSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Reloads the password file, the client-id allowlist and the ACL file (`holdfast ctl
/// reload`, SIGHUP). A broken file keeps its previous version in force and is reported (and
/// logged as `file:line: reason`); connected clients stay connected and get the new ACL at
/// their next publish or subscribe.
pub fn reload(broker: &Broker) -> ReloadReport {
    tracing::info!("reloading the auth files");
    let report = broker.auth.reload();
    recheck_connected(broker);
    report
}

/// After a reload, what connected clients hold must still be theirs: a client whose user the
/// password file no longer lists is disconnected, and a subscription the ACL now denies is
/// removed (offline sessions are checked when they resume).
fn recheck_connected(broker: &Broker) {
    use crate::auth::acl::{self, Action, ClientIdentity};
    let connected = broker.with_router(|r| r.connected_sessions());
    let acl_now = broker.auth.acl().current();
    for (sid, client_id, meta, filters) in connected {
        if meta.password_user {
            if let Some(user) = meta.username.as_deref() {
                if !broker.auth.password_file_lists(user) {
                    tracing::warn!(client_id = %client_id, user, "user removed from the password file: disconnected");
                    broker.with_router(|r| r.kick(&client_id));
                    continue;
                }
            }
        }
        let client = ClientIdentity {
            client_id: client_id.as_str(),
            username: meta.username.as_deref(),
            ip: meta.peer.ip(),
        };
        let view = acl_now.for_client(&client);
        let denied: Vec<holdfast_mqtt::ByteStr> = filters
            .into_iter()
            .filter(|f| {
                let verdict = acl::local_only_sys(
                    view.check(Action::Subscribe, f),
                    Action::Subscribe,
                    f,
                    meta.peer.ip(),
                );
                verdict.permission == crate::auth::Permission::Deny
            })
            .collect();
        if denied.is_empty() {
            continue;
        }
        for f in &denied {
            tracing::warn!(client_id = %client_id, filter = %f, "subscription denied by the reloaded ACL: removed");
        }
        broker.with_router(|r| r.unsubscribe(sid, &denied));
    }
}

/// Starts a trace (`holdfast ctl trace start`): the file is open when this returns. Blocks on
/// file I/O.
pub fn trace_start(broker: &Broker, mut spec: TraceSpec) -> Result<TraceInfo, String> {
    if spec.file.is_relative() {
        // A bare name: under {data_dir}/traces, which the unit lets the gateway write (its
        // /tmp is private to it).
        if spec.file.components().count() != 1 {
            return Err(format!(
                "{}: give a bare file name (written under {{data_dir}}/traces) or an absolute path",
                spec.file.display()
            ));
        }
        let dir = broker.config.node.data_dir.join("traces");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        spec.file = dir.join(&spec.file);
    }
    trace::traces().start(spec)
}

/// Stops the matching traces (all when `kind` is `None`) and waits until their files are
/// complete; returns what each wrote.
pub fn trace_stop(kind: Option<TraceKind>, value: Option<&str>) -> Vec<TraceInfo> {
    trace::traces().stop(kind, value)
}

/// The running traces.
pub fn trace_list() -> Vec<TraceInfo> {
    trace::traces().list()
}

/// The most rows one listing returns (`holdfast ctl clients list`, `subscriptions`,
/// `retained`); the answer says when it was cut short.
pub const MAX_ROWS: usize = 10_000;

/// One listener's counters (`holdfast ctl listeners`), as in the EMQX FAQ.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ListenerView {
    /// Listener name ("tcp:default").
    pub name: String,
    /// Address it is bound to.
    pub listen_on: String,
    /// True while the gateway accepts on it (until shutdown starts).
    pub running: bool,
    /// Connections open now.
    pub current_conn: usize,
    /// Configured connection cap.
    pub max_conns: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused at accept (cap or rate).
    pub refused: u64,
    /// Failed TLS handshakes or WebSocket upgrades.
    pub handshake_failed: u64,
    /// Connections ended since start, by reason (every reason, zeros included).
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub shutdown_count: BTreeMap<&'static str, u64>,
}

/// Every listener's counters, in config order.
pub fn listeners(broker: &Broker) -> Vec<ListenerView> {
    let running = !broker.shutdown.is_cancelled();
    broker
        .listener_stats()
        .iter()
        .map(|l| ListenerView {
            name: l.name.clone(),
            listen_on: l.listen_on.clone(),
            running,
            current_conn: l.current.load(Ordering::Relaxed),
            max_conns: l.max_connections,
            accepted: l.accepted.load(Ordering::Relaxed),
            refused: l.refused.load(Ordering::Relaxed),
            handshake_failed: l.handshake_failed.load(Ordering::Relaxed),
            shutdown_count: DisconnectReason::ALL
                .iter()
                .map(|r| (r.as_str(), l.shutdown_count(*r)))
                .collect(),
        })
        .collect()
}

/// A bounded listing: the first rows in order, and whether more were left out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Listing<T> {
    /// The rows, sorted.
    pub rows: Vec<T>,
    /// How many there are in all.
    pub total: usize,
    /// True when `rows` holds fewer than `total`.
    pub truncated: bool,
}

impl<T> Listing<T> {
    fn from_rows<R>(rows: Rows<R>, view: impl Fn(R) -> T) -> Listing<T> {
        Listing {
            rows: rows.rows.into_iter().map(view).collect(),
            total: rows.total,
            truncated: rows.truncated,
        }
    }
}

/// One client (session) as the operator sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ClientView {
    /// Client identifier.
    pub client_id: String,
    /// User name of the current connection, if any.
    pub username: Option<String>,
    /// Peer address of the current connection.
    pub peer: Option<String>,
    /// MQTT protocol level (3, 4, 5); 0 for the in-process clients.
    pub protocol: u8,
    /// What it speaks: `mqtt`, `coap`, `lwm2m`, `modbus`, `serial`, `web`, `bridge` (empty
    /// while offline).
    pub proto_name: String,
    /// True while connected.
    pub connected: bool,
    /// Unix seconds when the current connection was accepted.
    pub connected_at: Option<u64>,
    /// Messages waiting in its session queue.
    pub queued: usize,
    /// Messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Subscriptions it holds.
    pub subscriptions: usize,
}

impl From<ClientRow> for ClientView {
    fn from(r: ClientRow) -> ClientView {
        ClientView {
            client_id: r.client_id,
            username: r.username,
            peer: r.peer,
            protocol: r.protocol,
            proto_name: r.proto_name,
            connected: r.connected,
            connected_at: r.connected_at,
            queued: r.queued,
            inflight: r.inflight,
            subscriptions: r.subscriptions,
        }
    }
}

/// One subscription.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SubscriptionView {
    /// Subscriber.
    pub client_id: String,
    /// Topic filter (shared ones as `$share/{group}/{filter}`).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
}

impl From<SubscriptionRow> for SubscriptionView {
    fn from(r: SubscriptionRow) -> SubscriptionView {
        SubscriptionView {
            client_id: r.client_id,
            filter: r.filter,
            qos: r.qos,
        }
    }
}

/// One retained message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RetainedView {
    /// Topic it is retained on.
    pub topic: String,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// QoS it was published with.
    pub qos: u8,
}

impl From<RetainedRow> for RetainedView {
    fn from(r: RetainedRow) -> RetainedView {
        RetainedView {
            topic: r.topic,
            payload_size: r.payload_size,
            qos: r.qos,
        }
    }
}

/// Sessions by client id, at most [`MAX_ROWS`].
pub fn clients(broker: &Broker) -> Listing<ClientView> {
    clients_page(broker, "", 0, MAX_ROWS)
}

/// One page of the sessions whose client id, user name or peer address contains `search`
/// (empty: all), by client id; `limit` is capped at [`MAX_ROWS`].
pub fn clients_page(
    broker: &Broker,
    search: &str,
    offset: usize,
    limit: usize,
) -> Listing<ClientView> {
    // The router lock is held only to copy the sessions' keys (reference counts), then for
    // a few rows at a time: routing never waits on a search over every session.
    const ROWS_PER_HOLD: usize = 256;
    let limit = limit.min(MAX_ROWS);
    let keys = broker.with_router(|r| r.client_keys());
    let (page, total) = crate::broker::router::search_clients(keys, search, offset, limit);
    let mut rows = Vec::with_capacity(page.len());
    for ids in page.chunks(ROWS_PER_HOLD) {
        rows.extend(broker.with_router(|r| r.client_rows(ids)));
    }
    Listing {
        truncated: offset.saturating_add(page.len()) < total,
        rows: rows.into_iter().map(ClientView::from).collect(),
        total,
    }
}

/// One session with its subscriptions, if the client id has one.
pub fn client(broker: &Broker, client_id: &str) -> Option<(ClientView, Vec<SubscriptionView>)> {
    broker.with_router(|r| {
        let row = r.client_info(client_id)?;
        let subs = r
            .subscriptions_of(client_id)
            .into_iter()
            .map(|(filter, options)| SubscriptionView {
                client_id: client_id.to_owned(),
                filter,
                qos: options.qos as u8,
            })
            .collect();
        Some((row.into(), subs))
    })
}

/// Closes the connection of `client_id` with DISCONNECT 0x98 (administrative action); false
/// when no connection serves it.
pub fn kick(broker: &Broker, client_id: &str) -> bool {
    let kicked = broker.with_router(|r| r.kick(client_id));
    if kicked {
        tracing::info!(client_id, "kicking the client (operator request)");
    }
    kicked
}

/// Every subscription, at most [`MAX_ROWS`].
pub fn subscriptions(broker: &Broker) -> Listing<SubscriptionView> {
    let rows = broker.with_router(|r| r.subscriptions_all(MAX_ROWS));
    Listing::from_rows(rows, SubscriptionView::from)
}

/// Retained messages, at most [`MAX_ROWS`].
pub fn retained(broker: &Broker) -> Listing<RetainedView> {
    let rows = broker.with_router(|r| r.retained_list(MAX_ROWS));
    Listing::from_rows(rows, RetainedView::from)
}

/// The broker statistics, the same numbers `$SYS/brokers/{node}/stats/...` publishes.
pub fn stats(broker: &Broker) -> Vec<(&'static str, u64)> {
    sys::stats_snapshot(broker)
}

/// Every webhook's counters as `webhooks/{name}/{counter}` -> value (`holdfast ctl stats`),
/// the numbers `$SYS/brokers/{node}/webhooks/{name}/...` publishes.
pub fn webhook_stats(broker: &Broker) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Some(webhooks) = crate::webhook::of(broker) else {
        return Vec::new();
    };
    for h in webhooks.snapshot() {
        for (counter, value) in [
            ("events", h.events),
            ("sent", h.sent),
            ("failed", h.failed),
            ("dropped_queue_full", h.dropped_queue_full),
            ("retries", h.retries),
            ("queued", h.queued),
        ] {
            out.push((format!("webhooks/{}/{counter}", h.name), value));
        }
    }
    out
}

/// One bridge's state and counters (`holdfast ctl bridges`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BridgeView {
    /// Bridge name.
    pub name: String,
    /// Link state ("up", "connecting", ...).
    #[schema(value_type = String)]
    pub state: &'static str,
    /// Messages waiting in its queue.
    pub queued: u64,
    /// Bytes waiting in its queue.
    pub queued_bytes: u64,
    /// Messages the cloud broker acknowledged.
    pub forwarded: u64,
    /// Times the link reconnected.
    pub reconnects: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// Every bridge (none without `[[bridges]]`).
pub fn bridges(broker: &Broker) -> Vec<BridgeView> {
    let Some(forwarder) = crate::bridge::forwarder(broker) else {
        return Vec::new();
    };
    forwarder
        .outboxes()
        .iter()
        .map(|o| {
            let s = &o.stats;
            let q = o.queue.stats().unwrap_or_default();
            BridgeView {
                name: o.name.clone(),
                state: s.state().as_str(),
                queued: q.len,
                queued_bytes: q.bytes,
                forwarded: s.forwarded.load(Ordering::Relaxed),
                reconnects: s.reconnects.load(Ordering::Relaxed),
                last_error: s.last_error(),
            }
        })
        .collect()
}

/// What [`factory_reset`] removed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FactoryReset {
    /// The entries of the data directory that were removed (names).
    pub removed: Vec<String>,
}

/// Why [`factory_reset`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FactoryResetError {
    /// A gateway answers on the control socket: stop it first.
    #[error("a gateway is running on {0} (its control socket answers): stop it first")]
    Running(String),
    /// The data directory could not be read or an entry could not be removed.
    #[error("{path}: {source}")]
    Io {
        /// What could not be read or removed.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What `holdfast ctl coap` shows: the CoAP clients and the gateway's counters.
#[derive(Debug)]
pub struct CoapView {
    /// The clients served now.
    pub peers: Vec<crate::coap::PeerView>,
    /// Counters by name (as `$SYS/brokers/{node}/coap/...`).
    pub stats: Vec<(&'static str, u64)>,
}

/// The CoAP gateway's clients and counters; `None` when `[coap]` is off.
pub fn coap(broker: &Broker) -> Option<CoapView> {
    let status = broker.coap.get()?;
    Some(CoapView {
        peers: status.peers(),
        stats: status.stats(),
    })
}

/// What `holdfast ctl lwm2m` shows: the registered endpoints and the server's counters.
#[derive(Debug)]
pub struct Lwm2mView {
    /// The registered endpoints.
    pub endpoints: Vec<crate::lwm2m::EndpointView>,
    /// Counters by name (as `$SYS/brokers/{node}/lwm2m/...`).
    pub stats: Vec<(&'static str, u64)>,
}

/// The LwM2M server's endpoints and counters; `None` when `[lwm2m]` is off.
pub fn lwm2m(broker: &Broker) -> Option<Lwm2mView> {
    let status = broker.lwm2m.get()?;
    Some(Lwm2mView {
        endpoints: status.endpoints(),
        stats: status.stats(),
    })
}

/// What `holdfast ctl modbus` shows: the polled devices and the pollers' counters.
#[derive(Debug)]
pub struct ModbusView {
    /// The devices, in config order.
    pub devices: Vec<crate::modbus::DeviceView>,
    /// Counters by name (as `$SYS/brokers/{node}/modbus/...`).
    pub stats: Vec<(&'static str, u64)>,
}

/// The Modbus pollers' devices and counters; `None` when `[modbus]` is off.
pub fn modbus(broker: &Broker) -> Option<ModbusView> {
    let status = broker.modbus.get()?;
    Some(ModbusView {
        devices: status.devices(),
        stats: status.stats(),
    })
}

/// What `holdfast ctl serial` shows: the raw serial ports and their counters.
#[derive(Debug)]
pub struct SerialView {
    /// The ports, in config order.
    pub ports: Vec<crate::serial::PortView>,
    /// Counters by name (as `$SYS/brokers/{node}/serial/...`).
    pub stats: Vec<(&'static str, u64)>,
}

/// The raw serial ports and their counters; `None` when `[serial]` is off.
pub fn serial(broker: &Broker) -> Option<SerialView> {
    let status = broker.serial.get()?;
    Some(SerialView {
        ports: status.ports(),
        stats: status.stats(),
    })
}

/// Factory reset (`holdfast factory-reset`): removes everything the gateway keeps in
/// `data_dir` (persistent sessions and their queues, retained messages, the bridges' queues
/// and sessions, traces, the reset history), leaving the directory itself and the config.
/// Refuses while a gateway answers on the directory's control socket. Blocks on file I/O.
pub fn factory_reset(data_dir: &std::path::Path) -> Result<FactoryReset, FactoryResetError> {
    let socket = crate::ctl::socket_path(data_dir);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(FactoryResetError::Running(socket.display().to_string()));
    }
    let io = |path: &std::path::Path, source| FactoryResetError::Io {
        path: path.display().to_string(),
        source,
    };
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FactoryReset {
                removed: Vec::new(),
            })
        }
        Err(e) => return Err(io(data_dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(data_dir, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(|e| io(&path, e))?.is_dir();
        let result = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.map_err(|e| io(&path, e))?;
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    removed.sort();
    tracing::warn!(data_dir = %data_dir.display(), removed = ?removed, "factory reset");
    Ok(FactoryReset { removed })
}
