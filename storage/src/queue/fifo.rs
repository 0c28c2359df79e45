//! [`SegmentQueue`]: the single-threaded durable FIFO over the segment files and the cursor.
//!
//! Owns the list of segments, the buffer of records appended since the last commit, the byte
//! cap and the drop policy, recovery at open, and the three-step commit ([`CommitJob`]: plan
//! under the lock, write + fdatasync without it, install under it) that [`super::GroupCommit`]
//! uses to let producers append while a batch is being synced. It never spawns threads and never
//! blocks on anything but its own file I/O.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::cursor::{self, Cursor};
use super::segment::{self, decode_record, encode_record, Segment, HEADER_LEN};
use super::{Appended, OnFull, QueueConfig, QueueError, QueueStats, Record};

/// Records appended since the last successful commit, framed exactly as on disk.
#[derive(Debug)]
struct Pending {
    /// Sequence number of the first buffered record (= durable seq + 1).
    first_seq: u64,
    /// The framed records back to back.
    buf: Vec<u8>,
    /// Where each record starts in `buf`.
    offsets: Vec<usize>,
}

impl Pending {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64
    }

    /// Byte offset of record `seq` in `buf`, or the end for `seq == end_seq()`.
    fn offset_of(&self, seq: u64) -> usize {
        let i = (seq - self.first_seq) as usize;
        self.offsets.get(i).copied().unwrap_or(self.buf.len())
    }
}

/// The durable FIFO queue. See the [module docs](super) for what survives what.
///
/// Single-threaded (`&mut self` for everything that changes it); share it between threads
/// through [`super::GroupCommit`].
#[derive(Debug)]
pub struct SegmentQueue {
    /// As given to `open`, validated.
    cfg: QueueConfig,
    /// Segment files, oldest first; the last one is where commits write.
    segments: VecDeque<Segment>,
    /// Records appended but not yet durable.
    pending: Pending,
    /// How many records at the front of `pending` a [`CommitJob`] is writing right now.
    inflight: usize,
    /// Sequence number the next append gets.
    next_seq: u64,
    /// What is acknowledged, in memory and on disk.
    cursor: Cursor,
    /// Unacknowledged records that exist (holes left by corruption are not records).
    len: u64,
    /// Their framed bytes: what `max_bytes` caps.
    bytes: u64,
    /// Counted for the UI and `$SYS`.
    dropped_oldest: u64,
    /// Counted for the UI and `$SYS`.
    rejected: u64,
    /// Atomic because `read` takes `&self` and counts what it skips.
    corrupt_records_skipped: AtomicU64,
    /// Set by GroupCommit: acks only mark the cursor dirty and the flusher persists it, so no
    /// fsync happens under the queue lock.
    pub(crate) defer_ack_persist: bool,
}

/// Where one run of a commit batch goes.
#[derive(Debug)]
enum Target {
    /// Appended to the current last segment.
    Tail(Arc<fs::File>),
    /// A new segment file starting at `first_seq`.
    New { first_seq: u64, path: PathBuf },
}

/// One contiguous write of a commit batch into one segment.
#[derive(Debug)]
struct Run {
    target: Target,
    /// Where in the file the run starts.
    file_offset: u64,
    /// Which bytes of the batch go there.
    batch_range: std::ops::Range<usize>,
    /// The offset in the file of every record of the run, for the segment index.
    record_offsets: Vec<u32>,
}

/// A planned commit: the bytes to write, where, and the cursor to persist. Built under the
/// queue lock ([`SegmentQueue::prepare_commit`]), run without it ([`CommitJob::run`]), and
/// installed under it again ([`SegmentQueue::complete_commit`]).
#[derive(Debug)]
pub(crate) struct CommitJob {
    dir: PathBuf,
    /// The size a new segment file is preallocated to.
    segment_bytes: u64,
    batch: Vec<u8>,
    runs: Vec<Run>,
    /// Records in the batch.
    count: usize,
    /// Sequence number of the last record in the batch (durable once the job succeeds).
    last_seq: u64,
    /// The cursor value to write to the `ack` file, if it moved since the last write.
    ack: Option<u64>,
}

