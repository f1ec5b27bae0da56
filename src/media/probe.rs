//! Source probing for `POST /api/streams/validate` (SPEC §6): what a source
//! carries (protocol, live or not, container, video and audio), found by
//! GStreamer's Discoverer under a hard deadline.
//!
//! The Discoverer runs synchronously on a blocking thread (it sets its own
//! pipeline's state, which must never happen on a tokio worker). Its own
//! timeout is the probe deadline; an outer deadline a little later answers
//! the caller even if a source hangs the Discoverer's teardown. At most
//! [`MAX_CONCURRENT_PROBES`] run at once, and a probe keeps its slot until
//! its thread has really finished, so a hung source cannot pile up threads.
//! Every probe drops all its references and checks through a weak reference
//! that the Discoverer (and with it its pipeline) is gone.
//!
//! `test://` sources are answered from their parsed parameters, without a
//! pipeline. Errors are credential-free ([`crate::redact`]).
//! This module never knows about HTTP.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gst::prelude::*;
use gst_pbutils::prelude::*;
use gst_pbutils::{Discoverer, DiscovererInfo, DiscovererResult};
use serde::Serialize;

use super::source::{SourceUri, TestAudio};
use crate::profiles::{AUDIO_CHANNELS, AUDIO_RATE};
use crate::redact::redact_text;

/// Deadline of a probe when the caller names none.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of a caller's `timeout`, in ms.
pub const MIN_PROBE_TIMEOUT_MS: u64 = 500;
pub const MAX_PROBE_TIMEOUT_MS: u64 = 30_000;
/// Probes running at once; more wait (within their deadline) for a slot.
pub const MAX_CONCURRENT_PROBES: usize = 4;
/// Time past the deadline given to the Discoverer to give up by itself
/// before the caller is answered without it.
const TEARDOWN_GRACE: Duration = Duration::from_secs(2);

static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_PROBES);
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static LEAKED: AtomicUsize = AtomicUsize::new(0);

/// Probe threads still running (including ones whose caller was already
/// answered after a hang).
pub fn running_probes() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

/// Discoverers that were still referenced after their probe ended; always
/// zero unless something leaks.
pub fn leaked_probes() -> usize {
    LEAKED.load(Ordering::SeqCst)
}

