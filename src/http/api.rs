//! The API for the application's backend: publishing (`POST /message`, `/publish`,
//! `/broadcast`, `/batch`) and control of a user's connections (`POST /disconnect`,
//! `/subscribe`, `/unsubscribe`). The key is checked and the body read under its size and time
//! limits before anything is parsed; every item is validated before any is published, so a bad
//! request delivers nothing.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::reject::{json, ApiError};
use super::Response;
use crate::auth::{bearer, keys_match};
use crate::bridge::Fate;
use crate::bus::Delivery;
use crate::context::Shared;
use crate::idempotency::Key;
use crate::protocol::{Channel, Control, Frame, Target, UserId, MAX_DISCONNECT_REASON_BYTES};
use crate::router::{NotTaken, Refused};

/// What an accepted request asks for.
enum Accepted {
    /// Messages, each with its idempotency key if it has one; `batch` answers with the
    /// offsets in a list.
    Publish {
        deliveries: Vec<Delivery>,
        keys: Vec<Option<Key>>,
        batch: bool,
    },
    Control(UserId, Control),
}

/// `POST /message | /publish | /broadcast | /batch | /disconnect | /subscribe | /unsubscribe`.
pub async fn handle(req: Request<Incoming>, ctx: &Shared) -> Response {
    match accept(req, ctx).await {
        Ok(Accepted::Publish {
            deliveries,
            keys,
            batch,
        }) => {
            let offsets = match ctx.router.publish_once(deliveries, keys).await {
                Ok(offsets) => offsets,
                Err(Refused::NotTaken(NotTaken { fates })) => return not_taken(&fates, batch),
                Err(Refused::InFlight(key)) => {
                    let error = format!(
                        "a publication with idempotencyKey {:?} is still on its way: nothing was published; retry",
                        key.as_str()
                    );
                    let body = serde_json::json!({ "error": error });
                    return json(StatusCode::CONFLICT, body.to_string());
                }
                Err(Refused::Unchecked { at }) => {
                    let error = format!(
                        "Redis is unreachable: the idempotencyKey of message {at} could not be checked, so it and those after it were not published (those before were); retry with the same keys"
                    );
                    let body = serde_json::json!({ "error": error, "published": at });
                    return json(StatusCode::SERVICE_UNAVAILABLE, body.to_string());
                }
            };
            // With history, where each was taken: `{"ok":true,"offset":42,"epoch":"…"}`, or for
            // a batch `{"ok":true,"offsets":[…],"epochs":[…]}` in item order.
            let epochs: Vec<&str> = offsets.iter().map(|t| &*t.epoch).collect();
            let offsets: Vec<u64> = offsets.iter().map(|t| t.offset).collect();
            let body = match (batch, offsets.as_slice()) {
                (_, []) => serde_json::json!({"ok": true}),
                (false, [offset]) => {
                    serde_json::json!({"ok": true, "offset": offset, "epoch": epochs[0]})
                }
                _ => serde_json::json!({"ok": true, "offsets": offsets, "epochs": epochs}),
            };
            return json(StatusCode::ACCEPTED, body.to_string());
        }
        Ok(Accepted::Control(user, control)) => {
            if ctx.router.control(user, control).await.is_err() {
                return ApiError::Unavailable(
                    "Redis is unreachable: the other machines cannot be told; nothing was done, retry"
                        .into(),
                )
                .into_response();
            }
        }
        Err(e) => return e.into_response(),
    }
    json(StatusCode::ACCEPTED, r#"{"ok":true}"#.into())
}

/// 503 for messages Redis did not take whole: what became of each (with history), so the
/// caller retries exactly those not taken. `offsets` has the offset of each message with
/// history in order (`null` if not taken), `unknown` the indices of those that may or may not
/// have been taken (the link broke while they were on their way).
fn not_taken(fates: &[Fate], batch: bool) -> Response {
    let offsets: Vec<Option<u64>> = fates
        .iter()
        .map(|f| match f {
            Fate::Taken(offset, _) => Some(*offset),
            _ => None,
        })
        .collect();
    let unknown: Vec<usize> = (0..fates.len())
        .filter(|i| matches!(fates[*i], Fate::Unknown | Fate::Unconfirmed))
        .collect();
    let taken = offsets.iter().flatten().count();
    let mut error = match (batch, fates) {
        (false, [Fate::Unknown]) => "the link to the history store (Redis) broke while the message was on its way: it may have been delivered, and a retry may deliver it twice".to_string(),
        (false, [Fate::Unconfirmed]) => "fewer replicas than --history-ack-replicas confirmed the message in time: it may still be delivered or be lost with its master, and a retry may deliver it twice".to_string(),
        (false, [Fate::OutOfMemory]) => "Redis is out of memory (maxmemory) and refuses history writes: the message was not taken; retry once it has room".to_string(),
        (false, [Fate::Failover]) => "the history store is changing masters (a Redis Cluster failover or slot move, or a Redis starting): the message was not taken and nothing is lost; retry in a second".to_string(),
        (false, _) => "the history store (Redis) cannot be written now: the message was not delivered; retry".to_string(),
        (true, _) => format!(
            "the history store (Redis) took {taken} of {} messages (offsets: null = not taken); retry those not taken",
            fates.len()
        ),
    };
    if batch && fates.contains(&Fate::Failover) {
        error.push_str("; the history store is changing masters (a Redis Cluster failover or slot move, or a Redis starting): nothing is lost, retry in a second");
    }
    if batch && !unknown.is_empty() {
        error.push_str("; those listed in unknown may have been taken too (the link broke, or replicas did not confirm them in time)");
    }
    let body = serde_json::json!({"error": error, "offsets": offsets, "unknown": unknown});
    json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

/// Checks method, key and body, and parses the body into what to do.
async fn accept(req: Request<Incoming>, ctx: &Shared) -> Result<Accepted, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    check_key(&req, ctx)?;
    let path = req.uri().path().to_string();
    let limit = ctx.config.request_timeout();
    let body = read_body(req, ctx.config.max_message_bytes, limit).await?;
    let publish = match path.as_str() {
        "/message" => parse_message,
        "/publish" => parse_publish,
        "/broadcast" => parse_broadcast,
        "/batch" => parse_batch,
        control => {
            let (user, control) = parse_control(control, &body)?;
            return Ok(Accepted::Control(user, control));
        }
    };
    let batch = path == "/batch";
    publish(&body).map(|(deliveries, keys)| Accepted::Publish {
        deliveries,
        keys,
        batch,
    })
}

/// 401 unless the request carries the API key.
pub fn check_key(req: &Request<Incoming>, ctx: &Shared) -> Result<(), ApiError> {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match key.is_some_and(|k| keys_match(k.as_bytes(), ctx.api_key.as_bytes())) {
        true => Ok(()),
        false => Err(ApiError::Unauthorized(
            "missing or wrong API key: send Authorization: Bearer <api-key>".into(),
        )),
    }
}

/// The whole body, or 413 as soon as it is known to exceed `max` bytes, or 408 if it does not
/// arrive within `limit` (a client trickling bytes cannot hold a connection for ever).
pub async fn read_body(
    req: Request<Incoming>,
    max: usize,
    limit: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(ApiError::TooLarge(max));
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(limit, body.collect()).await {
        Err(_) => Err(ApiError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge(max))
        }
        Ok(Err(e)) => Err(ApiError::BadRequest(format!("cannot read body: {e}"))),
    }
}

