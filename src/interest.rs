//! Which workers of this process have a recipient for each user and channel.
//!
//! Hubs write it (a worker's bit is set when its first recipient of a topic arrives and cleared
//! when its last one leaves); the router reads it to send a message only to the workers that
//! have a recipient. A bit is set before the client is told it is ready (upgrade completed,
//! `subscribed` sent), so a message published after that always finds the worker.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

use crate::protocol::{Channel, UserId, WorkerId, WorkerSet};

/// What a client can be interested in: its own user id, or a channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    User(UserId),
    Channel(Channel),
}

const SHARDS: usize = 16;

/// The process-wide interest table. Sharded so that workers registering connections at the
/// same time rarely meet on one lock; no lock is held across an `.await`.
pub struct Interest {
    hasher: RandomState,
    shards: [Mutex<HashMap<Topic, WorkerSet>>; SHARDS],
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            hasher: RandomState::new(),
            shards: Default::default(),
        }
    }
}

impl Interest {
    fn shard(&self, topic: &Topic) -> std::sync::MutexGuard<'_, HashMap<Topic, WorkerSet>> {
        let i = (self.hasher.hash_one(topic) as usize) % SHARDS;
        // A poisoned shard only means another thread panicked mid-update of a map whose every
        // state is valid; keep serving.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workers with at least one recipient for `topic`.
    pub fn workers(&self, topic: &Topic) -> WorkerSet {
        self.shard(topic).get(topic).copied().unwrap_or_default()
    }

    /// Marks `worker` as having a recipient. Returns true when no worker of this process had one.
    pub fn add(&self, topic: &Topic, worker: WorkerId) -> bool {
        let mut shard = self.shard(topic);
        match shard.entry(topic.clone()) {
            Entry::Occupied(mut e) => {
                *e.get_mut() = e.get().with(worker);
                false
            }
            Entry::Vacant(e) => {
                e.insert(WorkerSet::default().with(worker));
                true
            }
        }
    }

    /// Marks `worker` as having no recipient left. Returns true when no worker has one now.
    pub fn remove(&self, topic: &Topic, worker: WorkerId) -> bool {
        let mut shard = self.shard(topic);
        let Some(set) = shard.get_mut(topic) else {
            return false;
        };
        *set = set.without(worker);
        if set.is_empty() {
            shard.remove(topic);
            true
        } else {
            false
        }
    }

    /// Number of topics some worker is interested in (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last() {
        let i = Interest::default();
        let t = Topic::User(UserId::new("u").unwrap());
        assert!(i.add(&t, WorkerId(0)));
        assert!(!i.add(&t, WorkerId(1)));
        assert_eq!(i.workers(&t).0, 0b11);
        assert!(!i.remove(&t, WorkerId(0)));
        assert!(i.remove(&t, WorkerId(1)));
        assert!(i.is_empty());
        assert!(i.workers(&t).is_empty());
    }
}
