//! What travels through Redis: channel names under the prefix, and a small versioned header in
//! front of the already-encoded frame, so receivers do no JSON work.
//!
//! Payload: `[version = 1][n = node id length][node id: n bytes][frame text]`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::interest::Topic;
use crate::protocol::{Channel, Frame, Target, UserId};

const VERSION: u8 = 1;

/// Longest node id, so its length fits the header's one byte.
pub const MAX_NODE_ID_BYTES: usize = 255;

/// Redis channel names: `<prefix>u:<user>`, `<prefix>c:<channel>`, `<prefix>all`.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
        }
    }

    pub fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::User(u) => format!("{}u:{}", self.prefix, u.as_str()),
            Topic::Channel(c) => format!("{}c:{}", self.prefix, c.as_str()),
        }
    }

    pub fn target(&self, target: &Target) -> String {
        match target {
            Target::User(u) => self.topic(&Topic::User(u.clone())),
            Target::Channel(c) => self.topic(&Topic::Channel(c.clone())),
            Target::All => self.all(),
        }
    }

    pub fn all(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// The target a Redis channel name stands for; `None` for a name not ours.
    pub fn parse(&self, name: &str) -> Option<Target> {
        let rest = name.strip_prefix(&self.prefix)?;
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

pub fn encode(node_id: &str, frame: &Frame) -> Bytes {
    let text = frame.as_str().as_bytes();
    let mut buf = BytesMut::with_capacity(2 + node_id.len() + text.len());
    buf.put_u8(VERSION);
    buf.put_u8(node_id.len() as u8);
    buf.put_slice(node_id.as_bytes());
    buf.put_slice(text);
    buf.freeze()
}

/// A received payload: who published it, and the frame.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub node_id: &'a [u8],
    pub frame: &'a [u8],
}

/// `None` for a payload of another version or a broken one.
pub fn decode(payload: &[u8]) -> Option<Decoded<'_>> {
    let [VERSION, n, rest @ ..] = payload else {
        return None;
    };
    let n = usize::from(*n);
    (rest.len() >= n).then(|| Decoded {
        node_id: &rest[..n],
        frame: &rest[n..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let n = Names::new("app:");
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
    fn payload_roundtrip() {
        let frame = Frame::pong();
        let bytes = encode("node-a", &frame);
        let d = decode(&bytes).unwrap();
        assert_eq!(d.node_id, b"node-a");
        assert_eq!(d.frame, frame.as_str().as_bytes());
        assert!(decode(&[2, 0]).is_none());
        assert!(decode(&[1, 5, b'a']).is_none());
        assert!(decode(&[]).is_none());
    }
}
