//! The message loads: fan-in, fan-out, fixed-rate latency and flood, all one engine.
//!
//! Owns the publisher and subscriber tasks and the closed-loop gate. Call order: connect and
//! subscribe every subscriber, connect every publisher, start the subscribers, start the
//! publishers at one instant, stop them at the deadline, let the tail drain (`drain`), stop the
//! subscribers, add up. Closed loop: a publisher sends only while fewer than
//! `max_outstanding` deliveries are sent but not yet received (the subscribers wake it through
//! `Shared::gate`). Open loop: publishers send at `rate`, or as fast as TCP takes it.
//! It never panics on network errors: a lost connection ends that client and is reported.

use crate::check::{new_histogram, ReceiverCheck};
use crate::client::{Client, Target};
use crate::error::{BenchError, Role};
use crate::report::{summarize, Latency, LoadReport};
use crate::rss::RssSampler;
use crate::stamp::{Stamp, STAMP_LEN};
use bytes::Bytes;
use holdfast_mqtt::{ByteStr, Packet, PacketId, PubResp, Publish, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

/// Messages encoded into one write when the gate or the window allows.
const BATCH_CLOSED: u64 = 64;
/// Messages encoded into one write in open loop (flood).
const BATCH_OPEN: u64 = 256;
/// Socket reads per wake-up before going back to the scheduler.
const READS_PER_WAKE: usize = 16;
/// Connection attempts in flight at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;
/// A waiting publisher re-checks the gate at least this often.
const GATE_RECHECK: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    /// "fanin", "fanout", "latency" or "flood": names the run in the report.
    pub(crate) mode: &'static str,
    /// Number of publishers.
    pub(crate) publishers: u32,
    /// Number of subscribers.
    pub(crate) subscribers: u32,
    /// All publishers publish on this topic; `None`: publisher i publishes on `bench/{i}`.
    pub(crate) shared_topic: Option<String>,
    /// The filter every subscriber subscribes to.
    pub(crate) filter: String,
    /// QoS of publishes and subscriptions (0 or 1).
    pub(crate) qos: QoS,
    /// Payload size in bytes, at least `STAMP_LEN`.
    pub(crate) payload: usize,
    /// How long the publishers publish.
    pub(crate) duration: Duration,
    /// Total messages per second offered; 0 = as fast as allowed.
    pub(crate) rate: u64,
    /// Closed loop: most deliveries sent but not received. `None`: open loop.
    pub(crate) max_outstanding: Option<u64>,
    /// QoS 1: most unacknowledged PUBLISH per publisher.
    pub(crate) inflight: u16,
    /// Whether subscribers read at all (flood can leave them silent).
    pub(crate) sub_reads: bool,
    /// Subscriber read rate cap in messages/s; 0 = as fast as it can.
    pub(crate) sub_rate: u64,
    /// After the publishers stop, how long to wait for the tail (and QoS 1 acks).
    pub(crate) drain: Duration,
}

/// State all tasks of one run share.
#[derive(Debug)]
struct Shared {
    /// The clock zero of every stamp.
    t0: Instant,
    /// Random per run, written into every stamp.
    run: u32,
    /// PUBLISH fully written by all publishers.
    sent: AtomicU64,
    /// PUBLISH received by all subscribers.
    delivered: AtomicU64,
    /// Subscribers notify after every read batch; closed-loop publishers wait on it.
    gate: Notify,
    /// Subscribers as u64, for outstanding = sent * subscribers - delivered.
    subscribers: u64,
    /// Subscriber tasks still reading; the drain stops early when none is.
    subs_alive: AtomicU64,
}

/// What one publisher did.
#[derive(Debug)]
struct PubOutcome {
    /// PUBLISH fully written.
    sent: u64,
    /// PUBLISH encoded but caught in a write still blocked at the deadline.
    unconfirmed: u64,
    /// PUBACKs matching an outstanding packet id.
    acked: u64,
    /// PUBACKs for ids we had not sent or had already seen acked.
    unexpected_acks: u64,
    /// QoS 1 messages still unacknowledged at the end.
    unacked: u64,
    /// The connection error that ended it, if any.
    error: Option<BenchError>,
}

