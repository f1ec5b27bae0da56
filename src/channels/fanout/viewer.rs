//! A viewer: the HTTP body's side of the fan-out, and the handle status and
//! admin hold.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Fanout;
use crate::media::EndReason;

/// A body poll hands over queued chunks up to this many bytes at once.
const COALESCE_BYTES: usize = 256 << 10;

/// How a viewer ended, for its `on_end` hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerEnded {
    pub reason: EndReason,
    pub bytes_sent: u64,
    pub duration: Duration,
}

type EndFn = Box<dyn FnOnce(ViewerEnded) + Send>;

/// What a viewer's body, its handles and its fan-out slot share.
pub(super) struct ViewerShared {
    pub(super) id: u64,
    fanout: Weak<Fanout>,
    started: Instant,
    bytes_sent: AtomicU64,
    pub(super) skips: AtomicU64,
    /// Set once, by whoever removed the viewer from the fan-out.
    pub(super) reason: OnceLock<EndReason>,
    hooks: Mutex<Hooks>,
}

#[derive(Default)]
struct Hooks {
    waiting: Vec<EndFn>,
    fired: Option<ViewerEnded>,
}

impl ViewerShared {
    pub(super) fn new(id: u64, fanout: Weak<Fanout>, started: Instant) -> Arc<Self> {
        Arc::new(ViewerShared {
            id,
            fanout,
            started,
            bytes_sent: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            reason: OnceLock::new(),
            hooks: Mutex::new(Hooks::default()),
        })
    }

    pub(super) fn run_hooks(&self) {
        let Some(&reason) = self.reason.get() else {
            return;
        };
        let ended = ViewerEnded {
            reason,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            duration: self.started.elapsed(),
        };
        let waiting = {
            let mut hooks = self.hooks.lock();
            hooks.fired = Some(ended);
            std::mem::take(&mut hooks.waiting)
        };
        waiting.into_iter().for_each(|f| f(ended));
    }
}

/// One viewer: the only thing an HTTP body holds. Dropping it is the hang-up.
pub struct Viewer {
    fanout: Arc<Fanout>,
    shared: Arc<ViewerShared>,
}

impl Viewer {
    pub(super) fn new(fanout: Arc<Fanout>, shared: Arc<ViewerShared>) -> Viewer {
        Viewer { fanout, shared }
    }

    /// Waits until the viewer has its header and a keyframe chunk to send
    /// (Gop: at once if the cache holds a GOP; Live: the next keyframe), or
    /// the fan-out finished (Err(reason)).
    pub async fn ready(&self) -> Result<(), EndReason> {
        self.handle().started().await
    }

