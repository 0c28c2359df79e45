//! Inbound packets, sans IO: decoding what the driver read, rate limits, and applying each
//! packet under one router lock (PUBLISH with topic aliases and QoS 2 ids, acknowledgements,
//! SUBSCRIBE/UNSUBSCRIBE with the ACL and quotas, PINGREQ, DISCONNECT).
//!
//! A bad packet ends only this connection, with a reason; nothing here awaits.

use super::*;
use holdfast_mqtt::PacketId;

/// Packets a held-back client may still have applied: they release our own deliveries or
/// keep the connection alive, and reorder nothing the client can observe.
fn goes_past_hold_back(p: &Packet) -> bool {
    matches!(
        p,
        Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::PingReq
    )
}

impl MqttSession {
    /// Decodes every complete packet in the read buffer and applies them under one lock.
    pub(super) fn handle_input(&mut self) -> Result<(), Close> {
        let mut failure = None;
        let max = self.max_packet_size();
        let now = self.limits.is_some().then(Instant::now);
        loop {
            if let Some(now) = now {
                if self.pause_if_limited(now) {
                    break;
                }
            }
            let before = self.rbuf.len();
            match decode(&mut self.rbuf, self.protocol, max) {
                Ok(Some(p)) => {
                    if let (Packet::Publish(_), Some(l), Some(now)) =
                        (&p, self.limits.as_mut(), now)
                    {
                        l.inbound.charge_publish(before - self.rbuf.len(), now);
                    }
                    self.inbound.push(p)
                }
                Ok(None) => break,
                Err(e) => {
                    self.log_parse_failure(&e);
                    failure = Some(Close::new(reason_for(&e), Some(e.reason_code())));
                    break;
                }
            }
        }
        self.release_read_buffer_if_empty();
        let result = self.apply_inbound();
        self.send_replies()?;
        result?;
        if let Some(close) = failure {
            return Err(close);
        }
        self.drain_outgoing();
        Ok(())
    }

    /// True while a rate limit's bucket is empty; records until when (see `Limits`). Input waits in
    /// the read buffer and the socket meanwhile (back-pressure: nothing is dropped).
    pub(super) fn pause_if_limited(&mut self, now: Instant) -> bool {
        let Some(l) = self.limits.as_mut() else {
            return false;
        };
        let Some(at) = l.inbound.resume_at(now) else {
            l.paused_until = None;
            return false;
        };
        if l.paused_until.is_none() {
            conn_event!(trace, self, "rate limited: reading paused");
        }
        l.paused_until = Some(tokio::time::Instant::from_std(at));
        true
    }

    pub(super) fn is_paused(&self) -> bool {
        self.limits
            .as_ref()
            .is_some_and(|l| l.paused_until.is_some())
    }

    pub(super) fn apply_inbound(&mut self) -> Result<(), Close> {
        if self.inbound.is_empty() {
            return Ok(());
        }
        // (The batch vector is released below when the read buffer is drained, so an idle
        // client keeps no scratch capacity.)
        let mut packets = std::mem::take(&mut self.inbound);
        let broker = self.broker.clone();
        let now = Instant::now();
        let mut forwarded = self
            .held
            .as_mut()
            .map(|h| std::mem::take(&mut h.forwarded))
            .unwrap_or_default();
        let mut stalled = Vec::new();
        let mut stalled_qos = 0;
        let mut publishes = 0u64;
        let result = broker.with_router_forwarding(
            |r| {
                for packet in packets.drain(..) {
                    if let Packet::Publish(p) = &packet {
                        self.check_receive_maximum(r, p, stalled_qos)?;
                    }
                    // A full subscriber queue holds this client back (mqueue_full =
                    // "backpressure"): its publishes, and what came after them, wait in order;
                    // acknowledgements and pings go on, so its own deliveries keep flowing.
                    let held = !self.input_ended && self.ctrl.is_held_back();
                    if (!stalled.is_empty() || held) && !goes_past_hold_back(&packet) {
                        if matches!(&packet, Packet::Publish(p) if p.qos != QoS::AtMostOnce) {
                            stalled_qos += 1;
                        }
                        stalled.push(packet);
                        continue;
                    }
                    publishes += u64::from(matches!(packet, Packet::Publish(_)));
                    self.apply_packet(r, packet, now)?;
                }
                Ok(())
            },
            &mut forwarded,
        );
        broker
            .traffic
            .publish_received
            .fetch_add(publishes, Ordering::Relaxed);
        // Kept only when an acknowledgement of this batch waits on a verdict (QoS 0 forwards
        // need none, and most batches then allocate nothing).
        if let Some(held) = self.held.as_mut().filter(|h| !h.deferred.is_empty()) {
            held.forwarded = forwarded;
        }
        packets.clear();
        if !stalled.is_empty() {
            conn_event!(
                trace,
                self,
                stalled = stalled.len(),
                "held back: a subscriber's queue is full"
            );
            self.inbound = stalled;
        } else if !self.rbuf.is_empty() {
            // Busy: more input is on its way, keep the capacity for the next batch.
            self.inbound = packets;
        }
        result
    }

