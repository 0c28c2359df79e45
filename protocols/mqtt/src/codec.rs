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
    Auth, ByteStr, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, Properties,
    ProtocolVersion, PubResp, Publish, PublishProperties, QoS, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
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
    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId {
                packet: self.packet,
            }),
            id => Ok(PacketId::new(id)),
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
        PacketId::NONE
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
    pub packet_id: PacketId,
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
            s.u16(r.packet_id.get());
            if v5 {
                put_reason_and_properties(s, r.reason, &r.properties, ACK_PROPERTIES, true);
            }
        }
        Packet::Subscribe(sub) => put_subscribe(s, sub, v5),
        Packet::SubAck(a) => {
            s.u16(a.packet_id.get());
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
            s.u16(u.packet_id.get());
            if v5 {
                put_properties_section(s, &u.properties, UNSUBSCRIBE_PROPERTIES);
            }
            for filter in &u.filters {
                s.prefixed("topic filter", filter.as_bytes());
            }
        }
        Packet::UnsubAck(a) => {
            s.u16(a.packet_id.get());
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
        s.u16(p.packet_id.get());
    }
    if protocol.is_v5() {
        put_publish_properties_section(s, p.properties, PUBLISH_PROPERTIES, None);
    }
    s.slice(p.payload);
}

fn put_subscribe<S: Sink>(s: &mut S, sub: &Subscribe, v5: bool) {
    s.u16(sub.packet_id.get());
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
mod tests;
