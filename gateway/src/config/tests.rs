//! Tests of the whole path text + environment -> `Config` / problems.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "holdfast.toml";

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(text: &str) -> Config {
    match parse(text, FILE, no_env()) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// Every problem of `text`, displayed.
fn problems_with(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match parse(text, FILE, env(vars)) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(errors) => {
            assert!(!errors.problems.is_empty());
            errors.problems.iter().map(ToString::to_string).collect()
        }
    }
}

fn problems(text: &str) -> Vec<String> {
    problems_with(text, &[])
}

/// The single problem of `text`, displayed.
fn problem(text: &str) -> String {
    let all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    all.into_iter().next().unwrap_or_default()
}

fn mqtt(line: &str) -> String {
    problem(&format!("[mqtt]\n{line}\n"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

// ---- defaults and the example ----

#[test]
fn the_example_config_parses_to_exactly_the_defaults() {
    assert_eq!(
        parse(example_toml(), "example.toml", no_env()),
        Ok(Config::default())
    );
}

#[test]
fn the_example_config_mentions_every_key() {
    for key in [
        "name",
        "data_dir",
        "state_cache",
        "clock",
        "max_packet_size",
        "max_inflight",
        "max_mqueue_len",
        "mqueue_full",
        "slow_subscriber_timeout",
        "mqueue_store_qos0",
        "session_expiry",
        "idle_timeout",
        "keepalive_multiplier",
        "server_keepalive",
        "max_clientid_len",
        "max_topic_alias",
        "max_topic_levels",
        "max_topic_len",
        "max_subscription_bytes_total",
        "retain_available",
        "max_retained_messages",
        "max_retained_payload",
        "max_retained_bytes",
        "max_sessions",
        "max_mqueue_bytes",
        "max_queued_bytes_total",
        "shared_subscription_strategy",
        "session_owner_mismatch",
        "sys_interval",
        "max_awaiting_rel",
        "outbound_buffer",
        "max_subscriptions",
        "messages_rate",
        "bytes_rate",
        "force_shutdown",
        "kind",
        "bind",
        "max_connections",
        "max_conn_rate",
        "allow_anonymous",
        "password_file",
        "clientid_allowlist",
        "jwt",
        "acl_file",
        "acl_nomatch",
        "check_workers",
        "max_pending_checks",
        "check_timeout",
        "max_login_failures",
        "login_failure_window",
        "level",
        "watchdog_device",
        "watchdog_timeout",
        "watchdog_required",
        "watchdog_max_resets",
        "mac_interface",
        "disk_free_alarm",
        "health_interval",
        "led_status",
        "led_uplink",
        "led_fault",
        "reset_button",
        "reset_button_active_low",
        "reset_button_hold",
        "sys_root",
        "proc_root",
    ] {
        assert!(
            example_toml().contains(&format!("{key} = ")),
            "example.toml lacks {key}"
        );
    }
}

#[test]
fn an_empty_file_gives_the_defaults_with_one_tcp_listener_on_1883() {
    let config = ok("");
    assert_eq!(config, Config::default());
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].name, "tcp:default");
    assert_eq!(config.listeners[0].bind, addr("0.0.0.0:1883"));
    assert!(!config.auth.allow_anonymous);
    assert!(!config.mqtt.mqueue_store_qos0);
}

#[test]
fn load_without_a_file_gives_the_defaults() {
    assert_eq!(load(None, no_env()), Ok(Config::default()));
}

#[test]
fn load_reads_a_file_and_names_it_in_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[node]\nname = \"gw-7\"\n\n[mqtt]\nmax_inflight = 0\n",
    )
    .unwrap();
    let errors = load(Some(&path), no_env()).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:5: mqtt.max_inflight: must be between 1 and 65535, got 0",
            path.display()
        )
    );
    std::fs::write(&path, "[node]\nname = \"gw-7\"\n").unwrap();
    assert_eq!(load(Some(&path), no_env()).unwrap().node.name, "gw-7");
}

#[test]
fn a_missing_file_is_one_problem_naming_the_file() {
    let errors = load(Some(Path::new("/nonexistent/holdfast.toml")), no_env()).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    let text = errors.to_string();
    assert!(
        text.starts_with("/nonexistent/holdfast.toml: cannot read the config file:"),
        "{text}"
    );
}

#[test]
fn invalid_toml_is_one_problem_with_its_line() {
    let text = problem("[node]\nname = \"gw\"\n\n[mqtt\nmax_inflight = 3\n");
    assert!(text.starts_with("holdfast.toml:4: invalid TOML"), "{text}");
    let text = problem("[mqtt]\nmax_inflight = 3\nmax_inflight = 4\n");
    assert!(text.starts_with("holdfast.toml:3: invalid TOML"), "{text}");
}

// ---- unknown and unsupported keys ----

#[test]
fn an_unknown_key_is_reported_with_the_closest_known_key() {
    assert_eq!(
        mqtt("max_infligh = 3"),
        "holdfast.toml:2: mqtt.max_infligh: unknown key (did you mean \"max_inflight\"?)"
    );
}

#[test]
fn an_unknown_key_far_from_any_known_key_lists_the_known_keys() {
    assert_eq!(
        problem("[log]\ncolour = true\n"),
        "holdfast.toml:2: log.colour: unknown key (expected one of: level)"
    );
}

#[test]
fn an_unknown_section_is_reported() {
    assert_eq!(
        problem("[mqt]\nmax_inflight = 3\n"),
        "holdfast.toml:1: mqt: unknown key (did you mean \"mqtt\"?)"
    );
}

#[test]
fn keys_not_built_yet_are_errors_not_silently_ignored() {
    assert_eq!(
        problem("[lwm2m]\ntranslators = { command = \"dn\" }\n"),
        "holdfast.toml:2: lwm2m.translators: not supported by this build yet"
    );
}

#[test]
fn a_section_that_is_not_a_table_is_reported() {
    assert_eq!(
        problem("mqtt = 5\n"),
        "holdfast.toml:1: mqtt: expected a table, found the integer 5"
    );
}

// ---- node ----

#[test]
fn node_name_must_not_be_empty_nor_contain_topic_wildcards_or_separators() {
    assert_eq!(
        problem("[node]\nname = \"\"\n"),
        "holdfast.toml:2: node.name: must not be empty"
    );
    for bad in ["gw/1", "gw+", "gw#"] {
        let text = problem(&format!("[node]\nname = \"{bad}\"\n"));
        assert!(
            text.starts_with("holdfast.toml:2: node.name:") && text.contains("topic level"),
            "{text}"
        );
    }
    let text = problem("[node]\nname = \"gw\\u0001\"\n");
    assert!(text.contains("control characters"), "{text}");
    assert_eq!(ok("[node]\nname = \"gw-001\"\n").node.name, "gw-001");
}

#[test]
fn node_data_dir_must_not_be_empty() {
    assert_eq!(
        problem("[node]\ndata_dir = \"\"\n"),
        "holdfast.toml:2: node.data_dir: must not be empty"
    );
    assert_eq!(
        ok("[node]\ndata_dir = \"/data/hf\"\n").node.data_dir,
        PathBuf::from("/data/hf")
    );
}

#[test]
fn a_value_of_the_wrong_type_is_reported_with_what_was_found() {
    assert_eq!(
        problem("[node]\nname = 7\n"),
        "holdfast.toml:2: node.name: expected a string, found the integer 7"
    );
    assert_eq!(
        mqtt("retain_available = \"yes\""),
        "holdfast.toml:2: mqtt.retain_available: expected true or false, found the string \"yes\""
    );
    assert_eq!(
        mqtt("max_inflight = \"32\""),
        "holdfast.toml:2: mqtt.max_inflight: expected an integer, found the string \"32\""
    );
    assert_eq!(
        mqtt("max_packet_size = true"),
        "holdfast.toml:2: mqtt.max_packet_size: expected a size such as \"1MB\" or a number of bytes, found the boolean true"
    );
    assert_eq!(
        mqtt("idle_timeout = 15"),
        "holdfast.toml:2: mqtt.idle_timeout: expected a duration such as \"15s\", found the integer 15"
    );
}

// ---- mqtt ----

#[test]
fn max_packet_size_takes_a_human_size_between_16_bytes_and_256mb() {
    assert_eq!(
        ok("[mqtt]\nmax_packet_size = \"16B\"\n")
            .mqtt
            .max_packet_size,
        16
    );
    assert_eq!(
        ok("[mqtt]\nmax_packet_size = 2048\n").mqtt.max_packet_size,
        2048
    );
    assert_eq!(
        ok("[mqtt]\nmax_packet_size = \"256MB\"\n")
            .mqtt
            .max_packet_size,
        256 * 1024 * 1024
    );
    assert_eq!(
        mqtt("max_packet_size = \"8B\""),
        "holdfast.toml:2: mqtt.max_packet_size: must be between 16B and 256MB, got \"8B\""
    );
    assert_eq!(
        mqtt("max_packet_size = \"1GB\""),
        "holdfast.toml:2: mqtt.max_packet_size: must be between 16B and 256MB, got \"1GB\""
    );
    assert_eq!(
        mqtt("max_packet_size = -1"),
        "holdfast.toml:2: mqtt.max_packet_size: a size cannot be negative, got -1"
    );
    let text = mqtt("max_packet_size = \"1.5MB\"");
    assert!(
        text.starts_with("holdfast.toml:2: mqtt.max_packet_size: \"1.5MB\" is not a size"),
        "{text}"
    );
}

#[test]
fn max_inflight_must_be_between_1_and_65535() {
    assert_eq!(
        mqtt("max_inflight = 0"),
        "holdfast.toml:2: mqtt.max_inflight: must be between 1 and 65535, got 0"
    );
    assert_eq!(
        mqtt("max_inflight = 65536"),
        "holdfast.toml:2: mqtt.max_inflight: must be between 1 and 65535, got 65536"
    );
    assert_eq!(
        ok("[mqtt]\nmax_inflight = 65535\n").mqtt.max_inflight,
        65535
    );
}

