//! One worker's connection registry and fan-out: user → connections, channel → subscribers.
//!
//! A hub belongs to one worker and is touched only from that worker's thread (its bus task and
//! its connections), so its mutex is never contended; it is a mutex only because warp's
//! handlers must be `Send + Sync`. It knows nothing of Redis or of other workers: to send a
//! message, use [`crate::router::Router::publish`], which finds the workers that have recipients.
//!
//! Ordering: frames are queued to each connection in the order [`Hub::deliver`] is called,
//! which is the order of this worker's bus inbox. The hub never waits for a connection: a full
//! queue cuts that connection (slow consumer) and delivery goes on to everyone else.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};

use crate::bus::Delivery;
use crate::interest::{Interest, Topic};
use crate::metrics::WorkerMetrics;
use crate::protocol::{Channel, ConnId, Frame, Target, UserId, WorkerId};

/// The hub's handle on one connection's bounded outbound queue.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// Frames to write; the receiver is the connection task. Bounded by `--queue-limit`.
    frame_tx: mpsc::Sender<Frame>,
    /// Notified when the hub cuts the connection (slow consumer); the connection task waits on
    /// it and closes with 1008.
    cut: Arc<Notify>,
}

impl Outbox {
    /// A queue of `limit` frames; the receiver and the notifier go to the connection task.
    pub fn new(limit: usize) -> (Outbox, mpsc::Receiver<Frame>, Arc<Notify>) {
        let (frame_tx, frame_rx) = mpsc::channel(limit);
        let cut = Arc::new(Notify::new());
        let outbox = Outbox {
            frame_tx,
            cut: cut.clone(),
        };
        (outbox, frame_rx, cut)
    }

    /// Queues without waiting. `Err(true)` means the queue is full: the consumer is too slow.
    /// `Err(false)` means the connection is gone.
    pub fn offer(&self, frame: Frame) -> Result<(), bool> {
        self.frame_tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => true,
            mpsc::error::TrySendError::Closed(_) => false,
        })
    }
}

struct Member {
    user: UserId,
    outbox: Outbox,
    channels: Vec<Channel>,
}

/// The outcome of [`Hub::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// Subscribed now or before.
    Active,
    /// The connection already has as many subscriptions as it may.
    TooMany,
    /// The connection is no longer registered (it was just cut).
    Gone,
}

/// What the hub did with one delivery.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    pub queued: u64,
    pub cut: u64,
}

pub struct Hub {
    worker: WorkerId,
    interest: Arc<Interest>,
    metrics: Arc<WorkerMetrics>,
    members: HashMap<ConnId, Member>,
    users: HashMap<UserId, Vec<(ConnId, Outbox)>>,
    channels: HashMap<Channel, HashMap<ConnId, Outbox>>,
}

/// A worker's hub as its connections and bus task share it.
pub type SharedHub = Arc<Mutex<Hub>>;

