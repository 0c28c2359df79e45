//! Status LEDs through the kernel LED class (`/sys/class/leds/NAME/{brightness,trigger,...}`,
//! Documentation/leds/leds-class.rst).
//!
//! Owns the mapping from the gateway's state ([`Indication`]) to up to three LEDs named in the
//! config (`status`, `uplink`, `fault`). Blinking uses the kernel's `timer` trigger, so an LED
//! keeps blinking with no help from us; where that trigger is missing the LED is lit steadily
//! instead. It never creates files under sysfs (it opens them for writing only) and never fails
//! the gateway: an LED that cannot be set is logged once.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What the gateway wants the LEDs to say.
///
/// | indication   | status LED       | uplink LED       | fault LED |
/// |--------------|------------------|------------------|-----------|
/// | `Booting`    | blink 250/250 ms | off              | off       |
/// | `Running`    | on               | on               | off       |
/// | `UplinkDown` | on               | blink 500/500 ms | off       |
/// | `Fault`      | off              | off              | on        |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indication {
    /// Starting up: listeners not bound yet.
    Booting,
    /// Serving, uplink (if any) connected.
    Running,
    /// Serving, but the cloud uplink is down (messages are being stored for later).
    UplinkDown,
    /// The runtime failed its self-check; the watchdog is no longer being fed.
    Fault,
}

impl Indication {
    /// The word used in logs and `$SYS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Indication::Booting => "booting",
            Indication::Running => "running",
            Indication::UplinkDown => "uplink_down",
            Indication::Fault => "fault",
        }
    }

    fn states(self) -> [LedState; 3] {
        use LedState::{Blink, Off, On};
        match self {
            Indication::Booting => [Blink(250, 250), Off, Off],
            Indication::Running => [On, On, Off],
            Indication::UplinkDown => [On, Blink(500, 500), Off],
            Indication::Fault => [Off, Off, On],
        }
    }
}

/// One LED's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedState {
    /// Dark.
    Off,
    /// Lit at full brightness.
    On,
    /// Blinking by the kernel's timer trigger: milliseconds on, milliseconds off.
    Blink(u32, u32),
}

/// Names of the LEDs under `/sys/class/leds` that show the gateway's state; each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedNames {
    /// Shows booting (blinking) and running (on).
    pub status: Option<String>,
    /// Shows whether the cloud uplink is up (on) or down (blinking).
    pub uplink: Option<String>,
    /// Lit on a fault (the runtime failed its self-check).
    pub fault: Option<String>,
}

/// One LED of the kernel's LED class.
#[derive(Debug)]
pub struct Led {
    /// Its directory, `/sys/class/leds/NAME`.
    dir: PathBuf,
    /// `max_brightness`, what "on" writes (1 when unreadable).
    max: u32,
    /// Whether the `timer` trigger is listed in `trigger`; without it blinking becomes on.
    has_timer: bool,
    /// The last state set, so repeated indications do not rewrite sysfs.
    current: Option<LedState>,
}

