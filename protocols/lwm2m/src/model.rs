//! The LwM2M object model: object and resource definitions read from OMA registry XML files
//! (`<LWM2M><Object><ObjectID>...<Resources><Item ID=..>`), the built-in ones shipped in
//! `protocols/lwm2m/xml/` and any a user adds.
//!
//! Owns the definitions and the conversion of one resource value between its wire forms (TLV
//! bytes, plain text) and JSON by the resource's type. An object or resource without a
//! definition is still handled: its values are read as text or opaque data, never refused
//! (EMQX answered 4.00: emqx#4130). Never reads a file itself: the caller passes the text.

use crate::tlv;
use base64::Engine as _;
use serde_json::{Number, Value as Json};
use std::collections::{BTreeMap, HashMap};

/// A resource's data type (OMA's `<Type>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// `String`.
    String,
    /// `Integer`.
    Integer,
    /// `Unsigned Integer` (1.1).
    UnsignedInteger,
    /// `Float`.
    Float,
    /// `Boolean`.
    Boolean,
    /// `Opaque`.
    Opaque,
    /// `Time` (seconds since 1970, an integer on the wire).
    Time,
    /// `Objlnk` (`obj:inst`).
    Objlnk,
    /// `Corelnk` (1.1: link format text).
    Corelnk,
    /// No type: an executable resource.
    None,
}

impl DataType {
    fn parse(text: &str) -> DataType {
        match text.trim().to_ascii_lowercase().as_str() {
            "string" => DataType::String,
            "integer" => DataType::Integer,
            "unsigned integer" => DataType::UnsignedInteger,
            "float" => DataType::Float,
            "boolean" => DataType::Boolean,
            "opaque" => DataType::Opaque,
            "time" => DataType::Time,
            "objlnk" => DataType::Objlnk,
            "corelnk" => DataType::Corelnk,
            _ => DataType::None,
        }
    }

    /// The name EMQX's `write` commands use for it (`String`, `Integer`, ...).
    pub fn emqx_name(self) -> &'static str {
        match self {
            DataType::String | DataType::Corelnk | DataType::None => "String",
            DataType::Integer | DataType::UnsignedInteger => "Integer",
            DataType::Float => "Float",
            DataType::Boolean => "Boolean",
            DataType::Opaque => "Opaque",
            DataType::Time => "Time",
            DataType::Objlnk => "Objlnk",
        }
    }

    /// The type of EMQX's `write` type name (`"Integer"`, `"Float"` ...).
    pub fn from_emqx_name(name: &str) -> Option<DataType> {
        Some(match name {
            "String" => DataType::String,
            "Integer" => DataType::Integer,
            "Float" => DataType::Float,
            "Boolean" => DataType::Boolean,
            "Opaque" => DataType::Opaque,
            "Time" => DataType::Time,
            "Objlnk" => DataType::Objlnk,
            _ => return None,
        })
    }
}

/// One resource definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// Resource id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Operations: some of `R`, `W`, `E`.
    pub operations: String,
    /// Multiple instances.
    pub multiple: bool,
    /// Data type.
    pub data_type: DataType,
    /// Units, when given.
    pub units: String,
}

/// One object definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDef {
    /// Object id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// `ObjectVersion`, when given.
    pub version: Option<String>,
    /// Multiple instances.
    pub multiple: bool,
    /// Resources by id.
    pub resources: BTreeMap<u16, ResourceDef>,
}

/// Why an XML file is not an object definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Not well-formed XML.
    #[error("{origin}: not XML: {why}")]
    Xml {
        /// The file.
        origin: String,
        /// The parser's message.
        why: String,
    },
    /// Well-formed, but not `<LWM2M><Object>` with an `ObjectID`, or a bad id.
    #[error("{origin}: not an LwM2M object definition: {why}")]
    Shape {
        /// The file.
        origin: String,
        /// What is wrong.
        why: String,
    },
}

