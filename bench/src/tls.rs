//! TLS for the load generator: the client configuration, TLS connections for the loads, and the
//! `handshakes` load (connect + TLS + CONNECT + CONNACK + close, in a loop).
//!
//! Owns the rustls client side (ring provider). For the ordinary loads a TLS connection is
//! handed to [`Client`](crate::client::Client) as one end of a Unix socketpair, with a task
//! copying between it and the TLS stream: the loads' readiness loops stay the same for every
//! transport, at the cost of one copy per direction, paid equally whichever broker is measured.
//! It never verifies less than the broker's certificate against `--tls-ca`.

use crate::error::{BenchError, Role};
use holdfast_mqtt::{decode, encode, ByteStr, Connect, Packet, Properties};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::{self, pki_types::ServerName, RootCertStore};
use tokio_rustls::TlsConnector;

/// Bytes moved per read in each direction of the client-side proxy.
const PROXY_CHUNK: usize = 64 * 1024;

/// How to speak TLS to the broker.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsClient {
    /// Trusts the CA certificates in `ca` (PEM) and expects `server_name` in the broker's
    /// certificate; `resume` keeps rustls' session cache (else every handshake is a full one).
    pub(crate) fn new(ca: &Path, server_name: &str, resume: bool) -> Result<TlsClient, String> {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("bad --tls-server-name {server_name:?}: {e}"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// TCP connect + TLS handshake.
    pub(crate) async fn handshake(
        &self,
        addr: &str,
        role: Role,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BenchError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|err| BenchError::Connect {
                addr: addr.to_owned(),
                err,
            })?;
        tcp.set_nodelay(true)
            .map_err(|err| BenchError::io(role, err))?;
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|err| BenchError::io(role, err))
    }

    /// A TLS connection to `addr`, presented as a Unix socket carrying the plaintext.
    pub(crate) async fn connect(&self, addr: &str, role: Role) -> Result<UnixStream, BenchError> {
        let tls = self.handshake(addr, role).await?;
        let (ours, theirs) = UnixStream::pair().map_err(|err| BenchError::io(role, err))?;
        tokio::spawn(proxy(tls, ours));
        Ok(theirs)
    }
}

/// Copies between the TLS stream and our socketpair end until either side closes.
async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(tls: S, ours: UnixStream) {
    let (mut tls_rx, mut tls_tx) = tokio::io::split(tls);
    let (mut rx, mut tx) = ours.into_split();
    let up = async {
        let mut buf = vec![0u8; PROXY_CHUNK];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tls_tx.write_all(&buf[..n]).await.is_err() || tls_tx.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tls_tx.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; PROXY_CHUNK];
        loop {
            match tls_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.shutdown().await;
    };
    tokio::join!(up, down);
}

/// What the `handshakes` load does.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeSpec {
    /// Loops running at once.
    pub(crate) concurrency: u32,
    /// How long to run.
    pub(crate) duration: Duration,
    /// Whether sessions were resumed (for the report).
    pub(crate) resume: bool,
}

/// Runs `concurrency` loops of connect + TLS + CONNECT + CONNACK + close for the duration;
/// reports handshakes per second.
pub(crate) async fn handshakes(
    tls: &TlsClient,
    addr: &str,
    client_prefix: &str,
    spec: HandshakeSpec,
) -> Value {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut tasks = Vec::new();
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    for i in 0..spec.concurrency {
        let (tls, addr) = (tls.clone(), addr.to_owned());
        let (done, failed, first_error) = (done.clone(), failed.clone(), first_error.clone());
        let id = format!("{client_prefix}-h{i}");
        tasks.push(tokio::spawn(async move {
            let role = Role::Idle(i);
            while Instant::now() < deadline {
                match one_handshake(&tls, &addr, &id, role).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let errors: Vec<String> = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    json!({
        "mode": "handshakes",
        "concurrency": spec.concurrency,
        "resume": spec.resume,
        "handshakes": n,
        "failed": failed.load(Ordering::Relaxed),
        "seconds": elapsed,
        "handshake_rate": (n as f64 / elapsed).round(),
        "errors": errors,
    })
}

async fn one_handshake(
    tls: &TlsClient,
    addr: &str,
    id: &str,
    role: Role,
) -> Result<(), BenchError> {
    let mut stream = tls.handshake(addr, role).await?;
    let connect = Connect {
        protocol: crate::client::PROTOCOL,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteStr::from(id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let mut buf = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect)),
        crate::client::PROTOCOL,
        &mut buf,
    )
    .map_err(|err| BenchError::Encode {
        role,
        what: "CONNECT",
        err,
    })?;
    stream
        .write_all(&buf)
        .await
        .map_err(|err| BenchError::io(role, err))?;
    stream
        .flush()
        .await
        .map_err(|err| BenchError::io(role, err))?;
    buf.clear();
    loop {
        if let Some(p) = decode(&mut buf, crate::client::PROTOCOL, 1024)
            .map_err(|err| BenchError::Decode { role, err })?
        {
            match p {
                Packet::ConnAck(ack) if ack.code == 0 => break,
                Packet::ConnAck(ack) => {
                    return Err(BenchError::Refused {
                        role,
                        code: ack.code,
                        hint: "",
                    })
                }
                other => {
                    return Err(BenchError::Unexpected {
                        role,
                        packet: other.name(),
                        what: "CONNACK",
                    })
                }
            }
        }
        buf.reserve(256);
        let n = tokio::time::timeout(crate::client::HANDSHAKE_TIMEOUT, stream.read_buf(&mut buf))
            .await
            .map_err(|_| BenchError::Timeout {
                role,
                what: "CONNACK",
                after: crate::client::HANDSHAKE_TIMEOUT,
            })?
            .map_err(|err| BenchError::io(role, err))?;
        if n == 0 {
            return Err(BenchError::Closed {
                role,
                detail: " while we waited for CONNACK".into(),
            });
        }
    }
    // DISCONNECT, close_notify, close: the broker frees the session right away.
    let _ = stream.write_all(&[0xe0, 0x00]).await;
    let _ = stream.shutdown().await;
    Ok(())
}
