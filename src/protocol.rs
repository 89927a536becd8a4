//! Wire types: identifiers, client → server messages, and what the server's messages say.
//!
//! Each server message is encoded here once, as JSON, straight into a [`Frame`] (the transport's
//! framing is [`crate::frame`]'s) whose bytes every recipient shares; nothing here runs per
//! recipient.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::frame::Frame;

/// `bytes` random bytes as hex: epochs, instance ids, generated secrets.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client's "I have everything up to here" of a topic with history (PROTOCOL section 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// Most members in one presence answer; more are had page by page (`after`).
pub const MAX_PAGE: usize = 1000;
/// Members in a presence answer that names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// What a client can be interested in: its own user id, or a channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    User(UserId),
    Channel(Channel),
}

impl Topic {
    /// The topic a message for `target` belongs to; broadcasts belong to none.
    pub fn of(target: &Target) -> Option<Topic> {
        match target {
            Target::User(u) => Some(Topic::User(u.clone())),
            Target::Channel(c) => Some(Topic::Channel(c.clone())),
            Target::All => None,
        }
    }

    /// Who a message of this topic is for.
    pub fn target(&self) -> Target {
        match self {
            Topic::User(u) => Target::User(u.clone()),
            Topic::Channel(c) => Target::Channel(c.clone()),
        }
    }
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    #[error("channel name may contain only A-Z a-z 0-9 _ - . : @ / = , ; #")]
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

/// A channel name: 1 to 200 bytes of `A-Z a-z 0-9 _ - . : @ / = , ; #` (every name Pusher
/// allows, `#server-to-user-` too). None of these needs escaping in
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
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=' | b',' | b';' | b'#'
        )
}

/// Who should receive a published message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    User(UserId),
    Channel(Channel),
    All,
}

impl Target {
    /// `u:<user>`, `c:<channel>` or `all`: one name per target.
    pub fn name(&self) -> String {
        match self {
            Target::User(u) => format!("u:{}", u.as_str()),
            Target::Channel(c) => format!("c:{}", c.as_str()),
            Target::All => "all".to_string(),
        }
    }
}

const DIRECT_HEAD: &str = r#"{"type":"message","message":"#;
const CHANNEL_HEAD: &str = r#"{"type":"message","channel":""#;
const CHANNEL_MIDDLE: &str = r#"","message":"#;

impl Frame {
    /// `{"type":"message","message":<payload>}`; the payload's text is copied as it came, so
    /// numbers keep every digit.
    pub fn direct(payload: &RawValue) -> Self {
        Frame::text_bytes(&[DIRECT_HEAD.as_bytes(), payload.get().as_bytes(), b"}"])
    }

    /// `{"type":"message","channel":"<c>","message":<payload>}`.
    pub fn channel(channel: &Channel, payload: &RawValue) -> Self {
        Frame::text_bytes(&[
            CHANNEL_HEAD.as_bytes(),
            channel.as_str().as_bytes(),
            CHANNEL_MIDDLE.as_bytes(),
            payload.get().as_bytes(),
            b"}",
        ])
    }

