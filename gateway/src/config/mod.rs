//! The gateway's configuration: TOML file + `HOLDFAST__*` environment overrides -> a typed
//! [`Config`] that cannot hold an illegal value.
//!
//! Owns the whole path from text to types: [`raw`] parses TOML into a tree that remembers
//! lines, [`env`] applies overrides to that tree, [`validate`] turns it into a [`Config`] while
//! collecting *every* problem (never stopping at the first), and [`units`] reads human sizes and
//! durations. It must never panic on input and never touch the network or the data directory;
//! reading the one config file is its only I/O. Whatever `holdfast check` and the web UI's
//! "validate" report comes from here (STYLE rule 4, after linkerd2-proxy's `app/src/env.rs`).
//!
//! Keys the design describes but this build does not implement yet (`lwm2m.translators`) are errors, not silently ignored: a gateway that drops a bridge config on
//! the floor would lose data while looking healthy.

mod auto_subscribe;
mod bridges;
mod coap;
mod env;
mod lwm2m;
mod modbus;
mod raw;
mod serial;
mod units;
mod validate;
mod web;
mod webhooks;

pub use auto_subscribe::{check_template as check_auto_subscribe_template, AutoSubscribe};
pub use bridges::{
    BridgeConfig, BridgeProtocol, BridgeQueueConfig, BridgeTls, QueueFlush, QueueOnFull, ServerAddr,
};
pub use coap::{CoapConfig, CoapQos, DtlsCertificates, DtlsConfig, NotifyType};
pub use lwm2m::{AutoObserve, Lwm2mConfig, UpdatePublish};
pub use modbus::{
    FlowControl, MessageMode, ModbusConfig, ModbusDevice, ModbusTransport, Parity, SerialLine,
};
pub use serial::{SerialConfig, SerialPortConfig};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use units::parse_size;
pub use web::WebConfig;
pub use webhooks::{EventSet, PayloadEncoding, WebhookConfig, WebhookEvent, WebhookUrl};

/// The whole gateway configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Identity of this gateway: it names the node in `$SYS` topics and bridge prefixes.
    pub node: NodeConfig,
    /// Broker limits and behaviour; every per-client buffer has its bound here.
    pub mqtt: MqttConfig,
    /// Where the broker accepts connections. Never empty: a broker nobody can reach is a
    /// misconfiguration, not a mode.
    pub listeners: Vec<ListenerConfig>,
    /// Who may connect.
    pub auth: AuthConfig,
    /// What gets logged.
    pub log: LogConfig,
    /// The hardware: which board, its watchdog, status LEDs and health reports.
    pub board: BoardConfig,
    /// Upstream links to cloud brokers (`[[bridges]]`); none by default.
    pub bridges: Vec<BridgeConfig>,
    /// Topics every client is subscribed to when it connects (`[[auto_subscribe]]`); none by
    /// default.
    pub auto_subscribe: Vec<AutoSubscribe>,
    /// HTTP endpoints that get broker events as JSON (`[[webhooks]]`); none by default.
    pub webhooks: Vec<WebhookConfig>,
    /// The CoAP gateway (`[coap]`); off unless the section is present.
    pub coap: Option<CoapConfig>,
    /// The LwM2M server (`[lwm2m]`); off unless the section is present.
    pub lwm2m: Option<Lwm2mConfig>,
    /// The Modbus TCP/RTU pollers (`[modbus]`); off unless the section is present.
    pub modbus: Option<ModbusConfig>,
    /// The raw serial lines (`[serial]`); off unless the section is present.
    pub serial: Option<SerialConfig>,
    /// The web API (`[web]`); off unless the section is present.
    pub web: Option<WebConfig>,
}

