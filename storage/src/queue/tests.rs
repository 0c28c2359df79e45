//! Tests of the queue as a whole: order, acks, recovery, caps, rollover, group commit, and a
//! model check of random operation sequences with reopens.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::segment::{segment_path, HEADER_LEN};
use super::*;

fn cfg(dir: &Path) -> QueueConfig {
    QueueConfig::new(dir)
}

fn open(dir: &Path) -> SegmentQueue {
    SegmentQueue::open(cfg(dir)).unwrap()
}

fn all(q: &SegmentQueue) -> Vec<Record> {
    q.read(0, usize::MAX, usize::MAX).unwrap()
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_committed_record_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open(dir.path());
    let a = q.append(b"hello").unwrap();
    assert_eq!(
        a,
        Appended {
            seq: 1,
            dropped_oldest: 0
        }
    );
    assert_eq!(q.durable_seq(), 0);
    assert_eq!(q.commit().unwrap(), 1);
    assert_eq!(
        all(&q),
        vec![Record {
            seq: 1,
            payload: b"hello".to_vec()
        }]
    );
    assert_eq!(q.len(), 1);
    assert_eq!(q.bytes(), (HEADER_LEN + 5) as u64);
}

#[test]
fn records_come_back_in_append_order_across_commits_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open(dir.path());
    for i in 0..100u32 {
        q.append(&i.to_le_bytes()).unwrap();
        if i.is_multiple_of(7) {
            q.commit().unwrap();
        }
    }
    // Durable and buffered records read together, oldest first.
    let got = all(&q);
    assert_eq!(seqs(&got), (1..=100).collect::<Vec<_>>());
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.payload, (i as u32).to_le_bytes());
    }
    // Paging by count and by bytes.
    let page = q.read(10, 5, usize::MAX).unwrap();
    assert_eq!(seqs(&page), vec![10, 11, 12, 13, 14]);
    let page = q.read(10, 100, 9).unwrap();
    assert_eq!(seqs(&page), vec![10, 11]);
    // At least one record even when it is over max_bytes, so a reader always progresses.
    let page = q.read(10, 100, 1).unwrap();
    assert_eq!(seqs(&page), vec![10]);
    assert!(q.read(10, 0, usize::MAX).unwrap().is_empty());
}

#[test]
fn ack_up_to_and_out_of_order_single_acks_hide_records_until_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open(dir.path());
    for i in 0..10u8 {
        q.append(&[i]).unwrap();
    }
    q.commit().unwrap();
    q.ack_up_to(3).unwrap();
    assert_eq!(q.first_unacked(), Some(4));
    assert_eq!(q.len(), 7);
    q.ack(6).unwrap();
    q.ack(5).unwrap();
    assert_eq!(q.first_unacked(), Some(4));
    assert_eq!(seqs(&all(&q)), vec![4, 7, 8, 9, 10]);
    assert_eq!(q.len(), 5);
    assert_eq!(q.bytes(), 5 * (HEADER_LEN as u64 + 1));
    q.ack(4).unwrap();
    assert_eq!(q.first_unacked(), Some(7));
    // Acking twice, or below the cursor, is a no-op; a seq never handed out is an error.
    q.ack(5).unwrap();
    q.ack_up_to(2).unwrap();
    assert_eq!(q.len(), 4);
    assert!(matches!(
        q.ack(11),
        Err(QueueError::UnknownSeq {
            seq: 11,
            next_seq: 11
        })
    ));
    assert!(matches!(q.ack_up_to(0), Err(QueueError::UnknownSeq { .. })));
    q.ack_up_to(10).unwrap();
    assert!(q.is_empty());
    assert_eq!(q.bytes(), 0);
    assert_eq!(q.first_unacked(), None);
}

