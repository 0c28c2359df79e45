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

/// Datagrams read per system call (`recvmmsg`).
const BATCH: usize = 32;

/// Batches read per wake-up before the loop looks at its timer and shutdown again (a socket
/// under a flood still runs the DTLS timers and stops when told).
const BATCHES_PER_WAKE: usize = 8;

/// Reads `transport`'s socket until `shutdown`: plain datagrams straight to the handler, DTLS
/// records through the sessions first (their handshake flights sent back from here).
/// Datagrams are read [`BATCH`] to a system call while the socket has them.
pub async fn read_loop(
    handler: &mut impl Handler,
    transport: &Transport,
    max_message_size: usize,
    shutdown: &CancellationToken,
) {
    let socket = transport.socket().clone();
    let sessions = transport.sessions().cloned();
    // One more byte than allowed: a longer datagram arrives cut at max + 1 and is refused as
    // oversized.
    let mut batch = Batch::new(max_message_size + 1);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
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
            r = socket.readable() => if let Err(e) = r {
                tracing::debug!(error = %e, "udp readable");
                continue;
            },
        }
        for _ in 0..BATCHES_PER_WAKE {
            let read = socket.try_io(tokio::io::Interest::READABLE, || {
                batch.receive(socket.as_ref())
            });
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux; nothing to do.
                    tracing::debug!(error = %e, "udp recv");
                    continue;
                }
            };
            for (data, from) in batch.datagrams() {
                handler.received();
                let Some(s) = &sessions else {
                    handler.datagram(data, from, None);
                    continue;
                };
                let r = s.receive(data, from, Instant::now());
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
            if n < BATCH {
                break;
            }
        }
    }
}

/// Buffers for one `recvmmsg` call and what it read.
struct Batch {
    /// [`BATCH`] buffers of `stride` bytes, end to end.
    buffers: Vec<u8>,
    stride: usize,
    /// Length and sender of each datagram read, in order.
    read: Vec<(usize, Option<SocketAddr>)>,
}

impl Batch {
    fn new(stride: usize) -> Batch {
        Batch {
            buffers: vec![0; stride * BATCH],
            stride,
            read: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what the socket has, up to [`BATCH`] datagrams, without waiting; the count.
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;
        let mut chunks = self.buffers.chunks_mut(self.stride);
        let mut slices: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        // The headers point into themselves, so they are made for each call (they cannot be
        // kept across an await: they are not Send).
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        self.read.clear();
        for r in results {
            let from = r.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                    })
            });
            self.read.push((r.bytes, from));
        }
        Ok(self.read.len())
    }

    /// The datagrams the last [`Batch::receive`] read, with their senders (one without an
    /// IP sender address is skipped).
    fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.read
            .iter()
            .zip(self.buffers.chunks(self.stride))
            .filter_map(|(&(len, from), buf)| Some((buf.get(..len)?, from?)))
    }
}