/// Identity and local storage of this gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Node name, used as a topic level in `$SYS/brokers/{name}/...` and in bridge prefixes,
    /// hence non-empty and free of `/`, `+`, `#` and control characters. Default "holdfast".
    pub name: String,
    /// Where durable state (queues, retained messages, sessions, the admin account) lives;
    /// must be on persistent flash, not tmpfs. Default "/var/lib/holdfast".
    pub data_dir: PathBuf,
    /// Page cache of the state store (retained messages, sessions), in bytes: small boards
    /// keep it small, at the cost of disk reads for large retained sets. Default 4MB;
    /// 256KB..=1GB.
    pub state_cache: u64,
    /// Whether the wall clock can be trusted across a restart (`node.clock`): "auto" asks the
    /// kernel whether it is synchronized (NTP, PTP, GPS), "synchronized" always trusts it (a
    /// battery-backed RTC), "unreliable" never does (no RTC, no time service). An untrusted
    /// downtime counts as zero, so nothing stored expires because the clock moved.
    /// Default "auto".
    pub clock: crate::clock::ClockTrust,
}

/// Broker limits and behaviour. Defaults follow EMQX where the design is silent.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Largest MQTT packet accepted; a larger one disconnects the client (reason
    /// frame_too_large). Bounds the memory one malicious length prefix can claim.
    /// Default 1MB; 16B..=256MB (256MB is the MQTT protocol maximum).
    pub max_packet_size: u32,
    /// Most QoS 1/2 messages sent to one client and not yet acknowledged (also capped by an MQTT
    /// 5 client's Receive Maximum); beyond its window, messages wait in the session queue. The
    /// window starts at 32 and doubles each time the client acknowledges a whole window while
    /// more waits, up to this; a second in which a full window got no acknowledgement halves
    /// it. Default 1024 (a fast subscriber is not held to 32 per round trip); 1..=65535.
    pub max_inflight: u16,
    /// Messages queued per session while the client is offline or its inflight window is full.
    /// What happens when it is full is `mqueue_full`'s. Default 1000; at least 1.
    pub max_mqueue_len: usize,
    /// What a full session queue (`max_mqueue_len` or `max_mqueue_bytes`) of a connected
    /// client does to a QoS 1/2 message for it: "backpressure" (default) slows the publishers
    /// whose messages go there (their input is held, nothing acknowledged is dropped) until it
    /// has room or `slow_subscriber_timeout` disconnects it; "drop_oldest" drops the oldest
    /// queued message (EMQX, mosquitto), counted. QoS 0 and offline sessions always drop.
    pub mqueue_full: MqueueFull,
    /// How long a connected subscriber may keep its full queue holding publishers back before
    /// it is disconnected (v5 DISCONNECT 0x97, `slow_subscriber` in `$SYS` and the log); its
    /// persistent session keeps its queue, dropping the oldest beyond the limits from then on.
    /// Default 5s; 1s..=1h.
    pub slow_subscriber_timeout: Duration,
    /// Whether QoS 0 messages are queued for offline persistent sessions. Default false (the
    /// design's choice; EMQX's default is true) because QoS 0 promises nothing and queueing it
    /// eats the queue room that QoS 1/2 messages need.
    pub mqueue_store_qos0: bool,
    /// Session expiry the broker grants (and caps a client's request to); after this long
    /// offline a session and its queue are discarded. Default 2h; at most 2^32-1 seconds
    /// (the MQTT 5 field's range).
    pub session_expiry: Duration,
    /// Time a new TCP connection has to send CONNECT before it is closed (reason
    /// idle_timeout); stops idle sockets from holding connection slots. Default 15s; > 0.
    pub idle_timeout: Duration,
    /// A client silent for keepalive x this factor is disconnected (MQTT says 1.5). Default
    /// 1.5; 1.0..=1000.0.
    pub keepalive_multiplier: f32,
    /// `mqtt.server_keepalive` (EMQX's): when set, MQTT 5 clients are told this keep alive in
    /// CONNACK (Server Keep Alive) and held to it, whatever their CONNECT asked; 3.1.1 clients,
    /// who cannot be told, keep their own. Seconds, 0 = no keep alive. Default unset.
    pub server_keepalive: Option<u16>,
    /// Longest client id accepted, in bytes. Default 256 (it is stored with every persistent
    /// session and named in logs and `$SYS`); 23..=65535 (MQTT requires servers to accept at
    /// least 23).
    pub max_clientid_len: usize,
    /// Topic aliases a client may use towards us (MQTT 5 Topic Alias Maximum); each alias holds
    /// a topic in memory, so this bounds that table. Default 16; 0 disables inbound aliases.
    pub max_topic_alias: u16,
    /// Most levels a topic name or filter may have; bounds trie depth and matching cost.
    /// Default 128; 1..=65535.
    pub max_topic_levels: usize,
    /// Longest topic name or filter accepted, in bytes (a shared filter with its
    /// `$share/{group}/` prefix). A longer PUBLISH topic is refused (0x90 / disconnect for
    /// 3.1.1), a longer filter gets 0x8F / 0x80. Default 4096; 1..=65535.
    pub max_topic_len: usize,
    /// Filter bytes of every session's subscriptions together (each counted at its length
    /// plus 64 bytes of bookkeeping): a SUBSCRIBE that would pass it gets 0x97 quota exceeded
    /// (0x80 for 3.1.1), so many sessions with long filters cannot take the board's memory
    /// and flash. Default 32MB.
    pub max_subscription_bytes_total: u64,
    /// Whether retained messages are supported; advertised to MQTT 5 clients. Default true.
    pub retain_available: bool,
    /// Bound on the retained store: beyond it, new retained topics are refused (old ones can
    /// still be updated or cleared). Default 100000; at least 1.
    pub max_retained_messages: usize,
    /// Largest payload kept as a retained message; retained payloads live on flash and in
    /// memory. Default 1MB; 1B..=256MB.
    pub max_retained_payload: u32,
    /// How a message to a shared subscription group (`$share/g/t`) picks its one receiver.
    /// Default round_robin.
    pub shared_subscription_strategy: SharedStrategy,
    /// What a CONNECT gets when its client id names a session another identity created
    /// (a different verified user, or a verified user for an anonymous session): "refuse"
    /// (CONNACK not authorized; the session is untouched) or "discard" (the old session is
    /// dropped, as with clean start). Default refuse: a client id is easy to learn, a session
    /// and its queued messages are not its taker's.
    pub session_owner_mismatch: OwnerMismatch,
    /// How often `$SYS` statistics are published; zero disables them. Default 60s; 0 or >= 1s.
    pub sys_interval: Duration,
    /// Incoming QoS 2 messages per client awaiting PUBREL; bounds what a client that never
    /// sends PUBREL can pin in memory. Default 100; at least 1.
    pub max_awaiting_rel: usize,
    /// Bytes of encoded packets buffered per connection before the broker stops draining that
    /// client's queue into it, so a slow reader backs up into its bounded session queue rather
    /// than into unbounded socket buffers. Default 1MB; 1KB..=256MB.
    pub outbound_buffer: u32,
    /// Subscriptions one client may hold; a SUBSCRIBE beyond it gets 0x80 (3.1.1) or 0x97
    /// quota exceeded (v5) for the filters over the limit. Bounds what one client can add to
    /// the trie. Default 100; 0 = unlimited.
    pub max_subscriptions: usize,
    /// Topic and payload bytes of all retained messages together (`$SYS` aside); a new or
    /// larger retained message that would pass it is not stored (counted). Default 64MB.
    pub max_retained_bytes: u64,
    /// Sessions (connected and offline) the broker holds; a CONNECT that needs a new one
    /// beyond it is refused (MQTT 5: 0x97 quota exceeded, 3.1.1: 3). Default 50,000.
    pub max_sessions: usize,
    /// Bytes one session may hold queued and in flight (topic + payload + ~128 B each); a
    /// message that would pass it drops the oldest queued ones, as `max_mqueue_len` does
    /// (counted). Default 16MB.
    pub max_mqueue_bytes: u64,
    /// Those bytes summed over every session, with the delayed wills waiting: a message that
    /// would pass it is not queued for the session it was for (counted as mqueue_full), and a
    /// delayed will that would is published at once, so slow or offline subscribers together
    /// cannot take the board's memory. Default 128MB.
    pub max_queued_bytes_total: u64,
    /// Inbound PUBLISH packets per second per client, as a token bucket (EMQX's
    /// `"rate,burst"`); an empty bucket pauses reading from that client's socket until it
    /// refills (back-pressure, nothing dropped). Default none = unlimited.
    pub messages_rate: Option<RateLimit>,
    /// Inbound PUBLISH bytes (whole packets) per second per client, as `messages_rate`.
    /// Default none = unlimited.
    pub bytes_rate: Option<RateLimit>,
    /// `mqtt.force_shutdown.max_mqueue_len`: a connected client whose session queue reaches
    /// this many messages is disconnected (v5 DISCONNECT 0x97, reason `force_shutdown`)
    /// instead of silently losing the oldest; only meaningful up to `max_mqueue_len`.
    /// Default 0 = off. (`max_heap_size` is not supported.)
    pub force_shutdown_mqueue_len: usize,
    /// `mqtt.force_shutdown.max_heap_size`: a connected client whose queued and inflight
    /// messages hold this many bytes (topic + payload + a fixed overhead each) is disconnected
    /// the same way. Its socket buffers are bounded apart (`max_packet_size`,
    /// `outbound_buffer`). Default 0: off.
    pub force_shutdown_heap_size: u64,
}

