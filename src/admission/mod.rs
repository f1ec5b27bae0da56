//! Admission by measured headroom (`MAX_CONCURRENT_TRANSCODES=auto`): may
//! one more encoder start now? Yes while every running encoder keeps at
//! least [`MIN_ENCODE_SPEED`] times real time and the process's CPU leaves
//! at least what an encoder of the asked profile costs, as learned from the
//! renditions of that profile that ran (CPU seconds per media second,
//! scaled by the source's pixels), starting from a conservative built-in
//! estimate.
//!
//! [`Headroom`] holds the figures and decides; [`cpu`] reads them from
//! `/proc` and the cgroup; [`spawn_sampler`] feeds both once a second from
//! the running renditions and lets the pool hand a slot to a waiter the
//! headroom now allows. Knows nothing of HTTP; the pool asks, it answers.

pub mod cpu;
mod estimate;
mod view;
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use estimate::builtin_cost;
pub use view::{Encoder, Estimate, HeadroomView, Refusal};
use window::{host_idle_cores, used_cores, CpuSample};

/// Every running encoder must be able to go at least this many times
/// real time for another to start: the margin that absorbs a busy moment.
pub const MIN_ENCODE_SPEED: f64 = 1.05;
/// The share of the cores kept free after a new encoder's cost: at full
/// CPU every live encoder loses pictures to the smallest hiccup, and near
/// full each picture costs more than the same picture on an idle machine
/// (the encoders contend for caches and memory), so costs learned lower
/// down understate the last encoder's.
pub const CPU_RESERVE: f64 = 0.15;
/// A rendition whose speed window reads at least this many times real
/// time is catching up on a source's backlog (a live HLS source starts a
/// few segments behind its edge): the CPU it takes now is more than it
/// will keep taking. Below it is the noise of a source that arrives a
/// segment at a time (a 5 s window of 2 s segments reads 0.8x or 1.2x).
pub const CATCHING_UP: f64 = 1.5;
/// A running encoder that makes fewer of its pictures than this share
/// (a full queue dropped the rest) is behind, whatever its speed. One that
/// keeps up makes them all; the bar sits above the 0.95 at which a viewer
/// counts as fallen behind, so admission stops before that.
pub const MIN_FRAME_SHARE: f64 = 0.98;
/// How often CPU and the encoders are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The short window process CPU is read over for a decision.
pub const CPU_WINDOW: Duration = Duration::from_secs(2);
/// How long a newly admitted encoder counts at its estimated cost, until
/// it shows in the measured CPU and has a speed window of its own.
pub const WARM_UP: Duration = Duration::from_secs(8);
/// The source size estimates are stated for: 1080p.
pub const REFERENCE_PIXELS: u64 = 1920 * 1080;
/// How far one measurement moves an estimate toward what it saw.
const LEARN_RATE: f64 = 0.5;
/// The window an encoder's `speed`, `fps` and `encodeSpeed` are measured
/// over.
pub const SPEED_WINDOW: Duration = Duration::from_secs(5);
/// The window costs are learned over: the encoders' speed window.
pub const LEARN_WINDOW: Duration = SPEED_WINDOW;

#[derive(Default)]
struct Inner {
    cpu: VecDeque<CpuSample>,
    encoders: Vec<Encoder>,
    /// Encoders admitted and still warming up: (when, estimated cores).
    pending: Vec<(Instant, f64)>,
    estimates: BTreeMap<String, Estimate>,
    last_refusal: Option<Refusal>,
    refusals: BTreeMap<&'static str, u64>,
}

pub struct Headroom {
    cores: f64,
    default_quality: String,
    inner: Mutex<Inner>,
}

impl Headroom {
    /// `estimates`: each profile's built-in cost (see [`builtin_cost`]).
    pub fn new(cores: f64, default_quality: &str, estimates: BTreeMap<String, f64>) -> Arc<Self> {
        let inner = Inner {
            estimates: estimates
                .into_iter()
                .map(|(q, c)| {
                    (
                        q,
                        Estimate {
                            cores_per_stream: c,
                            samples: 0,
                        },
                    )
                })
                .collect(),
            ..Inner::default()
        };
        Arc::new(Self {
            cores: cores.max(0.1),
            default_quality: default_quality.to_string(),
            inner: Mutex::new(inner),
        })
    }

    pub fn cores(&self) -> f64 {
        self.cores
    }

    pub fn default_quality(&self) -> &str {
        &self.default_quality
    }

    /// Records cumulative process CPU seconds (and host idle CPU seconds,
    /// when known) read at `at`.
    pub fn record_cpu(&self, at: Instant, process_s: f64, host_idle_s: Option<f64>) {
        let mut g = self.inner.lock();
        g.cpu.push_back((at, process_s, host_idle_s));
        let keep = LEARN_WINDOW + Duration::from_secs(2);
        while g.cpu.len() > 2 && at.duration_since(g.cpu[1].0) > keep {
            g.cpu.pop_front();
        }
    }

