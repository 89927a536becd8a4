//! The local bus: one bounded inbox per worker, through which every message reaches the hubs,
//! and only the workers the routing table names for it. Every message goes through an inbox,
//! even to the worker that accepted it, so two messages accepted one after the other reach each
//! recipient in that order.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::history::Position;
use crate::protocol::Since;
use crate::protocol::{Channel, Control, Frame, Target, UserId, WorkerId, WorkerSet};
use crate::routes::Routes;

/// Depth of each worker's inbox.
pub const INBOX_CAPACITY: usize = 4096;

/// One message on its way to the hubs: who gets it, and its encoded frame.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub target: Target,
    pub frame: Frame,
    /// For a topic with history: the message's offset in its epoch.
    pub position: Option<Position>,
}

/// What travels through an inbox: a message, or the backend's word for a user's connections.
/// Both keep one order per inbox, so a `/disconnect` after a `/message` comes after it.
#[derive(Clone, Debug)]
pub enum Envelope {
    Message(Delivery),
    /// With history, a backend subscribe carries where the channel stood when it was
    /// accepted: the subscription starts from there, so nothing published after it is missed.
    Control(UserId, Control, Option<Since>),
    /// With history in Redis: this machine missed messages of the topic that Redis no longer
    /// has (a long outage); its recipients are told where it stands, not recovered.
    Lost(Target, Position),
    /// With history in Redis: what this machine missed of a topic, read back from Redis after
    /// a gap, in order. Each recipient gets it as one burst (a replay never cuts a client that
    /// reads).
    Replay(Target, Arc<[Delivery]>),
    /// A `join` or `leave` of a channel, for its subscribers that asked for them.
    Presence(Channel, Frame),
}

impl Envelope {
    fn target(&self) -> Target {
        match self {
            Envelope::Message(d) => d.target.clone(),
            Envelope::Control(user, ..) => Target::User(user.clone()),
            Envelope::Lost(target, _) | Envelope::Replay(target, _) => target.clone(),
            Envelope::Presence(channel, _) => Target::Channel(channel.clone()),
        }
    }
}

/// Places in some inboxes, from [`Bus::reserve`].
pub struct Reserved<'a> {
    workers: WorkerSet,
    permits: Vec<(WorkerId, mpsc::Permit<'a, Envelope>)>,
}

/// The sending side, shared by the router and the bridge.
#[derive(Clone)]
pub struct Bus {
    /// One per worker; the receiver is that worker's bus task, which hands each delivery to its
    /// hub. Closed when the worker stops.
    inbox_tx: Vec<mpsc::Sender<Envelope>>,
    routes: Arc<Routes>,
}

impl Bus {
    /// Makes the bus and the inbox receivers, one per worker, in worker order.
    pub fn new(routes: Arc<Routes>, workers: usize) -> (Bus, Vec<mpsc::Receiver<Envelope>>) {
        let (inbox_tx, inbox_rx) = (0..workers).map(|_| mpsc::channel(INBOX_CAPACITY)).unzip();
        (Bus { inbox_tx, routes }, inbox_rx)
    }

    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Queues `envelope` on every worker that has a recipient, behind everything queued before
    /// it, waiting while an inbox is full: HTTP callers slow down instead of memory growing. A
    /// worker that has stopped (shutdown) is skipped: its connections are closing anyway.
    pub async fn deliver(&self, envelope: Envelope) {
        for worker in self.routes.workers_for(&envelope.target()).iter() {
            let _ = self.inbox(worker).send(envelope.clone()).await;
        }
    }

    /// Like [`deliver`](Self::deliver), but never waits: a worker whose inbox is full does not
    /// get it. Returns how many workers missed it, for the caller to count. For the bridge,
    /// which must not stall every worker behind one.
    pub fn try_deliver(&self, envelope: Envelope) -> u64 {
        let workers = self.routes.workers_for(&envelope.target());
        let Some(last) = workers.iter().last() else {
            return 0;
        };
        let mut missed = 0;
        let mut send = |worker, envelope| {
            if let Err(mpsc::error::TrySendError::Full(_)) = self.inbox(worker).try_send(envelope) {
                missed += 1;
            }
        };
        for worker in workers.without(last).iter() {
            send(worker, envelope.clone());
        }
        // The last one takes it: no clone (and no reference count touched) for one worker.
        send(last, envelope);
        missed
    }

    /// A place in the inbox of each of `workers`, taken in worker order (so two callers cannot
    /// wait on each other), for [`send_reserved`](Self::send_reserved). Waits while one of
    /// those inboxes is full; the others are not waited for.
    pub async fn reserve(&self, workers: WorkerSet) -> Reserved<'_> {
        let mut permits = Vec::with_capacity(self.inbox_tx.len());
        for worker in workers.iter() {
            if let Ok(permit) = self.inbox(worker).reserve().await {
                permits.push((worker, permit));
            }
        }
        Reserved { workers, permits }
    }

    /// Whether `reserved` covers every worker with a recipient for `target` now; if not, the
    /// workers to reserve instead.
    pub fn check_reserved(
        &self,
        reserved: &Reserved<'_>,
        target: &Target,
    ) -> Result<(), WorkerSet> {
        let now = self.routes.workers_for(target);
        match now.0 & !reserved.workers.0 {
            0 => Ok(()),
            _ => Err(WorkerSet(now.0 | reserved.workers.0)),
        }
    }

    /// Queues `envelope` on the reserved workers that have a recipient now, without waiting,
    /// so the caller may hold a lock (the history's, which orders a topic's offsets). A worker
    /// that gained its first recipient after [`check_reserved`](Self::check_reserved) is left
    /// out: that recipient takes its position under the same lock, after this message.
    pub fn send_reserved(&self, reserved: Reserved<'_>, envelope: Envelope) {
        let now = self.routes.workers_for(&envelope.target());
        for (worker, permit) in reserved.permits {
            if now.contains(worker) {
                permit.send(envelope.clone());
            }
        }
    }

    fn inbox(&self, worker: WorkerId) -> &mpsc::Sender<Envelope> {
        &self.inbox_tx[usize::from(worker.0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Topic;

    #[tokio::test]
    async fn a_full_inbox_is_skipped_and_counted_not_waited_for() {
        let routes = Arc::new(Routes::new(2, None));
        let user = UserId::new("u").unwrap();
        routes.add(&Topic::User(user.clone()), WorkerId(0));
        routes.add(&Topic::User(user.clone()), WorkerId(1));
        let (bus, mut inboxes) = Bus::new(routes, 2);
        let delivery = Envelope::Message(Delivery {
            target: Target::User(user),
            frame: Frame::pong(),
            position: None,
        });
        for _ in 0..INBOX_CAPACITY {
            assert_eq!(bus.try_deliver(delivery.clone()), 0);
        }
        // Worker 1 catches up, worker 0 does not.
        while inboxes[1].try_recv().is_ok() {}
        assert_eq!(bus.try_deliver(delivery.clone()), 1);
        assert_eq!(inboxes[1].len(), 1);
        assert_eq!(inboxes[0].len(), INBOX_CAPACITY);
    }
}
