//! A link-cutting MQTT proxy for the bridge tests: it sits on a loopback port between the
//! gateway's bridge client (direction [`Direction::Up`]) and the cloud broker
//! ([`Direction::Down`]), forwards whole MQTT frames both ways, logs every frame it sees, and
//! cuts the link on a chosen frame (the nth PUBREL going up, the first SUBSCRIBE, ...).
//!
//! Owns: the frame splitter (fixed header, variable-length remaining length, whole frame), the
//! decoding of the few fields the tests assert on (packet type, DUP, QoS, packet id, topic,
//! payload, reason code, session present), the cut rules, and the proxy's threads and sockets.
//! Plain std threads and blocking sockets, no tokio. It keeps accepting connections after a
//! cut, so the gateway reconnects through it; [`Proxy::set_accepting`] makes it refuse them
//! (accept and close at once) to hold the link down, and [`Proxy::set_hold_after_cut`] does
//! that at the moment a rule fires. [`Proxy::ends`] says who closed each connection (a rule,
//! the client, the upstream). Everything stops when it is dropped.
//!
//! Per connection a frame is forwarded or dropped under that connection's lock, so once a rule
//! has cut a connection nothing more goes through it, in either direction.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// MQTT packet types (the fixed header's high nibble).
pub const CONNECT: u8 = 1;
/// CONNACK.
pub const CONNACK: u8 = 2;
/// PUBLISH.
pub const PUBLISH: u8 = 3;
/// PUBACK.
pub const PUBACK: u8 = 4;
/// PUBREC.
pub const PUBREC: u8 = 5;
/// PUBREL.
pub const PUBREL: u8 = 6;
/// PUBCOMP.
pub const PUBCOMP: u8 = 7;
/// SUBSCRIBE.
pub const SUBSCRIBE: u8 = 8;
/// SUBACK.
pub const SUBACK: u8 = 9;
/// UNSUBSCRIBE.
pub const UNSUBSCRIBE: u8 = 10;
/// UNSUBACK.
pub const UNSUBACK: u8 = 11;
/// PINGREQ.
pub const PINGREQ: u8 = 12;
/// PINGRESP.
pub const PINGRESP: u8 = 13;
/// DISCONNECT.
pub const DISCONNECT: u8 = 14;
/// AUTH (MQTT 5).
pub const AUTH: u8 = 15;

/// The name of packet type `kind`, for messages.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        CONNECT => "CONNECT",
        CONNACK => "CONNACK",
        PUBLISH => "PUBLISH",
        PUBACK => "PUBACK",
        PUBREC => "PUBREC",
        PUBREL => "PUBREL",
        PUBCOMP => "PUBCOMP",
        SUBSCRIBE => "SUBSCRIBE",
        SUBACK => "SUBACK",
        UNSUBSCRIBE => "UNSUBSCRIBE",
        UNSUBACK => "UNSUBACK",
        PINGREQ => "PINGREQ",
        PINGRESP => "PINGRESP",
        DISCONNECT => "DISCONNECT",
        AUTH => "AUTH",
        _ => "RESERVED",
    }
}

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (the gateway) to the upstream broker (the cloud).
    Up,
    /// From the upstream broker to the client.
    Down,
}

/// What a cut rule does with the frame it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// The frame is not forwarded; both sockets are closed.
    DropAndClose,
    /// The frame is forwarded; then both sockets are closed.
    ForwardThenClose,
}

/// Who or what ended a connection pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// A cut rule fired.
    Rule,
    /// [`Proxy::cut_now`], or the proxy was dropped.
    CutNow,
    /// The client (the gateway) closed or reset its socket.
    Client,
    /// The upstream (the cloud) closed or reset its socket.
    Upstream,
    /// A frame with a malformed remaining length.
    BadFrame,
    /// Forwarding a frame failed.
    WriteFailed,
}

