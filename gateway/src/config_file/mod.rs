//! The running gateway's config file as the web UI edits it: read, check with the same checker
//! as `holdfast check`, apply (the previous text kept as a version, the file replaced whole with
//! its permissions, the gateway restarted on it in the same process), and the probation that
//! rolls an applied config back when it does not come up or is not confirmed ([`probation`]).
//!
//! Owns the config file (only through [`ConfigFile::apply`] and a roll back), the version
//! directory `{data_dir}/config-history/` (at most [`KEPT_VERSIONS`]) and the restart state.
//! Never restarts the process itself: it raises the restart request ([`RestartState`]) and the
//! caller (`holdfast run`) execs itself once the gateway has stopped cleanly.

pub mod probation;

use crate::config::{self, Config, Problem};
use serde::Serialize;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Versions kept in the history directory; the oldest go first.
pub const KEPT_VERSIONS: usize = 10;
/// Largest config text taken, in bytes (a config of a few hundred devices is ~100 KB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The history directory under the data directory.
const HISTORY_DIR: &str = "config-history";

/// Whether the gateway, when it stops, stops or starts again. A stop (SIGTERM) always wins
/// over a restart (an apply, a roll back), whichever came first.
#[derive(Debug, Clone, Default)]
pub struct RestartState(Arc<AtomicU8>);

const RUNNING: u8 = 0;
const RESTART: u8 = 1;
const STOP: u8 = 2;

impl RestartState {
    /// Asks for a restart; false when one is on its way already or the gateway stops.
    pub fn request_restart(&self) -> bool {
        self.0
            .compare_exchange(RUNNING, RESTART, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Gives a restart request back (the apply that asked failed).
    fn withdraw(&self) {
        let _ = self
            .0
            .compare_exchange(RESTART, RUNNING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The gateway is told to stop: no restart after that.
    pub fn stop(&self) {
        self.0.store(STOP, Ordering::SeqCst);
    }

    /// True when the stop under way is a restart.
    pub fn restarting(&self) -> bool {
        self.0.load(Ordering::SeqCst) == RESTART
    }

    /// True once the gateway was told to stop.
    pub fn stopping(&self) -> bool {
        self.0.load(Ordering::SeqCst) == STOP
    }
}

/// The config file a running gateway was started with, and its data directory.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: Option<PathBuf>,
    data_dir: PathBuf,
    /// `holdfast run --data-dir` set the data directory: the file's `node.data_dir` is not used.
    data_dir_forced: bool,
    state: RestartState,
}

/// A kept version of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Version {
    /// Its name: the Unix time in milliseconds when it was replaced.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The gateway runs on its built-in defaults: there is no file to write.
    #[error(
        "the gateway runs on built-in defaults (no --config file): there is no file to change"
    )]
    NoFile,
    /// The gateway may not write the file's directory.
    #[error("{0}")]
    ReadOnly(String),
    /// The text is larger than [`MAX_CONFIG_BYTES`].
    #[error("a config has at most {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    /// The checker found mistakes (nothing was written).
    #[error("the config has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// A restart is already on its way, or the gateway stops.
    #[error("the gateway restarts or stops already; wait and load the config again")]
    Busy,
    /// The file changed since the text was loaded (someone else edited it).
    #[error("the config file changed since it was loaded; load it again and redo the change")]
    Changed,
    /// The file, its version or the marker could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What could not be written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigFile {
    /// The file `path` (`None`: built-in defaults) of a gateway keeping its state in
    /// `data_dir`; `data_dir_forced` when `--data-dir` set it.
    pub fn new(path: Option<PathBuf>, data_dir: PathBuf, data_dir_forced: bool) -> Self {
        Self {
            path,
            data_dir,
            data_dir_forced,
            state: RestartState::default(),
        }
    }

    /// The file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the stop under way is a restart, and the way to stop for good.
    pub fn restart_state(&self) -> RestartState {
        self.state.clone()
    }

