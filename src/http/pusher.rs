//! `GET /app/{key}`: the Pusher protocol's WebSocket (PROTOCOL section 11), on the same port
//! and under the same limits as `/ws`. A key that is not this server's app is told so on the
//! socket, as pusher-js expects (`pusher:error` and close 4001: it does not reconnect).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::Request;

use super::reject::ApiError;
use super::ws::{connection, handshake, switch};
use super::{session, Response};
use crate::connection::pusher::Socket;
use crate::context::WorkerContext;
use crate::frame::Frame;
use crate::pusher::{self as wire, close};
use crate::writer::Writer;

pub async fn upgrade(mut req: Request<Incoming>, ctx: &Arc<WorkerContext>, key: &str) -> Response {
    let Some(app) = ctx.shared.pusher.clone() else {
        return ApiError::NotFound.into_response();
    };
    let accept = match handshake(&req) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    if key != app.key {
        // Told on the socket, as pusher-js expects; under the same limits as any socket.
        let slot = match session::admit(ctx, req.headers()) {
            Ok(slot) => slot,
            Err(e) => return e.into_response(),
        };
        let writer = Arc::new(Writer::new(
            ctx.shared.config.queue_limits(),
            ctx.worker_metrics.clone(),
        ));
        writer.push(&wire::error(
            Some(close::UNKNOWN_APP),
            &format!("app key {key} is not known here"),
        ));
        let closing = writer.clone();
        return switch(&mut req, ctx, &accept, writer, |mut ws| async move {
            let _slot = slot;
            closing.close(&Frame::close(close::UNKNOWN_APP, "unknown app key"));
            let read_close = async { while let Some(Ok(_)) = ws.next().await {} };
            let drain = futures_util::future::join(closing.drain(), read_close);
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        });
    }
    let (session, socket) = match session::start_pusher(ctx, req.headers(), &app) {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    let webhooks = ctx.shared.webhooks.clone();
    let socket = Socket::new(app, socket, webhooks);
    let connection = connection(ctx, session, Some(Box::new(socket)));
    let writer = connection.writer.clone();
    switch(&mut req, ctx, &accept, writer, |ws| connection.run(ws))
}