/// Locks a hub. Poisoning is ignored: a panic in one connection must not stop the worker, and
/// every hub method leaves the maps consistent before it can panic.
pub fn lock(hub: &SharedHub) -> MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(worker: WorkerId, interest: Arc<Interest>, metrics: Arc<WorkerMetrics>) -> Self {
        Hub {
            worker,
            interest,
            metrics,
            members: HashMap::new(),
            users: HashMap::new(),
            channels: HashMap::new(),
        }
    }

    /// Adds a connection of `user`; from now on it receives that user's direct messages and
    /// broadcasts.
    pub fn register(&mut self, id: ConnId, user: UserId, outbox: Outbox) {
        match self.users.entry(user.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push((id, outbox.clone())),
            Entry::Vacant(e) => {
                self.interest.add(&Topic::User(user.clone()), self.worker);
                e.insert(vec![(id, outbox.clone())]);
            }
        }
        let member = Member {
            user,
            outbox,
            channels: Vec::new(),
        };
        self.members.insert(id, member);
        self.metrics.connections.fetch_add(1, Relaxed);
    }

    /// Removes a connection and all its subscriptions. Safe to call twice.
    pub fn unregister(&mut self, id: ConnId) {
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        self.metrics.connections.fetch_sub(1, Relaxed);
        if let Entry::Occupied(mut e) = self.users.entry(member.user) {
            e.get_mut().retain(|(c, _)| *c != id);
            if e.get().is_empty() {
                let (user, _) = e.remove_entry();
                self.interest.remove(&Topic::User(user), self.worker);
            }
        }
        for channel in member.channels {
            self.drop_subscriber(channel, id);
        }
    }

    /// Subscribes a connection to `channel`, unless it already holds `limit` subscriptions.
    /// Subscribing twice is harmless.
    pub fn subscribe(&mut self, id: ConnId, channel: &Channel, limit: usize) -> Subscription {
        let Some(member) = self.members.get_mut(&id) else {
            return Subscription::Gone;
        };
        if member.channels.contains(channel) {
            return Subscription::Active;
        }
        if member.channels.len() >= limit {
            return Subscription::TooMany;
        }
        member.channels.push(channel.clone());
        let outbox = member.outbox.clone();
        match self.channels.entry(channel.clone()) {
            Entry::Occupied(mut e) => {
                e.get_mut().insert(id, outbox);
            }
            Entry::Vacant(e) => {
                self.interest
                    .add(&Topic::Channel(channel.clone()), self.worker);
                e.insert(HashMap::from([(id, outbox)]));
            }
        }
        Subscription::Active
    }

    /// Ends a subscription; unsubscribing from a channel one is not in is harmless.
    pub fn unsubscribe(&mut self, id: ConnId, channel: &Channel) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let Some(pos) = member.channels.iter().position(|c| c == channel) else {
            return;
        };
        let channel = member.channels.swap_remove(pos);
        self.drop_subscriber(channel, id);
    }

    fn drop_subscriber(&mut self, channel: Channel, id: ConnId) {
        if let Entry::Occupied(mut e) = self.channels.entry(channel) {
            e.get_mut().remove(&id);
            if e.get().is_empty() {
                let (channel, _) = e.remove_entry();
                self.interest.remove(&Topic::Channel(channel), self.worker);
            }
        }
    }

    /// Queues the delivery's frame to every local recipient. Never waits: a recipient whose
    /// queue is full is cut as a slow consumer.
    pub fn deliver(&mut self, delivery: &Delivery) -> Fanout {
        let mut fanout = Fanout::default();
        let mut slow = Vec::new();
        let frame = &delivery.frame;
        let mut offer = |id: &ConnId, outbox: &Outbox| match outbox.offer(frame.clone()) {
            Ok(()) => fanout.queued += 1,
            Err(true) => slow.push(*id),
            Err(false) => {}
        };
        match &delivery.target {
            Target::User(user) => {
                for (id, outbox) in self.users.get(user).into_iter().flatten() {
                    offer(id, outbox);
                }
            }
            Target::Channel(channel) => {
                for (id, outbox) in self.channels.get(channel).into_iter().flatten() {
                    offer(id, outbox);
                }
            }
            Target::All => {
                for (id, member) in &self.members {
                    offer(id, &member.outbox);
                }
            }
        }
        self.metrics
            .frames_delivered
            .fetch_add(fanout.queued, Relaxed);
        fanout.cut = slow.len() as u64;
        for id in slow {
            self.cut(id);
        }
        fanout
    }

    /// Cuts a connection whose queue is full: unregisters it and tells its task to close 1008.
    fn cut(&mut self, id: ConnId) {
        if let Some(member) = self.members.get(&id) {
            member.outbox.cut.notify_one();
            WorkerMetrics::inc(&self.metrics.dropped_slow);
            WorkerMetrics::inc(&self.metrics.slow_consumer_closes);
            self.unregister(id);
        }
    }

    pub fn connections(&self) -> usize {
        self.members.len()
    }

    /// Entries of every map; zero once every connection has left (tests check for leaks).
    pub fn entries(&self) -> usize {
        self.members.len() + self.users.len() + self.channels.len()
    }
}

/// Keeps a connection registered while it lives; unregisters it when dropped, whichever way
/// the connection ends (close, error, cut, upgrade failure, panic).
pub struct Registration {
    pub id: ConnId,
    pub hub: SharedHub,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.hub).unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(WorkerId(0), Arc::default(), Arc::default())
    }

    fn id(seq: u64) -> ConnId {
        ConnId {
            worker: WorkerId(0),
            seq,
        }
    }

    fn delivery(target: Target) -> Delivery {
        Delivery {
            target,
            frame: Frame::pong(),
        }
    }

    #[test]
    fn delivers_to_every_connection_of_a_user_and_cleans_up() {
        let mut h = hub();
        let u = UserId::new("u").unwrap();
        let (a, mut a_rx, _) = Outbox::new(4);
        let (b, mut b_rx, _) = Outbox::new(4);
        h.register(id(1), u.clone(), a);
        h.register(id(2), u.clone(), b);
        let ch = Channel::new("c").unwrap();
        assert_eq!(h.subscribe(id(1), &ch, 1), Subscription::Active);
        let other = Channel::new("d").unwrap();
        assert_eq!(h.subscribe(id(1), &other, 1), Subscription::TooMany);
        assert_eq!(h.subscribe(id(1), &ch, 1), Subscription::Active);
        assert_eq!(h.subscribe(id(9), &ch, 1), Subscription::Gone);
        assert_eq!(h.deliver(&delivery(Target::User(u.clone()))).queued, 2);
        assert_eq!(h.deliver(&delivery(Target::Channel(ch.clone()))).queued, 1);
        assert_eq!(h.deliver(&delivery(Target::All)).queued, 2);
        assert_eq!((a_rx.len(), b_rx.len()), (3, 2));
        a_rx.close();
        b_rx.close();
        h.unregister(id(1));
        h.unregister(id(2));
        h.unregister(id(2));
        assert_eq!(h.entries(), 0);
        assert!(h.interest.is_empty());
    }

    #[test]
    fn full_queue_cuts_only_that_connection() {
        let mut h = hub();
        let (slow, _slow_rx, cut) = Outbox::new(1);
        let (fast, mut fast_rx, _) = Outbox::new(8);
        h.register(id(1), UserId::new("slow").unwrap(), slow);
        h.register(id(2), UserId::new("fast").unwrap(), fast);
        assert_eq!(h.deliver(&delivery(Target::All)).queued, 2);
        let f = h.deliver(&delivery(Target::All));
        assert_eq!(f, Fanout { queued: 1, cut: 1 });
        assert_eq!(h.connections(), 1);
        assert_eq!(fast_rx.len(), 2);
        let notified = cut.notified();
        futures_util::pin_mut!(notified);
        assert!(futures_util::FutureExt::now_or_never(notified).is_some());
        fast_rx.close();
    }
}
