//! Channel snapshots (SPEC §16): a JPEG of what a channel shows now.
//!
//! ```text
//! request -> catalog lookup -> cache (stream, width), fresh for SNAPSHOT_TTL
//!         -> the stream's capture in flight (shared by every request for it)
//!            or a new one: MAX_CONCURRENT_SNAPSHOTS at once, the rest queued
//!         -> running channel? picture from it : open the source for one keyframe
//!         -> JPEG at the asked width -> cache
//! ```
//!
//! Captures run on blocking threads of their own and take no pool slot
//! (no encoder, no channel): a preview never waits for a snapshot. A
//! capture that cannot be made answers with the last picture taken, if
//! any, saying how old it is. Nothing here knows warp.

mod cache;
pub mod capture;
pub mod jpeg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use cache::Picture;
use cache::PictureCache;

use crate::channels::frame::Frame;
use crate::media::ingest::SourcePlan;
use crate::media::source::SourceUri;
use crate::providers::ProviderBusy;
use crate::AppState;

/// Width of a snapshot when none is asked.
pub const DEFAULT_WIDTH: u32 = 320;
/// Widest snapshot served.
pub const MAX_WIDTH: u32 = 1280;
/// Narrowest snapshot served.
pub const MIN_WIDTH: u32 = 16;
/// Captures that may wait for a capture slot; more are refused.
pub const MAX_QUEUED_CAPTURES: usize = 64;
/// Bandwidth an adaptive source's variant is chosen for: a thumbnail
/// needs the lightest one.
const CAPTURE_SPEED_KBPS: u64 = 1_000;

/// Why a snapshot could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error("stream '{0}' not found")]
    NotFound(String),
    #[error("stream '{0}' is disabled")]
    Disabled(String),
    #[error("the stream has no video to take a picture of")]
    NoVideo,
    /// Credential-free reason.
    #[error("source failed: {0}")]
    SourceFailed(String),
    #[error("no picture arrived in time")]
    Timeout,
    #[error("too many snapshots are waiting to be taken")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The source's provider has every connection it allows open.
    #[error("{0}")]
    ProviderBusy(ProviderBusy),
}

impl SnapshotError {
    /// Whether an older picture may stand in: the channel still has
    /// video, it just could not be captured now.
    fn stale_allowed(&self) -> bool {
        matches!(
            self,
            SnapshotError::SourceFailed(_)
                | SnapshotError::Timeout
                | SnapshotError::QueueFull
                | SnapshotError::ProviderBusy(_)
        )
    }
}

/// Where a capture took its picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From the running channel: no upstream connection of its own.
    Running,
    /// From the source, opened for this capture and closed after it.
    Idle,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Running => "running",
            Origin::Idle => "idle",
        }
    }
}

/// A finished capture: its picture and the JPEG of the width it was
/// started for.
#[derive(Clone)]
struct Captured {
    frame: Arc<Frame>,
    width: u32,
    picture: Picture,
}

type InFlight = Shared<BoxFuture<'static, Result<Captured, SnapshotError>>>;

/// A snapshot answer.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub picture: Picture,
    /// The capture failed and this is an older picture.
    pub stale: bool,
}

/// Counters for metrics and tests.
#[derive(Default)]
pub struct SnapshotStats {
    /// Captures started, by origin (running, idle).
    pub captures: [AtomicU64; 2],
    /// Captures that failed.
    pub failures: AtomicU64,
    /// Captures taking a picture right now.
    pub running: AtomicUsize,
    /// Most captures that ran at once.
    pub peak: AtomicUsize,
    /// Captures waiting for a slot.
    pub queued: AtomicUsize,
    /// Requests answered from the cache.
    pub cache_hits: AtomicU64,
    /// Requests answered with an older picture after a failed capture.
    pub stale_served: AtomicU64,
}

