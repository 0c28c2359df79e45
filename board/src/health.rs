//! How this board is doing: CPU temperature, load, memory, free space of the data directory,
//! uptime, and the gateway's own resident memory.
//!
//! Owns the reading of health from procfs (`loadavg`, `meminfo`, `uptime`, `self/status`),
//! sysfs (`class/thermal/thermal_zone*/temp`) and `statvfs(2)` on the data directory. Each
//! reading is independent: one that cannot be taken is `None`, never an error. Never writes.
#![forbid(unsafe_code)]

use crate::Roots;
use serde::Serialize;
use std::path::Path;

/// One health reading, published retained on `$SYS/brokers/{node}/board/health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    /// Hottest thermal zone, °C (the SoC's sensor on most ARM boards).
    pub cpu_temp_celsius: Option<f64>,
    /// 1-, 5- and 15-minute load averages.
    pub load: Option<[f64; 3]>,
    /// `MemTotal`, bytes.
    pub mem_total_bytes: Option<u64>,
    /// `MemAvailable`, bytes: what can be allocated without swapping.
    pub mem_available_bytes: Option<u64>,
    /// Space left for unprivileged writers in the data directory's file system, bytes.
    pub data_dir_free_bytes: Option<u64>,
    /// Size of the data directory's file system, bytes.
    pub data_dir_total_bytes: Option<u64>,
    /// Seconds since the board booted.
    pub uptime_seconds: Option<f64>,
    /// The gateway's resident set size (`VmRSS`), bytes.
    pub process_rss_bytes: Option<u64>,
}

/// Takes a health reading of the board under `roots`, with `data_dir`'s file system.
pub fn read_health(roots: &Roots, data_dir: &Path) -> Health {
    let meminfo = std::fs::read_to_string(roots.proc.join("meminfo")).unwrap_or_default();
    let status = std::fs::read_to_string(roots.proc.join("self/status")).unwrap_or_default();
    let (free, total) = match disk_space(data_dir) {
        Some((f, t)) => (Some(f), Some(t)),
        None => (None, None),
    };
    Health {
        cpu_temp_celsius: cpu_temp(&roots.sys.join("class/thermal")),
        load: load(&roots.proc.join("loadavg")),
        mem_total_bytes: kib_field(&meminfo, "MemTotal:"),
        mem_available_bytes: kib_field(&meminfo, "MemAvailable:"),
        data_dir_free_bytes: free,
        data_dir_total_bytes: total,
        uptime_seconds: std::fs::read_to_string(roots.proc.join("uptime"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok()),
        process_rss_bytes: kib_field(&status, "VmRSS:"),
    }
}

/// The CPU's temperature in °C: the hottest thermal zone whose `type` names the CPU or the
/// SoC (`cpu-thermal`, `soc_thermal`, `x86_pkg_temp`, ...), not a battery, PMIC or modem
/// zone; `thermal_zone0` (conventionally the SoC's) when no zone says.
fn cpu_temp(thermal: &Path) -> Option<f64> {
    let zones: Vec<Option<f64>> = std::fs::read_dir(thermal)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .map(|e| {
            let kind = std::fs::read_to_string(e.path().join("type"))
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let temp = std::fs::read_to_string(e.path().join("temp"))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                // i64 millidegrees -> f64 is exact for any temperature a board reaches.
                .map(|milli| milli as f64 / 1000.0);
            (kind, temp)
        })
        .filter(|(kind, _)| {
            ["cpu", "soc", "x86_pkg_temp", "core"]
                .iter()
                .any(|k| kind.contains(k))
        })
        .map(|(_, temp)| temp)
        .collect();
    if zones.is_empty() {
        let text = std::fs::read_to_string(thermal.join("thermal_zone0/temp")).ok()?;
        let milli: i64 = text.trim().parse().ok()?;
        return Some(milli as f64 / 1000.0);
    }
    zones.into_iter().flatten().reduce(f64::max)
}

fn load(path: &Path) -> Option<[f64; 3]> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// A `Key:   1234 kB` line of `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// (available to unprivileged users, total) bytes of the file system holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    // The field types differ between targets (u32 on armv7, u64 on aarch64).
    #[allow(clippy::useless_conversion)]
    let frsize = u64::from(st.fragment_size());
    #[allow(clippy::useless_conversion)]
    let (avail, blocks) = (u64::from(st.blocks_available()), u64::from(st.blocks()));
    Some((avail.saturating_mul(frsize), blocks.saturating_mul(frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeTree;

    #[test]
    fn every_reading_comes_from_the_fake_tree() {
        let tree = FakeTree::new();
        tree.write_sys("class/thermal/thermal_zone0/temp", "48312\n");
        tree.write_sys("class/thermal/thermal_zone0/type", "cpu-thermal\n");
        tree.write_sys("class/thermal/thermal_zone1/temp", "51000\n");
        tree.write_sys("class/thermal/thermal_zone1/type", "soc-thermal\n");
        // A battery zone is hotter, and not the CPU.
        tree.write_sys("class/thermal/thermal_zone2/temp", "61000\n");
        tree.write_sys("class/thermal/thermal_zone2/type", "battery\n");
        tree.write_sys("class/thermal/cooling_device0/cur_state", "0\n");
        tree.write_proc("loadavg", "0.52 0.58 0.59 1/123 4567\n");
        tree.write_proc(
            "meminfo",
            "MemTotal:        3884096 kB\nMemFree:          123456 kB\nMemAvailable:    3000000 kB\n",
        );
        tree.write_proc("uptime", "12345.67 40000.00\n");
        tree.write_proc("self/status", "Name:\tholdfast\nVmRSS:\t    4096 kB\n");
        let h = read_health(&tree.roots(), tree.path());
        assert_eq!(h.cpu_temp_celsius, Some(51.0));
        assert_eq!(h.load, Some([0.52, 0.58, 0.59]));
        assert_eq!(h.mem_total_bytes, Some(3_884_096 * 1024));
        assert_eq!(h.mem_available_bytes, Some(3_000_000 * 1024));
        assert_eq!(h.uptime_seconds, Some(12345.67));
        assert_eq!(h.process_rss_bytes, Some(4096 * 1024));
        let (free, total) = (
            h.data_dir_free_bytes.unwrap(),
            h.data_dir_total_bytes.unwrap(),
        );
        assert!(total > 0 && free <= total);
    }

    #[test]
    fn missing_or_garbled_files_give_none_not_errors() {
        let tree = FakeTree::new();
        tree.write_sys("class/thermal/thermal_zone0/temp", "hot\n");
        tree.write_proc("loadavg", "0.1 nope\n");
        tree.write_proc("meminfo", "MemTotal: lots\n");
        let h = read_health(&tree.roots(), &tree.path().join("missing-dir"));
        assert_eq!(h, Health::default());
    }

    #[test]
    fn the_real_proc_gives_memory_and_uptime_on_linux() {
        let h = read_health(&Roots::default(), Path::new("/"));
        assert!(h.mem_total_bytes.is_some());
        assert!(h.uptime_seconds.is_some());
        assert!(h.process_rss_bytes.is_some());
        assert!(h.data_dir_total_bytes.is_some());
    }
}
