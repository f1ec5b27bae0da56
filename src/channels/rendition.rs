//! A rendition: one encode of a channel at one profile, or its remux. It
//! owns its branch of the channel's pipeline (encoders or parsers) and one
//! container output per format in use, each publishing to a [`Fanout`]
//! that its viewers subscribe to. It knows how many viewers it has, not
//! who they are.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;
use parking_lot::Mutex;
use serde::Serialize;

mod encoder;

use encoder::{Current, Rebuild};

use super::fanout::{Fanout, FanoutConfig, Join, Viewer};
use super::publish::Publisher;
use crate::media::chains::{self, Branch, Counters, Encoded};
use crate::media::pipeline::Heads;
use crate::media::{Format, MediaError, Mode};
use crate::pool::Permit;
use crate::profiles::Profile;

/// Told the total viewer count of a rendition when it changes.
pub type ViewerCountHook = Arc<dyn Fn(usize) + Send + Sync>;

pub use crate::admission::SPEED_WINDOW;
/// The shortest stretch a windowed figure is given for (before it, the
/// figures count from the rendition's start).
const MIN_SPAN: Duration = Duration::from_secs(1);

/// The rendition's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    media_ns: u64,
    frames: u64,
    busy_ns: u64,
}

/// How a rendition keeps pace over the last [`SPEED_WINDOW`] (or what of
/// it has been sampled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Media time made ÷ wall time: 1.0 is real time for a live source.
    pub speed: f64,
    pub fps: f64,
    /// Pictures encoded per second of the encoder's wall time, over the
    /// pictures per second it is meant to make: how many times real time
    /// it could go (pictures a full queue dropped count against it). `None`
    /// for a remux, or before a picture was encoded in the window.
    pub encode_speed: Option<f64>,
    /// Pictures made over pictures meant (1.0: none dropped) for the media
    /// time the window carried, when the frame rate is known. Counted
    /// against media time, not wall time: a source that arrives in bursts
    /// (an HLS source delivers a segment at a time) fills some windows with
    /// fewer seconds of media without a picture being dropped.
    pub frame_share: Option<f64>,
    /// The stretch measured; a full window is [`SPEED_WINDOW`].
    pub span: Duration,
}

/// What identifies a rendition within its channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RenditionKey {
    pub mode: Mode,
    /// Profile name; `source` for remux.
    pub quality: String,
}

/// One container output: its branch, its fan-out, whether it has ended.
struct Output {
    fanout: Arc<Fanout>,
    branch: Option<Branch>,
    ended: Arc<AtomicBool>,
}

/// The pipeline objects of a rendition (touched only on blocking threads).
#[derive(Default)]
struct Graph {
    /// Index 0 video, 1 audio.
    encoded: [Option<Encoded>; 2],
    /// What a replacement video encoder branch is built from.
    rebuild: Option<Rebuild>,
}

/// An encoder that takes fresh input and gives no output for this long
/// has failed.
pub const ENCODER_SILENCE: Duration = Duration::from_secs(2);

pub struct Rendition {
    pub key: RenditionKey,
    pub profile: Profile,
    pub start_ms: u64,
    pub started_at: Instant,
    pub counters: Arc<Counters>,
    graph: Mutex<Graph>,
    outputs: Mutex<BTreeMap<Format, Output>>,
    /// Viewers per format, as the fan-outs report them.
    viewers: Mutex<BTreeMap<Format, usize>>,
    /// Requests joining right now (not yet counted as viewers).
    joining: AtomicUsize,
    /// Bumped whenever the viewer count changes; a linger timer only acts
    /// if nothing changed since it was set.
    pub(super) epoch: AtomicU64,
    /// The encoder (or remux) slot, freed once the branch is down.
    permit: Mutex<Option<Permit>>,
    fanout_config: FanoutConfig,
    /// Called with the total viewer count whenever it changes.
    on_viewers: Mutex<Option<ViewerCountHook>>,
    /// Counter samples of the last [`SPEED_WINDOW`], oldest first.
    window: Mutex<VecDeque<Sample>>,
    /// The video encoder now (kept apart from the graph, which is locked
    /// while an encoder is replaced).
    current_encoder: Mutex<Option<Current>>,
}

