//! Presence: who is connected to each channel (users with a live subscription), with their
//! connection count and the public `info` of their token, and `join`/`leave` events for the
//! subscribers that asked for them.
//!
//! Members are kept per channel in a map ordered by user id (so a channel of 100,000 answers
//! counts at once and lists a page at a time), in shards locked by channel. The hubs report each
//! subscription that starts or ends ([`Presence::joined`], [`Presence::left`]) while they hold
//! their own lock; a user's first connection to a channel is its `join`, its last one's end its
//! `leave`, each sent once through the local bus, so on every connection it keeps its place
//! among the channel's messages.
//!
//! With Redis ([`Presence::fleet`]) the map holds this process's members only, and the fleet's
//! are in Redis (see `bridge::presence`): each change marks its (channel, user) dirty, and the
//! bridge writes the dirty ones' counts a batch per channel every 100 ms, so a storm of joins
//! costs a few Redis calls, not one each. Redis makes the `join`/`leave` events, once for the
//! whole fleet, and every machine relays them like the channel's messages.

use std::collections::hash_map::{DefaultHasher, Entry, HashMap};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bus::{Bus, Envelope};
use crate::protocol::{Channel, Frame, UserId};
use crate::webhooks::{Event, Webhooks};

/// Longest `info` claim, as JSON text.
pub const MAX_INFO_BYTES: usize = 512;

const SHARDS: usize = 16;

/// One user in one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user: UserId,
    pub connections: u32,
    /// The token's `info` claim, as JSON text.
    pub info: Option<Arc<str>>,
}

/// How many are in a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub users: u64,
    pub connections: u64,
}

/// A page of a channel's members, in user id order; `next` is the `after` of the next page.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub members: Vec<Member>,
    pub next: Option<UserId>,
}

#[derive(Default)]
struct Members {
    users: BTreeMap<UserId, (u32, Option<Arc<str>>)>,
    connections: u64,
    /// Subscriptions here that receive `join` and `leave`: without any, none are made.
    watchers: u64,
}

/// What changed here in one channel: how many subscriptions here receive its events (if that
/// changed), and each user with this process's count now (0: gone) and info.
#[derive(Clone, Debug, Default)]
pub struct ChannelChanges {
    pub watchers: Option<u32>,
    pub users: Vec<(UserId, u32, Option<Arc<str>>)>,
}

/// What changed here, by channel.
pub type Changes = HashMap<Channel, ChannelChanges>;

/// What the bridge has still to write.
#[derive(Default)]
struct Dirty {
    users: std::collections::HashSet<(Channel, UserId)>,
    watchers: std::collections::HashSet<Channel>,
}

/// Every channel's members in this process.
pub struct Presence {
    shards: Box<[Mutex<HashMap<Channel, Members>>]>,
    /// Where `join` and `leave` go: to the workers with subscribers of the channel.
    bus: Bus,
    /// Events a worker missed because its inbox was full.
    pub missed: AtomicU64,
    /// With Redis: the (channel, user) pairs whose count here changed since the bridge last
    /// wrote them; `None` in a process alone.
    dirty: Option<Mutex<Dirty>>,
    /// In a process alone: the (channel, user) pairs that changed since the last
    /// [`flush_events`](Self::flush_events), with whether the user was a member before and its
    /// info, so a storm of joins and leaves makes one event per user that really came or went.
    window: Mutex<HashMap<Channel, Changed>>,
    /// In a process alone with `--pusher-webhook`: where what changed in Pusher's channels is
    /// reported (with a fleet, the bridge reports what Redis decided).
    webhooks: Option<Arc<Webhooks>>,
}

/// Users of one channel that came or went since the last flush: whether each was a member
/// then, and its info.
type Changed = HashMap<UserId, (bool, Option<Arc<str>>)>;

