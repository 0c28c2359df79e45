//! Failed-login limits: after `max_failures` wrong passwords for one user name from one
//! address within a window, further logins for that pair are refused without a password
//! check until the window has passed.
//!
//! Owns a bounded map of recent failures keyed by (address, user name). Keyed by the pair, not
//! the address alone, so a guesser behind a NAT or on the same LAN as honest devices locks
//! out only the name it guesses, from where it guesses; and by the pair, not the name alone, so
//! an attacker cannot lock a real user out from everywhere. Never grows past its capacity:
//! when full, expired entries are dropped, and if none has expired a new pair is not tracked
//! (the check workers' bounded queue still limits the damage).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most (address, user) pairs tracked at once.
const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

/// The failed-login book.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    window: Duration,
    recent: Mutex<HashMap<(IpAddr, Box<str>), Failures>>,
}

impl Lockout {
    /// Locks a pair after `max_failures` failures within `window`; 0 turns it off.
    pub fn new(max_failures: u32, window: Duration) -> Lockout {
        Lockout {
            max_failures,
            window,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// True when logins for `user` from `ip` are locked now.
    pub fn is_locked(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(&(ip, Box::from(user))).is_some_and(|f| {
            f.count >= self.max_failures && now.duration_since(f.since) < self.window
        })
    }

    /// Records a wrong password for `user` from `ip`; true when this one locked the pair.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ip, Box::from(user));
        if !recent.contains_key(&key) && recent.len() >= CAPACITY {
            let window = self.window;
            recent.retain(|_, f| now.duration_since(f.since) < window);
            if recent.len() >= CAPACITY {
                return false;
            }
        }
        let f = recent.entry(key).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.duration_since(f.since) >= self.window {
            *f = Failures {
                count: 0,
                since: now,
            };
        }
        f.count += 1;
        f.count == self.max_failures
    }

    /// A successful login clears the pair's failures.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        if self.max_failures == 0 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.remove(&(ip, Box::from(user)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_pair_locks_after_max_failures_for_the_window_only() {
        let l = Lockout::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!l.failed(A, "alice", t0));
        assert!(!l.failed(A, "alice", t0));
        assert!(l.failed(A, "alice", t0), "the third failure locks");
        assert!(l.is_locked(A, "alice", t0 + Duration::from_secs(59)));
        // Another address, another user: not locked.
        assert!(!l.is_locked(B, "alice", t0));
        assert!(!l.is_locked(A, "bob", t0));
        // The window passes: unlocked, and counting starts again.
        assert!(!l.is_locked(A, "alice", t0 + Duration::from_secs(60)));
        assert!(!l.failed(A, "alice", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn a_success_clears_and_zero_turns_it_off() {
        let l = Lockout::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        l.failed(A, "alice", t0);
        l.succeeded(A, "alice");
        assert!(!l.failed(A, "alice", t0));
        let off = Lockout::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            off.failed(A, "alice", t0);
        }
        assert!(!off.is_locked(A, "alice", t0));
    }

    #[test]
    fn the_book_never_grows_past_its_capacity() {
        let l = Lockout::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(CAPACITY + 500) {
            l.failed(A, &format!("u{i}"), t0);
        }
        assert_eq!(l.recent.lock().map(|r| r.len()).unwrap_or(0), CAPACITY);
        // Once the window passed, old pairs make room.
        l.failed(A, "late", t0 + Duration::from_secs(61));
        assert_eq!(l.recent.lock().map(|r| r.len()).unwrap_or(0), 1);
    }
}
