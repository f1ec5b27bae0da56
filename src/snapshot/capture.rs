//! Taking one picture of a channel: from the channel that runs (no new
//! upstream connection), or from the source opened for that one picture.
//!
//! ```text
//! running: raw video tee --(copy next frame)--------------------> Frame
//!          es video tee  --(latest keyframe, kept by the channel)-> Frame
//! idle:    source -> demux -> es video tee --(first keyframe; every other
//!          buffer dropped there, no decoder, no audio branch)---> Frame
//!          then the pipeline goes to NULL (upstream closed)
//! ```
//!
//! The picture is encoded by [`super::jpeg`]. Nothing here knows warp.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::SnapshotError;
use crate::channels::frame::{self, Frame, KeyframeCache};
use crate::channels::{Channel, PictureSource};
use crate::media::ingest::SourcePlan;
use crate::media::running::Running;
use crate::media::stats::MediaStats;
use crate::media::{EndReason, MediaError};
use crate::providers::ProviderLease;

/// How often a channel that is still opening is looked at again.
const OPENING_POLL: Duration = Duration::from_millis(50);
/// How long a channel that is still opening (its media not flowing yet,
/// e.g. its first rendition waits for an encoder) is waited for before
/// the source is opened for the capture instead.
const OPENING_WAIT: Duration = Duration::from_secs(3);
/// How long an idle capture's pipeline may take to reach NULL before the
/// answer goes out anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A picture of the running channel `ch`; None when the channel closed,
/// or did not get its media flowing soon, before one could be taken (the
/// caller then opens the source itself).
pub async fn from_channel(
    ch: &Arc<Channel>,
    deadline: Instant,
) -> Option<Result<Frame, SnapshotError>> {
    let opening = Instant::now() + OPENING_WAIT;
    loop {
        let source = loop {
            if let Some(s) = ch.picture() {
                break s;
            }
            let now = Instant::now();
            if ch.ended().is_some() || now >= deadline || now >= opening {
                return None;
            }
            tokio::time::sleep(OPENING_POLL).await;
        };
        let got = match source {
            PictureSource::NoVideo => return Some(Err(SnapshotError::NoVideo)),
            // Err: the raw tee went away (its decoder came off): look again.
            PictureSource::Raw(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(f)) => Some(f),
                Ok(Err(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(OPENING_POLL).await;
                    continue;
                }
                _ => None,
            },
            PictureSource::Keyframe(cache) => {
                tokio::time::timeout_at(deadline, cache.next()).await.ok()
            }
        };
        return match got {
            Some(f) => Some(Ok(f)),
            None if ch.ended().is_some() => None,
            None => Some(Err(SnapshotError::Timeout)),
        };
    }
}

/// The source of a channel that is not running, opened for one picture.
/// Dropping it without [`IdleCapture::close`] still ends the pipeline.
pub struct IdleCapture {
    running: Arc<Running>,
    /// The connection counted against the source's provider, given back
    /// once the pipeline is down.
    lease: ProviderLease,
}

/// Opens `plan`'s source for a capture: the one place an idle capture
/// makes its upstream connection, under `lease` (a connection of the
/// source's provider, taken by the caller before anything opens).
pub async fn open_idle_capture(
    name: String,
    plan: SourcePlan,
    stats: Arc<MediaStats>,
    lease: ProviderLease,
) -> Result<IdleCapture, SnapshotError> {
    let running = Running::open(name, plan, stats)
        .await
        .map_err(source_failed)?;
    Ok(IdleCapture { running, lease })
}

/// What an idle capture waits on once its media flows.
enum Waiting {
    Raw(Option<tokio::sync::oneshot::Receiver<Frame>>),
    Keyframe(Arc<KeyframeCache>),
}

impl IdleCapture {
    /// The source's first video keyframe (for a raw `test://` source, its
    /// first picture).
    pub async fn picture(&self, deadline: Instant) -> Result<Frame, SnapshotError> {
        let work = async {
            let streams = self.running.streams().await.map_err(source_failed)?;
            if streams.video.is_none() {
                return Err(SnapshotError::NoVideo);
            }
            let (_, waiting) = self
                .running
                .activate(|_, heads| {
                    if let Some(raw) = &heads.raw[0] {
                        return Ok(Waiting::Raw(frame::next_raw(raw)));
                    }
                    match &heads.es[0] {
                        Some(es) => {
                            let cache = Arc::new(KeyframeCache::default());
                            cache.watch(es);
                            Ok(Waiting::Keyframe(cache))
                        }
                        None => Err(MediaError::SourceFailed("the source has no video".into())),
                    }
                })
                .await
                .map_err(source_failed)?;
            let failed = || {
                SnapshotError::SourceFailed(
                    self.running
                        .error()
                        .unwrap_or_else(|| "the source ended before its first picture".into()),
                )
            };
            match waiting {
                Waiting::Raw(rx) => rx.ok_or_else(failed)?.await.map_err(|_| failed()),
                Waiting::Keyframe(cache) => {
                    let running = self.running.clone();
                    tokio::select! {
                        f = cache.next() => Ok(f),
                        _ = ended(&running) => Err(failed()),
                    }
                }
            }
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(SnapshotError::Timeout))
    }

    /// Ends the pipeline and waits (briefly) until it reached NULL, so the
    /// upstream connection is closed when the answer goes out.
    pub async fn close(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lease = self.lease;
        self.running.on_teardown(Box::new(move |_| {
            drop(lease);
            let _ = tx.send(());
        }));
        self.running.end(EndReason::ClientDisconnect);
        let _ = tokio::time::timeout(CLOSE_WAIT, rx).await;
    }
}

/// Resolves when the pipeline failed or ended.
async fn ended(running: &Running) {
    loop {
        if running.error().is_some() || running.reason().is_some() {
            return;
        }
        tokio::time::sleep(OPENING_POLL).await;
    }
}

fn source_failed(e: MediaError) -> SnapshotError {
    match e {
        MediaError::StartTimeout => SnapshotError::Timeout,
        MediaError::Ended(EndReason::Shutdown) => SnapshotError::ShuttingDown,
        other => SnapshotError::SourceFailed(crate::redact::redact_text(&other.to_string())),
    }
}
