//! Raw serial lines (`[serial]`): frames read from a port are published on
//! `{prefix}/{port}/rx`, messages on `{prefix}/{port}/tx` are written to it; each port a client
//! of the broker (`$serial/{port}`).
//!
//! Owns opening a port with its settings ([`open`], shared with the Modbus RTU lines), one task
//! per port that reads, frames ([`framing`], sans-IO) and writes, and the port's reopening with
//! back-off when it disappears (a USB adapter unplugged), reported in `holdfast ctl serial`
//! and `$SYS`. While a port is closed its `tx` messages wait in the client's session (bounded
//! by `mqtt.max_mqueue_len`), not in this module. Never touches the router.

pub mod framing;

use crate::broker::client::{
    Client, ClientOptions, ConnectError, Credentials, Protocol, Publication, PublishError, Received,
};
use crate::broker::Broker;
use crate::config::{FlowControl, Parity, SerialConfig, SerialLine, SerialPortConfig};
use crate::udp::lock;
use framing::{Decoded, Decoder};
use holdfast_mqtt::QoS;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::task::TaskTracker;

/// Bytes read from a port at once.
const READ_BUF: usize = 4096;
/// First wait before reopening a port; doubles up to the port's `reopen_max`.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
/// A port open this long before it failed counts as healthy: its back-off starts afresh.
const HEALTHY: Duration = Duration::from_secs(10);
/// Frames read and not yet published (the port's broker client was closed) kept for the next
/// client; beyond it the oldest are dropped and counted.
const MAX_UNPUBLISHED: usize = 1000;

/// An open serial port: tokio-serial's stream without its flush. On Unix that flush is
/// tcdrain(3), a blocking call that would hold a runtime thread for the whole transmit time (4
/// seconds for 4 KB at 9600 baud), and forever while flow control holds the line. Bytes
/// written are on their way once the kernel has them; writes themselves never block.
#[derive(Debug)]
pub(crate) struct Port(tokio_serial::SerialStream);

impl Port {
    /// Drops what the device sent and nobody read yet.
    pub(crate) fn clear_input(&self) {
        use tokio_serial::SerialPort as _;
        let _ = self.0.clear(tokio_serial::ClearBuffer::Input);
    }
}

impl tokio::io::AsyncRead for Port {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Port {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Opens a serial port with `line`'s settings.
pub(crate) fn open(line: &SerialLine) -> Result<Port, tokio_serial::Error> {
    use tokio_serial::SerialPortBuilderExt as _;
    let data_bits = match line.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if line.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let parity = match line.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let flow = match line.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        FlowControl::Software => tokio_serial::FlowControl::Software,
    };
    tokio_serial::new(line.port.to_string_lossy(), line.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(flow)
        .open_native_async()
        .map(Port)
}

/// What `holdfast ctl serial` shows for one port.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PortView {
    /// Name.
    pub name: String,
    /// Device path.
    pub port: String,
    /// `open`, `closed` (waiting to reopen) or `starting`.
    pub state: &'static str,
    /// Frames published.
    pub rx_frames: u64,
    /// Bytes read.
    pub rx_bytes: u64,
    /// Messages written.
    pub tx_frames: u64,
    /// Bytes written.
    pub tx_bytes: u64,
    /// Frames dropped or cut for being longer than `max_frame`.
    pub oversized: u64,
    /// Times the port was (re)opened.
    pub opens: u64,
    /// Why the port last closed or failed to open.
    pub last_error: Option<String>,
}

/// The ports' state and counters.
#[derive(Debug, Default)]
pub struct Status {
    ports: Mutex<Vec<PortView>>,
    /// Publishes the broker refused.
    pub publish_errors: AtomicU64,
}

impl Status {
    /// Every port, in config order.
    pub fn ports(&self) -> Vec<PortView> {
        lock(&self.ports).clone()
    }

    /// Counters by name (as `$SYS/brokers/{node}/serial/...`).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let ports = lock(&self.ports);
        let sum = |f: fn(&PortView) -> u64| ports.iter().map(f).sum::<u64>();
        vec![
            ("ports", ports.len() as u64),
            (
                "ports_open",
                ports.iter().filter(|p| p.state == "open").count() as u64,
            ),
            ("rx_frames", sum(|p| p.rx_frames)),
            ("rx_bytes", sum(|p| p.rx_bytes)),
            ("tx_frames", sum(|p| p.tx_frames)),
            ("tx_bytes", sum(|p| p.tx_bytes)),
            ("oversized", sum(|p| p.oversized)),
            ("opens", sum(|p| p.opens)),
            (
                "publish_errors",
                self.publish_errors.load(Ordering::Relaxed),
            ),
        ]
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut PortView)) {
        if let Some(p) = lock(&self.ports).get_mut(index) {
            f(p);
        }
    }
}

