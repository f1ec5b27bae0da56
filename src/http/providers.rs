//! Provider routes (SPEC §13): `GET/POST /api/providers`,
//! `GET/PUT/DELETE /api/providers/:id`. Reads are open (they never show a
//! URL or credential); writes need admin rights. The accounts and counting
//! are [`crate::providers`]; this module shapes requests and replies.

use std::sync::Arc;

use http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::{json, json_body, require_admin, MAX_CATALOG_BODY};
use crate::providers::{ProviderError, ProviderInput};
use crate::AppState;

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let msg = e.to_string();
        match e {
            ProviderError::NotFound(_) => ApiError::not_found("provider_not_found", msg),
            ProviderError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "provider_exists", msg)
            }
            ProviderError::InUse(..) => ApiError::new(StatusCode::CONFLICT, "provider_in_use", msg),
            ProviderError::Invalid(_) => ApiError::bad_request(msg),
            ProviderError::Io(_) => {
                tracing::error!(error = %msg, "providers write failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    "the providers could not be written",
                )
            }
        }
    }
}

fn reject(e: impl Into<ApiError>) -> Rejection {
    warp::reject::custom(e.into())
}

/// The provider's view as the list shows it, with its live connections.
fn shown(state: &AppState, id: &str) -> Result<warp::reply::Response, Rejection> {
    let view = state
        .providers
        .view(id, &state.catalog.snapshot())
        .ok_or_else(|| reject(ProviderError::NotFound(id.to_string())))?;
    Ok(json(&view, StatusCode::OK))
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let s = state.clone();
    let list = super::routes::PROVIDERS
        .path()
        .and(warp::get())
        .map(move || json(&s.providers.list(&s.catalog.snapshot()), StatusCode::OK));
    let s = state.clone();
    let get = super::routes::PROVIDER
        .with_param()
        .and(warp::get())
        .and_then(move |id: String| {
            let s = s.clone();
            async move { shown(&s, &id) }
        });
    let s = state.clone();
    let create = super::routes::PROVIDERS
        .path()
        .and(warp::post())
        .and(require_admin(state.clone()))
        .and(json_body::<ProviderInput>(MAX_CATALOG_BODY))
        .and_then(move |input: ProviderInput| {
            let s = s.clone();
            async move {
                let made = s.providers.create(input).await.map_err(reject)?;
                tracing::info!(provider = %made.id, max_connections = ?made.max_connections, "provider created");
                let view = s.providers.view(&made.id, &s.catalog.snapshot());
                Ok::<_, Rejection>(json(&view, StatusCode::CREATED))
            }
        });
    let s = state.clone();
    let update = super::routes::PROVIDER
        .with_param()
        .and(warp::put())
        .and(require_admin(state.clone()))
        .and(json_body::<ProviderInput>(MAX_CATALOG_BODY))
        .and_then(move |id: String, input: ProviderInput| {
            let s = s.clone();
            async move {
                let streams = s.catalog.snapshot();
                let p = s
                    .providers
                    .update(&id, input, &streams)
                    .await
                    .map_err(reject)?;
                tracing::info!(provider = %p.id, max_connections = ?p.max_connections, "provider updated");
                shown(&s, &p.id)
            }
        });
    let s = state.clone();
    let delete = super::routes::PROVIDER
        .with_param()
        .and(warp::delete())
        .and(require_admin(state))
        .and_then(move |id: String| {
            let s = s.clone();
            async move {
                s.providers
                    .delete(&id, &s.catalog.snapshot())
                    .await
                    .map_err(reject)?;
                tracing::info!(provider = %id, "provider deleted");
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
