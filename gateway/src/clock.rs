//! Persisted time that survives a clock correction.
//!
//! Everything the gateway writes to disk with a wall-clock time (a session's disconnect time,
//! a message's expiry) is written in one timeline, the *persisted frame*: fixed at start, then
//! advancing with the monotonic clock, so a correction of the wall clock while the gateway
//! runs does not move it either (the jump is logged once). Boards without a real-time clock boot at 1970 or at the image's
//! build date and are corrected by NTP minutes later, often by years; a timestamp taken before
//! the correction and one taken after would otherwise say that years went by, and every
//! persistent session, queued and retained message would be discarded as expired.
//!
//! At start the frame continues from the last time the data directory saw
//! (`{data_dir}/clock`, written every minute and at shutdown): when the clock was synchronized
//! then and is now, and has not gone backwards, the downtime is the real one; otherwise the
//! gateway cannot know how long it was down and counts it as zero, saying so in one log line.
//! While running, expiry is monotonic (`Instant`) and never looks at the wall clock.
//!
//! Owns the rule ([`continue_frame`], pure), the mark file and the process-wide offset. Never
//! changes the system clock.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The frame at start: (when, frame time then). Unset in unit tests, where the frame is the
/// real clock.
static FRAME_START: OnceLock<(Instant, u64)> = OnceLock::new();

/// The last wall-clock jump seen while running: its size (ms, positive forward) and when
/// (real Unix ms, after it); 0/0 when none.
static LAST_JUMP: std::sync::Mutex<(i64, u64)> = std::sync::Mutex::new((0, 0));

/// Whether the clock counted as synchronized at the last check (start, then every second):
/// what timestamps we publish carry as `ts_synced`, without a system call per event.
static SYNCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The mark file's name under the data directory.
const FILE_NAME: &str = "clock";

/// How the gateway decides whether its wall clock can be trusted (`node.clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockTrust {
    /// Ask the kernel (`adjtimex`: synchronized by NTP, PTP or GPS, or not).
    #[default]
    Auto,
    /// Always right (a board with a battery-backed RTC and no time service).
    Synchronized,
    /// Never trusted across a restart (no RTC, no time service): downtime always counts as
    /// zero.
    Unreliable,
}

impl ClockTrust {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockTrust::Auto => "auto",
            ClockTrust::Synchronized => "synchronized",
            ClockTrust::Unreliable => "unreliable",
        }
    }

    /// Whether the clock counts as synchronized now.
    pub fn synchronized_now(self) -> bool {
        match self {
            ClockTrust::Auto => holdfast_board::clock::kernel_clock_synchronized().unwrap_or(false),
            ClockTrust::Synchronized => true,
            ClockTrust::Unreliable => false,
        }
    }
}

/// A moment as the data directory recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The persisted frame's time then (Unix ms).
    pub frame_ms: u64,
    /// The real clock then (Unix ms).
    pub real_ms: u64,
    /// Whether the clock counted as synchronized then.
    pub synced: bool,
}

/// How the frame goes on after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    /// The frame's time now.
    pub frame_now_ms: u64,
    /// Why the downtime was counted as zero, when it was (for the one log line).
    pub zero_downtime_because: Option<String>,
}

/// The downtime rule: continue the frame from `then` (the last mark, if any) given the real
/// clock `real_now_ms` and whether it is synchronized now.
pub fn continue_frame(then: Option<Mark>, real_now_ms: u64, synced_now: bool) -> Continuation {
    let Some(then) = then else {
        // A fresh data directory (or one from before marks): the frame starts as the clock.
        return Continuation {
            frame_now_ms: real_now_ms,
            zero_downtime_because: None,
        };
    };
    let why = if !then.synced && !synced_now {
        Some("the clock was not synchronized when the state was written and is not now")
    } else if !then.synced {
        Some("the clock was not synchronized when the state was written")
    } else if !synced_now {
        Some("the clock is not synchronized now")
    } else if real_now_ms < then.real_ms {
        Some("the clock reads earlier than the last time the data directory saw")
    } else {
        None
    };
    match why {
        // Real downtime: the frame advances by it.
        None => Continuation {
            frame_now_ms: then.frame_ms.saturating_add(real_now_ms - then.real_ms),
            zero_downtime_because: None,
        },
        // Unknown downtime: the frame resumes where it stopped.
        Some(why) => Continuation {
            frame_now_ms: then.frame_ms,
            zero_downtime_because: Some(format!(
                "{why} (it read {} then, {} now)",
                iso(then.real_ms),
                iso(real_now_ms)
            )),
        },
    }
}

