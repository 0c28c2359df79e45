//! Serial line timing for Modbus RTU: how long a character and a frame take at a baud rate,
//! and the silent interval that separates frames.
//!
//! Owns the arithmetic of the Modbus over serial line specification (V1.02, 2.5.1.1). Never
//! opens a port and never sleeps.

use std::time::Duration;

/// Bits on the wire per character: start, 8 data, parity or a second stop bit, stop.
pub const BITS_PER_CHAR: u32 = 11;

/// Time one character takes at `baud`.
pub fn char_time(baud: u32) -> Duration {
    Duration::from_nanos(u64::from(BITS_PER_CHAR) * 1_000_000_000 / u64::from(baud.max(1)))
}

/// The silent interval between two frames: 3.5 character times, and a fixed 1.75 ms above
/// 19,200 baud (the specification's recommendation).
pub fn inter_frame_gap(baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        char_time(baud) * 7 / 2
    }
}

/// Time a frame of `bytes` bytes takes on the wire at `baud`.
pub fn frame_time(baud: u32, bytes: usize) -> Duration {
    char_time(baud) * u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Bytes of a read request ADU (unit, function, address, count, CRC) and of its answer
/// carrying `data_bytes` bytes (unit, function, byte count, data, CRC).
pub fn read_frame_bytes(data_bytes: usize) -> (usize, usize) {
    (8, 5 + data_bytes)
}

/// The most read transactions per second the line allows: request and answer on the wire,
/// each followed by the inter-frame gap (no device turnaround time).
pub fn max_reads_per_second(baud: u32, data_bytes: usize) -> f64 {
    let (request, answer) = read_frame_bytes(data_bytes);
    let one = frame_time(baud, request + answer) + inter_frame_gap(baud) * 2;
    1.0 / one.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_follow_the_specification() {
        assert_eq!(char_time(9600), Duration::from_nanos(1_145_833));
        assert_eq!(inter_frame_gap(9600), Duration::from_nanos(4_010_415));
        assert_eq!(inter_frame_gap(115_200), Duration::from_micros(1750));
        // 115,200 baud, 10 registers: 8 + 25 bytes = 3.15 ms + 3.5 ms of gaps.
        let rate = max_reads_per_second(115_200, 20);
        assert!((150.0..151.0).contains(&rate), "{rate}");
    }
}
