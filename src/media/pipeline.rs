//! Pipeline building. A pipeline is built in two steps so the mode can be
//! chosen from what the source really carries:
//!
//! 1. [`open`]: the source part. For URIs `urisourcebin -> parsebin`, whose
//!    elementary-stream pads are held by blocking probes; `test://` needs no
//!    opening (its streams are known raw video + tone).
//! 2. [`Opened::commit`]: the branches for the chosen mode, the muxer and
//!    the appsink, then the probes are released.
//!
//! ```text
//! transcode video: pad -> queue -> decodebin -> deinterlace -> videoscale -> videorate
//!                  -> videoconvert -> capsfilter(box, fps) -> queue(leaky if live)
//!                  -> x264enc -> capsfilter(constrained-baseline) -> h264parse -> capsfilter -> mux
//! transcode audio: pad -> queue -> decodebin -> audioconvert -> audioresample
//!                  -> capsfilter(48 kHz stereo) -> queue(leaky if live) -> avenc_aac -> aacparse -> mux
//! remux:           pad -> queue -> h264parse|aacparse -> capsfilter -> mux
//! mux:             mp4mux (fragmented) | mpegtsmux -> appsink
//! file://:         identity(sync) between each branch and the mux plays the file in real time
//! H.264 branches:  a probe on the branch's sink joins pictures that arrive in untimed pieces
//! test://:         videotestsrc(live) / audiotestsrc(live) feed the transcode chains directly
//! ```
//!
//! Every closure handed to GStreamer holds weak references to elements;
//! shared counters live in [`Shared`], which holds no pipeline objects
//! except pads that the commit step releases.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;

use super::ingest::{self, PadTiming, SourcePlan};
use super::source::{SourceUri, TestAudio, TestSource};
use super::{Format, MediaError, Mode, SourceStreams, StreamCodec};
use crate::profiles::{Profile, AUDIO_CHANNELS, AUDIO_RATE};

/// Fragment length of fMP4 output: short fragments get the first frame to
/// the client quickly.
pub const FRAGMENT_DURATION_MS: u32 = 250;
/// appsink queue bound (buffers); backpressure beyond it comes from the
/// HTTP body not being polled.
pub const APPSINK_MAX_BUFFERS: u32 = 256;
/// Live sources: at most this much raw audio waits for the encoder before
/// buffers are dropped rather than the source stalling.
const LEAKY_QUEUE_NS: u64 = 1_000_000_000;
/// The same for raw video, kept short: a queued frame is a whole picture
/// at the output size (3 MB at 1080p), and a source that bursts ahead of
/// the encoder (an HLS client catching up at the live edge) would otherwise
/// park a second of them per session. A few frames decouple the decoder's
/// and the encoder's threads; a non-live source simply waits.
const VIDEO_ENCODER_QUEUE_NS: u64 = 300_000_000;

/// State shared between streaming-thread callbacks and the async side.
/// Holds no strong reference to the pipeline or its elements.
#[derive(Default)]
pub struct Shared {
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
    /// [`ingest::PREDECISION_LONG_QUEUE_NS`] (see [`Opened::lengthen_holds`]).
    pub(super) long_holds: AtomicBool,
    /// Source pads the source element announced (rtspsrc: one per SDP
    /// stream, known at its no-more-pads); usize::MAX while it may add more.
    pub(super) source_pads_expected: AtomicUsize,
    /// The current generation's urisourcebin pads seen so far.
    pub(super) source_pads_seen: AtomicUsize,
    /// The current source generation (see [`ingest`]); 0 for `test://`.
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
    pub closing: AtomicBool,
    /// A lost source is being reconnected.
    pub reconnecting: AtomicBool,
    /// Successful reconnects.
    pub reconnects: AtomicU64,
    /// Wakes whoever waits for pads or for output.
    pub notify: tokio::sync::Notify,
    /// Video frames (or audio buffers when there is no video) sent to the muxer.
    pub frames: AtomicU64,
    /// First and latest output timestamp (ns) for media-time accounting.
    first_pts: AtomicU64,
    last_pts: AtomicU64,
    /// Monotonic ms (see [`now_ms`]) of the last sample the appsink received.
    pub last_sample_ms: AtomicU64,
    /// The appsink has received EOS.
    pub eos: AtomicBool,
    /// Wakes the body stream when a sample or EOS arrives.
    pub waker: futures::task::AtomicWaker,
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
    /// Media time carried so far (ns).
    pub fn media_ns(&self) -> u64 {
        let first = self.first_pts.load(Ordering::Relaxed);
        let last = self.last_pts.load(Ordering::Relaxed);
        if first == u64::MAX || first == 0 && last == 0 {
            0
        } else {
            last.saturating_sub(first)
        }
    }

