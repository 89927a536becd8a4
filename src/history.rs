//! History of topics (a channel, or a user's direct messages) for recovery, PROTOCOL section 7,
//! kept in this process: one machine, no Redis.
//!
//! Each topic has an epoch (a random name for its sequence) and offsets 1, 2, 3, … one per
//! message, with the last `--history-size` messages no older than `--history-ttl` kept. A
//! topic's position (epoch and last offset) is remembered for 10 × the TTL after its last
//! message, and for as long as it has a recipient, so a client that missed nothing is
//! recovered that long; after that, or after a restart, the topic starts again under a new
//! epoch. A topic nobody published to is forgotten with its last recipient (within a second).
//!
//! Ordering: [`History::lock`] hands out the lock of the topic's shard. The publisher holds it
//! while it appends and queues the message on the bus; a recipient's start reads the topic
//! ([`History::read`]) only after the hub holds the topic's live messages for it, so every
//! message is either in what it read or held for it, and `merge` drops what it has twice.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::{random_hex, Frame, Since, Topic};
use crate::routes::Routes;

const SHARDS: usize = 16;
/// How much longer than the TTL a topic's position is remembered.
const POSITION_MEMORY: u32 = 10;

/// Where a topic stands: its epoch and its last offset (0 before the first message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    /// The epoch as a number, unique in this process: cheap to compare per recipient.
    pub generation: u64,
    pub offset: u64,
}

/// What a read of a topic's history found, wherever the history is kept.
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    pub position: Position,
    /// With a `since`: whether everything after it was kept (then `missed` holds it).
    pub recovered: Option<bool>,
    /// The missed messages, as the frames sent live.
    pub missed: Vec<Frame>,
}

/// What a client that asks to resume gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Every message after its offset, in order (possibly none), as the frames sent live.
    Recovered(Vec<Frame>),
    /// The history cannot fill the gap (another epoch, too old, evicted): reload.
    Lost,
}

struct TopicHistory {
    epoch: Arc<str>,
    generation: u64,
    last: u64,
    /// (offset, accepted at, the frame as it was sent), oldest first, at most `size`. A replay
    /// sends the same shared bytes again: nothing is copied or encoded twice.
    kept: VecDeque<(u64, Instant, Frame)>,
    last_message: Instant,
}

pub struct History {
    size: usize,
    ttl: Duration,
    /// A topic with a recipient keeps its position however quiet it is: forgetting it would
    /// announce a gap (`recovered: false`) where nothing was lost.
    routes: Arc<Routes>,
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// Frame bytes kept, for `/metrics`.
    bytes: AtomicI64,
    /// Topics whose position is remembered, for `/metrics`.
    topics: AtomicI64,
    /// Numbers the epochs.
    generations: AtomicU64,
    /// Messages dropped for `--history-max-bytes`, for `/metrics`.
    pub evicted: AtomicU64,
    /// Begins every epoch this process makes, so it knows its own (see [`Locked::since`]).
    run: String,
    /// `--history-max-bytes`: past it, the oldest messages go (see [`Locked::append`]).
    max_bytes: Option<usize>,
}

#[derive(Default)]
struct Shard {
    topics: HashMap<Topic, TopicHistory>,
    /// When expired entries were last swept: at most once a second, not on every operation...
    swept: Option<Instant>,
    /// ... unless the shard doubled since (positions of a subscribe storm), so what it holds
    /// stays within twice what it should (sweeps stay O(1) a use, amortised).
    kept_after_sweep: usize,
}

/// How often a shard is swept for expired messages and forgotten positions.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A topic's shard, locked: see the module's note on ordering.
pub struct Locked<'a> {
    history: &'a History,
    shard: MutexGuard<'a, Shard>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (bytes, topics) = self.usage();
        write!(
            f,
            "History {{ size: {}, ttl: {:?}, bytes: {bytes}, topics: {topics} }}",
            self.size, self.ttl
        )
    }
}

