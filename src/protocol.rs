//! Wire types: identifiers, client → server messages, and server → client frames.
//!
//! Server frames are encoded once into a [`Frame`] whose bytes are shared (refcounted) by every
//! recipient; nothing here runs per recipient.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Longest user id (`sub` claim, `userId` field) in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest channel name in bytes.
pub const MAX_CHANNEL_BYTES: usize = 200;
/// Most workers one process may run: a [`WorkerSet`] is a 64-bit mask.
pub const MAX_WORKERS: usize = 64;

/// Index of a worker thread inside one process (`0..workers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u8);

/// One WebSocket connection. Carries its worker, so ids are unique per process without a shared
/// counter: each worker numbers its own connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub worker: WorkerId,
    pub seq: u64,
}

/// A set of workers, as a bitmask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerSet(pub u64);

impl WorkerSet {
    pub fn all(workers: usize) -> Self {
        if workers >= 64 {
            WorkerSet(u64::MAX)
        } else {
            WorkerSet((1u64 << workers) - 1)
        }
    }
    pub fn contains(self, w: WorkerId) -> bool {
        self.0 & (1 << w.0) != 0
    }
    pub fn with(self, w: WorkerId) -> Self {
        WorkerSet(self.0 | (1 << w.0))
    }
    pub fn without(self, w: WorkerId) -> Self {
        WorkerSet(self.0 & !(1 << w.0))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = WorkerId> {
        (0..64u8)
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(WorkerId)
    }
}

/// Why a name was refused; the text goes to the client or the HTTP caller as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("user id must be 1 to 256 bytes")]
    UserIdLength,
    #[error("channel name must be 1 to 200 bytes")]
    ChannelLength,
    #[error("channel name may contain only A-Z a-z 0-9 _ - . : @ /")]
    ChannelChars,
}

