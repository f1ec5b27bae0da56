//! Starting a preview: the one place the request flow is decided.
//!
//! catalog lookup -> admission (memory, per-client, pool) -> pipeline
//! (open source, choose mode, commit) -> first bytes -> body.
//!
//! Knows nothing of warp; the HTTP layer maps [`PreviewError`] to statuses.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::media::ingest::SourcePlan;
use crate::media::session::{MediaSession, SessionBody};
use crate::media::source::SourceUri;
use crate::media::{EndReason, Format, MediaError, Mode, ModeRequest};
use crate::memory::MemoryStatus;
use crate::pool::AdmitError;
use crate::sessions::{epoch_ms, SessionEntry, SessionEvent};
use crate::AppState;

/// The quality label of remuxed output (no profile applies).
pub const REMUX_QUALITY: &str = "source";

#[derive(Debug, Clone)]
pub struct PreviewRequest {
    pub stream_id: String,
    pub quality: Option<String>,
    pub transcode: ModeRequest,
    pub format: Format,
    pub timeout: Duration,
    pub client_ip: IpAddr,
}

pub struct PreviewStart {
    pub session_id: String,
    pub mode: Mode,
    pub quality: String,
    pub format: Format,
    pub body: SessionBody,
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("stream '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("stream '{0}' is disabled")]
    Disabled(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("{0}")]
    Admit(AdmitError),
    #[error("memory use is critical ({rss} bytes); new sessions are refused until it falls")]
    MemoryCritical { rss: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("source failed: {0}")]
    SourceFailed(String),
    #[error("the source produced no media within {0} ms")]
    StartTimeout(u64),
}

/// Starts a preview session for `req`, or says exactly why not.
pub async fn start(
    state: &Arc<AppState>,
    req: PreviewRequest,
) -> Result<PreviewStart, PreviewError> {
    if state.shutdown.is_shutting_down() {
        return Err(PreviewError::ShuttingDown);
    }
    let stream = state
        .catalog
        .get(&req.stream_id)
        .ok_or_else(|| PreviewError::NotFound(req.stream_id.clone()))?;
    if !stream.enabled {
        return Err(PreviewError::Disabled(stream.id));
    }
    let asked = match &req.quality {
        Some(q) => Some(
            state
                .profiles
                .get(q)
                .ok_or_else(|| {
                    PreviewError::BadRequest(format!(
                        "unknown quality '{q}' (available: {})",
                        state.profiles.names().join(", ")
                    ))
                })?
                .clone(),
        ),
        None => None,
    };
    let mut profile = match &asked {
        Some(p) => p.clone(),
        None => state
            .profiles
            .get(&state.settings.default_quality)
            .cloned()
            .unwrap_or_else(|| state.profiles.most_expensive().clone()),
    };
    match state.memory.status() {
        MemoryStatus::Critical => {
            return Err(PreviewError::MemoryCritical {
                rss: state.memory.rss(),
            })
        }
        MemoryStatus::Warning if profile.name == state.profiles.most_expensive().name => {
            if let Some(lower) = state.profiles.one_lower(&profile.name) {
                tracing::info!(stream_id = %stream.id, asked = %profile.name, served = %lower.name, "memory warning: serving one profile lower");
                profile = lower.clone();
            }
        }
        _ => {}
    }
    let source = SourceUri::parse(&stream.url, state.catalog.media_dir())
        .map_err(|e| PreviewError::SourceFailed(e.to_string()))?;
    let is_test = matches!(source, SourceUri::Test(_));
    let source_uri = source.clone();
    let mode =
        match req.transcode {
            ModeRequest::Transcode => Some(Mode::Transcode),
            ModeRequest::Remux if is_test => return Err(PreviewError::Incompatible(
                "transcode=false needs an H.264 source; this test:// source is uncompressed video"
                    .into(),
            )),
            ModeRequest::Remux => Some(Mode::Remux),
            ModeRequest::Auto if asked.is_some() || is_test => Some(Mode::Transcode),
            ModeRequest::Auto => None,
        };

    let client_slot = state
        .pool
        .enter_client(req.client_ip)
        .map_err(PreviewError::Admit)?;
    let deadline = tokio::time::Instant::now() + req.timeout;
    let timeout_ms = req.timeout.as_millis() as u64;
    let label = |mode: Option<Mode>, profile: &str| match mode {
        Some(Mode::Remux) => REMUX_QUALITY.to_string(),
        _ => profile.to_string(),
    };
    let acquire = |mode: Mode| {
        let state = state.clone();
        let stream_id = stream.id.clone();
        let quality = label(Some(mode), &profile.name);
        let ip = req.client_ip;
        async move {
            let events = state.registry.clone();
            let (sid, q) = (stream_id.clone(), quality.clone());
            state
                .pool
                .acquire(mode, &stream_id, &quality, ip, deadline, move |position| {
                    events.emit(SessionEvent::SessionQueued {
                        stream_id: sid,
                        quality: q,
                        client_ip: ip.to_string(),
                        position,
                    });
                })
                .await
                .map_err(PreviewError::Admit)
        }
    };

    // A known mode takes its slot before any pipeline exists.
    let mut permit = match mode {
        Some(m) => Some(acquire(m).await?),
        None => None,
    };

    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let plan = source_plan(state, &stream, source, &profile);
    let media = match tokio::time::timeout_at(
        deadline,
        MediaSession::open(format!("session-{session_id}"), plan, req.format),
    )
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(PreviewError::SourceFailed(e.to_string())),
        Err(_) => return Err(PreviewError::StartTimeout(timeout_ms)),
    };
    // If the client hangs up while the session starts, this future is
    // dropped: the guard ends the session as a client disconnect.
    let guard = StartGuard(Some(media.clone()));
    media.on_teardown(Box::new(move |_| drop(client_slot)));
    if let Some(p) = permit.take() {
        media.on_teardown(Box::new(move |_| drop(p)));
    }

