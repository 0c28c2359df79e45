//! The subscription index: which subscribed topic filters match a published topic name.
//!
//! Owns a trie of filter levels whose terminal nodes hold the subscribers of one filter. A match
//! costs one hash lookup per topic level per live branch, independent of how many filters are
//! stored, so it stays fast with hundreds of thousands of filters (STYLE rule 9: never a linear
//! scan with a cache that grows forever).
//!
//! It must never recurse and never validate. Topics and filters come from clients and can have
//! tens of thousands of levels, so insert, remove and match walk with explicit loops and stacks,
//! and nodes live in a flat arena (`Vec`) so that dropping a deep trie does not recurse either.
//! Callers validate filters with [`crate::topic::validate_topic_filter`] first; an invalid filter
//! is stored as-is and matches exactly what [`crate::topic::matches`] says it matches.

use crate::small_map::SmallMap;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;

/// Index of a node in the arena.
type NodeId = usize;

/// The root node: it stands for "no level consumed yet" and is never freed.
const ROOT: NodeId = 0;

/// A wildcard child's node in 4 bytes, not 16 (every node has two of them): never the root,
/// so never 0, and an arena of more than `u32::MAX` nodes (hundreds of GB) cannot exist.
type Child = Option<NonZeroU32>;

fn child_id(c: NonZeroU32) -> NodeId {
    c.get() as NodeId
}

fn as_child(id: NodeId) -> Child {
    NonZeroU32::new(u32::try_from(id).unwrap_or(0))
}

/// One level of the trie.
struct Node<K, V> {
    /// Literal-level children: a short list, then a SipHash map (see [`crate::small_map`]), because
    /// both the levels stored here and the levels looked up come from untrusted clients.
    children: SmallMap<Box<str>, NodeId>,
    /// The `+` child, kept out of `children` so a match reaches it without hashing.
    plus: Child,
    /// The `#` child. Its subscribers match every topic that reaches this node, whatever is left.
    hash: Child,
    /// Subscribers of the filter that ends at this node; boxed because most nodes are inner ones.
    terminal: Option<Box<Terminal<K, V>>>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: SmallMap::new(),
            plus: None,
            hash: None,
            terminal: None,
        }
    }

    /// True when nothing hangs off this node, so it can be pruned.
    fn is_unused(&self) -> bool {
        self.terminal.is_none()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.children.is_empty()
    }
}

/// The subscribers of one filter.
struct Terminal<K, V> {
    /// The subscribed filter, handed to match callbacks so callers need not rebuild it.
    filter: Box<str>,
    /// One value per subscriber; never empty (an emptied terminal is removed).
    subscribers: SmallMap<K, V>,
}

/// Where a pending branch of a match stands in the topic.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// The trie node reached so far.
    node: NodeId,
    /// Byte offset of the next unconsumed topic level, or `None` once every level is consumed.
    next: Option<usize>,
}

/// Scratch space for [`SubscriptionTrie::for_each_match_with`], so a router that matches many
/// publishes allocates its walk stack once instead of once per publish.
#[derive(Debug, Default)]
pub struct MatchStack {
    /// Pending branches; cleared at the start of every match.
    frames: Vec<Frame>,
}

impl MatchStack {
    /// An empty stack; it grows to the depth of the deepest match it is used for.
    pub fn new() -> Self {
        MatchStack::default()
    }
}

/// A subscription index mapping (topic filter, subscriber key) to a value.
///
/// `K` identifies a subscriber (a session, a shared-subscription group); `V` is what the caller
/// keeps per subscription (QoS, options, group members). One filter holds any number of keys;
/// one key holds at most one value per filter.
pub struct SubscriptionTrie<K, V> {
    /// The arena; `nodes[ROOT]` always exists. Freed slots are reset and listed in `free`.
    nodes: Vec<Node<K, V>>,
    /// Arena slots released by pruning, reused before the arena grows.
    free: Vec<NodeId>,
    /// Number of (filter, key) entries, so `len` is O(1).
    len: usize,
    /// Number of filters with at least one subscriber, so `filter_count` is O(1).
    filters: usize,
}

