//! holdfast-mqtt: sans-IO MQTT 3.1, 3.1.1 and 5.0.
//!
//! Owns the packet types, their byte encoding ([`decode`], [`encode`]), topic name and filter
//! rules ([`topic`]) and the subscription index ([`trie`]). It never touches a socket, a clock or
//! a thread: callers feed bytes in and take packets out (see `codec` for the call order).
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs, missing_debug_implementations)]

mod codec;
mod packet;
pub mod small_map;
pub mod topic;
pub mod trie;

pub use codec::{
    decode, encode, encode_publish, encode_publish_ref, encoded_len, DecodeError, EncodeError,
    PublishRef,
};
pub use packet::*;
