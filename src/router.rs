//! Where a published message goes. [`Router::publish`] is the door for publishing: the HTTP API
//! calls it and nothing below it. It hands the message to the bridge (other machines) and to
//! the bus, which queues it on every local worker that has a recipient.

use std::sync::Arc;
use std::time::Instant;

use crate::bridge::Bridge;
use crate::bus::{Bus, Delivery, Envelope};
use crate::history::{History, Since};
use crate::metrics::Metrics;
use crate::protocol::{Control, Frame, Target, UserId};
use crate::routes::Topic;
use crate::subscriptions::SubscriptionLog;

/// Other machines of the fleet cannot be reached now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

pub struct Router {
    bus: Bus,
    /// None in single-machine mode.
    bridge: Option<Bridge>,
    /// With `--history-size`: offsets and what is kept for recovery.
    history: Option<Arc<History>>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(
        bus: Bus,
        bridge: Option<Bridge>,
        history: Option<Arc<History>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Router {
            bus,
            bridge,
            history,
            metrics,
        }
    }

    /// Accepts a message: when this returns, it is queued on every local worker that has a
    /// recipient and handed to the bridge for the other machines. Returns its offset when its
    /// topic has history.
    pub async fn publish(&self, delivery: Delivery) -> Option<u64> {
        self.metrics.accepted(&delivery.target);
        let topic = match &delivery.target {
            Target::User(u) => Some(Topic::User(u.clone())),
            Target::Channel(c) => Some(Topic::Channel(c.clone())),
            Target::All => None,
        };
        if let (Some(history), Some(topic)) = (&self.history, topic) {
            return Some(self.publish_at(history, &topic, delivery).await);
        }
        if let Some(bridge) = &self.bridge {
            bridge.publish(&delivery);
        }
        self.bus.deliver(Envelope::Message(delivery)).await;
        None
    }

    /// A message of a topic with history: its offset is taken and it is queued under the
    /// topic's lock, so every recipient sees the topic's offsets in order.
    async fn publish_at(&self, history: &History, topic: &Topic, delivery: Delivery) -> u64 {
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
            let offset = position.offset;
            let envelope = Envelope::Message(Delivery {
                target: target.clone(),
                frame,
                position: Some(position),
            });
            self.bus.send_reserved(reserved, envelope);
            return offset;
        }
    }

    /// With `--history-size`: where topics stand, for `subscribed` and `connected`.
    pub fn history(&self) -> Option<&Arc<History>> {
        self.history.as_ref()
    }

    /// The backend's word for every connection of `user`, on every machine that has one; in
    /// order with the messages this process accepts.
    ///
    /// # Errors
    /// The other machines cannot be reached (Redis down or the bridge's queue full): nothing
    /// was done, here either, so the caller can retry the whole call.
    pub async fn control(&self, user: UserId, control: Control) -> Result<(), Unreachable> {
        if let Some(bridge) = &self.bridge {
            if !bridge.control(&user, &control) {
                return Err(Unreachable);
            }
        }
        // A backend subscribe starts where the channel stands now: whatever is published after
        // this call returns is either delivered live or replayed when the connection activates.
        let since = match (&self.history, &control) {
            (Some(history), Control::Subscribe(channel)) => {
                let topic = Topic::Channel(channel.clone());
                let position = history.lock(&topic).position(&topic, Instant::now());
                Some(Since {
                    offset: position.offset,
                    epoch: position.epoch.to_string(),
                })
            }
            _ => None,
        };
        self.bus
            .deliver(Envelope::Control(user, control, since))
            .await;
        Ok(())
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
