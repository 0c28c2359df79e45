//! MQTT 5 properties: their identifiers, which packet may carry which, and their coding.
//!
//! Owns the property section of every packet and of the will. Decoding rejects identifiers the
//! packet may not carry, single-value properties given twice and out-of-range values; encoding
//! writes only the properties the packet may carry. It must never decide what a property means
//! for the session (topic alias ranges, receive maximum): that is the broker's job.

use super::{check_topic_name, measure, DecodeError, EncodeError, Reader, Sink, MAX_VARINT};
use crate::packet::{ByteStr, Properties, PublishProperties};

// ---------------------------------------------------------------------------------------------
// Property identifiers and where each may appear.

pub(super) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(super) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(super) const CONTENT_TYPE: u8 = 0x03;
pub(super) const RESPONSE_TOPIC: u8 = 0x08;
pub(super) const CORRELATION_DATA: u8 = 0x09;
pub(super) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(super) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(super) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(super) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(super) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(super) const AUTHENTICATION_DATA: u8 = 0x16;
pub(super) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(super) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(super) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(super) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(super) const SERVER_REFERENCE: u8 = 0x1C;
pub(super) const REASON_STRING: u8 = 0x1F;
pub(super) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(super) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(super) const TOPIC_ALIAS: u8 = 0x23;
pub(super) const MAXIMUM_QOS: u8 = 0x24;
pub(super) const RETAIN_AVAILABLE: u8 = 0x25;
pub(super) const USER_PROPERTY: u8 = 0x26;
pub(super) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(super) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(super) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(super) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// One bit per property identifier (all are below 64), to say where a property is allowed.
pub(super) const fn bit(id: u8) -> u64 {
    1 << id
}

pub(super) const CONNECT_PROPERTIES: u64 = bit(SESSION_EXPIRY_INTERVAL)
    | bit(AUTHENTICATION_METHOD)
    | bit(AUTHENTICATION_DATA)
    | bit(REQUEST_PROBLEM_INFORMATION)
    | bit(REQUEST_RESPONSE_INFORMATION)
    | bit(RECEIVE_MAXIMUM)
    | bit(TOPIC_ALIAS_MAXIMUM)
    | bit(USER_PROPERTY)
    | bit(MAXIMUM_PACKET_SIZE);
pub(super) const CONNACK_PROPERTIES: u64 = bit(SESSION_EXPIRY_INTERVAL)
    | bit(ASSIGNED_CLIENT_IDENTIFIER)
    | bit(SERVER_KEEP_ALIVE)
    | bit(AUTHENTICATION_METHOD)
    | bit(AUTHENTICATION_DATA)
    | bit(RESPONSE_INFORMATION)
    | bit(SERVER_REFERENCE)
    | bit(REASON_STRING)
    | bit(RECEIVE_MAXIMUM)
    | bit(TOPIC_ALIAS_MAXIMUM)
    | bit(MAXIMUM_QOS)
    | bit(RETAIN_AVAILABLE)
    | bit(USER_PROPERTY)
    | bit(MAXIMUM_PACKET_SIZE)
    | bit(WILDCARD_SUBSCRIPTION_AVAILABLE)
    | bit(SUBSCRIPTION_IDENTIFIER_AVAILABLE)
    | bit(SHARED_SUBSCRIPTION_AVAILABLE);
pub(super) const PUBLISH_PROPERTIES: u64 = bit(PAYLOAD_FORMAT_INDICATOR)
    | bit(MESSAGE_EXPIRY_INTERVAL)
    | bit(CONTENT_TYPE)
    | bit(RESPONSE_TOPIC)
    | bit(CORRELATION_DATA)
    | bit(SUBSCRIPTION_IDENTIFIER)
    | bit(TOPIC_ALIAS)
    | bit(USER_PROPERTY);
pub(super) const WILL_PROPERTIES: u64 = bit(PAYLOAD_FORMAT_INDICATOR)
    | bit(MESSAGE_EXPIRY_INTERVAL)
    | bit(CONTENT_TYPE)
    | bit(RESPONSE_TOPIC)
    | bit(CORRELATION_DATA)
    | bit(WILL_DELAY_INTERVAL)
    | bit(USER_PROPERTY);
