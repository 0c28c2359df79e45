//! The entry points the fuzz targets (`protocols/lwm2m/fuzz`) and the unit tests share: the
//! decoders a device's payload meets. Must never panic on any input; whatever decodes
//! re-encodes to the same value.

use crate::{link, senml, tlv};

/// TLV: decode, re-encode, decode again to the same entries.
pub fn tlv(data: &[u8]) {
    if let Ok(entries) = tlv::decode(data) {
        let again = tlv::decode(&tlv::encode(&entries));
        assert_eq!(
            again.as_ref(),
            Ok(&entries),
            "TLV re-encoding changed the entries"
        );
    }
    for width in [1usize, 2, 4, 8] {
        if let Some(b) = data.get(..width) {
            let _ = tlv::decode_integer(b);
            let _ = tlv::decode_float(b);
        }
    }
}

/// SenML JSON: decode, re-encode, decode again to the same records.
pub fn senml_json(data: &[u8]) {
    if let Ok(records) = senml::decode_json(data) {
        let again = senml::decode_json(&senml::encode_json(&records));
        assert_eq!(again.as_ref().map(Vec::len), Ok(records.len()));
    }
}

/// SenML CBOR: decode.
pub fn senml_cbor(data: &[u8]) {
    let _ = senml::decode_cbor(data);
}

/// Link format: parse, read as a registration, format and parse again to the same links.
pub fn link(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(links) = link::parse(text) {
        let _ = link::registration(&links);
        assert_eq!(link::parse(&link::format(&links)).as_ref(), Ok(&links));
    }
}

#[cfg(test)]
mod tests {
    /// The committed seeds (`fuzz/seeds/{target}`) run through the entry points on every
    /// `cargo test`.
    #[test]
    fn the_committed_fuzz_seeds_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 4] = [
            ("tlv", super::tlv),
            ("senml_json", super::senml_json),
            ("senml_cbor", super::senml_cbor),
            ("link", super::link),
        ];
        for (name, run) in targets {
            let mut n = 0;
            for entry in std::fs::read_dir(root.join(name)).unwrap() {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
                n += 1;
            }
            assert!(n >= 3, "only {n} seeds for {name}");
        }
    }
}