impl History {
    pub fn new(size: usize, ttl: Duration, routes: Arc<Routes>) -> Self {
        History {
            size,
            ttl,
            routes,
            hasher: RandomState::new(),
            shards: Default::default(),
            bytes: AtomicI64::new(0),
            topics: AtomicI64::new(0),
            generations: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
            run: random_hex(3),
            max_bytes: None,
        }
    }

    /// At most `bytes` of messages kept in all: past it, the oldest go first.
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Locks the shard of `topic`. Never held across an `.await`.
    pub fn lock(&self, topic: &Topic) -> Locked<'_> {
        let i = (self.hasher.hash_one(topic) as usize) % SHARDS;
        let shard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
        Locked {
            history: self,
            shard,
        }
    }

    /// A new epoch: this process's run, the unix second it was made, and its generation
    /// (unique in the process).
    fn new_epoch(&self, generation: u64) -> Arc<str> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{}{secs:08x}{generation:x}", self.run).into()
    }

    /// `epoch` was made by this process less than 10 × the TTL ago.
    fn is_recent_epoch(&self, epoch: &str) -> bool {
        let Some(secs) = epoch
            .strip_prefix(self.run.as_str())
            .and_then(|t| t.get(..8))
            .and_then(|t| u64::from_str_radix(t, 16).ok())
        else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(secs) < (self.ttl * POSITION_MEMORY).as_secs()
    }

    /// Where `topic` stands, and with `since` what was missed after it.
    pub fn read(&self, topic: &Topic, since: Option<&Since>) -> Read {
        let now = Instant::now();
        let mut locked = self.lock(topic);
        let position = locked.position(topic, now);
        let (recovered, missed) = match since.map(|s| locked.since(topic, s, now)) {
            None => (None, Vec::new()),
            Some(Recovery::Recovered(missed)) => (Some(true), missed),
            Some(Recovery::Lost) => (Some(false), Vec::new()),
        };
        Read {
            position,
            recovered,
            missed,
        }
    }

    /// Frame bytes kept and topics remembered.
    pub fn usage(&self) -> (i64, i64) {
        (self.bytes.load(Relaxed), self.topics.load(Relaxed))
    }
}

