//! Subscriptions in the router: SUBSCRIBE / UNSUBSCRIBE, the plain and shared indexes, the
//! filter checks and caps (`max_topic_len`, `max_topic_levels`, `max_subscription_bytes_total`).
//!
//! Never changes what is queued except the retained messages a new subscription asks for.

use super::*;

impl Router {
    pub(super) fn remove_subscription_index(&mut self, sid: SessionId, filter: &str) -> bool {
        match topic::parse_shared(filter) {
            Ok(Some(SharedFilter { group, filter })) => {
                let key = ByteStr::from(group);
                let mut now_empty = false;
                let mut found = false;
                if let Some(g) = self.shared.get_mut(filter, &key) {
                    let before = g.members.len();
                    g.members.retain(|(m, _)| *m != sid);
                    found = g.members.len() != before;
                    now_empty = g.members.is_empty();
                }
                if now_empty {
                    self.shared.remove(filter, &key);
                }
                found
            }
            _ => self.subs.remove(filter, &sid).is_some(),
        }
    }

    /// Adds or replaces subscriptions; returns one SUBACK reason per filter and queues the
    /// retained messages the retain-handling options ask for. No limit on their number (the
    /// broker's own subscriptions); a client's go through [`Router::subscribe_limited`].
    pub fn subscribe(
        &mut self,
        sid: SessionId,
        filters: &[(ByteStr, SubscriptionOptions)],
        subscription_id: Option<NonZeroU32>,
        now: Instant,
    ) -> Vec<u8> {
        self.subscribe_limited(sid, filters, subscription_id, 0, now)
    }

    /// As [`Router::subscribe`], for a client held to `max_subscriptions` (0 = no limit): a
    /// new filter beyond it gets 0x97 quota exceeded; filters it holds already, and invalid
    /// ones, do not count; the first filters win.
    pub fn subscribe_limited(
        &mut self,
        sid: SessionId,
        filters: &[(ByteStr, SubscriptionOptions)],
        subscription_id: Option<NonZeroU32>,
        max_subscriptions: usize,
        now: Instant,
    ) -> Vec<u8> {
        let mut reasons = Vec::with_capacity(filters.len());
        for (filter, options) in filters {
            let over = max_subscriptions > 0
                && self.valid_filter(filter)
                && self.sessions.get(&sid).is_some_and(|s| {
                    s.subscriptions.len() >= max_subscriptions
                        && !s.subscriptions.contains_key(filter.as_str())
                });
            let reason = if over {
                if let Some(s) = self.sessions.get(&sid) {
                    tracing::warn!(client_id = %crate::broker::short(&s.client_id), filter = %crate::broker::short(filter), max = max_subscriptions, "subscribe refused: max_subscriptions reached");
                }
                reason::QUOTA_EXCEEDED
            } else {
                self.subscribe_one(sid, filter, *options, subscription_id, now)
            };
            reasons.push(reason);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.note_meta_changed();
        }
        reasons
    }

    /// True when `filter` (plain or shared) is well-formed and within `max_topic_len` and
    /// `max_topic_levels`.
    fn valid_filter(&self, filter: &str) -> bool {
        let real_filter = match topic::parse_shared(filter) {
            Ok(Some(shared)) => shared.filter,
            Ok(None) if topic::validate_topic_filter(filter).is_ok() => filter,
            _ => return false,
        };
        topic::topic_levels(real_filter) <= self.cfg.max_topic_levels
            && filter.len() <= self.cfg.max_topic_len
    }

    pub(super) fn subscribe_one(
        &mut self,
        sid: SessionId,
        filter: &ByteStr,
        options: SubscriptionOptions,
        subscription_id: Option<NonZeroU32>,
        now: Instant,
    ) -> u8 {
        if !self.valid_filter(filter) {
            return reason::TOPIC_FILTER_INVALID;
        }
        let Ok(shared) = topic::parse_shared(filter) else {
            return reason::TOPIC_FILTER_INVALID;
        };
        if shared.is_some() && options.no_local {
            return reason::TOPIC_FILTER_INVALID;
        }
        let sub = Subscription {
            options,
            id: subscription_id,
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return reason::UNSPECIFIED_ERROR;
        };
        let cost = subscription_cost(filter);
        if !s.subscriptions.contains_key(filter.as_str())
            && self.subscription_bytes + cost > self.cfg.max_subscription_bytes_total
        {
            tracing::warn!(client_id = %crate::broker::short(&s.client_id), filter = %crate::broker::short(filter), total = self.subscription_bytes, max = self.cfg.max_subscription_bytes_total, "subscribe refused: max_subscription_bytes_total reached");
            return reason::QUOTA_EXCEEDED;
        }
        // An owned copy: the filter came from a read buffer it would otherwise pin.
        let existed = s
            .subscriptions
            .insert(ByteStr::from(filter.as_str()), sub)
            .is_some();
        if !existed {
            self.subscription_bytes += cost;
        }
        let is_shared = shared.is_some();
        self.index_subscription(sid, filter, shared, sub);
        if !is_shared {
            let send_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send_retained {
                self.queue_retained(sid, filter, sub, now);
            }
        }
        options.qos as u8
    }

