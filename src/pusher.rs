//! The Pusher Channels protocol 7, as pusher-js 8, Laravel Echo and Pusher's SDKs speak it
//! (PROTOCOL section 11): the application's credentials and signatures, socket ids, the kinds
//! of channel, and the frames of its WebSocket dialect. The dialect itself is
//! `connection/pusher.rs`; its route `/app/{key}` is `http/pusher.rs`.
//!
//! Pusher's channels are fanfare's channels under [`NAMESPACE`]: the Pusher channel `news` is
//! fanfare's `pusher:news`. So a Pusher socket, which has no token, reaches only that
//! namespace, and a `/ws` client reaches it only where its token allows `pusher:…`.
//!
//! A Pusher event lives in fanfare as a channel message whose payload is
//! `{"event":…,"data":…}` (plus the sender's `socket_id`, which it is not delivered to), so it
//! travels through the bus, the bridge and history like any message, and each Pusher socket is
//! sent it as `{"event":…,"channel":…,"data":…}` ([`view`]), built once per publication.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::frame::Frame;
use crate::protocol::{Channel, ConnId, UserId};

/// How long pusher-js may stay silent before it pings (`activity_timeout`, seconds).
pub const ACTIVITY_TIMEOUT: u64 = 120;
/// Client events one connection may send per second (Pusher's own limit).
pub const CLIENT_EVENTS_PER_SECOND: u32 = 10;

/// Close codes as pusher-js reads them: 4000–4099 do not reconnect, 4100–4199 reconnect after
/// a while, 4200–4299 at once.
pub mod close {
    /// The app key is not this server's.
    pub const UNKNOWN_APP: u16 = 4001;
    /// Too slow a reader or the server full: come back later.
    pub const OVER_CAPACITY: u16 = 4100;
    /// The server restarts or drains: reconnect now (elsewhere).
    pub const RECONNECT: u16 = 4200;
    /// No answer to pings.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// Client events faster than allowed.
    pub const RATE_LIMITED: u16 = 4301;
    /// The user's connections were terminated (`terminate_connections`): do not reconnect.
    pub const TERMINATED: u16 = 4009;
}

/// Where Pusher's channels live among fanfare's.
pub const NAMESPACE: &str = "pusher:";
/// Where Pusher's users (`pusher:signin`) live among fanfare's: user `42` is `pusher:user:42`.
pub const USERS: &str = "pusher:user:";
/// The channel a signed-in user's events come on (`sendToUser`), and only that user may join.
pub const SERVER_TO_USER: &str = "#server-to-user-";

/// The fanfare user of the Pusher user `id`.
pub fn user(id: &str) -> Result<UserId, crate::protocol::NameError> {
    UserId::new(&format!("{USERS}{id}"))
}

/// The fanfare channel of the Pusher channel `name`.
pub fn channel(name: &str) -> Result<Channel, crate::protocol::NameError> {
    Channel::new(&format!("{NAMESPACE}{name}"))
}

/// The Pusher name of a fanfare channel, if it is one of Pusher's.
pub fn name(channel: &Channel) -> Option<&str> {
    channel.as_str().strip_prefix(NAMESPACE)
}

/// The application a server serves (`--pusher-app-id`, `--pusher-key`, `--pusher-secret`).
#[derive(Clone)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// Drawn at start: the first half of this process's socket ids.
    pub instance: u32,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App {{ id: {}, key: {} }}", self.id, self.key)
    }
}

impl App {
    pub fn new(id: String, key: String, secret: String) -> Self {
        App {
            id,
            key,
            secret,
            instance: rand::random_range(1..1_000_000_000),
        }
    }

