//! Request ids and the access log: every request gets an id (the client's
//! `X-Request-Id` when it is safe to reuse, else a fresh UUID), runs inside a
//! `request` span carrying it (so every log line of the request shows
//! `requestId`), is logged exactly once with method, route template, status
//! and duration, is counted in `sluice_http_requests_total`, and gets the id
//! echoed on its response — errors and streaming responses included.
//!
//! Route templates come from [`super::routes::ROUTES`]; a path that matches none is
//! `unmatched` when it was a 404 and `other` otherwise, so labels stay bounded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest client-supplied request id that is reused.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client-supplied id may be reused: 1-128 of `[A-Za-z0-9._-]`.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The template `path` was served by, or `None` when no route has that shape.
pub fn route_template(path: &str) -> Option<&'static str> {
    super::routes::find(path).map(|r| r.template)
}

/// The route label for metrics and logs.
fn route_label(path: &str, status: http::StatusCode) -> &'static str {
    match route_template(path) {
        Some(t) => t,
        None if status == http::StatusCode::NOT_FOUND => "unmatched",
        None => "other",
    }
}

/// Methods as metric labels; anything unusual is `other` (bounded labels).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

struct RequestCtx {
    id: String,
    method: Method,
    path: String,
    started: Instant,
}

/// Wraps every route: request id in, request span around, access log line,
/// request counter, and `X-Request-Id` out.
pub fn wrap<F>(
    state: Arc<AppState>,
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let begin = warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .map(|method: Method, path: FullPath, headers: HeaderMap| {
            let id = headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| valid_request_id(v))
                .map(String::from)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            tracing::Span::current().record("requestId", id.as_str());
            RequestCtx {
                id,
                method,
                path: path.as_str().to_string(),
                started: Instant::now(),
            }
        });
    begin
        .and(inner)
        .map(move |ctx: RequestCtx, res: Response| finish(&state, ctx, res))
        .with(warp::trace(|_| {
            tracing::info_span!("request", requestId = tracing::field::Empty)
        }))
        .map(Reply::into_response)
}

fn finish(state: &AppState, ctx: RequestCtx, mut res: Response) -> Response {
    let status = res.status();
    let route = route_label(&ctx.path, status);
    let duration_ms = (ctx.started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    state
        .metrics
        .record_http(method_label(&ctx.method), route, status.as_u16());
    // Raw paths are only logged for known routes: unmatched ones can be
    // arbitrary client junk.
    let path = if route_template(&ctx.path).is_some() {
        ctx.path.as_str()
    } else {
        ""
    };
    if status.is_server_error() {
        tracing::warn!(method = %ctx.method, route, path, status = status.as_u16(), duration_ms, "request");
    } else {
        tracing::info!(method = %ctx.method, route, path, status = status.as_u16(), duration_ms, "request");
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_shapes_not_values() {
        assert_eq!(
            route_template("/streams/preview/demo-smpte"),
            Some("/streams/preview/:id")
        );
        assert_eq!(
            route_template("/api/streams/import"),
            Some("/api/streams/import")
        );
        assert_eq!(route_template("/api/streams/abc"), Some("/api/streams/:id"));
        assert_eq!(route_template("/"), Some("/"));
        assert_eq!(
            route_template("/api/streams/transcoding/sessions/x1"),
            Some("/api/streams/transcoding/sessions/:sessionId")
        );
        assert_eq!(route_template("/streams/preview/"), None);
        assert_eq!(route_template("/nope/x"), None);
        assert_eq!(
            route_label("/nope", http::StatusCode::NOT_FOUND),
            "unmatched"
        );
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id("abc-123_X.y"));
        assert!(valid_request_id(&"a".repeat(128)));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id("a\"b"));
        assert!(!valid_request_id("é"));
    }
}
