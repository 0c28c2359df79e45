//! The EMQX CoAP gateway's request conventions as typed requests (shared/DESIGN.md, "Device-
//! side gateways" and "Details from the anchors").
//!
//! - `POST|PUT ps/{topic}` publishes (query `qos`, `retain`, `expiry`);
//! - `GET ps/{topic}` with Observe=0 subscribes (query `qos`), Observe=1 unsubscribes, and a
//!   plain GET reads the retained message;
//! - `POST|PUT|DELETE mqtt/connection` connects, keeps alive and disconnects;
//! - every request may carry `clientid` `token` `username` `password` (or EMQX's short
//!   names `c t u p`, and `q r` for `qos` `retain`).
//!
//! Owns the mapping from method, path and query to a [`Request`], and the response code of
//! every refusal. Never authenticates, never applies a mountpoint, never touches the broker.

use coap_lite::{MessageClass, ObserveOption, Packet, RequestType, ResponseType};

/// Who the request says it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `clientid` / `c`.
    pub client_id: Option<String>,
    /// `token` / `t` (connection mode).
    pub token: Option<String>,
    /// `username` / `u`.
    pub username: Option<String>,
    /// `password` / `p`.
    pub password: Option<String>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish the payload to `topic`.
    Publish {
        /// The MQTT topic (before any mountpoint).
        topic: String,
        /// `qos` query, when given.
        qos: Option<u8>,
        /// `retain=true`.
        retain: bool,
        /// `expiry` in seconds (MQTT 5 Message Expiry Interval), when given.
        expiry: Option<u32>,
    },
    /// Observe `filter` (GET, Observe=0).
    Subscribe {
        /// The MQTT topic filter.
        filter: String,
        /// `qos` query, when given.
        qos: Option<u8>,
    },
    /// Stop observing `filter` (GET, Observe=1).
    Unsubscribe {
        /// The MQTT topic filter.
        filter: String,
    },
    /// Read the retained message of `topic` (GET without Observe).
    Read {
        /// The MQTT topic.
        topic: String,
    },
    /// Open a connection-mode session (POST mqtt/connection).
    Connect,
    /// Keep it alive (PUT mqtt/connection).
    Heartbeat,
    /// Close it (DELETE mqtt/connection).
    Disconnect,
}

/// A request: what, and who says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub action: Action,
    /// Who it says it is.
    pub identity: Identity,
}

/// A request refused before anything was done, with its response code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 4.00, with the reason as diagnostic payload.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 4.04: no such resource.
    #[error("no such resource: /{0}")]
    NotFound(String),
    /// 4.05.
    #[error("method not allowed on /{0}")]
    MethodNotAllowed(String),
}

impl Refusal {
    /// The response code.
    pub fn code(&self) -> ResponseType {
        match self {
            Refusal::BadRequest(_) => ResponseType::BadRequest,
            Refusal::NotFound(_) => ResponseType::NotFound,
            Refusal::MethodNotAllowed(_) => ResponseType::MethodNotAllowed,
        }
    }
}

/// Reads `packet` (a request) by the EMQX conventions.
pub fn parse(packet: &Packet) -> Result<Request, Refusal> {
    let MessageClass::Request(method) = packet.header.code else {
        return Err(Refusal::BadRequest("not a request".into()));
    };
    let path = crate::message::uri_path(packet)
        .ok_or_else(|| Refusal::BadRequest("Uri-Path is not UTF-8".into()))?;
    let query = crate::message::uri_query(packet)
        .ok_or_else(|| Refusal::BadRequest("Uri-Query is not UTF-8".into()))?;
    let mut identity = Identity::default();
    let mut qos = None;
    let mut retain = false;
    let mut expiry = None;
    for (key, value) in query {
        match key.as_str() {
            "clientid" | "c" => identity.client_id = Some(value),
            "token" | "t" => identity.token = Some(value),
            "username" | "u" => identity.username = Some(value),
            "password" | "p" => identity.password = Some(value),
            "qos" | "q" => match value.as_str() {
                "0" | "1" | "2" => qos = value.parse().ok(),
                _ => {
                    return Err(Refusal::BadRequest(format!(
                        "qos={value}: expected 0, 1 or 2"
                    )))
                }
            },
            "retain" | "r" => match value.as_str() {
                "true" => retain = true,
                "false" => retain = false,
                _ => {
                    return Err(Refusal::BadRequest(format!(
                        "retain={value}: expected true or false"
                    )))
                }
            },
            "expiry" => match value.parse::<u32>() {
                Ok(s) => expiry = Some(s),
                Err(_) => {
                    return Err(Refusal::BadRequest(format!(
                        "expiry={value}: expected seconds"
                    )))
                }
            },
            // EMQX's subscription options and anything else: ignored, as EMQX does.
            _ => {}
        }
    }
    if identity.client_id.as_deref() == Some("") {
        return Err(Refusal::BadRequest("empty clientid".into()));
    }
    let shown = path.join("/");
    let action = match path.first().map(String::as_str) {
        Some("ps") => {
            let topic = path[1..].join("/");
            if topic.is_empty() {
                return Err(Refusal::BadRequest("empty topic".into()));
            }
            match method {
                RequestType::Post | RequestType::Put => Action::Publish {
                    topic,
                    qos,
                    retain,
                    expiry,
                },
                RequestType::Get => match observe(packet)? {
                    Some(ObserveOption::Register) => {
                        if packet.get_token().is_empty() {
                            return Err(Refusal::BadRequest("observe needs a token".into()));
                        }
                        Action::Subscribe { filter: topic, qos }
                    }
                    Some(ObserveOption::Deregister) => Action::Unsubscribe { filter: topic },
                    None => Action::Read { topic },
                },
                _ => return Err(Refusal::MethodNotAllowed(shown)),
            }
        }
        Some("mqtt") if path.len() == 2 && path[1] == "connection" => match method {
            RequestType::Post => Action::Connect,
            RequestType::Put => Action::Heartbeat,
            RequestType::Delete => Action::Disconnect,
            _ => return Err(Refusal::MethodNotAllowed(shown)),
        },
        _ => return Err(Refusal::NotFound(shown)),
    };
    Ok(Request { action, identity })
}

