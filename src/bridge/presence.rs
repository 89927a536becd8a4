//! Presence kept in Redis for the whole fleet (PROTOCOL "Presence").
//!
//! Per channel, three keys in the channel's slot ([`Names::presence`]): `p:` a hash of each
//! process's connections per user (field `<instance>|<user>`), `q:` a hash of each user's total
//! and info (`<total>|<info JSON>`; field "" counts every connection), and `z:` the users in
//! order, for pages. A process writes its own counts — absolute, so writing one again is
//! harmless and a reconnect simply writes everything again — a batch per channel every
//! [`FLUSH_EVERY`], in one script call that also publishes the `join` of a user whose total
//! leaves 0 and the `leave` of one whose total reaches 0, on the channel's Redis channel: once
//! for the fleet, in the channel's order on every machine.
//!
//! A process that dies cannot take its members away, so each one says it is alive: every
//! [`BEAT_EVERY`] it puts its instance, with Redis's time, in the registry (a sorted set) and
//! the channels it has members in in a set of its own. Every machine checks the registry as
//! often; an instance silent for [`DEAD_AFTER`] is taken out (by one machine: the removal is
//! atomic) and its members are purged channel by channel, which sends their `leave`s. So a
//! crashed machine's members are gone everywhere within `DEAD_AFTER` + `BEAT_EVERY` + one
//! flush: **at most 8 s** (a second of slack for a busy Redis).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use super::wire::{self, Names};
use super::Request;
use crate::presence::{ChannelChanges, Count, Member, Page, Presence};
use crate::protocol::{Channel, UserId};
use crate::pusher::{self, Kind};
use crate::webhooks::{Event, Webhooks};

pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
pub const DEAD_AFTER: Duration = Duration::from_secs(6);
/// Most users in one write script call.
const PER_CALL: usize = 1000;
/// The largest page of members Redis sends back: each member a user id, a count and info,
/// with RESP framing.
pub const MAX_PAGE_REPLY: usize = (crate::protocol::MAX_PAGE + 1)
    * (crate::protocol::MAX_USER_ID_BYTES + crate::presence::MAX_INFO_BYTES + 64);

