//! The broker and device-gateway routes: what `holdfast ctl` shows and does (listeners,
//! clients with search and paging, kick, subscriptions, retained, stats, bridges, the device
//! gateways, reload), answered by the control socket's own code (`ctl::server::answer`) or
//! [`crate::ops`], so the API and the CLI share one implementation.
//!
//! Owns only the HTTP shape and its OpenAPI description; never touches the router directly.

use super::schema::{
    BridgesBody, ClientBody, ClientsBody, ErrorBody, KickBody, ListenersBody, RetainedBody,
    StatsBody, SubscriptionsBody,
};
use super::{error, App};
use crate::ctl::Request as CtlRequest;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Answers with what `holdfast ctl` answers (an `error` answer is a 404).
async fn ctl(app: &App, request: CtlRequest) -> Response {
    let answer = crate::ctl::server::answer(request, &app.broker, Some(&app.config_file)).await;
    if let Some(message) = answer.get("error").and_then(Value::as_str) {
        return error(StatusCode::NOT_FOUND, message);
    }
    Json(answer).into_response()
}

/// The broker's counters, the numbers of `$SYS/brokers/{node}/stats/...`.
#[utoipa::path(get, path = "/api/v1/stats", tag = "broker",
    responses((status = 200, description = "Counters and gauges by name", body = StatsBody)))]
pub(super) async fn stats(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Stats).await
}

/// Every listener's connections and counters.
#[utoipa::path(get, path = "/api/v1/listeners", tag = "broker",
    responses((status = 200, description = "The listeners, in config order", body = ListenersBody)))]
pub(super) async fn listeners(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Listeners).await
}

/// The paging of `GET /api/v1/clients`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ClientQuery {
    /// Part of a client id, user name or peer address (ASCII case ignored); empty: all.
    #[serde(default)]
    #[param(max_length = 256)]
    search: String,
    /// Rows to skip.
    #[serde(default)]
    offset: usize,
    /// Rows at most (capped at 10,000). Default 1000.
    #[serde(default = "default_page")]
    limit: usize,
}

fn default_page() -> usize {
    1000
}

/// One page of the sessions, by client id, and how many match.
#[utoipa::path(get, path = "/api/v1/clients", tag = "broker", params(ClientQuery),
    responses(
        (status = 200, description = "A page of sessions", body = ClientsBody),
        (status = 400, description = "A bad search or page", body = ErrorBody),
    ))]
pub(super) async fn clients(
    State(app): State<App>,
    query: Result<Query<ClientQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected ?search=TEXT&offset=N&limit=N (numbers)",
        );
    };
    if i64::try_from(q.offset).is_err() || i64::try_from(q.limit).is_err() {
        return error(StatusCode::BAD_REQUEST, "offset and limit are below 2^63");
    }
    if q.search.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "a search has at most 256 bytes");
    }
    // A search over every session takes milliseconds of CPU: off the async workers, so the
    // connections they serve do not wait behind it.
    let broker = app.broker.clone();
    let (search, offset, limit) = (q.search, q.offset, q.limit);
    match tokio::task::spawn_blocking(move || {
        crate::ops::clients_page(&broker, &search, offset, limit)
    })
    .await
    {
        Ok(listing) => Json(json!({ "clients": listing, "offset": offset })).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the client search failed: {e}"),
        ),
    }
}

/// One session and its subscriptions.
#[utoipa::path(get, path = "/api/v1/clients/{id}", tag = "broker",
    params(("id" = String, Path, description = "The client id")),
    responses(
        (status = 200, description = "The session", body = ClientBody),
        (status = 404, description = "No session with this id", body = ErrorBody),
    ))]
pub(super) async fn client(State(app): State<App>, Path(id): Path<String>) -> Response {
    ctl(&app, CtlRequest::Client { client_id: id }).await
}

/// Closes a client's connection (v5: DISCONNECT 0x98); its session stays as configured.
#[utoipa::path(post, path = "/api/v1/clients/{id}/kick", tag = "broker",
    params(("id" = String, Path, description = "The client id")),
    responses(
        (status = 200, description = "Kicked", body = KickBody),
        (status = 404, description = "No connected client with this id", body = ErrorBody),
    ))]
pub(super) async fn kick(State(app): State<App>, Path(id): Path<String>) -> Response {
    ctl(&app, CtlRequest::Kick { client_id: id }).await
}

/// Every subscription (at most 10,000), by client id then filter.
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "broker",
    responses((status = 200, description = "The subscriptions", body = SubscriptionsBody)))]
pub(super) async fn subscriptions(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Subscriptions).await
}

/// Every retained message (at most 10,000): topic, size and QoS.
#[utoipa::path(get, path = "/api/v1/retained", tag = "broker",
    responses((status = 200, description = "The retained messages", body = RetainedBody)))]
pub(super) async fn retained(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Retained).await
}

/// The bridges: link state, queue, forwarded, reconnects, last error.
#[utoipa::path(get, path = "/api/v1/bridges", tag = "broker",
    responses((status = 200, description = "The bridges, in config order", body = BridgesBody)))]
pub(super) async fn bridges(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Bridges).await
}

/// Reloads the auth files (password file, client-id allowlist, ACL) without dropping clients.
#[utoipa::path(post, path = "/api/v1/reload", tag = "broker",
    responses((status = 200, description = "What each file did", body = Object)))]
pub(super) async fn reload(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Reload).await
}

/// The CoAP gateway's clients and counters.
#[utoipa::path(get, path = "/api/v1/coap", tag = "devices",
    responses(
        (status = 200, description = "Peers and counters", body = Object),
        (status = 404, description = "The CoAP gateway is off", body = ErrorBody),
    ))]
pub(super) async fn coap(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Coap).await
}

/// The LwM2M server's endpoints and counters.
#[utoipa::path(get, path = "/api/v1/lwm2m", tag = "devices",
    responses(
        (status = 200, description = "Endpoints and counters", body = Object),
        (status = 404, description = "The LwM2M server is off", body = ErrorBody),
    ))]
pub(super) async fn lwm2m(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Lwm2m).await
}

/// The Modbus pollers' devices and counters.
#[utoipa::path(get, path = "/api/v1/modbus", tag = "devices",
    responses(
        (status = 200, description = "Devices and counters", body = Object),
        (status = 404, description = "The Modbus pollers are off", body = ErrorBody),
    ))]
pub(super) async fn modbus(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Modbus).await
}

/// The raw serial ports and counters.
#[utoipa::path(get, path = "/api/v1/serial", tag = "devices",
    responses(
        (status = 200, description = "Ports and counters", body = Object),
        (status = 404, description = "No raw serial ports", body = ErrorBody),
    ))]
pub(super) async fn serial(State(app): State<App>) -> Response {
    ctl(&app, CtlRequest::Serial).await
}
