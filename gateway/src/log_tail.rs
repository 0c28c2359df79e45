//! The recent log, kept in memory for the web UI's live tail: the same lines the console
//! shows (same level filter), without colours, each numbered so a reader asks for the lines
//! after the last one it has.
//!
//! Owns a process-wide ring of at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes (a line is
//! cut at [`MAX_LINE`] bytes); the oldest go first. Writing a line takes one short lock and
//! never blocks on a reader; it never writes to the flash.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// Lines kept.
pub const MAX_LINES: usize = 2000;
/// Bytes kept (the line texts).
pub const MAX_BYTES: usize = 512 * 1024;
/// Longest line kept; the rest is cut.
pub const MAX_LINE: usize = 4096;

/// The ring.
#[derive(Debug)]
struct Ring {
    lines: VecDeque<(u64, String)>,
    bytes: usize,
    next: u64,
}

/// `next` starts at the process's start time in microseconds (0 until the first use), so the
/// numbers go on rising across a restart in place and a reader's old number reads as "lines
/// left out", not as "nothing new".
static RING: Mutex<Ring> = Mutex::new(Ring {
    lines: VecDeque::new(),
    bytes: 0,
    next: 0,
});

fn ring() -> std::sync::MutexGuard<'static, Ring> {
    let mut r = RING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if r.next == 0 {
        r.next = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(1).max(1));
    }
    r
}

/// Keeps one event's `line` (without its final newline). Control characters inside it (a
/// client id with a newline) are escaped: one event is one line, never a forged second one.
pub fn push(line: &str) {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut text = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    if text.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    let mut r = ring();
    let seq = r.next;
    r.next += 1;
    r.bytes += text.len();
    r.lines.push_back((seq, text));
    while r.lines.len() > MAX_LINES || r.bytes > MAX_BYTES {
        match r.lines.pop_front() {
            Some((_, old)) => r.bytes -= old.len(),
            None => break,
        }
    }
}

/// One kept line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Line {
    /// Its number (one more than the line before, since the start).
    pub seq: u64,
    /// The text, without colours or a newline.
    pub text: String,
}

/// What a reader gets: the lines after its last one, and where to go on from.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Tail {
    /// The lines, oldest first.
    pub lines: Vec<Line>,
    /// The number to ask after next time.
    pub last: u64,
    /// True when lines between the reader's last one and the first here were left out (it
    /// fell behind, asked for fewer, or its number is from before a restart).
    pub gap: bool,
}

/// At most `limit` lines numbered above `after`, oldest first (the newest `limit` when more
/// are there: a tail, not a history). A number past the newest line (from before a restart)
/// starts over.
pub fn after(after: u64, limit: usize) -> Tail {
    let r = ring();
    let newest = r.next - 1;
    let (after, restarted) = if after > newest {
        (0, true)
    } else {
        (after, false)
    };
    let newer: Vec<&(u64, String)> = r.lines.iter().filter(|(n, _)| *n > after).collect();
    let skip = newer.len().saturating_sub(limit);
    let first = newer.get(skip).map(|(n, _)| *n);
    let lines: Vec<Line> = newer
        .into_iter()
        .skip(skip)
        .map(|(seq, text)| Line {
            seq: *seq,
            text: text.clone(),
        })
        .collect();
    Tail {
        gap: restarted || skip > 0 || (after > 0 && first.is_some_and(|f| f > after + 1)),
        last: lines.last().map_or(after, |l| l.seq),
        lines,
    }
}

/// The writer the log layer formats into: each `write` is one or more whole lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct TailWriter;

impl Write for TailWriter {
    /// The log layer writes one event per call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if !text.trim().is_empty() {
            push(&text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TailWriter {
    type Writer = TailWriter;

    fn make_writer(&'a self) -> TailWriter {
        TailWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the ring is process-wide.
    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_bounds_and_says_when_a_reader_fell_behind() {
        let start = after(0, MAX_LINES).last;
        push("one\n");
        push("two");
        let t = after(start, 10);
        assert_eq!(
            t.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert!(!t.gap);
        let t2 = after(t.last, 10);
        assert!(t2.lines.is_empty());
        assert_eq!(t2.last, t.last);
        for i in 0..MAX_LINES + 10 {
            push(&format!("line {i}"));
        }
        let behind = after(t.last, 5);
        assert!(behind.gap);
        assert_eq!(behind.lines.len(), 5);
        assert_eq!(behind.lines[4].text, format!("line {}", MAX_LINES + 9));
        push("client_id=evil\nINFO forged line");
        let one = after(behind.last, 10);
        assert_eq!(one.lines.len(), 1);
        assert_eq!(one.lines[0].text, "client_id=evil\\nINFO forged line");
        let past = after(u64::MAX, 1);
        assert!(past.gap, "a number from before a restart starts over");
        push(&"x".repeat(MAX_LINE * 3));
        let long = after(one.last, 1);
        assert!(long.lines[0].text.len() <= MAX_LINE + 3);
        let r = ring();
        assert!(r.lines.len() <= MAX_LINES && r.bytes <= MAX_BYTES);
        assert!(
            r.next > 1_700_000_000_000_000 / 1000,
            "numbers start at the start time (us)"
        );
    }
}
