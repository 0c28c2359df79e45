//! Feeds arbitrary bytes from a serial line to the raw serial framing decoders
//! (`holdfast::serial::framing`), in reads of arbitrary sizes, for every framing: never a
//! panic, never a frame longer than `max_frame`, and what `encode` makes decodes to itself.
#![no_main]

use holdfast::serial::framing::{encode, Decoded, Decoder, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut.max(1));
    for framing in [
        Framing::Line { delimiter: b"\n".to_vec() },
        Framing::Line { delimiter: b"\r\n".to_vec() },
        Framing::Length { prefix: 1, big_endian: true },
        Framing::Length { prefix: 2, big_endian: false },
        Framing::Length { prefix: 4, big_endian: true },
        Framing::Idle,
    ] {
        let mut decoder = Decoder::new(framing.clone(), 64);
        for chunk in bytes.chunks(cut) {
            for decoded in decoder.push(chunk) {
                if let Decoded::Frame(f) = decoded {
                    assert!(f.len() <= 64, "a frame of {} bytes past max_frame", f.len());
                }
            }
        }
        let _ = decoder.idle();
        // A message that fits comes back as itself (line framing: without the delimiter).
        let message: Vec<u8> = bytes.iter().copied().filter(|b| *b != b'\n' && *b != b'\r').take(64).collect();
        if let Ok(wire) = encode(&framing, 64, &message) {
            if matches!(framing, Framing::Idle) {
                continue;
            }
            let mut decoder = Decoder::new(framing.clone(), 64);
            let frames: Vec<Vec<u8>> = decoder
                .push(&wire)
                .into_iter()
                .filter_map(|d| match d {
                    Decoded::Frame(f) => Some(f),
                    Decoded::Oversized { .. } => None,
                })
                .collect();
            assert_eq!(frames, vec![message], "{framing:?}");
        }
    }
});