#[derive(Deserialize)]
struct DirectBody<'a> {
    #[serde(borrow, rename = "userId")]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(borrow, default, rename = "idempotencyKey")]
    key: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChannelBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(borrow, default, rename = "idempotencyKey")]
    key: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(borrow, default, rename = "idempotencyKey")]
    key: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BatchItem<'a> {
    #[serde(borrow, default, rename = "userId")]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(borrow, default, rename = "idempotencyKey")]
    key: Option<Cow<'a, str>>,
}

/// The body of `/disconnect`, `/subscribe` or `/unsubscribe` (`path`); errors name the field.
pub fn parse_control(path: &str, body: &[u8]) -> Result<(UserId, Control), ApiError> {
    let body: serde_json::Map<String, serde_json::Value> = parse_object(body)?;
    let bad =
        |field: &str, e: &dyn std::fmt::Display| ApiError::BadRequest(format!("{field}: {e}"));
    let text = |field: &str| match body.get(field) {
        None => Err(bad(field, &"missing")),
        Some(v) => v.as_str().ok_or_else(|| bad(field, &"must be a string")),
    };
    let user = text("userId").and_then(|u| UserId::new(u).map_err(|e| bad("userId", &e)))?;
    let channel = || text("channel").and_then(|c| Channel::new(c).map_err(|e| bad("channel", &e)));
    let control = match path {
        "/disconnect" => {
            let reason = match body.get("reason") {
                None | Some(serde_json::Value::Null) => "",
                Some(_) => text("reason")?,
            };
            if reason.len() > MAX_DISCONNECT_REASON_BYTES {
                let limit = format!("at most {MAX_DISCONNECT_REASON_BYTES} bytes");
                return Err(bad("reason", &limit));
            }
            Control::Disconnect(reason.into())
        }
        "/subscribe" => Control::Subscribe(channel()?),
        "/unsubscribe" => Control::Unsubscribe(channel()?),
        _ => return Err(ApiError::NotFound),
    };
    Ok((user, control))
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// Like [`parse_json`], for a JSON object only: serde would also fill a struct from an array.
fn parse_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => parse_json(body),
        _ => Err(ApiError::BadRequest("body must be a JSON object".into())),
    }
}

