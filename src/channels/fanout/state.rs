//! The fan-out's state under its one lock: the GOP cache and each
//! viewer's queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::viewer::ViewerShared;
use super::{Chunk, Join};
use crate::media::EndReason;

/// The GOP cache is dropped (until the next keyframe) past this age...
const GOP_MAX_AGE: Duration = Duration::from_secs(30);
/// ...or this size, so a source without keyframes cannot grow memory.
const GOP_MAX_BYTES: usize = 64 << 20;
/// A viewer's queue never holds more than this, whatever its age.
const VIEWER_MAX_BYTES: usize = 32 << 20;
/// Forced keyframes for `Join::Live` viewers are asked at most this often.
pub(super) const KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Inner {
    pub(super) header: Option<Bytes>,
    /// Chunks since the latest keyframe chunk, with their publish time.
    pub(super) gop: Vec<(Bytes, Instant)>,
    pub(super) gop_bytes: usize,
    pub(super) viewers: HashMap<u64, Slot>,
    pub(super) next_id: u64,
    pub(super) finished: Option<EndReason>,
    pub(super) last_keyframe_request: Option<Instant>,
    /// Internal consumers of every chunk (HLS segmenters), called under
    /// the lock, in order.
    pub(super) taps: Vec<Arc<dyn Tap>>,
}

/// An internal consumer of a fan-out's output: it sees the header, every
/// chunk and the end, under the fan-out's lock (so nothing is missed or
/// reordered). It must not block nor call back into the fan-out.
pub trait Tap: Send + Sync {
    fn header(&self, header: &Bytes);
    fn chunk(&self, chunk: &Chunk);
    fn finish(&self, reason: EndReason);
}

/// A viewer's place in the fan-out: its queue and where it stands.
pub(super) struct Slot {
    pub(super) shared: Arc<ViewerShared>,
    pub(super) join: Join,
    /// Counted as a viewer, fed nothing: an HLS client, whose media is
    /// the rendition's segments.
    pub(super) passive: bool,
    /// The container header, delivered before any media.
    pub(super) header: Option<Bytes>,
    /// The header was assigned (pending or delivered).
    pub(super) has_header: bool,
    /// A header that replaced the one it was given after that one went
    /// out: queued right before the next keyframe chunk.
    pub(super) next_header: Option<Bytes>,
    /// A keyframe chunk was queued: media may follow.
    pub(super) started: bool,
    /// The queue overflowed: nothing until the next keyframe chunk.
    pub(super) skipping: bool,
    pub(super) queue: VecDeque<(Bytes, Instant)>,
    pub(super) queued_bytes: usize,
    /// Since the first overflow that its queue has not yet drained.
    pub(super) behind_since: Option<Instant>,
    /// The fan-out finished: deliver the queue, then end with this.
    pub(super) finish: Option<EndReason>,
    pub(super) waker: Option<Waker>,
    pub(super) ready_waker: Option<Waker>,
}

impl Slot {
    pub(super) fn overflows(&self, now: Instant, len: usize, buffer: Duration) -> bool {
        self.queued_bytes + len > VIEWER_MAX_BYTES
            || self
                .queue
                .front()
                .is_some_and(|(_, t)| now.duration_since(*t) > buffer)
    }

    pub(super) fn push(&mut self, data: Bytes, at: Instant) {
        self.queued_bytes += data.len();
        self.queue.push_back((data, at));
    }

    pub(super) fn take_wakers(&mut self, into: &mut Vec<Waker>) {
        into.extend(self.waker.take());
        into.extend(self.ready_waker.take());
    }
}

impl Inner {
    /// Removes a viewer; the caller then runs [`Fanout::ended`] unlocked.
    pub(super) fn remove(&mut self, id: u64, reason: EndReason) -> Option<Slot> {
        let slot = self.viewers.remove(&id)?;
        let _ = slot.shared.reason.set(reason);
        Some(slot)
    }

    pub(super) fn cache(&mut self, chunk: &Chunk, now: Instant) {
        if chunk.keyframe {
            self.gop.clear();
            self.gop_bytes = 0;
        } else if self.gop.is_empty() {
            return;
        }
        let too_old = self
            .gop
            .first()
            .is_some_and(|(_, t)| now.duration_since(*t) > GOP_MAX_AGE);
        if too_old || self.gop_bytes + chunk.data.len() > GOP_MAX_BYTES {
            self.gop = Vec::new();
            self.gop_bytes = 0;
            return;
        }
        self.gop_bytes += chunk.data.len();
        self.gop.push((chunk.data.clone(), now));
    }

    /// Whether a keyframe may be asked now (at most once per second).
    pub(super) fn take_request_turn(&mut self, now: Instant) -> bool {
        let due = self
            .last_keyframe_request
            .is_none_or(|t| now.duration_since(t) >= KEYFRAME_INTERVAL);
        if due {
            self.last_keyframe_request = Some(now);
        }
        due
    }
}
