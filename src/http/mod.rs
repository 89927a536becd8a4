//! HTTP: one hyper connection per accepted socket, and one route table ([`routes`], warp) that
//! sends each path to its handler: `/ws` to [`ws`] (which starts a [`session`]), `/sse` to
//! [`sse`] (a session too, on a socket it takes from hyper), the publish
//! API to [`api`], presence to [`presence`], the operator endpoints to [`ops`]. Every refusal is
//! an [`ApiError`] turned into JSON in one place, and every 4xx and 503 is counted here, once.
//!
//! Limits at the door: request headers must arrive within `--request-timeout` (an idle
//! keep-alive connection is closed after it too), a body within it as well (else 408), the
//! request target and the headers have size caps (414, 431), and `/ws` refuses upgrades past
//! `--max-connections` (503).

pub mod api;
pub mod ops;
pub mod presence;
pub mod pusher;
pub mod pusher_api;
pub mod query;
pub mod reject;
pub mod routes;
pub mod session;
pub mod sse;
pub mod ws;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use reject::ApiError;

use crate::context::WorkerContext;

pub type Response = hyper::Response<Bytes>;

/// Longest request target read; longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most request headers read; more gets 431 (hyper's own, bare 431 starts at twice this).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of request headers read; more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves HTTP on one accepted socket until it closes, is upgraded, or the worker shuts down.
/// `routes`: the worker's route table.
pub async fn serve_connection<R>(stream: TcpStream, ctx: Arc<WorkerContext>, routes: R)
where
    R: warp::Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let shutdown = ctx.shutdown.clone();
    let metrics = ctx.shared.metrics.clone();
    let request_timeout = ctx.shared.config.request_timeout();
    let routes = warp::service(routes);
    let door = Arc::new(sse::Door::new(&stream));
    let taken = door.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (ctx, mut routes) = (ctx.clone(), routes.clone());
        req.extensions_mut().insert(door.clone());
        async move {
            let resp = match check_size(&req) {
                Err(e) => warp::Reply::into_response(e.into_response()),
                Ok(()) => {
                    let mut routed = Request::new(Empty::<Bytes>::new());
                    *routed.method_mut() = req.method().clone();
                    *routed.uri_mut() = req.uri().clone();
                    routed.extensions_mut().insert(routes::Original::new(req));
                    let Ok(resp) = tower_service::Service::call(&mut routes, routed).await;
                    resp
                }
            };
            let status = resp.status();
            if status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE {
                ctx.shared.metrics.rejected(status.as_u16());
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_headers(2 * MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    // An event stream took the socket: hyper's side is dropped, with nothing more written.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = taken.taken() => return,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn => r,
                () = taken.taken() => return,
            }
        }
    };
    // Requests hyper refused before they reached `dispatch` (unparseable, or past its own
    // limits) got hyper's bare answer; count them like ours.
    if let Err(e) = result {
        if e.is_parse_too_large() {
            metrics.rejected(431);
        } else if e.is_parse() {
            metrics.rejected(400);
        }
    }
}

fn check_size(req: &Request<Incoming>) -> Result<(), ApiError> {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong(MAX_URI_BYTES));
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge(format!(
            "more than {MAX_HEADERS} headers"
        )));
    }
    // An event stream's `Last-Event-ID` (bounded by its channels) has a budget of its own.
    let bytes: usize = headers
        .iter()
        .filter(|(k, v)| k.as_str() != sse::LAST_EVENT_ID || v.len() > MAX_HEADER_BYTES)
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "headers are larger than {MAX_HEADER_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A response with a body and its content type.
pub fn response(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
