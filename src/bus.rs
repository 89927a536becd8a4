//! The local bus: one bounded inbox per worker, through which every message reaches the hubs,
//! and only the workers the routing table names for it. Every message goes through an inbox,
//! even to the worker that accepted it, so two messages accepted one after the other reach each
//! recipient in that order.
//!
//! An inbox is woken by its senders, not by each envelope: the bridge hands a burst of what it
//! read from Redis and wakes each worker once (a worker's runtime parked in `epoll` costs an
//! `eventfd` write and a context switch to wake, and a worker that keeps up parks between two
//! envelopes). A burst also goes into each inbox as one item, its room taken at once: a send
//! per envelope, each with its own place to take in a bounded channel, was a fifth of the
//! bridge's CPU. The bound is still in envelopes: an inbox's room is a semaphore of
//! [`INBOX_CAPACITY`] permits, taken before a send and given back as the worker takes them out.

use std::collections::VecDeque;
use std::sync::Arc;

use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, Notify, Semaphore, SemaphorePermit, TryAcquireError};

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
    permits: Vec<(WorkerId, SemaphorePermit<'a>)>,
}

/// What one send puts in an inbox.
enum Item {
    One(Envelope),
    /// Several envelopes for one worker, in order, their room taken together.
    Burst(Vec<Envelope>),
}

/// The sending side, shared by the router and the bridge.
#[derive(Clone)]
pub struct Bus {
    /// One per worker; the receiver is that worker's bus task, which hands each delivery to its
    /// hub. Closed when the worker stops.
    inbox_tx: Vec<mpsc::UnboundedSender<Item>>,
    /// One per worker: room in its inbox, in envelopes (closed when the worker stops).
    room: Vec<Arc<Semaphore>>,
    /// One per worker: what wakes its [`Inbox`].
    wakes: Vec<Arc<Notify>>,
    routes: Arc<Routes>,
}

/// A worker's inbox, in the order its envelopes were sent.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Item>,
    room: Arc<Semaphore>,
    /// Its senders' wake-up: it never waits on the channel itself, so a send alone wakes
    /// nobody.
    wake: Arc<Notify>,
    /// Envelopes out of the channel and not yet taken (the rest of a burst); they still hold
    /// their room.
    rest: VecDeque<Envelope>,
    items: Vec<Item>,
}

impl Inbox {
    /// Waits until envelopes are there and takes up to `limit` of them into `buf`, oldest
    /// first; 0 once every sender is gone and the inbox is empty (seen at the next look: a
    /// worker's bus task ends with its runtime anyway).
    pub async fn recv_many(&mut self, buf: &mut Vec<Envelope>, limit: usize) -> usize {
        loop {
            if !self.rest.is_empty() {
                return self.take(buf, limit);
            }
            // Polled with a waker that does nothing: the channel then wakes nobody per send,
            // while the poll still spends the task's budget (a worker whose inbox never
            // empties still lets its connections run) and never parks the thread behind a
            // send in progress (as `try_recv` would).
            let polled = self.rx.poll_recv_many(
                &mut Context::from_waker(Waker::noop()),
                &mut self.items,
                limit,
            );
            match polled {
                Poll::Ready(0) => return 0,
                Poll::Ready(_) => {
                    // Straight into `buf` while it has room; only the rest of a burst waits.
                    let start = buf.len();
                    for item in self.items.drain(..) {
                        match item {
                            Item::One(envelope) if buf.len() - start < limit => buf.push(envelope),
                            Item::One(envelope) => self.rest.push_back(envelope),
                            Item::Burst(envelopes) => {
                                let room = limit.saturating_sub(buf.len() - start);
                                let mut envelopes = envelopes.into_iter();
                                buf.extend(envelopes.by_ref().take(room));
                                self.rest.extend(envelopes);
                            }
                        }
                    }
                    let taken = buf.len() - start;
                    self.room.add_permits(taken);
                    return taken;
                }
                // Out of budget, or a send not yet complete: come back after the others.
                Poll::Pending if !self.rx.is_empty() => tokio::task::yield_now().await,
                // A wake given while nobody waited is kept (one permit), so none is lost
                // between the look above and this wait.
                Poll::Pending => self.wake.notified().await,
            }
        }
    }

