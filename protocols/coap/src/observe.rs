//! One observation (RFC 7641): the client's token, the Observe sequence numbers of its
//! notifications, and the order in which notifications leave.
//!
//! Owns: 24-bit sequence numbers that only grow (wrapping as RFC 7641 3.4 allows), at most
//! one confirmable notification in flight (4.5.1), and a bounded queue behind it whose
//! overflow drops the oldest and hands it back to be counted (and, for a QoS 1/2 message,
//! acknowledged to its session so it does not block the window). Never builds packets.

use std::collections::VecDeque;

/// The largest Observe value (24 bits).
pub const SEQ_MASK: u32 = 0x00ff_ffff;

/// What [`Observation::offer`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<M> {
    /// Nothing is in flight: send this now.
    SendNow(M),
    /// Queued behind the confirmable notification in flight.
    Queued,
    /// Queued, and the queue was full: this oldest one was dropped.
    Dropped(M),
}

/// The state of one observation.
#[derive(Debug)]
pub struct Observation<M> {
    token: Vec<u8>,
    seq: u32,
    in_flight: Option<u16>,
    queue: VecDeque<M>,
    capacity: usize,
    dropped: u64,
}

impl<M> Observation<M> {
    /// A new observation by `token`, with at most `capacity` notifications queued behind one
    /// in flight.
    pub fn new(token: Vec<u8>, capacity: usize) -> Self {
        Observation {
            token,
            seq: 1,
            in_flight: None,
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// The client's token.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// The Observe value for the next response or notification.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = (self.seq + 1) & SEQ_MASK;
        self.seq
    }

    /// A notification to send: now, or queued behind the one in flight.
    pub fn offer(&mut self, m: M) -> Offer<M> {
        if self.in_flight.is_none() && self.queue.is_empty() {
            return Offer::SendNow(m);
        }
        self.queue.push_back(m);
        if self.queue.len() > self.capacity {
            if let Some(old) = self.queue.pop_front() {
                self.dropped += 1;
                return Offer::Dropped(old);
            }
        }
        Offer::Queued
    }

    /// A confirmable notification went out as message `mid`; the next waits for its ACK.
    pub fn sent_confirmable(&mut self, mid: u16) {
        self.in_flight = Some(mid);
    }

    /// Whether `mid` is the confirmable notification in flight.
    pub fn is_in_flight(&self, mid: u16) -> bool {
        self.in_flight == Some(mid)
    }

    /// The notification in flight was acknowledged (or given up): the next queued one, if
    /// any, is to be sent.
    pub fn settled(&mut self) -> Option<M> {
        self.in_flight = None;
        self.queue.pop_front()
    }

    /// The next queued notification when nothing is in flight (after a non-confirmable one).
    pub fn next_ready(&mut self) -> Option<M> {
        if self.in_flight.is_some() {
            return None;
        }
        self.queue.pop_front()
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Everything still queued (when the observation ends).
    pub fn drain(&mut self) -> impl Iterator<Item = M> + '_ {
        self.in_flight = None;
        self.queue.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_confirmable_in_flight_and_a_bounded_queue_behind_it() {
        let mut o = Observation::new(vec![9], 2);
        assert_eq!(o.offer(1), Offer::SendNow(1));
        o.sent_confirmable(100);
        assert!(o.is_in_flight(100));
        assert_eq!(o.offer(2), Offer::Queued);
        assert_eq!(o.offer(3), Offer::Queued);
        assert_eq!(o.offer(4), Offer::Dropped(2));
        assert_eq!(o.dropped(), 1);
        assert_eq!(o.settled(), Some(3));
        assert_eq!(o.next_ready(), Some(4));
        assert_eq!(o.next_ready(), None);
        assert_eq!(o.offer(5), Offer::SendNow(5));
    }

    #[test]
    fn sequence_numbers_grow_and_wrap_at_24_bits() {
        let mut o: Observation<()> = Observation::new(vec![], 1);
        let a = o.next_seq();
        let b = o.next_seq();
        assert!(b > a);
        o.seq = SEQ_MASK;
        assert_eq!(o.next_seq(), 0);
    }
}
