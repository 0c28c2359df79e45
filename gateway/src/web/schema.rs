//! The web API's OpenAPI 3 document: the bodies the routes answer and take, described as
//! types (the handlers' `#[utoipa::path]` attributes name them), the two ways in (an API
//! token as a bearer header, or a login session's cookie with its CSRF header on changes),
//! and the answers every guarded route may give (401, and 403 on a change).
//!
//! Owns only descriptions: nothing here is on a request's path but the served document.
//! CI checks the document against the running binary (schemathesis), so a body that drifts
//! from its description fails there.

use crate::ops::{BridgeView, ClientView, ListenerView, Listing, RetainedView, SubscriptionView};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, ResponseBuilder};
use utoipa::ToSchema;

/// An error: what went wrong, phrased for the person who asked.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    /// The reason.
    pub error: String,
}

/// `GET /api/v1/setup`.
#[derive(Serialize, ToSchema)]
pub(super) struct SetupStatus {
    /// True until the admin account exists.
    pub setup_required: bool,
}

/// A session's CSRF token (send it as `X-CSRF-Token` on every change); none for an API token.
#[derive(Serialize, ToSchema)]
pub(super) struct CsrfBody {
    /// The token.
    pub csrf: Option<String>,
}

/// `GET /api/v1/stats`.
#[derive(Serialize, ToSchema)]
pub(super) struct StatsBody {
    /// Counters and gauges by name (`messages/received`, `connections/count`, ...).
    pub stats: BTreeMap<String, u64>,
}

/// `GET /api/v1/listeners`.
#[derive(Serialize, ToSchema)]
pub(super) struct ListenersBody {
    /// The listeners.
    pub listeners: Vec<ListenerView>,
}

/// `GET /api/v1/clients`.
#[derive(Serialize, ToSchema)]
pub(super) struct ClientsBody {
    /// The page.
    pub clients: Listing<ClientView>,
    /// The rows skipped.
    pub offset: usize,
}

/// `GET /api/v1/clients/{id}`.
#[derive(Serialize, ToSchema)]
pub(super) struct ClientBody {
    /// The session.
    pub client: ClientView,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionView>,
}

/// `POST /api/v1/clients/{id}/kick`.
#[derive(Serialize, ToSchema)]
pub(super) struct KickBody {
    /// The client id kicked.
    pub kicked: String,
}

/// `GET /api/v1/subscriptions`.
#[derive(Serialize, ToSchema)]
pub(super) struct SubscriptionsBody {
    /// The subscriptions.
    pub subscriptions: Listing<SubscriptionView>,
}

/// `GET /api/v1/retained`.
#[derive(Serialize, ToSchema)]
pub(super) struct RetainedBody {
    /// The retained messages.
    pub retained: Listing<RetainedView>,
}

/// `GET /api/v1/bridges`.
#[derive(Serialize, ToSchema)]
pub(super) struct BridgesBody {
    /// The bridges.
    pub bridges: Vec<BridgeView>,
}

/// `GET /api/v1/tokens`.
#[derive(Serialize, ToSchema)]
pub(super) struct TokensBody {
    /// The tokens (never the secrets).
    pub tokens: Vec<super::auth::TokenInfo>,
}

/// `POST /api/v1/tokens`: the secret, shown this once.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedToken {
    /// Send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// Its id and name.
    pub info: super::auth::TokenInfo,
}

/// One problem the checker found.
#[derive(Serialize, ToSchema)]
pub(super) struct ProblemBody {
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// Key path (`listeners[1].bind`); empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// The whole `FILE:LINE: key: message` line.
    pub text: String,
}

/// A config that did not pass the checker (nothing was written).
#[derive(Serialize, ToSchema)]
pub(super) struct ProblemsBody {
    /// How many problems.
    pub error: String,
    /// Each problem.
    pub problems: Vec<ProblemBody>,
}

/// `POST /api/v1/config/check` when the text is good.
#[derive(Serialize, ToSchema)]
pub(super) struct CheckedBody {
    /// Always true here.
    pub ok: bool,
    /// Always empty here.
    pub problems: Vec<ProblemBody>,
}

/// `GET /api/v1/config`.
#[derive(Serialize, ToSchema)]
pub(super) struct ConfigView {
    /// The config file; none on built-in defaults.
    pub file: Option<String>,
    /// Whether it can be applied from here.
    pub editable: bool,
    /// Why not, when it cannot (no file, or a directory the gateway may not write).
    pub not_editable: Option<String>,
    /// The last apply, while it waits for its confirm.
    pub probation: Option<crate::config_file::probation::Probation>,
    /// The file's text (the commented example on built-in defaults).
    pub text: String,
    /// SHA-256 of `text`, hex: send it back as `base` with an apply.
    pub digest: String,
    /// Kept versions, newest first.
    pub versions: Vec<crate::config_file::Version>,
}

