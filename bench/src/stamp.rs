//! The bench payload header: who sent a message, its sequence number and when.
//!
//! Layout, big-endian, at the start of every payload (the rest is zero padding):
//! `run id u32 | publisher id u32 | sequence u64 | send time u64 (ns since the run's start)`.
//! Owns only this layout; it never reads a clock.

/// Bytes the header takes; the smallest payload the tool can send.
pub(crate) const STAMP_LEN: usize = 24;

/// What a payload header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Random per run, so messages of an earlier run (retained, queued) are never counted.
    pub(crate) run: u32,
    /// Index of the publisher.
    pub(crate) publisher: u32,
    /// 0, 1, 2, ... per publisher.
    pub(crate) seq: u64,
    /// Nanoseconds since the run's shared start instant, taken just before the write.
    pub(crate) sent_ns: u64,
}

impl Stamp {
    /// Writes the header over the first `STAMP_LEN` bytes of `out`.
    ///
    /// Panics if `out` is shorter; callers size payloads to at least `STAMP_LEN`.
    pub(crate) fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.run.to_be_bytes());
        out[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a header; `None` when the payload is too short to hold one.
    pub(crate) fn read(payload: &[u8]) -> Option<Stamp> {
        let head = payload.get(..STAMP_LEN)?;
        let u32_at =
            |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(Stamp {
            run: u32_at(0),
            publisher: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_stamp_reads_back_the_same() {
        let stamp = Stamp {
            run: 0xdead_beef,
            publisher: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = [0u8; 64];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
    }

    #[test]
    fn a_payload_shorter_than_the_header_is_not_a_stamp() {
        assert_eq!(Stamp::read(&[0u8; STAMP_LEN - 1]), None);
    }
}
