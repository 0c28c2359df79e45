use super::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn acl(text: &str, nomatch: Permission) -> Arc<Acl> {
    match Acl::parse(text, Path::new("acl.toml"), nomatch) {
        Ok(acl) => Arc::new(acl),
        Err(e) => panic!("{e}"),
    }
}

fn client<'a>(client_id: &'a str, username: Option<&'a str>, ip: IpAddr) -> ClientIdentity<'a> {
    ClientIdentity {
        client_id,
        username,
        ip,
    }
}

fn error_of(text: &str) -> String {
    match Acl::parse(text, Path::new("/etc/holdfast/acl.toml"), Permission::Deny) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

use Action::{Publish, Subscribe};
use Permission::{Allow, Deny};

#[test]
fn cidr_parsing_and_membership_for_ipv4_and_ipv6() {
    let table: &[(&str, &str, bool)] = &[
        ("127.0.0.1/32", "127.0.0.1", true),
        ("127.0.0.1/32", "127.0.0.2", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("10.0.0.0/8", "10.255.1.2", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("10.0.0.0/8", "127.0.0.1", false),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("0.0.0.0/0", "::1", false),
        ("192.168.1.128/25", "192.168.1.200", true),
        ("192.168.1.128/25", "192.168.1.127", false),
        ("::1/128", "::1", true),
        ("::1", "::2", false),
        ("fd00::/8", "fd12:3456::1", true),
        ("fd00::/8", "fe80::1", false),
        ("::/0", "2001:db8::1", true),
        ("::/0", "10.0.0.1", false),
        ("2001:db8::/32", "2001:db8:ffff::1", true),
        ("2001:db8::/32", "2001:db9::1", false),
        // A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6 addresses.
        ("10.0.0.0/8", "::ffff:10.1.2.3", true),
        ("127.0.0.1/32", "::ffff:127.0.0.1", true),
        ("::ffff:0:0/96", "10.0.0.1", false),
    ];
    for &(net, ip, expected) in table {
        let cidr = Cidr::parse(net).unwrap_or_else(|e| panic!("{net}: {e}"));
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(cidr.contains(ip), expected, "{net} contains {ip}");
    }
}

#[test]
fn bad_cidrs_are_refused_with_a_reason() {
    for (text, reason) in [
        ("10.0.0.0/33", "prefix length must be 0..=32"),
        ("::/129", "prefix length must be 0..=128"),
        ("10.0.0.0/+8", "prefix length"),
        ("10.0.0.0/", "prefix length"),
        ("10.0.0/8", "not an IP address"),
        ("localhost", "not an IP address"),
        (
            "10.1.2.3/8",
            "host bits set after the /8 prefix (did you mean 10.0.0.0/8?)",
        ),
        ("fd00::1/8", "did you mean fd00::/8?"),
    ] {
        let err = Cidr::parse(text).unwrap_err();
        assert!(err.contains(reason), "{text}: {err}");
    }
}

proptest! {
    #[test]
    fn an_ipv4_network_contains_exactly_the_addresses_sharing_its_prefix(
        net in any::<u32>(), ip in any::<u32>(), prefix in 0u8..=32
    ) {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let text = format!("{}/{prefix}", Ipv4Addr::from(net & mask));
        let cidr = Cidr::parse(&text).unwrap();
        prop_assert_eq!(cidr.contains(IpAddr::V4(ip.into())), (ip & mask) == (net & mask));
        prop_assert_eq!(cidr.to_string(), text);
    }

    #[test]
    fn an_ipv6_network_contains_exactly_the_addresses_sharing_its_prefix(
        net in any::<u128>(), ip in any::<u128>(), prefix in 0u8..=128
    ) {
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        let cidr = Cidr::parse(&format!("{}/{prefix}", Ipv6Addr::from(net & mask))).unwrap();
        let ip = Ipv6Addr::from(ip);
        // Mapped IPv4 peers are compared as IPv4 (and so never inside an IPv6 network).
        let expected = ip.to_ipv4_mapped().is_none() && (u128::from(ip) & mask) == (net & mask);
        prop_assert_eq!(cidr.contains(IpAddr::V6(ip)), expected);
    }

    #[test]
    fn a_client_id_placeholder_grants_exactly_the_clients_own_subtree(
        id in "[a-zA-Z0-9_.:-]{1,20}", other in "[a-zA-Z0-9_.:-]{1,20}", leaf in "[a-z]{1,8}"
    ) {
        let acl = acl(
            r#"
[[rules]]
permission = "allow"
who = { all = true }
action = "all"
topics = ["devices/%c/#", "eq users/%u"]
"#,
            Deny,
        );
        let me = client(&id, Some("alice"), LOCAL);
        prop_assert_eq!(acl.check(&me, Publish, &format!("devices/{id}/{leaf}")), Allow);
        prop_assert_eq!(acl.check(&me, Subscribe, &format!("devices/{id}/#")), Allow);
        prop_assert_eq!(acl.check(&me, Subscribe, &format!("devices/{id}/+/{leaf}")), Allow);
        prop_assert_eq!(acl.check(&me, Publish, "users/alice"), Allow);
        prop_assert_eq!(acl.check(&me, Publish, "users/alice/x"), Deny);
        if other != id {
            prop_assert_eq!(acl.check(&me, Publish, &format!("devices/{other}/{leaf}")), Deny);
        }
        prop_assert_eq!(acl.check(&me, Subscribe, "devices/+/#"), Deny);
    }

    #[test]
    fn a_placeholder_value_with_wildcards_or_slashes_matches_nothing(
        prefix in "[a-z]{0,4}", bad in prop::sample::select(vec!["+", "#", "/", "\0"]), suffix in "[a-z]{0,4}"
    ) {
        let id = format!("{prefix}{bad}{suffix}");
        let acl = acl(
            r#"
[[rules]]
permission = "allow"
who = { all = true }
action = "all"
topics = ["devices/%c/#", "users/%u/#"]
"#,
            Deny,
        );
        let me = client(&id, Some(&id), LOCAL);
        for topic in ["devices/+/#", "devices/#", "users/+/#", "#"] {
            prop_assert_eq!(acl.check(&me, Subscribe, topic), Deny);
        }
        prop_assert_eq!(acl.check(&me, Publish, &format!("devices/{id}/x")), Deny);
    }
}

#[test]
fn placeholders_expand_for_user_and_client_id_and_a_missing_user_matches_nothing() {
    let acl = acl(
        r#"
[[rules]]
permission = "allow"
who = { all = true }
action = "publish"
topics = ["up/%u/%c", "eq both/%u-%c"]
"#,
        Deny,
    );
    let alice = client("dev1", Some("alice"), LOCAL);
    assert_eq!(acl.check(&alice, Publish, "up/alice/dev1"), Allow);
    assert_eq!(acl.check(&alice, Publish, "both/alice-dev1"), Allow);
    assert_eq!(acl.check(&alice, Publish, "up/bob/dev1"), Deny);
    assert_eq!(acl.check(&alice, Subscribe, "up/alice/dev1"), Deny);
    let anonymous = client("dev1", None, LOCAL);
    assert_eq!(acl.check(&anonymous, Publish, "up/%u/dev1"), Deny);
    assert_eq!(acl.check(&anonymous, Publish, "up//dev1"), Deny);
}

const RULES: &str = r##"
# Dashboards read everything of the system.
[[rules]]
permission = "allow"
who = { user = "dashboard" }
action = "subscribe"
topics = ["$SYS/#", "eq sensors/#"]

[[rules]]
permission = "deny"
who = { clientid = "rogue" }
action = "all"
topics = ["#"]

[[rules]]
permission = "allow"
who = { ipaddr = "127.0.0.1/32" }
action = "publish"
topics = ["local/#"]

[[rules]]
permission = "deny"
who = { ipaddr = "10.0.0.0/8" }
action = "all"
topics = ["local/#", "sensors/#"]

[[rules]]
permission = "deny"
who = { all = true }
action = "subscribe"
topics = ["eq #", "sensors/secret/+"]

[[rules]]
permission = "allow"
who = { all = true }
action = "all"
topics = ["sensors/#"]
"##;

#[test]
fn the_first_matching_rule_decides_in_file_order() {
    let acl = acl(RULES, Deny);
    let far = "10.1.2.3".parse().unwrap();
    let dashboard = client("d1", Some("dashboard"), LOCAL);
    let rogue = client("rogue", Some("dashboard"), LOCAL);
    let plain = client("c1", Some("carol"), LOCAL);
    let remote = client("c2", Some("carol"), far);
    // Rule 1 (user) before rule 2 (client id): the rogue client id still gets rule 1 for a
    // subscribe to $SYS, but rule 2 for everything else.
    assert_eq!(acl.check(&rogue, Subscribe, "$SYS/brokers/x/uptime"), Allow);
    assert_eq!(acl.check(&rogue, Subscribe, "sensors/t1"), Deny);
    assert_eq!(acl.check(&rogue, Publish, "sensors/t1"), Deny);
    // `eq sensors/#` allows exactly that filter for the dashboard.
    assert_eq!(acl.check(&dashboard, Subscribe, "sensors/#"), Allow);
    assert_eq!(acl.check(&dashboard, Subscribe, "$SYS/#"), Allow);
    // ipaddr rules.
    assert_eq!(acl.check(&plain, Publish, "local/a"), Allow);
    assert_eq!(acl.check(&remote, Publish, "local/a"), Deny);
    assert_eq!(acl.check(&remote, Publish, "sensors/t1"), Deny);
    assert_eq!(acl.check(&plain, Subscribe, "local/a"), Deny, "nomatch");
    // `eq #` denies the bare `#` subscription only; the later allow rule covers sensors.
    assert_eq!(acl.check(&plain, Subscribe, "#"), Deny);
    assert_eq!(acl.check(&plain, Subscribe, "sensors/t1"), Allow);
    assert_eq!(acl.check(&plain, Publish, "sensors/secret/a"), Allow);
    assert_eq!(acl.check(&plain, Subscribe, "sensors/secret/a"), Deny);
    assert_eq!(acl.check(&plain, Publish, "other"), Deny, "nomatch");
}

#[test]
fn the_verdict_names_the_line_of_the_deciding_rule() {
    let acl = acl(RULES, Allow);
    let view = acl.for_client(&client("rogue", None, LOCAL));
    let verdict = view.check(Publish, "x");
    assert_eq!(verdict.permission, Deny);
    let line = verdict.line.unwrap();
    assert_eq!(
        RULES.lines().nth(line as usize - 1),
        Some("[[rules]]"),
        "line {line}"
    );
    let nomatch = acl
        .for_client(&client("c", None, LOCAL))
        .check(Publish, "zzz");
    assert_eq!(
        nomatch,
        Verdict {
            permission: Allow,
            line: None
        }
    );
}

#[test]
fn a_subscription_filter_is_matched_against_the_rule_filter_as_in_emqx() {
    let rule = |filter: &str| {
        acl(
            &format!(
                "[[rules]]\npermission = \"allow\"\nwho = {{ all = true }}\naction = \"subscribe\"\ntopics = [{filter:?}]\n"
            ),
            Deny,
        )
    };
    let me = client("c", None, LOCAL);
    let table: &[(&str, &str, Permission)] = &[
        ("a/#", "a/+", Allow),
        ("a/#", "a/b/#", Allow),
        ("a/#", "a", Allow),
        ("a/+", "a/b", Allow),
        ("a/+", "a/+", Allow),
        // One level against one level: EMQX's emqx_topic:match/2 says yes.
        ("a/+", "a/#", Allow),
        ("a/b", "a/+", Deny),
        ("a/b", "a/#", Deny),
        ("a/+", "a/b/c", Deny),
        ("#", "$SYS/x", Deny),
        ("$SYS/#", "$SYS/x/+", Allow),
        ("eq a/+", "a/+", Allow),
        ("eq a/+", "a/b", Deny),
        ("eq a/b", "a/b", Allow),
        // Shared subscriptions are checked on their real filter.
        ("a/#", "$share/g/a/b", Allow),
        ("eq a/b", "$share/g/a/b", Allow),
        ("a/#", "$queue/a/b", Allow),
        ("b/#", "$share/g/a/b", Deny),
    ];
    for &(rule_filter, subscription, expected) in table {
        assert_eq!(
            rule(rule_filter).check(&me, Subscribe, subscription),
            expected,
            "rule {rule_filter:?} vs subscription {subscription:?}"
        );
    }
}

#[test]
fn eq_for_a_publish_is_the_exact_topic_name() {
    let acl = acl(
        "[[rules]]\npermission = \"deny\"\nwho = { all = true }\naction = \"publish\"\ntopics = [\"eq a/+\", \"eq a/b\"]\n",
        Allow,
    );
    let me = client("c", None, LOCAL);
    assert_eq!(acl.check(&me, Publish, "a/b"), Deny);
    assert_eq!(acl.check(&me, Publish, "a/c"), Allow);
}

#[test]
fn user_and_client_id_rules_apply_only_to_that_user_and_client() {
    let acl = acl(
        r#"
[[rules]]
permission = "allow"
who = { user = "alice" }
action = "publish"
topics = ["a/#"]

[[rules]]
permission = "allow"
who = { clientid = "dev-7" }
action = "publish"
topics = ["d/#"]
"#,
        Deny,
    );
    assert_eq!(
        acl.check(&client("x", Some("alice"), LOCAL), Publish, "a/1"),
        Allow
    );
    assert_eq!(
        acl.check(&client("x", Some("bob"), LOCAL), Publish, "a/1"),
        Deny
    );
    assert_eq!(acl.check(&client("x", None, LOCAL), Publish, "a/1"), Deny);
    assert_eq!(
        acl.check(&client("dev-7", None, LOCAL), Publish, "d/1"),
        Allow
    );
    assert_eq!(
        acl.check(&client("dev-8", None, LOCAL), Publish, "d/1"),
        Deny
    );
    // A user name equal to the client id does not make a clientid rule apply.
    assert_eq!(
        acl.check(&client("x", Some("dev-7"), LOCAL), Publish, "d/1"),
        Deny
    );
}

#[test]
fn an_empty_file_and_a_file_without_rules_give_nomatch() {
    for text in ["", "# nothing yet\n", "rules = []\n"] {
        let a = acl(text, Allow);
        assert!(a.is_empty());
        assert_eq!(a.check(&client("c", None, LOCAL), Publish, "t"), Allow);
        let d = acl(text, Deny);
        assert_eq!(d.check(&client("c", None, LOCAL), Subscribe, "t"), Deny);
    }
}

#[test]
fn a_broken_file_is_an_error_naming_the_file_the_line_and_the_reason() {
    let rule = |permission: &str, who: &str, action: &str, topics: &str| {
        format!("# header\n\n[[rules]]\npermission = {permission}\nwho = {who}\naction = {action}\ntopics = {topics}\n")
    };
    let ok = ("\"allow\"", "{ all = true }", "\"publish\"", "[\"a\"]");
    let cases: Vec<(String, usize, &str)> = vec![
        (
            rule("\"alow\"", ok.1, ok.2, ok.3),
            4,
            "permission: \"alow\" is not allow or deny",
        ),
        (
            rule(ok.0, "{ user = \"a\", clientid = \"b\" }", ok.2, ok.3),
            5,
            "who: give exactly one of",
        ),
        (rule(ok.0, "{}", ok.2, ok.3), 5, "who: give exactly one of"),
        (
            rule(ok.0, "{ ipaddr = \"10.0.0.1/8\" }", ok.2, ok.3),
            5,
            "did you mean 10.0.0.0/8?",
        ),
        (
            rule(ok.0, "{ all = false }", ok.2, ok.3),
            5,
            "all must be true",
        ),
        (
            rule(ok.0, "{ username = \"a\" }", ok.2, ok.3),
            5,
            "unknown field `username`",
        ),
        (
            rule(ok.0, ok.1, "\"pub\"", ok.3),
            6,
            "action: \"pub\" is not publish, subscribe or all",
        ),
        (rule(ok.0, ok.1, ok.2, "[]"), 7, "at least one topic"),
        (
            rule(ok.0, ok.1, ok.2, "[\"a/#/b\"]"),
            7,
            "\"a/#/b\" is not a valid topic filter",
        ),
        (
            rule(ok.0, ok.1, ok.2, "[\"eq a/b#\"]"),
            7,
            "not a valid topic filter",
        ),
        (rule(ok.0, ok.1, ok.2, "\"a\""), 7, "invalid type"),
        (
            "[[rules]]\npermission = \"allow\"\n".to_owned(),
            1,
            "missing field",
        ),
        ("[[rule]]\n".to_owned(), 1, "unknown field `rule`"),
        ("[[rules]\n".to_owned(), 1, ""),
    ];
    for (text, line, reason) in cases {
        let err = error_of(&text);
        assert!(
            err.starts_with(&format!("/etc/holdfast/acl.toml:{line}: ")),
            "{err}\n--- for ---\n{text}"
        );
        assert!(err.contains(reason), "{err}\n--- for ---\n{text}");
        assert!(!err.contains('\n'), "one line: {err:?}");
    }
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = Acl::load(Path::new("/nonexistent/acl.toml"), Deny).unwrap_err();
    assert!(matches!(err, AclError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/acl.toml"), "{err}");
}

#[test]
fn ten_thousand_rules_compile_and_the_last_one_still_decides() {
    let mut text = String::new();
    for i in 0..9_999 {
        let who = match i % 4 {
            0 => format!("{{ user = \"user-{i}\" }}"),
            1 => format!("{{ clientid = \"dev-{i}\" }}"),
            2 => format!("{{ ipaddr = \"10.{}.{}.0/24\" }}", i / 256 % 256, i % 256),
            _ => "{ all = true }".to_owned(),
        };
        text.push_str(&format!(
            "[[rules]]\npermission = \"deny\"\nwho = {who}\naction = \"all\"\ntopics = [\"devices/{i}/#\", \"eq fleet/{i}\"]\n\n"
        ));
    }
    text.push_str(
        "[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"publish\"\ntopics = [\"bench/+\"]\n",
    );
    let acl = acl(&text, Deny);
    assert_eq!(acl.len(), 10_000);
    let me = client("bench-1", Some("user-0"), LOCAL);
    let view = acl.for_client(&me);
    assert_eq!(view.check(Publish, "bench/17").permission, Allow);
    assert_eq!(view.check(Publish, "devices/0/x").permission, Deny);
    assert_eq!(
        view.check(Publish, "devices/4/x").permission,
        Deny,
        "user-4 is not me"
    );
    assert_eq!(
        acl.check(&client("dev-5", None, LOCAL), Subscribe, "fleet/5"),
        Deny
    );
    assert_eq!(
        acl.check(
            &client("x", None, "10.0.2.1".parse().unwrap()),
            Publish,
            "devices/2/a"
        ),
        Deny
    );
    assert_eq!(
        acl.check(&client("x", None, LOCAL), Publish, "devices/7/a"),
        Deny
    );
    assert_eq!(
        acl.check(&client("x", None, LOCAL), Publish, "devices/6/a"),
        Deny,
        "nomatch"
    );
}

#[test]
fn a_handle_hands_out_a_new_view_after_a_replace_and_none_without_rules() {
    let handle = AclHandle::new(Acl::empty(Allow));
    let me = client("c", None, LOCAL);
    let mut slot = None;
    assert_eq!(
        handle.authorize(&mut slot, &me, Publish, "t").permission,
        Allow
    );
    assert!(slot.is_none(), "no view is built without rules");
    handle.replace(Acl::empty(Deny));
    assert_eq!(
        handle.authorize(&mut slot, &me, Publish, "t").permission,
        Deny
    );
    let text = "[[rules]]\npermission = \"allow\"\nwho = { clientid = \"c\" }\naction = \"all\"\ntopics = [\"t\"]\n";
    handle.replace(Acl::parse(text, Path::new("a"), Deny).unwrap());
    assert_eq!(
        handle.authorize(&mut slot, &me, Publish, "t").permission,
        Allow
    );
    assert_eq!(
        handle.authorize(&mut slot, &me, Publish, "u").permission,
        Deny
    );
    let first = slot.as_ref().map(|s| s.generation);
    let text = text.replace("allow", "deny");
    handle.replace(Acl::parse(&text, Path::new("a"), Allow).unwrap());
    assert_eq!(
        handle.authorize(&mut slot, &me, Publish, "t").permission,
        Deny
    );
    assert_ne!(slot.as_ref().map(|s| s.generation), first);
    assert_eq!(handle.current().len(), 1);
}

#[test]
fn a_wildcard_subscription_cannot_cross_an_earlier_deny_rule() {
    let rules = r##"
[[rules]]
permission = "allow"
who = { user = "dashboard" }
action = "subscribe"
topics = ["#"]

[[rules]]
permission = "deny"
who = { all = true }
action = "subscribe"
topics = ["secret/#"]

[[rules]]
permission = "deny"
who = { user = "bob" }
action = "all"
topics = ["plant/+/recipes"]
"##;
    let a = acl(rules, Allow);
    let anyone = client("c1", None, LOCAL);
    for (filter, want) in [
        ("#", Deny),
        ("+/+", Deny),
        ("secret/plans", Deny),
        ("sensors/#", Allow),
        ("sensors/+/temp", Allow),
        // `+/temp` would receive `secret/temp`.
        ("+/temp", Deny),
        ("$SYS/#", Allow),
    ] {
        assert_eq!(a.check(&anyone, Subscribe, filter), want, "{filter}");
    }
    // The dashboard's allow comes first: it may read everything, secrets included.
    let dashboard = client("d", Some("dashboard"), LOCAL);
    assert_eq!(a.check(&dashboard, Subscribe, "#"), Allow);
    // A user rule crosses too, for that user only.
    let bob = client("b", Some("bob"), LOCAL);
    assert_eq!(a.check(&bob, Subscribe, "plant/#"), Deny);
    assert_eq!(a.check(&anyone, Subscribe, "plant/#"), Allow);
    // Publishing is decided per topic name: nothing to cross.
    assert_eq!(a.check(&anyone, Publish, "sensors/t"), Allow);
}