/// `POST /api/v1/config/apply`: the gateway restarts on the new file.
#[derive(Serialize, ToSchema)]
pub(super) struct AppliedBody {
    /// Always true.
    pub restarting: bool,
    /// The version the new file replaced (kept).
    pub previous: crate::config_file::Version,
    /// Seconds, from the restart, to confirm the new config before it is rolled back.
    pub confirm_within: u64,
}

/// `POST /api/v1/config/confirm`.
#[derive(Serialize, ToSchema)]
pub(super) struct ConfirmedBody {
    /// Always true.
    pub confirmed: bool,
}

/// `GET /api/v1/config/versions/{id}`.
#[derive(Serialize, ToSchema)]
pub(super) struct VersionText {
    /// The version.
    pub id: String,
    /// Its text.
    pub text: String,
}

/// A trace file under `{data_dir}/traces/`.
#[derive(Serialize, ToSchema)]
pub(super) struct TraceFile {
    /// Its name (download it at `/api/v1/traces/files/{name}`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `GET /api/v1/traces`.
#[derive(Serialize, ToSchema)]
pub(super) struct TracesBody {
    /// The traces running now.
    pub running: Vec<crate::trace::TraceInfo>,
    /// The trace files kept, newest first.
    pub files: Vec<TraceFile>,
}

/// `DELETE /api/v1/traces`.
#[derive(Serialize, ToSchema)]
pub(super) struct StoppedBody {
    /// What each stopped trace wrote.
    pub stopped: Vec<crate::trace::TraceInfo>,
}

/// The document's frame: title, version, security schemes.
#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "Holdfast gateway API",
    description = "The technician's REST API: everything `holdfast ctl` does, the configuration, logs and traces, API tokens. Every route but setup, login and this document needs an API token (`Authorization: Bearer`) or a login session (cookie `holdfast_session`; changes also need `X-CSRF-Token`)."
))]
pub(super) struct ApiDoc;

/// Adds the two ways in and their refusals (401; 403 on a change without the CSRF token) to
/// every operation of `api`.
pub(super) fn guard(api: &mut OpenApi) {
    let unauthorized = || error_response("Log in first, or send a live API token");
    let forbidden =
        || error_response("A change from a session needs its CSRF token in X-CSRF-Token");
    let requirements = vec![
        utoipa::openapi::security::SecurityRequirement::new("token", Vec::<String>::new()),
        utoipa::openapi::security::SecurityRequirement::new("session", Vec::<String>::new()),
    ];
    for item in api.paths.paths.values_mut() {
        let ops = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.put, true),
        ];
        for (op, change) in ops {
            let Some(op) = op.as_mut() else { continue };
            op.responses
                .responses
                .insert("401".to_owned(), RefOr::T(unauthorized()));
            if change {
                op.responses
                    .responses
                    .insert("403".to_owned(), RefOr::T(forbidden()));
            }
            op.security = Some(requirements.clone());
        }
    }
}

/// A refusal with an [`ErrorBody`].
fn error_response(description: &str) -> utoipa::openapi::Response {
    let body = utoipa::openapi::ContentBuilder::new()
        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "ErrorBody",
        ))))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
}

/// The whole document: `open` (setup, login, this document) and `guarded` (the rest).
pub(super) fn document(open: OpenApi, mut guarded: OpenApi) -> OpenApi {
    guard(&mut guarded);
    let mut api = <ApiDoc as utoipa::OpenApi>::openapi();
    api.merge(open);
    api.merge(guarded);
    // A body over `[web].max_body_size` is refused before its route reads it; a `Host` that
    // is not this gateway's is refused before anything.
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.delete,
            &mut item.put,
        ]
        .into_iter()
        .flatten()
        {
            op.responses.responses.insert(
                "421".to_owned(),
                RefOr::T(error_response(
                    "The Host header names a host this gateway does not answer to",
                )),
            );
        }
        for op in [&mut item.post, &mut item.put].into_iter().flatten() {
            if op.request_body.is_some() {
                op.responses
                    .responses
                    .entry("413".to_owned())
                    .or_insert_with(|| RefOr::T(error_response("Larger than [web].max_body_size")));
            }
        }
    }
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API token (POST /api/v1/tokens)"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("holdfast_session"))),
    );
    components
        .schemas
        .entry("ErrorBody".to_owned())
        .or_insert_with(<ErrorBody as utoipa::PartialSchema>::schema);
    api
}
