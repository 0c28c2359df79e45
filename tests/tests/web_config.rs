//! Editing the running gateway's config through the web API, against the built binary:
//! - a mistake is refused with its line and nothing is written; so is an edit of a file that
//!   changed meanwhile;
//! - a good config is applied (the old text kept as a version, the file's mode kept), the
//!   gateway restarts on it in the same process, the technician stays logged in, and it runs
//!   on probation until confirmed (then it is the last known good config);
//! - a config that loads but does not start (its port held by another process) is rolled
//!   back by itself, the file put back and the alarm raised;
//! - a config that starts but is not confirmed in time (here: one that turns the web UI off,
//!   so the technician cannot) is rolled back and the gateway restarts on the old one;
//! - under systemd the restart is a reload, and a SIGTERM during an apply still stops, also
//!   one that comes in the instant between the old runtime's end and the new program;
//! - a shell keeps an applied config too: `holdfast ctl config status|confirm`;
//! - every config route needs a session and a change its CSRF token.

use holdfast_tests::web::{gateway, http, session_of, setup, Session, WAIT};
use holdfast_tests::{free_port, wait_for_port, wait_until, Gateway};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

const PASSWORD: &str = "a long admin password";

fn get(web: u16, s: &Session, path: &str) -> (u16, Value) {
    let r = http(web, "GET", path, &[("Cookie", &s.cookie)], None);
    (r.status, r.json())
}

fn post(web: u16, s: &Session, path: &str, body: &Value) -> (u16, Value) {
    let r = http(
        web,
        "POST",
        path,
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        Some(&body.to_string()),
    );
    (r.status, r.json())
}

fn login(web: u16) -> Session {
    let body = json!({ "password": PASSWORD }).to_string();
    session_of(&http(web, "POST", "/api/v1/login", &[], Some(&body)))
}

/// Applies `text` over the file as it is now (its digest as `base`).
fn apply(web: u16, s: &Session, text: &str) -> (u16, Value) {
    let (_, config) = get(web, s, "/api/v1/config");
    let base = config["digest"].as_str().unwrap_or_default().to_owned();
    post(
        web,
        s,
        "/api/v1/config/apply",
        &json!({ "text": text, "base": base }),
    )
}

fn starts(gw: &Gateway) -> usize {
    gw.log().matches("holdfast running").count()
}

/// Waits until the gateway restarted in place (a new start logged) and its web port answers.
fn wait_restarted(gw: &Gateway, web: u16, starts_before: usize) {
    let restarted = wait_until(WAIT * 2, || starts(gw) > starts_before);
    assert!(restarted, "no restart:\n{}", gw.log());
    let addr = SocketAddr::from(([127, 0, 0, 1], web));
    assert!(
        wait_for_port(addr, WAIT),
        "web did not come back:\n{}",
        gw.log()
    );
}

