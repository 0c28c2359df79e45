//! The technician's HTTP server (`[web]`, TCP 18083): the REST API under `/api/v1/` and
//! `/metrics`, on axum.
//!
//! Owns the listener and its bounds (connections at once, header read time, request time,
//! body size), the routes, and access: no default password — a one-time setup token in the
//! data directory until the admin account exists ([`auth`]), then a login session (cookie
//! HttpOnly + SameSite=Strict, a CSRF token required on every change) or an API token
//! (`Authorization: Bearer`), with the login lockout of the MQTT listeners. Every action is
//! the control socket's (`ctl::server::answer`): the API and `holdfast ctl` share one
//! implementation. Never touches the router directly.

pub mod auth;
mod board;
mod broker_api;
mod config_api;
mod logs;
mod metrics;
mod schema;
mod ui;

use crate::auth::lockout::Lockout;
use crate::broker::Broker;
use crate::config::WebConfig;
use crate::config_file::ConfigFile;
use auth::{Credentials, Sessions, SetupError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The session cookie's name.
const COOKIE: &str = "holdfast_session";
/// The header that carries a session's CSRF token on changes.
const CSRF_HEADER: &str = "x-csrf-token";

/// Why the web server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[web.tls]` could not be loaded (a file missing, a key that does not fit).
    #[error("web: tls: {0}")]
    Tls(#[from] crate::broker::tls::TlsSetupError),
    /// The address could not be bound.
    #[error("web: cannot bind {bind}: {source}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The bound listener and the credentials, ready to serve.
pub struct Bound {
    listener: TcpListener,
    credentials: Credentials,
    config: WebConfig,
    /// HTTPS, when `[web.tls]` is set.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The address bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// Reads the credentials (writing the setup token on first start) and binds `[web].bind`. A
/// port that is taken stops the start (a config mistake); credential files that cannot be
/// read or written (a read-only or dying card) leave the gateway running without its web
/// API, logged, never a restart loop.
pub async fn bind(
    config: &WebConfig,
    data_dir: &std::path::Path,
) -> Result<Option<Bound>, StartError> {
    // A bad certificate is a config mistake: the start stops and says so (the last known good
    // config takes over), as for a tls listener.
    let tls = match &config.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            crate::broker::tls::server_config(t)?,
        )),
        None => None,
    };
    let credentials = match Credentials::open(data_dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("web: {e}; the web API is off until the data directory is writable and the gateway restarts");
            return Ok(None);
        }
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| StartError::Bind {
            bind: config.bind,
            source,
        })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(bind = %config.bind, scheme, "web: API listening");
    Ok(Some(Bound {
        listener,
        credentials,
        config: config.clone(),
        tls,
    }))
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    broker: Arc<Broker>,
    credentials: Arc<Credentials>,
    sessions: Arc<Sessions>,
    lockout: Arc<Lockout>,
    /// argon2 checks at once (each takes ~19 MiB and tens of milliseconds): a flood of logins
    /// is answered 503, never a board out of memory.
    checks: Arc<tokio::sync::Semaphore>,
    config: Arc<WebConfig>,
    /// The config file the gateway runs on.
    config_file: Arc<ConfigFile>,
    /// The web's own broker client (board reports).
    board_client: Arc<board::BoardClient>,
    /// One config check or apply at a time.
    config_ops: Arc<tokio::sync::Semaphore>,
}

/// argon2 checks (setup, login) running at once.
const CHECKS: usize = 2;
/// Longest password (or setup token) taken, in bytes.
const MAX_PASSWORD: usize = 1024;
/// Connections one address may hold at once (at least this, or a quarter of max_connections).
const PER_ADDRESS_MIN: usize = 4;

/// One connection counted against its address; released when the connection ends.
struct AddressSlot(
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    std::net::IpAddr,
);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut table = crate::udp::lock(&self.0);
        if let Some(n) = table.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.1);
            }
        }
    }
}

