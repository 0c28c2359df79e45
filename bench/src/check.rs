//! What a subscriber checks about the messages it receives: order, gaps, duplicates and latency.
//!
//! Owns the per-publisher sequence bookkeeping and the latency histogram of one subscriber.
//! Loss is only known at the end (`StreamCheck::unique` against what the publisher says it
//! sent), because a gap may still be filled by a late message. It never touches a socket.

use crate::stamp::Stamp;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Highest latency the histogram holds, in microseconds (100 s); larger values are clamped.
const MAX_LATENCY_US: u64 = 100_000_000;

/// The sequence state of one (publisher, topic) stream as seen by one subscriber.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamCheck {
    /// One past the highest sequence number seen.
    next: u64,
    /// Distinct sequence numbers seen.
    pub(crate) unique: u64,
    /// Messages whose sequence number had been seen before.
    pub(crate) duplicates: u64,
    /// Messages that arrived after a message with a higher sequence number (they filled a gap).
    pub(crate) reordered: u64,
    /// Gaps not filled yet: start -> end (exclusive). Empty while everything is in order, so
    /// the common case costs one comparison.
    missing: BTreeMap<u64, u64>,
}

impl StreamCheck {
    /// Records one received sequence number.
    pub(crate) fn record(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            self.unique += 1;
        } else if seq > self.next {
            self.missing.insert(self.next, seq);
            self.next = seq + 1;
            self.unique += 1;
        } else {
            // Below the high-water mark: either it fills a gap or it is a duplicate.
            let gap = self
                .missing
                .range(..=seq)
                .next_back()
                .map(|(&start, &end)| (start, end));
            match gap {
                Some((start, end)) if seq < end => {
                    self.missing.remove(&start);
                    if start < seq {
                        self.missing.insert(start, seq);
                    }
                    if seq + 1 < end {
                        self.missing.insert(seq + 1, end);
                    }
                    self.unique += 1;
                    self.reordered += 1;
                }
                _ => self.duplicates += 1,
            }
        }
    }
}

/// Everything one subscriber learned.
#[derive(Debug)]
pub(crate) struct ReceiverCheck {
    /// Run id of valid stamps.
    run: u32,
    /// One stream per publisher, indexed by publisher id.
    pub(crate) streams: Vec<StreamCheck>,
    /// End-to-end latency, microseconds.
    pub(crate) latency: Histogram<u64>,
    /// PUBLISH packets received, valid or not, duplicates included.
    pub(crate) received: u64,
    /// PUBLISH packets that were not ours (no stamp, other run, unknown publisher).
    pub(crate) foreign: u64,
}

impl ReceiverCheck {
    /// A check for `publishers` streams of run `run`.
    pub(crate) fn new(run: u32, publishers: u32) -> ReceiverCheck {
        ReceiverCheck {
            run,
            streams: vec![StreamCheck::default(); publishers as usize],
            latency: new_histogram(),
            received: 0,
            foreign: 0,
        }
    }

    /// Records one received payload; with `now_ns` (same clock as the stamps) also its latency.
    pub(crate) fn record(&mut self, payload: &[u8], now_ns: Option<u64>) {
        self.received += 1;
        let stamp = match Stamp::read(payload) {
            Some(s) if s.run == self.run => s,
            _ => {
                self.foreign += 1;
                return;
            }
        };
        let Some(stream) = self.streams.get_mut(stamp.publisher as usize) else {
            self.foreign += 1;
            return;
        };
        stream.record(stamp.seq);
        if let Some(now_ns) = now_ns {
            let us = now_ns.saturating_sub(stamp.sent_ns) / 1_000;
            self.latency.saturating_record(us.min(MAX_LATENCY_US));
        }
    }
}

/// An empty latency histogram: 1 us .. 100 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seqs: &[u64]) -> StreamCheck {
        let mut c = StreamCheck::default();
        for &s in seqs {
            c.record(s);
        }
        c
    }

    #[test]
    fn an_in_order_stream_has_no_gaps_duplicates_or_reorders() {
        let c = check(&[0, 1, 2, 3]);
        assert_eq!((c.unique, c.duplicates, c.reordered), (4, 0, 0));
        assert!(c.missing.is_empty());
    }

    #[test]
    fn a_late_message_that_fills_a_gap_counts_as_reordered_not_lost() {
        let c = check(&[0, 2, 3, 1]);
        assert_eq!((c.unique, c.duplicates, c.reordered), (4, 0, 1));
        assert!(c.missing.is_empty());
    }

    #[test]
    fn a_repeated_message_counts_as_duplicate() {
        let c = check(&[0, 1, 1, 2, 0]);
        assert_eq!((c.unique, c.duplicates, c.reordered), (3, 2, 0));
    }

    #[test]
    fn a_gap_never_filled_stays_missing() {
        let c = check(&[0, 5, 3]);
        assert_eq!((c.unique, c.reordered), (3, 1));
        let gaps: Vec<_> = c.missing.iter().map(|(&s, &e)| (s, e)).collect();
        assert_eq!(gaps, vec![(1, 3), (4, 5)]);
    }

    #[test]
    fn a_duplicate_inside_a_filled_gap_is_still_a_duplicate() {
        let c = check(&[0, 4, 2, 2]);
        assert_eq!((c.unique, c.duplicates, c.reordered), (3, 1, 1));
    }

    #[test]
    fn foreign_payloads_are_counted_apart() {
        let mut r = ReceiverCheck::new(9, 2);
        let mut buf = [0u8; 32];
        Stamp {
            run: 9,
            publisher: 1,
            seq: 0,
            sent_ns: 1_000,
        }
        .write(&mut buf);
        r.record(&buf, Some(51_000));
        Stamp {
            run: 8,
            publisher: 1,
            seq: 1,
            sent_ns: 1_000,
        }
        .write(&mut buf);
        r.record(&buf, Some(2_000));
        Stamp {
            run: 9,
            publisher: 2,
            seq: 0,
            sent_ns: 1_000,
        }
        .write(&mut buf);
        r.record(&buf, Some(2_000));
        r.record(b"short", None);
        assert_eq!((r.received, r.foreign), (4, 3));
        assert_eq!(r.streams[1].unique, 1);
        assert_eq!(r.latency.max(), 50);
    }
}
