//! Gives the memory a burst freed back to the system once the gateway goes quiet.
//!
//! Owns one hook, [`worker_idle`], that the gateway's runtime calls each time a worker thread
//! runs out of work (`on_thread_park`). At most once per [`EVERY`] it asks the allocator to
//! return what is free:
//! - mimalloc (the musl builds, whose global allocator it is: the gateway's `main.rs`)
//!   collects the calling thread's heap, forced: it takes in what other threads freed into it
//!   (a task freed on another worker than the one it allocated on) and gives back the pages
//!   that are then empty at once, not after its purge delay. Idle, a thread otherwise never
//!   does this.
//! - glibc (the gnu builds, the armv7 firmware among them) trims its arenas (`malloc_trim`),
//!   which releases the free pages inside them, not only at their top. Process-wide: one
//!   thread at a time.
//!
//! Why: a burst (10,000 LwM2M devices registering, then observed at once) frees several MB of
//! short-lived buffers between long-lived ones. Without this, 10-15 MB of it stayed resident
//! for as long as the gateway then stayed quiet, on a board whose service has a memory cap.
//!
//! [`init`], called once at start-up, shortens mimalloc's purge delay to 10 ms (mimalloc 2's
//! default; the bundled mimalloc 3 waits 1 s): pages a burst empties go back while the burst
//! still runs, not a second later, so a burst's peak is what it holds, not what it held. The
//! broker's throughput is the same with it (`BENCH_ONLY=musl`, measured).
//!
//! Must never run on a busy worker (only as it parks, having found no work) and never more than
//! once per [`EVERY`] per thread: a collection walks the heap.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often a parking worker may collect.
pub const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// When this thread last collected.
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets the allocator up; call once at start-up, before the runtime starts.
pub fn init() {
    #[cfg(target_env = "musl")]
    {
        // mimalloc.h's `mi_option_purge_delay`: the 16th entry of `mi_option_e` in the
        // mimalloc that libmimalloc-sys 0.1.49 bundles (v3), as in v2; the Rust bindings do not
        // name it.
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: mimalloc's documented API; an option is an integer it reads atomically,
        // so setting it while other threads allocate is allowed.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10) }
    }
}

/// Called by a worker thread as it parks: collects when the last collection on this thread is
/// at least [`EVERY`] ago.
pub fn worker_idle() {
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.duration_since(t) < EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect();
    }
}

#[cfg(target_env = "musl")]
fn collect() {
    // SAFETY: mimalloc's documented API; it only touches the calling thread's heap (and what
    // other threads handed back to it), which is initialised on its first allocation. Forced:
    // without it, freed pages wait out mimalloc's purge delay (1 s) and the next collection.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn collect() {
    use std::sync::Mutex;
    // One trim at a time: it locks every arena in turn, and two at once would do the same
    // work twice.
    static TRIMMING: Mutex<()> = Mutex::new(());
    if let Ok(_one) = TRIMMING.try_lock() {
        // SAFETY: glibc's malloc_trim takes only a size to keep at the top of the heap.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }
}

#[cfg(not(any(target_env = "musl", all(target_os = "linux", target_env = "gnu"))))]
fn collect() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_collects_at_most_once_per_interval() {
        LAST.with(|l| l.set(None));
        worker_idle();
        let first = LAST.with(Cell::get).expect("the first park collects");
        worker_idle();
        assert_eq!(LAST.with(Cell::get), Some(first), "not again within EVERY");
        LAST.with(|l| l.set(first.checked_sub(EVERY)));
        worker_idle();
        assert!(
            LAST.with(Cell::get).is_some_and(|t| t >= first),
            "again after EVERY"
        );
    }
}
