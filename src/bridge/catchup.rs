//! The subscriber's memory of each topic with history it relays: where the topic stood in the
//! last message relayed. A message further on than the next offset reveals a gap (published
//! while this machine's link was down or cut off): the topic's live messages are held, the gap
//! is read from Redis's history and relayed, then what was held, in offset order. After a
//! reconnect every topic is read this way, so the machine's clients miss nothing Redis kept,
//! without reconnecting. What Redis no longer has is said to the recipients (`Lost`), never
//! skipped silently.

use std::collections::hash_map::{Entry, HashMap};

use tokio::time::{Duration, Instant};

use crate::bus::{Delivery, Envelope};
use crate::history::Position;
use crate::history::Read;
use crate::protocol::Since;
use crate::protocol::Topic;

/// Most live messages held for one topic while its gap is read; past it the gap is given up
/// (and said).
const MAX_HELD: usize = 10_000;

/// Longest live messages are held while the reads of their gap fail (a Redis that answers,
/// but not those reads): then the gap is given up (and said), and they go on.
pub const GAP_PATIENCE: Duration = Duration::from_secs(30);

/// What the subscriber does next.
#[derive(Debug)]
pub enum Step {
    /// Hand it to the local bus.
    Relay(Envelope),
    /// Read what the topic has after `since` (answer with [`Catchup::filled`], with the id).
    Fill(Topic, Since, u64),
}

#[derive(Default)]
pub struct Catchup {
    topics: HashMap<Topic, Track>,
    /// Numbers the reads, so an answer is matched to the gap it was asked for.
    fills: u64,
}

struct Track {
    /// The offset of the last message relayed (or read, for a topic that had none yet).
    position: Position,
    /// While a gap is being read: what came since (messages, and the backend's controls, which
    /// keep their place among them), in order.
    held: Option<Vec<Envelope>>,
    /// The read in flight for the gap, if any.
    asking: Option<u64>,
    /// Since when messages are held.
    holding_since: Instant,
    /// When its position's expiry in Redis was last pushed back.
    touched: Instant,
}

impl Track {
    /// Live messages are held from now on, while the gap is read.
    fn hold(&mut self) {
        self.held = Some(Vec::new());
        self.holding_since = Instant::now();
    }

    fn new(position: Position, touched: Instant) -> Self {
        Track {
            position,
            held: None,
            asking: None,
            holding_since: touched,
            touched,
        }
    }

    fn since(&self) -> Since {
        Since {
            offset: self.position.offset,
            epoch: self.position.epoch.to_string(),
        }
    }
}

impl Catchup {
    /// A live message of `topic`, which carries its position.
    pub fn message(&mut self, topic: Topic, d: Delivery, out: &mut Vec<Step>) {
        let Some(p) = d.position.clone() else {
            out.push(Step::Relay(Envelope::Message(d)));
            return;
        };
        let t = match self.topics.entry(topic.clone()) {
            Entry::Vacant(e) => {
                e.insert(Track::new(p, Instant::now()));
                out.push(Step::Relay(Envelope::Message(d)));
                return;
            }
            Entry::Occupied(e) => e.into_mut(),
        };
        if t.position.generation != p.generation {
            // A new epoch: the recipients are told by the hub; nothing to read. The backend's
            // word held meanwhile still goes, before the new epoch's messages.
            for held in t.held.take().into_iter().flatten() {
                if !matches!(held, Envelope::Message(_)) {
                    out.push(Step::Relay(held));
                }
            }
            *t = Track::new(p, t.touched);
            out.push(Step::Relay(Envelope::Message(d)));
            return;
        }
        if t.held.is_none() && p.offset > t.position.offset + 1 {
            t.hold();
            self.fills += 1;
            t.asking = Some(self.fills);
            out.push(Step::Fill(topic, t.since(), self.fills));
        }
        match &mut t.held {
            Some(held) if held.len() < MAX_HELD => held.push(Envelope::Message(d)),
            Some(held) => {
                // The history did not answer in time: the gap is given up, and said.
                let target = d.target.clone();
                held.push(Envelope::Message(d));
                give_up(t, &target, out);
            }
            None => relay(t, Envelope::Message(d), out),
        }
    }