/// What a successful [`CommitJob::run`] produced.
#[derive(Debug)]
pub(crate) struct CommitDone {
    /// The file opened for each `Target::New` run, in order.
    new_files: Vec<Arc<fs::File>>,
    /// Whether the `ack` file was written.
    ack_written: bool,
}

impl CommitJob {
    /// The highest seq this job makes durable.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Writes and fdatasyncs the batch (and the directory if a segment was created), then the
    /// `ack` file. Takes no lock; only one job may run at a time per queue.
    pub(crate) fn run(&self) -> Result<CommitDone, QueueError> {
        let mut new_files = Vec::new();
        let mut created = false;
        for run in &self.runs {
            let bytes = &self.batch[run.batch_range.clone()];
            let file = match &run.target {
                Target::Tail(f) => Arc::clone(f),
                Target::New { path, .. } => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(path)
                        .map_err(|e| QueueError::io("create a segment file", e))?;
                    created = true;
                    if let Err(e) = segment::preallocate(&f, self.segment_bytes) {
                        self.undo(run);
                        return Err(QueueError::io("preallocate a segment file", e));
                    }
                    let f = Arc::new(f);
                    new_files.push(Arc::clone(&f));
                    f
                }
            };
            let written = file
                .write_all_at(bytes, run.file_offset)
                .and_then(|()| file.sync_data());
            if let Err(e) = written {
                self.undo(run);
                return Err(QueueError::io("write and fdatasync a segment", e));
            }
        }
        if created {
            segment::sync_dir(&self.dir)
                .map_err(|e| QueueError::io("fsync the queue directory", e))?;
        }
        let mut ack_written = false;
        if let Some(seq) = self.ack {
            // The records are durable whatever happens here; a cursor that is not persisted
            // only means redelivery, so this is logged and retried at the next commit.
            match cursor::write_ack_file(&self.dir, seq) {
                Ok(()) => ack_written = true,
                Err(e) => tracing::warn!(error = %e, "queue ack cursor not persisted; will retry"),
            }
        }
        Ok(CommitDone {
            new_files,
            ack_written,
        })
    }

    /// Best effort after a failed write: zero the partial bytes (the file keeps its
    /// preallocated size), remove a half-made segment. Not required for correctness (the retry
    /// rewrites the same bytes at the same offset and recovery zeroes a torn tail), only tidy.
    fn undo(&self, run: &Run) {
        match &run.target {
            Target::Tail(f) => {
                let zeros = vec![0u8; run.batch_range.len()];
                let _ = f.write_all_at(&zeros, run.file_offset);
            }
            Target::New { path, .. } => {
                let _ = fs::remove_file(path);
            }
        }
    }
}

