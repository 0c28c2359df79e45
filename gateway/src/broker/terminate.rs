//! Terminators for `tls`, `ws` and `wss` listeners: the handshake, then a bounded byte proxy.
//!
//! A terminator task owns one accepted TCP socket of a TLS or WebSocket listener. It runs the
//! TLS handshake (rustls) and/or the WebSocket upgrade (tokio-tungstenite, path `/mqtt`,
//! subprotocol `mqtt`) within `mqtt.idle_timeout`, then creates a Unix socketpair, hands one
//! end to an ordinary [`connection`](super::connection) task together with the client's real
//! address and certificate identity, and copies plaintext MQTT bytes between the client and
//! the other end until either side closes.
//!
//! Why a socketpair and not a generic connection: the connection's packet loop is a
//! hand-written readiness loop over a raw socket (`try_read`/`try_write`), sized and tuned
//! for plain TCP. Keeping TLS and WebSocket framing out of it leaves that path untouched,
//! gives encryption its own task (so it runs on the other core while the connection routes)
//! and keeps one packet loop for every transport. The cost is a copy through the kernel per
//! direction, small next to the AES and the record framing.
//!
//! It must never let a client grow memory: each direction moves at most [`PROXY_CHUNK`]
//! bytes at a time and waits for the other side to take them (so a slow reader stops the
//! connection's writes, whose own `outbound_buffer` then applies), WebSocket messages are
//! capped at `max_packet_size` plus framing, and a failed handshake is one log line naming the
//! peer and the reason, counted on its listener, closing only that socket.

use super::connection;
use super::peer_cert::PeerCert;
use super::stats::ListenerStats;
use super::stream::Stream;
use super::Broker;
use crate::config::CertIdentity;
use crate::config::ListenerKind;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

/// Bytes moved per read in each direction: one TLS record's worth of plaintext.
pub const PROXY_CHUNK: usize = 16 * 1024;
/// The path MQTT over WebSocket is served on (EMQX's default).
pub const WS_PATH: &str = "/mqtt";
/// Subprotocols accepted, as EMQX's `supported_subprotocols` default.
const WS_SUBPROTOCOLS: &[&str] = &["mqtt", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"];
/// WebSocket read buffer: small, since most clients are idle sensors.
const WS_READ_BUFFER: usize = 8 * 1024;

/// What a listener's terminator needs, shared by its tasks.
pub struct Terminator {
    /// Transport of the listener (never `tcp`).
    pub kind: ListenerKind,
    /// Listener name, for log lines.
    pub listener: String,
    /// Present for `tls` and `wss`.
    pub tls: Option<TlsAcceptor>,
    /// `tls.peer_cert_as_username`: which part of a verified client certificate logs in.
    pub cert_login: Option<CertIdentity>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("kind", &self.kind)
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a handshake failed (one log line each).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    /// Nothing completed within `idle_timeout`.
    #[error("handshake timeout")]
    Timeout,
    /// The gateway is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// TLS failed (not TLS, bad certificate, no common version...).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The WebSocket upgrade failed or was refused.
    #[error("websocket: {0}")]
    WebSocket(String),
}

/// A client past its handshake.
enum Client {
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

/// Serves one accepted socket of a terminated listener: handshake, then connection + proxy.
/// `permit` is the listener's connection slot, released when the connection ends.
pub async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    term: Arc<Terminator>,
    broker: Arc<Broker>,
    stats: Arc<ListenerStats>,
    permit: OwnedSemaphorePermit,
    tracker: TaskTracker,
) {
    let _ = tcp.set_nodelay(true);
    let idle = broker.config.mqtt.idle_timeout;
    let max_message = broker.config.mqtt.max_packet_size as usize + 8;
    let handshake = async {
        tokio::select! {
            _ = broker.shutdown.cancelled() => Err(HandshakeError::Shutdown),
            r = tokio::time::timeout(idle, handshake(tcp, &term, max_message)) => {
                r.unwrap_or(Err(HandshakeError::Timeout))
            }
        }
    };
    let (client, peer_cert) = match handshake.await {
        Ok(done) => done,
        Err(e) => {
            stats.handshake_failed.fetch_add(1, Ordering::Relaxed);
            stats.current.fetch_sub(1, Ordering::Relaxed);
            if !matches!(e, HandshakeError::Shutdown) {
                tracing::warn!(listener = %term.listener, peer = %peer, reason = %e, "handshake failed");
            }
            return;
        }
    };
    let (ours, theirs) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            stats.current.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(listener = %term.listener, peer = %peer, error = %e, "cannot create a socketpair; connection closed");
            return;
        }
    };
    tracker.spawn(async move {
        connection::serve(Stream::Unix(theirs), peer, peer_cert, broker, stats.clone()).await;
        stats.current.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    });
    match client {
        Client::Tls(tls) => proxy_bytes(*tls, ours).await,
        Client::Ws(ws) => proxy_ws(*ws, ours).await,
        Client::Wss(ws) => proxy_ws(*ws, ours).await,
    }
}

