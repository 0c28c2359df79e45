//! Feeds arbitrary datagrams to the DTLS sessions of the CoAP and LwM2M ports
//! (`holdfast::dtls::Sessions`), as if from three peers, with the clock moving on between
//! them: the first bytes pick the peer and the time step, the rest is the datagram. Must never
//! panic (a panic is an abort in the release build) and never finish a handshake without the
//! key: a garbage datagram is dropped and counted.
#![no_main]

use holdfast::dtls::{PskTable, Sessions};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Ok(table) = PskTable::parse("dev1:30313233343536373839616263646566\n", "psk") else {
        return;
    };
    let sessions = Sessions::new(Some(table), None, "holdfast", 4, Duration::from_secs(60));
    let peers: [SocketAddr; 3] = [
        SocketAddr::from(([127, 0, 0, 1], 5000)),
        SocketAddr::from(([127, 0, 0, 1], 5001)),
        SocketAddr::from(([10, 0, 0, 9], 5684)),
    ];
    let mut now = Instant::now();
    // Several datagrams per input, separated by 0xFF 0x00 (a byte pair rare at record starts).
    for chunk in data.split(|b| *b == 0xFF).filter(|c| !c.is_empty()) {
        let (head, datagram) = chunk.split_at(1);
        let peer = peers[usize::from(head[0] % 3)];
        now += Duration::from_millis(u64::from(head[0] >> 2) * 50);
        let _ = sessions.receive(datagram, peer, now);
        let _ = sessions.tick(now);
        let _ = sessions.seal(b"x", peer);
        assert!(sessions.identity(peer).is_none(), "a handshake finished without the key");
    }
});
