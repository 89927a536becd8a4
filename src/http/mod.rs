//! HTTP: one hyper connection per accepted socket. `/ws` is upgraded by [`ws`]; every other
//! path goes to the warp routes of [`api`] and [`ops`]. Every 4xx is counted here, once.

pub mod api;
pub mod ops;
pub mod reject;
pub mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;
use warp::Filter;

use crate::worker::WorkerContext;

/// A client must send its request headers within this time (slowloris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The warp routes of one worker as a service.
pub fn routes(
    ctx: Arc<WorkerContext>,
) -> impl Service<
    Request<Incoming>,
    Response = warp::reply::Response,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    let filter = api::routes(ctx.clone())
        .or(ops::routes(ctx))
        .unify()
        .recover(reject::recover)
        .unify();
    warp::service(filter)
}

/// Serves HTTP on one accepted socket until it closes, is upgraded, or the worker shuts down.
pub async fn serve_connection<S>(stream: TcpStream, ctx: Arc<WorkerContext>, routes: S)
where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let shutdown = ctx.shutdown.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let mut routes = routes.clone();
        async move {
            let resp = if req.uri().path() == "/ws" {
                ws::upgrade(req, &ctx).await
            } else {
                routes.call(req).await?
            };
            if resp.status().is_client_error() {
                ctx.metrics.rejected(resp.status().as_u16());
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