/// The answer of a probe, in the SPEC's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub valid: bool,
    pub protocol: String,
    pub live: bool,
    pub container: Option<String>,
    pub video: Option<VideoProbe>,
    pub audio: Option<AudioProbe>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoProbe {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// Frames per second (e.g. 29.97); null when the source does not say.
    pub framerate: Option<f64>,
    pub interlaced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioProbe {
    pub codec: String,
    pub channels: u32,
    pub sample_rate: u32,
}

/// The protocol a URL speaks: its scheme, except `hls` for HLS playlists
/// (`hls://` or a path ending `.m3u8`) and `dash` for `.mpd` manifests.
pub fn protocol_of(url: &str) -> String {
    let url = url.trim();
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if scheme == "hls" || (scheme.starts_with("http") && path.ends_with(".m3u8")) {
        "hls".into()
    } else if scheme.starts_with("http") && path.ends_with(".mpd") {
        "dash".into()
    } else {
        scheme
    }
}

/// Probes a vetted source within `timeout`. `url` is the URL as the caller
/// gave it (for the protocol); `headers` go on HTTP requests. Never fails:
/// problems come back as `valid: false` with a readable error.
pub async fn probe(
    url: &str,
    source: &SourceUri,
    headers: &BTreeMap<String, String>,
    timeout: Duration,
) -> ProbeReport {
    probe_holding(url, source, headers, timeout, ()).await
}

/// [`probe`], keeping `held` (what accounts for the connection, such as a
/// provider lease) until the discoverer has really let go of the source,
/// even when the answer had to go out before it did.
pub async fn probe_holding<H: Send + 'static>(
    url: &str,
    source: &SourceUri,
    headers: &BTreeMap<String, String>,
    timeout: Duration,
    held: H,
) -> ProbeReport {
    let protocol = protocol_of(url);
    let uri = match source {
        SourceUri::Test(t) => {
            return ProbeReport {
                valid: true,
                protocol,
                live: true,
                container: None,
                video: Some(VideoProbe {
                    codec: "raw".into(),
                    width: t.width,
                    height: t.height,
                    framerate: Some(fps(t.rate.0, t.rate.1)),
                    interlaced: t.interlaced,
                }),
                audio: (t.audio != TestAudio::None).then(|| AudioProbe {
                    codec: "raw".into(),
                    channels: AUDIO_CHANNELS,
                    sample_rate: AUDIO_RATE,
                }),
                error: None,
            }
        }
        SourceUri::Uri { uri, .. } => uri.clone(),
    };
    let failed = |protocol: String, error: String| ProbeReport {
        valid: false,
        protocol,
        live: source.is_live(),
        container: None,
        video: None,
        audio: None,
        error: Some(error),
    };
    let started = tokio::time::Instant::now();
    let hard_deadline = started + timeout + TEARDOWN_GRACE;
    let permit = match tokio::time::timeout(timeout, SLOTS.acquire()).await {
        Ok(Ok(p)) => p,
        _ => {
            return failed(
                protocol,
                format!(
                    "the server is busy probing other sources ({MAX_CONCURRENT_PROBES} at once); try again"
                ),
            )
        }
    };
    // The discoverer gets what is left of the deadline after the wait.
    let budget = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(MIN_PROBE_TIMEOUT_MS / 2));
    let sent_headers = headers.clone();
    RUNNING.fetch_add(1, Ordering::SeqCst);
    let task = tokio::task::spawn_blocking(move || {
        let found = discover(&uri, sent_headers, budget);
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
        drop(held);
        found
    });
    let found = match tokio::time::timeout_at(hard_deadline, task).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => Err(Failure::Other(format!(
            "the probe failed inside the server: {e}"
        ))),
        Err(_) => {
            tracing::warn!(
                protocol = %protocol,
                "probe did not finish within its deadline; answered without it"
            );
            Err(Failure::Timeout)
        }
    };
    match found {
        Ok(d) => {
            let protocol = match d.container.as_deref() {
                Some(c @ ("hls" | "dash")) => c.to_string(),
                _ => protocol,
            };
            let valid = d.video.is_some() || d.audio.is_some();
            ProbeReport {
                valid,
                protocol,
                live: d.live || source.is_live(),
                container: d.container,
                video: d.video,
                audio: d.audio,
                error: (!valid).then(|| "the source has no audio or video stream".to_string()),
            }
        }
        Err(Failure::Timeout) => failed(
            protocol,
            format!(
                "no answer from the source within {} ms",
                timeout.as_millis()
            ),
        ),
        Err(Failure::NotMedia(msg)) => failed(
            protocol,
            redact_text(&format!(
                "the source does not carry a known audio or video format ({msg})"
            )),
        ),
        Err(Failure::Other(msg)) => {
            // GStreamer often says only "Internal data stream error": a
            // direct check of the server, within the deadline, says why.
            let left = hard_deadline.saturating_duration_since(tokio::time::Instant::now());
            let reason = match source {
                SourceUri::Uri { uri, .. } => {
                    tokio::time::timeout(left, super::diagnose::explain(uri, headers))
                        .await
                        .ok()
                        .flatten()
                }
                SourceUri::Test(_) => None,
            };
            failed(protocol, redact_text(&reason.unwrap_or(msg)))
        }
    }
}

/// Why a discovery found nothing.
enum Failure {
    /// The source did not answer within the deadline.
    Timeout,
    /// Data arrived but is not a known media format.
    NotMedia(String),
    /// Anything else, as GStreamer worded it.
    Other(String),
}

/// What the Discoverer found, copied out of GStreamer types.
struct Discovered {
    live: bool,
    container: Option<String>,
    video: Option<VideoProbe>,
    audio: Option<AudioProbe>,
}

