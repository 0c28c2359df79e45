//! The kernel watchdog device (`/dev/watchdog`, Documentation/watchdog/watchdog-api.rst).
//!
//! Owns the open device file: opening it arms the watchdog, every write is a keepalive, and
//! writing `V` just before closing is the "magic close" that disarms it on a clean exit. If the
//! process dies without the magic close, the board resets once the timeout runs out — which
//! is what a watchdog is for. (A kernel built with `CONFIG_WATCHDOG_NOWAYOUT` ignores the magic
//! close; the board then resets unless a new process reopens the device in time, which
//! systemd's `Restart=always` does.)
//!
//! The timeout is set and read back with the `WDIOC_SETTIMEOUT`/`WDIOC_GETTIMEOUT` ioctls; the
//! driver's identity and features (`WDIOC_GETSUPPORT`: does it honour the magic close?) and
//! why the board last reset (`WDIOC_GETBOOTSTATUS`) are read at open. These ioctls are the
//! only `unsafe` code in Holdfast. A driver that refuses the timeout (drivers answer `EINVAL`
//! above their maximum, e.g. bcm2835 at ~15 s, and keep the old one) is used with the timeout
//! it reports keeping; one that does not say which it keeps is disarmed and refused: a
//! watchdog with an unknown timeout cannot be fed safely. A device that answers the ioctls
//! with `ENOTTY` (a regular file or FIFO standing in for the device in tests, or an odd
//! driver) is used anyway, with a warning: keepalives are plain writes and work on anything
//! writable.
//!
//! It never decides when to feed: the runtime calls [`Watchdog::keepalive`] only after it has
//! checked itself.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::BoardError;

/// The ioctls of `<linux/watchdog.h>`. `nix`'s macros generate `unsafe fn`s that call
/// `ioctl(2)` with the request number built exactly as the C `_IOR`/`_IOWR` macros build it.
#[allow(unreachable_pub)]
mod ioctl {
    use std::os::raw::c_int;

    /// `WATCHDOG_IOCTL_BASE` in `<linux/watchdog.h>`.
    const WATCHDOG_IOCTL_BASE: u8 = b'W';

    // #define WDIOC_SETTIMEOUT _IOWR(WATCHDOG_IOCTL_BASE, 6, int)
    nix::ioctl_readwrite!(wdioc_settimeout, WATCHDOG_IOCTL_BASE, 6, c_int);
    // #define WDIOC_GETTIMEOUT _IOR(WATCHDOG_IOCTL_BASE, 7, int)
    nix::ioctl_read!(wdioc_gettimeout, WATCHDOG_IOCTL_BASE, 7, c_int);
    // #define WDIOC_GETBOOTSTATUS _IOR(WATCHDOG_IOCTL_BASE, 2, int)
    nix::ioctl_read!(wdioc_getbootstatus, WATCHDOG_IOCTL_BASE, 2, c_int);
    // #define WDIOC_GETSUPPORT _IOR(WATCHDOG_IOCTL_BASE, 0, struct watchdog_info)
    nix::ioctl_read!(wdioc_getsupport, WATCHDOG_IOCTL_BASE, 0, WatchdogInfo);

    /// `struct watchdog_info` of `<linux/watchdog.h>`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct WatchdogInfo {
        /// `WDIOF_*` features the driver supports.
        pub options: u32,
        /// Firmware version of the card.
        pub firmware_version: u32,
        /// Driver identity, NUL-padded.
        pub identity: [u8; 32],
    }
}

/// `WDIOF_*` bits of `<linux/watchdog.h>` (features in `options`, reasons in the boot status).
const WDIOF_OVERHEAT: u32 = 0x0001;
const WDIOF_FANFAULT: u32 = 0x0002;
const WDIOF_EXTERN1: u32 = 0x0004;
const WDIOF_EXTERN2: u32 = 0x0008;
const WDIOF_POWERUNDER: u32 = 0x0010;
const WDIOF_CARDRESET: u32 = 0x0020;
const WDIOF_POWEROVER: u32 = 0x0040;
const WDIOF_MAGICCLOSE: u32 = 0x0100;

/// What the driver says about itself (`WDIOC_GETSUPPORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// The driver's identity ("Broadcom BCM2835 Watchdog timer", "Software Watchdog", ...).
    pub identity: String,
    /// `WDIOF_*` features.
    pub options: u32,
}

impl DriverInfo {
    /// True when writing `V` before closing disarms it; without, any close (a crash's too)
    /// stops the watchdog unless the kernel has `CONFIG_WATCHDOG_NOWAYOUT`.
    pub fn magic_close(&self) -> bool {
        self.options & WDIOF_MAGICCLOSE != 0
    }
}

