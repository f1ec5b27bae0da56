//! The element chains of a channel's pipeline, each a [`Branch`] hung off
//! a `tee` while the pipeline runs, and taken off again without stopping it:
//!
//! ```text
//! source stream -> [identity(sync) for file://] -> tee (elementary stream)
//! decoder:   es tee -> queue -> keyframe gate -> decodebin -> tee (raw)
//! test://:   videotestsrc / audiotestsrc -> tee (raw)
//! transcode: raw tee -> queue(leaky if live) -> deinterlace -> videoscale
//!            -> videorate -> videoconvert -> capsfilter(box, fps) -> x264enc
//!            -> capsfilter(constrained-baseline) -> tee (encoded)
//!            raw tee -> queue(leaky if live) -> audioconvert -> audioresample
//!            -> capsfilter(48 kHz stereo) -> avenc_aac -> tee (encoded)
//! remux:     es tee -> queue -> keyframe gate -> h264parse | aacparse -> tee (encoded)
//! output:    encoded tees -> queue -> [keyframe gate] -> h264parse | aacparse
//!            -> capsfilter(container's stream format) -> mp4mux | mpegtsmux -> appsink
//! ```
//!
//! Every closure handed to GStreamer holds weak references. A branch is
//! built, linked and brought to the pipeline's state before its tee pad is
//! linked, so data only flows into a complete branch; [`Branch::remove`]
//! releases the tee pad first, so none flows into one being taken down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;

use super::{Format, MediaError};
use crate::profiles::{Profile, AUDIO_CHANNELS, AUDIO_RATE};

/// Fragment length of fMP4 output: short fragments get the first frame to
/// the client quickly.
pub const FRAGMENT_DURATION_MS: u32 = 250;
/// Live sources: at most this much raw audio waits for the encoder before
/// buffers are dropped rather than the source stalling.
const LEAKY_QUEUE_NS: u64 = 1_000_000_000;
/// The same for raw video, kept short: a queued frame is a whole picture
/// at the output size (3 MB at 1080p), and a source that bursts ahead of
/// the encoder (an HLS client catching up at the live edge) would otherwise
/// park a second of them per rendition. A few frames decouple the
/// decoder's and the encoder's threads; a non-live source simply waits.
const VIDEO_ENCODER_QUEUE_NS: u64 = 300_000_000;
/// Encoded or compressed media a branch may queue before its muxer or
/// decoder takes it.
const BRANCH_QUEUE_NS: u64 = 3_000_000_000;

/// Frames and media time a rendition has produced, counted on its encoded
/// video (or audio, when there is no video).
#[derive(Debug)]
pub struct Counters {
    pub frames: AtomicU64,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            frames: AtomicU64::new(0),
            first_pts: AtomicU64::new(u64::MAX),
            last_pts: AtomicU64::new(0),
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

/// Elements hung off one or more tees of a running pipeline.
pub struct Branch {
    links: Vec<(gst::Element, gst::Pad)>,
    elements: Vec<gst::Element>,
}

impl Branch {
    /// Brings `elements` (already in `p` and linked among themselves) to the
    /// pipeline's state, then links a new src pad of `tee` to `head`'s sink.
    pub fn attach(
        p: &gst::Pipeline,
        tee: &gst::Element,
        elements: Vec<gst::Element>,
        head: &gst::Element,
    ) -> Result<Branch, MediaError> {
        let mut branch = Branch {
            links: Vec::new(),
            elements,
        };
        let started = branch
            .elements
            .iter()
            .rev()
            .try_for_each(|e| e.sync_state_with_parent().map_err(MediaError::from))
            .and_then(|()| branch.link(tee, head));
        match started {
            Ok(()) => Ok(branch),
            Err(e) => {
                branch.remove(p);
                Err(e)
            }
        }
    }