/// The peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// Serves until shutdown: one task per connection, at most `max_connections` at once (one
/// more is closed at accept).
pub async fn run(
    bound: Bound,
    broker: Arc<Broker>,
    config_file: Option<ConfigFile>,
    tracker: TaskTracker,
) {
    let config = bound.config;
    let config_file = config_file
        .unwrap_or_else(|| ConfigFile::new(None, broker.config.node.data_dir.clone(), false));
    let app = App {
        config_file: Arc::new(config_file),
        board_client: Arc::default(),
        config_ops: Arc::new(tokio::sync::Semaphore::new(1)),
        broker: broker.clone(),
        credentials: Arc::new(bound.credentials),
        sessions: Arc::new(Sessions::new(
            config.session_idle,
            config.session_max,
            config.max_sessions,
        )),
        lockout: Arc::new(Lockout::new(config.login_attempts, config.login_lockout)),
        checks: Arc::new(tokio::sync::Semaphore::new(CHECKS)),
        config: Arc::new(config.clone()),
    };
    // The technician who applied a config stays logged in across its restart (to keep it).
    let data_dir = broker.config.node.data_dir.clone();
    let taken = app.sessions.take_over(&data_dir, Instant::now());
    if taken > 0 {
        tracing::info!(
            sessions = taken,
            "web: sessions kept across the config restart"
        );
    }
    let (sessions, restart) = (app.sessions.clone(), app.config_file.restart_state());
    let router = routes(app);
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let per_address = PER_ADDRESS_MIN.max(config.max_connections / 4);
    let by_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let mut last_refusal_log: Option<Instant> = None;
    // However it is used, a connection ends after this (a browser opens a new one).
    let lifetime = (config.request_timeout * 10).max(std::time::Duration::from_secs(60));
    let shutdown = broker.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => {
                if restart.restarting() {
                    if let Err(e) = sessions.hand_over(&data_dir, Instant::now()) {
                        tracing::warn!("web: cannot keep the sessions across the restart ({e}); log in again");
                    }
                }
                return;
            }
            accepted = bound.listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("web: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let held = {
            let mut table = crate::udp::lock(&by_address);
            let n = table.entry(peer.ip()).or_insert(0);
            if *n >= per_address {
                None
            } else {
                *n += 1;
                Some(AddressSlot(by_address.clone(), peer.ip()))
            }
        };
        let permit = permits.clone().try_acquire_owned().ok();
        let (Some(slot), Some(permit)) = (held, permit) else {
            // One line a second at most: a flood of refusals must not fill the log's flash.
            if last_refusal_log.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(peer = %peer, "web: connection refused: max_connections ({}) or {per_address} from one address reached", config.max_connections);
            }
            drop(stream);
            continue;
        };
        let service = router.clone().layer(Extension(Peer(peer)));
        let timeout = config.request_timeout;
        let shutdown = shutdown.clone();
        let tls = bound.tls.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let Some(acceptor) = tls else {
                return serve(stream, service, peer, timeout, lifetime, shutdown).await;
            };
            // The handshake is bounded like a request's headers: a peer that opens and
            // stalls holds its slot no longer than that.
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(tls, service, peer, timeout, lifetime, shutdown).await,
                Ok(Err(e)) => tracing::debug!(peer = %peer, "web: TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(peer = %peer, "web: TLS handshake timed out"),
            }
        });
    }
}

/// Serves one connection (plain or TLS) until it ends, its lifetime is over or the gateway
/// stops.
async fn serve<I>(
    io: I,
    service: Router,
    peer: SocketAddr,
    timeout: std::time::Duration,
    lifetime: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(service);
    let io = hyper_util::rt::TokioIo::new(io);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        // A request whose client closed its side right after sending is still answered (and
        // a login counted): what a request does never depends on how fast its client left.
        .half_close(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %peer, "web: connection ended: {e}");
            }
        }
        _ = tokio::time::sleep(lifetime) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
        }
    }
}

