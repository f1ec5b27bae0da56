//! M3U in and out of the catalog (SPEC §5, §6):
//!
//! - `POST /api/streams/import` (admin): an M3U body (`audio/x-mpegurl`,
//!   `application/x-mpegurl`, `application/vnd.apple.mpegurl`, `text/plain`,
//!   or no Content-Type; at most 50 MiB, 413 beyond), or JSON
//!   `{"url": "http(s)://..."}` to fetch the playlist (same size limit,
//!   [`FETCH_TIMEOUT`]). Answers `{imported, updated, unchanged,
//!   mergedAsBackup, skipped, errors: [{line, message}]}`; every skipped
//!   entry has its line in `errors` (the first [`MAX_REPORTED_ERRORS`] of
//!   them). `provider` (the query parameter `?provider=<id>` with an M3U
//!   body, or a `provider` field next to `url`: an id, or `{id, name,
//!   maxConnections}` to create or update it) assigns every imported
//!   stream to that provider.
//! - `GET /playlist.m3u?format=ts|mp4&quality=`: the enabled streams as an
//!   extended M3U whose URLs are this server's preview URLs, built from the
//!   request's `Host` (TS by default: VLC and IPTV players play it best),
//!   with the attributes each stream was imported with.
//!
//! Parsing is [`crate::m3u`], matching and storing [`crate::catalog::Catalog::import`];
//! this module moves bytes and shapes replies. Source URLs never appear in
//! its errors or logs unredacted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::limits::MAX_IMPORT_BODY;
use super::{json, query_map, require_admin};
use crate::catalog::{ImportEntry, ImportError};
use crate::m3u;
use crate::media::Format;
use crate::providers::ImportProvider;
use crate::redact::{error_chain, redact_url};
use crate::AppState;

/// Time allowed to fetch a playlist from a URL.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Line errors listed in an answer at most (`skipped` still counts all).
pub const MAX_REPORTED_ERRORS: usize = 1000;
/// Content-Type of an exported playlist.
pub const M3U_CONTENT_TYPE: &str = "audio/x-mpegurl";

