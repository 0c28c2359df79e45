//! The thin I/O driver of a connection: the socket readiness loop, reads into the session's
//! buffer, writes out of it, keepalive, and the goodbye.
//!
//! Owns every `.await` on the socket and nothing of the protocol: what to send and what a
//! packet means is the session's (`inbound`, `outbound`, `handshake`). It never holds the
//! router lock across an `.await`.

use super::*;

impl MqttSession {
    pub(super) async fn run(&mut self, stream: &Stream) -> DisconnectReason {
        // The handshake and the goodbye run in boxed futures: their state is only alive for a
        // moment, and keeping it inline would make every idle connection's task that much
        // bigger.
        let connect = match Box::pin(self.read_connect(stream)).await {
            Ok(c) => c,
            Err(close) => {
                Box::pin(self.finish_unconnected(stream, &close)).await;
                return close.reason;
            }
        };
        // `accept_connect` consumes the box: its ~600 bytes must not live as long as the
        // connection (a moved-out box is only freed at the end of its scope).
        if let Err(close) = Box::pin(self.accept_connect(stream, connect)).await {
            Box::pin(self.finish_unconnected(stream, &close)).await;
            return close.reason;
        }
        let close = self.packet_loop(stream).await;
        Box::pin(self.finish(stream, close)).await
    }

