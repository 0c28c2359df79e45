//! `holdfast ctl` against a running gateway: listeners, clients (list, show, kick),
//! subscriptions, retained, stats, reload, a garbage request on the control socket, and a
//! gateway that is not running.

use holdfast_tests::ctl::{ctl, ctl_json, socket};
use holdfast_tests::{
    holdfast_bin, mosquitto_pub, run_with_timeout, wait_until, Gateway, MosquittoSub, TempDir,
};
use serde_json::Value;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn listeners_and_clients_show_a_connected_client_and_kick_disconnects_it() {
    let gw = Gateway::start();
    let sock = socket(&gw);
    let out_dir = TempDir::new("kick");
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &gw.port.to_string()])
        .args(["-V", "5", "-i", "kick-me", "-t", "k/#", "-d"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out_dir.path().join("out")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto_sub");
    assert!(wait_until(WAIT, || {
        ctl_json(&sock, &["clients", "list"])["clients"]["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["client_id"] == "kick-me"))
    }));

    let listeners = ctl_json(&sock, &["listeners"]);
    let l = &listeners["listeners"][0];
    assert_eq!(l["current_conn"], 1, "{listeners}");
    assert_eq!(l["running"], true);
    assert_eq!(l["listen_on"], format!("127.0.0.1:{}", gw.port));
    let (ok, table, _) = ctl(&sock, &["listeners"]);
    assert!(ok && table.starts_with("NAME"), "{table}");

    let (ok, list, _) = ctl(&sock, &["clients", "list"]);
    assert!(ok, "{list}");
    let row = list
        .lines()
        .find(|l| l.starts_with("kick-me"))
        .expect(&list);
    assert!(row.contains("127.0.0.1:") && row.contains(" 5 "), "{row}");
    let show = ctl_json(&sock, &["clients", "show", "kick-me"]);
    assert_eq!(show["client"]["connected"], true, "{show}");
    assert_eq!(show["client"]["protocol"], 5);
    assert_eq!(show["subscriptions"][0]["filter"], "k/#");

    let (ok, out, err) = ctl(&sock, &["clients", "kick", "kick-me"]);
    assert!(ok, "{err}");
    assert_eq!(out, "kicked kick-me\n");
    let exited = wait_until(WAIT, || matches!(sub.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = sub.kill();
    }
    let _ = sub.wait();
    assert!(exited, "mosquitto_sub -V 5 did not exit after the kick");
    assert!(
        gw.wait_for_log("reason=\"kicked\"", WAIT) || gw.wait_for_log("reason=kicked", WAIT),
        "{}",
        gw.log()
    );
    assert!(wait_until(WAIT, || {
        ctl_json(&sock, &["listeners"])["listeners"][0]["shutdown_count"]["kicked"] == 1
    }));
    let listeners = ctl_json(&sock, &["listeners"]);
    assert_eq!(listeners["listeners"][0]["current_conn"], 0, "{listeners}");

    let (ok, _, err) = ctl(&sock, &["clients", "kick", "nobody"]);
    assert!(!ok);
    assert!(err.contains("no connected client"), "{err}");
}

#[test]
fn subscriptions_retained_stats_and_reload_report_what_was_made() {
    let gw = Gateway::start();
    let sock = socket(&gw);
    let _sub = MosquittoSub::start(gw.port, "sensors/+/temp", &["-i", "watcher", "-q", "1"]);
    assert!(mosquitto_pub(gw.port, "sensors/a/temp", "21.5", &["-r"]));
    assert!(mosquitto_pub(gw.port, "sensors/b/temp", "1234567", &["-r"]));

    let subs = ctl_json(&sock, &["subscriptions"]);
    let rows = subs["subscriptions"]["rows"].as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r["client_id"] == "watcher"
            && r["filter"] == "sensors/+/temp"
            && r["qos"] == 1),
        "{subs}"
    );
    assert_eq!(subs["subscriptions"]["truncated"], false);

    assert!(wait_until(WAIT, || {
        ctl_json(&sock, &["retained"])["retained"]["rows"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["topic"] == "sensors/b/temp"))
    }));
    let (ok, table, _) = ctl(&sock, &["retained"]);
    assert!(ok, "{table}");
    let a = table
        .lines()
        .find(|l| l.starts_with("sensors/a/temp"))
        .expect(&table);
    assert!(a.split_whitespace().nth(1) == Some("4"), "{table}");
    let b = table
        .lines()
        .find(|l| l.starts_with("sensors/b/temp"))
        .expect(&table);
    assert!(b.split_whitespace().nth(1) == Some("7"), "{table}");

    let stats = ctl_json(&sock, &["stats"]);
    assert_eq!(stats["stats"]["subscriptions/count"], 1, "{stats}");
    assert!(
        stats["stats"]["retained/count"].as_u64() >= Some(2),
        "{stats}"
    );
    assert!(
        stats["stats"]["messages/received"].as_u64() >= Some(2),
        "{stats}"
    );
    let (ok, text, _) = ctl(&sock, &["stats"]);
    assert!(ok && text.contains("uptime_seconds"), "{text}");

    let (ok, out, err) = ctl(&sock, &["reload"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("password_file") && out.contains("not configured"),
        "{out}"
    );
    assert!(gw.wait_for_log("reloading the auth files", WAIT));

    let (ok, out, err) = ctl(&sock, &["bridges"]);
    assert!(ok, "{err}");
    assert_eq!(out, "no bridges configured\n");
}

#[test]
fn a_garbage_request_gets_an_error_and_the_gateway_keeps_serving() {
    let gw = Gateway::start();
    let sock = socket(&gw);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    for garbage in [
        &b"hello there\n"[..],
        b"{\"cmd\":\"rm -rf\"}\n",
        &[0xff; 70_000][..],
    ] {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        // The server may answer and close before it read everything of a huge request.
        let _ = s.write_all(garbage);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("an answer");
        let v: Value = serde_json::from_str(line.trim()).expect("JSON answer");
        assert!(v["error"].is_string(), "{line}");
    }
    // A client that connects and says nothing does not block the others.
    let _silent = UnixStream::connect(&sock).expect("connect");
    let stats = ctl_json(&sock, &["stats"]);
    assert!(stats["stats"]["uptime_seconds"].is_u64());
    assert!(mosquitto_pub(gw.port, "still/up", "x", &[]));
}

#[test]
fn ctl_against_a_stopped_gateway_exits_non_zero_with_a_clear_message() {
    let mut gw = Gateway::start();
    let sock = socket(&gw);
    assert!(gw.stop().is_some_and(|s| s.success()));
    assert!(!sock.exists(), "the socket file outlived the gateway");
    let (ok, out, err) = ctl(&sock, &["listeners"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the gateway at {}: ",
            sock.display()
        )),
        "{err}"
    );

    // The default socket comes from --data-dir.
    let data = gw.dir.path().join("data");
    let mut cmd = Command::new(holdfast_bin());
    cmd.args(["ctl", "--data-dir"]).arg(&data).arg("stats");
    let (ok, _, err) = run_with_timeout(&mut cmd, WAIT);
    assert!(!ok);
    assert!(err.contains(&sock.display().to_string()), "{err}");
}

