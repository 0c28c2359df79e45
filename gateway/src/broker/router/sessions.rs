//! Sessions in the router: CONNECT (create, resume, take over, discard), disconnect with its
//! will, expiry and delayed wills (`tick`), and restoring sessions from the session store.
//!
//! Owns the session lifecycle only; it never does IO (the store is written by the flusher from
//! the journal this keeps).

use super::*;

impl Router {
    /// Binds a connection to the session of `params.client_id`, creating, resuming or
    /// discarding it (clean start). See [`ConnectResult`]; a refusal changes nothing.
    pub fn connect(&mut self, params: ConnectParams) -> Result<ConnectResult, ConnectRefusal> {
        let mut replaced = None;
        let mut discarded = false;
        let now = params.now;
        if let Some(&sid) = self.by_client.get(&params.client_id) {
            // An offline session past its expiry, or a will already due, is settled first: the
            // one-second `tick` may simply not have run yet.
            let (expired, will_due) = self.sessions.get(&sid).map_or((false, false), |s| {
                (
                    s.expires_at.is_some_and(|at| now >= at),
                    s.pending_will().is_some_and(|w| now >= w.publish_at),
                )
            });
            if will_due {
                if let Some(w) = self.sessions.get_mut(&sid).and_then(|s| {
                    s.note_meta_changed();
                    s.take_pending_will()
                }) {
                    self.publish_will(w.message, now);
                }
            }
            if expired {
                if let Some(w) = self.remove_session(sid) {
                    self.publish_will(w, now);
                }
            }
            let mut clean_start = params.clean_start;
            if let Some(s) = self.sessions.get_mut(&sid) {
                match &s.owner {
                    Owner::Unclaimed => {
                        s.owner = params.owner.clone();
                        s.note_meta_changed();
                    }
                    owner if *owner == params.owner => {}
                    owner => {
                        tracing::warn!(
                            client_id = %params.client_id,
                            session_owner = ?owner,
                            connecting = ?params.owner,
                            policy = ?params.on_owner_mismatch,
                            "a CONNECT for a session another identity created"
                        );
                        // A verified user never resumes a session nobody verified (anyone could
                        // have planted it), and is not locked out by it either: it starts afresh.
                        let squatted =
                            *owner == Owner::Anonymous && matches!(params.owner, Owner::User(_));
                        let policy = if squatted {
                            OwnerMismatch::Discard
                        } else {
                            params.on_owner_mismatch
                        };
                        match policy {
                            OwnerMismatch::Refuse => {
                                return Err(ConnectRefusal::NotOwner);
                            }
                            OwnerMismatch::Discard => clean_start = true,
                        }
                    }
                }
            }
            if let Some(s) = self.sessions.get_mut(&sid) {
                replaced = s.conn.take();
                // A new connection starts with a clean slate; its publishers retry.
                s.release_publishers(&mut self.wake);
                if !clean_start {
                    s.conn = Some(params.conn.clone());
                    s.protocol = params.protocol;
                    s.expiry = params.session_expiry;
                    s.expires_at = None;
                    s.set_window_max(params.window);
                    s.take_pending_will();
                    s.resend_pending = !s.inflight.is_empty();
                    params
                        .conn
                        .wake_pending
                        .store(false, std::sync::atomic::Ordering::Release);
                    if (!s.mqueue.is_empty() || s.resend_pending) && params.conn.should_wake() {
                        self.wake.push(params.conn.clone());
                    }
                    self.sync_journal(sid);
                    return Ok(ConnectResult {
                        session_id: sid,
                        session_present: true,
                        replaced,
                        discarded: false,
                    });
                }
            }
            // Clean start: the old session ends here; its pending will goes out now.
            if let Some(pending) = self.remove_session(sid) {
                self.publish_will(pending, now);
            }
            discarded = true;
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            tracing::warn!(client_id = %params.client_id, max_sessions = self.cfg.max_sessions, "connection refused: max_sessions reached");
            if let Some(conn) = replaced.take() {
                // The old connection's session was just discarded: it cannot stay bound.
                conn.close_with(reason::SESSION_TAKEN_OVER);
            }
            return Err(ConnectRefusal::TooManySessions);
        }
        let sid = self.next_session_id;
        self.next_session_id = sid.next();
        let mut session = Session::new(sid, params.client_id.clone(), params.protocol);
        session.held_total = self.held_total.clone();
        session.owner = params.owner;
        session.conn = Some(params.conn);
        session.expiry = params.session_expiry;
        session.set_window_max(params.window);
        self.sessions.insert(sid, Box::new(session));
        self.by_client.insert(params.client_id, sid);
        self.sync_journal(sid);
        Ok(ConnectResult {
            session_id: sid,
            session_present: false,
            replaced,
            discarded,
        })
    }