    /// Links one more tee into this branch's `head`.
    pub fn link(&mut self, tee: &gst::Element, head: &gst::Element) -> Result<(), MediaError> {
        let src = tee
            .request_pad_simple("src_%u")
            .ok_or_else(|| MediaError::SourceFailed("tee refused a new output".into()))?;
        let sink = head.static_pad("sink").expect("branch head sink pad");
        let linked = src.link(&sink);
        self.links.push((tee.clone(), src));
        linked
            .map(drop)
            .map_err(|e| MediaError::SourceFailed(format!("cannot link a branch: {e:?}")))
    }

    /// The branch's elements, in the order they were built.
    pub fn elements(&self) -> &[gst::Element] {
        &self.elements
    }

    /// Unlinks the branch from its tees and takes its elements to NULL and
    /// out of the pipeline. Must run off the async runtime.
    pub fn remove(self, p: &gst::Pipeline) {
        for (tee, pad) in self.links {
            tee.release_request_pad(&pad);
        }
        for e in &self.elements {
            if e.set_state(gst::State::Null).is_err() {
                tracing::warn!(element = %e.name(), "a branch element did not reach NULL cleanly");
            }
        }
        for e in &self.elements {
            let _ = p.remove(e);
        }
    }
}

/// A rendition's encoded elementary stream: the branch that makes it and
/// the tee its container outputs read from.
pub struct Encoded {
    pub branch: Branch,
    pub out: gst::Element,
    /// The video encoder, asked for keyframes when a viewer joins live.
    pub encoder: Option<gst::glib::WeakRef<gst::Element>>,
}

pub fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        MediaError::SourceFailed(format!("GStreamer element '{factory}' is not installed"))
    })
}

pub fn queue(max_time_ns: u64, leaky: bool) -> Result<gst::Element, MediaError> {
    let q = make("queue")?;
    q.set_property("max-size-buffers", 0u32);
    q.set_property("max-size-bytes", 0u32);
    q.set_property("max-size-time", max_time_ns);
    if leaky {
        q.set_property_from_str("leaky", "downstream");
    }
    Ok(q)
}

/// A tee that drops what no branch takes (a channel's tees exist before
/// and between their branches).
pub fn tee() -> Result<gst::Element, MediaError> {
    let t = make("tee")?;
    t.set_property("allow-not-linked", true);
    Ok(t)
}

fn capsfilter(caps: gst::Caps) -> Result<gst::Element, MediaError> {
    let f = make("capsfilter")?;
    f.set_property("caps", caps);
    Ok(f)
}

/// The head of one elementary stream of a channel: an `identity` that
/// plays a file in real time as a live channel would (when `paced`), then
/// the tee every user of the stream hangs off. Returns (first element, tee).
pub fn stream_head(
    p: &gst::Pipeline,
    video: bool,
    h264: bool,
    paced: bool,
) -> Result<(gst::Element, gst::Element), MediaError> {
    let t = tee()?;
    p.add(&t)?;
    let first = if paced {
        let pace = make("identity")?;
        pace.set_property("sync", true);
        pace.set_property("silent", true);
        p.add(&pace)?;
        pace.link(&t)?;
        pace.sync_state_with_parent()?;
        pace
    } else {
        t.clone()
    };
    t.sync_state_with_parent()?;
    if video && h264 {
        join_split_access_units(&first.static_pad("sink").expect("head sink pad"));
    }
    Ok((first, t))
}

/// A decoder for the compressed stream on `es`, feeding a new raw tee.
/// Returns the branch and the raw tee (part of the branch).
pub fn decoder(
    p: &gst::Pipeline,
    es: &gst::Element,
    video: bool,
    caps: Option<&gst::CapsRef>,
) -> Result<(Branch, gst::Element), MediaError> {
    let q = queue(BRANCH_QUEUE_NS, false)?;
    let dec = make("decodebin")?;
    let raw = tee()?;
    if video {
        add_keyframe_gate(&q.static_pad("src").expect("queue src pad"));
        let threads = decoder_threads(caps);
        let bin = dec.downcast_ref::<gst::Bin>().expect("decodebin is a bin");
        bin.connect_deep_element_added(move |_, _, el| {
            if el.has_property("max-threads") {
                el.set_property_from_str("max-threads", &threads.to_string());
            }
        });
    }
    p.add_many([&q, &dec, &raw])?;
    q.link(&dec)?;
    let weak_raw = raw.downgrade();
    dec.connect_pad_added(move |dec, pad| {
        let Some(raw) = weak_raw.upgrade() else {
            return;
        };
        let sink = raw.static_pad("sink").expect("tee sink pad");
        if sink.is_linked() {
            return;
        }
        if let Err(e) = pad.link(&sink) {
            gst::element_error!(
                dec,
                gst::CoreError::Negotiation,
                ("cannot link decoder output: {:?}", e)
            );
        }
    });
    let branch = Branch::attach(p, es, vec![q.clone(), dec, raw.clone()], &q)?;
    Ok((branch, raw))
}

