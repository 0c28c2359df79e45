//! DTLS 1.2 for the UDP gateways (CoAP `coaps` on 5684, LwM2M on 5784): one dimpl engine
//! (sans-IO) per peer address, with pre-shared keys from a PSK file, X.509 certificates both
//! ways, or both on one port (the client's ClientHello picks: a client offering a PSK suite
//! gets the PSK engine).
//!
//! Owns the PSK table (`identity:hexkey` lines, loaded once at start), the certificate side
//! (the server's certificate and key, the devices' CA), the sessions (bounded by count, a
//! handshake deadline and an idle limit) and the record layer between the socket and the CoAP
//! code: [`Sessions::receive`] turns a datagram into records to send back and plaintext CoAP
//! messages, [`Sessions::seal`] a CoAP message into records. PSK: TLS_PSK_WITH_AES_128_CCM_8
//! (the one LwM2M mandates) with the extended master secret; certificates: ECDHE_ECDSA suites
//! with a device certificate required and verified against the CA by webpki (as the MQTT TLS
//! listener does) before the handshake may finish. The identity a peer proved (its PSK
//! identity, or its certificate's CN) is what the gateways give the broker as its user name.
//! Never does I/O itself; never logs a key.

use crate::config::{DtlsCertificates, DtlsConfig};
use crate::udp::lock;
use dimpl::{Config, Dtls, DtlsCertificate, Output, PskResolver};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls::{self, pki_types, server::danger::ClientCertVerifier};

/// A handshake not finished within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest record the engine writes into one datagram buffer.
const OUT_BUF: usize = 4096;

/// Identities and their keys.
#[derive(Clone, Default)]
pub struct PskTable {
    keys: HashMap<Vec<u8>, Vec<u8>>,
}

impl std::fmt::Debug for PskTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PskTable({} identities)", self.keys.len())
    }
}

impl PskTable {
    /// Reads a PSK file: one `identity:key` a line, the key in hex (`0x` optional), `#`
    /// comments and blank lines ignored. Errors name the file and line.
    pub fn load(path: &Path) -> Result<PskTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PskTable::parse(&text, &path.display().to_string())
    }

    /// The same from text.
    pub fn parse(text: &str, origin: &str) -> Result<PskTable, String> {
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{origin}:{}", n + 1);
            let Some((identity, key)) = line.rsplit_once(':') else {
                return Err(format!("{at}: expected identity:hexkey"));
            };
            if identity.is_empty() {
                return Err(format!("{at}: empty identity"));
            }
            let key = key.trim().trim_start_matches("0x");
            let bytes = hex(key).ok_or_else(|| format!("{at}: the key is not hex"))?;
            if bytes.len() < 8 {
                return Err(format!("{at}: the key is shorter than 8 bytes"));
            }
            keys.insert(identity.as_bytes().to_vec(), bytes);
        }
        Ok(PskTable { keys })
    }

    /// Identities known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The certificate side of a DTLS port.
pub struct CertAuth {
    certificate: DtlsCertificate,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for CertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertAuth({:?})", self.certificate)
    }
}

