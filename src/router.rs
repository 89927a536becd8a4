//! Where a published message goes. [`Router::publish`] is the door for publishing: the HTTP API
//! calls it and nothing below it. It hands the message to the bridge (other machines) and to
//! the bus, which queues it on every local worker that has a recipient. With history in Redis,
//! a message of a topic with history goes to Redis only, which gives its offset and relays it
//! to every machine, this one included, in one order.

use std::sync::Arc;
use std::time::Instant;

pub use crate::bridge::Unreachable;
use crate::bridge::{Bridge, Fate};
use crate::bus::{Bus, Delivery, Envelope};
use crate::history::{History, Read};
use crate::idempotency::{Claim, Key, Remembered};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::protocol::Since;
use crate::protocol::Topic;
use crate::protocol::{Channel, Control, Frame, Target, UserId};
use crate::subscriptions::SubscriptionLog;

/// A publish (or `/batch`) that Redis did not take whole: what became of each of its messages
/// with history, in order. Those not queued at all are `Refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotTaken {
    pub fates: Vec<Fate>,
}

/// Why a publish with idempotency keys was not (wholly) done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Redis did not take the messages with history whole (see [`NotTaken`]).
    NotTaken(NotTaken),
    /// A key's first publication is still on its way: nothing was published.
    InFlight(Key),
    /// Redis could not be asked about the key of message `at`: those before it were
    /// published (a retry with the same keys does not publish them again), it and those after
    /// were not.
    Unchecked { at: usize },
}

/// Where a message with history was taken: its offset in its topic's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub offset: u64,
    pub epoch: Arc<str>,
}

pub struct Router {
    bus: Bus,
    /// None in single-machine mode.
    bridge: Option<Bridge>,
    /// With `--history-size`: offsets and what is kept for recovery.
    history: Option<Arc<History>>,
    metrics: Arc<Metrics>,
    /// Who is in each channel here.
    presence: Arc<Presence>,
    /// Alone: the idempotency keys of recent publications.
    remembered: Remembered,
}

impl Router {
    pub fn new(
        bus: Bus,
        bridge: Option<Bridge>,
        history: Option<Arc<History>>,
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Router {
            presence,
            bus,
            bridge,
            history,
            metrics,
            remembered: Remembered::new(std::time::Duration::from_secs(300)),
        }
    }