impl SnapshotStats {
    pub fn captures_total(&self) -> u64 {
        self.captures
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

pub struct Snapshots {
    ttl: Duration,
    slots: Arc<Semaphore>,
    max: usize,
    cache: PictureCache,
    in_flight: Mutex<HashMap<String, InFlight>>,
    pub stats: Arc<SnapshotStats>,
}

impl Snapshots {
    pub fn new(ttl: Duration, max_concurrent: usize) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            ttl,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max: max_concurrent,
            cache: PictureCache::new(ttl),
            in_flight: Mutex::new(HashMap::new()),
            stats: Arc::new(SnapshotStats::default()),
        })
    }

    /// How long a picture is served before a new one is taken.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// MAX_CONCURRENT_SNAPSHOTS.
    pub fn max_concurrent(&self) -> usize {
        self.max
    }

    /// At shutdown: captures still waiting for a slot give up, and the
    /// ones taking a picture are waited for (each closes its pipeline to
    /// NULL before it ends) until `deadline`.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        self.slots.close();
        while self.stats.running.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.stats.running.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                captures = left,
                "snapshot captures still running at the shutdown deadline"
            );
        }
    }

    /// A snapshot of `stream_id` at `width`, waiting at most `timeout`.
    pub async fn get(
        state: &Arc<AppState>,
        stream_id: &str,
        width: u32,
        timeout: Duration,
    ) -> Result<Snapshot, SnapshotError> {
        let me = &state.snapshots;
        if state.shutdown.is_shutting_down() {
            return Err(SnapshotError::ShuttingDown);
        }
        let stream = state
            .catalog
            .get(stream_id)
            .ok_or_else(|| SnapshotError::NotFound(stream_id.to_string()))?;
        if !stream.enabled {
            return Err(SnapshotError::Disabled(stream.id));
        }
        if let Some(p) = me.cache.fresh(&stream.id, width) {
            me.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Snapshot {
                picture: p,
                stale: false,
            });
        }
        let deadline = Instant::now() + timeout;
        let capture = me.capture(state, stream, width, timeout)?;
        let result = match tokio::time::timeout_at(deadline, capture.clone()).await {
            Ok(r) => r,
            Err(_) => Err(SnapshotError::Timeout),
        };
        let captured = match result {
            Ok(c) => c,
            Err(e) if e.stale_allowed() => {
                return match me.cache.latest(stream_id, width) {
                    Some(p) => {
                        me.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                        Ok(Snapshot {
                            picture: p,
                            stale: true,
                        })
                    }
                    None => Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if captured.width == width {
            return Ok(Snapshot {
                picture: captured.picture,
                stale: false,
            });
        }
        if let Some(p) = me.cache.fresh(stream_id, width) {
            return Ok(Snapshot {
                picture: p,
                stale: false,
            });
        }
        // Another width of the same picture: encoded here, outside the
        // capture slots (the picture is already in memory).
        let frame = captured.frame.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let jpeg = tokio::task::spawn_blocking(move || jpeg::encode(&frame, width, left))
            .await
            .map_err(|e| SnapshotError::SourceFailed(format!("the encoder panicked: {e}")))?
            .map_err(SnapshotError::SourceFailed)?;
        let picture = me.cache.insert(
            stream_id,
            width,
            jpeg,
            captured.picture.taken_at,
            captured.picture.source_size,
        );
        Ok(Snapshot {
            picture,
            stale: false,
        })
    }

    /// The capture of `stream` in flight, or a new one.
    fn capture(
        &self,
        state: &Arc<AppState>,
        stream: crate::catalog::Stream,
        width: u32,
        timeout: Duration,
    ) -> Result<InFlight, SnapshotError> {
        let mut flights = self.in_flight.lock();
        if let Some(f) = flights.get(&stream.id) {
            return Ok(f.clone());
        }
        if self.stats.queued.load(Ordering::Acquire) >= MAX_QUEUED_CAPTURES {
            return Err(SnapshotError::QueueFull);
        }
        let id = stream.id.clone();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let result = run_capture(&st, &stream, width, timeout).await;
            st.snapshots.in_flight.lock().remove(&stream.id);
            result
        });
        let flight: InFlight = async move {
            task.await.unwrap_or_else(|e| {
                Err(SnapshotError::SourceFailed(format!(
                    "capture panicked: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        flights.insert(id, flight.clone());
        Ok(flight)
    }
}

/// Waits for a capture slot, takes the picture, encodes it at `width`.
async fn run_capture(
    state: &Arc<AppState>,
    stream: &crate::catalog::Stream,
    width: u32,
    timeout: Duration,
) -> Result<Captured, SnapshotError> {
    let me = &state.snapshots;
    let stats = me.stats.clone();
    stats.queued.fetch_add(1, Ordering::AcqRel);
    let permit = me.slots.clone().acquire_owned().await;
    stats.queued.fetch_sub(1, Ordering::AcqRel);
    let _permit = permit.map_err(|_| SnapshotError::ShuttingDown)?;
    let now = stats.running.fetch_add(1, Ordering::AcqRel) + 1;
    stats.peak.fetch_max(now, Ordering::AcqRel);
    let _running = Decrement(&stats.running);
    let deadline = Instant::now() + timeout;
    let taken = take_picture(state, stream, deadline).await;
    let (frame, origin) = match taken {
        Ok(t) => t,
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(stream_id = %stream.id, error = %e, "snapshot capture failed");
            return Err(e);
        }
    };
    stats.captures[origin as usize].fetch_add(1, Ordering::Relaxed);
    let frame = Arc::new(frame);
    let f = frame.clone();
    let left = deadline.saturating_duration_since(Instant::now());
    let jpeg = tokio::task::spawn_blocking(move || jpeg::encode(&f, width, left))
        .await
        .map_err(|e| SnapshotError::SourceFailed(format!("the encoder panicked: {e}")))?
        .map_err(|e| {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            SnapshotError::SourceFailed(e)
        })?;
    let picture = me.cache.insert(
        &stream.id,
        width,
        jpeg,
        std::time::SystemTime::now(),
        size_of(&frame),
    );
    tracing::debug!(stream_id = %stream.id, origin = origin.as_str(), bytes = picture.jpeg.len(), "snapshot taken");
    Ok(Captured {
        frame,
        width,
        picture,
    })
}

/// The picture, from the running channel when there is one, else from
/// the source opened for it.
async fn take_picture(
    state: &Arc<AppState>,
    stream: &crate::catalog::Stream,
    deadline: Instant,
) -> Result<(Frame, Origin), SnapshotError> {
    if let Some(ch) = state.channels.get(&stream.id) {
        if let Some(r) = capture::from_channel(&ch, deadline).await {
            return r.map(|f| (f, Origin::Running));
        }
    }
    let plan = plan(state, stream)?;
    let primary = plan.primary().clone();
    let name = format!("snapshot-{}-{}", stream.id, crate::events::epoch_ms());
    // The capture's connection counts against the provider like a
    // channel's. It is marked closing from the start: a preview that finds
    // the provider at its limit waits the moment this capture takes rather
    // than being refused for a thumbnail.
    let lease = state
        .providers
        .try_open(stream)
        .map_err(SnapshotError::ProviderBusy)?;
    lease.mark_closing();
    let idle =
        capture::open_idle_capture(name, plan, state.channels.stats().clone(), lease).await?;
    let picture = idle.picture(deadline).await;
    idle.close().await;
    match picture {
        Ok(f) => Ok((f, Origin::Idle)),
        Err(SnapshotError::SourceFailed(msg)) => Err(SnapshotError::SourceFailed(
            explain(&primary, &stream.headers, msg, deadline).await,
        )),
        Err(e) => Err(e),
    }
}

/// The pipeline's reason for a failed source, with what a direct check of
/// the source finds (refused, not found, ...) when it finds something in time.
async fn explain(
    source: &SourceUri,
    headers: &std::collections::BTreeMap<String, String>,
    msg: String,
    deadline: Instant,
) -> String {
    let SourceUri::Uri { uri, .. } = source else {
        return msg;
    };
    let why = tokio::time::timeout_at(deadline, crate::media::diagnose::explain(uri, headers))
        .await
        .ok()
        .flatten();
    match why {
        Some(why) => crate::redact::redact_text(&format!("{why} ({msg})")),
        None => msg,
    }
}

/// The source plan of a capture: the stream's URLs, no reconnecting.
fn plan(state: &AppState, stream: &crate::catalog::Stream) -> Result<SourcePlan, SnapshotError> {
    let primary = SourceUri::parse(&stream.url, state.catalog.media_dir())
        .map_err(|e| SnapshotError::SourceFailed(crate::redact::redact_text(&e.to_string())))?;
    let mut uris = vec![primary];
    uris.extend(
        stream
            .backup_urls
            .iter()
            .filter_map(|u| SourceUri::parse(u, state.catalog.media_dir()).ok()),
    );
    Ok(SourcePlan {
        uris,
        headers: stream.headers.clone(),
        connection_speed_kbps: CAPTURE_SPEED_KBPS,
        reconnect_budget: Duration::ZERO,
    })
}

/// The picture's size as its caps give it.
fn size_of(frame: &Frame) -> Option<(u32, u32)> {
    let s = frame.caps.structure(0)?;
    let w = s.get::<i32>("width").ok()?;
    let h = s.get::<i32>("height").ok()?;
    (w > 0 && h > 0).then_some((w as u32, h as u32))
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A JPEG's entity tag: its content hash.
pub fn etag_of(jpeg: &Bytes) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    jpeg.hash(&mut h);
    format!("\"{:016x}-{:x}\"", h.finish(), jpeg.len())
}
