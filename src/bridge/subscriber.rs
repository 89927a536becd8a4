//! The subscribing links: one RESP2 pub/sub connection of our own ([`pubsub`]) per master,
//! whose subscriptions follow the subscription log — on a cluster, each topic's shard channel
//! (SSUBSCRIBE) on the master of its slot — feeding what arrives into the local bus without
//! ever waiting for it. One task reads every link. With history, messages go through the
//! [`Catchup`], which fills gaps from Redis's history (reads sent through the publisher)
//! before later messages: after a reconnect, and after a topic moved to another master.
//!
//! What each link should hold and who waits for what is the [`Reconciler`]'s (a pure state
//! machine); this file does its I/O: connections, writes, pings, the relay.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::catchup::{Catchup, Step};
use super::cluster::{Deployment, Node, Topology};
use super::history as redis_history;
use super::pubsub::{self, Push, Reader, Writer};
use super::reconcile::{Change, Effect, Owned, Reconciler};
use super::wire::{self, Names};
use super::{within, Backoff, LinkDown, Request, PING_EVERY, RESPONSE_TIMEOUT};
use crate::bus::{Bus, Delivery, Envelope};
use crate::history::Position;
use crate::history::Read;
use crate::metrics::{BridgeMetrics, ShardMetrics};
use crate::protocol::Since;
use crate::protocol::{Target, Topic};
use crate::subscriptions::SubscriptionLog;

/// A read of a gap in flight, answered with what it asked.
type Fill = Pin<Box<dyn Future<Output = (Topic, u64, Since, Option<Read>)> + Send>>;
/// A connection being made to a master, by attempt.
type Connecting =
    Pin<Box<dyn Future<Output = (Node, u64, Result<(Reader, Writer), String>)> + Send>>;

/// What the relay remembers across reconnects.
#[derive(Default)]
struct Relay {
    catchup: Catchup,
    fills: FuturesUnordered<Fill>,
    steps: Vec<Step>,
    /// What this turn of the loop relays, handed to the bus at its end: a worker is woken
    /// once for a burst, not once per message.
    outbox: Vec<Envelope>,
    /// The last Redis channel relayed and what it names: a burst is mostly one topic's, and a
    /// name parsed is a name checked and allocated.
    last_channel: (Vec<u8>, Option<Target>),
}

/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const CHUNK: usize = 1000;
/// Most pushes taken from the links in one turn of the relay loop (its other branches wait
/// meanwhile: a shutdown, a map change, a ping).
const PUSHES_PER_TURN: usize = 256;
/// Most topic positions kept alive per second (see [`Catchup::due`]).
const TOUCH_PER_SECOND: usize = 2000;

pub(super) struct Subscriber {
    pub deployment: Deployment,
    /// Which master serves each slot: one link per master.
    pub map: watch::Receiver<Arc<Topology>>,
    /// Asks for the map to be read again (a link failed, a slot moved).
    pub refresh: Arc<Notify>,
    pub names: Names,
    /// This process's mark on its own messages.
    pub instance: u64,
    /// Topics have history in Redis: their messages (and controls) are relayed even when this
    /// process published them, since it does not deliver them itself.
    pub history: bool,
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

/// The subscribing connection to one master.
struct Link {
    node: Node,
    shard: Arc<ShardMetrics>,
    conn: Option<(Reader, Writer)>,
    /// When the oldest PING without its PONG went out.
    ping_sent: Option<Instant>,
    backoff: Backoff,
    /// While down: when to connect again.
    retry_at: Option<Instant>,
    connected_before: bool,
}

/// Everything the subscriber task holds.
#[derive(Default)]
struct State {
    map: Arc<Topology>,
    /// One per master of the map, in its order; the reconciler's links are the same.
    links: Vec<Link>,
    reconciler: Reconciler,
    connecting: FuturesUnordered<Connecting>,
    /// The link to read first next time (so a busy one cannot starve the others).
    next_read: usize,
    relay: Relay,
}

impl Subscriber {
    /// Runs until shutdown; then answers every waiting ticket, since nothing more is applied.
    pub async fn run(self, seeds: mpsc::UnboundedReceiver<(Topic, Position)>) {
        self.relay_until_shutdown(seeds).await;
        self.log.close();
    }

