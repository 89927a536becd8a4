//! A client's session, whatever carries it: `/ws` starts one before its 101, and any other
//! front (a stream of events, another protocol's socket) starts one the same way.
//!
//! Starting a session checks the origin and the client token, takes a place under
//! `--max-connections`, registers the connection with the worker's hub, waits until the bridge
//! subscribed its user (so a message published once the client sees the session start is on
//! its way to it), and opens the user's stream where the client resumes (`connected`, what it
//! missed) — the same start as every topic's ([`crate::merge`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};
use tokio::sync::OwnedSemaphorePermit;

use super::query;
use super::reject::ApiError;
use crate::auth::{bearer, Permissions};
use crate::context::WorkerContext;
use crate::hub::{self, Registration, Started};
use crate::merge::{Asked, Opening, Resume};
use crate::protocol::{Channel, ConnId, Since, Topic, UserId};
use crate::writer::Writer;

/// A started session: registered, its user's stream opened.
pub struct Session {
    /// Unregisters the connection when dropped.
    pub registration: Registration,
    /// Where the session's frames go; the hub holds a clone.
    pub writer: Arc<Writer>,
    pub user: UserId,
    pub permissions: Permissions,
    pub exp: Option<u64>,
    /// Its place under `--max-connections`, given back when the session ends.
    pub slot: OwnedSemaphorePermit,
}

/// What carries a session's frames.
#[derive(Debug)]
pub enum Transport {
    WebSocket,
    /// Server-sent events ([`crate::event_stream`]), the stream standing where it resumes.
    EventStream(crate::event_stream::Positions),
}

/// Starts a session for a request with these headers and query (`?token=`), its user's stream
/// resuming from `resume` (a WebSocket's `?since=&epoch=`: [`since`]). `channels`: what the
/// session subscribes to from its start (an event stream's), each to be allowed by the token.
///
/// # Errors
/// The origin is not allowed (403), the token is missing or bad (401), a channel is not
/// allowed (403), or the server holds its maximum of connections (503).
pub async fn start(
    ctx: &WorkerContext,
    headers: &HeaderMap,
    query: Option<&str>,
    resume: Resume,
    transport: Transport,
    channels: &[Channel],
) -> Result<Session, ApiError> {
    let shared = &ctx.shared;
    check_origin(headers, &shared.config.allowed_origins)?;
    let identity = token(headers, query)
        .and_then(|t| shared.keys.verify(&t).map_err(|e| e.to_string()))
        .map_err(ApiError::Unauthorized)?;
    if let Some(c) = channels.iter().find(|c| !identity.permissions.allows(c)) {
        return Err(ApiError::Forbidden(format!(
            "token does not allow channel {}",
            c.as_str()
        )));
    }
    let slot = slot(ctx)?;
    let (id, writer) = new_connection(ctx);
    if let Transport::EventStream(positions) = transport {
        writer.use_event_stream(positions);
    }
    let user = identity.user.clone();
    let started = hub::lock(&ctx.hub).register(id, user, writer.clone(), identity.info);
    let registration = Registration {
        id,
        hub: ctx.hub.clone(),
    };
    // With Redis, direct messages from other machines must find this user before the session
    // is said to have started.
    if let Some(log) = shared.router.subscription_log() {
        // The bridge answers within its Redis timeout; the bound is for a bridge that stopped.
        let wait = shared.config.request_timeout();
        let _ = tokio::time::timeout(wait, log.applied(log.ticket())).await;
    }
    if let Started::Held(start) = started {
        let topic = Topic::User(identity.user.clone());
        let read = shared
            .router
            .read_history(topic.clone(), resume.clone().flatten())
            .await;
        let opening = Opening::read(&topic, read.ok(), resume.is_some(), Asked::Client, false);
        hub::lock(&ctx.hub).open(id, &topic, start, opening);
    }
    Ok(Session {
        registration,
        writer,
        user: identity.user,
        permissions: identity.permissions,
        exp: identity.exp,
        slot,
    })
}