/// One MQTT frame the proxy saw, decoded as far as the tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The connection it travelled on: 1 for the first the proxy accepted, and so on.
    pub conn: usize,
    /// Which way.
    pub dir: Direction,
    /// Packet type, 1..=15 (see the constants of this module).
    pub kind: u8,
    /// PUBLISH: the DUP flag.
    pub dup: bool,
    /// PUBLISH: the QoS (0 for everything else).
    pub qos: u8,
    /// PUBLISH: the RETAIN flag.
    pub retain: bool,
    /// PUBLISH with QoS > 0 (after the topic); PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE,
    /// SUBACK, UNSUBSCRIBE, UNSUBACK (the first two bytes).
    pub packet_id: Option<u16>,
    /// PUBLISH: the topic (lossy UTF-8).
    pub topic: Option<String>,
    /// PUBLISH: the payload (MQTT 5 properties skipped).
    pub payload: Option<Vec<u8>>,
    /// MQTT 5 PUBACK/PUBREC/PUBREL/PUBCOMP: the reason code when the packet carries one;
    /// CONNACK: the return/reason code; SUBACK: the first return/reason code.
    pub reason: Option<u8>,
    /// CONNACK: the session present flag.
    pub session_present: Option<bool>,
    /// CONNECT: the protocol level (4 for 3.1.1, 5 for MQTT 5).
    pub protocol_level: Option<u8>,
    /// Whether the proxy passed it on (false: dropped by a rule, or seen after a cut).
    pub forwarded: bool,
    /// The whole frame, fixed header included.
    pub raw: Vec<u8>,
}

impl Frame {
    /// The payload as (lossy) text, for PUBLISH; "" otherwise.
    pub fn text(&self) -> String {
        self.payload
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    /// Decodes one whole frame (`raw`, fixed header included) that travelled `dir` on
    /// connection `conn`; `v5` says whether that connection speaks MQTT 5. Never panics:
    /// fields it cannot read stay `None`.
    pub fn decode(conn: usize, dir: Direction, raw: &[u8], v5: bool) -> Frame {
        let first = raw.first().copied().unwrap_or(0);
        let kind = first >> 4;
        let body = match header_len(raw) {
            Some(h) => &raw[h.min(raw.len())..],
            None => &[][..],
        };
        let mut f = Frame {
            conn,
            dir,
            kind,
            dup: false,
            qos: 0,
            retain: false,
            packet_id: None,
            topic: None,
            payload: None,
            reason: None,
            session_present: None,
            protocol_level: None,
            forwarded: false,
            raw: raw.to_vec(),
        };
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
        };
        match kind {
            CONNECT => {
                // Protocol name (length-prefixed), then the level.
                if let Some(n) = u16_at(0) {
                    f.protocol_level = body.get(2 + usize::from(n)).copied();
                }
            }
            CONNACK => {
                f.session_present = body.first().map(|b| b & 1 == 1);
                f.reason = body.get(1).copied();
            }
            PUBLISH => {
                f.dup = first & 0x08 != 0;
                f.qos = (first >> 1) & 0x03;
                f.retain = first & 0x01 != 0;
                if let Some(n) = u16_at(0) {
                    let mut at = 2 + usize::from(n);
                    if let Some(t) = body.get(2..at) {
                        f.topic = Some(String::from_utf8_lossy(t).into_owned());
                        if f.qos > 0 {
                            f.packet_id = u16_at(at);
                            at += 2;
                        }
                        if v5 {
                            at = match varint(body.get(at..).unwrap_or(&[])) {
                                Some((len, used)) => at + used + len,
                                None => usize::MAX,
                            };
                        }
                        f.payload = body.get(at..).map(<[u8]>::to_vec);
                    }
                }
            }
            PUBACK | PUBREC | PUBREL | PUBCOMP => {
                f.packet_id = u16_at(0);
                f.reason = body.get(2).copied();
            }
            SUBACK => {
                f.packet_id = u16_at(0);
                let at = if v5 {
                    varint(body.get(2..).unwrap_or(&[])).map(|(len, used)| 2 + used + len)
                } else {
                    Some(2)
                };
                f.reason = at.and_then(|at| body.get(at).copied());
            }
            SUBSCRIBE | UNSUBSCRIBE | UNSUBACK => f.packet_id = u16_at(0),
            _ => {}
        }
        f
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {:?} {}", self.conn, self.dir, kind_name(self.kind))?;
        if self.kind == PUBLISH {
            write!(f, " q{}", self.qos)?;
            if self.dup {
                f.write_str(" DUP")?;
            }
        }
        if let Some(id) = self.packet_id {
            write!(f, " id={id}")?;
        }
        if let Some(t) = &self.topic {
            write!(f, " {t} {:?}", self.text())?;
        }
        if let Some(r) = self.reason {
            write!(f, " rc=0x{r:02x}")?;
        }
        if let Some(s) = self.session_present {
            write!(f, " sp={}", u8::from(s))?;
        }
        if !self.forwarded {
            f.write_str(" (not forwarded)")?;
        }
        Ok(())
    }
}