/// Compressed H.264 or AAC from `es`, carried without re-encoding into a
/// new tee; video starts at a keyframe.
pub fn remux(
    p: &gst::Pipeline,
    es: &gst::Element,
    video: bool,
    live: bool,
    counters: &Arc<Counters>,
) -> Result<Encoded, MediaError> {
    let q = queue(BRANCH_QUEUE_NS, live)?;
    let parse = make(if video { "h264parse" } else { "aacparse" })?;
    let out = tee()?;
    p.add_many([&q, &parse, &out])?;
    gst::Element::link_many([&q, &parse, &out])?;
    if video {
        add_keyframe_gate(&q.static_pad("src").expect("queue src pad"));
        count_output(&parse.static_pad("src").expect("src pad"), counters);
    }
    let branch = Branch::attach(p, es, vec![q.clone(), parse, out.clone()], &q)?;
    Ok(Encoded {
        branch,
        out,
        encoder: None,
    })
}

/// Counts what an audio-only rendition produces (its audio is its clock).
pub fn count_audio(encoded: &Encoded, counters: &Arc<Counters>) {
    if let Some(pad) = encoded.out.static_pad("sink") {
        count_output(&pad, counters);
    }
}

/// One container output of a rendition: its encoded streams, each through
/// a queue, a parser and the container's stream format, into a muxer and
/// an appsink whose every buffer goes to `on_data` on the streaming thread
/// (which must not block), and whose end goes to `on_eos`.
pub fn output(
    p: &gst::Pipeline,
    video: Option<&gst::Element>,
    audio: Option<&gst::Element>,
    format: Format,
    on_data: impl Fn(&[u8]) + Send + Sync + 'static,
    on_eos: impl Fn() + Send + Sync + 'static,
) -> Result<Branch, MediaError> {
    let mux = match format {
        Format::Mp4 => {
            let m = make("mp4mux")?;
            m.set_property("fragment-duration", FRAGMENT_DURATION_MS);
            m.set_property("streamable", true);
            m
        }
        Format::Ts => {
            let m = make("mpegtsmux")?;
            m.set_property("alignment", 7i32);
            m
        }
    };
    let appsink = gst_app::AppSink::builder()
        .sync(false)
        .async_(false)
        .enable_last_sample(false)
        .max_buffers(64)
        .drop(false)
        .build();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(list) = sample.buffer_list() {
                    for b in list.iter() {
                        if let Ok(map) = b.map_readable() {
                            on_data(map.as_slice());
                        }
                    }
                } else if let Some(b) = sample.buffer() {
                    if let Ok(map) = b.map_readable() {
                        on_data(map.as_slice());
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |_| on_eos())
            .build(),
    );
    let sink: gst::Element = appsink.upcast();
    p.add_many([&mux, &sink])?;
    mux.link(&sink)?;
    let mut elements = vec![mux.clone(), sink];
    // The first stream linked is mpegtsmux's PCR stream, whose first
    // packet carries the PAT/PMT: video first, so its keyframe follows them.
    let mut parts = Vec::new();
    for (tee, is_video) in [(video, true), (audio, false)] {
        let Some(tee) = tee else { continue };
        let q = queue(BRANCH_QUEUE_NS, false)?;
        let parse = make(if is_video { "h264parse" } else { "aacparse" })?;
        let caps = if is_video {
            if format == Format::Ts {
                parse.set_property("config-interval", -1i32);
            }
            h264_output_caps(format, None)
        } else {
            aac_output_caps(format)
        };
        let filter = capsfilter(caps)?;
        p.add_many([&q, &parse, &filter])?;
        gst::Element::link_many([&q, &parse, &filter])?;
        filter.link(&mux)?;
        if is_video {
            add_keyframe_gate(&q.static_pad("src").expect("queue src pad"));
        }
        elements.extend([q.clone(), parse, filter]);
        parts.push((tee.clone(), q));
    }
    let mut parts = parts.into_iter();
    let Some((tee, head)) = parts.next() else {
        for e in &elements {
            let _ = p.remove(e);
        }
        return Err(MediaError::SourceFailed(
            "a rendition with no streams".into(),
        ));
    };
    let mut branch = Branch::attach(p, &tee, elements, &head)?;
    for (tee, head) in parts {
        if let Err(e) = branch.link(&tee, &head) {
            branch.remove(p);
            return Err(e);
        }
    }
    Ok(branch)
}

