//! Message deduplication (RFC 7252 4.5): a confirmable or non-confirmable message that
//! arrives again within its lifetime is not processed again; a confirmable one gets the reply
//! it got the first time (the ACK may have been lost).
//!
//! Owns the record of recent exchanges, keyed by whatever names the sender's message id space
//! (the gateway uses the peer's address and the message id). Bounded: at most `capacity`
//! entries; when full, the oldest is forgotten first (a very late duplicate of it would be
//! processed twice, which a CoAP client already has to expect of a restarted server). Never
//! builds a reply itself.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

/// What the record says of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: process it (and call [`Dedup::replied`] once answered).
    New,
    /// A duplicate still being processed: ignore it (the reply is on its way).
    InProgress,
    /// A duplicate already answered: send these bytes again.
    Replied(Vec<u8>),
}

#[derive(Debug)]
struct Entry {
    expires: Instant,
    reply: Option<Vec<u8>>,
}

/// The exchange record; `S` hashes its keys (std's keyed hasher unless told otherwise).
#[derive(Debug)]
pub struct Dedup<K, S = RandomState> {
    entries: HashMap<K, Entry, S>,
    /// Keys in arrival order, with the expiry they were inserted with.
    order: VecDeque<(Instant, K)>,
    capacity: usize,
}

/// A record of one sender's exchanges, hashed with [`MixHasher`] (unkeyed, several times
/// cheaper than std's): only for a record whose keys one sender picks, where colliding keys
/// slow nobody but that sender, and at most over `capacity` entries.
pub type SenderDedup<K> = Dedup<K, BuildHasherDefault<MixHasher>>;

impl<K: Hash + Eq + Clone> Dedup<K> {
    /// A record of at most `capacity` exchanges (at least 1).
    pub fn new(capacity: usize) -> Self {
        Dedup::with_hasher(capacity)
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher + Default> Dedup<K, S> {
    /// A record of at most `capacity` exchanges (at least 1), hashed with `S`.
    pub fn with_hasher(capacity: usize) -> Self {
        Dedup {
            entries: HashMap::with_hasher(S::default()),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Looks `key` up; a new one is recorded as in progress for `lifetime`
    /// ([`crate::params::EXCHANGE_LIFETIME`] for CON, `NON_LIFETIME` for NON).
    pub fn check(&mut self, key: K, lifetime: Duration, now: Instant) -> Seen {
        self.expire(now);
        if let Some(e) = self.entries.get(&key) {
            return match &e.reply {
                Some(bytes) => Seen::Replied(bytes.clone()),
                None => Seen::InProgress,
            };
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        let expires = now + lifetime;
        self.entries.insert(
            key.clone(),
            Entry {
                expires,
                reply: None,
            },
        );
        self.order.push_back((expires, key));
        Seen::New
    }

    /// Records the reply sent for `key` (the piggybacked response, or the empty ACK before a
    /// separate response), to be sent again to a duplicate.
    pub fn replied(&mut self, key: &K, reply: Vec<u8>) {
        if let Some(e) = self.entries.get_mut(key) {
            e.reply = Some(reply);
        }
    }

    /// Exchanges recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, key)) = self.order.pop_front() {
                if self.entries.get(&key).is_some_and(|e| e.expires == expires) {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

/// A multiply-rotate hasher (FxHash's step, with a final mix so that the table's control bits
/// see every input bit). Not keyed: see [`SenderDedup`] for where that is acceptable.
#[derive(Debug, Default, Clone, Copy)]
pub struct MixHasher(u64);

impl MixHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        // murmur3's fmix64.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(247);

    #[test]
    fn a_duplicate_gets_the_first_reply_and_an_unanswered_one_is_ignored() {
        let t0 = Instant::now();
        let mut d = Dedup::new(16);
        assert_eq!(d.check(("a", 1), LIFE, t0), Seen::New);
        assert_eq!(d.check(("a", 1), LIFE, t0), Seen::InProgress);
        d.replied(&("a", 1), vec![0x60, 0x44, 0, 1]);
        assert_eq!(
            d.check(("a", 1), LIFE, t0 + Duration::from_secs(10)),
            Seen::Replied(vec![0x60, 0x44, 0, 1])
        );
        // another peer with the same message id is another exchange
        assert_eq!(d.check(("b", 1), LIFE, t0), Seen::New);
    }

    #[test]
    fn an_exchange_is_forgotten_after_its_lifetime() {
        let t0 = Instant::now();
        let mut d = Dedup::new(16);
        assert_eq!(d.check(("a", 1), LIFE, t0), Seen::New);
        assert_eq!(d.check(("a", 1), LIFE, t0 + LIFE), Seen::New);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_sender_record_behaves_as_the_keyed_one() {
        let t0 = Instant::now();
        let addr: std::net::SocketAddr = "127.0.0.1:5683".parse().unwrap();
        let other: std::net::SocketAddr = "[::1]:5683".parse().unwrap();
        let mut d: SenderDedup<(std::net::SocketAddr, u16)> = Dedup::with_hasher(1024);
        for mid in 0..2000u16 {
            assert_eq!(d.check((addr, mid), LIFE, t0), Seen::New);
        }
        assert_eq!(d.len(), 1024);
        assert_eq!(d.check((addr, 1999), LIFE, t0), Seen::InProgress);
        assert_eq!(d.check((other, 1999), LIFE, t0), Seen::New);
        // Message ids next to each other spread over the table.
        let hashes: std::collections::HashSet<u64> = (0..1024u16)
            .map(|mid| {
                let mut h = MixHasher::default();
                (addr, mid).hash(&mut h);
                h.finish() >> 57
            })
            .collect();
        assert_eq!(hashes.len(), 128, "every control byte value is used");
    }

    #[test]
    fn the_record_is_bounded_and_forgets_the_oldest_first() {
        let t0 = Instant::now();
        let mut d = Dedup::new(3);
        for mid in 0..5u16 {
            assert_eq!(d.check(mid, LIFE, t0), Seen::New);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.check(4, LIFE, t0), Seen::InProgress);
        assert_eq!(d.check(0, LIFE, t0), Seen::New);
    }
}