/// Starts a session of the Pusher protocol: no token (its channels are authorised one by one),
/// the origin and the slot as for any session; registered as `socket`, with
/// `pusher:connection_established` its first frame.
///
/// # Errors
/// The origin is not allowed (403), or the server holds its maximum of connections (503).
pub fn start_pusher(
    ctx: &WorkerContext,
    headers: &HeaderMap,
    app: &crate::pusher::App,
) -> Result<(Session, Arc<str>), ApiError> {
    let slot = admit(ctx, headers)?;
    let (id, writer) = new_connection(ctx);
    let socket: Arc<str> = app.socket_id(id).into();
    writer.push(&crate::pusher::connection_established(&socket));
    let user = UserId::new(&format!("pusher:{socket}")).expect("a short id");
    hub::lock(&ctx.hub).register_pusher(id, user.clone(), writer.clone(), socket.clone());
    let session = Session {
        registration: Registration {
            id,
            hub: ctx.hub.clone(),
        },
        writer,
        user,
        permissions: Permissions::default(),
        exp: None,
        slot,
    };
    Ok((session, socket))
}

/// The origin check and a `--max-connections` slot, for a session without a token (a Pusher
/// socket, or one accepted only to be told why it is refused).
///
/// # Errors
/// The origin is not allowed (403), or the server holds its maximum of connections (503).
pub fn admit(ctx: &WorkerContext, headers: &HeaderMap) -> Result<OwnedSemaphorePermit, ApiError> {
    check_origin(headers, &ctx.shared.config.allowed_origins)?;
    slot(ctx)
}

/// A place under `--max-connections` and `--accept-rate`, or 503.
fn slot(ctx: &WorkerContext) -> Result<OwnedSemaphorePermit, ApiError> {
    let shared = &ctx.shared;
    if let Some(accept) = &shared.accept {
        if !accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(ApiError::TryLater(format!(
                "this server admits {} new connections a second (--accept-rate); retry in a second",
                shared.config.accept_rate
            )));
        }
    }
    shared.connection_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "this server holds its maximum of {} connections (--max-connections); retry later or elsewhere",
            shared.config.max_connections()
        ))
    })
}

/// A new connection's id on this worker, and its writer.
fn new_connection(ctx: &WorkerContext) -> (ConnId, Arc<Writer>) {
    let id = ConnId {
        worker: ctx.id,
        seq: ctx.next_conn.fetch_add(1, Relaxed),
    };
    let writer = Writer::new(ctx.shared.config.queue_limits(), ctx.worker_metrics.clone());
    (id, Arc::new(writer))
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

/// `?since=41&epoch=…`: absent (None), present but unusable (Some(None): not recovered), or a
/// position to resume from.
pub fn since(query: Option<&str>) -> Resume {
    let offset = query::param(query, "since")?;
    let epoch = query::param(query, "epoch").filter(|e| !e.is_empty());
    // An offset is decimal digits only (`+0` is not).
    let offset = Some(offset)
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|o| o.parse().ok());
    Some(offset.zip(epoch).map(|(offset, epoch)| Since {
        offset,
        epoch: epoch.into_owned(),
    }))
}

/// The token from `?token=` or `Authorization: Bearer`.
fn token(headers: &HeaderMap, query: Option<&str>) -> Result<String, String> {
    let from_header = || {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .map(|t| t.to_string())
    };
    query::param(query, "token")
        .map(|t| t.into_owned())
        .or_else(from_header)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| crate::auth::Error::Missing.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_absent_unusable_or_a_position() {
        assert_eq!(since(Some("token=t")), None);
        assert_eq!(since(Some("since=+0&epoch=e")), Some(None));
        assert_eq!(since(Some("since=4")), Some(None));
        assert_eq!(
            since(Some("since=4&epoch=a%2Bb")),
            Some(Some(Since {
                offset: 4,
                epoch: "a+b".into()
            }))
        );
    }
}
