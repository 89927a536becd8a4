//! One worker's connection registry and fan-out: user → connections, channel → subscribers.
//!
//! A hub belongs to one worker and is touched only from that worker's thread (its bus task and
//! its connections), so its mutex is never contended; it is a mutex only because hyper's
//! services must be `Send`. It knows nothing of Redis or of other workers: to send a message,
//! use [`crate::router::Router::publish`], which finds the workers that have recipients.
//!
//! This file is the registry: connections, their subscriptions and how each recipient's topic
//! starts ([`crate::merge`] opens it). `fanout` delivers.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Permissions;
use crate::bus::Envelope;
use crate::merge::{Asked, Opening, Recipient};
use crate::metrics::WorkerMetrics;
use crate::protocol::{Channel, ConnId, ErrorCode, Frame, Topic, UserId, WorkerId};
use crate::routes::Routes;
use crate::writer::{Command, Writer};

struct Member {
    user: UserId,
    /// The token's public `info`, shown in presence.
    info: Option<Arc<str>>,
    writer: Arc<Writer>,
    channels: Vec<Membership>,
    /// Its user's stream has not opened yet (the history read is pending): broadcasts are held
    /// with the user's direct messages, so `connected` stays the first frame.
    opening: bool,
    /// Speaks the Pusher protocol (its socket id is in [`Hub::pushers`]): channel messages and
    /// presence events reach it in Pusher's shape, broadcasts do not.
    pusher: bool,
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
    /// Asked for deltas (`"delta":"fossil"`): they come when the channel has history.
    deltas: bool,
    /// Who it is in the channel's presence when not the connection's user (a Pusher presence
    /// channel's `channel_data`), with its public info.
    /// Boxed: a `/ws` subscription holds 8 bytes for it.
    present_as: Option<Box<(UserId, Option<Arc<str>>)>>,
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
    /// The last message delivered here, the base of the next one's delta; kept only while a
    /// subscriber here takes deltas.
    last: Option<crate::bus::Delivery>,
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
    /// The connections that speak the Pusher protocol, with their socket ids.
    pushers: HashMap<ConnId, Arc<str>>,
    /// Pusher sockets signed in as a user (`pusher:signin`), by that user's fanfare id: the
    /// backend's word for the user (`terminate_connections`) reaches them.
    signed_in: HashMap<UserId, Vec<ConnId>>,
    /// Whom each signed-in Pusher socket signed in as.
    signed_as: HashMap<ConnId, UserId>,
    /// The server drains: every connection has been told, and one that registers now is told
    /// at once.
    draining: bool,
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
            draining: false,
            pushers: HashMap::new(),
            signed_in: HashMap::new(),
            signed_as: HashMap::new(),
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

    /// Topics keep history here (or in Redis): subscriptions may resume and take deltas.
    pub fn has_history(&self) -> bool {
        self.history
    }

    /// A pending subscription asked for deltas.
    pub fn want_deltas(&mut self, id: ConnId, channel: &Channel) {
        let m = self
            .members
            .get_mut(&id)
            .and_then(|member| member.channels.iter_mut().find(|m| m.channel == *channel));
        if let Some(m) = m.filter(|m| !m.active) {
            m.deltas = true;
        }
    }

    /// Who a pending subscription is in its channel's presence, instead of the connection's
    /// user (a Pusher presence channel's `channel_data`).
    pub fn present_as(
        &mut self,
        id: ConnId,
        channel: &Channel,
        user: UserId,
        info: Option<Arc<str>>,
    ) {
        let m = self
            .members
            .get_mut(&id)
            .and_then(|member| member.channels.iter_mut().find(|m| m.channel == *channel));
        if let Some(m) = m.filter(|m| !m.active) {
            m.present_as = Some(Box::new((user, info)));
        }
    }

    /// Who a subscription is in its channel's presence when not the connection's user.
    pub fn present_as_in(&self, id: ConnId, channel: &Channel) -> Option<UserId> {
        let member = self.members.get(&id)?;
        let m = member.channels.iter().find(|m| m.channel == *channel)?;
        m.present_as.as_ref().map(|p| p.0.clone())
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
        self.register_as(id, user, writer, info, false)
    }

    /// [`register`](Self::register) for a connection that speaks the Pusher protocol, as
    /// `socket`: its topics have no history for it, and it opens them itself.
    pub fn register_pusher(
        &mut self,
        id: ConnId,
        user: UserId,
        writer: Arc<Writer>,
        socket: Arc<str>,
    ) {
        self.pushers.insert(id, socket);
        self.register_as(id, user, writer, None, true);
    }

    fn register_as(
        &mut self,
        id: ConnId,
        user: UserId,
        writer: Arc<Writer>,
        info: Option<Arc<str>>,
        pusher: bool,
    ) -> Started {
        let topic = Topic::User(user.clone());
        let (recipient, started) = self.start(writer.clone(), &topic, pusher);
        // A Pusher socket has no stream of its own: nothing is sent to its user.
        if !pusher {
            match self.users.entry(user.clone()) {
                Entry::Occupied(mut e) => e.get_mut().push((id, recipient)),
                Entry::Vacant(e) => {
                    self.routes.add(&topic, self.worker);
                    e.insert(vec![(id, recipient)]);
                }
            }
        }
        if self.draining {
            writer.command(Command::Drain);
        }
        let member = Member {
            user,
            info,
            writer,
            channels: Vec::new(),
            opening: matches!(started, Started::Held(_)),
            pusher,
        };
        self.members.insert(id, member);
        self.metrics.connections.fetch_add(1, Relaxed);
        started
    }

