//! Topic names, topic filters and the rule that matches one against the other (MQTT 3.1.1 §4.7,
//! MQTT 5.0 §4.7 and §4.8.2 for shared subscriptions).
//!
//! Owns validation, matching and shared-subscription parsing as plain functions over `&str`. It
//! must never allocate, never touch IO and never recurse: a topic can have tens of thousands of
//! levels, so every walk is a loop over `split('/')`. The subscription index built on these rules
//! lives in [`crate::trie`].

/// The longest topic name or filter an MQTT UTF-8 string can carry, in bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of an MQTT 5.0 shared subscription: `$share/{group}/{filter}`.
const SHARE_PREFIX: &str = "$share/";

/// Prefix of an EMQX "queue" subscription: `$queue/{filter}`.
const QUEUE_PREFIX: &str = "$queue/";

/// The group name reported for an EMQX `$queue/{filter}` subscription.
pub const QUEUE_GROUP: &str = "$queue";

/// Why a topic name, topic filter or shared subscription was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string is empty; MQTT requires at least one character (§4.7.3).
    #[error("topic is empty")]
    Empty,
    /// The string is longer than the 65,535 bytes an MQTT UTF-8 string can hold.
    #[error("topic is {0} bytes long; the maximum is 65535")]
    TooLong(usize),
    /// The string contains U+0000, which no MQTT string may carry (§1.5.3).
    #[error("topic contains the null character U+0000")]
    NullCharacter,
    /// A topic name contains `+` or `#`; only filters may use wildcards (§4.7.1).
    #[error("topic name contains a wildcard ('+' or '#')")]
    WildcardInTopicName,
    /// A `#` shares its level with other characters, as in `sport/tennis#` (§4.7.1.2).
    #[error("'#' must occupy a whole level of a topic filter")]
    MultiLevelWildcardNotAlone,
    /// A `#` level is followed by more levels, as in `sport/#/ranking` (§4.7.1.2).
    #[error("'#' must be the last level of a topic filter")]
    MultiLevelWildcardNotLast,
    /// A `+` shares its level with other characters, as in `sport+` (§4.7.1.3).
    #[error("'+' must occupy a whole level of a topic filter")]
    SingleLevelWildcardNotAlone,
    /// A `$share/` subscription has an empty group name, as in `$share//a` (MQTT 5.0 §4.8.2).
    #[error("shared subscription has an empty group name")]
    EmptyShareGroup,
    /// A `$share/` group name contains `+` or `#` (MQTT 5.0 §4.8.2).
    #[error("shared subscription group name contains a wildcard ('+' or '#')")]
    WildcardInShareGroup,
    /// A `$share/{group}` or `$queue/` subscription has no topic filter after the prefix.
    #[error("shared subscription has no topic filter after the group name")]
    MissingSharedFilter,
}

/// Checks a topic name as carried by PUBLISH (or a will): non-empty, at most 65,535 bytes, no
/// wildcard and no U+0000.
///
/// Names starting with `$` are accepted; whether a client may publish to them is broker policy.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_length(topic)?;
    for &b in topic.as_bytes() {
        match b {
            0 => return Err(TopicError::NullCharacter),
            b'+' | b'#' => return Err(TopicError::WildcardInTopicName),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic filter as carried by SUBSCRIBE / UNSUBSCRIBE: non-empty, at most 65,535 bytes,
/// no U+0000, `+` only as a whole level and `#` only as the whole last level.
///
/// A `$share/...` string is checked as an ordinary filter here (it is one, syntactically); use
/// [`parse_shared`] to split and check a shared subscription.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_length(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        for &b in level.as_bytes() {
            match b {
                0 => return Err(TopicError::NullCharacter),
                b'#' if level.len() != 1 => return Err(TopicError::MultiLevelWildcardNotAlone),
                b'#' if levels.peek().is_some() => {
                    return Err(TopicError::MultiLevelWildcardNotLast)
                }
                b'+' if level.len() != 1 => return Err(TopicError::SingleLevelWildcardNotAlone),
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong(s.len()))
    } else {
        Ok(())
    }
}

/// The number of levels in a topic name or filter: one more than the number of `/`.
///
/// Every string has at least one level: `""` and `"a"` have one, `"/"` has two empty ones.
pub fn topic_levels(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'/').count() + 1
}

