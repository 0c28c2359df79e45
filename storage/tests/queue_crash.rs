//! Crash test of the queue: a child process (this test binary, re-executed) appends and commits
//! in a loop and prints every durable seq; the parent kills it with SIGKILL at random moments,
//! reopens the queue and checks that no record the child saw become durable is missing, and
//! that what is there is in order and intact.
//!
//! A `kill -9` leaves the page cache alone, so this proves recovery (torn tails, the cursor,
//! segment deletion) and the commit protocol, not `fdatasync` against a power cut; that needs
//! the VM test described in DESIGN.md.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_storage::queue::{QueueConfig, SegmentQueue};

const CHILD_ENV: &str = "HOLDFAST_QUEUE_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "child_appends_and_commits_until_killed";

fn config(dir: &str) -> QueueConfig {
    let mut c = QueueConfig::new(dir);
    c.segment_bytes = 64 * 1024;
    c.max_bytes = 1 << 30;
    c.ack_persist_every = 100;
    c
}

/// Payload for a seq: the seq, then filler derived from it, so content can be checked.
fn payload(seq: u64) -> Vec<u8> {
    let mut p = seq.to_le_bytes().to_vec();
    p.extend((0..(seq % 50) as u8).map(|i| i ^ seq as u8));
    p
}

/// The child: does nothing unless started by the parent with the queue directory in the env.
#[test]
fn child_appends_and_commits_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut q = SegmentQueue::open(config(&dir)).expect("child opens the queue");
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    loop {
        n += 1;
        for _ in 0..(n % 13 + 1) {
            let seq = q.next_seq();
            q.append(&payload(seq)).expect("child appends");
        }
        let d = q.commit().expect("child commits");
        writeln!(out, "durable {d}")
            .and_then(|()| out.flush())
            .expect("child prints");
        // Acknowledge the old part now and then, so segments get deleted and the cursor moves.
        if n.is_multiple_of(50) && d > 2000 {
            let a = d - 2000;
            writeln!(out, "ack {a}")
                .and_then(|()| out.flush())
                .expect("child prints");
            q.ack_up_to(a).expect("child acks");
        }
    }
}

/// A small xorshift, seeded from the clock: the kill moments differ from run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn no_durable_record_is_lost_across_ten_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut durable_max = 0u64;
    let mut acked_max = 0u64;
    for round in 0..10 {
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir_s)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.ends_with('\n') {
                    sink.lock().unwrap().push(line.trim_end().to_string());
                }
                line.clear();
            }
        });
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_round = 0;
        for line in lines.lock().unwrap().iter() {
            if let Some(d) = line.strip_prefix("durable ") {
                durable_max = durable_max.max(d.parse().unwrap());
                this_round += 1;
            } else if let Some(a) = line.strip_prefix("ack ") {
                acked_max = acked_max.max(a.parse().unwrap());
            }
        }
        assert!(this_round > 0, "round {round}: the child printed nothing");

        let q = SegmentQueue::open(config(&dir_s)).unwrap();
        let records = q.read(0, usize::MAX, usize::MAX).unwrap();
        let first = records.first().map_or(u64::MAX, |r| r.seq);
        assert!(
            first <= acked_max + 1,
            "round {round}: records {}..={first} lost (acked up to {acked_max})",
            acked_max + 1
        );
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, first + i as u64, "round {round}: hole or reorder");
            assert_eq!(
                r.payload,
                payload(r.seq),
                "round {round}: seq {} damaged",
                r.seq
            );
        }
        let last = records.last().map_or(0, |r| r.seq);
        assert!(
            last >= durable_max,
            "round {round}: durable seq {durable_max} printed, only {last} on disk"
        );
        assert_eq!(q.corrupt_records_skipped(), 0, "round {round}");
        eprintln!(
            "round {round}: durable up to {durable_max}, acked up to {acked_max}, \
             {} records on disk from {first}",
            records.len()
        );
    }
}