/// Asks `encoder` for a keyframe as soon as it can make one.
pub fn force_keyframe(encoder: &gst::Element) {
    let event = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    if !encoder.send_event(event) {
        tracing::debug!(encoder = %encoder.name(), "the encoder took no keyframe request");
    }
}

/// Live test sources (`videotestsrc`, `audiotestsrc`) feeding the raw tees.
pub fn test_sources(
    p: &gst::Pipeline,
    t: &super::source::TestSource,
) -> Result<[Option<gst::Element>; 2], MediaError> {
    use super::source::TestAudio;
    let vsrc = make("videotestsrc")?;
    vsrc.set_property("is-live", true);
    vsrc.set_property_from_str("pattern", &t.pattern);
    let mut caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", t.width as i32)
        .field("height", t.height as i32)
        .field("framerate", gst::Fraction::new(t.rate.0, t.rate.1))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    if t.interlaced {
        caps = caps.field("interlace-mode", "interleaved");
    }
    let vcaps = capsfilter(caps.build())?;
    let vtee = tee()?;
    p.add_many([&vsrc, &vcaps, &vtee])?;
    gst::Element::link_many([&vsrc, &vcaps, &vtee])?;
    let mut audio = None;
    if t.audio != TestAudio::None {
        let asrc = make("audiotestsrc")?;
        asrc.set_property("is-live", true);
        asrc.set_property_from_str(
            "wave",
            if t.audio == TestAudio::Tone {
                "sine"
            } else {
                "silence"
            },
        );
        asrc.set_property("freq", t.freq);
        asrc.set_property("volume", 0.3f64);
        asrc.set_property("samplesperbuffer", 1024i32);
        let atee = tee()?;
        p.add_many([&asrc, &atee])?;
        asrc.link(&atee)?;
        audio = Some(atee);
    }
    Ok([Some(vtee), audio])
}

/// Source pixel rate up to which one decoder thread is used: 1080p30.
const SINGLE_THREAD_DECODE_PIXELS_PER_S: f64 = 1920.0 * 1088.0 * 30.0;

/// Worker threads for a video decoder of `caps` (0 = the decoder's own
/// choice, one per core). libav's frame threading keeps a set of pictures
/// in flight per thread, about 25 MB more per 1080p session, and delays
/// each picture by a frame per thread; one thread decodes 1080p30 H.264 at
/// several times real time. Faster or larger streams (1080p60, 4K), and
/// streams that do not state their size and rate, keep the default.
fn decoder_threads(caps: Option<&gst::CapsRef>) -> u32 {
    let Some(s) = caps.and_then(|c| c.structure(0)) else {
        return 0;
    };
    let (w, h) = (
        s.get::<i32>("width").unwrap_or(0),
        s.get::<i32>("height").unwrap_or(0),
    );
    let fps = s
        .get::<gst::Fraction>("framerate")
        .ok()
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or(0.0, |f| f.numer() as f64 / f.denom() as f64);
    let rate = w.max(0) as f64 * h.max(0) as f64 * fps;
    if rate > 0.0 && rate <= SINGLE_THREAD_DECODE_PIXELS_PER_S {
        1
    } else {
        0
    }
}

