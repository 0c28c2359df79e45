//! The OMA TLV content format (application/vnd.oma.lwm2m+tlv, 11542; OMA-TS-LightweightM2M
//! 1.0.2 section 6.4.3).
//!
//! Owns the byte layout: the type byte (identifier kind, identifier length, length kind), the
//! nesting of object instances and multiple resources, and the value encodings of the data
//! types. Bounded: nesting deeper than an object instance > multiple resource > resource
//! instance is refused, and so is a length that runs past the input. Never panics on input.
//!
//! Integers are signed big-endian two's complement in 1, 2, 4 or 8 bytes, and encoded in the
//! fewest of those that hold the value: 200 is `00 C8`, not `C8` (which reads back as -56:
//! the EMQX bug the design names).

/// What a TLV entry identifies (bits 7-6 of its type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An object instance; its value is TLVs of resources.
    ObjectInstance,
    /// One instance of a multiple resource.
    ResourceInstance,
    /// A multiple resource; its value is TLVs of resource instances.
    MultipleResource,
    /// A single resource with its value.
    Resource,
}

/// One TLV entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Tlv {
    /// What it identifies.
    pub kind: Kind,
    /// The instance or resource id.
    pub id: u16,
    /// Its value.
    pub value: Value,
}

/// A TLV entry's value: bytes, or (object instance, multiple resource) entries.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// The raw value of a resource or resource instance.
    Bytes(Vec<u8>),
    /// The entries of an object instance or a multiple resource.
    Nested(Vec<Tlv>),
}

/// Why bytes are not TLV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// An entry's header or value runs past the end.
    #[error("truncated TLV at byte {0}")]
    Truncated(usize),
    /// Nesting deeper than object instance > multiple resource > resource instance, or an
    /// entry kind where it cannot be (a resource instance at the top of a resource).
    #[error("TLV nesting not allowed at byte {0}")]
    BadNesting(usize),
    /// A value of the wrong size for its type.
    #[error("a {what} value cannot be {len} bytes long")]
    BadLength {
        /// The type.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A string that is not UTF-8.
    #[error("string value is not UTF-8")]
    NotUtf8,
}

/// Decodes a TLV payload (the entries at the top level).
pub fn decode(bytes: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    decode_level(bytes, 0, 0)
}

/// Nesting: 0 = top, 1 inside an object instance, 2 inside a multiple resource.
fn decode_level(bytes: &[u8], base: usize, depth: u8) -> Result<Vec<Tlv>, TlvError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at = base + i;
        let t = bytes[i];
        let kind = match t >> 6 {
            0 => Kind::ObjectInstance,
            1 => Kind::ResourceInstance,
            2 => Kind::MultipleResource,
            _ => Kind::Resource,
        };
        let id_len = if t & 0x20 != 0 { 2 } else { 1 };
        let len_len = usize::from((t >> 3) & 0x3);
        let header = 1 + id_len + len_len;
        let head = bytes.get(i..i + header).ok_or(TlvError::Truncated(at))?;
        let id = if id_len == 2 {
            u16::from_be_bytes([head[1], head[2]])
        } else {
            u16::from(head[1])
        };
        let len = if len_len == 0 {
            usize::from(t & 0x7)
        } else {
            head[1 + id_len..]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let start = i + header;
        let end = start.checked_add(len).ok_or(TlvError::Truncated(at))?;
        let body = bytes.get(start..end).ok_or(TlvError::Truncated(at))?;
        let allowed = matches!(
            (depth, kind),
            (0, _) | (1, Kind::Resource | Kind::MultipleResource) | (2, Kind::ResourceInstance)
        );
        if !allowed {
            return Err(TlvError::BadNesting(at));
        }
        let value = match kind {
            Kind::ObjectInstance => Value::Nested(decode_level(body, base + start, 1)?),
            Kind::MultipleResource => Value::Nested(decode_level(body, base + start, 2)?),
            Kind::Resource | Kind::ResourceInstance => Value::Bytes(body.to_vec()),
        };
        out.push(Tlv { kind, id, value });
        i = end;
    }
    Ok(out)
}

/// Encodes entries as a TLV payload.
pub fn encode(entries: &[Tlv]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        encode_one(e, &mut out);
    }
    out
}

