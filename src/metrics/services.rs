//! Scrape-time values of the media services: channels and renditions,
//! providers, snapshots and HLS.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::AppState;

use super::KindLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenditionLabel {
    mode: &'static str,
    quality: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    from: String,
    to: String,
}

/// Channels, renditions, decoders, viewers and upstream connections.
pub(super) fn register_channels(r: &mut Registry, state: &AppState) {
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
pub(super) fn register_providers(r: &mut Registry, state: &AppState) {
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
pub(super) fn register_snapshots(r: &mut Registry, state: &AppState) {
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
pub(super) fn register_hls(r: &mut Registry, state: &AppState) {
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