    let startup = async {
        let streams = media.streams().await?;
        let chosen = match mode {
            Some(Mode::Remux) if !streams.remuxable() => {
                return Err(MediaError::Incompatible(format!(
                    "transcode=false needs H.264 video with AAC or no audio; the source has {}",
                    streams.describe()
                )))
            }
            Some(m) => m,
            None if streams.remuxable() => Mode::Remux,
            None => Mode::Transcode,
        };
        Ok((chosen, streams))
    };
    let result = tokio::time::timeout_at(deadline, startup).await;
    let (chosen, streams) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(fail(&media, e, timeout_ms, &source_uri, &stream.headers).await),
        Err(_) => {
            media.end(EndReason::StartTimeout);
            return Err(PreviewError::StartTimeout(timeout_ms));
        }
    };
    // Auto mode: the slot is taken once the mode is known.
    if req.transcode == ModeRequest::Auto && asked.is_none() && !is_test {
        match acquire(chosen).await {
            Ok(p) => media.on_teardown(Box::new(move |_| drop(p))),
            Err(e) => {
                media.end(EndReason::StartTimeout);
                return Err(e);
            }
        }
    }
    tracing::debug!(session_id = %session_id, streams = %streams.describe(), mode = chosen.as_str(), elapsed_ms = media.started_at.elapsed().as_millis() as u64, "source opened");
    let quality = label(Some(chosen), &profile.name);
    let entry = state.registry.insert(SessionEntry {
        id: session_id.clone(),
        stream_id: stream.id.clone(),
        stream_name: stream.name.clone(),
        quality: quality.clone(),
        format: req.format,
        mode: chosen,
        client_ip: req.client_ip.to_string(),
        start_ms: epoch_ms(),
        media: media.clone(),
    });
    let committed = tokio::time::timeout_at(deadline, async {
        media.commit(chosen, profile.clone()).await?;
        media.first_bytes().await
    })
    .await;
    let first = match committed {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(fail(&media, e, timeout_ms, &source_uri, &stream.headers).await),
        Err(_) => {
            media.end(EndReason::StartTimeout);
            return Err(PreviewError::StartTimeout(timeout_ms));
        }
    };
    tracing::info!(session_id = %session_id, stream_id = %stream.id, quality = %quality, mode = chosen.as_str(), format = req.format.as_str(), client_ip = %req.client_ip, ttfb_ms = media.started_at.elapsed().as_millis() as u64, "session started");
    state.registry.emit(SessionEvent::SessionStarted {
        session_id: session_id.clone(),
        stream_id: stream.id.clone(),
        quality: quality.clone(),
        format: req.format,
        mode: chosen,
        client_ip: req.client_ip.to_string(),
    });
    state.metrics.observe_ttfb(media.started_at.elapsed());
    drop(entry);
    guard.disarm();
    Ok(PreviewStart {
        session_id,
        mode: chosen,
        quality,
        format: req.format,
        body: SessionBody::new(media, first),
    })
}

/// The primary URL, then each usable backup URL, with the stream's headers,
/// the profile's bitrate as the variant hint for HLS/DASH, and the
/// configured reconnect budget.
fn source_plan(
    state: &AppState,
    stream: &crate::catalog::Stream,
    primary: SourceUri,
    profile: &crate::profiles::Profile,
) -> SourcePlan {
    let mut uris = vec![primary];
    for url in &stream.backup_urls {
        match SourceUri::parse(url, state.catalog.media_dir()) {
            Ok(u) => uris.push(u),
            Err(e) => {
                tracing::warn!(stream_id = %stream.id, error = %e, "backup URL skipped")
            }
        }
    }
    SourcePlan {
        uris,
        headers: stream.headers.clone(),
        // A quarter of headroom: variant bitrates count container overhead.
        connection_speed_kbps: (u64::from(profile.video_bitrate)
            + u64::from(profile.audio_bitrate))
            * 5
            / 4,
        reconnect_budget: state.settings.reconnect_timeout(),
    }
}

/// Ends a starting session as `client_disconnect` unless disarmed.
struct StartGuard(Option<Arc<MediaSession>>);

impl StartGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(media) = self.0.take() {
            media.end(EndReason::ClientDisconnect);
        }
    }
}

/// Ends a session that failed to start and maps the failure.
async fn fail(
    media: &Arc<MediaSession>,
    e: MediaError,
    timeout_ms: u64,
    source: &SourceUri,
    headers: &std::collections::BTreeMap<String, String>,
) -> PreviewError {
    match e {
        MediaError::Incompatible(m) => {
            media.end(EndReason::SourceError);
            PreviewError::Incompatible(m)
        }
        MediaError::StartTimeout => {
            media.end(EndReason::StartTimeout);
            PreviewError::StartTimeout(timeout_ms)
        }
        MediaError::Ended(EndReason::Shutdown) => PreviewError::ShuttingDown,
        MediaError::Ended(r) => {
            media.end(r);
            PreviewError::SourceFailed(
                media
                    .error()
                    .unwrap_or_else(|| format!("session ended: {}", r.as_str())),
            )
        }
        MediaError::SourceFailed(msg) => {
            media.end(EndReason::SourceError);
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
            media.end(EndReason::SourceError);
            PreviewError::SourceFailed(other.to_string())
        }
    }
}
