//! The subscribing link: one RESP2 pub/sub connection whose subscriptions follow the
//! subscription log, feeding what arrives into the local bus without ever waiting for it.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::wire::{self, Names};
use super::{within, Backoff, LinkDown, PING_EVERY};
use crate::bus::{Bus, Delivery, Envelope};
use crate::metrics::BridgeMetrics;
use crate::routes::Topic;
use crate::subscriptions::SubscriptionLog;

/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const CHUNK: usize = 1000;

pub(super) struct Subscriber {
    pub client: redis::Client,
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
            // whoever waits for them is answered once this attempt succeeds or fails.
            let (_, ticket) = self.log.take();
            let pubsub = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = within(self.client.get_async_pubsub()) => r,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(p) => p.split(),
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
            let restored = change(&mut sink, &mut subscribed, wanted, Vec::new()).await;
            self.log.confirm(ticket);
            if let Err(why) = restored {
                tracing::warn!("bridge: cannot restore subscriptions on {where_}: {why}; retrying");
                self.wait_down(backoff.next()).await;
                continue;
            }
            if connected_before {
                self.metrics.reconnects.fetch_add(1, Relaxed);
            }
            connected_before = true;
            backoff.reset();
            self.metrics
                .subscriptions
                .store(subscribed.len() as i64, Relaxed);
            self.metrics.subscribe_up.store(true, Relaxed);
            tracing::info!(
                subscriptions = subscribed.len(),
                "bridge: subscriber connected to {where_}"
            );
            let why = self.serve(&mut sink, &mut stream, &mut subscribed).await;
            self.metrics.subscribe_up.store(false, Relaxed);
            self.metrics.subscriptions.store(0, Relaxed);
            match why {
                None => return,
                Some(why) => {
                    tracing::warn!("bridge: subscriber lost {where_}: {why}; reconnecting")
                }
            }
        }
    }

    /// Relays messages and follows interest changes until the link fails (returns why) or the
    /// process stops (returns `None`).
    async fn serve(
        &self,
        sink: &mut PubSubSink,
        stream: &mut PubSubStream,
        subscribed: &mut HashSet<String>,
    ) -> Option<LinkDown> {
        let mut ping = interval(PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                () = self.log.changed() => {
                    let (topics, ticket) = self.log.take();
                    let result = self.follow(sink, subscribed, topics).await;
                    // Answered either way: on failure the reconnect subscribes to everything.
                    self.log.confirm(ticket);
                    if let Err(why) = result {
                        return Some(why);
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => self.relay(&msg),
                    None => return Some("connection closed".into()),
                },
                _ = ping.tick() => {
                    if let Err(why) = within(sink.ping::<redis::Value>()).await {
                        return Some(why);
                    }
                }
            }
        }
    }

    /// Subscribes to the changed topics that now have a local recipient, and unsubscribes from
    /// those that no longer do.
    async fn follow(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
        topics: Vec<Topic>,
    ) -> Result<(), LinkDown> {
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
        change(sink, subscribed, add, remove).await?;
        self.metrics
            .subscriptions
            .store(subscribed.len() as i64, Relaxed);
        Ok(())
    }

    /// Hands a message from another machine to the workers that have recipients, without
    /// waiting: a worker whose inbox is full misses it (counted), the others do not wait.
    fn relay(&self, msg: &redis::Msg) {
        let Some(target) = self.names.parse(msg.get_channel_name()) else {
            return;
        };
        let Some(decoded) = wire::decode(msg.get_payload_bytes()) else {
            self.metrics.malformed.fetch_add(1, Relaxed);
            return;
        };
        if decoded.instance == self.instance {
            // Our own message: delivered locally when it was accepted.
            return;
        }
        let envelope = match decoded.body {
            wire::Body::Message(payload) => wire::frame(&target, payload, self.max_message_bytes)
                .map(|frame| Envelope::Message(Delivery { target, frame })),
            wire::Body::Control(body) => {
                wire::control(&target, body).map(|(user, c)| Envelope::Control(user, c))
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

/// Applies subscription changes, a chunk of channels per command, and records them.
async fn change(
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<(), LinkDown> {
    for chunk in add.chunks(CHUNK) {
        within(sink.subscribe(chunk)).await?;
        subscribed.extend(chunk.iter().cloned());
    }
    for chunk in remove.chunks(CHUNK) {
        within(sink.unsubscribe(chunk)).await?;
        for name in chunk {
            subscribed.remove(name);
        }
    }
    Ok(())
}