impl<K: Eq + Hash + Clone, V> SubscriptionTrie<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        SubscriptionTrie {
            nodes: vec![Node::new()],
            free: Vec::new(),
            len: 0,
            filters: 0,
        }
    }

    /// Subscribes `key` to `filter` with `value`. If `key` was already subscribed to exactly this
    /// filter, its value is replaced and the old one returned.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = ROOT;
        for level in filter.split('/') {
            node = self.child_or_insert(node, level);
        }
        let terminal = match &mut self.nodes[node].terminal {
            Some(terminal) => terminal,
            slot @ None => {
                self.filters += 1;
                slot.insert(Box::new(Terminal {
                    filter: filter.into(),
                    subscribers: SmallMap::new(),
                }))
            }
        };
        let old = terminal.subscribers.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Unsubscribes `key` from exactly `filter` (no wildcard expansion) and returns its value.
    /// Nodes left without subscribers or children are freed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        // The parents of the filter's node, one per level, to prune bottom-up afterwards.
        let mut parents = Vec::new();
        let mut node = ROOT;
        for level in filter.split('/') {
            parents.push(node);
            node = self.child(node, level)?;
        }
        let terminal = self.nodes[node].terminal.as_mut()?;
        let old = terminal.subscribers.remove(key)?;
        self.len -= 1;
        if terminal.subscribers.is_empty() {
            self.nodes[node].terminal = None;
            self.filters -= 1;
        }
        // `rsplit` yields the levels deepest first, matching `parents` walked in reverse.
        let mut child = node;
        for (&parent, level) in parents.iter().rev().zip(filter.rsplit('/')) {
            if !self.nodes[child].is_unused() {
                break;
            }
            self.detach(parent, level);
            self.release(child);
            child = parent;
        }
        Some(old)
    }

    /// The value `key` holds for exactly `filter` (no wildcard expansion).
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let node = self.find(filter)?;
        self.nodes[node].terminal.as_ref()?.subscribers.get(key)
    }

    /// Mutable access to the value `key` holds for exactly `filter` (no wildcard expansion).
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let node = self.find(filter)?;
        self.nodes[node].terminal.as_mut()?.subscribers.get_mut(key)
    }

    /// Calls `f(filter, key, value)` once for every subscription whose filter matches the topic
    /// name `topic`, following [`crate::topic::matches`]: `+` is one level, `#` the parent and
    /// everything below, and a topic starting with `$` is not matched by a leading `+` or `#`.
    ///
    /// The order of calls is unspecified. Allocates one walk stack per call; use
    /// [`for_each_match_with`](Self::for_each_match_with) to reuse one.
    pub fn for_each_match(&self, topic: &str, f: impl FnMut(&str, &K, &V)) {
        let mut stack = MatchStack::new();
        self.for_each_match_with(topic, &mut stack, f);
    }

    /// [`for_each_match`](Self::for_each_match) with a caller-owned stack, so matching does not
    /// allocate once the stack has grown to the depth of the topics it sees.
    pub fn for_each_match_with(
        &self,
        topic: &str,
        stack: &mut MatchStack,
        mut f: impl FnMut(&str, &K, &V),
    ) {
        // §4.7.2: a leading wildcard never matches a topic whose first level starts with `$`.
        let dollar = topic.starts_with('$');
        let frames = &mut stack.frames;
        frames.clear();
        frames.push(Frame {
            node: ROOT,
            next: Some(0),
        });
        while let Some(Frame { node, next }) = frames.pop() {
            let n = &self.nodes[node];
            let wildcards_allowed = !(dollar && node == ROOT);
            // A `#` child matches whatever is left of the topic, including nothing.
            if let (Some(hash), true) = (n.hash, wildcards_allowed) {
                self.emit(child_id(hash), &mut f);
            }
            let Some(start) = next else {
                self.emit(node, &mut f);
                continue;
            };
            let Some(rest) = topic.get(start..) else {
                continue;
            };
            let (level, after) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(start + i + 1)),
                None => (rest, None),
            };
            if let Some(&child) = n.children.get(level) {
                frames.push(Frame {
                    node: child,
                    next: after,
                });
            }
            if let (Some(plus), true) = (n.plus, wildcards_allowed) {
                frames.push(Frame {
                    node: child_id(plus),
                    next: after,
                });
            }
        }
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is subscribed to anything.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    fn emit(&self, node: NodeId, f: &mut impl FnMut(&str, &K, &V)) {
        if let Some(terminal) = &self.nodes[node].terminal {
            terminal
                .subscribers
                .for_each(|key, value| f(&terminal.filter, key, value));
        }
    }

    /// The node a filter ends at, if every level of it exists.
    fn find(&self, filter: &str) -> Option<NodeId> {
        let mut node = ROOT;
        for level in filter.split('/') {
            node = self.child(node, level)?;
        }
        Some(node)
    }

    fn child(&self, parent: NodeId, level: &str) -> Option<NodeId> {
        let p = &self.nodes[parent];
        match level {
            "+" => p.plus.map(child_id),
            "#" => p.hash.map(child_id),
            _ => p.children.get(level).copied(),
        }
    }

    fn child_or_insert(&mut self, parent: NodeId, level: &str) -> NodeId {
        if let Some(child) = self.child(parent, level) {
            return child;
        }
        let child = self.allocate();
        let p = &mut self.nodes[parent];
        match level {
            "+" => p.plus = as_child(child),
            "#" => p.hash = as_child(child),
            _ => {
                p.children.insert(level.into(), child);
            }
        }
        child
    }

    fn detach(&mut self, parent: NodeId, level: &str) {
        let p = &mut self.nodes[parent];
        match level {
            "+" => p.plus = None,
            "#" => p.hash = None,
            _ => {
                p.children.remove(level);
            }
        }
    }

    fn allocate(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::new());
                self.nodes.len() - 1
            }
        }
    }

    /// Returns a detached node to the free list, dropping its (empty) maps' memory.
    fn release(&mut self, node: NodeId) {
        self.nodes[node] = Node::new();
        self.free.push(node);
    }
}

