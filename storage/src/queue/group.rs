//! [`GroupCommit`]: many producer threads, one flusher, one `fdatasync` per batch.
//!
//! Owns the lock around a [`SegmentQueue`], the flusher thread, the durable watermark that
//! producers wait on, and the back-pressure on the commit buffer. The queue lock is never held
//! across a write or an `fdatasync`: the flusher plans a batch under the lock, writes and syncs
//! it without the lock (producers keep appending, readers keep reading), then installs it. It
//! never uses tokio: the gateway learns about progress through [`GroupOptions::on_durable`].

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fifo::{CommitDone, CommitJob};
use super::segment::HEADER_LEN;
use super::{Appended, FlushMode, QueueError, QueueStats, Record, SegmentQueue};

/// Tuning for [`GroupCommit`].
pub struct GroupOptions {
    /// Cap on bytes appended but not yet durable. An append that would go over it **blocks**
    /// until the flusher has made room (back-pressure reaches the devices through the
    /// gateway's inflight windows instead of memory growing). One record is always accepted
    /// into an empty buffer, whatever its size.
    pub max_pending_bytes: usize,
    /// Called by the flusher thread (or, under [`FlushMode::Every`], the appending thread)
    /// after each successful commit with the new durable seq, outside the queue lock. Keep it
    /// short and non-blocking: the gateway uses it to wake its tokio tasks (e.g.
    /// `watch::Sender::send_replace`).
    pub on_durable: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl Default for GroupOptions {
    /// 8 MiB of pending records, no hook.
    fn default() -> Self {
        GroupOptions {
            max_pending_bytes: 8 * 1024 * 1024,
            on_durable: None,
        }
    }
}

impl fmt::Debug for GroupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupOptions")
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("on_durable", &self.on_durable.is_some())
            .finish()
    }
}

/// A [`SegmentQueue`] shared by many threads, made durable by one flusher thread according to
/// the queue's [`FlushMode`]. See [`FlushMode`] for what each mode can lose on a power cut.
///
/// A producer calls [`append`](Self::append), then either [`wait_durable`](Self::wait_durable)
/// (blocking) or keeps the returned seq as a ticket and compares it with
/// [`durable_seq`](Self::durable_seq) when [`GroupOptions::on_durable`] fires (non-blocking).
/// Dropping it stops the flusher after a last commit of everything pending.
pub struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("mode", &self.shared.mode)
            .field("max_pending_bytes", &self.shared.max_pending_bytes)
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    /// The flusher waits here for work.
    work: Condvar,
    /// Waiters for durability and appenders blocked on the pending cap wait here.
    progress: Condvar,
    on_durable: Option<Box<dyn Fn(u64) + Send + Sync>>,
    mode: FlushMode,
    max_pending_bytes: usize,
}

struct State {
    queue: SegmentQueue,
    /// Highest durable seq, as published to waiters.
    durable: u64,
    /// The last commit failed: the highest seq in its batch and the error for its waiters.
    /// Cleared by the next successful commit.
    failed: Option<(u64, QueueError)>,
    /// A caller asked for a commit now, interval or not.
    flush_requested: bool,
    /// Set by drop/shutdown; the flusher commits what is pending and exits.
    shutdown: bool,
    /// False once the flusher thread has exited.
    flusher_alive: bool,
    /// The error of the flusher's final commit, for `shutdown`.
    final_error: Option<QueueError>,
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, State>, QueueError> {
        self.state.lock().map_err(|_| QueueError::Poisoned)
    }

    /// Installs a commit's result, wakes everyone waiting on progress, and returns the new
    /// durable seq to report through the hook (after the lock is released).
    fn finish(
        &self,
        st: &mut State,
        job: &CommitJob,
        done: Result<CommitDone, QueueError>,
    ) -> Result<Option<u64>, QueueError> {
        let res = st.queue.complete_commit(job, done);
        self.progress.notify_all();
        match res {
            Ok(d) => {
                st.failed = None;
                let moved = d > st.durable;
                st.durable = d;
                Ok(moved.then_some(d))
            }
            Err(e) => {
                tracing::error!(error = %e, up_to = job.last_seq(), "queue commit failed; will retry");
                st.failed = Some((job.last_seq(), e.for_waiter()));
                Err(e)
            }
        }
    }

    fn notify_durable(&self, d: Option<u64>) {
        if let (Some(d), Some(hook)) = (d, &self.on_durable) {
            hook(d);
        }
    }
}

