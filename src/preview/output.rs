//! The output side of a request: the rendition it joins or builds (its
//! encoder or remux slot first), and the viewer subscribed to it.

use std::sync::Arc;

use crate::channels::fanout::{Fanout, Join, Viewer};
use crate::channels::{Channel, Rendition};
use crate::media::source::SourceUri;
use crate::media::{EndReason, MediaError, Mode};
use crate::pool::Permit;
use crate::sessions::SessionEvent;
use crate::AppState;

use super::{PreviewError, PreviewRequest, Wanted};

/// The rendition the request joins (what runs already decides the mode,
/// and joining takes no slot), or builds: its slot first, then the source
/// is opened if the channel has not been. Returned pinned.
pub(super) async fn rendition(
    state: &Arc<AppState>,
    req: &PreviewRequest,
    wanted: &Wanted,
    ch: &Arc<Channel>,
    deadline: tokio::time::Instant,
) -> Result<Arc<Rendition>, PreviewError> {
    let timeout_ms = req.timeout.as_millis() as u64;
    let mode = match (wanted.mode, ch.streams()) {
        (Some(Mode::Remux), Some(s)) if !s.remuxable() => return Err(not_remuxable(&s)),
        (Some(m), _) => Some(m),
        (None, Some(s)) if s.remuxable() => Some(Mode::Remux),
        (None, Some(_)) => Some(Mode::Transcode),
        (None, None) => None,
    };
    if let Some(r) = mode.and_then(|m| ch.find(&wanted.key(m))) {
        return Ok(r);
    }
    let failed = |e| fail(ch, e, timeout_ms, &wanted.source, &wanted.stream.headers);
    // Auto mode on a source not opened yet holds an encoder slot (the
    // dearer kind) until the source shows what it carries.
    let provisional = mode.unwrap_or(Mode::Transcode);
    let permit = acquire(state, req, wanted, ch, provisional, deadline).await?;
    let streams = match tokio::time::timeout_at(deadline, ch.open()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(e).await),
        Err(_) => return Err(PreviewError::StartTimeout(timeout_ms)),
    };
    let chosen = match mode {
        Some(Mode::Remux) if !streams.remuxable() => return Err(not_remuxable(&streams)),
        Some(m) => m,
        None if streams.remuxable() => Mode::Remux,
        None => Mode::Transcode,
    };
    let permit: Option<Permit> = if chosen == provisional {
        Some(permit)
    } else {
        drop(permit);
        match ch.find(&wanted.key(chosen)) {
            Some(r) => return Ok(r),
            None => Some(acquire(state, req, wanted, ch, chosen, deadline).await?),
        }
    };
    tracing::debug!(stream_id = %wanted.stream.id, streams = %streams.describe(), mode = chosen.as_str(), "source opened");
    let built = ch.rendition(
        wanted.key(chosen),
        wanted.profile.clone(),
        permit,
        req.format,
    );
    match tokio::time::timeout_at(deadline, built).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(failed(e).await),
        Err(_) => Err(PreviewError::StartTimeout(timeout_ms)),
    }
}

/// Waits in the pool's queue for a `mode` slot until `deadline`.
async fn acquire(
    state: &Arc<AppState>,
    req: &PreviewRequest,
    wanted: &Wanted,
    ch: &Channel,
    mode: Mode,
    deadline: tokio::time::Instant,
) -> Result<Permit, PreviewError> {
    let stream_id = wanted.stream.id.clone();
    let quality = wanted.key(mode).quality;
    // What an encoder costs grows with the source picture: known for a
    // test pattern, or from a rendition the channel already runs.
    let pixels = match &wanted.source {
        SourceUri::Test(t) => Some(u64::from(t.width) * u64::from(t.height)),
        SourceUri::Uri { .. } => ch
            .renditions()
            .iter()
            .find_map(|r| r.counters.source_pixels()),
    };
    let ip = req.client_ip;
    let events = state.registry.clone();
    let (sid, q) = (stream_id.clone(), quality.clone());
    state
        .pool
        .acquire(
            mode,
            &stream_id,
            &quality,
            pixels,
            ip,
            deadline,
            move |position| {
                events.emit(SessionEvent::SessionQueued {
                    stream_id: sid,
                    quality: q,
                    client_ip: ip.to_string(),
                    position,
                });
            },
        )
        .await
        .map_err(PreviewError::Admit)
}

