//! Read-only views of the router for operators (`holdfast ctl`, the web UI), and `kick`.
//!
//! Owns the router's rows, which the operations layer (`ops`) turns into the views it hands
//! out. Every listing is bounded by a caller's limit and says when it was cut short, so a
//! gateway with a million sessions answers in one short lock hold. Nothing here changes routing state except [`Router::kick`], which only asks
//! a connection to close.

use super::Router;
use crate::broker::message::{ClientId, SessionId};
use crate::broker::session::ConnMeta;
use holdfast_mqtt::{reason, ByteStr};

/// A bounded listing: the first `limit` rows in order, and whether more were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows<T> {
    /// The rows, sorted.
    pub rows: Vec<T>,
    /// How many there are in all.
    pub total: usize,
    /// True when `rows` holds fewer than `total`.
    pub truncated: bool,
}

impl<T> Rows<T> {
    fn sorted_and_cut(
        mut rows: Vec<T>,
        limit: usize,
        key: impl Fn(&T, &T) -> std::cmp::Ordering,
    ) -> Rows<T> {
        let total = rows.len();
        rows.sort_by(key);
        rows.truncate(limit);
        Rows {
            truncated: rows.len() < total,
            rows,
            total,
        }
    }
}

/// One session as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// MQTT client identifier.
    pub client_id: String,
    /// User name of the current connection, if any.
    pub username: Option<String>,
    /// Peer address of the current connection.
    pub peer: Option<String>,
    /// Protocol level (3, 4, 5 for MQTT; 0 for the in-process clients).
    pub protocol: u8,
    /// What the client speaks (`mqtt`, `coap`, `lwm2m`, `modbus`, `serial`, `web`,
    /// `bridge`); empty while offline.
    pub proto_name: String,
    /// True while a connection serves the session.
    pub connected: bool,
    /// Unix seconds when the current connection was accepted.
    pub connected_at: Option<u64>,
    /// Deliveries waiting in the session queue.
    pub queued: usize,
    /// Deliveries sent and not yet acknowledged.
    pub inflight: usize,
    /// Subscriptions the session holds.
    pub subscriptions: usize,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    /// Subscriber.
    pub client_id: String,
    /// Topic filter (shared ones as `$share/group/filter`).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedRow {
    /// Topic it is retained on.
    pub topic: String,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// QoS it was published with.
    pub qos: u8,
}

/// A session as a client search sees it: its id and its connection (whose address and user
/// name never change once set), copied out of the router.
#[derive(Debug, Clone)]
pub struct ClientKey {
    client_id: ClientId,
    conn: Option<std::sync::Arc<crate::broker::session::ConnControl>>,
}

/// A peer address as text, written into one reused buffer (no allocation per session).
#[derive(Default)]
struct PeerText(String);

impl PeerText {
    fn of(&mut self, addr: std::net::SocketAddr) -> &str {
        use std::fmt::Write as _;
        self.0.clear();
        let _ = write!(self.0, "{addr}");
        &self.0
    }
}

/// The client ids of one page of the sessions whose client id, user name or peer address
/// contains `search` (ASCII case ignored; empty matches every one), sorted, at most `limit`
/// from `offset`, and how many match in all. Runs without the router lock.
pub fn search_clients(
    keys: Vec<ClientKey>,
    search: &str,
    offset: usize,
    limit: usize,
) -> (Vec<ClientId>, usize) {
    let needle = search.as_bytes();
    let has = |hay: &str| {
        needle.is_empty()
            || hay
                .as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    };
    let mut peer = PeerText::default();
    let mut matches = |k: &ClientKey| {
        if has(&k.client_id) {
            return true;
        }
        let meta = k.conn.as_ref().and_then(|c| c.meta());
        meta.is_some_and(|m| m.username.as_deref().is_some_and(has) || has(peer.of(m.peer)))
    };
    let mut hits: Vec<ClientId> = keys
        .into_iter()
        .filter(|k| matches(k))
        .map(|k| k.client_id)
        .collect();
    let total = hits.len();
    hits.sort_unstable();
    let page = hits.into_iter().skip(offset).take(limit).collect();
    (page, total)
}