/// Content types read as an M3U body (plus none at all; curl's default
/// form type and octet-stream are what `--data-binary @file` sends).
const M3U_TYPES: &[&str] = &[
    "audio/x-mpegurl",
    "audio/mpegurl",
    "application/x-mpegurl",
    "application/mpegurl",
    "application/vnd.apple.mpegurl",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FromUrl {
    url: String,
    /// Every imported stream's provider: an id, or `{id, name, maxConnections}`.
    provider: Option<ImportProvider>,
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let st = state.clone();
    let import = super::routes::STREAM_IMPORT
        .path()
        .and(warp::post())
        .and(require_admin(state.clone()))
        .and(warp::header::optional::<String>("content-type"))
        .and(query_map())
        .and(super::limits::body(MAX_IMPORT_BODY))
        .and_then(
            move |ct: Option<String>, q: HashMap<String, String>, body: Bytes| {
                let st = st.clone();
                let provider = q.get("provider").cloned().map(ImportProvider::Id);
                async move {
                    import(st, ct, provider, body)
                        .await
                        .map_err(warp::reject::custom)
                }
            },
        );
    let st = state.clone();
    let export = super::routes::PLAYLIST
        .path()
        .and(warp::get())
        .and(warp::header::optional::<String>("host"))
        .and(warp::header::optional::<String>("x-forwarded-proto"))
        .and(super::extract::client(state))
        .and(query_map())
        .and_then(
            move |host: Option<String>,
                  proto: Option<String>,
                  client: super::extract::Client,
                  q: HashMap<String, String>| {
                // Only a trusted proxy may say the client came over HTTPS.
                let proto = proto.filter(|_| client.peer_trusted);
                let st = st.clone();
                async move { export(&st, host, proto, &q).map_err(warp::reject::custom) }
            },
        );
    import.or(export).unify()
}

async fn import(
    state: Arc<AppState>,
    content_type: Option<String>,
    mut provider: Option<ImportProvider>,
    body: Bytes,
) -> Result<warp::reply::Response, ApiError> {
    let mime = content_type.as_deref().map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let text = match mime.as_deref() {
        Some("application/json") => {
            let req: FromUrl = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
            if req.provider.is_some() {
                provider = req.provider;
            }
            fetch_playlist(&req.url).await?
        }
        None | Some("") => String::from_utf8_lossy(&body).into_owned(),
        Some(m) if M3U_TYPES.contains(&m) => String::from_utf8_lossy(&body).into_owned(),
        Some(m) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "expected an M3U playlist (audio/x-mpegurl) or JSON {{\"url\": ...}}, got '{m}'"
                ),
            ))
        }
    };
    drop(body);
    let started = std::time::Instant::now();
    let guide_url = crate::epg::playlist_guide_url(&text);
    let (entries, mut errors, has_header) = tokio::task::spawn_blocking(move || split(&text))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the playlist could not be parsed: {e}"),
            )
        })?;
    if !has_header && !entries.iter().any(|e| e.url.contains("://")) {
        return Err(ApiError::bad_request(
            "the body is not an M3U playlist (no #EXTM3U header and no URL lines)",
        ));
    }
    // The provider is settled (made, if the import describes a new one)
    // before any stream names it.
    let provider = match provider {
        Some(p) => Some(state.providers.for_import(p).await.map_err(|e| match e {
            crate::providers::ProviderError::NotFound(id) => ApiError::bad_request(format!(
                "provider '{id}' does not exist: create it first, or pass {{\"id\", \"name\", \"maxConnections\"}}"
            )),
            other => other.into(),
        })?),
        None => None,
    };
    let mut entries = entries;
    for e in &mut entries {
        e.provider = provider.clone();
    }
    let parse_skipped = errors.len();
    let mut outcome = state.catalog.import(entries).await?;
    state.guide.playlist_imported(guide_url);
    outcome.skipped += parse_skipped;
    errors.append(&mut outcome.errors);
    errors.sort_by_key(|e| e.line);
    errors.truncate(MAX_REPORTED_ERRORS);
    outcome.errors = errors;
    tracing::info!(
        imported = outcome.imported,
        updated = outcome.updated,
        unchanged = outcome.unchanged,
        merged_as_backup = outcome.merged_as_backup,
        skipped = outcome.skipped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "playlist imported"
    );
    Ok(json(&outcome, StatusCode::OK))
}

/// Parses a playlist into catalog entries and per-line errors; also says
/// whether it starts like an M3U (`#EXTM3U`).
fn split(text: &str) -> (Vec<ImportEntry>, Vec<ImportError>, bool) {
    let has_header = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .get(..7)
        .is_some_and(|h| h.eq_ignore_ascii_case("#EXTM3U"));
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for r in m3u::parse(text) {
        match r {
            Ok(e) => entries.push(ImportEntry {
                line: e.line,
                name: e.name,
                url: e.url,
                tvg_id: e.tvg_id,
                number: ["tvg-chno", "channel-number"]
                    .iter()
                    .find_map(|k| e.attributes.get(*k))
                    .cloned(),
                group: e.group,
                logo: e.tvg_logo,
                headers: e.headers,
                attributes: e.attributes,
                provider: None,
            }),
            Err(e) => errors.push(ImportError {
                line: e.line,
                message: e.message,
            }),
        }
    }
    (entries, errors, has_header)
}