fn delivery(target: Target, message: &RawValue) -> Delivery {
    Delivery {
        frame: Frame::message(&target, message),
        target,
        position: None,
    }
}

fn direct(user: &str, message: &RawValue) -> Result<Delivery, String> {
    let user = UserId::new(user).map_err(|e| format!("userId: {e}"))?;
    Ok(delivery(Target::User(user), message))
}

fn on_channel(channel: &str, message: &RawValue) -> Result<Delivery, String> {
    let channel = Channel::new(channel).map_err(|e| format!("channel: {e}"))?;
    Ok(delivery(Target::Channel(channel), message))
}

/// What a publish body asks for: its messages, each with its idempotency key if it has one.
pub type Publications = (Vec<Delivery>, Vec<Option<Key>>);

fn key(key: Option<&Cow<str>>) -> Result<Option<Key>, String> {
    key.map(|k| Key::new(k)).transpose()
}

pub fn parse_message(body: &[u8]) -> Result<Publications, ApiError> {
    let b: DirectBody = parse_object(body)?;
    let d = direct(&b.user_id, b.message).map_err(ApiError::BadRequest)?;
    Ok((
        vec![d],
        vec![key(b.key.as_ref()).map_err(ApiError::BadRequest)?],
    ))
}

pub fn parse_publish(body: &[u8]) -> Result<Publications, ApiError> {
    let b: ChannelBody = parse_object(body)?;
    let d = on_channel(&b.channel, b.message).map_err(ApiError::BadRequest)?;
    Ok((
        vec![d],
        vec![key(b.key.as_ref()).map_err(ApiError::BadRequest)?],
    ))
}

pub fn parse_broadcast(body: &[u8]) -> Result<Publications, ApiError> {
    let b: BroadcastBody = parse_object(body)?;
    let k = key(b.key.as_ref()).map_err(ApiError::BadRequest)?;
    Ok((vec![delivery(Target::All, b.message)], vec![k]))
}

pub fn parse_batch(body: &[u8]) -> Result<Publications, ApiError> {
    let items: Vec<&RawValue> = parse_json(body)?;
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let in_item = |e: String| ApiError::BadRequest(format!("item {i}: {e}"));
            let item: BatchItem = parse_object(raw.get().as_bytes()).map_err(|e| match e {
                ApiError::BadRequest(m) => in_item(m),
                other => other,
            })?;
            let d = match (&item.user_id, &item.channel) {
                (Some(user), None) => direct(user, item.message),
                (None, Some(channel)) => on_channel(channel, item.message),
                _ => Err(
                    "needs exactly one of userId and channel (a broadcast is POST /broadcast)"
                        .to_string(),
                ),
            }
            .map_err(in_item)?;
            Ok((d, key(item.key.as_ref()).map_err(in_item)?))
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .map(|items| items.into_iter().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_validated_whole() {
        let ok = parse_batch(br#"[{"userId":"1","message":1},{"channel":"c","message":null}]"#);
        assert_eq!(ok.unwrap().0.len(), 2);
        let bad = parse_batch(br#"[{"userId":"1","message":1},{"channel":"a b","message":2}]"#);
        assert!(matches!(bad, Err(ApiError::BadRequest(m)) if m.starts_with("item 1:")));
        let both = parse_batch(br#"[{"userId":"1","channel":"c","message":1}]"#);
        assert!(both.is_err());
    }

    #[test]
    fn control_bodies_name_the_field_that_is_wrong() {
        let err = |path, body: &str| match parse_control(path, body.as_bytes()) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err("/disconnect", r#"{"reason":"x"}"#).contains("userId"));
        assert!(err("/disconnect", r#"{"userId":"1","reason":5}"#).starts_with("reason"));
        assert!(err("/subscribe", r#"{"userId":1,"channel":"a"}"#).starts_with("userId"));
        assert!(err("/subscribe", r#"{"userId":"1"}"#).starts_with("channel"));
        assert!(err("/unsubscribe", r#"{"userId":"1","channel":"a b"}"#).starts_with("channel"));
        let long = format!(r#"{{"userId":"1","reason":"{}"}}"#, "x".repeat(121));
        assert!(err("/disconnect", &long).starts_with("reason"));
        let (user, c) = parse_control("/disconnect", br#"{"userId":"1"}"#).unwrap();
        assert_eq!((user.as_str(), c), ("1", Control::Disconnect("".into())));
    }

    #[test]
    fn fields_are_typed() {
        assert!(parse_message(br#"{"userId":42,"message":1}"#).is_err());
        assert!(parse_message(br#"{"userId":"42"}"#).is_err());
        assert!(parse_message(br#"{"userId":"","message":1}"#).is_err());
        assert!(parse_publish(br#"{"channel":"news","message":{"a":[1,2]}}"#).is_ok());
        assert!(parse_broadcast(b"{").is_err());
    }
}
