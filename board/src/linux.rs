//! A real Linux board: kernel watchdog device, sysfs LEDs, identity and health from procfs
//! and sysfs.
//!
//! Owns the open watchdog and the LEDs for the life of the gateway. Opening it arms the
//! watchdog; [`Board::close`] disarms it (magic close) and darkens the LEDs.
#![forbid(unsafe_code)]

use crate::health::{read_health, Health};
use crate::identity::{read_identity, Identity};
use crate::leds::{LedNames, LedSet};
use crate::watchdog::Watchdog;
use crate::{Board, BoardError, Indication, Roots};
use std::path::PathBuf;
use std::time::Duration;

/// What a [`LinuxBoard`] needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoardConfig {
    /// Where /sys and /proc are.
    pub roots: Roots,
    /// The watchdog device (usually `/dev/watchdog`); `None` runs without one.
    pub watchdog_device: Option<PathBuf>,
    /// Timeout asked of the watchdog driver (whole seconds; the driver may cap it).
    pub watchdog_timeout: Duration,
    /// LEDs that show the gateway's state.
    pub leds: LedNames,
    /// The data directory whose free space health reports.
    pub data_dir: PathBuf,
}

/// A Linux board with its watchdog armed (when configured) and its LEDs found.
#[derive(Debug)]
pub struct LinuxBoard {
    /// Where /sys and /proc are.
    roots: Roots,
    /// The armed watchdog, if one is configured.
    watchdog: Option<Watchdog>,
    /// The LEDs that exist.
    leds: LedSet,
    /// For health's free space.
    data_dir: PathBuf,
}

impl LinuxBoard {
    /// Opens the watchdog (arming it) and finds the LEDs. A watchdog that cannot be opened is
    /// an error (the integrator asked for one); a missing LED is only logged.
    pub fn open(config: LinuxBoardConfig) -> Result<LinuxBoard, BoardError> {
        let watchdog = match &config.watchdog_device {
            Some(path) => Some(Watchdog::open(path, config.watchdog_timeout)?),
            None => None,
        };
        let leds = LedSet::open(&config.roots.sys, &config.leds);
        Ok(LinuxBoard {
            roots: config.roots,
            watchdog,
            leds,
            data_dir: config.data_dir,
        })
    }
}

impl Board for LinuxBoard {
    fn kind(&self) -> &'static str {
        "linux"
    }

    fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog.as_ref().map(Watchdog::timeout)
    }

    fn keepalive(&mut self) -> Result<(), BoardError> {
        match self.watchdog.as_mut() {
            Some(w) => w.keepalive(),
            None => Ok(()),
        }
    }

    fn indicate(&mut self, indication: Indication) {
        self.leds.indicate(indication);
    }

    fn identity(&self) -> Identity {
        read_identity(self.kind(), &self.roots)
    }

    fn health(&self) -> Health {
        read_health(&self.roots, &self.data_dir)
    }

    fn close(&mut self) -> Result<(), BoardError> {
        self.leds.off();
        match self.watchdog.as_mut() {
            Some(w) => w.close(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeTree;

    fn config(tree: &FakeTree, watchdog: Option<PathBuf>) -> LinuxBoardConfig {
        LinuxBoardConfig {
            roots: tree.roots(),
            watchdog_device: watchdog,
            watchdog_timeout: Duration::from_secs(15),
            leds: LedNames {
                status: Some("act".into()),
                uplink: None,
                fault: Some("pwr".into()),
            },
            data_dir: tree.path().to_owned(),
        }
    }

    #[test]
    fn a_board_feeds_its_watchdog_drives_its_leds_and_closes_cleanly() {
        let tree = FakeTree::new();
        tree.led("act", 1, true);
        tree.led("pwr", 1, false);
        tree.net("eth0", "dc:a6:32:01:02:03", true);
        let dev = tree.watchdog();
        let mut board = LinuxBoard::open(config(&tree, Some(dev.clone()))).unwrap();
        assert_eq!(board.kind(), "linux");
        assert_eq!(board.watchdog_timeout(), Some(Duration::from_secs(15)));
        board.indicate(Indication::Booting);
        assert_eq!(tree.led_attr("act", "trigger"), "timer");
        board.indicate(Indication::Running);
        board.keepalive().unwrap();
        board.keepalive().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap().len(), 2);
        assert_eq!(board.identity().mac.as_deref(), Some("dc:a6:32:01:02:03"));
        assert!(board.health().data_dir_total_bytes.is_some());
        board.close().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"\0\0V");
        assert_eq!(tree.led_attr("act", "brightness"), "0");
    }

    #[test]
    fn a_board_without_a_watchdog_device_has_no_timeout() {
        let tree = FakeTree::new();
        let mut board = LinuxBoard::open(config(&tree, None)).unwrap();
        assert_eq!(board.watchdog_timeout(), None);
        board.keepalive().unwrap();
        board.close().unwrap();
    }

    #[test]
    fn a_missing_watchdog_device_fails_the_open() {
        let tree = FakeTree::new();
        let err = LinuxBoard::open(config(&tree, Some(tree.path().join("nope")))).unwrap_err();
        assert!(matches!(err, BoardError::WatchdogOpen { .. }));
    }
}
