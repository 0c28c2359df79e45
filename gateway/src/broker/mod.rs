//! The MQTT broker: the router behind its lock, listeners, connections and `$SYS`.
//!
//! Owns the shared `Broker` handle every connection task holds. Connections talk to the router
//! only through [`Broker::with_router`], which takes the lock for one batch of operations and
//! wakes the connections that got deliveries after releasing it. Nothing here holds the lock
//! across an `.await`.

pub(crate) mod access;
pub mod auto_subscribe;
pub mod client;
pub mod connection;
pub mod events;
pub mod limiter;
pub mod listener;
pub mod message;
pub mod peer_cert;
pub mod persist;
pub mod router;
pub mod session;
pub mod session_persist;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod terminate;
pub mod tls;
pub mod uplink;

use crate::auth::Authenticator;
use crate::config::Config;
use router::{Router, RouterConfig};
use stats::{ListenerStats, TrafficStats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink::{Forwarded, Uplink};

/// Most bytes of a topic or client id written into a log line at info level and above.
pub const LOG_TEXT_MAX: usize = 1024;

/// `text` cut to [`LOG_TEXT_MAX`] bytes (at a character boundary) with the length left out,
/// so a 64 KiB topic cannot make every warning about it 64 KiB long.
pub fn short(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LOG_TEXT_MAX {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = LOG_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...(+{} bytes)", &text[..end], text.len() - end))
}

/// Shared state of a running broker.
#[derive(Debug)]
pub struct Broker {
    router: Mutex<Router>,
    /// The configuration it runs with.
    pub config: Arc<Config>,
    /// Who may connect.
    pub auth: Arc<Authenticator>,
    /// Traffic counters.
    pub traffic: TrafficStats,
    /// Per-listener counters, registered as listeners bind.
    pub listeners: Mutex<Vec<Arc<ListenerStats>>>,
    /// When the broker started (uptime).
    pub started_at: Instant,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// The password-check workers: a fixed number of threads and a bounded queue, so a login
    /// storm is refused as busy instead of exhausting memory or starving real logins.
    pub auth_checks: Arc<crate::auth::CheckPool>,
    /// Failed logins per (address, user), `auth.max_login_failures`.
    pub login_lockout: crate::auth::lockout::Lockout,
    next_conn_id: AtomicU64,
    /// Who hears about clients, subscriptions and messages (the webhooks), once registered.
    events: OnceLock<Arc<dyn events::Events>>,
    /// Where routed messages leave the gateway (the bridges' queues; none without
    /// `[[bridges]]`).
    uplink: OnceLock<Arc<dyn Uplink>>,
    /// The CoAP gateway's peers and counters, when `[coap]` runs (for `holdfast ctl` and
    /// `$SYS`; the gateway itself is a client of the broker like any other).
    pub coap: OnceLock<Arc<crate::coap::Status>>,
    /// The LwM2M server's registry and counters, when `[lwm2m]` runs.
    pub lwm2m: OnceLock<Arc<crate::lwm2m::Status>>,
    /// The Modbus pollers' devices and counters, when `[modbus]` runs.
    pub modbus: OnceLock<Arc<crate::modbus::Status>>,
    /// The raw serial ports' state and counters, when `[serial]` runs.
    pub serial: OnceLock<Arc<crate::serial::Status>>,
}

impl Broker {
    /// A broker for `config`, not yet listening.
    pub fn new(
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        shutdown: CancellationToken,
    ) -> Arc<Broker> {
        let m = &config.mqtt;
        let router = Router::new(RouterConfig {
            max_mqueue_len: m.max_mqueue_len,
            mqueue_full: m.mqueue_full,
            slow_subscriber_timeout: m.slow_subscriber_timeout,
            mqueue_store_qos0: m.mqueue_store_qos0,
            retain_available: m.retain_available,
            max_retained_messages: m.max_retained_messages,
            max_retained_payload: m.max_retained_payload as usize,
            max_retained_bytes: usize::try_from(m.max_retained_bytes).unwrap_or(usize::MAX),
            max_sessions: m.max_sessions,
            max_mqueue_bytes: usize::try_from(m.max_mqueue_bytes).unwrap_or(usize::MAX),
            max_queued_bytes_total: usize::try_from(m.max_queued_bytes_total).unwrap_or(usize::MAX),
            shared_strategy: m.shared_subscription_strategy,
            max_topic_levels: m.max_topic_levels,
            max_topic_len: m.max_topic_len,
            max_subscription_bytes_total: usize::try_from(m.max_subscription_bytes_total)
                .unwrap_or(usize::MAX),
            force_shutdown_mqueue_len: m.force_shutdown_mqueue_len,
            force_shutdown_heap_size: usize::try_from(m.force_shutdown_heap_size)
                .unwrap_or(usize::MAX),
        });
        Arc::new(Broker {
            router: Mutex::new(router),
            events: OnceLock::new(),
            coap: OnceLock::new(),
            lwm2m: OnceLock::new(),
            modbus: OnceLock::new(),
            serial: OnceLock::new(),
            login_lockout: crate::auth::lockout::Lockout::new(
                config.auth.max_login_failures,
                config.auth.login_failure_window,
            ),
            auth_checks: crate::auth::CheckPool::start(
                auth.clone(),
                config.auth.check_workers,
                config.auth.max_pending_checks,
            ),
            config,
            auth,
            traffic: TrafficStats::default(),
            listeners: Mutex::new(Vec::new()),
            started_at: Instant::now(),
            shutdown,
            next_conn_id: AtomicU64::new(1),
            uplink: OnceLock::new(),
        })
    }

    /// Hands the messages `uplink` wants to it from now on. Set once, at start-up, before
    /// any listener accepts.
    pub fn set_uplink(&self, uplink: Arc<dyn Uplink>) {
        if self.uplink.set(uplink.clone()).is_ok() {
            self.with_router(|r| r.set_uplink(uplink));
        }
    }

    /// Tells `events` about clients, subscriptions and messages from now on. Set once, at
    /// start-up, before any listener accepts.
    pub fn set_events(&self, events: Arc<dyn events::Events>) {
        if self.events.set(events.clone()).is_ok()
            && events.wants(crate::config::WebhookEvent::MessageDropped)
        {
            self.with_router(|r| r.set_events(events));
        }
    }

    /// The registered observer (one that wants nothing when none is).
    pub fn events(&self) -> &dyn events::Events {
        match self.events.get() {
            Some(e) => &**e,
            None => &events::NoEvents,
        }
    }

    /// Where routed messages leave the gateway, if anywhere.
    pub fn uplink(&self) -> Option<&Arc<dyn Uplink>> {
        self.uplink.get()
    }

    /// Runs `f` on the router under its lock, then wakes the connections it queued work for
    /// and appends what it routed for the bridges to their queues (nobody waits for those).
    pub fn with_router<R>(&self, f: impl FnOnce(&mut Router) -> R) -> R {
        self.with_router_forwarding(f, &mut Vec::new())
    }

    /// As [`with_router`](Self::with_router), and reports in `forwarded` what happened to each
    /// message the bridges took, in routing order (a connection waits on these before it
    /// acknowledges its device).
    pub fn with_router_forwarding<R>(
        &self,
        f: impl FnOnce(&mut Router) -> R,
        forwarded: &mut Vec<Forwarded>,
    ) -> R {
        let (result, wake, forwards) = {
            let mut router = self
                .router
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = f(&mut router);
            (result, router.take_wakeups(), router.take_forwards())
        };
        for conn in wake {
            conn.wake();
        }
        if let (Some(uplink), false) = (self.uplink.get(), forwards.is_empty()) {
            let now = Instant::now();
            for msg in forwards {
                forwarded.push(uplink.append(&msg, now));
            }
        }
        result
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client id for a v5 client that sent an empty one.
    ///
    /// 128 random bits (a CSPRNG), never one a session holds: a per-process counter would hand
    /// a restored session's id (and its queued messages) to a stranger after a restart
    /// (MQTT-3.2.2-16).
    pub fn assign_client_id(&self) -> String {
        loop {
            let id = format!("holdfast-{:032x}", rand::random::<u128>());
            if !self.with_router(|r| r.has_client(&id)) {
                return id;
            }
        }
    }

    /// Registers a listener's counters.
    pub fn register_listener(&self, stats: Arc<ListenerStats>) {
        self.listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(stats);
    }

    /// Snapshot of the listener counters.
    pub fn listener_stats(&self) -> Vec<Arc<ListenerStats>> {
        self.listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod session_persist_tests;

#[cfg(test)]
mod short_tests {
    #[test]
    fn long_log_text_is_cut_at_a_character_boundary() {
        assert_eq!(super::short("a/b"), "a/b");
        let long = "é".repeat(1000);
        let cut = super::short(&long);
        assert!(
            cut.len() < 1100 && cut.ends_with("...(+976 bytes)"),
            "{cut}"
        );
    }
}
