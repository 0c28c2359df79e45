//! The bridge's MQTT client session with the cloud broker, sans-IO: packet ids, the QoS 1/2
//! flows both ways, what the CONNACK allows, and the handshake state that must outlive a
//! connection and a restart.
//!
//! Owns the protocol rules of the uplink and downlink flows; it never touches a socket, a
//! file, a clock or the queue. The link feeds it the CONNACK, every packet from the cloud and
//! every record it wants to send, and carries out the [`Event`]s it returns in order (publish
//! locally, acknowledge a queue record, write a packet). Before writing any packet it returns,
//! the link must persist [`Session::persisted`] when [`Session::take_dirty`] says it changed.
//!
//! Rules (MQTT 3.1.1 §4.3-4.4, MQTT 5 §4.3-4.4):
//! - A record's packet id is a function of its queue seq ([`packet_id_for`]), so a resend, after
//!   a reconnect or a restart, carries the id of the first send (with DUP), and the cloud's
//!   duplicate detection works. The window never spans more seqs than there are publish ids.
//! - QoS 2 uplink: PUBLISH -> PUBREC -> PUBREL -> PUBCOMP. Once a PUBREC arrived, the record is
//!   "released": the PUBLISH is never sent again, only the PUBREL, until a PUBCOMP ends it; a
//!   completed record stays "done" until the queue's acknowledgement of it is on disk, so a
//!   crash that brings it back from the queue does not send it twice.
//! - A PUBACK or PUBREC with a failure reason (>= 0x80) is an answer: the record is refused
//!   (dead-lettered by the link), its slot is free, and no PUBREL follows (MQTT 5 §4.3.3).
//! - QoS 2 downlink: a PUBLISH is handed to the local broker once per packet id until its
//!   PUBREL; a PUBREL for an id we do not know (state lost, or answered before) gets a PUBCOMP
//!   (v5: reason 0x92) instead of killing the connection.
//! - A record larger than the cloud's Maximum Packet Size (CONNACK) or the configured limit is
//!   refused before it is sent, never left at the head of the queue.
//! - Without a session on the cloud (session present = 0) the handshake state is void: the
//!   released records count as delivered (the cloud had them), the downlink ids are forgotten.

use bytes::Bytes;
use holdfast_mqtt::{
    encoded_len, reason, ByteStr, ConnAck, Packet, PacketId, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Packet ids `1..=PUBLISH_IDS` are for publishes (derived from the seq); the ids above are for
/// SUBSCRIBE and UNSUBSCRIBE, so the two can never collide.
pub(super) const PUBLISH_IDS: u16 = 65_000;

/// The packet id of the record `seq`.
pub(super) fn packet_id_for(seq: u64) -> PacketId {
    // In 1..=PUBLISH_IDS.
    PacketId::new((seq % u64::from(PUBLISH_IDS)) as u16 + 1)
}

/// One record to send upstream, as the link made it from the queue.
#[derive(Debug, Clone)]
pub(super) struct OutMsg {
    /// Remote topic (prefix added).
    pub(super) topic: ByteStr,
    pub(super) payload: Bytes,
    /// Already min(original QoS, bridge QoS).
    pub(super) qos: QoS,
    pub(super) retain: bool,
    /// Sent with MQTT 5 only.
    pub(super) properties: PublishProperties,
}

/// Why the cloud did not take a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Bigger than the cloud's (or the configured) maximum packet size: `(size, max)`.
    TooLarge(usize, usize),
    /// A PUBACK/PUBREC failure reason code.
    Reason(u8),
    /// The record cannot be encoded (e.g. a topic longer than 65,535 bytes with the prefix).
    Unencodable(String),
}