/// True when the filter contains a `+` or `#` anywhere.
pub fn has_wildcards(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// True when the topic name `topic` matches the topic filter `filter` (§4.7).
///
/// `+` matches exactly one level (which may be empty); `#` matches the parent level and any
/// number of levels below it, so `a/#` matches `a`, `a/` and `a/b/c`. A topic whose first level
/// starts with `$` is never matched by a filter whose first level is `+` or `#` (§4.7.2), so `#`
/// does not match `$SYS/uptime` but `$SYS/#` does.
///
/// Both strings are expected to be valid (see [`validate_topic_name`] and
/// [`validate_topic_filter`]). For an invalid filter the answer is still defined: a level such
/// as `a+` is literal text, and a `#` that is not the last level matches nothing. The
/// subscription trie ([`crate::trie`]) gives exactly the same answers.
pub fn matches(filter: &str, topic: &str) -> bool {
    let dollar = topic.starts_with('$');
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    let mut first = true;
    loop {
        let f = filter_levels.next();
        let t = topic_levels.next();
        if first && dollar && matches!(f, Some("+" | "#")) {
            return false;
        }
        first = false;
        match (f, t) {
            // `#` matches whatever is left, including nothing, but only as the last level.
            (Some("#"), _) => return filter_levels.next().is_none(),
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when some topic name matches both filters (both expected valid, see [`matches`]).
///
/// Used to refuse configurations where what goes out on one filter comes back on another
/// (a bridge's `forward` and `subscribe`), and to find deny rules a wildcard would cross.
/// `$`-topics follow [`matches`]: `#` and `$SYS/#` do not overlap.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    let mut first = true;
    loop {
        let x = a_levels.next();
        let y = b_levels.next();
        if first {
            let wild = |l: Option<&str>| matches!(l, Some("+" | "#"));
            let dollar = |l: Option<&str>| l.is_some_and(|l| l.starts_with('$'));
            if (wild(x) && dollar(y)) || (wild(y) && dollar(x)) {
                return false;
            }
            first = false;
        }
        match (x, y) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// A shared subscription split into its group and the filter it subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The share name: members of one group split the matching messages between them.
    pub group: &'a str,
    /// The real topic filter, already validated.
    pub filter: &'a str,
}

/// Recognises a shared subscription and checks it.
///
/// - `$share/{group}/{filter}` (MQTT 5.0 §4.8.2): the group must be non-empty and contain no
///   `+` or `#` (it cannot contain `/`, which ends it); the filter must be a valid filter.
/// - `$queue/{filter}`: EMQX behaviour, not in the MQTT specification. EMQX accepts this older
///   form as a shared subscription in one fixed group named `$queue`, so `$queue/t` and
///   `$share/$queue/t` are the same subscription there; it is reported here with the group
///   [`QUEUE_GROUP`] to keep that equivalence for clients written against EMQX.
///
/// Returns `Ok(None)` for any other string after checking it as an ordinary filter with
/// [`validate_topic_filter`], so one call both classifies and validates a SUBSCRIBE filter.
/// The prefixes are case-sensitive: `$SHARE/g/a` is an ordinary filter.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        check_length(filter)?;
        let Some((group, inner)) = rest.split_once('/') else {
            return Err(if rest.is_empty() {
                TopicError::EmptyShareGroup
            } else {
                TopicError::MissingSharedFilter
            });
        };
        if group.is_empty() {
            return Err(TopicError::EmptyShareGroup);
        }
        if has_wildcards(group) {
            return Err(TopicError::WildcardInShareGroup);
        }
        if group.as_bytes().contains(&0) {
            return Err(TopicError::NullCharacter);
        }
        validate_shared_inner(inner)?;
        Ok(Some(SharedFilter {
            group,
            filter: inner,
        }))
    } else if let Some(inner) = filter.strip_prefix(QUEUE_PREFIX) {
        check_length(filter)?;
        validate_shared_inner(inner)?;
        Ok(Some(SharedFilter {
            group: QUEUE_GROUP,
            filter: inner,
        }))
    } else {
        validate_topic_filter(filter)?;
        Ok(None)
    }
}

fn validate_shared_inner(inner: &str) -> Result<(), TopicError> {
    if inner.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    validate_topic_filter(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_multi_level_wildcard_matches_the_parent_and_every_level_below() {
        // MQTT 3.1.1 §4.7.1.2.
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/"));
    }

    #[test]
    fn a_lone_multi_level_wildcard_matches_every_ordinary_topic() {
        assert!(matches("#", "a"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("#", "/"));
        assert!(matches("#", "/finance"));
    }

    #[test]
    fn a_single_level_wildcard_matches_exactly_one_level() {
        // MQTT 3.1.1 §4.7.1.3.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
        assert!(matches("+/tennis/#", "sport/tennis/player1/ranking"));
    }

    #[test]
    fn a_single_level_wildcard_matches_an_empty_level() {
        // MQTT 3.1.1 §4.7.1.3: "+/+" and "/+" match "/finance", "+" does not.
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+", ""));
    }

    #[test]
    fn a_leading_wildcard_does_not_match_dollar_topics() {
        // MQTT 3.1.1 §4.7.2.
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(!matches("#", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
    }

    #[test]
    fn a_dollar_below_the_first_level_is_an_ordinary_character() {
        assert!(matches("a/+", "a/$SYS"));
        assert!(matches("a/#", "a/$SYS/x"));
        assert!(matches("+/$x", "a/$x"));
    }

    #[test]
    fn matching_is_case_sensitive_and_level_exact() {
        // MQTT 3.1.1 §4.7.3.
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(matches("Accounts payable", "Accounts payable"));
        assert!(!matches("finance", "/finance"));
        assert!(!matches("/finance", "finance"));
        assert!(matches("/", "/"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn a_misplaced_multi_level_wildcard_matches_nothing() {
        assert!(!matches("a/#/b", "a/x/b"));
        assert!(!matches("a/#/b", "a"));
        assert!(!matches("a/#/b", "a/x"));
        assert!(!matches("sport+", "sport1"));
        assert!(matches("sport+", "sport+"));
    }

    #[test]
    fn topic_names_reject_wildcards_nulls_and_bad_lengths() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name("Accounts payable"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a/#"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a#b"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        let longest = "x".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&longest), Ok(()));
        let too_long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_topic_name(&too_long),
            Err(TopicError::TooLong(MAX_TOPIC_LEN + 1))
        );
    }

    #[test]
    fn topic_filters_follow_the_wildcard_placement_rules() {
        // MQTT 3.1.1 §4.7.1.
        for ok in [
            "#",
            "sport/tennis/#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "/",
            "$SYS/#",
            "$share/g/a",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            validate_topic_filter("sport/tennis#"),
            Err(TopicError::MultiLevelWildcardNotAlone)
        );
        assert_eq!(
            validate_topic_filter("sport/tennis/#/ranking"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
        assert_eq!(
            validate_topic_filter("#/"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
        assert_eq!(
            validate_topic_filter("sport+"),
            Err(TopicError::SingleLevelWildcardNotAlone)
        );
        assert_eq!(
            validate_topic_filter("a/++"),
            Err(TopicError::SingleLevelWildcardNotAlone)
        );
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("a/\0"),
            Err(TopicError::NullCharacter)
        );
        let too_long = "+/".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert_eq!(
            validate_topic_filter(&too_long),
            Err(TopicError::TooLong(too_long.len()))
        );
    }

    #[test]
    fn topic_levels_counts_empty_levels_too() {
        assert_eq!(topic_levels(""), 1);
        assert_eq!(topic_levels("a"), 1);
        assert_eq!(topic_levels("/"), 2);
        assert_eq!(topic_levels("a/b/c"), 3);
        assert_eq!(topic_levels("/finance/"), 3);
    }

    #[test]
    fn has_wildcards_spots_plus_and_hash() {
        assert!(has_wildcards("a/+"));
        assert!(has_wildcards("#"));
        assert!(!has_wildcards("a/b"));
        assert!(!has_wildcards("$SYS/x"));
    }

    #[test]
    fn a_share_prefix_splits_into_group_and_filter() {
        assert_eq!(
            parse_shared("$share/workers/sensors/+/temp"),
            Ok(Some(SharedFilter {
                group: "workers",
                filter: "sensors/+/temp"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "#"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/$SYS/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "$SYS/#"
            }))
        );
        assert_eq!(
            parse_shared("$share/g//"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/"
            }))
        );
    }

    #[test]
    fn an_emqx_queue_prefix_is_a_share_with_the_queue_group() {
        assert_eq!(
            parse_shared("$queue/jobs/+"),
            Ok(Some(SharedFilter {
                group: QUEUE_GROUP,
                filter: "jobs/+"
            }))
        );
        assert_eq!(
            parse_shared("$queue/"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            parse_shared("$queue/a/#/b"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
    }

    #[test]
    fn malformed_shared_subscriptions_are_rejected() {
        assert_eq!(parse_shared("$share/"), Err(TopicError::EmptyShareGroup));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::EmptyShareGroup));
        assert_eq!(
            parse_shared("$share/group"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            parse_shared("$share/group/"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            parse_shared("$share/gr+oup/a"),
            Err(TopicError::WildcardInShareGroup)
        );
        assert_eq!(
            parse_shared("$share/#/a"),
            Err(TopicError::WildcardInShareGroup)
        );
        assert_eq!(parse_shared("$share/g\0/a"), Err(TopicError::NullCharacter));
        assert_eq!(
            parse_shared("$share/g/a#"),
            Err(TopicError::MultiLevelWildcardNotAlone)
        );
    }

    #[test]
    fn ordinary_filters_are_not_shared_but_are_still_validated() {
        assert_eq!(parse_shared("a/b/#"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$SHARE/g/a"), Ok(None));
        assert_eq!(parse_shared("$queue"), Ok(None));
        assert_eq!(parse_shared("$SYS/#"), Ok(None));
        assert_eq!(parse_shared(""), Err(TopicError::Empty));
        assert_eq!(
            parse_shared("a/#/b"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
    }

    #[test]
    fn errors_explain_themselves() {
        assert_eq!(
            TopicError::MultiLevelWildcardNotLast.to_string(),
            "'#' must be the last level of a topic filter"
        );
        assert_eq!(
            TopicError::TooLong(70_000).to_string(),
            "topic is 70000 bytes long; the maximum is 65535"
        );
    }

    #[test]
    fn a_topic_with_seventy_thousand_levels_is_matched_without_recursion() {
        let topic = "a/".repeat(70_000);
        assert_eq!(topic_levels(&topic), 70_001);
        assert!(matches("#", &topic));
        assert!(matches("a/#", &topic));
        assert!(!matches("a/+", &topic));
        assert!(matches(&topic, &topic));
        assert_eq!(
            validate_topic_filter(&topic),
            Err(TopicError::TooLong(140_000))
        );
    }

    /// The levels random filters and topics are built from.
    const LEVELS: &[&str] = &["", "+", "#", "$SYS", "a", "b"];

    fn levels(with_wildcards: bool) -> impl Strategy<Value = Vec<&'static str>> {
        let pool: Vec<&'static str> = LEVELS
            .iter()
            .copied()
            .filter(|l| with_wildcards || !has_wildcards(l))
            .collect();
        prop::collection::vec(prop::sample::select(pool), 1..6)
    }

    /// Random filters with well-placed wildcards (anything after the first `#` is cut off); all
    /// are valid except the empty string, which `matches` still has to answer for.
    fn valid_filter() -> impl Strategy<Value = String> {
        levels(true).prop_map(|mut levels| {
            if let Some(i) = levels.iter().position(|l| *l == "#") {
                levels.truncate(i + 1);
            }
            levels.join("/")
        })
    }

    fn plain_topic() -> impl Strategy<Value = String> {
        levels(false).prop_map(|levels| levels.join("/"))
    }

    /// §4.7 restated from scratch: strip a trailing `#`, then compare level by level.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if t[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        let (prefix, multi) = match f.split_last() {
            Some((&"#", prefix)) => (prefix, true),
            _ => (&f[..], false),
        };
        let length_ok = if multi {
            t.len() >= prefix.len()
        } else {
            t.len() == prefix.len()
        };
        length_ok && prefix.iter().zip(&t).all(|(p, l)| *p == "+" || p == l)
    }

    #[test]
    fn overlap_of_fixed_filter_pairs() {
        for (a, b, want) in [
            ("cmd/#", "cmd/#", true),
            ("cmd/#", "cmd", true),
            ("cmd/+", "cmd/x/y", false),
            ("cmd/+/y", "cmd/x/+", true),
            ("sensors/#", "cmd/#", false),
            ("#", "cmd/x", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b/c", false),
            ("a/b", "a/+", true),
            ("a/+", "a/b/#", true),
            ("a", "a/+", false),
        ] {
            assert_eq!(filters_overlap(a, b), want, "{a} vs {b}");
            assert_eq!(filters_overlap(b, a), want, "{b} vs {a}");
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_a_naive_reference(filter in valid_filter(), topic in plain_topic()) {
            prop_assert_eq!(matches(&filter, &topic), reference_matches(&filter, &topic));
        }

        #[test]
        fn filters_that_share_a_topic_overlap(a in valid_filter(), b in valid_filter(), topic in plain_topic()) {
            if matches(&a, &topic) && matches(&b, &topic) {
                prop_assert!(filters_overlap(&a, &b), "{a} and {b} both match {topic}");
            }
            prop_assert_eq!(filters_overlap(&a, &b), filters_overlap(&b, &a));
        }

        #[test]
        fn a_topic_name_matches_itself_as_a_filter(topic in plain_topic()) {
            prop_assert!(matches(&topic, &topic));
        }

        #[test]
        fn generated_valid_filters_pass_validation(filter in valid_filter()) {
            prop_assume!(!filter.is_empty());
            prop_assert_eq!(validate_topic_filter(&filter), Ok(()));
        }

        #[test]
        fn filter_validation_accepts_exactly_the_well_placed_wildcards(levels in levels(true)) {
            let filter = levels.join("/");
            let hash_ok = !levels.iter().rev().skip(1).any(|l| *l == "#");
            prop_assert_eq!(validate_topic_filter(&filter).is_ok(), hash_ok && !filter.is_empty());
        }
    }
}
