//! `holdfast_lwm2m::fuzz::senml_json` on arbitrary bytes: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| holdfast_lwm2m::fuzz::senml_json(data));
