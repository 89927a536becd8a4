//! Where a published message goes: to the bus inbox of every worker of this process that has a
//! recipient for it (all workers for a broadcast). This is the door for publishing; the HTTP
//! API calls [`Router::publish`] and nothing below it.

use std::sync::Arc;

use crate::bus::{Bus, Delivery};
use crate::interest::{Interest, Topic};
use crate::metrics::Metrics;
use crate::protocol::{Target, WorkerSet};

pub struct Router {
    interest: Arc<Interest>,
    bus: Bus,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(interest: Arc<Interest>, bus: Bus, metrics: Arc<Metrics>) -> Self {
        Router {
            interest,
            bus,
            metrics,
        }
    }

    /// The workers that should get a message for `target`.
    pub fn workers_for(&self, target: &Target) -> WorkerSet {
        match target {
            Target::All => WorkerSet::all(self.bus.workers()),
            Target::User(user) => self.interest.workers(&Topic::User(user.clone())),
            Target::Channel(channel) => self.interest.workers(&Topic::Channel(channel.clone())),
        }
    }

    /// Accepts a message: when this returns, it is queued on every worker that has a recipient,
    /// behind every message accepted before it. Waits while a worker's inbox is full.
    pub async fn publish(&self, delivery: Delivery) {
        self.metrics.accepted(&delivery.target);
        for worker in self.workers_for(&delivery.target).iter() {
            self.bus.send(worker, delivery.clone()).await;
        }
    }
}
