//! The factory-reset button: a GPIO line the board reads through a value file (the kernel's
//! sysfs GPIO `.../gpioN/value`, or any file that reads `0` or `1`), and the rule for how long
//! it must be held.
//!
//! Owns reading the line ([`ResetButton::pressed`]) and the hold rule ([`HoldTimer`], sans-IO:
//! it is given the time). Never acts on a press itself: the gateway decides what a held button
//! does (stop, wipe the data directory, exit for systemd to restart it). A line that cannot be
//! read is logged once and counts as not pressed, so a missing or flaky GPIO never resets
//! anything.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the button is and which level means pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetButtonConfig {
    /// The value file (`/sys/class/gpio/gpio17/value`).
    pub path: PathBuf,
    /// Pressed reads `0` (a button to ground with a pull-up) instead of `1`.
    pub active_low: bool,
}

/// The button as the board reads it.
#[derive(Debug)]
pub struct ResetButton {
    config: ResetButtonConfig,
    /// The last read failed (logged once until a read succeeds again).
    failing: bool,
}

impl ResetButton {
    /// A button read from `config.path`; nothing is read until [`ResetButton::pressed`].
    pub fn new(config: ResetButtonConfig) -> ResetButton {
        ResetButton {
            config,
            failing: false,
        }
    }

    /// Whether the button is pressed now. An unreadable line or an odd value is logged (once
    /// until it reads again) and counts as released.
    pub fn pressed(&mut self) -> bool {
        let read = std::fs::read_to_string(&self.config.path)
            .map_err(|e| e.to_string())
            .and_then(|text| level(&text));
        match read {
            Ok(high) => {
                if self.failing {
                    tracing::info!(line = %self.config.path.display(), "factory-reset button readable again");
                    self.failing = false;
                }
                high != self.config.active_low
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(line = %self.config.path.display(), "cannot read the factory-reset button ({e}); taken as not pressed");
                    self.failing = true;
                }
                false
            }
        }
    }
}

/// The level a value file reports: `1` high, `0` low.
fn level(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(format!("it reads {other:?}, not 0 or 1")),
    }
}

/// What one reading of the button means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    /// Nothing changed.
    Idle,
    /// Pressed now (it was not).
    Pressed,
    /// Let go before it was held long enough.
    Released,
    /// Held for the whole hold time: reported once per press.
    Held,
}

/// The hold rule: a press counts once the button has been read pressed continuously for
/// `hold`; a release in between starts over.
#[derive(Debug)]
pub struct HoldTimer {
    hold: Duration,
    since: Option<Instant>,
    fired: bool,
}

impl HoldTimer {
    /// A timer for presses of at least `hold`.
    pub fn new(hold: Duration) -> HoldTimer {
        HoldTimer {
            hold,
            since: None,
            fired: false,
        }
    }

    /// Takes one reading at `now`.
    pub fn observe(&mut self, pressed: bool, now: Instant) -> ButtonEvent {
        match (pressed, self.since) {
            (true, None) => {
                self.since = Some(now);
                self.fired = false;
                if self.hold.is_zero() {
                    self.fired = true;
                    return ButtonEvent::Held;
                }
                ButtonEvent::Pressed
            }
            (true, Some(since)) if !self.fired && now.duration_since(since) >= self.hold => {
                self.fired = true;
                ButtonEvent::Held
            }
            (true, Some(_)) => ButtonEvent::Idle,
            (false, Some(_)) => {
                self.since = None;
                if std::mem::take(&mut self.fired) {
                    ButtonEvent::Idle
                } else {
                    ButtonEvent::Released
                }
            }
            (false, None) => ButtonEvent::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_press_counts_only_when_held_for_the_whole_hold_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = HoldTimer::new(Duration::from_secs(10));
        assert_eq!(t.observe(false, t0), ButtonEvent::Idle);
        assert_eq!(t.observe(true, t0 + s), ButtonEvent::Pressed);
        assert_eq!(t.observe(true, t0 + 5 * s), ButtonEvent::Idle);
        // Let go at 9 s: starts over.
        assert_eq!(t.observe(false, t0 + 10 * s), ButtonEvent::Released);
        assert_eq!(t.observe(true, t0 + 11 * s), ButtonEvent::Pressed);
        assert_eq!(t.observe(true, t0 + 20 * s), ButtonEvent::Idle);
        assert_eq!(t.observe(true, t0 + 21 * s), ButtonEvent::Held);
        // Reported once per press, however long it stays down.
        assert_eq!(t.observe(true, t0 + 40 * s), ButtonEvent::Idle);
        assert_eq!(t.observe(false, t0 + 41 * s), ButtonEvent::Idle);
        assert_eq!(t.observe(true, t0 + 42 * s), ButtonEvent::Pressed);
    }

    #[test]
    fn the_line_is_read_with_its_polarity_and_an_unreadable_one_is_not_pressed() {
        let dir = std::env::temp_dir().join(format!("holdfast-button-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("value");
        let mut high = ResetButton::new(ResetButtonConfig {
            path: path.clone(),
            active_low: false,
        });
        let mut low = ResetButton::new(ResetButtonConfig {
            path: path.clone(),
            active_low: true,
        });
        assert!(!high.pressed(), "missing file");
        assert!(!low.pressed(), "missing file, even active low");
        std::fs::write(&path, "1\n").unwrap();
        assert!(high.pressed());
        assert!(!low.pressed());
        std::fs::write(&path, "0\n").unwrap();
        assert!(!high.pressed());
        assert!(low.pressed());
        std::fs::write(&path, "garbage").unwrap();
        assert!(!high.pressed());
        assert!(!low.pressed());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
