//! The systemd notification protocol, without libsystemd (sd_notify(3)).
//!
//! Owns the datagram socket to `$NOTIFY_SOCKET`: `READY=1` once the listeners are bound (units
//! with `Type=notify`), `WATCHDOG=1` each time the runtime has checked itself (units with
//! `WatchdogSec=`, whose period arrives as `$WATCHDOG_USEC`), `STOPPING=1` when shutdown starts
//! (`RELOADING=1` instead when the process is about to exec itself on a new config),
//! and `STATUS=...` free text for `systemctl status`. Both a path and an abstract socket (a name
//! starting with `@`) are supported. Outside systemd (no `$NOTIFY_SOCKET`) every call is a
//! no-op.
//!
//! A failed send is logged, never fatal: systemd's own watchdog then restarts us, which is the
//! right outcome for a process that cannot reach its supervisor.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in `$NOTIFY_SOCKET`), stored without the `@`.
    Abstract(Vec<u8>),
}

/// A handle on systemd's notification socket, or a no-op outside systemd.
#[derive(Debug)]
pub struct SystemdNotify {
    /// `None` outside systemd.
    target: Option<Target>,
    /// The unit's `WatchdogSec`, when it is set and meant for this process.
    watchdog: Option<Duration>,
}

impl SystemdNotify {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` from the environment.
    pub fn from_env() -> SystemdNotify {
        SystemdNotify::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok(),
            std::env::var("WATCHDOG_PID").ok(),
            std::process::id(),
        )
    }

    /// Builds it from the variables' values (tests pass their own). `pid` is this process's
    /// id: a `WATCHDOG_PID` naming another process means the watchdog is not ours.
    pub fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
        pid: u32,
    ) -> SystemdNotify {
        let target = notify_socket.and_then(|raw| {
            use std::os::unix::ffi::OsStrExt;
            let bytes = raw.as_bytes();
            match bytes.first() {
                None => None,
                Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
                Some(b'/') => Some(Target::Path(PathBuf::from(raw))),
                Some(_) => {
                    tracing::warn!(notify_socket = ?raw, "ignoring $NOTIFY_SOCKET: neither an absolute path nor an @abstract name");
                    None
                }
            }
        });
        let ours = watchdog_pid
            .map(|p| p.trim().parse::<u32>() == Ok(pid))
            .unwrap_or(true);
        let watchdog = watchdog_usec
            .and_then(|us| us.trim().parse::<u64>().ok())
            .filter(|us| *us > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        SystemdNotify { target, watchdog }
    }

    /// True when running under systemd with a notification socket.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The unit's watchdog period (`WatchdogSec=`), when systemd expects `WATCHDOG=1`.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`: start-up is complete (listeners bound).
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// `WATCHDOG=1`: the runtime checked itself and is healthy.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.notify("WATCHDOG=1");
        }
    }

    /// `EXTEND_TIMEOUT_USEC=…`: start-up (or shutdown) is still progressing; systemd waits
    /// `by` more before it gives up on it (a long state restore after a crash).
    pub fn extend_timeout(&self, by: Duration) {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// `RELOADING=1` (with `MONOTONIC_USEC`, as systemd 253's reload protocol asks): the
    /// process stops serving and comes back in place (it execs itself); its next `READY=1`
    /// ends the reload. Unlike `STOPPING=1`, systemd does not then expect it to exit.
    pub fn reloading(&self) {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
            Ok(now) => {
                let usec = now.tv_sec() as i128 * 1_000_000 + now.tv_nsec() as i128 / 1_000;
                self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
            }
            Err(_) => self.notify("RELOADING=1"),
        }
    }

    /// `STOPPING=1`: a clean shutdown has started.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// `STATUS=text`: one line shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        let line: String = text.chars().filter(|c| *c != '\n').collect();
        self.notify(&format!("STATUS={line}"));
    }

    /// Sends one notification; failures are logged at most as warnings.
    fn notify(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send(target, message.as_bytes()) {
            tracing::warn!(error = %e, message, "cannot notify systemd");
        }
    }
}

fn send(target: &Target, message: &[u8]) -> io::Result<usize> {
    let socket = UnixDatagram::unbound()?;
    match target {
        Target::Path(path) => socket.send_to(message, path),
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_watchdog_and_stopping_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = SystemdNotify::from_vars(
            Some(path.clone().into_os_string()),
            Some("30000000".into()),
            None,
            42,
        );
        assert!(n.is_active());
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(30)));
        n.ready();
        n.watchdog();
        n.status("running\nfine");
        n.stopping();
        n.reloading();
        assert_eq!(recv(&server), "READY=1");
        assert_eq!(recv(&server), "WATCHDOG=1");
        assert_eq!(recv(&server), "STATUS=runningfine");
        assert_eq!(recv(&server), "STOPPING=1");
        let reload = recv(&server);
        let usec = reload.strip_prefix("RELOADING=1\nMONOTONIC_USEC=");
        assert!(usec.is_some_and(|u| u.parse::<u64>().is_ok()), "{reload}");
    }

    #[test]
    fn an_abstract_socket_is_named_with_a_leading_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("holdfast-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = SystemdNotify::from_vars(Some(format!("@{name}").into()), None, None, 1);
        n.ready();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn without_notify_socket_everything_is_a_no_op() {
        let n = SystemdNotify::from_vars(None, Some("1000000".into()), None, 1);
        assert!(!n.is_active());
        // WATCHDOG_USEC alone means nothing without a socket to send to.
        assert_eq!(n.watchdog_period(), None);
        n.ready();
        n.watchdog();
        n.stopping();
    }

    #[test]
    fn a_watchdog_meant_for_another_pid_is_ignored() {
        let n = SystemdNotify::from_vars(
            Some("/run/systemd/notify".into()),
            Some("1000000".into()),
            Some("7".into()),
            8,
        );
        assert_eq!(n.watchdog_period(), None);
        let n = SystemdNotify::from_vars(
            Some("/run/systemd/notify".into()),
            Some("1000000".into()),
            Some("8".into()),
            8,
        );
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_relative_or_empty_socket_name_is_ignored() {
        assert!(!SystemdNotify::from_vars(Some("notify".into()), None, None, 1).is_active());
        assert!(!SystemdNotify::from_vars(Some("".into()), None, None, 1).is_active());
    }

    #[test]
    fn an_unreachable_socket_is_logged_not_fatal() {
        let n = SystemdNotify::from_vars(Some("/nonexistent/notify.sock".into()), None, None, 1);
        n.ready();
    }
}