    /// Adds (or updates) `sid`'s subscription in the plain or shared index.
    pub(super) fn index_subscription(
        &mut self,
        sid: SessionId,
        filter: &str,
        shared: Option<SharedFilter<'_>>,
        sub: Subscription,
    ) {
        match shared {
            Some(SharedFilter { group, filter: f }) => {
                let key = ByteStr::from(group);
                if let Some(g) = self.shared.get_mut(f, &key) {
                    if let Some(m) = g.members.iter_mut().find(|(m, _)| *m == sid) {
                        m.1 = sub;
                    } else {
                        g.members.push((sid, sub));
                    }
                } else {
                    let g = SharedGroup {
                        key: Arc::new(SharedKey {
                            filter: ByteStr::from(f),
                            group: key.clone(),
                        }),
                        members: vec![(sid, sub)],
                        next: Cell::new(0),
                    };
                    self.shared.insert(f, key, g);
                }
            }
            None => {
                self.subs.insert(filter, sid, sub);
            }
        }
    }

    /// Removes subscriptions; one UNSUBACK reason per filter.
    pub fn unsubscribe(&mut self, sid: SessionId, filters: &[ByteStr]) -> Vec<u8> {
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in filters {
            let valid = filter.len() <= self.cfg.max_topic_len
                && match topic::parse_shared(filter) {
                    Ok(Some(shared)) => {
                        topic::topic_levels(shared.filter) <= self.cfg.max_topic_levels
                    }
                    Ok(None) => topic::topic_levels(filter) <= self.cfg.max_topic_levels,
                    Err(_) => false,
                };
            if !valid {
                reasons.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let had = self
                .sessions
                .get_mut(&sid)
                .is_some_and(|s| s.subscriptions.remove(filter).is_some());
            if had {
                self.subscription_bytes = self
                    .subscription_bytes
                    .saturating_sub(subscription_cost(filter));
                self.remove_subscription_index(sid, filter);
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.note_meta_changed();
                }
                if let Ok(Some(sf)) = topic::parse_shared(filter) {
                    // What waits in the queue for this group goes to the members that stay.
                    let has_others = self
                        .shared
                        .get(sf.filter, &ByteStr::from(sf.group))
                        .is_some_and(|g| !g.members.is_empty());
                    if has_others {
                        let taken = self.take_shared_queued(sid, |k| {
                            k.filter.as_str() == sf.filter && k.group.as_str() == sf.group
                        });
                        let left = self.redistribute(sid, taken, false, Instant::now());
                        self.counters.dropped_session_discarded += left.len() as u64;
                    }
                }
                reasons.push(reason::SUCCESS);
            } else {
                reasons.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        reasons
    }

    /// The filters `sid` is subscribed to (shared ones as `$share/g/f`).
    pub fn subscription_filters(&self, sid: SessionId) -> Vec<ByteStr> {
        self.sessions
            .get(&sid)
            .map(|s| s.subscriptions.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many subscriptions `sid` holds (for `mqtt.max_subscriptions`).
    pub fn subscription_count(&self, sid: SessionId) -> usize {
        self.sessions.get(&sid).map_or(0, |s| s.subscriptions.len())
    }

    /// The session's subscriptions (for the API).
    pub fn subscriptions_of(&self, client_id: &str) -> Vec<(String, SubscriptionOptions)> {
        let Some(s) = self
            .by_client
            .get(client_id)
            .and_then(|sid| self.sessions.get(sid))
        else {
            return Vec::new();
        };
        let mut v: Vec<_> = s
            .subscriptions
            .iter()
            .map(|(f, sub)| (f.to_string(), sub.options))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// What one subscription counts against `max_subscription_bytes_total`: its filter and the
/// map, trie and store entries that carry it.
pub fn subscription_cost(filter: &str) -> usize {
    filter.len() + 64
}

#[cfg(test)]
#[path = "subscriptions_tests.rs"]
mod tests;
