//! How one recipient joins a topic's stream with nothing missed and nothing twice.
//!
//! Every topic starts the same way for a recipient, whatever keeps its history: the hub holds
//! the topic's live messages for it, the history is read (where the topic stands, what a resume
//! missed), and the two are merged here — the [`Opening`] first, then what was held that it does
//! not cover. From then on each message is admitted by offset: what the recipient already has
//! is dropped, a gap is said (`recovered: false`) before the message after it.
//!
//! Without history there is nothing to read: the topic opens at once ([`Opening::fresh`]).

use std::sync::Arc;

use crate::bus::{Delivery, Envelope};
use crate::history::{Position, Read};
use crate::protocol::{Frame, Since, Target, Topic};
use crate::writer::Writer;

/// How far a recipient is in a topic with history: frames of this epoch below `next_offset`
/// it already had from history (a resume), and are not sent again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub generation: u64,
    pub next_offset: u64,
}

impl Seen {
    /// Has everything up to `p`: the next message it needs is the one after.
    pub fn after(p: &Position) -> Seen {
        Seen {
            generation: p.generation,
            next_offset: p.offset + 1,
        }
    }
}

/// Who asked for a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Client,
    Backend,
}

/// What opens a topic for one recipient: `connected` or `subscribed` (with the position when
/// the topic has history), what a resume missed, and which live messages those cover.
#[derive(Debug, Default)]
pub struct Opening {
    pub frames: Vec<Frame>,
    pub seen: Seen,
}

impl Opening {
    /// A topic without history: `subscribed` for a channel, nothing for the user's own stream.
    pub fn fresh(topic: &Topic) -> Opening {
        let frames = match topic {
            Topic::Channel(c) => vec![Frame::subscribed(c)],
            Topic::User(_) => Vec::new(),
        };
        Opening {
            frames,
            seen: Seen::default(),
        }
    }

    /// A topic with history, from its read (`None`: the history could not be read, so the
    /// opening has no position and a resume is not recovered). `since`: whether a resume was
    /// asked for. Only a client is told `recovered: true`; a backend subscribe resumes
    /// silently unless that failed.
    /// `deltas`: the subscription takes deltas, and `subscribed` says so.
    pub fn read(
        topic: &Topic,
        read: Option<Read>,
        since: bool,
        asked: Asked,
        deltas: bool,
    ) -> Opening {
        let Some(read) = read else {
            let recovered = since.then_some(false);
            let frame = match topic {
                Topic::Channel(c) => Frame::subscribed_unpositioned(c, recovered, deltas),
                Topic::User(_) => Frame::connected_unpositioned(recovered),
            };
            return Opening {
                frames: vec![frame],
                seen: Seen::default(),
            };
        };
        let recovered = match read.recovered {
            Some(true) => (asked == Asked::Client).then_some(true),
            None => since.then_some(false),
            other => other,
        };
        let p = &read.position;
        let mut frames = Vec::with_capacity(1 + read.missed.len());
        frames.push(match topic {
            Topic::Channel(c) if deltas => {
                Frame::subscribed_at_with_deltas(c, &p.epoch, p.offset, recovered)
            }
            Topic::Channel(c) => Frame::subscribed_at(c, &p.epoch, p.offset, recovered),
            Topic::User(_) => Frame::connected(&p.epoch, p.offset, recovered),
        });
        frames.extend(read.missed);
        Opening {
            frames,
            seen: Seen::after(p),
        }
    }
}

/// A resume point from a query or a client's subscribe: absent, present but unusable (not
/// recovered), or a position.
pub type Resume = Option<Option<Since>>;

/// Most live messages held for one recipient while its history read is pending; past it the
/// connection is cut like a slow consumer (and resumes).
const MAX_HELD: usize = 10_000;

/// One connection as a recipient of a topic.
pub struct Recipient {
    pub writer: Arc<Writer>,
    seen: Seen,
    /// While the connection reads where it stands: which start waits (a later one must not take
    /// an earlier one's answer), and what arrived meanwhile. Boxed: every idle connection holds
    /// a recipient, and this is needed only while a topic opens.
    held: Option<Box<(u64, Vec<Envelope>)>>,
    deltas: Deltas,
}

/// Whether a subscription takes deltas, and against which message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deltas {
    Off,
    /// On; the next message comes whole (after `subscribed`, a replay or a gap).
    Whole,
    /// On; the client has the text of message `offset` of the epoch it has seen (a new epoch
    /// or a gap sets `Whole`).
    After(u64),
}

/// What a recipient makes of one envelope.
pub enum Admitted<'a> {
    /// Held until its opening; nothing to send now.
    Held,
    /// Over the most held for one recipient: the connection is to be cut.
    Overflow,
    /// A notice of a gap or of a lost history, if one is due, then the message's frame unless
    /// the recipient already has it.
    Frames(Option<Frame>, Option<&'a Frame>),
    /// A replay's frames, to go out as one burst.
    Burst(Vec<Frame>),
}

