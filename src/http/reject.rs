//! The one place where refused HTTP requests become a status and a JSON body `{"error": "..."}`.

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use super::Response;

/// A refused HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: invalid JSON, missing or mistyped fields, bad names, not a WebSocket upgrade.
    BadRequest(String),
    /// 401: missing or wrong API key, or a bad client token.
    Unauthorized(String),
    /// 403: the upgrade's `Origin` is not allowed.
    Forbidden(String),
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint takes another method.
    MethodNotAllowed(&'static str),
    /// 408: the body did not arrive within `--request-timeout`.
    Timeout,
    /// 413: body over `--max-message-bytes`.
    TooLarge(usize),
    /// 414: request target longer than the server reads.
    UriTooLong(usize),
    /// 426: a WebSocket version other than 13.
    UpgradeRequired,
    /// 431: more or larger headers than the server reads.
    HeadersTooLarge(String),
    /// 503: the server cannot take this now (`--max-connections` reached).
    Unavailable(String),
    /// 503 with `Retry-After: 1`: over `--accept-rate`; a second later it can.
    TryLater(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::TryLater(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = matches!(self, ApiError::TryLater(_));
        let text = match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::HeadersTooLarge(m)
            | ApiError::Unavailable(m)
            | ApiError::TryLater(m) => m,
            ApiError::NotFound => "no such endpoint".into(),
            ApiError::MethodNotAllowed(method) => format!("use {method} here"),
            ApiError::Timeout => "the request body did not arrive in time".into(),
            ApiError::TooLarge(max) => format!("body is larger than {max} bytes"),
            ApiError::UriTooLong(max) => format!("request target is longer than {max} bytes"),
            ApiError::UpgradeRequired => "WebSocket version 13 only".into(),
        };
        let mut resp = json(status, serde_json::json!({ "error": text }).to_string());
        if retry_after {
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

/// A response with a JSON body.
pub fn json(status: StatusCode, body: String) -> Response {
    super::response(status, body, "application/json")
}
