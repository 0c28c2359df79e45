//! What a full session queue does to the publishers whose messages go there
//! (`mqtt.mqueue_full = "backpressure"`, the default).
//!
//! Owns the hold-back bookkeeping: a QoS 1/2 message for a connected subscriber whose queue is
//! full is still queued (over the limit: up to twice it, or one message per held publisher),
//! and its publisher's
//! connection is marked held back, so it applies no further PUBLISH until the queue is down to
//! three quarters of its limits, its client goes away, or `slow_subscriber_timeout` passes and
//! the subscriber is disconnected (0x97) instead. Nothing acknowledged is dropped on the way.
//! A subscriber disconnected that way drops its oldest instead, until it has caught up (its
//! queue down to three quarters), so one that reconnects and stalls again cannot hold every
//! publisher back each time.
//! It never touches a socket: the connections see the flag on their control handle and are
//! woken through the router's wake list.

use super::*;

/// Holds the publisher of a message back on every session in `full` (see
/// `Session::hold_back`). A message nobody published (`$SYS`, a will) has no one to hold.
pub(super) fn hold_back_publisher(
    sessions: &mut SessionMap<Box<Session>>,
    counters: &mut RouterCounters,
    publisher: Option<SessionId>,
    full: &[SessionId],
    now: Instant,
) {
    let Some(conn) = publisher
        .and_then(|p| sessions.get(&p))
        .and_then(|p| p.conn.clone())
    else {
        return;
    };
    counters.publishers_held_back += 1;
    for sid in full {
        if let Some(s) = sessions.get_mut(sid) {
            s.hold_back(&conn, now);
        }
    }
}

impl Router {
    /// Lets the publishers that session `sid` holds back go on once its queue is down to three
    /// quarters of its limits (not at the first free slot: each release wakes them all); a
    /// slow subscriber that got that far has caught up and may hold publishers back again.
    pub(super) fn release_publishers_if_room(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.congestion.is_none() && !s.lossy {
            return;
        }
        let (len, bytes) = (self.cfg.max_mqueue_len, self.cfg.max_mqueue_bytes);
        if s.mqueue.len() <= len - len / 4 && s.held_bytes <= bytes - bytes / 4 {
            s.lossy = false;
            s.release_publishers(&mut self.wake);
        }
    }

    /// Disconnects (v5: 0x97) every subscriber whose full queue has held publishers back for
    /// `slow_subscriber_timeout`, and lets those publishers go on: the subscriber pays, not
    /// them. Its session stays, with its queue, dropping its oldest from now on.
    pub(super) fn disconnect_slow_subscribers(&mut self, now: Instant) {
        let timeout = self.cfg.slow_subscriber_timeout;
        for s in self.sessions.values_mut() {
            let Some(c) = s
                .congestion
                .as_ref()
                .filter(|c| now.saturating_duration_since(c.since) >= timeout)
            else {
                continue;
            };
            let held = c.publishers.len();
            if let Some(conn) = s.conn.as_ref().filter(|c| !c.is_closing()) {
                tracing::warn!(
                    client_id = %s.client_id,
                    queued = s.mqueue.len(),
                    inflight = s.inflight.len(),
                    publishers_held = held,
                    slow_subscriber_timeout = ?timeout,
                    "slow subscriber disconnected: its full queue held publishers back; its session keeps the queue and drops its oldest from now on"
                );
                conn.close_slow_subscriber();
                self.counters.slow_subscribers_disconnected += 1;
                s.lossy = true;
            }
            s.release_publishers(&mut self.wake);
        }
    }
}

#[cfg(test)]
#[path = "backpressure_tests.rs"]
mod tests;