/// One frame per line, for failure messages.
pub fn dump(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(Frame::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An MQTT variable byte integer at the start of `b`: (value, bytes used); `None` when `b`
/// ends first or it is longer than 4 bytes.
fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Length of the fixed header of the frame at the start of `raw` (type byte + remaining
/// length), when it is complete and well formed.
fn header_len(raw: &[u8]) -> Option<usize> {
    varint(raw.get(1..)?).map(|(_, used)| 1 + used)
}

/// Splits a byte stream into whole MQTT frames, however the stream was cut into reads.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    buf: Vec<u8>,
}

impl FrameSplitter {
    /// A splitter with nothing buffered.
    pub fn new() -> FrameSplitter {
        FrameSplitter::default()
    }

    /// Appends what one read returned.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered that do not yet make a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame (fixed header included); `Ok(None)` while it is incomplete;
    /// `Err` when the remaining length is malformed (more than 4 bytes).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let (len, used) = match varint(&self.buf[1..]) {
            Some(v) => v,
            None if self.buf.len() >= 5 => {
                return Err(format!(
                    "malformed remaining length {:02x?}",
                    &self.buf[1..5]
                ))
            }
            None => return Ok(None),
        };
        let total = 1 + used + len;
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.drain(..total).collect()))
    }
}

#[derive(Debug)]
struct Rule {
    dir: Direction,
    kind: u8,
    nth: usize,
    mode: CutMode,
    fired: bool,
}

/// One client/upstream socket pair.
#[derive(Debug)]
struct Conn {
    id: usize,
    client: TcpStream,
    upstream: TcpStream,
    /// Why it was closed (cut, or one side went away); held while a frame is forwarded.
    closed: Mutex<Option<Closer>>,
    /// The client's CONNECT said protocol level 5.
    v5: AtomicBool,
}

