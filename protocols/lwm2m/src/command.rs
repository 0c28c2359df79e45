//! EMQX's LwM2M downlink commands and their responses (shared/DESIGN.md, "Details from the
//! anchors"): the JSON published to `lwm2m/{ep}/dn` becomes a CoAP request to the device, and
//! the device's answer becomes the JSON published to `up/resp` (or `up/notify`).
//!
//! Owns: reading a command (`msgType` read, discover, write, write-attr, execute, create,
//! delete, observe, cancel-observe; `data` as EMQX has it), the request it makes (method,
//! path, query, content format, payload), and the response JSON (the command's top-level keys
//! echoed with `data` replaced by `{reqPath, code, codeMsg[, content]}`), with the payload
//! decoded by its content format through the object model. Never sends anything.

use crate::model::{self, DataType, Model};
use crate::{link, senml, tlv};
use serde_json::{json, Map, Value as Json};

/// CoAP content formats LwM2M uses.
pub mod format {
    /// text/plain.
    pub const TEXT: u16 = 0;
    /// application/link-format.
    pub const LINK: u16 = 40;
    /// application/octet-stream.
    pub const OPAQUE: u16 = 42;
    /// application/senml+json.
    pub const SENML_JSON: u16 = 110;
    /// application/senml+cbor.
    pub const SENML_CBOR: u16 = 112;
    /// application/vnd.oma.lwm2m+tlv.
    pub const TLV: u16 = 11542;
    /// application/vnd.oma.lwm2m+json (LwM2M 1.0 JSON).
    pub const LWM2M_JSON: u16 = 11543;
}

/// A CoAP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
}

/// What a command asks the device, as a CoAP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Method.
    pub method: Method,
    /// Path segments (`/3/0/1` -> `[3, 0, 1]`), under the device's alternate path.
    pub path: Vec<u16>,
    /// Uri-Query options (`pmin=10`).
    pub query: Vec<String>,
    /// Content-Format of the payload, when there is one.
    pub content_format: Option<u16>,
    /// Accept option (discover asks for link format).
    pub accept: Option<u16>,
    /// Observe option: 0 register, 1 deregister.
    pub observe: Option<u32>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A command read from the downlink JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// `msgType`.
    pub msg_type: String,
    /// The path the command is about (`reqPath` of the response).
    pub req_path: String,
    /// Every top-level key but `data`, echoed in the response.
    pub echo: Echo,
    /// The CoAP request.
    pub request: DeviceRequest,
}

/// A command's top-level keys but `data` (`reqID`, `msgType`, whatever else the cloud put
/// there), echoed in its response. Kept as compact JSON text, one allocation: thousands of
/// commands may wait for their devices at once, and a JSON map costs over 600 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo(Box<str>);

impl Echo {
    /// The keys, kept.
    pub fn of(keys: &Map<String, Json>) -> Echo {
        // A map with string keys always serializes.
        Echo(serde_json::to_string(keys).unwrap_or_default().into())
    }

    /// The keys, as a JSON object to answer with.
    pub fn keys(&self) -> Map<String, Json> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The keys as compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a command cannot be sent; answered on `up/resp` with code 4.00.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a JSON object with `msgType` and `data`.
    #[error("not a command: {0}")]
    Shape(String),
    /// An unknown `msgType`.
    #[error("unknown msgType {0:?}")]
    UnknownType(String),
    /// A missing or malformed field of `data`.
    #[error("{0}")]
    Field(String),
}

