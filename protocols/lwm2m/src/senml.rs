//! SenML (RFC 8428) as LwM2M 1.1 uses it: SenML JSON (application/senml+json, 110) and SenML
//! CBOR (application/senml+cbor, 112), read into one list of (path, value) records and written
//! from one.
//!
//! Owns the record fields LwM2M uses: base name `bn` (-2), base time `bt` (-3), name `n` (0),
//! number `v` (2), string `vs` (3), boolean `vb` (4), data `vd` (8, base64url in JSON, bytes in
//! CBOR), time `t` (6) and LwM2M's object link `vlo`. A base name applies to the records after
//! it until the next. Bounded by the caller's payload size (and `MAX_RECORDS`); never panics
//! on input.

use base64::Engine as _;
use serde_json::{Map, Number, Value as Json};

/// Most records read from one payload.
pub const MAX_RECORDS: usize = 10_000;

/// A record's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `v`: a number (an integer stays one).
    Number(Number),
    /// `vs`.
    String(String),
    /// `vb`.
    Bool(bool),
    /// `vd`: opaque bytes.
    Data(Vec<u8>),
    /// `vlo`: an object link `"obj:inst"`.
    ObjLink(String),
}

impl Value {
    /// As EMQX's JSON shows a value: numbers, strings, booleans; opaque data base64
    /// (standard alphabet); object links as `"3:0"`.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) | Value::ObjLink(s) => Json::String(s.clone()),
            Value::Bool(b) => Json::Bool(*b),
            Value::Data(d) => Json::String(base64::engine::general_purpose::STANDARD.encode(d)),
        }
    }
}

/// One resolved record: full path (base name + name), value, time if given.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `bn` + `n`, e.g. `/3303/0/5700`.
    pub path: String,
    /// The value; `None` for a record without one (a Read-Composite request lists paths).
    pub value: Option<Value>,
    /// `bt` + `t`, seconds, when given.
    pub time: Option<f64>,
}

/// Why a payload is not SenML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenmlError {
    /// Not a JSON array of objects / a CBOR array of maps.
    #[error("not SenML: {0}")]
    Shape(String),
    /// A field of the wrong type.
    #[error("SenML field {0} has the wrong type")]
    FieldType(&'static str),
    /// More than [`MAX_RECORDS`].
    #[error("more than {MAX_RECORDS} SenML records")]
    TooMany,
}

/// Fields of one record before base values are applied.
#[derive(Debug, Default)]
struct Raw {
    bn: Option<String>,
    bt: Option<f64>,
    n: Option<String>,
    t: Option<f64>,
    value: Option<Value>,
}

/// Reads SenML JSON.
pub fn decode_json(payload: &[u8]) -> Result<Vec<Record>, SenmlError> {
    let doc: Json =
        serde_json::from_slice(payload).map_err(|e| SenmlError::Shape(e.to_string()))?;
    let Json::Array(items) = doc else {
        return Err(SenmlError::Shape("expected an array".into()));
    };
    if items.len() > MAX_RECORDS {
        return Err(SenmlError::TooMany);
    }
    let mut raws = Vec::with_capacity(items.len());
    for item in items {
        let Json::Object(map) = item else {
            return Err(SenmlError::Shape("expected an array of objects".into()));
        };
        raws.push(raw_from_json(&map)?);
    }
    Ok(resolve(raws))
}

fn raw_from_json(map: &Map<String, Json>) -> Result<Raw, SenmlError> {
    let text = |key: &'static str| -> Result<Option<String>, SenmlError> {
        match map.get(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(SenmlError::FieldType(key)),
        }
    };
    let number = |key: &'static str| -> Result<Option<f64>, SenmlError> {
        match map.get(key) {
            None => Ok(None),
            Some(Json::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(SenmlError::FieldType(key)),
        }
    };
    let value = if let Some(v) = map.get("v") {
        match v {
            Json::Number(n) => Some(Value::Number(n.clone())),
            _ => return Err(SenmlError::FieldType("v")),
        }
    } else if let Some(s) = text("vs")? {
        Some(Value::String(s))
    } else if let Some(b) = map.get("vb") {
        match b {
            Json::Bool(b) => Some(Value::Bool(*b)),
            _ => return Err(SenmlError::FieldType("vb")),
        }
    } else if let Some(d) = text("vd")? {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(d.trim_end_matches('='))
            .map_err(|_| SenmlError::FieldType("vd"))?;
        Some(Value::Data(bytes))
    } else {
        text("vlo")?.map(Value::ObjLink)
    };
    Ok(Raw {
        bn: text("bn")?,
        bt: number("bt")?,
        n: text("n")?,
        t: number("t")?,
        value,
    })
}

