//! The security review's findings (issue "Security hardening"), each reproduced against the
//! built gateway with a bare MQTT 5 client: what an unauthenticated or unprivileged client could
//! get that it must not.

use holdfast_tests::raw5::Raw;
use holdfast_tests::{free_port, password_file, Gateway, TempDir};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Filter, Login, Packet, Publish,
    Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Connects with an empty client id and a session expiry; returns the id the gateway assigned.
fn assigned_id(port: u16) -> (Raw, String, bool) {
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    let (raw, ack) = Raw::connect(port, "", true, props, None);
    assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
    let id = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .unwrap_or_else(|| panic!("no assigned client identifier"));
    (raw, id, ack.session_present)
}

#[test]
fn assigned_client_ids_never_repeat_after_a_restart() {
    let mut gw = Gateway::start();
    // Bob's device gets an id, subscribes, leaves; a command is queued for it.
    let (mut bob, bob_id, _) = assigned_id(gw.port);
    bob.subscribe_one("users/bob/cmd", QoS::AtLeastOnce);
    bob.disconnect();
    let mut p = Publish::new("users/bob/cmd", QoS::AtLeastOnce, "unlock", None);
    p.pkid = 1;
    Raw::connected(gw.port, "ops").publish_qos1(p);
    std::thread::sleep(Duration::from_millis(1200));
    gw.restart();
    // A stranger with an empty id after the restart: a fresh id, no session, nothing queued.
    let (mut stranger, id, present) = assigned_id(gw.port);
    assert_ne!(id, bob_id, "the restart handed out bob's id again");
    assert!(!present, "the stranger got a session");
    assert!(stranger.next_publish(Duration::from_millis(500)).is_none());
    // 128 random bits, not a counter.
    let hex = id.rsplit('-').next().unwrap_or_default();
    assert!(
        hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    // Bob's session is still his.
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    let (mut bob, ack) = Raw::connect(gw.port, &bob_id, false, props, None);
    assert!(ack.session_present);
    match bob.expect(WAIT) {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"unlock"),
        other => panic!("expected bob's command, got {other:?}"),
    }
}

/// A gateway with a password file (bob, alice, ops; password "pw"), this ACL (`acl_nomatch =
/// "deny"`) and anonymous access as given. Returns it with the directory holding its files.
fn gateway_with(acl: &str, anonymous: bool) -> (Gateway, TempDir) {
    let dir = TempDir::new("security");
    let passwd = password_file(dir.path(), &[("bob", "pw"), ("alice", "pw"), ("ops", "pw")]);
    let acl_path = dir.path().join("acl.toml");
    std::fs::write(&acl_path, acl).expect("write the ACL");
    let port = free_port();
    let config = format!(
        "[node]\nname = \"gw-test\"\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
         [auth]\nallow_anonymous = {anonymous}\npassword_file = {:?}\nacl_file = {:?}\nacl_nomatch = \"deny\"\n",
        passwd.display().to_string(),
        acl_path.display().to_string()
    );
    (Gateway::start_config(&config, port), dir)
}

fn rule(permission: &str, user: &str, action: &str, topic: &str) -> String {
    format!(
        "[[rules]]\npermission = \"{permission}\"\nwho = {{ user = \"{user}\" }}\naction = \"{action}\"\ntopics = [\"{topic}\"]\n\n"
    )
}