/// A rendition as status shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenditionView {
    pub quality: String,
    pub mode: Mode,
    pub encoder: Option<String>,
    pub decoder: Option<String>,
    pub fps: f64,
    pub speed: f64,
    /// How many times real time the encoder could go (transcodes).
    pub encode_speed: Option<f64>,
    pub viewers: usize,
    pub formats: Vec<Format>,
    pub start_time: u64,
}

impl Rendition {
    pub fn new(
        key: RenditionKey,
        profile: Profile,
        permit: Option<Permit>,
        fanout_config: FanoutConfig,
    ) -> Arc<Rendition> {
        Arc::new(Rendition {
            key,
            profile,
            start_ms: crate::events::epoch_ms(),
            started_at: Instant::now(),
            counters: Arc::new(Counters::default()),
            graph: Mutex::new(Graph::default()),
            outputs: Mutex::new(BTreeMap::new()),
            viewers: Mutex::new(BTreeMap::new()),
            joining: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            permit: Mutex::new(permit),
            fanout_config,
            on_viewers: Mutex::new(None),
            window: Mutex::new(VecDeque::new()),
            current_encoder: Mutex::new(None),
        })
    }

    /// Records the counters now (called about once a second), keeping
    /// one sample at or beyond the window's far end.
    pub fn sample(&self) {
        let now = Instant::now();
        let s = Sample {
            at: now,
            media_ns: self.counters.media_ns(),
            frames: self.counters.frames.load(Ordering::Relaxed),
            busy_ns: self.counters.busy_ns(),
        };
        let mut w = self.window.lock();
        w.push_back(s);
        while w.len() > 2 && now.duration_since(w[1].at) >= SPEED_WINDOW {
            w.pop_front();
        }
    }

    /// How the rendition kept pace over the sampled window; `None` until
    /// two samples at least [`MIN_SPAN`] apart exist.
    pub fn pace(&self) -> Option<Pace> {
        let w = self.window.lock();
        let (first, last) = (w.front()?, w.back()?);
        let span = last.at.duration_since(first.at);
        if span < MIN_SPAN {
            return None;
        }
        let secs = span.as_secs_f64();
        let media = last.media_ns.saturating_sub(first.media_ns) as f64;
        let busy = last.busy_ns.saturating_sub(first.busy_ns) as f64;
        let frames = last.frames.saturating_sub(first.frames) as f64;
        let rate = self.counters.frame_rate();
        let encode_speed = (self.key.mode == Mode::Transcode && busy > 0.0).then(|| match rate {
            Some(r) => frames / (busy / 1e9) / r,
            None => media / busy,
        });
        Some(Pace {
            speed: media / 1e9 / secs,
            fps: frames / secs,
            encode_speed,
            frame_share: rate
                .filter(|_| media > 0.0)
                .map(|r| frames / (media / 1e9) / r),
            span,
        })
    }

    pub fn mode(&self) -> Mode {
        self.key.mode
    }

    /// Sets what is told the total viewer count when it changes.
    pub fn on_viewers(&self, f: ViewerCountHook) {
        *self.on_viewers.lock() = Some(f);
    }

    /// Builds the encode (or remux) branch off the channel's heads. Runs
    /// on a blocking thread; `raw` gives the raw tee of a stream (making a
    /// decoder when needed).
    pub fn build(
        self: &Arc<Self>,
        p: &gst::Pipeline,
        heads: &Heads,
        mut raw: impl FnMut(usize) -> Result<Option<gst::Element>, MediaError>,
    ) -> Result<(), MediaError> {
        let mut graph = self.graph.lock();
        let built = (|| {
            for k in 0..2 {
                let encoded = match self.key.mode {
                    Mode::Remux => match &heads.es[k] {
                        Some(es) => Some(chains::remux(p, es, k == 0, heads.live, &self.counters)?),
                        None => None,
                    },
                    Mode::Transcode => match raw(k)? {
                        Some(t) if k == 0 => {
                            let decoder = heads.raw[0].is_none().then(|| {
                                crate::encoders::table().expected_decoder(heads.caps[0].as_deref())
                            });
                            let rebuild = Rebuild {
                                pipeline: p.downgrade(),
                                raw: t.clone(),
                                decoder: decoder.flatten(),
                                live: heads.live,
                            };
                            let v = self.first_video_encoder(p, &rebuild)?;
                            graph.rebuild = Some(rebuild);
                            Some(v)
                        }
                        Some(t) => Some(chains::audio_encode(p, &t, &self.profile, heads.live)?),
                        None => None,
                    },
                };
                graph.encoded[k] = encoded;
            }
            match &graph.encoded {
                [None, None] => Err(MediaError::SourceFailed(
                    "the source has neither audio nor video".into(),
                )),
                [None, Some(audio)] => {
                    chains::count_audio(audio, &self.counters);
                    Ok(())
                }
                _ => Ok(()),
            }
        })();
        if built.is_err() {
            graph.rebuild = None;
            for e in graph.encoded.iter_mut() {
                if let Some(e) = e.take() {
                    e.remove(p);
                }
            }
        } else if let Some(v) = &graph.encoded[0] {
            self.arm(v);
        }
        built
    }