    /// Records the running encoders, and learns from them when every one
    /// has a full window and none is warming up.
    pub fn record_encoders(&self, encoders: Vec<Encoder>) {
        let mut g = self.inner.lock();
        let now = Instant::now();
        g.pending
            .retain(|(at, _)| now.duration_since(*at) < WARM_UP);
        g.encoders = encoders;
        // Learn only from encoders that settled at real time: one that
        // drops pictures, or gets too little CPU, would make the cost look
        // low; one still catching up on its source's backlog works in
        // bursts the speed window does not weigh exactly.
        if g.encoders.is_empty()
            || !g.pending.is_empty()
            || g.encoders.iter().any(|e| {
                !e.settled
                    || e.speed >= CATCHING_UP
                    || e.encode_speed.is_none_or(|s| s < 1.0)
                    || e.frame_share.is_some_and(|f| f < MIN_FRAME_SHARE)
            })
        {
            return;
        }
        let Some(used) = used_cores(&g.cpu, LEARN_WINDOW) else {
            return;
        };
        let predicted: f64 = g
            .encoders
            .iter()
            .map(|e| cost_of(&g.estimates, &e.quality, e.source_pixels) * e.speed)
            .sum();
        if predicted <= 0.0 {
            return;
        }
        let k = used / predicted;
        let qualities: std::collections::BTreeSet<String> =
            g.encoders.iter().map(|e| e.quality.clone()).collect();
        for q in qualities {
            let e = g.estimates.entry(q).or_insert(Estimate {
                cores_per_stream: estimate::FALLBACK_COST,
                samples: 0,
            });
            let learned = e.cores_per_stream * (1.0 + LEARN_RATE * (k - 1.0));
            e.cores_per_stream = learned.clamp(0.02, 64.0);
            e.samples += 1;
        }
    }

    /// What an encoder of `quality` for a source of `pixels` would cost (cores).
    pub fn cost(&self, quality: &str, pixels: Option<u64>) -> f64 {
        cost_of(&self.inner.lock().estimates, quality, pixels)
    }

    /// Decides whether one more encoder of `quality` may start while
    /// `running` hold slots; if so, counts its estimated cost until it
    /// shows in the measurements.
    pub fn admit(&self, quality: &str, pixels: Option<u64>, running: usize) -> Result<(), Refusal> {
        self.decide(quality, pixels, running, true)
    }

    /// [`Headroom::admit`] for a request already waiting: a refusal is not
    /// counted again each time the waiter is reconsidered.
    pub fn admit_waiting(
        &self,
        quality: &str,
        pixels: Option<u64>,
        running: usize,
    ) -> Result<(), Refusal> {
        self.decide(quality, pixels, running, false)
    }

    fn decide(
        &self,
        quality: &str,
        pixels: Option<u64>,
        running: usize,
        count: bool,
    ) -> Result<(), Refusal> {
        let mut g = self.inner.lock();
        let now = Instant::now();
        g.pending
            .retain(|(at, _)| now.duration_since(*at) < WARM_UP);
        let cost = cost_of(&g.estimates, quality, pixels);
        match self.judge(&g, cost, running) {
            Ok(()) => {
                g.pending.push((now, cost));
                Ok(())
            }
            Err((reason, message)) => {
                let refusal = Refusal {
                    reason,
                    message,
                    at: crate::events::epoch_ms(),
                };
                if count {
                    *g.refusals.entry(reason).or_insert(0) += 1;
                    g.last_refusal = Some(refusal.clone());
                }
                Err(refusal)
            }
        }
    }

    /// The same decision without counting anything: could an encoder of
    /// the default profile start now?
    pub fn can_admit(&self, running: usize) -> bool {
        let g = self.inner.lock();
        let cost = cost_of(&g.estimates, &self.default_quality, None);
        self.judge(&g, cost, running).is_ok()
    }

    /// How many more encoders of the default profile the free CPU holds.
    pub fn more(&self, running: usize) -> usize {
        let g = self.inner.lock();
        let cost = cost_of(&g.estimates, &self.default_quality, None);
        if self.judge(&g, cost, running).is_err() {
            return 0;
        }
        if running == 0 {
            // The first always starts; more as the free CPU allows.
            return (((self.cores * (1.0 - CPU_RESERVE)) / cost).floor() as usize).max(1);
        }
        ((self.free(&g, running) - self.cores * CPU_RESERVE) / cost)
            .floor()
            .max(1.0) as usize
    }

