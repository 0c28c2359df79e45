//! `kill -9` test of the sled key-value store: everything a flush acknowledged survives.
//!
//! The test re-executes its own binary as a child (selected with `--exact` and an environment
//! variable) that writes retained messages and pending messages, calls the durable `flush`, and
//! prints every key the flush covered. The parent SIGKILLs it at a random moment, reopens the
//! store and checks that every printed key is there, over 10 rounds on the same directory.
//!
//! A `kill -9` keeps the kernel's page cache, so this proves sled + our flush against process
//! death only; power loss needs the VM test (DESIGN.md).

use holdfast_storage::kv::{
    KvBackend, PendingState, RetainedStore, SessionStore, SledOptions, SledStore, StoredMessage,
    StoredPending, StoredProperties,
};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Set in the child: the database directory, and the round (so keys differ between rounds).
const CHILD_DIR_ENV: &str = "HOLDFAST_KV_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "HOLDFAST_KV_CRASH_CHILD_ROUND";
const CHILD_TEST: &str = "child_writes_and_flushes_retained_messages_until_killed";
const CLIENT: &str = "crash-client";
const ROUNDS: u64 = 10;

fn message(topic: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.to_owned(),
        payload: topic.as_bytes().repeat(8),
        qos: 1,
        retain: true,
        properties: StoredProperties::default(),
    }
}

fn seq(round: u64, i: u64) -> u64 {
    (round << 32) | i
}

fn open(dir: &Path) -> SledStore {
    let options = SledOptions {
        flush_every_ms: Some(20),
        ..SledOptions::default()
    };
    SledStore::open(dir, options).expect("open the store")
}

/// Not a test on its own: does nothing unless the parent test started this binary as its child.
#[test]
fn child_writes_and_flushes_retained_messages_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV)
        .expect("round")
        .parse()
        .expect("round is a number");
    let store = open(Path::new(&dir));
    let mut i = 0u64;
    loop {
        // A batch of 1 to 5 writes per flush, so kills land between writes as well as in flushes.
        let batch = 1 + i % 5;
        let first = i;
        for _ in 0..batch {
            let topic = format!("crash/{round}/{i}");
            store.put(&message(&topic)).expect("put");
            let p = StoredPending {
                seq: seq(round, i),
                message: message(&topic),
                qos: 1,
                packet_id: None,
                state: PendingState::Queued,
                subscription_id: None,
                more_subscription_ids: Vec::new(),
            };
            store.push_pending(CLIENT, &p).expect("push");
            i += 1;
        }
        store.flush().expect("flush");
        for k in first..i {
            // One write per line: stdout is line-buffered, and a line under PIPE_BUF is atomic.
            println!("flushed {round} {k}");
        }
    }
}

/// A small xorshift generator seeded from the OS (printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = RandomState::new().build_hasher().finish() | 1;
        eprintln!("kv_crash seed {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn every_flushed_retained_message_survives_kill_9_at_random_moments() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let dir = tmp.path().join("kv");
    let exe = std::env::current_exe().expect("own test binary");
    let mut rng = Rng::new();
    let mut flushed: Vec<(u64, u64)> = Vec::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, &dir)
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (first_tx, first_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut keys = Vec::new();
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut by the kill has no newline and proves nothing.
                let Some(rest) = line
                    .strip_suffix('\n')
                    .and_then(|l| l.strip_prefix("flushed "))
                else {
                    continue;
                };
                let mut parts = rest.split(' ').map(|p| p.parse::<u64>().expect("number"));
                let (Some(r), Some(k)) = (parts.next(), parts.next()) else {
                    panic!("malformed line {line:?}");
                };
                if keys.is_empty() {
                    let _ = first_tx.send(());
                }
                keys.push((r, k));
            }
            keys
        });

        // Wait until the child is writing, then kill it at a random moment.
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("round {round}: the child never flushed anything"));
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(
            !status.success(),
            "round {round}: the child exited by itself"
        );
        let keys = reader.join().expect("reader thread");
        assert!(!keys.is_empty());
        flushed.extend(keys);

        let store = open(&dir);
        let retained = store.load_all().expect("load retained");
        let pending = store.load_pending(CLIENT).expect("load pending");
        assert_eq!(store.corrupt_records_skipped(), 0, "round {round}");
        let topics: std::collections::HashSet<&str> =
            retained.iter().map(|m| m.topic.as_str()).collect();
        let seqs: std::collections::HashSet<u64> = pending.iter().map(|p| p.seq).collect();
        for &(r, k) in &flushed {
            let topic = format!("crash/{r}/{k}");
            assert!(
                topics.contains(topic.as_str()),
                "round {round}: flushed retained {topic} is missing"
            );
            assert!(
                seqs.contains(&seq(r, k)),
                "round {round}: flushed pending {r}/{k} is missing"
            );
        }
        for m in &retained {
            assert_eq!(m, &message(&m.topic), "round {round}: a record changed");
        }
        assert!(
            pending.windows(2).all(|w| w[0].seq < w[1].seq),
            "round {round}: pending out of order"
        );
        eprintln!(
            "round {round}: {} flushed keys so far, {} retained on disk",
            flushed.len(),
            retained.len()
        );
    }
}