impl GroupCommit {
    /// Takes over `queue` and starts the flusher thread (named `queue-flush`).
    pub fn start(mut queue: SegmentQueue, opts: GroupOptions) -> Result<GroupCommit, QueueError> {
        queue.defer_ack_persist = true;
        let mode = queue.config().flush;
        let durable = queue.durable_seq();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue,
                durable,
                failed: None,
                flush_requested: false,
                shutdown: false,
                flusher_alive: true,
                final_error: None,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            on_durable: opts.on_durable,
            mode,
            max_pending_bytes: opts.max_pending_bytes,
        });
        let for_thread = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("queue-flush".into())
            .spawn(move || flusher(&for_thread))
            .map_err(|e| QueueError::io("start the queue flusher thread", e))?;
        Ok(GroupCommit {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Appends a record and returns its seq.
    ///
    /// Durability by mode: under [`FlushMode::Every`] the record is durable when this returns
    /// `Ok` (this thread committed it, or waited for the commit that holds it). Under
    /// [`FlushMode::Group`] and [`FlushMode::Interval`] it is only buffered: wait with
    /// [`wait_durable`](Self::wait_durable) (or watch the hook) before acknowledging it to a
    /// device, or accept losing it on a crash.
    ///
    /// Blocks while the buffer of not-yet-durable records is at
    /// [`GroupOptions::max_pending_bytes`]. Errors as [`SegmentQueue::append`], plus
    /// [`QueueError::Closed`] after shutdown, and under `Every` the commit's error.
    pub fn append(&self, payload: &[u8]) -> Result<Appended, QueueError> {
        let sh = &*self.shared;
        let needed = payload.len() + HEADER_LEN;
        let mut st = sh.lock()?;
        loop {
            if st.shutdown {
                return Err(QueueError::Closed);
            }
            let pending = st.queue.pending_bytes();
            if pending == 0 || pending + needed <= sh.max_pending_bytes {
                break;
            }
            sh.work.notify_one();
            st = sh.progress.wait(st).map_err(|_| QueueError::Poisoned)?;
        }
        let a = st.queue.append(payload)?;
        if sh.mode != FlushMode::Every {
            drop(st);
            sh.work.notify_one();
            return Ok(a);
        }
        // Every: commit now on this thread, or wait for the commit in flight and then commit.
        loop {
            if st.durable >= a.seq {
                return Ok(a);
            }
            if let Some((up_to, e)) = &st.failed {
                if a.seq <= *up_to {
                    return Err(e.for_waiter());
                }
            }
            match st.queue.prepare_commit(false) {
                Some(job) => {
                    drop(st);
                    let done = job.run();
                    st = sh.lock()?;
                    let res = sh.finish(&mut st, &job, done);
                    drop(st);
                    sh.notify_durable(res?);
                    st = sh.lock()?;
                }
                None => st = sh.progress.wait(st).map_err(|_| QueueError::Poisoned)?,
            }
        }
    }

    /// Blocks until every record up to `seq` is durable; returns the durable seq. Under
    /// [`FlushMode::Interval`] that can take up to the interval. If the commit holding `seq`
    /// fails, returns that error ([`QueueError::DiskFull`] or [`QueueError::CommitFailed`]):
    /// the record stays buffered and the flusher keeps retrying, so a caller that answers the
    /// device with a failure and gets the message again produces a duplicate, never a loss.
    pub fn wait_durable(&self, seq: u64) -> Result<u64, QueueError> {
        let sh = &*self.shared;
        let mut st = sh.lock()?;
        if seq >= st.queue.next_seq() {
            return Err(QueueError::UnknownSeq {
                seq,
                next_seq: st.queue.next_seq(),
            });
        }
        loop {
            if st.durable >= seq {
                return Ok(st.durable);
            }
            if let Some((up_to, e)) = &st.failed {
                if seq <= *up_to {
                    return Err(e.for_waiter());
                }
            }
            if !st.flusher_alive {
                return Err(QueueError::Closed);
            }
            st = sh.progress.wait(st).map_err(|_| QueueError::Poisoned)?;
        }
    }

    /// [`append`](Self::append) then [`wait_durable`](Self::wait_durable): returns when the
    /// record survives a power cut, whatever the mode.
    pub fn append_durable(&self, payload: &[u8]) -> Result<Appended, QueueError> {
        let a = self.append(payload)?;
        self.wait_durable(a.seq)?;
        Ok(a)
    }

    /// Asks the flusher to commit now (ignoring the interval) and waits until everything
    /// appended before the call is durable.
    pub fn flush(&self) -> Result<u64, QueueError> {
        let last = {
            let mut st = self.shared.lock()?;
            st.flush_requested = true;
            st.queue.next_seq() - 1
        };
        self.shared.work.notify_one();
        self.wait_durable(last)
    }

    /// Every record at or below this seq is durable. Never blocks on I/O.
    pub fn durable_seq(&self) -> Result<u64, QueueError> {
        Ok(self.shared.lock()?.durable)
    }

    /// As [`SegmentQueue::read`]; holds the queue lock for the read (page-cache reads in
    /// practice, as the bridge reads what was just written).
    pub fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        self.shared
            .lock()?
            .queue
            .read(from_seq, max_records, max_bytes)
    }

    /// As [`SegmentQueue::ack`]; the cursor is persisted by the flusher (every
    /// `ack_persist_every` acks, and at shutdown), never under the lock.
    pub fn ack(&self, seq: u64) -> Result<(), QueueError> {
        let due = {
            let mut st = self.shared.lock()?;
            st.queue.ack(seq)?;
            st.queue.ack_persist_due()
        };
        if due {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// As [`SegmentQueue::ack_up_to`]; persisted as for [`ack`](Self::ack).
    pub fn ack_up_to(&self, seq: u64) -> Result<(), QueueError> {
        let due = {
            let mut st = self.shared.lock()?;
            st.queue.ack_up_to(seq)?;
            st.queue.ack_persist_due()
        };
        if due {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Size and counters in one snapshot.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        Ok(self.shared.lock()?.queue.stats())
    }

    /// Stops the flusher after a last commit of everything pending (and of the ack cursor);
    /// returns that commit's error if it failed (those records are then not durable).
    pub fn shutdown(mut self) -> Result<(), QueueError> {
        self.stop();
        match self.shared.lock()?.final_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        if let Ok(mut st) = self.shared.lock() {
            st.shutdown = true;
        }
        self.shared.work.notify_all();
        self.shared.progress.notify_all();
        if let Some(handle) = self.flusher.take() {
            if handle.join().is_err() {
                tracing::error!("queue flusher thread panicked");
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The flusher thread: waits for work, plans a batch, writes + syncs it without the lock,
/// installs it, wakes waiters, calls the hook; backs off after a failure and retries.
fn flusher(sh: &Shared) {
    let mut last_commit: Option<Instant> = None;
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<Instant> = None;
    loop {
        let Ok(mut st) = sh.lock() else {
            return;
        };
        // Wait until there is something to do and the mode allows doing it now.
        let shutting_down = loop {
            if st.shutdown {
                break true;
            }
            let has_work = st.queue.pending_bytes() > 0
                || st.queue.ack_persist_due()
                || (st.flush_requested && st.queue.acks_dirty());
            if !has_work {
                st = match sh.work.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
                continue;
            }
            let mut hold = Duration::ZERO;
            if !st.flush_requested {
                if let Some(t) = retry_at {
                    hold = t.saturating_duration_since(Instant::now());
                }
                if let (FlushMode::Interval(d), Some(t)) = (sh.mode, last_commit) {
                    hold = hold.max(d.saturating_sub(t.elapsed()));
                }
            }
            if hold.is_zero() {
                break false;
            }
            st = match sh.work.wait_timeout(st, hold) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        };
        let with_acks = shutting_down || st.flush_requested;
        st.flush_requested = false;
        let Some(job) = st.queue.prepare_commit(with_acks) else {
            if shutting_down {
                st.flusher_alive = false;
                sh.progress.notify_all();
                return;
            }
            // Only an Every-mode appender's commit is in flight; it will wake us.
            if let Ok(g) = sh.work.wait_timeout(st, Duration::from_millis(10)) {
                drop(g);
            }
            continue;
        };
        drop(st);
        let done = job.run();
        last_commit = Some(Instant::now());
        let Ok(mut st) = sh.lock() else {
            return;
        };
        let res = sh.finish(&mut st, &job, done);
        match &res {
            Ok(_) => {
                backoff = Duration::ZERO;
                retry_at = None;
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                retry_at = Some(Instant::now() + backoff);
                if shutting_down {
                    st.final_error = Some(e.for_waiter());
                }
            }
        }
        if shutting_down {
            st.flusher_alive = false;
            sh.progress.notify_all();
        }
        drop(st);
        if let Ok(d) = res {
            sh.notify_durable(d);
        }
        if shutting_down {
            return;
        }
    }
}
