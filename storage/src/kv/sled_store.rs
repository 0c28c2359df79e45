//! [`SledStore`]: retained messages and persistent sessions on sled 0.34.
//!
//! Owns one sled database in its own directory, with three trees (`retained`, `sessions`,
//! `pending`, key layout in `keys`), and the durable flush that sled lacks: sled's flush uses
//! `sync_file_range` (spacejam/sled#1452), so [`KvBackend::flush`] follows it with an `fsync` of
//! every file in the directory. It must never unwrap anything read from disk, and never hold the
//! store-and-forward queue (that is the segment log in [`crate::queue`]).

use super::keys::{self, PENDING, RETAINED, SESSIONS};
use super::{
    KvBackend, KvError, PendingState, RetainedStore, SessionStore, StoredMessage, StoredPending,
    StoredSession,
};
use crate::record;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// sled's page cache by default: 4 MiB, sized for boards with 128-512 MiB of RAM that also run
/// the broker. Retained messages and sessions are read once at start, so a small cache costs
/// little; sled's own default (1 GiB) would be most of a board's memory.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 4 * 1024 * 1024;

/// sled's background flush interval by default (sled's own default).
pub const DEFAULT_FLUSH_EVERY_MS: u64 = 500;

/// How [`SledStore::open`] configures sled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// Upper bound of sled's page cache, in bytes ([`DEFAULT_CACHE_CAPACITY_BYTES`]). sled's
    /// accounting is approximate: expect its resident memory to be somewhat above this.
    pub cache_capacity_bytes: u64,
    /// How often sled flushes its log in the background, or `None` to flush only on
    /// [`KvBackend::flush`] and on drop. A background flush makes writes survive a `kill -9`,
    /// not a power cut (`sync_file_range`, spacejam/sled#1452); only [`KvBackend::flush`] does
    /// that. Larger values write the flash less often.
    pub flush_every_ms: Option<u64>,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            flush_every_ms: Some(DEFAULT_FLUSH_EVERY_MS),
        }
    }
}

/// Counters of the durable flushes a [`SledStore`] has done, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Completed calls of [`KvBackend::flush`] (sled flush + fsync of the directory).
    pub durable_flushes: u64,
    /// Files and directories fsynced by those calls, in total.
    pub files_synced: u64,
}

/// Retained messages and persistent sessions in a sled database (see the module docs).
pub struct SledStore {
    /// The database directory; its files are fsynced by `flush`.
    dir: PathBuf,
    /// Kept for the flush of the shared log (all trees write to one log).
    db: sled::Db,
    retained: sled::Tree,
    sessions: sled::Tree,
    pending: sled::Tree,
    /// Number of keys in `retained`, kept here because sled's `Tree::len` scans the tree.
    /// Signed so that a remove racing a put on the same topic cannot wrap it around.
    retained_len: AtomicI64,
    /// Records skipped by `load_*` because they did not decode.
    corrupt: AtomicU64,
    durable_flushes: AtomicU64,
    files_synced: AtomicU64,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .field("retained_len", &self.retained_len)
            .field("corrupt", &self.corrupt)
            .finish_non_exhaustive()
    }
}

