//! `[lwm2m]`: the LwM2M server (EMQX's `emqx_gateway_lwm2m` conventions), as typed config.
//!
//! Owns the section's schema: keys, defaults (EMQX's where it has one), ranges. The section is
//! off until it appears. Never reads `xml_dir` and never binds the socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Node, Value};
use super::validate::{duration, integer, path_buf, size, string, Ctx};

/// When an Update is published (`lwm2m.update_msg_publish_condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdatePublish {
    /// Every Update ("always").
    Always,
    /// Only an Update that carries an object list ("contains_object_list", default, EMQX's).
    #[default]
    ContainsObjectList,
}

/// What the server observes on a device when it registers (`lwm2m.auto_observe`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AutoObserve {
    /// Nothing (`false`, the default).
    #[default]
    Off,
    /// Every object instance the device registers but the Security object's (`true`).
    Instances,
    /// These paths (`["/3/0/13", "/3303"]`), each where the device registered its object (an
    /// object path) or its instance (a deeper path); normalized to `/o[/i[/r[/ri]]]`.
    Paths(Vec<String>),
}

/// Most paths `auto_observe` may list.
const AUTO_OBSERVE_PATHS: usize = 64;

/// The LwM2M server (`[lwm2m]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Lwm2mConfig {
    /// UDP address. Default 0.0.0.0:5783.
    pub bind: SocketAddr,
    /// A directory of OMA object definition XML files added to the built-in ones (0, 1, 3,
    /// 4, 5, 6, 3303, 3304, 3311). Default none.
    pub xml_dir: Option<PathBuf>,
    /// Shortest lifetime kept: a registration asking less gets this. Default 15s; 1s..=1d.
    pub lifetime_min: Duration,
    /// Longest lifetime accepted: a registration asking more is refused (4.00). Default
    /// 86400s; lifetime_min..=30d.
    pub lifetime_max: Duration,
    /// Queue mode: how long after it last talked a device is taken to be listening;
    /// commands after it wait for the next uplink. Default 22s; 1s..=1h.
    pub qmode_time_window: Duration,
    /// Topic prefix of each endpoint; `%e` = endpoint name. Default "lwm2m/%e/".
    pub mountpoint: String,
    /// Registrations held at once (5.03 beyond). Default 10000; 1..=1000000.
    pub max_endpoints: usize,
    /// Commands waiting per endpoint (queue mode, or behind the one CON outstanding); one
    /// more is answered at once with code 5.03 on `up/resp` and counted. Default 100;
    /// 1..=10000.
    pub max_queued_commands: usize,
    /// When an Update is published on `up/resp`. Default "contains_object_list".
    pub update_msg_publish_condition: UpdatePublish,
    /// Largest datagram taken. Default 1500; 64..=65507.
    pub max_message_size: usize,
    /// Block size of a request body sent to a device block by block (Block1: a Write larger
    /// than this, e.g. a firmware package) and the largest block taken from a device. Default
    /// 1024; a power of two, 16..=1024.
    pub max_block_size: usize,
    /// Largest body taken from a device block by block: a response (Block2: a large Read or
    /// notification) or a registration (Block1). Default 256KB; 1KB..=64MB.
    pub max_body_size: usize,
    /// What is observed on a device at registration: `false` (default), `true` (every
    /// object instance), or a list of paths.
    pub auto_observe: AutoObserve,
    /// DTLS 1.2 with pre-shared keys on its own port (default 5784); over it the endpoint
    /// name must be the PSK identity. Default off.
    pub dtls: Option<super::DtlsConfig>,
}

impl Default for Lwm2mConfig {
    fn default() -> Self {
        Lwm2mConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 5783)),
            xml_dir: None,
            lifetime_min: Duration::from_secs(15),
            lifetime_max: Duration::from_secs(86_400),
            qmode_time_window: Duration::from_secs(22),
            mountpoint: "lwm2m/%e/".to_owned(),
            max_endpoints: 10_000,
            max_queued_commands: 100,
            update_msg_publish_condition: UpdatePublish::ContainsObjectList,
            max_message_size: 1500,
            max_block_size: 1024,
            max_body_size: 256 * 1024,
            auto_observe: AutoObserve::Off,
            dtls: None,
        }
    }
}

const KEYS: &[&str] = &[
    "bind",
    "xml_dir",
    "lifetime_min",
    "lifetime_max",
    "qmode_time_window",
    "mountpoint",
    "max_endpoints",
    "max_queued_commands",
    "update_msg_publish_condition",
    "max_message_size",
    "max_block_size",
    "max_body_size",
    "auto_observe",
    "dtls",
];