    /// A recipient of `topic` for `writer`: receiving at once behind its opening without
    /// history, holding live messages for a read with it.
    fn start(&mut self, writer: Arc<Writer>, topic: &Topic, pusher: bool) -> (Recipient, Started) {
        if pusher {
            // No history for Pusher sockets; a presence channel opens with its members, its
            // messages and events held until they are read (see `open_pusher`).
            if let Topic::Channel(c) = topic {
                let name = crate::pusher::name(c).unwrap_or(c.as_str());
                if crate::pusher::Kind::of(name) == crate::pusher::Kind::Presence {
                    self.starts += 1;
                    let holding = Recipient::holding(writer, self.starts);
                    return (holding, Started::Held(self.starts));
                }
                let opening = crate::pusher::subscription_succeeded(name, "{}");
                writer.push_burst(Some(c), &[opening]);
            }
            return (Recipient::open(writer, Default::default()), Started::Open);
        }
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
        if member.pusher {
            self.pushers.remove(&id);
            self.sign_out(id);
        }
        if let Entry::Occupied(mut e) = self.users.entry(member.user.clone()) {
            e.get_mut().retain(|(c, _)| *c != id);
            if e.get().is_empty() {
                let (user, _) = e.remove_entry();
                self.routes.remove(&Topic::User(user), self.worker);
            }
        }
        for m in member.channels {
            let user = m.present_as.map_or(member.user.clone(), |p| p.0);
            self.leave(m.channel, id, &user, m.active);
        }
    }

    /// A Pusher socket signed in as `user` (its fanfare id): the backend's word for that user
    /// reaches it from now on, on any machine (the route makes the bridge listen).
    pub fn sign_in(&mut self, id: ConnId, user: UserId) {
        if !self.pushers.contains_key(&id) {
            return;
        }
        self.sign_out(id);
        let sockets = self.signed_in.entry(user.clone()).or_default();
        if sockets.is_empty() {
            self.routes.add(&Topic::User(user.clone()), self.worker);
        }
        sockets.push(id);
        self.signed_as.insert(id, user);
    }

    fn sign_out(&mut self, id: ConnId) {
        let Some(user) = self.signed_as.remove(&id) else {
            return;
        };
        if let Entry::Occupied(mut e) = self.signed_in.entry(user) {
            e.get_mut().retain(|c| *c != id);
            if e.get().is_empty() {
                let (user, _) = e.remove_entry();
                self.routes.remove(&Topic::User(user), self.worker);
            }
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
            deltas: false,
            present_as: None,
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
        let deltas = m.deltas && self.history;
        let writer = member.writer.clone();
        let (user, info) = match &m.present_as {
            Some(p) => (p.0.clone(), p.1.clone()),
            None => (member.user.clone(), member.info.clone()),
        };
        let pusher = member.pusher;
        let (mut recipient, started) = self.start(writer, &Topic::Channel(channel.clone()), pusher);
        if deltas {
            recipient = recipient.with_deltas();
        }
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

    /// Opens a Pusher presence channel whose start `start` waited for its members: `opening`
    /// (`subscription_succeeded`), then what was held meanwhile in Pusher's shape. False if
    /// the subscription no longer waits for this start.
    pub fn open_pusher(
        &mut self,
        id: ConnId,
        channel: &Channel,
        start: u64,
        opening: Frame,
    ) -> bool {
        let Some(socket) = self.pushers.get(&id).cloned() else {
            return false;
        };
        let me = self.present_as_in(id, channel);
        let Some(r) = self
            .channels
            .get_mut(channel)
            .and_then(|e| e.active.get_mut(&id))
        else {
            return false;
        };
        let Some(held) = r.release(start) else {
            return false;
        };
        let mut burst = vec![opening];
        for envelope in &held {
            match envelope {
                Envelope::Presence(_, frame) => {
                    let event = crate::pusher::member_event(frame);
                    let about_me = |user: &str| me.as_ref().is_some_and(|m| m.as_str() == user);
                    burst.extend(event.filter(|(_, user)| !about_me(user)).map(|(f, _)| f));
                }
                other => burst.extend(fanout::pusher_frames(channel, other, &socket, &mut None)),
            }
        }
        r.writer.push_burst(Some(channel), &burst);
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
        let user = m.present_as.map_or(member.user.clone(), |p| p.0);
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

    /// Channels and users have history: backend subscriptions are activated by their
    /// connection, which reads the position.
    pub fn with_history(mut self) -> Self {
        self.history = true;
        self
    }

    pub fn max_subscriptions(&self) -> usize {
        self.max_subscriptions
    }

    /// The server drains: tells every connection, and from now on every new one, to close
    /// (each at its own moment within the drain).
    pub fn drain(&mut self) {
        self.draining = true;
        for member in self.members.values() {
            member.writer.command(Command::Drain);
        }
    }

    pub fn connections(&self) -> usize {
        self.members.len()
    }

    /// Entries of every map; zero once every connection has left (tests check for leaks).
    pub fn entries(&self) -> usize {
        self.members.len() + self.users.len() + self.channels.len() + self.signed_in.len()
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

mod fanout;
#[cfg(test)]
mod tests;

pub use fanout::Fanout;
