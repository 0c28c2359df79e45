//! Retained messages and persistent sessions: small key-value state that must survive a restart.
//!
//! Owns the plain structs the gateway stores ([`StoredMessage`], [`StoredSession`],
//! [`StoredPending`]), the two traits the gateway programs against ([`RetainedStore`],
//! [`SessionStore`], both on top of [`KvBackend`]), and their two engines: [`SledStore`] on disk
//! and [`MemoryStore`] for tests and runs without a `data_dir`. Every value goes through
//! [`crate::record`] (format-version byte + postcard).
//!
//! It must never depend on the gateway or the MQTT codec (the structs are plain serde data, the
//! gateway converts), never enforce MQTT policy (`max_retained`, session expiry, "an empty
//! retained payload deletes": the caller decides, this module stores what it is given), and never
//! panic on bytes read from disk: a record that does not decode is logged with its key, counted
//! ([`KvBackend::corrupt_records_skipped`]) and skipped.
//!
//! # Durability
//!
//! A write is in sled's log (and the page cache) when its call returns; it survives a `kill -9`
//! once sled has flushed it, which sled does in the background every
//! [`SledOptions::flush_every_ms`]. sled's own flush uses `sync_file_range`, which does **not**
//! make data durable against a power cut (spacejam/sled#1452). That weaker guarantee is accepted
//! for retained messages and session metadata: losing the last changes before a power cut costs a
//! retained message or a subscription made just before it, never an acknowledged QoS 1/2 message
//! in the store-and-forward path, which lives in the [`crate::queue`] segment log with its own
//! fsync. When the caller needs more, [`KvBackend::flush`] on a [`SledStore`] calls sled's flush
//! and then `fsync`s every file in the database directory and the directory itself: after it
//! returns `Ok`, everything written before the call survives a power cut.
//!
//! # Bounds
//!
//! The number of retained messages is bounded by the caller (`max_retained`), which reads
//! [`RetainedStore::len`] (constant time). Pending messages per session are bounded by the caller
//! (`max_mqueue_len` + `max_inflight`). sled's page cache is bounded by
//! [`SledOptions::cache_capacity_bytes`] (4 MiB by default, sized for small boards).

mod keys;
mod memory;
mod sled_store;

pub use memory::MemoryStore;
pub use sled_store::{
    FlushStats, SledOptions, SledStore, DEFAULT_CACHE_CAPACITY_BYTES, DEFAULT_FLUSH_EVERY_MS,
};

use crate::record::RecordError;
use serde::{Deserialize, Serialize};

/// A published message as stored: retained, or waiting in a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The topic it was published to (a topic name, never a filter).
    pub topic: String,
    /// The application payload, byte for byte.
    pub payload: Vec<u8>,
    /// The QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// The RETAIN flag as published; kept so `retain_as_published` can be honoured on delivery.
    pub retain: bool,
    /// The MQTT 5 properties that travel with the message to subscribers.
    pub properties: StoredProperties,
}

/// The MQTT 5 publish properties that must survive a restart with the message.
///
/// Topic alias and subscription identifiers are deliberately absent: they belong to one
/// connection or one subscription, not to the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProperties {
    /// Payload format indicator (0 = bytes, 1 = UTF-8), when the publisher sent one.
    pub payload_format_indicator: Option<u8>,
    /// Absolute expiry time (Unix ms), so the remaining interval is right after a restart.
    pub message_expiry_at_unix_ms: Option<u64>,
    /// Response topic for request/response.
    pub response_topic: Option<String>,
    /// Correlation data for request/response.
    pub correlation_data: Option<Vec<u8>>,
    /// User properties in the order they were sent (duplicates allowed, as MQTT 5 says).
    pub user_properties: Vec<(String, String)>,
    /// Content type, when the publisher sent one.
    pub content_type: Option<String>,
}

/// A persistent session's metadata: who it is, when it expires, what it subscribed to.
///
/// Its pending messages are stored apart ([`StoredPending`]), so that queueing one message does
/// not rewrite the whole session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The client identifier the session belongs to (the key).
    pub client_id: String,
    /// The MQTT protocol level the client last connected with (4 = 3.1.1, 5 = 5.0).
    pub protocol_level: u8,
    /// Session expiry interval in seconds, counted from `disconnected_at_unix_ms`.
    pub expiry_secs: u32,
    /// When the client disconnected (Unix ms); `None` while connected, or when it was connected
    /// at a crash, in which case the caller counts the expiry from the restart.
    pub disconnected_at_unix_ms: Option<u64>,
    /// The subscriptions to restore into the router on start.
    pub subscriptions: Vec<StoredSubscription>,
    /// Inbound QoS 2 packet ids the client was sent a PUBREC for and whose PUBREL is due:
    /// after a restart its PUBLISH resend is still a duplicate, not a new message.
    pub awaiting_rel: Vec<u16>,
    /// A will waiting for its delay interval.
    pub pending_will: Option<StoredWill>,
    /// Who created the session: `None` when unknown (a version 1 record: the first identity
    /// to resume it claims it), `Some(None)` a client whose user name was not verified,
    /// `Some(Some(user))` that verified user.
    pub owner: Option<Option<String>>,
}