/// Starts one task per port. Returns at once.
pub fn spawn(config: &SerialConfig, broker: &Arc<Broker>, tracker: &TaskTracker) {
    let status = Arc::new(Status::default());
    *lock(&status.ports) = config
        .ports
        .iter()
        .map(|p| PortView {
            name: p.name.clone(),
            port: p.line.port.display().to_string(),
            state: "starting",
            ..PortView::default()
        })
        .collect();
    if broker.serial.set(status.clone()).is_err() {
        tracing::error!("serial: the ports were started twice; the second start is ignored");
        return;
    }
    for (index, port) in config.ports.iter().enumerate() {
        tracker.spawn(run(
            index,
            Arc::new(port.clone()),
            config.topic_prefix.clone(),
            status.clone(),
            broker.clone(),
        ));
    }
}

/// Why a port's open session ended.
enum Ended {
    /// The port failed (read or write error, end of file): reopen it.
    Port(String),
    /// The broker client was closed (kicked, taken over): reconnect it.
    Client,
    /// Shutdown.
    Shutdown,
}

/// Serves one port until shutdown: connects its client, opens the port, and reopens it with
/// back-off whenever it fails.
async fn run(
    index: usize,
    cfg: Arc<SerialPortConfig>,
    prefix: String,
    status: Arc<Status>,
    broker: Arc<Broker>,
) {
    let shutdown = broker.shutdown.clone();
    let sleep = |d: Duration| {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    };
    let rx_topic = format!("{prefix}/{}/rx", cfg.name);
    let tx_topic = format!("{prefix}/{}/tx", cfg.name);
    let mut backoff = REOPEN_FIRST;
    let mut logged_missing = false;
    // A tx message taken from the session whose write failed: written first after reopening.
    let mut unwritten: Option<Received> = None;
    // Frames read but not published when the client closed: published first by the next one.
    let mut unpublished: VecDeque<Vec<u8>> = VecDeque::new();
    'client: loop {
        let Some(mut client) = connect(&cfg, &tx_topic, &broker).await else {
            if shutdown.is_cancelled() || !sleep(REOPEN_FIRST).await {
                return;
            }
            continue;
        };
        loop {
            let port = match open(&cfg.line) {
                Ok(port) => port,
                Err(e) => {
                    let detail = format!("cannot open {}: {e}", cfg.line.port.display());
                    if !logged_missing {
                        tracing::warn!(port = %cfg.name, "serial: {detail}; retrying with back-off (at most {:?})", cfg.reopen_max);
                        logged_missing = true;
                    }
                    status.update(index, |p| {
                        p.state = "closed";
                        p.last_error = Some(detail);
                    });
                    if !sleep(backoff).await {
                        client.disconnect();
                        return;
                    }
                    backoff = (backoff * 2).min(cfg.reopen_max);
                    continue;
                }
            };
            if !logged_missing {
                tracing::info!(port = %cfg.name, path = %cfg.line.port.display(), baud = cfg.line.baud, "serial: port open");
            }
            let opened = tokio::time::Instant::now();
            status.update(index, |p| {
                p.state = "open";
                p.opens += 1;
            });
            let at = Serving {
                index,
                cfg: &cfg,
                rx_topic: &rx_topic,
                status: &status,
                broker: &broker,
            };
            match serve(&at, port, &mut client, &mut unwritten, &mut unpublished).await {
                Ended::Shutdown => {
                    client.disconnect();
                    return;
                }
                Ended::Client => {
                    status.update(index, |p| p.state = "closed");
                    tracing::warn!(port = %cfg.name, "serial: the port's broker client was closed; reconnecting");
                    if !sleep(REOPEN_FIRST).await {
                        return;
                    }
                    continue 'client;
                }
                Ended::Port(detail) => {
                    // A port that stayed up a while starts the back-off afresh; one that fails
                    // right after opening (a flapping adapter) keeps doubling it, logged once.
                    if opened.elapsed() >= HEALTHY {
                        backoff = REOPEN_FIRST;
                        logged_missing = false;
                    }
                    if !logged_missing {
                        tracing::warn!(port = %cfg.name, "serial: {detail}; reopening with back-off (at most {:?})", cfg.reopen_max);
                        logged_missing = true;
                    }
                    status.update(index, |p| {
                        p.state = "closed";
                        p.last_error = Some(detail);
                    });
                    if !sleep(backoff).await {
                        client.disconnect();
                        return;
                    }
                    backoff = (backoff * 2).min(cfg.reopen_max);
                }
            }
        }
    }
}

/// Connects `$serial/{name}` and subscribes it to the port's `tx` topic.
async fn connect(cfg: &SerialPortConfig, tx_topic: &str, broker: &Arc<Broker>) -> Option<Client> {
    let mut opts = ClientOptions::new(
        format!("$serial/{}", cfg.name),
        Protocol::Serial,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    opts.credentials = Credentials::Gateway {
        username: cfg.username.clone(),
    };
    let mut client = match Client::connect(broker, opts).await {
        Ok(c) => c,
        Err(ConnectError::ShuttingDown) => return None,
        Err(e) => {
            tracing::warn!(port = %cfg.name, "serial: the port's broker client cannot connect: {e}");
            return None;
        }
    };
    for result in client.subscribe(&[(tx_topic, QoS::AtLeastOnce)]) {
        if let Err(e) = result {
            tracing::warn!(port = %cfg.name, topic = %tx_topic, "serial: writes through MQTT are off: subscribe refused: {e}");
        }
    }
    Some(client)
}

/// Which port [`serve`] serves, and where it reports.
#[derive(Clone, Copy)]
struct Serving<'a> {
    index: usize,
    cfg: &'a SerialPortConfig,
    rx_topic: &'a str,
    status: &'a Status,
    broker: &'a Broker,
}