    /// Waits until the viewer has something to send: its header (media
    /// from a keyframe follows), or the fan-out finished (Err(reason)).
    pub async fn header_ready(&self) -> Result<(), EndReason> {
        std::future::poll_fn(|cx| {
            let mut inner = self.fanout.inner.lock();
            let Some(slot) = inner.viewers.get_mut(&self.shared.id) else {
                let reason = self.shared.reason.get().copied();
                return Poll::Ready(Err(reason.unwrap_or(EndReason::ClientDisconnect)));
            };
            match (slot.has_header || slot.started, slot.finish) {
                (true, _) => Poll::Ready(Ok(())),
                (false, Some(reason)) => Poll::Ready(Err(reason)),
                (false, None) => {
                    slot.ready_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// A cheap clone, for status and admin.
    pub fn handle(&self) -> ViewerHandle {
        ViewerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl futures::Stream for Viewer {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let id = self.shared.id;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0;
        let mut inner = self.fanout.inner.lock();
        let Some(slot) = inner.viewers.get_mut(&id) else {
            return Poll::Ready(None);
        };
        // The header goes out as soon as it is known, so the client has
        // its answer while the first keyframe is on its way.
        if let Some(header) = slot.header.take() {
            total += header.len();
            parts.push(header);
        }
        if slot.started {
            while let Some((data, _)) = slot.queue.front() {
                if !parts.is_empty() && total + data.len() > COALESCE_BYTES {
                    break;
                }
                let (data, _) = slot.queue.pop_front().expect("front exists");
                slot.queued_bytes -= data.len();
                total += data.len();
                parts.push(data);
            }
            if slot.queue.is_empty() {
                slot.behind_since = None;
            }
        }
        if parts.is_empty() {
            let Some(reason) = slot.finish else {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            };
            let slot = inner.remove(id, reason);
            drop(inner);
            self.fanout.ended(slot.into_iter().collect());
            return Poll::Ready(match reason {
                EndReason::SourceError => Some(Err(std::io::Error::other(
                    "the source failed: the stream is cut short",
                ))),
                _ => None,
            });
        }
        drop(inner);
        self.shared
            .bytes_sent
            .fetch_add(total as u64, Ordering::Relaxed);
        if parts.len() == 1 {
            return Poll::Ready(parts.pop().map(Ok));
        }
        let mut out = BytesMut::with_capacity(total);
        parts.iter().for_each(|p| out.extend_from_slice(p));
        Poll::Ready(Some(Ok(out.freeze())))
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.fanout
            .end_viewer(self.shared.id, EndReason::ClientDisconnect);
    }
}

/// A viewer seen from status and admin; it does not keep the viewer alive.
#[derive(Clone)]
pub struct ViewerHandle {
    pub(super) shared: Arc<ViewerShared>,
}

impl ViewerHandle {
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::Relaxed)
    }

    /// Counts bytes sent to it some other way (HLS segments and playlists).
    pub fn add_sent(&self, n: u64) {
        self.shared.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn skips(&self) -> u64 {
        self.shared.skips.load(Ordering::Relaxed)
    }

    /// Age (ms) of the oldest chunk queued for it; 0 when caught up.
    pub fn lag_ms(&self) -> u64 {
        let Some(fanout) = self.shared.fanout.upgrade() else {
            return 0;
        };
        let inner = fanout.inner.lock();
        inner
            .viewers
            .get(&self.shared.id)
            .and_then(|s| s.queue.front())
            .map_or(0, |(_, t)| t.elapsed().as_millis() as u64)
    }

    pub fn reason(&self) -> Option<EndReason> {
        self.shared.reason.get().copied()
    }

    /// Waits until the viewer has a keyframe chunk queued or sent (its
    /// media is decodable from there), or has ended (Err(reason)).
    pub async fn started(&self) -> Result<(), EndReason> {
        std::future::poll_fn(|cx| {
            let ended = || Err(self.reason().unwrap_or(EndReason::ClientDisconnect));
            let Some(fanout) = self.shared.fanout.upgrade() else {
                return Poll::Ready(ended());
            };
            let mut inner = fanout.inner.lock();
            let Some(slot) = inner.viewers.get_mut(&self.shared.id) else {
                return Poll::Ready(ended());
            };
            match (slot.started, slot.finish) {
                (true, _) => Poll::Ready(Ok(())),
                (false, Some(reason)) => Poll::Ready(Err(reason)),
                (false, None) => {
                    slot.ready_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Ends it at once (first reason wins; admin stop, switched): its queue
    /// is freed and its body returns None on the next poll.
    pub fn end(&self, reason: EndReason) -> bool {
        self.shared
            .fanout
            .upgrade()
            .is_some_and(|f| f.end_viewer(self.shared.id, reason))
    }

    /// Runs once when the viewer has ended (immediately if it has), with
    /// the reason, bytes sent and how long it lasted.
    pub fn on_end(&self, f: Box<dyn FnOnce(ViewerEnded) + Send>) {
        let mut hooks = self.shared.hooks.lock();
        match hooks.fired {
            Some(ended) => {
                drop(hooks);
                f(ended);
            }
            None => hooks.waiting.push(f),
        }
    }
}