/// A per-client token bucket: `rate` tokens a second, holding at most `burst`. Both are at
/// least 1, so a configured limit always lets traffic through eventually.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second (messages or bytes).
    pub rate: NonZeroU64,
    /// Bucket size: what a client that has been quiet may send at once.
    pub burst: NonZeroU64,
}

/// What a CONNECT gets when its client id names a session another identity created
/// (`mqtt.session_owner_mismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerMismatch {
    /// CONNACK "not authorized"; the session and its connection are left alone.
    #[default]
    Refuse,
    /// The old session is discarded (as with clean start) and the newcomer gets a fresh one.
    Discard,
}

/// What a full session queue does to a QoS 1/2 message for a connected client
/// (`mqtt.mqueue_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqueueFull {
    /// Slow the publishers down (hold their input) until the queue has room; the subscriber
    /// pays with a disconnect after `slow_subscriber_timeout`.
    #[default]
    Backpressure,
    /// Drop the oldest queued message (counted).
    DropOldest,
}

impl MqueueFull {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            MqueueFull::Backpressure => "backpressure",
            MqueueFull::DropOldest => "drop_oldest",
        }
    }
}

/// How a shared subscription group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedStrategy {
    /// Each member in turn ("round_robin", EMQX's default).
    #[default]
    RoundRobin,
    /// A random member ("random").
    Random,
    /// The same member for the same publisher ("hash_clientid"), which keeps one publisher's
    /// messages in order at one receiver.
    HashClientId,
}

