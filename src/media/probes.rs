//! Pad probes a channel's chains rely on: counting what a rendition makes,
//! joining H.264 pictures that arrive in pieces, and holding video back
//! until its first keyframe.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;

/// Frames and media time a rendition has produced, counted on its encoded
/// video (or audio, when there is no video).
#[derive(Debug)]
pub struct Counters {
    pub frames: AtomicU64,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
    /// Wall time (ns) the encoder's chain spent on pictures: from a picture
    /// leaving the queue in front of the encoder to its encoded picture
    /// coming out. Media time over this is how fast the encoder could go.
    busy_ns: AtomicU64,
    /// When the picture being encoded left the queue (monotonic ns; 0: none).
    busy_since: AtomicU64,
    /// Pixels of one source picture (width x height) the encoder reads.
    source_pixels: AtomicU64,
    /// Pictures per second the encoder is meant to make (x1000; 0: unknown).
    frame_rate_milli: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            frames: AtomicU64::new(0),
            first_pts: AtomicU64::new(u64::MAX),
            last_pts: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            source_pixels: AtomicU64::new(0),
            frame_rate_milli: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Media time carried so far (ns).
    pub fn media_ns(&self) -> u64 {
        let first = self.first_pts.load(Ordering::Relaxed);
        let last = self.last_pts.load(Ordering::Relaxed);
        if first == u64::MAX {
            0
        } else {
            last.saturating_sub(first)
        }
    }

    /// Wall time the encoder has spent on pictures so far (ns).
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }

    /// Pixels of one source picture, once the encoder has seen its caps.
    pub fn source_pixels(&self) -> Option<u64> {
        Some(self.source_pixels.load(Ordering::Relaxed)).filter(|p| *p > 0)
    }

    pub fn set_source_pixels(&self, pixels: u64) {
        self.source_pixels.store(pixels, Ordering::Relaxed);
    }

    /// Pictures per second the encoder is meant to make, once known.
    pub fn frame_rate(&self) -> Option<f64> {
        Some(self.frame_rate_milli.load(Ordering::Relaxed))
            .filter(|r| *r > 0)
            .map(|r| r as f64 / 1000.0)
    }

    pub fn set_frame_rate(&self, fps: f64) {
        if fps.is_finite() && fps > 0.0 {
            self.frame_rate_milli
                .store((fps * 1000.0).round() as u64, Ordering::Relaxed);
        }
    }

    /// Counts what a busy encoder made: `busy_ns` of its work for a
    /// picture at `pts` (what the pad probes record).
    #[cfg(test)]
    pub(crate) fn note_encoded(&self, pts: gst::ClockTime, busy_ns: u64) {
        self.note(Some(pts));
        self.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
    }

    fn note(&self, pts: Option<gst::ClockTime>) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(pts) = pts {
            let ns = pts.nseconds();
            let _ =
                self.first_pts
                    .compare_exchange(u64::MAX, ns, Ordering::Relaxed, Ordering::Relaxed);
            self.last_pts.fetch_max(ns, Ordering::Relaxed);
        }
    }
}

/// Counts frames and media time on encoded media.
pub fn count_output(pad: &gst::Pad, counters: &Arc<Counters>) {
    let c = Arc::downgrade(counters);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let (Some(c), Some(b)) = (c.upgrade(), info.buffer()) {
            c.note(b.pts());
        }
        gst::PadProbeReturn::Ok
    });
}

/// Times the work between `entry` (a picture leaves the queue in front of
/// the encoder, on that queue's streaming thread) and `exit` (its encoded
/// picture comes out of the encoder, on the same thread: the encoder runs
/// without frame delay). A picture that produces no output (dropped by the
/// rate filter) is not counted.
pub fn count_busy(entry: &gst::Pad, exit: &gst::Pad, counters: &Arc<Counters>) {
    let c = Arc::downgrade(counters);
    entry.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Some(c) = c.upgrade() {
            c.busy_since
                .store(gst::get_timestamp().nseconds().max(1), Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
    let c = Arc::downgrade(counters);
    exit.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Some(c) = c.upgrade() {
            let since = c.busy_since.swap(0, Ordering::Relaxed);
            if since > 0 {
                let now = gst::get_timestamp().nseconds();
                c.busy_ns
                    .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Joins the pieces of an H.264 picture that arrive as separate buffers
/// into one. A picture coded as several slices, with SPS/PPS repeated in
/// front of each (some cameras and encoders; RTP payloaders that insert them
/// before every IDR slice), is cut by the depayloader at each SPS: only the
/// first piece carries the timestamp, and parsers pass the pieces on as
/// they are. A muxer then writes pieces without a time as pictures of their
/// own, and no player can decode them.
///
/// Each timestamped buffer is held until the next one arrives, and the
/// untimed buffers in between are appended to it (one picture of delay).
/// What is held when the stream starts over (a new segment, a flush, a
/// reconnect) or ends is dropped.
pub fn join_split_access_units(pad: &gst::Pad) {
    let held: Mutex<Option<gst::Buffer>> = Mutex::new(None);
    pad.add_probe(
        gst::PadProbeType::BUFFER
            | gst::PadProbeType::EVENT_DOWNSTREAM
            | gst::PadProbeType::EVENT_FLUSH,
        move |_, info| {
            // The buffer is taken from the probe and the probe says it
            // handled it (a dropped buffer makes GStreamer 1.22 log a critical).
            fn consume(info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
                info.data = None;
                gst::PadProbeReturn::Handled
            }
            match &mut info.data {
                Some(gst::PadProbeData::Buffer(buf)) => {
                    let mut held = held.lock();
                    if buf.pts().is_none() && buf.dts().is_none() {
                        return match held.as_mut() {
                            Some(h) => {
                                // Appending needs the only reference.
                                h.make_mut();
                                h.append(buf.clone());
                                consume(info)
                            }
                            // Nothing to join it to: it goes as it came.
                            None => gst::PadProbeReturn::Ok,
                        };
                    }
                    match held.replace(buf.clone()) {
                        Some(previous) => {
                            *buf = previous;
                            gst::PadProbeReturn::Ok
                        }
                        None => consume(info),
                    }
                }
                Some(gst::PadProbeData::Event(ev)) => {
                    if matches!(
                        ev.type_(),
                        gst::EventType::Eos
                            | gst::EventType::FlushStop
                            | gst::EventType::StreamStart
                            | gst::EventType::Segment
                    ) {
                        held.lock().take();
                    }
                    gst::PadProbeReturn::Ok
                }
                _ => gst::PadProbeReturn::Ok,
            }
        },
    );
}

/// Drops video until the first keyframe so output always starts decodable.
pub fn add_keyframe_gate(pad: &gst::Pad) {
    let seen = AtomicBool::new(false);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if seen.load(Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        match info.buffer() {
            Some(b) if !b.flags().contains(gst::BufferFlags::DELTA_UNIT) => {
                seen.store(true, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            }
            Some(_) => gst::PadProbeReturn::Drop,
            None => gst::PadProbeReturn::Ok,
        }
    });
}