/// Reads `[lwm2m]`.
pub(super) fn lwm2m_section(ctx: &mut Ctx<'_>, node: &Node) -> Lwm2mConfig {
    let d = Lwm2mConfig::default();
    let entries = ctx.open(node, "lwm2m", KEYS, &["translators"]);
    let p = "lwm2m";
    let dur = |min: u64, max: u64| {
        move |c: &mut Ctx<'_>, n: &Node, k: &str| {
            duration(
                c,
                n,
                k,
                Duration::from_secs(min),
                Duration::from_secs(max),
                false,
            )
        }
    };
    let lifetime_min = ctx.get(entries, p, "lifetime_min", d.lifetime_min, dur(1, 86_400));
    let lifetime_max = ctx.get(
        entries,
        p,
        "lifetime_max",
        d.lifetime_max,
        dur(1, 30 * 86_400),
    );
    if lifetime_max < lifetime_min {
        if let Some(n) = super::validate::field(entries, "lifetime_max") {
            ctx.report(n, "lwm2m.lifetime_max", "must not be below lifetime_min");
        }
    }
    Lwm2mConfig {
        bind: ctx.get(entries, p, "bind", d.bind, super::coap::socket_addr),
        xml_dir: ctx.get(entries, p, "xml_dir", None, |c, n, k| {
            path_buf(c, n, k).map(Some)
        }),
        lifetime_min,
        lifetime_max,
        qmode_time_window: ctx.get(
            entries,
            p,
            "qmode_time_window",
            d.qmode_time_window,
            dur(1, 3600),
        ),
        mountpoint: ctx.get(entries, p, "mountpoint", d.mountpoint, |c, n, k| {
            let text = string(c, n, k)?;
            if text.contains(['+', '#']) || text.starts_with('$') || !text.contains("%e") {
                c.report(
                    n,
                    k,
                    format!("{text:?}: a mountpoint is a topic prefix with %e (the endpoint name), without wildcards and not under '$'"),
                );
                return None;
            }
            Some(text)
        }),
        max_endpoints: ctx.get(entries, p, "max_endpoints", d.max_endpoints, |c, n, k| {
            integer(c, n, k, 1, 1_000_000)
        }),
        max_queued_commands: ctx.get(
            entries,
            p,
            "max_queued_commands",
            d.max_queued_commands,
            |c, n, k| integer(c, n, k, 1, 10_000),
        ),
        update_msg_publish_condition: ctx.get(
            entries,
            p,
            "update_msg_publish_condition",
            d.update_msg_publish_condition,
            |c, n, k| {
                let text = string(c, n, k)?;
                match text.as_str() {
                    "always" => Some(UpdatePublish::Always),
                    "contains_object_list" => Some(UpdatePublish::ContainsObjectList),
                    _ => {
                        c.report(
                            n,
                            k,
                            format!("{text:?}: expected \"always\" or \"contains_object_list\""),
                        );
                        None
                    }
                }
            },
        ),
        max_message_size: ctx.get(
            entries,
            p,
            "max_message_size",
            d.max_message_size,
            |c, n, k| size(c, n, k, 64, 65_507),
        ),
        max_block_size: ctx.get(
            entries,
            p,
            "max_block_size",
            d.max_block_size,
            super::coap::block_size,
        ),
        max_body_size: ctx.get(entries, p, "max_body_size", d.max_body_size, |c, n, k| {
            size(c, n, k, 1024, 64 * 1024 * 1024)
        }),
        auto_observe: ctx.get(entries, p, "auto_observe", d.auto_observe, auto_observe),
        dtls: super::validate::field(entries, "dtls").and_then(|n| {
            super::coap::dtls_table(ctx, n, "lwm2m.dtls", SocketAddr::from(([0, 0, 0, 0], 5784)))
        }),
    }
}

/// `auto_observe`: a boolean or an array of LwM2M paths (each reported when bad; `None` if
/// any was).
fn auto_observe(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<AutoObserve> {
    let items = match &node.value {
        Value::Bool(false) => return Some(AutoObserve::Off),
        Value::Bool(true) => return Some(AutoObserve::Instances),
        Value::Array(items) => items,
        other => {
            ctx.report(
                node,
                key,
                format!(
                    "expected true, false or an array of LwM2M paths, found {}",
                    other.describe()
                ),
            );
            return None;
        }
    };
    if items.len() > AUTO_OBSERVE_PATHS {
        ctx.report(
            node,
            key,
            format!("{} paths: at most {AUTO_OBSERVE_PATHS}", items.len()),
        );
        return None;
    }
    let mut paths: Vec<String> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(text) = string(ctx, item, &item_key) else {
            ok = false;
            continue;
        };
        // Each level a number (`/03` is `/3`).
        let problem = match holdfast_lwm2m::command::split_path(&text) {
            Err(e) => Some(e.to_string()),
            Ok(ids) if ids.first() == Some(&0) => Some(format!(
                "{text:?}: the Security object (/0) cannot be observed"
            )),
            Ok(ids) => {
                let path: String = ids.iter().map(|id| format!("/{id}")).collect();
                if paths.contains(&path) {
                    Some(format!("{text:?} is listed twice"))
                } else {
                    paths.push(path);
                    None
                }
            }
        };
        if let Some(problem) = problem {
            ctx.report(item, &item_key, problem);
            ok = false;
        }
    }
    ok.then_some(AutoObserve::Paths(paths))
}
