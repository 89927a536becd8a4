//! `GET /ws`: checks the origin and the token, registers the connection with the worker's hub,
//! and answers 101. The connection is registered (and, with Redis, its user subscribed) before
//! the 101 goes out, so a message published once the client sees the upgrade complete is
//! already on its way to it.
//!
//! The upgrade is taken by hand (hyper's upgrade, then tungstenite over the raw socket halves)
//! so the WebSocket gets a 512-byte read buffer (tungstenite's default 128 KiB, which
//! `warp::ws()` cannot change, measured ~134 KB per idle connection) and its frames go out
//! through the connection's [`Writer`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::reject::ApiError;
use super::{response, Response};
use crate::auth::bearer;
use crate::connection::{Connection, SocketIo};
use crate::context::WorkerContext;
use crate::history::Recovery;
use crate::hub::{self, Registration, Seen};
use crate::protocol::Since;
use crate::protocol::Topic;
use crate::protocol::{ConnId, Frame};
use crate::router::{HistoryStore, Router};
use crate::writer::Writer;

/// Bytes read from the socket at a time. Client frames are small (subscribe, ping); a larger
/// one (a refresh's token) grows the buffer as it comes. 4 KiB here measured ~3.8 KB more RSS
/// per idle connection, 512 B ~200 B more than this.
const READ_BUFFER_BYTES: usize = 256;

pub async fn upgrade(mut req: Request<Incoming>, ctx: &Arc<WorkerContext>) -> Response {
    if req.method() != Method::GET {
        return ApiError::MethodNotAllowed("GET").into_response();
    }
    let headers = req.headers();
    let key = match handshake_key(headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let shared = &ctx.shared;
    if let Err(e) = check_origin(headers, &shared.config.allowed_origins) {
        return e.into_response();
    }
    let identity = match token(&req).and_then(|t| shared.keys.verify(t).map_err(|e| e.to_string()))
    {
        Ok(identity) => identity,
        Err(e) => return ApiError::Unauthorized(e).into_response(),
    };
    let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
        return ApiError::Unavailable(format!(
            "this server holds its maximum of {} connections (--max-connections); retry later or elsewhere",
            shared.config.max_connections()
        ))
        .into_response();
    };

    let id = ConnId {
        worker: ctx.id,
        seq: ctx.next_conn.fetch_add(1, Relaxed),
    };
    let writer = Arc::new(Writer::new(
        shared.config.queue_limits(),
        ctx.worker_metrics.clone(),
    ));
    let history = shared.router.history();
    let mut activation = 0;
    match &history {
        // Under the user's history lock: `connected` and what a resume missed go first, and
        // every direct message after them follows live, none twice.
        Some(HistoryStore::Local(history)) => {
            let topic = Topic::User(identity.user.clone());
            let now = std::time::Instant::now();
            let mut locked = history.lock(&topic);
            let position = locked.position(&topic, now);
            let (recovered, missed) = match since(&req) {
                None => (None, Vec::new()),
                Some(None) => (Some(false), Vec::new()),
                Some(Some(since)) => match locked.since(&topic, &since, now) {
                    Recovery::Recovered(missed) => (Some(true), missed),
                    Recovery::Lost => (Some(false), Vec::new()),
                },
            };
            // One burst, on top of the limits: a replay never cuts a client that reads.
            let connected = Frame::connected(&position.epoch, position.offset, recovered);
            writer.push_burst(None, &[&[connected], missed.as_slice()].concat());
            let seen = Seen::after(&position);
            hub::lock(&ctx.hub).register(id, identity.user.clone(), writer.clone(), seen);
        }
        // Direct messages are held until the read below says where the user stands.
        Some(HistoryStore::Redis) => {
            let user = identity.user.clone();
            activation = hub::lock(&ctx.hub).register_catching_up(id, user, writer.clone());
        }
        None => {
            let seen = Seen::default();
            hub::lock(&ctx.hub).register(id, identity.user.clone(), writer.clone(), seen);
        }
    }
    hub::lock(&ctx.hub).set_info(id, identity.info.clone());
    let registration = Registration {
        id,
        hub: ctx.hub.clone(),
    };
    // With Redis, direct messages from other machines must find this user before the 101.
    let log = shared.router.subscription_log();
    if let Some(log) = &log {
        // The bridge answers within its Redis timeout; the bound is for a bridge that stopped.
        let wait = shared.config.request_timeout();
        let _ = tokio::time::timeout(wait, log.applied(log.ticket())).await;
    }
    if let Some(HistoryStore::Redis) = history {
        // Subscribed: every direct message from now on reaches the hub (held), so the read
        // and the live messages meet without a gap.
        let topic = Topic::User(identity.user.clone());
        let (frames, seen) = connected_from_redis(&shared.router, &topic, since(&req)).await;
        hub::lock(&ctx.hub).caught_up(id, &topic, activation, &frames, seen);
    }
    let connection = Connection {
        registration,
        writer: writer.clone(),
        log,
        keys: shared.keys.clone(),
        history: shared.router.history(),
        router: shared.router.clone(),
        user: identity.user,
        permissions: identity.permissions,
        exp: identity.exp,
        shutdown: ctx.shutdown.clone(),
        ping_interval: shared.config.ping_interval(),
        metrics: ctx.worker_metrics.clone(),
        slot: permit,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let request_timeout = shared.config.request_timeout();
    let tracker = ctx.tracker.clone();
    ctx.tracker.spawn(async move {
        // On failure `connection` drops here, and its registration and slot with it.
        let Ok(Ok(upgraded)) = tokio::time::timeout(request_timeout, on_upgrade).await else {
            return;
        };
        // The accept loop serves plain TCP, so the upgraded IO is always this type; taking the
        // socket back saves a box and a buffer per connection.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!("upgraded connection is not a TCP stream");
            return;
        };
        // Copy out what the client sent right behind its request (rare), then let hyper's read
        // buffer go: an empty `Bytes` can still pin the whole 8 KiB allocation.
        let early = (!parts.read_buf.is_empty()).then(|| parts.read_buf.to_vec());
        drop(parts.read_buf);
        let (read, write) = parts.io.into_inner().into_split();
        writer.attach(write);
        let io = SocketIo { read, writer };
        let ws = match early {
            None => WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await,
            Some(early) => {
                WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await
            }
        };
        // The connection lives on in a task of its own that holds only its own state: what the
        // upgrade needed (hyper's handle, its timeout, the config) is freed now instead of
        // staying beside it for the connection's life.
        tracker.spawn(connection.run(ws));
    });

    let mut resp = response(StatusCode::SWITCHING_PROTOCOLS, "", "text/plain");
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    resp
}

