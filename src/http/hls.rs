//! HLS routes (SPEC §12):
//!
//! - `GET /streams/hls/:id/master.m3u8[?quality=&container=]` — the
//!   multivariant playlist (one variant per profile, plus remux when the
//!   running source allows it); starts nothing.
//! - `GET /streams/hls/:id/:quality/index.m3u8[?container=ts&_HLS_msn=&_HLS_part=]`
//!   — the media playlist; the first request of a client starts (or joins)
//!   the rendition like a preview and waits for its first segment.
//! - `GET /streams/hls/:id/:quality/{init-N.mp4,seg-N.m4s,seg-N.ts,part-N.I.m4s}`.
//!
//! A client is known by `sid` (query, carried into every URI) or the
//! `sluice_hls` cookie. `:quality` is a profile name, or `source` (remux).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection};

use super::error::ApiError;
use super::{client_ip, query_map};
use crate::channels::RenditionKey;
use crate::hls::playlist::{self, UriQuery};
use crate::hls::{Container, SessionKey, Window, IDLE_TARGETS};
use crate::media::{Format, Mode};
use crate::preview::{self, REMUX_QUALITY};
use crate::AppState;

mod master;

use master::master;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const COOKIE: &str = "sluice_hls";
/// A new client's first playlist waits (at most [`FRESH_EDGE_WAIT`]) for a
/// segment that started no longer ago than this.
const FRESH_EDGE: Duration = Duration::from_millis(1000);
const FRESH_EDGE_WAIT: Duration = Duration::from_millis(2500);
/// Container overhead over the profile's bitrates, for BANDWIDTH before
/// any segment was measured.
const OVERHEAD: f64 = 1.1;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    super::routes::HLS
        .with_tail()
        .and(warp::get())
        .and(query_map())
        .and(warp::header::optional::<String>("cookie"))
        .and(client_ip(state.clone()))
        .and_then(
            move |tail: Vec<String>,
                  q: HashMap<String, String>,
                  cookie: Option<String>,
                  ip: IpAddr| {
                let st = state.clone();
                async move {
                    handle(st, tail, q, cookie, ip)
                        .await
                        .map_err(warp::reject::custom)
                }
            },
        )
}

async fn handle(
    state: Arc<AppState>,
    tail: Vec<String>,
    q: HashMap<String, String>,
    cookie: Option<String>,
    ip: IpAddr,
) -> Result<warp::reply::Response, ApiError> {
    let container = match q.get("container").map(|s| s.trim()) {
        None | Some("") | Some("fmp4") | Some("mp4") => Container::Fmp4,
        Some("ts") => Container::Ts,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "container must be fmp4 or ts, not '{v}'"
            )))
        }
    };
    let sid = client_sid(&q, cookie.as_deref());
    match tail.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [id, "master.m3u8"] => master(&state, id, &q, container, sid),
        [id, quality, "index.m3u8"] => {
            let key = session_key(id, quality, container, sid)?;
            media_playlist(&state, key, &q, ip).await
        }
        [id, quality, file] => {
            let key = session_key(id, quality, container, sid)?;
            media_file(&state, key, file).await
        }
        _ => Err(ApiError::not_found(
            "not_found",
            "no such HLS resource: use /streams/hls/:id/master.m3u8",
        )),
    }
}

/// The client's sid (query, then cookie), or a new one.
fn client_sid(q: &HashMap<String, String>, cookie: Option<&str>) -> String {
    let valid = |s: &str| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let from_cookie = cookie.and_then(|c| {
        c.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.to_string())
    });
    q.get("sid")
        .cloned()
        .filter(|s| valid(s))
        .or(from_cookie.filter(|s| valid(s)))
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

fn session_key(
    id: &str,
    quality: &str,
    container: Container,
    sid: String,
) -> Result<SessionKey, ApiError> {
    if !crate::catalog::valid_id(id) {
        return Err(stream_not_found(id));
    }
    if quality != REMUX_QUALITY && !crate::profiles::valid_name(quality) {
        return Err(ApiError::bad_request(format!(
            "quality '{}' is not a profile name",
            quality.chars().take(64).collect::<String>()
        )));
    }
    Ok(SessionKey {
        sid,
        stream_id: id.to_string(),
        quality: quality.to_string(),
        container,
    })
}

fn stream_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "stream_not_found",
        format!(
            "stream '{}' not found",
            id.chars().take(64).collect::<String>()
        ),
    )
}