impl Refusal {
    /// A short snake_case key, for counters.
    pub(super) fn key(&self) -> String {
        match self {
            Refusal::TooLarge(..) => "packet_too_large".to_owned(),
            Refusal::Unencodable(_) => "unencodable".to_owned(),
            Refusal::Reason(code) => reason_name(*code),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooLarge(size, max) => write!(
                f,
                "packet of {size} bytes is larger than the cloud accepts ({max} bytes)"
            ),
            Refusal::Reason(code) => write!(f, "refused by the cloud: {}", reason_name(*code)),
            Refusal::Unencodable(why) => write!(f, "cannot be encoded: {why}"),
        }
    }
}

/// The name of an MQTT 5 acknowledgement reason code, or its hex value.
pub(super) fn reason_name(code: u8) -> String {
    let name = match code {
        reason::UNSPECIFIED_ERROR => "unspecified_error",
        reason::IMPLEMENTATION_SPECIFIC_ERROR => "implementation_specific_error",
        reason::NOT_AUTHORIZED => "not_authorized",
        reason::TOPIC_NAME_INVALID => "topic_name_invalid",
        reason::PACKET_IDENTIFIER_IN_USE => "packet_identifier_in_use",
        reason::QUOTA_EXCEEDED => "quota_exceeded",
        reason::PAYLOAD_FORMAT_INVALID => "payload_format_invalid",
        _ => return format!("0x{code:02x}"),
    };
    name.to_owned()
}

/// What the link must do, in this order.
#[derive(Debug)]
pub(super) enum Event {
    /// Write this packet to the cloud.
    Send(Packet),
    /// The cloud acknowledged record `seq` (PUBACK, PUBCOMP): acknowledge it in the queue.
    Delivered(u64),
    /// The cloud refused record `seq`: dead-letter it.
    Refused(u64, Refusal),
    /// A message from the cloud, to publish locally (before the acknowledgement that follows).
    Downlink(Publish),
    /// The SUBACK of downlink filters: `(filter, granted)` for each, granted `None` if refused
    /// (with the reason code).
    Subscribed(Vec<(String, Result<u8, u8>)>),
    /// Something the cloud sent that breaks the protocol; the link closes the connection.
    Violation(String),
}

/// Where an uplink QoS 1/2 record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (or to be resent), no answer yet.
    Published(QoS),
    /// QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP.
    Released,
}

/// The handshake state that must survive a restart, as the link stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Persisted {
    /// Uplink QoS 2 records whose PUBREL was (or is about to be) sent.
    pub(super) released: BTreeSet<u64>,
    /// Uplink QoS 2 records the cloud completed (PUBCOMP) whose queue acknowledgement may not
    /// be on disk yet: after a crash the queue may hand them out again, and they must not go
    /// up a second time. Dropped once the queue's persisted ack cursor passes them.
    pub(super) done: BTreeSet<u64>,
    /// Downlink QoS 2 packet ids handed to the local broker and awaiting their PUBREL.
    pub(super) incoming: BTreeSet<PacketId>,
}

impl Persisted {
    /// A small line format: `rel <seq>` and `in <packet id>`.
    pub(super) fn encode(&self) -> String {
        let mut out = String::from("holdfast-bridge-session 1\n");
        for seq in &self.released {
            out.push_str(&format!("rel {seq}\n"));
        }
        for seq in &self.done {
            out.push_str(&format!("done {seq}\n"));
        }
        for id in &self.incoming {
            out.push_str(&format!("in {id}\n"));
        }
        out
    }

    /// Parses [`Persisted::encode`]'s output; `Err` names the first bad line.
    pub(super) fn decode(text: &str) -> Result<Persisted, String> {
        let mut lines = text.lines();
        if lines.next() != Some("holdfast-bridge-session 1") {
            return Err("unknown header".to_owned());
        }
        let mut p = Persisted::default();
        for (n, line) in lines.enumerate() {
            let bad = || format!("line {}: {line:?}", n + 2);
            match line.split_once(' ') {
                Some(("rel", seq)) => {
                    p.released.insert(seq.parse().map_err(|_| bad())?);
                }
                Some(("done", seq)) => {
                    p.done.insert(seq.parse().map_err(|_| bad())?);
                }
                Some(("in", id)) => {
                    let id: u16 = id.parse().map_err(|_| bad())?;
                    if id == 0 {
                        return Err(bad());
                    }
                    p.incoming.insert(PacketId::new(id));
                }
                _ if line.is_empty() => {}
                _ => return Err(bad()),
            }
        }
        Ok(p)
    }
}

