//! The seam between the hubs and the Redis bridge: which topics this process wants from other
//! machines, as a log of changes the bridge applies to its Redis subscriptions.
//!
//! Hubs record a topic (through [`crate::routes::Routes`]) when it gains its first or loses its
//! last recipient in the process. The bridge takes the changes, applies them, and publishes how
//! far it got on a watch. A connection that must not answer before other machines' messages
//! reach it (the 101, `subscribed`) takes a [`Ticket`] and waits on the watch — in its own
//! `select!`, so writes, pings and shutdown go on meanwhile. The bridge answers every ticket:
//! at once while Redis is down (the reconnect subscribes to everything), and when it stops.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::protocol::Topic;

/// A position in the log: done once the bridge has applied every change up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

pub struct SubscriptionLog {
    pending: Mutex<Pending>,
    /// Wakes the bridge; a permit is stored while it is busy, so no change is missed.
    changed: Notify,
    /// How far the bridge has applied the log. Connections hold receivers.
    applied_tx: watch::Sender<u64>,
}

#[derive(Default)]
struct Pending {
    topics: HashSet<Topic>,
    /// Number of the last recorded change.
    seq: u64,
}

impl Default for SubscriptionLog {
    fn default() -> Self {
        SubscriptionLog {
            pending: Mutex::default(),
            changed: Notify::new(),
            applied_tx: watch::Sender::new(0),
        }
    }
}

impl SubscriptionLog {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Every state of the set is valid; a panic elsewhere must not stop the relay.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A topic gained its first or lost its last recipient in this process.
    pub fn record(&self, topic: &Topic) {
        let mut p = self.pending();
        p.topics.insert(topic.clone());
        p.seq += 1;
        drop(p);
        self.changed.notify_one();
    }

    /// The position that covers every change recorded so far.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.pending().seq)
    }

    /// Whether the bridge has applied everything up to `ticket`.
    pub fn is_applied(&self, ticket: Ticket) -> bool {
        *self.applied_tx.borrow() >= ticket.0
    }

    /// Resolves once `ticket` is applied (or the bridge is gone).
    pub async fn applied(&self, ticket: Ticket) {
        let mut rx = self.applied_tx.subscribe();
        let _ = rx.wait_for(|applied| *applied >= ticket.0).await;
    }

    /// For the bridge: waits until there are changes to take.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// For the bridge: the topics changed since the last call, and the ticket they cover.
    pub fn take(&self) -> (Vec<Topic>, Ticket) {
        let mut p = self.pending();
        (p.topics.drain().collect(), Ticket(p.seq))
    }

    /// For the bridge, when it stops: nothing will be applied any more, so nobody may wait.
    pub fn close(&self) {
        self.confirm(Ticket(u64::MAX));
    }

    /// For the bridge: everything up to `ticket` is applied.
    pub fn confirm(&self, ticket: Ticket) {
        self.applied_tx.send_if_modified(|applied| {
            let newer = ticket.0 > *applied;
            if newer {
                *applied = ticket.0;
            }
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Channel;

    #[tokio::test]
    async fn tickets_wait_for_the_changes_before_them() {
        let log = SubscriptionLog::default();
        let t = Topic::Channel(Channel::new("c").unwrap());
        assert!(
            log.is_applied(log.ticket()),
            "nothing recorded, nothing to wait for"
        );
        log.record(&t);
        log.record(&t);
        let ticket = log.ticket();
        assert!(!log.is_applied(ticket));
        let (topics, taken) = log.take();
        assert_eq!((topics, taken), (vec![t.clone()], ticket));
        assert!(log.take().0.is_empty());
        log.record(&t);
        let later = log.ticket();
        log.confirm(taken);
        assert!(log.is_applied(ticket));
        assert!(!log.is_applied(later));
        log.applied(ticket).await;
        log.confirm(log.take().1);
        log.applied(later).await;
        log.record(&t);
        log.close();
        log.applied(log.ticket()).await;
    }
}
