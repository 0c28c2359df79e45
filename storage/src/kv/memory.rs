//! [`MemoryStore`]: the key-value stores in memory, for tests and runs without a `data_dir`.
//!
//! Owns nothing durable: everything is gone when it is dropped. It must behave exactly like
//! [`super::SledStore`] otherwise (same ordering, same errors for the same inputs); a proptest in
//! `kv::tests` holds the two to that.

use super::keys;
use super::{
    KvBackend, KvError, PendingState, RetainedStore, SessionStore, StoredMessage, StoredPending,
    StoredSession,
};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Retained messages and sessions in memory (see the module docs).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Topic -> message; a `BTreeMap` so `load_all` comes out in topic byte order like sled's.
    retained: BTreeMap<String, StoredMessage>,
    /// Client id -> session, in client id byte order.
    sessions: BTreeMap<String, StoredSession>,
    /// Client id -> seq -> pending message.
    pending: BTreeMap<String, BTreeMap<u64, StoredPending>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a map half-updated (every update is one
        // map operation), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KvBackend for MemoryStore {
    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn corrupt_records_skipped(&self) -> u64 {
        0
    }
}

impl RetainedStore for MemoryStore {
    fn put(&self, msg: &StoredMessage) -> Result<(), KvError> {
        self.lock().retained.insert(msg.topic.clone(), msg.clone());
        Ok(())
    }

    fn remove(&self, topic: &str) -> Result<(), KvError> {
        self.lock().retained.remove(topic);
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<StoredMessage>, KvError> {
        Ok(self.lock().retained.values().cloned().collect())
    }

    fn len(&self) -> usize {
        self.lock().retained.len()
    }
}

impl SessionStore for MemoryStore {
    fn put_session(&self, s: &StoredSession) -> Result<(), KvError> {
        keys::pending_prefix(&s.client_id)?;
        self.lock().sessions.insert(s.client_id.clone(), s.clone());
        Ok(())
    }

    fn remove_session(&self, client_id: &str) -> Result<(), KvError> {
        keys::pending_prefix(client_id)?;
        let mut inner = self.lock();
        inner.pending.remove(client_id);
        inner.sessions.remove(client_id);
        Ok(())
    }

    fn load_sessions(&self) -> Result<Vec<StoredSession>, KvError> {
        Ok(self.lock().sessions.values().cloned().collect())
    }

    fn push_pending(&self, client_id: &str, p: &StoredPending) -> Result<(), KvError> {
        keys::pending_prefix(client_id)?;
        self.lock()
            .pending
            .entry(client_id.to_owned())
            .or_default()
            .insert(p.seq, p.clone());
        Ok(())
    }

    fn update_pending_state(
        &self,
        client_id: &str,
        seq: u64,
        state: PendingState,
        packet_id: Option<u16>,
    ) -> Result<bool, KvError> {
        keys::pending_prefix(client_id)?;
        let mut inner = self.lock();
        let Some(p) = inner
            .pending
            .get_mut(client_id)
            .and_then(|queue| queue.get_mut(&seq))
        else {
            return Ok(false);
        };
        p.state = state;
        p.packet_id = packet_id;
        Ok(true)
    }

    fn remove_pending(&self, client_id: &str, seq: u64) -> Result<(), KvError> {
        keys::pending_prefix(client_id)?;
        let mut inner = self.lock();
        if let Some(queue) = inner.pending.get_mut(client_id) {
            queue.remove(&seq);
            if queue.is_empty() {
                inner.pending.remove(client_id);
            }
        }
        Ok(())
    }

    fn load_pending(&self, client_id: &str) -> Result<Vec<StoredPending>, KvError> {
        keys::pending_prefix(client_id)?;
        Ok(self
            .lock()
            .pending
            .get(client_id)
            .map(|queue| queue.values().cloned().collect())
            .unwrap_or_default())
    }
}