impl SegmentQueue {
    /// Opens (or creates) the queue in `cfg.dir` and recovers it.
    ///
    /// Recovery: every segment is scanned and its records checked (length, CRC, sequence). A
    /// segment is preallocated, so the zeros after its last record are its end. In the last
    /// segment the first record that does not check out and everything after it is a write
    /// that was never made durable: those bytes are zeroed (the file keeps its size) and
    /// appends continue at that offset (logged). In an earlier segment it is corruption: the rest of that segment is skipped,
    /// and the records lost are logged and counted in `corrupt_records_skipped`. Then the ack
    /// cursor is read; with [`OnFull::DropOldest`], records over `max_bytes` (a smaller cap than
    /// last time) are dropped. After `open` returns, everything found is durable.
    pub fn open(cfg: QueueConfig) -> Result<SegmentQueue, QueueError> {
        cfg.validate()?;
        fs::create_dir_all(&cfg.dir)
            .map_err(|e| QueueError::io("create the queue directory", e))?;
        let mut firsts = Vec::new();
        let entries =
            fs::read_dir(&cfg.dir).map_err(|e| QueueError::io("list the queue directory", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| QueueError::io("list the queue directory", e))?;
            let name = entry.file_name();
            if let Some(first) = name.to_str().and_then(segment::parse_segment_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut corrupt = 0u64;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment::segment_path(&cfg.dir, first);
            let scanned =
                segment::scan(&path, first).map_err(|e| QueueError::io("read a segment", e))?;
            let mut seg = scanned.segment;
            let next_first = firsts.get(i + 1).copied();
            if let Some(next) = next_first {
                if seg.end_seq() > next {
                    // Overlap can only come from tampering; trust the newer file's name.
                    tracing::warn!(path = %path.display(), next, "segment overlaps the next one; cutting its index");
                    let keep = next.saturating_sub(first) as usize;
                    if let Some(&cut) = seg.offsets.get(keep) {
                        seg.len = u64::from(cut);
                    }
                    seg.offsets.truncate(keep);
                }
                let lost = next.saturating_sub(seg.end_seq());
                if scanned.stopped.is_some() || lost > 0 {
                    let bad = scanned.stopped;
                    corrupt += lost;
                    tracing::error!(
                        path = %path.display(),
                        reason = ?bad,
                        at_offset = seg.len,
                        records_lost = lost,
                        "corrupt record in a queue segment; skipping to the next segment"
                    );
                }
            } else if scanned.stopped.is_some() {
                // Zero the torn bytes rather than leave them: a later append of records the
                // same size could otherwise line up with stale records behind it and bring back
                // records that were never committed. Cutting the file back and growing it again
                // zeroes everything past the valid prefix without writing the zeros.
                seg.file
                    .set_len(seg.len)
                    .and_then(|()| segment::preallocate(&seg.file, cfg.segment_bytes))
                    .and_then(|()| seg.file.sync_data())
                    .map_err(|e| QueueError::io("zero a torn segment tail", e))?;
                tracing::warn!(
                    path = %path.display(),
                    at_offset = seg.len,
                    reason = ?scanned.stopped,
                    "cut a torn write at the end of the queue log"
                );
            } else if scanned.file_len < cfg.segment_bytes {
                // A tail segment written before segments were preallocated.
                segment::preallocate(&seg.file, cfg.segment_bytes)
                    .and_then(|()| seg.file.sync_data())
                    .map_err(|e| QueueError::io("preallocate a segment file", e))?;
            }
            segments.push_back(seg);
        }

        let persisted = cursor::read_ack_file(&cfg.dir)
            .map_err(|e| QueueError::io("read the ack cursor", e))?;
        let log_end = segments.back().map_or(1, |s| s.end_seq());
        let next_seq = log_end.max(persisted.saturating_add(1)).max(1);
        // An empty last segment whose name is not the next seq could never be appended to.
        if let Some(last) = segments.back() {
            if last.offsets.is_empty() && last.first_seq != next_seq {
                if let Some(last) = segments.pop_back() {
                    fs::remove_file(&last.path)
                        .map_err(|e| QueueError::io("remove an empty segment", e))?;
                }
            }
        }

        let mut q = SegmentQueue {
            segments,
            pending: Pending {
                first_seq: next_seq,
                buf: Vec::new(),
                offsets: Vec::new(),
            },
            inflight: 0,
            next_seq,
            cursor: Cursor {
                acked_through: persisted.min(next_seq - 1),
                persisted,
                ..Cursor::default()
            },
            len: 0,
            bytes: 0,
            dropped_oldest: 0,
            rejected: 0,
            corrupt_records_skipped: AtomicU64::new(corrupt),
            defer_ack_persist: false,
            cfg,
        };
        q.normalize_cursor();
        let (len, bytes) = q.span(q.cursor.acked_through + 1, q.next_seq);
        q.len = len;
        q.bytes = bytes;
        q.reap();
        if q.cfg.on_full == OnFull::DropOldest && q.bytes > q.cfg.max_bytes {
            let dropped = q.drop_until_fits(0);
            tracing::warn!(
                dropped,
                max_bytes = q.cfg.max_bytes,
                "queue over its byte cap at open; dropped the oldest records"
            );
            q.reap();
        }
        tracing::info!(
            dir = %q.cfg.dir.display(),
            segments = q.segments.len(),
            unacked = q.len,
            bytes = q.bytes,
            next_seq = q.next_seq,
            "queue opened"
        );
        Ok(q)
    }

    /// Appends a record to the in-memory buffer and returns its sequence number. **Not
    /// durable** until a later [`commit`](Self::commit) returns `Ok` (or, under
    /// [`super::GroupCommit`], the flusher has committed it).
    ///
    /// When the record does not fit under `max_bytes`: [`OnFull::RejectNew`] returns
    /// [`QueueError::Full`] (counted in `rejected`, nothing changes); [`OnFull::DropOldest`]
    /// acknowledges the oldest records until it fits (counted, logged, and whole segments that
    /// became fully acknowledged are deleted). A record larger than a segment or than
    /// `max_bytes` is [`QueueError::TooLarge`].
    pub fn append(&mut self, payload: &[u8]) -> Result<Appended, QueueError> {
        let needed = (HEADER_LEN + payload.len()) as u64;
        let limit = self.cfg.segment_bytes.min(self.cfg.max_bytes);
        if needed > limit {
            return Err(QueueError::TooLarge {
                len: payload.len(),
                limit: limit - HEADER_LEN as u64,
            });
        }
        let mut dropped = 0;
        if self.bytes + needed > self.cfg.max_bytes {
            match self.cfg.on_full {
                OnFull::RejectNew => {
                    self.rejected += 1;
                    return Err(QueueError::Full {
                        bytes: self.bytes,
                        max_bytes: self.cfg.max_bytes,
                        needed,
                    });
                }
                OnFull::DropOldest => {
                    dropped = self.drop_until_fits(needed);
                    self.reap();
                }
            }
        }
        let seq = self.next_seq;
        self.pending.offsets.push(self.pending.buf.len());
        encode_record(&mut self.pending.buf, seq, payload);
        self.next_seq += 1;
        self.len += 1;
        self.bytes += needed;
        if dropped > 0 {
            self.persist_acks_if_due()?;
        }
        Ok(Appended {
            seq,
            dropped_oldest: dropped,
        })
    }

    /// Acknowledges oldest records until `self.bytes + needed <= max_bytes`; returns how many.
    fn drop_until_fits(&mut self, needed: u64) -> u64 {
        let mut dropped = 0;
        while self.bytes + needed > self.cfg.max_bytes {
            let Some(oldest) = self.first_unacked() else {
                break;
            };
            self.advance_to(oldest);
            dropped += 1;
        }
        if dropped > 0 {
            let before = self.dropped_oldest;
            self.dropped_oldest += dropped;
            // One line per 10,000 drops (and the first), so a full queue does not flood the log.
            if before == 0 || before / 10_000 != self.dropped_oldest / 10_000 {
                tracing::warn!(
                    dir = %self.cfg.dir.display(),
                    dropped_total = self.dropped_oldest,
                    max_bytes = self.cfg.max_bytes,
                    "queue full: dropping the oldest records (on_full = drop_oldest)"
                );
            }
        }
        dropped
    }

    /// Writes every buffered record to the log and `fdatasync`s it (and fsyncs the directory
    /// when a segment was created), then persists the ack cursor if it moved. Returns the
    /// highest durable seq: when this returns `Ok`, every record appended before the call
    /// survives a power cut.
    ///
    /// On error ([`QueueError::DiskFull`], [`QueueError::Io`]) nothing of the batch counts as
    /// durable, the buffered records stay buffered, and the next `commit` writes them again at
    /// the same place. A failure to persist the ack cursor is not an error (the records are
    /// durable); it is logged and retried, and can only cause redelivery.
    pub fn commit(&mut self) -> Result<u64, QueueError> {
        match self.prepare_commit(true) {
            Some(job) => {
                let done = job.run();
                self.complete_commit(&job, done)
            }
            None => Ok(self.durable_seq()),
        }
    }

    /// Plans a commit of everything buffered (and the cursor if it moved). `None` when there
    /// is nothing to do or a job is already running.
    /// `with_acks`: persist the cursor if it moved at all (else only if it is due).
    pub(crate) fn prepare_commit(&mut self, with_acks: bool) -> Option<CommitJob> {
        if self.inflight > 0 {
            return None;
        }
        let ack = (self.cursor.dirty() && (with_acks || self.ack_persist_due()))
            .then_some(self.cursor.acked_through);
        let count = self.pending.offsets.len();
        if count == 0 && ack.is_none() {
            return None;
        }
        let mut runs: Vec<Run> = Vec::new();
        // The current write position: (end seq, length, records) of the segment being filled.
        let mut cur = self
            .segments
            .back()
            .map(|s| (s.end_seq(), s.len, s.offsets.len()));
        for (i, seq) in (self.pending.first_seq..).take(count).enumerate() {
            let start = self.pending.offsets[i];
            let end = self.pending.offset_of(seq + 1);
            let size = (end - start) as u64;
            let fits = matches!(cur, Some((cur_end, len, n))
                if cur_end == seq && (n == 0 || len + size <= self.cfg.segment_bytes));
            if !fits {
                runs.push(Run {
                    target: Target::New {
                        first_seq: seq,
                        path: segment::segment_path(&self.cfg.dir, seq),
                    },
                    file_offset: 0,
                    batch_range: start..start,
                    record_offsets: Vec::new(),
                });
                cur = Some((seq, 0, 0));
            } else if runs.is_empty() {
                if let (Some(tail), Some((_, len, _))) = (self.segments.back(), cur) {
                    runs.push(Run {
                        target: Target::Tail(Arc::clone(&tail.file)),
                        file_offset: len,
                        batch_range: start..start,
                        record_offsets: Vec::new(),
                    });
                }
            }
            if let (Some(run), Some((cur_end, len, n))) = (runs.last_mut(), cur.as_mut()) {
                // Segments are capped at MAX_SEGMENT_BYTES (< 4 GiB), so `len` fits a u32.
                run.record_offsets.push(*len as u32);
                run.batch_range.end = end;
                *len += size;
                *n += 1;
                *cur_end += 1;
            }
        }
        self.inflight = count;
        Some(CommitJob {
            dir: self.cfg.dir.clone(),
            segment_bytes: self.cfg.segment_bytes,
            batch: self.pending.buf[..self
                .pending
                .offset_of(self.pending.first_seq + count as u64)]
                .to_vec(),
            runs,
            count,
            last_seq: self.pending.first_seq + count as u64 - 1,
            ack,
        })
    }

    /// Installs the result of `job.run()`: on success the batch moves from the buffer into the
    /// segment index and the durable seq advances; on failure nothing moves (the batch stays
    /// buffered for the next commit) and the error is returned.
    pub(crate) fn complete_commit(
        &mut self,
        job: &CommitJob,
        done: Result<CommitDone, QueueError>,
    ) -> Result<u64, QueueError> {
        self.inflight = 0;
        let done = done?;
        let mut new_files = done.new_files.into_iter();
        for run in &job.runs {
            match &run.target {
                Target::Tail(_) => {
                    if let Some(tail) = self.segments.back_mut() {
                        tail.offsets.extend_from_slice(&run.record_offsets);
                        tail.len = run.file_offset + run.batch_range.len() as u64;
                    }
                }
                Target::New { first_seq, path } => {
                    let Some(file) = new_files.next() else {
                        continue;
                    };
                    self.segments.push_back(Segment {
                        first_seq: *first_seq,
                        offsets: run.record_offsets.clone(),
                        len: run.batch_range.len() as u64,
                        file,
                        path: path.clone(),
                    });
                }
            }
        }
        if job.count > 0 {
            let cut = job.batch.len();
            self.pending.buf.drain(..cut);
            self.pending.offsets.drain(..job.count);
            for o in &mut self.pending.offsets {
                *o -= cut;
            }
            self.pending.first_seq += job.count as u64;
        }
        if let (Some(seq), true) = (job.ack, done.ack_written) {
            self.cursor.persisted = seq;
            if self.cursor.acked_through == seq {
                self.cursor.unpersisted_acks = 0;
            }
        }
        // A segment the cursor passed while it was the tail can go now that it is not.
        self.reap();
        Ok(self.durable_seq())
    }

    /// Reads up to `max_records` unacknowledged records with seq `>= from_seq`, oldest first,
    /// stopping before `max_bytes` of payload (but always returning at least one record if
    /// there is one). Includes buffered records that are not yet durable: a reader that sends
    /// them upstream before they are durable may see them again after a crash (never miss
    /// them). Acknowledged records, including out-of-order single acks, are skipped. A record
    /// that fails its CRC on the way back from disk is skipped, counted and logged.
    pub fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let mut out: Vec<Record> = Vec::new();
        let mut payload_bytes = 0usize;
        let mut seq = from_seq.max(self.cursor.acked_through + 1);
        while seq < self.next_seq && out.len() < max_records {
            if seq >= self.pending.first_seq {
                let p = &self.pending;
                while seq < p.end_seq() {
                    let start = p.offset_of(seq);
                    let end = p.offset_of(seq + 1);
                    if !self.cursor.is_acked(seq) {
                        let size = end - start - HEADER_LEN;
                        if out.len() >= max_records
                            || (!out.is_empty() && payload_bytes + size > max_bytes)
                        {
                            return Ok(out);
                        }
                        payload_bytes += size;
                        out.push(Record {
                            seq,
                            payload: p.buf[start + HEADER_LEN..end].to_vec(),
                        });
                    }
                    seq += 1;
                }
                break;
            }
            let idx = self.segments.partition_point(|s| s.end_seq() <= seq);
            let Some(seg) = self.segments.get(idx) else {
                seq = self.pending.first_seq;
                continue;
            };
            if seg.first_seq > seq {
                seq = seg.first_seq;
                continue;
            }
            // Plan the run within this segment against the limits, then read it in one go.
            let mut end = seq;
            let mut planned = out.len();
            let mut planned_bytes = payload_bytes;
            while end < seg.end_seq() && planned < max_records {
                if !self.cursor.is_acked(end) {
                    let size = (seg.offset_of(end + 1) - seg.offset_of(end)) as usize - HEADER_LEN;
                    if planned > 0 && planned_bytes + size > max_bytes {
                        break;
                    }
                    planned += 1;
                    planned_bytes += size;
                }
                end += 1;
            }
            if end > seq {
                let base = seg.offset_of(seq);
                let data =
                    segment::read_range(&seg.file, base, (seg.offset_of(end) - base) as usize)
                        .map_err(|e| QueueError::io("read a segment", e))?;
                for s in seq..end {
                    if self.cursor.is_acked(s) {
                        continue;
                    }
                    let lo = (seg.offset_of(s) - base) as usize;
                    let hi = (seg.offset_of(s + 1) - base) as usize;
                    match data.get(lo..hi).map(|rec| (rec, decode_record(rec, s))) {
                        Some((rec, Ok((range, _)))) => {
                            payload_bytes += range.len();
                            out.push(Record {
                                seq: s,
                                payload: rec[range].to_vec(),
                            });
                        }
                        _ => {
                            self.corrupt_records_skipped.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                path = %seg.path.display(),
                                seq = s,
                                "queue record damaged on disk since it was written; skipping it"
                            );
                        }
                    }
                }
            }
            if end < seg.end_seq() {
                // A limit stopped the run.
                break;
            }
            seq = end;
        }
        Ok(out)
    }

    /// Acknowledges every record up to and including `seq`. Takes effect in memory at once
    /// (reads skip them, `len`/`bytes` drop, fully acknowledged segments other than the newest
    /// are deleted); it is persisted to the `ack` file once `ack_persist_every` records have
    /// been acknowledged since the last write, or at the next commit. Until then a crash
    /// redelivers them (at-least-once), it never loses anything. Acking an already
    /// acknowledged seq does nothing; a seq never handed out is [`QueueError::UnknownSeq`].
    /// An `Err` from persisting the cursor leaves the ack done in memory.
    pub fn ack_up_to(&mut self, seq: u64) -> Result<(), QueueError> {
        self.check_seq(seq)?;
        if seq <= self.cursor.acked_through {
            return Ok(());
        }
        self.advance_to(seq);
        self.reap();
        self.persist_acks_if_due()
    }

    /// Acknowledges one record. If it is the oldest unacknowledged one, the cursor moves (past
    /// any single acks that are now contiguous); otherwise it is held in a set (bounded by
    /// `max_unordered_acks`, [`QueueError::TooManyUnorderedAcks`] beyond it) until the gap
    /// before it closes. Held acks are never persisted: after a crash those records are
    /// delivered again. Persistence otherwise as for [`ack_up_to`](Self::ack_up_to).
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        self.check_seq(seq)?;
        if self.cursor.is_acked(seq) || !self.exists(seq) {
            return Ok(());
        }
        if self.first_unacked() == Some(seq) {
            self.advance_to(seq);
            self.reap();
            return self.persist_acks_if_due();
        }
        if self.cursor.singles.len() >= self.cfg.max_unordered_acks {
            return Err(QueueError::TooManyUnorderedAcks(self.cursor.singles.len()));
        }
        let size = self.record_size(seq);
        self.cursor.singles.insert(seq);
        self.len -= 1;
        self.bytes -= size;
        Ok(())
    }

    /// Unacknowledged records (durable and buffered).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when every record is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of unacknowledged records, 16 bytes of framing each included: what `max_bytes`
    /// caps.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The oldest unacknowledged record's seq, `None` when there is none.
    pub fn first_unacked(&self) -> Option<u64> {
        let mut s = self.cursor.acked_through + 1;
        loop {
            let e = self.next_existing(s)?;
            if !self.cursor.singles.contains(&e) {
                return Some(e);
            }
            s = e + 1;
        }
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every record at or below this seq has been committed (or was acknowledged before it
    /// ever was, or lost to corruption): it is what a producer compares its seq against.
    pub fn durable_seq(&self) -> u64 {
        self.pending.first_seq - 1
    }

    /// Records dropped by [`OnFull::DropOldest`] since open.
    pub fn dropped_oldest(&self) -> u64 {
        self.dropped_oldest
    }

    /// Appends refused by [`OnFull::RejectNew`] since open.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Records found damaged and skipped since open (at recovery or on read).
    pub fn corrupt_records_skipped(&self) -> u64 {
        self.corrupt_records_skipped.load(Ordering::Relaxed)
    }

    /// Bytes of buffered records not yet durable (the commit backlog).
    pub fn pending_bytes(&self) -> usize {
        self.pending.buf.len()
    }

    /// The config the queue was opened with.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// Size and counters in one snapshot.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            len: self.len,
            bytes: self.bytes,
            first_unacked: self.first_unacked(),
            next_seq: self.next_seq,
            durable_seq: self.durable_seq(),
            dropped_oldest: self.dropped_oldest,
            rejected: self.rejected,
            corrupt_records_skipped: self.corrupt_records_skipped(),
            segments: self.segments.len(),
            acks_persisted_through: self.cursor.persisted,
        }
    }

    /// True when the cursor moved enough since its last write to be persisted now.
    pub(crate) fn ack_persist_due(&self) -> bool {
        self.cursor.dirty() && self.cursor.unpersisted_acks >= self.cfg.ack_persist_every
    }

    /// True when the in-memory cursor is ahead of the `ack` file.
    pub(crate) fn acks_dirty(&self) -> bool {
        self.cursor.dirty()
    }

    fn persist_acks_if_due(&mut self) -> Result<(), QueueError> {
        if self.defer_ack_persist || !self.ack_persist_due() || self.inflight > 0 {
            return Ok(());
        }
        let seq = self.cursor.acked_through;
        cursor::write_ack_file(&self.cfg.dir, seq)
            .map_err(|e| QueueError::io("persist the ack cursor", e))?;
        self.cursor.persisted = seq;
        self.cursor.unpersisted_acks = 0;
        Ok(())
    }

    fn check_seq(&self, seq: u64) -> Result<(), QueueError> {
        if seq >= self.next_seq || seq == 0 {
            return Err(QueueError::UnknownSeq {
                seq,
                next_seq: self.next_seq,
            });
        }
        Ok(())
    }

    /// Moves the cursor to `seq` (> acked_through), updating len/bytes for every record passed
    /// that was not already single-acked, then past any now-contiguous single acks and holes.
    fn advance_to(&mut self, seq: u64) {
        let from = self.cursor.acked_through + 1;
        let (count, bytes) = self.span(from, seq + 1);
        let above = self.cursor.singles.split_off(&(seq + 1));
        let passed = std::mem::replace(&mut self.cursor.singles, above);
        let (mut already_n, mut already_b) = (0u64, 0u64);
        for s in passed {
            already_n += 1;
            already_b += self.record_size(s);
        }
        self.len -= count - already_n;
        self.bytes -= bytes - already_b;
        self.cursor.unpersisted_acks += seq + 1 - from;
        self.cursor.acked_through = seq;
        self.normalize_cursor();
    }

    /// Moves the cursor over single acks that became contiguous and over holes.
    fn normalize_cursor(&mut self) {
        loop {
            let n = self.cursor.acked_through + 1;
            if self.cursor.singles.remove(&n) {
                self.cursor.acked_through = n;
                continue;
            }
            match self.next_existing(n) {
                Some(e) if e > n => self.cursor.acked_through = e - 1,
                _ => break,
            }
        }
    }

    /// The smallest seq `>= seq` that is a record (durable or buffered).
    fn next_existing(&self, seq: u64) -> Option<u64> {
        let idx = self.segments.partition_point(|s| s.end_seq() <= seq);
        if let Some(seg) = self.segments.get(idx) {
            return Some(seq.max(seg.first_seq));
        }
        let s = seq.max(self.pending.first_seq);
        (s < self.pending.end_seq()).then_some(s)
    }

    fn exists(&self, seq: u64) -> bool {
        self.next_existing(seq) == Some(seq)
    }

    /// Framed size of an existing record.
    fn record_size(&self, seq: u64) -> u64 {
        self.span(seq, seq + 1).1
    }

    /// (records, framed bytes) that exist in `lo..hi`.
    fn span(&self, lo: u64, hi: u64) -> (u64, u64) {
        let (mut n, mut b) = (0, 0);
        let start = self.segments.partition_point(|s| s.end_seq() <= lo);
        for seg in self.segments.range(start..) {
            if seg.first_seq >= hi {
                break;
            }
            let a = lo.max(seg.first_seq);
            let z = hi.min(seg.end_seq());
            if a < z {
                n += z - a;
                b += seg.offset_of(z) - seg.offset_of(a);
            }
        }
        let p = &self.pending;
        let a = lo.max(p.first_seq);
        let z = hi.min(p.end_seq());
        if a < z {
            n += z - a;
            b += (p.offset_of(z) - p.offset_of(a)) as u64;
        }
        (n, b)
    }

    /// Deletes segments, oldest first, whose every record is acknowledged or dropped. The
    /// newest segment stays (it carries the sequence numbers across a restart). A file that
    /// cannot be deleted is logged; it is found again, and deleted, at the next open.
    fn reap(&mut self) {
        while self.segments.len() > 1 {
            let Some(head) = self.segments.front() else {
                break;
            };
            if head.end_seq() > self.cursor.acked_through + 1 {
                break;
            }
            if let Some(head) = self.segments.pop_front() {
                if let Err(e) = fs::remove_file(&head.path) {
                    tracing::warn!(path = %head.path.display(), error = %e, "could not delete an acknowledged queue segment");
                }
            }
        }
    }
}
