//! The seam between the broker and whatever takes routed messages out of the gateway (the
//! bridges' disk queues, `crate::bridge`).
//!
//! The router asks [`Uplink::wants`] under its lock; the broker calls [`Uplink::append`] right
//! after releasing it, in routing order, and the publisher (an MQTT connection or an
//! in-process client) waits on the [`Forwarded`] it gets before acknowledging. Owns only this
//! interface: the broker never imports the bridges, the bridges implement it.

use super::message::Message;
use std::task::{Context, Poll};
use std::time::Instant;

/// Why a message that should have left the gateway was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `on_full = "reject_new"` and the queue is at its byte cap.
    QueueFull,
    /// The queue could not take it (I/O error, closed, record too large).
    Failed,
}

/// What happened to one message in [`Uplink::append`].
#[derive(Debug, Default)]
pub struct Forwarded {
    /// `(queue, seq)` that must be durable before the publisher's acknowledgement.
    pub needs: Vec<(usize, u64)>,
    /// Set when some queue could not take it.
    pub refused: Option<Refusal>,
}

/// Takes routed messages out of the gateway, durably. Registered once at start-up
/// ([`super::Broker::set_uplink`]).
pub trait Uplink: Send + Sync + std::fmt::Debug {
    /// True when some queue wants `msg` (cheap: called under the router lock).
    fn wants(&self, msg: &Message) -> bool;
    /// Appends `msg` to every queue that wants it (outside the router lock; may block briefly
    /// for back-pressure).
    fn append(&self, msg: &Message, now: Instant) -> Forwarded;
    /// Ready when every `(queue, seq)` in `needs` is durable; registers the waker otherwise.
    fn poll_durable(&self, needs: &[(usize, u64)], cx: &mut Context<'_>) -> Poll<()>;
    /// True when every `(queue, seq)` in `needs` is durable (no waker registered).
    fn is_durable(&self, needs: &[(usize, u64)]) -> bool;
    /// The implementation, for its own module to get back (`crate::bridge::forwarder`).
    fn as_any(&self) -> &dyn std::any::Any;
}
