//! The source side of a pipeline, built as numbered *generations*.
//!
//! A generation is one attempt at reading one URI: `urisourcebin`, a
//! `parsebin` per source pad and a queue per elementary stream, all named
//! `g<N>-…` so that an error posted anywhere inside them can be traced back
//! to the generation (see [`generation_of`]). Each queue's output pad is held
//! at its first buffer until the output side links it: at commit time for
//! the first generation, after a reconnect for later ones (see
//! [`super::reconnect`]).
//!
//! Per stream, two cheap probes stay on the held pad for the life of the
//! generation: one records the segment (to turn timestamps into running
//! time) and turns upstream EOS of an endless source into a reconnect
//! request; the other keeps the highest running time handed downstream,
//! which is where a later generation resumes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use gst::prelude::*;

use super::pipeline::{discard, make, queue, PendingPad, Shared};
use super::source::SourceUri;
use super::MediaError;

/// Media each source stream may buffer while the output side is being chosen.
const PREDECISION_QUEUE_NS: u64 = 3_000_000_000;
/// The same once the decision waits for a video stream still being typed:
/// longer than that wait (`running::VIDEO_SETTLE`), or the full audio queue
/// would block the demuxer feeding both and the video keyframe being waited
/// for would never come. Only then: a file read ahead this far would reach
/// its end before the output side exists.
pub(super) const PREDECISION_LONG_QUEUE_NS: u64 = 12_000_000_000;

/// Application message posted when a generation's stream ends or fails.
pub const SOURCE_LOST: &str = "sluice-source-lost";
/// Application message posted when reconnecting gave up.
pub const SOURCE_GONE: &str = "sluice-source-gone";

/// Where a session's media comes from.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// The primary URI, then the backups in the order they are tried.
    pub uris: Vec<SourceUri>,
    /// HTTP headers for HTTP(S)/HLS/DASH sources.
    pub headers: BTreeMap<String, String>,
    /// Bandwidth (kbit/s) adaptive sources (HLS, DASH) choose a variant
    /// for: the highest one whose bitrate fits, else the lowest.
    pub connection_speed_kbps: u64,
    /// Total time a running session may spend reconnecting a dropped live
    /// source; zero disables reconnecting.
    pub reconnect_budget: std::time::Duration,
}

impl SourcePlan {
    /// A plan for one URI with no backups and no reconnecting.
    pub fn single(uri: SourceUri) -> Self {
        SourcePlan {
            uris: vec![uri],
            headers: BTreeMap::new(),
            connection_speed_kbps: 0,
            reconnect_budget: std::time::Duration::ZERO,
        }
    }

    pub fn primary(&self) -> &SourceUri {
        &self.uris[0]
    }
}

/// Segment and offset of one held pad, kept in atomics so the per-buffer
/// probe takes no lock. Running time = pts - start + base + offset.
#[derive(Default)]
pub struct PadTiming {
    start: AtomicU64,
    base: AtomicU64,
    pub offset: AtomicI64,
    ready: AtomicBool,
}

impl PadTiming {
    /// Running time (ns) of `ts` on this pad, offset included; negative
    /// before the segment's start (decode timestamps often are).
    pub fn running_time(&self, ts: u64) -> Option<i64> {
        if !self.ready.load(Ordering::Relaxed) {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed) as i64;
        let base = self.base.load(Ordering::Relaxed) as i64;
        Some(ts as i64 - start + base + self.offset.load(Ordering::Relaxed))
    }

    fn record(&self, seg: &gst::Segment) {
        if let Some(seg) = seg.downcast_ref::<gst::ClockTime>() {
            self.start
                .store(seg.start().map_or(0, |t| t.nseconds()), Ordering::Relaxed);
            self.base
                .store(seg.base().map_or(0, |t| t.nseconds()), Ordering::Relaxed);
            self.ready.store(true, Ordering::Relaxed);
        }
    }
}

/// The generation an object belongs to: the `g<N>-` prefix of its
/// top-level ancestor under the pipeline. Only meaningful while the object
/// is still in the pipeline (call it where the message is posted).
pub fn generation_of(obj: &gst::Object) -> Option<u64> {
    let mut cur = obj.clone();
    loop {
        let parent = cur.parent()?;
        if parent.is::<gst::Pipeline>() {
            break;
        }
        cur = parent;
    }
    let name = cur.name();
    let rest = name.strip_prefix('g')?;
    let digits = rest.split('-').next()?;
    if rest.len() == digits.len() {
        return None;
    }
    digits.parse().ok()
}

