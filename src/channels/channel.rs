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
use serde::Serialize;

use super::fanout::{Fanout, FanoutConfig};
use super::rendition::{Rendition, RenditionKey, RenditionView};
use super::Channels;
use crate::media::chains::{self, Branch};
use crate::media::ingest::SourcePlan;
use crate::media::pipeline::Heads;
use crate::media::running::Running;
use crate::media::stats::MediaStats;
use crate::media::{EndReason, Format, MediaError, Mode, SourceStreams};
use crate::pool::{Permit, Slot};
use crate::profiles::Profile;

#[derive(Default)]
struct State {
    renditions: BTreeMap<RenditionKey, Arc<Rendition>>,
    heads: Option<Heads>,
    /// Per stream (0 video, 1 audio): the decoder branch and its raw tee.
    decoders: [Option<(Branch, gst::Element)>; 2],
    closed: bool,
}

pub struct Channel {
    pub stream_id: String,
    pub stream_name: String,
    /// Source protocol (`http`, `rtsp`, `test`, ...).
    pub protocol: String,
    pub start_ms: u64,
    started_at: Instant,
    plan: SourcePlan,
    fanout_config: FanoutConfig,
    linger: Duration,
    owner: Weak<Channels>,
    me: Weak<Channel>,
    /// Serialises opening the source and changing the graph.
    build: tokio::sync::Mutex<()>,
    running: OnceLock<Arc<Running>>,
    streams: OnceLock<SourceStreams>,
    state: Mutex<State>,
    slot: Mutex<Option<Slot>>,
    ended: OnceLock<EndReason>,
    /// Requests using the channel that hold no rendition yet.
    users: AtomicUsize,
    draining: AtomicBool,
    /// The runtime that timers and teardown run on (callbacks may come
    /// from GStreamer's streaming threads).
    runtime: tokio::runtime::Handle,
    /// Compressed bytes the source handed to the stream heads.
    in_bytes: Arc<AtomicU64>,
    activated_at: Mutex<Option<Instant>>,
    stats: Arc<MediaStats>,
}