/// What one subscriber saw.
#[derive(Debug)]
struct SubOutcome {
    check: ReceiverCheck,
    /// When the last PUBLISH arrived in the main loop (not in the final drain).
    last_receive: Option<Instant>,
    /// The broker had closed the connection (seen at the end by a non-reading subscriber).
    closed_by_broker: bool,
    error: Option<BenchError>,
}

/// Runs one load and returns its report. Setup failures (cannot connect, subscription refused)
/// are errors; connections lost during the run are listed in the report.
pub(crate) async fn run(
    target: &Target,
    spec: LoadSpec,
    pid: Option<u32>,
) -> Result<LoadReport, BenchError> {
    let spec = Arc::new(spec);
    let rss = pid.map(RssSampler::start);

    let sub_filter = Some((spec.filter.clone(), spec.qos));
    let subs = connect_many(target, spec.subscribers, Role::Subscriber, sub_filter).await?;
    let pubs = connect_many(target, spec.publishers, Role::Publisher, None).await?;

    let sh = Arc::new(Shared {
        t0: Instant::now(),
        run: run_id(),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        gate: Notify::new(),
        subscribers: u64::from(spec.subscribers.max(1)),
        subs_alive: AtomicU64::new(u64::from(spec.subscribers)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let ping_every = Duration::from_secs(u64::from(target.keep_alive.max(2)) / 2);
    let mut sub_tasks = Vec::with_capacity(subs.len());
    for c in subs {
        let (spec, sh, stop) = (spec.clone(), sh.clone(), stop_rx.clone());
        sub_tasks.push(tokio::spawn(subscriber(c, spec, sh, stop, ping_every)));
    }

    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut pub_tasks = Vec::with_capacity(pubs.len());
    for (i, c) in pubs.into_iter().enumerate() {
        let (spec, sh) = (spec.clone(), sh.clone());
        pub_tasks.push(tokio::spawn(publisher(
            c, i as u32, spec, sh, start, deadline,
        )));
    }
    let mut pub_outcomes = Vec::with_capacity(pub_tasks.len());
    for t in pub_tasks {
        pub_outcomes.push(t.await.ok());
    }
    let published_for = Instant::now()
        .saturating_duration_since(start)
        .min(spec.duration);

    // Let the tail arrive: stop once everything sent was delivered, or at the drain deadline.
    if spec.sub_reads {
        let expected = sh.sent.load(Ordering::Relaxed) * sh.subscribers;
        let until = Instant::now() + spec.drain;
        while sh.delivered.load(Ordering::Relaxed) < expected
            && Instant::now() < until
            && sh.subs_alive.load(Ordering::Relaxed) > 0
        {
            sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop_tx.send(true);
    let mut sub_outcomes = Vec::with_capacity(sub_tasks.len());
    for t in sub_tasks {
        sub_outcomes.push(t.await.ok());
    }
    let rss = match rss {
        Some(r) => Some(r.finish().await),
        None => None,
    };
    Ok(assemble(
        &spec,
        start,
        published_for,
        pub_outcomes,
        sub_outcomes,
        rss,
    ))
}

/// Adds up the outcomes into the report.
fn assemble(
    spec: &LoadSpec,
    start: Instant,
    published_for: Duration,
    pubs: Vec<Option<PubOutcome>>,
    subs: Vec<Option<SubOutcome>>,
    rss: Option<crate::rss::RssStats>,
) -> LoadReport {
    let mut errors = Vec::new();
    let mut sent_by = Vec::with_capacity(pubs.len());
    let (mut sent, mut unconfirmed, mut acked, mut unexpected_acks, mut unacked) = (0, 0, 0, 0, 0);
    let mut blocked_publishers = 0;
    for (i, p) in pubs.into_iter().enumerate() {
        let Some(p) = p else {
            errors.push(format!("publisher {i}: task panicked"));
            sent_by.push(0);
            continue;
        };
        sent += p.sent;
        unconfirmed += p.unconfirmed;
        acked += p.acked;
        unexpected_acks += p.unexpected_acks;
        unacked += p.unacked;
        if p.unconfirmed > 0 {
            blocked_publishers += 1;
        }
        if let Some(e) = p.error {
            errors.push(e.to_string());
        }
        sent_by.push(p.sent);
    }
    let mut latency = new_histogram();
    let (mut received, mut unique, mut lost, mut reordered, mut duplicates, mut foreign) =
        (0, 0, 0, 0, 0, 0);
    let mut last_receive: Option<Instant> = None;
    let mut subs_closed = 0;
    for (i, s) in subs.into_iter().enumerate() {
        let Some(s) = s else {
            errors.push(format!("subscriber {i}: task panicked"));
            lost += sent_by.iter().sum::<u64>();
            continue;
        };
        received += s.check.received;
        foreign += s.check.foreign;
        for (p, stream) in s.check.streams.iter().enumerate() {
            unique += stream.unique;
            duplicates += stream.duplicates;
            reordered += stream.reordered;
            lost += sent_by[p].saturating_sub(stream.unique);
        }
        let _ = latency.add(&s.check.latency);
        last_receive = last_receive.max(s.last_receive);
        if s.closed_by_broker {
            subs_closed += 1;
        }
        if let Some(e) = s.error {
            errors.push(e.to_string());
        }
    }
    if unexpected_acks > 0 {
        errors.push(format!(
            "{unexpected_acks} PUBACKs for packet ids not in flight"
        ));
    }
    let secs = published_for.as_secs_f64().max(1e-9);
    let recv_window = last_receive
        .map(|t| t.saturating_duration_since(start))
        .filter(|d| !d.is_zero())
        .unwrap_or(published_for)
        .as_secs_f64()
        .max(1e-9);
    let latency = (!latency.is_empty()).then(|| Latency::from_histogram(&latency));
    LoadReport {
        mode: spec.mode,
        qos: spec.qos as u8,
        payload: spec.payload,
        publishers: spec.publishers,
        subscribers: spec.subscribers,
        rate: spec.rate,
        sub_reads: spec.sub_reads,
        duration_s: secs,
        sent,
        unconfirmed,
        acked: (spec.qos != QoS::AtMostOnce).then_some(acked),
        unacked,
        expected: sent * u64::from(spec.subscribers),
        received,
        unique,
        lost,
        reordered,
        duplicates,
        foreign,
        send_rate: sent as f64 / secs,
        recv_rate: received as f64 / recv_window,
        latency,
        rss,
        subs_closed_by_broker: subs_closed,
        blocked_publishers,
        errors: summarize(errors),
    }
}

/// A run id that differs between runs (no need for a good random source).
pub(crate) fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u32) ^ std::process::id().rotate_left(16)
}

/// Connects `n` clients (and subscribes each to `filter`), a bounded number at a time.
/// Returns them in index order, or the first error.
pub(crate) async fn connect_many(
    target: &Target,
    n: u32,
    role: fn(u32) -> Role,
    filter: Option<(String, QoS)>,
) -> Result<Vec<Client>, BenchError> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (target, permits, filter) = (target.clone(), permits.clone(), filter.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut c = Client::connect(&target, role(i)).await?;
            if let Some((f, qos)) = filter {
                c.subscribe(&f, qos).await?;
            }
            Ok::<_, BenchError>((i, c))
        });
    }
    let mut clients = Vec::with_capacity(n as usize);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(ic)) => clients.push(ic),
            Ok(Err(e)) => return Err(e),
            Err(_) => continue,
        }
    }
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}

