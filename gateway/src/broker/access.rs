//! The access rules every client of the broker meets the same way, whether it is an MQTT
//! connection or an in-process client (`client`): the ACL's verdict (with the rule that
//! `$SYS` is for loopback clients unless a rule allows it), what a publish the ACL denies
//! costs (counted, reported to the observers), and the re-check of a resumed session's
//! subscriptions. Owns no state: each client keeps its own cached view of the ACL.

use super::events::Dropped;
use super::message::SessionId;
use super::Broker;
use crate::auth::acl::{self, Action, ClientIdentity, ConnectionAcl, Permission};
use bytes::Bytes;
use holdfast_mqtt::{ByteStr, QoS};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// Who asks: the identity the ACL's rules and the logs see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// Verified user name, if any.
    pub username: Option<&'a str>,
    /// Where the client is.
    pub peer: SocketAddr,
}

/// The ACL's verdict for `who` doing `action` on `topic`; `cache` is the client's view of the
/// ACL, built at its first check. A denial is logged at debug with the deciding rule's line.
pub(crate) fn acl_allows(
    broker: &Broker,
    cache: &mut Option<Box<ConnectionAcl>>,
    who: Who<'_>,
    action: Action,
    topic: &str,
) -> Permission {
    let client = ClientIdentity {
        client_id: who.client_id,
        username: who.username,
        ip: who.peer.ip(),
    };
    let verdict = broker.auth.acl().authorize(cache, &client, action, topic);
    let verdict = acl::local_only_sys(verdict, action, topic, who.peer.ip());
    if verdict.permission == Permission::Deny {
        tracing::debug!(peer = %who.peer, client_id = who.client_id, ?action, topic, rule_line = ?verdict.line, "denied by the ACL");
    }
    verdict.permission
}

/// A publish the ACL denied: dropped, counted as `not_authorized`, told to the observers.
pub(crate) fn publish_denied(
    broker: &Broker,
    who: Who<'_>,
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: &Bytes,
) {
    broker
        .traffic
        .dropped_not_authorized
        .fetch_add(1, Ordering::Relaxed);
    broker.events().message_dropped(Dropped {
        reason: "not_authorized",
        clientid: Some(who.client_id),
        username: who.username,
        topic,
        qos,
        retain,
        payload,
    });
}

/// A resumed session's subscriptions were granted to an earlier connection: those the ACL in
/// force denies now (the rules changed, or `%c`/`ipaddr` rules decide otherwise) are removed
/// before anything is delivered through them, each logged.
pub(crate) fn recheck_restored_subscriptions(
    broker: &Broker,
    cache: &mut Option<Box<ConnectionAcl>>,
    who: Who<'_>,
    session: SessionId,
) {
    let filters = broker.with_router(|r| r.subscription_filters(session));
    let denied: Vec<ByteStr> = filters
        .into_iter()
        .filter(|f| acl_allows(broker, cache, who, Action::Subscribe, f) == Permission::Deny)
        .collect();
    if denied.is_empty() {
        return;
    }
    for f in &denied {
        tracing::warn!(peer = %who.peer, client_id = who.client_id, filter = %f, "restored subscription denied by the ACL: removed");
    }
    broker.with_router(|r| r.unsubscribe(session, &denied));
}
