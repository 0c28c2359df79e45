//! holdfast-bench: an MQTT 3.1.1 load generator built on tokio and our own codec, so the same
//! loads run against any broker (mosquitto, holdfast) at more than a million messages a second.
//!
//! # Layout
//!
//! - `cli`: subcommands and flags.
//! - `client`: one connection (socket, buffers, CONNECT/SUBSCRIBE handshakes).
//! - `stamp`: the payload header (run, publisher, sequence, send time).
//! - `check`: per-subscriber order, gap, duplicate and latency bookkeeping.
//! - `load`: fanin, fanout, latency and flood: the publisher and subscriber tasks.
//! - `idle`: many idle connections and the broker's RSS per connection.
//! - `durable`: store-and-forward loads: QoS 1 ingest (PUBACK rate, latency, disk bytes) and
//!   the drain of a backlog on the cloud side.
//! - `rss`: reading and sampling the broker's VmRSS.
//! - `tls`: TLS connections (`--tls-ca`) and the `handshakes` load.
//! - `ws`: WebSocket connections (`--ws`, WSS with `--tls-ca`).
//! - `coap`: CoAP devices publishing through a gateway's `ps/` resource.
//! - `lwm2m`: LwM2M devices registering, observed and notifying through a gateway.
//! - `report`: text and JSON output.
//! - `error`: the one error type.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs, missing_debug_implementations)]
#![warn(clippy::await_holding_lock)]

mod check;
mod cli;
mod client;
mod coap;
mod durable;
mod error;
mod idle;
mod load;
mod lwm2m;
mod report;
mod rss;
mod stamp;
mod tls;
mod ws;

use clap::Parser;
use cli::{Cli, Command};
use client::Target;
use std::process::ExitCode;

/// Exit status of a run that could not be set up.
const EXIT_SETUP: u8 = 1;
/// Exit status of a run that completed with connection errors.
const EXIT_RUN_ERRORS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = cli.command.name();
    raise_fd_limit(&cli.command);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.common.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                mode,
                cli.common.json,
                &format!("cannot start the runtime: {e}"),
            )
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let common = &cli.common;
    let mode = cli.command.name();
    let tls = match &common.tls_ca {
        Some(ca) => {
            let name = common.tls_server_name.as_deref().unwrap_or(&common.host);
            match tls::TlsClient::new(ca, name, common.tls_resume) {
                Ok(t) => Some(t),
                Err(e) => return fail(mode, common.json, &e),
            }
        }
        None => None,
    };
    if let Command::Handshakes(a) = &cli.command {
        let Some(tls) = &tls else {
            return fail(mode, common.json, "handshakes needs --tls-ca");
        };
        let spec = tls::HandshakeSpec {
            concurrency: a.concurrency,
            duration: a.duration,
            resume: common.tls_resume,
        };
        let addr = format!("{}:{}", common.host, common.port);
        let prefix = format!("hfb-{:x}", std::process::id());
        return report_json(
            common.json,
            tls::handshakes(tls, &addr, &prefix, spec).await,
        );
    }
    let target = Target {
        host: common.host.clone(),
        port: common.port,
        username: common.username.clone(),
        password: common.password.clone(),
        keep_alive: common.keepalive,
        client_prefix: format!("hfb-{:x}", std::process::id()),
        persistent_subscribers: common.persistent_subs,
        tls,
        ws: common.ws,
    };
    if let Some(spec) = cli.command.idle_spec() {
        return match idle::run(&target, spec, common.pid).await {
            Ok(r) => {
                print(common.json, r.to_json(), r.to_text());
                exit_for(&r.errors, r.broker_gone)
            }
            Err(e) => fail(mode, common.json, &e.to_string()),
        };
    }
    match cli.command.ingest_spec() {
        Ok(Some(spec)) => {
            return match durable::ingest(&target, spec, common.pid).await {
                Ok(r) => report_json(common.json, r),
                Err(e) => fail(mode, common.json, &e.to_string()),
            }
        }
        Ok(None) => {}
        Err(e) => return fail(mode, common.json, &e),
    }
    if let Command::Coap(a) = &cli.command {
        let spec = coap::CoapSpec {
            coap_port: a.coap_port,
            devices: a.devices,
            confirmable: a.confirmable,
            window: a.window,
            payload: a.payload,
            duration: a.duration,
            rate: a.rate,
            no_response: a.no_response,
        };
        return match coap::run(&target, spec, common.pid).await {
            Ok(r) => report_json(common.json, r),
            Err(e) => fail(mode, common.json, &e.to_string()),
        };
    }
    if let Command::Lwm2m(a) = &cli.command {
        let spec = lwm2m::Lwm2mSpec {
            lwm2m_port: a.lwm2m_port,
            endpoints: a.endpoints,
            rate: a.rate,
            duration: a.duration,
        };
        return match lwm2m::run(&target, spec, common.pid).await {
            Ok(r) => report_json(common.json, r),
            Err(e) => fail(mode, common.json, &e.to_string()),
        };
    }
    if let Some(spec) = cli.command.drain_spec() {
        return match durable::drain(&target, spec).await {
            Ok(r) => report_json(common.json, r),
            Err(e) => fail(mode, common.json, &e.to_string()),
        };
    }
    let spec = match cli.command.load_spec() {
        Ok(Some(spec)) => spec,
        Ok(None) => return fail(mode, common.json, "nothing to run"),
        Err(e) => return fail(mode, common.json, &e),
    };
    match load::run(&target, spec, common.pid).await {
        Ok(r) => {
            print(common.json, r.to_json(), r.to_text());
            exit_for(&r.errors, r.rss.as_ref().is_some_and(|s| s.gone))
        }
        Err(e) => fail(mode, common.json, &e.to_string()),
    }
}

fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        print!("{text}");
    }
}

/// Prints a JSON report (pretty unless --json) and exits 3 when it lists errors.
fn report_json(json: bool, r: serde_json::Value) -> ExitCode {
    if json {
        println!("{r}");
    } else {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    }
    let errors = r["errors"].as_array().is_some_and(|e| !e.is_empty());
    if errors || r["timed_out"] == true {
        ExitCode::from(EXIT_RUN_ERRORS)
    } else {
        ExitCode::SUCCESS
    }
}

fn exit_for(errors: &[String], broker_gone: bool) -> ExitCode {
    if errors.is_empty() && !broker_gone {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUN_ERRORS)
    }
}

/// Reports a run that could not be set up; with --json also as a JSON line on stdout.
fn fail(mode: &str, json: bool, message: &str) -> ExitCode {
    eprintln!("holdfast-bench {mode}: {message}");
    if json {
        println!("{}", serde_json::json!({ "mode": mode, "error": message }));
    }
    ExitCode::from(EXIT_SETUP)
}

/// Raises the soft open-files limit to the hard one: the idle test holds thousands of sockets.
fn raise_fd_limit(command: &Command) {
    let wanted = match command {
        Command::Idle(a) => u64::from(a.connections) + 64,
        Command::Lwm2m(a) => u64::from(a.endpoints) + 64,
        _ => 1024,
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(got) if got < wanted => eprintln!(
            "holdfast-bench: warning: open files limited to {got}; raise `ulimit -n` (hard limit) for {wanted}"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("holdfast-bench: warning: cannot raise the open files limit: {e}"),
    }
}
