//! One segment file of the queue log: the record framing, the recovery scan and the in-memory
//! index of where each record starts.
//!
//! Owns the on-disk format of a record, `[len u32 LE][crc32 u32 LE over seq+payload][seq u64 LE]
//! [payload]` (`len` is the payload length), and the file name `{first_seq:020}.seg`. It never
//! decides what is acknowledged or dropped (that is the cursor's job) and never panics on bytes
//! read from disk: a record that does not check out ends the scan and is reported.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes in front of every payload: len (4) + crc (4) + seq (8).
pub(crate) const HEADER_LEN: usize = 16;

/// The file-name suffix of a segment.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";

/// The path of the segment whose first record has sequence number `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// Parses a segment file name back into its first sequence number; `None` for anything else.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The CRC of one record: over the seq bytes then the payload.
fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the framed record to `out`. The caller has checked that `payload` fits in a `u32`.
pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes than the header or the payload it announces: a torn write.
    Torn,
    /// The stored CRC does not match the seq and payload.
    Crc,
    /// The record is intact but carries an unexpected sequence number.
    Seq,
}

/// Decodes the record at the start of `buf`, which must carry sequence number `expect_seq`.
/// Returns the payload range within `buf` and the total record length.
pub(crate) fn decode_record(
    buf: &[u8],
    expect_seq: u64,
) -> Result<(std::ops::Range<usize>, usize), Bad> {
    let header = buf.get(..HEADER_LEN).ok_or(Bad::Torn)?;
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(&header[0..4]);
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&header[4..8]);
    let mut seq8 = [0u8; 8];
    seq8.copy_from_slice(&header[8..16]);
    let len = u32::from_le_bytes(len4) as usize;
    let total = HEADER_LEN.checked_add(len).ok_or(Bad::Torn)?;
    let payload = buf.get(HEADER_LEN..total).ok_or(Bad::Torn)?;
    let seq = u64::from_le_bytes(seq8);
    if record_crc(seq, payload) != u32::from_le_bytes(crc4) {
        return Err(Bad::Crc);
    }
    if seq != expect_seq {
        return Err(Bad::Seq);
    }
    Ok((HEADER_LEN..total, total))
}

/// A segment file and the index of the records in it that are on disk and synced.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Sequence number of the first record; also the file name. Records are contiguous.
    pub(crate) first_seq: u64,
    /// Byte offset of each record in the file, so reads and byte accounting need no disk I/O.
    /// Four bytes a queued record: the price of never scanning a file on the hot path.
    pub(crate) offsets: Vec<u32>,
    /// Bytes of valid records in the file (the offset where the next record goes).
    pub(crate) len: u64,
    /// Shared so a flush can write to the tail while readers hold the queue lock.
    pub(crate) file: Arc<File>,
    /// Kept for deletion and log lines.
    pub(crate) path: PathBuf,
}

impl Segment {
    /// One past the last record's sequence number.
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64
    }

    /// Byte offset where record `seq` starts, or the segment end for `seq == end_seq()`.
    /// The caller guarantees `first_seq <= seq <= end_seq()`.
    pub(crate) fn offset_of(&self, seq: u64) -> u64 {
        let i = (seq - self.first_seq) as usize;
        match self.offsets.get(i) {
            Some(&o) => u64::from(o),
            None => self.len,
        }
    }
}

/// What a recovery scan found in one segment file.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// The segment with its index, covering the valid prefix only.
    pub(crate) segment: Segment,
    /// The file's length on disk before anything was cut.
    pub(crate) file_len: u64,
    /// Why the scan stopped before the end of the file, if it did. `None` also when everything
    /// after the last record is zeros: the unwritten rest of a preallocated segment is its clean
    /// end, not damage (a zero header can never check out: seq 0 is never handed out).
    pub(crate) stopped: Option<Bad>,
}

/// Gives a segment file its full size up front with `set_len`, so the file is sparse past its
/// records and reads back as zeros there. A commit that writes inside that size does not
/// change the file size, so its `fdatasync` has no size change to journal (ext4 still journals
/// the allocation of each new 4 KiB block, once per block rather than once per commit).
/// Never shrinks a file.
pub(crate) fn preallocate(file: &File, segment_bytes: u64) -> io::Result<()> {
    if file.metadata()?.len() < segment_bytes {
        file.set_len(segment_bytes)?;
    }
    Ok(())
}

/// Opens a segment and indexes its valid prefix: records in order with the expected sequence
/// numbers and good CRCs. Stops at the first record that does not check out; it never reads
/// past that point and never trusts a length field beyond the bytes actually present.
pub(crate) fn scan(path: &Path, first_seq: u64) -> io::Result<Scanned> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let mut data = Vec::with_capacity(usize::try_from(file_len).unwrap_or(0));
    file.read_to_end(&mut data)?;
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    let mut seq = first_seq;
    let mut stopped = None;
    while pos < data.len() {
        match decode_record(&data[pos..], seq) {
            Ok((_, total)) => {
                let Ok(off) = u32::try_from(pos) else {
                    stopped = Some(Bad::Torn);
                    break;
                };
                offsets.push(off);
                pos += total;
                seq += 1;
            }
            Err(bad) => {
                if data[pos..].iter().any(|&b| b != 0) {
                    stopped = Some(bad);
                }
                break;
            }
        }
    }
    Ok(Scanned {
        segment: Segment {
            first_seq,
            offsets,
            len: pos as u64,
            file: Arc::new(file),
            path: path.to_path_buf(),
        },
        file_len,
        stopped,
    })
}

/// Reads `len` bytes at `offset` of `file`.
pub(crate) fn read_range(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// fsyncs a directory, so a created, renamed or deleted entry in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_its_payload() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, b"hello");
        let (range, total) = decode_record(&buf, 7).unwrap();
        assert_eq!(&buf[range], b"hello");
        assert_eq!(total, HEADER_LEN + 5);
    }

    #[test]
    fn a_short_flipped_or_misnumbered_record_is_rejected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, b"hello");
        assert_eq!(decode_record(&buf[..buf.len() - 1], 7), Err(Bad::Torn));
        assert_eq!(decode_record(&buf[..3], 7), Err(Bad::Torn));
        assert_eq!(decode_record(&buf, 8), Err(Bad::Seq));
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(decode_record(&buf, 7), Err(Bad::Crc));
    }

    #[test]
    fn a_huge_length_field_is_a_torn_record_not_an_allocation() {
        let mut buf = vec![0xff; HEADER_LEN];
        buf[8..16].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(decode_record(&buf, 1), Err(Bad::Torn));
    }

    #[test]
    fn segment_names_round_trip_and_strangers_are_ignored() {
        let p = segment_path(Path::new("/q"), 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("ack"), None);
    }
}