    /// MQTT 5 §3.3.4: an MQTT 5 client may have at most our Receive Maximum (CONNACK,
    /// `max_awaiting_rel`) QoS 1/2 publishes we have not acknowledged: PUBACKs held for a
    /// bridge queue's sync, QoS 2 ids awaiting PUBREL, publishes held back by a full
    /// subscriber queue. One more (`p`, a QoS 1/2 PUBLISH) is answered with DISCONNECT 0x93.
    pub(super) fn check_receive_maximum(
        &self,
        r: &Router,
        p: &Publish,
        stalled: usize,
    ) -> Result<(), Close> {
        let max = self.broker.config.mqtt.max_awaiting_rel;
        if !self.protocol.is_v5() || p.qos == QoS::AtMostOnce || max >= usize::from(u16::MAX) {
            return Ok(());
        }
        // A QoS 2 resend of an id we hold is no new message.
        if p.qos == QoS::ExactlyOnce && r.is_awaiting_rel(self.session, p.packet_id) {
            return Ok(());
        }
        let unacknowledged = self.held_pubacks() + r.awaiting_rel_len(self.session) + stalled;
        if unacknowledged < max {
            return Ok(());
        }
        conn_event!(
            warn,
            self,
            unacknowledged,
            receive_maximum = max,
            "protocol error: receive maximum exceeded"
        );
        self.broker
            .traffic
            .dropped_awaiting_rel_full
            .fetch_add(1, Ordering::Relaxed);
        Err(Close::new(
            DisconnectReason::ProtocolError,
            Some(reason::RECEIVE_MAXIMUM_EXCEEDED),
        ))
    }