#[test]
fn queue_and_store_bounds_must_be_at_least_one() {
    assert_eq!(
        mqtt("max_mqueue_len = 0"),
        "holdfast.toml:2: mqtt.max_mqueue_len: must be at least 1, got 0"
    );
    assert_eq!(
        mqtt("max_retained_messages = 0"),
        "holdfast.toml:2: mqtt.max_retained_messages: must be at least 1, got 0"
    );
    assert_eq!(
        mqtt("max_awaiting_rel = 0"),
        "holdfast.toml:2: mqtt.max_awaiting_rel: must be between 1 and 65535, got 0"
    );
    assert_eq!(
        mqtt("max_retained_payload = 0"),
        "holdfast.toml:2: mqtt.max_retained_payload: must be between 1B and 256MB, got 0"
    );
    assert_eq!(
        mqtt("outbound_buffer = \"512B\""),
        "holdfast.toml:2: mqtt.outbound_buffer: must be between 1KB and 256MB, got \"512B\""
    );
    let config = ok("[mqtt]\nmax_mqueue_len = 1\nmax_retained_messages = 5\nmax_awaiting_rel = 7\nmax_retained_payload = \"64KB\"\noutbound_buffer = \"4MB\"\nmqueue_store_qos0 = true\nretain_available = false\n");
    assert_eq!(config.mqtt.max_mqueue_len, 1);
    assert_eq!(config.mqtt.max_retained_messages, 5);
    assert_eq!(config.mqtt.max_awaiting_rel, 7);
    assert_eq!(config.mqtt.max_retained_payload, 64 * 1024);
    assert_eq!(config.mqtt.outbound_buffer, 4 * 1024 * 1024);
    assert!(config.mqtt.mqueue_store_qos0);
    assert!(!config.mqtt.retain_available);
}

#[test]
fn durations_need_a_unit_and_stay_in_range() {
    assert_eq!(
        ok("[mqtt]\nsession_expiry = \"1h30m\"\n")
            .mqtt
            .session_expiry,
        Duration::from_secs(5400)
    );
    assert_eq!(
        ok("[mqtt]\nsession_expiry = \"0s\"\n").mqtt.session_expiry,
        Duration::ZERO
    );
    assert_eq!(
        mqtt("session_expiry = \"2\""),
        "holdfast.toml:2: mqtt.session_expiry: \"2\" has no unit: use e.g. \"500ms\", \"15s\", \"1m\", \"2h\""
    );
    assert_eq!(
        mqtt("session_expiry = \"50000d\""),
        "holdfast.toml:2: mqtt.session_expiry: must be at least 0s and at most 49710d6h28m15s, got \"50000d\""
    );
    assert_eq!(
        mqtt("idle_timeout = \"0s\""),
        "holdfast.toml:2: mqtt.idle_timeout: must be at least 1ms and at most 1d, got \"0s\""
    );
    assert_eq!(
        ok("[mqtt]\nidle_timeout = \"500ms\"\n").mqtt.idle_timeout,
        Duration::from_millis(500)
    );
}

#[test]
fn sys_interval_is_zero_to_disable_or_at_least_one_second() {
    assert_eq!(
        ok("[mqtt]\nsys_interval = \"0s\"\n").mqtt.sys_interval,
        Duration::ZERO
    );
    assert_eq!(
        ok("[mqtt]\nsys_interval = \"10s\"\n").mqtt.sys_interval,
        Duration::from_secs(10)
    );
    assert_eq!(
        mqtt("sys_interval = \"500ms\""),
        "holdfast.toml:2: mqtt.sys_interval: must be 0s (off) or at least 1s and at most 1d, got \"500ms\""
    );
}

#[test]
fn keepalive_multiplier_is_a_number_of_at_least_one() {
    assert_eq!(
        ok("[mqtt]\nkeepalive_multiplier = 2\n")
            .mqtt
            .keepalive_multiplier,
        2.0
    );
    assert_eq!(
        ok("[mqtt]\nkeepalive_multiplier = 1.0\n")
            .mqtt
            .keepalive_multiplier,
        1.0
    );
    assert_eq!(
        mqtt("keepalive_multiplier = 0.5"),
        "holdfast.toml:2: mqtt.keepalive_multiplier: must be between 1.0 and 1000.0, got 0.5"
    );
    let text = mqtt("keepalive_multiplier = nan");
    assert!(text.contains("must be between 1.0 and 1000.0"), "{text}");
}

#[test]
fn client_id_topic_alias_and_level_limits_have_protocol_ranges() {
    assert_eq!(
        mqtt("max_clientid_len = 22"),
        "holdfast.toml:2: mqtt.max_clientid_len: must be between 23 and 65535, got 22"
    );
    assert_eq!(ok("[mqtt]\nmax_topic_alias = 0\n").mqtt.max_topic_alias, 0);
    assert_eq!(
        mqtt("max_topic_alias = 65536"),
        "holdfast.toml:2: mqtt.max_topic_alias: must be between 0 and 65535, got 65536"
    );
    assert_eq!(
        mqtt("max_topic_levels = 0"),
        "holdfast.toml:2: mqtt.max_topic_levels: must be between 1 and 65535, got 0"
    );
}

#[test]
fn per_client_limits_parse_emqx_rate_burst_pairs() {
    let nz = |n| std::num::NonZeroU64::new(n).unwrap();
    let config = ok(
        "[mqtt]\nmax_subscriptions = 10\nmessages_rate = \"1000,2000\"\nbytes_rate = \"1MB, 2MB\"\n",
    );
    assert_eq!(config.mqtt.max_subscriptions, 10);
    assert_eq!(
        config.mqtt.messages_rate,
        Some(RateLimit {
            rate: nz(1000),
            burst: nz(2000)
        })
    );
    assert_eq!(
        config.mqtt.bytes_rate,
        Some(RateLimit {
            rate: nz(1024 * 1024),
            burst: nz(2 * 1024 * 1024)
        })
    );
    let alone = ok("[mqtt]\nmessages_rate = \"50\"\n");
    assert_eq!(
        alone.mqtt.messages_rate,
        Some(RateLimit {
            rate: nz(50),
            burst: nz(50)
        })
    );
    assert_eq!(Config::default().mqtt.messages_rate, None);
    assert_eq!(Config::default().mqtt.bytes_rate, None);
}

#[test]
fn force_shutdown_takes_a_queue_length_and_a_heap_size() {
    let config = ok("[mqtt]\nforce_shutdown = { max_mqueue_len = 500 }\n");
    assert_eq!(config.mqtt.force_shutdown_mqueue_len, 500);
    assert_eq!(config.mqtt.force_shutdown_heap_size, 0);
    assert_eq!(Config::default().mqtt.force_shutdown_mqueue_len, 0);
    let config = ok("[mqtt]\nforce_shutdown = { max_heap_size = \"32MB\" }\n");
    assert_eq!(config.mqtt.force_shutdown_heap_size, 32 * 1024 * 1024);
    assert_eq!(config.mqtt.force_shutdown_mqueue_len, 0);
    assert!(mqtt("force_shutdown = { max_heap_size = \"32 parsecs\" }")
        .starts_with("holdfast.toml:2: mqtt.force_shutdown.max_heap_size: "));
    assert_eq!(
        mqtt("force_shutdown = { max_heap_sise = 1 }"),
        "holdfast.toml:2: mqtt.force_shutdown.max_heap_sise: unknown key (did you mean \"max_heap_size\"?)"
    );
    assert_eq!(
        mqtt("force_shutdown = { max_mqueue_len = -1 }"),
        "holdfast.toml:2: mqtt.force_shutdown.max_mqueue_len: must be at least 0, got -1"
    );
}

#[test]
fn a_bad_rate_is_reported_with_its_key_and_line() {
    assert_eq!(
        mqtt("messages_rate = \"1000,0\""),
        "holdfast.toml:2: mqtt.messages_rate: \"1000,0\": rate and burst must be at least 1 (leave the key out for no limit)"
    );
    assert_eq!(
        mqtt("messages_rate = \"1MB,2MB\""),
        "holdfast.toml:2: mqtt.messages_rate: \"1MB,2MB\" is not \"rate,burst\": \"1MB\" is not a whole number, e.g. \"1000,2000\""
    );
    assert!(mqtt("bytes_rate = \"1,2,3\"").contains("at most one comma"));
    assert!(mqtt("bytes_rate = \"fast\"").starts_with("holdfast.toml:2: mqtt.bytes_rate: "));
    assert_eq!(
        mqtt("bytes_rate = 1000"),
        "holdfast.toml:2: mqtt.bytes_rate: expected a string, found the integer 1000"
    );
    assert_eq!(
        mqtt("max_subscriptions = -1"),
        "holdfast.toml:2: mqtt.max_subscriptions: must be at least 0, got -1"
    );
}

#[test]
fn shared_subscription_strategy_is_one_of_three_words() {
    for (word, strategy) in [
        ("round_robin", SharedStrategy::RoundRobin),
        ("random", SharedStrategy::Random),
        ("hash_clientid", SharedStrategy::HashClientId),
    ] {
        let config = ok(&format!(
            "[mqtt]\nshared_subscription_strategy = \"{word}\"\n"
        ));
        assert_eq!(config.mqtt.shared_subscription_strategy, strategy);
        assert_eq!(strategy.to_string(), word);
    }
    assert_eq!(
        mqtt("shared_subscription_strategy = \"sticky\""),
        "holdfast.toml:2: mqtt.shared_subscription_strategy: unknown strategy \"sticky\" (expected round_robin, random or hash_clientid)"
    );
}

// ---- listeners ----

