//! Which workers of this process have a recipient for each user and channel.
//!
//! Hubs write it (a worker's bit is set when its first recipient of a topic arrives and cleared
//! when its last one leaves); the router reads it to send a message only to the workers that
//! have a recipient. A bit is set before the client is told it is ready (upgrade completed,
//! `subscribed` sent), so a message published after that always finds the worker.
//!
//! With a Redis bridge, the table also remembers which topics changed between "some worker"
//! and "no worker", so the bridge can make its Redis subscriptions match, and lets a connection
//! wait until the bridge has caught up ([`Interest::remote_synced`]).

use std::collections::hash_map::{Entry, HashMap};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::protocol::{Channel, UserId, WorkerId, WorkerSet};

/// What a client can be interested in: its own user id, or a channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    User(UserId),
    Channel(Channel),
}

const SHARDS: usize = 16;

/// Longest a connection waits for the bridge to confirm a Redis subscription. The bridge
/// answers at once while Redis is down, so this only bounds a Redis that is slow to answer.
const REMOTE_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// The process-wide interest table. Sharded so that workers registering connections at the
/// same time rarely meet on one lock; no lock is held across an `.await`.
pub struct Interest {
    hasher: RandomState,
    shards: [Mutex<HashMap<Topic, WorkerSet>>; SHARDS],
    /// Present when a bridge mirrors this table into Redis subscriptions.
    remote: Option<RemoteChanges>,
}

/// Changes the bridge has not applied yet. Bounded by the number of topics and of waiting
/// connections, never by traffic.
#[derive(Default)]
struct RemoteChanges {
    pending: Mutex<Pending>,
    /// Wakes the bridge; a permit is stored if it is busy, so no change is missed.
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    topics: HashSet<Topic>,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            hasher: RandomState::new(),
            shards: Default::default(),
            remote: None,
        }
    }
}

fn relock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of a map whose every state
    // is valid; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Interest {
    /// A table whose changes a bridge will mirror into Redis.
    pub fn with_remote() -> Self {
        Interest {
            remote: Some(RemoteChanges::default()),
            ..Default::default()
        }
    }

    fn shard(&self, topic: &Topic) -> std::sync::MutexGuard<'_, HashMap<Topic, WorkerSet>> {
        relock(&self.shards[(self.hasher.hash_one(topic) as usize) % SHARDS])
    }

    /// The workers with at least one recipient for `topic`.
    pub fn workers(&self, topic: &Topic) -> WorkerSet {
        self.shard(topic).get(topic).copied().unwrap_or_default()
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
        if let Some(remote) = &self.remote {
            relock(&remote.pending).topics.insert(topic.clone());
            remote.notify.notify_one();
        }
    }

    /// Resolves once the bridge has applied every change made before this call, so a Redis
    /// subscription for them is live. At once without a bridge, or while Redis is down.
    pub async fn remote_synced(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        relock(&remote.pending).waiters.push(tx);
        remote.notify.notify_one();
        let _ = tokio::time::timeout(REMOTE_SYNC_TIMEOUT, rx).await;
    }

    /// For the bridge: waits until there are changes or waiters.
    pub async fn remote_changed(&self) {
        match &self.remote {
            Some(remote) => remote.notify.notified().await,
            None => std::future::pending().await,
        }
    }

    /// For the bridge: the topics changed since the last call, and who waits for them to be
    /// applied (answer them by dropping or sending on the senders).
    pub fn take_remote_changes(&self) -> (Vec<Topic>, Vec<oneshot::Sender<()>>) {
        match &self.remote {
            Some(remote) => {
                let mut p = relock(&remote.pending);
                (p.topics.drain().collect(), std::mem::take(&mut p.waiters))
            }
            None => (Vec::new(), Vec::new()),
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

    #[test]
    fn workers_are_tracked_per_topic() {
        let i = Interest::default();
        let t = Topic::User(UserId::new("u").unwrap());
        i.add(&t, WorkerId(0));
        i.add(&t, WorkerId(1));
        assert_eq!(i.workers(&t).0, 0b11);
        i.remove(&t, WorkerId(0));
        assert_eq!(i.workers(&t).0, 0b10);
        i.remove(&t, WorkerId(1));
        assert!(i.is_empty());
        assert!(i.workers(&t).is_empty());
    }

    #[tokio::test]
    async fn remote_sees_only_first_and_last() {
        let i = Interest::with_remote();
        let t = Topic::Channel(Channel::new("c").unwrap());
        i.add(&t, WorkerId(0));
        i.add(&t, WorkerId(1));
        i.remove(&t, WorkerId(0));
        let (topics, waiters) = i.take_remote_changes();
        assert_eq!((topics, waiters.len()), (vec![t.clone()], 0));
        i.remove(&t, WorkerId(1));
        assert_eq!(i.take_remote_changes().0, vec![t]);
        assert!(i.take_remote_changes().0.is_empty());
        assert!(Interest::default().take_remote_changes().0.is_empty());
        // Without a bridge nothing waits.
        Interest::default().remote_synced().await;
    }
}