fn uri_query(sid: &str, container: Container) -> UriQuery {
    UriQuery(match container {
        Container::Fmp4 => format!("sid={sid}"),
        Container::Ts => format!("sid={sid}&container=ts"),
    })
}

fn output_format(c: Container) -> Format {
    match c {
        Container::Fmp4 => Format::Mp4,
        Container::Ts => Format::Ts,
    }
}

fn rendition_key(quality: &str) -> RenditionKey {
    if quality == REMUX_QUALITY {
        RenditionKey {
            mode: Mode::Remux,
            quality: REMUX_QUALITY.to_string(),
        }
    } else {
        RenditionKey {
            mode: Mode::Transcode,
            quality: quality.to_string(),
        }
    }
}

/// The window of a running rendition, whoever started it.
fn running_window(
    state: &AppState,
    stream_id: &str,
    quality: &str,
    container: Container,
) -> Option<Arc<Window>> {
    let ch = state.channels.get(stream_id)?;
    let r = ch.find(&rendition_key(quality))?;
    let fanout = r.fanout(output_format(container));
    ch.unpin(&r);
    state.hls.window_of(&fanout?)
}

fn reply(body: Bytes, content_type: &'static str, cache: String) -> warp::reply::Response {
    let mut res = warp::reply::Response::new(body.into());
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(http::header::CACHE_CONTROL, v);
    }
    res
}

fn with_cookie(mut res: warp::reply::Response, sid: &str) -> warp::reply::Response {
    let cookie = format!("{COOKIE}={sid}; Path=/streams/hls; SameSite=Lax; HttpOnly");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    res
}

async fn media_playlist(
    state: &Arc<AppState>,
    key: SessionKey,
    q: &HashMap<String, String>,
    ip: IpAddr,
) -> Result<warp::reply::Response, ApiError> {
    let window = match state.hls.session(&key) {
        Some(s) => s.window.clone(),
        None => start_session(state, &key, q, ip).await?,
    };
    let target = window.target().unwrap_or(1);
    let hold = Duration::from_secs(u64::from(target * IDLE_TARGETS));
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        match q.get(name).map(|s| s.trim()) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{name} must be a number, not '{v}'"))),
        }
    };
    let (msn, part) = (num("_HLS_msn")?, num("_HLS_part")?);
    if part.is_some() && msn.is_none() {
        return Err(ApiError::bad_request("_HLS_part needs _HLS_msn"));
    }
    if let Some(msn) = msn {
        if msn > window.live_msn() + 2 {
            return Err(ApiError::bad_request(format!(
                "_HLS_msn {msn} is too far ahead of the live edge ({})",
                window.live_msn()
            )));
        }
        let part = part.map(|p| p as usize);
        if !wait(&window, hold, || window.has(msn, part)).await {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "playlist_timeout",
                format!("segment {msn} did not arrive within {} s", hold.as_secs()),
            )
            .retry(1));
        }
    }
    let snap = window.snapshot().ok_or_else(|| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "start_timeout",
            "no segment yet",
        )
    })?;
    let text = playlist::media(
        &snap,
        key.container,
        &uri_query(&key.sid, key.container),
        true,
    );
    if let Some(s) = state.hls.session(&key) {
        s.touch(text.len() as u64);
    }
    let res = reply(text.into(), PLAYLIST_TYPE, "no-cache".into());
    Ok(with_cookie(res, &key.sid))
}

/// Waits until `ready()` or `max` passed, woken by the window's changes.
async fn wait(window: &Window, max: Duration, ready: impl Fn() -> bool) -> bool {
    let mut rx = window.subscribe();
    let deadline = tokio::time::Instant::now() + max;
    loop {
        if ready() {
            return true;
        }
        if window.ended() {
            return ready();
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return ready(),
        }
    }
}

