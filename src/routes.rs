//! The routing table: which workers of this process have a recipient for each user and channel.
//!
//! Hubs write it (a worker's bit is set when its first recipient of a topic arrives and cleared
//! when its last one leaves); the bus reads it to hand a message only to the workers that have
//! a recipient. A bit is set before the client is told it is ready (upgrade completed,
//! `subscribed` sent), so a message published after that always finds the worker.
//!
//! When a topic gains its first or loses its last worker, the change is recorded in the
//! [`SubscriptionLog`] (with Redis), so the bridge's subscriptions follow the table.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::protocol::{Target, Topic, WorkerId, WorkerSet};
use crate::subscriptions::SubscriptionLog;

const SHARDS: usize = 16;

/// The process-wide routing table. Sharded so that workers registering connections at the same
/// time rarely meet on one lock; no lock is held across an `.await`.
pub struct Routes {
    hasher: RandomState,
    shards: [Mutex<HashMap<Topic, WorkerSet>>; SHARDS],
    workers: usize,
    /// Present with Redis: where process-wide changes go for the bridge.
    log: Option<Arc<SubscriptionLog>>,
}

fn relock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of a map whose every state
    // is valid; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Routes {
    pub fn new(workers: usize, log: Option<Arc<SubscriptionLog>>) -> Self {
        Routes {
            hasher: RandomState::new(),
            shards: Default::default(),
            workers,
            log,
        }
    }

    fn shard(&self, topic: &Topic) -> std::sync::MutexGuard<'_, HashMap<Topic, WorkerSet>> {
        relock(&self.shards[(self.hasher.hash_one(topic) as usize) % SHARDS])
    }

    /// The subscription log the bridge follows, if there is a bridge.
    pub fn log(&self) -> Option<&Arc<SubscriptionLog>> {
        self.log.as_ref()
    }

    /// The workers with at least one recipient for `topic`.
    pub fn workers(&self, topic: &Topic) -> WorkerSet {
        self.shard(topic).get(topic).copied().unwrap_or_default()
    }

    /// The workers that should get a message for `target` (all of them for a broadcast).
    pub fn workers_for(&self, target: &Target) -> WorkerSet {
        match target {
            Target::All => WorkerSet::all(self.workers),
            Target::User(user) => self.workers(&Topic::User(user.clone())),
            Target::Channel(channel) => self.workers(&Topic::Channel(channel.clone())),
        }
    }

    /// Marks `worker` as having a recipient.
    pub fn add(&self, topic: &Topic, worker: WorkerId) {
        let mut shard = self.shard(topic);
        match shard.entry(topic.clone()) {
            Entry::Occupied(mut e) => *e.get_mut() = e.get().with(worker),
            Entry::Vacant(e) => {
                e.insert(WorkerSet::default().with(worker));
                self.changed(topic);
            }
        }
    }

    /// Marks `worker` as having no recipient left.
    pub fn remove(&self, topic: &Topic, worker: WorkerId) {
        let mut shard = self.shard(topic);
        let Some(set) = shard.get_mut(topic) else {
            return;
        };
        *set = set.without(worker);
        if set.is_empty() {
            shard.remove(topic);
            self.changed(topic);
        }
    }

    fn changed(&self, topic: &Topic) {
        if let Some(log) = &self.log {
            log.record(topic);
        }
    }

    /// Every topic some worker has a recipient for.
    pub fn topics(&self) -> Vec<Topic> {
        self.shards
            .iter()
            .flat_map(|s| relock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Number of topics some worker is interested in (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| relock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Channel, UserId};

    #[test]
    fn workers_are_tracked_per_topic() {
        let r = Routes::new(2, None);
        let t = Topic::User(UserId::new("u").unwrap());
        r.add(&t, WorkerId(0));
        r.add(&t, WorkerId(1));
        assert_eq!(r.workers(&t).0, 0b11);
        r.remove(&t, WorkerId(0));
        assert_eq!(r.workers(&t).0, 0b10);
        r.remove(&t, WorkerId(1));
        assert!(r.is_empty());
        assert!(r.workers(&t).is_empty());
        assert_eq!(r.workers_for(&Target::All).0, 0b11);
    }

    #[test]
    fn the_log_sees_only_first_and_last() {
        let log = Arc::new(SubscriptionLog::default());
        let r = Routes::new(2, Some(log.clone()));
        let t = Topic::Channel(Channel::new("c").unwrap());
        r.add(&t, WorkerId(0));
        r.add(&t, WorkerId(1));
        r.remove(&t, WorkerId(0));
        let (topics, first) = log.take();
        assert_eq!(topics, vec![t.clone()]);
        r.remove(&t, WorkerId(1));
        let (topics, last) = log.take();
        assert_eq!(topics, vec![t]);
        assert!(last > first, "each flip is a new position in the log");
        assert!(log.take().0.is_empty());
    }
}