/// Runs one discovery on the current (blocking) thread and tears it down.
fn discover(
    uri: &str,
    headers: BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Discovered, Failure> {
    let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let discoverer = Discoverer::new(gst::ClockTime::from_nseconds(ns))
        .map_err(|e| Failure::Other(format!("cannot start a probe: {}", e.message())))?;
    if !headers.is_empty() {
        // Owns only the header map: no reference back to the discoverer.
        discoverer.connect_source_setup(move |_, src| apply_headers(src, &headers));
    }
    let weak = discoverer.downgrade();
    let result = discoverer.discover_uri(uri);
    discoverer.stop();
    drop(discoverer);
    let outcome = match result {
        Ok(info) => read_info(&info),
        Err(e) if e.matches(gst::StreamError::TypeNotFound) => {
            Err(Failure::NotMedia(e.message().to_string()))
        }
        Err(e) => Err(Failure::Other(e.message().to_string())),
    };
    if weak.upgrade().is_some() {
        LEAKED.fetch_add(1, Ordering::SeqCst);
        tracing::error!("a probe's discoverer is still referenced after the probe");
    }
    outcome
}

/// Puts the stream's headers on an HTTP source (souphttpsrc).
fn apply_headers(src: &gst::Element, headers: &BTreeMap<String, String>) {
    if src.find_property("extra-headers").is_none() {
        return;
    }
    let mut extra = gst::Structure::new_empty("extra-headers");
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("user-agent") && src.find_property("user-agent").is_some() {
            src.set_property("user-agent", v);
        } else {
            extra.set(k.as_str(), v);
        }
    }
    src.set_property("extra-headers", &extra);
}

fn read_info(info: &DiscovererInfo) -> Result<Discovered, Failure> {
    let other = |m: &str| Err(Failure::Other(m.to_string()));
    match info.result() {
        DiscovererResult::Ok => {}
        DiscovererResult::Timeout => return Err(Failure::Timeout),
        DiscovererResult::MissingPlugins => {
            let missing: Vec<String> = info
                .missing_elements_installer_details()
                .iter()
                .filter_map(|d| d.split('|').nth(3).map(str::to_string))
                .collect();
            return Err(Failure::Other(format!(
                "GStreamer lacks a plugin for this source ({})",
                if missing.is_empty() {
                    "unknown format".to_string()
                } else {
                    missing.join(", ")
                }
            )));
        }
        DiscovererResult::UriInvalid => return other("the URL cannot be opened"),
        DiscovererResult::Busy => return other("the prober is busy"),
        _ => return other("the source could not be read"),
    }
    let container = info
        .stream_info()
        .filter(|s| s.is::<gst_pbutils::DiscovererContainerInfo>())
        .and_then(|s| s.caps())
        .and_then(|c| c.structure(0).map(container_name));
    let video = info.video_streams().into_iter().next().map(|v| {
        let fr = v.framerate();
        VideoProbe {
            codec: v.caps().map_or("unknown".into(), |c| codec_name(&c)),
            width: v.width(),
            height: v.height(),
            framerate: (fr.numer() > 0 && fr.denom() > 0).then(|| fps(fr.numer(), fr.denom())),
            interlaced: v.is_interlaced(),
        }
    });
    let audio = info.audio_streams().into_iter().next().map(|a| AudioProbe {
        codec: a.caps().map_or("unknown".into(), |c| codec_name(&c)),
        channels: a.channels(),
        sample_rate: a.sample_rate(),
    });
    Ok(Discovered {
        live: info.is_live(),
        container,
        video,
        audio,
    })
}

fn fps(n: i32, d: i32) -> f64 {
    (f64::from(n) / f64::from(d) * 1000.0).round() / 1000.0
}

