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
use futures_util::{FutureExt, SinkExt, StreamExt};
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
/// What an idle TLS client's proxy waits to read into; a full one means more is coming.
const IDLE_READ: usize = 512;
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
    tracker.spawn(connection::serve(
        Stream::Unix(theirs),
        peer,
        peer_cert,
        broker,
        stats,
        permit,
    ));
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

/// What [`ws_session`] saw: whether the upgrade succeeded and the MQTT bytes that reached
/// the connection's end of the socketpair.
#[doc(hidden)]
#[derive(Debug)]
pub struct WsSession {
    /// The upgrade error, as it would be logged; `None` when the upgrade succeeded.
    pub refused: Option<String>,
    /// Bytes the connection side read (at most `MAX_DRAINED` of them are kept).
    pub mqtt_bytes: Vec<u8>,
}

/// The most bytes [`ws_session`] keeps of what reached the MQTT side.
const MAX_DRAINED: usize = 64 * 1024;

/// Fuzzing and tests only: runs a `ws` listener's terminator over `client`, any byte stream
/// (the fuzz target's is a `tokio::io::duplex`): the real upgrade ([`upgrade`], path and
/// subprotocol checks) and the real frame proxy ([`proxy_ws`]) to a Unix socketpair whose
/// other end stands in for the connection task: it is drained, and answers the first bytes
/// with a CONNACK so the proxy's other direction runs too. Production goes through [`run`].
#[doc(hidden)]
pub async fn ws_session<S>(client: S, max_message: usize) -> WsSession
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = match upgrade(client, max_message).await {
        Ok(ws) => ws,
        Err(e) => {
            return WsSession {
                refused: Some(e.to_string()),
                mqtt_bytes: Vec::new(),
            }
        }
    };
    let (ours, mut theirs) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            return WsSession {
                refused: Some(format!("socketpair: {e}")),
                mqtt_bytes: Vec::new(),
            }
        }
    };
    let connection = async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = false;
        while let Ok(n @ 1..) = theirs.read(&mut buf).await {
            let room = MAX_DRAINED.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
            if !answered {
                answered = true;
                if theirs.write_all(&[0x20, 2, 0, 0]).await.is_err() {
                    break;
                }
            }
        }
        kept
    };
    let ((), mqtt_bytes) = tokio::join!(proxy_ws(ws, ours), connection);
    WsSession {
        refused: None,
        mqtt_bytes,
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

/// The next bytes the connection wrote to its end of the socketpair; `None` at its end (or an
/// error). The buffer is allocated only once bytes are there, so an idle client holds no
/// [`PROXY_CHUNK`] in this direction (most clients are idle sensors).
async fn read_when_ready(rx: &tokio::net::unix::OwnedReadHalf) -> Option<BytesMut> {
    loop {
        rx.readable().await.ok()?;
        let mut buf = BytesMut::with_capacity(PROXY_CHUNK);
        match rx.try_read_buf(&mut buf) {
            Ok(0) => return None,
            Ok(_) => return Some(buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
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
    let (conn_rx, mut conn_tx) = ours.into_split();
    let up = async {
        // A client that sends little at a time (most are idle sensors) is waited on with
        // IDLE_READ bytes; one that fills that gets a PROXY_CHUNK buffer, kept while its reads
        // stay large and dropped after the first small one.
        let mut small = [0u8; IDLE_READ];
        let mut chunk: Option<BytesMut> = None;
        loop {
            let (sent, more) = match chunk.as_mut() {
                Some(buf) => {
                    buf.clear();
                    let n = match client_rx.read_buf(buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    (conn_tx.write_all(buf).await, n >= IDLE_READ)
                }
                None => {
                    let n = match client_rx.read(&mut small).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if n < small.len() {
                        (conn_tx.write_all(&small[..n]).await, false)
                    } else {
                        // More is probably there already: take it in the same write.
                        let mut buf = BytesMut::with_capacity(PROXY_CHUNK);
                        buf.extend_from_slice(&small);
                        let mut ended = false;
                        while buf.len() < PROXY_CHUNK {
                            match client_rx.read_buf(&mut buf).now_or_never() {
                                None => break,
                                Some(Ok(0)) | Some(Err(_)) => {
                                    ended = true;
                                    break;
                                }
                                Some(Ok(_)) => {}
                            }
                        }
                        let sent = conn_tx.write_all(&buf).await;
                        if ended {
                            break;
                        }
                        chunk = Some(buf);
                        (sent, true)
                    }
                }
            };
            if sent.is_err() {
                break;
            }
            if !more {
                chunk = None;
            }
        }
        let _ = conn_tx.shutdown().await;
    };
    let down = async {
        while let Some(buf) = read_when_ready(&conn_rx).await {
            if client_tx.write_all(&buf).await.is_err() || client_tx.flush().await.is_err() {
                return;
            }
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
    let (conn_rx, mut conn_tx) = ours.into_split();
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
        while let Some(buf) = read_when_ready(&conn_rx).await {
            if ws_tx.send(Message::Binary(buf.freeze())).await.is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs [`ws_session`] with `input` as everything the client sends, as a client does it:
    /// the request head (up to the first blank line), then, once the reply head is in, the
    /// rest (tungstenite refuses frames pipelined behind the request, "Junk after client
    /// request", as RFC 6455 §4.1 has a client wait for the reply). Returns the session and
    /// everything the client received. The clock is paused, so a side waiting for the
    /// other (a request head the server still finds incomplete) times out at once.
    fn session(input: &[u8]) -> (WsSession, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let split = input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(input.len(), |i| i + 4);
        let (head, rest) = input.split_at(split);
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(16 * 1024);
            let client_side = async move {
                let (mut rx, mut tx) = tokio::io::split(client);
                let mut got = Vec::new();
                let _ = tx.write_all(head).await;
                let mut byte = [0u8; 1];
                while !rest.is_empty() && !got.ends_with(b"\r\n\r\n") {
                    let read = tokio::time::timeout(Duration::from_secs(1), rx.read(&mut byte));
                    match read.await {
                        Ok(Ok(1)) => got.push(byte[0]),
                        _ => break,
                    }
                }
                let _ = tx.write_all(rest).await;
                // Take the replies before closing, as a client does (a WebSocket whose peer
                // half-closed is done: tungstenite sends nothing after reading EOF).
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n @ 1..)) =
                    tokio::time::timeout(Duration::from_secs(1), rx.read(&mut buf)).await
                {
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = tx.shutdown().await;
                let _ = rx.read_to_end(&mut got).await;
                got
            };
            tokio::join!(ws_session(server, 1024), client_side)
        })
    }

    fn request(path: &str, protocol: Option<&str>) -> Vec<u8> {
        let protocol = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        )
        .into_bytes()
    }

    /// A masked client frame (RFC 6455 §5.2) with a payload under 126 bytes.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    const CONNECT: &[u8] = &[
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'c',
    ];

    #[test]
    fn an_upgrade_on_mqtt_path_carries_a_connect_frame_to_the_connection_and_its_reply_back() {
        let mut input = request("/mqtt", Some("mqtt"));
        input.extend(frame(0x2, CONNECT));
        let (s, got) = session(&input);
        assert_eq!(s.refused, None);
        assert_eq!(s.mqtt_bytes, CONNECT);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.contains("ec-websocket-protocol: mqtt"), "{text}");
        let connack = [0x82, 4, 0x20, 2, 0, 0];
        assert!(got.windows(6).any(|w| w == connack), "{got:?}");
    }

    #[test]
    fn another_path_is_refused_with_404_and_nothing_reaches_the_connection() {
        let mut input = request("/ws", Some("mqtt"));
        input.extend(frame(0x2, CONNECT));
        let (s, got) = session(&input);
        assert!(s.refused.as_deref().unwrap_or("").contains("404"), "{s:?}");
        assert!(s.mqtt_bytes.is_empty());
        assert!(got.starts_with(b"HTTP/1.1 404"), "{got:?}");
    }

    #[test]
    fn an_unsupported_or_missing_subprotocol_is_refused_with_400() {
        for protocol in [Some("chat, superchat"), None] {
            let (s, got) = session(&request("/mqtt", protocol));
            assert!(s.refused.as_deref().unwrap_or("").contains("400"), "{s:?}");
            assert!(got.starts_with(b"HTTP/1.1 400"), "{got:?}");
        }
    }

    #[test]
    fn a_text_frame_ends_the_session_and_garbage_is_refused() {
        let mut input = request("/mqtt", Some("mqtt-v5"));
        input.extend(frame(0x1, b"hello"));
        input.extend(frame(0x2, CONNECT));
        let (s, _) = session(&input);
        assert_eq!(s.refused, None);
        assert!(s.mqtt_bytes.is_empty(), "{s:?}");

        for garbage in [
            &b"\x10\x0d\x00\x04MQTT"[..],
            b"",
            b"GET /mqtt HTTP/1.1\r\n\r\n",
            &[0xff; 300],
        ] {
            let (s, _) = session(garbage);
            assert!(s.refused.is_some(), "{garbage:?}: {s:?}");
            assert!(s.mqtt_bytes.is_empty());
        }
    }

    #[test]
    fn a_frame_larger_than_the_message_cap_ends_the_session() {
        let mut input = request("/mqtt", Some("mqtt"));
        // 2,000 bytes, over the 1,024 cap of `session`: 16-bit extended length.
        let payload = vec![0u8; 2000];
        input.extend([0x82, 0x80 | 126, 0x07, 0xd0, 0, 0, 0, 0]);
        input.extend(&payload);
        let (s, _) = session(&input);
        assert_eq!(s.refused, None);
        assert!(s.mqtt_bytes.is_empty(), "{}", s.mqtt_bytes.len());
    }
}
