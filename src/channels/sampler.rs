//! The headroom sampler: once a second it records the process's and the
//! host's CPU and every transcode rendition's pace into the admission
//! [`Headroom`], and offers waiting requests the encoder slot the headroom
//! now allows.

use std::sync::Arc;
use std::time::Instant;

use super::Channels;
use crate::admission::{cpu, Encoder, Headroom, LEARN_WINDOW, SAMPLE_INTERVAL};
use crate::pool::Pool;

/// Samples CPU and the running encoders every [`SAMPLE_INTERVAL`] (and
/// each rendition's speed window, which status shows in every mode); with
/// a headroom gate, offers waiting requests the slot the headroom now allows.
pub fn spawn_sampler(headroom: Arc<Headroom>, channels: Arc<Channels>, pool: Arc<Pool>) {
    let (h, c, p) = (
        Arc::downgrade(&headroom),
        Arc::downgrade(&channels),
        Arc::downgrade(&pool),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(headroom), Some(channels), Some(pool)) =
                (h.upgrade(), c.upgrade(), p.upgrade())
            else {
                break;
            };
            let now = Instant::now();
            if let Some(process) = cpu::process_cpu_seconds() {
                headroom.record_cpu(now, process, cpu::host_idle_seconds());
            }
            let mut encoders = Vec::new();
            for ch in channels.all() {
                for r in ch.renditions() {
                    r.sample();
                    if r.mode() != crate::media::Mode::Transcode {
                        continue;
                    }
                    let pace = r.pace();
                    encoders.push(Encoder {
                        stream_id: ch.stream_id.clone(),
                        quality: r.key.quality.clone(),
                        source_pixels: r.counters.source_pixels(),
                        speed: pace.map_or(0.0, |p| p.speed),
                        encode_speed: pace.and_then(|p| p.encode_speed),
                        frame_share: pace.and_then(|p| p.frame_share),
                        settled: pace.is_some_and(|p| {
                            p.span + SAMPLE_INTERVAL / 2 >= LEARN_WINDOW
                                && r.started_at.elapsed() >= LEARN_WINDOW + SAMPLE_INTERVAL
                        }),
                    });
                }
            }
            headroom.record_encoders(encoders);
            pool.offer();
        }
    });
}
