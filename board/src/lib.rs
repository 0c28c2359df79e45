//! holdfast-board: the hardware as the gateway runtime sees it.
//!
//! # Layout
//!
//! - [`Board`]: the trait the runtime drives — feed the watchdog, show a status on the LEDs,
//!   read the board's identity and health, and close down cleanly.
//! - [`LinuxBoard`]: a real board: the kernel watchdog device ([`watchdog`]), sysfs LEDs
//!   ([`leds`]), identity from the device tree or DMI and the network interfaces
//!   ([`identity`]), health from `/proc`, `/sys/class/thermal` and `statvfs` ([`health`]).
//! - [`HostBoard`]: a development machine: no watchdog device and no LEDs, but the same
//!   identity and health readings, so `$SYS/brokers/{node}/board/...` looks the same.
//! - [`button`]: the factory-reset button (a GPIO value file) and its hold rule.
//! - [`notify`]: the systemd notification protocol (`READY=1`, `WATCHDOG=1`, `STOPPING=1`
//!   over `$NOTIFY_SOCKET`). It belongs to the service manager, not to the hardware, so it is
//!   separate from [`Board`] and works with either kind.
//!
//! Every path under `/sys` and `/proc` is taken relative to [`Roots`], so tests run against a
//! fake tree in a temporary directory and a regular file standing in for `/dev/watchdog`.
//!
//! This crate never decides *when* to feed a watchdog: the runtime does, and only after it has
//! checked itself (see the gateway's `app` module). It never panics on a missing or odd sysfs
//! file: a reading it cannot take is `None`.
//!
//! It is the only Holdfast crate with `unsafe` code: the watchdog ioctls in [`watchdog`], the
//! read-only `adjtimex` in [`clock`], glibc's `__nss_configure_lookup` in [`names`] and the
//! allocators' collect calls in [`memory`], each with its justification. Everything else is
//! `forbid`den per module.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(unreachable_pub, missing_docs, missing_debug_implementations)]

pub mod button;
pub mod clock;
pub mod health;
mod host;
pub mod identity;
pub mod leds;
mod linux;
pub mod memory;
pub mod names;
pub mod notify;
pub mod resets;
pub mod watchdog;

pub use button::{ButtonEvent, HoldTimer, ResetButtonConfig};
pub use health::Health;
pub use host::HostBoard;
pub use identity::Identity;
pub use leds::{Indication, LedNames};
pub use linux::{LinuxBoard, LinuxBoardConfig};
pub use notify::SystemdNotify;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where the kernel's pseudo file systems are mounted. Production uses `/sys` and `/proc`;
/// tests point both at a fake tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs mount point (LEDs, thermal zones, network interfaces, DMI).
    pub sys: PathBuf,
    /// procfs mount point (device tree, load, memory, uptime, hostname).
    pub proc: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// Why the board could not be opened or driven.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The watchdog device could not be opened (missing, no permission, or already held open
    /// by another process such as systemd's `RuntimeWatchdogSec`).
    #[error("cannot open the watchdog device {path}: {source}")]
    WatchdogOpen {
        /// The device path.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The driver refused the timeout and does not say which one it keeps: the watchdog was
    /// disarmed again, since it cannot be fed safely.
    #[error("the watchdog {path} refused a {wanted} s timeout ({errno}) and does not report the one it keeps; disarmed")]
    WatchdogTimeout {
        /// The device path.
        path: PathBuf,
        /// The timeout asked for.
        wanted: u64,
        /// What the driver answered.
        errno: nix::errno::Errno,
    },
    /// A keepalive or the magic close could not be written to the watchdog device.
    #[error("cannot write to the watchdog device {path}: {source}")]
    WatchdogWrite {
        /// The device path.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// The board seen by the runtime. One task owns it; nothing here blocks for long (sysfs and
/// procfs reads, one `write(2)` to the watchdog, one `statvfs(2)`).
pub trait Board: Send + fmt::Debug {
    /// "linux" or "host", for logs and `$SYS`.
    fn kind(&self) -> &'static str;

    /// The hardware watchdog's effective timeout, when this board has one armed. The runtime
    /// must call [`Board::keepalive`] well within it.
    fn watchdog_timeout(&self) -> Option<Duration>;

    /// Tells the hardware watchdog the runtime is healthy. Call it only after checking that.
    fn keepalive(&mut self) -> Result<(), BoardError>;

    /// Shows the gateway's state on the status LEDs (a no-op where there are none).
    fn indicate(&mut self, indication: Indication);

    /// Who this board is: serial, model, MAC, hostname.
    fn identity(&self) -> Identity;

    /// How this board is doing: temperature, load, memory, free space, uptime.
    fn health(&self) -> Health;

    /// A clean exit: disarms the hardware watchdog with the magic close and turns the LEDs
    /// off. Not calling it (a crash) leaves the watchdog armed, which is the point.
    fn close(&mut self) -> Result<(), BoardError>;

    /// What is degraded on this board, one sentence each (a watchdog that could not be
    /// opened, ...): shown to the technician, never a reason to stop.
    fn alarms(&self) -> Vec<String> {
        Vec::new()
    }

    /// Why the board last reset, as its watchdog driver recorded it ("watchdog reset",
    /// "power-on or reboot", ...) with the count of resets in a row; `None` when unknown.
    fn reset_reason(&self) -> Option<String> {
        None
    }

    /// Whether the factory-reset button is pressed now; `None` when the board has none. The
    /// runtime reads it about once a second and decides what a long press does.
    fn reset_button_pressed(&mut self) -> Option<bool> {
        None
    }
}

#[cfg(test)]
pub(crate) mod fake;
