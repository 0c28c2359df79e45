//! The last known good config: the config file the gateway last started with, kept in its data
//! directory, and the way back to it when a new config does not load or does not start.
//!
//! A technician who pushes a broken config (a typo, a port another service holds, a missing
//! certificate) must not leave a board that restarts forever with no broker: `holdfast run`
//! starts on `{data_dir}/config.last-good.toml` instead, logs why, and raises an alarm (the
//! status LED, `$SYS/.../board/alarms`, systemd `STATUS=`) until a good config starts.
//!
//! Owns that one file. Never touches the operator's config file, and never falls back for
//! `holdfast check` (which must say the truth about the file it was given).

use crate::config::{self, Config};
use std::path::{Path, PathBuf};

/// The file name under the data directory.
const FILE_NAME: &str = "config.last-good.toml";

/// Where the last known good config of `data_dir` is kept.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The data directory a config file names, read leniently (the file may not load as a whole:
/// that is why the caller asks): `node.data_dir` when the TOML has one, else the default.
pub fn data_dir_of(config_file: &Path) -> PathBuf {
    std::fs::read_to_string(config_file)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("node")?.get("data_dir")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| Config::default().node.data_dir)
}

/// Records `config_file` as the last known good config of `data_dir` (a copy, replaced whole),
/// unless the copy there is the same already.
pub fn save(data_dir: &Path, config_file: &Path) -> std::io::Result<()> {
    let text = std::fs::read(config_file)?;
    let target = path(data_dir);
    if std::fs::read(&target).is_ok_and(|old| old == text) {
        return Ok(());
    }
    crate::file_replace::replace(&target, &text)
}

/// The last known good config of `data_dir`, loaded as `holdfast run` would load a config file
/// (environment overrides included); `None` when there is none, or it does not load either
/// (logged by the caller through the returned problems being absent).
pub fn load(data_dir: &Path) -> Option<(Config, PathBuf)> {
    let file = path(data_dir);
    if !file.exists() {
        return None;
    }
    match config::load(Some(&file), std::env::vars()) {
        Ok(cfg) => Some((cfg, file)),
        Err(errors) => {
            eprintln!(
                "error: the last known good config {} does not load either:\n{errors}",
                file.display()
            );
            None
        }
    }
}

/// True when `config_file` holds the same bytes as the last known good copy: falling back to
/// it would start the very same config again.
pub fn is_same(data_dir: &Path, config_file: &Path) -> bool {
    match (std::fs::read(config_file), std::fs::read(path(data_dir))) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_config_loads_back_and_the_data_dir_is_read_from_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            format!(
                "[node]\nname = \"gw-lkg\"\ndata_dir = \"{}\"\n",
                data.display()
            ),
        )
        .unwrap();
        assert!(load(&data).is_none(), "nothing saved yet");
        save(&data, &good).unwrap();
        let (cfg, from) = load(&data).unwrap();
        assert_eq!(cfg.node.name, "gw-lkg");
        assert_eq!(from, path(&data));
        assert!(is_same(&data, &good));

        let broken = dir.path().join("broken.toml");
        std::fs::write(
            &broken,
            format!(
                "[node]\ndata_dir = \"{}\"\nname = 7\n[mqtt]\nmax_inflight = 0\n",
                data.display()
            ),
        )
        .unwrap();
        assert!(config::load(Some(&broken), std::iter::empty()).is_err());
        assert_eq!(data_dir_of(&broken), data);
        assert!(!is_same(&data, &broken));
        let garbage = dir.path().join("garbage.toml");
        std::fs::write(&garbage, "[node\n").unwrap();
        assert_eq!(data_dir_of(&garbage), Config::default().node.data_dir);
    }
}