/// A will waiting for its delay interval (MQTT 5 will delay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWill {
    /// The will message.
    pub message: StoredMessage,
    /// When it is due (Unix ms); published at start when already past.
    pub publish_at_unix_ms: u64,
}

/// The record version of [`StoredSession`] written today (2: `awaiting_rel`, `pending_will`
/// and `owner` were added; version 1 records load with none of them).
pub const SESSION_RECORD_VERSION: u8 = 2;

/// [`StoredSession`] as version 1 records hold it.
#[derive(Debug, Clone, Deserialize)]
struct StoredSessionV1 {
    client_id: String,
    protocol_level: u8,
    expiry_secs: u32,
    disconnected_at_unix_ms: Option<u64>,
    subscriptions: Vec<StoredSubscription>,
}

impl StoredSession {
    /// Encodes the session as a version [`SESSION_RECORD_VERSION`] record.
    pub fn encode_record(&self) -> Result<Vec<u8>, RecordError> {
        crate::record::encode_as(SESSION_RECORD_VERSION, self)
    }

    /// Decodes a session record of any version this build knows.
    pub fn decode_record(bytes: &[u8]) -> Result<StoredSession, RecordError> {
        let (version, body) = crate::record::split_version(bytes)?;
        match version {
            1 => {
                let v1: StoredSessionV1 = crate::record::decode_body(body)?;
                Ok(StoredSession {
                    client_id: v1.client_id,
                    protocol_level: v1.protocol_level,
                    expiry_secs: v1.expiry_secs,
                    disconnected_at_unix_ms: v1.disconnected_at_unix_ms,
                    subscriptions: v1.subscriptions,
                    awaiting_rel: Vec::new(),
                    pending_will: None,
                    owner: None,
                })
            }
            SESSION_RECORD_VERSION => crate::record::decode_body(body),
            other => Err(RecordError::UnknownVersion(other)),
        }
    }
}

/// One subscription of a persistent session, with its MQTT 5 options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The topic filter as subscribed (may hold `+`/`#`, or be a `$share/...` filter).
    pub filter: String,
    /// The maximum QoS granted.
    pub qos: u8,
    /// MQTT 5 No Local: do not deliver the client's own publishes back to it.
    pub no_local: bool,
    /// MQTT 5 Retain As Published: keep the RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    /// MQTT 5 Retain Handling (0, 1 or 2).
    pub retain_handling: u8,
    /// MQTT 5 Subscription Identifier, when the client set one.
    pub subscription_id: Option<u32>,
}

/// A QoS 1/2 message owed to a persistent session: queued, or sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPending {
    /// Caller-assigned sequence number; pending messages load back in `seq` order, which is the
    /// order they must be delivered in.
    pub seq: u64,
    /// The message to deliver; its `retain` is the RETAIN flag to send (retain-as-published or
    /// a retained message sent on subscribe), not the flag it was published with.
    pub message: StoredMessage,
    /// The QoS it is delivered at (the minimum of the published and the granted QoS).
    pub qos: u8,
    /// The packet identifier once sent; needed to resend with DUP and to match the acks.
    pub packet_id: Option<u16>,
    /// How far its delivery got.
    pub state: PendingState,
    /// MQTT 5 Subscription Identifier of the subscription that matched, sent with the message.
    pub subscription_id: Option<u32>,
    /// The identifiers of further overlapping subscriptions this one copy stands for (MQTT 5
    /// §3.3.4: one copy carries them all). Empty for most messages and in version 1 records.
    pub more_subscription_ids: Vec<u32>,
}

/// The record version of [`StoredPending`] written today (2: `more_subscription_ids` was
/// added; version 1 records load with none).
pub const PENDING_RECORD_VERSION: u8 = 2;

/// [`StoredPending`] as version 1 records hold it.
#[derive(Debug, Clone, Deserialize)]
struct StoredPendingV1 {
    seq: u64,
    message: StoredMessage,
    qos: u8,
    packet_id: Option<u16>,
    state: PendingState,
    subscription_id: Option<u32>,
}

impl StoredPending {
    /// Encodes it as a version [`PENDING_RECORD_VERSION`] record.
    pub fn encode_record(&self) -> Result<Vec<u8>, RecordError> {
        crate::record::encode_as(PENDING_RECORD_VERSION, self)
    }

    /// Decodes a pending record of any version this build knows.
    pub fn decode_record(bytes: &[u8]) -> Result<StoredPending, RecordError> {
        let (version, body) = crate::record::split_version(bytes)?;
        match version {
            1 => {
                let v1: StoredPendingV1 = crate::record::decode_body(body)?;
                Ok(StoredPending {
                    seq: v1.seq,
                    message: v1.message,
                    qos: v1.qos,
                    packet_id: v1.packet_id,
                    state: v1.state,
                    subscription_id: v1.subscription_id,
                    more_subscription_ids: Vec::new(),
                })
            }
            PENDING_RECORD_VERSION => crate::record::decode_body(body),
            other => Err(RecordError::UnknownVersion(other)),
        }
    }
}