async fn handshake(
    tcp: TcpStream,
    term: &Terminator,
    max_message: usize,
) -> Result<(Client, Option<Box<PeerCert>>), HandshakeError> {
    match (term.kind, &term.tls) {
        (ListenerKind::Ws, _) => {
            let ws = upgrade(tcp, max_message).await?;
            Ok((Client::Ws(Box::new(ws)), None))
        }
        (ListenerKind::Tls, Some(acceptor)) => {
            let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
            let cert = peer_cert(&tls, term.cert_login);
            Ok((Client::Tls(Box::new(tls)), cert))
        }
        (ListenerKind::Wss, Some(acceptor)) => {
            let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
            let cert = peer_cert(&tls, term.cert_login);
            let ws = upgrade(tls, max_message).await?;
            Ok((Client::Wss(Box::new(ws)), cert))
        }
        _ => Err(HandshakeError::Tls(std::io::Error::other(
            "listener has no TLS settings",
        ))),
    }
}

/// The identity of the verified client certificate, if the client presented one, with the
/// user name it logs in as when the listener authenticates by certificate.
fn peer_cert(tls: &TlsStream<TcpStream>, login: Option<CertIdentity>) -> Option<Box<PeerCert>> {
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates()?.first()?;
    let mut cert = PeerCert::from_der(leaf.as_ref())?;
    cert.login = login.and_then(|identity| cert.identity(identity));
    Some(Box::new(cert))
}

/// The WebSocket upgrade: `GET /mqtt` with an MQTT subprotocol, else an HTTP error (404 for
/// another path, 400 without a supported subprotocol, as EMQX with `fail_if_no_subprotocol`).
async fn upgrade<S>(stream: S, max_message: usize) -> Result<WebSocketStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(PROXY_CHUNK * 4)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(config))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => HandshakeError::WebSocket(format!(
                "refused with HTTP {}: {}",
                response.status().as_u16(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
            )),
            other => HandshakeError::WebSocket(other.to_string()),
        })
}

// The signature is tungstenite's `Callback`; the error is the HTTP response it sends.
#[allow(clippy::result_large_err)]
fn check_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: String| {
        let mut r = ErrorResponse::new(Some(why));
        *r.status_mut() = status;
        r
    };
    if request.uri().path() != WS_PATH {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no MQTT on path {:?} (it is served on {WS_PATH})",
                request.uri().path()
            ),
        ));
    }
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| WS_SUBPROTOCOLS.contains(p));
    match offered {
        Some(protocol) => {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(
                    WS_SUBPROTOCOLS
                        .iter()
                        .find(|p| **p == protocol)
                        .copied()
                        .unwrap_or("mqtt"),
                ),
            );
            Ok(response)
        }
        None => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "no supported Sec-WebSocket-Protocol (expected one of {})",
                WS_SUBPROTOCOLS.join(", ")
            ),
        )),
    }
}

/// Copies bytes both ways between a TLS client and the connection's socketpair end. Ends
/// when the connection closes its end; when the client closes first, the connection sees EOF
/// and closes, which ends the other direction.
async fn proxy_bytes<S>(client: S, ours: UnixStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut conn_rx, mut conn_tx) = ours.into_split();
    let up = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(PROXY_CHUNK);
            match client_rx.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if conn_tx.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
        }
        let _ = conn_tx.shutdown().await;
    };
    let down = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(PROXY_CHUNK);
            match conn_rx.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if client_tx.write_all(&buf).await.is_err() || client_tx.flush().await.is_err() {
                return;
            }
            buf.clear();
        }
        // close_notify; bounded, since a client that stopped reading would never take it.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client_tx.shutdown()).await;
    };
    tokio::pin!(down);
    tokio::select! {
        _ = &mut down => {}
        _ = up => down.await,
    }
}

/// As [`proxy_bytes`], with MQTT bytes carried in binary WebSocket messages.
async fn proxy_ws<S>(ws: WebSocketStream<S>, ours: UnixStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut conn_rx, mut conn_tx) = ours.into_split();
    let up = async {
        while let Some(message) = ws_rx.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                // MQTT is binary: a text message is a protocol error (EMQX closes too).
                Ok(Message::Text(_) | Message::Close(_)) | Err(_) => break,
            };
            if conn_tx.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = conn_tx.shutdown().await;
    };
    let down = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(PROXY_CHUNK);
            match conn_rx.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if ws_tx
                .send(Message::Binary(buf.split().freeze()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ws_tx.close()).await;
    };
    tokio::pin!(down);
    tokio::select! {
        _ = &mut down => {}
        _ = up => down.await,
    }
}
