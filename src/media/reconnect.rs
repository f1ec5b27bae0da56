//! Keeping a session alive when its source drops.
//!
//! Before the output side exists, a failing source is replaced by the next
//! URI of the plan (primary, then `backupUrls` in order), once each. After
//! it exists, a live source that fails or ends is reconnected with backoff —
//! the same URI first, then the others in turn — within the plan's
//! reconnect budget, while the client stays connected. The new generation
//! is spliced onto the running branches: video from its first keyframe, all
//! streams shifted (pad offset) so running time continues where the old
//! generation stopped, so the client receives one stream with monotonic
//! timestamps. When the budget runs out, [`SOURCE_GONE`] is posted and the
//! session ends as a source error.
//!
//! A reconnect holds once its source has run [`STABLE_AFTER`]. A source
//! lost again before that (an HLS playlist that ended for good replays its
//! last window and ends again; a server that accepts and drops) continues
//! the same outage: its budget and backoff go on from where they were, so
//! a source that keeps coming back for a moment still ends the session
//! when the budget is spent rather than looping.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::chains::add_keyframe_gate;
use super::held::{discard, SOURCE_LOST};
use super::ingest::{self, SourcePlan};
use super::pipeline::Opened;
use super::shared::{is_audio, is_video, now_ms, stream_index, Shared};
use crate::redact;

/// Application message posted when reconnecting gave up.
pub const SOURCE_GONE: &str = "sluice-source-gone";

/// Longest wait for a new generation's streams.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay; doubles each round through the URIs, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Gap left between the last running time before a splice and the first after.
const SPLICE_GAP_NS: u64 = 1_000_000;
/// How long a reconnected source must run before a later loss counts as a
/// new outage with a fresh budget.
pub const STABLE_AFTER: Duration = Duration::from_secs(5);

/// A source outage: when it began, the attempts made so far, and when the
/// last one succeeded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outage {
    started: Instant,
    attempts: u32,
    reconnected: Option<Instant>,
}

impl Outage {
    /// The outage a loss seen at `now` belongs to: `last` if its reconnect
    /// has not held yet (or it is still being reconnected), else a new one.
    fn continue_or_begin(last: Option<Outage>, now: Instant) -> Outage {
        match last {
            Some(o)
                if o.reconnected
                    .is_none_or(|at| now.duration_since(at) < STABLE_AFTER) =>
            {
                o
            }
            _ => Outage {
                started: now,
                attempts: 0,
                reconnected: None,
            },
        }
    }
}

/// What a lost source leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossAction {
    /// Stale, already handled, or the session is ending.
    Ignored,
    /// Another generation is being brought up.
    Reconnecting,
    /// Nothing more to try: the session fails.
    Fatal,
}

impl Opened {
    /// Generation `gen` failed or ended for `why`. Decides what follows and,
    /// when there is something to try, starts it on its own thread.
    pub fn source_lost(&self, gen: u64, why: &str) -> LossAction {
        let sh = &self.shared;
        if sh.closing.load(Ordering::Acquire) || gen == 0 {
            return LossAction::Ignored;
        }
        if gen != sh.generation.load(Ordering::Acquire) {
            return LossAction::Ignored;
        }
        *sh.last_error.lock() = Some(why.to_string());
        sh.failed_gen.fetch_max(gen, Ordering::AcqRel);
        sh.notify.notify_waiters();
        if sh.reconnecting.load(Ordering::Acquire) {
            // The running attempt sees `failed_gen` and moves on.
            return LossAction::Ignored;
        }
        if sh.handled_gen.fetch_max(gen, Ordering::AcqRel) >= gen {
            return LossAction::Ignored;
        }
        let committed = sh.committed.load(Ordering::Acquire);
        let possible = if committed {
            sh.endless.load(Ordering::Acquire)
                && !self.plan.reconnect_budget.is_zero()
                && !why.contains("not-negotiated")
        } else {
            sh.uri_index.load(Ordering::Acquire) + 1 < self.plan.uris.len()
        };
        if !possible {
            return LossAction::Fatal;
        }
        sh.reconnecting.store(true, Ordering::Release);
        let job = Job {
            pipeline: self.pipeline.downgrade(),
            shared: self.shared.clone(),
            plan: self.plan.clone(),
            failed: gen,
            committed,
        };
        let spawned = std::thread::Builder::new()
            .name("sluice-reconnect".into())
            .spawn(move || job.run());
        match spawned {
            Ok(_) => LossAction::Reconnecting,
            Err(_) => {
                sh.reconnecting.store(false, Ordering::Release);
                LossAction::Fatal
            }
        }
    }
}

struct Job {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    shared: Arc<Shared>,
    plan: Arc<SourcePlan>,
    failed: u64,
    committed: bool,
}

