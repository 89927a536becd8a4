//! One worker's connection registry and fan-out: user → connections, channel → subscribers.
//!
//! A hub belongs to one worker and is touched only from that worker's thread (its bus task and
//! its connections), so its mutex is never contended; it is a mutex only because hyper's
//! services must be `Send`. It knows nothing of Redis or of other workers: to send a message,
//! use [`crate::router::Router::publish`], which finds the workers that have recipients.
//!
//! Ordering: frames are pushed to each connection's [`Writer`] in the order
//! [`Hub::deliver_batch`] is called with them, which is the order of this worker's bus inbox.
//! The hub never waits for a connection: it writes what each socket takes and leaves the rest
//! queued; a connection whose queue goes over its limits is cut (slow consumer) and delivery
//! goes on to everyone else.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Permissions;
use crate::bus::{Delivery, Envelope};
use crate::merge::{Admitted, Asked, Opening, Recipient};
use crate::metrics::WorkerMetrics;
use crate::protocol::Topic;
use crate::protocol::{Channel, ConnId, Control, ErrorCode, Frame, Target, UserId, WorkerId};
use crate::routes::Routes;
use crate::writer::{Command, Flushed, Pushed, Writer};

struct Member {
    user: UserId,
    /// The token's public `info`, shown in presence.
    info: Option<Arc<str>>,
    writer: Arc<Writer>,
    channels: Vec<Membership>,
    /// Its user's stream has not opened yet (the history read is pending): broadcasts are held
    /// with the user's direct messages, so `connected` stays the first frame.
    opening: bool,
}

/// One channel of a connection.
struct Membership {
    channel: Channel,
    /// Receiving; false while `subscribed` waits for the bridge.
    active: bool,
    /// Made by the backend (`POST /subscribe`): kept when a refreshed token no longer allows it.
    by_server: bool,
    /// Receives the channel's `join` and `leave` events.
    watches: bool,
}

/// Subscribers of one channel on this worker.
#[derive(Default)]
struct ChannelEntry {
    /// Receive the channel's messages; in connection order, like [`Hub::members`].
    active: BTreeMap<ConnId, Recipient>,
    /// Subscriptions waiting for the bridge: they keep the route, but receive nothing yet.
    reserved: usize,
    /// Active subscribers that receive `join` and `leave`.
    watchers: std::collections::BTreeSet<ConnId>,
}

/// The outcome of [`Hub::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved now: call [`Hub::activate`] once other machines' messages reach this process
    /// (see [`Hub::answer`]).
    Reserved,
    /// Subscribed before; nothing changed.
    Already,
    /// Reserved before and still waiting for the bridge: its activation will answer.
    Pending,
    /// The connection already has as many subscriptions as it may.
    TooMany,
    /// The connection is no longer registered (it was just cut).
    Gone,
}

/// How a recipient's topic started ([`Hub::register`], [`Hub::activate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Receiving now: the topic has no history, and its opening went out.
    Open,
    /// The topic has history: its live messages are held for the recipient until
    /// [`Hub::open`] names this start with what the read found.
    Held(u64),
    /// The connection or its reservation is gone (unsubscribed or cut meanwhile).
    Gone,
}

/// What a subscribe gets, for whoever asked ([`Hub::answer`]): one policy for the client's
/// and the backend's.
#[derive(Debug)]
pub enum Answer {
    /// Reserved: start it once the bridge has it.
    Start,
    /// Nothing changes; this frame says so.
    Reply(Frame),
    /// Refused, and why (a client error).
    Refuse(Frame),
    /// Nothing to say: an earlier subscribe or a cut answers.
    Nothing,
}

/// What the hub did with a batch of deliveries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Frames pushed to connections (one per recipient of a message).
    pub pushed: u64,
    /// Frames refused by connections on their way out.
    pub refused: u64,
    /// Connections cut as slow consumers.
    pub cut: u64,
}

/// Pushes `frame` to one connection, remembering to flush it at the end of the batch.
fn push(
    dirty: &mut Vec<(ConnId, Arc<Writer>)>,
    fanout: &mut Fanout,
    id: ConnId,
    writer: &Arc<Writer>,
    frames: &[Frame],
) {
    let n = frames.len() as u64;
    match writer.push_all(frames) {
        Pushed::First => {
            fanout.pushed += n;
            dirty.push((id, writer.clone()));
        }
        Pushed::Queued => fanout.pushed += n,
        Pushed::Refused => fanout.refused += n,
    }
}

