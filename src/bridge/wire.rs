//! What travels through Redis: channel and key names under the prefix, and a small versioned
//! header in front of the message's JSON payload.
//!
//! Payload: `[version = 2][instance: 8 bytes, big endian][kind][body]`. The instance is a
//! random number each process draws at start, so a process recognises its own messages even if
//! two processes were given the same `--node-id`. Kind 0 is a message, whose body is its JSON
//! payload: the receiver rebuilds the frame from the Redis channel's target and the payload, so
//! whatever arrives has the shape of a server frame. Kind 1 is the backend's word for a user
//! ([`Control`], on that user's channel). With history in Redis, kind 2 is a message with its
//! place in its topic, `<offset> <epoch> <JSON payload>` (written by the append script, which
//! alone knows the offset), and kind 3 a backend subscribe with the channel's position when it
//! was accepted, `<offset> <epoch> <control>`.
//!
//! Names: `<prefix>u:<user>`, `<prefix>c:<channel>`, `<prefix>all`, and the key
//! `<prefix>n:<node id>`. A prefix is zero or more segments of at least two characters, each
//! ending in `:`; one-letter segments and `all` name kinds. So the kind of every name is the
//! first one-letter segment (or the final `all`), and two different (prefix, topic) pairs never
//! meet on one Redis channel: fleet `app:` never hears fleet `app:u:`, which is refused.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::protocol::Topic;
use crate::protocol::{Channel, Control, Frame, Target, UserId};

const VERSION: u8 = 2;
const HEADER: usize = 10;
const MESSAGE: u8 = 0;
const CONTROL: u8 = 1;
const POSITIONED: u8 = 2;
const CONTROL_FROM: u8 = 3;
const PRESENCE: u8 = 4;
/// Longest epoch accepted from Redis (ours are 12 hex digits).
const MAX_EPOCH: usize = 32;

/// Longest node id.
pub const MAX_NODE_ID_BYTES: usize = 255;

/// Redis names under one prefix.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    /// On a Redis Cluster: every name of a topic carries the hash tag `{<kind>:<name>}`, so its
    /// shard channel and history keys share a slot.
    tagged: bool,
}

