//! Settings: what the operator configured, from CLI flags and environment
//! variables (SPEC §3). Parsed once at start-up; invalid values stop start-up
//! with a message naming the variable and the accepted form.
//!
//! This module owns parsing and validation only. It never looks at running
//! state (that lives in the pool, the session registry and the memory monitor).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

mod proxy;
mod values;

pub use proxy::{IpNet, TrustProxy};
use values::{
    parse_base_url, parse_encoder, parse_epg_refresh, parse_epg_url, parse_switch,
    parse_transcode_limit, positive_u64, positive_usize,
};
pub use values::{parse_size, TranscodeLimit};

pub const DEFAULT_PORT: u16 = 3000;
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_PROFILES: &str = "./pipelines/profiles.toml";
/// `MAX_CONCURRENT_TRANSCODES` unless set: admission by measured headroom.
pub const DEFAULT_MAX_TRANSCODES: &str = "auto";
pub const DEFAULT_MAX_REMUX: usize = 20;
pub const DEFAULT_MAX_QUEUED: usize = 10;
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 3;
pub const DEFAULT_START_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_QUALITY: &str = "medium";
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 15_000;
pub const DEFAULT_MAX_CHANNELS: usize = 20;
pub const DEFAULT_MAX_VIEWERS: usize = 200;
pub const DEFAULT_CHANNEL_LINGER_MS: u64 = 5_000;
pub const DEFAULT_VIEWER_BUFFER_MS: u64 = 4_000;
pub const DEFAULT_SNAPSHOT_TTL_MS: u64 = 30_000;
pub const DEFAULT_MAX_SNAPSHOTS: usize = 2;
pub const DEFAULT_RECONNECT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MEMORY_WARNING: &str = "512MB";
pub const DEFAULT_MEMORY_CRITICAL: &str = "1GB";
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
pub const DEFAULT_RATE_LIMIT_PREVIEW: &str = "60/min";
pub const DEFAULT_RATE_LIMIT_ADMIN: &str = "30/15min";
pub const DEFAULT_RATE_LIMIT_API: &str = "300/min";
pub const DEFAULT_EPG_REFRESH: &str = "6h";
pub const DEFAULT_EPG_FILLER_HOURS: u32 = 2;

/// Bounds for the per-request `timeout` query parameter (SPEC §6).
pub const MIN_REQUEST_TIMEOUT_MS: u64 = 100;
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Everything the operator can configure. Field docs are the `--help` text.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice",
    version,
    about = "In-process GStreamer transcoding server: live IPTV previews as fMP4 or MPEG-TS over HTTP",
    long_about = None
)]
pub struct Settings {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to listen on (use 0.0.0.0 to serve the network).
    #[arg(long, env = "HOST", value_name = "HOST", default_value = DEFAULT_HOST)]
    pub host: IpAddr,

    /// Directory holding the stream catalog (streams.json) and state.
    #[arg(long = "data-dir", env = "SLUICE_DATA_DIR", value_name = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Quality profiles file; built-in defaults are used when it is absent.
    #[arg(long, env = "SLUICE_PROFILES", value_name = "SLUICE_PROFILES", default_value = DEFAULT_PROFILES)]
    pub profiles: PathBuf,

