//! Endpoints for operators and first-time users, no key needed: `GET /healthz`, `/readyz`,
//! `/metrics`, and `/`, a console page to try the server.

use std::sync::Arc;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::worker::WorkerContext;

const CONSOLE_HTML: &str = include_str!("console.html");

pub fn routes(
    ctx: Arc<WorkerContext>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    // GET /healthz: 200 while this process serves.
    let healthz = warp::path!("healthz").map(|| text(StatusCode::OK, "ok\n", "text/plain"));
    // GET /readyz: 200 when a message can reach every recipient: always without Redis (this
    // process is the whole cluster), else while both bridge links are up.
    let router = ctx.router.clone();
    let readyz = warp::path!("readyz").map(move || match router.is_ready() {
        true => text(StatusCode::OK, "ready\n", "text/plain"),
        false => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Redis unreachable, messages reach this machine only\n",
            "text/plain",
        ),
    });
    // GET /metrics: Prometheus text format.
    let metrics = warp::path!("metrics").map(move || {
        text(
            StatusCode::OK,
            ctx.metrics.render(),
            "text/plain; version=0.0.4",
        )
    });
    // GET /: the console page.
    let console =
        warp::path::end().map(|| text(StatusCode::OK, CONSOLE_HTML, "text/html; charset=utf-8"));
    // The path decides first, so an unknown path is a 404 whatever the method.
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(console)
        .unify()
        .and(warp::get())
}

fn text(status: StatusCode, body: impl Into<String>, content_type: &'static str) -> Response {
    let mut resp = Response::new(body.into().into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