impl Recipient {
    /// Receiving at once from `seen` on.
    pub fn open(writer: Arc<Writer>, seen: Seen) -> Self {
        Recipient {
            writer,
            seen,
            held: None,
            deltas: Deltas::Off,
        }
    }

    /// Holding live messages until [`opened`](Self::opened) names `start`.
    pub fn holding(writer: Arc<Writer>, start: u64) -> Self {
        Recipient {
            writer,
            seen: Seen::default(),
            held: Some(Box::new((start, Vec::new()))),
            deltas: Deltas::Off,
        }
    }

    /// Its messages may come as deltas (a channel with history whose subscriber asked).
    pub fn with_deltas(mut self) -> Self {
        self.deltas = Deltas::Whole;
        self
    }

    /// Holds `envelope` while the opening is pending, admits it otherwise. `prev`: the
    /// channel's message delivered before this one here, if kept (the base of a delta).
    pub fn take<'a>(&mut self, envelope: &'a Envelope, prev: Option<&Delivery>) -> Admitted<'a> {
        if let Some((_, held)) = self.held.as_deref_mut() {
            if held.len() >= MAX_HELD {
                return Admitted::Overflow;
            }
            held.push(envelope.clone());
            return Admitted::Held;
        }
        if let Envelope::Replay(..) = envelope {
            let mut burst = Vec::new();
            self.admit_all(envelope, &mut burst);
            return Admitted::Burst(burst);
        }
        let (notice, frame) = self.admit(envelope, prev);
        Admitted::Frames(notice, frame)
    }

    /// Ends the wait of `start`: the opening's frames, then what was held that they do not
    /// cover, to go out as one burst (a replay never cuts a client that reads). `None` if this
    /// recipient does not wait for `start` (it started again since).
    pub fn opened(&mut self, start: u64, opening: Opening) -> Option<Vec<Frame>> {
        if self.held.as_ref().map(|h| h.0) != Some(start) {
            return None;
        }
        let (_, held) = *self.held.take().expect("checked above");
        self.seen = opening.seen;
        self.restart_deltas();
        let mut burst = opening.frames;
        for envelope in &held {
            self.admit_all(envelope, &mut burst);
        }
        Some(burst)
    }

    /// Whether its messages may come as deltas.
    pub fn takes_deltas(&self) -> bool {
        self.deltas != Deltas::Off
    }

    /// Whether live messages are held for it now.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Ends the wait of `start` without merging: what was held, for a recipient that sees
    /// messages in another shape (a Pusher socket). `None` if it does not wait for `start`.
    pub fn release(&mut self, start: u64) -> Option<Vec<Envelope>> {
        if self.held.as_ref().map(|h| h.0) != Some(start) {
            return None;
        }
        self.held.take().map(|h| h.1)
    }

    /// [`admit`](Self::admit) for any envelope, a replay's messages each in turn.
    fn admit_all(&mut self, envelope: &Envelope, out: &mut Vec<Frame>) {
        match envelope {
            Envelope::Replay(_, deliveries) => {
                for d in deliveries.iter() {
                    let (notice, frame) = self.admit_message(d, None);
                    out.extend(notice);
                    out.extend(frame.cloned());
                }
            }
            other => {
                let (notice, frame) = self.admit(other, None);
                out.extend(notice);
                out.extend(frame.cloned());
            }
        }
    }

    /// The next message comes whole, if deltas are on.
    fn restart_deltas(&mut self) {
        if self.deltas != Deltas::Off {
            self.deltas = Deltas::Whole;
        }
    }

    fn admit<'a>(
        &mut self,
        envelope: &'a Envelope,
        prev: Option<&Delivery>,
    ) -> (Option<Frame>, Option<&'a Frame>) {
        match envelope {
            Envelope::Message(d) => self.admit_message(d, prev),
            Envelope::Lost(target, p) => {
                // Only a recipient not already past the lost stretch (by its own read) is told.
                if self.seen.generation == p.generation && self.seen.next_offset > p.offset {
                    return (None, None);
                }
                self.seen = Seen::after(p);
                self.restart_deltas();
                (Some(lost_position(target, p)), None)
            }
            Envelope::Presence(_, frame) => (None, Some(frame)),
            Envelope::Control(..) | Envelope::Replay(..) => (None, None),
        }
    }

    fn admit_message<'a>(
        &mut self,
        d: &'a Delivery,
        prev: Option<&Delivery>,
    ) -> (Option<Frame>, Option<&'a Frame>) {
        let Some(p) = &d.position else {
            return (None, Some(&d.frame));
        };
        let same_epoch = self.seen.generation == p.generation;
        if same_epoch && p.offset < self.seen.next_offset {
            // Already had it, from history.
            return (None, None);
        }
        // Another epoch (the history was lost), or offsets skipped (this machine missed
        // messages it could not recover).
        let gap = self.seen.next_offset != 0 && p.offset > self.seen.next_offset;
        let notice = (!same_epoch || gap).then(|| {
            let before = Position {
                offset: p.offset.saturating_sub(1),
                ..p.clone()
            };
            lost_position(&d.target, &before)
        });
        self.seen = Seen::after(p);
        let frame = match self.deltas {
            Deltas::Off => &d.frame,
            had => {
                self.deltas = Deltas::After(p.offset);
                let base = Deltas::After(p.offset.wrapping_sub(1));
                // Only a `prev` that is this client's base may make the shared delta.
                let delta = prev
                    .filter(|prev| {
                        notice.is_none() && had == base && crate::delta::follows(prev, d)
                    })
                    .and_then(|prev| d.frame.delta(|| crate::delta::between(prev, d)));
                delta.unwrap_or(&d.frame)
            }
        };
        (notice, Some(frame))
    }
}