fn observe(packet: &Packet) -> Result<Option<ObserveOption>, Refusal> {
    match packet.get_observe_value() {
        None => Ok(None),
        Some(Ok(0)) => Ok(Some(ObserveOption::Register)),
        Some(Ok(1)) => Ok(Some(ObserveOption::Deregister)),
        Some(_) => Err(Refusal::BadRequest("Observe must be 0 or 1".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{CoapOption, MessageType};

    fn packet(method: RequestType, path: &str, query: &[&str], observe: Option<u32>) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        p.set_token(vec![7]);
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(o) = observe {
            p.set_observe_value(o);
        }
        p
    }

    #[test]
    fn publish_with_query_options_and_short_names() {
        let r = parse(&packet(
            RequestType::Post,
            "ps/sensors/t1",
            &["c=dev1", "q=1", "r=true", "u=alice", "p=pw", "expiry=60"],
            None,
        ))
        .unwrap();
        assert_eq!(
            r.action,
            Action::Publish {
                topic: "sensors/t1".into(),
                qos: Some(1),
                retain: true,
                expiry: Some(60)
            }
        );
        assert_eq!(r.identity.client_id.as_deref(), Some("dev1"));
        assert_eq!(r.identity.username.as_deref(), Some("alice"));
        assert_eq!(r.identity.password.as_deref(), Some("pw"));
    }

    #[test]
    fn get_subscribes_unsubscribes_or_reads() {
        let sub = parse(&packet(RequestType::Get, "ps/a/+", &["qos=1"], Some(0))).unwrap();
        assert_eq!(
            sub.action,
            Action::Subscribe {
                filter: "a/+".into(),
                qos: Some(1)
            }
        );
        let unsub = parse(&packet(RequestType::Get, "ps/a/+", &[], Some(1))).unwrap();
        assert_eq!(
            unsub.action,
            Action::Unsubscribe {
                filter: "a/+".into()
            }
        );
        let read = parse(&packet(RequestType::Get, "ps/a/b", &[], None)).unwrap();
        assert_eq!(
            read.action,
            Action::Read {
                topic: "a/b".into()
            }
        );
        let mut tokenless = packet(RequestType::Get, "ps/a", &[], Some(0));
        tokenless.set_token(Vec::new());
        assert!(matches!(parse(&tokenless), Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn connection_mode_methods() {
        let p = |m| parse(&packet(m, "mqtt/connection", &["clientid=x"], None)).map(|r| r.action);
        assert_eq!(p(RequestType::Post), Ok(Action::Connect));
        assert_eq!(p(RequestType::Put), Ok(Action::Heartbeat));
        assert_eq!(p(RequestType::Delete), Ok(Action::Disconnect));
        assert!(matches!(
            p(RequestType::Get),
            Err(Refusal::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn refusals_carry_their_codes() {
        let code = |p: Packet| parse(&p).unwrap_err().code();
        assert_eq!(
            code(packet(RequestType::Post, "ps", &[], None)),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(packet(RequestType::Post, "other/x", &[], None)),
            ResponseType::NotFound
        );
        assert_eq!(
            code(packet(RequestType::Delete, "ps/a", &[], None)),
            ResponseType::MethodNotAllowed
        );
        assert_eq!(
            code(packet(RequestType::Post, "ps/a", &["qos=3"], None)),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(packet(RequestType::Post, "ps/a", &["retain=yes"], None)),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(packet(RequestType::Post, "ps/a", &["clientid="], None)),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(packet(RequestType::Get, "ps/a", &[], Some(5))),
            ResponseType::BadRequest
        );
    }
}