impl SharedStrategy {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedStrategy::RoundRobin => "round_robin",
            SharedStrategy::Random => "random",
            SharedStrategy::HashClientId => "hash_clientid",
        }
    }
}

impl fmt::Display for SharedStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One place the broker accepts connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Name in logs, `holdfast ctl listeners` and errors ("port taken"): `kind:name`, where
    /// name is the optional `name` key, else "default" when it is the only listener of its
    /// kind, else its index among listeners of its kind ("tcp:0", "tcp:1").
    pub name: String,
    /// Transport.
    pub kind: ListenerKind,
    /// Address and port to bind; port 0 picks a free port (tests use it).
    pub bind: SocketAddr,
    /// Most simultaneous connections on this listener; bounds memory and file descriptors.
    /// Default 100000; at least 1.
    pub max_connections: usize,
    /// Most new connections accepted per second, so a reconnect storm after an outage cannot
    /// starve established clients. Default 1000; at least 1.
    pub max_conn_rate: u32,
    /// Certificate, key and client verification; present exactly for `tls` and `wss`.
    pub tls: Option<ListenerTls>,
}

/// Transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain MQTT over TCP ("tcp"), default port 1883.
    Tcp,
    /// MQTT over TLS ("tls"), default port 8883.
    Tls,
    /// MQTT over WebSocket on path `/mqtt` ("ws"), default port 8083.
    Ws,
    /// MQTT over WebSocket over TLS ("wss"), default port 8084.
    Wss,
}

