//! The HTTP side of a webhook: keep-alive HTTP/1.1 connections (hyper 1, optionally over
//! rustls with ring) and the worker tasks that POST queued events with retries.
//!
//! Owns the sockets to the endpoint and nothing the broker touches: workers only read the
//! webhook's queue and bump its atomic counters. Every wait is bounded (the per-attempt
//! `timeout`, the backoff, the shutdown token); a dead endpoint costs one log line per 10 s.

use super::{Event, HookStats};
use crate::broker::tls::{read_certs, TlsSetupError};
use crate::config::{PayloadEncoding, WebhookConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::{self, pki_types::ServerName, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First backoff between attempts; doubled each retry.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest backoff between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// At most one failure line per webhook per this long.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);
/// Response bodies are read (so the connection can be reused) up to this size.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why a webhook cannot be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("webhook {name}: {source}")]
    Ca {
        /// Webhook name.
        name: String,
        /// What went wrong.
        source: TlsSetupError,
    },
    /// rustls refused the settings, or no CA roots were found.
    #[error("webhook {name}: {message}")]
    Tls {
        /// Webhook name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A header could not be encoded (the config checker should have caught it).
    #[error("webhook {name}: header {header}: invalid")]
    Header {
        /// Webhook name.
        name: String,
        /// The header's name.
        header: String,
    },
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The endpoint answered with a status outside 2xx.
    #[error("status {0}")]
    Status(u16),
    /// The attempt took longer than `timeout`.
    #[error("timed out")]
    Timeout,
}

/// Where and how one webhook posts.
#[derive(Debug)]
pub struct Endpoint {
    name: String,
    host: String,
    port: u16,
    /// `Host` header value.
    authority: HeaderValue,
    path: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    /// The URL for logs, its query redacted.
    url: String,
}

impl Endpoint {
    /// Prepares the endpoint of `cfg`: TLS settings (the `ca` file or the system roots) and
    /// headers. Opens no connection.
    pub fn new(cfg: &WebhookConfig) -> Result<Endpoint, SetupError> {
        let name = cfg.name.clone();
        let url = &cfg.url;
        let default_port = if url.tls { 443 } else { 80 };
        let host_text = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let authority = if url.port == default_port {
            host_text
        } else {
            format!("{host_text}:{}", url.port)
        };
        let authority = HeaderValue::from_str(&authority).map_err(|_| SetupError::Header {
            name: name.clone(),
            header: "Host".into(),
        })?;
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let bad = || SetupError::Header {
                name: name.clone(),
                header: k.clone(),
            };
            headers.push((
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?,
                HeaderValue::from_str(v).map_err(|_| bad())?,
            ));
        }
        let tls = if url.tls {
            Some(tls_connector(cfg)?)
        } else {
            None
        };
        Ok(Endpoint {
            name,
            host: url.host.clone(),
            port: url.port,
            authority,
            path: url.path.clone(),
            tls,
            headers,
            timeout: cfg.timeout,
            url: url.redacted(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PostError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(PostError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((config, server_name)) => {
                let stream = TlsConnector::from(config.clone())
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(PostError::Tls)?;
                handshake(TokioIo::new(stream)).await
            }
        }
    }

    /// One attempt: reuses `conn` when it is still open, else connects; the whole attempt
    /// is bounded by the webhook's `timeout`. A failed attempt leaves `conn` empty.
    async fn post(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        body: Bytes,
    ) -> Result<(), PostError> {
        // A kept-alive connection the endpoint closed meanwhile fails the request before any
        // answer: that is not the endpoint failing, so retry at once on a fresh connection.
        let reused = conn.as_ref().is_some_and(|c| !c.is_closed());
        let attempt = async {
            match self.try_post(conn, body.clone()).await {
                Err(PostError::Http(e)) if reused => {
                    tracing::debug!(webhook = %self.name, "kept-alive connection failed ({e}); reconnecting");
                    *conn = None;
                    self.try_post(conn, body).await
                }
                other => other,
            }
        };
        let result = tokio::time::timeout(self.timeout, attempt).await;
        let result = result.unwrap_or(Err(PostError::Timeout));
        if result.is_err() {
            *conn = None;
        }
        result
    }

    async fn try_post(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        body: Bytes,
    ) -> Result<(), PostError> {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = Some(self.connect().await?);
        }
        let Some(sender) = conn.as_mut() else {
            return Err(PostError::Timeout);
        };
        sender.ready().await?;
        let mut request = Request::post(self.path.as_str());
        if let Some(h) = request.headers_mut() {
            h.insert(HOST, self.authority.clone());
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for (k, v) in &self.headers {
                h.append(k.clone(), v.clone());
            }
        }
        let Ok(request) = request.body(Full::new(body)) else {
            return Err(PostError::Status(0));
        };
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read the body so the connection can carry the next request; a body too large or
        // broken only costs the connection.
        if Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .is_err()
        {
            *conn = None;
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status.as_u16()))
        }
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, PostError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // Drives the socket; ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("webhook connection closed: {e}");
        }
    });
    Ok(sender)
}

