//! History kept in Redis, so offsets are the same on every machine (PROTOCOL section 7).
//!
//! Each topic has two keys (see [`Names::history`](super::wire::Names::history)): a hash with
//! its epoch `e` and last offset `o`, and a stream of its kept messages, one entry per offset
//! (id `0-<offset>`, fields `t` = Redis time in ms, `d` = the JSON payload), trimmed to about
//! `--history-size` entries. A publish is one script call (or a part of one: a link's pipeline
//! carries its appends in one call) that takes the next offset, appends the message and
//! PUBLISHes it with its offset and epoch, atomically: every machine hears a topic's messages
//! in offset order, the publishing one included, which delivers its own messages when Redis
//! echoes them, not before (so two machines publishing to one topic cannot deliver in two
//! orders).
//!
//! The stream expires `--history-ttl` after its last message, the hash 10 × that after its last
//! message or read (2 × before its first message). An append pushes both back, by a tenth more
//! than the TTL, only when due: when it makes the stream (gone: expired, evicted, deleted;
//! `XADD NOMKSTREAM` says so), or once the time in the hash's `x` (set at each push, a tenth of
//! the TTL later) has passed, so the stream never has less than the TTL left. A read or a touch
//! keeps the position that tenth more too: most appends make no expiry call, and nothing is
//! kept less. A topic with a recipient on some machine is touched by that machine's bridge
//! every TTL, so its position lasts however quiet it is. A hash that is gone (expired, or a
//! Redis that lost its data) starts a new epoch.

use bytes::Bytes;

use super::wire;
use crate::history::Position;
use crate::history::Read;
use crate::protocol::Since;
use crate::protocol::{Frame, Target};

/// How much longer than the TTL a topic's position is remembered (as in the process).
pub const POSITION_MEMORY: u64 = 10;

/// The start of both scripts: where the topic stands, in `epoch`, and whether the data it was
/// written in is still this Redis's. A topic's hash keeps, beside its epoch `e` and last offset
/// `o`, the replication id `l` of the master that last wrote or read it. A Redis that may have
/// lost acknowledged writes always has another replication id than the one that took them: a
/// replica promoted in a failover gets a new one, and so does a Redis restarted from disk (an
/// RDB or AOF is no proof that it holds everything it acknowledged). So a hash whose `l` is not
/// the current master's moves to a new epoch before anything else is done with it, and its old
/// offsets can never be given out twice. Two exceptions keep what provably holds:
///
/// - a hash a slot move brought from another master of the cluster (`MIGRATE` moves it whole):
///   its `l` is the lineage of another master this machine is connected to now, and not the
///   one this master continued (which would be a failover, not a move);
/// - with `--history-ack-replicas`, a promoted replica continues the epoch of a hash written
///   by its old master (`l` is its `master_replid2`) if it was already running (by more than
///   5 s, for clocks that disagree a little) when the topic was last written (`t`, Redis time
///   in ms): then it held that write by replication, not from its own disk. `t` is written
///   only when every replica of the master had to confirm the write before anyone was told
///   of it, so whichever replica is promoted held it.
///
/// Arguments of `position`: the topic's position (the hash) and stream, the new epoch if one
/// is needed, this master's replication id, the one it continued (`master_replid2`, or empty),
/// the ms it started at, "1" in acknowledged mode, and the other masters' ids as `,id,id,`. It
/// returns the epoch, the last offset as Redis keeps it (a string), `t`, and `x`: when the
/// expiries are due to be pushed back (Redis time in ms). `x` is of the clock of the master
/// that wrote it, so a hash of another lineage forgets it: the next append pushes them back.
///
/// A new hash is written before the stream is deleted: Redis refuses a command that may grow
/// its memory past `maxmemory` only while a script has written nothing, and a `DEL` first
/// would let the rest of an append call past that limit.
///
/// The scripts keep numbers as the strings Redis gives them where they can: a Lua number
/// becomes a string through `printf("%.14g")`, and these conversions were ~11 % of Redis's CPU
/// in an append (`perf` of `redis-benchmark -P 64 EVALSHA`).
macro_rules! lineage {
    () => {
        r"
local function position(hash, stream, new, lineage, predecessor, started, acknowledged, others)
  local h = redis.call('HMGET', hash, 'e', 'l', 't', 'o', 'x')
  if not h[1] then
    redis.call('HSET', hash, 'e', new, 'l', lineage)
    redis.call('DEL', stream)
    return new, '0', false, false
  end
  local epoch = h[1]
  if h[2] ~= lineage then
    local from = h[2] or ''
    local continued = acknowledged == '1' and from == predecessor
      and tonumber(h[3] or '0') > tonumber(started) + 5000
    local moved = from ~= '' and from ~= predecessor
      and string.find(others, ',' .. from .. ',', 1, true) ~= nil
    if not (continued or moved) then
      epoch = new
      redis.call('HSET', hash, 'e', epoch)
    end
    redis.call('HSET', hash, 'l', lineage)
    redis.call('HDEL', hash, 'x')
    h[5] = false
  end
  return epoch, h[4] or '0', h[3], h[5]
end
"
    };
}

