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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::cluster::Deployment;
use super::wire::{self, Names};
use super::Request;
use crate::presence::{Count, Member, Page, Presence};
use crate::protocol::{Channel, UserId};

pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
pub const DEAD_AFTER: Duration = Duration::from_secs(6);
/// Most users in one write script call.
const PER_CALL: usize = 1000;

/// Sets one user's count for this process and keeps the totals, publishing `join`/`leave`
/// while some subscription in the fleet receives them (KEYS[4] counts those).
const CHANGE: &str = r#"
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
  redis.call('HINCRBY', KEYS[2], '', new - total)
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
  if count ~= had then redis.call('INCRBY', KEYS[4], count - had) end
end
"#;

/// KEYS: p, q, z, w. ARGV: instance, Redis channel, wire header, PUBLISH or SPUBLISH, channel
/// name, watchers here ('' if unchanged), then (user, count here, info) for each user.
pub fn write_script() -> String {
    format!(
        "{CHANGE}{WATCHERS}\nif ARGV[6] ~= '' then watchers(tonumber(ARGV[6])) end\n\
         for i = 7, #ARGV, 3 do change(ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2]) end\nreturn 1"
    )
}

/// KEYS: p, q, z, w. ARGV: the dead instance, Redis channel, wire header, publish verb,
/// channel name. Takes every member of that instance away (their `leave`s are sent while
/// others still watch), then its watchers.
pub fn purge_script() -> String {
    format!(
        "{CHANGE}{WATCHERS}\nlocal prefix = ARGV[1] .. '|'\nlocal fields = redis.call('HGETALL', KEYS[1])\n\
         for i = 1, #fields, 2 do\n  local user = string.sub(fields[i], #prefix + 1)\n  \
         if string.sub(fields[i], 1, #prefix) == prefix and user ~= '' then change(user, 0, '') end\n\
         end\nwatchers(0)\nreturn 1"
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
const BEAT: &str = r"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
if #ARGV > 1 then redis.call('SADD', KEYS[2], unpack(ARGV, 2)) end
return 1";

/// Takes out of the registry the instances silent for ARGV[1] ms, and returns them.
const DEAD: &str = r"
local t = redis.call('TIME')
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #dead > 0 then redis.call('ZREM', KEYS[1], unpack(dead)) end
return dead";

/// What the publisher does for presence.
pub enum PresenceRequest {
    /// This process's counts (0: gone) of some users of a channel.
    Write {
        channel: Channel,
        /// This process's watchers of the channel, if that changed.
        watchers: Option<u32>,
        users: Vec<(UserId, u32, Option<Arc<str>>)>,
    },
    /// Takes a dead instance's members of a channel away.
    Purge { channel: Channel, instance: String },
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
        let topic = names.topic(&crate::routes::Topic::Channel(channel.clone()));
        let header = wire::presence_header(instance);
        match self {
            PresenceRequest::Write {
                users, watchers, ..
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
                ];
                for ((user, _, info), count) in users.iter().zip(&counts) {
                    args.push(user.as_str().as_bytes());
                    args.push(count.as_bytes());
                    args.push(info.as_deref().unwrap_or("").as_bytes());
                }
                super::pubsub::encode(out, &args);
            }
            PresenceRequest::Purge { instance: dead, .. } => {
                let args: [&[u8]; 12] = [
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
            PresenceRequest::Write { .. } | PresenceRequest::Purge { .. } => {}
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
    pub deployment: Deployment,
    pub map: tokio::sync::watch::Receiver<Arc<super::cluster::Topology>>,
    pub names: Names,
    pub instance: u64,
    pub metrics: Arc<crate::metrics::BridgeMetrics>,
    pub shutdown: CancellationToken,
}

impl Keeper {
    pub async fn run(self) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut beat = tokio::time::interval(BEAT_EVERY);
        let mut was_up = false;
        let mut registry: Option<redis::aio::MultiplexedConnection> = None;
        // Channels this process is registered in (so survivors can purge them if it dies).
        let mut registered = HashSet::new();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = flush.tick() => {
                    let up = self.metrics.publish_up.load(std::sync::atomic::Ordering::Relaxed);
                    if up && !was_up {
                        // Redis may have lost what it was told, or never got it.
                        registered.clear();
                        self.presence.mark_all();
                    }
                    was_up = up;
                    if let Err(why) = self.write(&mut registry, &mut registered).await {
                        registry = None;
                        tracing::warn!("bridge: presence registry: {why}");
                    }
                }
                _ = beat.tick() => {
                    if let Err(why) = self.beat(&mut registry).await {
                        registry = None;
                        tracing::warn!("bridge: presence registry: {why}");
                    }
                }
            }
        }
    }

    /// Writes what changed here; a channel is registered first, so a process never has members
    /// in Redis that the survivors could not find to purge. What cannot be written now is
    /// written with the next round.
    async fn write(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        registered: &mut HashSet<Channel>,
    ) -> Result<(), String> {
        let changes = self.presence.take_changes();
        let new: Vec<String> = changes
            .keys()
            .filter(|c| !registered.contains(*c))
            .map(|c| c.as_str().to_string())
            .collect();
        if !new.is_empty() {
            if let Err(why) = self.register(conn, &new).await {
                self.presence.mark_again(changes);
                return Err(why);
            }
            registered.extend(changes.keys().cloned());
        }
        let mut unsent: crate::presence::Changes = HashMap::new();
        for (channel, c) in changes {
            let mut watchers = c.watchers;
            // A channel whose watchers changed and whose users did not is one call too.
            let chunks = c.users.chunks(PER_CALL).map(<[_]>::to_vec);
            for users in chunks.chain(c.users.is_empty().then(Vec::new)) {
                let request = Request::Presence(PresenceRequest::Write {
                    channel: channel.clone(),
                    watchers: watchers.take(),
                    users,
                });
                let refused = match unsent.is_empty() {
                    true => self
                        .requests
                        .try_send(request)
                        .err()
                        .map(|e| e.into_inner()),
                    false => Some(request),
                };
                // Behind or down: written with the next round.
                if let Some(Request::Presence(PresenceRequest::Write {
                    watchers, users, ..
                })) = refused
                {
                    let entry = unsent.entry(channel.clone()).or_default();
                    entry.watchers = entry.watchers.or(watchers);
                    entry.users.extend(users);
                }
            }
        }
        self.presence.mark_again(unsent);
        Ok(())
    }

    async fn connect(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
    ) -> Result<(String, String, String), String> {
        let me = format!("{:x}", self.instance);
        let (registry, mine) = self.names.presence_registry(&me);
        if conn.is_none() {
            let node = self
                .map
                .borrow()
                .node_of(&registry)
                .cloned()
                .ok_or("no master serves the registry's slot")?;
            let client = redis::Client::open(self.deployment.connection(&node))
                .map_err(|e| e.to_string())?;
            let c = tokio::time::timeout(
                super::RESPONSE_TIMEOUT,
                client.get_multiplexed_async_connection(),
            )
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
            *conn = Some(c);
        }
        Ok((me, registry, mine))
    }

    /// Beats, and adds `channels` to this process's set.
    async fn register(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        channels: &[String],
    ) -> Result<(), String> {
        let (me, registry, mine) = self.connect(conn).await?;
        let c = conn.as_mut().expect("connected above");
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BEAT)
            .arg(2)
            .arg(&registry)
            .arg(&mine)
            .arg(&me)
            .arg(channels);
        let call = cmd.query_async::<i64>(c);
        tokio::time::timeout(super::RESPONSE_TIMEOUT, call)
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Says this process is alive; takes the dead out and purges their members.
    async fn beat(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
    ) -> Result<(), String> {
        self.register(conn, &[]).await?;
        let (_, registry, _) = self.connect(conn).await?;
        let c = conn.as_mut().expect("connected above");
        let call = async {
            let window = DEAD_AFTER.as_millis() as u64;
            let dead: Vec<String> = redis::cmd("EVAL")
                .arg(DEAD)
                .arg(1)
                .arg(&registry)
                .arg(window)
                .query_async(c)
                .await?;
            let mut purges = Vec::new();
            for instance in dead {
                let (_, theirs) = self.names.presence_registry(&instance);
                let channels: Vec<String> =
                    redis::cmd("SMEMBERS").arg(&theirs).query_async(c).await?;
                redis::cmd("DEL").arg(&theirs).query_async::<()>(c).await?;
                tracing::info!(
                    instance,
                    channels = channels.len(),
                    "bridge: purging the presence of a process that stopped beating"
                );
                purges.push((instance, channels));
            }
            Ok::<_, redis::RedisError>(purges)
        };
        let purges = tokio::time::timeout(super::RESPONSE_TIMEOUT, call)
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        for (instance, channels) in purges {
            for channel in channels.iter().filter_map(|c| Channel::new(c).ok()) {
                let request = PresenceRequest::Purge {
                    channel,
                    instance: instance.clone(),
                };
                let _ = self.requests.send(Request::Presence(request)).await;
            }
        }
        Ok(())
    }
}
