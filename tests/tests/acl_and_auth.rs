//! Authorization (the ACL file) and the authentication chain (password file, client-id
//! allowlist, JWT), black-box: the built gateway, mosquitto clients for MQTT 3.1.1 and a bare
//! MQTT 5 client for exact reason codes; SIGHUP reloads while clients stay connected.

use holdfast_tests::pki::{make_key_pair, KeyKind};
use holdfast_tests::raw5::Raw;
use holdfast_tests::{free_port, holdfast_bin, mosquitto_pub, run_with_timeout, Gateway};
use holdfast_tests::{MosquittoSub, TempDir};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Filter, LastWill, Login, Packet,
    PubAckReason, Publish, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway config with an `[auth]` section of our own (and `$SYS` every second).
fn config(port: u16, auth: &str) -> String {
    format!(
        r#"
[node]
name = "gw-test"

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
{auth}
"#
    )
}

/// Starts a gateway whose ACL file holds `acl`; returns the gateway, the file (rewrite it and
/// SIGHUP to reload) and the directory that keeps it.
/// Anonymous access is on; observer, alice and bob (password "pw") are verified users: only a
/// verified user name drives `user` rules.
fn with_acl(acl: &str, nomatch: &str) -> (Gateway, PathBuf, TempDir) {
    let dir = TempDir::new("acl");
    let path = dir.path().join("acl.toml");
    std::fs::write(&path, acl).expect("write acl");
    let passwd = holdfast_tests::password_file(
        dir.path(),
        &[("observer", "pw"), ("alice", "pw"), ("bob", "pw")],
    );
    let port = free_port();
    let gw = Gateway::start_config(
        &config(
            port,
            &format!(
                "allow_anonymous = true\nacl_file = {:?}\nacl_nomatch = {nomatch:?}\npassword_file = {:?}\n",
                path.display().to_string(),
                passwd.display().to_string()
            ),
        ),
        port,
    );
    (gw, path, dir)
}

fn rule(permission: &str, who: &str, action: &str, topics: &str) -> String {
    format!("[[rules]]\npermission = \"{permission}\"\nwho = {who}\naction = \"{action}\"\ntopics = {topics}\n\n")
}