    /// Up to `limit` of the envelopes out of the channel into `buf`, their room given back.
    fn take(&mut self, buf: &mut Vec<Envelope>, limit: usize) -> usize {
        let n = self.rest.len().min(limit);
        buf.extend(self.rest.drain(..n));
        self.room.add_permits(n);
        n
    }

    /// The oldest envelope, if there is one (for tests and benches).
    pub fn try_recv(&mut self) -> Result<Envelope, TryRecvError> {
        if self.rest.is_empty() {
            match self.rx.try_recv()? {
                Item::One(envelope) => self.rest.push_back(envelope),
                Item::Burst(envelopes) => self.rest.extend(envelopes),
            }
        }
        let envelope = self.rest.pop_front().ok_or(TryRecvError::Empty)?;
        self.room.add_permits(1);
        Ok(envelope)
    }

    /// Envelopes waiting, with the places senders have taken for envelopes not yet sent (a
    /// reservation, a send in progress).
    pub fn len(&self) -> usize {
        INBOX_CAPACITY.saturating_sub(self.room.available_permits())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Inbox {
    /// A stopped worker's inbox has no room: a sender waiting for some is let go.
    fn drop(&mut self) {
        self.room.close();
    }
}

impl Bus {
    /// Makes the bus and the inboxes, one per worker, in worker order.
    pub fn new(routes: Arc<Routes>, workers: usize) -> (Bus, Vec<Inbox>) {
        let mut inbox_tx = Vec::with_capacity(workers);
        let mut wakes = Vec::with_capacity(workers);
        let mut inboxes = Vec::with_capacity(workers);
        let mut room = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            let wake = Arc::new(Notify::new());
            let space = Arc::new(Semaphore::new(INBOX_CAPACITY));
            inbox_tx.push(tx);
            room.push(space.clone());
            wakes.push(wake.clone());
            inboxes.push(Inbox {
                rx,
                room: space,
                wake,
                rest: VecDeque::new(),
                items: Vec::new(),
            });
        }
        let bus = Bus {
            inbox_tx,
            room,
            wakes,
            routes,
        };
        (bus, inboxes)
    }

    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Queues `envelope` on every worker that has a recipient, behind everything queued before
    /// it, waiting while an inbox is full: HTTP callers slow down instead of memory growing. A
    /// worker that has stopped (shutdown) is skipped: its connections are closing anyway.
    pub async fn deliver(&self, envelope: Envelope) {
        for worker in self.routes.workers_for(&envelope.target()).iter() {
            let Ok(place) = self.room(worker).acquire().await else {
                continue;
            };
            place.forget();
            if self.inbox(worker).send(Item::One(envelope.clone())).is_ok() {
                self.wake(worker);
            }
        }
    }

    /// Like [`deliver`](Self::deliver), but never waits: a worker whose inbox is full does not
    /// get it. Returns how many workers missed it, for the caller to count. For the bridge,
    /// which must not stall every worker behind one.
    pub fn try_deliver(&self, envelope: Envelope) -> u64 {
        self.try_deliver_burst([envelope])
    }

    /// [`try_deliver`](Self::try_deliver) for each of `envelopes` in order: each worker gets
    /// its share as one item, as much of it as its inbox has room for (the rest is missed), and
    /// is woken once.
    pub fn try_deliver_burst(&self, envelopes: impl IntoIterator<Item = Envelope>) -> u64 {
        let mut shares: Vec<Vec<Envelope>> = (0..self.inbox_tx.len()).map(|_| Vec::new()).collect();
        // A burst is mostly one topic's: its route is looked up once for the envelopes in a
        // row that share it (two hashes and a lock each). The bridge hands a burst over after
        // reading all of it, so no lookup is older than what it delivers.
        let mut route: Option<(Target, WorkerSet)> = None;
        for envelope in envelopes {
            let target = envelope.target();
            let workers = match &route {
                Some((t, workers)) if *t == target => *workers,
                _ => {
                    let workers = self.routes.workers_for(&target);
                    route = Some((target, workers));
                    workers
                }
            };
            let Some(last) = workers.iter().last() else {
                continue;
            };
            for worker in workers.without(last).iter() {
                shares[usize::from(worker.0)].push(envelope.clone());
            }
            // The last one takes it: no clone (and no reference count touched) for one worker.
            shares[usize::from(last.0)].push(envelope);
        }
        let mut missed = 0;
        for (i, mut share) in shares.into_iter().enumerate() {
            if share.is_empty() {
                continue;
            }
            let worker = WorkerId(i as u8);
            // A stopped worker (shutdown) is skipped: its connections are closing anyway.
            let Some(room) = self.take_room(worker, share.len()) else {
                continue;
            };
            missed += (share.len() - room) as u64;
            share.truncate(room);
            // The room is counted in envelopes: a share cut short (or grown far past its
            // length) must not keep the memory of more than it holds.
            if share.capacity() > 2 * share.len() {
                share.shrink_to_fit();
            }
            let item = match share.len() {
                0 => continue,
                1 => Item::One(share.pop().expect("one")),
                _ => Item::Burst(share),
            };
            if self.inbox(worker).send(item).is_ok() {
                self.wake(worker);
            }
        }
        missed
    }

    /// Takes room for up to `wanted` envelopes in `worker`'s inbox, without waiting: how many;
    /// `None` once the worker has stopped.
    fn take_room(&self, worker: WorkerId, wanted: usize) -> Option<usize> {
        let room = self.room(worker);
        loop {
            let n = wanted.min(room.available_permits());
            if n == 0 {
                return (!room.is_closed()).then_some(0);
            }
            match room.try_acquire_many(n as u32) {
                Ok(place) => {
                    place.forget();
                    return Some(n);
                }
                // Another sender took some between the look and the take: look again (each
                // time round, someone else made progress).
                Err(TryAcquireError::NoPermits) => continue,
                Err(TryAcquireError::Closed) => return None,
            }
        }
    }

    /// A place in the inbox of each of `workers`, taken in worker order (so two callers cannot
    /// wait on each other), for [`send_reserved`](Self::send_reserved). Waits while one of
    /// those inboxes is full; the others are not waited for.
    pub async fn reserve(&self, workers: WorkerSet) -> Reserved<'_> {
        let mut permits = Vec::with_capacity(self.inbox_tx.len());
        for worker in workers.iter() {
            if let Ok(permit) = self.room(worker).acquire().await {
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
                permit.forget();
                if self.inbox(worker).send(Item::One(envelope.clone())).is_ok() {
                    self.wake(worker);
                }
            }
        }
    }