/// Short container names: mpegts, mp4, mov, hls, dash, matroska, webm, flv, ...
fn container_name(s: &gst::StructureRef) -> String {
    match s.name().as_str() {
        "video/mpegts" => "mpegts".into(),
        "video/quicktime" => match s.get::<&str>("variant") {
            Ok("apple") => "mov".into(),
            _ => "mp4".into(),
        },
        "audio/x-m4a" => "m4a".into(),
        "application/x-hls" => "hls".into(),
        "application/dash+xml" => "dash".into(),
        "application/x-rtp" => "rtp".into(),
        "application/ogg" => "ogg".into(),
        "video/x-msvideo" => "avi".into(),
        other => short(other),
    }
}

/// Short codec ids, as the rest of sluice names them: h264, hevc,
/// mpeg2video, aac, mp2, mp3, ac3, raw, ...
pub(crate) fn codec_name(caps: &gst::CapsRef) -> String {
    let Some(s) = caps.structure(0) else {
        return "unknown".into();
    };
    match s.name().as_str() {
        "video/x-h264" => "h264".into(),
        "video/x-h265" => "hevc".into(),
        "video/x-raw" | "audio/x-raw" => "raw".into(),
        "image/jpeg" => "mjpeg".into(),
        "video/mpeg" => match s.get::<i32>("mpegversion").unwrap_or(0) {
            1 => "mpeg1video".into(),
            2 => "mpeg2video".into(),
            4 => "mpeg4".into(),
            _ => "mpegvideo".into(),
        },
        "audio/mpeg" => match s.get::<i32>("mpegversion").unwrap_or(0) {
            2 | 4 => "aac".into(),
            _ => match s.get::<i32>("layer").unwrap_or(0) {
                2 => "mp2".into(),
                3 => "mp3".into(),
                _ => "mpegaudio".into(),
            },
        },
        other => short(other),
    }
}

/// `video/x-matroska` -> `matroska`, `audio/x-ac3` -> `ac3`.
fn short(caps_name: &str) -> String {
    caps_name
        .rsplit('/')
        .next()
        .unwrap_or(caps_name)
        .trim_start_matches("x-")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_come_from_the_url() {
        assert_eq!(protocol_of("http://h/live.ts"), "http");
        assert_eq!(protocol_of("https://h/a/index.M3U8?token=x"), "hls");
        assert_eq!(protocol_of("hls://h/a/index"), "hls");
        assert_eq!(protocol_of("http://h/manifest.mpd"), "dash");
        assert_eq!(protocol_of("rtsp://cam:554/x"), "rtsp");
        assert_eq!(protocol_of("test://smpte"), "test");
    }

    #[test]
    fn names_are_short() {
        let c = |s: &str| s.parse::<gst::Caps>().unwrap();
        gst::init().unwrap();
        assert_eq!(codec_name(&c("audio/mpeg, mpegversion=(int)4")), "aac");
        assert_eq!(
            codec_name(&c("audio/mpeg, mpegversion=(int)1, layer=(int)2")),
            "mp2"
        );
        assert_eq!(
            codec_name(&c("video/mpeg, mpegversion=(int)2")),
            "mpeg2video"
        );
        assert_eq!(codec_name(&c("audio/x-ac3")), "ac3");
        let s = |x: &str| container_name(c(x).structure(0).unwrap());
        assert_eq!(s("video/quicktime, variant=(string)iso"), "mp4");
        assert_eq!(s("video/mpegts, systemstream=(boolean)true"), "mpegts");
        assert_eq!(s("video/x-matroska"), "matroska");
        assert_eq!(s("application/x-hls"), "hls");
    }

    #[tokio::test]
    async fn test_sources_are_answered_without_a_pipeline() {
        let src =
            SourceUri::parse("test://ball?size=640x360&rate=30000/1001&audio=none", None).unwrap();
        let r = probe("test://ball", &src, &BTreeMap::new(), DEFAULT_PROBE_TIMEOUT).await;
        assert!(r.valid && r.live && r.audio.is_none() && r.error.is_none());
        let v = r.video.unwrap();
        assert_eq!((v.codec.as_str(), v.width, v.height), ("raw", 640, 360));
        assert_eq!(v.framerate, Some(29.97));
    }
}