    /// The only directory file:// sources may point into (unset: file:// refused).
    #[arg(
        long = "media-dir",
        env = "SLUICE_MEDIA_DIR",
        value_name = "SLUICE_MEDIA_DIR"
    )]
    pub media_dir: Option<PathBuf>,

    /// Running encoders (transcode renditions): `auto` admits a new one
    /// while the measured CPU headroom and every running encoder's speed
    /// allow it; a number is a hard cap.
    #[arg(long = "max-concurrent-transcodes", env = "MAX_CONCURRENT_TRANSCODES", value_name = "MAX_CONCURRENT_TRANSCODES",
          default_value = DEFAULT_MAX_TRANSCODES, value_parser = parse_transcode_limit)]
    pub max_transcodes: TranscodeLimit,

    /// Running remux (no re-encode) pipelines at most.
    #[arg(long = "max-concurrent-remux", env = "MAX_CONCURRENT_REMUX", value_name = "MAX_CONCURRENT_REMUX",
          default_value_t = DEFAULT_MAX_REMUX, value_parser = positive_usize)]
    pub max_remux: usize,

    /// Requests that may wait for a free pipeline slot.
    #[arg(long = "max-queued-requests", env = "MAX_QUEUED_REQUESTS", value_name = "MAX_QUEUED_REQUESTS",
          default_value_t = DEFAULT_MAX_QUEUED)]
    pub max_queued: usize,

    /// Sessions one client IP may hold at once.
    #[arg(long = "max-sessions-per-client", env = "MAX_SESSIONS_PER_CLIENT", value_name = "MAX_SESSIONS_PER_CLIENT",
          default_value_t = DEFAULT_MAX_SESSIONS_PER_CLIENT, value_parser = positive_usize)]
    pub max_sessions_per_client: usize,

    /// Default start timeout in ms: queue wait plus time to the first media byte.
    #[arg(long = "transcode-timeout", env = "TRANSCODE_TIMEOUT", value_name = "TRANSCODE_TIMEOUT",
          default_value_t = DEFAULT_START_TIMEOUT_MS, value_parser = positive_u64)]
    pub start_timeout_ms: u64,

    /// Profile used when a request names none.
    #[arg(long = "quality", env = "TRANSCODE_QUALITY_PROFILE", value_name = "TRANSCODE_QUALITY_PROFILE", default_value = DEFAULT_QUALITY)]
    pub default_quality: String,

    /// Ms without output before a running session is ended as stalled.
    #[arg(long = "stall-timeout", env = "STALL_TIMEOUT", value_name = "STALL_TIMEOUT",
          default_value_t = DEFAULT_STALL_TIMEOUT_MS, value_parser = positive_u64)]
    pub stall_timeout_ms: u64,

    /// Channels running at once: each is one upstream connection.
    #[arg(long = "max-channels", env = "MAX_CHANNELS", value_name = "MAX_CHANNELS",
          default_value_t = DEFAULT_MAX_CHANNELS, value_parser = positive_usize)]
    pub max_channels: usize,

    /// Viewers (HTTP responses reading a channel) at once.
    #[arg(long = "max-viewers", env = "MAX_VIEWERS", value_name = "MAX_VIEWERS",
          default_value_t = DEFAULT_MAX_VIEWERS, value_parser = positive_usize)]
    pub max_viewers: usize,

    /// Ms a rendition (and its channel) keeps running after its last viewer
    /// left, so a viewer who comes back joins at once; 0 stops at once.
    #[arg(long = "channel-linger", env = "CHANNEL_LINGER", value_name = "CHANNEL_LINGER",
          default_value_t = DEFAULT_CHANNEL_LINGER_MS)]
    pub channel_linger_ms: u64,

    /// Ms of media queued for one viewer before it skips ahead to the next
    /// keyframe (a viewer that stays behind for STALL_TIMEOUT is ended).
    #[arg(long = "viewer-buffer", env = "VIEWER_BUFFER", value_name = "VIEWER_BUFFER",
          default_value_t = DEFAULT_VIEWER_BUFFER_MS, value_parser = positive_u64)]
    pub viewer_buffer_ms: u64,

    /// Ms a channel snapshot is served from cache before a new picture is taken.
    #[arg(long = "snapshot-ttl", env = "SNAPSHOT_TTL", value_name = "SNAPSHOT_TTL",
          default_value_t = DEFAULT_SNAPSHOT_TTL_MS, value_parser = positive_u64)]
    pub snapshot_ttl_ms: u64,

    /// Snapshot captures taking a picture at once; more wait in a queue.
    #[arg(long = "max-concurrent-snapshots", env = "MAX_CONCURRENT_SNAPSHOTS",
          value_name = "MAX_CONCURRENT_SNAPSHOTS",
          default_value_t = DEFAULT_MAX_SNAPSHOTS, value_parser = positive_usize)]
    pub max_snapshots: usize,

    /// H.264 encoder: auto (the first working hardware encoder, else x264), x264, nvenc, va, qsv, vaapi or v4l2; a profile's `encoder` overrides it.
    #[arg(long = "encoder", env = "SLUICE_ENCODER", value_name = "SLUICE_ENCODER",
          default_value = crate::encoders::AUTO, value_parser = parse_encoder)]
    pub encoder: String,

    /// Ms a hardware encoder that failed during a rendition is left alone before it is tried again.
    #[arg(long = "encoder-retry", env = "ENCODER_RETRY", value_name = "ENCODER_RETRY",
          default_value_t = crate::encoders::DEFAULT_ENCODER_RETRY_MS)]
    pub encoder_retry_ms: u64,

    /// Ms a running session may spend reconnecting a live source that
    /// dropped (primary, then each backup URL, with backoff); 0 disables.
    #[arg(long = "reconnect-timeout", env = "RECONNECT_TIMEOUT", value_name = "RECONNECT_TIMEOUT",
          default_value_t = DEFAULT_RECONNECT_TIMEOUT_MS)]
    pub reconnect_timeout_ms: u64,

    /// Process RSS above which health is degraded (e.g. 512MB, 1.5GiB, bytes).
    #[arg(long = "memory-warning", env = "MEMORY_WARNING_THRESHOLD", value_name = "MEMORY_WARNING_THRESHOLD",
          default_value = DEFAULT_MEMORY_WARNING, value_parser = parse_size)]
    pub memory_warning: u64,

    /// Process RSS at which new sessions are refused (e.g. 1GB).
    #[arg(long = "memory-critical", env = "MEMORY_CRITICAL_THRESHOLD", value_name = "MEMORY_CRITICAL_THRESHOLD",
          default_value = DEFAULT_MEMORY_CRITICAL, value_parser = parse_size)]
    pub memory_critical: u64,

    /// Key required for mutating routes (X-Admin-Key or Authorization: Bearer).
    #[arg(
        long = "admin-api-key",
        env = "ADMIN_API_KEY",
        value_name = "ADMIN_API_KEY",
        hide_env_values = true
    )]
    pub admin_api_key: Option<String>,

    /// Proxies in front of sluice whose forwarding headers (X-Forwarded-For, Forwarded, X-Real-IP) are believed: false, true (1 hop), a hop count, or a comma list of proxy addresses/CIDRs such as 10.0.0.0/8,127.0.0.1.
    #[arg(long = "trust-proxy", env = "TRUST_PROXY", value_name = "TRUST_PROXY", default_value = "false",
          value_parser = TrustProxy::parse)]
    pub trust_proxy: TrustProxy,

    /// Log filter: error, warn, info, debug, trace (or a tracing filter).
    #[arg(
        long = "log-level",
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log output: pretty, or json for one JSON object per line.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Ms to drain sessions on SIGTERM before forcing pipelines down.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE",
          default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    /// Origins allowed by CORS: a comma list, `https://*.example.com` for subdomains, `*` for any (unset: no CORS headers).
    #[arg(long = "cors-origin", env = "CORS_ORIGIN", value_name = "CORS_ORIGIN",
          value_parser = crate::http::cors::CorsOrigins::parse)]
    pub cors_origin: Option<crate::http::cors::CorsOrigins>,

    /// XMLTV guide to serve at /epg.xml, http(s), gzip accepted (unset: the `x-tvg-url` / `url-tvg` of the last imported playlist).
    #[arg(long = "epg-url", env = "EPG_URL", value_name = "EPG_URL", value_parser = parse_epg_url)]
    pub epg_url: Option<String>,

    /// How often the guide is fetched again, e.g. 6h, 90min, 1day (at least 1min).
    #[arg(long = "epg-refresh", env = "EPG_REFRESH", value_name = "EPG_REFRESH",
          default_value = DEFAULT_EPG_REFRESH, value_parser = parse_epg_refresh)]
    pub epg_refresh: Duration,

    /// Length in hours (1-24) of the placeholder programmes given to channels the guide has no programmes for.
    #[arg(long = "epg-filler-hours", env = "EPG_FILLER_HOURS", value_name = "EPG_FILLER_HOURS",
          default_value_t = DEFAULT_EPG_FILLER_HOURS, value_parser = clap::value_parser!(u32).range(1..=24))]
    pub epg_filler_hours: u32,

    /// Preview requests per client: N/min, N/15min, N/s, N/h, or off.
    #[arg(long = "rate-limit-preview", env = "RATE_LIMIT_PREVIEW", value_name = "RATE_LIMIT_PREVIEW",
          default_value = DEFAULT_RATE_LIMIT_PREVIEW, value_parser = crate::http::ratelimit::Rate::parse)]
    pub rate_limit_preview: crate::http::ratelimit::Rate,

    /// Mutating (admin) requests per client: N/min, N/15min, N/s, N/h, or off.
    #[arg(long = "rate-limit-admin", env = "RATE_LIMIT_ADMIN", value_name = "RATE_LIMIT_ADMIN",
          default_value = DEFAULT_RATE_LIMIT_ADMIN, value_parser = crate::http::ratelimit::Rate::parse)]
    pub rate_limit_admin: crate::http::ratelimit::Rate,

    /// Other API requests per client: N/min, N/15min, N/s, N/h, or off.
    #[arg(long = "rate-limit-api", env = "RATE_LIMIT_API", value_name = "RATE_LIMIT_API",
          default_value = DEFAULT_RATE_LIMIT_API, value_parser = crate::http::ratelimit::Rate::parse)]
    pub rate_limit_api: crate::http::ratelimit::Rate,

    // HDHomeRun tuner emulation (SPEC §14).
    /// Serve the HDHomeRun tuner routes (/discover.json, /lineup.json, ...) for Plex, Jellyfin and Emby: true or false.
    #[arg(long = "hdhr-enabled", env = "HDHR_ENABLED", value_name = "HDHR_ENABLED",
          default_value_t = true, action = clap::ArgAction::Set, value_parser = parse_switch)]
    pub hdhr_enabled: bool,

    /// The tuner's base URL as media servers reach sluice (http(s)://host[:port][/prefix]); unset: from the request's Host.
    #[arg(long = "hdhr-base-url", env = "HDHR_BASE_URL", value_name = "HDHR_BASE_URL",
          value_parser = parse_base_url)]
    pub hdhr_base_url: Option<String>,

    /// Quality profile the tuner's channels are transcoded to; unset: remux where the source allows.
    #[arg(
        long = "hdhr-quality",
        env = "HDHR_QUALITY",
        value_name = "HDHR_QUALITY"
    )]
    pub hdhr_quality: Option<String>,

    /// Announce the tuner by SSDP on the LAN (UDP 239.255.255.250:1900) so media servers find it by themselves: true or false.
    #[arg(long = "hdhr-ssdp", env = "HDHR_SSDP", value_name = "HDHR_SSDP",
          default_value_t = false, action = clap::ArgAction::Set, value_parser = parse_switch)]
    pub hdhr_ssdp: bool,
}

