//! The outbound window: what a connection takes from its session to send, and the QoS 1/2
//! handshakes that release it (PUBACK, PUBREC/PUBREL/PUBCOMP), plus inbound QoS 2 ids awaiting
//! PUBREL.
//!
//! A QoS 1/2 message stays in the window until its handshake ends; nothing here drops one.

use super::*;
use holdfast_mqtt::PacketId;

impl Router {
    /// The client id of session `sid`, if it still exists (for webhook events).
    /// The delivery inflight under `packet_id` in `state` on session `sid`: what
    /// `message.acked` reports, looked up before the ack releases it.
    pub fn inflight_delivery(
        &self,
        sid: SessionId,
        packet_id: PacketId,
        state: InflightState,
    ) -> Option<Delivery> {
        let s = self.sessions.get(&sid)?;
        s.inflight
            .iter()
            .find(|f| f.packet_id == packet_id && f.state == state)
            .map(|f| f.delivery.clone())
    }

    /// Removes an outbound inflight entry whatever its state (a delivery discarded because it
    /// was too large for the client counts as delivered, MQTT 5 §3.1.2.11.4).
    pub fn discard_inflight(&mut self, sid: SessionId, packet_id: PacketId) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let Some(pos) = s.inflight.iter().position(|f| f.packet_id == packet_id) else {
            return false;
        };
        if let Some(done) = s.inflight.remove(pos) {
            s.note_removed(&done.delivery);
        }
        true
    }

    /// Moves up to `budget` items from the session's queue (and, after a reconnect, its inflight
    /// window) into `out`. Returns true when more is ready to send right now. Publishers the
    /// queue held back go on once it is down to three quarters of its limits.
    pub fn take_outgoing(
        &mut self,
        sid: SessionId,
        conn_id: u64,
        budget: usize,
        now: Instant,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let more = self.take_outgoing_from_queue(sid, conn_id, budget, now, out);
        self.release_publishers_if_room(sid);
        more
    }

    fn take_outgoing_from_queue(
        &mut self,
        sid: SessionId,
        conn_id: u64,
        budget: usize,
        now: Instant,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        match &s.conn {
            Some(c) if c.conn_id == conn_id => {
                c.wake_pending
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            _ => return false,
        }
        if s.resend_pending {
            s.resend_pending = false;
            for f in &s.inflight {
                out.push(match f.state {
                    InflightState::AwaitPubAck | InflightState::AwaitPubRec => Outgoing::Publish {
                        delivery: f.delivery.clone(),
                        packet_id: f.packet_id,
                        dup: true,
                    },
                    InflightState::AwaitPubComp => Outgoing::PubRel(f.packet_id),
                });
            }
        }
        while out.len() < budget {
            let Some(head) = s.mqueue.front() else {
                s.release_idle_buffers();
                return false;
            };
            if head.message.is_expired(now) {
                if let Some(expired) = s.mqueue.pop_front() {
                    s.note_removed(&expired);
                }
                self.counters.dropped_expired += 1;
                continue;
            }
            if head.qos == QoS::AtMostOnce {
                if let Some(delivery) = s.mqueue.pop_front() {
                    s.note_sent(&delivery);
                    out.push(Outgoing::Publish {
                        delivery,
                        packet_id: PacketId::NONE,
                        dup: false,
                    });
                    self.counters.deliveries_sent += 1;
                }
                continue;
            }
            if s.window_full() {
                return false;
            }
            let packet_id = s.allocate_packet_id();
            let Some(delivery) = s.mqueue.pop_front() else {
                return false;
            };
            let state = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitPubAck
            } else {
                InflightState::AwaitPubRec
            };
            s.note_changed(&delivery);
            s.inflight.push_back(Inflight {
                packet_id,
                state,
                delivery: delivery.clone(),
            });
            out.push(Outgoing::Publish {
                delivery,
                packet_id,
                dup: false,
            });
            self.counters.deliveries_sent += 1;
        }
        !s.mqueue.is_empty()
    }

    /// PUBACK from the client. False when no QoS 1 message waits on that packet id.
    pub fn puback(&mut self, sid: SessionId, packet_id: PacketId) -> bool {
        self.finish_inflight(sid, packet_id, InflightState::AwaitPubAck)
    }

    /// PUBCOMP from the client. False when no PUBREL waits on that packet id.
    pub fn pubcomp(&mut self, sid: SessionId, packet_id: PacketId) -> bool {
        self.finish_inflight(sid, packet_id, InflightState::AwaitPubComp)
    }

    pub(super) fn finish_inflight(
        &mut self,
        sid: SessionId,
        packet_id: PacketId,
        state: InflightState,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let Some(pos) = s
            .inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)
        else {
            return false;
        };
        if let Some(done) = s.inflight.remove(pos) {
            s.note_removed(&done.delivery);
        }
        s.note_acked();
        s.release_idle_buffers();
        true
    }

    /// PUBREC from the client: the message is delivered, a PUBREL follows. An error reason ends
    /// the exchange. False when no QoS 2 message waits on that packet id.
    pub fn pubrec(&mut self, sid: SessionId, packet_id: PacketId, reason_code: u8) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        let Some(pos) = s.inflight.iter().position(|f| {
            f.packet_id == packet_id
                && matches!(
                    f.state,
                    InflightState::AwaitPubRec | InflightState::AwaitPubComp
                )
        }) else {
            return false;
        };
        if reason_code >= 0x80 {
            if let Some(done) = s.inflight.remove(pos) {
                s.note_removed(&done.delivery);
            }
        } else if let Some(f) = s.inflight.get_mut(pos) {
            f.state = InflightState::AwaitPubComp;
            if let Some(j) = &mut s.journal {
                j.changed(&f.delivery);
            }
        }
        true
    }

    /// An inbound QoS 2 PUBLISH with `packet_id` arrived.
    pub fn receive_qos2(
        &mut self,
        sid: SessionId,
        packet_id: PacketId,
        max_awaiting: usize,
    ) -> Qos2Receive {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Qos2Receive::Full;
        };
        if s.awaiting_rel.contains(&packet_id) {
            return Qos2Receive::Duplicate;
        }
        if s.awaiting_rel.len() >= max_awaiting {
            return Qos2Receive::Full;
        }
        s.awaiting_rel.insert(packet_id);
        // Persisted with the session: after a restart the resend is still a duplicate.
        s.note_meta_changed();
        Qos2Receive::New
    }

    /// Inbound QoS 2 packet ids of session `sid` awaiting PUBREL.
    pub fn awaiting_rel_len(&self, sid: SessionId) -> usize {
        self.sessions.get(&sid).map_or(0, |s| s.awaiting_rel.len())
    }

    /// True when inbound QoS 2 packet id `packet_id` of session `sid` awaits its PUBREL.
    pub fn is_awaiting_rel(&self, sid: SessionId, packet_id: PacketId) -> bool {
        self.sessions
            .get(&sid)
            .is_some_and(|s| s.awaiting_rel.contains(&packet_id))
    }

    /// PUBREL from the client. False when the packet id was not awaiting release.
    pub fn pubrel(&mut self, sid: SessionId, packet_id: PacketId) -> bool {
        self.sessions.get_mut(&sid).is_some_and(|s| {
            let found = s.awaiting_rel.remove(&packet_id);
            if found {
                s.note_meta_changed();
            }
            found
        })
    }
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