fn element_name(shared: &Shared, gen: u64, what: &str) -> String {
    format!(
        "g{gen}-{what}{}",
        shared.seq.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds generation `gen` reading `plan.uris[index]` and brings it to the
/// pipeline's state. Must run off the async runtime.
pub fn add_generation(
    pipeline: &gst::Pipeline,
    shared: &Arc<Shared>,
    plan: &SourcePlan,
    index: usize,
    gen: u64,
) -> Result<(), MediaError> {
    let SourceUri::Uri { uri, .. } = &plan.uris[index] else {
        return Err(MediaError::SourceFailed(
            "a test:// source has nothing to reconnect".into(),
        ));
    };
    shared.source_done.store(false, Ordering::Release);
    shared.parsers_open.store(0, Ordering::Release);
    shared.parsers_silent.store(0, Ordering::Release);
    shared.video_parsers.store(0, Ordering::Release);
    shared.video_declared.store(false, Ordering::Release);
    shared.long_holds.store(false, Ordering::Release);
    shared.source_pads_expected.store(0, Ordering::Release);
    shared.source_pads_seen.store(0, Ordering::Release);
    shared.uri_index.store(index, Ordering::Release);
    shared.generation.store(gen, Ordering::Release);
    if is_hls_playlist(uri) {
        return add_hls_generation(pipeline, shared, plan, uri, gen);
    }
    let src = gst::ElementFactory::make("urisourcebin")
        .name(element_name(shared, gen, "source"))
        .property("uri", uri.as_str())
        .build()
        .map_err(|_| {
            MediaError::SourceFailed("GStreamer element 'urisourcebin' is not installed".into())
        })?;
    if plan.connection_speed_kbps > 0 && src.has_property("connection-speed") {
        src.set_property_from_str("connection-speed", &plan.connection_speed_kbps.to_string());
    }
    let headers = plan.headers.clone();
    let weak = Arc::downgrade(shared);
    src.connect("source-setup", false, move |values| {
        if let Ok(el) = values[1].get::<gst::Element>() {
            configure_network_source(&el, &headers);
            // rtspsrc adds its pads one by one and urisourcebin never says
            // it is done: count on the SDP's streams instead.
            if el.factory().is_some_and(|f| f.name() == "rtspsrc") {
                if let Some(sh) = weak.upgrade() {
                    sh.source_pads_expected.store(usize::MAX, Ordering::Release);
                }
                let weak = weak.clone();
                el.connect_no_more_pads(move |el| {
                    if let Some(sh) = weak.upgrade() {
                        if sh.generation.load(Ordering::Acquire) == gen {
                            sh.source_pads_expected
                                .store(el.num_src_pads() as usize, Ordering::Release);
                        }
                        sh.notify.notify_waiters();
                    }
                });
            }
        }
        None
    });
    let weak_pipeline = pipeline.downgrade();
    let sh = shared.clone();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else {
            return;
        };
        if sh.generation.load(Ordering::Acquire) != gen {
            return;
        }
        sh.source_pads_seen.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = attach_parsebin(&pipeline, pad, &sh, gen) {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", e));
        }
    });
    let sh = shared.clone();
    src.connect_no_more_pads(move |_| {
        if sh.generation.load(Ordering::Acquire) == gen {
            sh.source_done.store(true, Ordering::Release);
        }
        sh.notify.notify_waiters();
    });
    pipeline.add(&src)?;
    shared.remember(gen, &src);
    src.sync_state_with_parent()?;
    Ok(())
}

/// An HTTP(S) URL whose path names an HLS playlist.
fn is_hls_playlist(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    matches!(u.scheme(), "http" | "https") && u.path().to_ascii_lowercase().ends_with(".m3u8")
}

