//! Source bookkeeping shared between streaming-thread callbacks and the
//! async side: [`Shared`] with its held streams ([`PendingPad`]) and their
//! timing ([`PadTiming`]), the process-wide monotonic clock ([`now_ms`]),
//! and the caps tests the source side sorts streams by. It holds no
//! pipeline objects except the pads [`super::pipeline::Opened::release`]
//! lets go, and imports nothing else of the source side.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;

use super::stats::MediaStats;

/// State shared between streaming-thread callbacks and the async side.
/// Holds no strong reference to the pipeline or its elements.
#[derive(Default)]
pub(super) struct Shared {
    /// Source pads found so far, each held by a blocking probe.
    pub(super) pending: Mutex<Vec<PendingPad>>,
    /// The current generation's urisourcebin has exposed all its pads.
    pub(super) source_done: AtomicBool,
    /// The current generation's parsebins that have not yet signalled no-more-pads.
    pub(super) parsers_open: AtomicUsize,
    /// The current generation's parsebins that have not exposed a pad yet
    /// (a stream still being typed).
    pub(super) parsers_silent: AtomicUsize,
    /// Video parsers the current generation's parsebins have plugged: a
    /// video stream exists even while none is exposed yet (a live stream
    /// joined mid-GOP types its video only at the next keyframe).
    pub(super) video_parsers: AtomicUsize,
    /// The current generation's container says it carries video (an FLV
    /// stream's metadata or header flags) before any video stream exists.
    pub(super) video_declared: AtomicBool,
    /// The current generation's held streams queue up to
    /// [`super::held::PREDECISION_LONG_QUEUE_NS`] (see
    /// [`super::pipeline::Opened::lengthen_holds`]).
    pub(super) long_holds: AtomicBool,
    /// Source pads the source element announced (rtspsrc: one per SDP
    /// stream, known at its no-more-pads); usize::MAX while it may add more.
    pub(super) source_pads_expected: AtomicUsize,
    /// The current generation's urisourcebin pads seen so far.
    pub(super) source_pads_seen: AtomicUsize,
    /// The current source generation (see [`super::ingest`]); 0 for `test://`.
    pub(super) generation: AtomicU64,
    /// Index into the plan's URIs that the current generation reads.
    pub(super) uri_index: AtomicUsize,
    /// Highest generation whose loss has been taken care of.
    pub(super) handled_gen: AtomicU64,
    /// Highest generation that failed or ended.
    pub(super) failed_gen: AtomicU64,
    /// Why the latest generation failed (credential-free).
    pub(super) last_error: Mutex<Option<String>>,
    /// Elements of each generation, for removing one.
    generation_elements: Mutex<Vec<(u64, gst::glib::WeakRef<gst::Element>)>>,
    /// Sink pads of the video and audio branches, once committed.
    pub(super) branches: Mutex<[Option<gst::glib::WeakRef<gst::Pad>>; 2]>,
    /// Highest running time (ns) the source has handed to the branches.
    pub(super) resume_rt: AtomicU64,
    /// The source has no end: its EOS or failure means it dropped.
    pub(super) endless: AtomicBool,
    /// The output side is built.
    pub(super) committed: AtomicBool,
    /// Highest generation whose held streams were handed to the output
    /// side; a stream that generation exposes later is discarded at once.
    linked_gen: AtomicU64,
    /// Element names are unique within the pipeline.
    pub(super) seq: AtomicU64,
    /// The session is ending: no reconnects, EOS passes.
    pub(super) closing: AtomicBool,
    /// A lost source is being reconnected.
    pub(super) reconnecting: AtomicBool,
    /// Successful reconnects.
    pub(super) reconnects: AtomicU64,
    /// The outage being reconnected, kept across a reconnect that did not
    /// hold (see [`super::reconnect`]).
    pub(super) outage: Mutex<Option<super::reconnect::Outage>>,
    /// Wakes whoever waits for pads or for output.
    pub(super) notify: tokio::sync::Notify,
    /// The app's media counters.
    pub(super) stats: Arc<MediaStats>,
    /// Monotonic ms (see [`now_ms`]) of the last output any rendition made.
    pub(super) last_sample_ms: AtomicU64,
}

pub(super) struct PendingPad {
    pub pad: gst::Pad,
    pub probe: Option<gst::PadProbeId>,
    pub caps: Option<gst::Caps>,
    /// Generation the pad belongs to.
    pub gen: u64,
    /// Running time of the first buffer held.
    pub first_rt: Option<i64>,
    pub timing: Arc<PadTiming>,
}

impl Shared {
    /// Fresh bookkeeping for a source opened now (its stall clock starts).
    pub(super) fn new(stats: Arc<MediaStats>) -> Self {
        Shared {
            stats,
            last_sample_ms: AtomicU64::new(now_ms()),
            ..Default::default()
        }
    }

    pub(super) fn remember(&self, gen: u64, element: &gst::Element) {
        self.generation_elements
            .lock()
            .push((gen, element.downgrade()));
    }

    /// Takes the (still alive) elements of generation `gen` out of the book.
    pub(super) fn take_generation(&self, gen: u64) -> Vec<gst::Element> {
        let mut book = self.generation_elements.lock();
        let mut taken = Vec::new();
        book.retain(|(g, weak)| {
            if *g == gen {
                taken.extend(weak.upgrade());
                false
            } else {
                true
            }
        });
        taken
    }

