//! The composition root: builds the broker from a config, binds every listener, opens the
//! board (arming its watchdog only once start-up can no longer fail), runs until the shutdown
//! token fires, then drains connections within a bounded grace period.
//!
//! Owns startup order and the one shutdown path. Never parses config or touches the router's
//! data itself.

use crate::auth::{AuthFileError, Authenticator};
use crate::bridge;
use crate::broker::listener::{self, ListenerError};
use crate::broker::session_persist;
use crate::broker::{sys, Broker};
use crate::config::{Config, ListenerKind};
use crate::ctl;
use crate::supervise::{self, Supervisor};
use crate::webhook;
use holdfast_board::{BoardError, SystemdNotify};
use holdfast_storage::kv::{KvBackend, RetainedStore, SessionStore, SledOptions, SledStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long connections get to say goodbye after shutdown starts.
const GRACE: Duration = Duration::from_secs(5);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind its address or load its certificate.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The password file could not be read.
    #[error("auth: {0}")]
    Auth(#[from] AuthFileError),
    /// A bridge's queue could not be opened.
    #[error(transparent)]
    Bridge(#[from] bridge::OpenError),
    /// A webhook's TLS settings could not be loaded (its CA file, the system roots).
    #[error(transparent)]
    Webhook(#[from] webhook::SetupError),
    /// The board could not be opened (its watchdog device, usually).
    #[error("board: {0} (set board.watchdog_device = \"\" to run without a hardware watchdog)")]
    Board(#[from] BoardError),
    /// The CoAP gateway's UDP socket could not be bound.
    #[error(transparent)]
    Coap(#[from] crate::coap::BindError),
    /// The LwM2M server's socket or object definitions.
    #[error(transparent)]
    Lwm2m(#[from] crate::lwm2m::StartError),
    /// The web server's listener or its credential files.
    #[error(transparent)]
    Web(#[from] crate::web::StartError),
    /// The thread that feeds the watchdog during start-up could not be started.
    #[error("cannot start the start-up watchdog feeder: {0}")]
    Feeder(std::io::Error),
}

/// What [`Gateway::restore_and_bind`] makes ready.
struct Bound {
    broker: Arc<Broker>,
    listeners: Vec<listener::BoundListener>,
    store: Option<Arc<SledStore>>,
    webhooks: Vec<webhook::Endpoint>,
    coap: Option<crate::coap::Bound>,
    lwm2m: Option<crate::lwm2m::Bound>,
    web: Option<crate::web::Bound>,
}

/// A gateway whose listeners are bound; `serve` runs it.
#[derive(Debug)]
pub struct Gateway {
    broker: Arc<Broker>,
    listeners: Vec<listener::BoundListener>,
    /// Retained messages and persistent sessions on disk.
    store: Option<Arc<SledStore>>,
    /// The board task, ready to run once serving starts.
    supervisor: Supervisor,
    /// The webhooks' endpoints, ready for their workers once serving starts.
    webhooks: Vec<webhook::Endpoint>,
    /// The CoAP gateway's socket (`[coap]`).
    coap: Option<crate::coap::Bound>,
    /// The LwM2M server's socket and object model (`[lwm2m]`).
    lwm2m: Option<crate::lwm2m::Bound>,
    /// The web server's listener and credentials (`[web]`).
    web: Option<crate::web::Bound>,
    /// The config file the gateway runs on, for the web UI to edit.
    config_file: Option<crate::config_file::ConfigFile>,
}

impl Gateway {
    /// Builds the broker and binds every listener, failing fast on the first bind error.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Gateway, StartError> {
        let auth = Arc::new(Authenticator::from_config(&config.auth)?);
        warn_on_insecure_defaults(&config);
        raise_nofile_limit();
        protect_state(&config.node.data_dir);
        // First: after a crash the hardware watchdog is still armed, so the board is opened
        // and fed (systemd told start-up is progressing) through the restore, however long;
        // a start-up that fails from here closes it cleanly (magic close).
        let board = supervise::open_board(&config)?;
        let feeder = supervise::StartupFeeder::start(board, supervise::STARTUP_FEED_LIMIT)
            .map_err(StartError::Feeder)?;
        match Gateway::restore_and_bind(config, auth, shutdown).await {
            Ok(parts) => {
                let board = feeder.finish();
                let supervisor =
                    Supervisor::new(board, SystemdNotify::from_env(), parts.broker.clone());
                Ok(Gateway {
                    broker: parts.broker,
                    listeners: parts.listeners,
                    supervisor,
                    store: parts.store,
                    webhooks: parts.webhooks,
                    coap: parts.coap,
                    lwm2m: parts.lwm2m,
                    web: parts.web,
                    config_file: None,
                })
            }
            Err(e) => {
                let mut board = feeder.finish();
                if let Err(close) = board.close() {
                    tracing::error!("{close}");
                }
                Err(e)
            }
        }
    }

    /// Everything of [`Gateway::bind`] but the board: state restored, queues opened,
    /// listeners bound.
    async fn restore_and_bind(
        config: Config,
        auth: Arc<Authenticator>,
        shutdown: CancellationToken,
    ) -> Result<Bound, StartError> {
        // Before anything stored is read: which timeline its wall-clock times are in.
        crate::clock::start(&config.node.data_dir, config.node.clock);
        let broker = Broker::new(Arc::new(config), auth, shutdown);
        let store = open_store(&broker.config.node.data_dir, broker.config.node.state_cache);
        if let Some(store) = &store {
            let now = std::time::Instant::now();
            let dyn_store: Arc<dyn RetainedStore> = store.clone();
            let loaded = broker.with_router(|r| r.attach_retained_store(dyn_store, now));
            let sessions = broker.with_router(|r| r.attach_session_store(&**store, now));
            tracing::info!(data_dir = %broker.config.node.data_dir.display(), retained = loaded, sessions, "state restored");
        }
        crate::clock::note(&broker.config.node.data_dir, broker.config.node.clock);
        if !broker.config.bridges.is_empty() {
            // A bridge without its queue would lose data while looking healthy: refuse to start.
            let forwarder =
                bridge::open_outboxes(&broker.config.bridges, &broker.config.node.data_dir)?;
            broker.set_uplink(Arc::new(forwarder));
        }
        let webhooks = webhook::endpoints(&broker.config.webhooks)?;
        if !broker.config.webhooks.is_empty() {
            let hooks = webhook::Webhooks::new(&broker.config.webhooks, &broker.config.node.name);
            broker.set_events(Arc::new(hooks));
        }
        let mut listeners = Vec::new();
        for l in &broker.config.listeners {
            listeners.push(listener::bind(l).await?);
        }
        let coap = match &broker.config.coap {
            Some(c) => Some(crate::coap::bind(c).await?),
            None => None,
        };
        let lwm2m = match &broker.config.lwm2m {
            Some(c) => Some(crate::lwm2m::bind(c).await?),
            None => None,
        };
        let web = match &broker.config.web {
            Some(w) if w.enabled => crate::web::bind(w, &broker.config.node.data_dir).await?,
            _ => None,
        };
        Ok(Bound {
            broker,
            listeners,
            store,
            webhooks,
            coap,
            lwm2m,
            web,
        })
    }

    /// Addresses the listeners are bound to, in config order.
    pub fn local_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.listeners.iter().map(|l| l.local_addr()).collect()
    }

    /// The broker (for in-process tests and adapters).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Raises an alarm that stays while the gateway runs (the status LED, `$SYS` board
    /// alarms, systemd `STATUS=`): e.g. that it runs on the last known good config.
    pub fn raise_standing_alarm(&mut self, alarm: String) {
        self.supervisor.raise_standing_alarm(alarm);
    }

    /// The config file this gateway runs on (the web UI reads, checks and applies it).
    pub fn set_config_file(&mut self, file: crate::config_file::ConfigFile) {
        self.supervisor.set_restart_state(file.restart_state());
        self.config_file = Some(file);
    }

    /// The config file given to [`Gateway::set_config_file`]; its restart request tells the
    /// caller, once [`Gateway::serve`] returns, whether to start again.
    pub fn config_file(&self) -> Option<crate::config_file::ConfigFile> {
        self.config_file.clone()
    }

    /// Runs until the shutdown token is cancelled, then closes every connection (v5 clients get
    /// DISCONNECT 0x8B) and waits up to the grace period for them. After a stop the board's
    /// factory-reset button asked for, the data directory is wiped last.
    pub async fn serve(self) {
        let tracker = TaskTracker::new();
        let broker = self.broker;
        let mut bridge_rates = bridge::RateProbe::default();
        let more: Vec<sys::StatsPublisher> = vec![
            Box::new(move |b| bridge::publish_stats(b, &mut bridge_rates)),
            // $SYS/brokers/{node}/webhooks/{name}/{events,sent,failed,dropped_queue_full,...}
            // $SYS/brokers/{node}/coap/{peers,published,notifications,bad_truncated,...}
            Box::new(|b| {
                let Some(status) = b.coap.get() else { return };
                for (name, value) in status.stats() {
                    let topic = format!("$SYS/brokers/{}/coap/{name}", b.config.node.name);
                    let value = value.to_string().into_bytes();
                    crate::broker::client::publish_system(b, topic, value, true);
                }
            }),
            // $SYS/brokers/{node}/lwm2m/{endpoints,registrations,commands,notifications,...}
            Box::new(|b| {
                let Some(status) = b.lwm2m.get() else { return };
                for (name, value) in status.stats() {
                    let topic = format!("$SYS/brokers/{}/lwm2m/{name}", b.config.node.name);
                    let value = value.to_string().into_bytes();
                    crate::broker::client::publish_system(b, topic, value, true);
                }
            }),
            // $SYS/brokers/{node}/modbus/{devices,devices_failing,polls,timeouts,...}
            Box::new(|b| {
                let Some(status) = b.modbus.get() else { return };
                for (name, value) in status.stats() {
                    let topic = format!("$SYS/brokers/{}/modbus/{name}", b.config.node.name);
                    let value = value.to_string().into_bytes();
                    crate::broker::client::publish_system(b, topic, value, true);
                }
            }),
            // $SYS/brokers/{node}/serial/{ports,ports_open,rx_frames,tx_frames,...}
            Box::new(|b| {
                let Some(status) = b.serial.get() else { return };
                for (name, value) in status.stats() {
                    let topic = format!("$SYS/brokers/{}/serial/{name}", b.config.node.name);
                    let value = value.to_string().into_bytes();
                    crate::broker::client::publish_system(b, topic, value, true);
                }
            }),
            Box::new(|b| {
                for (name, value) in crate::ops::webhook_stats(b) {
                    let topic = format!("$SYS/brokers/{}/{name}", b.config.node.name);
                    let value = value.to_string().into_bytes();
                    crate::broker::client::publish_system(b, topic, value, true);
                }
            }),
        ];
        tracker.spawn(sys::run_timers(broker.clone(), more));
        bridge::spawn_links(&broker, &tracker);
        if let Some(hooks) = webhook::of(&broker) {
            webhook::spawn(hooks, self.webhooks, &tracker, &broker.shutdown);
        }
        let session_store = self
            .store
            .as_ref()
            .map(|s| -> Arc<dyn SessionStore> { s.clone() });
        if let Some(store) = &session_store {
            tracker.spawn(session_persist::run_flusher(broker.clone(), store.clone()));
        }
        for l in self.listeners {
            tracker.spawn(listener::run(l, broker.clone(), tracker.clone()));
        }
        if let Some(coap) = self.coap {
            tracker.spawn(crate::coap::run(coap, broker.clone(), tracker.clone()));
        }
        if let Some(lwm2m) = self.lwm2m {
            tracker.spawn(crate::lwm2m::run(lwm2m, broker.clone(), tracker.clone()));
        }
        if let Some(modbus) = &broker.config.modbus {
            crate::modbus::spawn(modbus, &broker, &tracker);
        }
        if let Some(serial) = &broker.config.serial {
            crate::serial::spawn(serial, &broker, &tracker);
        }
        if let Some(web) = self.web {
            tracker.spawn(crate::web::run(
                web,
                broker.clone(),
                self.config_file.clone(),
                tracker.clone(),
            ));
        }
        // The control socket is an operator's convenience: without it the gateway still runs.
        let ctl_path = ctl::socket_path(&broker.config.node.data_dir);
        match ctl::server::bind(&ctl_path) {
            Ok(socket) => {
                tracker.spawn(ctl::server::run(
                    socket,
                    broker.clone(),
                    self.config_file.clone(),
                    tracker.clone(),
                ));
            }
            Err(e) => tracing::error!(
                socket = %ctl_path.display(),
                "cannot open the control socket ({e}); holdfast ctl will not reach this gateway"
            ),
        }
        // Sends READY=1 to systemd: the listeners are bound and accepting.
        let board = match self.supervisor.spawn() {
            Ok(running) => Some(running),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the board thread; the watchdog will not be fed");
                None
            }
        };
        tracing::info!(node = %broker.config.node.name, version = env!("CARGO_PKG_VERSION"), "holdfast running");
        broker.shutdown.cancelled().await;
        tracing::info!("shutting down");
        tracker.close();
        if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
            tracing::warn!(
                grace_seconds = GRACE.as_secs(),
                "some connections did not close within the grace period"
            );
        }
        if let Some(forwarder) = bridge::forwarder(&broker) {
            bridge::flush_all(forwarder);
        }
        // The connections have closed: their sessions' last changes go to the store before
        // its final durable flush.
        if let Some(store) = &session_store {
            session_persist::flush_once(&broker, store).await;
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.flush() {
                tracing::error!(error = %e, "final flush of the state store failed");
            }
        }
        // The board disarms its watchdog (magic close) as its last act, after the flushes:
        // one that hangs still gets the board reset.
        let factory_reset = board
            .as_ref()
            .is_some_and(supervise::Running::factory_reset_requested);
        if let Some(board) = board {
            if tokio::time::timeout(GRACE, board.close()).await.is_err() {
                tracing::warn!("the board did not close within the grace period");
            }
        }
        if factory_reset {
            // Everything is flushed and closed; what is wiped now stays wiped.
            drop(session_store);
            drop(self.store);
            let data_dir = broker.config.node.data_dir.clone();
            let wiped =
                tokio::task::spawn_blocking(move || crate::ops::factory_reset(&data_dir)).await;
            match wiped {
                Ok(Ok(done)) => tracing::warn!(
                    removed = ?done.removed,
                    "factory reset done; exiting for the service manager to start the gateway afresh"
                ),
                Ok(Err(e)) => tracing::error!("factory reset failed: {e}"),
                Err(e) => tracing::error!("factory reset failed: {e}"),
            }
        }
        tracing::info!("stopped");
    }
}

/// Everything the gateway writes is its own: umask 077 (files 0600, directories 0700: the
/// session store holds queued messages, the bridge queues hold payloads, the setup files hold
/// secrets), and a data directory this process owns is made 0700 if it was wider.
fn protect_state(data_dir: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if let Err(e) = std::fs::create_dir_all(data_dir) {
        // Reported where it matters (the state store, the bridge queues).
        tracing::debug!(data_dir = %data_dir.display(), error = %e, "cannot create the data directory yet");
        return;
    }
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && meta.uid() == nix::unistd::geteuid().as_raw() {
        match std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => {
                tracing::warn!(data_dir = %data_dir.display(), was = format!("{mode:o}"), "data directory was readable by others: now 0700")
            }
            Err(e) => {
                tracing::warn!(data_dir = %data_dir.display(), mode = format!("{mode:o}"), error = %e, "data directory is readable by others and cannot be restricted")
            }
        }
    }
}

/// Opens the state store under `data_dir`. Without one (a read-only or missing directory the
/// process cannot create), the gateway still runs, loudly, with retained messages in memory.
fn open_store(data_dir: &std::path::Path, cache_bytes: u64) -> Option<Arc<SledStore>> {
    let dir = data_dir.join("state");
    let opened = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            SledStore::open(
                &dir,
                SledOptions {
                    cache_capacity_bytes: cache_bytes,
                    ..SledOptions::default()
                },
            )
            .map_err(|e| e.to_string())
        });
    match opened {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            tracing::error!(
                data_dir = %data_dir.display(),
                "!!! cannot open the state store ({e}): retained messages and persistent sessions will NOT survive a restart; fix the directory or pass --data-dir"
            );
            None
        }
    }
}