/// Takes the next offset of each message's topic, keeps the message, publishes it. One call
/// appends a run of messages (a publishing link sends a pipeline's appends in one, in order):
/// what a call costs Redis beside its commands (its arguments made Lua strings, the Lua call,
/// its garbage) was more than the commands themselves (`perf` of `redis-server` at the fleet
/// load, one message a call: 48 % of its CPU against 30 %).
///
/// KEYS, for each message: its topic's position and stream, then its idempotency key when it
/// has one (in the topic's slot). ARGV: the epoch to start if a topic needs a new one, size, TTL
/// in ms, how to publish (`PUBLISH`, or `SPUBLISH` on a cluster: the channel shares the keys'
/// slot; empty in acknowledged mode, where the bridge publishes once replicas hold the
/// message), the last five arguments of `position` (see [`lineage!`]), "1" when every replica
/// of this master must confirm the messages (acknowledged mode with no more replicas than it
/// waits for: only then may a promoted replica continue the topic, so only then is `t`
/// written, and any other append clears it), `--idempotency-ttl` in ms, the wire header; then
/// for each message: its channel, its payload, and how many keys it has (2, or 3 with an
/// idempotency key).
///
/// Returns one answer per message, in order: `<offset> <epoch>`; for a key already kept, what
/// it kept (with ` p` when the script published that first append) followed by ` again`, and
/// nothing appended. A message whose commands failed (an `OOM`, a key of another type) is
/// answered with Redis's error text, which starts with a letter, and the others are still
/// appended: a message is answered "taken" only if it was, and a failure is no reason to
/// refuse the rest. All the messages of a call share one `TIME`, and a topic's position is
/// read once a call: what the call writes to it, it keeps track of.
pub const APPEND: &str = concat!(
    lineage!(),
    r"
local t = redis.call('TIME')
local ms = t[1] .. string.sub('00000' .. t[2], -6, -4)
local now = tonumber(ms)
local ttl = tonumber(ARGV[3])
local topics = {}
local function append(hash, stream, once, channel, payload)
  if once then
    local done = redis.call('GET', once)
    if done then return done .. ' again' end
  end
  local topic = topics[hash]
  if not topic then
    local epoch, _, written, due = position(hash, stream, ARGV[1], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
    topic = {epoch = epoch, written = written, due = due}
    topics[hash] = topic
  end
  local epoch = topic.epoch
  local offset = string.format('%d', redis.call('HINCRBY', hash, 'o', '1'))
  local id = '0-' .. offset
  local made = not redis.call('XADD', stream, 'NOMKSTREAM', 'MAXLEN', '~', ARGV[2], id, 't', ms, 'd', payload)
  if made then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], id, 't', ms, 'd', payload)
  end
  if made or not topic.due or tonumber(topic.due) <= now then
    redis.call('PEXPIRE', stream, ttl + math.floor(ttl / 10))
    redis.call('PEXPIRE', hash, ttl * 10 + math.floor(ttl / 10))
    topic.due = now + math.floor(ttl / 10)
    redis.call('HSET', hash, 'x', string.format('%d', topic.due))
  end
  if ARGV[10] == '1' then
    if topic.written ~= ms then
      redis.call('HSET', hash, 't', ms)
      topic.written = ms
    end
  elseif topic.written then
    redis.call('HDEL', hash, 't')
    topic.written = false
  end
  local published = ''
  if ARGV[4] ~= '' then
    redis.call(ARGV[4], channel, ARGV[12] .. offset .. ' ' .. epoch .. ' ' .. payload)
    published = ' p'
  end
  if once then
    redis.call('SET', once, offset .. ' ' .. epoch .. published, 'PX', ARGV[11])
  end
  return offset .. ' ' .. epoch