/// Fetches a playlist over http(s), at most [`MAX_IMPORT_BODY`] bytes
/// within [`FETCH_TIMEOUT`].
async fn fetch_playlist(url: &str) -> Result<String, ApiError> {
    let shown = redact_url(url);
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| ApiError::bad_request(format!("url '{shown}' is malformed: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::bad_request(format!(
            "url '{shown}': playlists are fetched over http:// or https:// only"
        )));
    }
    let failed = |msg: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_failed",
            format!("fetching the playlist {shown} failed: {msg}"),
        )
    };
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| failed(error_chain(&e)))?;
    let resp = client.get(parsed).send().await.map_err(|e| {
        if e.is_timeout() {
            failed(format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))
        } else {
            failed(error_chain(&e.without_url()))
        }
    })?;
    if !resp.status().is_success() {
        return Err(failed(format!(
            "the server answered HTTP {}",
            resp.status()
        )));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the playlist at {shown} is larger than {} MiB",
                MAX_IMPORT_BODY / (1024 * 1024)
            ),
        )
    };
    if resp.content_length().is_some_and(|n| n > MAX_IMPORT_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                failed(format!("not received within {} s", FETCH_TIMEOUT.as_secs()))
            } else {
                failed(error_chain(&e.without_url()))
            }
        })?;
        if (body.len() + chunk.len()) as u64 > MAX_IMPORT_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Whether a Host header value is a plain `host[:port]` (no path, no
/// userinfo, no spaces) that is safe to put in URLs.
pub(crate) fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

fn export(
    state: &AppState,
    host: Option<String>,
    proto: Option<String>,
    q: &HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let format = match q.get("format").map(|s| s.trim()) {
        None | Some("") => Format::Ts,
        // Master playlist URLs (SPEC §12).
        Some("hls") => Format::Hls,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::bad_request(format!("format must be ts, mp4 or hls, not '{f}'"))
        })?,
    };
    let mut query = match format {
        Format::Hls => String::new(),
        f => format!("format={}", f.as_str()),
    };
    match q.get("quality").map(|s| s.trim()) {
        None | Some("") => {}
        Some(p) if state.profiles.get(p).is_some() => {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!("quality={p}"));
        }
        Some(p) => {
            return Err(ApiError::bad_request(format!(
                "quality '{p}' is not a profile (available: {})",
                state.profiles.names().join(", ")
            )))
        }
    }
    let host = match host.map(|h| h.trim().to_string()) {
        Some(h) if plain_host(&h) => h,
        Some(_) => {
            return Err(ApiError::bad_request(
                "the Host header is not a valid host[:port]",
            ))
        }
        None => std::net::SocketAddr::new(state.settings.host, state.settings.port).to_string(),
    };
    let scheme = match proto.as_deref().map(|p| p.trim().to_ascii_lowercase()) {
        Some(p) if p == "https" => "https",
        _ => "http",
    };
    // Credentials in imported attributes (catch-up URLs, ...) stay inside.
    let streams: Vec<crate::catalog::Stream> = state
        .catalog
        .snapshot()
        .iter()
        .filter(|s| s.enabled)
        .map(|s| s.redacted())
        .collect();
    let urls: Vec<String> = streams
        .iter()
        .map(|s| match format {
            Format::Hls if query.is_empty() => {
                format!("{scheme}://{host}/streams/hls/{}/master.m3u8", s.id)
            }
            Format::Hls => format!("{scheme}://{host}/streams/hls/{}/master.m3u8?{query}", s.id),
            _ => format!("{scheme}://{host}/streams/preview/{}?{query}", s.id),
        })
        .collect();
    let text = m3u::export(streams.iter().zip(&urls).map(|(s, url)| m3u::ExportEntry {
        name: &s.name,
        url,
        tvg_id: s.tvg_id.as_deref(),
        number: s.number.as_deref(),
        tvg_logo: s.logo.as_deref(),
        group: s.group.as_deref(),
        attributes: &s.attributes,
    }));
    let mut res = warp::reply::with_status(text, StatusCode::OK).into_response();
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(M3U_CONTENT_TYPE),
    );
    h.insert(
        http::header::CONTENT_DISPOSITION,
        HeaderValue::from_static("inline; filename=\"sluice.m3u\""),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(res)
}
