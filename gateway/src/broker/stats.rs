//! Lock-free counters per listener: connections and why they ended.
//!
//! Owns the numbers `holdfast ctl listeners` and `$SYS` report. Only atomics: any task may
//! bump them without taking the router lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Why a connection ended, as EMQX names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// No packet within keepalive x multiplier.
    KeepaliveTimeout,
    /// The peer closed the socket (or it failed) without DISCONNECT.
    TcpClosed,
    /// The client sent DISCONNECT.
    Normal,
    /// A packet over `max_packet_size`.
    FrameTooLarge,
    /// Malformed packet or protocol violation.
    ProtocolError,
    /// No CONNECT within `idle_timeout`.
    IdleTimeout,
    /// Another connection took the session over (resume).
    Takeovered,
    /// Another connection with clean start discarded the session.
    Discarded,
    /// Closed by an operator.
    Kicked,
    /// Authentication refused.
    NotAuthorized,
    /// The broker is shutting down.
    Shutdown,
    /// A bridge queue could not take a message from an MQTT 3.1.1 client, which has no way
    /// to hear a refusal: it is disconnected and resends its unacknowledged messages later.
    QueueFull,
    /// The session queue of a connected client reached `mqtt.force_shutdown.max_mqueue_len`.
    ForceShutdown,
    /// Its full queue held publishers back longer than `mqtt.slow_subscriber_timeout`.
    SlowSubscriber,
}

impl DisconnectReason {
    /// Every reason, in report order.
    pub const ALL: [DisconnectReason; 14] = [
        DisconnectReason::KeepaliveTimeout,
        DisconnectReason::TcpClosed,
        DisconnectReason::Normal,
        DisconnectReason::FrameTooLarge,
        DisconnectReason::ProtocolError,
        DisconnectReason::IdleTimeout,
        DisconnectReason::Takeovered,
        DisconnectReason::Discarded,
        DisconnectReason::Kicked,
        DisconnectReason::NotAuthorized,
        DisconnectReason::Shutdown,
        DisconnectReason::QueueFull,
        DisconnectReason::ForceShutdown,
        DisconnectReason::SlowSubscriber,
    ];

    /// The name used in logs, `$SYS` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::TcpClosed => "tcp_closed",
            DisconnectReason::Normal => "normal",
            DisconnectReason::FrameTooLarge => "frame_too_large",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::Takeovered => "takeovered",
            DisconnectReason::Discarded => "discarded",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::NotAuthorized => "not_authorized",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::QueueFull => "queue_full",
            DisconnectReason::ForceShutdown => "force_shutdown",
            DisconnectReason::SlowSubscriber => "slow_subscriber",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one listener.
#[derive(Debug)]
pub struct ListenerStats {
    /// Listener name ("tcp:default").
    pub name: String,
    /// Address it is bound to.
    pub listen_on: String,
    /// Configured connection cap.
    pub max_connections: usize,
    /// Connections open now.
    pub current: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused at accept (cap or rate).
    pub refused: AtomicU64,
    /// TLS handshakes or WebSocket upgrades that failed or timed out (`tls`, `ws`, `wss`).
    pub handshake_failed: AtomicU64,
    shutdown: [AtomicU64; DisconnectReason::ALL.len()],
}

impl ListenerStats {
    /// Zeroed counters.
    pub fn new(name: String, listen_on: String, max_connections: usize) -> ListenerStats {
        ListenerStats {
            name,
            listen_on,
            max_connections,
            current: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshake_failed: AtomicU64::new(0),
            shutdown: Default::default(),
        }
    }

    /// Counts a connection that ended for `reason`.
    pub fn count_shutdown(&self, reason: DisconnectReason) {
        self.shutdown[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections ended for `reason`.
    pub fn shutdown_count(&self, reason: DisconnectReason) -> u64 {
        self.shutdown[reason.index()].load(Ordering::Relaxed)
    }
}

/// Broker-wide traffic counters bumped by connections without the router lock.
#[derive(Debug, Default)]
pub struct TrafficStats {
    /// PUBLISH packets received from clients.
    pub publish_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub publish_sent: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_received: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_sent: AtomicU64,
    /// Deliveries not sent because they exceeded the client's maximum packet size.
    pub dropped_too_large_for_client: AtomicU64,
    /// Inbound QoS 2 publishes refused because `max_awaiting_rel` was reached.
    pub dropped_awaiting_rel_full: AtomicU64,
    /// Inbound publishes the ACL denied (dropped; MQTT 5 QoS 1/2 get reason 0x87).
    pub dropped_not_authorized: AtomicU64,
    /// Logins refused as "server busy": the password-check queue was full or the check did
    /// not finish within `auth.check_timeout`.
    pub logins_refused_busy: AtomicU64,
    /// Logins refused without a check: too many wrong passwords for that user from that
    /// address (`auth.max_login_failures`).
    pub logins_refused_locked: AtomicU64,
}
