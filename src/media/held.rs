//! Held streams of a source generation (see [`super::ingest`]): each
//! elementary stream gets its own queue whose output is held at its first
//! buffer until the output side links it, or is discarded when nobody
//! will. A stream that ends or fails is reported as [`SOURCE_LOST`].
//!
//! Per stream, two cheap probes stay on the held pad for the life of the
//! generation: one records the segment (to turn timestamps into running
//! time) and turns upstream EOS of an endless source into a reconnect
//! request; the other keeps the highest running time handed downstream,
//! which is where a later generation resumes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gst::prelude::*;

use super::chains::{make, queue};
use super::shared::{element_name, PadTiming, PendingPad, Shared};
use super::MediaError;

/// Media each source stream may buffer while the output side is being chosen.
const PREDECISION_QUEUE_NS: u64 = 3_000_000_000;
/// The same once the decision waits for a video stream still being typed:
/// longer than that wait (`settle::VIDEO_SETTLE`), or the full audio queue
/// would block the demuxer feeding both and the video keyframe being waited
/// for would never come. Only then: a file read ahead this far would reach
/// its end before the output side exists.
pub(super) const PREDECISION_LONG_QUEUE_NS: u64 = 12_000_000_000;

/// Application message posted when a generation's stream ends or fails.
pub const SOURCE_LOST: &str = "sluice-source-lost";

/// Gives one elementary stream its own queue at once (so a demuxer feeding
/// several streams from one thread never waits on a held stream) and holds
/// the queue's output at its first buffer. Stream-start, caps and segment
/// pass and stay sticky on the unlinked pad, so the caps are known when the
/// output side is chosen.
pub(super) fn hold_stream(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    shared: &Arc<Shared>,
    gen: u64,
) -> Result<(), MediaError> {
    let q = queue(PREDECISION_QUEUE_NS, false)?;
    q.set_property("name", element_name(shared, gen, "queue"));
    pipeline.add(&q)?;
    shared.remember(gen, &q);
    q.sync_state_with_parent()?;
    let held = q.static_pad("src").expect("queue src pad");
    let timing = Arc::new(PadTiming::default());

    // Segment bookkeeping.
    let t = timing.clone();
    held.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::EventView::Segment(seg)) = info.event().map(|e| e.view()) {
            t.record(seg.segment());
        }
        gst::PadProbeReturn::Ok
    });

    // EOS of an endless source means it dropped (and a source without a
    // duration that ends before its media was used has failed): it is kept
    // from the output and reported, so the output goes on with the next
    // generation. A finite source (a file) may simply have been read to its
    // end before the output side was built; its EOS is real and passes.
    let weak = Arc::downgrade(shared);
    q.static_pad("sink").expect("queue sink pad").add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            let Some(gst::EventView::Eos(_)) = info.event().map(|e| e.view()) else {
                return gst::PadProbeReturn::Ok;
            };
            let Some(sh) = weak.upgrade() else {
                return gst::PadProbeReturn::Ok;
            };
            if sh.closing.load(Ordering::Acquire) {
                return gst::PadProbeReturn::Ok;
            }
            let lost = if sh.committed.load(Ordering::Acquire) {
                sh.endless.load(Ordering::Acquire)
            } else {
                pad.peer_query_duration::<gst::ClockTime>()
                    .is_none_or(|d| d == gst::ClockTime::ZERO)
            };
            if lost {
                post_lost(pad, gen, "the source ended the stream");
                // Replaced rather than dropped: GStreamer 1.22 logs a
                // critical when a probe drops an event.
                info.data = Some(gst::PadProbeData::Event(gst::event::CustomDownstream::new(
                    gst::Structure::new_empty("sluice-source-ended"),
                )));
            }
            gst::PadProbeReturn::Ok
        },
    );

    // Where the output has got to, in running time.
    let weak = Arc::downgrade(shared);
    let t = timing.clone();
    held.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let (Some(sh), Some(b)) = (weak.upgrade(), info.buffer()) {
            if let Some(ts) = b.pts().or(b.dts()) {
                let end = ts
                    .nseconds()
                    .saturating_add(b.duration().map_or(0, |d| d.nseconds()));
                if let Some(rt) = t.running_time(end).and_then(|rt| u64::try_from(rt).ok()) {
                    sh.resume_rt.fetch_max(rt, Ordering::Relaxed);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });

    // Hold at the first buffer; note its caps and running time.
    let weak = Arc::downgrade(shared);
    let t = timing.clone();
    let probe = held.add_probe(
        gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |pad, info| {
            if let Some(sh) = weak.upgrade() {
                let caps = pad.current_caps();
                let rt = info
                    .buffer()
                    .and_then(|b| b.dts().or(b.pts()))
                    .and_then(|ts| t.running_time(ts.nseconds()));
                if let Some(p) = sh.pending.lock().iter_mut().find(|p| &p.pad == pad) {
                    if p.caps.is_none() {
                        p.caps = caps;
                    }
                    if p.first_rt.is_none() {
                        p.first_rt = rt;
                    }
                }
                sh.notify.notify_waiters();
            }
            gst::PadProbeReturn::Ok
        },
    );
    shared.pending.lock().push(PendingPad {
        pad: held.clone(),
        probe,
        caps: None,
        gen,
        first_rt: None,
        timing,
    });
    // Checked once the pad is listed, so a lengthening that went over the
    // list just before still reaches it.
    if shared.long_holds.load(Ordering::Acquire) {
        lengthen_hold(&held);
    }
    pad.link(&q.static_pad("sink").expect("queue sink pad"))
        .map_err(|e| MediaError::SourceFailed(format!("cannot queue a source stream: {e:?}")))?;
    // The output side was chosen before this stream showed up (a second
    // audio track typed after the first two streams): nobody will link it,
    // and held it would fill its queue and stall the demuxer feeding it.
    if let Some(mut late) = shared.take_late(gen, &held) {
        if let Some(id) = late.probe.take() {
            held.remove_probe(id);
        }
        return discard(pipeline, shared, gen, &held);
    }
    shared.notify.notify_waiters();
    Ok(())
}