impl ListenerKind {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// Whether this transport runs over TLS (and so needs a `tls` table).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether this transport carries MQTT in WebSocket frames.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// TLS settings of a `tls` or `wss` listener (rustls with the ring provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain the server presents, leaf first.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificate(s) that sign client certificates; required with `verify_peer`.
    pub ca: Option<PathBuf>,
    /// Ask for a client certificate and verify it against `ca` (mutual TLS). Default false.
    pub verify_peer: bool,
    /// PEM certificate revocation list(s) of `ca`: a client certificate they revoke is
    /// refused at the handshake. Needs `verify_peer`. Default none. Read at start-up.
    pub crl: Option<PathBuf>,
    /// With `verify_peer`: refuse clients that send no certificate. Default false (EMQX), so
    /// such clients fall back to password authentication.
    pub fail_if_no_peer_cert: bool,
    /// Accept TLS 1.2. Default true.
    pub tls12: bool,
    /// Accept TLS 1.3. Default true.
    pub tls13: bool,
    /// With `verify_peer`: a client that presents a verified certificate is authenticated by
    /// it, and this part of the certificate becomes its user name (for the ACL's `user` rules
    /// and `%u`), whatever CONNECT says (EMQX's `peer_cert_as_username`). Default none: the
    /// certificate only opens the TLS session and CONNECT's credentials are checked as usual.
    pub peer_cert_as_username: Option<CertIdentity>,
}

/// Which part of a client certificate names the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdentity {
    /// The subject's common name ("cn").
    Cn,
    /// The first DNS subject alternative name ("san").
    San,
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may connect over MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Whether clients without a username (and, following EMQX, users the password file does
    /// not list) may connect. Default false: secure by default; the start-up log should warn
    /// loudly when it is on.
    pub allow_anonymous: bool,
    /// File of `user:argon2id-PHC` lines managed by `holdfast passwd`. Default none, in which
    /// case only anonymous clients can connect, and only when allowed. Reloaded on SIGHUP.
    pub password_file: Option<PathBuf>,
    /// File of client ids (one a line, `#` comments) that may connect without credentials,
    /// checked after the password file. A client id is not a secret: use it for devices that
    /// cannot carry a password, on a network you trust, together with an ACL. Default none.
    /// Reloaded on SIGHUP.
    pub clientid_allowlist: Option<PathBuf>,
    /// JWT authentication (token in the password field), checked after the allowlist.
    /// Default none.
    pub jwt: Option<JwtConfig>,
    /// The ACL file (TOML `[[rules]]`, first match wins). Default none: no rules, so every
    /// publish and subscribe gets `acl_nomatch`. Reloaded on SIGHUP.
    pub acl_file: Option<PathBuf>,
    /// What a publish or subscribe that no ACL rule matches gets. Default allow, as in EMQX
    /// (`authorization.no_match`).
    pub acl_nomatch: AclNomatch,
    /// Threads that verify passwords (argon2id: ~19 MiB and tens of milliseconds each; every
    /// thread keeps its 19 MiB). Default 2; 1..=64.
    pub check_workers: usize,
    /// Logins that may wait for a check worker; one more is refused at once as "server busy"
    /// (MQTT 5: 0x89, 3.1.1: return code 3). Default 32; 1..=100000.
    pub max_pending_checks: usize,
    /// How long a login waits for its check before it is refused as busy. Default 5s.
    pub check_timeout: Duration,
    /// Wrong passwords for one user name from one address within `login_failure_window`
    /// after which that pair is refused without a check until the window has passed.
    /// Default 10; 0 turns it off.
    pub max_login_failures: u32,
    /// See `max_login_failures`. Default 1m.
    pub login_failure_window: Duration,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            allow_anonymous: false,
            password_file: None,
            clientid_allowlist: None,
            jwt: None,
            acl_file: None,
            acl_nomatch: AclNomatch::default(),
            check_workers: 2,
            max_pending_checks: 32,
            check_timeout: Duration::from_secs(5),
            max_login_failures: 10,
            login_failure_window: Duration::from_secs(60),
        }
    }
}

