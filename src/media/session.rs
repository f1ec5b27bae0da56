//! A running media session: the pipeline, its teardown, and the body stream
//! that carries its output to a client.
//!
//! Ending is exactly-once: [`MediaSession::end`] records one [`EndReason`];
//! every later attempt is a no-op. Teardown (state NULL) always runs on a
//! blocking thread, never on a tokio worker or a streaming thread, and the
//! `on_teardown` hooks (freeing the pool slot, bookkeeping) run only after
//! the pipeline has reached NULL. [`SessionBody`] ends the session as
//! `client_disconnect` when it is dropped before the session ended.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use gst::prelude::*;
use parking_lot::Mutex;

use super::ingest::{self, SourcePlan};
use super::pipeline::{self, Opened, Shared};
use super::reconnect::LossAction;
use super::{EndReason, Format, MediaError, Mode, SourceStreams};
use crate::profiles::Profile;
use crate::redact;

/// How many bytes one body chunk gathers from queued samples at most.
const MAX_CHUNK: usize = 256 * 1024;
/// After the last new source pad, how long to wait for more before deciding.
const PAD_SETTLE: Duration = Duration::from_millis(400);
/// The same while some stream found so far is not typed yet.
const UNTYPED_SETTLE: Duration = Duration::from_secs(3);
/// The same while no video has been typed but one exists or may still
/// appear: a preview without its picture is the worst outcome, and a live
/// stream joined mid-GOP types its video only at the next keyframe (the
/// parser has no SPS before it).
const VIDEO_SETTLE: Duration = Duration::from_secs(10);

/// How a session ended, handed to teardown hooks.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub reason: EndReason,
    pub bytes_sent: u64,
    pub duration: Duration,
}

/// Called once, after the pipeline reached NULL.
pub type TeardownHook = Box<dyn FnOnce(Ended) + Send>;

/// Live pipelines, for leak checks and `/metrics`.
static LIVE_PIPELINES: AtomicU64 = AtomicU64::new(0);

/// Pipelines built and not yet torn down to NULL.
pub fn live_pipelines() -> u64 {
    LIVE_PIPELINES.load(Ordering::SeqCst)
}

/// Media bytes handed to clients by every session, for `/metrics`.
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
/// GStreamer error domains, as counted in [`pipeline_errors`].
const ERROR_KINDS: [&str; 5] = ["core", "library", "resource", "stream", "other"];
static ERRORS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// Where a failing pipeline's graph is dumped (DOT) when debug logging is on.
static DOT_DIR: std::sync::RwLock<Option<std::path::PathBuf>> = std::sync::RwLock::new(None);

/// Bytes sent to clients by all sessions so far.
pub fn bytes_sent_total() -> u64 {
    BYTES_SENT.load(Ordering::Relaxed)
}

/// Failed pipelines so far, by the error domain of their first error.
pub fn pipeline_errors() -> [(&'static str, u64); 5] {
    std::array::from_fn(|i| (ERROR_KINDS[i], ERRORS[i].load(Ordering::Relaxed)))
}

/// Sets the directory for DOT dumps of failing pipelines (debug level only).
pub fn set_dot_dump_dir(dir: Option<std::path::PathBuf>) {
    if let Ok(mut d) = DOT_DIR.write() {
        *d = dir;
    }
}

fn count_error(err: &gst::glib::Error) {
    let i = if err.is::<gst::CoreError>() {
        0
    } else if err.is::<gst::LibraryError>() {
        1
    } else if err.is::<gst::ResourceError>() {
        2
    } else if err.is::<gst::StreamError>() {
        3
    } else {
        4
    };
    ERRORS[i].fetch_add(1, Ordering::Relaxed);
}

/// Writes the pipeline graph to `<dot dir>/<pipeline>-<ms>.dot` off the runtime.
fn dump_dot(pipeline: gst::Pipeline) {
    let Some(dir) = DOT_DIR.read().ok().and_then(|d| d.clone()) else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let dot = pipeline.debug_to_dot_data(gst::DebugGraphDetails::all());
        let path = dir.join(format!("{}-{}.dot", pipeline.name(), pipeline::now_ms()));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&path, redact::redact_text(dot.as_str())));
        match written {
            Ok(()) => tracing::debug!(path = %path.display(), "pipeline graph dumped"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not dump the pipeline graph")
            }
        }
    });
}

/// Takes one pipeline off [`LIVE_PIPELINES`] when dropped.
struct Uncount;

