//! Where a published message goes. [`Router::publish`] is the door for publishing: the HTTP API
//! calls it and nothing below it. It hands the message to the bridge (other machines) and to
//! the bus, which queues it on every local worker that has a recipient.

use std::sync::Arc;

use crate::bridge::Bridge;
use crate::bus::{Bus, Delivery, Envelope};
use crate::metrics::Metrics;
use crate::protocol::{Control, UserId};
use crate::subscriptions::SubscriptionLog;

/// Other machines of the fleet cannot be reached now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

pub struct Router {
    bus: Bus,
    /// None in single-machine mode.
    bridge: Option<Bridge>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(bus: Bus, bridge: Option<Bridge>, metrics: Arc<Metrics>) -> Self {
        Router {
            bus,
            bridge,
            metrics,
        }
    }

    /// Accepts a message: when this returns, it is queued on every local worker that has a
    /// recipient and handed to the bridge for the other machines.
    pub async fn publish(&self, delivery: Delivery) {
        self.metrics.accepted(&delivery.target);
        if let Some(bridge) = &self.bridge {
            bridge.publish(&delivery);
        }
        self.bus.deliver(Envelope::Message(delivery)).await;
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
        self.bus.deliver(Envelope::Control(user, control)).await;
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