impl Settings {
    /// Checks that relate several settings; returns a message naming the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_warning > self.memory_critical {
            return Err(format!(
                "MEMORY_WARNING_THRESHOLD ({}) must not exceed MEMORY_CRITICAL_THRESHOLD ({})",
                self.memory_warning, self.memory_critical
            ));
        }
        if !crate::profiles::valid_name(&self.default_quality) {
            return Err(format!(
                "TRANSCODE_QUALITY_PROFILE: '{}' is not a profile name ([a-z0-9_-]+)",
                self.default_quality
            ));
        }
        if self.hdhr_ssdp && !self.hdhr_enabled {
            return Err("HDHR_SSDP: announces the tuner, so it needs HDHR_ENABLED=true".into());
        }
        if let Some(q) = &self.hdhr_quality {
            if !crate::profiles::valid_name(q) {
                return Err(format!(
                    "HDHR_QUALITY: '{q}' is not a profile name ([a-z0-9_-]+)"
                ));
            }
        }
        if let Some(key) = &self.admin_api_key {
            if key.trim().is_empty() {
                return Err("ADMIN_API_KEY: must not be empty when set".into());
            }
        }
        Ok(())
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_millis(self.start_timeout_ms)
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }

    pub fn channel_linger(&self) -> Duration {
        Duration::from_millis(self.channel_linger_ms)
    }

    pub fn viewer_buffer(&self) -> Duration {
        Duration::from_millis(self.viewer_buffer_ms)
    }

    pub fn snapshot_ttl(&self) -> Duration {
        Duration::from_millis(self.snapshot_ttl_ms)
    }

    pub fn encoder_retry(&self) -> Duration {
        Duration::from_millis(self.encoder_retry_ms)
    }

    pub fn reconnect_timeout(&self) -> Duration {
        Duration::from_millis(self.reconnect_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Settings for tests and embedding: every default, with a given data dir.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut s = Settings::parse_from(["sluice"]);
        s.data_dir = data_dir.into();
        s
    }
}

#[cfg(test)]
mod tests;
