//! HDHomeRun tuner routes (SPEC §14), served when `HDHR_ENABLED` (else
//! they are 404 like any unknown path):
//!
//! - `GET /discover.json`: the device, its `BaseURL` and `TunerCount`;
//! - `GET /lineup_status.json`: never scanning, scan possible;
//! - `GET /lineup.json`: every enabled stream in channel-number order, its
//!   URL a TS preview of this server;
//! - `POST /lineup.post?scan=start|abort`: accepted (the lineup is the
//!   catalog, there is nothing to scan);
//! - `GET /device.xml`: the UPnP device description.
//!
//! `BaseURL` is `HDHR_BASE_URL`, else built from the request's `Host` (and
//! `X-Forwarded-Proto` from a trusted proxy). The documents themselves are
//! [`crate::tuner`]'s.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::extract::Client;
use super::{json, query_map};
use crate::tuner;
use crate::AppState;

/// The base URL media servers should use for this request.
fn base_url(
    state: &AppState,
    host: Option<String>,
    proto: Option<String>,
    client: &Client,
) -> Result<String, ApiError> {
    if let Some(base) = &state.settings.hdhr_base_url {
        return Ok(base.clone());
    }
    let host = match host.map(|h| h.trim().to_string()) {
        Some(h) if super::import::plain_host(&h) => h,
        Some(_) => {
            return Err(ApiError::bad_request(
                "the Host header is not a valid host[:port]",
            ))
        }
        None => std::net::SocketAddr::new(state.settings.host, state.settings.port).to_string(),
    };
    // Only a trusted proxy may say the client came over HTTPS.
    let https =
        client.peer_trusted && proto.is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    Ok(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// The tuner's channels a media server may still open now: the free
/// encoder slots, channel slots and provider connections, whichever is
/// smallest.
pub fn tuner_count(state: &AppState) -> usize {
    let pool = state.pool.snapshot();
    let free_channels = state.settings.max_channels.saturating_sub(pool.channels);
    let lineup: Vec<_> = state
        .catalog
        .snapshot()
        .iter()
        .filter(|s| s.enabled)
        .cloned()
        .collect();
    tuner::tuner_count(
        pool.max_transcodes,
        pool.transcodes,
        state.memory.status(),
        state.shutdown.is_shutting_down(),
    )
    .min(tuner::channel_room(
        free_channels,
        state.providers.room(&lineup),
    ))
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    // Not served at all (404) when the emulation is off.
    let st = state.clone();
    let on = warp::any()
        .and_then(move || {
            let on = st.tuner.is_some();
            async move {
                if on {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one();
    let st = state.clone();
    let base = warp::header::optional::<String>("host")
        .and(warp::header::optional::<String>("x-forwarded-proto"))
        .and(super::extract::client(state.clone()))
        .and_then(
            move |host: Option<String>, proto: Option<String>, client: Client| {
                let st = st.clone();
                async move { base_url(&st, host, proto, &client).map_err(warp::reject::custom) }
            },
        );

    let st = state.clone();
    let discover = super::routes::HDHR_DISCOVER
        .path()
        .and(warp::get())
        .and(base.clone())
        .map(move |base: String| {
            let id = st.tuner.as_ref().expect("routes served only when on");
            json(
                &tuner::discover(id, &base, tuner_count(&st)),
                StatusCode::OK,
            )
        });
    let status = super::routes::HDHR_LINEUP_STATUS
        .path()
        .and(warp::get())
        .map(|| json(&tuner::lineup_status(), StatusCode::OK));
    let st = state.clone();
    let lineup = super::routes::HDHR_LINEUP
        .path()
        .and(warp::get())
        .and(base.clone())
        .map(move |base: String| {
            let streams = st.catalog.snapshot();
            json(
                &tuner::lineup(&streams, &base, st.settings.hdhr_quality.as_deref()),
                StatusCode::OK,
            )
        });
    let post = super::routes::HDHR_LINEUP_POST
        .path()
        .and(warp::post())
        .and(query_map())
        .and_then(|q: HashMap<String, String>| async move {
            match q.get("scan").map(|s| s.trim()) {
                Some("start") | Some("abort") => {
                    Ok(warp::reply::with_status("", StatusCode::OK).into_response())
                }
                other => Err(warp::reject::custom(ApiError::bad_request(format!(
                    "scan must be start or abort, not '{}'",
                    other.unwrap_or("")
                )))),
            }
        });
    let st = state.clone();
    let device = super::routes::HDHR_DEVICE
        .path()
        .and(warp::get())
        .and(base)
        .map(move |base: String| {
            let id = st.tuner.as_ref().expect("routes served only when on");
            let mut res = warp::reply::with_status(tuner::device_xml(id, &base), StatusCode::OK)
                .into_response();
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=utf-8"),
            );
            res
        });
    on.and(
        discover
            .or(status)
            .unify()
            .or(lineup)
            .unify()
            .or(post)
            .unify()
            .or(device)
            .unify(),
    )
}
