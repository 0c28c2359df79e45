//! `[[auto_subscribe]]`: topics the broker subscribes a client to when it connects, as typed
//! config (EMQX's auto subscribe).
//!
//! Owns the schema: the topic template (an MQTT topic filter that may hold `%c`, the client
//! id, and `%u`, the username), the QoS and the MQTT 5 subscription options. It checks that
//! the template is a valid filter whatever a placeholder expands to; expanding it for a client
//! is the broker's job (`broker::auto_subscribe`).

use holdfast_mqtt::topic;

use super::raw::{Node, Value};
use super::validate::{boolean, field, integer, string, Ctx};

/// The most `[[auto_subscribe]]` entries: each one is a subscription per connecting client.
const MAX_AUTO_SUBSCRIBE: usize = 64;

const KEYS: &[&str] = &[
    "topic",
    "qos",
    "no_local",
    "retain_as_published",
    "retain_handling",
];

/// One topic every connecting client is subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoSubscribe {
    /// Topic filter; `%c` is replaced by the client id, `%u` by the username. Required.
    pub topic: String,
    /// Maximum QoS of the subscription (0..=2). Default 0.
    pub qos: u8,
    /// MQTT 5 clients: do not send the client its own publishes. Default false.
    pub no_local: bool,
    /// MQTT 5 clients: keep the retain flag as published. Default false.
    pub retain_as_published: bool,
    /// MQTT 5 clients: 0 = retained messages at every connect, 1 = only when the subscription
    /// is new (not kept from a persistent session), 2 = never. 3.1.1 clients get 0. Default 0.
    pub retain_handling: u8,
}

/// Checks a template: `%c` and `%u` only, and a valid topic filter once they are replaced.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('c') | Some('u') => {}
                Some(other) => {
                    return Err(format!(
                        "unknown placeholder %{other} in {template:?} (use %c for the client id, %u for the username)"
                    ))
                }
                None => return Err(format!("{template:?} ends with a lone %")),
            }
        }
    }
    let sample = template.replace("%c", "c").replace("%u", "u");
    topic::validate_topic_filter(&sample)
        .map_err(|e| format!("{template:?} is not a topic filter: {e}"))?;
    if topic::parse_shared(&sample).ok().flatten().is_some() {
        return Err(format!(
            "{template:?}: a shared subscription cannot be an auto subscription"
        ));
    }
    Ok(())
}

pub(super) fn auto_subscribe_section(ctx: &mut Ctx<'_>, node: &Node) -> Vec<AutoSubscribe> {
    let Value::Array(items) = &node.value else {
        ctx.report(
            node,
            "auto_subscribe",
            format!(
                "expected an array of tables ([[auto_subscribe]]), found {}",
                node.value.describe()
            ),
        );
        return Vec::new();
    };
    if items.len() > MAX_AUTO_SUBSCRIBE {
        ctx.report(
            node,
            "auto_subscribe",
            format!(
                "{} entries; at most {MAX_AUTO_SUBSCRIBE} are allowed",
                items.len()
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("auto_subscribe[{index}]");
        let entries = ctx.open(item, &path, KEYS, &[]);
        if !matches!(item.value, Value::Table(_)) {
            continue;
        }
        let before = ctx.problem_count();
        let topic = match field(entries, "topic") {
            Some(n) => {
                let key = format!("{path}.topic");
                string(ctx, n, &key).and_then(|t| match check_template(&t) {
                    Ok(()) => Some(t),
                    Err(e) => {
                        ctx.report(n, &key, e);
                        None
                    }
                })
            }
            None => {
                ctx.report(
                    item,
                    &format!("{path}.topic"),
                    "is required, e.g. topic = \"devices/%c/commands\"",
                );
                None
            }
        };
        let qos = ctx.get(entries, &path, "qos", 0, |c, n, k| integer(c, n, k, 0, 2));
        let no_local = ctx.get(entries, &path, "no_local", false, boolean);
        let retain_as_published = ctx.get(entries, &path, "retain_as_published", false, boolean);
        let retain_handling = ctx.get(entries, &path, "retain_handling", 0, |c, n, k| {
            integer(c, n, k, 0, 2)
        });
        if let (Some(topic), true) = (topic, ctx.problem_count() == before) {
            out.push(AutoSubscribe {
                topic,
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_c_and_u_and_must_stay_filters() {
        for ok in [
            "devices/%c/commands",
            "users/%u/#",
            "all/+/news",
            "%c",
            "a/%c-%u",
        ] {
            assert_eq!(check_template(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("devices/%i", "unknown placeholder %i"),
            ("devices/%", "lone %"),
            ("a/#/%c", "not a topic filter"),
            ("", "not a topic filter"),
            ("$share/g/%c", "shared subscription"),
        ] {
            let err = check_template(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
