//! The store-and-forward queue: a durable FIFO of byte records, one per bridge, as an
//! append-only segment log with CRC-checked records, an atomically replaced ack cursor, a byte
//! cap with a drop policy, and group commit.
//!
//! Owns everything between "the gateway hands over a payload" and "the payload is on disk and
//! survives a power cut", and the bookkeeping of what the bridge has had acknowledged. It never
//! interprets payloads (the gateway encodes its messages through [`crate::record`]), never uses
//! tokio (the gateway wakes its tasks through [`GroupOptions::on_durable`]) and never panics on
//! bytes read from disk: a bad record is cut (at the tail) or skipped and counted (elsewhere).
//!
//! # Layout
//!
//! - `segment`: the record framing, one segment file, the recovery scan.
//! - `cursor`: acknowledged-up-to, out-of-order single acks, the `ack` file.
//! - `fifo`: [`SegmentQueue`], the single-threaded queue over both.
//! - `group`: [`GroupCommit`], the thread-safe wrapper whose one flusher thread turns the
//!   appends of many producers into one write + `fdatasync`.
//!
//! # On disk
//!
//! A directory holding segment files `{first_seq:020}.seg` (each up to
//! [`QueueConfig::segment_bytes`]) and an `ack` file. A record is
//! `[len u32 LE][crc32 u32 LE over seq+payload][seq u64 LE][payload]` (`len` counts the payload);
//! sequence numbers start at 1 and increase by one per record, across restarts too.
//!
//! A segment is created at its full size (`set_len`, so sparse): the bytes after its last
//! record read as zeros, and that is where the log (or the segment) ends. A commit writes
//! inside the file's size, so its `fdatasync` need not journal a size change (ext4 journals
//! only the allocation of each new 4 KiB block). Recovery never shrinks a file: it zeroes torn
//! bytes after the valid prefix and appends continue right after the last good record. The
//! apparent size of a segment is always `segment_bytes`; the blocks it uses are those written.
//!
//! # What survives what
//!
//! - A record is durable (survives `kill -9` *and* a power cut) once the [`SegmentQueue::commit`]
//!   that wrote it has returned `Ok`, i.e. its segment was `fdatasync`ed (and the directory,
//!   when the commit created a segment). Records appended but not committed are lost by a crash.
//! - Acknowledgements are durable once the `ack` file has been rewritten (every
//!   [`QueueConfig::ack_persist_every`] acknowledged records, and at every commit). Acks not yet
//!   persisted, and out-of-order single acks that have not become contiguous, are forgotten by a
//!   crash: those records are delivered again. The queue is **at-least-once**: a crash can cause
//!   redelivery, never the loss of a durable unacknowledged record.
//! - Records dropped by [`OnFull::DropOldest`] are counted ([`SegmentQueue::dropped_oldest`]) and
//!   logged; a crash before the drop is persisted may bring some of them back (redelivery).
//!
//! # Bounds
//!
//! - Unacknowledged records (durable and buffered, 16 bytes of framing included) never exceed
//!   [`QueueConfig::max_bytes`]. Disk use is at most `max_bytes` plus one segment of already
//!   acknowledged records at the head plus the batch being written (allocated blocks; each
//!   file's apparent size is a whole segment), because space is reclaimed
//!   a whole segment at a time (a segment file is deleted once every record in it is
//!   acknowledged or dropped, except the newest segment, which keeps the sequence numbers).
//! - Memory: 4 bytes of index per record on disk, the records buffered for the next commit
//!   ([`GroupOptions::max_pending_bytes`] under [`GroupCommit`]), and at most
//!   [`QueueConfig::max_unordered_acks`] out-of-order acks.

mod cursor;
mod fifo;
mod group;
mod segment;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use fifo::SegmentQueue;
pub use group::{GroupCommit, GroupOptions};

/// What to do with an append that would take the queue over [`QueueConfig::max_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Drop the oldest unacknowledged records until the new one fits (EMQX's mqueue behaviour);
    /// drops are counted and logged.
    DropOldest,
    /// Refuse the new record with [`QueueError::Full`]; the device gets a QoS failure reason.
    RejectNew,
}

/// When [`GroupCommit`] makes appended records durable, and what each mode can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// One write + `fdatasync` per append, done by the appending thread before `append`
    /// returns. Loses nothing that `append` returned `Ok` for. Slowest.
    Every,
    /// The flusher thread commits everything pending as soon as it is free, so concurrent
    /// appends share one `fdatasync`. A caller that waits ([`GroupCommit::wait_durable`]) before
    /// acknowledging loses nothing it acknowledged.
    Group,
    /// The flusher commits at most once per interval. Callers that wait for durability lose
    /// nothing they acknowledged (but wait up to the interval); callers that acknowledge right
    /// after `append` can lose up to one interval (plus one commit time) of acknowledged records
    /// on a power cut or `kill -9`.
    Interval(Duration),
}

/// Where and how a queue stores its records.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The queue's own directory; created if missing. One queue per directory.
    pub dir: PathBuf,
    /// Cap on unacknowledged bytes (payload + 16 bytes of framing per record), durable and
    /// buffered together.
    pub max_bytes: u64,
    /// What an append does when the cap is reached.
    pub on_full: OnFull,
    /// Size at which the log rolls over to a new segment file; space is reclaimed a whole
    /// segment at a time, so smaller segments free disk sooner, larger ones mean fewer files.
    pub segment_bytes: u64,
    /// Durability mode, used by [`GroupCommit`]; [`SegmentQueue`] alone writes only on `commit`.
    pub flush: FlushMode,
    /// Persist the ack cursor at least every this many acknowledged records (and at every
    /// commit); more means fewer `fsync`s when draining, and more redelivery after a crash.
    pub ack_persist_every: u64,
    /// Bound on single acks held out of order; beyond it `ack` returns
    /// [`QueueError::TooManyUnorderedAcks`].
    pub max_unordered_acks: usize,
}