impl Locked<'_> {
    /// Appends a message: `frame` makes its frame for the offset it gets. Returns where the
    /// topic stands with it (its offset is the message's) and the frame.
    pub fn append(
        &mut self,
        topic: &Topic,
        frame: impl FnOnce(u64) -> Frame,
        now: Instant,
    ) -> (Position, Frame) {
        let h = self.history;
        let t = self.topic(topic, now);
        t.last += 1;
        t.last_message = now;
        let frame = frame(t.last);
        h.bytes.fetch_add(frame.bytes().len() as i64, Relaxed);
        t.kept.push_back((t.last, now, frame.clone()));
        while t.kept.len() > h.size {
            if let Some((_, _, f)) = t.kept.pop_front() {
                h.bytes.fetch_sub(f.bytes().len() as i64, Relaxed);
            }
        }
        let position = t.position();
        self.evict_over_cap();
        (position, frame)
    }

    /// Past `--history-max-bytes`, drops this shard's oldest messages (oldest first, across its
    /// topics) until the whole history is 5 % under the cap. A resume that needed one of them
    /// is `recovered: false`, as for a message past the TTL. Only the shard at hand is touched
    /// (its lock is held): a flood is paid for where it lands.
    fn evict_over_cap(&mut self) {
        let h = self.history;
        let Some(max) = h.max_bytes else {
            return;
        };
        if h.bytes.load(Relaxed) <= max as i64 {
            return;
        }
        let target = (max - max / 20) as i64;
        let topics: Vec<Topic> = self.shard.topics.keys().cloned().collect();
        let mut fronts: std::collections::BinaryHeap<_> = topics
            .iter()
            .enumerate()
            .filter_map(|(i, topic)| {
                let (_, at, _) = self.shard.topics[topic].kept.front()?;
                Some(std::cmp::Reverse((*at, i)))
            })
            .collect();
        while h.bytes.load(Relaxed) > target {
            let Some(std::cmp::Reverse((_, i))) = fronts.pop() else {
                return;
            };
            let Some(t) = self.shard.topics.get_mut(&topics[i]) else {
                continue;
            };
            if let Some((_, _, f)) = t.kept.pop_front() {
                h.bytes.fetch_sub(f.bytes().len() as i64, Relaxed);
                h.evicted.fetch_add(1, Relaxed);
            }
            if let Some((_, at, _)) = t.kept.front() {
                fronts.push(std::cmp::Reverse((*at, i)));
            }
        }
    }

    /// Where `topic` stands now; a topic never seen (or forgotten) starts a new epoch at 0.
    pub fn position(&mut self, topic: &Topic, now: Instant) -> Position {
        self.topic(topic, now).position()
    }

    /// The topic's history, made if it has none, its expired messages dropped.
    fn topic(&mut self, topic: &Topic, now: Instant) -> &mut TopicHistory {
        let h = self.history;
        self.evict_expired(now);
        let t = self.shard.topics.entry(topic.clone()).or_insert_with(|| {
            h.topics.fetch_add(1, Relaxed);
            TopicHistory::new(h, now)
        });
        t.drop_expired(h, now);
        t
    }

    /// What a client that has everything up to `since` missed, if the history still has all
    /// of it.
    ///
    /// A client that saw nothing (offset 0) of a topic nobody published to since is recovered
    /// even though the topic's position was forgotten meanwhile (it is, with its last
    /// recipient): if its epoch is this process's and younger than 10 × the TTL, no sequence
    /// with messages can have come and gone since (one is remembered that long).
    pub fn since(&mut self, topic: &Topic, since: &Since, now: Instant) -> Recovery {
        let ttl = self.history.ttl;
        let Some(t) = self.shard.topics.get(topic) else {
            return Recovery::Lost;
        };
        if since.offset == 0 && t.last == 0 && self.history.is_recent_epoch(&since.epoch) {
            return Recovery::Recovered(Vec::new());
        }
        if *since.epoch != *t.epoch || since.offset > t.last {
            return Recovery::Lost;
        }
        let missed: Vec<_> = t
            .kept
            .iter()
            .filter(|(offset, _, _)| *offset > since.offset)
            .collect();
        // Every offset after `since` must be kept, and none older than the TTL.
        let complete = missed.len() as u64 == t.last - since.offset;
        let fresh = missed
            .iter()
            .all(|(_, at, _)| now.duration_since(*at) <= ttl);
        match complete && fresh {
            true => Recovery::Recovered(missed.into_iter().map(|(_, _, f)| f.clone()).collect()),
            false => Recovery::Lost,
        }
    }

    /// Drops messages older than the TTL and positions older than 10 × the TTL, in this shard;
    /// the whole shard at most once a second or when it doubled (the topic at hand is checked
    /// on every use).
    fn evict_expired(&mut self, now: Instant) {
        let doubled = self.shard.topics.len() > 2 * self.shard.kept_after_sweep.max(64);
        if !doubled
            && self
                .shard
                .swept
                .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.shard.swept = Some(now);
        let h = self.history;
        let ttl = h.ttl;
        self.shard.topics.retain(|topic, t| {
            t.drop_expired(h, now);
            // A position nobody published to is forgotten with its last recipient: offset 0
            // under a fresh epoch says the same, and a subscribe alone holds nothing.
            let remembered = t.last > 0
                && now.saturating_duration_since(t.last_message) <= ttl * POSITION_MEMORY;
            let keep = remembered || !h.routes.workers(topic).is_empty();
            if !keep {
                h.topics.fetch_sub(1, Relaxed);
            }
            keep
        });
        let shard = &mut *self.shard;
        shard.kept_after_sweep = shard.topics.len();
        if shard.topics.capacity() > 256 && shard.topics.len() < shard.topics.capacity() / 4 {
            shard.topics.shrink_to_fit();
        }
    }
}

