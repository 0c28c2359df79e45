//! The entry point the fuzz target (`protocols/coap/fuzz`, `datagram`) and the unit tests share:
//! everything the server does with one datagram before a client's task sees it (and the raw
//! client-id read that hands a served client's datagrams on undecoded).
//!
//! Must never panic on any input; a datagram that decodes must encode and decode again to the
//! same message.

use crate::block::BlockValue;
use crate::{message, request, CoapOption};

/// Decodes `data` as the gateway's reading task does (header peek, checks, critical options,
/// the EMQX request, the block options), then re-encodes and re-decodes what decoded.
pub fn datagram(data: &[u8]) {
    let _ = message::peek_header(data);
    // The reading task's raw read of the client id must agree with the full decode.
    let raw_client_id = message::request_client_id(data);
    let Ok(packet) = message::decode(data, usize::MAX) else {
        return;
    };
    let _ = message::unknown_critical_option(&packet, message::SUPPORTED_CRITICAL);
    if let (Some(id), Ok(r)) = (raw_client_id, request::parse(&packet)) {
        assert_eq!(
            r.identity.client_id.as_deref(),
            Some(id),
            "the raw read and the parser disagree"
        );
    }
    let _ = packet.get_first_option_as::<BlockValue>(CoapOption::Block1);
    let _ = packet.get_first_option_as::<BlockValue>(CoapOption::Block2);
    let _ = packet.get_observe_value();
    let bytes = match packet.to_bytes_unlimited() {
        Ok(bytes) => bytes,
        Err(e) => panic!("decoded {packet:?} does not encode: {e}"),
    };
    assert_eq!(
        message::decode(&bytes, usize::MAX).as_ref(),
        Ok(&packet),
        "re-decoding changed the message"
    );
}

#[cfg(test)]
mod tests {
    /// The committed seeds (`fuzz/seeds/datagram`) run through the fuzz entry point on every
    /// `cargo test`.
    #[test]
    fn the_committed_fuzz_seeds_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/datagram");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            super::datagram(&bytes);
            n += 1;
        }
        assert!(n >= 8, "only {n} seeds in {}", dir.display());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_pass_the_fuzz_entry_point(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            super::datagram(&bytes);
        }
    }
}