/// How often a process alone sends the `join`/`leave` events of what changed (as the bridge
/// writes to Redis with a fleet).
pub const EVENTS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Presence {
    pub fn new(bus: Bus) -> Self {
        Presence {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            bus,
            missed: AtomicU64::new(0),
            dirty: None,
            window: Mutex::default(),
            webhooks: None,
        }
    }

    /// A process alone reports to `webhooks` what its flushes find changed in Pusher's
    /// channels.
    pub fn with_webhooks(mut self, webhooks: Arc<Webhooks>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Presence for a fleet: the fleet's members and events come from Redis.
    pub fn fleet(mut self) -> Self {
        self.dirty = Some(Mutex::default());
        self
    }

    pub fn is_fleet(&self) -> bool {
        self.dirty.is_some()
    }

    fn dirty(&self) -> Option<MutexGuard<'_, Dirty>> {
        let dirty = self.dirty.as_ref()?;
        Some(dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn mark(&self, channel: &Channel, user: &UserId) {
        if let Some(mut d) = self.dirty() {
            d.users.insert((channel.clone(), user.clone()));
        }
    }

    /// For the bridge: what changed here since the last call, by channel, with this process's
    /// count now (0: gone) and the user's info.
    pub fn take_changes(&self) -> Changes {
        let Some(taken) = self.dirty().map(|mut d| std::mem::take(&mut *d)) else {
            return HashMap::new();
        };
        let mut out: Changes = HashMap::new();
        for channel in taken.watchers {
            let n = self.shard(&channel).get(&channel).map_or(0, |m| m.watchers);
            out.entry(channel).or_default().watchers = Some(n as u32);
        }
        for (channel, user) in taken.users {
            let now = self
                .shard(&channel)
                .get(&channel)
                .and_then(|m| m.users.get(&user).cloned());
            let (n, info) = now.unwrap_or((0, None));
            out.entry(channel).or_default().users.push((user, n, info));
        }
        out
    }

    /// For the bridge: changes it could not write now, to be written with the next round.
    pub fn mark_again(&self, changes: Changes) {
        let Some(mut d) = self.dirty() else {
            return;
        };
        for (channel, c) in changes {
            if c.watchers.is_some() {
                d.watchers.insert(channel.clone());
            }
            d.users
                .extend(c.users.into_iter().map(|(u, _, _)| (channel.clone(), u)));
        }
    }

    /// For the bridge, after Redis lost what it was told (a reconnect): everything here is
    /// written again.
    pub fn mark_all(&self) {
        if self.dirty.is_none() {
            return;
        }
        let (mut users, mut watched) = (Vec::new(), Vec::new());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (channel, m) in shard.iter() {
                users.extend(m.users.keys().map(|u| (channel.clone(), u.clone())));
                watched.push(channel.clone());
            }
        }
        if let Some(mut d) = self.dirty() {
            d.users.extend(users);
            d.watchers.extend(watched);
        }
    }

    /// For the bridge: whether `channel` has members or watchers here.
    pub fn holds(&self, channel: &Channel) -> bool {
        self.shard(channel).contains_key(channel)
    }

    /// For the bridge: the channels that have members here.
    pub fn channels(&self) -> Vec<Channel> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .iter()
                    .filter(|(_, m)| !m.users.is_empty())
                    .map(|(c, _)| c.clone()),
            );
        }
        out
    }

    fn shard(&self, channel: &Channel) -> MutexGuard<'_, HashMap<Channel, Members>> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        let shard = &self.shards[h.finish() as usize % SHARDS];
        // Every state of the map is valid; a panic elsewhere must not stop presence.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription of `user` to `channel` started; the user's first is its `join`.
    pub fn joined(&self, channel: &Channel, user: &UserId, info: Option<&Arc<str>>) {
        let mut shard = self.shard(channel);
        let members = shard.entry(channel.clone()).or_default();
        members.connections += 1;
        let first = match members.users.get_mut(user) {
            Some((n, _)) => {
                *n += 1;
                false
            }
            None => {
                members.users.insert(user.clone(), (1, info.cloned()));
                true
            }
        };
        if self.is_fleet() {
            drop(shard);
            self.mark(channel, user);
            return;
        }
        // Under the shard's lock (shard, then window, everywhere): changes are noted in the
        // order they happen.
        if first {
            self.changed(channel, user, false, info.cloned());
        }
    }

    /// Notes that `user` came to or left `channel` (it was a member before: `was`), for the
    /// next [`flush_events`](Self::flush_events).
    fn changed(&self, channel: &Channel, user: &UserId, was: bool, info: Option<Arc<str>>) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let entry = window
            .entry(channel.clone())
            .or_default()
            .entry(user.clone())
            .or_insert((was, None));
        entry.1 = info;
    }

    /// In a process alone, every [`EVENTS_EVERY`], and for one channel before each of its
    /// messages ([`flush_channel`](Self::flush_channel)): the `join` of each user who is a
    /// member now and was not at the last flush, the `leave` of each who was and is not, to
    /// the channel's watchers; a user who came and went in between makes none.
    pub fn flush_events(&self) {
        let channels: Vec<Channel> = {
            let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            window.keys().cloned().collect()
        };
        for channel in channels {
            self.flush_channel(&channel);
        }
    }

    /// Says what changed in `channel` so far; before each of its messages too, so events keep
    /// their place among them. Under the channel's shard lock (then the window's, as where
    /// changes are noted): a change, its event and a message after it cannot cross.
    pub fn flush_channel(&self, channel: &Channel) {
        let window = || self.window.lock().unwrap_or_else(|e| e.into_inner());
        // The common case, on every message: nothing changed anywhere, no shard is locked.
        if window().is_empty() {
            return;
        }
        let shard = self.shard(channel);
        let users = window().remove(channel);
        if let Some(users) = users {
            self.announce(&shard, channel, users);
        }
    }

    fn announce(&self, shard: &HashMap<Channel, Members>, channel: &Channel, users: Changed) {
        if let (Some(webhooks), Some(name)) = (&self.webhooks, crate::pusher::name(channel)) {
            report(webhooks, name, shard.get(channel), &users);
        }
        // No entry: nobody is left, and nobody watches.
        let Some(members) = shard.get(channel).filter(|m| m.watchers > 0) else {
            return;
        };
        for (user, (was, info)) in users {
            let frame = match (members.users.get(&user), was) {
                (Some((_, info)), false) => Frame::join(channel, &user, info.as_deref()),
                (None, true) => Frame::leave(channel, &user, info.as_deref()),
                _ => continue,
            };
            self.send(channel, frame);
        }
    }

    /// A subscription to `channel` started (`true`) or stopped receiving its events.
    pub fn watching(&self, channel: &Channel, on: bool) {
        let mut shard = self.shard(channel);
        let members = shard.entry(channel.clone()).or_default();
        match on {
            true => members.watchers += 1,
            false => members.watchers = members.watchers.saturating_sub(1),
        }
        if members.users.is_empty() && members.watchers == 0 {
            shard.remove(channel);
        }
        drop(shard);
        if let Some(mut d) = self.dirty() {
            d.watchers.insert(channel.clone());
        }
    }

    /// A subscription of `user` to `channel` ended; the user's last is its `leave`.
    pub fn left(&self, channel: &Channel, user: &UserId) {
        let mut shard = self.shard(channel);
        let Entry::Occupied(mut e) = shard.entry(channel.clone()) else {
            return;
        };
        let members = e.get_mut();
        let Some((n, info)) = members.users.get_mut(user) else {
            return;
        };
        members.connections -= 1;
        *n -= 1;
        if self.is_fleet() {
            if *n == 0 {
                members.users.remove(user);
                if members.users.is_empty() && members.watchers == 0 {
                    e.remove();
                }
            }
            drop(shard);
            self.mark(channel, user);
            return;
        }
        if *n > 0 {
            return;
        }
        let info = info.take();
        members.users.remove(user);
        if members.users.is_empty() && members.watchers == 0 {
            e.remove();
        }
        self.changed(channel, user, true, info);
    }

    fn send(&self, channel: &Channel, frame: Frame) {
        let missed = self
            .bus
            .try_deliver(Envelope::Presence(channel.clone(), frame));
        self.missed.fetch_add(missed, Relaxed);
    }

    pub fn count(&self, channel: &Channel) -> Count {
        self.shard(channel)
            .get(channel)
            .map_or_else(Count::default, |m| Count {
                users: m.users.len() as u64,
                connections: m.connections,
            })
    }

    /// Up to `limit` members after the user `after`, in user id order.
    pub fn members(&self, channel: &Channel, after: Option<&UserId>, limit: usize) -> Page {
        let shard = self.shard(channel);
        let Some(m) = shard.get(channel) else {
            return Page::default();
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut members: Vec<Member> = m
            .users
            .range::<UserId, _>((from, Bound::Unbounded))
            .take(limit + 1)
            .map(|(user, (n, info))| Member {
                user: user.clone(),
                connections: *n,
                info: info.clone(),
            })
            .collect();
        let next = (members.len() > limit).then(|| {
            members.truncate(limit);
            members[limit - 1].user.clone()
        });
        Page { members, next }
    }
}

