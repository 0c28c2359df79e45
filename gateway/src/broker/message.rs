//! A routed application message and the per-subscriber delivery that points at it.
//!
//! Owns nothing but data: one `Arc<Message>` is shared by every session it is queued for, so a
//! fan-out to N subscribers costs N small `Delivery` values, never N payload copies.

use bytes::Bytes;
use holdfast_mqtt::{ByteStr, PublishProperties, QoS};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

/// Identifies a session inside the router; never reused while the process runs. A newtype:
/// connection ids, queue seqs and session ids are all `u64`s, and only this one keys sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The first id the router hands out; ids count up from it.
    pub const FIRST: SessionId = SessionId(1);
    /// Stands for "no session" where a number must be stored (an atomic); never assigned.
    pub const NONE: u64 = 0;
    /// The session of a connection whose CONNECT was not accepted yet: the router never
    /// issues it, so a call with it finds no session.
    pub const UNBOUND: SessionId = SessionId(Self::NONE);

    /// The id after this one.
    pub fn next(self) -> SessionId {
        SessionId(self.0 + 1)
    }

    /// The raw number, to store in an atomic (never [`SessionId::NONE`]).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id stored as [`SessionId::get`]; `None` for [`SessionId::NONE`].
    pub fn from_raw(raw: u64) -> Option<SessionId> {
        (raw != Self::NONE).then_some(SessionId(raw))
    }

    /// An id for tests that build sessions without a router.
    #[cfg(test)]
    pub fn test(n: u64) -> SessionId {
        SessionId(n)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A client identifier: the MQTT CONNECT's, or an in-process client's (`$bridge/{name}`,
/// `coap/...`). The router keys sessions by it. A newtype so that a user name, a topic or a
/// filter (all strings too) can never be passed where a client id is meant; it reads as a
/// `&str` (`Deref`) and a `HashMap<ClientId, _>` can be looked up with one (`Borrow<str>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ClientId(ByteStr);

impl ClientId {
    /// The id as the shared string it is stored as.
    pub fn as_byte_str(&self) -> &ByteStr {
        &self.0
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<ByteStr> for ClientId {
    fn from(id: ByteStr) -> ClientId {
        ClientId(id)
    }
}

impl From<&str> for ClientId {
    fn from(id: &str) -> ClientId {
        ClientId(ByteStr::from(id))
    }
}

impl From<String> for ClientId {
    fn from(id: String) -> ClientId {
        ClientId(ByteStr::from(id))
    }
}

// Hashes like `str` (as `ByteStr` does) so that `Borrow<str>` lookups find it.
impl std::hash::Hash for ClientId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::ops::Deref for ClientId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A map keyed by [`SessionId`] with a multiplicative hash: ids are assigned by the router, not
/// by peers, so SipHash's flooding resistance buys nothing on this per-delivery lookup.
pub type SessionMap<V> = std::collections::HashMap<SessionId, V, BuildIdHasher>;

/// Builds [`IdHasher`]s.
pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

/// Fibonacci hashing of a `u64` id (falls back to FNV-1a for other input).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// An application message as it entered the broker.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name it was published to (after topic-alias resolution).
    pub topic: ByteStr,
    /// Payload, shared with the receive buffer it was decoded from.
    pub payload: Bytes,
    /// QoS it was published with; a delivery gets min(this, subscription QoS).
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// v5 properties passed through to subscribers (topic alias and subscription ids cleared).
    pub properties: PublishProperties,
    /// Who published it, for no-local subscriptions; `None` for broker-made messages ($SYS, wills).
    pub publisher: Option<SessionId>,
    /// The publishing client's id (webhooks' `from_clientid`), kept here so that it outlives
    /// the publisher's session; `None` for broker-made messages and bridge downlinks.
    pub publisher_client_id: Option<ClientId>,
    /// When the v5 message expiry interval runs out; `None` = never.
    pub expires_at: Option<Instant>,
}

/// Who published a message: a session (for No Local and for not forwarding a bridge's
/// downlink back up) and its client id (webhooks' `from_clientid`); [`Origin::BROKER`] for
/// broker-made messages.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The publishing session.
    pub session: Option<SessionId>,
    /// The publishing client's id.
    pub client_id: Option<ClientId>,
}

impl Origin {
    /// Made by the broker itself (`$SYS`, board status): no session, no client.
    pub const BROKER: Origin = Origin {
        session: None,
        client_id: None,
    };

    /// Published by `client_id` through session `session`.
    pub fn client(session: SessionId, client_id: ClientId) -> Origin {
        Origin {
            session: Some(session),
            client_id: Some(client_id),
        }
    }
}

impl Message {
    /// The one way to make a message. The properties' topic alias and subscription
    /// identifiers are cleared (they belong to one hop, not to the message); no expiry is armed
    /// ([`Message::expiring_from`] does that when the message enters the broker).
    pub fn new(
        topic: impl Into<ByteStr>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
        origin: Origin,
    ) -> Message {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties,
            publisher: origin.session,
            publisher_client_id: origin.client_id,
            expires_at: None,
        }
    }

    /// Arms the v5 message expiry interval of its properties, counted from `now`.
    pub fn expiring_from(mut self, now: Instant) -> Message {
        self.expires_at = self
            .properties
            .message_expiry_interval
            .map(|s| now + std::time::Duration::from_secs(u64::from(s)));
        self
    }

    /// A copy whose topic and payload own their memory. Decoded messages share the read buffer
    /// they came from; one kept for long (retained, queued for an offline session) would pin
    /// that whole buffer, so those are detached first.
    pub fn detached(&self) -> Message {
        let mut m = self.clone();
        m.topic = ByteStr::from(self.topic.as_str());
        m.payload = Bytes::copy_from_slice(&self.payload);
        m
    }

    /// True when the message expiry interval has run out at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Remaining expiry in whole seconds (rounded up), for the outgoing property.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// What a queued delivery costs beyond its topic and payload (the delivery, its share of the
/// message and its properties), for `max_heap_size` accounting.
pub(crate) const DELIVERY_OVERHEAD: usize = 128;

impl Delivery {
    /// Every subscription identifier this copy carries.
    pub fn subscription_ids(&self) -> impl Iterator<Item = NonZeroU32> + '_ {
        self.subscription_id.into_iter().chain(
            self.more_subscription_ids
                .iter()
                .flat_map(|more| more.iter().copied()),
        )
    }

    /// Roughly the memory a session holds for this delivery: the topic and the payload (counted
    /// in full even when other subscribers share them) plus a fixed overhead.
    pub fn held_bytes(&self) -> usize {
        self.message.topic.len() + self.message.payload.len() + DELIVERY_OVERHEAD
    }
}

/// One message queued for one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS granted for this delivery.
    pub qos: QoS,
    /// Retain flag to send (retain-as-published, or set for retained messages sent on subscribe).
    pub retain: bool,
    /// Subscription identifier of the subscription that matched (v5).
    pub subscription_id: Option<NonZeroU32>,
    /// The identifiers of the client's other overlapping subscriptions this one copy stands
    /// for (MQTT 5 §3.3.4); `None` for all but such a copy.
    pub more_subscription_ids: Option<Arc<Vec<NonZeroU32>>>,
    /// Position in its session's queue, assigned when queued (0 until then): increasing, never
    /// reused by the session, the key of the delivery's stored record for a persistent session.
    pub seq: u64,
    /// The shared-subscription group it came through, so a member that leaves can hand it to
    /// another member (MQTT 5 §4.8.2). Not persisted: a restored delivery stays with its session.
    pub shared: Option<Arc<SharedKey>>,
}

/// A shared-subscription group: the real filter and the share name (`$share/{group}/{filter}`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SharedKey {
    /// The filter without the `$share/{group}/` prefix.
    pub filter: ByteStr,
    /// The share name.
    pub group: ByteStr,
}
