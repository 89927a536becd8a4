//! Pusher's HTTP API (PROTOCOL section 11), signed as Pusher signs: `auth_key`,
//! `auth_timestamp` (within 600 s), `auth_version`, `body_md5` and `auth_signature` (hex
//! HMAC-SHA256 of `METHOD\nPATH\nsorted query` with the app secret, compared in constant time).
//!
//! - `POST /apps/{id}/events` (`name`, `data`, `channels` 1–100 or `channel`, `socket_id`, `info`)
//! - `POST /apps/{id}/batch_events` (`batch` of at most 10)
//! - `GET /apps/{id}/channels` (`filter_by_prefix`, `info=user_count` for presence channels)
//! - `GET /apps/{id}/channels/{name}` (`info=user_count,subscription_count`)
//! - `GET /apps/{id}/channels/{name}/users` (presence channels)
//! - `POST /apps/{id}/users/{user}/terminate_connections` (the sockets signed in as `user`)
//!
//! An event is published like any channel message ([`crate::pusher::payload`]), through the
//! same router: with `--redis`, to the fleet.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::api::read_body;
use super::query;
use super::reject::{json, ApiError};
use super::Response;
use crate::bus::Delivery;
use crate::context::Shared;
use crate::protocol::{Channel, Control, Frame, Target, MAX_PAGE};
use crate::pusher::{self as wire, App, Kind};

/// How far `auth_timestamp` may be from the server's clock.
const MAX_SKEW_SECS: u64 = 600;
/// Most channels one event goes to.
const MAX_CHANNELS: usize = 100;
/// Most events in one `batch_events`.
const MAX_BATCH: usize = 10;

/// `/apps/{rest}`: `rest` is what follows `/apps/`.
pub async fn handle(req: Request<Incoming>, ctx: &Shared, rest: &str) -> Response {
    let Some(app) = ctx.pusher.clone() else {
        return ApiError::NotFound.into_response();
    };
    match answer(req, ctx, &app, rest).await {
        Ok(body) => json(StatusCode::OK, body.to_string()),
        Err(e) => e.into_response(),
    }
}