/// Sets one user's count for this process and keeps the totals, publishing `join`/`leave`
/// while some subscription in the fleet receives them (KEYS[4] counts those).
const CHANGE: &str = r#"
local hooked, members_hooked = {}, false
local function change(user, count, info)
  local field = ARGV[1] .. '|' .. user
  local had = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  local delta = count - had
  if delta == 0 then return end
  if count > 0 then redis.call('HSET', KEYS[1], field, count) else redis.call('HDEL', KEYS[1], field) end
  local cur = redis.call('HGET', KEYS[2], user)
  local total, old = 0, ''
  if cur then
    local bar = string.find(cur, '|', 1, true)
    total = tonumber(string.sub(cur, 1, bar - 1))
    old = string.sub(cur, bar + 1)
  end
  local new = total + delta
  if new < 0 then new = 0 end
  if redis.call('HINCRBY', KEYS[2], '', new - total) <= 0 then redis.call('HDEL', KEYS[2], '') end
  local event
  if new == 0 then
    redis.call('HDEL', KEYS[2], user)
    redis.call('ZREM', KEYS[3], user)
    event, info = 'leave', old
  else
    if info == '' then info = old end
    redis.call('HSET', KEYS[2], user, new .. '|' .. info)
    if total == 0 then
      redis.call('ZADD', KEYS[3], 0, user)
      event = 'join'
    end
  end
  if event and members_hooked then
    hooked[#hooked + 1] = event
    hooked[#hooked + 1] = user
  end
  if event and tonumber(redis.call('GET', KEYS[4]) or '0') > 0 then
    local e = '{"type":"' .. event .. '","channel":"' .. ARGV[5] .. '","user":' .. cjson.encode(user)
    if info ~= '' then e = e .. ',"info":' .. info end
    redis.call(ARGV[4], ARGV[2], ARGV[3] .. e .. '}')
  end
end
"#;

/// Sets this process's count of watchers (its field is `<instance>|`, a user id is never
/// empty) and keeps the fleet's.
const WATCHERS: &str = r#"
local function watchers(count)
  local field = ARGV[1] .. '|'
  local had = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if count > 0 then redis.call('HSET', KEYS[1], field, count) else redis.call('HDEL', KEYS[1], field) end
  if count ~= had and redis.call('INCRBY', KEYS[4], count - had) <= 0 then redis.call('DEL', KEYS[4]) end
end
"#;

/// Runs `body` and, when `hooks` (an ARGV) is `o` or `m`, returns what it did for webhooks
/// as (kind, user) pairs: `occupied` first if the channel's connections rose from 0, `join`
/// and `leave` of each user (with `m`), `vacated` last if they fell to 0. Otherwise 1.
fn hooked(hooks: &str, body: &str) -> String {
    format!(
        "{CHANGE}{WATCHERS}\nmembers_hooked = {hooks} == 'm'\n\
         local before = tonumber(redis.call('HGET', KEYS[2], '') or '0')\n{body}\n\
         if {hooks} == '' then return 1 end\n\
         local after = tonumber(redis.call('HGET', KEYS[2], '') or '0')\nlocal out = {{}}\n\
         if before == 0 and after > 0 then out = {{'occupied', ''}} end\n\
         for _, v in ipairs(hooked) do out[#out + 1] = v end\n\
         if before > 0 and after == 0 then out[#out + 1] = 'vacated'; out[#out + 1] = '' end\n\
         return out"
    )
}

/// KEYS: p, q, z, w. ARGV: instance, Redis channel, wire header, PUBLISH or SPUBLISH, channel
/// name, watchers here ('' if unchanged), webhooks ('', `o` or `m`: see [`hooked`]), then
/// (user, count here, info) for each user.
pub fn write_script() -> String {
    hooked(
        "ARGV[7]",
        "if ARGV[6] ~= '' then watchers(tonumber(ARGV[6])) end\n\
         for i = 8, #ARGV, 3 do change(ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2]) end",
    )
}

/// KEYS: p, q, z, w. ARGV: the dead instance, Redis channel, wire header, publish verb,
/// channel name, webhooks (as [`write_script`]). Takes every member of that instance away
/// (their `leave`s are sent while others still watch), then its watchers.
pub fn purge_script() -> String {
    hooked(
        "ARGV[6]",
        "local prefix = ARGV[1] .. '|'\nlocal fields = redis.call('HGETALL', KEYS[1])\n\
         for i = 1, #fields, 2 do\n  local user = string.sub(fields[i], #prefix + 1)\n  \
         if string.sub(fields[i], 1, #prefix) == prefix and user ~= '' then change(user, 0, '') end\n\
         end\nwatchers(0)",
    )
}

/// KEYS: q, z. ARGV: after ('' for the first page), how many. Returns user, value pairs.
pub const PAGE: &str = r"
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local users = redis.call('ZRANGEBYLEX', KEYS[2], from, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
if #users == 0 then return out end
local values = redis.call('HMGET', KEYS[1], unpack(users))
for i = 1, #users do
  out[#out + 1] = users[i]
  out[#out + 1] = values[i] or '0|'
end
return out";

/// KEYS: q, z. Returns users, connections.
pub const COUNT: &str = r"
return {tostring(redis.call('ZCARD', KEYS[2])), tostring(redis.call('HGET', KEYS[1], '') or '0')}";

/// Puts the instance in the registry with Redis's time and its channels in its set. KEYS:
/// registry, the instance's set. ARGV: instance, then channels.
/// KEYS: registry, the instance's set. ARGV: instance, "1" if it has registered channels,
/// then channels to add. Returns 1 if the instance was not in the registry or lost its set
/// (its first beat, or survivors purged it).
const BEAT: &str = r"
local t = redis.call('TIME')
local added = redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then added = 1 end
if #ARGV > 2 then redis.call('SADD', KEYS[2], unpack(ARGV, 3)) end
return added";

/// Takes out of the registry the instances silent for ARGV[1] ms, with their sets of channels
/// (keys ARGV[2] .. instance, in the registry's slot), at once: returns each instance, how
/// many channels, then the channels.
const DEAD: &str = r"
local t = redis.call('TIME')
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local out = {}
for _, instance in ipairs(dead) do
  local set = ARGV[2] .. instance
  local channels = redis.call('SMEMBERS', set)
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[1], instance)
  out[#out + 1] = instance
  out[#out + 1] = tostring(#channels)
  for _, c in ipairs(channels) do out[#out + 1] = c end
end
return out";

/// What the presence scripts tell webhooks of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hooks {
    None,
    /// Whether it became occupied or vacated.
    Occupancy,
    /// That, and each user who came or went.
    Members,
}

impl Hooks {
    fn arg(self) -> &'static [u8] {
        match self {
            Hooks::None => b"",
            Hooks::Occupancy => b"o",
            Hooks::Members => b"m",
        }
    }
}

/// A change of a channel that webhooks report, in the order the script made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Occupied,
    Vacated,
    Joined(UserId),
    Left(UserId),
}

impl Change {
    /// The changes a script returned, as (kind, user) pairs.
    fn parse(parts: &[Option<Bytes>]) -> Vec<Change> {
        let text = |p: &Option<Bytes>| {
            p.as_ref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_string)
        };
        parts
            .chunks(2)
            .filter_map(|pair| {
                let user = || UserId::new(&text(pair.get(1)?)?).ok();
                match text(&pair[0])?.as_str() {
                    "occupied" => Some(Change::Occupied),
                    "vacated" => Some(Change::Vacated),
                    "join" => user().map(Change::Joined),
                    "leave" => user().map(Change::Left),
                    _ => None,
                }
            })
            .collect()
    }
}

/// What the publisher does for presence.
pub enum PresenceRequest {
    /// This process's counts (0: gone) of some users of a channel.
    Write {
        channel: Channel,
        /// This process's watchers of the channel, if that changed.
        watchers: Option<u32>,
        users: Vec<(UserId, u32, Option<Arc<str>>)>,
        hooks: Hooks,
        /// Told once Redis has it, with what webhooks report; dropped unanswered if it may not
        /// have.
        done: oneshot::Sender<Vec<Change>>,
    },
    /// Takes a dead instance's members of a channel away.
    Purge {
        channel: Channel,
        instance: String,
        hooks: Hooks,
        done: oneshot::Sender<Vec<Change>>,
    },
    Page {
        channel: Channel,
        after: Option<UserId>,
        limit: usize,
        reply: oneshot::Sender<Page>,
    },
    Count {
        channel: Channel,
        reply: oneshot::Sender<Count>,
    },
}

impl PresenceRequest {
    pub fn channel(&self) -> &Channel {
        match self {
            PresenceRequest::Write { channel, .. }
            | PresenceRequest::Purge { channel, .. }
            | PresenceRequest::Page { channel, .. }
            | PresenceRequest::Count { channel, .. } => channel,
        }
    }

    /// The command's arguments; `sha` gives the loaded script of each kind.
    pub fn encode(
        &self,
        names: &Names,
        instance: u64,
        publish: &[u8],
        sha: &Scripts,
        out: &mut Vec<u8>,
    ) {
        let channel = self.channel();
        let [p, q, z, w] = names.presence(channel);
        let topic = names.topic(&crate::protocol::Topic::Channel(channel.clone()));
        let header = wire::presence_header(instance);
        match self {
            PresenceRequest::Write {
                users,
                watchers,
                hooks,
                ..
            } => {
                let me = format!("{instance:x}");
                let counts: Vec<String> = users.iter().map(|(_, n, _)| n.to_string()).collect();
                let watchers = watchers.map(|n| n.to_string()).unwrap_or_default();
                let mut args: Vec<&[u8]> = vec![
                    b"EVALSHA",
                    sha.write.as_bytes(),
                    b"4",
                    p.as_bytes(),
                    q.as_bytes(),
                    z.as_bytes(),
                    w.as_bytes(),
                    me.as_bytes(),
                    topic.as_bytes(),
                    &header,
                    publish,
                    channel.as_str().as_bytes(),
                    watchers.as_bytes(),
                    hooks.arg(),
                ];
                for ((user, _, info), count) in users.iter().zip(&counts) {
                    args.push(user.as_str().as_bytes());
                    args.push(count.as_bytes());
                    args.push(info.as_deref().unwrap_or("").as_bytes());
                }
                super::pubsub::encode(out, &args);
            }
            PresenceRequest::Purge {
                instance: dead,
                hooks,
                ..
            } => {
                let args: [&[u8]; 13] = [
                    b"EVALSHA",
                    sha.purge.as_bytes(),
                    b"4",
                    p.as_bytes(),
                    q.as_bytes(),
                    z.as_bytes(),
                    w.as_bytes(),
                    dead.as_bytes(),
                    topic.as_bytes(),
                    &header,
                    publish,
                    channel.as_str().as_bytes(),
                    hooks.arg(),
                ];
                super::pubsub::encode(out, &args);
            }
            PresenceRequest::Page { after, limit, .. } => {
                let more = (limit + 1).to_string();
                let after = after.as_ref().map_or("", UserId::as_str);
                let args: [&[u8]; 7] = [
                    b"EVALSHA",
                    sha.page.as_bytes(),
                    b"2",
                    q.as_bytes(),
                    z.as_bytes(),
                    after.as_bytes(),
                    more.as_bytes(),
                ];
                super::pubsub::encode(out, &args);
            }
            PresenceRequest::Count { .. } => {
                let args: [&[u8]; 5] = [
                    b"EVALSHA",
                    sha.count.as_bytes(),
                    b"2",
                    q.as_bytes(),
                    z.as_bytes(),
                ];
                super::pubsub::encode(out, &args);
            }
        }
    }

    /// Answers whoever waits from the reply's parts; a reply of another shape leaves them
    /// unanswered (they see the link's failure).
    pub fn answer(self, parts: &[Option<Bytes>]) {
        let text = |i: usize| {
            parts
                .get(i)
                .and_then(|p| p.as_ref())
                .and_then(|b| std::str::from_utf8(b).ok())
        };
        match self {
            PresenceRequest::Page { limit, reply, .. } => {
                let mut members = Vec::new();
                for i in (0..parts.len()).step_by(2) {
                    let (Some(user), Some(value)) = (text(i), text(i + 1)) else {
                        return;
                    };
                    let Ok(user) = UserId::new(user) else { return };
                    let (count, info) = value.split_once('|').unwrap_or((value, ""));
                    members.push(Member {
                        user,
                        connections: count.parse().unwrap_or(0),
                        info: (!info.is_empty()).then(|| info.into()),
                    });
                }
                let next = (members.len() > limit).then(|| {
                    members.truncate(limit);
                    members[limit - 1].user.clone()
                });
                let _ = reply.send(Page { members, next });
            }
            PresenceRequest::Count { reply, .. } => {
                let n = |i| text(i).and_then(|t| t.parse().ok());
                if let (Some(users), Some(connections)) = (n(0), n(1)) {
                    let _ = reply.send(Count { users, connections });
                }
            }
            PresenceRequest::Write { done, .. } | PresenceRequest::Purge { done, .. } => {
                let _ = done.send(Change::parse(parts));
            }
        }
    }

    /// A write or purge Redis carried out.
    pub fn done(self) {
        match self {
            PresenceRequest::Write { done, .. } | PresenceRequest::Purge { done, .. } => {
                let _ = done.send(Vec::new());
            }
            PresenceRequest::Page { .. } | PresenceRequest::Count { .. } => {}
        }
    }
}

/// The SHA1 of each presence script, as loaded on a connection.
#[derive(Default, Clone)]
pub struct Scripts {
    pub write: String,
    pub purge: String,
    pub page: String,
    pub count: String,
}

/// Writes this process's presence changes and keeps it alive in the registry, and purges the
/// members of instances that died.
pub(super) struct Keeper {
    pub presence: Arc<Presence>,
    pub requests: mpsc::Sender<Request>,
    pub registry: Arc<Registry>,
    pub names: Names,
    pub instance: u64,
    pub metrics: Arc<crate::metrics::BridgeMetrics>,
    /// With `--pusher-webhook`: where the changes of Pusher's channels are reported.
    pub webhooks: Option<Arc<Webhooks>>,
    pub shutdown: CancellationToken,
}

/// What became of a write or purge sent to Redis: what it changed, or `None` if it may not
/// have been carried out.
enum Ack {
    Write(Channel, ChannelChanges, Option<Vec<Change>>),
    Purge(String, Channel, Option<Vec<Change>>),
}

type Acks = FuturesUnordered<Pin<Box<dyn Future<Output = Ack> + Send>>>;

/// Waits for Redis to carry out a request (`None`: it may not have).
async fn acked(done: oneshot::Receiver<Vec<Change>>) -> Option<Vec<Change>> {
    match tokio::time::timeout(super::RESPONSE_TIMEOUT * 2, done).await {
        Ok(Ok(changes)) => Some(changes),
        _ => None,
    }
}

impl Keeper {
    /// What the scripts tell webhooks of `channel`: nothing unless it is one of Pusher's.
    fn hooks(&self, channel: &Channel) -> Hooks {
        match (&self.webhooks, pusher::name(channel)) {
            (Some(_), Some(name)) if Kind::of(name) == Kind::Presence => Hooks::Members,
            (Some(_), Some(_)) => Hooks::Occupancy,
            _ => Hooks::None,
        }
    }

    /// Hands what a write or purge changed to the webhooks.
    fn report(&self, channel: &Channel, changed: Vec<Change>) {
        let (Some(webhooks), Some(name)) = (&self.webhooks, pusher::name(channel)) else {
            return;
        };
        let channel = name.to_string();
        for change in changed {
            webhooks.push(&match change {
                Change::Occupied => Event::Occupied {
                    channel: channel.clone(),
                },
                Change::Vacated => Event::Vacated {
                    channel: channel.clone(),
                },
                Change::Joined(user) => Event::MemberAdded {
                    channel: channel.clone(),
                    user: user.as_str().to_string(),
                },
                Change::Left(user) => Event::MemberRemoved {
                    channel: channel.clone(),
                    user: user.as_str().to_string(),
                },
            });
        }
    }

    pub async fn run(self) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut beat = tokio::time::interval(BEAT_EVERY);
        let mut state = KeeperState::default();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.leave(&mut state).await;
                    return;
                }
                Some(ack) = state.acks.next(), if !state.acks.is_empty() => match ack {
                    // Not carried out: written, or purged, with the next round.
                    Ack::Write(channel, changes, None) => {
                        self.presence.mark_again(HashMap::from([(channel, changes)]));
                    }
                    Ack::Purge(instance, channel, None) => state.purges.push((instance, channel)),
                    Ack::Write(channel, _, Some(changed)) => {
                        self.report(&channel, changed);
                        // Its last members here are gone from Redis: it may leave this
                        // process's set.
                        if !self.presence.holds(&channel) {
                            state.leaving.insert(channel);
                        }
                    }
                    Ack::Purge(_, channel, Some(changed)) => self.report(&channel, changed),
                },
                _ = flush.tick() => {
                    // A link that connected again may have a Redis that lost what it was told.
                    let reconnects = self.metrics.reconnects.load(Relaxed);
                    if reconnects != state.reconnects {
                        state.reconnects = reconnects;
                        state.registered.clear();
                        self.presence.mark_all();
                    }
                    if state.remark_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                        state.remark_at = None;
                        self.presence.mark_all();
                    }
                    if let Err(why) = self.write(&mut state).await {
                        self.registry.lost();
                        tracing::warn!("bridge: presence registry: {why}");
                    }
                }
                _ = beat.tick() => {
                    if let Err(why) = self.beat(&mut state).await {
                        self.registry.lost();
                        tracing::warn!("bridge: presence registry: {why}");
                    }
                    self.purge(&mut state);
                }
            }
        }
    }

    /// Writes what changed here; a channel is registered first, so a process never has members
    /// in Redis that the survivors could not find to purge. What cannot be written now, or is
    /// not carried out, is written with a later round.
    async fn write(&self, state: &mut KeeperState) -> Result<(), String> {
        let changes = self.presence.take_changes();
        self.unregister(&changes, state).await?;
        let new: Vec<String> = changes
            .keys()
            .filter(|c| !state.registered.contains(*c))
            .map(|c| c.as_str().to_string())
            .collect();
        if !new.is_empty() {
            let had = !state.registered.is_empty();
            match self.register(had, &new).await {
                Ok(added) => self.registered(added, state),
                Err(why) => {
                    self.presence.mark_again(changes);
                    return Err(why);
                }
            }
            state.registered.extend(changes.keys().cloned());
        }
        let mut unsent: crate::presence::Changes = HashMap::new();
        for (channel, c) in changes {
            let mut watchers = c.watchers;
            // A channel whose watchers changed and whose users did not is one call too.
            let chunks = c.users.chunks(PER_CALL).map(<[_]>::to_vec);
            for users in chunks.chain(c.users.is_empty().then(Vec::new)) {
                let part = ChannelChanges {
                    watchers: watchers.take(),
                    users,
                };
                if !unsent.is_empty() {
                    merge(&mut unsent, &channel, part);
                    continue;
                }
                let (done, ack) = oneshot::channel();
                let request = Request::Presence(PresenceRequest::Write {
                    channel: channel.clone(),
                    watchers: part.watchers,
                    users: part.users.clone(),
                    hooks: self.hooks(&channel),
                    done,
                });
                match self.requests.try_send(request) {
                    Ok(()) => {
                        let channel = channel.clone();
                        state.acks.push(Box::pin(async move {
                            Ack::Write(channel, part, acked(ack).await)
                        }));
                    }
                    // Behind or down: written with the next round.
                    Err(_) => merge(&mut unsent, &channel, part),
                }
            }
        }
        self.presence.mark_again(unsent);
        Ok(())
    }

    /// At a clean shutdown, once every connection is closed: writes what changed (the last
    /// members' leaves), waits for Redis to carry it out, and takes this process out of the
    /// registry, so its members are gone at once, not when survivors notice it stopped beating
    /// (nor never, with no survivor). What cannot be done in time is left to the survivors.
    async fn leave(&self, state: &mut KeeperState) {
        let done = async {
            self.write(state).await?;
            while let Some(ack) = state.acks.next().await {
                match ack {
                    Ack::Write(_, _, None) | Ack::Purge(_, _, None) => {
                        return Err("Redis did not carry out a write".to_string());
                    }
                    Ack::Write(channel, _, Some(changed))
                    | Ack::Purge(_, channel, Some(changed)) => {
                        self.report(&channel, changed);
                    }
                }
            }
            if !self.presence.channels().is_empty() {
                return Err("members are still here".into());
            }
            let (mut c, me, registry, mine) = self.connect().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("ZREM")
                .arg(&registry)
                .arg(&me)
                .cmd("DEL")
                .arg(&mine);
            pipe.query_async::<()>(&mut c)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(super::RESPONSE_TIMEOUT, done).await {
            Ok(Ok(())) => tracing::info!("bridge: this process's presence is gone from Redis"),
            Ok(Err(why)) => {
                tracing::warn!("bridge: presence left to the other processes to purge: {why}");
            }
            Err(_) => {
                tracing::warn!("bridge: presence left to the other processes to purge: no answer")
            }
        }
    }

    /// Takes out of this process's set the channels whose members here are all gone (written
    /// to Redis, acknowledged) and have none again: what a process registers follows what it
    /// holds, so its set does not grow with every channel it ever had. Runs before any channel
    /// is added again (both in [`write`](Self::write), one after the other), so a channel
    /// never has members in Redis while missing from the set.
    async fn unregister(
        &self,
        changes: &crate::presence::Changes,
        state: &mut KeeperState,
    ) -> Result<(), String> {
        let gone: Vec<Channel> = std::mem::take(&mut state.leaving)
            .into_iter()
            .filter(|c| !changes.contains_key(c) && !self.presence.holds(c))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let (mut c, _, _, mine) = self.connect().await?;
        let mut cmd = redis::cmd("SREM");
        cmd.arg(&mine)
            .arg(gone.iter().map(Channel::as_str).collect::<Vec<_>>());
        let call = cmd.query_async::<i64>(&mut c);
        match tokio::time::timeout(super::RESPONSE_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                for channel in &gone {
                    state.registered.remove(channel);
                }
                Ok(())
            }
            failed => {
                state.leaving.extend(gone);
                Err(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".into(),
                })
            }
        }
    }

    /// Sends the purges due, without waiting (a full queue keeps them for the next beat).
    fn purge(&self, state: &mut KeeperState) {
        for (instance, channel) in std::mem::take(&mut state.purges) {
            let (done, ack) = oneshot::channel();
            let request = Request::Presence(PresenceRequest::Purge {
                channel: channel.clone(),
                instance: instance.clone(),
                hooks: self.hooks(&channel),
                done,
            });
            match self.requests.try_send(request) {
                Ok(()) => state.acks.push(Box::pin(async move {
                    Ack::Purge(instance, channel, acked(ack).await)
                })),
                Err(_) => state.purges.push((instance, channel)),
            }
        }
    }

    /// The registry's connection, this process's instance, the registry and this process's set.
    async fn connect(&self) -> Result<(MultiplexedConnection, String, String, String), String> {
        let me = format!("{:x}", self.instance);
        let (registry, mine) = self.names.presence_registry(&me);
        Ok((self.registry.conn().await?, me, registry, mine))
    }

    /// Beats, and adds `channels` to this process's set. True if the registry did not have
    /// this process (its first beat, or survivors purged it).
    async fn register(&self, has_channels: bool, channels: &[String]) -> Result<bool, String> {
        let (mut c, me, registry, mine) = self.connect().await?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BEAT)
            .arg(2)
            .arg(&registry)
            .arg(&mine)
            .arg(&me)
            .arg(if has_channels { "1" } else { "0" })
            .arg(channels);
        let call = cmd.query_async::<i64>(&mut c);
        let added = tokio::time::timeout(super::RESPONSE_TIMEOUT, call)
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(added == 1)
    }

    /// After a beat: if the registry did not have this process although it had beaten before,
    /// survivors took it for dead (it could not beat for a while) and purged its members:
    /// they are written again, and once more after the purges have run.
    fn registered(&self, added: bool, state: &mut KeeperState) {
        if added && std::mem::replace(&mut state.beaten, true) {
            tracing::warn!(
                "bridge: this process's presence was purged (it could not reach Redis in time); \
                 writing it again"
            );
            state.registered.clear();
            self.presence.mark_all();
            state.remark_at = Some(tokio::time::Instant::now() + BEAT_EVERY * 2);
        }
    }

    /// Says this process is alive; takes the dead out, their purges due.
    async fn beat(&self, state: &mut KeeperState) -> Result<(), String> {
        let added = self.register(!state.registered.is_empty(), &[]).await?;
        self.registered(added, state);
        let (mut c, _, registry, _) = self.connect().await?;
        let (_, sets) = self.names.presence_registry("");
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DEAD)
            .arg(1)
            .arg(&registry)
            .arg(DEAD_AFTER.as_millis() as u64)
            .arg(&sets);
        let call = cmd.query_async::<Vec<String>>(&mut c);
        let dead = tokio::time::timeout(super::RESPONSE_TIMEOUT, call)
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        let mut rest = dead.into_iter();
        while let (Some(instance), Some(n)) = (rest.next(), rest.next()) {
            let n: usize = n.parse().unwrap_or(0);
            tracing::info!(
                instance,
                channels = n,
                "bridge: purging the presence of a process that stopped beating"
            );
            for channel in rest.by_ref().take(n) {
                if let Ok(channel) = Channel::new(&channel) {
                    state.purges.push((instance.clone(), channel));
                }
            }
        }
        Ok(())
    }
}

/// What the keeper remembers between rounds.
#[derive(Default)]
struct KeeperState {
    /// Channels this process is registered in (so survivors can purge them if it dies).
    registered: HashSet<Channel>,
    /// Registered channels whose members here are gone from Redis: to leave the set.
    leaving: HashSet<Channel>,
    /// Writes and purges on their way.
    acks: Acks,
    /// Purges of dead processes still to send.
    purges: Vec<(String, Channel)>,
    /// The bridge's reconnections seen so far.
    reconnects: u64,
    /// This process has beaten before.
    beaten: bool,
    /// When to write everything again (after this process was purged).
    remark_at: Option<tokio::time::Instant>,
}

fn merge(changes: &mut crate::presence::Changes, channel: &Channel, part: ChannelChanges) {
    let entry = changes.entry(channel.clone()).or_default();
    entry.watchers = entry.watchers.or(part.watchers);
    entry.users.extend(part.users);
}
