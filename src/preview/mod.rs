//! Starting a preview: the one place the request flow is decided.
//!
//! catalog lookup -> admission (memory, per-client, viewers, channels,
//! provider connection, encoder or remux slot: all before any upstream
//! connection opens) -> channel (joined, or opened) -> rendition (joined,
//! or built) -> viewer (header, then media from a keyframe) -> body.
//!
//! The provider step: a running channel is joined without a new
//! connection. A new one takes a connection of its provider
//! ([`crate::providers`]). At the provider's limit, a channel of that
//! provider whose only viewers are this request's client (players open the
//! next channel before closing the last), or that nobody watches any more
//! (it lingers), is stopped with reason `switched`; the new channel opens
//! once that one's upstream connection is closed, in the same request.
//! Otherwise the request gets `provider_busy`.
//!
//! Knows nothing of warp; the HTTP layer maps [`PreviewError`] to statuses.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::channels::fanout::{Fanout, Join, Viewer};
use crate::channels::{Rendition, RenditionKey};
use crate::media::source::SourceUri;
use crate::media::{Format, Mode, ModeRequest};
use crate::memory::MemoryStatus;
use crate::pool::AdmitError;
use crate::providers::ProviderBusy;
use crate::sessions::{epoch_ms, SessionEntry, SessionEvent};
use crate::AppState;

mod output;
mod upstream;

use output::{rendition, subscribe};
use upstream::channel;

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
    /// Where a viewer joining a running rendition starts.
    pub join: Join,
}

pub struct PreviewStart {
    pub session_id: String,
    pub mode: Mode,
    pub quality: String,
    pub format: Format,
    /// The response body; dropping it is the hang-up.
    pub body: Viewer,
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
    #[error("{0}; try again when one of its channels has ended")]
    ProviderBusy(ProviderBusy),
}

impl From<AdmitError> for PreviewError {
    fn from(e: AdmitError) -> Self {
        PreviewError::Admit(e)
    }
}

/// Longest a switch waits for the stopped channel's upstream connection
/// to close (its pipeline to reach NULL).
pub const SWITCH_WAIT: Duration = Duration::from_secs(5);

/// Starts a preview viewer for `req`, or says exactly why not.
pub async fn start(
    state: &Arc<AppState>,
    req: PreviewRequest,
) -> Result<PreviewStart, PreviewError> {
    start_viewer(state, req, false).await.map(|(s, _)| s)
}

/// An HLS client's start: a passive viewer (counted, fed nothing) of the
/// rendition's `req.format` output, and that output's fan-out, whose
/// segments it is served.
pub struct HlsStart {
    pub start: PreviewStart,
    pub rendition: Arc<Rendition>,
    pub output: Arc<Fanout>,
}

/// Starts an HLS client of the rendition `req` resolves to, through the
/// same admission as a preview (so a refusal is the same error). Its
/// session shows `format: "hls"`.
pub async fn start_hls(
    state: &Arc<AppState>,
    req: PreviewRequest,
) -> Result<HlsStart, PreviewError> {
    let (start, (rendition, output)) = start_viewer(state, req, true).await?;
    Ok(HlsStart {
        start,
        rendition,
        output,
    })
}

async fn start_viewer(
    state: &Arc<AppState>,
    req: PreviewRequest,
    passive: bool,
) -> Result<(PreviewStart, (Arc<Rendition>, Arc<Fanout>)), PreviewError> {
    let t0 = std::time::Instant::now();
    let wanted = resolve(state, &req)?;
    // Admission: every refusal comes before any upstream connection opens.
    let client_slot = state
        .pool
        .enter_client(req.client_ip)
        .map_err(PreviewError::Admit)?;
    let viewer_slot = state.pool.enter_viewer().map_err(PreviewError::Admit)?;
    let deadline = tokio::time::Instant::now() + req.timeout;
    let used = channel(state, &req, &wanted, deadline).await?;
    let ch = used.channel().clone();
    let rendition = rendition(state, &req, &wanted, &ch, deadline).await?;
    let joined = std::time::Instant::now();
    let (viewer, output) =
        subscribe(&req, &wanted, &ch, rendition.clone(), deadline, passive).await?;
    drop(used);
    let session_format = if passive { Format::Hls } else { req.format };

    let mode = rendition.mode();
    let quality = rendition.key.quality.clone();
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let handle = viewer.handle();
    let entry = state.registry.insert(SessionEntry {
        id: session_id.clone(),
        stream_id: wanted.stream.id.clone(),
        stream_name: wanted.stream.name.clone(),
        quality: quality.clone(),
        format: session_format,
        mode,
        client_ip: req.client_ip.to_string(),
        start_ms: epoch_ms(),
        started_at: std::time::Instant::now(),
        viewer: handle.clone(),
        rendition: rendition.clone(),
    });
    handle.on_end(Box::new(move |_| {
        drop(client_slot);
        drop(viewer_slot);
    }));
    tracing::info!(session_id = %session_id, stream_id = %wanted.stream.id, quality = %quality, mode = mode.as_str(), format = session_format.as_str(), client_ip = %req.client_ip, ttfb_ms = t0.elapsed().as_millis() as u64, "session started");
    state.registry.emit(SessionEvent::SessionStarted {
        session_id: session_id.clone(),
        stream_id: wanted.stream.id.clone(),
        quality: quality.clone(),
        format: session_format,
        mode,
        client_ip: req.client_ip.to_string(),
    });
    state.metrics.observe_ttfb(t0.elapsed());
    // The join is complete once the viewer has media from a keyframe.
    let (joining, st) = (handle.clone(), state.clone());
    tokio::spawn(async move {
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, joining.started()).await {
            st.metrics.observe_join(joined.elapsed());
        }
    });
    drop(entry);
    Ok((
        PreviewStart {
            session_id,
            mode,
            quality,
            format: session_format,
            body: viewer,
        },
        (rendition, output),
    ))
}

/// What a request asks for, checked against the catalog, the profiles and
/// memory before anything is admitted.
struct Wanted {
    stream: crate::catalog::Stream,
    profile: crate::profiles::Profile,
    source: SourceUri,
    /// The mode the request fixes; None: follow the source (auto).
    mode: Option<Mode>,
}

impl Wanted {
    fn protocol(&self) -> String {
        match &self.source {
            SourceUri::Test(_) => "test".to_string(),
            SourceUri::Uri { scheme, .. } => scheme.clone(),
        }
    }

    fn key(&self, mode: Mode) -> RenditionKey {
        RenditionKey {
            mode,
            quality: match mode {
                Mode::Remux => REMUX_QUALITY.to_string(),
                Mode::Transcode => self.profile.name.clone(),
            },
        }
    }
}

fn resolve(state: &AppState, req: &PreviewRequest) -> Result<Wanted, PreviewError> {
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
    Ok(Wanted {
        stream,
        profile,
        source,
        mode,
    })
}