/// The `Sec-WebSocket-Accept` value, or why the request is no WebSocket upgrade.
fn handshake_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(ApiError::BadRequest(
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)".into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(ApiError::UpgradeRequired);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) => Ok(derive_accept_key(k.as_bytes())),
        None => Err(ApiError::BadRequest("missing Sec-WebSocket-Key".into())),
    }
}

/// With an allow-list, a browser's `Origin` must be on it. Requests without `Origin` come from
/// programs, not browsers, and the token alone decides for them.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => Ok(()),
        Some(Ok(origin)) if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) => Ok(()),
        Some(origin) => Err(ApiError::Forbidden(format!(
            "origin {} is not allowed",
            origin.unwrap_or("?")
        ))),
    }
}

/// With history in Redis: `connected` with where the user's direct messages stand (and what a
/// resume missed), and what the hub may skip of the held live messages. Without an answer
/// (Redis unreachable) `connected` has no position and a resume is not recovered.
async fn connected_from_redis(
    router: &Router,
    topic: &Topic,
    since: Option<Option<Since>>,
) -> (Vec<Frame>, Seen) {
    let asked = since.as_ref().map(|_| false);
    match router.read_history(topic.clone(), since.flatten()).await {
        Ok(read) => {
            let p = &read.position;
            let recovered = read.recovered.or(asked);
            let mut frames = vec![Frame::connected(&p.epoch, p.offset, recovered)];
            let seen = Seen::after(p);
            frames.extend(read.missed);
            (frames, seen)
        }
        Err(_) => (vec![Frame::connected_unpositioned(asked)], Seen::default()),
    }
}

/// `?since=41&epoch=…`: absent (None), present but unusable (Some(None): not recovered), or a
/// position to resume from.
fn since(req: &Request<Incoming>) -> Option<Option<Since>> {
    let query = req.uri().query()?;
    // Percent-decoded, like any query string; an offset is decimal digits only (`+0` is not).
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let offset = param("since")?;
    let epoch = param("epoch").filter(|e| !e.is_empty());
    let offset = Some(offset)
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|o| o.parse().ok());
    Some(
        offset
            .zip(epoch)
            .map(|(offset, epoch)| Since { offset, epoch }),
    )
}

/// The token from `?token=` or `Authorization: Bearer`.
fn token(req: &Request<Incoming>) -> Result<&str, String> {
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let from_header = || {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
    };
    from_query
        .or_else(from_header)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| crate::auth::Error::Missing.to_string())
}
