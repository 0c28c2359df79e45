//! Authorization: the ACL file, compiled into indexes, and the per-client check.
//!
//! Owns the ACL file format (DESIGN.md "Interfaces"), its parser with `file:line: reason`
//! errors, the compiled [`Acl`], the per-client [`ClientAcl`] view, and the [`AclHandle`] a
//! reload swaps. It is sans-IO apart from [`Acl::load`] (one file read): no sockets, no tokio,
//! no locks held across anything but a pointer copy. It must never panic on a file's content,
//! and never let a client's own id or name widen what a rule grants (a placeholder value with
//! `+`, `#` or `/` makes that rule topic match nothing for the client).
//!
//! Semantics follow EMQX's file authorizer:
//! - rules are tried in file order and the first whose `who`, `action` and one of whose
//!   `topics` match decides; no match means `acl_nomatch`;
//! - publish: a rule filter matches the topic name by MQTT wildcard matching;
//! - subscribe: the rule filter is matched against the subscription *filter*, whose own `+`
//!   and `#` are taken as plain levels (EMQX's `emqx_topic:match/2`): rule `a/#` covers the
//!   subscription `a/+`, rule `a/+` covers `a/#` (one level against one level), rule `a/b`
//!   does not cover `a/+`. Shared subscriptions are checked on their real filter
//!   (`$share/g/a/b` as `a/b`);
//! - `eq FILTER` matches only that exact string (for a subscribe: exactly that filter,
//!   wildcards included; for a publish: that topic name);
//! - `%u` and `%c` in a topic are the client's user name and client id; a rule topic with
//!   `%u` matches nothing for a client without a user name.
//!
//! Cost: rules without placeholders are indexed at load. `who = { user }` and
//! `who = { clientid }` rules are grouped per name (a client only ever looks at its own
//! group); `all` and `ipaddr` rules go into one topic trie per action plus a hash map for
//! `eq` topics, so a check costs a trie walk, not a scan of the file. Rules with placeholders
//! are expanded once per client, when its view is built, and kept in that view.

use holdfast_mqtt::topic;
use holdfast_mqtt::trie::SubscriptionTrie;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use toml::Spanned;

/// What a matching rule (or `acl_nomatch`) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Let the publish or subscribe through.
    Allow,
    /// Refuse it.
    Deny,
}

impl Permission {
    /// Reads `allow` or `deny`.
    pub fn parse(word: &str) -> Option<Permission> {
        match word {
            "allow" => Some(Permission::Allow),
            "deny" => Some(Permission::Deny),
            _ => None,
        }
    }

    /// The word used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        }
    }
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// Which actions a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actions {
    Publish,
    Subscribe,
    All,
}

impl Actions {
    fn covers(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Actions::All, _)
                | (Actions::Publish, Action::Publish)
                | (Actions::Subscribe, Action::Subscribe)
        )
    }
}

