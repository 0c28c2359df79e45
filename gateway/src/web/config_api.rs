//! The config routes: read the file, check a text with `holdfast check`'s checker, apply it
//! (the gateway restarts on it, rolled back when it does not come up), and the kept versions.
//!
//! Owns only the HTTP shape; [`crate::config_file`] owns the file, its versions and the roll
//! back. Never writes the file any other way.

use super::schema::{AppliedBody, CheckedBody, ConfigView, ErrorBody, ProblemsBody, VersionText};
use super::{error, App};
use crate::config::Problem;
use crate::config_file::ApplyError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;

/// How long the answer to an apply has to reach the browser before the gateway stops.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// A config text sent to check or apply.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct ConfigBody {
    /// The whole TOML file.
    text: String,
    /// Apply only: the `digest` of the text the edit started from (`GET /api/v1/config`); when
    /// the file changed since, nothing is written (409).
    #[serde(default)]
    base: Option<String>,
}

fn problems_json(problems: &[Problem]) -> Value {
    problems
        .iter()
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

/// `GET /api/v1/config`: the file's path and text, whether it can be changed here, and the
/// kept versions.
#[utoipa::path(get, path = "/api/v1/config", tag = "config",
    responses(
        (status = 200, description = "The config file", body = ConfigView),
        (status = 500, description = "The file cannot be read", body = ErrorBody),
    ))]
pub(super) async fn read(State(app): State<App>) -> Response {
    let file = app.config_file.clone();
    let read = tokio::task::spawn_blocking(move || (file.read(), file.versions())).await;
    match read {
        Ok((Ok(text), versions)) => Json(json!({
            "file": app.config_file.path().map(|p| p.display().to_string()),
            "editable": app.config_file.path().is_some(),
            "digest": crate::config_file::digest(&text),
            "text": text,
            "versions": versions,
        }))
        .into_response(),
        Ok((Err(e), _)) => error(
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
        (status = 422, description = "The problems, each at its line", body = ProblemsBody),
    ))]
pub(super) async fn check(
    State(app): State<App>,
    super::JsonBody(body): super::JsonBody<ConfigBody>,
) -> Response {
    let file = app.config_file.clone();
    match tokio::task::spawn_blocking(move || file.check(&body.text).map(|_| ())).await {
        Ok(Ok(())) => Json(json!({ "ok": true, "problems": [] })).into_response(),
        Ok(Err(problems)) => unprocessable(&problems),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the check failed"),
    }
}

/// `POST /api/v1/config/apply`: 202 and a restart on the new file; 422 with the problems (the
/// file untouched); 409 without a file or while another apply restarts the gateway.
#[utoipa::path(post, path = "/api/v1/config/apply", tag = "config", request_body = ConfigBody,
    responses(
        (status = 202, description = "Applied; the gateway restarts on it", body = AppliedBody),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 409, description = "No config file, an apply already restarts it, or the file changed since `base`", body = ErrorBody),
        (status = 413, description = "Larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The problems, each at its line (nothing written)", body = ProblemsBody),
        (status = 500, description = "The file could not be written", body = ErrorBody),
    ))]
pub(super) async fn apply(
    State(app): State<App>,
    super::JsonBody(body): super::JsonBody<ConfigBody>,
) -> Response {
    let file = app.config_file.clone();
    let applied =
        tokio::task::spawn_blocking(move || file.apply(&body.text, body.base.as_deref())).await;
    match applied {
        Ok(Ok(previous)) => {
            let shutdown = app.broker.shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RESTART_DELAY).await;
                shutdown.cancel();
            });
            (
                StatusCode::ACCEPTED,
                Json(json!({ "restarting": true, "previous": previous })),
            )
                .into_response()
        }
        Ok(Err(ApplyError::Invalid(problems))) => unprocessable(&problems),
        Ok(Err(e @ (ApplyError::NoFile | ApplyError::Busy | ApplyError::Changed))) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Ok(Err(e @ ApplyError::TooLarge)) => error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        Ok(Err(e @ ApplyError::Io { .. })) => {
            tracing::error!("web: config apply failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the apply failed"),
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
