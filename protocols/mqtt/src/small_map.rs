//! A map for the many small maps of a broker: a list while it holds a few entries, std's
//! `HashMap` beyond.
//!
//! Owns nothing but its entries. Thousands of trie nodes and sessions each hold a map of one
//! or two entries, where a hash map costs about 128 bytes before its first entry and the list
//! exactly the entry. Never slower than linear in [`LIST_MAX`], whatever the keys.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

/// Entries up to which a [`SmallMap`] is a list searched in order.
pub const LIST_MAX: usize = 8;

/// A map that is a short list while it holds at most [`LIST_MAX`] entries and std's `HashMap`
/// beyond. Most trie nodes have one child and most filters one subscriber: a hash map costs
/// about 128 bytes for one entry, the list exactly the entry. Past the list, the map hashes
/// with std's SipHash under a per-map random key, because the keys come from untrusted
/// clients (no hash flooding); a list is never longer than [`LIST_MAX`], so its linear search
/// is bounded too.
pub enum SmallMap<K, V> {
    /// At most [`LIST_MAX`] entries, exactly as many as it holds.
    List(Vec<(K, V)>),
    // Boxed: the enum stays as small as the list (24 bytes, not 48) in every node.
    #[allow(
        clippy::box_collection,
        reason = "keeps the common, list-shaped node small"
    )]
    /// More than [`LIST_MAX`] entries.
    Hashed(Box<HashMap<K, V>>),
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    /// An empty map (a list without a buffer).
    pub fn new() -> Self {
        SmallMap::List(Vec::new())
    }

    /// The value of `key`.
    pub fn get<Q: ?Sized + Eq + Hash>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::List(list) => list.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Hashed(map) => map.get(key),
        }
    }

    /// The value of `key`, to change.
    pub fn get_mut<Q: ?Sized + Eq + Hash>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::List(list) => list
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Hashed(map) => map.get_mut(key),
        }
    }

    /// Inserts or replaces; the old value of `key`, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let list = match self {
            SmallMap::Hashed(map) => return map.insert(key, value),
            SmallMap::List(list) => list,
        };
        if let Some((_, slot)) = list.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(slot, value));
        }
        if list.len() < LIST_MAX {
            // Exactly as long as it needs to be: thousands of nodes hold one entry each.
            list.reserve_exact(1);
            list.push((key, value));
            return None;
        }
        let mut map: HashMap<K, V> = list.drain(..).collect();
        map.insert(key, value);
        *self = SmallMap::Hashed(Box::new(map));
        None
    }

    /// Takes `key` out; an emptied list frees its buffer.
    pub fn remove<Q: ?Sized + Eq + Hash>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::List(list) => {
                let at = list.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = list.swap_remove(at);
                if list.is_empty() {
                    *list = Vec::new();
                }
                Some(value)
            }
            SmallMap::Hashed(map) => map.remove(key),
        }
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        match self {
            SmallMap::List(list) => list.is_empty(),
            SmallMap::Hashed(map) => map.is_empty(),
        }
    }

    /// Calls `f` with every entry, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            SmallMap::List(list) => list.iter().for_each(|(k, v)| f(k, v)),
            SmallMap::Hashed(map) => map.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        match self {
            SmallMap::List(list) => list.len(),
            SmallMap::Hashed(map) => map.len(),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: ?Sized + Eq + Hash>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        match self {
            SmallMap::List(list) => Iter::List(list.iter()),
            SmallMap::Hashed(map) => Iter::Hashed(map.iter()),
        }
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }
}

impl<K: Eq + Hash, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::new()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        match self {
            SmallMap::List(list) => map.entries(list.iter().map(|(k, v)| (k, v))),
            SmallMap::Hashed(hashed) => map.entries(hashed.iter()),
        };
        map.finish()
    }
}

/// The entries of a [`SmallMap`].
#[derive(Debug)]
pub enum Iter<'a, K, V> {
    /// Of the list.
    List(std::slice::Iter<'a, (K, V)>),
    /// Of the hash map.
    Hashed(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::List(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Hashed(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_map_is_a_list_up_to_its_limit_then_a_hash_map_and_behaves_the_same() {
        let mut m: SmallMap<Box<str>, usize> = SmallMap::new();
        for i in 0..=LIST_MAX {
            assert!(matches!(m, SmallMap::List(_)), "{i}");
            assert_eq!(m.insert(format!("k{i}").into(), i), None);
        }
        assert!(matches!(m, SmallMap::Hashed(_)));
        for i in 0..=LIST_MAX {
            assert_eq!(m.get(format!("k{i}").as_str()), Some(&i));
        }
        assert_eq!(m.insert("k3".into(), 33), Some(3));
        *m.get_mut("k4").unwrap() = 44;
        let mut seen = Vec::new();
        m.for_each(|k, v| seen.push((k.to_string(), *v)));
        seen.sort();
        assert_eq!(seen.len(), LIST_MAX + 1);
        assert!(seen.contains(&("k3".into(), 33)) && seen.contains(&("k4".into(), 44)));
        assert_eq!(m.len(), LIST_MAX + 1);
        assert!(m.contains_key("k0") && !m.contains_key("k99"));
        assert_eq!(m.iter().count(), LIST_MAX + 1);
        assert_eq!(m.keys().count(), LIST_MAX + 1);
        for i in 0..=LIST_MAX {
            assert!(m.remove(format!("k{i}").as_str()).is_some());
        }
        assert!(m.is_empty());

        let mut small: SmallMap<u64, u8> = SmallMap::new();
        assert_eq!(small.insert(7, 1), None);
        assert_eq!(small.insert(7, 2), Some(1));
        assert_eq!(small.get(&7), Some(&2));
        assert_eq!(small.remove(&8), None);
        assert_eq!(small.remove(&7), Some(2));
        assert!(small.is_empty());
        assert_eq!(small.len(), 0);
        assert_eq!(format!("{:?}", small), "{}");
        // An emptied list keeps no buffer.
        assert!(matches!(&small, SmallMap::List(l) if l.capacity() == 0));
    }
}
