//! The socket under a connection: a TCP stream from a plain listener, or one end of a Unix
//! socketpair whose other end a TLS/WebSocket terminator feeds with plaintext MQTT bytes.
//!
//! Owns only the non-blocking primitives the connection's hand-written poll loop needs
//! (`try_read_buf`, `try_write`, `poll_read_ready`, `poll_write_ready`). It must never buffer,
//! never await anything but readiness, and never grow a generic `AsyncRead`/`AsyncWrite` path:
//! plain TCP stays exactly the readiness loop it was.
//!
//! Why an enum and not a generic parameter: a `Connection<S>` would compile the whole packet
//! loop twice into the firmware, while the match here is one predictable branch next to a
//! system call. The enum costs no space either: both variants are a tokio `PollEvented` of the
//! same size (the connection task size test guards it).

use bytes::BytesMut;
use std::io;
use std::task::{Context, Poll};
use tokio::net::{TcpStream, UnixStream};

/// A connection's socket.
#[derive(Debug)]
pub enum Stream {
    /// A client straight on a `tcp` listener.
    Tcp(TcpStream),
    /// The connection's end of a socketpair; a terminator task holds the other end.
    Unix(UnixStream),
}

impl Stream {
    /// Reads what is there into `buf` without waiting (`WouldBlock` when nothing is).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Unix(s) => s.try_read_buf(buf),
        }
    }

    /// Writes what the socket takes without waiting.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }

    /// Ready when a read may succeed; registers the waker otherwise.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Ready when a write may succeed; registers the waker otherwise.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Unix(s) => s.poll_write_ready(cx),
        }
    }

    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Waits until a write may succeed.
    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_ready(cx)).await
    }
}