#[test]
fn out_of_order_acks_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_unordered_acks = 2;
    let mut q = SegmentQueue::open(c).unwrap();
    for _ in 0..5 {
        q.append(b"x").unwrap();
    }
    q.ack(3).unwrap();
    q.ack(4).unwrap();
    assert!(matches!(q.ack(5), Err(QueueError::TooManyUnorderedAcks(2))));
    q.ack(1).unwrap();
    q.ack(2).unwrap();
    assert_eq!(q.first_unacked(), Some(5));
}

#[test]
fn committed_records_and_persisted_acks_survive_a_reopen_and_uncommitted_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = open(dir.path());
        for i in 0..5u8 {
            q.append(&[i]).unwrap();
        }
        q.ack_up_to(2).unwrap();
        q.commit().unwrap();
        q.ack(4).unwrap(); // single, not contiguous: not persisted
        q.append(b"lost").unwrap();
    }
    let mut q = open(dir.path());
    assert_eq!(seqs(&all(&q)), vec![3, 4, 5]);
    assert_eq!(q.next_seq(), 6);
    assert_eq!(q.durable_seq(), 5);
    assert_eq!(q.append(b"new").unwrap().seq, 6);
    q.commit().unwrap();
    drop(q);
    let q = open(dir.path());
    assert_eq!(seqs(&all(&q)), vec![3, 4, 5, 6]);
}

#[test]
fn acks_are_persisted_every_n_without_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.ack_persist_every = 4;
    {
        let mut q = SegmentQueue::open(c.clone()).unwrap();
        for _ in 0..10 {
            q.append(b"r").unwrap();
        }
        q.commit().unwrap();
        for s in 1..=5 {
            q.ack(s).unwrap();
        }
    }
    // Acks 1..=4 reached the threshold and were written; ack 5 may come back.
    let q = SegmentQueue::open(c).unwrap();
    assert_eq!(q.first_unacked(), Some(5));
}

#[test]
fn a_torn_last_record_is_cut_and_everything_before_it_survives() {
    for damage in ["truncate", "flip"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = open(dir.path());
            for i in 0..10u8 {
                q.append(&[i; 20]).unwrap();
            }
            q.commit().unwrap();
        }
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let rec = HEADER_LEN + 20;
        match damage {
            "truncate" => bytes.truncate(9 * rec + 7),
            _ => bytes[9 * rec + HEADER_LEN + 3] ^= 0x10,
        }
        fs::write(&path, &bytes).unwrap();
        let mut q = open(dir.path());
        assert_eq!(seqs(&all(&q)), (1..=9).collect::<Vec<_>>(), "{damage}");
        // The torn bytes are zeroed, the file keeps (or regains) its preallocated size.
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, DEFAULT_SEGMENT_BYTES, "{damage}");
        assert!(bytes[9 * rec..].iter().all(|&b| b == 0), "{damage}");
        assert_eq!(q.append(b"after").unwrap().seq, 10);
        q.commit().unwrap();
        drop(q);
        let q = open(dir.path());
        assert_eq!(all(&q).last().unwrap().payload, b"after".to_vec());
        assert_eq!(q.len(), 10);
    }
}

#[test]
fn a_segment_is_preallocated_sparse_and_its_zeros_are_the_end_of_the_log() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let rec = HEADER_LEN + 20;
    {
        let mut q = open(dir.path());
        for i in 0..5u8 {
            q.append(&[i + 1; 20]).unwrap();
        }
        q.commit().unwrap();
    }
    let path = segment_path(dir.path(), 1);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), DEFAULT_SEGMENT_BYTES);
    assert!(meta.blocks() * 512 < DEFAULT_SEGMENT_BYTES, "not sparse");
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[5 * rec..].iter().all(|&b| b == 0));

    // Reopen: all five records, nothing counted as corrupt, the next append goes right after
    // the last record (not at the end of the file) and survives another reopen.
    let mut q = open(dir.path());
    assert_eq!(seqs(&all(&q)), (1..=5).collect::<Vec<_>>());
    assert_eq!(q.corrupt_records_skipped(), 0);
    assert_eq!(q.append(&[9; 20]).unwrap().seq, 6);
    q.commit().unwrap();
    drop(q);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, DEFAULT_SEGMENT_BYTES);
    let (range, total) = super::segment::decode_record(&bytes[5 * rec..], 6).unwrap();
    assert_eq!(&bytes[5 * rec..][range], &[9; 20]);
    assert!(bytes[5 * rec + total..].iter().all(|&b| b == 0));
    let q = open(dir.path());
    assert_eq!(seqs(&all(&q)), (1..=6).collect::<Vec<_>>());
    assert_eq!(q.corrupt_records_skipped(), 0);
}