/// `auth.acl_nomatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AclNomatch {
    /// Allow what no rule mentions (EMQX's default).
    #[default]
    Allow,
    /// Deny what no rule mentions.
    Deny,
}

impl AclNomatch {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            AclNomatch::Allow => "allow",
            AclNomatch::Deny => "deny",
        }
    }
}

/// `auth.jwt`: which tokens are accepted in the CONNECT password.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Shared secret for the HMAC algorithms (HS256/384/512). Never logged.
    pub secret: Option<String>,
    /// PEM public key for RS*/PS*/ES* algorithms (read at start-up and on reload).
    pub public_key: Option<PathBuf>,
    /// Accepted `alg` values: a token signed with any other is refused. At least one.
    pub algorithms: Vec<String>,
    /// When set, the token must carry this claim and it must equal the CONNECT user name, so
    /// a token issued to one device cannot be used under another device's name.
    pub username_claim: Option<String>,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must name it.
    pub audience: Option<String>,
    /// When set, a token may be valid for at most this long (`exp - iat`, or `exp - now` when
    /// it has no `iat`): a stolen long-lived token is refused.
    pub max_lifetime: Option<Duration>,
    /// `unsynchronized_clock`: what a token that is expired or not valid yet *by this clock*
    /// gets while the clock is not synchronized (`node.clock`): refused with that reason
    /// (`false`, "refuse", the default) or accepted without the `exp`/`nbf` checks (`true`,
    /// "accept"; the signature and every other check still apply).
    pub accept_when_unsynchronized: bool,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key", &self.public_key)
            .field("algorithms", &self.algorithms)
            .field("username_claim", &self.username_claim)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// What gets logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive: a level (error, warn, info, debug, trace, off) or a
    /// directive list such as "info,holdfast::broker=debug". Checked here so a typo fails at
    /// start-up instead of silently logging nothing. Default "info".
    pub level: String,
}

