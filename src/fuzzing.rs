//! Entry points of the fuzz targets in `fuzz/` (run with `cargo fuzz`), also replayed over
//! their corpus by the test suite. Each takes arbitrary bytes, must never panic, and checks
//! what must hold for any input that is accepted.

use crate::auth::{bearer, TokenKeys};
use crate::bridge::wire::{self, Names};
use crate::http::api;
use crate::protocol::Topic;
use crate::protocol::{Channel, ClientMessage, Control, Frame, Target, UserId};

/// A client's text frame: decoded or refused, never a panic.
pub fn client_frame(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ClientMessage::Subscribe { channel: c, .. } | ClientMessage::Unsubscribe(c)) =
            ClientMessage::decode(text)
        {
            assert!(Channel::new(c.as_str()).is_ok());
        }
    }
}

/// Every body parser of the API; whatever one accepts becomes frames that are valid JSON and
/// carry the payload unchanged, or controls that survive the Redis wire.
pub fn publish_body(data: &[u8]) {
    for parse in [
        api::parse_message,
        api::parse_publish,
        api::parse_broadcast,
        api::parse_batch,
    ] {
        for d in parse(data)
            .into_iter()
            .flat_map(|(deliveries, _)| deliveries)
        {
            assert!(is_json(d.frame.payload()), "a frame is JSON");
            assert!(d.frame.payload().starts_with(br#"{"type":"message","#));
            let payload = d.frame.message_payload(&d.target).expect("payload inside");
            assert!(is_json(payload));
        }
    }
    for path in ["/disconnect", "/subscribe", "/unsubscribe"] {
        if let Ok((_, control)) = api::parse_control(path, data) {
            assert_eq!(Control::decode(&control.encode()), Some(control));
        }
    }
}

/// What arrives from Redis: a header and a payload, on a channel whose name may be anything.
pub fn redis_wire(data: &[u8]) {
    let names = Names::new("fz:", false).expect("a valid prefix");
    let (name, payload) = data.split_at(
        data.len()
            .min(usize::from(data.first().copied().unwrap_or(0))),
    );
    if let Ok(name) = std::str::from_utf8(name) {
        if let Some(target) = names.parse(name) {
            assert_eq!(names.parse(&names.target(&target)), Some(target.clone()));
            match wire::decode(payload).map(|d| d.body) {
                Some(wire::Body::Message(body)) => {
                    if let Some(frame) = wire::frame(&target, body, 4096) {
                        assert!(is_json(frame.payload()));
                    }
                }
                Some(wire::Body::Positioned(at, body)) => {
                    assert!(wire::is_epoch(at.epoch));
                    if let Some(frame) = wire::frame_at(&target, body, at.offset, 4096) {
                        assert!(is_json(frame.payload()));
                    }
                }
                Some(wire::Body::Control(body) | wire::Body::ControlFrom(_, body)) => {
                    if let Some((_, control)) = wire::control(&target, body) {
                        assert_eq!(Control::decode(&control.encode()), Some(control));
                    }
                }
                Some(wire::Body::Presence(body)) => {
                    if let Some((_, frame)) = wire::presence_event(&target, body, 4096) {
                        assert!(is_json(frame.payload()));
                    }
                }
                None => {}
            }
        }
        // Any prefix that is accepted keeps its names apart from the default fleet's.
        if let Ok(theirs) = Names::new(name, false) {
            let ours = Names::new("fanfare:", false).expect("the default prefix");
            if name != "fanfare:" {
                for t in [Target::All, Target::User(UserId::new("x").expect("valid"))] {
                    assert_ne!(theirs.target(&t), ours.target(&t));
                    assert!(ours.parse(&theirs.target(&t)).is_none());
                }
            }
        }
    }
}

/// The RESP stream a subscriber reads: a push is recognised whole, or found incomplete, or
/// refused; its parts lie inside what was read.
pub fn redis_resp(data: &[u8]) {
    use crate::bridge::pubsub::{frame, Shape};
    if let Ok(Some((len, shape))) = frame(data, 1024) {
        if shape != Shape::Oversize {
            assert!(len <= data.len());
        }
        if let Shape::Message { channel, payload } = shape {
            assert!(channel.0 <= channel.1 && payload.1 <= len);
        }
    }
}

/// User ids and channel names; an accepted channel makes frames that are valid JSON.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(user) = UserId::new(text) {
        assert!(!user.as_str().is_empty());
        let _ = Names::new("fz:", false)
            .expect("a valid prefix")
            .topic(&Topic::User(user));
    }
    if let Ok(channel) = Channel::new(text) {
        let frame = Frame::subscribed(&channel);
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).expect("JSON");
        assert_eq!(v["channel"].as_str(), Some(text));
    }
}

/// Tokens and `Authorization` values: verified or refused, never a panic.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    thread_local! {
        static KEYS: TokenKeys = TokenKeys::new("fuzz").expect("the crypto backend works");
    }
    KEYS.with(|keys| {
        let _ = keys.verify(text);
        if let Some(t) = bearer(text) {
            let _ = keys.verify(t);
        }
    });
}

/// One JSON value, whatever the size of its numbers (JSON sets no range; payloads keep every
/// digit, so a check through `f64` would call valid frames broken).
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok()
}
