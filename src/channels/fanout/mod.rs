//! Fan-out: one rendition's container output, cut into chunks, handed to any
//! number of viewers (HTTP bodies).
//!
//! [`Fanout::publish`] runs on a GStreamer streaming thread: it takes one
//! short lock, appends the chunk to each viewer's queue and wakes the viewers
//! it fed; it never waits for one. Each viewer's queue is bounded by age
//! (`VIEWER_BUFFER`) and bytes: past the bound the queue is dropped and the
//! viewer skips to the next keyframe chunk, so its stream stays decodable.
//! A viewer that stays behind for longer than `STALL_TIMEOUT` is ended with
//! [`EndReason::SlowClient`].

mod state;
mod viewer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::media::EndReason;
pub use state::Tap;
use state::{Inner, Slot};
use viewer::ViewerShared;
pub use viewer::{Viewer, ViewerEnded, ViewerHandle};

pub use super::container::Chunk;

#[derive(Debug, Clone, Copy)]
pub struct FanoutConfig {
    /// VIEWER_BUFFER: media a viewer may have queued (measured as the age of
    /// its oldest queued chunk, wall clock since publish).
    pub buffer: Duration,
    /// STALL_TIMEOUT: a viewer behind for longer than this is ended.
    pub stall: Duration,
}

/// Where a new viewer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// From the cached current GOP: at once, at most a GOP behind live.
    Gop,
    /// From the next keyframe, which the rendition is asked to force.
    Live,
}

type CountFn = Box<dyn Fn(usize) + Send + Sync>;

pub struct Fanout {
    cfg: FanoutConfig,
    inner: Mutex<Inner>,
    skips: AtomicU64,
    keyframe_request: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// The count callback and the count it last reported; held while it
    /// runs so reports arrive in order and the last one is current.
    count_cb: Mutex<(Option<CountFn>, Option<usize>)>,
}

impl Fanout {
    pub fn new(cfg: FanoutConfig) -> Arc<Fanout> {
        Arc::new(Fanout {
            cfg,
            inner: Mutex::new(Inner::default()),
            skips: AtomicU64::new(0),
            keyframe_request: Mutex::new(None),
            count_cb: Mutex::new((None, None)),
        })
    }

    /// The container header (replaces the previous one; later joiners get
    /// it). A viewer with no media queued whose header has not gone out
    /// gets the new one instead; any other gets the new one in its stream,
    /// right before the next keyframe chunk (what it has queued
    /// stays before it; chunks published in between are not sent to it, as
    /// they would follow the new header without a keyframe). The GOP cache
    /// is dropped, as its chunks belong to the previous header.
    pub fn set_header(&self, header: Bytes) {
        let mut inner = self.inner.lock();
        if inner.finished.is_some() {
            return;
        }
        inner.gop.clear();
        inner.gop_bytes = 0;
        let mut wake = Vec::new();
        for slot in inner.viewers.values_mut().filter(|s| !s.passive) {
            // Media queued, or the header gone out: the old header stays.
            if slot.started || (slot.has_header && slot.header.is_none()) {
                slot.next_header = Some(header.clone());
            } else {
                slot.header = Some(header.clone());
                slot.has_header = true;
                slot.take_wakers(&mut wake);
            }
        }
        for t in &inner.taps {
            t.header(&header);
        }
        inner.header = Some(header);
        drop(inner);
        wake.into_iter().for_each(Waker::wake);
    }