    /// The fan-out of `format`, if that output exists.
    pub fn fanout(&self, format: Format) -> Option<Arc<Fanout>> {
        self.outputs.lock().get(&format).map(|o| o.fanout.clone())
    }

    /// Builds the container output for `format` (blocking thread). The
    /// muxer's output is cut into chunks and published to a new fan-out;
    /// `on_output` is told of every buffer; at the end, `on_eos` says the
    /// reason the viewers end with.
    pub fn add_output(
        self: &Arc<Self>,
        p: &gst::Pipeline,
        format: Format,
        on_output: Arc<dyn Fn() + Send + Sync>,
        on_eos: Arc<dyn Fn() -> crate::media::EndReason + Send + Sync>,
    ) -> Result<Arc<Fanout>, MediaError> {
        if let Some(f) = self.fanout(format) {
            return Ok(f);
        }
        let fanout = Fanout::new(self.fanout_config);
        let weak = Arc::downgrade(self);
        fanout.on_viewer_count(Box::new(move |n| {
            if let Some(r) = weak.upgrade() {
                r.viewers_changed(format, n);
            }
        }));
        let encoder = self.encoder();
        if encoder.is_some() {
            let weak = Arc::downgrade(self);
            fanout.set_keyframe_request(Box::new(move || {
                if let Some(e) = weak
                    .upgrade()
                    .and_then(|r| r.encoder())
                    .and_then(|e| e.upgrade())
                {
                    chains::force_keyframe(&e);
                }
            }));
        }
        let ended = Arc::new(AtomicBool::new(false));
        let publisher = Publisher::new(format, &fanout);
        let on_data = {
            let publisher = publisher.clone();
            move |data: &[u8]| {
                on_output();
                publisher.data(data);
            }
        };
        let on_config = Box::new(move |at, codec_data| publisher.video_config(at, codec_data));
        let (f, e) = (Arc::downgrade(&fanout), ended.clone());
        let eos = move || {
            e.store(true, Ordering::Release);
            let reason = on_eos();
            if let Some(f) = f.upgrade() {
                f.finish(reason);
            }
        };
        let branch = {
            let graph = self.graph.lock();
            let out = |k: usize| graph.encoded[k].as_ref().map(|e| e.out.clone());
            let (video, audio) = (out(0), out(1));
            chains::output(
                p,
                video.as_ref(),
                audio.as_ref(),
                format,
                on_data,
                eos,
                on_config,
            )?
        };
        self.outputs.lock().insert(
            format,
            Output {
                fanout: fanout.clone(),
                branch: Some(branch),
                ended,
            },
        );
        // A running encoder starts the new output at once.
        if let Some(e) = encoder.and_then(|e| e.upgrade()) {
            chains::force_keyframe(&e);
        }
        Ok(fanout)
    }

    /// Weak handles to every element of the rendition, for leak checks.
    pub fn element_refs(&self) -> Vec<gst::glib::WeakRef<gst::Element>> {
        let graph = self.graph.lock();
        let outputs = self.outputs.lock();
        graph
            .encoded
            .iter()
            .flatten()
            .flat_map(|e| e.elements())
            .chain(
                outputs
                    .values()
                    .filter_map(|o| o.branch.as_ref())
                    .flat_map(|b| b.elements().iter()),
            )
            .map(|e| e.downgrade())
            .collect()
    }

