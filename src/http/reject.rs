//! The one place where HTTP errors become a status and a JSON body `{"error": "..."}`.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::reject::Rejection;
use warp::reply::Response;

/// A refused HTTP request.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// 401: missing or wrong API key, or a bad client token.
    Unauthorized(String),
    /// 403: the upgrade's `Origin` is not allowed.
    Forbidden(String),
    /// 400: invalid JSON, missing or mistyped fields, bad names.
    BadRequest(String),
    /// 413: body over `--max-message-bytes`.
    TooLarge(usize),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let text = match self {
            ApiError::Unauthorized(m) | ApiError::Forbidden(m) | ApiError::BadRequest(m) => m,
            ApiError::TooLarge(max) => format!("body is larger than {max} bytes"),
        };
        json_error(status, &text)
    }
}

pub fn json_error(status: StatusCode, text: &str) -> Response {
    let body = serde_json::json!({ "error": text }).to_string();
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Turns every rejection, warp's own included, into a JSON error.
pub async fn recover(err: Rejection) -> Result<Response, Infallible> {
    if let Some(e) = err.find::<ApiError>() {
        return Ok(e.clone().into_response());
    }
    let (status, text) = if err.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(json_error(status, text))
}