    /// Reads until the first packet, which must be CONNECT, arrives within `idle_timeout`.
    pub(super) async fn read_connect(&mut self, stream: &Stream) -> Result<Box<Connect>, Close> {
        let deadline = tokio::time::Instant::now() + self.broker.config.mqtt.idle_timeout;
        loop {
            let max = self.max_packet_size();
            match decode(&mut self.rbuf, ProtocolVersion::V3_1_1, max) {
                Ok(Some(Packet::Connect(c))) => return Ok(c),
                Ok(Some(other)) => {
                    tracing::warn!(peer = %self.peer, packet = other.name(), "protocol error: first packet is not CONNECT");
                    return Err(Close::new(DisconnectReason::ProtocolError, None));
                }
                Ok(None) => {}
                Err(e) => {
                    self.log_parse_failure(&e);
                    if let DecodeError::UnsupportedProtocolVersion(_) = e {
                        let ack = Packet::ConnAck(ConnAck {
                            code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                            ..ConnAck::default()
                        });
                        let _ = encode(&ack, ProtocolVersion::V3_1_1, &mut self.wbuf);
                    }
                    return Err(Close::new(reason_for(&e), None));
                }
            }
            tokio::select! {
                _ = self.broker.shutdown.cancelled() => {
                    return Err(Close::new(DisconnectReason::Shutdown, None));
                }
                _ = sleep_until(deadline) => {
                    tracing::info!(peer = %self.peer, "closed: idle_timeout (no CONNECT)");
                    return Err(Close::new(DisconnectReason::IdleTimeout, None));
                }
                r = stream.readable() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %self.peer, error = %e, "socket error before CONNECT");
                        return Err(Close::new(DisconnectReason::TcpClosed, None));
                    }
                    match self.try_read(stream, CONNECT_CHUNK) {
                        Ok(0) => return Err(Close::new(DisconnectReason::TcpClosed, None)),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(Close::new(DisconnectReason::TcpClosed, None)),
                    }
                }
            }
        }
    }

    pub(super) fn try_read(&mut self, stream: &Stream, chunk: usize) -> io::Result<usize> {
        self.rbuf.reserve(chunk);
        let n = match stream.try_read_buf(&mut self.rbuf) {
            Ok(n) => n,
            Err(e) => {
                // Stale readiness (WouldBlock): do not keep a reserved buffer for nothing.
                self.release_read_buffer_if_empty();
                return Err(e);
            }
        };
        self.broker
            .traffic
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Runs the authentication chain. A password is checked by the check workers (argon2id);
    /// a login that finds their queue full, or waits longer than `auth.check_timeout`, is
    /// refused as busy, and one whose client hangs up while it waits is dropped (its check
    /// never runs).
    pub(super) async fn authenticate(
        &mut self,
        stream: &Stream,
        connect: &Connect,
    ) -> Result<AuthDecision, NoCheck> {
        let auth = self.broker.auth.clone();
        let username = connect.username.as_ref().map(|u| u.to_string());
        let password = connect.password.clone();
        if password.is_none() {
            // No argon2 without a password (a listed user without one is simply refused).
            return Ok(auth.check(&self.client_id, username.as_deref(), None));
        }
        let reply = self
            .broker
            .auth_checks
            .submit(&self.client_id, username.as_deref(), password.as_deref())
            .map_err(|_| NoCheck::Busy)?;
        tokio::pin!(reply);
        let deadline =
            sleep_until(tokio::time::Instant::now() + self.broker.config.auth.check_timeout);
        tokio::pin!(deadline);
        let max_buffered = self.max_packet_size();
        loop {
            tokio::select! {
                decision = &mut reply => return decision.map_err(|_| NoCheck::Busy),
                () = &mut deadline => return Err(NoCheck::Busy),
                r = stream.readable(), if self.rbuf.len() < max_buffered => {
                    if r.is_err() {
                        return Err(NoCheck::Gone);
                    }
                    // Whatever the client sent after CONNECT stays buffered for later; an end of
                    // stream means nobody waits for the answer any more.
                    match self.try_read(stream, CONNECT_CHUNK) {
                        Ok(0) => return Err(NoCheck::Gone),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(NoCheck::Gone),
                    }
                }
            }
        }
    }

    /// The connected loop. Returns why it ended.
    pub(super) async fn packet_loop(&mut self, stream: &Stream) -> Close {
        let keepalive = tokio::time::sleep(self.keepalive_window());
        tokio::pin!(keepalive);
        // Packets pipelined behind CONNECT are already in the buffer.
        if !self.rbuf.is_empty() {
            if let Err(close) = self.handle_input() {
                return close;
            }
        } else {
            self.release_read_buffer_if_empty();
        }
        self.drain_outgoing();
        loop {
            if let Err(close) = self.flush_now(stream) {
                return close;
            }
            if let Some(at) = self.limits.as_ref().and_then(|l| l.paused_until) {
                if keepalive.deadline() != at {
                    keepalive.as_mut().reset(at);
                }
            }
            let room = self.wbuf.len() < self.outbound_limit();
            if room && self.drain_more {
                self.drain_outgoing();
                continue;
            }
            // One hand-written poll instead of a `select!`: it keeps no readiness or
            // notification futures in the task, which is most of an idle connection's memory.
            let wakeup = {
                let ctrl = &self.ctrl;
                let has_output = !self.wbuf.is_empty();
                let keepalive = keepalive.as_mut();
                // Input stops while too many acknowledgements wait for a sync: the devices'
                // inflight windows then hold the rest back.
                // A rate limit's empty bucket stops it too, until the refill timer fires.
                // A held-back client is read on within a bound (see `stall_allows_read`).
                let read = room
                    && self.held_len() < MAX_HELD_ACKS
                    && !self.is_paused()
                    && self.stall_allows_read();
                let stalled = !self.inbound.is_empty();
                let held = self.held.as_deref();
                let input = Input {
                    read,
                    stalled,
                    room,
                };
                poll_wakeup(stream, ctrl, has_output, input, held, keepalive).await
            };
            match wakeup {
                Wakeup::Close => {
                    let code = self.ctrl.close_reason.load(Ordering::Relaxed);
                    return Close::new(self.ctrl.close_cause(), Some(code));
                }
                Wakeup::Failed => return Close::new(DisconnectReason::TcpClosed, None),
                Wakeup::Writable => {}
                Wakeup::Readable => match self.try_read(stream, READ_CHUNK) {
                    Ok(0) if !self.inbound.is_empty() => {
                        // The client said all it will say, some of it held back (e.g.
                        // PUBLISH then DISCONNECT, as mosquitto_pub does): apply it now,
                        // holding nothing back any more, so a normal goodbye stays normal.
                        self.input_ended = true;
                        if let Err(close) = self.handle_input() {
                            return close;
                        }
                        return Close::new(DisconnectReason::TcpClosed, None);
                    }
                    Ok(0) => return Close::new(DisconnectReason::TcpClosed, None),
                    Ok(_) => {
                        keepalive
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.keepalive_window());
                        if let Err(close) = self.handle_input() {
                            return close;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Close::new(DisconnectReason::TcpClosed, None),
                },
                Wakeup::Deliveries => self.drain_outgoing(),
                Wakeup::Resume => {
                    if let Err(close) = self.handle_input() {
                        return close;
                    }
                }
                Wakeup::Durable => self.release_held(),
                Wakeup::KeepAlive if self.is_paused() => {
                    // The timer stood for the refill of a rate limit's bucket: resume with the
                    // input that waited, which counts as traffic for the keepalive.
                    keepalive
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.keepalive_window());
                    if let Some(l) = self.limits.as_mut() {
                        l.paused_until = None;
                    }
                    if let Err(close) = self.handle_input() {
                        return close;
                    }
                }
                Wakeup::KeepAlive if !self.inbound.is_empty() => {
                    // Held back: its pings may wait unread behind its held publishes, so its
                    // silence is ours, not the client's.
                    keepalive
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.keepalive_window());
                }
                Wakeup::KeepAlive => {
                    conn_event!(info, self, "closed: keepalive_timeout");
                    return Close::new(
                        DisconnectReason::KeepaliveTimeout,
                        Some(reason::KEEP_ALIVE_TIMEOUT),
                    );
                }
            }
        }
    }

    /// Writes what the socket takes without waiting.
    pub(super) fn flush_now(&mut self, stream: &Stream) -> Result<(), Close> {
        while !self.wbuf.is_empty() {
            match stream.try_write(&self.wbuf) {
                Ok(0) => return Err(Close::new(DisconnectReason::TcpClosed, None)),
                Ok(n) => {
                    self.wbuf.advance(n);
                    self.broker
                        .traffic
                        .bytes_sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Close::new(DisconnectReason::TcpClosed, None)),
            }
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            // Give a burst's buffer back instead of keeping it for an idle client.
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Ends a connected session: DISCONNECT for v5 when due, flush, unbind the session,
    /// publish the will and the `$SYS` event.
    pub(super) async fn finish(&mut self, stream: &Stream, close: Close) -> DisconnectReason {
        if let (Some(code), true) = (close.disconnect, self.protocol.is_v5()) {
            self.queue_packet(&Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties::default(),
            }));
        }
        self.flush_with_deadline(stream).await;
        let will = if close.publish_will {
            self.will.take().map(|w| (w.message, w.delay))
        } else {
            None
        };
        let (sid, conn_id) = (self.session, self.ctrl.conn_id);
        let expiry = self.expiry_override.map(|secs| {
            Duration::from_secs(u64::from(secs)).min(self.broker.config.mqtt.session_expiry)
        });
        let now = Instant::now();
        self.broker
            .with_router(|r| r.disconnect(sid, conn_id, will, expiry, now));
        conn_event!(
            info,
            self,
            reason = close.reason.as_str(),
            "client disconnected"
        );
        if self.connected {
            let info = self.client_info();
            sys::client_disconnected(&self.broker, &info, close.reason);
            self.broker
                .events()
                .client_disconnected(&info, close.reason);
        }
        close.reason
    }

    pub(super) async fn finish_unconnected(&mut self, stream: &Stream, close: &Close) {
        self.flush_with_deadline(stream).await;
        tracing::debug!(peer = %self.peer, reason = close.reason.as_str(), "connection closed before session");
    }

    pub(super) async fn flush_with_deadline(&mut self, stream: &Stream) {
        let deadline = tokio::time::Instant::now() + CLOSE_FLUSH;
        while !self.wbuf.is_empty() {
            if self.flush_now(stream).is_err() {
                return;
            }
            if self.wbuf.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, stream.writable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// What woke the packet loop, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wakeup {
    /// The connection was asked to close (takeover, kick, shutdown).
    Close,
    /// The socket reported an error.
    Failed,
    /// The socket can take more output.
    Writable,
    /// The socket has input.
    Readable,
    /// The router queued deliveries on the session.
    Deliveries,
    /// The subscriber queue that held this client's input back has room again.
    Resume,
    /// A bridge queue synced the messages the oldest held acknowledgement waits for.
    Durable,
    /// Nothing arrived within keepalive x multiplier.
    KeepAlive,
}

/// What the packet loop may take in while it waits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Input {
    /// The socket may be read.
    pub(super) read: bool,
    /// Decoded input waits for a full subscriber queue to let this client go on.
    pub(super) stalled: bool,
    /// The write buffer has room for deliveries.
    pub(super) room: bool,
}