/// What a CONNACK left the session with.
#[derive(Debug)]
pub(super) struct Resume {
    /// PUBRELs to send first (released records whose PUBCOMP is still due).
    pub(super) pubrels: Vec<Packet>,
    /// Records whose PUBREC came before the cloud lost our session: delivered.
    pub(super) delivered: Vec<u64>,
}

/// Limits of the bridge, from the config.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `max_inflight`.
    pub(super) max_inflight: u16,
    /// The configured upper bound on a packet to the cloud (`max_packet_size` of the bridge),
    /// for 3.1.1 clouds that cannot say theirs.
    pub(super) max_packet: Option<usize>,
}

/// One bridge's client session; lives as long as the link task (across connections).
#[derive(Debug)]
pub(super) struct Session {
    protocol: ProtocolVersion,
    limits: Limits,
    /// QoS 1/2 records sent and not yet answered, by seq.
    flights: BTreeMap<u64, Stage>,
    /// Downlink QoS 2 ids awaiting PUBREL.
    incoming: BTreeSet<PacketId>,
    /// QoS 2 records completed upstream, until the queue's ack of them is on disk.
    done: BTreeSet<u64>,
    /// SUBSCRIBE/UNSUBSCRIBE awaiting their ack: packet id -> filters.
    pending_subs: HashMap<PacketId, Vec<String>>,
    pending_unsubs: HashMap<PacketId, Vec<String>>,
    next_sub_id: u16,
    /// From the CONNACK of the current connection.
    cloud_max_packet: Option<usize>,
    cloud_receive_max: u16,
    cloud_max_qos: QoS,
    cloud_retain: bool,
    /// The persisted part changed since the last [`Session::take_dirty`].
    dirty: bool,
}

impl Session {
    /// A session restored from what the last run persisted.
    pub(super) fn new(protocol: ProtocolVersion, limits: Limits, restored: Persisted) -> Session {
        let flights = restored
            .released
            .into_iter()
            .map(|seq| (seq, Stage::Released))
            .collect();
        Session {
            protocol,
            limits,
            flights,
            incoming: restored.incoming,
            done: restored.done,
            pending_subs: HashMap::new(),
            pending_unsubs: HashMap::new(),
            next_sub_id: PUBLISH_IDS,
            cloud_max_packet: None,
            cloud_receive_max: u16::MAX,
            cloud_max_qos: QoS::ExactlyOnce,
            cloud_retain: true,
            dirty: false,
        }
    }

    /// The MQTT version spoken.
    pub(super) fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    /// What must be persisted before the next write.
    pub(super) fn persisted(&self) -> Persisted {
        Persisted {
            released: self
                .flights
                .iter()
                .filter(|(_, s)| **s == Stage::Released)
                .map(|(seq, _)| *seq)
                .collect(),
            incoming: self.incoming.clone(),
            done: self.done.clone(),
        }
    }

    /// True when record `seq` was completed upstream (QoS 2) and must not be sent again: the
    /// link acknowledges it in the queue instead.
    pub(super) fn is_done(&self, seq: u64) -> bool {
        self.done.contains(&seq)
    }