/// The board the gateway runs on (`[board]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardConfig {
    /// Which board implementation drives the hardware. Default host (a development machine:
    /// no watchdog device, no LEDs).
    pub kind: BoardKind,
    /// The kernel watchdog device a `linux` board opens (and so arms); `None` (an empty string
    /// in the file) runs without one. Default "/dev/watchdog". Ignored by the host board.
    pub watchdog_device: Option<PathBuf>,
    /// Timeout asked of the watchdog driver: the board resets when the runtime has not proved
    /// itself healthy for this long. Whole seconds, 1s..=1h; drivers may cap it (the Raspberry
    /// Pi's at 15s, hence the default 15s).
    pub watchdog_timeout: Duration,
    /// A watchdog device that cannot be opened stops the start (true), or is logged, raised
    /// as an alarm (`$SYS/brokers/{node}/board/alarms`, systemd `STATUS=`) and the gateway
    /// runs on under systemd's watchdog (false, the default: never a boot loop).
    pub watchdog_required: bool,
    /// After this many boots in a row that ended in a reset while the gateway ran (the
    /// driver's boot status, or a run that never reached its clean close), the hardware
    /// watchdog is left disarmed for that boot, with an alarm, so a board cannot reset
    /// forever. Default 5; 0 never stops arming it.
    pub watchdog_max_resets: u32,
    /// The network interface whose MAC identifies the board in `$SYS .../board/identity`
    /// (e.g. "eth0"). Default none: the first interface with a permanent address, physical
    /// before virtual, never one with a random address (a USB modem's).
    pub mac_interface: Option<String>,
    /// An alarm is raised (`board/alarms`, `board/status = degraded`) while the data
    /// directory's file system has less than this percent free. Default 10; 0 = off.
    pub disk_free_alarm: u8,
    /// How often health (temperature, load, memory, disk, uptime) is published under `$SYS/brokers/{node}/board/health`. Default 60s; 0 disables, else >= 1s.
    pub health_interval: Duration,
    /// LED (a name under /sys/class/leds) that blinks while booting and is lit while running.
    /// Default none.
    pub led_status: Option<String>,
    /// LED that is lit while the cloud uplink is up and blinks while it is down. Default none.
    pub led_uplink: Option<String>,
    /// LED lit when the runtime fails its self-check. Default none.
    pub led_fault: Option<String>,
    /// The factory-reset button of a `linux` board: a GPIO value file that reads 0 or 1
    /// (the kernel's sysfs GPIO, `/sys/class/gpio/gpioN/value`, exported at boot). Held down
    /// for `reset_button_hold`, it stops the gateway, wipes its data directory (as
    /// `holdfast factory-reset`) and exits for systemd to start it afresh. Default none.
    pub reset_button: Option<PathBuf>,
    /// The button reads 0 when pressed (a button to ground with a pull-up). Default false.
    pub reset_button_active_low: bool,
    /// How long the button must be held down, 1s..=10m. Default 10s.
    pub reset_button_hold: Duration,
    /// Where sysfs is mounted; only tests and containers change it. Default "/sys".
    pub sys_root: PathBuf,
    /// Where procfs is mounted; only tests and containers change it. Default "/proc".
    pub proc_root: PathBuf,
}

/// Which board implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoardKind {
    /// A development machine ("host"): health and identity, no watchdog device, no LEDs.
    #[default]
    Host,
    /// A Linux board ("linux"): the kernel watchdog device and sysfs LEDs too.
    Linux,
}

impl BoardKind {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            BoardKind::Host => "host",
            BoardKind::Linux => "linux",
        }
    }
}