/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
pub(super) const ACK_PROPERTIES: u64 = bit(REASON_STRING) | bit(USER_PROPERTY);
pub(super) const SUBSCRIBE_PROPERTIES: u64 = bit(SUBSCRIPTION_IDENTIFIER) | bit(USER_PROPERTY);
pub(super) const UNSUBSCRIBE_PROPERTIES: u64 = bit(USER_PROPERTY);
pub(super) const DISCONNECT_PROPERTIES: u64 =
    bit(SESSION_EXPIRY_INTERVAL) | bit(SERVER_REFERENCE) | bit(REASON_STRING) | bit(USER_PROPERTY);
pub(super) const AUTH_PROPERTIES: u64 =
    bit(AUTHENTICATION_METHOD) | bit(AUTHENTICATION_DATA) | bit(REASON_STRING) | bit(USER_PROPERTY);

// ---------------------------------------------------------------------------------------------
// Decoding

/// Splits off a property section (its length, then its bytes) and tracks which identifiers it
/// has seen.
struct PropertyReader {
    section: Reader,
    allowed: u64,
    /// Identifiers that may repeat (user property; subscription identifier in PUBLISH).
    repeatable: u64,
    seen: u64,
}

impl PropertyReader {
    fn new(
        r: &mut Reader,
        allowed: u64,
        repeatable: u64,
        context: &'static str,
    ) -> Result<Self, DecodeError> {
        let len = r.varint()?;
        let section = r.take(len as usize)?;
        Ok(PropertyReader {
            section: Reader {
                buf: section,
                packet: context,
            },
            allowed,
            repeatable,
            seen: 0,
        })
    }

    /// The next property identifier, checked against where it is and what came before.
    fn next_id(&mut self) -> Result<Option<u8>, DecodeError> {
        if self.section.is_empty() {
            return Ok(None);
        }
        let packet = self.section.packet;
        // Identifiers are variable byte integers, but all defined ones fit in one byte; a
        // longer one is simply not an identifier this packet allows.
        let id = self.section.u8()?;
        if id >= 64 || self.allowed & bit(id) == 0 {
            return Err(DecodeError::InvalidProperty { packet, id });
        }
        if self.seen & bit(id) != 0 && self.repeatable & bit(id) == 0 {
            return Err(DecodeError::DuplicateProperty { packet, id });
        }
        self.seen |= bit(id);
        Ok(Some(id))
    }

    fn invalid(&self, id: u8) -> DecodeError {
        DecodeError::InvalidPropertyValue {
            packet: self.section.packet,
            id,
        }
    }

    /// A byte property whose only values are 0 and 1.
    fn flag(&mut self, id: u8) -> Result<u8, DecodeError> {
        match self.section.u8()? {
            v @ (0 | 1) => Ok(v),
            _ => Err(self.invalid(id)),
        }
    }

    fn nonzero_u16(&mut self, id: u8) -> Result<u16, DecodeError> {
        match self.section.u16()? {
            0 => Err(self.invalid(id)),
            v => Ok(v),
        }
    }

    fn nonzero_u32(&mut self, id: u8) -> Result<u32, DecodeError> {
        match self.section.u32()? {
            0 => Err(self.invalid(id)),
            v => Ok(v),
        }
    }

    fn subscription_identifier(&mut self) -> Result<u32, DecodeError> {
        match self.section.varint()? {
            0 => Err(self.invalid(SUBSCRIPTION_IDENTIFIER)),
            v => Ok(v),
        }
    }

    fn user_property(&mut self) -> Result<(ByteStr, ByteStr), DecodeError> {
        let key = self.section.string("user property")?;
        let value = self.section.string("user property")?;
        Ok((key, value))
    }
}

