//! Per-client inbound rate limits as token buckets (EMQX's `rate,burst`), sans-IO.
//!
//! Owns only the arithmetic: the caller passes the current time in, charges each inbound
//! PUBLISH, and asks until when to pause. It never reads a clock, sleeps or touches a socket;
//! the connection turns a pause into "stop reading until a timer fires" (back-pressure, as
//! EMQX does), so nothing is ever dropped here.
//!
//! Call order: [`InboundLimiter::resume_at`] before decoding each packet (a `Some` means stop
//! and wait until then), [`InboundLimiter::charge_publish`] after decoding a PUBLISH. A packet
//! is charged whole even when it costs more than the bucket holds: the bucket goes into debt
//! and the next packet waits until it is paid back, so a packet larger than the burst still
//! passes and the long-run rate holds.

use crate::config::RateLimit;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst`, starting full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens held: what a quiet client may send at once.
    burst: f64,
    /// Tokens held now; negative while in debt after an expensive packet.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

/// Rounding slack so that a timer firing exactly at `ready_at` finds the bucket ready.
const EPSILON: f64 = 1e-6;

impl TokenBucket {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        let burst = limit.burst.get() as f64;
        TokenBucket {
            rate: limit.rate.get() as f64,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last update (a caller's clock reading raced) adds nothing.
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
    }

    /// Takes `cost` tokens, going into debt when the bucket holds fewer.
    pub fn take(&mut self, cost: u64, now: Instant) {
        self.refill(now);
        self.tokens -= cost as f64;
    }

    /// `None` when the bucket holds at least one token, else when it will.
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        let missing = 1.0 - self.tokens;
        if missing <= EPSILON {
            return None;
        }
        // Whole microseconds, rounded up but forgiving float noise of a nanosecond.
        let micros = ((missing / self.rate).min(86_400.0 * 365.0) * 1e6 - 1e-3).ceil();
        let wait = Duration::from_micros(micros.max(1.0) as u64);
        Some(self.updated + wait)
    }
}

/// The inbound limits of one client: a message bucket, a byte bucket, or both.
#[derive(Debug, Clone)]
pub struct InboundLimiter {
    /// PUBLISH packets per second (`mqtt.messages_rate`).
    messages: Option<TokenBucket>,
    /// PUBLISH bytes (whole packets) per second (`mqtt.bytes_rate`).
    bytes: Option<TokenBucket>,
}

impl InboundLimiter {
    /// The limiter for these limits, or `None` when neither is configured (the connection
    /// then carries nothing for them).
    pub fn new(
        messages: Option<RateLimit>,
        bytes: Option<RateLimit>,
        now: Instant,
    ) -> Option<InboundLimiter> {
        if messages.is_none() && bytes.is_none() {
            return None;
        }
        Some(InboundLimiter {
            messages: messages.map(|l| TokenBucket::new(l, now)),
            bytes: bytes.map(|l| TokenBucket::new(l, now)),
        })
    }

    /// Charges one inbound PUBLISH of `len` bytes on the wire.
    pub fn charge_publish(&mut self, len: usize, now: Instant) {
        if let Some(b) = &mut self.messages {
            b.take(1, now);
        }
        if let Some(b) = &mut self.bytes {
            b.take(len as u64, now);
        }
    }

    /// `None` when the next packet may be read, else when it may (the later of the buckets).
    pub fn resume_at(&mut self, now: Instant) -> Option<Instant> {
        let m = self.messages.as_mut().and_then(|b| b.ready_at(now));
        let b = self.bytes.as_mut().and_then(|b| b.ready_at(now));
        m.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU64;

    fn limit(rate: u64, burst: u64) -> RateLimit {
        RateLimit {
            rate: NonZeroU64::new(rate).unwrap(),
            burst: NonZeroU64::new(burst).unwrap(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_waits_one_token_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(100, 10), t0);
        for _ in 0..10 {
            assert_eq!(b.ready_at(t0), None);
            b.take(1, t0);
        }
        // Empty: one token takes 10ms at 100/s.
        assert_eq!(b.ready_at(t0), Some(t0 + ms(10)));
        assert_eq!(b.ready_at(t0 + ms(10)), None);
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(100, 5), t0);
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.ready_at(later), None);
            b.take(1, later);
        }
        assert!(b.ready_at(later).is_some());
    }

    #[test]
    fn a_packet_larger_than_the_burst_passes_and_is_paid_back_as_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(1000, 100), t0);
        b.take(1100, t0);
        // 1000 tokens of debt plus the one needed: just over a second at 1000/s.
        assert_eq!(b.ready_at(t0), Some(t0 + ms(1001)));
        assert!(b.ready_at(t0 + ms(1000)).is_some());
        assert_eq!(b.ready_at(t0 + ms(1001)), None);
    }

    #[test]
    fn a_clock_reading_from_the_past_adds_no_tokens() {
        let t0 = Instant::now();
        let t1 = t0 + ms(50);
        let mut b = TokenBucket::new(limit(10, 1), t0);
        b.take(1, t1);
        assert_eq!(b.ready_at(t0), Some(t1 + ms(100)));
    }

    #[test]
    fn the_long_run_rate_is_the_configured_rate() {
        // Reading as soon as allowed for 10 s at 100/s with burst 100 admits 100 + 1000.
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(Some(limit(100, 100)), None, t0).unwrap();
        let end = t0 + Duration::from_secs(10);
        let mut now = t0;
        let mut admitted = 0;
        loop {
            if let Some(at) = l.resume_at(now) {
                now = at;
            }
            if now > end {
                break;
            }
            l.charge_publish(10, now);
            admitted += 1;
        }
        assert!((1099..=1101).contains(&admitted), "{admitted}");
    }

    #[test]
    fn the_limiter_waits_for_the_slower_of_its_buckets() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(Some(limit(100, 1)), Some(limit(1000, 1000)), t0).unwrap();
        l.charge_publish(2000, t0);
        // Messages are ready after 10ms, bytes only after 1001ms.
        assert_eq!(l.resume_at(t0), Some(t0 + ms(1001)));
        assert_eq!(l.resume_at(t0 + ms(1001)), None);
    }

    #[test]
    fn no_limits_configured_means_no_limiter() {
        assert!(InboundLimiter::new(None, None, Instant::now()).is_none());
    }
}