/// Starts (or joins) the rendition for a new client, through preview
/// admission, and waits for the window's first segment.
async fn start_session(
    state: &Arc<AppState>,
    key: &SessionKey,
    q: &HashMap<String, String>,
    ip: IpAddr,
) -> Result<Arc<Window>, ApiError> {
    let mut pq: HashMap<String, String> = HashMap::new();
    if key.quality == REMUX_QUALITY {
        pq.insert("transcode".into(), "false".into());
    } else {
        pq.insert("quality".into(), key.quality.clone());
        pq.insert("transcode".into(), "true".into());
    }
    pq.insert(
        "format".into(),
        output_format(key.container).as_str().into(),
    );
    if let Some(t) = q.get("timeout") {
        pq.insert("timeout".into(), t.clone());
    }
    let req = super::preview::parse_request(
        key.stream_id.clone(),
        &pq,
        state.settings.start_timeout(),
        ip,
    )?;
    let timeout = req.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let started = preview::start_hls(state, req)
        .await
        .map_err(ApiError::from)?;
    let hint = match started.rendition.mode() {
        Mode::Transcode => started.rendition.profile.keyframe_seconds,
        Mode::Remux => 1,
    };
    let ch = state
        .channels
        .get(&key.stream_id)
        .map(|c| Arc::downgrade(&c))
        .unwrap_or_default();
    let window = state.hls.window(
        &started.output,
        key.container,
        hint,
        Box::new(move || ch.upgrade().map_or(0, |c| c.reconnects())),
    );
    let session = state.hls.add_session(
        key.clone(),
        started.start.session_id,
        started.start.body,
        window.clone(),
    );
    let max = deadline.saturating_duration_since(tokio::time::Instant::now());
    if wait(&window, max, || window.target().is_some()).await {
        if started.rendition.mode() == Mode::Transcode {
            // A player starts at an independent part: the newest segment
            // start. Asking the encoder for a keyframe (at most once a
            // second) puts one at the live edge, so a new client starts
            // near live rather than up to a keyframe interval behind.
            started.output.request_keyframe_now();
            let max = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(FRESH_EDGE_WAIT);
            let fresh = || window.edge_age().is_some_and(|a| a <= FRESH_EDGE);
            wait(&window, max, fresh).await;
        }
        return Ok(window);
    }
    let ended = window.ended();
    drop(session);
    state.hls.sweep_key(key);
    Err(if ended {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_failed",
            "the channel ended before its first segment",
        )
    } else {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "start_timeout",
            format!(
                "the source produced no segment within {} ms",
                timeout.as_millis()
            ),
        )
    })
}

async fn media_file(
    state: &Arc<AppState>,
    key: SessionKey,
    file: &str,
) -> Result<warp::reply::Response, ApiError> {
    let session = state.hls.session(&key);
    let window = match &session {
        Some(s) => Some(s.window.clone()),
        None => running_window(state, &key.stream_id, &key.quality, key.container),
    };
    let gone = || {
        ApiError::not_found(
            "segment_not_found",
            format!(
                "'{}' is not in the live window",
                file.chars().take(64).collect::<String>()
            ),
        )
    };
    let window = window.ok_or_else(gone)?;
    let target = window.target().unwrap_or(1);
    let cache = format!(
        "public, max-age={}, immutable",
        u64::from(target) * crate::hls::window::WINDOW_SEGMENTS as u64
    );
    let ext = key.container.ext();
    let (data, content_type) = if let Some(n) = num_between(file, "init-", ".mp4") {
        let d = window.init(n).filter(|_| key.container == Container::Fmp4);
        (d, "video/mp4")
    } else if let Some(n) = num_between(file, "seg-", &format!(".{ext}")) {
        (
            window.segment(n).map(|s| s.data.clone()),
            key.container.content_type(),
        )
    } else if let Some((msn, i)) = part_name(file).filter(|_| key.container == Container::Fmp4) {
        let mut d = window.part(msn, i);
        // A hinted part (the next one) is answered when it exists.
        if d.is_none() && msn >= window.live_msn() && msn <= window.live_msn() + 1 {
            let hold = Duration::from_secs(u64::from(target * IDLE_TARGETS));
            if wait(&window, hold, || window.has(msn, Some(i))).await {
                d = window.part(msn, i);
            }
        }
        (d, "video/mp4")
    } else {
        return Err(ApiError::not_found(
            "not_found",
            format!(
                "no such HLS file '{}'",
                file.chars().take(64).collect::<String>()
            ),
        ));
    };
    let data = data.ok_or_else(gone)?;
    if let Some(s) = &session {
        s.touch(data.len() as u64);
    }
    Ok(reply(data, content_type, cache))
}

fn num_between(file: &str, prefix: &str, suffix: &str) -> Option<u64> {
    file.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// `part-12.3.m4s` -> (12, 3).
fn part_name(file: &str) -> Option<(u64, usize)> {
    let (msn, i) = file
        .strip_prefix("part-")?
        .strip_suffix(".m4s")?
        .split_once('.')?;
    Some((msn.parse().ok()?, i.parse().ok()?))
}

#[cfg(test)]
mod tests;