async fn answer(
    req: Request<Incoming>,
    ctx: &Shared,
    app: &App,
    rest: &str,
) -> Result<Value, ApiError> {
    let segments: Vec<&str> = rest.split('/').collect();
    let (id, route) = segments.split_first().ok_or(ApiError::NotFound)?;
    if *id != app.id {
        return Err(ApiError::NotFound);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = match method {
        Method::POST => {
            let limit = ctx.config.request_timeout();
            read_body(req, ctx.config.max_message_bytes, limit).await?
        }
        _ => Default::default(),
    };
    check_signature(app, &method, &path, &query, &body)?;
    let param = |name: &str| query::param(Some(&query), name).map(|v| v.into_owned());
    let info = param("info").unwrap_or_default();
    match (&method, route) {
        (&Method::POST, ["events"]) => {
            let event: Event = parse(&body)?;
            let (channels, data) = (event.channels()?, event.data()?);
            publish(ctx, &event, &channels, &data).await?;
            channels_info(ctx, &channels, &event.info.unwrap_or_default()).await
        }
        (&Method::POST, ["batch_events"]) => {
            let batch: Batch = parse(&body)?;
            if batch.batch.len() > MAX_BATCH {
                return Err(ApiError::BadRequest(format!(
                    "at most {MAX_BATCH} events per batch"
                )));
            }
            // Every event checked before any is published: a refused batch delivered nothing,
            // so it can be sent again whole.
            let checked = batch
                .batch
                .iter()
                .map(|event| Ok((event, event.channels()?, event.data()?)))
                .collect::<Result<Vec<_>, ApiError>>()?;
            let mut infos = Vec::new();
            for (event, channels, data) in &checked {
                publish(ctx, event, channels, data).await?;
                let info = event.info.clone().unwrap_or_default();
                infos.push(channels_info(ctx, channels, &info).await?);
            }
            match infos.iter().any(|i| i.get("channels").is_some()) {
                true => Ok(serde_json::json!({ "batch": infos
                    .into_iter()
                    .map(|i| i["channels"].as_object().and_then(|c| c.values().next().cloned()).unwrap_or_default())
                    .collect::<Vec<_>>() })),
                false => Ok(serde_json::json!({})),
            }
        }
        (&Method::GET, ["channels"]) => {
            let prefix = param("filter_by_prefix").unwrap_or_default();
            let mut channels = serde_json::Map::new();
            let found = ctx
                .router
                .channels(&format!("{}{prefix}", wire::NAMESPACE))
                .await
                .map_err(|_| unavailable())?;
            for channel in found {
                let Some(name) = wire::name(&channel) else {
                    continue;
                };
                let mut v = serde_json::json!({});
                if info.split(',').any(|i| i == "user_count") {
                    if Kind::of(name) != Kind::Presence {
                        return Err(ApiError::BadRequest(
                            "user_count is for presence channels only (filter_by_prefix=presence-)"
                                .into(),
                        ));
                    }
                    v["user_count"] = count(ctx, &channel).await?.0.into();
                }
                channels.insert(name.to_string(), v);
            }
            Ok(serde_json::json!({ "channels": channels }))
        }
        (&Method::GET, ["channels", name]) => {
            let channel = channel(name)?;
            let (users, connections) = count(ctx, &channel).await?;
            let mut v = serde_json::json!({ "occupied": connections > 0 });
            for i in info.split(',') {
                match i {
                    "user_count" if Kind::of(name) == Kind::Presence => {
                        v["user_count"] = users.into()
                    }
                    "subscription_count" => v["subscription_count"] = connections.into(),
                    _ => {}
                }
            }
            Ok(v)
        }
        (&Method::GET, ["channels", name, "users"]) => {
            let channel = channel(name)?;
            if Kind::of(name) != Kind::Presence {
                return Err(ApiError::BadRequest(
                    "users are listed for presence channels only".into(),
                ));
            }
            let page = ctx
                .router
                .presence_page(&channel, None, MAX_PAGE)
                .await
                .map_err(|_| unavailable())?;
            let users: Vec<Value> = page
                .members
                .iter()
                .map(|m| serde_json::json!({ "id": m.user.as_str() }))
                .collect();
            Ok(serde_json::json!({ "users": users }))
        }
        (&Method::POST, ["users", user, "terminate_connections"]) => {
            let user =
                wire::user(user).map_err(|e| ApiError::BadRequest(format!("user id: {e}")))?;
            let reason = Arc::from("terminated by the application");
            ctx.router
                .control(user, Control::Disconnect(reason))
                .await
                .map_err(|_| {
                    ApiError::Unavailable(
                        "Redis is unreachable: nothing was terminated; retry".into(),
                    )
                })?;
            Ok(serde_json::json!({}))
        }
        (_, ["events" | "batch_events"] | ["users", _, "terminate_connections"]) => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        (_, ["channels", ..]) => Err(ApiError::MethodNotAllowed("GET")),
        _ => Err(ApiError::NotFound),
    }
}

/// One event of `events` or `batch_events`.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

impl Event {
    fn channels(&self) -> Result<Vec<Channel>, ApiError> {
        let names: Vec<&str> = match (&self.channels, &self.channel) {
            (Some(list), _) => list.iter().map(String::as_str).collect(),
            (None, Some(one)) => vec![one.as_str()],
            (None, None) => return Err(ApiError::BadRequest("channels is required".into())),
        };
        if names.is_empty() || names.len() > MAX_CHANNELS {
            return Err(ApiError::BadRequest(format!(
                "an event goes to 1 to {MAX_CHANNELS} channels"
            )));
        }
        if self.name.is_empty() || self.name.len() > 200 {
            return Err(ApiError::BadRequest(
                "the event name must be 1 to 200 characters".into(),
            ));
        }
        names.into_iter().map(channel).collect()
    }
}

impl Event {
    fn data(&self) -> Result<Value, ApiError> {
        serde_json::from_str(self.data.get())
            .map_err(|e| ApiError::BadRequest(format!("data: {e}")))
    }
}

fn channel(name: &str) -> Result<Channel, ApiError> {
    wire::channel(name).map_err(|e| ApiError::BadRequest(format!("channel {name}: {e}")))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

fn unavailable() -> ApiError {
    ApiError::Unavailable("Redis is unreachable: channels cannot be read now, retry".into())
}

/// Publishes `event` on each of `channels`, all or none queued.
async fn publish(
    ctx: &Shared,
    event: &Event,
    channels: &[Channel],
    data: &Value,
) -> Result<(), ApiError> {
    let payload = wire::payload(&event.name, data, event.socket_id.as_deref(), None);
    let payload = RawValue::from_string(payload).expect("serde_json made it");
    let deliveries = channels
        .iter()
        .map(|c| {
            let target = Target::Channel(c.clone());
            Delivery {
                frame: Frame::message(&target, &payload),
                target,
                position: None,
            }
        })
        .collect();
    ctx.router
        .publish(deliveries)
        .await
        .map(|_| ())
        .map_err(|_| {
            ApiError::Unavailable("the history store (Redis) cannot be written now; retry".into())
        })
}

/// `{"channels":{…}}` with what `info` asks of each channel, or `{}` when it asks nothing.
async fn channels_info(ctx: &Shared, channels: &[Channel], info: &str) -> Result<Value, ApiError> {
    let wanted: Vec<&str> = info.split(',').filter(|i| !i.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(serde_json::json!({}));
    }
    let mut out = serde_json::Map::new();
    for channel in channels {
        let (users, connections) = count(ctx, channel).await?;
        let mut v = serde_json::json!({});
        for i in &wanted {
            match *i {
                "user_count"
                    if wire::name(channel).is_some_and(|n| Kind::of(n) == Kind::Presence) =>
                {
                    v["user_count"] = users.into()
                }
                "subscription_count" => v["subscription_count"] = connections.into(),
                _ => {}
            }
        }
        let name = wire::name(channel).unwrap_or(channel.as_str());
        out.insert(name.to_string(), v);
    }
    Ok(serde_json::json!({ "channels": out }))
}

/// Users and connections subscribed to `channel`, fleet-wide with Redis.
async fn count(ctx: &Shared, channel: &Channel) -> Result<(u64, u64), ApiError> {
    let c = ctx
        .router
        .presence_count(channel)
        .await
        .map_err(|_| unavailable())?;
    Ok((c.users, c.connections))
}

/// 401 unless the request is signed by the app: key, fresh timestamp, body digest, signature.
fn check_signature(
    app: &App,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let refuse = |why: &str| Err(ApiError::Unauthorized(why.to_string()));
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(signature) = get("auth_signature") else {
        return refuse("auth_signature is required");
    };
    if get("auth_key").as_deref() != Some(app.key.as_str()) {
        return refuse("unknown auth_key");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fresh = get("auth_timestamp")
        .and_then(|t| t.parse::<u64>().ok())
        .is_some_and(|t| t.abs_diff(now) <= MAX_SKEW_SECS);
    if !fresh {
        return refuse("auth_timestamp is missing or more than 600 s from the server's clock");
    }
    if !body.is_empty() || get("body_md5").is_some() {
        let digest = crate::pusher::hex(&Md5::digest(body));
        if get("body_md5").as_deref() != Some(digest.as_str()) {
            return refuse("body_md5 does not match the body");
        }
    }
    params.retain(|(k, _)| k != "auth_signature");
    params.sort();
    let sorted: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!("{method}\n{path}\n{}", sorted.join("&"));
    let expected = app.hmac_hex(&text);
    match bool::from(signature.as_bytes().ct_eq(expected.as_bytes())) {
        true => Ok(()),
        false => refuse("invalid auth_signature"),
    }
}