#[test]
fn a_bind_that_is_not_a_socket_address_is_reported_at_its_line() {
    let text = "[[listeners]]\nbind = \"0.0.0.0:1883\"\n\n[[listeners]]\nkind = \"tcp\"\n\nbind = \"0.0.0.0:99999\"\n";
    assert_eq!(
        problem(text),
        "holdfast.toml:7: listeners[1].bind: \"0.0.0.0:99999\" is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:1883\" or \"[::]:1883\")"
    );
}

#[test]
fn a_listener_without_bind_is_reported_at_its_header() {
    assert_eq!(
        problem("[node]\nname = \"gw\"\n[[listeners]]\nkind = \"tcp\"\n"),
        "holdfast.toml:3: listeners[0].bind: is required, e.g. bind = \"0.0.0.0:1883\""
    );
}

#[test]
fn an_unknown_listener_kind_is_rejected() {
    assert_eq!(
        problem("[[listeners]]\nkind = \"quic\"\nbind = \"0.0.0.0:8883\"\n"),
        "holdfast.toml:2: listeners[0].kind: unknown listener kind \"quic\" (expected tcp, tls, ws or wss)"
    );
}

#[test]
fn tls_ws_and_wss_listeners_parse_with_their_tls_tables() {
    let config = ok(concat!(
        "[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
        "tls = { cert = \"s.pem\", key = \"s.key\", ca = \"ca.pem\", verify_peer = true, fail_if_no_peer_cert = true, versions = [\"1.3\"], peer_cert_as_username = \"cn\" }\n",
        "[[listeners]]\nkind = \"ws\"\nbind = \"0.0.0.0:8083\"\n",
        "[[listeners]]\nkind = \"wss\"\nbind = \"0.0.0.0:8084\"\n",
        "tls = { cert = \"s.pem\", key = \"s.key\" }\n",
    ));
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["tls:default", "ws:default", "wss:default"]);
    assert_eq!(
        config.listeners[0].tls,
        Some(ListenerTls {
            cert: "s.pem".into(),
            key: "s.key".into(),
            ca: Some("ca.pem".into()),
            verify_peer: true,
            crl: None,
            fail_if_no_peer_cert: true,
            tls12: false,
            tls13: true,
            peer_cert_as_username: Some(CertIdentity::Cn),
        })
    );
    assert_eq!(config.listeners[1].tls, None);
    let wss = config.listeners[2]
        .tls
        .as_ref()
        .map(|t| (t.verify_peer, t.tls12, t.tls13));
    assert_eq!(wss, Some((false, true, true)));
}

#[test]
fn tls_tables_are_required_where_used_refused_elsewhere_and_checked() {
    assert_eq!(
        problem("[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n"),
        "holdfast.toml:1: listeners[0].tls: is required for a tls listener, e.g. tls = { cert = \"server.pem\", key = \"server.key\" }"
    );
    assert_eq!(
        problem("[[listeners]]\nbind = \"0.0.0.0:1883\"\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n"),
        "holdfast.toml:3: listeners[0].tls: a tcp listener does not use TLS (use kind = \"tls\" or \"wss\")"
    );
    assert_eq!(
        problems("[[listeners]]\nkind = \"wss\"\nbind = \"0.0.0.0:8084\"\ntls = { cert = \"c.pem\", verify_peer = true, fail_if_no_peer_cert = true, versions = [\"1.1\"] }\n"),
        [
            "holdfast.toml:4: listeners[0].tls.key: is required: the PEM private key of cert",
            "holdfast.toml:4: listeners[0].tls.ca: is required with verify_peer = true: the PEM CA that signs client certificates",
            "holdfast.toml:4: listeners[0].tls.versions: unknown TLS version \"1.1\" (expected \"1.2\" or \"1.3\")",
        ]
    );
    assert_eq!(
        problem("[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\ntls = { cert = \"c.pem\", key = \"k.pem\", fail_if_no_peer_cert = true }\n"),
        "holdfast.toml:4: listeners[0].tls.fail_if_no_peer_cert: needs verify_peer = true (no certificate is asked for otherwise)"
    );
}

#[test]
fn a_listener_kind_defaults_to_tcp() {
    let config = ok("[[listeners]]\nbind = \"127.0.0.1:1884\"\n");
    assert_eq!(config.listeners[0].kind, ListenerKind::Tcp);
    assert_eq!(config.listeners[0].bind, addr("127.0.0.1:1884"));
    assert_eq!(config.listeners[0].max_connections, 100_000);
    assert_eq!(config.listeners[0].max_conn_rate, 1000);
}

#[test]
fn duplicate_listener_binds_are_an_error() {
    let text = "[[listeners]]\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nbind = \"0.0.0.0:1883\"\n";
    assert_eq!(
        problem(text),
        "holdfast.toml:4: listeners[1].bind: \"0.0.0.0:1883\" is already used by listeners[0]"
    );
}

#[test]
fn a_specific_address_overlapping_the_wildcard_on_the_same_port_is_an_error() {
    let text = "[[listeners]]\nbind = \"127.0.0.1:1883\"\n[[listeners]]\nbind = \"0.0.0.0:1883\"\n";
    assert_eq!(
        problem(text),
        "holdfast.toml:4: listeners[1].bind: \"0.0.0.0:1883\" overlaps listeners[0] on \"127.0.0.1:1883\""
    );
}

#[test]
fn distinct_ports_addresses_and_port_zero_do_not_conflict() {
    let text = "[[listeners]]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:1883\"\n[[listeners]]\nbind = \"127.0.0.2:1883\"\n[[listeners]]\nbind = \"[::1]:1883\"\n";
    let config = ok(text);
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["tcp:0", "tcp:1", "tcp:2", "tcp:3", "tcp:4"]);
}

#[test]
fn listener_names_are_explicit_or_default_and_must_be_unique() {
    let config = ok("[[listeners]]\nname = \"lan\"\nbind = \"127.0.0.1:1883\"\n");
    assert_eq!(config.listeners[0].name, "tcp:lan");
    assert_eq!(
        problem("[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1883\"\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1884\"\n"),
        "holdfast.toml:4: listeners[1]: listener name \"tcp:a\" is already used by listeners[0]"
    );
    assert_eq!(
        problem("[[listeners]]\nname = \"a b\"\nbind = \"127.0.0.1:1883\"\n"),
        "holdfast.toml:2: listeners[0].name: \"a b\" is not a listener name (use letters, digits, '_', '-', '.')"
    );
}

#[test]
fn listener_connection_limits_must_be_at_least_one() {
    assert_eq!(
        problems(
            "[[listeners]]\nbind = \"0.0.0.0:1883\"\nmax_connections = 0\nmax_conn_rate = 0\n"
        ),
        [
            "holdfast.toml:3: listeners[0].max_connections: must be at least 1, got 0",
            "holdfast.toml:4: listeners[0].max_conn_rate: must be between 1 and 4294967295, got 0",
        ]
    );
    let config =
        ok("[[listeners]]\nbind = \"0.0.0.0:1883\"\nmax_connections = 10\nmax_conn_rate = 5\n");
    assert_eq!(config.listeners[0].max_connections, 10);
    assert_eq!(config.listeners[0].max_conn_rate, 5);
}

#[test]
fn an_empty_listener_list_is_an_error() {
    assert_eq!(
        problem("listeners = []\n"),
        "holdfast.toml:1: listeners: at least one listener is required"
    );
    assert_eq!(
        problem("[listeners]\nbind = \"0.0.0.0:1883\"\n"),
        "holdfast.toml:1: listeners: expected an array of tables ([[listeners]]), found a table"
    );
}

#[test]
fn inline_listener_tables_are_accepted() {
    let config = ok("listeners = [{ bind = \"127.0.0.1:1\" }, { bind = \"127.0.0.1:2\" }]\n");
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners[1].bind, addr("127.0.0.1:2"));
}

// ---- auth and log ----

#[test]
fn auth_settings_are_read_and_an_empty_password_file_is_rejected() {
    let config = ok("[auth]\nallow_anonymous = true\npassword_file = \"/etc/holdfast/passwd\"\n");
    assert!(config.auth.allow_anonymous);
    assert_eq!(
        config.auth.password_file,
        Some(PathBuf::from("/etc/holdfast/passwd"))
    );
    assert_eq!(
        problem("[auth]\npassword_file = \"\"\n"),
        "holdfast.toml:2: auth.password_file: must not be empty"
    );
}