/// Waits for the next [`Wakeup`]. The waker is registered with the control handle before its
/// flags are read, so a close or delivery signalled concurrently is never missed.
pub(super) async fn poll_wakeup(
    stream: &Stream,
    ctrl: &ConnControl,
    has_output: bool,
    input: Input,
    held: Option<&HeldAcks>,
    mut keepalive: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Wakeup {
    use std::future::Future;
    use std::task::Poll;
    std::future::poll_fn(|cx| {
        ctrl.register(cx.waker());
        if ctrl.is_closing() {
            return Poll::Ready(Wakeup::Close);
        }
        if has_output {
            if let Poll::Ready(r) = stream.poll_write_ready(cx) {
                return Poll::Ready(if r.is_ok() {
                    Wakeup::Writable
                } else {
                    Wakeup::Failed
                });
            }
        }
        if let Some(held) = held {
            if held.poll_front_durable(cx).is_ready() {
                return Poll::Ready(Wakeup::Durable);
            }
        }
        if input.stalled && !ctrl.is_held_back() {
            return Poll::Ready(Wakeup::Resume);
        }
        if input.read {
            if let Poll::Ready(r) = stream.poll_read_ready(cx) {
                return Poll::Ready(if r.is_ok() {
                    Wakeup::Readable
                } else {
                    Wakeup::Failed
                });
            }
        }
        if input.room && ctrl.wake_pending.load(Ordering::Acquire) {
            return Poll::Ready(Wakeup::Deliveries);
        }
        if keepalive.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wakeup::KeepAlive);
        }
        Poll::Pending
    })
    .await
}
