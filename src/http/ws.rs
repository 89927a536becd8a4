//! `GET /ws`: checks the handshake, starts the client's [`session`](super::session) (origin,
//! token, slot, registration, the user's stream opened) and answers 101. The session starts
//! before the 101 goes out, so a message published once the client sees the upgrade complete
//! is already on its way to it.
//!
//! The upgrade is taken by hand (hyper's upgrade, then tungstenite over the raw socket halves)
//! so the WebSocket gets a 256-byte read buffer (tungstenite's default 128 KiB, which
//! `warp::ws()` cannot change, measured ~134 KB per idle connection) and its frames go out
//! through the connection's [`Writer`](crate::writer::Writer).

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
use super::{response, session, Response};
use crate::connection::{Connection, SocketIo};
use crate::context::WorkerContext;
use crate::deflate::{self, Inflating};
use crate::rate::ClientRate;
use crate::writer::{Deflate, Writer};

/// Bytes read from the socket at a time, and the read buffer every connection holds from its
/// start. Client frames are small (subscribe, ping); a larger one (a refresh's token, a Pusher
/// presence subscribe) grows the buffer as it comes and takes several reads. 4 KiB here
/// measured ~3.8 KB more RSS per idle connection, 512 B ~200 B more than 256, and 256 ~125 B
/// more than this (paired, BENCHMARKS.md "Memory").
const READ_BUFFER_BYTES: usize = 128;

pub async fn upgrade(mut req: Request<Incoming>, ctx: &Arc<WorkerContext>) -> Response {
    let key = match handshake(&req) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let query = req.uri().query();
    let resume = session::since(query);
    let transport = session::Transport::WebSocket;
    let session = match session::start(ctx, req.headers(), query, resume, transport, &[]).await {
        Ok(session) => session,
        Err(e) => return e.into_response(),
    };
    let connection = connection(ctx, session, None);
    let writer = connection.writer.clone();
    switch(&mut req, ctx, &key, writer, |ws| connection.run(ws))
}

/// A connection of `session`: fanfare's protocol, or with `pusher` Pusher's.
pub fn connection(
    ctx: &WorkerContext,
    session: session::Session,
    pusher: Option<Box<crate::connection::pusher::Socket>>,
) -> Connection {
    Connection {
        registration: session.registration,
        writer: session.writer,
        worker: ctx.connections.clone(),
        user: session.user,
        permissions: session.permissions,
        exp: session.exp,
        slot: session.slot,
        pusher,
        event_stream: false,
        rate: (ctx.shared.config.client_rate > 0).then(|| {
            Box::new(std::sync::Mutex::new(ClientRate::new(
                ctx.shared.config.client_rate,
            )))
        }),
    }
}

/// Answers 101 and completes the upgrade in a task of its own, which hands the WebSocket (its
/// frames going out through `writer`) to `then`. Nothing happens if the client never completes
/// it within `--request-timeout`.
pub fn switch<F, Fut>(
    req: &mut Request<Incoming>,
    ctx: &WorkerContext,
    key: &str,
    writer: Arc<Writer>,
    then: F,
) -> Response
where
    F: FnOnce(WebSocketStream<SocketIo>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shared = &ctx.shared;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
    let deflate = shared
        .config
        .compression
        .then(|| deflate::negotiate(offers.iter().filter_map(|v| v.to_str().ok())))
        .flatten();
    if let Some(agreed) = deflate {
        writer.use_deflate(Deflate {
            min_bytes: shared.config.compression_min_bytes,
            max_payload: u32::try_from(agreed.max_payload).unwrap_or(u32::MAX),
        });
    }
    let max_message_bytes = shared.config.max_message_bytes;
    let on_upgrade = hyper::upgrade::on(req);
    let request_timeout = shared.config.request_timeout();
    let tracker = ctx.tracker.clone();
    ctx.tracker.spawn(async move {
        // On failure `then` drops here, and the connection's registration and slot with it.
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
        let io = SocketIo {
            read,
            writer,
            inflating: deflate.map(|_| Box::new((Inflating::default(), max_message_bytes))),
        };
        let ws = match early {
            None => WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await,
            Some(early) => {
                WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await
            }
        };
        // The connection lives on in a task of its own that holds only its own state: what the
        // upgrade needed (hyper's handle, its timeout, the config) is freed now instead of
        // staying beside it for the connection's life.
        tracker.spawn(then(ws));
    });

    let mut resp = response(StatusCode::SWITCHING_PROTOCOLS, "", "text/plain");
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(key).expect("base64 is a valid header value"),
    );
    if let Some(agreed) = deflate {
        let value = HeaderValue::from_str(&agreed.header()).expect("ASCII");
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    resp
}

/// The `Sec-WebSocket-Accept` value of a GET upgrade, or why the request is none.
pub fn handshake(req: &Request<Incoming>) -> Result<String, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    handshake_key(req.headers())
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
