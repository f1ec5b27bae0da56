//! The multivariant playlist: one variant per profile (plus remux when
//! the running source allows it), with the codecs, size and bitrates a
//! running rendition measured, else the profile's.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;

use super::{reply, running_window, stream_not_found, uri_query, with_cookie};
use super::{OVERHEAD, PLAYLIST_TYPE};
use crate::hls::playlist::{self, Variant};
use crate::hls::{Container, Window};
use crate::http::error::ApiError;
use crate::preview::REMUX_QUALITY;
use crate::AppState;

pub(super) fn master(
    state: &Arc<AppState>,
    id: &str,
    q: &HashMap<String, String>,
    container: Container,
    sid: String,
) -> Result<warp::reply::Response, ApiError> {
    let stream = (crate::catalog::valid_id(id))
        .then(|| state.catalog.get(id))
        .flatten()
        .ok_or_else(|| stream_not_found(id))?;
    if !stream.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stream_disabled",
            format!("stream '{}' is disabled", stream.id),
        ));
    }
    let asked = q.get("quality").map(|s| s.trim()).filter(|s| !s.is_empty());
    if let Some(a) = asked {
        if a != REMUX_QUALITY && state.profiles.get(a).is_none() {
            return Err(ApiError::bad_request(format!(
                "unknown quality '{}' (available: {})",
                a.chars().take(64).collect::<String>(),
                state.profiles.names().join(", ")
            )));
        }
    }
    let uq = uri_query(&sid, container);
    let mut variants = Vec::new();
    for p in state.profiles.all() {
        if asked.is_some_and(|a| a != p.name) {
            continue;
        }
        let kbps = u64::from(p.video_bitrate) + u64::from(p.audio_bitrate);
        let mut v = Variant {
            bandwidth: (kbps as f64 * 1000.0 * OVERHEAD * 1.25) as u64,
            average_bandwidth: (kbps as f64 * 1000.0 * OVERHEAD) as u64,
            resolution: Some((p.width, p.height)),
            frame_rate: Some(f64::from(p.max_framerate)),
            codecs: vec![
                format!("avc1.42C0{:02X}", level_idc(&p.level)),
                "mp4a.40.2".to_string(),
            ],
            uri: format!("{}/index.m3u8?{}", p.name, uq.0),
        };
        if let Some(w) = running_window(state, id, &p.name, container) {
            measured(&w, &mut v);
        }
        variants.push(v);
    }
    let remux_ok = state
        .channels
        .get(id)
        .and_then(|c| c.streams())
        .is_some_and(|s| s.remuxable());
    if remux_ok && asked.is_none_or(|a| a == REMUX_QUALITY) {
        let kbps = state
            .channels
            .get(id)
            .map_or(0, |c| c.view().upstream.bitrate_kbps);
        let mut v = Variant {
            bandwidth: kbps * 1000 * 5 / 4,
            average_bandwidth: kbps * 1000,
            resolution: None,
            frame_rate: None,
            codecs: Vec::new(),
            uri: format!("{REMUX_QUALITY}/index.m3u8?{}", uq.0),
        };
        if let Some(w) = running_window(state, id, REMUX_QUALITY, container) {
            measured(&w, &mut v);
        }
        variants.push(v);
    }
    if variants.is_empty() {
        return Err(ApiError::bad_request(
            "the source cannot be remuxed: ask for a profile",
        ));
    }
    let res = reply(
        playlist::master(&variants).into(),
        PLAYLIST_TYPE,
        "no-cache".into(),
    );
    Ok(with_cookie(res, &sid))
}

/// "3.1" -> 31.
pub(super) fn level_idc(level: &str) -> u32 {
    let mut it = level.split('.');
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    major * 10 + minor
}

/// What a running window shows: real codecs, size and bitrates.
fn measured(w: &Window, v: &mut Variant) {
    if let Some(info) = w.info() {
        if !info.codecs.is_empty() {
            v.codecs = info.codecs.clone();
        }
        if info.size.is_some() {
            v.resolution = info.size;
        }
    }
    let Some(snap) = w.snapshot() else { return };
    let rates: Vec<f64> = (snap.segments.iter())
        .filter(|s| s.dur > 0.0)
        .map(|s| s.data.len() as f64 * 8.0 / s.dur)
        .collect();
    if rates.is_empty() {
        return;
    }
    let peak = rates.iter().cloned().fold(0.0, f64::max);
    let avg = rates.iter().sum::<f64>() / rates.len() as f64;
    v.bandwidth = v.bandwidth.max(peak as u64);
    v.average_bandwidth = avg as u64;
}
