//! Metrics recorded on the hot paths (time to first byte). Exposition is
//! done with `prometheus-client`; counters that already live elsewhere
//! (pool, registry, memory) are read at scrape time, not duplicated.

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Time-to-first-byte buckets in seconds.
pub const TTFB_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];

pub struct Metrics {
    pub ttfb: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            ttfb: Histogram::new(TTFB_BUCKETS.iter().copied()),
        }
    }
}

impl Metrics {
    pub fn observe_ttfb(&self, d: Duration) {
        self.ttfb.observe(d.as_secs_f64());
    }
}