    /// True while some completed record waits for its queue acknowledgement to be on disk.
    pub(super) fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Forgets the completed records whose queue acknowledgement is on disk (at or below
    /// `persisted`: the queue will never hand them out again).
    pub(super) fn forget_done_through(&mut self, persisted: u64) {
        if self.done.first().is_some_and(|&first| first <= persisted) {
            self.done = self.done.split_off(&(persisted + 1));
            self.dirty = true;
        }
    }

    /// True (once) when [`Session::persisted`] changed.
    pub(super) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Takes a successful CONNACK: the cloud's limits, and what to resume. The records that
    /// were published and not answered are forgotten here: the link reads them from the queue
    /// again and passes them to [`Session::publish`] (with DUP), skipping the
    /// [released](Session::is_released) ones.
    pub(super) fn on_connack(&mut self, ack: &ConnAck) -> Resume {
        let p = &ack.properties;
        self.cloud_max_packet = p.maximum_packet_size.map(|m| m as usize);
        self.cloud_receive_max = p.receive_maximum.unwrap_or(u16::MAX).max(1);
        self.cloud_max_qos = p
            .maximum_qos
            .and_then(QoS::from_u8)
            .unwrap_or(QoS::ExactlyOnce);
        self.cloud_retain = p.retain_available != Some(0);
        self.pending_subs.clear();
        self.pending_unsubs.clear();
        let mut resume = Resume {
            pubrels: Vec::new(),
            delivered: Vec::new(),
        };
        // Published records are resent from the queue whether or not the session survived.
        self.flights.retain(|_, s| *s == Stage::Released);
        if !ack.session_present {
            if !self.flights.is_empty() || !self.incoming.is_empty() {
                self.dirty = true;
            }
            resume.delivered = std::mem::take(&mut self.flights).into_keys().collect();
            self.incoming.clear();
        } else {
            resume.pubrels = self
                .flights
                .keys()
                .map(|&seq| {
                    Packet::PubRel(PubResp {
                        packet_id: packet_id_for(seq),
                        ..PubResp::default()
                    })
                })
                .collect();
        }
        resume
    }

    /// True when record `seq` got its PUBREC: only its PUBREL is ever sent again.
    pub(super) fn is_released(&self, seq: u64) -> bool {
        self.flights.get(&seq) == Some(&Stage::Released)
    }

    /// The oldest record still in flight, if any.
    fn oldest(&self) -> Option<u64> {
        self.flights.keys().next().copied()
    }

    /// True when record `seq` may be sent now: the window (the configured `max_inflight`, the
    /// cloud's Receive Maximum, and the span of packet ids) has room.
    pub(super) fn has_room_for(&self, seq: u64) -> bool {
        if self.window_room() == 0 {
            return false;
        }
        match self.oldest() {
            Some(oldest) => seq.saturating_sub(oldest) < u64::from(PUBLISH_IDS),
            None => true,
        }
    }

    /// How many more QoS 1/2 records the window takes now (the configured `max_inflight`, the
    /// cloud's Receive Maximum, the span of packet ids).
    pub(super) fn window_room(&self) -> usize {
        let window = usize::from(self.limits.max_inflight)
            .min(usize::from(self.cloud_receive_max))
            .min(usize::from(PUBLISH_IDS))
            .max(1);
        window.saturating_sub(self.flights.len())
    }

    /// The largest packet the cloud takes now.
    pub(super) fn max_packet(&self) -> Option<usize> {
        match (self.cloud_max_packet, self.limits.max_packet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The PUBLISH for record `seq`, with `dup` when it may have been sent before; `Err` when
    /// the cloud cannot take it (the link dead-letters it). QoS 1/2 records enter the window.
    pub(super) fn publish(&mut self, seq: u64, msg: OutMsg, dup: bool) -> Result<Packet, Refusal> {
        let qos = msg.qos.min(self.cloud_max_qos);
        let packet_id = if qos == QoS::AtMostOnce {
            PacketId::NONE
        } else {
            packet_id_for(seq)
        };
        let publish = Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            // A cloud without retained messages closes the connection on RETAIN=1
            // (MQTT 5 §3.2.2.3.5); the message still goes, as a plain one.
            retain: msg.retain && self.cloud_retain,
            topic: msg.topic,
            packet_id,
            payload: msg.payload,
            properties: if self.protocol.is_v5() {
                msg.properties
            } else {
                PublishProperties::default()
            },
        };
        let packet = Packet::Publish(publish);
        let size =
            encoded_len(&packet, self.protocol).map_err(|e| Refusal::Unencodable(e.to_string()))?;
        if let Some(max) = self.max_packet() {
            if size > max {
                return Err(Refusal::TooLarge(size, max));
            }
        }
        if qos != QoS::AtMostOnce {
            self.flights.insert(seq, Stage::Published(qos));
        }
        Ok(packet)
    }

    /// A SUBSCRIBE for the downlink filters (already prefixed). v5 subscriptions set No Local
    /// (the cloud must not echo our own uplink back down) and ask for retained messages only
    /// when the subscription is new (a reconnect must not replay a retained command).
    pub(super) fn subscribe(&mut self, filters: Vec<String>, qos: QoS) -> Packet {
        let packet_id = self.sub_id();
        let v5 = self.protocol.is_v5();
        let options = SubscriptionOptions {
            qos,
            no_local: v5,
            retain_as_published: false,
            retain_handling: if v5 { 1 } else { 0 },
        };
        let packet = Packet::Subscribe(Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|f| (ByteStr::from(f.as_str()), options))
                .collect(),
            properties: Default::default(),
        });
        self.pending_subs.insert(packet_id, filters);
        packet
    }

