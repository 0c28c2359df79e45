//! The board's reset history: how many boots in a row ended in a reset while the gateway ran,
//! so a board caught in a reset loop (a watchdog that fires every time, a driver or kernel
//! problem at start-up) stops arming its watchdog instead of resetting forever.
//!
//! Owns one small file, `{data_dir}/board-resets`: the kernel's boot id, the count, and
//! whether the watchdog is armed right now. A new boot counts as a reset when the driver says
//! the watchdog reset the board, or (a driver that keeps no boot status) when the last run
//! left the watchdog armed, i.e. ended without the clean close; any other new boot sets the
//! count to 0, and so does a clean close. Service restarts within one boot change nothing.
//!
//! It never stops the gateway: a file it cannot read counts as no history, one it cannot
//! write is logged and the watchdog is armed as usual.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The file under the data directory.
pub const FILE: &str = "board-resets";

/// What the last run left, and this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetHistory {
    path: PathBuf,
    boot_id: String,
    /// Boots in a row that ended in a reset while the gateway ran (this one included when it
    /// started after one).
    pub consecutive: u32,
}

impl ResetHistory {
    /// Reads the history under `data_dir` and counts this boot: `watchdog_reset` is the
    /// driver's boot status (`None` when it keeps none). `boot_id` is the kernel's
    /// (`/proc/sys/kernel/random/boot_id`).
    pub fn load(data_dir: &Path, boot_id: &str, watchdog_reset: Option<bool>) -> ResetHistory {
        let path = data_dir.join(FILE);
        let stored = std::fs::read_to_string(&path).ok().and_then(|t| parse(&t));
        let consecutive = match stored {
            Some((id, n, _)) if id == boot_id => n,
            Some((_, n, armed)) => {
                if watchdog_reset.unwrap_or(armed) {
                    n.saturating_add(1)
                } else {
                    0
                }
            }
            None => u32::from(watchdog_reset.unwrap_or(false)),
        };
        ResetHistory {
            path,
            boot_id: boot_id.to_owned(),
            consecutive,
        }
    }

    /// The clean close: the series of resets ends, the watchdog is disarmed.
    pub fn clean_close(&mut self) {
        self.consecutive = 0;
        self.record(false);
    }

    /// Records whether the watchdog is armed now, keeping the count.
    pub fn record(&mut self, armed: bool) {
        let text = format!(
            "{} {} {}\n",
            self.boot_id,
            self.consecutive,
            u8::from(armed)
        );
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record the board's reset history");
        }
    }
}

fn parse(text: &str) -> Option<(String, u32, bool)> {
    let mut words = text.split_whitespace();
    let id = words.next()?.to_owned();
    let n = words.next()?.parse().ok()?;
    let armed = words.next()? == "1";
    Some((id, n, armed))
}

/// The kernel's id of this boot, or an empty one when it cannot be read (every start then
/// looks like the same boot, and nothing is counted).
pub fn boot_id(proc_root: &Path) -> String {
    std::fs::read_to_string(proc_root.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_counted_per_boot_and_a_clean_close_or_a_normal_boot_ends_the_series() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // First boot ever: nothing to count.
        let mut h = ResetHistory::load(d, "boot-1", Some(false));
        assert_eq!(h.consecutive, 0);
        h.record(true);
        // The service restarts within the same boot: no change.
        let mut h = ResetHistory::load(d, "boot-1", Some(false));
        assert_eq!(h.consecutive, 0);
        h.record(true);
        // The watchdog reset the board, twice.
        for (boot, n) in [("boot-2", 1), ("boot-3", 2)] {
            let mut h = ResetHistory::load(d, boot, Some(true));
            assert_eq!(h.consecutive, n);
            h.record(true);
        }
        // A driver without boot status: a run that left the watchdog armed counts too.
        let mut h = ResetHistory::load(d, "boot-4", None);
        assert_eq!(h.consecutive, 3);
        // A clean close ends the series.
        h.clean_close();
        let mut h = ResetHistory::load(d, "boot-5", None);
        assert_eq!(h.consecutive, 0);
        h.record(true);
        // So does a normal boot the driver vouches for, even after an unclean end.
        let h = ResetHistory::load(d, "boot-6", Some(false));
        assert_eq!(h.consecutive, 0);
    }

    #[test]
    fn a_damaged_or_missing_history_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(ResetHistory::load(dir.path(), "b", None).consecutive, 0);
        assert_eq!(
            ResetHistory::load(dir.path(), "b", Some(true)).consecutive,
            1
        );
        let unwritable = dir.path().join("no/such/dir");
        let mut h = ResetHistory::load(&unwritable, "b", None);
        h.record(true);
        assert_eq!(h.consecutive, 0);
    }
}
