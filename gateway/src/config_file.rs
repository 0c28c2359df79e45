//! The running gateway's config file as the web UI edits it: read, check with the same checker
//! as `holdfast check`, apply (the previous text kept as a version, the file replaced whole with
//! its permissions, the gateway restarted on it), and roll back when the applied config does
//! not come up.
//!
//! Apply writes a marker, `{data_dir}/config-apply.pending`, naming the version it replaced.
//! The next start takes the marker: when the new config does not load or does not start, the
//! file is put back to that version (and the gateway runs on its last known good config, see
//! [`crate::last_good`], with an alarm saying so); when it starts, the marker is simply gone.
//!
//! Owns the config file (only through [`ConfigFile::apply`] and the roll back), the version
//! directory `{data_dir}/config-history/` (at most [`KEPT_VERSIONS`]) and the marker. Never
//! restarts the process itself: it raises [`ConfigFile::restart_requested`] and the caller
//! (`holdfast run`) execs itself once the gateway has stopped cleanly.

use crate::config::{self, Config, Problem};
use serde::Serialize;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Versions kept in the history directory; the oldest go first.
pub const KEPT_VERSIONS: usize = 10;
/// Largest config text taken, in bytes (a config of a few hundred devices is ~100 KB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The history directory under the data directory.
const HISTORY_DIR: &str = "config-history";
/// The apply marker under the data directory.
const PENDING_FILE: &str = "config-apply.pending";