/// Gives `envelope` to one recipient (held while its topic opens, past the limit its
/// connection is cut), remembering to flush it at the end of the batch.
fn offer(
    dirty: &mut Vec<(ConnId, Arc<Writer>)>,
    overflowed: &mut Vec<ConnId>,
    fanout: &mut Fanout,
    id: ConnId,
    r: &mut Recipient,
    envelope: &Envelope,
) {
    match r.take(envelope) {
        Admitted::Held => {}
        Admitted::Overflow => {
            r.writer.cut();
            overflowed.push(id);
        }
        Admitted::Frames(notice, frame) => {
            for frame in notice.as_ref().into_iter().chain(frame) {
                push(dirty, fanout, id, &r.writer, std::slice::from_ref(frame));
            }
        }
        Admitted::Burst(burst) => {
            fanout.pushed += burst.len() as u64;
            let channel = match envelope {
                Envelope::Replay(Target::Channel(c), _) => Some(c),
                _ => None,
            };
            r.writer.push_burst(channel, &burst);
            push_dirty(dirty, id, &r.writer);
        }
    }
}

/// Adds or removes a watcher of `channel`'s `join`/`leave`, and tells presence how many there
/// are (events are made only for channels someone watches).
fn set_watching(
    presence: &Option<Arc<crate::presence::Presence>>,
    entry: &mut ChannelEntry,
    channel: &Channel,
    id: ConnId,
    on: bool,
) {
    let changed = match on {
        true => entry.watchers.insert(id),
        false => entry.watchers.remove(&id),
    };
    if let (true, Some(presence)) = (changed, presence) {
        presence.watching(channel, on);
    }
}

/// Remembers to flush a writer something was pushed to outside [`push`].
fn push_dirty(dirty: &mut Vec<(ConnId, Arc<Writer>)>, id: ConnId, writer: &Arc<Writer>) {
    if !dirty.iter().any(|(d, _)| *d == id) {
        dirty.push((id, writer.clone()));
    }
}

pub struct Hub {
    worker: WorkerId,
    routes: Arc<Routes>,
    /// `--max-subscriptions`: the backend's subscriptions count too.
    max_subscriptions: usize,
    /// Topics have history: each start of a recipient holds its live messages until the
    /// connection has read where it stands ([`Started::Held`]).
    history: bool,
    metrics: Arc<WorkerMetrics>,
    /// In connection order, so a broadcast walks the sockets in the order they were accepted
    /// (and their kernel memory allocated): at 5 broadcasts/s to 10,000 connections this cost
    /// 6.7 µs per delivery against 7.1–7.7 in hash order (`benches/broadcast_floor.sh`).
    members: BTreeMap<ConnId, Member>,
    users: HashMap<UserId, Vec<(ConnId, Recipient)>>,
    channels: HashMap<Channel, ChannelEntry>,
    /// Writers pushed to during the current batch; each is flushed once at its end.
    dirty: Vec<(ConnId, Arc<Writer>)>,
    /// Connections whose held messages overflowed during the current batch: cut at its end.
    overflowed: Vec<ConnId>,
    /// Numbers the starts that wait for a history read.
    starts: u64,
    /// Where subscriptions starting and ending are reported (members of each channel).
    presence: Option<Arc<crate::presence::Presence>>,
}

/// A worker's hub as its connections and bus task share it.
pub type SharedHub = Arc<Mutex<Hub>>;