fn tls_connector(
    cfg: &WebhookConfig,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), SetupError> {
    let name = cfg.name.clone();
    let tls_err = |message: String| SetupError::Tls {
        name: name.clone(),
        message,
    };
    let mut roots = RootCertStore::empty();
    match &cfg.ca {
        Some(ca) => {
            let certs = read_certs(ca).map_err(|source| SetupError::Ca {
                name: name.clone(),
                source,
            })?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(tls_err(format!(
                    "no system CA roots found{why} (set `ca` to the PEM file of the endpoint's CA)"
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(cfg.url.host.clone())
        .map_err(|e| tls_err(format!("{}: {e}", cfg.url.host)))?;
    Ok((Arc::new(config), server_name))
}

/// What the workers of one webhook share.
#[derive(Debug)]
pub(super) struct WorkerShared {
    pub(super) endpoint: Endpoint,
    /// The webhook's queue; workers take turns receiving from it.
    pub(super) rx: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    pub(super) stats: Arc<HookStats>,
    pub(super) node: Arc<str>,
    pub(super) encoding: PayloadEncoding,
    pub(super) max_retries: u32,
    pub(super) failures: crate::logging::Every,
}

/// Starts `pool_size` workers on `tracker`.
pub(super) fn spawn_workers(
    shared: WorkerShared,
    pool_size: usize,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let shared = Arc::new(shared);
    for _ in 0..pool_size {
        tracker.spawn(worker(shared.clone(), shutdown.clone()));
    }
}

/// The delay before retry `attempt` (1-based): 500ms, 1s, 2s, ... at most 30s.
pub(super) fn backoff(attempt: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

async fn worker(shared: Arc<WorkerShared>, shutdown: CancellationToken) {
    let mut conn = None;
    loop {
        let event = {
            let mut rx = tokio::select! {
                _ = shutdown.cancelled() => return,
                rx = shared.rx.lock() => rx,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = rx.recv() => event,
            }
        };
        let Some(event) = event else {
            return;
        };
        let body = Bytes::from(event.to_json(&shared.node, shared.encoding));
        let mut attempt = 0;
        loop {
            let result = shared.endpoint.post(&mut conn, body.clone()).await;
            let error = match result {
                Ok(()) => {
                    shared.stats.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => e,
            };
            tracing::debug!(webhook = %shared.endpoint.name, event = event.kind.as_str(), attempt, "webhook attempt failed: {error}");
            if attempt >= shared.max_retries {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = shared.failures.due(Instant::now()) {
                    tracing::warn!(
                        webhook = %shared.endpoint.name,
                        url = %shared.endpoint.url,
                        event = event.kind.as_str(),
                        failed = n,
                        "webhook event dropped after {} attempts: {error}",
                        attempt + 1
                    );
                }
                break;
            }
            attempt += 1;
            shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff(attempt)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_thirty() {
        let got: Vec<_> = (1..=9).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