    /// The connection `conn_id` of session `sid` ended. `will` is published now or after its
    /// delay; `expiry_override` is a v5 DISCONNECT's new session expiry. A call from a
    /// connection that was already replaced only publishes an undelayed will.
    pub fn disconnect(
        &mut self,
        sid: SessionId,
        conn_id: u64,
        will: Option<(Arc<Message>, Duration)>,
        expiry_override: Option<Duration>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            // The session already ended (a clean-start newcomer discarded it): so does the
            // will's delay.
            if let Some((msg, _)) = will {
                self.publish_will(msg, now);
            }
            return;
        };
        if s.conn.as_ref().map(|c| c.conn_id) != Some(conn_id) {
            // Resumed by another connection: a delayed will is cancelled by the resume.
            if let Some((msg, Duration::ZERO)) = will {
                self.publish_will(msg, now);
            }
            return;
        }
        s.conn = None;
        // Offline sessions drop their oldest instead: nobody waits on them.
        s.release_publishers(&mut self.wake);
        if let Some(expiry) = expiry_override {
            s.expiry = expiry;
        }
        if s.expiry.is_zero() {
            if let Some(pending) = self.remove_session(sid) {
                self.publish_will(pending, now);
            }
            if let Some((msg, _)) = will {
                self.publish_will(msg, now);
            }
            return;
        }
        s.expires_at = Some(now + s.expiry);
        self.redistribute_from_offline(sid, now);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !self.cfg.mqueue_store_qos0 {
            let before = s.mqueue.len();
            let mut freed = 0;
            s.mqueue.retain(|d| {
                let keep = d.qos != QoS::AtMostOnce;
                if !keep {
                    freed += d.held_bytes();
                }
                keep
            });
            s.sub_held(freed);
            self.counters.dropped_qos0_offline += (before - s.mqueue.len()) as u64;
        }
        match will {
            Some((msg, delay)) if delay.is_zero() => {
                self.publish_will(msg, now);
            }
            Some((message, delay)) => {
                let bytes = crate::broker::session::will_bytes(&message);
                let total = self.held_total.load(std::sync::atomic::Ordering::Relaxed);
                if total + bytes > self.cfg.max_queued_bytes_total {
                    // Kept, it would take memory the cap promises: published now, it reaches
                    // whoever has room (the bridges do) instead.
                    tracing::warn!(client_id = %crate::broker::short(&s.client_id), held_total = total, "delayed will published at once: max_queued_bytes_total reached");
                    self.publish_will(message, now);
                } else {
                    s.set_pending_will(PendingWill {
                        message,
                        publish_at: now + delay.min(s.expiry),
                    });
                }
            }
            None => {}
        }
        // A v5 DISCONNECT may have changed the expiry.
        self.sync_journal(sid);
    }

    /// A shared-subscription member went offline (its session stays): the messages queued
    /// for it through a group with a connected member go there instead of waiting for it
    /// (MQTT 5 §4.8.2 allows it; EMQX redispatches too). What was already sent stays.
    pub(super) fn redistribute_from_offline(&mut self, sid: SessionId, now: Instant) {
        let keys: Vec<Arc<SharedKey>> = {
            let Some(s) = self.sessions.get(&sid) else {
                return;
            };
            let mut keys: Vec<Arc<SharedKey>> = Vec::new();
            for k in s.mqueue.iter().filter_map(|d| d.shared.as_ref()) {
                if !keys.iter().any(|have| Arc::ptr_eq(have, k)) {
                    keys.push(k.clone());
                }
            }
            keys.retain(|k| {
                self.shared
                    .get(&k.filter, &k.group)
                    .is_some_and(|g| other_member(&self.sessions, g, sid, true).is_some())
            });
            keys
        };
        if keys.is_empty() {
            return;
        }
        let taken = self.take_shared_queued(sid, |k| keys.iter().any(|have| **have == *k));
        let left = self.redistribute(sid, taken, true, now);
        if let Some(s) = self.sessions.get_mut(&sid) {
            for d in left {
                s.push_delivery(d);
            }
        }
    }

    /// Publishes a will, starting its message expiry now (MQTT 5 §3.1.3.2.4).
    pub(super) fn publish_will(&mut self, msg: Arc<Message>, now: Instant) -> usize {
        let msg = match msg.properties.message_expiry_interval {
            Some(secs) if msg.expires_at.is_none() => {
                let mut armed = Message::clone(&msg);
                armed.expires_at = Some(now + Duration::from_secs(u64::from(secs)));
                Arc::new(armed)
            }
            _ => msg,
        };
        self.publish(msg, now)
    }

    /// Publishes due delayed wills, discards expired offline sessions and disconnects
    /// subscribers whose full queue held publishers back longer than
    /// `slow_subscriber_timeout`. Returns the client ids of the sessions discarded.
    pub fn tick(&mut self, now: Instant) -> Vec<ClientId> {
        let mut due_wills = Vec::new();
        let mut expired = Vec::new();
        self.disconnect_slow_subscribers(now);
        for s in self.sessions.values_mut() {
            s.tick_window();
            if s.pending_will().is_some_and(|w| now >= w.publish_at) {
                if let Some(w) = s.take_pending_will() {
                    due_wills.push(w.message);
                    s.note_meta_changed();
                }
            }
            if s.expires_at.is_some_and(|at| now >= at) {
                expired.push(s.id);
            }
        }
        for msg in due_wills {
            self.publish_will(msg, now);
        }
        let mut ids = Vec::with_capacity(expired.len());
        for sid in expired {
            if let Some(s) = self.sessions.get(&sid) {
                ids.push(s.client_id.clone());
            }
            if let Some(w) = self.remove_session(sid) {
                self.publish_will(w, now);
            }
        }
        ids
    }

    /// Removes a session and its subscriptions; returns its pending will, if any.
    pub(super) fn remove_session(&mut self, sid: SessionId) -> Option<Arc<Message>> {
        let s = self.sessions.remove(&sid)?;
        if self.by_client.get(&s.client_id) == Some(&sid) {
            self.by_client.remove(&s.client_id);
        }
        if s.journal.is_some() {
            if let Some(p) = &mut self.persist {
                p.forget(sid, &s.client_id);
            }
        }
        for filter in s.subscriptions.keys() {
            self.remove_subscription_index(sid, filter);
            self.subscription_bytes = self
                .subscription_bytes
                .saturating_sub(subscription_cost(filter));
        }
        // What came through a shared subscription goes to another member of its group: every
        // queued message, and the QoS 1 ones sent but not acknowledged. A QoS 2 message already
        // sent must not go to anyone else (MQTT-4.8.2-5).
        let mut s = s;
        let mut movable: Vec<Delivery> = Vec::new();
        let mut discarded = 0;
        for d in s.mqueue.drain(..) {
            if d.shared.is_some() {
                movable.push(d);
            } else {
                discarded += 1;
            }
        }
        for f in s.inflight.drain(..) {
            if f.delivery.shared.is_some() && f.state == InflightState::AwaitPubAck {
                movable.push(f.delivery);
            } else {
                discarded += 1;
            }
        }
        let left = self.redistribute(sid, movable, false, Instant::now());
        self.counters.dropped_session_discarded += (discarded + left.len()) as u64;
        s.take_pending_will().map(|w| w.message)
    }

    /// Restores the sessions stored before (see [`session_persist`]) as offline sessions and
    /// journals persistent sessions from now on; the caller writes the journals with
    /// [`Router::take_session_writes`]. Sessions that expired meanwhile, and records that do not
    /// make sense, are removed from the store with the first write. Returns how many sessions
    /// were restored.
    pub fn attach_session_store(&mut self, store: &dyn SessionStore, now: Instant) -> usize {
        let mut persist = Box::<Persistence>::default();
        let stored = match store.load_sessions() {
            Ok(all) => all,
            Err(e) => {
                persist.errors += 1;
                tracing::error!(error = %e, "cannot load persistent sessions; starting without them");
                Vec::new()
            }
        };
        let unix_now = crate::clock::frame_now_ms();
        let mut restored = 0;
        for stored in stored {
            let client_id = ClientId::from(stored.client_id.as_str());
            let protocol = session_persist::protocol_from_level(stored.protocol_level);
            let left = session_persist::remaining_expiry(&stored, unix_now);
            let (Some(protocol), Some(left)) = (protocol, left) else {
                if protocol.is_none() {
                    tracing::warn!(client_id = %client_id, level = stored.protocol_level, "stored session with an unknown protocol level discarded");
                } else {
                    tracing::info!(client_id = %client_id, "stored session expired while the gateway was down");
                }
                persist.removed.push(client_id);
                continue;
            };
            if self.by_client.contains_key(&client_id) {
                continue;
            }
            let pending = match store.load_pending(&stored.client_id) {
                Ok(p) => p,
                Err(e) => {
                    persist.errors += 1;
                    tracing::error!(client_id = %client_id, error = %e, "cannot load the queued messages of a persistent session; restoring it without them");
                    Vec::new()
                }
            };
            let sid = self.next_session_id;
            self.next_session_id = sid.next();
            let mut s = Session::new(sid, client_id.clone(), protocol);
            s.held_total = self.held_total.clone();
            s.expiry = Duration::from_secs(u64::from(stored.expiry_secs));
            s.expires_at = Some(now + left);
            s.awaiting_rel = stored
                .awaiting_rel
                .iter()
                .copied()
                .filter(|&id| id != 0)
                .map(PacketId::new)
                .collect();
            s.owner = match &stored.owner {
                None => Owner::Unclaimed,
                Some(None) => Owner::Anonymous,
                Some(Some(user)) => Owner::User(ByteStr::from(user.as_str())),
            };
            if let Some(w) = &stored.pending_will {
                let due_in = w.publish_at_unix_ms.saturating_sub(unix_now);
                match crate::broker::persist::from_stored(w.message.clone(), now) {
                    Some(message) => {
                        s.set_pending_will(PendingWill {
                            message: Arc::new(message),
                            publish_at: now + Duration::from_millis(due_in),
                        });
                    }
                    None => {
                        tracing::info!(client_id = %client_id, "stored delayed will expired while the gateway was down")
                    }
                }
            }
            let mut journal = Journal {
                // A session connected at the crash gets its disconnect time written now, so
                // that another crash does not restart its expiry.
                meta_dirty: stored.disconnected_at_unix_ms.is_none(),
                ..Journal::default()
            };
            let mut subs = Vec::with_capacity(stored.subscriptions.len());
            for sub in &stored.subscriptions {
                match session_persist::subscription_from_stored(sub) {
                    Some(parsed) => subs.push((ByteStr::from(sub.filter.as_str()), parsed)),
                    None => {
                        journal.meta_dirty = true;
                        tracing::warn!(client_id = %client_id, filter = %sub.filter, "stored subscription with an invalid QoS skipped");
                    }
                }
            }
            for p in pending {
                let seq = p.seq;
                s.next_seq = s.next_seq.max(seq.saturating_add(1));
                let qos = p.qos;
                match session_persist::pending_from_stored(p, now) {
                    Some(Restored::Queued(d)) => s.restore(d),
                    Some(Restored::Inflight(f)) => {
                        if s.inflight.iter().any(|g| g.packet_id == f.packet_id) {
                            s.restore(f.delivery);
                        } else {
                            s.next_packet_id = f.packet_id.next();
                            s.restore_inflight(f);
                        }
                    }
                    None => {
                        // Expired while the gateway was down (or not a QoS 1/2 record at all).
                        if matches!(qos, 1 | 2) {
                            self.counters.dropped_expired += 1;
                        }
                        journal
                            .pending
                            .insert(seq, session_persist::PendingOp::Removed);
                    }
                }
            }
            // A queued record that sorted before an inflight one (cannot happen unless the
            // store was edited) keeps its place: the queue must stay in seq order.
            s.mqueue.make_contiguous().sort_by_key(|d| d.seq);
            while s.mqueue.len() > self.cfg.max_mqueue_len {
                if let Some(oldest) = s.mqueue.pop_front() {
                    journal.removed(&oldest);
                    s.note_sent(&oldest);
                    self.counters.dropped_queue_full += 1;
                }
            }
            s.journal = Some(Box::new(journal));
            for (filter, sub) in &subs {
                if s.subscriptions.insert(filter.clone(), *sub).is_none() {
                    self.subscription_bytes += subscription_cost(filter);
                }
            }
            self.sessions.insert(sid, Box::new(s));
            self.by_client.insert(client_id, sid);
            persist.sessions.insert(sid);
            for (filter, sub) in subs {
                match topic::parse_shared(&filter) {
                    Ok(shared) => self.index_subscription(sid, &filter, shared, sub),
                    Err(_) => {
                        tracing::warn!(client_id = %stored.client_id, filter = %filter, "stored subscription with an invalid filter skipped");
                    }
                }
            }
            restored += 1;
        }
        self.counters.session_store_errors += std::mem::take(&mut persist.errors);
        self.persist = Some(persist);
        restored
    }

    /// Takes every journaled change as owned store writes, for the caller to apply with the
    /// lock released ([`SessionWrites::apply`]). Empty when no store is attached.
    pub fn take_session_writes(&mut self, now: Instant) -> SessionWrites {
        let Some(p) = &mut self.persist else {
            return SessionWrites::default();
        };
        let unix_now = crate::clock::frame_now_ms();
        let mut writes = SessionWrites {
            removals: std::mem::take(&mut p.removed),
            clients: Vec::new(),
        };
        for sid in &p.sessions {
            if let Some(s) = self.sessions.get_mut(sid) {
                if let Some(w) = session_persist::take_writes(s, now, unix_now) {
                    writes.clients.push(w);
                }
            }
        }
        writes
    }

    /// Counts session-store failures seen outside the lock (already logged).
    pub fn count_session_store_errors(&mut self, n: u64) {
        self.counters.session_store_errors += n;
    }

    /// Makes session `sid`'s journal match whether it is persisted (a store is attached and its
    /// expiry is above zero), and marks its metadata for rewriting.
    pub(super) fn sync_journal(&mut self, sid: SessionId) {
        let Some(p) = &mut self.persist else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let wanted = !s.expiry.is_zero();
        match (s.journal.is_some(), wanted) {
            (true, true) => s.note_meta_changed(),
            (false, true) => {
                let journal = Journal::for_session(s);
                s.journal = Some(Box::new(journal));
                p.adopt(sid, &s.client_id);
            }
            (true, false) => {
                s.journal = None;
                p.forget(sid, &s.client_id);
            }
            (false, false) => {}
        }
    }

    /// True when a session (connected or not) has this client id.
    pub fn has_client(&self, client_id: &str) -> bool {
        self.by_client.contains_key(client_id)
    }

    /// Closes every connection with `reason` (shutdown).
    pub fn close_all(&mut self, reason_code: u8) {
        for s in self.sessions.values() {
            if let Some(c) = &s.conn {
                c.close_with(reason_code);
            }
        }
    }
}

#[cfg(test)]
#[path = "sessions_tests.rs"]
mod tests;