/// Locks a hub. Poisoning is ignored: a panic in one connection must not stop the worker, and
/// every hub method leaves the maps consistent before it can panic.
pub fn lock(hub: &SharedHub) -> MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(
        worker: WorkerId,
        routes: Arc<Routes>,
        max_subscriptions: usize,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        Hub {
            worker,
            routes,
            max_subscriptions,
            history: false,
            metrics,
            members: BTreeMap::new(),
            users: HashMap::new(),
            channels: HashMap::new(),
            dirty: Vec::new(),
            overflowed: Vec::new(),
            starts: 0,
            presence: None,
        }
    }

    /// Reports every subscription that starts or ends to `presence`.
    pub fn with_presence(mut self, presence: Arc<crate::presence::Presence>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Whether a subscription (pending or active) receives its channel's `join` and `leave`.
    pub fn watch(&mut self, id: ConnId, channel: &Channel, watches: bool) {
        let Some(m) = self
            .members
            .get_mut(&id)
            .and_then(|member| member.channels.iter_mut().find(|m| m.channel == *channel))
        else {
            return;
        };
        m.watches = watches;
        if let (true, Some(entry)) = (m.active, self.channels.get_mut(channel)) {
            set_watching(&self.presence, entry, channel, id, watches);
        }
    }

    /// Adds a connection of `user` (`info`: its token's public `info`, shown in presence); from
    /// now on it receives that user's direct messages and broadcasts, or with history holds
    /// them until [`open`](Self::open).
    pub fn register(
        &mut self,
        id: ConnId,
        user: UserId,
        writer: Arc<Writer>,
        info: Option<Arc<str>>,
    ) -> Started {
        let topic = Topic::User(user.clone());
        let (recipient, started) = self.start(writer.clone(), &topic);
        match self.users.entry(user.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push((id, recipient)),
            Entry::Vacant(e) => {
                self.routes.add(&topic, self.worker);
                e.insert(vec![(id, recipient)]);
            }
        }
        let member = Member {
            user,
            info,
            writer,
            channels: Vec::new(),
            opening: matches!(started, Started::Held(_)),
        };
        self.members.insert(id, member);
        self.metrics.connections.fetch_add(1, Relaxed);
        started
    }

    /// A recipient of `topic` for `writer`: receiving at once behind its opening without
    /// history, holding live messages for a read with it.
    fn start(&mut self, writer: Arc<Writer>, topic: &Topic) -> (Recipient, Started) {
        if self.history {
            self.starts += 1;
            return (
                Recipient::holding(writer, self.starts),
                Started::Held(self.starts),
            );
        }
        let opening = Opening::fresh(topic);
        if !opening.frames.is_empty() {
            let channel = match topic {
                Topic::Channel(c) => Some(c),
                Topic::User(_) => None,
            };
            writer.push_burst(channel, &opening.frames);
        }
        (Recipient::open(writer, opening.seen), Started::Open)
    }

    /// Removes a connection and all its subscriptions. Safe to call twice.
    pub fn unregister(&mut self, id: ConnId) {
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        self.metrics.connections.fetch_sub(1, Relaxed);
        if let Entry::Occupied(mut e) = self.users.entry(member.user.clone()) {
            e.get_mut().retain(|(c, _)| *c != id);
            if e.get().is_empty() {
                let (user, _) = e.remove_entry();
                self.routes.remove(&Topic::User(user), self.worker);
            }
        }
        for m in member.channels {
            self.leave(m.channel, id, &member.user, m.active);
        }
    }

    /// Starts a subscription of a connection to `channel`: the route is taken at once (so the
    /// bridge subscribes), but no message is delivered until [`activate`](Self::activate).
    pub fn reserve(&mut self, id: ConnId, channel: &Channel, by_server: bool) -> Reservation {
        let Some(member) = self.members.get_mut(&id) else {
            return Reservation::Gone;
        };
        if let Some(m) = member.channels.iter_mut().find(|m| m.channel == *channel) {
            m.by_server |= by_server;
            return match m.active {
                true => Reservation::Already,
                false => Reservation::Pending,
            };
        }
        if member.channels.len() >= self.max_subscriptions {
            return Reservation::TooMany;
        }
        member.channels.push(Membership {
            channel: channel.clone(),
            active: false,
            by_server,
            watches: false,
        });
        self.channels
            .entry(channel.clone())
            .or_insert_with(|| {
                self.routes
                    .add(&Topic::Channel(channel.clone()), self.worker);
                ChannelEntry::default()
            })
            .reserved += 1;
        Reservation::Reserved
    }

    /// What a subscribe to `channel` gets after `reservation`, for whoever asked: with history
    /// a running subscription cannot say where the client is nor replay, so a client is told to
    /// unsubscribe first.
    pub fn answer(&self, reservation: Reservation, channel: &Channel, asked: Asked) -> Answer {
        let client = asked == Asked::Client;
        match reservation {
            Reservation::Reserved => Answer::Start,
            Reservation::Already | Reservation::Pending if self.history && client => {
                Answer::Refuse(Frame::error(
                    ErrorCode::BadRequest,
                    &format!(
                        "already subscribed to {}: unsubscribe first to subscribe again from an offset",
                        channel.as_str()
                    ),
                ))
            }
            Reservation::Already if !self.history => Answer::Reply(Frame::subscribed(channel)),
            // Pending: the earlier subscribe's `subscribed` answers; Gone: the cut closes it.
            Reservation::Already | Reservation::Pending | Reservation::Gone => Answer::Nothing,
            Reservation::TooMany => {
                let limit = format!(
                    "at most {} subscriptions per connection",
                    self.max_subscriptions
                );
                let detail = match asked {
                    Asked::Client => limit,
                    Asked::Backend => format!(
                        "the server could not subscribe you to {}: {limit}",
                        channel.as_str()
                    ),
                };
                Answer::Refuse(Frame::error(ErrorCode::Forbidden, &detail))
            }
        }
    }

    /// Turns a reservation into a subscription: without history its `subscribed` is pushed in
    /// the same step, so every message of the channel after it, and none before, reaches the
    /// connection; with history its messages are held until [`open`](Self::open).
    pub fn activate(&mut self, id: ConnId, channel: &Channel) -> Started {
        let Some(member) = self.members.get_mut(&id) else {
            return Started::Gone;
        };
        let Some(m) = member
            .channels
            .iter_mut()
            .find(|m| m.channel == *channel && !m.active)
        else {
            return Started::Gone;
        };
        m.active = true;
        let watches = m.watches;
        let writer = member.writer.clone();
        let (user, info) = (member.user.clone(), member.info.clone());
        let (recipient, started) = self.start(writer, &Topic::Channel(channel.clone()));
        let entry = self
            .channels
            .get_mut(channel)
            .expect("a reservation keeps its channel entry");
        entry.reserved -= 1;
        entry.active.insert(id, recipient);
        if watches {
            set_watching(&self.presence, entry, channel, id, true);
        }
        // After `subscribed`: the connection's own `join` (if it watches) comes after it.
        if let Some(presence) = &self.presence {
            presence.joined(channel, &user, info.as_ref());
        }
        started
    }

    /// Opens `topic` for a recipient whose start `start` waits for its read: pushes the opening
    /// (`subscribed` or `connected`, and what its read recovered), then what was held meanwhile
    /// that it does not cover, as one burst (a replay never cuts a client that reads). False if
    /// the connection no longer waits for this start (unsubscribed, or subscribed again since).
    pub fn open(&mut self, id: ConnId, topic: &Topic, start: u64, opening: Opening) -> bool {
        let recipient = match topic {
            Topic::User(u) => self
                .users
                .get_mut(u)
                .and_then(|rs| rs.iter_mut().find(|(c, _)| *c == id))
                .map(|(_, r)| r),
            Topic::Channel(c) => self.channels.get_mut(c).and_then(|e| e.active.get_mut(&id)),
        };
        let Some(r) = recipient else {
            return false;
        };
        let Some(burst) = r.opened(start, opening) else {
            return false;
        };
        let channel = match topic {
            Topic::Channel(c) => Some(c),
            Topic::User(_) => None,
        };
        r.writer.push_burst(channel, &burst);
        if let (Topic::User(_), Some(member)) = (topic, self.members.get_mut(&id)) {
            member.opening = false;
        }
        self.metrics
            .frames_pushed
            .fetch_add(burst.len() as u64, Relaxed);
        true
    }

    /// Whether the connection receives `channel` now.
    pub fn is_subscribed(&self, id: ConnId, channel: &Channel) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.channels.iter().any(|m| m.channel == *channel && m.active))
    }

    /// Ends a subscription or a reservation. Returns false if there was neither.
    pub fn unsubscribe(&mut self, id: ConnId, channel: &Channel) -> bool {
        let Some(member) = self.members.get_mut(&id) else {
            return false;
        };
        let Some(pos) = member.channels.iter().position(|m| m.channel == *channel) else {
            return false;
        };
        let m = member.channels.swap_remove(pos);
        let user = member.user.clone();
        member.writer.end_burst(channel);
        self.leave(m.channel, id, &user, m.active);
        true
    }

    /// After a token refresh: ends every subscription the new permissions do not allow, except
    /// the backend's own, and pushes `unsubscribed` for each.
    pub fn keep_allowed(&mut self, id: ConnId, permissions: &Permissions) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let (writer, user) = (member.writer.clone(), member.user.clone());
        let (mut keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut member.channels)
            .into_iter()
            .partition(|m| m.by_server || permissions.allows(&m.channel));
        // Events only for channels the new token still shows the presence of.
        let mut unwatched = Vec::new();
        for m in keep.iter_mut().filter(|m| m.watches) {
            if !m.by_server && !permissions.sees_presence(&m.channel) {
                m.watches = false;
                unwatched.push(m.channel.clone());
            }
        }
        member.channels = keep;
        for channel in unwatched {
            if let Some(entry) = self.channels.get_mut(&channel) {
                set_watching(&self.presence, entry, &channel, id, false);
            }
        }
        for m in drop {
            writer.push(&Frame::unsubscribed(&m.channel));
            self.leave(m.channel, id, &user, m.active);
        }
    }

    fn leave(&mut self, channel: Channel, id: ConnId, user: &UserId, active: bool) {
        if let (true, Some(presence)) = (active, &self.presence) {
            presence.left(&channel, user);
        }
        if let Entry::Occupied(mut e) = self.channels.entry(channel) {
            let channel = e.key().clone();
            let entry = e.get_mut();
            if active {
                entry.active.remove(&id);
                set_watching(&self.presence, entry, &channel, id, false);
            } else {
                entry.reserved -= 1;
            }
            if entry.active.is_empty() && entry.reserved == 0 {
                let (channel, _) = e.remove_entry();
                self.routes.remove(&Topic::Channel(channel), self.worker);
            }
        }
    }

    /// Hands one message to its local recipients; see [`deliver_batch`](Self::deliver_batch).
    pub fn deliver(&mut self, delivery: &Delivery) -> Fanout {
        self.deliver_batch(&[Envelope::Message(delivery.clone())])
    }

    /// Pushes each message's frame to every local recipient and carries out each control, then
    /// flushes each touched connection once: a burst for one connection goes out in one
    /// system call. Never waits.
    pub fn deliver_batch(&mut self, batch: &[Envelope]) -> Fanout {
        let mut fanout = Fanout::default();
        // Consecutive broadcasts go out in one walk over the connections: each connection's
        // memory is touched once per run, not once per message.
        let is_broadcast =
            |e: &Envelope| matches!(e, Envelope::Message(d) if d.target == Target::All);
        let mut runs = batch
            .chunk_by(|a, b| is_broadcast(a) && is_broadcast(b))
            .peekable();
        while let Some(run) = runs.next() {
            // Nothing after the batch's last run can follow its frames in this batch: each
            // connection is written at once, while its writer is still in cache, instead of
            // in a second walk.
            let last = runs.peek().is_none();
            match &run[0] {
                first if is_broadcast(first) => {
                    let frames: Vec<Frame> = run
                        .iter()
                        .filter_map(|e| match e {
                            Envelope::Message(d) => Some(d.frame.local_copy()),
                            _ => None,
                        })
                        .collect();
                    let mut held = Vec::new();
                    for (id, member) in &self.members {
                        let n = frames.len() as u64;
                        if member.opening {
                            held.push((*id, member.user.clone()));
                        } else if !last {
                            push(&mut self.dirty, &mut fanout, *id, &member.writer, &frames);
                        } else if let Some(flushed) = member.writer.send_all(&frames) {
                            fanout.pushed += n;
                            if let Flushed::Cut(_) = flushed {
                                self.overflowed.push(*id);
                            }
                        } else {
                            fanout.refused += n;
                        }
                    }
                    for (id, user) in held {
                        let recipients = self.users.get_mut(&user).into_iter().flatten();
                        if let Some((_, r)) = recipients.into_iter().find(|(c, _)| *c == id) {
                            for envelope in run {
                                offer(
                                    &mut self.dirty,
                                    &mut self.overflowed,
                                    &mut fanout,
                                    id,
                                    r,
                                    envelope,
                                );
                            }
                        }
                    }
                }
                envelope @ (Envelope::Message(Delivery { target, .. })
                | Envelope::Lost(target, _)
                | Envelope::Replay(target, _)) => self.fan_out(target, envelope, &mut fanout),
                Envelope::Control(user, control, since) => {
                    self.control(user, control, since.as_ref(), &mut fanout)
                }
                envelope @ Envelope::Presence(channel, _) => {
                    let Some(entry) = self.channels.get_mut(channel) else {
                        continue;
                    };
                    for id in &entry.watchers {
                        if let Some(r) = entry.active.get_mut(id) {
                            offer(
                                &mut self.dirty,
                                &mut self.overflowed,
                                &mut fanout,
                                *id,
                                r,
                                envelope,
                            );
                        }
                    }
                }
            }
        }
        let mut slow = std::mem::take(&mut self.overflowed);
        for (id, writer) in self.dirty.drain(..) {
            if let Flushed::Cut(_) = writer.flush() {
                slow.push(id);
            }
        }
        self.metrics.frames_pushed.fetch_add(fanout.pushed, Relaxed);
        self.metrics
            .dropped_closed
            .fetch_add(fanout.refused, Relaxed);
        fanout.cut = slow.len() as u64;
        for id in slow {
            // The writer is cut: its connection task closes with 1008 and counts the close and
            // the frames dropped.
            self.unregister(id);
        }
        fanout
    }

    /// A message (or a lost position) of `target` to each of its recipients here.
    fn fan_out(&mut self, target: &Target, envelope: &Envelope, fanout: &mut Fanout) {
        let dirty = &mut self.dirty;
        let overflowed = &mut self.overflowed;
        let mut deliver = |id: &ConnId, r: &mut Recipient| {
            offer(dirty, overflowed, fanout, *id, r, envelope);
        };
        match target {
            Target::User(user) => {
                for (id, r) in self.users.get_mut(user).into_iter().flatten() {
                    deliver(id, r);
                }
            }
            Target::Channel(channel) => {
                let subscribers = self.channels.get_mut(channel).map(|e| &mut e.active);
                for (id, r) in subscribers.into_iter().flatten() {
                    deliver(id, r);
                }
            }
            // Broadcast messages are sent by `deliver_batch`, and have no position to lose.
            Target::All => {}
        }
    }

    /// The backend's word for every connection of `user` on this worker.
    fn control(
        &mut self,
        user: &UserId,
        control: &Control,
        since: Option<&crate::protocol::Since>,
        fanout: &mut Fanout,
    ) {
        // Only ids and writers: a recipient's held messages are not copied for this.
        let Some(connections): Option<Vec<(ConnId, Arc<Writer>)>> = self
            .users
            .get(user)
            .map(|rs| rs.iter().map(|(id, r)| (*id, r.writer.clone())).collect())
        else {
            return;
        };
        for (id, writer) in connections {
            let reply = match control {
                Control::Disconnect(reason) => {
                    writer.command(Command::Disconnect(reason.clone()));
                    self.unregister(id);
                    None
                }
                Control::Unsubscribe(channel) => self
                    .unsubscribe(id, channel)
                    .then(|| Frame::unsubscribed(channel)),
                Control::Subscribe(channel) => {
                    let reservation = self.reserve(id, channel, true);
                    match self.answer(reservation, channel, Asked::Backend) {
                        Answer::Start => {
                            let log = self.routes.log();
                            let ready = log.is_none_or(|l| l.is_applied(l.ticket()));
                            if ready && !self.history {
                                self.activate(id, channel);
                                push_dirty(&mut self.dirty, id, &writer);
                            } else {
                                let since = since.cloned();
                                writer.command(Command::Activate(channel.clone(), since));
                            }
                            None
                        }
                        Answer::Reply(frame) | Answer::Refuse(frame) => Some(frame),
                        Answer::Nothing => None,
                    }
                }
            };
            if let Some(frame) = reply {
                push(&mut self.dirty, fanout, id, &writer, &[frame]);
            }
        }
    }

    /// Channels and users have history: backend subscriptions are activated by their
    /// connection, which reads the position.
    pub fn with_history(mut self) -> Self {
        self.history = true;
        self
    }

    pub fn max_subscriptions(&self) -> usize {
        self.max_subscriptions
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
    use crate::config::QueueLimits;
    use bytes::Bytes;
    use serde_json::value::RawValue;

    fn hub() -> Hub {
        Hub::new(
            WorkerId(0),
            Arc::new(Routes::new(1, None)),
            1,
            Arc::default(),
        )
    }

    fn id(seq: u64) -> ConnId {
        ConnId {
            worker: WorkerId(0),
            seq,
        }
    }

    /// A writer without a socket: everything pushed stays queued.
    fn writer(frames: usize) -> Arc<Writer> {
        Arc::new(Writer::new(
            QueueLimits {
                frames,
                bytes: usize::MAX,
            },
            Default::default(),
        ))
    }

    fn delivery(target: Target) -> Delivery {
        Delivery {
            target,
            frame: Frame::pong(),
            position: None,
        }
    }

    #[test]
    fn delivers_to_every_connection_of_a_user_and_cleans_up() {
        let mut h = hub();
        let u = UserId::new("u").unwrap();
        let (a, b) = (writer(8), writer(8));
        h.register(id(1), u.clone(), a.clone(), None);
        h.register(id(2), u.clone(), b.clone(), None);
        let ch = Channel::new("c").unwrap();
        assert_eq!(h.reserve(id(1), &ch, false), Reservation::Reserved);
        let other = Channel::new("d").unwrap();
        assert_eq!(h.reserve(id(1), &other, false), Reservation::TooMany);
        assert_eq!(h.reserve(id(1), &ch, true), Reservation::Pending);
        assert_eq!(h.reserve(id(9), &ch, false), Reservation::Gone);
        // Reserved: the route is there, the messages are not yet.
        assert!(!h.routes.workers(&Topic::Channel(ch.clone())).is_empty());
        assert_eq!(h.deliver(&delivery(Target::Channel(ch.clone()))).pushed, 0);
        assert_eq!(h.activate(id(1), &ch), Started::Open);
        assert_eq!(h.activate(id(1), &ch), Started::Gone);
        assert_eq!(h.reserve(id(1), &ch, false), Reservation::Already);
        assert_eq!(h.deliver(&delivery(Target::User(u.clone()))).pushed, 2);
        assert_eq!(h.deliver(&delivery(Target::Channel(ch.clone()))).pushed, 1);
        assert_eq!(h.deliver(&delivery(Target::All)).pushed, 2);
        assert_eq!((a.queued(), b.queued()), (4, 2));
        h.unregister(id(1));
        h.unregister(id(2));
        h.unregister(id(2));
        assert_eq!(h.entries(), 0);
        assert!(h.routes.is_empty());
    }

    /// A message whose payload is the JSON string `text`.
    fn message(target: Target, text: &str) -> Envelope {
        let payload = RawValue::from_string(format!("\"{text}\"")).unwrap();
        Envelope::Message(Delivery {
            frame: Frame::message(&target, &payload),
            target,
            position: None,
        })
    }

    /// The payload strings of message frames.
    fn texts(frames: &[Bytes]) -> Vec<String> {
        let text = |f: &Bytes| {
            let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
            v["message"].as_str().unwrap().to_string()
        };
        frames.iter().map(text).collect()
    }

    #[test]
    fn broadcasts_batched_with_other_messages_keep_their_order_on_each_connection() {
        let mut h = hub();
        let (u, v) = (UserId::new("u").unwrap(), UserId::new("v").unwrap());
        let (a, b) = (writer(64), writer(64));
        h.register(id(1), u.clone(), a.clone(), None);
        h.register(id(2), v.clone(), b.clone(), None);
        let batch = [
            message(Target::All, "1"),
            message(Target::All, "2"),
            message(Target::User(u.clone()), "3"),
            message(Target::All, "4"),
            message(Target::User(v.clone()), "5"),
            message(Target::All, "6"),
            message(Target::All, "7"),
        ];
        assert_eq!(h.deliver_batch(&batch).pushed, 12);
        assert_eq!(texts(&a.queued_frames()).concat(), "123467");
        assert_eq!(texts(&b.queued_frames()).concat(), "124567");
    }

    #[test]
    fn a_connection_opening_gets_connected_before_any_broadcast() {
        let mut h = hub().with_history();
        let u = UserId::new("u").unwrap();
        let w = writer(64);
        let Started::Held(start) = h.register(id(1), u.clone(), w.clone(), None) else {
            panic!("held with history");
        };
        h.deliver_batch(&[
            message(Target::All, "b1"),
            message(Target::User(u.clone()), "d1"),
        ]);
        h.deliver_batch(&[message(Target::All, "b2")]);
        assert_eq!(w.queued(), 0, "nothing before connected");
        let connected = Frame::connected("e", 0, None);
        let opening = Opening {
            frames: vec![connected.clone()],
            seen: Default::default(),
        };
        assert!(h.open(id(1), &Topic::User(u.clone()), start, opening));
        h.deliver_batch(&[message(Target::All, "b3")]);
        let frames = w.queued_frames();
        assert_eq!(frames[0], connected.bytes());
        assert_eq!(texts(&frames[1..]), ["b1", "d1", "b2", "b3"]);
    }

    #[test]
    fn a_read_answers_only_the_activation_that_asked_for_it() {
        let mut h = hub().with_history();
        let ch = Channel::new("news").unwrap();
        let w = writer(64);
        let Started::Held(user) = h.register(id(1), UserId::new("u").unwrap(), w.clone(), None)
        else {
            panic!("held with history");
        };
        let u = Topic::User(UserId::new("u").unwrap());
        assert!(h.open(id(1), &u, user, Opening::default()));
        assert_eq!(h.reserve(id(1), &ch, true), Reservation::Reserved);
        let Started::Held(first) = h.activate(id(1), &ch) else {
            panic!("held with history");
        };
        assert!(h.unsubscribe(id(1), &ch));
        assert_eq!(h.reserve(id(1), &ch, false), Reservation::Reserved);
        let Started::Held(second) = h.activate(id(1), &ch) else {
            panic!("held with history");
        };
        let topic = Topic::Channel(ch.clone());
        let opening = || Opening {
            frames: vec![Frame::subscribed(&ch)],
            seen: Default::default(),
        };
        assert!(!h.open(id(1), &topic, first, opening()));
        assert_eq!(
            w.queued(),
            0,
            "the earlier read's answer is not this subscription's"
        );
        assert!(h.open(id(1), &topic, second, opening()));
        assert_eq!(w.queued(), 1);
        assert!(!h.open(id(1), &topic, second, opening()), "once");
    }

    #[test]
    fn an_unsubscribed_reservation_is_never_activated() {
        let mut h = hub();
        let ch = Channel::new("c").unwrap();
        h.register(id(1), UserId::new("u").unwrap(), writer(8), None);
        assert_eq!(h.reserve(id(1), &ch, false), Reservation::Reserved);
        assert!(h.unsubscribe(id(1), &ch));
        assert!(!h.unsubscribe(id(1), &ch));
        assert_eq!(h.activate(id(1), &ch), Started::Gone);
        assert_eq!(h.entries(), 2, "the member and its user, no channel");
    }

    #[test]
    fn the_backend_controls_every_connection_of_a_user() {
        let mut h = hub();
        let u = UserId::new("u").unwrap();
        let (a, b) = (writer(8), writer(8));
        h.register(id(1), u.clone(), a.clone(), None);
        h.register(id(2), u.clone(), b.clone(), None);
        let ch = Channel::new("c").unwrap();
        let control = |c| Envelope::Control(u.clone(), c, None);
        h.deliver_batch(&[control(Control::Subscribe(ch.clone()))]);
        // No bridge: subscribed at once, even without a token that allows it.
        assert_eq!(h.deliver(&delivery(Target::Channel(ch.clone()))).pushed, 2);
        assert_eq!((a.queued(), b.queued()), (2, 2));
        // A refreshed token that allows nothing keeps the backend's subscription.
        h.keep_allowed(id(1), &Permissions::default());
        assert_eq!(a.queued(), 2);
        h.deliver_batch(&[control(Control::Unsubscribe(ch.clone()))]);
        assert_eq!(h.deliver(&delivery(Target::Channel(ch.clone()))).pushed, 0);
        assert_eq!((a.queued(), b.queued()), (3, 3), "unsubscribed for each");
        h.deliver_batch(&[control(Control::Disconnect("bye".into()))]);
        assert_eq!(h.connections(), 0);
        assert_eq!(h.entries(), 0);
    }

    #[test]
    fn a_lost_history_is_said_before_the_next_message_and_history_is_not_sent_twice() {
        let mut h = hub().with_history();
        let w = writer(16);
        let u = UserId::new("u").unwrap();
        let seen = crate::merge::Seen {
            generation: 1,
            next_offset: 4,
        };
        let Started::Held(start) = h.register(id(1), u.clone(), w.clone(), None) else {
            panic!("held with history");
        };
        let opening = Opening {
            frames: Vec::new(),
            seen,
        };
        assert!(h.open(id(1), &Topic::User(u.clone()), start, opening));
        let at = |generation, offset| Delivery {
            target: Target::User(u.clone()),
            frame: Frame::pong(),
            position: Some(crate::history::Position {
                epoch: "e2".into(),
                generation,
                offset,
            }),
        };
        // Offset 3 came with the resume: not again. Offset 4 is new.
        assert_eq!(h.deliver(&at(1, 3)).pushed, 0);
        assert_eq!(h.deliver(&at(1, 4)).pushed, 1);
        // A new epoch: `connected` with recovered false first, then the message.
        assert_eq!(h.deliver(&at(2, 1)).pushed, 2);
        assert_eq!(w.queued(), 3);
        assert_eq!(h.deliver(&at(2, 2)).pushed, 1);
    }

    #[test]
    fn a_refresh_ends_what_the_new_token_does_not_allow() {
        let mut h = Hub::new(
            WorkerId(0),
            Arc::new(Routes::new(1, None)),
            8,
            Arc::default(),
        );
        let w = writer(8);
        h.register(id(1), UserId::new("u").unwrap(), w.clone(), None);
        for c in ["keep", "drop"] {
            let ch = Channel::new(c).unwrap();
            h.reserve(id(1), &ch, false);
            h.activate(id(1), &ch);
        }
        h.keep_allowed(id(1), &Permissions::new(&["keep".into()]));
        assert_eq!(w.queued(), 3, "two subscribed, one unsubscribed");
        let keep = Channel::new("keep").unwrap();
        assert_eq!(h.deliver(&delivery(Target::Channel(keep))).pushed, 1);
        let gone = Channel::new("drop").unwrap();
        assert_eq!(h.deliver(&delivery(Target::Channel(gone))).pushed, 0);
    }

    #[tokio::test]
    async fn a_replay_goes_out_as_one_burst_and_cuts_nobody() {
        let mut h = hub();
        let limits = QueueLimits {
            frames: 4,
            bytes: usize::MAX,
        };
        let (stuck, _keep) = crate::writer::stuck(limits).await;
        let u = UserId::new("u").unwrap();
        h.register(id(1), u.clone(), stuck.clone(), None);
        let target = Target::User(u);
        let at = |offset| Delivery {
            frame: Frame::message_at(&target, b"1", offset),
            target: target.clone(),
            position: Some(crate::bridge::history::position("0a", offset)),
        };
        let missed: Vec<Delivery> = (1..=20).map(at).collect();
        let f = h.deliver_batch(&[Envelope::Replay(target.clone(), missed.into())]);
        assert_eq!((f.pushed, f.cut), (21, 0), "a notice (new epoch), then 20");
        assert_eq!(h.connections(), 1);
        // The same frames one by one are over the limit.
        let f = h.deliver_batch(
            &(21..=40)
                .map(|o| Envelope::Message(at(o)))
                .collect::<Vec<_>>(),
        );
        assert_eq!(f.cut, 1);
    }

    #[tokio::test]
    async fn a_queue_over_the_limit_cuts_only_that_connection() {
        let mut h = hub();
        // Its socket is full and one frame already waits: one more is over the limit of 1.
        let (slow, _keep) = crate::writer::stuck(QueueLimits {
            frames: 1,
            bytes: usize::MAX,
        })
        .await;
        let fast = writer(8);
        h.register(id(1), UserId::new("slow").unwrap(), slow.clone(), None);
        h.register(id(2), UserId::new("fast").unwrap(), fast.clone(), None);
        let f = h.deliver(&delivery(Target::All));
        assert_eq!(
            f,
            Fanout {
                pushed: 2,
                refused: 0,
                cut: 1
            }
        );
        assert_eq!(h.connections(), 1);
        assert_eq!(fast.queued(), 1);
        assert_eq!(slow.cut_dropped(), 1);
    }
}
