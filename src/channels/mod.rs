//! Shared channels (SPEC §11): a **channel** is one running catalog stream
//! (one upstream connection, demux, decoders when needed); a **rendition**
//! is one encode of it at one profile, or its remux; a **viewer** is one
//! client reading a rendition in one container, from a bounded queue that
//! never holds the pipeline up.
//!
//! ```text
//! request -> admission -> channel -> rendition -> container output -> fan-out -> viewer
//! ```
//!
//! [`Channels`] is the registry: one channel per stream id, created on
//! first use and gone when its last rendition stopped.

mod channel;
pub mod container;
pub mod fanout;
pub mod frame;
mod linger;
mod publish;
mod rendition;
mod sampler;
mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

pub use channel::{Channel, ChannelUse, PictureSource};
pub use rendition::{Pace, Rendition, RenditionKey, RenditionView, SPEED_WINDOW};
pub use sampler::spawn_sampler;
pub use view::{ChannelView, UpstreamView};

use crate::events::{Events, SessionEvent};
use crate::media::ingest::SourcePlan;
use crate::media::stats::MediaStats;
use crate::media::{EndReason, Mode};
use crate::pool::{AdmitError, Pool};
use crate::providers::ProviderLease;

/// How channels behave, from the settings.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// How long an unwatched rendition keeps running.
    pub linger: Duration,
    /// Media a viewer may have queued before it skips.
    pub viewer_buffer: Duration,
    /// How long a viewer may stay behind, and a channel make no output.
    pub stall: Duration,
}

pub struct Channels {
    map: Mutex<HashMap<String, Arc<Channel>>>,
    pool: Arc<Pool>,
    events: Arc<Events>,
    settings: ChannelSettings,
    me: Weak<Channels>,
    /// Viewer skips of renditions that are gone.
    skips_gone: AtomicU64,
    /// Channels opened so far.
    pub started_total: AtomicU64,
    /// The media engine's counters (pipelines, errors, reconnects).
    stats: Arc<MediaStats>,
}

impl Channels {
    pub fn new(pool: Arc<Pool>, events: Arc<Events>, settings: ChannelSettings) -> Arc<Self> {
        Arc::new_cyclic(|me| Channels {
            map: Mutex::new(HashMap::new()),
            pool,
            events,
            settings,
            me: me.clone(),
            skips_gone: AtomicU64::new(0),
            started_total: AtomicU64::new(0),
            stats: Arc::new(MediaStats::default()),
        })
    }

    /// The channel of `stream_id`, joined; or a new one (taking a channel
    /// slot, then what `open` gives: the source plan and the provider
    /// lease the channel holds until its upstream connection is closed;
    /// opening nothing yet).
    pub fn join_or_create<E: From<AdmitError>>(
        &self,
        stream_id: &str,
        stream_name: &str,
        protocol: &str,
        open: impl FnOnce() -> Result<(SourcePlan, ProviderLease), E>,
    ) -> Result<ChannelUse, E> {
        let mut map = self.map.lock();
        if let Some(used) = map.get(stream_id).and_then(|c| c.enter()) {
            return Ok(used);
        }
        let slot = self.pool.enter_channel()?;
        let (plan, lease) = open()?;
        let fanout = fanout::FanoutConfig {
            buffer: self.settings.viewer_buffer,
            stall: self.settings.stall,
        };
        let ch = Channel::new(
            stream_id.to_string(),
            stream_name.to_string(),
            protocol.to_string(),
            plan,
            fanout,
            self.settings.linger,
            self.me.clone(),
            (slot, lease),
            self.stats.clone(),
        );
        let used = ch.enter().expect("a new channel is open");
        map.insert(stream_id.to_string(), ch);
        Ok(used)
    }

    /// Running channels whose connection counts against `provider`.
    pub fn of_provider(&self, provider: &str) -> Vec<Arc<Channel>> {
        self.all()
            .into_iter()
            .filter(|c| c.provider().as_deref() == Some(provider))
            .collect()
    }

    /// The media engine's counters.
    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.stats
    }

    pub fn get(&self, stream_id: &str) -> Option<Arc<Channel>> {
        self.map.lock().get(stream_id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Channel>> {
        let mut v: Vec<_> = self.map.lock().values().cloned().collect();
        v.sort_by_key(|c| c.start_ms);
        v
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Status of every channel.
    pub fn views(&self) -> Vec<ChannelView> {
        self.all().iter().map(|c| c.view()).collect()
    }

    pub(crate) fn channel_started(&self, ch: &Channel) {
        self.started_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream_id = %ch.stream_id, protocol = %ch.protocol, "channel started");
        self.events.emit(SessionEvent::ChannelStarted {
            stream_id: ch.stream_id.clone(),
            stream_name: ch.stream_name.clone(),
        });
    }

    pub(crate) fn channel_ended(
        &self,
        ch: &Channel,
        reason: EndReason,
        renditions: &[Arc<Rendition>],
    ) {
        {
            let mut map = self.map.lock();
            if map
                .get(&ch.stream_id)
                .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), ch))
            {
                map.remove(&ch.stream_id);
            }
        }
        for r in renditions {
            self.rendition_gone(r);
        }
        if ch.streams().is_some() {
            let duration = ch.age().as_millis() as u64;
            tracing::info!(stream_id = %ch.stream_id, reason = reason.as_str(), duration_ms = duration, "channel ended");
            self.events.emit(SessionEvent::ChannelEnded {
                stream_id: ch.stream_id.clone(),
                reason,
                duration,
            });
        }
    }

    pub(crate) fn rendition_gone(&self, r: &Rendition) {
        self.skips_gone.fetch_add(r.skips(), Ordering::Relaxed);
    }

    /// Viewer skips to the next keyframe so far.
    pub fn skips_total(&self) -> u64 {
        self.skips_gone.load(Ordering::Relaxed)
            + self
                .all()
                .iter()
                .flat_map(|c| c.renditions())
                .map(|r| r.skips())
                .sum::<u64>()
    }

    /// Running renditions by (mode, quality).
    pub fn rendition_counts(&self) -> HashMap<(Mode, String), usize> {
        let mut counts = HashMap::new();
        for r in self.all().iter().flat_map(|c| c.renditions()) {
            *counts
                .entry((r.key.mode, r.key.quality.clone()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Running decoders (video, audio).
    pub fn decoder_counts(&self) -> [usize; 2] {
        self.all().iter().fold([0, 0], |[v, a], c| {
            let [dv, da] = c.decoders();
            [v + dv as usize, a + da as usize]
        })
    }

    /// Open upstream connections.
    pub fn upstream_connections(&self) -> usize {
        self.all().iter().filter(|c| c.connected()).count()
    }

    /// Every 500 ms: ends channels whose pipeline made no output for
    /// `stall` (reason `stalled`), and viewers that stayed behind.
    pub fn spawn_watchdog(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stall = self.settings.stall.as_millis() as u64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                for ch in me.all() {
                    if let Some(idle) = ch.idle_ms().filter(|&ms| ms >= stall) {
                        tracing::warn!(stream_id = %ch.stream_id, idle_ms = idle, "channel stalled");
                        ch.stop(EndReason::Stalled);
                        continue;
                    }
                    for r in ch.renditions() {
                        r.sweep();
                    }
                }
            }
        });
    }

    /// Drains every channel (EOS through every output) until `deadline`.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let drains = self.all().into_iter().map(|c| async move {
            c.drain(deadline).await;
        });
        futures::future::join_all(drains).await;
    }
}
