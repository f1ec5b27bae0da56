//! The source side of a channel's pipeline, built in two steps so what
//! the channel does can be chosen from what the source really carries:
//!
//! 1. [`open`]: for URIs `urisourcebin -> parsebin` (see [`super::ingest`]),
//!    whose elementary-stream pads are held by blocking probes; `test://`
//!    needs no opening (its streams are known raw video + tone).
//! 2. [`Opened::activate`]: a tee per stream (see [`super::chains`]) with
//!    the held pads linked to it; the first rendition hangs off the tees;
//!    then [`Opened::release`] lets the media flow.
//!
//! Every closure handed to GStreamer holds weak references to elements;
//! source bookkeeping lives in `shared::Shared`, which holds no pipeline
//! objects except pads that [`Opened::release`] lets go.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;

use super::chains;
use super::failure::describe_error;
use super::held::{discard, lengthen_hold};
use super::ingest::{self, SourcePlan};
use super::shared::{is_audio, is_video, stream_index, PendingPad, Shared};
use super::source::{SourceUri, TestAudio};
use super::stats::MediaStats;
use super::{MediaError, SourceStreams, StreamCodec};

/// A pipeline whose source is open (or, for `test://`, ready to be made).
pub struct Opened {
    pub pipeline: gst::Pipeline,
    pub(super) shared: Arc<Shared>,
    source: SourceUri,
    pub(super) plan: Arc<SourcePlan>,
    /// Source pads linked to the heads and still held (see [`Opened::release`]).
    held: Mutex<Vec<PendingPad>>,
}

/// Builds the first source generation (none for `test://`) and starts it.
/// Must run off the async runtime (it changes pipeline state).
pub fn open(name: &str, plan: SourcePlan, stats: Arc<MediaStats>) -> Result<Opened, MediaError> {
    open_in(gst::Pipeline::builder().name(name).build(), plan, stats)
}

/// [`open`] into a given (empty) pipeline. On failure the pipeline is back
/// at NULL: a pipeline left in READY or PAUSED is never freed (its bus
/// keeps the pipeline's own state messages, which reference it, until the
/// bus is flushed at NULL) and would keep its sockets and threads.
fn open_in(
    pipeline: gst::Pipeline,
    plan: SourcePlan,
    stats: Arc<MediaStats>,
) -> Result<Opened, MediaError> {
    let shared = Arc::new(Shared::new(stats));
    if matches!(plan.primary(), SourceUri::Uri { .. }) {
        let started = ingest::add_generation(&pipeline, &shared, &plan, 0, 1).and_then(|()| {
            pipeline
                .set_state(gst::State::Playing)
                .map(drop)
                .map_err(|e| start_error(&pipeline, e))
        });
        if let Err(e) = started {
            if pipeline.set_state(gst::State::Null).is_err() {
                tracing::warn!("a pipeline that failed to start did not reach NULL cleanly");
            }
            return Err(e);
        }
    }
    Ok(Opened {
        pipeline,
        shared,
        source: plan.primary().clone(),
        plan: Arc::new(plan),
        held: Mutex::new(Vec::new()),
    })
}

/// Why `pipeline` failed to start: the error an element posted, which
/// says more than the failed state change (credential-free).
fn start_error(pipeline: &gst::Pipeline, change: gst::StateChangeError) -> MediaError {
    let posted = pipeline
        .bus()
        .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]));
    match posted.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(err)) => {
            MediaError::SourceFailed(describe_error(&err.error(), err.debug().as_deref()))
        }
        _ => MediaError::StateChange(change),
    }
}

/// Describes caps as a short codec id and a human description.
fn codec_of(caps: &gst::CapsRef) -> Option<StreamCodec> {
    caps.structure(0)?;
    let codec = super::probe::codec_name(caps);
    let description = if codec == "raw" {
        "uncompressed".to_string()
    } else {
        gst_pbutils::pb_utils_get_codec_description(caps).to_string()
    };
    Some(StreamCodec { codec, description })
}

impl Opened {
    /// Whether every source pad is known (or the source needs no opening).
    pub fn streams_known(&self) -> bool {
        matches!(self.source, SourceUri::Test(_)) || self.shared.all_pads_known()
    }