/// Logs each of [`startup_warnings`] at warn level (`holdfast check` prints the same list).
fn warn_on_insecure_defaults(config: &Config) {
    for warning in startup_warnings(config) {
        tracing::warn!("{warning}");
    }
    for warning in tls_files(config, unix_now()).warnings {
        tracing::warn!("{warning}");
    }
}

/// What reading the TLS files of a config found.
#[derive(Debug, Default)]
pub struct TlsFiles {
    /// Files that cannot be used (the gateway would not start, or a bridge not connect).
    pub errors: Vec<String>,
    /// Certificates expired, not yet valid, or expiring within 30 days.
    pub warnings: Vec<String>,
}

/// Warn this long before a certificate expires.
const EXPIRY_NOTICE_SECS: i64 = 30 * 86_400;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Reads every TLS file the config names (listener certificates and keys, client CAs and
/// CRLs, bridge CAs and client certificates, webhook CAs) the way the gateway will, and
/// checks the validity period of every certificate it presents. `holdfast check` prints both
/// lists; `run` logs the warnings (its start fails on the errors anyway).
pub fn tls_files(config: &Config, now: i64) -> TlsFiles {
    let mut out = TlsFiles::default();
    let mut expiry = |who: &str, path: &std::path::Path| {
        let Ok(certs) = crate::broker::tls::read_certs(path) else {
            return;
        };
        let Some((not_before, not_after)) = certs
            .first()
            .and_then(|c| crate::broker::peer_cert::validity(c.as_ref()))
        else {
            return;
        };
        let days = |secs: i64| secs.abs() / 86_400;
        if not_after <= now {
            out.warnings.push(format!(
                "{who}: certificate {} EXPIRED {} day(s) ago: clients will refuse it",
                path.display(),
                days(now - not_after)
            ));
        } else if not_after - now <= EXPIRY_NOTICE_SECS {
            out.warnings.push(format!(
                "{who}: certificate {} expires in {} day(s): renew it",
                path.display(),
                days(not_after - now)
            ));
        }
        if not_before > now {
            out.warnings.push(format!(
                "{who}: certificate {} is not valid for another {} day(s) (is the clock right?)",
                path.display(),
                days(not_before - now)
            ));
        }
    };
    for l in &config.listeners {
        let Some(tls) = &l.tls else {
            continue;
        };
        let who = format!("listener {}", l.name);
        if let Err(e) = crate::broker::tls::server_config(tls) {
            out.errors.push(format!("{who}: {e}"));
            continue;
        }
        expiry(&who, &tls.cert);
    }
    for b in &config.bridges {
        let Some(tls) = &b.tls else {
            continue;
        };
        let who = format!("bridge {}", b.name);
        for path in [Some(&tls.ca), tls.cert.as_ref()].into_iter().flatten() {
            if let Err(e) = crate::broker::tls::read_certs(path) {
                out.errors.push(format!("{who}: {e}"));
            }
        }
        if let Some(key) = &tls.key {
            if let Err(e) = crate::broker::tls::read_key(key) {
                out.errors.push(format!("{who}: {e}"));
            }
        }
        if let Some(cert) = &tls.cert {
            expiry(&who, cert);
        }
    }
    for w in &config.webhooks {
        if let Some(ca) = &w.ca {
            if let Err(e) = crate::broker::tls::read_certs(ca) {
                out.errors.push(format!("webhook {}: {e}", w.name));
            }
        }
    }
    out
}

/// The start-up security warnings for `config`, one sentence each: anonymous access (loudly
/// when a non-loopback listener exposes it), plain MQTT (tcp, ws) on a non-loopback address,
/// and an auth section that refuses everyone. Empty for a config with nothing to warn about.
/// `run` logs them at start-up and `holdfast check` prints them, so both say the same.
pub fn startup_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.auth.allow_anonymous {
        let exposed: Vec<String> = config
            .listeners
            .iter()
            .filter(|l| !l.bind.ip().is_loopback())
            .map(|l| l.bind.to_string())
            .collect();
        if exposed.is_empty() {
            warnings.push("anonymous MQTT access is ENABLED (auth.allow_anonymous = true), on loopback listeners only".to_owned());
        } else {
            warnings.push(format!(
                "!!! anonymous MQTT access is ENABLED on non-loopback addresses ({}): anyone who can reach them can publish and subscribe; set auth.allow_anonymous = false and use a password file",
                exposed.join(", ")
            ));
        }
    }
    // Plain MQTT (tcp, ws) on an address other than loopback: passwords and tokens cross the
    // plant network in clear text.
    let plain: Vec<String> = config
        .listeners
        .iter()
        .filter(|l| matches!(l.kind, ListenerKind::Tcp | ListenerKind::Ws))
        .filter(|l| !l.bind.ip().is_loopback())
        .map(|l| format!("{} on {}", l.name, l.bind))
        .collect();
    if !plain.is_empty() {
        warnings.push(format!(
            "!!! plain (unencrypted) MQTT is enabled on non-loopback addresses ({}): credentials and messages cross the network in clear text; prefer kind = \"tls\" or \"wss\" listeners there",
            plain.join(", ")
        ));
    }
    let auth = &config.auth;
    if !auth.allow_anonymous
        && auth.password_file.is_none()
        && auth.clientid_allowlist.is_none()
        && auth.jwt.is_none()
    {
        warnings.push("no password file, client-id allowlist or JWT, and anonymous access is off: every MQTT client will be refused (holdfast passwd add USER --file FILE, then set auth.password_file)".to_owned());
    }
    for w in &config.webhooks {
        let loopback = w
            .url
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
            || w.url.host == "localhost";
        if !w.url.tls && !w.headers.is_empty() && !loopback {
            warnings.push(format!(
                "webhook {} posts to {} over plain http with {} header(s): whatever they carry (Authorization, tokens) crosses the network in clear text; use https",
                w.name,
                w.url.redacted(),
                w.headers.len()
            ));
        }
    }
    if auth
        .jwt
        .as_ref()
        .is_some_and(|j| j.username_claim.is_none())
    {
        warnings.push("auth.jwt has no username_claim: a token proves nothing about the CONNECT user name, so clients it admits have no user name for ACL `user` rules, `%u` or session ownership (set username_claim, e.g. \"sub\")".to_owned());
    }
    warnings
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Every client is a descriptor (three on
/// a tls or ws listener: the socket and both ends of its socketpair), and the usual soft
/// default of 1,024 would cap the broker at a few hundred clients while the hard limit allows
/// far more (mosquitto's docs leave this to the admin; we do it once at start-up).
fn raise_nofile_limit() {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => tracing::debug!(
            ?before,
            soft,
            "RLIMIT_NOFILE soft limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::debug!(?before, error = %e, "cannot raise the RLIMIT_NOFILE soft limit; keeping it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config(text: &str) -> Config {
        match config::parse(text, "test.toml", Vec::new()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn listener(kind: &str, bind: &str) -> String {
        format!("[[listeners]]\nkind = \"{kind}\"\nbind = \"{bind}\"\n")
    }

    #[test]
    fn webhook_headers_over_plain_http_and_jwt_without_username_claim_are_warned_of() {
        let base = format!(
            "{}\n[auth]\nallow_anonymous = true\njwt = {{ secret = \"0123456789abcdef0123456789abcdef\", algorithms = [\"HS256\"] }}\n",
            listener("tcp", "127.0.0.1:1883")
        );
        let hook = |url: &str| {
            format!("[[webhooks]]\nname = \"h\"\nurl = \"{url}\"\nheaders = {{ Authorization = \"Bearer t\" }}\n")
        };
        let w = startup_warnings(&config(&format!(
            "{base}{}",
            hook("http://hooks.example.com/in?token=s3cret")
        )));
        let joined = w.join("\n");
        assert!(joined.contains("webhook h posts to http://hooks.example.com:80/in?... over plain http with 1 header(s)"), "{joined}");
        assert!(!joined.contains("s3cret"), "{joined}");
        assert!(
            joined.contains("auth.jwt has no username_claim"),
            "{joined}"
        );
        for quiet in ["https://hooks.example.com/in", "http://127.0.0.1:8080/in"] {
            let w = startup_warnings(&config(&format!("{base}{}", hook(quiet)))).join("\n");
            assert!(!w.contains("plain http"), "{quiet}: {w}");
        }
    }

    #[test]
    fn plain_tcp_on_every_address_with_anonymous_access_gives_both_loud_warnings() {
        let w = startup_warnings(&config(&format!(
            "{}\n[auth]\nallow_anonymous = true\n",
            listener("tcp", "0.0.0.0:1883")
        )));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(
                "!!! anonymous MQTT access is ENABLED on non-loopback addresses (0.0.0.0:1883)"
            ),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("!!! plain (unencrypted) MQTT is enabled on non-loopback addresses (tcp:default on 0.0.0.0:1883)"),
            "{w:?}"
        );
    }

    #[test]
    fn loopback_listeners_get_no_plain_text_warning_and_a_quiet_anonymous_one() {
        let w = startup_warnings(&config(&format!(
            "{}{}\n[auth]\nallow_anonymous = true\n",
            listener("tcp", "127.0.0.1:1883"),
            listener("ws", "[::1]:8083")
        )));
        assert_eq!(
            w,
            ["anonymous MQTT access is ENABLED (auth.allow_anonymous = true), on loopback listeners only"]
        );
    }

    #[test]
    fn ws_on_a_lan_address_is_plain_text_but_tls_and_wss_are_not() {
        let w = startup_warnings(&config(&format!(
            "{}{}\n[auth]\nclientid_allowlist = \"/etc/holdfast/ids\"\n",
            listener("ws", "192.168.1.10:8083"),
            listener("tcp", "127.0.0.1:1883")
        )));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("(ws:default on 192.168.1.10:8083)"), "{w:?}");

        let tls = "tls = { cert = \"/c.pem\", key = \"/k.pem\" }\n";
        let w = startup_warnings(&config(&format!(
            "{}{tls}{}{tls}\n[auth]\nclientid_allowlist = \"/etc/holdfast/ids\"\n",
            listener("tls", "0.0.0.0:8883"),
            listener("wss", "0.0.0.0:8084")
        )));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn the_defaults_warn_of_plain_tcp_everywhere_and_of_refusing_every_client() {
        let w = startup_warnings(&Config::default());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("plain (unencrypted) MQTT"), "{w:?}");
        assert!(w[1].contains("every MQTT client will be refused"), "{w:?}");
    }
}
