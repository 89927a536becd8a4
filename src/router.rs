//! Where a published message goes. [`Router::publish`] is the door for publishing: the HTTP API
//! calls it and nothing below it. It hands the message to the bridge (other machines) and to
//! the bus inbox of every local worker that has a recipient (all workers for a broadcast).

use std::sync::Arc;

use crate::bridge::Bridge;
use crate::bus::{Bus, Delivery};
use crate::interest::{Interest, Topic};
use crate::metrics::Metrics;
use crate::protocol::{Target, WorkerSet};

/// Delivery inside this process: interest table + bus. The bridge uses it for what arrives
/// from other machines.
#[derive(Clone)]
pub struct LocalRouter {
    interest: Arc<Interest>,
    bus: Bus,
}

impl LocalRouter {
    pub fn new(interest: Arc<Interest>, bus: Bus) -> Self {
        LocalRouter { interest, bus }
    }

    /// The workers that should get a message for `target`.
    pub fn workers_for(&self, target: &Target) -> WorkerSet {
        match target {
            Target::All => WorkerSet::all(self.bus.workers()),
            Target::User(user) => self.interest.workers(&Topic::User(user.clone())),
            Target::Channel(channel) => self.interest.workers(&Topic::Channel(channel.clone())),
        }
    }

    /// Queues `delivery` on every worker that has a recipient, behind everything queued before
    /// it. Waits while a worker's inbox is full.
    pub async fn deliver(&self, delivery: Delivery) {
        for worker in self.workers_for(&delivery.target).iter() {
            self.bus.send(worker, delivery.clone()).await;
        }
    }
}

pub struct Router {
    local: LocalRouter,
    /// None in single-machine mode.
    bridge: Option<Bridge>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(local: LocalRouter, bridge: Option<Bridge>, metrics: Arc<Metrics>) -> Self {
        Router {
            local,
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
        self.local.deliver(delivery).await;
    }

    /// A message accepted now reaches every recipient in the cluster: always without Redis,
    /// and while both bridge links are up with it.
    pub fn is_ready(&self) -> bool {
        self.bridge.as_ref().is_none_or(Bridge::is_up)
    }
}
