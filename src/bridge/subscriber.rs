//! The subscribing link: one RESP2 pub/sub connection of our own ([`pubsub`]) whose
//! subscriptions follow the subscription log, feeding what arrives into the local bus without
//! ever waiting for it. With history, messages go through the [`Catchup`], which fills gaps
//! from Redis's history (reads sent through the publisher's link) before later messages.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::catchup::{Catchup, Step};
use super::history::{self as redis_history, Read};
use super::pubsub::{self, Push};
use super::wire::{self, Names};
use super::{within, Backoff, LinkDown, Request, PING_EVERY, RESPONSE_TIMEOUT};
use crate::bus::{Bus, Delivery, Envelope};
use crate::history::{Position, Since};
use crate::metrics::BridgeMetrics;
use crate::routes::Topic;
use crate::subscriptions::{SubscriptionLog, Ticket};

/// A read of a gap in flight, answered with what it asked.
type Fill = Pin<Box<dyn Future<Output = (Topic, u64, Since, Option<Read>)> + Send>>;

/// What the relay remembers across reconnects.
#[derive(Default)]
struct Relay {
    catchup: Catchup,
    fills: FuturesUnordered<Fill>,
    steps: Vec<Step>,
}

/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const CHUNK: usize = 1000;
/// Most topic positions kept alive per second (see [`Catchup::due`]).
const TOUCH_PER_SECOND: usize = 2000;

pub(super) struct Subscriber {
    pub connection: redis::ConnectionInfo,
    pub names: Names,
    /// This process's mark on its own messages.
    pub instance: u64,
    /// Topics have history in Redis: their messages (and controls) are relayed even when this
    /// process published them, since it does not deliver them itself.
    pub history: bool,
    /// Positions connections read, from the publisher.
    pub seeds: mpsc::UnboundedReceiver<(Topic, Position)>,
    /// The publisher's queue, for reading gaps and keeping positions.
    pub requests: mpsc::Sender<Request>,
    /// With history: how often the positions of the topics relayed here are kept alive.
    pub touch_every: Option<std::time::Duration>,
    /// What changed in the routing table; the Redis subscriptions follow it.
    pub log: Arc<SubscriptionLog>,
    /// Where received messages go: the inboxes of the workers with recipients. Its routing
    /// table is the truth about what this process wants.
    pub bus: Bus,
    pub max_message_bytes: usize,
    pub metrics: Arc<BridgeMetrics>,
    pub shutdown: CancellationToken,
}

/// Subscription changes sent and not yet confirmed, oldest first: how many channel
/// confirmations each still waits for, and the ticket it answers.
type Unconfirmed = VecDeque<(usize, Ticket)>;

impl Subscriber {
    /// Runs until shutdown; then answers every waiting ticket, since nothing more is applied.
    pub async fn run(mut self, where_: &str) {
        self.relay_until_shutdown(where_).await;
        self.log.close();
    }

