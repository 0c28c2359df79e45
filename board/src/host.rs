//! The development-machine board: no watchdog device, no LEDs, real identity and health.
//!
//! Owns nothing but the roots and the data directory. Feeding its watchdog does nothing and
//! its LEDs are log lines at debug level, so the runtime drives every board the same way.
#![forbid(unsafe_code)]

use crate::health::{read_health, Health};
use crate::identity::{read_identity, Identity};
use crate::{Board, BoardError, Indication, Roots};
use std::path::PathBuf;
use std::time::Duration;

/// A board without hardware to drive.
#[derive(Debug)]
pub struct HostBoard {
    /// Where /sys and /proc are.
    roots: Roots,
    /// The data directory whose free space health reports.
    data_dir: PathBuf,
    /// The interface whose MAC identifies the board, if configured.
    mac_interface: Option<String>,
}

impl HostBoard {
    /// A host board reading `roots`, reporting the space of `data_dir`, identified by the MAC
    /// of `mac_interface` (or the first with a permanent address).
    pub fn new(roots: Roots, data_dir: PathBuf, mac_interface: Option<String>) -> HostBoard {
        HostBoard {
            roots,
            data_dir,
            mac_interface,
        }
    }
}

impl Board for HostBoard {
    fn kind(&self) -> &'static str {
        "host"
    }

    fn watchdog_timeout(&self) -> Option<Duration> {
        None
    }

    fn keepalive(&mut self) -> Result<(), BoardError> {
        Ok(())
    }

    fn indicate(&mut self, indication: Indication) {
        tracing::debug!(
            indication = indication.as_str(),
            "status (host board: no LEDs)"
        );
    }

    fn identity(&self) -> Identity {
        read_identity(self.kind(), &self.roots, self.mac_interface.as_deref())
    }

    fn health(&self) -> Health {
        read_health(&self.roots, &self.data_dir)
    }

    fn close(&mut self) -> Result<(), BoardError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeTree;

    #[test]
    fn a_host_board_has_no_watchdog_but_reads_identity_and_health() {
        let tree = FakeTree::new();
        tree.net("enp3s0", "3c:7c:3f:00:00:01", true);
        tree.write_proc("uptime", "5.00 9.00\n");
        let mut board = HostBoard::new(tree.roots(), tree.path().to_owned(), None);
        assert_eq!(board.kind(), "host");
        assert_eq!(board.watchdog_timeout(), None);
        board.keepalive().unwrap();
        board.indicate(Indication::Fault);
        assert_eq!(board.identity().board, "host");
        assert_eq!(board.identity().mac.as_deref(), Some("3c:7c:3f:00:00:01"));
        assert_eq!(board.health().uptime_seconds, Some(5.0));
        board.close().unwrap();
    }
}
