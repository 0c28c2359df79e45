//! The kernel watchdog device (`/dev/watchdog`, Documentation/watchdog/watchdog-api.rst).
//!
//! Owns the open device file: opening it arms the watchdog, every write is a keepalive, and
//! writing `V` just before closing is the "magic close" that disarms it on a clean exit. If the
//! process dies without the magic close, the board resets once the timeout runs out — which
//! is what a watchdog is for. (A kernel built with `CONFIG_WATCHDOG_NOWAYOUT` ignores the magic
//! close; the board then resets unless a new process reopens the device in time, which
//! systemd's `Restart=always` does.)
//!
//! The timeout is set and read back with the `WDIOC_SETTIMEOUT`/`WDIOC_GETTIMEOUT` ioctls,
//! the only `unsafe` code in Holdfast. A device that answers them with `ENOTTY` (a regular
//! file or FIFO standing in for the device in tests, or an odd driver) is used anyway, with a
//! warning: keepalives are plain writes and work on anything writable.
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
        let wanted = timeout.as_secs().clamp(1, MAX_TIMEOUT_SECS);
        let timeout = match set_timeout(&file, wanted) {
            Ok(actual) => {
                if actual != wanted {
                    tracing::warn!(
                        device = %path.display(),
                        wanted_seconds = wanted,
                        actual_seconds = actual,
                        "the watchdog driver chose a different timeout"
                    );
                }
                Duration::from_secs(actual)
            }
            Err(nix::errno::Errno::ENOTTY) => {
                tracing::warn!(
                    device = %path.display(),
                    "the watchdog device does not take watchdog ioctls (ENOTTY); not a real watchdog? feeding it by writes with an assumed {wanted} s timeout"
                );
                Duration::from_secs(wanted)
            }
            Err(errno) => {
                tracing::warn!(
                    device = %path.display(),
                    error = %errno,
                    "cannot set the watchdog timeout; assuming {wanted} s"
                );
                Duration::from_secs(wanted)
            }
        };
        tracing::info!(device = %path.display(), timeout_seconds = timeout.as_secs(), "hardware watchdog armed");
        Ok(Watchdog {
            file: Some(file),
            path: path.to_owned(),
            timeout,
        })
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

/// Sets the timeout to `seconds` and returns what the driver reports back.
fn set_timeout(file: &File, seconds: u64) -> Result<u64, nix::errno::Errno> {
    // `seconds` is clamped to MAX_TIMEOUT_SECS by the caller, so it fits a c_int.
    let mut value = std::os::raw::c_int::try_from(seconds).unwrap_or(std::os::raw::c_int::MAX);
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file`, which outlives the call, and
    // WDIOC_SETTIMEOUT reads and writes exactly one C int through the pointer, which points to
    // `value`, a live, aligned c_int on our stack. On a file that is not a watchdog the kernel
    // answers ENOTTY without touching the memory.
    unsafe { ioctl::wdioc_settimeout(fd, &mut value) }?;
    let mut actual: std::os::raw::c_int = 0;
    // SAFETY: as above; WDIOC_GETTIMEOUT writes one C int into `actual`.
    match unsafe { ioctl::wdioc_gettimeout(fd, &mut actual) } {
        Ok(_) if actual > 0 => Ok(u64::try_from(actual).unwrap_or(seconds)),
        // Some drivers answer SETTIMEOUT but not GETTIMEOUT: SETTIMEOUT's in/out value is the
        // driver's answer too.
        _ => Ok(u64::try_from(value).unwrap_or(seconds)),
    }
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
