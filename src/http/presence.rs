//! The presence API for backends (API key): `GET /presence?channel=c[&after=u][&limit=n]`
//! (members, a page at a time), `GET /presence/count?channel=c`, and
//! `POST /presence/counts` with `{"channels": [...]}` (at most 1,000) for many at once.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::api::{check_key, read_body};
use super::reject::{json, ApiError};
use super::Response;
use crate::context::Shared;
use crate::presence;
use crate::protocol::{Channel, UserId};
use crate::protocol::{DEFAULT_PAGE, MAX_PAGE};

/// Most channels in one `POST /presence/counts`.
pub const MAX_CHANNELS: usize = 1000;

pub async fn handle(req: Request<Incoming>, ctx: &Shared) -> Response {
    match answer(req, ctx).await {
        Ok(body) => json(StatusCode::OK, body.to_string()),
        Err(e) => e.into_response(),
    }
}

async fn answer(req: Request<Incoming>, ctx: &Shared) -> Result<serde_json::Value, ApiError> {
    check_key(&req, ctx)?;
    let router = &ctx.router;
    let unreachable = |_| {
        ApiError::Unavailable("Redis is unreachable: presence cannot be read now, retry".into())
    };
    let path = req.uri().path().to_string();
    if path == "/presence/counts" {
        if req.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed("POST"));
        }
        let limit = ctx.config.request_timeout();
        let body = read_body(req, ctx.config.max_message_bytes, limit).await?;
        #[derive(serde::Deserialize)]
        struct Body {
            channels: Vec<String>,
        }
        let body: Body = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("body must be {{\"channels\": [names]}}: {e}"))
        })?;
        if body.channels.len() > MAX_CHANNELS {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_CHANNELS} channels per call"
            )));
        }
        let mut counts = serde_json::Map::new();
        for name in body.channels {
            let channel = Channel::new(&name)
                .map_err(|e| ApiError::BadRequest(format!("channel {name:?}: {e}")))?;
            let c = router.presence_count(&channel).await.map_err(unreachable)?;
            counts.insert(
                name,
                serde_json::json!({"users": c.users, "connections": c.connections}),
            );
        }
        return Ok(serde_json::json!({ "counts": counts }));
    }
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let param = |name: &str| super::query::param(req.uri().query(), name);
    let name =
        param("channel").ok_or_else(|| ApiError::BadRequest("?channel= is required".into()))?;
    let channel = Channel::new(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if path == "/presence/count" {
        let count = router.presence_count(&channel).await.map_err(unreachable)?;
        return Ok(presence::count_json(&channel, count));
    }
    let after = match param("after") {
        Some(a) => Some(UserId::new(&a).map_err(|e| ApiError::BadRequest(e.to_string()))?),
        None => None,
    };
    let limit = match param("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")))?,
        None => DEFAULT_PAGE,
    };
    let page = router
        .presence_page(&channel, after, limit)
        .await
        .map_err(unreachable)?;
    Ok(presence::page_json(&channel, &page))
}
