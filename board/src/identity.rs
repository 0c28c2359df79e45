//! Who this board is: serial number, model, MAC address, hostname, kernel.
//!
//! Owns the reading of identity from procfs and sysfs: the serial from the device tree
//! (`/proc/device-tree/serial-number`; ARM boards), the SoC (`/sys/devices/soc0/serial_number`,
//! readable by anyone where DMI is root-only) or DMI (`/sys/class/dmi/id/product_serial`; x86
//! and some ARM servers); the model from the device tree or DMI; the MAC of the configured
//! interface, else of the first interface with a permanent address (`addr_assign_type` 0:
//! physical ones before virtual ones, never a USB modem's random one); the hostname and kernel
//! release from `/proc/sys/kernel`. Anything unreadable is `None`; it never fails.
#![forbid(unsafe_code)]

use crate::Roots;
use serde::Serialize;
use std::path::Path;

/// The board's identity, published retained on `$SYS/brokers/{node}/board/identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// "linux" or "host".
    pub board: &'static str,
    /// Serial number (device tree, else DMI).
    pub serial: Option<String>,
    /// Board model (device tree `model`, else DMI `product_name`).
    pub model: Option<String>,
    /// MAC address of the first non-loopback interface, lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// The interface that MAC belongs to.
    pub interface: Option<String>,
    /// Hostname (`/proc/sys/kernel/hostname`).
    pub hostname: Option<String>,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    /// CPU architecture this binary was built for.
    pub arch: &'static str,
}

/// Reads the identity of the board under `roots`.
pub fn read_identity(board: &'static str, roots: &Roots, mac_interface: Option<&str>) -> Identity {
    let dt = roots.proc.join("device-tree");
    let dmi = roots.sys.join("class/dmi/id");
    let net = roots.sys.join("class/net");
    let configured = mac_interface.and_then(|name| {
        let mac = read_clean(&net.join(name).join("address"))?.to_ascii_lowercase();
        Some((name.to_owned(), mac))
    });
    let (interface, mac) = match configured.or_else(|| first_mac(&net)) {
        Some((i, m)) => (Some(i), Some(m)),
        None => (None, None),
    };
    Identity {
        board,
        serial: read_clean(&dt.join("serial-number"))
            .or_else(|| read_clean(&roots.sys.join("devices/soc0/serial_number")))
            .or_else(|| read_clean(&dmi.join("product_serial"))),
        model: read_clean(&dt.join("model")).or_else(|| read_clean(&dmi.join("product_name"))),
        mac,
        interface,
        hostname: read_clean(&roots.proc.join("sys/kernel/hostname")),
        kernel: read_clean(&roots.proc.join("sys/kernel/osrelease")),
        arch: std::env::consts::ARCH,
    }
}

/// A small text attribute, trimmed of whitespace and the NUL that device-tree strings end
/// with; `None` when missing, empty, or one of the placeholders firmware vendors leave in DMI.
pub(crate) fn read_clean(path: &Path) -> Option<String> {
    let raw = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let placeholder = [
        "",
        "To be filled by O.E.M.",
        "Default string",
        "Not Specified",
        "None",
        "0",
    ];
    if placeholder.contains(&text) {
        None
    } else {
        Some(text.to_owned())
    }
}