/// A v5 CONNECT with a session expiry of an hour and optional credentials.
fn login(
    port: u16,
    client_id: &str,
    clean_start: bool,
    user: Option<(&str, &str)>,
) -> (Raw, ConnAck) {
    let mut raw = Raw::open(port);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    raw.send(Packet::Connect(
        Connect {
            keep_alive: 60,
            client_id: client_id.to_owned(),
            clean_start,
            properties: Some(props),
        },
        None,
        user.map(|(u, p)| Login::new(u, p)),
    ));
    match raw.expect(WAIT) {
        Packet::ConnAck(ack) => (raw, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn suback(raw: &mut Raw, filter: &str) -> SubscribeReasonCode {
    raw.send(Packet::Subscribe(Subscribe {
        pkid: 7,
        filters: vec![Filter::new(filter, QoS::AtLeastOnce)],
        properties: None,
    }));
    match raw.expect(WAIT) {
        Packet::SubAck(ack) => ack.return_codes[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish_as_ops(port: u16, topic: &str, payload: &str) {
    let (mut ops, ack) = login(port, "ops", true, Some(("ops", "pw")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_owned(), None);
    p.pkid = 1;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let reason = ops.publish_qos1(p);
    assert!(
        matches!(
            reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "{reason:?}"
    );
}

fn acl_for_bob_and_alice() -> String {
    [
        rule("allow", "bob", "subscribe", "users/bob/#"),
        rule("allow", "alice", "subscribe", "users/alice/#"),
        rule("allow", "ops", "publish", "users/#"),
    ]
    .concat()
}

#[test]
fn a_persistent_session_cannot_be_taken_over_by_another_user_who_knows_its_client_id() {
    let (gw, _dir) = gateway_with(&acl_for_bob_and_alice(), false);
    let (mut bob, ack) = login(gw.port, "bob-sensor", true, Some(("bob", "pw")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(matches!(
        suback(&mut bob, "users/bob/#"),
        SubscribeReasonCode::Success(_)
    ));
    bob.disconnect();
    publish_as_ops(gw.port, "users/bob/cmd", "unlock");
    // Alice's own SUBSCRIBE to bob's topics is denied; resuming bob's session must be too.
    let (mut alice, ack) = login(gw.port, "alice-phone", true, Some(("alice", "pw")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!matches!(
        suback(&mut alice, "users/bob/#"),
        SubscribeReasonCode::Success(_)
    ));
    for clean_start in [false, true] {
        let (mut thief, ack) = login(gw.port, "bob-sensor", clean_start, Some(("alice", "pw")));
        assert_eq!(
            ack.code,
            ConnectReturnCode::NotAuthorized,
            "clean_start {clean_start}"
        );
        assert!(!matches!(
            thief.read(Duration::from_millis(300)),
            Ok(Packet::Publish(_))
        ));
    }
    // Bob's session and his command are intact.
    let (mut bob, ack) = login(gw.port, "bob-sensor", false, Some(("bob", "pw")));
    assert!(ack.session_present);
    let p = bob.next_publish(WAIT).expect("bob's command");
    assert_eq!(&p.payload[..], b"unlock");
}

#[test]
fn an_unverified_user_name_drives_no_user_rule() {
    // Anonymous access is on; "dashboard" is not in the password file, so whoever claims it
    // is just anonymous.
    let acl = [
        rule("allow", "dashboard", "subscribe", "users/#"),
        rule("allow", "ops", "publish", "users/#"),
    ]
    .concat();
    let (gw, _dir) = gateway_with(&acl, true);
    let (mut claimer, ack) = login(gw.port, "device-7", true, Some(("dashboard", "")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!matches!(
        suback(&mut claimer, "users/bob/#"),
        SubscribeReasonCode::Success(_)
    ));
}

#[test]
fn a_resumed_session_keeps_only_the_subscriptions_the_acl_still_allows() {
    let (gw, dir) = gateway_with(&acl_for_bob_and_alice(), false);
    let (mut bob, _) = login(gw.port, "bob-sensor", true, Some(("bob", "pw")));
    assert!(matches!(
        suback(&mut bob, "users/bob/#"),
        SubscribeReasonCode::Success(_)
    ));
    bob.disconnect();
    // The ACL no longer lets bob read there (reloaded with SIGHUP while he is away).
    let acl = [rule("allow", "ops", "publish", "users/#")].concat();
    std::fs::write(dir.path().join("acl.toml"), acl).expect("rewrite the ACL");
    let pid = gw.pid().expect("running");
    nix_sighup(pid);
    assert!(gw.wait_for_log("reload", WAIT), "{}", gw.log());
    let (mut bob, ack) = login(gw.port, "bob-sensor", false, Some(("bob", "pw")));
    assert!(ack.session_present);
    publish_as_ops(gw.port, "users/bob/cmd", "after");
    assert!(
        bob.next_publish(Duration::from_millis(800)).is_none(),
        "a restored subscription the ACL denies still delivered"
    );
    assert!(
        gw.wait_for_log("restored subscription denied by the ACL", WAIT),
        "{}",
        gw.log()
    );
}

fn nix_sighup(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
}

#[test]
fn a_login_flood_neither_starves_a_real_login_nor_eats_memory() {
    let dir = TempDir::new("flood");
    let passwd = password_file(dir.path(), &[("alice", "pw")]);
    let port = free_port();
    let config = format!(
        "[node]\nname = \"gw-test\"\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
         [auth]\nallow_anonymous = false\npassword_file = {:?}\nmax_login_failures = 0\n",
        passwd.display().to_string()
    );
    // The failed-login limit is off here: this measures the check workers alone.
    let gw = Gateway::start_config(&config, port);
    let rss_before = gw.rss_kib().expect("rss");
    let connect = move |id: &str, password: &str| {
        let mut raw = Raw::open(port);
        raw.send(Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: id.to_owned(),
                clean_start: true,
                properties: None,
            },
            None,
            Some(Login::new("alice", password)),
        ));
        raw
    };
    // 400 logins that hang up at once: none of them may cost an argon2 run later.
    for i in 0..400 {
        drop(connect(&format!("ghost-{i}"), "wrong"));
    }
    // 50 wrong passwords that wait for their answer, 10 at a time.
    let threads: Vec<_> = (0..10)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..5 {
                    let mut raw = connect(&format!("guess-{t}-{i}"), "wrong");
                    match raw.read(Duration::from_secs(15)) {
                        Ok(Packet::ConnAck(a)) => assert_ne!(a.code, ConnectReturnCode::Success),
                        other => panic!("expected a refusing CONNACK, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    // The real user gets in while that goes on (a busy refusal says "try again").
    let mut admitted = false;
    for _ in 0..40 {
        let mut raw = connect("alice-1", "pw");
        match raw.read(WAIT) {
            Ok(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => {
                admitted = true;
                break;
            }
            Ok(Packet::ConnAck(a)) if a.code == ConnectReturnCode::ServerBusy => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("alice: {other:?}"),
        }
    }
    assert!(admitted, "the real login never got through");
    for t in threads {
        t.join().expect("guessers");
    }
    // Two check workers keep one argon2 buffer (~19 MiB) each; nothing else stays.
    let rss_after = gw.rss_kib().expect("rss");
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    println!("RSS {rss_before} -> {rss_after} KiB after 450 failed logins");
    assert!(
        grown_mib < 80,
        "RSS grew by {grown_mib} MiB ({rss_before} -> {rss_after} KiB)"
    );
    let log = gw.log();
    let checked = log.matches("bad username or password").count();
    assert!(
        checked <= 60,
        "{checked} password checks ran: the 400 clients that hung up were checked too"
    );
}

#[test]
fn a_client_id_with_wildcards_cannot_shape_sys_topics() {
    let gw = Gateway::start();
    let sub = holdfast_tests::MosquittoSub::start(
        gw.port,
        "$SYS/brokers/gw-test/clients/+/connected",
        &["-v"],
    );
    let _evil = Raw::connected(gw.port, "evil/#");
    let got = sub.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("$SYS/brokers/gw-test/clients/evil%2F%23/connected "),
        "{got:?}"
    );
    assert!(got[0].contains("\"clientid\":\"evil/#\""), "{got:?}");
}

#[test]
fn the_state_directory_and_everything_in_it_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("private");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port();
    let config = format!(
        "[node]\nname = \"gw-test\"\ndata_dir = {:?}\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n[auth]\nallow_anonymous = true\n",
        data.display().to_string()
    );
    let gw = Gateway::start_config_keeping_data_dir(&config, port);
    // A persistent session with a queued message, so the session store has written.
    let (mut s, _) = Raw::connect_with_expiry(port, "keeper", true, 3600);
    s.subscribe_one("k", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = Publish::new("k", QoS::AtLeastOnce, "kept", None);
    p.pkid = 1;
    Raw::connected(port, "pub").publish_qos1(p);
    std::thread::sleep(Duration::from_millis(1200));
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        seen += 1;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("entry").path());
            }
        }
    }
    assert!(seen > 3, "only {seen} entries under the data dir");
    drop(gw);
}

#[test]
fn a_wildcard_subscription_does_not_get_around_a_deny_rule() {
    let acl = "[[rules]]\npermission = \"deny\"\nwho = { all = true }\naction = \"subscribe\"\ntopics = [\"secret/#\"]\n";
    let dir = TempDir::new("wildcard");
    let acl_path = dir.path().join("acl.toml");
    std::fs::write(&acl_path, acl).expect("write the ACL");
    let port = free_port();
    let config = format!(
        "[node]\nname = \"gw-test\"\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
         [auth]\nallow_anonymous = true\nacl_file = {:?}\nacl_nomatch = \"allow\"\n",
        acl_path.display().to_string()
    );
    let gw = Gateway::start_config(&config, port);
    let mut spy = Raw::connected(gw.port, "spy");
    for filter in ["#", "+/+", "secret/#"] {
        assert!(
            !matches!(suback(&mut spy, filter), SubscribeReasonCode::Success(_)),
            "{filter} was granted"
        );
    }
    assert!(matches!(
        suback(&mut spy, "sensors/#"),
        SubscribeReasonCode::Success(_)
    ));
    let mut p = Publish::new("secret/plans", QoS::AtLeastOnce, "plans", None);
    p.pkid = 1;
    Raw::connected(gw.port, "leaker").publish_qos1(p);
    assert!(spy.next_publish(Duration::from_millis(500)).is_none());
}

#[test]
fn a_reload_disconnects_removed_users_and_drops_subscriptions_the_acl_now_denies() {
    let acl = [
        rule("allow", "alice", "subscribe", "users/alice/#"),
        rule("allow", "alice", "subscribe", "shared/#"),
        rule("allow", "ops", "publish", "#"),
    ]
    .concat();
    let (gw, dir) = gateway_with(&acl, false);
    let (mut alice, ack) = login(gw.port, "alice-1", true, Some(("alice", "pw")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(matches!(
        suback(&mut alice, "shared/#"),
        SubscribeReasonCode::Success(_)
    ));
    let (mut bob, ack) = login(gw.port, "bob-1", true, Some(("bob", "pw")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    // The operator takes shared/# away from alice and removes bob.
    let acl = [
        rule("allow", "alice", "subscribe", "users/alice/#"),
        rule("allow", "ops", "publish", "#"),
    ]
    .concat();
    std::fs::write(dir.path().join("acl.toml"), acl).expect("rewrite the ACL");
    let (ok, _, err) = holdfast_tests::run_with_timeout(
        std::process::Command::new(holdfast_tests::holdfast_bin())
            .args(["passwd", "remove", "bob", "--file"])
            .arg(dir.path().join("passwd")),
        WAIT,
    );
    assert!(ok, "{err}");
    nix_sighup(gw.pid().expect("running"));
    // Panics if bob's connection stays open; v5 hears DISCONNECT 0x98 (administrative action).
    assert_eq!(
        bob.closed_within(WAIT),
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::AdministrativeAction)
    );
    assert!(
        gw.wait_for_log("user removed from the password file", WAIT),
        "{}",
        gw.log()
    );
    assert!(
        gw.wait_for_log("subscription denied by the reloaded ACL", WAIT),
        "{}",
        gw.log()
    );
    publish_as_ops(gw.port, "shared/x", "for alice?");
    assert!(
        alice.next_publish(Duration::from_millis(500)).is_none(),
        "the reloaded ACL did not apply to alice's subscription"
    );
}

#[test]
fn repeated_wrong_passwords_lock_that_user_from_that_address_only() {
    let dir = TempDir::new("lockout");
    let passwd = password_file(dir.path(), &[("alice", "pw"), ("bob", "pw")]);
    let port = free_port();
    let config = format!(
        "[node]\nname = \"gw-test\"\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
         [auth]\nallow_anonymous = false\npassword_file = {:?}\nmax_login_failures = 3\nlogin_failure_window = \"2s\"\n",
        passwd.display().to_string()
    );
    let gw = Gateway::start_config(&config, port);
    let attempt = |user: &str, password: &str| {
        let (_raw, ack) = login(port, &format!("{user}-dev"), true, Some((user, password)));
        ack.code
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("alice", "guess"),
            ConnectReturnCode::BadUserNamePassword
        );
    }
    // Locked: even the right password is refused, without a check, for the window.
    assert_eq!(
        attempt("alice", "pw"),
        ConnectReturnCode::BadUserNamePassword
    );
    assert!(gw.log().contains("too many failed logins"), "{}", gw.log());
    // Bob, from the same address, is not affected.
    assert_eq!(attempt("bob", "pw"), ConnectReturnCode::Success);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(attempt("alice", "pw"), ConnectReturnCode::Success);
}

#[test]
fn check_reads_the_tls_files_and_warns_of_a_certificate_about_to_expire() {
    let dir = TempDir::new("tlscheck");
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let (ok, _, err) = holdfast_tests::run_with_timeout(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=gw",
                "-days",
                "10",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        WAIT,
    );
    assert!(ok, "openssl: {err}");
    let config = |key: &std::path::Path| {
        let path = dir.path().join("holdfast.toml");
        std::fs::write(
            &path,
            format!(
                "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\ntls = {{ cert = {:?}, key = {:?} }}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        )
        .expect("write config");
        holdfast_tests::run_with_timeout(
            std::process::Command::new(holdfast_tests::holdfast_bin())
                .arg("check")
                .arg("--config")
                .arg(&path),
            WAIT,
        )
    };
    let (ok, out, err) = config(&key);
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("listener tls:") && err.contains("expires in "),
        "{err}"
    );
    let (ok, _, err) = config(&dir.path().join("missing.key"));
    assert!(!ok, "a missing key passed the check");
    assert!(err.contains("missing.key"), "{err}");
}

#[test]
fn a_client_certificate_the_crl_revokes_is_refused() {
    use holdfast_tests::pki::make_pki;
    let dir = TempDir::new("crl");
    let pki = make_pki(dir.path());
    // Revoke the client certificate and publish the CA's CRL.
    std::fs::write(
        dir.path().join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n",
    )
    .expect("ca.cnf");
    std::fs::write(dir.path().join("index.txt"), "").expect("index");
    std::fs::write(dir.path().join("crlnumber"), "01\n").expect("crlnumber");
    let openssl = |args: &[&str]| {
        let (ok, out, err) = holdfast_tests::run_with_timeout(
            std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args),
            WAIT,
        );
        assert!(ok, "openssl {args:?}: {out}{err}");
    };
    let ca_args = [
        "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
    ];
    openssl(&[&ca_args[..], &["-revoke", "client.pem"]].concat());
    openssl(&[&ca_args[..], &["-gencrl", "-out", "crl.pem"]].concat());
    let (tls_crl, tls_plain, tcp) = (free_port(), free_port(), free_port());
    let table = |crl: bool| {
        format!(
            "tls = {{ cert = {:?}, key = {:?}, ca = {:?}, verify_peer = true, fail_if_no_peer_cert = true{} }}",
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
            pki.ca.display().to_string(),
            if crl {
                format!(", crl = {:?}", dir.path().join("crl.pem").display().to_string())
            } else {
                String::new()
            }
        )
    };
    let config = format!(
        "[node]\nname = \"gw-test\"\n\
         [[listeners]]\nkind = \"tls\"\nname = \"with-crl\"\nbind = \"127.0.0.1:{tls_crl}\"\n{}\n\
         [[listeners]]\nkind = \"tls\"\nname = \"no-crl\"\nbind = \"127.0.0.1:{tls_plain}\"\n{}\n\
         [[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{tcp}\"\n\
         [auth]\nallow_anonymous = true\n",
        table(true),
        table(false)
    );
    let _gw = Gateway::start_config(&config, tcp);
    let publish = |port: u16| {
        let ca = pki.ca.display().to_string();
        let cert = pki.client_cert.display().to_string();
        let key = pki.client_key.display().to_string();
        holdfast_tests::mosquitto_pub(
            port,
            "t",
            "x",
            &["--cafile", &ca, "--cert", &cert, "--key", &key],
        )
    };
    assert!(
        publish(tls_plain),
        "the certificate works where no CRL is set"
    );
    assert!(!publish(tls_crl), "a revoked certificate was accepted");
}

/// Many sessions with long filters (each within `max_subscriptions`) must not take the board's
/// memory and flash: topics and filters are capped in bytes, and every session's subscriptions
/// together are capped by `max_subscription_bytes_total`.
#[test]
fn long_topics_are_refused_and_all_subscriptions_together_are_bounded_in_bytes() {
    use rumqttc::v5::mqttbytes::v5::{PubAckReason, Unsubscribe};
    let gw = Gateway::start_with_mqtt("max_subscription_bytes_total = \"64KB\"\n");
    // The default max_topic_len (4096): a longer topic name or filter is refused.
    let long = format!("t/{}", "x".repeat(4100));
    let mut raw = Raw::connected(gw.port, "long-topics");
    assert_eq!(
        suback(&mut raw, &long),
        SubscribeReasonCode::TopicFilterInvalid
    );
    let mut p = Publish::new(long.as_str(), QoS::AtLeastOnce, "x", None);
    p.pkid = 1;
    assert_eq!(raw.publish_qos1(p), PubAckReason::TopicNameInvalid);
    // 4000-byte filters count 4064 bytes each: 16 fit in 64 KiB across any number of
    // sessions; the 17th is refused with quota exceeded, whoever asks.
    let filter = |s: usize, n: usize| format!("f/{s}/{n}/{}", "y".repeat(3994));
    let mut codes = Vec::new();
    let mut sessions = Vec::new();
    for s in 0..6 {
        let (mut c, ack) = login(gw.port, &format!("filler-{s}"), true, None);
        assert_eq!(ack.code, ConnectReturnCode::Success);
        for n in 0..3 {
            assert_eq!(filter(s, n).len(), 4000);
            codes.push(suback(&mut c, &filter(s, n)));
        }
        sessions.push(c);
    }
    let granted = codes
        .iter()
        .filter(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .count();
    assert_eq!(granted, 16, "{codes:?}");
    assert_eq!(codes[16..], [SubscribeReasonCode::QuotaExceeded; 2]);
    // Room comes back when a subscription goes.
    sessions[0].send(Packet::Unsubscribe(Unsubscribe {
        pkid: 9,
        filters: vec![filter(0, 0)],
        properties: None,
    }));
    assert!(matches!(sessions[0].expect(WAIT), Packet::UnsubAck(_)));
    assert!(matches!(
        suback(&mut sessions[5], &filter(5, 2)),
        SubscribeReasonCode::Success(_)
    ));
}