/// What a recipient whose position was lost is told: where the topic stands (everything up to
/// `p` is behind it), not recovered.
fn lost_position(target: &Target, p: &Position) -> Frame {
    match target {
        Target::Channel(c) => Frame::subscribed_at(c, &p.epoch, p.offset, Some(false)),
        Target::User(_) | Target::All => Frame::connected(&p.epoch, p.offset, Some(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueLimits;
    use crate::protocol::{Channel, UserId};

    fn writer() -> Arc<Writer> {
        let limits = QueueLimits {
            frames: 64,
            bytes: usize::MAX,
        };
        Arc::new(Writer::new(limits, Default::default()))
    }

    fn at(target: &Target, offset: u64, generation: u64) -> Envelope {
        Envelope::Message(Delivery {
            target: target.clone(),
            frame: Frame::message_at(target, b"1", offset),
            position: Some(Position {
                epoch: format!("e{generation}").into(),
                generation,
                offset,
            }),
        })
    }

    fn read(offset: u64, recovered: Option<bool>, missed: u64) -> Read {
        let target = Target::Channel(Channel::new("c").unwrap());
        Read {
            position: Position {
                epoch: "e1".into(),
                generation: 1,
                offset,
            },
            recovered,
            missed: (offset - missed + 1..=offset)
                .map(|o| Frame::message_at(&target, b"1", o))
                .collect(),
        }
    }

    fn offsets(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                format!("{}:{}", v["type"].as_str().unwrap(), v["offset"])
            })
            .collect()
    }

    #[test]
    fn held_messages_the_read_covers_are_dropped_and_the_rest_follow_in_order() {
        let target = Target::Channel(Channel::new("c").unwrap());
        let topic = Topic::Channel(Channel::new("c").unwrap());
        let mut r = Recipient::holding(writer(), 7);
        // Published around the read: 4 and 5 are in it, 6 and 7 came after.
        let held: Vec<Envelope> = (4..=7).map(|o| at(&target, o, 1)).collect();
        for e in &held {
            assert!(matches!(r.take(e, None), Admitted::Held));
        }
        let opening = Opening::read(
            &topic,
            Some(read(5, Some(true), 2)),
            true,
            Asked::Client,
            false,
        );
        assert!(r.opened(6, Opening::default()).is_none(), "another start's");
        let burst = r.opened(7, opening).unwrap();
        assert_eq!(
            offsets(&burst),
            [
                "subscribed:5",
                "message:4",
                "message:5",
                "message:6",
                "message:7"
            ]
        );
        assert!(r.opened(7, Opening::default()).is_none(), "once");
        // Live from now on: an old one is dropped, a skipped offset is said.
        assert!(matches!(
            r.take(&at(&target, 7, 1), None),
            Admitted::Frames(None, None)
        ));
        let Admitted::Frames(Some(notice), Some(_)) = r.take(&at(&target, 9, 1), None) else {
            panic!("a gap is said before the message after it");
        };
        assert_eq!(offsets(&[notice]), ["subscribed:8"]);
    }

    /// Message `offset` of channel `c` in generation 1: a document whose one field changes.
    fn document(offset: u64) -> Delivery {
        let target = Target::Channel(Channel::new("c").unwrap());
        let rows = r#"{"name":"a row of the document","ok":true}"#.repeat(20);
        let payload = format!(r#"{{"n":{offset},"rows":"{}"}}"#, rows.replace('"', "'"));
        Delivery {
            frame: Frame::message_at(&target, payload.as_bytes(), offset),
            target,
            position: Some(Position {
                epoch: "e1".into(),
                generation: 1,
                offset,
            }),
        }
    }

    fn is_delta(admitted: Admitted) -> bool {
        match admitted {
            Admitted::Frames(None, Some(f)) => f.as_str().contains(r#""delta":true"#),
            _ => panic!("one frame, no notice"),
        }
    }

    #[test]
    fn deltas_follow_the_message_the_client_has_and_restart_whole() {
        let mut r = Recipient::holding(writer(), 1).with_deltas();
        let ch = Topic::Channel(Channel::new("c").unwrap());
        let opening = Opening::read(&ch, Some(read(3, None, 0)), false, Asked::Client, true);
        assert!(opening.frames[0].as_str().contains(r#""delta":"fossil""#));
        r.opened(1, opening).unwrap();
        let m: Vec<Envelope> = (4..=8).map(|o| Envelope::Message(document(o))).collect();
        let d = |o: u64| match &m[o as usize - 4] {
            Envelope::Message(d) => d,
            _ => unreachable!(),
        };
        assert!(
            !is_delta(r.take(&m[0], Some(&document(3)))),
            "the first after subscribed"
        );
        assert!(is_delta(r.take(&m[1], Some(d(4)))));
        assert!(!is_delta(r.take(&m[2], None)), "no base kept here");
        assert!(
            !is_delta(r.take(&m[3], Some(d(5)))),
            "not the message before"
        );
        assert!(is_delta(r.take(&m[4], Some(d(7)))));
        // The delta is made once and shared: another recipient gets the same bytes.
        let seen = Seen {
            generation: 1,
            next_offset: 8,
        };
        let mut other = Recipient::open(writer(), seen).with_deltas();
        other.deltas = Deltas::After(7);
        let Admitted::Frames(None, Some(shared)) = other.take(&m[4], Some(d(7))) else {
            panic!("one frame");
        };
        assert!(std::ptr::eq(shared, d(8).frame.delta(|| None).unwrap()));
        // A plain subscription beside it gets the whole message.
        let mut plain = Recipient::open(writer(), seen);
        assert!(!is_delta(plain.take(&m[4], Some(d(7)))));
        // A gap: said, and the message after it comes whole.
        let after_gap = Envelope::Message(document(10));
        let Admitted::Frames(Some(_), Some(f)) = r.take(&after_gap, Some(d(8))) else {
            panic!("a gap is said");
        };
        assert!(!f.as_str().contains("delta"));
    }

    #[test]
    fn a_recipient_stays_small() {
        // Every idle connection holds one (its direct messages): what opens a topic is boxed,
        // so deltas cost it nothing (56 bytes before them).
        assert_eq!(std::mem::size_of::<Recipient>(), 48);
    }

    #[test]
    fn a_new_epoch_is_said_and_a_held_overflow_cuts() {
        let target = Target::User(UserId::new("u").unwrap());
        let mut r = Recipient::open(
            writer(),
            Seen {
                generation: 1,
                next_offset: 3,
            },
        );
        let Admitted::Frames(Some(notice), Some(_)) = r.take(&at(&target, 1, 2), None) else {
            panic!("a new epoch is said");
        };
        assert!(notice.as_str().contains(r#""recovered":false"#));
        let mut r = Recipient::holding(writer(), 1);
        let e = at(&target, 1, 1);
        for _ in 0..MAX_HELD {
            assert!(matches!(r.take(&e, None), Admitted::Held));
        }
        assert!(matches!(r.take(&e, None), Admitted::Overflow));
    }

    #[test]
    fn openings_say_recovered_only_to_whom_and_when_they_should() {
        let ch = Topic::Channel(Channel::new("c").unwrap());
        let user = Topic::User(UserId::new("u").unwrap());
        let text = |o: Opening| o.frames[0].as_str().to_string();
        let client = text(Opening::read(
            &ch,
            Some(read(3, Some(true), 1)),
            true,
            Asked::Client,
            false,
        ));
        assert!(client.contains(r#""recovered":true"#), "{client}");
        let backend = text(Opening::read(
            &ch,
            Some(read(3, Some(true), 1)),
            true,
            Asked::Backend,
            false,
        ));
        assert!(!backend.contains("recovered"), "{backend}");
        let unusable = text(Opening::read(
            &user,
            Some(read(3, None, 0)),
            true,
            Asked::Client,
            false,
        ));
        assert!(unusable.contains(r#""recovered":false"#), "{unusable}");
        let down = text(Opening::read(&user, None, true, Asked::Client, false));
        assert!(down.contains(r#""recovered":false"#) && !down.contains("offset"));
        assert!(Opening::fresh(&user).frames.is_empty());
        assert_eq!(
            text(Opening::fresh(&ch)),
            Frame::subscribed(&Channel::new("c").unwrap()).as_str()
        );
    }
}
