//! The probation of a config applied from the web UI ("commit confirmed"): the applied file
//! must come up and be confirmed by the technician within its window, or it is rolled back.
//!
//! Owns the marker `{data_dir}/config-apply.pending` (JSON, replaced whole): which kept
//! version the apply replaced, the SHA-256 of the applied text, how many times the gateway
//! started on it, when the window closes, and, after a roll back, why (for the next start's
//! alarm). The file on disk is the truth: the marker only ever speaks for the file while the
//! file still has the applied text (a hand edit meanwhile makes the marker void).
//!
//! The life of an apply:
//! 1. apply: version kept, marker written (`starts` 0), file replaced, the process execs;
//! 2. the next start, before loading the config ([`judge`]): `starts` 0 -> 1 and the config
//!    is on probation; `starts` already 1 (it started once and the gateway started again
//!    without a confirm: a crash, a power cut, a manual restart) -> rolled back now;
//! 3. a config on probation that does not load or start is rolled back at once ([`roll_back`]);
//! 4. one that starts waits for [`confirm`] (`POST /api/v1/config/confirm`); at the deadline
//!    without one it is rolled back and the gateway restarts (`app` runs the timer).
//!
//! Never deletes a kept version, and only writes the config file to put a kept version back.

use super::digest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The marker under the data directory.
const MARKER: &str = "config-apply.pending";

/// The marker's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    /// The kept version the apply replaced (the way back).
    pub previous: String,
    /// SHA-256 of the applied text.
    pub applied: String,
    /// Starts on the applied text so far.
    pub starts: u32,
    /// Seconds the technician has, from the first start on the applied text, to confirm it.
    pub confirm_within: u64,
    /// When the window closes (Unix seconds), set at the first start.
    #[serde(default)]
    pub confirm_by: Option<u64>,
    /// Set after a roll back: why, for the next start's alarm.
    #[serde(default)]
    pub rolled_back: Option<String>,
}

/// What the start found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// No apply waits to be judged.
    Nothing,
    /// The applied config starts now, on probation until `confirm_by` (Unix seconds).
    Probation {
        /// The version it replaced.
        previous: String,
        /// When it is rolled back without a confirm, by the wall clock (shown to people).
        confirm_by: u64,
        /// The window itself, from now: the deadline is kept on the monotonic clock, so a
        /// board that sets its clock after boot does not roll back early.
        window: Duration,
    },
    /// An apply was rolled back (before this start or by it); the text says why. Raise it as
    /// an alarm.
    RolledBack(String),
}

/// A config on probation, as the web UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Probation {
    /// The version the applied config replaced (where a roll back goes).
    pub previous: String,
    /// When it is rolled back without a confirm (Unix seconds).
    pub confirm_by: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER)
}

pub(super) fn read(data_dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(marker_path(data_dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("the config apply marker cannot be read ({e}); ignored");
            remove(data_dir);
            None
        }
    }
}

pub(super) fn write(data_dir: &Path, marker: &Marker) -> std::io::Result<()> {
    let text = serde_json::to_vec(marker).map_err(std::io::Error::other)?;
    crate::file_replace::replace_with_mode(&marker_path(data_dir), &text, 0o600)
}

pub(super) fn remove(data_dir: &Path) {
    let path = marker_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => crate::file_replace::sync_dir(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(marker = %path.display(), "cannot remove the config apply marker: {e}")
        }
    }
}

/// Judges the last apply before `file` is loaded (see the module documentation): counts this
/// start, or rolls the file back when the applied config started before and was never
/// confirmed.
pub fn judge(file: &Path, data_dir: &Path) -> Judged {
    let Some(mut marker) = read(data_dir) else {
        return Judged::Nothing;
    };
    if let Some(why) = marker.rolled_back.take() {
        remove(data_dir);
        return Judged::RolledBack(why);
    }
    let current = std::fs::read_to_string(file).map(|t| digest(&t));
    if current.as_deref().ok() != Some(marker.applied.as_str()) {
        // Changed by hand (or the apply never got to replace it): not ours to judge.
        tracing::info!("the config file changed since the web UI applied it; its probation ends");
        remove(data_dir);
        return Judged::Nothing;
    }
    if marker.starts >= 1 {
        let why = format!(
            "the config applied from the web UI was not confirmed before the gateway started again; rolled back to version {}",
            marker.previous
        );
        return match put_back(file, data_dir, &marker.previous) {
            Ok(()) => {
                remove(data_dir);
                tracing::error!("{why}");
                Judged::RolledBack(why)
            }
            Err(e) => {
                remove(data_dir);
                let why = format!("{why} failed: {e}");
                tracing::error!("{why}");
                Judged::RolledBack(why)
            }
        };
    }
    marker.starts += 1;
    let confirm_by = now_secs() + marker.confirm_within;
    marker.confirm_by = Some(confirm_by);
    if let Err(e) = write(data_dir, &marker) {
        tracing::error!(
            "cannot count this start in the config apply marker ({e}); the applied config is kept"
        );
        remove(data_dir);
        return Judged::Nothing;
    }
    Judged::Probation {
        previous: marker.previous,
        confirm_by,
        window: Duration::from_secs(marker.confirm_within),
    }
}

/// Puts `file` back to the version an apply replaced because `why` (the applied config did
/// not load or start, or was not confirmed in time). Returns the alarm text, and leaves it for
/// the next start's alarm when `tell_next_start` (the gateway restarts on the old file);
/// `None` when no apply is on probation.
pub fn roll_back(file: &Path, data_dir: &Path, why: &str, tell_next_start: bool) -> Option<String> {
    let marker = read(data_dir).filter(|m| m.rolled_back.is_none())?;
    let alarm = match put_back(file, data_dir, &marker.previous) {
        Ok(()) => format!(
            "the config applied from the web UI {why}; rolled back to version {}",
            marker.previous
        ),
        Err(e) => format!(
            "the config applied from the web UI {why}; rolling back to version {} failed: {e}",
            marker.previous
        ),
    };
    tracing::error!("{alarm}");
    let done = Marker {
        rolled_back: Some(alarm.clone()),
        ..marker
    };
    if !tell_next_start || write(data_dir, &done).is_err() {
        remove(data_dir);
    }
    Some(alarm)
}

/// Ends the probation: the applied config is kept, and becomes the last known good one.
/// False when nothing is on probation.
pub fn confirm(file: &Path, data_dir: &Path) -> bool {
    let Some(marker) = read(data_dir) else {
        return false;
    };
    if marker.rolled_back.is_some() || marker.starts == 0 {
        return false;
    }
    remove(data_dir);
    if let Err(e) = crate::last_good::save(data_dir, file) {
        tracing::warn!("cannot keep the confirmed config as the last known good one: {e}");
    }
    tracing::info!("the applied config is confirmed");
    true
}

/// The probation now, if any.
pub fn current(data_dir: &Path) -> Option<Probation> {
    let m = read(data_dir)?;
    if m.rolled_back.is_some() {
        return None;
    }
    Some(Probation {
        previous: m.previous,
        confirm_by: m.confirm_by?,
    })
}

/// True while an apply waits for its confirm.
pub fn pending(data_dir: &Path) -> bool {
    read(data_dir).is_some_and(|m| m.rolled_back.is_none())
}

fn put_back(file: &Path, data_dir: &Path, version: &str) -> std::io::Result<()> {
    let text = super::kept_version(data_dir, version).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("config version {version} is gone"),
        )
    })?;
    let mode = std::fs::metadata(file).map_or(0o600, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions())
    });
    crate::file_replace::replace_with_mode(file, text.as_bytes(), mode)
}
