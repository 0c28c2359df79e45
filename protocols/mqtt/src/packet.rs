//! MQTT control packets of 3.1, 3.1.1 and 5.0 as plain data.
//!
//! Owns the in-memory shape of every packet; the codec (`codec.rs`) turns these into bytes and
//! back. Never does IO and never allocates more than a packet needs: payloads, topics and binary
//! properties are `Bytes` slices of the receive buffer.

use bytes::Bytes;
use std::fmt;

/// The protocol level a client spoke in its CONNECT; it decides how every later packet is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V3_1,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V3_1_1,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// True for MQTT 5.0, the only level with properties and reason codes everywhere.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// An MQTT packet identifier: the number that pairs a QoS 1/2 PUBLISH with its acks and a
/// (UN)SUBSCRIBE with its (UN)SUBACK. A type of its own so that it is never mixed up with the
/// other 16-bit numbers of the protocol (topic alias, receive maximum, keep-alive) or with the
/// queue sequence numbers packet ids are derived from. [`PacketId::NONE`] (0) stands only for
/// "absent" in a QoS 0 PUBLISH; the decoder never yields it anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PacketId(u16);

impl PacketId {
    /// "No packet id" (a QoS 0 PUBLISH); not valid on any packet that carries one.
    pub const NONE: PacketId = PacketId(0);
    /// The first id a sender hands out.
    pub const FIRST: PacketId = PacketId(1);

    /// The id with this wire value.
    pub const fn new(raw: u16) -> PacketId {
        PacketId(raw)
    }

    /// The wire value.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The id after this one, skipping 0: 65535 is followed by 1.
    pub const fn next(self) -> PacketId {
        match self.0.checked_add(1) {
            Some(id) => PacketId(id),
            None => PacketId::FIRST,
        }
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Quality of service of a publish or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// At least once: PUBLISH / PUBACK.
    AtLeastOnce = 1,
    /// Exactly once: PUBLISH / PUBREC / PUBREL / PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is not a QoS.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string backed by `Bytes`, so topics and properties can share the receive buffer.
///
/// Invariant: the bytes are valid UTF-8 without U+0000 (checked by the decoder or guaranteed by
/// construction from `&str`/`String`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

// Hashes like `str` so that `HashMap<ByteStr, _>` can be looked up with a `&str`.
impl std::hash::Hash for ByteStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl ByteStr {
    /// Wraps bytes already validated as UTF-8. Returns `None` when they are not.
    pub fn from_utf8(bytes: Bytes) -> Option<ByteStr> {
        std::str::from_utf8(&bytes).ok()?;
        Some(ByteStr(bytes))
    }

    /// The string. Cheap: the bytes were validated when this value was made.
    pub fn as_str(&self) -> &str {
        // The invariant makes this infallible; an empty string is the unreachable fallback.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for "".
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s.into_bytes()))
    }
}

impl std::ops::Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// MQTT 5 reason codes (also used internally for 3.1.1, where the codec maps or drops them).
pub mod reason {
    /// Success / normal disconnection / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// Granted QoS 1.
    pub const GRANTED_QOS_1: u8 = 0x01;
    /// Granted QoS 2.
    pub const GRANTED_QOS_2: u8 = 0x02;
    /// DISCONNECT: disconnect and publish the will.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// PUBACK/PUBREC: accepted but nobody subscribed.
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// UNSUBACK: there was no such subscription.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    /// CONNACK: unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// CONNACK: client identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    /// CONNACK: bad user name or password.
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// CONNACK: server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// DISCONNECT: server shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// CONNACK: bad authentication method (enhanced authentication is not supported).
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// DISCONNECT: keep alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// DISCONNECT: session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    /// Packet identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    /// Receive maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Message rate too high.
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Administrative action (kick).
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Shared subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    /// Subscription identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    /// Wildcard subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}

/// MQTT 5 properties of every packet but PUBLISH (and the will, which have their own struct).
///
/// The codec rejects a property that is not allowed on the packet it arrived with, and a
/// property (other than user properties / subscription identifiers) given twice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x11 CONNECT, CONNACK, DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 CONNACK.
    pub assigned_client_identifier: Option<ByteStr>,
    /// 0x13 CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15 CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 CONNECT, CONNACK, AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17 CONNECT.
    pub request_problem_information: Option<u8>,
    /// 0x19 CONNECT.
    pub request_response_information: Option<u8>,
    /// 0x1A CONNACK.
    pub response_information: Option<ByteStr>,
    /// 0x1C CONNACK, DISCONNECT.
    pub server_reference: Option<ByteStr>,
    /// 0x1F every ack, CONNACK, DISCONNECT, AUTH.
    pub reason_string: Option<ByteStr>,
    /// 0x21 CONNECT, CONNACK.
    pub receive_maximum: Option<u16>,
    /// 0x22 CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x24 CONNACK.
    pub maximum_qos: Option<u8>,
    /// 0x25 CONNACK.
    pub retain_available: Option<u8>,
    /// 0x27 CONNECT, CONNACK.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 CONNACK.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 CONNACK.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A CONNACK.
    pub shared_subscription_available: Option<u8>,
    /// 0x0B SUBSCRIBE (at most one; 1..=268,435,455).
    pub subscription_identifier: Option<u32>,
    /// 0x26 everywhere, in order, repeats allowed.
    pub user_properties: Vec<(ByteStr, ByteStr)>,
}

