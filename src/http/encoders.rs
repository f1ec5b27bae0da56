//! `GET /api/encoders` (SPEC §15): what the start-up probe found for each
//! encoder and decoder candidate, with the reason and likely fix for each
//! one that is not available.

use std::sync::Arc;

use http::StatusCode;
use warp::{Filter, Rejection};

use super::json;
use crate::AppState;

pub fn routes(
    _state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    super::routes::ENCODERS
        .path()
        .and(warp::get().or(warp::head()).unify())
        .map(|| json(&crate::encoders::table().probed(), StatusCode::OK))
}
