//! A real Linux board: kernel watchdog device, sysfs LEDs, identity and health from procfs
//! and sysfs.
//!
//! Owns the open watchdog and the LEDs for the life of the gateway. Opening it arms the
//! watchdog; [`Board::close`] disarms it (magic close) and darkens the LEDs.
#![forbid(unsafe_code)]

use crate::button::{ResetButton, ResetButtonConfig};
use crate::health::{read_health, Health};
use crate::identity::{read_identity, Identity};
use crate::leds::{LedNames, LedSet};
use crate::resets::{self, ResetHistory};
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
    /// After this many boots in a row that ended in a reset while the gateway ran, the
    /// watchdog is left disarmed (an alarm says so) instead of resetting the board again;
    /// 0 never stops arming it.
    pub watchdog_max_resets: u32,
    /// LEDs that show the gateway's state.
    pub leds: LedNames,
    /// The interface whose MAC identifies the board; `None` picks the first with a
    /// permanent address.
    pub mac_interface: Option<String>,
    /// The data directory whose free space health reports.
    pub data_dir: PathBuf,
    /// The factory-reset button, if the board has one wired.
    pub reset_button: Option<ResetButtonConfig>,
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
    /// The interface whose MAC identifies the board, if configured.
    mac_interface: Option<String>,
    /// What is degraded (see [`Board::alarms`]).
    alarms: Vec<String>,
    /// The resets in a row and the armed marker, when a watchdog is configured.
    history: Option<ResetHistory>,
    /// Why the board last reset (driver boot status), for `$SYS` and the start-up log.
    reset_reason: Option<String>,
    /// The factory-reset button, if configured.
    reset_button: Option<ResetButton>,
}

impl LinuxBoard {
    /// Opens the watchdog (arming it) and finds the LEDs. A watchdog that cannot be opened
    /// (absent, busy because systemd's `RuntimeWatchdogSec` holds it, no permission) is an
    /// error only with `watchdog_required`; otherwise it is logged and raised as an alarm and
    /// the gateway runs on (systemd's watchdog still restarts a hung service): a board must
    /// never boot-loop over its watchdog. A missing LED is only logged.
    pub fn open(config: LinuxBoardConfig) -> Result<LinuxBoard, BoardError> {
        let mut alarms = Vec::new();
        let mut history = None;
        let mut reset_reason = None;
        let watchdog = match &config.watchdog_device {
            Some(path) => match Watchdog::open(path, config.watchdog_timeout) {
                Ok(mut w) => {
                    let status = w.boot_status();
                    let boot = resets::boot_id(&config.roots.proc);
                    let mut h = ResetHistory::load(
                        &config.data_dir,
                        &boot,
                        status.map(|s| s.watchdog_reset()),
                    );
                    reset_reason = Some(match status {
                        Some(s) => {
                            format!("{} ({} reset(s) in a row)", s.describe(), h.consecutive)
                        }
                        None => format!(
                            "unknown to the driver ({} unclean end(s) in a row)",
                            h.consecutive
                        ),
                    });
                    let max = config.watchdog_max_resets;
                    if max > 0 && h.consecutive >= max {
                        let _ = w.close();
                        h.record(false);
                        let alarm = format!(
                            "the board reset {} times in a row while the gateway ran; the hardware watchdog is left disarmed this boot (board.watchdog_max_resets = {max}) so it cannot reset forever; systemd's watchdog still restarts a hung service",
                            h.consecutive
                        );
                        tracing::error!("{alarm}");
                        alarms.push(alarm);
                        history = Some(h);
                        None
                    } else {
                        h.record(true);
                        history = Some(h);
                        Some(w)
                    }
                }
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
            mac_interface: config.mac_interface,
            alarms,
            history,
            reset_reason,
            reset_button: config.reset_button.map(ResetButton::new),
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
        read_identity(self.kind(), &self.roots, self.mac_interface.as_deref())
    }

    fn health(&self) -> Health {
        read_health(&self.roots, &self.data_dir)
    }

    fn close(&mut self) -> Result<(), BoardError> {
        self.leds.off();
        let closed = match self.watchdog.as_mut() {
            Some(w) => w.close(),
            None => Ok(()),
        };
        if closed.is_ok() {
            if let Some(h) = self.history.as_mut() {
                h.clean_close();
            }
        }
        closed
    }

    fn alarms(&self) -> Vec<String> {
        self.alarms.clone()
    }

    fn reset_reason(&self) -> Option<String> {
        self.reset_reason.clone()
    }

    fn reset_button_pressed(&mut self) -> Option<bool> {
        self.reset_button.as_mut().map(ResetButton::pressed)
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
            watchdog_max_resets: 3,
            leds: LedNames {
                status: Some("act".into()),
                uplink: None,
                fault: Some("pwr".into()),
            },
            mac_interface: None,
            data_dir: tree.path().to_owned(),
            reset_button: None,
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
    fn a_board_stuck_in_a_reset_loop_stops_arming_its_watchdog_until_a_clean_close() {
        let tree = FakeTree::new();
        let dev = tree.watchdog();
        // Three boots in a row whose run left the watchdog armed (a stand-in device keeps no
        // boot status): the third open leaves it disarmed, with an alarm.
        for boot in 1..=4 {
            tree.boot_id(&format!("boot-{boot}"));
            let board = LinuxBoard::open(config(&tree, Some(dev.clone()))).unwrap();
            let armed = board.watchdog_timeout().is_some();
            assert_eq!(armed, boot < 4, "boot {boot}: {:?}", board.alarms());
            if boot == 4 {
                assert!(
                    board.alarms()[0].contains("3 times in a row"),
                    "{:?}",
                    board.alarms()
                );
                assert!(board
                    .reset_reason()
                    .unwrap_or_default()
                    .contains("3 unclean"));
            }
            // No close: each run ends like a reset.
        }
        // The disarmed boot recorded "not armed": the next boot arms again, and a clean close
        // ends the series.
        tree.boot_id("boot-5");
        let mut board = LinuxBoard::open(config(&tree, Some(dev.clone()))).unwrap();
        assert!(board.watchdog_timeout().is_some());
        board.close().unwrap();
        tree.boot_id("boot-6");
        let board = LinuxBoard::open(config(&tree, Some(dev))).unwrap();
        assert!(board
            .reset_reason()
            .unwrap_or_default()
            .contains("0 unclean"));
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
