//! One WebSocket connection: reads client frames, writes queued frames, pings, and closes with
//! the right code. It runs on the worker that accepted it and talks only to that worker's hub.
//!
//! One task per connection: the outbox is forwarded into the socket (everything queued is
//! written with one flush), while the same `select!` reads client frames, sends pings and
//! watches for shutdown or a cut by the hub.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::{interval_at, timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::Permissions;
use crate::error::CloseReason;
use crate::hub::{self, Outbox, Registration, Subscription};
use crate::interest::Interest;
use crate::metrics::WorkerMetrics;
use crate::protocol::{ClientMessage, ErrorCode, Frame};

/// How long a closing connection may take to flush its close frame and hear the client's.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Connection {
    /// Unregisters from the hub when the connection ends, however it ends.
    pub registration: Registration,
    /// To wait, after subscribing, until other machines' messages for the channel reach us.
    pub interest: Arc<Interest>,
    pub permissions: Permissions,
    /// Most channels this connection may be subscribed to at once (`--max-subscriptions`).
    pub max_subscriptions: usize,
    /// This connection's own handle on its outbox, for replies and pings, so they are ordered
    /// with the messages the hub queues.
    pub outbox: Outbox,
    /// Frames to write, from the hub and from this task. The hub holds the other end.
    pub frame_rx: mpsc::Receiver<Frame>,
    /// Notified by the hub when the outbox overflowed: close with 1008.
    pub cut: Arc<Notify>,
    /// The worker's shutdown token: close with 1001.
    pub shutdown: CancellationToken,
    pub ping_interval: Duration,
    pub metrics: Arc<WorkerMetrics>,
}

/// What to do after a client frame.
enum Step {
    Continue,
    /// Stop; close with this reason, or just drop the socket (the client is gone or closed).
    Stop(Option<CloseReason>),
}

impl Connection {
    /// Serves the connection until it closes. `ws` is any WebSocket message stream and sink, so
    /// the loop can be driven by a real socket or by channels in a test.
    pub async fn run<S>(self, ws: S)
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let Connection {
            registration,
            interest,
            permissions,
            max_subscriptions,
            outbox,
            frame_rx,
            cut,
            shutdown,
            ping_interval,
            metrics,
        } = self;
        WorkerMetrics::inc(&metrics.connections_opened);
        let (mut sink, mut stream) = ws.split();
        let reason = {
            let frames = ReceiverStream::new(frame_rx).map(|f| Ok(f.to_message()));
            let forward = frames.forward(&mut sink);
            tokio::pin!(forward);
            let mut ping = interval_at(Instant::now() + ping_interval, ping_interval);
            let mut last_heard = Instant::now();
            let session = Session {
                registration: &registration,
                interest: &interest,
                permissions: &permissions,
                max_subscriptions,
                outbox: &outbox,
                metrics: &metrics,
            };
            // Made once, not at every wake-up: a broadcast wakes every connection.
            let shutting_down = shutdown.cancelled();
            let cut_off = cut.notified();
            tokio::pin!(shutting_down, cut_off);
            loop {
                tokio::select! {
                    biased;
                    () = &mut shutting_down => break Some(CloseReason::GoingAway),
                    () = &mut cut_off => break Some(CloseReason::SlowConsumer),
                    // The frame stream never ends (this task holds a sender), so this is a
                    // write error: the socket is gone.
                    _ = &mut forward => break None,
                    item = stream.next() => {
                        last_heard = Instant::now();
                        match session.on_frame(item).await {
                            Step::Continue => {}
                            Step::Stop(reason) => break reason,
                        }
                    }
                    _ = ping.tick() => {
                        if last_heard.elapsed() >= 2 * ping_interval {
                            WorkerMetrics::inc(&metrics.ping_timeouts);
                            break Some(CloseReason::PingTimeout);
                        }
                        if outbox.offer(Frame::ping()).is_err() {
                            break Some(CloseReason::SlowConsumer);
                        }
                    }
                }
            }
        };
        if let Some(reason) = reason {
            // Unregister first: nothing more is queued while the close frame drains.
            drop(registration);
            let close = Message::Close(Some(CloseFrame {
                code: reason.code().into(),
                reason: reason.reason().into(),
            }));
            if timeout(CLOSE_TIMEOUT, sink.send(close)).await.is_ok() {
                // Wait for the client's close frame so the TCP connection ends cleanly.
                let _ = timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
            }
        }
    }
}