    /// Idempotency keys are remembered for `ttl` (`--idempotency-ttl`; alone, here).
    pub fn with_idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.remembered = Remembered::new(ttl);
        self
    }

    /// Who is in each channel here: the hubs report to it.
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// The channels some connection of this process is subscribed to.
    pub fn channels_here(&self) -> Vec<Channel> {
        let topics = self.bus.routes().topics().into_iter();
        topics
            .filter_map(|t| match t {
                Topic::Channel(c) => Some(c),
                Topic::User(_) => None,
            })
            .collect()
    }

    /// The channels with subscribers whose names start with `prefix`: the fleet's with Redis
    /// (those with members in its presence), this machine's alone.
    ///
    /// # Errors
    /// Redis cannot be asked now.
    pub async fn channels(&self, prefix: &str) -> Result<Vec<Channel>, Unreachable> {
        match &self.bridge {
            Some(bridge) => bridge.channels(prefix).await,
            None => Ok(self
                .channels_here()
                .into_iter()
                .filter(|c| c.as_str().starts_with(prefix))
                .collect()),
        }
    }

    /// Whether presence questions are answered by Redis (the fleet's), not from memory.
    pub fn presence_in_redis(&self) -> bool {
        self.bridge.is_some()
    }

    /// A page of a channel's members: this process's alone, or with Redis the fleet's.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn presence_page(
        &self,
        channel: &Channel,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<crate::presence::Page, Unreachable> {
        match &self.bridge {
            Some(bridge) => bridge.presence_page(channel.clone(), after, limit).await,
            None => Ok(self.presence.members(channel, after.as_ref(), limit)),
        }
    }

    /// How many are in a channel: here, or with Redis in the fleet.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn presence_count(
        &self,
        channel: &Channel,
    ) -> Result<crate::presence::Count, Unreachable> {
        match &self.bridge {
            Some(bridge) => bridge.presence_count(channel.clone()).await,
            None => Ok(self.presence.count(channel)),
        }
    }

    /// Accepts messages, in order: when this returns, each is queued on every local worker that
    /// has a recipient and handed to the bridge for the other machines. Returns the offsets of
    /// those whose topic has history.
    ///
    /// # Errors
    /// With history in Redis, Redis did not take them all: what became of each (taken, not
    /// taken, or unknown when the link broke while it was on its way).
    pub async fn publish(&self, deliveries: Vec<Delivery>) -> Result<Vec<Taken>, NotTaken> {
        if let Some(bridge) = self.bridge.as_ref().filter(|b| b.has_history()) {
            return self.append_all(bridge, deliveries, Vec::new()).await;
        }
        let mut offsets = Vec::new();
        for delivery in deliveries {
            offsets.extend(self.publish_one(delivery).await);
        }
        Ok(offsets)
    }

    /// [`publish`](Self::publish), each message with its idempotency key if it has one (in
    /// `keys`, by index): a message whose key was published to its target within the TTL is
    /// answered as it was then and published nowhere.
    ///
    /// # Errors
    /// See [`Refused`].
    pub async fn publish_once(
        &self,
        deliveries: Vec<Delivery>,
        keys: Vec<Option<Key>>,
    ) -> Result<Vec<Taken>, Refused> {
        if keys.iter().all(Option::is_none) {
            return self.publish(deliveries).await.map_err(Refused::NotTaken);
        }
        let Some(bridge) = &self.bridge else {
            return self.once_here(deliveries, keys).await;
        };
        let all_topics = deliveries.iter().all(|d| Topic::of(&d.target).is_some());
        if bridge.has_history() && all_topics {
            // The append script keeps each key beside its message, in one step.
            return self
                .append_all(bridge, deliveries, keys)
                .await
                .map_err(Refused::NotTaken);
        }
        // Without history: each key claimed in Redis, then its message published.
        let mut offsets = Vec::new();
        let mut keys = keys.into_iter();
        for (at, delivery) in deliveries.into_iter().enumerate() {
            if let Some(key) = keys.next().flatten() {
                match bridge.claim_once(&delivery.target, &key).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(Unreachable) => return Err(Refused::Unchecked { at }),
                }
            }
            offsets.extend(self.publish_one(delivery).await);
        }
        Ok(offsets)
    }

    /// Alone: every key claimed here first (one still on its way refuses the whole request),
    /// then what is new published and its answer kept.
    async fn once_here(
        &self,
        deliveries: Vec<Delivery>,
        keys: Vec<Option<Key>>,
    ) -> Result<Vec<Taken>, Refused> {
        let names: Vec<String> = deliveries.iter().map(|d| d.target.name()).collect();
        let key = |i: usize| keys.get(i).and_then(Option::as_ref);
        let mut claims: Vec<Option<Claim>> = Vec::with_capacity(deliveries.len());
        for (i, name) in names.iter().enumerate() {
            let claim = key(i).map(|k| self.remembered.claim(name, k));
            if let (Some(Claim::InFlight), Some(k)) = (&claim, key(i)) {
                // Nothing is published: the keys claimed so far are given back.
                for (j, c) in claims.iter().enumerate() {
                    if let (Some(Claim::New), Some(earlier)) = (c, key(j)) {
                        self.remembered.forget(&names[j], earlier);
                    }
                }
                return Err(Refused::InFlight(k.clone()));
            }
            claims.push(claim);
        }
        let mut offsets = Vec::new();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            match &claims[i] {
                Some(Claim::Repeat(answer)) => {
                    offsets.extend(
                        answer
                            .clone()
                            .map(|(offset, epoch)| Taken { offset, epoch }),
                    );
                }
                claim => {
                    let taken = self.publish_one(delivery).await;
                    if let (Some(Claim::New), Some(k)) = (claim, key(i)) {
                        let answer = taken.as_ref().map(|t| (t.offset, t.epoch.clone()));
                        self.remembered.answer(&names[i], k, answer);
                    }
                    offsets.extend(taken);
                }
            }
        }
        Ok(offsets)
    }

    async fn publish_one(&self, delivery: Delivery) -> Option<Taken> {
        self.metrics.accepted(&delivery.target);
        if let (Target::Channel(channel), None) = (&delivery.target, &self.bridge) {
            self.presence.flush_channel(channel);
        }
        let topic = Topic::of(&delivery.target);
        if let (Some(history), Some(topic)) = (&self.history, topic) {
            return Some(self.publish_at(history, &topic, delivery).await);
        }
        if let Some(bridge) = &self.bridge {
            bridge.publish(&delivery);
        }
        self.bus.deliver(Envelope::Message(delivery)).await;
        None
    }

    /// With history in Redis: every message of a topic with history is appended there, all
    /// queued at once (one pipeline, Redis's order is theirs), and delivered here when Redis
    /// relays it. Broadcasts have no history and go as before.
    async fn append_all(
        &self,
        bridge: &Bridge,
        deliveries: Vec<Delivery>,
        keys: Vec<Option<Key>>,
    ) -> Result<Vec<Taken>, NotTaken> {
        let mut pending = Vec::with_capacity(deliveries.len());
        let mut keys = keys.into_iter();
        for delivery in deliveries {
            let key = keys.next().flatten();
            let Some(topic) = Topic::of(&delivery.target) else {
                self.publish_one(delivery).await;
                continue;
            };
            let payload = delivery
                .frame
                .message_payload(&delivery.target)
                .expect("published frames are built by Frame::message");
            let payload = delivery.frame.bytes().slice_ref(payload);
            // Once one cannot be queued, none after it is: what was taken stays a prefix
            // unless Redis itself refuses one in the middle (said per message).
            let answer = match pending.last() {
                Some((_, None)) => None,
                _ => bridge.append(topic, payload, key).ok(),
            };
            pending.push((delivery.target, answer));
        }
        let mut fates = Vec::with_capacity(pending.len());
        for (target, answer) in pending {
            let fate = match answer {
                Some(answer) => answer.await,
                None => Fate::Refused,
            };
            if let Fate::Taken(..) = fate {
                self.metrics.accepted(&target);
            }
            fates.push(fate);
        }
        let offsets: Option<Vec<Taken>> = fates
            .iter()
            .map(|f| match f {
                Fate::Taken(offset, epoch) => Some(Taken {
                    offset: *offset,
                    epoch: epoch.clone(),
                }),
                _ => None,
            })
            .collect();
        offsets.ok_or(NotTaken { fates })
    }

    /// A message of a topic with history: its offset is taken and it is queued under the
    /// topic's lock, so every recipient sees the topic's offsets in order.
    async fn publish_at(&self, history: &History, topic: &Topic, delivery: Delivery) -> Taken {
        let payload = delivery
            .frame
            .message_payload(&delivery.target)
            .expect("published frames are built by Frame::message");
        // Room in the inboxes of the workers with a recipient, taken before the lock; if one
        // gained a recipient meanwhile, again with it.
        let mut workers = self.bus.routes().workers_for(&delivery.target);
        loop {
            let reserved = self.bus.reserve(workers).await;
            let mut locked = history.lock(topic);
            if let Err(more) = self.bus.check_reserved(&reserved, &delivery.target) {
                drop(locked);
                workers = more;
                continue;
            }
            let target = &delivery.target;
            let (position, frame) = locked.append(
                topic,
                |offset| Frame::message_at(target, payload, offset),
                Instant::now(),
            );
            let taken = Taken {
                offset: position.offset,
                epoch: position.epoch.clone(),
            };
            let envelope = Envelope::Message(Delivery {
                target: target.clone(),
                frame,
                position: Some(position),
            });
            self.bus.send_reserved(reserved, envelope);
            return taken;
        }
    }

    /// Topics have history (`--history-size`), in this process or in Redis.
    pub fn has_history(&self) -> bool {
        self.history.is_some() || self.bridge.as_ref().is_some_and(Bridge::has_history)
    }

    /// Where `topic` stands, and with `since` what was missed after it: one read wherever the
    /// history is kept.
    ///
    /// # Errors
    /// The history is in Redis and cannot be read now (or topics have no history).
    pub async fn read_history(
        &self,
        topic: Topic,
        since: Option<Since>,
    ) -> Result<Read, Unreachable> {
        if let Some(history) = &self.history {
            return Ok(history.read(&topic, since.as_ref()));
        }
        match self.bridge.as_ref().filter(|b| b.has_history()) {
            Some(bridge) => bridge.read(topic, since).await,
            None => Err(Unreachable),
        }
    }

    /// The backend's word for every connection of `user`, on every machine that has one; in
    /// order with the messages this process accepts.
    ///
    /// # Errors
    /// The other machines cannot be reached (Redis down or the bridge's queue full): nothing
    /// was done, here either, so the caller can retry the whole call.
    pub async fn control(&self, user: UserId, control: Control) -> Result<(), Unreachable> {
        // A backend subscribe starts where the channel stands now: whatever is published after
        // this call returns is either delivered live or replayed when the connection starts it.
        let since = match &control {
            Control::Subscribe(channel) if self.has_history() => {
                let topic = Topic::Channel(channel.clone());
                let read = self.read_history(topic, None).await?;
                Some(Since {
                    offset: read.position.offset,
                    epoch: read.position.epoch.to_string(),
                })
            }
            _ => None,
        };
        if let Some(bridge) = &self.bridge {
            if !bridge.control(&user, &control, since.as_ref()) {
                return Err(Unreachable);
            }
            if bridge.has_history() {
                // Through Redis only, for this machine too: in order with the messages Redis
                // relays.
                return Ok(());
            }
        }
        self.bus
            .deliver(Envelope::Control(user, control, since))
            .await;
        Ok(())
    }

    /// Resolves when this process may accept connections: at once alone, with Redis once the
    /// bridge reaches it (bounded; see [`Bridge::started`]).
    pub async fn started(&self) {
        if let Some(bridge) = &self.bridge {
            bridge.started().await;
        }
    }

    /// Why a message accepted now might not reach every recipient in the cluster; `None` when
    /// it will: always without Redis, and with it while the bridge is up and the node id ours.
    pub fn not_ready(&self) -> Option<String> {
        self.bridge.as_ref().and_then(Bridge::not_ready)
    }

    /// With Redis: the log connections wait on before they promise other machines' messages.
    pub fn subscription_log(&self) -> Option<Arc<SubscriptionLog>> {
        self.bridge.as_ref().map(|b| b.subscription_log().clone())
    }
}