    /// Hex HMAC-SHA256 of `text` with the secret: what Pusher signs everything with.
    pub fn hmac_hex(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(text.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `auth` (`key:signature`, from the application's auth endpoint) signs
    /// `socket_id:channel[:channel_data]`; compared in constant time.
    pub fn authorizes(
        &self,
        auth: &str,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
    ) -> bool {
        let text = match channel_data {
            Some(data) => format!("{socket_id}:{channel}:{data}"),
            None => format!("{socket_id}:{channel}"),
        };
        self.signs(auth, &text)
    }

    /// Whether `auth` signs a user sign-in: `socket_id::user::user_data`.
    pub fn signs_in(&self, auth: &str, socket_id: &str, user_data: &str) -> bool {
        self.signs(auth, &format!("{socket_id}::user::{user_data}"))
    }

    /// Whether `auth` is `key:` + the signature of `text`; compared in constant time.
    fn signs(&self, auth: &str, text: &str) -> bool {
        let Some((key, signature)) = auth.split_once(':') else {
            return false;
        };
        let expected = self.hmac_hex(text);
        key == self.key && bool::from(signature.as_bytes().ct_eq(expected.as_bytes()))
    }

    /// The socket id of a connection, as Pusher's SDKs check it (`\d+\.\d+`): this process's
    /// instance, then the connection's worker and number.
    pub fn socket_id(&self, conn: ConnId) -> String {
        format!(
            "{}.{}",
            self.instance,
            u64::from(conn.worker.0) * 1_000_000_000_000 + conn.seq
        )
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a channel's name makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    /// `private-`: a signature from the application's auth endpoint; client events allowed.
    Private,
    /// `private-encrypted-`: as private; the server never reads the payloads.
    Encrypted,
    /// `presence-`: as private, and the subscriber's `channel_data` says who it is.
    Presence,
}

impl Kind {
    pub fn of(channel: &str) -> Kind {
        if channel.starts_with("presence-") {
            Kind::Presence
        } else if channel.starts_with("private-encrypted-") {
            Kind::Encrypted
        } else if channel.starts_with("private-") {
            Kind::Private
        } else {
            Kind::Public
        }
    }

    /// Needs a signature, and allows client events.
    pub fn is_private(self) -> bool {
        self != Kind::Public
    }
}

/// A frame `{"event":…,["channel":…,]"data":<data as a JSON string>}`.
pub fn event(event: &str, channel: Option<&str>, data: &str) -> Frame {
    let event = json_string(event);
    let data = json_string(data);
    match channel {
        Some(c) => Frame::text_parts(&[
            r#"{"event":"#,
            &event,
            r#","channel":"#,
            &json_string(c),
            r#","data":"#,
            &data,
            "}",
        ]),
        None => Frame::text_parts(&[r#"{"event":"#, &event, r#","data":"#, &data, "}"]),
    }
}

pub fn connection_established(socket_id: &str) -> Frame {
    let data = serde_json::json!({"socket_id": socket_id, "activity_timeout": ACTIVITY_TIMEOUT});
    event("pusher:connection_established", None, &data.to_string())
}

pub fn signin_success(user_data: &str) -> Frame {
    let data = serde_json::json!({ "user_data": user_data });
    event("pusher:signin_success", None, &data.to_string())
}

pub fn pong() -> Frame {
    event("pusher:pong", None, "{}")
}

pub fn subscription_succeeded(channel: &str, data: &str) -> Frame {
    event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// `pusher:subscription_error`, whose `data` is an object (as pusher-js reads it).
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> Frame {
    let v = serde_json::json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": kind, "error": error, "status": status},
    });
    Frame::text_parts(&[&v.to_string()])
}

/// `pusher:error` with a code and a message (`data` an object, as pusher-js reads it).
pub fn error(code: Option<u16>, message: &str) -> Frame {
    let v = serde_json::json!({
        "event": "pusher:error",
        "data": {"code": code, "message": message},
    });
    Frame::text_parts(&[&v.to_string()])
}

/// A presence channel's members as `subscription_succeeded` carries them.
pub fn presence_data(members: &[(String, Option<Arc<str>>)]) -> String {
    let mut hash = serde_json::Map::new();
    let mut ids = Vec::new();
    for (id, info) in members {
        let info = info
            .as_deref()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(Value::Null);
        hash.insert(id.clone(), info);
        ids.push(Value::from(id.as_str()));
    }
    serde_json::json!({"presence": {"count": ids.len(), "ids": ids, "hash": hash}}).to_string()
}

/// The payload a Pusher event is published as: `{"event":…,"data":…[,"socket_id":…]
/// [,"user_id":…]}`, `data` kept as it came (a string, or any JSON a client event carries);
/// `user_id` names the presence member a client event comes from.
pub fn payload(event: &str, data: &Value, except: Option<&str>, user: Option<&str>) -> String {
    let mut v = serde_json::json!({"event": event, "data": data});
    if let Some(socket) = except {
        v["socket_id"] = Value::from(socket);
    }
    if let Some(user) = user {
        v["user_id"] = Value::from(user);
    }
    v.to_string()
}

/// How a channel message reaches Pusher sockets: its frame, and the socket it skips.
pub struct View {
    pub frame: Frame,
    pub except: Option<String>,
}

/// The Pusher view of a message on `channel` whose payload is `payload` (JSON text): a Pusher
/// event as [`payload`] made it, or any other message as the event `message` with the
/// payload as its data.
pub fn view(channel: &Channel, payload: &[u8]) -> View {
    let channel = name(channel).unwrap_or(channel.as_str());
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(payload).ok();
    let event_of = |m: &serde_json::Map<String, Value>| {
        let event = m.get("event")?.as_str()?.to_string();
        let data = m.get("data")?;
        let data = match data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let text = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_string);
        Some((event, data, text("socket_id"), text("user_id")))
    };
    match parsed.as_ref().and_then(event_of) {
        Some((event_name, data, except, None)) => View {
            frame: event(&event_name, Some(channel), &data),
            except,
        },
        Some((event_name, data, except, Some(user))) => {
            let v = serde_json::json!({
                "event": event_name, "channel": channel, "data": data, "user_id": user,
            });
            View {
                frame: Frame::text_parts(&[&v.to_string()]),
                except,
            }
        }
        None => View {
            frame: event(
                "message",
                Some(channel),
                std::str::from_utf8(payload).unwrap_or("null"),
            ),
            except: None,
        },
    }
}

/// The Pusher view of a fanfare presence event (`join` or `leave`):
/// `pusher_internal:member_added` / `member_removed`, with the member it is about.
pub fn member_event(join_or_leave: &Frame) -> Option<(Frame, String)> {
    let v: Value = serde_json::from_str(join_or_leave.as_str()).ok()?;
    let channel = v["channel"].as_str()?;
    let channel = channel.strip_prefix(NAMESPACE).unwrap_or(channel);
    let user = v["user"].as_str()?;
    match v["type"].as_str()? {
        "join" => {
            let info = v.get("info").cloned().unwrap_or(Value::Null);
            let data = serde_json::json!({"user_id": user, "user_info": info});
            let added = event(
                "pusher_internal:member_added",
                Some(channel),
                &data.to_string(),
            );
            Some((added, user.to_string()))
        }
        "leave" => {
            let data = serde_json::json!({ "user_id": user });
            let removed = event(
                "pusher_internal:member_removed",
                Some(channel),
                &data.to_string(),
            );
            Some((removed, user.to_string()))
        }
        _ => None,
    }
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WorkerId;

    fn app() -> App {
        App::new("1".into(), "key".into(), "secret".into())
    }

    #[test]
    fn signatures_are_pushers() {
        // From Pusher's documentation of channel authorisation.
        let app = App::new(
            "1".into(),
            "278d425bdf160c739803".into(),
            "7ad3773142a6692b25b8".into(),
        );
        let auth = format!("{}:{}", app.key, app.hmac_hex("1234.1234:private-foobar"));
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(app.authorizes(&auth, "1234.1234", "private-foobar", None));
        assert!(!app.authorizes(&auth, "1234.1235", "private-foobar", None));
        assert!(!app.authorizes("other:x", "1234.1234", "private-foobar", None));
    }

    #[test]
    fn socket_ids_are_what_the_sdks_accept() {
        let a = app();
        let id = a.socket_id(ConnId {
            worker: WorkerId(3),
            seq: 42,
        });
        let (x, y) = id.split_once('.').unwrap();
        assert!(x.bytes().all(|b| b.is_ascii_digit()) && y.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(y, "3000000000042");
    }

    #[test]
    fn events_are_seen_as_pusher_sends_them() {
        let ch = channel("private-a").unwrap();
        assert_eq!(name(&ch), Some("private-a"));
        let p = payload("client-x", &serde_json::json!({"n": 1}), Some("1.2"), None);
        let v = view(&ch, p.as_bytes());
        assert_eq!(v.except.as_deref(), Some("1.2"));
        assert_eq!(
            v.frame.as_str(),
            r#"{"event":"client-x","channel":"private-a","data":"{\"n\":1}"}"#
        );
        let plain = view(&ch, br#"{"hello":"world"}"#);
        assert_eq!(
            plain.frame.as_str(),
            r#"{"event":"message","channel":"private-a","data":"{\"hello\":\"world\"}"}"#
        );
        let s = payload("e", &Value::from("text"), None, None);
        let from = payload("client-y", &Value::from("t"), Some("1.2"), Some("alice"));
        assert_eq!(
            view(&ch, from.as_bytes()).frame.as_str(),
            r#"{"channel":"private-a","data":"t","event":"client-y","user_id":"alice"}"#
        );
        assert_eq!(
            view(&ch, s.as_bytes()).frame.as_str(),
            r#"{"event":"e","channel":"private-a","data":"text"}"#
        );
    }
}
