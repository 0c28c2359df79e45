//! holdfast-storage: the gateway's durable state, behind this crate's own API.
//!
//! Owns everything that must survive a `kill -9` or a power cut: the store-and-forward queues
//! (`queue`: an append-only segment log with CRC-checked records and group commit, because
//! sled's own flush is not durable against power loss, spacejam/sled#1452), and the retained
//! messages and persistent sessions (`kv`: on sled 0.34, with a memory implementation for tests
//! and diskless runs). Records are postcard behind a format-version byte (`record`).
//!
//! It never depends on the gateway, tokio or the MQTT codec: callers hand it bytes and plain
//! structs, and decide when to wait for durability.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs, missing_debug_implementations)]

pub mod kv;
pub mod queue;
pub mod record;
