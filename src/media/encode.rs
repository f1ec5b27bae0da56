//! The encoders of a transcode rendition: raw video to profile-sized
//! constrained-baseline H.264 by one of the encoder candidates (see
//! [`crate::encoders`]), raw audio to AAC-LC, each into a tee its
//! container outputs read from; and replacing a failed video encoder
//! while the tee and its outputs keep running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gst::prelude::*;

use super::branch::{capsfilter, make, queue, tee, Branch, Encoded};
use super::probes::{count_busy, count_output, Counters};
use super::MediaError;
use crate::encoders::bin::EncoderBin;
use crate::encoders::memory::{self, MemoryPath};
use crate::encoders::{props, Candidate};
use crate::profiles::{Profile, AUDIO_CHANNELS, AUDIO_RATE};

/// Live sources: at most this much raw audio waits for the encoder before
/// buffers are dropped rather than the source stalling.
const LEAKY_QUEUE_NS: u64 = 1_000_000_000;
/// The same for raw video, kept short: a queued frame is a whole picture
/// at the output size (3 MB at 1080p), and a source that bursts ahead of
/// the encoder (an HLS client catching up at the live edge) would otherwise
/// park a second of them per rendition. A few frames decouple the
/// decoder's and the encoder's threads; a non-live source simply waits.
const VIDEO_ENCODER_QUEUE_NS: u64 = 300_000_000;
/// Raw video from `raw` (decoded by `decoder`, its factory name when
/// known) -> profile-sized constrained-baseline H.264 into a new tee, made
/// by `candidate`; the pictures stay in GPU memory where the pair allows
/// it (see [`memory`]). The queue at its head is leaky for live
/// sources, so an encoder that falls behind drops its own frames instead
/// of holding up the decoder and every other rendition. Everything before
/// the tee lives in one [`EncoderBin`], which [`replace_video_encoder`]
/// can swap for another encoder's while the tee and its outputs stay.
pub fn video_encode(
    p: &gst::Pipeline,
    raw: &gst::Element,
    decoder: Option<&str>,
    profile: &Profile,
    live: bool,
    counters: &Arc<Counters>,
    candidate: &Candidate,
) -> Result<Encoded, MediaError> {
    let out = tee()?;
    p.add(&out)?;
    let tail = Branch::standalone(p, vec![out.clone()])?;
    count_output(&out.static_pad("sink").expect("tee sink pad"), counters);
    let path = memory_path(decoder, candidate);
    match encoder_branch(p, raw, &path, profile, live, counters, candidate, &out) {
        Ok((branch, bin, enc)) => Ok(Encoded {
            branch,
            out,
            encoder: Some(enc.downgrade()),
            tail: Some(tail),
            bin: Some(bin),
            candidate: Some(candidate.clone()),
            memory: Some(path),
        }),
        Err(e) => {
            tail.remove(p);
            Err(e)
        }
    }
}

/// Replaces `encoded`'s encoder branch by one made by `candidate`, feeding
/// the same tee (off the async runtime). The old branch is unlinked from
/// `raw` and taken to NULL first; the new one starts at a keyframe.
#[allow(clippy::too_many_arguments)]
pub fn replace_video_encoder(
    p: &gst::Pipeline,
    encoded: &mut Encoded,
    raw: &gst::Element,
    decoder: Option<&str>,
    profile: &Profile,
    live: bool,
    counters: &Arc<Counters>,
    candidate: &Candidate,
) -> Result<(), MediaError> {
    // The tee takes one input: the old branch comes off first.
    let old = std::mem::replace(&mut encoded.branch, Branch::empty());
    old.remove(p);
    encoded.bin = None;
    encoded.encoder = None;
    let path = memory_path(decoder, candidate);
    let (branch, bin, enc) = encoder_branch(
        p,
        raw,
        &path,
        profile,
        live,
        counters,
        candidate,
        &encoded.out,
    )?;
    encoded.branch = branch;
    encoded.bin = Some(bin);
    encoded.encoder = Some(enc.downgrade());
    encoded.candidate = Some(candidate.clone());
    encoded.memory = Some(path);
    Ok(())
}

/// The memory path for this pair, with the filters installed here.
fn memory_path(decoder: Option<&str>, candidate: &Candidate) -> MemoryPath {
    memory::plan(decoder, candidate, |f| {
        gst::ElementFactory::find(f).is_some()
    })
}

