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
struct RenditionLabel {
    mode: &'static str,
    quality: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    from: String,
    to: String,
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

/// Channels, renditions, decoders, viewers and upstream connections.
fn register_channels(r: &mut Registry, state: &AppState) {
    let ch = &state.channels;
    let gauge = |v: usize| {
        let g: Gauge = Gauge::default();
        g.set(v as i64);
        g
    };
    r.register(
        "channels",
        "Channels running (one upstream connection each)",
        gauge(ch.len()),
    );
    r.register(
        "upstream_connections",
        "Open upstream (source) connections",
        gauge(ch.upstream_connections()),
    );
    r.register(
        "viewers",
        "Viewers reading a rendition",
        gauge(state.registry.len()),
    );
    let renditions = Family::<RenditionLabel, Gauge>::default();
    for ((mode, quality), n) in ch.rendition_counts() {
        renditions
            .get_or_create(&RenditionLabel {
                mode: mode.as_str(),
                quality,
            })
            .set(n as i64);
    }
    r.register(
        "renditions",
        "Renditions running, by mode and quality (one encoder per transcode rendition)",
        renditions,
    );
    let decoders = Family::<KindLabel, Gauge>::default();
    let [video, audio] = ch.decoder_counts();
    decoders
        .get_or_create(&KindLabel { kind: "video" })
        .set(video as i64);
    decoders
        .get_or_create(&KindLabel { kind: "audio" })
        .set(audio as i64);
    r.register(
        "decoders",
        "Decoders running, by kind (one per channel stream that a transcode rendition needs)",
        decoders,
    );
    let skips: Counter = Counter::default();
    skips.inc_by(ch.skips_total());
    r.register(
        "viewer_skips",
        "Times a slow viewer's queue overflowed and it skipped to the next keyframe",
        skips,
    );
    register_hls(r, state);
    let fallbacks = Family::<FallbackLabels, Counter>::default();
    for ((from, to), n) in crate::encoders::table().fallbacks() {
        fallbacks
            .get_or_create(&FallbackLabels { from, to })
            .inc_by(n);
    }
    r.register(
        "encoder_fallbacks",
        "Times a rendition's encoder failed and the rendition moved to the next encoder, by encoder",
        fallbacks,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// Connections open to each provider, and the limits set (ids only: an
/// implicit provider's id is a hash, never its URL or credential).
fn register_providers(r: &mut Registry, state: &AppState) {
    let open = Family::<ProviderLabel, Gauge>::default();
    let limits = Family::<ProviderLabel, Gauge>::default();
    for p in state.providers.list(&state.catalog.snapshot()) {
        let label = ProviderLabel { provider: p.id };
        open.get_or_create(&label).set(p.connections as i64);
        if let Some(max) = p.max_connections {
            limits.get_or_create(&label).set(i64::from(max));
        }
    }
    r.register(
        "provider_connections",
        "Upstream connections open, by provider (channels and validate probes)",
        open,
    );
    r.register(
        "provider_max_connections",
        "Connection limit of each provider that has one",
        limits,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    origin: &'static str,
}

/// Snapshot captures: how many, from where, how many at once.
fn register_snapshots(r: &mut Registry, state: &AppState) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &state.snapshots.stats;
    let captures = Family::<OriginLabel, Counter>::default();
    for origin in [
        crate::snapshot::Origin::Running,
        crate::snapshot::Origin::Idle,
    ] {
        captures
            .get_or_create(&OriginLabel {
                origin: origin.as_str(),
            })
            .inc_by(s.captures[origin as usize].load(Relaxed));
    }
    r.register(
        "snapshot_captures",
        "Snapshot pictures taken, by origin (running: from a running channel; idle: the source opened for one keyframe)",
        captures,
    );
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    let gauge = |v: usize| {
        let g: Gauge = Gauge::default();
        g.set(v as i64);
        g
    };
    r.register(
        "snapshot_capture_failures",
        "Snapshot captures that failed",
        counter(s.failures.load(Relaxed)),
    );
    r.register(
        "snapshot_cache_hits",
        "Snapshot requests answered from the cache",
        counter(s.cache_hits.load(Relaxed)),
    );
    r.register(
        "snapshot_stale_served",
        "Snapshot requests answered with an older picture because a new one could not be taken",
        counter(s.stale_served.load(Relaxed)),
    );
    r.register(
        "snapshot_captures_running",
        "Snapshot captures taking a picture now",
        gauge(s.running.load(Relaxed)),
    );
    r.register(
        "snapshot_captures_queued",
        "Snapshot captures waiting for a slot",
        gauge(s.queued.load(Relaxed)),
    );
    r.register(
        "snapshot_captures_max",
        "Snapshot captures allowed at once (MAX_CONCURRENT_SNAPSHOTS)",
        gauge(state.snapshots.max_concurrent()),
    );
    r.register(
        "snapshot_captures_peak",
        "Most snapshot captures that ran at once (bounded by MAX_CONCURRENT_SNAPSHOTS)",
        gauge(s.peak.load(Relaxed)),
    );
}

/// HLS: segments and parts cut (once per rendition output, whatever the
/// number of clients) and clients now.
fn register_hls(r: &mut Registry, state: &AppState) {
    use std::sync::atomic::Ordering::Relaxed;
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    r.register(
        "hls_segments",
        "HLS segments cut from rendition outputs (once each, shared by every client)",
        counter(state.hls.segments_cut.load(Relaxed)),
    );
    r.register(
        "hls_parts",
        "LL-HLS parts cut from rendition outputs",
        counter(state.hls.parts_cut.load(Relaxed)),
    );
    let g: Gauge = Gauge::default();
    g.set(state.hls.session_count() as i64);
    r.register("hls_sessions", "HLS clients (sessions) now", g);
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QualityLabel {
    quality: String,
}

/// Admission by measured headroom: free cores, the cost estimate of each
/// profile, refusals by reason and the reason of the last one.
fn register_headroom(r: &mut Registry, state: &AppState, pool: &crate::pool::PoolSnapshot) {
    let mode = if pool.auto {
        "auto".to_string()
    } else {
        pool.max_transcodes.to_string()
    };
    let h = state.headroom.view(mode, pool.transcodes);
    let gauge = |v: f64| {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        g
    };
    r.register(
        "headroom_cores",
        "CPU cores this process may use (affinity and cgroup cpu.max)",
        gauge(h.cores),
    );
    r.register(
        "headroom_used_cores",
        "CPU cores this process used over the last 2 s",
        gauge(h.used_cores),
    );
    r.register(
        "headroom_steady_used_cores",
        "CPU cores this process would use with every rendition at real time",
        gauge(h.steady_used_cores),
    );
    r.register(
        "headroom_free_cores",
        "CPU cores left for new encoders, as admission measures them",
        gauge(h.free_cores),
    );
    let can: Gauge = Gauge::default();
    can.set(i64::from(h.can_admit));
    r.register(
        "headroom_can_admit",
        "1 while an encoder of the default profile could start now",
        can,
    );
    if let Some(s) = h.slowest_encode_speed {
        r.register(
            "headroom_slowest_encode_speed",
            "How many times real time the slowest running encoder could go",
            gauge(s),
        );
    }
    let estimates = Family::<QualityLabel, Gauge<f64, AtomicU64>>::default();
    for (quality, e) in &h.estimates {
        estimates
            .get_or_create(&QualityLabel {
                quality: quality.clone(),
            })
            .set(e.cores_per_stream);
    }
    r.register(
        "encoder_cost_cores",
        "Estimated CPU cores one encoder of a 1080p source takes, by profile (learned from running renditions)",
        estimates,
    );
    let refusals = Family::<ReasonLabel, Counter>::default();
    for reason in ["encoder_behind", "no_cpu"] {
        refusals
            .get_or_create(&ReasonLabel { reason })
            .inc_by(h.refusals.get(reason).copied().unwrap_or(0));
    }
    r.register(
        "admission_refusals",
        "New encoders the measured headroom refused, by reason",
        refusals,
    );
    if let Some(last) = &h.last_refusal {
        let at = Family::<ReasonLabel, Gauge<f64, AtomicU64>>::default();
        at.get_or_create(&ReasonLabel {
            reason: last.reason,
        })
        .set(last.at as f64 / 1000.0);
        r.register(
            "admission_last_refusal_timestamp_seconds",
            "When the last refusal happened (Unix time), labelled with its reason",
            at,
        );
    }
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
mod tests {
    use super::*;

    #[test]
    fn recorded_metrics_encode_with_prefix() {
        let m = Metrics::default();
        m.observe_ttfb(Duration::from_millis(300));
        m.record_http("GET", "/health", 200);
        let mut out = String::new();
        encode_registry(&mut out, &m.registry).unwrap();
        assert!(
            out.contains("sluice_time_to_first_byte_seconds_count 1"),
            "{out}"
        );
        assert!(
            out.contains(
                r#"sluice_http_requests_total{method="GET",route="/health",status="200"} 1"#
            ),
            "{out}"
        );
    }
}
