//! The broker's resident memory, read from `/proc/{pid}/status` (VmRSS), once or sampled.
//!
//! Owns the sampling task. It never fails the run: a broker process that disappears is
//! reported as `gone` (that is a crash worth telling), an unreadable file as no samples.

use std::io;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the sampler looks.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// VmRSS of `pid` in KB.
pub(crate) fn read_rss_kb(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

/// Finds "VmRSS:   1234 kB" in a status file.
fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the sampler saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct RssStats {
    /// First sample, KB.
    pub(crate) start_kb: Option<u64>,
    /// Largest sample, KB.
    pub(crate) max_kb: Option<u64>,
    /// Last sample, KB.
    pub(crate) end_kb: Option<u64>,
    /// Samples taken.
    pub(crate) samples: u64,
    /// The process was seen once and then could no longer be read: it exited or crashed.
    pub(crate) gone: bool,
}

/// A running sampler; `finish` stops it and returns what it saw.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<RssStats>,
}

impl RssSampler {
    /// Starts sampling `pid` now and every `SAMPLE_EVERY`.
    pub(crate) fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut stats = RssStats::default();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                sample(pid, &mut stats);
            }
            sample(pid, &mut stats);
            stats
        });
        RssSampler { stop, task }
    }

    /// Takes a last sample and returns the statistics.
    pub(crate) async fn finish(self) -> RssStats {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

fn sample(pid: u32, stats: &mut RssStats) {
    match read_rss_kb(pid) {
        Ok(kb) => {
            stats.start_kb.get_or_insert(kb);
            stats.max_kb = Some(stats.max_kb.map_or(kb, |m| m.max(kb)));
            stats.end_kb = Some(kb);
            stats.samples += 1;
        }
        Err(_) if stats.samples > 0 => stats.gone = true,
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_is_read_from_a_status_file() {
        let status = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    5432 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(status), Some(5432));
    }

    #[test]
    fn our_own_rss_is_readable() {
        assert!(read_rss_kb(std::process::id()).unwrap() > 0);
    }
}
