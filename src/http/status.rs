//! Transcoding status (SPEC §6): `GET /api/streams/transcoding/status`,
//! `DELETE /api/streams/transcoding/sessions/:id` and
//! `DELETE /api/streams/transcoding/channels/:streamId` (admin), and the
//! Server-Sent Events feed `GET /api/streams/transcoding/events`.
//! No source URL appears in any of them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::StatusCode;
use serde::Serialize;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream, IntervalStream};
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::{json, require_admin};
use crate::channels::ChannelView;
use crate::media::EndReason;
use crate::memory::MemoryReport;
use crate::pool::QueueEntry;
use crate::providers::ProviderView;
use crate::sessions::SessionView;
use crate::AppState;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscodingStatus {
    pub active_sessions: usize,
    pub max_concurrent: usize,
    pub utilization_percentage: f64,
    pub queued_sessions: usize,
    pub max_queued: usize,
    pub remux_sessions: usize,
    pub memory: MemoryReport,
    pub sessions: Vec<SessionView>,
    pub channels: Vec<ChannelView>,
    pub queue: Vec<QueueEntry>,
    /// Providers with a limit or open connections (all: `/api/providers`).
    pub providers: Vec<ProviderView>,
    /// Admission by measured headroom: free cores, each profile's learned
    /// cost, and why the last new encoder was refused.
    pub headroom: crate::admission::HeadroomView,
}

/// The status document; cheap (atomics and two short locks).
pub fn status(state: &AppState) -> TranscodingStatus {
    let pool = state.pool.snapshot();
    let sessions: Vec<SessionView> = state.registry.all().iter().map(|e| e.view()).collect();
    let util = if pool.max_transcodes > 0 {
        (pool.transcodes as f64 * 1000.0 / pool.max_transcodes as f64).round() / 10.0
    } else {
        0.0
    };
    TranscodingStatus {
        active_sessions: pool.transcodes,
        max_concurrent: pool.max_transcodes,
        utilization_percentage: util,
        queued_sessions: pool.queue.len(),
        max_queued: pool.max_queued,
        remux_sessions: pool.remuxes,
        memory: state.memory.report(),
        sessions,
        channels: state.channels.views(),
        headroom: state.headroom.view(
            if pool.auto {
                "auto".to_string()
            } else {
                pool.max_transcodes.to_string()
            },
            pool.transcodes,
        ),
        queue: pool.queue,
        providers: state.providers.active(&state.catalog.snapshot()),
    }
}

/// A 404 naming `id` (cut to 64 characters) in `message` at its `{}`.
fn not_found(code: &'static str, message: &str, id: &str) -> Rejection {
    let id: String = id.chars().take(64).collect();
    warp::reject::custom(ApiError::not_found(code, message.replacen("{}", &id, 1)))
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let s = state.clone();
    let get = super::routes::STATUS
        .path()
        .and(warp::get())
        .map(move || json(&status(&s), StatusCode::OK));
    let s = state.clone();
    let stop = super::routes::SESSION
        .with_param()
        .and(warp::delete())
        .and(require_admin(state.clone()))
        .and_then(move |id: String| {
            let s = s.clone();
            async move {
                let entry = s
                    .registry
                    .get(&id)
                    .ok_or_else(|| not_found("session_not_found", "session '{}' not found", &id))?;
                entry.viewer.end(EndReason::AdminStop);
                tracing::info!(session_id = %id, "session stopped by admin");
                Ok::<_, Rejection>(
                    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response(),
                )
            }
        });
    let s = state.clone();
    let stop_channel = super::routes::CHANNEL
        .with_param()
        .and(warp::delete())
        .and(require_admin(state.clone()))
        .and_then(move |id: String| {
            let s = s.clone();
            async move {
                let ch = s.channels.get(&id).ok_or_else(|| {
                    not_found(
                        "channel_not_found",
                        "no channel of stream '{}' is running",
                        &id,
                    )
                })?;
                let viewers: usize = ch.renditions().iter().map(|r| r.viewers()).sum();
                ch.stop(EndReason::AdminStop);
                tracing::info!(stream_id = %id, viewers, "channel stopped by admin");
                Ok::<_, Rejection>(json(
                    &serde_json::json!({ "streamId": ch.stream_id, "viewers": viewers }),
                    StatusCode::OK,
                ))
            }
        });
    let s = state;
    let events = super::routes::EVENTS.path().and(warp::get()).map(move || {
        let session_events =
            BroadcastStream::new(s.registry.subscribe()).filter_map(|ev| async move {
                match ev {
                    Ok(ev) => Event::default().event(ev.name()).json_data(&ev).ok(),
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Event::default().event("lagged").data(n.to_string()))
                    }
                }
            });
        let st = s.clone();
        let stats = IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).filter_map(
            move |_| {
                let doc = status(&st);
                async move { Event::default().event("stats").json_data(&doc).ok() }
            },
        );
        let stream = futures::stream::select(session_events, stats).map(Ok::<_, Infallible>);
        let mut res = warp::sse::reply(
            warp::sse::keep_alive()
                .interval(Duration::from_secs(15))
                .stream(stream),
        )
        .into_response();
        res.headers_mut()
            .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
        res
    });
    get.or(stop)
        .unify()
        .or(stop_channel)
        .unify()
        .or(events)
        .unify()
}