#[test]
fn a_mistake_is_refused_at_its_line_a_good_config_is_applied_in_place_and_confirmed() {
    let (mut gw, web) = gateway("");
    let session = setup(&gw, web, PASSWORD);
    let path = gw.config_path().to_path_buf();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let original = std::fs::read_to_string(&path).unwrap();

    // Every config route needs a session, and a change its CSRF token.
    assert_eq!(http(web, "GET", "/api/v1/config", &[], None).status, 401);
    let body = json!({ "text": original, "base": "x" }).to_string();
    let no_csrf = http(
        web,
        "POST",
        "/api/v1/config/apply",
        &[("Cookie", &session.cookie)],
        Some(&body),
    );
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);

    let (status, config) = get(web, &session, "/api/v1/config");
    assert_eq!(status, 200);
    assert_eq!(config["text"], original.as_str());
    assert_eq!(config["editable"], true, "{config}");
    assert_eq!(config["versions"], json!([]));
    assert_eq!(config["probation"], Value::Null);
    let digest = config["digest"].as_str().expect("digest").to_owned();

    // A mistake, shown at its line by check and by apply; nothing is written.
    let broken = original.replacen("[web]", "[mqtt]\nmax_inflight = \"many\"\n\n[web]", 1);
    let line = broken
        .lines()
        .position(|l| l.starts_with("max_inflight"))
        .unwrap()
        + 1;
    let (status, answer) = post(
        web,
        &session,
        "/api/v1/config/check",
        &json!({ "text": broken }),
    );
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["problems"][0]["line"], line, "{answer}");
    assert_eq!(
        answer["problems"][0]["key"], "mqtt.max_inflight",
        "{answer}"
    );
    let (status, answer) = apply(web, &session, &broken);
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["problems"][0]["line"], line, "{answer}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let (status, _) = post(
        web,
        &session,
        "/api/v1/config/check",
        &json!({ "text": original }),
    );
    assert_eq!(status, 200);
    // An apply must say what it was edited from.
    let (status, _) = post(
        web,
        &session,
        "/api/v1/config/apply",
        &json!({ "text": original }),
    );
    assert_eq!(status, 400);

    // Someone edited the file on the board after the editor loaded it: nothing is written.
    std::fs::write(&path, format!("{original}\n# edited on the board\n")).unwrap();
    let (status, answer) = post(
        web,
        &session,
        "/api/v1/config/apply",
        &json!({ "text": original, "base": digest }),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .ends_with("# edited on the board\n"));
    std::fs::write(&path, &original).unwrap();
    // (A move of the data directory is refused too: the unit tests of config_file show it;
    // this gateway runs with --data-dir, which the file cannot move.)
    let data_dir = gw.dir.path().join("data");

    // A good config: a second MQTT listener. The gateway restarts on it in the same process.
    let session = login(web);
    let second = free_port();
    let good =
        format!("{original}\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{second}\"\n");
    let pid = gw.pid();
    let before = starts(&gw);
    let (status, answer) = apply(web, &session, &good);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["confirm_within"], 300);
    let previous = answer["previous"]["id"].as_str().unwrap().to_owned();
    wait_restarted(&gw, web, before);
    assert!(gw.is_running());
    assert_eq!(gw.pid(), pid);
    let addr = SocketAddr::from(([127, 0, 0, 1], second));
    assert!(
        wait_for_port(addr, WAIT),
        "the new listener is not up:\n{}",
        gw.log()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the file keeps its mode");

    // The technician stays logged in across the restart (same cookie, same CSRF token); the
    // new config waits for its confirm, and only then is it the last known good one.
    let (status, config) = get(web, &session, "/api/v1/config");
    assert_eq!(status, 200, "the session outlives the restart: {config}");
    assert!(gw
        .log()
        .contains("web: sessions kept across the config restart"));
    assert!(
        !data_dir.join("web-sessions.restart").exists(),
        "taken once"
    );
    assert_eq!(
        config["probation"]["previous"],
        previous.as_str(),
        "{config}"
    );
    let last_good = data_dir.join("config.last-good.toml");
    assert_ne!(
        std::fs::read_to_string(&last_good).unwrap_or_default(),
        good
    );
    let (status, answer) = post(web, &session, "/api/v1/config/confirm", &json!({}));
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post(web, &session, "/api/v1/config/confirm", &json!({}));
    assert_eq!(status, 409, "once");
    assert_eq!(std::fs::read_to_string(&last_good).unwrap(), good);
    let (_, config) = get(web, &session, "/api/v1/config");
    assert_eq!(config["probation"], Value::Null);
    assert_eq!(config["versions"][0]["id"], previous.as_str(), "{config}");
    let (status, kept) = get(
        web,
        &session,
        &format!("/api/v1/config/versions/{previous}"),
    );
    assert_eq!(status, 200);
    assert_eq!(kept["text"], original.as_str());
    let (status, _) = get(web, &session, "/api/v1/config/versions/..%2Fholdfast");
    assert_eq!(status, 404);
    let (_, board) = get(web, &session, "/api/v1/board");
    assert_eq!(board["alarms"], json!([]), "{board}");
}