/// The config file a running gateway was started with, and its data directory.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: Option<PathBuf>,
    data_dir: PathBuf,
    restart: Arc<AtomicBool>,
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
    /// The text is larger than [`MAX_CONFIG_BYTES`].
    #[error("a config has at most {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    /// The checker found mistakes (nothing was written).
    #[error("the config has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// A restart is already on its way.
    #[error("a config is being applied already; wait for the restart")]
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
    /// The file `path` (`None`: built-in defaults) of a gateway keeping its state in `data_dir`.
    pub fn new(path: Option<PathBuf>, data_dir: PathBuf) -> Self {
        Self {
            path,
            data_dir,
            restart: Arc::default(),
        }
    }

    /// The file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file's text now (the built-in example when the gateway runs on defaults).
    pub fn read(&self) -> std::io::Result<String> {
        match &self.path {
            Some(p) => std::fs::read_to_string(p),
            None => Ok(config::example_toml().to_owned()),
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

    /// Checks `text`; when it is good, keeps the current file as a version, replaces the file
    /// with `text` (same permissions), leaves the marker and raises the restart request. The
    /// caller then stops the gateway; `holdfast run` restarts on the new file.
    ///
    /// `base` is the [`digest`] of the text the editor started from: when the file no longer
    /// has it, someone else changed it meanwhile and nothing is written. A change of
    /// `node.data_dir` is refused: the roll back and the last known good config live there.
    pub fn apply(&self, text: &str, base: Option<&str>) -> Result<Version, ApplyError> {
        let Some(path) = &self.path else {
            return Err(ApplyError::NoFile);
        };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ApplyError::TooLarge);
        }
        let new = self.check(text).map_err(ApplyError::Invalid)?;
        let current = std::fs::read_to_string(path).map_err(|source| ApplyError::Io {
            path: path.clone(),
            source,
        })?;
        if base.is_some_and(|b| b != digest(&current)) {
            return Err(ApplyError::Changed);
        }
        if let Ok(old) = self.check(&current) {
            if old.node.data_dir != new.node.data_dir {
                return Err(ApplyError::Invalid(vec![Problem {
                    origin: path.display().to_string(),
                    line: line_of(text, "data_dir"),
                    key: "node.data_dir".to_owned(),
                    message: format!(
                        "cannot be changed from here (it holds the queues, the sessions and the way back to this config): stop the gateway, move {} and edit the file on the board",
                        old.node.data_dir.display()
                    ),
                }]));
            }
        }
        if self.restart.swap(true, Ordering::SeqCst) {
            return Err(ApplyError::Busy);
        }
        let result = self.replace(path, text);
        if result.is_err() {
            self.restart.store(false, Ordering::SeqCst);
        }
        result
    }

    fn replace(&self, path: &Path, text: &str) -> Result<Version, ApplyError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ApplyError::Io { path: p, source }
        };
        let old = std::fs::read(path).map_err(io(path))?;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        let version = self.keep_version(&old).map_err(io(&self.history_dir()))?;
        let pending = self.data_dir.join(PENDING_FILE);
        crate::file_replace::replace(&pending, version.id.as_bytes()).map_err(io(&pending))?;
        crate::file_replace::replace_with_mode(path, text.as_bytes(), mode).map_err(io(path))?;
        tracing::info!(file = %path.display(), previous = %version.id, "config applied; the gateway restarts on it");
        Ok(version)
    }

    /// Asks for a restart without a new config (none is written).
    pub fn request_restart(&self) -> bool {
        !self.restart.swap(true, Ordering::SeqCst)
    }

    /// Whether an apply asked for a restart.
    pub fn restart_requested(&self) -> bool {
        self.restart.load(Ordering::SeqCst)
    }

    /// The restart request itself, for the board task (it tells systemd the stop is a reload)
    /// and the signal handler (a SIGTERM turns it off: a stop is a stop).
    pub fn restart_flag(&self) -> Arc<AtomicBool> {
        self.restart.clone()
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

    /// The text of a kept version; `None` when there is no such version (`id` is only ever
    /// taken as a number, never as a path).
    pub fn version(&self, id: &str) -> Option<String> {
        let n = id.parse::<u128>().ok()?;
        std::fs::read_to_string(self.history_dir().join(format!("{n}.toml"))).ok()
    }
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

/// The version an apply replaced, when the last apply has not been started on yet; the
/// marker is removed (one start judges one apply).
pub fn take_pending(data_dir: &Path) -> Option<String> {
    let marker = data_dir.join(PENDING_FILE);
    let id = std::fs::read_to_string(&marker).ok()?;
    if let Err(e) = std::fs::remove_file(&marker) {
        tracing::warn!(marker = %marker.display(), "cannot remove the config apply marker: {e}");
    }
    let id = id.trim();
    id.parse::<u128>().ok().map(|n| n.to_string())
}

/// Puts `file` back to the kept version `id` (same permissions); the version stays kept.
pub fn roll_back(data_dir: &Path, file: &Path, id: &str) -> std::io::Result<()> {
    let probe = ConfigFile::new(Some(file.to_path_buf()), data_dir.to_path_buf());
    let text = probe.version(id).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("config version {id} is gone"),
        )
    })?;
    let mode = std::fs::metadata(file).map_or(0o600, |m| m.permissions().mode());
    crate::file_replace::replace_with_mode(file, text.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, ConfigFile, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("holdfast.toml");
        std::fs::write(&file, "[node]\nname = \"old\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let cf = ConfigFile::new(Some(file.clone()), dir.path().join("data"));
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        (dir, cf, file)
    }

    #[test]
    fn a_mistake_is_refused_with_its_line_and_nothing_is_written() {
        let (_dir, cf, file) = setup();
        let err = cf
            .apply(
                "[node]\nname = \"x\"\n\n[mqtt]\nmax_inflight = \"many\"\n",
                None,
            )
            .unwrap_err();
        let ApplyError::Invalid(problems) = err else {
            panic!("expected problems, got {err}");
        };
        assert_eq!(problems[0].line, Some(5), "{problems:?}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "[node]\nname = \"old\"\n"
        );
        assert!(cf.versions().is_empty());
        assert!(!cf.restart_requested());
    }

    #[test]
    fn apply_keeps_the_old_text_the_mode_and_a_marker_and_asks_for_a_restart() {
        let (_dir, cf, file) = setup();
        let stale = digest("[node]\nname = \"older\"\n");
        assert!(matches!(
            cf.apply("[node]\nname = \"new\"\n", Some(&stale)),
            Err(ApplyError::Changed)
        ));
        let moved = cf
            .apply("[node]\nname = \"new\"\ndata_dir = \"/elsewhere\"\n", None)
            .unwrap_err();
        let ApplyError::Invalid(p) = moved else {
            panic!("expected a problem, got {moved}");
        };
        assert_eq!((p[0].key.as_str(), p[0].line), ("node.data_dir", Some(3)));
        let base = digest(&std::fs::read_to_string(&file).unwrap());
        let v = cf.apply("[node]\nname = \"new\"\n", Some(&base)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "[node]\nname = \"new\"\n"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(cf.version(&v.id).unwrap(), "[node]\nname = \"old\"\n");
        assert!(cf.restart_requested());
        assert!(matches!(
            cf.apply("[node]\nname = \"again\"\n", None),
            Err(ApplyError::Busy)
        ));
        let data_dir = file.parent().unwrap().join("data");
        assert_eq!(take_pending(&data_dir), Some(v.id.clone()));
        assert_eq!(take_pending(&data_dir), None, "one start judges one apply");
        roll_back(&data_dir, &file, &v.id).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "[node]\nname = \"old\"\n"
        );
    }

    #[test]
    fn at_most_ten_versions_are_kept_newest_first_and_ids_are_never_paths() {
        let (_dir, cf, _file) = setup();
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
        let cf = ConfigFile::new(None, PathBuf::from("/nonexistent"));
        assert!(matches!(
            cf.apply("[node]\nname = \"x\"\n", None),
            Err(ApplyError::NoFile)
        ));
        assert!(cf.read().unwrap().contains("[node]"));
    }
}