#[test]
fn a_tail_segment_without_preallocation_is_grown_at_open_and_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let rec = HEADER_LEN + 20;
    {
        let mut q = open(dir.path());
        for i in 0..10u8 {
            q.append(&[i; 20]).unwrap();
        }
        q.commit().unwrap();
    }
    // The layout an older version left: the file ends at its last record.
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(10 * rec);
    fs::write(&path, &bytes).unwrap();
    let mut q = open(dir.path());
    assert_eq!(seqs(&all(&q)), (1..=10).collect::<Vec<_>>());
    assert_eq!(fs::metadata(&path).unwrap().len(), DEFAULT_SEGMENT_BYTES);
    assert_eq!(q.append(&[11; 20]).unwrap().seq, 11);
    q.commit().unwrap();
    drop(q);
    let q = open(dir.path());
    assert_eq!(seqs(&all(&q)), (1..=11).collect::<Vec<_>>());
}

#[test]
fn stale_records_behind_a_torn_tail_never_come_back() {
    // Pages of one write can reach the disk out of order: a crash can leave a damaged record
    // followed by intact records of the same (never committed) batch. Recovery must zero them,
    // or an append of the same size would line up with them and resurrect them.
    let dir = tempfile::tempdir().unwrap();
    let rec = HEADER_LEN + 20;
    {
        let mut q = open(dir.path());
        for i in 0..10u8 {
            q.append(&[i; 20]).unwrap();
        }
        q.commit().unwrap();
    }
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[4 * rec + HEADER_LEN] ^= 0xff; // seq 5 damaged, 6..=10 intact behind it
    fs::write(&path, &bytes).unwrap();
    {
        let mut q = open(dir.path());
        assert_eq!(seqs(&all(&q)), (1..=4).collect::<Vec<_>>());
        let bytes = fs::read(&path).unwrap();
        assert!(bytes[4 * rec..].iter().all(|&b| b == 0));
        assert_eq!(q.append(&[0xaa; 20]).unwrap().seq, 5);
        q.commit().unwrap();
    }
    let q = open(dir.path());
    let got = all(&q);
    assert_eq!(seqs(&got), (1..=5).collect::<Vec<_>>());
    assert_eq!(got[4].payload, vec![0xaa; 20]);
    assert_eq!(q.next_seq(), 6);
}

#[test]
fn a_bad_record_in_an_earlier_segment_skips_to_the_next_segment_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.segment_bytes = 4096;
    {
        let mut q = SegmentQueue::open(c.clone()).unwrap();
        for i in 0..100u32 {
            q.append(&[i as u8; 100]).unwrap();
        }
        q.commit().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    // 4096 / 116 = 35 records per segment: damage the 11th record of the first one.
    let path = dir.path().join(&files[0]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10 * 116 + HEADER_LEN] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let q = SegmentQueue::open(c).unwrap();
    let got = seqs(&all(&q));
    assert_eq!(got[..10], (1..=10).collect::<Vec<_>>()[..]);
    assert_eq!(got[10], 36);
    assert_eq!(got.len(), 10 + 65);
    assert_eq!(q.corrupt_records_skipped(), 25);
}

