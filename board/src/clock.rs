//! Whether the kernel's wall clock is synchronized (NTP, PTP, GPS through chrony or
//! systemd-timesyncd): what `adjtimex(2)` reports with `STA_UNSYNC`/`TIME_ERROR`.
//!
//! Boards without a real-time clock boot at 1970 or at the image's build date and are
//! corrected minutes later, often by years; a timestamp taken before that correction says
//! nothing about how much time passed. Owns only the question; what to do with the answer is
//! the gateway's (its downtime rule). Never changes the clock (`modes = 0`: read only).

/// `adjtimex(2)`'s answer: `Some(true)` synchronized, `Some(false)` not (`TIME_ERROR`), `None`
/// when the call failed (a seccomp filter, an odd platform).
pub fn kernel_clock_synchronized() -> Option<bool> {
    // SAFETY: `timex` is plain data the kernel fills; zeroed it asks for nothing
    // (`modes = 0`, a pure read), and the pointer is valid for the duration of the call.
    let state = unsafe {
        let mut tx: nix::libc::timex = std::mem::zeroed();
        nix::libc::adjtimex(&mut tx)
    };
    match state {
        s if s < 0 => None,
        nix::libc::TIME_ERROR => Some(false),
        _ => Some(true),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_answers_one_way_or_the_other() {
        // Containers and CI machines differ in the answer; the call itself must work.
        assert!(super::kernel_clock_synchronized().is_some());
    }
}
