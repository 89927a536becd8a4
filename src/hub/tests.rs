//! The hub's registry and fan-out, with writers that have no socket or a stuck one.

use super::*;
use crate::bus::{Delivery, Envelope};
use crate::config::QueueLimits;
use crate::protocol::{Control, Target};
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
    let Started::Held(user) = h.register(id(1), UserId::new("u").unwrap(), w.clone(), None) else {
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

#[tokio::test]
async fn a_drain_reaches_every_connection_and_those_that_register_during_it() {
    use crate::writer::WriterEvent;
    let mut h = hub();
    let u = UserId::new("u").unwrap();
    let (before, after) = (writer(8), writer(8));
    h.register(id(1), u.clone(), before.clone(), None);
    h.drain();
    // Accepted while the listeners were closing: it is told too, not left to the drain's end.
    h.register(id(2), u, after.clone(), None);
    for w in [before, after] {
        let told = tokio::time::timeout(std::time::Duration::from_secs(5), w.next_event());
        assert_eq!(told.await, Ok(WriterEvent::Command(Command::Drain)));
    }
}