/// Reads SenML CBOR.
pub fn decode_cbor(payload: &[u8]) -> Result<Vec<Record>, SenmlError> {
    use ciborium::value::Value as Cbor;
    let doc: Cbor =
        ciborium::de::from_reader(payload).map_err(|e| SenmlError::Shape(e.to_string()))?;
    let Cbor::Array(items) = doc else {
        return Err(SenmlError::Shape("expected an array".into()));
    };
    if items.len() > MAX_RECORDS {
        return Err(SenmlError::TooMany);
    }
    let mut raws = Vec::with_capacity(items.len());
    for item in items {
        let Cbor::Map(entries) = item else {
            return Err(SenmlError::Shape("expected an array of maps".into()));
        };
        let mut raw = Raw::default();
        for (k, v) in entries {
            let key: Option<i128> = match &k {
                Cbor::Integer(i) => Some(i128::from(*i)),
                _ => None,
            };
            let name = match &k {
                Cbor::Text(t) => Some(t.as_str()),
                _ => None,
            };
            let as_text = |field: &'static str, v: Cbor| match v {
                Cbor::Text(t) => Ok(t),
                _ => Err(SenmlError::FieldType(field)),
            };
            let as_f64 = |field: &'static str, v: &Cbor| match v {
                Cbor::Integer(i) => Ok(i128::from(*i) as f64),
                Cbor::Float(f) => Ok(*f),
                _ => Err(SenmlError::FieldType(field)),
            };
            match (key, name) {
                (Some(-2), _) | (_, Some("bn")) => raw.bn = Some(as_text("bn", v)?),
                (Some(-3), _) | (_, Some("bt")) => raw.bt = Some(as_f64("bt", &v)?),
                (Some(0), _) | (_, Some("n")) => raw.n = Some(as_text("n", v)?),
                (Some(6), _) | (_, Some("t")) => raw.t = Some(as_f64("t", &v)?),
                (Some(2), _) | (_, Some("v")) => {
                    raw.value = Some(Value::Number(match v {
                        Cbor::Integer(i) => {
                            let i = i128::from(i);
                            match i64::try_from(i) {
                                Ok(i) => Number::from(i),
                                Err(_) => u64::try_from(i)
                                    .map(Number::from)
                                    .map_err(|_| SenmlError::FieldType("v"))?,
                            }
                        }
                        Cbor::Float(f) => Number::from_f64(f).ok_or(SenmlError::FieldType("v"))?,
                        _ => return Err(SenmlError::FieldType("v")),
                    }))
                }
                (Some(3), _) | (_, Some("vs")) => {
                    raw.value = Some(Value::String(as_text("vs", v)?))
                }
                (Some(4), _) | (_, Some("vb")) => match v {
                    Cbor::Bool(b) => raw.value = Some(Value::Bool(b)),
                    _ => return Err(SenmlError::FieldType("vb")),
                },
                (Some(8), _) | (_, Some("vd")) => match v {
                    Cbor::Bytes(b) => raw.value = Some(Value::Data(b)),
                    _ => return Err(SenmlError::FieldType("vd")),
                },
                (_, Some("vlo")) => raw.value = Some(Value::ObjLink(as_text("vlo", v)?)),
                _ => {}
            }
        }
        raws.push(raw);
    }
    Ok(resolve(raws))
}

/// Applies base names and base times.
fn resolve(raws: Vec<Raw>) -> Vec<Record> {
    let mut base_name = String::new();
    let mut base_time: Option<f64> = None;
    raws.into_iter()
        .map(|r| {
            if let Some(bn) = r.bn {
                base_name = bn;
            }
            if let Some(bt) = r.bt {
                base_time = Some(bt);
            }
            let path = format!("{base_name}{}", r.n.unwrap_or_default());
            let time = match (base_time, r.t) {
                (Some(b), Some(t)) => Some(b + t),
                (b, t) => t.or(b),
            };
            Record {
                path,
                value: r.value,
                time,
            }
        })
        .collect()
}