    async fn relay_until_shutdown(&self, mut seeds: mpsc::UnboundedReceiver<(Topic, Position)>) {
        let mut map_rx = self.map.clone();
        let mut state = State::default();
        self.follow_map(&mut state, map_rx.borrow_and_update().clone())
            .await;
        let mut tick = interval(PING_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let retry_at = state.links.iter().filter_map(|l| l.retry_at).min();
            let retry = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now));
            let State {
                links,
                connecting,
                next_read,
                relay,
                ..
            } = &mut state;
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                (i, push) = std::future::poll_fn(|cx| read_any(links, next_read, cx)) => {
                    self.on_push(&mut state, i, push).await;
                    // What the links hold already is taken in the same turn: one pass of this
                    // loop (its timers and futures) per read from Redis, not per message.
                    for _ in 1..PUSHES_PER_TURN {
                        let State { links, next_read, .. } = &mut state;
                        let ready = std::future::poll_fn(|cx| read_any(links, next_read, cx));
                        let Some((i, push)) = ready.now_or_never() else {
                            break;
                        };
                        self.on_push(&mut state, i, push).await;
                    }
                }
                Some((node, attempt, connected)) = connecting.next(), if !connecting.is_empty() => {
                    self.on_connected(&mut state, node, attempt, connected).await;
                }
                Ok(()) = map_rx.changed() => {
                    let map = map_rx.borrow_and_update().clone();
                    self.follow_map(&mut state, map).await;
                }
                Some((topic, position)) = seeds.recv() => {
                    let subscribed = !self.bus.routes().workers(&topic).is_empty();
                    relay.catchup.seed(topic, position, subscribed);
                }
                Some((topic, id, since, read)) = relay.fills.next(), if !relay.fills.is_empty() => {
                    relay.catchup.filled(&topic, id, &since, read, &mut relay.steps);
                    self.run_steps(relay);
                }
                () = self.log.changed() => self.follow_log(&mut state).await,
                () = retry, if retry_at.is_some() => self.connect_due(&mut state),
                _ = tick.tick() => self.on_tick(&mut state).await,
            }
            self.deliver(&mut state.relay);
        }
    }

    /// A new map: one link per master (those still masters keep theirs), and every channel
    /// whose slot changed master is subscribed on its new one.
    async fn follow_map(&self, state: &mut State, map: Arc<Topology>) {
        let nodes: Vec<Node> = state.links.iter().map(|l| l.node.clone()).collect();
        let mut old: Vec<Option<Link>> = state.links.drain(..).map(Some).collect();
        let kept: Vec<Option<usize>> = map
            .masters
            .iter()
            .map(|node| nodes.iter().position(|n| n == node))
            .collect();
        for (node, k) in map.masters.iter().zip(&kept) {
            let link = k.and_then(|o| old[o].take()).unwrap_or_else(|| Link {
                node: node.clone(),
                shard: self.metrics.shard(&node.to_string()),
                retry_at: Some(Instant::now()),
                ..Link::placeholder()
            });
            state.links.push(link);
        }
        state.map = map.clone();
        for gone in old.into_iter().flatten() {
            tracing::info!("bridge: {} is no longer a master", gone.node);
            gone.shard.subscribe_up.store(false, Relaxed);
            gone.shard.subscriptions.store(0, Relaxed);
        }
        state
            .reconciler
            .follow_map(&kept, |c| map.owner(c), |i| self.owned(&map, i));
        self.apply(state).await;
        self.update_up(state);
    }

    /// The log changed: each link subscribes to its topics that gained a recipient here and
    /// leaves those that lost their last one.
    async fn follow_log(&self, state: &mut State) {
        let (topics, ticket) = self.log.take();
        let mut changes = Vec::new();
        for topic in topics {
            let name = self.names.topic(&topic);
            let wanted = !self.bus.routes().workers(&topic).is_empty();
            if !wanted {
                state.relay.catchup.forget(&topic);
            }
            if let Some(link) = state.map.owner(&name) {
                changes.push(Change { link, name, wanted });
            }
        }
        state.reconciler.follow_log(ticket, changes);
        self.apply(state).await;
    }

    /// Subscribes every link to the wanted channels it lacks, if a slot moved.
    async fn resync(&self, state: &mut State) {
        let map = state.map.clone();
        state
            .reconciler
            .resync(|c| map.owner(c), |i| self.owned(&map, i));
        self.apply(state).await;
    }

    /// The channels link `i` should hold by `map`, with their topics.
    fn owned(&self, map: &Topology, i: usize) -> Owned {
        let mut owned: Owned = Vec::new();
        for topic in self.bus.routes().topics() {
            let name = self.names.topic(&topic);
            if map.owner(&name) == Some(i) {
                owned.push((name, Some(topic)));
            }
        }
        let all = self.names.all();
        if map.owner(&all) == Some(i) {
            owned.push((all, None));
        }
        owned
    }

    /// Carries out what the reconciler asks, in order, until it asks nothing more (a write
    /// that fails takes its link down, which may confirm tickets).
    async fn apply(&self, state: &mut State) {
        loop {
            let effects: Vec<Effect> = state.reconciler.effects().collect();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Send { link, add, remove } => {
                        // Gone down since the reconciler asked: its book was reset with it.
                        let Some((_, writer)) = state.links[link].conn.as_mut() else {
                            continue;
                        };
                        let cluster = self.deployment.cluster;
                        if let Err(why) = change(writer, cluster, &add, &remove).await {
                            self.down(state, link, &why);
                        }
                    }
                    Effect::Confirm(ticket) => self.log.confirm(ticket),
                    Effect::Refill(topics) => {
                        // Subscribed again: what each topic missed meanwhile can be read now
                        // without a seam.
                        let routes = self.bus.routes();
                        let relay = &mut state.relay;
                        relay.catchup.retain(|t| !routes.workers(t).is_empty());
                        relay
                            .catchup
                            .reconnected(|t| topics.contains(t), &mut relay.steps);
                        self.run_steps(relay);
                    }
                    Effect::Applied(i) => {
                        let n = state.reconciler.subscriptions(i);
                        state.links[i].shard.subscriptions.store(n as i64, Relaxed);
                        self.update_up(state);
                    }
                    Effect::Restored(i) => {
                        let (link, n) = (&state.links[i], state.reconciler.subscriptions(i));
                        link.shard.subscribe_up.store(true, Relaxed);
                        link.shard.subscriptions.store(n as i64, Relaxed);
                        tracing::info!(
                            subscriptions = n,
                            "bridge: subscriber connected to {}",
                            link.node
                        );
                        self.update_up(state);
                    }
                    Effect::Down(i, why) => self.down(state, i, why),
                    Effect::Refresh => self.refresh.notify_one(),
                }
            }
        }
    }

    /// Starts connecting every link whose wait is over.
    fn connect_due(&self, state: &mut State) {
        let now = Instant::now();
        for (i, link) in state.links.iter_mut().enumerate() {
            if link.retry_at.is_some_and(|at| at <= now) {
                link.retry_at = None;
                let attempt = state.reconciler.attempt(i);
                let node = link.node.clone();
                let deployment = self.deployment.clone();
                // Room for the largest message plus the wire header.
                let max_bulk = self.max_message_bytes + 64;
                state.connecting.push(Box::pin(async move {
                    // A PING answered, not just a TCP handshake: the kernel of a frozen Redis
                    // still accepts connections.
                    let connected = within(async {
                        let (mut reader, mut writer) = deployment.open(&node, max_bulk).await?;
                        writer
                            .command(&[b"PING"])
                            .await
                            .map_err(|e| e.to_string())?;
                        match reader.next().await? {
                            Push::Pong => Ok((reader, writer)),
                            other => Err(format!("PING answered {other:?}")),
                        }
                    })
                    .await;
                    (node, attempt, connected)
                }));
            }
        }
    }

    /// A connection attempt ended: a link that connected subscribes to everything it should
    /// hold, and is up once Redis confirmed it all. A stale attempt's answer is dropped.
    async fn on_connected(
        &self,
        state: &mut State,
        node: Node,
        attempt: u64,
        connected: Result<(Reader, Writer), String>,
    ) {
        let Some(i) = state.links.iter().position(|l| l.node == node) else {
            return;
        };
        if !state.reconciler.awaits(i, attempt) {
            return;
        }
        let link = &mut state.links[i];
        match connected {
            Err(why) => {
                tracing::error!("bridge: cannot connect the subscriber to {node}: {why}; retrying");
                link.retry_at = Some(Instant::now() + link.backoff.next());
                self.refresh.notify_one();
            }
            Ok(conn) => {
                link.conn = Some(conn);
                if link.connected_before {
                    self.metrics.reconnects.fetch_add(1, Relaxed);
                }
                link.connected_before = true;
                let owned = self.owned(&state.map, i);
                state.reconciler.connected(i, owned);
                self.apply(state).await;
            }
        }
    }

    async fn on_push(&self, state: &mut State, i: usize, push: Result<Push, String>) {
        let link = &mut state.links[i];
        match push {
            Ok(Push::Message(message)) => {
                link.shard.received.fetch_add(1, Relaxed);
                self.relay(message.channel(), message.payload(), &mut state.relay);
                return;
            }
            Ok(Push::Pong) => link.ping_sent = None,
            Ok(Push::Oversize) => {
                self.metrics.malformed.fetch_add(1, Relaxed);
            }
            Ok(Push::Subscribed) => state.reconciler.subscribed(i),
            Ok(Push::Unsubscribed { channel }) => {
                let name = String::from_utf8_lossy(&channel);
                if state.reconciler.unsubscribed(i, &name) {
                    // Its slot moved to another master: subscribe there once the map says so.
                    tracing::info!(
                        "bridge: {} took {name} away (its slot moved); following",
                        link.node
                    );
                }
            }
            // On a cluster each command names one shard channel: an error is its answer (most
            // often -MOVED: the map is behind). Anywhere else it is a broken link.
            Ok(Push::Refused(why))
                if self.deployment.cluster
                    && (moved_slot(&why).is_some() || why.starts_with("CLUSTERDOWN")) =>
            {
                if let Some(channel) = state.reconciler.refused(i, moved_slot(&why)) {
                    tracing::info!("bridge: {} refused {channel}: {why}", link.node);
                }
            }
            Ok(Push::Refused(why)) => self.down(state, i, &format!("Redis: {why}")),
            Err(why) => self.down(state, i, &why),
        }
        self.apply(state).await;
    }

    /// Link `i` failed: it forgets its subscriptions and connects again after a backoff.
    fn down(&self, state: &mut State, i: usize, why: &str) {
        let link = &mut state.links[i];
        tracing::warn!("bridge: subscriber lost {}: {why}; reconnecting", link.node);
        if state.reconciler.down(i) {
            link.backoff.reset();
        }
        link.conn = None;
        link.ping_sent = None;
        link.retry_at = Some(Instant::now() + link.backoff.next());
        link.shard.subscribe_up.store(false, Relaxed);
        link.shard.subscriptions.store(0, Relaxed);
        self.refresh.notify_one();
        self.update_up(state);
    }

    /// Ready once every master's link is restored and every slot has a master.
    fn update_up(&self, state: &State) {
        let up = state.map.complete() && state.reconciler.all_restored();
        let was = self.metrics.subscribe_up.swap(up, Relaxed);
        if was && !up {
            tracing::warn!("bridge: a Redis master is unreachable; messages through it are lost until it is back");
        }
        let subscriptions = (0..state.links.len())
            .map(|i| state.reconciler.subscriptions(i))
            .sum::<usize>();
        self.metrics
            .subscriptions
            .store(subscriptions as i64, Relaxed);
    }

    /// Every second: pings each link (one that did not answer the last ping in time is down),
    /// keeps history positions alive, retries failed reads, and subscribes what moved.
    async fn on_tick(&self, state: &mut State) {
        let relay = &mut state.relay;
        relay.catchup.retry(Instant::now(), &mut relay.steps);
        if let Some(every) = self.touch_every {
            // Spread over the TTL, a bounded number a second; best effort (a position lasts
            // ten rounds).
            for topic in relay.catchup.due(Instant::now(), every, TOUCH_PER_SECOND) {
                if self.requests.try_send(Request::Touch(topic)).is_err() {
                    break;
                }
            }
        }
        self.run_steps(relay);
        for i in 0..state.links.len() {
            let link = &mut state.links[i];
            let Some((_, writer)) = link.conn.as_mut() else {
                continue;
            };
            if link
                .ping_sent
                .is_some_and(|at| at.elapsed() >= RESPONSE_TIMEOUT)
            {
                let secs = RESPONSE_TIMEOUT.as_secs();
                self.down(state, i, &format!("no answer within {secs} s"));
                continue;
            }
            if link.ping_sent.is_none() {
                match within(writer.command(&[b"PING"])).await {
                    Ok(()) => link.ping_sent = Some(Instant::now()),
                    Err(why) => self.down(state, i, &why),
                }
            }
        }
        self.resync(state).await;
    }

    /// Hands a message from another machine to the workers that have recipients, without
    /// waiting: a worker whose inbox is full misses it (counted), the others do not wait.
    fn relay(&self, channel: &[u8], payload: &[u8], relay: &mut Relay) {
        let (last, named) = &mut relay.last_channel;
        if last.as_slice() != channel {
            last.clear();
            last.extend_from_slice(channel);
            *named = std::str::from_utf8(channel)
                .ok()
                .and_then(|c| self.names.parse(c));
        }
        let Some(target) = named.clone() else {
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
            // Presence events are made by Redis for the whole fleet: this machine's too.
            wire::Body::Presence(body) => wire::presence_event(&target, body, max)
                .map(|(channel, frame)| Envelope::Presence(channel, frame)),
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
            _ => relay.outbox.push(envelope),
        }
    }

    /// Hands what this turn relayed to the bus, in order.
    fn deliver(&self, relay: &mut Relay) {
        let missed = self.bus.try_deliver_burst(relay.outbox.drain(..));
        if missed > 0 {
            self.metrics.inbox_full.fetch_add(missed, Relaxed);
        }
    }

    /// Relays what the catch-up let through and sends the reads it asks for.
    fn run_steps(&self, relay: &mut Relay) {
        for step in relay.steps.drain(..) {
            match step {
                Step::Relay(envelope) => {
                    if let Envelope::Lost(..) = envelope {
                        self.metrics.gaps_lost.fetch_add(1, Relaxed);
                    }
                    relay.outbox.push(envelope)
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
}

impl Link {
    /// The base of a new link.
    fn placeholder() -> Self {
        Link {
            node: Node {
                host: String::new(),
                port: 0,
            },
            shard: Arc::default(),
            conn: None,
            ping_sent: None,
            backoff: Backoff::new(),
            retry_at: None,
            connected_before: false,
        }
    }
}

/// The slot a `-MOVED <slot> <host:port>` or `-ASK <slot> <host:port>` names.
fn moved_slot(error: &str) -> Option<u16> {
    let rest = error
        .strip_prefix("MOVED ")
        .or_else(|| error.strip_prefix("ASK "))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The next push from any connected link, the one after the last served first.
fn read_any(
    links: &mut [Link],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<(usize, Result<Push, String>)> {
    let n = links.len();
    for k in 0..n {
        let i = (*next + k) % n;
        if let Some((reader, _)) = links[i].conn.as_mut() {
            if let Poll::Ready(push) = reader.poll_next(cx) {
                *next = (i + 1) % n;
                return Poll::Ready((i, push));
            }
        }
    }
    Poll::Pending
}

/// Sends subscription changes in one write: a chunk of channels per SUBSCRIBE, or on a cluster
/// one SSUBSCRIBE per shard channel (a command's channels must share a slot). Redis confirms
/// each channel named.
async fn change(
    writer: &mut Writer,
    sharded: bool,
    add: &[String],
    remove: &[String],
) -> Result<(), LinkDown> {
    let (subscribe, unsubscribe): (&[u8], &[u8]) = match sharded {
        false => (b"SUBSCRIBE", b"UNSUBSCRIBE"),
        true => (b"SSUBSCRIBE", b"SUNSUBSCRIBE"),
    };
    let per_command = if sharded { 1 } else { CHUNK };
    let commands = (add.chunks(per_command).map(|c| (subscribe, c)))
        .chain(remove.chunks(per_command).map(|c| (unsubscribe, c)));
    let mut out = Vec::new();
    for (verb, chunk) in commands {
        let mut args = vec![verb];
        args.extend(chunk.iter().map(|c| c.as_bytes()));
        pubsub::encode(&mut out, &args);
    }
    within(writer.raw(&out)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirection_names_its_slot() {
        assert_eq!(moved_slot("MOVED 2578 127.0.0.1:40975"), Some(2578));
        assert_eq!(moved_slot("ASK 7 h:1"), Some(7));
        assert_eq!(moved_slot("CLUSTERDOWN The cluster is down"), None);
        assert_eq!(moved_slot("LOADING Redis is loading"), None);
    }
}
