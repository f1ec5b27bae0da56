//! A channel: one running catalog stream. It owns the source side of one
//! pipeline (one upstream connection with its reconnects and backups, the
//! demux, a tee per elementary stream), the decoders (made when the first
//! transcode rendition needs one, taken down with the last), and its
//! renditions. It knows nothing about viewers beyond their count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use gst::prelude::*;
use parking_lot::Mutex;

use super::fanout::{Fanout, FanoutConfig};
use super::frame::{self, Frame, KeyframeCache};
use super::rendition::{Rendition, RenditionKey};
use super::Channels;
use crate::media::chains::{self, Branch};
use crate::media::ingest::SourcePlan;
use crate::media::pipeline::Heads;
use crate::media::running::Running;
use crate::media::stats::MediaStats;
use crate::media::{EndReason, Format, MediaError, SourceStreams};
use crate::pool::{Permit, Slot};
use crate::profiles::Profile;
use crate::providers::ProviderLease;

#[derive(Default)]
pub(super) struct State {
    pub(super) renditions: BTreeMap<RenditionKey, Arc<Rendition>>,
    pub(super) heads: Option<Heads>,
    /// Per stream (0 video, 1 audio): the decoder branch and its raw tee.
    pub(super) decoders: [Option<(Branch, gst::Element)>; 2],
    pub(super) closed: bool,
}

pub struct Channel {
    pub stream_id: String,
    pub stream_name: String,
    /// Source protocol (`http`, `rtsp`, `test`, ...).
    pub protocol: String,
    pub start_ms: u64,
    pub(super) started_at: Instant,
    pub(super) plan: SourcePlan,
    pub(super) fanout_config: FanoutConfig,
    pub(super) linger: Duration,
    pub(super) owner: Weak<Channels>,
    pub(super) me: Weak<Channel>,
    /// Serialises opening the source and changing the graph.
    pub(super) build: tokio::sync::Mutex<()>,
    pub(super) running: OnceLock<Arc<Running>>,
    pub(super) streams: OnceLock<SourceStreams>,
    pub(super) state: Mutex<State>,
    /// The channel slot and the provider connection: both given back
    /// only once the pipeline reached NULL (the upstream is closed).
    pub(super) slot: Mutex<Option<(Slot, ProviderLease)>>,
    /// The provider the upstream connection counts against.
    pub(super) provider: Option<String>,
    pub(super) ended: OnceLock<EndReason>,
    /// Requests using the channel that hold no rendition yet.
    pub(super) users: AtomicUsize,
    pub(super) draining: AtomicBool,
    /// The runtime that timers and teardown run on (callbacks may come
    /// from GStreamer's streaming threads).
    pub(super) runtime: tokio::runtime::Handle,
    /// Compressed bytes the source handed to the stream heads.
    pub(super) in_bytes: Arc<AtomicU64>,
    pub(super) activated_at: Mutex<Option<Instant>>,
    pub(super) stats: Arc<MediaStats>,
    /// The latest keyframe of the compressed video (snapshots).
    pub(super) keyframes: Arc<KeyframeCache>,
}

/// Where a snapshot of a running channel comes from.
pub enum PictureSource {
    /// The next decoded picture, copied off the raw video tee.
    Raw(tokio::sync::oneshot::Receiver<Frame>),
    /// The compressed video's latest (or next) keyframe.
    Keyframe(Arc<KeyframeCache>),
    /// The channel has no video.
    NoVideo,
}

/// A request's use of a channel: while any exists, a channel without
/// renditions stays up (it is being opened or joined).
pub struct ChannelUse(Arc<Channel>);

impl ChannelUse {
    pub fn channel(&self) -> &Arc<Channel> {
        &self.0
    }
}

impl Drop for ChannelUse {
    fn drop(&mut self) {
        let ch = &self.0;
        if ch.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            let unused = ch.state.lock().renditions.is_empty();
            if unused {
                ch.stop(EndReason::ClientDisconnect);
            }
        }
    }
}

