//! Outbound, sans IO: the acknowledgements of a batch (held in PUBLISH order while a bridge
//! queue syncs), and the deliveries taken from the session and encoded with outbound topic
//! aliases, within `outbound_buffer`.
//!
//! Nothing here writes to the socket (the driver does) or awaits.

use super::*;

impl MqttSession {
    /// Encodes this batch's replies. A PUBACK/PUBREC whose message went to a bridge waits
    /// for the bridge queue's sync, and every later PUBACK/PUBREC waits behind it (MQTT wants
    /// them in PUBLISH order). A message a bridge could not queue is refused: reason 0x97
    /// (quota exceeded) or 0x80 for MQTT 5; a 3.1.1 client, which cannot hear a refusal, is
    /// disconnected and will resend.
    pub(super) fn send_replies(&mut self) -> Result<(), Close> {
        let replies = std::mem::take(&mut self.replies);
        let (deferred, forwarded) = match self.held.as_mut() {
            Some(h) => (
                std::mem::take(&mut h.deferred),
                std::mem::take(&mut h.forwarded),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let mut deferred = deferred.into_iter().peekable();
        let mut forwarded: Vec<Option<Forwarded>> = forwarded.into_iter().map(Some).collect();
        let mut outcome = Ok(());
        // QoS 2 ids whose message a bridge refused: never acknowledged as received, so a
        // resend (3.1.1, after the disconnect below) or a new message with the id is taken
        // as new (MQTT-4.3.3-9), not as a duplicate of something that was never queued.
        let mut release = Vec::new();
        for (i, mut reply) in replies.into_iter().enumerate() {
            let verdict = match deferred.peek() {
                Some(&(at, ordinal)) if at == i => {
                    deferred.next();
                    forwarded.get_mut(ordinal).and_then(Option::take)
                }
                _ => None,
            };
            let mut needs = Vec::new();
            if let Some(verdict) = verdict {
                if let Some(refusal) = verdict.refused {
                    if let Packet::PubRec(rec) = &reply {
                        release.push(rec.packet_id);
                    }
                    if !self.protocol.is_v5() {
                        conn_event!(warn, self, reason = ?refusal, "closing: a bridge queue refused a message and MQTT 3.1.1 cannot say so");
                        outcome = Err(Close::new(DisconnectReason::QueueFull, None));
                        break;
                    }
                    set_reason(
                        &mut reply,
                        match refusal {
                            Refusal::QueueFull => reason::QUOTA_EXCEEDED,
                            Refusal::Failed => reason::UNSPECIFIED_ERROR,
                        },
                    );
                }
                needs = verdict.needs;
            }
            let waits = !needs.is_empty()
                || (matches!(reply, Packet::PubAck(_) | Packet::PubRec(_))
                    && self.held.as_ref().is_some_and(|h| !h.queue.is_empty()));
            if waits {
                let forwarder = self.broker.uplink().cloned();
                let held = self.held.get_or_insert_with(Box::default);
                held.forwarder = held.forwarder.take().or(forwarder);
                held.queue.push_back(HeldAck {
                    packet: reply,
                    needs,
                });
            } else {
                self.queue_packet(&reply);
            }
        }
        if !release.is_empty() {
            let session = self.session;
            self.broker.with_router(|r| {
                for id in release {
                    r.pubrel(session, id);
                }
            });
        }
        self.release_held();
        outcome
    }

    /// Sends the held acknowledgements whose messages are now durable, in order.
    pub(super) fn release_held(&mut self) {
        let Some(forwarder) = self.broker.uplink().cloned() else {
            return;
        };
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let mut ready = Vec::new();
        while let Some(front) = held.queue.front() {
            if !forwarder.is_durable(&front.needs) {
                break;
            }
            if let Some(h) = held.queue.pop_front() {
                ready.push(h.packet);
            }
        }
        let idle = held.queue.is_empty() && held.forwarded.is_empty() && held.deferred.is_empty();
        if idle {
            self.held = None;
        }
        for packet in ready {
            self.queue_packet(&packet);
        }
    }

    /// Acknowledgements held for bridge queue syncs.
    pub(super) fn held_len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.queue.len())
    }

    /// Held PUBACKs (a held PUBREC's message already counts in the router's awaiting_rel).
    pub(super) fn held_pubacks(&self) -> usize {
        self.held.as_ref().map_or(0, |h| {
            h.queue
                .iter()
                .filter(|a| matches!(a.packet, Packet::PubAck(_)))
                .count()
        })
    }