/// The real clock as Unix milliseconds (0 before 1970).
pub fn real_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now in the persisted frame: what every stored wall-clock time is written and read in.
pub fn frame_now_ms() -> u64 {
    match FRAME_START.get() {
        Some((at, frame)) => {
            let elapsed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            frame.saturating_add(elapsed)
        }
        None => real_now_ms(),
    }
}

/// How far the wall clock has moved from the frame since start (positive: ahead), in ms: a
/// correction while running, for the log.
pub fn wall_clock_drift_ms() -> i64 {
    signed(real_now_ms()) - signed(frame_now_ms())
}

/// Whether the clock counted as synchronized at the last [`refresh`] (cheap: no system call).
pub fn synchronized() -> bool {
    SYNCED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks again whether the clock is synchronized (the broker's one-second tick calls it).
pub fn refresh(trust: ClockTrust) {
    SYNCED.store(
        trust.synchronized_now(),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Wall-clock jumps seen while running.
static JUMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Notes a wall-clock jump of `size_ms` seen while running (for `$SYS` and the stats).
pub fn note_jump(size_ms: i64) {
    JUMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut j) = LAST_JUMP.lock() {
        *j = (size_ms, real_now_ms());
    }
}

/// How many wall-clock jumps were seen while running.
pub fn jumps() -> u64 {
    JUMPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The clock's state for `$SYS/brokers/{node}/clock` and `holdfast ctl stats`.
pub fn state_json(trust: ClockTrust) -> serde_json::Value {
    let (jump_ms, jump_at) = LAST_JUMP.lock().map_or((0, 0), |j| *j);
    serde_json::json!({
        "synchronized": trust.synchronized_now(),
        "trust": trust.as_str(),
        "now": iso(real_now_ms()),
        "last_jump_ms": (jump_at != 0).then_some(jump_ms),
        "last_jump_at": (jump_at != 0).then(|| iso(jump_at)),
    })
}

/// Where the mark of `data_dir` is kept.
pub fn mark_path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the last mark of `data_dir`; `None` when there is none or it is damaged (logged).
pub fn read_mark(data_dir: &Path) -> Option<Mark> {
    let path = mark_path(data_dir);
    let text = std::fs::read_to_string(&path).ok()?;
    let mark = parse_mark(&text);
    if mark.is_none() {
        tracing::warn!(path = %path.display(), "damaged clock mark ignored");
    }
    mark
}

fn parse_mark(text: &str) -> Option<Mark> {
    let mut lines = text.lines();
    if lines.next()? != "holdfast-clock 1" {
        return None;
    }
    let mut fields = lines.next()?.split_whitespace();
    let frame_ms = fields.next()?.parse().ok()?;
    let real_ms = fields.next()?.parse().ok()?;
    let synced = match fields.next()? {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    Some(Mark {
        frame_ms,
        real_ms,
        synced,
    })
}

/// Records now as the last time `data_dir` saw (the file replaced whole).
pub fn write_mark(data_dir: &Path, trust: ClockTrust) -> std::io::Result<()> {
    let text = format!(
        "holdfast-clock 1\n{} {} {}\n",
        frame_now_ms(),
        real_now_ms(),
        u8::from(trust.synchronized_now())
    );
    crate::file_replace::replace(&mark_path(data_dir), text.as_bytes())
}

/// Records now as the last time `data_dir` saw; a failure is logged, not fatal (the next
/// start then counts a longer downtime, never a shorter one).
pub fn note(data_dir: &Path, trust: ClockTrust) {
    if let Err(e) = write_mark(data_dir, trust) {
        tracing::warn!(path = %mark_path(data_dir).display(), error = %e, "cannot record the clock mark");
    }
}

/// At start, before any state is restored: continues the persisted frame from the data
/// directory's last mark and logs, once, when the downtime had to count as zero.
pub fn start(data_dir: &Path, trust: ClockTrust) {
    let then = read_mark(data_dir);
    let synced = trust.synchronized_now();
    SYNCED.store(synced, std::sync::atomic::Ordering::Relaxed);
    let c = continue_frame(then, real_now_ms(), synced);
    // Set once per process (a second gateway in one process keeps the first frame).
    let _ = FRAME_START.set((Instant::now(), c.frame_now_ms));
    if let Some(why) = c.zero_downtime_because {
        tracing::warn!(
            clock = trust.as_str(),
            frame = %iso(c.frame_now_ms),
            "cannot tell how long the gateway was down: {why}; counting the downtime as zero, so no stored session or message expires because the clock moved"
        );
    } else if then.is_some() {
        tracing::debug!(
            clock = trust.as_str(),
            synchronized = synced,
            "clock trusted: stored times count the real downtime"
        );
    }
}

fn signed(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A Unix-ms time as an RFC 3339 UTC string (seconds), for log lines.
pub fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const YEARS_2: u64 = 2 * 365 * 24 * HOUR;
    /// 2025-01-01T00:00:00Z.
    const T: u64 = 1_735_689_600_000;

    fn mark(frame_ms: u64, real_ms: u64, synced: bool) -> Mark {
        Mark {
            frame_ms,
            real_ms,
            synced,
        }
    }

    /// Where the frame stands right after the restart.
    fn frame_at(c: &Continuation, _real_now: u64) -> u64 {
        c.frame_now_ms
    }

    #[test]
    fn both_ends_synchronized_count_the_real_downtime() {
        let c = continue_frame(Some(mark(T, T, true)), T + HOUR, true);
        assert_eq!(c.zero_downtime_because, None);
        assert_eq!(frame_at(&c, T + HOUR), T + HOUR);
        // A frame already offset by an earlier correction keeps its offset.
        let c = continue_frame(Some(mark(T + 5, T, true)), T + HOUR, true);
        assert_eq!(frame_at(&c, T + HOUR), T + HOUR + 5);
    }

    #[test]
    fn any_end_unsynchronized_counts_zero_downtime_whichever_way_the_clock_moved() {
        for (synced_then, synced_now) in [(false, false), (false, true), (true, false)] {
            for real_now in [T + YEARS_2, T - YEARS_2, T + HOUR, T] {
                let c = continue_frame(Some(mark(T, T, synced_then)), real_now, synced_now);
                assert!(
                    c.zero_downtime_because.is_some(),
                    "{synced_then} {synced_now}"
                );
                assert_eq!(
                    frame_at(&c, real_now),
                    T,
                    "the frame resumes where it stopped"
                );
            }
        }
    }

    #[test]
    fn a_synchronized_clock_that_went_backwards_counts_zero_downtime() {
        let c = continue_frame(Some(mark(T, T, true)), T - YEARS_2, true);
        let why = c.zero_downtime_because.clone().unwrap();
        assert!(why.contains("earlier"), "{why}");
        assert!(why.contains("2025-01-01T00:00:00Z"), "{why}");
        assert_eq!(frame_at(&c, T - YEARS_2), T);
    }

    #[test]
    fn a_fresh_data_directory_starts_the_frame_at_the_clock() {
        let c = continue_frame(None, T, false);
        assert_eq!((c.frame_now_ms, c.zero_downtime_because), (T, None));
    }

    #[test]
    fn marks_round_trip_and_damaged_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_mark(dir.path()), None);
        write_mark(dir.path(), ClockTrust::Unreliable).unwrap();
        let m = read_mark(dir.path()).unwrap();
        assert!(!m.synced);
        assert!(m.real_ms > T);
        std::fs::write(mark_path(dir.path()), "holdfast-clock 1\nx y z\n").unwrap();
        assert_eq!(read_mark(dir.path()), None);
        assert_eq!(
            parse_mark("holdfast-clock 1\n5 6 1\n"),
            Some(mark(5, 6, true))
        );
    }
}
