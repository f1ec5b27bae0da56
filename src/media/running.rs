//! A channel's running pipeline: its source, bus watch, reconnects and
//! teardown. What hangs off its stream heads (decoders, renditions,
//! container outputs) is built by the channel through [`Running::build`].
//!
//! Ending is exactly-once: [`Running::end`] records one [`EndReason`];
//! every later attempt is a no-op. Teardown (state NULL) always runs on a
//! blocking thread, never on a tokio worker or a streaming thread, and the
//! `on_teardown` hooks (freeing slots, bookkeeping) run only after the
//! pipeline has reached NULL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gst::prelude::*;
use parking_lot::Mutex;

use super::failure::{describe_error, dump_dot};
use super::handoff::{forward_bus, open_off_runtime};
use super::held::SOURCE_LOST;
use super::ingest::SourcePlan;
use super::pipeline::{Heads, Opened};
use super::reconnect::{LossAction, SOURCE_GONE};
use super::settle::Settle;
use super::shared::{now_ms, Shared};
use super::stats::MediaStats;
use super::{EndReason, MediaError, SourceStreams};

/// Called when a started pipeline fails for good.
pub type FailureHook = Arc<dyn Fn() + Send + Sync>;

/// Called once, after the pipeline reached NULL, with the end reason.
pub type TeardownHook = Box<dyn FnOnce(EndReason) + Send>;

pub struct Running {
    pipeline: Mutex<Option<gst::Pipeline>>,
    opened: Mutex<Option<Opened>>,
    shared: Arc<Shared>,
    reason: OnceLock<EndReason>,
    /// Set once the channel's media flows.
    started: AtomicBool,
    /// First error from the bus (credential-free), if any.
    error: Mutex<Option<String>>,
    hooks: Mutex<Vec<TeardownHook>>,
    /// Called (on the async runtime) when a started pipeline fails.
    on_failure: Mutex<Option<FailureHook>>,
    /// The pipeline's first error has been counted (see [`MediaStats::count_error`]).
    error_counted: AtomicBool,
    torn_down: AtomicBool,
    pub started_at: Instant,
    stats: Arc<MediaStats>,
}

impl Running {
    /// Opens the source part of a pipeline off the runtime and starts
    /// watching its bus.
    pub async fn open(
        name: String,
        plan: SourcePlan,
        stats: Arc<MediaStats>,
    ) -> Result<Arc<Running>, MediaError> {
        let opened = open_off_runtime(name, plan, stats.clone()).await?;
        let running = Arc::new(Running {
            pipeline: Mutex::new(Some(opened.pipeline.clone())),
            shared: opened.shared.clone(),
            opened: Mutex::new(Some(opened)),
            reason: OnceLock::new(),
            started: AtomicBool::new(false),
            error: Mutex::new(None),
            hooks: Mutex::new(Vec::new()),
            on_failure: Mutex::new(None),
            error_counted: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            started_at: Instant::now(),
            stats,
        });
        running.watch_bus();
        Ok(running)
    }

    /// Registers a hook run after teardown (immediately if already torn down).
    pub fn on_teardown(&self, hook: TeardownHook) {
        let mut hooks = self.hooks.lock();
        if self.torn_down.load(Ordering::Acquire) {
            drop(hooks);
            hook(self.reason().unwrap_or(EndReason::SourceError));
        } else {
            hooks.push(hook);
        }
    }

    /// Sets what runs when the started pipeline fails for good.
    pub fn on_failure(&self, f: FailureHook) {
        *self.on_failure.lock() = Some(f);
    }