#[test]
fn drop_oldest_at_the_byte_cap_counts_drops_and_keeps_the_newest_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_bytes = 100 * (HEADER_LEN as u64 + 84);
    c.segment_bytes = 4096;
    let mut q = SegmentQueue::open(c.clone()).unwrap();
    let mut dropped = 0;
    for i in 0..1000u32 {
        let mut p = vec![0u8; 84];
        p[..4].copy_from_slice(&i.to_le_bytes());
        dropped += q.append(&p).unwrap().dropped_oldest;
        if i.is_multiple_of(10) {
            q.commit().unwrap();
        }
    }
    q.commit().unwrap();
    assert_eq!(dropped, 900);
    assert_eq!(q.dropped_oldest(), 900);
    assert_eq!(q.len(), 100);
    assert!(q.bytes() <= c.max_bytes);
    let got = all(&q);
    assert_eq!(seqs(&got), (901..=1000).collect::<Vec<_>>());
    assert_eq!(got[0].payload[..4], 900u32.to_le_bytes());
    // Fully dropped segments are gone: disk stays near the cap.
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|n| fs::metadata(dir.path().join(n)).unwrap().len())
        .sum();
    assert!(on_disk <= c.max_bytes + c.segment_bytes, "{on_disk}");
    drop(q);
    let q = SegmentQueue::open(c).unwrap();
    assert_eq!(seqs(&all(&q)), (901..=1000).collect::<Vec<_>>());
}

#[test]
fn reject_new_refuses_records_over_the_cap_until_acks_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_bytes = 10 * (HEADER_LEN as u64 + 1000);
    c.on_full = OnFull::RejectNew;
    let mut q = SegmentQueue::open(c).unwrap();
    for _ in 0..10 {
        q.append(&[1; 1000]).unwrap();
    }
    assert!(matches!(q.append(&[1; 1000]), Err(QueueError::Full { .. })));
    assert_eq!(q.rejected(), 1);
    assert_eq!(q.len(), 10);
    q.ack(1).unwrap();
    assert_eq!(q.append(&[2; 1000]).unwrap().seq, 11);
    assert!(matches!(
        q.append(&[0; 20_000]),
        Err(QueueError::TooLarge { len: 20_000, .. })
    ));
}

#[test]
fn the_log_rolls_over_to_new_segments_and_deletes_fully_acked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.segment_bytes = 4096;
    let mut q = SegmentQueue::open(c.clone()).unwrap();
    for i in 0..200u32 {
        q.append(&[i as u8; 100]).unwrap();
        if i % 50 == 49 {
            q.commit().unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 6, "{files:?}");
    assert_eq!(files[0], "00000000000000000001.seg");
    assert_eq!(files[1], "00000000000000000036.seg");
    for f in &files {
        assert!(fs::metadata(dir.path().join(f)).unwrap().len() <= 4096);
    }
    q.ack_up_to(69).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 5);
    q.ack_up_to(70).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 4);
    q.ack_up_to(200).unwrap();
    // The newest segment stays: it carries the sequence numbers across a restart.
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000176.seg"]);
    q.commit().unwrap();
    drop(q);
    let mut q = SegmentQueue::open(c).unwrap();
    assert!(q.is_empty());
    assert_eq!(q.append(b"next").unwrap().seq, 201);
}

#[test]
fn a_reopen_after_every_segment_was_acked_keeps_counting_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = open(dir.path());
        q.append(b"a").unwrap();
        q.ack_up_to(1).unwrap();
        q.commit().unwrap();
    }
    let mut q = open(dir.path());
    assert!(q.is_empty());
    assert_eq!(q.append(b"b").unwrap().seq, 2);
}

#[test]
fn garbage_files_and_a_damaged_ack_file_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = open(dir.path());
        q.append(b"a").unwrap();
        q.append(b"b").unwrap();
        q.ack_up_to(1).unwrap();
        q.commit().unwrap();
    }
    fs::write(dir.path().join("ack"), b"nonsense").unwrap();
    fs::write(dir.path().join("notes.txt"), b"hi").unwrap();
    fs::write(segment_path(dir.path(), 3), [0xffu8; 40]).unwrap();
    let q = open(dir.path());
    // The ack file is unreadable: redeliver from the oldest record.
    assert_eq!(seqs(&all(&q)), vec![1, 2]);
    assert_eq!(q.next_seq(), 3);
}