    /// An UNSUBSCRIBE for filters the cloud session still has but the config dropped.
    pub(super) fn unsubscribe(&mut self, filters: Vec<String>) -> Packet {
        let packet_id = self.sub_id();
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters: filters.iter().map(|f| ByteStr::from(f.as_str())).collect(),
            properties: Default::default(),
        });
        self.pending_unsubs.insert(packet_id, filters);
        packet
    }

    fn sub_id(&mut self) -> PacketId {
        self.next_sub_id = if self.next_sub_id == u16::MAX {
            PUBLISH_IDS + 1
        } else {
            self.next_sub_id + 1
        };
        PacketId::new(self.next_sub_id)
    }

    /// Takes one packet from the cloud; appends what to do to `out`.
    pub(super) fn on_packet(&mut self, packet: Packet, out: &mut Vec<Event>) {
        match packet {
            Packet::PubAck(ack) => self.on_puback(&ack, out),
            Packet::PubRec(rec) => self.on_pubrec(&rec, out),
            Packet::PubComp(comp) => self.on_pubcomp(&comp, out),
            Packet::Publish(p) => self.on_downlink(p, out),
            Packet::PubRel(rel) => self.on_pubrel(&rel, out),
            Packet::SubAck(ack) => self.on_suback(ack, out),
            Packet::UnsubAck(UnsubAck { packet_id, .. }) => {
                self.pending_unsubs.remove(&packet_id);
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => out.push(Event::Violation(format!(
                "the cloud broker disconnected us: {}",
                reason_name(d.reason)
            ))),
            other => out.push(Event::Violation(format!(
                "unexpected {} from the cloud broker",
                other.name()
            ))),
        }
    }

    fn on_puback(&mut self, ack: &PubResp, out: &mut Vec<Event>) {
        let Some(seq) = self.flight_for(ack.packet_id, |s| s == Stage::Published(QoS::AtLeastOnce))
        else {
            tracing::debug!(packet_id = %ack.packet_id, "PUBACK for no record in flight");
            return;
        };
        self.flights.remove(&seq);
        if ack.reason >= 0x80 {
            out.push(Event::Refused(seq, Refusal::Reason(ack.reason)));
        } else {
            out.push(Event::Delivered(seq));
        }
    }

    fn on_pubrec(&mut self, rec: &PubResp, out: &mut Vec<Event>) {
        let seq = self.flight_for(rec.packet_id, |s| {
            matches!(s, Stage::Published(QoS::ExactlyOnce) | Stage::Released)
        });
        if rec.reason >= 0x80 {
            // The flow ends here: no PUBREL (MQTT 5 §4.3.3).
            if let Some(seq) = seq {
                if self.flights.remove(&seq) == Some(Stage::Released) {
                    self.dirty = true;
                }
                out.push(Event::Refused(seq, Refusal::Reason(rec.reason)));
            }
            return;
        }
        let reason = match seq {
            Some(seq) => {
                if self.flights.insert(seq, Stage::Released) != Some(Stage::Released) {
                    self.dirty = true;
                }
                reason::SUCCESS
            }
            // Not ours (any more): release it anyway so the cloud frees the id.
            None if self.protocol.is_v5() => reason::PACKET_IDENTIFIER_NOT_FOUND,
            None => reason::SUCCESS,
        };
        out.push(Event::Send(Packet::PubRel(PubResp {
            packet_id: rec.packet_id,
            reason,
            ..PubResp::default()
        })));
    }

    fn on_pubcomp(&mut self, comp: &PubResp, out: &mut Vec<Event>) {
        let Some(seq) = self.flight_for(comp.packet_id, |s| s == Stage::Released) else {
            tracing::debug!(packet_id = %comp.packet_id, "PUBCOMP for no released record");
            return;
        };
        self.flights.remove(&seq);
        self.done.insert(seq);
        self.dirty = true;
        out.push(Event::Delivered(seq));
    }

    /// The in-flight seq whose packet id is `id` and whose stage passes `ok`.
    fn flight_for(&self, id: PacketId, ok: impl Fn(Stage) -> bool) -> Option<u64> {
        let id = id.get();
        if id == 0 || id > PUBLISH_IDS {
            return None;
        }
        let oldest = self.oldest()?;
        // The window spans fewer than PUBLISH_IDS seqs: the one with this id is the first
        // seq >= oldest whose id matches.
        let base = packet_id_for(oldest).get();
        let offset =
            (u64::from(id) + u64::from(PUBLISH_IDS) - u64::from(base)) % u64::from(PUBLISH_IDS);
        let seq = oldest + offset;
        self.flights
            .get(&seq)
            .is_some_and(|s| ok(*s))
            .then_some(seq)
    }

    fn on_downlink(&mut self, p: Publish, out: &mut Vec<Event>) {
        match p.qos {
            QoS::AtMostOnce => out.push(Event::Downlink(p)),
            QoS::AtLeastOnce => {
                let packet_id = p.packet_id;
                out.push(Event::Downlink(p));
                out.push(Event::Send(Packet::PubAck(PubResp {
                    packet_id,
                    ..PubResp::default()
                })));
            }
            QoS::ExactlyOnce => {
                let packet_id = p.packet_id;
                if self.incoming.insert(packet_id) {
                    self.dirty = true;
                    out.push(Event::Downlink(p));
                }
                // A resend of an id we already passed on: acknowledge, do not deliver again.
                out.push(Event::Send(Packet::PubRec(PubResp {
                    packet_id,
                    ..PubResp::default()
                })));
            }
        }
    }

    fn on_pubrel(&mut self, rel: &PubResp, out: &mut Vec<Event>) {
        let known = self.incoming.remove(&rel.packet_id);
        if known {
            self.dirty = true;
        }
        let reason = if known || !self.protocol.is_v5() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        out.push(Event::Send(Packet::PubComp(PubResp {
            packet_id: rel.packet_id,
            reason,
            ..PubResp::default()
        })));
    }

    fn on_suback(&mut self, ack: SubAck, out: &mut Vec<Event>) {
        let Some(filters) = self.pending_subs.remove(&ack.packet_id) else {
            tracing::debug!(packet_id = %ack.packet_id, "SUBACK for no SUBSCRIBE");
            return;
        };
        if ack.reasons.len() != filters.len() {
            out.push(Event::Violation(format!(
                "SUBACK with {} reasons for {} filters",
                ack.reasons.len(),
                filters.len()
            )));
            return;
        }
        let results = filters
            .into_iter()
            .zip(ack.reasons)
            .map(|(f, r)| (f, if r < 0x80 { Ok(r) } else { Err(r) }))
            .collect();
        out.push(Event::Subscribed(results));
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
