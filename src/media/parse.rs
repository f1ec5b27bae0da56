//! One parsebin per source pad of a generation: it types the source's
//! elementary streams and hands each to [`super::held`] to be held, while
//! counting what the decision about the output side waits for (parsebins
//! still open or silent, video parsers plugged, video an FLV header
//! declares).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gst::prelude::*;

use super::chains::make;
use super::held::hold_stream;
use super::shared::{element_name, Shared};
use super::MediaError;

/// Links one urisourcebin pad into a fresh parsebin whose output pads are
/// held until the output side takes them.
pub(super) fn attach_parsebin(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    shared: &Arc<Shared>,
    gen: u64,
) -> Result<(), MediaError> {
    let parsebin = make("parsebin")?;
    parsebin.set_property("name", element_name(shared, gen, "parse"));
    shared.parsers_open.fetch_add(1, Ordering::AcqRel);
    shared.parsers_silent.fetch_add(1, Ordering::AcqRel);
    let exposed = Arc::new(AtomicBool::new(false));
    let sh = shared.clone();
    let weak_pipeline = pipeline.downgrade();
    let first_pad = exposed.clone();
    parsebin.connect_pad_added(move |parsebin, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else {
            return;
        };
        // Held first, then no longer silent: a stream must never be
        // missing from both counts at once, or the streams would look
        // complete without it.
        let held = hold_stream(&pipeline, pad, &sh, gen);
        if !first_pad.swap(true, Ordering::AcqRel) && sh.generation.load(Ordering::Acquire) == gen {
            sh.parsers_silent.fetch_sub(1, Ordering::AcqRel);
        }
        sh.notify.notify_waiters();
        if let Err(e) = held {
            gst::element_error!(parsebin, gst::CoreError::Negotiation, ("{}", e));
        }
    });
    let weak = Arc::downgrade(shared);
    let bin = parsebin
        .downcast_ref::<gst::Bin>()
        .expect("parsebin is a bin");
    bin.connect_deep_element_added(move |_, _, el| {
        if el.factory().is_some_and(|f| f.name() == "flvdemux") {
            watch_flv_start(el, &weak, gen);
        }
        let video_parser = el.factory().is_some_and(|f| {
            let klass = f.klass();
            klass.contains("Parser") && klass.contains("Video")
        });
        if let (true, Some(sh)) = (video_parser, weak.upgrade()) {
            if sh.generation.load(Ordering::Acquire) == gen {
                sh.video_parsers.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    let sh = shared.clone();
    parsebin.connect_no_more_pads(move |_| {
        if sh.generation.load(Ordering::Acquire) == gen {
            if !exposed.swap(true, Ordering::AcqRel) {
                sh.parsers_silent.fetch_sub(1, Ordering::AcqRel);
            }
            sh.parsers_open.fetch_sub(1, Ordering::AcqRel);
        }
        sh.notify.notify_waiters();
    });
    pipeline.add(&parsebin)?;
    shared.remember(gen, &parsebin);
    parsebin.sync_state_with_parent()?;
    let sink = parsebin
        .static_pad("sink")
        .expect("parsebin has a sink pad");
    pad.link(&sink)
        .map_err(|e| MediaError::SourceFailed(format!("cannot link source to parser: {e:?}")))?;
    Ok(())
}

/// Reads the start of the stream going into `demux` (an flvdemux) and
/// marks video as declared when its metadata or header says there is
/// video: flvdemux exposes the video stream only once the codec headers
/// came, which a live server joined between keyframes may send long after
/// the audio.
fn watch_flv_start(demux: &gst::Element, shared: &std::sync::Weak<Shared>, gen: u64) {
    let Some(sink) = demux.static_pad("sink") else {
        return;
    };
    let weak = shared.clone();
    let start = parking_lot::Mutex::new(Vec::<u8>::new());
    sink.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(sh) = weak.upgrade() else {
            return gst::PadProbeReturn::Remove;
        };
        if sh.generation.load(Ordering::Acquire) != gen {
            return gst::PadProbeReturn::Remove;
        }
        let mut start = start.lock();
        if let Some(map) = info.buffer().and_then(|b| b.map_readable().ok()) {
            let room = super::flv::MAX_LOOKAHEAD.saturating_sub(start.len());
            start.extend_from_slice(&map[..map.len().min(room)]);
        }
        match super::flv::declares_video(&start) {
            None => gst::PadProbeReturn::Ok,
            Some(video) => {
                if video {
                    sh.video_declared.store(true, Ordering::Release);
                    sh.notify.notify_waiters();
                }
                gst::PadProbeReturn::Remove
            }
        }
    });
}
