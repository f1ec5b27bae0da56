//! Prometheus metrics (SPEC §6), all prefixed `sluice_`, exposed with
//! `prometheus-client` in the OpenMetrics text format.
//!
//! Two kinds live here: metrics recorded on the hot paths (time to first
//! byte, HTTP requests by route template and status), kept in a long-lived
//! registry; and values that already live elsewhere (pool, session
//! registry, memory sampler, media engine counters), read at scrape time
//! into a per-scrape registry instead of being duplicated. Nothing here
//! knows about warp or GStreamer.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::media::{EndReason, Mode};
use crate::AppState;

mod headroom;
mod services;

use headroom::register_headroom;
use services::{register_channels, register_providers, register_snapshots};

/// Prefix of every metric name.
pub const PREFIX: &str = "sluice";
/// Time-to-first-byte buckets in seconds.
pub const TTFB_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Join-time buckets in seconds.
pub const JOIN_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];
/// Content type of what [`Metrics::render`] produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `sluice_http_requests_total`: a route template (never a raw
/// path, so cardinality stays bounded), the method and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

pub struct Metrics {
    /// Metrics recorded as things happen.
    registry: Registry,
    pub ttfb: Histogram,
    pub join: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let ttfb = Histogram::new(TTFB_BUCKETS.iter().copied());
        registry.register(
            "time_to_first_byte_seconds",
            "Time from a preview request to its first media bytes",
            ttfb.clone(),
        );
        let join = Histogram::new(JOIN_BUCKETS.iter().copied());
        registry.register(
            "join_seconds",
            "Time from a viewer subscribing to a rendition to its first decodable media",
            join.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        Self {
            registry,
            ttfb,
            join,
            http_requests,
        }
    }
}

impl Metrics {
    pub fn observe_ttfb(&self, d: Duration) {
        self.ttfb.observe(d.as_secs_f64());
    }

    pub fn observe_join(&self, d: Duration) {
        self.join.observe(d.as_secs_f64());
    }

    /// Counts one answered HTTP request.
    pub fn record_http(&self, method: &'static str, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    /// The whole exposition: recorded metrics plus values read now.
    pub fn render(&self, state: &AppState) -> Result<String, std::fmt::Error> {
        let scrape = scrape_registry(state);
        let mut out = String::with_capacity(8 * 1024);
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scrape)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// A registry of the values that live elsewhere, as they are right now.
fn scrape_registry(state: &AppState) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let pool = state.pool.snapshot();

    let active = Family::<ModeLabel, Gauge>::default();
    let queued = Family::<ModeLabel, Gauge>::default();
    let capacity = Family::<ModeLabel, Gauge>::default();
    for (mode, running, max) in [
        (Mode::Transcode, pool.transcodes, pool.max_transcodes),
        (Mode::Remux, pool.remuxes, pool.max_remux),
    ] {
        let label = ModeLabel {
            mode: mode.as_str(),
        };
        active.get_or_create(&label).set(running as i64);
        capacity.get_or_create(&label).set(max as i64);
        let waiting = pool
            .queue
            .iter()
            .filter(|q| queued_mode(&q.quality) == mode)
            .count();
        queued.get_or_create(&label).set(waiting as i64);
    }
    r.register(
        "sessions_active",
        "Running pipelines holding a pool slot, by mode",
        active,
    );
    r.register(
        "sessions_queued",
        "Requests waiting for a pool slot, by mode",
        queued,
    );
    r.register(
        "sessions_max",
        "Pool slots, by mode (MAX_CONCURRENT_TRANSCODES, MAX_CONCURRENT_REMUX)",
        capacity,
    );

    let started: Counter = Counter::default();
    started.inc_by(
        state
            .registry
            .started_total
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    r.register("sessions_started", "Sessions started", started);

    let ended = Family::<ReasonLabel, Counter>::default();
    let counts = state.registry.ended_counts();
    for reason in EndReason::ALL {
        ended
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc_by(counts.get(&reason).copied().unwrap_or(0));
    }
    r.register("sessions_ended", "Sessions ended, by reason", ended);

    let bytes: Counter = Counter::default();
    bytes.inc_by(state.registry.bytes_sent_total());
    r.register("bytes_sent", "Media bytes handed to preview clients", bytes);

    let errors = Family::<KindLabel, Counter>::default();
    for (kind, n) in state.channels.stats().pipeline_errors() {
        errors.get_or_create(&KindLabel { kind }).inc_by(n);
    }
    r.register(
        "pipeline_errors",
        "Pipelines that failed, by the GStreamer error domain of their first error (core, library, resource, stream, other)",
        errors,
    );

    let reconnects: Counter = Counter::default();
    reconnects.inc_by(state.channels.stats().reconnects_total());
    r.register(
        "source_reconnects",
        "Live sources that dropped during a session and were reconnected (or replaced by a backup URL)",
        reconnects,
    );

    let live: Gauge = Gauge::default();
    live.set(state.channels.stats().live_pipelines() as i64);
    r.register(
        "pipelines_live",
        "GStreamer pipelines built and not yet torn down to NULL",
        live,
    );

    register_channels(&mut r, state);
    register_providers(&mut r, state);
    register_snapshots(&mut r, state);
    register_headroom(&mut r, state, &pool);

    let rss: Gauge = Gauge::default();
    rss.set(state.memory.rss() as i64);
    r.register(
        "process_resident_memory_bytes",
        "Resident set size of the sluice process (sampled every second)",
        rss,
    );
    let cpu: Gauge<f64, AtomicU64> = Gauge::default();
    cpu.set(state.memory.cpu_percent());
    r.register(
        "process_cpu_usage_percent",
        "CPU use of the sluice process in percent of one core (sampled every second)",
        cpu,
    );
    let cpu_seconds: Counter<f64, AtomicU64> = Counter::default();
    cpu_seconds.inc_by(process_cpu_seconds());
    r.register(
        "process_cpu_seconds",
        "User and system CPU time of the sluice process",
        cpu_seconds,
    );
    r
}

/// The mode a queued request waits for: remux requests carry the remux
/// quality label (see [`crate::preview::REMUX_QUALITY`]).
fn queued_mode(quality: &str) -> Mode {
    if quality == crate::preview::REMUX_QUALITY {
        Mode::Remux
    } else {
        Mode::Transcode
    }
}

/// User + system CPU seconds of this process so far.
fn process_cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid out-pointer for getrusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests;
