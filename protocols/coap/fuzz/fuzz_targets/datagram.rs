//! Arbitrary bytes as a datagram on the CoAP port: decode, check, parse as an EMQX request,
//! re-encode (see `holdfast_coap::fuzz`). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| holdfast_coap::fuzz::datagram(data));