/// A user id: the token's `sub`, the `userId` of `POST /message`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_USER_ID_BYTES {
            return Err(NameError::UserIdLength);
        }
        Ok(UserId(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A channel name: 1 to 200 bytes of `A-Z a-z 0-9 _ - . : @ /`. None of these needs escaping in
/// JSON, which [`Frame::channel`] relies on.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

impl Channel {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_CHANNEL_BYTES {
            return Err(NameError::ChannelLength);
        }
        if !s.bytes().all(is_channel_byte) {
            return Err(NameError::ChannelChars);
        }
        Ok(Channel(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/')
}

/// Who should receive a published message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    User(UserId),
    Channel(Channel),
    All,
}

/// One encoded server → client WebSocket message, shared by every recipient. A thin pointer,
/// so each connection's outbox slot is 8 bytes.
#[derive(Clone, Debug)]
pub struct Frame(Arc<Message>);

impl Frame {
    /// `{"type":"message","message":<payload>}`; the payload's text is copied as it came, so
    /// numbers keep every digit.
    pub fn direct(payload: &RawValue) -> Self {
        let p = payload.get();
        let mut s = String::with_capacity(29 + p.len());
        s.push_str(r#"{"type":"message","message":"#);
        s.push_str(p);
        s.push('}');
        Frame::text(s)
    }

    /// `{"type":"message","channel":"<c>","message":<payload>}`.
    pub fn channel(channel: &Channel, payload: &RawValue) -> Self {
        let p = payload.get();
        let mut s = String::with_capacity(42 + channel.as_str().len() + p.len());
        s.push_str(r#"{"type":"message","channel":""#);
        s.push_str(channel.as_str());
        s.push_str(r#"","message":"#);
        s.push_str(p);
        s.push('}');
        Frame::text(s)
    }

    pub fn subscribed(channel: &Channel) -> Self {
        Frame::text(format!(
            r#"{{"type":"subscribed","channel":"{}"}}"#,
            channel.as_str()
        ))
    }

    pub fn unsubscribed(channel: &Channel) -> Self {
        Frame::text(format!(
            r#"{{"type":"unsubscribed","channel":"{}"}}"#,
            channel.as_str()
        ))
    }

    pub fn pong() -> Self {
        Frame(Arc::new(Message::Text(Utf8Bytes::from_static(
            r#"{"type":"pong"}"#,
        ))))
    }

    pub fn error(code: ErrorCode, detail: &str) -> Self {
        let v = serde_json::json!({"type": "error", "error": code.as_str(), "detail": detail});
        Frame::text(v.to_string())
    }

    /// A frame as another machine encoded it; `None` if the bytes are not UTF-8.
    pub fn from_encoded(bytes: bytes::Bytes) -> Option<Self> {
        Utf8Bytes::try_from(bytes)
            .ok()
            .map(|t| Frame(Arc::new(Message::Text(t))))
    }

    /// A WebSocket ping, sent by the server every ping interval.
    pub fn ping() -> Self {
        Frame(Arc::new(Message::Ping(Default::default())))
    }

    fn text(s: String) -> Self {
        Frame(Arc::new(Message::Text(s.into())))
    }

    /// The text of a text frame; empty for a ping.
    pub fn as_str(&self) -> &str {
        match &*self.0 {
            Message::Text(t) => t.as_str(),
            _ => "",
        }
    }

    /// The frame as a WebSocket message: a refcount bump, no copy of the payload.
    pub fn to_message(&self) -> Message {
        (*self.0).clone()
    }
}

/// Codes of the `error` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A client → server text frame, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Subscribe(Channel),
    Unsubscribe(Channel),
    Ping,
}

/// Why a client frame was not understood; answered with `bad_request`, the connection stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a JSON object with a string \"type\"")]
    NotJson,
    #[error("unknown type")]
    UnknownType,
    #[error("\"channel\" must be a string")]
    MissingChannel,
    #[error(transparent)]
    BadChannel(#[from] NameError),
}

impl ClientMessage {
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow, rename = "type")]
            kind: std::borrow::Cow<'a, str>,
            #[serde(borrow, default)]
            channel: Option<std::borrow::Cow<'a, str>>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|_| DecodeError::NotJson)?;
        let channel = || -> Result<Channel, DecodeError> {
            let c = raw.channel.as_deref().ok_or(DecodeError::MissingChannel)?;
            Ok(Channel::new(c)?)
        };
        match &*raw.kind {
            "subscribe" => Ok(ClientMessage::Subscribe(channel()?)),
            "unsubscribe" => Ok(ClientMessage::Unsubscribe(channel()?)),
            "ping" => Ok(ClientMessage::Ping),
            _ => Err(DecodeError::UnknownType),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn frames_keep_payload_text() {
        let p = raw(r#"{"n":123456789012345678901234567890}"#);
        assert_eq!(
            Frame::direct(&p).as_str(),
            r#"{"type":"message","message":{"n":123456789012345678901234567890}}"#
        );
        let c = Channel::new("room:1").unwrap();
        let f = Frame::channel(&c, &p);
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["channel"], "room:1");
        assert!(f.as_str().contains("123456789012345678901234567890"));
    }

    #[test]
    fn channel_names() {
        assert!(Channel::new("a-Z_0.9:@/x").is_ok());
        assert_eq!(Channel::new(""), Err(NameError::ChannelLength));
        assert_eq!(
            Channel::new(&"a".repeat(201)),
            Err(NameError::ChannelLength)
        );
        assert!(Channel::new(&"a".repeat(200)).is_ok());
        assert_eq!(Channel::new("a b"), Err(NameError::ChannelChars));
        assert_eq!(Channel::new("a\"b"), Err(NameError::ChannelChars));
    }

    #[test]
    fn decode_client_messages() {
        let c = Channel::new("news").unwrap();
        assert_eq!(
            ClientMessage::decode(r#"{"type":"subscribe","channel":"news"}"#),
            Ok(ClientMessage::Subscribe(c.clone()))
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"unsubscribe","channel":"news"}"#),
            Ok(ClientMessage::Unsubscribe(c))
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(ClientMessage::decode("nope"), Err(DecodeError::NotJson));
        assert_eq!(
            ClientMessage::decode(r#"{"type":"x"}"#),
            Err(DecodeError::UnknownType)
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"subscribe"}"#),
            Err(DecodeError::MissingChannel)
        );
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"subscribe","channel":"a b"}"#),
            Err(DecodeError::BadChannel(_))
        ));
    }

    #[test]
    fn worker_sets() {
        let s = WorkerSet::default().with(WorkerId(0)).with(WorkerId(3));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![WorkerId(0), WorkerId(3)]);
        assert!(s.without(WorkerId(0)).without(WorkerId(3)).is_empty());
        assert_eq!(WorkerSet::all(2).0, 0b11);
        assert_eq!(WorkerSet::all(64).0, u64::MAX);
    }
}
