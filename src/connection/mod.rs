//! One WebSocket connection: reads client frames, answers them, pings, keeps to its token's
//! lifetime, and closes with the right code. It runs on the worker that accepted it and talks
//! only to that worker's hub; its frames go out through its [`Writer`], which the hub writes to
//! as well.
//!
//! One task per connection, one `select!`: the writer (frames the socket refused, a cut, the
//! backend's commands, the server's drain), its moment to close in a drain, client frames, one
//! timer (ping, `expiring`, expiry: whichever comes first), and subscriptions waiting for the bridge. No branch awaits anything but its
//! own future, so a subscription that waits for Redis stops nothing else; only reading pauses
//! meanwhile, so replies keep the order of the client's frames. With history, a subscription
//! then reads where its channel stands (and what a resume missed), its live messages held by
//! the hub meanwhile ([`crate::merge`]); reading pauses until a client's own read is answered,
//! for the same reason.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{Identity, Permissions, TokenKeys};
use crate::deflate::{InflateError, Inflating};
use crate::error::{CloseReason, DISCONNECT_CODE};
use crate::history::Read;
use crate::hub::{self, Answer, Registration, Started};
use crate::merge::{Asked, Opening};
use crate::metrics::WorkerMetrics;
use crate::protocol::{Channel, ClientMessage, ErrorCode, Frame, Since, Topic, UserId};
use crate::rate::{ClientRate, Verdict};
use crate::router::{Router, Unreachable};
use crate::subscriptions::{SubscriptionLog, Ticket};
use crate::writer::{Command, Flushed, Writer, WriterEvent};

/// How long a closing connection may take to flush its close frame and hear the client's.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Over how long a drain of `shutdown_timeout` spreads its connections' closes: all of it but
/// the last close's handshake and a margin, so every close completes within the drain.
pub fn restart_spread(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.saturating_sub(CLOSE_TIMEOUT + Duration::from_millis(500))
}
/// How long before its token's `exp` a connection is sent `expiring` (at least; see
/// [`WARNING_SPREAD`]).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30);

pub struct Connection {
    /// Unregisters from the hub when the connection ends, however it ends.
    pub registration: Registration,
    /// Where this connection's frames go; the hub holds a clone.
    pub writer: Arc<Writer>,
    /// What every connection of its worker shares (one pointer, not seven fields each).
    pub worker: Arc<Surroundings>,
    /// Who connected: a refresh must name the same `sub`.
    pub user: UserId,
    /// The token's channels and lifetime at the start; a refresh replaces them.
    pub permissions: Permissions,
    pub exp: Option<u64>,
    /// Its place under `--max-connections`, given back when the connection ends.
    pub slot: tokio::sync::OwnedSemaphorePermit,
    /// Speaks the Pusher protocol (`/app/{key}`) instead of fanfare's (boxed: a `/ws`
    /// connection holds 8 bytes for it).
    pub pusher: Option<Box<pusher::Socket>>,
    /// Carries server-sent events: the client only listens, so it answers no pings (the
    /// socket's end is its goodbye) and its close is not waited for.
    pub event_stream: bool,
    /// With `--client-rate`: its client frames' budget.
    pub rate: Option<Box<std::sync::Mutex<ClientRate>>>,
}

/// What every connection of a worker shares.
pub struct Surroundings {
    /// With Redis: to wait, after subscribing, until other machines' messages for the channel
    /// reach this process.
    pub log: Option<Arc<SubscriptionLog>>,
    /// Verifies the tokens of `refresh`.
    pub keys: Arc<TokenKeys>,
    /// Reads where channels stand, and what a resume missed; answers presence questions.
    pub router: Arc<Router>,
    pub ping_interval: Duration,
    pub metrics: Arc<WorkerMetrics>,
    /// On SIGTERM a connection closes at a random moment within this ([`restart_spread`]).
    pub restart_spread: Duration,
}

/// How the loop ended.
enum End {
    /// The server closes, with this reason.
    Close(CloseReason),
    /// The backend closes it (`POST /disconnect`): 4003 and its reason.
    Disconnect(Arc<str>),
    /// The client sent its close frame: echo it.
    ClientClosed,
    /// The socket is gone.
    Gone,
}