    /// Moves deliveries from the session into the write buffer until it is full or the
    /// session has nothing ready.
    pub(super) fn drain_outgoing(&mut self) {
        self.drain_more = false;
        let limit = self.outbound_limit();
        while self.wbuf.len() < limit {
            let now = Instant::now();
            let (sid, conn_id) = (self.session, self.ctrl.conn_id);
            let mut out = std::mem::take(&mut self.outgoing);
            let released = std::mem::take(&mut self.released);
            let more = self.broker.with_router(|r| {
                for pid in &released {
                    r.discard_inflight(sid, *pid);
                }
                r.take_outgoing(sid, conn_id, DRAIN_BATCH, now, &mut out)
            });
            let sent = out.len();
            for item in out.drain(..) {
                self.encode_outgoing(item, now);
            }
            if more {
                // Keep the capacity while the queue is busy; an idle client keeps none.
                self.outgoing = out;
            }
            self.broker
                .traffic
                .publish_sent
                .fetch_add(sent as u64, Ordering::Relaxed);
            // Slots freed by deliveries too large for the client need one more pass.
            if !more && self.released.is_empty() {
                return;
            }
        }
        self.drain_more = true;
    }

    pub(super) fn encode_outgoing(&mut self, item: Outgoing, now: Instant) {
        let (delivery, packet_id, dup) = match item {
            Outgoing::PubRel(pid) => {
                self.queue_packet(&pub_resp(Packet::PubRel, pid, reason::SUCCESS));
                return;
            }
            Outgoing::Publish {
                delivery,
                packet_id,
                dup,
            } => (delivery, packet_id, dup),
        };
        let msg = &delivery.message;
        let mut topic = msg.topic.as_str();
        let mut new_alias = None;
        // v5 deliveries rewrite a few properties; everything else is encoded from borrowed
        // parts of the shared message (no per-subscriber clones of topic, payload or properties).
        let mut props = None;
        if self.protocol.is_v5() {
            let expiry = msg.remaining_expiry(now);
            let mut alias = None;
            if self.client_alias_max > 0 {
                let assigned = self.aliases.as_ref().map_or(0, |a| a.outbound.len());
                if let Some(&a) = self
                    .aliases
                    .as_ref()
                    .and_then(|a| a.outbound.get(&msg.topic))
                {
                    alias = Some(a);
                    topic = "";
                } else if assigned < usize::from(self.client_alias_max) {
                    // Recorded only once the packet is known to go out (below).
                    new_alias = Some(assigned as u16 + 1);
                    alias = new_alias;
                }
            }
            if delivery.subscription_id.is_some() || expiry.is_some() || alias.is_some() {
                let mut p = msg.properties.clone();
                p.subscription_identifiers
                    .extend(delivery.subscription_ids().map(NonZeroU32::get));
                p.message_expiry_interval = expiry;
                p.topic_alias = alias;
                props = Some(p);
            }
        }
        let publish = PublishRef {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            payload: &msg.payload,
            properties: props.as_ref().unwrap_or(&msg.properties),
        };
        let start = self.wbuf.len();
        if let Err(e) = holdfast_mqtt::encode_publish_ref(&publish, self.protocol, &mut self.wbuf) {
            conn_event!(error, self, topic = %crate::broker::short(&msg.topic), "cannot encode delivery: {e}");
            self.wbuf.truncate(start);
            return;
        }
        if self.wbuf.len() - start > self.client_max_packet as usize {
            // MQTT 5 §3.1.2.11.4: discard as if delivered.
            self.wbuf.truncate(start);
            self.broker
                .traffic
                .dropped_too_large_for_client
                .fetch_add(1, Ordering::Relaxed);
            conn_event!(warn, self, topic = %crate::broker::short(&msg.topic), "dropped: larger than the client's maximum packet size");
            if packet_id != PacketId::NONE {
                self.released.push(packet_id);
            }
            return;
        }
        if let Some(alias) = new_alias {
            self.aliases
                .get_or_insert_with(Box::default)
                .outbound
                .insert(ByteStr::from(msg.topic.as_str()), alias);
        }
        conn_event!(
            debug,
            self,
            topic = %msg.topic,
            qos = delivery.qos as u8,
            retain = delivery.retain,
            dup,
            packet_id = %packet_id,
            bytes = msg.payload.len(),
            "PUBLISH out"
        );
        self.broker.events().message_delivered(
            &self.client_id,
            self.username.as_deref(),
            &delivery,
        );
    }
}
