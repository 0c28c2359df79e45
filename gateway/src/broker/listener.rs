//! Listeners of every kind: bind, accept within `max_connections` and `max_conn_rate`, spawn.
//!
//! Owns the accept loop of each `[[listeners]]` entry. A bind failure (or, for `tls`/`wss`, a
//! certificate that cannot be loaded) is one error naming the listener; a connection over the
//! cap is closed at once and counted; over the rate, accepting pauses (EMQX's `max_conn_rate`
//! backpressure) instead of refusing. The limits apply alike to every kind, counted at TCP
//! accept. A `tcp` socket goes straight to a connection task; the others go to a
//! [`terminate`](super::terminate) task first. It never touches the router.

use super::connection;
use super::stats::ListenerStats;
use super::stream::Stream;
use super::terminate::{self, Terminator};
use super::tls::{self, TlsSetupError};
use super::Broker;
use crate::config::{ListenerConfig, ListenerKind};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// A listener that failed to start.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot bind {bind}: {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Address asked for.
    pub bind: std::net::SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A listener that failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Its address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Its TLS settings could not be loaded.
    #[error("listener {name}: tls: {source}")]
    Tls {
        /// Listener name.
        name: String,
        /// What is wrong.
        #[source]
        source: TlsSetupError,
    },
}

/// A bound listener, ready to accept.
#[derive(Debug)]
pub struct BoundListener {
    config: ListenerConfig,
    socket: TcpListener,
    stats: Arc<ListenerStats>,
    /// For `tls`, `ws` and `wss`: what their terminator tasks share.
    terminator: Option<Arc<Terminator>>,
}

impl BoundListener {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.socket.local_addr().ok()
    }
}

/// Loads a listener's TLS settings and binds its socket.
pub async fn bind(config: &ListenerConfig) -> Result<BoundListener, ListenerError> {
    let terminator = match config.kind {
        ListenerKind::Tcp => None,
        kind => {
            let acceptor = match &config.tls {
                Some(settings) => Some(tokio_rustls::TlsAcceptor::from(
                    tls::server_config(settings).map_err(|source| ListenerError::Tls {
                        name: config.name.clone(),
                        source,
                    })?,
                )),
                None => None,
            };
            Some(Arc::new(Terminator {
                kind,
                listener: config.name.clone(),
                tls: acceptor,
                cert_login: config.tls.as_ref().and_then(|t| t.peer_cert_as_username),
            }))
        }
    };
    let socket = listen(config.bind).map_err(|source| BindError {
        name: config.name.clone(),
        bind: config.bind,
        source,
    })?;
    let listen_on = socket
        .local_addr()
        .map_or_else(|_| config.bind.to_string(), |a| a.to_string());
    let stats = Arc::new(ListenerStats::new(
        config.name.clone(),
        listen_on,
        config.max_connections,
    ));
    Ok(BoundListener {
        config: config.clone(),
        socket,
        stats,
        terminator,
    })
}

/// Backlog of pending connections: the std default (128) overflows in reconnect storms.
const BACKLOG: u32 = 1024;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // IP_FREEBIND: a listener on an address the interface gets later (DHCP, a late link)
    // binds now and accepts once the address is up, so the gateway never waits for the
    // network to start (the unit does not order after network-online.target).
    if let Err(e) =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpFreebind, &true)
    {
        tracing::debug!(%addr, error = %e, "IP_FREEBIND not available");
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections until shutdown, each served on `tracker`.
pub async fn run(listener: BoundListener, broker: Arc<Broker>, tracker: TaskTracker) {
    let BoundListener {
        config,
        socket,
        stats,
        terminator,
    } = listener;
    broker.register_listener(stats.clone());
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut rate = TokenBucket::new(config.max_conn_rate);
    // A fault here repeats many times a second (EMFILE, a connection storm): one line per
    // period with a count, the rest in the listener's counters.
    let accept_failures = crate::logging::Every::new(Duration::from_secs(10));
    let refusals = crate::logging::Every::new(Duration::from_secs(10));
    tracing::info!(listener = %config.name, listen_on = %stats.listen_on, "listener started");
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                if let Some(count) = accept_failures.due(Instant::now()) {
                    tracing::warn!(listener = %config.name, error = %e, count, "accept failed (count: since the last such line)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(count) = refusals.due(Instant::now()) {
                tracing::warn!(listener = %config.name, peer = %peer, max_connections = config.max_connections, count, "connection refused: max_connections reached (count: since the last such line)");
            }
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.current.fetch_add(1, Ordering::Relaxed);
        let (broker2, stats2) = (broker.clone(), stats.clone());
        match &terminator {
            None => {
                tracker.spawn(connection::serve(
                    Stream::Tcp(stream),
                    peer,
                    None,
                    broker2,
                    stats2,
                    permit,
                ));
            }
            Some(term) => {
                tracker.spawn(terminate::run(
                    stream,
                    peer,
                    term.clone(),
                    broker2,
                    stats2,
                    permit,
                    tracker.clone(),
                ));
            }
        }
        if let Some(wait) = rate.take(tokio::time::Instant::now()) {
            tokio::select! {
                _ = broker.shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    tracing::info!(listener = %config.name, "listener stopped");
}

/// Connection-rate limiter: `rate` tokens a second, burst of one second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<tokio::time::Instant>,
}

impl TokenBucket {
    fn new(rate: u32) -> TokenBucket {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            last: None,
        }
    }

    /// Takes a token; returns how long to wait when the bucket is empty.
    fn take(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate);
        }
        self.last = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_binds_an_address_this_host_does_not_have_yet() {
        // TEST-NET-1 (RFC 5737): never configured here; only bound, nothing is sent.
        let addr: std::net::SocketAddr = "192.0.2.1:0".parse().expect("addr");
        let listener = listen(addr).expect("IP_FREEBIND lets it bind");
        assert_eq!(listener.local_addr().expect("bound").ip(), addr.ip());
    }

    #[test]
    fn a_token_bucket_allows_a_burst_then_paces() {
        let mut b = TokenBucket::new(10);
        let t0 = tokio::time::Instant::now();
        for _ in 0..10 {
            assert_eq!(b.take(t0), None);
        }
        let wait = b.take(t0).unwrap_or_default();
        assert!(wait > Duration::from_millis(90) && wait < Duration::from_millis(110));
        // After a second the bucket is full again.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.take(later), None);
    }
}