    /// Keeps the applied config on probation (the web UI's Confirm, `holdfast ctl config
    /// confirm`): it becomes the last known good one. False when nothing waits for a confirm.
    /// Blocking (file I/O).
    pub fn confirm(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|path| probation::confirm(path, &self.data_dir))
    }

    /// The applied config waiting for its confirm, if one does. Blocking (file I/O).
    pub fn probation(&self) -> Option<probation::Probation> {
        probation::current(&self.data_dir)
    }

    /// The file's text now (the built-in example when the gateway runs on defaults).
    pub fn read(&self) -> std::io::Result<String> {
        match &self.path {
            Some(p) => std::fs::read_to_string(p),
            None => Ok(config::example_toml().to_owned()),
        }
    }

    /// Why the file cannot be applied from here, if it cannot: no file, or a directory the
    /// gateway may not write (a read-only `/etc`, a systemd unit without `ReadWritePaths`).
    pub fn not_editable(&self) -> Option<String> {
        let Some(path) = &self.path else {
            return Some(ApplyError::NoFile.to_string());
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => None,
            Err(e) => Some(format!(
                "the gateway may not write {} ({e}): edit the file on the board, or let the service write that directory",
                dir.display()
            )),
        }
    }

    /// What `holdfast check` would say of `text` as this file (environment overrides
    /// included, as at start): the config, or every problem with its line.
    pub fn check(&self, text: &str) -> Result<Config, Vec<Problem>> {
        let origin = self
            .path
            .as_deref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        config::parse(text, &origin, std::env::vars()).map_err(|e| e.problems)
    }

    /// Checks `text`; when it is good, keeps the current file as a version, writes the
    /// probation marker, replaces the file with `text` (same permissions) and raises the
    /// restart request. The caller then stops the gateway; `holdfast run` restarts on the new
    /// file, which must then be confirmed within `confirm_within` ([`probation`]).
    ///
    /// `base` is the [`digest`] of the text the editor started from: when the file no longer
    /// has it, someone else changed it meanwhile and nothing is written. A move of the data
    /// directory is refused: the versions, the marker and the last known good config live there.
    pub fn apply(
        &self,
        text: &str,
        base: &str,
        confirm_within: Duration,
    ) -> Result<Version, ApplyError> {
        let Some(path) = &self.path else {
            return Err(ApplyError::NoFile);
        };
        if let Some(why) = self.not_editable() {
            return Err(ApplyError::ReadOnly(why));
        }
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ApplyError::TooLarge);
        }
        let new = self.check(text).map_err(ApplyError::Invalid)?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ApplyError::Io { path: p, source }
        };
        let current = std::fs::read_to_string(path).map_err(io(path))?;
        if base != digest(&current) {
            return Err(ApplyError::Changed);
        }
        if !self.data_dir_forced && new.node.data_dir != self.data_dir {
            return Err(ApplyError::Invalid(vec![Problem {
                origin: path.display().to_string(),
                line: line_of(text, "data_dir"),
                key: "node.data_dir".to_owned(),
                message: format!(
                    "cannot be changed from here (it holds the queues, the sessions and the way back to this config): stop the gateway, move {} and edit the file on the board",
                    self.data_dir.display()
                ),
            }]));
        }
        if !self.state.request_restart() {
            return Err(ApplyError::Busy);
        }
        let result = self.replace(path, &current, text, confirm_within);
        if result.is_err() {
            probation::remove(&self.data_dir);
            self.state.withdraw();
        }
        result
    }

    fn replace(
        &self,
        path: &Path,
        current: &str,
        text: &str,
        confirm_within: Duration,
    ) -> Result<Version, ApplyError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ApplyError::Io { path: p, source }
        };
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        let version = self
            .keep_version(current.as_bytes())
            .map_err(io(&self.history_dir()))?;
        // An apply during a probation rolls back, when it must, to the last confirmed config.
        let previous =
            probation::current(&self.data_dir).map_or_else(|| version.id.clone(), |p| p.previous);
        let marker = probation::Marker {
            previous,
            applied: digest(text),
            starts: 0,
            confirm_within: confirm_within.as_secs(),
            confirm_by: None,
            rolled_back: None,
        };
        probation::write(&self.data_dir, &marker).map_err(io(&self.data_dir))?;
        crate::file_replace::replace_with_mode(path, text.as_bytes(), mode).map_err(io(path))?;
        tracing::info!(file = %path.display(), previous = %version.id, "config applied; the gateway restarts on it");
        Ok(version)
    }

    fn history_dir(&self) -> PathBuf {
        self.data_dir.join(HISTORY_DIR)
    }

    /// Writes `text` as a new version (0600: a config may hold bridge passwords) and prunes the
    /// oldest beyond [`KEPT_VERSIONS`].
    fn keep_version(&self, text: &[u8]) -> std::io::Result<Version> {
        let dir = self.history_dir();
        std::fs::create_dir_all(&dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Two applies in one millisecond (or a clock set back) must not overwrite a version.
        let newest = self
            .versions()
            .first()
            .and_then(|v| v.id.parse::<u128>().ok());
        let id = newest.map_or(now, |n| now.max(n + 1)).to_string();
        crate::file_replace::replace_with_mode(&dir.join(format!("{id}.toml")), text, 0o600)?;
        for old in self.versions().iter().skip(KEPT_VERSIONS) {
            if let Err(e) = std::fs::remove_file(dir.join(format!("{}.toml", old.id))) {
                tracing::warn!(version = %old.id, "cannot remove an old config version: {e}");
            }
        }
        Ok(Version {
            id,
            size: text.len() as u64,
        })
    }

    /// The kept versions, newest first.
    pub fn versions(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(self.history_dir()) else {
            return Vec::new();
        };
        let mut versions: Vec<(u128, Version)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".toml")?;
                let n = id.parse::<u128>().ok()?;
                let size = e.metadata().ok()?.len();
                Some((
                    n,
                    Version {
                        id: id.to_owned(),
                        size,
                    },
                ))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        versions.into_iter().map(|(_, v)| v).collect()
    }

    /// The text of a kept version; `None` when there is no such version.
    pub fn version(&self, id: &str) -> Option<String> {
        kept_version(&self.data_dir, id)
    }
}

