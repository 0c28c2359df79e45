//! The MQTT wire codec: [`decode`] turns bytes into a [`Packet`], [`encode`] turns a [`Packet`]
//! into bytes, for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Owns the fixed header and its remaining-length framing, every variable header and payload
//! layout, MQTT 5 reason codes and (in `properties`) MQTT 5 properties, and every
//! well-formedness rule that can be checked on one packet alone. It must never do IO, keep state between calls, or judge what depends on
//! the session: topic alias ranges, receive maximum, topic filter syntax (see `topic`), and which
//! side may send which packet belong to the broker.
//!
//! # Call order
//!
//! 1. Append bytes read from the socket to a `BytesMut`.
//! 2. Call [`decode`] with the version negotiated so far until it returns `Ok(None)`. Before
//!    CONNECT any version will do: CONNECT carries its own protocol name and level, and the
//!    decoded [`Connect::protocol`] is the version to pass from then on. Each `Ok(Some(_))` has
//!    split exactly that packet's bytes off the front of the buffer; topics, payloads and binary
//!    properties are zero-copy slices of them. `Ok(None)` leaves the buffer as it was.
//! 3. On `Err(e)`, close the connection: in MQTT 5 after a DISCONNECT carrying
//!    [`DecodeError::reason_code`] (or a CONNACK when CONNECT itself failed). The buffer's content
//!    is unspecified after an error.
//! 4. To send, [`encode`] (or [`encode_publish`] on the hot path) appends to an output
//!    `BytesMut`, reserving exactly the packet's size first. On `Err` nothing was appended.
//!
//! # Strictness
//!
//! The decoder rejects anything the specifications call malformed or a protocol error that can
//! be seen in one packet, in every version, including:
//! - a DUP flag on a QoS 0 PUBLISH ([MQTT-3.3.1-2] in 3.1.1 as in 5.0), rather than ignoring it;
//! - a variable byte integer (remaining length, property length, subscription identifier) that
//!   is not minimally encoded ([MQTT-1.5.5-1]), in 3.1.1 as well;
//! - reason codes the packet type does not define, and 3.1.1 CONNACK/SUBACK return codes that
//!   3.1.1 does not define.
//!
//! It accepts the short forms of MQTT 5 acknowledgements (packet id only; packet id and reason
//! without a property length), DISCONNECT and AUTH (empty; reason only), and a Subscription
//! Identifier in a PUBLISH from either side (only a server may send one: the broker checks).
//!
//! The encoder writes what it is given and refuses only what cannot be put on the wire (lengths
//! past their field's range, AUTH before MQTT 5). What the negotiated version cannot carry is
//! dropped: properties and non-zero acknowledgement reasons in 3.1.x, MQTT 5 properties that
//! are not allowed on the packet being encoded, the DUP flag on QoS 0, the session present flag
//! in 3.1. CONNECT is encoded in its own [`Connect::protocol`], whatever `protocol` says.

mod properties;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::packet::{
    Auth, ByteStr, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion,
    PubResp, Publish, PublishProperties, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use properties::{
    put_properties, put_properties_section, put_publish_properties_section, read_properties,
    read_publish_properties, ACK_PROPERTIES, AUTH_PROPERTIES, CONNACK_PROPERTIES,
    CONNECT_PROPERTIES, DISCONNECT_PROPERTIES, PUBLISH_PROPERTIES, SUBSCRIBE_PROPERTIES,
    UNSUBSCRIBE_PROPERTIES, WILL_PROPERTIES,
};

/// Largest variable byte integer, and so the largest remaining length (256 MB - 1).
const MAX_VARINT: usize = 268_435_455;

/// Largest string or binary field: its length prefix is two bytes.
const MAX_STRING: usize = 65_535;

/// Why bytes from the network are not an MQTT packet. Every variant closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length of the fixed header continues past its fourth byte.
    #[error("remaining length exceeds 4 bytes")]
    RemainingLengthTooLong,
    /// A variable byte integer takes more bytes than its value needs.
    #[error("variable byte integer in {packet} is not minimally encoded")]
    NonMinimalVarInt {
        /// Packet type name.
        packet: &'static str,
    },
    /// A variable byte integer inside the body continues past its fourth byte.
    #[error("variable byte integer in {packet} exceeds 4 bytes")]
    VarIntTooLong {
        /// Packet type name.
        packet: &'static str,
    },
    /// The whole packet, fixed header included, is larger than the allowed maximum.
    #[error("packet of {size} bytes exceeds maximum {max}")]
    PacketTooLarge {
        /// Size announced by the fixed header, fixed header included.
        size: usize,
        /// The maximum the caller allows.
        max: usize,
    },
    /// Packet type 0, reserved in every version.
    #[error("reserved packet type 0")]
    ReservedPacketType,
    /// AUTH (packet type 15) on a connection that did not negotiate MQTT 5.
    #[error("AUTH packet on a connection that is not MQTT 5")]
    AuthOutsideV5,
    /// The four flag bits of the fixed header are not the ones the packet type requires.
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidHeaderFlags {
        /// Packet type name.
        packet: &'static str,
        /// The low four bits of the first byte.
        flags: u8,
    },
    /// The QoS bits of a PUBLISH or of a will are 3.
    #[error("QoS 3 in {packet}")]
    InvalidQoS {
        /// Packet type name.
        packet: &'static str,
    },
    /// A QoS 0 PUBLISH with the DUP flag set.
    #[error("PUBLISH with DUP set at QoS 0")]
    DupWithQoS0,
    /// The body ends in the middle of a field.
    #[error("{packet} truncated: body ends inside a field")]
    Truncated {
        /// Packet type name.
        packet: &'static str,
    },
    /// The body holds bytes after the packet's last field.
    #[error("{packet} has {extra} bytes after its last field")]
    TrailingBytes {
        /// Packet type name.
        packet: &'static str,
        /// How many bytes are left over.
        extra: usize,
    },
    /// A string is not valid UTF-8.
    #[error("invalid UTF-8 in {field}")]
    InvalidUtf8 {
        /// Which string ("topic name", "client identifier", ...).
        field: &'static str,
    },
    /// A string contains U+0000.
    #[error("U+0000 in {field}")]
    NullCharacter {
        /// Which string ("topic name", "client identifier", ...).
        field: &'static str,
    },
    /// A PUBLISH topic name or a will topic contains `+` or `#`.
    #[error("wildcard in topic name of {packet}")]
    WildcardInTopicName {
        /// Packet type name.
        packet: &'static str,
    },
    /// An empty topic name, allowed only in an MQTT 5 PUBLISH that carries a topic alias.
    #[error("empty topic name in {packet}")]
    EmptyTopicName {
        /// Packet type name.
        packet: &'static str,
    },
    /// Packet identifier 0 where a non-zero one is required.
    #[error("{packet} with packet identifier 0")]
    ZeroPacketId {
        /// Packet type name.
        packet: &'static str,
    },
    /// A SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("{packet} without topic filters")]
    NoTopicFilters {
        /// Packet type name.
        packet: &'static str,
    },
    /// A SUBACK or MQTT 5 UNSUBACK without any reason code.
    #[error("{packet} without reason codes")]
    NoReasonCodes {
        /// Packet type name.
        packet: &'static str,
    },
    /// A reason code (or 3.1.x return code) that the packet type does not define.
    #[error("reason code {code:#04x} not valid in {packet}")]
    InvalidReasonCode {
        /// Packet type name.
        packet: &'static str,
        /// The code received.
        code: u8,
    },
    /// Subscription options with reserved bits set, QoS 3 or retain handling 3.
    #[error("invalid subscription options {0:#010b} in SUBSCRIBE")]
    InvalidSubscriptionOptions(u8),
    /// A property identifier that does not exist or is not allowed in this packet.
    #[error("property {id:#04x} not allowed in {packet}")]
    InvalidProperty {
        /// Packet type name ("will properties" for a will).
        packet: &'static str,
        /// Property identifier.
        id: u8,
    },
    /// A single-value property given twice.
    #[error("property {id:#04x} given twice in {packet}")]
    DuplicateProperty {
        /// Packet type name ("will properties" for a will).
        packet: &'static str,
        /// Property identifier.
        id: u8,
    },
    /// A property value out of its range (receive maximum 0, payload format 2, ...), or
    /// authentication data without an authentication method.
    #[error("invalid value for property {id:#04x} in {packet}")]
    InvalidPropertyValue {
        /// Packet type name ("will properties" for a will).
        packet: &'static str,
        /// Property identifier.
        id: u8,
    },
    /// Reserved bits set in the CONNECT flags or the CONNACK acknowledge flags.
    #[error("reserved flag bits set in {packet}")]
    ReservedFlags {
        /// Packet type name.
        packet: &'static str,
    },
    /// CONNECT will QoS or will retain set without the will flag.
    #[error("CONNECT will QoS or will retain set without the will flag")]
    InvalidWillFlags,
    /// A 3.1/3.1.1 CONNECT with the password flag but not the user name flag.
    #[error("CONNECT password flag set without the user name flag")]
    PasswordWithoutUsername,
    /// The CONNECT protocol name is neither "MQTT" nor "MQIsdp".
    #[error("invalid protocol name in CONNECT")]
    InvalidProtocolName,
    /// A CONNECT protocol level this codec does not speak (the broker answers CONNACK 0x84/0x01).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code to send in the DISCONNECT (or CONNACK) that closes the connection.
    pub fn reason_code(&self) -> u8 {
        use crate::packet::reason;
        match self {
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::WildcardInTopicName { .. } => reason::TOPIC_NAME_INVALID,
            DecodeError::AuthOutsideV5
            | DecodeError::DupWithQoS0
            | DecodeError::EmptyTopicName { .. }
            | DecodeError::ZeroPacketId { .. }
            | DecodeError::NoTopicFilters { .. }
            | DecodeError::NoReasonCodes { .. }
            | DecodeError::InvalidReasonCode { .. }
            | DecodeError::DuplicateProperty { .. }
            | DecodeError::InvalidPropertyValue { .. }
            | DecodeError::InvalidProtocolName => reason::PROTOCOL_ERROR,
            DecodeError::RemainingLengthTooLong
            | DecodeError::NonMinimalVarInt { .. }
            | DecodeError::VarIntTooLong { .. }
            | DecodeError::ReservedPacketType
            | DecodeError::InvalidHeaderFlags { .. }
            | DecodeError::InvalidQoS { .. }
            | DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::InvalidUtf8 { .. }
            | DecodeError::NullCharacter { .. }
            | DecodeError::InvalidSubscriptionOptions(_)
            | DecodeError::InvalidProperty { .. }
            | DecodeError::ReservedFlags { .. }
            | DecodeError::InvalidWillFlags
            | DecodeError::PasswordWithoutUsername => reason::MALFORMED_PACKET,
        }
    }
}