/// How far the delivery of a pending message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingState {
    /// Not sent yet.
    Queued,
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// QoS 2 PUBREL sent, waiting for PUBCOMP (the message itself need not be resent).
    AwaitPubComp,
}

/// What the key-value stores fail with.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The storage engine (sled) failed: I/O, or corruption of its own log it could not recover.
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
    /// Syncing a file of the database to disk failed; the data may not survive a power cut.
    #[error("fsync {path}: {source}")]
    Sync {
        /// The file or directory that could not be synced.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A value could not be encoded (should not happen for these structs).
    #[error("encoding a {tree} record: {source}")]
    Encode {
        /// Which kind of record: `retained`, `sessions` or `pending`.
        tree: &'static str,
        /// Why.
        source: RecordError,
    },
    /// A stored record could not be decoded or does not match its key. `load_*` log and skip
    /// these instead of failing; single-record operations return it.
    #[error("corrupt {tree} record at key {key}: {reason}")]
    Corrupt {
        /// Which kind of record: `retained`, `sessions` or `pending`.
        tree: &'static str,
        /// The key, printable (UTF-8 lossily, with the sequence number for pending records).
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A client identifier longer than an MQTT string can be (65,535 bytes).
    #[error("client id of {len} bytes is longer than 65535")]
    ClientIdTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// An option passed to [`SledStore::open`] is out of range.
    #[error("invalid storage option: {0}")]
    InvalidOption(&'static str),
}

/// What both stores share with the engine under them.
pub trait KvBackend: Send + Sync + std::fmt::Debug {
    /// Makes everything written before this call durable against a power cut, not only a crash.
    ///
    /// For [`SledStore`]: sled's flush, then an `fsync` of every file in the database directory
    /// and of the directory. For [`MemoryStore`]: nothing to do.
    fn flush(&self) -> Result<(), KvError>;

    /// How many records `load_*` have skipped because they did not decode (since open).
    fn corrupt_records_skipped(&self) -> u64;
}

/// Retained messages, one per topic.
pub trait RetainedStore: KvBackend {
    /// Stores `msg` as the retained message of `msg.topic`, replacing any previous one.
    ///
    /// Stores it as given: deleting on an empty payload and enforcing `max_retained` are the
    /// caller's (check [`RetainedStore::len`] first).
    fn put(&self, msg: &StoredMessage) -> Result<(), KvError>;

    /// Removes the retained message of `topic`; removing one that is not there is not an error.
    fn remove(&self, topic: &str) -> Result<(), KvError>;

    /// Every retained message that decodes, in topic byte order. Corrupt records are logged with
    /// their key, counted and skipped.
    fn load_all(&self) -> Result<Vec<StoredMessage>, KvError>;

    /// The number of stored retained records (corrupt ones included: they take space until
    /// removed). Constant time.
    fn len(&self) -> usize;

    /// Whether no retained record is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Persistent sessions and the messages they are owed.
///
/// Calls for one client id are expected from one task at a time (the session's owner); calls
/// for different clients may run concurrently.
pub trait SessionStore: KvBackend {
    /// Stores `s` under `s.client_id`, replacing any previous session metadata. Pending messages
    /// are untouched.
    fn put_session(&self, s: &StoredSession) -> Result<(), KvError>;

    /// Removes a session and all of its pending messages; an unknown client is not an error.
    ///
    /// Pending messages go first, then the session: a crash in between leaves the session with
    /// fewer pending messages (all of which were being discarded anyway), never pending messages
    /// without a session that a later session of the same client id would inherit.
    fn remove_session(&self, client_id: &str) -> Result<(), KvError>;

    /// Every session that decodes, in client id byte order. Corrupt records are logged with
    /// their key, counted and skipped.
    fn load_sessions(&self) -> Result<Vec<StoredSession>, KvError>;

    /// Stores a pending message for `client_id` under `p.seq`, replacing one with the same seq.
    fn push_pending(&self, client_id: &str, p: &StoredPending) -> Result<(), KvError>;

    /// Sets the state and packet id of pending message `seq`. Returns `false` if there is none.
    fn update_pending_state(
        &self,
        client_id: &str,
        seq: u64,
        state: PendingState,
        packet_id: Option<u16>,
    ) -> Result<bool, KvError>;

    /// Removes pending message `seq` (acknowledged, expired or dropped); a missing one is not an
    /// error.
    fn remove_pending(&self, client_id: &str, seq: u64) -> Result<(), KvError>;

    /// The pending messages of `client_id` that decode, in `seq` order. Corrupt records are
    /// logged with their key, counted and skipped.
    fn load_pending(&self, client_id: &str) -> Result<Vec<StoredPending>, KvError>;
}

#[cfg(test)]
mod tests;
