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
use crate::channels::{Channel, ChannelUse, Rendition, RenditionKey};
use crate::media::ingest::SourcePlan;
use crate::media::source::SourceUri;
use crate::media::{EndReason, Format, MediaError, Mode, ModeRequest};
use crate::memory::MemoryStatus;
use crate::pool::{AdmitError, Permit};
use crate::providers::ProviderBusy;
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

/// The channel the request uses: joined when it runs; else opened under
/// its provider's limit, switching away from a channel of that provider
/// only this client watches (or nobody does) when the limit is reached.
async fn channel(
    state: &Arc<AppState>,
    req: &PreviewRequest,
    wanted: &Wanted,
    deadline: tokio::time::Instant,
) -> Result<ChannelUse, PreviewError> {
    let s = &wanted.stream;
    let plan = || source_plan(state, s, wanted.source.clone(), &wanted.profile);
    let first = state
        .channels
        .join_or_create(&s.id, &s.name, &wanted.protocol(), || {
            let lease = state
                .providers
                .try_open(s)
                .map_err(PreviewError::ProviderBusy)?;
            Ok((plan(), lease))
        });
    let busy = match first {
        Err(PreviewError::ProviderBusy(busy)) => busy,
        other => return other,
    };
    match switchable(state, req.client_ip, &busy.id) {
        Some(victim) => {
            tracing::info!(stream_id = %s.id, from = %victim.stream_id, provider = %busy.id, client_ip = %req.client_ip, "switching channels: the provider is at its limit");
            victim.stop(EndReason::Switched);
        }
        // A channel that just ended (a client reopening what it closed) is
        // closing its connection: wait for it rather than refuse.
        None if state.providers.closing(&busy.id) > 0 => {}
        None => {
            tracing::info!(stream_id = %s.id, provider = %busy.id, limit = busy.limit, client_ip = %req.client_ip, "provider at its limit");
            return Err(PreviewError::ProviderBusy(busy));
        }
    }
    // The stopped channel gives its connection back once its pipeline is
    // down: the provider never sees both at once.
    let wait = deadline.min(tokio::time::Instant::now() + SWITCH_WAIT);
    let lease = state
        .providers
        .open_within(s, wait)
        .await
        .map_err(PreviewError::ProviderBusy)?;
    state
        .channels
        .join_or_create(&s.id, &s.name, &wanted.protocol(), || Ok((plan(), lease)))
}

/// A channel of `provider` that can make way: one whose viewers are all
/// `client`'s (the oldest first), else one nobody watches; never one a
/// request is still joining.
fn switchable(state: &AppState, client: IpAddr, provider: &str) -> Option<Arc<Channel>> {
    let client = client.to_string();
    let sessions = state.registry.all();
    let mut unwatched = None;
    for ch in state.channels.of_provider(provider) {
        if ch.pending_requests() > 0 || ch.ended().is_some() {
            continue;
        }
        let viewers: Vec<_> = sessions
            .iter()
            .filter(|e| e.stream_id == ch.stream_id)
            .collect();
        if viewers.is_empty() {
            if ch.renditions().iter().all(|r| r.viewers() == 0) {
                unwatched.get_or_insert(ch);
            }
        } else if viewers.iter().all(|e| e.client_ip == client) {
            return Some(ch);
        }
    }
    unwatched
}

/// The rendition the request joins (what runs already decides the mode,
/// and joining takes no slot), or builds: its slot first, then the source
/// is opened if the channel has not been. Returned pinned.
async fn rendition(
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
async fn subscribe(
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