/// The routes, and the OpenAPI document generated from the same handlers (so a route and
/// its description cannot part), served at `/api/v1/openapi.json`.
fn routes(app: App) -> Router {
    let (open, open_api) = OpenApiRouter::<App>::new()
        .routes(routes!(setup_status, setup))
        .routes(routes!(login))
        .split_for_parts();
    let (guarded, guarded_api) = OpenApiRouter::<App>::new()
        .routes(routes!(logout))
        .routes(routes!(session))
        .routes(routes!(board::board))
        .routes(routes!(broker_api::stats))
        .routes(routes!(broker_api::listeners))
        .routes(routes!(broker_api::clients))
        .routes(routes!(broker_api::client))
        .routes(routes!(broker_api::kick))
        .routes(routes!(broker_api::subscriptions))
        .routes(routes!(broker_api::retained))
        .routes(routes!(broker_api::bridges))
        .routes(routes!(broker_api::reload))
        .routes(routes!(broker_api::coap))
        .routes(routes!(broker_api::lwm2m))
        .routes(routes!(broker_api::modbus))
        .routes(routes!(broker_api::serial))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(logs::tail))
        .routes(routes!(logs::list, logs::start, logs::stop))
        .routes(routes!(logs::download, logs::remove))
        .routes(routes!(config_api::read))
        .routes(routes!(config_api::check))
        .routes(routes!(config_api::apply))
        .routes(routes!(config_api::confirm))
        .routes(routes!(config_api::version))
        .routes(routes!(metrics))
        .split_for_parts();
    let document = schema::document(open_api, guarded_api);
    let document: Arc<str> = match document.to_json() {
        Ok(text) => text.into(),
        Err(e) => {
            tracing::error!("web: cannot write the OpenAPI document: {e}");
            "{}".into()
        }
    };
    let open = open.merge(ui::routes()).route(
        "/api/v1/openapi.json",
        get(move || {
            let document = document.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.to_string(),
                )
            }
        }),
    );
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(
        app.clone(),
        require_auth,
    ));
    let limit = app.config.max_body_size;
    let timeout = app.config.request_timeout;
    let hosts = Arc::new(AllowedHosts::new(&app.config.allowed_hosts));
    open.merge(guarded)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such resource") })
        .layer(axum::middleware::from_fn(move |req, next| {
            let hosts = hosts.clone();
            async move { check_host(&hosts, req, next).await }
        }))
        .layer(axum::middleware::map_response(harden))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(app)
}

/// The names a request's `Host` may carry besides IP addresses.
#[derive(Debug)]
struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// `localhost`, the board's host name and `{hostname}.local`, and `[web].allowed_hosts`.
    fn new(configured: &[String]) -> AllowedHosts {
        let mut names = vec!["localhost".to_owned()];
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = h.trim().to_ascii_lowercase();
            if !h.is_empty() {
                names.push(format!("{h}.local"));
                names.push(h);
            }
        }
        names.extend(configured.iter().cloned());
        AllowedHosts(names)
    }

    /// Whether `host` (a `Host` header: a name or an address, with or without a port) is one
    /// this server answers to.
    fn allows(&self, host: &str) -> bool {
        if host.starts_with('[') {
            // An IPv6 literal, `[::1]:18083`.
            return host
                .split_once(']')
                .is_some_and(|(ip, _)| ip[1..].parse::<std::net::Ipv6Addr>().is_ok());
        }
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.');
        self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Refuses (421) a request whose `Host` names another site: a page elsewhere whose name was
/// rebound to this board's address must not reach the API (or lock its technician out by
/// failing logins) from the technician's browser.
async fn check_host(hosts: &AllowedHosts, req: Request<Body>, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if host.is_empty() {
        return error(StatusCode::BAD_REQUEST, "a request needs a Host header");
    }
    if !hosts.allows(host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this gateway does not answer to that host name; use its address, or add the name to [web].allowed_hosts",
        );
    }
    next.run(req).await
}