/// The lines of a trace file that are log lines (not its `#` header and footer).
fn trace_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_client_trace_writes_that_clients_debug_lines_only_while_the_console_stays_at_info() {
    let port = holdfast_tests::free_port();
    let gw = Gateway::start_config_logging_at(&holdfast_tests::test_config(port, ""), port, "info");
    let sock = socket(&gw);
    let dir = TempDir::new("trace-client");
    let file = dir.path().join("traced.log");
    let (ok, out, err) = ctl(
        &sock,
        &["trace", "start", "client", "traced", file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("tracing client traced into"), "{out}");
    let (ok, _, err) = ctl(&sock, &["trace", "start", "client", "traced", "/tmp/x"]);
    assert!(!ok && err.contains("running already"), "{err}");
    let (ok, _, err) = ctl(&sock, &["trace", "start", "topic", "a/#/b", "/tmp/x"]);
    assert!(!ok && err.contains("not a topic filter"), "{err}");

    let traced = MosquittoSub::start(gw.port, "t/#", &["-i", "traced", "-q", "1"]);
    let other = MosquittoSub::start(gw.port, "t/#", &["-i", "other", "-q", "1"]);
    assert!(mosquitto_pub(
        gw.port,
        "t/1",
        "hello",
        &["-i", "pub-1", "-q", "1"]
    ));
    assert_eq!(traced.wait_for(1, WAIT), ["hello"]);
    assert_eq!(other.wait_for(1, WAIT), ["hello"]);
    let list = ctl_json(&sock, &["trace", "list"]);
    assert_eq!(list["traces"][0]["value"], "traced", "{list}");
    // The writer flushes whenever its queue runs empty: the file is readable while tracing.
    assert!(wait_until(WAIT, || trace_lines(&file)
        .iter()
        .any(|l| l.contains("PUBACK in"))));
    drop(traced);

    let stopped = ctl_json(&sock, &["trace", "stop"]);
    assert_eq!(stopped["stopped"][0]["kind"], "client", "{stopped}");
    let written = stopped["stopped"][0]["lines"].as_u64().unwrap();
    let lines = trace_lines(&file);
    assert_eq!(lines.len() as u64, written, "{lines:#?}");
    for (level, message) in [
        ("DEBUG", ": CONNECT"),
        ("INFO", ": client connected"),
        ("DEBUG", ": SUBSCRIBE"),
        ("DEBUG", ": PUBLISH out"),
        ("DEBUG", ": PUBACK in"),
    ] {
        let from_connection = format!("{level} holdfast::broker::connection");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&from_connection) && l.contains(message)),
            "no {level} {message:?} from the connection in {lines:#?}"
        );
    }
    for line in &lines {
        assert!(line.contains("client_id=traced"), "{line}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("# trace stopped"), "{text}");
    assert!(
        !text.contains("client_id=other") && !text.contains("pub-1"),
        "{text}"
    );
    // The console stays at its level: no debug line reached the gateway's log.
    assert!(!gw.log().contains("DEBUG"), "{}", gw.log());
    assert!(gw.log().contains("trace started") && gw.log().contains("trace stopped"));

    // After the stop, nothing more is written.
    assert!(mosquitto_pub(
        gw.port,
        "t/2",
        "x",
        &["-i", "traced", "-q", "1"]
    ));
    assert_eq!(trace_lines(&file).len() as u64, written);
    let (ok, _, err) = ctl(&sock, &["trace", "stop"]);
    assert!(!ok && err.contains("no such trace"), "{err}");
}

#[test]
fn a_topic_trace_follows_matching_topics_and_an_ip_trace_one_address() {
    let gw = Gateway::start();
    let sock = socket(&gw);
    let dir = TempDir::new("trace-topic");
    let topic_file = dir.path().join("topic.log");
    let ip_file = dir.path().join("ip.log");
    // A relative path (not a bare name) is taken relative to ctl's working directory.
    let mut cmd = Command::new(holdfast_bin());
    cmd.current_dir(dir.path())
        .args(["ctl", "--socket"])
        .arg(&sock)
        .args(["trace", "start", "topic", "plant/a/#", "./topic.log"]);
    let (ok, _, err) = run_with_timeout(&mut cmd, WAIT);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(
        &sock,
        &[
            "trace",
            "start",
            "ip",
            "127.0.0.2",
            ip_file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");

    let sub = MosquittoSub::start(gw.port, "plant/#", &["-i", "watcher"]);
    assert!(mosquitto_pub(
        gw.port,
        "plant/a/temp",
        "21",
        &["-i", "from-one"]
    ));
    assert!(mosquitto_pub(
        gw.port,
        "plant/b/temp",
        "22",
        &["-i", "from-one-b"]
    ));
    assert!(mosquitto_pub(
        gw.port,
        "plant/b/temp",
        "23",
        &["-i", "from-two", "-A", "127.0.0.2"]
    ));
    assert_eq!(sub.wait_for(3, WAIT).len(), 3);
    let stopped = ctl_json(&sock, &["trace", "stop", "topic"]);
    assert_eq!(stopped["stopped"].as_array().unwrap().len(), 1, "{stopped}");
    assert_eq!(
        ctl_json(&sock, &["trace", "list"])["traces"][0]["kind"],
        "ip"
    );
    ctl_json(&sock, &["trace", "stop", "ip", "127.0.0.2"]);

    let lines = trace_lines(&topic_file);
    // The publish in (from-one) and the delivery out (watcher) of plant/a/temp; nothing of b.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("PUBLISH in") && l.contains("client_id=from-one ")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("PUBLISH out") && l.contains("client_id=watcher")),
        "{lines:#?}"
    );
    for l in &lines {
        assert!(l.contains("topic=plant/a/temp"), "{l}");
    }

    let lines = trace_lines(&ip_file);
    assert!(lines.iter().any(|l| l.contains("PUBLISH in")), "{lines:#?}");
    for l in &lines {
        assert!(l.contains("peer=127.0.0.2:"), "{l}");
        assert!(!l.contains("client_id=from-one"), "{l}");
    }
}

#[test]
fn a_bare_trace_file_name_lands_under_the_data_dir() {
    let gw = Gateway::start();
    let sock = socket(&gw);
    let (ok, out, err) = ctl(
        &sock,
        &["trace", "start", "client", "someone", "someone.log"],
    );
    assert!(ok, "{err}");
    let file = gw
        .dir
        .path()
        .join("data")
        .join("traces")
        .join("someone.log");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(file.exists());
    let (ok, _, err) = ctl(&sock, &["trace", "start", "client", "other", "sub/dir.log"]);
    assert!(
        !ok,
        "a relative path with a directory is made absolute by the CLI: {err}"
    );
    ctl_json(&sock, &["trace", "stop"]);
}

#[test]
fn factory_reset_is_refused_while_running_and_then_clears_the_state() {
    let mut gw = Gateway::start();
    assert!(mosquitto_pub(gw.port, "cfg/rate", "10", &["-r", "-q", "1"]));
    assert_eq!(
        holdfast_tests::retained_once(gw.port, "cfg/rate").as_deref(),
        Some("10")
    );
    let data = gw.dir.path().join("data");
    let reset = |yes: bool| {
        let mut cmd = Command::new(holdfast_bin());
        cmd.arg("factory-reset").arg("--data-dir").arg(&data);
        if yes {
            cmd.arg("--yes");
        }
        run_with_timeout(&mut cmd, WAIT)
    };
    let (ok, _, err) = reset(true);
    assert!(!ok && err.contains("is running"), "{err}");
    gw.stop();
    let (ok, _, err) = reset(false);
    assert!(!ok && err.contains("--yes"), "{err}");
    assert!(
        data.join("state").exists(),
        "nothing is removed without --yes"
    );
    let (ok, out, err) = reset(true);
    assert!(ok, "{err}");
    assert!(out.contains("state"), "{out}");
    gw.restart();
    assert_eq!(holdfast_tests::retained_once(gw.port, "cfg/rate"), None);
}
