//! The control socket server: answers `holdfast ctl` on `{data_dir}/ctl.sock`.
//!
//! Owns the socket file (removed and re-created at start with mode 0600, removed at shutdown)
//! and the per-request bounds: one request line of at most [`MAX_REQUEST`] bytes, answered
//! within [`REQUEST_TIMEOUT`], at most [`MAX_CONCURRENT`] requests at once. It must never take
//! the gateway down: a bad request gets `{"error": ...}` and the socket keeps serving. It talks
//! to the broker only through [`crate::ops`].

use super::{error_response, parse_request, Request, MAX_REQUEST};
use crate::broker::Broker;
use crate::config_file::ConfigFile;
use crate::ops;
use crate::trace::TraceSpec;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// How long one request may take, reading and answering included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests served at once; more wait in the accept queue.
pub const MAX_CONCURRENT: usize = 8;

/// A bound control socket, ready to serve.
#[derive(Debug)]
pub struct CtlSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Binds the control socket at `path`, replacing a stale one, readable by the owner only.
pub fn bind(path: &Path) -> std::io::Result<CtlSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(CtlSocket {
        listener,
        path: path.to_owned(),
    })
}

/// Serves requests until shutdown, then removes the socket file. `config_file` is the file the
/// gateway runs on (for `ctl config`).
pub async fn run(
    socket: CtlSocket,
    broker: Arc<Broker>,
    config_file: Option<ConfigFile>,
    tracker: TaskTracker,
) {
    let config_file = config_file.map(Arc::new);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    tracing::info!(socket = %socket.path.display(), "control socket listening");
    loop {
        let permit = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let broker = broker.clone();
        let config_file = config_file.clone();
        tracker.spawn(async move {
            let serve = serve_one(stream, &broker, config_file.as_deref());
            if tokio::time::timeout(REQUEST_TIMEOUT, serve).await.is_err() {
                tracing::debug!("control request timed out");
            }
            drop(permit);
        });
    }
    if let Err(e) = std::fs::remove_file(&socket.path) {
        tracing::debug!(error = %e, "cannot remove the control socket");
    }
}

async fn serve_one(stream: UnixStream, broker: &Arc<Broker>, config_file: Option<&ConfigFile>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let answer = match reader.read_until(b'\n', &mut line).await {
        Err(e) => error_response(&format!("cannot read the request: {e}")),
        Ok(_) if line.len() > MAX_REQUEST => {
            error_response(&format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(_) => match parse_request(line.trim_ascii()) {
            Ok(req) => answer(req, broker, config_file).await,
            Err(e) => {
                tracing::debug!(error = %e, "bad control request");
                error_response(&e)
            }
        },
    };
    let mut out = answer.to_string().into_bytes();
    out.push(b'\n');
    if let Err(e) = write.write_all(&out).await {
        tracing::debug!(error = %e, "cannot write the control answer");
    }
    let _ = write.shutdown().await;
}

fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| error_response(&format!("cannot encode: {e}")))
}

