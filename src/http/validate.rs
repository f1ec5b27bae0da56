//! `POST /api/streams/validate` (SPEC §6): probes a source URL and answers
//! `{valid, protocol, live, container, video, audio, error}` within a
//! bounded time. The probing itself is [`crate::media::probe`]; this module
//! parses the request and shapes the answer.
//!
//! Who may call it: this route makes the server open a URL the caller
//! chooses, which the rest of the API never allows a non-admin to do (only
//! catalog streams can be previewed, SPEC §8). Open to anyone, it would let
//! any client use sluice to scan the operator's private network (a refused
//! port, a timeout and a real stream all answer differently) and read what
//! internal cameras or panels serve. So it requires admin rights like the
//! catalog writes it serves (the operator validates a URL before adding
//! it): the admin key, or a loopback client when no key is configured. The
//! URL must pass the catalog's scheme allowlist and `SLUICE_MEDIA_DIR`
//! confinement (400 otherwise), and the route draws from the "other API"
//! rate-limit bucket (see [`super::ratelimit`]), not the mutating one, since
//! it changes nothing.
//!
//! The probe counts against the provider of the URL (that of a catalog
//! stream with this URL and an explicit provider, else the URL's implicit
//! one) while it runs; at the provider's limit the answer is 503
//! `provider_busy` and nothing is opened.
//!
//! Body: `{"url": "...", "timeout": ms (500..30000, default 10000),
//! "headers": {"User-Agent": ...}}`. A dead or garbage source is `200` with
//! `valid: false` and a credential-free `error`. The probe's deadline is
//! also kept [`ROUTE_MARGIN`] under the server's own deadline for this
//! route ([`super::limits::deadline_for`]), so the caller always gets this
//! JSON answer rather than a generic request timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use warp::{Filter, Rejection};

use super::error::ApiError;
use super::{json, json_body, require_admin, MAX_CATALOG_BODY};
use crate::media::probe::{self, MAX_PROBE_TIMEOUT_MS, MIN_PROBE_TIMEOUT_MS};
use crate::media::source::SourceUri;
use crate::AppState;

/// Margin kept between the probe's own deadline and the route's deadline.
const ROUTE_MARGIN: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValidateRequest {
    url: String,
    timeout: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let st = state.clone();
    super::routes::STREAM_VALIDATE
        .path()
        .and(warp::post())
        .and(require_admin(state))
        .and(json_body::<ValidateRequest>(MAX_CATALOG_BODY))
        .and_then(move |req: ValidateRequest| {
            let st = st.clone();
            async move { handle(st, req).await.map_err(warp::reject::custom) }
        })
}

/// The probe deadline: the caller's, bounded, and short enough that the
/// answer beats the server's own deadline for this route.
fn probe_timeout(asked: Option<u64>) -> Result<Duration, ApiError> {
    let asked = match asked {
        None => probe::DEFAULT_PROBE_TIMEOUT,
        Some(ms) if (MIN_PROBE_TIMEOUT_MS..=MAX_PROBE_TIMEOUT_MS).contains(&ms) => {
            Duration::from_millis(ms)
        }
        Some(ms) => {
            return Err(ApiError::bad_request(format!(
                "timeout must be {MIN_PROBE_TIMEOUT_MS}..{MAX_PROBE_TIMEOUT_MS} ms, not {ms}"
            )))
        }
    };
    let route = super::limits::deadline_for(&http::Method::POST, "/api/streams/validate");
    Ok(match route {
        Some(limit) => asked.min(
            limit
                .saturating_sub(ROUTE_MARGIN)
                .max(Duration::from_millis(MIN_PROBE_TIMEOUT_MS)),
        ),
        None => asked,
    })
}

async fn handle(
    state: Arc<AppState>,
    req: ValidateRequest,
) -> Result<warp::reply::Response, ApiError> {
    let timeout = probe_timeout(req.timeout)?;
    if req.headers.len() > crate::catalog::MAX_HEADERS {
        return Err(ApiError::bad_request(format!(
            "at most {} headers",
            crate::catalog::MAX_HEADERS
        )));
    }
    for (k, v) in &req.headers {
        let token = !k.is_empty()
            && k.len() <= 128
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
        if !token || v.len() > 4096 || v.chars().any(|c| c.is_control()) {
            return Err(ApiError::bad_request(format!(
                "header '{k}' is not a valid HTTP header"
            )));
        }
    }
    let source = SourceUri::parse(&req.url, state.catalog.media_dir())
        .map_err(|e| ApiError::bad_request(format!("url: {e}")))?;
    // The probe is an upstream connection like a channel's: it counts
    // against the URL's provider, and is refused at its limit.
    // Held here (the diagnosis after a failed probe connects too) and by
    // the probe's discoverer until it has let go of the source.
    let lease = Arc::new(
        state
            .providers
            .try_open_url(&req.url, &state.catalog.snapshot())?,
    );
    let started = std::time::Instant::now();
    let report =
        probe::probe_holding(&req.url, &source, &req.headers, timeout, lease.clone()).await;
    drop(lease);
    tracing::info!(
        url = %crate::redact::redact_url(&req.url),
        valid = report.valid,
        protocol = %report.protocol,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "source validated"
    );
    Ok(json(&report, StatusCode::OK))
}