    /// Whether every stream found so far is typed: the source announced no
    /// more pads than it exposed, each parsebin has exposed a pad, and each
    /// exposed pad has caps.
    pub fn streams_typed(&self) -> bool {
        let sh = &self.shared;
        matches!(self.source, SourceUri::Test(_))
            || (sh.source_pads_seen.load(Ordering::Acquire)
                >= sh.source_pads_expected.load(Ordering::Acquire)
                && sh.parsers_silent.load(Ordering::Acquire) == 0
                && sh.pending.lock().iter_mut().all(|p| {
                    if p.caps.is_none() {
                        p.caps = p.pad.current_caps();
                    }
                    p.caps.is_some()
                }))
    }

    /// The pad bookkeeping in one line, for debug logs.
    pub fn pad_state(&self) -> String {
        let sh = &self.shared;
        let caps: Vec<String> = sh
            .pending
            .lock()
            .iter()
            .map(|p| {
                p.caps
                    .as_ref()
                    .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
                    .unwrap_or_else(|| "untyped".into())
            })
            .collect();
        format!(
            "gen={} done={} open={} silent={} video_parsers={} video_declared={} seen={} expected={} pads=[{}]",
            sh.generation.load(Ordering::Acquire),
            sh.source_done.load(Ordering::Acquire),
            sh.parsers_open.load(Ordering::Acquire),
            sh.parsers_silent.load(Ordering::Acquire),
            sh.video_parsers.load(Ordering::Acquire),
            sh.video_declared.load(Ordering::Acquire),
            sh.source_pads_seen.load(Ordering::Acquire),
            sh.source_pads_expected.load(Ordering::Acquire),
            caps.join(", ")
        )
    }

    /// Lets every held stream of the current generation, and each one it
    /// holds from now on, queue up to `held::PREDECISION_LONG_QUEUE_NS` (a
    /// queue that is full wakes its writer when its limit grows).
    pub fn lengthen_holds(&self) {
        if self.shared.long_holds.swap(true, Ordering::AcqRel) {
            return;
        }
        for p in self.shared.pending.lock().iter() {
            lengthen_hold(&p.pad);
        }
    }

    /// Whether a parsebin has plugged a parser for a video stream (asked
    /// only of network and file sources: a `test://` one is known at once).
    pub fn video_stream_seen(&self) -> bool {
        self.shared.video_parsers.load(Ordering::Acquire) > 0
            || self.shared.video_declared.load(Ordering::Acquire)
    }

    /// Whether at least one source pad has appeared.
    pub fn any_stream(&self) -> bool {
        matches!(self.source, SourceUri::Test(_))
            || self.shared.pending.lock().iter().any(|p| p.caps.is_some())
    }

    /// The streams found so far: the first video and first audio pad.
    pub fn streams(&self) -> SourceStreams {
        match &self.source {
            SourceUri::Test(t) => SourceStreams {
                video: Some(StreamCodec {
                    codec: "raw".into(),
                    description: "test pattern".into(),
                }),
                audio: (t.audio != TestAudio::None).then(|| StreamCodec {
                    codec: "raw".into(),
                    description: "test tone".into(),
                }),
            },
            SourceUri::Uri { .. } => {
                let pending = self.shared.pending.lock();
                let find = |pred: fn(&gst::CapsRef) -> bool| {
                    pending
                        .iter()
                        .filter_map(|p| p.caps.as_ref())
                        .find(|c| pred(c))
                        .and_then(|c| codec_of(c))
                };
                SourceStreams {
                    video: find(is_video),
                    audio: find(is_audio),
                }
            }
        }
    }

