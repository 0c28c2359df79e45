//! The technician's UI end to end in headless Chromium (Debian's `chromium`, driven by
//! Playwright from npm with the system browser: `tests/web-e2e/ui.mjs`), against the built
//! binary with a real mosquitto_sub client and a real upstream mosquitto behind a bridge.
//!
//! This test owns the processes and answers the script's requests (`ASK ...` lines): check a
//! kick with `holdfast ctl`, stop and start the upstream, publish while it is down, count what
//! the cloud received, check the config file was not touched by a refused mistake. The
//! screenshots (desktop and phone sizes) are kept in `target/test-artifacts/web-ui/`.

use holdfast_tests::ctl::{ctl_json, socket};
use holdfast_tests::{free_port, mosquitto_pub, CloudRecorder, Gateway, Mosquitto, MosquittoSub};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// Messages published while the upstream is down.
const QUEUED: usize = 50;

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web-e2e")
}

#[test]
fn a_technician_sets_up_kicks_watches_a_bridge_and_sees_a_config_mistake_at_its_line() {
    assert!(
        std::path::Path::new(&chromium()).exists(),
        "Debian's chromium is needed (scripts/test-all.sh installs it)"
    );
    assert!(
        e2e_dir().join("node_modules/playwright-core").exists(),
        "npm ci --prefix tests/web-e2e first (scripts/test-all.sh does it)"
    );
    let mut cloud = Mosquitto::start(free_port());
    let recorder = CloudRecorder::start(cloud.port, "cloud-app", "site/#");
    let port = free_port();
    let web = free_port();
    let config = format!(
        r#"
[node]
name = "gw-ui"

[mqtt]
sys_interval = "1s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[[bridges]]
name = "cloud"
server = "mqtt://127.0.0.1:{cloud}"
client_id = "gw-ui"
remote_prefix = "site/"
qos = 1
backoff_min = "100ms"
backoff_max = "1s"
forward = ["sensors/#"]

[board]
# Not about the test machine's disk (see tests/src/web.rs).
disk_free_alarm = 0

[web]
bind = "127.0.0.1:{web}"
"#,
        cloud = cloud.port
    );
    let gw = Gateway::start_config(&config, port);
    assert!(gw.wait_for_log("web: API listening", WAIT), "{}", gw.log());
    let _sub = MosquittoSub::start(port, "alerts/#", &["-i", "tech-sub", "-V", "5"]);
    let token = std::fs::read_to_string(gw.dir.path().join("data/setup-token")).expect("token");
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/web-ui");
    let config_before = std::fs::read_to_string(gw.config_path()).expect("config");
    let pid = gw.pid();

    let mut script = Command::new("node")
        .arg(e2e_dir().join("ui.mjs"))
        .env("HOLDFAST_URL", format!("http://127.0.0.1:{web}/"))
        .env("SETUP_TOKEN", token.trim())
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", chromium())
        .env("KICK_CLIENT", "tech-sub")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut answers = script.stdin.take().expect("stdin");
    let lines = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let mut transcript = Vec::new();
    let mut passed = false;
    for line in lines {
        let Ok(line) = line else { break };
        println!("{line}");
        transcript.push(line.clone());
        let Some(what) = line.strip_prefix("ASK ") else {
            passed |= line == "PASS";
            continue;
        };
        let verdict: Result<(), String> = match what {
            "check the kick" => {
                let listeners = ctl_json(&socket(&gw), &["listeners"]);
                let kicked = listeners["listeners"][0]["shutdown_count"]["kicked"].as_u64();
                if kicked == Some(1) {
                    Ok(())
                } else {
                    Err(format!("kicked = {kicked:?}"))
                }
            }
            "stop the upstream" => {
                cloud.stop();
                Ok(())
            }
            "publish while the upstream is down" => (0..QUEUED).try_for_each(|i| {
                if mosquitto_pub(port, "sensors/t", &i.to_string(), &["-q", "1"]) {
                    Ok(())
                } else {
                    Err(format!("mosquitto_pub of message {i} failed"))
                }
            }),
            "publish as traced-by-ui" => {
                if mosquitto_pub(port, "alerts/x", "1", &["-i", "traced-by-ui"]) {
                    Ok(())
                } else {
                    Err("mosquitto_pub failed".into())
                }
            }
            "start the upstream" => {
                cloud.restart();
                Ok(())
            }
            "check the drained messages" => {
                let all = recorder.wait_until(WAIT, |m| {
                    m.iter().filter(|r| r.topic == "site/sensors/t").count() >= QUEUED
                });
                if all {
                    Ok(())
                } else {
                    Err(format!("the cloud has {} messages", recorder.count()))
                }
            }
            "check the config file is untouched" => {
                match std::fs::read_to_string(gw.config_path()) {
                    Ok(now) if now == config_before => Ok(()),
                    _ => Err("the refused config was written".into()),
                }
            }
            "check the applied config is kept" => {
                let now = std::fs::read_to_string(gw.config_path()).unwrap_or_default();
                let kept =
                    std::fs::read_to_string(gw.dir.path().join("data/config.last-good.toml"))
                        .unwrap_or_default();
                if !now.contains("# applied from the web UI") {
                    Err("the applied config is not in the file".into())
                } else if kept != now {
                    Err("the kept config is not the last known good one".into())
                } else if gw.pid() != pid {
                    Err("the gateway is another process".into())
                } else {
                    Ok(())
                }
            }
            other => Err(format!("unknown request {other:?}")),
        };
        let reply = match verdict {
            Ok(()) => "ok\n".to_owned(),
            Err(why) => format!("fail {why}\n"),
        };
        let _ = answers.write_all(reply.as_bytes());
    }
    let status = script.wait().expect("node exit");
    assert!(
        passed && status.success(),
        "the UI walk failed ({status}):\n{}\ngateway log:\n{}",
        transcript.join("\n"),
        gw.log()
    );
    for shot in [
        "desktop-overview",
        "desktop-bridge-down",
        "desktop-config-mistake",
        "phone-overview",
        "phone-config",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}"
        );
    }
}