/// Why the board last reset, as the driver recorded it (`WDIOC_GETBOOTSTATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootStatus(pub u32);

impl BootStatus {
    /// True when the watchdog itself reset the board.
    pub fn watchdog_reset(self) -> bool {
        self.0 & WDIOF_CARDRESET != 0
    }

    /// The recorded reasons, in words; "power-on or reboot" when there is none.
    pub fn describe(self) -> String {
        let reasons: Vec<&str> = [
            (WDIOF_CARDRESET, "watchdog reset"),
            (WDIOF_OVERHEAT, "overheat"),
            (WDIOF_FANFAULT, "fan fault"),
            (WDIOF_EXTERN1, "external relay 1"),
            (WDIOF_EXTERN2, "external relay 2"),
            (WDIOF_POWERUNDER, "power under voltage"),
            (WDIOF_POWEROVER, "power over voltage"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.0 & bit != 0)
        .map(|(_, what)| what)
        .collect();
        if reasons.is_empty() {
            "power-on or reboot".to_owned()
        } else {
            reasons.join(", ")
        }
    }
}

/// The timeout a watchdog runs with, once the driver had its say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The driver reports this many seconds.
    Driver(u64),
    /// The device takes no watchdog ioctls (`ENOTTY`): the asked-for seconds are assumed.
    Assumed(u64),
}

/// Decides the effective timeout from the driver's answers: `set` is `WDIOC_SETTIMEOUT`'s
/// (the seconds it reports back), `get` asks `WDIOC_GETTIMEOUT`. A refused set is fine when
/// the driver says which timeout it keeps; `Err` when it does not (never feed blind).
pub fn settle_timeout(
    wanted: u64,
    set: Result<u64, nix::errno::Errno>,
    get: impl FnOnce() -> Result<u64, nix::errno::Errno>,
) -> Result<Settled, nix::errno::Errno> {
    match set {
        Ok(actual) if actual > 0 => Ok(Settled::Driver(actual)),
        Err(nix::errno::Errno::ENOTTY) => Ok(Settled::Assumed(wanted)),
        Ok(_) => match get() {
            Ok(kept) if kept > 0 => Ok(Settled::Driver(kept)),
            _ => Err(nix::errno::Errno::EINVAL),
        },
        Err(refused) => match get() {
            Ok(kept) if kept > 0 => Ok(Settled::Driver(kept)),
            _ => Err(refused),
        },
    }
}

/// What a keepalive writes. The kernel treats any write as a keepalive; any byte but `V`
/// also cancels a pending magic close.
const KEEPALIVE: &[u8] = b"\0";

/// The magic close character (`expect_close` in the kernel's watchdog core).
const MAGIC_CLOSE: &[u8] = b"V";

/// Longest timeout we ask for: the ioctl takes whole seconds in a C int, and drivers cap far
/// lower (the Raspberry Pi's bcm2835 at 15 s).
const MAX_TIMEOUT_SECS: u64 = 3600;

/// An armed kernel watchdog.
#[derive(Debug)]
pub struct Watchdog {
    /// The open device; `None` once closed (magic close done).
    file: Option<File>,
    /// For messages.
    path: PathBuf,
    /// The timeout the driver reports after we set ours (drivers round and cap it), or the
    /// one we asked for when the device takes no ioctls.
    timeout: Duration,
    /// What the driver says about itself; `None` when it takes no ioctls.
    driver: Option<DriverInfo>,
    /// Why the board last reset; `None` when the driver does not say.
    boot_status: Option<BootStatus>,
}

