//! Subscription by broker (`[[auto_subscribe]]`): the filters a connecting client gets.
//!
//! Owns the expansion of `%c` (client id) and `%u` (username) in the configured templates.
//! Sans-IO: the connection subscribes what this returns through the router, as if the client
//! had sent SUBSCRIBE. It must never widen a subscription with a client's own input: a client
//! id or username holding `+`, `#` or `/` (which would make a wildcard or reach another
//! client's topics) expands nothing, and a `%u` template for a client without a username is
//! skipped. The ACL does not apply: the operator wrote these.

use crate::config::AutoSubscribe;
use holdfast_mqtt::{ByteStr, QoS, SubscriptionOptions};

/// Why a template gave no filter for this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `%u` with no username.
    NoUsername,
    /// The client id holds a character that would change the filter's shape.
    ClientIdUnsafe,
    /// The username holds a character that would change the filter's shape.
    UsernameUnsafe,
}

impl Skip {
    /// For the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoUsername => "the template uses %u and the client sent no username",
            Skip::ClientIdUnsafe => "the client id holds +, # or / (it would change the filter)",
            Skip::UsernameUnsafe => "the username holds +, # or / (it would change the filter)",
        }
    }
}

fn safe(value: &str) -> bool {
    !value.contains(['+', '#', '/', '\0'])
}

/// `template` for this client, or why not.
pub fn expand(template: &str, client_id: &str, username: Option<&str>) -> Result<String, Skip> {
    let mut out = template.to_owned();
    if template.contains("%c") {
        if !safe(client_id) {
            return Err(Skip::ClientIdUnsafe);
        }
        out = out.replace("%c", client_id);
    }
    if template.contains("%u") {
        let user = username.ok_or(Skip::NoUsername)?;
        if !safe(user) {
            return Err(Skip::UsernameUnsafe);
        }
        out = out.replace("%u", user);
    }
    Ok(out)
}

/// The subscriptions of every rule for this client, and the templates skipped (with why).
/// 3.1.1 clients get the options 3.1.1 has (QoS only).
#[allow(clippy::type_complexity)]
pub fn subscriptions_for<'r>(
    rules: &'r [AutoSubscribe],
    client_id: &str,
    username: Option<&str>,
    v5: bool,
) -> (Vec<(ByteStr, SubscriptionOptions)>, Vec<(&'r str, Skip)>) {
    let mut filters = Vec::with_capacity(rules.len());
    let mut skipped = Vec::new();
    for rule in rules {
        match expand(&rule.topic, client_id, username) {
            Ok(filter) => filters.push((
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos: QoS::from_u8(rule.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: v5 && rule.no_local,
                    retain_as_published: v5 && rule.retain_as_published,
                    retain_handling: if v5 { rule.retain_handling } else { 0 },
                },
            )),
            Err(why) => skipped.push((rule.topic.as_str(), why)),
        }
    }
    (filters, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(topic: &str, qos: u8) -> AutoSubscribe {
        AutoSubscribe {
            topic: topic.to_owned(),
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: 1,
        }
    }

    #[test]
    fn placeholders_expand_to_the_client_id_and_username() {
        assert_eq!(
            expand("devices/%c/cmd/%u", "dev-1", Some("alice")).unwrap(),
            "devices/dev-1/cmd/alice"
        );
        assert_eq!(expand("broadcast/#", "x", None).unwrap(), "broadcast/#");
        assert_eq!(expand("%c/%c", "a", None).unwrap(), "a/a");
    }

    #[test]
    fn a_client_cannot_widen_its_subscription_with_its_own_id_or_name() {
        for id in ["#", "a/+", "x/y", "a#"] {
            assert_eq!(
                expand("devices/%c", id, None),
                Err(Skip::ClientIdUnsafe),
                "{id}"
            );
        }
        assert_eq!(
            expand("users/%u", "ok", Some("#")),
            Err(Skip::UsernameUnsafe)
        );
        assert_eq!(expand("users/%u", "ok", None), Err(Skip::NoUsername));
        // A template without the placeholder does not care.
        assert_eq!(expand("news", "#", None).unwrap(), "news");
    }

    #[test]
    fn v3_clients_get_qos_only_and_skips_are_reported_per_template() {
        let rules = [rule("d/%c", 1), rule("u/%u", 2), rule("all", 0)];
        let (subs, skipped) = subscriptions_for(&rules, "dev", None, false);
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].0.as_str(), "d/dev");
        assert_eq!(subs[0].1.qos, QoS::AtLeastOnce);
        assert!(!subs[0].1.no_local && !subs[0].1.retain_as_published);
        assert_eq!(subs[0].1.retain_handling, 0);
        assert_eq!(skipped, [("u/%u", Skip::NoUsername)]);
        let (subs, _) = subscriptions_for(&rules, "dev", Some("bob"), true);
        assert_eq!(subs[1].0.as_str(), "u/bob");
        assert!(subs[1].1.no_local && subs[1].1.retain_as_published);
        assert_eq!(subs[1].1.retain_handling, 1);
    }
}