enum Outcome {
    Done,
    GaveUp(String),
    Closing,
}

impl Job {
    fn run(self) {
        let outcome = if self.committed {
            self.reconnect()
        } else {
            self.fail_over()
        };
        let sh = &self.shared;
        let pipeline = self.pipeline.upgrade();
        match outcome {
            // The stall clock restarts with the new source.
            Outcome::Done => sh.last_sample_ms.store(now_ms(), Ordering::Relaxed),
            Outcome::GaveUp(ref why) => {
                if let Some(p) = &pipeline {
                    let s = gst::Structure::builder(SOURCE_GONE)
                        .field("reason", why.as_str())
                        .build();
                    let _ = p.post_message(gst::message::Application::builder(s).src(p).build());
                }
            }
            Outcome::Closing => {
                // Whatever this job added while the session was ending
                // must reach NULL too.
                if let Some(p) = &pipeline {
                    let _ = p.set_state(gst::State::Null);
                }
            }
        }
        sh.reconnecting.store(false, Ordering::Release);
        sh.notify.notify_waiters();
        // A loss reported while this job was finishing is handled now.
        let gen = sh.generation.load(Ordering::Acquire);
        if matches!(outcome, Outcome::Done)
            && sh.failed_gen.load(Ordering::Acquire) >= gen
            && !sh.closing.load(Ordering::Acquire)
        {
            if let Some(p) = &pipeline {
                let why = sh.last_error.lock().clone().unwrap_or_default();
                let s = gst::Structure::builder(SOURCE_LOST)
                    .field("generation", gen)
                    .field("reason", why.as_str())
                    .build();
                let _ = p.post_message(gst::message::Application::builder(s).src(p).build());
            }
        }
    }

    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Before the output exists: the next URI, once each, no delay.
    fn fail_over(&self) -> Outcome {
        let Some(pipeline) = self.pipeline.upgrade() else {
            return Outcome::Closing;
        };
        let sh = &self.shared;
        ingest::remove_generation(&pipeline, sh, self.failed);
        if self.closing() {
            return Outcome::Closing;
        }
        let index = sh.uri_index.load(Ordering::Acquire) + 1;
        let why = sh.last_error.lock().clone().unwrap_or_default();
        tracing::warn!(
            error = %why,
            next = %redact::redact_url(self.plan.uris[index].display()),
            "source failed before the session started; trying the next URL"
        );
        match ingest::add_generation(&pipeline, sh, &self.plan, index, self.failed + 1) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::GaveUp(e.to_string()),
        }
    }

    /// After the output exists: reconnect within the budget.
    fn reconnect(&self) -> Outcome {
        let sh = &self.shared;
        let outage = Outage::continue_or_begin(*sh.outage.lock(), Instant::now());
        *sh.outage.lock() = Some(outage);
        let started = outage.started;
        let budget = self.plan.reconnect_budget;
        let n = self.plan.uris.len();
        let first = sh.uri_index.load(Ordering::Acquire);
        let mut failed = self.failed;
        let mut errors: Vec<String> = Vec::new();
        let why = sh.last_error.lock().clone().unwrap_or_default();
        match outage.reconnected {
            Some(at) => tracing::warn!(
                error = %why,
                after_ms = at.elapsed().as_millis() as u64,
                outage_ms = started.elapsed().as_millis() as u64,
                budget_ms = budget.as_millis() as u64,
                "source lost again soon after reconnecting; the outage goes on"
            ),
            None => tracing::warn!(
                error = %why,
                budget_ms = budget.as_millis() as u64,
                "source lost; reconnecting"
            ),
        }
        errors.push(why);
        let mut made = outage.attempts;
        for attempt in outage.attempts.. {
            let Some(pipeline) = self.pipeline.upgrade() else {
                return Outcome::Closing;
            };
            ingest::remove_generation(&pipeline, sh, failed);
            drop(pipeline);
            let delay = FIRST_BACKOFF
                .saturating_mul(1 << (attempt as usize / n).min(8))
                .min(MAX_BACKOFF);
            let elapsed = started.elapsed();
            if elapsed >= budget {
                break;
            }
            // The last attempt comes when the budget is spent, not before.
            let delay = delay.min(budget - elapsed);
            if !self.sleep(delay) {
                return Outcome::Closing;
            }
            let index = (first + attempt as usize) % n;
            let gen = failed + 1;
            let Some(pipeline) = self.pipeline.upgrade() else {
                return Outcome::Closing;
            };
            let attempt_timeout = ATTEMPT_TIMEOUT
                .min(budget.saturating_sub(started.elapsed()))
                .max(Duration::from_secs(1));
            made = attempt + 1;
            let result = ingest::add_generation(&pipeline, sh, &self.plan, index, gen)
                .map_err(|e| e.to_string())
                .and_then(|()| self.wait_for_streams(gen, attempt_timeout))
                .and_then(|()| splice(&pipeline, sh, gen));
            if self.closing() {
                return Outcome::Closing;
            }
            match result {
                Ok(()) => {
                    *sh.outage.lock() = Some(Outage {
                        started,
                        attempts: attempt + 1,
                        reconnected: Some(Instant::now()),
                    });
                    sh.reconnects.fetch_add(1, Ordering::Relaxed);
                    sh.stats.reconnected();
                    tracing::info!(
                        outage_ms = started.elapsed().as_millis() as u64,
                        attempts = attempt + 1,
                        url = %redact::redact_url(self.plan.uris[index].display()),
                        "source reconnected"
                    );
                    return Outcome::Done;
                }
                Err(e) => {
                    tracing::debug!(attempt = attempt + 1, error = %e, "reconnect attempt failed");
                    errors.push(e);
                    failed = gen;
                }
            }
        }
        if let Some(p) = self.pipeline.upgrade() {
            ingest::remove_generation(&p, sh, failed);
        }
        let last = errors.last().cloned().unwrap_or_default();
        Outcome::GaveUp(format!(
            "the source dropped and did not come back for good within {} ms ({made} attempts; last error: {last})",
            budget.as_millis(),
        ))
    }

    /// Sleeps `d` unless the session ends first; false if it did.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.closing() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        !self.closing()
    }

    /// Waits until generation `gen` shows a stream for every running branch.
    fn wait_for_streams(&self, gen: u64, timeout: Duration) -> Result<(), String> {
        let sh = &self.shared;
        let until = Instant::now() + timeout;
        let wanted: Vec<bool> = sh.branches.lock().iter().map(|b| b.is_some()).collect();
        loop {
            if self.closing() {
                return Err("the session is ending".into());
            }
            if sh.failed_gen.load(Ordering::Acquire) >= gen {
                return Err(sh
                    .last_error
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "the source failed".into()));
            }
            let (video, audio) = {
                let pending = sh.pending.lock();
                let mut kinds = pending
                    .iter()
                    .filter(|p| p.gen == gen && p.first_rt.is_some())
                    .filter_map(|p| p.caps.as_ref());
                let v = kinds.clone().any(|c| is_video(c));
                let a = kinds.any(|c| is_audio(c));
                (v, a)
            };
            let complete = (!wanted[0] || video) && (!wanted[1] || audio);
            if complete || (sh.all_pads_known() && (video || audio)) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "no media from the source within {} ms",
                    timeout.as_millis()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Links generation `gen`'s held streams onto the running branches so its
/// running time starts just after the last one handed downstream.
fn splice(pipeline: &gst::Pipeline, sh: &Shared, gen: u64) -> Result<(), String> {
    let mut pending = sh.take_pending(gen);
    let branches: Vec<Option<gst::Pad>> = sh
        .branches
        .lock()
        .iter()
        .map(|b| b.as_ref().and_then(|w| w.upgrade()))
        .collect();
    let first = pending.iter().filter_map(|p| p.first_rt).min().unwrap_or(0);
    let resume = sh
        .resume_rt
        .load(Ordering::Acquire)
        .saturating_add(SPLICE_GAP_NS);
    let offset = i64::try_from(i128::from(resume) - i128::from(first))
        .map_err(|_| "the reconnected stream's timestamps are out of range".to_string())?;
    let mut fed = [false, false];
    let mut result = Ok(());
    for p in &pending {
        let target = p
            .caps
            .as_deref()
            .and_then(stream_index)
            .filter(|&k| !fed[k])
            .and_then(|k| branches[k].clone().map(|sink| (k, sink)));
        let linked = match target {
            Some((k, sink)) if !sink.is_linked() => {
                p.timing.offset.store(offset, Ordering::Relaxed);
                p.pad.set_offset(offset);
                if k == 0 {
                    add_keyframe_gate(&p.pad);
                }
                fed[k] = true;
                p.pad
                    .link(&sink)
                    .map(|_| ())
                    .map_err(|e| format!("cannot link the reconnected stream: {e:?}"))
            }
            _ => discard(pipeline, sh, gen, &p.pad).map_err(|e| e.to_string()),
        };
        if result.is_ok() {
            result = linked;
        }
    }
    for p in pending.iter_mut() {
        if let Some(id) = p.probe.take() {
            p.pad.remove_probe(id);
        }
    }
    result?;
    if !fed.iter().any(|f| *f) {
        return Err("the source came back with neither audio nor video".into());
    }
    // A branch the new source does not feed is finished, so the muxer
    // carries on with the others instead of waiting for it.
    for (k, sink) in branches.iter().enumerate() {
        if let (Some(sink), false) = (sink, fed[k]) {
            sink.send_event(gst::event::Eos::new());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
