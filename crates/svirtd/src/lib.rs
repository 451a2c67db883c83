//! svirtd as a library: the API's OpenAPI description ([`api`]), the HTTP handlers
//! ([`server`]) and the routes joining them ([`router`]). The `svirtd` binary (src/main.rs)
//! parses its options, opens the manager and serves.

pub mod api;
pub mod server;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use svirt_manager::Manager;

use crate::server::HttpError;

/// The whole API.
pub fn router(manager: Manager) -> Router {
    Router::new()
        .route("/openapi.json", get(api::openapi))
        .route("/v1/host", get(server::host))
        .route("/v1/domains", get(server::list).post(server::create))
        .route("/v1/domains/{name}", get(server::info))
        .route("/v1/domains/{name}/xml", get(server::dumpxml))
        .route("/v1/domains/{name}/shutdown", post(server::shutdown))
        .route("/v1/domains/{name}/destroy", post(server::destroy))
        .route("/v1/domains/{name}/progress", get(server::progress))
        .route(
            "/v1/domains/{name}/qemu-monitor-command",
            post(server::qemu_monitor_command),
        )
        .fallback(server::fallback)
        .layer(axum::extract::DefaultBodyLimit::max(server::MAX_BODY_BYTES))
        .method_not_allowed_fallback(|| async {
            HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(manager)
}
