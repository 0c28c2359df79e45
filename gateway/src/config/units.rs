//! Human-readable sizes ("256MB") and durations ("15s") as written in the config file.
//!
//! Also EMQX's `"rate,burst"` pairs for per-client token buckets.
//!
//! Owns only the small parsers and their inverse formatting for error messages; it never
//! decides what range a setting may take (that is `validate`'s job).

use std::num::NonZeroU64;
use std::time::Duration;

use super::RateLimit;

/// One kibibyte. The config's "KB" is 1024 bytes, as in EMQX's config ("1KB" = 1024).
const KB: u64 = 1024;

/// Parses a size: a whole number of bytes, optionally followed by a unit
/// (`B`, `KB`, `MB`, `GB`, case-insensitive, binary multiples; `K`/`M`/`G` and `KiB`/`MiB`/`GiB`
/// are accepted as aliases). "512B", "64KB", "1MB", "2 GB" and "4096" are all sizes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, rest) = trimmed.split_at(digits_end);
    let unit = rest.trim_start();
    if digits.is_empty() || unit.starts_with('.') || unit.starts_with(',') {
        return Err(format!(
            "{text:?} is not a size: use a whole number with an optional unit, e.g. \"512B\", \"64KB\", \"1MB\""
        ));
    }
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KB,
        "m" | "mb" | "mib" => KB * KB,
        "g" | "gb" | "gib" => KB * KB * KB,
        _ => {
            return Err(format!(
                "{text:?} has an unknown size unit {unit:?}: use B, KB, MB or GB"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// What the tokens of a [`RateLimit`] count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateUnit {
    /// Messages: plain whole numbers ("1000,2000").
    Messages,
    /// Bytes: sizes with an optional unit ("1MB,2MB").
    Bytes,
}

/// Parses EMQX's `"rate,burst"` (per second; `"rate"` alone means burst = rate). Both must be
/// at least 1.
pub(crate) fn parse_rate(text: &str, unit: RateUnit) -> Result<RateLimit, String> {
    let example = match unit {
        RateUnit::Messages => "\"1000,2000\"",
        RateUnit::Bytes => "\"1MB,2MB\"",
    };
    let mut parts = text.split(',');
    let rate = parts.next().unwrap_or_default();
    let burst = parts.next().unwrap_or(rate);
    if parts.next().is_some() {
        return Err(format!(
            "{text:?} is not \"rate,burst\": expected at most one comma, e.g. {example}"
        ));
    }
    let number = |part: &str| -> Result<NonZeroU64, String> {
        let part = part.trim();
        let value = match unit {
            RateUnit::Messages => part.parse::<u64>().map_err(|_| {
                format!("{text:?} is not \"rate,burst\": {part:?} is not a whole number, e.g. {example}")
            })?,
            RateUnit::Bytes => parse_size(part)
                .map_err(|e| format!("{text:?} is not \"rate,burst\": {e}"))?,
        };
        NonZeroU64::new(value).ok_or_else(|| {
            format!("{text:?}: rate and burst must be at least 1 (leave the key out for no limit)")
        })
    };
    Ok(RateLimit {
        rate: number(rate)?,
        burst: number(burst)?,
    })
}

/// Formats a byte count the way a person would write it in the config: the largest unit that
/// divides it exactly ("1MB", "1536KB", "100B").
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GB", KB * KB * KB), ("MB", KB * KB), ("KB", KB)] {
        if bytes >= size && bytes.checked_rem(size) == Some(0) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Parses a duration: one or more whole numbers each followed by a unit
/// (`ms`, `s`, `m`, `h`, `d`), e.g. "500ms", "15s", "1m", "2h", "1h30m". A bare number is
/// rejected because "15" could mean seconds or milliseconds and a wrong guess is silent.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let example = "use e.g. \"500ms\", \"15s\", \"1m\", \"2h\"";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("{text:?} is not a duration: {example}"));
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(format!("{text:?} is not a duration: {example}"));
        }
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if after.starts_with('.') => {
                return Err(format!(
                    "{text:?} is not a duration: use whole numbers, e.g. \"1500ms\" rather than \"1.5s\""
                ))
            }
            "" => return Err(format!("{text:?} has no unit: {example}")),
            other => {
                return Err(format!(
                    "{text:?} has an unknown duration unit {other:?}: use ms, s, m, h or d"
                ))
            }
        };
        let part = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        total_ms = total_ms
            .checked_add(part)
            .ok_or_else(|| format!("{text:?} is too long"))?;
        rest = after.trim_start();
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the config's own notation ("2h", "15s", "500ms", "1h30m").
pub(crate) fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// The `host[:port]` part of a URL-like address (`[v6]:port` for IPv6), with `default_port`
/// when it names none; `text` is the whole value, for the messages.
pub(crate) fn parse_authority(
    text: &str,
    authority: &str,
    default_port: u16,
) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("{text:?}: unclosed '[' in the host"));
        };
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!("{text:?}: invalid text after the IPv6 address"));
        }
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '?', '[', ']']) {
        return Err(format!("{text:?}: missing or invalid host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("{text:?}: port must be 1..65535")),
        },
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_units_and_plain_byte_counts() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1KB"), Ok(1024));
        assert_eq!(parse_size("1kb"), Ok(1024));
        assert_eq!(parse_size("256MB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("2 GB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn sizes_reject_garbage_fractions_unknown_units_and_overflow() {
        for bad in ["", "MB", "abc", "1.5MB", "12XB", "-1KB", "1 MB extra"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        let err = parse_size("99999999999999999999GB").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let err = parse_size("12XB").unwrap_err();
        assert!(err.contains("unknown size unit"), "{err}");
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        assert_eq!(format_size(1024 * 1024), "1MB");
        assert_eq!(format_size(1536 * 1024), "1536KB");
        assert_eq!(format_size(100), "100B");
        assert_eq!(format_size(0), "0B");
    }

    #[test]
    fn durations_accept_each_unit_and_compounds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_reject_bare_numbers_fractions_unknown_units_and_overflow() {
        for bad in ["", "15", "s", "1.5s", "10y", "-1s", "5 s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(parse_duration("10y")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_duration("99999999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn durations_format_back_to_config_notation() {
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