/// HLS playlists get `souphttpsrc ! hlsdemux` built here rather than by
/// urisourcebin: in GStreamer 1.22 urisourcebin only takes the newer
/// `hlsdemux2`, which aborts the whole process on an internal assertion
/// when a live playlist update meets a segment download that failed (a
/// provider's segments answering 404 for a while is enough).
fn add_hls_generation(
    pipeline: &gst::Pipeline,
    shared: &Arc<Shared>,
    plan: &SourcePlan,
    uri: &str,
    gen: u64,
) -> Result<(), MediaError> {
    let src = make("souphttpsrc")?;
    src.set_property("name", element_name(shared, gen, "source"));
    src.set_property("location", uri);
    configure_network_source(&src, &plan.headers);
    let demux = make("hlsdemux")?;
    demux.set_property("name", element_name(shared, gen, "hls"));
    if plan.connection_speed_kbps > 0 {
        demux.set_property_from_str("connection-speed", &plan.connection_speed_kbps.to_string());
    }
    let weak_pipeline = pipeline.downgrade();
    let sh = shared.clone();
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else {
            return;
        };
        if sh.generation.load(Ordering::Acquire) != gen {
            return;
        }
        if let Err(e) = attach_parsebin(&pipeline, pad, &sh, gen) {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", e));
        }
    });
    let sh = shared.clone();
    demux.connect_no_more_pads(move |_| {
        if sh.generation.load(Ordering::Acquire) == gen {
            sh.source_done.store(true, Ordering::Release);
        }
        sh.notify.notify_waiters();
    });
    pipeline.add_many([&src, &demux])?;
    shared.remember(gen, &src);
    shared.remember(gen, &demux);
    src.link(&demux)?;
    demux.sync_state_with_parent()?;
    src.sync_state_with_parent()?;
    Ok(())
}

/// Headers and timeouts for HTTP sources (souphttpsrc and friends).
fn configure_network_source(el: &gst::Element, headers: &BTreeMap<String, String>) {
    if el.has_property("timeout") && el.property_type("timeout") == Some(u32::static_type()) {
        el.set_property("timeout", 15u32);
    }
    if headers.is_empty() {
        return;
    }
    if el.has_property("extra-headers") {
        let mut s = gst::Structure::new_empty("extra-headers");
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("user-agent") && el.has_property("user-agent") {
                el.set_property("user-agent", v.as_str());
            } else {
                s.set(k.as_str(), v.as_str());
            }
        }
        el.set_property("extra-headers", s);
    } else if el.has_property("user-agent") {
        if let Some((_, ua)) = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        {
            el.set_property("user-agent", ua.as_str());
        }
    }
}

/// Links one urisourcebin pad into a fresh parsebin whose output pads are
/// held until the output side takes them.
fn attach_parsebin(
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

/// Gives one elementary stream its own queue at once (so a demuxer feeding
/// several streams from one thread never waits on a held stream) and holds
/// the queue's output at its first buffer. Stream-start, caps and segment
/// pass and stay sticky on the unlinked pad, so the caps are known when the
/// output side is chosen.
fn hold_stream(
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
                let end = ts.nseconds() + b.duration().map_or(0, |d| d.nseconds());
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

/// Sets every element of generation `gen` to NULL, unlinks it from the
/// output side and removes it. Must run off the async runtime and off
/// streaming threads.
pub fn remove_generation(pipeline: &gst::Pipeline, shared: &Shared, gen: u64) {
    let elements = shared.take_generation(gen);
    for e in &elements {
        let _ = e.set_state(gst::State::Null);
    }
    for e in &elements {
        if let Some(src) = e.static_pad("src") {
            if let Some(peer) = src.peer() {
                let _ = src.unlink(&peer);
            }
        }
        let _ = pipeline.remove(e);
    }
    shared.pending.lock().retain(|p| p.gen != gen);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_read_from_the_top_level_element() {
        crate::media::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let bin = gst::Bin::builder().name("g12-source3").build();
        let inner = gst::ElementFactory::make("identity")
            .name("source")
            .build()
            .unwrap();
        bin.add(&inner).unwrap();
        pipeline.add(&bin).unwrap();
        let other = gst::ElementFactory::make("identity")
            .name("deinterlace0")
            .build()
            .unwrap();
        pipeline.add(&other).unwrap();
        assert_eq!(generation_of(inner.upcast_ref()), Some(12));
        assert_eq!(generation_of(bin.upcast_ref()), Some(12));
        assert_eq!(generation_of(other.upcast_ref()), None);
        let loose = gst::ElementFactory::make("identity").build().unwrap();
        assert_eq!(generation_of(loose.upcast_ref()), None);
    }

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
    }
}