/// Default segment size: 16 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Largest accepted segment size (offsets in a segment are `u32`).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

impl QueueConfig {
    /// A config for `dir` with the defaults: 256 MiB cap, drop oldest, 16 MiB segments, group
    /// commit, ack cursor persisted every 1024 acks, 65,536 out-of-order acks.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        QueueConfig {
            dir: dir.into(),
            max_bytes: 256 * 1024 * 1024,
            on_full: OnFull::DropOldest,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            flush: FlushMode::Group,
            ack_persist_every: 1024,
            max_unordered_acks: 65_536,
        }
    }

    fn validate(&self) -> Result<(), QueueError> {
        let bad = |why: String| Err(QueueError::InvalidConfig(why));
        if self.segment_bytes < 4096 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(format!(
                "segment_bytes {} is outside 4096..={MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        if self.max_bytes < 4096 {
            return bad(format!("max_bytes {} is below 4096", self.max_bytes));
        }
        if self.ack_persist_every == 0 {
            return bad("ack_persist_every must be at least 1".into());
        }
        if let FlushMode::Interval(d) = self.flush {
            if d.is_zero() {
                return bad("flush interval must be longer than zero".into());
            }
        }
        Ok(())
    }
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// How many old records [`OnFull::DropOldest`] dropped to make room for this one.
    pub dropped_oldest: u64,
}

/// One record read back from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number, to acknowledge it with.
    pub seq: u64,
    /// The bytes given to `append`.
    pub payload: Vec<u8>,
}

/// A snapshot of a queue's size and counters, for the web UI, `$SYS` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Unacknowledged records.
    pub len: u64,
    /// Their bytes, framing included (what [`QueueConfig::max_bytes`] caps).
    pub bytes: u64,
    /// The oldest unacknowledged record, if any.
    pub first_unacked: Option<u64>,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// Every record at or below this one is durable (or acknowledged).
    pub durable_seq: u64,
    /// Records dropped by [`OnFull::DropOldest`] since open.
    pub dropped_oldest: u64,
    /// Appends refused by [`OnFull::RejectNew`] since open.
    pub rejected: u64,
    /// Records found damaged (at open or on read) and skipped, since open.
    pub corrupt_records_skipped: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Every record at or below this one is acknowledged in the `ack` file: a crash cannot
    /// bring it back (acks above it may be redelivered after a crash).
    pub acks_persisted_through: u64,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The config cannot work (says which value and why).
    #[error("invalid queue config: {0}")]
    InvalidConfig(String),
    /// The disk (or quota) is full; the failed batch is not durable and is retried by the next
    /// commit, and nothing already durable was touched.
    #[error("disk full while trying to {op}")]
    DiskFull {
        /// What the queue was doing.
        op: &'static str,
    },
    /// Any other I/O failure; as with `DiskFull`, a failed commit is retried by the next one.
    #[error("queue I/O failed while trying to {op}: {source}")]
    Io {
        /// What the queue was doing.
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A commit failed for a record a caller was waiting for (the flusher keeps retrying).
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// [`OnFull::RejectNew`] and the record does not fit under `max_bytes`.
    #[error("queue full: {bytes} of {max_bytes} bytes used, record needs {needed}")]
    Full {
        /// Unacknowledged bytes now.
        bytes: u64,
        /// The cap.
        max_bytes: u64,
        /// The framed size of the refused record.
        needed: u64,
    },
    /// The record can never fit: larger than a segment or than `max_bytes`.
    #[error("record of {len} bytes is larger than the queue accepts ({limit} bytes)")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The largest accepted payload.
        limit: u64,
    },
    /// An ack named a sequence number that was never handed out.
    #[error("ack for seq {seq}, but the queue has only handed out up to {}", .next_seq - 1)]
    UnknownSeq {
        /// The sequence number acked.
        seq: u64,
        /// The next sequence number the queue will hand out.
        next_seq: u64,
    },
    /// Too many single acks out of order are held; ack the oldest records first.
    #[error("{0} out-of-order acks are already held; ack the oldest record first")]
    TooManyUnorderedAcks(usize),
    /// A thread panicked while holding the queue lock; the queue must be reopened.
    #[error("queue lock poisoned by a panicked thread")]
    Poisoned,
    /// The group-commit flusher has stopped (shut down or its thread died).
    #[error("queue flusher has stopped")]
    Closed,
}

impl QueueError {
    /// Maps an I/O error, separating a full disk from the rest.
    pub(crate) fn io(op: &'static str, source: io::Error) -> QueueError {
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                QueueError::DiskFull { op }
            }
            _ => QueueError::Io { op, source },
        }
    }

    /// A copy for every waiter of a failed commit (io::Error is not `Clone`).
    pub(crate) fn for_waiter(&self) -> QueueError {
        match self {
            QueueError::DiskFull { op } => QueueError::DiskFull { op },
            other => QueueError::CommitFailed(other.to_string()),
        }
    }
}