pub(super) fn read_properties(r: &mut Reader, allowed: u64) -> Result<Properties, DecodeError> {
    let packet = r.packet;
    let mut pr = PropertyReader::new(r, allowed, bit(USER_PROPERTY), packet)?;
    let mut p = Properties::default();
    while let Some(id) = pr.next_id()? {
        let s = &mut pr.section;
        match id {
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(s.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => {
                p.assigned_client_identifier = Some(s.string("assigned client identifier")?)
            }
            SERVER_KEEP_ALIVE => p.server_keep_alive = Some(s.u16()?),
            AUTHENTICATION_METHOD => {
                p.authentication_method = Some(s.string("authentication method")?)
            }
            AUTHENTICATION_DATA => p.authentication_data = Some(s.binary()?),
            REQUEST_PROBLEM_INFORMATION => p.request_problem_information = Some(pr.flag(id)?),
            REQUEST_RESPONSE_INFORMATION => p.request_response_information = Some(pr.flag(id)?),
            RESPONSE_INFORMATION => {
                p.response_information = Some(s.string("response information")?)
            }
            SERVER_REFERENCE => p.server_reference = Some(s.string("server reference")?),
            REASON_STRING => p.reason_string = Some(s.string("reason string")?),
            RECEIVE_MAXIMUM => p.receive_maximum = Some(pr.nonzero_u16(id)?),
            TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(s.u16()?),
            MAXIMUM_QOS => p.maximum_qos = Some(pr.flag(id)?),
            RETAIN_AVAILABLE => p.retain_available = Some(pr.flag(id)?),
            MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(pr.nonzero_u32(id)?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                p.wildcard_subscription_available = Some(pr.flag(id)?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                p.subscription_identifier_available = Some(pr.flag(id)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => p.shared_subscription_available = Some(pr.flag(id)?),
            SUBSCRIPTION_IDENTIFIER => {
                p.subscription_identifier = Some(pr.subscription_identifier()?)
            }
            USER_PROPERTY => p.user_properties.push(pr.user_property()?),
            id => return Err(DecodeError::InvalidProperty { packet, id }),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(pr.invalid(AUTHENTICATION_DATA));
    }
    Ok(p)
}

/// PUBLISH or will properties; the second value is the will delay interval.
pub(super) fn read_publish_properties(
    r: &mut Reader,
    allowed: u64,
    context: &'static str,
) -> Result<(PublishProperties, Option<u32>), DecodeError> {
    let repeatable = bit(USER_PROPERTY) | bit(SUBSCRIPTION_IDENTIFIER);
    let mut pr = PropertyReader::new(r, allowed, repeatable, context)?;
    let mut p = PublishProperties::default();
    let mut will_delay = None;
    while let Some(id) = pr.next_id()? {
        let s = &mut pr.section;
        match id {
            PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(pr.flag(id)?),
            MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(s.u32()?),
            CONTENT_TYPE => p.content_type = Some(s.string("content type")?),
            RESPONSE_TOPIC => {
                let topic = s.string("response topic")?;
                if topic.is_empty() || check_topic_name(&topic, context).is_err() {
                    return Err(pr.invalid(id));
                }
                p.response_topic = Some(topic);
            }
            CORRELATION_DATA => p.correlation_data = Some(s.binary()?),
            SUBSCRIPTION_IDENTIFIER => {
                let v = pr.subscription_identifier()?;
                p.subscription_identifiers.push(v);
            }
            WILL_DELAY_INTERVAL => will_delay = Some(s.u32()?),
            TOPIC_ALIAS => p.topic_alias = Some(pr.nonzero_u16(id)?),
            USER_PROPERTY => p.user_properties.push(pr.user_property()?),
            id => {
                return Err(DecodeError::InvalidProperty {
                    packet: context,
                    id,
                })
            }
        }
    }
    Ok((p, will_delay))
}

// ---------------------------------------------------------------------------------------------
// Encoding

pub(super) fn put_properties_section<S: Sink>(s: &mut S, p: &Properties, allowed: u64) {
    match measure(|c| put_properties(c, p, allowed)) {
        Ok(len) => {
            s.varint(len);
            put_properties(s, p, allowed);
        }
        Err(e) => s.fail(e),
    }
}

pub(super) fn put_publish_properties_section<S: Sink>(
    s: &mut S,
    p: &PublishProperties,
    allowed: u64,
    will_delay: Option<u32>,
) {
    if p.is_empty() && will_delay.is_none() {
        s.u8(0);
        return;
    }
    match measure(|c| put_publish_properties(c, p, allowed, will_delay)) {
        Ok(len) => {
            s.varint(len);
            put_publish_properties(s, p, allowed, will_delay);
        }
        Err(e) => s.fail(e),
    }
}

/// Writes the properties of `p` that `allowed` lets this packet carry.
pub(super) fn put_properties<S: Sink>(s: &mut S, p: &Properties, allowed: u64) {
    let mut w = PropertyWriter { s, allowed };
    w.u32(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    w.string(
        ASSIGNED_CLIENT_IDENTIFIER,
        "assigned client identifier",
        p.assigned_client_identifier
            .as_ref()
            .map(|v| v.as_bytes().as_ref()),
    );
    w.u16(SERVER_KEEP_ALIVE, p.server_keep_alive);
    w.string(
        AUTHENTICATION_METHOD,
        "authentication method",
        p.authentication_method
            .as_ref()
            .map(|v| v.as_bytes().as_ref()),
    );
    w.string(
        AUTHENTICATION_DATA,
        "authentication data",
        p.authentication_data.as_deref(),
    );
    w.u8(REQUEST_PROBLEM_INFORMATION, p.request_problem_information);
    w.u8(REQUEST_RESPONSE_INFORMATION, p.request_response_information);
    w.string(
        RESPONSE_INFORMATION,
        "response information",
        p.response_information
            .as_ref()
            .map(|v| v.as_bytes().as_ref()),
    );
    w.string(
        SERVER_REFERENCE,
        "server reference",
        p.server_reference.as_ref().map(|v| v.as_bytes().as_ref()),
    );
    w.string(
        REASON_STRING,
        "reason string",
        p.reason_string.as_ref().map(|v| v.as_bytes().as_ref()),
    );
    w.u16(RECEIVE_MAXIMUM, p.receive_maximum);
    w.u16(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    w.u8(MAXIMUM_QOS, p.maximum_qos);
    w.u8(RETAIN_AVAILABLE, p.retain_available);
    w.u32(MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    w.u8(
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    w.u8(
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    w.u8(
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    if let Some(id) = p.subscription_identifier {
        w.subscription_identifier(id);
    }
    w.user_properties(&p.user_properties);
}

fn put_publish_properties<S: Sink>(
    s: &mut S,
    p: &PublishProperties,
    allowed: u64,
    will_delay: Option<u32>,
) {
    let mut w = PropertyWriter { s, allowed };
    w.u8(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    w.u32(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    w.string(
        CONTENT_TYPE,
        "content type",
        p.content_type.as_ref().map(|v| v.as_bytes().as_ref()),
    );
    w.string(
        RESPONSE_TOPIC,
        "response topic",
        p.response_topic.as_ref().map(|v| v.as_bytes().as_ref()),
    );
    w.string(
        CORRELATION_DATA,
        "correlation data",
        p.correlation_data.as_deref(),
    );
    for &id in &p.subscription_identifiers {
        w.subscription_identifier(id);
    }
    w.u32(WILL_DELAY_INTERVAL, will_delay);
    w.u16(TOPIC_ALIAS, p.topic_alias);
    w.user_properties(&p.user_properties);
}

/// Writes one property at a time, skipping unset ones and those the packet may not carry.
struct PropertyWriter<'a, S> {
    s: &'a mut S,
    allowed: u64,
}

impl<S: Sink> PropertyWriter<'_, S> {
    fn on(&mut self, id: u8) -> bool {
        let on = self.allowed & bit(id) != 0;
        if on {
            self.s.u8(id);
        }
        on
    }

    fn u8(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            if self.on(id) {
                self.s.u8(v);
            }
        }
    }

    fn u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            if self.on(id) {
                self.s.u16(v);
            }
        }
    }

    fn u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            if self.on(id) {
                self.s.u32(v);
            }
        }
    }

    fn string(&mut self, id: u8, field: &'static str, v: Option<&[u8]>) {
        if let Some(v) = v {
            if self.on(id) {
                self.s.prefixed(field, v);
            }
        }
    }

    fn subscription_identifier(&mut self, v: u32) {
        if self.on(SUBSCRIPTION_IDENTIFIER) {
            if v as usize > MAX_VARINT {
                self.s.fail(EncodeError::SubscriptionIdentifierTooLarge(v));
            }
            self.s.varint(v as usize);
        }
    }

    fn user_properties(&mut self, pairs: &[(ByteStr, ByteStr)]) {
        for (key, value) in pairs {
            if self.on(USER_PROPERTY) {
                self.s.prefixed("user property", key.as_bytes());
                self.s.prefixed("user property", value.as_bytes());
            }
        }
    }
}
