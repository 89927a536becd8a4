//! What each subscribing link should hold, and who waits for what: the subscriber's
//! reconciliation as a pure state machine, with no Redis and no I/O.
//!
//! The subscriber task (`subscriber.rs`) tells it what happened — the subscription log moved,
//! the cluster map changed, a link connected or went down, Redis confirmed, refused or took
//! away a channel — and carries out the [`Effect`]s it asks for, in order: send a change on a
//! link, confirm a log ticket (a connection's `subscribed` may go out), read topics' history
//! again, drop a link, read the map again.
//!
//! The accounting: every change sent on a link becomes a part that owes one confirmation
//! per channel named; a log ticket waits for every part it rode on. A ticket whose change
//! needed nothing new from a link that still owes earlier confirmations waits for the last of
//! them. A subscribe refused with `-MOVED` keeps its ticket waiting until the channel is sent
//! to its new master. A link that goes down answers what it owed: when it is back it
//! subscribes to everything it should hold.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::cluster;
use crate::protocol::Topic;
use crate::subscriptions::Ticket;

/// What the subscriber task must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Subscribe link `link` to `add` and unsubscribe it from `remove`, in one write.
    Send {
        link: usize,
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// Every change up to this log position is applied (or moot).
    Confirm(Ticket),
    /// These topics were not relayed here for a while: read what they missed.
    Refill(HashSet<Topic>),
    /// A change of link `link` took effect (its count of subscriptions changed).
    Applied(usize),
    /// Link `link` holds everything it should since it connected.
    Restored(usize),
    /// Link `link` broke the protocol: take it down.
    Down(usize, &'static str),
    /// The map is behind (a slot moved): read it again.
    Refresh,
}

/// A channel named in a (S)SUBSCRIBE or (S)UNSUBSCRIBE, awaiting Redis's answer.
#[derive(Debug)]
struct Expected {
    subscribe: bool,
    channel: String,
}

/// One change sent on a link.
#[derive(Debug, Default)]
struct Part {
    /// Channel confirmations still to come.
    remaining: usize,
    /// The log positions that wait for it.
    tickets: Vec<Ticket>,
    /// The restore of a link that just connected.
    restore: bool,
    /// Topics to read from their history once it is confirmed.
    refill: HashSet<Topic>,
}

/// One link's book.
#[derive(Debug, Default)]
struct Book {
    connected: bool,
    /// The connection attempt this link waits for.
    attempt: u64,
    /// Channels subscribed here (sent, confirmed or not).
    subscribed: HashSet<String>,
    /// The answer Redis owes for each channel named in a command sent, oldest first.
    expected: VecDeque<Expected>,
    /// Changes sent and not yet confirmed, oldest first.
    unconfirmed: VecDeque<Part>,
    /// Everything it had to subscribe to when it connected is confirmed.
    restored: bool,
}

/// A topic's channel name, the link of the master that owns it, and whether this process
/// still has a recipient for it.
pub struct Change {
    pub link: usize,
    pub name: String,
    pub wanted: bool,
}

/// The channels a link should hold: every wanted topic's on its master, and the broadcast
/// channel (no topic) on its.
pub type Owned = Vec<(String, Option<Topic>)>;

#[derive(Debug, Default)]
pub struct Reconciler {
    links: Vec<Book>,
    /// Log positions sent to links, with how many parts have still to confirm them.
    tickets: BTreeMap<Ticket, usize>,
    /// Some wanted channel is not subscribed where it should be (a slot moved).
    resync: bool,
    /// Tickets of subscribes Redis refused (the map was behind), with their channel: each
    /// holds one count in `tickets` until the channel's master has it on its way again.
    redo: Vec<(Ticket, String)>,
    attempts: u64,
    effects: Vec<Effect>,
}

impl Reconciler {
    /// What to do now, in order.
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    #[cfg(test)]
    fn is_restored(&self, i: usize) -> bool {
        self.links[i].restored
    }

    pub fn all_restored(&self) -> bool {
        self.links.iter().all(|l| l.restored)
    }

    /// Channels link `i` holds.
    pub fn subscriptions(&self, i: usize) -> usize {
        self.links[i].subscribed.len()
    }

    /// A new map: link `j` is the old link `kept[j]` where that master stays, a new one (not
    /// connected) otherwise; old links not kept answer what they owed. A channel whose slot
    /// moved is no longer held where it was, and is subscribed where it now belongs.
    pub fn follow_map(
        &mut self,
        kept: &[Option<usize>],
        owner: impl Fn(&str) -> Option<usize>,
        owned: impl Fn(usize) -> Owned,
    ) {
        let mut old: Vec<Option<Book>> = self.links.drain(..).map(Some).collect();
        self.links = kept
            .iter()
            .map(|k| k.and_then(|o| old[o].take()).unwrap_or_default())
            .collect();
        for mut gone in old.into_iter().flatten() {
            self.answer_parts(&mut gone);
        }
        for (i, link) in self.links.iter_mut().enumerate() {
            let before = link.subscribed.len();
            link.subscribed.retain(|c| owner(c) == Some(i));
            self.resync |= link.subscribed.len() != before;
        }
        self.resync(owner, owned);
    }

    /// The log moved to `ticket`: each link subscribes to its topics that gained a recipient
    /// here and leaves those that lost their last one.
    pub fn follow_log(&mut self, ticket: Ticket, changes: Vec<Change>) {
        let mut per_link: Vec<(Vec<String>, Vec<String>)> =
            (0..self.links.len()).map(|_| Default::default()).collect();
        let mut involved = vec![false; self.links.len()];
        for c in changes {
            involved[c.link] = true;
            match (c.wanted, self.links[c.link].subscribed.contains(&c.name)) {
                (true, false) => per_link[c.link].0.push(c.name),
                (false, true) => per_link[c.link].1.push(c.name),
                _ => {}
            }
        }
        // The same position can come twice (a change recorded while the last was taken).
        self.tickets.entry(ticket).or_default();
        for (i, (add, remove)) in per_link.into_iter().enumerate() {
            let part = Part {
                tickets: vec![ticket],
                ..Part::default()
            };
            if !self.send(i, add, remove, part) && involved[i] {
                // Nothing new to ask, but what this change needs may still be unconfirmed
                // (a restore, an earlier subscribe of the same channel): it waits for that.
                if let Some(last) = self.links[i].unconfirmed.back_mut() {
                    last.tickets.push(ticket);
                    *self.tickets.entry(ticket).or_default() += 1;
                }
            }
        }
        self.confirm_tickets();
    }

    /// Subscribes every restored link to the wanted channels it lacks (after a slot moved);
    /// what they missed meanwhile is read from their history once subscribed. Due after a
    /// move, a kick or a refusal; a no-op otherwise.
    pub fn resync(
        &mut self,
        owner: impl Fn(&str) -> Option<usize>,
        owned: impl Fn(usize) -> Owned,
    ) {
        if !std::mem::take(&mut self.resync) {
            return;
        }
        for i in 0..self.links.len() {
            if !self.links[i].restored {
                // Connected and restoring: its restore may predate the move; again once done.
                self.resync |= self.links[i].connected;
                continue;
            }
            let (add, refill) = self.lacking(i, owned(i));
            let part = Part {
                refill,
                ..Part::default()
            };
            self.send(i, add, Vec::new(), part);
        }
        // Whoever waits for a refused subscribe now waits for what its channel's master owes
        // (the subscribe just sent, or one already on its way); for a master still restoring,
        // until the next round; for one that is down, not at all (it subscribes to everything
        // when it is back).
        for (ticket, channel) in std::mem::take(&mut self.redo) {
            match owner(&channel).map(|i| &mut self.links[i]) {
                Some(link) if link.connected && !link.restored => {
                    self.redo.push((ticket, channel));
                    continue;
                }
                Some(link) => {
                    if let Some(last) = link.unconfirmed.back_mut() {
                        last.tickets.push(ticket);
                        *self.tickets.entry(ticket).or_default() += 1;
                    }
                }
                None => {}
            }
            if let Some(n) = self.tickets.get_mut(&ticket) {
                *n = n.saturating_sub(1);
            }
        }
        self.confirm_tickets();
    }

    /// Link `i` starts connecting: the attempt its answer must name.
    pub fn attempt(&mut self, i: usize) -> u64 {
        self.attempts += 1;
        self.links[i].attempt = self.attempts;
        self.attempts
    }

    /// Whether link `i` waits for `attempt` (a stale attempt's answer is dropped).
    pub fn awaits(&self, i: usize, attempt: u64) -> bool {
        let link = &self.links[i];
        link.attempt == attempt && !link.connected
    }

    /// Link `i` connected: it subscribes to everything it should hold (`owned`), and is
    /// restored once Redis confirmed it all.
    pub fn connected(&mut self, i: usize, owned: Owned) {
        self.links[i].connected = true;
        let (add, refill) = self.lacking(i, owned);
        let part = Part {
            restore: true,
            refill,
            ..Part::default()
        };
        if !self.send(i, add, Vec::new(), part) {
            self.restored(i);
        }
    }

    /// Link `i` is down: it answers what it owed and forgets what it held. Returns whether it
    /// had been restored (a link that worked starts its backoff again).
    pub fn down(&mut self, i: usize) -> bool {
        let mut link = std::mem::take(&mut self.links[i]);
        self.answer_parts(&mut link);
        self.links[i].attempt = link.attempt;
        link.restored
    }

    /// Redis confirmed a subscribe on link `i`.
    pub fn subscribed(&mut self, i: usize) {
        self.links[i].expected.pop_front();
        self.confirmed(i);
    }

    /// Redis says link `i` no longer holds `channel`: the answer to our unsubscribe, or Redis
    /// taking it away (its slot moved), which is followed once the map says where it went.
    /// Returns whether it was taken away.
    pub fn unsubscribed(&mut self, i: usize, channel: &str) -> bool {
        let link = &mut self.links[i];
        let ours = link
            .expected
            .front()
            .is_some_and(|e| !e.subscribe && e.channel == channel);
        if ours {
            link.expected.pop_front();
            self.confirmed(i);
            return false;
        }
        let taken = link.subscribed.remove(channel);
        if taken {
            self.resync = true;
            self.effects.push(Effect::Refresh);
        }
        taken
    }

    /// On a cluster, link `i`'s command was refused because the map is behind (`-MOVED`, naming
    /// `slot`, or `-CLUSTERDOWN`). Returns the refused channel if the refusal answered one.
    pub fn refused(&mut self, i: usize, slot: Option<u16>) -> Option<String> {
        self.effects.push(Effect::Refresh);
        let link = &mut self.links[i];
        // A -MOVED names its slot: an answer for another slot is one a `sunsubscribe` (Redis
        // moving that slot away) already stood in for.
        let answers_front = link
            .expected
            .front()
            .is_some_and(|e| slot.is_none_or(|s| cluster::slot(e.channel.as_bytes()) == s));
        if !answers_front {
            return None;
        }
        let e = link.expected.pop_front().expect("checked above");
        if e.subscribe {
            link.subscribed.remove(&e.channel);
            self.resync = true;
            // Whoever waits for it goes on waiting until it is sent where it belongs.
            for ticket in link.unconfirmed.front().map_or(&[][..], |p| &p.tickets) {
                *self.tickets.entry(*ticket).or_default() += 1;
                self.redo.push((*ticket, e.channel.clone()));
            }
        }
        self.confirmed(i);
        Some(e.channel)
    }

    /// The channels of `owned` link `i` lacks, and their topics.
    fn lacking(&self, i: usize, owned: Owned) -> (Vec<String>, HashSet<Topic>) {
        let link = &self.links[i];
        let mut names = Vec::new();
        let mut topics = HashSet::new();
        for (name, topic) in owned {
            if !link.subscribed.contains(&name) {
                names.push(name);
                topics.extend(topic);
            }
        }
        (names, topics)
    }

    /// Sends a change on link `i` if it is connected and the change is not empty; the link
    /// then owes its confirmations, and the part's tickets wait for them.
    fn send(&mut self, i: usize, add: Vec<String>, remove: Vec<String>, mut part: Part) -> bool {
        let link = &mut self.links[i];
        if !link.connected || (add.is_empty() && remove.is_empty()) {
            return false;
        }
        part.remaining = add.len() + remove.len();
        for ticket in &part.tickets {
            *self.tickets.entry(*ticket).or_default() += 1;
        }
        link.unconfirmed.push_back(part);
        for (subscribe, names) in [(true, &add), (false, &remove)] {
            for channel in names {
                match subscribe {
                    true => link.subscribed.insert(channel.clone()),
                    false => link.subscribed.remove(channel),
                };
                link.expected.push_back(Expected {
                    subscribe,
                    channel: channel.clone(),
                });
            }
        }
        self.effects.push(Effect::Send {
            link: i,
            add,
            remove,
        });
        true
    }

    /// One channel of the oldest change sent on link `i` took effect.
    fn confirmed(&mut self, i: usize) {
        let link = &mut self.links[i];
        let Some(front) = link.unconfirmed.front_mut() else {
            self.effects
                .push(Effect::Down(i, "a confirmation nobody asked for"));
            return;
        };
        front.remaining = front.remaining.saturating_sub(1);
        if front.remaining > 0 {
            return;
        }
        let part = link.unconfirmed.pop_front().expect("front exists");
        self.effects.push(Effect::Applied(i));
        for ticket in &part.tickets {
            if let Some(n) = self.tickets.get_mut(ticket) {
                *n = n.saturating_sub(1);
            }
        }
        self.confirm_tickets();
        if !part.refill.is_empty() {
            // Subscribed again: what each topic missed meanwhile can be read now without a seam.
            self.effects.push(Effect::Refill(part.refill));
        }
        if part.restore {
            self.restored(i);
        }
    }

    fn restored(&mut self, i: usize) {
        // What moved here while the restore was on its way is subscribed next.
        self.resync = true;
        self.links[i].restored = true;
        self.effects.push(Effect::Restored(i));
    }

    /// Confirms the log up to the last ticket every link has applied (or could not apply: a
    /// link that is down subscribes to everything when it is back).
    fn confirm_tickets(&mut self) {
        let mut done = None;
        while let Some(entry) = self.tickets.first_entry() {
            if *entry.get() > 0 {
                break;
            }
            done = Some(entry.remove_entry().0);
        }
        if let Some(ticket) = done {
            self.effects.push(Effect::Confirm(ticket));
        }
    }

    /// The changes a link owed are moot: when it is back it subscribes to everything.
    fn answer_parts(&mut self, link: &mut Book) {
        for part in link.unconfirmed.drain(..) {
            for ticket in &part.tickets {
                if let Some(n) = self.tickets.get_mut(ticket) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        self.confirm_tickets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Channel;
    use crate::subscriptions::SubscriptionLog;

    /// Log positions 1, 2, 3, … as the log hands them out.
    fn tickets(n: usize) -> Vec<Ticket> {
        let log = SubscriptionLog::default();
        let topic = Topic::Channel(Channel::new("t").unwrap());
        (0..n)
            .map(|_| {
                log.record(&topic);
                log.ticket()
            })
            .collect()
    }

    fn topic(name: &str) -> Topic {
        Topic::Channel(Channel::new(name).unwrap())
    }

    fn change(link: usize, name: &str, wanted: bool) -> Change {
        Change {
            link,
            name: name.into(),
            wanted,
        }
    }

    fn send(link: usize, add: &[&str], remove: &[&str]) -> Effect {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        Effect::Send {
            link,
            add: names(add),
            remove: names(remove),
        }
    }

    /// `n` links, each connected and restored with nothing to hold.
    fn restored(n: usize) -> Reconciler {
        let mut r = Reconciler::default();
        let kept = vec![None; n];
        r.follow_map(&kept, |_| None, |_| Vec::new());
        for i in 0..n {
            let a = r.attempt(i);
            assert!(r.awaits(i, a));
            r.connected(i, Vec::new());
        }
        let e: Vec<Effect> = r.effects().collect();
        assert_eq!(e, (0..n).map(Effect::Restored).collect::<Vec<_>>());
        r
    }

    fn effects(r: &mut Reconciler) -> Vec<Effect> {
        r.effects().collect()
    }

    #[test]
    fn a_ticket_waits_for_every_link_it_rode_on() {
        let t = tickets(1)[0];
        let mut r = restored(2);
        r.follow_log(t, vec![change(0, "a", true), change(1, "b", true)]);
        assert_eq!(
            effects(&mut r),
            [send(0, &["a"], &[]), send(1, &["b"], &[])]
        );
        r.subscribed(0);
        assert_eq!(effects(&mut r), [Effect::Applied(0)], "b still owed");
        r.subscribed(1);
        assert_eq!(effects(&mut r), [Effect::Applied(1), Effect::Confirm(t)]);
    }

    #[test]
    fn a_change_that_needs_nothing_new_waits_for_what_is_still_owed() {
        let [t1, t2] = tickets(2)[..] else { panic!() };
        let mut r = restored(1);
        r.follow_log(t1, vec![change(0, "a", true)]);
        // The same channel again (another connection): nothing to send, but `a` is not
        // confirmed yet, so t2 may not be confirmed before it.
        r.follow_log(t2, vec![change(0, "a", true)]);
        assert_eq!(effects(&mut r), [send(0, &["a"], &[])]);
        r.subscribed(0);
        assert_eq!(effects(&mut r), [Effect::Applied(0), Effect::Confirm(t2)]);
        // Once confirmed, a change that needs nothing is confirmed at once.
        let t3 = tickets(3)[2];
        r.follow_log(t3, vec![change(0, "a", true)]);
        assert_eq!(effects(&mut r), [Effect::Confirm(t3)]);
    }

    #[test]
    fn a_moved_subscribe_keeps_its_ticket_until_its_new_master_confirms() {
        let t = tickets(1)[0];
        let mut r = restored(2);
        let slot_of_a = cluster::slot(b"a");
        r.follow_log(t, vec![change(0, "a", true)]);
        effects(&mut r);
        // Link 0 answers -MOVED: the map was behind, `a` now belongs to link 1.
        assert_eq!(r.refused(0, Some(slot_of_a)).as_deref(), Some("a"));
        assert_eq!(effects(&mut r), [Effect::Refresh, Effect::Applied(0)]);
        let owned = |i: usize| match i {
            1 => vec![("a".to_string(), Some(topic("a")))],
            _ => Vec::new(),
        };
        r.resync(|c| (c == "a").then_some(1), owned);
        assert_eq!(effects(&mut r), [send(1, &["a"], &[])], "not confirmed yet");
        r.subscribed(1);
        let refill = HashSet::from([topic("a")]);
        assert_eq!(
            effects(&mut r),
            [
                Effect::Applied(1),
                Effect::Confirm(t),
                Effect::Refill(refill)
            ]
        );
    }

    #[test]
    fn a_refusal_for_another_slot_answers_nothing() {
        let t = tickets(1)[0];
        let mut r = restored(1);
        r.follow_log(t, vec![change(0, "a", true)]);
        effects(&mut r);
        let other = (cluster::slot(b"a") + 1) % 16384;
        assert_eq!(r.refused(0, Some(other)), None);
        assert_eq!(effects(&mut r), [Effect::Refresh]);
        r.subscribed(0);
        assert_eq!(effects(&mut r), [Effect::Applied(0), Effect::Confirm(t)]);
    }

    #[test]
    fn a_channel_taken_away_is_followed_and_our_own_unsubscribe_is_an_answer() {
        let [t1, t2] = tickets(2)[..] else { panic!() };
        let mut r = restored(1);
        r.follow_log(t1, vec![change(0, "a", true), change(0, "b", true)]);
        r.subscribed(0);
        r.subscribed(0);
        effects(&mut r);
        // Redis takes `a` away (its slot moved): the map is read again and `a` resubscribed
        // where it belongs.
        r.unsubscribed(0, "a");
        assert_eq!(effects(&mut r), [Effect::Refresh]);
        assert_eq!(r.subscriptions(0), 1);
        // Our own unsubscribe of `b` is answered as such.
        r.follow_log(t2, vec![change(0, "b", false)]);
        assert_eq!(effects(&mut r), [send(0, &[], &["b"])]);
        r.unsubscribed(0, "b");
        assert_eq!(effects(&mut r), [Effect::Applied(0), Effect::Confirm(t2)]);
        assert_eq!(r.subscriptions(0), 0);
    }

    #[test]
    fn a_link_that_goes_down_answers_what_it_owed_and_restores_everything_when_back() {
        let t = tickets(1)[0];
        let mut r = restored(1);
        r.follow_log(t, vec![change(0, "a", true)]);
        effects(&mut r);
        assert!(r.down(0), "it had been restored");
        assert_eq!(
            effects(&mut r),
            [Effect::Confirm(t)],
            "moot, not waited for"
        );
        assert!(!r.is_restored(0));
        let stale = r.attempt(0);
        let current = r.attempt(0);
        assert!(!r.awaits(0, stale), "a stale attempt's answer is dropped");
        assert!(r.awaits(0, current));
        let owned = vec![
            ("a".to_string(), Some(topic("a"))),
            ("all".to_string(), None),
        ];
        r.connected(0, owned);
        assert!(!r.awaits(0, current), "answered once");
        assert_eq!(effects(&mut r), [send(0, &["a", "all"], &[])]);
        r.subscribed(0);
        r.subscribed(0);
        let refill = HashSet::from([topic("a")]);
        assert_eq!(
            effects(&mut r),
            [
                Effect::Applied(0),
                Effect::Refill(refill),
                Effect::Restored(0)
            ]
        );
        assert!(r.all_restored());
    }

    #[test]
    fn a_confirmation_nobody_asked_for_takes_the_link_down() {
        let mut r = restored(1);
        r.subscribed(0);
        assert!(matches!(effects(&mut r)[..], [Effect::Down(0, _)]));
    }

    #[test]
    fn a_new_map_keeps_the_links_of_masters_that_stay_and_drops_moved_channels() {
        let t = tickets(1)[0];
        let mut r = restored(2);
        r.follow_log(t, vec![change(0, "a", true), change(1, "b", true)]);
        r.subscribed(0);
        effects(&mut r);
        // Master 1 is gone (what it owed is answered), master 0 stays as link 1, and a new
        // master 0 owns `a` now.
        let owner = |c: &str| (c == "a").then_some(0);
        let owned = |i: usize| match i {
            0 => vec![("a".to_string(), Some(topic("a")))],
            _ => Vec::new(),
        };
        r.follow_map(&[None, Some(0)], owner, owned);
        assert_eq!(effects(&mut r), [Effect::Confirm(t)]);
        assert_eq!(r.subscriptions(1), 0, "`a` is no longer held where it was");
        assert!(!r.is_restored(0) && r.is_restored(1));
    }
}