#[test]
fn group_commit_from_8_threads_makes_every_returned_seq_durable() {
    let dir = tempfile::tempdir().unwrap();
    let hook_max = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&hook_max);
    let gc = Arc::new(
        GroupCommit::start(
            open(dir.path()),
            GroupOptions {
                max_pending_bytes: 64 * 1024,
                on_durable: Some(Box::new(move |d| {
                    seen.fetch_max(d, Ordering::Relaxed);
                })),
            },
        )
        .unwrap(),
    );
    let mut handles = Vec::new();
    for t in 0..8u8 {
        let gc = Arc::clone(&gc);
        handles.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            for i in 0..10_000u32 {
                let mut p = vec![t];
                p.extend_from_slice(&i.to_le_bytes());
                let a = gc.append(&p).unwrap();
                gc.wait_durable(a.seq).unwrap();
                mine.push((a.seq, p));
            }
            mine
        }));
    }
    let mut expect: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for h in handles {
        expect.extend(h.join().unwrap());
    }
    assert_eq!(hook_max.load(Ordering::Relaxed), 80_000);
    assert_eq!(gc.durable_seq().unwrap(), 80_000);
    drop(gc);
    let q = open(dir.path());
    let got = all(&q);
    assert_eq!(got.len(), 80_000);
    for r in got {
        assert_eq!(expect.get(&r.seq), Some(&r.payload));
    }
}

#[test]
fn every_and_interval_modes_make_records_durable_on_their_schedule() {
    for mode in [
        FlushMode::Every,
        FlushMode::Interval(Duration::from_millis(20)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.flush = mode;
        let gc =
            GroupCommit::start(SegmentQueue::open(c).unwrap(), GroupOptions::default()).unwrap();
        let a = gc.append(b"one").unwrap();
        if mode == FlushMode::Every {
            assert_eq!(gc.durable_seq().unwrap(), a.seq);
        }
        assert_eq!(gc.wait_durable(a.seq).unwrap(), 1);
        gc.append(b"two").unwrap();
        assert_eq!(gc.flush().unwrap(), 2);
        let got = gc.read(0, 10, 1 << 20).unwrap();
        assert_eq!(seqs(&got), vec![1, 2]);
        gc.ack_up_to(1).unwrap();
        gc.shutdown().unwrap();
        let q = open(dir.path());
        assert_eq!(seqs(&all(&q)), vec![2], "{mode:?}");
    }
}

#[test]
fn group_commit_persists_acks_and_pending_records_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.flush = FlushMode::Interval(Duration::from_secs(3600));
    let gc = GroupCommit::start(SegmentQueue::open(c).unwrap(), GroupOptions::default()).unwrap();
    for _ in 0..3 {
        gc.append(b"x").unwrap();
    }
    gc.flush().unwrap();
    gc.append(b"y").unwrap();
    gc.ack(1).unwrap();
    assert!(matches!(
        gc.wait_durable(99),
        Err(QueueError::UnknownSeq { .. })
    ));
    drop(gc);
    let q = open(dir.path());
    assert_eq!(seqs(&all(&q)), vec![2, 3, 4]);
}

/// One step of the model check.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Commit,
    AckUpTo(u64),
    Ack(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Append),
        2 => Just(Op::Commit),
        1 => any::<u64>().prop_map(Op::AckUpTo),
        2 => any::<u64>().prop_map(Op::Ack),
        1 => Just(Op::Reopen),
    ]
}

/// A record in the model.
#[derive(Debug, Clone)]
struct ModelRec {
    payload: Vec<u8>,
    committed: bool,
    acked: bool,
}

