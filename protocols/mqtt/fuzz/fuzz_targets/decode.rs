//! Decodes arbitrary bytes as each protocol version. Must never panic; whatever decodes must
//! encode, and decode again to the same packet.
#![no_main]

use bytes::BytesMut;
use holdfast_mqtt::{decode, encode, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for protocol in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let mut buf = BytesMut::from(data);
        // Decode every packet in the input, as a connection's read loop would.
        while let Ok(Some(packet)) = decode(&mut buf, protocol, MAX_PACKET_SIZE) {
            let mut out = BytesMut::new();
            if let Err(e) = encode(&packet, protocol, &mut out) {
                panic!("decoded {packet:?} does not encode: {e}");
            }
            let again = decode(&mut out, protocol, usize::MAX);
            assert_eq!(again, Ok(Some(packet)), "re-decoding changed the packet");
            assert!(out.is_empty(), "re-encoding left {} bytes over", out.len());
        }
    }
});