/// Reads a downlink command; on an error, what can still be echoed (`msgType`, `reqID`...)
/// comes with it.
pub fn parse(payload: &[u8], model: &Model) -> Result<Command, (Map<String, Json>, CommandError)> {
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| (Map::new(), CommandError::Shape(e.to_string())))?;
    let Json::Object(mut top) = doc else {
        return Err((
            Map::new(),
            CommandError::Shape("expected a JSON object".into()),
        ));
    };
    let data = top.remove("data").unwrap_or(Json::Null);
    let echo = top;
    let fail = |e: CommandError| (echo.clone(), e);
    let msg_type = echo
        .get("msgType")
        .and_then(Json::as_str)
        .ok_or_else(|| fail(CommandError::Shape("msgType is required".into())))?
        .to_owned();
    let text = |key: &str| -> Result<String, (Map<String, Json>, CommandError)> {
        data.get(key)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| fail(CommandError::Field(format!("data.{key} is required"))))
    };
    let request =
        |method, path: &str| -> Result<DeviceRequest, (Map<String, Json>, CommandError)> {
            Ok(DeviceRequest {
                method,
                path: split_path(path).map_err(fail)?,
                query: Vec::new(),
                content_format: None,
                accept: None,
                observe: None,
                payload: Vec::new(),
            })
        };
    let (req_path, request) = match msg_type.as_str() {
        "read" => {
            let p = text("path")?;
            let r = request(Method::Get, &p)?;
            (p, r)
        }
        "discover" => {
            let p = text("path")?;
            let mut r = request(Method::Get, &p)?;
            r.accept = Some(format::LINK);
            (p, r)
        }
        "observe" | "cancel-observe" => {
            let p = text("path")?;
            let mut r = request(Method::Get, &p)?;
            r.observe = Some(u32::from(msg_type == "cancel-observe"));
            (p, r)
        }
        "delete" => {
            let p = text("path")?;
            let r = request(Method::Delete, &p)?;
            (p, r)
        }
        "execute" => {
            let p = text("path")?;
            let mut r = request(Method::Post, &p)?;
            if let Some(args) = data.get("args").and_then(Json::as_str) {
                r.payload = args.as_bytes().to_vec();
                r.content_format = Some(format::TEXT);
            }
            (p, r)
        }
        "write-attr" => {
            let p = text("path")?;
            let mut r = request(Method::Put, &p)?;
            for attr in ["pmin", "pmax", "gt", "lt", "st"] {
                match data.get(attr) {
                    Some(Json::String(v)) if !v.is_empty() => r.query.push(format!("{attr}={v}")),
                    Some(Json::Number(v)) => r.query.push(format!("{attr}={v}")),
                    _ => {}
                }
            }
            (p, r)
        }
        "write" if data.get("basePath").is_some() => {
            let base = text("basePath")?;
            let mut r = request(Method::Post, &base)?;
            r.payload = content_tlv(&base, data.get("content"), model).map_err(fail)?;
            r.content_format = Some(format::TLV);
            (base, r)
        }
        "write" => {
            let p = text("path")?;
            let mut r = request(Method::Put, &p)?;
            let one = json!([{ "path": p, "type": data.get("type"), "value": data.get("value") }]);
            r.payload = content_tlv(&p, Some(&one), model).map_err(fail)?;
            r.content_format = Some(format::TLV);
            (p, r)
        }
        "create" => {
            let base = text("basePath")?;
            let mut r = request(Method::Post, &base)?;
            r.payload = content_tlv(&base, data.get("content"), model).map_err(fail)?;
            r.content_format = Some(format::TLV);
            (base, r)
        }
        other => return Err(fail(CommandError::UnknownType(other.to_owned()))),
    };
    Ok(Command {
        msg_type,
        req_path,
        echo: Echo::of(&echo),
        request,
    })
}

/// `/3/0/1` -> `[3, 0, 1]`; every segment a number.
pub fn split_path(path: &str) -> Result<Vec<u16>, CommandError> {
    let bad = || {
        CommandError::Field(format!(
            "{path:?} is not an LwM2M path (/obj[/inst[/res[/ri]]])"
        ))
    };
    let mut ids = Vec::with_capacity(4);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        // At most four levels: a longer path from the cloud is refused before it is read on.
        if ids.len() == 4 {
            return Err(bad());
        }
        ids.push(seg.parse::<u16>().map_err(|_| bad())?);
    }
    if ids.is_empty() {
        return Err(bad());
    }
    ids.shrink_to_fit();
    Ok(ids)
}