/// Raises the limit of the queue holding `held` (its source pad) to
/// [`PREDECISION_LONG_QUEUE_NS`].
pub(super) fn lengthen_hold(held: &gst::Pad) {
    if let Some(q) = held.parent_element() {
        q.set_property("max-size-time", PREDECISION_LONG_QUEUE_NS);
    }
}

/// Posts [`SOURCE_LOST`] for generation `gen` from the element owning `pad`.
pub fn post_lost(pad: &gst::Pad, gen: u64, why: &str) {
    if let Some(el) = pad.parent_element() {
        let s = gst::Structure::builder(SOURCE_LOST)
            .field("generation", gen)
            .field("reason", why)
            .build();
        let _ = el.post_message(gst::message::Application::builder(s).src(&el).build());
    }
}

/// Sends a stream nobody uses into a fakesink (part of generation `gen`).
pub(super) fn discard(
    pipeline: &gst::Pipeline,
    shared: &Shared,
    gen: u64,
    pad: &gst::Pad,
) -> Result<(), MediaError> {
    let sink = make("fakesink")?;
    sink.set_property(
        "name",
        format!(
            "g{gen}-discard{}",
            shared.seq.fetch_add(1, Ordering::Relaxed)
        ),
    );
    sink.set_property("sync", false);
    sink.set_property("async", false);
    pipeline.add(&sink)?;
    shared.remember(gen, &sink);
    sink.sync_state_with_parent()?;
    pad.link(&sink.static_pad("sink").expect("fakesink sink pad"))
        .map_err(|e| MediaError::SourceFailed(format!("cannot discard stream: {e:?}")))?;
    Ok(())
}
