//! Health routes (SPEC §6): `/live`, `/ready`, `/health` and the aliases
//! `/api/health/live`, `/api/health/ready`, `/api/health`. They read the
//! cached checks in [`crate::health`], so they answer in microseconds even
//! while transcodes run.

use std::sync::Arc;

use http::StatusCode;
use warp::{Filter, Rejection};

use super::json;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let live = super::routes::LIVE
        .path()
        .or(super::routes::API_HEALTH_LIVE.path())
        .unify()
        .and(warp::get().or(warp::head()).unify())
        .map(|| json(&serde_json::json!({"status": "alive"}), StatusCode::OK));
    let s = state.clone();
    let ready = super::routes::READY
        .path()
        .or(super::routes::API_HEALTH_READY.path())
        .unify()
        .and(warp::get().or(warp::head()).unify())
        .map(move || {
            let reasons = crate::health::not_ready_reasons(&s);
            if reasons.is_empty() {
                json(&serde_json::json!({"status": "ready"}), StatusCode::OK)
            } else {
                // `error` names the first reason as every error does, so a
                // saturated replica answers `{"error": "saturated", ...}`.
                let error = reasons[0]
                    .split(':')
                    .next()
                    .unwrap_or("not_ready")
                    .to_string();
                json(
                    &serde_json::json!({
                        "status": "not_ready",
                        "error": error,
                        "message": format!("not ready: {}", reasons.join("; ")),
                        "reasons": reasons,
                    }),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
            }
        });
    let s = state;
    let health = super::routes::HEALTH
        .path()
        .or(super::routes::API_HEALTH.path())
        .unify()
        .and(warp::get().or(warp::head()).unify())
        .map(move || {
            let report = crate::health::report(&s);
            let code = if report.status == crate::health::Status::Unhealthy {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json(&report, code)
        });
    live.or(ready).unify().or(health).unify()
}