/// The first interface (by name) with a real MAC, preferring physical devices (those with a
/// `device` link) over virtual ones (bridges, veth, docker0); loopback is skipped.
fn first_mac(net: &Path) -> Option<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(net)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let with_mac = |physical: bool| {
        names.iter().find_map(|name| {
            let dir = net.join(name);
            if dir.join("device").exists() != physical {
                return None;
            }
            // NET_ADDR_PERM (0); a random (1), stolen (2) or set (3) address is not the
            // board's own. Older kernels without the file: taken as permanent.
            let assign = read_clean(&dir.join("addr_assign_type"));
            if assign.as_deref().is_some_and(|t| t != "0") {
                return None;
            }
            let mac = read_clean(&dir.join("address"))?.to_ascii_lowercase();
            let real = mac.len() == 17 && mac != "00:00:00:00:00:00";
            real.then(|| (name.clone(), mac))
        })
    };
    with_mac(true).or_else(|| with_mac(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeTree;

    #[test]
    fn device_tree_serial_and_model_win_and_lose_their_trailing_nul() {
        let tree = FakeTree::new();
        tree.write_proc("device-tree/serial-number", "10000000abcdef01\0");
        tree.write_proc("device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\0");
        tree.write_sys("class/dmi/id/product_serial", "DMI-SERIAL\n");
        tree.write_proc("sys/kernel/hostname", "gw-001\n");
        tree.write_proc("sys/kernel/osrelease", "6.6.31-v8+\n");
        let id = read_identity("linux", &tree.roots(), None);
        assert_eq!(id.serial.as_deref(), Some("10000000abcdef01"));
        assert_eq!(id.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(id.hostname.as_deref(), Some("gw-001"));
        assert_eq!(id.kernel.as_deref(), Some("6.6.31-v8+"));
        assert_eq!(id.board, "linux");
    }

    #[test]
    fn dmi_is_the_fallback_and_vendor_placeholders_count_as_missing() {
        let tree = FakeTree::new();
        tree.write_sys("class/dmi/id/product_serial", "PF2ABCDE\n");
        tree.write_sys("class/dmi/id/product_name", "To be filled by O.E.M.\n");
        let id = read_identity("host", &tree.roots(), None);
        assert_eq!(id.serial.as_deref(), Some("PF2ABCDE"));
        assert_eq!(id.model, None);
        assert_eq!(id.hostname, None);
    }

    #[test]
    fn the_mac_comes_from_the_first_physical_non_loopback_interface() {
        let tree = FakeTree::new();
        tree.net("lo", "00:00:00:00:00:00", false);
        tree.net("br0", "02:42:ac:11:00:01", false);
        tree.net("wlan0", "DC:A6:32:00:00:02", true);
        tree.net("eth0", "dc:a6:32:00:00:01", true);
        let id = read_identity("linux", &tree.roots(), None);
        assert_eq!(id.interface.as_deref(), Some("eth0"));
        assert_eq!(id.mac.as_deref(), Some("dc:a6:32:00:00:01"));
    }

    #[test]
    fn a_virtual_interface_is_used_when_there_is_no_physical_one() {
        let tree = FakeTree::new();
        tree.net("lo", "00:00:00:00:00:00", false);
        tree.net("eth0", "DC:A6:32:00:00:09", false);
        let id = read_identity("linux", &tree.roots(), None);
        assert_eq!(id.mac.as_deref(), Some("dc:a6:32:00:00:09"));
    }

    #[test]
    fn a_random_mac_is_never_the_boards_and_a_configured_interface_wins() {
        let tree = FakeTree::new();
        // A USB LTE modem with a random address sorts first; the Ethernet port is permanent.
        tree.net("eth0", "dc:a6:32:00:00:01", true);
        tree.write_sys("class/net/eth0/addr_assign_type", "0\n");
        tree.net("enx0a1b2c3d4e5f", "0a:1b:2c:3d:4e:5f", true);
        tree.write_sys("class/net/enx0a1b2c3d4e5f/addr_assign_type", "1\n");
        tree.net("a-usb0", "1e:00:00:00:00:01", true);
        tree.write_sys("class/net/a-usb0/addr_assign_type", "1\n");
        let id = read_identity("linux", &tree.roots(), None);
        assert_eq!(id.interface.as_deref(), Some("eth0"));
        // The operator names the interface (board.mac_interface): that one, whatever it is.
        let id = read_identity("linux", &tree.roots(), Some("a-usb0"));
        assert_eq!(id.mac.as_deref(), Some("1e:00:00:00:00:01"));
        // A configured interface that does not exist falls back to the rule.
        let id = read_identity("linux", &tree.roots(), Some("wwan0"));
        assert_eq!(id.interface.as_deref(), Some("eth0"));
    }

    #[test]
    fn the_soc_serial_is_read_where_dmi_is_root_only() {
        let tree = FakeTree::new();
        tree.write_sys("devices/soc0/serial_number", "0x0123456789abcdef\n");
        let id = read_identity("linux", &tree.roots(), None);
        assert_eq!(id.serial.as_deref(), Some("0x0123456789abcdef"));
    }

    #[test]
    fn an_empty_tree_gives_an_identity_of_nones() {
        let tree = FakeTree::new();
        let id = read_identity("host", &tree.roots(), None);
        assert_eq!(id.serial, None);
        assert_eq!(id.mac, None);
        assert_eq!(id.arch, std::env::consts::ARCH);
    }
}
