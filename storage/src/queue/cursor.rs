//! The acknowledgement cursor: which records are done with (acknowledged or dropped), in memory
//! and in the small `ack` file.
//!
//! Owns the contiguous cursor (`acked_through`: every seq at or below it is done), the bounded
//! set of single acks that arrived out of order, and the file format
//! `[magic "HFQA"][version 1][acked_through u64 LE][crc32 of the previous 13 bytes]`, replaced
//! atomically (write `ack.tmp`, fdatasync, rename over `ack`, fsync the directory). It never
//! moves the cursor backwards and never treats a bad `ack` file as anything but "nothing is
//! acknowledged" (which redelivers, and never loses).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::segment::sync_dir;

/// The cursor file's name inside the queue directory.
pub(crate) const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";
const MAGIC: &[u8; 4] = b"HFQA";
const VERSION: u8 = 1;
const FILE_LEN: usize = 4 + 1 + 8 + 4;

/// The in-memory acknowledgement state.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// Every seq at or below this one is acknowledged or dropped.
    pub(crate) acked_through: u64,
    /// Single acks above `acked_through + 1`, held until the gap before them closes. Bounded by
    /// the caller (`QueueConfig::max_unordered_acks`) so a lost ack cannot grow it forever.
    pub(crate) singles: BTreeSet<u64>,
    /// The value last written to the `ack` file (or read from it at open).
    pub(crate) persisted: u64,
    /// Cursor advances since the last persist, to persist at most every N acks.
    pub(crate) unpersisted_acks: u64,
}

impl Cursor {
    /// True when `seq` is acknowledged, contiguously or as a single ack.
    pub(crate) fn is_acked(&self, seq: u64) -> bool {
        seq <= self.acked_through || self.singles.contains(&seq)
    }

    /// True when the in-memory cursor is ahead of the file.
    pub(crate) fn dirty(&self) -> bool {
        self.acked_through > self.persisted
    }
}

/// Reads the persisted cursor. A missing file is 0 (nothing acknowledged); a file that does
/// not check out is logged and read as 0 too: that can only cause redelivery.
pub(crate) fn read_ack_file(dir: &Path) -> io::Result<u64> {
    let path = dir.join(ACK_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    match decode(&bytes) {
        Some(seq) => Ok(seq),
        None => {
            tracing::warn!(
                path = %path.display(),
                len = bytes.len(),
                "queue ack file is damaged; redelivering from the oldest record on disk"
            );
            Ok(0)
        }
    }
}

fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != FILE_LEN || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return None;
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[13..17]);
    if crc32fast::hash(&bytes[..13]) != u32::from_le_bytes(crc) {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[5..13]);
    Some(u64::from_le_bytes(seq))
}

fn encode(seq: u64) -> [u8; FILE_LEN] {
    let mut out = [0u8; FILE_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..13].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..13]);
    out[13..17].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Replaces the `ack` file with `seq`, atomically: after a crash the file holds either the old
/// or the new value, never a mix. Returns once the new value is durable.
pub(crate) fn write_ack_file(dir: &Path, seq: u64) -> io::Result<()> {
    let tmp = dir.join(ACK_TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(seq))?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, dir.join(ACK_FILE))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_file_round_trips_and_a_damaged_one_reads_as_nothing_acked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_ack_file(dir.path()).unwrap(), 0);
        write_ack_file(dir.path(), 1234).unwrap();
        assert_eq!(read_ack_file(dir.path()).unwrap(), 1234);
        let path = dir.path().join(ACK_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[6] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_ack_file(dir.path()).unwrap(), 0);
        fs::write(&path, b"xx").unwrap();
        assert_eq!(read_ack_file(dir.path()).unwrap(), 0);
    }
}