impl Names {
    /// # Errors
    /// A prefix another fleet's names could overlap with, or with characters Redis users would
    /// not expect in a name.
    pub fn new(prefix: &str, tagged: bool) -> Result<Self, String> {
        if tagged && prefix.contains(['{', '}']) {
            return Err(format!(
                "{prefix:?}: on a Redis Cluster braces are hash tags; use a prefix without them"
            ));
        }
        let mut rest = prefix;
        while !rest.is_empty() {
            let Some((segment, tail)) = rest.split_once(':') else {
                return Err(format!("{prefix:?} must end with ':' (e.g. \"{prefix}:\")"));
            };
            if segment.len() < 2 {
                return Err(format!(
                    "{prefix:?}: segment {segment:?} is too short; one-letter segments are \
                     reserved for fanfare's own names (u: users, c: channels), so a prefix like \
                     \"app:u:\" would overlap the fleet \"app:\""
                ));
            }
            if !segment.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("{prefix:?}: use printable ASCII without spaces"));
            }
            rest = tail;
        }
        Ok(Names {
            prefix: prefix.to_string(),
            tagged,
        })
    }

    pub fn topic(&self, topic: &Topic) -> String {
        let tail = self.tail(topic);
        format!("{}{tail}", self.prefix)
    }

    pub fn target(&self, target: &Target) -> String {
        match target {
            Target::User(u) => self.topic(&Topic::User(u.clone())),
            Target::Channel(c) => self.topic(&Topic::Channel(c.clone())),
            Target::All => self.all(),
        }
    }

    pub fn all(&self) -> String {
        match self.tagged {
            false => format!("{}all", self.prefix),
            true => format!("{}{{all}}", self.prefix),
        }
    }

    /// A topic's history: the key of its position (a hash: epoch `e`, last offset `o`) and of
    /// its stream of kept messages. Kinds `o:` and `h:`, then the topic's own name.
    pub fn history(&self, topic: &Topic) -> (String, String) {
        let tail = self.tail(topic);
        (
            format!("{}o:{tail}", self.prefix),
            format!("{}h:{tail}", self.prefix),
        )
    }

    /// Where the idempotency key `key` of a publication to `topic` is kept: beside the topic's
    /// history (its slot), so the append script sees it.
    pub fn once_in_topic(&self, topic: &Topic, key: &str) -> String {
        format!("{}i:{}:{key}", self.prefix, self.tail(topic))
    }

    /// Where the idempotency key `key` of a publication without history to `target` (its
    /// channel's name) is kept: in the registry's slot.
    pub fn once_in_registry(&self, target: &str, key: &str) -> String {
        let (registry, _) = self.presence_registry("");
        format!("{registry}:i:{target}:{key}")
    }

    /// `u:<user>` or `c:<channel>`, in braces on a cluster.
    fn tail(&self, topic: &Topic) -> String {
        let (kind, name) = match topic {
            Topic::User(u) => ('u', u.as_str()),
            Topic::Channel(c) => ('c', c.as_str()),
        };
        match self.tagged {
            false => format!("{kind}:{name}"),
            true => format!("{{{kind}:{name}}}"),
        }
    }

    /// A channel's presence in Redis (kinds `p:` `q:` `z:` `w:`, then the channel's own name,
    /// so all share its slot): a hash of each process's connections per user (and watchers),
    /// a hash of each user's total and info (field "" holds all connections), the users in
    /// order, and how many subscriptions in the fleet receive its events.
    pub fn presence(&self, channel: &Channel) -> [String; 4] {
        let tail = self.tail(&Topic::Channel(channel.clone()));
        ["p", "q", "z", "w"].map(|kind| format!("{}{kind}:{tail}", self.prefix))
    }

    /// Presence bookkeeping of the fleet, in one slot: the live processes (a sorted set by
    /// last heartbeat), and per process the channels it has members in.
    pub fn presence_registry(&self, instance: &str) -> (String, String) {
        let tag = if self.tagged {
            "{presence}"
        } else {
            "presence"
        };
        (
            format!("{}r:{tag}", self.prefix),
            format!("{}r:{tag}:{instance}", self.prefix),
        )
    }

    /// The fleet's webhooks, in the registry's slot: the stream of events (this name), the
    /// lease of the process that delivers them (`:lease`) and each URL's cursor (`:at:…`).
    pub fn webhooks(&self) -> String {
        let (registry, _) = self.presence_registry("");
        format!("{registry}:webhooks")
    }

    /// The key a process holds while it uses `node_id`.
    pub fn node_claim(&self, node_id: &str) -> String {
        format!("{}n:{node_id}", self.prefix)
    }

    /// The target a Redis channel name stands for; `None` for a name not ours.
    pub fn parse(&self, name: &str) -> Option<Target> {
        let rest = name.strip_prefix(&self.prefix)?;
        let rest = match self.tagged {
            false => rest,
            true => rest.strip_prefix('{')?.strip_suffix('}')?,
        };
        if rest == "all" {
            return Some(Target::All);
        }
        if let Some(user) = rest.strip_prefix("u:") {
            return UserId::new(user).ok().map(Target::User);
        }
        let channel = rest.strip_prefix("c:")?;
        Channel::new(channel).ok().map(Target::Channel)
    }
}

/// What travels: a message's JSON payload, or a control, with their place in the topic's
/// history when it has one.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Message(&'a [u8]),
    Control(&'a [u8]),
    Positioned(At<'a>, &'a [u8]),
    ControlFrom(At<'a>, &'a [u8]),
    /// A channel's `join` or `leave`, as the frame's JSON (written by the presence script).
    Presence(&'a [u8]),
}

/// A place in a topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At<'a> {
    pub offset: u64,
    pub epoch: &'a str,
}

pub fn encode(instance: u64, body: Body<'_>) -> Bytes {
    let (kind, at, bytes) = match body {
        Body::Message(b) => (MESSAGE, None, b),
        Body::Control(b) => (CONTROL, None, b),
        Body::Positioned(at, b) => (POSITIONED, Some(at), b),
        Body::ControlFrom(at, b) => (CONTROL_FROM, Some(at), b),
        Body::Presence(b) => (PRESENCE, None, b),
    };
    let mut buf = BytesMut::with_capacity(HEADER + 40 + bytes.len());
    buf.put_slice(&header(instance, kind));
    if let Some(at) = at {
        buf.put_slice(format!("{} {} ", at.offset, at.epoch).as_bytes());
    }
    buf.put_slice(bytes);
    buf.freeze()
}

/// The header of a positioned message, which the append script completes with the offset,
/// the epoch and the payload.
pub fn positioned_header(instance: u64) -> [u8; HEADER] {
    header(instance, POSITIONED)
}