    fn note_pts(&self, pts: Option<gst::ClockTime>) {
        if let Some(pts) = pts {
            let ns = pts.nseconds();
            let _ =
                self.first_pts
                    .compare_exchange(u64::MAX, ns, Ordering::Relaxed, Ordering::Relaxed);
            self.last_pts.fetch_max(ns, Ordering::Relaxed);
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
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// A pipeline whose source is open (or, for `test://`, ready to be made).
pub struct Opened {
    pub pipeline: gst::Pipeline,
    pub shared: Arc<Shared>,
    source: SourceUri,
    pub(super) plan: Arc<SourcePlan>,
    pub(super) format: Format,
    /// The mode chosen at commit.
    pub(super) mode: Mutex<Option<Mode>>,
}

pub(super) fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        MediaError::SourceFailed(format!("GStreamer element '{factory}' is not installed"))
    })
}

pub(super) fn queue(max_time_ns: u64, leaky: bool) -> Result<gst::Element, MediaError> {
    let q = make("queue")?;
    q.set_property("max-size-buffers", 0u32);
    q.set_property("max-size-bytes", 0u32);
    q.set_property("max-size-time", max_time_ns);
    if leaky {
        q.set_property_from_str("leaky", "downstream");
    }
    Ok(q)
}

fn capsfilter(caps: gst::Caps) -> Result<gst::Element, MediaError> {
    let f = make("capsfilter")?;
    f.set_property("caps", caps);
    Ok(f)
}

/// Builds the first source generation (none for `test://`) and starts it.
/// Must run off the async runtime (it changes pipeline state).
pub fn open(name: &str, plan: SourcePlan, format: Format) -> Result<Opened, MediaError> {
    open_in(gst::Pipeline::builder().name(name).build(), plan, format)
}

/// [`open`] into a given (empty) pipeline. On failure the pipeline is back
/// at NULL: a pipeline left in READY or PAUSED is never freed (its bus
/// keeps the pipeline's own state messages, which reference it, until the
/// bus is flushed at NULL) and would keep its sockets and threads.
fn open_in(
    pipeline: gst::Pipeline,
    plan: SourcePlan,
    format: Format,
) -> Result<Opened, MediaError> {
    let shared = Arc::new(Shared {
        first_pts: AtomicU64::new(u64::MAX),
        last_sample_ms: AtomicU64::new(now_ms()),
        ..Default::default()
    });
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
        format,
        mode: Mutex::new(None),
    })
}

/// Why `pipeline` failed to start: the error an element posted, which
/// says more than the failed state change (credential-free).
fn start_error(pipeline: &gst::Pipeline, change: gst::StateChangeError) -> MediaError {
    let posted = pipeline
        .bus()
        .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]));
    match posted.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(err)) => MediaError::SourceFailed(
            super::session::describe_error(&err.error(), err.debug().as_deref()),
        ),
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

pub(super) fn is_video(caps: &gst::CapsRef) -> bool {
    caps.structure(0)
        .is_some_and(|s| s.name().starts_with("video/"))
}