/// Why a packet cannot be put on the wire. Nothing was written when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length (or a property section) would exceed 268,435,455 bytes.
    #[error("packet too large to encode: {0} bytes exceeds 268435455")]
    PacketTooLarge(usize),
    /// A string or binary field is longer than its two-byte length prefix can say.
    #[error("{field} of {len} bytes is longer than 65535")]
    StringTooLong {
        /// Which field ("topic name", "payload of will", ...).
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A subscription identifier past the variable byte integer range.
    #[error("subscription identifier {0} exceeds 268435455")]
    SubscriptionIdentifierTooLarge(u32),
    /// A packet type the negotiated version does not have (AUTH before MQTT 5).
    #[error("{packet} cannot be sent in {protocol:?}")]
    NotInProtocol {
        /// Packet type name.
        packet: &'static str,
        /// The version it was to be encoded in.
        protocol: ProtocolVersion,
    },
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 reason codes each packet type defines (spec tables 3-1 .. 3-13).

const CONNACK_REASONS: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];
const SUBACK_REASONS: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_REASONS: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_REASONS: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_REASONS: &[u8] = &[0x00, 0x18, 0x19];

/// Name of a packet type for errors and logs.
fn type_name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved packet type",
    }
}

// =============================================================================================
// Decoding

/// Decodes one packet from the front of `buf`.
///
/// `protocol` is the version negotiated by CONNECT (any value before it: CONNECT is decoded by
/// its own protocol level). `max_packet_size` bounds the whole packet, fixed header included,
/// and is enforced as soon as the remaining length is known, before the body arrives.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet, leaving `buf` untouched.
/// On `Ok(Some(_))` the packet's bytes have been split off `buf`.
pub fn decode(
    buf: &mut BytesMut,
    protocol: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_fixed_header(first, protocol)?;
    let Some((header_len, remaining)) = remaining_length(buf, first)? else {
        return Ok(None);
    };
    // Cannot overflow: header_len <= 5 and remaining <= MAX_VARINT.
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(header_len);
    decode_body(first, body, protocol).map(Some)
}

/// Checks the packet type and the flag bits of the first byte, before any length is known.
fn check_fixed_header(first: u8, protocol: ProtocolVersion) -> Result<(), DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let expected = match kind {
        0 => return Err(DecodeError::ReservedPacketType),
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS { packet: "PUBLISH" });
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        15 if !protocol.is_v5() => return Err(DecodeError::AuthOutsideV5),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::InvalidHeaderFlags {
            packet: type_name(kind),
            flags,
        });
    }
    Ok(())
}

/// Parses the remaining length after the first byte: `(fixed header length, remaining length)`,
/// or `None` when its bytes have not all arrived.
fn remaining_length(buf: &[u8], first: u8) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalVarInt {
                    packet: type_name(first >> 4),
                });
            }
            return Ok(Some((2 + i, value)));
        }
    }
    Err(DecodeError::RemainingLengthTooLong)
}

/// Decodes the body of a packet whose fixed header was checked by [`check_fixed_header`].
fn decode_body(first: u8, body: Bytes, protocol: ProtocolVersion) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let mut r = Reader {
        buf: body,
        packet: type_name(kind),
    };
    let v5 = protocol.is_v5();
    let packet = match kind {
        1 => Packet::Connect(Box::new(read_connect(&mut r)?)),
        2 => Packet::ConnAck(read_connack(&mut r, protocol)?),
        3 => Packet::Publish(read_publish(&mut r, first, v5)?),
        4 => Packet::PubAck(read_pub_resp(&mut r, v5, PUBACK_REASONS)?),
        5 => Packet::PubRec(read_pub_resp(&mut r, v5, PUBACK_REASONS)?),
        6 => Packet::PubRel(read_pub_resp(&mut r, v5, PUBREL_REASONS)?),
        7 => Packet::PubComp(read_pub_resp(&mut r, v5, PUBREL_REASONS)?),
        8 => Packet::Subscribe(read_subscribe(&mut r, v5)?),
        9 => Packet::SubAck(read_suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(read_unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(read_unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (reason, properties) = if v5 {
                read_reason_and_properties(&mut r, DISCONNECT_REASONS, DISCONNECT_PROPERTIES)?
            } else {
                (0, Properties::default())
            };
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 => {
            let (reason, properties) =
                read_reason_and_properties(&mut r, AUTH_REASONS, AUTH_PROPERTIES)?;
            Packet::Auth(Auth { reason, properties })
        }
        _ => return Err(DecodeError::ReservedPacketType),
    };
    r.finish()?;
    Ok(packet)
}

/// A cursor over one packet's body that never reads past it.
struct Reader {
    /// The unread rest of the body (a slice of the receive buffer).
    buf: Bytes,
    /// Packet type name, for errors.
    packet: &'static str,
}

impl Reader {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let Some(&value) = self.buf.first() else {
            return Err(self.truncated());
        };
        self.buf.advance(1);
        Ok(value)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(self.truncated());
        }
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(self.truncated());
        }
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (at most 4 bytes, minimally encoded).
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::NonMinimalVarInt {
                        packet: self.packet,
                    });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong {
            packet: self.packet,
        })
    }

    /// The next `len` bytes, zero-copy.
    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(self.truncated());
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left, zero-copy.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data: a two-byte length and that many bytes.
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 string: valid UTF-8 without U+0000.
    fn string(&mut self, field: &'static str) -> Result<ByteStr, DecodeError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::NullCharacter { field });
        }
        ByteStr::from_utf8(bytes).ok_or(DecodeError::InvalidUtf8 { field })
    }

    /// A packet identifier, which must not be 0.
    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId {
                packet: self.packet,
            }),
            id => Ok(id),
        }
    }

    /// A reason code from the packet type's table.
    fn reason(&mut self, allowed: &[u8]) -> Result<u8, DecodeError> {
        let code = self.u8()?;
        if !allowed.contains(&code) {
            return Err(DecodeError::InvalidReasonCode {
                packet: self.packet,
                code,
            });
        }
        Ok(code)
    }

    /// Fails unless the whole body was consumed.
    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra: self.buf.len(),
            })
        }
    }
}

/// Rejects wildcards in a topic name (PUBLISH or will topic). Emptiness is checked by callers.
fn check_topic_name(topic: &ByteStr, packet: &'static str) -> Result<(), DecodeError> {
    if topic.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName { packet });
    }
    Ok(())
}

fn read_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT" | b"MQIsdp", level) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedFlags { packet: "CONNECT" });
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS { packet: "CONNECT" })?;
    if has_password && !has_username && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        read_properties(r, CONNECT_PROPERTIES)?
    } else {
        Properties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let (properties, will_delay_interval) = if v5 {
            read_publish_properties(r, WILL_PROPERTIES, "will properties")?
        } else {
            (PublishProperties::default(), None)
        };
        let topic = r.string("will topic")?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName { packet: "CONNECT" });
        }
        check_topic_name(&topic, "CONNECT")?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
            will_delay_interval,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn read_connack(r: &mut Reader, protocol: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    let code = r.u8()?;
    if protocol == ProtocolVersion::V3_1 {
        // 3.1 has no session present flag: the byte is reserved and unused.
        return Ok(ConnAck {
            session_present: false,
            code: connack_code_from_v3(code)?,
            properties: Properties::default(),
        });
    }
    if flags & 0xFE != 0 {
        return Err(DecodeError::ReservedFlags { packet: "CONNACK" });
    }
    let session_present = flags & 0x01 != 0;
    if !protocol.is_v5() {
        return Ok(ConnAck {
            session_present,
            code: connack_code_from_v3(code)?,
            properties: Properties::default(),
        });
    }
    if !CONNACK_REASONS.contains(&code) {
        return Err(DecodeError::InvalidReasonCode {
            packet: "CONNACK",
            code,
        });
    }
    Ok(ConnAck {
        session_present,
        code,
        properties: read_properties(r, CONNACK_PROPERTIES)?,
    })
}

/// Maps a 3.1/3.1.1 CONNACK return code to the v5 reason code the packet types use.
fn connack_code_from_v3(code: u8) -> Result<u8, DecodeError> {
    use crate::packet::reason;
    Ok(match code {
        0 => reason::SUCCESS,
        1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
        2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
        3 => reason::SERVER_UNAVAILABLE,
        4 => reason::BAD_USERNAME_OR_PASSWORD,
        5 => reason::NOT_AUTHORIZED,
        code => {
            return Err(DecodeError::InvalidReasonCode {
                packet: "CONNACK",
                code,
            })
        }
    })
}

/// Maps a v5 CONNACK reason code to the 3.1/3.1.1 return code.
fn connack_code_to_v3(code: u8) -> u8 {
    use crate::packet::reason;
    match code {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::SERVER_UNAVAILABLE | reason::SERVER_BUSY => 3,
        reason::BAD_USERNAME_OR_PASSWORD => 4,
        reason::NOT_AUTHORIZED => 5,
        _ => 3,
    }
}

fn read_publish(r: &mut Reader, first: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos =
        QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::InvalidQoS { packet: "PUBLISH" })?;
    let topic = r.string("topic name")?;
    check_topic_name(&topic, "PUBLISH")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if v5 {
        read_publish_properties(r, PUBLISH_PROPERTIES, "PUBLISH")?.0
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName { packet: "PUBLISH" });
    }
    Ok(Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

fn read_pub_resp(r: &mut Reader, v5: bool, reasons: &[u8]) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 || r.is_empty() {
        return Ok(PubResp {
            packet_id,
            ..PubResp::default()
        });
    }
    let reason = r.reason(reasons)?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        read_properties(r, ACK_PROPERTIES)?
    };
    Ok(PubResp {
        packet_id,
        reason,
        properties,
    })
}

/// The optional reason and properties of an MQTT 5 DISCONNECT or AUTH.
fn read_reason_and_properties(
    r: &mut Reader,
    reasons: &[u8],
    allowed: u64,
) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = r.reason(reasons)?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        read_properties(r, allowed)?
    };
    Ok((reason, properties))
}

fn read_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        read_properties(r, SUBSCRIBE_PROPERTIES)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: "SUBSCRIBE",
        });
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { 0xC0 } else { 0xFC };
    let qos = QoS::from_u8(byte & 0x03);
    let retain_handling = (byte >> 4) & 0x03;
    let Some(qos) = qos.filter(|_| byte & reserved == 0 && retain_handling != 3) else {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn read_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        read_properties(r, ACK_PROPERTIES)?
    } else {
        Properties::default()
    };
    let reasons: &[u8] = if v5 { SUBACK_REASONS } else { &[0, 1, 2, 0x80] };
    let codes = r.rest();
    if codes.is_empty() {
        return Err(DecodeError::NoReasonCodes { packet: "SUBACK" });
    }
    if let Some(&code) = codes.iter().find(|c| !reasons.contains(c)) {
        return Err(DecodeError::InvalidReasonCode {
            packet: "SUBACK",
            code,
        });
    }
    Ok(SubAck {
        packet_id,
        reasons: codes.to_vec(),
        properties,
    })
}

