//! The subscribing link: one RESP2 pub/sub connection of our own ([`pubsub`]) whose
//! subscriptions follow the subscription log, feeding what arrives into the local bus without
//! ever waiting for it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::pubsub::{self, Push};
use super::wire::{self, Names};
use super::{within, Backoff, LinkDown, PING_EVERY, RESPONSE_TIMEOUT};
use crate::bus::{Bus, Delivery, Envelope};
use crate::metrics::BridgeMetrics;
use crate::routes::Topic;
use crate::subscriptions::{SubscriptionLog, Ticket};

/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const CHUNK: usize = 1000;

pub(super) struct Subscriber {
    pub connection: redis::ConnectionInfo,
    pub names: Names,
    /// This process's mark on its own messages.
    pub instance: u64,
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
    pub async fn run(self, where_: &str) {
        self.relay_until_shutdown(where_).await;
        self.log.close();
    }

    async fn relay_until_shutdown(&self, where_: &str) {
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
                    self.wait_down(backoff.next()).await;
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
                    self.wait_down(backoff.next()).await;
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
                    self.wait_down(backoff.next()).await;
                }
            }
        }
    }

    /// Relays messages and follows interest changes until the link fails (returns why) or the
    /// process stops (returns `None`). The link is up once the restored subscriptions are
    /// confirmed.
    async fn serve(
        &self,
        reader: &mut pubsub::Reader,
        writer: &mut pubsub::Writer,
        subscribed: &mut HashSet<String>,
        unconfirmed: &mut Unconfirmed,
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
                    Ok(Push::Message { channel, payload }) => self.relay(&channel, &payload),
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
                            }
                            self.metrics.subscriptions.store(subscribed.len() as i64, Relaxed);
                        }
                    }
                    Err(why) => return Some(why),
                },
                () = self.log.changed() => {
                    let (topics, ticket) = self.log.take();
                    match self.follow(writer, subscribed, topics).await {
                        Ok(0) => self.log.confirm(ticket),
                        Ok(n) => unconfirmed.push_back((n, ticket)),
                        Err(why) => {
                            self.log.confirm(ticket);
                            return Some(why);
                        }
                    }
                }
                _ = ping.tick() => {
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
    ) -> Result<usize, LinkDown> {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for topic in topics {
            let name = self.names.topic(&topic);
            let wanted = !self.bus.routes().workers(&topic).is_empty();
            match (wanted, subscribed.contains(&name)) {
                (true, false) => add.push(name),
                (false, true) => remove.push(name),
                _ => {}
            }
        }
        change(writer, subscribed, add, remove).await
    }

    /// Hands a message from another machine to the workers that have recipients, without
    /// waiting: a worker whose inbox is full misses it (counted), the others do not wait.
    fn relay(&self, channel: &[u8], payload: &[u8]) {
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
        if decoded.instance == self.instance {
            // Our own message: delivered locally when it was accepted.
            return;
        }
        let envelope = match decoded.body {
            wire::Body::Message(payload) => wire::frame(&target, payload, self.max_message_bytes)
                .map(|frame| {
                    Envelope::Message(Delivery {
                        target,
                        frame,
                        position: None,
                    })
                }),
            wire::Body::Control(body) => {
                wire::control(&target, body).map(|(user, c)| Envelope::Control(user, c, None))
            }
        };
        let Some(envelope) = envelope else {
            self.metrics.malformed.fetch_add(1, Relaxed);
            return;
        };
        self.metrics.received.fetch_add(1, Relaxed);
        let missed = self.bus.try_deliver(envelope);
        self.metrics.inbox_full.fetch_add(missed, Relaxed);
    }

    /// While disconnected: wait `delay`, letting connections that wait for a subscription go
    /// on at once (local delivery works; the reconnect subscribes to everything).
    async fn wait_down(&self, delay: std::time::Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = self.shutdown.cancelled() => return,
                () = self.log.changed() => self.log.confirm(self.log.take().1),
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