impl TopicHistory {
    fn new(h: &History, now: Instant) -> Self {
        let generation = h.generations.fetch_add(1, Relaxed);
        TopicHistory {
            epoch: h.new_epoch(generation),
            generation,
            last: 0,
            kept: VecDeque::new(),
            last_message: now,
        }
    }

    /// Drops this topic's messages older than the TTL.
    fn drop_expired(&mut self, h: &History, now: Instant) {
        while self
            .kept
            .front()
            .is_some_and(|(_, at, _)| now.saturating_duration_since(*at) > h.ttl)
        {
            if let Some((_, _, f)) = self.kept.pop_front() {
                h.bytes.fetch_sub(f.bytes().len() as i64, Relaxed);
            }
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            generation: self.generation,
            offset: self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Channel;

    fn topic() -> Topic {
        Topic::Channel(Channel::new("news").unwrap())
    }

    fn frame(offset: u64, payload: &str) -> Frame {
        let target = crate::protocol::Target::Channel(Channel::new("news").unwrap());
        Frame::message_at(&target, payload.as_bytes(), offset)
    }

    #[test]
    fn offsets_count_up_and_a_resume_gets_what_was_missed() {
        let h = History::new(3, Duration::from_secs(60), Arc::new(Routes::new(1, None)));
        let t0 = Instant::now();
        let mut l = h.lock(&topic());
        let start = l.position(&topic(), t0);
        assert_eq!(start.offset, 0);
        for n in 1..=5u64 {
            let (p, _) = l.append(&topic(), |o| frame(o, &n.to_string()), t0);
            assert_eq!((p.offset, p.generation), (n, start.generation));
        }
        let at = |offset| Since {
            offset,
            epoch: start.epoch.to_string(),
        };
        let Recovery::Recovered(missed) = l.since(&topic(), &at(3), t0) else {
            panic!("3 is still covered");
        };
        assert_eq!(missed, [frame(4, "4"), frame(5, "5")]);
        assert_eq!(l.since(&topic(), &at(5), t0), Recovery::Recovered(vec![]));
        // Only 3 kept: from 1, messages 2 is gone.
        assert_eq!(l.since(&topic(), &at(1), t0), Recovery::Lost);
        assert_eq!(l.since(&topic(), &at(6), t0), Recovery::Lost, "the future");
        let other = Since {
            offset: 3,
            epoch: "other".into(),
        };
        assert_eq!(l.since(&topic(), &other, t0), Recovery::Lost);
        let kept: usize = (3..=5u64)
            .map(|n| frame(n, &n.to_string()).bytes().len())
            .sum();
        assert_eq!(h.usage(), (kept as i64, 1));
    }

    #[test]
    fn old_messages_expire_and_old_positions_are_forgotten() {
        let ttl = Duration::from_secs(10);
        let routes = Arc::new(Routes::new(1, None));
        let h = History::new(100, ttl, routes.clone());
        let t0 = Instant::now();
        let mut l = h.lock(&topic());
        l.append(&topic(), |o| frame(o, "1"), t0);
        let epoch = l.position(&topic(), t0).epoch;
        let since = Since {
            offset: 0,
            epoch: epoch.to_string(),
        };
        assert!(matches!(
            l.since(&topic(), &since, t0 + ttl),
            Recovery::Recovered(_)
        ));
        let later = t0 + ttl + Duration::from_secs(1);
        assert_eq!(l.since(&topic(), &since, later), Recovery::Lost, "too old");
        // Missed nothing: still recovered while the position is remembered.
        let all = Since {
            offset: 1,
            epoch: epoch.to_string(),
        };
        assert_eq!(l.since(&topic(), &all, later), Recovery::Recovered(vec![]));
        let forgotten = t0 + ttl * POSITION_MEMORY + Duration::from_secs(1);
        // While someone is subscribed, the position stays however quiet the topic is.
        routes.add(&topic(), crate::protocol::WorkerId(0));
        assert_eq!(l.position(&topic(), forgotten).epoch, epoch);
        routes.remove(&topic(), crate::protocol::WorkerId(0));
        let much_later = forgotten + SWEEP_EVERY;
        let fresh = l.position(&topic(), much_later);
        assert_ne!(fresh.epoch, epoch, "a new sequence has a new epoch");
        assert_eq!(fresh.offset, 0);
        assert_eq!(h.usage(), (0, 1));
    }

    /// A client that saw nothing of a topic nobody published to is recovered after the
    /// position was forgotten; once something was published, or from another process's epoch
    /// (a restart), it is not.
    #[test]
    fn a_client_that_saw_nothing_of_a_quiet_topic_is_recovered() {
        let routes = Arc::new(Routes::new(1, None));
        let h = History::new(100, Duration::from_secs(300), routes);
        let t0 = Instant::now();
        let first = h.lock(&topic()).position(&topic(), t0);
        let later = t0 + SWEEP_EVERY;
        let mut l = h.lock(&topic());
        l.evict_expired(later);
        assert!(!l.shard.topics.contains_key(&topic()), "forgotten");
        let now = l.position(&topic(), later);
        let saw_nothing = Since {
            offset: 0,
            epoch: first.epoch.to_string(),
        };
        assert_eq!(
            l.since(&topic(), &saw_nothing, later),
            Recovery::Recovered(vec![])
        );
        assert_eq!(now.offset, 0);
        let restarted = Since {
            offset: 0,
            epoch: "abcdef12345678".into(),
        };
        assert_eq!(l.since(&topic(), &restarted, later), Recovery::Lost);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let too_old = Since {
            offset: 0,
            epoch: format!("{}{:08x}1", h.run, secs - 3001),
        };
        assert_eq!(l.since(&topic(), &too_old, later), Recovery::Lost);
        l.append(&topic(), |o| frame(o, "1"), later);
        let older = Since {
            offset: 0,
            epoch: format!("{}{:08x}1", h.run, secs - 60),
        };
        assert_eq!(
            l.since(&topic(), &older, later),
            Recovery::Lost,
            "published since"
        );
    }

    /// A subscribe alone (a position read, nothing ever published) holds nothing once its
    /// last recipient is gone: a sprayer of distinct channels cannot grow the process.
    #[test]
    fn a_position_nobody_published_to_is_forgotten_with_its_last_recipient() {
        let routes = Arc::new(Routes::new(1, None));
        let h = History::new(100, Duration::from_secs(300), routes.clone());
        let t0 = Instant::now();
        let sprayed = |i: usize| Topic::Channel(Channel::new(&format!("room:{i}")).unwrap());
        routes.add(&sprayed(0), crate::protocol::WorkerId(0));
        for i in 0..1000 {
            h.lock(&sprayed(i)).position(&sprayed(i), t0);
        }
        h.lock(&topic()).append(&topic(), |o| frame(o, "1"), t0);
        assert_eq!(h.usage().1, 1001);
        // A second later, a use of each shard sweeps it.
        for probe in 0..SHARDS * 64 {
            let t = Topic::User(crate::protocol::UserId::new(&format!("p{probe}")).unwrap());
            h.lock(&t).position(&t, t0 + SWEEP_EVERY);
        }
        let remembered = |t: &Topic| h.lock(t).shard.topics.contains_key(t);
        assert!((1..1000).all(|i| !remembered(&sprayed(i))));
        assert!(remembered(&sprayed(0)), "it has a recipient");
        let mut l = h.lock(&topic());
        assert_eq!(l.position(&topic(), t0 + SWEEP_EVERY).offset, 1);
    }
}