    fn inbox(&self, worker: WorkerId) -> &mpsc::UnboundedSender<Item> {
        &self.inbox_tx[usize::from(worker.0)]
    }

    fn room(&self, worker: WorkerId) -> &Semaphore {
        &self.room[usize::from(worker.0)]
    }

    fn wake(&self, worker: WorkerId) {
        self.wakes[usize::from(worker.0)].notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Topic;

    /// A bus of one worker, whose inbox it returns, with a recipient of user `u` there.
    fn one_worker() -> (Bus, Inbox, Target) {
        let routes = Arc::new(Routes::new(1, None));
        let user = UserId::new("u").unwrap();
        routes.add(&Topic::User(user.clone()), WorkerId(0));
        let (bus, mut inboxes) = Bus::new(routes, 1);
        (bus, inboxes.remove(0), Target::User(user))
    }

    fn pong_to(target: Target) -> Envelope {
        Envelope::Message(Delivery {
            target,
            frame: Frame::pong(),
            position: None,
        })
    }

    #[tokio::test]
    async fn a_full_inbox_is_skipped_and_counted_not_waited_for() {
        let routes = Arc::new(Routes::new(2, None));
        let user = UserId::new("u").unwrap();
        routes.add(&Topic::User(user.clone()), WorkerId(0));
        routes.add(&Topic::User(user.clone()), WorkerId(1));
        let (bus, mut inboxes) = Bus::new(routes, 2);
        let delivery = pong_to(Target::User(user));
        for _ in 0..INBOX_CAPACITY {
            assert_eq!(bus.try_deliver(delivery.clone()), 0);
        }
        // Worker 1 catches up, worker 0 does not.
        while inboxes[1].try_recv().is_ok() {}
        assert_eq!(bus.try_deliver(delivery.clone()), 1);
        assert_eq!(inboxes[1].len(), 1);
        assert_eq!(inboxes[0].len(), INBOX_CAPACITY);
    }

    /// A burst goes into an inbox as one item, but its bound is still in envelopes: as many as
    /// there is room for arrive, in order, and the rest are counted missed.
    #[tokio::test]
    async fn a_burst_takes_only_the_room_its_inbox_has() {
        let (bus, mut inbox, user) = one_worker();
        let envelope = |n: u64| {
            Envelope::Lost(
                user.clone(),
                Position {
                    epoch: "e".into(),
                    generation: 1,
                    offset: n,
                },
            )
        };
        assert_eq!(
            bus.try_deliver_burst((0..INBOX_CAPACITY as u64 - 10).map(envelope)),
            0
        );
        let burst = (0..100).map(|n| envelope(1_000_000 + n));
        assert_eq!(bus.try_deliver_burst(burst), 90);
        assert_eq!(inbox.len(), INBOX_CAPACITY);
        let mut got = Vec::new();
        while inbox.recv_many(&mut got, 1000).await > 0 && got.len() < INBOX_CAPACITY {}
        let tail: Vec<u64> = got[INBOX_CAPACITY - 10..]
            .iter()
            .map(|e| match e {
                Envelope::Lost(_, p) => p.offset,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(tail, (1_000_000..1_000_010).collect::<Vec<_>>());
        assert!(inbox.is_empty());
        assert_eq!(bus.try_deliver(envelope(7)), 0, "the room was given back");
    }

    /// The room is counted in envelopes, so a burst cut short by it keeps no memory for the
    /// envelopes that did not fit.
    #[tokio::test]
    async fn a_burst_cut_short_holds_only_what_it_carries() {
        let (bus, mut inbox, user) = one_worker();
        let delivery = pong_to(user);
        for _ in 0..INBOX_CAPACITY - 10 {
            bus.try_deliver(delivery.clone());
        }
        assert_eq!(
            bus.try_deliver_burst(std::iter::repeat_n(delivery, 1000)),
            990
        );
        let burst = std::iter::from_fn(|| inbox.rx.try_recv().ok())
            .find_map(|item| match item {
                Item::Burst(envelopes) => Some(envelopes),
                Item::One(_) => None,
            })
            .expect("the burst");
        assert_eq!(burst.len(), 10);
        assert!(burst.capacity() <= 20, "capacity {}", burst.capacity());
    }

    /// A worker that stopped lets go of a sender waiting for room in its full inbox.
    #[tokio::test]
    async fn a_stopped_workers_full_inbox_lets_a_waiting_sender_go() {
        let (bus, inbox, user) = one_worker();
        let delivery = pong_to(user);
        for _ in 0..INBOX_CAPACITY {
            bus.try_deliver(delivery.clone());
        }
        let waiting = tokio::spawn(async move { bus.deliver(delivery).await });
        tokio::task::yield_now().await;
        drop(inbox);
        let let_go = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(
            let_go.is_ok(),
            "the sender still waits for a stopped worker"
        );
    }

    #[tokio::test]
    async fn a_burst_wakes_a_waiting_inbox_and_arrives_whole() {
        let (bus, mut inbox, user) = one_worker();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            let n = inbox.recv_many(&mut got, 1000).await;
            (n, inbox)
        });
        // The inbox's task waits before the burst is sent.
        tokio::task::yield_now().await;
        let burst = std::iter::repeat_n(pong_to(user), 100);
        assert_eq!(bus.try_deliver_burst(burst), 0);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting);
        let (n, mut inbox) = woken.await.expect("the burst woke it").unwrap();
        assert_eq!(n, 100, "taken in one go");
        drop(bus);
        assert_eq!(
            inbox.recv_many(&mut Vec::new(), 10).await,
            0,
            "senders gone"
        );
    }

    /// A worker whose inbox never empties still runs its other tasks: the bus task spends the
    /// runtime's budget like any channel receiver.
    #[test]
    fn an_inbox_that_never_empties_still_lets_other_tasks_run() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (bus, mut inbox, user) = one_worker();
                bus.try_deliver(pong_to(user));
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        inbox.recv_many(&mut got, 1).await;
                        // Sent again at once: the inbox is never empty.
                        for envelope in got.drain(..) {
                            bus.try_deliver(envelope);
                        }
                    }
                });
                tokio::task::yield_now().await;
                done_tx.send(()).unwrap();
            });
        });
        let ran = done_rx.recv_timeout(std::time::Duration::from_secs(10));
        assert!(
            ran.is_ok(),
            "the bus task never let the runtime's other tasks run"
        );
    }
}
