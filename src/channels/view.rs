//! What status shows of a channel: its state, its upstream and its
//! renditions; and the figures the registry and metrics read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;
use serde::Serialize;

use super::channel::Channel;
use super::rendition::{Rendition, RenditionView};

/// A channel as status shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    pub stream_id: String,
    pub stream_name: String,
    pub state: &'static str,
    pub start_time: u64,
    pub upstream: UpstreamView,
    pub renditions: Vec<RenditionView>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamView {
    pub protocol: String,
    /// The provider the connection counts against (none for local sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub reconnects: u64,
    pub bitrate_kbps: u64,
}

impl Channel {
    /// Ms since the pipeline's last output; None while nothing runs.
    pub fn idle_ms(&self) -> Option<u64> {
        let run = self.running.get()?;
        let st = self.state.lock();
        if st.heads.is_none() || st.closed || run.reconnecting() {
            return None;
        }
        Some(run.idle_ms())
    }

    /// The renditions running now.
    pub fn renditions(&self) -> Vec<Arc<Rendition>> {
        self.state.lock().renditions.values().cloned().collect()
    }

    /// Decoders running now (video, audio).
    pub fn decoders(&self) -> [bool; 2] {
        let st = self.state.lock();
        [st.decoders[0].is_some(), st.decoders[1].is_some()]
    }

    /// Times the source dropped and was reconnected so far.
    pub fn reconnects(&self) -> u64 {
        self.running.get().map_or(0, |r| r.reconnects())
    }

    /// Whether an upstream connection is open.
    pub fn connected(&self) -> bool {
        self.running.get().is_some_and(|r| !r.is_torn_down())
    }

    /// A weak handle to the pipeline, for leak checks.
    pub fn pipeline_weak(&self) -> Option<gst::glib::WeakRef<gst::Pipeline>> {
        self.running.get().and_then(|r| r.pipeline_weak())
    }

    /// The factory name of the running video decoder, if any.
    fn video_decoder(&self) -> Option<String> {
        let st = self.state.lock();
        let (branch, _) = st.decoders[0].as_ref()?;
        let bin = branch
            .elements()
            .iter()
            .find_map(|e| e.downcast_ref::<gst::Bin>().cloned())?;
        let found = bin.iterate_recurse().into_iter().flatten().find_map(|e| {
            let f = e.factory()?;
            f.metadata("klass")
                .is_some_and(|k| k.contains("Decoder"))
                .then(|| f.name().to_string())
        });
        found
    }

    pub fn view(&self) -> ChannelView {
        let run = self.running.get();
        let state = if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if self.ended().is_some() {
            "stopping"
        } else if self.state.lock().heads.is_none() {
            "starting"
        } else if run.is_some_and(|r| r.reconnecting()) {
            "reconnecting"
        } else {
            "running"
        };
        let secs = self
            .activated_at
            .lock()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let bitrate_kbps = if secs > 0.5 {
            (self.in_bytes.load(Ordering::Relaxed) as f64 * 8.0 / secs / 1000.0) as u64
        } else {
            0
        };
        let decoder = self.video_decoder();
        ChannelView {
            stream_id: self.stream_id.clone(),
            stream_name: self.stream_name.clone(),
            state,
            start_time: self.start_ms,
            upstream: UpstreamView {
                protocol: self.protocol.clone(),
                provider: self.provider(),
                reconnects: run.map_or(0, |r| r.reconnects()),
                bitrate_kbps,
            },
            renditions: self
                .renditions()
                .iter()
                .map(|r| r.view(decoder.clone()))
                .collect(),
        }
    }

    /// How long the channel has existed.
    pub fn age(&self) -> Duration {
        self.started_at.elapsed()
    }
}