fn encode_one(e: &Tlv, out: &mut Vec<u8>) {
    let body = match &e.value {
        Value::Bytes(b) => b.clone(),
        Value::Nested(inner) => encode(inner),
    };
    let kind_bits: u8 = match e.kind {
        Kind::ObjectInstance => 0,
        Kind::ResourceInstance => 1,
        Kind::MultipleResource => 2,
        Kind::Resource => 3,
    };
    let mut t = kind_bits << 6;
    if e.id > 0xff {
        t |= 0x20;
    }
    let len = body.len();
    let len_bytes: Vec<u8> = if len < 8 {
        t |= len as u8;
        Vec::new()
    } else if len <= 0xff {
        t |= 0x08;
        vec![len as u8]
    } else if len <= 0xffff {
        t |= 0x10;
        (len as u16).to_be_bytes().to_vec()
    } else {
        t |= 0x18;
        let l = (len as u32).min(0x00ff_ffff).to_be_bytes();
        l[1..].to_vec()
    };
    out.push(t);
    if e.id > 0xff {
        out.extend_from_slice(&e.id.to_be_bytes());
    } else {
        out.push(e.id as u8);
    }
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&body);
}

/// An integer value: signed, in the fewest of 1, 2, 4 or 8 bytes that hold it.
pub fn encode_integer(v: i64) -> Vec<u8> {
    if let Ok(b) = i8::try_from(v) {
        b.to_be_bytes().to_vec()
    } else if let Ok(s) = i16::try_from(v) {
        s.to_be_bytes().to_vec()
    } else if let Ok(w) = i32::try_from(v) {
        w.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// Reads an integer value of 1, 2, 4 or 8 bytes (sign-extended).
pub fn decode_integer(b: &[u8]) -> Result<i64, TlvError> {
    Ok(match *b {
        [a] => i64::from(a as i8),
        [a, b] => i64::from(i16::from_be_bytes([a, b])),
        [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => {
            return Err(TlvError::BadLength {
                what: "integer",
                len: b.len(),
            })
        }
    })
}

/// Reads a float value of 4 or 8 bytes.
pub fn decode_float(b: &[u8]) -> Result<f64, TlvError> {
    Ok(match *b {
        [a, b, c, d] => f64::from(f32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => f64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => {
            return Err(TlvError::BadLength {
                what: "float",
                len: b.len(),
            })
        }
    })
}

/// A float value: 4 bytes when `f32` holds it exactly, else 8.
pub fn encode_float(v: f64) -> Vec<u8> {
    let narrow = v as f32;
    if f64::from(narrow) == v {
        narrow.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// Reads a boolean value (one byte, 0 or 1).
pub fn decode_boolean(b: &[u8]) -> Result<bool, TlvError> {
    match b {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(TlvError::BadLength {
            what: "boolean",
            len: b.len(),
        }),
    }
}

/// Reads an object link value (`obj:inst`, 2 + 2 bytes).
pub fn decode_objlnk(b: &[u8]) -> Result<(u16, u16), TlvError> {
    match *b {
        [a, b, c, d] => Ok((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))),
        _ => Err(TlvError::BadLength {
            what: "objlnk",
            len: b.len(),
        }),
    }
}

/// Reads a string value.
pub fn decode_string(b: &[u8]) -> Result<String, TlvError> {
    String::from_utf8(b.to_vec()).map_err(|_| TlvError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(id: u16, v: &[u8]) -> Tlv {
        Tlv {
            kind: Kind::Resource,
            id,
            value: Value::Bytes(v.to_vec()),
        }
    }

    /// The example of OMA-TS-LightweightM2M 1.0.2, 6.4.3.1: a Read of /3/0 (Device).
    const DEVICE_EXAMPLE: &[u8] = &[
        0xC8, 0x00, 0x14, b'O', b'p', b'e', b'n', b' ', b'M', b'o', b'b', b'i', b'l', b'e', b' ',
        b'A', b'l', b'l', b'i', b'a', b'n', b'c', b'e', //
        0xC8, 0x01, 0x16, b'L', b'i', b'g', b'h', b't', b'w', b'e', b'i', b'g', b'h', b't', b' ',
        b'M', b'2', b'M', b' ', b'C', b'l', b'i', b'e', b'n', b't', //
        0xC8, 0x02, 0x09, b'3', b'4', b'5', b'0', b'0', b'0', b'1', b'2', b'3', //
        0xC3, 0x03, b'1', b'.', b'0', //
        0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05, //
        0x88, 0x07, 0x08, 0x42, 0x00, 0x0E, 0xD8, 0x42, 0x01, 0x13, 0x88, //
        0x87, 0x08, 0x41, 0x00, 0x7D, 0x42, 0x01, 0x03, 0x84, //
        0xC1, 0x09, 0x64, //
        0xC1, 0x0A, 0x0F, //
        0x83, 0x0B, 0x41, 0x00, 0x00, //
        0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F, //
        0xC6, 0x0E, b'+', b'0', b'2', b':', b'0', b'0', //
        0xC1, 0x10, b'U',
    ];

    #[test]
    fn the_spec_example_of_a_device_read_decodes_and_encodes_back() {
        let entries = decode(DEVICE_EXAMPLE).unwrap();
        assert_eq!(entries.len(), 13);
        assert_eq!(entries[0], res(0, b"Open Mobile Alliance"));
        assert_eq!(entries[3], res(3, b"1.0"));
        // /3/0/7: supply voltages, a multiple resource of two 2-byte integers.
        let Value::Nested(voltages) = &entries[5].value else {
            panic!("{:?}", entries[5]);
        };
        assert_eq!(entries[5].kind, Kind::MultipleResource);
        let values: Vec<i64> = voltages
            .iter()
            .map(|t| match &t.value {
                Value::Bytes(b) => decode_integer(b).unwrap(),
                Value::Nested(_) => panic!("nested"),
            })
            .collect();
        assert_eq!(values, [3800, 5000]);
        assert_eq!(encode(&entries), DEVICE_EXAMPLE);
    }

    #[test]
    fn integers_are_signed_and_minimally_encoded() {
        for (v, bytes) in [
            (0i64, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x00, 0x80]),
            (200, vec![0x00, 0xc8]),
            (255, vec![0x00, 0xff]),
            (-1, vec![0xff]),
            (-129, vec![0xff, 0x7f]),
            (40_000, vec![0x00, 0x00, 0x9c, 0x40]),
            (1 << 40, vec![0, 0, 1, 0, 0, 0, 0, 0]),
        ] {
            assert_eq!(encode_integer(v), bytes, "{v}");
            assert_eq!(decode_integer(&bytes), Ok(v));
        }
        assert!(decode_integer(&[1, 2, 3]).is_err());
    }

    #[test]
    fn floats_booleans_and_object_links() {
        assert_eq!(encode_float(1.5), 1.5f32.to_be_bytes());
        assert_eq!(encode_float(0.1).len(), 8);
        assert_eq!(decode_float(&encode_float(0.1)), Ok(0.1));
        assert_eq!(decode_boolean(&[1]), Ok(true));
        assert!(decode_boolean(&[2]).is_err());
        assert_eq!(decode_objlnk(&[0, 3, 0, 1]), Ok((3, 1)));
    }

    #[test]
    fn long_values_and_wide_ids_round_trip() {
        let big = vec![7u8; 70_000];
        let entries = vec![
            res(300, &big),
            res(5, &[1; 300]),
            Tlv {
                kind: Kind::ObjectInstance,
                id: 2,
                value: Value::Nested(vec![res(1, b"x")]),
            },
        ];
        assert_eq!(decode(&encode(&entries)), Ok(entries));
    }

    #[test]
    fn truncation_and_bad_nesting_are_errors() {
        assert_eq!(
            decode(&[0xC8, 0x00, 0x14, b'O']),
            Err(TlvError::Truncated(0))
        );
        assert_eq!(decode(&[0xE8]), Err(TlvError::Truncated(0)));
        // a resource instance directly inside an object instance
        assert_eq!(
            decode(&[0x03, 0x00, 0x41, 0x00, 0x01]),
            Err(TlvError::BadNesting(2))
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics_and_what_decodes_round_trips(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)
        ) {
            if let Ok(entries) = decode(&bytes) {
                let again = decode(&encode(&entries));
                proptest::prop_assert_eq!(again, Ok(entries));
            }
        }
    }
}