/// QoS 1 packet ids in flight of one publisher.
#[derive(Debug)]
struct IdWindow {
    /// One bit per packet id.
    used: Vec<u64>,
    /// Next id to try.
    next: u16,
    /// Ids in use.
    count: u16,
}

impl IdWindow {
    fn new() -> IdWindow {
        IdWindow {
            used: vec![0; 1024],
            next: 1,
            count: 0,
        }
    }

    /// Takes a free id. Callers never hold more than 65,534 at once (`--inflight` is a u16 and
    /// the window is checked first), so a free one always exists.
    fn take(&mut self) -> u16 {
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            let (w, b) = (usize::from(id) / 64, id % 64);
            if self.used[w] & (1 << b) == 0 {
                self.used[w] |= 1 << b;
                self.count += 1;
                return id;
            }
        }
    }

    /// Frees an id; false when it was not in use.
    fn release(&mut self, id: u16) -> bool {
        let (w, b) = (usize::from(id) / 64, id % 64);
        if self.used[w] & (1 << b) == 0 {
            return false;
        }
        self.used[w] &= !(1 << b);
        self.count -= 1;
        true
    }
}

/// One publisher's state.
#[derive(Debug)]
struct Publisher {
    id: u32,
    /// The PUBLISH template: only its packet id changes, the stamp is patched into the bytes.
    packet: Packet,
    /// Sequence number of the next message.
    seq: u64,
    /// PUBLISH fully written.
    sent: u64,
    window: IdWindow,
    acked: u64,
    unexpected_acks: u64,
}