fn read_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        read_properties(r, UNSUBSCRIBE_PROPERTIES)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: "UNSUBSCRIBE",
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            ..UnsubAck::default()
        });
    }
    let properties = read_properties(r, ACK_PROPERTIES)?;
    let codes = r.rest();
    if codes.is_empty() {
        return Err(DecodeError::NoReasonCodes { packet: "UNSUBACK" });
    }
    if let Some(&code) = codes.iter().find(|c| !UNSUBACK_REASONS.contains(c)) {
        return Err(DecodeError::InvalidReasonCode {
            packet: "UNSUBACK",
            code,
        });
    }
    Ok(UnsubAck {
        packet_id,
        reasons: codes.to_vec(),
        properties,
    })
}

// =============================================================================================
// Encoding

/// Appends `packet`, coded for `protocol`, to `buf`. Nothing is appended on error.
///
/// CONNECT is coded in its own [`Connect::protocol`]. Fields that `protocol` cannot carry are
/// dropped (see the module docs).
pub fn encode(
    packet: &Packet,
    protocol: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(publish) = packet {
        return encode_publish(publish, protocol, buf);
    }
    let remaining = remaining_len(packet, protocol)?;
    write_header(buf, first_byte(packet), remaining);
    put_body(&mut Writer(buf), packet, protocol);
    Ok(())
}

/// Appends a PUBLISH to `buf`: the delivery hot path. Reserves exactly the packet's size, then
/// writes topic and payload straight into it. Nothing is appended on error.
pub fn encode_publish(
    publish: &Publish,
    protocol: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_publish_ref(&PublishRef::from(publish), protocol, buf)
}

/// A PUBLISH to encode from borrowed parts, so a broker fanning one message out to many
/// subscribers encodes it without cloning (and reference-counting) its topic and payload.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// Duplicate delivery flag (ignored for QoS 0).
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name (empty with a v5 topic alias).
    pub topic: &'a str,
    /// Packet identifier (not written for QoS 0).
    pub packet_id: u16,
    /// Payload.
    pub payload: &'a [u8],
    /// v5 properties (not written for 3.x).
    pub properties: &'a PublishProperties,
}

impl<'a> From<&'a Publish> for PublishRef<'a> {
    fn from(p: &'a Publish) -> PublishRef<'a> {
        PublishRef {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic.as_str(),
            packet_id: p.packet_id,
            payload: &p.payload,
            properties: &p.properties,
        }
    }
}

/// Appends a PUBLISH given as borrowed parts; see [`PublishRef`].
pub fn encode_publish_ref(
    publish: &PublishRef<'_>,
    protocol: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = publish_remaining_len(publish, protocol)?;
    write_header(buf, publish_first_byte(publish), remaining);
    put_publish_ref(&mut Writer(buf), publish, protocol);
    Ok(())
}

/// The number of bytes [`encode`] would append for `packet`; for checking a peer's maximum
/// packet size before encoding.
pub fn encoded_len(packet: &Packet, protocol: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = match packet {
        Packet::Publish(publish) => publish_remaining_len(&PublishRef::from(publish), protocol)?,
        _ => remaining_len(packet, protocol)?,
    };
    Ok(1 + varint_len(remaining) + remaining)
}

fn remaining_len(packet: &Packet, protocol: ProtocolVersion) -> Result<usize, EncodeError> {
    if let (Packet::Auth(_), false) = (packet, protocol.is_v5()) {
        return Err(EncodeError::NotInProtocol {
            packet: "AUTH",
            protocol,
        });
    }
    let remaining = measure(|c| put_body(c, packet, protocol))?;
    if remaining > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    Ok(remaining)
}

fn publish_remaining_len(
    publish: &PublishRef<'_>,
    protocol: ProtocolVersion,
) -> Result<usize, EncodeError> {
    let remaining = measure(|c| put_publish_ref(c, publish, protocol))?;
    if remaining > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    Ok(remaining)
}

/// Reserves the whole packet and writes its fixed header. `remaining` was checked.
fn write_header(buf: &mut BytesMut, first: u8, remaining: usize) {
    buf.reserve(1 + varint_len(remaining) + remaining);
    buf.put_u8(first);
    Writer(buf).varint(remaining);
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn publish_first_byte(p: &PublishRef<'_>) -> u8 {
    let qos = p.qos as u8;
    let dup = p.dup && qos > 0;
    0x30 | u8::from(dup) << 3 | qos << 1 | u8::from(p.retain)
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(&PublishRef::from(p)),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Where encoded fields go. Every body is laid out once, by a generic `put_*` function run
/// twice: into a [`Counter`] to size it and find anything unencodable, then, only if that
/// succeeded, into a [`Writer`]. The two passes cannot disagree.
trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    /// A variable byte integer; the counting pass rejects values past [`MAX_VARINT`].
    fn varint(&mut self, v: usize);
    fn slice(&mut self, v: &[u8]);
    /// A two-byte length then the bytes; the counting pass rejects more than 65,535 bytes.
    fn prefixed(&mut self, field: &'static str, v: &[u8]);
    /// Records why the packet cannot be encoded (only the counting pass keeps it).
    fn fail(&mut self, e: EncodeError);
}

/// Counts bytes and keeps the first encoding error.
#[derive(Default)]
struct Counter {
    len: usize,
    error: Option<EncodeError>,
}

impl Counter {
    fn add(&mut self, n: usize) {
        self.len = self.len.saturating_add(n);
    }
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.add(1);
    }
    fn u16(&mut self, _: u16) {
        self.add(2);
    }
    fn u32(&mut self, _: u32) {
        self.add(4);
    }
    fn varint(&mut self, v: usize) {
        if v > MAX_VARINT {
            self.fail(EncodeError::PacketTooLarge(v));
        }
        self.add(varint_len(v));
    }
    fn slice(&mut self, v: &[u8]) {
        self.add(v.len());
    }
    fn prefixed(&mut self, field: &'static str, v: &[u8]) {
        if v.len() > MAX_STRING {
            self.fail(EncodeError::StringTooLong {
                field,
                len: v.len(),
            });
        }
        self.add(2 + v.len());
    }
    fn fail(&mut self, e: EncodeError) {
        self.error.get_or_insert(e);
    }
}

/// Runs a layout function into a [`Counter`].
fn measure(layout: impl FnOnce(&mut Counter)) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    layout(&mut counter);
    match counter.error {
        Some(e) => Err(e),
        None => Ok(counter.len),
    }
}

/// Writes into the output buffer. Only used after a [`Counter`] pass over the same packet
/// succeeded, so lengths fit their prefixes.
struct Writer<'a>(&'a mut BytesMut);

impl Sink for Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn varint(&mut self, mut v: usize) {
        loop {
            let byte = (v % 128) as u8;
            v /= 128;
            if v == 0 {
                self.0.put_u8(byte);
                return;
            }
            self.0.put_u8(byte | 0x80);
        }
    }
    fn slice(&mut self, v: &[u8]) {
        self.0.put_slice(v);
    }
    fn prefixed(&mut self, _: &'static str, v: &[u8]) {
        self.0.put_u16(v.len() as u16);
        self.0.put_slice(v);
    }
    fn fail(&mut self, _: EncodeError) {}
}

fn put_body<S: Sink>(s: &mut S, packet: &Packet, protocol: ProtocolVersion) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => put_connect(s, c),
        Packet::ConnAck(a) => put_connack(s, a, protocol),
        Packet::Publish(p) => put_publish(s, p, protocol),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            s.u16(r.packet_id);
            if v5 {
                put_reason_and_properties(s, r.reason, &r.properties, ACK_PROPERTIES, true);
            }
        }
        Packet::Subscribe(sub) => put_subscribe(s, sub, v5),
        Packet::SubAck(a) => {
            s.u16(a.packet_id);
            if v5 {
                put_properties_section(s, &a.properties, ACK_PROPERTIES);
                s.slice(&a.reasons);
            } else {
                for &code in &a.reasons {
                    s.u8(if code <= 2 { code } else { 0x80 });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            s.u16(u.packet_id);
            if v5 {
                put_properties_section(s, &u.properties, UNSUBSCRIBE_PROPERTIES);
            }
            for filter in &u.filters {
                s.prefixed("topic filter", filter.as_bytes());
            }
        }
        Packet::UnsubAck(a) => {
            s.u16(a.packet_id);
            if v5 {
                put_properties_section(s, &a.properties, ACK_PROPERTIES);
                s.slice(&a.reasons);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                // Always with a property length when a reason is sent: the spec allows
                // omitting it, but rumqttc (our bridge's client) and others fail to parse that.
                put_reason_and_properties(s, d.reason, &d.properties, DISCONNECT_PROPERTIES, false);
            }
        }
        Packet::Auth(a) => {
            if v5 {
                put_reason_and_properties(s, a.reason, &a.properties, AUTH_PROPERTIES, false);
            }
        }
    }
}

fn put_connect<S: Sink>(s: &mut S, c: &Connect) {
    let v5 = c.protocol.is_v5();
    let name: &[u8] = match c.protocol {
        ProtocolVersion::V3_1 => b"MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => b"MQTT",
    };
    s.prefixed("protocol name", name);
    s.u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3;
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        put_properties_section(s, &c.properties, CONNECT_PROPERTIES);
    }
    s.prefixed("client identifier", c.client_id.as_bytes());
    if let Some(will) = &c.will {
        if v5 {
            put_publish_properties_section(
                s,
                &will.properties,
                WILL_PROPERTIES,
                will.will_delay_interval,
            );
        }
        s.prefixed("will topic", will.topic.as_bytes());
        s.prefixed("will payload", &will.payload);
    }
    if let Some(username) = &c.username {
        s.prefixed("user name", username.as_bytes());
    }
    if let Some(password) = &c.password {
        s.prefixed("password", password);
    }
}

fn put_connack<S: Sink>(s: &mut S, a: &ConnAck, protocol: ProtocolVersion) {
    match protocol {
        ProtocolVersion::V5 => {
            s.u8(u8::from(a.session_present));
            s.u8(a.code);
            put_properties_section(s, &a.properties, CONNACK_PROPERTIES);
        }
        ProtocolVersion::V3_1_1 => {
            s.u8(u8::from(a.session_present));
            s.u8(connack_code_to_v3(a.code));
        }
        ProtocolVersion::V3_1 => {
            s.u8(0);
            s.u8(connack_code_to_v3(a.code));
        }
    }
}

fn put_publish<S: Sink>(s: &mut S, p: &Publish, protocol: ProtocolVersion) {
    put_publish_ref(s, &PublishRef::from(p), protocol);
}

fn put_publish_ref<S: Sink>(s: &mut S, p: &PublishRef<'_>, protocol: ProtocolVersion) {
    s.prefixed("topic name", p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        s.u16(p.packet_id);
    }
    if protocol.is_v5() {
        put_publish_properties_section(s, p.properties, PUBLISH_PROPERTIES, None);
    }
    s.slice(p.payload);
}

