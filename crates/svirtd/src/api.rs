//! The OpenAPI document of svirtd's API: the types are `svirt_api`'s, the paths the
//! server's handlers.

use utoipa::OpenApi;

pub use svirt_api::*;

/// The OpenAPI description of the API, generated from the handlers and the types above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "svirtd",
        description = "svirt daemon API: HTTP/1.1 + JSON over the unix socket <run-dir>/svirtd.sock (mode 0600, root only). Errors are {\"error\": \"one line\"} with a 4xx/5xx status.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::server::host,
        crate::server::list,
        crate::server::create,
        crate::server::info,
        crate::server::dumpxml,
        crate::server::shutdown,
        crate::server::destroy,
        crate::server::progress,
        crate::server::qemu_monitor_command,
    ),
    components(schemas(
        CreateRequest, ShutdownRequest, DomainXml, ApiError, State, Summary, Reason, Exit,
        Labels, Resource, Info, Driver, Recovered, Host, TreePhase, TreeProgress
    )),
    tags((name = "domains", description = "Guests: start, inspect, stop, QMP passthrough"),
         (name = "host", description = "What the daemon chose at startup"))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn openapi() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

/// The OpenAPI document as pretty JSON (served at `/openapi.json`, kept in docs/openapi.json).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The package version would make the committed document stale on every release bump.
    doc.info.version = "1".into();
    match doc.to_pretty_json() {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        Err(e) => format!("{{\"error\":\"cannot render OpenAPI: {e}\"}}\n"),
    }
}
