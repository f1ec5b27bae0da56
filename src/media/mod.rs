//! GStreamer building blocks: source URL semantics ([`source`]), the
//! source side of a pipeline with its reconnects, the element chains hung
//! off it ([`chains`]: `branch` and `probes` below `encode` below it), and
//! a running pipeline with its bus and teardown.
//!
//! The source side reads bottom-up, each file using only those before it:
//! `shared` (the bookkeeping callbacks and the async side share) <-
//! `held`, `parse`, `netsrc` (held streams, parsebins, HTTP and HLS
//! sources) <- [`ingest`] (source generations) <- [`pipeline`] (an opened
//! source and its stream heads) <- [`reconnect`] <- `settle` (when the
//! streams are known) <- `handoff` (opening off the runtime, the bus
//! carried to it) <- [`running`] (bus, end and teardown); `failure` words
//! a pipeline error for `pipeline` and `running`.
//!
//! It never knows about HTTP, warp, admission, the catalog or viewers:
//! callers hand it a [`source::SourceUri`] and build on what it returns.

mod branch;
pub mod chains;
pub mod diagnose;
pub mod elements;
mod encode;
mod failure;
mod flv;
mod handoff;
mod held;
pub mod ingest;
mod netsrc;
mod parse;
pub mod pipeline;
pub mod probe;
mod probes;
pub mod reconnect;
pub mod running;
mod settle;
mod shared;
pub mod source;
pub mod stats;
mod typefind;

use serde::Serialize;

/// Output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Fragmented MP4: plays in a browser `<video>`.
    Mp4,
    /// MPEG-TS: VLC, Plex, mpegts.js.
    Ts,
    /// An HLS client: a viewer served the segments cut from the
    /// rendition's fMP4 (or TS) output; never a container output itself.
    Hls,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mp4" | "fmp4" => Some(Format::Mp4),
            "ts" | "mpegts" => Some(Format::Ts),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Mp4 => "video/mp4",
            Format::Ts => "video/mp2t",
            Format::Hls => "application/vnd.apple.mpegurl",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Mp4 => "mp4",
            Format::Ts => "ts",
            Format::Hls => "hls",
        }
    }
}

/// What the pipeline does to the source's elementary streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decode, scale, re-encode to the profile.
    Transcode,
    /// Carry H.264 + AAC through untouched, only changing the container.
    Remux,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Transcode => "transcode",
            Mode::Remux => "remux",
        }
    }
}

/// What the client asked for with `transcode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequest {
    /// Remux when the source is already H.264 + AAC and no quality was asked.
    Auto,
    Transcode,
    Remux,
}

/// The elementary streams a source offers, as found when it was opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStreams {
    /// Caps name of the video stream, e.g. `video/x-h264`, `video/x-raw`.
    pub video: Option<StreamCodec>,
    pub audio: Option<StreamCodec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamCodec {
    /// Short codec id: h264, hevc, mpeg2video, aac, mp2, ac3, raw, ...
    pub codec: String,
    /// Human description, e.g. "MPEG-2 Video".
    pub description: String,
}

impl SourceStreams {
    /// Whether the streams can be carried without re-encoding.
    pub fn remuxable(&self) -> bool {
        matches!(&self.video, Some(v) if v.codec == "h264")
            && self.audio.as_ref().is_none_or(|a| a.codec == "aac")
    }

    /// "MPEG-2 Video + MPEG-1 Layer 2 (MP2)" for error messages.
    pub fn describe(&self) -> String {
        let v = self
            .video
            .as_ref()
            .map(|c| format!("video {} ({})", c.codec, c.description))
            .unwrap_or_else(|| "no video".into());
        let a = self
            .audio
            .as_ref()
            .map(|c| format!("audio {} ({})", c.codec, c.description))
            .unwrap_or_else(|| "no audio".into());
        format!("{v}, {a}")
    }
}

/// Why a session ended (SPEC §7). Exactly one per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    ClientDisconnect,
    SourceEos,
    SourceError,
    Stalled,
    AdminStop,
    Shutdown,
    StartTimeout,
    /// A viewer stayed behind its rendition for longer than `STALL_TIMEOUT`.
    SlowClient,
    /// The channel made way for another of its provider, asked for by the
    /// client that was its only viewer.
    Switched,
}

impl EndReason {
    pub const ALL: [EndReason; 9] = [
        EndReason::ClientDisconnect,
        EndReason::SourceEos,
        EndReason::SourceError,
        EndReason::Stalled,
        EndReason::AdminStop,
        EndReason::Shutdown,
        EndReason::StartTimeout,
        EndReason::SlowClient,
        EndReason::Switched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientDisconnect => "client_disconnect",
            EndReason::SourceEos => "source_eos",
            EndReason::SourceError => "source_error",
            EndReason::Stalled => "stalled",
            EndReason::AdminStop => "admin_stop",
            EndReason::Shutdown => "shutdown",
            EndReason::StartTimeout => "start_timeout",
            EndReason::SlowClient => "slow_client",
            EndReason::Switched => "switched",
        }
    }
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("pipeline construction failed: {0}")]
    Build(#[from] gst::glib::BoolError),
    #[error("pipeline state change failed: {0}")]
    StateChange(#[from] gst::StateChangeError),
    /// The source could not be opened or decoded; text is credential-free.
    #[error("{0}")]
    SourceFailed(String),
    /// Remux was required but the source is not H.264 + AAC.
    #[error("source cannot be remuxed without transcoding: {0}")]
    Incompatible(String),
    #[error("the source produced nothing before the start timeout")]
    StartTimeout,
    #[error("session ended before it started: {}", .0.as_str())]
    Ended(EndReason),
}

/// Initializes GStreamer once; safe to call repeatedly.
pub fn init() -> Result<(), gst::glib::Error> {
    gst::init()?;
    typefind::register();
    Ok(())
}

/// The running GStreamer version, e.g. "1.22.0".
pub fn gstreamer_version() -> String {
    gst::version_string()
        .trim_start_matches("GStreamer ")
        .to_string()
}