/// Reads, frames and publishes; writes what arrives on `tx`; until the port or the client fails.
async fn serve(
    at: &Serving<'_>,
    mut port: Port,
    client: &mut Client,
    unwritten: &mut Option<Received>,
    unpublished: &mut VecDeque<Vec<u8>>,
) -> Ended {
    let Serving {
        index,
        cfg,
        rx_topic,
        status,
        broker,
    } = *at;
    if let Some(m) = unwritten.take() {
        if let Err(e) = write_tx(cfg, &mut port, &m, status, index).await {
            *unwritten = Some(m);
            return Ended::Port(format!("write failed: {e}"));
        }
        client.ack(&m);
    }
    let qos = QoS::from_u8(cfg.qos).unwrap_or(QoS::AtLeastOnce);
    let mut decoder = Decoder::new(cfg.framing.clone(), cfg.max_frame);
    let mut buf = vec![0u8; READ_BUF];
    let idle = matches!(cfg.framing, framing::Framing::Idle);
    let mut last_rx = tokio::time::Instant::now();
    loop {
        let quiet_at = last_rx + cfg.idle_gap;
        let waiting = idle && decoder.has_partial();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        tokio::select! {
            _ = broker.shutdown.cancelled() => return Ended::Shutdown,
            read = port.read(&mut buf) => match read {
                Ok(0) => return Ended::Port("the port reached end of file".into()),
                Ok(n) => {
                    last_rx = tokio::time::Instant::now();
                    status.update(index, |p| p.rx_bytes += n as u64);
                    for decoded in decoder.push(&buf[..n]) {
                        match decoded {
                            Decoded::Frame(f) => frames.push(f),
                            Decoded::Oversized { dropped } => {
                                status.update(index, |p| p.oversized += 1);
                                tracing::warn!(port = %cfg.name, dropped, "serial: a frame longer than max_frame ({} bytes)", cfg.max_frame);
                            }
                        }
                    }
                }
                Err(e) => return Ended::Port(format!("read failed: {e}")),
            },
            _ = tokio::time::sleep_until(quiet_at), if waiting => {
                frames.extend(decoder.idle());
            }
            received = client.recv() => {
                let Some(m) = received else { return Ended::Client };
                if let Err(e) = write_tx(cfg, &mut port, &m, status, index).await {
                    // Not acknowledged: written first once the port is back.
                    *unwritten = Some(m);
                    return Ended::Port(format!("write failed: {e}"));
                }
                client.ack(&m);
            }
        }
        for frame in frames {
            // An empty frame (a blank line) carries nothing; retained it would delete the
            // retained message.
            if frame.is_empty() {
                continue;
            }
            if unpublished.len() == MAX_UNPUBLISHED {
                unpublished.pop_front();
                status.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
            unpublished.push_back(frame);
        }
        while let Some(frame) = unpublished.front() {
            let mut p = Publication::new(rx_topic.to_owned(), frame.clone(), qos);
            p.retain = cfg.retain;
            match client.publish(p).await {
                Ok(_) => status.update(index, |p| p.rx_frames += 1),
                // Kept: the next client publishes it.
                Err(PublishError::Closed) => return Ended::Client,
                Err(e) => {
                    status.publish_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(port = %cfg.name, topic = %rx_topic, "serial: publish refused: {e}");
                }
            }
            unpublished.pop_front();
        }
    }
}

/// Writes one `tx` message to the port. A message too long for the framing is dropped (counted
/// and logged) and counts as written; only a port error is returned.
async fn write_tx(
    cfg: &SerialPortConfig,
    port: &mut Port,
    m: &Received,
    status: &Status,
    index: usize,
) -> std::io::Result<()> {
    match framing::encode(&cfg.framing, cfg.max_frame, &m.message.payload) {
        Ok(bytes) => {
            // Twice the time the bytes take on the wire, and a second: a port that takes longer
            // (flow control holding it, a dying adapter) is reopened.
            let wire = holdfast_modbus::line::frame_time(cfg.line.baud, bytes.len());
            let limit = wire * 2 + Duration::from_secs(1);
            tokio::time::timeout(limit, port.write_all(&bytes))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} bytes not taken within {limit:?}", bytes.len()),
                    )
                })??;
            status.update(index, |p| {
                p.tx_frames += 1;
                p.tx_bytes += bytes.len() as u64;
            });
        }
        Err(e) => {
            status.update(index, |p| p.oversized += 1);
            tracing::warn!(port = %cfg.name, "serial: a tx message was not written: {e}");
        }
    }
    Ok(())
}