/// What to do after a client frame.
enum Step {
    Continue,
    /// A subscription waits for the bridge until `Ticket`; a client's pauses reading
    /// meanwhile, so its `subscribed` keeps its place among the replies; the backend's does not.
    /// With history, its read follows.
    Await(Ticket, Pending),
    /// With history: read where the channel stands, its messages held meanwhile by the hub
    /// under this start.
    Read(Pending, u64),
    /// A question Redis answers (presence): reading the client pauses until its answer is
    /// queued, so one connection has one in flight and answers keep their place.
    Ask(Asking),
    Stop(End),
}

/// The answer to a client's question, on its way from Redis.
type Asking = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// What a question Redis answered leads to.
enum Answered {
    /// A reply to send.
    Reply(Frame),
    /// A Pusher presence channel's members were read: it opens with `frame`
    /// (`subscription_succeeded`), then what was held for it meanwhile.
    Opened(Channel, u64, Frame),
    /// A Pusher presence channel's members could not be read: it ends, and `frame` says so.
    Refused(Channel, Frame),
    Nothing,
}

/// The answer to the question in flight; cancel-safe (it is taken off only once answered).
async fn answered(asking: &mut Option<Asking>) -> Answered {
    let frame = asking.as_mut().expect("polled only while asking").await;
    *asking = None;
    frame
}

/// A subscription on its way: waiting for the bridge, then for its read.
struct Pending {
    /// A Pusher presence channel opens with its members once subscribed, this one among them.
    members_with: Option<(UserId, Option<Arc<str>>)>,
    channel: Channel,
    /// Where a resume starts.
    since: Option<Since>,
    asked: Asked,
    /// Takes deltas (a client's `"delta":"fossil"` on a channel with history).
    deltas: bool,
}

/// What a read of a channel's history answers, with what it was for.
type ReadAnswer = (Pending, u64, Result<Read, Unreachable>);
type Reading = Pin<Box<dyn Future<Output = ReadAnswer> + Send>>;

/// The answer to the oldest read; cancel-safe (it is taken off only once answered).
async fn oldest(reads: &mut VecDeque<Reading>) -> ReadAnswer {
    let answer = reads.front_mut().expect("polled only with reads").await;
    reads.pop_front();
    answer
}

/// What a connection waits for besides its client, its writer and its timer. Boxed while it
/// holds anything: an idle connection's task holds a pointer for all of it.
#[derive(Default)]
struct Waits {
    /// Subscriptions waiting for the bridge, oldest first (tickets only grow).
    awaiting: VecDeque<(Ticket, Pending)>,
    /// Reads of the history: answered in order (one Redis pipeline, or at once), so only the
    /// oldest is polled.
    reads: VecDeque<Reading>,
    /// Reads a client's subscribe waits for: reading the client pauses meanwhile.
    client_reads: usize,
    /// A client's question Redis has not answered yet: reading the client pauses meanwhile.
    asking: Option<Asking>,
}

/// What came of a wait.
enum Waited {
    Confirmed(Pending),
    Read(ReadAnswer),
    Answered(Answered),
}

impl Waits {
    fn is_empty(&self) -> bool {
        self.awaiting.is_empty() && self.reads.is_empty() && self.asking.is_none()
    }

    /// The client's frames wait: a reply it asked for comes first.
    fn pauses_reading(&self) -> bool {
        self.client_reads > 0
            || self.asking.is_some()
            || self.awaiting.iter().any(|a| a.1.asked == Asked::Client)
    }

    /// The first of the waits to end, in this order; cancel-safe (each is taken off only once
    /// it has ended).
    async fn next(&mut self, log: Option<&SubscriptionLog>) -> Waited {
        tokio::select! {
            biased;
            () = confirmed(log, self.awaiting.front().map(|a| a.0)) => {
                let (_, pending) = self.awaiting.pop_front().expect("only awaited while set");
                Waited::Confirmed(pending)
            }
            answer = oldest(&mut self.reads), if !self.reads.is_empty() => {
                if answer.0.asked == Asked::Client {
                    self.client_reads -= 1;
                }
                Waited::Read(answer)
            }
            answer = answered(&mut self.asking), if self.asking.is_some() => Waited::Answered(answer),
        }
    }
}

/// [`Waits::next`] when there are waits, boxed (the `select!` holds a pointer); never
/// otherwise.
fn waited<'a>(
    waits: &'a mut Option<Box<Waits>>,
    log: Option<&'a SubscriptionLog>,
) -> futures_util::future::Either<
    Pin<Box<dyn Future<Output = Waited> + Send + 'a>>,
    std::future::Pending<Waited>,