impl<K: Eq + Hash + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie::new()
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .field("filter_count", &self.filters)
            .field("nodes", &(self.nodes.len() - self.free.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap, HashSet};

    /// Every (filter, key, value) the trie reports for `topic`, sorted.
    fn matched<K: Eq + Hash + Clone + Ord, V: Clone + Ord>(
        trie: &SubscriptionTrie<K, V>,
        topic: &str,
    ) -> Vec<(String, K, V)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |filter, key, value| {
            out.push((filter.to_owned(), key.clone(), value.clone()));
        });
        out.sort();
        out
    }

    fn filters_matching(trie: &SubscriptionTrie<u32, u32>, topic: &str) -> Vec<String> {
        let mut out: Vec<String> = matched(trie, topic)
            .into_iter()
            .map(|(f, _, _)| f)
            .collect();
        out.dedup();
        out
    }

    fn live_nodes<K, V>(trie: &SubscriptionTrie<K, V>) -> usize {
        trie.nodes.len() - trie.free.len()
    }

    #[test]
    fn a_new_trie_is_empty() {
        let trie: SubscriptionTrie<u32, ()> = SubscriptionTrie::default();
        assert!(trie.is_empty());
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.filter_count(), 0);
        assert_eq!(
            format!("{trie:?}"),
            "SubscriptionTrie { len: 0, filter_count: 0, nodes: 1 }"
        );
    }

    #[test]
    fn inserting_the_same_filter_and_key_replaces_the_value() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert("a/b", 1, "first"), None);
        assert_eq!(trie.insert("a/b", 1, "second"), Some("first"));
        assert_eq!(trie.get("a/b", &1), Some(&"second"));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.filter_count(), 1);
    }

    #[test]
    fn one_filter_holds_many_keys_and_one_key_many_filters() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/+", 1, 10);
        trie.insert("a/+", 2, 20);
        trie.insert("a/#", 1, 11);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.filter_count(), 2);
        assert_eq!(
            matched(&trie, "a/b"),
            vec![
                ("a/#".to_owned(), 1, 11),
                ("a/+".to_owned(), 1, 10),
                ("a/+".to_owned(), 2, 20),
            ]
        );
    }

    #[test]
    fn get_and_remove_look_up_the_exact_filter_without_wildcard_expansion() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/+", 1, 10);
        assert_eq!(trie.get("a/b", &1), None);
        assert_eq!(trie.get("a/+", &2), None);
        assert_eq!(trie.remove("a/b", &1), None);
        assert_eq!(trie.remove("a/+", &2), None);
        assert_eq!(trie.remove("a/+/c", &1), None);
        assert_eq!(trie.remove("a", &1), None);
        assert_eq!(trie.len(), 1);
        if let Some(v) = trie.get_mut("a/+", &1) {
            *v = 12;
        }
        assert_eq!(trie.remove("a/+", &1), Some(12));
        assert!(trie.is_empty());
    }

    #[test]
    fn removing_the_last_subscription_prunes_every_node() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/b/c", 1, ());
        trie.insert("a/+/#", 1, ());
        trie.insert("a", 2, ());
        assert_eq!(live_nodes(&trie), 6, "root, a, b, c, + and #");
        trie.remove("a/b/c", &1);
        assert_eq!(live_nodes(&trie), 4, "b and c are gone, a stays");
        trie.remove("a", &2);
        assert_eq!(live_nodes(&trie), 4, "a is kept: a/+/# hangs off it");
        trie.remove("a/+/#", &1);
        assert_eq!(live_nodes(&trie), 1);
        assert_eq!(trie.filter_count(), 0);
        // Freed slots are reused rather than growing the arena.
        let arena = trie.nodes.len();
        trie.insert("x/y/z", 1, ());
        assert_eq!(trie.nodes.len(), arena);
    }

    #[test]
    fn the_callback_receives_the_subscribed_filter() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("sensors/+/temp", 7u32, 0u32);
        assert_eq!(
            filters_matching(&trie, "sensors/kitchen/temp"),
            vec!["sensors/+/temp"]
        );
    }

    #[test]
    fn spec_examples_match_through_the_trie() {
        // MQTT 3.1.1 §4.7.1.
        let mut trie = SubscriptionTrie::new();
        for (i, f) in [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/+",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
        ]
        .into_iter()
        .enumerate()
        {
            trie.insert(f, i as u32, 0);
        }
        assert_eq!(
            filters_matching(&trie, "sport/tennis/player1"),
            vec!["#", "sport/#", "sport/tennis/+", "sport/tennis/player1/#"]
        );
        assert_eq!(
            filters_matching(&trie, "sport/tennis/player1/score/wimbledon"),
            vec!["#", "sport/#", "sport/tennis/player1/#"]
        );
        assert_eq!(filters_matching(&trie, "sport"), vec!["#", "+", "sport/#"]);
        assert_eq!(
            filters_matching(&trie, "sport/"),
            vec!["#", "+/+", "sport/#", "sport/+"]
        );
        assert_eq!(filters_matching(&trie, "/finance"), vec!["#", "+/+", "/+"]);
    }

    #[test]
    fn a_multi_level_wildcard_matches_its_parent_level() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/#", 1u32, 0u32);
        assert_eq!(filters_matching(&trie, "a"), vec!["a/#"]);
        assert_eq!(filters_matching(&trie, "a/b/c"), vec!["a/#"]);
        assert!(filters_matching(&trie, "b").is_empty());
    }

    #[test]
    fn a_leading_wildcard_does_not_match_dollar_topics() {
        // MQTT 3.1.1 §4.7.2.
        let mut trie = SubscriptionTrie::new();
        for (i, f) in ["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+"]
            .into_iter()
            .enumerate()
        {
            trie.insert(f, i as u32, 0);
        }
        assert_eq!(
            filters_matching(&trie, "$SYS/monitor/Clients"),
            vec!["$SYS/#", "$SYS/monitor/+"]
        );
        assert_eq!(filters_matching(&trie, "$SYS"), vec!["$SYS/#"]);
        assert_eq!(
            filters_matching(&trie, "x/monitor/Clients"),
            vec!["#", "+/monitor/Clients"]
        );
    }

    #[test]
    fn a_misplaced_multi_level_wildcard_is_stored_but_matches_nothing() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/#/b", 1u32, 0u32);
        assert!(filters_matching(&trie, "a/x/b").is_empty());
        assert!(filters_matching(&trie, "a").is_empty());
        assert_eq!(trie.remove("a/#/b", &1), Some(0));
        assert_eq!(live_nodes(&trie), 1);
    }

    #[test]
    fn a_reused_match_stack_gives_the_same_answers() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/+", 1u32, 0u32);
        trie.insert("a/b", 2, 0);
        let mut stack = MatchStack::new();
        for _ in 0..3 {
            let mut n = 0;
            trie.for_each_match_with("a/b", &mut stack, |_, _, _| n += 1);
            assert_eq!(n, 2);
        }
    }

    #[test]
    fn a_seventy_thousand_level_topic_does_not_overflow_the_stack() {
        let deep = vec!["a"; 70_000].join("/");
        let mut trie = SubscriptionTrie::new();
        trie.insert("#", 1u32, 0u32);
        trie.insert("a/#", 2, 0);
        trie.insert("+/+", 3, 0);
        trie.insert(&deep, 4, 0);
        let deep_plus = format!("{}/+", vec!["a"; 69_999].join("/"));
        trie.insert(&deep_plus, 5, 0);
        let mut keys: Vec<u32> = matched(&trie, &deep).into_iter().map(|m| m.1).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![1, 2, 4, 5]);

        let empty_levels = "/".repeat(69_999);
        let mut keys: Vec<u32> = matched(&trie, &empty_levels)
            .into_iter()
            .map(|m| m.1)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![1]);

        assert_eq!(trie.get(&deep, &4), Some(&0));
        assert_eq!(trie.remove(&deep, &4), Some(0));
        assert_eq!(trie.remove(&deep_plus, &5), Some(0));
        assert_eq!(live_nodes(&trie), 6, "root, #, a, a/#, + and +/+");
        // A deep trie is dropped without recursion, too.
        trie.insert(&deep, 4, 0);
        drop(trie);
    }

    /// A small deterministic generator (xorshift64*), so the big test needs no `rand`.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Every filter that could match a three-level topic `[s, d, m]`: each level kept or
    /// replaced by `+`, cut at any depth and closed by `#`, or all three levels exactly.
    fn candidate_filters(levels: [&str; 3]) -> Vec<String> {
        let mut out = Vec::new();
        for depth in 0..=3usize {
            for mask in 0..(1u32 << depth) {
                let prefix: Vec<&str> = (0..depth)
                    .map(|i| if mask & (1 << i) != 0 { "+" } else { levels[i] })
                    .collect();
                if depth == 3 {
                    out.push(prefix.join("/"));
                }
                let mut with_hash = prefix;
                with_hash.push("#");
                out.push(with_hash.join("/"));
            }
        }
        out
    }

    #[test]
    fn a_hundred_thousand_filters_match_exactly_the_right_subscriptions() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut trie = SubscriptionTrie::new();
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut exact = Vec::new();
        let mut key = 0u32;
        let mut second_subscribers = 0;
        while subscribed.len() < 100_000 {
            let s = format!("site{}", rng.below(50));
            let d = format!("dev{}", rng.below(2_000));
            let m = format!("m{}", rng.below(20));
            let filter = match rng.below(10) {
                0..=5 => format!("{s}/{d}/{m}"),
                6 => format!("{s}/+/{m}"),
                7 => format!("+/{d}/+"),
                8 => format!("{s}/{d}/#"),
                _ => format!("{s}/#"),
            };
            if subscribed.insert(filter.clone()) {
                if !filter.contains(['+', '#']) {
                    exact.push(filter.clone());
                }
                // About one filter in ten gets a second subscriber.
                trie.insert(&filter, key, key);
                if rng.below(10) == 0 {
                    trie.insert(&filter, key + 1, key);
                    second_subscribers += 1;
                }
                key += 2;
            }
        }
        trie.insert("$SYS/#", u32::MAX, 0);
        assert_eq!(trie.filter_count(), 100_001);
        assert_eq!(trie.len(), 100_001 + second_subscribers);

        let mut total = 0;
        for i in 0..10_000 {
            let topic = if i % 2 == 0 {
                exact[rng.below(exact.len() as u64) as usize].clone()
            } else {
                format!(
                    "site{}/dev{}/m{}",
                    rng.below(50),
                    rng.below(2_000),
                    rng.below(20)
                )
            };
            let parts: Vec<&str> = topic.split('/').collect();
            let expected: BTreeSet<String> = candidate_filters([parts[0], parts[1], parts[2]])
                .into_iter()
                .filter(|f| subscribed.contains(f))
                .collect();
            let got: BTreeSet<String> = filters_matching(&trie, &topic).into_iter().collect();
            assert_eq!(got, expected, "topic {topic}");
            if i % 2 == 0 {
                assert!(got.contains(&topic));
            }
            total += got.len();
            // Spot-check the candidate oracle itself against a full scan.
            if i < 5 {
                let scanned: BTreeSet<String> = subscribed
                    .iter()
                    .filter(|f| matches(f, &topic))
                    .cloned()
                    .collect();
                assert_eq!(scanned, expected, "topic {topic}");
            }
        }
        assert!(total > 10_000, "the workload should produce many matches");
        assert_eq!(filters_matching(&trie, "$SYS/uptime"), vec!["$SYS/#"]);
    }

    /// Levels random filters and topics are built from, wildcards included on both sides so the
    /// trie is checked against `matches` on invalid input too.
    const LEVELS: &[&str] = &["", "+", "#", "$SYS", "a", "b"];

    fn any_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(LEVELS), 1..5).prop_map(|l| l.join("/"))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, u8, u32),
        Remove(usize, u8),
    }

    fn op(filters: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..filters, 0u8..3, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            (0..filters, 0u8..3).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        #[test]
        fn the_trie_matches_exactly_the_inserted_filters_that_match(
            filters in prop::collection::vec(any_path(), 1..12),
            ops in prop::collection::vec(op(12), 0..60),
            topics in prop::collection::vec(any_path(), 1..8),
        ) {
            let mut trie = SubscriptionTrie::new();
            let mut model: HashMap<(String, u8), u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(f, k, v) => {
                        let f = &filters[f % filters.len()];
                        let old = trie.insert(f, k, v);
                        prop_assert_eq!(old, model.insert((f.clone(), k), v));
                    }
                    Op::Remove(f, k) => {
                        let f = &filters[f % filters.len()];
                        prop_assert_eq!(trie.remove(f, &k), model.remove(&(f.clone(), k)));
                    }
                }
            }
            prop_assert_eq!(trie.len(), model.len());
            let distinct: HashSet<&String> = model.keys().map(|(f, _)| f).collect();
            prop_assert_eq!(trie.filter_count(), distinct.len());
            // Pruning leaves exactly one node per distinct level prefix of a live filter.
            let mut prefixes: HashSet<Vec<&str>> = HashSet::new();
            for f in &distinct {
                let levels: Vec<&str> = f.split('/').collect();
                for depth in 1..=levels.len() {
                    prefixes.insert(levels[..depth].to_vec());
                }
            }
            prop_assert_eq!(live_nodes(&trie), prefixes.len() + 1);
            for ((f, k), v) in &model {
                prop_assert_eq!(trie.get(f, k), Some(v));
            }
            for topic in &topics {
                let mut got = Vec::new();
                trie.for_each_match(topic, |f, k, v| got.push((f.to_owned(), *k, *v)));
                got.sort();
                let mut expected: Vec<(String, u8, u32)> = model
                    .iter()
                    .filter(|((f, _), _)| matches(f, topic))
                    .map(|((f, k), v)| (f.clone(), *k, *v))
                    .collect();
                expected.sort();
                prop_assert_eq!(got, expected, "topic {:?}", topic);
            }
        }
    }
}