    fn watch_bus(self: &Arc<Self>) {
        let Some(bus) = self.pipeline.lock().as_ref().and_then(|p| p.bus()) else {
            return;
        };
        let mut rx = forward_bus(&bus);
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
                            session.stats.count_error(&err.error());
                        }
                        match gen {
                            Some(gen) => session.source_lost(gen, text),
                            None => session.fail(text),
                        }
                    }
                    gst::MessageView::Application(app) => {
                        let Some(s) = app.structure() else { continue };
                        let reason = s.get::<String>("reason").unwrap_or_default();
                        if s.name() == SOURCE_LOST {
                            let gen = s.get::<u64>("generation").unwrap_or(0);
                            session.source_lost(gen, reason);
                        } else if s.name() == SOURCE_GONE {
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

    /// Records the first error; a started pipeline then fails as a whole
    /// (its owner ends it as a source error).
    fn fail(&self, text: String) {
        if self.error.lock().is_none() && tracing::enabled!(tracing::Level::DEBUG) {
            if let Some(p) = self.pipeline.lock().clone() {
                dump_dot(p, &self.stats);
            }
        }
        self.error.lock().get_or_insert(text);
        if self.started.load(Ordering::Acquire) {
            // Called without the lock: the hook ends the pipeline.
            let hook = self.on_failure.lock().clone();
            if let Some(f) = hook {
                f();
            }
        }
        self.shared.notify.notify_waiters();
    }

    /// The first pipeline error, if one was posted.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Waits until the source's streams are known (or it fails); `settle`
    /// says when they are.
    pub async fn streams(&self) -> Result<SourceStreams, MediaError> {
        let mut settle = Settle::default();
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
                if let Some(found) = settle.check(o) {
                    return Ok(found);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Runs `f` with the pipeline and its source on a blocking thread (it
    /// may change element states); fails if the pipeline has ended.
    pub async fn build<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&gst::Pipeline, &Opened) -> Result<R, MediaError> + Send + 'static,
    ) -> Result<R, MediaError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let opened = this.opened.lock();
            match (opened.as_ref(), this.reason()) {
                (Some(o), None) => f(&o.pipeline, o),
                (_, r) => Err(MediaError::Ended(r.unwrap_or(EndReason::SourceError))),
            }
        })
        .await
        .map_err(|e| MediaError::SourceFailed(format!("pipeline set-up panicked: {e}")))?
    }

    /// Builds the stream heads and hands them to `first` (which hangs the
    /// first rendition off them), then lets the media flow. Off the runtime.
    pub async fn activate<R: Send + 'static>(
        self: &Arc<Self>,
        first: impl FnOnce(&gst::Pipeline, &Heads) -> Result<R, MediaError> + Send + 'static,
    ) -> Result<(Heads, R), MediaError> {
        let out = self
            .build(move |p, o| {
                let heads = o.activate()?;
                let r = first(p, &heads);
                o.release();
                Ok((heads, r?))
            })
            .await?;
        self.started.store(true, Ordering::Release);
        Ok(out)
    }

    pub fn reason(&self) -> Option<EndReason> {
        self.reason.get().copied()
    }

    /// Ends the pipeline for `reason` and tears it down. Returns whether
    /// this call was the one that ended it.
    pub fn end(&self, reason: EndReason) -> bool {
        self.shared.closing.store(true, Ordering::Release);
        let first = self.reason.set(reason).is_ok();
        if first {
            self.shared.notify.notify_waiters();
        }
        self.teardown();
        first
    }

    /// Starts ending the pipeline by letting it finish: EOS is sent from
    /// the source, so every output completes its stream. The owner waits
    /// for its outputs and then calls [`Running::end`].
    pub fn begin_drain(&self, reason: EndReason) -> bool {
        if self.reason.set(reason).is_err() {
            return false;
        }
        // From here the source's EOS ends the stream instead of reconnecting.
        self.shared.closing.store(true, Ordering::Release);
        if let Some(p) = self.pipeline.lock().clone() {
            tokio::task::spawn_blocking(move || {
                p.send_event(gst::event::Eos::new());
            });
        }
        true
    }

    /// Ms since the last output any rendition made.
    pub fn idle_ms(&self) -> u64 {
        now_ms().saturating_sub(self.shared.last_sample_ms.load(Ordering::Relaxed))
    }

    /// What an output calls on each buffer it makes: the stall clock.
    /// (Holds no pipeline object.)
    pub fn output_clock(&self) -> Arc<dyn Fn() + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || shared.last_sample_ms.store(now_ms(), Ordering::Relaxed))
    }

    /// A lost source is being reconnected.
    pub fn reconnecting(&self) -> bool {
        self.shared.reconnecting.load(Ordering::Acquire)
    }

    /// Times the source dropped and was reconnected.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Sets the pipeline to NULL on a blocking thread, once, then runs hooks.
    fn teardown(&self) {
        let Some(pipeline) = self.pipeline.lock().take() else {
            return;
        };
        let opened = self.opened.lock().take();
        let hooks: Vec<TeardownHook> = std::mem::take(&mut *self.hooks.lock());
        self.on_failure.lock().take();
        let reason = self.reason().unwrap_or(EndReason::SourceError);
        let shared = self.shared.clone();
        let stats = self.stats.clone();
        let job = move || {
            let t0 = Instant::now();
            if let Err(e) = pipeline.set_state(gst::State::Null) {
                tracing::warn!(error = %e, "pipeline did not reach NULL cleanly");
            }
            drop(opened);
            drop(pipeline);
            stats.pipeline_freed();
            tracing::debug!(
                ms = t0.elapsed().as_millis() as u64,
                reason = reason.as_str(),
                "pipeline torn down"
            );
            for hook in hooks {
                hook(reason);
            }
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

    pub fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::Acquire)
    }

    /// A weak handle to the pipeline, for leak checks.
    pub fn pipeline_weak(&self) -> Option<gst::glib::WeakRef<gst::Pipeline>> {
        self.pipeline.lock().as_ref().map(|p| p.downgrade())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Last line of defence: never drop a pipeline that is not NULL.
        self.end(EndReason::SourceError);
    }
}