impl fmt::Display for BoardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for BoardConfig {
    fn default() -> BoardConfig {
        BoardConfig {
            kind: BoardKind::Host,
            watchdog_device: Some(PathBuf::from("/dev/watchdog")),
            watchdog_timeout: Duration::from_secs(15),
            watchdog_required: false,
            watchdog_max_resets: 5,
            mac_interface: None,
            disk_free_alarm: 10,
            health_interval: Duration::from_secs(60),
            led_status: None,
            led_uplink: None,
            led_fault: None,
            reset_button: None,
            reset_button_active_low: false,
            reset_button_hold: Duration::from_secs(10),
            sys_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl Default for Config {
    /// The built-in defaults: one tcp listener on 0.0.0.0:1883, anonymous access off, and the
    /// defaults documented on each field (the same as `example_toml()`).
    fn default() -> Config {
        Config {
            node: NodeConfig::default(),
            mqtt: MqttConfig::default(),
            listeners: vec![ListenerConfig::default()],
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            board: BoardConfig::default(),
            bridges: Vec::new(),
            auto_subscribe: Vec::new(),
            webhooks: Vec::new(),
            coap: None,
            lwm2m: None,
            modbus: None,
            serial: None,
            web: None,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            name: "holdfast".to_owned(),
            data_dir: PathBuf::from("/var/lib/holdfast"),
            state_cache: 4 * 1024 * 1024,
            clock: crate::clock::ClockTrust::Auto,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        const MB: u32 = 1024 * 1024;
        MqttConfig {
            max_packet_size: MB,
            max_inflight: 1024,
            max_mqueue_len: 1000,
            mqueue_full: MqueueFull::Backpressure,
            slow_subscriber_timeout: Duration::from_secs(5),
            mqueue_store_qos0: false,
            session_expiry: Duration::from_secs(2 * 3600),
            idle_timeout: Duration::from_secs(15),
            keepalive_multiplier: 1.5,
            server_keepalive: None,
            max_clientid_len: 256,
            max_topic_alias: 16,
            max_topic_levels: 128,
            max_topic_len: 4096,
            max_subscription_bytes_total: 32 * u64::from(MB),
            retain_available: true,
            max_retained_messages: 100_000,
            max_retained_payload: MB,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            session_owner_mismatch: OwnerMismatch::Refuse,
            sys_interval: Duration::from_secs(60),
            max_awaiting_rel: 100,
            outbound_buffer: MB,
            max_subscriptions: 100,
            max_retained_bytes: 64 * u64::from(MB),
            max_sessions: 50_000,
            max_mqueue_bytes: 16 * u64::from(MB),
            max_queued_bytes_total: 128 * u64::from(MB),
            messages_rate: None,
            bytes_rate: None,
            force_shutdown_mqueue_len: 0,
            force_shutdown_heap_size: 0,
        }
    }
}

impl Default for ListenerConfig {
    /// The default listener: MQTT over TCP on every interface, port 1883.
    fn default() -> ListenerConfig {
        ListenerConfig {
            name: "tcp:default".to_owned(),
            kind: ListenerKind::Tcp,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1883)),
            max_connections: 100_000,
            max_conn_rate: 1000,
            tls: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

/// One thing wrong with a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file as named by the caller, the environment variable that set the value,
    /// or "defaults" for a built-in value.
    pub origin: String,
    /// 1-based line in the file, when the problem has one.
    pub line: Option<usize>,
    /// Key path, e.g. `listeners[1].bind`; empty when the problem is the whole file.
    pub key: String,
    /// What is wrong, phrased for the person editing the file.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `FILE:LINE: key.path: message`, leaving out the parts that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The problems: those in the file by line, then those of environment overrides.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Origin named in problems with a built-in value (when no file is given).
const DEFAULTS_ORIGIN: &str = "defaults";

/// Loads the config: the file at `path` (or the built-in defaults when `None`), then the
/// `HOLDFAST__*` overrides found in `env` (other variables are ignored). Pass
/// `std::env::vars()` in production and a fixed list in tests.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    match path {
        None => parse_tree(raw::Node::table(raw::Source::Default), DEFAULTS_ORIGIN, env),
        Some(path) => {
            let origin = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => parse(&text, &origin, env),
                Err(e) => Err(ConfigErrors {
                    problems: vec![Problem {
                        origin,
                        line: None,
                        key: String::new(),
                        message: format!("cannot read the config file: {e}"),
                    }],
                }),
            }
        }
    }
}

/// Parses config text; `origin` names it in problems (usually the file name).
pub fn parse(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    match raw::parse_toml(text, origin) {
        Ok(root) => parse_tree(root, origin, env),
        Err(problem) => Err(ConfigErrors {
            problems: vec![problem],
        }),
    }
}

fn parse_tree(
    mut root: raw::Node,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    validate::insert_default_listener(&mut root);
    env::apply(&mut root, env, &mut problems);
    let config = validate::validate(&root, origin, &mut problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors { problems }),
    }
}

/// A fully commented config file with every key at its default; `parse` of it gives
/// `Config::default()`. `holdfast check` users and the Yocto layer start from it.
pub fn example_toml() -> &'static str {
    include_str!("example.toml")
}

#[cfg(test)]
mod tests;