/// Headers on every answer: never cached (they carry clients, tokens, CSRF tokens), never
/// sniffed as another type, never framed.
async fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A JSON request body. A body that is not the JSON the route takes is refused 400 with the
/// reason (413 when it is too large), as JSON like every other refusal.
struct JsonBody<T>(T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => {
                let status = match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(error(status, &rejection.body_text()))
            }
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Lets a request through with a live API token, or a live session (and, for a change, its
/// CSRF token); 401 or 403 otherwise.
async fn require_auth(State(app): State<App>, req: Request<Body>, next: Next) -> Response {
    let headers = req.headers();
    if let Some(token) = bearer(headers) {
        return match app.credentials.check_token(token) {
            Some(scope) if scope_allows(scope, req.method(), req.uri().path()) => {
                next.run(req).await
            }
            Some(scope) => error(
                StatusCode::FORBIDDEN,
                &format!(
                    "this API token's scope ({}) does not allow this",
                    scope.as_str()
                ),
            ),
            None => error(StatusCode::UNAUTHORIZED, "unknown or revoked API token"),
        };
    }
    let Some(session) = cookie(headers, COOKIE) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "log in first (or send an API token)",
        );
    };
    let Some(csrf) = app.sessions.check(session, Instant::now()) else {
        return error(StatusCode::UNAUTHORIZED, "the session ended; log in again");
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !auth::same_secret(sent, &csrf) {
            return error(
                StatusCode::FORBIDDEN,
                "a change needs the session's CSRF token in X-CSRF-Token",
            );
        }
    }
    next.run(req).await
}

/// What an API token of `scope` may ask for: `metrics` the scrape, `read` every read but the
/// config file and the trace files, `admin` everything but the tokens themselves (made and
/// revoked by a logged-in person, so a leaked token cannot mint its own successor).
fn scope_allows(scope: auth::Scope, method: &Method, path: &str) -> bool {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let tokens = path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/");
    match scope {
        auth::Scope::Metrics => read && path == "/metrics",
        auth::Scope::Read => {
            read && !tokens
                && !path.starts_with("/api/v1/config")
                && !path.starts_with("/api/v1/traces/files/")
        }
        auth::Scope::Admin => !tokens || read,
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A new session: the cookie and the CSRF token (in the body, for the page's script).
fn session_response(app: &App) -> Response {
    let (id, csrf) = app.sessions.create(Instant::now());
    let secure = if app.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        app.config.session_max.as_secs()
    );
    let mut response = Json(json!({ "csrf": csrf })).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Whether the gateway still waits for its first setup.
#[utoipa::path(get, path = "/api/v1/setup", tag = "access",
    responses((status = 200, description = "Setup state", body = schema::SetupStatus)))]
async fn setup_status(State(app): State<App>) -> Response {
    Json(json!({ "setup_required": app.credentials.setup_required() })).into_response()
}

/// The first visit: the setup token and the admin password.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct SetupBody {
    /// The one-time token from `{data_dir}/setup-token`.
    #[schema(max_length = 1024)]
    token: String,
    /// The admin password (at least 10 characters, at most 1024 bytes).
    #[schema(max_length = 1024)]
    password: String,
}

/// Creates the admin account with the one-time setup token, and logs in.
#[utoipa::path(post, path = "/api/v1/setup", tag = "access", request_body = SetupBody,
    responses(
        (status = 200, description = "Set up; the session cookie is set", body = schema::CsrfBody),
        (status = 400, description = "A bad body or a weak password", body = schema::ErrorBody),
        (status = 401, description = "Wrong setup token", body = schema::ErrorBody),
        (status = 409, description = "Set up already", body = schema::ErrorBody),
        (status = 429, description = "Locked out after failed attempts", body = schema::ErrorBody),
        (status = 500, description = "The account could not be saved", body = schema::ErrorBody),
        (status = 503, description = "Other logins are being checked", body = schema::ErrorBody),
    ))]
async fn setup(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    JsonBody(body): JsonBody<SetupBody>,
) -> Response {
    let permit = match admit(&app, peer, &[&body.token, &body.password]) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    let worker = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = worker.credentials.setup(&body.token, &body.password);
        if result == Err(SetupError::WrongToken) {
            failed_login(&worker, peer, "wrong setup token");
        }
        result
    })
    .await;
    match result {
        Ok(Ok(())) => {
            tracing::info!(peer = %peer, "web: setup done from {peer}");
            session_response(&app)
        }
        Ok(Err(SetupError::WrongToken)) => error(StatusCode::UNAUTHORIZED, "wrong setup token"),
        Ok(Err(e @ SetupError::Done)) => error(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e @ SetupError::WeakPassword)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(Err(SetupError::Io)) | Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the admin account could not be saved",
        ),
    }
}

/// A login.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct LoginBody {
    /// The admin password.
    #[schema(max_length = 1024)]
    password: String,
}