/// Writes records as SenML JSON (a full name per record, no base values).
pub fn encode_json(records: &[Record]) -> Vec<u8> {
    let items: Vec<Json> = records
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("n".into(), Json::String(r.path.clone()));
            match &r.value {
                Some(Value::Number(n)) => {
                    m.insert("v".into(), Json::Number(n.clone()));
                }
                Some(Value::String(s)) => {
                    m.insert("vs".into(), Json::String(s.clone()));
                }
                Some(Value::Bool(b)) => {
                    m.insert("vb".into(), Json::Bool(*b));
                }
                Some(Value::Data(d)) => {
                    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
                    m.insert("vd".into(), Json::String(text));
                }
                Some(Value::ObjLink(l)) => {
                    m.insert("vlo".into(), Json::String(l.clone()));
                }
                None => {}
            }
            if let Some(t) = r.time.and_then(Number::from_f64) {
                m.insert("t".into(), Json::Number(t));
            }
            Json::Object(m)
        })
        .collect();
    serde_json::to_vec(&items).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senml_json_with_base_names_resolves_every_path_and_type() {
        let payload = br#"[
            {"bn":"/3303/0/","n":"5700","v":24.5,"bt":1700000000},
            {"n":"5701","vs":"Cel","t":1},
            {"bn":"/3311/0/","n":"5850","vb":true},
            {"n":"5750","vd":"aGk"},
            {"n":"5851","v":80},
            {"bn":"/1/0/","n":"7","vlo":"3:0"}
        ]"#;
        let records = decode_json(payload).unwrap();
        let paths: Vec<&str> = records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/3303/0/5700",
                "/3303/0/5701",
                "/3311/0/5850",
                "/3311/0/5750",
                "/3311/0/5851",
                "/1/0/7"
            ]
        );
        assert_eq!(
            records[0].value,
            Some(Value::Number(Number::from_f64(24.5).unwrap()))
        );
        assert_eq!(records[1].time, Some(1_700_000_001.0));
        assert_eq!(records[2].value, Some(Value::Bool(true)));
        assert_eq!(records[3].value, Some(Value::Data(b"hi".to_vec())));
        assert_eq!(
            records[3].value.as_ref().unwrap().to_json(),
            Json::String("aGk=".into())
        );
        assert_eq!(
            records[4].value.as_ref().unwrap().to_json(),
            serde_json::json!(80)
        );
        assert_eq!(records[5].value, Some(Value::ObjLink("3:0".into())));
        assert_eq!(decode_json(&encode_json(&records)).unwrap(), records);
    }

    #[test]
    fn senml_cbor_uses_the_integer_labels() {
        use ciborium::value::Value as Cbor;
        let doc = Cbor::Array(vec![
            Cbor::Map(vec![
                (Cbor::Integer((-2).into()), Cbor::Text("/3303/0/".into())),
                (Cbor::Integer(0.into()), Cbor::Text("5700".into())),
                (Cbor::Integer(2.into()), Cbor::Float(21.25)),
            ]),
            Cbor::Map(vec![
                (Cbor::Integer(0.into()), Cbor::Text("5601".into())),
                (Cbor::Integer(2.into()), Cbor::Integer((-5).into())),
            ]),
            Cbor::Map(vec![
                (Cbor::Integer(0.into()), Cbor::Text("5750".into())),
                (Cbor::Integer(8.into()), Cbor::Bytes(vec![1, 2])),
            ]),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&doc, &mut bytes).unwrap();
        let records = decode_cbor(&bytes).unwrap();
        assert_eq!(records[0].path, "/3303/0/5700");
        assert_eq!(
            records[0].value.as_ref().unwrap().to_json(),
            serde_json::json!(21.25)
        );
        assert_eq!(
            records[1].value.as_ref().unwrap().to_json(),
            serde_json::json!(-5)
        );
        assert_eq!(records[2].value, Some(Value::Data(vec![1, 2])));
    }

    #[test]
    fn what_is_not_senml_is_an_error() {
        assert!(matches!(decode_json(b"{}"), Err(SenmlError::Shape(_))));
        assert!(matches!(decode_json(b"[1]"), Err(SenmlError::Shape(_))));
        assert_eq!(
            decode_json(br#"[{"n":5}]"#),
            Err(SenmlError::FieldType("n"))
        );
        assert_eq!(
            decode_json(br#"[{"v":"x"}]"#),
            Err(SenmlError::FieldType("v"))
        );
        assert!(matches!(decode_cbor(&[0xff]), Err(SenmlError::Shape(_))));
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_json(&bytes);
            let _ = decode_cbor(&bytes);
        }
    }
}