    /// Takes generation `gen`'s held streams out of [`Shared::pending`] to
    /// be linked, and marks the generation linked, in one step under the lock.
    pub(super) fn take_pending(&self, gen: u64) -> Vec<PendingPad> {
        let mut all = self.pending.lock();
        let (this, other): (Vec<_>, Vec<_>) = all.drain(..).partition(|p| p.gen == gen);
        *all = other;
        self.linked_gen.fetch_max(gen, Ordering::AcqRel);
        this
    }

    /// A stream that generation `gen` exposed after its streams were
    /// taken: removed from the book, to be discarded by the caller.
    pub(super) fn take_late(&self, gen: u64, pad: &gst::Pad) -> Option<PendingPad> {
        let mut all = self.pending.lock();
        if self.linked_gen.load(Ordering::Acquire) < gen {
            return None;
        }
        let i = all.iter().position(|p| &p.pad == pad)?;
        Some(all.remove(i))
    }

    /// Every source pad is exposed and each has shown its caps.
    pub(super) fn all_pads_known(&self) -> bool {
        if !self.source_done.load(Ordering::Acquire)
            || self.parsers_open.load(Ordering::Acquire) != 0
        {
            return false;
        }
        let mut pending = self.pending.lock();
        for p in pending.iter_mut() {
            if p.caps.is_none() {
                p.caps = p.pad.current_caps();
            }
        }
        !pending.is_empty() && pending.iter().all(|p| p.caps.is_some())
    }
}

/// Milliseconds on a process-wide monotonic clock.
pub(super) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Segment and offset of one held pad, kept in atomics so the per-buffer
/// probe takes no lock. Running time = pts - start + base + offset.
#[derive(Default)]
pub(super) struct PadTiming {
    start: AtomicU64,
    base: AtomicU64,
    pub offset: AtomicI64,
    ready: AtomicBool,
}

impl PadTiming {
    /// Running time (ns) of `ts` on this pad, offset included; negative
    /// before the segment's start (decode timestamps often are). None
    /// before the segment is known, or for a time no running time can hold
    /// (a source's garbage timestamp never wraps into a plausible one).
    pub fn running_time(&self, ts: u64) -> Option<i64> {
        if !self.ready.load(Ordering::Relaxed) {
            return None;
        }
        let start = i128::from(self.start.load(Ordering::Relaxed));
        let base = i128::from(self.base.load(Ordering::Relaxed));
        let offset = i128::from(self.offset.load(Ordering::Relaxed));
        i64::try_from(i128::from(ts) - start + base + offset).ok()
    }

    pub(super) fn record(&self, seg: &gst::Segment) {
        if let Some(seg) = seg.downcast_ref::<gst::ClockTime>() {
            self.start
                .store(seg.start().map_or(0, |t| t.nseconds()), Ordering::Relaxed);
            self.base
                .store(seg.base().map_or(0, |t| t.nseconds()), Ordering::Relaxed);
            self.ready.store(true, Ordering::Relaxed);
        }
    }
}

/// A name for an element of generation `gen` (`g<N>-<what><seq>`), unique
/// within the pipeline.
pub(super) fn element_name(shared: &Shared, gen: u64, what: &str) -> String {
    format!(
        "g{gen}-{what}{}",
        shared.seq.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn is_video(caps: &gst::CapsRef) -> bool {
    caps.structure(0)
        .is_some_and(|s| s.name().starts_with("video/"))
}

pub(super) fn is_audio(caps: &gst::CapsRef) -> bool {
    caps.structure(0)
        .is_some_and(|s| s.name().starts_with("audio/"))
}

/// Which of a channel's two streams caps are: 0 video, 1 audio, None other.
pub(super) fn stream_index(caps: &gst::CapsRef) -> Option<usize> {
    if is_video(caps) {
        Some(0)
    } else if is_audio(caps) {
        Some(1)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_time_follows_segment_and_offset() {
        let t = PadTiming::default();
        assert_eq!(t.running_time(5), None);
        let mut seg = gst::FormattedSegment::<gst::ClockTime>::new();
        seg.set_start(gst::ClockTime::from_seconds(10));
        seg.set_base(gst::ClockTime::from_seconds(2));
        t.record(seg.upcast_ref());
        assert_eq!(t.running_time(11_000_000_000), Some(3_000_000_000));
        assert_eq!(t.running_time(9_000_000_000), Some(1_000_000_000));
        assert_eq!(t.running_time(7_000_000_000), Some(-1_000_000_000));
        t.offset.store(-1_000_000_000, Ordering::Relaxed);
        assert_eq!(t.running_time(11_000_000_000), Some(2_000_000_000));
        t.offset.store(-5_000_000_000, Ordering::Relaxed);
        assert_eq!(t.running_time(11_000_000_000), Some(-2_000_000_000));
        // Out of range either way: no running time rather than a wrapped one.
        t.offset.store(i64::MAX, Ordering::Relaxed);
        assert_eq!(t.running_time(u64::MAX - 1), None);
        t.offset.store(i64::MIN, Ordering::Relaxed);
        assert_eq!(t.running_time(0), None);
    }
}
