//! The config routes: read the file, check a text with `holdfast check`'s checker, apply it
//! (the gateway restarts on it and the applied config is on probation until confirmed, rolled
//! back when it does not come up or is not confirmed in time), confirm, and the kept versions.
//!
//! Owns only the HTTP shape; [`crate::config_file`] owns the file, its versions, the probation
//! and the roll back. Never writes the file any other way. A check or an apply runs one at a
//! time (a config's tree takes many times its text in memory).

use super::schema::{
    AppliedBody, CheckedBody, ConfigView, ConfirmedBody, ErrorBody, ProblemsBody, VersionText,
};
use super::{error, App};
use crate::config::Problem;
use crate::config_file::{ApplyError, MAX_CONFIG_BYTES};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;

/// How long the answer to an apply has to reach the browser before the gateway stops.
const RESTART_DELAY: Duration = Duration::from_millis(500);
/// Problems listed at most in one answer (the count says how many there are).
const MAX_PROBLEMS: usize = 200;
/// How long a check or an apply waits for the one running before it.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// A config text to check.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct ConfigBody {
    /// The whole TOML file (at most 1 MiB).
    text: String,
}

/// A config text to apply, and the text it was edited from.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct ApplyBody {
    /// The whole TOML file (at most 1 MiB).
    text: String,
    /// The `digest` of the text the edit started from (`GET /api/v1/config`): when the file
    /// changed since, nothing is written (409).
    base: String,
}

fn problems_json(problems: &[Problem]) -> Value {
    problems
        .iter()
        .take(MAX_PROBLEMS)
        .map(|p| json!({ "line": p.line, "key": p.key, "message": p.message, "text": p.to_string() }))
        .collect()
}

fn unprocessable(problems: &[Problem]) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": format!("the config has {} problem(s)", problems.len()),
            "problems": problems_json(problems),
        })),
    )
        .into_response()
}

/// Waits for the one check or apply that may run, or answers 503.
async fn one_at_a_time(app: &App) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    match tokio::time::timeout(QUEUE_WAIT, app.config_ops.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "another check or apply is running; try again",
        )),
    }
}

/// `GET /api/v1/config`: the file's path and text, whether it can be applied here, the
/// probation of the last apply, and the kept versions.
#[utoipa::path(get, path = "/api/v1/config", tag = "config",
    responses(
        (status = 200, description = "The config file", body = ConfigView),
        (status = 500, description = "The file cannot be read", body = ErrorBody),
    ))]
pub(super) async fn read(State(app): State<App>) -> Response {
    let file = app.config_file.clone();
    let read = tokio::task::spawn_blocking(move || {
        (
            file.read(),
            file.versions(),
            file.not_editable(),
            file.probation(),
        )
    })
    .await;
    match read {
        Ok((Ok(text), versions, not_editable, probation)) => Json(json!({
            "file": app.config_file.path().map(|p| p.display().to_string()),
            "editable": not_editable.is_none(),
            "not_editable": not_editable,
            "digest": crate::config_file::digest(&text),
            "text": text,
            "versions": versions,
            "probation": probation,
        }))
        .into_response(),
        Ok((Err(e), ..)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the config file: {e}"),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the config file",
        ),
    }
}

/// `POST /api/v1/config/check`: 200 when the text is good, 422 with every problem and its
/// line otherwise. Nothing is written.
#[utoipa::path(post, path = "/api/v1/config/check", tag = "config", request_body = ConfigBody,
    responses(
        (status = 200, description = "No problem", body = CheckedBody),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 413, description = "Larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The problems, each at its line (the first 200)", body = ProblemsBody),
        (status = 503, description = "Another check or apply is running", body = ErrorBody),
    ))]
pub(super) async fn check(
    State(app): State<App>,
    super::JsonBody(body): super::JsonBody<ConfigBody>,
) -> Response {
    if body.text.len() > MAX_CONFIG_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &ApplyError::TooLarge.to_string(),
        );
    }
    let permit = match one_at_a_time(&app).await {
        Ok(p) => p,
        Err(busy) => return busy,
    };
    let file = app.config_file.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        file.check(&body.text).map(|_| ())
    })
    .await;
    match checked {
        Ok(Ok(())) => Json(json!({ "ok": true, "problems": [] })).into_response(),
        Ok(Err(problems)) => unprocessable(&problems),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the check failed"),
    }
}