> {
    use futures_util::future::Either;
    match waits {
        Some(waits) => Either::Left(Box::pin(waits.next(log))),
        None => Either::Right(std::future::pending()),
    }
}

/// What a refresh can change: the channels allowed and the end of the connection's life.
struct Token {
    permissions: Permissions,
    exp: Option<u64>,
}

/// A presence question of a client.
enum Question {
    Page(Option<crate::protocol::UserId>, usize),
    Count,
}

/// The one timer of a connection: the next ping, the `expiring` warning, the expiry.
struct Deadlines {
    ping: Instant,
    warn: Option<Instant>,
    expire: Option<Instant>,
    /// How much earlier than 30 s this connection is warned: tokens are issued in batches and
    /// `exp` has whole seconds, so thousands may expire in the same second; spreading their
    /// warnings (and so their refreshes) over a few seconds avoids a burst of work.
    spread: Duration,
}

/// Warnings of tokens that expire in the same second are spread over this much.
const WARNING_SPREAD: Duration = Duration::from_secs(5);

impl Deadlines {
    fn new(ping_interval: Duration, exp: Option<u64>, seq: u64) -> Self {
        let spread_ms = WARNING_SPREAD.as_millis() as u64;
        let mut d = Deadlines {
            ping: Instant::now() + ping_interval,
            warn: None,
            expire: None,
            spread: Duration::from_millis(seq.wrapping_mul(7919) % spread_ms),
        };
        d.set_exp(exp);
        d
    }

    /// Schedules the warning and the expiry for `exp` (unix seconds); none without one.
    fn set_exp(&mut self, exp: Option<u64>) {
        let now = Instant::now();
        // An `exp` too far for the clocks (the door refuses them) is taken as none.
        self.expire = exp.and_then(|exp| {
            let at = UNIX_EPOCH.checked_add(Duration::from_secs(exp))?;
            now.checked_add(at.duration_since(SystemTime::now()).unwrap_or_default())
        });
        let early = EXPIRY_WARNING + self.spread;
        self.warn = self
            .expire
            .map(|at| at.checked_sub(early).unwrap_or(now).max(now));
    }

    fn next(&self) -> Instant {
        [Some(self.ping), self.warn, self.expire]
            .into_iter()
            .flatten()
            .min()
            .expect("the ping is always due")
    }
}

