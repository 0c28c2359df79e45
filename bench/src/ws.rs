//! MQTT over WebSocket for the load generator (`--ws`): `GET /mqtt` with subprotocol `mqtt`,
//! then MQTT bytes in binary messages; over TLS too (WSS) when `--tls-ca` is given.
//!
//! As for TLS (see `tls`), a WebSocket connection is handed to
//! [`Client`](crate::client::Client) as one end of a Unix socketpair, with a task carrying
//! each chunk of MQTT bytes in one binary message and back: the loads' readiness loops stay
//! the same for every transport, at the same cost whichever broker is measured.

use crate::error::{BenchError, Role};
use crate::tls::TlsClient;
use futures_util::{SinkExt, StreamExt};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The path MQTT over WebSocket is served on (holdfast's and EMQX's; mosquitto takes any).
const PATH: &str = "/mqtt";
/// Bytes moved per read from the socketpair.
const PROXY_CHUNK: usize = 64 * 1024;

/// A WebSocket (or, with `tls`, WSS) connection to `addr`, presented as a Unix socket
/// carrying the MQTT bytes.
pub(crate) async fn connect(
    addr: &str,
    tls: Option<&TlsClient>,
    role: Role,
) -> Result<UnixStream, BenchError> {
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{addr}{PATH}")
        .into_client_request()
        .map_err(|e| BenchError::io(role, io::Error::other(e)))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ours, theirs) = UnixStream::pair().map_err(|err| BenchError::io(role, err))?;
    let upgrade_failed = |e| BenchError::io(role, io::Error::other(e));
    match tls {
        Some(tls) => {
            let stream = tls.handshake(addr, role).await?;
            let (ws, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(upgrade_failed)?;
            tokio::spawn(proxy(ws, ours));
        }
        None => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|err| BenchError::Connect {
                    addr: addr.to_owned(),
                    err,
                })?;
            tcp.set_nodelay(true)
                .map_err(|err| BenchError::io(role, err))?;
            let (ws, _) = tokio_tungstenite::client_async(request, tcp)
                .await
                .map_err(upgrade_failed)?;
            tokio::spawn(proxy(ws, ours));
        }
    }
    Ok(theirs)
}

/// Copies between the WebSocket and our socketpair end until either side closes.
async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocketStream<S>, ours: UnixStream) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rx, mut tx) = ours.into_split();
    let up = async {
        let mut buf = vec![0u8; PROXY_CHUNK];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(buf[..n].to_vec().into());
                    if ws_tx.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    let down = async {
        while let Some(Ok(message)) = ws_rx.next().await {
            match message {
                Message::Binary(data) if tx.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tx.shutdown().await;
    };
    tokio::join!(up, down);
}