    /// The backend's word for a user (`topic`): it keeps its place after the messages held
    /// for the topic, if any.
    pub fn control(&mut self, topic: &Topic, control: Envelope, out: &mut Vec<Step>) {
        match self.topics.get_mut(topic).and_then(|t| t.held.as_mut()) {
            Some(held) if held.len() < MAX_HELD => held.push(control),
            _ => out.push(Step::Relay(control)),
        }
    }

    /// Where a topic stood when a connection of this machine read it: the start of its relay
    /// if nothing was relayed yet (so a gap before its first live message is noticed).
    /// `subscribed`: the topic has a recipient here (only those are remembered).
    pub fn seed(&mut self, topic: Topic, position: Position, subscribed: bool) {
        if subscribed {
            self.topics
                .entry(topic)
                .or_insert_with(|| Track::new(position, Instant::now()));
        }
    }

    /// The answer to [`Step::Fill`] `id`, which asked from `since`; `None` if the read failed
    /// (it is asked again by [`retry`](Self::retry)). An answer to a read since superseded
    /// (a newer gap, a reconnect) is ignored.
    pub fn filled(
        &mut self,
        topic: &Topic,
        id: u64,
        since: &Since,
        read: Option<Read>,
        out: &mut Vec<Step>,
    ) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if t.asking != Some(id) {
            return;
        }
        t.asking = None;
        let Some(read) = read else {
            return;
        };
        let Some(held) = t.held.take() else {
            return;
        };
        let target = topic.target();
        if read.recovered == Some(true) {
            let missed: Vec<Delivery> = read
                .missed
                .into_iter()
                .zip(since.offset + 1..)
                .map(|(frame, offset)| Delivery {
                    target: target.clone(),
                    frame,
                    position: Some(Position {
                        offset,
                        ..read.position.clone()
                    }),
                })
                .collect();
            if !missed.is_empty() {
                out.push(Step::Relay(Envelope::Replay(target, missed.into())));
            }
        } else {
            out.push(Step::Relay(Envelope::Lost(target, read.position.clone())));
        }
        let generation = read.position.generation;
        t.position = read.position;
        for envelope in held {
            match envelope {
                // Redis lost the epoch these belong to: said above, not worth relaying.
                Envelope::Message(d)
                    if d.position.as_ref().map(|p| p.generation) != Some(generation) => {}
                Envelope::Message(d) => self.message(topic.clone(), d, out),
                control => self.control(topic, control, out),
            }
        }
    }

    /// The link that relays the topics `which` picks is back (or they moved to another): each
    /// is read from where it stood, before its live messages (a read still in flight may have
    /// run before the link came back: asked again).
    pub fn reconnected(&mut self, which: impl Fn(&Topic) -> bool, out: &mut Vec<Step>) {
        for (topic, t) in self.topics.iter_mut().filter(|(topic, _)| which(topic)) {
            if t.held.is_none() {
                t.hold();
            }
            self.fills += 1;
            t.asking = Some(self.fills);
            out.push(Step::Fill(topic.clone(), t.since(), self.fills));
        }
    }

    /// Asks again for every gap whose read failed; one whose messages have waited
    /// [`GAP_PATIENCE`] is given up instead (and said).
    pub fn retry(&mut self, now: Instant, out: &mut Vec<Step>) {
        for (topic, t) in &mut self.topics {
            if t.held.is_none() || t.asking.is_some() {
                continue;
            }
            let waited = now.saturating_duration_since(t.holding_since) >= GAP_PATIENCE;
            // Only held messages are given up: a control alone waits for the gap before it.
            let messages = |h: &Vec<Envelope>| h.iter().any(|e| matches!(e, Envelope::Message(_)));
            if waited && t.held.as_ref().is_some_and(messages) {
                give_up(t, &topic.target(), out);
                continue;
            }
            self.fills += 1;
            t.asking = Some(self.fills);
            out.push(Step::Fill(topic.clone(), t.since(), self.fills));
        }
    }

    /// Up to `max` topics relayed here whose position was last kept alive `every` ago or more;
    /// they count as kept alive from `now`.
    pub fn due(&mut self, now: Instant, every: Duration, max: usize) -> Vec<Topic> {
        let mut due = Vec::new();
        for (topic, t) in &mut self.topics {
            if due.len() == max {
                break;
            }
            if now.saturating_duration_since(t.touched) >= every {
                t.touched = now;
                due.push(topic.clone());
            }
        }
        due
    }

    /// This machine no longer relays `topic`.
    pub fn forget(&mut self, topic: &Topic) {
        self.topics.remove(topic);
    }

    /// Keeps only the topics `keep` says are still relayed.
    pub fn retain(&mut self, mut keep: impl FnMut(&Topic) -> bool) {
        self.topics.retain(|topic, _| keep(topic));
    }
}