    fn judge(&self, g: &Inner, cost: f64, running: usize) -> Result<(), (&'static str, String)> {
        if running == 0 {
            // Nothing of ours runs: whatever the host does, one may start.
            return Ok(());
        }
        let settled = || g.encoders.iter().filter(|e| e.settled);
        if let Some(e) = settled().find(|e| e.encode_speed.is_some_and(|s| s < MIN_ENCODE_SPEED)) {
            return Err((
                "encoder_behind",
                format!(
                    "the {} encoder of stream '{}' could go only {:.2}x real time (at least {MIN_ENCODE_SPEED}x is kept for every running encoder)",
                    e.quality,
                    e.stream_id,
                    e.encode_speed.unwrap_or(0.0)
                ),
            ));
        }
        if let Some(e) = settled().find(|e| e.frame_share.is_some_and(|f| f < MIN_FRAME_SHARE)) {
            return Err((
                "encoder_behind",
                format!(
                    "the {} encoder of stream '{}' makes only {:.0}% of its pictures",
                    e.quality,
                    e.stream_id,
                    e.frame_share.unwrap_or(0.0) * 100.0
                ),
            ));
        }
        let free = self.free(g, running);
        let reserve = self.cores * CPU_RESERVE;
        if free - reserve < cost {
            return Err((
                "no_cpu",
                format!(
                    "{free:.2} of {:.2} CPU cores are free; a new encoder of this profile needs about {cost:.2}, and {reserve:.2} stay free",
                    self.cores
                ),
            ));
        }
        Ok(())
    }

    /// What the process may still use, at most what the host left idle
    /// (other processes take their share of the cores too: on a busy host
    /// a new encoder starves every running one), less what just-admitted
    /// encoders will take.
    ///
    /// The process's use is taken at real time ([`pace_factor`]):
    /// a rendition catching up on its source's backlog takes the idle
    /// cores for a while and gives them back at the live edge.
    ///
    /// Of the encoders admitted lately, at most the `running` newest still
    /// hold a slot: an older one that already ended costs nothing.
    fn free(&self, g: &Inner, running: usize) -> f64 {
        let used = used_cores(&g.cpu, CPU_WINDOW).unwrap_or(0.0);
        let steady = used * pace_factor(g);
        let warming: f64 = g.pending.iter().rev().take(running).map(|(_, c)| c).sum();
        let mut free = self.cores - steady;
        if let Some(idle) = host_idle_cores(&g.cpu, CPU_WINDOW) {
            // What the catch-up takes now comes back to the idle cores.
            free = free.min(idle + (used - steady));
        }
        free - warming
    }

    pub fn last_refusal(&self) -> Option<Refusal> {
        self.inner.lock().last_refusal.clone()
    }

    pub fn view(&self, mode: String, running: usize) -> HeadroomView {
        let round2 = |v: f64| (v * 100.0).round() / 100.0;
        let can_admit = self.can_admit(running);
        let g = self.inner.lock();
        HeadroomView {
            mode,
            cores: round2(self.cores),
            used_cores: round2(used_cores(&g.cpu, CPU_WINDOW).unwrap_or(0.0)),
            steady_used_cores: round2(
                used_cores(&g.cpu, CPU_WINDOW).unwrap_or(0.0) * pace_factor(&g),
            ),
            free_cores: round2(self.free(&g, running).max(0.0)),
            host_idle_cores: host_idle_cores(&g.cpu, CPU_WINDOW).map(round2),
            slowest_encode_speed: g
                .encoders
                .iter()
                .filter_map(|e| e.encode_speed)
                .min_by(f64::total_cmp)
                .map(round2),
            can_admit,
            estimates: g
                .estimates
                .iter()
                .map(|(q, e)| {
                    (
                        q.clone(),
                        Estimate {
                            cores_per_stream: (e.cores_per_stream * 1000.0).round() / 1000.0,
                            samples: e.samples,
                        },
                    )
                })
                .collect(),
            last_refusal: g.last_refusal.clone(),
            refusals: g.refusals.clone(),
        }
    }
}

/// How much of the process's CPU its renditions will keep using once every
/// one goes at real time: their costs at real time over their costs at the
/// speed they go now, counting only those catching up ([`CATCHING_UP`]);
/// 1.0 when none is.
fn pace_factor(g: &Inner) -> f64 {
    let (mut real_time, mut now) = (0.0, 0.0);
    for e in &g.encoders {
        let cost = cost_of(&g.estimates, &e.quality, e.source_pixels);
        let speed = if e.speed >= CATCHING_UP { e.speed } else { 1.0 };
        real_time += cost;
        now += cost * speed;
    }
    if now > 0.0 {
        real_time / now
    } else {
        1.0
    }
}

fn cost_of(estimates: &BTreeMap<String, Estimate>, quality: &str, pixels: Option<u64>) -> f64 {
    let per_stream = estimates
        .get(quality)
        .map_or(estimate::FALLBACK_COST, |e| e.cores_per_stream);
    let scale = pixels.map_or(1.0, |p| p as f64 / REFERENCE_PIXELS as f64);
    per_stream * scale.clamp(0.05, 16.0)
}

#[cfg(test)]
mod tests;