#[test]
fn a_config_that_does_not_start_is_rolled_back_by_itself() {
    let (gw, web) = gateway("");
    let session = setup(&gw, web, PASSWORD);
    let path = gw.config_path().to_path_buf();
    let original = std::fs::read_to_string(&path).unwrap();

    // A config that loads but cannot start: its listener's port is held by another process.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let bad =
        format!("{original}\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{held_port}\"\n");
    let pid = gw.pid();
    let before = starts(&gw);
    let (status, answer) = apply(web, &session, &bad);
    assert_eq!(status, 202, "{answer}");
    let previous = answer["previous"]["id"].as_str().unwrap().to_owned();
    wait_restarted(&gw, web, before);
    assert_eq!(gw.pid(), pid);

    // The file is back to what it was, the gateway serves MQTT on the old config, and the
    // board's alarm says what happened.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert!(wait_for_port(gw.addr(), WAIT));
    let session = login(web);
    let (_, board) = get(web, &session, "/api/v1/board");
    let alarms = board["alarms"].to_string();
    assert!(
        alarms.contains("does not start")
            && alarms.contains(&format!("rolled back to version {previous}")),
        "{board}"
    );
    let (_, config) = get(web, &session, "/api/v1/config");
    assert_eq!(config["probation"], Value::Null);
    drop(held);
}

#[test]
fn a_config_that_locks_the_technician_out_is_rolled_back_when_not_kept_in_time() {
    let (gw, web) = gateway("confirm_within = \"10s\"");
    let session = setup(&gw, web, PASSWORD);
    let path = gw.config_path().to_path_buf();
    let original = std::fs::read_to_string(&path).unwrap();
    // The web UI turned off: nobody can confirm it from here.
    let locked_out = original.replacen("[web]", "[web]\nenabled = false", 1);
    let before = starts(&gw);
    let (status, answer) = apply(web, &session, &locked_out);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["confirm_within"], 10);
    assert!(
        wait_until(WAIT * 2, || starts(&gw) > before),
        "{}",
        gw.log()
    );
    assert!(wait_until(WAIT, || std::net::TcpStream::connect((
        "127.0.0.1",
        web
    ))
    .is_err()));
    assert!(
        wait_for_port(gw.addr(), WAIT),
        "MQTT runs on the applied config"
    );
    // The window closes: the file goes back and the gateway restarts on it, web UI included.
    wait_restarted(&gw, web, before + 1);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let session = login(web);
    let (_, board) = get(web, &session, "/api/v1/board");
    let alarms = board["alarms"].to_string();
    assert!(alarms.contains("was not confirmed within 10s"), "{board}");
    assert!(gw.log().contains("runs on probation"), "{}", gw.log());
}

