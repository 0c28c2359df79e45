//! Feeds arbitrary text to the config loader (`holdfast::config::parse`), as a config file
//! and as an environment override. Must never panic: bad input is a list of problems.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = holdfast::config::parse(text, "fuzz.toml", Vec::new());
    // The same text as the value of an override of a few kinds of key.
    for var in [
        "HOLDFAST__MQTT__MESSAGES_RATE",
        "HOLDFAST__MQTT__SESSION_EXPIRY",
        "HOLDFAST__LISTENERS__0__BIND",
    ] {
        let _ = holdfast::config::parse("", "fuzz.toml", vec![(var.to_owned(), text.to_owned())]);
    }
});