/// What handling a client frame needs.
struct Session<'a> {
    registration: &'a Registration,
    interest: &'a Interest,
    permissions: &'a Permissions,
    max_subscriptions: usize,
    outbox: &'a Outbox,
    metrics: &'a WorkerMetrics,
}

impl Session<'_> {
    async fn on_frame(&self, item: Option<Result<Message, WsError>>) -> Step {
        let message = match item {
            Some(Ok(m)) => m,
            None => return Step::Stop(None),
            Some(Err(WsError::Capacity(_))) => return self.refuse(CloseReason::TooBig),
            Some(Err(WsError::Protocol(_) | WsError::Utf8(_))) => {
                return self.refuse(CloseReason::ProtocolError)
            }
            Some(Err(_)) => return Step::Stop(None),
        };
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => self.refuse(CloseReason::Unsupported),
            // tungstenite answers pings itself and completes the close handshake.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Step::Continue,
            Message::Close(_) => Step::Stop(None),
        }
    }

    fn refuse(&self, reason: CloseReason) -> Step {
        WorkerMetrics::inc(&self.metrics.client_errors);
        Step::Stop(Some(reason))
    }

    async fn on_text(&self, text: &str) -> Step {
        let reply = match ClientMessage::decode(text) {
            Ok(ClientMessage::Subscribe(channel)) => {
                if !self.permissions.allows(&channel) {
                    WorkerMetrics::inc(&self.metrics.client_errors);
                    Frame::error(
                        ErrorCode::Forbidden,
                        &format!("token does not allow channel {}", channel.as_str()),
                    )
                } else {
                    let r = self.registration;
                    match hub::lock(&r.hub).subscribe(r.id, &channel, self.max_subscriptions) {
                        Subscription::Active => {}
                        Subscription::TooMany => {
                            WorkerMetrics::inc(&self.metrics.client_errors);
                            let detail = format!(
                                "at most {} subscriptions per connection",
                                self.max_subscriptions
                            );
                            return self.reply(Frame::error(ErrorCode::Forbidden, &detail));
                        }
                        // The hub cut this connection a moment ago; the cut branch closes it.
                        Subscription::Gone => return Step::Continue,
                    }
                    // `subscribed` promises every later message, other machines' included.
                    self.interest.remote_synced().await;
                    Frame::subscribed(&channel)
                }
            }
            Ok(ClientMessage::Unsubscribe(channel)) => {
                let r = self.registration;
                hub::lock(&r.hub).unsubscribe(r.id, &channel);
                Frame::unsubscribed(&channel)
            }
            Ok(ClientMessage::Ping) => Frame::pong(),
            Err(e) => {
                WorkerMetrics::inc(&self.metrics.client_errors);
                Frame::error(ErrorCode::BadRequest, &e.to_string())
            }
        };
        self.reply(reply)
    }

    /// Queues a reply behind what is already queued; a full queue is a slow consumer.
    fn reply(&self, reply: Frame) -> Step {
        match self.outbox.offer(reply) {
            Err(true) => {
                WorkerMetrics::inc(&self.metrics.slow_consumer_closes);
                Step::Stop(Some(CloseReason::SlowConsumer))
            }
            _ => Step::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection loop driven by channels instead of a socket, under paused time.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    use super::*;
    use crate::hub::{Hub, SharedHub};
    use crate::protocol::{ConnId, UserId, WorkerId};

    /// A WebSocket whose client side is two channels.
    struct FakeSocket {
        from_client: UnboundedReceiver<Result<Message, WsError>>,
        to_client: UnboundedSender<Message>,
    }

    impl Stream for FakeSocket {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx)
        }
    }

    impl Sink<Message> for FakeSocket {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), WsError> {
            let _ = self.to_client.send(m);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Client {
        send: UnboundedSender<Result<Message, WsError>>,
        recv: UnboundedReceiver<Message>,
        hub: SharedHub,
        outbox: Outbox,
        cut: Arc<Notify>,
        shutdown: CancellationToken,
    }

    const PING: Duration = Duration::from_secs(10);

    fn start() -> Client {
        let hub: SharedHub = Arc::new(std::sync::Mutex::new(Hub::new(
            WorkerId(0),
            Arc::default(),
            Arc::default(),
        )));
        let id = ConnId {
            worker: WorkerId(0),
            seq: 1,
        };
        let (outbox, frame_rx, cut) = Outbox::new(8);
        hub::lock(&hub).register(id, UserId::new("u").unwrap(), outbox.clone());
        let shutdown = CancellationToken::new();
        let connection = Connection {
            registration: Registration {
                id,
                hub: hub.clone(),
            },
            interest: Arc::default(),
            permissions: Permissions::new(&["news".into()]),
            max_subscriptions: 10,
            outbox: outbox.clone(),
            frame_rx,
            cut: cut.clone(),
            shutdown: shutdown.clone(),
            ping_interval: PING,
            metrics: Arc::default(),
        };
        let (send, from_client) = unbounded_channel();
        let (to_client, recv) = unbounded_channel();
        tokio::spawn(connection.run(FakeSocket {
            from_client,
            to_client,
        }));
        Client {
            send,
            recv,
            hub,
            outbox,
            cut,
            shutdown,
        }
    }

    fn close_code(m: &Message) -> Option<u16> {
        match m {
            Message::Close(Some(f)) => Some(f.code.into()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_gets_a_ping_then_is_closed_after_twice_the_interval() {
        let mut c = start();
        let started = Instant::now();
        assert!(matches!(c.recv.recv().await, Some(Message::Ping(_))));
        assert_eq!(started.elapsed(), PING);
        let close = c.recv.recv().await.unwrap();
        assert_eq!(close_code(&close), Some(1001));
        assert_eq!(started.elapsed(), 2 * PING);
        assert_eq!(hub::lock(&c.hub).entries(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_talks_is_not_closed() {
        let mut c = start();
        for _ in 0..5 {
            tokio::time::sleep(PING).await;
            c.send.send(Ok(Message::Pong(Default::default()))).unwrap();
            assert!(matches!(c.recv.recv().await, Some(Message::Ping(_))));
        }
        assert_eq!(hub::lock(&c.hub).connections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_are_queued_with_messages_in_order() {
        let mut c = start();
        c.outbox.offer(Frame::pong()).unwrap();
        c.send
            .send(Ok(Message::text(
                r#"{"type":"subscribe","channel":"news"}"#,
            )))
            .unwrap();
        assert_eq!(
            c.recv.recv().await.unwrap().to_text().unwrap(),
            Frame::pong().as_str()
        );
        let reply = c.recv.recv().await.unwrap();
        assert_eq!(
            reply.to_text().unwrap(),
            r#"{"type":"subscribed","channel":"news"}"#
        );
        c.send.send(Ok(Message::binary(vec![1]))).unwrap();
        assert_eq!(close_code(&c.recv.recv().await.unwrap()), Some(1003));
    }

    #[tokio::test(start_paused = true)]
    async fn cut_and_shutdown_close_with_their_codes() {
        let mut cut = start();
        cut.cut.notify_one();
        assert_eq!(close_code(&cut.recv.recv().await.unwrap()), Some(1008));
        let mut down = start();
        down.shutdown.cancel();
        assert_eq!(close_code(&down.recv.recv().await.unwrap()), Some(1001));
    }
}