/// An IP network in CIDR notation; a bare address is a /32 (IPv4) or /128 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, host bits zero.
    net: IpAddr,
    /// Prefix length (0..=32 or 0..=128).
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`, `::1`. Host bits set after the
    /// prefix (`10.1.2.3/8`) are refused: they are usually a typo for a longer prefix.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Plain digits only: `u8::from_str` would take "+8".
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0..={max}")),
            },
        };
        let cidr = Cidr { net, prefix };
        if cidr.mask(net) != net {
            return Err(format!(
                "{text:?} has host bits set after the /{prefix} prefix (did you mean {}/{prefix}?)",
                cidr.mask(net)
            ));
        }
        Ok(cidr)
    }

    /// `ip` with the bits after the prefix cleared (in this network's family).
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, what a
    /// dual-stack listener reports) is compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && self.mask(ip) == self.net
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Who a connected client is, as the ACL sees it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// The client id (assigned one included).
    pub client_id: &'a str,
    /// The CONNECT user name, if any.
    pub username: Option<&'a str>,
    /// The peer address.
    pub ip: IpAddr,
}

/// Whom a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    User(Box<str>),
    ClientId(Box<str>),
    Ip(Cidr),
    All,
}

impl Who {
    fn applies_to(&self, client: &ClientIdentity<'_>) -> bool {
        match self {
            Who::User(u) => client.username == Some(&**u),
            Who::ClientId(c) => client.client_id == &**c,
            Who::Ip(cidr) => cidr.contains(client.ip),
            Who::All => true,
        }
    }
}

/// One topic of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicRule {
    /// The filter (placeholders expanded, once they are).
    text: Box<str>,
    /// `eq`: exact string equality instead of wildcard matching.
    exact: bool,
}

impl TopicRule {
    fn matches(&self, target: &str) -> bool {
        if self.exact {
            &*self.text == target
        } else {
            topic::matches(&self.text, target)
        }
    }

    fn has_placeholders(&self) -> bool {
        self.text.contains("%u") || self.text.contains("%c")
    }

    /// The topic for `client`, or `None` when a placeholder has no safe value for it.
    fn expand(&self, client: &ClientIdentity<'_>) -> Option<TopicRule> {
        let safe = |v: &str| !v.is_empty() && !v.contains(['+', '#', '/', '\0']);
        let mut text = self.text.to_string();
        if text.contains("%u") {
            let user = client.username.filter(|u| safe(u))?;
            text = text.replace("%u", user);
        }
        if text.contains("%c") {
            if !safe(client.client_id) {
                return None;
            }
            text = text.replace("%c", client.client_id);
        }
        Some(TopicRule {
            text: text.into(),
            exact: self.exact,
        })
    }
}

/// One (rule, topic) pair, in rule order within its group.
#[derive(Debug, Clone)]
struct Entry {
    /// Index of the rule in the file (0-based, file order): smaller wins.
    rule: u32,
    actions: Actions,
    topic: TopicRule,
}

/// First rule in `entries` (sorted by rule) that covers `action` on `target`.
fn first_in(entries: &[Entry], action: Action, target: &str) -> Option<u32> {
    entries
        .iter()
        .find(|e| e.actions.covers(action) && e.topic.matches(target))
        .map(|e| e.rule)
}

/// Rules of one action for `all` and `ipaddr` clients, without placeholders.
struct SharedIndex {
    /// Wildcard-matched filters -> rule indexes.
    trie: SubscriptionTrie<u32, ()>,
    /// `eq` strings -> rule indexes, ascending.
    exact: HashMap<Box<str>, Vec<u32>>,
}

impl SharedIndex {
    fn new() -> SharedIndex {
        SharedIndex {
            trie: SubscriptionTrie::new(),
            exact: HashMap::new(),
        }
    }

    fn insert(&mut self, rule: u32, topic: &TopicRule) {
        if topic.exact {
            let list = self.exact.entry(topic.text.clone()).or_default();
            if list.last() != Some(&rule) {
                list.push(rule);
            }
        } else {
            self.trie.insert(&topic.text, rule, ());
        }
    }

    /// Smallest rule below `best` that matches `target` and applies to `client`.
    fn first(&self, rules: &[RuleMeta], target: &str, client: IpAddr, mut best: u32) -> u32 {
        let applies = |rule: u32| {
            rules
                .get(rule as usize)
                .is_some_and(|m| m.network.is_none_or(|n| n.contains(client)))
        };
        self.trie.for_each_match(target, |_, &rule, ()| {
            if rule < best && applies(rule) {
                best = rule;
            }
        });
        if let Some(list) = self.exact.get(target) {
            if let Some(&rule) = list.iter().find(|&&r| r < best && applies(r)) {
                best = rule;
            }
        }
        best
    }
}

impl fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedIndex")
            .field("filters", &self.trie.filter_count())
            .field("exact", &self.exact.len())
            .finish()
    }
}

/// What the check needs to know about a rule by its index.
#[derive(Debug, Clone, Copy)]
struct RuleMeta {
    permission: Permission,
    /// For shared-index rules: `None` for `all`, the network for `ipaddr`.
    network: Option<Cidr>,
    /// 1-based line of the rule in its file, for logs.
    line: u32,
}

/// A rule with a placeholder topic, expanded per client.
#[derive(Debug, Clone)]
struct Templated {
    who: Who,
    entry: Entry,
}

/// A compiled ACL: every rule of one file, plus `acl_nomatch`.
#[derive(Debug)]
pub struct Acl {
    rules: Vec<RuleMeta>,
    nomatch: Permission,
    by_user: HashMap<Box<str>, Arc<[Entry]>>,
    by_client: HashMap<Box<str>, Arc<[Entry]>>,
    publish: SharedIndex,
    subscribe: SharedIndex,
    /// `all`/`ipaddr` deny rules for subscribe with a wildcard-matched topic, in rule order:
    /// the ones a wildcard subscription could cross (see [`ClientAcl::check`]).
    subscribe_denies: Vec<(u32, Box<str>)>,
    templated: Vec<Templated>,
}

/// What is wrong with an ACL file.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read ACL file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid ACL.
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    permission: Spanned<String>,
    who: Spanned<RawWho>,
    action: Spanned<String>,
    topics: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWho {
    user: Option<String>,
    clientid: Option<String>,
    ipaddr: Option<String>,
    all: Option<bool>,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

impl Acl {
    /// An ACL without rules: everything gets `nomatch`.
    pub fn empty(nomatch: Permission) -> Acl {
        Acl {
            rules: Vec::new(),
            nomatch,
            by_user: HashMap::new(),
            by_client: HashMap::new(),
            publish: SharedIndex::new(),
            subscribe: SharedIndex::new(),
            subscribe_denies: Vec::new(),
            templated: Vec::new(),
        }
    }

    /// Reads and compiles `path`.
    pub fn load(path: &Path, nomatch: Permission) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        Acl::parse(&text, path, nomatch)
    }

    /// Compiles the text of an ACL file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path, nomatch: Permission) -> Result<Acl, AclError> {
        let invalid = |offset: usize, reason: String| AclError::Invalid {
            path: path.to_owned(),
            line: line_of(text, offset),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // One log line: toml's message may span lines ("...\nexpected `.`, `]]`").
            let message: Vec<&str> = e.message().lines().map(str::trim).collect();
            invalid(offset, message.join(": "))
        })?;
        if raw.rules.len() >= u32::MAX as usize {
            return Err(invalid(0, "too many rules".to_owned()));
        }
        let mut acl = Acl::empty(nomatch);
        let mut by_user: HashMap<Box<str>, Vec<Entry>> = HashMap::new();
        let mut by_client: HashMap<Box<str>, Vec<Entry>> = HashMap::new();
        for (index, spanned) in raw.rules.iter().enumerate() {
            let rule = index as u32;
            let r = spanned.get_ref();
            let permission = Permission::parse(r.permission.get_ref()).ok_or_else(|| {
                invalid(
                    r.permission.span().start,
                    format!(
                        "permission: {:?} is not allow or deny",
                        r.permission.get_ref()
                    ),
                )
            })?;
            let actions = match r.action.get_ref().as_str() {
                "publish" => Actions::Publish,
                "subscribe" => Actions::Subscribe,
                "all" => Actions::All,
                other => {
                    return Err(invalid(
                        r.action.span().start,
                        format!("action: {other:?} is not publish, subscribe or all"),
                    ))
                }
            };
            let who = parse_who(r.who.get_ref())
                .map_err(|reason| invalid(r.who.span().start, format!("who: {reason}")))?;
            if r.topics.get_ref().is_empty() {
                return Err(invalid(
                    r.topics.span().start,
                    "topics: must list at least one topic filter (\"#\" for every topic)"
                        .to_owned(),
                ));
            }
            let mut topics = Vec::new();
            for t in r.topics.get_ref() {
                let topic = parse_topic(t.get_ref())
                    .map_err(|reason| invalid(t.span().start, format!("topics: {reason}")))?;
                topics.push(topic);
            }
            acl.rules.push(RuleMeta {
                permission,
                network: match &who {
                    Who::Ip(cidr) => Some(*cidr),
                    _ => None,
                },
                line: line_of(text, spanned.span().start) as u32,
            });
            for topic in topics {
                let entry = Entry {
                    rule,
                    actions,
                    topic,
                };
                if entry.topic.has_placeholders() {
                    acl.templated.push(Templated {
                        who: who.clone(),
                        entry,
                    });
                    continue;
                }
                match &who {
                    Who::User(u) => by_user.entry(u.clone()).or_default().push(entry),
                    Who::ClientId(c) => by_client.entry(c.clone()).or_default().push(entry),
                    Who::Ip(_) | Who::All => {
                        if actions.covers(Action::Publish) {
                            acl.publish.insert(rule, &entry.topic);
                        }
                        if actions.covers(Action::Subscribe) {
                            acl.subscribe.insert(rule, &entry.topic);
                            if permission == Permission::Deny && !entry.topic.exact {
                                acl.subscribe_denies.push((rule, entry.topic.text.clone()));
                            }
                        }
                    }
                }
            }
        }
        acl.by_user = by_user.into_iter().map(|(k, v)| (k, v.into())).collect();
        acl.by_client = by_client.into_iter().map(|(k, v)| (k, v.into())).collect();
        Ok(acl)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules (every check gets `nomatch`).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What happens when no rule matches.
    pub fn nomatch(&self) -> Permission {
        self.nomatch
    }

    /// The view of this ACL for one client: its user and client-id groups, and its rules with
    /// placeholders expanded. Cheap to check against; built once per client and ACL version.
    pub fn for_client(self: &Arc<Acl>, client: &ClientIdentity<'_>) -> ClientAcl {
        let user = client
            .username
            .and_then(|u| self.by_user.get(u))
            .map(Arc::clone);
        let by_client = self.by_client.get(client.client_id).map(Arc::clone);
        let expanded = self
            .templated
            .iter()
            .filter(|t| t.who.applies_to(client))
            .filter_map(|t| {
                Some(Entry {
                    rule: t.entry.rule,
                    actions: t.entry.actions,
                    topic: t.entry.topic.expand(client)?,
                })
            })
            .collect();
        ClientAcl {
            acl: Arc::clone(self),
            ip: client.ip,
            user,
            client: by_client,
            expanded,
        }
    }

    /// Checks once, building a throwaway view (tests, one-off checks).
    pub fn check(
        self: &Arc<Acl>,
        client: &ClientIdentity<'_>,
        action: Action,
        topic: &str,
    ) -> Permission {
        self.for_client(client).check(action, topic).permission
    }
}

fn parse_who(raw: &RawWho) -> Result<Who, String> {
    let given = [
        raw.user.is_some(),
        raw.clientid.is_some(),
        raw.ipaddr.is_some(),
        raw.all.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given != 1 {
        return Err(
            "give exactly one of { user = \"..\" }, { clientid = \"..\" }, { ipaddr = \"CIDR\" }, { all = true }"
                .to_owned(),
        );
    }
    if let Some(u) = &raw.user {
        if u.is_empty() {
            return Err("user must not be empty".to_owned());
        }
        return Ok(Who::User(u.as_str().into()));
    }
    if let Some(c) = &raw.clientid {
        if c.is_empty() {
            return Err("clientid must not be empty".to_owned());
        }
        return Ok(Who::ClientId(c.as_str().into()));
    }
    if let Some(ip) = &raw.ipaddr {
        return Cidr::parse(ip).map(Who::Ip);
    }
    match raw.all {
        Some(true) => Ok(Who::All),
        _ => Err("all must be true (leave the rule out to match nobody)".to_owned()),
    }
}

fn parse_topic(text: &str) -> Result<TopicRule, String> {
    let (filter, exact) = match text.strip_prefix("eq ") {
        Some(rest) => (rest.trim_start(), true),
        None => (text, false),
    };
    if let Err(e) = topic::validate_topic_filter(filter) {
        return Err(format!("{text:?} is not a valid topic filter: {e}"));
    }
    Ok(TopicRule {
        text: filter.into(),
        exact,
    })
}

/// The filter a subscription is checked on: a shared subscription's real filter.
fn subscription_target(filter: &str) -> &str {
    match topic::parse_shared(filter) {
        Ok(Some(shared)) => shared.filter,
        _ => filter,
    }
}

/// The outcome of a check, with the rule that decided (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Allow or deny.
    pub permission: Permission,
    /// The deciding rule's line in the file; `None` when `acl_nomatch` decided.
    pub line: Option<u32>,
}

/// One client's view of an [`Acl`]. See [`Acl::for_client`].
#[derive(Debug)]
pub struct ClientAcl {
    acl: Arc<Acl>,
    ip: IpAddr,
    /// The rules of `who = { user = <this user> }`.
    user: Option<Arc<[Entry]>>,
    /// The rules of `who = { clientid = <this client> }`.
    client: Option<Arc<[Entry]>>,
    /// Rules with placeholders that apply to this client, expanded.
    expanded: Box<[Entry]>,
}

impl ClientAcl {
    /// Decides whether this client may `action` on `topic` (a topic name for a publish, a
    /// filter for a subscribe).
    pub fn check(&self, action: Action, topic: &str) -> Verdict {
        let target = match action {
            Action::Publish => topic,
            Action::Subscribe => subscription_target(topic),
        };
        let mut best = u32::MAX;
        for group in [self.user.as_deref(), self.client.as_deref()]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&*self.expanded))
        {
            if let Some(rule) = first_in(group, action, target) {
                best = best.min(rule);
            }
        }
        let shared = match action {
            Action::Publish => &self.acl.publish,
            Action::Subscribe => &self.acl.subscribe,
        };
        best = shared.first(&self.acl.rules, target, self.ip, best);
        let allowed = self
            .acl
            .rules
            .get(best as usize)
            .map_or(self.acl.nomatch, |m| m.permission)
            == Permission::Allow;
        if action == Action::Subscribe && allowed {
            // A wildcard subscription must not receive what a deny rule before the deciding
            // one withholds: `#` would otherwise read `secret/plans` past `deny secret/#`.
            if let Some(deny) = self.crossing_deny(target, best) {
                best = deny;
            }
        }
        match self.acl.rules.get(best as usize) {
            Some(meta) => Verdict {
                permission: meta.permission,
                line: Some(meta.line),
            },
            None => Verdict {
                permission: self.acl.nomatch,
                line: None,
            },
        }
    }
}