impl Router {
    fn client_row(&self, s: &super::Session) -> ClientRow {
        let meta = s.conn.as_ref().and_then(|c| c.meta());
        ClientRow {
            client_id: s.client_id.to_string(),
            username: meta.and_then(|m| m.username.as_deref().map(str::to_owned)),
            peer: meta.map(|m| m.peer.to_string()),
            protocol: match meta {
                Some(m) if m.proto_name != "mqtt" => 0,
                _ => s.protocol.level(),
            },
            proto_name: meta.map_or_else(String::new, |m| m.proto_name.to_owned()),
            connected: s.is_connected(),
            connected_at: meta.map(|m| m.connected_at),
            queued: s.mqueue.len(),
            inflight: s.inflight.len(),
            subscriptions: s.subscriptions.len(),
        }
    }

    /// What a client search looks at, for every session (bridges' internal ones included):
    /// only reference counts are taken here, under the router lock; [`search_clients`] does
    /// the rest without it.
    pub fn client_keys(&self) -> Vec<ClientKey> {
        self.sessions
            .values()
            .map(|s| ClientKey {
                client_id: s.client_id.clone(),
                conn: s.conn.clone(),
            })
            .collect()
    }

    /// The rows of `ids`, in their order; a session gone meanwhile is left out.
    pub fn client_rows(&self, ids: &[ClientId]) -> Vec<ClientRow> {
        ids.iter().filter_map(|id| self.client_info(id)).collect()
    }

    /// The session of `client_id`, if there is one.
    pub fn client_info(&self, client_id: &str) -> Option<ClientRow> {
        let sid = self.by_client.get(client_id)?;
        self.sessions.get(sid).map(|s| self.client_row(s))
    }

    /// Every subscription, by client id then filter, at most `limit`.
    pub fn subscriptions_all(&self, limit: usize) -> Rows<SubscriptionRow> {
        let rows = self
            .sessions
            .values()
            .flat_map(|s| {
                s.subscriptions.iter().map(|(f, sub)| SubscriptionRow {
                    client_id: s.client_id.to_string(),
                    filter: f.to_string(),
                    qos: sub.options.qos as u8,
                })
            })
            .collect();
        Rows::sorted_and_cut(rows, limit, |a, b| {
            (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter))
        })
    }

    /// Retained messages by topic, at most `limit`.
    pub fn retained_list(&self, limit: usize) -> Rows<RetainedRow> {
        let rows = self
            .retained
            .iter()
            .map(|(t, m)| RetainedRow {
                topic: t.to_string(),
                payload_size: m.payload.len(),
                qos: m.qos as u8,
            })
            .collect();
        Rows::sorted_and_cut(rows, limit, |a, b| a.topic.cmp(&b.topic))
    }

    /// Every connected session: its id, client id, connection details and subscriptions
    /// (for the re-check after a reload of the auth files).
    pub fn connected_sessions(&self) -> Vec<(SessionId, ClientId, ConnMeta, Vec<ByteStr>)> {
        self.sessions
            .values()
            .filter_map(|s| {
                let meta = s.conn.as_ref()?.meta()?.clone();
                Some((
                    s.id,
                    s.client_id.clone(),
                    meta,
                    s.subscriptions.keys().cloned().collect(),
                ))
            })
            .collect()
    }

    /// The payload of the retained message on `topic`, if any.
    pub fn retained_payload(&self, topic: &str) -> Option<bytes::Bytes> {
        self.retained.get(topic).map(|m| m.payload.clone())
    }

    /// Closes the connection serving `client_id` (v5 clients get DISCONNECT 0x98,
    /// administrative action; the listener counts it as `kicked`). False when no connection
    /// serves that client id. The session itself follows its normal expiry.
    pub fn kick(&mut self, client_id: &str) -> bool {
        let conn = self
            .by_client
            .get(client_id)
            .and_then(|sid| self.sessions.get(sid))
            .and_then(|s| s.conn.as_ref());
        match conn {
            Some(c) if !c.is_closing() => {
                c.close_with(reason::ADMINISTRATIVE_ACTION);
                true
            }
            _ => false,
        }
    }
}