/// The encoder branch: `raw` -> queue -> the path's filters (deinterlace,
/// drop to the frame rate, scale and convert) -> capsfilter(size, fps,
/// format, memory) -> encoder -> capsfilter(constrained-baseline), in an
/// [`EncoderBin`] whose output is linked to `out`. Returns the branch, its
/// bin and the encoder.
#[allow(clippy::too_many_arguments)]
fn encoder_branch(
    p: &gst::Pipeline,
    raw: &gst::Element,
    path: &MemoryPath,
    profile: &Profile,
    live: bool,
    counters: &Arc<Counters>,
    candidate: &Candidate,
    out: &gst::Element,
) -> Result<(Branch, EncoderBin, gst::Element), MediaError> {
    let head = queue(VIDEO_ENCODER_QUEUE_NS, live)?;
    let filters = path
        .filters
        .iter()
        .map(|f| make(f))
        .collect::<Result<Vec<_>, _>>()?;
    for f in &filters {
        if f.factory().is_some_and(|fa| fa.name() == "videorate") {
            f.set_property("drop-only", true);
        }
    }
    let first = filters.first().expect("a path has filters").clone();
    let format = candidate.input_format;
    let feature = path.feature;
    let size = capsfilter(raw_caps(
        gst::Caps::builder("video/x-raw")
            .field("format", format)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1)),
        feature,
    ))?;
    let enc = candidate.make().map_err(MediaError::SourceFailed)?;
    props::apply(
        &enc,
        &candidate.element,
        profile,
        profile.max_framerate as i32,
        1,
    );
    let enc_caps = capsfilter(
        gst::Caps::builder("video/x-h264")
            .field("profile", "constrained-baseline")
            .build(),
    )?;
    let mut chain = vec![head.clone()];
    chain.extend(filters);
    chain.extend([size.clone(), enc.clone(), enc_caps.clone()]);
    count_busy(
        &head.static_pad("src").expect("queue src pad"),
        &enc_caps.static_pad("src").expect("src pad"),
        counters,
    );
    let bin = EncoderBin::wrap(&chain)?;
    let bin_el: gst::Element = bin.clone().upcast();
    p.add(&bin_el)?;
    if let Err(e) = bin_el.link(out) {
        let _ = p.remove(&bin_el);
        return Err(e.into());
    }

    // Fix the output geometry from the first caps the chain sees; later
    // changes are letterboxed by videoscale into the same size.
    let weak_size = size.downgrade();
    let weak_enc = enc.downgrade();
    let profile = profile.clone();
    let factory = candidate.element.clone();
    let fixed = AtomicBool::new(false);
    let weak_counters = Arc::downgrade(counters);
    first
        .static_pad("sink")
        .expect("filter sink pad")
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
            if let Some(c) = weak_counters.upgrade() {
                c.set_source_pixels(u64::from(w) * u64::from(h));
                if fd > 0 {
                    c.set_frame_rate(f64::from(fn_) / f64::from(fd));
                }
            }
            if let Some(size) = weak_size.upgrade() {
                let mut caps = gst::Caps::builder("video/x-raw")
                    .field("format", format)
                    .field("width", ow as i32)
                    .field("height", oh as i32)
                    .field("framerate", gst::Fraction::new(fn_, fd))
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
                // In GPU memory the VA filters choose the colours.
                // Keep the source's colours. Left open, the output size's
                // default would be chosen (BT.601 below 720 lines, BT.709
                // above), and scaling 1080p to 480p would then convert every
                // pixel's colour matrix on the slow generic path as well.
                // (RGB sources are converted as before: their colorimetry
                // names no YUV matrix.)
                if let Some(info) = gst_video::VideoInfo::from_caps(ev.caps())
                    .ok()
                    .filter(|i| i.format_info().is_yuv() && feature.is_none())
                {
                    caps = caps
                        .field("colorimetry", info.colorimetry().to_string())
                        .field("chroma-site", info.chroma_site().to_string());
                }
                size.set_property("caps", raw_caps(caps, feature));
            }
            if let (Some(enc), Some((name, value))) = (
                weak_enc.upgrade(),
                props::keyframe_setting(&factory, &profile, fn_, fd),
            ) {
                if let Err(e) = props::set(&enc, name, &value) {
                    tracing::debug!(property = name, error = %e, "keyframe interval not set");
                }
            }
            gst::PadProbeReturn::Ok
        });
    let target = props::configured(&enc, &candidate.element).unwrap_or(enc);
    let branch = Branch::attach(p, raw, vec![bin_el.clone()], &bin_el)?;
    Ok((branch, bin, target))
}

/// Raw video caps from `builder`, in the memory named by `feature` (None:
/// system memory).
fn raw_caps(builder: gst::caps::Builder<gst::caps::NoFeature>, feature: Option<&str>) -> gst::Caps {
    let mut caps = builder.build();
    if let Some(f) = feature {
        caps.make_mut()
            .set_features(0, Some(gst::CapsFeatures::new([f])));
    }
    caps
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
        tail: None,
        bin: None,
        candidate: None,
        memory: None,
    })
}

/// Asks `encoder` for a keyframe as soon as it can make one: the request
/// is handed to its output pad, as a muxer downstream would send it.
pub fn force_keyframe(encoder: &gst::Element) {
    let event = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    let taken = encoder
        .static_pad("src")
        .is_some_and(|pad| pad.send_event(event));
    if !taken {
        tracing::debug!(encoder = %encoder.name(), "the encoder took no keyframe request");
    }
}

#[cfg(test)]
mod tests;