#[test]
fn acl_allowlist_and_jwt_settings_are_read() {
    let config = ok(concat!(
        "[auth]\n",
        "acl_file = \"/etc/holdfast/acl.toml\"\n",
        "acl_nomatch = \"deny\"\n",
        "clientid_allowlist = \"/etc/holdfast/clientids\"\n",
        "jwt = { secret = \"s3cret-s3cret-s3cret-s3cret-s3cret\", public_key = \"/etc/holdfast/jwt.pem\", algorithms = [\"HS256\", \"RS256\", \"ES256\"], username_claim = \"sub\", issuer = \"idp\", audience = \"holdfast\", max_lifetime = \"1h\" }\n",
    ));
    let auth = &config.auth;
    assert_eq!(auth.acl_file, Some(PathBuf::from("/etc/holdfast/acl.toml")));
    assert_eq!(auth.acl_nomatch, AclNomatch::Deny);
    assert_eq!(
        auth.clientid_allowlist,
        Some(PathBuf::from("/etc/holdfast/clientids"))
    );
    let jwt = auth.jwt.as_ref().unwrap();
    assert_eq!(
        jwt.secret.as_deref(),
        Some("s3cret-s3cret-s3cret-s3cret-s3cret")
    );
    assert_eq!(jwt.issuer.as_deref(), Some("idp"));
    assert_eq!(jwt.audience.as_deref(), Some("holdfast"));
    assert_eq!(jwt.max_lifetime, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(jwt.algorithms, ["HS256", "RS256", "ES256"]);
    assert_eq!(jwt.username_claim.as_deref(), Some("sub"));
    assert!(
        !format!("{jwt:?}").contains("s3cret"),
        "the secret is never shown"
    );
    assert_eq!(AuthConfig::default().acl_nomatch, AclNomatch::Allow);
}

#[test]
fn bad_acl_and_jwt_settings_are_reported_with_their_keys() {
    assert_eq!(
        problem("[auth]\nacl_nomatch = \"maybe\"\n"),
        "holdfast.toml:2: auth.acl_nomatch: \"maybe\" is not allow or deny"
    );
    assert_eq!(
        problem("[auth]\nacl_file = \"\"\n"),
        "holdfast.toml:2: auth.acl_file: must not be empty"
    );
    assert_eq!(
        problem("[auth]\njwt = { secret = \"0123456789abcdef0123456789abcdef\" }\n"),
        "holdfast.toml:2: auth.jwt.algorithms: is required: the accepted signature algorithms, e.g. [\"HS256\"] (any of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
    );
    assert_eq!(
        problem("[auth]\njwt = { secret = \"0123456789abcdef0123456789abcdef\", algorithms = [\"HS265\"] }\n"),
        "holdfast.toml:2: auth.jwt.algorithms[0]: unknown algorithm \"HS265\" (expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
    );
    assert_eq!(
        problem("[auth]\njwt = { algorithms = [\"HS256\"] }\n"),
        "holdfast.toml:2: auth.jwt: an HS algorithm is listed but no secret is set"
    );
    assert_eq!(
        problem("[auth]\njwt = { secret = \"0123456789abcdef0123456789abcdef\", algorithms = [\"ES256\"] }\n"),
        "holdfast.toml:2: auth.jwt: an RS/PS/ES/EdDSA algorithm is listed but no public_key is set"
    );
    assert_eq!(
        problem("[auth]\njwt = { secret = \"\", algorithms = [\"HS256\"] }\n"),
        "holdfast.toml:2: auth.jwt.secret: must be at least 32 bytes (got 0): a short HMAC secret can be guessed from one captured token"
    );
    assert_eq!(
        problem("[auth]\njwt = { secret = \"s3cret\", algorithms = [\"HS256\"] }\n"),
        "holdfast.toml:2: auth.jwt.secret: must be at least 32 bytes (got 6): a short HMAC secret can be guessed from one captured token"
    );
}

#[test]
fn log_level_accepts_levels_and_directives_but_not_typos() {
    for good in [
        "error",
        "warn",
        "info",
        "debug",
        "trace",
        "off",
        "DEBUG",
        "info,holdfast::broker=debug",
        "holdfast=trace",
    ] {
        assert_eq!(ok(&format!("[log]\nlevel = \"{good}\"\n")).log.level, good);
    }
    assert_eq!(
        problem("[log]\nlevel = \"verbose\"\n"),
        "holdfast.toml:2: log.level: unknown log level \"verbose\" (expected error, warn, info, debug, trace, off, or a filter such as \"info,holdfast::broker=debug\")"
    );
    let text = problem("[log]\nlevel = \"holdfast=loud\"\n");
    assert!(
        text.starts_with("holdfast.toml:2: log.level: \"holdfast=loud\" is not a valid log filter"),
        "{text}"
    );
    assert!(problem("[log]\nlevel = \"\"\n").contains("must not be empty"));
}

#[test]
fn board_settings_are_read_with_host_as_the_default_kind() {
    assert_eq!(ok("").board.kind, BoardKind::Host);
    let config = ok("[board]\nkind = \"linux\"\nwatchdog_device = \"/dev/watchdog1\"\nwatchdog_timeout = \"30s\"\nhealth_interval = \"0s\"\nled_status = \"ACT\"\nled_fault = \"red:fault\"\nsys_root = \"/tmp/sys\"\n");
    let b = config.board;
    assert_eq!(b.kind, BoardKind::Linux);
    assert_eq!(b.watchdog_device, Some(PathBuf::from("/dev/watchdog1")));
    assert_eq!(b.watchdog_timeout, Duration::from_secs(30));
    assert_eq!(b.health_interval, Duration::ZERO);
    assert_eq!(b.led_status.as_deref(), Some("ACT"));
    assert_eq!(b.led_uplink, None);
    assert_eq!(b.led_fault.as_deref(), Some("red:fault"));
    assert_eq!(b.sys_root, PathBuf::from("/tmp/sys"));
    assert_eq!(b.proc_root, PathBuf::from("/proc"));
    // An empty device or LED name means none.
    let b = ok("[board]\nwatchdog_device = \"\"\nled_status = \"\"\n").board;
    assert_eq!(b.watchdog_device, None);
    assert_eq!(b.led_status, None);
}

#[test]
fn bad_board_settings_are_reported_with_their_keys() {
    assert_eq!(
        problems("[board]\nkind = \"rpi\"\nwatchdog_timeout = \"1500ms\"\nhealth_interval = \"10ms\"\nled_fault = \"../x\"\nwatchdog_timout = \"5s\"\n"),
        [
            "holdfast.toml:2: board.kind: unknown board kind \"rpi\" (expected host or linux)",
            "holdfast.toml:3: board.watchdog_timeout: must be a whole number of seconds (the kernel takes seconds)",
            "holdfast.toml:4: board.health_interval: must be 0s (off) or at least 1s and at most 1d, got \"10ms\"",
            "holdfast.toml:5: board.led_fault: \"../x\" is not an LED name (a directory name under /sys/class/leds, e.g. \"green:status\")",
            "holdfast.toml:6: board.watchdog_timout: unknown key (did you mean \"watchdog_timeout\"?)",
        ]
    );
    assert_eq!(
        problem("[board]\nwatchdog_timeout = \"2h\"\n"),
        "holdfast.toml:2: board.watchdog_timeout: must be at least 1s and at most 1h, got \"2h\""
    );
    assert_eq!(
        problems("[board]\nreset_button = \"gpio17\"\nreset_button_hold = \"500ms\"\nreset_button_active_low = \"yes\"\n").len(),
        3
    );
    assert_eq!(
        problem("[board]\nreset_button = \"gpio17/value\"\n"),
        "holdfast.toml:2: board.reset_button: \"gpio17/value\" must be an absolute path to a GPIO value file (e.g. \"/sys/class/gpio/gpio17/value\")"
    );
}

#[test]
fn the_reset_button_settings_are_read() {
    let b = ok("[board]\nreset_button = \"/sys/class/gpio/gpio17/value\"\nreset_button_active_low = true\nreset_button_hold = \"5s\"\n").board;
    assert_eq!(
        b.reset_button,
        Some(PathBuf::from("/sys/class/gpio/gpio17/value"))
    );
    assert!(b.reset_button_active_low);
    assert_eq!(b.reset_button_hold, Duration::from_secs(5));
    let d = ok("").board;
    assert_eq!(
        (d.reset_button, d.reset_button_hold),
        (None, Duration::from_secs(10))
    );
    assert_eq!(
        ok("[board]\nreset_button = \"\"\n").board.reset_button,
        None
    );
}

#[test]
fn board_settings_can_be_overridden_from_the_environment() {
    let config = parse(
        "",
        FILE,
        env(&[
            ("HOLDFAST__BOARD__KIND", "linux"),
            ("HOLDFAST__BOARD__LED_STATUS", "ACT"),
        ]),
    )
    .unwrap();
    assert_eq!(config.board.kind, BoardKind::Linux);
    assert_eq!(config.board.led_status.as_deref(), Some("ACT"));
}

// ---- many problems at once ----

#[test]
fn every_problem_in_a_file_is_reported_at_once_in_file_order() {
    let text = r#"[node]
name = "gw/1"

[mqtt]
max_inflight = 0
max_infligh = 3
idle_timeout = "15"

[[listeners]]
kind = "quic"
bind = "0.0.0.0:8883"

[[listeners]]
bind = "nowhere"

[[bridges]]
name = "cloud"

[log]
level = "loud"
"#;
    let errors = parse(text, FILE, no_env()).unwrap_err();
    let lines: Vec<(Option<usize>, &str)> = errors
        .problems
        .iter()
        .map(|p| (p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (Some(2), "node.name"),
            (Some(5), "mqtt.max_inflight"),
            (Some(6), "mqtt.max_infligh"),
            (Some(7), "mqtt.idle_timeout"),
            (Some(10), "listeners[0].kind"),
            (Some(14), "listeners[1].bind"),
            (Some(16), "bridges[0].server"),
            (Some(16), "bridges[0]"),
            (Some(20), "log.level"),
        ]
    );
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 9, "{shown}");
    assert!(
        shown.lines().all(|l| l.starts_with("holdfast.toml:")),
        "{shown}"
    );
}

// ---- environment overrides ----

