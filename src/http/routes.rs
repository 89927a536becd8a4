//! The route table: every path fanfare answers, in one warp filter tree, and one rejection
//! handler that gives the JSON error PROTOCOL.md names for a path that is not there.
//!
//! Routing is by path only: each handler checks its own method (405 with the method to use),
//! its key or token, and reads its body under the door's size and time limits. So that a
//! handler gets the request exactly as hyper read it — the body unread, and for `/ws` hyper's
//! upgrade handle, which fanfare takes itself to keep its own WebSocket (see [`super::ws`]) —
//! warp routes a copy of its method and URI that carries the original (see [`Original`]).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::Request;
use warp::path::FullPath;
use warp::{path, Filter, Rejection};

use super::reject::ApiError;
use super::{api, ops, presence, pusher, pusher_api, sse, ws, Response};
use crate::context::WorkerContext;

/// The request as hyper read it, riding on the copy warp routes; taken once by its handler.
#[derive(Clone)]
pub struct Original(Arc<Mutex<Option<Request<Incoming>>>>);

impl Original {
    pub fn new(req: Request<Incoming>) -> Self {
        Original(Arc::new(Mutex::new(Some(req))))
    }

    fn take(self) -> Request<Incoming> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("one route takes the request")
    }
}

/// Every route of a worker. Not boxed: a boxed filter costs an allocation and a dynamic call
/// per request.
pub fn routes(
    ctx: Arc<WorkerContext>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let request = || warp::ext::get::<Original>().map(Original::take);
    let context = move || {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };

    let ws = path!("ws")
        .and(request())
        .and(context())
        .then(|req, ctx: Arc<WorkerContext>| async move { ws::upgrade(req, &ctx).await });

    let sse = path!("sse")
        .and(request())
        .and(context())
        .then(|req, ctx: Arc<WorkerContext>| async move { sse::stream(req, &ctx).await });

    let pusher = path!("app" / String).and(request()).and(context()).then(
        |key: String, req, ctx: Arc<WorkerContext>| async move {
            pusher::upgrade(req, &ctx, &key).await
        },
    );

    let pusher_api = warp::path("apps")
        .and(warp::path::tail())
        .and(request())
        .and(context())
        .then(
            |rest: warp::path::Tail, req, ctx: Arc<WorkerContext>| async move {
                pusher_api::handle(req, &ctx.shared, rest.as_str()).await
            },
        );

    let api = path!("message")
        .or(path!("publish"))
        .unify()
        .or(path!("broadcast"))
        .unify()
        .or(path!("batch"))
        .unify()
        .or(path!("disconnect"))
        .unify()
        .or(path!("subscribe"))
        .unify()
        .or(path!("unsubscribe"))
        .unify()
        .and(request())
        .and(context())
        .then(|req, ctx: Arc<WorkerContext>| async move { api::handle(req, &ctx.shared).await });

    let presence = path!("presence")
        .or(path!("presence" / "count"))
        .unify()
        .or(path!("presence" / "counts"))
        .unify()
        .and(request())
        .and(context())
        .then(
            |req, ctx: Arc<WorkerContext>| async move { presence::handle(req, &ctx.shared).await },
        );

    let ops = path!("healthz")
        .or(path!("readyz"))
        .unify()
        .or(path!("metrics"))
        .unify()
        .or(path!("fanfare.js"))
        .unify()
        .or(warp::path::end())
        .unify()
        .and(warp::method())
        .and(warp::path::full())
        .and(context())
        .map(|method, path: FullPath, ctx: Arc<WorkerContext>| {
            ops::handle(&method, path.as_str(), &ctx.shared)
        });

    ws.or(sse)
        .unify()
        .or(pusher)
        .unify()
        .or(pusher_api)
        .unify()
        .or(api)
        .unify()
        .or(presence)
        .unify()
        .or(ops)
        .unify()
        .recover(refused)
        .unify()
}

/// What no route took: 404 with the JSON body every refusal has.
async fn refused(_: Rejection) -> Result<Response, Infallible> {
    Ok(ApiError::NotFound.into_response())
}