/// The built-in definitions: objects 0, 1, 3, 4, 5, 6, 3303, 3304, 3311.
const BUILTIN: &[(&str, &str)] = &[
    (
        "LWM2M_Security-v1_0.xml",
        include_str!("../xml/LWM2M_Security-v1_0.xml"),
    ),
    (
        "LWM2M_Server-v1_0.xml",
        include_str!("../xml/LWM2M_Server-v1_0.xml"),
    ),
    (
        "LWM2M_Device-v1_0_1.xml",
        include_str!("../xml/LWM2M_Device-v1_0_1.xml"),
    ),
    (
        "LWM2M_Connectivity_Monitoring-v1_0.xml",
        include_str!("../xml/LWM2M_Connectivity_Monitoring-v1_0.xml"),
    ),
    (
        "LWM2M_Firmware_Update-v1_0_1.xml",
        include_str!("../xml/LWM2M_Firmware_Update-v1_0_1.xml"),
    ),
    (
        "LWM2M_Location-v1_0.xml",
        include_str!("../xml/LWM2M_Location-v1_0.xml"),
    ),
    ("3303.xml", include_str!("../xml/3303.xml")),
    ("3304.xml", include_str!("../xml/3304.xml")),
    ("3311.xml", include_str!("../xml/3311.xml")),
];

/// The object definitions known.
#[derive(Debug, Clone, Default)]
pub struct Model {
    objects: HashMap<u16, ObjectDef>,
}

impl Model {
    /// The built-in definitions.
    pub fn builtin() -> Model {
        let mut m = Model::default();
        for (origin, text) in BUILTIN {
            // Shipped files; a test proves they parse.
            let _ = m.add_xml(text, origin);
        }
        m
    }

    /// Adds (or replaces) the objects defined in `text`; their ids.
    pub fn add_xml(&mut self, text: &str, origin: &str) -> Result<Vec<u16>, ModelError> {
        let objects = parse_xml(text, origin)?;
        let ids = objects.iter().map(|o| o.id).collect();
        for o in objects {
            self.objects.insert(o.id, o);
        }
        Ok(ids)
    }

    /// The definition of object `id`.
    pub fn object(&self, id: u16) -> Option<&ObjectDef> {
        self.objects.get(&id)
    }

    /// The definition of resource `res` of object `obj`.
    pub fn resource(&self, obj: u16, res: u16) -> Option<&ResourceDef> {
        self.objects.get(&obj)?.resources.get(&res)
    }