/// Logs the admin in: a session cookie (HttpOnly, SameSite=Strict) and its CSRF token.
#[utoipa::path(post, path = "/api/v1/login", tag = "access", request_body = LoginBody,
    responses(
        (status = 200, description = "Logged in; the session cookie is set", body = schema::CsrfBody),
        (status = 400, description = "A bad body", body = schema::ErrorBody),
        (status = 401, description = "Wrong password", body = schema::ErrorBody),
        (status = 409, description = "Not set up yet", body = schema::ErrorBody),
        (status = 429, description = "Locked out after failed attempts", body = schema::ErrorBody),
        (status = 503, description = "Other logins are being checked", body = schema::ErrorBody),
    ))]
async fn login(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Response {
    if app.credentials.setup_required() {
        return error(
            StatusCode::CONFLICT,
            "not set up yet: POST /api/v1/setup with the setup token",
        );
    }
    let permit = match admit(&app, peer, &[&body.password]) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    // The check owns its permit and records its outcome itself: a client that drops the
    // request mid-check neither frees a slot early nor escapes the lockout.
    let worker = app.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let verdict = worker.credentials.verify(&body.password);
        if verdict.changed {
            worker.sessions.end_all();
        }
        if verdict.ok {
            worker.lockout.succeeded(peer.ip(), auth::ADMIN);
        } else {
            failed_login(&worker, peer, "wrong password");
        }
        verdict.ok
    })
    .await
    .unwrap_or(false);
    if checked {
        tracing::info!(peer = %peer, "web: admin logged in");
        return session_response(&app);
    }
    error(StatusCode::UNAUTHORIZED, "wrong password")
}

/// The gate before an argon2 check (setup, login): a locked-out address is refused (429),
/// a secret over 1 KB too (400), and beyond the checks running at once the answer is 503;
/// otherwise the check's permit, which the check owns until it ends.
fn admit(
    app: &App,
    peer: SocketAddr,
    secrets: &[&str],
) -> Result<tokio::sync::OwnedSemaphorePermit, Box<Response>> {
    if let Some(why) = app.lockout.locked(peer.ip(), auth::ADMIN, Instant::now()) {
        return Err(Box::new(locked(app, why)));
    }
    if secrets.iter().any(|s| s.len() > MAX_PASSWORD) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "a password has at most 1024 bytes",
        )));
    }
    app.checks
        .clone()
        .try_acquire_owned()
        .map_err(|_| Box::new(busy()))
}

fn failed_login(app: &App, peer: SocketAddr, why: &str) {
    use crate::auth::lockout::{Failed, SPREAD_FACTOR};
    let window = app.config.login_lockout;
    match app.lockout.failed(peer.ip(), auth::ADMIN, Instant::now()) {
        Failed::Counted => tracing::warn!(peer = %peer, "web: login refused: {why}"),
        Failed::LockedHere => {
            tracing::warn!(peer = %peer, "web: {why}; {} failures: {} (its /64 for IPv6) locked out for {window:?}", app.config.login_attempts, peer.ip())
        }
        Failed::LockedSpread => {
            tracing::warn!(peer = %peer, "web: {why}; {} failed logins from many addresses: until {window:?} have passed, only addresses the admin logged in from before are let in", app.config.login_attempts.saturating_mul(SPREAD_FACTOR))
        }
    }
}

fn busy() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "other logins are being checked; try again in a moment",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn locked(app: &App, why: crate::auth::lockout::Locked) -> Response {
    use crate::auth::lockout::Locked;
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        match why {
            Locked::Here => "too many failed logins from this address; wait and try again",
            Locked::Spread => {
                "too many failed logins from many addresses; only addresses that logged in \
                 before are let in for now; wait and try again"
            }
        },
    );
    if let Ok(v) = HeaderValue::from_str(&app.config.login_lockout.as_secs().to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// `GET /api/v1/session`: the live session's CSRF token (a page loaded again needs it); an
/// API token has none.
#[utoipa::path(get, path = "/api/v1/session", tag = "access",
    responses((status = 200, description = "The session's CSRF token", body = schema::CsrfBody)))]
async fn session(State(app): State<App>, headers: HeaderMap) -> Response {
    let csrf = cookie(&headers, COOKIE).and_then(|id| app.sessions.check(id, Instant::now()));
    Json(json!({ "csrf": csrf })).into_response()
}

