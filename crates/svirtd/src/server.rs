//! The HTTP server's handlers, error mapping, and the API socket (the routes are in the
//! crate root, [`crate::router`]).
//!
//! Handlers are thin: they decode the request, run the (blocking) manager call on the
//! blocking pool, and encode the answer. The manager does all the work and all the logging
//! of what it did to the host.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use serde_json::Value;
use svirt_manager::{Manager, ManagerError, StartOptions};
use tokio::net::UnixListener;

use svirt_api::{self as api, ApiError, CreateRequest, DomainXml, ListQuery, ShutdownRequest};

/// An error answer: a status and one line.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The HTTP status of a manager error: the caller's mistakes are 4xx, the host's 5xx.
pub fn status_of(e: &ManagerError) -> StatusCode {
    match e {
        ManagerError::Domain(_) | ManagerError::Plan(_) => StatusCode::BAD_REQUEST,
        ManagerError::NoSuchGuest(_) => StatusCode::NOT_FOUND,
        ManagerError::GuestExists(_) | ManagerError::BadState { .. } => StatusCode::CONFLICT,
        ManagerError::Qmp(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ManagerError> for HttpError {
    fn from(e: ManagerError) -> Self {
        HttpError::new(status_of(&e), e.to_string())
    }
}

/// The largest request body svirtd reads: room for a domain XML at its size limit
/// ([`svirt_domain::MAX_XML_BYTES`]) even if JSON escapes every byte of it (6×), so any
/// XML within its limit reaches the parser, which names that limit when it is exceeded.
pub const MAX_BODY_BYTES: usize = 8 * svirt_domain::MAX_XML_BYTES;

impl From<JsonRejection> for HttpError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body over svirtd's limit of {MAX_BODY_BYTES} bytes (a domain XML may have at most {} bytes)",
                    svirt_domain::MAX_XML_BYTES
                ),
            );
        }
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {}", e.body_text()),
        )
    }
}

impl From<QueryRejection> for HttpError {
    fn from(e: QueryRejection) -> Self {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("bad query: {}", e.body_text()),
        )
    }
}

type HttpResult<T> = Result<T, HttpError>;

/// Runs a blocking manager call.
///
/// On the multi-threaded runtime (svirtd's) the request's own worker runs it, its other
/// tasks moving to another worker (`block_in_place`): no hand-off to a blocking thread and
/// back, which cost two thread wake-ups (0.2-0.4 ms) on every start. On a current-thread
/// runtime, a blocking thread. A panic is a 500 either way, not a dropped connection.
async fn blocking<T, F>(f: F) -> HttpResult<T>
where
    F: FnOnce() -> Result<T, ManagerError> + Send + 'static,
    T: Send + 'static,
{
    let panicked = |what: String| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {what}"),
        )
    };
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        })
        .map_err(|_| panicked("the request's handler panicked".into()))?
        .map_err(Into::into);
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(panicked(e.to_string())),
    }
}

/// What the daemon chose at startup.
#[utoipa::path(get, path = "/v1/host", tag = "host",
    responses((status = 200, description = "Driver stack, accelerator, recovery report", body = api::Host)))]
pub async fn host(State(m): State<Manager>) -> Json<api::Host> {
    Json(m.report().clone().into())
}

/// Lists guests (running and paused; with `all`, also shut-off ones).
#[utoipa::path(get, path = "/v1/domains", tag = "domains", params(ListQuery),
    responses((status = 200, description = "Guests", body = [api::Summary]),
              (status = 500, description = "Store failure", body = ApiError)))]
pub async fn list(
    State(m): State<Manager>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> HttpResult<Json<Vec<api::Summary>>> {
    let Query(q) = q?;
    let guests = blocking(move || m.list(q.all)).await?;
    Ok(Json(guests.into_iter().map(Into::into).collect()))
}

/// Starts a guest from domain XML; answers once QEMU's QMP answers.
#[utoipa::path(post, path = "/v1/domains", tag = "domains", request_body = CreateRequest,
    responses((status = 201, description = "Started", body = api::Info),
              (status = 400, description = "Bad XML or plan refused", body = ApiError),
              (status = 409, description = "A guest of that name exists", body = ApiError),
              (status = 413, description = "Request body over svirtd's limit", body = ApiError),
              (status = 500, description = "Start failed (rolled back)", body = ApiError)))]
pub async fn create(
    State(m): State<Manager>,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> HttpResult<(StatusCode, Json<api::Info>)> {
    let Json(req) = body?;
    let paused = req.paused;
    let info = blocking(move || m.start(&req.xml, StartOptions { paused })).await?;
    tracing::info!(guest = %info.name, pid = ?info.pid, paused, "started");
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Everything about one guest.
#[utoipa::path(get, path = "/v1/domains/{name}", tag = "domains",
    params(("name" = String, Path, description = "Guest name")),
    responses((status = 200, description = "The guest", body = api::Info),
              (status = 404, description = "No such guest", body = ApiError)))]
pub async fn info(
    State(m): State<Manager>,
    UrlPath(name): UrlPath<String>,
) -> HttpResult<Json<api::Info>> {
    Ok(Json(blocking(move || m.info(&name)).await?.into()))
}

/// The live domain XML, with the labels in use.
#[utoipa::path(get, path = "/v1/domains/{name}/xml", tag = "domains",
    params(("name" = String, Path, description = "Guest name")),
    responses((status = 200, description = "Live XML", body = DomainXml),
              (status = 404, description = "No such guest", body = ApiError)))]
pub async fn dumpxml(
    State(m): State<Manager>,
    UrlPath(name): UrlPath<String>,
) -> HttpResult<Json<DomainXml>> {
    Ok(Json(DomainXml {
        xml: blocking(move || m.dumpxml(&name)).await?,
    }))
}

