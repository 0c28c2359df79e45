//! A fake `/sys` + `/proc` tree in a temporary directory, for the unit tests.

use crate::Roots;
use std::path::{Path, PathBuf};

/// A temp dir holding `sys/` and `proc/`; removed on drop.
pub(crate) struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    pub(crate) fn new() -> FakeTree {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("sys")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        FakeTree { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    pub(crate) fn roots(&self) -> Roots {
        Roots {
            sys: self.sys(),
            proc: self.dir.path().join("proc"),
        }
    }

    fn write(&self, path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub(crate) fn write_sys(&self, rel: &str, text: &str) {
        self.write(self.sys().join(rel), text);
    }

    pub(crate) fn write_proc(&self, rel: &str, text: &str) {
        self.write(self.dir.path().join("proc").join(rel), text);
    }

    /// An LED as the kernel shows it; with `timer`, the files the timer trigger adds too.
    pub(crate) fn led(&self, name: &str, max: u32, timer: bool) {
        let base = format!("class/leds/{name}");
        self.write_sys(&format!("{base}/brightness"), "0\n");
        self.write_sys(&format!("{base}/max_brightness"), &format!("{max}\n"));
        let triggers = if timer {
            "[none] kbd-scrolllock timer heartbeat mmc0\n"
        } else {
            "[none] mmc0\n"
        };
        self.write_sys(&format!("{base}/trigger"), triggers);
        if timer {
            self.write_sys(&format!("{base}/delay_on"), "0\n");
            self.write_sys(&format!("{base}/delay_off"), "0\n");
        }
    }

    pub(crate) fn led_attr(&self, name: &str, attr: &str) -> String {
        std::fs::read_to_string(self.sys().join(format!("class/leds/{name}/{attr}")))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A network interface; `physical` ones get a `device` entry as real NICs have.
    pub(crate) fn net(&self, name: &str, mac: &str, physical: bool) {
        self.write_sys(&format!("class/net/{name}/address"), &format!("{mac}\n"));
        if physical {
            std::fs::create_dir_all(self.sys().join(format!("class/net/{name}/device"))).unwrap();
        }
    }

    /// Sets the kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub(crate) fn boot_id(&self, id: &str) {
        let p = self.roots().proc.join("sys/kernel/random");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("boot_id"), format!("{id}\n")).unwrap();
    }

    /// A regular file standing in for /dev/watchdog.
    pub(crate) fn watchdog(&self) -> PathBuf {
        let p = self.dir.path().join("watchdog");
        std::fs::write(&p, b"").unwrap();
        p
    }
}
