//! `GET /metrics` (SPEC §6): the Prometheus exposition rendered by
//! [`crate::metrics`], in the OpenMetrics text format with its content type.
//! Never rate limited; reads only atomics and short locks.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    super::routes::METRICS
        .path()
        .and(warp::get().or(warp::head()).unify())
        .and_then(move || {
            let state = state.clone();
            async move {
                let text = state.metrics.render(&state).map_err(|e| {
                    warp::reject::custom(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("metrics could not be encoded: {e}"),
                    ))
                })?;
                let mut res = text.into_response();
                let h = res.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                h.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                Ok::<_, Rejection>(res)
            }
        })
}
