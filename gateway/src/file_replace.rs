//! Replacing a small file whole, so that a crash or a power cut leaves either the old content
//! or the new one, never a torn mix: write a sibling temporary file, `fsync` it, rename it over
//! the target, `fsync` the directory.
//!
//! Owns that sequence for the gateway's small state files (the bridge's QoS 2 session, the
//! clock mark, the last known good config). Not for the queues or the state store, which
//! have their own formats and sync rules.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` (see the module documentation).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_then_rename(path, bytes, None)
}

/// Replaces `path` with `bytes`, the new file having `mode` from its creation on (a file
/// that holds secrets is never readable by others, not even for an instant).
pub fn replace_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_then_rename(path, bytes, Some(mode))
}

fn write_then_rename(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let tmp = temp_path(path);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode & 0o7777);
        }
        let mut f = options.open(&tmp)?;
        if let Some(mode) = mode {
            // A left-over temporary file keeps its old mode through `open`: set it.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Best effort: the rename is done; a directory that cannot be opened to sync is no reason
    // to report the write as failed.
    sync_dir(path);
    Ok(())
}

/// Syncs the directory that holds `path` (after a rename or a removal there), best effort.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// `{path}.tmp`, beside the target (a rename never crosses file systems).
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        super::replace(&path, b"one").unwrap();
        super::replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