impl Watchdog {
    /// Opens (and so arms) the watchdog at `path` and asks for `timeout` (whole seconds, at
    /// least 1). An `ENOTTY` answer to the ioctls is logged and tolerated; failing to open is
    /// an error.
    pub fn open(path: &Path, timeout: Duration) -> Result<Watchdog, BoardError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| BoardError::WatchdogOpen {
                path: path.to_owned(),
                source,
            })?;
        let driver = driver_info(&file);
        let boot_status = boot_status(&file);
        let wanted = timeout.as_secs().clamp(1, MAX_TIMEOUT_SECS);
        let settled = settle_timeout(wanted, set_timeout(&file, wanted), || get_timeout(&file));
        let mut watchdog = Watchdog {
            file: Some(file),
            path: path.to_owned(),
            timeout: Duration::from_secs(wanted),
            driver,
            boot_status,
        };
        match settled {
            Ok(Settled::Driver(actual)) => {
                if actual != wanted {
                    tracing::warn!(
                        device = %path.display(),
                        wanted_seconds = wanted,
                        actual_seconds = actual,
                        "the watchdog driver keeps a different timeout than asked (beyond its maximum?)"
                    );
                }
                watchdog.timeout = Duration::from_secs(actual);
            }
            Ok(Settled::Assumed(_)) => {
                tracing::warn!(
                    device = %path.display(),
                    "the watchdog device does not take watchdog ioctls (ENOTTY); not a real watchdog? feeding it by writes with an assumed {wanted} s timeout"
                );
            }
            Err(errno) => {
                // Armed by the open: disarm it before refusing it.
                let _ = watchdog.close();
                return Err(BoardError::WatchdogTimeout {
                    path: path.to_owned(),
                    wanted,
                    errno,
                });
            }
        }
        match &watchdog.driver {
            Some(d) if !d.magic_close() => tracing::warn!(
                device = %path.display(),
                driver = %d.identity,
                "the watchdog driver has no magic close: any close, a crash's too, stops it (unless the kernel has CONFIG_WATCHDOG_NOWAYOUT)"
            ),
            _ => {}
        }
        tracing::info!(
            device = %path.display(),
            driver = watchdog.driver.as_ref().map_or("", |d| d.identity.as_str()),
            timeout_seconds = watchdog.timeout.as_secs(),
            last_reset = watchdog.boot_status.map_or_else(|| "unknown".to_owned(), BootStatus::describe),
            "hardware watchdog armed"
        );
        Ok(watchdog)
    }

    /// What the driver says about itself, when it takes ioctls.
    pub fn driver(&self) -> Option<&DriverInfo> {
        self.driver.as_ref()
    }

    /// Why the board last reset, when the driver records it.
    pub fn boot_status(&self) -> Option<BootStatus> {
        self.boot_status
    }

    /// The effective timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Feeds the watchdog (one write).
    pub fn keepalive(&mut self) -> Result<(), BoardError> {
        self.write(KEEPALIVE)
    }

    /// Disarms it: writes the magic `V` and closes the device. Idempotent.
    pub fn close(&mut self) -> Result<(), BoardError> {
        if self.file.is_none() {
            return Ok(());
        }
        let result = self.write(MAGIC_CLOSE);
        // Dropping the File closes the descriptor; the kernel stops the watchdog when it saw
        // the `V` just before.
        self.file = None;
        if result.is_ok() {
            tracing::info!(device = %self.path.display(), "hardware watchdog disarmed (magic close)");
        }
        result
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BoardError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .map_err(|source| BoardError::WatchdogWrite {
                path: self.path.clone(),
                source,
            })
    }
}

