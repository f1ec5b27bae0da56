//! The element chains of a channel's pipeline, each a [`Branch`] hung off
//! a `tee` while the pipeline runs, and taken off again without stopping it:
//!
//! ```text
//! source stream -> [identity(sync) for file://] -> tee (elementary stream)
//! decoder:   es tee -> queue -> keyframe gate -> decodebin -> tee (raw)
//! test://:   videotestsrc / audiotestsrc -> tee (raw)
//! transcode: raw tee -> [encoder bin: queue(leaky if live) -> deinterlace
//!            -> videoscale -> videorate -> videoconvert -> capsfilter(box,
//!            fps) -> x264enc | vah264enc | nvh264enc | ...
//!            -> capsfilter(constrained-baseline)] -> tee (encoded)
//!            raw tee -> queue(leaky if live) -> audioconvert -> audioresample
//!            -> capsfilter(48 kHz stereo) -> avenc_aac -> tee (encoded)
//! remux:     es tee -> queue -> tee (encoded)
//! output:    encoded tees -> queue -> [keyframe gate] -> h264parse | aacparse -> [keyframe gate]
//!            -> capsfilter(container's stream format) -> mp4mux | mpegtsmux -> appsink
//! ```
//!
//! Every closure handed to GStreamer holds weak references. A branch is
//! built, linked and brought to the pipeline's state before its tee pad is
//! linked, so data only flows into a complete branch; [`Branch::remove`]
//! releases the tee pad first, so none flows into one being taken down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;

use super::branch::capsfilter;
pub use super::branch::{make, queue, tee, Branch, Encoded};
pub use super::encode::{audio_encode, force_keyframe, replace_video_encoder, video_encode};
pub use super::probes::{add_keyframe_gate, Counters};
use super::probes::{count_output, join_split_access_units};
use super::{Format, MediaError};

/// Fragment length of fMP4 output. mp4mux starts a fragment at each
/// keyframe but hands it on only when it is this long, so it is how long a
/// viewer joining at a new keyframe waits for its first media: short
/// fragments start viewers quickly (the per-fragment overhead, about 100
/// bytes, is small beside the media).
pub const FRAGMENT_DURATION_MS: u32 = 100;
/// Encoded or compressed media a branch may queue before its muxer or
/// decoder takes it.
const BRANCH_QUEUE_NS: u64 = 3_000_000_000;

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
    // The compressed stream goes to every container output as it came
    // (pictures in pieces already joined at the stream head): each output
    // parses it into the container's stream format, as one parser, so a
    // picture is never split into untimed pieces again on its way.
    let q = queue(BRANCH_QUEUE_NS, live)?;
    let out = tee()?;
    p.add_many([&q, &out])?;
    q.link(&out)?;
    if video {
        count_output(&q.static_pad("src").expect("queue src pad"), counters);
    }
    let branch = Branch::attach(p, es, vec![q.clone(), out.clone()], &q)?;
    Ok(Encoded {
        branch,
        out,
        encoder: None,
        tail: None,
        bin: None,
        candidate: None,
        memory: None,
    })
}

/// Counts what an audio-only rendition produces (its audio is its clock).
pub fn count_audio(encoded: &Encoded, counters: &Arc<Counters>) {
    if let Some(pad) = encoded.out.static_pad("sink") {
        count_output(&pad, counters);
    }
}

/// Told that the video reaching a muxer changed configuration (a new
/// encoder's parameter sets): the number of video keyframes that reached
/// it before, and the new `codec_data`. On a streaming thread, before the
/// first buffer of the new configuration reaches the muxer.
pub type ConfigFn = Box<dyn Fn(u64, bytes::Bytes) + Send + Sync>;

/// One container output of a rendition: its encoded streams, each through
/// a queue, a parser and the container's stream format, into a muxer and
/// an appsink whose every buffer goes to `on_data` on the streaming thread
/// (which must not block), and whose end goes to `on_eos`. The parser puts
/// SPS and PPS in front of every IDR picture, so a decoder that reads them
/// in-band follows an encoder change; `on_config` is told of the change for
/// a decoder that reads them from the header (fMP4's `avcC`).
pub fn output(
    p: &gst::Pipeline,
    video: Option<&gst::Element>,
    audio: Option<&gst::Element>,
    format: Format,
    on_data: impl Fn(&[u8]) + Send + Sync + 'static,
    on_eos: impl Fn() + Send + Sync + 'static,
    on_config: ConfigFn,
) -> Result<Branch, MediaError> {
    let mux = match format {
        // HLS segments are cut from fMP4.
        Format::Mp4 | Format::Hls => {
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
    let on_config = Arc::new(on_config);
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
            parse.set_property("config-interval", -1i32);
            h264_output_caps(format, None)
        } else {
            aac_output_caps(format)
        };
        let filter = capsfilter(caps)?;
        p.add_many([&q, &parse, &filter])?;
        gst::Element::link_many([&q, &parse, &filter])?;
        filter.link(&mux)?;
        if is_video {
            // An output added to a running rendition starts at a keyframe
            // as its source flagged it (a parser that joins mid-stream has
            // no parameter sets yet and cannot tell), and again as its own
            // parser flags it.
            add_keyframe_gate(&q.static_pad("src").expect("queue src pad"));
            add_keyframe_gate(&parse.static_pad("src").expect("parser src pad"));
            let pad = filter.static_pad("src").expect("filter src pad");
            watch_config(&pad, on_config.clone());
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

/// Counts the video keyframes entering a muxer at `pad` and tells
/// `on_config` of each `codec_data` that differs from the one before.
fn watch_config(pad: &gst::Pad, on_config: Arc<ConfigFn>) {
    let keyframes = AtomicU64::new(0);
    let last: Mutex<Option<gst::Buffer>> = Mutex::new(None);
    pad.add_probe(
        gst::PadProbeType::BUFFER
            | gst::PadProbeType::BUFFER_LIST
            | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let key = |b: &gst::BufferRef| !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) if key(b) => {
                    keyframes.fetch_add(1, Ordering::Relaxed);
                }
                Some(gst::PadProbeData::BufferList(l)) => {
                    let n = l.iter().filter(|b| key(b)).count() as u64;
                    keyframes.fetch_add(n, Ordering::Relaxed);
                }
                Some(gst::PadProbeData::Event(e)) => {
                    let gst::EventView::Caps(c) = e.view() else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let Some(data) = c
                        .caps()
                        .structure(0)
                        .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
                    else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let mut last = last.lock();
                    let changed = last.as_ref().is_some_and(|old| {
                        old.map_readable().ok().map(|m| m.to_vec())
                            != data.map_readable().ok().map(|m| m.to_vec())
                    });
                    if changed {
                        if let Ok(map) = data.map_readable() {
                            let bytes = bytes::Bytes::copy_from_slice(map.as_slice());
                            on_config(keyframes.load(Ordering::Relaxed), bytes);
                        }
                    }
                    *last = Some(data);
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
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

#[cfg(test)]
mod tests;