    /// Builds the channel's stream heads: for a URI, a tee per elementary
    /// stream (the first video and first audio; others are discarded) with
    /// the held source pads linked to them but still held; for `test://`,
    /// the live test sources and their raw tees. Nothing flows until
    /// [`Opened::release`]. Must run off the async runtime.
    pub fn activate(&self) -> Result<Heads, MediaError> {
        let p = &self.pipeline;
        let mut heads = Heads::default();
        match &self.source {
            SourceUri::Test(t) => {
                heads.raw = chains::test_sources(p, t)?;
                heads.live = true;
            }
            SourceUri::Uri { .. } => {
                let live = self.source.is_live();
                heads.live = live;
                let endless = live || !self.has_duration();
                self.shared.endless.store(endless, Ordering::Release);
                let gen = self.shared.generation.load(Ordering::Acquire);
                let mut pending = self.shared.take_pending(gen);
                pending.sort_by_key(|p| {
                    let caps = p.caps.clone().or_else(|| p.pad.current_caps());
                    !caps.is_some_and(|c| is_video(&c))
                });
                let mut result = Ok(());
                for pad in pending.iter() {
                    let caps = pad.caps.clone().or_else(|| pad.pad.current_caps());
                    let kind = caps.as_deref().and_then(stream_index);
                    let linked = match kind {
                        Some(k) if heads.es[k].is_none() => {
                            let h264 = caps.as_ref().is_some_and(|c| {
                                c.structure(0).is_some_and(|s| s.name() == "video/x-h264")
                            });
                            chains::stream_head(p, k == 0, h264, self.paced()).and_then(
                                |(first, tee)| {
                                    let sink = first.static_pad("sink").expect("head sink pad");
                                    self.shared.branches.lock()[k] = Some(sink.downgrade());
                                    heads.es[k] = Some(tee);
                                    heads.caps[k] = caps.clone();
                                    pad.pad.link(&sink).map(drop).map_err(|e| {
                                        MediaError::SourceFailed(format!(
                                            "cannot link source stream: {e:?}"
                                        ))
                                    })
                                },
                            )
                        }
                        _ => discard(p, &self.shared, gen, &pad.pad),
                    };
                    if result.is_ok() {
                        result = linked;
                    }
                }
                *self.held.lock() = pending;
                self.shared.committed.store(true, Ordering::Release);
                if let Err(e) = result {
                    self.release();
                    return Err(e);
                }
            }
        }
        Ok(heads)
    }

    /// Lets the source's media flow into the heads built by
    /// [`Opened::activate`] (for `test://`, starts the pipeline).
    pub fn release(&self) {
        let held = std::mem::take(&mut *self.held.lock());
        for mut p in held {
            if let Some(id) = p.probe.take() {
                p.pad.remove_probe(id);
            }
        }
        if matches!(self.source, SourceUri::Test(_))
            && self.pipeline.set_state(gst::State::Playing).is_err()
        {
            tracing::warn!("the test source did not start");
        }
    }

    /// Whether the output is held to real time: a local file would
    /// otherwise be read, converted and sent as fast as the machine goes,
    /// and end at once.
    fn paced(&self) -> bool {
        matches!(&self.source, SourceUri::Uri { scheme, .. } if scheme == "file")
    }

    /// Whether the source reports a duration (files, VOD playlists) rather
    /// than running without end (live streams).
    fn has_duration(&self) -> bool {
        let pending = self.shared.pending.lock();
        pending.iter().any(|p| {
            p.pad
                .parent_element()
                .and_then(|q| q.static_pad("sink"))
                .and_then(|sink| sink.peer_query_duration::<gst::ClockTime>())
                .is_some_and(|d| d > gst::ClockTime::ZERO)
        })
    }
}

/// A channel's stream heads: index 0 video, 1 audio.
#[derive(Default, Clone)]
pub struct Heads {
    /// Tees of the compressed elementary streams (URI sources).
    pub es: [Option<gst::Element>; 2],
    /// Caps of those streams.
    pub caps: [Option<gst::Caps>; 2],
    /// Tees of raw media (`test://` sources; decoders add their own).
    pub raw: [Option<gst::Element>; 2],
    /// The source is live (its branches may drop rather than wait).
    pub live: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that fails on the way to PLAYING (udpsrc cannot bind an
    /// address this host does not have): the pipeline is brought back to
    /// NULL and freed, and the error says why.
    #[test]
    fn a_source_that_fails_at_playing_is_brought_to_null_and_freed() {
        crate::media::init().unwrap();
        let pipeline = gst::Pipeline::builder().name("fails-at-playing").build();
        let weak = pipeline.downgrade();
        let source = SourceUri::Uri {
            uri: "udp://203.0.113.1:5000".into(),
            scheme: "udp".into(),
        };
        let err = match open_in(pipeline, SourcePlan::single(source), Default::default()) {
            Ok(_) => panic!("a source that cannot bind must not open"),
            Err(e) => e,
        };
        assert!(
            weak.upgrade().is_none(),
            "the pipeline outlived its failed start (not brought to NULL)"
        );
        assert!(
            err.to_string().contains("203.0.113.1"),
            "the error names the reason: {err}"
        );
    }
}