pub(super) fn is_audio(caps: &gst::CapsRef) -> bool {
    caps.structure(0)
        .is_some_and(|s| s.name().starts_with("audio/"))
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
    /// holds from now on, queue up to [`ingest::PREDECISION_LONG_QUEUE_NS`]
    /// (a queue that is full wakes its writer when its limit grows).
    pub fn lengthen_holds(&self) {
        if self.shared.long_holds.swap(true, Ordering::AcqRel) {
            return;
        }
        for p in self.shared.pending.lock().iter() {
            ingest::lengthen_hold(&p.pad);
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

    /// Builds the branches for `mode`, the muxer and the appsink, releases
    /// the source pads and (for test sources) starts the pipeline. Must run
    /// off the async runtime.
    pub fn commit(&self, mode: Mode, profile: &Profile) -> Result<gst_app::AppSink, MediaError> {
        let live = self.source.is_live();
        let mux = match self.format {
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
            .name("sink")
            .max_buffers(APPSINK_MAX_BUFFERS)
            .drop(false)
            .sync(false)
            .async_(false)
            .enable_last_sample(false)
            .build();
        let sh = self.shared.clone();
        let sh_eos = self.shared.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |_| {
                    sh.last_sample_ms.store(now_ms(), Ordering::Relaxed);
                    sh.waker.wake();
                    sh.notify.notify_waiters();
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(move |_| {
                    sh_eos.eos.store(true, Ordering::Release);
                    sh_eos.waker.wake();
                    sh_eos.notify.notify_waiters();
                })
                .build(),
        );
        self.pipeline.add_many([&mux, appsink.upcast_ref()])?;
        mux.link(&appsink)?;

        match &self.source {
            SourceUri::Test(t) => {
                self.build_test(t, profile, &mux, live)?;
                self.pipeline.set_state(gst::State::Playing)?;
            }
            SourceUri::Uri { .. } => {
                mux.sync_state_with_parent()?;
                appsink.sync_state_with_parent()?;
                *self.mode.lock() = Some(mode);
                let endless = live || !self.has_duration();
                self.shared.endless.store(endless, Ordering::Release);
                self.link_pending(mode, profile, &mux, live)?;
                self.shared.committed.store(true, Ordering::Release);
            }
        }
        Ok(appsink)
    }

    fn build_test(
        &self,
        t: &TestSource,
        profile: &Profile,
        mux: &gst::Element,
        live: bool,
    ) -> Result<(), MediaError> {
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
        self.pipeline.add_many([&vsrc, &vcaps])?;
        vsrc.link(&vcaps)?;
        let head = video_transcode_chain(
            &self.pipeline,
            profile,
            self.format,
            mux,
            live,
            &self.shared,
        )?;
        vcaps.link(&head)?;
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
            self.pipeline.add(&asrc)?;
            let head = audio_transcode_chain(&self.pipeline, profile, self.format, mux, live)?;
            asrc.link(&head)?;
        }
        Ok(())
    }

    fn link_pending(
        &self,
        mode: Mode,
        profile: &Profile,
        mux: &gst::Element,
        live: bool,
    ) -> Result<(), MediaError> {
        let gen = self.shared.generation.load(Ordering::Acquire);
        let pending = self.shared.take_pending(gen);
        // The first stream linked is mpegtsmux's PCR stream, whose first
        // packet carries the PAT/PMT: video first, so its keyframe follows them.
        let mut pending = pending;
        pending.sort_by_key(|p| {
            let caps = p.caps.clone().or_else(|| p.pad.current_caps());
            !caps.is_some_and(|c| is_video(&c))
        });
        let mut have_video = false;
        let mut have_audio = false;
        let mut result = Ok(());
        for p in pending.iter() {
            let caps = p.caps.clone().or_else(|| p.pad.current_caps());
            let kind = caps
                .as_ref()
                .map(|c| (is_video(c), is_audio(c)))
                .unwrap_or((false, false));
            let linked = match kind {
                (true, _) if !have_video => {
                    have_video = true;
                    self.link_branch(&p.pad, true, mode, profile, mux, live)
                }
                (_, true) if !have_audio => {
                    have_audio = true;
                    self.link_branch(&p.pad, false, mode, profile, mux, live)
                }
                _ => discard(&self.pipeline, &self.shared, gen, &p.pad),
            };
            if result.is_ok() {
                result = linked;
            }
        }
        // Release every probe even when a link failed, so nothing stays blocked.
        for mut p in pending {
            if let Some(id) = p.probe.take() {
                p.pad.remove_probe(id);
            }
        }
        result
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

    fn link_branch(
        &self,
        pad: &gst::Pad,
        video: bool,
        mode: Mode,
        profile: &Profile,
        mux: &gst::Element,
        live: bool,
    ) -> Result<(), MediaError> {
        let p = &self.pipeline;
        let pace = if self.paced() {
            Some(pacer(p, mux, video, self.format)?)
        } else {
            None
        };
        let mux = pace.as_ref().unwrap_or(mux);
        let head: gst::Element = match (mode, video) {
            (Mode::Remux, true) => {
                let parse = make("h264parse")?;
                if self.format == Format::Ts {
                    parse.set_property("config-interval", -1i32);
                }
                let out = capsfilter(h264_output_caps(self.format, None))?;
                p.add_many([&parse, &out])?;
                gst::Element::link_many([&parse, &out])?;
                add_keyframe_gate(&parse.static_pad("src").expect("src pad"));
                count_output(&out.static_pad("src").expect("src pad"), &self.shared);
                out.link(mux)?;
                for e in [&out, &parse] {
                    e.sync_state_with_parent()?;
                }
                parse
            }
            (Mode::Remux, false) => {
                let parse = make("aacparse")?;
                let out = capsfilter(aac_output_caps(self.format))?;
                p.add_many([&parse, &out])?;
                gst::Element::link_many([&parse, &out])?;
                out.link(mux)?;
                for e in [&out, &parse] {
                    e.sync_state_with_parent()?;
                }
                parse
            }
            (Mode::Transcode, _) => {
                let dec = make("decodebin")?;
                if video {
                    let threads = decoder_threads(pad.current_caps().as_deref());
                    let bin = dec.downcast_ref::<gst::Bin>().expect("decodebin is a bin");
                    bin.connect_deep_element_added(move |_, _, el| {
                        if el.has_property("max-threads") {
                            el.set_property_from_str("max-threads", &threads.to_string());
                        }
                    });
                }
                p.add(&dec)?;
                let chain_head = if video {
                    video_transcode_chain(p, profile, self.format, mux, live, &self.shared)?
                } else {
                    audio_transcode_chain(p, profile, self.format, mux, live)?
                };
                let weak_head = chain_head.downgrade();
                dec.connect_pad_added(move |dec, pad| {
                    let Some(head) = weak_head.upgrade() else {
                        return;
                    };
                    let sink = head.static_pad("sink").expect("chain sink pad");
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
                dec.sync_state_with_parent()?;
                dec
            }
        };
        head.sync_state_with_parent()?;
        let sink = head.static_pad("sink").expect("branch sink pad");
        if video
            && pad
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name() == "video/x-h264"))
                .unwrap_or(false)
        {
            join_split_access_units(&sink);
        }
        self.shared.branches.lock()[usize::from(!video)] = Some(sink.downgrade());
        pad.link(&sink)
            .map_err(|e| MediaError::SourceFailed(format!("cannot link source stream: {e:?}")))?;
        Ok(())
    }
}

/// An `identity` that hands a branch's output to `mux` at its running time
/// on the pipeline clock, so a file plays in real time as a live channel
/// would. Linked to the muxer (with the branch's output caps, so mp4mux
/// gives it the right kind of pad) and running; the branch links into it.
fn pacer(
    p: &gst::Pipeline,
    mux: &gst::Element,
    video: bool,
    format: Format,
) -> Result<gst::Element, MediaError> {
    let pace = make("identity")?;
    pace.set_property("sync", true);
    pace.set_property("silent", true);
    p.add(&pace)?;
    let caps = if video {
        h264_output_caps(format, None)
    } else {
        aac_output_caps(format)
    };
    pace.link_filtered(mux, &caps)?;
    pace.sync_state_with_parent()?;
    Ok(pace)
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
pub(super) fn add_keyframe_gate(pad: &gst::Pad) {
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

/// Counts frames and media time on the encoded video going into the muxer.
fn count_output(pad: &gst::Pad, shared: &Arc<Shared>) {
    let sh = Arc::downgrade(shared);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let (Some(sh), Some(b)) = (sh.upgrade(), info.buffer()) {
            sh.frames.fetch_add(1, Ordering::Relaxed);
            sh.note_pts(b.pts());
        }
        gst::PadProbeReturn::Ok
    });
}

/// Raw video -> profile-sized H.264 into `mux`. Returns the chain's first element.
fn video_transcode_chain(
    p: &gst::Pipeline,
    profile: &Profile,
    format: Format,
    mux: &gst::Element,
    live: bool,
    shared: &Arc<Shared>,
) -> Result<gst::Element, MediaError> {
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
    let q = queue(VIDEO_ENCODER_QUEUE_NS, live)?;
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
    let parse = make("h264parse")?;
    if format == Format::Ts {
        parse.set_property("config-interval", -1i32);
    }
    let out = capsfilter(h264_output_caps(format, None))?;
    let chain = [
        &deint, &scale, &rate, &convert, &size, &q, &enc, &enc_caps, &parse, &out,
    ];
    p.add_many(chain)?;
    gst::Element::link_many(chain)?;
    out.link(mux)?;
    count_output(&out.static_pad("src").expect("src pad"), shared);

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
    for e in chain {
        e.sync_state_with_parent()?;
    }
    Ok(deint)
}

/// Raw audio -> AAC-LC 48 kHz stereo into `mux`. Returns the chain's first element.
fn audio_transcode_chain(
    p: &gst::Pipeline,
    profile: &Profile,
    format: Format,
    mux: &gst::Element,
    live: bool,
) -> Result<gst::Element, MediaError> {
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let caps = capsfilter(
        gst::Caps::builder("audio/x-raw")
            .field("rate", AUDIO_RATE as i32)
            .field("channels", AUDIO_CHANNELS as i32)
            .build(),
    )?;
    let q = queue(LEAKY_QUEUE_NS, live)?;
    let enc = make("avenc_aac")?;
    enc.set_property("bitrate", (profile.audio_bitrate as i32) * 1000);
    let parse = make("aacparse")?;
    let out = capsfilter(aac_output_caps(format))?;
    let chain = [&convert, &resample, &caps, &q, &enc, &parse, &out];
    p.add_many(chain)?;
    gst::Element::link_many(chain)?;
    out.link(mux)?;
    for e in chain {
        e.sync_state_with_parent()?;
    }
    Ok(convert)
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
        let err = match open_in(pipeline, SourcePlan::single(source), Format::Ts) {
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