    /// A viewer of `format` (whose output must exist).
    pub fn subscribe(&self, format: Format, join: Join) -> Option<Viewer> {
        self.fanout(format).map(|f| f.subscribe(join))
    }

    fn viewers_changed(&self, format: Format, n: usize) {
        let total = {
            let mut v = self.viewers.lock();
            v.insert(format, n);
            v.values().sum::<usize>()
        };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let cb = self.on_viewers.lock().clone();
        if let Some(cb) = cb {
            cb(total);
        }
    }

    /// Viewers of every format.
    pub fn viewers(&self) -> usize {
        self.viewers.lock().values().sum()
    }

    /// Holds the rendition up while a request joins it.
    pub fn pin(&self) {
        self.joining.fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn unpin(&self) {
        self.joining.fetch_sub(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Nobody watches or joins it.
    pub fn idle(&self) -> bool {
        self.viewers() == 0 && self.joining.load(Ordering::Acquire) == 0
    }

    /// Whether every output it has has ended (EOS).
    pub fn all_ended(&self) -> bool {
        self.outputs
            .lock()
            .values()
            .all(|o| o.ended.load(Ordering::Acquire))
    }

    /// Ends every viewer of every output with `reason`.
    pub fn finish(&self, reason: crate::media::EndReason) {
        for o in self.outputs.lock().values() {
            o.fanout.finish(reason);
        }
    }

    /// Keyframe-skips of its viewers so far.
    pub fn skips(&self) -> u64 {
        self.outputs
            .lock()
            .values()
            .map(|o| o.fanout.skips_total())
            .sum()
    }

    /// Ends viewers that stay behind (see [`Fanout::sweep`]).
    pub fn sweep(&self) {
        let fanouts: Vec<_> = self
            .outputs
            .lock()
            .values()
            .map(|o| o.fanout.clone())
            .collect();
        for f in fanouts {
            f.sweep();
        }
    }

    /// Takes the rendition's branches off the pipeline (blocking thread),
    /// then frees its slot.
    pub fn remove(&self, p: &gst::Pipeline) {
        let outputs: Vec<Branch> = self
            .outputs
            .lock()
            .values_mut()
            .filter_map(|o| o.branch.take())
            .collect();
        for b in outputs {
            b.remove(p);
        }
        let encoded = {
            let mut graph = self.graph.lock();
            graph.rebuild = None;
            std::mem::take(&mut graph.encoded)
        };
        for e in encoded.into_iter().flatten() {
            e.remove(p);
        }
        self.release();
    }

    /// Frees the slot and drops pipeline references (after the pipeline
    /// itself reached NULL, or the branch was removed).
    pub fn release(&self) {
        let mut outputs = self.outputs.lock();
        for o in outputs.values_mut() {
            o.branch.take();
        }
        drop(outputs);
        {
            let mut graph = self.graph.lock();
            graph.encoded = [None, None];
            graph.rebuild = None;
        }
        self.current_encoder.lock().take();
        self.permit.lock().take();
    }

    pub fn view(&self, decoder: Option<String>) -> RenditionView {
        let elapsed = self.started_at.elapsed().as_secs_f64();
        let round2 = |v: f64| (v * 100.0).round() / 100.0;
        let pace = self.pace();
        let frames = self.counters.frames.load(Ordering::Relaxed) as f64;
        let media = self.counters.media_ns() as f64 / 1e9;
        let rate = |v: f64| {
            if elapsed > 0.0 {
                round2(v / elapsed)
            } else {
                0.0
            }
        };
        let transcode = self.key.mode == Mode::Transcode;
        let (decoder, encoder) = self.names(decoder);
        RenditionView {
            quality: self.key.quality.clone(),
            mode: self.key.mode,
            encoder: encoder.filter(|_| transcode),
            decoder: decoder.filter(|_| transcode),
            fps: pace.map_or_else(|| rate(frames), |p| round2(p.fps)),
            speed: pace.map_or_else(|| rate(media), |p| round2(p.speed)),
            encode_speed: pace.and_then(|p| p.encode_speed).map(round2),
            viewers: self.viewers(),
            formats: self.outputs.lock().keys().copied().collect(),
            start_time: self.start_ms,
        }
    }
}

#[cfg(test)]
mod tests;
