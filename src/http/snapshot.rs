//! `GET /streams/snapshot/:id.jpg?width=&timeout=` (SPEC §16): a JPEG of
//! the channel now, cached, with an entity tag a grid can poll cheaply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::query_map;
use crate::config::{MAX_REQUEST_TIMEOUT_MS, MIN_REQUEST_TIMEOUT_MS};
use crate::snapshot::{self, SnapshotError, Snapshots};
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    super::routes::SNAPSHOT
        .with_param()
        .and(warp::get().or(warp::head()).unify())
        .and(query_map())
        .and(warp::header::optional::<String>("if-none-match"))
        .and_then(
            move |file: String, q: HashMap<String, String>, inm: Option<String>| {
                let st = state.clone();
                async move { handle(st, file, q, inm).await.map_err(warp::reject::custom) }
            },
        )
}

/// What a snapshot request asks for.
#[derive(Debug, PartialEq)]
pub struct SnapshotRequest {
    pub stream_id: String,
    pub width: u32,
    pub timeout: Duration,
}

/// Parses `<id>.jpg` and the query; every bad value is a 400 naming it.
pub fn parse_request(
    file: &str,
    q: &HashMap<String, String>,
    default_timeout: Duration,
) -> Result<SnapshotRequest, ApiError> {
    let not_found = || {
        ApiError::not_found(
            "stream_not_found",
            format!(
                "stream '{}' not found",
                file.chars().take(64).collect::<String>()
            ),
        )
    };
    let id = file.strip_suffix(".jpg").ok_or_else(not_found)?;
    if !crate::catalog::valid_id(id) {
        return Err(not_found());
    }
    let width = match q.get("width").map(|s| s.trim()) {
        None | Some("") => snapshot::DEFAULT_WIDTH,
        Some(v) => match v.parse::<u32>() {
            Ok(w) if (snapshot::MIN_WIDTH..=snapshot::MAX_WIDTH).contains(&w) => w,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "width must be {}-{} pixels, not '{}'",
                    snapshot::MIN_WIDTH,
                    snapshot::MAX_WIDTH,
                    v.chars().take(32).collect::<String>()
                )))
            }
        },
    };
    let timeout = match q.get("timeout").map(|s| s.trim()) {
        None | Some("") => default_timeout,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (MIN_REQUEST_TIMEOUT_MS..=MAX_REQUEST_TIMEOUT_MS).contains(&ms) => {
                Duration::from_millis(ms)
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                "timeout must be {MIN_REQUEST_TIMEOUT_MS}-{MAX_REQUEST_TIMEOUT_MS} ms, not '{}'",
                v.chars().take(32).collect::<String>()
            )))
            }
        },
    };
    Ok(SnapshotRequest {
        stream_id: id.to_string(),
        width,
        timeout,
    })
}

async fn handle(
    state: Arc<AppState>,
    file: String,
    q: HashMap<String, String>,
    if_none_match: Option<String>,
) -> Result<warp::reply::Response, ApiError> {
    // The answer has to come within the request deadline: a capture that
    // cannot make it in time answers 504 (or an older picture) first.
    let limit = super::limits::REQUEST_TIMEOUT.saturating_sub(Duration::from_secs(1));
    let mut req = parse_request(&file, &q, state.settings.start_timeout())?;
    req.timeout = req.timeout.min(limit);
    let shot = Snapshots::get(&state, &req.stream_id, req.width, req.timeout)
        .await
        .map_err(ApiError::from)?;
    let p = &shot.picture;
    let ttl = state.snapshots.ttl();
    // A stand-in picture is not cached by clients: the next poll retries.
    let max_age = if shot.stale {
        0
    } else {
        ttl.saturating_sub(p.age()).as_secs()
    };
    let matches = if_none_match.is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == p.etag || t == "*")
    });
    let mut res = if matches {
        let mut r = warp::reply::Response::new(Default::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = warp::reply::Response::new(p.jpeg.clone().into());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("image/jpeg"),
        );
        r
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&p.etag) {
        h.insert(http::header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}")) {
        h.insert(http::header::CACHE_CONTROL, v);
    }
    h.insert(
        "x-sluice-snapshot-age",
        HeaderValue::from(p.age().as_secs()),
    );
    if let Some((w, ht)) = p.source_size {
        if let Ok(v) = HeaderValue::from_str(&format!("{w}x{ht}")) {
            h.insert("x-sluice-source-size", v);
        }
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("ETag, X-Sluice-Snapshot-Age, X-Sluice-Source-Size"),
    );
    Ok(res.into_response())
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        let msg = e.to_string();
        match e {
            SnapshotError::NotFound(_) => ApiError::not_found("stream_not_found", msg),
            SnapshotError::Disabled(_) => {
                ApiError::new(StatusCode::CONFLICT, "stream_disabled", msg)
            }
            SnapshotError::NoVideo => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_video", msg)
            }
            SnapshotError::SourceFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "source_failed", msg)
            }
            SnapshotError::Timeout => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "snapshot_timeout", msg)
            }
            SnapshotError::QueueFull => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", msg).retry(5)
            }
            SnapshotError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg).retry(10)
            }
            SnapshotError::ProviderBusy(busy) => busy.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn width_defaults_and_is_bounded() {
        let t = Duration::from_secs(5);
        let r = parse_request("abc.jpg", &q(&[]), t).unwrap();
        assert_eq!((r.stream_id.as_str(), r.width), ("abc", 320));
        assert_eq!(
            parse_request("abc.jpg", &q(&[("width", "1280")]), t)
                .unwrap()
                .width,
            1280
        );
        for bad in ["1281", "0", "-5", "wide", "3.5"] {
            let e = parse_request("abc.jpg", &q(&[("width", bad)]), t).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, "bad_request"), "{bad}");
        }
        assert_eq!(
            parse_request("abc.png", &q(&[]), t).unwrap_err().status,
            404
        );
        assert_eq!(
            parse_request("a b.jpg", &q(&[]), t).unwrap_err().status,
            404
        );
    }
}