/// What a flush found changed in the Pusher channel `name` (`members` now, `users` who came
/// or went since the last flush), as webhooks: `channel_occupied` if it had nobody then,
/// `member_added` / `member_removed` on a presence channel, `channel_vacated` if it has
/// nobody now.
fn report(webhooks: &Webhooks, name: &str, members: Option<&Members>, users: &Changed) {
    let now = members.map_or(0, |m| m.users.len());
    let is_member = |user: &UserId| members.is_some_and(|m| m.users.contains_key(user));
    let came: Vec<&UserId> = users
        .iter()
        .filter(|(user, (was, _))| !was && is_member(user))
        .map(|(user, _)| user)
        .collect();
    let went: Vec<&UserId> = users
        .iter()
        .filter(|(user, (was, _))| *was && !is_member(user))
        .map(|(user, _)| user)
        .collect();
    let before = now + went.len() - came.len();
    let channel = || name.to_string();
    if before == 0 && now > 0 {
        webhooks.push(&Event::Occupied { channel: channel() });
    }
    if crate::pusher::Kind::of(name) == crate::pusher::Kind::Presence {
        for user in came {
            let user = user.as_str().to_string();
            webhooks.push(&Event::MemberAdded {
                channel: channel(),
                user,
            });
        }
        for user in went {
            let user = user.as_str().to_string();
            webhooks.push(&Event::MemberRemoved {
                channel: channel(),
                user,
            });
        }
    }
    if before > 0 && now == 0 {
        webhooks.push(&Event::Vacated { channel: channel() });
    }
}

