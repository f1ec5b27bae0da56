//! Scrape-time values of admission by measured headroom.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::AppState;

use super::ReasonLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QualityLabel {
    quality: String,
}

/// Admission by measured headroom: free cores, the cost estimate of each
/// profile, refusals by reason and the reason of the last one.
pub(super) fn register_headroom(
    r: &mut Registry,
    state: &AppState,
    pool: &crate::pool::PoolSnapshot,
) {
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