fn put_subscribe<S: Sink>(s: &mut S, sub: &Subscribe, v5: bool) {
    s.u16(sub.packet_id);
    if v5 {
        put_properties_section(s, &sub.properties, SUBSCRIBE_PROPERTIES);
    }
    for (filter, o) in &sub.filters {
        s.prefixed("topic filter", filter.as_bytes());
        let mut byte = o.qos as u8;
        if v5 {
            byte |= u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling & 0x03) << 4;
        }
        s.u8(byte);
    }
}

/// The optional reason and properties of MQTT 5 acknowledgements, DISCONNECT and AUTH: nothing
/// for success without properties; with `short_reason`, the reason alone when no properties.
fn put_reason_and_properties<S: Sink>(
    s: &mut S,
    reason: u8,
    p: &Properties,
    allowed: u64,
    short_reason: bool,
) {
    let no_properties = matches!(measure(|c| put_properties(c, p, allowed)), Ok(0));
    if reason == 0 && no_properties {
        return;
    }
    s.u8(reason);
    if !(short_reason && no_properties) {
        put_properties_section(s, p, allowed);
    }
}

#[cfg(test)]
mod tests {
    use super::properties::*;
    use super::*;
    use crate::packet::reason;
    use proptest::prelude::*;
    use ProtocolVersion::{V3_1, V3_1_1, V5};

    const MAX: usize = 1 << 20;

    fn s(text: &str) -> ByteStr {
        ByteStr::from(text)
    }

    /// Decodes `bytes` as exactly one packet, expects `packet`, and checks that encoding
    /// `packet` gives the same bytes back.
    #[track_caller]
    fn codes_as(bytes: &[u8], v: ProtocolVersion, packet: Packet) {
        assert_eq!(decodes(bytes, v), packet);
        let mut out = BytesMut::new();
        encode(&packet, v, &mut out).unwrap();
        assert_eq!(&out[..], bytes, "encoding of {packet:?}");
        assert_eq!(encoded_len(&packet, v).unwrap(), bytes.len());
    }

    #[track_caller]
    fn decodes(bytes: &[u8], v: ProtocolVersion) -> Packet {
        let mut buf = BytesMut::from(bytes);
        let packet = decode(&mut buf, v, MAX).unwrap().expect("a whole packet");
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        packet
    }

    #[track_caller]
    fn rejects(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
        let mut buf = BytesMut::from(bytes);
        decode(&mut buf, v, MAX).unwrap_err()
    }