impl Connection {
    /// Serves the connection until it closes. `ws` reads the client's frames; anything it
    /// writes (pongs, the close reply) must reach `self.writer` (see [`SocketIo`]).
    ///
    /// A plain `fn` returning an `async move` block, not an `async fn`: an `async fn` moves its
    /// arguments into locals of its own and keeps both copies for the connection's whole life
    /// (448 bytes here).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    pub fn run<S>(self, mut ws: S) -> impl Future<Output = ()>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        async move {
            WorkerMetrics::inc(&self.worker.metrics.connections_opened);
            let end = self.serve(&mut ws).await;
            let Connection {
                registration,
                writer,
                worker,
                ..
            } = self;
            let metrics = &worker.metrics;
            // Unregister first: nothing more is pushed while the close goes out.
            drop(registration);
            let close = match end {
                End::Close(reason) => {
                    let counter = match reason {
                        CloseReason::SlowConsumer => Some(&metrics.slow_consumer_closes),
                        CloseReason::TokenExpired => Some(&metrics.expired_closes),
                        _ => None,
                    };
                    counter.map(WorkerMetrics::inc);
                    let code = match self.pusher {
                        Some(_) => pusher::close_code(reason),
                        None => reason.code(),
                    };
                    Some(Frame::close(code, reason.reason()))
                }
                End::Disconnect(why) => {
                    WorkerMetrics::inc(&metrics.disconnect_closes);
                    let code = match self.pusher {
                        Some(_) => crate::pusher::close::TERMINATED,
                        None => DISCONNECT_CODE,
                    };
                    Some(Frame::close(code, &why))
                }
                End::ClientClosed => {
                    // tungstenite queued the close reply; flushing hands it to the writer.
                    let _ = ws.flush().await;
                    // Boxed, like the close's waits below: the task would hold room for them
                    // for the connection's whole life (~300 B).
                    let _ = timeout(CLOSE_TIMEOUT, Box::pin(writer.drain())).await;
                    None
                }
                End::Gone => None,
            };
            if let Some(close) = close {
                writer.close(&close);
                // Wait for the client's close frame too, so the TCP connection ends cleanly (a
                // listening stream has none to send: its end is ours).
                let listens = self.event_stream;
                let read_close =
                    async { while !listens && matches!(ws.next().await, Some(Ok(_))) {} };
                let drain = futures_util::future::join(writer.drain(), read_close);
                let _ = Box::pin(timeout(CLOSE_TIMEOUT, drain)).await;
            }
            metrics
                .dropped_closed
                .fetch_add(writer.queued() as u64, Relaxed);
            metrics
                .dropped_slow
                .fetch_add(writer.cut_dropped(), Relaxed);
        }
    }

    async fn serve<S>(&self, ws: &mut S) -> End
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let mut token = Token {
            permissions: self.permissions.clone(),
            exp: self.exp,
        };
        let mut deadlines = Deadlines::new(
            self.worker.ping_interval,
            self.exp,
            self.registration.id.seq,
        );
        let mut last_heard = Instant::now();
        let mut waits: Option<Box<Waits>> = None;
        let timer = sleep_until(deadlines.next());
        tokio::pin!(timer);
        // Once the server drains: when this connection's turn to close comes (served until then).
        let mut restart: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let step = tokio::select! {
                biased;
                () = async { restart.as_mut().expect("set").await }, if restart.is_some() => {
                    Step::Stop(End::Close(CloseReason::Restart))
                }
                event = self.writer.next_event() => match event {
                    WriterEvent::SlowConsumer => Step::Stop(End::Close(CloseReason::SlowConsumer)),
                    WriterEvent::Broken => Step::Stop(End::Gone),
                    WriterEvent::Command(Command::Disconnect(why)) => Step::Stop(End::Disconnect(why)),
                    WriterEvent::Command(Command::Drain) => {
                        // Spread over the drain, so the clients do not all come back at once.
                        let spread = self.worker.restart_spread.as_millis() as u64;
                        let at = Duration::from_millis(rand::random_range(0..=spread));
                        restart.get_or_insert_with(|| Box::pin(tokio::time::sleep(at)));
                        Step::Continue
                    }
                    WriterEvent::Command(Command::Activate(channel, since)) => {
                        self.when_confirmed(Pending { channel, since, asked: Asked::Backend, members_with: None, deltas: false })
                    }
                },
                end = waited(&mut waits, self.worker.log.as_deref()) => match end {
                    Waited::Confirmed(pending) => {
                        last_heard = Instant::now();
                        self.start(pending)
                    }
                    Waited::Read((pending, start, read)) => self.opened(pending, start, read),
                    Waited::Answered(Answered::Reply(frame)) => self.reply(frame),
                    Waited::Answered(Answered::Opened(channel, start, frame)) => self.pusher_opened(&channel, start, frame),
                    Waited::Answered(Answered::Refused(channel, frame)) => self.pusher_refused(&channel, frame),
                    Waited::Answered(Answered::Nothing) => Step::Continue,
                },
                item = ws.next(), if !waits.as_ref().is_some_and(|w| w.pauses_reading()) => {
                    last_heard = Instant::now();
                    let exp = token.exp;
                    let step = self.on_frame(item, &mut token);
                    if token.exp != exp {
                        deadlines.set_exp(token.exp);
                        timer.as_mut().reset(deadlines.next());
                    }
                    step
                }
                () = &mut timer => {
                    let now = Instant::now();
                    let step = if deadlines.expire.is_some_and(|at| at <= now) {
                        Step::Stop(End::Close(CloseReason::TokenExpired))
                    } else if deadlines.warn.is_some_and(|at| at <= now) {
                        deadlines.warn = None;
                        self.reply(Frame::expiring(token.exp.expect("a warning needs an exp")))
                    } else if !self.event_stream && last_heard.elapsed() >= 2 * self.worker.ping_interval {
                        WorkerMetrics::inc(&self.worker.metrics.ping_timeouts);
                        Step::Stop(End::Close(CloseReason::PingTimeout))
                    } else {
                        deadlines.ping = now + self.worker.ping_interval;
                        self.reply(Frame::ping())
                    };
                    timer.as_mut().reset(deadlines.next());
                    step
                }
            };
            match step {
                Step::Continue => {}
                Step::Await(ticket, pending) => waits
                    .get_or_insert_default()
                    .awaiting
                    .push_back((ticket, pending)),
                Step::Read(pending, start) => {
                    let waits = waits.get_or_insert_default();
                    if pending.asked == Asked::Client {
                        waits.client_reads += 1;
                    }
                    let router = self.worker.router.clone();
                    let topic = Topic::Channel(pending.channel.clone());
                    let since = pending.since.clone();
                    waits.reads.push_back(Box::pin(async move {
                        let read = router.read_history(topic, since).await;
                        (pending, start, read)
                    }));
                }
                Step::Ask(question) => waits.get_or_insert_default().asking = Some(question),
                Step::Stop(end) => return end,
            }
            if waits.as_ref().is_some_and(|w| w.is_empty()) {
                waits = None;
            }
        }
    }

    fn on_frame(&self, item: Option<Result<Message, WsError>>, token: &mut Token) -> Step {
        let message = match item {
            Some(Ok(m)) => m,
            None => return Step::Stop(End::Gone),
            Some(Err(WsError::Capacity(_))) => return self.refuse(CloseReason::TooBig),
            // A compressed message that inflates past the limit, or does not inflate.
            Some(Err(WsError::Io(e))) if inflate_error(&e).is_some() => {
                return match inflate_error(&e) {
                    Some(InflateError::TooBig) => self.refuse(CloseReason::TooBig),
                    _ => self.refuse(CloseReason::InvalidPayload),
                };
            }
            Some(Err(WsError::Utf8(_))) => return self.refuse(CloseReason::InvalidPayload),
            // The peer vanished without a close frame: nothing to answer.
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                return Step::Stop(End::Gone)
            }
            Some(Err(WsError::Protocol(_))) => return self.refuse(CloseReason::ProtocolError),
            Some(Err(_)) => return Step::Stop(End::Gone),
        };
        if let (Message::Text(_), Some(rate)) = (&message, &self.rate) {
            let verdict = rate.lock().unwrap_or_else(|e| e.into_inner()).judge();
            match verdict {
                Verdict::Take => {}
                Verdict::Refuse => {
                    WorkerMetrics::inc(&self.worker.metrics.client_errors);
                    return self.reply(match self.pusher {
                        Some(_) => crate::pusher::error(
                            Some(crate::pusher::close::RATE_LIMITED),
                            "over --client-rate: this frame was dropped",
                        ),
                        None => Frame::error(
                            ErrorCode::RateLimited,
                            "over --client-rate: this frame was dropped",
                        ),
                    });
                }
                Verdict::Close => return self.refuse(CloseReason::RateLimited),
            }
        }
        match message {
            Message::Text(text) => match &self.pusher {
                Some(socket) => self.on_pusher_text(socket, text.as_str()),
                None => self.on_text(text.as_str(), token),
            },
            Message::Binary(_) => self.refuse(CloseReason::Unsupported),
            // tungstenite answers pings itself, through the writer.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Step::Continue,
            Message::Close(_) => Step::Stop(End::ClientClosed),
        }
    }

    fn refuse(&self, reason: CloseReason) -> Step {
        WorkerMetrics::inc(&self.worker.metrics.client_errors);
        Step::Stop(End::Close(reason))
    }

    fn on_text(&self, text: &str, token: &mut Token) -> Step {
        match ClientMessage::decode(text) {
            Ok(ClientMessage::Subscribe {
                channel,
                since,
                presence,
                delta,
            }) => self.subscribe(channel, since, (presence, delta), &token.permissions),
            Ok(ClientMessage::Presence {
                channel,
                after,
                limit,
            }) => self.presence(channel, &token.permissions, Question::Page(after, limit)),
            Ok(ClientMessage::PresenceCount(channel)) => {
                self.presence(channel, &token.permissions, Question::Count)
            }
            Ok(ClientMessage::Unsubscribe(channel)) => {
                let r = &self.registration;
                hub::lock(&r.hub).unsubscribe(r.id, &channel);
                self.reply(Frame::unsubscribed(&channel))
            }
            Ok(ClientMessage::Ping) => self.reply(Frame::pong()),
            Ok(ClientMessage::Refresh(jwt)) => self.refresh(&jwt, token),
            Err(e) => {
                WorkerMetrics::inc(&self.worker.metrics.client_errors);
                self.reply(Frame::error(ErrorCode::BadRequest, &e.to_string()))
            }
        }
    }

    /// A new token: same `sub`, verified; its channels and `exp` replace the old ones, and
    /// subscriptions it no longer allows end (the backend's own stay).
    fn refresh(&self, jwt: &str, token: &mut Token) -> Step {
        let identity = match self.worker.keys.verify(jwt) {
            Ok(Identity { user, .. }) if user != self.user => {
                Err("the token is for another user".to_string())
            }
            Ok(identity) => Ok(identity),
            Err(e) => Err(e.to_string()),
        };
        let identity = match identity {
            Ok(identity) => identity,
            Err(why) => {
                WorkerMetrics::inc(&self.worker.metrics.refreshes_refused);
                return self.reply(Frame::error(ErrorCode::Forbidden, &why));
            }
        };
        WorkerMetrics::inc(&self.worker.metrics.refreshes_accepted);
        token.permissions = identity.permissions;
        token.exp = identity.exp;
        self.writer.push(&Frame::refreshed(token.exp));
        let r = &self.registration;
        hub::lock(&r.hub).keep_allowed(r.id, &token.permissions);
        self.flushed(self.writer.flush())
    }

    /// Answers a presence question about a channel the token shows the presence of and the
    /// connection is subscribed to: at once from memory, or with Redis (the fleet's answer)
    /// when Redis answers, meanwhile the connection goes on.
    fn presence(&self, channel: Channel, permissions: &Permissions, question: Question) -> Step {
        let r = &self.registration;
        let refused = if !permissions.sees_presence(&channel) {
            Some(format!(
                "token does not allow presence of {}",
                channel.as_str()
            ))
        } else if !hub::lock(&r.hub).is_subscribed(r.id, &channel) {
            Some(format!("subscribe to {} first", channel.as_str()))
        } else {
            None
        };
        if let Some(detail) = refused {
            WorkerMetrics::inc(&self.worker.metrics.client_errors);
            return self.reply(Frame::error(ErrorCode::Forbidden, &detail));
        }
        let router = self.worker.router.clone();
        let answer = async move {
            let answer = match question {
                Question::Page(after, limit) => router
                    .presence_page(&channel, after, limit)
                    .await
                    .map(|page| crate::presence::page_json(&channel, &page)),
                Question::Count => router
                    .presence_count(&channel)
                    .await
                    .map(|count| crate::presence::count_json(&channel, count)),
            };
            match answer {
                Ok(v) => Frame::json(&v),
                Err(_) => Frame::error(
                    ErrorCode::Unavailable,
                    "Redis is unreachable: presence cannot be read now, retry",
                ),
            }
        };
        if !self.worker.router.presence_in_redis() {
            let frame = futures_util::FutureExt::now_or_never(answer)
                .expect("presence in memory answers at once");
            return self.reply(frame);
        }
        Step::Ask(Box::pin(async move { Answered::Reply(answer.await) }))
    }

    fn subscribe(
        &self,
        channel: Channel,
        since: Option<Since>,
        (presence, deltas): (bool, bool),
        permissions: &Permissions,
    ) -> Step {
        let refused = if !permissions.allows(&channel) {
            Some(format!("token does not allow channel {}", channel.as_str()))
        } else if presence && !permissions.sees_presence(&channel) {
            Some(format!(
                "token does not allow presence of {}",
                channel.as_str()
            ))
        } else {
            None
        };
        if let Some(detail) = refused {
            WorkerMetrics::inc(&self.worker.metrics.client_errors);
            return self.reply(Frame::error(ErrorCode::Forbidden, &detail));
        }
        let r = &self.registration;
        let mut hub = hub::lock(&r.hub);
        let reservation = hub.reserve(r.id, &channel, false);
        let answer = hub.answer(reservation, &channel, Asked::Client);
        if matches!(answer, Answer::Start | Answer::Reply(_)) {
            hub.watch(r.id, &channel, presence);
        }
        if deltas {
            hub.want_deltas(r.id, &channel);
        }
        let deltas = deltas && hub.has_history();
        drop(hub);
        match answer {
            Answer::Start => self.when_confirmed(Pending {
                channel,
                since,
                asked: Asked::Client,
                members_with: None,
                deltas,
            }),
            Answer::Reply(frame) => self.reply(frame),
            Answer::Refuse(frame) => {
                WorkerMetrics::inc(&self.worker.metrics.client_errors);
                self.reply(frame)
            }
            Answer::Nothing => Step::Continue,
        }
    }

    /// `subscribed` promises every later message, other machines' included: the subscription
    /// starts once the bridge has it (at once without a bridge). A client's wait holds its
    /// reading meanwhile, so its `subscribed` keeps its place among the replies.
    fn when_confirmed(&self, pending: Pending) -> Step {
        if let Some(log) = &self.worker.log {
            let ticket = log.ticket();
            if !log.is_applied(ticket) {
                return Step::Await(ticket, pending);
            }
        }
        self.start(pending)
    }

    /// Starts a confirmed subscription: at once without history; with history its messages
    /// held and its position read ([`opened`](Self::opened) merges the two).
    fn start(&self, pending: Pending) -> Step {
        let r = &self.registration;
        match hub::lock(&r.hub).activate(r.id, &pending.channel) {
            Started::Open => self.flushed(self.writer.flush()),
            Started::Held(start) => match pending.members_with {
                Some(me) => self.pusher_members(pending.channel, start, me),
                None => Step::Read(pending, start),
            },
            Started::Gone => Step::Continue,
        }
    }

    /// A read answered: `subscribed` with where the channel stands (and `recovered` for a
    /// resume), what was missed, then what arrived meanwhile and is newer. Without an answer
    /// (Redis unreachable) `subscribed` has no position and a resume is not recovered.
    fn opened(&self, pending: Pending, start: u64, read: Result<Read, Unreachable>) -> Step {
        let topic = Topic::Channel(pending.channel);
        let opening = Opening::read(
            &topic,
            read.ok(),
            pending.since.is_some(),
            pending.asked,
            pending.deltas,
        );
        let r = &self.registration;
        match hub::lock(&r.hub).open(r.id, &topic, start, opening) {
            true => self.flushed(self.writer.flush()),
            false => Step::Continue,
        }
    }

    /// Sends a reply behind what is already queued.
    fn reply(&self, frame: Frame) -> Step {
        self.writer.push(&frame);
        self.flushed(self.writer.flush())
    }

    fn flushed(&self, flushed: Flushed) -> Step {
        match flushed {
            Flushed::Ok => Step::Continue,
            Flushed::Cut(_) => Step::Stop(End::Close(CloseReason::SlowConsumer)),
            // The writer branch sees the cut or the broken socket.
            Flushed::Gone => Step::Continue,
        }
    }
}