/// MQTT 5 properties of a PUBLISH (and of a will message, minus the alias and identifiers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01: 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x23: 1..=topic_alias_maximum (not allowed in a will).
    pub topic_alias: Option<u16>,
    /// 0x08.
    pub response_topic: Option<ByteStr>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26, in order.
    pub user_properties: Vec<(ByteStr, ByteStr)>,
    /// 0x0B: server -> client only; repeats allowed (one per matching subscription).
    pub subscription_identifiers: Vec<u32>,
    /// 0x03.
    pub content_type: Option<ByteStr>,
}

impl PublishProperties {
    /// True when nothing is set, so the encoder can write a single zero length byte.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will topic (a valid topic name: no wildcards).
    pub topic: ByteStr,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// v5 will properties (topic_alias and subscription_identifiers are never set).
    pub properties: PublishProperties,
    /// v5 will delay interval (0x18), seconds.
    pub will_delay_interval: Option<u32>,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Level the client speaks.
    pub protocol: ProtocolVersion,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_start: bool,
    /// Keep alive, seconds; 0 = off.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: ByteStr,
    /// Will, when the will flag is set.
    pub will: Option<LastWill>,
    /// User name, when its flag is set.
    pub username: Option<ByteStr>,
    /// Password, when its flag is set.
    pub password: Option<Bytes>,
    /// v5 properties.
    pub properties: Properties,
}

/// CONNACK. `code` is a v5 reason code; the encoder maps it to the 3.1.1 return codes
/// (0x84->1, 0x85->2, 0x88/0x89->3, 0x86->4, 0x87->5, others->3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Reason code (v5 numbering).
    pub code: u8,
    /// v5 properties.
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Duplicate delivery flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; may be empty in v5 when a topic alias is given.
    pub topic: ByteStr,
    /// Packet identifier; 0 (absent on the wire) for QoS 0, non-zero otherwise.
    pub packet_id: PacketId,
    /// Application payload.
    pub payload: Bytes,
    /// v5 properties.
    pub properties: PublishProperties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id, and in v5 a reason and properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResp {
    /// Packet identifier (non-zero).
    pub packet_id: PacketId,
    /// v5 reason code; 0 (success) in 3.1.1.
    pub reason: u8,
    /// v5 properties (reason string, user properties).
    pub properties: Properties,
}

/// Subscription options of one filter in SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// v5: do not send my own publishes back to me.
    pub no_local: bool,
    /// v5: keep the retain flag as published.
    pub retain_as_published: bool,
    /// v5: 0 = send retained on subscribe, 1 = only if the subscription is new, 2 = never.
    pub retain_handling: u8,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: PacketId,
    /// At least one (filter, options); filters are not validated beyond UTF-8 by the codec.
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
    /// v5 properties (subscription identifier, user properties).
    pub properties: Properties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// One reason per filter: granted QoS 0..=2 or >= 0x80 (3.1.1 encodes every failure as 0x80).
    pub reasons: Vec<u8>,
    /// v5 properties.
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: PacketId,
    /// At least one filter.
    pub filters: Vec<ByteStr>,
    /// v5 properties.
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// v5: one reason per filter. Not on the wire in 3.1.1 (decoded as empty).
    pub reasons: Vec<u8>,
    /// v5 properties.
    pub properties: Properties,
}

/// DISCONNECT (3.1.1: no body; v5: reason and properties).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// v5 reason code.
    pub reason: u8,
    /// v5 properties.
    pub properties: Properties,
}

/// AUTH (v5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason: 0x00 success, 0x18 continue, 0x19 re-authenticate.
    pub reason: u8,
    /// Properties (authentication method and data).
    pub properties: Properties,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// 1
    Connect(Box<Connect>),
    /// 2
    ConnAck(ConnAck),
    /// 3
    Publish(Publish),
    /// 4
    PubAck(PubResp),
    /// 5
    PubRec(PubResp),
    /// 6
    PubRel(PubResp),
    /// 7
    PubComp(PubResp),
    /// 8
    Subscribe(Subscribe),
    /// 9
    SubAck(SubAck),
    /// 10
    Unsubscribe(Unsubscribe),
    /// 11
    UnsubAck(UnsubAck),
    /// 12
    PingReq,
    /// 13
    PingResp,
    /// 14
    Disconnect(Disconnect),
    /// 15 (v5 only)
    Auth(Auth),
}

impl Packet {
    /// Short name for logs ("PUBLISH", "CONNECT", ...).
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}