    #[track_caller]
    fn encodes(packet: &Packet, v: ProtocolVersion) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(packet, v, &mut out).unwrap();
        out.to_vec()
    }

    fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: s(client_id),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
        Publish {
            qos,
            topic: s(topic),
            packet_id,
            payload: Bytes::from_static(payload),
            ..Publish::default()
        }
    }

    fn ack(packet_id: u16, reason: u8) -> PubResp {
        PubResp {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }

    // ---- known bytes, MQTT 3.1.1 and 3.1 -------------------------------------------------

    #[test]
    fn a_minimal_3_1_1_connect_codes_as_the_spec_lays_it_out() {
        let bytes = [
            0x10, 0x0F, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'a', b'b', b'c',
        ];
        codes_as(
            &bytes,
            V3_1_1,
            Packet::Connect(Box::new(connect(V3_1_1, "abc"))),
        );
    }

    #[test]
    fn a_3_1_1_connect_with_will_user_name_and_password_codes_every_field() {
        let bytes = [
            0x10, 0x1B, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 10, 0, 1, b'c', 0, 1, b't', 0, 2,
            b'w', b'p', 0, 1, b'u', 0, 2, b'p', b'w',
        ];
        let mut c = connect(V3_1_1, "c");
        c.keep_alive = 10;
        c.will = Some(LastWill {
            topic: s("t"),
            payload: Bytes::from_static(b"wp"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
            will_delay_interval: None,
        });
        c.username = Some(s("u"));
        c.password = Some(Bytes::from_static(b"pw"));
        codes_as(&bytes, V3_1_1, Packet::Connect(Box::new(c)));
    }

    #[test]
    fn a_3_1_connect_is_named_mqisdp_at_level_3_whatever_version_the_caller_passes() {
        let bytes = [
            0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'x',
        ];
        let packet = Packet::Connect(Box::new(connect(V3_1, "x")));
        codes_as(&bytes, V5, packet.clone());
        codes_as(&bytes, V3_1_1, packet);
    }

    #[test]
    fn a_3_1_1_connack_carries_session_present_and_a_return_code() {
        let ok = ConnAck {
            session_present: true,
            ..ConnAck::default()
        };
        codes_as(&[0x20, 2, 1, 0], V3_1_1, Packet::ConnAck(ok));
        let refused = ConnAck {
            code: reason::NOT_AUTHORIZED,
            ..ConnAck::default()
        };
        codes_as(&[0x20, 2, 0, 5], V3_1_1, Packet::ConnAck(refused));
    }

    #[test]
    fn v5_connack_codes_map_to_3_1_1_return_codes_and_back() {
        let pairs = [
            (0x00, 0),
            (0x84, 1),
            (0x85, 2),
            (0x88, 3),
            (0x86, 4),
            (0x87, 5),
        ];
        for (v5, v3) in pairs {
            let packet = Packet::ConnAck(ConnAck {
                code: v5,
                ..ConnAck::default()
            });
            codes_as(&[0x20, 2, 0, v3], V3_1_1, packet);
        }
        for other in [reason::SERVER_BUSY, reason::QUOTA_EXCEEDED, 0x80] {
            let packet = Packet::ConnAck(ConnAck {
                code: other,
                ..ConnAck::default()
            });
            assert_eq!(encodes(&packet, V3_1_1), [0x20, 2, 0, 3]);
        }
    }

    #[test]
    fn a_3_1_connack_never_carries_session_present() {
        let packet = Packet::ConnAck(ConnAck {
            session_present: true,
            ..ConnAck::default()
        });
        assert_eq!(encodes(&packet, V3_1), [0x20, 2, 0, 0]);
        assert_eq!(
            decodes(&[0x20, 2, 1, 0], V3_1),
            Packet::ConnAck(ConnAck::default())
        );
    }

    #[test]
    fn a_3_1_1_publish_codes_flags_topic_packet_id_and_payload() {
        let mut p = publish("a/b", QoS::AtMostOnce, 0, b"hi");
        p.retain = true;
        codes_as(
            &[0x31, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'],
            V3_1_1,
            Packet::Publish(p),
        );
        let mut p = publish("a/b", QoS::AtLeastOnce, 10, b"hi");
        p.dup = true;
        codes_as(
            &[0x3A, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'],
            V3_1_1,
            Packet::Publish(p),
        );
        let p = publish("a", QoS::ExactlyOnce, 0x0102, b"");
        codes_as(&[0x34, 5, 0, 1, b'a', 1, 2], V3_1_1, Packet::Publish(p));
    }

    #[test]
    fn the_four_3_1_1_publish_acknowledgements_are_a_packet_id() {
        codes_as(&[0x40, 2, 0, 10], V3_1_1, Packet::PubAck(ack(10, 0)));
        codes_as(&[0x50, 2, 0, 10], V3_1_1, Packet::PubRec(ack(10, 0)));
        codes_as(&[0x62, 2, 0, 10], V3_1_1, Packet::PubRel(ack(10, 0)));
        codes_as(&[0x70, 2, 0, 10], V3_1_1, Packet::PubComp(ack(10, 0)));
    }

    #[test]
    fn a_3_1_1_subscribe_codes_filters_with_their_qos() {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![
                (
                    s("a/#"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                ),
                (s("+"), SubscriptionOptions::default()),
            ],
            properties: Properties::default(),
        };
        codes_as(
            &[0x82, 12, 0, 1, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'+', 0],
            V3_1_1,
            Packet::Subscribe(sub),
        );
    }

    #[test]
    fn a_3_1_1_suback_encodes_every_failure_as_0x80() {
        let suback = SubAck {
            packet_id: 1,
            reasons: vec![1, 0x80],
            properties: Properties::default(),
        };
        codes_as(&[0x90, 4, 0, 1, 1, 0x80], V3_1_1, Packet::SubAck(suback));
        let failures = Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![reason::NOT_AUTHORIZED, reason::TOPIC_FILTER_INVALID, 2],
            properties: Properties::default(),
        });
        assert_eq!(encodes(&failures, V3_1_1), [0x90, 5, 0, 1, 0x80, 0x80, 2]);
    }

    #[test]
    fn a_3_1_1_unsubscribe_and_unsuback_code_without_reasons() {
        let unsub = Unsubscribe {
            packet_id: 1,
            filters: vec![s("a/b")],
            properties: Properties::default(),
        };
        codes_as(
            &[0xA2, 7, 0, 1, 0, 3, b'a', b'/', b'b'],
            V3_1_1,
            Packet::Unsubscribe(unsub),
        );
        let unsuback = UnsubAck {
            packet_id: 1,
            ..UnsubAck::default()
        };
        codes_as(&[0xB0, 2, 0, 1], V3_1_1, Packet::UnsubAck(unsuback));
        let with_reasons = Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            reasons: vec![0x11],
            properties: Properties::default(),
        });
        assert_eq!(encodes(&with_reasons, V3_1_1), [0xB0, 2, 0, 1]);
    }

    #[test]
    fn pings_and_a_3_1_1_disconnect_are_two_bytes() {
        codes_as(&[0xC0, 0], V3_1_1, Packet::PingReq);
        codes_as(&[0xD0, 0], V3_1_1, Packet::PingResp);
        codes_as(
            &[0xE0, 0],
            V3_1_1,
            Packet::Disconnect(Disconnect::default()),
        );
        let with_reason = Packet::Disconnect(Disconnect {
            reason: reason::SERVER_SHUTTING_DOWN,
            properties: Properties::default(),
        });
        assert_eq!(encodes(&with_reason, V3_1_1), [0xE0, 0]);
    }

    // ---- known bytes, MQTT 5 -------------------------------------------------------------

    #[test]
    fn a_v5_connect_carries_properties_before_the_client_id() {
        let bytes = [
            0x10, 0x13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 5, 0x11, 0, 0, 0, 120, 0, 1,
            b'x',
        ];
        let mut c = connect(V5, "x");
        c.properties.session_expiry_interval = Some(120);
        codes_as(&bytes, V3_1_1, Packet::Connect(Box::new(c)));
    }

    #[test]
    fn a_v5_connect_will_carries_its_own_properties_and_delay() {
        let bytes = [
            0x10, 0x1B, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 0, 0, 0, 1, b'c', 7, 0x01, 1,
            0x18, 0, 0, 0, 10, 0, 1, b't', 0, 0,
        ];
        let mut c = connect(V5, "c");
        c.keep_alive = 0;
        c.will = Some(LastWill {
            topic: s("t"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                ..PublishProperties::default()
            },
            will_delay_interval: Some(10),
        });
        codes_as(&bytes, V5, Packet::Connect(Box::new(c)));
    }

    #[test]
    fn a_v5_connect_may_carry_a_password_without_a_user_name() {
        let bytes = [
            0x10, 0x11, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 60, 0, 0, 0, 0, 2, b'p', b'w',
        ];
        let mut c = connect(V5, "");
        c.password = Some(Bytes::from_static(b"pw"));
        codes_as(&bytes, V5, Packet::Connect(Box::new(c)));
    }

    #[test]
    fn a_v5_connack_carries_a_reason_and_properties() {
        codes_as(&[0x20, 3, 0, 0, 0], V5, Packet::ConnAck(ConnAck::default()));
        let mut a = ConnAck {
            session_present: true,
            code: 0,
            properties: Properties::default(),
        };
        a.properties.receive_maximum = Some(10);
        a.properties.maximum_qos = Some(1);
        codes_as(
            &[0x20, 8, 1, 0, 5, 0x21, 0, 10, 0x24, 1],
            V5,
            Packet::ConnAck(a),
        );
        let refused = ConnAck {
            code: reason::BAD_USERNAME_OR_PASSWORD,
            ..ConnAck::default()
        };
        codes_as(&[0x20, 3, 0, 0x86, 0], V5, Packet::ConnAck(refused));
    }

    #[test]
    fn a_v5_publish_may_have_an_empty_topic_when_it_carries_a_topic_alias() {
        let mut p = publish("t", QoS::AtMostOnce, 0, b"hi");
        p.properties.topic_alias = Some(1);
        codes_as(
            &[0x30, 9, 0, 1, b't', 3, 0x23, 0, 1, b'h', b'i'],
            V5,
            Packet::Publish(p.clone()),
        );
        p.topic = ByteStr::default();
        codes_as(
            &[0x30, 8, 0, 0, 3, 0x23, 0, 1, b'h', b'i'],
            V5,
            Packet::Publish(p),
        );
    }

    #[test]
    fn a_v5_publish_codes_repeated_subscription_ids_and_user_properties_in_order() {
        let mut p = publish("t", QoS::AtLeastOnce, 5, b"x");
        p.properties.payload_format_indicator = Some(1);
        p.properties.subscription_identifiers = vec![128, 1];
        p.properties.user_properties = vec![(s("k"), s("v")), (s("k"), s("w"))];
        let bytes = [
            0x32, 0x1C, 0, 1, b't', 0, 5, 21, 0x01, 1, 0x0B, 0x80, 0x01, 0x0B, 1, 0x26, 0, 1, b'k',
            0, 1, b'v', 0x26, 0, 1, b'k', 0, 1, b'w', b'x',
        ];
        codes_as(&bytes, V5, Packet::Publish(p));
    }

    #[test]
    fn v5_acknowledgements_omit_reason_and_properties_when_they_can() {
        codes_as(&[0x40, 2, 0, 1], V5, Packet::PubAck(ack(1, 0)));
        codes_as(&[0x40, 3, 0, 1, 0x10], V5, Packet::PubAck(ack(1, 0x10)));
        codes_as(&[0x50, 3, 0, 1, 0x80], V5, Packet::PubRec(ack(1, 0x80)));
        codes_as(&[0x62, 3, 0, 1, 0x92], V5, Packet::PubRel(ack(1, 0x92)));
        codes_as(&[0x70, 2, 0, 1], V5, Packet::PubComp(ack(1, 0)));
        let mut with_string = ack(1, 0x87);
        with_string.properties.reason_string = Some(s("x"));
        codes_as(
            &[0x40, 8, 0, 1, 0x87, 4, 0x1F, 0, 1, b'x'],
            V5,
            Packet::PubAck(with_string),
        );
        // The long form of a success without properties decodes too.
        assert_eq!(
            decodes(&[0x40, 4, 0, 1, 0, 0], V5),
            Packet::PubAck(ack(1, 0))
        );
    }

    #[test]
    fn a_v5_subscribe_codes_subscription_options_and_identifier() {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![(
                s("a/b"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                },
            )],
            properties: Properties {
                subscription_identifier: Some(7),
                ..Properties::default()
            },
        };
        codes_as(
            &[0x82, 11, 0, 1, 2, 0x0B, 7, 0, 3, b'a', b'/', b'b', 0x2D],
            V5,
            Packet::Subscribe(sub),
        );
    }

    #[test]
    fn v5_suback_unsubscribe_and_unsuback_code_properties_and_reasons() {
        let suback = SubAck {
            packet_id: 1,
            reasons: vec![0, 0x97],
            properties: Properties::default(),
        };
        codes_as(&[0x90, 5, 0, 1, 0, 0, 0x97], V5, Packet::SubAck(suback));
        let unsub = Unsubscribe {
            packet_id: 1,
            filters: vec![s("a/b")],
            properties: Properties::default(),
        };
        codes_as(
            &[0xA2, 8, 0, 1, 0, 0, 3, b'a', b'/', b'b'],
            V5,
            Packet::Unsubscribe(unsub),
        );
        let unsuback = UnsubAck {
            packet_id: 1,
            reasons: vec![0x11],
            properties: Properties::default(),
        };
        codes_as(&[0xB0, 4, 0, 1, 0, 0x11], V5, Packet::UnsubAck(unsuback));
    }

    #[test]
    fn a_v5_disconnect_has_short_forms_for_success_and_a_bare_reason() {
        codes_as(&[0xE0, 0], V5, Packet::Disconnect(Disconnect::default()));
        let taken_over = Disconnect {
            reason: reason::SESSION_TAKEN_OVER,
            properties: Properties::default(),
        };
        codes_as(&[0xE0, 2, 0x8E, 0], V5, Packet::Disconnect(taken_over));
        let with_will = Disconnect {
            reason: reason::DISCONNECT_WITH_WILL,
            properties: Properties {
                session_expiry_interval: Some(60),
                ..Properties::default()
            },
        };
        codes_as(
            &[0xE0, 7, 0x04, 5, 0x11, 0, 0, 0, 60],
            V5,
            Packet::Disconnect(with_will),
        );
    }

    #[test]
    fn a_v5_auth_carries_its_method() {
        codes_as(&[0xF0, 0], V5, Packet::Auth(Auth::default()));
        let cont = Auth {
            reason: 0x18,
            properties: Properties {
                authentication_method: Some(s("abc")),
                ..Properties::default()
            },
        };
        codes_as(
            &[0xF0, 8, 0x18, 6, 0x15, 0, 3, b'a', b'b', b'c'],
            V5,
            Packet::Auth(cont),
        );
        let bare = Packet::Auth(Auth {
            reason: 0x19,
            properties: Properties::default(),
        });
        codes_as(&[0xF0, 2, 0x19, 0], V5, bare.clone());
        assert_eq!(decodes(&[0xF0, 1, 0x19], V5), bare);
    }

    #[test]
    fn properties_a_packet_may_not_carry_are_not_encoded() {
        let packet = Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties {
                maximum_qos: Some(1),
                subscription_identifier: Some(3),
                ..Properties::default()
            },
        });
        assert_eq!(encodes(&packet, V5), [0xE0, 0]);
        let mut p = publish("t", QoS::AtMostOnce, 0, b"");
        p.properties.topic_alias = Some(3);
        assert_eq!(encodes(&Packet::Publish(p), V3_1_1), [0x30, 3, 0, 1, b't']);
    }

    #[test]
    fn the_dup_flag_and_packet_id_are_not_encoded_at_qos_0() {
        let mut p = publish("t", QoS::AtMostOnce, 9, b"");
        p.dup = true;
        assert_eq!(encodes(&Packet::Publish(p), V5), [0x30, 4, 0, 1, b't', 0]);
    }

    // ---- framing ---------------------------------------------------------------------------

    #[test]
    fn a_256mb_length_prefix_is_rejected_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        let e = decode(&mut buf, V5, MAX).unwrap_err();
        assert_eq!(
            e,
            DecodeError::PacketTooLarge {
                size: 268_435_460,
                max: MAX
            }
        );
        assert_eq!(
            e.to_string(),
            "packet of 268435460 bytes exceeds maximum 1048576"
        );
        assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
    }

    #[test]
    fn the_maximum_packet_size_counts_the_fixed_header() {
        let bytes = [0x30, 3, 0, 1, b't'];
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(decode(&mut buf, V3_1_1, 5).unwrap().is_some());
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode(&mut buf, V3_1_1, 4),
            Err(DecodeError::PacketTooLarge { size: 5, max: 4 })
        );
    }

    #[test]
    fn a_remaining_length_longer_than_4_bytes_is_malformed_as_soon_as_its_fourth_byte_arrives() {
        let e = rejects(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], V3_1_1);
        assert_eq!(e, DecodeError::RemainingLengthTooLong);
        assert_eq!(e.to_string(), "remaining length exceeds 4 bytes");
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
        let mut three = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
        assert_eq!(decode(&mut three, V3_1_1, usize::MAX), Ok(None));
    }

    #[test]
    fn a_remaining_length_that_is_not_minimally_encoded_is_malformed() {
        assert_eq!(
            rejects(&[0xC0, 0x80, 0x00], V3_1_1),
            DecodeError::NonMinimalVarInt { packet: "PINGREQ" }
        );
    }

    #[test]
    fn incomplete_input_returns_none_at_every_split_point_and_leaves_the_buffer_alone() {
        let mut will = connect(V5, "client");
        will.will = Some(LastWill {
            topic: s("w"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties::default(),
            will_delay_interval: Some(5),
        });
        will.username = Some(s("u"));
        let mut p = publish("a/b", QoS::AtLeastOnce, 3, &[7; 300]);
        p.properties.user_properties = vec![(s("k"), s("v"))];
        let packets = [
            Packet::Connect(Box::new(will)),
            Packet::Publish(p),
            Packet::PingReq,
        ];
        for packet in packets {
            let bytes = encodes(&packet, V5);
            for split in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..split]);
                assert_eq!(decode(&mut buf, V5, MAX), Ok(None), "split at {split}");
                assert_eq!(&buf[..], &bytes[..split]);
            }
            assert_eq!(decodes(&bytes, V5), packet);
        }
    }

    #[test]
    fn two_packets_in_one_buffer_decode_one_after_the_other() {
        let mut buf = BytesMut::new();
        let first = Packet::Publish(publish("a", QoS::AtLeastOnce, 1, b"one"));
        let second = Packet::PubAck(ack(1, 0));
        encode(&first, V3_1_1, &mut buf).unwrap();
        encode(&second, V3_1_1, &mut buf).unwrap();
        buf.extend_from_slice(&[0xC0]);
        assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(first)));
        assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(second)));
        assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(None));
        assert_eq!(&buf[..], [0xC0]);
        buf.extend_from_slice(&[0]);
        assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(Packet::PingReq)));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_decoded_publish_shares_the_receive_buffer() {
        let mut buf = BytesMut::from(&[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'][..]);
        let start = buf.as_ptr();
        let Some(Packet::Publish(p)) = decode(&mut buf, V3_1_1, MAX).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(p.topic.as_bytes().as_ptr(), start.wrapping_add(4));
        assert_eq!(p.payload.as_ptr(), start.wrapping_add(7));
    }

    // ---- fixed header rules -----------------------------------------------------------------

    #[test]
    fn reserved_fixed_header_flags_are_rejected() {
        for bytes in [
            [0x60, 2, 0, 1],
            [0x63, 2, 0, 1],
            [0x41, 2, 0, 1],
            [0x80, 2, 0, 1],
            [0xA0, 2, 0, 1],
            [0x92, 2, 0, 1],
        ] {
            let e = rejects(&bytes, V5);
            assert!(
                matches!(e, DecodeError::InvalidHeaderFlags { .. }),
                "{bytes:?}: {e}"
            );
            assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
        }
        assert_eq!(
            rejects(&[0xC1, 0], V3_1_1).to_string(),
            "invalid fixed header flags 0b0001 for PINGREQ"
        );
    }

    #[test]
    fn packet_type_0_is_reserved() {
        assert_eq!(rejects(&[0x00, 0], V5), DecodeError::ReservedPacketType);
    }

    #[test]
    fn a_publish_at_qos_3_is_malformed() {
        assert_eq!(
            rejects(&[0x36, 5, 0, 1, b't', 0, 1], V3_1_1),
            DecodeError::InvalidQoS { packet: "PUBLISH" }
        );
    }

    #[test]
    fn a_qos_0_publish_with_dup_set_is_rejected_in_every_version() {
        for v in [V3_1, V3_1_1, V5] {
            assert_eq!(
                rejects(&[0x38, 4, 0, 1, b't', 0], v),
                DecodeError::DupWithQoS0
            );
        }
    }

    #[test]
    fn auth_is_rejected_outside_v5() {
        let e = rejects(&[0xF0, 0], V3_1_1);
        assert_eq!(e, DecodeError::AuthOutsideV5);
        assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
    }

    // ---- body rules -----------------------------------------------------------------------

    #[test]
    fn invalid_utf8_or_u0000_in_a_topic_is_rejected() {
        let e = rejects(&[0x30, 4, 0, 2, 0xC3, 0x28], V3_1_1);
        assert_eq!(
            e,
            DecodeError::InvalidUtf8 {
                field: "topic name"
            }
        );
        assert_eq!(e.to_string(), "invalid UTF-8 in topic name");
        assert_eq!(
            rejects(&[0x30, 4, 0, 2, b'a', 0], V3_1_1),
            DecodeError::NullCharacter {
                field: "topic name"
            }
        );
    }

    #[test]
    fn invalid_strings_in_client_id_user_name_and_properties_are_rejected() {
        let client_id = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, 0xFF,
        ];
        assert_eq!(
            rejects(&client_id, V3_1_1),
            DecodeError::InvalidUtf8 {
                field: "client identifier"
            }
        );
        let user_name = [
            0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 60, 0, 0, 0, 2, b'u', 0,
        ];
        assert_eq!(
            rejects(&user_name, V3_1_1),
            DecodeError::NullCharacter { field: "user name" }
        );
        let reason_string = [0x40, 7, 0, 1, 0x80, 3, 0x1F, 0, 1];
        assert!(matches!(
            rejects(&reason_string, V5),
            DecodeError::Truncated { .. }
        ));
        let reason_string = [0x40, 8, 0, 1, 0x80, 4, 0x1F, 0, 1, 0xC0];
        assert_eq!(
            rejects(&reason_string, V5),
            DecodeError::InvalidUtf8 {
                field: "reason string"
            }
        );
        let user_property = [0x40, 11, 0, 1, 0x80, 7, 0x26, 0, 1, b'k', 0, 1, 0];
        assert_eq!(
            rejects(&user_property, V5),
            DecodeError::NullCharacter {
                field: "user property"
            }
        );
    }

    #[test]
    fn wildcards_in_a_publish_topic_are_rejected() {
        for wildcard in [b'+', b'#'] {
            let e = rejects(&[0x30, 5, 0, 3, b'a', b'/', wildcard], V3_1_1);
            assert_eq!(e, DecodeError::WildcardInTopicName { packet: "PUBLISH" });
            assert_eq!(e.reason_code(), reason::TOPIC_NAME_INVALID);
        }
    }

    #[test]
    fn an_empty_publish_topic_is_rejected_without_a_topic_alias() {
        let empty = DecodeError::EmptyTopicName { packet: "PUBLISH" };
        assert_eq!(rejects(&[0x30, 2, 0, 0], V3_1_1), empty);
        assert_eq!(rejects(&[0x30, 3, 0, 0, 0], V5), empty);
        // A topic alias is not a v3 property: without properties the alias bytes are payload.
        assert_eq!(rejects(&[0x30, 5, 0, 0, 0x23, 0, 1], V3_1_1), empty);
    }

    #[test]
    fn packet_id_0_is_rejected_where_one_is_required() {
        let cases: [(&[u8], ProtocolVersion, &str); 7] = [
            (&[0x32, 5, 0, 1, b't', 0, 0], V3_1_1, "PUBLISH"),
            (&[0x40, 2, 0, 0], V3_1_1, "PUBACK"),
            (&[0x62, 2, 0, 0], V5, "PUBREL"),
            (&[0x82, 6, 0, 0, 0, 1, b'a', 0], V3_1_1, "SUBSCRIBE"),
            (&[0x90, 3, 0, 0, 0], V3_1_1, "SUBACK"),
            (&[0xA2, 5, 0, 0, 0, 1, b'a'], V3_1_1, "UNSUBSCRIBE"),
            (&[0xB0, 2, 0, 0], V3_1_1, "UNSUBACK"),
        ];
        for (bytes, v, packet) in cases {
            assert_eq!(rejects(bytes, v), DecodeError::ZeroPacketId { packet });
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_without_filters_are_rejected() {
        assert_eq!(
            rejects(&[0x82, 2, 0, 1], V3_1_1),
            DecodeError::NoTopicFilters {
                packet: "SUBSCRIBE"
            }
        );
        assert_eq!(
            rejects(&[0x82, 3, 0, 1, 0], V5),
            DecodeError::NoTopicFilters {
                packet: "SUBSCRIBE"
            }
        );
        assert_eq!(
            rejects(&[0xA2, 2, 0, 1], V3_1_1),
            DecodeError::NoTopicFilters {
                packet: "UNSUBSCRIBE"
            }
        );
    }

    #[test]
    fn suback_and_v5_unsuback_without_reasons_are_rejected() {
        assert_eq!(
            rejects(&[0x90, 2, 0, 1], V3_1_1),
            DecodeError::NoReasonCodes { packet: "SUBACK" }
        );
        assert_eq!(
            rejects(&[0xB0, 3, 0, 1, 0], V5),
            DecodeError::NoReasonCodes { packet: "UNSUBACK" }
        );
    }

    #[test]
    fn reserved_bits_in_subscription_options_are_rejected() {
        // 3.1.1 has only the QoS bits; v5 reserves the top two, retain handling 3 and QoS 3.
        for (options, v) in [
            (0x04, V3_1_1),
            (0x03, V3_1_1),
            (0x40, V5),
            (0x80, V5),
            (0x30, V5),
            (0x03, V5),
        ] {
            let bytes = if v.is_v5() {
                vec![0x82, 7, 0, 1, 0, 0, 1, b'a', options]
            } else {
                vec![0x82, 6, 0, 1, 0, 1, b'a', options]
            };
            assert_eq!(
                rejects(&bytes, v),
                DecodeError::InvalidSubscriptionOptions(options),
                "{options:#x} in {v:?}"
            );
        }
    }

    #[test]
    fn a_property_the_packet_may_not_carry_is_rejected() {
        // Session expiry interval in PUBACK.
        let e = rejects(&[0x40, 9, 0, 1, 0x80, 5, 0x11, 0, 0, 0, 1], V5);
        assert_eq!(
            e,
            DecodeError::InvalidProperty {
                packet: "PUBACK",
                id: 0x11
            }
        );
        assert_eq!(e.to_string(), "property 0x11 not allowed in PUBACK");
        // Topic alias in a will.
        let will = [
            0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x04, 0, 0, 0, 0, 0, 3, 0x23, 0, 1, 0, 1,
            b't', 0, 0,
        ];
        assert_eq!(
            rejects(&will, V5),
            DecodeError::InvalidProperty {
                packet: "will properties",
                id: 0x23
            }
        );
        // Identifiers that exist nowhere.
        for id in [0x00, 0x7F, 0xFF] {
            assert!(matches!(
                rejects(&[0x30, 6, 0, 1, b't', 2, id, 0], V5),
                DecodeError::InvalidProperty { .. }
            ));
        }
    }

    #[test]
    fn a_single_value_property_given_twice_is_rejected() {
        let e = rejects(&[0x20, 9, 0, 0, 6, 0x21, 0, 1, 0x21, 0, 2], V5);
        assert_eq!(
            e,
            DecodeError::DuplicateProperty {
                packet: "CONNACK",
                id: 0x21
            }
        );
        assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
        assert_eq!(
            rejects(&[0x30, 10, 0, 1, b't', 6, 0x23, 0, 1, 0x23, 0, 2], V5),
            DecodeError::DuplicateProperty {
                packet: "PUBLISH",
                id: 0x23
            }
        );
        assert_eq!(
            rejects(&[0x82, 10, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0], V5),
            DecodeError::DuplicateProperty {
                packet: "SUBSCRIBE",
                id: 0x0B
            }
        );
    }

    #[test]
    fn property_values_out_of_range_are_rejected() {
        let invalid = |packet, id| DecodeError::InvalidPropertyValue { packet, id };
        // Receive maximum 0.
        assert_eq!(
            rejects(&[0x20, 6, 0, 0, 3, 0x21, 0, 0], V5),
            invalid("CONNACK", 0x21)
        );
        // Payload format indicator 2, topic alias 0, subscription identifier 0.
        assert_eq!(
            rejects(&[0x30, 6, 0, 1, b't', 2, 0x01, 2], V5),
            invalid("PUBLISH", 0x01)
        );
        assert_eq!(
            rejects(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5),
            invalid("PUBLISH", 0x23)
        );
        assert_eq!(
            rejects(&[0x30, 6, 0, 1, b't', 2, 0x0B, 0], V5),
            invalid("PUBLISH", 0x0B)
        );
        // Response topic with a wildcard.
        assert_eq!(
            rejects(&[0x30, 9, 0, 1, b't', 5, 0x08, 0, 2, b'a', b'#'], V5),
            invalid("PUBLISH", 0x08)
        );
        // Authentication data without a method.
        assert_eq!(
            rejects(&[0xF0, 6, 0x18, 4, 0x16, 0, 1, 9], V5),
            invalid("AUTH", 0x16)
        );
    }

    #[test]
    fn a_non_minimal_or_overlong_property_varint_is_malformed() {
        assert_eq!(
            rejects(&[0x30, 7, 0, 1, b't', 3, 0x0B, 0x81, 0x00], V5),
            DecodeError::NonMinimalVarInt { packet: "PUBLISH" }
        );
        assert_eq!(
            rejects(&[0x30, 8, 0, 1, b't', 0x80, 0x80, 0x80, 0x80, 0x01], V5),
            DecodeError::VarIntTooLong { packet: "PUBLISH" }
        );
    }

    #[test]
    fn a_property_section_longer_than_the_body_is_truncated() {
        assert_eq!(
            rejects(&[0x40, 5, 0, 1, 0x80, 9, 0x1F], V5),
            DecodeError::Truncated { packet: "PUBACK" }
        );
    }

    #[test]
    fn connect_reserved_flag_bit_0_is_rejected() {
        let bytes = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0];
        assert_eq!(
            rejects(&bytes, V3_1_1),
            DecodeError::ReservedFlags { packet: "CONNECT" }
        );
    }

    #[test]
    fn will_qos_or_retain_without_the_will_flag_and_will_qos_3_are_rejected() {
        let with_flags = |flags| {
            [
                0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 0,
            ]
        };
        assert_eq!(
            rejects(&with_flags(0x08), V3_1_1),
            DecodeError::InvalidWillFlags
        );
        assert_eq!(
            rejects(&with_flags(0x20), V3_1_1),
            DecodeError::InvalidWillFlags
        );
        assert_eq!(
            rejects(&with_flags(0x1C), V3_1_1),
            DecodeError::InvalidQoS { packet: "CONNECT" }
        );
    }

    #[test]
    fn a_will_topic_must_be_a_non_empty_topic_name() {
        let will = |topic: &[u8]| {
            let mut bytes = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x04, 0, 0, 0, 0];
            bytes.extend_from_slice(&[0, topic.len() as u8]);
            bytes.extend_from_slice(topic);
            bytes.extend_from_slice(&[0, 0]);
            bytes[1] = bytes.len() as u8 - 2;
            bytes
        };
        assert!(matches!(decodes(&will(b"t"), V3_1_1), Packet::Connect(_)));
        assert_eq!(
            rejects(&will(b""), V3_1_1),
            DecodeError::EmptyTopicName { packet: "CONNECT" }
        );
        assert_eq!(
            rejects(&will(b"a/+"), V3_1_1),
            DecodeError::WildcardInTopicName { packet: "CONNECT" }
        );
    }

    #[test]
    fn a_password_without_a_user_name_is_rejected_before_v5() {
        let bytes = |level| {
            [
                0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', level, 0x42, 0, 60, 0, 0, 0, 1, b'p',
            ]
        };
        assert_eq!(
            rejects(&bytes(4), V3_1_1),
            DecodeError::PasswordWithoutUsername
        );
    }

    #[test]
    fn bytes_after_the_last_field_are_rejected() {
        let cases: [(&[u8], ProtocolVersion, &str); 5] = [
            (&[0x40, 3, 0, 1, 0], V3_1_1, "PUBACK"),
            (&[0xC0, 1, 0], V3_1_1, "PINGREQ"),
            (&[0xE0, 1, 0], V3_1_1, "DISCONNECT"),
            (&[0x20, 3, 0, 0, 0], V3_1_1, "CONNACK"),
            (
                &[
                    0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0, 9,
                ],
                V3_1_1,
                "CONNECT",
            ),
        ];
        for (bytes, v, packet) in cases {
            assert_eq!(
                rejects(bytes, v),
                DecodeError::TrailingBytes { packet, extra: 1 }
            );
        }
        assert_eq!(
            rejects(&[0xB0, 3, 0, 1, 0x11], V3_1_1).to_string(),
            "UNSUBACK has 1 bytes after its last field"
        );
    }

    #[test]
    fn unknown_protocol_levels_and_names_are_rejected_with_their_own_errors() {
        let bytes = |name: &[u8], level: u8| {
            let mut bytes = vec![0x10, 0, 0, name.len() as u8];
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(&[level, 0x02, 0, 60, 0, 0]);
            bytes[1] = bytes.len() as u8 - 2;
            bytes
        };
        let e = rejects(&bytes(b"MQTT", 6), V3_1_1);
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion(6));
        assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(
            rejects(&bytes(b"MQTT", 3), V3_1_1),
            DecodeError::UnsupportedProtocolVersion(3)
        );
        assert_eq!(
            rejects(&bytes(b"MQIsdp", 4), V3_1_1),
            DecodeError::UnsupportedProtocolVersion(4)
        );
        assert_eq!(
            rejects(&bytes(b"MQTX", 4), V3_1_1),
            DecodeError::InvalidProtocolName
        );
        assert_eq!(
            rejects(&bytes(b"\xFF\xFE", 4), V3_1_1),
            DecodeError::InvalidProtocolName
        );
    }

    #[test]
    fn reason_codes_the_packet_type_does_not_define_are_rejected() {
        let invalid = |packet, code| DecodeError::InvalidReasonCode { packet, code };
        assert_eq!(rejects(&[0x40, 3, 0, 1, 0x05], V5), invalid("PUBACK", 0x05));
        assert_eq!(rejects(&[0x62, 3, 0, 1, 0x10], V5), invalid("PUBREL", 0x10));
        assert_eq!(rejects(&[0x20, 2, 0, 6], V3_1_1), invalid("CONNACK", 6));
        assert_eq!(rejects(&[0x20, 3, 0, 0x01, 0], V5), invalid("CONNACK", 1));
        assert_eq!(rejects(&[0x90, 3, 0, 1, 3], V3_1_1), invalid("SUBACK", 3));
        assert_eq!(
            rejects(&[0xB0, 4, 0, 1, 0, 0x01], V5),
            invalid("UNSUBACK", 1)
        );
        assert_eq!(rejects(&[0xE0, 1, 0x10], V5), invalid("DISCONNECT", 0x10));
        assert_eq!(rejects(&[0xF0, 1, 0x01], V5), invalid("AUTH", 0x01));
    }

    #[test]
    fn connack_reserved_acknowledge_flags_are_rejected() {
        let reserved = DecodeError::ReservedFlags { packet: "CONNACK" };
        assert_eq!(rejects(&[0x20, 2, 0x02, 0], V3_1_1), reserved);
        assert_eq!(rejects(&[0x20, 3, 0x80, 0, 0], V5), reserved);
    }

    #[test]
    fn truncated_fields_are_malformed() {
        let e = rejects(&[0x82, 5, 0, 1, 0, 5, b'a'], V3_1_1);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: "SUBSCRIBE"
            }
        );
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
        assert_eq!(
            rejects(&[0x40, 1, 0], V3_1_1),
            DecodeError::Truncated { packet: "PUBACK" }
        );
    }

    // ---- encode errors ------------------------------------------------------------------

    #[test]
    fn a_string_longer_than_65535_bytes_is_not_encoded() {
        let long = "x".repeat(65_536);
        let packet = Packet::Publish(publish(&long, QoS::AtMostOnce, 0, b""));
        let mut buf = BytesMut::from(&b"kept"[..]);
        assert_eq!(
            encode(&packet, V3_1_1, &mut buf),
            Err(EncodeError::StringTooLong {
                field: "topic name",
                len: 65_536
            })
        );
        assert_eq!(&buf[..], b"kept");
        let mut d = Disconnect::default();
        d.properties.reason_string = Some(ByteStr::from(long));
        assert!(matches!(
            encode(&Packet::Disconnect(d), V5, &mut buf),
            Err(EncodeError::StringTooLong {
                field: "reason string",
                ..
            })
        ));
        assert_eq!(&buf[..], b"kept");
    }

    #[test]
    fn a_packet_past_the_largest_remaining_length_is_not_encoded() {
        let mut p = publish("t", QoS::AtMostOnce, 0, b"");
        // Zeroed allocations are lazy: this does not touch 256 MB.
        p.payload = Bytes::from(vec![0u8; MAX_VARINT]);
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_publish(&p, V3_1_1, &mut buf),
            Err(EncodeError::PacketTooLarge(MAX_VARINT + 3))
        );
        assert!(buf.is_empty());
        assert_eq!(
            EncodeError::PacketTooLarge(MAX_VARINT + 3).to_string(),
            "packet too large to encode: 268435458 bytes exceeds 268435455"
        );
    }

    #[test]
    fn auth_and_oversized_subscription_ids_are_not_encoded() {
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::Auth(Auth::default()), V3_1_1, &mut buf),
            Err(EncodeError::NotInProtocol {
                packet: "AUTH",
                protocol: V3_1_1
            })
        );
        let mut p = publish("t", QoS::AtMostOnce, 0, b"");
        p.properties.subscription_identifiers = vec![1, u32::MAX];
        assert_eq!(
            encode_publish(&p, V5, &mut buf),
            Err(EncodeError::SubscriptionIdentifierTooLarge(u32::MAX))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn every_decode_error_has_a_v5_reason_code_of_its_class() {
        assert_eq!(DecodeError::InvalidProtocolName.reason_code(), 0x82);
        assert_eq!(
            DecodeError::ZeroPacketId { packet: "PUBACK" }.reason_code(),
            0x82
        );
        assert_eq!(
            DecodeError::InvalidSubscriptionOptions(0xC0).reason_code(),
            0x81
        );
        assert_eq!(
            DecodeError::InvalidProperty {
                packet: "PUBACK",
                id: 1
            }
            .reason_code(),
            0x81
        );
    }

    // ---- property tests ---------------------------------------------------------------------

    fn text() -> impl Strategy<Value = ByteStr> {
        "[^\\x00]{0,6}".prop_map(ByteStr::from)
    }

    fn topic_name() -> impl Strategy<Value = ByteStr> {
        "[a-z0-9/ é€]{1,8}".prop_map(ByteStr::from)
    }

    fn binary() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
    }

    fn flag() -> impl Strategy<Value = u8> {
        0u8..=1
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    fn one_of(codes: &'static [u8]) -> impl Strategy<Value = u8> {
        proptest::sample::select(codes)
    }

    fn user_properties() -> impl Strategy<Value = Vec<(ByteStr, ByteStr)>> {
        proptest::collection::vec((text(), text()), 0..3)
    }

    /// Valid properties restricted to those a packet with `allowed` may carry.
    fn properties(allowed: u64) -> impl Strategy<Value = Properties> {
        use proptest::option::of;
        (
            (
                of(any::<u32>()),
                of(text()),
                of(any::<u16>()),
                of(text()),
                of(binary()),
                of(flag()),
                of(flag()),
            ),
            (
                of(text()),
                of(text()),
                of(text()),
                of(1u16..),
                of(any::<u16>()),
                of(flag()),
                of(flag()),
            ),
            (
                of(1u32..),
                of(flag()),
                of(flag()),
                of(flag()),
                of(1u32..=MAX_VARINT as u32),
                user_properties(),
            ),
        )
            .prop_map(move |(a, b, c)| {
                fn keep<T>(allowed: u64, id: u8, v: Option<T>) -> Option<T> {
                    v.filter(|_| allowed & bit(id) != 0)
                }
                let mut p = Properties {
                    session_expiry_interval: keep(allowed, SESSION_EXPIRY_INTERVAL, a.0),
                    assigned_client_identifier: keep(allowed, ASSIGNED_CLIENT_IDENTIFIER, a.1),
                    server_keep_alive: keep(allowed, SERVER_KEEP_ALIVE, a.2),
                    authentication_method: keep(allowed, AUTHENTICATION_METHOD, a.3),
                    authentication_data: keep(allowed, AUTHENTICATION_DATA, a.4),
                    request_problem_information: keep(allowed, REQUEST_PROBLEM_INFORMATION, a.5),
                    request_response_information: keep(allowed, REQUEST_RESPONSE_INFORMATION, a.6),
                    response_information: keep(allowed, RESPONSE_INFORMATION, b.0),
                    server_reference: keep(allowed, SERVER_REFERENCE, b.1),
                    reason_string: keep(allowed, REASON_STRING, b.2),
                    receive_maximum: keep(allowed, RECEIVE_MAXIMUM, b.3),
                    topic_alias_maximum: keep(allowed, TOPIC_ALIAS_MAXIMUM, b.4),
                    maximum_qos: keep(allowed, MAXIMUM_QOS, b.5),
                    retain_available: keep(allowed, RETAIN_AVAILABLE, b.6),
                    maximum_packet_size: keep(allowed, MAXIMUM_PACKET_SIZE, c.0),
                    wildcard_subscription_available: keep(
                        allowed,
                        WILDCARD_SUBSCRIPTION_AVAILABLE,
                        c.1,
                    ),
                    subscription_identifier_available: keep(
                        allowed,
                        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                        c.2,
                    ),
                    shared_subscription_available: keep(
                        allowed,
                        SHARED_SUBSCRIPTION_AVAILABLE,
                        c.3,
                    ),
                    subscription_identifier: keep(allowed, SUBSCRIPTION_IDENTIFIER, c.4),
                    user_properties: c.5,
                };
                if p.authentication_method.is_none() {
                    p.authentication_data = None;
                }
                p
            })
    }

    fn publish_properties(will: bool) -> impl Strategy<Value = PublishProperties> {
        use proptest::option::of;
        (
            of(flag()),
            of(any::<u32>()),
            of(1u16..),
            of(topic_name()),
            of(binary()),
            user_properties(),
            proptest::collection::vec(1u32..=MAX_VARINT as u32, 0..3),
            of(text()),
        )
            .prop_map(
                move |(format, expiry, alias, response, correlation, user, ids, ct)| {
                    PublishProperties {
                        payload_format_indicator: format,
                        message_expiry_interval: expiry,
                        topic_alias: alias.filter(|_| !will),
                        response_topic: response,
                        correlation_data: correlation,
                        user_properties: user,
                        subscription_identifiers: if will { Vec::new() } else { ids },
                        content_type: ct,
                    }
                },
            )
    }

    fn props_for(v: ProtocolVersion, allowed: u64) -> BoxedStrategy<Properties> {
        if v.is_v5() {
            properties(allowed).boxed()
        } else {
            Just(Properties::default()).boxed()
        }
    }

    fn connect_strategy(v: ProtocolVersion) -> BoxedStrategy<Packet> {
        let v5 = v.is_v5();
        let will = (
            topic_name(),
            binary(),
            qos(),
            any::<bool>(),
            publish_properties(true),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                move |(topic, payload, qos, retain, properties, delay)| LastWill {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties: if v5 {
                        properties
                    } else {
                        PublishProperties::default()
                    },
                    will_delay_interval: delay.filter(|_| v5),
                },
            );
        (
            any::<bool>(),
            any::<u16>(),
            text(),
            proptest::option::of(will),
            proptest::option::of(text()),
            proptest::option::of(binary()),
            props_for(v, CONNECT_PROPERTIES),
        )
            .prop_map(
                move |(
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                )| {
                    let username = if !v5 && password.is_some() && username.is_none() {
                        Some(ByteStr::from("u"))
                    } else {
                        username
                    };
                    Packet::Connect(Box::new(Connect {
                        protocol: v,
                        clean_start,
                        keep_alive,
                        client_id,
                        will,
                        username,
                        password,
                        properties,
                    }))
                },
            )
            .boxed()
    }

    fn publish_strategy(v: ProtocolVersion) -> BoxedStrategy<Publish> {
        let v5 = v.is_v5();
        let topic = if v5 {
            prop_oneof![topic_name(), Just(ByteStr::default())].boxed()
        } else {
            topic_name().boxed()
        };
        let properties = if v5 {
            publish_properties(false).boxed()
        } else {
            Just(PublishProperties::default()).boxed()
        };
        (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic,
            1u16..,
            binary(),
            properties,
        )
            .prop_map(|(dup, qos, retain, topic, id, payload, mut properties)| {
                if topic.is_empty() && properties.topic_alias.is_none() {
                    properties.topic_alias = Some(1);
                }
                let at_least_once = qos != QoS::AtMostOnce;
                Publish {
                    dup: dup && at_least_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_least_once { id } else { 0 },
                    payload,
                    properties,
                }
            })
            .boxed()
    }

    fn pub_resp(v: ProtocolVersion, reasons: &'static [u8]) -> BoxedStrategy<PubResp> {
        let reason = if v.is_v5() {
            one_of(reasons).boxed()
        } else {
            Just(0).boxed()
        };
        (1u16.., reason, props_for(v, ACK_PROPERTIES))
            .prop_map(|(packet_id, reason, properties)| PubResp {
                packet_id,
                reason,
                properties,
            })
            .boxed()
    }

    fn packet_strategy(v: ProtocolVersion) -> BoxedStrategy<Packet> {
        let v5 = v.is_v5();
        let options = (qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(
            move |(qos, no_local, retain_as_published, retain_handling)| {
                if v5 {
                    SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                }
            },
        );
        let connack_code = match v {
            V5 => one_of(CONNACK_REASONS).boxed(),
            _ => one_of(&[0, 0x84, 0x85, 0x88, 0x86, 0x87]).boxed(),
        };
        let suback_codes: &'static [u8] = if v5 { SUBACK_REASONS } else { &[0, 1, 2, 0x80] };
        let unsuback_codes = if v5 {
            proptest::collection::vec(one_of(UNSUBACK_REASONS), 1..4).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        let mut strategies = vec![
            connect_strategy(v),
            (
                any::<bool>(),
                connack_code,
                props_for(v, CONNACK_PROPERTIES),
            )
                .prop_map(move |(session_present, code, properties)| {
                    Packet::ConnAck(ConnAck {
                        session_present: session_present && v != V3_1,
                        code,
                        properties,
                    })
                })
                .boxed(),
            publish_strategy(v).prop_map(Packet::Publish).boxed(),
            pub_resp(v, PUBACK_REASONS).prop_map(Packet::PubAck).boxed(),
            pub_resp(v, PUBACK_REASONS).prop_map(Packet::PubRec).boxed(),
            pub_resp(v, PUBREL_REASONS).prop_map(Packet::PubRel).boxed(),
            pub_resp(v, PUBREL_REASONS)
                .prop_map(Packet::PubComp)
                .boxed(),
            (
                1u16..,
                proptest::collection::vec((text(), options), 1..4),
                props_for(v, SUBSCRIBE_PROPERTIES),
            )
                .prop_map(|(packet_id, filters, properties)| {
                    Packet::Subscribe(Subscribe {
                        packet_id,
                        filters,
                        properties,
                    })
                })
                .boxed(),
            (
                1u16..,
                proptest::collection::vec(one_of(suback_codes), 1..4),
                props_for(v, ACK_PROPERTIES),
            )
                .prop_map(|(packet_id, reasons, properties)| {
                    Packet::SubAck(SubAck {
                        packet_id,
                        reasons,
                        properties,
                    })
                })
                .boxed(),
            (
                1u16..,
                proptest::collection::vec(text(), 1..4),
                props_for(v, UNSUBSCRIBE_PROPERTIES),
            )
                .prop_map(|(packet_id, filters, properties)| {
                    Packet::Unsubscribe(Unsubscribe {
                        packet_id,
                        filters,
                        properties,
                    })
                })
                .boxed(),
            (1u16.., unsuback_codes, props_for(v, ACK_PROPERTIES))
                .prop_map(|(packet_id, reasons, properties)| {
                    Packet::UnsubAck(UnsubAck {
                        packet_id,
                        reasons,
                        properties,
                    })
                })
                .boxed(),
            Just(Packet::PingReq).boxed(),
            Just(Packet::PingResp).boxed(),
        ];
        if v5 {
            strategies.push(
                (
                    one_of(DISCONNECT_REASONS),
                    properties(DISCONNECT_PROPERTIES),
                )
                    .prop_map(|(reason, properties)| {
                        Packet::Disconnect(Disconnect { reason, properties })
                    })
                    .boxed(),
            );
            strategies.push(
                (one_of(AUTH_REASONS), properties(AUTH_PROPERTIES))
                    .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                    .boxed(),
            );
        } else {
            strategies.push(Just(Packet::Disconnect(Disconnect::default())).boxed());
        }
        proptest::strategy::Union::new(strategies).boxed()
    }

    /// Encodes, checks the length and every prefix, and decodes back.
    fn check_round_trip(packet: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
        let mut buf = BytesMut::new();
        encode(packet, v, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(encoded_len(packet, v).ok(), Some(buf.len()));
        for split in 0..buf.len() {
            let mut prefix = BytesMut::from(&buf[..split]);
            prop_assert_eq!(decode(&mut prefix, v, usize::MAX), Ok(None));
        }
        let decoded = decode(&mut buf, v, usize::MAX);
        prop_assert_eq!(decoded, Ok(Some(packet.clone())));
        prop_assert!(buf.is_empty());
        Ok(())
    }

    /// Decodes arbitrary bytes; whatever decodes must survive encode -> decode unchanged.
    fn check_arbitrary(bytes: &[u8]) -> Result<(), TestCaseError> {
        for v in [V3_1, V3_1_1, V5] {
            let mut buf = BytesMut::from(bytes);
            if let Ok(Some(packet)) = decode(&mut buf, v, MAX) {
                let mut out = BytesMut::new();
                encode(&packet, v, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decode(&mut out, v, usize::MAX), Ok(Some(packet)));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_valid_3_1_1_packet_survives_encode_then_decode(packet in packet_strategy(V3_1_1)) {
            check_round_trip(&packet, V3_1_1)?;
        }

        #[test]
        fn any_valid_3_1_packet_survives_encode_then_decode(packet in packet_strategy(V3_1)) {
            check_round_trip(&packet, V3_1)?;
        }

        #[test]
        fn any_valid_v5_packet_survives_encode_then_decode(packet in packet_strategy(V5)) {
            check_round_trip(&packet, V5)?;
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            check_arbitrary(&bytes)?;
        }

        #[test]
        fn decoding_arbitrary_bodies_behind_a_valid_header_never_panics(
            first in proptest::sample::select(&[
                0x10u8, 0x20, 0x30, 0x32, 0x35, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xA2,
                0xB0, 0xC0, 0xD0, 0xE0, 0xF0,
            ][..]),
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut bytes = vec![first, body.len() as u8];
            bytes.extend_from_slice(&body);
            check_arbitrary(&bytes)?;
        }
    }
}