/// A channel as status shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    pub stream_id: String,
    pub stream_name: String,
    pub state: &'static str,
    pub start_time: u64,
    pub upstream: UpstreamView,
    pub renditions: Vec<RenditionView>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamView {
    pub protocol: String,
    pub reconnects: u64,
    pub bitrate_kbps: u64,
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
        slot: Slot,
        stats: Arc<MediaStats>,
    ) -> Arc<Channel> {
        Arc::new_cyclic(|me| Channel {
            stream_id,
            stream_name,
            protocol,
            start_ms: crate::sessions::epoch_ms(),
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
            ended: OnceLock::new(),
            users: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            in_bytes: Arc::new(AtomicU64::new(0)),
            activated_at: Mutex::new(None),
            stats,
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
                running
                    .activate(move |p, heads| {
                        count_input(heads, &counted);
                        me2.build_rendition(p, heads, &r2)?;
                        r2.add_output(p, format, on_output, on_eos).map(drop)
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
                        r2.add_output(p, format, on_output, on_eos).map(drop)
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
        r: &Rendition,
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

    /// A request that joined `r` is done joining (it has subscribed, or
    /// failed); an unwatched rendition then starts its linger.
    pub fn unpin(&self, r: &Arc<Rendition>) {
        r.unpin();
        if r.idle() {
            self.linger(&r.key);
        }
    }

    /// Stops the rendition `key` after the linger unless a viewer comes.
    fn linger(&self, key: &RenditionKey) {
        let Some(me) = self.me.upgrade() else { return };
        let epoch = match self.state.lock().renditions.get(key) {
            Some(r) => r.epoch.load(Ordering::Acquire),
            None => return,
        };
        let key = key.clone();
        let linger = self.linger;
        let reap = async move {
            tokio::time::sleep(linger).await;
            me.reap(&key, epoch).await;
        };
        self.runtime.spawn(reap);
    }

    async fn reap(self: &Arc<Self>, key: &RenditionKey, epoch: u64) {
        let _build = self.build.lock().await;
        let gone = {
            let mut st = self.state.lock();
            let idle = st
                .renditions
                .get(key)
                .is_some_and(|r| r.idle() && r.epoch.load(Ordering::Acquire) == epoch);
            if st.closed || !idle {
                return;
            }
            if st.renditions.len() == 1 {
                None
            } else {
                st.renditions.remove(key)
            }
        };
        let Some(r) = gone else {
            tracing::info!(stream_id = %self.stream_id, "channel unwatched: closing it");
            self.stop(EndReason::ClientDisconnect);
            return;
        };
        tracing::info!(stream_id = %self.stream_id, quality = %r.key.quality, mode = r.key.mode.as_str(), "rendition unwatched: stopping it");
        if let Some(owner) = self.owner.upgrade() {
            owner.rendition_gone(&r);
        }
        let Some(running) = self.running.get().cloned() else {
            r.release();
            return;
        };
        let me = self.clone();
        let r2 = r.clone();
        let removed = running
            .build(move |p, _| {
                r2.remove(p);
                me.drop_unused_decoders(p);
                Ok(())
            })
            .await;
        if removed.is_err() {
            r.release();
        }
    }

    /// Takes the decoders down when no transcode rendition is left.
    fn drop_unused_decoders(&self, p: &gst::Pipeline) {
        let taken: Vec<Branch> = {
            let mut st = self.state.lock();
            if st.renditions.keys().any(|k| k.mode == Mode::Transcode) {
                return;
            }
            st.decoders
                .iter_mut()
                .filter_map(|d| d.take().map(|(b, _)| b))
                .collect()
        };
        for b in taken {
            b.remove(p);
        }
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

    /// Ms since the pipeline's last output; None while nothing runs.
    pub fn idle_ms(&self) -> Option<u64> {
        let run = self.running.get()?;
        let st = self.state.lock();
        if st.heads.is_none() || st.closed || run.reconnecting() {
            return None;
        }
        Some(run.idle_ms())
    }

    /// The renditions running now.
    pub fn renditions(&self) -> Vec<Arc<Rendition>> {
        self.state.lock().renditions.values().cloned().collect()
    }

    /// Decoders running now (video, audio).
    pub fn decoders(&self) -> [bool; 2] {
        let st = self.state.lock();
        [st.decoders[0].is_some(), st.decoders[1].is_some()]
    }

    /// Whether an upstream connection is open.
    pub fn connected(&self) -> bool {
        self.running.get().is_some_and(|r| !r.is_torn_down())
    }

    /// A weak handle to the pipeline, for leak checks.
    pub fn pipeline_weak(&self) -> Option<gst::glib::WeakRef<gst::Pipeline>> {
        self.running.get().and_then(|r| r.pipeline_weak())
    }

    /// The factory name of the running video decoder, if any.
    fn video_decoder(&self) -> Option<String> {
        let st = self.state.lock();
        let (branch, _) = st.decoders[0].as_ref()?;
        let bin = branch
            .elements()
            .iter()
            .find_map(|e| e.downcast_ref::<gst::Bin>().cloned())?;
        let found = bin.iterate_recurse().into_iter().flatten().find_map(|e| {
            let f = e.factory()?;
            f.metadata("klass")
                .is_some_and(|k| k.contains("Decoder"))
                .then(|| f.name().to_string())
        });
        found
    }

    pub fn view(&self) -> ChannelView {
        let run = self.running.get();
        let state = if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if self.ended().is_some() {
            "stopping"
        } else if self.state.lock().heads.is_none() {
            "starting"
        } else if run.is_some_and(|r| r.reconnecting()) {
            "reconnecting"
        } else {
            "running"
        };
        let secs = self
            .activated_at
            .lock()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let bitrate_kbps = if secs > 0.5 {
            (self.in_bytes.load(Ordering::Relaxed) as f64 * 8.0 / secs / 1000.0) as u64
        } else {
            0
        };
        let decoder = self.video_decoder();
        ChannelView {
            stream_id: self.stream_id.clone(),
            stream_name: self.stream_name.clone(),
            state,
            start_time: self.start_ms,
            upstream: UpstreamView {
                protocol: self.protocol.clone(),
                reconnects: run.map_or(0, |r| r.reconnects()),
                bitrate_kbps,
            },
            renditions: self
                .renditions()
                .iter()
                .map(|r| r.view(decoder.clone()))
                .collect(),
        }
    }

    /// How long the channel has existed.
    pub fn age(&self) -> Duration {
        self.started_at.elapsed()
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