fn sighup(gw: &Gateway) {
    let pid = gw.pid().expect("gateway running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// Counts `needle` in the log, to wait for the next occurrence after an action.
fn occurrences(gw: &Gateway, needle: &str) -> usize {
    gw.log().matches(needle).count()
}

fn wait_for_occurrences(gw: &Gateway, needle: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if occurrences(gw, needle) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("log never had {n} x {needle:?}:\n{}", gw.log());
}

/// SUBSCRIBE one filter per entry on a bare v5 connection; returns the SUBACK codes.
fn suback(raw: &mut Raw, pkid: u16, filters: &[&str]) -> Vec<SubscribeReasonCode> {
    raw.send(Packet::Subscribe(Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|f| Filter::new(*f, QoS::AtLeastOnce))
            .collect(),
        properties: None,
    }));
    loop {
        match raw.expect(WAIT) {
            Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, pkid);
                return ack.return_codes;
            }
            Packet::Publish(_) | Packet::PingResp(_) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// A bare v5 CONNECT with optional credentials; returns the socket and the CONNACK.
fn connect_v5(port: u16, client_id: &str, login: Option<(&str, &str)>) -> (Raw, ConnAck) {
    let mut raw = Raw::open(port);
    raw.send(Packet::Connect(
        Connect {
            keep_alive: 60,
            client_id: client_id.to_owned(),
            clean_start: true,
            properties: Some(ConnectProperties::new()),
        },
        None,
        login.map(|(u, p)| Login::new(u, p)),
    ));
    match raw.expect(WAIT) {
        Packet::ConnAck(ack) => (raw, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// mosquitto_pub (MQTT 3.1.1) with extra args; returns (exit ok, stderr).
fn pub_311(port: u16, args: &[&str]) -> (bool, String) {
    let port = port.to_string();
    let (ok, _, err) = run_with_timeout(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-m", "x"])
            .args(args),
        WAIT,
    );
    (ok, err)
}

const OBSERVER: &str = "{ user = \"observer\" }";

#[test]
fn acl_rules_decide_publishes_by_user_client_id_ip_and_client_id_placeholder() {
    let acl = [
        rule("allow", OBSERVER, "subscribe", "[\"#\"]"),
        rule("deny", "{ clientid = \"blocked\" }", "all", "[\"#\"]"),
        rule("allow", "{ user = \"alice\" }", "publish", "[\"alice/#\"]"),
        rule("allow", "{ user = \"carol\" }", "publish", "[\"carol/#\"]"),
        rule("deny", "{ ipaddr = \"10.0.0.0/8\" }", "all", "[\"#\"]"),
        rule(
            "allow",
            "{ ipaddr = \"127.0.0.1/32\" }",
            "publish",
            "[\"local/#\"]",
        ),
        rule(
            "deny",
            "{ ipaddr = \"127.0.0.0/8\" }",
            "publish",
            "[\"nolocal/#\"]",
        ),
        rule(
            "allow",
            "{ all = true }",
            "publish",
            "[\"devices/%c/#\", \"nolocal/#\"]",
        ),
    ]
    .concat();
    let (gw, _acl, _dir) = with_acl(&acl, "deny");
    let sub = MosquittoSub::start(gw.port, "#", &["-u", "observer", "-P", "pw", "-v"]);
    let attempts: &[(&[&str], &str, bool)] = &[
        (&["-u", "alice", "-P", "pw"], "alice/1", true),
        (&["-u", "bob", "-P", "pw"], "alice/2", false),
        (
            &["-u", "alice", "-P", "pw", "-i", "blocked"],
            "alice/3",
            false,
        ),
        // A user name nobody verified (carol is not in the password file) is no user:
        // anonymous gets in, carol's rule does not apply.
        (&["-u", "carol"], "carol/9", false),
        (&[], "local/4", true),
        (&[], "nolocal/5", false),
        (&["-i", "c1"], "devices/c1/6", true),
        (&["-i", "c2"], "devices/c1/7", false),
        (&["-i", "c2"], "other/8", false),
    ];
    for (args, topic, _) in attempts {
        assert!(
            mosquitto_pub(gw.port, topic, topic, args),
            "a 3.1.1 publisher is acknowledged even when denied"
        );
    }
    // A last allowed message marks the end: everything before it has been routed.
    assert!(mosquitto_pub(gw.port, "local/end", "local/end", &[]));
    let got = sub.wait_for(4, WAIT);
    let expected: Vec<String> = attempts
        .iter()
        .filter(|a| a.2)
        .map(|a| format!("{} {}", a.1, a.1))
        .chain(["local/end local/end".to_owned()])
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn denied_subscriptions_get_suback_0x87_in_v5_and_0x80_in_3_1_1_and_eq_is_exact() {
    let acl = [
        rule(
            "deny",
            "{ all = true }",
            "subscribe",
            "[\"eq #\", \"secret/+\"]",
        ),
        rule(
            "allow",
            "{ all = true }",
            "subscribe",
            "[\"eq sensors/#\", \"public/#\", \"secret/#\"]",
        ),
        rule("allow", "{ all = true }", "publish", "[\"#\"]"),
    ]
    .concat();
    let (gw, _acl, _dir) = with_acl(&acl, "deny");
    let mut raw = Raw::connected(gw.port, "v5-sub");
    use SubscribeReasonCode::{NotAuthorized, Success};
    assert_eq!(
        suback(
            &mut raw,
            1,
            &[
                "sensors/#",
                "sensors/+",
                "#",
                "public/a/+",
                "secret/x",
                "secret/x/y",
                "$share/g/public/b"
            ]
        ),
        [
            Success(QoS::AtLeastOnce),
            NotAuthorized,
            NotAuthorized,
            Success(QoS::AtLeastOnce),
            NotAuthorized,
            Success(QoS::AtLeastOnce),
            Success(QoS::AtLeastOnce),
        ]
    );
    // The granted ones work, the refused ones were not subscribed.
    for topic in ["public/a/b", "secret/x", "sensors/t"] {
        assert!(mosquitto_pub(gw.port, topic, "m", &[]));
    }
    let got = raw.publishes(3, Duration::from_secs(2));
    let topics: Vec<_> = got.iter().map(|p| p.topic.clone()).collect();
    assert_eq!(topics, [&b"public/a/b"[..], &b"sensors/t"[..]]);

    // MQTT 3.1.1: the failure code is 0x80 (128).
    let port = gw.port.to_string();
    let (_, out, err) = run_with_timeout(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "secret/x",
            "-t",
            "public/x",
            "-d",
            "-W",
            "2",
        ]),
        WAIT,
    );
    let all = format!("{out}{err}");
    assert!(all.contains("Subscribed (mid: 1): 128, 0"), "{all}");
}

#[test]
fn a_denied_publish_is_dropped_counted_and_v5_qos1_gets_puback_0x87() {
    let acl = [
        rule(
            "allow",
            "{ all = true }",
            "subscribe",
            "[\"#\", \"$SYS/#\"]",
        ),
        rule("deny", "{ all = true }", "publish", "[\"forbidden/#\"]"),
    ]
    .concat();
    // nomatch allow: everything the rules do not mention goes through.
    let (gw, _acl, _dir) = with_acl(&acl, "allow");
    let mut sub = Raw::connected(gw.port, "watcher");
    let _ = suback(&mut sub, 1, &["forbidden/#", "open/#"]);
    let mut raw = Raw::connected(gw.port, "v5-pub");
    let mut p = Publish::new("forbidden/a", QoS::AtLeastOnce, "no", None);
    p.pkid = 1;
    assert_eq!(raw.publish_qos1(p), PubAckReason::NotAuthorized);
    let mut p = Publish::new("open/a", QoS::AtLeastOnce, "yes", None);
    p.pkid = 2;
    assert_eq!(raw.publish_qos1(p), PubAckReason::Success);
    // 3.1.1 QoS 1: acknowledged normally (as EMQX does), and dropped all the same.
    assert!(mosquitto_pub(gw.port, "forbidden/b", "no", &["-q", "1"]));
    assert!(mosquitto_pub(gw.port, "forbidden/c", "no", &[]));
    let got = sub.publishes(2, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].topic[..], b"open/a");

    // A will is a later publish: a CONNECT whose will topic the ACL denies is refused (EMQX).
    let will = LastWill::new("forbidden/will", "bye", QoS::AtMostOnce, false, None);
    let (_, ack) = Raw::connect(
        gw.port,
        "willer",
        true,
        ConnectProperties::new(),
        Some(will),
    );
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);

    let counter = "$SYS/brokers/gw-test/stats/messages/dropped/not_authorized";
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut stats = Raw::connected(gw.port, &format!("stats-{}", last.len()));
        let _ = suback(&mut stats, 1, &[counter]);
        if let Some(p) = stats.next_publish(Duration::from_secs(3)) {
            last = String::from_utf8_lossy(&p.payload).into_owned();
            if last == "3" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{counter} never reached 3 (last {last:?})");
}

#[test]
fn sighup_reloads_the_acl_for_a_connected_client_and_a_broken_file_keeps_the_old_rules() {
    let (gw, configured, _dir) = with_acl(
        &rule("allow", "{ all = true }", "subscribe", "[\"a/#\"]"),
        "deny",
    );
    let mut raw = Raw::connected(gw.port, "stays");
    use SubscribeReasonCode::{NotAuthorized, Success};
    assert_eq!(
        suback(&mut raw, 1, &["a/1", "b/1"]),
        [Success(QoS::AtLeastOnce), NotAuthorized]
    );

    std::fs::write(
        &configured,
        rule("allow", "{ all = true }", "subscribe", "[\"b/#\"]"),
    )
    .unwrap();
    let reloaded = occurrences(&gw, "reloaded the ACL file");
    sighup(&gw);
    wait_for_occurrences(&gw, "reloaded the ACL file", reloaded + 1);
    assert_eq!(
        suback(&mut raw, 2, &["a/2", "b/2"]),
        [NotAuthorized, Success(QoS::AtLeastOnce)]
    );

    std::fs::write(
        &configured,
        "[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"subscrbe\"\ntopics = [\"a/#\"]\n",
    )
    .unwrap();
    let failed = occurrences(&gw, "reload of the ACL file failed");
    sighup(&gw);
    wait_for_occurrences(&gw, "reload of the ACL file failed", failed + 1);
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("reload of the ACL file failed"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "{}:4: action: \"subscrbe\" is not publish, subscribe or all",
            configured.display()
        )),
        "{line}"
    );
    // The old rules hold, and the client never noticed.
    assert_eq!(
        suback(&mut raw, 3, &["a/3", "b/3"]),
        [NotAuthorized, Success(QoS::AtLeastOnce)]
    );
    assert!(
        !gw.log().contains("client_id=stays reason="),
        "the client was disconnected"
    );
}

