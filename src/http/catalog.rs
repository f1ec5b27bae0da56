//! Catalog routes: `GET/POST /api/streams`, `GET/PUT/DELETE /api/streams/:id`.
//! Reads show URLs redacted unless the caller has admin rights; writes need
//! admin rights.

use std::sync::Arc;

use http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::{admin_flag, json, json_body, require_admin, MAX_CATALOG_BODY};
use crate::catalog::{CatalogError, Stream, StreamInput};
use crate::AppState;

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let msg = e.to_string();
        match e {
            CatalogError::NotFound(_) => ApiError::not_found("stream_not_found", msg),
            CatalogError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "stream_exists", msg),
            CatalogError::NumberTaken(..) => {
                ApiError::new(StatusCode::CONFLICT, "number_taken", msg)
            }
            CatalogError::Invalid(_) => ApiError::bad_request(msg),
            CatalogError::Io(_) => {
                tracing::error!(error = %msg, "catalog write failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    "the catalog could not be written",
                )
            }
        }
    }
}

fn shown(s: &Stream, admin: bool) -> Stream {
    if admin {
        s.clone()
    } else {
        s.redacted()
    }
}

fn reject(e: impl Into<ApiError>) -> Rejection {
    warp::reject::custom(e.into())
}

/// A stream may only name a provider that exists.
fn known_provider(state: &AppState, input: &StreamInput) -> Result<(), Rejection> {
    match input.provider.as_deref() {
        Some(p) if !p.is_empty() && !state.providers.exists(p) => {
            Err(reject(ApiError::bad_request(format!(
                "provider '{p}' does not exist (see /api/providers)"
            ))))
        }
        _ => Ok(()),
    }
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let s = state.clone();
    let list = super::routes::STREAMS
        .path()
        .and(warp::get())
        .and(admin_flag(state.clone()))
        .map(move |admin: bool| {
            let all: Vec<Stream> = s
                .catalog
                .snapshot()
                .iter()
                .map(|x| shown(x, admin))
                .collect();
            json(&all, StatusCode::OK)
        });
    let s = state.clone();
    let get = super::routes::STREAM
        .with_param()
        .and(warp::get())
        .and(admin_flag(state.clone()))
        .and_then(move |id: String, admin: bool| {
            let s = s.clone();
            async move {
                let found = s
                    .catalog
                    .get(&id)
                    .ok_or_else(|| reject(CatalogError::NotFound(id)))?;
                Ok::<_, Rejection>(json(&shown(&found, admin), StatusCode::OK))
            }
        });
    let s = state.clone();
    let create = super::routes::STREAMS.path()
        .and(warp::post())
        .and(require_admin(state.clone()))
        .and(json_body::<StreamInput>(MAX_CATALOG_BODY))
        .and_then(move |input: StreamInput| {
            let s = s.clone();
            async move {
                known_provider(&s, &input)?;
                let created = s.catalog.create(input).await.map_err(reject)?;
                tracing::info!(stream_id = %created.id, url = %crate::redact::redact_url(&created.url), "stream created");
                Ok::<_, Rejection>(json(&created, StatusCode::CREATED))
            }
        });
    let s = state.clone();
    let update = super::routes::STREAM
        .with_param()
        .and(warp::put())
        .and(require_admin(state.clone()))
        .and(json_body::<StreamInput>(MAX_CATALOG_BODY))
        .and_then(move |id: String, input: StreamInput| {
            let s = s.clone();
            async move {
                known_provider(&s, &input)?;
                let updated = s.catalog.update(&id, input).await.map_err(reject)?;
                tracing::info!(stream_id = %updated.id, "stream updated");
                Ok::<_, Rejection>(json(&updated, StatusCode::OK))
            }
        });
    let s = state.clone();
    let delete = super::routes::STREAM
        .with_param()
        .and(warp::delete())
        .and(require_admin(state))
        .and_then(move |id: String| {
            let s = s.clone();
            async move {
                s.catalog.delete(&id).await.map_err(reject)?;
                tracing::info!(stream_id = %id, "stream deleted");
                Ok::<_, Rejection>(
                    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response(),
                )
            }
        });
    list.or(get)
        .unify()
        .or(create)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
}