end
local out, k = {}, 1
for i = 13, #ARGV, 3 do
  local once = nil
  if ARGV[i + 2] == '3' then once = KEYS[k + 2] end
  local ok, answer = pcall(append, KEYS[k], KEYS[k + 1], once, ARGV[i], ARGV[i + 1])
  if not ok then
    if type(answer) == 'table' then answer = answer.err end
    answer = tostring(answer)
  end
  out[#out + 1] = answer
  k = k + tonumber(ARGV[i + 2])
end
return out"
);

/// Where a topic stands and, for a `since`, what was missed. KEYS: position, stream. ARGV:
/// since offset (empty for none), since epoch, epoch if a new one is needed, TTL in ms, "1"
/// when the `since` is a machine's own (the last offset Redis relayed to it), then the last
/// five arguments of `position` (see [`lineage!`]). Returns epoch, last offset, then with a `since`: "1" and the missed
/// payloads in order, or "0" when the history cannot fill the gap.
///
/// A position nobody published to yet is kept 2 × the TTL from its last read, not 10 ×:
/// forgetting it costs nothing (offset 0 under a fresh epoch), and a subscribe alone must not
/// make Redis hold a key for long. While a machine has a recipient, its touches keep it.
///
/// A machine's `since` beyond the last offset in the same epoch means Redis came back with
/// less than it had relayed: its offsets would be given out again, so the topic moves to a new
/// epoch (offsets go on from the last one). A client's `since` is not trusted that far: it
/// only gets "0".
pub const READ: &str = concat!(
    lineage!(),
    r"
local epoch, o = position(KEYS[1], KEYS[2], ARGV[3], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
local last = tonumber(o)
local memory = ARGV[4] * 10 + math.floor(ARGV[4] / 10)
if last == 0 then memory = ARGV[4] * 2 end
redis.call('PEXPIRE', KEYS[1], memory)
local out = {epoch, o}
if ARGV[1] == '' then return out end
local since = tonumber(ARGV[1])
if ARGV[2] ~= epoch or since == nil or since > last then
  if ARGV[5] == '1' and ARGV[2] == epoch and since ~= nil and since > last then
    redis.call('HSET', KEYS[1], 'e', ARGV[3])
    out[1] = ARGV[3]
  end
  out[3] = '0'
  return out
end
out[3] = '1'
if since == last then return out end
local first = '0-' .. (since + 1)
local entries = redis.call('XRANGE', KEYS[2], first, '+')
local t = redis.call('TIME')
local oldest = t[1] * 1000 + math.floor(t[2] / 1000) - ARGV[4]
if #entries ~= last - since or entries[1][1] ~= first or tonumber(entries[1][2][2]) < oldest then
  out[3] = '0'
  return out
end
for i = 1, #entries do out[3 + i] = entries[i][2][4] end
return out"
);

/// Which data a publisher link writes in: read from `INFO` when it connects, again every
/// second and after any answer that says the master changed. The scripts compare it with the
/// one each topic was last written in ([`lineage!`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// `master_replid`: changes at every failover and restart.
    pub replid: String,
    /// `master_replid2`, when Redis says it continued that data (`second_repl_offset` ≥ 0).
    pub predecessor: Option<String>,
    /// When this Redis started, in its own clock (ms), rounded up to within a second.
    pub started_ms: u64,
    /// Only a master's lineage may be written with.
    pub master: bool,
    /// `connected_slaves`: replicas of this master now.
    pub replicas: u32,
}