/// The header of a presence event, which the presence scripts complete with its JSON.
pub fn presence_header(instance: u64) -> [u8; HEADER] {
    header(instance, PRESENCE)
}

fn header(instance: u64, kind: u8) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    h[0] = VERSION;
    h[1..9].copy_from_slice(&instance.to_be_bytes());
    h[9] = kind;
    h
}

/// An epoch as fanfare makes them: hex digits, so it needs no escaping in a frame.
pub fn is_epoch(epoch: &str) -> bool {
    (1..=MAX_EPOCH).contains(&epoch.len()) && epoch.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<offset> <epoch> <rest>`.
fn positioned(body: &[u8]) -> Option<(At<'_>, &[u8])> {
    let mut parts = body.splitn(3, |b| *b == b' ');
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let rest = parts.next()?;
    is_epoch(epoch).then_some((At { offset, epoch }, rest))
}

/// A received payload: which process published it, and what.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub instance: u64,
    pub body: Body<'a>,
}

/// `None` for a payload of another version or kind, or a broken one.
pub fn decode(bytes: &[u8]) -> Option<Decoded<'_>> {
    let (header, body) = bytes.split_at_checked(HEADER)?;
    let [VERSION, id @ .., kind] = header else {
        return None;
    };
    let body = match *kind {
        MESSAGE => Body::Message(body),
        CONTROL => Body::Control(body),
        POSITIONED => positioned(body).map(|(at, b)| Body::Positioned(at, b))?,
        CONTROL_FROM => positioned(body).map(|(at, b)| Body::ControlFrom(at, b))?,
        PRESENCE => Body::Presence(body),
        _ => return None,
    };
    Some(Decoded {
        instance: u64::from_be_bytes(id.try_into().ok()?),
        body,
    })
}

/// The control a received body is, if it is one for a user.
pub fn control(target: &Target, body: &[u8]) -> Option<(UserId, Control)> {
    match target {
        Target::User(user) => Control::decode(body).map(|c| (user.clone(), c)),
        Target::Channel(_) | Target::All => None,
    }
}

/// The frame a received message becomes: only a payload of at most `max` bytes that is one
/// JSON value, in the server's own frame shape for `target`. `None` for anything else.
pub fn frame(target: &Target, payload: &[u8], max: usize) -> Option<Frame> {
    checked(payload, max).map(|p| Frame::message(target, p))
}

/// [`frame`] for a message of a topic with history, at `offset`.
pub fn frame_at(target: &Target, payload: &[u8], offset: u64, max: usize) -> Option<Frame> {
    checked(payload, max).map(|p| Frame::message_at(target, p.get().as_bytes(), offset))
}

/// A presence event from Redis for a channel: a JSON object of type `join` or `leave` naming
/// that channel, rebuilt here; `None` for anything else.
pub fn presence_event(target: &Target, body: &[u8], max: usize) -> Option<(Channel, Frame)> {
    let Target::Channel(channel) = target else {
        return None;
    };
    if body.len() > max {
        return None;
    }
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    let kind = event.get("type")?.as_str()?;
    let ours = matches!(kind, "join" | "leave")
        && event.get("channel")?.as_str()? == channel.as_str()
        && event.get("user")?.is_string();
    ours.then(|| (channel.clone(), Frame::json(&event)))
}

/// `payload` if it is one JSON value of at most `max` bytes.
fn checked(payload: &[u8], max: usize) -> Option<&RawValue> {
    (payload.len() <= max)
        .then(|| serde_json::from_slice(payload).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let n = Names::new("app:", false).unwrap();
        let u = Target::User(UserId::new("42").unwrap());
        let c = Target::Channel(Channel::new("room:1").unwrap());
        for t in [u, c, Target::All] {
            assert_eq!(n.parse(&n.target(&t)), Some(t));
        }
        assert_eq!(n.target(&Target::All), "app:all");
        assert_eq!(n.parse("other:all"), None);
        assert_eq!(n.parse("app:x:1"), None);
    }

    #[test]
    fn on_a_cluster_a_topics_channel_and_keys_share_a_slot() {
        use super::super::cluster::slot;
        let n = Names::new("app:", true).unwrap();
        for user in ["42", "a}b", "{x}", "all"] {
            let topic = Topic::User(UserId::new(user).unwrap());
            let channel = n.topic(&topic);
            let (position, stream) = n.history(&topic);
            assert_eq!(
                slot(channel.as_bytes()),
                slot(position.as_bytes()),
                "{user}"
            );
            assert_eq!(slot(channel.as_bytes()), slot(stream.as_bytes()), "{user}");
            assert_eq!(n.parse(&channel), Some(topic.target()));
        }
        assert_eq!(n.target(&Target::All), "app:{all}");
        assert_eq!(n.parse("app:{all}"), Some(Target::All));
        assert_eq!(n.parse("app:all"), None, "a single Redis's name");
        assert!(Names::new("a{b}:", true).is_err());
        assert!(Names::new("a{b}:", false).is_ok());
    }

    #[test]
    fn prefixes_that_could_overlap_are_refused() {
        for ok in ["", "fanfare:", "app:prod:", "app:all:", "a-b.c:"] {
            assert!(Names::new(ok, false).is_ok(), "{ok}");
        }
        for bad in ["fanfare:u:", "app:c:", "u:", "app", "app:x", "a b:", ":"] {
            assert!(Names::new(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_two_fleets_share_a_channel() {
        let prefixes = ["", "ab:", "ab:all:", "ab:cd:", "all:"];
        let topics = [
            Target::All,
            Target::User(UserId::new("all").unwrap()),
            Target::User(UserId::new("cd:u:x").unwrap()),
            Target::User(UserId::new("x").unwrap()),
            Target::Channel(Channel::new("all").unwrap()),
            Target::Channel(Channel::new("u:x").unwrap()),
        ];
        let mut seen = std::collections::HashMap::new();
        for (p, tagged) in prefixes.iter().flat_map(|p| [(*p, false), (*p, true)]) {
            let names = Names::new(p, tagged).unwrap();
            for t in &topics {
                let name = names.target(t);
                if let Some(other) = seen.insert(name.clone(), (p, tagged, t.clone())) {
                    panic!("{name} is both {other:?} and {:?}", (p, tagged, t));
                }
                // And each fleet reads back only its own.
                for q in prefixes.iter().filter(|q| **q != p) {
                    let theirs = Names::new(q, tagged).unwrap();
                    assert!(
                        theirs
                            .parse(&name)
                            .is_none_or(|t2| theirs.target(&t2) != name),
                        "{q} would take {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_json_within_the_limit_becomes_a_frame() {
        let t = Target::All;
        assert!(frame(&t, br#"{"a":1}"#, 7).is_some());
        assert!(frame(&t, br#"{"a":1}"#, 6).is_none());
        assert!(frame(&t, br#"{"a":1} {}"#, 100).is_none());
        assert!(frame(&t, b"\"\xff\"", 100).is_none());
        let f = frame(&t, b" [1, 2] ", 100).unwrap();
        assert_eq!(f.as_str(), r#"{"type":"message","message":[1, 2]}"#);
    }

    #[test]
    fn payload_roundtrip() {
        let bytes = encode(7, Body::Message(br#"{"a":1}"#));
        let d = decode(&bytes).unwrap();
        assert_eq!(d.instance, 7);
        assert_eq!(d.body, Body::Message(br#"{"a":1}"#));
        let bytes = encode(8, Body::Control(b"snews"));
        assert_eq!(decode(&bytes).unwrap().body, Body::Control(b"snews"));
        assert!(decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'1']).is_none());
        assert!(decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 9, b'1']).is_none());
        assert!(decode(&[2, 5, b'a']).is_none());
        assert!(decode(&[]).is_none());
        let at = At {
            offset: 42,
            epoch: "0a1b",
        };
        let bytes = encode(9, Body::Positioned(at, br#"{"a":1}"#));
        assert_eq!(bytes[..HEADER], positioned_header(9));
        assert_eq!(&bytes[HEADER..], b"42 0a1b {\"a\":1}");
        assert_eq!(
            decode(&bytes).unwrap().body,
            Body::Positioned(at, br#"{"a":1}"#)
        );
        let bytes = encode(9, Body::ControlFrom(at, b"snews"));
        assert_eq!(
            decode(&bytes).unwrap().body,
            Body::ControlFrom(at, b"snews")
        );
        for bad in ["x 0a {}", "1 zz {}", "1  {}", "1 0a", "-1 0a {}"] {
            let mut b = header(9, POSITIONED).to_vec();
            b.extend_from_slice(bad.as_bytes());
            assert!(decode(&b).is_none(), "{bad}");
        }
        let user = Target::User(UserId::new("u").unwrap());
        assert!(control(&user, b"dbye").is_some());
        assert!(control(&Target::All, b"dbye").is_none());
    }
}
