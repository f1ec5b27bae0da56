//! `GET /streams/preview/:id?quality=&transcode=&format=&timeout=&join=` (SPEC §6, §11).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::{client_ip, query_map};
use crate::channels::fanout::Join;
use crate::config::{MAX_REQUEST_TIMEOUT_MS, MIN_REQUEST_TIMEOUT_MS};
use crate::media::{Format, ModeRequest};
use crate::preview::{self, PreviewRequest};
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let st = state.clone();
    super::routes::PREVIEW
        .with_param()
        .and(warp::get())
        .and(query_map())
        .and(client_ip(state))
        .and_then(move |id: String, q: HashMap<String, String>, ip: IpAddr| {
            let st = st.clone();
            async move { handle(st, id, q, ip).await.map_err(warp::reject::custom) }
        })
}

/// Parses the query into a request; every bad value is a 400 naming it.
pub fn parse_request(
    id: String,
    q: &HashMap<String, String>,
    default_timeout: Duration,
    client_ip: IpAddr,
) -> Result<PreviewRequest, ApiError> {
    let quality = match q.get("quality").map(|s| s.trim()) {
        None | Some("") => None,
        Some(v) if crate::profiles::valid_name(v) => Some(v.to_string()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "quality '{v}' is not a profile name"
            )))
        }
    };
    let transcode = match q
        .get("transcode")
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("auto") => ModeRequest::Auto,
        Some("true") | Some("1") | Some("yes") => ModeRequest::Transcode,
        Some("false") | Some("0") | Some("no") => ModeRequest::Remux,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "transcode must be true or false, not '{v}'"
            )))
        }
    };
    let format = match q.get("format").map(|s| s.trim()) {
        None | Some("") => Format::Mp4,
        Some(v) => Format::parse(v)
            .ok_or_else(|| ApiError::bad_request(format!("format must be mp4 or ts, not '{v}'")))?,
    };
    let timeout = match q.get("timeout").map(|s| s.trim()) {
        None | Some("") => default_timeout,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (MIN_REQUEST_TIMEOUT_MS..=MAX_REQUEST_TIMEOUT_MS).contains(&ms) => {
                Duration::from_millis(ms)
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                "timeout must be {MIN_REQUEST_TIMEOUT_MS}-{MAX_REQUEST_TIMEOUT_MS} ms, not '{v}'"
            )))
            }
        },
    };
    let join = match q.get("join").map(|s| s.trim()) {
        None | Some("") | Some("gop") => Join::Gop,
        Some("live") => Join::Live,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "join must be live or gop, not '{v}'"
            )))
        }
    };
    if !crate::catalog::valid_id(&id) {
        return Err(ApiError::not_found(
            "stream_not_found",
            format!(
                "stream '{}' not found",
                id.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(PreviewRequest {
        stream_id: id,
        quality,
        transcode,
        format,
        timeout,
        client_ip,
        join,
    })
}

async fn handle(
    state: Arc<AppState>,
    id: String,
    q: HashMap<String, String>,
    ip: IpAddr,
) -> Result<warp::reply::Response, ApiError> {
    let req = parse_request(id, &q, state.settings.start_timeout(), ip)?;
    let started = preview::start(&state, req).await.map_err(ApiError::from)?;
    let mut res = warp::reply::stream(started.body).into_response();
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(started.format.content_type()),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&started.session_id) {
        h.insert("x-session-id", v);
    }
    h.insert(
        "x-sluice-mode",
        HeaderValue::from_static(started.mode.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&started.quality) {
        h.insert("x-sluice-quality", v);
    }
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("X-Session-Id, X-Sluice-Mode, X-Sluice-Quality"),
    );
    Ok(res)
}