impl ClientAcl {
    /// The first deny rule before rule `before` that applies to this client, covers subscribe
    /// and whose (wildcard) topic overlaps the filter `target`.
    fn crossing_deny(&self, target: &str, before: u32) -> Option<u32> {
        let rules = &self.acl.rules;
        let denies = |rule: u32| {
            rules
                .get(rule as usize)
                .is_some_and(|m| m.permission == Permission::Deny)
        };
        let mut first: Option<u32> = None;
        for group in [self.user.as_deref(), self.client.as_deref()]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&*self.expanded))
        {
            if let Some(e) = group.iter().find(|e| {
                e.rule < before
                    && e.actions.covers(Action::Subscribe)
                    && !e.topic.exact
                    && denies(e.rule)
                    && topic::filters_overlap(&e.topic.text, target)
            }) {
                first = Some(first.map_or(e.rule, |f| f.min(e.rule)));
            }
        }
        let shared = self.acl.subscribe_denies.iter().find(|(rule, text)| {
            *rule < before
                && rules
                    .get(*rule as usize)
                    .is_some_and(|m| m.network.is_none_or(|n| n.contains(self.ip)))
                && topic::filters_overlap(text, target)
        });
        if let Some(&(rule, _)) = shared {
            first = Some(first.map_or(rule, |f| f.min(rule)));
        }
        first
    }
}

