//! Feeds arbitrary bytes as a WebSocket client's stream into a `ws` listener's terminator
//! (`holdfast::broker::terminate::ws_session`: the real upgrade with its path and subprotocol
//! checks, then the real frame proxy to a drained socketpair), over an in-memory duplex on a
//! current-thread runtime with a paused clock. Must never panic or hang.
//!
//! The input is split like a client's: the request head up to the first blank line, then,
//! once the reply head is in (tungstenite refuses frames pipelined behind the request), the
//! rest as frames. Seeds: `corpus/ws` (not committed; see the README).
#![no_main]

use holdfast::broker::terminate::ws_session;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The terminator's message cap for a 1 KiB `max_packet_size` (small, so the fuzzer reaches it).
const MAX_MESSAGE: usize = 1024 + 8;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    else {
        return;
    };
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 4);
    let (head, rest) = data.split_at(split);
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let client_side = async move {
            let (mut rx, mut tx) = tokio::io::split(client);
            let mut got = Vec::new();
            let _ = tx.write_all(head).await;
            let mut byte = [0u8; 1];
            while !rest.is_empty() && !got.ends_with(b"\r\n\r\n") {
                match tokio::time::timeout(Duration::from_secs(1), rx.read(&mut byte)).await {
                    Ok(Ok(1)) => got.push(byte[0]),
                    _ => break,
                }
            }
            let _ = tx.write_all(rest).await;
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n @ 1..)) =
                tokio::time::timeout(Duration::from_secs(1), rx.read(&mut buf)).await
            {
                got.extend_from_slice(&buf[..n]);
            }
            let _ = tx.shutdown().await;
            let _ = rx.read_to_end(&mut got).await;
        };
        let session = async {
            // A session that outlives every timer the proxy sets is a hang.
            tokio::time::timeout(Duration::from_secs(60), ws_session(server, MAX_MESSAGE))
                .await
                .expect("the WebSocket session hung")
        };
        let (session, ()) = tokio::join!(session, client_side);
        assert!(session.mqtt_bytes.len() <= 64 * 1024);
    });
});
