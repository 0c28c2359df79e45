//! Host name lookups in a static glibc binary (the armv7 firmware): only the `files` and `dns`
//! services, which are built into glibc (>= 2.34), never a module named in the board's
//! `/etc/nsswitch.conf`.
//!
//! A statically linked glibc still reads `/etc/nsswitch.conf` and `dlopen`s a `libnss_*.so`
//! for every other service named there (`mdns4_minimal`, `resolve`, `myhostname`, ...): a
//! shared object built for the board's own glibc, loaded into a binary carrying another
//! one, which at best fails and at worst crashes the gateway on its first bridge connect.
//! [`pin_host_lookups`] tells glibc, before any lookup, to use `files dns` for host names
//! whatever the file says (`__nss_configure_lookup`, glibc's documented call for this), so
//! `/etc/hosts` and `/etc/resolv.conf` work and nothing is loaded. musl has no NSS and a
//! dynamically linked glibc loads the board's own modules, so for those builds it does
//! nothing.
//!
//! Owns only that one setting; never resolves anything itself.

/// The services host lookups are pinned to.
pub const HOST_SERVICES: &str = "files dns";

/// Pins host-name lookups to [`HOST_SERVICES`] in a static glibc binary; a no-op elsewhere.
/// Call it once at start-up, before any thread resolves a name. An error is glibc's refusal
/// (it would have named an unknown database), returned for the start-up log.
pub fn pin_host_lookups() -> Result<(), String> {
    imp::pin_host_lookups()
}

/// Whether this binary pins its host lookups (a static glibc build).
pub const PINS_HOST_LOOKUPS: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    target_feature = "crt-static"
));

#[cfg(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"))]
mod imp {
    use std::ffi::{c_char, c_int, CString};

    extern "C" {
        // glibc, <nss.h>: `int __nss_configure_lookup (const char *dbname,
        // const char *service_line)`; replaces the database's line from nsswitch.conf for
        // this process. Exported since glibc 2.0.
        fn __nss_configure_lookup(dbname: *const c_char, service_line: *const c_char) -> c_int;
    }

    pub(super) fn pin_host_lookups() -> Result<(), String> {
        let db = CString::new("hosts").map_err(|e| e.to_string())?;
        let services = CString::new(super::HOST_SERVICES).map_err(|e| e.to_string())?;
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the
        // call; glibc copies what it keeps. Called at start-up before any thread resolves.
        let rc = unsafe { __nss_configure_lookup(db.as_ptr(), services.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "glibc refused to pin host lookups to `{}`: {}",
                super::HOST_SERVICES,
                std::io::Error::last_os_error()
            ))
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static")))]
mod imp {
    pub(super) fn pin_host_lookups() -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pinning_works_or_is_not_needed() {
        assert_eq!(super::pin_host_lookups(), Ok(()));
    }
}
