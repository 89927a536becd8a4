//! The publish API: `POST /message`, `/publish`, `/broadcast`, `/batch`. Filters check the API
//! key and read the body under the size limit; handlers validate everything before publishing
//! anything, so a bad request delivers nothing.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::reject::ApiError;
use crate::auth::keys_match;
use crate::bus::Delivery;
use crate::protocol::{Channel, Frame, Target, UserId};
use crate::worker::WorkerContext;

/// The API routes, each behind the key check and the body limit.
pub fn routes(
    ctx: Arc<WorkerContext>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let body = warp::post()
        .and(api_key(ctx.clone()))
        .and(limited_body(ctx.config.max_message_bytes));
    let with_ctx = warp::any().map(move || ctx.clone());
    let handle = |parse: fn(&[u8]) -> Result<Vec<Delivery>, ApiError>| {
        move |ctx: Arc<WorkerContext>, body: Bytes| async move {
            match parse(&body) {
                Ok(deliveries) => {
                    for d in deliveries {
                        ctx.router.publish(d).await;
                    }
                    accepted()
                }
                Err(e) => e.into_response(),
            }
        }
    };
    let message = warp::path!("message")
        .and(with_ctx.clone())
        .and(body.clone())
        .then(handle(parse_message));
    let publish = warp::path!("publish")
        .and(with_ctx.clone())
        .and(body.clone())
        .then(handle(parse_publish));
    let broadcast = warp::path!("broadcast")
        .and(with_ctx.clone())
        .and(body.clone())
        .then(handle(parse_broadcast));
    let batch = warp::path!("batch")
        .and(with_ctx)
        .and(body)
        .then(handle(parse_batch));
    message
        .or(publish)
        .unify()
        .or(broadcast)
        .unify()
        .or(batch)
        .unify()
}

fn accepted() -> Response {
    let mut resp = Response::new(r#"{"ok":true}"#.into());
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Passes only requests with `Authorization: Bearer <api-key>`.
fn api_key(ctx: Arc<WorkerContext>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |auth: Option<String>| {
            let ok = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|k| keys_match(k.trim().as_bytes(), ctx.api_key.as_bytes()));
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::Unauthorized(
                        "missing or wrong API key: send Authorization: Bearer <api-key>".into(),
                    )))
                }
            }
        })
        .untuple_one()
}

/// The whole body, or 413 as soon as it is known to exceed `max` bytes.
fn limited_body(max: usize) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |len: Option<u64>, stream| async move {
            if len.is_some_and(|l| l > max as u64) {
                return Err(warp::reject::custom(ApiError::TooLarge(max)));
            }
            read_limited(stream, max)
                .await
                .map_err(warp::reject::custom)
        })
}

async fn read_limited<S, B>(stream: S, max: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    futures_util::pin_mut!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.remaining() > max {
            return Err(ApiError::TooLarge(max));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

#[derive(Deserialize)]
struct DirectBody<'a> {
    #[serde(borrow, rename = "userId")]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
}

#[derive(Deserialize)]
struct ChannelBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    message: &'a RawValue,
}

#[derive(Deserialize)]
struct BatchItem<'a> {
    #[serde(borrow, default, rename = "userId")]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: &'a RawValue,
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

fn direct(user: &str, message: &RawValue) -> Result<Delivery, String> {
    let user = UserId::new(user).map_err(|e| format!("userId: {e}"))?;
    Ok(Delivery {
        frame: Frame::direct(message),
        target: Target::User(user),
    })
}

fn on_channel(channel: &str, message: &RawValue) -> Result<Delivery, String> {
    let channel = Channel::new(channel).map_err(|e| format!("channel: {e}"))?;
    Ok(Delivery {
        frame: Frame::channel(&channel, message),
        target: Target::Channel(channel),
    })
}

fn parse_message(body: &[u8]) -> Result<Vec<Delivery>, ApiError> {
    let b: DirectBody = parse_object(body)?;
    Ok(vec![
        direct(&b.user_id, b.message).map_err(ApiError::BadRequest)?
    ])
}

fn parse_publish(body: &[u8]) -> Result<Vec<Delivery>, ApiError> {
    let b: ChannelBody = parse_object(body)?;
    Ok(vec![
        on_channel(&b.channel, b.message).map_err(ApiError::BadRequest)?
    ])
}

fn parse_broadcast(body: &[u8]) -> Result<Vec<Delivery>, ApiError> {
    let b: BroadcastBody = parse_object(body)?;
    Ok(vec![Delivery {
        frame: Frame::direct(b.message),
        target: Target::All,
    }])
}

fn parse_batch(body: &[u8]) -> Result<Vec<Delivery>, ApiError> {
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
            match (&item.user_id, &item.channel) {
                (Some(user), None) => direct(user, item.message),
                (None, Some(channel)) => on_channel(channel, item.message),
                _ => Err("needs exactly one of userId and channel".to_string()),
            }
            .map_err(in_item)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_validated_whole() {
        let ok = parse_batch(br#"[{"userId":"1","message":1},{"channel":"c","message":null}]"#);
        assert_eq!(ok.unwrap().len(), 2);
        let bad = parse_batch(br#"[{"userId":"1","message":1},{"channel":"a b","message":2}]"#);
        assert!(matches!(bad, Err(ApiError::BadRequest(m)) if m.starts_with("item 1:")));
        let both = parse_batch(br#"[{"userId":"1","channel":"c","message":1}]"#);
        assert!(both.is_err());
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