/// How long [`SledStore::open`] waits for the directory's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    ///
    /// Fails if another process (or another `SledStore` in this one) has it open: sled locks it.
    pub fn open(dir: impl AsRef<Path>, options: SledOptions) -> Result<Self, KvError> {
        let dir = dir.as_ref().to_path_buf();
        if options.cache_capacity_bytes == 0 {
            return Err(KvError::InvalidOption(
                "cache_capacity_bytes must be above 0",
            ));
        }
        if options.flush_every_ms == Some(0) {
            return Err(KvError::InvalidOption(
                "flush_every_ms must be above 0 (None turns background flushes off)",
            ));
        }
        let config = sled::Config::new()
            .path(&dir)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(options.flush_every_ms)
            .mode(sled::Mode::LowSpace);
        // A store of the same directory that was just dropped may still hold its file lock
        // for a moment (sled's flusher thread lets go of the database last): wait for it,
        // bounded, instead of failing. Another live process holding it fails after the wait.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let retained = db.open_tree(RETAINED)?;
        let sessions = db.open_tree(SESSIONS)?;
        let pending = db.open_tree(PENDING)?;
        // One scan at open; `put`/`remove` keep it current after that.
        let retained_len = i64::try_from(retained.len()).unwrap_or(i64::MAX);
        tracing::debug!(
            dir = %dir.display(),
            cache_capacity_bytes = options.cache_capacity_bytes,
            flush_every_ms = ?options.flush_every_ms,
            retained = retained_len,
            "opened key-value store"
        );
        Ok(Self {
            dir,
            db,
            retained,
            sessions,
            pending,
            retained_len: AtomicI64::new(retained_len),
            corrupt: AtomicU64::new(0),
            durable_flushes: AtomicU64::new(0),
            files_synced: AtomicU64::new(0),
        })
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many durable flushes have completed and how many files they synced.
    pub fn flush_stats(&self) -> FlushStats {
        FlushStats {
            durable_flushes: self.durable_flushes.load(Ordering::Relaxed),
            files_synced: self.files_synced.load(Ordering::Relaxed),
        }
    }

    /// The raw sled trees, for tests that write bytes under a key behind the store's back.
    #[cfg(test)]
    pub(super) fn raw_tree(&self, name: &str) -> &sled::Tree {
        match name {
            RETAINED => &self.retained,
            SESSIONS => &self.sessions,
            _ => &self.pending,
        }
    }

    /// Decodes every record of `iter`; logs, counts and skips the ones that do not decode or
    /// that `check` (key vs. value) rejects.
    fn load<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        iter: sled::Iter,
        check: impl Fn(&[u8], &T) -> Result<(), String>,
    ) -> Result<Vec<T>, KvError> {
        self.load_with(tree, iter, |v| record::decode::<T>(v), check)
    }

    fn load_with<T>(
        &self,
        tree: &'static str,
        iter: sled::Iter,
        decode: impl Fn(&[u8]) -> Result<T, record::RecordError>,
        check: impl Fn(&[u8], &T) -> Result<(), String>,
    ) -> Result<Vec<T>, KvError> {
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item?;
            let outcome = decode(&value)
                .map_err(|e| e.to_string())
                .and_then(|v| check(&key, &v).map(|()| v));
            match outcome {
                Ok(v) => out.push(v),
                Err(reason) => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        tree,
                        key = %keys::describe(tree, &key),
                        %reason,
                        "skipping a stored record that does not decode"
                    );
                }
            }
        }
        Ok(out)
    }
}

fn encode_pending(p: &StoredPending) -> Result<Vec<u8>, KvError> {
    p.encode_record().map_err(|source| KvError::Encode {
        tree: PENDING,
        source,
    })
}

fn encode<T: Serialize>(tree: &'static str, value: &T) -> Result<Vec<u8>, KvError> {
    record::encode(value).map_err(|source| KvError::Encode { tree, source })
}

/// `fsync`s every file under `dir` (sled's `conf`, `db`, snapshots, `blobs/`), then `dir`
/// itself so that files sled created or renamed are in it. Returns how many it synced.
///
/// Files are opened read-only: on Linux `fsync` syncs the inode whatever the descriptor's mode.
/// A file that vanishes meanwhile (sled deleting an old snapshot) is skipped.
fn sync_dir_tree(dir: &Path) -> Result<u64, KvError> {
    let sync_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KvError::Sync { path, source }
    };
    let mut synced = 0;
    for entry in std::fs::read_dir(dir).map_err(sync_err(dir))? {
        let entry = entry.map_err(sync_err(dir))?;
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(sync_err(&path)(e)),
        };
        if file_type.is_dir() {
            synced += sync_dir_tree(&path)?;
            continue;
        }
        match File::open(&path).and_then(|f| f.sync_all()) {
            Ok(()) => synced += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(sync_err(&path)(e)),
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(sync_err(dir))?;
    Ok(synced + 1)
}