/// `POST /api/v1/config/apply`: 202 and a restart on the new file, on probation until
/// confirmed; 422 with the problems (the file untouched); 409 when it cannot be applied now.
#[utoipa::path(post, path = "/api/v1/config/apply", tag = "config", request_body = ApplyBody,
    responses(
        (status = 202, description = "Applied; the gateway restarts on it", body = AppliedBody),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 409, description = "No file, a file the gateway may not write, the file changed since `base`, or the gateway restarts or stops already", body = ErrorBody),
        (status = 413, description = "Larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The problems, each at its line (nothing written)", body = ProblemsBody),
        (status = 500, description = "The file could not be written", body = ErrorBody),
        (status = 503, description = "Another check or apply is running", body = ErrorBody),
    ))]
pub(super) async fn apply(
    State(app): State<App>,
    super::JsonBody(body): super::JsonBody<ApplyBody>,
) -> Response {
    let permit = match one_at_a_time(&app).await {
        Ok(p) => p,
        Err(busy) => return busy,
    };
    let file = app.config_file.clone();
    let window = app.config.confirm_within;
    let shutdown = app.broker.shutdown.clone();
    let runtime = tokio::runtime::Handle::current();
    // The stop is scheduled by the same blocking task that replaced the file: an answer that
    // never reaches its client (a dropped link, the request timeout) still restarts.
    let applied = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let applied = file.apply(&body.text, &body.base, window);
        if applied.is_ok() {
            runtime.spawn(async move {
                tokio::time::sleep(RESTART_DELAY).await;
                shutdown.cancel();
            });
        }
        applied
    })
    .await;
    match applied {
        Ok(Ok(previous)) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "restarting": true,
                "previous": previous,
                "confirm_within": window.as_secs(),
            })),
        )
            .into_response(),
        Ok(Err(ApplyError::Invalid(problems))) => unprocessable(&problems),
        Ok(Err(
            e @ (ApplyError::NoFile
            | ApplyError::ReadOnly(_)
            | ApplyError::Busy
            | ApplyError::Changed),
        )) => error(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e @ ApplyError::TooLarge)) => error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        Ok(Err(e @ ApplyError::Io { .. })) => {
            tracing::error!("web: config apply failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the apply failed"),
    }
}

/// `POST /api/v1/config/confirm`: keeps the applied config (it becomes the last known good
/// one); without it the config is rolled back when its window closes.
#[utoipa::path(post, path = "/api/v1/config/confirm", tag = "config",
    responses(
        (status = 200, description = "Confirmed", body = ConfirmedBody),
        (status = 409, description = "Nothing waits for a confirm", body = ErrorBody),
    ))]
pub(super) async fn confirm(State(app): State<App>) -> Response {
    let file = app.config_file.clone();
    let confirmed = tokio::task::spawn_blocking(move || file.confirm())
        .await
        .unwrap_or(false);
    if confirmed {
        Json(json!({ "confirmed": true })).into_response()
    } else {
        error(
            StatusCode::CONFLICT,
            "no applied config waits for a confirm",
        )
    }
}

/// `GET /api/v1/config/versions/{id}`: a kept version's text.
#[utoipa::path(get, path = "/api/v1/config/versions/{id}", tag = "config",
    params(("id" = String, Path, description = "The version's id")),
    responses(
        (status = 200, description = "The kept text", body = VersionText),
        (status = 404, description = "No such version", body = ErrorBody),
    ))]
pub(super) async fn version(State(app): State<App>, Path(id): Path<String>) -> Response {
    let file = app.config_file.clone();
    let lookup = id.clone();
    match tokio::task::spawn_blocking(move || file.version(&lookup)).await {
        Ok(Some(text)) => Json(json!({ "id": id, "text": text })).into_response(),
        _ => error(StatusCode::NOT_FOUND, "no such config version"),
    }
}