/// The answer to one request (the JSON the client formats). `config_file` is the file the
/// gateway runs on, when the caller has it.
pub async fn answer(req: Request, broker: &Arc<Broker>, config_file: Option<&ConfigFile>) -> Value {
    match req {
        Request::Listeners => json!({ "listeners": to_value(ops::listeners(broker)) }),
        Request::Clients => {
            // Every session: milliseconds of CPU, off the async workers.
            let broker = broker.clone();
            match tokio::task::spawn_blocking(move || ops::clients(&broker)).await {
                Ok(listing) => json!({ "clients": to_value(listing) }),
                Err(e) => error_response(&format!("listing the clients failed: {e}")),
            }
        }
        Request::Client { client_id } => match ops::client(broker, &client_id) {
            Some((client, subscriptions)) => {
                json!({ "client": to_value(client), "subscriptions": to_value(subscriptions) })
            }
            None => error_response(&format!("no session with client id {client_id:?}")),
        },
        Request::Kick { client_id } => {
            if ops::kick(broker, &client_id) {
                json!({ "kicked": client_id })
            } else {
                error_response(&format!("no connected client with id {client_id:?}"))
            }
        }
        Request::Subscriptions => {
            json!({ "subscriptions": to_value(ops::subscriptions(broker)) })
        }
        Request::Retained => json!({ "retained": to_value(ops::retained(broker)) }),
        Request::Stats => {
            let mut stats = stats_json(ops::stats(broker));
            for (k, v) in ops::webhook_stats(broker) {
                stats.insert(k, Value::from(v));
            }
            json!({ "stats": stats })
        }
        Request::Bridges => json!({ "bridges": to_value(ops::bridges(broker)) }),
        Request::Coap => match ops::coap(broker) {
            Some(view) => {
                json!({ "peers": to_value(view.peers), "stats": stats_json(view.stats) })
            }
            None => error_response("the CoAP gateway is off (no [coap] section)"),
        },
        Request::Lwm2m => match ops::lwm2m(broker) {
            Some(view) => {
                json!({ "endpoints": to_value(view.endpoints), "stats": stats_json(view.stats) })
            }
            None => error_response("the LwM2M server is off (no [lwm2m] section)"),
        },
        Request::Modbus => match ops::modbus(broker) {
            Some(view) => {
                json!({ "devices": to_value(view.devices), "stats": stats_json(view.stats) })
            }
            None => error_response("the Modbus pollers are off (no [modbus] section)"),
        },
        Request::Serial => match ops::serial(broker) {
            Some(view) => json!({ "ports": to_value(view.ports), "stats": stats_json(view.stats) }),
            None => error_response("no raw serial ports (no [serial] section)"),
        },
        req @ (Request::TraceStart { .. } | Request::TraceStop { .. } | Request::TraceList) => {
            answer_trace(broker.clone(), req).await
        }
        req @ (Request::ConfigStatus | Request::ConfigConfirm) => match config_file {
            Some(file) => answer_config(file.clone(), req).await,
            None => error_response("this gateway's config file is not known here"),
        },
        Request::Reload => {
            let broker = broker.clone();
            match tokio::task::spawn_blocking(move || ops::reload(&broker)).await {
                Ok(report) => json!({ "reload": {
                    "ok": report.is_ok(),
                    "password_file": outcome(&report.password_file),
                    "clientid_allowlist": outcome(&report.clientid_allowlist),
                    "acl_file": outcome(&report.acl_file),
                }}),
                Err(e) => error_response(&format!("reload failed: {e}")),
            }
        }
    }
}

/// Trace requests open, flush and close files: they run off the async workers.
async fn answer_trace(broker: Arc<Broker>, req: Request) -> Value {
    let work = move || match req {
        Request::TraceStart {
            kind,
            value,
            file,
            max_bytes,
        } => match ops::trace_start(
            &broker,
            TraceSpec {
                kind,
                value,
                file,
                max_bytes,
            },
        ) {
            Ok(info) => json!({ "started": to_value(info) }),
            Err(e) => error_response(&e),
        },
        Request::TraceStop { kind, value } => {
            let stopped = ops::trace_stop(kind, value.as_deref());
            if stopped.is_empty() {
                error_response("no such trace is running")
            } else {
                json!({ "stopped": to_value(stopped) })
            }
        }
        _ => json!({ "traces": to_value(ops::trace_list()) }),
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => error_response(&format!("trace request failed: {e}")),
    }
}

/// `ctl config status|confirm`: the web UI's probation, read and ended by the same code.
async fn answer_config(file: ConfigFile, req: Request) -> Value {
    let work = move || match req {
        Request::ConfigConfirm => {
            if file.confirm() {
                json!({ "confirmed": true })
            } else {
                error_response("no applied config waits for a confirm")
            }
        }
        _ => json!({
            "file": file.path().map(|p| p.display().to_string()),
            "probation": to_value(file.probation()),
        }),
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => error_response(&format!("config request failed: {e}")),
    }
}

fn outcome(o: &crate::auth::ReloadOutcome) -> String {
    use crate::auth::ReloadOutcome;
    match o {
        ReloadOutcome::NotConfigured => "not configured".to_owned(),
        ReloadOutcome::Reloaded { entries } => format!("reloaded ({entries} entries)"),
        ReloadOutcome::Kept { error } => format!("kept the previous version: {error}"),
    }
}

/// Named counters as a JSON object.
fn stats_json(stats: Vec<(&'static str, u64)>) -> serde_json::Map<String, Value> {
    stats
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect()
}