impl Led {
    /// Finds LED `name` under `sys_root/class/leds`.
    pub fn open(sys_root: &Path, name: &str) -> io::Result<Led> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not an LED name"),
            ));
        }
        let dir = sys_root.join("class/leds").join(name);
        if !dir.join("brightness").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no LED {name:?} ({} has no brightness file)", dir.display()),
            ));
        }
        let max = std::fs::read_to_string(dir.join("max_brightness"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|m| *m > 0)
            .unwrap_or(1);
        // `trigger` lists every trigger, the current one in brackets: "none [timer] heartbeat".
        let has_timer = std::fs::read_to_string(dir.join("trigger"))
            .map(|s| {
                s.split_whitespace()
                    .any(|t| t.trim_matches(|c| c == '[' || c == ']') == "timer")
            })
            .unwrap_or(false);
        Ok(Led {
            dir,
            max,
            has_timer,
            current: None,
        })
    }

    /// Sets the LED; does nothing when it is already in `state`.
    pub fn set(&mut self, state: LedState) -> io::Result<()> {
        if self.current == Some(state) {
            return Ok(());
        }
        match state {
            LedState::Off => {
                self.write_trigger("none")?;
                self.write("brightness", "0")?;
            }
            LedState::On => {
                self.write_trigger("none")?;
                self.write("brightness", &self.max.to_string())?;
            }
            LedState::Blink(on, off) if self.has_timer => {
                // Selecting the timer trigger makes the kernel create delay_on/delay_off, owned
                // by root whatever udev did for brightness and trigger: without access to them
                // the LED still blinks, at the kernel's default rate.
                self.write("trigger", "timer")?;
                for (attr, ms) in [("delay_on", on), ("delay_off", off)] {
                    if let Err(e) = self.write(attr, &ms.to_string()) {
                        tracing::debug!(error = %e, "LED blinks at the default rate");
                    }
                }
            }
            LedState::Blink(..) => {
                self.write_trigger("none")?;
                self.write("brightness", &self.max.to_string())?;
            }
        }
        self.current = Some(state);
        Ok(())
    }

    fn write_trigger(&self, trigger: &str) -> io::Result<()> {
        // Boards without trigger support (rare) have no writable trigger; brightness still works.
        match self.write("trigger", trigger) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn write(&self, attr: &str, value: &str) -> io::Result<()> {
        // Never create: sysfs attributes exist or the driver lacks them. Truncating is what a
        // shell's `echo 1 > brightness` does too; sysfs ignores it, a fake tree needs it.
        let path = self.dir.join(attr);
        let mut f = OpenOptions::new().write(true).truncate(true).open(&path)?;
        f.write_all(value.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

/// The status, uplink and fault LEDs that exist on this board.
#[derive(Debug, Default)]
pub struct LedSet {
    /// Indexed like [`Indication::states`]: status, uplink, fault.
    leds: [Option<Led>; 3],
    /// Names, for log lines.
    names: [Option<String>; 3],
}

impl LedSet {
    /// Opens the named LEDs; a missing one is logged and left out.
    pub fn open(sys_root: &Path, names: &LedNames) -> LedSet {
        let mut set = LedSet::default();
        let wanted = [&names.status, &names.uplink, &names.fault];
        for (i, (role, name)) in ["status", "uplink", "fault"]
            .into_iter()
            .zip(wanted)
            .enumerate()
        {
            let Some(name) = name else { continue };
            match Led::open(sys_root, name) {
                Ok(led) => {
                    set.leds[i] = Some(led);
                    set.names[i] = Some(name.clone());
                }
                Err(e) => {
                    tracing::warn!(role, led = %name, error = %e, "status LED not found; it stays dark")
                }
            }
        }
        set
    }

    /// Shows `indication`; LEDs that fail are logged and skipped.
    pub fn indicate(&mut self, indication: Indication) {
        for (i, state) in indication.states().into_iter().enumerate() {
            if let Some(led) = self.leds[i].as_mut() {
                if let Err(e) = led.set(state) {
                    tracing::warn!(led = ?self.names[i], error = %e, "cannot set status LED");
                }
            }
        }
    }

    /// Turns every LED off (on a clean exit).
    pub fn off(&mut self) {
        for (i, led) in self.leds.iter_mut().enumerate() {
            if let Some(led) = led {
                if let Err(e) = led.set(LedState::Off) {
                    tracing::warn!(led = ?self.names[i], error = %e, "cannot turn status LED off");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeTree;

    #[test]
    fn booting_blinks_the_status_led_with_the_timer_trigger() {
        let tree = FakeTree::new();
        tree.led("green:status", 255, true);
        let mut leds = LedSet::open(
            &tree.sys(),
            &LedNames {
                status: Some("green:status".into()),
                ..LedNames::default()
            },
        );
        leds.indicate(Indication::Booting);
        assert_eq!(tree.led_attr("green:status", "trigger"), "timer");
        assert_eq!(tree.led_attr("green:status", "delay_on"), "250");
        assert_eq!(tree.led_attr("green:status", "delay_off"), "250");
        leds.indicate(Indication::Running);
        assert_eq!(tree.led_attr("green:status", "trigger"), "none");
        assert_eq!(tree.led_attr("green:status", "brightness"), "255");
    }

    #[test]
    fn each_indication_sets_status_uplink_and_fault_leds() {
        let tree = FakeTree::new();
        for name in ["status", "uplink", "fault"] {
            tree.led(name, 1, true);
        }
        let mut leds = LedSet::open(
            &tree.sys(),
            &LedNames {
                status: Some("status".into()),
                uplink: Some("uplink".into()),
                fault: Some("fault".into()),
            },
        );
        leds.indicate(Indication::UplinkDown);
        assert_eq!(tree.led_attr("status", "brightness"), "1");
        assert_eq!(tree.led_attr("uplink", "trigger"), "timer");
        assert_eq!(tree.led_attr("uplink", "delay_on"), "500");
        assert_eq!(tree.led_attr("fault", "brightness"), "0");
        leds.indicate(Indication::Fault);
        assert_eq!(tree.led_attr("status", "brightness"), "0");
        assert_eq!(tree.led_attr("uplink", "trigger"), "none");
        assert_eq!(tree.led_attr("uplink", "brightness"), "0");
        assert_eq!(tree.led_attr("fault", "brightness"), "1");
        leds.off();
        assert_eq!(tree.led_attr("fault", "brightness"), "0");
    }

    #[test]
    fn without_the_timer_trigger_blinking_becomes_steady_on() {
        let tree = FakeTree::new();
        tree.led("led0", 1, false);
        let mut led = Led::open(&tree.sys(), "led0").unwrap();
        led.set(LedState::Blink(100, 100)).unwrap();
        assert_eq!(tree.led_attr("led0", "brightness"), "1");
        assert_eq!(tree.led_attr("led0", "trigger"), "none");
    }

    #[test]
    fn a_missing_led_is_left_out_and_the_others_still_work() {
        let tree = FakeTree::new();
        tree.led("fault", 1, true);
        let mut leds = LedSet::open(
            &tree.sys(),
            &LedNames {
                status: Some("nope".into()),
                uplink: Some("../../etc".into()),
                fault: Some("fault".into()),
            },
        );
        leds.indicate(Indication::Fault);
        assert_eq!(tree.led_attr("fault", "brightness"), "1");
        assert!(Led::open(&tree.sys(), "nope").is_err());
        assert!(Led::open(&tree.sys(), "..").is_err());
    }
}
