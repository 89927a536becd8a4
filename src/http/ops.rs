//! Endpoints for operators and first-time users, no key needed: `GET /healthz`, `/readyz`,
//! `/metrics`, `/`, a console page to try the server, and `/fanfare.js`, the JavaScript
//! client it is built on (clients/js, its committed build).

use hyper::{Method, StatusCode};

use super::reject::ApiError;
use super::{response, Response};
use crate::context::Shared;

const CONSOLE_HTML: &str = include_str!("console.html");
const CLIENT_JS: &str = include_str!("../../clients/js/dist/fanfare.js");

/// Answers `path` (one of this module's), GET only.
pub fn handle(method: &Method, path: &str, ctx: &Shared) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed("GET").into_response();
    }
    match path {
        // 200 while this process serves.
        "/healthz" => response(StatusCode::OK, "ok\n", "text/plain"),
        // 200 when a message can reach every recipient: always without Redis (this process is
        // the whole cluster), else while both bridge links are up and the node id is ours.
        "/readyz" => match ctx.router.not_ready() {
            None => response(StatusCode::OK, "ready\n", "text/plain"),
            Some(why) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => response(
            StatusCode::OK,
            ctx.metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/fanfare.js" => response(StatusCode::OK, CLIENT_JS, "text/javascript; charset=utf-8"),
        _ => response(StatusCode::OK, CONSOLE_HTML, "text/html; charset=utf-8"),
    }
}