/// The text of the kept version `id` under `data_dir` (`id` is only ever taken as a number,
/// never as a path).
fn kept_version(data_dir: &Path, id: &str) -> Option<String> {
    let n = id.parse::<u128>().ok()?;
    std::fs::read_to_string(data_dir.join(HISTORY_DIR).join(format!("{n}.toml"))).ok()
}

/// The SHA-256 of a config text, hex: what an editor sends back as `base` to [`ConfigFile::apply`].
pub fn digest(text: &str) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The 1-based line where `key = ` first appears (a hint for a problem the checker does not
/// place itself).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::probation::{self, Judged};
    use super::*;

    const OLD: &str = "[node]\nname = \"old\"\n";
    const WINDOW: Duration = Duration::from_secs(300);

    /// A file (mode 0640) and a data directory `--data-dir` forced.
    fn setup() -> (tempfile::TempDir, ConfigFile, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("holdfast.toml");
        std::fs::write(&file, OLD).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let cf = ConfigFile::new(Some(file.clone()), data.clone(), true);
        (dir, cf, file, data)
    }

    fn text(file: &Path) -> String {
        std::fs::read_to_string(file).unwrap()
    }

    fn apply(cf: &ConfigFile, file: &Path, new: &str) -> Result<Version, ApplyError> {
        cf.apply(new, &digest(&text(file)), WINDOW)
    }

    #[test]
    fn a_mistake_is_refused_with_its_line_and_nothing_is_written() {
        let (_dir, cf, file, _) = setup();
        let err = apply(
            &cf,
            &file,
            "[node]\nname = \"x\"\n\n[mqtt]\nmax_inflight = \"many\"\n",
        )
        .unwrap_err();
        let ApplyError::Invalid(problems) = err else {
            panic!("expected problems, got {err}");
        };
        assert_eq!(problems[0].line, Some(5), "{problems:?}");
        assert_eq!(text(&file), OLD);
        assert!(cf.versions().is_empty());
        assert!(!cf.restart_state().restarting());
    }

    #[test]
    fn apply_keeps_the_old_text_and_the_mode_and_a_stale_edit_or_a_second_apply_is_refused() {
        let (_dir, cf, file, _) = setup();
        let stale = digest("[node]\nname = \"older\"\n");
        assert!(matches!(
            cf.apply("[node]\nname = \"new\"\n", &stale, WINDOW),
            Err(ApplyError::Changed)
        ));
        let v = apply(&cf, &file, "[node]\nname = \"new\"\n").unwrap();
        assert_eq!(text(&file), "[node]\nname = \"new\"\n");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(cf.version(&v.id).unwrap(), OLD);
        assert!(cf.restart_state().restarting());
        assert!(matches!(
            apply(&cf, &file, "[node]\nname = \"again\"\n"),
            Err(ApplyError::Busy)
        ));
    }

    #[test]
    fn a_stop_wins_over_a_restart() {
        let (_dir, cf, file, _) = setup();
        cf.restart_state().stop();
        assert!(matches!(
            apply(&cf, &file, "[node]\nname = \"new\"\n"),
            Err(ApplyError::Busy)
        ));
        assert_eq!(text(&file), OLD);
        let (_dir2, cf2, file2, _) = setup();
        apply(&cf2, &file2, "[node]\nname = \"new\"\n").unwrap();
        cf2.restart_state().stop();
        assert!(!cf2.restart_state().restarting());
    }

    #[test]
    fn a_confirmed_apply_is_kept_and_becomes_the_last_known_good_config() {
        let (_dir, cf, file, data) = setup();
        let v = apply(&cf, &file, "[node]\nname = \"new\"\n").unwrap();
        let Judged::Probation { previous, .. } = probation::judge(&file, &data) else {
            panic!("not on probation");
        };
        assert_eq!(previous, v.id);
        assert!(probation::current(&data).is_some());
        assert!(probation::confirm(&file, &data));
        assert!(!probation::confirm(&file, &data), "once");
        assert_eq!(probation::judge(&file, &data), Judged::Nothing);
        assert_eq!(
            text(&crate::last_good::path(&data)),
            "[node]\nname = \"new\"\n"
        );
    }

    #[test]
    fn a_start_again_without_a_confirm_rolls_back_before_loading() {
        let (_dir, cf, file, data) = setup();
        apply(&cf, &file, "[node]\nname = \"new\"\n").unwrap();
        assert!(matches!(
            probation::judge(&file, &data),
            Judged::Probation { .. }
        ));
        // A crash, a power cut or a restart by hand: the applied config had its chance.
        let Judged::RolledBack(why) = probation::judge(&file, &data) else {
            panic!("not rolled back");
        };
        assert!(why.contains("not confirmed"), "{why}");
        assert_eq!(text(&file), OLD);
        assert_eq!(probation::judge(&file, &data), Judged::Nothing);
    }

    #[test]
    fn a_roll_back_at_the_deadline_is_told_to_the_next_start_once() {
        let (_dir, cf, file, data) = setup();
        apply(&cf, &file, "[node]\nname = \"new\"\n").unwrap();
        assert!(matches!(
            probation::judge(&file, &data),
            Judged::Probation { .. }
        ));
        let alarm =
            probation::roll_back(&file, &data, "was not confirmed within 5m", true).unwrap();
        assert_eq!(text(&file), OLD);
        assert_eq!(probation::judge(&file, &data), Judged::RolledBack(alarm));
        assert_eq!(probation::judge(&file, &data), Judged::Nothing);
    }

    #[test]
    fn a_hand_edit_after_an_apply_ends_the_probation_without_touching_the_file() {
        let (_dir, cf, file, data) = setup();
        apply(&cf, &file, "[node]\nname = \"new\"\n").unwrap();
        std::fs::write(&file, "[node]\nname = \"by hand\"\n").unwrap();
        assert_eq!(probation::judge(&file, &data), Judged::Nothing);
        assert_eq!(text(&file), "[node]\nname = \"by hand\"\n");
    }

    #[test]
    fn an_apply_during_a_probation_rolls_back_to_the_last_confirmed_config() {
        let (_dir, cf, file, data) = setup();
        let first = apply(&cf, &file, "[node]\nname = \"one\"\n").unwrap();
        assert!(matches!(
            probation::judge(&file, &data),
            Judged::Probation { .. }
        ));
        let cf = ConfigFile::new(Some(file.clone()), data.clone(), true);
        apply(&cf, &file, "[node]\nname = \"two\"\n").unwrap();
        let Judged::Probation { previous, .. } = probation::judge(&file, &data) else {
            panic!("not on probation");
        };
        assert_eq!(previous, first.id);
        probation::roll_back(&file, &data, "did not start", false);
        assert_eq!(text(&file), OLD);
    }

    #[test]
    fn the_data_directory_is_not_moved_from_here() {
        let (dir, _, file, data) = setup();
        let own = format!("[node]\ndata_dir = {:?}\n", data.display().to_string());
        std::fs::write(&file, &own).unwrap();
        let cf = ConfigFile::new(Some(file.clone()), data, false);
        let moved = apply(
            &cf,
            &file,
            "[node]\nname = \"x\"\ndata_dir = \"/elsewhere\"\n",
        )
        .unwrap_err();
        let ApplyError::Invalid(p) = moved else {
            panic!("expected a problem, got {moved}");
        };
        assert_eq!((p[0].key.as_str(), p[0].line), ("node.data_dir", Some(3)));
        assert_eq!(text(&file), own);
        drop(dir);
    }

    #[test]
    fn at_most_ten_versions_are_kept_newest_first_and_ids_are_never_paths() {
        let (_dir, cf, _file, _) = setup();
        for i in 0..13 {
            cf.keep_version(format!("# {i}\n").as_bytes()).unwrap();
        }
        let versions = cf.versions();
        assert_eq!(versions.len(), KEPT_VERSIONS);
        assert_eq!(cf.version(&versions[0].id).unwrap(), "# 12\n");
        assert_eq!(cf.version(&versions[9].id).unwrap(), "# 3\n");
        assert_eq!(cf.version("../holdfast"), None);
    }

    #[test]
    fn defaults_have_no_file_to_change() {
        let cf = ConfigFile::new(None, PathBuf::from("/nonexistent"), false);
        assert!(matches!(
            cf.apply("[node]\nname = \"x\"\n", "", WINDOW),
            Err(ApplyError::NoFile)
        ));
        assert!(cf.read().unwrap().contains("[node]"));
    }
}