fn h264_output_caps(format: Format, profile: Option<&str>) -> gst::Caps {
    let mut b = gst::Caps::builder("video/x-h264")
        .field(
            "stream-format",
            if format == Format::Ts {
                "byte-stream"
            } else {
                "avc"
            },
        )
        .field("alignment", "au");
    if let Some(p) = profile {
        b = b.field("profile", p);
    }
    b.build()
}

fn aac_output_caps(format: Format) -> gst::Caps {
    gst::Caps::builder("audio/mpeg")
        .field("mpegversion", 4i32)
        .field(
            "stream-format",
            if format == Format::Ts { "adts" } else { "raw" },
        )
        .build()
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
fn join_split_access_units(pad: &gst::Pad) {
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

/// Counts frames and media time on encoded media.
fn count_output(pad: &gst::Pad, counters: &Arc<Counters>) {
    let c = Arc::downgrade(counters);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let (Some(c), Some(b)) = (c.upgrade(), info.buffer()) {
            c.note(b.pts());
        }
        gst::PadProbeReturn::Ok
    });
}

/// Raw video from `raw` -> profile-sized constrained-baseline H.264 into a
/// new tee. The queue at its head is leaky for live sources, so an encoder
/// that falls behind drops its own frames instead of holding up the
/// decoder and every other rendition.
pub fn video_encode(
    p: &gst::Pipeline,
    raw: &gst::Element,
    profile: &Profile,
    live: bool,
    counters: &Arc<Counters>,
) -> Result<Encoded, MediaError> {
    let head = queue(VIDEO_ENCODER_QUEUE_NS, live)?;
    let deint = make("deinterlace")?;
    let scale = make("videoscale")?;
    let rate = make("videorate")?;
    rate.set_property("drop-only", true);
    let convert = make("videoconvert")?;
    let size = capsfilter(
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    )?;
    let enc = make("x264enc")?;
    enc.set_property("bitrate", profile.video_bitrate);
    enc.set_property_from_str("speed-preset", &profile.preset);
    enc.set_property_from_str("tune", "zerolatency");
    enc.set_property("vbv-buf-capacity", profile.vbv_buffer_ms);
    enc.set_property("bframes", 0u32);
    enc.set_property(
        "key-int-max",
        profile.keyframe_interval(profile.max_framerate as i32, 1),
    );
    enc.set_property(
        "option-string",
        format!("level={}:scenecut=0", profile.level),
    );
    let enc_caps = capsfilter(
        gst::Caps::builder("video/x-h264")
            .field("profile", "constrained-baseline")
            .build(),
    )?;
    let out = tee()?;
    let chain = [
        &head, &deint, &scale, &rate, &convert, &size, &enc, &enc_caps, &out,
    ];
    p.add_many(chain)?;
    gst::Element::link_many(chain)?;
    count_output(&enc_caps.static_pad("src").expect("src pad"), counters);

    // Fix the output geometry from the first caps the chain sees; later
    // changes are letterboxed by videoscale into the same size.
    let weak_size = size.downgrade();
    let weak_enc = enc.downgrade();
    let profile = profile.clone();
    let fixed = AtomicBool::new(false);
    deint
        .static_pad("sink")
        .expect("deinterlace sink pad")
        .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            let Some(gst::EventView::Caps(ev)) = info.event().map(|e| e.view()) else {
                return gst::PadProbeReturn::Ok;
            };
            if fixed.swap(true, Ordering::Relaxed) {
                return gst::PadProbeReturn::Ok;
            }
            let Some(s) = ev.caps().structure(0) else {
                return gst::PadProbeReturn::Ok;
            };
            let w = s.get::<i32>("width").unwrap_or(0).max(0) as u32;
            let h = s.get::<i32>("height").unwrap_or(0).max(0) as u32;
            let par = s
                .get::<gst::Fraction>("pixel-aspect-ratio")
                .map(|f| (f.numer(), f.denom()))
                .unwrap_or((1, 1));
            let fr = s
                .get::<gst::Fraction>("framerate")
                .map(|f| (f.numer(), f.denom()))
                .unwrap_or((0, 1));
            let (ow, oh) = profile.output_size(w, h, par);
            let (fn_, fd) = profile.output_framerate(fr.0, fr.1);
            if let Some(size) = weak_size.upgrade() {
                let mut caps = gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", ow as i32)
                    .field("height", oh as i32)
                    .field("framerate", gst::Fraction::new(fn_, fd))
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
                // Keep the source's colours. Left open, the output size's
                // default would be chosen (BT.601 below 720 lines, BT.709
                // above), and scaling 1080p to 480p would then convert every
                // pixel's colour matrix on the slow generic path as well.
                // (RGB sources are converted as before: their colorimetry
                // names no YUV matrix.)
                if let Some(info) = gst_video::VideoInfo::from_caps(ev.caps())
                    .ok()
                    .filter(|i| i.format_info().is_yuv())
                {
                    caps = caps
                        .field("colorimetry", info.colorimetry().to_string())
                        .field("chroma-site", info.chroma_site().to_string());
                }
                size.set_property("caps", caps.build());
            }
            if let Some(enc) = weak_enc.upgrade() {
                enc.set_property("key-int-max", profile.keyframe_interval(fn_, fd));
            }
            gst::PadProbeReturn::Ok
        });
    let elements: Vec<gst::Element> = chain.iter().map(|e| (*e).clone()).collect();
    let branch = Branch::attach(p, raw, elements, &head)?;
    Ok(Encoded {
        branch,
        out,
        encoder: Some(enc.downgrade()),
    })
}

