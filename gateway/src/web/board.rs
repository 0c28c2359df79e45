//! `GET /api/v1/board`: the board's identity, health (CPU, memory, disk, temperature), status
//! and alarms, as the board task publishes them retained under `$SYS/brokers/{node}/board/`.
//!
//! Reads them as a client of the broker (`$web`, one connection kept and made again when it
//! is closed), never from the board task or the router's data.

use super::App;
use crate::broker::client::{Client, ClientOptions, Protocol};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

/// The web UI's broker client id.
const CLIENT_ID: &str = "$web";
/// The retained board topics read, under `$SYS/brokers/{node}/board/`.
const TOPICS: [&str; 4] = ["identity", "health", "status", "alarms"];

/// The web's broker client, connected on first use.
pub(super) type BoardClient = tokio::sync::Mutex<Option<Client>>;

/// The board's identity, health, status and alarms.
#[utoipa::path(get, path = "/api/v1/board", tag = "board",
    responses(
        (status = 200, description = "The board's reports (null until published)", body = Object),
        (status = 503, description = "The reports cannot be read", body = super::schema::ErrorBody),
    ))]
pub(super) async fn board(State(app): State<App>) -> Response {
    match read(&app).await {
        Ok(reports) => Json(Value::Object(reports)).into_response(),
        Err(e) => super::error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot read the board's reports: {e}"),
        ),
    }
}

/// The board's retained reports by name (`identity`, `health`, `status`, `alarms`); a report
/// not published yet is `null`.
pub(super) async fn read(
    app: &App,
) -> Result<Map<String, Value>, crate::broker::client::ConnectError> {
    let node = app.broker.config.node.name.clone();
    let mut slot = app.board_client.lock().await;
    if slot.as_ref().is_none_or(|c| c.closed().is_some()) {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let opts = ClientOptions::new(CLIENT_ID, Protocol::Web, peer);
        *slot = Some(Client::connect(&app.broker, opts).await?);
    }
    let mut out = Map::new();
    if let Some(client) = slot.as_mut() {
        for name in TOPICS {
            let topic = format!("$SYS/brokers/{node}/board/{name}");
            let value = match client.read_retained(&topic) {
                Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
                _ => Value::Null,
            };
            out.insert(name.to_owned(), value);
        }
    }
    Ok(out)
}