    /// True while held-back input may still grow: the client is read on for the
    /// acknowledgements behind its held publishes, within a bound.
    pub(super) fn stall_allows_read(&self) -> bool {
        if self.inbound.is_empty() {
            return true;
        }
        let bytes: usize = self
            .inbound
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.payload.len() + p.topic.len(),
                _ => 16,
            })
            .sum();
        self.inbound.len() < MAX_STALLED_PACKETS && bytes < MAX_STALLED_BYTES
    }

    pub(super) fn apply_packet(
        &mut self,
        r: &mut Router,
        packet: Packet,
        now: Instant,
    ) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        match packet {
            Packet::Publish(p) => self.apply_publish(r, p, now),
            Packet::PubAck(ack) => {
                events::acked(
                    self.broker.events(),
                    r,
                    self.session,
                    ack.packet_id,
                    InflightState::AwaitPubAck,
                    &self.client_id,
                    self.username.as_deref(),
                );
                if r.puback(self.session, ack.packet_id) {
                    conn_event!(
                        debug,
                        self,
                        packet_id = %ack.packet_id,
                        reason = ack.reason,
                        "PUBACK in"
                    );
                } else {
                    conn_event!(
                        debug,
                        self,
                        packet_id = %ack.packet_id,
                        "PUBACK for unknown packet id"
                    );
                }
                Ok(())
            }
            Packet::PubRec(rec) => {
                conn_event!(
                    debug,
                    self,
                    packet_id = %rec.packet_id,
                    reason = rec.reason,
                    "PUBREC in"
                );
                let found = r.pubrec(self.session, rec.packet_id, rec.reason);
                if !found || rec.reason < 0x80 {
                    self.replies.push(Packet::PubRel(PubResp {
                        packet_id: rec.packet_id,
                        reason: if found {
                            reason::SUCCESS
                        } else {
                            reason::PACKET_IDENTIFIER_NOT_FOUND
                        },
                        properties: Properties::default(),
                    }));
                }
                Ok(())
            }
            Packet::PubComp(comp) => {
                conn_event!(debug, self, packet_id = %comp.packet_id, "PUBCOMP in");
                events::acked(
                    self.broker.events(),
                    r,
                    self.session,
                    comp.packet_id,
                    InflightState::AwaitPubComp,
                    &self.client_id,
                    self.username.as_deref(),
                );
                r.pubcomp(self.session, comp.packet_id);
                Ok(())
            }
            Packet::PubRel(rel) => {
                let found = r.pubrel(self.session, rel.packet_id);
                conn_event!(debug, self, packet_id = %rel.packet_id, found, "PUBREL in");
                self.replies.push(Packet::PubComp(PubResp {
                    packet_id: rel.packet_id,
                    reason: if found || !v5 {
                        reason::SUCCESS
                    } else {
                        reason::PACKET_IDENTIFIER_NOT_FOUND
                    },
                    properties: Properties::default(),
                }));
                Ok(())
            }
            Packet::Subscribe(sub) => {
                if sub
                    .filters
                    .iter()
                    .any(|(f, o)| o.no_local && matches!(topic::parse_shared(f), Ok(Some(_))))
                {
                    // MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
                    conn_event!(
                        warn,
                        self,
                        "protocol error: No Local on a shared subscription"
                    );
                    return Err(Close::new(
                        DisconnectReason::ProtocolError,
                        Some(reason::PROTOCOL_ERROR),
                    ));
                }
                let id = sub
                    .properties
                    .subscription_identifier
                    .and_then(NonZeroU32::new);
                let max = self.broker.config.mqtt.max_subscriptions;
                let refused = self.acl_denied_filters(&sub.filters).map(|denied| {
                    denied
                        .iter()
                        .map(|&d| d.then_some(reason::NOT_AUTHORIZED))
                        .collect::<Vec<_>>()
                });
                let reasons = match refused {
                    None => r.subscribe_limited(self.session, &sub.filters, id, max, now),
                    Some(refused) => {
                        let allowed: Vec<_> = sub
                            .filters
                            .iter()
                            .zip(&refused)
                            .filter(|(_, code)| code.is_none())
                            .map(|(f, _)| f.clone())
                            .collect();
                        let mut granted = r
                            .subscribe_limited(self.session, &allowed, id, max, now)
                            .into_iter();
                        refused
                            .iter()
                            .map(|&code| match code {
                                Some(code) => code,
                                None => granted.next().unwrap_or(reason::UNSPECIFIED_ERROR),
                            })
                            .collect()
                    }
                };
                for ((filter, opts), code) in sub.filters.iter().zip(&reasons) {
                    conn_event!(debug, self, filter = %filter, qos = opts.qos as u8, reason = code, "SUBSCRIBE");
                }
                self.broker.events().session_subscribed(
                    &self.client_id,
                    self.username.as_deref(),
                    &sub.filters,
                    &reasons,
                );
                self.replies.push(Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    reasons,
                    properties: Properties::default(),
                }));
                Ok(())
            }
            Packet::Unsubscribe(unsub) => {
                let reasons = r.unsubscribe(self.session, &unsub.filters);
                for (filter, code) in unsub.filters.iter().zip(&reasons) {
                    conn_event!(debug, self, filter = %filter, reason = code, "UNSUBSCRIBE");
                }
                self.broker.events().session_unsubscribed(
                    &self.client_id,
                    self.username.as_deref(),
                    &unsub.filters,
                    &reasons,
                );
                self.replies.push(Packet::UnsubAck(UnsubAck {
                    packet_id: unsub.packet_id,
                    reasons,
                    properties: Properties::default(),
                }));
                Ok(())
            }
            Packet::PingReq => {
                conn_event!(debug, self, "PINGREQ");
                self.replies.push(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                conn_event!(debug, self, reason = d.reason, "DISCONNECT in");
                if let Some(secs) = d.properties.session_expiry_interval {
                    if secs > 0 && self.connect_expiry_zero {
                        // MQTT-3.14.2-2: a session that was to end with the connection cannot
                        // be turned into a lasting one at DISCONNECT.
                        conn_event!(warn, self, "protocol error: DISCONNECT sets a session expiry after CONNECT asked for none");
                        return Err(Close::new(
                            DisconnectReason::ProtocolError,
                            Some(reason::PROTOCOL_ERROR),
                        ));
                    }
                    self.expiry_override = Some(secs);
                }
                Err(Close {
                    reason: DisconnectReason::Normal,
                    disconnect: None,
                    publish_will: d.reason == reason::DISCONNECT_WITH_WILL,
                })
            }
            Packet::Connect(_) => {
                conn_event!(warn, self, "protocol error: second CONNECT");
                Err(Close::new(
                    DisconnectReason::ProtocolError,
                    Some(reason::PROTOCOL_ERROR),
                ))
            }
            other => {
                conn_event!(
                    warn,
                    self,
                    packet = other.name(),
                    "protocol error: packet not allowed from a client"
                );
                Err(Close::new(
                    DisconnectReason::ProtocolError,
                    Some(reason::PROTOCOL_ERROR),
                ))
            }
        }
    }

    pub(super) fn apply_publish(
        &mut self,
        r: &mut Router,
        mut p: Publish,
        now: Instant,
    ) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        if let Some(alias) = p.properties.topic_alias.take() {
            let max = self.broker.config.mqtt.max_topic_alias;
            if alias == 0 || alias > max {
                conn_event!(
                    warn,
                    self,
                    alias,
                    max,
                    "protocol error: topic alias out of range"
                );
                return Err(Close::new(
                    DisconnectReason::ProtocolError,
                    Some(reason::TOPIC_ALIAS_INVALID),
                ));
            }
            if p.topic.is_empty() {
                match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        conn_event!(warn, self, alias, "protocol error: unknown topic alias");
                        return Err(Close::new(
                            DisconnectReason::ProtocolError,
                            Some(reason::PROTOCOL_ERROR),
                        ));
                    }
                }
            } else {
                self.aliases
                    .get_or_insert_with(Box::default)
                    .inbound
                    .insert(alias, ByteStr::from(p.topic.as_str()));
            }
        }
        if p.retain && v5 && !self.broker.config.mqtt.retain_available {
            // MQTT 5 §3.3.1.3: the CONNACK said Retain Available = 0.
            conn_event!(
                warn,
                self,
                "protocol error: RETAIN=1 while retain_available = false"
            );
            return Err(Close::new(
                DisconnectReason::ProtocolError,
                Some(reason::RETAIN_NOT_SUPPORTED),
            ));
        }
        if p.topic.is_empty() {
            conn_event!(warn, self, "protocol error: empty topic without alias");
            return Err(Close::new(
                DisconnectReason::ProtocolError,
                Some(reason::PROTOCOL_ERROR),
            ));
        }
        conn_event!(
            debug,
            self,
            topic = %p.topic,
            qos = p.qos as u8,
            retain = p.retain,
            dup = p.dup,
            packet_id = %p.packet_id,
            bytes = p.payload.len(),
            "PUBLISH in"
        );
        if self.acl_allows(Action::Publish, &p.topic) == Permission::Deny {
            // Dropped and counted; MQTT 5 hears 0x87, 3.1.1 is acknowledged as usual (EMQX).
            let who = access::Who {
                client_id: self.client_id.as_str(),
                username: self.username.as_deref(),
                peer: self.peer,
            };
            access::publish_denied(&self.broker, who, &p.topic, p.qos, p.retain, &p.payload);
            let code = if v5 {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            self.acknowledge(p.qos, p.packet_id, code);
            return Ok(());
        }
        let refused = if p.topic.starts_with("$SYS") {
            Some(reason::NOT_AUTHORIZED)
        } else if topic::topic_levels(&p.topic) > self.broker.config.mqtt.max_topic_levels
            || p.topic.len() > self.broker.config.mqtt.max_topic_len
        {
            Some(reason::TOPIC_NAME_INVALID)
        } else {
            None
        };
        // A refused QoS 2 PUBLISH gets a failing PUBREC, which ends its flow (no PUBREL
        // follows): its packet id is never taken, so the client may reuse it at once.
        if p.qos == QoS::ExactlyOnce && (refused.is_none() || !v5) {
            match r.receive_qos2(
                self.session,
                p.packet_id,
                self.broker.config.mqtt.max_awaiting_rel,
            ) {
                Qos2Receive::New => {}
                Qos2Receive::Duplicate => {
                    self.replies
                        .push(pub_resp(Packet::PubRec, p.packet_id, reason::SUCCESS));
                    return Ok(());
                }
                Qos2Receive::Full => {
                    self.broker
                        .traffic
                        .dropped_awaiting_rel_full
                        .fetch_add(1, Ordering::Relaxed);
                    conn_event!(
                        warn,
                        self,
                        "dropped: awaiting_rel full (receive maximum exceeded)"
                    );
                    return Err(Close::new(
                        DisconnectReason::ProtocolError,
                        Some(reason::RECEIVE_MAXIMUM_EXCEEDED),
                    ));
                }
            }
        }
        let mut code = reason::SUCCESS;
        if let Some(refusal) = refused {
            conn_event!(debug, self, topic = %p.topic, "publish refused");
            code = refusal;
        } else {
            let message = Arc::new(
                Message::new(
                    p.topic,
                    p.payload,
                    p.qos,
                    p.retain,
                    p.properties,
                    Origin::client(self.session, self.client_id.clone()),
                )
                .expiring_from(now),
            );
            self.broker.events().message_publish(
                &self.client_id,
                self.username.as_deref(),
                &message,
            );
            let before = r.forwards_len();
            if r.publish(message, now) == 0 && v5 {
                code = reason::NO_MATCHING_SUBSCRIBERS;
            }
            if r.forwards_len() > before && p.qos != QoS::AtMostOnce {
                // The acknowledgement pushed below waits for the bridge queue's verdict.
                let at = self.replies.len();
                self.held
                    .get_or_insert_with(Box::default)
                    .deferred
                    .push((at, before));
            }
        }
        if !v5 && code >= 0x80 {
            code = reason::SUCCESS;
        }
        self.acknowledge(p.qos, p.packet_id, code);
        Ok(())
    }

    /// Queues the PUBACK (QoS 1) or PUBREC (QoS 2) of an inbound PUBLISH with `code`.
    pub(super) fn acknowledge(&mut self, qos: QoS, packet_id: PacketId, code: u8) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.replies.push(pub_resp(Packet::PubAck, packet_id, code)),
            QoS::ExactlyOnce => self.replies.push(pub_resp(Packet::PubRec, packet_id, code)),
        }
    }

    /// The ACL's verdict for this client (see `auth::acl`); a denial is logged at debug with
    /// the deciding rule's line.
    pub(super) fn acl_allows(&mut self, action: Action, topic: &str) -> Permission {
        let who = access::Who {
            client_id: self.client_id.as_str(),
            username: self.username.as_deref(),
            peer: self.peer,
        };
        access::acl_allows(&self.broker, &mut self.acl, who, action, topic)
    }

    /// Which filters of a SUBSCRIBE the ACL denies; `None` when it denies none.
    pub(super) fn acl_denied_filters<T>(&mut self, filters: &[(ByteStr, T)]) -> Option<Vec<bool>> {
        let denied: Vec<bool> = filters
            .iter()
            .map(|(f, _)| self.acl_allows(Action::Subscribe, f) == Permission::Deny)
            .collect();
        denied.contains(&true).then_some(denied)
    }
}