/// Resolves once `ticket` is applied; never without a ticket (or without a bridge). Boxed
/// only while a subscription waits: an idle connection's task holds 16 bytes for it, not the
/// wait's ~250.
fn confirmed(
    log: Option<&SubscriptionLog>,
    ticket: Option<Ticket>,
) -> futures_util::future::Either<
    Pin<Box<dyn Future<Output = ()> + Send + '_>>,
    std::future::Pending<()>,
> {
    use futures_util::future::Either;
    match (log, ticket) {
        (Some(log), Some(ticket)) => Either::Left(Box::pin(log.applied(ticket))),
        _ => Either::Right(std::future::pending()),
    }
}

/// The socket as tungstenite sees it: reads come from the TCP stream; what tungstenite writes
/// by itself (pongs, the reply to a client's close) goes through the connection's [`Writer`],
/// in order with everything else and under the same limits — a client that floods pings and
/// never reads is a slow consumer like any other.
pub struct SocketIo {
    pub read: OwnedReadHalf,
    pub writer: Arc<Writer>,
    /// With permessage-deflate: compressed client messages made plain before tungstenite
    /// reads them, held to `--max-message-bytes` (the second field).
    pub inflating: Option<Box<(Inflating, usize)>>,
}

impl AsyncRead for SocketIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inflating) = this.inflating.as_mut() else {
            return Pin::new(&mut this.read).poll_read(cx, buf);
        };
        let (inflating, limit) = &mut **inflating;
        inflating.poll_read(&mut this.read, *limit, cx, buf, |_| {})
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Always taken whole, so tungstenite only ever hands over whole frames; a cut or
        // closing writer discards them.
        self.writer.push_control(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn inflate_error(e: &io::Error) -> Option<&InflateError> {
    e.get_ref()?.downcast_ref::<InflateError>()
}

pub mod pusher;
#[cfg(test)]
mod tests;
