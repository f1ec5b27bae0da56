//! JSON errors: `{"error": "<code>", "message": "<human text>"}` with the
//! right status for every failure, including warp's own rejections
//! (unknown route, wrong method, bad query, oversized body).

use std::convert::Infallible;

use http::StatusCode;
use serde::Serialize;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::pool::AdmitError;
use crate::preview::PreviewError;
use crate::providers::ProviderBusy;

/// An API error, usable both as a rejection and as a reply.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Extra response headers (e.g. `X-RateLimit-*` on a 429).
    pub headers: Vec<(&'static str, String)>,
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn retry(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: self.code,
            message: &self.message,
        })
        .unwrap_or_else(|_| b"{\"error\":\"internal\",\"message\":\"\"}".to_vec());
        let mut res = Response::new(body.into());
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        if let Some(s) = self.retry_after {
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
        }
        for (name, value) in &self.headers {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                h.insert(*name, v);
            }
        }
        res
    }
}

impl From<PreviewError> for ApiError {
    fn from(e: PreviewError) -> Self {
        let msg = e.to_string();
        match e {
            PreviewError::NotFound(_) => ApiError::not_found("stream_not_found", msg),
            PreviewError::BadRequest(_) => ApiError::bad_request(msg),
            PreviewError::Disabled(_) => {
                ApiError::new(StatusCode::CONFLICT, "stream_disabled", msg)
            }
            PreviewError::Incompatible(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "incompatible_source", msg)
            }
            PreviewError::Admit(AdmitError::TooManySessions(_)) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", msg).retry(5)
            }
            PreviewError::Admit(AdmitError::QueueFull(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", msg).retry(5)
            }
            PreviewError::Admit(AdmitError::TooManyChannels(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "channels_full", msg).retry(5)
            }
            PreviewError::Admit(AdmitError::TooManyViewers(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "viewers_full", msg).retry(5)
            }
            PreviewError::Admit(AdmitError::Overloaded(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", msg).retry(10)
            }
            PreviewError::Admit(AdmitError::PoolFull) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "pool_full", msg).retry(5)
            }
            PreviewError::MemoryCritical { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "memory_critical", msg).retry(30)
            }
            PreviewError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg).retry(10)
            }
            PreviewError::SourceFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "source_failed", msg)
            }
            PreviewError::StartTimeout(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "start_timeout", msg)
            }
            PreviewError::ProviderBusy(busy) => busy.into(),
        }
    }
}

impl From<ProviderBusy> for ApiError {
    fn from(busy: ProviderBusy) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_busy",
            format!("{busy}; try again when one of its channels has ended"),
        )
        .retry(PROVIDER_RETRY_AFTER)
    }
}

/// `Retry-After` of a `provider_busy` answer: a channel's linger, roughly.
pub const PROVIDER_RETRY_AFTER: u64 = 5;

/// Turns every rejection into a JSON error.
pub async fn recover(rej: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(e) = rej.find::<ApiError>() {
        e.clone()
    } else if rej.is_not_found() {
        ApiError::not_found("not_found", "no such route")
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if rej.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required",
        )
    } else if rej.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "unsupported Content-Type",
        )
    } else if rej.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("invalid query string")
    } else if let Some(e) = rej.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(format!("invalid header: {}", e.name()))
    } else if let Some(e) = rej.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request(format!("missing header: {}", e.name()))
    } else if let Some(e) = rej.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request(format!("invalid body: {e}"))
    } else {
        tracing::warn!(rejection = ?rej, "unhandled rejection");
        ApiError::bad_request("the request could not be handled")
    };
    Ok(err.into_response())
}