impl KvBackend for SledStore {
    /// sled's flush (`sync_file_range`: survives `kill -9`), then `fsync` of every file in the
    /// database directory and of the directory (survives a power cut).
    fn flush(&self) -> Result<(), KvError> {
        self.db.flush()?;
        let synced = sync_dir_tree(&self.dir)?;
        self.files_synced.fetch_add(synced, Ordering::Relaxed);
        self.durable_flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn corrupt_records_skipped(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }
}

impl RetainedStore for SledStore {
    fn put(&self, msg: &StoredMessage) -> Result<(), KvError> {
        let value = encode(RETAINED, msg)?;
        if self.retained.insert(msg.topic.as_bytes(), value)?.is_none() {
            self.retained_len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn remove(&self, topic: &str) -> Result<(), KvError> {
        if self.retained.remove(topic.as_bytes())?.is_some() {
            self.retained_len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<StoredMessage>, KvError> {
        self.load(RETAINED, self.retained.iter(), |key, m: &StoredMessage| {
            if key == m.topic.as_bytes() {
                Ok(())
            } else {
                Err(format!("holds topic {:?}", m.topic))
            }
        })
    }

    fn len(&self) -> usize {
        usize::try_from(self.retained_len.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl SessionStore for SledStore {
    fn put_session(&self, s: &StoredSession) -> Result<(), KvError> {
        keys::pending_prefix(&s.client_id)?;
        let value = s.encode_record().map_err(|source| KvError::Encode {
            tree: SESSIONS,
            source,
        })?;
        self.sessions.insert(s.client_id.as_bytes(), value)?;
        Ok(())
    }

    fn remove_session(&self, client_id: &str) -> Result<(), KvError> {
        // Pending first, then the session: see the trait docs for why this order.
        let prefix = keys::pending_prefix(client_id)?;
        let mut batch = sled::Batch::default();
        for key in self.pending.scan_prefix(&prefix).keys() {
            batch.remove(key?);
        }
        self.pending.apply_batch(batch)?;
        self.sessions.remove(client_id.as_bytes())?;
        Ok(())
    }

    fn load_sessions(&self) -> Result<Vec<StoredSession>, KvError> {
        self.load_with(
            SESSIONS,
            self.sessions.iter(),
            StoredSession::decode_record,
            |key, s: &StoredSession| {
                if key == s.client_id.as_bytes() {
                    Ok(())
                } else {
                    Err(format!("holds client id {:?}", s.client_id))
                }
            },
        )
    }

    fn push_pending(&self, client_id: &str, p: &StoredPending) -> Result<(), KvError> {
        let key = keys::pending_key(client_id, p.seq)?;
        self.pending.insert(key, encode_pending(p)?)?;
        Ok(())
    }

    fn update_pending_state(
        &self,
        client_id: &str,
        seq: u64,
        state: PendingState,
        packet_id: Option<u16>,
    ) -> Result<bool, KvError> {
        let key = keys::pending_key(client_id, seq)?;
        let corrupt = |reason: String| KvError::Corrupt {
            tree: PENDING,
            key: keys::describe(PENDING, &key),
            reason,
        };
        // Compare-and-swap so that a concurrent remove is not undone by this write.
        loop {
            let Some(old) = self.pending.get(&key)? else {
                return Ok(false);
            };
            let mut p = StoredPending::decode_record(&old).map_err(|e| corrupt(e.to_string()))?;
            if p.seq != seq {
                return Err(corrupt(format!("holds seq {}", p.seq)));
            }
            p.state = state;
            p.packet_id = packet_id;
            let new = encode_pending(&p)?;
            if self
                .pending
                .compare_and_swap(&key, Some(&old), Some(new))?
                .is_ok()
            {
                return Ok(true);
            }
        }
    }

    fn remove_pending(&self, client_id: &str, seq: u64) -> Result<(), KvError> {
        self.pending.remove(keys::pending_key(client_id, seq)?)?;
        Ok(())
    }

    fn load_pending(&self, client_id: &str) -> Result<Vec<StoredPending>, KvError> {
        let prefix = keys::pending_prefix(client_id)?;
        let iter = self.pending.scan_prefix(&prefix);
        self.load_with(
            PENDING,
            iter,
            StoredPending::decode_record,
            |key, p: &StoredPending| match keys::pending_seq(&prefix, key) {
                Some(seq) if seq == p.seq => Ok(()),
                Some(_) => Err(format!("holds seq {}", p.seq)),
                None => Err("malformed key".to_owned()),
            },
        )
    }
}

impl Drop for SledStore {
    /// A clean shutdown leaves everything durable: the board may lose power right after.
    fn drop(&mut self) {
        if let Err(e) = KvBackend::flush(self) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "final flush of the key-value store failed");
        }
    }
}