/// `$SYS` names every client, its user and its address: a subscription to it that no rule
/// decided (`acl_nomatch` allowed it) is allowed only to local tools (a loopback peer), as in
/// EMQX's default acl.conf.
pub fn local_only_sys(verdict: Verdict, action: Action, filter: &str, ip: IpAddr) -> Verdict {
    if verdict.line.is_none()
        && verdict.permission == Permission::Allow
        && action == Action::Subscribe
        && subscription_target(filter).starts_with("$SYS")
        && !ip.is_loopback()
    {
        return Verdict {
            permission: Permission::Deny,
            line: None,
        };
    }
    verdict
}

/// The ACL in force, swapped whole by a reload. Connections keep a [`ClientAcl`] and rebuild
/// it when the generation moves on.
#[derive(Debug)]
pub struct AclHandle {
    current: RwLock<Arc<Acl>>,
    /// Bumped by every [`replace`](Self::replace).
    generation: AtomicU64,
    /// 0: the ACL has rules; 1: no rules, nomatch allow; 2: no rules, nomatch deny. Lets a
    /// gateway without an ACL decide without touching the lock or building views.
    trivial: AtomicU8,
}

fn trivial_code(acl: &Acl) -> u8 {
    match (acl.is_empty(), acl.nomatch) {
        (false, _) => 0,
        (true, Permission::Allow) => 1,
        (true, Permission::Deny) => 2,
    }
}