async fn publisher(
    mut c: Client,
    id: u32,
    spec: Arc<LoadSpec>,
    sh: Arc<Shared>,
    start: Instant,
    deadline: Instant,
) -> PubOutcome {
    let topic = match &spec.shared_topic {
        Some(t) => t.clone(),
        None => format!("bench/{id}"),
    };
    let mut p = Publisher {
        id,
        packet: Packet::Publish(Publish {
            qos: spec.qos,
            topic: ByteStr::from(topic),
            payload: Bytes::from(vec![0u8; spec.payload]),
            ..Publish::default()
        }),
        seq: 0,
        sent: 0,
        window: IdWindow::new(),
        acked: 0,
        unexpected_acks: 0,
    };
    let result = p.run(&mut c, &spec, &sh, start, deadline).await;
    let unconfirmed = p.seq - p.sent;
    let error = match result {
        Ok(()) => {
            if unconfirmed == 0 {
                c.disconnect().await;
            }
            None
        }
        Err(e) => Some(e),
    };
    PubOutcome {
        sent: p.sent,
        unconfirmed,
        acked: p.acked,
        unexpected_acks: p.unexpected_acks,
        unacked: u64::from(p.window.count),
        error,
    }
}

impl Publisher {
    async fn run(
        &mut self,
        c: &mut Client,
        spec: &LoadSpec,
        sh: &Shared,
        start: Instant,
        deadline: Instant,
    ) -> Result<(), BenchError> {
        let qos1 = spec.qos != QoS::AtMostOnce;
        let rate = if spec.rate > 0 {
            spec.rate as f64 / f64::from(spec.publishers.max(1))
        } else {
            0.0
        };
        loop {
            self.read_acks(c)?;
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Registered before the gate is checked, so a wake-up in between is not lost.
            let gate = sh.gate.notified();
            tokio::pin!(gate);
            gate.as_mut().enable();
            let (n, wake_at) = self.allowance(spec, sh, rate, start, now);
            if n > 0 {
                self.encode_batch(c, n, spec, sh)?;
                let written = tokio::select! {
                    biased;
                    r = c.flush() => { r?; true }
                    _ = sleep_until(deadline) => false,
                };
                if !written {
                    // The broker stopped reading us; what is in the write is unconfirmed.
                    break;
                }
                self.sent = self.seq;
                sh.sent.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            tokio::select! {
                r = c.stream.readable() => r.map_err(|e| BenchError::io(c.role, e))?,
                _ = &mut gate => {}
                _ = sleep_until(wake_at.min(deadline)) => {}
            }
        }
        if qos1 && self.sent == self.seq {
            let until = deadline + spec.drain;
            while self.window.count > 0 {
                tokio::select! {
                    r = c.stream.readable() => r.map_err(|e| BenchError::io(c.role, e))?,
                    _ = sleep_until(until) => break,
                }
                self.read_acks(c)?;
            }
        }
        Ok(())
    }

    /// How many messages may go now, and when to look again if none.
    fn allowance(
        &self,
        spec: &LoadSpec,
        sh: &Shared,
        rate: f64,
        start: Instant,
        now: Instant,
    ) -> (u64, Instant) {
        let mut wake = now + GATE_RECHECK;
        let mut n = if spec.max_outstanding.is_some() {
            BATCH_CLOSED
        } else {
            BATCH_OPEN
        };
        if spec.qos != QoS::AtMostOnce {
            n = n.min(u64::from(spec.inflight.saturating_sub(self.window.count)));
        }
        if let Some(max) = spec.max_outstanding {
            let sent = sh.sent.load(Ordering::Relaxed) * sh.subscribers;
            let outstanding = sent.saturating_sub(sh.delivered.load(Ordering::Relaxed));
            n = n.min(max.saturating_sub(outstanding).div_ceil(sh.subscribers));
        }
        if rate > 0.0 {
            let due = ((now - start).as_secs_f64() * rate) as u64;
            let behind = due.saturating_sub(self.seq);
            n = n.min(behind);
            if behind == 0 {
                wake = start + Duration::from_secs_f64((self.seq + 1) as f64 / rate);
            }
        }
        (n, wake)
    }

    /// Encodes `n` PUBLISH into the write buffer, each with its stamp.
    fn encode_batch(
        &mut self,
        c: &mut Client,
        n: u64,
        spec: &LoadSpec,
        sh: &Shared,
    ) -> Result<(), BenchError> {
        let qos1 = spec.qos != QoS::AtMostOnce;
        let sent_ns = sh.t0.elapsed().as_nanos() as u64;
        for _ in 0..n {
            if qos1 {
                let pid = self.window.take();
                if let Packet::Publish(p) = &mut self.packet {
                    p.packet_id = PacketId::new(pid);
                }
            }
            c.queue(&self.packet, "PUBLISH")?;
            // The payload is the last field of a PUBLISH, so it is the buffer's tail.
            let end = c.wbuf.len();
            let stamp = Stamp {
                run: sh.run,
                publisher: self.id,
                seq: self.seq,
                sent_ns,
            };
            stamp.write(&mut c.wbuf[end - spec.payload..end - spec.payload + STAMP_LEN]);
            self.seq += 1;
        }
        Ok(())
    }

    /// Takes PUBACKs (and anything else) the broker sent, without waiting.
    fn read_acks(&mut self, c: &mut Client) -> Result<(), BenchError> {
        for _ in 0..READS_PER_WAKE {
            let n = c.try_fill()?;
            while let Some(packet) = c.next_packet()? {
                match packet {
                    Packet::PubAck(ack) => {
                        if self.window.release(ack.packet_id.get()) {
                            self.acked += 1;
                        } else {
                            self.unexpected_acks += 1;
                        }
                    }
                    Packet::Disconnect(_) => {
                        return Err(BenchError::Closed {
                            role: c.role,
                            detail: " after sending DISCONNECT".into(),
                        })
                    }
                    _ => {}
                }
            }
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}

async fn subscriber(
    mut c: Client,
    spec: Arc<LoadSpec>,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ping_every: Duration,
) -> SubOutcome {
    let mut out = SubOutcome {
        check: ReceiverCheck::new(sh.run, spec.publishers),
        last_receive: None,
        closed_by_broker: false,
        error: None,
    };
    let result = if spec.sub_reads {
        read_loop(&mut c, &spec, &sh, &mut stop, ping_every, &mut out).await
    } else {
        silent_until_stop(&mut c, &sh, &mut stop, ping_every, &mut out).await
    };
    sh.subs_alive.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => c.disconnect().await,
        Err(e) => out.error = Some(e),
    }
    out
}

/// The reading subscriber: takes every PUBLISH, acks QoS 1, wakes the publishers.
async fn read_loop(
    c: &mut Client,
    spec: &LoadSpec,
    sh: &Shared,
    stop: &mut watch::Receiver<bool>,
    ping_every: Duration,
    out: &mut SubOutcome,
) -> Result<(), BenchError> {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = c.stream.readable() => r.map_err(|e| BenchError::io(c.role, e))?,
            _ = ping.tick() => {
                c.queue(&Packet::PingReq, "PINGREQ")?;
                c.flush().await?;
                continue;
            }
        }
        let got = take_publishes(c, sh, out, true)?;
        c.flush().await?;
        if got > 0 {
            out.last_receive = Some(Instant::now());
            sh.delivered.fetch_add(got, Ordering::Relaxed);
            sh.gate.notify_waiters();
            if spec.sub_rate > 0 {
                let pause = Duration::from_secs_f64(got as f64 / spec.sub_rate as f64);
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    _ = sleep(pause) => {}
                }
            }
        }
    }
}

