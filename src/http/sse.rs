//! `GET /sse?channel=a&channel=b`: the client's stream as server-sent events (PROTOCOL section
//! 12). It starts the same [`session`] as `/ws` (origin, token, slot, the user's stream opened
//! where `Last-Event-ID` says it stood), then takes the socket from hyper and serves it as a
//! [`Connection`](crate::connection::Connection) whose client only listens: its subscriptions come from the URL, each resuming
//! from the id, and go through the same path as a WebSocket client's `subscribe`.
//!
//! Taking the socket: hyper answers a request with a response it writes itself, and keeps the
//! connection's buffers (~8 KiB) for as long as a response streams. An event stream lives for
//! hours, so the handler takes its own handle on the socket (`Door::take_over`), the hyper
//! connection is dropped without a word written, and the stream is written by the connection's
//! [`Writer`](crate::writer::Writer) like a WebSocket's: the same limits, no read buffer.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, Stream};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::reject::ApiError;
use super::session::{self, Transport};
use super::{query, ws, Response};
use crate::context::WorkerContext;
use crate::event_stream::{self, Positions, Resume};
use crate::protocol::{Channel, Since};

/// Most channels one event stream carries: every event that moves the stream names each in
/// its id, which the browser sends back as a header.
pub const MAX_CHANNELS: usize = 32;

/// The header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The accepted socket, as a handler of one of its requests can take it from hyper.
pub struct Door {
    fd: RawFd,
    /// Told when a handler took the socket: its hyper connection is to be dropped.
    taken: Notify,
}

impl Door {
    pub fn new(stream: &TcpStream) -> Door {
        Door {
            fd: stream.as_raw_fd(),
            taken: Notify::new(),
        }
    }

    /// Resolves once a handler took the socket.
    pub async fn taken(&self) {
        self.taken.notified().await;
    }

    /// A handle of its own on the socket; the hyper connection serving it is dropped next.
    /// Called only from a handler of a request of this connection (so the socket is open),
    /// whose future then never completes: hyper, waiting for it, writes nothing more.
    fn take_over(&self) -> io::Result<TcpStream> {
        // SAFETY: the hyper connection owns the socket and is alive while it polls the
        // handler that calls this; the fd is only duplicated, never closed here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let socket = std::net::TcpStream::from(fd.try_clone_to_owned()?);
        socket.set_nonblocking(true)?;
        let socket = TcpStream::from_std(socket)?;
        self.taken.notify_one();
        Ok(socket)
    }
}

pub async fn stream(req: Request<Incoming>, ctx: &Arc<WorkerContext>) -> Response {
    match start(req, ctx).await {
        Ok(never) => match never {},
        Err(e) => e.into_response(),
    }
}

/// Serves the stream; returns only to refuse it.
async fn start(
    req: Request<Incoming>,
    ctx: &Arc<WorkerContext>,
) -> Result<std::convert::Infallible, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    // What follows the request on the connection would be lost with hyper's buffers.
    let has_body = |name| {
        req.headers()
            .get(name)
            .is_some_and(|v| v.as_bytes() != b"0")
    };
    if has_body(header::CONTENT_LENGTH) || req.headers().contains_key(header::TRANSFER_ENCODING) {
        return Err(ApiError::BadRequest(
            "an event stream's request has no body".into(),
        ));
    }
    let query = req.uri().query();
    let mut channels: Vec<Channel> = Vec::new();
    for name in query::params(query, "channel") {
        let channel = Channel::new(&name)
            .map_err(|e| ApiError::BadRequest(format!("channel {name:?}: {e}")))?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    let most = (ctx.shared.config.max_subscriptions as usize).min(MAX_CHANNELS);
    if channels.len() > most {
        return Err(ApiError::BadRequest(format!(
            "at most {most} channels per event stream (each event's id names them all)"
        )));
    }
    // Where the client stood: the header a browser resends, or the query for a first connect
    // (an `EventSource` cannot set headers). An id it cannot read resumes nothing: every topic
    // is then not recovered.
    let id = match req.headers().get(LAST_EVENT_ID) {
        Some(v) => Some(v.to_str().unwrap_or("\u{0}").to_string()),
        None => query::param(query, "lastEventId").map(|v| v.into_owned()),
    };
    let resume: Option<Resume> = id.map(|id| {
        let mut resume = Resume::parse(&id).unwrap_or_else(|| Resume::unknown(&channels));
        resume.keep(&channels);
        resume
    });
    let direct = resume.as_ref().and_then(|r| r.direct.clone());
    let positions = match (ctx.shared.config.history_size, &resume) {
        (0, _) => Positions::without_ids(),
        (_, Some(resume)) => Positions::resuming(resume),
        (_, None) => Positions::default(),
    };
    let transport = Transport::EventStream(positions);
    let session = session::start(ctx, req.headers(), query, direct, transport, &channels).await?;
    let subscribe = channels
        .iter()
        .map(|c| {
            // Not recovered: an offset no epoch matches.
            let since = resume.as_ref().and_then(|r| r.channel(c)).map(|since| {
                since.unwrap_or(Since {
                    offset: 0,
                    epoch: String::new(),
                })
            });
            serde_json::json!({
                "type": "subscribe",
                "channel": c.as_str(),
                "since": since.map(|s| serde_json::json!({"offset": s.offset, "epoch": s.epoch})),
                "presence": session.permissions.sees_presence(c),
            })
            .to_string()
        })
        .collect();
    let door = req
        .extensions()
        .get::<Arc<Door>>()
        .cloned()
        .expect("every request rides on its door");
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .and_then(|o| HeaderValue::from_str(o).ok().map(|_| o.to_string()));
    let socket = door.take_over().map_err(|e| {
        tracing::warn!("an event stream could not take its socket: {e}");
        ApiError::Unavailable("the event stream could not start; retry".into())
    })?;
    let mut connection = ws::connection(ctx, session, None);
    connection.event_stream = true;
    connection.rate = None;
    // Nothing comes from a listening client, so a peer gone without a word shows as its
    // keep-alives left unacknowledged: given up after two ping intervals, as a silent socket.
    let unacknowledged = 2 * ctx.shared.config.ping_interval();
    let _ = socket2::SockRef::from(&socket).set_tcp_user_timeout(Some(unacknowledged));
    let (read, write) = socket.into_split();
    connection
        .writer
        .attach_after(event_stream::head(origin.as_deref()), write);
    let listener = Listener { subscribe, read };
    ctx.tracker.spawn(connection.run(listener));
    // The hyper connection is dropped before this could ever answer.
    std::future::pending().await
}

/// The client side of an event stream as the connection reads it: first its subscriptions
/// (from the URL, as a WebSocket client would send them), then nothing: the socket's end, or
/// anything the client sends (an event stream has no client messages), ends the connection.
struct Listener {
    subscribe: VecDeque<String>,
    read: OwnedReadHalf,
}

impl Stream for Listener {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(text) = self.subscribe.pop_front() {
            return Poll::Ready(Some(Ok(Message::text(text))));
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let _ = ready!(Pin::new(&mut self.read).poll_read(cx, &mut buf));
        Poll::Ready(None)
    }
}

/// Nothing is written through it: an event stream's frames all go through its writer.
impl Sink<Message> for Listener {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), WsError> {
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}