fn check_against_model(ops: Vec<Op>, ack_every: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.segment_bytes = 4096;
    c.ack_persist_every = ack_every;
    let mut q = SegmentQueue::open(c.clone()).unwrap();
    let mut recs: BTreeMap<u64, ModelRec> = BTreeMap::new();
    // Lower bound of the persisted cursor: its value at the last commit.
    let mut persisted_lb = 0u64;
    let through = |recs: &BTreeMap<u64, ModelRec>, next: u64| {
        recs.iter()
            .find(|(_, r)| !r.acked)
            .map_or(next - 1, |(&s, _)| s - 1)
    };
    for op in ops {
        match op {
            Op::Append(p) => {
                let a = q.append(&p).unwrap();
                prop_assert!(!recs.contains_key(&a.seq));
                recs.insert(
                    a.seq,
                    ModelRec {
                        payload: p,
                        committed: false,
                        acked: false,
                    },
                );
            }
            Op::Commit => {
                q.commit().unwrap();
                for r in recs.values_mut() {
                    r.committed = true;
                }
                persisted_lb = through(&recs, q.next_seq());
            }
            Op::AckUpTo(x) => {
                let s = x % q.next_seq();
                if s == 0 {
                    continue;
                }
                q.ack_up_to(s).unwrap();
                for (_, r) in recs.range_mut(..=s) {
                    r.acked = true;
                }
            }
            Op::Ack(x) => {
                let s = x % q.next_seq();
                if s == 0 {
                    continue;
                }
                q.ack(s).unwrap();
                if let Some(r) = recs.get_mut(&s) {
                    r.acked = true;
                }
            }
            Op::Reopen => {
                let th = through(&recs, q.next_seq());
                drop(q);
                q = SegmentQueue::open(c.clone()).unwrap();
                let got = all(&q);
                let present: BTreeMap<u64, Vec<u8>> =
                    got.into_iter().map(|r| (r.seq, r.payload)).collect();
                let mut lowest_maybe_present = None;
                for (&s, r) in &recs {
                    let here = present.get(&s);
                    if !r.committed {
                        prop_assert!(here.is_none(), "uncommitted {} came back", s);
                    } else if s > th {
                        prop_assert_eq!(here, Some(&r.payload), "committed {} lost", s);
                    } else if s <= persisted_lb {
                        prop_assert!(here.is_none(), "acked {} came back", s);
                    } else if here.is_some() {
                        // Acked but maybe not persisted: may come back, as a contiguous tail.
                        prop_assert_eq!(here, Some(&r.payload));
                        lowest_maybe_present.get_or_insert(s);
                    } else {
                        prop_assert!(lowest_maybe_present.is_none(), "hole at {}", s);
                    }
                }
                for s in present.keys() {
                    prop_assert!(recs.contains_key(s), "unknown seq {} appeared", s);
                }
                let max_committed = recs
                    .iter()
                    .filter(|(_, r)| r.committed)
                    .map(|(&s, _)| s)
                    .max()
                    .unwrap_or(0);
                prop_assert!(q.next_seq() > max_committed);
                recs = present
                    .into_iter()
                    .map(|(s, payload)| {
                        let r = ModelRec {
                            payload,
                            committed: true,
                            acked: false,
                        };
                        (s, r)
                    })
                    .collect();
                persisted_lb = through(&recs, q.next_seq());
            }
        }
        let expect: Vec<u64> = recs
            .iter()
            .filter(|(_, r)| !r.acked)
            .map(|(&s, _)| s)
            .collect();
        let got = all(&q);
        prop_assert_eq!(seqs(&got), expect.clone());
        prop_assert_eq!(q.len(), expect.len() as u64);
        for r in &got {
            prop_assert_eq!(&recs[&r.seq].payload, &r.payload);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_appends_commits_acks_and_reopens_match_a_model(
        ops in proptest::collection::vec(op(), 1..120),
        ack_every in 1u64..6,
    ) {
        check_against_model(ops, ack_every)?;
    }
}