    /// Hands `chunk` to every viewer; never waits.
    pub fn publish(&self, chunk: Chunk) {
        let now = Instant::now();
        let len = chunk.data.len();
        let mut wake = Vec::new();
        let mut stalled = Vec::new();
        let removed: Vec<Slot> = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            if inner.finished.is_some() {
                return;
            }
            inner.cache(&chunk, now);
            for t in &inner.taps {
                t.chunk(&chunk);
            }
            for (id, slot) in inner.viewers.iter_mut() {
                if !slot.has_header || slot.passive {
                    continue;
                }
                if slot.started && !slot.skipping && slot.overflows(now, len, self.cfg.buffer) {
                    slot.queue = VecDeque::new();
                    slot.queued_bytes = 0;
                    slot.skipping = true;
                    slot.behind_since.get_or_insert(now);
                    slot.shared.skips.fetch_add(1, Ordering::Relaxed);
                    self.skips.fetch_add(1, Ordering::Relaxed);
                }
                if slot
                    .behind_since
                    .is_some_and(|t| now.duration_since(t) > self.cfg.stall)
                {
                    stalled.push(*id);
                } else if chunk.keyframe {
                    if let Some(header) = slot.next_header.take() {
                        slot.push(header, now);
                    }
                    slot.started = true;
                    slot.skipping = false;
                    slot.push(chunk.data.clone(), now);
                    slot.take_wakers(&mut wake);
                } else if slot.started && !slot.skipping && slot.next_header.is_none() {
                    slot.push(chunk.data.clone(), now);
                    slot.take_wakers(&mut wake);
                }
            }
            stalled
                .into_iter()
                .filter_map(|id| inner.remove(id, EndReason::SlowClient))
                .collect()
        };
        wake.into_iter().for_each(Waker::wake);
        self.ended(removed);
    }

    /// Called when a `Join::Live` viewer arrives (the rendition forces a
    /// keyframe on its encoder); the fan-out calls it at most once a second.
    pub fn set_keyframe_request(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.keyframe_request.lock() = Some(Arc::from(f));
    }

    /// Ends the stream for every viewer, present and future: each delivers
    /// what it has queued, then ends with `reason` (SourceError: the body
    /// yields an io::Error after the queued data so the client sees a cut).
    pub fn finish(&self, reason: EndReason) {
        let mut wake = Vec::new();
        let passive: Vec<Slot> = {
            let mut inner = self.inner.lock();
            if inner.finished.is_some() {
                return;
            }
            inner.finished = Some(reason);
            inner.gop = Vec::new();
            inner.gop_bytes = 0;
            for t in std::mem::take(&mut inner.taps) {
                t.finish(reason);
            }
            // Passive viewers have no body to deliver an end through.
            let ids: Vec<u64> = (inner.viewers.iter())
                .filter(|(_, s)| s.passive)
                .map(|(id, _)| *id)
                .collect();
            let passive = ids
                .into_iter()
                .filter_map(|id| inner.remove(id, reason))
                .collect();
            for slot in inner.viewers.values_mut() {
                slot.finish = Some(reason);
                if !slot.started {
                    slot.header = None;
                }
                slot.next_header = None;
                slot.take_wakers(&mut wake);
            }
            passive
        };
        wake.into_iter().for_each(Waker::wake);
        self.ended(passive);
    }

    /// Adds an internal consumer: it is handed the current header and the
    /// cached GOP at once (so it can start at the latest keyframe), then
    /// every header change, chunk and the end. False if the fan-out has
    /// finished (the tap is told so).
    pub fn add_tap(&self, tap: Arc<dyn Tap>) -> bool {
        let mut inner = self.inner.lock();
        if let Some(reason) = inner.finished {
            drop(inner);
            tap.finish(reason);
            return false;
        }
        if let Some(h) = &inner.header {
            tap.header(h);
            for (i, (data, _)) in inner.gop.iter().enumerate() {
                tap.chunk(&Chunk {
                    data: data.clone(),
                    keyframe: i == 0,
                });
            }
        }
        inner.taps.push(tap);
        true
    }

    /// Asks the rendition for a keyframe now (at most once a second).
    pub fn request_keyframe_now(&self) {
        let due = self.inner.lock().take_request_turn(Instant::now());
        if due {
            self.request_keyframe();
        }
    }

    /// A viewer that is counted (status, limits, linger) but fed nothing:
    /// its media is served some other way (HLS segments). Dropping it, or
    /// ending its handle, ends it; it ends with the fan-out too.
    pub fn subscribe_passive(self: &Arc<Self>) -> Viewer {
        let shared = {
            let mut inner = self.inner.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            let shared = ViewerShared::new(id, Arc::downgrade(self), Instant::now());
            let finished = inner.finished;
            let slot = Slot {
                shared: shared.clone(),
                join: Join::Gop,
                passive: true,
                has_header: false,
                header: None,
                next_header: None,
                started: true,
                skipping: false,
                queue: VecDeque::new(),
                queued_bytes: 0,
                behind_since: None,
                finish: finished,
                waker: None,
                ready_waker: None,
            };
            if let Some(reason) = finished {
                let _ = shared.reason.set(reason);
            } else {
                inner.viewers.insert(id, slot);
            }
            shared
        };
        self.notify_count();
        Viewer::new(self.clone(), shared)
    }

    pub fn subscribe(self: &Arc<Self>, join: Join) -> Viewer {
        let now = Instant::now();
        let mut ask = false;
        let shared = {
            let mut inner = self.inner.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            let shared = ViewerShared::new(id, Arc::downgrade(self), now);
            let finished = inner.finished;
            let header = inner.header.clone().filter(|_| finished.is_none());
            let mut slot = Slot {
                shared: shared.clone(),
                join,
                passive: false,
                has_header: header.is_some(),
                header,
                next_header: None,
                started: false,
                skipping: false,
                queue: VecDeque::new(),
                queued_bytes: 0,
                behind_since: None,
                finish: finished,
                waker: None,
                ready_waker: None,
            };
            // A live joiner starts from a keyframe made less than a
            // second ago (the most recent one asked for, at most once a
            // second): it is as close to live as a forced keyframe gets.
            let fresh = inner
                .gop
                .first()
                .is_some_and(|(_, at)| now.duration_since(*at) < state::KEYFRAME_INTERVAL);
            if slot.has_header && !inner.gop.is_empty() && (join == Join::Gop || fresh) {
                slot.started = true;
                for (data, at) in &inner.gop {
                    slot.push(data.clone(), *at);
                }
            }
            if join == Join::Live && !slot.started && finished.is_none() {
                ask = inner.take_request_turn(now);
            }
            inner.viewers.insert(id, slot);
            shared
        };
        if ask {
            self.request_keyframe();
        }
        self.notify_count();
        Viewer::new(self.clone(), shared)
    }

    pub fn viewer_count(&self) -> usize {
        self.inner.lock().viewers.len()
    }

    /// Chunks skipped by slow viewers, in skip events (one per overflow).
    pub fn skips_total(&self) -> u64 {
        self.skips.load(Ordering::Relaxed)
    }

    /// Ends viewers that have been behind for longer than `stall` (also
    /// checked on each publish); the owner calls this every 500 ms. A viewer
    /// whose oldest queued chunk is older than `buffer` counts as behind even
    /// when nothing is published. Live joiners still waiting get another
    /// keyframe request.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut ask = false;
        let removed: Vec<Slot> = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            let mut stalled = Vec::new();
            let mut live_waiting = false;
            for (id, slot) in inner.viewers.iter_mut() {
                if slot.overflows(now, 0, self.cfg.buffer) {
                    slot.behind_since.get_or_insert(now);
                }
                if slot
                    .behind_since
                    .is_some_and(|t| now.duration_since(t) > self.cfg.stall)
                {
                    stalled.push(*id);
                }
                live_waiting |= slot.join == Join::Live && !slot.started && slot.finish.is_none();
            }
            if live_waiting {
                ask = inner.take_request_turn(now);
            }
            stalled
                .into_iter()
                .filter_map(|id| inner.remove(id, EndReason::SlowClient))
                .collect()
        };
        if ask {
            self.request_keyframe();
        }
        self.ended(removed);
    }

    /// Called with the new viewer count whenever it changes (subscribe, end).
    /// It runs on the thread that changed the count, in order, and must not
    /// block nor subscribe, end viewers or call `on_viewer_count` itself.
    pub fn on_viewer_count(&self, f: Box<dyn Fn(usize) + Send + Sync>) {
        self.count_cb.lock().0 = Some(f);
    }

    fn request_keyframe(&self) {
        let f = self.keyframe_request.lock().clone();
        if let Some(f) = f {
            f();
        }
    }

    fn notify_count(&self) {
        let mut cb = self.count_cb.lock();
        let n = self.viewer_count();
        if cb.1 != Some(n) {
            cb.1 = Some(n);
            if let Some(f) = &cb.0 {
                f(n);
            }
        }
    }

    /// Ends `id` at once with `reason` unless it has ended; frees its queue.
    fn end_viewer(&self, id: u64, reason: EndReason) -> bool {
        let slot = self.inner.lock().remove(id, reason);
        let ended = slot.is_some();
        self.ended(slot.into_iter().collect());
        ended
    }

    /// After removal: wake the bodies, free the queues, run the hooks.
    fn ended(&self, slots: Vec<Slot>) {
        if slots.is_empty() {
            return;
        }
        for mut slot in slots {
            let mut wake = Vec::new();
            slot.take_wakers(&mut wake);
            let shared = slot.shared.clone();
            drop(slot);
            wake.into_iter().for_each(Waker::wake);
            shared.run_hooks();
        }
        self.notify_count();
    }
}

#[cfg(test)]
mod tests;
