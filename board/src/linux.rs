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
    /// A watchdog that cannot be opened stops the start (true) or only raises an alarm and
    /// leaves supervision to systemd's watchdog (false).
    pub watchdog_required: bool,
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
    /// What is degraded (see [`Board::alarms`]).
    alarms: Vec<String>,
}

impl LinuxBoard {
    /// Opens the watchdog (arming it) and finds the LEDs. A watchdog that cannot be opened
    /// (absent, busy because systemd's `RuntimeWatchdogSec` holds it, no permission) is an
    /// error only with `watchdog_required`; otherwise it is logged and raised as an alarm and
    /// the gateway runs on (systemd's watchdog still restarts a hung service): a board must
    /// never boot-loop over its watchdog. A missing LED is only logged.
    pub fn open(config: LinuxBoardConfig) -> Result<LinuxBoard, BoardError> {
        let mut alarms = Vec::new();
        let watchdog = match &config.watchdog_device {
            Some(path) => match Watchdog::open(path, config.watchdog_timeout) {
                Ok(w) => Some(w),
                Err(e) if config.watchdog_required => return Err(e),
                Err(e) => {
                    let alarm = format!(
                        "no hardware watchdog: {e}; running without it (set board.watchdog_required = true to refuse to start instead)"
                    );
                    tracing::error!("{alarm}");
                    alarms.push(alarm);
                    None
                }
            },
            None => None,
        };
        let leds = LedSet::open(&config.roots.sys, &config.leds);
        Ok(LinuxBoard {
            roots: config.roots,
            watchdog,
            leds,
            data_dir: config.data_dir,
            alarms,
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

    fn alarms(&self) -> Vec<String> {
        self.alarms.clone()
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
            watchdog_required: false,
            leds: LedNames {
                status: Some("act".into()),
                uplink: None,
                fault: Some("pwr".into()),
            },
            data_dir: tree.path().to_owned(),
        }
    }

    #[test]
    fn a_watchdog_that_cannot_be_opened_is_an_alarm_unless_it_is_required() {
        let tree = FakeTree::new();
        let missing = tree.path().join("no-such-watchdog");
        let board = LinuxBoard::open(config(&tree, Some(missing.clone()))).expect("degraded");
        assert_eq!(board.watchdog_timeout(), None);
        let alarms = board.alarms();
        assert_eq!(alarms.len(), 1);
        assert!(alarms[0].contains("no hardware watchdog"), "{alarms:?}");
        let mut required = config(&tree, Some(missing));
        required.watchdog_required = true;
        assert!(LinuxBoard::open(required).is_err());
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
    fn a_missing_required_watchdog_device_fails_the_open() {
        let tree = FakeTree::new();
        let mut cfg = config(&tree, Some(tree.path().join("nope")));
        cfg.watchdog_required = true;
        let err = LinuxBoard::open(cfg).unwrap_err();
        assert!(matches!(err, BoardError::WatchdogOpen { .. }));
    }
}