    /// The object ids known, ascending.
    pub fn ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.objects.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Reads every `<Object>` of an OMA XML file.
pub fn parse_xml(text: &str, origin: &str) -> Result<Vec<ObjectDef>, ModelError> {
    let text = text.trim_start_matches('\u{feff}');
    let doc = roxmltree::Document::parse(text).map_err(|e| ModelError::Xml {
        origin: origin.to_owned(),
        why: e.to_string(),
    })?;
    let shape = |why: String| ModelError::Shape {
        origin: origin.to_owned(),
        why,
    };
    let root = doc.root_element();
    if !root.has_tag_name("LWM2M") {
        return Err(shape(format!("root element <{}>", root.tag_name().name())));
    }
    let child_text = |n: roxmltree::Node<'_, '_>, tag: &str| -> String {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let mut out = Vec::new();
    for obj in root.children().filter(|n| n.has_tag_name("Object")) {
        let id_text = child_text(obj, "ObjectID");
        let id: u16 = id_text
            .parse()
            .map_err(|_| shape(format!("ObjectID {id_text:?}")))?;
        let mut resources = BTreeMap::new();
        if let Some(list) = obj.children().find(|c| c.has_tag_name("Resources")) {
            for item in list.children().filter(|n| n.has_tag_name("Item")) {
                let rid_text = item.attribute("ID").unwrap_or("");
                let rid: u16 = rid_text
                    .parse()
                    .map_err(|_| shape(format!("object {id}: Item ID {rid_text:?}")))?;
                resources.insert(
                    rid,
                    ResourceDef {
                        id: rid,
                        name: child_text(item, "Name"),
                        operations: child_text(item, "Operations"),
                        multiple: child_text(item, "MultipleInstances") == "Multiple",
                        data_type: DataType::parse(&child_text(item, "Type")),
                        units: child_text(item, "Units"),
                    },
                );
            }
        }
        let version = Some(child_text(obj, "ObjectVersion")).filter(|v| !v.is_empty());
        out.push(ObjectDef {
            id,
            name: child_text(obj, "Name"),
            version,
            multiple: child_text(obj, "MultipleInstances") == "Multiple",
            resources,
        });
    }
    if out.is_empty() {
        return Err(shape("no <Object>".into()));
    }
    Ok(out)
}

/// A TLV resource value as JSON, by type (`None`: unknown resource, shown as text when it is
/// UTF-8, base64 otherwise).
pub fn tlv_value_json(data_type: Option<DataType>, bytes: &[u8]) -> Json {
    let fallback = || match std::str::from_utf8(bytes) {
        Ok(s) => Json::String(s.to_owned()),
        Err(_) => Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    };
    match data_type {
        Some(DataType::Integer | DataType::UnsignedInteger | DataType::Time) => {
            tlv::decode_integer(bytes).map_or_else(|_| fallback(), Json::from)
        }
        Some(DataType::Float) => tlv::decode_float(bytes)
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(fallback, Json::Number),
        Some(DataType::Boolean) => {
            tlv::decode_boolean(bytes).map_or_else(|_| fallback(), Json::Bool)
        }
        Some(DataType::Objlnk) => tlv::decode_objlnk(bytes)
            .map_or_else(|_| fallback(), |(o, i)| Json::String(format!("{o}:{i}"))),
        Some(DataType::Opaque) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        _ => fallback(),
    }
}

/// A plain-text resource value as JSON, by type.
pub fn text_value_json(data_type: Option<DataType>, text: &str) -> Json {
    let t = text.trim();
    match data_type {
        Some(DataType::Integer | DataType::UnsignedInteger | DataType::Time) => t
            .parse::<i64>()
            .map_or_else(|_| Json::String(text.to_owned()), Json::from),
        Some(DataType::Float) => t
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Json::String(text.to_owned()), Json::Number),
        Some(DataType::Boolean) => match t {
            "1" | "true" => Json::Bool(true),
            "0" | "false" => Json::Bool(false),
            _ => Json::String(text.to_owned()),
        },
        _ => Json::String(text.to_owned()),
    }
}

/// Why a JSON value cannot be written as a resource of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} is not a valid {what}")]
pub struct ValueError {
    /// The value given.
    pub value: String,
    /// The type.
    pub what: &'static str,
}

/// A value from an EMQX `write` (`type` + `value`, where numbers may come as strings) as TLV
/// value bytes.
pub fn encode_tlv_value(data_type: DataType, value: &Json) -> Result<Vec<u8>, ValueError> {
    let bad = |what| ValueError {
        value: value.to_string(),
        what,
    };
    let text = match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(match data_type {
        DataType::Integer | DataType::UnsignedInteger | DataType::Time => {
            tlv::encode_integer(text.trim().parse().map_err(|_| bad("integer"))?)
        }
        DataType::Float => tlv::encode_float(text.trim().parse().map_err(|_| bad("float"))?),
        DataType::Boolean => match text.trim() {
            "true" | "1" => vec![1],
            "false" | "0" => vec![0],
            _ => return Err(bad("boolean")),
        },
        DataType::Opaque => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| bad("base64 opaque value"))?,
        DataType::Objlnk => {
            let (o, i) = text.split_once(':').ok_or_else(|| bad("object link"))?;
            let o: u16 = o.trim().parse().map_err(|_| bad("object link"))?;
            let i: u16 = i.trim().parse().map_err(|_| bad("object link"))?;
            [o.to_be_bytes(), i.to_be_bytes()].concat()
        }
        DataType::String | DataType::Corelnk | DataType::None => text.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_object_parses_with_its_resources() {
        for (origin, text) in BUILTIN {
            parse_xml(text, origin).unwrap_or_else(|e| panic!("{e}"));
        }
        let m = Model::builtin();
        assert_eq!(m.ids(), [0, 1, 3, 4, 5, 6, 3303, 3304, 3311]);
        let device = m.object(3).unwrap();
        assert_eq!(device.name, "Device");
        assert_eq!(device.resources.len(), 23);
        let voltage = m.resource(3, 7).unwrap();
        assert!(voltage.multiple);
        assert_eq!(voltage.data_type, DataType::Integer);
        assert_eq!(m.resource(3, 4).unwrap().operations, "E");
        assert_eq!(m.resource(3303, 5700).unwrap().data_type, DataType::Float);
        assert_eq!(m.resource(3311, 5850).unwrap().data_type, DataType::Boolean);
        assert_eq!(m.resource(6, 0).unwrap().units, "Deg");
    }

    #[test]
    fn a_user_file_adds_an_object_and_bad_files_are_named() {
        let mut m = Model::builtin();
        let xml = r#"<LWM2M><Object><Name>Pump</Name><ObjectID>33000</ObjectID>
            <MultipleInstances>Multiple</MultipleInstances><Resources>
            <Item ID="1"><Name>Flow</Name><Operations>R</Operations><Type>Float</Type></Item>
            </Resources></Object></LWM2M>"#;
        assert_eq!(m.add_xml(xml, "pump.xml"), Ok(vec![33000]));
        assert_eq!(m.resource(33000, 1).unwrap().name, "Flow");
        assert!(matches!(
            m.add_xml("<LWM2M>", "a.xml"),
            Err(ModelError::Xml { .. })
        ));
        let e = m.add_xml("<Other/>", "b.xml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "b.xml: not an LwM2M object definition: root element <Other>"
        );
        assert!(m
            .add_xml(
                "<LWM2M><Object><ObjectID>x</ObjectID></Object></LWM2M>",
                "c.xml"
            )
            .is_err());
    }

    #[test]
    fn values_convert_by_type_both_ways() {
        assert_eq!(
            tlv_value_json(Some(DataType::Integer), &[0x00, 0xc8]),
            Json::from(200)
        );
        assert_eq!(
            tlv_value_json(Some(DataType::Boolean), &[1]),
            Json::Bool(true)
        );
        assert_eq!(
            tlv_value_json(Some(DataType::Objlnk), &[0, 3, 0, 1]),
            Json::from("3:1")
        );
        assert_eq!(
            tlv_value_json(Some(DataType::Opaque), b"hi"),
            Json::from("aGk=")
        );
        assert_eq!(tlv_value_json(None, b"text"), Json::from("text"));
        assert_eq!(
            text_value_json(Some(DataType::Float), "21.5"),
            serde_json::json!(21.5)
        );
        assert_eq!(
            text_value_json(Some(DataType::Boolean), "0"),
            Json::Bool(false)
        );
        assert_eq!(
            encode_tlv_value(DataType::Integer, &Json::from("200")),
            Ok(vec![0, 200])
        );
        assert_eq!(
            encode_tlv_value(DataType::Boolean, &Json::from("true")),
            Ok(vec![1])
        );
        assert_eq!(
            encode_tlv_value(DataType::Objlnk, &Json::from("1:2")),
            Ok(vec![0, 1, 0, 2])
        );
        assert_eq!(
            encode_tlv_value(DataType::Opaque, &Json::from("aGk=")),
            Ok(b"hi".to_vec())
        );
        assert!(encode_tlv_value(DataType::Integer, &Json::from("x")).is_err());
        assert_eq!(DataType::from_emqx_name("Float"), Some(DataType::Float));
    }
}