impl Drop for Uncount {
    fn drop(&mut self) {
        LIVE_PIPELINES.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct MediaSession {
    pipeline: Mutex<Option<gst::Pipeline>>,
    opened: Mutex<Option<Opened>>,
    appsink: Mutex<Option<gst_app::AppSink>>,
    pub shared: Arc<Shared>,
    reason: OnceLock<EndReason>,
    /// Set once the first byte was handed to the client.
    started: AtomicBool,
    /// First error from the bus (credential-free), if any.
    error: Mutex<Option<String>>,
    hooks: Mutex<Vec<TeardownHook>>,
    /// The session's first error has been counted in [`pipeline_errors`].
    error_counted: AtomicBool,
    torn_down: AtomicBool,
    pub bytes_sent: AtomicU64,
    pub started_at: Instant,
    format: Format,
}

impl MediaSession {
    /// Opens the source part of a pipeline off the runtime and starts
    /// watching its bus.
    pub async fn open(
        name: String,
        plan: SourcePlan,
        format: Format,
    ) -> Result<Arc<MediaSession>, MediaError> {
        // The opened pipeline is handed over through a channel: if the
        // caller is gone by then (the client hung up), the blocking task
        // itself brings it back to NULL and uncounts it.
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<Opened, MediaError>>();
        tokio::task::spawn_blocking(move || {
            LIVE_PIPELINES.fetch_add(1, Ordering::SeqCst);
            let counted = Uncount;
            match pipeline::open(&name, plan, format) {
                Ok(opened) => {
                    if let Err(Ok(opened)) = tx.send(Ok(opened)) {
                        let _ = opened.pipeline.set_state(gst::State::Null);
                    } else {
                        std::mem::forget(counted);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let opened = match rx.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(MediaError::SourceFailed("pipeline set-up panicked".into())),
        };
        let session = Arc::new(MediaSession {
            pipeline: Mutex::new(Some(opened.pipeline.clone())),
            shared: opened.shared.clone(),
            opened: Mutex::new(Some(opened)),
            appsink: Mutex::new(None),
            reason: OnceLock::new(),
            started: AtomicBool::new(false),
            error: Mutex::new(None),
            hooks: Mutex::new(Vec::new()),
            error_counted: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            started_at: Instant::now(),
            format,
        });
        session.watch_bus();
        Ok(session)
    }

    /// Registers a hook run after teardown (immediately if already torn down).
    pub fn on_teardown(&self, hook: TeardownHook) {
        let mut hooks = self.hooks.lock();
        if self.torn_down.load(Ordering::Acquire) {
            drop(hooks);
            hook(self.ended_info());
        } else {
            hooks.push(hook);
        }
    }

    fn watch_bus(self: &Arc<Self>) {
        let Some(bus) = self.pipeline.lock().as_ref().and_then(|p| p.bus()) else {
            return;
        };
        // Errors are tagged with their source generation where they are
        // posted, while the posting element is still in the pipeline.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(gst::Message, Option<u64>)>();
        let forward = move |msg: &gst::Message| match msg.view() {
            gst::MessageView::Error(err) => {
                let gen = err.src().and_then(ingest::generation_of);
                let _ = tx.send((msg.clone(), gen));
            }
            gst::MessageView::Application(_) => {
                let _ = tx.send((msg.clone(), None));
            }
            _ => {}
        };
        let forward = Arc::new(forward);
        let f = forward.clone();
        bus.set_sync_handler(move |_, msg| {
            f(msg);
            gst::BusSyncReply::Drop
        });
        // Messages posted while the source was opening, before the handler.
        while let Some(msg) = bus.pop() {
            forward(&msg);
        }
        drop(forward);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        // Re-check periodically so the task ends with its session.
                        match weak.upgrade() {
                            Some(s) if !s.torn_down.load(Ordering::Acquire) => continue,
                            _ => break,
                        }
                    }
                };
                let Some((msg, gen)) = next else { break };
                let Some(session) = weak.upgrade() else { break };
                match msg.view() {
                    gst::MessageView::Error(err) => {
                        let src = err
                            .src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default();
                        let text = describe_error(&err.error(), err.debug().as_deref());
                        tracing::warn!(element = %src, error = %text, "pipeline error");
                        if !session.error_counted.swap(true, Ordering::AcqRel) {
                            count_error(&err.error());
                        }
                        match gen {
                            Some(gen) => session.source_lost(gen, text),
                            None => session.fail(text),
                        }
                    }
                    gst::MessageView::Application(app) => {
                        let Some(s) = app.structure() else { continue };
                        let reason = s.get::<String>("reason").unwrap_or_default();
                        if s.name() == ingest::SOURCE_LOST {
                            let gen = s.get::<u64>("generation").unwrap_or(0);
                            session.source_lost(gen, reason);
                        } else if s.name() == ingest::SOURCE_GONE {
                            session.fail(reason);
                        }
                    }
                    _ => {}
                }
                if session.torn_down.load(Ordering::Acquire) {
                    break;
                }
            }
        });
    }

    /// The source's generation `gen` failed or ended: reconnect or fail.
    fn source_lost(&self, gen: u64, why: String) {
        let action = match self.opened.lock().as_ref() {
            Some(o) => o.source_lost(gen, &why),
            None => LossAction::Ignored,
        };
        if action == LossAction::Fatal {
            self.fail(why);
        }
        self.shared.notify.notify_waiters();
    }

    /// Records the first error and ends a started session as a source error
    /// (a starting one fails with that error).
    fn fail(&self, text: String) {
        if self.error.lock().is_none() && tracing::enabled!(tracing::Level::DEBUG) {
            if let Some(p) = self.pipeline.lock().clone() {
                dump_dot(p);
            }
        }
        self.error.lock().get_or_insert(text);
        if self.started.load(Ordering::Acquire) {
            self.end(EndReason::SourceError);
        }
        self.shared.notify.notify_waiters();
        self.shared.waker.wake();
    }

    /// The first pipeline error, if one was posted.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Waits until the source's streams are known (or it fails).
    pub async fn streams(&self) -> Result<SourceStreams, MediaError> {
        let mut settle_from: Option<(usize, bool, Instant)> = None;
        loop {
            let notified = self.shared.notify.notified();
            if let Some(e) = self.error() {
                return Err(MediaError::SourceFailed(e));
            }
            if let Some(r) = self.reason() {
                return Err(MediaError::Ended(r));
            }
            {
                let opened = self.opened.lock();
                let Some(o) = opened.as_ref() else {
                    return Err(MediaError::Ended(EndReason::SourceError));
                };
                if o.streams_known() {
                    tracing::debug!(state = %o.pad_state(), "streams known");
                    return Ok(o.streams());
                }
                if o.any_stream() {
                    let found = o.streams();
                    // Only the first video and the first audio stream are
                    // used: once both are typed, nothing that appears later
                    // can change the decision. (A demuxer inside parsebin,
                    // such as tsdemux, may never signal no-more-pads.)
                    if found.video.is_some() && found.audio.is_some() {
                        return Ok(found);
                    }
                    let n = found.video.is_some() as usize + found.audio.is_some() as usize;
                    let typed = o.streams_typed();
                    let wait_for_video = found.video.is_none() && (!typed || o.video_stream_seen());
                    if wait_for_video {
                        o.lengthen_holds();
                    }
                    // The wait restarts whenever what was found changes, so
                    // a decision always follows a whole settle period of
                    // the same streams in the same state.
                    match settle_from {
                        Some((seen, was_typed, at)) if seen == n && was_typed == typed => {
                            // Streams still being typed (rtspsrc adds its
                            // pads one by one) get longer to show up.
                            let settle = if wait_for_video {
                                VIDEO_SETTLE
                            } else if typed {
                                PAD_SETTLE
                            } else {
                                UNTYPED_SETTLE
                            };
                            if at.elapsed() >= settle {
                                tracing::debug!(state = %o.pad_state(), settle_ms = settle.as_millis() as u64, "streams settled");
                                return Ok(o.streams());
                            }
                        }
                        _ => settle_from = Some((n, typed, Instant::now())),
                    }
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Builds the output side for `mode` (off the runtime) and starts it.
    pub async fn commit(self: &Arc<Self>, mode: Mode, profile: Profile) -> Result<(), MediaError> {
        let this = self.clone();
        let appsink = tokio::task::spawn_blocking(move || {
            let opened = this.opened.lock();
            match opened.as_ref() {
                Some(o) if this.reason().is_none() => o.commit(mode, &profile),
                _ => Err(MediaError::Ended(
                    this.reason().unwrap_or(EndReason::SourceError),
                )),
            }
        })
        .await
        .map_err(|e| MediaError::SourceFailed(format!("pipeline set-up panicked: {e}")))??;
        *self.appsink.lock() = Some(appsink);
        Ok(())
    }

    /// Waits for the first output bytes; returns them to be sent first.
    pub async fn first_bytes(self: &Arc<Self>) -> Result<Bytes, MediaError> {
        loop {
            let notified = self.shared.notify.notified();
            if let Some(r) = self.reason() {
                return Err(MediaError::Ended(r));
            }
            if let Some(bytes) = self.pull_available() {
                // MPEG-TS clients expect PAT/PMT first; mpegtsmux writes its
                // tables with the first video keyframe, after any early audio.
                let bytes = match self.format {
                    Format::Ts => match from_first_pat(&bytes) {
                        Some(b) => b,
                        None => continue,
                    },
                    Format::Mp4 => bytes,
                };
                self.started.store(true, Ordering::Release);
                return Ok(bytes);
            }
            if let Some(e) = self.error() {
                return Err(MediaError::SourceFailed(e));
            }
            if self.shared.eos.load(Ordering::Acquire) {
                return Err(MediaError::SourceFailed(
                    "the source ended before producing any media".into(),
                ));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Pulls every queued sample (up to [`MAX_CHUNK`]) without blocking.
    fn pull_available(&self) -> Option<Bytes> {
        let appsink = self.appsink.lock().clone()?;
        let mut first: Option<Bytes> = None;
        let mut chunk: Option<BytesMut> = None;
        while chunk.as_ref().map_or(0, |c| c.len()) + first.as_ref().map_or(0, |f| f.len())
            < MAX_CHUNK
        {
            let Some(sample) = appsink.try_pull_sample(gst::ClockTime::ZERO) else {
                break;
            };
            let mut push = |data: &[u8]| match (&mut first, &mut chunk) {
                (None, _) => first = Some(Bytes::copy_from_slice(data)),
                (Some(f), None) => {
                    let mut c = BytesMut::with_capacity(MAX_CHUNK.min(f.len() + data.len() * 8));
                    c.extend_from_slice(f);
                    c.extend_from_slice(data);
                    chunk = Some(c);
                }
                (Some(_), Some(c)) => c.extend_from_slice(data),
            };
            if let Some(list) = sample.buffer_list() {
                for b in list.iter() {
                    if let Ok(map) = b.map_readable() {
                        push(map.as_slice());
                    }
                }
            } else if let Some(b) = sample.buffer() {
                if let Ok(map) = b.map_readable() {
                    push(map.as_slice());
                }
            }
        }
        let out = match chunk {
            Some(c) => Some(c.freeze()),
            None => first,
        }?;
        self.bytes_sent
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        BYTES_SENT.fetch_add(out.len() as u64, Ordering::Relaxed);
        Some(out)
    }

    pub fn reason(&self) -> Option<EndReason> {
        self.reason.get().copied()
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Ends the session for `reason` and tears the pipeline down. Returns
    /// whether this call was the one that ended it.
    pub fn end(&self, reason: EndReason) -> bool {
        self.shared.closing.store(true, Ordering::Release);
        let first = self.reason.set(reason).is_ok();
        if first {
            self.shared.waker.wake();
            self.shared.notify.notify_waiters();
        }
        self.teardown();
        first
    }

    /// Ends the session by letting the pipeline finish: EOS is sent so the
    /// client receives a complete stream; after `grace` it is forced down.
    pub async fn drain(self: &Arc<Self>, reason: EndReason, grace: Duration) {
        if self.reason.set(reason).is_err() {
            return;
        }
        // From here the source's EOS ends the stream instead of reconnecting.
        self.shared.closing.store(true, Ordering::Release);
        let pipeline = self.pipeline.lock().clone();
        let committed = self.appsink.lock().is_some();
        if let (Some(p), true) = (pipeline, committed) {
            let deadline = Instant::now() + grace;
            tokio::task::spawn_blocking(move || {
                p.send_event(gst::event::Eos::new());
            });
            // The body stream ends when it has delivered everything up to EOS.
            while Instant::now() < deadline && !self.torn_down.load(Ordering::Acquire) {
                let notified = self.shared.notify.notified();
                if self.shared.eos.load(Ordering::Acquire) && self.appsink_empty() {
                    break;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            // Give the body a moment to hand over the final chunk.
            let flush_deadline = Instant::now() + Duration::from_millis(500).min(grace);
            while Instant::now() < flush_deadline && !self.torn_down.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.shared.waker.wake();
        self.shared.notify.notify_waiters();
        self.teardown();
    }

    fn appsink_empty(&self) -> bool {
        self.appsink.lock().as_ref().is_none_or(|s| s.is_eos())
    }

    /// Seconds since the last sample reached the appsink.
    pub fn idle_ms(&self) -> u64 {
        pipeline::now_ms().saturating_sub(self.shared.last_sample_ms.load(Ordering::Relaxed))
    }

    /// Sets the pipeline to NULL on a blocking thread, once, then runs hooks.
    fn teardown(&self) {
        let Some(pipeline) = self.pipeline.lock().take() else {
            return;
        };
        let opened = self.opened.lock().take();
        let appsink = self.appsink.lock().take();
        let hooks: Vec<TeardownHook> = std::mem::take(&mut *self.hooks.lock());
        let info = self.ended_info();
        let reason = info.reason;
        let shared = self.shared.clone();
        let job = move || {
            let t0 = Instant::now();
            if let Err(e) = pipeline.set_state(gst::State::Null) {
                tracing::warn!(error = %e, "pipeline did not reach NULL cleanly");
            }
            drop(appsink);
            drop(opened);
            drop(pipeline);
            LIVE_PIPELINES.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!(
                ms = t0.elapsed().as_millis() as u64,
                reason = reason.as_str(),
                "pipeline torn down"
            );
            for hook in hooks {
                hook(info);
            }
            shared.waker.wake();
            shared.notify.notify_waiters();
            crate::memory::trim();
        };
        // Mark first so hooks registered from now on run immediately.
        self.torn_down.store(true, Ordering::Release);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(job);
            }
            Err(_) => {
                std::thread::spawn(job);
            }
        }
    }

    fn ended_info(&self) -> Ended {
        Ended {
            reason: self.reason().unwrap_or(EndReason::SourceError),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            duration: self.started_at.elapsed(),
        }
    }

    pub fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::Acquire)
    }

    /// A weak handle to the pipeline, for leak checks.
    pub fn pipeline_weak(&self) -> Option<gst::glib::WeakRef<gst::Pipeline>> {
        self.pipeline.lock().as_ref().map(|p| p.downgrade())
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        // Last line of defence: never drop a pipeline that is not NULL.
        self.end(EndReason::SourceError);
    }
}

/// The TS data from the first PAT packet on (None if there is none yet).
fn from_first_pat(data: &Bytes) -> Option<Bytes> {
    const PACKET: usize = 188;
    (0..data.len())
        .step_by(PACKET)
        .find(|&i| {
            i + 3 <= data.len() && data[i] == 0x47 && data[i + 1] & 0x1f == 0 && data[i + 2] == 0
        })
        .map(|i| data.slice(i..))
}

pub(super) fn describe_error(err: &gst::glib::Error, debug: Option<&str>) -> String {
    let mut text = err.message().to_string();
    if let Some(d) = debug {
        // The last line of GStreamer's debug text is usually the useful reason.
        if let Some(reason) = d.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            let reason: String = reason.chars().take(300).collect();
            if !text.contains(&reason) {
                text = format!("{text} ({reason})");
            }
        }
    }
    redact::redact_text(&text)
}

/// The HTTP body of a session: its bytes, with backpressure from not being
/// polled. Dropping it before the session ended ends it as `client_disconnect`.
pub struct SessionBody {
    session: Arc<MediaSession>,
    first: Option<Bytes>,
}

impl SessionBody {
    pub fn new(session: Arc<MediaSession>, first: Bytes) -> Self {
        Self {
            session,
            first: Some(first),
        }
    }
}

impl Stream for SessionBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let s = &self.session;
        // Register before checking so a wake between check and return is not lost.
        s.shared.waker.register(cx.waker());
        if let Some(bytes) = s.pull_available() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        if s.shared.eos.load(Ordering::Acquire) {
            // Everything up to EOS was delivered: a clean end.
            s.end(EndReason::SourceEos);
            return Poll::Ready(None);
        }
        match s.reason() {
            None => Poll::Pending,
            Some(EndReason::SourceError) => Poll::Ready(Some(Err(std::io::Error::other(
                s.error().unwrap_or_else(|| "source failed".into()),
            )))),
            Some(_) if s.is_torn_down() => Poll::Ready(None),
            // Draining (shutdown): keep delivering until EOS or teardown.
            Some(EndReason::Shutdown) => Poll::Pending,
            Some(_) => Poll::Ready(None),
        }
    }
}

impl Drop for SessionBody {
    fn drop(&mut self) {
        self.session.end(EndReason::ClientDisconnect);
    }
}
