//! Queue benchmark: durable ingest with group commit from 1, 10 and 100 threads (appends/s,
//! p99 append-to-durable latency, write amplification from /proc/self/io), then draining 1M
//! queued 64-byte records (read + ack).
//!
//! `cargo run --release -p holdfast-storage --example queue_bench [-- DIR]`; DIR defaults to a
//! temporary directory under `target/` (on the real disk: `/tmp` may be tmpfs, where fsync is
//! free and the numbers lie).

use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_storage::queue::{GroupCommit, GroupOptions, QueueConfig, SegmentQueue};

const PAYLOAD: usize = 64;

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// KiB the whole ext4 file system holding `dir` has written since it was mounted, journal
/// included (which `/proc/self/io` does not see: jbd2 writes it). File-system wide, so anything
/// else writing to the same disk at the same time inflates it; `None` when not on ext4.
fn fs_write_kbytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let name = link.file_name()?.to_str()?.to_owned();
    std::fs::read_to_string(format!("/sys/fs/ext4/{name}/lifetime_write_kbytes"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

fn config(dir: &std::path::Path) -> QueueConfig {
    let mut c = QueueConfig::new(dir);
    c.max_bytes = 1 << 30;
    c
}

fn ingest(base: &std::path::Path, threads: usize, run_for: Duration) {
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let q = SegmentQueue::open(config(dir.path())).expect("open");
    let gc = Arc::new(GroupCommit::start(q, GroupOptions::default()).expect("start"));
    let before = write_bytes();
    let fs_before = fs_write_kbytes(dir.path());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let gc = Arc::clone(&gc);
            std::thread::spawn(move || {
                let payload = [t as u8; PAYLOAD];
                let mut lat = Vec::new();
                while start.elapsed() < run_for {
                    let t0 = Instant::now();
                    let a = gc.append(&payload).expect("append");
                    gc.wait_durable(a.seq).expect("durable");
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("producer"))
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let written = write_bytes() - before;
    let fs_written = fs_before
        .zip(fs_write_kbytes(dir.path()))
        .map(|(a, b)| (b - a) * 1024);
    let stats = gc.stats().expect("stats");
    drop(gc);
    lat.sort_unstable();
    let n = lat.len();
    let p = |q: f64| lat[((n as f64 * q) as usize).min(n - 1)];
    let payload_bytes = (n * PAYLOAD) as f64;
    println!(
        "group commit, {threads:>3} threads: {:>9.0} appends/s durable, p50 {:>7.2} ms, p99 {:>7.2} ms, \
         write amplification {:.2}x (fs-wide incl. journal {}) ({} records, {} disk bytes, {} segments)",
        n as f64 / secs,
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        written as f64 / payload_bytes,
        fs_written.map_or("n/a".to_owned(), |b| format!("{:.2}x", b as f64 / payload_bytes)),
        n,
        written,
        stats.segments,
    );
}

fn drain(base: &std::path::Path, records: u64) {
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let mut q = SegmentQueue::open(config(dir.path())).expect("open");
    let payload = [7u8; PAYLOAD];
    let t0 = Instant::now();
    for i in 0..records {
        q.append(&payload).expect("append");
        if i % 10_000 == 9_999 {
            q.commit().expect("commit");
        }
    }
    q.commit().expect("commit");
    let fill = t0.elapsed().as_secs_f64();
    // Reopen, so the drain starts from recovery like after a restart.
    drop(q);
    let t0 = Instant::now();
    let mut q = SegmentQueue::open(config(dir.path())).expect("reopen");
    let open = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        let batch = q.read(0, 1000, 1 << 20).expect("read");
        let Some(last) = batch.last() else { break };
        n += batch.len() as u64;
        q.ack_up_to(last.seq).expect("ack");
    }
    q.commit().expect("final ack persist");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, records);
    println!(
        "backlog of {records} x {PAYLOAD} B: filled at {:.0} rec/s (commit every 10k), reopened in {:.0} ms, \
         drained (read 1000 + ack_up_to) at {:.0} rec/s ({:.2} s), {} segments left",
        records as f64 / fill,
        open * 1e3,
        n as f64 / secs,
        secs,
        q.stats().segments,
    );
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target/queue-bench"));
    std::fs::create_dir_all(&base).expect("bench base dir");
    for threads in [1, 10, 100] {
        ingest(&base, threads, Duration::from_secs(5));
    }
    drain(&base, 1_000_000);
}