fn ids(path: &str) -> Vec<u16> {
    path.split('/').filter_map(|s| s.parse().ok()).collect()
}

/// `content: [{path, type, value}]` as the TLV of a write or create at `base`: resources of
/// an instance (`base` /o/i, or /o for create with paths /o/i/r), or one resource.
fn content_tlv(base: &str, content: Option<&Json>, model: &Model) -> Result<Vec<u8>, CommandError> {
    let items = content
        .and_then(Json::as_array)
        .ok_or_else(|| CommandError::Field("data.content must be an array".into()))?;
    let base_ids = ids(base);
    let mut entries = Vec::new();
    for item in items {
        let path = item
            .get("path")
            .and_then(Json::as_str)
            .ok_or_else(|| CommandError::Field("content[].path is required".into()))?;
        // An absolute path (`/3311/0/5851`) as is; a relative one (`5851`) under `base`.
        let full = if path.starts_with('/') {
            ids(path)
        } else {
            [base_ids.clone(), ids(path)].concat()
        };
        let (obj, res, ri) = match full.as_slice() {
            [o, _i, r] => (*o, *r, None),
            [o, _i, r, ri] => (*o, *r, Some(*ri)),
            _ => {
                return Err(CommandError::Field(format!(
                    "content path {path:?} does not name a resource under {base:?}"
                )))
            }
        };
        let data_type = match item.get("type").and_then(Json::as_str) {
            Some(name) => DataType::from_emqx_name(name)
                .ok_or_else(|| CommandError::Field(format!("unknown type {name:?}")))?,
            None => model
                .resource(obj, res)
                .map_or(DataType::String, |d| d.data_type),
        };
        let value = item.get("value").unwrap_or(&Json::Null);
        let bytes = model::encode_tlv_value(data_type, value)
            .map_err(|e| CommandError::Field(e.to_string()))?;
        match ri {
            None => entries.push(tlv::Tlv {
                kind: tlv::Kind::Resource,
                id: res,
                value: tlv::Value::Bytes(bytes),
            }),
            Some(ri) => entries.push(tlv::Tlv {
                kind: tlv::Kind::MultipleResource,
                id: res,
                value: tlv::Value::Nested(vec![tlv::Tlv {
                    kind: tlv::Kind::ResourceInstance,
                    id: ri,
                    value: tlv::Value::Bytes(bytes),
                }]),
            }),
        }
    }
    // A create at /o wraps the resources in their instance.
    if base_ids.len() == 1 {
        let inst = items
            .first()
            .and_then(|i| i.get("path"))
            .and_then(Json::as_str)
            .map(ids)
            .and_then(|p| {
                if p.len() >= 3 {
                    p.get(1).copied()
                } else {
                    None
                }
            })
            .unwrap_or(0);
        return Ok(tlv::encode(&[tlv::Tlv {
            kind: tlv::Kind::ObjectInstance,
            id: inst,
            value: tlv::Value::Nested(entries),
        }]));
    }
    Ok(tlv::encode(&entries))
}

/// EMQX's `codeMsg` of a CoAP response code (`c.dd`).
pub fn code_msg(code: &str) -> &'static str {
    match code {
        "2.01" => "created",
        "2.02" => "deleted",
        "2.03" => "valid",
        "2.04" => "changed",
        "2.05" => "content",
        "2.31" => "continue",
        "4.00" => "bad_request",
        "4.01" => "unauthorized",
        "4.02" => "bad_option",
        "4.03" => "forbidden",
        "4.04" => "not_found",
        "4.05" => "method_not_allowed",
        "4.06" => "not_acceptable",
        "4.08" => "request_entity_incomplete",
        "4.12" => "precondition_failed",
        "4.13" => "request_entity_too_large",
        "4.15" => "unsupported_content_format",
        "5.00" => "internal_server_error",
        "5.01" => "not_implemented",
        "5.02" => "bad_gateway",
        "5.03" => "service_unavailable",
        "5.04" => "gateway_timeout",
        "5.05" => "proxying_not_supported",
        _ => "unknown",
    }
}

