//! Failed-login limits, for MQTT passwords and the web UI's admin password.
//!
//! Two rules, over one window (`window`, counted from the first failure):
//! - **one place**: after `max_failures` wrong passwords for one user name from one origin,
//!   further logins for that pair are refused without a password check until the window has
//!   passed. An origin is an IPv4 address or an IPv6 /64: an IPv6 host picks any address of
//!   its /64 at will, so counting by address would give it 2^64 tries per window;
//! - **many places**: after [`SPREAD_FACTOR`] x `max_failures` wrong passwords for one user
//!   name from anywhere (a guesser spread over many addresses), that user is let in only from
//!   origins it logged in from before (remembered since the gateway started, a few per user),
//!   until the window has passed. The real user at their usual laptop or device is still
//!   checked; a new place waits.
//!
//! Keyed by the pair, not the origin alone, so a guesser behind a NAT or on the same LAN as
//! honest devices locks out only the name it guesses, from where it guesses; and the spread
//! rule spares known origins, so an attacker cannot lock a real user out from everywhere.
//!
//! Owns three bounded maps (pairs, users, known origins). Never grows past their capacity:
//! when one is full, expired entries are dropped, and if none has expired a new entry is not
//! tracked (the check workers' bounded queue still limits the damage).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most (origin, user) pairs, and users, tracked at once.
const CAPACITY: usize = 10_000;

/// A user's failures from all origins within the window that close it to new origins, as a
/// multiple of `max_failures`.
pub const SPREAD_FACTOR: u32 = 10;

/// Origins remembered per user (the most recent successful logins).
const KNOWN_PER_USER: usize = 8;

/// Where failures are counted from: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// One IPv4 address (IPv4-mapped IPv6 addresses included).
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Origin {
    /// The origin of `ip`.
    pub fn of(ip: IpAddr) -> Origin {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Origin::V4(u32::from(v4)),
            IpAddr::V6(v6) => Origin::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Why a login is refused without a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Too many failures for this user from this origin.
    Here,
    /// Too many failures for this user from many origins, and this one is new to it.
    Spread,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

impl Failures {
    /// Counts one failure at `now`, starting a new window when the last one has passed;
    /// returns the count.
    fn add(&mut self, now: Instant, window: Duration) -> u32 {
        if now.duration_since(self.since) >= window {
            *self = Failures {
                count: 0,
                since: now,
            };
        }
        self.count += 1;
        self.count
    }

    fn reached(&self, limit: u32, now: Instant, window: Duration) -> bool {
        self.count >= limit && now.duration_since(self.since) < window
    }
}

#[derive(Debug, Default)]
struct Book {
    pairs: HashMap<(Origin, Box<str>), Failures>,
    users: HashMap<Box<str>, Failures>,
    /// Origins each user logged in from, most recent first.
    known: HashMap<Box<str>, Vec<Origin>>,
}

/// Counts one failure for `key` in `map`, unless the map is full of live entries; returns the
/// count (0 when not tracked).
fn count<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Failures>,
    key: K,
    now: Instant,
    window: Duration,
) -> u32 {
    if !map.contains_key(&key) && map.len() >= CAPACITY {
        map.retain(|_, f| now.duration_since(f.since) < window);
        if map.len() >= CAPACITY {
            return 0;
        }
    }
    map.entry(key)
        .or_insert(Failures {
            count: 0,
            since: now,
        })
        .add(now, window)
}

/// What one failure changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Counted; nothing locked by it.
    Counted,
    /// This failure locked the pair (user, origin).
    LockedHere,
    /// This failure closed the user to new origins (the spread rule).
    LockedSpread,
}

/// The failed-login book.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    window: Duration,
    book: Mutex<Book>,
}

impl Lockout {
    /// Locks a pair after `max_failures` failures within `window`, and a user to new origins
    /// after [`SPREAD_FACTOR`] times that; 0 turns both off.
    pub fn new(max_failures: u32, window: Duration) -> Lockout {
        Lockout {
            max_failures,
            window,
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spread_limit(&self) -> u32 {
        self.max_failures.saturating_mul(SPREAD_FACTOR)
    }

    /// Whether logins for `user` from `ip` are refused now, and why.
    pub fn locked(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Locked> {
        if self.max_failures == 0 {
            return None;
        }
        let origin = Origin::of(ip);
        let book = self.book();
        let here = book
            .pairs
            .get(&(origin, Box::from(user)))
            .is_some_and(|f| f.reached(self.max_failures, now, self.window));
        if here {
            return Some(Locked::Here);
        }
        let spread = book
            .users
            .get(user)
            .is_some_and(|f| f.reached(self.spread_limit(), now, self.window));
        let known = book.known.get(user).is_some_and(|k| k.contains(&origin));
        (spread && !known).then_some(Locked::Spread)
    }

    /// True when logins for `user` from `ip` are refused now.
    pub fn is_locked(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        self.locked(ip, user, now).is_some()
    }

    /// Records a wrong password for `user` from `ip`, and what it locked.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) -> Failed {
        if self.max_failures == 0 {
            return Failed::Counted;
        }
        let origin = Origin::of(ip);
        let mut book = self.book();
        let here = count(&mut book.pairs, (origin, Box::from(user)), now, self.window);
        let everywhere = count(&mut book.users, Box::from(user), now, self.window);
        if here == self.max_failures {
            Failed::LockedHere
        } else if everywhere == self.spread_limit() {
            Failed::LockedSpread
        } else {
            Failed::Counted
        }
    }

    /// Records an MQTT login's wrong password (CONNECT, CoAP connection mode) and logs what
    /// it locked, in the `[auth]` keys' words.
    pub fn mqtt_login_failed(&self, peer: std::net::SocketAddr, user: &str) {
        match self.failed(peer.ip(), user, Instant::now()) {
            Failed::Counted => {}
            Failed::LockedHere => {
                tracing::warn!(peer = %peer, user, "too many failed logins: this user is refused from this address (its /64 for IPv6) for auth.login_failure_window")
            }
            Failed::LockedSpread => {
                tracing::warn!(peer = %peer, user, "too many failed logins for this user from many addresses: for auth.login_failure_window it is let in only from addresses it logged in from before")
            }
        }
    }

    /// A successful login clears the pair's failures and remembers the origin for the user.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        if self.max_failures == 0 {
            return;
        }
        let origin = Origin::of(ip);
        let mut book = self.book();
        book.pairs.remove(&(origin, Box::from(user)));
        if !book.known.contains_key(user) && book.known.len() >= CAPACITY {
            return;
        }
        let known = book.known.entry(Box::from(user)).or_default();
        known.retain(|o| *o != origin);
        known.insert(0, origin);
        known.truncate(KNOWN_PER_USER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xc633_6400 + n))
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn book_len(l: &Lockout) -> usize {
        l.book().pairs.len()
    }