    /// The published payload inside a frame built by [`Frame::message`] or
    /// [`Frame::message_at`] for `target`.
    pub fn message_payload(&self, target: &Target) -> Option<&[u8]> {
        let mut rest = self.payload().strip_prefix(br#"{"type":"message","#)?;
        if let Target::Channel(c) = target {
            rest = rest
                .strip_prefix(br#""channel":""#)?
                .strip_prefix(c.as_str().as_bytes())?
                .strip_prefix(b"\",")?;
        }
        if let Some(after) = rest.strip_prefix(br#""offset":"#) {
            let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
            rest = after[digits..].strip_prefix(b",")?;
        }
        rest.strip_prefix(br#""message":"#)?.strip_suffix(b"}")
    }

    /// The frame a message for `target` is: [`Frame::direct`] for a user or a broadcast,
    /// [`Frame::channel`] for a channel.
    pub fn message(target: &Target, payload: &RawValue) -> Self {
        match target {
            Target::Channel(c) => Frame::channel(c, payload),
            Target::User(_) | Target::All => Frame::direct(payload),
        }
    }

    /// A message of a topic with history: `{"type":"message",("channel":"<c>",)"offset":N,
    /// "message":<payload>}`. `payload` is JSON text already checked.
    pub fn message_at(target: &Target, payload: &[u8], offset: u64) -> Self {
        // On the stack: one of these is made for every message relayed with history.
        let mut digits = itoa::Buffer::new();
        let offset = digits.format(offset).as_bytes();
        let tail: [&[u8]; 5] = [br#""offset":"#, offset, br#","message":"#, payload, b"}"];
        let head: &[u8] = br#"{"type":"message","#;
        match target {
            Target::Channel(c) => {
                let [a, b, c_, d, e] = tail;
                let channel = c.as_str().as_bytes();
                Frame::text_bytes(&[head, br#""channel":""#, channel, b"\",", a, b, c_, d, e])
            }
            Target::User(_) | Target::All => {
                let [a, b, c, d, e] = tail;
                Frame::text_bytes(&[head, a, b, c, d, e])
            }
        }
    }

    /// `subscribed` for a channel with history: where it stands, and whether a resume worked.
    pub fn subscribed_at(
        channel: &Channel,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) -> Self {
        let head = format!(r#"{{"type":"subscribed","channel":"{}""#, channel.as_str());
        Frame::with_position(&head, epoch, offset, recovered)
    }

    /// [`subscribed_at`](Self::subscribed_at) for a subscription whose messages may come as
    /// deltas: `"delta":"fossil"` says so.
    pub fn subscribed_at_with_deltas(
        channel: &Channel,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) -> Self {
        let head = format!(
            r#"{{"type":"subscribed","channel":"{}","delta":"fossil""#,
            channel.as_str()
        );
        Frame::with_position(&head, epoch, offset, recovered)
    }

    /// Message `offset` of `channel` as a fossil delta (`delta`, a JSON string's text, quotes
    /// included) against the channel's message before it.
    pub fn message_delta(channel: &Channel, offset: u64, delta: &str) -> Self {
        let offset = offset.to_string();
        Frame::text_parts(&[
            r#"{"type":"message","channel":""#,
            channel.as_str(),
            r#"","offset":"#,
            &offset,
            r#","delta":true,"message":"#,
            delta,
            "}",
        ])
    }

    /// The first frame of a connection when history is on: where the user's direct messages
    /// stand, and whether a resume worked.
    pub fn connected(epoch: &str, offset: u64, recovered: Option<bool>) -> Self {
        Frame::with_position(r#"{"type":"connected""#, epoch, offset, recovered)
    }

    /// `head` (an open JSON object), then `recovered`, `offset` and `epoch`, in the order
    /// PROTOCOL.md shows them. Epochs are hex, so nothing needs escaping.
    fn with_position(head: &str, epoch: &str, offset: u64, recovered: Option<bool>) -> Self {
        let recovered = match recovered {
            Some(r) => format!(r#","recovered":{r}"#),
            None => String::new(),
        };
        let tail = format!(r#"{recovered},"offset":{offset},"epoch":"{epoch}"}}"#);
        Frame::text_parts(&[head, &tail])
    }

    /// `subscribed` for a channel with history whose position cannot be read now (Redis
    /// unreachable): no offset, no epoch, and a resume is not recovered.
    /// `deltas`: the subscription takes deltas (`"delta":"fossil"`).
    pub fn subscribed_unpositioned(
        channel: &Channel,
        recovered: Option<bool>,
        deltas: bool,
    ) -> Self {
        let deltas = if deltas { r#","delta":"fossil""# } else { "" };
        let tail = match recovered {
            Some(r) => format!(r#""{deltas},"recovered":{r}}}"#),
            None => format!(r#""{deltas}}}"#),
        };
        Frame::text_parts(&[
            r#"{"type":"subscribed","channel":""#,
            channel.as_str(),
            &tail,
        ])
    }

    /// `connected` when the user's position cannot be read now (see
    /// [`subscribed_unpositioned`](Self::subscribed_unpositioned)).
    pub fn connected_unpositioned(recovered: Option<bool>) -> Self {
        match recovered {
            Some(r) => Frame::text_parts(&[&format!(r#"{{"type":"connected","recovered":{r}}}"#)]),
            None => Frame::text_parts(&[r#"{"type":"connected"}"#]),
        }
    }

    pub fn subscribed(channel: &Channel) -> Self {
        Frame::text_parts(&[
            r#"{"type":"subscribed","channel":""#,
            channel.as_str(),
            r#""}"#,
        ])
    }

    pub fn unsubscribed(channel: &Channel) -> Self {
        Frame::text_parts(&[
            r#"{"type":"unsubscribed","channel":""#,
            channel.as_str(),
            r#""}"#,
        ])
    }

    pub fn pong() -> Self {
        Frame::text_parts(&[r#"{"type":"pong"}"#])
    }

    /// A user's first connection subscribed to `channel` (presence, section "Presence").
    pub fn join(channel: &Channel, user: &UserId, info: Option<&str>) -> Self {
        Frame::presence_event("join", channel, user, info)
    }

    /// A user's last connection left `channel`.
    pub fn leave(channel: &Channel, user: &UserId, info: Option<&str>) -> Self {
        Frame::presence_event("leave", channel, user, info)
    }

    fn presence_event(kind: &str, channel: &Channel, user: &UserId, info: Option<&str>) -> Self {
        // The user id may need escaping; `info` is JSON already (checked when the token was).
        let user = serde_json::Value::from(user.as_str()).to_string();
        let mut parts = vec![
            r#"{"type":""#,
            kind,
            r#"","channel":""#,
            channel.as_str(),
            r#"","user":"#,
            &user,
        ];
        if let Some(info) = info {
            parts.extend([r#","info":"#, info]);
        }
        parts.push("}");
        Frame::text_parts(&parts)
    }

    /// Any JSON reply (presence answers), encoded as it is.
    pub fn json(value: &serde_json::Value) -> Self {
        Frame::text_parts(&[&value.to_string()])
    }

    pub fn error(code: ErrorCode, detail: &str) -> Self {
        let v = serde_json::json!({"type": "error", "error": code.as_str(), "detail": detail});
        Frame::text_parts(&[&v.to_string()])
    }

    /// `{"type":"refreshed","exp":<unix seconds>}`, without `exp` for a token that has none.
    pub fn refreshed(exp: Option<u64>) -> Self {
        match exp {
            Some(exp) => {
                Frame::text_parts(&[r#"{"type":"refreshed","exp":"#, &exp.to_string(), "}"])
            }
            None => Frame::text_parts(&[r#"{"type":"refreshed"}"#]),
        }
    }

    /// `{"type":"expiring","exp":<unix seconds>}`: refresh now or be closed at `exp`.
    pub fn expiring(exp: u64) -> Self {
        Frame::text_parts(&[r#"{"type":"expiring","exp":"#, &exp.to_string(), "}"])
    }
}

/// What the backend tells a user's connections through the server API (`POST /disconnect`,
/// `/subscribe`, `/unsubscribe`); routed like a direct message to that user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Close every connection with 4003 and this reason.
    Disconnect(Arc<str>),
    /// Subscribe every connection, whatever its token allows.
    Subscribe(Channel),
    /// End every connection's subscription.
    Unsubscribe(Channel),
}

/// Longest reason of a `POST /disconnect`, in bytes (it goes into a close frame).
pub const MAX_DISCONNECT_REASON_BYTES: usize = 120;

impl Control {
    /// Compact form for the Redis wire: a letter, then the reason or the channel.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Control::Disconnect(reason) => (b'd', &**reason),
            Control::Subscribe(c) => (b's', c.as_str()),
            Control::Unsubscribe(c) => (b'u', c.as_str()),
        };
        let mut out = Vec::with_capacity(1 + text.len());
        out.push(kind);
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// `None` for bytes [`Control::encode`] does not make.
    pub fn decode(bytes: &[u8]) -> Option<Control> {
        let (kind, text) = bytes.split_first()?;
        let text = std::str::from_utf8(text).ok()?;
        match kind {
            b'd' if text.len() <= MAX_DISCONNECT_REASON_BYTES => {
                Some(Control::Disconnect(text.into()))
            }
            b's' => Channel::new(text).ok().map(Control::Subscribe),
            b'u' => Channel::new(text).ok().map(Control::Unsubscribe),
            _ => None,
        }
    }
}

/// Codes of the `error` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    /// What was asked needs Redis, which cannot be reached now.
    Unavailable,
    /// Over `--client-rate`: the frame was dropped.
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

/// A client → server text frame, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Subscribe; with `since`, resume after that offset (section 7); with `presence`, also
    /// receive the channel's `join` and `leave` events; with `delta` (`"delta":"fossil"`), its
    /// messages may come as deltas (section 10).
    Subscribe {
        channel: Channel,
        since: Option<Since>,
        presence: bool,
        delta: bool,
    },
    /// The members of a subscribed channel, a page at a time.
    Presence {
        channel: Channel,
        after: Option<UserId>,
        limit: usize,
    },
    /// How many users and connections a subscribed channel has.
    PresenceCount(Channel),
    Unsubscribe(Channel),
    Ping,
    /// A new token for this connection (section 8).
    Refresh(String),
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
    #[error("\"token\" must be a string")]
    MissingToken,
    #[error(transparent)]
    BadChannel(#[from] NameError),
    #[error("\"since\" must be an object {{\"offset\": <integer ≥ 0>, \"epoch\": <string>}}")]
    BadSince,
    #[error("\"limit\" must be an integer from 1 to {}", MAX_PAGE)]
    BadLimit,
    #[error("\"delta\" must be \"fossil\"")]
    BadDelta,
}

impl ClientMessage {
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow, rename = "type")]
            kind: std::borrow::Cow<'a, str>,
            #[serde(borrow, default)]
            channel: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            token: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            since: Option<&'a RawValue>,
            #[serde(default)]
            presence: bool,
            #[serde(borrow, default)]
            after: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            limit: Option<&'a RawValue>,
            #[serde(borrow, default)]
            delta: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct RawSince {
            offset: u64,
            epoch: String,
        }
        // Only an object is a `since` (serde would take `[5, "e"]` for one too).
        let since = |raw: Option<&RawValue>| -> Result<Option<RawSince>, DecodeError> {
            let Some(raw) = raw.filter(|r| r.get() != "null") else {
                return Ok(None);
            };
            if !raw.get().trim_start().starts_with('{') {
                return Err(DecodeError::BadSince);
            }
            serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|_| DecodeError::BadSince)
        };
        let limit = |raw: Option<&RawValue>| -> Result<usize, DecodeError> {
            let Some(raw) = raw.filter(|r| r.get() != "null") else {
                return Ok(DEFAULT_PAGE);
            };
            serde_json::from_str::<usize>(raw.get())
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or(DecodeError::BadLimit)
        };
        let raw: Raw = serde_json::from_str(text).map_err(|_| DecodeError::NotJson)?;
        let channel = || -> Result<Channel, DecodeError> {
            let c = raw.channel.as_deref().ok_or(DecodeError::MissingChannel)?;
            Ok(Channel::new(c)?)
        };
        match &*raw.kind {
            "subscribe" => {
                let since = since(raw.since)?.map(|s| Since {
                    offset: s.offset,
                    epoch: s.epoch,
                });
                let delta = match raw.delta.map(RawValue::get) {
                    None | Some("null") => false,
                    Some(r#""fossil""#) => true,
                    Some(_) => return Err(DecodeError::BadDelta),
                };
                Ok(ClientMessage::Subscribe {
                    channel: channel()?,
                    since,
                    presence: raw.presence,
                    delta,
                })
            }
            "presence" => Ok(ClientMessage::Presence {
                channel: channel()?,
                after: match raw.after.as_deref() {
                    Some(a) => Some(UserId::new(a)?),
                    None => None,
                },
                limit: limit(raw.limit)?,
            }),
            "presence_count" => Ok(ClientMessage::PresenceCount(channel()?)),
            "unsubscribe" => Ok(ClientMessage::Unsubscribe(channel()?)),
            "ping" => Ok(ClientMessage::Ping),
            "refresh" => match raw.token {
                Some(token) => Ok(ClientMessage::Refresh(token.into_owned())),
                None => Err(DecodeError::MissingToken),
            },
            _ => Err(DecodeError::UnknownType),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_reads_back_from_every_message_frame() {
        let ch = Target::Channel(Channel::new("c").unwrap());
        let user = Target::User(UserId::new("u").unwrap());
        let payload = RawValue::from_string(r#"{"a":[1,"}"]}"#.into()).unwrap();
        for target in [&ch, &user, &Target::All] {
            let plain = Frame::message(target, &payload);
            assert_eq!(
                plain.message_payload(target),
                Some(payload.get().as_bytes())
            );
        }
        for target in [&ch, &user] {
            let at = Frame::message_at(target, payload.get().as_bytes(), 42);
            assert_eq!(at.message_payload(target), Some(payload.get().as_bytes()));
        }
        let other = Target::Channel(Channel::new("d").unwrap());
        assert_eq!(Frame::message(&ch, &payload).message_payload(&other), None);
    }

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
    fn frames_are_whole_websocket_frames() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        for len in [0usize, 10, 125, 126, 1000, 65_535, 65_536, 100_000] {
            let text = "x".repeat(len);
            let f = Frame::error(ErrorCode::BadRequest, &text);
            let mut cursor = std::io::Cursor::new(f.bytes().to_vec());
            let (header, payload_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert_eq!(payload_len as usize, f.payload().len());
            assert_eq!(
                cursor.position() as usize + f.payload().len(),
                f.bytes().len()
            );
            let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
            assert_eq!(v["detail"].as_str().unwrap().len(), len);
        }
        assert_eq!(&Frame::ping().bytes()[..], &[0x89, 0]);
        let close = Frame::close(1008, "slow consumer");
        assert_eq!(&close.bytes()[..4], &[0x88, 15, 0x03, 0xF0]);
    }

    #[test]
    fn frames_with_offsets_and_positions() {
        let c = Channel::new("news").unwrap();
        let f = Frame::message_at(&Target::Channel(c.clone()), b"{\"a\":1}", 42);
        assert_eq!(
            f.as_str(),
            r#"{"type":"message","channel":"news","offset":42,"message":{"a":1}}"#
        );
        let f = Frame::message_at(&Target::User(UserId::new("u").unwrap()), b"7", 3);
        assert_eq!(f.as_str(), r#"{"type":"message","offset":3,"message":7}"#);
        let v: serde_json::Value =
            serde_json::from_str(Frame::subscribed_at(&c, "e", 5, Some(true)).as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"subscribed","channel":"news","recovered":true,"offset":5,"epoch":"e"})
        );
        let v: serde_json::Value =
            serde_json::from_str(Frame::connected("e", 0, None).as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"connected","offset":0,"epoch":"e"})
        );
    }

    #[test]
    fn the_payload_comes_back_out_of_its_frame() {
        let p = raw(r#"{"x":[1,2]}"#);
        let c = Target::Channel(Channel::new("a:b").unwrap());
        for t in [
            Target::All,
            Target::User(UserId::new("u").unwrap()),
            c.clone(),
        ] {
            let f = Frame::message(&t, &p);
            assert_eq!(f.message_payload(&t), Some(p.get().as_bytes()));
        }
        let other = Target::Channel(Channel::new("a:c").unwrap());
        assert_eq!(Frame::message(&c, &p).message_payload(&other), None);
    }

    #[test]
    fn controls_roundtrip_on_the_wire() {
        let c = Channel::new("news").unwrap();
        for control in [
            Control::Disconnect("bye".into()),
            Control::Disconnect("".into()),
            Control::Subscribe(c.clone()),
            Control::Unsubscribe(c),
        ] {
            assert_eq!(Control::decode(&control.encode()), Some(control));
        }
        assert_eq!(Control::decode(b"sa b"), None);
        assert_eq!(Control::decode(b"x"), None);
        assert_eq!(Control::decode(b""), None);
        let long = [b"d".as_slice(), &[b'x'; 121]].concat();
        assert_eq!(Control::decode(&long), None);
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
        assert!(Channel::new("private-a=b,c;d").is_ok());
        assert!(Channel::new("#server-to-user-42").is_ok());
    }

    #[test]
    fn decode_client_messages() {
        let c = Channel::new("news").unwrap();
        assert_eq!(
            ClientMessage::decode(r#"{"type":"subscribe","channel":"news"}"#),
            Ok(ClientMessage::Subscribe {
                channel: c.clone(),
                since: None,
                presence: false,
                delta: false
            })
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"subscribe","channel":"news","delta":"fossil"}"#),
            Ok(ClientMessage::Subscribe {
                channel: c.clone(),
                since: None,
                presence: false,
                delta: true
            })
        );
        for bad in [r#""xdelta""#, "true", "1"] {
            let frame = format!(r#"{{"type":"subscribe","channel":"n","delta":{bad}}}"#);
            assert_eq!(ClientMessage::decode(&frame), Err(DecodeError::BadDelta));
        }
        let since = Since {
            offset: 41,
            epoch: "e1".into(),
        };
        assert_eq!(
            ClientMessage::decode(
                r#"{"type":"subscribe","channel":"news","since":{"offset":41,"epoch":"e1"}}"#
            ),
            Ok(ClientMessage::Subscribe {
                channel: c.clone(),
                since: Some(since),
                presence: false,
                delta: false
            })
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"unsubscribe","channel":"news"}"#),
            Ok(ClientMessage::Unsubscribe(c))
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"refresh","token":"t"}"#),
            Ok(ClientMessage::Refresh("t".into()))
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"refresh"}"#),
            Err(DecodeError::MissingToken)
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

    /// A `since` is an object only, a `limit` in range only: anything else is said, never
    /// taken another way (an array `since`, a limit clamped in silence, "not JSON" for -1).
    #[test]
    fn since_and_limit_are_checked_not_guessed() {
        for bad in [
            r#"{"type":"subscribe","channel":"n","since":[5,"e"]}"#,
            r#"{"type":"subscribe","channel":"n","since":{"offset":-1,"epoch":"e"}}"#,
            r#"{"type":"subscribe","channel":"n","since":5}"#,
        ] {
            assert_eq!(
                ClientMessage::decode(bad),
                Err(DecodeError::BadSince),
                "{bad}"
            );
        }
        let null = r#"{"type":"subscribe","channel":"n","since":null}"#;
        assert!(matches!(
            ClientMessage::decode(null),
            Ok(ClientMessage::Subscribe { since: None, .. })
        ));
        for bad in ["-1", "0", "1001", "1.5", "\"10\""] {
            let frame = format!(r#"{{"type":"presence","channel":"n","limit":{bad}}}"#);
            assert_eq!(
                ClientMessage::decode(&frame),
                Err(DecodeError::BadLimit),
                "{bad}"
            );
        }
        let ok = r#"{"type":"presence","channel":"n","limit":1000}"#;
        assert!(matches!(
            ClientMessage::decode(ok),
            Ok(ClientMessage::Presence { limit: 1000, .. })
        ));
        assert!(DecodeError::BadLimit.to_string().contains("1 to 1000"));
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
