//! The log and trace routes: the live tail of the log (`GET /api/v1/logs?after=N`), and
//! `holdfast ctl trace` over HTTP (start, list, stop, download and delete the files).
//!
//! Owns only the HTTP shape: the lines come from [`crate::log_tail`], the traces from
//! [`crate::ops`]. A trace started here always writes under `{data_dir}/traces/` with a name
//! the gateway chooses (`{kind}-{unix ms}.log`); a download or delete names only such a file,
//! never a path.

use super::schema::{ErrorBody, StoppedBody, TracesBody};
use super::{error, App};
use crate::trace::{TraceKind, TraceSpec};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Lines one read returns at most (and by default).
const MAX_TAIL: usize = 1000;
/// Size limit of a trace file started from the web unless the request sets a smaller one.
const WEB_TRACE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Trace files kept under `{data_dir}/traces/` (the oldest stopped ones go first when a new
/// trace starts): they share the flash with the bridges' queues.
const KEPT_TRACE_FILES: usize = 16;
/// Bytes of trace files kept, likewise.
const KEPT_TRACE_BYTES: u64 = 64 * 1024 * 1024;

/// Where the reader is.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TailQuery {
    /// The last line number the reader has (0: none).
    #[serde(default)]
    after: u64,
    /// Lines at most (and at most 1000).
    #[serde(default = "max_tail")]
    limit: usize,
}

fn max_tail() -> usize {
    MAX_TAIL
}

/// `GET /api/v1/logs?after=N&limit=N`: the lines after line N (the newest `limit` of them).
#[utoipa::path(get, path = "/api/v1/logs", tag = "logs", params(TailQuery),
    responses(
        (status = 200, description = "The lines after `after`", body = crate::log_tail::Tail),
        (status = 400, description = "Bad numbers", body = ErrorBody),
    ))]
pub(super) async fn tail(
    query: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "expected ?after=N&limit=N");
    };
    if i64::try_from(q.after).is_err() || i64::try_from(q.limit).is_err() {
        return error(StatusCode::BAD_REQUEST, "after and limit are below 2^63");
    }
    Json(crate::log_tail::after(q.after, q.limit.min(MAX_TAIL))).into_response()
}

/// `GET /api/v1/traces`: the running traces and the trace files kept.
#[utoipa::path(get, path = "/api/v1/traces", tag = "logs",
    responses((status = 200, description = "Running traces and kept files", body = TracesBody)))]
pub(super) async fn list(State(app): State<App>) -> Response {
    let dir = traces_dir(&app);
    let files = tokio::task::spawn_blocking(move || trace_files(&dir))
        .await
        .unwrap_or_default();
    Json(json!({ "running": crate::ops::trace_list(), "files": files })).into_response()
}

/// A trace to start.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct StartBody {
    /// What it follows.
    kind: TraceKind,
    /// The client id, topic filter, or address/CIDR network.
    #[schema(min_length = 1, max_length = 256)]
    value: String,
    /// Size limit of the file in bytes (at most 16 MiB, the default).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16_777_216)]
    max_bytes: Option<u64>,
}

/// `POST /api/v1/traces`: starts a trace into a new file under `{data_dir}/traces/`.
#[utoipa::path(post, path = "/api/v1/traces", tag = "logs", request_body = StartBody,
    responses(
        (status = 201, description = "Started; the file is open", body = crate::trace::TraceInfo),
        (status = 400, description = "A bad body, or the trace cannot start", body = ErrorBody),
        (status = 500, description = "The trace did not start", body = ErrorBody),
    ))]
pub(super) async fn start(
    State(app): State<App>,
    super::JsonBody(body): super::JsonBody<StartBody>,
) -> Response {
    if body
        .max_bytes
        .is_some_and(|m| m == 0 || m > WEB_TRACE_MAX_BYTES)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "max_bytes is 1..=16777216 (16 MiB)",
        );
    }
    if body.value.is_empty() || body.value.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "a trace's value has 1..=256 bytes");
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let spec = TraceSpec {
        kind: body.kind,
        value: body.value,
        file: format!("{}-{millis}.log", body.kind.as_str()).into(),
        max_bytes: Some(
            body.max_bytes
                .unwrap_or(WEB_TRACE_MAX_BYTES)
                .min(WEB_TRACE_MAX_BYTES),
        ),
    };
    let broker = app.broker.clone();
    let dir = traces_dir(&app);
    let started = tokio::task::spawn_blocking(move || {
        prune(&dir);
        crate::ops::trace_start(&broker, spec)
    })
    .await;
    match started {
        Ok(Ok(info)) => (StatusCode::CREATED, Json(info)).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the trace did not start"),
    }
}