#[test]
fn an_env_override_replaces_a_file_value() {
    let config = parse(
        "[mqtt]\nmax_inflight = 5\n",
        FILE,
        env(&[
            ("HOLDFAST__MQTT__MAX_INFLIGHT", "64"),
            ("HOLDFAST__MQTT__SESSION_EXPIRY", "1d"),
            ("HOLDFAST__AUTH__ALLOW_ANONYMOUS", "true"),
            ("HOLDFAST__MQTT__MAX_PACKET_SIZE", "64KB"),
            ("HOLDFAST__MQTT__KEEPALIVE_MULTIPLIER", "2.5"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(config.mqtt.max_inflight, 64);
    assert_eq!(config.mqtt.session_expiry, Duration::from_secs(86_400));
    assert!(config.auth.allow_anonymous);
    assert_eq!(config.mqtt.max_packet_size, 64 * 1024);
    assert_eq!(config.mqtt.keepalive_multiplier, 2.5);
}

#[test]
fn env_key_names_are_case_insensitive_and_string_settings_keep_the_raw_text() {
    let config = load(
        None,
        env(&[
            ("holdfast__Node__Name", "1234"),
            ("HOLDFAST__LOG__LEVEL", "debug"),
            ("HOLDFAST__AUTH__PASSWORD_FILE", "/etc/hf/passwd"),
        ]),
    )
    .unwrap();
    assert_eq!(config.node.name, "1234");
    assert_eq!(config.log.level, "debug");
    assert_eq!(
        config.auth.password_file,
        Some(PathBuf::from("/etc/hf/passwd"))
    );
}

#[test]
fn env_overrides_apply_on_top_of_the_defaults_when_there_is_no_file() {
    let config = load(
        None,
        env(&[("HOLDFAST__LISTENERS__0__BIND", "127.0.0.1:1884")]),
    )
    .unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].bind, addr("127.0.0.1:1884"));
    assert_eq!(config.listeners[0].name, "tcp:default");
}

#[test]
fn an_env_index_edits_a_file_listener_and_the_next_index_adds_one() {
    let config = parse(
        "[[listeners]]\nbind = \"0.0.0.0:1883\"\nmax_connections = 10\n",
        FILE,
        env(&[
            ("HOLDFAST__LISTENERS__1__BIND", "127.0.0.1:1885"),
            ("HOLDFAST__LISTENERS__0__BIND", "127.0.0.1:1884"),
        ]),
    )
    .unwrap();
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners[0].bind, addr("127.0.0.1:1884"));
    assert_eq!(config.listeners[0].max_connections, 10);
    assert_eq!(config.listeners[1].bind, addr("127.0.0.1:1885"));
    assert_eq!(config.listeners[1].name, "tcp:1");
}

#[test]
fn an_env_override_naming_an_unknown_key_names_the_variable() {
    assert_eq!(
        problems_with("", &[("HOLDFAST__MQTT__MAX_INFLIGH", "3")]),
        ["HOLDFAST__MQTT__MAX_INFLIGH: mqtt.max_infligh: unknown key (did you mean \"max_inflight\"?)"]
    );
    assert_eq!(
        problems_with("", &[("HOLDFAST__WEB__BINDD", "0.0.0.0:18083")]),
        ["HOLDFAST__WEB__BINDD: web.bindd: unknown key (did you mean \"bind\"?)"]
    );
}

#[test]
fn a_bad_env_value_is_reported_against_the_variable() {
    assert_eq!(
        problems_with("[mqtt]\nmax_inflight = 5\n", &[("HOLDFAST__MQTT__MAX_INFLIGHT", "lots")]),
        ["HOLDFAST__MQTT__MAX_INFLIGHT: mqtt.max_inflight: expected an integer, found the string \"lots\""]
    );
    assert_eq!(
        problems_with("", &[("HOLDFAST__LISTENERS__0__BIND", "0.0.0.0:99999")]),
        ["HOLDFAST__LISTENERS__0__BIND: listeners[0].bind: \"0.0.0.0:99999\" is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:1883\" or \"[::]:1883\")"]
    );
    assert_eq!(
        problems_with("", &[("HOLDFAST__LISTENERS__2__BIND", "127.0.0.1:1")]),
        ["HOLDFAST__LISTENERS__2__BIND: listeners[2].bind: index 2 is past the end of listeners (1 entries; use 1 to add one)"]
    );
}

#[test]
fn a_duplicate_bind_added_from_the_env_is_reported_against_the_variable() {
    assert_eq!(
        problems_with("", &[("HOLDFAST__LISTENERS__1__BIND", "0.0.0.0:1883")]),
        ["HOLDFAST__LISTENERS__1__BIND: listeners[1].bind: \"0.0.0.0:1883\" is already used by listeners[0]"]
    );
}

#[test]
fn file_and_env_problems_are_reported_together() {
    let all = problems_with(
        "[mqtt]\nmax_inflight = 0\n",
        &[("HOLDFAST__NODE__NAME", "a/b"), ("HOLDFAST__MQTT__0", "x")],
    );
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(
        all[0].starts_with("holdfast.toml:2: mqtt.max_inflight:"),
        "{all:#?}"
    );
    assert!(
        all[1].starts_with("HOLDFAST__NODE__NAME: node.name:"),
        "{all:#?}"
    );
    assert!(
        all[2].starts_with("HOLDFAST__MQTT__0: mqtt[0]:"),
        "{all:#?}"
    );
}

#[test]
fn problems_display_their_parts_and_leave_out_unknown_ones() {
    let with_all = Problem {
        origin: "f.toml".into(),
        line: Some(3),
        key: "mqtt.max_inflight".into(),
        message: "bad".into(),
    };
    assert_eq!(with_all.to_string(), "f.toml:3: mqtt.max_inflight: bad");
    let bare = Problem {
        origin: "f.toml".into(),
        line: None,
        key: String::new(),
        message: "cannot read".into(),
    };
    assert_eq!(bare.to_string(), "f.toml: cannot read");
    let errors = ConfigErrors {
        problems: vec![with_all, bare],
    };
    assert_eq!(
        errors.to_string(),
        "f.toml:3: mqtt.max_inflight: bad\nf.toml: cannot read"
    );
}

// ---- bridges ----

/// The example's commented `[[bridges]]` block, uncommented.
fn example_bridge() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in example_toml().lines() {
        if line == "# [[bridges]]" {
            inside = true;
        }
        if inside {
            if !line.starts_with("# ") || line.starts_with("# #") {
                if line.is_empty() {
                    break;
                }
                continue;
            }
            out.push_str(&line[2..]);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_example_bridge_parses_with_every_documented_value() {
    let text = example_bridge();
    assert!(text.contains("[[bridges]]"), "{text}");
    let config = ok(&text);
    let b = &config.bridges[0];
    assert_eq!(b.name, "cloud");
    assert_eq!(
        b.server,
        ServerAddr {
            tls: true,
            host: "broker.example.com".into(),
            port: 8883
        }
    );
    assert_eq!(b.client_id, "gw-001");
    assert_eq!(b.remote_prefix, "edge/gw-001/");
    assert_eq!(b.forward, vec!["sensors/#"]);
    assert_eq!(b.subscribe, vec!["cmd/#"]);
    assert_eq!((b.qos, b.max_inflight, b.buffer_qos0), (1, 256, true));
    assert_eq!(b.backoff_max, std::time::Duration::from_secs(120));
    assert_eq!(b.queue, BridgeQueueConfig::default());
    let tls = b.tls.as_ref().map(|t| t.cert.is_some());
    assert_eq!(tls, Some(true));
}

#[test]
fn a_minimal_bridge_takes_the_node_name_as_client_id_and_the_defaults() {
    let config = ok("[node]\nname = \"gw-7\"\n[[bridges]]\nname = \"up\"\nserver = \"mqtt://127.0.0.1:1884\"\nforward = [\"#\"]\n");
    let b = &config.bridges[0];
    assert_eq!(b.client_id, "gw-7");
    assert_eq!(b.server.port, 1884);
    assert!(b.tls.is_none());
    assert_eq!(b.queue.flush, QueueFlush::Group);
    assert_eq!(b.queue.on_full, QueueOnFull::DropOldest);
}

#[test]
fn bridge_mistakes_are_reported_with_their_keys() {
    let errors = problems(concat!(
        "[[bridges]]\n",
        "name = \"a b\"\n",
        "server = \"http://x\"\n",
        "forward = [\"a/#/b\"]\n",
        "qos = 3\n",
        "queue = { flush = \"sometimes\", on_full = \"panic\" }\n",
        "[[bridges]]\n",
        "server = \"mqtts://cloud\"\n",
        "forward = [\"x\"]\n",
    ));
    let text = errors.join("\n");
    for expected in [
        "holdfast.toml:2: bridges[0].name: \"a b\" is not a bridge name",
        "holdfast.toml:3: bridges[0].server: \"http://x\" is not a server address",
        "holdfast.toml:4: bridges[0].forward[0]: \"a/#/b\" is not a topic filter",
        "holdfast.toml:5: bridges[0].qos: must be between 0 and 2, got 3",
        "bridges[0].queue.flush: unknown flush mode \"sometimes\"",
        "bridges[0].queue.on_full: unknown policy \"panic\"",
        "holdfast.toml:7: bridges[1].name: is required",
        "holdfast.toml:8: bridges[1].server: mqtts:// needs a [bridges.tls] table",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn bridge_names_are_unique_and_flush_intervals_parse() {
    let text = "[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"x\"]\nqueue = { flush = \"interval:250ms\" }\n[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"y\"]\n";
    let errors = problems(text).join("\n");
    assert!(
        errors.contains("bridges[1].name: bridge name \"a\" is already used by bridges[0]"),
        "{errors}"
    );
    // An invalid entry before them does not shift the index the message names.
    let text = "[[bridges]]\nname = \"bad\"\nserver = \"http://h\"\n[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"x\"]\n[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"y\"]\n";
    let errors = problems(text).join("\n");
    assert!(
        errors.contains("bridges[2].name: bridge name \"a\" is already used by bridges[1]"),
        "{errors}"
    );
    let one = ok("[[bridges]]\nname = \"a\"\nserver = \"mqtt://[::1]:1999\"\nforward = [\"x\"]\nqueue = { flush = \"interval:250ms\" }\n");
    assert_eq!(
        one.bridges[0].queue.flush,
        QueueFlush::Interval(std::time::Duration::from_millis(250))
    );
    assert_eq!(one.bridges[0].server.host, "::1");
}

#[test]
fn peer_cert_as_username_needs_verify_peer_and_a_known_part() {
    let errors = problems(concat!(
        "[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
        "tls = { cert = \"s.pem\", key = \"s.key\", peer_cert_as_username = \"cn\" }\n",
        "[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8884\"\n",
        "tls = { cert = \"s.pem\", key = \"s.key\", ca = \"ca.pem\", verify_peer = true, peer_cert_as_username = \"dn\" }\n",
    ))
    .join("\n");
    assert!(
        errors.contains("listeners[0].tls.peer_cert_as_username: needs verify_peer = true"),
        "{errors}"
    );
    assert!(
        errors.contains(
            "listeners[1].tls.peer_cert_as_username: unknown \"dn\" (expected \"cn\" or \"san\")"
        ),
        "{errors}"
    );
}

// ---- auto_subscribe ----

#[test]
fn auto_subscribe_entries_take_a_template_and_subscription_options() {
    let config = ok(r#"
[[auto_subscribe]]
topic = "devices/%c/commands"
qos = 1

[[auto_subscribe]]
topic = "users/%u/#"
retain_handling = 2
no_local = true
"#);
    assert_eq!(config.auto_subscribe.len(), 2);
    assert_eq!(config.auto_subscribe[0].topic, "devices/%c/commands");
    assert_eq!(config.auto_subscribe[0].qos, 1);
    assert_eq!(config.auto_subscribe[0].retain_handling, 0);
    assert!(config.auto_subscribe[1].no_local);
    assert_eq!(config.auto_subscribe[1].retain_handling, 2);
    assert!(Config::default().auto_subscribe.is_empty());
}

#[test]
fn bad_auto_subscribe_entries_are_reported_with_their_line() {
    assert_eq!(
        problem("[[auto_subscribe]]\ntopic = \"devices/%i\"\n"),
        "holdfast.toml:2: auto_subscribe[0].topic: unknown placeholder %i in \"devices/%i\" (use %c for the client id, %u for the username)"
    );
    assert_eq!(
        problem("[[auto_subscribe]]\nqos = 1\n"),
        "holdfast.toml:1: auto_subscribe[0].topic: is required, e.g. topic = \"devices/%c/commands\""
    );
    assert_eq!(
        problem("[[auto_subscribe]]\ntopic = \"a\"\nqos = 3\n"),
        "holdfast.toml:3: auto_subscribe[0].qos: must be between 0 and 2, got 3"
    );
    assert_eq!(
        problem("[[auto_subscribe]]\ntopic = \"a/#/b\"\n"),
        "holdfast.toml:2: auto_subscribe[0].topic: \"a/#/b\" is not a topic filter: '#' must be the last level of a topic filter"
    );
    assert_eq!(
        problem("auto_subscribe = \"x\"\n"),
        "holdfast.toml:1: auto_subscribe: expected an array of tables ([[auto_subscribe]]), found the string \"x\""
    );
}

// ---- webhooks ----

/// The example's commented `[[webhooks]]` block, uncommented.
fn example_webhook() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in example_toml().lines() {
        if line == "# [[webhooks]]" {
            inside = true;
        }
        if inside {
            if !line.starts_with("# ") || line.starts_with("# #") {
                if line.is_empty() {
                    break;
                }
                continue;
            }
            out.push_str(&line[2..]);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_example_webhook_parses_with_every_documented_value() {
    let text = example_webhook();
    assert!(text.contains("[[webhooks]]"), "{text}");
    for key in WEBHOOK_EXAMPLE_KEYS {
        assert!(text.contains(&format!("{key} = ")), "example lacks {key}");
    }
    let config = ok(&text);
    let w = &config.webhooks[0];
    assert_eq!(w.name, "audit");
    assert_eq!(
        w.url,
        WebhookUrl {
            tls: true,
            host: "hooks.example.com".into(),
            port: 443,
            path: "/mqtt".into()
        }
    );
    assert!(w.events.contains(WebhookEvent::MessagePublish));
    assert!(!w.events.contains(WebhookEvent::MessageDropped));
    assert_eq!(w.topics, vec!["sensors/#"]);
    assert_eq!(
        w.headers,
        vec![("Authorization".to_owned(), "Bearer secret".to_owned())]
    );
    assert_eq!(w.timeout, Duration::from_secs(5));
    assert_eq!((w.max_retries, w.queue_size, w.pool_size), (3, 10_000, 4));
    assert_eq!(w.payload_encoding, PayloadEncoding::Base64);
    assert_eq!(w.ca, Some(PathBuf::from("/etc/holdfast/hooks-ca.pem")));
}

const WEBHOOK_EXAMPLE_KEYS: [&str; 11] = [
    "name",
    "url",
    "events",
    "topics",
    "headers",
    "timeout",
    "max_retries",
    "queue_size",
    "pool_size",
    "payload_encoding",
    "ca",
];

#[test]
fn a_minimal_webhook_posts_every_event_for_every_topic() {
    let config = ok("[[webhooks]]\nname = \"h\"\nurl = \"http://127.0.0.1:8080\"\n");
    let w = &config.webhooks[0];
    assert_eq!(w.events, EventSet::ALL);
    for e in WebhookEvent::ALL {
        assert!(w.events.contains(e), "{}", e.as_str());
    }
    assert_eq!(w.topics, vec!["#"]);
    assert_eq!(w.url.path, "/");
    assert_eq!(w.url.port, 8080);
    assert!(!w.url.tls);
    assert!(w.headers.is_empty() && w.ca.is_none());
    assert_eq!(w.payload_encoding, PayloadEncoding::Base64);
}

#[test]
fn webhook_urls_parse_hosts_ports_and_paths() {
    let u = webhooks::parse_url("https://[::1]/a/b?x=1").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("::1", 443, "/a/b?x=1")
    );
    let u = webhooks::parse_url("http://h:81?q").unwrap();
    assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("h", 81, "/?q"));
    for bad in [
        "ftp://h/",
        "http://",
        "http://h:0/",
        "http://h:99999/",
        "http://u:p@h/",
        "http://h /x",
        "http://[::1/",
    ] {
        assert!(webhooks::parse_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn webhook_mistakes_are_reported_with_their_lines_and_keys() {
    let errors = problems(concat!(
        "[[webhooks]]\n",
        "name = \"a b\"\n",
        "url = \"htp://x\"\n",
        "events = [\"message.publish\", \"message.bounced\"]\n",
        "topics = [\"a/#/b\"]\n",
        "headers = { Host = \"x\", \"Bad Name\" = \"y\", X-Ok = \"a\\nb\" }\n",
        "timeout = \"0s\"\n",
        "max_retries = 100\n",
        "queue_size = 0\n",
        "pool_size = 65\n",
        "payload_encoding = \"hex\"\n",
        "[[webhooks]]\n",
        "name = \"b\"\n",
        "url = \"http://h/\"\n",
        "[[webhooks]]\n",
        "name = \"b\"\n",
        "url = \"http://h/\"\n",
        "[[webhooks]]\n",
        "events = []\n",
        "[[webhooks]]\n",
        "name = \"c\"\n",
        "url = \"http://h/\"\n",
        "ca = \"ca.pem\"\n",
    ))
    .join("\n");
    for expected in [
        "holdfast.toml:2: webhooks[0].name: \"a b\" is not a webhook name",
        "holdfast.toml:3: webhooks[0].url: \"htp://x\" is not a webhook URL",
        "holdfast.toml:4: webhooks[0].events[1]: unknown event \"message.bounced\"",
        "holdfast.toml:5: webhooks[0].topics[0]: \"a/#/b\" is not a topic filter",
        "holdfast.toml:6: webhooks[0].headers.Host: Host is set by the gateway",
        "holdfast.toml:6: webhooks[0].headers.Bad Name: \"Bad Name\" is not a header name",
        "holdfast.toml:6: webhooks[0].headers.X-Ok: a header value must not contain control characters",
        "holdfast.toml:7: webhooks[0].timeout: must be at least 100ms",
        "holdfast.toml:8: webhooks[0].max_retries: must be between 0 and 20, got 100",
        "holdfast.toml:9: webhooks[0].queue_size: must be between 1 and 1000000, got 0",
        "holdfast.toml:10: webhooks[0].pool_size: must be between 1 and 64, got 65",
        "holdfast.toml:11: webhooks[0].payload_encoding: unknown encoding \"hex\"",
        "holdfast.toml:16: webhooks[2].name: webhook name \"b\" is already used by webhooks[1]",
        "holdfast.toml:18: webhooks[3].name: is required",
        "holdfast.toml:18: webhooks[3].url: is required",
        "holdfast.toml:19: webhooks[3].events: must name at least one event",
        "holdfast.toml:23: webhooks[4].ca: a CA is set but the url is http://",
    ] {
        assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
    }
}

#[test]
fn webhooks_can_be_set_from_the_environment() {
    let config = parse(
        "[[webhooks]]\nname = \"h\"\nurl = \"http://127.0.0.1:1/\"\n",
        FILE,
        env(&[("HOLDFAST__WEBHOOKS__0__QUEUE_SIZE", "7")]),
    );
    assert_eq!(config.map(|c| c.webhooks[0].queue_size), Ok(7));
}

#[test]
fn bridge_and_webhook_addresses_share_one_host_and_port_parser() {
    assert_eq!(
        bridges::parse_server("mqtts://[fd00::1]:8884").map(|s| (s.host, s.port)),
        Ok(("fd00::1".to_owned(), 8884))
    );
    assert_eq!(
        webhooks::parse_url("https://[fd00::1]/hook").map(|u| (u.host, u.port)),
        Ok(("fd00::1".to_owned(), 443))
    );
    for bad in ["mqtt://[::1]x", "mqtt://h]:1883", "mqtt://[::1"] {
        assert!(bridges::parse_server(bad).is_err(), "{bad}");
    }
    assert!(webhooks::parse_url("http://[::1]x/").is_err());
}

#[test]
fn overlapping_forward_and_subscribe_need_mqtt5_and_max_packet_size_parses() {
    let base = "[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"sensors/#\", \"cmd/+/x\"]\nsubscribe = [\"cmd/a/#\"]\n";
    let errors = problems(base).join("\n");
    assert!(
        errors.contains("holdfast.toml:5: bridges[0].subscribe: subscribe filter \"cmd/a/#\" overlaps forward filter \"cmd/+/x\""),
        "{errors}"
    );
    // MQTT 5 subscribes with No Local: no echo, so the overlap is allowed.
    let v5 = ok(&format!(
        "{base}protocol = \"5\"\nmax_packet_size = \"128KB\"\n"
    ));
    assert_eq!(v5.bridges[0].max_packet_size, Some(128 * 1024));
    // Disjoint filters are fine under 3.1.1.
    ok("[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"sensors/#\"]\nsubscribe = [\"cmd/#\"]\n");
    let errors = problems("[[bridges]]\nname = \"a\"\nserver = \"mqtt://h\"\nforward = [\"x\"]\nmax_packet_size = \"1B\"\n").join("\n");
    assert!(errors.contains("bridges[0].max_packet_size"), "{errors}");
}

// ---- coap ----

#[test]
fn coap_is_off_by_default_and_an_empty_section_turns_it_on_with_emqx_defaults() {
    assert_eq!(ok("").coap, None);
    let coap = ok("[coap]\n").coap.unwrap();
    assert_eq!(coap, crate::config::CoapConfig::default());
    assert_eq!(coap.bind, addr("0.0.0.0:5683"));
    assert_eq!(coap.heartbeat, Duration::from_secs(30));
    assert_eq!(coap.notify_type, crate::config::NotifyType::Qos);
}

#[test]
fn coap_keys_are_read_and_bad_values_named_with_their_line() {
    let coap = ok("[coap]\nbind = \"127.0.0.1:15683\"\nnotify_type = \"con\"\npublish_qos = \"qos2\"\nmountpoint = \"coap/%c/\"\nmax_body_size = \"64KB\"\n")
        .coap
        .unwrap();
    assert_eq!(coap.bind, addr("127.0.0.1:15683"));
    assert_eq!(coap.notify_type, crate::config::NotifyType::Con);
    assert_eq!(coap.publish_qos, crate::config::CoapQos::Fixed(2));
    assert_eq!(coap.mountpoint, "coap/%c/");
    assert_eq!(coap.max_body_size, 64 * 1024);
    let all = problems_with(
        "[coap]\nmax_block_size = 1000\nnotify_type = \"always\"\nmountpoint = \"a/#\"\nbind = \"nowhere\"\nheartbaet = \"1s\"\n",
        &[],
    );
    assert_eq!(
        all,
        [
            "holdfast.toml:2: coap.max_block_size: must be a power of two (16, 32 ... 1024), got 1000",
            "holdfast.toml:3: coap.notify_type: unknown notify type \"always\" (expected \"qos\", \"non\" or \"con\")",
            "holdfast.toml:4: coap.mountpoint: \"a/#\": a mountpoint is a topic prefix without wildcards and not under '$'",
            "holdfast.toml:5: coap.bind: \"nowhere\" is not an address (expected IP:PORT, e.g. \"0.0.0.0:5683\")",
            "holdfast.toml:6: coap.heartbaet: unknown key (did you mean \"heartbeat\"?)",
        ]
    );
}

/// The example's commented block that starts with `# {header}`, uncommented (its comment
/// lines left out).
fn example_block(header: &str) -> String {
    let mut text = String::new();
    let mut inside = false;
    for line in example_toml().lines() {
        if line == format!("# {header}") {
            inside = true;
        }
        if inside {
            let Some(rest) = line.strip_prefix("# ") else {
                break;
            };
            if !rest.starts_with(' ') {
                text.push_str(rest);
                text.push('\n');
            }
        }
    }
    text
}

#[test]
fn the_example_coap_block_uncommented_gives_the_coap_defaults() {
    let text = example_block("[coap]");
    assert!(text.contains("separate_response_after"), "{text}");
    assert_eq!(ok(&text).coap, Some(crate::config::CoapConfig::default()));
}

#[test]
fn the_example_lwm2m_block_uncommented_gives_the_lwm2m_defaults_and_an_xml_dir() {
    let text = example_block("[lwm2m]");
    assert!(text.contains("auto_observe"), "{text}");
    let l = ok(&text).lwm2m.unwrap();
    assert_eq!(l.xml_dir, Some(PathBuf::from("/etc/holdfast/lwm2m_xml")));
    assert_eq!(
        crate::config::Lwm2mConfig { xml_dir: None, ..l },
        crate::config::Lwm2mConfig::default()
    );
}

#[test]
fn coap_can_be_turned_on_by_an_environment_override() {
    let config = parse("", FILE, env(&[("HOLDFAST__COAP__BIND", "127.0.0.1:5999")]));
    let coap = config.map(|c| c.coap);
    assert_eq!(
        coap.ok().flatten().map(|c| c.bind),
        Some(addr("127.0.0.1:5999"))
    );
}

// ---- lwm2m ----

#[test]
fn lwm2m_is_off_by_default_and_its_keys_are_read_and_checked() {
    assert_eq!(ok("").lwm2m, None);
    assert_eq!(
        ok("[lwm2m]\n").lwm2m,
        Some(crate::config::Lwm2mConfig::default())
    );
    let l = ok("[lwm2m]\nbind = \"127.0.0.1:15783\"\nlifetime_min = \"30s\"\nqmode_time_window = \"5s\"\nxml_dir = \"/etc/holdfast/lwm2m_xml\"\nupdate_msg_publish_condition = \"always\"\n")
        .lwm2m
        .unwrap();
    assert_eq!(l.bind, addr("127.0.0.1:15783"));
    assert_eq!(l.lifetime_min, Duration::from_secs(30));
    assert_eq!(l.qmode_time_window, Duration::from_secs(5));
    assert_eq!(l.xml_dir, Some(PathBuf::from("/etc/holdfast/lwm2m_xml")));
    assert_eq!(
        l.update_msg_publish_condition,
        crate::config::UpdatePublish::Always
    );
    assert_eq!(
        problems("[lwm2m]\nlifetime_min = \"60s\"\nlifetime_max = \"30s\"\nmountpoint = \"lwm2m/\"\n"),
        [
            "holdfast.toml:3: lwm2m.lifetime_max: must not be below lifetime_min",
            "holdfast.toml:4: lwm2m.mountpoint: \"lwm2m/\": a mountpoint is a topic prefix with %e (the endpoint name), without wildcards and not under '$'",
        ]
    );
    let l = ok("[lwm2m]\nmax_block_size = 256\nmax_body_size = \"1MB\"\n")
        .lwm2m
        .unwrap();
    assert_eq!((l.max_block_size, l.max_body_size), (256, 1024 * 1024));
    assert_eq!(
        problems("[lwm2m]\nmax_block_size = 1000\nmax_body_size = 10\n"),
        [
            "holdfast.toml:2: lwm2m.max_block_size: must be a power of two (16, 32 ... 1024), got 1000",
            "holdfast.toml:3: lwm2m.max_body_size: must be between 1KB and 64MB, got 10",
        ]
    );
}

#[test]
fn auto_observe_is_a_boolean_or_a_list_of_paths_the_server_may_observe() {
    use crate::config::AutoObserve;
    let auto = |text: &str| ok(text).lwm2m.unwrap().auto_observe;
    assert_eq!(auto("[lwm2m]\n"), AutoObserve::Off);
    assert_eq!(
        auto("[lwm2m]\nauto_observe = true\n"),
        AutoObserve::Instances
    );
    assert_eq!(
        auto("[lwm2m]\nauto_observe = [\"/3/0/13\", \"3303\", \"/5/0/\", \"/06/01\"]\n"),
        AutoObserve::Paths(vec![
            "/3/0/13".into(),
            "/3303".into(),
            "/5/0".into(),
            "/6/1".into()
        ])
    );
    assert_eq!(
        problems("[lwm2m]\nauto_observe = [\"/3/x\", \"/00/0\", \"/3303\", \"/3303/\", 7]\n"),
        [
            "holdfast.toml:2: lwm2m.auto_observe[0]: \"/3/x\" is not an LwM2M path (/obj[/inst[/res[/ri]]])",
            "holdfast.toml:2: lwm2m.auto_observe[1]: \"/00/0\": the Security object (/0) cannot be observed",
            "holdfast.toml:2: lwm2m.auto_observe[3]: \"/3303/\" is listed twice",
            "holdfast.toml:2: lwm2m.auto_observe[4]: expected a string, found the integer 7",
        ]
    );
    assert_eq!(
        problems("[lwm2m]\nauto_observe = \"yes\"\n"),
        ["holdfast.toml:2: lwm2m.auto_observe: expected true, false or an array of LwM2M paths, found the string \"yes\""]
    );
    let many: Vec<String> = (1..=65).map(|i| format!("\"/{i}\"")).collect();
    assert_eq!(
        problems(&format!("[lwm2m]\nauto_observe = [{}]\n", many.join(", "))),
        ["holdfast.toml:2: lwm2m.auto_observe: 65 paths: at most 64"]
    );
}

#[test]
fn dtls_tables_need_a_psk_file_and_default_to_the_dtls_ports() {
    let coap = ok("[coap]\ndtls = { psk_file = \"/etc/holdfast/psk\" }\n")
        .coap
        .unwrap();
    let d = coap.dtls.unwrap();
    assert_eq!(d.bind, addr("0.0.0.0:5684"));
    assert_eq!(d.psk_file, Some(PathBuf::from("/etc/holdfast/psk")));
    assert_eq!(d.certificates, None);
    assert_eq!(d.identity_hint, "holdfast");
    let l = ok("[lwm2m]\ndtls = { bind = \"127.0.0.1:15784\", psk_file = \"p\" }\n")
        .lwm2m
        .unwrap();
    assert_eq!(l.dtls.unwrap().bind, addr("127.0.0.1:15784"));
    assert_eq!(
        problems("[coap]\ndtls = { bind = \"127.0.0.1:5684\" }\n"),
        ["holdfast.toml:2: coap.dtls.psk_file: is required unless cert, key and client_ca are given, e.g. psk_file = \"/etc/holdfast/psk\" (identity:hexkey lines)"]
    );
    let c = ok("[coap]\ndtls = { cert = \"s.pem\", key = \"s.key\", client_ca = \"ca.pem\" }\n")
        .coap
        .unwrap()
        .dtls
        .unwrap();
    assert_eq!(c.psk_file, None);
    assert_eq!(
        c.certificates.map(|c| (c.cert, c.key, c.client_ca)),
        Some((
            PathBuf::from("s.pem"),
            PathBuf::from("s.key"),
            PathBuf::from("ca.pem")
        ))
    );
    assert_eq!(
        problems("[lwm2m]\ndtls = { psk_file = \"p\", cert = \"s.pem\" }\n"),
        ["holdfast.toml:2: lwm2m.dtls: certificates need cert, key and client_ca together (missing: key, client_ca)"]
    );
}

// ---- modbus ----

const MODBUS_OK: &str = r#"
[modbus]
[[modbus.devices]]
name = "meter1"
transport = "tcp"
address = "127.0.0.1:1502"
interval = "500ms"
points = [
  { name = "voltage", kind = "holding", address = 0, type = "f32", word_order = "little", scale = 0.1, unit = "V" },
  { name = "running", kind = "coil", address = 10, writable = true },
  { name = "alarm", kind = "input", address = 3, type = "bool", bit = 2 },
  { name = "label", kind = "holding", address = 20, type = "string", count = 4 },
]

[[modbus.devices]]
name = "drive"
transport = "rtu"
port = "/dev/ttyS1"
baud = 115200
unit_id = 2
points = [{ name = "speed", kind = "input", address = 0, type = "i32", deadband = 5 }]
"#;

#[test]
fn modbus_devices_read_with_their_defaults() {
    let config = ok(MODBUS_OK);
    let modbus = config.modbus.expect("[modbus]");
    assert_eq!(modbus.topic_prefix, "modbus");
    assert_eq!(modbus.devices.len(), 2);
    let meter = &modbus.devices[0];
    assert_eq!(
        meter.transport,
        ModbusTransport::Tcp(addr("127.0.0.1:1502"))
    );
    assert_eq!(meter.unit_id, 1);
    assert_eq!(meter.interval, Duration::from_millis(500));
    assert_eq!(meter.timeout, Duration::from_secs(1));
    assert_eq!(meter.qos, 1);
    assert_eq!(meter.points.len(), 4);
    assert_eq!(
        meter.points[0].data_type,
        holdfast_modbus::point::DataType::F32
    );
    assert_eq!(
        meter.points[0].word_order,
        holdfast_modbus::point::Order::Little
    );
    assert_eq!(meter.points[0].scale, 0.1);
    assert!(meter.points[1].writable);
    assert_eq!(meter.points[3].count(), 4);
    let drive = &modbus.devices[1];
    let ModbusTransport::Rtu(line) = &drive.transport else {
        panic!("{:?}", drive.transport)
    };
    assert_eq!(
        (line.baud, line.parity, line.data_bits, line.stop_bits),
        (115_200, Parity::Even, 8, 1)
    );
    assert_eq!(drive.points[0].deadband, 5.0);
}

#[test]
fn modbus_map_mistakes_are_reported_at_their_lines() {
    let text = r#"[[modbus.devices]]
name = "m"
address = "127.0.0.1"
points = [
  { name = "a", kind = "holding", address = 0, type = "u32" },
  { name = "b", kind = "holding", address = 1, type = "u16" },
  { name = "c", kind = "coil", address = 0, type = "f32" },
  { name = "d", kind = "holding", address = 9, type = "u32", count = 1 },
  { name = "e", kind = "input", address = 5, writable = true },
  { name = "f", kind = "holding", address = 30, type = "string" },
  { name = "g", kind = "register", address = 40 },
]
"#;
    let found = problems(text);
    let expect = [
        "holdfast.toml:6: modbus.devices[0].points[1]: point \"b\": holding 1..1 overlaps point \"a\" (0..1)",
        "holdfast.toml:7: modbus.devices[0].points[2]: point \"c\": a coil holds one bit",
        "holdfast.toml:8: modbus.devices[0].points[3].count: a u32 takes 2 register(s), not 1",
        "holdfast.toml:9: modbus.devices[0].points[4]: point \"e\": a input cannot be written",
        "holdfast.toml:10: modbus.devices[0].points[5].count: a string needs count",
        "holdfast.toml:11: modbus.devices[0].points[6].kind: unknown kind \"register\"",
    ];
    for e in expect {
        assert!(
            found.iter().any(|p| p.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn devices_on_one_line_must_agree_and_not_share_a_unit_id() {
    let text = r#"[[modbus.devices]]
name = "a"
transport = "rtu"
port = "/dev/ttyS1"
points = [{ name = "x", kind = "input", address = 0 }]

[[modbus.devices]]
name = "b"
transport = "rtu"
port = "/dev/ttyS1"
baud = 9600
unit_id = 2
points = [{ name = "x", kind = "input", address = 0 }]

[[modbus.devices]]
name = "c"
transport = "rtu"
port = "/dev/ttyS1"
points = [{ name = "x", kind = "input", address = 0 }]

[[modbus.devices]]
name = "a"
address = "10.0.0.1:502"
points = [{ name = "x", kind = "input", address = 0 }]
"#;
    let found = problems(text);
    assert!(found[0].starts_with("holdfast.toml:7: modbus.devices[1].port: /dev/ttyS1 is also device \"a\"'s port with other settings"), "{found:#?}");
    assert!(found[1].starts_with("holdfast.toml:15: modbus.devices[2].unit_id: unit id 1 on /dev/ttyS1 is also device \"a\""), "{found:#?}");
    assert!(
        found[2].starts_with(
            "holdfast.toml:21: modbus.devices[3].name: device name \"a\" is used twice"
        ),
        "{found:#?}"
    );
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn modbus_transport_settings_belong_to_their_transport() {
    let found = problems(
        "[[modbus.devices]]\nname = \"a\"\naddress = \"127.0.0.1\"\nbaud = 9600\npoints = [{ name = \"x\", kind = \"input\", address = 0 }]\n",
    );
    assert_eq!(
        found,
        vec![
            "holdfast.toml:4: modbus.devices[0].baud: is a setting of transport = \"rtu\""
                .to_owned()
        ]
    );
    let found = problems(
        "[[modbus.devices]]\nname = \"a/b\"\ntransport = \"rtu\"\nport = \"ttyS1\"\nunit_id = 0\n",
    );
    assert_eq!(found.len(), 4, "{found:#?}");
}

// ---- serial ----

#[test]
fn serial_ports_read_with_their_framings() {
    let config = ok(r#"
[[serial.ports]]
name = "scale"
port = "/dev/ttyUSB0"

[[serial.ports]]
name = "meter"
port = "/dev/ttyUSB1"
baud = 115200
framing = "length"
length_bytes = 4
length_order = "little"

[[serial.ports]]
name = "printer"
port = "/dev/ttyS2"
framing = "idle"
idle_gap = "50ms"
max_frame = "1KB"
"#);
    let serial = config.serial.expect("[serial]");
    assert_eq!(serial.topic_prefix, "serial");
    let scale = &serial.ports[0];
    assert_eq!((scale.line.baud, scale.line.parity), (9600, Parity::None));
    assert_eq!(
        scale.framing,
        crate::serial::framing::Framing::Line {
            delimiter: b"\n".to_vec()
        }
    );
    assert_eq!(
        serial.ports[1].framing,
        crate::serial::framing::Framing::Length {
            prefix: 4,
            big_endian: false
        }
    );
    assert_eq!(serial.ports[2].idle_gap, Duration::from_millis(50));
    assert_eq!(serial.ports[2].max_frame, 1024);
}

#[test]
fn a_port_is_a_raw_line_or_a_modbus_line_not_both() {
    let found = problems(
        r#"[[modbus.devices]]
name = "drive"
transport = "rtu"
port = "/dev/ttyS1"
points = [{ name = "x", kind = "input", address = 0 }]

[[serial.ports]]
name = "raw"
port = "/dev/ttyS1"

[[serial.ports]]
name = "raw"
port = "/dev/ttyS2"
length_bytes = 3
"#,
    );
    assert!(found[0].starts_with("holdfast.toml:7: serial.ports[0].port: /dev/ttyS1 is the Modbus RTU line of device \"drive\""), "{found:#?}");
    assert!(
        found[1].starts_with(
            "holdfast.toml:14: serial.ports[1].length_bytes: does not apply to framing = \"line\""
        ),
        "{found:#?}"
    );
    assert_eq!(found.len(), 2, "{found:#?}");
}

// ---- web ----

#[test]
fn the_web_section_reads_with_its_defaults() {
    let config = ok("[web]\nbind = \"127.0.0.1:18083\"\nlogin_attempts = 3\n");
    let web = config.web.expect("[web]");
    assert!(web.enabled);
    assert_eq!(web.bind, addr("127.0.0.1:18083"));
    assert_eq!(web.login_attempts, 3);
    assert_eq!(web.max_connections, 64);
    assert_eq!(web.session_idle, Duration::from_secs(1800));
    assert!(ok("").web.is_none(), "off until the section is present");
}

#[test]
fn web_allowed_hosts_are_host_names() {
    assert_eq!(
        problem("[web]\nallowed_hosts = [\"gw.example\", \"bad host\"]\n"),
        "holdfast.toml:2: web.allowed_hosts[1]: \"bad host\" is not a host name (letters, digits, '-' and '.')"
    );
    let cfg = ok("[web]\nallowed_hosts = [\"GW.Example\"]\n");
    assert_eq!(
        cfg.web.map(|w| w.allowed_hosts),
        Some(vec!["gw.example".to_owned()])
    );
}