impl CertAuth {
    /// Loads the server's certificate and key and the devices' CA. Errors name the file.
    pub fn load(c: &DtlsCertificates) -> Result<CertAuth, String> {
        use crate::broker::tls::{read_certs, read_key};
        let certs = read_certs(&c.cert).map_err(|e| e.to_string())?;
        let certificate = certs
            .first()
            .map(|der| der.as_ref().to_vec())
            .ok_or_else(|| format!("{}: no certificate", c.cert.display()))?;
        let key = read_key(&c.key).map_err(|e| e.to_string())?;
        let private_key = key.secret_der().to_vec();
        // The engine would panic (an abort) on a key it cannot use: tried here, once.
        dimpl::crypto::rust_crypto::default_provider()
            .key_provider
            .load_private_key(&private_key)
            .map_err(|e| {
                format!(
                    "{}: not an ECDSA P-256 or P-384 private key ({e})",
                    c.key.display()
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs(&c.client_ca).map_err(|e| e.to_string())? {
            roots
                .add(ca)
                .map_err(|e| format!("{}: {e}", c.client_ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", c.client_ca.display()))?;
        Ok(CertAuth {
            certificate: DtlsCertificate {
                certificate,
                private_key,
            },
            verifier,
        })
    }

    /// Verifies a device's certificate against the CA (signature chain, validity, client
    /// use); its CN, the identity the device proved.
    fn verify(&self, der: &[u8]) -> Result<String, String> {
        let cert = pki_types::CertificateDer::from(der.to_vec());
        self.verifier
            .verify_client_cert(&cert, &[], pki_types::UnixTime::now())
            .map_err(|e| format!("client certificate refused: {e}"))?;
        crate::broker::peer_cert::PeerCert::from_der(der)
            .and_then(|p| p.cn)
            .filter(|cn| !cn.is_empty())
            .ok_or_else(|| "client certificate without a CN".to_owned())
    }
}

/// Whether a ClientHello (the first datagram of a session) offers a PSK cipher suite; `None`
/// when it cannot be read (fragmented or malformed: the engine reports it).
fn offers_psk(datagram: &[u8]) -> Option<bool> {
    // Record header (13), handshake header (12), client_version (2), random (32).
    let body = datagram.get(13..)?;
    if *body.first()? != 1 {
        return None; // not a ClientHello
    }
    let hello = body.get(12..)?;
    let mut i = 2 + 32;
    let session_id = usize::from(*hello.get(i)?);
    i += 1 + session_id;
    let cookie = usize::from(*hello.get(i)?);
    i += 1 + cookie;
    let len = usize::from(u16::from_be_bytes([*hello.get(i)?, *hello.get(i + 1)?]));
    let suites = hello.get(i + 2..i + 2 + len)?;
    // TLS_PSK_WITH_AES_128_CCM_8, the PSK suite the engine speaks.
    Some(
        suites
            .chunks_exact(2)
            .any(|pair| u16::from_be_bytes([pair[0], pair[1]]) == 0xC0A8),
    )
}

/// The resolver of one session: looks keys up and remembers which identity the peer used.
struct Recorder {
    table: Arc<PskTable>,
    identity: Mutex<Option<Vec<u8>>>,
}

impl PskResolver for Recorder {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let key = self.table.keys.get(identity).cloned();
        if key.is_some() {
            if let Ok(mut seen) = self.identity.lock() {
                *seen = Some(identity.to_vec());
            }
        }
        key
    }
}

/// How a session's peer proves who it is.
enum Proof {
    /// A pre-shared key: the identity the key was looked up by.
    Psk(Arc<Recorder>),
    /// A certificate: the CA, and the CN of the certificate it verified.
    Certificate {
        auth: Arc<CertAuth>,
        verified: Option<String>,
    },
}

struct Session {
    dtls: Dtls,
    proof: Proof,
    /// The proven identity, once connected.
    identity: Option<String>,
    started: Instant,
    last: Instant,
    next_timeout: Option<Instant>,
}

impl Session {
    fn start(mut dtls: Dtls, proof: Proof, now: Instant) -> Result<Session, String> {
        // The engine draws its random values in its first timeout: without it, a
        // ClientHello would meet an unset server random.
        dtls.handle_timeout(now).map_err(|e| format!("DTLS: {e}"))?;
        Ok(Session {
            dtls,
            proof,
            identity: None,
            started: now,
            last: now,
            next_timeout: None,
        })
    }
}

/// What a datagram led to.
#[derive(Debug, Default)]
pub struct Received {
    /// Records to send back to the peer (handshake flights, alerts).
    pub to_send: Vec<Vec<u8>>,
    /// Decrypted CoAP messages.
    pub plain: Vec<Vec<u8>>,
    /// The peer's identity, once its handshake is complete.
    pub identity: Option<String>,
    /// The session failed (bad key, bad record) and was dropped: why.
    pub failed: Option<String>,
}

/// The DTLS sessions of one socket.
pub struct Sessions {
    table: Option<Arc<PskTable>>,
    certs: Option<Arc<CertAuth>>,
    hint: Vec<u8>,
    max: usize,
    idle: Duration,
    sessions: Mutex<HashMap<SocketAddr, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({} of at most {})", self.len(), self.max)
    }
}

impl Sessions {
    /// At most `max` sessions; one idle for `idle` is dropped. `hint` is the PSK identity
    /// hint sent to clients. At least one of `table` and `certs` is given.
    pub fn new(
        table: Option<PskTable>,
        certs: Option<CertAuth>,
        hint: &str,
        max: usize,
        idle: Duration,
    ) -> Sessions {
        Sessions {
            table: table.map(Arc::new),
            certs: certs.map(Arc::new),
            hint: hint.as_bytes().to_vec(),
            max: max.max(1),
            idle,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Loads a `dtls` table's PSK file and certificates (`gateway` names the gateway in the
    /// log); errors name the file and why.
    pub fn load(
        cfg: &DtlsConfig,
        gateway: &str,
        max: usize,
        idle: Duration,
    ) -> Result<Sessions, String> {
        let table = match &cfg.psk_file {
            Some(file) => {
                let table = PskTable::load(file)?;
                tracing::info!(identities = table.len(), file = %file.display(), "{gateway}: DTLS pre-shared keys loaded");
                Some(table)
            }
            None => None,
        };
        let certs = match &cfg.certificates {
            Some(c) => {
                let auth = CertAuth::load(c)?;
                tracing::info!(cert = %c.cert.display(), client_ca = %c.client_ca.display(), "{gateway}: DTLS certificates loaded (device certificates required)");
                Some(auth)
            }
            None => None,
        };
        if table.is_none() && certs.is_none() {
            return Err("neither psk_file nor certificates".into());
        }
        Ok(Sessions::new(table, certs, &cfg.identity_hint, max, idle))
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The identity `peer` proved, if its session is established.
    pub fn identity(&self, peer: SocketAddr) -> Option<String> {
        lock(&self.sessions).get(&peer)?.identity.clone()
    }

    /// Feeds a datagram from `from`.
    pub fn receive(&self, data: &[u8], from: SocketAddr, now: Instant) -> Received {
        let mut out = Received::default();
        let mut sessions = lock(&self.sessions);
        if !sessions.contains_key(&from) {
            // Only a ClientHello (handshake record, type 22) opens a session.
            if data.first() != Some(&22) {
                out.failed = Some("not a DTLS handshake".into());
                return out;
            }
            if sessions.len() >= self.max {
                out.failed = Some(format!(
                    "{} DTLS sessions held; handshake refused",
                    self.max
                ));
                return out;
            }
            let certs = match (&self.table, &self.certs) {
                (Some(_), Some(c)) => (offers_psk(data) == Some(false)).then(|| c.clone()),
                (None, Some(c)) => Some(c.clone()),
                _ => None,
            };
            let session = match (certs, &self.table) {
                (Some(auth), _) => self.certificate_session(auth, now),
                (None, Some(table)) => self.psk_session(table, now),
                (None, None) => Err("no DTLS credentials".into()),
            };
            match session {
                Ok(s) => {
                    sessions.insert(from, s);
                }
                Err(e) => {
                    out.failed = Some(e);
                    return out;
                }
            }
        }
        let Some(s) = sessions.get_mut(&from) else {
            return out;
        };
        s.last = now;
        if let Err(e) = s.dtls.handle_packet(data) {
            sessions.remove(&from);
            out.failed = Some(format!("DTLS: {e}"));
            return out;
        }
        let closed = drain(s, &mut out);
        out.identity = s.identity.clone();
        if closed {
            sessions.remove(&from);
        }
        out
    }

    /// A new session answering with a pre-shared key.
    fn psk_session(&self, table: &Arc<PskTable>, now: Instant) -> Result<Session, String> {
        let recorder = Arc::new(Recorder {
            table: table.clone(),
            identity: Mutex::new(None),
        });
        let config = Config::builder()
            .with_psk_server(Some(self.hint.clone()), recorder.clone())
            .build()
            .map_err(|e| format!("DTLS configuration: {e}"))?;
        let dtls = Dtls::new_12_psk(Arc::new(config), now);
        Session::start(dtls, Proof::Psk(recorder), now)
    }

    /// A new session answering with the server's certificate and requiring the device's.
    fn certificate_session(&self, auth: Arc<CertAuth>, now: Instant) -> Result<Session, String> {
        let config = Config::builder()
            .require_client_certificate(true)
            .build()
            .map_err(|e| format!("DTLS configuration: {e}"))?;
        let dtls = Dtls::new_12(Arc::new(config), auth.certificate.clone(), now);
        let proof = Proof::Certificate {
            auth,
            verified: None,
        };
        Session::start(dtls, proof, now)
    }

    /// Encrypts a CoAP message for `to`; `None` when `to` has no established session.
    pub fn seal(&self, plain: &[u8], to: SocketAddr) -> Option<Vec<Vec<u8>>> {
        let mut sessions = lock(&self.sessions);
        let s = sessions.get_mut(&to).filter(|s| s.identity.is_some())?;
        if s.dtls.send_application_data(plain).is_err() {
            sessions.remove(&to);
            return None;
        }
        let mut out = Received::default();
        drain(s, &mut out);
        Some(out.to_send)
    }

    /// Runs the engines' timers (handshake retransmissions) and drops sessions past their
    /// handshake deadline or idle limit; the records to send.
    pub fn tick(&self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut sends = Vec::new();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|peer, s| {
            let stale = if s.identity.is_none() {
                now.duration_since(s.started) > HANDSHAKE_TIMEOUT
            } else {
                now.duration_since(s.last) > self.idle
            };
            if stale {
                return false;
            }
            if s.next_timeout.is_some_and(|t| t <= now) {
                if s.dtls.handle_timeout(now).is_err() {
                    return false;
                }
                let mut out = Received::default();
                let closed = drain(s, &mut out);
                sends.extend(out.to_send.into_iter().map(|r| (*peer, r)));
                return !closed;
            }
            true
        });
        sends
    }

    /// Forgets `peer`'s session (its client ended).
    pub fn forget(&self, peer: SocketAddr) {
        lock(&self.sessions).remove(&peer);
    }
}

/// Drains an engine's output into `out`; true when the peer closed the session.
fn drain(s: &mut Session, out: &mut Received) -> bool {
    let mut buf = vec![0u8; OUT_BUF];
    loop {
        match s.dtls.poll_output(&mut buf) {
            Output::Packet(p) => out.to_send.push(p.to_vec()),
            Output::BufferTooSmall { needed } => buf.resize(needed, 0),
            Output::Timeout(at) => {
                s.next_timeout = Some(at);
                return false;
            }
            Output::PeerCert(der) => {
                let Proof::Certificate { auth, verified } = &mut s.proof else {
                    continue;
                };
                match auth.verify(der) {
                    Ok(cn) => *verified = Some(cn),
                    Err(why) => {
                        out.failed = Some(why);
                        return true;
                    }
                }
            }
            Output::Connected => {
                s.identity = match &s.proof {
                    Proof::Psk(r) => {
                        let id = lock(&r.identity).clone().unwrap_or_default();
                        Some(String::from_utf8_lossy(&id).into_owned())
                    }
                    Proof::Certificate {
                        verified: Some(cn), ..
                    } => Some(cn.clone()),
                    Proof::Certificate { verified: None, .. } => {
                        out.failed =
                            Some("handshake finished without a verified certificate".into());
                        return true;
                    }
                };
            }
            Output::ApplicationData(d) => out.plain.push(d.to_vec()),
            Output::CloseNotify => return true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test client's key resolver: every identity has dev1's key.
    struct Key;

    impl PskResolver for Key {
        fn resolve(&self, _: &[u8]) -> Option<Vec<u8>> {
            Some(b"0123456789abcdef".to_vec())
        }
    }

    #[test]
    fn a_psk_file_is_read_and_its_mistakes_named_by_line() {
        let t = PskTable::parse(
            "# devices\nmeter-1:000102030405060708090a0b0c0d0e0f\n\nplc:0xdeadbeefdeadbeef\n",
            "psk",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.keys[&b"plc".to_vec()],
            [0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(
            PskTable::parse("x\n", "psk").unwrap_err(),
            "psk:1: expected identity:hexkey"
        );
        assert_eq!(
            PskTable::parse("a:zz\n", "psk").unwrap_err(),
            "psk:1: the key is not hex"
        );
        assert_eq!(
            PskTable::parse("\na:0102\n", "psk").unwrap_err(),
            "psk:2: the key is shorter than 8 bytes"
        );
        assert_eq!(
            PskTable::parse(":0102030405060708\n", "psk").unwrap_err(),
            "psk:1: empty identity"
        );
    }

    #[test]
    fn a_client_with_the_key_completes_the_handshake_and_exchanges_data() {
        let table = PskTable::parse("dev1:30313233343536373839616263646566\n", "psk").unwrap();
        let server = Sessions::new(Some(table), None, "holdfast", 4, Duration::from_secs(60));
        let client_cfg = Config::builder()
            .with_psk_client(b"dev1".to_vec(), Arc::new(Key))
            .build()
            .unwrap();
        let now = Instant::now();
        let mut client = Dtls::new_12_psk(Arc::new(client_cfg), now);
        client.set_active(true);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut buf = vec![0u8; OUT_BUF];
        let mut to_server: Vec<Vec<u8>> = Vec::new();
        let mut connected = false;
        for _ in 0..20 {
            let _ = client.handle_timeout(now);
            loop {
                match client.poll_output(&mut buf) {
                    Output::Packet(p) => to_server.push(p.to_vec()),
                    Output::Connected => connected = true,
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            for d in std::mem::take(&mut to_server) {
                let r = server.receive(&d, peer, now);
                assert!(r.failed.is_none(), "{:?}", r.failed);
                for back in r.to_send {
                    client.handle_packet(&back).unwrap();
                }
            }
            if connected && server.identity(peer).is_some() {
                break;
            }
        }
        assert!(connected);
        assert_eq!(server.identity(peer).as_deref(), Some("dev1"));
        client.send_application_data(b"hello").unwrap();
        let mut plain = Vec::new();
        loop {
            match client.poll_output(&mut buf) {
                Output::Packet(p) => plain.extend(server.receive(p, peer, now).plain),
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        assert_eq!(plain, [b"hello".to_vec()]);
        assert!(server.seal(b"back", peer).is_some_and(|r| !r.is_empty()));
        // A peer that is not handshaking gets nothing.
        let stranger: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert!(server
            .receive(&[0x40, 1, 0, 1], stranger, now)
            .failed
            .is_some());
        assert!(server.seal(b"x", stranger).is_none());
    }

    #[test]
    fn a_client_hello_says_whether_it_offers_the_psk_suite() {
        let config = Config::builder()
            .with_psk_client(b"dev1".to_vec(), Arc::new(Key))
            .build()
            .unwrap();
        let now = Instant::now();
        let mut client = Dtls::new_12_psk(Arc::new(config), now);
        client.set_active(true);
        let _ = client.handle_timeout(now);
        let mut buf = vec![0u8; OUT_BUF];
        let hello = loop {
            match client.poll_output(&mut buf) {
                Output::Packet(p) => break p.to_vec(),
                Output::Timeout(_) => panic!("no ClientHello"),
                _ => {}
            }
        };
        assert_eq!(offers_psk(&hello), Some(true));
        // The same hello offering only ECDHE_ECDSA suites (0xC02B) is a certificate client.
        let mut ecdsa = hello.clone();
        let at = (0..ecdsa.len() - 1)
            .find(|&i| ecdsa[i] == 0xC0 && ecdsa[i + 1] == 0xA8)
            .unwrap();
        ecdsa[at + 1] = 0x2B;
        assert_eq!(offers_psk(&ecdsa), Some(false));
        // Cut before its suites: unreadable (the engine then decides).
        for cut in [0, 13, 25, 60] {
            assert_eq!(offers_psk(&hello[..cut]), None, "cut at {cut}");
        }
        assert_eq!(offers_psk(&[22, 0xfe, 0xfd]), None);
    }

    proptest::proptest! {
        /// Garbage that looks like a handshake record never panics the engine (a panic is an
        /// abort in the release build) and never leaves a session connected.
        #[test]
        fn garbage_handshakes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let table = PskTable::parse("dev1:30313233343536373839616263646566\n", "psk").unwrap();
            let server = Sessions::new(Some(table), None, "holdfast", 4, Duration::from_secs(60));
            let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
            let mut datagram = vec![22, 0xfe, 0xfd];
            datagram.extend(tail);
            let now = Instant::now();
            let _ = server.receive(&datagram, peer, now);
            let _ = server.tick(now + Duration::from_secs(5));
            proptest::prop_assert!(server.identity(peer).is_none());
        }
    }
}

/// The sending side of a UDP gateway socket: plain, or through the DTLS sessions.
#[derive(Debug, Clone)]
pub struct Transport {
    socket: Arc<tokio::net::UdpSocket>,
    dtls: Option<Arc<Sessions>>,
}

impl Transport {
    /// Plain datagrams on `socket`.
    pub fn plain(socket: Arc<tokio::net::UdpSocket>) -> Transport {
        Transport { socket, dtls: None }
    }

    /// DTLS records on `socket`, sealed by `sessions`.
    pub fn secure(socket: Arc<tokio::net::UdpSocket>, sessions: Arc<Sessions>) -> Transport {
        Transport {
            socket,
            dtls: Some(sessions),
        }
    }

    /// Whether messages go through DTLS.
    pub fn is_secure(&self) -> bool {
        self.dtls.is_some()
    }

    /// The socket (for reading, and for raw handshake records).
    pub fn socket(&self) -> &Arc<tokio::net::UdpSocket> {
        &self.socket
    }

    /// The DTLS sessions, when secure.
    pub fn sessions(&self) -> Option<&Arc<Sessions>> {
        self.dtls.as_ref()
    }

    /// Sends `message` to `to` without waiting (a full socket buffer drops it, as the network
    /// may; CON messages are retransmitted). False when nothing was sent.
    pub fn try_send(&self, message: &[u8], to: SocketAddr) -> bool {
        match &self.dtls {
            None => self.socket.try_send_to(message, to).is_ok(),
            Some(s) => match s.seal(message, to) {
                Some(records) => records
                    .iter()
                    .all(|r| self.socket.try_send_to(r, to).is_ok()),
                None => false,
            },
        }
    }

    /// Sends `message` to `to`, waiting for room in the socket buffer. The wait (a socket's
    /// send future is hundreds of bytes) is boxed only when the buffer is full, so that the
    /// many tasks that await this stay small.
    pub async fn send(&self, message: &[u8], to: SocketAddr) -> bool {
        match &self.dtls {
            None => self.send_datagram(message, to).await,
            Some(s) => {
                let Some(records) = s.seal(message, to) else {
                    return false;
                };
                for r in records {
                    if !self.send_datagram(&r, to).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    async fn send_datagram(&self, datagram: &[u8], to: SocketAddr) -> bool {
        match self.socket.try_send_to(datagram, to) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Box::pin(self.socket.send_to(datagram, to)).await.is_ok()
            }
            Err(_) => false,
        }
    }
}