    #[test]
    fn a_pair_locks_after_max_failures_for_the_window_only() {
        let l = Lockout::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.failed(A, "alice", t0), Failed::Counted);
        assert_eq!(l.failed(A, "alice", t0), Failed::Counted);
        assert_eq!(
            l.failed(A, "alice", t0),
            Failed::LockedHere,
            "the third locks"
        );
        assert_eq!(
            l.locked(A, "alice", t0 + Duration::from_secs(59)),
            Some(Locked::Here)
        );
        // Another address, another user: not locked.
        assert!(!l.is_locked(B, "alice", t0));
        assert!(!l.is_locked(A, "bob", t0));
        // The window passes: unlocked, and counting starts again.
        assert!(!l.is_locked(A, "alice", t0 + Duration::from_secs(60)));
        assert_eq!(
            l.failed(A, "alice", t0 + Duration::from_secs(61)),
            Failed::Counted
        );
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64_and_a_mapped_ipv4_as_its_address() {
        let l = Lockout::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        l.failed(v6("2001:db8:1:2::1"), "alice", t0);
        l.failed(v6("2001:db8:1:2:ffff::7"), "alice", t0);
        l.failed(v6("2001:db8:1:2:abcd:1:2:3"), "alice", t0);
        assert_eq!(
            l.locked(v6("2001:db8:1:2:9::9"), "alice", t0),
            Some(Locked::Here),
            "any address of the /64"
        );
        assert!(
            !l.is_locked(v6("2001:db8:1:3::1"), "alice", t0),
            "the next /64"
        );
        // ::ffff:192.0.2.1 is A.
        for _ in 0..3 {
            l.failed(v6("::ffff:192.0.2.1"), "bob", t0);
        }
        assert!(l.is_locked(A, "bob", t0));
        assert!(!l.is_locked(B, "bob", t0));
    }

    #[test]
    fn a_user_guessed_from_many_places_is_let_in_only_from_known_ones() {
        let l = Lockout::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let home = v4(200);
        l.succeeded(home, "admin");
        // One failure each from 19 addresses: no pair locks, the user is not closed yet.
        for n in 0..19 {
            assert_eq!(l.failed(v4(n), "admin", t0), Failed::Counted);
        }
        assert!(!l.is_locked(v4(100), "admin", t0));
        assert_eq!(l.failed(v4(19), "admin", t0), Failed::LockedSpread);
        // A new place waits; the known one is still checked; other users are not touched.
        assert_eq!(l.locked(v4(100), "admin", t0), Some(Locked::Spread));
        assert_eq!(l.locked(home, "admin", t0), None);
        assert_eq!(l.locked(v4(100), "alice", t0), None);
        // The window passes: open again.
        assert_eq!(
            l.locked(v4(100), "admin", t0 + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn known_origins_are_the_few_most_recent() {
        let l = Lockout::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..=KNOWN_PER_USER as u32 {
            l.succeeded(v4(n), "admin");
        }
        for n in 0..SPREAD_FACTOR {
            l.failed(v4(1000 + n), "admin", t0);
        }
        assert_eq!(
            l.locked(v4(0), "admin", t0),
            Some(Locked::Spread),
            "forgotten"
        );
        assert_eq!(l.locked(v4(1), "admin", t0), None);
        assert_eq!(l.locked(v4(KNOWN_PER_USER as u32), "admin", t0), None);
    }

    #[test]
    fn a_success_clears_and_zero_turns_it_off() {
        let l = Lockout::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        l.failed(A, "alice", t0);
        l.succeeded(A, "alice");
        assert_eq!(l.failed(A, "alice", t0), Failed::Counted);
        let off = Lockout::new(0, Duration::from_secs(60));
        for n in 0..100 {
            off.failed(v4(n), "alice", t0);
        }
        assert!(!off.is_locked(A, "alice", t0));
        assert!(!off.is_locked(v4(1000), "alice", t0));
    }

    #[test]
    fn the_book_never_grows_past_its_capacity() {
        let l = Lockout::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(CAPACITY + 500) {
            l.failed(A, &format!("u{i}"), t0);
        }
        assert_eq!(book_len(&l), CAPACITY);
        assert_eq!(l.book().users.len(), CAPACITY);
        for i in 0..(CAPACITY + 500) {
            l.succeeded(A, &format!("k{i}"));
        }
        assert_eq!(l.book().known.len(), CAPACITY);
        // Once the window passed, old pairs make room.
        l.failed(A, "late", t0 + Duration::from_secs(61));
        assert_eq!(book_len(&l), 1);
    }
}