/// Ends the session.
#[utoipa::path(post, path = "/api/v1/logout", tag = "access",
    responses((status = 204, description = "Logged out")))]
async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        app.sessions.end(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The API tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "access",
    responses((status = 200, description = "The tokens", body = schema::TokensBody)))]
async fn list_tokens(State(app): State<App>) -> Response {
    Json(json!({ "tokens": app.credentials.tokens() })).into_response()
}

/// A new API token.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct TokenBody {
    /// What it is for (1..=64 characters, no control characters).
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// What it may do: `metrics` (the scrape), `read` (every read but the config and trace
    /// files) or `admin` (everything but tokens).
    scope: auth::Scope,
}

/// Makes an API token; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access", request_body = TokenBody,
    responses(
        (status = 201, description = "Made", body = schema::CreatedToken),
        (status = 400, description = "A bad name", body = schema::ErrorBody),
        (status = 409, description = "Too many tokens, or the file cannot be written", body = schema::ErrorBody),
    ))]
async fn create_token(State(app): State<App>, JsonBody(body): JsonBody<TokenBody>) -> Response {
    if body.name.is_empty() || body.name.len() > 64 || body.name.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            "a token's name is 1..=64 characters, none of them control characters",
        );
    }
    match app.credentials.create_token(&body.name, body.scope) {
        Ok((info, token)) => {
            tracing::info!(id = %info.id, name = %info.name, scope = info.scope.as_str(), "web: API token created");
            (
                StatusCode::CREATED,
                Json(json!({ "token": token, "info": info })),
            )
                .into_response()
        }
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Revokes an API token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "access",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token", body = schema::ErrorBody),
        (status = 500, description = "The token file cannot be written", body = schema::ErrorBody),
    ))]
async fn revoke_token(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.credentials.revoke(&id) {
        Ok(true) => {
            tracing::info!(id = %id, "web: API token revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "no such token"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The gateway's numbers in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
async fn metrics(State(app): State<App>) -> Response {
    let reports = board::read(&app).await.unwrap_or_default();
    let dir = app.broker.config.node.data_dir.clone();
    let data_dir_bytes = tokio::task::spawn_blocking(move || metrics::dir_size(&dir))
        .await
        .ok()
        .flatten();
    let body = metrics::render(&app.broker, &reports, data_dir_bytes);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::{auth::Scope, scope_allows, AllowedHosts};
    use axum::http::Method;

    #[test]
    fn scopes() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(scope_allows(Scope::Metrics, &get, "/metrics"));
        assert!(!scope_allows(Scope::Metrics, &get, "/api/v1/stats"));
        assert!(scope_allows(Scope::Read, &get, "/api/v1/clients"));
        assert!(!scope_allows(Scope::Read, &get, "/api/v1/config"));
        assert!(!scope_allows(
            Scope::Read,
            &get,
            "/api/v1/config/versions/1"
        ));
        assert!(!scope_allows(
            Scope::Read,
            &get,
            "/api/v1/traces/files/client-1.log"
        ));
        assert!(!scope_allows(Scope::Read, &post, "/api/v1/reload"));
        assert!(scope_allows(Scope::Admin, &post, "/api/v1/config/apply"));
        assert!(scope_allows(Scope::Admin, &get, "/api/v1/tokens"));
        assert!(!scope_allows(Scope::Admin, &post, "/api/v1/tokens"));
        assert!(!scope_allows(
            Scope::Admin,
            &Method::DELETE,
            "/api/v1/tokens/x"
        ));
    }

    #[test]
    fn addresses_localhost_and_listed_names_are_served_other_names_are_not() {
        let hosts = AllowedHosts::new(&["gw-7.example".to_owned()]);
        for ok in [
            "127.0.0.1",
            "192.168.1.20:18083",
            "[::1]:18083",
            "[fe80::1]",
            "localhost:18083",
            "LOCALHOST",
            "gw-7.example",
            "gw-7.example.:80",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "127.0.0.1.nip.io",
            "gw-7.example.evil",
            "[not-an-ip]:80",
            "localhost.evil:18083",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }
}
