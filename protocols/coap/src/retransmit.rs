//! Confirmable messages the server sends (notifications, separate responses, LwM2M
//! requests), retransmitted until acknowledged (RFC 7252 4.2): the first timeout is random in
//! [ACK_TIMEOUT, ACK_TIMEOUT x ACK_RANDOM_FACTOR], doubled after each retransmission, and the
//! message is given up after MAX_RETRANSMIT retransmissions.
//!
//! Owns the outstanding messages of one peer, keyed by message id, with a caller's tag each
//! (what the message was for). Bounded by `capacity`: [`Retransmitter::start`] refuses beyond
//! it, and the caller queues or drops. Never sends: [`Retransmitter::due`] says what to send.

use crate::params::{ACK_RANDOM_FACTOR, ACK_TIMEOUT, MAX_RETRANSMIT};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Outstanding<T> {
    bytes: Vec<u8>,
    tag: T,
    retransmissions: u32,
    timeout: Duration,
    next_at: Instant,
}

/// What [`Retransmitter::due`] asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Due<T> {
    /// Send these bytes again.
    Resend(Vec<u8>),
    /// No acknowledgement after the last retransmission: the exchange failed.
    GaveUp(T),
}

/// The outstanding confirmable messages of one peer.
#[derive(Debug)]
pub struct Retransmitter<T> {
    outstanding: HashMap<u16, Outstanding<T>>,
    capacity: usize,
    max_retransmit: u32,
}

/// Refused by [`Retransmitter::start`]: `capacity` messages are outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many confirmable messages outstanding")]
pub struct Full;

impl<T> Retransmitter<T> {
    /// At most `capacity` outstanding messages, RFC 7252's MAX_RETRANSMIT.
    pub fn new(capacity: usize) -> Self {
        Retransmitter {
            outstanding: HashMap::new(),
            capacity: capacity.max(1),
            max_retransmit: MAX_RETRANSMIT,
        }
    }

    /// The same with another retransmission count (tests, constrained links).
    pub fn with_max_retransmit(mut self, max_retransmit: u32) -> Self {
        self.max_retransmit = max_retransmit;
        self
    }

    /// Tracks the confirmable message `mid` just sent as `bytes`. `random` in [0, 1) picks the
    /// first timeout within the RFC's range.
    pub fn start(
        &mut self,
        mid: u16,
        bytes: Vec<u8>,
        tag: T,
        random: f64,
        now: Instant,
    ) -> Result<(), Full> {
        if self.outstanding.len() >= self.capacity && !self.outstanding.contains_key(&mid) {
            return Err(Full);
        }
        let spread = (ACK_RANDOM_FACTOR - 1.0) * random.clamp(0.0, 1.0);
        let timeout = ACK_TIMEOUT.mul_f64(1.0 + spread);
        self.outstanding.insert(
            mid,
            Outstanding {
                bytes,
                tag,
                retransmissions: 0,
                timeout,
                next_at: now + timeout,
            },
        );
        Ok(())
    }

    /// An ACK (or RST) for `mid` arrived: the exchange ends; its tag, if it was outstanding.
    pub fn settle(&mut self, mid: u16) -> Option<T> {
        let tag = self.outstanding.remove(&mid).map(|o| o.tag);
        self.release_when_idle();
        tag
    }

    /// What is due at `now`: retransmissions (their timers doubled) and give-ups (removed).
    pub fn due(&mut self, now: Instant) -> Vec<Due<T>> {
        let mut out = Vec::new();
        let mut gave_up = Vec::new();
        for (mid, o) in self.outstanding.iter_mut() {
            if o.next_at > now {
                continue;
            }
            if o.retransmissions >= self.max_retransmit {
                gave_up.push(*mid);
                continue;
            }
            o.retransmissions += 1;
            o.timeout *= 2;
            o.next_at = now + o.timeout;
            out.push(Due::Resend(o.bytes.clone()));
        }
        for mid in gave_up {
            if let Some(o) = self.outstanding.remove(&mid) {
                out.push(Due::GaveUp(o.tag));
            }
        }
        self.release_when_idle();
        out
    }

    /// Nothing outstanding: the table gives its memory back (an idle peer keeps none).
    fn release_when_idle(&mut self) {
        if self.outstanding.is_empty() && self.outstanding.capacity() > 0 {
            self.outstanding = HashMap::new();
        }
    }

    /// When [`Retransmitter::due`] next has something, if anything is outstanding.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.outstanding.values().map(|o| o.next_at).min()
    }

    /// Messages outstanding.
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    /// True when nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Whether `mid` is outstanding.
    pub fn contains(&self, mid: u16) -> bool {
        self.outstanding.contains_key(&mid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_resent_with_doubling_timeouts_then_given_up() {
        let t0 = Instant::now();
        let mut r = Retransmitter::new(4);
        r.start(7, vec![1, 2], "notify", 0.0, t0).unwrap();
        assert!(r.due(t0 + Duration::from_millis(1999)).is_empty());
        let mut at = t0;
        let mut gaps = Vec::new();
        let mut resent = 0;
        loop {
            let next = r.next_deadline().unwrap();
            gaps.push(next - at);
            at = next;
            match r.due(at).pop() {
                Some(Due::Resend(b)) => {
                    assert_eq!(b, vec![1, 2]);
                    resent += 1;
                }
                Some(Due::GaveUp(tag)) => {
                    assert_eq!(tag, "notify");
                    break;
                }
                None => panic!("nothing due at its deadline"),
            }
        }
        assert_eq!(resent, 4);
        let secs: Vec<u64> = gaps.iter().map(|g| g.as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32]);
        assert!(r.is_empty());
    }

    #[test]
    fn the_first_timeout_is_randomized_within_the_rfc_range() {
        let t0 = Instant::now();
        let mut r = Retransmitter::new(4);
        r.start(1, vec![], (), 0.999, t0).unwrap();
        let first = r.next_deadline().unwrap() - t0;
        assert!(first > Duration::from_millis(2990) && first <= Duration::from_secs(3));
    }

    #[test]
    fn an_ack_settles_and_capacity_is_enforced() {
        let t0 = Instant::now();
        let mut r = Retransmitter::new(2);
        r.start(1, vec![], 'a', 0.5, t0).unwrap();
        r.start(2, vec![], 'b', 0.5, t0).unwrap();
        assert_eq!(r.start(3, vec![], 'c', 0.5, t0), Err(Full));
        assert_eq!(r.settle(1), Some('a'));
        assert_eq!(r.settle(1), None);
        r.start(3, vec![], 'c', 0.5, t0).unwrap();
        assert_eq!(r.len(), 2);
    }
}
