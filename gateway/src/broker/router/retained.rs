//! Retained messages: storing, replacing and clearing them under their caps, their store on
//! disk, and what a new subscription receives.
//!
//! A store write that fails is counted and logged; the message stays retained in memory.

use super::*;

impl Router {
    pub(super) fn store_retained(&mut self, msg: &Arc<Message>) {
        if !self.cfg.retain_available {
            return;
        }
        // The broker's own `$SYS` topics are a fixed, small set: they do not use up the
        // user-facing `max_retained_messages`.
        let counted = !msg.topic.starts_with("$SYS/");
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                if counted {
                    self.retained_user -= 1;
                    self.retained_user_bytes =
                        self.retained_user_bytes.saturating_sub(retained_size(&old));
                    self.persist_retained_removal(&msg.topic);
                }
            }
            return;
        }
        let old_size = self.retained.get(&msg.topic).map(|m| retained_size(m));
        let is_new = old_size.is_none();
        // Only user topics count against `max_retained_bytes` (and are in the running total).
        let bytes_after = if counted {
            self.retained_user_bytes
                .saturating_sub(old_size.unwrap_or(0))
                + retained_size(msg)
        } else {
            self.retained_user_bytes
        };
        if msg.payload.len() > self.cfg.max_retained_payload
            || (counted && is_new && self.retained_user >= self.cfg.max_retained_messages)
            || (counted && bytes_after > self.cfg.max_retained_bytes)
        {
            self.counters.dropped_retained_full += 1;
            tracing::warn!(topic = %crate::broker::short(&msg.topic), "retained message not stored: retained store full or payload too large");
            return;
        }
        // Stored without the publisher, so no-local never hides a retained message.
        let mut stored = msg.detached();
        stored.publisher = None;
        if counted {
            self.persist_retained(&stored);
        }
        self.retained.insert(stored.topic.clone(), Arc::new(stored));
        if counted {
            self.retained_user_bytes = bytes_after;
            if is_new {
                self.retained_user += 1;
            }
        }
    }

    /// Persists retained messages from now on, after loading the ones stored before (those
    /// that expired meanwhile are dropped from the store). Returns how many were loaded.
    /// `$SYS` topics are never stored: the broker republishes them.
    pub fn attach_retained_store(&mut self, store: Arc<dyn RetainedStore>, now: Instant) -> usize {
        let stored = match store.load_all() {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot load retained messages; starting without them");
                Vec::new()
            }
        };
        let mut loaded = 0;
        for s in stored {
            let topic = s.topic.clone();
            match crate::broker::persist::from_stored(s, now) {
                Some(msg)
                    if self.retained_user < self.cfg.max_retained_messages
                        && self.retained_user_bytes + retained_size(&msg)
                            <= self.cfg.max_retained_bytes =>
                {
                    let size = retained_size(&msg);
                    match self.retained.insert(msg.topic.clone(), Arc::new(msg)) {
                        None => self.retained_user += 1,
                        Some(old) => {
                            self.retained_user_bytes =
                                self.retained_user_bytes.saturating_sub(retained_size(&old));
                        }
                    }
                    self.retained_user_bytes += size;
                    loaded += 1;
                }
                _ => {
                    if let Err(e) = store.remove(&topic) {
                        tracing::warn!(topic = %crate::broker::short(&topic), error = %e, "cannot remove a stale retained message");
                    }
                }
            }
        }
        self.retained_store = Some(store);
        loaded
    }

    pub(super) fn persist_retained(&mut self, msg: &Message) {
        if let Some(store) = &self.retained_store {
            // sled buffers the write and flushes it in the background (see the storage crate
            // for what survives a kill -9 and what a power cut).
            if let Err(e) = store.put(&crate::broker::persist::to_stored(msg, Instant::now())) {
                self.counters.retained_store_errors += 1;
                tracing::error!(topic = %crate::broker::short(&msg.topic), error = %e, "retained message not persisted");
            }
        }
    }

    pub(super) fn persist_retained_removal(&mut self, topic: &str) {
        if let Some(store) = &self.retained_store {
            if let Err(e) = store.remove(topic) {
                self.counters.retained_store_errors += 1;
                tracing::error!(topic = %crate::broker::short(topic), error = %e, "retained message removal not persisted");
            }
        }
    }

    pub(super) fn queue_retained(
        &mut self,
        sid: SessionId,
        filter: &str,
        sub: Subscription,
        now: Instant,
    ) {
        let Router {
            cfg,
            sessions,
            retained,
            wake,
            counters,
            ..
        } = self;
        let Some(s) = sessions.get_mut(&sid) else {
            return;
        };
        let mut matching: Vec<&Arc<Message>> = retained
            .iter()
            .filter(|(t, m)| topic::matches(filter, t) && !m.is_expired(now))
            .map(|(_, m)| m)
            .collect();
        matching.sort_by(|a, b| a.topic.cmp(&b.topic));
        for msg in matching {
            let delivery = Delivery {
                message: msg.clone(),
                qos: msg.qos.min(sub.options.qos),
                retain: true,
                subscription_id: sub.id,
                more_subscription_ids: None,
                seq: 0,
                shared: None,
            };
            // Retained messages already own their memory: reuse them for offline sessions.
            enqueue(
                cfg,
                counters,
                wake,
                s,
                delivery,
                &mut Some(msg.clone()),
                false,
                now,
            );
        }
    }
}

/// What a retained message counts against `max_retained_bytes`.
pub(super) fn retained_size(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

#[cfg(test)]
#[path = "retained_tests.rs"]
mod tests;