/// Which traces to stop (all without a kind).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StopQuery {
    /// Only traces of this kind.
    kind: Option<TraceKind>,
    /// Only the trace of this value.
    value: Option<String>,
}

/// `DELETE /api/v1/traces?kind=&value=`: stops the matching traces (all without a kind).
#[utoipa::path(delete, path = "/api/v1/traces", tag = "logs", params(StopQuery),
    responses(
        (status = 200, description = "What each stopped trace wrote", body = StoppedBody),
        (status = 400, description = "A bad kind", body = ErrorBody),
    ))]
pub(super) async fn stop(
    query: Result<Query<StopQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected ?kind=client|topic|ip&value=...",
        );
    };
    let stopped =
        tokio::task::spawn_blocking(move || crate::ops::trace_stop(q.kind, q.value.as_deref()))
            .await
            .unwrap_or_default();
    Json(json!({ "stopped": stopped })).into_response()
}

/// `GET /api/v1/traces/files/{name}`: a trace file, streamed.
#[utoipa::path(get, path = "/api/v1/traces/files/{name}", tag = "logs",
    params(("name" = String, Path, description = "The file's name")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/plain"),
        (status = 404, description = "No such trace file", body = ErrorBody),
    ))]
pub(super) async fn download(State(app): State<App>, Path(name): Path<String>) -> Response {
    let Some(path) = trace_file(&app, &name) else {
        return error(StatusCode::NOT_FOUND, "no such trace file");
    };
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return error(StatusCode::NOT_FOUND, "no such trace file");
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response =
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// `DELETE /api/v1/traces/files/{name}`: removes a trace file that is not being written.
#[utoipa::path(delete, path = "/api/v1/traces/files/{name}", tag = "logs",
    params(("name" = String, Path, description = "The file's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such trace file", body = ErrorBody),
        (status = 409, description = "The trace is running", body = ErrorBody),
        (status = 500, description = "The file cannot be removed", body = ErrorBody),
    ))]
pub(super) async fn remove(State(app): State<App>, Path(name): Path<String>) -> Response {
    let Some(path) = trace_file(&app, &name) else {
        return error(StatusCode::NOT_FOUND, "no such trace file");
    };
    if crate::ops::trace_list().iter().any(|t| t.file == path) {
        return error(StatusCode::CONFLICT, "the trace is running; stop it first");
    }
    match tokio::fs::remove_file(&path).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no such trace file")
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn traces_dir(app: &App) -> std::path::PathBuf {
    app.broker.config.node.data_dir.join("traces")
}

/// A trace file's path, when `name` is one the web would have made (`{kind}-{digits}.log`).
fn trace_file(app: &App, name: &str) -> Option<std::path::PathBuf> {
    let stem = name.strip_suffix(".log")?;
    let (kind, digits) = stem.split_once('-')?;
    let known = ["client", "topic", "ip"].contains(&kind);
    (known && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| traces_dir(app).join(name))
}

/// Removes the oldest trace files that are not being written until at most
/// `KEPT_TRACE_FILES - 1` files and `KEPT_TRACE_BYTES - WEB_TRACE_MAX_BYTES` bytes are left:
/// room for the trace about to start.
fn prune(dir: &std::path::Path) {
    let running: Vec<std::path::PathBuf> = crate::ops::trace_list()
        .into_iter()
        .map(|t| t.file)
        .collect();
    let mut files = trace_files(dir);
    let mut total: u64 = files.iter().map(|f| f.size).sum();
    while files.len() >= KEPT_TRACE_FILES
        || total > KEPT_TRACE_BYTES.saturating_sub(WEB_TRACE_MAX_BYTES)
    {
        // Oldest last; a running trace's file stays.
        let Some(i) = files
            .iter()
            .rposition(|f| !running.contains(&dir.join(&f.name)))
        else {
            break;
        };
        let old = files.remove(i);
        total = total.saturating_sub(old.size);
        match std::fs::remove_file(dir.join(&old.name)) {
            Ok(()) => {
                tracing::info!(file = %old.name, "web: an old trace file removed to make room")
            }
            Err(e) => tracing::warn!(file = %old.name, "web: cannot remove an old trace file: {e}"),
        }
    }
}

/// The trace files under the traces directory, newest first (name and size).
fn trace_files(dir: &std::path::Path) -> Vec<super::schema::TraceFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, String, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().into_string().ok()?;
            meta.is_file().then(|| {
                (
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    name,
                    meta.len(),
                )
            })
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files
        .into_iter()
        .map(|(_, name, size)| super::schema::TraceFile { name, size })
        .collect()
}