/// A viewer of `rendition` in the requested container, once it has its
/// header to send (media from a keyframe follows).
pub(super) async fn subscribe(
    req: &PreviewRequest,
    wanted: &Wanted,
    ch: &Arc<Channel>,
    rendition: Arc<Rendition>,
    deadline: tokio::time::Instant,
    passive: bool,
) -> Result<(Viewer, Arc<Fanout>), PreviewError> {
    let timeout_ms = req.timeout.as_millis() as u64;
    let pin = Pin(ch.clone(), rendition.clone());
    let output = match tokio::time::timeout_at(deadline, ch.output(&rendition, req.format)).await {
        Ok(Ok(fanout)) => fanout,
        Ok(Err(e)) => {
            return Err(fail(ch, e, timeout_ms, &wanted.source, &wanted.stream.headers).await)
        }
        Err(_) => return Err(PreviewError::StartTimeout(timeout_ms)),
    };
    if passive {
        drop(pin);
        return Ok((output.subscribe_passive(), output));
    }
    // A remux has no encoder to ask for a keyframe: its viewers start
    // from the source's cached GOP.
    let viewer = output.subscribe(match rendition.mode() {
        Mode::Remux => Join::Gop,
        Mode::Transcode => req.join,
    });
    drop(pin);
    match tokio::time::timeout_at(deadline, viewer.header_ready()).await {
        Ok(Ok(())) => Ok((viewer, output)),
        Ok(Err(EndReason::Shutdown)) => Err(PreviewError::ShuttingDown),
        Ok(Err(r)) => Err(PreviewError::SourceFailed(ch.error().unwrap_or_else(
            || format!("the channel ended before any media: {}", r.as_str()),
        ))),
        Err(_) => Err(PreviewError::StartTimeout(timeout_ms)),
    }
}

fn not_remuxable(streams: &crate::media::SourceStreams) -> PreviewError {
    PreviewError::Incompatible(format!(
        "transcode=false needs H.264 video with AAC or no audio; the source has {}",
        streams.describe()
    ))
}

/// A request joining a rendition: unpinned when dropped (joined or not).
struct Pin(Arc<Channel>, Arc<Rendition>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.unpin(&self.1);
    }
}

/// Maps a failure to open the channel or build its rendition. A source
/// that failed ends its channel (nobody can use it).
async fn fail(
    ch: &Arc<Channel>,
    e: MediaError,
    timeout_ms: u64,
    source: &SourceUri,
    headers: &std::collections::BTreeMap<String, String>,
) -> PreviewError {
    match e {
        MediaError::Incompatible(m) => PreviewError::Incompatible(m),
        MediaError::StartTimeout => PreviewError::StartTimeout(timeout_ms),
        MediaError::Ended(EndReason::Shutdown) => PreviewError::ShuttingDown,
        MediaError::Ended(r) => PreviewError::SourceFailed(
            ch.error()
                .unwrap_or_else(|| format!("the channel ended: {}", r.as_str())),
        ),
        MediaError::SourceFailed(msg) => {
            ch.stop(EndReason::SourceError);
            let why = match source {
                SourceUri::Uri { uri, .. } => crate::media::diagnose::explain(uri, headers).await,
                SourceUri::Test(_) => None,
            };
            PreviewError::SourceFailed(match why {
                Some(why) => format!("{why} ({msg})"),
                None => msg,
            })
        }
        other => {
            ch.stop(EndReason::SourceError);
            PreviewError::SourceFailed(other.to_string())
        }
    }
}
