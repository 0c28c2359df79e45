//! The gateway's log output: the console layer (under journald, priorities an operator can
//! filter on), the trace layer that `holdfast ctl trace` feeds, and [`Every`], the rate limit
//! for lines that a fault would otherwise repeat many times a second.
//!
//! Under systemd with journald (`$JOURNAL_STREAM` names our stderr) every line starts with its
//! syslog priority as `<N>` (sd-daemon(3)): `journalctl -p err` then shows errors only, and
//! the journal's own timestamp is the only one. Elsewhere lines carry their timestamp and, on a
//! terminal, colours. It never blocks the gateway on a slow reader beyond what stderr does.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// Sets up logging at `level` (an `EnvFilter` directive; `RUST_LOG` wins when set).
pub fn init(level: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let console = if stderr_is_journal() {
        console
            .with_ansi(false)
            .event_format(JournalFormat::default())
            .with_filter(filter)
            .boxed()
    } else {
        console
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    // The web UI's live tail: the console's lines, by the same filter, kept in memory.
    let tail_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let tail = tracing_subscriber::fmt::layer()
        .with_writer(crate::log_tail::TailWriter)
        .with_ansi(false)
        .with_target(false)
        .with_filter(tail_filter);
    tracing_subscriber::registry()
        .with(console)
        .with(tail)
        .with(crate::trace::layer())
        .init();
}

/// True when stderr is the journal's stream: `$JOURNAL_STREAM` is `device:inode` of it
/// (systemd.exec(5)); compared, since a child may inherit the variable with another stderr.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

/// The syslog priority of a level, as journald reads it from a `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Lines for journald: `<N>` then the usual text, without a timestamp of our own.
#[derive(Debug)]
pub struct JournalFormat {
    inner: format::Format<format::Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> JournalFormat {
        JournalFormat {
            inner: format::Format::default().without_time().with_target(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Rate-limits a repeated log line: the first occurrence, then at most one per `period`,
/// each saying how many occurrences it stands for.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    /// At most one line per `period`.
    pub const fn new(period: Duration) -> Every {
        Every {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records one occurrence at `now`; returns how many occurrences the line should report
    /// when one is due.
    pub fn due(&self, now: Instant) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        s.1 += 1;
        if s.0.is_none_or(|t| now.duration_since(t) >= self.period) {
            let n = s.1;
            *s = (Some(now), 0);
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex as StdMutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<StdMutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_start_with_their_priority_and_carry_no_timestamp() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(Level::DEBUG)
            .event_format(JournalFormat::default())
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(listener = "tcp", "accept failed");
            tracing::warn!("degraded");
            tracing::info!(client_id = "dev-1", "client connected");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(out.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("<3>ERROR accept failed listener=\"tcp\""),
            "{text}"
        );
        assert!(lines[1].starts_with("<4> WARN degraded"), "{text}");
        assert!(
            lines[2].starts_with("<6> INFO client connected client_id=\"dev-1\""),
            "{text}"
        );
        assert!(lines[3].starts_with("<7>DEBUG detail"), "{text}");
        // No timestamp: the line is the priority, the level and the message.
        assert!(!text.contains("2026-") && !text.contains('Z'), "{text}");
    }

    #[test]
    fn a_repeated_line_is_logged_first_then_at_most_once_a_period_with_a_count() {
        let every = Every::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(every.due(t0), Some(1));
        assert_eq!(every.due(t0 + Duration::from_secs(1)), None);
        assert_eq!(every.due(t0 + Duration::from_secs(9)), None);
        assert_eq!(every.due(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(every.due(t0 + Duration::from_secs(11)), None);
    }
}
