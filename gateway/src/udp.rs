//! The socket side the UDP gateways (CoAP, LwM2M) share: binding with a large receive buffer,
//! the read loop (plain datagrams, or DTLS records through the sessions first), and the
//! rate limit on bad-input log lines.
//!
//! Owns no protocol: what a datagram means is the [`Handler`]'s. Never waits on the broker
//! (the handlers hand work to their clients' tasks) and never logs more than
//! [`BAD_LOG_PER_SECOND`] bad-input lines a second.

use crate::dtls::Transport;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Bad-input log lines per second per socket; the rest are only counted.
pub const BAD_LOG_PER_SECOND: u32 = 20;

/// Receive buffer asked of the kernel (it caps it at `net.core.rmem_max`): a burst of
/// datagrams waits there while the reading task catches up, instead of being dropped at the
/// default ~200 KB.
pub const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// How often the read loop runs the DTLS timers and the handler's [`Handler::tick`].
const TICK: Duration = Duration::from_millis(250);

/// Binds `addr` and asks for [`RECEIVE_BUFFER`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt::RcvBuf};
    let socket = UdpSocket::bind(addr).await?;
    if let Err(e) = setsockopt(&socket, RcvBuf, &RECEIVE_BUFFER) {
        tracing::debug!(error = %e, "cannot set the UDP receive buffer");
    }
    let granted = getsockopt(&socket, RcvBuf).ok();
    tracing::debug!(bind = %addr, receive_buffer = ?granted, "udp socket bound");
    Ok(socket)
}

/// A mutex's guard, whether or not a panicking holder poisoned it (the data are counters and
/// tables that stay consistent between statements).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// At most [`BAD_LOG_PER_SECOND`] log lines a second.
#[derive(Debug, Default)]
pub struct LogBudget {
    second: Option<Instant>,
    used: u32,
}

impl LogBudget {
    /// Whether one more line may be logged now.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        match self.second {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.second = Some(now);
                self.used = 0;
            }
        }
        self.used += 1;
        self.used <= BAD_LOG_PER_SECOND
    }
}

/// What a UDP gateway does with what its socket reads.
pub trait Handler {
    /// One message from `from`: a plain datagram, or the plaintext of a DTLS record with the
    /// PSK identity the peer proved.
    fn datagram(&mut self, data: &[u8], from: SocketAddr, identity: Option<String>);
    /// Every datagram read (before decoding), for the counters.
    fn received(&mut self);
    /// A DTLS datagram that was refused (no handshake, a failed one, sessions full).
    fn dtls_refused(&mut self, from: SocketAddr, why: &str);
    /// Runs about four times a second (expiry and the like).
    fn tick(&mut self) {}
}

/// Reads `transport`'s socket until `shutdown`: plain datagrams straight to the handler, DTLS
/// records through the sessions first (their handshake flights sent back from here).
pub async fn read_loop(
    handler: &mut impl Handler,
    transport: &Transport,
    max_message_size: usize,
    shutdown: &CancellationToken,
) {
    let socket = transport.socket().clone();
    let sessions = transport.sessions().cloned();
    let mut buf = vec![0u8; max_message_size + 1];
    let mut tick = tokio::time::interval(TICK);
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Some(s) = &sessions {
                    for (to, record) in s.tick(Instant::now()) {
                        let _ = socket.try_send_to(&record, to);
                    }
                }
                handler.tick();
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux; nothing to do.
                    tracing::debug!(error = %e, "udp recv");
                    continue;
                }
            },
        };
        handler.received();
        let Some(s) = &sessions else {
            handler.datagram(&buf[..n], from, None);
            continue;
        };
        let r = s.receive(&buf[..n], from, Instant::now());
        for record in &r.to_send {
            let _ = socket.try_send_to(record, from);
        }
        if let Some(why) = &r.failed {
            handler.dtls_refused(from, why);
        }
        for plain in r.plain {
            handler.datagram(&plain, from, r.identity.clone());
        }
    }
}