impl Conn {
    /// Closes both sockets (once; the first closer is the one remembered).
    fn close(&self, closed: &mut MutexGuard<'_, Option<Closer>>, by: Closer) {
        if closed.is_some() {
            return;
        }
        **closed = Some(by);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Closer>> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct State {
    frames: Vec<Frame>,
    /// Frames seen (on live connections) per (direction, type), over the proxy's life.
    counts: HashMap<(Direction, u8), usize>,
    rules: Vec<Rule>,
    conns: Vec<Arc<Conn>>,
    /// Connections refused while not accepting, or because the upstream did not answer.
    refused: usize,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    accepting: AtomicBool,
    /// When a rule fires, stop accepting (before the cut) until `set_accepting(true)`.
    hold_after_cut: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The proxy: a loopback listener in front of an upstream broker. Stops on drop.
#[derive(Debug)]
pub struct Proxy {
    /// The port clients connect to (point the bridge's `server` here).
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's loopback port");
        let port = listener.local_addr().expect("proxy local addr").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            state: Mutex::default(),
            accepting: AtomicBool::new(true),
            hold_after_cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy's accept thread")
        };
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Every frame seen so far, in the order the proxy handled them.
    pub fn frames(&self) -> Vec<Frame> {
        self.shared.state().frames.clone()
    }

    /// Waits (polling every 25 ms) until `done` holds for the frames seen; returns whether it did.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Frame]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.shared.state().frames) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Cuts the link on the `nth` (1-based, counted over the proxy's whole life, all
    /// connections) frame of type `kind` travelling `dir`. Fires once. Panics when that frame
    /// has already gone by.
    pub fn cut_on(&self, dir: Direction, kind: u8, nth: usize, mode: CutMode) {
        let mut st = self.shared.state();
        let seen = st.counts.get(&(dir, kind)).copied().unwrap_or(0);
        assert!(
            nth > seen,
            "cut_on({dir:?}, {}, {nth}): {seen} such frames already went by",
            kind_name(kind)
        );
        st.rules.push(Rule {
            dir,
            kind,
            nth,
            mode,
            fired: false,
        });
    }

    /// How many cut rules have fired.
    pub fn fired(&self) -> usize {
        self.shared.state().rules.iter().filter(|r| r.fired).count()
    }

    /// Frames of type `kind` seen travelling `dir` on live connections so far.
    pub fn count(&self, dir: Direction, kind: u8) -> usize {
        self.shared
            .state()
            .counts
            .get(&(dir, kind))
            .copied()
            .unwrap_or(0)
    }

    /// Closes the current connection pair(s) at once.
    pub fn cut_now(&self) {
        // Never take a connection's lock while holding the state lock (the pumps nest them
        // the other way round).
        let conns = self.shared.state().conns.clone();
        for c in conns {
            c.close(&mut c.lock(), Closer::CutNow);
        }
    }

    /// Per connection (1-based, in order): what ended it, `None` while it is open.
    pub fn ends(&self) -> Vec<Option<Closer>> {
        let conns = self.shared.state().conns.clone();
        conns.iter().map(|c| *c.lock()).collect()
    }

    /// Connections accepted and paired with the upstream, over the proxy's life.
    pub fn connections(&self) -> usize {
        self.shared.state().conns.len()
    }

    /// Connections refused (while not accepting, or with the upstream not answering).
    pub fn refused(&self) -> usize {
        self.shared.state().refused
    }

    /// While false, new connections are accepted and closed at once (the link stays down);
    /// connections already paired are not touched.
    pub fn set_accepting(&self, accepting: bool) {
        self.shared.accepting.store(accepting, Ordering::SeqCst);
    }

    /// When set, a firing rule also stops the proxy from accepting (as [`set_accepting`]
    /// false), before it cuts: the client cannot reconnect until `set_accepting(true)`.
    ///
    /// [`set_accepting`]: Proxy::set_accepting
    pub fn set_hold_after_cut(&self, hold: bool) {
        self.shared.hold_after_cut.store(hold, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.cut_now();
        let threads = std::mem::take(&mut self.shared.state().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if !shared.accepting.load(Ordering::SeqCst) {
            shared.state().refused += 1;
            drop(client);
            continue;
        }
        let upstream = match TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => {
                shared.state().refused += 1;
                continue;
            }
        };
        if pair(shared, client, upstream).is_err() {
            shared.state().refused += 1;
        }
    }
}

/// Registers a connection pair and starts its two pumps.
fn pair(shared: &Arc<Shared>, client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    for s in [&client, &upstream] {
        s.set_nodelay(true)?;
    }
    let mut st = shared.state();
    let conn = Arc::new(Conn {
        id: st.conns.len() + 1,
        client: client.try_clone()?,
        upstream: upstream.try_clone()?,
        closed: Mutex::new(None),
        v5: AtomicBool::new(false),
    });
    st.conns.push(conn.clone());
    for (dir, from, to) in [
        (Direction::Up, client.try_clone()?, upstream.try_clone()?),
        (Direction::Down, upstream.try_clone()?, client.try_clone()?),
    ] {
        let shared = shared.clone();
        let conn = conn.clone();
        let t = std::thread::Builder::new()
            .name(format!("proxy-conn{}-{dir:?}", conn.id))
            .spawn(move || pump(&shared, &conn, dir, from, to))?;
        st.threads.push(t);
    }
    Ok(())
}

/// Copies whole frames from `from` to `to`, logging each and applying the cut rules, until
/// either side closes; then closes both.
fn pump(shared: &Shared, conn: &Conn, dir: Direction, mut from: TcpStream, mut to: TcpStream) {
    let mut splitter = FrameSplitter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        splitter.push(&buf[..n]);
        loop {
            match splitter.next_frame() {
                Ok(Some(raw)) => handle(shared, conn, dir, &raw, &mut to),
                Ok(None) => break,
                Err(_) => {
                    // Not MQTT: cut, as a broker would.
                    conn.close(&mut conn.lock(), Closer::BadFrame);
                    return;
                }
            }
        }
    }
    let by = match dir {
        Direction::Up => Closer::Client,
        Direction::Down => Closer::Upstream,
    };
    conn.close(&mut conn.lock(), by);
}

/// One whole frame: log it, apply the rules, forward it or not.
fn handle(shared: &Shared, conn: &Conn, dir: Direction, raw: &[u8], to: &mut TcpStream) {
    let mut closed = conn.lock();
    let kind = raw[0] >> 4;
    if dir == Direction::Up && kind == CONNECT {
        let f = Frame::decode(conn.id, dir, raw, false);
        conn.v5.store(f.protocol_level == Some(5), Ordering::SeqCst);
    }
    let mut frame = Frame::decode(conn.id, dir, raw, conn.v5.load(Ordering::SeqCst));
    if closed.is_some() {
        // Read in the same chunk as a frame that cut the link: seen, never forwarded.
        shared.state().frames.push(frame);
        return;
    }
    let action = {
        let mut st = shared.state();
        let n = {
            let n = st.counts.entry((dir, kind)).or_default();
            *n += 1;
            *n
        };
        let mut action = None;
        for r in st
            .rules
            .iter_mut()
            .filter(|r| !r.fired && r.dir == dir && r.kind == kind && r.nth == n)
        {
            r.fired = true;
            if action != Some(CutMode::DropAndClose) {
                action = Some(r.mode);
            }
        }
        action
    };
    if action.is_some() && shared.hold_after_cut.load(Ordering::SeqCst) {
        shared.accepting.store(false, Ordering::SeqCst);
    }
    let forward = action != Some(CutMode::DropAndClose);
    frame.forwarded = forward && to.write_all(raw).is_ok();
    let write_failed = forward && !frame.forwarded;
    shared.state().frames.push(frame);
    if action.is_some() {
        conn.close(&mut closed, Closer::Rule);
    } else if write_failed {
        conn.close(&mut closed, Closer::WriteFailed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 QoS 1 PUBLISH "a/b" id 10 payload "hi", a PUBACK id 10, a PINGREQ.
    const STREAM: &[u8] = &[
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'h', b'i', // PUBLISH
        0x40, 0x02, 0x00, 0x0a, // PUBACK
        0xc0, 0x00, // PINGREQ
    ];

    fn split_all(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = FrameSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(f) = s.next_frame().expect("well-formed") {
                out.push(f);
            }
        }
        assert_eq!(s.pending(), 0, "bytes left over");
        out
    }

    #[test]
    fn splits_frames_however_the_stream_is_cut_into_reads() {
        let whole = split_all(&[STREAM]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0], &STREAM[..11]);
        assert_eq!(whole[1], &STREAM[11..15]);
        assert_eq!(whole[2], &STREAM[15..]);
        let bytewise: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(split_all(&bytewise), whole);
        for cut in 1..STREAM.len() {
            assert_eq!(
                split_all(&[&STREAM[..cut], &STREAM[cut..]]),
                whole,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_multi_byte_remaining_length_is_read_across_reads() {
        // QoS 0 PUBLISH, topic "t", 300-byte payload: remaining length 303 = 0xaf 0x02.
        let mut frame = vec![0x30, 0xaf, 0x02, 0x00, 0x01, b't'];
        frame.extend([b'x'; 300]);
        assert_eq!(frame.len(), 3 + 303);
        // Split inside the remaining length and inside the payload.
        let got = split_all(&[&frame[..2], &frame[2..100], &frame[100..]]);
        assert_eq!(got, vec![frame.clone()]);
        let f = Frame::decode(1, Direction::Up, &got[0], false);
        assert_eq!((f.kind, f.qos, f.packet_id), (PUBLISH, 0, None));
        assert_eq!(f.topic.as_deref(), Some("t"));
        assert_eq!(f.payload.as_ref().map(Vec::len), Some(300));
    }

    #[test]
    fn a_remaining_length_longer_than_four_bytes_is_an_error() {
        let mut s = FrameSplitter::new();
        s.push(&[0x30, 0xff, 0xff]);
        assert_eq!(s.next_frame(), Ok(None));
        s.push(&[0xff, 0xff, 0x01]);
        assert!(s.next_frame().is_err());
    }

    #[test]
    fn decodes_the_fields_the_tests_assert_on() {
        let frames = split_all(&[STREAM]);
        let p = Frame::decode(3, Direction::Up, &frames[0], false);
        assert_eq!(p.conn, 3);
        assert_eq!((p.kind, p.qos, p.dup, p.retain), (PUBLISH, 1, false, false));
        assert_eq!(p.packet_id, Some(10));
        assert_eq!(p.topic.as_deref(), Some("a/b"));
        assert_eq!(p.text(), "hi");
        let a = Frame::decode(3, Direction::Down, &frames[1], false);
        assert_eq!((a.kind, a.packet_id, a.reason), (PUBACK, Some(10), None));
        let ping = Frame::decode(3, Direction::Up, &frames[2], false);
        assert_eq!((ping.kind, ping.packet_id), (PINGREQ, None));

        // MQTT 5 QoS 2 PUBLISH with DUP and RETAIN, id 0x0102, properties (response topic
        // "r") skipped, payload "p".
        let v5 = [
            0x3d, 0x0b, 0x00, 0x01, b't', 0x01, 0x02, 0x04, 0x08, 0x00, 0x01, b'r', b'p',
        ];
        let p = Frame::decode(1, Direction::Up, &v5, true);
        assert_eq!((p.qos, p.dup, p.retain), (2, true, true));
        assert_eq!(p.packet_id, Some(0x0102));
        assert_eq!(p.payload.as_deref(), Some(&b"p"[..]));
        // MQTT 5 PUBREC id 7, reason 0x87 (not authorized).
        let rec = Frame::decode(1, Direction::Down, &[0x50, 0x03, 0x00, 0x07, 0x87], true);
        assert_eq!(
            (rec.kind, rec.packet_id, rec.reason),
            (PUBREC, Some(7), Some(0x87))
        );
        // PUBREL (flags 0b0010) id 7.
        let rel = Frame::decode(1, Direction::Up, &[0x62, 0x02, 0x00, 0x07], false);
        assert_eq!((rel.kind, rel.packet_id), (PUBREL, Some(7)));
        // CONNACK, session present, accepted.
        let ack = Frame::decode(1, Direction::Down, &[0x20, 0x02, 0x01, 0x00], false);
        assert_eq!((ack.session_present, ack.reason), (Some(true), Some(0)));
        // MQTT 5 SUBACK id 1, no properties, granted QoS 1.
        let sub = Frame::decode(
            1,
            Direction::Down,
            &[0x90, 0x04, 0x00, 0x01, 0x00, 0x01],
            true,
        );
        assert_eq!((sub.packet_id, sub.reason), (Some(1), Some(1)));
        // CONNECT, protocol level 5.
        let c = Frame::decode(
            1,
            Direction::Up,
            &[0x10, 0x07, 0, 4, b'M', b'Q', b'T', b'T', 5],
            false,
        );
        assert_eq!(c.protocol_level, Some(5));
        // Truncated garbage decodes to what it can, without panicking.
        let g = Frame::decode(1, Direction::Up, &[0x32, 0x05, 0x00, 0x09], false);
        assert_eq!((g.kind, g.topic, g.packet_id), (PUBLISH, None, None));
    }

    /// An upstream that echoes every byte back, for exercising the proxy without a broker.
    fn echo_server() -> (u16, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let port = l.local_addr().expect("echo addr").port();
        let t = std::thread::spawn(move || {
            for s in l.incoming().take(2) {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, t)
    }

    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).expect("echoed bytes");
        b
    }

    #[test]
    fn a_cut_rule_drops_its_frame_closes_the_pair_and_the_proxy_takes_the_next_connection() {
        let (echo, _t) = echo_server();
        let proxy = Proxy::start(echo);
        proxy.cut_on(Direction::Up, PUBACK, 2, CutMode::DropAndClose);
        let connect = |proxy: &Proxy| {
            let s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect to the proxy");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s
        };
        let mut c = connect(&proxy);
        let puback = [0x40, 0x02, 0x00, 0x0a];
        // Written in two pieces: the proxy forwards only whole frames.
        c.write_all(&puback[..1]).expect("write");
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(&puback[1..]).expect("write");
        assert_eq!(read_n(&mut c, 4), puback);
        c.write_all(&puback).expect("write");
        let mut b = [0u8; 4];
        assert!(
            matches!(c.read(&mut b), Ok(0) | Err(_)),
            "the second PUBACK should have cut the link"
        );
        assert_eq!(proxy.fired(), 1);
        assert_eq!(proxy.ends(), vec![Some(Closer::Rule)]);
        let frames = proxy.frames();
        let seen: Vec<(usize, Direction, bool)> = frames
            .iter()
            .map(|f| (f.conn, f.dir, f.forwarded))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, Direction::Up, true),
                (1, Direction::Down, true),
                (1, Direction::Up, false)
            ],
            "{}",
            dump(&frames)
        );
        // The rule fired once: a third PUBACK on a new connection goes through.
        let mut c = connect(&proxy);
        c.write_all(&puback).expect("write");
        assert_eq!(read_n(&mut c, 4), puback);
        assert_eq!(proxy.connections(), 2);
        drop(c);
        assert!(
            wait(|| proxy.ends() == [Some(Closer::Rule), Some(Closer::Client)]),
            "{:?}",
            proxy.ends()
        );
        proxy.set_accepting(false);
        let mut c = connect(&proxy);
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)), "refused");
        assert!(wait(|| proxy.refused() == 1));
    }

    fn wait(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
