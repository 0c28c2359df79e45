//! The web API (`[web]`) against the built binary over HTTP/1.1 on loopback: first-boot setup
//! with the one-time token, login sessions and their CSRF token, the login lockout, API
//! tokens and their revocation, a kick through the API, `/metrics` parsed by Prometheus's own
//! text parser (prometheus_client from PyPI) and checked against `holdfast ctl stats`, and the
//! `web-passwd` reset from a shell.

use holdfast_tests::ctl::{ctl_json, socket};
use holdfast_tests::web::{gateway, http, http_from, session_of, setup, WAIT};
use holdfast_tests::{free_port, holdfast_bin, MosquittoSub};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn first_boot_needs_the_setup_token_then_everything_needs_a_session_or_a_token() {
    let (gw, web) = gateway("");
    let token_path = gw.dir.path().join("data/setup-token");
    assert!(gw.log().contains("setup token"), "{}", gw.log());
    let mode = std::fs::metadata(&token_path)
        .expect("setup-token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the setup token is readable by others");
    assert_eq!(
        http(web, "GET", "/api/v1/setup", &[], None).json()["setup_required"],
        true
    );
    // Nothing but setup and login without credentials; no default password.
    for path in [
        "/api/v1/stats",
        "/api/v1/clients",
        "/metrics",
        "/api/v1/tokens",
    ] {
        assert_eq!(http(web, "GET", path, &[], None).status, 401, "{path}");
    }
    assert_eq!(
        http(
            web,
            "POST",
            "/api/v1/login",
            &[],
            Some(r#"{"password":"admin"}"#)
        )
        .status,
        409
    );
    let wrong = http(
        web,
        "POST",
        "/api/v1/setup",
        &[],
        Some(r#"{"token":"guess","password":"long enough pw"}"#),
    );
    assert_eq!(wrong.status, 401);
    let token = std::fs::read_to_string(&token_path)
        .expect("token")
        .trim()
        .to_owned();
    let weak = format!(r#"{{"token":"{token}","password":"short"}}"#);
    assert_eq!(
        http(web, "POST", "/api/v1/setup", &[], Some(&weak)).status,
        400
    );
    let s = setup(&gw, web, "correct horse battery");
    assert!(!token_path.exists(), "the setup token is spent");
    let again = format!(r#"{{"token":"{token}","password":"another password"}}"#);
    assert_eq!(
        http(web, "POST", "/api/v1/setup", &[], Some(&again)).status,
        409
    );
    // A session reads.
    let stats = http(web, "GET", "/api/v1/stats", &[("Cookie", &s.cookie)], None);
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(
        stats.headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    assert_eq!(
        stats
            .headers
            .get("x-content-type-options")
            .map(String::as_str),
        Some("nosniff")
    );
    assert!(
        stats.json()["stats"]["connections/count"].is_u64(),
        "{}",
        stats.body
    );
    // A change without the CSRF token is refused, with it made.
    let mqtt = gw.addr().port();
    let _sub = MosquittoSub::start(mqtt, "t", &["-V", "5", "-i", "victim"]);
    let no_csrf = http(
        web,
        "POST",
        "/api/v1/clients/victim/kick",
        &[("Cookie", &s.cookie)],
        None,
    );
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let bad_csrf = http(
        web,
        "POST",
        "/api/v1/clients/victim/kick",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", "0000")],
        None,
    );
    assert_eq!(bad_csrf.status, 403);
    let kicked = http(
        web,
        "POST",
        "/api/v1/clients/victim/kick",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        None,
    );
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    assert!(
        gw.wait_for_log("reason=\"kicked\"", WAIT) || gw.wait_for_log("reason=kicked", WAIT),
        "{}",
        gw.log()
    );
    let missing = http(
        web,
        "POST",
        "/api/v1/clients/nobody/kick",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        None,
    );
    assert_eq!(missing.status, 404);
    // Logging out ends the session.
    let out = http(
        web,
        "POST",
        "/api/v1/logout",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        None,
    );
    assert_eq!(out.status, 204);
    assert_eq!(
        http(web, "GET", "/api/v1/stats", &[("Cookie", &s.cookie)], None).status,
        401
    );
    // And a login makes a new one.
    let login = http(
        web,
        "POST",
        "/api/v1/login",
        &[],
        Some(r#"{"password":"correct horse battery"}"#),
    );
    let s2 = session_of(&login);
    assert_ne!(s2.cookie, s.cookie);
    assert_eq!(
        http(
            web,
            "GET",
            "/api/v1/listeners",
            &[("Cookie", &s2.cookie)],
            None
        )
        .status,
        200
    );
    assert_eq!(
        http(
            web,
            "GET",
            "/api/v1/nothing",
            &[("Cookie", &s2.cookie)],
            None
        )
        .status,
        404
    );
}

#[test]
fn failed_logins_lock_the_address_out() {
    let (gw, web) = gateway("login_attempts = 3\nlogin_lockout = \"1m\"");
    setup(&gw, web, "correct horse battery");
    for _ in 0..3 {
        let r = http(
            web,
            "POST",
            "/api/v1/login",
            &[],
            Some(r#"{"password":"guess guess"}"#),
        );
        assert_eq!(r.status, 401);
    }
    let locked = http(
        web,
        "POST",
        "/api/v1/login",
        &[],
        Some(r#"{"password":"correct horse battery"}"#),
    );
    assert_eq!(
        locked.status, 429,
        "even the right password while locked out"
    );
    assert!(locked.headers.contains_key("retry-after"));
    assert!(gw.log().contains("locked out"), "{}", gw.log());
    assert!(gw.log().contains("127.0.0.1"), "the log names the peer");
}

#[test]
fn a_password_guessed_from_many_addresses_lets_in_only_known_ones() {
    // login_attempts 2 per address; 10 x 2 = 20 failures from anywhere close the admin to
    // addresses it never logged in from, for login_lockout.
    let (gw, web) = gateway("login_attempts = 2\nlogin_lockout = \"1m\"");
    setup(&gw, web, "correct horse battery");
    let login = |from: [u8; 4], password: &str| {
        let body = format!(r#"{{"password":"{password}"}}"#);
        http_from(from.into(), web, "POST", "/api/v1/login", &[], Some(&body))
    };
    assert_eq!(login([127, 0, 0, 1], "correct horse battery").status, 200);
    for n in 10..30 {
        let r = login([127, 0, 0, n], "guess guess");
        assert_eq!(r.status, 401, "from 127.0.0.{n}: {}", r.body);
    }
    let stranger = login([127, 0, 0, 50], "correct horse battery");
    assert_eq!(stranger.status, 429, "{}", stranger.body);
    assert!(
        stranger.body.contains("many addresses"),
        "{}",
        stranger.body
    );
    assert!(stranger.headers.contains_key("retry-after"));
    let known = login([127, 0, 0, 1], "correct horse battery");
    assert_eq!(known.status, 200, "the admin's own address: {}", known.body);
    assert!(
        gw.log().contains("failed logins from many addresses"),
        "{}",
        gw.log()
    );
}

#[test]
fn api_tokens_work_until_revoked_and_metrics_match_ctl_stats() {
    let (gw, web) = gateway("");
    let s = setup(&gw, web, "correct horse battery");
    let made = http(
        web,
        "POST",
        "/api/v1/tokens",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        Some(r#"{"name":"automation","scope":"admin"}"#),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let token = made.json()["token"].as_str().unwrap_or_default().to_owned();
    let id = made.json()["info"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let listed = http(
        web,
        "GET",
        "/api/v1/tokens",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(listed.status, 200);
    assert!(
        !listed.body.contains(&token),
        "a listing never shows a token"
    );
    // Some state to count: two subscribers.
    let mqtt = gw.addr().port();
    let _a = MosquittoSub::start(mqtt, "a/#", &[]);
    let _b = MosquittoSub::start(mqtt, "b/+", &[]);
    // The board task publishes its first health report once serving starts.
    let health = holdfast_tests::wait_until(WAIT, || {
        let b = http(
            web,
            "GET",
            "/api/v1/board",
            &[("Authorization", &bearer)],
            None,
        );
        !b.json()["health"].is_null()
    });
    assert!(health, "no board health report");
    let metrics = http(web, "GET", "/metrics", &[("Authorization", &bearer)], None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        metrics.headers
    );
    let parsed = prometheus_parse(&metrics.body);
    let stats = ctl_json(&socket(&gw), &["stats"]);
    for (metric, stat) in [
        ("holdfast_subscriptions", "subscriptions/count"),
        ("holdfast_sessions", "sessions/count"),
        ("holdfast_retained_messages", "retained/count"),
    ] {
        assert_eq!(
            parsed.get(metric).copied(),
            stats["stats"][stat].as_f64(),
            "{metric} vs ctl stats {stat}\n{}",
            metrics.body
        );
    }
    assert!(parsed.get("holdfast_subscriptions").copied().unwrap_or(0.0) >= 2.0);
    // Board health and storage, from the board task's reports and the data directory.
    for gauge in [
        "holdfast_data_dir_bytes",
        "holdfast_board_memory_total_bytes",
        "holdfast_board_data_disk_size_bytes",
        "holdfast_process_resident_memory_bytes",
        "holdfast_board_load_average{window=\"1m\"}",
    ] {
        assert!(
            parsed.contains_key(gauge),
            "{gauge} missing:\n{}",
            metrics.body
        );
    }
    assert!(parsed["holdfast_data_dir_bytes"] > 0.0);
    assert!(parsed["holdfast_process_resident_memory_bytes"] > 1e6);
    assert_eq!(
        parsed.get("holdfast_board_status{status=\"running\"}"),
        Some(&1.0)
    );
    assert_eq!(parsed.get("holdfast_board_alarms"), Some(&0.0));
    assert!(
        parsed.contains_key("holdfast_messages_received_total"),
        "{:?}",
        parsed.keys()
    );
    assert!(
        parsed
            .keys()
            .any(|k| k.starts_with("holdfast_listener_accepted_total")),
        "{:?}",
        parsed.keys()
    );
    // Revoked: refused at once.
    let revoke = format!("/api/v1/tokens/{id}");
    let gone = http(
        web,
        "DELETE",
        &revoke,
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        None,
    );
    assert_eq!(gone.status, 204);
    assert_eq!(
        http(web, "GET", "/metrics", &[("Authorization", &bearer)], None).status,
        401
    );
}

/// Parses the text format with prometheus_client (PyPI): `name{labels}` -> value.
fn prometheus_parse(text: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (pip install prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

#[test]
fn web_passwd_resets_the_admin_password_from_a_shell() {
    let (gw, web) = gateway("");
    setup(&gw, web, "correct horse battery");
    let mut child = Command::new(holdfast_bin())
        .args(["web-passwd", "--data-dir"])
        .arg(gw.dir.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("holdfast web-passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a brand new password\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = http(
        web,
        "POST",
        "/api/v1/login",
        &[],
        Some(r#"{"password":"correct horse battery"}"#),
    );
    assert_eq!(old.status, 401);
    let new = http(
        web,
        "POST",
        "/api/v1/login",
        &[],
        Some(r#"{"password":"a brand new password"}"#),
    );
    assert_eq!(new.status, 200, "{}", new.body);
}

#[test]
fn garbage_huge_bodies_and_too_many_connections_never_take_it_down() {
    let (mut gw, web) =
        gateway("max_connections = 4\nrequest_timeout = \"5s\"\nmax_body_size = \"2KB\"");
    // Garbage and a request line that is no HTTP: refused, the server stays.
    for garbage in [
        &b"\x16\x03\x01\x00\xff\x01garbage"[..],
        b"GET\r\n\r\n",
        b"MQTT\x04\x02\x00\x3c",
    ] {
        let mut stream = TcpStream::connect(("127.0.0.1", web)).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = stream.write_all(garbage);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    // A body past max_body_size.
    let big = format!(r#"{{"password":"{}"}}"#, "x".repeat(4096));
    assert_eq!(
        http(web, "POST", "/api/v1/login", &[], Some(&big)).status,
        413
    );
    // Four idle connections hold every slot; a fifth is closed at once. (A connection that
    // ended a moment ago may still hold its slot on a busy machine: one of the four refused
    // for it is opened again until all four are held.)
    let held = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut)
    };
    let mut idle: Vec<TcpStream> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while idle.len() < 4 && std::time::Instant::now() < deadline {
        let mut s = TcpStream::connect(("127.0.0.1", web)).expect("connect");
        if held(&mut s) {
            idle.push(s);
        }
    }
    assert_eq!(idle.len(), 4, "four idle connections were not held");
    let mut fifth = TcpStream::connect(("127.0.0.1", web)).expect("connect");
    fifth
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let _ = fifth.write_all(b"GET /api/v1/setup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut answer = Vec::new();
    let _ = fifth.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "a fifth connection was served: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(gw.log().contains("max_connections"), "{}", gw.log());
    // Idle connections are closed after request_timeout; then the server answers again.
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(http(web, "GET", "/api/v1/setup", &[], None).status, 200);
    drop(idle);
    assert!(gw.is_running(), "{}", gw.log());
}

#[test]
fn a_login_dropped_mid_check_still_counts_toward_the_lockout() {
    // Review finding: the check's permit and the lockout were the handler's, so a client that
    // closed its side mid-check freed the slot at once and escaped the lockout, piling up
    // argon2 work without a bound.
    let (gw, web) = gateway("login_attempts = 3\nlogin_lockout = \"1m\"");
    setup(&gw, web, "correct horse battery");
    let huge = format!(r#"{{"password":"{}"}}"#, "x".repeat(5000));
    assert_eq!(
        http(web, "POST", "/api/v1/login", &[], Some(&huge)).status,
        400
    );
    for i in 0..3 {
        let mut stream = TcpStream::connect(("127.0.0.1", web)).expect("connect");
        let body = r#"{"password":"guess guess"}"#;
        let request = format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        drop(stream);
        // One check at a time here: two running at once would make the next one a 503 (the
        // argon2 bound), which is no failed login. A slow machine takes its time.
        let counted = holdfast_tests::wait_until(WAIT, || {
            gw.log()
                .matches("web: login refused: wrong password")
                .count()
                + gw.log().matches("web: wrong password;").count()
                > i
        });
        assert!(counted, "dropped login {i} was not counted:\n{}", gw.log());
    }
    let locked = http(
        web,
        "POST",
        "/api/v1/login",
        &[],
        Some(r#"{"password":"correct horse battery"}"#),
    );
    assert_eq!(locked.status, 429, "{}", locked.body);
}

#[test]
fn a_password_set_from_a_shell_before_setup_spends_the_token() {
    // Review finding: `web-passwd` on a running gateway left the setup token valid in memory,
    // so whoever had it could overwrite the password set from the shell.
    let (gw, web) = gateway("");
    let token = std::fs::read_to_string(gw.dir.path().join("data/setup-token")).expect("token");
    let mut child = Command::new(holdfast_bin())
        .args(["web-passwd", "--data-dir"])
        .arg(gw.dir.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("holdfast web-passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"set from the shell\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    assert_eq!(
        http(web, "GET", "/api/v1/setup", &[], None).json()["setup_required"],
        false
    );
    let takeover = format!(
        r#"{{"token":"{}","password":"the attacker's pw"}}"#,
        token.trim()
    );
    assert_eq!(
        http(web, "POST", "/api/v1/setup", &[], Some(&takeover)).status,
        409
    );
    let login = http(
        web,
        "POST",
        "/api/v1/login",
        &[],
        Some(r#"{"password":"set from the shell"}"#),
    );
    assert_eq!(login.status, 200, "{}", login.body);
}

#[test]
fn clients_are_searched_and_paged_by_the_gateway() {
    let (gw, web) = gateway("");
    let s = setup(&gw, web, "a long admin password");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ids: Vec<String> = (0..12)
        .map(|i| format!("field-{i:02}"))
        .chain(["Other-Field".to_owned(), "cabinet".to_owned()])
        .collect();
    for id in &ids {
        let (_client, mut events) =
            rumqttc::AsyncClient::new(holdfast_tests::v4::options(id, gw.port, true), 10);
        runtime.spawn(async move {
            let _keep = _client;
            while events.poll().await.is_ok() {}
        });
    }
    let page = |query: &str| {
        let r = http(
            web,
            "GET",
            &format!("/api/v1/clients?{query}"),
            &[("Cookie", &s.cookie)],
            None,
        );
        (r.status, r.json())
    };
    let all_in =
        holdfast_tests::wait_until(WAIT, || page("search=field").1["clients"]["total"] == 13);
    assert!(all_in, "{}", page("search=field").1);
    // Case is ignored; the page is the tail of the list sorted by bytes ("Other-Field" first).
    let (status, answer) = page("search=FIELD&offset=10&limit=5");
    assert_eq!(status, 200);
    let rows = answer["clients"]["rows"].as_array().expect("rows");
    let got: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["client_id"].as_str())
        .collect();
    assert_eq!(got, ["field-09", "field-10", "field-11"], "{answer}");
    assert_eq!(answer["clients"]["truncated"], false);
    let (_, first) = page("search=field&limit=5");
    assert_eq!(first["clients"]["rows"].as_array().map(Vec::len), Some(5));
    assert_eq!(first["clients"]["truncated"], true);
    // The peer address is searched too; a page past the end is empty, not an error.
    let (_, by_peer) = page("search=127.0.0.1&limit=100");
    assert!(
        by_peer["clients"]["total"].as_u64() >= Some(14),
        "{by_peer}"
    );
    let (status, past) = page("offset=1000");
    assert_eq!(status, 200);
    assert_eq!(past["clients"]["rows"], serde_json::json!([]));
    let (status, bad) = page("offset=minus-one");
    assert_eq!(status, 400, "{bad}");
    let (status, _) = page(&format!("search={}", "x".repeat(300)));
    assert_eq!(status, 400);
}

#[test]
fn the_log_tails_and_traces_run_download_and_go_over_http() {
    let (gw, web) = gateway("");
    assert_eq!(http(web, "GET", "/api/v1/logs", &[], None).status, 401);
    let s = setup(&gw, web, "a long admin password");
    let cookie = [("Cookie", s.cookie.as_str())];
    let change = [
        ("Cookie", s.cookie.as_str()),
        ("X-CSRF-Token", s.csrf.as_str()),
    ];

    // The tail has the start-up lines; asking after the last one gives only what is new.
    let first = http(web, "GET", "/api/v1/logs?limit=1000", &cookie, None).json();
    let text = first["lines"].to_string();
    assert!(text.contains("web: API listening"), "{first}");
    let last = first["last"].as_u64().expect("last");
    holdfast_tests::mosquitto_pub(gw.port, "t", "x", &["-i", "tail-marker"]);
    let found = holdfast_tests::wait_until(WAIT, || {
        let next = http(
            web,
            "GET",
            &format!("/api/v1/logs?after={last}"),
            &cookie,
            None,
        )
        .json();
        let lines = next["lines"].as_array().cloned().unwrap_or_default();
        lines.iter().all(|l| l["seq"].as_u64() > Some(last))
            && next["lines"].to_string().contains("tail-marker")
    });
    assert!(found);
    let bad = http(web, "GET", "/api/v1/logs?after=-1", &cookie, None);
    assert_eq!(bad.status, 400);

    // A trace of one client: started, fed, stopped, downloaded, deleted.
    let started = http(
        web,
        "POST",
        "/api/v1/traces",
        &change,
        Some(r#"{"kind":"client","value":"traced-one"}"#),
    );
    assert_eq!(started.status, 201, "{}", started.body);
    let name = std::path::Path::new(started.json()["file"].as_str().expect("file"))
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    assert!(
        name.starts_with("client-") && name.ends_with(".log"),
        "{name}"
    );
    holdfast_tests::mosquitto_pub(gw.port, "t", "x", &["-i", "traced-one"]);
    let listed = http(web, "GET", "/api/v1/traces", &cookie, None).json();
    assert_eq!(listed["running"][0]["value"], "traced-one", "{listed}");
    let busy = http(
        web,
        "DELETE",
        &format!("/api/v1/traces/files/{name}"),
        &change,
        None,
    );
    assert_eq!(busy.status, 409, "a running trace's file stays");
    let stopped = http(
        web,
        "DELETE",
        "/api/v1/traces?kind=client&value=traced-one",
        &change,
        None,
    );
    assert_eq!(stopped.status, 200);
    assert!(
        stopped.json()["stopped"][0]["lines"].as_u64() > Some(0),
        "{}",
        stopped.body
    );
    let file = http(
        web,
        "GET",
        &format!("/api/v1/traces/files/{name}"),
        &cookie,
        None,
    );
    assert_eq!(file.status, 200);
    assert!(file.body.contains("traced-one"), "{}", file.body);
    assert!(file.headers["content-disposition"].contains("attachment"));
    for evil in [
        "..%2F..%2Fsetup-token",
        "client-1.log%00",
        "setup-token",
        "client-x.log",
    ] {
        let r = http(
            web,
            "GET",
            &format!("/api/v1/traces/files/{evil}"),
            &cookie,
            None,
        );
        assert_eq!(r.status, 404, "{evil}");
    }
    let gone = http(
        web,
        "DELETE",
        &format!("/api/v1/traces/files/{name}"),
        &change,
        None,
    );
    assert_eq!(gone.status, 204);
    // Trace files share the flash with the queues: the oldest go when there are too many.
    for i in 0..20 {
        let body = format!(r#"{{"kind":"client","value":"many-{i}"}}"#);
        let r = http(web, "POST", "/api/v1/traces", &change, Some(&body));
        assert_eq!(r.status, 201, "{}", r.body);
        let r = http(web, "DELETE", "/api/v1/traces", &change, None);
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(2));
    }
    let files = http(web, "GET", "/api/v1/traces", &cookie, None).json();
    let kept = files["files"].as_array().map(Vec::len).unwrap_or(0);
    assert!((1..=16).contains(&kept), "{kept} trace files kept");
    let no_csrf = http(
        web,
        "POST",
        "/api/v1/traces",
        &cookie,
        Some(r#"{"kind":"client","value":"x"}"#),
    );
    assert_eq!(no_csrf.status, 403);
}

#[test]
fn https_with_web_tls_and_the_session_cookie_is_secure() {
    let dir = holdfast_tests::TempDir::new("web-tls");
    let pki = holdfast_tests::pki::make_pki(dir.path());
    let tls = format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        pki.server_cert, pki.server_key
    );
    let (gw, web) = gateway(&tls);
    assert!(gw.log().contains("scheme=\"https\""), "{}", gw.log());
    let token = std::fs::read_to_string(gw.dir.path().join("data/setup-token")).expect("token");
    let body = serde_json::json!({"token": token.trim(), "password": "a long admin password"});
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(&pki.ca)
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(body.to_string())
        .arg(format!("https://127.0.0.1:{web}/api/v1/setup"))
        .output()
        .expect("curl");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    // Plain HTTP on the HTTPS port gets no answer, and the gateway goes on.
    assert_eq!(http(web, "GET", "/api/v1/setup", &[], None).status, 0);
    let again = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca)
        .arg(format!("https://127.0.0.1:{web}/api/v1/setup"))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&again.stdout).contains("setup_required"));
}

#[test]
fn a_missing_web_certificate_stops_the_start_and_names_the_file() {
    let port = free_port();
    let web = free_port();
    let config = format!(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\n[web]\nbind = \"127.0.0.1:{web}\"\ntls = {{ cert = \"/nonexistent/web.pem\", key = \"/nonexistent/web.key\" }}\n"
    );
    let dir = holdfast_tests::TempDir::new("web-tls-bad");
    let file = dir.path().join("holdfast.toml");
    std::fs::write(&file, config).expect("config");
    let out = Command::new(holdfast_bin())
        .arg("run")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web: tls: cannot read /nonexistent/web.pem"),
        "{err}"
    );
}

/// The status line of a GET of `path` with `Host: host`.
fn status_with_host(web: u16, path: &str, host: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", web)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_host_name_the_gateway_does_not_answer_to_is_refused() {
    let (_gw, web) = gateway("allowed_hosts = [\"gw-7.example\"]");
    for ok in [
        format!("127.0.0.1:{web}"),
        format!("localhost:{web}"),
        format!("[::1]:{web}"),
        "gw-7.example".to_owned(),
    ] {
        let line = status_with_host(web, "/api/v1/setup", &ok);
        assert!(line.starts_with("HTTP/1.1 200"), "{ok}: {line}");
    }
    // A page elsewhere whose name now resolves to this board cannot reach the API (nor lock
    // its technician out by failing logins).
    for refused in ["evil.example", "127.0.0.1.nip.io:18083"] {
        let line = status_with_host(web, "/api/v1/setup", refused);
        assert!(line.starts_with("HTTP/1.1 421"), "{refused}: {line}");
        let line = status_with_host(web, "/", refused);
        assert!(line.starts_with("HTTP/1.1 421"), "{refused}: {line}");
    }
}

#[test]
fn a_token_does_what_its_scope_allows_and_no_token_makes_tokens() {
    let (gw, web) = gateway("");
    let s = setup(&gw, web, "correct horse battery");
    let session = [
        ("Cookie", s.cookie.as_str()),
        ("X-CSRF-Token", s.csrf.as_str()),
    ];
    let make = |scope: &str| {
        let body = format!(r#"{{"name":"{scope} token","scope":"{scope}"}}"#);
        let r = http(web, "POST", "/api/v1/tokens", &session, Some(&body));
        assert_eq!(r.status, 201, "{}", r.body);
        format!("Bearer {}", r.json()["token"].as_str().unwrap_or_default())
    };
    let no_scope = http(
        web,
        "POST",
        "/api/v1/tokens",
        &session,
        Some(r#"{"name":"x"}"#),
    );
    assert_eq!(no_scope.status, 400, "a token says what it may do");
    let (metrics, read, admin) = (make("metrics"), make("read"), make("admin"));
    let status = |bearer: &str, method: &str, path: &str, body: Option<&str>| {
        http(web, method, path, &[("Authorization", bearer)], body).status
    };
    // A scraper's token scrapes, and nothing else.
    assert_eq!(status(&metrics, "GET", "/metrics", None), 200);
    assert_eq!(status(&metrics, "GET", "/api/v1/stats", None), 403);
    // A dashboard's token reads, but not the config file (credentials) nor the trace files.
    assert_eq!(status(&read, "GET", "/api/v1/stats", None), 200);
    assert_eq!(status(&read, "GET", "/metrics", None), 200);
    assert_eq!(status(&read, "GET", "/api/v1/config", None), 403);
    assert_eq!(status(&read, "GET", "/api/v1/tokens", None), 403);
    assert_eq!(status(&read, "POST", "/api/v1/clients/x/kick", None), 403);
    // An admin token acts, but makes and revokes no tokens: a leaked one cannot mint its heir.
    assert_eq!(
        status(&admin, "POST", "/api/v1/clients/nobody/kick", None),
        404
    );
    assert_eq!(status(&admin, "GET", "/api/v1/config", None), 200);
    let mint = r#"{"name":"heir","scope":"admin"}"#;
    assert_eq!(status(&admin, "POST", "/api/v1/tokens", Some(mint)), 403);
    let listed = http(
        web,
        "GET",
        "/api/v1/tokens",
        &[("Authorization", admin.as_str())],
        None,
    );
    assert_eq!(listed.status, 200);
    let scopes: Vec<String> = listed.json()["tokens"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["scope"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(scopes, ["metrics", "read", "admin"]);
    let id = listed.json()["tokens"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        status(&admin, "DELETE", &format!("/api/v1/tokens/{id}"), None),
        403
    );
}
