//! What admission shows and records: a refusal, a running encoder as the
//! sampler saw it, a profile's estimate, and the headroom as status and
//! metrics show it.

use std::collections::BTreeMap;

use serde::Serialize;

/// Why a new encoder was refused.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// `encoder_behind` or `no_cpu`.
    pub reason: &'static str,
    pub message: String,
    /// Unix ms.
    pub at: u64,
}

/// A running encoder as the sampler saw it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Encoder {
    pub stream_id: String,
    pub quality: String,
    pub source_pixels: Option<u64>,
    /// Media time ÷ wall time over the window (1.0 = real time).
    pub speed: f64,
    /// How many times real time it could go.
    pub encode_speed: Option<f64>,
    /// Pictures made over pictures meant (1.0: none dropped).
    pub frame_share: Option<f64>,
    /// Whether its window is full (it has run [`LEARN_WINDOW`] or more).
    #[serde(skip)]
    pub settled: bool,
}

/// A profile's estimated cost.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// CPU cores one encoder of a 1080p source keeps busy at real time
    /// (CPU seconds per media second).
    pub cores_per_stream: f64,
    /// Measurements it has learned from (0: the built-in estimate).
    pub samples: u64,
}

/// Headroom as status and metrics show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadroomView {
    /// `auto` or the hard cap.
    pub mode: String,
    /// Cores this process may use (affinity and cgroup `cpu.max`).
    pub cores: f64,
    /// Cores the process used over the last [`CPU_WINDOW`].
    pub used_cores: f64,
    /// The same at real time: less what renditions catching up on their
    /// source's backlog take beyond it for now.
    pub steady_used_cores: f64,
    /// Cores left for new work: what the process may still use, at most
    /// what the host left idle, less what just-admitted encoders will take.
    pub free_cores: f64,
    /// Cores the whole host left idle over the last [`CPU_WINDOW`] (other
    /// processes included).
    pub host_idle_cores: Option<f64>,
    /// The slowest running encoder's encode speed.
    pub slowest_encode_speed: Option<f64>,
    /// Whether an encoder of the default profile could start now.
    pub can_admit: bool,
    pub estimates: BTreeMap<String, Estimate>,
    pub last_refusal: Option<Refusal>,
    pub refusals: BTreeMap<&'static str, u64>,
}