/// Raw audio from `raw` -> AAC-LC 48 kHz stereo into a new tee.
pub fn audio_encode(
    p: &gst::Pipeline,
    raw: &gst::Element,
    profile: &Profile,
    live: bool,
) -> Result<Encoded, MediaError> {
    let head = queue(LEAKY_QUEUE_NS, live)?;
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let caps = capsfilter(
        gst::Caps::builder("audio/x-raw")
            .field("rate", AUDIO_RATE as i32)
            .field("channels", AUDIO_CHANNELS as i32)
            .build(),
    )?;
    let enc = make("avenc_aac")?;
    enc.set_property("bitrate", (profile.audio_bitrate as i32) * 1000);
    let out = tee()?;
    let chain = [&head, &convert, &resample, &caps, &enc, &out];
    p.add_many(chain)?;
    gst::Element::link_many(chain)?;
    let elements: Vec<gst::Element> = chain.iter().map(|e| (*e).clone()).collect();
    let branch = Branch::attach(p, raw, elements, &head)?;
    Ok(Encoded {
        branch,
        out,
        encoder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h264(w: i32, h: i32, fps: Option<(i32, i32)>) -> gst::Caps {
        let mut b = gst::Caps::builder("video/x-h264")
            .field("width", w)
            .field("height", h);
        if let Some((n, d)) = fps {
            b = b.field("framerate", gst::Fraction::new(n, d));
        }
        b.build()
    }

    #[test]
    fn one_decoder_thread_up_to_1080p30() {
        gst::init().unwrap();
        let threads = |c: gst::Caps| decoder_threads(Some(c.as_ref()));
        assert_eq!(threads(h264(1920, 1080, Some((30, 1)))), 1);
        assert_eq!(threads(h264(1920, 1080, Some((30000, 1001)))), 1);
        assert_eq!(threads(h264(1280, 720, Some((50, 1)))), 1);
        assert_eq!(threads(h264(1920, 1080, Some((50, 1)))), 0);
        assert_eq!(threads(h264(3840, 2160, Some((25, 1)))), 0);
        // Nothing stated: the decoder chooses.
        assert_eq!(threads(h264(1920, 1080, None)), 0);
        assert_eq!(threads(h264(1920, 1080, Some((0, 1)))), 0);
        assert_eq!(decoder_threads(None), 0);
    }
}