/// Every notification that arrives within `wait`.
fn notifications(sock: &std::os::unix::net::UnixDatagram, wait: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

#[test]
fn under_systemd_an_apply_is_a_reload_and_a_sigterm_still_stops() {
    let (mut gw, web) = gateway("");
    let sock_path = gw.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    gw.set_env("NOTIFY_SOCKET", Some(sock_path.to_str().unwrap()));
    gw.restart();
    // The MQTT port answers first: the web port binds a moment later.
    let addr = SocketAddr::from(([127, 0, 0, 1], web));
    assert!(wait_for_port(addr, WAIT), "{}", gw.log());
    let session = setup(&gw, web, PASSWORD);
    let original = std::fs::read_to_string(gw.config_path()).unwrap();
    let before = starts(&gw);
    let (status, _) = apply(web, &session, &format!("{original}\n# one\n"));
    assert_eq!(status, 202);
    wait_restarted(&gw, web, before);
    // systemd hears a reload (which it ends at the next READY=1), never STOPPING=1, which
    // would make it wait for an exit that does not come and kill the service.
    let seen = notifications(&notify, Duration::from_secs(2));
    let reload = seen
        .iter()
        .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="));
    let ready_again = seen.iter().rposition(|m| m == "READY=1");
    assert!(reload.is_some() && ready_again > reload, "{seen:?}");
    assert!(!seen.iter().any(|m| m == "STOPPING=1"), "{seen:?}");

    // A SIGTERM that comes while an apply waits to restart stops the gateway for good.
    let session = login(web);
    let (status, _) = apply(web, &session, &format!("{original}\n# two\n"));
    assert_eq!(status, 202);
    let exit = gw.stop();
    assert!(exit.is_some(), "still running after SIGTERM:\n{}", gw.log());
    assert!(!gw.is_running());
    let seen = notifications(&notify, Duration::from_millis(500));
    assert!(
        !seen.iter().any(|m| m == "READY=1"),
        "it came back: {seen:?}"
    );
}

#[test]
fn a_sigterm_in_the_instant_of_the_restart_still_stops_cleanly() {
    let (mut gw, web) = gateway("");
    let session = setup(&gw, web, PASSWORD);
    let original = std::fs::read_to_string(gw.config_path()).unwrap();
    let (status, _) = apply(web, &session, &format!("{original}\n# three\n"));
    assert_eq!(status, 202);
    // Logged after the old runtime ended, right before the exec: the SIGTERM lands in the
    // old process's last instant or in the new one before it installed its handlers.
    let deadline = std::time::Instant::now() + WAIT;
    while !gw.log().contains("restarting on the applied config") {
        assert!(
            std::time::Instant::now() < deadline,
            "no restart:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let exit = gw.signal_and_wait(nix::sys::signal::Signal::SIGTERM, WAIT * 2);
    let log = gw.log();
    assert!(exit.is_some(), "the SIGTERM was lost: still running\n{log}");
    let exit = exit.unwrap();
    assert!(
        exit.success(),
        "not a clean stop ({exit}): the SIGTERM met no handler\n{log}"
    );
    assert!(log.contains("SIGTERM received"), "{log}");
}

#[test]
fn a_shell_sees_the_probation_and_confirms_with_holdfast_ctl() {
    use holdfast_tests::ctl::{ctl, ctl_json, socket};
    let (gw, web) = gateway("");
    let session = setup(&gw, web, PASSWORD);
    let original = std::fs::read_to_string(gw.config_path()).unwrap();
    let sock = socket(&gw);
    let status = ctl_json(&sock, &["config", "status"]);
    assert_eq!(status["probation"], Value::Null, "{status}");
    let (ok, _, err) = ctl(&sock, &["config", "confirm"]);
    assert!(
        !ok && err.contains("no applied config waits for a confirm"),
        "{err}"
    );

    let applied = format!("{original}\n# kept from a shell\n");
    let before = starts(&gw);
    let (status, answer) = apply(web, &session, &applied);
    assert_eq!(status, 202, "{answer}");
    let previous = answer["previous"]["id"].as_str().unwrap().to_owned();
    wait_restarted(&gw, web, before);
    let sock = socket(&gw);
    let status = ctl_json(&sock, &["config", "status"]);
    assert_eq!(
        status["probation"]["previous"],
        previous.as_str(),
        "{status}"
    );
    assert_eq!(
        status["file"],
        gw.config_path().display().to_string().as_str()
    );
    let (ok, out, err) = ctl(&sock, &["config", "status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("rolled back in") && out.contains(&previous),
        "{out}"
    );

    let (ok, out, err) = ctl(&sock, &["config", "confirm"]);
    assert!(ok, "{err}");
    assert!(out.contains("confirmed"), "{out}");
    let (ok, _, _) = ctl(&sock, &["config", "confirm"]);
    assert!(!ok, "once");
    let last_good = gw.dir.path().join("data/config.last-good.toml");
    assert_eq!(std::fs::read_to_string(&last_good).unwrap(), applied);
    let session = login(web);
    let (_, config) = get(web, &session, "/api/v1/config");
    assert_eq!(config["probation"], Value::Null, "{config}");
    let (ok, out, _) = ctl(&sock, &["config", "status"]);
    assert!(ok && out.contains("none"), "{out}");
}