impl AclHandle {
    /// A handle over `acl`.
    pub fn new(acl: Acl) -> AclHandle {
        AclHandle {
            trivial: AtomicU8::new(trivial_code(&acl)),
            current: RwLock::new(Arc::new(acl)),
            generation: AtomicU64::new(1),
        }
    }

    /// The ACL in force.
    pub fn current(&self) -> Arc<Acl> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `acl` in force; clients pick it up at their next check.
    pub fn replace(&self, acl: Acl) {
        let code = trivial_code(&acl);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(acl);
        self.trivial.store(code, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Decides for a connection, keeping its view in `slot` (built on first use, rebuilt after
    /// a reload). A connection that never publishes or subscribes, or a gateway without ACL
    /// rules, never allocates a view.
    pub fn authorize(
        &self,
        slot: &mut Option<Box<ConnectionAcl>>,
        client: &ClientIdentity<'_>,
        action: Action,
        topic: &str,
    ) -> Verdict {
        match self.trivial.load(Ordering::Acquire) {
            1 => {
                return Verdict {
                    permission: Permission::Allow,
                    line: None,
                }
            }
            2 => {
                return Verdict {
                    permission: Permission::Deny,
                    line: None,
                }
            }
            _ => {}
        }
        let generation = self.generation.load(Ordering::Acquire);
        let stale = slot.as_ref().is_none_or(|c| c.generation != generation);
        if stale {
            let acl = self.current();
            *slot = Some(Box::new(ConnectionAcl {
                generation,
                view: acl.for_client(client),
            }));
        }
        match slot {
            Some(c) => c.view.check(action, topic),
            None => Verdict {
                permission: Permission::Deny,
                line: None,
            },
        }
    }
}

/// What a connection keeps (behind one pointer): its view and the generation it was built for.
#[derive(Debug)]
pub struct ConnectionAcl {
    generation: u64,
    view: ClientAcl,
}

#[cfg(test)]
mod tests;
