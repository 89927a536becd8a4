//! Fan-out: a worker's batch of deliveries pushed to every local recipient, each touched
//! connection flushed once, slow ones cut; and the backend's word (`/disconnect`,
//! `/subscribe`, `/unsubscribe`) carried out on each connection of its user.
//!
//! Ordering: frames are pushed to each connection's [`Writer`] in the order
//! [`Hub::deliver_batch`] is called with them, which is the order of this worker's bus inbox.
//! The hub never waits for a connection: it writes what each socket takes and leaves the rest
//! queued; a connection whose queue goes over its limits is cut (slow consumer) and delivery
//! goes on to everyone else.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{Answer, Hub};
use crate::bus::{Delivery, Envelope};
use crate::merge::{Admitted, Asked, Recipient};
use crate::protocol::{Channel, ConnId, Control, Frame, Since, Target, UserId};
use crate::pusher;
use crate::writer::{Command, Flushed, Pushed, Writer};

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
    prev: Option<&Delivery>,
) {
    match r.take(envelope, prev) {
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

/// Remembers to flush a writer something was pushed to outside [`push`].
fn push_dirty(dirty: &mut Vec<(ConnId, Arc<Writer>)>, id: ConnId, writer: &Arc<Writer>) {
    if !dirty.iter().any(|(d, _)| *d == id) {
        dirty.push((id, writer.clone()));
    }
}

impl Hub {
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
                        if member.pusher {
                            // Pusher has no broadcast to all connections.
                            continue;
                        } else if member.opening {
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
                                    None,
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
                envelope @ Envelope::Presence(channel, frame) => {
                    let Some(entry) = self.channels.get_mut(channel) else {
                        continue;
                    };
                    let mut member_event = None;
                    for id in &entry.watchers {
                        let holding = entry.active.get(id).is_some_and(Recipient::is_holding);
                        if self.pushers.contains_key(id) && !holding {
                            let event =
                                member_event.get_or_insert_with(|| pusher::member_event(frame));
                            let Some((event, user)) = event else {
                                continue;
                            };
                            // A member is not told of itself: its subscription said it is in.
                            let me = self.members.get(id).and_then(|m| {
                                m.channels
                                    .iter()
                                    .find(|m| m.channel == *channel)?
                                    .present_as
                                    .as_ref()
                            });
                            if me.is_some_and(|me| me.0.as_str() == user) {
                                continue;
                            }
                            if let Some(r) = entry.active.get(id) {
                                let event = std::slice::from_ref(event);
                                push(&mut self.dirty, &mut fanout, *id, &r.writer, event);
                            }
                        } else if let Some(r) = entry.active.get_mut(id) {
                            offer(
                                &mut self.dirty,
                                &mut self.overflowed,
                                &mut fanout,
                                *id,
                                r,
                                envelope,
                                None,
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
        let (dirty, overflowed) = (&mut self.dirty, &mut self.overflowed);
        match target {
            Target::User(user) => {
                for (id, r) in self.users.get_mut(user).into_iter().flatten() {
                    offer(dirty, overflowed, fanout, *id, r, envelope, None);
                }
            }
            Target::Channel(channel) => {
                let Some(entry) = self.channels.get_mut(channel) else {
                    return;
                };
                let mut view = None;
                let mut deltas = false;
                for (id, r) in entry.active.iter_mut() {
                    match self.pushers.get(id).filter(|_| !r.is_holding()) {
                        None => {
                            deltas |= r.takes_deltas();
                            let prev = entry.last.as_ref();
                            offer(dirty, overflowed, fanout, *id, r, envelope, prev);
                        }
                        Some(socket) => {
                            let frames = pusher_frames(channel, envelope, socket, &mut view);
                            if !frames.is_empty() {
                                push(dirty, fanout, *id, &r.writer, &frames);
                            }
                        }
                    }
                }
                if let Envelope::Message(d) = envelope {
                    entry.last = (deltas && d.position.is_some()).then(|| d.clone());
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
        since: Option<&Since>,
        fanout: &mut Fanout,
    ) {
        if let (Control::Disconnect(reason), Some(sockets)) = (control, self.signed_in.get(user)) {
            // Pusher sockets signed in as the user (`terminate_connections`).
            for id in sockets.clone() {
                if let Some(member) = self.members.get(&id) {
                    member.writer.command(Command::Disconnect(reason.clone()));
                }
                self.unregister(id);
            }
        }
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
}

/// What a Pusher socket (`socket`) is sent of an envelope of `channel`: each message as a
/// Pusher event (the view made once per envelope in `view`), except the sender's own; nothing
/// of positions, which Pusher does not have.
pub(super) fn pusher_frames(
    channel: &Channel,
    envelope: &Envelope,
    socket: &str,
    view: &mut Option<Option<pusher::View>>,
) -> Vec<Frame> {
    let visible = |v: &pusher::View| v.except.as_deref() != Some(socket);
    let of = |d: &Delivery| {
        d.frame
            .message_payload(&d.target)
            .map(|payload| pusher::view(channel, payload))
    };
    match envelope {
        Envelope::Message(d) => view
            .get_or_insert_with(|| of(d))
            .as_ref()
            .filter(|v| visible(v))
            .map(|v| vec![v.frame.clone()])
            .unwrap_or_default(),
        Envelope::Replay(_, deliveries) => deliveries
            .iter()
            .filter_map(of)
            .filter(visible)
            .map(|v| v.frame)
            .collect(),
        _ => Vec::new(),
    }
}