impl Lineage {
    /// Reads the text of `INFO server` and `INFO replication`; `None` without a replication id.
    pub fn parse(info: &str) -> Option<Lineage> {
        let field = |name: &str| super::pubsub::info_field(info, name);
        let replid = field("master_replid")?.to_string();
        let second: i64 = field("second_repl_offset")
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        let predecessor = field("master_replid2")
            .filter(|p| second >= 0 && p.bytes().any(|b| b != b'0'))
            .map(str::to_string);
        let now_us: u64 = field("server_time_usec")?.parse().ok()?;
        let uptime_s: u64 = field("uptime_in_seconds")?.parse().ok()?;
        // Uptime is whole seconds, rounded down: this is up to one later than the start, the
        // safe side (a write in that second is not taken for one the replica held).
        let started_ms = (now_us / 1000).saturating_sub(uptime_s * 1000);
        Some(Lineage {
            replid,
            predecessor,
            started_ms,
            master: field("role") == Some("master"),
            replicas: field("connected_slaves")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// A position whose epoch came from Redis; its generation is derived from the epoch, so
/// every worker and the bridge agree on it without sharing state.
pub fn position(epoch: &str, offset: u64) -> Position {
    let digits = &epoch[..epoch.len().min(16)];
    let generation = u64::from_str_radix(digits, 16).unwrap_or(0).max(1);
    Position {
        epoch: epoch.into(),
        generation,
        offset,
    }
}

/// Reads the reply of [`READ`] for `target`; `None` if it is not one (counted as malformed by
/// the caller). A kept payload that is not a valid message makes the gap unrecoverable.
pub fn parse_read(
    reply: &[Option<Bytes>],
    target: &Target,
    since: Option<&Since>,
    max_message_bytes: usize,
) -> Option<Read> {
    let text = |i: usize| {
        reply
            .get(i)?
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    };
    let epoch = text(0).filter(|e| wire::is_epoch(e))?;
    let last: u64 = text(1)?.parse().ok()?;
    let position = position(epoch, last);
    let (Some(since), Some(flag)) = (since, text(2)) else {
        return Some(Read {
            position,
            recovered: since.map(|_| false),
            missed: Vec::new(),
        });
    };
    let payloads = &reply[3..];
    let missed: Option<Vec<Frame>> = (flag == "1")
        .then(|| {
            payloads
                .iter()
                .zip(since.offset + 1..)
                .map(|(p, offset)| wire::frame_at(target, p.as_deref()?, offset, max_message_bytes))
                .collect()
        })
        .flatten();
    Some(match missed {
        Some(missed) => Read {
            position,
            recovered: Some(true),
            missed,
        },
        None => Read {
            position,
            recovered: Some(false),
            missed: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Channel;

    #[test]
    fn a_lineage_is_read_from_info() {
        let info = "# Server\r\nuptime_in_seconds:10\r\nserver_time_usec:50000000\r\n\
                    # Replication\r\nrole:master\r\nconnected_slaves:2\r\nmaster_replid:abc\r\n\
                    master_replid2:def\r\nsecond_repl_offset:51\r\n";
        let l = Lineage::parse(info).unwrap();
        assert_eq!(l.replid, "abc");
        assert_eq!(l.predecessor.as_deref(), Some("def"));
        assert_eq!(l.started_ms, 40_000);
        assert!(l.master);
        assert_eq!(l.replicas, 2);
        let fresh = info
            .replace("master_replid2:def", "master_replid2:0000")
            .replace("second_repl_offset:51", "second_repl_offset:-1");
        assert_eq!(Lineage::parse(&fresh).unwrap().predecessor, None);
        let replica = info.replace("role:master", "role:slave");
        assert!(!Lineage::parse(&replica).unwrap().master);
        assert!(Lineage::parse("role:master\r\n").is_none());
    }

    fn bulks(parts: &[&str]) -> Vec<Option<Bytes>> {
        parts
            .iter()
            .map(|p| Some(Bytes::copy_from_slice(p.as_bytes())))
            .collect()
    }

    #[test]
    fn a_read_reply_becomes_frames_at_their_offsets() {
        let t = Target::Channel(Channel::new("news").unwrap());
        let since = Since {
            offset: 4,
            epoch: "0a".into(),
        };
        let r = parse_read(&bulks(&["0a", "6", "1", "5", "[6]"]), &t, Some(&since), 100).unwrap();
        assert_eq!(r.position, position("0a", 6));
        assert_eq!(r.recovered, Some(true));
        assert_eq!(
            r.missed,
            [
                Frame::message_at(&t, b"5", 5),
                Frame::message_at(&t, b"[6]", 6)
            ]
        );
        let lost = parse_read(&bulks(&["0a", "6", "0"]), &t, Some(&since), 100).unwrap();
        assert_eq!((lost.recovered, lost.missed.len()), (Some(false), 0));
        let broken = parse_read(&bulks(&["0a", "6", "1", "5", "{"]), &t, Some(&since), 100);
        assert_eq!(broken.unwrap().recovered, Some(false));
        let plain = parse_read(&bulks(&["0a", "6"]), &t, None, 100).unwrap();
        assert_eq!(plain.recovered, None);
        assert!(parse_read(&bulks(&["not hex", "6"]), &t, None, 100).is_none());
        assert!(parse_read(&bulks(&["0a", "x"]), &t, None, 100).is_none());
    }

    #[test]
    fn generations_follow_epochs() {
        assert_eq!(position("00", 1).generation, 1);
        assert_ne!(position("0a", 1).generation, position("0b", 1).generation);
        assert_eq!(position("0a", 1).generation, position("0a", 9).generation);
    }
}