/// The subscriber of a flood that never reads: it only pings, then at the stop looks what the
/// socket holds (up to a second) to learn whether the broker had closed it. Those messages
/// count as received but not in the latency: they waited on purpose.
async fn silent_until_stop(
    c: &mut Client,
    sh: &Shared,
    stop: &mut watch::Receiver<bool>,
    ping_every: Duration,
    out: &mut SubOutcome,
) -> Result<(), BenchError> {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ping.tick() => {
                c.queue(&Packet::PingReq, "PINGREQ")?;
                c.flush().await?;
            }
        }
    }
    // Whatever the broker got into the socket; a quiet 100 ms ends the look.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(100), c.stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BenchError::io(c.role, e)),
            Err(_) => break,
        }
        match take_publishes(c, sh, out, false) {
            Ok(_) => {}
            Err(BenchError::Closed { .. }) => {
                out.closed_by_broker = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    c.flush().await
}

/// Reads what the socket holds, records every PUBLISH (and its latency when `timed`) and
/// queues PUBACKs for QoS 1 ones. Returns the PUBLISH count.
fn take_publishes(
    c: &mut Client,
    sh: &Shared,
    out: &mut SubOutcome,
    timed: bool,
) -> Result<u64, BenchError> {
    let mut got = 0;
    for _ in 0..READS_PER_WAKE {
        let n = c.try_fill()?;
        if n == 0 {
            break;
        }
        let now_ns = timed.then(|| sh.t0.elapsed().as_nanos() as u64);
        while let Some(packet) = c.next_packet()? {
            match packet {
                Packet::Publish(p) => {
                    got += 1;
                    out.check.record(&p.payload, now_ns);
                    if p.qos == QoS::AtLeastOnce {
                        let ack = PubResp {
                            packet_id: p.packet_id,
                            ..PubResp::default()
                        };
                        c.queue(&Packet::PubAck(ack), "PUBACK")?;
                    }
                }
                Packet::Disconnect(_) => {
                    return Err(BenchError::Closed {
                        role: c.role,
                        detail: " after sending DISCONNECT".into(),
                    })
                }
                _ => {}
            }
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_never_zero_and_never_reused_while_in_flight() {
        let mut w = IdWindow::new();
        w.next = u16::MAX;
        let a = w.take();
        let b = w.take();
        assert_eq!((a, b), (u16::MAX, 1));
        assert!(w.release(a));
        assert!(!w.release(a));
        assert_eq!(w.count, 1);
        w.next = 1;
        assert_eq!(w.take(), 2);
    }
}