/// The answer to a members question, as the client frame and the HTTP API give it.
pub fn page_json(channel: &Channel, page: &Page) -> serde_json::Value {
    let members: Vec<serde_json::Value> = page
        .members
        .iter()
        .map(|m| {
            let mut v = serde_json::json!({"user": m.user.as_str(), "connections": m.connections});
            if let Some(info) = m.info.as_deref().and_then(|i| serde_json::from_str(i).ok()) {
                v["info"] = info;
            }
            v
        })
        .collect();
    serde_json::json!({
        "type": "presence",
        "channel": channel.as_str(),
        "members": members,
        "next": page.next.as_ref().map(UserId::as_str),
    })
}

/// The answer to a count question.
pub fn count_json(channel: &Channel, count: Count) -> serde_json::Value {
    serde_json::json!({
        "type": "presence_count",
        "channel": channel.as_str(),
        "users": count.users,
        "connections": count.connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Topic;
    use crate::protocol::WorkerId;
    use crate::routes::Routes;

    fn presence() -> (Presence, crate::bus::Inbox) {
        let routes = Arc::new(Routes::new(1, None));
        let channel = Channel::new("room").unwrap();
        routes.add(&Topic::Channel(channel), WorkerId(0));
        let (bus, mut inboxes) = Bus::new(routes, 1);
        (Presence::new(bus), inboxes.remove(0))
    }

    fn events(rx: &mut crate::bus::Inbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Envelope::Presence(_, frame)) = rx.try_recv() {
            out.push(frame.as_str().to_string());
        }
        out
    }

    #[test]
    fn a_user_joins_with_the_first_connection_and_leaves_with_the_last() {
        let (p, mut rx) = presence();
        let room = Channel::new("room").unwrap();
        let (a, b) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
        let info: Arc<str> = r#"{"name":"Ann"}"#.into();
        // Nobody watches: no event is made.
        p.joined(&room, &b, None);
        p.flush_events();
        p.left(&room, &b);
        p.flush_events();
        assert!(events(&mut rx).is_empty());
        p.watching(&room, true);
        p.joined(&room, &a, Some(&info));
        p.joined(&room, &a, None);
        p.joined(&room, &b, None);
        assert_eq!(
            p.count(&room),
            Count {
                users: 2,
                connections: 3
            }
        );
        p.flush_events();
        let mut joins = events(&mut rx);
        joins.sort();
        assert_eq!(
            joins,
            [
                r#"{"type":"join","channel":"room","user":"a","info":{"name":"Ann"}}"#,
                r#"{"type":"join","channel":"room","user":"b"}"#,
            ]
        );
        p.left(&room, &a);
        p.left(&room, &a);
        p.left(&room, &b);
        assert_eq!(p.count(&room), Count::default());
        p.flush_events();
        let mut leaves = events(&mut rx);
        leaves.sort();
        assert_eq!(
            leaves,
            [
                r#"{"type":"leave","channel":"room","user":"a","info":{"name":"Ann"}}"#,
                r#"{"type":"leave","channel":"room","user":"b"}"#,
            ]
        );
    }

    /// A storm of subscribes and unsubscribes between two flushes makes one event per user
    /// that really came or went, not one per change (it used to be two per pair).
    #[test]
    fn a_storm_of_joins_and_leaves_makes_only_the_events_that_stand() {
        let (p, mut rx) = presence();
        let room = Channel::new("room").unwrap();
        p.watching(&room, true);
        let stays = UserId::new("stays").unwrap();
        for i in 0..10_000 {
            let user = UserId::new(&format!("u{}", i % 100)).unwrap();
            p.joined(&room, &user, None);
            p.left(&room, &user);
        }
        p.joined(&room, &stays, None);
        p.flush_events();
        assert_eq!(
            events(&mut rx),
            [r#"{"type":"join","channel":"room","user":"stays"}"#]
        );
    }

    #[test]
    fn members_come_a_page_at_a_time_in_user_order() {
        let (p, _rx) = presence();
        let room = Channel::new("room").unwrap();
        for i in (0..25).rev() {
            p.joined(&room, &UserId::new(&format!("u{i:02}")).unwrap(), None);
        }
        let first = p.members(&room, None, 10);
        assert_eq!(first.members.len(), 10);
        assert_eq!(first.members[0].user.as_str(), "u00");
        assert_eq!(first.next.as_ref().unwrap().as_str(), "u09");
        let second = p.members(&room, first.next.as_ref(), 10);
        assert_eq!(second.members[0].user.as_str(), "u10");
        let last = p.members(&room, second.next.as_ref(), 10);
        assert_eq!(last.members.len(), 5);
        assert_eq!(last.next, None);
        assert_eq!(
            p.members(&Channel::new("none").unwrap(), None, 10),
            Page::default()
        );
    }
}