/// Sets the timeout to `seconds` and returns what the driver reports back: the read-back of
/// `WDIOC_GETTIMEOUT` when it answers, else SETTIMEOUT's in/out value (some drivers answer
/// only the one).
fn set_timeout(file: &File, seconds: u64) -> Result<u64, nix::errno::Errno> {
    // `seconds` is clamped to MAX_TIMEOUT_SECS by the caller, so it fits a c_int.
    let mut value = std::os::raw::c_int::try_from(seconds).unwrap_or(std::os::raw::c_int::MAX);
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file`, which outlives the call, and
    // WDIOC_SETTIMEOUT reads and writes exactly one C int through the pointer, which points to
    // `value`, a live, aligned c_int on our stack. On a file that is not a watchdog the kernel
    // answers ENOTTY without touching the memory.
    unsafe { ioctl::wdioc_settimeout(fd, &mut value) }?;
    match get_timeout(file) {
        Ok(actual) if actual > 0 => Ok(actual),
        _ => Ok(u64::try_from(value).unwrap_or(0)),
    }
}

/// The driver's current timeout (`WDIOC_GETTIMEOUT`).
fn get_timeout(file: &File) -> Result<u64, nix::errno::Errno> {
    let mut actual: std::os::raw::c_int = 0;
    // SAFETY: `file`'s descriptor is open for the call; WDIOC_GETTIMEOUT writes exactly one C
    // int into `actual`, a live, aligned c_int on our stack.
    unsafe { ioctl::wdioc_gettimeout(file.as_raw_fd(), &mut actual) }?;
    Ok(u64::try_from(actual).unwrap_or(0))
}

/// `WDIOC_GETSUPPORT`, when the device takes it.
fn driver_info(file: &File) -> Option<DriverInfo> {
    let mut info = ioctl::WatchdogInfo {
        options: 0,
        firmware_version: 0,
        identity: [0; 32],
    };
    // SAFETY: `file`'s descriptor is open for the call; WDIOC_GETSUPPORT writes one
    // `struct watchdog_info` (repr(C), the kernel's layout: two u32 and 32 bytes) into `info`.
    unsafe { ioctl::wdioc_getsupport(file.as_raw_fd(), &mut info) }.ok()?;
    let end = info.identity.iter().position(|&b| b == 0).unwrap_or(32);
    Some(DriverInfo {
        identity: String::from_utf8_lossy(&info.identity[..end]).into_owned(),
        options: info.options,
    })
}

/// `WDIOC_GETBOOTSTATUS`, when the device takes it.
fn boot_status(file: &File) -> Option<BootStatus> {
    let mut flags: std::os::raw::c_int = 0;
    // SAFETY: `file`'s descriptor is open for the call; WDIOC_GETBOOTSTATUS writes one C int.
    unsafe { ioctl::wdioc_getbootstatus(file.as_raw_fd(), &mut flags) }.ok()?;
    Some(BootStatus(u32::from_ne_bytes(flags.to_ne_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_stands_in_for_the_device_and_records_keepalives_and_the_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, b"").unwrap();
        let mut wd = Watchdog::open(&dev, Duration::from_secs(7)).unwrap();
        // ENOTTY from the ioctl is tolerated; the asked-for timeout is assumed.
        assert_eq!(wd.timeout(), Duration::from_secs(7));
        wd.keepalive().unwrap();
        wd.keepalive().unwrap();
        wd.keepalive().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"\0\0\0");
        wd.close().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"\0\0\0V");
        // Closed: nothing more is written, and closing again is harmless.
        wd.keepalive().unwrap();
        wd.close().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"\0\0\0V");
    }

    #[test]
    fn a_refused_timeout_is_taken_as_the_driver_keeps_it_and_an_unknown_one_is_refused() {
        use nix::errno::Errno;
        // The driver rounds or caps: its answer is the timeout.
        assert_eq!(
            settle_timeout(30, Ok(15), || Ok(15)),
            Ok(Settled::Driver(15))
        );
        // bcm2835 above its ~15 s maximum: EINVAL, the old timeout stays and is read back.
        assert_eq!(
            settle_timeout(30, Err(Errno::EINVAL), || Ok(15)),
            Ok(Settled::Driver(15))
        );
        // EINVAL and no read-back: unknown, refused (never fed blind).
        assert_eq!(
            settle_timeout(30, Err(Errno::EINVAL), || Err(Errno::ENOTTY)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            settle_timeout(30, Err(Errno::EINVAL), || Ok(0)),
            Err(Errno::EINVAL)
        );
        // A set that answers 0 and no read-back: unknown too.
        assert_eq!(
            settle_timeout(30, Ok(0), || Err(Errno::EIO)),
            Err(Errno::EINVAL)
        );
        // A stand-in without ioctls: the asked-for timeout is assumed.
        assert_eq!(
            settle_timeout(30, Err(Errno::ENOTTY), || Err(Errno::ENOTTY)),
            Ok(Settled::Assumed(30))
        );
    }

    #[test]
    fn boot_status_and_driver_features_read_as_an_operator_needs_them() {
        assert_eq!(BootStatus(0).describe(), "power-on or reboot");
        assert!(!BootStatus(0).watchdog_reset());
        assert_eq!(BootStatus(0x20).describe(), "watchdog reset");
        assert!(BootStatus(0x20).watchdog_reset());
        assert_eq!(BootStatus(0x21).describe(), "watchdog reset, overheat");
        let with = DriverInfo {
            identity: "Software Watchdog".into(),
            options: 0x8180,
        };
        assert!(with.magic_close());
        let without = DriverInfo {
            options: 0x8080,
            ..with
        };
        assert!(!without.magic_close());
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("no-such-watchdog");
        let err = Watchdog::open(&dev, Duration::from_secs(15)).unwrap_err();
        assert!(err.to_string().contains("no-such-watchdog"), "{err}");
        assert!(matches!(err, BoardError::WatchdogOpen { .. }));
    }

    #[test]
    fn a_fifo_stands_in_for_the_device_too() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog.fifo");
        nix::unistd::mkfifo(&dev, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A reader must exist before a writer can open a FIFO without blocking.
        let reader = {
            let dev = dev.clone();
            std::thread::spawn(move || std::fs::read(dev).unwrap())
        };
        let mut wd = Watchdog::open(&dev, Duration::from_secs(0)).unwrap();
        // A zero timeout is raised to the 1 s minimum.
        assert_eq!(wd.timeout(), Duration::from_secs(1));
        wd.keepalive().unwrap();
        wd.close().unwrap();
        assert_eq!(reader.join().unwrap(), b"\0V");
    }
}