/// ACPI power-down, then kill after the timeout; answers once everything is restored.
#[utoipa::path(post, path = "/v1/domains/{name}/shutdown", tag = "domains",
    params(("name" = String, Path, description = "Guest name")),
    request_body(content = Option<ShutdownRequest>, description = "Optional timeout"),
    responses((status = 200, description = "Stopped and restored", body = api::Exit),
              (status = 404, description = "No such guest", body = ApiError),
              (status = 409, description = "Not running", body = ApiError),
              (status = 500, description = "QEMU did not exit after SIGKILL", body = ApiError)))]
pub async fn shutdown(
    State(m): State<Manager>,
    UrlPath(name): UrlPath<String>,
    body: Option<Json<ShutdownRequest>>,
) -> HttpResult<Json<api::Exit>> {
    let timeout = body.and_then(|Json(b)| b.timeout_secs);
    let log_name = name.clone();
    let exit = blocking(move || match timeout {
        Some(s) => m.shutdown_timeout(&name, Duration::from_secs(s)),
        None => m.shutdown(&name),
    })
    .await?;
    tracing::info!(guest = %log_name, ?exit.reason, "shut down");
    Ok(Json(exit.into()))
}

/// Kills QEMU at once; answers once everything is restored.
#[utoipa::path(post, path = "/v1/domains/{name}/destroy", tag = "domains",
    params(("name" = String, Path, description = "Guest name")),
    responses((status = 200, description = "Killed and restored", body = api::Exit),
              (status = 404, description = "No such guest", body = ApiError),
              (status = 409, description = "Not running", body = ApiError),
              (status = 500, description = "QEMU did not exit after SIGKILL", body = ApiError)))]
pub async fn destroy(
    State(m): State<Manager>,
    UrlPath(name): UrlPath<String>,
) -> HttpResult<Json<api::Exit>> {
    let log_name = name.clone();
    let exit = blocking(move || m.destroy(&name)).await?;
    tracing::info!(guest = %log_name, "destroyed");
    Ok(Json(exit.into()))
}

/// The tree operations (filesystem shares, TPM state) the guest's start or stop is running
/// now, for progress bars: poll it while `POST /v1/domains` or a shutdown/destroy is in
/// flight. Empty when none (and always for a guest without trees).
#[utoipa::path(get, path = "/v1/domains/{name}/progress", tag = "domains",
    params(("name" = String, Path, description = "Guest name")),
    responses((status = 200, description = "Trees being labeled or restored", body = [api::TreeProgress]),
              (status = 404, description = "No such guest", body = ApiError)))]
pub async fn progress(
    State(m): State<Manager>,
    UrlPath(name): UrlPath<String>,
) -> HttpResult<Json<Vec<api::TreeProgress>>> {
    // Not on the blocking pool: one short lock, and a start may be holding pool threads.
    let trees = m.progress(&name)?;
    Ok(Json(trees.into_iter().map(Into::into).collect()))
}

/// Passes one QMP command through to the guest's QEMU (like `virsh qemu-monitor-command`).
/// The answer is QEMU's reply as is: `{"return": …}` or `{"error": {"class", "desc"}}`,
/// both with status 200 (QEMU answered; whether it refused is in the reply).
#[utoipa::path(post, path = "/v1/domains/{name}/qemu-monitor-command", tag = "domains",
    params(("name" = String, Path, description = "Guest name")),
    request_body(content = Object, description = "A QMP command: {\"execute\": …, \"arguments\": {…}}"),
    responses((status = 200, description = "QEMU's reply", body = Object),
              (status = 400, description = "Not a QMP command object", body = ApiError),
              (status = 404, description = "No such guest", body = ApiError),
              (status = 409, description = "Not running or paused", body = ApiError),
              (status = 502, description = "QMP conversation failed", body = ApiError)))]
pub async fn qemu_monitor_command(
    State(m): State<Manager>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> HttpResult<Json<Value>> {
    let Json(cmd) = body?;
    let Some(execute) = cmd.get("execute").and_then(Value::as_str).map(String::from) else {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "a QMP command is a JSON object with a string \"execute\" member",
        ));
    };
    let log_name = name.clone();
    let reply = blocking(move || m.qemu_monitor_command(&name, cmd)).await?;
    if let Some(err) = reply.get("error") {
        tracing::warn!(guest = %log_name, %execute, error = %err, "QMP command refused by QEMU");
    } else {
        tracing::info!(guest = %log_name, %execute, "QMP command passed through");
    }
    Ok(Json(reply))
}

pub(crate) async fn fallback() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint (see GET /openapi.json)",
    )
}

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another daemon answers on the socket.
    #[error("another svirtd is already listening on {0}")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Fails when another daemon answers at `path`; removes a stale socket left by a crash.
pub fn check_socket_free(path: &Path) -> Result<(), SocketError> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SocketError::Io {
                op: "remove stale socket",
                path: path.to_path_buf(),
                source,
            }),
        },
    }
}

/// Binds the API socket at `path`, mode 0600: bound under a temporary name, restricted,
/// then renamed into place, so the socket is never reachable with a looser mode.
pub fn bind_socket(path: &Path) -> Result<UnixListener, SocketError> {
    let tmp = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| SocketError::Io {
            op,
            path: p,
            source,
        }
    };
    let _ = std::fs::remove_file(&tmp);
    // The socket is created 0600 from the start (bind honours the umask): the chmod below
    // only confirms it, so there is no moment when a looser mode is reachable. svirtd binds
    // before it starts guests or writes any other file, so the process-wide umask is safe.
    // SAFETY: umask has no memory effects.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&tmp);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };
    let listener = bound.map_err(io_err("bind", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    Ok(listener)
}
