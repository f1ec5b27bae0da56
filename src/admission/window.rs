//! CPU over a window of the sampler's readings.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// (when, process CPU seconds so far, host idle CPU seconds so far).
pub(super) type CpuSample = (Instant, f64, Option<f64>);

/// The sample at least `window` before the newest (or the oldest), and the newest.
fn span(cpu: &VecDeque<CpuSample>, window: Duration) -> Option<(&CpuSample, &CpuSample)> {
    let last = cpu.back()?;
    let first = cpu
        .iter()
        .rev()
        .find(|s| last.0.duration_since(s.0) >= window)
        .or_else(|| cpu.front())?;
    (last.0.duration_since(first.0) >= Duration::from_millis(500)).then_some((first, last))
}

pub(super) fn used_cores(cpu: &VecDeque<CpuSample>, window: Duration) -> Option<f64> {
    let (a, b) = span(cpu, window)?;
    Some(((b.1 - a.1) / b.0.duration_since(a.0).as_secs_f64()).max(0.0))
}

pub(super) fn host_idle_cores(cpu: &VecDeque<CpuSample>, window: Duration) -> Option<f64> {
    let (a, b) = span(cpu, window)?;
    Some(((b.2? - a.2?) / b.0.duration_since(a.0).as_secs_f64()).max(0.0))
}