/// The response JSON: the command's keys with `data` = `{reqPath, code, codeMsg[, content]}`;
/// `msg_type` overrides `msgType` (`notify`, `ack`, `coap_timeout`...).
pub fn response_json(
    echo: Map<String, Json>,
    msg_type: Option<&str>,
    req_path: &str,
    code: &str,
    content: Option<Json>,
) -> Json {
    let mut top = echo;
    if let Some(t) = msg_type {
        top.insert("msgType".into(), json!(t));
    }
    let mut data = Map::new();
    data.insert("reqPath".into(), json!(req_path));
    data.insert("code".into(), json!(code));
    data.insert("codeMsg".into(), json!(code_msg(code)));
    if let Some(c) = content {
        data.insert("content".into(), c);
    }
    top.insert("data".into(), Json::Object(data));
    Json::Object(top)
}

/// A response payload as EMQX's `content`: `[{"path","value"}]` for values (read, observe,
/// notify), link strings for a discover. `None` for an empty payload.
pub fn decode_content(
    req_path: &str,
    content_format: Option<u16>,
    payload: &[u8],
    model: &Model,
) -> Result<Option<Json>, String> {
    if payload.is_empty() {
        return Ok(None);
    }
    let base = ids(req_path);
    let type_of = |p: &[u16]| match p {
        [o, _, r, ..] => model.resource(*o, *r).map(|d| d.data_type),
        _ => None,
    };
    let path_of = |p: &[u16]| {
        let mut s = String::new();
        for id in p {
            s.push('/');
            s.push_str(&id.to_string());
        }
        s
    };
    let item = |p: &[u16], value: Json| json!({ "path": path_of(p), "value": value });
    match content_format {
        Some(format::LINK) => {
            let text = std::str::from_utf8(payload).map_err(|_| "link format is not UTF-8")?;
            let links = link::parse(text).map_err(|e| e.to_string())?;
            Ok(Some(Json::Array(
                links
                    .iter()
                    .map(|l| Json::String(link::format(std::slice::from_ref(l))))
                    .collect(),
            )))
        }
        Some(format::TLV) => {
            let entries = tlv::decode(payload).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            flatten(&base, &entries, &mut out);
            Ok(Some(Json::Array(
                out.into_iter()
                    .map(|(p, bytes)| item(&p, model::tlv_value_json(type_of(&p), &bytes)))
                    .collect(),
            )))
        }
        Some(format::SENML_JSON) | Some(format::SENML_CBOR) => {
            let records = if content_format == Some(format::SENML_JSON) {
                senml::decode_json(payload)
            } else {
                senml::decode_cbor(payload)
            }
            .map_err(|e| e.to_string())?;
            Ok(Some(Json::Array(
                records
                    .into_iter()
                    .map(|r| {
                        json!({
                            "path": r.path,
                            "value": r.value.map_or(Json::Null, |v| v.to_json()),
                        })
                    })
                    .collect(),
            )))
        }
        Some(format::OPAQUE) => Ok(Some(json!([item(
            &base,
            model::tlv_value_json(Some(DataType::Opaque), payload)
        )]))),
        // text/plain, or no Content-Format (some clients leave it out for text).
        Some(format::TEXT) | None => {
            let text = String::from_utf8_lossy(payload);
            Ok(Some(json!([item(
                &base,
                model::text_value_json(type_of(&base), &text)
            )])))
        }
        Some(other) => Err(format!("content format {other} is not supported")),
    }
}