/// The gap is given up: its recipients are told where the topic stands (everything before the
/// first message held is behind them), then what was held goes on.
fn give_up(t: &mut Track, target: &crate::protocol::Target, out: &mut Vec<Step>) {
    let held = t.held.take().unwrap_or_default();
    t.asking = None;
    let first = held.iter().find_map(|h| match h {
        Envelope::Message(m) => m.position.clone(),
        _ => None,
    });
    if let Some(first) = first {
        let lost = Position {
            offset: first.offset.saturating_sub(1),
            ..first
        };
        out.push(Step::Relay(Envelope::Lost(target.clone(), lost)));
    }
    for h in held {
        relay(t, h, out);
    }
}

/// Relays in order: a duplicate message too (a recipient that read its own position may still
/// need it; the hub drops what each recipient already has).
fn relay(t: &mut Track, envelope: Envelope, out: &mut Vec<Step>) {
    if let Envelope::Message(Delivery {
        position: Some(p), ..
    }) = &envelope
    {
        t.position.offset = t.position.offset.max(p.offset);
    }
    out.push(Step::Relay(envelope));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::history::position;
    use crate::protocol::{Channel, Frame};

    fn topic() -> Topic {
        Topic::Channel(Channel::new("news").unwrap())
    }

    fn msg(epoch: &str, offset: u64) -> Delivery {
        let target = topic().target();
        Delivery {
            frame: Frame::message_at(&target, offset.to_string().as_bytes(), offset),
            target,
            position: Some(position(epoch, offset)),
        }
    }

    /// What the steps relay, as (offset, lost?) pairs (a control as (0, false)), and the
    /// fills they ask, as (since, id).
    #[allow(clippy::type_complexity)]
    fn seen(steps: Vec<Step>) -> (Vec<(u64, bool)>, Vec<(u64, u64)>) {
        let (mut relayed, mut fills) = (Vec::new(), Vec::new());
        for s in steps {
            match s {
                Step::Relay(Envelope::Message(d)) => {
                    relayed.push((d.position.unwrap().offset, false))
                }
                Step::Relay(Envelope::Lost(_, p)) => relayed.push((p.offset, true)),
                Step::Relay(Envelope::Control(..) | Envelope::Presence(..)) => {
                    relayed.push((0, false))
                }
                Step::Relay(Envelope::Replay(_, missed)) => relayed.extend(
                    missed
                        .iter()
                        .map(|d| (d.position.as_ref().unwrap().offset, false)),
                ),
                Step::Fill(_, since, id) => fills.push((since.offset, id)),
            }
        }
        (relayed, fills)
    }

    fn since(offset: u64) -> Since {
        Since {
            offset,
            epoch: "0a".into(),
        }
    }

    fn read(epoch: &str, last: u64, missed: Option<std::ops::RangeInclusive<u64>>) -> Read {
        let target = topic().target();
        Read {
            position: position(epoch, last),
            recovered: Some(missed.is_some()),
            missed: missed
                .into_iter()
                .flatten()
                .map(|o| Frame::message_at(&target, o.to_string().as_bytes(), o))
                .collect(),
        }
    }

    #[test]
    fn a_gap_is_filled_from_history_before_later_messages() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.message(topic(), msg("0a", 1), &mut out);
        c.message(topic(), msg("0a", 2), &mut out);
        c.message(topic(), msg("0a", 5), &mut out);
        c.message(topic(), msg("0a", 6), &mut out);
        let (relayed, fills) = seen(std::mem::take(&mut out));
        assert_eq!((relayed, fills.len()), (vec![(1, false), (2, false)], 1));
        let (from, id) = fills[0];
        assert_eq!(from, 2);
        c.filled(
            &topic(),
            id,
            &since(2),
            Some(read("0a", 5, Some(3..=5))),
            &mut out,
        );
        let offsets: Vec<_> = seen(out).0.into_iter().map(|(o, _)| o).collect();
        // 5 comes twice (read, then held live): the hub keeps one per recipient.
        assert_eq!(offsets, [3, 4, 5, 5, 6]);
    }

    #[test]
    fn a_gap_the_history_lost_is_said_and_a_failed_read_is_asked_again() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.seed(topic(), position("0a", 7), true);
        c.reconnected(|_| true, &mut out);
        let (_, fills) = seen(std::mem::take(&mut out));
        assert_eq!(fills.len(), 1);
        c.message(topic(), msg("0a", 20), &mut out);
        assert!(out.is_empty(), "held while the gap is read");
        c.filled(&topic(), fills[0].1, &since(7), None, &mut out);
        c.retry(Instant::now(), &mut out);
        let (_, fills) = seen(std::mem::take(&mut out));
        assert_eq!(fills.len(), 1);
        c.filled(
            &topic(),
            fills[0].1,
            &since(7),
            Some(read("0a", 20, None)),
            &mut out,
        );
        assert_eq!(seen(out), (vec![(20, true), (20, false)], vec![]));
    }

    /// The backend's word held while a gap was read is not dropped when a new epoch begins.
    #[test]
    fn a_held_control_goes_on_when_a_new_epoch_begins() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.message(topic(), msg("0a", 1), &mut out);
        c.message(topic(), msg("0a", 4), &mut out);
        let control = Envelope::Control(
            crate::protocol::UserId::new("u").unwrap(),
            crate::protocol::Control::Disconnect("bye".into()),
            None,
        );
        c.control(&topic(), control, &mut out);
        out.clear();
        c.message(topic(), msg("0b", 1), &mut out);
        assert_eq!(seen(out), (vec![(0, false), (1, false)], vec![]));
    }

    /// A Redis that answers, but never the gap's reads (a master that cannot confirm them to
    /// its replicas): the held messages go on after GAP_PATIENCE, the gap said before them.
    #[test]
    fn messages_held_while_reads_keep_failing_go_on_after_the_patience() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.message(topic(), msg("0a", 1), &mut out);
        c.message(topic(), msg("0a", 4), &mut out);
        c.message(topic(), msg("0a", 5), &mut out);
        let (relayed, fills) = seen(std::mem::take(&mut out));
        assert_eq!((relayed, fills.len()), (vec![(1, false)], 1));
        c.filled(&topic(), fills[0].1, &since(1), None, &mut out);
        let started = Instant::now();
        c.retry(started + GAP_PATIENCE / 2, &mut out);
        let (relayed, fills) = seen(std::mem::take(&mut out));
        assert!(relayed.is_empty(), "still held, asked again");
        c.filled(&topic(), fills[0].1, &since(1), None, &mut out);
        c.retry(started + GAP_PATIENCE, &mut out);
        assert_eq!(seen(out), (vec![(3, true), (4, false), (5, false)], vec![]));
    }

    #[test]
    fn an_answer_to_a_superseded_read_is_ignored_and_the_backends_word_keeps_its_place() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.message(topic(), msg("0a", 1), &mut out);
        c.message(topic(), msg("0a", 3), &mut out);
        let (_, first) = seen(std::mem::take(&mut out));
        // The link drops and comes back while the first read is out: asked again.
        c.reconnected(|_| true, &mut out);
        let (_, second) = seen(std::mem::take(&mut out));
        assert_ne!(first[0].1, second[0].1);
        let user = Topic::User(crate::protocol::UserId::new("u").unwrap());
        let control = Envelope::Control(
            crate::protocol::UserId::new("u").unwrap(),
            crate::protocol::Control::Disconnect("bye".into()),
            None,
        );
        // Not held: relayed at once. Held topics keep it after their messages.
        c.control(&user, control.clone(), &mut out);
        assert_eq!(seen(std::mem::take(&mut out)).0, [(0, false)]);
        c.control(&topic(), control, &mut out);
        c.message(topic(), msg("0a", 4), &mut out);
        assert!(out.is_empty());
        c.filled(
            &topic(),
            first[0].1,
            &since(1),
            Some(read("0a", 3, Some(2..=3))),
            &mut out,
        );
        assert!(out.is_empty(), "a stale answer");
        c.filled(
            &topic(),
            second[0].1,
            &since(1),
            Some(read("0a", 3, Some(2..=3))),
            &mut out,
        );
        let (relayed, _) = seen(out);
        assert_eq!(
            relayed,
            [(2, false), (3, false), (3, false), (0, false), (4, false)]
        );
    }

    #[test]
    fn messages_held_for_an_epoch_redis_lost_are_dropped_after_saying_so() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.message(topic(), msg("0a", 1), &mut out);
        c.message(topic(), msg("0a", 4), &mut out);
        let (_, fills) = seen(std::mem::take(&mut out));
        let mut lost = read("0b", 0, None);
        lost.recovered = Some(false);
        c.filled(&topic(), fills[0].1, &since(1), Some(lost), &mut out);
        assert_eq!(seen(out), (vec![(0, true)], vec![]));
        let mut out = Vec::new();
        c.message(topic(), msg("0b", 1), &mut out);
        assert_eq!(
            seen(out),
            (vec![(1, false)], vec![]),
            "the new epoch goes on"
        );
    }

    #[test]
    fn positions_are_kept_alive_once_per_period_a_bounded_number_at_a_time() {
        let mut c = Catchup::default();
        for n in 0..5 {
            let t = Topic::Channel(Channel::new(&format!("c{n}")).unwrap());
            c.seed(t, position("0a", 1), true);
        }
        let start = Instant::now();
        let every = Duration::from_secs(10);
        assert!(c.due(start, every, 3).is_empty(), "just read: alive");
        let later = start + every;
        assert_eq!(c.due(later, every, 3).len(), 3);
        assert_eq!(c.due(later, every, 3).len(), 2, "the others next");
        assert!(c.due(later, every, 3).is_empty());
        assert_eq!(c.due(later + every, every, 10).len(), 5);
    }

    #[test]
    fn a_new_epoch_starts_over_and_unsubscribed_topics_are_not_seeded() {
        let mut c = Catchup::default();
        let mut out = Vec::new();
        c.seed(topic(), position("0a", 3), false);
        c.message(topic(), msg("0a", 9), &mut out);
        c.message(topic(), msg("0b", 1), &mut out);
        c.message(topic(), msg("0b", 2), &mut out);
        assert_eq!(
            seen(out),
            (vec![(9, false), (1, false), (2, false)], vec![])
        );
    }
}