impl Channel {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        stream_id: String,
        stream_name: String,
        protocol: String,
        plan: SourcePlan,
        fanout_config: FanoutConfig,
        linger: Duration,
        owner: Weak<Channels>,
        slot: (Slot, ProviderLease),
        stats: Arc<MediaStats>,
    ) -> Arc<Channel> {
        let provider = slot.1.provider().map(String::from);
        Arc::new_cyclic(|me| Channel {
            stream_id,
            stream_name,
            protocol,
            start_ms: crate::events::epoch_ms(),
            started_at: Instant::now(),
            plan,
            fanout_config,
            linger,
            owner,
            me: me.clone(),
            build: tokio::sync::Mutex::new(()),
            running: OnceLock::new(),
            streams: OnceLock::new(),
            state: Mutex::new(State::default()),
            slot: Mutex::new(Some(slot)),
            provider,
            ended: OnceLock::new(),
            users: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            in_bytes: Arc::new(AtomicU64::new(0)),
            activated_at: Mutex::new(None),
            stats,
            keyframes: Arc::new(KeyframeCache::default()),
        })
    }

    /// Marks a request as using the channel (see [`ChannelUse`]); None if
    /// the channel has already closed.
    pub(super) fn enter(self: &Arc<Self>) -> Option<ChannelUse> {
        let st = self.state.lock();
        if st.closed {
            return None;
        }
        self.users.fetch_add(1, Ordering::AcqRel);
        Some(ChannelUse(self.clone()))
    }

    /// The provider the channel's upstream connection counts against.
    pub fn provider(&self) -> Option<String> {
        self.provider.clone()
    }

    /// Requests joining or opening the channel that hold no viewer yet.
    pub fn pending_requests(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// The source's streams once it has been opened.
    pub fn streams(&self) -> Option<SourceStreams> {
        self.streams.get().cloned()
    }

    pub fn ended(&self) -> Option<EndReason> {
        self.ended.get().copied()
    }

    /// Opens the source (once) and waits until its streams are known.
    pub async fn open(&self) -> Result<SourceStreams, MediaError> {
        let _build = self.build.lock().await;
        if let Some(s) = self.streams.get() {
            return Ok(s.clone());
        }
        if let Some(r) = self.ended() {
            return Err(MediaError::Ended(r));
        }
        let running = match self.running.get() {
            Some(r) => r.clone(),
            None => {
                let name = format!("channel-{}-{}", self.stream_id, self.start_ms);
                let r = Running::open(name, self.plan.clone(), self.stats.clone()).await?;
                let weak = self.me.clone();
                r.on_failure(Arc::new(move || {
                    if let Some(ch) = weak.upgrade() {
                        ch.stop(EndReason::SourceError);
                    }
                }));
                if self.running.set(r.clone()).is_err() || self.ended().is_some() {
                    r.end(self.ended().unwrap_or(EndReason::ClientDisconnect));
                    return Err(MediaError::Ended(
                        self.ended().unwrap_or(EndReason::ClientDisconnect),
                    ));
                }
                r
            }
        };
        let streams = running.streams().await?;
        let _ = self.streams.set(streams.clone());
        Ok(streams)
    }

    /// Where a picture of the running channel can be taken from, without
    /// a new upstream connection: a decoded frame when a decoder (or a raw
    /// `test://` source) runs, else the compressed video's keyframe. None
    /// while the channel's media does not flow yet, or after it closed.
    pub fn picture(&self) -> Option<PictureSource> {
        let st = self.state.lock();
        if st.closed {
            return None;
        }
        let heads = st.heads.as_ref()?;
        let raw = st.decoders[0]
            .as_ref()
            .map(|(_, raw)| raw)
            .or(heads.raw[0].as_ref());
        if let Some(raw) = raw {
            return frame::next_raw(raw).map(PictureSource::Raw);
        }
        if heads.es[0].is_some() {
            return Some(PictureSource::Keyframe(self.keyframes.clone()));
        }
        Some(PictureSource::NoVideo)
    }

    /// The first error the source posted, if any.
    pub fn error(&self) -> Option<String> {
        self.running.get().and_then(|r| r.error())
    }

    /// The running rendition for `key`, pinned (see [`Channel::unpin`]).
    pub fn find(&self, key: &RenditionKey) -> Option<Arc<Rendition>> {
        let st = self.state.lock();
        if st.closed {
            return None;
        }
        let r = st.renditions.get(key)?.clone();
        r.pin();
        Some(r)
    }

    /// The rendition for `key`, built on first use with `permit` as its
    /// slot and its `format` output (both before media flows into them, so
    /// the first keyframe reaches the output); returned pinned (see
    /// [`Channel::unpin`]).
    pub async fn rendition(
        &self,
        key: RenditionKey,
        profile: Profile,
        permit: Option<Permit>,
        format: Format,
    ) -> Result<Arc<Rendition>, MediaError> {
        let _build = self.build.lock().await;
        if let Some(r) = self.find(&key) {
            return Ok(r);
        }
        let closed = |ch: &Channel| MediaError::Ended(ch.ended().unwrap_or(EndReason::SourceError));
        let me = self.me.upgrade().ok_or_else(|| closed(self))?;
        let running = self.running.get().cloned().ok_or_else(|| closed(self))?;
        let r = Rendition::new(key.clone(), profile, permit, self.fanout_config);
        let heads = self.state.lock().heads.clone();
        let (on_output, on_eos) = self.output_hooks(&running);
        let built = match heads {
            None => {
                let (me2, r2, counted) = (me.clone(), r.clone(), self.in_bytes.clone());
                let keyframes = self.keyframes.clone();
                running
                    .activate(move |p, heads| {
                        count_input(heads, &counted);
                        if let Some(es) = &heads.es[0] {
                            keyframes.watch(es);
                        }
                        me2.build_rendition(p, heads, &r2)?;
                        r2.add_output(p, format, on_output, on_eos)
                            .map(drop)
                            .inspect_err(|_| r2.remove(p))
                    })
                    .await
                    .map(|(heads, ())| {
                        self.state.lock().heads = Some(heads);
                        *self.activated_at.lock() = Some(Instant::now());
                        if let Some(owner) = self.owner.upgrade() {
                            owner.channel_started(self);
                        }
                    })
            }
            Some(heads) => {
                let (me2, r2) = (me.clone(), r.clone());
                running
                    .build(move |p, _| {
                        me2.build_rendition(p, &heads, &r2)?;
                        // A rendition without its output comes off again.
                        r2.add_output(p, format, on_output, on_eos)
                            .map(drop)
                            .inspect_err(|_| r2.remove(p))
                    })
                    .await
            }
        };
        if let Err(e) = built {
            r.release();
            return Err(e);
        }
        let weak = self.me.clone();
        let k = key.clone();
        r.on_viewers(Arc::new(move |n| {
            if let (0, Some(ch)) = (n, weak.upgrade()) {
                ch.linger(&k);
            }
        }));
        let mut st = self.state.lock();
        if st.closed {
            drop(st);
            r.release();
            return Err(closed(self));
        }
        r.pin();
        st.renditions.insert(key, r.clone());
        Ok(r)
    }

    /// Builds `r`'s branch, with decoders as it needs them. Blocking thread.
    fn build_rendition(
        &self,
        p: &gst::Pipeline,
        heads: &Heads,
        r: &Arc<Rendition>,
    ) -> Result<(), MediaError> {
        r.build(p, heads, |k| {
            if let Some(raw) = &heads.raw[k] {
                return Ok(Some(raw.clone()));
            }
            let Some(es) = &heads.es[k] else {
                return Ok(None);
            };
            let mut st = self.state.lock();
            if let Some((_, raw)) = &st.decoders[k] {
                return Ok(Some(raw.clone()));
            }
            let (branch, raw) = chains::decoder(p, es, k == 0, heads.caps[k].as_deref())?;
            st.decoders[k] = Some((branch, raw.clone()));
            Ok(Some(raw))
        })
    }

    /// The container output `format` of `r`, built on first use.
    pub async fn output(
        &self,
        r: &Arc<Rendition>,
        format: Format,
    ) -> Result<Arc<Fanout>, MediaError> {
        if let Some(f) = r.fanout(format) {
            return Ok(f);
        }
        let _build = self.build.lock().await;
        let running = self
            .running
            .get()
            .cloned()
            .ok_or(MediaError::Ended(EndReason::SourceError))?;
        let (on_output, on_eos) = self.output_hooks(&running);
        let r2 = r.clone();
        running
            .build(move |p, _| r2.add_output(p, format, on_output, on_eos))
            .await
    }

    /// What a container output calls on each buffer (the stall clock) and
    /// at its end.
    #[allow(clippy::type_complexity)]
    fn output_hooks(
        &self,
        running: &Running,
    ) -> (
        Arc<dyn Fn() + Send + Sync>,
        Arc<dyn Fn() -> EndReason + Send + Sync>,
    ) {
        let on_output = running.output_clock();
        let weak = self.me.clone();
        let on_eos: Arc<dyn Fn() -> EndReason + Send + Sync> =
            Arc::new(move || match weak.upgrade() {
                Some(ch) => ch.output_ended(),
                None => EndReason::SourceEos,
            });
        (on_output, on_eos)
    }

    /// A container output reached its end; returns the reason its viewers
    /// end with. When every output has ended the channel ends.
    fn output_ended(&self) -> EndReason {
        if self.draining.load(Ordering::Acquire) {
            return EndReason::Shutdown;
        }
        let all = {
            let st = self.state.lock();
            st.renditions.values().all(|r| r.all_ended())
        };
        if all {
            self.stop(EndReason::SourceEos);
        }
        EndReason::SourceEos
    }

    /// Ends the channel and every viewer with `reason`; the pipeline goes
    /// to NULL off the runtime and slots are freed after it did.
    pub fn stop(&self, reason: EndReason) {
        if self.ended.set(reason).is_err() {
            return;
        }
        let renditions: Vec<Arc<Rendition>> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.renditions.values().cloned().collect()
        };
        for r in &renditions {
            r.finish(reason);
        }
        if let Some(owner) = self.owner.upgrade() {
            owner.channel_ended(self, reason, &renditions);
        }
        // Viewers deliver what they have queued, then end; one whose client
        // stopped reading is ended as slow once it has been behind too long.
        let (sweep, limit) = (
            renditions.clone(),
            self.fanout_config.buffer + self.fanout_config.stall,
        );
        self.runtime.spawn(async move {
            let until = tokio::time::Instant::now() + limit + Duration::from_secs(1);
            while tokio::time::Instant::now() < until && sweep.iter().any(|r| r.viewers() > 0) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for r in &sweep {
                    r.sweep();
                }
            }
        });
        let slot = self.slot.lock().take();
        if let Some((_, lease)) = &slot {
            lease.mark_closing();
        }
        let me = self.me.upgrade();
        let release = move || {
            for r in &renditions {
                r.release();
            }
            if let Some(me) = me {
                let mut st = me.state.lock();
                st.heads = None;
                st.decoders = [None, None];
            }
            drop(slot);
        };
        match self.running.get() {
            Some(run) => {
                run.on_teardown(Box::new(move |_| release()));
                run.end(reason);
            }
            None => release(),
        }
    }

    /// Ends the channel by letting every output finish its stream (EOS
    /// from the source), up to `deadline`, then stops it.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let began = match self.running.get() {
            Some(run) if self.state.lock().heads.is_some() => {
                self.draining.store(true, Ordering::Release);
                run.begin_drain(EndReason::Shutdown)
            }
            _ => false,
        };
        if began {
            loop {
                let done = self.state.lock().renditions.values().all(|r| r.all_ended());
                if done || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Give the viewers a moment to hand over the final bytes.
            let flush = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
            tokio::time::sleep_until(flush).await;
        }
        self.stop(EndReason::Shutdown);
    }
}

/// Counts the compressed bytes entering the stream heads.
fn count_input(heads: &Heads, counter: &Arc<AtomicU64>) {
    for es in heads.es.iter().flatten() {
        let Some(pad) = es.static_pad("sink") else {
            continue;
        };
        let c = counter.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                c.fetch_add(b.size() as u64, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
}