/// TLV entries under `base` as (full path, value bytes), depth first.
fn flatten(base: &[u16], entries: &[tlv::Tlv], out: &mut Vec<(Vec<u16>, Vec<u8>)>) {
    for e in entries {
        // A resource TLV answering a read of that very resource carries its own id again.
        let path: Vec<u16> = match (base.len(), e.kind) {
            (3, tlv::Kind::Resource | tlv::Kind::MultipleResource) if base[2] == e.id => {
                base.to_vec()
            }
            (4, tlv::Kind::MultipleResource) if base[2] == e.id => base[..3].to_vec(),
            (4, tlv::Kind::ResourceInstance) if base[3] == e.id => base.to_vec(),
            (2, tlv::Kind::ObjectInstance) if base[1] == e.id => base.to_vec(),
            _ => [base, &[e.id]].concat(),
        };
        match &e.value {
            tlv::Value::Bytes(b) => out.push((path, b.clone())),
            tlv::Value::Nested(inner) => flatten(&path, inner, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::builtin()
    }

    #[test]
    fn read_discover_observe_and_execute_become_requests() {
        let m = model();
        let c = parse(
            br#"{"reqID":7,"msgType":"read","data":{"path":"/3/0/0"}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(c.request.method, Method::Get);
        assert_eq!(c.request.path, [3, 0, 0]);
        assert_eq!(c.echo.keys().get("reqID"), Some(&json!(7)));
        assert_eq!(c.echo.as_str(), r#"{"msgType":"read","reqID":7}"#);
        let d = parse(br#"{"msgType":"discover","data":{"path":"/3/0"}}"#, &m).unwrap();
        assert_eq!(d.request.accept, Some(format::LINK));
        let o = parse(
            br#"{"msgType":"observe","data":{"path":"/3303/0/5700"}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(o.request.observe, Some(0));
        let x = parse(
            br#"{"msgType":"cancel-observe","data":{"path":"/3303/0/5700"}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(x.request.observe, Some(1));
        let e = parse(
            br#"{"msgType":"execute","data":{"path":"/3/0/4","args":"1"}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(
            (e.request.method, e.request.payload.as_slice()),
            (Method::Post, &b"1"[..])
        );
        let a = parse(
            br#"{"msgType":"write-attr","data":{"path":"/3303/0/5700","pmin":"5","pmax":60,"gt":""}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(a.request.query, ["pmin=5", "pmax=60"]);
    }

    #[test]
    fn writes_encode_tlv_by_the_given_or_the_model_type() {
        let m = model();
        let w = parse(
            br#"{"msgType":"write","data":{"path":"/3311/0/5851","type":"Integer","value":"200"}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(w.request.method, Method::Put);
        assert_eq!(w.request.content_format, Some(format::TLV));
        let expected = tlv::encode(&[tlv::Tlv {
            kind: tlv::Kind::Resource,
            id: 5851,
            value: tlv::Value::Bytes(vec![0, 200]),
        }]);
        assert_eq!(w.request.payload, expected);
        let multi = parse(
            br#"{"msgType":"write","data":{"basePath":"/3311/0","content":[
                {"path":"5850","value":"true"},{"path":"/3311/0/5851","type":"Integer","value":10}]}}"#,
            &m,
        )
        .unwrap();
        assert_eq!(multi.request.method, Method::Post);
        let back = tlv::decode(&multi.request.payload).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].value, tlv::Value::Bytes(vec![1]));
        let create = parse(
            br#"{"msgType":"create","data":{"basePath":"/3303","content":[{"path":"/3303/1/5750","type":"String","value":"x"}]}}"#,
            &m,
        )
        .unwrap();
        let back = tlv::decode(&create.request.payload).unwrap();
        assert_eq!((back[0].kind, back[0].id), (tlv::Kind::ObjectInstance, 1));
    }

    #[test]
    fn a_path_is_one_to_four_numbers() {
        assert_eq!(split_path("/3/0/1"), Ok(vec![3, 0, 1]));
        assert_eq!(split_path("/03//1/"), Ok(vec![3, 1]));
        assert_eq!(split_path("/1/2/3/4"), Ok(vec![1, 2, 3, 4]));
        for bad in ["", "/", "/1/2/3/4/5", "/3/x", "/65536", "/-1"] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
        let long = "/1".repeat(10_000);
        assert!(split_path(&long).is_err());
    }

    #[test]
    fn bad_commands_keep_what_can_be_echoed() {
        let m = model();
        let (echo, e) = parse(br#"{"reqID":3,"msgType":"reboot","data":{}}"#, &m).unwrap_err();
        assert_eq!(echo.get("reqID"), Some(&json!(3)));
        assert_eq!(e, CommandError::UnknownType("reboot".into()));
        assert!(parse(br#"{"msgType":"read","data":{"path":"/a/b"}}"#, &m).is_err());
        assert!(parse(br#"{"msgType":"read","data":{}}"#, &m).is_err());
        assert!(parse(b"not json", &m).is_err());
        assert!(parse(
            br#"{"msgType":"write","data":{"path":"/3311/0/5851","type":"Integer","value":"x"}}"#,
            &m
        )
        .is_err());
    }

    #[test]
    fn responses_echo_the_command_and_decode_content_by_format() {
        let m = model();
        let c = parse(
            br#"{"reqID":7,"msgType":"read","data":{"path":"/3/0"}}"#,
            &m,
        )
        .unwrap();
        let payload = tlv::encode(&[
            tlv::Tlv {
                kind: tlv::Kind::Resource,
                id: 0,
                value: tlv::Value::Bytes(b"ACME".to_vec()),
            },
            tlv::Tlv {
                kind: tlv::Kind::Resource,
                id: 9,
                value: tlv::Value::Bytes(vec![100]),
            },
            tlv::Tlv {
                kind: tlv::Kind::MultipleResource,
                id: 7,
                value: tlv::Value::Nested(vec![tlv::Tlv {
                    kind: tlv::Kind::ResourceInstance,
                    id: 0,
                    value: tlv::Value::Bytes(vec![0x0e, 0xd8]),
                }]),
            },
        ]);
        let content = decode_content(&c.req_path, Some(format::TLV), &payload, &m).unwrap();
        let r = response_json(c.echo.keys(), None, &c.req_path, "2.05", content);
        assert_eq!(
            r,
            json!({"reqID": 7, "msgType": "read", "data": {"reqPath": "/3/0", "code": "2.05", "codeMsg": "content",
                "content": [{"path": "/3/0/0", "value": "ACME"}, {"path": "/3/0/9", "value": 100}, {"path": "/3/0/7/0", "value": 3800}]}})
        );
        // A resource read answered with the resource's own TLV, and as plain text.
        let one = tlv::encode(&[tlv::Tlv {
            kind: tlv::Kind::Resource,
            id: 5700,
            value: tlv::Value::Bytes(tlv::encode_float(21.5)),
        }]);
        assert_eq!(
            decode_content("/3303/0/5700", Some(format::TLV), &one, &m).unwrap(),
            Some(json!([{"path": "/3303/0/5700", "value": 21.5}]))
        );
        assert_eq!(
            decode_content("/3303/0/5700", None, b"21.5", &m).unwrap(),
            Some(json!([{"path": "/3303/0/5700", "value": 21.5}]))
        );
        assert_eq!(
            decode_content("/3/0", Some(format::LINK), b"</3/0>,</3/0/1>;dim=1", &m).unwrap(),
            Some(json!(["</3/0>", "</3/0/1>;dim=1"]))
        );
        assert_eq!(
            decode_content(
                "/3303/0",
                Some(format::SENML_JSON),
                br#"[{"bn":"/3303/0/","n":"5700","v":2}]"#,
                &m
            )
            .unwrap(),
            Some(json!([{"path": "/3303/0/5700", "value": 2}]))
        );
        assert_eq!(
            decode_content("/3/0", Some(format::TEXT), b"", &m).unwrap(),
            None
        );
        assert!(decode_content("/3/0", Some(9999), b"x", &m).is_err());
    }
}