    async fn relay_until_shutdown(&mut self, where_: &str) {
        let mut relay = Relay::default();
        let mut backoff = Backoff::new();
        let mut connected_before = false;
        loop {
            // A fresh connection subscribes to everything wanted, so pending changes are moot;
            // whoever waits for them is answered once the restore is confirmed, or fails.
            let (_, ticket) = self.log.take();
            // Room for the largest message plus the wire header.
            let max_bulk = self.max_message_bytes + 64;
            let connecting = within(pubsub::connect(&self.connection, max_bulk));
            let connected = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = connecting => r,
            };
            let (mut reader, mut writer) = match connected {
                Ok(halves) => halves,
                Err(why) => {
                    tracing::error!(
                        "bridge: cannot connect the subscriber to {where_}: {why}; retrying"
                    );
                    self.log.confirm(ticket);
                    self.wait_down(backoff.next(), &mut relay).await;
                    continue;
                }
            };
            let mut subscribed = HashSet::new();
            let mut wanted: Vec<String> = self
                .bus
                .routes()
                .topics()
                .iter()
                .map(|t| self.names.topic(t))
                .collect();
            wanted.push(self.names.all());
            let mut unconfirmed = Unconfirmed::new();
            let sent = change(&mut writer, &mut subscribed, wanted, Vec::new()).await;
            match sent {
                Ok(n) => unconfirmed.push_back((n, ticket)),
                Err(why) => {
                    self.log.confirm(ticket);
                    tracing::warn!(
                        "bridge: cannot restore subscriptions on {where_}: {why}; retrying"
                    );
                    self.wait_down(backoff.next(), &mut relay).await;
                    continue;
                }
            }
            if connected_before {
                self.metrics.reconnects.fetch_add(1, Relaxed);
            }
            connected_before = true;
            let why = self
                .serve(
                    &mut reader,
                    &mut writer,
                    &mut subscribed,
                    &mut unconfirmed,
                    &mut relay,
                    where_,
                )
                .await;
            // Whoever waits is answered: the reconnect subscribes to everything.
            if let Some((_, last)) = unconfirmed.back() {
                self.log.confirm(*last);
            }
            if self.metrics.subscribe_up.swap(false, Relaxed) {
                backoff.reset();
            }
            self.metrics.subscriptions.store(0, Relaxed);
            match why {
                None => return,
                Some(why) => {
                    tracing::warn!("bridge: subscriber lost {where_}: {why}; reconnecting");
                    self.wait_down(backoff.next(), &mut relay).await;
                }
            }
        }
    }

    /// Relays messages and follows interest changes until the link fails (returns why) or the
    /// process stops (returns `None`). The link is up once the restored subscriptions are
    /// confirmed.
    async fn serve(
        &mut self,
        reader: &mut pubsub::Reader,
        writer: &mut pubsub::Writer,
        subscribed: &mut HashSet<String>,
        unconfirmed: &mut Unconfirmed,
        relay: &mut Relay,
        where_: &str,
    ) -> Option<LinkDown> {
        let mut ping = interval(PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // When the oldest PING without its PONG went out.
        let mut ping_sent: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                push = reader.next() => match push {
                    Ok(Push::Message { channel, payload }) => self.relay(&channel, &payload, relay),
                    Ok(Push::Pong) => ping_sent = None,
                    Ok(Push::Oversize) => {
                        self.metrics.malformed.fetch_add(1, Relaxed);
                    }
                    Ok(Push::Confirmed) => {
                        let Some(front) = unconfirmed.front_mut() else {
                            return Some("a confirmation nobody asked for".into());
                        };
                        front.0 = front.0.saturating_sub(1);
                        if front.0 == 0 {
                            let (_, ticket) = unconfirmed.pop_front().expect("front exists");
                            self.log.confirm(ticket);
                            if !self.metrics.subscribe_up.swap(true, Relaxed) {
                                tracing::info!(
                                    subscriptions = subscribed.len(),
                                    "bridge: subscriber connected to {where_}"
                                );
                                // Subscribed again: what each topic missed meanwhile can be
                                // read now without a seam.
                                let routes = self.bus.routes();
                                relay.catchup.retain(|t| !routes.workers(t).is_empty());
                                relay.catchup.reconnected(&mut relay.steps);
                                self.run_steps(relay);
                            }
                            self.metrics.subscriptions.store(subscribed.len() as i64, Relaxed);
                        }
                    }
                    Err(why) => return Some(why),
                },
                Some((topic, position)) = self.seeds.recv() => {
                    let subscribed = !self.bus.routes().workers(&topic).is_empty();
                    relay.catchup.seed(topic, position, subscribed);
                }
                Some((topic, id, since, read)) = relay.fills.next(), if !relay.fills.is_empty() => {
                    relay.catchup.filled(&topic, id, &since, read, &mut relay.steps);
                    self.run_steps(relay);
                }
                () = self.log.changed() => {
                    let (topics, ticket) = self.log.take();
                    match self.follow(writer, subscribed, topics, relay).await {
                        Ok(0) => self.log.confirm(ticket),
                        Ok(n) => unconfirmed.push_back((n, ticket)),
                        Err(why) => {
                            self.log.confirm(ticket);
                            return Some(why);
                        }
                    }
                }
                _ = ping.tick() => {
                    relay.catchup.retry(&mut relay.steps);
                    if let Some(every) = self.touch_every {
                        // Spread over the TTL, a bounded number a second; best effort (a
                        // position lasts ten rounds).
                        for topic in relay.catchup.due(Instant::now(), every, TOUCH_PER_SECOND) {
                            if self.requests.try_send(Request::Touch(topic)).is_err() {
                                break;
                            }
                        }
                    }
                    self.run_steps(relay);
                    if ping_sent.is_some_and(|at| at.elapsed() >= RESPONSE_TIMEOUT) {
                        let secs = RESPONSE_TIMEOUT.as_secs();
                        return Some(format!("no answer within {secs} s"));
                    }
                    if ping_sent.is_none() {
                        if let Err(e) = writer.command(&[b"PING"]).await {
                            return Some(e.to_string());
                        }
                        ping_sent = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Sends SUBSCRIBE for the changed topics that now have a local recipient and UNSUBSCRIBE
    /// for those that no longer do; returns how many confirmations to expect.
    async fn follow(
        &self,
        writer: &mut pubsub::Writer,
        subscribed: &mut HashSet<String>,
        topics: Vec<Topic>,
        relay: &mut Relay,
    ) -> Result<usize, LinkDown> {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for topic in topics {
            let name = self.names.topic(&topic);
            let wanted = !self.bus.routes().workers(&topic).is_empty();
            match (wanted, subscribed.contains(&name)) {
                (true, false) => add.push(name),
                (false, true) => {
                    relay.catchup.forget(&topic);
                    remove.push(name);
                }
                _ => {}
            }
        }
        change(writer, subscribed, add, remove).await
    }

    /// Hands a message from another machine to the workers that have recipients, without
    /// waiting: a worker whose inbox is full misses it (counted), the others do not wait.
    fn relay(&self, channel: &[u8], payload: &[u8], relay: &mut Relay) {
        let Some(target) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.names.parse(c))
        else {
            return;
        };
        let Some(decoded) = wire::decode(payload) else {
            self.metrics.malformed.fetch_add(1, Relaxed);
            return;
        };
        // Our own message was delivered locally when it was accepted; with history, messages
        // and controls are delivered only as Redis relays them (in its order), ours included.
        let own = decoded.instance == self.instance;
        let max = self.max_message_bytes;
        let envelope = match decoded.body {
            _ if own && !self.history => return,
            wire::Body::Message(_) if own => return,
            wire::Body::Message(payload) => wire::frame(&target, payload, max).map(|frame| {
                Envelope::Message(Delivery {
                    target,
                    frame,
                    position: None,
                })
            }),
            wire::Body::Positioned(at, payload) => {
                let (Some(topic), Some(frame)) = (
                    Topic::of(&target),
                    wire::frame_at(&target, payload, at.offset, max),
                ) else {
                    self.metrics.malformed.fetch_add(1, Relaxed);
                    return;
                };
                self.metrics.received.fetch_add(1, Relaxed);
                // On its way while the topic was unsubscribed here: nobody to give it to, and
                // no track to make (it would outlive the subscription).
                if self.bus.routes().workers(&topic).is_empty() {
                    return;
                }
                let delivery = Delivery {
                    target,
                    frame,
                    position: Some(redis_history::position(at.epoch, at.offset)),
                };
                relay.catchup.message(topic, delivery, &mut relay.steps);
                self.run_steps(relay);
                return;
            }
            wire::Body::Control(body) => {
                wire::control(&target, body).map(|(user, c)| Envelope::Control(user, c, None))
            }
            wire::Body::ControlFrom(at, body) => wire::control(&target, body).map(|(user, c)| {
                let since = Since {
                    offset: at.offset,
                    epoch: at.epoch.to_string(),
                };
                Envelope::Control(user, c, Some(since))
            }),
        };
        let Some(envelope) = envelope else {
            self.metrics.malformed.fetch_add(1, Relaxed);
            return;
        };
        self.metrics.received.fetch_add(1, Relaxed);
        match (&envelope, self.history) {
            // With history, the backend's word keeps its place among the user's messages,
            // also while a gap in them is read.
            (Envelope::Control(user, ..), true) => {
                let topic = Topic::User(user.clone());
                relay.catchup.control(&topic, envelope, &mut relay.steps);
                self.run_steps(relay);
            }
            _ => self.deliver(envelope),
        }
    }

    fn deliver(&self, envelope: Envelope) {
        let missed = self.bus.try_deliver(envelope);
        self.metrics.inbox_full.fetch_add(missed, Relaxed);
    }

    /// Relays what the catch-up let through and sends the reads it asks for.
    fn run_steps(&self, relay: &mut Relay) {
        for step in relay.steps.drain(..) {
            match step {
                Step::Relay(envelope) => {
                    if let Envelope::Lost(..) = envelope {
                        self.metrics.gaps_lost.fetch_add(1, Relaxed);
                    }
                    self.deliver(envelope)
                }
                Step::Fill(topic, since, id) => {
                    self.metrics.gap_reads.fetch_add(1, Relaxed);
                    let (reply, answer) = oneshot::channel();
                    let request = Request::Read {
                        topic: topic.clone(),
                        since: Some(since.clone()),
                        relayed: true,
                        reply,
                    };
                    let sent = self.requests.try_send(request).is_ok();
                    relay.fills.push(Box::pin(async move {
                        let read = match sent {
                            true => answer.await.ok(),
                            false => None,
                        };
                        (topic, id, since, read)
                    }));
                }
            }
        }
    }

    /// While disconnected: wait `delay`, letting connections that wait for a subscription go
    /// on at once (local delivery works; the reconnect subscribes to everything).
    async fn wait_down(&mut self, delay: std::time::Duration, relay: &mut Relay) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = self.shutdown.cancelled() => return,
                () = self.log.changed() => self.log.confirm(self.log.take().1),
                // The publishing link may be up while this one is not: a position a connection
                // read now is where the catch-up must start for its topic.
                Some((topic, position)) = self.seeds.recv() => {
                    let subscribed = !self.bus.routes().workers(&topic).is_empty();
                    relay.catchup.seed(topic, position, subscribed);
                }
            }
        }
    }
}

/// Sends subscription changes, a chunk of channels per command, records them, and returns how
/// many confirmations Redis will send (one per channel).
async fn change(
    writer: &mut pubsub::Writer,
    subscribed: &mut HashSet<String>,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<usize, LinkDown> {
    let expected = add.len() + remove.len();
    let commands =
        (add.chunks(CHUNK).map(|c| (true, c))).chain(remove.chunks(CHUNK).map(|c| (false, c)));
    for (subscribe, chunk) in commands {
        let verb: &[u8] = if subscribe {
            b"SUBSCRIBE"
        } else {
            b"UNSUBSCRIBE"
        };
        let mut args = vec![verb];
        args.extend(chunk.iter().map(|c| c.as_bytes()));
        within(writer.command(&args)).await?;
        for name in chunk {
            match subscribe {
                true => subscribed.insert(name.clone()),
                false => subscribed.remove(name),
            };
        }
    }
    Ok(expected)
}