/// `holdfast passwd add USER --file FILE` with the password on stdin.
fn passwd_add(file: &Path, user: &str, password: &str) {
    let mut child = Command::new(holdfast_bin())
        .args(["passwd", "add", user, "--file"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run holdfast passwd");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success());
}

/// A gateway with anonymous access off and the given `[auth]` keys.
fn closed_gateway(auth: &str) -> Gateway {
    let port = free_port();
    Gateway::start_config(
        &config(port, &format!("allow_anonymous = false\n{auth}")),
        port,
    )
}

#[test]
fn sighup_reloads_the_password_file_and_the_allowlist_without_dropping_clients() {
    let dir = TempDir::new("passwd");
    let passwd = dir.path().join("passwd");
    let ids = dir.path().join("clientids");
    passwd_add(&passwd, "alice", "one");
    std::fs::write(&ids, "# devices without passwords\nplc-1\nplc-9\n").unwrap();
    let gw = closed_gateway(&format!(
        "password_file = {:?}\nclientid_allowlist = {:?}\n",
        passwd.display().to_string(),
        ids.display().to_string()
    ));
    // Client-id allowlist: a listed id needs no credentials (v5 and 3.1.1).
    let (mut plc, ack) = connect_v5(gw.port, "plc-1", None);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert_eq!(
        connect_v5(gw.port, "plc-2", None).1.code,
        ConnectReturnCode::NotAuthorized
    );
    assert!(pub_311(gw.port, &["-t", "t", "-i", "plc-9"]).0);
    let (ok, err) = pub_311(gw.port, &["-t", "t", "-i", "plc-2"]);
    assert!(!ok && err.contains("not authorised"), "{err}");
    // Password file: right, wrong (0x86 / 3.1.1 code 4).
    assert_eq!(
        connect_v5(gw.port, "a1", Some(("alice", "one"))).1.code,
        ConnectReturnCode::Success
    );
    assert_eq!(
        connect_v5(gw.port, "a2", Some(("alice", "two"))).1.code,
        ConnectReturnCode::BadUserNamePassword
    );
    let (ok, err) = pub_311(gw.port, &["-t", "t", "-u", "alice", "-P", "nope"]);
    assert!(!ok && err.contains("bad user name or password"), "{err}");

    passwd_add(&passwd, "alice", "two");
    std::fs::write(&ids, "plc-2\n").unwrap();
    sighup(&gw);
    wait_for_occurrences(&gw, "reloaded the client-id allowlist", 1);
    wait_for_occurrences(&gw, "reloaded the password file", 1);
    assert_eq!(
        connect_v5(gw.port, "a3", Some(("alice", "two"))).1.code,
        ConnectReturnCode::Success
    );
    assert_eq!(
        connect_v5(gw.port, "a4", Some(("alice", "one"))).1.code,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        connect_v5(gw.port, "plc-2", None).1.code,
        ConnectReturnCode::Success
    );

    // A broken password file keeps the previous one, with file:line: reason in the log.
    std::fs::write(&passwd, "alice\n").unwrap();
    sighup(&gw);
    wait_for_occurrences(&gw, "reload of the password file failed", 1);
    assert!(
        gw.log().contains(&format!(
            "{}:1: expected user:argon2id-hash",
            passwd.display()
        )),
        "{}",
        gw.log()
    );
    assert_eq!(
        connect_v5(gw.port, "a5", Some(("alice", "two"))).1.code,
        ConnectReturnCode::Success
    );
    // The client admitted before the reloads is still connected (its id is no longer
    // listed, which matters only at its next CONNECT).
    let mut p = Publish::new("t", QoS::AtLeastOnce, "still here", None);
    p.pkid = 7;
    assert_eq!(plc.publish_qos1(p), PubAckReason::NoMatchingSubscribers);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

#[test]
fn jwt_in_the_password_is_accepted_when_valid_and_refused_when_expired_or_forged() {
    let gw = closed_gateway(
        "jwt = { secret = \"gw-secret-gw-secret-gw-secret-gw-secret\", algorithms = [\"HS256\"], username_claim = \"sub\" }\n",
    );
    let good = hs256(
        "gw-secret-gw-secret-gw-secret-gw-secret",
        serde_json::json!({ "sub": "dev-1", "exp": now() + 600 }),
    );
    let expired = hs256(
        "gw-secret-gw-secret-gw-secret-gw-secret",
        serde_json::json!({ "sub": "dev-1", "exp": now() - 3600 }),
    );
    let forged = hs256(
        "not-the-secret",
        serde_json::json!({ "sub": "dev-1", "exp": now() + 600 }),
    );
    let code = |user: &str, token: &str| connect_v5(gw.port, "j", Some((user, token))).1.code;
    assert_eq!(code("dev-1", &good), ConnectReturnCode::Success);
    assert_eq!(
        code("dev-1", &expired),
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        code("dev-1", &forged),
        ConnectReturnCode::BadUserNamePassword
    );
    // The claim names the user the token was issued to.
    assert_eq!(code("dev-2", &good), ConnectReturnCode::BadUserNamePassword);
    // No credentials at all: not authorized (0x87).
    assert_eq!(
        connect_v5(gw.port, "j", None).1.code,
        ConnectReturnCode::NotAuthorized
    );
    // MQTT 3.1.1 return codes 0 and 4.
    assert!(pub_311(gw.port, &["-t", "t", "-u", "dev-1", "-P", &good]).0);
    let (ok, err) = pub_311(gw.port, &["-t", "t", "-u", "dev-1", "-P", &expired]);
    assert!(!ok && err.contains("bad user name or password"), "{err}");
}

/// Signs `claims` with the PEM private key at `key` (RSA for RS256, P-256 for ES256).
fn sign_with(alg: Algorithm, key: &Path, claims: &serde_json::Value) -> String {
    let pem = std::fs::read(key).expect("read the private key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        other => panic!("no test signer for {other:?}"),
    }
    .expect("parse the private key");
    encode(&Header::new(alg), claims, &key).expect("sign a token")
}

/// A JWS with `"alg": "none"` and no signature.
fn unsigned(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims.to_string().as_bytes())
    )
}

/// base64url without padding (RFC 7515 §2), enough for the `alg: none` token.
fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// One asymmetric algorithm end to end: the gateway holds only the public key of `kind` (made
/// by openssl), the test signs with the private key; a valid token is accepted (3.1.1 and 5),
/// while a token signed by another key of the same kind, an expired one, an HS256 token whose
/// HMAC secret is the gateway's public key (algorithm confusion), an unsigned `alg: none`
/// token and a token of the other asymmetric family are refused with 4 / 0x86; no credentials
/// at all are 5 / 0x87.
fn asymmetric_jwt_end_to_end(alg: Algorithm, kind: KeyKind, other: (Algorithm, KeyKind)) {
    let dir = TempDir::new("jwt-keys");
    let (key, public) = make_key_pair(dir.path(), "gw", kind);
    let (stranger, _) = make_key_pair(dir.path(), "stranger", kind);
    let (other_key, _) = make_key_pair(dir.path(), "other", other.1);
    let gw = closed_gateway(&format!(
        "jwt = {{ public_key = {:?}, algorithms = [\"{alg:?}\"], username_claim = \"sub\" }}\n",
        public.display().to_string()
    ));
    let claims = serde_json::json!({ "sub": "dev-1", "exp": now() + 600 });
    let good = sign_with(alg, &key, &claims);
    let by_stranger = sign_with(alg, &stranger, &claims);
    let expired = sign_with(
        alg,
        &key,
        &serde_json::json!({ "sub": "dev-1", "exp": now() - 3600 }),
    );
    let public_pem = std::fs::read(&public).expect("read the public key");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("sign a token");
    let wrong_family = sign_with(other.0, &other_key, &claims);

    let code = |user: &str, token: &str| connect_v5(gw.port, "j", Some((user, token))).1.code;
    assert_eq!(code("dev-1", &good), ConnectReturnCode::Success, "{alg:?}");
    for (what, token) in [
        ("signed by another key", &by_stranger),
        ("expired", &expired),
        ("HS256 with the public key as secret", &confused),
        ("alg none", &unsigned(&claims)),
        ("of the other family", &wrong_family),
    ] {
        assert_eq!(
            code("dev-1", token),
            ConnectReturnCode::BadUserNamePassword,
            "{alg:?}: a token {what} must be refused with 0x86"
        );
    }
    // The claim names the user the token was issued to.
    assert_eq!(code("dev-2", &good), ConnectReturnCode::BadUserNamePassword);
    assert_eq!(
        connect_v5(gw.port, "j", None).1.code,
        ConnectReturnCode::NotAuthorized
    );

    // MQTT 3.1.1 (mosquitto_pub): return codes 0, 4 and 5.
    let (ok, err) = pub_311(gw.port, &["-t", "t", "-u", "dev-1", "-P", &good]);
    assert!(ok, "{alg:?}: {err}");
    for token in [&by_stranger, &expired, &confused] {
        let (ok, err) = pub_311(gw.port, &["-t", "t", "-u", "dev-1", "-P", token]);
        assert!(!ok && err.contains("bad user name or password"), "{err}");
    }
    let (ok, err) = pub_311(gw.port, &["-t", "t"]);
    assert!(!ok && err.contains("not authorised"), "{err}");
    // The token never reaches the log.
    assert!(!gw.log().contains(&good), "a token was logged");
}

#[test]
fn rs256_tokens_signed_by_the_configured_rsa_key_are_accepted_and_all_others_refused() {
    asymmetric_jwt_end_to_end(
        Algorithm::RS256,
        KeyKind::Rsa,
        (Algorithm::ES256, KeyKind::P256),
    );
}

#[test]
fn es256_tokens_signed_by_the_configured_p256_key_are_accepted_and_all_others_refused() {
    asymmetric_jwt_end_to_end(
        Algorithm::ES256,
        KeyKind::P256,
        (Algorithm::RS256, KeyKind::Rsa),
    );
}
