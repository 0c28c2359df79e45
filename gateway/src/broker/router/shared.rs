//! Shared subscriptions (`$share/{group}/{filter}`, `$queue/{filter}`): picking the one member
//! that gets a message, and handing a leaving member's messages to the others.
//!
//! Never hands a QoS 2 message that was already sent to another member (MQTT-4.8.2-5).

use super::*;

impl Router {
    /// Hands deliveries that came through a shared subscription to another member of their
    /// group (a connected one first; with `connected_only`, only a connected one). Returns
    /// those that found nobody, in order.
    pub(super) fn redistribute(
        &mut self,
        from: SessionId,
        deliveries: Vec<Delivery>,
        connected_only: bool,
        now: Instant,
    ) -> Vec<Delivery> {
        let Router {
            cfg,
            sessions,
            shared,
            wake,
            counters,
            ..
        } = self;
        let mut left = Vec::new();
        for d in deliveries {
            let target = d.shared.as_ref().and_then(|key| {
                let group = shared.get(&key.filter, &key.group)?;
                other_member(sessions, group, from, connected_only)
            });
            let Some((sid, sub)) = target else {
                left.push(d);
                continue;
            };
            let Some(s) = sessions.get_mut(&sid) else {
                left.push(d);
                continue;
            };
            let mut moved = Delivery::live(&d.message, &sub);
            moved.shared = d.shared.clone();
            tracing::debug!(client_id = %s.client_id, topic = %d.message.topic, "shared subscription: message handed to another member");
            let mut offline_copy = None;
            // Already acknowledged to its publisher, who cannot be held back any more: a full
            // member takes it over its limit (up to the headroom) rather than drop one.
            if enqueue(cfg, counters, wake, s, moved, &mut offline_copy, true, now) != Queued::No {
                counters.shared_redispatched += 1;
            }
        }
        left
    }

    /// Takes the queued deliveries of `sid` that came through a shared group where `take`
    /// says so (journaling their removal).
    pub(super) fn take_shared_queued(
        &mut self,
        sid: SessionId,
        take: impl Fn(&SharedKey) -> bool,
    ) -> Vec<Delivery> {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Vec::new();
        };
        if !s.mqueue.iter().any(|d| d.shared.is_some()) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(s.mqueue.len());
        for d in std::mem::take(&mut s.mqueue) {
            if d.shared.as_deref().is_some_and(&take) {
                taken.push(d);
            } else {
                kept.push_back(d);
            }
        }
        s.mqueue = kept;
        for d in &taken {
            s.note_removed(d);
        }
        taken
    }
}

/// Picks the member of a shared group that gets `msg`: connected members only; when none is
/// connected, a member whose session persists (so the message waits in its queue rather than
/// being lost).
pub(super) fn pick_member(
    cfg: &RouterConfig,
    sessions: &SessionMap<Box<Session>>,
    group: &SharedGroup,
    msg: &Message,
    rng: &mut u64,
) -> Option<(SessionId, Subscription)> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let connected = |sid: &SessionId| sessions.get(sid).is_some_and(|s| s.is_connected());
    let start = match cfg.shared_strategy {
        SharedStrategy::RoundRobin => {
            let i = group.next.get() % n;
            group.next.set(i + 1);
            i
        }
        SharedStrategy::Random => {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng % n as u64) as usize
        }
        SharedStrategy::HashClientId => {
            let publisher = msg
                .publisher
                .and_then(|p| sessions.get(&p))
                .map_or("", |s| s.client_id.as_str());
            (fnv1a(publisher.as_bytes()) % n as u64) as usize
        }
    };
    let chosen = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| connected(&group.members[i].0))
        .unwrap_or(start);
    if cfg.shared_strategy == SharedStrategy::RoundRobin {
        // Continue after the member that got it, so skipping an offline one does not give
        // its share to its neighbour.
        group.next.set(chosen + 1);
    }
    group.members.get(chosen).copied()
}

/// A member of `group` other than `not`: a connected one first, else (unless
/// `connected_only`) any whose session exists.
pub(super) fn other_member(
    sessions: &SessionMap<Box<Session>>,
    group: &SharedGroup,
    not: SessionId,
    connected_only: bool,
) -> Option<(SessionId, Subscription)> {
    let others = || group.members.iter().filter(|(sid, _)| *sid != not);
    others()
        .find(|(sid, _)| sessions.get(sid).is_some_and(|s| s.is_connected()))
        .or_else(|| {
            (!connected_only)
                .then(|| others().find(|(sid, _)| sessions.contains_key(sid)))
                .flatten()
        })
        .copied()
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
